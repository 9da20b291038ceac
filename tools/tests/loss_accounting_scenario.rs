//! The load tool cannot hide a loss: against the real broker, sends refused with a code
//! (INBOX_FULL from a small `max_inbox`), sends a kill -9 leaves unanswered and acks that never
//! come (a SIGSTOPped broker) are counted and fail the run; several devices per user each get
//! every message exactly once; `load connect` counts the time a login waited behind the
//! in-flight cap.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ringpost_harness::{tools, tools_broker, TempDir, TestBroker};
use serde_json::Value;

/// Waits for `child` to exit; kills it (and fails) if it runs past `limit`.
fn wait_within(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(limit).is_err() {
            // Still running past the limit: end it so the test fails instead of hanging.
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            return true;
        }
        false
    });
    let out = child.wait_with_output().unwrap();
    let _ = done_tx.send(());
    assert!(
        !watchdog.join().unwrap(),
        "the tool ran past {limit:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `ringpost-tools load SCENARIO --json --addr --secret-file ARGS`, run to its exit.
fn load(broker: &TestBroker, scenario: &str, args: &[&str]) -> (Option<i32>, Value, String) {
    let child = tools(&["load", scenario, "--json", "--addr", &broker.addr_string()])
        .arg("--secret-file")
        .arg(broker.secret_path())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    parse(wait_within(child, Duration::from_secs(90)))
}

fn parse(out: Output) -> (Option<i32>, Value, String) {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not one JSON object ({e}); stderr: {stderr}"));
    (out.status.code(), report, stderr)
}

fn n(r: &Value, k: &str) -> u64 {
    r[k].as_u64().unwrap_or_else(|| panic!("no {k} in {r}"))
}

fn error_acks(r: &Value) -> u64 {
    r["error_acks"]
        .as_object()
        .unwrap_or_else(|| panic!("no error_acks map in {r}"))
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum()
}

const FAST: &str = "sends_per_sec = 100000";

#[test]
fn p2p_counts_inbox_full_acks_by_code_and_fails() {
    // Receivers ack every 50 ms or 100 deliveries; at 1,000 msg/s per user an inbox of 5
    // unacked messages overflows all the time.
    let dir = TempDir::new("loss-p2p-inbox");
    let broker = tools_broker()
        .dir(dir.path())
        .limits("sends_per_sec = 100000\nmax_inbox = 5")
        .start();
    let (code, r, stderr) = load(
        &broker,
        "p2p",
        &[
            "--users",
            "4",
            "--rate",
            "4000",
            "--duration",
            "1s",
            "--threads",
            "1",
        ],
    );
    assert_eq!(code, Some(1), "{r}\n{stderr}");
    let full = r["error_acks"]["INBOX_FULL"].as_u64().unwrap_or(0);
    assert!(full > 0, "{r}");
    assert_eq!(full, error_acks(&r), "only INBOX_FULL: {r}");
    // Every send is accounted for, and a refused send is not a lost one.
    assert_eq!(n(&r, "sent"), n(&r, "acked") + full, "{r}");
    assert_eq!(n(&r, "unanswered"), 0, "{r}");
    assert_eq!(n(&r, "lost"), 0, "{r}");
    assert!(n(&r, "errors") >= full, "{r}");
    assert!(
        stderr.contains("error_acks=") && stderr.contains("INBOX_FULL"),
        "{stderr}"
    );
}

#[test]
fn p2p_fails_with_unanswered_sends_when_the_broker_is_killed_mid_run() {
    let dir = TempDir::new("loss-p2p-kill");
    let broker = tools_broker().dir(dir.path()).limits(FAST).start();
    let mut child = tools(&[
        "load",
        "p2p",
        "--json",
        "--addr",
        &broker.addr_string(),
        "--users",
        "10",
        "--rate",
        "2000",
        "--duration",
        "20s",
        "--threads",
        "1",
    ])
    .arg("--secret-file")
    .arg(broker.secret_path())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // The first progress line that shows acks: traffic is flowing; kill the broker then.
    let mut progress = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            progress.read_line(&mut line).unwrap() > 0,
            "no progress: {seen}"
        );
        seen.push_str(&line);
        let acked = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("acked="))
            .and_then(|v| v.parse::<u64>().ok());
        if acked.is_some_and(|a| a > 0) {
            break;
        }
    }
    broker.crash();
    let started = Instant::now();
    let rest = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut progress, &mut s);
        s
    });
    let out = wait_within(child, Duration::from_secs(60));
    let stderr = seen + &rest.join().unwrap();
    // The tool stops once every connection is gone; it does not wait out the 20 s schedule.
    assert!(started.elapsed() < Duration::from_secs(15), "{stderr}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{r}\n{stderr}");
    // Sends written after (or just before) the kill got no answer, and the report says so.
    assert!(n(&r, "unanswered") > 0, "{r}");
    assert_eq!(
        n(&r, "sent"),
        n(&r, "acked") + n(&r, "unanswered") + error_acks(&r),
        "{r}"
    );
    assert!(stderr.contains("unanswered="), "{stderr}");
}

#[test]
fn p2p_several_devices_each_get_every_message_once() {
    let dir = TempDir::new("loss-p2p-devices");
    let broker = tools_broker().dir(dir.path()).limits(FAST).start();
    let (code, r, stderr) = load(
        &broker,
        "p2p",
        &[
            "--users",
            "10",
            "--rate",
            "1000",
            "--duration",
            "2s",
            "--threads",
            "2",
            "--devices-per-user",
            "3",
            "--multi-device-fraction",
            "0.4",
        ],
    );
    assert_eq!(code, Some(0), "{r}\n{stderr}");
    for k in [
        "lost",
        "duplicated",
        "out_of_order",
        "seq_gaps",
        "mismatched",
        "unanswered",
        "errors",
    ] {
        assert_eq!(n(&r, k), 0, "{k}: {r}");
    }
    assert_eq!(n(&r, "multi_device_users"), 4, "{r}");
    assert_eq!(n(&r, "devices"), 4 * 3 + 6, "{r}");
    // Each acked message is owed once per device of its recipient, and each was delivered.
    let acked = n(&r, "acked");
    assert_eq!(acked, n(&r, "sent"), "{r}");
    let expected = n(&r, "expected_deliveries");
    assert!(expected > acked, "{r}");
    assert_eq!(n(&r, "unique_delivered"), expected, "{r}");
    assert_eq!(n(&r, "delivered"), expected, "{r}");
}

#[test]
fn churn_several_devices_each_get_every_message_once_across_reconnects() {
    let dir = TempDir::new("loss-churn-devices");
    let broker = tools_broker().dir(dir.path()).limits(FAST).start();
    let (code, r, stderr) = load(
        &broker,
        "churn",
        &[
            "--users",
            "12",
            "--rate",
            "600",
            "--duration",
            "3s",
            "--churn-fraction",
            "0.5",
            "--churn-every",
            "300ms",
            "--threads",
            "1",
            "--devices-per-user",
            "2",
            "--multi-device-fraction",
            "0.5",
        ],
    );
    assert_eq!(code, Some(0), "{r}\n{stderr}");
    for k in [
        "lost",
        "duplicated",
        "out_of_order",
        "seq_gaps",
        "mismatched",
        "unanswered",
        "gave_up",
        "errors",
    ] {
        assert_eq!(n(&r, k), 0, "{k}: {r}");
    }
    assert_eq!(error_acks(&r), 0, "{r}");
    assert_eq!(n(&r, "devices"), 6 * 2 + 6, "{r}");
    assert!(n(&r, "reconnects") > 0, "{r}");
    let expected = n(&r, "expected_deliveries");
    assert!(expected > n(&r, "acked"), "{r}");
    assert_eq!(n(&r, "unique_delivered"), expected, "{r}");
}

#[test]
fn churn_fails_on_error_acks() {
    let dir = TempDir::new("loss-churn-inbox");
    let broker = tools_broker()
        .dir(dir.path())
        .limits("sends_per_sec = 100000\nmax_inbox = 3")
        .start();
    let (code, r, stderr) = load(
        &broker,
        "churn",
        &[
            "--users",
            "4",
            "--rate",
            "2000",
            "--duration",
            "1s",
            "--churn-fraction",
            "0.5",
            "--threads",
            "1",
        ],
    );
    assert_eq!(code, Some(1), "{r}\n{stderr}");
    let full = r["error_acks"]["INBOX_FULL"].as_u64().unwrap_or(0);
    assert!(full > 0, "{r}");
    assert_eq!(r["refused_by_code"]["INBOX_FULL"], full, "{r}");
    assert_eq!(n(&r, "lost"), 0, "{r}");
    assert!(stderr.contains("answered with an error"), "{stderr}");
}

#[test]
fn offline_counts_every_inbox_full_ack_and_fails() {
    // Recipients stay offline, so each inbox takes exactly max_inbox messages.
    let dir = TempDir::new("loss-offline-inbox");
    let broker = tools_broker()
        .dir(dir.path())
        .limits("sends_per_sec = 1000000\nmax_inbox = 100")
        .start();
    let (code, r, stderr) = load(&broker, "offline", &["--users", "4", "--messages", "1000"]);
    assert_eq!(code, Some(1), "{r}\n{stderr}");
    assert_eq!(n(&r, "sent"), 1000, "{r}");
    assert_eq!(n(&r, "acked"), 400, "{r}");
    assert_eq!(r["error_acks"]["INBOX_FULL"], 600, "{r}");
    assert_eq!(n(&r, "unanswered"), 0, "{r}");
    // What was accepted is all there, once, and nothing else.
    assert_eq!(n(&r, "delivered"), 400, "{r}");
    for k in ["lost", "duplicated", "out_of_order", "mismatched"] {
        assert_eq!(n(&r, k), 0, "{k}: {r}");
    }
    assert!(stderr.contains("ERROR ACKS 600"), "{stderr}");
}

/// A broker that stops answering: SIGSTOP (resumed on drop, so that it can be killed).
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        // SAFETY: kill(2) on a child process of this test; no memory involved.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

#[test]
fn offline_gives_up_instead_of_hanging_when_acks_stop_coming() {
    let dir = TempDir::new("loss-offline-stall");
    let broker = tools_broker()
        .dir(dir.path())
        .limits("sends_per_sec = 1000000")
        .start();
    let record = dir.path().join("acked.record");
    let child = tools(&[
        "load",
        "offline",
        "--phase",
        "send",
        "--json",
        "--addr",
        &broker.addr_string(),
        "--users",
        "2",
        "--messages",
        "400000",
        "--size",
        "8",
        "--ack-timeout",
        "2s",
    ])
    .arg("--secret-file")
    .arg(broker.secret_path())
    .arg("--record")
    .arg(&record)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // Acks are flowing (one flushed record line each): stop the broker mid-run.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&record).map_or(0, |t| t.lines().count()) < 500 {
        assert!(Instant::now() < deadline, "acks never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    let stopped = Stopped::new(broker.pid() as u32);
    let started = Instant::now();
    let (code, r, stderr) = parse(wait_within(child, Duration::from_secs(30)));
    drop(stopped);
    assert_eq!(code, Some(1), "{r}\n{stderr}");
    assert!(started.elapsed() < Duration::from_secs(15), "{stderr}");
    assert!(n(&r, "timed_out_connections") > 0, "{r}");
    assert!(n(&r, "unanswered") > 0, "{r}");
    assert!(n(&r, "sent") >= n(&r, "acked") + n(&r, "unanswered"), "{r}");
    assert!(stderr.contains("--ack-timeout"), "{stderr}");
}

#[test]
fn connect_login_latency_counts_the_wait_behind_the_in_flight_cap() {
    // All 150 logins are due at once and only one may be in flight: the last waits for the
    // other 149, and that wait is part of its login latency (the attempt alone is not).
    let dir = TempDir::new("loss-connect-queue");
    let broker = tools_broker().dir(dir.path()).start();
    let (code, r, stderr) = load(
        &broker,
        "connect",
        &[
            "--conns",
            "150",
            "--connect-rate",
            "0",
            "--max-inflight",
            "1",
            "--hold",
            "0s",
            "--threads",
            "1",
        ],
    );
    assert_eq!(code, Some(0), "{r}\n{stderr}");
    assert_eq!(n(&r, "connected"), 150, "{r}");
    let elapsed_us = r["connect_elapsed_s"].as_f64().unwrap() * 1e6;
    let login = &r["login_latency_us"];
    let attempt = &r["login_attempt_latency_us"];
    // The last login completes at the end of the connect phase, after waiting all of it.
    assert!(
        login["max"].as_f64().unwrap() >= 0.8 * elapsed_us,
        "login max {} vs connect phase {elapsed_us} µs: {r}",
        login["max"]
    );
    // Half of the logins waited behind at least 75 others; no single attempt takes that long.
    assert!(
        login["p50"].as_u64().unwrap() > 10 * attempt["p50"].as_u64().unwrap(),
        "{r}"
    );
    assert!(
        attempt["max"].as_u64().unwrap() <= login["max"].as_u64().unwrap(),
        "{r}"
    );
}

#[test]
fn connect_ping_rtt_counts_from_when_each_ping_was_due() {
    // 10 connections ping every 50 ms for 3 s; the broker stalls for 600 ms in the middle.
    // Every ping slot is still used (none skipped), and the ~12 pings per connection that fell
    // due in the stall count their wait: at least a tenth of all pings took 100 ms or more.
    let dir = TempDir::new("loss-connect-ping");
    let broker = tools_broker().dir(dir.path()).start();
    let mut child = tools(&[
        "load",
        "connect",
        "--json",
        "--addr",
        &broker.addr_string(),
        "--conns",
        "10",
        "--connect-rate",
        "1000",
        "--hold",
        "3s",
        "--ping-interval",
        "50ms",
        "--ping-timeout",
        "5s",
        "--threads",
        "1",
    ])
    .arg("--secret-file")
    .arg(broker.secret_path())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // The first progress line with pings answered: the hold is on.
    let mut progress = BufReader::new(child.stderr.take().unwrap());
    loop {
        let mut line = String::new();
        assert!(progress.read_line(&mut line).unwrap() > 0, "no progress");
        let pings = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("pings="))
            .and_then(|v| v.parse::<u64>().ok());
        if pings.is_some_and(|p| p > 0) {
            break;
        }
    }
    let stalled = Stopped::new(broker.pid() as u32);
    std::thread::sleep(Duration::from_millis(600)); // the stall itself, not a wait for anything
    drop(stalled);
    let drain = std::thread::spawn(move || {
        let _ = std::io::Read::read_to_string(&mut progress, &mut String::new());
    });
    let (code, r, _) = parse(wait_within(child, Duration::from_secs(60)));
    let _ = drain.join();
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(n(&r, "pings_lost"), 0, "{r}");
    // 60 slots per connection in the hold (the last may be cut off by its end).
    assert!(n(&r, "pings") >= 540, "ping slots were skipped: {r}");
    let p90 = r["ping_rtt_us"]["p90"].as_u64().unwrap();
    assert!(
        p90 >= 100_000,
        "the stall is hidden: ping p90 {p90} µs: {r}"
    );
}

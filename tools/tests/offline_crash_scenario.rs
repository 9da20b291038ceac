//! Crash test through the load tool: kill -9 the broker during `load offline --phase send`,
//! restart it, and `--phase verify` that every acknowledged message arrives exactly once. The
//! send phase itself fails (exit 1) and counts the sends the kill left unanswered.

use std::process::Stdio;
use std::time::{Duration, Instant};

use ringpost_harness::{tools, tools_broker, TempDir};

/// Runs one `load offline --phase PHASE --json` against `addr` with `record`; returns its exit
/// code, its JSON report and its stderr.
fn offline(
    addr: &str,
    secret: &std::path::Path,
    record: &std::path::Path,
    phase: &str,
    extra: &[&str],
) -> (Option<i32>, serde_json::Value, String) {
    let mut args = vec![
        "load", "offline", "--phase", phase, "--json", "--addr", addr,
    ];
    args.extend_from_slice(extra);
    let out = tools(&args)
        .arg("--secret-file")
        .arg(secret)
        .arg("--record")
        .arg(record)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{phase} printed: {stderr}"));
    (out.status.code(), report, stderr)
}

/// Kills the broker once `kill_after_acks` acks are recorded; returns the send phase's report.
fn crash_during_send(kill_after_acks: usize) -> serde_json::Value {
    let tmp = TempDir::new(&format!("offline-crash-{kill_after_acks}"));
    let dir = tmp.path();
    const LIMITS: &str = "sends_per_sec = 1000000";
    let record = dir.join("acked.record");
    let broker = tools_broker().dir(dir).limits(LIMITS).start();
    let (addr, secret) = (broker.addr_string(), broker.secret_path());

    let sender = tools(&[
        "load",
        "offline",
        "--phase",
        "send",
        "--users",
        "4",
        "--messages",
        "40000",
        "--addr",
        &addr,
        "--json",
    ])
    .arg("--secret-file")
    .arg(&secret)
    .arg("--record")
    .arg(&record)
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    // The record grows one flushed line per SendAck{OK}: kill the broker once it holds enough.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lines = std::fs::read_to_string(&record).map_or(0, |t| t.lines().count());
        if lines > kill_after_acks {
            break;
        }
        assert!(Instant::now() < deadline, "only {lines} acks recorded");
        std::thread::sleep(Duration::from_millis(5));
    }
    broker.crash();
    let out = sender.wait_with_output().unwrap();
    let sent: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Every send is accounted for: acked, or never answered because the broker died.
    let n = |k: &str| sent[k].as_u64().unwrap_or_else(|| panic!("no {k}: {sent}"));
    assert_eq!(n("sent"), n("acked") + n("unanswered"), "{sent}");
    assert_eq!(n("errors"), 0, "{sent}");
    // A send phase that left sends unanswered fails, and says the broker closed them.
    assert_eq!(out.status.success(), n("unanswered") == 0, "{sent}");
    if n("unanswered") > 0 {
        assert_eq!(out.status.code(), Some(1), "{sent}");
        assert!(n("closed_connections") > 0, "{sent}");
    }

    let broker = tools_broker().dir(dir).limits(LIMITS).start();
    let addr = broker.addr_string();
    let (code, report, stderr) = offline(&addr, &secret, &record, "verify", &["--users", "4"]);
    assert_eq!(code, Some(0), "{report} {stderr}");
    assert_eq!(report["lost"], 0);
    assert_eq!(report["duplicated"], 0);
    assert_eq!(report["out_of_order"], 0);
    assert!(report["acked"].as_u64().unwrap() > kill_after_acks as u64);
    assert!(report["delivered"].as_u64() >= report["acked"].as_u64());
    drop(broker);
    sent
}

#[test]
fn kill_9_early_in_the_send_phase_loses_no_acked_message() {
    let sent = crash_during_send(200);
    // 40,000 sends are written at once; the kill lands after ~200 acks.
    assert!(sent["unanswered"].as_u64().unwrap() > 0, "{sent}");
}

#[test]
fn kill_9_late_in_the_send_phase_loses_no_acked_message() {
    crash_during_send(15_000);
}

/// The verify phase replays several recipients at once (`--verify-concurrency`); what each
/// lane saw must add up exactly as one after another does: every message delivered once, and
/// an acknowledged message the broker never had (a line added to the record) reported lost
/// under its recipient, whichever lane verified it.
#[test]
fn concurrent_verify_adds_up_like_a_sequential_one_and_still_finds_a_loss() {
    let tmp = TempDir::new("offline-verify-lanes");
    let dir = tmp.path();
    let record = dir.join("acked.record");
    let broker = tools_broker()
        .dir(dir)
        .limits("sends_per_sec = 1000000")
        .start();
    let (addr, secret) = (broker.addr_string(), broker.secret_path());
    const SIZE: [&str; 4] = ["--users", "8", "--messages", "4000"];
    let offline = |phase: &str, extra: &[&str]| {
        let args: Vec<&str> = SIZE.iter().chain(extra).copied().collect();
        offline(&addr, &secret, &record, phase, &args)
    };
    let (code, sent, _) = offline("send", &[]);
    assert_eq!(
        (code, &sent["acked"]),
        (Some(0), &serde_json::json!(4000)),
        "{sent}"
    );

    for lanes in ["1", "3", "64"] {
        let (code, v, stderr) = offline("verify", &["--verify-concurrency", lanes]);
        assert_eq!(code, Some(0), "lanes {lanes}: {v} {stderr}");
        let counts = (
            &v["delivered"],
            &v["lost"],
            &v["duplicated"],
            &v["out_of_order"],
        );
        let want = serde_json::json!([4000, 0, 0, 0]);
        assert_eq!(
            serde_json::json!([counts.0, counts.1, counts.2, counts.3]),
            want,
            "lanes {lanes}: {v}"
        );
    }

    // Recipient 5 "was acked" an id no sender ever sent.
    let mut text = std::fs::read_to_string(&record).unwrap();
    text.push_str("5 987654321\n");
    std::fs::write(&record, text).unwrap();
    let (code, v, stderr) = offline("verify", &["--verify-concurrency", "3"]);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(
        (&v["lost"], &v["delivered"]),
        (&serde_json::json!(1), &serde_json::json!(4000))
    );
    assert!(
        stderr.contains("LOST 1 acknowledged message(s): r5#987654321"),
        "{stderr}"
    );
}

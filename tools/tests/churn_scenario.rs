//! `ringpost-tools load churn` against the real broker: users keep dropping and reconnecting
//! (backoff, resume after the last processed seq, resends with the same client_msg_id) while
//! messages flow, and nothing acked is lost, duplicated or reordered.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ringpost_harness::{tools, tools_broker, TempDir};

/// Runs the tool to its exit; kills it (and fails) if it runs past `limit`.
fn run_tool(args: &[&str], limit: Duration) -> Output {
    let child = tools(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
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

#[test]
fn churning_users_lose_nothing_and_see_nothing_twice() {
    let dir = TempDir::new("churn");
    let broker = tools_broker()
        .dir(dir.path())
        .limits("sends_per_sec = 100000")
        .start();
    let (addr, secret) = (broker.addr_string(), broker.secret_path());
    let started = Instant::now();
    let out = run_tool(
        &[
            "load",
            "churn",
            "--addr",
            &addr,
            "--secret-file",
            secret.to_str().unwrap(),
            "--users",
            "20",
            "--rate",
            "1000",
            "--duration",
            "3s",
            "--churn-fraction",
            "0.5",
            "--churn-every",
            "200ms",
            "--threads",
            "2",
            "--json",
        ],
        Duration::from_secs(60),
    );
    broker.crash();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): stderr: {stderr}"));
    assert!(out.status.success(), "{report}\n{stderr}");
    let n = |k: &str| {
        report[k]
            .as_u64()
            .unwrap_or_else(|| panic!("no {k} in {report}"))
    };
    assert_eq!(n("lost"), 0, "{report}");
    assert_eq!(n("duplicated"), 0, "{report}");
    assert_eq!(n("out_of_order"), 0, "{report}");
    assert_eq!(n("seq_gaps"), 0, "{report}");
    assert_eq!(n("unanswered"), 0, "{report}");
    assert_eq!(n("gave_up"), 0, "{report}");
    assert_eq!(n("mismatched"), 0, "{report}");
    // Nothing but the churn itself closes connections; every Logout is answered by
    // GoAway{LOGGED_OUT}; no reconnect attempt is refused.
    assert_eq!(n("unexpected_disconnects"), 0, "{report}");
    assert_eq!(n("reconnect_failures"), 0, "{report}");
    assert_eq!(n("churning_users"), 10);
    // 10 churning users × ~3 s / ~200 ms each: plenty of drops of every kind.
    let reconnects = n("reconnects");
    assert!(reconnects >= 30, "too few reconnects: {report}");
    for mode in ["abrupt", "logout", "replace"] {
        assert!(
            report["drops"][mode].as_u64().unwrap() > 0,
            "no {mode} drop: {report}"
        );
    }
    assert_eq!(
        report["drops"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>(),
        reconnects,
        "every drop is followed by one successful reconnect: {report}"
    );
    // 1000 msg/s for 3 s, every one answered OK and delivered exactly once.
    let (sent, acked) = (n("sent"), n("acked"));
    assert!((2980..=3000).contains(&sent), "{report}");
    assert_eq!(n("refused"), 0, "{report}");
    assert_eq!(acked, sent, "{report}");
    assert!(n("delivered") >= acked, "{report}");
    assert_eq!(n("unique_delivered"), acked, "{report}");
    assert!(report["reconnect_latency_us"]["p50"].as_u64().unwrap() > 0);
    assert!(report["latency_us"]["max"].as_u64().unwrap() > 0);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn bad_arguments_exit_2_before_touching_the_network() {
    let dir = TempDir::new("churn-args");
    let secret = dir.path().join("auth.secret");
    std::fs::write(&secret, "00112233445566778899aabbccddeeff").unwrap();
    let secret = secret.to_str().unwrap();
    // Port 1 on localhost: nothing listens, so reaching the network would fail differently.
    let base = [
        "load",
        "churn",
        "--addr",
        "127.0.0.1:1",
        "--secret-file",
        secret,
    ];
    for extra in [
        &["--users", "7"][..],
        &["--churn-fraction", "0"],
        &["--churn-fraction", "1.5"],
        &["--size", "8"],
        &["--rate", "0"],
    ] {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let out = run_tool(&args, Duration::from_secs(20));
        assert_eq!(
            out.status.code(),
            Some(2),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.is_empty());
    }
    // A broker that is not there: the first logins fail, which is also exit 2.
    let out = run_tool(
        &[&base[..], &["--users", "2", "--duration", "1s", "--json"]].concat(),
        Duration::from_secs(20),
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

//! `ringpost-tools load soak`, short: the tool runs the real broker, kills it with SIGKILL at
//! random moments under churn traffic, restarts it on the same data directory, and checks
//! every device's stream and a fresh replay of every inbox from the log.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ringpost_harness::{tools, TempDir};
use serde_json::Value;

fn broker_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ringpost-tools")).with_file_name("ringpost")
}

/// Runs a soak with `kills` SIGKILLs over `duration`; returns (exit code, report, stderr).
fn soak(name: &str, kills: &str, duration: &str) -> (Option<i32>, Value, String) {
    let dir = TempDir::new(name);
    let child = tools(&[
        "load",
        "soak",
        "--json",
        "--kills",
        kills,
        "--duration",
        duration,
        "--users",
        "10",
        "--rate",
        "300",
        "--churn-fraction",
        "0.3",
        "--devices-per-user",
        "2",
        "--drain-timeout",
        "5s",
    ])
    .arg("--dir")
    .arg(dir.path().join("soak"))
    .arg("--broker-bin")
    .arg(broker_bin())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let out = wait_within(child, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not one JSON object ({e}); stderr: {stderr}"));
    (out.status.code(), report, stderr)
}

fn wait_within(child: std::process::Child, limit: Duration) -> Output {
    let pid = child.id();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(limit).is_err() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            return true;
        }
        false
    });
    let out = child.wait_with_output().unwrap();
    let _ = done_tx.send(());
    assert!(!watchdog.join().unwrap(), "the soak ran past {limit:?}");
    out
}

fn n(r: &Value, k: &str) -> u64 {
    r[k].as_u64().unwrap_or_else(|| panic!("no {k} in {r}"))
}

#[test]
fn soak_kills_and_restarts_the_broker_and_delivers_everything_acked_exactly_once() {
    let (code, r, stderr) = soak("soak-smoke", "6", "8s");
    assert_eq!(n(&r, "kills"), 6, "{r}\n{stderr}");
    assert!(r["broker_failed"].is_null(), "{r}");
    assert_eq!(stderr.matches("soak: SIGKILL").count(), 6, "{stderr}");
    // Every acked message reached every device, in order, gap-free, and the log holds it.
    for k in [
        "lost",
        "out_of_order",
        "seq_gaps",
        "mismatched",
        "unanswered",
        "gave_up",
    ] {
        assert_eq!(n(&r, k), 0, "{k}: {r}");
    }
    let replay = &r["replay"];
    for k in ["lost", "out_of_order", "seq_gaps", "mismatched"] {
        assert_eq!(n(replay, k), 0, "replay {k}: {r}");
    }
    assert_eq!(n(replay, "recipients"), 10, "{r}");
    assert!(n(&r, "acked") > 0 && n(&r, "acked") == n(&r, "sent"), "{r}");
    assert!(n(replay, "unique") >= n(&r, "acked"), "{r}");
    // The kills showed: connections were lost and came back.
    assert!(n(&r, "unexpected_disconnects") > 0, "{r}");
    assert!(n(&r, "reconnects") > 0, "{r}");
    // Exactly once: no delivery twice, live or in the log, across the kills — the sends a kill
    // left unacked were resent with the same client_msg_id after the restart, and the dedup
    // window rebuilt from the log answered them.
    assert_eq!(n(&r, "duplicated"), 0, "{r}");
    assert_eq!(n(replay, "duplicated"), 0, "{r}");
    assert!(!stderr.contains("DUPLICATES:"), "{stderr}");
    assert_eq!(r["passed"], true, "{r}");
    assert_eq!(code, Some(0), "{r}\n{stderr}");
}

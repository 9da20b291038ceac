//! Crash test through the load tool: kill -9 the broker during `load offline --phase send`,
//! restart it, and `--phase verify` that every acknowledged message arrives exactly once.

use std::process::Stdio;
use std::time::{Duration, Instant};

use ringpost_harness::{tools, tools_broker, TempDir};

fn crash_during_send(kill_after_acks: usize) {
    let tmp = TempDir::new(&format!("offline-crash-{kill_after_acks}"));
    let dir = &tmp.0;
    const LIMITS: &str = "sends_per_sec = 1000000";
    let record = dir.join("acked.record");
    let broker = tools_broker().dir(dir).limits(LIMITS).start();
    let (addr, secret) = (broker.addr_string(), broker.secret_path());

    let mut sender = tools(&[
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
    .stdout(Stdio::null())
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
    let status = sender.wait().unwrap();
    assert!(
        status.success(),
        "the send phase ends cleanly when the broker dies"
    );

    let broker = tools_broker().dir(dir).limits(LIMITS).start();
    let addr = broker.addr_string();
    let out = tools(&[
        "load", "offline", "--phase", "verify", "--users", "4", "--json", "--addr", &addr,
    ])
    .arg("--secret-file")
    .arg(&secret)
    .arg("--record")
    .arg(&record)
    .output()
    .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("verify printed: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        out.status.success(),
        "{report} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["lost"], 0);
    assert_eq!(report["duplicated"], 0);
    assert_eq!(report["out_of_order"], 0);
    assert!(report["acked"].as_u64().unwrap() > kill_after_acks as u64);
    assert!(report["delivered"].as_u64() >= report["acked"].as_u64());
    drop(broker);
}

#[test]
fn kill_9_early_in_the_send_phase_loses_no_acked_message() {
    crash_during_send(200);
}

#[test]
fn kill_9_late_in_the_send_phase_loses_no_acked_message() {
    crash_during_send(15_000);
}

//! Crash test through the load tool: kill -9 the broker during `load offline --phase send`,
//! restart it, and `--phase verify` that every acknowledged message arrives exactly once.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn broker_bin() -> PathBuf {
    // The broker is a binary of the sibling package, built into the same target directory.
    let tools = PathBuf::from(env!("CARGO_BIN_EXE_ringpost-tools"));
    let bin = tools.with_file_name("ringpost");
    assert!(
        bin.exists(),
        "build the workspace first (cargo test --workspace): {bin:?}"
    );
    bin
}

fn start_broker(dir: &Path) -> (Child, String) {
    let mut child = Command::new(broker_bin())
        .arg("--config")
        .arg(dir.join("ringpost.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .strip_prefix("ringpost listening on ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("broker did not start: {line:?}"))
        .to_string();
    (child, addr)
}

fn tools(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ringpost-tools"));
    c.args(args);
    c
}

fn crash_during_send(kill_after_acks: usize) {
    let dir = std::env::temp_dir().join(format!(
        "ringpost-offline-crash-{}-{kill_after_acks}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("ringpost.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshards = 2\n\
             [storage]\ndata_dir = \"{d}/data\"\nsegment_size = \"4MiB\"\nfsync = \"always\"\n\
             [auth]\nsecret_file = \"{d}/auth.secret\"\n\
             [limits]\nsends_per_sec = 1000000\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let record = dir.join("acked.record");
    let secret = dir.join("auth.secret");
    let (mut broker, addr) = start_broker(&dir);

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
    broker.kill().unwrap();
    broker.wait().unwrap();
    let status = sender.wait().unwrap();
    assert!(
        status.success(),
        "the send phase ends cleanly when the broker dies"
    );

    let (mut broker, addr) = start_broker(&dir);
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
    let _ = broker.kill();
    let _ = broker.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kill_9_early_in_the_send_phase_loses_no_acked_message() {
    crash_during_send(200);
}

#[test]
fn kill_9_late_in_the_send_phase_loses_no_acked_message() {
    crash_during_send(15_000);
}

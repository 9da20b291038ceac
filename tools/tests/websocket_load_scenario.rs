//! `load p2p|connect|offline --transport ws` against the real broker: the same scenarios, every
//! client on the WebSocket port. `--addr` points at a port where nothing listens, so a client
//! that fell back to TCP would fail.

use ringpost_harness::{tools, tools_broker, TempDir, TestBroker};
use serde_json::Value;

const NOWHERE: &str = "127.0.0.1:1";

fn load(broker: &TestBroker, scenario: &str, extra: &[&str]) -> Value {
    let out = tools(&[
        "load",
        scenario,
        "--json",
        "--addr",
        NOWHERE,
        "--transport",
        "ws",
    ])
    .arg("--ws-addr")
    .arg(broker.ws().to_string())
    .arg("--secret-file")
    .arg(broker.secret_path())
    .args(extra)
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let r: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("no JSON; stderr: {stderr}"));
    assert!(out.status.success(), "{r} {stderr}");
    r
}

#[test]
fn p2p_over_websocket_delivers_everything_in_order() {
    let dir = TempDir::new("ws-p2p");
    let broker = tools_broker()
        .dir(dir.path())
        .limits("sends_per_sec = 100000")
        .start();
    let r = load(
        &broker,
        "p2p",
        &[
            "--users",
            "10",
            "--rate",
            "1000",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--size",
            "64",
            "--threads",
            "2",
        ],
    );
    for k in ["lost", "duplicated", "out_of_order", "errors"] {
        assert_eq!(r[k], 0, "{k}: {r}");
    }
    let sent = r["sent"].as_u64().unwrap();
    assert!(sent >= 1_100, "{r}");
    assert_eq!(r["acked"], r["sent"]);
    assert_eq!(r["delivered"], r["sent"]);
}

#[test]
fn connect_over_websocket_holds_connections_in_every_process() {
    let dir = TempDir::new("ws-connect");
    let broker = tools_broker().dir(dir.path()).start();
    let pid = broker.pid().to_string();
    let r = load(
        &broker,
        "connect",
        &[
            "--conns",
            "200",
            "--connect-rate",
            "2000",
            "--hold",
            "1s",
            "--ping-interval",
            "200ms",
            "--processes",
            "2",
            "--threads",
            "1",
            "--source-ips",
            "127.0.0.2-127.0.0.3",
            "--broker-pid",
            &pid,
        ],
    );
    assert_eq!(r["connected"], 200, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    assert_eq!(r["dropped_while_holding"], 0, "{r}");
    assert!(r["pings"].as_u64().unwrap() >= 200, "{r}");
    assert_eq!(r["pings_lost"], 0, "{r}");
}

#[test]
fn offline_over_websocket_replays_everything() {
    let dir = TempDir::new("ws-offline");
    let broker = tools_broker()
        .dir(dir.path())
        .limits("sends_per_sec = 1000000")
        .start();
    let r = load(&broker, "offline", &["--users", "4", "--messages", "2000"]);
    assert_eq!(r["acked"], 2000, "{r}");
    assert_eq!(r["delivered"], 2000, "{r}");
    for k in ["lost", "duplicated", "out_of_order"] {
        assert_eq!(r[k], 0, "{k}: {r}");
    }
}

//! `load connect` against the real broker binary: connections open from several source
//! addresses, log in, hold with pings, and the report carries the broker's memory per
//! connection; failures are counted by their stable code.

use std::path::Path;

use ringpost_harness::{tools, tools_broker, TempDir, TestBroker};
use serde_json::Value;

fn connect(broker: &TestBroker, secret: &Path, extra: &[&str]) -> (bool, Value, String) {
    let out = tools(&["load", "connect", "--json", "--addr", &broker.addr_string()])
        .arg("--secret-file")
        .arg(secret)
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let report: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("no JSON; stderr: {stderr}"));
    (out.status.success(), report, stderr)
}

fn percentiles_present(v: &Value) {
    for k in ["p50", "p90", "p99", "p999", "p9999", "max"] {
        assert!(v[k].as_u64().is_some(), "{k} missing in {v}");
    }
    assert!(v["p50"].as_u64() <= v["max"].as_u64());
}

#[test]
fn holds_connections_from_many_source_addresses_across_processes() {
    let dir = TempDir::new("connect-hold");
    let broker = tools_broker().dir(dir.path()).start();
    let pid = broker.pid().to_string();
    let (ok, r, stderr) = connect(
        &broker,
        &broker.secret_path(),
        &[
            "--conns",
            "400",
            "--connect-rate",
            "4000",
            "--hold",
            "1s",
            "--ping-interval",
            "200ms",
            "--processes",
            "2",
            "--threads",
            "1",
            "--source-ips",
            "127.0.0.2-127.0.0.5",
            "--broker-pid",
            &pid,
        ],
    );
    assert!(ok, "{r} {stderr}");
    assert_eq!(r["connected"], 400);
    assert_eq!(r["failed"], 0);
    assert_eq!(r["dropped_while_holding"], 0);
    assert!(r["connect_rate_per_s"].as_f64().unwrap() > 0.0);
    percentiles_present(&r["login_latency_us"]);
    percentiles_present(&r["ping_rtt_us"]);
    // 400 connections pinging every 200 ms through a 1 s hold.
    assert!(r["pings"].as_u64().unwrap() >= 400, "{r}");
    assert_eq!(r["pings_lost"], 0);
    // The broker's RSS grew while it held them; its TCP socket count covers both ends.
    assert!(r["broker_rss_bytes_per_conn"].as_i64().unwrap() > 0, "{r}");
    assert!(r["kernel_sock_bytes_per_conn"].as_i64().is_some());
    let inuse = r["broker"]["tcp_inuse_holding"].as_u64().unwrap()
        - r["broker"]["tcp_inuse_before"].as_u64().unwrap();
    // (sockstat counts the whole network namespace, where this binary's other tests also open
    // and close a few dozen sockets at the same time.)
    assert!(inuse >= 700, "both ends of 400 connections: {r}");
    // Every one of the four source addresses really carried connections.
    let used: Vec<&str> = r["source_addrs_seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        used,
        ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"],
        "{r}"
    );
}

#[test]
fn source_address_binding_is_real() {
    // 192.0.2.1 (TEST-NET-1) is not an address of this machine: binding to it must fail, and
    // the failure is reported by name, not as a hang or a success.
    let dir = TempDir::new("connect-badsrc");
    let broker = tools_broker().dir(dir.path()).start();
    let (ok, r, stderr) = connect(
        &broker,
        &broker.secret_path(),
        &[
            "--conns",
            "20",
            "--hold",
            "0s",
            "--threads",
            "1",
            "--source-ips",
            "192.0.2.1",
        ],
    );
    assert!(!ok, "{r} {stderr}");
    assert_eq!(r["connected"], 0);
    assert_eq!(r["failed"], 20);
    assert_eq!(r["failed_by_code"]["EADDRNOTAVAIL"], 20, "{r}");
}

#[test]
fn refused_logins_are_counted_by_code() {
    let dir = TempDir::new("connect-badtoken");
    let broker = tools_broker().dir(dir.path()).start();
    let wrong = dir.path().join("other.secret");
    std::fs::write(
        &wrong,
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
    )
    .unwrap();
    let (ok, r, stderr) = connect(
        &broker,
        &wrong,
        &["--conns", "30", "--hold", "0s", "--threads", "1"],
    );
    assert!(!ok, "{r} {stderr}");
    assert_eq!(r["connected"], 0);
    assert_eq!(r["failed"], 30);
    let by_code = r["failed_by_code"].as_object().unwrap();
    assert_eq!(by_code.len(), 1, "{r}");
    let (code, n) = by_code.iter().next().unwrap();
    assert_eq!(n, 30);
    assert!(code.starts_with("AUTH") || code.contains("TOKEN"), "{code}");
}

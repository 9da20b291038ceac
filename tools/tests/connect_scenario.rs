//! `load connect` against the real broker binary: connections open from several source
//! addresses, log in, hold with pings, and the report carries the broker's memory per
//! connection; failures are counted by their stable code.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

struct Broker {
    child: Child,
    addr: String,
    dir: PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_broker(name: &str) -> Broker {
    let dir = std::env::temp_dir().join(format!("ringpost-connect-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("ringpost.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshards = 2\n\
             [storage]\ndata_dir = \"{d}/data\"\nsegment_size = \"4MiB\"\n\
             [auth]\nsecret_file = \"{d}/auth.secret\"\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let tools = PathBuf::from(env!("CARGO_BIN_EXE_ringpost-tools"));
    let mut child = Command::new(tools.with_file_name("ringpost"))
        .arg("--config")
        .arg(dir.join("ringpost.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("build the workspace first (cargo test --workspace)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .strip_prefix("ringpost listening on ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("broker did not start: {line:?}"))
        .to_string();
    Broker { child, addr, dir }
}

fn connect(broker: &Broker, secret: &Path, extra: &[&str]) -> (bool, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringpost-tools"))
        .args(["load", "connect", "--json", "--addr", &broker.addr])
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
    let broker = start_broker("hold");
    let pid = broker.child.id().to_string();
    let (ok, r, stderr) = connect(
        &broker,
        &broker.dir.join("auth.secret"),
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
    let broker = start_broker("badsrc");
    let (ok, r, stderr) = connect(
        &broker,
        &broker.dir.join("auth.secret"),
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
    let broker = start_broker("badtoken");
    let wrong = broker.dir.join("other.secret");
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

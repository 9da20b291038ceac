//! `ringpost-tools load p2p` against the real broker: an open-loop run across shards that
//! checks every message and reports latency percentiles, and the same run refused when the
//! pairing promise cannot hold.

use ringpost_harness::{tools, tools_broker, TempDir};
use serde_json::Value;

#[test]
fn cross_shard_pairs_deliver_everything_in_order_with_percentiles() {
    let dir = TempDir::new("p2p");
    let broker = tools_broker()
        .dir(dir.path())
        .limits("sends_per_sec = 100000")
        .start();
    let out = tools(&[
        "load",
        "p2p",
        "--json",
        "--addr",
        &broker.addr_string(),
        "--users",
        "20",
        "--rate",
        "2000",
        "--duration",
        "2s",
        "--warmup",
        "500ms",
        "--size",
        "100",
        "--shards",
        "2",
        "--pairs-cross-shard-only",
        "--threads",
        "2",
    ])
    .arg("--secret-file")
    .arg(broker.secret_path())
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let r: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("no JSON; stderr: {stderr}"));
    assert!(out.status.success(), "{r} {stderr}");
    for k in ["lost", "duplicated", "out_of_order", "errors"] {
        assert_eq!(r[k], 0, "{k}: {r}");
    }
    // 2.5 s at 2,000 msg/s; every send acked and delivered.
    let sent = r["sent"].as_u64().unwrap();
    assert!((4_900..=5_000).contains(&sent), "{r}");
    assert_eq!(r["acked"], r["sent"]);
    assert_eq!(r["delivered"], r["sent"]);
    assert_eq!(r["size"], 100);
    let lat = &r["latency_us"];
    for k in ["p50", "p90", "p99", "p999", "p9999", "max"] {
        assert!(lat[k].as_u64().is_some(), "{k} missing: {r}");
    }
    assert!(lat["p50"].as_u64() <= lat["p99"].as_u64());
    // The generator's own lateness is part of every message's latency (each was delivered), so
    // it can never exceed it.
    let lag = &r["send_lag_us"];
    for k in ["p50", "p99", "max"] {
        let (lag, lat) = (lag[k].as_u64(), lat[k].as_u64());
        assert!(
            lag.is_some() && lag <= lat,
            "send_lag_us.{k} {lag:?} > latency {lat:?}: {r}"
        );
    }
    // The progress line ran once a second on stderr.
    assert!(stderr.contains("msgs/s="), "{stderr}");
}

#[test]
fn cross_shard_pairing_needs_the_shard_count() {
    let out = tools(&[
        "load",
        "p2p",
        "--json",
        "--addr",
        "127.0.0.1:9",
        "--secret-file",
        "/nonexistent",
        "--pairs-cross-shard-only",
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

//! The broker's metrics after a known `load p2p` run: every counter moves by exactly what the
//! load tool reports it did.

use ringpost_harness::{metric, metric_total, tools, tools_broker};
use serde_json::Value;

#[test]
fn metrics_count_exactly_what_a_p2p_run_did() {
    let broker = tools_broker().limits("sends_per_sec = 100000").start();
    let before = broker.metrics();
    let users = 20;
    let out = tools(&[
        "load",
        "p2p",
        "--json",
        "--addr",
        &broker.addr_string(),
        "--users",
        &users.to_string(),
        "--rate",
        "2000",
        "--duration",
        "2s",
        "--warmup",
        "500ms",
        "--size",
        "64",
        "--threads",
        "1",
    ])
    .arg("--secret-file")
    .arg(broker.secret_path())
    .output()
    .unwrap();
    let r: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("no JSON: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "{r}");
    let after = broker.metrics();
    let delta = |name: &str| metric_total(&after, name) - metric_total(&before, name);
    let acked = r["acked"].as_f64().unwrap();
    assert!(acked > 1000.0, "{r}");
    assert_eq!(
        delta("ringpost_messages_accepted_total"),
        acked,
        "{r}\n{after}"
    );
    // Own-send sync is on (the default): every accepted message also enters its sender's
    // stream (entries of the group commits too), but the one device of each user made the
    // send, so it is passed over: the SendAck names it, and no Deliver goes out for it.
    let copies = r["own_copies"].as_f64().unwrap();
    assert_eq!(
        copies, acked,
        "one sender device per user: one copy passed over per message: {r}"
    );
    assert_eq!(r["echoes"].as_f64().unwrap(), 0.0, "{r}");
    assert_eq!(
        delta("ringpost_messages_delivered_total"),
        r["delivered"].as_f64().unwrap(),
        "{r}\n{after}"
    );
    assert_eq!(delta("ringpost_commit_batch_size_sum"), acked + copies);
    assert_eq!(
        metric(&after, "ringpost_logins_total{result=\"OK\"}")
            - metric(&before, "ringpost_logins_total{result=\"OK\"}"),
        users as f64
    );
    assert_eq!(delta("ringpost_send_rejected_total"), 0.0, "{after}");
    // With 2 shards, pairs across shards send over the mesh both ways (messages, acks).
    assert!(delta("ringpost_mesh_envelopes_total") > 0.0, "{after}");

    // Stage stamps: every acked send went through each stage once (fsync = "always"; `mesh`
    // and `ack_mesh` only when the pair is across shards), and the stages add up to the total.
    let stage = |what: &str, s: &str| {
        let series = format!("ringpost_message_stage_seconds_{what}{{stage=\"{s}\"}}");
        metric(&after, &series) - metric(&before, &series)
    };
    for s in [
        "append",
        "commit_wait",
        "sync",
        "ack_release",
        "ack_write",
        "total",
    ] {
        assert_eq!(stage("count", s), acked, "stage {s}: {after}");
    }
    assert!(stage("count", "mesh") > 0.0, "{after}");
    assert_eq!(stage("count", "mesh"), stage("count", "ack_mesh"));
    let parts: f64 = [
        "mesh",
        "append",
        "commit_wait",
        "sync",
        "ack_release",
        "ack_mesh",
        "ack_write",
    ]
    .iter()
    .map(|s| stage("sum", s))
    .sum();
    let total = stage("sum", "total");
    assert!(
        total > 0.0 && (parts - total).abs() <= total * 1e-6,
        "stages {parts} s against total {total} s"
    );
}

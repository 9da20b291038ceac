//! `ringpost-tools load fanout` against the real broker: an end-to-end run across shards, a run
//! with offline members replaying, kill -9 between and during the phases of a crash test, and
//! runs the tool must fail (a member removed mid-run by a second client, a broker killed
//! mid-run).

use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use ringpost::protocol::{Code, GroupOp, Names};
use ringpost_harness::{run, tools, tools_broker, TempDir, TestBroker};
use serde_json::Value;

const LIMITS: &str = "sends_per_sec = 100000";

fn fanout(broker: &TestBroker, args: &[&str]) -> std::process::Command {
    let mut c = tools(&["load", "fanout", "--json", "--addr", &broker.addr_string()]);
    c.arg("--secret-file").arg(broker.secret_path()).args(args);
    c
}

fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "no JSON (exit {:?}); stderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn n(r: &Value, k: &str) -> u64 {
    r[k].as_u64().unwrap_or_else(|| panic!("no {k}: {r}"))
}

fn assert_clean(r: &Value) {
    for k in [
        "lost",
        "duplicated",
        "out_of_order",
        "seq_gaps",
        "group_seq_gaps",
        "mismatched",
        "unanswered",
        "errors",
    ] {
        assert_eq!(r[k], 0, "{k}: {r}");
    }
    assert_eq!(r["error_acks"], serde_json::json!({}), "{r}");
}

/// Waits until the record at `path` holds more than `acks` acknowledged messages.
fn wait_for_acks(path: &Path, acks: usize, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lines = std::fs::read_to_string(path).map_or(0, |t| {
            t.lines()
                .filter(|l| !l.starts_with('#') && !l.starts_with('w'))
                .count()
        });
        if lines > acks {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the send phase ended ({status}) with only {lines} acks recorded");
        }
        assert!(Instant::now() < deadline, "only {lines} acks recorded");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The run id in a record's header.
fn run_id(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let header = text.lines().next().unwrap();
    header
        .split_whitespace()
        .find_map(|w| w.strip_prefix("run="))
        .unwrap()
        .to_owned()
}

#[test]
fn every_member_gets_every_group_message_once_in_order_across_shards() {
    let dir = TempDir::new("fanout-e2e");
    let broker = tools_broker().dir(dir.path()).limits(LIMITS).start();
    let data = dir.path().join("data");
    let out = fanout(
        &broker,
        &[
            "--groups",
            "2",
            "--members",
            "30",
            "--senders",
            "2",
            "--rate",
            "300",
            "--duration",
            "2s",
            "--warmup",
            "500ms",
            "--shards",
            "2",
            "--threads",
            "2",
            "--create-chunk",
            "7", // a create and four adds per group
        ],
    )
    .arg("--data-dir")
    .arg(&data)
    .output()
    .unwrap();
    let r = report(&out);
    assert!(
        out.status.success(),
        "{r} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_clean(&r);
    // 2.5 s at 300 msg/s over 4 senders; every send acked, every member got every message.
    let sent = n(&r, "sent");
    assert!((740..=752).contains(&sent), "{r}");
    assert_eq!(r["acked"], r["sent"]);
    assert_eq!(n(&r, "expected_deliveries"), sent * 30, "{r}");
    assert_eq!(r["delivered"], r["expected_deliveries"]);
    assert_eq!(r["unique_delivered"], r["expected_deliveries"]);
    // Each member's stream holds the create and the four adds that came before it joined or
    // after: at least one group event per member.
    assert!(n(&r, "events") >= 60, "{r}");
    for k in ["p50", "p99", "p999", "max"] {
        assert!(r["latency_us"][k].as_u64().unwrap() > 0, "{k}: {r}");
    }
    let fan = &r["fanout_complete_us"];
    assert!(fan["p50"].as_u64() <= fan["p99"].as_u64(), "{r}");
    assert!(
        fan["p50"].as_u64() >= r["latency_us"]["p50"].as_u64(),
        "{r}"
    );
    // The body is stored once per shard with members, not once per member: 2 shards × (64 B
    // body + record framing) per message, far below 30 members × 64 B.
    let group_bytes = r["log_bytes_per_message_by_kind"]["group"]
        .as_f64()
        .unwrap();
    assert!((128.0..=2.0 * 400.0).contains(&group_bytes), "{r}");
    assert!(r["log_bytes_per_message"].as_f64().unwrap() >= group_bytes);
    let groups = r["placement"]["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    for g in groups {
        let per_shard: u64 = g["members_per_shard"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(per_shard, 30, "{g}");
    }
}

#[test]
fn offline_members_replay_every_group_message_in_order() {
    let dir = TempDir::new("fanout-offline");
    let broker = tools_broker().dir(dir.path()).limits(LIMITS).start();
    let out = fanout(
        &broker,
        &[
            "--members",
            "41",
            "--senders",
            "1",
            "--rate",
            "200",
            "--duration",
            "2s",
            "--offline-fraction",
            "0.5",
        ],
    )
    .output()
    .unwrap();
    let r = report(&out);
    assert!(
        out.status.success(),
        "{r} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_clean(&r);
    // Half of the 40 non-senders stayed offline and replayed all 400 messages each.
    assert_eq!(n(&r, "offline_members"), 20, "{r}");
    let acked = n(&r, "acked");
    assert!(acked >= 390, "{r}");
    assert_eq!(n(&r, "replayed"), 20 * acked, "{r}");
    assert_eq!(n(&r, "expected_deliveries"), 41 * acked, "{r}");
    assert_eq!(r["unique_delivered"], r["expected_deliveries"]);
}

/// Runs the send phase; with `kill_after_acks`, kills the broker with SIGKILL once that many
/// acks are recorded, else after the phase ends. Then restarts it on the same directory and
/// runs the verify phase. Returns (send report, send exit code, verify report).
fn crash_test(kill_after_acks: Option<usize>) -> (Value, Option<i32>, Value) {
    let tmp = TempDir::new("fanout-crash");
    let dir = tmp.path();
    let record = dir.join("acked.record");
    let broker = tools_broker().dir(dir).limits(LIMITS).start();
    let mut send = fanout(
        &broker,
        &[
            "--groups",
            "2",
            "--members",
            "25",
            "--senders",
            "2",
            "--rate",
            "800",
            "--duration",
            "3s",
            "--drain-timeout",
            "3s",
            "--phase",
            "send",
        ],
    )
    .arg("--record")
    .arg(&record)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let (sent, code) = match kill_after_acks {
        Some(acks) => {
            wait_for_acks(&record, acks, &mut send);
            broker.crash();
            let out = send.wait_with_output().unwrap();
            (report(&out), out.status.code())
        }
        None => {
            let out = send.wait_with_output().unwrap();
            broker.crash();
            (report(&out), out.status.code())
        }
    };
    let broker = tools_broker().dir(dir).limits(LIMITS).start();
    let out = fanout(&broker, &["--phase", "verify"])
        .arg("--record")
        .arg(&record)
        .output()
        .unwrap();
    let verified = report(&out);
    assert!(
        out.status.success(),
        "{verified} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (sent, code, verified)
}

#[test]
fn kill_9_between_the_phases_loses_and_duplicates_no_acked_group_message() {
    let (sent, code, v) = crash_test(None);
    assert_eq!(code, Some(0), "{sent}");
    assert_clean(&sent);
    assert_clean(&v);
    let acked = n(&sent, "acked");
    assert!(acked >= 2390, "{sent}");
    assert_eq!(n(&v, "acked"), acked, "the record holds every ack: {v}");
    // After the restart every member (a new device) replays every acked message exactly once.
    assert_eq!(n(&v, "expected_deliveries"), 25 * acked, "{v}");
    assert_eq!(n(&v, "unique_delivered"), 25 * acked, "{v}");
    assert_eq!(n(&v, "delivered"), 25 * acked, "{v}");
}

#[test]
fn kill_9_during_the_sends_fails_the_send_phase_and_loses_nothing_acked() {
    let (sent, code, v) = crash_test(Some(300));
    // The kill left sends unanswered: the send phase says so and fails.
    assert_eq!(code, Some(1), "{sent}");
    assert!(n(&sent, "unanswered") > 0, "{sent}");
    assert_eq!(n(&sent, "sent"), n(&sent, "acked") + n(&sent, "unanswered"));
    // What was acked survived, once, in order, for every member; a message stored whose ack
    // the crash swallowed may arrive too, but never twice.
    assert_clean(&v);
    let acked = n(&v, "acked");
    assert!(acked > 300, "{v}");
    assert_eq!(n(&v, "expected_deliveries"), 25 * acked, "{v}");
    assert!(n(&v, "unique_delivered") >= 25 * acked, "{v}");
}

#[test]
fn a_member_removed_mid_run_makes_the_run_fail_with_lost_deliveries() {
    let dir = TempDir::new("fanout-removed");
    let record = dir.path().join("acked.record");
    let broker = tools_broker().dir(dir.path()).limits(LIMITS).start();
    let mut child = fanout(
        &broker,
        &[
            "--members",
            "10",
            "--rate",
            "200",
            "--duration",
            "3s",
            "--drain-timeout",
            "2s",
            "--phase",
            "send",
        ],
    )
    .arg("--record")
    .arg(&record)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_for_acks(&record, 50, &mut child);
    // The group's creator (its admin), from a second client, removes member 5.
    let run_id = run_id(&record);
    let (group, admin, victim) = (
        format!("fan-{run_id}-g0"),
        format!("fan-{run_id}-g0-m0"),
        format!("fan-{run_id}-g0-m5"),
    );
    run(async {
        let mut c = broker.connect(&admin, "test-admin").await;
        let members = [victim.as_str()];
        c.group_op(
            77,
            &group,
            GroupOp::Remove {
                members: Names::Slice(&members),
            },
        )
        .await
        .unwrap();
        loop {
            match ringpost_harness::expect_event(&mut c).await {
                ringpost::client::Event::GroupReply(r) if r.request_id == 77 => {
                    assert_eq!(r.status, Code::OK, "{r:?}");
                    break;
                }
                _ => {}
            }
        }
    });
    let out = child.wait_with_output().unwrap();
    let r = report(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{r} {stderr}");
    // Every message acked after the removal is missing for member 5, and only for it.
    let lost = n(&r, "lost");
    assert!(lost > 0 && lost < n(&r, "acked"), "{r}");
    assert_eq!(
        n(&r, "expected_deliveries"),
        n(&r, "unique_delivered") + lost,
        "{r}"
    );
    assert!(
        stderr.contains("FAILED: ") && stderr.contains("lost="),
        "{stderr}"
    );
}

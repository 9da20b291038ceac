//! Power loss: what `fsync = "always"` promises, proved by cutting the power.
//!
//! kill -9 alone keeps the page cache, so it cannot tell a synced log from an unsynced one.
//! Here the broker runs with the storage layer's power log (`RINGPOST_FAULT_POWER_LOG`: every
//! completed sync is recorded); after the SIGKILL, `simulate_power_cut` takes away every byte
//! and every file name no completed sync covered, and only then does the broker restart.
//! Every message acked OK must still be there, exactly once and in order. The companion test
//! skips the msync (`RINGPOST_FAULT_SKIP_SYNC_FILE`) and must see acked messages vanish:
//! proof that the first test can fail.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use ringpost::client::Event;
use ringpost::log::fault::{self, PowerCut, Unsynced};
use ringpost::protocol::Code;
use ringpost_harness::*;

/// Relative to the data directory, so the same values serve every broker of this binary.
const POWER_LOG: &str = "power.log";
const SKIP_SYNC: &str = "fault-skip-sync";
const SYNC_FAIL: &str = "fault-sync-fail";

const SHARDS: usize = 2;
const LIMITS: &str = "sends_per_sec = 1000000";
/// Small segments: rolls (segment creation, directory fsyncs) happen mid-traffic.
const STORAGE: &str = "fsync = \"always\"\nsegment_size = \"256KiB\"";

fn data_dir(dir: &Path) -> PathBuf {
    dir.join("data")
}

/// (sender, client_msg_id) → recipient, for every SendAck{OK}.
type Acked = HashMap<(String, u64), String>;

struct Traffic {
    senders: Vec<String>,
    rcpts: Vec<String>,
}

impl Traffic {
    fn new(tag: &str) -> Traffic {
        // Senders and recipients on both shards: same-shard and cross-shard sends.
        Traffic {
            senders: (0..4)
                .map(|i| user_on_shard(&format!("{tag}-s{i}"), i % SHARDS, SHARDS))
                .collect(),
            rcpts: (0..4)
                .map(|i| user_on_shard(&format!("{tag}-r{i}"), i % SHARDS, SHARDS))
                .collect(),
        }
    }

    /// Every sender sends `per_sender` messages (ids from `first_id`) round-robin to the
    /// recipients, in paced chunks; once `kill_after` SendAck{OK} have arrived in total, the
    /// broker gets SIGKILL while sends are still in flight. Returns what was acked OK.
    fn send_and_kill(
        &self,
        broker: &TestBroker,
        first_id: u64,
        per_sender: u64,
        kill_after: usize,
    ) -> Acked {
        let pid = broker.pid();
        run(async {
            let acked_total = Rc::new(Cell::new(0usize));
            let (mut tasks, mut ack_tasks) = (Vec::new(), Vec::new());
            for sender in &self.senders {
                let c = broker.connect(sender, "d").await;
                let (mut reader, mut writer) = c.split();
                let rcpts = self.rcpts.clone();
                tasks.push(glommio::spawn_local(async move {
                    for chunk in 0..per_sender / 20 {
                        for k in 0..20 {
                            let id = first_id + chunk * 20 + k;
                            let to = &rcpts[(id % rcpts.len() as u64) as usize];
                            if writer.send(id, to, &id.to_le_bytes()).await.is_err() {
                                return;
                            }
                        }
                        // Pacing, so commits and rolls interleave with the traffic.
                        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                    }
                }));
                let (sender, rcpts, total) =
                    (sender.clone(), self.rcpts.clone(), acked_total.clone());
                let acks = glommio::spawn_local(async move {
                    let mut acked = Vec::new();
                    for _ in 0..per_sender {
                        let event = match next_event_of(&mut reader).await {
                            Some(e) => e,
                            None => break, // the broker is gone
                        };
                        match event {
                            Event::SendAck {
                                client_msg_id,
                                status: Code::OK,
                                ..
                            } => {
                                let to =
                                    rcpts[(client_msg_id % rcpts.len() as u64) as usize].clone();
                                acked.push(((sender.clone(), client_msg_id), to));
                                total.set(total.get() + 1);
                                if total.get() == kill_after {
                                    // SAFETY: kill(2) on the broker child's pid.
                                    unsafe { libc::kill(pid, libc::SIGKILL) };
                                }
                            }
                            other => panic!("{sender}: unexpected {other:?}"),
                        }
                    }
                    acked
                });
                ack_tasks.push(acks);
            }
            let mut acked = Acked::new();
            for task in ack_tasks {
                acked.extend(task.await);
            }
            for task in tasks {
                task.await;
            }
            assert!(
                acked_total.get() >= kill_after,
                "the kill threshold was reached"
            );
            acked
        })
    }

    /// Logs every recipient in with a fresh device and replays its whole inbox. Panics on a
    /// gap, a duplicate or a reorder; returns the acked messages that are missing.
    fn lost(&self, broker: &TestBroker, acked: &Acked, device: &str) -> Vec<(String, u64)> {
        run(async {
            let mut lost = Vec::new();
            for rcpt in &self.rcpts {
                let mut c = broker.connect(rcpt, device).await;
                let head = c.login_info().head_seq;
                let mut seen = HashSet::new();
                let mut last_from: HashMap<String, u64> = HashMap::new();
                for seq in 1..=head {
                    let d = expect_deliver(&mut c).await;
                    assert_eq!(d.seq, seq, "{rcpt}: gap-free, in seq order");
                    assert_eq!(d.body, d.client_msg_id.to_le_bytes(), "{rcpt}: body intact");
                    let key = (d.from_user.clone(), d.client_msg_id);
                    if let Some(to) = acked.get(&key) {
                        assert_eq!(to, rcpt, "{key:?} delivered to the wrong user");
                    }
                    assert!(seen.insert(key.clone()), "{rcpt}: {key:?} delivered twice");
                    let prev = last_from.insert(d.from_user.clone(), d.client_msg_id);
                    assert!(
                        prev.is_none_or(|p| p < d.client_msg_id),
                        "{rcpt}: {key:?} after {prev:?} from the same sender: reordered"
                    );
                }
                lost.extend(
                    acked
                        .iter()
                        .filter(|(k, to)| *to == rcpt && !seen.contains(*k))
                        .map(|(k, _)| k.clone()),
                );
            }
            lost.sort();
            lost
        })
    }
}

/// The next event, or None once the connection is gone.
async fn next_event_of(reader: &mut ringpost::client::Reader) -> Option<Event> {
    let recv = async { Some(reader.recv().await.ok()) };
    let timeout = async {
        glommio::timer::sleep(WAIT).await;
        None
    };
    match futures_lite::future::or(recv, timeout).await {
        Some(event) => event,
        None => panic!("no event within {WAIT:?}"),
    }
}

/// Cuts the power on a killed broker's data directory, after checking the fault mode really
/// recorded syncs (otherwise the cut would silently change nothing).
fn cut_power(dir: &Path, mode: Unsynced) -> PowerCut {
    let data = data_dir(dir);
    let log = data.join(POWER_LOG);
    let text = std::fs::read_to_string(&log).expect("the broker wrote a power log");
    assert!(
        text.lines().any(|l| l.starts_with("synced\t")),
        "the power log records syncs: {text:?}"
    );
    let cut = fault::simulate_power_cut_with(&data, &log, mode).expect("simulate the power cut");
    eprintln!("power cut: {cut:?}");
    cut
}

/// The broker of these tests: power log and fault switches armed, over `dir`.
fn start(dir: &Path) -> TestBroker {
    test_broker()
        .dir(dir)
        .shards(SHARDS)
        .limits(LIMITS)
        .storage(STORAGE)
        .env(fault::POWER_LOG_ENV, POWER_LOG)
        .env(fault::SKIP_SYNC_ENV, SKIP_SYNC)
        .env(fault::SYNC_FAIL_ENV, SYNC_FAIL)
        .start()
}

#[test]
fn every_acked_message_survives_power_cuts_exactly_once_and_in_order() {
    let dir = test_dir("power-cut");
    let traffic = Traffic::new("pc");
    let mut acked = Acked::new();
    let mut broker = start(&dir);
    for (round, mode) in [
        Unsynced::Drop,
        // Unsynced pages kept at random: write-back in any order leaves stale records
        // behind the torn tail of the first cut's recovery.
        Unsynced::KeepSomePages { seed: 7 },
    ]
    .into_iter()
    .enumerate()
    {
        let first_id = 1 + round as u64 * 1_000_000;
        let this_round = traffic.send_and_kill(&broker, first_id, 1500, 2500);
        assert!(this_round.len() >= 2500);
        acked.extend(this_round);
        let dir = broker.crash();
        cut_power(&dir, mode);
        broker = start(&dir);
        let lost = traffic.lost(&broker, &acked, &format!("fresh-{round}"));
        assert!(
            lost.is_empty(),
            "round {round}: {} of {} acked messages lost in the power cut, e.g. {:?}",
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(5)]
        );
    }
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_power_cut_test_catches_acks_given_without_a_sync() {
    let dir = test_dir("power-cut-skip");
    std::fs::create_dir_all(data_dir(&dir)).unwrap();
    std::fs::write(data_dir(&dir).join(SKIP_SYNC), b"").unwrap();
    let traffic = Traffic::new("pcs");
    let broker = start(&dir);
    let acked = traffic.send_and_kill(&broker, 1, 1500, 2500);
    let dir = broker.crash();
    let cut = cut_power(&dir, Unsynced::Drop);
    assert!(
        cut.bytes_zeroed > 0,
        "unsynced bytes were discarded: {cut:?}"
    );
    std::fs::remove_file(data_dir(&dir).join(SKIP_SYNC)).unwrap();
    let broker = start(&dir);
    let lost = traffic.lost(&broker, &acked, "fresh");
    assert!(
        !lost.is_empty(),
        "with the msync skipped, acked messages must be lost in a power cut (else the power-loss test proves nothing); {} acked",
        acked.len()
    );
    eprintln!(
        "skip-sync: {} of {} acked messages lost, as expected",
        lost.len(),
        acked.len()
    );
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// fsyncgate: after a failed sync the shard stops acknowledging — it does not retry the sync
/// as if the data were still dirty — until a restart recovers from the log.
#[test]
fn a_failed_sync_stops_acknowledging_until_a_restart() {
    let dir = test_dir("sync-fail");
    let broker = start(&dir);
    let fail = data_dir(&dir).join(SYNC_FAIL);
    let sender = user_on_shard("sf-a", 0, SHARDS);
    let rcpt = user_on_shard("sf-b", 1, SHARDS);
    run(async {
        let mut a = broker.connect(&sender, "d").await;
        for id in 1..=5 {
            a.send(id, &rcpt, &[id as u8]).await.unwrap();
            expect_ack(&mut a, id, Code::OK).await;
        }
        std::fs::write(&fail, b"").unwrap();
        a.send(6, &rcpt, &[6]).await.unwrap();
        expect_ack(&mut a, 6, Code::STORAGE_UNAVAILABLE).await;
        // The disk "recovers", but a retried sync could succeed over pages the kernel
        // dropped: still refused.
        std::fs::remove_file(&fail).unwrap();
        for id in 7..=8 {
            a.send(id, &rcpt, &[id as u8]).await.unwrap();
            expect_ack(&mut a, id, Code::STORAGE_UNAVAILABLE).await;
        }
    });
    assert!(
        broker.stderr().contains("log poisoned"),
        "the broker says why"
    );
    let dir = broker.crash();
    let broker = start(&dir);
    broker.wait_for_log("rewrote and synced everything from there");
    run(async {
        let mut c = broker.connect(&rcpt, "fresh").await;
        let head = c.login_info().head_seq;
        assert!(
            (5..=6).contains(&head),
            "head {head}: 1..=5 acked, 6 maybe, 7 and 8 never logged"
        );
        for seq in 1..=head {
            let d = expect_deliver(&mut c).await;
            assert_eq!(
                (d.seq, d.client_msg_id),
                (seq, seq),
                "every acked message, once, in order"
            );
        }
        let mut a = broker.connect(&sender, "d").await;
        a.send(9, &rcpt, &[9]).await.unwrap();
        expect_ack(&mut a, 9, Code::OK).await;
        assert_eq!(expect_deliver(&mut c).await.client_msg_id, 9);
    });
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Group sends through a power cut: every group message acked OK is in every member's stream
/// afterwards, once, at the same group_seq for all, in group order — including members whose
/// shard had not applied the fan-out yet when the power went (the owner re-drives it).
#[test]
fn every_acked_group_message_survives_a_power_cut_on_every_member() {
    let dir = test_dir("power-cut-group");
    let members: Vec<String> = (0..6)
        .map(|i| user_on_shard(&format!("pg-m{i}"), i % SHARDS, SHARDS))
        .collect();
    let group = (0..)
        .map(|i| format!("pg-group-{i}"))
        .find(|g| ringpost::shard::group_owner(g, SHARDS) == 1)
        .unwrap_or_default();
    let broker = start(&dir);
    let pid = broker.pid();
    let acked: Vec<u64> = run(async {
        let mut admin = broker.connect(&members[0], "d").await;
        let rest: Vec<&str> = members[1..].iter().map(String::as_str).collect();
        admin.group_create(1, &group, &rest).await.unwrap();
        loop {
            match expect_event(&mut admin).await {
                Event::GroupReply(r) => {
                    assert_eq!(r.status, Code::OK, "{r:?}");
                    break;
                }
                Event::Deliver(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        let (mut reader, mut writer) = admin.split();
        let group2 = group.clone();
        let writes = glommio::spawn_local(async move {
            for chunk in 0..150u64 {
                for k in 0..20 {
                    let id = 1 + chunk * 20 + k;
                    if writer
                        .group_send(id, &group2, &id.to_le_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            }
        });
        let mut acked = Vec::new();
        while let Some(event) = next_event_of(&mut reader).await {
            match event {
                Event::SendAck {
                    client_msg_id,
                    status: Code::OK,
                    ..
                } => {
                    acked.push(client_msg_id);
                    if acked.len() == 1500 {
                        // SAFETY: kill(2) on the broker child's pid.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
                Event::Deliver(_) => {} // the sender's own group stream
                other => panic!("unexpected {other:?}"),
            }
        }
        writes.await;
        acked
    });
    assert!(acked.len() >= 1500);
    let dir = broker.crash();
    cut_power(&dir, Unsynced::Drop);
    let broker = start(&dir);
    run(async {
        let mut reference: Option<Vec<(u64, u64)>> = None;
        for m in &members {
            let mut c = broker.connect(m, "fresh").await;
            let head = c.login_info().head_seq;
            let mut seen = Vec::new();
            for seq in 1..=head {
                let d = expect_deliver(&mut c).await;
                assert_eq!(d.seq, seq, "{m}: gap-free");
                if d.kind == ringpost::protocol::EntryKind::Message {
                    assert_eq!(d.body, d.client_msg_id.to_le_bytes(), "{m}: body intact");
                    seen.push((d.group_seq, d.client_msg_id));
                }
            }
            let ids: HashSet<u64> = seen.iter().map(|&(_, id)| id).collect();
            assert_eq!(ids.len(), seen.len(), "{m}: a group message twice");
            assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{m}: group order");
            let lost: Vec<u64> = acked
                .iter()
                .copied()
                .filter(|id| !ids.contains(id))
                .collect();
            assert!(
                lost.is_empty(),
                "{m}: {} of {} acked group messages lost in the power cut, e.g. {:?}",
                lost.len(),
                acked.len(),
                &lost[..lost.len().min(5)]
            );
            match &reference {
                None => reference = Some(seen),
                Some(r) => assert_eq!(r, &seen, "{m} disagrees with {}", members[0]),
            }
        }
    });
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

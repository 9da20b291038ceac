//! Durability: what was acked survives kill -9, cursors survive restarts, and a data directory
//! is never served by a different shard count.

use std::collections::HashMap;

use ringpost::client::Event;
use ringpost::protocol::Code;
use ringpost_harness::*;

/// Sends a stream of cross-shard messages to offline users, kills the broker with SIGKILL once
/// `kill_after` SendAck{OK} have arrived (more are in flight), restarts it on the same data,
/// and checks that every acked message is delivered exactly once, in order.
fn acked_messages_survive_kill_9(kill_after: usize) {
    const SENT: u64 = 3000;
    let limits = "sends_per_sec = 1000000";
    let storage = "fsync = \"always\"";
    let config = test_broker().limits(limits).storage(storage);
    let broker = config.start();
    let sender = user_on_shard("crash-sender", 0, 2);
    let rcpts: Vec<String> = (0..4)
        .map(|i| user_on_shard(&format!("crash-rcpt{i}"), (i % 2) as usize, 2))
        .collect();

    // client_msg_id → recipient, for every SendAck{OK} seen before the kill.
    let acked: HashMap<u64, String> = run(async {
        let mut c = broker.connect(&sender, "d").await;
        for id in 1..=SENT {
            let to = &rcpts[(id % 4) as usize];
            if c.send(id, to, &id.to_le_bytes()).await.is_err() {
                break;
            }
        }
        let mut acked = HashMap::new();
        while acked.len() < kill_after {
            match expect_event(&mut c).await {
                Event::SendAck {
                    client_msg_id,
                    status,
                    ..
                } => {
                    assert_eq!(status, Code::OK);
                    acked.insert(client_msg_id, rcpts[(client_msg_id % 4) as usize].clone());
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        acked
    });
    let dir = broker.crash();

    let broker = config.dir(&dir).start();
    run(async {
        for rcpt in &rcpts {
            let mut c = broker.connect(rcpt, "d").await;
            let head = c.login_info().head_seq;
            let expected: usize = acked.values().filter(|r| *r == rcpt).count();
            assert!(
                head as usize >= expected,
                "{rcpt}: head {head} < {expected} acked"
            );
            let mut seen = std::collections::HashSet::new();
            for seq in 1..=head {
                let d = expect_deliver(&mut c).await;
                assert_eq!(d.seq, seq, "{rcpt}: gap-free replay after the crash");
                let id = u64::from_le_bytes(d.body.as_slice().try_into().unwrap());
                assert!(seen.insert(id), "{rcpt}: message {id} delivered twice");
            }
            for (id, r) in &acked {
                if r == rcpt {
                    assert!(
                        seen.contains(id),
                        "{rcpt}: acked message {id} lost in the crash"
                    );
                }
            }
        }
    });
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn acked_messages_survive_kill_9_early() {
    acked_messages_survive_kill_9(50);
}

#[test]
fn acked_messages_survive_kill_9_mid_stream() {
    acked_messages_survive_kill_9(1200);
}

#[test]
fn acked_messages_survive_kill_9_late() {
    acked_messages_survive_kill_9(2900);
}

#[test]
fn offline_messages_and_device_cursors_survive_a_restart() {
    let mut broker = test_broker().start();
    let (a, b) = (user_on_shard("a", 0, 2), user_on_shard("b", 1, 2));
    run(async {
        let mut ca = broker.connect(&a, "d").await;
        for i in 1..=5u64 {
            ca.send(i, &b, format!("m{i}").as_bytes()).await.unwrap();
            expect_ack(&mut ca, i, Code::OK).await;
        }
        let mut phone = broker.connect(&b, "phone").await;
        for i in 1..=5 {
            assert_eq!(expect_deliver(&mut phone).await.seq, i);
        }
        phone.ack(3).await.unwrap(); // it has processed only the first three
        phone.ping(1).await.unwrap(); // answered after the ack is applied
        assert_eq!(expect_event(&mut phone).await, Event::Pong { nonce: 1 });
    });
    broker.signal(libc::SIGTERM);
    assert!(broker
        .wait_exit(std::time::Duration::from_secs(6))
        .is_some_and(|s| s.success()));
    let dir = broker.crash();

    let broker = test_broker().dir(&dir).start();
    run(async {
        // last_seq 0 on a known device resumes from its stored cursor...
        let mut phone = broker.connect(&b, "phone").await;
        assert_eq!(phone.login_info().head_seq, 5);
        assert_eq!(expect_deliver(&mut phone).await.body, b"m4");
        assert_eq!(expect_deliver(&mut phone).await.body, b"m5");
        // ...while a new device gets everything retained.
        let mut laptop = broker.connect(&b, "laptop").await;
        assert_eq!(laptop.login_info().oldest_seq, 1);
        for i in 1..=5 {
            assert_eq!(expect_deliver(&mut laptop).await.seq, i);
        }
        // Seqs continue after the restart.
        let mut ca = broker.connect(&a, "d").await;
        ca.send(6, &b, b"m6").await.unwrap();
        expect_ack(&mut ca, 6, Code::OK).await;
        assert_eq!(expect_deliver(&mut phone).await.seq, 6);
    });
}

#[test]
fn a_data_directory_is_refused_by_a_different_shard_count() {
    let broker = test_broker().start();
    let dir = broker.crash();
    let (status, stdout, stderr) = test_broker().dir(&dir).shards(3).start_expecting_failure();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("written by 2 shards") && stderr.contains("shards = 2"),
        "the refusal names the fix: {stderr}"
    );
    assert!(stdout.is_empty(), "it never started listening");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_disk_refuses_sends_with_storage_unavailable_and_recovers_by_itself() {
    // 64 KiB segments fill after a few dozen 1 KiB messages; then a new one must be created.
    let broker = test_broker()
        .shards(1)
        .limits("max_frame = \"4KiB\"\nsends_per_sec = 100000")
        .storage("segment_size = \"64KiB\"")
        .start();
    run(async {
        let mut a = broker.connect("full-a", "d").await;
        let mut b = broker.connect("full-b", "d").await;
        let body = vec![7u8; 1000];
        broker.fill_disk();
        let mut ok = 0u64;
        let mut id = 0u64;
        loop {
            id += 1;
            a.send(id, "full-b", &body).await.unwrap();
            match expect_event(&mut a).await {
                Event::SendAck {
                    status: Code::OK, ..
                } => ok += 1,
                Event::SendAck {
                    status,
                    client_msg_id,
                    ..
                } => {
                    assert_eq!((status, client_msg_id), (Code::STORAGE_UNAVAILABLE, id));
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
            assert!(id < 200, "the segment never filled up");
        }
        assert!(
            ok > 10,
            "the active segment took {ok} messages before filling"
        );
        // Still refused while the disk is full; nothing acked is lost meanwhile.
        a.send(id, "full-b", &body).await.unwrap();
        expect_ack(&mut a, id, Code::STORAGE_UNAVAILABLE).await;
        for seq in 1..=ok {
            assert_eq!(expect_deliver(&mut b).await.seq, seq);
        }
        // Space returns: the very same send now goes through, no restart needed.
        broker.free_disk();
        a.send(id, "full-b", &body).await.unwrap();
        expect_ack(&mut a, id, Code::OK).await;
        assert_eq!(
            expect_deliver(&mut b).await.seq,
            ok + 1,
            "no seq was burnt by the refusals"
        );
    });
}

#[test]
fn retention_moves_oldest_seq_and_logins_are_told_about_the_gap() {
    // 64 KiB segments, at most three of them: old messages are dropped as new ones arrive.
    let broker = test_broker()
        .shards(1)
        .limits("max_frame = \"4KiB\"\nsends_per_sec = 1000000")
        .storage("segment_size = \"64KiB\"\nmax_bytes_per_shard = \"192KiB\"")
        .start();
    run(async {
        let body = vec![1u8; 1000];
        let mut a = broker.connect("ret-a", "d").await;
        // A device that has seq 1, then goes away.
        let mut early = broker.connect("ret-b", "early").await;
        a.send(1, "ret-b", &body).await.unwrap();
        expect_ack(&mut a, 1, Code::OK).await;
        assert_eq!(expect_deliver(&mut early).await.seq, 1);
        early.ack(1).await.unwrap();
        early.ping(7).await.unwrap();
        assert_eq!(expect_event(&mut early).await, Event::Pong { nonce: 7 });
        drop(early);
        // ~400 KB more: well past 192 KiB, so the oldest segments are deleted.
        for i in 2..=400u64 {
            a.send(i, "ret-b", &body).await.unwrap();
            expect_ack(&mut a, i, Code::OK).await;
        }
        // A new device gets what is retained; asking for nothing specific is no gap.
        let mut fresh = broker.connect("ret-b", "fresh").await;
        let info = fresh.login_info().clone();
        assert_eq!(info.head_seq, 400);
        assert!(info.oldest_seq > 2, "retention moved oldest_seq: {info:?}");
        assert!(!info.gap);
        assert_eq!(expect_deliver(&mut fresh).await.seq, info.oldest_seq);
        // The early device resumes after seq 1, but 2..oldest_seq are gone: LoginOk says so.
        let mut back = broker.connect("ret-b", "early").await;
        let info = back.login_info().clone();
        assert!(info.gap, "the removed range is signalled: {info:?}");
        assert_eq!(expect_deliver(&mut back).await.seq, info.oldest_seq);
    });
}

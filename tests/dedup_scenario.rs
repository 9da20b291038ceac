//! Idempotent send beyond the basic resend in `messaging_scenario`: a resend racing its original,
//! a resend after the sender reconnects, the per-sender scope of client_msg_id, the
//! `dedup_entries` bound and `dedup_window = "0s"` turning dedup off.

use std::io::Write;

use ringpost::client::{Client, Event};
use ringpost::protocol::{self, ClientMsg, Code, ServerMsg};
use ringpost_harness::*;

fn send_frame(id: u64, to: &str, body: &[u8]) -> Vec<u8> {
    frame(&ClientMsg::Send {
        client_msg_id: id,
        to_user: to,
        body,
    })
}

/// Proves nothing else is queued for `c`: `probe` (a fresh message from `sender` with id
/// `probe_id`) is the very next delivery, with seq `next_seq`.
async fn assert_next_delivery_is_probe(
    sender: &mut Client,
    c: &mut Client,
    to: &str,
    probe_id: u64,
    next_seq: u64,
) {
    sender.send(probe_id, to, b"probe").await.unwrap();
    expect_ack(sender, probe_id, Code::OK).await;
    let d = expect_deliver(c).await;
    assert_eq!(
        (d.seq, d.client_msg_id, d.body.as_slice()),
        (next_seq, probe_id, &b"probe"[..]),
        "nothing was delivered twice"
    );
}

#[test]
fn a_resend_racing_its_original_is_acked_twice_and_delivered_once() {
    let broker = test_broker().start();
    let (a, b) = (user_on_shard("racer", 0, 2), user_on_shard("target", 1, 2));
    // One write: the original, its resend and another message, before any ack can come back
    // from the recipient's shard.
    let mut s = raw_login(&broker, &a);
    let mut bytes = send_frame(77, &b, b"once");
    bytes.extend(send_frame(77, &b, b"once"));
    bytes.extend(send_frame(78, &b, b"next"));
    s.write_all(&bytes).unwrap();
    let mut acks = Vec::new();
    for _ in 0..3 {
        let payload = read_frame(&mut s).expect("a SendAck");
        match protocol::decode_server(&payload) {
            Ok(ServerMsg::SendAck {
                client_msg_id,
                status,
                ..
            }) => acks.push((client_msg_id, status)),
            other => panic!("expected SendAck, got {other:?}"),
        }
    }
    acks.sort_by_key(|(id, _)| *id);
    assert_eq!(
        acks,
        vec![(77, Code::OK), (77, Code::OK), (78, Code::OK)],
        "the original and the resend are both answered OK"
    );
    run(async {
        let mut cb = broker.connect(&b, "d").await;
        assert_eq!(
            cb.login_info().head_seq,
            2,
            "two messages stored, not three"
        );
        let first = expect_deliver(&mut cb).await;
        let second = expect_deliver(&mut cb).await;
        assert_eq!((first.seq, first.client_msg_id), (1, 77));
        assert_eq!((second.seq, second.client_msg_id), (2, 78));
        let mut probe = broker.connect(&user_on_shard("prober", 0, 2), "d").await;
        assert_next_delivery_is_probe(&mut probe, &mut cb, &b, 1, 3).await;
    });
}

#[test]
fn a_resend_after_the_sender_reconnects_is_still_recognised() {
    let broker = test_broker().start();
    let (a, b) = (user_on_shard("flaky", 1, 2), user_on_shard("steady", 0, 2));
    run(async {
        let mut cb = broker.connect(&b, "d").await;
        let mut ca = broker.connect(&a, "phone").await;
        ca.send(5, &b, b"did it arrive?").await.unwrap();
        expect_ack(&mut ca, 5, Code::OK).await;
        assert_eq!(expect_deliver(&mut cb).await.client_msg_id, 5);
        // The phone loses its connection and, unsure, resends on a new one.
        ca.logout().await.unwrap();
        expect_goaway_then_close(&mut ca, Code::LOGGED_OUT).await;
        let mut again = broker.connect(&a, "phone").await;
        again.send(5, &b, b"did it arrive?").await.unwrap();
        expect_ack(&mut again, 5, Code::OK).await;
        assert_next_delivery_is_probe(&mut again, &mut cb, &b, 6, 2).await;
    });
}

#[test]
fn the_same_client_msg_id_from_two_senders_is_two_messages() {
    let broker = test_broker().start();
    let b = user_on_shard("popular", 0, 2);
    run(async {
        let mut cb = broker.connect(&b, "d").await;
        let mut senders = Vec::new();
        for s in 0..2 {
            senders.push(broker.connect(&user_on_shard("fan", s, 2), "d").await);
        }
        for c in &mut senders {
            c.send(1, &b, b"hello").await.unwrap();
            expect_ack(c, 1, Code::OK).await;
        }
        let d1 = expect_deliver(&mut cb).await;
        let d2 = expect_deliver(&mut cb).await;
        assert_eq!((d1.seq, d2.seq), (1, 2));
        assert_eq!((d1.client_msg_id, d2.client_msg_id), (1, 1));
        assert_ne!(d1.from_user, d2.from_user, "one from each sender");
    });
}

#[test]
fn dedup_remembers_at_most_dedup_entries_sends_per_sender() {
    let broker = test_broker().limits("dedup_entries = 2").start();
    let (a, b) = (
        user_on_shard("forgetful", 0, 2),
        user_on_shard("inbox", 1, 2),
    );
    run(async {
        let mut ca = broker.connect(&a, "d").await;
        let mut cb = broker.connect(&b, "d").await;
        for id in 1..=3u64 {
            ca.send(id, &b, &id.to_le_bytes()).await.unwrap();
            expect_ack(&mut ca, id, Code::OK).await;
        }
        for seq in 1..=3u64 {
            assert_eq!(expect_deliver(&mut cb).await.client_msg_id, seq);
        }
        // 3 is among the two newest: remembered, not delivered again.
        ca.send(3, &b, &3u64.to_le_bytes()).await.unwrap();
        expect_ack(&mut ca, 3, Code::OK).await;
        // 1 was pushed out by 2 and 3: a resend of it is a new message.
        ca.send(1, &b, &1u64.to_le_bytes()).await.unwrap();
        expect_ack(&mut ca, 1, Code::OK).await;
        let d = expect_deliver(&mut cb).await;
        assert_eq!(
            (d.seq, d.client_msg_id),
            (4, 1),
            "3 was not delivered again; the forgotten 1 was"
        );
    });
}

#[test]
fn a_zero_dedup_window_turns_dedup_off() {
    let broker = test_broker().limits("dedup_window = \"0s\"").start();
    let (a, b) = (user_on_shard("twice", 1, 2), user_on_shard("both", 0, 2));
    run(async {
        let mut ca = broker.connect(&a, "d").await;
        let mut cb = broker.connect(&b, "d").await;
        for _ in 0..2 {
            ca.send(9, &b, b"again").await.unwrap();
            expect_ack(&mut ca, 9, Code::OK).await;
        }
        for seq in 1..=2 {
            let d = expect_deliver(&mut cb).await;
            assert_eq!((d.seq, d.client_msg_id), (seq, 9));
        }
        cb.ping(1).await.unwrap();
        assert_eq!(expect_event(&mut cb).await, Event::Pong { nonce: 1 });
    });
}

/// A resend after the broker restarted (kill -9 or a clean stop) is answered OK from the window
/// rebuilt from the log, and a fresh device of the recipient holds exactly one copy.
fn a_resend_after_a_restart_is_stored_once(graceful: bool) {
    let dir = TempDir::new(&format!("dedup-restart-{graceful}"));
    let config = test_broker().dir(dir.path());
    let mut broker = config.start();
    let (a, b) = (user_on_shard("dr-a", 0, 2), user_on_shard("dr-b", 1, 2));
    run(async {
        let mut ca = broker.connect(&a, "d").await;
        ca.send(7, &b, b"only once").await.unwrap();
        expect_ack(&mut ca, 7, Code::OK).await;
    });
    if graceful {
        broker.stop(std::time::Duration::from_secs(6));
    } else {
        broker.crash();
    }
    let broker = config.start();
    run(async {
        let mut ca = broker.connect(&a, "d").await;
        ca.send(7, &b, b"only once").await.unwrap();
        expect_ack(&mut ca, 7, Code::OK).await;
        let mut fresh = broker.connect(&b, "fresh").await;
        assert_eq!(fresh.login_info().head_seq, 1, "one copy in the inbox");
        assert_eq!(expect_deliver(&mut fresh).await.client_msg_id, 7);
        assert_next_delivery_is_probe(&mut ca, &mut fresh, &b, 8, 2).await;
    });
}

#[test]
fn a_resend_after_kill_9_is_stored_once() {
    a_resend_after_a_restart_is_stored_once(false);
}

#[test]
fn a_resend_after_a_clean_restart_is_stored_once() {
    a_resend_after_a_restart_is_stored_once(true);
}

/// The kill lands between the append and the ack: the group commit's sync is held (a test
/// fault), so the message is in the log but its SendAck never went out. The client resends
/// after the restart and must get OK without a second copy.
#[test]
fn a_resend_after_a_kill_between_append_and_ack_is_stored_once() {
    let dir = TempDir::new("dedup-unacked");
    let hold = "fault-sync-hold";
    let config = test_broker()
        .dir(dir.path())
        .storage("fsync = \"always\"")
        .env(ringpost::log::fault::SYNC_HOLD_ENV, hold);
    let broker = config.start();
    let (a, b) = (user_on_shard("du-a", 0, 2), user_on_shard("du-b", 1, 2));
    let hold_file = dir.path().join("data").join(hold);
    run(async {
        let mut ca = broker.connect(&a, "d").await;
        let mut cb = broker.connect(&b, "watch").await;
        std::fs::write(&hold_file, b"").unwrap();
        ca.send(9, &b, b"unacked").await.unwrap();
        // The message is appended (the recipient's head moves) but neither acked nor delivered.
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let probe = broker.connect(&b, "probe").await;
            if probe.login_info().head_seq == 1 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never appended");
            glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
        }
        cb.ping(1).await.unwrap();
        assert_eq!(expect_event(&mut cb).await, Event::Pong { nonce: 1 });
        ca.ping(2).await.unwrap();
        assert_eq!(
            expect_event(&mut ca).await,
            Event::Pong { nonce: 2 },
            "no SendAck before the sync"
        );
    });
    let _ = broker.crash();
    std::fs::remove_file(&hold_file).unwrap();
    let broker = config.start();
    run(async {
        let mut ca = broker.connect(&a, "d").await;
        ca.send(9, &b, b"unacked").await.unwrap();
        expect_ack(&mut ca, 9, Code::OK).await;
        let mut fresh = broker.connect(&b, "fresh").await;
        assert_eq!(fresh.login_info().head_seq, 1, "one copy in the inbox");
        let d = expect_deliver(&mut fresh).await;
        assert_eq!((d.client_msg_id, d.body.as_slice()), (9, &b"unacked"[..]));
        assert_next_delivery_is_probe(&mut ca, &mut fresh, &b, 10, 2).await;
    });
}

//! Limits beyond `protection_scenario` and `sessions_scenario`: the rate limit's scope (per
//! user, see also `user_rate_limit_scenario`) and refill, what counts as activity for the idle timeout, the login deadline against a client
//! that trickles its Login, and `max_inbox` counting what no device has acked.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringpost::client::{Client, Event};
use ringpost::protocol::{self, ClientMsg, Code, ServerMsg};
use ringpost_harness::*;

/// Sends `ids` in one write (so the burst cannot straddle a refill) and returns each status.
async fn burst(
    c: &mut Client,
    to: &str,
    ids: std::ops::RangeInclusive<u64>,
) -> BTreeMap<u64, Code> {
    let mut bytes = Vec::new();
    for id in ids.clone() {
        bytes.extend(frame(&ClientMsg::Send {
            client_msg_id: id,
            to_user: to,
            body: b"x",
        }));
    }
    c.send_raw(&bytes).await.unwrap();
    let mut statuses = BTreeMap::new();
    for _ in ids {
        match expect_event(c).await {
            Event::SendAck {
                client_msg_id,
                status,
                ..
            } => {
                assert!(statuses.insert(client_msg_id, status).is_none());
            }
            other => panic!("expected SendAck, got {other:?}"),
        }
    }
    statuses
}

fn count(statuses: &BTreeMap<u64, Code>, code: Code) -> usize {
    statuses.values().filter(|s| **s == code).count()
}

#[test]
fn the_rate_limit_is_per_user_and_refills_at_the_configured_rate() {
    let broker = test_broker().limits("sends_per_sec = 5").start();
    let (a, b) = (user_on_shard("bursty", 0, 2), user_on_shard("calm", 1, 2));
    run(async {
        let mut phone = broker.connect(&a, "phone").await;
        let first = burst(&mut phone, &b, 1..=7).await;
        assert_eq!(
            (count(&first, Code::OK), count(&first, Code::RATE_LIMITED)),
            (5, 2),
            "a burst of one second's worth, then refusals: {first:?}"
        );
        // The same user's other connection draws from the same, now empty, bucket.
        let mut laptop = broker.connect(&a, "laptop").await;
        let other = burst(&mut laptop, &b, 100..=101).await;
        assert_eq!(count(&other, Code::RATE_LIMITED), 2, "{other:?}");
        // Refill over time is the behaviour under test: after 1.2 s at 5/s the bucket holds
        // its full burst of 5 again (not 6: it never exceeds one second's worth).
        glommio::timer::sleep(Duration::from_millis(1200)).await;
        let refilled = burst(&mut phone, &b, 8..=13).await;
        assert_eq!(
            (
                count(&refilled, Code::OK),
                count(&refilled, Code::RATE_LIMITED)
            ),
            (5, 1),
            "{refilled:?}"
        );
        // Refused sends were not stored: the recipient has exactly the accepted ones.
        let mut cb = broker.connect(&b, "d").await;
        assert_eq!(cb.login_info().head_seq, 10);
        phone.ping(1).await.unwrap();
        assert_eq!(
            expect_event(&mut phone).await,
            Event::Pong { nonce: 1 },
            "refusals below the abuse threshold keep the connection"
        );
        let mut ids = Vec::new();
        for _ in 0..10 {
            ids.push(expect_deliver(&mut cb).await.client_msg_id);
        }
        let mut want: Vec<u64> = first
            .iter()
            .chain(&other)
            .chain(&refilled)
            .filter(|(_, s)| **s == Code::OK)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        want.sort_unstable();
        assert_eq!(ids, want);
    });
}

#[test]
fn only_what_the_client_sends_counts_as_activity_for_the_idle_timeout() {
    let broker = test_broker().limits("idle_timeout = \"1s\"").start();
    let (s, r, k) = (
        user_on_shard("talker", 0, 2),
        user_on_shard("listener", 1, 2),
        user_on_shard("acker", 1, 2),
    );
    run(async {
        let mut listener = broker.connect(&r, "d").await;
        let mut acker = broker.connect(&k, "d").await;
        let mut talker = broker.connect(&s, "d").await;
        let started = Instant::now();
        // `talker` sends a message to `listener` every 250 ms and so stays up; `listener`
        // receives them but sends nothing, so it times out all the same. `acker` sends only
        // Acks (no Ping) and stays up. Sending on a schedule is the behaviour under test.
        let mut id = 0u64;
        let mut listener_gone = None;
        let mut received = 0;
        while started.elapsed() < Duration::from_millis(2600) {
            id += 1;
            talker.send(id, &r, b"tick").await.unwrap();
            expect_ack(&mut talker, id, Code::OK).await;
            acker.ack(0).await.unwrap();
            if listener_gone.is_none() {
                match next_event(&mut listener).await {
                    Ok(Event::Deliver(d)) => {
                        received += 1;
                        assert_eq!(d.seq, received);
                    }
                    Ok(Event::GoAway { code, .. }) => {
                        assert_eq!(code, Code::IDLE_TIMEOUT);
                        listener_gone = Some(started.elapsed());
                    }
                    other => panic!("listener: unexpected {other:?}"),
                }
            }
            glommio::timer::sleep(Duration::from_millis(250)).await;
        }
        let gone = listener_gone.expect("the receive-only connection timed out");
        assert!(
            gone >= Duration::from_millis(900),
            "timed out after {gone:?}"
        );
        assert!(
            next_event(&mut listener).await.is_err(),
            "closed after the GoAway"
        );
        talker.ping(1).await.unwrap();
        assert_eq!(expect_event(&mut talker).await, Event::Pong { nonce: 1 });
        acker.ping(2).await.unwrap();
        assert_eq!(
            expect_event(&mut acker).await,
            Event::Pong { nonce: 2 },
            "Acks alone keep a connection alive"
        );
    });
}

#[test]
fn a_login_trickled_byte_by_byte_still_hits_the_login_deadline() {
    let broker = test_broker().limits("login_timeout = \"500ms\"").start();
    let login = frame(&ClientMsg::Login {
        token: &broker.token("slowloris"),
        device_id: "d",
        last_seq: 0,
    });
    let mut s = raw_connect(broker.addr);
    let mut reader = s.try_clone().unwrap();
    let answered = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let reply = {
        let answered = answered.clone();
        std::thread::spawn(move || {
            let payload = read_frame(&mut reader);
            answered.store(true, Ordering::SeqCst);
            let at = started.elapsed();
            let eof = read_frame(&mut reader).is_none();
            (payload, at, eof)
        })
    };
    // One byte every 100 ms: never silent, but never a whole Login within 500 ms (it would
    // take several seconds). Trickling on a schedule is the behaviour under test.
    for byte in &login[..login.len() - 1] {
        if answered.load(Ordering::SeqCst) || s.write_all(std::slice::from_ref(byte)).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (payload, at, eof) = reply.join().unwrap();
    let payload = payload.expect("an Error frame, not EOF");
    match protocol::decode_server(&payload) {
        Ok(ServerMsg::Error { code, .. }) => assert_eq!(code, Code::LOGIN_TIMEOUT),
        other => panic!("expected Error(LOGIN_TIMEOUT), got {other:?}"),
    }
    assert!(
        at >= Duration::from_millis(450) && at < Duration::from_secs(3),
        "the deadline counts from accept, not from the last byte: answered after {at:?}"
    );
    assert!(eof, "closed after the Error");
    broker.assert_serving();
}

#[test]
fn max_inbox_counts_what_no_device_has_acked_from_every_sender() {
    let broker = test_broker().limits("max_inbox = 3").start();
    let b = user_on_shard("busy", 0, 2);
    run(async {
        let mut senders = Vec::new();
        for s in 0..2 {
            senders.push(broker.connect(&user_on_shard("writer", s, 2), "d").await);
        }
        // Two senders on two shards fill the offline user's inbox together.
        senders[0].send(1, &b, b"1").await.unwrap();
        expect_ack(&mut senders[0], 1, Code::OK).await;
        senders[1].send(1, &b, b"2").await.unwrap();
        expect_ack(&mut senders[1], 1, Code::OK).await;
        senders[0].send(2, &b, b"3").await.unwrap();
        expect_ack(&mut senders[0], 2, Code::OK).await;
        senders[1].send(2, &b, b"4").await.unwrap();
        expect_ack(&mut senders[1], 2, Code::INBOX_FULL).await;

        // Delivered is not acked: the inbox stays full until a device acks.
        let mut cb = broker.connect(&b, "d").await;
        for seq in 1..=3 {
            assert_eq!(expect_deliver(&mut cb).await.seq, seq);
        }
        senders[1].send(3, &b, b"4").await.unwrap();
        expect_ack(&mut senders[1], 3, Code::INBOX_FULL).await;

        cb.ack(2).await.unwrap();
        cb.ping(1).await.unwrap(); // answered after the ack is applied
        assert_eq!(expect_event(&mut cb).await, Event::Pong { nonce: 1 });
        // One unacked left: room for exactly two more.
        for (i, want) in [(4, Code::OK), (5, Code::OK), (6, Code::INBOX_FULL)] {
            senders[1].send(i, &b, b"more").await.unwrap();
            expect_ack(&mut senders[1], i, want).await;
        }
        for seq in 4..=5 {
            assert_eq!(expect_deliver(&mut cb).await.seq, seq);
        }
    });
}

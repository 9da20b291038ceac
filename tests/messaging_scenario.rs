//! 1:1 messaging over the wire: within and across shards, ordering, dedup, offline inboxes.

use ringpost::client::{Client, Event};
use ringpost::protocol::Code;
use ringpost_harness::*;

#[test]
fn delivery_within_a_shard_and_across_shards() {
    let broker = test_broker().start();
    run(async {
        let a0 = user_on_shard("alice", 0, 2);
        let b0 = user_on_shard("bob", 0, 2);
        let c1 = user_on_shard("carol", 1, 2);
        let mut a = broker.connect(&a0, "phone").await;
        let mut b = broker.connect(&b0, "phone").await;
        let mut c = broker.connect(&c1, "phone").await;
        assert_eq!(a.login_info().shard, 0);
        assert_eq!(b.login_info().shard, 0);
        assert_eq!(c.login_info().shard, 1, "carol is owned by the other shard");
        assert_eq!(a.login_info().user_id, a0);

        // Same shard.
        a.send(10, &b0, b"hi bob").await.unwrap();
        expect_ack(&mut a, 10, Code::OK).await;
        let d = expect_deliver(&mut b).await;
        assert_eq!(
            (d.seq, d.from_user.as_str(), d.client_msg_id),
            (1, a0.as_str(), 10)
        );
        assert_eq!(d.body, b"hi bob");
        assert!(
            d.sent_at_ms > 1_600_000_000_000,
            "sent_at_ms is wall-clock ms"
        );

        // Across shards, both directions.
        a.send(11, &c1, b"hi carol").await.unwrap();
        expect_ack(&mut a, 11, Code::OK).await;
        let d = expect_deliver(&mut c).await;
        assert_eq!((d.seq, d.body.as_slice()), (1, &b"hi carol"[..]));
        c.send(1, &a0, b"hi alice").await.unwrap();
        expect_ack(&mut c, 1, Code::OK).await;
        let d = expect_deliver(&mut a).await;
        assert_eq!((d.seq, d.from_user.as_str()), (1, c1.as_str()));
        a.send(12, &c1, b"again").await.unwrap();
        expect_ack(&mut a, 12, Code::OK).await;
        assert_eq!(
            expect_deliver(&mut c).await.seq,
            2,
            "seqs increase per recipient"
        );
    });
}

#[test]
fn per_recipient_order_holds_under_concurrent_senders() {
    const PER_SENDER: u64 = 300;
    let broker = test_broker()
        .shards(3)
        .limits("sends_per_sec = 100000")
        .start();
    run(async {
        let rcpt = user_on_shard("rcpt", 0, 3);
        let mut r = broker.connect(&rcpt, "d").await;
        let senders: Vec<String> = (0..3).map(|s| user_on_shard("sender", s, 3)).collect();
        let mut tasks = Vec::new();
        for s in &senders {
            let c = broker.connect(s, "d").await;
            let rcpt = rcpt.clone();
            tasks.push(glommio::spawn_local(async move {
                let mut c: Client = c;
                for i in 1..=PER_SENDER {
                    c.send(i, &rcpt, &i.to_be_bytes()).await.unwrap();
                }
                let mut acked = 0;
                while acked < PER_SENDER {
                    if let Event::SendAck { status, .. } = expect_event(&mut c).await {
                        assert_eq!(status, Code::OK);
                        acked += 1;
                    }
                }
            }));
        }
        let mut last_from = std::collections::HashMap::<String, u64>::new();
        for expected_seq in 1..=PER_SENDER * 3 {
            let d = expect_deliver(&mut r).await;
            assert_eq!(d.seq, expected_seq, "gap-free increasing seq");
            let n = u64::from_be_bytes(d.body.as_slice().try_into().unwrap());
            let prev = last_from.insert(d.from_user.clone(), n).unwrap_or(0);
            assert_eq!(
                n,
                prev + 1,
                "{}'s messages arrive in send order",
                d.from_user
            );
        }
        for t in tasks {
            t.await;
        }
        assert_eq!(last_from.len(), 3);
    });
}

#[test]
fn a_resend_of_the_same_client_msg_id_is_delivered_once() {
    let broker = test_broker().start();
    run(async {
        let (a, b) = (user_on_shard("a", 0, 2), user_on_shard("b", 1, 2));
        let mut ca = broker.connect(&a, "d").await;
        let mut cb = broker.connect(&b, "d").await;
        ca.send(77, &b, b"once").await.unwrap();
        expect_ack(&mut ca, 77, Code::OK).await;
        ca.send(77, &b, b"once").await.unwrap();
        expect_ack(&mut ca, 77, Code::OK).await;
        // A resend from another device of the same sender is also recognised.
        let mut ca2 = broker.connect(&a, "tablet").await;
        ca2.send(77, &b, b"once").await.unwrap();
        expect_ack(&mut ca2, 77, Code::OK).await;
        ca.send(78, &b, b"next").await.unwrap();
        expect_ack(&mut ca, 78, Code::OK).await;
        let first = expect_deliver(&mut cb).await;
        let second = expect_deliver(&mut cb).await;
        assert_eq!((first.client_msg_id, first.seq), (77, 1));
        assert_eq!(
            (second.client_msg_id, second.seq),
            (78, 2),
            "77 was not delivered twice"
        );
    });
}

#[test]
fn offline_messages_are_delivered_in_order_at_next_login() {
    let broker = test_broker().start();
    run(async {
        let (a, b) = (user_on_shard("a", 1, 2), user_on_shard("b", 0, 2));
        let mut ca = broker.connect(&a, "d").await;
        for i in 1..=5u64 {
            ca.send(i, &b, format!("m{i}").as_bytes()).await.unwrap();
            expect_ack(&mut ca, i, Code::OK).await;
        }
        let mut cb = broker.connect(&b, "phone").await;
        assert_eq!(cb.login_info().head_seq, 5);
        assert_eq!(cb.login_info().oldest_seq, 1);
        assert!(!cb.login_info().gap);
        for i in 1..=5u64 {
            let d = expect_deliver(&mut cb).await;
            assert_eq!((d.seq, d.body), (i, format!("m{i}").into_bytes()));
        }
        // Live continues after the replay without a gap.
        ca.send(6, &b, b"m6").await.unwrap();
        expect_ack(&mut ca, 6, Code::OK).await;
        assert_eq!(expect_deliver(&mut cb).await.seq, 6);
        drop(cb);

        // A device that already has seq 4 gets only what follows.
        let mut again = ringpost::client::Client::connect(&broker.opts(&b, "phone"), 4)
            .await
            .unwrap();
        assert_eq!(again.login_info().head_seq, 6);
        assert_eq!(expect_deliver(&mut again).await.seq, 5);
        assert_eq!(expect_deliver(&mut again).await.seq, 6);
    });
}

#[test]
fn a_full_inbox_is_reported_to_the_sender() {
    let broker = test_broker().limits("max_inbox = 3").start();
    run(async {
        let (a, b) = (user_on_shard("a", 0, 2), user_on_shard("b", 1, 2));
        let mut ca = broker.connect(&a, "d").await;
        for i in 1..=3u64 {
            ca.send(i, &b, b"x").await.unwrap();
            expect_ack(&mut ca, i, Code::OK).await;
        }
        ca.send(4, &b, b"x").await.unwrap();
        expect_ack(&mut ca, 4, Code::INBOX_FULL).await;
        // The refusal is not remembered as a success: once the recipient catches up and acks,
        // the same client_msg_id goes through.
        let mut cb = broker.connect(&b, "d").await;
        for i in 1..=3 {
            assert_eq!(expect_deliver(&mut cb).await.seq, i);
        }
        cb.ack(3).await.unwrap();
        // Wait for the ack to be applied: a ping after it is answered in order.
        cb.ping(9).await.unwrap();
        assert_eq!(expect_event(&mut cb).await, Event::Pong { nonce: 9 });
        ca.send(4, &b, b"x").await.unwrap();
        expect_ack(&mut ca, 4, Code::OK).await;
        assert_eq!(expect_deliver(&mut cb).await.seq, 4);
    });
}

#[test]
fn sending_to_yourself_reaches_your_other_devices_too() {
    let broker = test_broker().start();
    run(async {
        let a = user_on_shard("self", 1, 2);
        let mut phone = broker.connect(&a, "phone").await;
        let mut laptop = broker.connect(&a, "laptop").await;
        phone.send(1, &a, b"note to self").await.unwrap();
        let (mut acked, mut delivered_to_phone) = (false, false);
        while !(acked && delivered_to_phone) {
            match expect_event(&mut phone).await {
                Event::SendAck { status, .. } => {
                    assert_eq!(status, Code::OK);
                    acked = true;
                }
                Event::Deliver(d) => {
                    assert_eq!(d.seq, 1);
                    delivered_to_phone = true;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(expect_deliver(&mut laptop).await.body, b"note to self");
    });
}

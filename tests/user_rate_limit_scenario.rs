//! `limits.sends_per_sec` is per user: every device of the user draws from one bucket, kept in
//! the user's record on its owner shard, so neither another device nor a reconnect gets a fresh
//! budget, and a flooder that reconnects after its GoAway(RATE_LIMITED) is cut off again.

use std::collections::BTreeMap;

use ringpost::client::{Client, Event};
use ringpost::protocol::{ClientMsg, Code};
use ringpost_harness::*;

// Rates are low (1-2/s) so that a token refills only after 500 ms or more: far longer than a
// reconnect takes, even on a loaded machine.

/// Sends `ids` in one write (so the burst cannot straddle a refill) and returns each status.
async fn burst(c: &mut Client, to: &str, ids: std::ops::RangeInclusive<u64>) -> Vec<Code> {
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
            } => assert!(statuses.insert(client_msg_id, status).is_none()),
            other => panic!("expected SendAck, got {other:?}"),
        }
    }
    statuses.into_values().collect()
}

#[test]
fn two_devices_of_one_user_share_the_budget() {
    let broker = test_broker().limits("sends_per_sec = 2").start();
    let (a, b) = (user_on_shard("pair", 0, 2), user_on_shard("peer", 1, 2));
    run(async {
        let mut phone = broker.connect(&a, "phone").await;
        let mut laptop = broker.connect(&a, "laptop").await;
        assert_eq!(burst(&mut phone, &b, 1..=2).await, vec![Code::OK; 2]);
        assert_eq!(
            burst(&mut laptop, &b, 10..=11).await,
            vec![Code::RATE_LIMITED; 2],
            "the laptop has no budget of its own"
        );
        // Below the abuse threshold both connections stay.
        for (i, c) in [&mut phone, &mut laptop].into_iter().enumerate() {
            c.ping(i as u64).await.unwrap();
            assert_eq!(expect_event(c).await, Event::Pong { nonce: i as u64 });
        }
        let cb = broker.connect(&b, "d").await;
        assert_eq!(
            cb.login_info().head_seq,
            2,
            "only the accepted sends are stored"
        );
    });
}

#[test]
fn a_reconnect_does_not_refill_the_bucket() {
    let broker = test_broker().limits("sends_per_sec = 2").start();
    let (a, b) = (user_on_shard("hopper", 1, 2), user_on_shard("target", 0, 2));
    run(async {
        let mut first = broker.connect(&a, "phone").await;
        assert_eq!(burst(&mut first, &b, 1..=2).await, vec![Code::OK; 2]);
        first.logout().await.unwrap();
        expect_goaway_then_close(&mut first, Code::LOGGED_OUT).await;
        // Same device and a new device alike find the bucket empty.
        let mut again = broker.connect(&a, "phone").await;
        assert_eq!(burst(&mut again, &b, 3..=3).await, vec![Code::RATE_LIMITED]);
        drop(again);
        let mut other = broker.connect(&a, "tablet").await;
        assert_eq!(burst(&mut other, &b, 4..=4).await, vec![Code::RATE_LIMITED]);
    });
}

#[test]
fn a_flooder_is_cut_off_and_cut_off_again_after_reconnecting() {
    let broker = test_broker().limits("sends_per_sec = 1").start();
    let (a, b) = (user_on_shard("flood", 0, 2), user_on_shard("victim", 1, 2));
    run(async {
        let mut c = broker.connect(&a, "d").await;
        let mut flood = Vec::new();
        for i in 1..=10u64 {
            flood.extend(frame(&ClientMsg::Send {
                client_msg_id: i,
                to_user: &b,
                body: b"x",
            }));
        }
        c.send_raw(&flood).await.unwrap();
        let mut acks = Vec::new();
        loop {
            match expect_event(&mut c).await {
                Event::SendAck { status, .. } => acks.push(status),
                Event::GoAway { code, .. } => {
                    assert_eq!(code, Code::RATE_LIMITED);
                    break;
                }
                other => panic!("expected SendAcks then GoAway, got {other:?}"),
            }
        }
        // 1 accepted, 1 refused, and the 2nd refusal within a second is abuse. (The refusal
        // is answered at once, the OK only after the commit, which the GoAway may overtake.)
        let refused = acks.iter().filter(|s| **s == Code::RATE_LIMITED).count();
        let accepted = acks.iter().filter(|s| **s == Code::OK).count();
        assert_eq!((refused, acks.len() - accepted), (1, 1), "{acks:?}");
        // The accepted send may still be committing (its OK never reached the flooder), so
        // the victim waits for its delivery rather than reading the head at login.
        let mut v = broker.connect(&b, "d").await;
        let d = expect_deliver(&mut v).await;
        assert_eq!((d.seq, d.client_msg_id), (1, 1));
        // Reconnecting straight away does not wipe the record: the first refused send is
        // already past the threshold.
        let mut back = broker.connect(&a, "d").await;
        back.send(100, &b, b"x").await.unwrap();
        expect_goaway_then_close(&mut back, Code::RATE_LIMITED).await;
        drop(v);
        let v = broker.connect(&b, "d2").await;
        assert_eq!(
            v.login_info().head_seq,
            1,
            "exactly the one accepted send is stored"
        );
    });
    broker.assert_serving();
}

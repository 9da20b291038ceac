//! Own-send sync: what a user sends enters their own stream, so every device shows the whole
//! conversation in one ordered stream — the sending device sees the echo of its own send
//! (flagged, so it is presented once), the others see it as sent from another device; a
//! resend never echoes twice; replay after a restart has it; and it can be turned off.

use ringpost::client::{Client, Delivery, Event};
use ringpost::protocol::Code;
use ringpost_harness::*;

fn own_send_broker() -> BrokerBuilder {
    test_broker().server("own_send_sync = true")
}

/// The next SendAck, keeping the stream entries read meanwhile (they may come first).
async fn ack_keeping(c: &mut Client, id: u64, kept: &mut Vec<Delivery>) -> Code {
    loop {
        match expect_event(c).await {
            Event::SendAck {
                client_msg_id,
                status,
            } => {
                assert_eq!(client_msg_id, id);
                return status;
            }
            Event::Deliver(d) => kept.push(d),
            other => panic!("expected SendAck({id}), got {other:?}"),
        }
    }
}

async fn next_entry(c: &mut Client, kept: &mut Vec<Delivery>) -> Delivery {
    if kept.is_empty() {
        expect_deliver(c).await
    } else {
        kept.remove(0)
    }
}

async fn quiet(c: &mut Client) {
    c.ping(55).await.expect("write");
    assert_eq!(
        expect_event(c).await,
        Event::Pong { nonce: 55 },
        "nothing more"
    );
}

fn sends_show_on_every_device_of_the_sender(cross_shard: bool) {
    let broker = own_send_broker().start();
    run(async {
        let a = user_on_shard("os-a", 0, 2);
        let b = user_on_shard("os-b", usize::from(cross_shard), 2);
        let mut phone = broker.connect(&a, "phone").await;
        let mut laptop = broker.connect(&a, "laptop").await;
        let mut cb = broker.connect(&b, "d").await;
        // b writes first, a answers from the phone: a's stream is [from b, to b].
        cb.send(1, &a, b"hello a").await.unwrap();
        expect_ack(&mut cb, 1, Code::OK).await;
        let mut kept = Vec::new();
        phone.send(5, &b, b"hello b").await.unwrap();
        assert_eq!(ack_keeping(&mut phone, 5, &mut kept).await, Code::OK);
        for (device, is_sender) in [(&mut phone, true), (&mut laptop, false)] {
            let mut kept_here = if is_sender {
                std::mem::take(&mut kept)
            } else {
                Vec::new()
            };
            let first = next_entry(device, &mut kept_here).await;
            assert_eq!((first.seq, first.from_user.as_str()), (1, b.as_str()));
            assert!(!first.outgoing && !first.echo);
            let echo = next_entry(device, &mut kept_here).await;
            assert_eq!(
                echo.seq, 2,
                "the send takes the next seq of the sender's stream"
            );
            assert!(echo.outgoing, "{echo:?}");
            assert_eq!(
                echo.echo, is_sender,
                "only the sending connection sees its echo"
            );
            assert_eq!(
                (echo.to_user.as_str(), echo.from_user.as_str()),
                (b.as_str(), a.as_str())
            );
            assert_eq!(
                (echo.client_msg_id, echo.body.as_slice()),
                (5, &b"hello b"[..])
            );
            quiet(device).await;
        }
        // b receives it once, as a normal message.
        let got = expect_deliver(&mut cb).await;
        assert!(
            got.outgoing,
            "b's own first send comes back to b as its echo"
        );
        let got = expect_deliver(&mut cb).await;
        assert_eq!((got.from_user.as_str(), got.outgoing), (a.as_str(), false));
        quiet(&mut cb).await;
    });
}

#[test]
fn a_cross_shard_send_shows_on_every_device_of_the_sender() {
    sends_show_on_every_device_of_the_sender(true);
}

#[test]
fn a_same_shard_send_shows_on_every_device_of_the_sender() {
    sends_show_on_every_device_of_the_sender(false);
}

#[test]
fn a_resend_is_not_echoed_twice_even_after_a_restart() {
    let dir = TempDir::new("own-send-resend");
    let config = own_send_broker().dir(dir.path());
    let broker = config.start();
    let (a, b) = (user_on_shard("osr-a", 0, 2), user_on_shard("osr-b", 1, 2));
    run(async {
        let mut ca = broker.connect(&a, "d").await;
        let mut kept = Vec::new();
        for _ in 0..2 {
            ca.send(3, &b, b"once").await.unwrap();
            assert_eq!(ack_keeping(&mut ca, 3, &mut kept).await, Code::OK);
        }
        let echo = next_entry(&mut ca, &mut kept).await;
        assert!(echo.outgoing && echo.echo);
        assert!(kept.is_empty());
        quiet(&mut ca).await;
    });
    let dir_path = broker.crash();
    let broker = config.dir(&dir_path).start();
    run(async {
        let mut ca = broker.connect(&a, "again").await;
        // A new device gets the stream so far: one outgoing entry.
        let mut kept = Vec::new();
        ca.send(3, &b, b"once").await.unwrap();
        assert_eq!(ack_keeping(&mut ca, 3, &mut kept).await, Code::OK);
        let replayed = next_entry(&mut ca, &mut kept).await;
        assert_eq!((replayed.seq, replayed.outgoing), (1, true));
        assert!(
            kept.is_empty(),
            "the resend after the restart was not echoed: {kept:?}"
        );
        quiet(&mut ca).await;
        let cb = broker.connect(&b, "fresh").await;
        assert_eq!(cb.login_info().head_seq, 1, "stored once");
    });
}

#[test]
fn with_own_send_sync_off_a_sender_sees_only_its_acks() {
    let broker = test_broker().server("own_send_sync = false").start();
    run(async {
        let (a, b) = (user_on_shard("off-a", 0, 2), user_on_shard("off-b", 1, 2));
        let mut ca = broker.connect(&a, "d").await;
        let mut laptop = broker.connect(&a, "laptop").await;
        ca.send(1, &b, b"x").await.unwrap();
        expect_ack(&mut ca, 1, Code::OK).await;
        quiet(&mut ca).await;
        quiet(&mut laptop).await;
        assert_eq!(laptop.login_info().head_seq, 0);
    });
}

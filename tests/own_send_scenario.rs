//! Own-send sync: what a user sends enters their own stream, so every device shows the whole
//! conversation in one ordered stream — the user's other devices see it as sent from another
//! device; the sending connection is not sent its own copy (its SendAck names the copy's seq)
//! and its acks cover that copy, so nothing is replayed to it from its cursor, while a resume
//! from before the copy gets it, flagged as the echo of its send; a resend never adds a second
//! copy; replay after a restart has it; and it can be turned off.

use std::time::Duration;

use ringpost::client::{Backoff, Client, Delivery, Event};
use ringpost::protocol::Code;
use ringpost_harness::*;

fn own_send_broker() -> BrokerBuilder {
    test_broker().server("own_send_sync = true")
}

/// The next SendAck (status, own_seq), keeping the stream entries read meanwhile (they may
/// come first).
async fn ack_keeping(c: &mut Client, id: u64, kept: &mut Vec<Delivery>) -> (Code, u64) {
    loop {
        match expect_event(c).await {
            Event::SendAck {
                client_msg_id,
                status,
                own_seq,
            } => {
                assert_eq!(client_msg_id, id);
                return (status, own_seq);
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
        // b writes first (its copy is b's seq 1), a answers from the phone: a's stream is
        // [from b, to b].
        cb.send(1, &a, b"hello a").await.unwrap();
        let mut kept_b = Vec::new();
        assert_eq!(ack_keeping(&mut cb, 1, &mut kept_b).await, (Code::OK, 1));
        let mut kept = Vec::new();
        phone.send(5, &b, b"hello b").await.unwrap();
        assert_eq!(
            ack_keeping(&mut phone, 5, &mut kept).await,
            (Code::OK, 2),
            "the send takes the next seq of the sender's stream, named in its SendAck"
        );
        let first = next_entry(&mut phone, &mut kept).await;
        assert_eq!((first.seq, first.from_user.as_str()), (1, b.as_str()));
        assert!(!first.outgoing && !first.echo);
        assert!(kept.is_empty(), "{kept:?}");
        quiet(&mut phone).await; // its own copy (seq 2) is not sent back to it
        let first = expect_deliver(&mut laptop).await;
        assert_eq!((first.seq, first.from_user.as_str()), (1, b.as_str()));
        let copy = expect_deliver(&mut laptop).await;
        assert_eq!(copy.seq, 2);
        assert!(
            copy.outgoing && !copy.echo,
            "sent from another device: {copy:?}"
        );
        assert_eq!(
            (copy.to_user.as_str(), copy.from_user.as_str()),
            (b.as_str(), a.as_str())
        );
        assert_eq!(
            (copy.client_msg_id, copy.body.as_slice()),
            (5, &b"hello b"[..])
        );
        quiet(&mut laptop).await;
        // b receives a's message once, as a normal message, after its own copy (seq 1, not
        // sent to the connection that sent it).
        let got = next_entry(&mut cb, &mut kept_b).await;
        assert_eq!(
            (got.seq, got.from_user.as_str(), got.outgoing),
            (2, a.as_str(), false)
        );
        quiet(&mut cb).await;

        // The phone acks what it saw (seq 1): that covers its copy, so a login of the phone
        // that resumes from its stored cursor gets nothing more.
        phone.ack(1).await.unwrap();
        quiet(&mut phone).await;
        let mut again = broker.connect(&a, "phone").await;
        quiet(&mut again).await;
        drop(again);
        // A resume from before the copy (the phone's own last seq, 1) gets it, and the client
        // that made the send recognises it as its echo.
        phone
            .reconnect(
                &mut Backoff::new(Duration::from_millis(1), Duration::from_millis(50)),
                20,
            )
            .await
            .expect("reconnect");
        let replayed = expect_deliver(&mut phone).await;
        assert_eq!(replayed.seq, 2);
        assert!(replayed.outgoing && replayed.echo, "{replayed:?}");
        quiet(&mut phone).await;
    });
}

/// A device that sends and logs out at once (a bot, a share sheet) leaves nothing behind: its
/// copy is covered when the connection closes, even before the copy is durable or passed over.
#[test]
fn a_send_then_an_immediate_logout_leaves_no_copy_to_replay() {
    let broker = own_send_broker().start();
    run(async {
        for i in 0..10 {
            let a = user_on_shard(&format!("osl-a{i}"), 0, 2);
            let b = user_on_shard(&format!("osl-b{i}"), 1, 2);
            let mut bot = broker.connect(&a, "bot").await;
            bot.send(1, &b, b"one-shot").await.unwrap();
            let mut kept = Vec::new();
            assert_eq!(ack_keeping(&mut bot, 1, &mut kept).await, (Code::OK, 1));
            bot.logout().await.unwrap();
            match expect_event(&mut bot).await {
                Event::GoAway { code, .. } => assert_eq!(code, Code::LOGGED_OUT),
                other => panic!("expected GoAway, got {other:?}"),
            }
            assert!(kept.is_empty(), "{kept:?}");
            let mut again = broker.connect(&a, "bot").await;
            assert_eq!(again.login_info().head_seq, 1);
            quiet(&mut again).await;
        }
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
        let mut laptop = broker.connect(&a, "laptop").await;
        let mut kept = Vec::new();
        ca.send(3, &b, b"once").await.unwrap();
        assert_eq!(ack_keeping(&mut ca, 3, &mut kept).await, (Code::OK, 1));
        ca.send(3, &b, b"once").await.unwrap();
        assert_eq!(
            ack_keeping(&mut ca, 3, &mut kept).await,
            (Code::OK, 0),
            "a resend answered from the dedup window adds no copy"
        );
        assert!(kept.is_empty(), "{kept:?}");
        quiet(&mut ca).await;
        let copy = expect_deliver(&mut laptop).await;
        assert_eq!((copy.seq, copy.outgoing), (1, true));
        quiet(&mut laptop).await;
    });
    let dir_path = broker.crash();
    let broker = config.dir(&dir_path).start();
    run(async {
        let mut ca = broker.connect(&a, "again").await;
        // A new device gets the stream so far: one outgoing entry.
        let mut kept = Vec::new();
        ca.send(3, &b, b"once").await.unwrap();
        assert_eq!(ack_keeping(&mut ca, 3, &mut kept).await, (Code::OK, 0));
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

/// The copy comes back from the recipient's shard with the SendAck of a first-time OK only: a
/// refused cross-shard send adds none.
#[test]
fn a_refused_cross_shard_send_adds_no_copy() {
    let broker = own_send_broker().limits("max_inbox = 1").start();
    run(async {
        let (a, b) = (user_on_shard("osf-a", 0, 2), user_on_shard("osf-b", 1, 2));
        let mut phone = broker.connect(&a, "phone").await;
        let mut laptop = broker.connect(&a, "laptop").await;
        let mut kept = Vec::new();
        phone.send(1, &b, b"fits").await.unwrap();
        assert_eq!(ack_keeping(&mut phone, 1, &mut kept).await, (Code::OK, 1));
        phone.send(2, &b, b"too many").await.unwrap();
        assert_eq!(
            ack_keeping(&mut phone, 2, &mut kept).await,
            (Code::INBOX_FULL, 0)
        );
        assert!(kept.is_empty(), "{kept:?}");
        quiet(&mut phone).await;
        let copy = expect_deliver(&mut laptop).await;
        assert_eq!((copy.seq, copy.client_msg_id, copy.outgoing), (1, 1, true));
        quiet(&mut laptop).await;
        // A copy is appended before the SendAck that names it goes out, so one made for the
        // refusal would show in the head by now.
        let tablet = broker.connect(&a, "tablet").await;
        assert_eq!(tablet.login_info().head_seq, 1, "one copy");
    });
}

/// A resend that reaches the recipient's shard while the first is still on its way to the
/// disk is answered with it, and only the first answer carries the copy.
#[test]
fn a_resend_while_the_first_is_unsynced_adds_no_copy() {
    let dir = TempDir::new("own-send-in-flight");
    let hold = "fault-sync-hold";
    let broker = own_send_broker()
        .dir(dir.path())
        .storage("fsync = \"always\"")
        .env(ringpost::log::fault::SYNC_HOLD_ENV, hold)
        .start();
    let hold_file = dir.path().join("data").join(hold);
    let (a, b) = (user_on_shard("osi-a", 0, 2), user_on_shard("osi-b", 1, 2));
    run(async {
        let mut phone = broker.connect(&a, "phone").await;
        let mut laptop = broker.connect(&a, "laptop").await;
        std::fs::write(&hold_file, b"").unwrap();
        phone.send(7, &b, b"once").await.unwrap();
        phone.send(7, &b, b"once").await.unwrap();
        // Sent after the resend over the same queue: once it is appended, the recipient's shard
        // has seen the resend, which waits for the first's commit.
        phone.send(8, &b, b"after").await.unwrap();
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let probe = broker.connect(&b, "probe").await;
            if probe.login_info().head_seq == 2 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never appended");
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
        std::fs::remove_file(&hold_file).unwrap();
        let mut kept = Vec::new();
        assert_eq!(ack_keeping(&mut phone, 7, &mut kept).await, (Code::OK, 1));
        assert_eq!(
            ack_keeping(&mut phone, 7, &mut kept).await,
            (Code::OK, 0),
            "the resend adds no copy"
        );
        assert_eq!(ack_keeping(&mut phone, 8, &mut kept).await, (Code::OK, 2));
        assert!(kept.is_empty(), "{kept:?}");
        quiet(&mut phone).await;
        for (seq, id) in [(1, 7), (2, 8)] {
            let copy = expect_deliver(&mut laptop).await;
            assert_eq!(
                (copy.seq, copy.client_msg_id, copy.outgoing),
                (seq, id, true)
            );
        }
        quiet(&mut laptop).await;
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

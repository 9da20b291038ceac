//! Devices and connection lifecycle: fan-out, device limits, replacement, heartbeats, logout.

use std::time::{Duration, Instant};

use ringpost::client::{Client, ClientError};
use ringpost::protocol::Code;
use ringpost_harness::*;

#[test]
fn every_device_of_a_user_gets_every_message_in_the_same_order() {
    let broker = test_broker().limits("max_devices = 3").start();
    run(async {
        let (a, b) = (user_on_shard("a", 0, 2), user_on_shard("b", 1, 2));
        let mut sender = broker.connect(&a, "d").await;
        let mut devices = Vec::new();
        for dev in ["phone", "laptop", "tablet"] {
            devices.push(broker.connect(&b, dev).await);
        }
        for i in 1..=20u64 {
            sender.send(i, &b, &i.to_le_bytes()).await.unwrap();
        }
        for i in 1..=20u64 {
            expect_ack(&mut sender, i, Code::OK).await;
        }
        for dev in &mut devices {
            for i in 1..=20u64 {
                let d = expect_deliver(dev).await;
                assert_eq!((d.seq, d.client_msg_id), (i, i));
            }
        }
    });
}

#[test]
fn a_device_over_max_devices_is_refused() {
    let broker = test_broker().limits("max_devices = 3").start();
    run(async {
        let u = user_on_shard("many", 1, 2);
        let mut kept = Vec::new();
        for dev in ["d1", "d2", "d3"] {
            kept.push(broker.connect(&u, dev).await);
        }
        match Client::connect(&broker.opts(&u, "d4"), 0).await {
            Err(ClientError::Rejected { code, message }) => {
                assert_eq!(code, Code::TOO_MANY_DEVICES);
                assert!(message.contains('3'), "message names the limit: {message}");
            }
            Err(e) => panic!("expected TOO_MANY_DEVICES, got {e}"),
            Ok(_) => panic!("a fourth device was accepted"),
        }
        // Once one device leaves, a new one fits.
        let mut gone = kept.pop().unwrap();
        gone.logout().await.unwrap();
        expect_goaway_then_close(&mut gone, Code::LOGGED_OUT).await;
        let mut d4 = broker.connect(&u, "d4").await;
        d4.ping(1).await.unwrap();
        assert!(matches!(
            expect_event(&mut d4).await,
            ringpost::client::Event::Pong { nonce: 1 }
        ));
    });
}

#[test]
fn logging_in_again_with_the_same_device_id_replaces_the_old_session() {
    let broker = test_broker().start();
    run(async {
        let (a, b) = (user_on_shard("a", 0, 2), user_on_shard("b", 1, 2));
        let mut old = broker.connect(&b, "phone").await;
        let mut new = broker.connect(&b, "phone").await;
        expect_goaway_then_close(&mut old, Code::SESSION_REPLACED).await;
        let mut sender = broker.connect(&a, "d").await;
        sender.send(1, &b, b"to the new one").await.unwrap();
        expect_ack(&mut sender, 1, Code::OK).await;
        assert_eq!(expect_deliver(&mut new).await.body, b"to the new one");
    });
}

#[test]
fn a_silent_connection_times_out_and_a_pinging_one_does_not() {
    let broker = test_broker().limits("idle_timeout = \"1s\"").start();
    run(async {
        let mut silent = broker.connect(&user_on_shard("quiet", 0, 2), "d").await;
        let mut chatty = broker.connect(&user_on_shard("chatty", 1, 2), "d").await;
        assert_eq!(silent.login_info().heartbeat_ms, 333);
        let started = Instant::now();
        let pinger = glommio::spawn_local(async move {
            // Pinging on the advertised heartbeat is the behaviour under test.
            for nonce in 0..9u64 {
                chatty.ping(nonce).await.unwrap();
                assert_eq!(
                    expect_event(&mut chatty).await,
                    ringpost::client::Event::Pong { nonce }
                );
                glommio::timer::sleep(Duration::from_millis(300)).await;
            }
            chatty
        });
        expect_goaway_then_close(&mut silent, Code::IDLE_TIMEOUT).await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
            "idle timeout fired after {waited:?}"
        );
        let mut chatty = pinger.await;
        assert!(started.elapsed() > Duration::from_millis(2500));
        chatty.ping(99).await.unwrap();
        assert_eq!(
            expect_event(&mut chatty).await,
            ringpost::client::Event::Pong { nonce: 99 },
            "the pinging connection is still up"
        );
    });
}

#[test]
fn logout_is_answered_with_goaway_logged_out() {
    let broker = test_broker().shards(1).start();
    run(async {
        let mut c = broker.connect("leaver", "d").await;
        c.logout().await.unwrap();
        expect_goaway_then_close(&mut c, Code::LOGGED_OUT).await;
    });
}

#[test]
fn a_slow_reader_catches_up_without_loss_or_reorder() {
    // 12 MB of deliveries to a reader that does not read until every send is acked: more than
    // loopback socket buffers hold, so most of it must wait in the inbox and flow through the
    // catch-up path (max_outbound is tiny) when the reader starts reading.
    const N: u64 = 12_000;
    let broker = test_broker().limits("max_outbound = \"4KiB\"\nmax_frame = \"2KiB\"\nsends_per_sec = 1000000\nmax_inbox = 20000").start();
    run(async {
        let (a, b) = (user_on_shard("a", 0, 2), user_on_shard("b", 1, 2));
        let mut reader = broker.connect(&b, "d").await;
        let mut sender = broker.connect(&a, "d").await;
        send_backlog_then_read(&mut sender, &mut reader, &b, N, 1000, 100).await;
    });
}

#[test]
fn a_client_reconnects_with_backoff_and_resumes_after_its_last_seq() {
    let broker = test_broker().start();
    run(async {
        let (a, b) = (user_on_shard("a", 0, 2), user_on_shard("b", 1, 2));
        let mut sender = broker.connect(&a, "d").await;
        let mut phone = broker.connect(&b, "phone").await;
        for i in 1..=2u64 {
            sender.send(i, &b, b"before").await.unwrap();
            expect_ack(&mut sender, i, Code::OK).await;
            assert_eq!(expect_deliver(&mut phone).await.seq, i);
        }
        // Another login with the same device id takes the session away...
        let mut usurper = broker.connect(&b, "phone").await;
        expect_goaway_then_close(&mut phone, Code::SESSION_REPLACED).await;
        // (a new device with last_seq 0 is given everything retained first)
        assert_eq!(expect_deliver(&mut usurper).await.seq, 1);
        assert_eq!(expect_deliver(&mut usurper).await.seq, 2);
        usurper.logout().await.unwrap();
        expect_goaway_then_close(&mut usurper, Code::LOGGED_OUT).await;
        // ...a message arrives meanwhile...
        sender.send(3, &b, b"while away").await.unwrap();
        expect_ack(&mut sender, 3, Code::OK).await;
        // ...and the original client comes back on its own, resuming after seq 2.
        let mut backoff =
            ringpost::client::Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        phone.reconnect(&mut backoff, 5).await.unwrap();
        assert_eq!(phone.login_info().head_seq, 3);
        let d = expect_deliver(&mut phone).await;
        assert_eq!(
            (d.seq, d.body.as_slice()),
            (3, &b"while away"[..]),
            "no replay of 1..=2"
        );
    });
}

#[test]
fn a_client_that_stops_reading_is_closed_and_loses_nothing() {
    const N: u64 = 6000;
    let broker = test_broker()
        .limits("slow_consumer_timeout = \"1s\"\nsends_per_sec = 1000000\nmax_frame = \"2KiB\"")
        .start();
    run(async {
        let (a, b) = (user_on_shard("a", 0, 2), user_on_shard("b", 1, 2));
        let mut stuck = broker.connect(&b, "phone").await;
        let mut sender = broker.connect(&a, "d").await;
        let body = vec![b'z'; 1000];
        for i in 1..=N {
            sender.send(i, &b, &body).await.unwrap();
        }
        for i in 1..=N {
            expect_ack(&mut sender, i, Code::OK).await;
        }
        // 6 MB is more than the socket buffers hold; the broker's write stalls, and after
        // slow_consumer_timeout it gives up on this connection.
        broker.wait_for_log("closing a slow consumer");
        let mut last = 0;
        loop {
            match next_event(&mut stuck).await {
                Ok(ringpost::client::Event::Deliver(d)) => {
                    assert_eq!(d.seq, last + 1);
                    last = d.seq;
                }
                Ok(ringpost::client::Event::GoAway { code, .. }) => {
                    assert_eq!(code, Code::SLOW_CONSUMER);
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => break,
            }
        }
        assert!(
            last < N,
            "the stalled connection cannot have received everything"
        );
        // Coming back with what it has, it gets the rest from the log.
        let mut again = Client::connect(&broker.opts(&b, "phone"), last)
            .await
            .unwrap();
        for seq in last + 1..=N {
            assert_eq!(expect_deliver(&mut again).await.seq, seq);
        }
    });
}

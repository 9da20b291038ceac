//! Graceful shutdown beyond the basic case in `lifecycle_scenario`: clients on every shard, a
//! connection still in its login phase, a client that stopped reading, and a sender streaming
//! through the SIGTERM — every acked message (and only those) is there after a restart.

use std::collections::BTreeSet;
use std::io::Read;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;
use glommio::channels::local_channel;
use glommio::sync::Semaphore;
use ringpost::client::{ClientError, Event};
use ringpost::protocol::{ClientMsg, Code};
use ringpost_harness::*;

/// Waits for the exit; asserts status 0 within `limit` of `since`.
fn assert_exits_zero(broker: &mut TestBroker, since: Instant, limit: Duration) {
    let status = broker
        .wait_exit(limit.saturating_sub(since.elapsed()))
        .unwrap_or_else(|| {
            panic!(
                "still running {limit:?} after SIGTERM; stderr:\n{}",
                broker.stderr()
            )
        });
    assert!(
        status.success(),
        "exit status {status:?}; stderr:\n{}",
        broker.stderr()
    );
}

#[test]
fn sigterm_says_goaway_on_every_shard_closes_logins_in_progress_and_exits_zero_in_the_grace() {
    const SHARDS: usize = 4;
    let mut broker = test_broker()
        .shards(SHARDS)
        .server("shutdown_grace = \"2s\"")
        .start();
    assert_eq!(
        broker.shards, SHARDS,
        "the listening line names the shard count"
    );
    // A connection that has not sent its Login (login_timeout is the default 10 s, far
    // longer than the grace): it must not hold the process up.
    let mut half_open = std::net::TcpStream::connect(broker.addr).unwrap();
    half_open.set_read_timeout(Some(WAIT)).unwrap();
    let mut signalled = Instant::now();
    run(async {
        let mut clients = Vec::new();
        for s in 0..SHARDS {
            let user = user_on_shard("bye", s, SHARDS);
            let c = broker.connect(&user, "d").await;
            assert_eq!(c.login_info().shard as usize, s);
            clients.push(c);
        }
        signalled = Instant::now();
        broker.sigterm();
        for c in &mut clients {
            expect_goaway_then_close(c, Code::SHUTDOWN).await;
        }
    });
    // The login-phase connection is closed (at most a GoAway(SHUTDOWN) first, nothing else).
    let mut rest = Vec::new();
    match half_open.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the login-phase connection was not closed: {e}"),
    }
    if !rest.is_empty() {
        let payload = &rest[ringpost::protocol::LEN_PREFIX..];
        match ringpost::protocol::decode_server(payload) {
            Ok(ringpost::protocol::ServerMsg::GoAway { code, .. }) => {
                assert_eq!(code, Code::SHUTDOWN)
            }
            other => panic!("a login-phase connection got {other:?} at shutdown"),
        }
    }
    assert_exits_zero(&mut broker, signalled, Duration::from_secs(3));
    assert!(
        std::net::TcpStream::connect(broker.addr).is_err(),
        "no connections after exit"
    );
}

#[test]
fn a_client_that_stopped_reading_does_not_hold_up_shutdown_and_loses_nothing() {
    const N: u64 = 5000;
    let dir = TempDir::new("shutdown-stuck");
    let config = test_broker()
        .dir(dir.path())
        .limits("sends_per_sec = 1000000\nmax_frame = \"2KiB\"")
        .server("shutdown_grace = \"2s\"");
    let mut broker = config.start();
    let (a, b, c) = (
        user_on_shard("a", 0, 2),
        user_on_shard("stuck", 1, 2),
        user_on_shard("reader", 1, 2),
    );
    let mut signalled = Instant::now();
    run(async {
        // `stuck` logs in and never reads: 5 MB for it is more than socket buffers hold.
        let stuck = broker.connect(&b, "phone").await;
        let mut reader = broker.connect(&c, "d").await;
        let mut sender = broker.connect(&a, "d").await;
        let body = vec![b's'; 1000];
        for i in 1..=N {
            sender.send(i, &b, &body).await.unwrap();
        }
        for i in 1..=N {
            expect_ack(&mut sender, i, Code::OK).await;
        }
        signalled = Instant::now();
        broker.sigterm();
        // Clients that read are told at once, whatever the stuck one does.
        expect_goaway_then_close(&mut reader, Code::SHUTDOWN).await;
        expect_goaway_then_close(&mut sender, Code::SHUTDOWN).await;
        drop(stuck);
    });
    assert_exits_zero(&mut broker, signalled, Duration::from_secs(3));
    drop(broker);

    // Everything acked for the stuck user is there after a restart, in order.
    let broker = config.start();
    run(async {
        let mut again = broker.connect(&b, "phone").await;
        assert_eq!(again.login_info().head_seq, N);
        for seq in 1..=N {
            let d = expect_deliver(&mut again).await;
            assert_eq!((d.seq, d.client_msg_id), (seq, seq));
        }
    });
}

#[test]
fn a_sender_streaming_through_sigterm_has_exactly_its_acked_messages_kept() {
    let dir = TempDir::new("shutdown-stream");
    let config = test_broker()
        .dir(dir.path())
        .limits("sends_per_sec = 1000000")
        .server("shutdown_grace = \"5s\"");
    let mut broker = config.start();
    let (a, b) = (user_on_shard("streamer", 0, 2), user_on_shard("away", 1, 2));
    let mut signalled = Instant::now();
    let acked: BTreeSet<u64> = run(async {
        let (mut rx, mut tx) = broker.connect(&a, "d").await.split();
        // Flow control like a real client's: at most WINDOW unacked sends in flight.
        const WINDOW: u64 = 200;
        let window = Rc::new(Semaphore::new(WINDOW));
        let (warm_tx, warm_rx) = local_channel::new_bounded::<()>(1);
        // Writes numbered sends to the offline user until the broker stops taking them.
        let writer = {
            let window = window.clone();
            let b = b.clone();
            glommio::spawn_local(async move {
                let mut sent = 0u64;
                while window.acquire(20).await.is_ok() {
                    for _ in 0..20 {
                        sent += 1;
                        tx.queue(&ClientMsg::Send {
                            client_msg_id: sent,
                            to_user: &b,
                            body: &sent.to_le_bytes(),
                        });
                    }
                    if tx.flush().await.is_err() {
                        break;
                    }
                }
                sent
            })
        };
        // Reads the acks, then the GoAway, then the close.
        let reader = {
            let window = window.clone();
            glommio::spawn_local(async move {
                let mut acked = BTreeSet::new();
                loop {
                    let next = future::or(async { Some(rx.recv().await) }, async {
                        glommio::timer::sleep(WAIT).await;
                        None
                    })
                    .await;
                    match next.expect("an event within the wait") {
                        Ok(Event::SendAck {
                            client_msg_id,
                            status,
                            ..
                        }) => {
                            assert_eq!(status, Code::OK, "send {client_msg_id}");
                            assert!(acked.insert(client_msg_id), "{client_msg_id} acked twice");
                            window.signal(1);
                            if acked.len() == 500 {
                                let _ = warm_tx.try_send(());
                            }
                        }
                        Ok(Event::GoAway { code, .. }) => {
                            assert_eq!(code, Code::SHUTDOWN);
                            window.close();
                            break;
                        }
                        other => panic!("expected SendAck or GoAway, got {other:?}"),
                    }
                }
                match rx.recv().await {
                    Err(ClientError::Closed) | Err(ClientError::Io(_)) => {}
                    other => panic!("expected the close after GoAway, got {other:?}"),
                }
                acked
            })
        };
        future::or(async { warm_rx.recv().await.unwrap() }, async {
            glommio::timer::sleep(WAIT).await;
            panic!("500 sends were never acked");
        })
        .await;
        signalled = Instant::now();
        broker.sigterm();
        let acked = reader.await;
        let sent = writer.await;
        assert!(acked.len() >= 500 && acked.len() as u64 <= sent);
        acked
    });
    assert_exits_zero(&mut broker, signalled, Duration::from_secs(6));
    drop(broker);

    let broker = config.start();
    run(async {
        let mut c = broker.connect(&b, "d").await;
        assert_eq!(
            c.login_info().head_seq,
            acked.len() as u64,
            "the inbox holds exactly the acked sends"
        );
        let mut delivered = BTreeSet::new();
        let mut last_id = 0;
        for seq in 1..=acked.len() as u64 {
            let d = expect_deliver(&mut c).await;
            assert_eq!(d.seq, seq);
            assert!(d.client_msg_id > last_id, "send order kept");
            last_id = d.client_msg_id;
            delivered.insert(d.client_msg_id);
        }
        assert_eq!(delivered, acked, "delivered == acked");
        // Nothing more follows: a ping is answered next.
        c.ping(1).await.unwrap();
        assert_eq!(expect_event(&mut c).await, Event::Pong { nonce: 1 });
    });
}

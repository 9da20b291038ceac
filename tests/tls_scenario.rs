//! TLS (`[tls] cert_file`, `key_file`) over the wire: logins and messages across shards (the
//! TLS session moves with the hand-off), replay, large frames cut into many records, pipelined
//! frames after the Login, wss on the WebSocket port, a plaintext client refused, a silent one
//! closed at `login_timeout`, parked connections, and a certificate reload on SIGHUP that keeps
//! open connections.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use ringpost::client::{Client, ClientError, Event};
use ringpost::protocol::{ClientMsg, Code};
use ringpost_harness::tls::TestCa;
use ringpost_harness::*;

fn tls_broker(dir: &TempDir, extra_limits: &str) -> (TestBroker, TestCa) {
    let ca = TestCa::new(dir.path(), "one");
    let cert = ca.issue("broker");
    let broker = test_broker()
        .dir(dir.path().join("broker"))
        .tls(&cert)
        .limits(extra_limits)
        .start();
    (broker, ca)
}

async fn connect(broker: &TestBroker, ca: &TestCa, user: &str, device: &str) -> Client {
    match Client::connect(&broker.tls_opts(user, device, &ca.ca_file()), 0).await {
        Ok(c) => c,
        Err(e) => panic!("{user}/{device} could not log in over TLS: {e}"),
    }
}

#[test]
fn messages_cross_shards_over_tls_and_replay_after_reconnect() {
    let dir = TempDir::new("tls-p2p");
    let (broker, ca) = tls_broker(&dir, "");
    let (a, b) = (user_on_shard("alice", 0, 2), user_on_shard("bob", 1, 2));
    run(async {
        let mut ca_ = connect(&broker, &ca, &a, "d").await;
        let mut cb = connect(&broker, &ca, &b, "d").await;
        assert_eq!(
            (ca_.login_info().shard, cb.login_info().shard),
            (0, 1),
            "each served by its owner: the TLS session moved with the hand-off"
        );
        ca_.send(1, &b, b"over tls").await.unwrap();
        expect_ack(&mut ca_, 1, Code::OK).await;
        let d = expect_deliver(&mut cb).await;
        assert_eq!((d.seq, d.body.as_slice()), (1, &b"over tls"[..]));
        cb.ack(1).await.unwrap();
        // A frame far larger than one TLS record (16 KiB) both ways.
        let big = vec![7u8; 60_000];
        cb.send(2, &a, &big).await.unwrap();
        expect_ack(&mut cb, 2, Code::OK).await;
        assert_eq!(expect_deliver(&mut ca_).await.body, big);
        drop(cb);
        for i in 10..13u64 {
            ca_.send(i, &b, format!("offline {i}").as_bytes())
                .await
                .unwrap();
            expect_ack(&mut ca_, i, Code::OK).await;
        }
        let mut again = Client::connect(&broker.tls_opts(&b, "d", &ca.ca_file()), 1)
            .await
            .unwrap();
        for (seq, i) in (2..5).zip(10..13u64) {
            let d = expect_deliver(&mut again).await;
            assert_eq!((d.seq, d.body), (seq, format!("offline {i}").into_bytes()));
        }
    });
}

#[test]
fn frames_pipelined_behind_the_login_arrive_over_tls() {
    let dir = TempDir::new("tls-pipeline");
    let (broker, ca) = tls_broker(&dir, "");
    let (a, b) = (user_on_shard("pipe", 1, 2), user_on_shard("sink", 0, 2));
    run(async {
        let mut cb = connect(&broker, &ca, &b, "d").await;
        let mut c = connect(&broker, &ca, &a, "d").await;
        // Several frames in one write: one TLS record holding them all.
        let mut bytes = Vec::new();
        for i in 1..=3u64 {
            bytes.extend(frame(&ClientMsg::Send {
                client_msg_id: i,
                to_user: &b,
                body: b"p",
            }));
        }
        c.send_raw(&bytes).await.unwrap();
        for i in 1..=3 {
            expect_ack(&mut c, i, Code::OK).await;
            assert_eq!(expect_deliver(&mut cb).await.seq, i);
        }
    });
}

/// A burst of Delivers of assorted sizes: the broker's TLS records then alternate between
/// full 16 KiB ones and short tails, and one socket read can complete a full record and hold a
/// whole short one. The client must hand out the first record's plaintext before it feeds
/// rustls the rest (its received-plaintext buffer is 16 KiB), not fail the read.
#[test]
fn a_burst_of_deliveries_of_assorted_sizes_arrives_over_tls() {
    let dir = TempDir::new("tls-burst");
    let (broker, ca) = tls_broker(&dir, "sends_per_sec = 100000");
    let (a, b) = (user_on_shard("burst", 0, 2), user_on_shard("reader", 1, 2));
    const N: u64 = 3_000;
    let size = |i: u64| 1 + (i * 7919 % 2_000) as usize;
    run(async {
        let mut cb = connect(&broker, &ca, &b, "d").await;
        let mut c = connect(&broker, &ca, &a, "d").await;
        let mut bytes = Vec::new();
        for i in 1..=N {
            bytes.extend(frame(&ClientMsg::Send {
                client_msg_id: i,
                to_user: &b,
                body: &vec![i as u8; size(i)],
            }));
        }
        c.send_raw(&bytes).await.unwrap();
        for i in 1..=N {
            expect_ack(&mut c, i, Code::OK).await;
        }
        for i in 1..=N {
            let d = expect_deliver(&mut cb).await;
            assert_eq!((d.seq, d.body.len()), (i, size(i)));
        }
    });
}

#[test]
fn wss_on_the_websocket_port() {
    let dir = TempDir::new("tls-wss");
    let (broker, ca) = tls_broker(&dir, "");
    let (a, b) = (user_on_shard("wsa", 1, 2), user_on_shard("wsb", 0, 2));
    run(async {
        let opts = |u: &str| {
            broker
                .opts(u, "web")
                .over_websocket(broker.ws())
                .with_tls(&ca.ca_file())
                .unwrap()
        };
        let mut wa = Client::connect(&opts(&a), 0).await.unwrap();
        let mut tb = connect(&broker, &ca, &b, "tcp").await;
        wa.send(1, &b, b"from wss").await.unwrap();
        expect_ack(&mut wa, 1, Code::OK).await;
        assert_eq!(expect_deliver(&mut tb).await.body, b"from wss");
        tb.send(2, &a, b"to wss").await.unwrap();
        expect_ack(&mut tb, 2, Code::OK).await;
        assert_eq!(expect_deliver(&mut wa).await.body, b"to wss");
        // Plain HTTP on the wss port is told to use TLS.
        let mut raw = raw_connect(broker.ws());
        raw.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        let _ = raw.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
        assert!(answer.contains("TLS"), "{answer:?}");
    });
}

#[test]
fn a_plaintext_client_on_a_tls_port_is_closed_within_login_timeout() {
    let dir = TempDir::new("tls-plain");
    let (broker, ca) = tls_broker(&dir, "login_timeout = \"1s\"");
    // A plaintext Login is answered in plaintext, at once, and closed.
    let mut s = raw_connect(broker.addr);
    s.write_all(&frame(&ClientMsg::Login {
        token: &broker.token("plain"),
        device_id: "d",
        last_seq: 0,
    }))
    .unwrap();
    let message = expect_error_then_close(&mut s, Code::MALFORMED_FRAME);
    assert!(message.contains("TLS"), "{message}");
    // A silent client (no ClientHello) is closed at the login timeout.
    let mut silent = raw_connect(broker.addr);
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = silent.read(&mut buf).unwrap_or(0);
    let waited = started.elapsed();
    assert_eq!(
        n, 0,
        "closed without a word: there is no TLS channel to answer on"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // A TLS client that trusts another CA fails its handshake; the broker serves on.
    let other = TestCa::new(dir.path(), "other");
    run(async {
        let opts = broker.tls_opts("x", "d", &other.ca_file());
        match Client::connect(&opts, 0).await {
            Err(ClientError::Protocol(e)) => assert!(e.contains("tls"), "{e}"),
            Err(ClientError::Io(e)) => assert!(e.to_string().contains("certificate"), "{e}"),
            other => panic!("expected a certificate failure, got {:?}", other.err()),
        }
        let mut c = connect(&broker, &ca, "still", "d").await;
        c.ping(9).await.unwrap();
        assert_eq!(expect_event(&mut c).await, Event::Pong { nonce: 9 });
    });
}

#[test]
fn parked_tls_connections_get_deliveries_and_resume() {
    let dir = TempDir::new("tls-park");
    let ca = TestCa::new(dir.path(), "one");
    let broker = test_broker()
        .dir(dir.path().join("broker"))
        .tls(&ca.issue("broker"))
        .server("park_after = \"100ms\"")
        .start();
    let (a, b) = (user_on_shard("idle", 0, 2), user_on_shard("busy", 1, 2));
    run(async {
        let mut idle = connect(&broker, &ca, &a, "d").await;
        let mut busy = connect(&broker, &ca, &b, "d").await;
        // Parking has no signal a client can see; waiting well past park_after is the point.
        glommio::timer::sleep(Duration::from_millis(500)).await;
        busy.send(1, &a, b"to a parked tls connection")
            .await
            .unwrap();
        expect_ack(&mut busy, 1, Code::OK).await;
        assert_eq!(
            expect_deliver(&mut idle).await.body,
            b"to a parked tls connection"
        );
        glommio::timer::sleep(Duration::from_millis(500)).await;
        idle.send(2, &b, b"awake").await.unwrap();
        expect_ack(&mut idle, 2, Code::OK).await;
        assert_eq!(expect_deliver(&mut busy).await.body, b"awake");
    });
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_open_connections() {
    let dir = TempDir::new("tls-reload");
    let first = TestCa::new(dir.path(), "first");
    let second = TestCa::new(dir.path(), "second");
    let served = first.issue("broker");
    let broker = test_broker()
        .dir(dir.path().join("broker"))
        .tls(&served)
        .start();
    let (a, b) = (user_on_shard("old", 0, 2), user_on_shard("new", 1, 2));
    run(async {
        let mut old = connect(&broker, &first, &a, "d").await;
        served.replace_with(&second.issue("next"));
        broker.signal(libc::SIGHUP);
        broker.wait_for_log("tls certificate reloaded (generation 2)");
        // New handshakes get the new certificate: only the second CA's clients accept it.
        let refused = Client::connect(&broker.tls_opts("x", "d", &first.ca_file()), 0).await;
        assert!(refused.is_err(), "the old CA no longer fits");
        let mut new = connect(&broker, &second, &b, "d").await;
        // The connection made under the old certificate carries on.
        old.send(1, &b, b"still here").await.unwrap();
        expect_ack(&mut old, 1, Code::OK).await;
        assert_eq!(expect_deliver(&mut new).await.body, b"still here");
    });
    // A reload that fails keeps the current certificate.
    std::fs::write(&served.cert_file, "not a certificate").unwrap();
    broker.signal(libc::SIGHUP);
    broker.wait_for_log("tls certificate not reloaded");
    run(async {
        connect(&broker, &second, "after", "d").await;
    });
}

//! Admission over the wire: `limits.max_connections` (whole process) and
//! `limits.max_pending_logins_per_ip` (connections from one address not logged in yet). Beyond
//! either, a new connection is told SERVER_BUSY (HTTP 503 on the WebSocket port) and closed;
//! logged-in users go on as before, and a freed place is taken again. Sources are spread over
//! 127.0.0.0/8.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::time::Instant;

use ringpost::client::{Client, ClientError, ClientOptions};
use ringpost::protocol::{ClientMsg, Code};
use ringpost_harness::*;

fn busy(r: Result<Client, ClientError>) -> String {
    match r {
        Err(ClientError::Rejected { code, message }) => {
            assert_eq!(code, Code::SERVER_BUSY, "{message}");
            message
        }
        Err(e) => panic!("expected SERVER_BUSY, got {e}"),
        Ok(_) => panic!("expected SERVER_BUSY, got a login"),
    }
}

/// Logs in with `opts` until it works (a place freed by a close is given back once the broker
/// has seen the close; there is no signal for that, so this retries up to [`WAIT`]).
async fn login_when_admitted(opts: &ClientOptions) -> Client {
    let deadline = Instant::now() + WAIT;
    loop {
        match Client::connect(opts, 0).await {
            Ok(c) => return c,
            Err(ClientError::Rejected { code, .. }) if code == Code::SERVER_BUSY => {
                assert!(Instant::now() < deadline, "never admitted again");
                glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("login failed: {e}"),
        }
    }
}

#[test]
fn past_max_connections_new_ones_are_busy_and_logged_in_users_are_unaffected() {
    let broker = test_broker().limits("max_connections = 4").start();
    let users: Vec<String> = (0..4).map(|i| user_on_shard("held", i % 2, 2)).collect();
    let users: Vec<String> = users
        .iter()
        .enumerate()
        .map(|(i, u)| format!("{u}-{i}"))
        .collect();
    run(async {
        let mut held = Vec::new();
        for u in &users {
            held.push(broker.connect(u, "d").await);
        }
        let message = busy(Client::connect(&broker.opts("fifth", "d"), 0).await);
        assert!(message.contains("max_connections"), "{message}");
        // The WebSocket port counts too and says 503 before the upgrade.
        let mut raw = raw_connect(broker.ws());
        raw.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        let _ = raw.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
        assert!(answer.contains("SERVER_BUSY"), "{answer:?}");
        // Everyone logged in still sends and receives.
        let (first, rest) = held.split_at_mut(1);
        first[0].send(1, &users[1], b"still served").await.unwrap();
        expect_ack(&mut first[0], 1, Code::OK).await;
        assert_eq!(expect_deliver(&mut rest[0]).await.body, b"still served");
        // A logout frees a place for the next connection.
        let mut leaving = held.pop().unwrap();
        leaving.logout().await.unwrap();
        expect_goaway_then_close(&mut leaving, Code::LOGGED_OUT).await;
        drop(leaving);
        let mut fifth = login_when_admitted(&broker.opts("fifth", "d")).await;
        fifth.ping(1).await.unwrap();
        expect_event(&mut fifth).await;
    });
}

#[test]
fn pending_logins_are_limited_per_source_address() {
    // One shard: the whole limit is that shard's share.
    let broker = test_broker()
        .shards(1)
        .limits("max_pending_logins_per_ip = 3")
        .start();
    let crowded = Ipv4Addr::new(127, 0, 0, 2);
    // Three connections from one address that never log in...
    let mut pending: Vec<_> = (0..3)
        .map(|_| raw_connect_from(broker.addr, crowded))
        .collect();
    // ...and the fourth is refused, before it says anything.
    let mut fourth = raw_connect_from(broker.addr, crowded);
    let message = expect_error_then_close(&mut fourth, Code::SERVER_BUSY);
    assert!(message.contains("max_pending_logins_per_ip"), "{message}");
    assert!(message.contains("127.0.0.2"), "{message}");
    run(async {
        // Many other addresses, each with pending connections of its own, still log in.
        let mut others = Vec::new();
        for last in 3..=40u8 {
            let ip = Ipv4Addr::new(127, 0, 0, last);
            let waiting: Vec<_> = (0..2).map(|_| raw_connect_from(broker.addr, ip)).collect();
            let mut opts = broker.opts(&format!("from-{last}"), "d");
            opts.source_ip = Some(ip.into());
            let c = Client::connect(&opts, 0).await.unwrap();
            others.push((c, waiting));
        }
        // A login from the crowded address is refused too, until one of its pending
        // connections goes; logged-in connections do not count.
        let mut opts = broker.opts("crowded", "d");
        opts.source_ip = Some(crowded.into());
        busy(Client::connect(&opts, 0).await);
        drop(pending.pop());
        let first = login_when_admitted(&opts).await;
        // Two pending again, and the logged-in one no longer counts: one more may log in.
        let mut opts2 = broker.opts("crowded-2", "d");
        opts2.source_ip = Some(crowded.into());
        let mut second = Client::connect(&opts2, 0).await.unwrap();
        second.send(1, "crowded", b"hi").await.unwrap();
        expect_ack(&mut second, 1, Code::OK).await;
        drop(first);
        // The refused connections' login frames were never read: nothing of theirs is kept.
        let mut raw = raw_connect_from(broker.addr, Ipv4Addr::new(127, 0, 0, 99));
        raw.write_all(&frame(&ClientMsg::Ping { nonce: 1 }))
            .unwrap();
        expect_error_then_close(&mut raw, Code::NOT_LOGGED_IN);
    });
    broker.assert_serving();
}

//! Bad input and abuse: each gets its stable code and a close, and the broker keeps serving.

use std::io::Write;
use std::time::Duration;

use ringpost::client::{Client, ClientError, Event};
use ringpost::protocol::{self, ClientMsg, Code};
use ringpost_harness::*;

#[test]
fn garbage_payload_is_malformed_frame() {
    let broker = test_broker().start();
    let mut s = raw_connect(broker.addr);
    let mut bytes = 12u32.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"\xde\xad\xbe\xef garbage");
    s.write_all(&bytes).unwrap();
    expect_error_then_close(&mut s, Code::MALFORMED_FRAME);
    broker.assert_serving();
}

#[test]
fn plain_text_is_rejected_too() {
    let broker = test_broker().start();
    let mut s = raw_connect(broker.addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // "GET " read as a length is ~542 MB: over max_frame.
    expect_error_then_close(&mut s, Code::FRAME_TOO_LARGE);
    broker.assert_serving();
}

#[test]
fn oversized_length_is_refused_before_the_body_arrives() {
    let broker = test_broker().limits("max_frame = \"1KiB\"").start();
    let mut s = raw_connect(broker.addr);
    s.write_all(&2048u32.to_le_bytes()).unwrap(); // no body follows
    let message = expect_error_then_close(&mut s, Code::FRAME_TOO_LARGE);
    assert!(message.contains("2048"), "{message}");
    broker.assert_serving();
}

#[test]
fn truncated_login_then_silence_hits_the_login_timeout() {
    let broker = test_broker().limits("login_timeout = \"500ms\"").start();
    let mut s = raw_connect(broker.addr);
    let login = frame(&ClientMsg::Login {
        token: &broker.token("slow"),
        device_id: "d",
        last_seq: 0,
    });
    s.write_all(&login[..login.len() / 2]).unwrap();
    expect_error_then_close(&mut s, Code::LOGIN_TIMEOUT);
    broker.assert_serving();
}

#[test]
fn a_silent_raw_connection_hits_the_login_timeout() {
    let broker = test_broker().limits("login_timeout = \"300ms\"").start();
    let mut s = raw_connect(broker.addr);
    expect_error_then_close(&mut s, Code::LOGIN_TIMEOUT);
}

#[test]
fn truncated_frame_after_login_then_silence_hits_the_idle_timeout() {
    let broker = test_broker().limits("idle_timeout = \"1s\"").start();
    let mut s = raw_login(&broker, &user_on_shard("trunc", 1, 2));
    let send = frame(&ClientMsg::Send {
        client_msg_id: 1,
        to_user: "nobody",
        body: b"cut short",
    });
    s.write_all(&send[..send.len() - 3]).unwrap();
    let payload = read_frame(&mut s).expect("GoAway");
    match protocol::decode_server(&payload) {
        Ok(protocol::ServerMsg::GoAway { code, .. }) => assert_eq!(code, Code::IDLE_TIMEOUT),
        other => panic!("expected GoAway(IDLE_TIMEOUT), got {other:?}"),
    }
    assert!(read_frame(&mut s).is_none(), "closed after GoAway");
    broker.assert_serving();
}

#[test]
fn unknown_frame_type_is_unknown_frame_before_and_after_login() {
    let broker = test_broker().start();
    let mut unknown = Vec::new();
    protocol::encode_raw_union(200, &mut unknown);
    let mut s = raw_connect(broker.addr);
    s.write_all(&unknown).unwrap();
    expect_error_then_close(&mut s, Code::UNKNOWN_FRAME);

    let mut s = raw_login(&broker, &user_on_shard("u", 0, 2));
    s.write_all(&unknown).unwrap();
    expect_error_then_close(&mut s, Code::UNKNOWN_FRAME);
    broker.assert_serving();
}

#[test]
fn send_before_login_is_not_logged_in() {
    let broker = test_broker().start();
    let mut s = raw_connect(broker.addr);
    s.write_all(&frame(&ClientMsg::Send {
        client_msg_id: 1,
        to_user: "bob",
        body: b"sneaky",
    }))
    .unwrap();
    expect_error_then_close(&mut s, Code::NOT_LOGGED_IN);
    broker.assert_serving();
}

fn expect_login_refused(broker: &TestBroker, token: String, code: Code) {
    run(async {
        let mut opts = broker.opts("x", "d");
        opts.token = token;
        match Client::connect(&opts, 0).await {
            Err(ClientError::Rejected { code: got, message }) => {
                assert_eq!(got, code, "{message}");
            }
            Err(e) => panic!("expected {code:?}, got {e}"),
            Ok(_) => panic!("login with a bad token succeeded"),
        }
    });
}

#[test]
fn forged_expired_and_wrong_algorithm_tokens_are_refused() {
    let broker = test_broker().start();
    let forged =
        ringpost::auth::mint(b"not-the-secret", "mallory", Duration::from_secs(60)).unwrap();
    expect_login_refused(&broker, forged, Code::AUTH_FAILED);

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let expired = ringpost::auth::mint_with_exp(SECRET.as_bytes(), "late", now - 3600).unwrap();
    expect_login_refused(&broker, expired, Code::TOKEN_EXPIRED);

    #[derive(serde::Serialize)]
    struct Claims {
        sub: String,
        exp: i64,
    }
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &Claims {
            sub: "alg".into(),
            exp: now + 600,
        },
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    expect_login_refused(&broker, hs512, Code::AUTH_FAILED);
    expect_login_refused(&broker, "not.a.jwt".into(), Code::AUTH_FAILED);
    broker.assert_serving();
}

#[test]
fn a_bad_frame_closes_only_that_connection() {
    let broker = test_broker().start();
    let (a, b) = (user_on_shard("a", 0, 2), user_on_shard("b", 1, 2));
    let mut bad = raw_login(&broker, &b);
    run(async {
        let mut other_device = broker.connect(&b, "good").await;
        let mut sender = broker.connect(&a, "d").await;
        let mut garbage = 5u32.to_le_bytes().to_vec();
        garbage.extend_from_slice(b"\x01\x02\x03\x04\x05");
        bad.write_all(&garbage).unwrap();
        expect_error_then_close(&mut bad, Code::MALFORMED_FRAME);
        sender.send(1, &b, b"still delivered").await.unwrap();
        expect_ack(&mut sender, 1, Code::OK).await;
        assert_eq!(
            expect_deliver(&mut other_device).await.body,
            b"still delivered"
        );
    });
}

#[test]
fn sends_past_the_rate_limit_are_refused_and_a_flood_is_cut_off() {
    let broker = test_broker().limits("sends_per_sec = 5").start();
    run(async {
        let (a, b) = (user_on_shard("a", 0, 2), user_on_shard("b", 1, 2));
        let mut c = broker.connect(&a, "d").await;
        // One write, so the burst cannot straddle a refill of the bucket on a slow machine.
        let mut burst = Vec::new();
        for i in 1..=8u64 {
            burst.extend(frame(&ClientMsg::Send {
                client_msg_id: i,
                to_user: &b,
                body: b"x",
            }));
        }
        c.send_raw(&burst).await.unwrap();
        let mut statuses = std::collections::BTreeMap::new();
        for _ in 1..=8 {
            match expect_event(&mut c).await {
                Event::SendAck {
                    client_msg_id,
                    status,
                    ..
                } => {
                    statuses.insert(client_msg_id, status);
                }
                other => panic!("expected SendAck, got {other:?}"),
            }
        }
        let ok = statuses.values().filter(|s| **s == Code::OK).count();
        let limited = statuses
            .values()
            .filter(|s| **s == Code::RATE_LIMITED)
            .count();
        assert_eq!((ok, limited), (5, 3), "{statuses:?}");
        assert!(statuses[&8] == Code::RATE_LIMITED && statuses[&1] == Code::OK);

        // A flood far past the rate ends the connection.
        let mut flood = broker.connect(&user_on_shard("flood", 1, 2), "d").await;
        for i in 1..=30u64 {
            if flood.send(i, &b, b"x").await.is_err() {
                break;
            }
        }
        loop {
            match next_event(&mut flood).await {
                Ok(Event::SendAck { .. }) => {}
                Ok(Event::GoAway { code, .. }) => {
                    assert_eq!(code, Code::RATE_LIMITED);
                    break;
                }
                other => panic!("expected SendAcks then GoAway(RATE_LIMITED), got {other:?}"),
            }
        }
    });
    broker.assert_serving();
}

//! Bad input the other scenario files do not reach: every kind of bad token seen on the raw wire
//! (an Error frame, then the close), zero-length frames, a second Login, a server-only frame
//! sent by a client, oversized frames after login and at the max_frame boundary, invalid
//! recipients, and the device over the limit. Each ends by proving the broker still serves.

use std::io::Write;
use std::net::TcpStream;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ringpost::client::Event;
use ringpost::protocol::{self, ClientMsg, Code, Deliver, ServerMsg};
use ringpost_harness::*;

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Opens a raw socket and writes one Login frame with `token`.
fn raw_login_with(broker: &TestBroker, token: &str, device_id: &str) -> TcpStream {
    let mut s = raw_connect(broker.addr);
    s.write_all(&frame(&ClientMsg::Login {
        token,
        device_id,
        last_seq: 0,
    }))
    .expect("write login");
    s
}

fn hs_token(alg: jsonwebtoken::Algorithm, claims: &Claims, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("encode token")
}

/// Claims with optional fields, so tokens can lack `sub` or `exp`.
#[derive(serde::Serialize)]
struct Claims {
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<i64>,
}

/// An unsigned JWT (`alg: none`), the classic downgrade attempt.
fn alg_none_token(sub: &str, exp: i64) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"{sub}","exp":{exp}}}"#));
    format!("{header}.{claims}.")
}

#[test]
fn every_bad_token_gets_its_error_frame_then_a_close() {
    use jsonwebtoken::Algorithm;

    let broker = test_broker().start();
    let now = now_unix();
    let good_claims = Claims {
        sub: Some("mallory".into()),
        exp: Some(now + 600),
    };
    let cases: Vec<(&str, String, Code)> = vec![
        (
            "signed with another secret",
            hs_token(Algorithm::HS256, &good_claims, b"not-the-secret"),
            Code::AUTH_FAILED,
        ),
        (
            "expired an hour ago",
            ringpost::auth::mint_with_exp(SECRET.as_bytes(), "late", now - 3600).unwrap(),
            Code::TOKEN_EXPIRED,
        ),
        (
            "HS512 with the right secret",
            hs_token(Algorithm::HS512, &good_claims, SECRET.as_bytes()),
            Code::AUTH_FAILED,
        ),
        (
            "HS384 with the right secret",
            hs_token(Algorithm::HS384, &good_claims, SECRET.as_bytes()),
            Code::AUTH_FAILED,
        ),
        (
            "alg none, unsigned",
            alg_none_token("mallory", now + 600),
            Code::AUTH_FAILED,
        ),
        (
            "no exp claim",
            hs_token(
                Algorithm::HS256,
                &Claims {
                    sub: Some("mallory".into()),
                    exp: None,
                },
                SECRET.as_bytes(),
            ),
            Code::AUTH_FAILED,
        ),
        (
            "no sub claim",
            hs_token(
                Algorithm::HS256,
                &Claims {
                    sub: None,
                    exp: Some(now + 600),
                },
                SECRET.as_bytes(),
            ),
            Code::AUTH_FAILED,
        ),
        (
            "a tampered payload under a valid signature",
            {
                let t = broker.token("alice");
                let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
                parts[1] =
                    URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"admin","exp":{}}}"#, now + 600));
                parts.join(".")
            },
            Code::AUTH_FAILED,
        ),
        ("an empty token", String::new(), Code::AUTH_FAILED),
        ("not a JWT at all", "hello".into(), Code::AUTH_FAILED),
    ];
    for (what, token, code) in cases {
        let mut s = raw_login_with(&broker, &token, "d");
        let payload = read_frame(&mut s)
            .unwrap_or_else(|| panic!("{what}: expected Error({code:?}), got EOF"));
        match protocol::decode_server(&payload) {
            Ok(ServerMsg::Error { code: got, message }) => {
                assert_eq!(got, code, "{what}: Error code (message: {message})");
                assert!(!message.is_empty(), "{what}: Error must carry a message");
            }
            other => panic!("{what}: expected Error({code:?}), got {other:?}"),
        }
        assert!(
            read_frame(&mut s).is_none(),
            "{what}: the connection is closed after the Error"
        );
    }
    broker.assert_serving();
}

#[test]
fn zero_length_frames_are_malformed_before_and_after_login() {
    let broker = test_broker().start();
    let mut s = raw_connect(broker.addr);
    s.write_all(&0u32.to_le_bytes()).unwrap();
    expect_error_then_close(&mut s, Code::MALFORMED_FRAME);

    let mut s = raw_login(&broker, &user_on_shard("zero", 1, 2));
    s.write_all(&0u32.to_le_bytes()).unwrap();
    expect_error_then_close(&mut s, Code::MALFORMED_FRAME);
    broker.assert_serving();
}

#[test]
fn a_second_login_on_a_logged_in_connection_is_already_logged_in() {
    let broker = test_broker().start();
    let user = user_on_shard("twice", 1, 2);
    let mut s = raw_login(&broker, &user);
    s.write_all(&frame(&ClientMsg::Login {
        token: &broker.token(&user),
        device_id: "raw",
        last_seq: 0,
    }))
    .unwrap();
    expect_error_then_close(&mut s, Code::ALREADY_LOGGED_IN);
    broker.assert_serving();
}

#[test]
fn a_server_frame_sent_by_a_logged_in_client_is_unexpected_frame() {
    let broker = test_broker().start();
    for (what, msg) in [
        ("Pong", ServerMsg::Pong { nonce: 7 }),
        (
            "Deliver",
            ServerMsg::Deliver(Deliver::message(1, "forged", 1, 0, b"spoof")),
        ),
        (
            "SendAck",
            ServerMsg::SendAck {
                client_msg_id: 1,
                status: Code::OK,
                own_seq: 0,
            },
        ),
    ] {
        let mut s = raw_login(&broker, &user_on_shard(&format!("echo{what}"), 0, 2));
        let mut bytes = Vec::new();
        protocol::encode_server(&msg, &mut bytes);
        s.write_all(&bytes).unwrap();
        let payload = read_frame(&mut s)
            .unwrap_or_else(|| panic!("{what}: expected Error(UNEXPECTED_FRAME), got EOF"));
        match protocol::decode_server(&payload) {
            Ok(ServerMsg::Error { code, message }) => {
                assert_eq!(code, Code::UNEXPECTED_FRAME, "{what}: {message}")
            }
            other => panic!("{what}: expected Error(UNEXPECTED_FRAME), got {other:?}"),
        }
        assert!(
            read_frame(&mut s).is_none(),
            "{what}: closed after the Error"
        );
    }
    broker.assert_serving();
}

#[test]
fn an_oversized_frame_after_login_closes_only_that_device() {
    let broker = test_broker().limits("max_frame = \"1KiB\"").start();
    let (a, b) = (user_on_shard("a", 0, 2), user_on_shard("b", 1, 2));
    let mut bad = raw_login(&broker, &b);
    run(async {
        let mut good = broker.connect(&b, "good").await;
        let mut sender = broker.connect(&a, "d").await;
        // Only the prefix: the broker must answer from the length alone.
        bad.write_all(&(1024u32 * 1024).to_le_bytes()).unwrap();
        let message = expect_error_then_close(&mut bad, Code::FRAME_TOO_LARGE);
        assert!(
            message.contains("1048576"),
            "the message names the size: {message}"
        );
        sender.send(1, &b, b"for the good device").await.unwrap();
        expect_ack(&mut sender, 1, Code::OK).await;
        let d = expect_deliver(&mut good).await;
        assert_eq!((d.seq, d.body.as_slice()), (1, &b"for the good device"[..]));
    });
}

#[test]
fn the_largest_frame_under_max_frame_is_delivered_and_one_over_is_refused() {
    const MAX: usize = 2048;
    let broker = test_broker().limits("max_frame = \"2KiB\"").start();
    let (a, b) = (user_on_shard("big-a", 0, 2), user_on_shard("big-b", 1, 2));
    let encoded = |body: &[u8]| {
        frame(&ClientMsg::Send {
            client_msg_id: 1,
            to_user: &b,
            body,
        })
    };
    // The largest body whose frame payload fits, and the smallest whose payload does not.
    let fits = (0..MAX)
        .rev()
        .find(|n| encoded(&vec![7u8; *n]).len() - protocol::LEN_PREFIX <= MAX)
        .unwrap();
    let too_big = (fits + 1..=MAX)
        .find(|n| encoded(&vec![7u8; *n]).len() - protocol::LEN_PREFIX > MAX)
        .unwrap();
    assert!(encoded(&vec![7u8; fits]).len() - protocol::LEN_PREFIX > MAX - 16);
    run(async {
        let mut ca = broker.connect(&a, "d").await;
        let mut cb = broker.connect(&b, "d").await;
        let body: Vec<u8> = (0..fits).map(|i| (i % 251) as u8).collect();
        ca.send(1, &b, &body).await.unwrap();
        expect_ack(&mut ca, 1, Code::OK).await;
        let d = expect_deliver(&mut cb).await;
        assert_eq!(d.body, body, "a max-size body crosses shards intact");

        ca.send(2, &b, &vec![7u8; too_big]).await.unwrap();
        match next_event(&mut ca).await {
            Ok(Event::Error { code, message }) => {
                assert_eq!(code, Code::FRAME_TOO_LARGE, "{message}")
            }
            other => panic!("expected Error(FRAME_TOO_LARGE), got {other:?}"),
        }
        assert!(next_event(&mut ca).await.is_err(), "closed after the Error");
    });
    broker.assert_serving();
}

#[test]
fn sends_to_an_invalid_recipient_are_refused_and_the_connection_stays() {
    let broker = test_broker().start();
    run(async {
        let mut c = broker.connect(&user_on_shard("picky", 1, 2), "d").await;
        c.send(1, "", b"to nobody").await.unwrap();
        expect_ack(&mut c, 1, Code::INVALID_RECIPIENT).await;
        c.send(2, &"x".repeat(129), b"too long a name")
            .await
            .unwrap();
        expect_ack(&mut c, 2, Code::INVALID_RECIPIENT).await;
        // 128 bytes is the longest valid user ID: accepted (the user is offline).
        let longest = "y".repeat(128);
        c.send(3, &longest, b"fits").await.unwrap();
        expect_ack(&mut c, 3, Code::OK).await;
        c.ping(4).await.unwrap();
        assert_eq!(expect_event(&mut c).await, Event::Pong { nonce: 4 });
        let mut rcpt = broker.connect(&longest, "d").await;
        let d = expect_deliver(&mut rcpt).await;
        assert_eq!((d.seq, d.body.as_slice()), (1, &b"fits"[..]));
    });
}

#[test]
fn the_device_over_the_limit_gets_an_error_frame_then_a_close() {
    let broker = test_broker().limits("max_devices = 3").start();
    let (a, u) = (user_on_shard("a", 0, 2), user_on_shard("crowded", 1, 2));
    run(async {
        let mut devices = Vec::new();
        for dev in ["d1", "d2", "d3"] {
            devices.push(broker.connect(&u, dev).await);
        }
        let mut fourth = raw_login_with(&broker, &broker.token(&u), "d4");
        let message = expect_error_then_close(&mut fourth, Code::TOO_MANY_DEVICES);
        assert!(
            message.contains('3'),
            "the message names the limit: {message}"
        );
        // The refused login did not disturb the three that are in.
        let mut sender = broker.connect(&a, "d").await;
        sender.send(1, &u, b"all three").await.unwrap();
        expect_ack(&mut sender, 1, Code::OK).await;
        for dev in &mut devices {
            let d = expect_deliver(dev).await;
            assert_eq!((d.seq, d.body.as_slice()), (1, &b"all three"[..]));
        }
    });
}

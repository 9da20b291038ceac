//! The WebSocket transport, black-box over real sockets: the upgrade and its origin policy,
//! bad upgrade requests, WebSocket-level refusals (text, oversize, unknown frames, protocol
//! errors) with their close codes, hand-off with frames pipelined behind the upgrade, parking,
//! WebSocket pings, conversations and offline replay across TCP and WebSocket, and GoAway at
//! shutdown.
//!
//! Raw clients are tungstenite's synchronous client over a std `TcpStream` (it masks, answers
//! pings and closes like a browser); the rest use `ringpost::client` over WebSocket.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ringpost::client::{ClientError, Event};
use ringpost::protocol::{self, ClientMsg, Code, Deliver, NoHead, ServerMsg};
use ringpost_harness::*;
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::{Bytes, Message, WebSocket};

type Ws = WebSocket<Retry>;

/// A std socket whose reads and writes resume after EINTR (test threads see signals when
/// glommio executors run in the same process).
struct Retry(TcpStream);

impl Read for Retry {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }
}

impl Write for Retry {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            match self.0.write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// A client frame as one binary message's payload: the FlatBuffers Frame, no prefix.
fn payload(msg: &ClientMsg<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    protocol::encode_client_with(msg, &NoHead, &mut out);
    out
}

fn login_msg(token: &str) -> Vec<u8> {
    payload(&ClientMsg::Login {
        token,
        device_id: "ws",
        last_seq: 0,
    })
}

/// Upgrades with tungstenite (sending `Origin: origin` if given).
fn ws_upgrade(broker: &TestBroker, origin: Option<&str>) -> Result<Ws, tungstenite::Error> {
    let mut request = format!("ws://{}/ws", broker.ws())
        .into_client_request()
        .unwrap();
    if let Some(o) = origin {
        request.headers_mut().insert("Origin", o.parse().unwrap());
    }
    let stream = TcpStream::connect(broker.ws()).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    match tungstenite::client(request, Retry(stream)) {
        Ok((ws, _)) => Ok(ws),
        Err(HandshakeError::Failure(e)) => Err(e),
        Err(HandshakeError::Interrupted(_)) => panic!("blocking handshake interrupted"),
    }
}

/// What the broker sent next on a raw WebSocket.
#[derive(Debug)]
enum Got {
    /// A binary message (one server Frame).
    Frame(Vec<u8>),
    /// A Close frame with its code.
    Close(Option<u16>),
    Pong(Vec<u8>),
    Text(#[allow(dead_code)] String),
    /// The connection ended (after the close handshake, or a reset).
    End,
}

fn next(ws: &mut Ws) -> Got {
    match ws.read() {
        Ok(Message::Binary(b)) => Got::Frame(b.to_vec()),
        Ok(Message::Close(c)) => Got::Close(c.map(|c| c.code.into())),
        Ok(Message::Pong(p)) => Got::Pong(p.to_vec()),
        Ok(Message::Text(t)) => Got::Text(t.to_string()),
        Ok(other) => panic!("unexpected message {other:?}"),
        Err(tungstenite::Error::ConnectionClosed) | Err(tungstenite::Error::AlreadyClosed) => {
            Got::End
        }
        Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            Got::End
        }
        Err(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        )) => Got::End,
        Err(e) => panic!("reading the websocket: {e}"),
    }
}

fn send(ws: &mut Ws, bytes: Vec<u8>) {
    ws.send(Message::Binary(Bytes::from(bytes))).unwrap();
}

/// Logs in on a fresh raw WebSocket and returns it after LoginOk (and the shard it names).
fn ws_login(broker: &TestBroker, user: &str) -> (Ws, u16) {
    let mut ws = ws_upgrade(broker, None).expect("upgrade");
    send(&mut ws, login_msg(&broker.token(user)));
    match next(&mut ws) {
        Got::Frame(p) => match protocol::decode_server(&p) {
            Ok(ServerMsg::LoginOk { shard, .. }) => (ws, shard),
            other => panic!("expected LoginOk, got {other:?}"),
        },
        other => panic!("expected LoginOk, got {other:?}"),
    }
}

/// Expects an Error frame with `code`, then a Close with `close`, then the end.
fn expect_error_and_close(ws: &mut Ws, code: Code, close: u16) {
    match next(ws) {
        Got::Frame(p) => match protocol::decode_server(&p) {
            Ok(ServerMsg::Error { code: got, message }) => {
                assert_eq!(got, code, "Error code (message: {message})");
                assert!(!message.is_empty());
            }
            Ok(ServerMsg::GoAway { code: got, reason }) => {
                assert_eq!(got, code, "GoAway code (reason: {reason})")
            }
            other => panic!("expected Error({code:?}), got {other:?}"),
        },
        other => panic!("expected Error({code:?}), got {other:?}"),
    }
    match next(ws) {
        Got::Close(c) => assert_eq!(c, Some(close), "close code after {code:?}"),
        other => panic!("expected Close({close}), got {other:?}"),
    }
    assert!(matches!(next(ws), Got::End), "the connection ends");
}

/// Writes `bytes` on a raw TCP connection to the WebSocket port and reads until EOF; returns
/// the HTTP answer and how long the broker took to close.
fn raw_http(broker: &TestBroker, bytes: &[u8]) -> (String, Duration) {
    let mut s = TcpStream::connect(broker.ws()).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let t0 = Instant::now();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (String::from_utf8_lossy(&out).into_owned(), t0.elapsed())
}

fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

#[test]
fn upgrades_with_an_allowed_or_no_origin_and_refuses_others_with_403() {
    let broker = test_broker().start();
    let loopback = format!("http://localhost:{}", broker.ws().port());
    for origin in [Some(loopback.as_str()), Some("http://127.0.0.1:3000"), None] {
        let mut ws = ws_upgrade(&broker, origin).unwrap_or_else(|e| panic!("{origin:?}: {e}"));
        send(&mut ws, login_msg(&broker.token("alice")));
        let Got::Frame(p) = next(&mut ws) else {
            panic!("{origin:?}: no LoginOk")
        };
        assert!(matches!(
            protocol::decode_server(&p),
            Ok(ServerMsg::LoginOk { .. })
        ));
    }
    for origin in [
        "http://evil.example",
        "null",
        "http://localhost.evil.example",
    ] {
        match ws_upgrade(&broker, Some(origin)) {
            Err(tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 403, "{origin}")
            }
            Ok(_) => panic!("{origin} was allowed"),
            Err(e) => panic!("{origin}: expected HTTP 403, got {e}"),
        }
    }
    broker.assert_serving();

    let open = test_broker().server("ws_allowed_origins = [\"*\"]").start();
    if let Err(e) = ws_upgrade(&open, Some("http://evil.example")) {
        panic!("\"*\" refused an origin: {e}");
    }
    let listed = test_broker()
        .server("ws_allowed_origins = [\"https://chat.example.com\"]")
        .start();
    if let Err(e) = ws_upgrade(&listed, Some("https://chat.example.com")) {
        panic!("a listed origin was refused: {e}");
    }
    assert!(matches!(
        ws_upgrade(&listed, Some(&loopback)),
        Err(tungstenite::Error::Http(r)) if r.status() == 403
    ));
}

#[test]
fn bad_upgrade_requests_are_answered_and_closed_and_the_broker_keeps_serving() {
    let broker = test_broker().limits("login_timeout = \"1s\"").start();
    let limit = Duration::from_secs(1) + Duration::from_millis(700);
    let post = upgrade_request("/ws", "").replacen("GET", "POST", 1);
    let no_key =
        upgrade_request("/ws", "").replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
    let no_version = upgrade_request("/ws", "").replace("Sec-WebSocket-Version: 13\r\n", "");
    let cases: [(&str, Vec<u8>, &str); 6] = [
        ("not GET", post.into_bytes(), "HTTP/1.1 405"),
        ("no key", no_key.into_bytes(), "HTTP/1.1 400"),
        ("no version", no_version.into_bytes(), "HTTP/1.1 426"),
        (
            "wrong path",
            upgrade_request("/chat", "").into_bytes(),
            "HTTP/1.1 404",
        ),
        (
            "garbage",
            vec![0x16, 0x03, 0x01, 0xff, 0x00, 0x42, 0x13, 0x37],
            "HTTP/1.1 400",
        ),
        (
            "head too long",
            {
                let mut r = b"GET /ws HTTP/1.1\r\nX: ".to_vec();
                r.extend(std::iter::repeat_n(b'a', 9000));
                r
            },
            "HTTP/1.1 431",
        ),
    ];
    for (what, bytes, status) in cases {
        let (answer, took) = raw_http(&broker, &bytes);
        assert!(answer.starts_with(status), "{what}: {answer:?}");
        assert!(took < limit, "{what}: closed after {took:?}");
    }
    // A request that never completes (slowloris): 408 at login_timeout, not later.
    let mut s = TcpStream::connect(broker.ws()).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let t0 = Instant::now();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    let mut answer = Vec::new();
    loop {
        let _ = s.write_all(b"X");
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => break,
        }
        assert!(
            t0.elapsed() < limit,
            "slowloris still open after {:?}",
            t0.elapsed()
        );
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "closed early: {:?}",
        t0.elapsed()
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    // Upgraded but no Login: Error(LOGIN_TIMEOUT), Close 1008, within login_timeout.
    let mut ws = ws_upgrade(&broker, None).unwrap();
    let t0 = Instant::now();
    expect_error_and_close(&mut ws, Code::LOGIN_TIMEOUT, 1008);
    assert!(t0.elapsed() < limit);
    broker.assert_serving();
}

#[test]
fn the_chat_page_is_served_on_get_slash_and_nothing_else_is() {
    let broker = test_broker().start();
    let (page, _) = raw_http(&broker, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page:?}");
    assert!(page.contains("Content-Type: text/html"), "{page:?}");
    assert!(page.contains("ringpost"), "{page:?}");
    let (missing, _) = raw_http(&broker, b"GET /secret HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing:?}");
}

#[test]
fn websocket_can_be_turned_off() {
    let broker = test_broker().server("ws_listen = \"\"").start();
    assert_eq!(broker.ws_addr, None);
    broker.assert_serving();
}

#[test]
fn text_oversize_unknown_and_bad_frames_get_the_tcp_codes_and_matching_close_codes() {
    let broker = test_broker().limits("max_frame = \"1KiB\"").start();
    // A text message, before and after Login.
    let mut ws = ws_upgrade(&broker, None).unwrap();
    ws.send(Message::Text("{\"login\": true}".into())).unwrap();
    expect_error_and_close(&mut ws, Code::MALFORMED_FRAME, 1003);
    let (mut ws, _) = ws_login(&broker, "texter");
    ws.send(Message::Text("hello".into())).unwrap();
    expect_error_and_close(&mut ws, Code::MALFORMED_FRAME, 1003);
    // One message over max_frame, and fragments adding up past it.
    let (mut ws, _) = ws_login(&broker, "big");
    send(&mut ws, vec![0u8; 2000]);
    expect_error_and_close(&mut ws, Code::FRAME_TOO_LARGE, 1009);
    let (mut ws, _) = ws_login(&broker, "fragments");
    for i in 0..3 {
        let frame = Frame::message(
            Bytes::from(vec![0u8; 600]),
            OpCode::Data(if i == 0 { Data::Binary } else { Data::Continue }),
            false,
        );
        if ws.send(Message::Frame(frame)).is_err() {
            break;
        }
    }
    expect_error_and_close(&mut ws, Code::FRAME_TOO_LARGE, 1009);
    // A Frame whose union tag this broker does not know; bytes that are not a Frame.
    let (mut ws, _) = ws_login(&broker, "unknown");
    let mut raw = Vec::new();
    protocol::encode_raw_union(200, &mut raw);
    send(&mut ws, raw[protocol::LEN_PREFIX..].to_vec());
    expect_error_and_close(&mut ws, Code::UNKNOWN_FRAME, 1008);
    let (mut ws, _) = ws_login(&broker, "garbage");
    send(&mut ws, vec![0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4]);
    expect_error_and_close(&mut ws, Code::MALFORMED_FRAME, 1008);
    // The first message is not a Login; a bad token.
    let mut ws = ws_upgrade(&broker, None).unwrap();
    send(&mut ws, payload(&ClientMsg::Ping { nonce: 1 }));
    expect_error_and_close(&mut ws, Code::NOT_LOGGED_IN, 1008);
    let mut ws = ws_upgrade(&broker, None).unwrap();
    send(&mut ws, login_msg("not-a-token"));
    expect_error_and_close(&mut ws, Code::AUTH_FAILED, 1008);
    broker.assert_serving();
}

#[test]
fn an_unmasked_client_frame_is_a_protocol_error() {
    let broker = test_broker().start();
    let mut s = TcpStream::connect(broker.ws()).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(upgrade_request("/ws", "").as_bytes()).unwrap();
    let head = read_http_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut unmasked = Vec::new();
    Frame::message(
        Bytes::from(login_msg(&broker.token("u"))),
        OpCode::Data(Data::Binary),
        true,
    )
    .format(&mut unmasked)
    .unwrap();
    s.write_all(&unmasked).unwrap();
    let mut ws = WebSocket::from_raw_socket(Retry(s), tungstenite::protocol::Role::Client, None);
    expect_error_and_close(&mut ws, Code::MALFORMED_FRAME, 1002);
}

/// Reads an HTTP response head byte by byte (nothing after it).
fn read_http_head(s: &mut TcpStream) -> String {
    let mut s = Retry(s.try_clone().unwrap());
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "EOF in the response head");
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

/// A masked binary message, as a browser would send it.
fn masked(payload: Vec<u8>) -> Vec<u8> {
    masked_frame(payload, OpCode::Data(Data::Binary), true)
}

/// One masked frame.
fn masked_frame(payload: Vec<u8>, opcode: OpCode, fin: bool) -> Vec<u8> {
    let mut frame = Frame::message(Bytes::from(payload), opcode, fin);
    frame.header_mut().mask = Some(rand::random());
    let mut out = Vec::new();
    frame.format(&mut out).unwrap();
    out
}

#[test]
fn frames_pipelined_behind_the_upgrade_travel_with_the_handoff() {
    const SHARDS: usize = 4;
    let broker = test_broker().shards(SHARDS).start();
    run(async {
        for shard in 0..SHARDS {
            for (i, one_write) in [true, false].into_iter().enumerate() {
                let sender = user_on_shard(&format!("pipe{i}"), shard, SHARDS);
                let to = user_on_shard(&format!("dest{i}"), (shard + 1) % SHARDS, SHARDS);
                let mut reader = broker.connect(&to, "d").await;
                let mut s = TcpStream::connect(broker.ws()).unwrap();
                s.set_read_timeout(Some(WAIT)).unwrap();
                let mut frames = masked(login_msg(&broker.token(&sender)));
                frames.extend(masked(payload(&ClientMsg::Send {
                    client_msg_id: 7,
                    to_user: &to,
                    body: b"right behind the login",
                })));
                frames.extend(masked(payload(&ClientMsg::Ping { nonce: 9 })));
                let request = upgrade_request("/ws", "");
                if one_write {
                    // Request, Login, Send and Ping in one TCP write, before the 101.
                    let mut all = request.into_bytes();
                    all.extend_from_slice(&frames);
                    s.write_all(&all).unwrap();
                    assert!(read_http_head(&mut s).starts_with("HTTP/1.1 101"));
                } else {
                    s.write_all(request.as_bytes()).unwrap();
                    assert!(read_http_head(&mut s).starts_with("HTTP/1.1 101"));
                    s.write_all(&frames).unwrap();
                }
                let mut ws =
                    WebSocket::from_raw_socket(Retry(s), tungstenite::protocol::Role::Client, None);
                let mut got = Vec::new();
                for _ in 0..3 {
                    let Got::Frame(p) = next(&mut ws) else {
                        panic!("expected three frames")
                    };
                    got.push(match protocol::decode_server(&p).unwrap() {
                        ServerMsg::LoginOk { shard, .. } => format!("LoginOk@{shard}"),
                        ServerMsg::SendAck {
                            client_msg_id,
                            status,
                            ..
                        } => format!("SendAck {client_msg_id} {status:?}"),
                        ServerMsg::Pong { nonce } => format!("Pong {nonce}"),
                        other => format!("{other:?}"),
                    });
                }
                assert_eq!(got[0], format!("LoginOk@{shard}"), "served by the owner");
                // The Pong is immediate, the SendAck waits for the group commit.
                got[1..].sort();
                assert_eq!(
                    got[1..],
                    ["Pong 9".to_string(), format!("SendAck 7 {:?}", Code::OK)]
                );
                let d = expect_deliver(&mut reader).await;
                assert_eq!(
                    (d.from_user.as_str(), d.body.as_slice()),
                    (sender.as_str(), &b"right behind the login"[..])
                );
            }
        }
    });
    broker.assert_serving();
}

/// Distinct fds watched by the broker's epoll sets: the parked connections (see
/// parking_scenario.rs).
fn parked(pid: i32) -> usize {
    let mut watched = BTreeSet::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    for fd in fds.flatten() {
        let is_epoll = std::fs::read_link(fd.path())
            .map(|l| l.to_string_lossy().contains("eventpoll"))
            .unwrap_or(false);
        if !is_epoll {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        for line in info.lines() {
            if let Some(n) = line
                .strip_prefix("tfd:")
                .and_then(|r| r.split_whitespace().next())
            {
                watched.insert(n.to_string());
            }
        }
    }
    watched.len()
}

fn wait_parked(broker: &TestBroker, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while parked(broker.pid()) != n {
        assert!(
            Instant::now() < deadline,
            "expected {n} parked connections, see {}",
            parked(broker.pid())
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn idle_websocket_connections_park_and_wake_with_their_websocket_state() {
    let broker = test_broker().server("park_after = \"100ms\"").start();
    let (a, b) = (user_on_shard("pa", 0, 2), user_on_shard("pb", 1, 2));
    let (mut wa, _) = ws_login(&broker, &a);
    let (mut wb, _) = ws_login(&broker, &b);
    wait_parked(&broker, 2);
    // A parked WebSocket receiver receives; a parked sender sends.
    send(
        &mut wa,
        payload(&ClientMsg::Send {
            client_msg_id: 1,
            to_user: &b,
            body: b"to a parked websocket",
        }),
    );
    let ack = |ws: &mut Ws| match next(ws) {
        Got::Frame(p) => match protocol::decode_server(&p) {
            Ok(ServerMsg::SendAck { status, .. }) => status,
            other => panic!("expected SendAck, got {other:?}"),
        },
        other => panic!("expected SendAck, got {other:?}"),
    };
    assert_eq!(ack(&mut wa), Code::OK);
    match next(&mut wb) {
        Got::Frame(p) => match protocol::decode_server(&p) {
            Ok(ServerMsg::Deliver(Deliver { body, seq, .. })) => {
                assert_eq!((seq, body), (1, &b"to a parked websocket"[..]))
            }
            other => panic!("expected Deliver, got {other:?}"),
        },
        other => panic!("expected Deliver, got {other:?}"),
    }
    // A WebSocket Ping wakes a parked connection and is answered with its payload.
    wait_parked(&broker, 2);
    wb.send(Message::Ping(Bytes::from_static(b"are you there")))
        .unwrap();
    match next(&mut wb) {
        Got::Pong(p) => assert_eq!(p, b"are you there"),
        other => panic!("expected Pong, got {other:?}"),
    }
    // A message split in two fragments with the connection parked in between: the decoder's
    // state (half a message) survives parking.
    let send = payload(&ClientMsg::Send {
        client_msg_id: 2,
        to_user: &b,
        body: b"in two halves",
    });
    let (first, second) = send.split_at(send.len() / 2);
    wa.send(Message::Frame(Frame::message(
        Bytes::copy_from_slice(first),
        OpCode::Data(Data::Binary),
        false,
    )))
    .unwrap();
    wait_parked(&broker, 2);
    wa.send(Message::Frame(Frame::message(
        Bytes::copy_from_slice(second),
        OpCode::Data(Data::Continue),
        true,
    )))
    .unwrap();
    assert_eq!(ack(&mut wa), Code::OK);
    match next(&mut wb) {
        Got::Frame(p) => assert!(matches!(
            protocol::decode_server(&p),
            Ok(ServerMsg::Deliver(Deliver {
                seq: 2,
                body: b"in two halves",
                ..
            }))
        )),
        other => panic!("expected Deliver, got {other:?}"),
    }
    // A client Close is answered with a Close, and the connection leaves.
    wait_parked(&broker, 2);
    wb.close(None).unwrap();
    assert!(matches!(next(&mut wb), Got::Close(_)));
    wait_parked(&broker, 1);
    broker.assert_serving();
}

#[test]
fn tcp_and_websocket_users_talk_both_ways() {
    let broker = test_broker().start();
    run(async {
        let (t, w) = (user_on_shard("tcp", 0, 2), user_on_shard("web", 1, 2));
        let mut tcp = broker.connect(&t, "d").await;
        let mut web = broker.connect_ws(&w, "d").await;
        for i in 1..=20u64 {
            tcp.send(i, &w, format!("t{i}").as_bytes()).await.unwrap();
            web.send(i, &t, format!("w{i}").as_bytes()).await.unwrap();
        }
        for (me, other, c) in [("t", "w", &mut tcp), ("w", "t", &mut web)] {
            let (mut acks, mut seqs) = (0, Vec::new());
            while acks < 20 || seqs.len() < 20 {
                match expect_event(c).await {
                    Event::SendAck { status, .. } => {
                        assert_eq!(status, Code::OK);
                        acks += 1;
                    }
                    Event::Deliver(d) => {
                        assert_eq!(d.body, format!("{other}{}", d.seq).into_bytes(), "{me}");
                        seqs.push(d.seq);
                    }
                    other => panic!("{me}: unexpected {other:?}"),
                }
            }
            assert_eq!(seqs, (1..=20).collect::<Vec<_>>(), "{me}: in order");
        }
        // The protocol's own Ping works over WebSocket as over TCP.
        web.ping(5).await.unwrap();
        assert!(matches!(
            expect_event(&mut web).await,
            Event::Pong { nonce: 5 }
        ));
    });
    // Both logins are timed stage by stage, the one through the WebSocket upgrade too.
    let text = broker.metrics();
    for stage in ["login_read", "handoff", "register", "total"] {
        let series = format!("ringpost_login_stage_seconds_count{{stage=\"{stage}\"}}");
        assert_eq!(metric(&text, &series), 2.0, "{series}");
    }
}

#[test]
fn offline_replay_and_multi_device_work_across_transports() {
    let broker = test_broker().start();
    run(async {
        let (a, b) = (user_on_shard("sender", 1, 2), user_on_shard("multi", 0, 2));
        let mut sender = broker.connect_ws(&a, "d").await;
        // b is offline: five messages wait in its inbox.
        for i in 1..=5u64 {
            sender
                .send(i, &b, format!("m{i}").as_bytes())
                .await
                .unwrap();
            expect_ack(&mut sender, i, Code::OK).await;
        }
        // Its phone (WebSocket) and laptop (TCP) both replay them, then both get live ones.
        let mut phone = broker.connect_ws(&b, "phone").await;
        let mut laptop = broker.connect(&b, "laptop").await;
        for i in 6..=10u64 {
            sender
                .send(i, &b, format!("m{i}").as_bytes())
                .await
                .unwrap();
            expect_ack(&mut sender, i, Code::OK).await;
        }
        for (name, dev) in [("phone", &mut phone), ("laptop", &mut laptop)] {
            for i in 1..=10u64 {
                let d = expect_deliver(dev).await;
                assert_eq!((d.seq, d.body), (i, format!("m{i}").into_bytes()), "{name}");
            }
            dev.ack(10).await.unwrap();
        }
        // The WebSocket device reconnects after seq 10 and gets only what came since, once.
        drop(phone);
        sender.send(11, &b, b"m11").await.unwrap();
        expect_ack(&mut sender, 11, Code::OK).await;
        assert_eq!(expect_deliver(&mut laptop).await.seq, 11);
        let mut phone = ringpost::client::Client::connect(&broker.ws_opts(&b, "phone"), 10)
            .await
            .unwrap();
        let d = expect_deliver(&mut phone).await;
        assert_eq!((d.seq, d.body.as_slice()), (11, &b"m11"[..]));
        phone.ping(1).await.unwrap();
        assert!(matches!(
            expect_event(&mut phone).await,
            Event::Pong { nonce: 1 }
        ));
    });
}

#[test]
fn graceful_shutdown_says_goaway_over_websocket_and_closes_with_1001() {
    let mut broker = test_broker().start();
    let (mut raw, _) = ws_login(&broker, "raw");
    run(async {
        let mut client = broker.connect_ws("lib", "d").await;
        broker.sigterm();
        match next_event(&mut client).await {
            Ok(Event::GoAway { code, .. }) => assert_eq!(code, Code::SHUTDOWN),
            other => panic!("expected GoAway, got {other:?}"),
        }
        assert!(matches!(
            next_event(&mut client).await,
            Err(ClientError::Closed) | Err(ClientError::Io(_))
        ));
    });
    expect_error_and_close(&mut raw, Code::SHUTDOWN, 1001);
    let status = broker.wait_exit(WAIT).expect("the broker exits");
    assert!(status.success());
}

/// One read that holds several messages — one of them in two frames — and a Ping: the shard
/// unmasks the whole read before it hands the messages on (as slices of the read), so every
/// body must reach the recipient on the other shard intact and in order, and the Ping be
/// answered.
#[test]
fn several_messages_and_a_ping_in_one_read_arrive_whole_and_in_order() {
    const SHARDS: usize = 2;
    let broker = test_broker().shards(SHARDS).start();
    run(async {
        let sender = user_on_shard("wsread", 0, SHARDS);
        let to = user_on_shard("wsdest", 1, SHARDS);
        let mut reader = broker.connect(&to, "d").await;
        let (mut ws, _) = ws_login(&broker, &sender);
        let send = |id: u64, body: &[u8]| {
            payload(&ClientMsg::Send {
                client_msg_id: id,
                to_user: &to,
                body,
            })
        };
        let bodies: [&[u8]; 3] = [
            b"first, whole",
            b"second, in two frames",
            b"third, after a ping",
        ];
        let mut bytes = masked(send(1, bodies[0]));
        let second = send(2, bodies[1]);
        let (a, b) = second.split_at(second.len() / 2);
        bytes.extend(masked_frame(a.to_vec(), OpCode::Data(Data::Binary), false));
        let mut ping = Frame::ping(Bytes::from_static(b"are you there"));
        ping.header_mut().mask = Some(rand::random());
        ping.format(&mut bytes).unwrap();
        bytes.extend(masked_frame(b.to_vec(), OpCode::Data(Data::Continue), true));
        bytes.extend(masked(send(3, bodies[2])));
        ws.get_mut().0.write_all(&bytes).unwrap();
        let mut acks = Vec::new();
        let mut pong = None;
        while acks.len() < 3 || pong.is_none() {
            match next(&mut ws) {
                Got::Frame(p) => match protocol::decode_server(&p).unwrap() {
                    ServerMsg::SendAck {
                        client_msg_id,
                        status,
                        ..
                    } => acks.push((client_msg_id, status)),
                    other => panic!("expected SendAcks, got {other:?}"),
                },
                Got::Pong(p) => pong = Some(p),
                other => panic!("expected SendAcks and a Pong, got {other:?}"),
            }
        }
        assert_eq!(acks, [(1, Code::OK), (2, Code::OK), (3, Code::OK)]);
        assert_eq!(pong.as_deref(), Some(&b"are you there"[..]));
        for body in bodies {
            let d = expect_deliver(&mut reader).await;
            assert_eq!(
                (d.from_user.as_str(), d.body.as_slice()),
                (sender.as_str(), body)
            );
        }
    });
    broker.assert_serving();
}

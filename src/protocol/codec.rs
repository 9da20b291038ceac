//! Check-then-parse decoding and builder-reusing encoding of frames.

use std::cell::RefCell;

use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, VerifierOptions, WIPOffset};

use super::ringpost_generated::ringpost::wire as fb;
use super::Code;

/// Bytes of the length prefix: a u32, little-endian, counting the payload only.
pub const LEN_PREFIX: usize = 4;
/// User IDs (token `sub`, `to_user`) are 1..=128 bytes of UTF-8.
pub const MAX_USER_ID: usize = 128;
/// `Login.device_id` is at most 64 bytes.
pub const MAX_DEVICE_ID: usize = 64;

/// Verifier limits. Our frames are one table deep (Frame → body → vectors), so a small depth
/// and table budget reject adversarial nesting early without limiting any valid frame.
const VERIFY_MAX_DEPTH: usize = 8;
const VERIFY_MAX_TABLES: usize = 64;

/// A frame a client sends, borrowed from the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMsg<'a> {
    Login {
        token: &'a str,
        device_id: &'a str,
        last_seq: u64,
    },
    Send {
        client_msg_id: u64,
        to_user: &'a str,
        body: &'a [u8],
    },
    Ack {
        up_to_seq: u64,
    },
    Ping {
        nonce: u64,
    },
    Logout,
}

/// A frame the server sends, borrowed from the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMsg<'a> {
    LoginOk {
        user_id: &'a str,
        shard: u16,
        head_seq: u64,
        heartbeat_ms: u32,
        oldest_seq: u64,
        gap: bool,
    },
    SendAck {
        client_msg_id: u64,
        status: Code,
    },
    Deliver {
        seq: u64,
        from_user: &'a str,
        client_msg_id: u64,
        sent_at_ms: u64,
        body: &'a [u8],
    },
    Pong {
        nonce: u64,
    },
    Error {
        code: Code,
        message: &'a str,
    },
    GoAway {
        code: Code,
        reason: &'a str,
    },
}

/// Why bytes are not a frame we accept. [`CodecError::code`] is what the client is told.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CodecError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("zero-length frame")]
    Empty,
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("unexpected frame type {0} from this side")]
    Unexpected(&'static str),
}

impl CodecError {
    pub fn code(&self) -> Code {
        match self {
            CodecError::TooLarge { .. } => Code::FRAME_TOO_LARGE,
            CodecError::Empty | CodecError::Malformed(_) => Code::MALFORMED_FRAME,
            CodecError::UnknownType(_) => Code::UNKNOWN_FRAME,
            CodecError::Unexpected(_) => Code::UNEXPECTED_FRAME,
        }
    }
}

/// Readable name of a code, e.g. "FRAME_TOO_LARGE".
pub fn code_name(code: Code) -> &'static str {
    code.variant_name().unwrap_or("UNKNOWN")
}

/// Check step: is a whole frame at the start of `buf`? `Ok(Some(n))`: it occupies `buf[..n]`
/// (prefix included). `Ok(None)`: need more bytes.
pub fn check(buf: &[u8], max_frame: usize) -> Result<Option<usize>, CodecError> {
    let Some(prefix) = buf.first_chunk::<LEN_PREFIX>() else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(*prefix) as usize;
    if len == 0 {
        return Err(CodecError::Empty);
    }
    if len > max_frame {
        return Err(CodecError::TooLarge {
            len,
            max: max_frame,
        });
    }
    let total = LEN_PREFIX + len;
    Ok((buf.len() >= total).then_some(total))
}

fn verified(payload: &[u8]) -> Result<fb::Frame<'_>, CodecError> {
    let opts = VerifierOptions {
        max_depth: VERIFY_MAX_DEPTH,
        max_tables: VERIFY_MAX_TABLES,
        ..Default::default()
    };
    fb::root_as_frame_with_opts(&opts, payload).map_err(|e| CodecError::Malformed(e.to_string()))
}

fn missing(what: &str) -> CodecError {
    CodecError::Malformed(format!("missing {what}"))
}

/// Parse step for frames from a client.
pub fn decode_client(payload: &[u8]) -> Result<ClientMsg<'_>, CodecError> {
    let frame = verified(payload)?;
    let t = frame.body_type();
    Ok(match t {
        fb::Body::Login => {
            let m = frame.body_as_login().ok_or_else(|| missing("Login body"))?;
            ClientMsg::Login {
                token: m.token(),
                device_id: m.device_id().unwrap_or(""),
                last_seq: m.last_seq(),
            }
        }
        fb::Body::Send => {
            let m = frame.body_as_send().ok_or_else(|| missing("Send body"))?;
            ClientMsg::Send {
                client_msg_id: m.client_msg_id(),
                to_user: m.to_user(),
                body: m.body().map_or(&[][..], |v| v.bytes()),
            }
        }
        fb::Body::Ack => {
            let m = frame.body_as_ack().ok_or_else(|| missing("Ack body"))?;
            ClientMsg::Ack {
                up_to_seq: m.up_to_seq(),
            }
        }
        fb::Body::Ping => {
            let m = frame.body_as_ping().ok_or_else(|| missing("Ping body"))?;
            ClientMsg::Ping { nonce: m.nonce() }
        }
        fb::Body::Logout => ClientMsg::Logout,
        fb::Body::NONE => return Err(missing("frame body")),
        other => return Err(side_error(other)),
    })
}

/// Parse step for frames from the server.
pub fn decode_server(payload: &[u8]) -> Result<ServerMsg<'_>, CodecError> {
    let frame = verified(payload)?;
    Ok(match frame.body_type() {
        fb::Body::LoginOk => {
            let m = frame
                .body_as_login_ok()
                .ok_or_else(|| missing("LoginOk body"))?;
            ServerMsg::LoginOk {
                user_id: m.user_id().unwrap_or(""),
                shard: m.shard(),
                head_seq: m.head_seq(),
                heartbeat_ms: m.heartbeat_ms(),
                oldest_seq: m.oldest_seq(),
                gap: m.gap(),
            }
        }
        fb::Body::SendAck => {
            let m = frame
                .body_as_send_ack()
                .ok_or_else(|| missing("SendAck body"))?;
            ServerMsg::SendAck {
                client_msg_id: m.client_msg_id(),
                status: m.status(),
            }
        }
        fb::Body::Deliver => {
            let m = frame
                .body_as_deliver()
                .ok_or_else(|| missing("Deliver body"))?;
            ServerMsg::Deliver {
                seq: m.seq(),
                from_user: m.from_user().unwrap_or(""),
                client_msg_id: m.client_msg_id(),
                sent_at_ms: m.sent_at_ms(),
                body: m.body().map_or(&[][..], |v| v.bytes()),
            }
        }
        fb::Body::Pong => {
            let m = frame.body_as_pong().ok_or_else(|| missing("Pong body"))?;
            ServerMsg::Pong { nonce: m.nonce() }
        }
        fb::Body::Error => {
            let m = frame.body_as_error().ok_or_else(|| missing("Error body"))?;
            ServerMsg::Error {
                code: m.code(),
                message: m.message().unwrap_or(""),
            }
        }
        fb::Body::GoAway => {
            let m = frame
                .body_as_go_away()
                .ok_or_else(|| missing("GoAway body"))?;
            ServerMsg::GoAway {
                code: m.code(),
                reason: m.reason().unwrap_or(""),
            }
        }
        fb::Body::NONE => return Err(missing("frame body")),
        other => return Err(side_error(other)),
    })
}

/// A known tag that belongs to the other direction, or an unknown one.
fn side_error(tag: fb::Body) -> CodecError {
    match tag.variant_name() {
        Some(name) => CodecError::Unexpected(name),
        None => CodecError::UnknownType(tag.0),
    }
}

thread_local! {
    /// One builder per thread, reset per frame: steady-state encoding does not allocate one.
    static BUILDER: RefCell<FlatBufferBuilder<'static>> =
        RefCell::new(FlatBufferBuilder::with_capacity(1024));
}

/// Builds a frame with the thread's builder and appends prefix + payload to `out`.
fn encode_with(
    out: &mut Vec<u8>,
    build: impl FnOnce(&mut FlatBufferBuilder<'static>) -> (fb::Body, WIPOffset<UnionWIPOffset>),
) {
    BUILDER.with(|cell| {
        let mut fbb = cell.borrow_mut();
        fbb.reset();
        let (body_type, body) = build(&mut fbb);
        let frame = fb::Frame::create(
            &mut fbb,
            &fb::FrameArgs {
                body_type,
                body: Some(body),
            },
        );
        fbb.finish(frame, None);
        let data = fbb.finished_data();
        out.reserve(LEN_PREFIX + data.len());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
    });
}

/// Appends one client frame (prefix + payload) to `out`.
pub fn encode_client(msg: &ClientMsg<'_>, out: &mut Vec<u8>) {
    encode_with(out, |fbb| match *msg {
        ClientMsg::Login {
            token,
            device_id,
            last_seq,
        } => {
            let token = fbb.create_string(token);
            let device_id = fbb.create_string(device_id);
            let args = fb::LoginArgs {
                token: Some(token),
                device_id: Some(device_id),
                last_seq,
            };
            (
                fb::Body::Login,
                fb::Login::create(fbb, &args).as_union_value(),
            )
        }
        ClientMsg::Send {
            client_msg_id,
            to_user,
            body,
        } => {
            let to_user = fbb.create_string(to_user);
            let body = fbb.create_vector(body);
            let args = fb::SendArgs {
                client_msg_id,
                to_user: Some(to_user),
                body: Some(body),
            };
            (
                fb::Body::Send,
                fb::Send::create(fbb, &args).as_union_value(),
            )
        }
        ClientMsg::Ack { up_to_seq } => (
            fb::Body::Ack,
            fb::Ack::create(fbb, &fb::AckArgs { up_to_seq }).as_union_value(),
        ),
        ClientMsg::Ping { nonce } => (
            fb::Body::Ping,
            fb::Ping::create(fbb, &fb::PingArgs { nonce }).as_union_value(),
        ),
        ClientMsg::Logout => (
            fb::Body::Logout,
            fb::Logout::create(fbb, &fb::LogoutArgs {}).as_union_value(),
        ),
    });
}

/// Appends one server frame (prefix + payload) to `out`.
pub fn encode_server(msg: &ServerMsg<'_>, out: &mut Vec<u8>) {
    encode_with(out, |fbb| match *msg {
        ServerMsg::LoginOk {
            user_id,
            shard,
            head_seq,
            heartbeat_ms,
            oldest_seq,
            gap,
        } => {
            let user_id = fbb.create_string(user_id);
            let args = fb::LoginOkArgs {
                user_id: Some(user_id),
                shard,
                head_seq,
                heartbeat_ms,
                oldest_seq,
                gap,
            };
            (
                fb::Body::LoginOk,
                fb::LoginOk::create(fbb, &args).as_union_value(),
            )
        }
        ServerMsg::SendAck {
            client_msg_id,
            status,
        } => {
            let args = fb::SendAckArgs {
                client_msg_id,
                status,
            };
            (
                fb::Body::SendAck,
                fb::SendAck::create(fbb, &args).as_union_value(),
            )
        }
        ServerMsg::Deliver {
            seq,
            from_user,
            client_msg_id,
            sent_at_ms,
            body,
        } => {
            let from_user = fbb.create_string(from_user);
            let body = fbb.create_vector(body);
            let args = fb::DeliverArgs {
                seq,
                from_user: Some(from_user),
                client_msg_id,
                sent_at_ms,
                body: Some(body),
            };
            (
                fb::Body::Deliver,
                fb::Deliver::create(fbb, &args).as_union_value(),
            )
        }
        ServerMsg::Pong { nonce } => (
            fb::Body::Pong,
            fb::Pong::create(fbb, &fb::PongArgs { nonce }).as_union_value(),
        ),
        ServerMsg::Error { code, message } => {
            let message = fbb.create_string(message);
            let args = fb::ErrorArgs {
                code,
                message: Some(message),
            };
            (
                fb::Body::Error,
                fb::Error::create(fbb, &args).as_union_value(),
            )
        }
        ServerMsg::GoAway { code, reason } => {
            let reason = fbb.create_string(reason);
            let args = fb::GoAwayArgs {
                code,
                reason: Some(reason),
            };
            (
                fb::Body::GoAway,
                fb::GoAway::create(fbb, &args).as_union_value(),
            )
        }
    });
}

/// A well-formed frame whose union tag is `tag`, with an empty table as its body (tests of the
/// broker's handling of frame types it does not know).
pub fn encode_raw_union(tag: u8, out: &mut Vec<u8>) {
    encode_with(out, |fbb| {
        let empty = fb::Logout::create(fbb, &fb::LogoutArgs {});
        (fb::Body(tag), empty.as_union_value())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(frame: &[u8]) -> &[u8] {
        let n = check(frame, 1 << 20).unwrap().unwrap();
        assert_eq!(n, frame.len());
        &frame[LEN_PREFIX..n]
    }

    #[test]
    fn client_frames_round_trip() {
        let body = [1u8, 2, 3];
        let msgs = [
            ClientMsg::Login {
                token: "t.o.k",
                device_id: "phone",
                last_seq: 42,
            },
            ClientMsg::Send {
                client_msg_id: 7,
                to_user: "bob",
                body: &body,
            },
            ClientMsg::Ack { up_to_seq: 9 },
            ClientMsg::Ping { nonce: u64::MAX },
            ClientMsg::Logout,
        ];
        for msg in msgs {
            let mut out = Vec::new();
            encode_client(&msg, &mut out);
            assert_eq!(decode_client(payload(&out)).unwrap(), msg);
        }
    }

    #[test]
    fn server_frames_round_trip() {
        let body = vec![9u8; 64 * 1024];
        let msgs = [
            ServerMsg::LoginOk {
                user_id: "alice",
                shard: 3,
                head_seq: 10,
                heartbeat_ms: 30_000,
                oldest_seq: 2,
                gap: true,
            },
            ServerMsg::SendAck {
                client_msg_id: 5,
                status: Code::INBOX_FULL,
            },
            ServerMsg::Deliver {
                seq: 1,
                from_user: "bob",
                client_msg_id: 77,
                sent_at_ms: 1_700_000_000_000,
                body: &body,
            },
            ServerMsg::Pong { nonce: 4 },
            ServerMsg::Error {
                code: Code::AUTH_FAILED,
                message: "bad signature",
            },
            ServerMsg::GoAway {
                code: Code::SHUTDOWN,
                reason: "bye",
            },
        ];
        for msg in msgs {
            let mut out = Vec::new();
            encode_server(&msg, &mut out);
            assert_eq!(decode_server(payload(&out)).unwrap(), msg);
        }
    }

    #[test]
    fn check_needs_whole_frames_and_rejects_bad_lengths_early() {
        assert_eq!(check(&[], 100), Ok(None));
        assert_eq!(check(&[10, 0, 0], 100), Ok(None));
        assert_eq!(check(&[10, 0, 0, 0, 1, 2, 3, 4, 5], 100), Ok(None));
        let mut exact = vec![10, 0, 0, 0];
        exact.extend_from_slice(&[0; 10]);
        assert_eq!(check(&exact, 100), Ok(Some(14)));
        assert_eq!(
            check(&[101, 0, 0, 0], 100),
            Err(CodecError::TooLarge { len: 101, max: 100 })
        );
        assert_eq!(check(&[0, 0, 0, 0], 100), Err(CodecError::Empty));
        assert_eq!(CodecError::Empty.code(), Code::MALFORMED_FRAME);
    }

    #[test]
    fn back_to_back_frames_split_correctly() {
        let mut out = Vec::new();
        encode_client(&ClientMsg::Ping { nonce: 1 }, &mut out);
        encode_client(&ClientMsg::Ack { up_to_seq: 2 }, &mut out);
        let n = check(&out, 1024).unwrap().unwrap();
        assert_eq!(
            decode_client(&out[LEN_PREFIX..n]).unwrap(),
            ClientMsg::Ping { nonce: 1 }
        );
        let m = check(&out[n..], 1024).unwrap().unwrap();
        assert_eq!(n + m, out.len());
        assert_eq!(
            decode_client(&out[n + LEN_PREFIX..n + m]).unwrap(),
            ClientMsg::Ack { up_to_seq: 2 }
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..10_000 {
            let len = 1 + (next() % 256) as usize;
            let buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Ok(m) = decode_client(&buf) {
                // Random bytes may happen to verify; then they must be a legal message.
                let _ = format!("{m:?}");
            }
            let _ = decode_server(&buf);
        }
        for fixed in [&b"\x00"[..], b"\xff\xff\xff\xff", b"GET / HTTP/1.1\r\n\r\n"] {
            assert!(decode_client(fixed).is_err());
        }
    }

    #[test]
    fn truncated_payloads_are_errors() {
        let mut out = Vec::new();
        encode_server(
            &ServerMsg::Deliver {
                seq: 1,
                from_user: "bob",
                client_msg_id: 2,
                sent_at_ms: 3,
                body: b"hello",
            },
            &mut out,
        );
        let p = &out[LEN_PREFIX..];
        for cut in 0..p.len() {
            assert!(decode_server(&p[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn unknown_and_wrong_direction_tags() {
        let mut out = Vec::new();
        encode_raw_union(200, &mut out);
        assert_eq!(
            decode_client(payload(&out)),
            Err(CodecError::UnknownType(200))
        );
        assert_eq!(
            decode_client(payload(&out)).unwrap_err().code(),
            Code::UNKNOWN_FRAME
        );

        let mut login = Vec::new();
        encode_client(
            &ClientMsg::Login {
                token: "x",
                device_id: "",
                last_seq: 0,
            },
            &mut login,
        );
        assert_eq!(
            decode_server(payload(&login)),
            Err(CodecError::Unexpected("Login"))
        );
        let mut deliver = Vec::new();
        encode_server(
            &ServerMsg::Deliver {
                seq: 1,
                from_user: "a",
                client_msg_id: 1,
                sent_at_ms: 1,
                body: b"",
            },
            &mut deliver,
        );
        let err = decode_client(payload(&deliver)).unwrap_err();
        assert_eq!(err, CodecError::Unexpected("Deliver"));
        assert_eq!(err.code(), Code::UNEXPECTED_FRAME);
    }

    #[test]
    fn login_without_required_token_is_malformed() {
        // The builder refuses to omit a required field, so tag an empty table as Login.
        let mut out = Vec::new();
        encode_raw_union(fb::Body::Login.0, &mut out);
        let err = decode_client(payload(&out)).unwrap_err();
        assert!(matches!(err, CodecError::Malformed(_)), "{err:?}");
    }

    #[test]
    fn frame_without_body_is_malformed() {
        let mut fbb = FlatBufferBuilder::new();
        let frame = fb::Frame::create(&mut fbb, &fb::FrameArgs::default());
        fbb.finish(frame, None);
        assert!(matches!(
            decode_client(fbb.finished_data()),
            Err(CodecError::Malformed(_))
        ));
    }
}

//! Check-then-parse decoding and builder-reusing encoding of frames.

use std::cell::RefCell;

use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, VerifierOptions, WIPOffset};

use super::layout::{LEN_PREFIX, MIN_PAYLOAD};
use super::messages::{ClientMsg, Deliver, GroupOp, GroupReply, Members, Names, ServerMsg};
use super::ringpost_generated::ringpost::wire as fb;
use super::Code;

/// Deepest table nesting the verifier accepts. Today's frames are two tables deep (Frame → body
/// table); 16 leaves room for append-only schema growth while stopping adversarial nesting early.
const VERIFY_MAX_DEPTH: usize = 16;
/// Most tables the verifier visits in one frame. Today's frames hold two (Frame and its body);
/// the verifier skips fields it does not know, so this bounds work on hostile input without
/// limiting any frame a newer peer may send.
const VERIFY_MAX_TABLES: usize = 64;
/// "Apparent" (DAG-expanded) size limit. Each field of our schema is visited at most once, so
/// the apparent size is bounded by a small multiple of the payload, itself bounded by
/// `max_frame`; the FlatBuffers default (2 GiB) is kept.
const VERIFY_MAX_APPARENT_SIZE: usize = 1 << 31;

/// Verifier options for every decode. Strings must be NUL-terminated and valid UTF-8 (the
/// verifier checks both), so borrowed `&str`s are sound.
const VERIFIER_OPTIONS: VerifierOptions = VerifierOptions {
    max_depth: VERIFY_MAX_DEPTH,
    max_tables: VERIFY_MAX_TABLES,
    max_apparent_size: VERIFY_MAX_APPARENT_SIZE,
    ignore_missing_null_terminator: false,
};

/// Why bytes are not a frame we accept. [`CodecError::code`] is what the peer is told.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// The length prefix exceeds `max_frame` (reported before any of the body is read).
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The prefix's payload length.
        len: usize,
        /// The configured `max_frame`.
        max: usize,
    },
    /// The length prefix is 0.
    #[error("zero-length frame")]
    Empty,
    /// The payload failed FlatBuffers verification (the `InvalidFlatbuffer` text), or the
    /// frame has no body.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The union tag is not one the schema this build was generated from knows.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// A known frame type that only the other side may send, e.g. a client sent Deliver.
    #[error("unexpected frame type {0} from this side")]
    Unexpected(&'static str),
}

impl CodecError {
    /// The wire code that reports this error to the peer.
    pub fn code(&self) -> Code {
        match self {
            CodecError::TooLarge { .. } => Code::FRAME_TOO_LARGE,
            CodecError::Empty | CodecError::Malformed(_) => Code::MALFORMED_FRAME,
            CodecError::UnknownType(_) => Code::UNKNOWN_FRAME,
            CodecError::Unexpected(_) => Code::UNEXPECTED_FRAME,
        }
    }
}

/// Readable name of a code, e.g. "FRAME_TOO_LARGE" (flatc's `variant_name`; "UNKNOWN" for a
/// value this build does not know).
pub fn code_name(code: Code) -> &'static str {
    code.variant_name().unwrap_or("UNKNOWN")
}

/// Check step of check-then-parse: looks only at the length prefix.
///
/// - `Ok(None)`: need more bytes (cheap, no allocation).
/// - `Ok(Some(n))`: a complete frame occupies `buf[..n]` (`n` includes [`LEN_PREFIX`]); its
///   payload is `buf[LEN_PREFIX..n]`.
/// - `Err(TooLarge | Empty)`: as soon as the prefix is readable, without waiting for the body.
pub fn check(buf: &[u8], max_frame: usize) -> Result<Option<usize>, CodecError> {
    let Some(prefix) = buf.first_chunk::<LEN_PREFIX>() else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(*prefix) as usize;
    if len < MIN_PAYLOAD {
        return Err(CodecError::Empty);
    }
    let too_large = CodecError::TooLarge {
        len,
        max: max_frame,
    };
    if len > max_frame {
        return Err(too_large);
    }
    // Cannot overflow on 64-bit targets; checked for 32-bit ones with a huge `max_frame`.
    let total = LEN_PREFIX.checked_add(len).ok_or(too_large)?;
    Ok((buf.len() >= total).then_some(total))
}

/// Runs the FlatBuffers verifier over `payload` and returns the root `Frame`.
///
/// After this, every accessor of the frame and of a body whose tag the schema knows is in
/// bounds, strings are valid UTF-8, and required fields are present (so the generated
/// accessors for required fields cannot panic). A body whose tag the schema does not know is
/// *not* verified (flatc's verifier accepts it, see the module doc) and must not be read.
fn verified(payload: &[u8]) -> Result<fb::Frame<'_>, CodecError> {
    fb::root_as_frame_with_opts(&VERIFIER_OPTIONS, payload)
        .map_err(|e| CodecError::Malformed(e.to_string()))
}

fn missing(what: &str) -> CodecError {
    CodecError::Malformed(format!("missing {what}"))
}

/// Parse step for frames from a client: `payload` is the `N` bytes after the prefix.
///
/// Verifies the payload first (never panics or reads out of bounds, whatever the bytes).
/// Server-to-client types are [`CodecError::Unexpected`]; tags the schema does not know are
/// [`CodecError::UnknownType`]; a frame without a body is [`CodecError::Malformed`].
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
        fb::Body::GroupCreate => {
            let m = frame
                .body_as_group_create()
                .ok_or_else(|| missing("GroupCreate body"))?;
            ClientMsg::Group {
                request_id: m.request_id(),
                group_id: m.group_id(),
                op: GroupOp::Create {
                    members: names(m.members()),
                },
            }
        }
        fb::Body::GroupAdd => {
            let m = frame
                .body_as_group_add()
                .ok_or_else(|| missing("GroupAdd body"))?;
            ClientMsg::Group {
                request_id: m.request_id(),
                group_id: m.group_id(),
                op: GroupOp::Add {
                    members: names(m.members()),
                },
            }
        }
        fb::Body::GroupRemove => {
            let m = frame
                .body_as_group_remove()
                .ok_or_else(|| missing("GroupRemove body"))?;
            ClientMsg::Group {
                request_id: m.request_id(),
                group_id: m.group_id(),
                op: GroupOp::Remove {
                    members: names(m.members()),
                },
            }
        }
        fb::Body::GroupLeave => {
            let m = frame
                .body_as_group_leave()
                .ok_or_else(|| missing("GroupLeave body"))?;
            ClientMsg::Group {
                request_id: m.request_id(),
                group_id: m.group_id(),
                op: GroupOp::Leave,
            }
        }
        fb::Body::GroupInfo => {
            let m = frame
                .body_as_group_info()
                .ok_or_else(|| missing("GroupInfo body"))?;
            ClientMsg::Group {
                request_id: m.request_id(),
                group_id: m.group_id(),
                op: GroupOp::Info {
                    after: m.after().unwrap_or(""),
                    limit: m.limit(),
                },
            }
        }
        fb::Body::GroupList => {
            let m = frame
                .body_as_group_list()
                .ok_or_else(|| missing("GroupList body"))?;
            ClientMsg::GroupList {
                request_id: m.request_id(),
            }
        }
        fb::Body::GroupSend => {
            let m = frame
                .body_as_group_send()
                .ok_or_else(|| missing("GroupSend body"))?;
            ClientMsg::GroupSend {
                client_msg_id: m.client_msg_id(),
                group_id: m.group_id(),
                body: m.body().map_or(&[][..], |v| v.bytes()),
            }
        }
        fb::Body::NONE => return Err(missing("frame body")),
        other => return Err(side_error(other)),
    })
}

fn names<'a>(
    v: Option<flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<&'a str>>>,
) -> Names<'a> {
    v.map_or(Names::EMPTY, Names::Wire)
}

/// Parse step for frames from the server: `payload` is the `N` bytes after the prefix.
///
/// Same guarantees as [`decode_client`]; client-to-server types are
/// [`CodecError::Unexpected`].
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
                own_seq: m.own_seq(),
            }
        }
        fb::Body::Deliver => {
            let m = frame
                .body_as_deliver()
                .ok_or_else(|| missing("Deliver body"))?;
            ServerMsg::Deliver(Deliver {
                seq: m.seq(),
                from_user: m.from_user().unwrap_or(""),
                client_msg_id: m.client_msg_id(),
                sent_at_ms: m.sent_at_ms(),
                body: m.body().map_or(&[][..], |v| v.bytes()),
                group_id: m.group_id().unwrap_or(""),
                group_seq: m.group_seq(),
                kind: m.kind(),
                outgoing: m.outgoing(),
                to_user: m.to_user().unwrap_or(""),
                members: names(m.members()),
            })
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
        fb::Body::GroupReply => {
            let m = frame
                .body_as_group_reply()
                .ok_or_else(|| missing("GroupReply body"))?;
            ServerMsg::GroupReply(GroupReply {
                request_id: m.request_id(),
                status: m.status(),
                group_id: m.group_id().unwrap_or(""),
                group_seq: m.group_seq(),
                groups: names(m.groups()),
                members: m.members().map_or(Members::EMPTY, Members::Wire),
                next_after: m.next_after().unwrap_or(""),
                member_count: m.member_count(),
                message: m.message().unwrap_or(""),
            })
        }
        fb::Body::NONE => return Err(missing("frame body")),
        other => return Err(side_error(other)),
    })
}

/// A tag that is not NONE and not one of this side's: a known tag of the other direction, or
/// one the schema does not know (its body was not verified and is not read).
fn side_error(tag: fb::Body) -> CodecError {
    match tag.variant_name() {
        Some(name) => CodecError::Unexpected(name),
        None => CodecError::UnknownType(tag.0),
    }
}

/// Initial capacity of each thread's builder: enough for every frame but large bodies.
const BUILDER_INITIAL: usize = 1024;
/// A builder that grew past this many bytes (a frame with a huge body) is replaced by a fresh
/// one after use, so one large frame does not pin its memory on the thread forever.
const BUILDER_RETAIN: usize = 1 << 20;

thread_local! {
    /// One builder per thread, reset per frame: steady-state encoding does not allocate one.
    static BUILDER: RefCell<FlatBufferBuilder<'static>> =
        RefCell::new(FlatBufferBuilder::with_capacity(BUILDER_INITIAL));
}

/// What goes in front of a frame's payload on a transport, written once the payload's length
/// is known and straight into the output, so that no transport costs a copy of the payload:
/// [`LenPrefix`] on the TCP stream, a WebSocket header on WebSocket connections (see
/// `crate::wire`).
pub trait FrameHead {
    /// The most bytes [`FrameHead::write_head`] appends (used to reserve room once).
    const MAX_LEN: usize;
    /// Appends the head for a payload of `payload_len` bytes.
    fn write_head(&self, payload_len: usize, out: &mut Vec<u8>);
}

/// The TCP framing: a u32 little-endian payload length ([`LEN_PREFIX`] bytes).
#[derive(Debug, Clone, Copy, Default)]
pub struct LenPrefix;

impl FrameHead for LenPrefix {
    const MAX_LEN: usize = LEN_PREFIX;

    fn write_head(&self, payload_len: usize, out: &mut Vec<u8>) {
        // FlatBuffers are < 2 GiB (the builder panics beyond that), so the length fits a u32.
        out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    }
}

/// No head: the bare payload, for a transport that frames it afterwards (a client's masked
/// WebSocket message is masked as a whole, so it is encoded bare first).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHead;

impl FrameHead for NoHead {
    const MAX_LEN: usize = 0;

    fn write_head(&self, _payload_len: usize, _out: &mut Vec<u8>) {}
}

/// Builds a frame with the thread's builder and appends head + payload to `out`.
fn encode_with<H: FrameHead>(
    head: &H,
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
        out.reserve(H::MAX_LEN + data.len());
        head.write_head(data.len(), out);
        out.extend_from_slice(data);
        if data.len() > BUILDER_RETAIN {
            *fbb = FlatBufferBuilder::with_capacity(BUILDER_INITIAL);
        }
    });
}

/// Appends one client frame (prefix + payload) to `out`. Uses the thread's reusable builder.
pub fn encode_client(msg: &ClientMsg<'_>, out: &mut Vec<u8>) {
    encode_client_with(msg, &LenPrefix, out);
}

/// Appends one client frame with `head` in front of its payload.
pub fn encode_client_with(msg: &ClientMsg<'_>, head: &impl FrameHead, out: &mut Vec<u8>) {
    encode_with(head, out, |fbb| match *msg {
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
        ClientMsg::Group {
            request_id,
            group_id,
            op,
        } => {
            let group_id = Some(fbb.create_string(group_id));
            match op {
                GroupOp::Create { members } => {
                    let members = Some(string_vector(fbb, members));
                    let args = fb::GroupCreateArgs {
                        request_id,
                        group_id,
                        members,
                    };
                    (
                        fb::Body::GroupCreate,
                        fb::GroupCreate::create(fbb, &args).as_union_value(),
                    )
                }
                GroupOp::Add { members } => {
                    let members = Some(string_vector(fbb, members));
                    let args = fb::GroupAddArgs {
                        request_id,
                        group_id,
                        members,
                    };
                    (
                        fb::Body::GroupAdd,
                        fb::GroupAdd::create(fbb, &args).as_union_value(),
                    )
                }
                GroupOp::Remove { members } => {
                    let members = Some(string_vector(fbb, members));
                    let args = fb::GroupRemoveArgs {
                        request_id,
                        group_id,
                        members,
                    };
                    (
                        fb::Body::GroupRemove,
                        fb::GroupRemove::create(fbb, &args).as_union_value(),
                    )
                }
                GroupOp::Leave => {
                    let args = fb::GroupLeaveArgs {
                        request_id,
                        group_id,
                    };
                    (
                        fb::Body::GroupLeave,
                        fb::GroupLeave::create(fbb, &args).as_union_value(),
                    )
                }
                GroupOp::Info { after, limit } => {
                    let after = Some(fbb.create_string(after));
                    let args = fb::GroupInfoArgs {
                        request_id,
                        group_id,
                        after,
                        limit,
                    };
                    (
                        fb::Body::GroupInfo,
                        fb::GroupInfo::create(fbb, &args).as_union_value(),
                    )
                }
            }
        }
        ClientMsg::GroupList { request_id } => (
            fb::Body::GroupList,
            fb::GroupList::create(fbb, &fb::GroupListArgs { request_id }).as_union_value(),
        ),
        ClientMsg::GroupSend {
            client_msg_id,
            group_id,
            body,
        } => {
            let group_id = fbb.create_string(group_id);
            let body = fbb.create_vector(body);
            let args = fb::GroupSendArgs {
                client_msg_id,
                group_id: Some(group_id),
                body: Some(body),
            };
            (
                fb::Body::GroupSend,
                fb::GroupSend::create(fbb, &args).as_union_value(),
            )
        }
    });
}

/// A vector of strings in the builder.
fn string_vector<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    names: Names<'_>,
) -> WIPOffset<flatbuffers::Vector<'b, flatbuffers::ForwardsUOffset<&'b str>>> {
    let offsets: Vec<_> = names.iter().map(|n| fbb.create_string(n)).collect();
    fbb.create_vector(&offsets)
}

/// Appends one server frame (prefix + payload) to `out`. Uses the thread's reusable builder.
pub fn encode_server(msg: &ServerMsg<'_>, out: &mut Vec<u8>) {
    encode_server_with(msg, &LenPrefix, out);
}

/// Appends one server frame with `head` in front of its payload (the connection's framing).
pub fn encode_server_with(msg: &ServerMsg<'_>, head: &impl FrameHead, out: &mut Vec<u8>) {
    match msg {
        // Every delivery but group entries: laid out directly, without the builder.
        ServerMsg::Deliver(d) if super::deliver::is_plain(d) => {
            super::deliver::encode_plain(d, head, out)
        }
        _ => encode_server_built(msg, head, out),
    }
}

/// [`encode_server_with`] through the FlatBuffers builder, for every message.
pub(crate) fn encode_server_built(msg: &ServerMsg<'_>, head: &impl FrameHead, out: &mut Vec<u8>) {
    encode_with(head, out, |fbb| match *msg {
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
            own_seq,
        } => {
            let args = fb::SendAckArgs {
                client_msg_id,
                status,
                own_seq,
            };
            (
                fb::Body::SendAck,
                fb::SendAck::create(fbb, &args).as_union_value(),
            )
        }
        ServerMsg::Deliver(d) => {
            let from_user = fbb.create_string(d.from_user);
            let body = fbb.create_vector(d.body);
            // Optional fields are left out when empty: a 1:1 Deliver costs what it did before
            // groups existed.
            let group_id = (!d.group_id.is_empty()).then(|| fbb.create_string(d.group_id));
            let to_user = (!d.to_user.is_empty()).then(|| fbb.create_string(d.to_user));
            let members = (!d.members.is_empty()).then(|| string_vector(fbb, d.members));
            let args = fb::DeliverArgs {
                seq: d.seq,
                from_user: Some(from_user),
                client_msg_id: d.client_msg_id,
                sent_at_ms: d.sent_at_ms,
                body: Some(body),
                group_id,
                group_seq: d.group_seq,
                kind: d.kind,
                outgoing: d.outgoing,
                to_user,
                members,
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
        ServerMsg::GroupReply(r) => {
            let group_id = fbb.create_string(r.group_id);
            let groups = (!r.groups.is_empty()).then(|| string_vector(fbb, r.groups));
            let members = (!r.members.is_empty()).then(|| {
                let offsets: Vec<_> = r
                    .members
                    .iter()
                    .map(|(user, admin)| {
                        let user_id = Some(fbb.create_string(user));
                        fb::GroupMember::create(fbb, &fb::GroupMemberArgs { user_id, admin })
                    })
                    .collect();
                fbb.create_vector(&offsets)
            });
            let next_after = fbb.create_string(r.next_after);
            let message = fbb.create_string(r.message);
            let args = fb::GroupReplyArgs {
                request_id: r.request_id,
                status: r.status,
                group_id: Some(group_id),
                group_seq: r.group_seq,
                groups,
                members,
                next_after: Some(next_after),
                member_count: r.member_count,
                message: Some(message),
            };
            (
                fb::Body::GroupReply,
                fb::GroupReply::create(fbb, &args).as_union_value(),
            )
        }
    });
}

/// Appends a well-formed frame whose union tag is `tag` (e.g. 200) with an empty table as its
/// body: for tests of the broker's rejection path (unknown types, and known types whose
/// required fields are missing).
pub fn encode_raw_union(tag: u8, out: &mut Vec<u8>) {
    encode_with(&LenPrefix, out, |fbb| {
        let empty = fb::Logout::create(fbb, &fb::LogoutArgs {});
        (fb::Body(tag), empty.as_union_value())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 4 << 20;

    /// check() a buffer holding exactly one frame and return its payload.
    fn payload(frame: &[u8]) -> &[u8] {
        let n = check(frame, MAX).unwrap().unwrap();
        assert_eq!(n, frame.len());
        &frame[LEN_PREFIX..n]
    }

    fn client_frame(msg: &ClientMsg<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_client(msg, &mut out);
        out
    }

    fn server_frame(msg: &ServerMsg<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_server(msg, &mut out);
        out
    }

    fn raw_frame(tag: u8) -> Vec<u8> {
        let mut out = Vec::new();
        encode_raw_union(tag, &mut out);
        out
    }

    /// Finishes a Frame around a hand-built body (bypassing the generated builders, which
    /// refuse to omit required fields) and returns the payload.
    fn hand_built(
        build: impl FnOnce(
            &mut FlatBufferBuilder<'static>,
        ) -> Option<(fb::Body, WIPOffset<UnionWIPOffset>)>,
    ) -> Vec<u8> {
        let mut fbb = FlatBufferBuilder::new();
        let args = match build(&mut fbb) {
            Some((body_type, body)) => fb::FrameArgs {
                body_type,
                body: Some(body),
            },
            None => fb::FrameArgs::default(),
        };
        let frame = fb::Frame::create(&mut fbb, &args);
        fbb.finish(frame, None);
        fbb.finished_data().to_vec()
    }

    fn sample_clients(body: &[u8]) -> Vec<ClientMsg<'_>> {
        vec![
            ClientMsg::Login {
                token: "h.p.s",
                device_id: "phone-1",
                last_seq: 42,
            },
            ClientMsg::Login {
                token: "t",
                device_id: "",
                last_seq: 0,
            },
            ClientMsg::Send {
                client_msg_id: 7,
                to_user: "bob",
                body,
            },
            ClientMsg::Send {
                client_msg_id: u64::MAX,
                to_user: "ünïcødé",
                body: &[],
            },
            ClientMsg::Ack { up_to_seq: 9 },
            ClientMsg::Ping { nonce: u64::MAX },
            ClientMsg::Logout,
        ]
    }

    fn sample_servers(body: &[u8]) -> Vec<ServerMsg<'_>> {
        vec![
            ServerMsg::LoginOk {
                user_id: "alice",
                shard: 3,
                head_seq: 10,
                heartbeat_ms: 30_000,
                oldest_seq: 2,
                gap: true,
            },
            ServerMsg::LoginOk {
                user_id: "",
                shard: u16::MAX,
                head_seq: 0,
                heartbeat_ms: u32::MAX,
                oldest_seq: 0,
                gap: false,
            },
            ServerMsg::SendAck {
                client_msg_id: 5,
                status: Code::INBOX_FULL,
                own_seq: 0,
            },
            ServerMsg::SendAck {
                client_msg_id: 0,
                status: Code::OK,
                own_seq: u64::MAX,
            },
            ServerMsg::Deliver(Deliver::message(1, "bob", 77, 1_700_000_000_000, body)),
            ServerMsg::Pong { nonce: 4 },
            ServerMsg::Error {
                code: Code::AUTH_FAILED,
                message: "bad signature",
            },
            ServerMsg::GoAway {
                code: Code::SHUTDOWN,
                reason: "bye",
            },
        ]
    }

    // ---- round trips ----

    #[test]
    fn every_client_variant_round_trips() {
        for msg in sample_clients(b"hello") {
            let out = client_frame(&msg);
            assert_eq!(decode_client(payload(&out)).unwrap(), msg);
        }
    }

    #[test]
    fn every_server_variant_round_trips() {
        for msg in sample_servers(b"hello") {
            let out = server_frame(&msg);
            assert_eq!(decode_server(payload(&out)).unwrap(), msg);
        }
    }

    #[test]
    fn deliver_with_64k_body_round_trips_zero_copy() {
        let body: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let msg = ServerMsg::Deliver(Deliver::message(99, "carol", 3, 5, &body));
        let out = server_frame(&msg);
        let p = payload(&out);
        let decoded = decode_server(p).unwrap();
        assert_eq!(decoded, msg);
        let ServerMsg::Deliver(Deliver { body: got, .. }) = decoded else {
            unreachable!()
        };
        // Borrowed from the payload, not copied.
        let range = p.as_ptr_range();
        assert!(range.contains(&got.as_ptr()));
    }

    #[test]
    fn encoding_appends_and_reuses_the_builder() {
        let mut out = b"xy".to_vec();
        encode_client(&ClientMsg::Ping { nonce: 1 }, &mut out);
        assert_eq!(&out[..2], b"xy");
        let first = out[2..].to_vec();
        // A frame big enough to make the thread's builder be replaced, then a small one again.
        let big = vec![1u8; BUILDER_RETAIN + 1];
        let big_frame = client_frame(&ClientMsg::Send {
            client_msg_id: 1,
            to_user: "u",
            body: &big,
        });
        assert!(matches!(
            decode_client(payload(&big_frame)),
            Ok(ClientMsg::Send { body, .. }) if body.len() == big.len()
        ));
        assert_eq!(client_frame(&ClientMsg::Ping { nonce: 1 }), first);
    }

    // ---- check ----

    #[test]
    fn check_waits_for_the_whole_prefix() {
        let prefix = 10u32.to_le_bytes();
        for n in 0..LEN_PREFIX {
            assert_eq!(check(&prefix[..n], 100), Ok(None), "{n} prefix bytes");
        }
    }

    #[test]
    fn check_waits_for_the_whole_body() {
        let mut buf = 10u32.to_le_bytes().to_vec();
        assert_eq!(check(&buf, 100), Ok(None));
        buf.extend_from_slice(&[0; 5]);
        assert_eq!(check(&buf, 100), Ok(None));
        buf.extend_from_slice(&[0; 5]);
        assert_eq!(check(&buf, 100), Ok(Some(14)));
        buf.extend_from_slice(&[0; 3]); // the start of the next frame
        assert_eq!(check(&buf, 100), Ok(Some(14)));
    }

    #[test]
    fn check_rejects_oversized_frames_from_the_prefix_alone() {
        assert_eq!(
            check(&101u32.to_le_bytes(), 100),
            Err(CodecError::TooLarge { len: 101, max: 100 })
        );
        assert_eq!(
            check(&u32::MAX.to_le_bytes(), 100),
            Err(CodecError::TooLarge {
                len: u32::MAX as usize,
                max: 100
            })
        );
        // Exactly max_frame is allowed.
        assert_eq!(check(&100u32.to_le_bytes(), 100), Ok(None));
        let mut exact = 100u32.to_le_bytes().to_vec();
        exact.resize(104, 0);
        assert_eq!(check(&exact, 100), Ok(Some(104)));
    }

    #[test]
    fn check_rejects_zero_length() {
        assert_eq!(check(&[0, 0, 0, 0], 100), Err(CodecError::Empty));
        assert_eq!(check(&[0, 0, 0, 0, 9, 9], 100), Err(CodecError::Empty));
    }

    #[test]
    fn back_to_back_frames_split_correctly() {
        let clients = sample_clients(b"abc");
        let mut stream = Vec::new();
        for msg in &clients {
            encode_client(msg, &mut stream);
        }
        // A partial frame at the end.
        let mut tail = Vec::new();
        encode_client(&ClientMsg::Ack { up_to_seq: 1 }, &mut tail);
        stream.extend_from_slice(&tail[..tail.len() - 1]);

        let mut rest = &stream[..];
        let mut decoded = Vec::new();
        while let Some(n) = check(rest, MAX).unwrap() {
            decoded.push(decode_client(&rest[LEN_PREFIX..n]).unwrap());
            rest = &rest[n..];
        }
        assert_eq!(decoded, clients);
        assert_eq!(rest.len(), tail.len() - 1);
    }

    // ---- hostile input ----

    fn assert_rejected(buf: &[u8]) {
        for res in [
            decode_client(buf).map(|_| ()),
            decode_server(buf).map(|_| ()),
        ] {
            match res {
                Err(CodecError::Malformed(_) | CodecError::UnknownType(_)) => {}
                other => panic!("{buf:02x?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn fixed_garbage_is_rejected() {
        let patterns: [&[u8]; 9] = [
            b"\x00",
            b"\x00\x00\x00\x00",
            b"\xff\xff\xff\xff",
            &[0u8; 64],
            &[0xffu8; 64],
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            // Root offset pointing past the end.
            b"\x10\x00\x00\x00\x00\x00\x00\x00",
            // Root offset pointing at itself; vtable offset garbage.
            b"\x04\x00\x00\x00\x04\x00\x00\x00",
            // Unaligned root offset.
            b"\x05\x00\x00\x00\x00\x00\x00\x00\x00\x00",
        ];
        for p in patterns {
            assert_rejected(p);
        }
        assert_rejected(&[]);
    }

    /// xorshift64: deterministic pseudo-random bytes without a crate.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn random_garbage_never_panics_and_is_rejected() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..10_000 {
            let len = 1 + (rng.next() % 256) as usize;
            let buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            assert_rejected(&buf);
        }
    }

    #[test]
    fn corrupted_valid_frames_never_panic() {
        // Random bytes rarely get past the root offset; flipping bytes of real frames reaches
        // the vtable, union and vector checks.
        let mut rng = XorShift(0x0123_4567_89ab_cdef);
        let mut frames: Vec<Vec<u8>> = sample_clients(b"body").iter().map(client_frame).collect();
        frames.extend(sample_servers(b"body").iter().map(server_frame));
        for _ in 0..20_000 {
            let pick = (rng.next() % frames.len() as u64) as usize;
            let mut p = frames[pick][LEN_PREFIX..].to_vec();
            for _ in 0..1 + rng.next() % 3 {
                let at = (rng.next() % p.len() as u64) as usize;
                p[at] = rng.next() as u8;
            }
            let _ = decode_client(&p);
            let _ = decode_server(&p);
        }
    }

    #[test]
    fn truncated_payloads_are_errors() {
        let out = server_frame(&ServerMsg::Deliver(Deliver::message(
            1, "bob", 2, 3, b"hello",
        )));
        let p = payload(&out);
        assert!(decode_server(p).is_ok());
        for cut in 0..p.len() {
            assert!(decode_server(&p[..cut]).is_err(), "cut at {cut}");
            assert!(decode_client(&p[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn invalid_utf8_in_a_string_is_malformed() {
        let token = "AAAAAAAAAAAA";
        let mut out = client_frame(&ClientMsg::Login {
            token,
            device_id: "d",
            last_seq: 0,
        });
        let at = out
            .windows(token.len())
            .position(|w| w == token.as_bytes())
            .unwrap();
        out[at] = 0xff;
        assert!(matches!(
            decode_client(payload(&out)),
            Err(CodecError::Malformed(_))
        ));
    }

    // ---- union tags ----

    #[test]
    fn unknown_union_tag_is_unknown_type() {
        let out = raw_frame(200);
        assert_eq!(
            decode_client(payload(&out)),
            Err(CodecError::UnknownType(200))
        );
        assert_eq!(
            decode_server(payload(&out)),
            Err(CodecError::UnknownType(200))
        );
        assert_eq!(
            decode_client(payload(&out)).unwrap_err().code(),
            Code::UNKNOWN_FRAME
        );
        // Every tag past the schema's last one.
        for tag in fb::Body::ENUM_MAX + 1..=u8::MAX {
            let out = raw_frame(tag);
            assert_eq!(
                decode_client(payload(&out)),
                Err(CodecError::UnknownType(tag))
            );
        }
    }

    #[test]
    fn unknown_union_tag_body_is_never_read() {
        // The verifier does not look at the body of an unknown tag: point it somewhere bogus
        // (at the frame's own table) and it must still be UnknownType, not a bad read.
        let p = hand_built(|fbb| {
            let t = fbb.start_table();
            fbb.push_slot::<u64>(4, u64::MAX, 0);
            let garbage = fbb.end_table(t);
            Some((fb::Body(77), WIPOffset::new(garbage.value())))
        });
        assert_eq!(decode_client(&p), Err(CodecError::UnknownType(77)));
    }

    #[test]
    fn frame_types_from_the_wrong_side_are_unexpected() {
        let login = client_frame(&ClientMsg::Login {
            token: "x",
            device_id: "",
            last_seq: 0,
        });
        assert_eq!(
            decode_server(payload(&login)),
            Err(CodecError::Unexpected("Login"))
        );
        let deliver = server_frame(&ServerMsg::Deliver(Deliver::message(1, "a", 1, 1, b"")));
        let err = decode_client(payload(&deliver)).unwrap_err();
        assert_eq!(err, CodecError::Unexpected("Deliver"));
        assert_eq!(err.code(), Code::UNEXPECTED_FRAME);

        for msg in sample_servers(b"") {
            assert!(matches!(
                decode_client(payload(&server_frame(&msg))),
                Err(CodecError::Unexpected(_))
            ));
        }
        for msg in sample_clients(b"") {
            assert!(matches!(
                decode_server(payload(&client_frame(&msg))),
                Err(CodecError::Unexpected(_))
            ));
        }
    }

    // ---- missing fields ----

    #[test]
    fn login_without_required_token_is_malformed() {
        // An empty table tagged Login.
        let out = raw_frame(fb::Body::Login.0);
        let err = decode_client(payload(&out)).unwrap_err();
        assert!(matches!(err, CodecError::Malformed(_)), "{err:?}");
        assert_eq!(err.code(), Code::MALFORMED_FRAME);

        // A Login with device_id and last_seq but no token.
        let p = hand_built(|fbb| {
            let device = fbb.create_string("phone");
            let t = fbb.start_table();
            fbb.push_slot_always(fb::Login::VT_DEVICE_ID, device);
            fbb.push_slot::<u64>(fb::Login::VT_LAST_SEQ, 5, 0);
            let login = fbb.end_table(t);
            Some((fb::Body::Login, WIPOffset::new(login.value())))
        });
        let err = decode_client(&p).unwrap_err();
        assert!(
            matches!(&err, CodecError::Malformed(text) if text.contains("token")),
            "{err:?}"
        );
    }

    #[test]
    fn send_without_required_recipient_is_malformed() {
        let p = hand_built(|fbb| {
            let t = fbb.start_table();
            fbb.push_slot::<u64>(fb::Send::VT_CLIENT_MSG_ID, 7, 0);
            let send = fbb.end_table(t);
            Some((fb::Body::Send, WIPOffset::new(send.value())))
        });
        assert!(matches!(decode_client(&p), Err(CodecError::Malformed(_))));
    }

    #[test]
    fn frame_without_body_is_malformed() {
        let p = hand_built(|_| None);
        assert!(matches!(decode_client(&p), Err(CodecError::Malformed(_))));
        assert!(matches!(decode_server(&p), Err(CodecError::Malformed(_))));
        // A body with tag NONE.
        let out = raw_frame(fb::Body::NONE.0);
        assert!(matches!(
            decode_client(payload(&out)),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn union_tag_without_body_is_malformed() {
        // A tag but no body offset is an inconsistent union, for known and unknown tags alike.
        for tag in [fb::Body::Ping.0, fb::Body::Deliver.0, 200] {
            let mut fbb = FlatBufferBuilder::new();
            let t = fbb.start_table();
            fbb.push_slot::<u8>(fb::Frame::VT_BODY_TYPE, tag, 0);
            let frame = fbb.end_table(t);
            fbb.finish_minimal(frame);
            for err in [
                decode_client(fbb.finished_data()).unwrap_err(),
                decode_server(fbb.finished_data()).unwrap_err(),
            ] {
                assert!(matches!(err, CodecError::Malformed(_)), "{tag}: {err:?}");
            }
        }
    }

    #[test]
    fn absent_optional_fields_decode_as_empty() {
        let p = hand_built(|fbb| {
            let ok = fb::LoginOk::create(
                fbb,
                &fb::LoginOkArgs {
                    user_id: None,
                    shard: 1,
                    ..Default::default()
                },
            );
            Some((fb::Body::LoginOk, ok.as_union_value()))
        });
        assert!(matches!(
            decode_server(&p),
            Ok(ServerMsg::LoginOk {
                user_id: "",
                shard: 1,
                ..
            })
        ));
        let p = hand_built(|fbb| {
            let d = fb::Deliver::create(
                fbb,
                &fb::DeliverArgs {
                    seq: 4,
                    ..Default::default()
                },
            );
            Some((fb::Body::Deliver, d.as_union_value()))
        });
        assert_eq!(
            decode_server(&p),
            Ok(ServerMsg::Deliver(Deliver::message(4, "", 0, 0, &[])))
        );
        let p = hand_built(|fbb| {
            let token = fbb.create_string("tok");
            let l = fb::Login::create(
                fbb,
                &fb::LoginArgs {
                    token: Some(token),
                    device_id: None,
                    last_seq: 0,
                },
            );
            Some((fb::Body::Login, l.as_union_value()))
        });
        assert_eq!(
            decode_client(&p),
            Ok(ClientMsg::Login {
                token: "tok",
                device_id: "",
                last_seq: 0,
            })
        );
        for (tag, msg) in [(fb::Body::Error, "message"), (fb::Body::GoAway, "reason")] {
            let p = raw_frame(tag.0);
            match decode_server(payload(&p)) {
                Ok(ServerMsg::Error { code, message: "" }) if msg == "message" => {
                    assert_eq!(code, Code::OK)
                }
                Ok(ServerMsg::GoAway { code, reason: "" }) if msg == "reason" => {
                    assert_eq!(code, Code::OK)
                }
                other => panic!("{other:?}"),
            }
        }
    }

    // ---- codes ----

    #[test]
    fn error_codes_and_names() {
        let cases = [
            (
                CodecError::TooLarge { len: 2, max: 1 },
                Code::FRAME_TOO_LARGE,
            ),
            (CodecError::Empty, Code::MALFORMED_FRAME),
            (CodecError::Malformed("x".into()), Code::MALFORMED_FRAME),
            (CodecError::UnknownType(200), Code::UNKNOWN_FRAME),
            (CodecError::Unexpected("Deliver"), Code::UNEXPECTED_FRAME),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code, "{err}");
        }
        assert_eq!(code_name(Code::FRAME_TOO_LARGE), "FRAME_TOO_LARGE");
        assert_eq!(code_name(Code::OK), "OK");
        assert_eq!(code_name(Code(9999)), "UNKNOWN");
        assert_eq!(
            CodecError::TooLarge { len: 2, max: 1 }.to_string(),
            "frame of 2 bytes exceeds the limit of 1 bytes"
        );
        assert_eq!(
            CodecError::Unexpected("Deliver").to_string(),
            "unexpected frame type Deliver from this side"
        );
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = decode_client(&buf);
                let _ = decode_server(&buf);
                let _ = check(&buf, 256);
            }

            #[test]
            fn send_round_trips(
                id in any::<u64>(),
                to in "\\PC{0,40}",
                body in proptest::collection::vec(any::<u8>(), 0..2048),
            ) {
                let msg = ClientMsg::Send { client_msg_id: id, to_user: &to, body: &body };
                let out = client_frame(&msg);
                prop_assert_eq!(decode_client(payload(&out)), Ok(msg));
            }

            #[test]
            fn deliver_round_trips(
                seq in any::<u64>(),
                from in "\\PC{0,40}",
                id in any::<u64>(),
                at in any::<u64>(),
                body in proptest::collection::vec(any::<u8>(), 0..2048),
            ) {
                let msg = ServerMsg::Deliver(Deliver::message(seq, &from, id, at, &body));
                let out = server_frame(&msg);
                prop_assert_eq!(decode_server(payload(&out)), Ok(msg));
            }

            #[test]
            fn group_deliver_round_trips(
                seq in any::<u64>(),
                group in "\\PC{1,40}",
                group_seq in any::<u64>(),
                kind in 0u8..5,
                members in proptest::collection::vec("\\PC{1,20}", 0..8),
                outgoing in any::<bool>(),
            ) {
                let names: Vec<&str> = members.iter().map(String::as_str).collect();
                let msg = ServerMsg::Deliver(Deliver {
                    group_id: &group,
                    group_seq,
                    kind: crate::protocol::EntryKind(kind),
                    outgoing,
                    to_user: "someone",
                    members: Names::Slice(&names),
                    ..Deliver::message(seq, "from", 1, 2, b"body")
                });
                let out = server_frame(&msg);
                prop_assert_eq!(decode_server(payload(&out)), Ok(msg));
            }

            #[test]
            fn group_ops_round_trip(
                request_id in any::<u64>(),
                group in "\\PC{1,40}",
                members in proptest::collection::vec("\\PC{1,20}", 0..8),
                which in 0u8..7,
            ) {
                let names: Vec<&str> = members.iter().map(String::as_str).collect();
                let members = Names::Slice(&names);
                let msg = match which {
                    0 => ClientMsg::Group { request_id, group_id: &group, op: GroupOp::Create { members } },
                    1 => ClientMsg::Group { request_id, group_id: &group, op: GroupOp::Add { members } },
                    2 => ClientMsg::Group { request_id, group_id: &group, op: GroupOp::Remove { members } },
                    3 => ClientMsg::Group { request_id, group_id: &group, op: GroupOp::Leave },
                    4 => ClientMsg::Group { request_id, group_id: &group, op: GroupOp::Info { after: "m", limit: 7 } },
                    5 => ClientMsg::GroupList { request_id },
                    _ => ClientMsg::GroupSend { client_msg_id: request_id, group_id: &group, body: b"hi" },
                };
                let out = client_frame(&msg);
                prop_assert_eq!(decode_client(payload(&out)), Ok(msg));
            }

            #[test]
            fn group_reply_round_trips(
                request_id in any::<u64>(),
                status in any::<u16>(),
                groups in proptest::collection::vec("\\PC{1,20}", 0..8),
                admins in proptest::collection::vec(any::<bool>(), 0..8),
            ) {
                let names: Vec<&str> = groups.iter().map(String::as_str).collect();
                let members: Vec<(&str, bool)> = names.iter().copied().zip(admins.iter().copied()).collect();
                let msg = ServerMsg::GroupReply(GroupReply {
                    request_id,
                    status: Code(status),
                    group_id: "g",
                    group_seq: 9,
                    groups: Names::Slice(&names),
                    members: Members::Slice(&members),
                    next_after: "after",
                    member_count: 3,
                    message: "why",
                });
                let out = server_frame(&msg);
                prop_assert_eq!(decode_server(payload(&out)), Ok(msg));
            }
        }
    }
}

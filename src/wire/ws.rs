//! WebSocket framing (RFC 6455) for ringpost connections: one binary message carries one
//! FlatBuffers `Frame`, with no length prefix.
//!
//! Frame headers are parsed and written by tungstenite's [`FrameHeader`], masking is
//! tungstenite's; this module only decides what a header means for us and where payloads go:
//!
//! - [`step`] is the one decoder, check-then-parse like the TCP reader: it looks at the next
//!   frame header in a buffer and refuses what we never accept (text, reserved bits or
//!   opcodes, an unmasked client frame, a message over `max_frame`) as soon as the header is
//!   readable, before its body is buffered. A complete frame is unmasked in place; a message in
//!   fragments is reassembled in place, its payloads moved together at the front of the
//!   buffer, so the bytes kept between reads are only the fragments so far and a partial frame.
//! - [`feed`] runs it push-style over a connection's carry buffer and newly read bytes (the
//!   session, reading into the shard's read buffer); [`MessageReader`] runs it pull-style
//!   over its own buffer (the acceptor reading the Login, the client library).
//! - [`WsHead`] writes the header of an unmasked binary message in front of a payload (the
//!   server's frames, see `protocol::FrameHead`); [`write_masked`] a client's masked message;
//!   [`write_pong`] and [`write_close`] the control frames we send.
//!
//! Per connection the decoder keeps a [`WsState`] (8 bytes: inside a fragmented message or
//! not, and how much of it is assembled); the bytes themselves live in the connection's carry
//! buffer only while a message is incomplete.

use std::io::{Cursor, Write};
use std::ops::Range;

use bytes::Bytes;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame, FrameHeader};

use crate::protocol::{Code, FrameHead};

/// Longest frame header: 2 bytes, an 8-byte length, a 4-byte mask.
pub const MAX_HEADER: usize = 14;
/// Largest payload of a control frame (RFC 6455 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Close codes we send (RFC 6455 7.4.1).
pub mod close {
    /// The purpose of the connection is fulfilled (logout, replaced by another login).
    pub const NORMAL: u16 = 1000;
    /// The server is going away (shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the WebSocket protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message: ringpost only takes binary messages.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A refusal by ringpost's rules (bad frame, bad token, limits).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message over `max_frame`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Something went wrong inside the broker.
    pub const INTERNAL_ERROR: u16 = 1011;
}

/// The close code that goes with closing a connection for `code` (an Error/GoAway code).
pub fn close_code_for(code: Code) -> u16 {
    match code {
        Code::FRAME_TOO_LARGE => close::MESSAGE_TOO_BIG,
        Code::SHUTDOWN => close::GOING_AWAY,
        Code::LOGGED_OUT | Code::SESSION_REPLACED => close::NORMAL,
        Code::INTERNAL => close::INTERNAL_ERROR,
        _ => close::POLICY_VIOLATION,
    }
}

/// Which end of the connection decodes: a server requires masked frames, a client unmasked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// Why bytes are not WebSocket frames we accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// The frames break RFC 6455 (close code 1002).
    #[error("websocket protocol error: {0}")]
    Protocol(&'static str),
    /// A text message (close code 1003).
    #[error("text messages are not accepted: send each Frame as one binary message")]
    Text,
    /// A message longer than `max_frame`, known from a frame header (close code 1009).
    #[error("message of at least {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: usize },
}

impl WsError {
    /// The wire code the peer is told in the Error frame (the same as for the TCP equivalent).
    pub fn code(&self) -> Code {
        match self {
            WsError::TooLarge { .. } => Code::FRAME_TOO_LARGE,
            WsError::Protocol(_) | WsError::Text => Code::MALFORMED_FRAME,
        }
    }

    /// The close code that follows the Error frame.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::Protocol(_) => close::PROTOCOL_ERROR,
            WsError::Text => close::UNSUPPORTED_DATA,
            WsError::TooLarge { .. } => close::MESSAGE_TOO_BIG,
        }
    }
}

/// Decoder state carried between reads. Between messages it is the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WsState {
    /// Inside a fragmented binary message (its first frame had FIN = 0).
    in_message: bool,
    /// Payload bytes of that message assembled so far (at the front of the carry buffer).
    assembled: u32,
}

impl WsState {
    /// Between messages: nothing of a message is held.
    pub fn is_idle(&self) -> bool {
        !self.in_message
    }
}

/// Where a walk over a buffer stands: `buf[msg..asm]` is the unmasked payload assembled so far
/// of a fragmented message; `buf[at..]` are bytes not parsed yet. Between messages all three
/// are equal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pos {
    msg: usize,
    asm: usize,
    at: usize,
}

impl Pos {
    /// A walk that starts with `assembled` bytes of a message at the front of the buffer.
    fn resuming(assembled: usize) -> Pos {
        Pos {
            msg: 0,
            asm: assembled,
            at: assembled,
        }
    }
}

/// One step of decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The next frame is not complete yet.
    Partial,
    /// A complete binary message; its payload is `buf[range]`.
    Message(Range<usize>),
    /// A Ping; its payload (to echo in the Pong) is `buf[range]`.
    Ping(Range<usize>),
    /// A Pong, or a fragment of a message taken in: nothing to hand out, step again.
    Nothing,
    /// A Close, with the peer's close code if it gave one.
    Close(Option<u16>),
}

/// Decodes the next frame of `buf` at `pos` (see the module doc). A complete frame is
/// consumed (`pos` moves past it) and unmasked in place; on [`Step::Partial`] nothing moves.
pub fn step(
    buf: &mut [u8],
    pos: &mut Pos,
    st: &mut WsState,
    max_message: usize,
    role: Role,
) -> Result<Step, WsError> {
    let mut cursor = Cursor::new(&buf[pos.at..]);
    let (header, len) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(Step::Partial),
        Err(_) => return Err(WsError::Protocol("reserved opcode")),
    };
    let head_len = cursor.position() as usize;
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err(WsError::Protocol(
            "reserved bits set without a negotiated extension",
        ));
    }
    match (role, header.mask) {
        (Role::Server, None) => return Err(WsError::Protocol("unmasked frame from a client")),
        (Role::Client, Some(_)) => return Err(WsError::Protocol("masked frame from the server")),
        _ => {}
    }
    let assembled = (pos.asm - pos.msg) as u64;
    match header.opcode {
        OpCode::Control(_) => {
            if !header.is_final || len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(WsError::Protocol(
                    "control frames must be unfragmented and at most 125 bytes",
                ));
            }
        }
        OpCode::Data(Data::Text) if !st.in_message => return Err(WsError::Text),
        OpCode::Data(Data::Continue) if !st.in_message => {
            return Err(WsError::Protocol("continuation frame outside a message"))
        }
        OpCode::Data(Data::Continue) => {}
        OpCode::Data(_) if st.in_message => {
            return Err(WsError::Protocol(
                "new message before the fragmented one ended",
            ))
        }
        OpCode::Data(_) => {}
    }
    if matches!(header.opcode, OpCode::Data(_)) && assembled + len > max_message as u64 {
        return Err(WsError::TooLarge {
            len: assembled + len,
            max: max_message,
        });
    }
    // Every data length is now at most max_message, every control length at most 125.
    let len = len as usize;
    let start = pos.at + head_len;
    if buf.len() - start < len {
        return Ok(Step::Partial);
    }
    let end = start + len;
    if let Some(mask) = header.mask {
        unmask(mask, &mut buf[start..end])?;
    }
    pos.at = end;
    let step = match header.opcode {
        OpCode::Control(Control::Ping) => Step::Ping(start..end),
        OpCode::Control(Control::Pong) => Step::Nothing,
        OpCode::Control(Control::Close) => Step::Close(close_code(&buf[start..end])?),
        OpCode::Control(Control::Reserved(_)) => return Err(WsError::Protocol("reserved opcode")),
        OpCode::Data(_) if header.is_final && !st.in_message => {
            // The common case: a whole message in one frame, handed out where it lies.
            pos.msg = end;
            pos.asm = end;
            Step::Message(start..end)
        }
        OpCode::Data(_) => {
            buf.copy_within(start..end, pos.asm);
            pos.asm += len;
            if header.is_final {
                let message = pos.msg..pos.asm;
                st.in_message = false;
                st.assembled = 0;
                pos.msg = end;
                pos.asm = end;
                Step::Message(message)
            } else {
                st.in_message = true;
                st.assembled = (pos.asm - pos.msg) as u32;
                Step::Nothing
            }
        }
    };
    Ok(step)
}

/// The close code in a Close frame's payload (none if empty).
fn close_code(payload: &[u8]) -> Result<Option<u16>, WsError> {
    match payload {
        [] => Ok(None),
        [a, b, ..] => Ok(Some(u16::from_be_bytes([*a, *b]))),
        [_] => Err(WsError::Protocol("close frame with a 1-byte payload")),
    }
}

/// Unmasks `payload` in place with tungstenite's masking. Its slice-level `apply_mask` is
/// private; `Frame::format` with the frame's mask is its public path to it, and masking is
/// its own inverse. The formatted frame (header, then payload) is written back over the same
/// bytes, header skipped.
fn unmask(mask: [u8; 4], payload: &mut [u8]) -> Result<(), WsError> {
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Binary),
        mask: Some(mask),
        ..FrameHeader::default()
    };
    let skip = header.len(payload.len() as u64);
    let frame = Frame::from_payload(header, Bytes::copy_from_slice(payload));
    let mut out = SkipThenFill {
        skip,
        out: payload,
        at: 0,
    };
    frame
        .format(&mut out)
        .map_err(|_| WsError::Protocol("cannot unmask the payload"))
}

/// A writer that drops the first `skip` bytes and writes the rest over `out`.
struct SkipThenFill<'a> {
    skip: usize,
    out: &'a mut [u8],
    at: usize,
}

impl Write for SkipThenFill<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let skipped = self.skip.min(data.len());
        self.skip -= skipped;
        let rest = &data[skipped..];
        let n = rest.len().min(self.out.len() - self.at);
        self.out[self.at..self.at + n].copy_from_slice(&rest[..n]);
        self.at += n;
        Ok(skipped + n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What [`feed`] hands to its callback.
#[derive(Debug)]
pub enum Inbound<'a> {
    /// The payload of one binary message: one FlatBuffers `Frame`.
    Message(&'a [u8]),
    /// A Ping with this payload: answer with a Pong carrying it.
    Ping(&'a [u8]),
    /// The peer closes, with its close code if it gave one.
    Close(Option<u16>),
}

/// What a [`feed`] callback wants next.
pub use crate::protocol::Flow;

/// Hands every complete message and control frame in `carry ++ data` to `on` and keeps what
/// is incomplete (assembled fragments, a partial frame) in `carry`, noted in `st`.
///
/// When `carry` is empty the frames are decoded where they lie in `data` (which is why it is
/// mutable: unmasking happens in place). After an error, or when `on` says [`Flow::Stop`],
/// `carry` and `st` are cleared and the rest of the input is dropped (the connection closes).
pub fn feed(
    st: &mut WsState,
    carry: &mut Vec<u8>,
    data: &mut [u8],
    max_message: usize,
    role: Role,
    mut on: impl FnMut(Inbound<'_>) -> Flow,
) -> Result<(), WsError> {
    let outcome = if carry.is_empty() {
        let mut pos = Pos::default();
        let outcome = walk(data, &mut pos, st, max_message, role, &mut on);
        if outcome == Ok(Flow::More) {
            carry.extend_from_slice(&data[pos.msg..pos.asm]);
            carry.extend_from_slice(&data[pos.at..]);
        }
        outcome
    } else {
        carry.extend_from_slice(data);
        let mut pos = Pos::resuming(st.assembled as usize);
        let outcome = walk(carry, &mut pos, st, max_message, role, &mut on);
        if outcome == Ok(Flow::More) {
            // Keep [msg..asm] ++ [at..], moved to the front.
            let tail = carry.len() - pos.at;
            carry.copy_within(pos.at.., pos.asm);
            carry.truncate(pos.asm + tail);
            carry.drain(..pos.msg);
        }
        outcome
    };
    match outcome {
        Ok(Flow::More) => {
            if carry.is_empty() {
                *carry = Vec::new(); // an idle connection keeps no buffer
            }
            Ok(())
        }
        Ok(Flow::Stop) => {
            *carry = Vec::new();
            *st = WsState::default();
            Ok(())
        }
        Err(e) => {
            *carry = Vec::new();
            *st = WsState::default();
            Err(e)
        }
    }
}

/// Steps through `buf` until more bytes are needed (`Ok(More)`), the callback stops, or an
/// error.
fn walk(
    buf: &mut [u8],
    pos: &mut Pos,
    st: &mut WsState,
    max_message: usize,
    role: Role,
    on: &mut impl FnMut(Inbound<'_>) -> Flow,
) -> Result<Flow, WsError> {
    loop {
        let inbound = match step(buf, pos, st, max_message, role)? {
            Step::Partial => return Ok(Flow::More),
            Step::Nothing => None,
            Step::Message(r) => Some(Inbound::Message(&buf[r])),
            Step::Ping(r) => Some(Inbound::Ping(&buf[r])),
            Step::Close(code) => Some(Inbound::Close(code)),
        };
        if let Some(inbound) = inbound {
            if on(inbound) == Flow::Stop {
                return Ok(Flow::Stop);
            }
        }
    }
}

/// A receive buffer that yields one message or control frame at a time (pull-style, for a
/// receiver that reads into its own buffer: the acceptor, the client).
///
/// Cancel-safe when used from async code: bytes count as received only once
/// [`MessageReader::filled`] is called after a completed read.
#[derive(Debug)]
pub struct MessageReader {
    /// `buf[..end]` holds received bytes; `pos` says which are assembled and which unparsed.
    buf: Vec<u8>,
    end: usize,
    pos: Pos,
    st: WsState,
    role: Role,
}

impl MessageReader {
    pub fn new(role: Role) -> MessageReader {
        MessageReader {
            buf: Vec::new(),
            end: 0,
            pos: Pos::default(),
            st: WsState::default(),
            role,
        }
    }

    /// The next message or control frame, if one is buffered (Pongs are skipped).
    pub fn next(&mut self, max_message: usize) -> Result<Option<Inbound<'_>>, WsError> {
        Ok(match self.next_step(max_message)? {
            Step::Message(r) => Some(Inbound::Message(&self.buf[r])),
            Step::Ping(r) => Some(Inbound::Ping(&self.buf[r])),
            Step::Close(code) => Some(Inbound::Close(code)),
            Step::Partial | Step::Nothing => None,
        })
    }

    /// [`MessageReader::next`] without the borrow: [`Step::Partial`] if nothing is buffered,
    /// else a message, Ping or Close whose bytes [`MessageReader::bytes`] gives. (For callers
    /// that return the payload from a loop that also reads.)
    pub fn next_step(&mut self, max_message: usize) -> Result<Step, WsError> {
        loop {
            let buf = &mut self.buf[..self.end];
            match step(buf, &mut self.pos, &mut self.st, max_message, self.role)? {
                Step::Nothing => continue,
                other => return Ok(other),
            }
        }
    }

    /// The bytes of a range from [`MessageReader::next_step`].
    pub fn bytes(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// Room for at least `min` more bytes: read into it, then call [`MessageReader::filled`].
    /// Moves what is kept (assembled fragments, unparsed bytes) to the front first.
    pub fn spare(&mut self, min: usize) -> &mut [u8] {
        let Pos { msg, asm, at } = self.pos;
        if msg > 0 || at > asm {
            self.buf.copy_within(msg..asm, 0);
            let assembled = asm - msg;
            self.buf.copy_within(at..self.end, assembled);
            self.end = assembled + (self.end - at);
            self.pos = Pos::resuming(assembled);
        }
        if self.buf.len() - self.end < min {
            self.buf.resize(self.end + min, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Counts `n` bytes read into [`MessageReader::spare`] as received.
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Appends bytes received elsewhere.
    pub fn extend(&mut self, data: &[u8]) {
        self.spare(data.len())[..data.len()].copy_from_slice(data);
        self.filled(data.len());
    }

    /// Received bytes not parsed yet, and the decoder state they continue from (what a
    /// hand-off carries to the connection's next reader).
    pub fn rest(&self) -> (&[u8], WsState) {
        (&self.buf[self.pos.at..self.end], self.st)
    }
}

/// The head of a server frame: an unmasked, final binary WebSocket frame carrying exactly one
/// FlatBuffers `Frame`.
#[derive(Debug, Clone, Copy, Default)]
pub struct WsHead;

impl FrameHead for WsHead {
    const MAX_LEN: usize = 10;

    fn write_head(&self, payload_len: usize, out: &mut Vec<u8>) {
        let header = FrameHeader {
            opcode: OpCode::Data(Data::Binary),
            ..FrameHeader::default()
        };
        // Writing into a Vec cannot fail.
        let _ = header.format(payload_len as u64, out);
    }
}

/// Appends `payload` as one masked binary message (what a client sends), masked by
/// tungstenite with a fresh random key.
pub fn write_masked(payload: &[u8], out: &mut Vec<u8>) {
    let mut frame = Frame::message(
        Bytes::copy_from_slice(payload),
        OpCode::Data(Data::Binary),
        true,
    );
    frame.header_mut().mask = Some(rand::random());
    // Writing into a Vec cannot fail.
    let _ = frame.format(out);
}

/// Appends the Pong answering a Ping with `payload` (server side: unmasked).
pub fn write_pong(payload: &[u8], out: &mut Vec<u8>) {
    let _ = Frame::pong(Bytes::copy_from_slice(payload)).format(out);
}

/// Appends a Close frame with `code` and a short ASCII `reason` (at most 123 bytes; RFC 6455
/// limits a control payload to 125).
pub fn write_close(code: u16, reason: &'static str, out: &mut Vec<u8>) {
    let reason = if reason.len() > 123 { "" } else { reason };
    let frame = Frame::close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }));
    let _ = frame.format(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame, masked by tungstenite.
    fn masked(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut frame = Frame::from_payload(
            FrameHeader {
                is_final: fin,
                opcode,
                mask: Some([0x12, 0x34, 0x56, 0x78]),
                ..FrameHeader::default()
            },
            Bytes::copy_from_slice(payload),
        );
        frame.header_mut().mask = Some(rand::random());
        let mut out = Vec::new();
        frame.format(&mut out).unwrap();
        out
    }

    const BIN: OpCode = OpCode::Data(Data::Binary);
    const CONT: OpCode = OpCode::Data(Data::Continue);

    #[derive(Debug, PartialEq)]
    enum Got {
        Msg(Vec<u8>),
        Ping(Vec<u8>),
        Close(Option<u16>),
    }

    fn feed_all(parts: &[&[u8]], max: usize) -> Result<(Vec<Got>, Vec<u8>, WsState), WsError> {
        let mut st = WsState::default();
        let mut carry = Vec::new();
        let mut got = Vec::new();
        for part in parts {
            let mut data = part.to_vec();
            feed(&mut st, &mut carry, &mut data, max, Role::Server, |i| {
                got.push(match i {
                    Inbound::Message(p) => Got::Msg(p.to_vec()),
                    Inbound::Ping(p) => Got::Ping(p.to_vec()),
                    Inbound::Close(c) => Got::Close(c),
                });
                Flow::More
            })?;
        }
        Ok((got, carry, st))
    }

    #[test]
    fn messages_fragments_and_control_frames_survive_every_split() {
        let mut bytes = masked(BIN, true, b"one");
        bytes.extend(masked(BIN, false, b"tw"));
        bytes.extend(masked(OpCode::Control(Control::Ping), true, b"hb"));
        bytes.extend(masked(CONT, false, b""));
        bytes.extend(masked(CONT, true, b"o!"));
        bytes.extend(masked(BIN, true, &[7u8; 300])); // 16-bit length
        bytes.extend(masked(OpCode::Control(Control::Pong), true, b""));
        bytes.extend(masked(
            OpCode::Control(Control::Close),
            true,
            &1000u16.to_be_bytes(),
        ));
        let want = vec![
            Got::Msg(b"one".to_vec()),
            Got::Ping(b"hb".to_vec()),
            Got::Msg(b"two!".to_vec()),
            Got::Msg(vec![7u8; 300]),
            Got::Close(Some(1000)),
        ];
        for cut in 0..=bytes.len() {
            let (got, carry, st) = feed_all(&[&bytes[..cut], &bytes[cut..]], 1024).unwrap();
            assert_eq!(got, want, "cut at {cut}");
            assert_eq!(
                carry.capacity(),
                0,
                "cut at {cut}: idle carry holds a buffer"
            );
            assert!(st.is_idle());
        }
        // Byte by byte.
        let parts: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(feed_all(&parts, 1024).unwrap().0, want);
    }

    #[test]
    fn between_reads_only_the_fragments_and_a_partial_frame_are_kept() {
        let first = masked(BIN, false, b"abc");
        let second = masked(CONT, true, b"def");
        let mut data = first.clone();
        data.extend_from_slice(&second[..3]);
        let (got, carry, st) = feed_all(&[&data], 1024).unwrap();
        assert!(got.is_empty());
        assert_eq!(st.assembled, 3);
        assert_eq!(
            &carry[..3],
            b"abc",
            "assembled payload, unmasked, at the front"
        );
        assert_eq!(&carry[3..], &second[..3], "then the raw partial frame");
    }

    #[test]
    fn refusals_come_from_the_header_alone() {
        let text = masked(OpCode::Data(Data::Text), true, b"hello");
        assert_eq!(feed_all(&[&text[..6]], 1024).unwrap_err(), WsError::Text);
        let big = masked(BIN, true, &[0u8; 2000]);
        assert_eq!(
            feed_all(&[&big[..8]], 1024).unwrap_err(),
            WsError::TooLarge {
                len: 2000,
                max: 1024
            }
        );
        // Fragments adding up past the limit.
        let mut frags = masked(BIN, false, &[0u8; 600]);
        frags.extend(masked(CONT, true, &[0u8; 600]));
        assert!(matches!(
            feed_all(&[&frags], 1024).unwrap_err(),
            WsError::TooLarge { len: 1200, .. }
        ));
        let mut unmasked = Vec::new();
        Frame::message(Bytes::from_static(b"x"), BIN, true)
            .format(&mut unmasked)
            .unwrap();
        assert!(matches!(
            feed_all(&[&unmasked], 1024),
            Err(WsError::Protocol(_))
        ));
        let stray = masked(CONT, true, b"x");
        assert!(matches!(
            feed_all(&[&stray], 1024),
            Err(WsError::Protocol(_))
        ));
        let long_ping = masked(OpCode::Control(Control::Ping), true, &[0u8; 126]);
        assert!(matches!(
            feed_all(&[&long_ping], 1024),
            Err(WsError::Protocol(_))
        ));
        let mut rsv = masked(BIN, true, b"x");
        rsv[0] |= 0x40;
        assert!(matches!(feed_all(&[&rsv], 1024), Err(WsError::Protocol(_))));
        let mut reserved = masked(BIN, true, b"x");
        reserved[0] = (reserved[0] & 0xf0) | 0x3;
        assert!(matches!(
            feed_all(&[&reserved], 1024),
            Err(WsError::Protocol(_))
        ));
    }

    #[test]
    fn server_frames_are_read_back_by_the_client_reader() {
        let mut out = Vec::new();
        for payload in [&b"a"[..], &[9u8; 200][..], &[1u8; 70_000][..]] {
            let mut framed = Vec::new();
            WsHead.write_head(payload.len(), &mut framed);
            framed.extend_from_slice(payload);
            out.extend(framed);
        }
        write_close(close::GOING_AWAY, "SHUTDOWN", &mut out);
        let mut r = MessageReader::new(Role::Client);
        let mut got = Vec::new();
        for chunk in out.chunks(777) {
            r.extend(chunk);
            while let Some(i) = r.next(1 << 20).unwrap() {
                got.push(match i {
                    Inbound::Message(p) => p.len(),
                    Inbound::Close(c) => c.map_or(0, usize::from),
                    Inbound::Ping(_) => panic!("no ping sent"),
                });
            }
        }
        assert_eq!(got, vec![1, 200, 70_000, 1001]);
        // A client frame is masked; the server-side decoder takes it.
        let mut masked_out = Vec::new();
        write_masked(b"login", &mut masked_out);
        let (got, _, _) = feed_all(&[&masked_out], 1024).unwrap();
        assert_eq!(got, vec![Got::Msg(b"login".to_vec())]);
    }

    #[test]
    fn message_reader_keeps_what_follows_a_message() {
        let mut r = MessageReader::new(Role::Server);
        let mut bytes = masked(BIN, true, b"login");
        let next = masked(BIN, true, b"send");
        bytes.extend_from_slice(&next[..4]);
        r.extend(&bytes);
        assert!(matches!(
            r.next(1024).unwrap(),
            Some(Inbound::Message(b"login"))
        ));
        assert_eq!(r.next(1024).unwrap().map(|_| ()), None);
        let (rest, st) = r.rest();
        assert_eq!(rest, &next[..4]);
        assert!(st.is_idle());
    }
}

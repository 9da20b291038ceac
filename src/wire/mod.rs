//! Transports for client connections: how frames are delimited on a connection's byte
//! stream, and the HTTP side of WebSocket connections.
//!
//! | module | concern |
//! |---|---|
//! | this file | [`Framing`]: one connection's framing (TCP or WebSocket) with its decode and encode hooks |
//! | [`ws`] | WebSocket frames: the decoder (push and pull style), headers, masking, control frames, close codes |
//! | [`tls`] | TLS sessions (rustls, unbuffered): the server config from PEM files, decrypt/encrypt per connection |
//! | [`upgrade`] | the HTTP/1.1 request on the WebSocket port: parse, route (`/ws`, the chat page, 404), origin policy, responses |
//! | [`web`] | the chat page's files, embedded in the binary, served on `GET /` |
//!
//! A connection's protocol is layered:
//!
//! ```text
//!   FlatBuffers Frame  (crate::protocol: decode_client / encode_server_with)
//!   Framing            (this module: u32 prefix on TCP, one binary message per Frame on WS)
//!   bytes on the socket
//! ```
//!
//! The owner shard keeps a connection's [`Framing`] in its record (a few bytes: which
//! transport, and for WebSocket whether a fragmented message is half-read); the session hands
//! every read to [`Framing::decode`] and every outbound frame is encoded with the framing as
//! its [`FrameHead`], so the payload is copied once, from the FlatBuffers builder into the
//! connection's queue, whatever the transport. At hand-off the framing travels with the fd and
//! the bytes already read.
//!
//! ## TLS
//!
//! TLS sits *below* the framing, as a second per-connection layer ([`tls`]): with `[tls]` on,
//! the accepting shard completes the handshake (rustls, unbuffered: the session owns no byte
//! buffers) before the HTTP upgrade or the Login, and the connection's
//! [`tls::ServerTls`] — rustls' state machine and keys, plus a partial record if one is
//! pending — travels in the hand-off beside the framing and the fd. The owner shard decrypts
//! each read (socket → the shard's read buffer → rustls → a shared plaintext buffer →
//! [`Framing::decode`]) and seals the connection's queued frames at each flush, so a burst is
//! still one `send(2)`; idle, a connection holds its rustls state and no buffers. Both
//! transports (TCP and WebSocket, i.e. `wss://`) get TLS the same way, and nothing in the
//! framing changes.
//!
//! Kernel TLS (kTLS) was the other way to let the session move with the fd: after the
//! handshake the keys would be handed to the kernel and the owner would read and write plain
//! bytes. It was not chosen: the kernels this project runs on (here: no `tls` in
//! `net.ipv4.tcp_available_ulp`) do not always have the `tls` module, receiving under kTLS
//! needs control messages for every non-data record (alerts, KeyUpdate), and a user-space
//! fallback would be needed anyway. rustls' state is plain owned data, so moving it between
//! shards costs one pointer in the envelope.

pub mod tls;
pub mod upgrade;
pub mod web;
pub mod ws;

use crate::protocol::{self, Code, CodecError, Flow, FrameHead, LenPrefix};
use ws::{Inbound, WsError, WsHead, WsState};

/// How frames are delimited on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// u32 little-endian length + FlatBuffers `Frame` (see `protocol`).
    #[default]
    Tcp,
    /// One binary WebSocket message per `Frame`, after an HTTP upgrade.
    WebSocket(WsState),
}

/// Why a connection's bytes were refused: the Error frame's code, its message, and for
/// WebSocket the close code that follows it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Ws(#[from] WsError),
}

impl DecodeError {
    pub fn code(&self) -> Code {
        match self {
            DecodeError::Codec(e) => e.code(),
            DecodeError::Ws(e) => e.code(),
        }
    }

    /// The WebSocket close code that goes with this refusal.
    pub fn close_code(&self) -> u16 {
        match self {
            DecodeError::Codec(e) => ws::close_code_for(e.code()),
            DecodeError::Ws(e) => e.close_code(),
        }
    }
}

impl Framing {
    pub fn is_websocket(&self) -> bool {
        matches!(self, Framing::WebSocket(_))
    }

    /// Decodes `carry ++ data` (`carry`: what the connection kept from earlier reads), handing
    /// each complete frame's payload — and on WebSocket each Ping and Close — to `on`, and
    /// keeps a trailing incomplete part in `carry` (see `protocol::reader::feed` and
    /// [`ws::feed`]). `data` is mutable because WebSocket payloads are unmasked in place.
    pub fn decode(
        &mut self,
        carry: &mut Vec<u8>,
        data: &mut [u8],
        max_frame: usize,
        mut on: impl FnMut(Inbound<'_>) -> Flow,
    ) -> Result<(), DecodeError> {
        match self {
            Framing::Tcp => {
                protocol::reader::feed(carry, data, max_frame, |payload| {
                    on(Inbound::Message(payload))
                })?;
            }
            Framing::WebSocket(st) => {
                ws::feed(st, carry, data, max_frame, ws::Role::Server, &mut on)?;
            }
        }
        Ok(())
    }

    /// Appends what closes the connection after a final Error/GoAway frame for `code`: on
    /// WebSocket a Close frame with the matching close code (`close` overrides it); nothing on
    /// TCP, where the TCP close follows.
    pub fn write_close(&self, code: Code, close: Option<u16>, out: &mut Vec<u8>) {
        if self.is_websocket() {
            let close = close.unwrap_or_else(|| ws::close_code_for(code));
            ws::write_close(close, protocol::code_name(code), out);
        }
    }
}

impl FrameHead for Framing {
    const MAX_LEN: usize = ws::MAX_HEADER;

    fn write_head(&self, payload_len: usize, out: &mut Vec<u8>) {
        match self {
            Framing::Tcp => LenPrefix.write_head(payload_len, out),
            Framing::WebSocket(_) => WsHead.write_head(payload_len, out),
        }
    }
}

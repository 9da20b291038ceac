//! Accepting on the WebSocket port (`server.ws_listen`): the HTTP request, the upgrade, then
//! the Login message, all within `login_timeout`; from there on the connection takes the TCP
//! path (`acceptor::finish`: verify, hand off), its framing travelling with it.
//!
//! 1. Read the request head (at most `wire::upgrade::MAX_REQUEST_HEAD` bytes) and let
//!    [`upgrade::route`] decide: the chat page, 403/404/4xx, or `101` for `GET /ws`. Anything
//!    but an upgrade is answered and closed. A head still incomplete at `login_timeout` gets
//!    `408` (slowloris).
//! 2. After `101`: read WebSocket frames until the first binary message, which must be a
//!    Login (Pings are answered meanwhile). Bytes after it — pipelined frames — are handed to
//!    the owner shard as they are, with the decoder's state.
//!
//! With `[tls]` on, the TLS handshake comes first and everything above runs inside it
//! (`wss://`; see [`super::link`]). A connection the gate refused (`max_connections`, pending
//! logins per address) is answered `503` with SERVER_BUSY in the body, before any upgrade.
//!
//! Refusals after the upgrade are an Error frame in a binary message, then a Close frame with
//! the matching close code (e.g. 1003 for a text message, 1009 for one over `max_frame`,
//! 1008 for a bad token), then the TCP close.

use std::cell::Cell;
use std::net::IpAddr;
use std::rc::Rc;

use futures_lite::future;
use glommio::net::TcpStream;

use super::acceptor::{admit, finish, login_from, open_link, Login, Refusal};
use super::gate::Slot;
use super::link::Link;
use super::session::linger_close;
use super::state::Shard;
use crate::protocol::FrameReader;
use crate::wire::upgrade::{self, Route};
use crate::wire::ws::{self, Inbound, MessageReader, Role};
use crate::wire::Framing;

/// Request heads up to this long are parsed on every read; longer ones once complete.
const EAGER_PARSE: usize = 1024;

/// How the WebSocket port's first phase ended.
enum Phase {
    /// Not an upgrade: write this HTTP answer, then close.
    Answer(Vec<u8>),
    /// Upgraded; the Login, or why not.
    Login(Result<Login, Refusal>),
}

/// Serves one connection accepted on the WebSocket port (see the module doc). A connection
/// the gate refused (`slot` None, or too many pending logins from `peer`) is answered 503.
pub async fn login(
    shard: Rc<Shard>,
    stream: TcpStream,
    peer: Option<IpAddr>,
    slot: Option<Slot>,
    accepted_ns: u64,
) {
    let timeout = shard.cfg.limits.login_timeout;
    let admitted = admit(&shard, peer, slot);
    let Some(mut link) = open_link(&shard, stream) else {
        return;
    };
    let busy = admitted.as_ref().err().cloned();
    let upgraded = Cell::new(false);
    let work = async {
        if let Err(r) = link.handshake().await {
            return Some(Phase::Login(Err(r)));
        }
        match busy {
            Some(why) => Some(Phase::Answer(upgrade::server_busy(&why))),
            None => Some(upgrade_then_login(&shard, &mut link, &upgraded).await),
        }
    };
    let expire = async {
        glommio::timer::sleep(timeout).await;
        None
    };
    let framing = Framing::WebSocket(ws::WsState::default());
    let outcome = future::or(work, expire).await;
    let (slot, _pending) = match admitted {
        Ok((slot, pending)) => (Some(slot), pending),
        Err(_) => (None, None),
    };
    match outcome {
        Some(Phase::Login(outcome)) => {
            finish(&shard, link, framing, Some(outcome), slot, accepted_ns).await
        }
        Some(Phase::Answer(response)) => answer(link, &response).await,
        None if upgraded.get() => finish(&shard, link, framing, None, slot, accepted_ns).await,
        None => answer(link, &upgrade::request_timeout()).await,
    }
}

/// Writes an HTTP answer and closes (nothing can be written before a TLS handshake is done).
async fn answer(mut link: Link, response: &[u8]) {
    if link.can_write() && link.write_all(response, true).await.is_ok() {
        linger_close(&mut link.stream).await;
    }
}

async fn upgrade_then_login(shard: &Shard, link: &mut Link, upgraded: &Cell<bool>) -> Phase {
    let origins = &shard.cfg.server.ws_allowed_origins;
    let mut head = FrameReader::new();
    let mut searched = 0usize;
    let route = loop {
        // Parse the first KiB as it comes (bytes that are not HTTP are answered at once), and
        // past it only once the head looks complete (or too long): a client trickling bytes
        // in must not make us re-parse a long head for each one.
        let buffered = head.buffered();
        let from = searched.saturating_sub(3);
        let complete = buffered[from..].windows(4).any(|w| w == b"\r\n\r\n");
        searched = buffered.len();
        if complete || buffered.len() <= EAGER_PARSE || buffered.len() > upgrade::MAX_REQUEST_HEAD {
            if let Some(route) = upgrade::route(buffered, origins) {
                break route;
            }
        }
        if let Err(r) = link.read_more(&mut head).await {
            return Phase::Login(Err(r));
        }
    };
    let (response, head_len) = match route {
        Route::Answer { response, status } => {
            tracing::debug!(
                shard = shard.id,
                status,
                "websocket port: answered and closing"
            );
            return Phase::Answer(response);
        }
        Route::Upgrade { response, head_len } => (response, head_len),
    };
    if link.write_all(&response, false).await.is_err() {
        return Phase::Login(Err(Refusal::Gone));
    }
    upgraded.set(true);
    let mut reader = MessageReader::new(Role::Server);
    reader.extend(&head.buffered()[head_len..]);
    Phase::Login(read_login(link, &mut reader, shard.cfg.limits.max_frame).await)
}

/// Reads WebSocket frames until the first message, which must be a Login.
async fn read_login(
    link: &mut Link,
    reader: &mut MessageReader,
    max_frame: usize,
) -> Result<Login, Refusal> {
    loop {
        let mut reply = Vec::new();
        let mut peer_closed = false;
        let login = match reader.next(max_frame) {
            Err(e) => return Err(Refusal::Ws(e)),
            Ok(None) => None,
            Ok(Some(Inbound::Message(payload))) => Some(login_from(payload)?),
            Ok(Some(Inbound::Ping(payload))) => {
                ws::write_pong(payload, &mut reply);
                None
            }
            Ok(Some(Inbound::Close(code))) => {
                ws::write_close(code.unwrap_or(ws::close::NORMAL), "", &mut reply);
                peer_closed = true;
                None
            }
        };
        if let Some(login) = login {
            let (rest, st) = reader.rest();
            return Ok(Login {
                framing: Framing::WebSocket(st),
                leftover: rest.to_vec(),
                ..login
            });
        }
        if !reply.is_empty() {
            link.write_all(&reply, peer_closed)
                .await
                .map_err(|_| Refusal::Gone)?;
            if peer_closed {
                return Err(Refusal::Gone);
            }
            continue;
        }
        link.read_more(reader).await?;
    }
}

//! Accepting connections: read the Login frame, verify the token, hand the connection to the
//! shard that owns the user.
//!
//! Every shard accepts on the same address (SO_REUSEPORT, so the kernel spreads connections).
//! The accepting shard only ever reads the Login frame (within `login_timeout`); if another
//! shard owns the user, it duplicates the fd, closes its own copy and sends the fd plus any
//! bytes it read past the Login frame through the mesh. From then on the owner does all I/O.
//!
//! The WebSocket port ([`Port::WebSocket`]) takes the same path after an HTTP upgrade (see
//! [`super::ws_accept`]); the connection's framing travels with it.
//!
//! Before any of that, the gate ([`super::gate`]) admits the connection: a place under
//! `limits.max_connections` and under the source address's share of
//! `max_pending_logins_per_ip`; a connection refused there is told SERVER_BUSY and closed.
//! With `[tls]` on, every read and write goes through the connection's TLS session
//! ([`super::link`]), whose handshake comes first; the session travels with the hand-off.

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future;
use futures_lite::io::AsyncReadExt;
use glommio::net::{TcpListener, TcpStream};

use super::conn::recv_nonblocking;
use super::envelope::{Envelope, Handoff};
use super::gate::{PendingGuard, Slot};
use super::link::Link;
use super::routing::owner;
use super::session::{self, linger_close};
use super::state::Shard;
use super::ws_accept;
use crate::auth::AuthError;
use crate::metrics::login_stages::LoginStamps;
use crate::metrics::stages::now_ns;
use crate::protocol::{self, ClientMsg, Code, FrameReader, ServerMsg};
use crate::wire::ws::{MessageReader, WsError};
use crate::wire::Framing;

/// Bytes asked of the socket per read while waiting for the Login frame.
const LOGIN_READ: usize = 1024;
/// Pause after accept(2) fails (e.g. EMFILE), so a full fd table does not spin the shard.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(20);

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// `server.listen`: length-prefixed frames from the first byte.
    Tcp,
    /// `server.ws_listen`: an HTTP request first (see [`super::ws_accept`]).
    WebSocket,
}

/// A Login frame, owned.
pub(super) struct Login {
    pub token: String,
    pub device_id: String,
    pub last_seq: u64,
    /// The connection's framing after the Login (with the WebSocket decoder's state).
    pub framing: Framing,
    pub leftover: Vec<u8>,
    /// When the connection was accepted and its Login frame read (`ringpost_login_stage_seconds`).
    pub stamps: LoginStamps,
}

/// Why no Login came through.
pub(super) enum Refusal {
    /// Tell the client this and close.
    Frame(Code, String),
    /// The client's WebSocket frames are not acceptable: tell it, close with its close code.
    Ws(WsError),
    /// Plaintext on a TLS port: say so in plaintext and close.
    NotTls,
    /// The client went away, or was already answered; nothing to say.
    Gone,
}

/// Accepts until the task is stopped (dropping it closes nothing but the pending accept).
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, port: Port) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let accepted_ns = now_ns();
                let _ = stream.set_nodelay(true);
                let peer = stream.peer_addr().ok().map(|a| a.ip());
                let slot = shard.gate.connections.admit();
                let task = match port {
                    Port::Tcp => {
                        glommio::spawn_local(login(shard.clone(), stream, peer, slot, accepted_ns))
                    }
                    Port::WebSocket => glommio::spawn_local(ws_accept::login(
                        shard.clone(),
                        stream,
                        peer,
                        slot,
                        accepted_ns,
                    )),
                };
                task.detach();
            }
            Err(e) => {
                tracing::warn!(shard = shard.id, error = %e, "accept failed");
                glommio::timer::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

/// The gate's verdict on a new connection: its place under `max_connections` and its
/// source's pending-login count, or why it is refused (SERVER_BUSY).
pub(super) fn admit(
    shard: &Shard,
    peer: Option<IpAddr>,
    slot: Option<Slot>,
) -> Result<(Slot, Option<PendingGuard<'_>>), String> {
    let Some(slot) = slot else {
        let max = shard.gate.connections.max();
        return Err(format!(
            "the broker holds its limit of {max} connections (limits.max_connections)"
        ));
    };
    let Some(ip) = peer else {
        return Ok((slot, None));
    };
    match shard.gate.pending.admit(ip) {
        Some(guard) => Ok((slot, Some(guard))),
        None => Err(format!(
            "{ip} has too many connections that have not logged in yet (limits.max_pending_logins_per_ip; {} per shard)",
            shard.gate.pending.share()
        )),
    }
}

/// The connection as the acceptor reads and writes it: plain, or with a new TLS session
/// under the current certificate. None: TLS could not be set up (logged).
pub(super) fn open_link(shard: &Shard, stream: TcpStream) -> Option<Link> {
    let Some(tls) = &shard.gate.tls else {
        return Some(Link::plain(stream));
    };
    match Link::tls(stream, tls.get()) {
        Ok(link) => Some(link),
        Err(e) => {
            tracing::warn!(shard = shard.id, error = %e, "cannot start a TLS session");
            None
        }
    }
}

/// Serves one connection accepted (at `accepted_ns`) on the TCP port until it is handed off
/// or refused.
async fn login(
    shard: Rc<Shard>,
    stream: TcpStream,
    peer: Option<IpAddr>,
    slot: Option<Slot>,
    accepted_ns: u64,
) {
    let limits = &shard.cfg.limits;
    let timeout = limits.login_timeout;
    let admitted = admit(&shard, peer, slot);
    let Some(mut link) = open_link(&shard, stream) else {
        return;
    };
    let busy = admitted.as_ref().err().cloned();
    let read = async {
        if let Err(r) = link.handshake().await {
            return Some(Err(r));
        }
        match busy {
            Some(why) => Some(Err(Refusal::Frame(Code::SERVER_BUSY, why))),
            None => Some(read_login(&mut link, limits.max_frame).await),
        }
    };
    let expire = async {
        glommio::timer::sleep(timeout).await;
        None
    };
    let outcome = future::or(read, expire).await;
    let (slot, _pending) = match admitted {
        Ok((slot, pending)) => (Some(slot), pending),
        Err(_) => (None, None),
    };
    finish(&shard, link, Framing::Tcp, outcome, slot, accepted_ns).await;
}

/// After the Login phase (`None`: it timed out): verifies the token and hands the connection
/// off, or tells the client why not (framed as the connection is) and closes. `slot` is the
/// connection's place under `max_connections` (None: it was refused one); `accepted_ns`, when
/// accept(2) returned it.
pub(super) async fn finish(
    shard: &Rc<Shard>,
    mut link: Link,
    framing: Framing,
    outcome: Option<Result<Login, Refusal>>,
    slot: Option<Slot>,
    accepted_ns: u64,
) {
    super::connections::churned();
    let timeout = shard.cfg.limits.login_timeout;
    let refusal = match (outcome, slot) {
        (None, _) => Refusal::Frame(
            Code::LOGIN_TIMEOUT,
            format!("no Login frame within {} ms", timeout.as_millis()),
        ),
        (Some(Err(r)), _) => r,
        (Some(Ok(_)), None) => Refusal::Frame(Code::SERVER_BUSY, "the broker is busy".into()),
        (Some(Ok(mut login)), Some(slot)) => match verify(shard, &login) {
            Ok(user) => {
                if shard.draining.get() {
                    Refusal::Frame(Code::SHUTDOWN, "broker is shutting down".into())
                } else {
                    shard.metrics.logins.inc(Code::OK);
                    login.stamps.accepted_ns = accepted_ns;
                    hand_off(shard, link, user, login, slot).await;
                    return;
                }
            }
            Err(r) => r,
        },
    };
    note_refusal(shard, &link.stream, &refusal);
    let (code, message, close) = match refusal {
        Refusal::Frame(code, message) => (code, message, None),
        Refusal::Ws(e) => (e.code(), e.to_string(), Some(e.close_code())),
        Refusal::NotTls => {
            let answer = match framing {
                Framing::Tcp => {
                    let mut out = Vec::new();
                    let msg = ServerMsg::Error {
                        code: Code::MALFORMED_FRAME,
                        message:
                            "this port speaks TLS: connect with TLS (the broker's [tls] is on)",
                    };
                    protocol::encode_server_with(&msg, &Framing::Tcp, &mut out);
                    out
                }
                Framing::WebSocket(_) => crate::wire::upgrade::tls_required(),
            };
            if link.write_plain(&answer).await.is_ok() {
                linger_close(&mut link.stream).await;
            }
            return;
        }
        Refusal::Gone => return,
    };
    if !link.can_write() {
        return; // the TLS handshake never completed: there is no channel to answer on
    }
    let mut out = Vec::new();
    let msg = if code == Code::SHUTDOWN {
        ServerMsg::GoAway {
            code,
            reason: &message,
        }
    } else {
        ServerMsg::Error {
            code,
            message: &message,
        }
    };
    protocol::encode_server_with(&msg, &framing, &mut out);
    framing.write_close(code, close, &mut out);
    if link.write_all(&out, true).await.is_ok() {
        linger_close(&mut link.stream).await;
    }
}

/// The Login in a first frame's `payload` (framing and leftover still to be filled in).
pub(super) fn login_from(payload: &[u8]) -> Result<Login, Refusal> {
    match protocol::decode_client(payload) {
        Ok(ClientMsg::Login {
            token,
            device_id,
            last_seq,
        }) => Ok(Login {
            token: token.to_owned(),
            device_id: device_id.to_owned(),
            last_seq,
            framing: Framing::Tcp,
            leftover: Vec::new(),
            stamps: LoginStamps {
                accepted_ns: 0,
                read_ns: now_ns(),
            },
        }),
        Ok(_) => Err(Refusal::Frame(
            Code::NOT_LOGGED_IN,
            "the first frame must be Login".into(),
        )),
        Err(e) => Err(Refusal::Frame(e.code(), e.to_string())),
    }
}

/// Counts a failed login and logs it (one line per refusal, at info).
fn note_refusal(shard: &Shard, stream: &TcpStream, refusal: &Refusal) {
    let peer = stream.peer_addr().ok();
    match refusal {
        Refusal::Frame(code, message) => {
            shard.metrics.logins.inc(*code);
            if *code == Code::SHUTDOWN {
                shard.metrics.goaway.inc(*code); // `login` answers this one with a GoAway
            }
            tracing::info!(shard = shard.id, peer = ?peer, code = protocol::code_name(*code), reason = %message, "login refused");
        }
        Refusal::Ws(e) => {
            shard.metrics.logins.inc(e.code());
            tracing::info!(shard = shard.id, peer = ?peer, code = protocol::code_name(e.code()), reason = %e, "login refused");
        }
        Refusal::NotTls => {
            shard.metrics.logins.inc(Code::MALFORMED_FRAME);
            tracing::info!(shard = shard.id, peer = ?peer, "login refused: plaintext on a TLS port");
        }
        Refusal::Gone => {
            shard.metrics.logins_abandoned.inc();
            tracing::debug!(shard = shard.id, peer = ?peer, "connection closed before Login");
        }
    }
}

/// Reads until one complete frame is buffered; it must be a Login.
async fn read_login(link: &mut Link, max_frame: usize) -> Result<Login, Refusal> {
    let mut frames = FrameReader::new();
    loop {
        let login = match frames.next_frame(max_frame) {
            Err(e) => return Err(Refusal::Frame(e.code(), e.to_string())),
            Ok(Some(payload)) => login_from(payload)?,
            Ok(None) => {
                link.read_more(&mut frames).await?;
                continue;
            }
        };
        return Ok(Login {
            leftover: frames.buffered().to_vec(),
            ..login
        });
    }
}

/// A receive buffer the acceptor reads into.
pub(super) trait RecvBuf {
    /// Room for at least `min` more bytes.
    fn spare(&mut self, min: usize) -> &mut [u8];
    /// `n` bytes were read into the room.
    fn filled(&mut self, n: usize);
    fn extend(&mut self, data: &[u8]);
}

impl RecvBuf for FrameReader {
    fn spare(&mut self, min: usize) -> &mut [u8] {
        FrameReader::spare(self, min)
    }
    fn filled(&mut self, n: usize) {
        FrameReader::filled(self, n)
    }
    fn extend(&mut self, data: &[u8]) {
        FrameReader::extend(self, data)
    }
}

impl RecvBuf for MessageReader {
    fn spare(&mut self, min: usize) -> &mut [u8] {
        MessageReader::spare(self, min)
    }
    fn filled(&mut self, n: usize) {
        MessageReader::filled(self, n)
    }
    fn extend(&mut self, data: &[u8]) {
        MessageReader::extend(self, data)
    }
}

/// Waits for input, then takes everything the socket holds, into `frames`.
///
/// Waits with a 1-byte read, then takes the rest without waiting. glommio arms a fresh
/// readiness poll after any read that leaves its buffer unfilled; that poll would still be
/// pending when the stream is dropped at hand-off, and cancelling it walks the ring's poll hash
/// chain, which holds every connection of this shard (at 19k connections that was 18% of the
/// CPU of a login storm).
pub(super) async fn read_more(
    stream: &mut TcpStream,
    frames: &mut impl RecvBuf,
) -> Result<(), Refusal> {
    let mut first = [0u8; 1];
    match stream.read(&mut first).await {
        Ok(0) | Err(_) => return Err(Refusal::Gone),
        Ok(_) => frames.extend(&first),
    }
    loop {
        let room = frames.spare(LOGIN_READ);
        let room_len = room.len();
        match recv_nonblocking(stream.as_raw_fd(), room) {
            Ok(n) if n > 0 => {
                frames.filled(n);
                if n < room_len {
                    return Ok(());
                }
            }
            // End of stream: the next wait reads 0 and refuses.
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err(Refusal::Gone),
        }
    }
}

fn verify(shard: &Shard, login: &Login) -> Result<Arc<str>, Refusal> {
    if login.device_id.len() > protocol::MAX_DEVICE_ID {
        return Err(Refusal::Frame(
            Code::MALFORMED_FRAME,
            format!(
                "device_id is {} bytes; the limit is {}",
                login.device_id.len(),
                protocol::MAX_DEVICE_ID
            ),
        ));
    }
    match shard.gate.verifier.with(|v| v.verify(&login.token)) {
        Ok(user) => Ok(Arc::from(user)),
        Err(AuthError::Expired) => Err(Refusal::Frame(
            Code::TOKEN_EXPIRED,
            "login token has expired".into(),
        )),
        Err(e) => Err(Refusal::Frame(Code::AUTH_FAILED, e.to_string())),
    }
}

async fn hand_off(shard: &Rc<Shard>, link: Link, user: Arc<str>, login: Login, slot: Slot) {
    let framing = login.framing;
    let dest = owner(&user, shard.shards);
    let device_id = login.device_id.into_boxed_str();
    // glommio streams cannot give up their fd, so the owner (this shard or another) gets a
    // duplicate and ours closes. The stream has no ring operation pending (see read_login),
    // so closing it cancels nothing.
    let Link { stream, tls, .. } = link;
    let fd = match super::park::dup_fd(stream.as_raw_fd()) {
        Ok(fd) => fd,
        Err(err) => {
            tracing::warn!(shard = shard.id, error = %err, "dup failed during hand-off");
            return; // dropping the stream closes the connection; the client reconnects
        }
    };
    drop(stream);
    let handoff = Handoff {
        fd,
        user,
        device_id,
        last_seq: login.last_seq,
        framing,
        leftover: login.leftover,
        stamps: login.stamps,
        tls,
        slot: Some(slot),
    };
    if dest == shard.id {
        session::start_handoff(shard, handoff);
        return;
    }
    shard.mesh.wait_for_space().await;
    shard.mesh.push(dest, Envelope::Handoff(handoff));
}

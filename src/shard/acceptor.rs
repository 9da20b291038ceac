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

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use super::conn::recv_nonblocking;
use super::envelope::{Envelope, Handoff};
use super::routing::owner;
use super::session::{self, linger_close};
use super::state::Shard;
use super::ws_accept;
use crate::auth::AuthError;
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
}

/// Why no Login came through.
pub(super) enum Refusal {
    /// Tell the client this and close.
    Frame(Code, String),
    /// The client's WebSocket frames are not acceptable: tell it, close with its close code.
    Ws(WsError),
    /// The client went away, or was already answered; nothing to say.
    Gone,
}

/// Accepts until the task is stopped (dropping it closes nothing but the pending accept).
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, port: Port) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let task = match port {
                    Port::Tcp => glommio::spawn_local(login(shard.clone(), stream)),
                    Port::WebSocket => {
                        glommio::spawn_local(ws_accept::login(shard.clone(), stream))
                    }
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

async fn login(shard: Rc<Shard>, mut stream: TcpStream) {
    let limits = &shard.cfg.limits;
    let timeout = limits.login_timeout;
    let read = async { Some(read_login(&mut stream, limits.max_frame).await) };
    let expire = async {
        glommio::timer::sleep(timeout).await;
        None
    };
    let outcome = future::or(read, expire).await;
    finish(&shard, stream, Framing::Tcp, outcome).await;
}

/// After the Login phase (`None`: it timed out): verifies the token and hands the connection
/// off, or tells the client why not (framed as the connection is) and closes.
pub(super) async fn finish(
    shard: &Rc<Shard>,
    mut stream: TcpStream,
    framing: Framing,
    outcome: Option<Result<Login, Refusal>>,
) {
    let timeout = shard.cfg.limits.login_timeout;
    let refusal = match outcome {
        None => Refusal::Frame(
            Code::LOGIN_TIMEOUT,
            format!("no Login frame within {} ms", timeout.as_millis()),
        ),
        Some(Err(r)) => r,
        Some(Ok(login)) => match verify(shard, &login) {
            Ok(user) => {
                if shard.draining.get() {
                    Refusal::Frame(Code::SHUTDOWN, "broker is shutting down".into())
                } else {
                    shard.metrics.logins.inc(Code::OK);
                    hand_off(shard, stream, user, login).await;
                    return;
                }
            }
            Err(r) => r,
        },
    };
    note_refusal(shard, &stream, &refusal);
    let (code, message, close) = match refusal {
        Refusal::Frame(code, message) => (code, message, None),
        Refusal::Ws(e) => (e.code(), e.to_string(), Some(e.close_code())),
        Refusal::Gone => return,
    };
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
    if stream.write_all(&out).await.is_ok() {
        linger_close(&mut stream).await;
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
        Refusal::Gone => {
            shard.metrics.logins_abandoned.inc();
            tracing::debug!(shard = shard.id, peer = ?peer, "connection closed before Login");
        }
    }
}

/// Reads until one complete frame is buffered; it must be a Login.
async fn read_login(stream: &mut TcpStream, max_frame: usize) -> Result<Login, Refusal> {
    let mut frames = FrameReader::new();
    loop {
        let login = match frames.next_frame(max_frame) {
            Err(e) => return Err(Refusal::Frame(e.code(), e.to_string())),
            Ok(Some(payload)) => login_from(payload)?,
            Ok(None) => {
                read_more(stream, &mut frames).await?;
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
    match shard.verifier.verify(&login.token) {
        Ok(user) => Ok(Arc::from(user)),
        Err(AuthError::Expired) => Err(Refusal::Frame(
            Code::TOKEN_EXPIRED,
            "login token has expired".into(),
        )),
        Err(e) => Err(Refusal::Frame(Code::AUTH_FAILED, e.to_string())),
    }
}

async fn hand_off(shard: &Rc<Shard>, stream: TcpStream, user: Arc<str>, login: Login) {
    let framing = login.framing;
    let dest = owner(&user, shard.shards);
    let device_id = login.device_id.into_boxed_str();
    // glommio streams cannot give up their fd, so the owner (this shard or another) gets a
    // duplicate and ours closes. The stream has no ring operation pending (see read_login),
    // so closing it cancels nothing.
    let fd = match super::park::dup_fd(stream.as_raw_fd()) {
        Ok(fd) => fd,
        Err(err) => {
            tracing::warn!(shard = shard.id, error = %err, "dup failed during hand-off");
            return; // dropping the stream closes the connection; the client reconnects
        }
    };
    drop(stream);
    if dest == shard.id {
        session::start(
            shard,
            fd,
            framing,
            user,
            device_id,
            login.last_seq,
            login.leftover,
        );
        return;
    }
    shard.mesh.wait_for_space().await;
    shard.mesh.push(
        dest,
        Envelope::Handoff(Handoff {
            fd,
            user,
            device_id,
            last_seq: login.last_seq,
            framing,
            leftover: login.leftover,
        }),
    );
}

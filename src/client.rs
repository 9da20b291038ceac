//! An async client for the ringpost protocol, on glommio (used by the tests and the tools).
//!
//! ```text
//! let mut c = Client::connect(&opts, 0).await?;      // Login → LoginOk (or Rejected{code})
//! c.send(1, "bob", b"hi").await?;                     // Send; the SendAck arrives via recv()
//! match c.recv().await? { Event::Deliver(d) => c.ack(d.seq).await?, _ => {} }
//! ```
//!
//! [`Client::split`] gives a [`Reader`] and a [`Writer`] that can be used from two tasks at
//! once (each owns its own fd of the same socket). [`Client::reconnect`] logs in again with
//! exponential backoff plus jitter, resuming after the last seq received.
//!
//! [`LeanClient`] is the one-fd, small-buffer variant for holding very many mostly idle
//! connections (the load tool's `connect` scenario). [`ClientOptions::source_ip`] binds the
//! socket to a local address before connecting, so one box can open more than 64k connections
//! to one broker address by spreading them over 127.0.0.0/8.
//!
//! [`ClientOptions::transport`] chooses TCP (length-prefixed frames) or WebSocket
//! ([`ClientOptions::over_websocket`]: an HTTP upgrade on the broker's `ws_listen` port, then
//! one masked binary message per frame, masked by tungstenite); everything above the framing
//! is the same.
//!
//! [`ClientOptions::with_tls`] adds TLS below either (a rustls `ClientConnection` over the
//! socket, trusting the CA certificates of a PEM file; `wss://` on the WebSocket port). The
//! handshake runs before the upgrade and the Login; the two halves of a split client share
//! the one TLS session (they run on one thread), each reading or writing its own fd.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::time::{Duration, Instant};

use futures_lite::future;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use rand::Rng;

use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};
use std::io::{Read as _, Write as _};
use std::rc::Rc;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::protocol::{
    self, ClientMsg, Code, EntryKind, FrameReader, GroupOp, Names, NoHead, ServerMsg,
};
use crate::wire::upgrade;
use crate::wire::ws::{self, MessageReader, Step};

/// How many recent client_msg_ids a connection remembers to recognise its own echoes.
const ECHO_MEMORY: usize = 4096;

/// The client_msg_ids this connection sent recently (shared by its two halves).
#[derive(Debug, Default)]
struct SentIds {
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

impl SentIds {
    fn note(&mut self, id: u64) {
        if self.set.insert(id) {
            self.order.push_back(id);
            if self.order.len() > ECHO_MEMORY {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// Bytes the reader asks the socket for at a time.
const READ_CHUNK: usize = 16 * 1024;

/// How to reach and log in to a broker.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub addr: SocketAddr,
    pub token: String,
    pub device_id: String,
    /// Largest frame accepted from the server (its `max_frame` or more).
    pub max_frame: usize,
    /// Limit for TCP connect plus Login → LoginOk.
    pub login_timeout: Duration,
    /// Local address to bind before connecting (port chosen by the kernel at connect time).
    pub source_ip: Option<IpAddr>,
    /// Bytes the reader asks the socket for at a time (and so keeps allocated).
    pub read_chunk: usize,
    /// TCP, or WebSocket on `addr` (the broker's `ws_listen` port).
    pub transport: Transport,
    /// TLS (the broker's `[tls]`), with what to trust and the name to check.
    pub tls: Option<TlsOptions>,
}

/// rustls' client config, for callers that keep one built (see [`tls_client_config`]).
pub use rustls::ClientConfig as TlsClientConfig;

/// A client's TLS settings.
#[derive(Clone)]
pub struct TlsOptions {
    pub config: Arc<rustls::ClientConfig>,
    /// The name the broker's certificate must be for (default: the IP address connected to).
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// A rustls client config trusting the CA certificates in `ca_pem` (PEM text).
pub fn tls_client_config(ca_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    TlsOptions::new(
        ca_pem,
        ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
    )
    .map(|t| t.config)
}

impl TlsOptions {
    /// TLS with `config`, checking the certificate for `addr`'s IP address.
    pub fn for_addr(config: Arc<rustls::ClientConfig>, addr: SocketAddr) -> TlsOptions {
        TlsOptions {
            config,
            server_name: ServerName::IpAddress(addr.ip().into()),
        }
    }

    /// Trusts the CA certificates in `ca_pem` (PEM text); checks the certificate against
    /// `server_name`.
    pub fn new(ca_pem: &[u8], server_name: ServerName<'static>) -> Result<TlsOptions, ClientError> {
        let bad = |e: String| ClientError::Protocol(format!("tls: {e}"));
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            roots
                .add(cert.map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(bad("the CA file holds no certificate".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsOptions {
            config: Arc::new(config),
            server_name,
        })
    }
}

/// How a client reaches the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Length-prefixed frames on `server.listen`.
    Tcp,
    /// An HTTP upgrade on `path` of `server.ws_listen` (sending `Origin: origin` if set, as a
    /// browser would), then one binary WebSocket message per frame.
    WebSocket {
        path: String,
        origin: Option<String>,
    },
}

impl ClientOptions {
    pub fn new(addr: SocketAddr, token: impl Into<String>, device_id: impl Into<String>) -> Self {
        ClientOptions {
            addr,
            token: token.into(),
            device_id: device_id.into(),
            max_frame: 16 * 1024 * 1024,
            login_timeout: Duration::from_secs(10),
            source_ip: None,
            read_chunk: READ_CHUNK,
            transport: Transport::Tcp,
            tls: None,
        }
    }

    /// The same client over TLS, trusting the CA certificates in the PEM file `ca_file` and
    /// checking the broker's certificate for the address's IP (see [`ClientOptions::tls_name`]).
    pub fn with_tls(mut self, ca_file: &std::path::Path) -> Result<Self, ClientError> {
        let pem = std::fs::read(ca_file).map_err(|e| {
            ClientError::Protocol(format!(
                "tls: cannot read the CA file {}: {e}",
                ca_file.display()
            ))
        })?;
        self.tls = Some(TlsOptions::new(
            &pem,
            ServerName::IpAddress(self.addr.ip().into()),
        )?);
        Ok(self)
    }

    /// Checks the broker's certificate for `name` (a DNS name or an IP address) instead.
    pub fn tls_name(mut self, name: &str) -> Result<Self, ClientError> {
        let server_name = ServerName::try_from(name.to_owned())
            .map_err(|e| ClientError::Protocol(format!("tls: `{name}`: {e}")))?;
        if let Some(t) = &mut self.tls {
            t.server_name = server_name;
        }
        Ok(self)
    }

    /// The same client over WebSocket on `ws_addr` (path `/ws`, no Origin header).
    pub fn over_websocket(mut self, ws_addr: SocketAddr) -> Self {
        self.addr = ws_addr;
        self.transport = Transport::WebSocket {
            path: upgrade::WS_PATH.into(),
            origin: None,
        };
        self
    }

    fn is_websocket(&self) -> bool {
        matches!(self.transport, Transport::WebSocket { .. })
    }
}

/// What LoginOk said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginInfo {
    pub user_id: String,
    pub shard: u16,
    pub head_seq: u64,
    pub heartbeat_ms: u32,
    pub oldest_seq: u64,
    pub gap: bool,
}

/// An entry of the user's stream: a message to them, one they sent (own-send sync), or a
/// group event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub seq: u64,
    /// The sender, or who made a group change.
    pub from_user: String,
    pub client_msg_id: u64,
    pub sent_at_ms: u64,
    pub body: Vec<u8>,
    /// Group entries: the group ("" for 1:1) and the entry's group_seq.
    pub group_id: String,
    pub group_seq: u64,
    pub kind: EntryKind,
    /// The user sent this (from this device or another).
    pub outgoing: bool,
    /// Outgoing 1:1 messages: the recipient.
    pub to_user: String,
    /// Group events: the users concerned.
    pub members: Vec<String>,
    /// The echo of a send made on this very connection (`outgoing`, and this connection sent
    /// its client_msg_id): an application that already shows its sent messages skips it, so
    /// each message is presented once.
    pub echo: bool,
}

impl Delivery {
    pub fn is_group(&self) -> bool {
        !self.group_id.is_empty()
    }
}

/// The answer to a group operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupResult {
    pub request_id: u64,
    pub status: Code,
    pub group_id: String,
    pub group_seq: u64,
    /// GroupList: the user's groups.
    pub groups: Vec<String>,
    /// GroupInfo: (user, admin), a page.
    pub members: Vec<(String, bool)>,
    /// GroupInfo: `after` for the next page; "" on the last one.
    pub next_after: String,
    pub member_count: u32,
    pub message: String,
}

/// A frame from the server after login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Deliver(Delivery),
    SendAck {
        client_msg_id: u64,
        status: Code,
        /// Own-send sync: the seq of this send's copy in the user's stream, which this
        /// connection is not sent (its other devices get it); 0 when none is skipped. Entries
        /// after it arrive after this answer. `last_seq` moves past the seq with the next entry
        /// that follows it, so a reconnect before that may get the copy as an `echo`.
        own_seq: u64,
    },
    Pong {
        nonce: u64,
    },
    /// The server rejected something and will close.
    Error {
        code: Code,
        message: String,
    },
    /// The server is closing this connection.
    GoAway {
        code: Code,
        reason: String,
    },
    /// The answer to a group operation.
    GroupReply(GroupResult),
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("rejected by the broker: {} ({}): {message}", protocol::code_name(*.code), .code.0)]
    Rejected { code: Code, message: String },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("connection closed by the broker")]
    Closed,
    #[error("timed out")]
    Timeout,
}

impl ClientError {
    /// Worth retrying with backoff (network trouble, broker restarting), as opposed to a
    /// permanent refusal such as a bad token.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Io(_) | ClientError::Closed | ClientError::Timeout => true,
            ClientError::Rejected { code, .. } => {
                matches!(
                    *code,
                    Code::SHUTDOWN | Code::LOGIN_TIMEOUT | Code::SESSION_REPLACED
                )
            }
            ClientError::Protocol(_) => false,
        }
    }
}

/// A socket, through the connection's TLS session if it has one. Both halves of a client hold
/// one, each with its own fd, sharing the session.
struct Wire {
    stream: TcpStream,
    tls: Option<Rc<RefCell<rustls::ClientConnection>>>,
    /// Ciphertext read buffer (TLS only); `cipher[fed..]` was read from the socket but not yet
    /// given to rustls.
    cipher: Vec<u8>,
    fed: usize,
    /// Ciphertext to write (TLS only).
    out: Vec<u8>,
}

/// Ciphertext bytes asked of the socket per read (what rustls takes in one `read_tls`).
const TLS_READ: usize = 4096;

impl Wire {
    fn plain(stream: TcpStream) -> Wire {
        Wire {
            stream,
            tls: None,
            cipher: Vec::new(),
            fed: 0,
            out: Vec::new(),
        }
    }

    /// Reads plaintext; 0 at the end of the stream. Cancel-safe: bytes are taken in only by
    /// a completed read.
    ///
    /// Ciphertext goes to rustls one `read_tls` at a time, and only once the plaintext of
    /// the last one has been handed out: rustls refuses more input while it holds over
    /// 16 KiB of plaintext, which one socket read completing a full record and a short one
    /// would otherwise reach.
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(tls) = &self.tls else {
            return self.stream.read(buf).await;
        };
        loop {
            match tls.borrow_mut().reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if self.fed == self.cipher.len() {
                self.cipher.resize(TLS_READ, 0);
                let n = self.stream.read(&mut self.cipher).await?;
                self.cipher.truncate(n);
                self.fed = 0;
                if n == 0 {
                    return Ok(0);
                }
            }
            let mut t = tls.borrow_mut();
            let mut rd = &self.cipher[self.fed..];
            let before = rd.len();
            t.read_tls(&mut rd)?;
            self.fed += before - rd.len();
            t.process_new_packets().map_err(std::io::Error::other)?;
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let Some(tls) = &self.tls else {
            return self.stream.write_all(bytes).await;
        };
        {
            let mut t = tls.borrow_mut();
            t.writer().write_all(bytes)?;
            while t.wants_write() {
                t.write_tls(&mut self.out)?;
            }
        }
        let r = self.stream.write_all(&self.out).await;
        self.out.clear();
        r
    }

    /// Runs the TLS handshake (nothing without TLS).
    async fn handshake(&mut self) -> Result<(), ClientError> {
        let Some(tls) = self.tls.clone() else {
            return Ok(());
        };
        let mut buf = vec![0u8; TLS_READ];
        loop {
            let (out, handshaking) = {
                let mut t = tls.borrow_mut();
                let mut out = Vec::new();
                while t.wants_write() {
                    t.write_tls(&mut out)?;
                }
                (out, t.is_handshaking())
            };
            if !out.is_empty() {
                self.stream.write_all(&out).await?;
            }
            if !handshaking {
                return Ok(());
            }
            let n = self.stream.read(&mut buf).await?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            let mut t = tls.borrow_mut();
            let mut rd = &buf[..n];
            while !rd.is_empty() {
                t.read_tls(&mut rd)?;
                t.process_new_packets()
                    .map_err(|e| ClientError::Protocol(format!("tls: {e}")))?;
            }
        }
    }
}

/// The receiving half.
pub struct Reader {
    wire: Wire,
    frames: Frames,
    max_frame: usize,
    read_chunk: usize,
    last_seq: u64,
    sent: Rc<RefCell<SentIds>>,
}

/// The receive buffer, per transport.
enum Frames {
    Tcp(FrameReader),
    WebSocket(MessageReader),
}

/// The sending half.
pub struct Writer {
    wire: Wire,
    out: Vec<u8>,
    sent: Rc<RefCell<SentIds>>,
    websocket: bool,
}

/// Appends one client frame to `out`, framed for the transport: length-prefixed, or as one
/// masked binary WebSocket message.
fn encode(msg: &ClientMsg<'_>, websocket: bool, out: &mut Vec<u8>) {
    if websocket {
        let mut payload = Vec::new();
        protocol::encode_client_with(msg, &NoHead, &mut payload);
        ws::write_masked(&payload, out);
    } else {
        protocol::encode_client(msg, out);
    }
}

/// A logged-in connection.
pub struct Client {
    opts: ClientOptions,
    login: LoginInfo,
    reader: Reader,
    writer: Writer,
}

impl Client {
    /// Connects and logs in; `last_seq` is the highest seq this device has processed.
    pub async fn connect(opts: &ClientOptions, last_seq: u64) -> Result<Client, ClientError> {
        let attempt = async {
            let (wire, early) = open(opts).await?;
            // SAFETY: dup(2) of a socket we own; checked below. Each half owns one fd.
            let fd = unsafe { libc::dup(wire.stream.as_raw_fd()) };
            if fd < 0 {
                return Err(ClientError::Io(std::io::Error::last_os_error()));
            }
            // SAFETY: `fd` is a fresh duplicate owned by nobody else.
            let write_stream = unsafe { TcpStream::from_raw_fd(fd) };
            let write_wire = Wire {
                tls: wire.tls.clone(),
                ..Wire::plain(write_stream)
            };
            let mut reader = Reader::new(wire, opts, last_seq, &early);
            let mut writer = Writer {
                wire: write_wire,
                out: Vec::new(),
                sent: reader.sent.clone(),
                websocket: opts.is_websocket(),
            };
            writer
                .send_msg(&ClientMsg::Login {
                    token: &opts.token,
                    device_id: &opts.device_id,
                    last_seq,
                })
                .await?;
            let login = reader.read_login().await?;
            Ok(Client {
                opts: opts.clone(),
                login,
                reader,
                writer,
            })
        };
        within_login_timeout(opts, attempt).await
    }

    /// Reconnects after a failure, with exponential backoff and jitter, resuming after the last
    /// seq received. Gives up on a permanent refusal or after `max_attempts`. The new
    /// connection remembers the client_msg_ids this one sent, so a copy of one of its sends
    /// replayed after the resume point is still flagged `echo`.
    pub async fn reconnect(
        &mut self,
        backoff: &mut Backoff,
        max_attempts: u32,
    ) -> Result<(), ClientError> {
        let last_seq = self.reader.last_seq;
        let sent = self.reader.sent.clone();
        let mut last_err = ClientError::Closed;
        for _ in 0..max_attempts.max(1) {
            glommio::timer::sleep(backoff.next_delay()).await;
            match Client::connect(&self.opts, last_seq).await {
                Ok(fresh) => {
                    *self = fresh;
                    self.reader.sent = sent.clone();
                    self.writer.sent = sent;
                    backoff.reset();
                    return Ok(());
                }
                Err(e) if e.is_transient() => last_err = e,
                Err(e) => return Err(e),
            }
        }
        Err(last_err)
    }

    pub fn login_info(&self) -> &LoginInfo {
        &self.login
    }

    /// Highest seq received so far (what a reconnect resumes after).
    pub fn last_seq(&self) -> u64 {
        self.reader.last_seq
    }

    pub async fn send(
        &mut self,
        client_msg_id: u64,
        to: &str,
        body: &[u8],
    ) -> Result<(), ClientError> {
        self.writer.send(client_msg_id, to, body).await
    }

    pub async fn ack(&mut self, up_to_seq: u64) -> Result<(), ClientError> {
        self.writer.ack(up_to_seq).await
    }

    pub async fn ping(&mut self, nonce: u64) -> Result<(), ClientError> {
        self.writer.ping(nonce).await
    }

    pub async fn logout(&mut self) -> Result<(), ClientError> {
        self.writer.send_msg(&ClientMsg::Logout).await
    }

    pub async fn group_send(
        &mut self,
        client_msg_id: u64,
        group_id: &str,
        body: &[u8],
    ) -> Result<(), ClientError> {
        self.writer.group_send(client_msg_id, group_id, body).await
    }

    pub async fn group_op(
        &mut self,
        request_id: u64,
        group_id: &str,
        op: GroupOp<'_>,
    ) -> Result<(), ClientError> {
        self.writer.group_op(request_id, group_id, op).await
    }

    /// Creates `group_id` with the caller as its first admin and `members`.
    pub async fn group_create(
        &mut self,
        request_id: u64,
        group_id: &str,
        members: &[&str],
    ) -> Result<(), ClientError> {
        let members = Names::Slice(members);
        self.group_op(request_id, group_id, GroupOp::Create { members })
            .await
    }

    pub async fn group_list(&mut self, request_id: u64) -> Result<(), ClientError> {
        self.writer.group_list(request_id).await
    }

    pub async fn recv(&mut self) -> Result<Event, ClientError> {
        self.reader.recv().await
    }

    /// Sends raw bytes as they are, unframed (tests of the broker's handling of bad input).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.writer.wire.write_all(bytes).await?;
        Ok(())
    }

    pub fn split(self) -> (Reader, Writer) {
        (self.reader, self.writer)
    }
}

impl Writer {
    /// Appends a frame to the local buffer without writing (see [`Writer::flush`]).
    pub fn queue(&mut self, msg: &ClientMsg<'_>) {
        match msg {
            ClientMsg::Send { client_msg_id, .. } | ClientMsg::GroupSend { client_msg_id, .. } => {
                self.sent.borrow_mut().note(*client_msg_id)
            }
            _ => {}
        }
        encode(msg, self.websocket, &mut self.out);
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if !self.out.is_empty() {
            let r = self.wire.write_all(&self.out).await;
            self.out.clear();
            r?;
        }
        Ok(())
    }

    pub async fn send_msg(&mut self, msg: &ClientMsg<'_>) -> Result<(), ClientError> {
        self.queue(msg);
        self.flush().await
    }

    pub async fn send(
        &mut self,
        client_msg_id: u64,
        to: &str,
        body: &[u8],
    ) -> Result<(), ClientError> {
        self.send_msg(&ClientMsg::Send {
            client_msg_id,
            to_user: to,
            body,
        })
        .await
    }

    pub async fn ack(&mut self, up_to_seq: u64) -> Result<(), ClientError> {
        self.send_msg(&ClientMsg::Ack { up_to_seq }).await
    }

    pub async fn ping(&mut self, nonce: u64) -> Result<(), ClientError> {
        self.send_msg(&ClientMsg::Ping { nonce }).await
    }

    /// A message to a group (answered by a SendAck like a 1:1 send).
    pub async fn group_send(
        &mut self,
        client_msg_id: u64,
        group_id: &str,
        body: &[u8],
    ) -> Result<(), ClientError> {
        self.send_msg(&ClientMsg::GroupSend {
            client_msg_id,
            group_id,
            body,
        })
        .await
    }

    /// A group operation (answered by [`Event::GroupReply`] with `request_id`).
    pub async fn group_op(
        &mut self,
        request_id: u64,
        group_id: &str,
        op: GroupOp<'_>,
    ) -> Result<(), ClientError> {
        self.send_msg(&ClientMsg::Group {
            request_id,
            group_id,
            op,
        })
        .await
    }

    /// The groups the user is in (answered by [`Event::GroupReply`] with `groups`).
    pub async fn group_list(&mut self, request_id: u64) -> Result<(), ClientError> {
        self.send_msg(&ClientMsg::GroupList { request_id }).await
    }

    /// Half-closes the socket (no more frames from us).
    pub async fn close(&mut self) {
        let _ = self.wire.stream.shutdown(std::net::Shutdown::Write).await;
    }
}

/// A logged-in connection on a single fd, used from one task at a time, with a read buffer of
/// `read_chunk` bytes: what a load generator needs to hold a million idle connections.
pub struct LeanClient {
    login: LoginInfo,
    reader: Reader,
    out: Vec<u8>,
    websocket: bool,
}

/// When a [`LeanClient::connect_timed`] login passed its steps.
#[derive(Debug, Clone, Copy)]
pub struct LoginTimes {
    /// The connection was open (TCP connected; TLS handshake and WebSocket upgrade done).
    pub opened: Instant,
    /// The Login frame was handed to the kernel.
    pub login_sent: Instant,
}

impl LeanClient {
    /// Connects and logs in (bounded by `login_timeout`).
    pub async fn connect(opts: &ClientOptions, last_seq: u64) -> Result<LeanClient, ClientError> {
        Ok(Self::connect_timed(opts, last_seq).await?.0)
    }

    /// [`LeanClient::connect`], saying when the connection was open and when its Login went
    /// out (the LoginOk was read when this returns), so a load generator can split a login's
    /// latency into its own connect, and the broker's answer.
    pub async fn connect_timed(
        opts: &ClientOptions,
        last_seq: u64,
    ) -> Result<(LeanClient, LoginTimes), ClientError> {
        let attempt = async {
            let (wire, early) = open(opts).await?;
            let opened = Instant::now();
            let mut lean = LeanClient {
                login: LoginInfo {
                    user_id: String::new(),
                    shard: 0,
                    head_seq: 0,
                    heartbeat_ms: 0,
                    oldest_seq: 0,
                    gap: false,
                },
                reader: Reader::new(wire, opts, last_seq, &early),
                out: Vec::new(),
                websocket: opts.is_websocket(),
            };
            lean.send_msg(&ClientMsg::Login {
                token: &opts.token,
                device_id: &opts.device_id,
                last_seq,
            })
            .await?;
            let login_sent = Instant::now();
            lean.login = lean.reader.read_login().await?;
            Ok((lean, LoginTimes { opened, login_sent }))
        };
        within_login_timeout(opts, attempt).await
    }

    pub fn login_info(&self) -> &LoginInfo {
        &self.login
    }

    /// The local end of the connection (shows which source address it went out from).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.reader.wire.stream.local_addr()?)
    }

    pub async fn send_msg(&mut self, msg: &ClientMsg<'_>) -> Result<(), ClientError> {
        self.out.clear();
        encode(msg, self.websocket, &mut self.out);
        self.reader.wire.write_all(&self.out).await?;
        Ok(())
    }

    pub async fn recv(&mut self) -> Result<Event, ClientError> {
        self.reader.recv().await
    }
}

impl Reader {
    /// `early`: bytes that arrived with the WebSocket upgrade response, after it.
    fn new(wire: Wire, opts: &ClientOptions, last_seq: u64, early: &[u8]) -> Reader {
        let frames = if opts.is_websocket() {
            let mut r = MessageReader::new(ws::Role::Client);
            r.extend(early);
            Frames::WebSocket(r)
        } else {
            Frames::Tcp(FrameReader::new())
        };
        Reader {
            wire,
            frames,
            max_frame: opts.max_frame,
            read_chunk: opts.read_chunk.max(64),
            last_seq,
            sent: Rc::default(),
        }
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Next frame from the server. `Err(Closed)` when the server closed the connection.
    pub async fn recv(&mut self) -> Result<Event, ClientError> {
        let payload = self.next_frame().await?;
        let mut event = match protocol::decode_server(payload) {
            Ok(msg) => to_event(msg)?,
            Err(e) => return Err(ClientError::Protocol(e.to_string())),
        };
        if let Event::Deliver(d) = &mut event {
            self.last_seq = self.last_seq.max(d.seq);
            // Membership events carry client_msg_id 0, which a client may also have sent.
            d.echo = d.outgoing
                && d.kind == EntryKind::Message
                && self.sent.borrow().set.contains(&d.client_msg_id);
        }
        Ok(event)
    }

    async fn read_login(&mut self) -> Result<LoginInfo, ClientError> {
        let payload = self.next_frame().await?;
        match protocol::decode_server(payload) {
            Ok(ServerMsg::LoginOk {
                user_id,
                shard,
                head_seq,
                heartbeat_ms,
                oldest_seq,
                gap,
            }) => Ok(LoginInfo {
                user_id: user_id.to_owned(),
                shard,
                head_seq,
                heartbeat_ms,
                oldest_seq,
                gap,
            }),
            Ok(ServerMsg::Error { code, message }) => Err(ClientError::Rejected {
                code,
                message: message.to_owned(),
            }),
            Ok(ServerMsg::GoAway { code, reason }) => Err(ClientError::Rejected {
                code,
                message: reason.to_owned(),
            }),
            Ok(other) => Err(ClientError::Protocol(format!(
                "expected LoginOk, got {other:?}"
            ))),
            Err(e) => Err(ClientError::Protocol(e.to_string())),
        }
    }

    /// Reads until a whole frame is buffered; returns its payload.
    ///
    /// Cancel-safe: bytes count as received only once a read completes, so dropping this
    /// future (in a select) loses nothing.
    async fn next_frame(&mut self) -> Result<&[u8], ClientError> {
        let protocol_error = |e: protocol::CodecError| ClientError::Protocol(e.to_string());
        match &mut self.frames {
            Frames::Tcp(frames) => {
                while !frames.has_frame(self.max_frame).map_err(protocol_error)? {
                    let n = self.wire.read(frames.spare(self.read_chunk)).await?;
                    if n == 0 {
                        return Err(ClientError::Closed);
                    }
                    frames.filled(n);
                }
                frames
                    .next_frame(self.max_frame)
                    .map_err(protocol_error)?
                    .ok_or_else(|| ClientError::Protocol("frame vanished from the buffer".into()))
            }
            Frames::WebSocket(messages) => {
                let range = loop {
                    let step = messages
                        .next_step(self.max_frame)
                        .map_err(|e| ClientError::Protocol(e.to_string()))?;
                    match step {
                        Step::Message(range) => break range,
                        // The broker never pings; a Pong or Ping needs nothing from us here.
                        Step::Ping(_) | Step::Nothing => continue,
                        // The broker's Close follows its final Error/GoAway: the end.
                        Step::Close(_) => return Err(ClientError::Closed),
                        Step::Partial => {
                            let n = self.wire.read(messages.spare(self.read_chunk)).await?;
                            if n == 0 {
                                return Err(ClientError::Closed);
                            }
                            messages.filled(n);
                        }
                    }
                };
                Ok(messages.bytes(range))
            }
        }
    }
}

fn to_event(msg: ServerMsg<'_>) -> Result<Event, ClientError> {
    Ok(match msg {
        ServerMsg::Deliver(d) => Event::Deliver(Delivery {
            seq: d.seq,
            from_user: d.from_user.to_owned(),
            client_msg_id: d.client_msg_id,
            sent_at_ms: d.sent_at_ms,
            body: d.body.to_vec(),
            group_id: d.group_id.to_owned(),
            group_seq: d.group_seq,
            kind: d.kind,
            outgoing: d.outgoing,
            to_user: d.to_user.to_owned(),
            members: d.members.to_vec(),
            echo: false,
        }),
        ServerMsg::GroupReply(r) => Event::GroupReply(GroupResult {
            request_id: r.request_id,
            status: r.status,
            group_id: r.group_id.to_owned(),
            group_seq: r.group_seq,
            groups: r.groups.to_vec(),
            members: r.members.iter().map(|(u, a)| (u.to_owned(), a)).collect(),
            next_after: r.next_after.to_owned(),
            member_count: r.member_count,
            message: r.message.to_owned(),
        }),
        ServerMsg::SendAck {
            client_msg_id,
            status,
            own_seq,
        } => Event::SendAck {
            client_msg_id,
            status,
            own_seq,
        },
        ServerMsg::Pong { nonce } => Event::Pong { nonce },
        ServerMsg::Error { code, message } => Event::Error {
            code,
            message: message.to_owned(),
        },
        ServerMsg::GoAway { code, reason } => Event::GoAway {
            code,
            reason: reason.to_owned(),
        },
        ServerMsg::LoginOk { .. } => {
            return Err(ClientError::Protocol("LoginOk after login".into()))
        }
    })
}

/// `attempt` (TCP connect plus Login → LoginOk), or `Timeout` after `login_timeout`.
async fn within_login_timeout<T>(
    opts: &ClientOptions,
    attempt: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    let timeout = async {
        glommio::timer::sleep(opts.login_timeout).await;
        Err(ClientError::Timeout)
    };
    future::or(attempt, timeout).await
}

/// Connects (then TLS's handshake, then on WebSocket the upgrade); returns the connection and,
/// on WebSocket, the bytes that came after the upgrade response.
async fn open(opts: &ClientOptions) -> Result<(Wire, Vec<u8>), ClientError> {
    let stream = match opts.source_ip {
        None => TcpStream::connect(opts.addr)
            .await
            .map_err(std::io::Error::from)?,
        Some(ip) => connect_from(ip, opts.addr)?,
    };
    let _ = stream.set_nodelay(true);
    let mut wire = Wire::plain(stream);
    if let Some(tls) = &opts.tls {
        let mut conn = rustls::ClientConnection::new(tls.config.clone(), tls.server_name.clone())
            .map_err(|e| ClientError::Protocol(format!("tls: {e}")))?;
        conn.set_buffer_limit(None);
        wire.tls = Some(Rc::new(RefCell::new(conn)));
        wire.handshake().await?;
    }
    let early = match &opts.transport {
        Transport::Tcp => Vec::new(),
        Transport::WebSocket { path, origin } => {
            ws_upgrade(&mut wire, opts.addr, path, origin.as_deref()).await?
        }
    };
    Ok((wire, early))
}

/// The client side of the WebSocket upgrade (request built by tungstenite, response checked
/// against the key). Returns what followed the response head.
async fn ws_upgrade(
    stream: &mut Wire,
    addr: SocketAddr,
    path: &str,
    origin: Option<&str>,
) -> Result<Vec<u8>, ClientError> {
    let upgrade_error = |e: String| ClientError::Protocol(format!("websocket upgrade: {e}"));
    let (request, key) =
        upgrade::client_request(&addr.to_string(), path, origin).map_err(upgrade_error)?;
    stream.write_all(&request).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(ClientError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(head) = upgrade::check_client_response(&buf, &key).map_err(upgrade_error)? {
            return Ok(buf.split_off(head));
        }
    }
}

/// Binds to `source` and starts a non-blocking connect to `addr`. glommio's connect cannot take
/// a bound socket, so the connect is started here and the first write (the Login frame) waits
/// for it: a send on a connecting socket reports EAGAIN, glommio then polls for writability,
/// which comes when the handshake completes (or the connect fails, and the write reports why).
fn connect_from(source: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    // Choose the port at connect time, per destination, instead of reserving one per source
    // address at bind time: the 4-tuple, not the 2-tuple, then has to be unique.
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own with a correctly sized int option.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 && source.is_ipv4() {
        return Err(std::io::Error::last_os_error());
    }
    socket.bind(&SockAddr::from(SocketAddr::new(source, 0)))?;
    match socket.connect(&SockAddr::from(addr)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    // SAFETY: the fd comes from a socket we own and give up here.
    Ok(unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) })
}

/// Exponential backoff with "equal jitter": each delay is uniformly drawn from
/// [d/2, d] where d doubles from `initial` up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            attempt: 0,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        let d = self.initial.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = d / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let d: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        let bounds = [100u64, 200, 400, 800, 1000, 1000];
        for (got, hi) in d.iter().zip(bounds) {
            let hi = Duration::from_millis(hi);
            assert!(
                *got >= hi / 2 && *got <= hi,
                "{got:?} not in [{:?}, {hi:?}]",
                hi / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}

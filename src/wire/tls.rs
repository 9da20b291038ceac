//! TLS for client connections, below the framing: rustls in its *unbuffered* form, so the
//! caller owns every byte buffer and a connection's TLS state is only rustls' state machine
//! and keys.
//!
//! - [`server_config`] builds the rustls config from `[tls] cert_file` / `key_file` (PEM), TLS
//!   1.2 and 1.3 with rustls' safe defaults, the `ring` provider. No session resumption: no
//!   tickets, no session cache (the default cache is a mutex shared by every shard, and
//!   per-session state on the server is what we keep small), no early data.
//! - [`ServerTls`] is one connection's session: the rustls `UnbufferedServerConnection` plus
//!   the ciphertext of a record split across reads (empty, unallocated, between records).
//!   [`ServerTls::advance`] decrypts every complete record it holds into a caller's plaintext
//!   buffer and writes any TLS output (handshake flights, KeyUpdate answers) to a caller's
//!   ciphertext buffer; [`ServerTls::open`] does the same for bytes just read (decrypted where
//!   they lie, without first copying them into the carry); [`ServerTls::seal`] encrypts
//!   plaintext into a ciphertext buffer.
//!
//! The state is plain owned data (`Send`), so the accepting shard does the handshake and reads
//! the Login, then the whole `ServerTls` travels with the fd in the hand-off and the owner
//! shard carries on with it (see the module doc of [`crate::wire`]).

use std::path::Path;
use std::sync::Arc;

use bytes::BufMut;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{NoServerSessionStorage, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use rustls::ServerConfig;

/// Why TLS failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {message}")]
    Pem {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: String },
    #[error("the TLS certificate and key do not work together: {0}")]
    Config(rustls::Error),
    #[error("TLS: {0}")]
    Protocol(#[from] rustls::Error),
    #[error("TLS: the session cannot encrypt more (key exhausted)")]
    Exhausted,
    #[error("TLS: unexpected state {0}")]
    State(String),
}

/// The rustls server config for `cert` (PEM chain, leaf first) and `key` (PEM private key).
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let shown = |p: &Path| p.display().to_string();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem {
            what: "tls.cert_file",
            path: shown(cert),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: shown(cert) });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
        what: "tls.key_file",
        path: shown(key),
        message: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Config)?;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.max_early_data_size = 0;
    Ok(config)
}

/// Where a session stands after [`ServerTls::advance`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// The handshake is not done yet: more input is needed.
    pub handshaking: bool,
    /// The peer sent close_notify: nothing more will come.
    pub peer_closed: bool,
}

/// One connection's TLS session (see the module doc).
pub struct ServerTls {
    conn: UnbufferedServerConnection,
    /// Ciphertext of a record not yet complete, carried between reads.
    rx: Vec<u8>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("carried", &self.rx.len())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    pub fn new(config: Arc<ServerConfig>) -> Result<ServerTls, TlsError> {
        Ok(ServerTls {
            conn: UnbufferedServerConnection::new(config)?,
            rx: Vec::new(),
        })
    }

    /// The carried ciphertext, for reads that append to it (the handshake).
    pub fn carry(&mut self) -> &mut Vec<u8> {
        &mut self.rx
    }

    /// Processes the carried ciphertext: plaintext to `plain`, TLS output to `out`.
    pub fn advance(
        &mut self,
        plain: &mut impl BufMut,
        out: &mut Vec<u8>,
    ) -> Result<Progress, TlsError> {
        let (used, progress) = process(&mut self.conn, &mut self.rx, plain, out)?;
        self.rx.drain(..used);
        release(&mut self.rx);
        Ok(progress)
    }

    /// [`ServerTls::advance`] over the carried ciphertext followed by `data` (just read).
    /// Without a carry, `data` is processed where it lies and only a trailing partial record
    /// is kept.
    pub fn open(
        &mut self,
        data: &mut [u8],
        plain: &mut impl BufMut,
        out: &mut Vec<u8>,
    ) -> Result<Progress, TlsError> {
        if !self.rx.is_empty() {
            self.rx.extend_from_slice(data);
            return self.advance(plain, out);
        }
        let (used, progress) = process(&mut self.conn, data, plain, out)?;
        self.rx.extend_from_slice(&data[used..]);
        Ok(progress)
    }

    /// Encrypts `plain` (any length; cut into records) onto `out`; with `close`, a
    /// close_notify follows it.
    pub fn seal(&mut self, plain: &[u8], close: bool, out: &mut Vec<u8>) -> Result<(), TlsError> {
        loop {
            let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut self.rx);
            match state? {
                ConnectionState::WriteTraffic(mut w) => {
                    if !plain.is_empty() {
                        grow_into(out, |buf| w.encrypt(plain, buf).map_err(encrypt_error))?;
                    }
                    if close {
                        grow_into(out, |buf| w.queue_close_notify(buf).map_err(encrypt_error))?;
                    }
                    return Ok(());
                }
                ConnectionState::EncodeTlsData(mut e) => {
                    grow_into(out, |buf| e.encode(buf).map_err(encode_error))?
                }
                ConnectionState::TransmitTlsData(t) => t.done(),
                ConnectionState::Closed | ConnectionState::PeerClosed => {
                    // The peer is gone or going; what we would send has no reader.
                    return Ok(());
                }
                other => return Err(TlsError::State(format!("{other:?} while sealing"))),
            }
            self.rx.drain(..discard);
        }
    }

    /// True once the handshake is complete.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }
}

/// Drops the allocation of an emptied carry.
fn release(buf: &mut Vec<u8>) {
    if buf.is_empty() && buf.capacity() > 0 {
        *buf = Vec::new();
    }
}

/// What an encode or encrypt call may say.
enum Grow {
    Need(usize),
    Fail(TlsError),
}

fn encrypt_error(e: EncryptError) -> Grow {
    match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Grow::Need(required_size)
        }
        EncryptError::EncryptExhausted => Grow::Fail(TlsError::Exhausted),
    }
}

fn encode_error(e: EncodeError) -> Grow {
    match e {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Grow::Need(required_size)
        }
        other => Grow::Fail(TlsError::State(format!("{other:?}"))),
    }
}

/// Runs `write` on room at the end of `out`, growing the room once to what it says it needs.
fn grow_into(
    out: &mut Vec<u8>,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Grow>,
) -> Result<(), TlsError> {
    let start = out.len();
    let mut room = 4096;
    loop {
        out.resize(start + room, 0);
        match write(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(Grow::Need(n)) if n > room => room = n,
            Err(Grow::Need(_)) => {
                out.truncate(start);
                return Err(TlsError::State(
                    "buffer refused at its required size".into(),
                ));
            }
            Err(Grow::Fail(e)) => {
                out.truncate(start);
                return Err(e);
            }
        }
    }
}

/// Drives rustls over `buf` until it needs more input. Returns the bytes of `buf` consumed.
fn process(
    conn: &mut UnbufferedServerConnection,
    buf: &mut [u8],
    plain: &mut impl BufMut,
    out: &mut Vec<u8>,
) -> Result<(usize, Progress), TlsError> {
    let mut at = 0;
    let mut peer_closed = false;
    loop {
        let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut buf[at..]);
        let mut done = None;
        match state? {
            ConnectionState::ReadTraffic(mut r) => {
                while let Some(record) = r.next_record() {
                    plain.put_slice(record?.payload);
                }
            }
            ConnectionState::ReadEarlyData(mut r) => {
                // Early data is off (max_early_data_size = 0); drained for completeness.
                while let Some(record) = r.next_record() {
                    plain.put_slice(record?.payload);
                }
            }
            ConnectionState::EncodeTlsData(mut e) => {
                grow_into(out, |room| e.encode(room).map_err(encode_error))?
            }
            // The caller sends `out` before it waits for input again.
            ConnectionState::TransmitTlsData(t) => t.done(),
            ConnectionState::BlockedHandshake => {
                done = Some(Progress {
                    handshaking: true,
                    peer_closed,
                })
            }
            ConnectionState::WriteTraffic(_) => {
                done = Some(Progress {
                    handshaking: false,
                    peer_closed,
                })
            }
            ConnectionState::PeerClosed => peer_closed = true,
            ConnectionState::Closed => {
                done = Some(Progress {
                    handshaking: false,
                    peer_closed: true,
                })
            }
            other => return Err(TlsError::State(format!("{other:?}"))),
        }
        at += discard;
        if let Some(p) = done {
            return Ok((at, p));
        }
    }
}

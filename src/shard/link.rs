//! The accepting shard's side of a connection during login: a glommio stream, and on a TLS
//! port the connection's TLS session ([`crate::wire::tls::ServerTls`]).
//!
//! The acceptor and the WebSocket port read and write through a `Link`: `Link::handshake`
//! (TLS only) completes the TLS handshake, `Link::read_more` adds plaintext to a frame
//! buffer, `Link::write_all` writes (sealed, on TLS). Reads use the acceptor's
//! `read_more` pattern (a 1-byte wait, then non-blocking `recv`), so no readiness poll is
//! left pending on the ring at hand-off, TLS or not. At hand-off the session moves, with the
//! fd, to the owner shard ([`super::envelope::Handoff::tls`]).
//!
//! A client that speaks no TLS on a TLS port is told so in plaintext (an Error frame on the
//! TCP port, HTTP 400 on the WebSocket port) when its first bytes are not a TLS record, and
//! closed; a silent one is closed at `login_timeout`.

use std::sync::Arc;

use futures_lite::io::AsyncWriteExt;
use glommio::net::TcpStream;

use super::acceptor::{read_more, RecvBuf, Refusal};
use crate::wire::tls::{ServerTls, TlsError};

/// First byte of a TLS handshake record (content type 22).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

pub(super) struct Link {
    pub stream: TcpStream,
    pub tls: Option<Box<ServerTls>>,
    /// Plaintext decrypted and not yet taken by a reader.
    plain: Vec<u8>,
    /// TLS output waiting to be written.
    out: Vec<u8>,
}

/// Room at the end of a `Vec` for `read_more`.
struct VecBuf<'a> {
    buf: &'a mut Vec<u8>,
    len: usize,
}

impl<'a> VecBuf<'a> {
    fn new(buf: &'a mut Vec<u8>) -> VecBuf<'a> {
        let len = buf.len();
        VecBuf { buf, len }
    }
}

impl RecvBuf for VecBuf<'_> {
    fn spare(&mut self, min: usize) -> &mut [u8] {
        self.buf.resize(self.len + min, 0);
        &mut self.buf[self.len..]
    }
    fn filled(&mut self, n: usize) {
        self.len += n;
        self.buf.truncate(self.len);
    }
    fn extend(&mut self, data: &[u8]) {
        self.buf.truncate(self.len);
        self.buf.extend_from_slice(data);
        self.len = self.buf.len();
    }
}

impl Drop for VecBuf<'_> {
    fn drop(&mut self) {
        self.buf.truncate(self.len);
    }
}

fn tls_refusal(e: TlsError) -> Refusal {
    tracing::debug!(error = %e, "tls: closing a connection");
    Refusal::Gone
}

impl Link {
    pub fn plain(stream: TcpStream) -> Link {
        Link {
            stream,
            tls: None,
            plain: Vec::new(),
            out: Vec::new(),
        }
    }

    pub fn tls(stream: TcpStream, config: Arc<rustls::ServerConfig>) -> Result<Link, TlsError> {
        Ok(Link {
            tls: Some(Box::new(ServerTls::new(config)?)),
            ..Link::plain(stream)
        })
    }

    /// True when a frame can be written to the peer (plain, or TLS after the handshake).
    pub fn can_write(&self) -> bool {
        self.tls.as_ref().is_none_or(|t| !t.is_handshaking())
    }

    /// Completes the TLS handshake (nothing to do without TLS). A first record that is not TLS
    /// is [`Refusal::NotTls`].
    pub async fn handshake(&mut self) -> Result<(), Refusal> {
        let Link {
            stream,
            tls: Some(tls),
            plain,
            out,
        } = self
        else {
            return Ok(());
        };
        // Only the very first record tells: later flights start with other record types.
        let mut first = true;
        loop {
            if first && !tls.carry().is_empty() {
                first = false;
                if tls.carry()[0] != TLS_HANDSHAKE_RECORD {
                    return Err(Refusal::NotTls);
                }
            }
            let progress = tls.advance(plain, out).map_err(tls_refusal)?;
            if !out.is_empty() {
                stream.write_all(out).await.map_err(|_| Refusal::Gone)?;
                out.clear();
            }
            if !progress.handshaking {
                return Ok(());
            }
            if progress.peer_closed {
                return Err(Refusal::Gone);
            }
            read_more(stream, &mut VecBuf::new(tls.carry())).await?;
        }
    }

    /// Waits for input and adds the plaintext to `frames`.
    pub async fn read_more(&mut self, frames: &mut impl RecvBuf) -> Result<(), Refusal> {
        let Link {
            stream,
            tls: Some(tls),
            plain,
            out,
        } = self
        else {
            return read_more(&mut self.stream, frames).await;
        };
        loop {
            if !plain.is_empty() {
                frames.extend(plain);
                plain.clear();
                return Ok(());
            }
            read_more(stream, &mut VecBuf::new(tls.carry())).await?;
            let progress = tls.advance(plain, out).map_err(tls_refusal)?;
            if !out.is_empty() {
                stream.write_all(out).await.map_err(|_| Refusal::Gone)?;
                out.clear();
            }
            if progress.peer_closed && plain.is_empty() {
                return Err(Refusal::Gone);
            }
        }
    }

    /// Writes `bytes` (sealed on TLS; with `last`, a TLS close_notify follows).
    pub async fn write_all(&mut self, bytes: &[u8], last: bool) -> std::io::Result<()> {
        match &mut self.tls {
            None => self.stream.write_all(bytes).await,
            Some(tls) => {
                tls.seal(bytes, last, &mut self.out)
                    .map_err(std::io::Error::other)?;
                let r = self.stream.write_all(&self.out).await;
                self.out.clear();
                r
            }
        }
    }

    /// Writes `bytes` as they are, outside TLS (the plaintext refusal of a non-TLS client).
    pub async fn write_plain(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }
}

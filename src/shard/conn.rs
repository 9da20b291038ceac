//! One client connection as its owner shard sees it: identity, outbound bytes, liveness.
//!
//! Outbound frames are appended to `tx` and handed to the kernel with a non-blocking `send(2)`
//! at the end of each batch of work ([`Conn::flush`]), so a burst of deliveries costs one
//! syscall per connection, not one per frame. Only when the kernel's socket buffer is full does
//! the connection's session task take over and wait for writability. An idle connection holds
//! no buffers: `tx` and `rx` are released once empty.
//!
//! Every frame is encoded with the connection's [`Framing`] as its head (a u32 prefix on TCP,
//! a WebSocket header on WebSocket), and a final Error/GoAway on WebSocket is followed by a
//! Close frame with the matching close code.
//!
//! On TLS (`[tls]`) `tx` still collects plaintext frames; the flush seals everything queued
//! into TLS records at once ([`ConnTls`]: the session and the ciphertext the kernel has not
//! taken yet) and sends that, so a burst is still one `send(2)` and, mostly, one record per
//! 16 KiB. A closing connection's last flush ends with a TLS close_notify. Between bursts a
//! TLS connection holds its rustls state and no buffers.

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::sync::Arc;

use super::envelope::ConnId;
use super::gate::Slot;
use super::own_sends::OwnSends;
use super::wake::Signal;
use crate::protocol::{self, Code, ServerMsg};
use crate::wire::tls::{Progress, ServerTls, TlsError};
use crate::wire::{ws, Framing};

/// Capacity an active connection's emptied output buffer keeps, so that a steady stream of
/// Delivers and SendAcks does not allocate per flush; anything larger is released. A parked
/// connection keeps none ([`Conn::release_buffers`]): a million idle connections hold no
/// buffer at all.
const KEEP_CAPACITY: usize = 1024;

/// Lifecycle of a connection on its owner shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Logged in and served.
    Open,
    /// A final Error/GoAway is queued: write what is queued, then close. Reads stop.
    Closing,
    /// The socket failed or the peer went away; nothing more is written.
    Broken,
}

pub struct Conn {
    pub id: ConnId,
    /// The socket. Changes when the connection is parked (the parked copy is a duplicate).
    pub fd: Cell<RawFd>,
    pub user: Arc<str>,
    pub device_id: Box<str>,
    /// How frames are delimited on this connection (TCP or WebSocket, with the WebSocket
    /// decoder's state between reads).
    pub framing: Cell<Framing>,
    /// Bytes queued for the client and not yet accepted by the kernel.
    pub tx: RefCell<Vec<u8>>,
    /// Bytes taken out of `tx` by the session task's in-progress blocking write (at most
    /// `limits.max_outbound` ≤ 1 GiB plus a frame; 4 bytes, beside `fd`, keep the record in a
    /// smaller allocation class).
    pub writing: Cell<u32>,
    /// Partial inbound frame carried between reads (empty and unallocated when idle).
    pub rx: RefCell<Vec<u8>>,
    pub state: Cell<ConnState>,
    /// Shard-monotonic milliseconds of the last byte received.
    pub last_seen_ms: Cell<u64>,
    /// Highest seq this device has acked.
    pub acked: Cell<u64>,
    /// Highest seq queued to this device (or passed over: see `own_sends`).
    pub sent_seq: Cell<u64>,
    /// Own-send copies of this connection's sends, which it is not sent.
    pub own_sends: OwnSends,
    /// Not caught up: the device is refilled from the log, up to the durable seq, as its queue
    /// drains.
    pub behind: Cell<bool>,
    /// Queued in the shard's dirty list for the end-of-batch flush.
    pub dirty: Cell<bool>,
    /// Wakes the session task: writes are pending, or the connection is closing.
    pub wake: Signal,
    /// Wall clock (ms since the Unix epoch) when the owner shard registered it.
    pub connected_at_ms: u64,
    /// The TLS session, when the connection speaks TLS.
    pub tls: Option<Box<ConnTls>>,
    /// The connection's place under `limits.max_connections` (freed when the record goes).
    pub _slot: Option<Slot>,
}

/// A connection's TLS side (see the module doc).
pub struct ConnTls {
    session: RefCell<ServerTls>,
    /// Sealed bytes the kernel has not taken yet.
    wire: RefCell<Vec<u8>>,
    /// The close_notify is sealed (the connection is closing).
    closed: Cell<bool>,
}

impl ConnTls {
    pub fn new(session: ServerTls) -> ConnTls {
        ConnTls {
            session: RefCell::new(session),
            wire: RefCell::default(),
            closed: Cell::new(false),
        }
    }

    /// Decrypts bytes just read into `plain`. Also returns whether TLS output was queued
    /// (it goes out with the connection's next flush).
    pub fn open(
        &self,
        data: &mut [u8],
        plain: &mut bytes::BytesMut,
    ) -> Result<(Progress, bool), TlsError> {
        let mut wire = self.wire.borrow_mut();
        let before = wire.len();
        let progress = self.session.borrow_mut().open(data, plain, &mut wire)?;
        Ok((progress, wire.len() != before))
    }
}

impl Conn {
    pub fn queued_bytes(&self) -> usize {
        let sealed = self.tls.as_ref().map_or(0, |t| t.wire.borrow().len());
        self.tx.borrow().len() + self.writing.get() as usize + sealed
    }

    /// Something is waiting to be written (queued frames, sealed TLS bytes, a TLS
    /// close_notify still to seal).
    pub fn has_output(&self) -> bool {
        !self.tx.borrow().is_empty()
            || self.tls.as_ref().is_some_and(|t| {
                !t.wire.borrow().is_empty()
                    || (self.state.get() == ConnState::Closing && !t.closed.get())
            })
    }

    /// Takes everything there is to write, for the session's blocking write: the queued
    /// frames, sealed on TLS.
    pub fn take_output(&self) -> Vec<u8> {
        match &self.tls {
            None => std::mem::take(&mut *self.tx.borrow_mut()),
            Some(t) => {
                self.seal_queued(t);
                std::mem::take(&mut *t.wire.borrow_mut())
            }
        }
    }

    /// TLS: seals `tx` (and, closing, the close_notify) onto the connection's ciphertext.
    /// False if the session failed (the connection is then broken).
    fn seal_queued(&self, t: &ConnTls) -> bool {
        let mut tx = self.tx.borrow_mut();
        let closing = self.state.get() == ConnState::Closing && !t.closed.get();
        if tx.is_empty() && !closing {
            return true;
        }
        let sealed = t
            .session
            .borrow_mut()
            .seal(&tx, closing, &mut t.wire.borrow_mut());
        match sealed {
            Ok(()) => {
                tx.clear();
                shrink(&mut tx);
                if closing {
                    t.closed.set(true);
                }
                true
            }
            Err(e) => {
                tracing::debug!(user = %self.user, error = %e, "tls: cannot seal; closing");
                self.state.set(ConnState::Broken);
                self.wake.notify();
                false
            }
        }
    }

    pub fn is_open(&self) -> bool {
        self.state.get() == ConnState::Open
    }

    /// Encodes and appends one server frame.
    pub fn push(&self, msg: &ServerMsg<'_>) -> bool {
        if !self.is_open() {
            return false;
        }
        protocol::encode_server_with(msg, &self.framing.get(), &mut self.tx.borrow_mut());
        true
    }

    /// Queues a final Error or GoAway frame and switches to Closing.
    pub fn close_with(&self, msg: &ServerMsg<'_>) {
        self.close_as(msg, None);
    }

    /// [`Conn::close_with`], with the WebSocket close code given instead of derived from the
    /// frame's code (a text message closes with 1003, a protocol error with 1002).
    pub fn close_as(&self, msg: &ServerMsg<'_>, ws_close: Option<u16>) {
        if self.is_open() {
            let framing = self.framing.get();
            let mut tx = self.tx.borrow_mut();
            protocol::encode_server_with(msg, &framing, &mut tx);
            let code = match msg {
                ServerMsg::Error { code, .. } | ServerMsg::GoAway { code, .. } => *code,
                _ => Code::OK,
            };
            framing.write_close(code, ws_close, &mut tx);
            drop(tx);
            self.state.set(ConnState::Closing);
        }
        self.wake.notify();
    }

    /// Answers a WebSocket Ping.
    pub fn pong(&self, payload: &[u8]) {
        if self.is_open() {
            ws::write_pong(payload, &mut self.tx.borrow_mut());
        }
    }

    /// The client sent a WebSocket Close: echo its code and close once the queue is written.
    pub fn closed_by_peer(&self, code: Option<u16>) {
        if self.is_open() {
            let code = code.unwrap_or(ws::close::NORMAL);
            ws::write_close(code, "", &mut self.tx.borrow_mut());
            self.state.set(ConnState::Closing);
        }
        self.wake.notify();
    }

    /// Convenience for `close_with(GoAway{code, reason})`.
    pub fn go_away(&self, code: Code, reason: &str) {
        if self.is_open() {
            crate::metrics::with_local(|m| m.goaway.inc(code));
        }
        self.close_with(&ServerMsg::GoAway { code, reason });
    }

    /// Hands queued bytes to the kernel without blocking. Leaves what the kernel did not take
    /// in `tx` and wakes the session task to wait for writability.
    pub fn flush(&self) {
        if self.writing.get() > 0 || self.state.get() == ConnState::Broken {
            return; // the session task is mid-write and will pick `tx` up after it
        }
        match &self.tls {
            None => self.send_out(&mut self.tx.borrow_mut()),
            Some(t) => {
                if self.seal_queued(t) {
                    self.send_out(&mut t.wire.borrow_mut());
                }
            }
        }
    }

    /// Sends what `tx` holds without blocking; keeps what the kernel did not take.
    fn send_out(&self, tx: &mut Vec<u8>) {
        let mut sent = 0;
        while sent < tx.len() {
            match send_nonblocking(self.fd.get(), &tx[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.wake.notify();
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.state.set(ConnState::Broken);
                    self.wake.notify();
                    break;
                }
            }
        }
        tx.drain(..sent);
        if tx.is_empty() {
            shrink(tx);
            if self.state.get() == ConnState::Closing {
                self.wake.notify();
            }
        }
    }

    /// The connection parks: its emptied output buffers (and on TLS the sealed bytes' buffer)
    /// give their capacity back.
    pub fn release_buffers(&self) {
        let bufs = std::iter::once(&self.tx).chain(self.tls.as_ref().map(|t| &t.wire));
        for buf in bufs {
            let mut buf = buf.borrow_mut();
            if buf.is_empty() {
                *buf = Vec::new();
            }
        }
    }
}

/// Drops the allocation of an emptied buffer that grew large.
pub fn shrink(buf: &mut Vec<u8>) {
    if buf.is_empty() && buf.capacity() > KEEP_CAPACITY {
        *buf = Vec::new();
    }
}

/// `send(2)` with MSG_DONTWAIT | MSG_NOSIGNAL.
pub fn send_nonblocking(fd: RawFd, buf: &[u8]) -> std::io::Result<usize> {
    // SAFETY: `buf` is a valid slice for its length; `fd` is owned by the connection's stream,
    // which outlives every `Conn` use (the session task closes it only after detaching).
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `recv(2)` with MSG_DONTWAIT.
pub fn recv_nonblocking(fd: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: `buf` is a valid, writable slice for its length.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Most of an idle connection's memory is this record (BENCHMARKS.md, "Idle connections
    /// after a login storm"). With its `Rc` header (two counts) it fits mimalloc's 224-byte size
    /// class; 8 bytes more and it takes 256.
    #[test]
    fn the_connection_record_with_its_rc_header_fits_224_bytes() {
        let with_header = std::mem::size_of::<Conn>() + 2 * std::mem::size_of::<usize>();
        assert!(with_header <= 224, "Rc<Conn> takes {with_header} bytes");
    }
}

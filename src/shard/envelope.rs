//! What travels between shards over the mesh.
//!
//! Everything here is `Send` and owns its data: strings are `Arc<str>` so the sender's user ID
//! can travel out and come back with its ack without a copy, bodies are `Bytes`.

use std::os::fd::RawFd;
use std::sync::Arc;

use bytes::Bytes;

use crate::protocol::Code;
use crate::wire::Framing;

/// Shard-local connection identifier (unique per shard for the process lifetime).
pub type ConnId = u64;

/// One unit of cross-shard work. The mesh carries them in batches (`Vec<Envelope>`).
#[derive(Debug)]
pub enum Envelope {
    /// A logged-in connection moving to the shard that owns its user. The receiver takes
    /// ownership of `fd`, its framing, and the bytes the accepting shard read after the Login
    /// frame.
    Handoff(Handoff),
    /// A 1:1 message for a user owned by the receiving shard.
    Message(Message),
    /// The outcome of a `Message`, back to the shard that owns the sender.
    SendAck(SendAck),
    /// Shutdown: the sending shard has stopped reading clients and accepting connections;
    /// nothing but acks will follow on this queue.
    Drained,
}

/// Owns `fd` until [`Handoff::take_fd`]; a hand-off dropped undelivered (the peer shut down)
/// closes it.
#[derive(Debug)]
pub struct Handoff {
    pub fd: RawFd,
    pub user: Arc<str>,
    pub device_id: Box<str>,
    pub last_seq: u64,
    /// The connection's framing (TCP, or WebSocket with its decoder state), continued by the
    /// owner.
    pub framing: Framing,
    /// Bytes that followed the Login frame in the same reads (pipelined frames), still framed.
    pub leftover: Vec<u8>,
}

#[derive(Debug)]
pub struct Message {
    pub from: Arc<str>,
    pub to: Arc<str>,
    pub client_msg_id: u64,
    pub body: Bytes,
    /// Sender's connection on the origin shard, for the SendAck.
    pub origin_conn: ConnId,
}

#[derive(Debug)]
pub struct SendAck {
    pub sender: Arc<str>,
    pub origin_conn: ConnId,
    pub client_msg_id: u64,
    pub status: Code,
}

impl Handoff {
    /// Takes ownership of the connection's fd.
    pub fn take_fd(&mut self) -> RawFd {
        std::mem::replace(&mut self.fd, -1)
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        if self.fd >= 0 {
            // SAFETY: we own this fd (see take_fd) and nobody else closes it.
            unsafe { libc::close(self.fd) };
        }
    }
}

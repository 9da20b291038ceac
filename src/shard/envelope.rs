//! What travels between shards over the mesh.
//!
//! Everything here is `Send` and owns its data: strings are `Arc<str>` so the sender's user ID
//! can travel out and come back with its ack without a copy; bodies are `Bytes`, and so is a
//! 1:1 message's recipient ([`UserRef`]): both are slices of the read they arrived in, and
//! under own-send sync both come back with the ack for the sender's copy.

use std::os::fd::RawFd;
use std::sync::Arc;

use bytes::Bytes;

use super::read_buf::ReadSource;
use crate::protocol::{Code, EntryKind};
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
    /// The outcome of a `Message` or `GroupSend`, back to the shard that owns the sender.
    SendAck(SendAck),
    /// Shutdown: the sending shard has stopped reading clients and accepting connections;
    /// nothing but acks will follow on this queue.
    Drained,
    /// A member's shard → the group's owner: an operation on the group.
    GroupRequest(GroupRequest),
    /// The owner's answer to a `GroupRequest`, back to the requester's shard.
    GroupAnswer(GroupAnswer),
    /// A member's shard → the group's owner: a message to the group.
    GroupSend(GroupSend),
    /// The group owner → one destination shard: committed entries of the owner's groups, in
    /// group_seq order per group. One envelope per destination shard per commit, whatever the
    /// number of members there; each entry's body is shared by all destinations.
    Fanout(Vec<Arc<GroupEntry>>),
    /// Start-up, a shard → every other shard: every group entry it re-drove to the receiver
    /// after a crash is ahead of this on the queue (so the receiver, having handled it, holds
    /// every acked group message before it serves a client). Sent even when nothing was.
    Redriven,
    /// An emptied batch going back to the shard it came from, riding at the end of a batch
    /// to it: the transport's own (see [`super::transport`]); taken off before the batch is
    /// handled, never seen by a handler.
    Carrier(super::transport::Batch),
    /// A destination shard → the owner: it has durably applied (group, up to group_seq).
    Applied(Vec<(Arc<str>, u64)>),
    /// The owner → a user's shard: hold a place in `users`' group count
    /// (`max_groups_per_user`) for operation `op` on `group`.
    Reserve {
        op: u64,
        group: Arc<str>,
        users: Vec<Arc<str>>,
    },
    /// The answer to `Reserve`: the users refused, each with why (TOO_MANY_GROUPS: already
    /// at the limit; USER_UNKNOWN: never logged in, under `limits.recipients = "known"`).
    Reserved {
        op: u64,
        refused: Vec<(Arc<str>, Code)>,
    },
    /// The owner → a user's shard: operation `op` is over (committed or refused); its places
    /// are released.
    Release { op: u64 },
}

/// One entry of a group (a message or a membership change) as committed by its owner.
#[derive(Debug)]
pub struct GroupEntry {
    pub group: Arc<str>,
    pub group_seq: u64,
    pub kind: EntryKind,
    /// The sender, or who made the change.
    pub from: Arc<str>,
    pub client_msg_id: u64,
    pub sent_at_ms: u64,
    pub body: Bytes,
    /// Membership changes: the users concerned.
    pub members: Vec<Arc<str>>,
}

/// A group operation, owned, as it crosses the mesh.
#[derive(Debug, Clone)]
pub enum GroupOpRequest {
    Create { members: Vec<Arc<str>> },
    Add { members: Vec<Arc<str>> },
    Remove { members: Vec<Arc<str>> },
    Leave,
    Info { after: Box<str>, limit: u32 },
}

#[derive(Debug)]
pub struct GroupRequest {
    /// Who asks (a group's creator, for Create). With `privileged`, the server API on behalf
    /// of the app backend: membership and admin checks do not apply.
    pub user: Arc<str>,
    pub privileged: bool,
    pub origin_conn: ConnId,
    pub request_id: u64,
    pub group: Arc<str>,
    pub op: GroupOpRequest,
}

/// An owned GroupReply, on its way to the requester's connection.
#[derive(Debug, Default)]
pub struct GroupAnswer {
    pub origin_conn: ConnId,
    pub request_id: u64,
    pub status: Code,
    pub message: Box<str>,
    pub group: Arc<str>,
    pub group_seq: u64,
    /// GroupInfo: (user, admin), a page.
    pub members: Vec<(Arc<str>, bool)>,
    pub next_after: Box<str>,
    pub member_count: u32,
}

#[derive(Debug)]
pub struct GroupSend {
    pub from: Arc<str>,
    pub group: Arc<str>,
    pub client_msg_id: u64,
    pub body: Bytes,
    pub origin_conn: ConnId,
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
    /// Bytes that followed the Login frame in the same reads (pipelined frames), still framed
    /// (plaintext, on TLS too).
    pub leftover: Vec<u8>,
    /// When it was accepted and its Login read, for `ringpost_login_stage_seconds`.
    pub stamps: crate::metrics::login_stages::LoginStamps,
    /// The connection's TLS session, handshake done (`[tls]` on): the owner decrypts and
    /// encrypts with it from here on.
    pub tls: Option<Box<crate::wire::tls::ServerTls>>,
    /// The connection's place under `limits.max_connections`, freed when it closes (an
    /// Option only so that the owner can move it out).
    pub slot: Option<super::gate::Slot>,
}

/// A user ID kept as a slice of the read it arrived in ([`ReadSource::keep`]): forwarding a
/// 1:1 message allocates nothing for its recipient. Always UTF-8: made only from a `&str`.
#[derive(Debug, Clone)]
pub struct UserRef(Bytes);

impl UserRef {
    /// `name` (a part of a frame read from `src`), kept without a copy when it can be.
    pub fn keep(src: ReadSource<'_>, name: &str) -> UserRef {
        UserRef(src.keep(name.as_bytes()))
    }
}

impl std::ops::Deref for UserRef {
    type Target = str;

    fn deref(&self) -> &str {
        // SAFETY: the bytes were a `&str` when `keep` took them, and `Bytes` never changes.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }
}

#[derive(Debug)]
pub struct Message {
    pub from: Arc<str>,
    pub to: UserRef,
    pub client_msg_id: u64,
    pub body: Bytes,
    /// Sender's connection on the origin shard, for the SendAck.
    pub origin_conn: ConnId,
    /// When the sender's shard read the Send frame ([`crate::metrics::stages`]).
    pub read_ns: u64,
}

#[derive(Debug)]
pub struct SendAck {
    pub sender: Arc<str>,
    pub origin_conn: ConnId,
    pub client_msg_id: u64,
    pub status: Code,
    /// Own-send sync: the copy the sender's shard appends to the sender's own stream. Only in
    /// the first OK answer of a 1:1 message stored for the first time — never for a refusal,
    /// a resend answered from the dedup window or a group send — so it is appended once.
    pub own_copy: Option<OwnCopy>,
    /// When the sender's shard read the Send frame, and when this ack was pushed to the mesh
    /// (0 when not stamped; [`crate::metrics::stages`]).
    pub read_ns: u64,
    pub pushed_ns: u64,
}

/// Own-send sync: what the sender's shard needs for the copy of a 1:1 message in the sender's
/// own stream. The recipient's shard keeps the `Message`'s own `to` and `body` (refcounted, not
/// copied) with the message's pending ack and hands them back in its SendAck, so the sender's
/// shard keeps nothing per message in flight.
#[derive(Debug)]
pub struct OwnCopy {
    pub to: UserRef,
    pub body: Bytes,
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

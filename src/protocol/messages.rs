//! The decoded messages, one enum per direction. Strings and bodies borrow from the payload
//! they were decoded from (zero copy); encoding takes the same borrowed form.
//!
//! Field meanings are documented on the tables in `schema/ringpost.fbs`.

use flatbuffers::{ForwardsUOffset, Vector};

use super::ringpost_generated::ringpost::wire as fb;
use super::{Code, EntryKind};

/// A list of user or group IDs: borrowed from a decoded frame, or from the caller to encode.
#[derive(Clone, Copy)]
pub enum Names<'a> {
    /// Straight from a verified frame (zero copy).
    Wire(Vector<'a, ForwardsUOffset<&'a str>>),
    /// The caller's.
    Slice(&'a [&'a str]),
}

impl<'a> Names<'a> {
    pub const EMPTY: Names<'static> = Names::Slice(&[]);

    pub fn len(&self) -> usize {
        match self {
            Names::Wire(v) => v.len(),
            Names::Slice(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a str> + 'a {
        let (wire, slice) = match *self {
            Names::Wire(v) => (Some(v.iter()), None),
            Names::Slice(s) => (None, Some(s.iter().copied())),
        };
        wire.into_iter()
            .flatten()
            .chain(slice.into_iter().flatten())
    }

    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_owned).collect()
    }
}

impl std::fmt::Debug for Names<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl PartialEq for Names<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Names<'_> {}

/// Group members with their role: from a decoded GroupReply, or the caller's to encode.
#[derive(Clone, Copy)]
pub enum Members<'a> {
    Wire(Vector<'a, ForwardsUOffset<fb::GroupMember<'a>>>),
    /// (user ID, admin)
    Slice(&'a [(&'a str, bool)]),
}

impl<'a> Members<'a> {
    pub const EMPTY: Members<'static> = Members::Slice(&[]);

    pub fn len(&self) -> usize {
        match self {
            Members::Wire(v) => v.len(),
            Members::Slice(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (user ID, admin) pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, bool)> + 'a {
        let (wire, slice) = match *self {
            Members::Wire(v) => (Some(v.iter()), None),
            Members::Slice(s) => (None, Some(s.iter().copied())),
        };
        wire.into_iter()
            .flatten()
            .map(|m| (m.user_id().unwrap_or(""), m.admin()))
            .chain(slice.into_iter().flatten())
    }
}

impl std::fmt::Debug for Members<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl PartialEq for Members<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Members<'_> {}

/// A group operation from a client (each answered by GroupReply with its `request_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupOp<'a> {
    /// `table GroupCreate`: the sender becomes the first admin.
    Create { members: Names<'a> },
    /// `table GroupAdd` (admins only).
    Add { members: Names<'a> },
    /// `table GroupRemove` (admins only).
    Remove { members: Names<'a> },
    /// `table GroupLeave`.
    Leave,
    /// `table GroupInfo`: a page of members after `after`, at most `limit` (0 = default).
    Info { after: &'a str, limit: u32 },
}

/// One entry of a user's stream (`table Deliver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deliver<'a> {
    /// The recipient's per-user sequence number.
    pub seq: u64,
    /// The sender (messages) or who made the change (group events); "" when absent.
    pub from_user: &'a str,
    /// The sender's `client_msg_id`.
    pub client_msg_id: u64,
    /// Broker wall clock (ms since the Unix epoch) when the message was accepted.
    pub sent_at_ms: u64,
    /// Opaque payload; empty when absent.
    pub body: &'a [u8],
    /// Group entries: the group ("" for 1:1) and the entry's group_seq.
    pub group_id: &'a str,
    pub group_seq: u64,
    pub kind: EntryKind,
    /// The user sent this message (own-send sync).
    pub outgoing: bool,
    /// Outgoing 1:1 messages: the recipient.
    pub to_user: &'a str,
    /// Group events: the users concerned.
    pub members: Names<'a>,
}

impl<'a> Deliver<'a> {
    /// A 1:1 message to the user.
    pub fn message(
        seq: u64,
        from_user: &'a str,
        client_msg_id: u64,
        sent_at_ms: u64,
        body: &'a [u8],
    ) -> Deliver<'a> {
        Deliver {
            seq,
            from_user,
            client_msg_id,
            sent_at_ms,
            body,
            group_id: "",
            group_seq: 0,
            kind: EntryKind::Message,
            outgoing: false,
            to_user: "",
            members: Names::EMPTY,
        }
    }
}

/// A frame a client sends (client → server), borrowed from the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMsg<'a> {
    /// First frame of every connection (`table Login`).
    Login {
        /// HS256 JWT minted by the app backend. Required on the wire.
        token: &'a str,
        /// Stable per-device identifier, at most [`MAX_DEVICE_ID`](super::MAX_DEVICE_ID) bytes;
        /// "" when absent.
        device_id: &'a str,
        /// Highest seq this device has processed; 0 means "everything still retained".
        last_seq: u64,
    },
    /// A 1:1 message, idempotent per (sender, `client_msg_id`) (`table Send`).
    Send {
        /// Client-chosen ID, echoed in the SendAck and used for dedup.
        client_msg_id: u64,
        /// Recipient user ID. Required on the wire.
        to_user: &'a str,
        /// Opaque payload; empty when absent.
        body: &'a [u8],
    },
    /// Every Deliver with `seq <= up_to_seq` has been processed (`table Ack`).
    Ack {
        /// Highest processed seq.
        up_to_seq: u64,
    },
    /// Keep-alive, answered by Pong with the same nonce (`table Ping`).
    Ping {
        /// Echoed in the Pong.
        nonce: u64,
    },
    /// Close the session cleanly; answered by GoAway(LOGGED_OUT) (`table Logout`).
    Logout,
    /// A group operation on `group_id` (`table GroupCreate` … `GroupInfo`).
    Group {
        request_id: u64,
        group_id: &'a str,
        op: GroupOp<'a>,
    },
    /// The groups the user is in (`table GroupList`).
    GroupList { request_id: u64 },
    /// A message to a group (`table GroupSend`), idempotent like Send.
    GroupSend {
        client_msg_id: u64,
        group_id: &'a str,
        body: &'a [u8],
    },
}

/// A frame the server sends (server → client), borrowed from the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMsg<'a> {
    /// Answer to a successful Login (`table LoginOk`).
    LoginOk {
        /// The token's `sub`; "" when absent.
        user_id: &'a str,
        /// Shard (core) that owns the user and serves this connection.
        shard: u16,
        /// The user's newest assigned seq (0 if none yet).
        head_seq: u64,
        /// Send something at least this often (ms).
        heartbeat_ms: u32,
        /// Oldest seq still retained (0 when nothing is retained).
        oldest_seq: u64,
        /// Part of `(last_seq, head_seq]` was removed and cannot be replayed.
        gap: bool,
    },
    /// Outcome of one Send (`table SendAck`).
    SendAck {
        /// The Send's `client_msg_id`.
        client_msg_id: u64,
        /// `Code::OK` or why the message was not accepted.
        status: Code,
        /// Own-send sync: the seq of the send's copy in the sender's stream, which this
        /// connection is not sent (0: none skipped; see the schema).
        own_seq: u64,
    },
    /// An entry of this user's stream (`table Deliver`).
    Deliver(Deliver<'a>),
    /// Answer to a Ping (`table Pong`).
    Pong {
        /// The Ping's nonce.
        nonce: u64,
    },
    /// A rejection; the server closes the connection after it (`table Error`).
    Error {
        /// Why.
        code: Code,
        /// Human-readable detail; "" when absent.
        message: &'a str,
    },
    /// The server is closing this connection (`table GoAway`).
    GoAway {
        /// Why.
        code: Code,
        /// Human-readable detail; "" when absent.
        reason: &'a str,
    },
    /// The answer to a group operation (`table GroupReply`).
    GroupReply(GroupReply<'a>),
}

/// `table GroupReply`; fields an operation does not use are empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupReply<'a> {
    pub request_id: u64,
    pub status: Code,
    pub group_id: &'a str,
    /// The group_seq of the change the operation made (0 when none).
    pub group_seq: u64,
    /// GroupList: the user's groups.
    pub groups: Names<'a>,
    /// GroupInfo: a page of members.
    pub members: Members<'a>,
    /// GroupInfo: `after` for the next page; "" on the last one.
    pub next_after: &'a str,
    pub member_count: u32,
    /// Why, when `status` is not OK.
    pub message: &'a str,
}

impl<'a> GroupReply<'a> {
    /// A reply with only a status (and its reason).
    pub fn status(
        request_id: u64,
        group_id: &'a str,
        status: Code,
        message: &'a str,
    ) -> GroupReply<'a> {
        GroupReply {
            request_id,
            status,
            group_id,
            group_seq: 0,
            groups: Names::EMPTY,
            members: Members::EMPTY,
            next_after: "",
            member_count: 0,
            message,
        }
    }
}

//! What the log stores and how each record is framed on disk.
//!
//! ```text
//! offset  size  field
//! 0       4     payload length N (u32 LE), excluding header and padding
//! 4       4     CRC32C over byte 8 (kind) followed by the N payload bytes
//! 8       1     kind: which archive the payload holds (KIND_* below)
//! 9       7     reserved, zero
//! 16      N     rkyv archive (kinds 1 and 2: `Legacy`; kind k >= 3: that kind's struct)
//! 16+N    pad   zeros up to the next multiple of RECORD_ALIGN
//! ```
//!
//! Each kind from 3 on archives its own struct, so adding a kind never changes how an older
//! one is laid out: logs written before a kind existed stay readable. Kinds 1 and 2 predate
//! that rule and share one archived enum ([`Legacy`]), kept exactly as it was.
//!
//! Records start at multiples of [`RECORD_ALIGN`] so the rkyv archive can be read in place
//! from the map. Preallocated segments are zero-filled, and a zero header (length 0, kind 0)
//! marks the end of what was written; a valid record never has kind 0.

use rkyv::rancor::{Fallible, Source};
use rkyv::ser::{Allocator, Writer};
use rkyv::string::{ArchivedString, StringResolver};
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{Archive, Deserialize, Place, Serialize};

/// Bytes of the record header.
pub const HEADER_LEN: usize = 16;
/// Records (and so their archives) start at multiples of this.
pub const RECORD_ALIGN: usize = 16;
/// Byte offsets inside the header.
pub const LEN_AT: usize = 0;
pub const CRC_AT: usize = 4;
pub const KIND_AT: usize = 8;

/// Header `kind` values.
pub const KIND_MESSAGE: u8 = 1;
pub const KIND_CURSOR: u8 = 2;
pub const KIND_OUTGOING: u8 = 3;
pub const KIND_GROUP: u8 = 4;
pub const KIND_GROUP_SNAPSHOT: u8 = 5;
pub const KIND_FANOUT: u8 = 6;
pub const KIND_ANCHOR: u8 = 7;

/// Every kind this build reads.
pub fn known_kind(kind: u8) -> bool {
    (KIND_MESSAGE..=KIND_ANCHOR).contains(&kind)
}

/// No previous record (end of a per-user back-pointer chain).
pub const NO_POSITION: u64 = u64::MAX;

/// A 1:1 message as stored in the recipient's owner-shard log.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    pub to: String,
    pub seq: u64,
    pub from: String,
    pub client_msg_id: u64,
    pub sent_at_ms: u64,
    pub body: Vec<u8>,
    /// Position of the recipient's previous message record ([`NO_POSITION`] if none), so a
    /// user's messages can be walked without scanning the shard's log.
    pub prev: u64,
}

/// A device's ack cursor moved.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct CursorRecord {
    pub user: String,
    pub device: String,
    pub acked: u64,
    pub at_ms: u64,
}

/// Own-send sync: a 1:1 message `user` sent, as an entry of `user`'s own stream, on the
/// sender's owner shard (the recipient's copy is a [`MessageRecord`] on theirs).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct OutgoingRecord {
    pub user: String,
    pub seq: u64,
    pub to: String,
    pub client_msg_id: u64,
    pub sent_at_ms: u64,
    pub body: Vec<u8>,
}

/// One entry of a group (a message or a membership change), once per shard: on the group's
/// owner shard it is the authoritative record; on every other shard with members it is the
/// fan-out copy. It names no member streams: each local member's seq for it is assigned in log
/// order from the shard's view of the group's members, so recovery re-derives them.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub group: String,
    pub group_seq: u64,
    /// `protocol::EntryKind` value (message, created, added, removed, left).
    pub kind: u8,
    /// The sender, or who made the change.
    pub from: String,
    pub client_msg_id: u64,
    pub sent_at_ms: u64,
    pub body: Vec<u8>,
    /// Membership changes: the users created with, added, removed, or who left.
    pub members: Vec<String>,
}

/// The state of one group as this shard knows it, written before retention deletes the
/// records it was built from: on the owner, every member with its role and the group's head
/// group_seq; elsewhere, the local members and the last group_seq applied.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct GroupSnapshotRecord {
    pub group: String,
    pub group_seq: u64,
    pub owned: bool,
    /// (user, admin)
    pub members: Vec<(String, bool)>,
    /// Owner: (shard, group_seq it has applied) for every shard that has not applied
    /// everything yet.
    pub fanout: Vec<(u32, u64)>,
    pub at_ms: u64,
}

/// On the group's owner shard: `shard` has durably applied the group's entries up to
/// `applied`, so they need no re-drive after a restart.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FanoutRecord {
    pub group: String,
    pub shard: u32,
    pub applied: u64,
    pub at_ms: u64,
}

/// Users' positions, restated so that a segment can be replayed without the ones before it:
/// written before a user's first derived-seq (group) entry in a segment, and before retention
/// deletes the last records a user's head seq or cursors were known from.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AnchorRecord {
    /// (user, head seq)
    pub heads: Vec<(String, u64)>,
    /// (user, device, acked)
    pub cursors: Vec<(String, String, u64)>,
    pub at_ms: u64,
}

/// The archive of kinds 1 and 2 (its layout is fixed: logs already hold it).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Legacy {
    Message(MessageRecord),
    Cursor(CursorRecord),
}

/// [`Legacy`] archived from a borrowed record: the same bytes without cloning the record
/// (its strings and body) on every append.
#[derive(Archive, Serialize)]
#[rkyv(as = ArchivedLegacy)]
enum LegacyRef<'a> {
    Message(#[rkyv(with = rkyv::with::Inline)] &'a MessageRef<'a>),
    Cursor(#[rkyv(with = rkyv::with::Inline)] &'a CursorRecord),
}

/// A [`MessageRecord`] borrowing its strings and body (the send path appends one per message
/// without copying them into an owned record first); archives to the same bytes: the same
/// archived type, out-of-line data serialised in the same field order.
pub struct MessageRef<'a> {
    pub to: &'a str,
    pub seq: u64,
    pub from: &'a str,
    pub client_msg_id: u64,
    pub sent_at_ms: u64,
    pub body: &'a [u8],
    pub prev: u64,
}

impl<'a> From<&'a MessageRecord> for MessageRef<'a> {
    fn from(m: &'a MessageRecord) -> Self {
        MessageRef {
            to: &m.to,
            seq: m.seq,
            from: &m.from,
            client_msg_id: m.client_msg_id,
            sent_at_ms: m.sent_at_ms,
            body: &m.body,
            prev: m.prev,
        }
    }
}

/// Where a borrowed record's strings and body went in the archive.
pub struct BorrowedResolver {
    first: StringResolver,
    second: StringResolver,
    body: VecResolver,
}

impl Archive for MessageRef<'_> {
    type Archived = ArchivedMessageRecord;
    type Resolver = BorrowedResolver;

    fn resolve(&self, r: BorrowedResolver, out: Place<ArchivedMessageRecord>) {
        rkyv::munge::munge!(let ArchivedMessageRecord { to, seq, from, client_msg_id, sent_at_ms, body, prev } = out);
        ArchivedString::resolve_from_str(self.to, r.first, to);
        self.seq.resolve((), seq);
        ArchivedString::resolve_from_str(self.from, r.second, from);
        self.client_msg_id.resolve((), client_msg_id);
        self.sent_at_ms.resolve((), sent_at_ms);
        ArchivedVec::<u8>::resolve_from_len(self.body.len(), r.body, body);
        self.prev.resolve((), prev);
    }
}

impl<S: Fallible + Allocator + Writer + ?Sized> Serialize<S> for MessageRef<'_>
where
    S::Error: Source,
{
    fn serialize(&self, s: &mut S) -> Result<BorrowedResolver, S::Error> {
        Ok(BorrowedResolver {
            first: ArchivedString::serialize_from_str(self.to, s)?,
            second: ArchivedString::serialize_from_str(self.from, s)?,
            body: ArchivedVec::<u8>::serialize_from_slice(self.body, s)?,
        })
    }
}

/// An [`OutgoingRecord`] borrowing its strings and body; archives to the same bytes.
pub struct OutgoingRef<'a> {
    pub user: &'a str,
    pub seq: u64,
    pub to: &'a str,
    pub client_msg_id: u64,
    pub sent_at_ms: u64,
    pub body: &'a [u8],
}

impl Archive for OutgoingRef<'_> {
    type Archived = ArchivedOutgoingRecord;
    type Resolver = BorrowedResolver;

    fn resolve(&self, r: BorrowedResolver, out: Place<ArchivedOutgoingRecord>) {
        rkyv::munge::munge!(let ArchivedOutgoingRecord { user, seq, to, client_msg_id, sent_at_ms, body } = out);
        ArchivedString::resolve_from_str(self.user, r.first, user);
        self.seq.resolve((), seq);
        ArchivedString::resolve_from_str(self.to, r.second, to);
        self.client_msg_id.resolve((), client_msg_id);
        self.sent_at_ms.resolve((), sent_at_ms);
        ArchivedVec::<u8>::resolve_from_len(self.body.len(), r.body, body);
    }
}

impl<S: Fallible + Allocator + Writer + ?Sized> Serialize<S> for OutgoingRef<'_>
where
    S::Error: Source,
{
    fn serialize(&self, s: &mut S) -> Result<BorrowedResolver, S::Error> {
        Ok(BorrowedResolver {
            first: ArchivedString::serialize_from_str(self.user, s)?,
            second: ArchivedString::serialize_from_str(self.to, s)?,
            body: ArchivedVec::<u8>::serialize_from_slice(self.body, s)?,
        })
    }
}

/// A group entry without a member list (a message, nearly always) as a [`GroupRecord`]
/// borrowing its strings and body, so the body goes from the entry's shared `Bytes` straight
/// into the log; archives to the same bytes. Entries with members go through the owned record.
#[derive(Clone, Copy)]
pub struct GroupMessageRef<'a> {
    pub group: &'a str,
    pub group_seq: u64,
    pub kind: u8,
    pub from: &'a str,
    pub client_msg_id: u64,
    pub sent_at_ms: u64,
    pub body: &'a [u8],
}

/// Where a borrowed group message's strings, body and (empty) member list went.
pub struct GroupMessageResolver {
    group: StringResolver,
    from: StringResolver,
    body: VecResolver,
    members: VecResolver,
}

impl Archive for GroupMessageRef<'_> {
    type Archived = ArchivedGroupRecord;
    type Resolver = GroupMessageResolver;

    fn resolve(&self, r: GroupMessageResolver, out: Place<ArchivedGroupRecord>) {
        rkyv::munge::munge!(let ArchivedGroupRecord { group, group_seq, kind, from, client_msg_id, sent_at_ms, body, members } = out);
        ArchivedString::resolve_from_str(self.group, r.group, group);
        self.group_seq.resolve((), group_seq);
        self.kind.resolve((), kind);
        ArchivedString::resolve_from_str(self.from, r.from, from);
        self.client_msg_id.resolve((), client_msg_id);
        self.sent_at_ms.resolve((), sent_at_ms);
        ArchivedVec::<u8>::resolve_from_len(self.body.len(), r.body, body);
        ArchivedVec::<ArchivedString>::resolve_from_len(0, r.members, members);
    }
}

impl<S: Fallible + Allocator + Writer + ?Sized> Serialize<S> for GroupMessageRef<'_>
where
    S::Error: Source,
{
    fn serialize(&self, s: &mut S) -> Result<GroupMessageResolver, S::Error> {
        Ok(GroupMessageResolver {
            group: ArchivedString::serialize_from_str(self.group, s)?,
            from: ArchivedString::serialize_from_str(self.from, s)?,
            body: ArchivedVec::<u8>::serialize_from_slice(self.body, s)?,
            members: ArchivedVec::<ArchivedString>::serialize_from_slice::<String, S>(&[], s)?,
        })
    }
}

/// What [`crate::log::Log::append`] takes: any record, or one of the send path's two kinds
/// borrowed.
pub enum Append<'a> {
    Record(&'a Record),
    Message(MessageRef<'a>),
    Outgoing(OutgoingRef<'a>),
    GroupMessage(GroupMessageRef<'a>),
}

impl<'a> From<&'a Record> for Append<'a> {
    fn from(r: &'a Record) -> Self {
        Append::Record(r)
    }
}

impl Append<'_> {
    pub fn kind(&self) -> u8 {
        match self {
            Append::Record(r) => r.kind(),
            Append::Message(_) => KIND_MESSAGE,
            Append::Outgoing(_) => KIND_OUTGOING,
            Append::GroupMessage(_) => KIND_GROUP,
        }
    }

    pub fn time_ms(&self) -> u64 {
        match self {
            Append::Record(r) => r.time_ms(),
            Append::Message(m) => m.sent_at_ms,
            Append::Outgoing(o) => o.sent_at_ms,
            Append::GroupMessage(g) => g.sent_at_ms,
        }
    }

    /// The archive of the record into `buf` (cleared first), so an appender reuses one buffer.
    pub fn archive_in(
        &self,
        mut buf: rkyv::util::AlignedVec,
    ) -> Result<rkyv::util::AlignedVec, rkyv::rancor::Error> {
        use rkyv::api::high::to_bytes_in;
        use rkyv::rancor::Error;
        match self {
            Append::Record(r) => r.archive_in(buf),
            Append::Message(m) => {
                buf.clear();
                to_bytes_in::<_, Error>(&LegacyRef::Message(m), buf)
            }
            Append::Outgoing(o) => {
                buf.clear();
                to_bytes_in::<_, Error>(o, buf)
            }
            Append::GroupMessage(g) => {
                buf.clear();
                to_bytes_in::<_, Error>(g, buf)
            }
        }
    }

    /// For the borrowed kinds (1:1 message, outgoing, group message): bytes that the archive
    /// takes at most (its root struct, the strings' and body's bytes, padding), so that
    /// [`Append::archive_into`] a buffer this long cannot run out of room. `None` for any other
    /// record (archived via a scratch buffer).
    pub fn archive_bound(&self) -> Option<usize> {
        // The archived roots are at most 8 eight-byte fields (and the legacy enum's tag); each
        // out-of-line string or vector adds at most 7 bytes of alignment.
        const ROOT_AND_PADDING: usize = 128;
        match self {
            Append::Record(_) => None,
            Append::Message(m) => Some(m.to.len() + m.from.len() + m.body.len() + ROOT_AND_PADDING),
            Append::Outgoing(o) => {
                Some(o.user.len() + o.to.len() + o.body.len() + ROOT_AND_PADDING)
            }
            Append::GroupMessage(g) => {
                Some(g.group.len() + g.from.len() + g.body.len() + ROOT_AND_PADDING)
            }
        }
    }

    /// Archives a borrowed record straight into `out` (the segment's map, past the header):
    /// the body's one copy on its way into the log. Returns the archive's length. The bytes are
    /// exactly those [`Append::archive_in`] produces, given a 16-byte aligned `out`.
    pub fn archive_into(&self, out: &mut [u8]) -> Result<usize, rkyv::rancor::Error> {
        use rkyv::api::high::to_bytes_in;
        use rkyv::rancor::Error;
        use rkyv::ser::writer::Buffer;
        let out = Buffer::from(out);
        let written = match self {
            Append::Record(_) => rkyv::rancor::fail!(NotASendRecord),
            Append::Message(m) => to_bytes_in::<_, Error>(&LegacyRef::Message(m), out)?,
            Append::Outgoing(o) => to_bytes_in::<_, Error>(o, out)?,
            Append::GroupMessage(g) => to_bytes_in::<_, Error>(g, out)?,
        };
        Ok(written.len())
    }
}

/// [`Append::archive_into`] was given an owned record (those go through the scratch buffer).
#[derive(Debug, thiserror::Error)]
#[error("only borrowed records are archived in place")]
struct NotASendRecord;

/// Any record, in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Message(MessageRecord),
    Cursor(CursorRecord),
    Outgoing(OutgoingRecord),
    Group(GroupRecord),
    GroupSnapshot(GroupSnapshotRecord),
    Fanout(FanoutRecord),
    Anchor(AnchorRecord),
}

impl Record {
    pub fn kind(&self) -> u8 {
        match self {
            Record::Message(_) => KIND_MESSAGE,
            Record::Cursor(_) => KIND_CURSOR,
            Record::Outgoing(_) => KIND_OUTGOING,
            Record::Group(_) => KIND_GROUP,
            Record::GroupSnapshot(_) => KIND_GROUP_SNAPSHOT,
            Record::Fanout(_) => KIND_FANOUT,
            Record::Anchor(_) => KIND_ANCHOR,
        }
    }

    /// Wall-clock time of the record, for retention by age.
    pub fn time_ms(&self) -> u64 {
        match self {
            Record::Message(m) => m.sent_at_ms,
            Record::Cursor(c) => c.at_ms,
            Record::Outgoing(o) => o.sent_at_ms,
            Record::Group(g) => g.sent_at_ms,
            Record::GroupSnapshot(s) => s.at_ms,
            Record::Fanout(f) => f.at_ms,
            Record::Anchor(a) => a.at_ms,
        }
    }

    /// The archive bytes of this record (what follows the header).
    fn archive(&self) -> Result<rkyv::util::AlignedVec, rkyv::rancor::Error> {
        self.archive_in(rkyv::util::AlignedVec::new())
    }

    /// `Record::archive` into `buf` (cleared first), so an appender can reuse one buffer.
    pub fn archive_in(
        &self,
        mut buf: rkyv::util::AlignedVec,
    ) -> Result<rkyv::util::AlignedVec, rkyv::rancor::Error> {
        use rkyv::api::high::to_bytes_in;
        use rkyv::rancor::Error;
        buf.clear();
        match self {
            // Kinds 1 and 2 are stored as the `Legacy` enum.
            Record::Message(m) => to_bytes_in::<_, Error>(&LegacyRef::Message(&m.into()), buf),
            Record::Cursor(c) => to_bytes_in::<_, Error>(&LegacyRef::Cursor(c), buf),
            Record::Outgoing(o) => to_bytes_in::<_, Error>(o, buf),
            Record::Group(g) => to_bytes_in::<_, Error>(g, buf),
            Record::GroupSnapshot(s) => to_bytes_in::<_, Error>(s, buf),
            Record::Fanout(f) => to_bytes_in::<_, Error>(f, buf),
            Record::Anchor(a) => to_bytes_in::<_, Error>(a, buf),
        }
    }
}

/// A stream entry read in place from the log: what a user's index can point at.
pub enum ArchivedEntry<'a> {
    Message(&'a ArchivedMessageRecord),
    Outgoing(&'a ArchivedOutgoingRecord),
    Group(&'a ArchivedGroupRecord),
}

impl ArchivedEntry<'_> {
    /// Appends the Deliver frame of this entry as entry `seq` of `user`'s stream, with `head`
    /// in front (the connection's framing), straight from the archive (every delivery — live,
    /// replay, catch-up — is encoded here).
    pub fn encode_deliver(
        &self,
        seq: u64,
        user: &str,
        head: &impl crate::protocol::FrameHead,
        out: &mut Vec<u8>,
    ) {
        use crate::protocol::{encode_server_with, Deliver, EntryKind, Names, ServerMsg};
        let deliver = match self {
            ArchivedEntry::Message(m) => Deliver::message(
                seq,
                m.from.as_str(),
                m.client_msg_id.to_native(),
                m.sent_at_ms.to_native(),
                m.body.as_slice(),
            ),
            ArchivedEntry::Outgoing(o) => Deliver {
                outgoing: true,
                to_user: o.to.as_str(),
                ..Deliver::message(
                    seq,
                    user,
                    o.client_msg_id.to_native(),
                    o.sent_at_ms.to_native(),
                    o.body.as_slice(),
                )
            },
            ArchivedEntry::Group(g) => {
                let members: Vec<&str> = g.members.iter().map(|m| m.as_str()).collect();
                let deliver = Deliver {
                    group_id: g.group.as_str(),
                    group_seq: g.group_seq.to_native(),
                    kind: EntryKind(g.kind),
                    outgoing: g.from.as_str() == user,
                    members: Names::Slice(&members),
                    ..Deliver::message(
                        seq,
                        g.from.as_str(),
                        g.client_msg_id.to_native(),
                        g.sent_at_ms.to_native(),
                        g.body.as_slice(),
                    )
                };
                encode_server_with(&ServerMsg::Deliver(deliver), head, out);
                return;
            }
        };
        encode_server_with(&ServerMsg::Deliver(deliver), head, out);
    }
}

/// Rounds `n` up to a multiple of [`RECORD_ALIGN`].
pub fn aligned(n: usize) -> usize {
    n.div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// CRC32C of the kind byte followed by the payload.
pub fn checksum(kind: u8, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&[kind]), payload)
}

/// Serialises `record` into a complete framed record (header, archive, padding).
pub fn frame(record: &Record) -> Result<Vec<u8>, rkyv::rancor::Error> {
    let payload = record.archive()?;
    let mut out = vec![0u8; framed_len(payload.len())];
    frame_into(record.kind(), &payload, &mut out);
    Ok(out)
}

/// Bytes a record with a `payload_len`-byte archive occupies (header, archive, padding).
pub fn framed_len(payload_len: usize) -> usize {
    HEADER_LEN + aligned(payload_len)
}

/// Writes the framed record of `kind` holding `payload` into `out`, exactly
/// [`framed_len`]`(payload.len())` bytes (header, archive, zero padding).
pub fn frame_into(kind: u8, payload: &[u8], out: &mut [u8]) {
    let (head, rest) = out.split_at_mut(HEADER_LEN);
    let (body, pad) = rest.split_at_mut(payload.len());
    body.copy_from_slice(payload);
    pad.fill(0);
    write_header(kind, payload, head);
}

/// Writes the header of a record of `kind` whose archive is `payload` into `head`
/// ([`HEADER_LEN`] bytes).
pub fn write_header(kind: u8, payload: &[u8], head: &mut [u8]) {
    let mut header = [0u8; HEADER_LEN];
    header[LEN_AT..LEN_AT + 4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[CRC_AT..CRC_AT + 4].copy_from_slice(&checksum(kind, payload).to_le_bytes());
    header[KIND_AT] = kind;
    head.copy_from_slice(&header);
}

/// What is at one offset of a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Framed<'a> {
    /// A valid record: its kind, its payload, and the bytes it occupies (header + padding).
    Record {
        kind: u8,
        payload: &'a [u8],
        size: usize,
    },
    /// Zero header: nothing was written here yet.
    End,
    /// Not a valid record (torn write or corruption), with the reason.
    Bad(&'static str),
}

/// Check step: validates the frame at the start of `buf` (header, bounds, CRC).
pub fn parse(buf: &[u8]) -> Framed<'_> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return if buf.iter().all(|&b| b == 0) {
            Framed::End
        } else {
            Framed::Bad("header runs past the segment end")
        };
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let kind = header[KIND_AT];
    if kind == 0 {
        return if header.iter().all(|&b| b == 0) {
            Framed::End
        } else {
            Framed::Bad("kind 0 with a non-zero header")
        };
    }
    if !known_kind(kind) {
        return Framed::Bad("unknown record kind");
    }
    let size = HEADER_LEN + aligned(len);
    if len == 0 || size > buf.len() {
        return Framed::Bad("length runs past the segment end");
    }
    let payload = &buf[HEADER_LEN..HEADER_LEN + len];
    if checksum(kind, payload) != crc {
        return Framed::Bad("CRC mismatch");
    }
    Framed::Record {
        kind,
        payload,
        size,
    }
}

/// Validates and deserialises the payload of a record of `kind`.
pub fn decode(kind: u8, payload: &[u8]) -> Result<Record, rkyv::rancor::Error> {
    // The payload sits at a RECORD_ALIGN-aligned offset of a page-aligned map, which satisfies
    // the archive's alignment; copy into an aligned buffer otherwise (tests, odd callers).
    if (payload.as_ptr() as usize).is_multiple_of(RECORD_ALIGN) {
        decode_aligned(kind, payload)
    } else {
        let mut copy = rkyv::util::AlignedVec::<RECORD_ALIGN>::with_capacity(payload.len());
        copy.extend_from_slice(payload);
        decode_aligned(kind, &copy)
    }
}

fn decode_aligned(kind: u8, payload: &[u8]) -> Result<Record, rkyv::rancor::Error> {
    use rkyv::rancor::{Error, Source};
    Ok(match kind {
        KIND_MESSAGE | KIND_CURSOR => match rkyv::from_bytes::<Legacy, Error>(payload)? {
            Legacy::Message(m) => Record::Message(m),
            Legacy::Cursor(c) => Record::Cursor(c),
        },
        KIND_OUTGOING => Record::Outgoing(rkyv::from_bytes::<OutgoingRecord, Error>(payload)?),
        KIND_GROUP => Record::Group(rkyv::from_bytes::<GroupRecord, Error>(payload)?),
        KIND_GROUP_SNAPSHOT => {
            Record::GroupSnapshot(rkyv::from_bytes::<GroupSnapshotRecord, Error>(payload)?)
        }
        KIND_FANOUT => Record::Fanout(rkyv::from_bytes::<FanoutRecord, Error>(payload)?),
        KIND_ANCHOR => Record::Anchor(rkyv::from_bytes::<AnchorRecord, Error>(payload)?),
        other => return Err(Error::new(UnknownKind(other))),
    })
}

/// A kind byte no decoder knows (parse() refuses those before decode is reached).
#[derive(Debug)]
struct UnknownKind(u8);

impl std::fmt::Display for UnknownKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown record kind {}", self.0)
    }
}

impl std::error::Error for UnknownKind {}

/// Validates the archive of a stream entry (message, outgoing or group record) in place.
pub fn access_entry(kind: u8, payload: &[u8]) -> Result<ArchivedEntry<'_>, String> {
    use rkyv::rancor::Error;
    let wrong = || format!("record kind {kind} is not a stream entry");
    match kind {
        KIND_MESSAGE => match rkyv::access::<ArchivedLegacy, Error>(payload) {
            Ok(ArchivedLegacy::Message(m)) => Ok(ArchivedEntry::Message(m)),
            Ok(ArchivedLegacy::Cursor(_)) => Err(wrong()),
            Err(e) => Err(e.to_string()),
        },
        KIND_OUTGOING => rkyv::access::<ArchivedOutgoingRecord, Error>(payload)
            .map(ArchivedEntry::Outgoing)
            .map_err(|e| e.to_string()),
        KIND_GROUP => rkyv::access::<ArchivedGroupRecord, Error>(payload)
            .map(ArchivedEntry::Group)
            .map_err(|e| e.to_string()),
        _ => Err(wrong()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record::Message(MessageRecord {
            to: "bob".into(),
            seq: 7,
            from: "alice".into(),
            client_msg_id: 42,
            sent_at_ms: 1_700_000_000_000,
            body: b"hello".to_vec(),
            prev: NO_POSITION,
        })
    }

    #[test]
    fn frame_parse_decode_round_trip() {
        let bytes = frame(&sample()).unwrap();
        assert_eq!(bytes.len() % RECORD_ALIGN, 0);
        let mut buf = rkyv::util::AlignedVec::<16>::new();
        buf.extend_from_slice(&bytes);
        buf.extend_from_slice(&[0u8; 64]);
        match parse(&buf) {
            Framed::Record {
                kind,
                payload,
                size,
            } => {
                assert_eq!((kind, size), (KIND_MESSAGE, bytes.len()));
                assert_eq!(decode(kind, payload).unwrap(), sample());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse(&buf[bytes.len()..]), Framed::End);
    }

    /// Kinds 1 and 2 are archived from a borrowed record ([`LegacyRef`]); logs written by
    /// earlier builds archived a clone of it as [`Legacy`]. The bytes must be the same.
    #[test]
    fn borrowed_legacy_archive_is_the_owned_one_byte_for_byte() {
        let cursor = CursorRecord {
            user: "alice".into(),
            device: "phone".into(),
            acked: 9,
            at_ms: 1_700_000_000_001,
        };
        let Record::Message(m) = sample() else {
            unreachable!()
        };
        let owned = rkyv::to_bytes::<rkyv::rancor::Error>(&Legacy::Message(m.clone())).unwrap();
        assert_eq!(&Record::Message(m).archive().unwrap()[..], &owned[..]);
        let owned = rkyv::to_bytes::<rkyv::rancor::Error>(&Legacy::Cursor(cursor.clone())).unwrap();
        assert_eq!(&Record::Cursor(cursor).archive().unwrap()[..], &owned[..]);
    }

    /// The send path archives messages and outgoing entries from borrowed fields; the bytes
    /// must be those of the owned records (what recovery and replay read).
    #[test]
    fn borrowed_message_and_outgoing_archive_as_the_owned_records() {
        let Record::Message(m) = sample() else {
            unreachable!()
        };
        let borrowed = Append::Message(MessageRef::from(&m));
        let buf = borrowed.archive_in(rkyv::util::AlignedVec::new()).unwrap();
        assert_eq!(&buf[..], &Record::Message(m.clone()).archive().unwrap()[..]);
        assert_eq!(borrowed.kind(), KIND_MESSAGE);
        assert_eq!(decode(KIND_MESSAGE, &buf).unwrap(), Record::Message(m));

        let o = OutgoingRecord {
            user: "alice".into(),
            seq: 3,
            to: "a-recipient-name-longer-than-an-inline-string".into(),
            client_msg_id: 77,
            sent_at_ms: 1_700_000_000_002,
            body: vec![1, 2, 3, 4, 5, 6, 7, 8, 9],
        };
        let borrowed = Append::Outgoing(OutgoingRef {
            user: &o.user,
            seq: o.seq,
            to: &o.to,
            client_msg_id: o.client_msg_id,
            sent_at_ms: o.sent_at_ms,
            body: &o.body,
        });
        let buf = borrowed.archive_in(rkyv::util::AlignedVec::new()).unwrap();
        let owned = Record::Outgoing(o.clone());
        assert_eq!(&buf[..], &owned.archive().unwrap()[..]);
        assert_eq!(
            (borrowed.kind(), borrowed.time_ms()),
            (owned.kind(), owned.time_ms())
        );
        assert_eq!(decode(KIND_OUTGOING, &buf).unwrap(), owned);
    }

    /// A reused buffer holds only the latest record's archive.
    #[test]
    fn archive_in_reuses_the_buffer_from_empty() {
        let long = Record::Message(MessageRecord {
            body: vec![7; 500],
            ..match sample() {
                Record::Message(m) => m,
                _ => unreachable!(),
            }
        });
        let buf = long.archive_in(rkyv::util::AlignedVec::new()).unwrap();
        let buf = sample().archive_in(buf).unwrap();
        assert_eq!(&buf[..], &sample().archive().unwrap()[..]);
        assert_eq!(decode(KIND_MESSAGE, &buf).unwrap(), sample());
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let bytes = frame(&sample()).unwrap();
        let len = u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as usize;
        for i in 0..HEADER_LEN + len {
            if (9..HEADER_LEN).contains(&i) {
                continue; // reserved bytes are not covered
            }
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(
                matches!(parse(&b), Framed::Bad(_)),
                "flip at {i} went unnoticed"
            );
        }
    }
}

//! Deliver frames written straight into the connection's output buffer.
//!
//! Every delivery (live, replay, catch-up) is a Deliver, and almost all of them are messages:
//! 1:1, outgoing, or a group's (one per member, so a fan-out encodes thousands per group
//! message). For those, [`encode_plain`] computes the FlatBuffers layout up front and writes
//! the frame head and the payload in one forward pass into `out`: no builder, no second copy
//! of the body out of a builder's buffer, no allocation beyond `out`'s own growth. A group's
//! membership events (a kind other than Message, a member list) still go through the builder
//! (`codec`).
//!
//! The layout is an ordinary FlatBuffer that the generated readers and verifier accept; it
//! differs from the builder's bytes (forward order, defaults written), which the schema allows.
//! Offsets below are from the payload's first byte:
//!
//! ```text
//!  0  root uoffset → Frame table (12)
//!  4  Frame vtable   [8, 12, body_type at +8, body at +4]
//! 12  Frame table    soffset 8 (→ 4), body uoffset, body_type = Deliver, 3 pad
//! 24  Deliver vtable [len, table len, seq, from_user, client_msg_id, sent_at_ms, body
//!                     (+ group_id, group_seq, kind absent, outgoing, to_user)]
//!  T  Deliver table  soffset, from_user, seq, client_msg_id, sent_at_ms, body (+ to_user,
//!                    outgoing (+ group_id, group_seq)); T is 8-aligned so the u64s are
//!     from_user string, to_user string, group_id string, body vector (each u32 length,
//!     4-aligned)
//! ```

use super::codec::FrameHead;
use super::messages::Deliver;
use super::ringpost_generated::ringpost::wire as fb;

const FRAME_VTABLE: usize = 4;
const FRAME_TABLE: usize = 12;
const DELIVER_VTABLE: usize = 24;
/// Deliver fields in schema order, up to `body` (a 1:1 entry) or `to_user` (outgoing).
const SHORT_FIELDS: usize = 5;
const LONG_FIELDS: usize = 10;
/// Where each field sits in the Deliver table (from the table's start).
const AT_FROM_USER: u16 = 4;
const AT_SEQ: u16 = 8;
const AT_CLIENT_MSG_ID: u16 = 16;
const AT_SENT_AT: u16 = 24;
const AT_BODY: u16 = 32;
const AT_TO_USER: u16 = 36;
const AT_OUTGOING: u16 = 40;
const AT_GROUP_ID: u16 = 44;
const AT_GROUP_SEQ: u16 = 48;

/// True if `d` has only the fields [`encode_plain`] writes: a message (1:1, outgoing or a
/// group's), not a membership event.
pub fn is_plain(d: &Deliver<'_>) -> bool {
    d.kind == fb::EntryKind::Message && d.members.is_empty()
}

fn align(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// Appends `head` and the Deliver payload for `d` (which must be [`is_plain`]) to `out`.
pub fn encode_plain<H: FrameHead>(d: &Deliver<'_>, head: &H, out: &mut Vec<u8>) {
    debug_assert!(is_plain(d));
    let grouped = !d.group_id.is_empty() || d.group_seq != 0;
    let long = grouped || d.outgoing || !d.to_user.is_empty();
    let fields = if long { LONG_FIELDS } else { SHORT_FIELDS };
    let vtable_len = 4 + 2 * fields;
    let table = align(DELIVER_VTABLE + vtable_len, 8);
    let table_len = if grouped {
        usize::from(AT_GROUP_SEQ) + 8
    } else if long {
        usize::from(AT_OUTGOING) + 1
    } else {
        usize::from(AT_BODY) + 4
    };
    let from_at = align(table + table_len, 4);
    let mut next = align(from_at + 4 + d.from_user.len() + 1, 4);
    // Each optional string where the previous one ended (0: absent).
    let mut place = |s: &str| {
        if s.is_empty() {
            return 0;
        }
        let at = next;
        next = align(at + 4 + s.len() + 1, 4);
        at
    };
    let to_at = place(d.to_user);
    let group_at = place(d.group_id);
    let body_at = next;
    let len = body_at + 4 + d.body.len();

    out.reserve(H::MAX_LEN + len);
    head.write_head(len, out);
    let start = out.len();
    let mut w = Writer { out, start };
    w.u32(FRAME_TABLE as u32);
    // Frame vtable and table.
    w.u16(8);
    w.u16(12);
    w.u16(8);
    w.u16(4);
    w.u32((FRAME_TABLE - FRAME_VTABLE) as u32);
    w.u32((table - (FRAME_TABLE + 4)) as u32);
    w.bytes(&[fb::Body::Deliver.0, 0, 0, 0]);
    // Deliver vtable.
    w.u16(vtable_len as u16);
    w.u16(table_len as u16);
    w.u16(AT_SEQ);
    w.u16(AT_FROM_USER);
    w.u16(AT_CLIENT_MSG_ID);
    w.u16(AT_SENT_AT);
    w.u16(AT_BODY);
    if long {
        w.u16(if group_at == 0 { 0 } else { AT_GROUP_ID });
        w.u16(if d.group_seq == 0 { 0 } else { AT_GROUP_SEQ });
        w.u16(0); // kind (Message, the default)
        w.u16(if d.outgoing { AT_OUTGOING } else { 0 });
        w.u16(if d.to_user.is_empty() { 0 } else { AT_TO_USER });
    }
    w.pad_to(table);
    // Deliver table.
    w.u32((table - DELIVER_VTABLE) as u32);
    w.u32((from_at - (table + usize::from(AT_FROM_USER))) as u32);
    w.u64(d.seq);
    w.u64(d.client_msg_id);
    w.u64(d.sent_at_ms);
    w.u32((body_at - (table + usize::from(AT_BODY))) as u32);
    if long {
        let to = if d.to_user.is_empty() {
            0
        } else {
            (to_at - (table + usize::from(AT_TO_USER))) as u32
        };
        w.u32(to);
        w.bytes(&[u8::from(d.outgoing)]);
    }
    if grouped {
        w.pad_to(table + usize::from(AT_GROUP_ID));
        let group = if group_at == 0 {
            0
        } else {
            (group_at - (table + usize::from(AT_GROUP_ID))) as u32
        };
        w.u32(group);
        w.u64(d.group_seq);
    }
    w.pad_to(from_at);
    w.string(d.from_user);
    if to_at != 0 {
        w.pad_to(to_at);
        w.string(d.to_user);
    }
    if group_at != 0 {
        w.pad_to(group_at);
        w.string(d.group_id);
    }
    w.pad_to(body_at);
    w.u32(d.body.len() as u32);
    w.bytes(d.body);
    debug_assert_eq!(w.out.len() - start, len);
}

/// Little-endian writes at the end of `out`, positions counted from `start`.
struct Writer<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b);
    }
    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn pad_to(&mut self, at: usize) {
        let to = self.start + at;
        debug_assert!(self.out.len() <= to);
        self.out.resize(to, 0);
    }
    /// A FlatBuffers string: u32 length, the bytes, a NUL.
    fn string(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.bytes(s.as_bytes());
        self.bytes(&[0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::{decode_server, encode_server_built, LenPrefix};
    use crate::protocol::layout::LEN_PREFIX;
    use crate::protocol::messages::{Names, ServerMsg};
    use proptest::prelude::*;

    fn direct(d: &Deliver<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_plain(d, &LenPrefix, &mut out);
        out
    }

    fn built(d: &Deliver<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_server_built(&ServerMsg::Deliver(*d), &LenPrefix, &mut out);
        out
    }

    fn decoded(frame: &[u8]) -> ServerMsg<'_> {
        let len = u32::from_le_bytes(frame[..LEN_PREFIX].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - LEN_PREFIX);
        decode_server(&frame[LEN_PREFIX..]).unwrap()
    }

    proptest! {
        /// The direct layout decodes (through the generated verifier and readers) to exactly
        /// what the builder's bytes decode to, for 1:1, outgoing and group messages of any
        /// size (each optional field present or not).
        #[test]
        fn decodes_like_the_builder(
            seq in any::<u64>(),
            from in "[a-z0-9:]{0,40}",
            to in "[a-z0-9]{0,40}",
            id in any::<u64>(),
            at in any::<u64>(),
            outgoing in any::<bool>(),
            group in "[a-z0-9._-]{0,40}",
            group_seq in prop_oneof![Just(0u64), any::<u64>()],
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let d = Deliver {
                outgoing,
                to_user: &to,
                group_id: &group,
                group_seq,
                ..Deliver::message(seq, &from, id, at, &body)
            };
            prop_assert!(is_plain(&d));
            let (a, b) = (direct(&d), built(&d));
            prop_assert_eq!(decoded(&a), decoded(&b));
            prop_assert_eq!(decoded(&a), ServerMsg::Deliver(d));
        }
    }

    #[test]
    fn membership_events_are_not_plain() {
        let d = Deliver {
            group_id: "g",
            group_seq: 3,
            kind: fb::EntryKind::MembersAdded,
            ..Deliver::message(1, "a", 1, 1, b"")
        };
        assert!(!is_plain(&d));
        let members = ["a"];
        let d = Deliver {
            members: Names::Slice(&members),
            ..Deliver::message(1, "a", 1, 1, b"x")
        };
        assert!(!is_plain(&d));
    }
}

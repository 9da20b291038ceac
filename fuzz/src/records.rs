//! Log records and segment files made from fuzz bytes, for the log recovery target.
//!
//! Two ways in:
//! - [`arb_record`]: a well-formed record of any kind, with names drawn mostly from a few
//!   shared users and groups (so records interact: heads, cursors, memberships) and numbers
//!   mostly small but sometimes anything (`u64::MAX` seqs, shard numbers past the shard count).
//! - [`fix_crcs`]: raw segment bytes whose record headers are made to carry the right CRC, so
//!   fuzzed payloads get past the checksum into rkyv's validation and the shard's rebuild.

use arbitrary::{Result, Unstructured};
use ringpost::log::record::{
    self, AnchorRecord, CursorRecord, FanoutRecord, GroupRecord, GroupSnapshotRecord,
    MessageRecord, OutgoingRecord, Record, HEADER_LEN,
};

const NAMES: &[&str] = &["alice", "bob", "carol", "dave", "g1", "g2"];

fn name(u: &mut Unstructured<'_>) -> Result<String> {
    let i = u.int_in_range(0..=NAMES.len())?;
    Ok(match NAMES.get(i) {
        Some(n) => (*n).to_owned(),
        None => {
            let s: String = u.arbitrary()?;
            s.chars().take(40).collect()
        }
    })
}

fn num(u: &mut Unstructured<'_>) -> Result<u64> {
    if u.ratio(3, 4)? {
        u.int_in_range(0..=20)
    } else {
        u.arbitrary()
    }
}

fn body(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let n = u.int_in_range(0..=64)?;
    Ok(u.bytes(n)?.to_vec())
}

fn list<T>(
    u: &mut Unstructured<'_>,
    mut item: impl FnMut(&mut Unstructured<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let n = u.int_in_range(0..=5)?;
    (0..n).map(|_| item(u)).collect()
}

/// A well-formed record of any kind (see the module doc).
pub fn arb_record(u: &mut Unstructured<'_>) -> Result<Record> {
    Ok(match u.int_in_range(0..=6)? {
        0 => Record::Message(MessageRecord {
            to: name(u)?,
            seq: num(u)?,
            from: name(u)?,
            client_msg_id: num(u)?,
            sent_at_ms: num(u)?,
            body: body(u)?,
            prev: u.arbitrary()?,
        }),
        1 => Record::Cursor(CursorRecord {
            user: name(u)?,
            device: name(u)?,
            acked: num(u)?,
            at_ms: num(u)?,
        }),
        2 => Record::Outgoing(OutgoingRecord {
            user: name(u)?,
            seq: num(u)?,
            to: name(u)?,
            client_msg_id: num(u)?,
            sent_at_ms: num(u)?,
            body: body(u)?,
        }),
        3 => Record::Group(GroupRecord {
            group: name(u)?,
            group_seq: num(u)?,
            kind: u.arbitrary()?,
            from: name(u)?,
            client_msg_id: num(u)?,
            sent_at_ms: num(u)?,
            body: body(u)?,
            members: list(u, name)?,
        }),
        4 => Record::GroupSnapshot(GroupSnapshotRecord {
            group: name(u)?,
            group_seq: num(u)?,
            owned: u.arbitrary()?,
            members: list(u, |u| Ok((name(u)?, u.arbitrary()?)))?,
            fanout: list(u, |u| Ok((u.int_in_range(0..=5)?, num(u)?)))?,
            at_ms: num(u)?,
        }),
        5 => Record::Fanout(FanoutRecord {
            group: name(u)?,
            shard: u.int_in_range(0..=5)?,
            applied: num(u)?,
            at_ms: num(u)?,
        }),
        _ => Record::Anchor(AnchorRecord {
            heads: list(u, |u| Ok((name(u)?, num(u)?)))?,
            cursors: list(u, |u| Ok((name(u)?, name(u)?, num(u)?)))?,
            at_ms: num(u)?,
        }),
    })
}

/// Rewrites the CRC of every record header in `seg` whose kind and length look like a record,
/// walking records the way recovery does; stops at the first header that does not.
pub fn fix_crcs(seg: &mut [u8]) {
    let mut off = 0;
    while let Some(header) = seg.get(off..off + HEADER_LEN) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let kind = header[record::KIND_AT];
        let size = HEADER_LEN + record::aligned(len);
        if !record::known_kind(kind) || len == 0 || off + size > seg.len() {
            return;
        }
        let crc = record::checksum(kind, &seg[off + HEADER_LEN..off + HEADER_LEN + len]);
        seg[off + record::CRC_AT..off + record::CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        off += size;
    }
}

/// Where a framed record was put by [`layout`].
#[derive(Debug, Clone)]
pub struct Placed {
    pub segment: usize,
    pub offset: usize,
    /// Header + payload bytes (the part a torn write can damage; padding is zeros anyway).
    pub framed_len: usize,
    pub record: Record,
}

/// Lays records out in segments of `segment_size` as `Log::append` would (a record that does
/// not fit in what is left of a segment starts the next one; one larger than a segment is
/// left out). Returns the segments' used bytes and where each record went.
pub fn layout(records: Vec<Record>, segment_size: usize) -> (Vec<Vec<u8>>, Vec<Placed>) {
    let mut segments: Vec<Vec<u8>> = vec![Vec::new()];
    let mut placed = Vec::new();
    for rec in records {
        let Ok(framed) = record::frame(&rec) else {
            continue;
        };
        if framed.len() > segment_size {
            continue;
        }
        if segments.last().map_or(0, Vec::len) + framed.len() > segment_size {
            segments.push(Vec::new());
        }
        let seg = segments.len() - 1;
        let current = &mut segments[seg];
        let len = u32::from_le_bytes([framed[0], framed[1], framed[2], framed[3]]) as usize;
        placed.push(Placed {
            segment: seg,
            offset: current.len(),
            framed_len: HEADER_LEN + len,
            record: rec,
        });
        current.extend_from_slice(&framed);
    }
    (segments, placed)
}

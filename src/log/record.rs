//! What the log stores and how each record is framed on disk.
//!
//! ```text
//! offset  size  field
//! 0       4     payload length N (u32 LE), excluding header and padding
//! 4       4     CRC32C over byte 8 (kind) followed by the N payload bytes
//! 8       1     kind: 1 = message, 2 = cursor (mirrors the payload's variant)
//! 9       7     reserved, zero
//! 16      N     rkyv archive of `Record`
//! 16+N    pad   zeros up to the next multiple of RECORD_ALIGN
//! ```
//!
//! Records start at multiples of [`RECORD_ALIGN`] so the rkyv archive can be read in place
//! from the map. Preallocated segments are zero-filled, and a zero header (length 0, kind 0)
//! marks the end of what was written; a valid record never has kind 0.

use rkyv::{Archive, Deserialize, Serialize};

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
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CursorRecord {
    pub user: String,
    pub device: String,
    pub acked: u64,
    pub at_ms: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Message(MessageRecord),
    Cursor(CursorRecord),
}

impl Record {
    pub fn kind(&self) -> u8 {
        match self {
            Record::Message(_) => KIND_MESSAGE,
            Record::Cursor(_) => KIND_CURSOR,
        }
    }

    /// Wall-clock time of the record, for retention by age.
    pub fn time_ms(&self) -> u64 {
        match self {
            Record::Message(m) => m.sent_at_ms,
            Record::Cursor(c) => c.at_ms,
        }
    }
}

impl ArchivedMessageRecord {
    /// Appends this message's Deliver frame, with `head` in front (the connection's framing),
    /// to `out`, straight from the archive (every delivery — live, replay, catch-up — is
    /// encoded here).
    pub fn encode_deliver(&self, head: &impl crate::protocol::FrameHead, out: &mut Vec<u8>) {
        crate::protocol::encode_server_with(
            &crate::protocol::ServerMsg::Deliver {
                seq: self.seq.to_native(),
                from_user: self.from.as_str(),
                client_msg_id: self.client_msg_id.to_native(),
                sent_at_ms: self.sent_at_ms.to_native(),
                body: self.body.as_slice(),
            },
            head,
            out,
        );
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
    let payload = rkyv::to_bytes::<rkyv::rancor::Error>(record)?;
    let kind = record.kind();
    let mut out = vec![0u8; HEADER_LEN + aligned(payload.len())];
    out[LEN_AT..LEN_AT + 4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    out[CRC_AT..CRC_AT + 4].copy_from_slice(&checksum(kind, &payload).to_le_bytes());
    out[KIND_AT] = kind;
    out[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(&payload);
    Ok(out)
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
    if kind != KIND_MESSAGE && kind != KIND_CURSOR {
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

/// Validates and deserialises a payload.
pub fn decode(payload: &[u8]) -> Result<Record, rkyv::rancor::Error> {
    // The payload sits at a RECORD_ALIGN-aligned offset of a page-aligned map, which satisfies
    // the archive's alignment; copy into an aligned buffer otherwise (tests, odd callers).
    if (payload.as_ptr() as usize).is_multiple_of(RECORD_ALIGN) {
        rkyv::from_bytes::<Record, rkyv::rancor::Error>(payload)
    } else {
        let mut copy = rkyv::util::AlignedVec::<RECORD_ALIGN>::with_capacity(payload.len());
        copy.extend_from_slice(payload);
        rkyv::from_bytes::<Record, rkyv::rancor::Error>(&copy)
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
                assert_eq!(decode(payload).unwrap(), sample());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse(&buf[bytes.len()..]), Framed::End);
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

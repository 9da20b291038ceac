//! The one frame reader: splits a received byte stream into frame payloads, check-then-parse.
//!
//! Every receiver of frames — the broker's session task, its acceptor reading the Login, the
//! client library, the tests' raw sockets — goes through [`feed`] or [`FrameReader`], so there
//! is one place that decides where a frame ends and which bytes are a partial frame to keep.
//! Both run [`check`] on the length prefix first: an oversized or empty frame is refused as
//! soon as its prefix is readable, without buffering its body.
//!
//! - [`feed`]: push-style, for a receiver that reads into a shared scratch buffer (the
//!   session): frames wholly inside the new bytes are handed out in place (zero copy); only a
//!   trailing partial frame is copied into the connection's own carry buffer, which holds no
//!   allocation between frames.
//! - [`FrameReader`]: pull-style, for a receiver that reads into its own buffer (client,
//!   acceptor): read into [`FrameReader::spare`], then take frames with
//!   [`FrameReader::next_frame`]; consumed bytes are reclaimed lazily, not per frame.

use super::codec::{check, CodecError};
use super::layout::LEN_PREFIX;

/// What a [`feed`] callback wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Hand out the next complete frame.
    More,
    /// Stop: the receiver is closing; the remaining bytes are discarded.
    Stop,
}

/// Hands every complete frame in `carry ++ data` to `on_frame` (payload only, prefix
/// stripped) and leaves a trailing partial frame in `carry`.
///
/// `carry` holds the bytes of a frame split across reads; when it is empty, frames are handed
/// out straight from `data`. After an error, or when `on_frame` says [`Flow::Stop`], `carry`
/// is emptied and the rest of the input is dropped (the connection is being closed).
pub fn feed(
    carry: &mut Vec<u8>,
    data: &[u8],
    max_frame: usize,
    mut on_frame: impl FnMut(&[u8]) -> Flow,
) -> Result<(), CodecError> {
    if carry.is_empty() {
        let (used, outcome) = walk(data, max_frame, &mut on_frame);
        if outcome == Walk::Partial {
            carry.extend_from_slice(&data[used..]);
        }
        return finish(carry, outcome);
    }
    carry.extend_from_slice(data);
    let (used, outcome) = walk(carry, max_frame, &mut on_frame);
    carry.drain(..used);
    finish(carry, outcome)
}

/// How a [`walk`] over a buffer ended.
#[derive(Debug, PartialEq)]
enum Walk {
    /// Every complete frame was handed out; the bytes after `used` are a partial frame.
    Partial,
    /// The callback asked to stop.
    Stopped,
    /// The bytes at `used` are not a frame we accept.
    Bad(CodecError),
}

fn finish(carry: &mut Vec<u8>, outcome: Walk) -> Result<(), CodecError> {
    match outcome {
        Walk::Partial => {
            if carry.is_empty() {
                *carry = Vec::new(); // an idle connection keeps no buffer
            }
            Ok(())
        }
        Walk::Stopped => {
            *carry = Vec::new();
            Ok(())
        }
        Walk::Bad(e) => {
            *carry = Vec::new();
            Err(e)
        }
    }
}

/// Hands out the complete frames at the front of `buf`; returns the bytes they used.
fn walk(buf: &[u8], max_frame: usize, on_frame: &mut impl FnMut(&[u8]) -> Flow) -> (usize, Walk) {
    let mut off = 0;
    loop {
        match check(&buf[off..], max_frame) {
            Ok(None) => return (off, Walk::Partial),
            Ok(Some(n)) => {
                let payload = &buf[off + LEN_PREFIX..off + n];
                off += n;
                if on_frame(payload) == Flow::Stop {
                    return (off, Walk::Stopped);
                }
            }
            Err(e) => return (off, Walk::Bad(e)),
        }
    }
}

/// A receive buffer that yields one frame at a time (pull-style; see the module doc).
///
/// Cancel-safe when used from async code: bytes count as received only once
/// [`FrameReader::filled`] is called after a completed read.
#[derive(Debug, Default)]
pub struct FrameReader {
    /// `buf[start..end]` holds received bytes not yet returned as frames; `buf[end..]` is room
    /// for the next read.
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl FrameReader {
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    /// The payload of the next complete frame, if one is buffered.
    pub fn next_frame(&mut self, max_frame: usize) -> Result<Option<&[u8]>, CodecError> {
        match check(&self.buf[self.start..self.end], max_frame)? {
            None => Ok(None),
            Some(n) => {
                let at = self.start;
                self.start += n;
                Ok(Some(&self.buf[at + LEN_PREFIX..at + n]))
            }
        }
    }

    /// True when a whole frame is buffered (so [`FrameReader::next_frame`] returns it); an
    /// invalid prefix is the same error `next_frame` would give.
    pub fn has_frame(&self, max_frame: usize) -> Result<bool, CodecError> {
        Ok(check(self.buffered(), max_frame)?.is_some())
    }

    /// Room for at least `min` more bytes: read into it, then call [`FrameReader::filled`]
    /// with the count. Moves the unconsumed bytes to the front first (once per read, not per
    /// frame).
    pub fn spare(&mut self, min: usize) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < min {
            self.buf.resize(self.end + min, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Counts `n` bytes read into [`FrameReader::spare`] as received.
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Appends bytes received elsewhere.
    pub fn extend(&mut self, data: &[u8]) {
        self.spare(data.len())[..data.len()].copy_from_slice(data);
        self.filled(data.len());
    }

    /// Received bytes not yet returned as frames.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{decode_client, encode_client, ClientMsg};

    fn frames(n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for nonce in 0..n {
            encode_client(&ClientMsg::Ping { nonce }, &mut out);
        }
        out
    }

    fn nonce(payload: &[u8]) -> u64 {
        match decode_client(payload) {
            Ok(ClientMsg::Ping { nonce }) => nonce,
            other => panic!("expected Ping, got {other:?}"),
        }
    }

    #[test]
    fn feed_splits_at_every_byte_boundary_and_keeps_no_buffer_when_idle() {
        let bytes = frames(5);
        for cut in 0..=bytes.len() {
            let mut carry = Vec::new();
            let mut got = Vec::new();
            for part in [&bytes[..cut], &bytes[cut..]] {
                feed(&mut carry, part, 1024, |p| {
                    got.push(nonce(p));
                    Flow::More
                })
                .unwrap();
            }
            assert_eq!(got, vec![0, 1, 2, 3, 4], "cut at {cut}");
            assert_eq!(
                carry.capacity(),
                0,
                "cut at {cut}: idle carry holds a buffer"
            );
        }
    }

    #[test]
    fn feed_stops_when_asked_and_drops_the_rest() {
        let mut carry = Vec::new();
        let bytes = frames(4);
        let mut seen = 0;
        feed(&mut carry, &bytes[..bytes.len() - 1], 1024, |_| {
            seen += 1;
            if seen == 2 {
                Flow::Stop
            } else {
                Flow::More
            }
        })
        .unwrap();
        assert_eq!(seen, 2);
        assert!(carry.is_empty());
    }

    #[test]
    fn feed_refuses_an_oversized_prefix_before_its_body() {
        let mut carry = Vec::new();
        let mut bytes = frames(1);
        bytes.extend_from_slice(&5000u32.to_le_bytes());
        let mut seen = 0;
        let err = feed(&mut carry, &bytes, 1024, |_| {
            seen += 1;
            Flow::More
        })
        .unwrap_err();
        assert_eq!(seen, 1, "the frame before the bad prefix is handed out");
        assert!(matches!(err, CodecError::TooLarge { len: 5000, .. }));
        assert!(carry.is_empty());
    }

    #[test]
    fn frame_reader_yields_frames_across_partial_reads() {
        let bytes = frames(50);
        let mut r = FrameReader::new();
        let mut got = Vec::new();
        for chunk in bytes.chunks(7) {
            let room = r.spare(7);
            room[..chunk.len()].copy_from_slice(chunk);
            r.filled(chunk.len());
            while let Some(p) = r.next_frame(1024).unwrap() {
                got.push(nonce(p));
            }
        }
        assert_eq!(got, (0..50).collect::<Vec<_>>());
        assert!(r.buffered().is_empty());
    }

    #[test]
    fn frame_reader_keeps_what_follows_a_frame() {
        let mut r = FrameReader::new();
        let mut bytes = frames(1);
        bytes.extend_from_slice(b"re"); // the start of a length prefix
        r.extend(&bytes);
        assert_eq!(nonce(r.next_frame(1024).unwrap().unwrap()), 0);
        assert_eq!(r.next_frame(1024).unwrap(), None);
        assert_eq!(r.buffered(), b"re");
    }
}

//! The control header at the front of a fuzz input, and cutting a byte stream into the reads
//! a receiver would see.
//!
//! Stream inputs are laid out as
//!
//! ```text
//! flags: u8 | cuts: u8 | cuts & 0x0f offsets: u16 LE each | stream bytes ...
//! ```
//!
//! `cuts & 0x10` cuts the stream after every byte instead (the worst case for a reader's
//! carry logic); the offsets are taken modulo the stream length + 1, so any value is valid.

/// Reads control bytes from the front of an input; past the end every read is 0.
pub struct Header<'a> {
    data: &'a [u8],
}

impl<'a> Header<'a> {
    pub fn new(data: &'a [u8]) -> Header<'a> {
        Header { data }
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// The next `n` bytes (fewer if the input ends first).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Everything after the control bytes read so far.
    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// Longest stream [`Cuts::split`] cuts after every byte.
pub const EVERY_BYTE_MAX: usize = 4096;

/// Where a stream is cut into reads.
#[derive(Debug, Clone, Default)]
pub struct Cuts {
    every_byte: bool,
    offsets: Vec<u16>,
}

impl Cuts {
    /// Reads the cut byte and its offsets (see the module doc).
    pub fn read(h: &mut Header<'_>) -> Cuts {
        let b = h.byte();
        let offsets = (0..(b & 0x0f)).map(|_| h.u16()).collect();
        Cuts {
            every_byte: b & 0x10 != 0,
            offsets,
        }
    }

    /// The header bytes that make [`Cuts::read`] return these offsets (for seeds).
    pub fn encode(offsets: &[u16]) -> Vec<u8> {
        let n = offsets.len().min(15);
        let mut out = vec![n as u8];
        for o in &offsets[..n] {
            out.extend_from_slice(&o.to_le_bytes());
        }
        out
    }

    /// The stream cut into consecutive reads (never empty reads, except for an empty stream,
    /// which is one empty read). Byte by byte only up to [`EVERY_BYTE_MAX`] bytes: past that,
    /// the offsets are used instead, as each read of a long partial frame costs ASan a check
    /// of the whole carry buffer (the broker itself stays linear; not what we fuzz for).
    pub fn split<'s>(&self, stream: &'s [u8]) -> Vec<&'s [u8]> {
        if self.every_byte && !stream.is_empty() && stream.len() <= EVERY_BYTE_MAX {
            return stream.chunks(1).collect();
        }
        let mut points: Vec<usize> = self
            .offsets
            .iter()
            .map(|&o| usize::from(o) % (stream.len() + 1))
            .filter(|&p| p > 0 && p < stream.len())
            .collect();
        points.sort_unstable();
        points.dedup();
        let mut out = Vec::with_capacity(points.len() + 1);
        let mut at = 0;
        for p in points {
            out.push(&stream[at..p]);
            at = p;
        }
        out.push(&stream[at..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_cover_the_stream_in_order() {
        let stream: Vec<u8> = (0..50).collect();
        let header = Cuts::encode(&[7, 3, 7, 200, 0]);
        let mut h = Header::new(&header);
        let cuts = Cuts::read(&mut h);
        let parts = cuts.split(&stream);
        assert_eq!(parts.concat(), stream);
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            vec![3, 4, 40, 3], // 200 % 51 = 47
        );
    }
}

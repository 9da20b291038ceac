//! The shard's read buffer: one allocation that every connection's reads go into in turn
//! (reads are synchronous on the shard thread), handed out one read at a time as a refcounted
//! chunk. A body that leaves the reading shard — a 1:1 message to another shard's user, a
//! group message for the group's owner — is then a slice of what was read
//! ([`ReadSource::keep`]), not a copy: the body's one copy on its way to the durable log is
//! the recipient shard's append (issue 13).
//!
//! Reads fill the buffer front to back, and bytes once handed out are never written again
//! while anything points into them. When the room left falls below [`MIN_ROOM`],
//! [`ReadBuf::make_room`] rewinds the allocation if no slice of it is alive (the usual case:
//! nothing was forwarded, or the recipient has already stored it) and otherwise starts a fresh
//! [`CHUNK`]-byte one; the old one is freed by whoever drops its last slice, on any shard's
//! thread. So forwarding costs a refcount per message and an allocation per ~`CHUNK - MIN_ROOM`
//! bytes read while slices are out, and holds at most one chunk beyond the bodies themselves
//! per that many bytes read during a message's time in flight (on the mesh, then until the
//! recipient's commit hands the own-send copy back).
//!
//! TLS plaintext goes through a second `ReadBuf` (the shard's gate holds it), filled by the
//! decryption instead of `recv` and handed out the same way, so a body sent over TLS is a
//! slice of its plaintext. A WebSocket read is unmasked in place before it is frozen
//! (`session::feed_ws`). Bytes that are not a slice of a frozen read — a frame or message split
//! across reads (kept in the connection's carry), a hand-off's leftover — are copied as
//! before.

use std::io;
use std::os::fd::RawFd;

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes of one allocation of the read buffer.
pub const CHUNK: usize = 64 * 1024;
/// The least room a `recv` is given; below it the buffer moves on (rewinds or a new chunk).
pub const MIN_ROOM: usize = 16 * 1024;

/// The shard's read buffer (see the module doc).
#[derive(Debug)]
pub struct ReadBuf {
    /// `buf[..]` holds bytes read and not yet handed out; its spare capacity is the room.
    buf: BytesMut,
}

impl Default for ReadBuf {
    fn default() -> Self {
        ReadBuf::new()
    }
}

impl ReadBuf {
    pub fn new() -> ReadBuf {
        ReadBuf {
            buf: BytesMut::with_capacity(CHUNK),
        }
    }

    /// Starts one connection's reads: drops whatever bytes an earlier call held and did not
    /// hand out (reads cut short when their connection closed: they are not this connection's
    /// bytes), then makes room.
    pub fn start(&mut self) {
        self.buf.clear();
        self.make_room();
    }

    /// Makes sure the next [`ReadBuf::recv`] has at least [`MIN_ROOM`] bytes of room.
    pub fn make_room(&mut self) {
        if self.room() < MIN_ROOM {
            // Rewinds in place when nothing else points into the allocation (and nothing is
            // held), else allocates a new one of CHUNK bytes (bytes' `reserve` rules).
            self.buf.reserve(CHUNK - self.buf.len());
        }
    }

    /// Room for the next read.
    pub fn room(&self) -> usize {
        self.buf.capacity() - self.buf.len()
    }

    /// Bytes read and not yet handed out.
    pub fn held(&self) -> usize {
        self.buf.len()
    }

    /// Keeps a byte read elsewhere (the session's 1-byte wake-up read) in front of the next
    /// read's bytes.
    pub fn push(&mut self, b: u8) {
        self.buf.put_u8(b);
    }

    /// One non-blocking `recv` from `fd` into the room; the bytes join those held.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let room = self.buf.spare_capacity_mut();
        // SAFETY: recv writes at most `room.len()` bytes into the spare capacity, which is
        // valid for writes; only the `n` bytes it reports are marked initialised below.
        let n = unsafe { libc::recv(fd, room.as_mut_ptr().cast(), room.len(), libc::MSG_DONTWAIT) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        // SAFETY: the kernel initialised `n <= room.len()` bytes after the held ones.
        unsafe { self.buf.set_len(self.buf.len() + n) };
        Ok(n)
    }

    /// The bytes held, to append bytes that were not `recv`ed into this buffer (TLS
    /// plaintext, decrypted out of the shard's read); [`ReadBuf::take`] hands them out.
    pub fn sink(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Hands out the bytes held (writable: WebSocket unmasks in place; freeze it to slice
    /// bodies out of it); the buffer goes on after them.
    pub fn take(&mut self) -> BytesMut {
        self.buf.split()
    }
}

/// Where a frame's bytes lie: in a read handed out as [`Bytes`] (a body can be kept as a
/// slice of it), or elsewhere (then keeping it copies).
#[derive(Clone, Copy, Default)]
pub struct ReadSource<'a>(Option<&'a Bytes>);

impl<'a> ReadSource<'a> {
    /// Frames that are not slices of a frozen read (carry, a hand-off's leftover, tests).
    pub const ELSEWHERE: ReadSource<'static> = ReadSource(None);

    /// Frames read into `chunk`.
    pub fn of(chunk: &'a Bytes) -> ReadSource<'a> {
        ReadSource(Some(chunk))
    }

    /// `part` as an owned `Bytes`: a slice of the read when it lies inside it, else a copy.
    pub fn keep(&self, part: &[u8]) -> Bytes {
        if let Some(chunk) = self.0 {
            let base = chunk.as_ptr() as usize;
            let at = part.as_ptr() as usize;
            if at >= base && at + part.len() <= base + chunk.len() {
                let off = at - base;
                return chunk.slice(off..off + part.len());
            }
        }
        Bytes::copy_from_slice(part)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::alloc_count::allocations;

    /// A connected pair; `ours` is non-blocking through MSG_DONTWAIT in `recv`.
    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    /// Reads everything `n` bytes written to `theirs` into one chunk.
    fn read_exactly(rb: &mut ReadBuf, ours: &UnixStream, n: usize) -> Bytes {
        rb.make_room();
        while rb.held() < n {
            rb.recv(ours.as_raw_fd()).unwrap();
        }
        rb.take().freeze()
    }

    #[test]
    fn a_kept_slice_survives_every_later_read() {
        let (ours, mut theirs) = pair();
        let mut rb = ReadBuf::new();
        theirs.write_all(b"hello, bob").unwrap();
        let chunk = read_exactly(&mut rb, &ours, 10);
        let kept = ReadSource::of(&chunk).keep(&chunk[7..10]);
        drop(chunk);
        // Enough later reads to go round the chunk several times: had the buffer rewound
        // under the kept slice, these bytes would overwrite it.
        let noise = vec![0xEE; 4096];
        for _ in 0..(4 * CHUNK / noise.len()) {
            theirs.write_all(&noise).unwrap();
            let c = read_exactly(&mut rb, &ours, noise.len());
            assert!(c.iter().all(|&b| b == 0xEE));
        }
        assert_eq!(&kept[..], b"bob");
    }

    #[test]
    fn start_drops_bytes_an_earlier_connection_left_behind() {
        let (ours, mut theirs) = pair();
        let mut rb = ReadBuf::new();
        rb.start();
        rb.push(b'X'); // a wake-up byte whose connection closed before its read
        rb.start();
        theirs.write_all(b"next").unwrap();
        let chunk = read_exactly(&mut rb, &ours, 4);
        assert_eq!(&chunk[..], b"next");
    }

    #[test]
    fn a_part_outside_the_read_is_copied() {
        let chunk = Bytes::from_static(b"abcdef");
        let elsewhere = b"xyz".to_vec();
        let kept = ReadSource::of(&chunk).keep(&elsewhere);
        assert_eq!(&kept[..], b"xyz");
        assert_ne!(kept.as_ptr(), elsewhere.as_ptr());
        let inside = ReadSource::of(&chunk).keep(&chunk[2..4]);
        assert_eq!(inside.as_ptr(), chunk[2..].as_ptr(), "a slice, not a copy");
        assert_eq!(&ReadSource::ELSEWHERE.keep(b"q")[..], b"q");
        assert!(ReadSource::of(&chunk).keep(&chunk[6..]).is_empty());
    }

    #[test]
    fn reads_nobody_keeps_reuse_one_allocation() {
        let (ours, mut theirs) = pair();
        let mut rb = ReadBuf::new();
        let msg = [5u8; 1000];
        theirs.write_all(&msg).unwrap();
        drop(read_exactly(&mut rb, &ours, msg.len())); // the first split shares the buffer
        let before = allocations();
        for _ in 0..1000 {
            theirs.write_all(&msg).unwrap();
            let chunk = read_exactly(&mut rb, &ours, msg.len());
            assert_eq!(chunk.len(), msg.len());
        }
        assert_eq!(allocations() - before, 0, "allocations over 1,000 reads");
    }

    #[test]
    fn kept_slices_cost_an_allocation_per_chunk_not_per_message() {
        let (ours, mut theirs) = pair();
        let mut rb = ReadBuf::new();
        let frame = [9u8; 512];
        let mut kept = Vec::with_capacity(2000);
        let before = allocations();
        for i in 0..2000usize {
            let mut f = frame;
            f[..8].copy_from_slice(&(i as u64).to_le_bytes());
            theirs.write_all(&f).unwrap();
            let chunk = read_exactly(&mut rb, &ours, f.len());
            kept.push(ReadSource::of(&chunk).keep(&chunk[..]));
        }
        let made = allocations() - before;
        // 2,000 × 512 B = 1,000 KiB read; a chunk serves at least CHUNK - MIN_ROOM of it and
        // costs two allocations (its bytes, and the refcount its first hand-out adds).
        let chunks = (2000 * 512usize).div_ceil(CHUNK - MIN_ROOM) as u64;
        assert!(
            made <= 2 * chunks + 2,
            "{made} allocations for 2,000 kept reads (≤ {} expected)",
            2 * chunks + 2
        );
        for (i, k) in kept.iter().enumerate() {
            assert_eq!(k[..8], (i as u64).to_le_bytes(), "kept read {i}");
            assert!(k[8..].iter().all(|&b| b == 9));
        }
    }

    /// TLS plaintext decrypted into a `ReadBuf` (the shard's second one, `gate.plain`) is handed
    /// out like a read: a body in it is kept as a slice of the plaintext, not copied again.
    #[test]
    fn tls_plaintext_decrypted_into_the_buffer_keeps_bodies_as_slices() {
        use crate::wire::tls::{server_config, ServerTls};
        use rustls::pki_types::pem::PemObject;
        use std::sync::Arc;
        let dir = std::env::temp_dir().join(format!("rp-readbuf-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = ringpost_harness::tls::TestCa::new(&dir, "readbuf");
        let cert = ca.issue("broker");
        let config = server_config(&cert.cert_file, &cert.key_file).unwrap();
        let mut server = ServerTls::new(Arc::new(config)).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        let ca_pem = std::fs::read(ca.ca_file()).unwrap();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(&ca_pem) {
            roots.add(c.unwrap()).unwrap();
        }
        let client_config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client_config), name).unwrap();
        // The handshake, in memory.
        let mut plain = ReadBuf::new();
        let mut out = Vec::new();
        while client.is_handshaking() {
            let mut wire = Vec::new();
            client.write_tls(&mut wire).unwrap();
            server.open(&mut wire, plain.sink(), &mut out).unwrap();
            client.read_tls(&mut &out[..]).unwrap();
            client.process_new_packets().unwrap();
            out.clear();
        }
        std::io::Write::write_all(&mut client.writer(), b"frame head|the body").unwrap();
        let mut wire = Vec::new();
        client.write_tls(&mut wire).unwrap();
        plain.start();
        server.open(&mut wire, plain.sink(), &mut out).unwrap();
        let chunk = plain.take().freeze();
        assert_eq!(&chunk[..], b"frame head|the body");
        let body = &chunk[11..];
        let kept = ReadSource::of(&chunk).keep(body);
        assert_eq!(&kept[..], b"the body");
        assert_eq!(
            kept.as_ptr(),
            body.as_ptr(),
            "the body was copied out of the plaintext"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

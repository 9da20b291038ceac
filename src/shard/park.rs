//! Parking idle connections: a shard-wide epoll set instead of a task and a ring op each.
//!
//! An active connection has a session task and one pending readiness poll on the ring, which
//! together cost about 800 bytes. A connection with no traffic for `server.park_after` gives
//! both up: its socket goes into the shard's epoll set (one-shot, keyed by connection id) and
//! its task shrinks to a stub waiting on the connection's wake-up. The shard's poller task waits
//! for the epoll set to become readable, then wakes the stubs of the connections with input;
//! anything else that wakes a connection (bytes to send, a close, shutdown) wakes the stub too.
//! A woken stub takes its socket out of the set and serves it again.
//!
//! Waiting for the epoll fd through glommio: glommio has no public "wait until this fd is
//! readable", but every glommio stream arms a readiness poll on its fd when it is created and
//! its first read waits on that poll. A stream made from a duplicate of the epoll fd therefore
//! completes its first read (with ENOTSOCK, because epoll fds are not sockets) exactly when the
//! set has events. One duplicate per round, only while the poller sleeps.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use futures_lite::io::AsyncReadExt;
use glommio::net::TcpStream;

use super::envelope::ConnId;

/// Events taken per epoll_wait call.
const BATCH: usize = 1024;
/// Fallback pause if the readiness wait ever returns with no events several times in a row
/// (it should not; this bounds the damage if a glommio change made it return early).
pub const IDLE_RETRY: Duration = Duration::from_millis(1);

pub struct Parking {
    epoll: OwnedFd,
    /// Sockets in the set now (for the connections gauge).
    parked: std::cell::Cell<usize>,
}

impl Parking {
    pub fn new() -> io::Result<Parking> {
        // SAFETY: epoll_create1 has no memory preconditions; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh epoll fd that nothing else owns.
        Ok(Parking {
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            parked: std::cell::Cell::new(0),
        })
    }

    /// Watches `fd` (one-shot) for input or hang-up on behalf of connection `id`.
    pub fn watch(&self, fd: RawFd, id: ConnId) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: id,
        };
        // SAFETY: `ev` is a valid epoll_event; the kernel copies it.
        let rc =
            unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        self.parked.set(self.parked.get() + 1);
        Ok(())
    }

    /// Stops watching `fd` (it may already have fired; that is fine).
    pub fn unwatch(&self, fd: RawFd) {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as above; a failure (not watched) leaves nothing to undo.
        let rc =
            unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut ev) };
        if rc == 0 {
            self.parked.set(self.parked.get().saturating_sub(1));
        }
    }

    /// Sockets parked in the set now.
    pub fn parked(&self) -> usize {
        self.parked.get()
    }

    /// Completes when the epoll set has (or may have) events.
    pub async fn readable(&self) {
        // SAFETY: F_DUPFD_CLOEXEC on an fd we own; the result is checked.
        let dup = unsafe { libc::fcntl(self.epoll.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            glommio::timer::sleep(IDLE_RETRY).await;
            return;
        }
        // SAFETY: `dup` is ours; the stream closes it when dropped (the epoll set lives on in
        // `self.epoll`).
        let mut bell = unsafe { TcpStream::from_raw_fd(dup) };
        let mut byte = [0u8; 1];
        let _ = bell.read(&mut byte).await;
    }

    /// Appends the ids of connections with events, without blocking. Returns how many.
    pub fn take_ready(&self, ids: &mut Vec<ConnId>) -> usize {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
        let mut total = 0;
        loop {
            // SAFETY: `events` has room for BATCH entries; timeout 0 never blocks.
            let n = unsafe {
                libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), BATCH as i32, 0)
            };
            if n <= 0 {
                return total;
            }
            let n = n as usize;
            ids.extend(events[..n].iter().map(|e| e.u64));
            total += n;
            if n < BATCH {
                return total;
            }
        }
    }
}

/// Duplicates a connection's socket so that it can outlive the glommio stream that owns the
/// original (glommio streams cannot give their fd up).
pub fn dup_fd(fd: RawFd) -> io::Result<RawFd> {
    // SAFETY: F_DUPFD_CLOEXEC on an open fd; the result is checked.
    let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if d < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(d)
    }
}

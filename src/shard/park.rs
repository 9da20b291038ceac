//! Parking idle connections: a shard-wide epoll set instead of a task and a ring op each.
//!
//! An active connection has a session task and one pending readiness poll on the ring, which
//! together cost about 800 bytes. A connection with no traffic for `server.park_after` gives
//! both up: its socket goes into the shard's epoll set (one-shot, keyed by connection id) and
//! its task ends. What stays is the connection record, whose wake-up [`Signal`] holds a
//! [`resume_waker`] in place of a task's waker: a waker that is only the connection's id, with
//! no allocation behind it. The shard's poller task waits for the epoll set to become readable,
//! then notifies the connections with input; anything else that wakes a connection (bytes to
//! send, a close, shutdown) notifies it the same way. The notify queues the id, and the shard's
//! resumer task (`tasks::resume_parked`) starts a session task for each queued connection,
//! which takes its socket out of the set and serves it again.
//!
//! Waiting for the epoll fd through glommio: glommio has no public "wait until this fd is
//! readable", but every glommio stream arms a readiness poll on its fd when it is created and
//! its first read waits on that poll. A stream made from a duplicate of the epoll fd therefore
//! completes its first read (with ENOTSOCK, because epoll fds are not sockets) exactly when the
//! set has events. One duplicate per round, only while the poller sleeps.
//!
//! [`Signal`]: super::wake::Signal

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::task::{Poll, RawWaker, RawWakerVTable, Waker};
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

thread_local! {
    /// Parked connections notified since the resumer last ran (a shard is one thread).
    static RESUMED: RefCell<Vec<ConnId>> = const { RefCell::new(Vec::new()) };
    /// The resumer task, while it waits for [`RESUMED`] to fill.
    static RESUMER: Cell<Option<Waker>> = const { Cell::new(None) };
}

/// A waker for parked connection `id`: waking it queues `id` for the shard's resumer task. It
/// carries the id in place of a pointer, so it allocates nothing and owns nothing.
///
/// It must be woken on the shard's thread, which holds the queue it pushes to; it is only
/// stored in the wake-up signal of that shard's connection record, which never leaves the
/// thread (`Rc`). Woken anywhere else, it would queue the id on the wrong thread and the
/// connection would miss that wake-up; nothing unsound happens either way, because the data
/// pointer is never dereferenced.
pub fn resume_waker(id: ConnId) -> Waker {
    // SAFETY: the vtable's functions never dereference the data "pointer" (it is the id) and
    // touch only thread-locals, so they are sound on any thread and for any number of clones.
    unsafe { Waker::from_raw(raw_waker(id)) }
}

fn raw_waker(id: ConnId) -> RawWaker {
    RawWaker::new(std::ptr::without_provenance(id as usize), &RESUME_VTABLE)
}

static RESUME_VTABLE: RawWakerVTable =
    RawWakerVTable::new(clone_resume, wake_resume, wake_resume, drop_resume);

// A connection id fits in the data pointer.
const _: () = assert!(std::mem::size_of::<usize>() >= std::mem::size_of::<ConnId>());

unsafe fn clone_resume(data: *const ()) -> RawWaker {
    RawWaker::new(data, &RESUME_VTABLE)
}

unsafe fn wake_resume(data: *const ()) {
    let id = data.addr() as ConnId;
    RESUMED.with(|q| q.borrow_mut().push(id));
    if let Some(resumer) = RESUMER.take() {
        resumer.wake();
    }
}

unsafe fn drop_resume(_: *const ()) {}

/// Waits until parked connections have been notified, then moves their ids into `ids` (which
/// the caller has emptied), in the order they were notified.
pub async fn take_resumed(ids: &mut Vec<ConnId>) {
    poll_fn(|cx| {
        RESUMED.with(|q| std::mem::swap(&mut *q.borrow_mut(), ids));
        if ids.is_empty() {
            RESUMER.set(Some(cx.waker().clone()));
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc_count::allocations;
    use crate::shard::wake::Signal;
    use std::future::Future;

    fn resumed_now() -> Vec<ConnId> {
        let mut ids = Vec::new();
        futures_lite::future::block_on(futures_lite::future::or(
            async {
                take_resumed(&mut ids).await;
            },
            async {},
        ));
        ids
    }

    #[test]
    fn a_parked_connection_s_notify_queues_its_id_once_without_allocating() {
        let signals: Vec<Signal> = (0..3).map(|_| Signal::default()).collect();
        let ids = [7u64, u64::MAX, 42];
        let before = allocations();
        for (signal, &id) in signals.iter().zip(&ids) {
            signal.notify_to(resume_waker(id));
        }
        assert_eq!(
            allocations(),
            before,
            "a parked connection's waker allocated"
        );
        // Notified out of order, twice for one: queued in notify order, once each (the first
        // notify takes the waker; the second only latches the signal).
        signals[2].notify();
        signals[0].notify();
        signals[0].notify();
        assert_eq!(resumed_now(), vec![42, 7]);
        assert!(resumed_now().is_empty(), "a queued id was handed out twice");
        signals[1].notify();
        assert_eq!(resumed_now(), vec![u64::MAX]);
    }

    #[test]
    fn a_signal_already_set_resumes_the_connection_at_once() {
        let signal = Signal::default();
        signal.notify(); // while the connection was still being served
        signal.notify_to(resume_waker(9));
        assert_eq!(resumed_now(), vec![9]);
        // The latch was consumed: a task waiting on the signal now waits for the next notify.
        let mut waited = false;
        futures_lite::future::block_on(futures_lite::future::or(
            async {
                signal.wait().await;
                waited = true;
            },
            async {},
        ));
        assert!(
            !waited,
            "the notify that resumed the connection was left latched"
        );
    }

    #[test]
    fn the_resumer_is_woken_when_an_id_is_queued() {
        let woken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        struct Flag(std::sync::Arc<std::sync::atomic::AtomicBool>);
        impl std::task::Wake for Flag {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let waker = Waker::from(std::sync::Arc::new(Flag(woken.clone())));
        let mut cx = std::task::Context::from_waker(&waker);
        let mut ids = Vec::new();
        {
            let mut wait = std::pin::pin!(take_resumed(&mut ids));
            assert!(wait.as_mut().poll(&mut cx).is_pending());
            let signal = Signal::default();
            signal.notify_to(resume_waker(3));
            assert!(!woken.load(std::sync::atomic::Ordering::SeqCst));
            signal.notify();
            assert!(
                woken.load(std::sync::atomic::Ordering::SeqCst),
                "the resumer slept on"
            );
            assert!(wait.as_mut().poll(&mut cx).is_ready());
        }
        assert_eq!(ids, vec![3]);
    }
}

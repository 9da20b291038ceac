//! Single-threaded wake-ups between tasks of one shard (no atomics, no locks).
//!
//! glommio runs every task of a shard on one thread, so a `Cell` is enough. [`Signal`] has one
//! waiter (a connection's session task, a queue's flusher) and latches: a notify that comes while
//! nobody waits is not lost. [`Broadcast`] wakes every current waiter; waiters re-check their
//! condition in a loop, so spurious wake-ups are harmless.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

/// A latched, single-waiter wake-up. One word pair: the latch is a waker of its own
/// (`LATCHED`) in the waiter's slot, so that the connection record, which holds one, stays
/// in a smaller allocation class (`conn::tests`).
#[derive(Default)]
pub struct Signal {
    /// None: nobody waits and nothing is latched; [`LATCHED`]: notified while nobody waited;
    /// any other waker: the waiter's.
    slot: Cell<Option<Waker>>,
}

/// The latch's vtable: a waker that does nothing, told apart from every real waker by this
/// vtable's address (a `static` has exactly one).
static LATCHED: RawWakerVTable = RawWakerVTable::new(latched_clone, no_op, no_op, no_op);

fn latched_clone(_: *const ()) -> RawWaker {
    RawWaker::new(std::ptr::null(), &LATCHED)
}

fn no_op(_: *const ()) {}

fn latch() -> Waker {
    // SAFETY: the vtable's functions do nothing with the (null) data pointer.
    unsafe { Waker::from_raw(latched_clone(std::ptr::null())) }
}

fn is_latch(w: &Waker) -> bool {
    std::ptr::eq(w.vtable(), &LATCHED)
}

impl Signal {
    /// Latches the signal and wakes the waiter, if any.
    pub fn notify(&self) {
        match self.slot.replace(Some(latch())) {
            Some(w) if !is_latch(&w) => w.wake(),
            _ => {}
        }
    }

    /// Takes the latch if it is set.
    fn take_latch(&self) -> bool {
        match self.slot.take() {
            Some(w) if is_latch(&w) => true,
            other => {
                self.slot.set(other);
                false
            }
        }
    }

    /// Hands the next notify to `waker` instead of a waiting task (a parked connection has no
    /// task: see [`super::park`]). A signal already set is cleared and wakes `waker` now.
    pub fn notify_to(&self, waker: Waker) {
        if self.take_latch() {
            waker.wake();
        } else {
            self.slot.set(Some(waker));
        }
    }

    /// Clears the latch (a task taking over from [`Signal::notify_to`]'s waker re-checks
    /// everything it waits for before it waits).
    pub fn clear(&self) {
        self.take_latch();
    }

    /// Completes once the signal is set, and clears it.
    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(move |cx| self.poll_wait(cx))
    }

    /// [`Signal::wait`] as a poll, for a task that waits on it among other things: ready (and
    /// cleared) if set, else `cx`'s waker is the one the next notify wakes.
    pub fn poll_wait(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.take_latch() {
            Poll::Ready(())
        } else {
            self.slot.set(Some(cx.waker().clone()));
            Poll::Pending
        }
    }
}

/// Wakes all current waiters; used for "space became available" style conditions.
#[derive(Default)]
pub struct Broadcast {
    waiters: RefCell<Vec<Waker>>,
    generation: Cell<u64>,
}

impl Broadcast {
    /// Wakes everyone waiting now.
    pub fn notify_all(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in waiters {
            w.wake();
        }
    }

    /// Completes at the next `notify_all` after this call.
    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        let start = self.generation.get();
        poll_fn(move |cx| {
            if self.generation.get() != start {
                Poll::Ready(())
            } else {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    struct Count(AtomicUsize);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_signal_is_one_waker_wide() {
        assert_eq!(std::mem::size_of::<Signal>(), std::mem::size_of::<Waker>());
    }

    #[test]
    fn a_notify_latches_until_the_next_wait_and_wakes_a_waiter_once() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let signal = Signal::default();
        // Notified twice while nobody waited: one wait completes, the next waits.
        signal.notify();
        signal.notify();
        assert!(std::pin::pin!(signal.wait()).poll(&mut cx).is_ready());
        let mut wait = std::pin::pin!(signal.wait());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        signal.notify();
        signal.notify(); // the waiter was woken already; this one only latches
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(wait.as_mut().poll(&mut cx).is_ready());
        // Cleared: nothing latched is left.
        signal.clear();
        assert!(std::pin::pin!(signal.wait()).poll(&mut cx).is_pending());
    }

    #[test]
    fn notify_to_takes_a_latched_notify_or_the_next() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let signal = Signal::default();
        signal.notify_to(Waker::from(count.clone()));
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        signal.notify();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        // That notify latched too: the next hand-off is woken at once and consumes it.
        signal.notify_to(Waker::from(count.clone()));
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        signal.notify_to(Waker::from(count.clone()));
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            2,
            "the latch was consumed once"
        );
    }
}

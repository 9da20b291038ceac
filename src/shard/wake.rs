//! Single-threaded wake-ups between tasks of one shard (no atomics, no locks).
//!
//! glommio runs every task of a shard on one thread, so a `Cell` is enough. [`Signal`] has one
//! waiter (a connection's session task, a queue's flusher) and latches: a notify that comes while
//! nobody waits is not lost. [`Broadcast`] wakes every current waiter; waiters re-check their
//! condition in a loop, so spurious wake-ups are harmless.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::task::{Poll, Waker};

/// A latched, single-waiter wake-up.
#[derive(Default)]
pub struct Signal {
    set: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Signal {
    /// Latches the signal and wakes the waiter, if any.
    pub fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Completes once the signal is set, and clears it.
    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(move |cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
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

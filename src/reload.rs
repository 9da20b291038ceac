//! Values that SIGHUP replaces while the shards run (the login keys, the TLS certificate),
//! read by every shard without a lock on its path.
//!
//! A [`Reloadable`] is shared by all shards: the current value behind a mutex plus a generation
//! counter. Each shard reads through its own [`Local`], which keeps the value it last took and
//! compares generations (one relaxed-cost atomic load) before each use; only after a reload
//! does a shard take the mutex, once, to pick the new value up. The values are read at login
//! and handshake time only, never per message, and the shard borrows its copy instead of
//! cloning the `Arc`, so shards never write a shared cache line on the way.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The current value of something SIGHUP can replace, shared by all shards.
pub struct Reloadable<T> {
    generation: AtomicU64,
    current: Mutex<Arc<T>>,
}

impl<T> Reloadable<T> {
    pub fn new(value: T) -> Arc<Reloadable<T>> {
        Arc::new(Reloadable {
            generation: AtomicU64::new(1),
            current: Mutex::new(Arc::new(value)),
        })
    }

    /// Makes `value` current; returns its generation (the first value is generation 1).
    pub fn replace(&self, value: T) -> u64 {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        *current = Arc::new(value);
        // Under the mutex, so generations and values are published in the same order.
        self.generation.fetch_add(1, Ordering::Release) + 1
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current value (takes the mutex: for [`Local`], and for rare readers).
    pub fn current(&self) -> (u64, Arc<T>) {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        (self.generation(), current.clone())
    }
}

/// One shard's view of a [`Reloadable`].
pub struct Local<T> {
    shared: Arc<Reloadable<T>>,
    seen: Cell<u64>,
    value: RefCell<Arc<T>>,
}

impl<T> Local<T> {
    pub fn new(shared: Arc<Reloadable<T>>) -> Local<T> {
        let (seen, value) = shared.current();
        Local {
            shared,
            seen: Cell::new(seen),
            value: RefCell::new(value),
        }
    }

    /// Runs `f` on the current value (picking up a reload first, if there was one).
    pub fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        if self.shared.generation() != self.seen.get() {
            let (seen, value) = self.shared.current();
            self.seen.set(seen);
            *self.value.borrow_mut() = value;
        }
        f(&self.value.borrow())
    }

    /// The current value as an `Arc` (for values a task keeps, e.g. a TLS config).
    pub fn get(&self) -> Arc<T> {
        self.with(|_| ());
        self.value.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_view_picks_up_each_replacement() {
        let shared = Reloadable::new(1);
        let local = Local::new(shared.clone());
        assert_eq!(local.with(|v| *v), 1);
        assert_eq!(shared.replace(2), 2);
        assert_eq!(local.with(|v| *v), 2);
        assert_eq!(shared.replace(3), 3);
        assert_eq!(*local.get(), 3);
        assert_eq!(shared.current().0, 3);
    }
}

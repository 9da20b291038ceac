//! Idempotent send: remembers recent `(sender, client_msg_id)` outcomes per sender.
//!
//! One [`Dedup`] lives in each sender's user state on the sender's owner shard (where all of
//! the sender's connections are served), so a resend from any of the sender's devices finds it.
//! Entries expire after the dedup window and at most `capacity` are kept per sender (the
//! oldest goes first); a resend after either limit is treated as a new message.
//!
//! Only successful outcomes are remembered: a send refused with INBOX_FULL or
//! STORAGE_UNAVAILABLE may be retried and must then be tried again, not answered from memory.

use std::collections::{HashMap, VecDeque};

use super::envelope::ConnId;
use crate::protocol::Code;

/// What a send with this `client_msg_id` should do.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Never seen (or forgotten): route it.
    New,
    /// The original is still in flight; the caller was added to its waiters.
    InFlight,
    /// Already done: answer with this status, do not deliver again.
    Done(Code),
}

#[derive(Debug)]
enum State {
    InFlight { waiters: Vec<ConnId> },
    Done(Code),
}

#[derive(Debug)]
struct Entry {
    at_ms: u64,
    state: State,
}

/// Per-sender dedup window.
#[derive(Debug, Default)]
pub struct Dedup {
    entries: HashMap<u64, Entry>,
    order: VecDeque<(u64, u64)>, // (inserted at ms, client_msg_id), oldest first
}

impl Dedup {
    /// Looks up `id`; records it as in flight when new. `window_ms == 0` disables dedup.
    pub fn check(
        &mut self,
        id: u64,
        conn: ConnId,
        now_ms: u64,
        window_ms: u64,
        capacity: usize,
    ) -> Verdict {
        if window_ms == 0 {
            return Verdict::New;
        }
        self.expire(now_ms, window_ms);
        if let Some(e) = self.entries.get_mut(&id) {
            return match &mut e.state {
                State::Done(code) => Verdict::Done(*code),
                State::InFlight { waiters } => {
                    waiters.push(conn);
                    Verdict::InFlight
                }
            };
        }
        while self.entries.len() >= capacity.max(1) {
            match self.order.pop_front() {
                Some((_, old)) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
        self.entries.insert(
            id,
            Entry {
                at_ms: now_ms,
                state: State::InFlight {
                    waiters: Vec::new(),
                },
            },
        );
        self.order.push_back((now_ms, id));
        Verdict::New
    }

    /// Records the outcome of `id` and returns the resends waiting for it.
    pub fn complete(&mut self, id: u64, status: Code) -> Vec<ConnId> {
        let Some(e) = self.entries.get_mut(&id) else {
            return Vec::new();
        };
        let waiters = match std::mem::replace(&mut e.state, State::Done(status)) {
            State::InFlight { waiters } => waiters,
            State::Done(_) => Vec::new(),
        };
        if status != Code::OK {
            // Failures are not remembered: a retry gets a fresh attempt. The stale `order`
            // slot is skipped by `expire`/eviction because the id is no longer in `entries`
            // (or points to a newer entry, which then simply expires a little early).
            self.entries.remove(&id);
        }
        waiters
    }

    /// True when nothing is remembered (lets the owner drop idle user state).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn expire(&mut self, now_ms: u64, window_ms: u64) {
        while let Some(&(at, id)) = self.order.front() {
            if now_ms.saturating_sub(at) < window_ms {
                break;
            }
            self.order.pop_front();
            if self.entries.get(&id).is_some_and(|e| e.at_ms == at) {
                self.entries.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resend_after_ok_is_answered_from_memory() {
        let mut d = Dedup::default();
        assert_eq!(d.check(7, 1, 0, 1000, 16), Verdict::New);
        assert_eq!(d.check(7, 2, 10, 1000, 16), Verdict::InFlight);
        assert_eq!(d.complete(7, Code::OK), vec![2]);
        assert_eq!(d.check(7, 3, 20, 1000, 16), Verdict::Done(Code::OK));
    }

    #[test]
    fn failures_are_not_remembered() {
        let mut d = Dedup::default();
        assert_eq!(d.check(1, 1, 0, 1000, 16), Verdict::New);
        d.complete(1, Code::INBOX_FULL);
        assert_eq!(d.check(1, 1, 5, 1000, 16), Verdict::New);
    }

    #[test]
    fn entries_expire_after_the_window_and_respect_capacity() {
        let mut d = Dedup::default();
        d.check(1, 1, 0, 100, 2);
        d.complete(1, Code::OK);
        assert_eq!(d.check(1, 1, 100, 100, 2), Verdict::New, "expired");
        d.check(2, 1, 101, 100, 2);
        d.check(3, 1, 102, 100, 2); // evicts 1
        assert_eq!(
            d.check(1, 1, 103, 100, 2),
            Verdict::New,
            "evicted by capacity"
        );
        assert!(d.entries.len() <= 2);
    }

    #[test]
    fn zero_window_disables_dedup() {
        let mut d = Dedup::default();
        assert_eq!(d.check(1, 1, 0, 0, 16), Verdict::New);
        assert_eq!(d.check(1, 1, 0, 0, 16), Verdict::New);
        assert!(d.is_empty());
    }
}

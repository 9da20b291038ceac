//! Idempotent send: remembers recent `(sender, client_msg_id)` outcomes.
//!
//! The check lives where the message is ordered: on the recipient's owner shard for a 1:1
//! message, on the group's owner shard for a group message — the shard whose log holds the
//! message. So a resend from any of the sender's devices, over any connection, finds it, and
//! after a restart the window is rebuilt from the very records it protects (each carries its
//! sender and client_msg_id): a message acked before a kill -9, or appended but not yet acked
//! when the kill landed, is answered OK and never stored twice.
//!
//! Entries expire after the dedup window and at most `capacity` are kept per sender per shard
//! (the oldest goes first); a resend after either limit is treated as a new message. An entry
//! whose send is still in flight is never dropped, by either limit (its waiters would never be
//! answered and a resend would be stored twice), and a send that was refused and then resent
//! is remembered from its resend on, never forgotten through its refused first try.
//!
//! Only successful outcomes are remembered: a send refused with INBOX_FULL or
//! STORAGE_UNAVAILABLE may be retried and must then be tried again, not answered from memory.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::protocol::Code;

/// What a send with this `client_msg_id` should do.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Never seen (or forgotten): accept it.
    New,
    /// The first copy is still being stored; the caller was added as a waiter and is answered
    /// with it.
    InFlight,
    /// Already stored (only sends answered OK are remembered): answer OK at once.
    Done,
}

/// A send whose first copy is still being stored.
#[derive(Debug)]
struct InFlight<W> {
    /// When the send was first seen (the window counts from it).
    at_ms: u64,
    waiters: Vec<W>,
}

/// One sender's window. `W` is whoever waits for an in-flight send's outcome.
///
/// Only successful outcomes are remembered, so a finished entry is just its id and when it was
/// first seen: the ids in a set, and (id, at_ms) in the order they finished (about the order
/// they were seen), which is the order they are forgotten in. 16 bytes in `order` and one
/// set slot (8 bytes and a control byte) per remembered send; the sends in flight, few at any
/// time, are kept apart with their waiters. An id is in at most one of the two (a send found
/// finished is answered, never inserted again), and leaves `done` only from the front of
/// `order`, so every slot in `order` is live: nothing stale to skip.
#[derive(Debug)]
pub struct Dedup<W> {
    done: std::collections::HashSet<u64, ahash::RandomState>,
    order: VecDeque<(u64, u64)>,
    in_flight: super::FastMap<u64, InFlight<W>>,
}

impl<W> Default for Dedup<W> {
    fn default() -> Self {
        Dedup {
            done: Default::default(),
            order: VecDeque::new(),
            in_flight: super::FastMap::default(),
        }
    }
}

impl<W> Dedup<W> {
    /// Looks `id` up; a new one is recorded as in flight. `waiter` is kept only when the
    /// first copy is still in flight.
    pub fn check(
        &mut self,
        id: u64,
        waiter: W,
        now_ms: u64,
        window_ms: u64,
        capacity: usize,
    ) -> Verdict {
        if window_ms == 0 {
            return Verdict::New;
        }
        self.expire(now_ms, window_ms);
        if self.done.contains(&id) {
            return Verdict::Done;
        }
        if let Some(f) = self.in_flight.get_mut(&id) {
            f.waiters.push(waiter);
            return Verdict::InFlight;
        }
        self.make_room(capacity.max(1));
        self.in_flight.insert(
            id,
            InFlight {
                at_ms: now_ms,
                waiters: Vec::new(),
            },
        );
        Verdict::New
    }

    /// Records the outcome of the in-flight send `id`; returns its waiters. Failures are
    /// forgotten (a retry must be tried again).
    pub fn complete(&mut self, id: u64, status: Code) -> Vec<W> {
        let Some(f) = self.in_flight.remove(&id) else {
            return Vec::new();
        };
        if self.in_flight.is_empty() && self.in_flight.capacity() > 16 {
            // A burst of sends in flight must not size this map for good: what a window
            // holds for long is what `done` holds.
            self.in_flight = super::FastMap::default();
        }
        if status == Code::OK {
            self.done.insert(id);
            self.order.push_back((id, f.at_ms));
        }
        f.waiters
    }

    /// Recovery: `id` was stored at `at_ms` (a record in the log says so).
    pub fn remember(&mut self, id: u64, at_ms: u64, now_ms: u64, window_ms: u64, capacity: usize) {
        if window_ms == 0 || now_ms.saturating_sub(at_ms) >= window_ms {
            return;
        }
        if self.done.contains(&id) || self.in_flight.contains_key(&id) {
            return;
        }
        self.make_room(capacity.max(1));
        self.done.insert(id);
        self.order.push_back((id, at_ms));
    }

    pub fn is_empty(&self) -> bool {
        self.done.is_empty() && self.in_flight.is_empty()
    }

    pub fn len(&self) -> usize {
        self.done.len() + self.in_flight.len()
    }

    /// Forgets the oldest finished entries until fewer than `capacity` remain (in-flight ones
    /// stay, so the window may exceed `capacity` by the sends in flight).
    fn make_room(&mut self, capacity: usize) {
        while self.len() >= capacity {
            let Some((id, _)) = self.order.pop_front() else {
                break; // only sends in flight left
            };
            self.done.remove(&id);
        }
    }

    /// Forgets finished entries older than the window.
    pub fn expire(&mut self, now_ms: u64, window_ms: u64) {
        while let Some(&(id, at_ms)) = self.order.front() {
            if now_ms.saturating_sub(at_ms) < window_ms {
                break;
            }
            self.order.pop_front();
            self.done.remove(&id);
        }
        if self.order.is_empty() && self.order.capacity() > 16 {
            self.order = VecDeque::new();
            self.done = Default::default();
        }
    }
}

/// Every sender's window on one shard.
#[derive(Debug)]
pub struct Windows<W> {
    by_sender: super::FastMap<Arc<str>, Dedup<W>>,
}

impl<W> Default for Windows<W> {
    fn default() -> Self {
        Windows {
            by_sender: super::FastMap::default(),
        }
    }
}

impl<W> Windows<W> {
    /// `sender`'s window (created empty).
    pub fn sender(&mut self, sender: &str) -> &mut Dedup<W> {
        let key: Arc<str> = match self.by_sender.get_key_value(sender) {
            Some((key, _)) => key.clone(),
            None => Arc::from(sender),
        };
        self.by_sender.entry(key).or_default()
    }

    pub fn get_mut(&mut self, sender: &str) -> Option<&mut Dedup<W>> {
        self.by_sender.get_mut(sender)
    }

    /// Expires every window; forgets senders whose window emptied.
    pub fn expire_all(&mut self, now_ms: u64, window_ms: u64) {
        self.by_sender.retain(|_, d| {
            d.expire(now_ms, window_ms);
            !d.is_empty()
        });
    }

    /// Entries over all senders.
    pub fn entries(&self) -> usize {
        self.by_sender.values().map(Dedup::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type D = Dedup<u64>;

    #[test]
    fn resend_after_ok_is_answered_from_memory() {
        let mut d = D::default();
        assert_eq!(d.check(7, 1, 0, 1000, 16), Verdict::New);
        assert_eq!(d.check(7, 2, 10, 1000, 16), Verdict::InFlight);
        assert_eq!(d.complete(7, Code::OK), vec![2]);
        assert_eq!(d.check(7, 3, 20, 1000, 16), Verdict::Done);
    }

    #[test]
    fn failures_are_not_remembered() {
        let mut d = D::default();
        assert_eq!(d.check(1, 1, 0, 1000, 16), Verdict::New);
        d.complete(1, Code::INBOX_FULL);
        assert_eq!(d.check(1, 1, 5, 1000, 16), Verdict::New);
    }

    #[test]
    fn entries_expire_after_the_window_and_respect_capacity() {
        let mut d = D::default();
        d.check(1, 1, 0, 100, 2);
        d.complete(1, Code::OK);
        assert_eq!(d.check(1, 1, 100, 100, 2), Verdict::New, "expired");
        d.complete(1, Code::OK);
        d.check(2, 1, 101, 100, 2);
        d.complete(2, Code::OK);
        d.check(3, 1, 102, 100, 2); // evicts 1
        assert_eq!(
            d.check(1, 1, 103, 100, 2),
            Verdict::New,
            "evicted by capacity"
        );
        assert!(d.len() <= 3, "only in-flight entries exceed capacity");
    }

    #[test]
    fn capacity_never_evicts_a_send_in_flight() {
        let mut d = D::default();
        assert_eq!(d.check(1, 1, 0, 10_000, 2), Verdict::New); // in flight
        assert_eq!(d.check(2, 1, 1, 10_000, 2), Verdict::New);
        d.complete(2, Code::OK);
        assert_eq!(d.check(3, 1, 2, 10_000, 2), Verdict::New); // evicts 2, not 1
        assert_eq!(
            d.check(1, 9, 3, 10_000, 2),
            Verdict::InFlight,
            "the in-flight send is still there and gains a waiter"
        );
        assert_eq!(d.complete(1, Code::OK), vec![9]);
        assert_eq!(d.check(2, 1, 4, 10_000, 2), Verdict::New, "2 was evicted");
    }

    #[test]
    fn the_window_never_expires_a_send_in_flight() {
        let mut d = D::default();
        assert_eq!(d.check(1, 1, 0, 100, 16), Verdict::New);
        assert_eq!(d.check(1, 2, 500, 100, 16), Verdict::InFlight);
        assert_eq!(d.complete(1, Code::OK), vec![2]);
    }

    #[test]
    fn a_refused_first_try_never_makes_its_resend_forgotten_early() {
        let mut d = D::default();
        // 1 is refused (forgotten), then 2, then 1 again: what is remembered, oldest first,
        // is [2, 1].
        assert_eq!(d.check(1, 1, 0, 10_000, 2), Verdict::New);
        d.complete(1, Code::INBOX_FULL);
        assert_eq!(d.check(2, 1, 5, 10_000, 2), Verdict::New);
        d.complete(2, Code::OK);
        assert_eq!(d.check(1, 1, 10, 10_000, 2), Verdict::New);
        d.complete(1, Code::OK);
        // At capacity: the oldest live entry (2) goes, not the newer 1 through its stale slot.
        assert_eq!(d.check(3, 1, 11, 10_000, 2), Verdict::New);
        assert_eq!(d.check(1, 1, 12, 10_000, 2), Verdict::Done);
        d.complete(3, Code::OK);
        assert_eq!(d.check(2, 1, 13, 10_000, 3), Verdict::New);
    }

    #[test]
    fn remembered_entries_answer_ok_within_the_window_only() {
        let mut d = D::default();
        d.remember(4, 1_000, 1_500, 1_000, 16);
        d.remember(5, 100, 1_500, 1_000, 16); // older than the window: not kept
        assert_eq!(d.check(4, 1, 1_600, 1_000, 16), Verdict::Done);
        assert_eq!(d.check(5, 1, 1_600, 1_000, 16), Verdict::New);
    }

    #[test]
    fn recovery_does_not_touch_a_send_in_flight() {
        let mut d = D::default();
        assert_eq!(d.check(6, 1, 1_000, 1_000, 16), Verdict::New);
        d.remember(6, 1_000, 1_000, 1_000, 16);
        assert_eq!(d.check(6, 2, 1_001, 1_000, 16), Verdict::InFlight);
        assert_eq!(d.complete(6, Code::OK), vec![2]);
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn an_emptied_window_gives_its_memory_back() {
        let mut d = D::default();
        for id in 0..1_000 {
            d.check(id, 0, id, 10_000, 4_096);
            d.complete(id, Code::OK);
        }
        assert_eq!(d.len(), 1_000);
        d.expire(20_000, 10_000);
        assert!(d.is_empty());
        assert_eq!((d.order.capacity(), d.done.capacity()), (0, 0));
    }

    #[test]
    fn a_burst_in_flight_leaves_no_table_behind() {
        let mut d = D::default();
        for id in 0..1_000 {
            assert_eq!(d.check(id, 0, 0, 10_000, 4_096), Verdict::New);
        }
        for id in 0..1_000 {
            d.complete(id, Code::OK);
        }
        assert_eq!(d.len(), 1_000);
        assert_eq!(d.in_flight.capacity(), 0);
    }

    #[test]
    fn zero_window_disables_dedup() {
        let mut d = D::default();
        assert_eq!(d.check(1, 1, 0, 0, 16), Verdict::New);
        assert_eq!(d.check(1, 1, 0, 0, 16), Verdict::New);
        assert!(d.is_empty());
    }

    #[test]
    fn windows_forget_senders_whose_entries_expired() {
        let mut w: Windows<u64> = Windows::default();
        w.sender("alice").check(1, 0, 0, 100, 16);
        w.sender("alice").complete(1, Code::OK);
        w.expire_all(50, 100);
        assert_eq!(w.entries(), 1);
        w.expire_all(100, 100);
        assert_eq!(w.entries(), 0);
        assert!(w.get_mut("alice").is_none());
    }
}

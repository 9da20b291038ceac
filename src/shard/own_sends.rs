//! The copies of a connection's own sends that it is not sent.
//!
//! Under own-send sync a 1:1 send gets a copy (`outgoing`) in the sender's own stream, so their
//! other devices show it. The connection that made the send already has the message: its
//! SendAck names the copy's seq (`own_seq`) and the refill passes over that entry for this
//! connection instead of sending it back (no Deliver, no body on the wire, nothing to ack).
//!
//! The device never sees those seqs, so its acks stop just before each of them; an ack that
//! reaches the entry before a passed-over copy covers the copy too, so the stored cursor moves
//! past it and a login that resumes from the cursor does not replay it. A device that resumes
//! from its own last seq instead (before the copy) gets the copy then, as an ordinary outgoing
//! entry with its client_msg_id, which the client libraries recognise as the echo of their send.
//!
//! Per connection, in its record: seqs ascending (one user's seqs are assigned in order), empty
//! and unallocated until the connection sends; bounded, since a device that sends without
//! acking would otherwise grow it without end.

use std::cell::RefCell;
use std::collections::VecDeque;

/// Most copies one connection has passed over, or will, and not yet covered by its ack. Past
/// it (a device sending far more than it acks) copies are sent to it like any other entry,
/// with `own_seq` 0 in their SendAcks.
pub const MAX_OWN_SENDS: usize = 256;

/// One connection's own-send copies it is not sent (see the module doc).
#[derive(Debug, Default)]
pub struct OwnSends(RefCell<VecDeque<u64>>);

impl OwnSends {
    /// `seq` is the copy of a send made on this connection: passed over by the refill. False
    /// (nothing recorded: the copy is sent as usual) when [`MAX_OWN_SENDS`] are pending.
    pub fn record(&self, seq: u64) -> bool {
        let mut own = self.0.borrow_mut();
        if own.len() >= MAX_OWN_SENDS || own.back().is_some_and(|&last| last >= seq) {
            return false;
        }
        own.push_back(seq);
        true
    }

    /// Whether the refill passes over `seq` for this connection.
    pub fn passes_over(&self, seq: u64) -> bool {
        let own = self.0.borrow();
        !own.is_empty() && own.binary_search(&seq).is_ok()
    }

    /// The device acked up to `acked`, and everything up to `sent` has been passed to it:
    /// extends `acked` over the passed-over copies right after it (the device has them) and
    /// forgets every copy at or below the result.
    pub fn cover(&self, acked: u64, sent: u64) -> u64 {
        let mut own = self.0.borrow_mut();
        let mut acked = acked;
        while let Some(&seq) = own.front() {
            if seq <= acked {
                own.pop_front();
            } else if seq == acked + 1 && seq <= sent {
                acked = seq;
                own.pop_front();
            } else {
                break;
            }
        }
        acked
    }

    pub fn is_empty(&self) -> bool {
        self.0.borrow().is_empty()
    }

    /// The connection goes idle (parks): gives back the buffer if nothing is pending, so a
    /// burst of sends does not leave up to [`MAX_OWN_SENDS`] × 8 B with every idle connection.
    pub fn release_if_empty(&self) {
        let mut own = self.0.borrow_mut();
        if own.is_empty() && own.capacity() > 0 {
            *own = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_right_before_passed_over_copies_covers_them() {
        let own = OwnSends::default();
        assert!(own.record(3) && own.record(4) && own.record(7));
        assert!(own.passes_over(3) && own.passes_over(4) && own.passes_over(7));
        assert!(!own.passes_over(5));
        // 3 and 4 passed (sent up to 5), 7 not yet: the ack of 2 covers 3 and 4, not 7.
        assert_eq!(own.cover(2, 5), 4);
        assert!(!own.passes_over(3) && own.passes_over(7));
        // Not contiguous with the ack: nothing covered.
        assert_eq!(own.cover(5, 8), 5);
        // Reached: the ack of 6 covers 7 once it has been passed.
        assert_eq!(own.cover(6, 6), 6);
        assert_eq!(own.cover(6, 7), 7);
        assert!(own.is_empty());
    }

    #[test]
    fn an_ack_past_a_copy_forgets_it() {
        let own = OwnSends::default();
        assert!(own.record(3));
        assert_eq!(own.cover(9, 9), 9);
        assert!(own.is_empty() && !own.passes_over(3));
    }

    #[test]
    fn an_idle_connection_keeps_no_buffer() {
        let own = OwnSends::default();
        for seq in 1..=100 {
            own.record(seq);
        }
        own.release_if_empty();
        assert_eq!(own.0.borrow().len(), 100, "pending copies are kept");
        own.cover(100, 100);
        own.release_if_empty();
        assert_eq!(own.0.borrow().capacity(), 0);
    }

    #[test]
    fn it_is_bounded_and_ascending() {
        let own = OwnSends::default();
        for seq in 1..=MAX_OWN_SENDS as u64 {
            assert!(own.record(seq * 2));
        }
        assert!(!own.record(10_000), "full: the copy is sent as usual");
        assert!(!own.passes_over(10_000));
        let fresh = OwnSends::default();
        assert!(fresh.record(5));
        assert!(!fresh.record(5) && !fresh.record(4), "seqs only grow");
    }
}

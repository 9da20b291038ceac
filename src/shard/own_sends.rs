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

/// One connection's own-send copies it is not sent (see the module doc). 16 bytes in the
/// connection record; the copies are boxed, and only while some are pending, because most
/// connections (every idle one) have none.
#[derive(Debug, Default)]
pub struct OwnSends(RefCell<Option<Box<Pending>>>);

#[derive(Debug, Default)]
struct Pending {
    seqs: VecDeque<u64>,
    /// Where [`OwnSends::passes_over`] left off: the index of the first seq not below the one
    /// it was last asked about. The refill asks in ascending order, so each question moves it
    /// forward over the entries it passed (O(1) amortised) instead of searching the deque; a
    /// lower seq (the refill restarted) searches afresh. Only a hint: every answer checks the
    /// entry before it, so a stale one costs time, never a wrong answer.
    cursor: usize,
}

impl OwnSends {
    /// `seq` is the copy of a send made on this connection: passed over by the refill. False
    /// (nothing recorded: the copy is sent as usual) when [`MAX_OWN_SENDS`] are pending.
    pub fn record(&self, seq: u64) -> bool {
        let mut own = self.0.borrow_mut();
        let own = own.get_or_insert_with(Box::default);
        if own.seqs.len() >= MAX_OWN_SENDS || own.seqs.back().is_some_and(|&last| last >= seq) {
            return false;
        }
        // At the back, past the cursor: what is before the cursor is unchanged.
        own.seqs.push_back(seq);
        true
    }

    /// Whether the refill passes over `seq` for this connection.
    pub fn passes_over(&self, seq: u64) -> bool {
        let mut own = self.0.borrow_mut();
        let Some(own) = own.as_deref_mut().filter(|o| !o.seqs.is_empty()) else {
            return false;
        };
        let seqs = &own.seqs;
        let mut at = own.cursor.min(seqs.len());
        if at > 0 && seqs[at - 1] >= seq {
            // Asked about a lower seq than last time.
            at = seqs.partition_point(|&s| s < seq);
        }
        while at < seqs.len() && seqs[at] < seq {
            at += 1;
        }
        own.cursor = at;
        at < seqs.len() && seqs[at] == seq
    }

    /// The device acked up to `acked`, and everything up to `sent` has been passed to it:
    /// extends `acked` over the passed-over copies right after it (the device has them) and
    /// forgets every copy at or below the result.
    pub fn cover(&self, acked: u64, sent: u64) -> u64 {
        let mut own = self.0.borrow_mut();
        let Some(own) = own.as_deref_mut() else {
            return acked;
        };
        let mut acked = acked;
        let mut removed = 0;
        while let Some(&seq) = own.seqs.front() {
            if seq <= acked {
                own.seqs.pop_front();
            } else if seq == acked + 1 && seq <= sent {
                acked = seq;
                own.seqs.pop_front();
            } else {
                break;
            }
            removed += 1;
        }
        // The cursor's entries shift down with the front removed.
        own.cursor = own.cursor.saturating_sub(removed);
        acked
    }

    pub fn is_empty(&self) -> bool {
        self.0.borrow().as_ref().is_none_or(|o| o.seqs.is_empty())
    }

    /// The connection goes idle (parks): gives back the copies' box if nothing is pending, so
    /// a burst of sends does not leave up to [`MAX_OWN_SENDS`] × 8 B with every idle
    /// connection.
    pub fn release_if_empty(&self) {
        if self.is_empty() {
            *self.0.borrow_mut() = None;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.borrow().as_ref().map_or(0, |o| o.seqs.len())
    }

    #[cfg(test)]
    fn allocated(&self) -> bool {
        self.0.borrow().is_some()
    }

    #[cfg(test)]
    fn cursor(&self) -> usize {
        self.0.borrow().as_ref().map_or(0, |o| o.cursor)
    }

    #[cfg(test)]
    fn contains(&self, seq: u64) -> bool {
        self.0
            .borrow()
            .as_ref()
            .is_some_and(|o| o.seqs.binary_search(&seq).is_ok())
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
        assert_eq!(own.len(), 100, "pending copies are kept");
        own.cover(100, 100);
        own.release_if_empty();
        assert!(!own.allocated());
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

    /// The binary search the cursor replaces.
    fn searched(own: &OwnSends, seq: u64) -> bool {
        own.contains(seq)
    }

    #[test]
    fn a_refill_restarting_lower_finds_the_copies_again() {
        let own = OwnSends::default();
        assert!(own.record(3) && own.record(5) && own.record(6) && own.record(9));
        let firsts: Vec<u64> = (1..=10).filter(|&s| own.passes_over(s)).collect();
        assert_eq!(firsts, [3, 5, 6, 9]);
        // A resume from seq 4: the cursor is past every entry.
        let again: Vec<u64> = (4..=10).filter(|&s| own.passes_over(s)).collect();
        assert_eq!(again, [5, 6, 9]);
        // A jump back into the middle, and one to the very first.
        assert!(own.passes_over(6) && !own.passes_over(4) && own.passes_over(3));
        // A jump ahead over several entries at once.
        assert!(!own.passes_over(8) && own.passes_over(9) && !own.passes_over(100));
    }

    #[test]
    fn a_cover_before_the_cursor_keeps_the_answers_right() {
        let own = OwnSends::default();
        for seq in [2, 3, 4, 8, 9] {
            assert!(own.record(seq));
        }
        // The refill got to 8: the cursor is on 8, after 2, 3 and 4.
        assert!((1..=8).filter(|&s| own.passes_over(s)).eq([2, 3, 4, 8]));
        // The ack of 3 covers 2..=4, all before the cursor; 8 is not next to it.
        assert_eq!(own.cover(3, 8), 4);
        assert_eq!(own.cursor(), 0, "still on 8, now the front");
        assert!(own.passes_over(8) && own.passes_over(9) && !own.passes_over(10));
        assert!(!own.passes_over(3) && !own.passes_over(4));

        // A cover that removes more than there is before the cursor.
        let own = OwnSends::default();
        for seq in [2, 3, 4, 8, 9] {
            assert!(own.record(seq));
        }
        assert!(own.passes_over(2) && own.passes_over(3)); // the cursor is on 3
        assert_eq!(own.cover(8, 8), 8); // 9 not passed yet: kept
        assert_eq!(own.cursor(), 0);
        assert!(!own.passes_over(8) && own.passes_over(9));
        assert_eq!(own.cover(8, 9), 9);
        assert!(own.is_empty() && !own.passes_over(9) && !own.passes_over(10));
    }

    #[test]
    fn a_copy_recorded_after_a_cover_is_passed_over() {
        let own = OwnSends::default();
        assert!(own.record(5) && own.record(6));
        assert!(own.passes_over(5) && own.passes_over(6) && !own.passes_over(7));
        assert_eq!(own.cover(4, 7), 6);
        assert!(own.record(10) && own.record(11));
        assert!(!own.passes_over(9) && own.passes_over(10) && own.passes_over(11));
        // Emptied and released (parked), then a new send.
        assert_eq!(own.cover(11, 11), 11);
        own.release_if_empty();
        assert!(own.record(20));
        assert!(!own.passes_over(12) && own.passes_over(20));
    }

    #[test]
    fn the_cursor_answers_as_the_search_does() {
        // Random records, covers and refills (mostly ascending, sometimes restarting lower),
        // each answer checked against a binary search of the same deque.
        let own = OwnSends::default();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut head, mut asked) = (0u64, 0u64);
        for _ in 0..20_000 {
            match next() % 16 {
                0..=3 => {
                    head += 1 + next() % 3;
                    own.record(head);
                }
                4 => {
                    let acked = asked.saturating_sub(next() % 4);
                    own.cover(acked, asked);
                }
                5 => asked = asked.saturating_sub(next() % 8),
                6 => own.release_if_empty(),
                _ => {
                    asked = (asked + 1).min(head + 1);
                    assert_eq!(own.passes_over(asked), searched(&own, asked), "seq {asked}");
                }
            }
        }
    }
}

//! A user's retained stream entries: where in the log each seq's record lies.
//!
//! A user's seqs are gap-free, so the index keeps the first retained seq and one log position
//! per entry (8 bytes per retained entry, not a (seq, position) pair of 16): seq `first + i`
//! is at the i-th position. Replay of K entries is K reads at known positions, never a scan of
//! the shard's log. A push that does not continue the index (recovery found entries deleted
//! by retention before an anchor restated the head) starts it afresh.
//!
//! The first seq is kept in the deque itself, ahead of the positions, rather than in a field
//! beside it: the index is 32 bytes, and the user record it lives in stays within mimalloc's
//! 160-byte size class (see `users::tests`).

use std::collections::VecDeque;

#[derive(Debug, Default, Clone)]
pub struct StreamIndex {
    /// Empty, or the first seq followed by the position of each entry, oldest first.
    slots: VecDeque<u64>,
}

impl StreamIndex {
    /// Appends `seq` at log position `pos`. False when `seq` does not follow the newest entry
    /// and the index started afresh from it.
    pub fn push(&mut self, seq: u64, pos: u64) -> bool {
        let continues = self.is_empty() || self.next_seq() == Some(seq);
        if !continues || self.is_empty() {
            self.slots.clear();
            self.slots.push_back(seq);
        }
        self.slots.push_back(pos);
        continues
    }

    /// The seq after the newest entry (None past u64::MAX).
    fn next_seq(&self) -> Option<u64> {
        let first = self.first_seq()?;
        u64::try_from(self.len())
            .ok()
            .and_then(|n| first.checked_add(n))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.slots.len().saturating_sub(1)
    }

    /// The oldest retained seq.
    pub fn first_seq(&self) -> Option<u64> {
        match self.slots.len() {
            0 | 1 => None,
            _ => self.slots.front().copied(),
        }
    }

    /// Log position of `seq`, if retained.
    pub fn position(&self, seq: u64) -> Option<u64> {
        let i = usize::try_from(seq.checked_sub(self.first_seq()?)?).ok()?;
        self.slots.get(i.checked_add(1)?).copied()
    }

    /// Position of the newest entry.
    pub fn last_position(&self) -> Option<u64> {
        match self.is_empty() {
            true => None,
            false => self.slots.back().copied(),
        }
    }

    /// Forgets the entries whose records lie below log position `oldest` (deleted by
    /// retention).
    pub fn forget_before(&mut self, oldest: u64) {
        if self.slots.get(1).is_none_or(|&pos| pos >= oldest) {
            return;
        }
        let Some(mut first) = self.slots.pop_front() else {
            return;
        };
        while self.slots.front().is_some_and(|&pos| pos < oldest) {
            self.slots.pop_front();
            first = first.wrapping_add(1);
        }
        if !self.slots.is_empty() {
            self.slots.push_front(first);
        }
    }

    /// (seq, position) of every entry, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        // Not `(first..).zip(..)`: a RangeFrom steps past its last item, which overflows at
        // u64::MAX.
        let first = self.first_seq().unwrap_or(0);
        self.slots
            .iter()
            .skip(1)
            .enumerate()
            .map(move |(i, &pos)| (first.wrapping_add(i as u64), pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(ix: &StreamIndex) -> Vec<(u64, u64)> {
        ix.iter().collect()
    }

    #[test]
    fn positions_are_found_by_seq_and_forgotten_from_the_front() {
        let mut ix = StreamIndex::default();
        assert_eq!(
            (ix.first_seq(), ix.position(1), ix.last_position()),
            (None, None, None)
        );
        for seq in 5..=9 {
            assert!(ix.push(seq, seq * 100));
        }
        assert_eq!(ix.first_seq(), Some(5));
        assert_eq!(ix.position(4), None);
        assert_eq!(ix.position(7), Some(700));
        assert_eq!(ix.position(10), None);
        assert_eq!(ix.last_position(), Some(900));
        ix.forget_before(701);
        assert_eq!(entries(&ix), vec![(8, 800), (9, 900)]);
        assert_eq!(
            (ix.first_seq(), ix.position(7), ix.position(8)),
            (Some(8), None, Some(800))
        );
        ix.forget_before(u64::MAX);
        assert!(ix.is_empty());
        assert_eq!(
            (ix.len(), ix.first_seq(), ix.last_position()),
            (0, None, None)
        );
        // Emptied by retention: the next seq starts it again.
        assert!(ix.push(10, 1_000));
        assert_eq!(entries(&ix), vec![(10, 1_000)]);
    }

    #[test]
    fn the_index_is_one_deque_wide() {
        assert_eq!(
            std::mem::size_of::<StreamIndex>(),
            std::mem::size_of::<VecDeque<u64>>()
        );
    }

    #[test]
    fn a_gap_starts_the_index_afresh() {
        let mut ix = StreamIndex::default();
        ix.push(1, 10);
        ix.push(2, 20);
        assert!(!ix.push(7, 70), "a gap");
        assert_eq!(entries(&ix), vec![(7, 70)]);
        assert!(!ix.push(7, 71), "a repeated seq is a gap too");
        assert_eq!(entries(&ix), vec![(7, 71)]);
    }

    #[test]
    fn the_last_seq_ends_the_index() {
        let mut ix = StreamIndex::default();
        ix.push(u64::MAX - 1, 1);
        assert!(ix.push(u64::MAX, 2));
        assert_eq!(ix.position(u64::MAX), Some(2));
        assert_eq!(entries(&ix), vec![(u64::MAX - 1, 1), (u64::MAX, 2)]);
        assert!(!ix.push(1, 3), "nothing follows u64::MAX");
        assert_eq!(entries(&ix), vec![(1, 3)]);
    }
}

//! A user's retained stream entries: where in the log each seq's record lies.
//!
//! A user's seqs are gap-free, so the index keeps the first retained seq and one log position
//! per entry (8 bytes per retained entry, not a (seq, position) pair of 16): seq `first + i`
//! is at `positions[i]`. Replay of K entries is K reads at known positions, never a scan of
//! the shard's log. A push that does not continue the index (recovery found entries deleted
//! by retention before an anchor restated the head) starts it afresh.

use std::collections::VecDeque;

#[derive(Debug, Default, Clone)]
pub struct StreamIndex {
    /// Seq of `positions[0]`; meaningless while `positions` is empty.
    first: u64,
    positions: VecDeque<u64>,
}

impl StreamIndex {
    /// Appends `seq` at log position `pos`. False when `seq` does not follow the newest entry
    /// and the index started afresh from it.
    pub fn push(&mut self, seq: u64, pos: u64) -> bool {
        let continues = self.positions.is_empty() || self.next_seq() == Some(seq);
        if !continues {
            self.positions.clear();
        }
        if self.positions.is_empty() {
            self.first = seq;
        }
        self.positions.push_back(pos);
        continues
    }

    /// The seq after the newest entry (None past u64::MAX).
    fn next_seq(&self) -> Option<u64> {
        u64::try_from(self.positions.len())
            .ok()
            .and_then(|n| self.first.checked_add(n))
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// The oldest retained seq.
    pub fn first_seq(&self) -> Option<u64> {
        (!self.positions.is_empty()).then_some(self.first)
    }

    /// Log position of `seq`, if retained.
    pub fn position(&self, seq: u64) -> Option<u64> {
        let i = usize::try_from(seq.checked_sub(self.first)?).ok()?;
        self.positions.get(i).copied()
    }

    /// Position of the newest entry.
    pub fn last_position(&self) -> Option<u64> {
        self.positions.back().copied()
    }

    /// Forgets the entries whose records lie below log position `oldest` (deleted by
    /// retention).
    pub fn forget_before(&mut self, oldest: u64) {
        while self.positions.front().is_some_and(|&pos| pos < oldest) {
            self.positions.pop_front();
            self.first = self.first.wrapping_add(1);
        }
    }

    /// (seq, position) of every entry, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        // Not `(self.first..).zip(..)`: a RangeFrom steps past its last item, which overflows
        // at u64::MAX.
        let first = self.first;
        self.positions
            .iter()
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
        // Emptied by retention: the next seq starts it again.
        assert!(ix.push(10, 1_000));
        assert_eq!(entries(&ix), vec![(10, 1_000)]);
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

//! Vectors taken whole once per round (a group commit's acks and moved streams, a mesh lane's
//! outbox) and handed back emptied, so the next round fills memory it already has.
//!
//! `std::mem::take` on such a vector leaves an empty one behind, and the next round grows it
//! again from nothing: a few `realloc`s per commit at any rate, and at a saturated 1:1 peak,
//! where a commit gathers thousands of entries, copies into freshly mapped pages that the
//! kernel zeroes first (with transparent huge pages, 2 MiB at a time): 19 % of the shard
//! threads' samples (BENCHMARKS.md, "Commit batches and mesh outboxes grown again every
//! round").

use std::cell::{Cell, RefCell};

/// A vector's capacity is kept up to this many bytes (a burst larger than that grows its
/// own), so what a shard keeps for this stays bounded.
pub const MAX_KEPT_BYTES: usize = 8 << 20;

/// Emptied vectors kept at most: commit batches are taken while earlier ones are still being
/// synced ([`super::tasks::COMMITS_IN_FLIGHT`]), so that many plus the one filling can be out.
pub const MAX_SPARES: usize = super::tasks::COMMITS_IN_FLIGHT + 1;

/// The recent high-water mark loses 1/DECAY of itself per round: after a burst it halves in
/// ~44 rounds (a second or two of commits), and spares over 4× it are let go.
const DECAY: usize = 64;

/// Emptied vectors waiting to be reused, largest capacity last.
pub struct SpareVecs<T> {
    spares: RefCell<Vec<Vec<T>>>,
    /// The most entries a recent round held (decaying).
    recent_max: Cell<usize>,
}

impl<T> Default for SpareVecs<T> {
    fn default() -> Self {
        SpareVecs {
            spares: RefCell::new(Vec::new()),
            recent_max: Cell::new(0),
        }
    }
}

impl<T> SpareVecs<T> {
    /// Takes what `live` holds, leaving a spare (empty, with its capacity) in its place.
    pub fn swap_out(&self, live: &RefCell<Vec<T>>) -> Vec<T> {
        let spare = self.spares.borrow_mut().pop().unwrap_or_default();
        std::mem::replace(&mut *live.borrow_mut(), spare)
    }

    /// Takes back a vector its round is done with: emptied here, and kept if it is within
    /// [`MAX_KEPT_BYTES`], among the largest [`MAX_SPARES`], and at most 4× the most entries
    /// a recent round held. Rounds vary several-fold under load (a commit's batch is what
    /// arrived during the last sync), so a spare is sized for the recent largest, not the
    /// last; and what is kept follows the load down within a few dozen rounds.
    ///
    /// `used` is the most entries it held this round (its length before it was drained).
    pub fn give_back(&self, mut v: Vec<T>, used: usize) {
        let recent = self.recent_max.get();
        let recent = used.max(recent - recent / DECAY);
        self.recent_max.set(recent);
        v.clear();
        let mut spares = self.spares.borrow_mut();
        spares.retain(|s| s.capacity() / 4 <= recent);
        let cap = v.capacity();
        if cap == 0
            || cap / 4 > recent
            || cap.saturating_mul(std::mem::size_of::<T>().max(1)) > MAX_KEPT_BYTES
        {
            return;
        }
        if spares.len() == MAX_SPARES {
            // spares[0] has the smallest capacity.
            if spares[0].capacity() >= cap {
                return;
            }
            spares.remove(0);
        }
        let at = spares.partition_point(|s| s.capacity() < cap);
        spares.insert(at, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc_count::allocations;

    #[test]
    fn rounds_after_the_first_reuse_the_capacity_without_allocating() {
        let live = RefCell::new(Vec::<u64>::new());
        let spares = SpareVecs::default();
        // Rounds out at once, as with commits taken while earlier ones sync.
        let mut rounds = Vec::new();
        for _ in 0..4 {
            live.borrow_mut().extend(0..10_000u64);
            rounds.push(spares.swap_out(&live));
            if rounds.len() == 2 {
                let done = rounds.remove(0);
                spares.give_back(done, 10_000);
            }
        }
        let before = allocations();
        for round in 0..100u64 {
            for i in 0..10_000u64 {
                live.borrow_mut().push(round + i);
            }
            let taken = spares.swap_out(&live);
            assert_eq!(taken.len(), 10_000);
            assert_eq!(taken[9_999], round + 9_999);
            rounds.push(taken);
            let done = rounds.remove(0);
            spares.give_back(done, 10_000);
        }
        assert_eq!(allocations() - before, 0);
    }

    #[test]
    fn a_vector_handed_back_is_emptied_and_an_oversized_one_is_not_kept() {
        let spares = SpareVecs::default();
        let live = RefCell::new(Vec::<u8>::new());
        spares.give_back(vec![1u8; MAX_KEPT_BYTES + 1], MAX_KEPT_BYTES + 1);
        assert_eq!(spares.swap_out(&live).capacity(), 0);
        assert_eq!(
            live.borrow().capacity(),
            0,
            "the oversized one was not kept"
        );

        spares.give_back(vec![7u8; 100], 100);
        let fresh = spares.swap_out(&live);
        assert!(fresh.is_empty());
        assert!(live.borrow().is_empty(), "a spare is handed out empty");
        assert!(live.borrow().capacity() >= 100);
    }

    #[test]
    fn only_the_largest_spares_are_kept() {
        let spares = SpareVecs::<u32>::default();
        let lens = [10, 1_000, 100, 5, 2_000, 50, 20];
        for len in lens {
            spares.give_back(vec![0u32; len], len);
        }
        let caps: Vec<usize> = spares.spares.borrow().iter().map(Vec::capacity).collect();
        let mut largest = lens.to_vec();
        largest.sort_unstable();
        assert_eq!(
            caps,
            largest[lens.len() - MAX_SPARES..],
            "kept in capacity order"
        );
    }

    #[test]
    fn spares_follow_the_load_down_after_a_burst() {
        let spares = SpareVecs::<u64>::default();
        let round = |len: usize| {
            spares.give_back(Vec::<u64>::with_capacity(len), len);
        };
        round(100_000);
        round(100);
        assert_eq!(
            spares.spares.borrow().iter().map(Vec::capacity).max(),
            Some(100_000),
            "one quiet round right after the burst keeps the burst's size"
        );
        for _ in 0..200 {
            round(100);
        }
        let caps: Vec<usize> = spares.spares.borrow().iter().map(Vec::capacity).collect();
        assert!(caps.iter().all(|&c| c <= 400), "{caps:?}");
    }
}

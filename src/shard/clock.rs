//! The shard's clock, read once per batch of work.
//!
//! A 1:1 message read the clock eight to ten times on its way (stage stamps, the rate bucket,
//! the dedup window, the record's `sent_at_ms`, the ack's stamps): 6–8 % of the broker's CPU
//! at the p2p peak on a KVM guest (BENCHMARKS.md, "CPU per message"). Inside
//! [`Clock::batch`] — the frames of one wake-up's socket reads, one batch from the mesh, one
//! commit's completion — every reading is the one taken when the batch began (the wall clock
//! once, when first asked); outside a batch every call reads the clock. A batch lasts
//! microseconds: below what these readings serve (millisecond rate buckets, dedup windows and
//! timestamps; stage boundaries, which fall in different batches: a frame's read and its
//! commit, a push and its receipt on another shard). Readings that end a stage after work
//! inside the same batch (the Deliver written after the flush, an append's own cost) read the
//! clock afresh with [`fresh_ns`].

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

pub use crate::metrics::stages::now_ns as fresh_ns;

#[derive(Debug)]
pub struct Clock {
    /// [`fresh_ns`] when the shard started: `mono_ms` counts from here.
    epoch_ns: u64,
    /// The batch's monotonic reading; 0 outside a batch.
    batch_ns: Cell<u64>,
    /// The batch's wall-clock reading in ms, taken on first use; 0 = not taken yet.
    batch_wall_ms: Cell<u64>,
}

/// Restores the enclosing batch's readings (none, outside one) when a batch ends.
struct Restore<'a> {
    clock: &'a Clock,
    ns: u64,
    wall_ms: u64,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        self.clock.batch_ns.set(self.ns);
        self.clock.batch_wall_ms.set(self.wall_ms);
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            epoch_ns: fresh_ns(),
            batch_ns: Cell::new(0),
            batch_wall_ms: Cell::new(0),
        }
    }
}

impl Clock {
    /// Runs `f` with one reading of the clock for everything it asks. `f` is synchronous, so
    /// no other task of the shard runs (and reads a stale time) meanwhile.
    pub fn batch<R>(&self, f: impl FnOnce() -> R) -> R {
        let _restore = Restore {
            clock: self,
            ns: self.batch_ns.replace(fresh_ns()),
            wall_ms: self.batch_wall_ms.replace(0),
        };
        f()
    }

    /// Nanoseconds on the process-wide monotonic clock (the stage stamps' clock), never 0.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        match self.batch_ns.get() {
            0 => fresh_ns(),
            ns => ns,
        }
    }

    /// Monotonic milliseconds since the shard started.
    #[inline]
    pub fn mono_ms(&self) -> u64 {
        self.now_ns().saturating_sub(self.epoch_ns) / 1_000_000
    }

    /// Wall-clock milliseconds since the Unix epoch (what records and Deliver carry).
    #[inline]
    pub fn wall_ms(&self) -> u64 {
        if self.batch_ns.get() == 0 {
            return wall_ms_now();
        }
        match self.batch_wall_ms.get() {
            0 => {
                let ms = wall_ms_now();
                self.batch_wall_ms.set(ms);
                ms
            }
            ms => ms,
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch, read now.
pub fn wall_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_reads_the_clock_once_and_outside_one_every_call_reads_it() {
        let clock = Clock::default();
        let (a, b, wall_a, wall_b) = clock.batch(|| {
            let a = clock.now_ns();
            std::thread::sleep(std::time::Duration::from_millis(2));
            (a, clock.now_ns(), clock.wall_ms(), clock.wall_ms())
        });
        assert_eq!((a, wall_a), (b, wall_b), "one reading per batch");
        let c = clock.now_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let d = clock.now_ns();
        assert!(
            c > b && d >= c + 2_000_000,
            "fresh outside a batch: {b} {c} {d}"
        );
    }

    #[test]
    fn a_nested_batch_reads_again_and_hands_back_the_outer_reading() {
        let clock = Clock::default();
        clock.batch(|| {
            let outer = clock.now_ns();
            std::thread::sleep(std::time::Duration::from_millis(1));
            let inner = clock.batch(|| clock.now_ns());
            assert!(inner > outer);
            assert_eq!(clock.now_ns(), outer);
        });
    }

    #[test]
    fn mono_ms_counts_from_the_shard_start() {
        let clock = Clock::default();
        assert!(clock.mono_ms() < 1_000);
        std::thread::sleep(std::time::Duration::from_millis(3));
        assert!(clock.mono_ms() >= 3);
    }
}

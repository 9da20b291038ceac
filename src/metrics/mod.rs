//! Metrics: what each shard counts on its hot path, and the Prometheus exposition of it all.
//!
//! Every shard owns one [`ShardMetrics`]: counters and histograms made of atomics that only
//! that shard's thread ever writes, with a plain `store(load() + n)` (`Relaxed`): no locked
//! read-modify-write, no cache line written by two cores. On x86-64 such an increment compiles
//! to the same `mov`/`add`/`mov` as a `Cell<u64>`, so counting costs what a plain field would.
//! The admin thread holds an `Arc` of every shard's struct, reads them at scrape time and sums
//! them ([`exposition`]); a reading may be a few increments behind, never torn (64-bit atomics).
//!
//! Where a 1:1 message spends its time in the broker is stamped stage by stage ([`stages`]),
//! and so is a login ([`login_stages`]).
//!
//! Gauges that describe shard state (connections, parked connections, mesh queue depth, log
//! size) are not mirrored into atomics at every change: the scrape asks each shard for a
//! snapshot over the control channel (`shard::control`), which costs nothing between scrapes.
//!
//! The cargo feature `metrics-off` compiles every increment to nothing; it exists only for
//! the A/B measurement of what counting costs (BENCHMARKS.md).
//!
//! Each shard's thread installs its struct when it starts ([`install_local`]); the `Shard`
//! takes it from there ([`local`]), and the few places that count without a path to their
//! shard (a connection sending GoAway) reach it through [`with_local`].

pub mod exposition;
pub mod login_stages;
pub mod process;
pub mod stages;

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::protocol::Code;

/// A counter written by exactly one thread (its shard), read by any.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`. Single writer: a load and a store, no atomic read-modify-write.
    #[inline]
    pub fn add(&self, n: u64) {
        if cfg!(feature = "metrics-off") {
            return;
        }
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Codes per hundred that get their own slot (each range of the schema holds fewer).
const PER_HUNDRED: usize = 16;
/// Hundreds of the schema's code ranges (0xx … 5xx).
const HUNDREDS: usize = 6;
/// Slot for a code outside the ranges above.
const OTHER_SLOT: usize = HUNDREDS * PER_HUNDRED;

/// One counter per stable code (`schema/ringpost.fbs`), densely packed: 97 slots.
#[derive(Debug)]
pub struct CodeCounters([Counter; OTHER_SLOT + 1]);

impl Default for CodeCounters {
    fn default() -> Self {
        CodeCounters(std::array::from_fn(|_| Counter::default()))
    }
}

impl CodeCounters {
    fn slot(code: Code) -> usize {
        let (hundred, rest) = (code.0 as usize / 100, code.0 as usize % 100);
        if hundred < HUNDREDS && rest < PER_HUNDRED {
            hundred * PER_HUNDRED + rest
        } else {
            OTHER_SLOT
        }
    }

    #[inline]
    pub fn inc(&self, code: Code) {
        self.0[Self::slot(code)].inc();
    }

    #[inline]
    pub fn add(&self, code: Code, n: u64) {
        self.0[Self::slot(code)].add(n);
    }

    pub fn get(&self, code: Code) -> u64 {
        self.0[Self::slot(code)].get()
    }

    /// (code, count) for every slot; `None` is the slot of unknown codes.
    pub fn iter(&self) -> impl Iterator<Item = (Option<Code>, u64)> + '_ {
        self.0.iter().enumerate().map(|(slot, c)| {
            let code = (slot < OTHER_SLOT)
                .then(|| Code(((slot / PER_HUNDRED) * 100 + slot % PER_HUNDRED) as u16));
            (code, c.get())
        })
    }
}

/// A histogram written by one thread: a count per bucket (not cumulative; the exposition
/// accumulates), the sum and the count of observations, in integer units of the caller's.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds (inclusive), ascending, in the recorded unit.
    bounds: &'static [u64],
    /// `buckets[i]` counts observations in `(bounds[i-1], bounds[i]]`; the last is `+Inf`.
    buckets: Box<[Counter]>,
    sum: Counter,
    count: Counter,
}

impl Histogram {
    pub fn new(bounds: &'static [u64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| Counter::default()).collect(),
            sum: Counter::default(),
            count: Counter::default(),
        }
    }

    #[inline]
    pub fn observe(&self, v: u64) {
        self.observe_n(v, 1);
    }

    /// `n` observations of `v`.
    #[inline]
    pub fn observe_n(&self, v: u64, n: u64) {
        let i = self.bounds.partition_point(|&b| b < v);
        self.buckets[i].add(n);
        self.sum.add(v.wrapping_mul(n));
        self.count.add(n);
    }

    pub fn bounds(&self) -> &'static [u64] {
        self.bounds
    }

    /// Per-bucket counts (the last is `+Inf`), the sum and the count.
    pub fn read(&self) -> (Vec<u64>, u64, u64) {
        (
            self.buckets.iter().map(Counter::get).collect(),
            self.sum.get(),
            self.count.get(),
        )
    }
}

/// Bounds of `ringpost_log_sync_seconds`, in nanoseconds: 50 µs … 2.5 s.
pub const SYNC_NS_BOUNDS: &[u64] = &[
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
];

/// Bounds of `ringpost_commit_batch_size`, in messages per group commit.
pub const BATCH_BOUNDS: &[u64] = &[
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192,
];

/// What one shard counts. Written only by the shard's own thread.
#[derive(Debug)]
pub struct ShardMetrics {
    pub shard: usize,
    /// Login attempts accepted here, by outcome: `OK` or the code of the refusal.
    pub logins: CodeCounters,
    /// Connections that closed before sending a whole Login frame.
    pub logins_abandoned: Counter,
    /// Messages appended to an inbox owned by this shard.
    pub accepted: Counter,
    /// Deliver frames queued to devices of this shard (live and replay).
    pub delivered: Counter,
    /// Messages a login asked to be replayed: durable messages after the device's last seq.
    pub replayed: Counter,
    /// Sends refused, by the code in the SendAck (counted where the refusal is decided).
    pub send_rejected: CodeCounters,
    /// GoAway frames sent by this shard, by code.
    pub goaway: CodeCounters,
    /// Envelopes received over the mesh, by sending shard (`mesh_in[from]`).
    pub mesh_in: Box<[Counter]>,
    /// Group-commit syncs (msync of a batch), nanoseconds.
    pub log_sync: Histogram,
    /// Messages made durable per group commit.
    pub commit_batch: Histogram,
    /// Messages to groups this shard owns, stored with their group_seq.
    pub group_messages: Counter,
    /// Group entries (messages and membership events) appended to the streams of members
    /// this shard owns: the fan-out, one per member.
    pub group_member_entries: Counter,
    /// Per-stage latency of 1:1 messages ([`stages`]), nanoseconds.
    pub stages: stages::StageHistograms,
    /// Per-stage latency of the logins this shard owns ([`login_stages`]), nanoseconds.
    pub login_stages: login_stages::LoginHistograms,
}

impl ShardMetrics {
    pub fn new(shard: usize, shards: usize) -> ShardMetrics {
        ShardMetrics {
            shard,
            logins: CodeCounters::default(),
            logins_abandoned: Counter::default(),
            accepted: Counter::default(),
            delivered: Counter::default(),
            replayed: Counter::default(),
            send_rejected: CodeCounters::default(),
            goaway: CodeCounters::default(),
            mesh_in: (0..shards).map(|_| Counter::default()).collect(),
            log_sync: Histogram::new(SYNC_NS_BOUNDS),
            commit_batch: Histogram::new(BATCH_BOUNDS),
            group_messages: Counter::default(),
            group_member_entries: Counter::default(),
            stages: stages::StageHistograms::default(),
            login_stages: login_stages::LoginHistograms::default(),
        }
    }

    /// One fresh struct per shard.
    pub fn for_shards(shards: usize) -> Arc<[Arc<ShardMetrics>]> {
        (0..shards)
            .map(|i| Arc::new(ShardMetrics::new(i, shards)))
            .collect()
    }

    /// A batch of `n` envelopes arrived from shard `from`.
    #[inline]
    pub fn mesh_received(&self, from: usize, n: usize) {
        if let Some(c) = self.mesh_in.get(from) {
            c.add(n as u64);
        }
    }
}

/// Gauges a shard reports for one scrape, over the control channel (`shard::control`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardGauges {
    /// Logged-in connections, parked ones included.
    pub connections: usize,
    /// Of those, parked in the shard's epoll set.
    pub parked: usize,
    /// Envelopes waiting in the shard's outboxes to enter the mesh.
    pub mesh_queued: usize,
    /// Bytes of the shard's segment files.
    pub log_bytes: u64,
    /// Users the shard holds state for.
    pub users: usize,
    /// Groups the shard owns.
    pub groups: usize,
    /// Entries of owned groups that some member shard has not yet durably applied.
    pub group_fanout_pending: usize,
}

thread_local! {
    static LOCAL: RefCell<Option<Arc<ShardMetrics>>> = const { RefCell::new(None) };
}

/// Makes `m` the metrics of the calling thread (a shard's executor thread, at its start).
pub fn install_local(m: Arc<ShardMetrics>) {
    LOCAL.with(|l| *l.borrow_mut() = Some(m));
}

/// The calling thread's metrics ([`install_local`]), or a fresh, unshared set on a thread
/// without any.
pub fn local() -> Arc<ShardMetrics> {
    LOCAL
        .with(|l| l.borrow().clone())
        .unwrap_or_else(|| Arc::new(ShardMetrics::new(0, 1)))
}

/// Runs `f` on the calling shard's metrics; does nothing on a thread without any.
#[inline]
pub fn with_local(f: impl FnOnce(&ShardMetrics)) {
    LOCAL.with(|l| {
        if let Some(m) = l.borrow().as_deref() {
            f(m);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_slots_round_trip_and_unknown_codes_share_one() {
        let c = CodeCounters::default();
        for code in [Code::OK, Code::AUTH_FAILED, Code::KICKED, Code::INTERNAL] {
            c.inc(code);
            c.inc(code);
        }
        c.inc(Code(9999));
        c.inc(Code(150));
        for code in [Code::OK, Code::AUTH_FAILED, Code::KICKED, Code::INTERNAL] {
            assert_eq!(c.get(code), 2, "{code:?}");
        }
        let seen: Vec<(Option<Code>, u64)> = c.iter().filter(|&(_, n)| n > 0).collect();
        assert_eq!(
            seen,
            vec![
                (Some(Code::OK), 2),
                (Some(Code::AUTH_FAILED), 2),
                (Some(Code::KICKED), 2),
                (Some(Code::INTERNAL), 2),
                (None, 2),
            ]
        );
    }

    #[test]
    fn histogram_buckets_are_upper_inclusive() {
        let h = Histogram::new(&[1, 10, 100]);
        for v in [0, 1, 2, 10, 11, 100, 101, 5000] {
            h.observe(v);
        }
        let (buckets, sum, count) = h.read();
        assert_eq!(buckets, vec![2, 2, 2, 2]);
        assert_eq!(sum, 5225);
        assert_eq!(count, 8);
    }

    #[test]
    fn local_metrics_are_per_thread() {
        let m = Arc::new(ShardMetrics::new(0, 1));
        install_local(m.clone());
        with_local(|l| l.goaway.inc(Code::KICKED));
        std::thread::spawn(|| with_local(|l| l.goaway.inc(Code::KICKED)))
            .join()
            .unwrap();
        assert_eq!(m.goaway.get(Code::KICKED), 1);
    }
}

//! What `load p2p` is the same for over both transports: the schedule every generator thread
//! follows ([`Schedule`]) and a sender's walk through it ([`Shared::send_scheduled`], over a
//! transport's [`Sending`]), what a thread's tasks share ([`Shared`]: the counters, the latency
//! histogram, the checks' tallies), the wait for the tail ([`Shared::drain`]), and what a thread
//! reports ([`Outcome`], built once by [`Shared::outcome`]).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::super::verify::{self, count_lost, AckTally, DeviceStream, Ledger, Stamp, Tally};
use super::super::{new_histogram, Live};
use super::P2pArgs;

/// Sends queued back to back before a flush when the schedule has fallen behind.
const MAX_BATCH: u64 = 64;

/// The open-loop schedule, from the arguments: the same for every thread and transport.
#[derive(Clone, Copy)]
pub(super) struct Schedule {
    pub(super) threads: usize,
    /// Between two sends of one sender.
    pub(super) interval: Duration,
    /// Messages each sender sends (warm-up included).
    pub(super) per_sender: u64,
    pub(super) size: usize,
    pub(super) warmup_ns: u64,
    pub(super) drain_timeout: Duration,
}

impl Schedule {
    pub(super) fn of(args: &P2pArgs) -> Schedule {
        let interval = Duration::from_secs_f64(args.users as f64 / args.rate);
        let total = args.warmup + args.common.duration;
        Schedule {
            threads: args.common.thread_count().min(args.users / 2).max(1),
            interval,
            per_sender: (total.as_secs_f64() / interval.as_secs_f64())
                .floor()
                .max(1.0) as u64,
            size: args.size,
            warmup_ns: args.warmup.as_nanos() as u64,
            drain_timeout: args.drain_timeout,
        }
    }

    /// When message `k` (from 1) of a sender with this phase is due.
    pub(super) fn intended_at(&self, t0: Instant, phase: Duration, k: u64) -> Instant {
        t0 + phase + self.interval.mul_f64((k - 1) as f64)
    }
}

/// A sender's connection as [`Shared::send_scheduled`] drives it. `Err(())`: the connection
/// failed (the caller counts it).
pub(super) trait Sending {
    /// The longest sleep between two [`Sending::idle`] calls while the next send is not due.
    const TICK: Duration;
    /// While waiting for message `k`: what is due meanwhile (acks, keep-alive).
    async fn idle(&mut self, k: u64) -> Result<(), ()>;
    /// Before a batch of sends (the native side acks what is due, so every send carries it).
    fn before_batch(&mut self) {}
    /// Queues message `k` with its stamped body.
    async fn queue(&mut self, k: u64, body: &[u8]) -> Result<(), ()>;
    /// Writes what is queued.
    async fn flush(&mut self) -> Result<(), ()>;
}

/// What one generator thread saw, over either transport.
pub(super) struct Outcome {
    pub(super) written: u64,
    pub(super) acks: AckTally,
    pub(super) tally: Tally,
    pub(super) expected: u64,
    pub(super) measured: u64,
    pub(super) lost: u64,
    pub(super) unanswered: u64,
    /// Connections that failed during the run, cross-shard promises the broker broke.
    pub(super) conn_errors: u64,
    pub(super) devices: u64,
    pub(super) latency: Histogram<u64>,
    /// How late each measured send was handed to the kernel after its intended time (µs): the
    /// generator's own share of `latency`.
    pub(super) send_lag: Histogram<u64>,
    /// When the last measured message arrived, after the run's start.
    pub(super) last_measured: Duration,
    pub(super) login_failures: Vec<String>,
}

/// What a generator thread's tasks share (one thread, so cells, no locks).
pub(super) struct Shared {
    pub(super) t0: Instant,
    warmup_ns: u64,
    pub(super) live: Arc<Live>,
    hist: RefCell<Histogram<u64>>,
    send_lag: RefCell<Histogram<u64>>,
    pub(super) tally: RefCell<Tally>,
    pub(super) acks: RefCell<AckTally>,
    /// Sends written, over all users.
    written: Cell<u64>,
    /// Deliveries owed: for every message acked OK, one per device of its recipient.
    expected: Cell<u64>,
    /// Echoes owed under ringpost's own-send sync: for every message acked OK, one per device
    /// of its sender (always 0 over MQTT, which has none). The drain waits for them only once
    /// an echo was seen (own-send sync is a broker setting the tool does not know): an echo
    /// commits on the sender's shard, independently of the recipient's commit that answered
    /// the send, so it can trail the last SendAck.
    expected_echoes: Cell<u64>,
    measured: Cell<u64>,
    last_measured: Cell<Duration>,
    conn_errors: Cell<u64>,
    senders_done: Cell<usize>,
    /// Connections whose reader has ended (closed by the broker or failed).
    readers_closed: Cell<usize>,
    pub(super) stop: Cell<bool>,
}

impl Shared {
    /// Counting `conn_errors` already seen at login.
    pub(super) fn new(
        t0: Instant,
        sched: &Schedule,
        live: Arc<Live>,
        conn_errors: u64,
    ) -> Result<Rc<Shared>, String> {
        Ok(Rc::new(Shared {
            t0,
            warmup_ns: sched.warmup_ns,
            live,
            hist: RefCell::new(new_histogram()?),
            send_lag: RefCell::new(new_histogram()?),
            tally: RefCell::default(),
            acks: RefCell::default(),
            written: Cell::new(0),
            expected: Cell::new(0),
            expected_echoes: Cell::new(0),
            measured: Cell::new(0),
            last_measured: Cell::new(Duration::ZERO),
            conn_errors: Cell::new(conn_errors),
            senders_done: Cell::new(0),
            readers_closed: Cell::new(0),
            stop: Cell::new(false),
        }))
    }

    pub(super) fn conn_error(&self) {
        self.conn_errors.set(self.conn_errors.get() + 1);
        Live::add(&self.live.errors, 1);
    }

    /// The stamp of message `k`, due at `intended`, of the sender tagged `tag`.
    fn stamp(&self, intended: Instant, k: u64, tag: u64) -> Stamp {
        Stamp {
            intended_ns: (intended - self.t0).as_nanos() as u64,
            k,
            tag,
        }
    }

    /// `n` more sends queued: each owes an answer from now on.
    fn wrote(&self, n: u64) {
        self.written.set(self.written.get() + n);
        Live::add(&self.live.sent, n);
    }

    /// Sends `ks` were handed to the kernel just now: how late each is after its intended
    /// time (measured ones only, as for `latency`).
    fn record_send_lag(&self, sched: &Schedule, phase: Duration, ks: std::ops::Range<u64>) {
        let now = Instant::now();
        let mut lag = self.send_lag.borrow_mut();
        for k in ks {
            let intended = sched.intended_at(self.t0, phase, k);
            if (intended - self.t0).as_nanos() as u64 >= self.warmup_ns {
                let _ =
                    lag.record((now.saturating_duration_since(intended).as_micros() as u64).max(1));
            }
        }
    }

    pub(super) fn sender_done(&self) {
        self.senders_done.set(self.senders_done.get() + 1);
    }

    /// One sender's schedule: message `k` is due at [`Schedule::intended_at`]; until it is,
    /// the transport does its idle work; then every send whose time has come is queued (one
    /// when on schedule, a batch when behind: a scheduled send is never skipped) and flushed
    /// together. A send counts as written (and owes an answer) from the moment it is queued.
    /// Returns when every message is written or the connection failed.
    pub(super) async fn send_scheduled<S: Sending>(
        &self,
        sched: &Schedule,
        phase: Duration,
        tag: u64,
        ledger: &RefCell<Ledger>,
        conn: &mut S,
    ) {
        let mut body = vec![0u8; sched.size];
        let mut k = 1u64;
        'run: while k <= sched.per_sender {
            loop {
                let due = sched.intended_at(self.t0, phase, k);
                let wait = due.saturating_duration_since(Instant::now());
                if wait.is_zero() {
                    break;
                }
                glommio::timer::sleep(wait.min(S::TICK)).await;
                if conn.idle(k).await.is_err() {
                    self.conn_error();
                    break 'run;
                }
            }
            conn.before_batch();
            let first = k;
            while k <= sched.per_sender && k - first < MAX_BATCH {
                let intended = sched.intended_at(self.t0, phase, k);
                if k > first && intended > Instant::now() {
                    break;
                }
                verify::write_stamp(&mut body, self.stamp(intended, k, tag));
                if conn.queue(k, &body).await.is_err() {
                    self.conn_error();
                    break 'run;
                }
                ledger.borrow_mut().wrote(k);
                k += 1;
            }
            self.wrote(k - first);
            if conn.flush().await.is_err() {
                self.conn_error();
                break;
            }
            self.record_send_lag(sched, phase, first..k);
        }
        self.sender_done();
    }

    /// A send answered OK: it owes `deliveries` (the recipient's devices) and `echoes` (the
    /// sender's devices, under own-send sync).
    pub(super) fn acked_ok(&self, deliveries: u64, echoes: u64) {
        self.expected.set(self.expected.get() + deliveries);
        self.expected_echoes
            .set(self.expected_echoes.get() + echoes);
        Live::add(&self.live.acked, 1);
    }

    /// An answer to nothing this connection has in flight.
    pub(super) fn ack_mismatched(&self) {
        self.acks.borrow_mut().mismatched += 1;
        Live::add(&self.live.errors, 1);
    }

    /// A first delivery of a message, `received` at that instant: its latency from the stamp's
    /// intended time, when past the warm-up.
    pub(super) fn measure(&self, received: Instant, stamp: Stamp) {
        if stamp.intended_ns < self.warmup_ns {
            return;
        }
        let intended = self.t0 + Duration::from_nanos(stamp.intended_ns);
        let us = received.saturating_duration_since(intended).as_micros() as u64;
        let _ = self.hist.borrow_mut().record(us.max(1));
        self.measured.set(self.measured.get() + 1);
        self.last_measured
            .set(received.saturating_duration_since(self.t0));
    }

    /// A connection's reader ended; an error unless the run is over.
    pub(super) fn reader_ended(&self) {
        if !self.stop.get() {
            self.conn_error();
        }
        self.readers_closed.set(self.readers_closed.get() + 1);
    }

    /// Waits for the `senders` to finish, then for the tail (every send answered, every OK
    /// delivered to every device of its recipient, and once echoes are seen, its echo on every
    /// device of its sender) until `drain_timeout` passes without progress or all
    /// `connections` are closed; then stops the `tasks` and waits for them.
    pub(super) async fn drain(
        &self,
        tasks: Vec<glommio::Task<()>>,
        senders: usize,
        connections: usize,
        drain_timeout: Duration,
    ) {
        let mut last_progress = (Instant::now(), 0u64);
        let mut next_report = Instant::now() + Duration::from_millis(250);
        loop {
            glommio::timer::sleep(Duration::from_millis(20)).await;
            if Instant::now() >= next_report {
                next_report += Duration::from_millis(250);
                let p99 = self.hist.borrow().value_at_quantile(0.99);
                self.live.p99_us.store(p99, Ordering::Relaxed);
            }
            let answered = self.acks.borrow().answered();
            let (unique, delivered, echoes) = {
                let t = self.tally.borrow();
                // A copy passed over for the sending device stands in for its echo there.
                (t.unique, t.delivered, t.echoes + t.own_copies)
            };
            let senders_done = self.senders_done.get() == senders;
            let echoes_in = echoes == 0 || echoes >= self.expected_echoes.get();
            let done = senders_done
                && answered >= self.written.get()
                && unique >= self.expected.get()
                && echoes_in;
            // Nothing more can arrive once every connection is closed.
            let all_closed = self.readers_closed.get() == connections;
            if done || (senders_done && all_closed) {
                break;
            }
            let progress = answered + delivered + echoes;
            if progress != last_progress.1 {
                last_progress = (Instant::now(), progress);
            } else if senders_done && last_progress.0.elapsed() > drain_timeout {
                break;
            }
        }
        self.stop.set(true);
        for t in tasks {
            t.await;
        }
    }

    /// The thread's outcome, after [`Shared::drain`]. `users` gives, for each user, its ledger
    /// and the device streams of its partner: its sends acked OK must have reached every one
    /// (else lost).
    pub(super) fn outcome<'a>(
        &self,
        users: impl IntoIterator<Item = (&'a RefCell<Ledger>, Vec<&'a RefCell<DeviceStream>>)>,
        devices: usize,
        login_failures: Vec<String>,
    ) -> Outcome {
        let (mut lost, mut unanswered) = (0, 0);
        for (ledger, partner_streams) in users {
            let ledger = ledger.borrow();
            unanswered += ledger.unanswered();
            for stream in partner_streams {
                lost += count_lost(ledger.answers(), stream.borrow().seen());
            }
        }
        Outcome {
            written: self.written.get(),
            acks: self.acks.borrow().clone(),
            tally: self.tally.borrow().clone(),
            expected: self.expected.get(),
            measured: self.measured.get(),
            lost,
            unanswered,
            conn_errors: self.conn_errors.get(),
            devices: devices as u64,
            latency: self.hist.borrow().clone(),
            send_lag: self.send_lag.borrow().clone(),
            last_measured: self.last_measured.get(),
            login_failures,
        }
    }
}

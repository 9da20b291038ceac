//! What a generator thread shares between its tasks, and what the threads share: progress
//! counters, per-message fan-out slots, the outcome, the answers to sends.

use super::*;

/// Counters every generator thread reads to know when the run is over.
#[derive(Default)]
pub(super) struct Progress {
    pub(super) written: AtomicU64,
    pub(super) answered: AtomicU64,
    /// Deliveries owed to online members: for every OK, the group's online member count.
    pub(super) owed: AtomicU64,
    pub(super) unique: AtomicU64,
    pub(super) senders_done: AtomicUsize,
    pub(super) connections: AtomicUsize,
    pub(super) readers_closed: AtomicUsize,
}

impl Progress {
    pub(super) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::AcqRel);
    }

    pub(super) fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Acquire)
    }
}

/// One message's fan-out as one thread saw it.
#[derive(Clone, Copy, Default)]
pub(super) struct Slot {
    pub(super) intended_ns: u64,
    /// The latest delivery to an online member (ns after t0).
    pub(super) last_ns: u64,
    pub(super) deliveries: u32,
}

/// What one generator thread saw.
pub(super) struct Outcome {
    pub(super) acks: AckTally,
    pub(super) tally: Tally,
    pub(super) groups: GroupTally,
    pub(super) measured: u64,
    pub(super) conn_errors: u64,
    pub(super) latency: Histogram<u64>,
    pub(super) last_measured: Duration,
    pub(super) login_failures: Vec<String>,
    /// (sender, answers) of this thread's senders.
    pub(super) answers: Vec<(usize, Vec<Answer>)>,
    /// (user, seen per local sender) of this thread's members.
    pub(super) seen: Vec<(usize, Vec<Vec<bool>>)>,
    pub(super) slots: Vec<Slot>,
    pub(super) t0: Instant,
}

pub(super) struct Shared {
    pub(super) plan: Arc<Plan>,
    pub(super) progress: Arc<Progress>,
    pub(super) live: Arc<Live>,
    pub(super) t0: Instant,
    pub(super) warmup_ns: u64,
    pub(super) hist: RefCell<Histogram<u64>>,
    pub(super) tally: RefCell<Tally>,
    pub(super) groups: RefCell<GroupTally>,
    pub(super) acks: RefCell<AckTally>,
    pub(super) slots: RefCell<Vec<Slot>>,
    pub(super) measured: Cell<u64>,
    pub(super) last_measured: Cell<Duration>,
    pub(super) conn_errors: Cell<u64>,
    pub(super) record: Option<RefCell<std::fs::File>>,
    pub(super) record_errors: Cell<u64>,
    pub(super) stop: Cell<bool>,
    pub(super) ack_interval: Duration,
    /// Unique deliveries on this thread, and how many of them [`Progress`] has.
    pub(super) unique: Cell<u64>,
    pub(super) unique_published: Cell<u64>,
    /// Deliveries the progress line has from this thread.
    pub(super) delivered_published: Cell<u64>,
}

impl Shared {
    /// Adds this thread's new deliveries to the shared counters.
    pub(super) fn publish(&self) {
        let (now, before) = (self.unique.get(), self.unique_published.get());
        if now > before {
            Progress::add(&self.progress.unique, now - before);
            self.unique_published.set(now);
        }
        let delivered = self.tally.borrow().delivered;
        Live::add(
            &self.live.delivered,
            delivered - self.delivered_published.get(),
        );
        self.delivered_published.set(delivered);
    }

    pub(super) fn conn_error(&self) {
        self.conn_errors.set(self.conn_errors.get() + 1);
        Live::add(&self.live.errors, 1);
    }
}

pub(super) struct ThreadCfg {
    pub(super) via: Via,
    pub(super) plan: Arc<Plan>,
    pub(super) progress: Arc<Progress>,
    pub(super) live: Arc<Live>,
    pub(super) warmup_ns: u64,
    pub(super) drain_timeout: Duration,
    pub(super) ack_interval: Duration,
    pub(super) record: Option<std::fs::File>,
}

pub(super) fn on_ack(
    shared: &Shared,
    ledger: Option<&(usize, Rc<RefCell<Ledger>>)>,
    client_msg_id: u64,
    status: Code,
) {
    let Some((s, ledger)) = ledger else {
        shared.acks.borrow_mut().mismatched += 1; // this member sent nothing
        Live::add(&shared.live.errors, 1);
        return;
    };
    let outcome = ledger
        .borrow_mut()
        .on_ack(&mut shared.acks.borrow_mut(), client_msg_id, status);
    Progress::add(
        &shared.progress.answered,
        u64::from(outcome != AckOutcome::Ignored),
    );
    match outcome {
        AckOutcome::Ok => {
            let group = &shared.plan.groups[shared.plan.senders[*s].group];
            Progress::add(&shared.progress.owed, group.online_members);
            Live::add(&shared.live.acked, 1);
            if let Some(rec) = &shared.record {
                // Flushed per ack (one write of a whole line, O_APPEND): a broker crash must
                // leave a true record.
                let line = format!("{s} {client_msg_id}\n");
                if rec.borrow_mut().write_all(line.as_bytes()).is_err() {
                    shared.record_errors.set(shared.record_errors.get() + 1);
                }
            }
        }
        AckOutcome::Refused => Live::add(&shared.live.errors, 1),
        AckOutcome::Ignored => {}
    }
}

impl Shared {
    pub(super) fn new(cfg: &ThreadCfg, t0: Instant) -> Result<Shared, String> {
        Ok(Shared {
            plan: cfg.plan.clone(),
            progress: cfg.progress.clone(),
            live: cfg.live.clone(),
            t0,
            warmup_ns: cfg.warmup_ns,
            hist: RefCell::new(new_histogram()?),
            tally: RefCell::default(),
            groups: RefCell::default(),
            acks: RefCell::default(),
            slots: RefCell::new(vec![Slot::default(); cfg.plan.slots()]),
            measured: Cell::new(0),
            last_measured: Cell::new(Duration::ZERO),
            conn_errors: Cell::new(0),
            record: cfg
                .record
                .as_ref()
                .and_then(|f| f.try_clone().ok())
                .map(RefCell::new),
            record_errors: Cell::new(0),
            stop: Cell::new(false),
            ack_interval: cfg.ack_interval,
            unique: Cell::new(0),
            unique_published: Cell::new(0),
            delivered_published: Cell::new(0),
        })
    }

    /// A message seen for the first time by an online member: its fan-out slot and latency.
    pub(super) fn on_fresh(&self, sender: usize, stamp: Stamp, received: Instant) {
        self.unique.set(self.unique.get() + 1);
        let at = received.saturating_duration_since(self.t0);
        {
            let mut slots = self.slots.borrow_mut();
            let slot = &mut slots[self.plan.slot(sender, stamp.k)];
            slot.intended_ns = stamp.intended_ns;
            slot.last_ns = slot.last_ns.max(at.as_nanos() as u64);
            slot.deliveries += 1;
        }
        if stamp.intended_ns >= self.warmup_ns {
            let intended = self.t0 + Duration::from_nanos(stamp.intended_ns);
            let us = received.saturating_duration_since(intended).as_micros() as u64;
            let _ = self.hist.borrow_mut().record(us.max(1));
            self.measured.set(self.measured.get() + 1);
            self.last_measured.set(at);
        }
    }

    /// What this thread saw, once its tasks are done.
    pub(super) fn outcome(
        &self,
        members: &[Rc<Member>],
        ledgers: &HashMap<usize, Rc<RefCell<Ledger>>>,
        login_failures: Vec<String>,
    ) -> Outcome {
        let answers = ledgers
            .iter()
            .map(|(s, l)| (*s, l.borrow().answers().to_vec()))
            .collect();
        let seen = members
            .iter()
            .map(|m| {
                let v = m.seen.borrow().iter().map(|s| s.seen().to_vec()).collect();
                (m.user, v)
            })
            .collect();
        Outcome {
            acks: self.acks.borrow().clone(),
            tally: self.tally.borrow().clone(),
            groups: *self.groups.borrow(),
            measured: self.measured.get(),
            conn_errors: self.conn_errors.get() + self.record_errors.get(),
            latency: self.hist.borrow().clone(),
            last_measured: self.last_measured.get(),
            login_failures,
            answers,
            seen,
            slots: self.slots.borrow().clone(),
            t0: self.t0,
        }
    }
}

/// Waits for every thread's senders, then for the tail: every send answered, every OK
/// delivered to every online member; or until every connection is gone, or nothing moved for
/// `drain_timeout` after the sends. Then tells this thread's tasks to stop.
pub(super) async fn wait_for_tail(shared: &Shared, drain_timeout: Duration) {
    let p = &shared.progress;
    let mut last_progress = (Instant::now(), 0u64);
    let mut next_report = Instant::now() + Duration::from_millis(250);
    loop {
        glommio::timer::sleep(Duration::from_millis(20)).await;
        shared.publish();
        if Instant::now() >= next_report {
            next_report += Duration::from_millis(250);
            let p99 = shared.hist.borrow().value_at_quantile(0.99);
            shared.live.p99_us.store(p99, Ordering::Relaxed);
        }
        let senders_done = p.senders_done.load(Ordering::Acquire) == shared.plan.senders.len();
        let answered = Progress::get(&p.answered);
        let unique = Progress::get(&p.unique);
        let done = senders_done
            && answered >= Progress::get(&p.written)
            && unique >= Progress::get(&p.owed);
        let all_closed =
            p.readers_closed.load(Ordering::Acquire) >= p.connections.load(Ordering::Acquire);
        if done || (senders_done && all_closed) {
            break;
        }
        let moved = answered + shared.tally.borrow().delivered + unique;
        if moved != last_progress.1 {
            last_progress = (Instant::now(), moved);
        } else if senders_done && last_progress.0.elapsed() > drain_timeout {
            break;
        }
    }
    shared.stop.set(true);
}

//! What every thread and replay saw, summed, and the losses computed from it.

use super::*;

pub(super) struct Totals {
    pub(super) written: u64,
    pub(super) acks: AckTally,
    pub(super) tally: Tally,
    pub(super) groups: GroupTally,
    pub(super) measured: u64,
    pub(super) conn_errors: u64,
    pub(super) record_errors: u64,
    pub(super) unanswered: u64,
    pub(super) latency: Histogram<u64>,
    pub(super) fanout_complete: Histogram<u64>,
    pub(super) last_measured: Duration,
    pub(super) login_failures: Vec<String>,
    /// By sender.
    pub(super) answers: Vec<Vec<Answer>>,
    /// (user, seen per local sender) of every member verified.
    pub(super) seen: Vec<(usize, Vec<Vec<bool>>)>,
    pub(super) replayed: u64,
    pub(super) replay_elapsed: Duration,
    pub(super) replay_failures: Vec<String>,
}

impl Totals {
    pub(super) fn empty(senders: usize) -> Result<Totals, String> {
        Ok(Totals {
            written: 0,
            acks: AckTally::default(),
            tally: Tally::default(),
            groups: GroupTally::default(),
            measured: 0,
            conn_errors: 0,
            record_errors: 0,
            unanswered: 0,
            latency: new_histogram()?,
            fanout_complete: new_histogram()?,
            last_measured: Duration::ZERO,
            login_failures: Vec::new(),
            answers: vec![Vec::new(); senders],
            seen: Vec::new(),
            replayed: 0,
            replay_elapsed: Duration::ZERO,
            replay_failures: Vec::new(),
        })
    }

    pub(super) fn merge(
        plan: &Plan,
        outcomes: Vec<Outcome>,
        threads: usize,
        warmup_ns: u64,
    ) -> Result<Totals, String> {
        let mut t = Totals::empty(plan.senders.len())?;
        if outcomes.len() < threads {
            t.conn_errors += 1; // a generator thread failed
        }
        let mut slots = vec![Slot::default(); plan.slots()];
        let mut t0: Option<Instant> = None;
        for o in outcomes {
            t0 = Some(t0.map_or(o.t0, |x| x.min(o.t0)));
            t.acks.merge(&o.acks);
            t.tally.merge(&o.tally);
            t.groups.group_seq_gaps += o.groups.group_seq_gaps;
            t.measured += o.measured;
            t.conn_errors += o.conn_errors;
            let _ = t.latency.add(&o.latency);
            t.last_measured = t.last_measured.max(o.last_measured);
            t.login_failures.extend(o.login_failures);
            for (s, a) in o.answers {
                t.answers[s] = a;
            }
            t.seen.extend(o.seen);
            for (all, mine) in slots.iter_mut().zip(&o.slots) {
                all.intended_ns = all.intended_ns.max(mine.intended_ns);
                all.last_ns = all.last_ns.max(mine.last_ns);
                all.deliveries += mine.deliveries;
            }
        }
        for (s, sp) in plan.senders.iter().enumerate() {
            let written = plan.written[s].load(Ordering::Acquire);
            t.written += written;
            let answers = &t.answers[s];
            t.unanswered += answers
                .iter()
                .take(written as usize)
                .filter(|a| **a == Answer::None)
                .count() as u64;
            let online = plan.groups[sp.group].online_members;
            for k in 1..=written.min(answers.len() as u64) {
                let slot = slots[plan.slot(s, k)];
                let complete = slot.deliveries as u64 == online;
                if answers[k as usize - 1] == Answer::Ok
                    && complete
                    && slot.intended_ns >= warmup_ns
                {
                    let us = slot.last_ns.saturating_sub(slot.intended_ns) / 1000;
                    let _ = t.fanout_complete.record(us.max(1));
                }
            }
        }
        Ok(t)
    }

    pub(super) fn add_replay(&mut self, r: Replay) {
        self.replayed += r.tally.delivered;
        self.tally.merge(&r.tally);
        self.groups.group_seq_gaps += r.groups.group_seq_gaps;
        self.seen.extend(r.seen);
        self.replay_elapsed = r.elapsed;
        self.conn_errors += r.failures.len() as u64;
        self.replay_failures.extend(r.failures);
    }

    /// (expected deliveries, lost) over every member verified.
    pub(super) fn lost(&self, plan: &Plan) -> (u64, u64) {
        let (mut expected, mut lost) = (0, 0);
        for (user, seen) in &self.seen {
            let group = &plan.groups[plan.users[*user].group];
            for (local, &s) in group.senders.iter().enumerate() {
                let answers = &self.answers[s];
                expected += answers.iter().filter(|a| **a == Answer::Ok).count() as u64;
                if let Some(seen) = seen.get(local) {
                    lost += count_lost(answers, seen);
                }
            }
        }
        (expected, lost)
    }
}

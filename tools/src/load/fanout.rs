//! `load fanout`: G groups of M members; senders among the members send group messages at an
//! open-loop total rate; every member must get every message once, in group order.
//!
//! Set-up (before the timed phase, not measured): each group's creator (member 0) creates the
//! group with its members, in frames of `--create-chunk` names (a create, then adds), and waits
//! for each GroupReply{OK}. Users are `fan-<run>-g<g>-m<i>`, so they spread over the shards by
//! the user hash; members 0..K of each group send (`--senders K`, or `--sender-fraction`).
//! `--offline-fraction F` keeps that share of the other members offline during the sends; they
//! log in afterwards and replay their stream from the log.
//!
//! What is checked, per member (the sender too: its own message reaches it as a member,
//! `outgoing`), with the shared checks of [`verify`]:
//! - the stream: `seq` gap-free, nothing twice ([`DeviceStream::track_seq`]);
//! - the group order: every entry of the group (events and messages) has the `group_seq` one
//!   above the previous one this member saw (no membership change happens during the timed
//!   phase, so nothing may be skipped): a skip is a **group_seq_gap**, a step back
//!   **out_of_order**;
//! - each message: from one of the group's senders, in that group, `outgoing` exactly when the
//!   member sent it, its stamp intact and matching (`client_msg_id`, sender tag, a number the
//!   sender has written) ([`check_stamp`]), else **mismatched**; seen once ([`Seen`]);
//! - every message acked OK reached every member (else **lost**); every send answered
//!   (**unanswered**), with OK (**error_acks**).
//!
//! Latency is per delivery from the *intended* send time (the stamp), online members only;
//! `fanout_complete_us` is from the intended time to the delivery to the group's last online
//! member. With `--data-dir`, the broker's logs are read before and after the sends
//! ([`super::logbytes`]) for `log_bytes_per_message`.
//!
//! Crash tests: `--phase send --record FILE` records every SendAck{OK} as a flushed line (and,
//! at the end, how many messages each sender wrote); `--phase verify --record FILE` logs every
//! member in as a new device and checks that its stream replays every recorded message exactly
//! once, in group order.
//!
//! Exit status 1 on any loss, duplicate, reorder, gap, mismatch, unanswered send, error ack or
//! failed connection; 2 on bad arguments or a failed set-up.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;
use hdrhistogram::Histogram;
use ringpost::client::{Client, Delivery, Event, Reader, Writer};
use ringpost::protocol::{ClientMsg, Code, EntryKind, GroupOp, Names};
use serde_json::json;

use super::logbytes::{self, LogBytes};
use super::offline::Phase;
use super::verify::{
    self, check_stamp, count_lost, counts_text, AckOutcome, AckTally, Answer, Delivered,
    DeviceStream, Expect, Ledger, Seen, Stamp, Tally, STAMP,
};
use super::{
    counts_json, new_histogram, parse_duration, percentiles_json, pick_fraction, run_generators,
    CommonArgs, Endpoint, Live, StartLine, Tokens,
};

#[derive(clap::Args, Debug)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Groups.
    #[arg(long, default_value_t = 1)]
    pub groups: usize,
    /// Members per group (the creator included), at least 2.
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// Group messages per second, over all groups and senders (open loop).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Body size in bytes (at least 24: the stamp).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Senders per group (members 0..K).
    #[arg(long, default_value_t = 1)]
    pub senders: usize,
    /// Senders per group as a share of its members, in (0, 1] (overrides --senders; at least
    /// one).
    #[arg(long)]
    pub sender_fraction: Option<f64>,
    /// Share of the non-sending members that stay offline during the sends and replay their
    /// stream at login afterwards, in [0, 1).
    #[arg(long, default_value_t = 0.0)]
    pub offline_fraction: f64,
    /// Load before the measured period; its messages are checked but not measured.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Give up waiting for the tail after this long without progress.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    #[arg(long, value_enum, default_value_t = Phase::All)]
    pub phase: Phase,
    /// Record of acknowledged messages (written by --phase send, read by --phase verify).
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// The broker's `storage.data_dir`: read before and after the sends for
    /// `log_bytes_per_message`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The broker's shard count: reports where the groups and members live and the cross-shard
    /// envelopes each message needs (computed from the protocol, not observed).
    #[arg(long, default_value_t = 0)]
    pub shards: usize,
    /// Member names per GroupCreate/GroupAdd frame during set-up (frames are capped by the
    /// broker's max_frame).
    #[arg(long, default_value_t = 1000)]
    pub create_chunk: usize,
    /// How often a member acks what it received (each ack is a cursor record in the broker's
    /// log); a sender also acks with its next send once 100 entries are due.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub ack_interval: Duration,
    /// Replays run at once (offline members after the sends, every member in --phase verify).
    #[arg(long, default_value_t = 32)]
    pub replay_concurrency: usize,
}

// ---- the plan: who is in which group, who sends, who is offline ----------------------------

struct UserPlan {
    name: String,
    group: usize,
    /// Global sender index, for members that send.
    sender: Option<usize>,
    online: bool,
}

struct SenderPlan {
    user: usize,
    group: usize,
    /// Index among its group's senders.
    local: usize,
    tag: u64,
    /// First message slot of this sender ([`Plan::slot`]).
    first_slot: usize,
}

struct GroupPlan {
    id: String,
    /// Global user indices; member 0 creates the group.
    members: Vec<usize>,
    /// Global sender indices.
    senders: Vec<usize>,
    online_members: u64,
}

struct Plan {
    run_id: u32,
    groups: Vec<GroupPlan>,
    users: Vec<UserPlan>,
    senders: Vec<SenderPlan>,
    sender_by_name: HashMap<String, usize>,
    per_sender: u64,
    interval: Duration,
    size: usize,
    /// Highest message number each sender has written (read by every thread's checks).
    written: Vec<AtomicU64>,
}

impl Plan {
    fn new(
        run_id: u32,
        groups: usize,
        members: usize,
        senders: usize,
        offline: f64,
        per_sender: u64,
    ) -> Plan {
        let mut plan = Plan {
            run_id,
            groups: Vec::new(),
            users: Vec::new(),
            senders: Vec::new(),
            sender_by_name: HashMap::new(),
            per_sender,
            interval: Duration::ZERO,
            size: STAMP,
            written: Vec::new(),
        };
        for g in 0..groups {
            let quiet = members - senders;
            let offline = if offline > 0.0 {
                pick_fraction(quiet, offline, 0)
            } else {
                vec![false; quiet]
            };
            let mut gp = GroupPlan {
                id: format!("fan-{run_id:08x}-g{g}"),
                members: Vec::new(),
                senders: Vec::new(),
                online_members: 0,
            };
            for i in 0..members {
                let user = plan.users.len();
                let name = format!("fan-{run_id:08x}-g{g}-m{i}");
                let sender = (i < senders).then(|| {
                    let s = plan.senders.len();
                    plan.senders.push(SenderPlan {
                        user,
                        group: g,
                        local: i,
                        tag: verify::sender_tag(&name),
                        first_slot: s * per_sender as usize,
                    });
                    plan.sender_by_name.insert(name.clone(), s);
                    gp.senders.push(s);
                    s
                });
                let online = i < senders || !offline[i - senders];
                gp.online_members += u64::from(online);
                gp.members.push(user);
                plan.users.push(UserPlan {
                    name,
                    group: g,
                    sender,
                    online,
                });
            }
            plan.groups.push(gp);
        }
        plan.written = (0..plan.senders.len()).map(|_| AtomicU64::new(0)).collect();
        plan
    }

    fn slot(&self, sender: usize, k: u64) -> usize {
        self.senders[sender].first_slot + (k as usize - 1)
    }

    fn slots(&self) -> usize {
        self.senders.len() * self.per_sender as usize
    }
}

// ---- one member's view of its stream ----------------------------------------------------------

struct Member {
    user: usize,
    stream: RefCell<DeviceStream>,
    /// Per sender of the member's group (by local index): the messages seen.
    seen: RefCell<Vec<Seen>>,
    last_group_seq: Cell<u64>,
    /// Highest seq to ack, set by the reader, sent by the writer.
    ack_due: Cell<u64>,
}

impl Member {
    fn new(plan: &Plan, user: usize) -> Member {
        let senders = plan.groups[plan.users[user].group].senders.len();
        Member {
            user,
            stream: RefCell::new(DeviceStream::new(0)),
            seen: RefCell::new(
                (0..senders)
                    .map(|_| Seen::new(plan.per_sender as usize))
                    .collect(),
            ),
            last_group_seq: Cell::new(0),
            ack_due: Cell::new(0),
        }
    }
}

/// Counts the fan-out adds to the shared [`Tally`].
#[derive(Clone, Copy, Debug, Default)]
struct GroupTally {
    /// group_seqs a member's stream skipped over.
    group_seq_gaps: u64,
}

/// Checks one entry of `m`'s stream. Returns the sender and stamp of a message seen here for
/// the first time and verified.
fn check_entry(
    plan: &Plan,
    m: &Member,
    t: &mut Tally,
    g: &mut GroupTally,
    d: &Delivery,
) -> Option<(usize, Stamp)> {
    let message = d.kind == EntryKind::Message;
    if message {
        t.delivered += 1;
    }
    if !m.stream.borrow_mut().track_seq(t, d.seq) {
        return None;
    }
    m.ack_due.set(m.stream.borrow().last_seq());
    let group = &plan.groups[plan.users[m.user].group];
    if d.group_id != group.id {
        t.mismatched += 1;
        return None;
    }
    let last = m.last_group_seq.get();
    let late = last != 0 && d.group_seq <= last;
    if last != 0 && d.group_seq > last + 1 {
        g.group_seq_gaps += d.group_seq - last - 1;
    }
    m.last_group_seq.set(last.max(d.group_seq));
    if !message {
        if late {
            t.duplicated += 1; // a group event again, under a new seq
        } else {
            t.events += 1;
        }
        return None;
    }
    let sender = plan
        .sender_by_name
        .get(&d.from_user)
        .copied()
        .filter(|&s| plan.senders[s].group == plan.users[m.user].group);
    let Some(s) = sender else {
        t.mismatched += 1;
        return None;
    };
    let sp = &plan.senders[s];
    if d.outgoing != (sp.user == m.user) {
        t.mismatched += 1;
        return None;
    }
    let expect = Expect {
        from: &plan.users[sp.user].name,
        tag: sp.tag,
        written: plan.written[s].load(Ordering::Acquire),
    };
    let delivered = Delivered {
        seq: d.seq,
        from: &d.from_user,
        client_msg_id: d.client_msg_id,
        body: &d.body,
    };
    let Some(stamp) = check_stamp(&delivered, &expect) else {
        t.mismatched += 1;
        return None;
    };
    let before = t.out_of_order;
    if !m.seen.borrow_mut()[sp.local].see(t, stamp) {
        return None;
    }
    if late && t.out_of_order == before {
        t.out_of_order += 1; // behind the group's order (another sender's later message came first)
    }
    Some((s, stamp))
}

// ---- shared progress of the generator threads ------------------------------------------------

/// Counters every generator thread reads to know when the run is over.
#[derive(Default)]
struct Progress {
    written: AtomicU64,
    answered: AtomicU64,
    /// Deliveries owed to online members: for every OK, the group's online member count.
    owed: AtomicU64,
    unique: AtomicU64,
    senders_done: AtomicUsize,
    connections: AtomicUsize,
    readers_closed: AtomicUsize,
}

impl Progress {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::AcqRel);
    }

    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Acquire)
    }
}

/// One message's fan-out as one thread saw it.
#[derive(Clone, Copy, Default)]
struct Slot {
    intended_ns: u64,
    /// The latest delivery to an online member (ns after t0).
    last_ns: u64,
    deliveries: u32,
}

/// What one generator thread saw.
struct Outcome {
    acks: AckTally,
    tally: Tally,
    groups: GroupTally,
    measured: u64,
    conn_errors: u64,
    latency: Histogram<u64>,
    last_measured: Duration,
    login_failures: Vec<String>,
    /// (sender, answers) of this thread's senders.
    answers: Vec<(usize, Vec<Answer>)>,
    /// (user, seen per local sender) of this thread's members.
    seen: Vec<(usize, Vec<Vec<bool>>)>,
    slots: Vec<Slot>,
    t0: Instant,
}

struct Shared {
    plan: Arc<Plan>,
    progress: Arc<Progress>,
    live: Arc<Live>,
    t0: Instant,
    warmup_ns: u64,
    hist: RefCell<Histogram<u64>>,
    tally: RefCell<Tally>,
    groups: RefCell<GroupTally>,
    acks: RefCell<AckTally>,
    slots: RefCell<Vec<Slot>>,
    measured: Cell<u64>,
    last_measured: Cell<Duration>,
    conn_errors: Cell<u64>,
    record: Option<RefCell<std::fs::File>>,
    record_errors: Cell<u64>,
    stop: Cell<bool>,
    ack_interval: Duration,
    /// Unique deliveries on this thread, and how many of them [`Progress`] has.
    unique: Cell<u64>,
    unique_published: Cell<u64>,
    /// Deliveries the progress line has from this thread.
    delivered_published: Cell<u64>,
}

impl Shared {
    /// Adds this thread's new deliveries to the shared counters.
    fn publish(&self) {
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

    fn conn_error(&self) {
        self.conn_errors.set(self.conn_errors.get() + 1);
        Live::add(&self.live.errors, 1);
    }
}

// ---- the scenario ----------------------------------------------------------------------------

pub fn run(args: FanoutArgs) -> ExitCode {
    if let Err(e) = check_args(&args) {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    let tokens = match Tokens::load_or_exit(&args.common) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let senders = match args.sender_fraction {
        Some(f) => ((args.members as f64 * f).round() as usize).clamp(1, args.members),
        None => args.senders,
    };
    let total_senders = (args.groups * senders) as f64;
    let interval = Duration::from_secs_f64(total_senders / args.rate);
    let total = args.warmup + args.common.duration;
    let per_sender = (total.as_secs_f64() / interval.as_secs_f64())
        .floor()
        .max(1.0) as u64;
    if args.phase == Phase::Verify {
        return verify_phase(&args, &tokens);
    }
    let mut plan = Plan::new(
        rand::random(),
        args.groups,
        args.members,
        senders,
        args.offline_fraction,
        per_sender,
    );
    plan.interval = interval;
    plan.size = args.size;
    let plan = Arc::new(plan);
    let endpoint = args.common.endpoint();

    let record = match open_record(&args, &plan) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = on_executor(set_up_groups(&endpoint, &tokens, &plan, args.create_chunk)) {
        eprintln!("group set-up failed: {e}");
        return ExitCode::from(2);
    }
    let log_before = match measure_log(&args) {
        Ok(l) => l,
        Err(code) => return code,
    };

    let online: Vec<usize> = (0..plan.users.len())
        .filter(|&u| plan.users[u].online)
        .collect();
    let threads = args.common.thread_count().min(online.len()).max(1);
    let live = Arc::new(Live::default());
    let progress = Arc::new(Progress::default());
    let outcomes = run_generators("fanout", threads, &live, |t, start| {
        let mine: Vec<usize> = online.iter().copied().skip(t).step_by(threads).collect();
        let cfg = ThreadCfg {
            endpoint: endpoint.clone(),
            tokens: tokens.clone(),
            plan: plan.clone(),
            progress: progress.clone(),
            live: live.clone(),
            warmup_ns: args.warmup.as_nanos() as u64,
            drain_timeout: args.drain_timeout,
            ack_interval: args.ack_interval,
            record: record
                .as_ref()
                .and_then(|p| std::fs::OpenOptions::new().append(true).open(p).ok()),
        };
        move || async move { generator(cfg, mine, start).await }
    });
    let outcomes = match outcomes {
        Ok(o) => o,
        Err(code) => return code,
    };
    let log_after = match measure_log(&args) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let mut totals = match Totals::merge(&plan, outcomes, threads, args.warmup.as_nanos() as u64) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Some(path) = &record {
        if let Err(e) = write_trailer(path, &plan) {
            eprintln!("cannot finish the record: {e}");
            totals.record_errors += 1;
        }
    }
    // Offline members log in now and replay their streams.
    if args.phase == Phase::All {
        let offline: Vec<usize> = (0..plan.users.len())
            .filter(|&u| !plan.users[u].online)
            .collect();
        if !offline.is_empty() {
            let replay = on_executor(replay_members(
                &endpoint,
                &tokens,
                &plan,
                &offline,
                args.replay_concurrency,
            ));
            match replay {
                Ok(r) => totals.add_replay(r),
                Err(e) => {
                    eprintln!("replay failed: {e}");
                    totals.conn_errors += 1;
                }
            }
        }
    }
    let logs = log_before.zip(log_after).map(|(b, a)| b.growth(&a));
    report(&args, &plan, totals, logs)
}

fn check_args(args: &FanoutArgs) -> Result<(), String> {
    if args.groups == 0 || args.members < 2 {
        return Err("--groups must be at least 1 and --members at least 2".into());
    }
    if args.size < STAMP {
        return Err(format!("--size must be at least {STAMP} bytes (the stamp)"));
    }
    if args.rate <= 0.0 {
        return Err("--rate must be positive".into());
    }
    if args.senders == 0 || args.senders > args.members {
        return Err("--senders must be in 1..=--members".into());
    }
    if let Some(f) = args.sender_fraction {
        if !(f > 0.0 && f <= 1.0) {
            return Err("--sender-fraction must be in (0, 1]".into());
        }
    }
    if !(0.0..1.0).contains(&args.offline_fraction) {
        return Err("--offline-fraction must be in [0, 1)".into());
    }
    if args.phase != Phase::All && args.record.is_none() {
        return Err("--phase send/verify needs --record FILE".into());
    }
    if args.phase == Phase::Send && args.offline_fraction > 0.0 {
        return Err("--offline-fraction is for --phase all (verify replays every member)".into());
    }
    if args.create_chunk == 0 || args.replay_concurrency == 0 {
        return Err("--create-chunk and --replay-concurrency must be at least 1".into());
    }
    Ok(())
}

/// Runs `f` on a fresh glommio executor on this thread.
fn on_executor<T>(f: impl std::future::Future<Output = Result<T, String>>) -> Result<T, String> {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(256 * 1024)
        .make()
        .map_err(|e| format!("cannot start the event loop: {e}"))?
        .run(f)
}

fn measure_log(args: &FanoutArgs) -> Result<Option<LogBytes>, ExitCode> {
    match &args.data_dir {
        None => Ok(None),
        Some(dir) => logbytes::measure(dir).map(Some).map_err(|e| {
            eprintln!("--data-dir: {e}");
            ExitCode::from(2)
        }),
    }
}

/// Each creator creates its group, `chunk` members per frame, and waits for every OK.
async fn set_up_groups(
    endpoint: &Endpoint,
    tokens: &Tokens,
    plan: &Plan,
    chunk: usize,
) -> Result<(), String> {
    for g in &plan.groups {
        let creator = &plan.users[g.members[0]].name;
        let opts = endpoint.options(tokens.mint(creator)?, "load-admin");
        let mut c = Client::connect(&opts, 0)
            .await
            .map_err(|e| format!("{creator}: {e}"))?;
        let names: Vec<&str> = g.members[1..]
            .iter()
            .map(|&u| plan.users[u].name.as_str())
            .collect();
        let mut parts = names.chunks(chunk);
        let first = parts.next().unwrap_or(&[]);
        c.group_create(1, &g.id, first)
            .await
            .map_err(|e| e.to_string())?;
        await_reply(&mut c, 1, &g.id).await?;
        for (i, part) in parts.enumerate() {
            let id = i as u64 + 2;
            let op = GroupOp::Add {
                members: Names::Slice(part),
            };
            c.group_op(id, &g.id, op).await.map_err(|e| e.to_string())?;
            await_reply(&mut c, id, &g.id).await?;
        }
        let _ = c.logout().await;
    }
    Ok(())
}

async fn await_reply(c: &mut Client, request_id: u64, group: &str) -> Result<(), String> {
    loop {
        let event = future::or(async { Some(c.recv().await) }, async {
            glommio::timer::sleep(Duration::from_secs(30)).await;
            None
        })
        .await;
        match event {
            Some(Ok(Event::GroupReply(r))) if r.request_id == request_id => {
                return if r.status == Code::OK {
                    Ok(())
                } else {
                    Err(format!(
                        "{group}: {} ({})",
                        ringpost::protocol::code_name(r.status),
                        r.message
                    ))
                };
            }
            Some(Ok(_)) => {} // the group's own events in the creator's stream
            Some(Err(e)) => return Err(format!("{group}: {e}")),
            None => return Err(format!("{group}: no GroupReply within 30 s")),
        }
    }
}

// ---- the generator threads ---------------------------------------------------------------------

struct ThreadCfg {
    endpoint: Endpoint,
    tokens: Tokens,
    plan: Arc<Plan>,
    progress: Arc<Progress>,
    live: Arc<Live>,
    warmup_ns: u64,
    drain_timeout: Duration,
    ack_interval: Duration,
    record: Option<std::fs::File>,
}

/// Sends queued back to back before a flush when the schedule has fallen behind.
const MAX_BATCH: u64 = 64;

async fn generator(cfg: ThreadCfg, users: Vec<usize>, start: StartLine) -> Result<Outcome, String> {
    let plan = cfg.plan.clone();
    let mut clients = Vec::new();
    let mut login_failures = Vec::new();
    for &u in &users {
        let name = &plan.users[u].name;
        let opts = cfg.endpoint.options(cfg.tokens.mint(name)?, "load-d0");
        match Client::connect(&opts, 0).await {
            Ok(c) => clients.push((u, c)),
            Err(e) => login_failures.push(format!("{name}: {e}")),
        }
    }
    cfg.progress
        .connections
        .fetch_add(clients.len(), Ordering::AcqRel);
    let t0 = start.arrive();
    let shared = Rc::new(Shared {
        plan: plan.clone(),
        progress: cfg.progress.clone(),
        live: cfg.live.clone(),
        t0,
        warmup_ns: cfg.warmup_ns,
        hist: RefCell::new(new_histogram()?),
        tally: RefCell::default(),
        groups: RefCell::default(),
        acks: RefCell::default(),
        slots: RefCell::new(vec![Slot::default(); plan.slots()]),
        measured: Cell::new(0),
        last_measured: Cell::new(Duration::ZERO),
        conn_errors: Cell::new(0),
        record: cfg.record.map(RefCell::new),
        record_errors: Cell::new(0),
        stop: Cell::new(false),
        ack_interval: cfg.ack_interval,
        unique: Cell::new(0),
        unique_published: Cell::new(0),
        delivered_published: Cell::new(0),
    });
    let my_senders: Vec<usize> = clients
        .iter()
        .filter_map(|(u, _)| plan.users[*u].sender)
        .collect();
    let mut ledgers: HashMap<usize, Rc<RefCell<Ledger>>> = HashMap::new();
    let mut members = Vec::new();
    let mut tasks = Vec::new();
    for (u, client) in clients {
        let member = Rc::new(Member::new(&plan, u));
        members.push(member.clone());
        let keepalive =
            Duration::from_millis(u64::from(client.login_info().heartbeat_ms.max(200)) / 2);
        let (reader, writer) = client.split();
        let ledger = plan.users[u].sender.map(|s| {
            let l = Rc::new(RefCell::new(Ledger::new(plan.per_sender as usize)));
            ledgers.insert(s, l.clone());
            (s, l)
        });
        match &ledger {
            Some((s, l)) => {
                let phase = plan.interval.mul_f64(rand::random::<f64>());
                tasks.push(glommio::spawn_local(send_loop(
                    shared.clone(),
                    member.clone(),
                    *s,
                    l.clone(),
                    writer,
                    phase,
                    keepalive,
                )));
            }
            None => tasks.push(glommio::spawn_local(ack_loop(
                shared.clone(),
                member.clone(),
                writer,
                keepalive,
                0,
            ))),
        }
        glommio::spawn_local(receive_loop(shared.clone(), member, ledger, reader)).detach();
    }

    // Wait for every thread's senders, then for the tail: every send answered, every OK
    // delivered to every online member.
    let p = &cfg.progress;
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
        let senders_done = p.senders_done.load(Ordering::Acquire) == plan.senders.len();
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
        } else if senders_done && last_progress.0.elapsed() > cfg.drain_timeout {
            break;
        }
    }
    shared.stop.set(true);
    for t in tasks {
        t.await;
    }
    let answers = my_senders
        .iter()
        .filter_map(|s| ledgers.get(s).map(|l| (*s, l.borrow().answers().to_vec())))
        .collect();
    let seen = members
        .iter()
        .map(|m| {
            let v = m.seen.borrow().iter().map(|s| s.seen().to_vec()).collect();
            (m.user, v)
        })
        .collect();
    let outcome = Outcome {
        acks: shared.acks.borrow().clone(),
        tally: shared.tally.borrow().clone(),
        groups: *shared.groups.borrow(),
        measured: shared.measured.get(),
        conn_errors: shared.conn_errors.get() + shared.record_errors.get(),
        latency: shared.hist.borrow().clone(),
        last_measured: shared.last_measured.get(),
        login_failures,
        answers,
        seen,
        slots: shared.slots.borrow().clone(),
        t0,
    };
    Ok(outcome)
}

#[allow(clippy::too_many_arguments)]
async fn send_loop(
    shared: Rc<Shared>,
    me: Rc<Member>,
    sender: usize,
    ledger: Rc<RefCell<Ledger>>,
    mut writer: Writer,
    phase: Duration,
    keepalive: Duration,
) {
    let plan = shared.plan.clone();
    let group = &plan.groups[plan.senders[sender].group].id;
    let tag = plan.senders[sender].tag;
    let mut body = vec![0u8; plan.size];
    let mut acked_up_to = 0u64;
    let mut last_write = Instant::now();
    let mut last_ack = Instant::now();
    let intended_at = |k: u64| shared.t0 + phase + plan.interval.mul_f64((k - 1) as f64);
    let mut k = 1u64;
    'run: while k <= plan.per_sender {
        loop {
            let wait = intended_at(k).saturating_duration_since(Instant::now());
            if wait.is_zero() {
                break;
            }
            glommio::timer::sleep(wait.min(shared.ack_interval)).await;
            let due = me.ack_due.get();
            let ack = due > acked_up_to
                && (due - acked_up_to >= 100 || last_ack.elapsed() >= shared.ack_interval);
            let ping = last_write.elapsed() >= keepalive;
            if ack || ping {
                if ack {
                    last_ack = Instant::now();
                    writer.queue(&ClientMsg::Ack { up_to_seq: due });
                    acked_up_to = due;
                }
                if ping {
                    writer.queue(&ClientMsg::Ping { nonce: k });
                }
                if writer.flush().await.is_err() {
                    shared.conn_error();
                    break 'run;
                }
                last_write = Instant::now();
            }
        }
        let due = me.ack_due.get();
        if due > acked_up_to {
            writer.queue(&ClientMsg::Ack { up_to_seq: due });
            acked_up_to = due;
            last_ack = Instant::now();
        }
        let first = k;
        while k <= plan.per_sender && k - first < MAX_BATCH {
            let intended = intended_at(k);
            if k > first && intended > Instant::now() {
                break;
            }
            let stamp = Stamp {
                intended_ns: (intended - shared.t0).as_nanos() as u64,
                k,
                tag,
            };
            verify::write_stamp(&mut body, stamp);
            writer.queue(&ClientMsg::GroupSend {
                client_msg_id: k,
                group_id: group,
                body: &body,
            });
            ledger.borrow_mut().wrote(k);
            plan.written[sender].store(k, Ordering::Release);
            k += 1;
        }
        Progress::add(&shared.progress.written, k - first);
        Live::add(&shared.live.sent, k - first);
        if writer.flush().await.is_err() {
            shared.conn_error();
            break;
        }
        last_write = Instant::now();
    }
    shared.progress.senders_done.fetch_add(1, Ordering::AcqRel);
    ack_loop(shared, me, writer, keepalive, acked_up_to).await;
}

/// Acks what arrives (every 20 ms) and keeps the connection alive until the run is over.
async fn ack_loop(
    shared: Rc<Shared>,
    me: Rc<Member>,
    mut writer: Writer,
    keepalive: Duration,
    mut acked_up_to: u64,
) {
    let mut last_write = Instant::now();
    while !shared.stop.get() {
        glommio::timer::sleep(shared.ack_interval).await;
        let due = me.ack_due.get();
        if due > acked_up_to {
            if writer.ack(due).await.is_err() {
                break;
            }
            acked_up_to = due;
            last_write = Instant::now();
        } else if last_write.elapsed() >= keepalive {
            if writer.ping(0).await.is_err() {
                break;
            }
            last_write = Instant::now();
        }
    }
}

async fn receive_loop(
    shared: Rc<Shared>,
    me: Rc<Member>,
    ledger: Option<(usize, Rc<RefCell<Ledger>>)>,
    mut reader: Reader,
) {
    let plan = shared.plan.clone();
    loop {
        match reader.recv().await {
            Ok(Event::SendAck {
                client_msg_id,
                status,
            }) => on_ack(&shared, ledger.as_ref(), client_msg_id, status),
            Ok(Event::Deliver(d)) => {
                let received = Instant::now();
                let fresh = check_entry(
                    &plan,
                    &me,
                    &mut shared.tally.borrow_mut(),
                    &mut shared.groups.borrow_mut(),
                    &d,
                );
                let Some((s, stamp)) = fresh else { continue };
                // Counted here, published to the other threads by the waiting loop (one shared
                // write per 20 ms instead of one per delivery).
                shared.unique.set(shared.unique.get() + 1);
                let at = received.saturating_duration_since(shared.t0);
                {
                    let mut slots = shared.slots.borrow_mut();
                    let slot = &mut slots[plan.slot(s, stamp.k)];
                    slot.intended_ns = stamp.intended_ns;
                    slot.last_ns = slot.last_ns.max(at.as_nanos() as u64);
                    slot.deliveries += 1;
                }
                if stamp.intended_ns >= shared.warmup_ns {
                    let intended = shared.t0 + Duration::from_nanos(stamp.intended_ns);
                    let us = received.saturating_duration_since(intended).as_micros() as u64;
                    let _ = shared.hist.borrow_mut().record(us.max(1));
                    shared.measured.set(shared.measured.get() + 1);
                    shared.last_measured.set(at);
                }
            }
            Ok(Event::Pong { .. }) | Ok(Event::GroupReply(_)) => {}
            Ok(Event::GoAway { .. }) | Ok(Event::Error { .. }) | Err(_) => {
                if !shared.stop.get() {
                    shared.conn_error();
                }
                shared
                    .progress
                    .readers_closed
                    .fetch_add(1, Ordering::AcqRel);
                return;
            }
        }
    }
}

fn on_ack(
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

// ---- replays: offline members after the sends, and every member in --phase verify -----------

/// What replaying some members' streams found.
#[derive(Default)]
struct Replay {
    tally: Tally,
    groups: GroupTally,
    seen: Vec<(usize, Vec<Vec<bool>>)>,
    failures: Vec<String>,
    elapsed: Duration,
}

/// Logs each of `users` in as a new device (`concurrency` at a time) and reads its stream up
/// to the head its LoginOk announced.
async fn replay_members(
    endpoint: &Endpoint,
    tokens: &Tokens,
    plan: &Arc<Plan>,
    users: &[usize],
    concurrency: usize,
) -> Result<Replay, String> {
    let started = Instant::now();
    let mut out = Replay::default();
    let device = format!("replay-{:08x}", rand::random::<u32>());
    for batch in users.chunks(concurrency) {
        let tasks: Vec<_> = batch
            .iter()
            .map(|&u| {
                let (e, t, p, d) = (
                    endpoint.clone(),
                    tokens.clone(),
                    plan.clone(),
                    device.clone(),
                );
                glommio::spawn_local(async move { replay_one(&e, &t, &p, u, &d).await })
            })
            .collect();
        for task in tasks {
            match task.await {
                Ok((user, t, g, seen)) => {
                    out.tally.merge(&t);
                    out.groups.group_seq_gaps += g.group_seq_gaps;
                    out.seen.push((user, seen));
                }
                Err(e) => out.failures.push(e),
            }
        }
    }
    out.elapsed = started.elapsed();
    Ok(out)
}

type ReplayOne = (usize, Tally, GroupTally, Vec<Vec<bool>>);

async fn replay_one(
    endpoint: &Endpoint,
    tokens: &Tokens,
    plan: &Plan,
    user: usize,
    device: &str,
) -> Result<ReplayOne, String> {
    let name = &plan.users[user].name;
    let opts = endpoint.options(tokens.mint(name)?, device);
    let mut c = Client::connect(&opts, 0)
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    let head = c.login_info().head_seq;
    let m = Member::new(plan, user);
    let (mut t, mut g) = (Tally::default(), GroupTally::default());
    while m.stream.borrow().last_seq() < head {
        let event = future::or(async { Some(c.recv().await) }, async {
            glommio::timer::sleep(Duration::from_secs(10)).await;
            None
        })
        .await;
        match event {
            Some(Ok(Event::Deliver(d))) => {
                check_entry(plan, &m, &mut t, &mut g, &d);
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("{name}: {e}")),
            None => {
                return Err(format!(
                    "{name}: replay stalled at seq {} of {head}",
                    m.stream.borrow().last_seq()
                ))
            }
        }
    }
    let last = m.stream.borrow().last_seq();
    let _ = c.ack(last).await;
    let _ = c.logout().await;
    let seen = m.seen.borrow().iter().map(|s| s.seen().to_vec()).collect();
    Ok((user, t, g, seen))
}

// ---- the record (crash tests) ------------------------------------------------------------------

/// Writes the record's header; returns its path for the generator threads to append to.
fn open_record(args: &FanoutArgs, plan: &Plan) -> Result<Option<PathBuf>, String> {
    let Some(path) = args.record.as_ref().filter(|_| args.phase == Phase::Send) else {
        return Ok(None);
    };
    let senders = plan.groups[0].senders.len();
    let header = format!(
        "# ringpost fanout record run={:08x} groups={} members={} senders={senders} per_sender={} size={}\n",
        plan.run_id,
        plan.groups.len(),
        plan.groups[0].members.len(),
        plan.per_sender,
        plan.size,
    );
    std::fs::write(path, header).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(path.clone()))
}

/// After the sends: how far each sender wrote (`w <sender> <n>`), so verify knows which
/// numbers may legitimately arrive unrecorded (written, stored, the ack lost in a crash).
fn write_trailer(path: &std::path::Path, plan: &Plan) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    let mut text = String::new();
    for (s, w) in plan.written.iter().enumerate() {
        text += &format!("w {s} {}\n", w.load(Ordering::Acquire));
    }
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// The plan a record was written for, and what it says was acked.
fn read_record(path: &std::path::Path) -> Result<(Plan, Vec<Vec<Answer>>), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines = std::io::BufReader::new(file).lines();
    let header = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    let field = |key: &str| -> Result<u64, String> {
        header
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| {
                if key == "run=" {
                    u64::from_str_radix(v, 16).ok()
                } else {
                    v.parse().ok()
                }
            })
            .ok_or_else(|| format!("the record's header has no {key}: {header:?}"))
    };
    let mut plan = Plan::new(
        field("run=")? as u32,
        field("groups=")? as usize,
        field("members=")? as usize,
        field("senders=")? as usize,
        0.0,
        field("per_sender=")?,
    );
    plan.size = field("size=")? as usize;
    let mut answers = vec![vec![Answer::None; plan.per_sender as usize]; plan.senders.len()];
    let mut trailer = false;
    for line in lines.map_while(Result::ok) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
        // A line cut short by a crash of this tool itself is ignored; a broker crash cannot cut
        // one (each is written whole).
        match (words.first(), num(1), num(2)) {
            (Some(&"w"), Some(s), Some(n)) if (s as usize) < plan.senders.len() => {
                trailer = true;
                plan.written[s as usize].store(n, Ordering::Release);
            }
            (Some(_), _, _) => {
                if let (Some(s), Some(k)) = (num(0), num(1)) {
                    let slot = answers
                        .get_mut(s as usize)
                        .and_then(|a| a.get_mut((k as usize).wrapping_sub(1)));
                    if let Some(slot) = slot {
                        *slot = Answer::Ok;
                    }
                }
            }
            _ => {}
        }
    }
    if !trailer {
        // The send phase did not finish: a number up to per_sender may have been written.
        for w in &plan.written {
            w.store(plan.per_sender, Ordering::Release);
        }
    }
    Ok((plan, answers))
}

fn verify_phase(args: &FanoutArgs, tokens: &Tokens) -> ExitCode {
    let Some(path) = &args.record else {
        return ExitCode::from(2);
    };
    let (plan, answers) = match read_record(path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot read the record: {e}");
            return ExitCode::from(2);
        }
    };
    let plan = Arc::new(plan);
    let everyone: Vec<usize> = (0..plan.users.len()).collect();
    let endpoint = args.common.endpoint();
    let replay = on_executor(replay_members(
        &endpoint,
        tokens,
        &plan,
        &everyone,
        args.replay_concurrency,
    ));
    let replay = match replay {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut totals = match Totals::empty(plan.senders.len()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    for (s, a) in answers.into_iter().enumerate() {
        totals.acks.acked += a.iter().filter(|x| **x == Answer::Ok).count() as u64;
        totals.written += plan.written[s].load(Ordering::Acquire);
        totals.answers[s] = a;
    }
    totals.add_replay(replay);
    report(args, &plan, totals, None)
}

// ---- totals and the report ---------------------------------------------------------------------

struct Totals {
    written: u64,
    acks: AckTally,
    tally: Tally,
    groups: GroupTally,
    measured: u64,
    conn_errors: u64,
    record_errors: u64,
    unanswered: u64,
    latency: Histogram<u64>,
    fanout_complete: Histogram<u64>,
    last_measured: Duration,
    login_failures: Vec<String>,
    /// By sender.
    answers: Vec<Vec<Answer>>,
    /// (user, seen per local sender) of every member verified.
    seen: Vec<(usize, Vec<Vec<bool>>)>,
    replayed: u64,
    replay_elapsed: Duration,
    replay_failures: Vec<String>,
}

impl Totals {
    fn empty(senders: usize) -> Result<Totals, String> {
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

    fn merge(
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

    fn add_replay(&mut self, r: Replay) {
        self.replayed += r.tally.delivered;
        self.tally.merge(&r.tally);
        self.groups.group_seq_gaps += r.groups.group_seq_gaps;
        self.seen.extend(r.seen);
        self.replay_elapsed = r.elapsed;
        self.conn_errors += r.failures.len() as u64;
        self.replay_failures.extend(r.failures);
    }

    /// (expected deliveries, lost) over every member verified.
    fn lost(&self, plan: &Plan) -> (u64, u64) {
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

/// Where the groups and their members live, and the envelopes each message needs, computed
/// from the protocol: the send crosses to the group's owner shard (and its SendAck back) when
/// the sender lives elsewhere; after the commit, one Fanout envelope per other shard with
/// members (fewer when commits batch several messages), and one Applied back from each.
fn placement_json(plan: &Plan, shards: usize) -> serde_json::Value {
    if shards == 0 {
        return serde_json::Value::Null;
    }
    let groups: Vec<serde_json::Value> = plan
        .groups
        .iter()
        .map(|g| {
            let owner = ringpost::shard::group_owner(&g.id, shards);
            let mut per_shard = vec![0u64; shards];
            for &u in &g.members {
                per_shard[ringpost::shard::owner(&plan.users[u].name, shards)] += 1;
            }
            let destinations = per_shard
                .iter()
                .enumerate()
                .filter(|(s, n)| **n > 0 && *s != owner)
                .count();
            json!({
                "group": g.id, "owner_shard": owner, "members_per_shard": per_shard,
                "fanout_envelopes_per_commit": destinations,
            })
        })
        .collect();
    json!({ "shards": shards, "groups": groups })
}

fn report(args: &FanoutArgs, plan: &Plan, t: Totals, logs: Option<LogBytes>) -> ExitCode {
    let (expected, lost) = t.lost(plan);
    let mismatched = t.tally.mismatched + t.acks.mismatched;
    let error_acks = t.acks.error_acks_total();
    let errors = t.conn_errors + error_acks + mismatched + t.login_failures.len() as u64;
    let window = args
        .common
        .duration
        .max(t.last_measured.saturating_sub(args.warmup));
    let rate = t.measured as f64 / window.as_secs_f64().max(f64::EPSILON);
    let replay_rate = t.replayed as f64 / t.replay_elapsed.as_secs_f64().max(1e-9);
    let lat = percentiles_json(&t.latency);
    let fan = percentiles_json(&t.fanout_complete);
    let log_per_msg = logs
        .as_ref()
        .map(|l| ((l.total() as f64 / t.acks.acked.max(1) as f64) * 10.0).round() / 10.0);
    let online: u64 = plan.groups.iter().map(|g| g.online_members).sum();
    let phase = match args.phase {
        Phase::All => "all",
        Phase::Send => "send",
        Phase::Verify => "verify",
    };
    if args.common.json {
        println!(
            "{}",
            json!({
                "scenario": "fanout", "phase": phase,
                "sent": t.written, "acked": t.acks.acked,
                "expected_deliveries": expected, "delivered": t.tally.delivered,
                "unique_delivered": t.tally.unique,
                "lost": lost, "duplicated": t.tally.duplicated,
                "out_of_order": t.tally.out_of_order, "seq_gaps": t.tally.seq_gaps,
                "group_seq_gaps": t.groups.group_seq_gaps, "mismatched": mismatched,
                "unanswered": t.unanswered, "error_acks": counts_json(&t.acks.error_acks),
                "duplicate_acks": t.acks.duplicate_acks, "record_errors": t.record_errors,
                "errors": errors, "events": t.tally.events,
                "deliveries_per_s": (rate * 10.0).round() / 10.0,
                "latency_us": lat,
                "fanout_complete_us": fan,
                "log_bytes_per_message": log_per_msg,
                "log_bytes_per_message_by_kind": logs.as_ref().map(|l| l.per(t.acks.acked)),
                "replayed": t.replayed,
                "replay_deliveries_per_s": (replay_rate * 10.0).round() / 10.0,
                "groups": plan.groups.len(), "members": plan.groups[0].members.len(),
                "senders_per_group": plan.groups[0].senders.len(),
                "online_members": online,
                "offline_members": plan.users.len() as u64 - online,
                "placement": placement_json(plan, args.shards),
                "rate": args.rate, "size": plan.size,
                "duration_s": args.common.duration.as_secs_f64(),
                "warmup_s": args.warmup.as_secs_f64(),
            })
        );
    } else {
        println!(
            "scenario          fanout ({} groups × {} members, {} senders each, {} msg/s offered, {} B)",
            plan.groups.len(),
            plan.groups[0].members.len(),
            plan.groups[0].senders.len(),
            args.rate,
            plan.size
        );
        println!("sent / acked      {} / {}", t.written, t.acks.acked);
        println!(
            "delivered         {} ({} unique of {expected} owed to members; {} on replay)",
            t.tally.delivered, t.tally.unique, t.replayed
        );
        println!(
            "lost / dup / ooo  {lost} / {} / {}",
            t.tally.duplicated, t.tally.out_of_order
        );
        println!(
            "gaps              seq {} group_seq {}",
            t.tally.seq_gaps, t.groups.group_seq_gaps
        );
        println!("unanswered        {}", t.unanswered);
        println!(
            "error acks        {error_acks} ({})",
            counts_text(&t.acks.error_acks)
        );
        println!("mismatched        {mismatched}");
        println!("errors            {errors}");
        println!("deliveries        {rate:.0}/s (measured period)");
        println!(
            "latency µs        p50 {} p99 {} p99.9 {} max {}",
            lat["p50"], lat["p99"], lat["p999"], lat["max"]
        );
        println!(
            "fan-out done µs   p50 {} p99 {} (intended send → last online member)",
            fan["p50"], fan["p99"]
        );
        if let Some(b) = log_per_msg {
            println!("log bytes / msg   {b}");
        }
    }
    for f in t.replay_failures.iter().take(5) {
        eprintln!("replay failed: {f}");
    }
    if !t.login_failures.is_empty() {
        for f in t.login_failures.iter().take(5) {
            eprintln!("login failed: {f}");
        }
        return ExitCode::from(2);
    }
    let named = [
        ("lost", lost),
        ("duplicated", t.tally.duplicated),
        ("out_of_order", t.tally.out_of_order),
        ("seq_gaps", t.tally.seq_gaps),
        ("group_seq_gaps", t.groups.group_seq_gaps),
        ("mismatched", mismatched),
        ("unanswered", t.unanswered),
        ("error_acks", error_acks),
        ("connection_errors", t.conn_errors),
        ("record_errors", t.record_errors),
    ];
    let failed: Vec<String> = named
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !failed.is_empty() {
        eprintln!("FAILED: {}", failed.join(" "));
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

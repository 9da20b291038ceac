//! `load churn`: connections that keep disconnecting and reconnecting while messages flow.
//!
//! Users form pairs (2k and 2k+1) that send to each other on an open-loop schedule, as in
//! `load p2p`; a share of them (`--churn-fraction`) drops its connection every
//! `--churn-every` (±50 %) and comes back the way a real client does: the client library's
//! [`Backoff`], the same device ID (so the new login replaces the old session), and a resume
//! after the last seq it has processed. A drop is one of
//!
//! - **abrupt**: both halves of the socket are dropped (a phone losing its network);
//! - **logout**: `Logout` is sent and what still arrives is processed until the broker's
//!   GoAway{LOGGED_OUT}, then the socket is dropped;
//! - **replace**: the old connection stops being read but stays open while the new one logs
//!   in, so the broker replaces it (GoAway{SESSION_REPLACED} goes to the old socket, which is
//!   dropped without being read).
//!
//! Every message has a `client_msg_id` (its number in the sender's schedule). A send that was
//! not answered before a drop is sent again, with the same ID, first thing on the next
//! connection, so the broker's dedup window must keep it from being delivered twice. Sends
//! that fall due while a user is disconnected are sent on reconnect; their latency still counts
//! from the intended time (coordinated-omission correction).
//!
//! The receiving side processes every Deliver, acks it, and logs in again with
//! `last_seq` = the highest seq it processed. After `--duration` the churn stops, every user is
//! connected again, and the run waits until every send is answered and every acked message
//! delivered (or `--drain-timeout` passes without progress). Then it checks:
//!
//! - **lost**: acked OK, never delivered;
//! - **duplicated**: the same sender message (by its stamped number) delivered twice, or the
//!   same `Deliver.seq` delivered twice;
//! - **out of order**: a receiver's `Deliver.seq` not strictly increasing across its
//!   connections, or a sender's stamped numbers arriving out of order;
//! - **seq gaps**: a receiver's `Deliver.seq` skipping numbers (the inbox is gap-free).
//!
//! It also counts what matches nothing that was sent (**mismatched**: a wrong sender, a body
//! stamp that disagrees with the `client_msg_id`), and reports sends refused by code,
//! reconnect failures by code, unexpected disconnects by reason, and latency percentiles for
//! messages (from the intended send time), reconnects (drop → LoginOk, backoff included),
//! logins and logouts.
//!
//! Exit status: 0 when all of those checks are zero, messages flowed, reconnects happened, the
//! drain completed and no user gave up reconnecting; 1 otherwise; 2 on bad arguments or when
//! the first logins fail.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;
use hdrhistogram::Histogram;
use rand::seq::SliceRandom;
use rand::Rng;
use ringpost::client::{Backoff, Client, ClientError, ClientOptions, Event, Reader, Writer};
use ringpost::protocol::{code_name, ClientMsg, Code};
use serde_json::{json, Value};

use super::{
    new_histogram, parse_duration, percentiles_json, run_generators, CommonArgs, Live, StartLine,
    Tokens,
};

/// Bytes at the start of every body: intended send time (ns after the run's start), then the
/// sender's message number (= its `client_msg_id`), both u64 little-endian.
const STAMP: usize = 16;
/// Device ID every user logs in with, on every connection: a reconnect replaces the old session.
const DEVICE_ID: &str = "load-churn";
/// While waiting for the next send, deliveries are acked this often (or every 100 deliveries).
const ACK_EVERY: Duration = Duration::from_millis(50);
/// Sends queued back to back before a flush when the schedule has fallen behind.
const MAX_BATCH: u64 = 64;
/// How long a Logout may take to be answered (GoAway{LOGGED_OUT}) before the socket is
/// dropped anyway.
const LOGOUT_LIMIT: Duration = Duration::from_secs(2);
/// Seq gaps larger than this are counted but not remembered one by one.
const MAX_REMEMBERED_GAP: u64 = 100_000;

#[derive(clap::Args, Debug)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Users (connections); user 2k and 2k+1 send to each other. Even, at least 2.
    #[arg(long, default_value_t = 100)]
    pub users: usize,
    /// Total messages per second across all senders (open loop).
    #[arg(long, default_value_t = 2_000.0)]
    pub rate: f64,
    /// Body size in bytes (at least 16: the timestamp and sequence stamp).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Share of users whose connections keep dropping and reconnecting, in (0, 1] (at least
    /// one user churns).
    #[arg(long, default_value_t = 0.25)]
    pub churn_fraction: f64,
    /// Mean time a churning connection stays up before it drops; each uptime is drawn
    /// uniformly from 50 % to 150 % of it.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub churn_every: Duration,
    /// First delay of the reconnect backoff (doubles with jitter after each failed attempt).
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    pub backoff_initial: Duration,
    /// Largest reconnect backoff delay.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub backoff_max: Duration,
    /// How churning connections go away, picked uniformly from this list at each drop.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "abrupt,logout,replace"
    )]
    pub drops: Vec<DropMode>,
    /// Give up waiting for the tail after this long without progress.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

/// How a churning connection goes away.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropMode {
    /// Drop the socket.
    Abrupt,
    /// Logout, read until GoAway{LOGGED_OUT}, then drop.
    Logout,
    /// Stop reading, log in again (the broker replaces the session), then drop the old one.
    Replace,
}

impl DropMode {
    /// One of `modes` (a mask indexed by [`DropMode::index`]), uniformly.
    fn pick(modes: [bool; 3]) -> DropMode {
        let all = [DropMode::Abrupt, DropMode::Logout, DropMode::Replace];
        let allowed: Vec<DropMode> = all.into_iter().filter(|m| modes[m.index()]).collect();
        if allowed.is_empty() {
            return DropMode::Abrupt;
        }
        allowed[rand::rng().random_range(0..allowed.len())]
    }

    fn index(self) -> usize {
        match self {
            DropMode::Abrupt => 0,
            DropMode::Logout => 1,
            DropMode::Replace => 2,
        }
    }
}

/// Why one connection's run ended.
enum End {
    /// The run is over.
    Finish,
    /// Its uptime is over: drop it on purpose.
    Churn,
    /// The broker closed it or it failed (not on purpose): the reason, for the report.
    Lost(String),
}

#[derive(Clone, Copy)]
struct Cfg {
    interval: Duration,
    per_sender: u64,
    size: usize,
    churn_every: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
    drain_timeout: Duration,
    /// Allowed drop modes, indexed by [`DropMode::index`].
    drops: [bool; 3],
}

/// Send outcome of one message number.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    None,
    Ok,
    Refused,
}

/// One user: its sending schedule and answers, and what it received from its partner.
struct User {
    name: String,
    partner: String,
    opts: ClientOptions,
    churns: bool,
    /// Offset of this sender's schedule within one interval.
    phase: Duration,
    // --- sending ---
    /// Next message number to send for the first time (1-based; > per_sender when done).
    next_k: Cell<u64>,
    /// Numbers written on some connection and not answered yet: resent on the next one.
    unanswered: RefCell<BTreeSet<u64>>,
    /// `answers[k-1]`: how the send with number k was answered.
    answers: RefCell<Vec<Answer>>,
    // --- receiving ---
    /// Highest Deliver.seq processed (what a login resumes after, and what is acked).
    last_seq: Cell<u64>,
    /// Seqs skipped over by a gap, still expected (a late one is out of order, not a dup).
    missing: RefCell<BTreeSet<u64>>,
    /// `seen[k-1]`: the partner's message k was delivered here.
    seen: RefCell<Vec<bool>>,
    max_seen: Cell<u64>,
    // --- connection ---
    connected: Cell<bool>,
    gave_up: Cell<bool>,
}

/// Counters and histograms of one generator thread.
struct Shared {
    t0: Instant,
    live: Arc<Live>,
    latency: RefCell<Histogram<u64>>,
    reconnect_latency: RefCell<Histogram<u64>>,
    login_latency: RefCell<Histogram<u64>>,
    /// Logout sent → GoAway{LOGGED_OUT} read (what arrived in between processed).
    logout_latency: RefCell<Histogram<u64>>,
    sent: Cell<u64>,
    resent: Cell<u64>,
    acked: Cell<u64>,
    refused: RefCell<BTreeMap<String, u64>>,
    delivered: Cell<u64>,
    unique_delivered: Cell<u64>,
    duplicated: Cell<u64>,
    out_of_order: Cell<u64>,
    seq_gaps: Cell<u64>,
    /// Answers and deliveries that match nothing sent (wrong sender, a body stamp that
    /// disagrees with the `client_msg_id`, a number never sent).
    mismatched: Cell<u64>,
    duplicate_acks: Cell<u64>,
    reconnects: Cell<u64>,
    drops: [Cell<u64>; 3],
    reconnect_failures: RefCell<BTreeMap<String, u64>>,
    unexpected: RefCell<BTreeMap<String, u64>>,
    /// Churn has stopped: connections stay up (the tail is being drained).
    stop_churn: Cell<bool>,
    /// The run is over: every user task returns.
    finish: Cell<bool>,
}

impl Shared {
    fn new(t0: Instant, live: Arc<Live>) -> Result<Shared, String> {
        Ok(Shared {
            t0,
            live,
            latency: RefCell::new(new_histogram()?),
            reconnect_latency: RefCell::new(new_histogram()?),
            login_latency: RefCell::new(new_histogram()?),
            logout_latency: RefCell::new(new_histogram()?),
            sent: Cell::new(0),
            resent: Cell::new(0),
            acked: Cell::new(0),
            refused: RefCell::default(),
            delivered: Cell::new(0),
            unique_delivered: Cell::new(0),
            duplicated: Cell::new(0),
            out_of_order: Cell::new(0),
            seq_gaps: Cell::new(0),
            mismatched: Cell::new(0),
            duplicate_acks: Cell::new(0),
            reconnects: Cell::new(0),
            drops: Default::default(),
            reconnect_failures: RefCell::default(),
            unexpected: RefCell::default(),
            stop_churn: Cell::new(false),
            finish: Cell::new(false),
        })
    }

    fn mismatch(&self) {
        bump(&self.mismatched);
        Live::add(&self.live.errors, 1);
    }
}

fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

fn bump_key(map: &RefCell<BTreeMap<String, u64>>, key: String) {
    *map.borrow_mut().entry(key).or_default() += 1;
}

fn error_name(e: &ClientError) -> String {
    match e {
        ClientError::Io(_) => "IO".into(),
        ClientError::Rejected { code, .. } => code_name(*code).into(),
        ClientError::Protocol(_) => "PROTOCOL".into(),
        ClientError::Closed => "CLOSED".into(),
        ClientError::Timeout => "TIMEOUT".into(),
    }
}

/// What one generator thread saw (or, summed, all of them).
struct Outcome {
    sent: u64,
    resent: u64,
    acked: u64,
    refused: BTreeMap<String, u64>,
    delivered: u64,
    unique_delivered: u64,
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
    seq_gaps: u64,
    unanswered: u64,
    gave_up: u64,
    mismatched: u64,
    duplicate_acks: u64,
    reconnects: u64,
    drops: [u64; 3],
    reconnect_failures: BTreeMap<String, u64>,
    unexpected: BTreeMap<String, u64>,
    latency: Histogram<u64>,
    reconnect_latency: Histogram<u64>,
    login_latency: Histogram<u64>,
    logout_latency: Histogram<u64>,
    /// When the last message arrived, after the run's start.
    last_delivery: Duration,
    login_failures: Vec<String>,
}

impl Outcome {
    fn empty() -> Result<Outcome, String> {
        Ok(Outcome {
            sent: 0,
            resent: 0,
            acked: 0,
            refused: BTreeMap::new(),
            delivered: 0,
            unique_delivered: 0,
            lost: 0,
            duplicated: 0,
            out_of_order: 0,
            seq_gaps: 0,
            unanswered: 0,
            gave_up: 0,
            mismatched: 0,
            duplicate_acks: 0,
            reconnects: 0,
            drops: [0; 3],
            reconnect_failures: BTreeMap::new(),
            unexpected: BTreeMap::new(),
            latency: new_histogram()?,
            reconnect_latency: new_histogram()?,
            login_latency: new_histogram()?,
            logout_latency: new_histogram()?,
            last_delivery: Duration::ZERO,
            login_failures: Vec::new(),
        })
    }
}

pub fn run(args: ChurnArgs) -> ExitCode {
    if let Err(e) = check_args(&args) {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    let tokens = match Tokens::load_or_exit(&args.common) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let run_id: u32 = rand::random();
    let churners = churning_users(args.users, args.churn_fraction);
    let pairs: Vec<usize> = (0..args.users / 2).collect();
    let threads = args.common.thread_count().min(args.users / 2).max(1);
    let interval = Duration::from_secs_f64(args.users as f64 / args.rate);
    let per_sender = (args.common.duration.as_secs_f64() / interval.as_secs_f64())
        .floor()
        .max(1.0) as u64;
    let cfg = Cfg {
        interval,
        per_sender,
        size: args.size,
        churn_every: args.churn_every,
        backoff_initial: args.backoff_initial,
        backoff_max: args.backoff_max,
        drain_timeout: args.drain_timeout,
        drops: [DropMode::Abrupt, DropMode::Logout, DropMode::Replace]
            .map(|m| args.drops.contains(&m)),
    };
    let live = Arc::new(Live::default());
    let outcomes = run_generators("churn", threads, &live, |t, start| {
        let mut specs = Vec::new();
        for &k in pairs.iter().skip(t).step_by(threads) {
            let (a, b) = (2 * k, 2 * k + 1);
            let name = |i: usize| format!("churn-{run_id:08x}-{i}");
            specs.push((name(a), name(b), churners[a]));
            specs.push((name(b), name(a), churners[b]));
        }
        let (addr, tokens, live) = (args.common.endpoint(), tokens.clone(), live.clone());
        move || async move { generator(addr, tokens, specs, cfg, live, start).await }
    });
    let outcomes = match outcomes {
        Ok(o) => o,
        Err(code) => return code,
    };
    report(
        &args,
        churners.iter().filter(|c| **c).count(),
        outcomes,
        threads,
    )
}

fn check_args(args: &ChurnArgs) -> Result<(), String> {
    if args.users < 2 || !args.users.is_multiple_of(2) {
        return Err("--users must be an even number >= 2".into());
    }
    if args.size < STAMP {
        return Err(format!(
            "--size must be at least {STAMP} bytes (timestamp + sequence stamp)"
        ));
    }
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        return Err("--rate must be a positive number".into());
    }
    if !(args.churn_fraction > 0.0 && args.churn_fraction <= 1.0) {
        return Err(
            "--churn-fraction must be in (0, 1] (with nobody churning, use `load p2p`)".into(),
        );
    }
    if args.drops.is_empty() {
        return Err("--drops needs at least one of abrupt, logout, replace".into());
    }
    if args.churn_every.is_zero() {
        return Err("--churn-every must be more than 0".into());
    }
    if args.backoff_initial.is_zero() || args.backoff_max < args.backoff_initial {
        return Err("--backoff-initial must be > 0 and at most --backoff-max".into());
    }
    if args.common.duration.is_zero() {
        return Err("--duration must be more than 0".into());
    }
    Ok(())
}

/// Which users churn: `round(fraction × users)` of them (at least one), picked at random.
fn churning_users(users: usize, fraction: f64) -> Vec<bool> {
    let n = ((users as f64 * fraction).round() as usize).clamp(1, users);
    let mut order: Vec<usize> = (0..users).collect();
    order.shuffle(&mut rand::rng());
    let mut churns = vec![false; users];
    for &i in &order[..n] {
        churns[i] = true;
    }
    churns
}

async fn generator(
    addr: super::Endpoint,
    tokens: Tokens,
    specs: Vec<(String, String, bool)>,
    cfg: Cfg,
    live: Arc<Live>,
    start: StartLine,
) -> Result<Outcome, String> {
    // Log everyone in before the clock starts.
    let n = cfg.per_sender as usize;
    let mut users = Vec::new();
    let mut clients = Vec::new();
    let mut login_failures = Vec::new();
    for (me, partner, churns) in specs {
        // (A failure here is reported after the barrier: every thread must reach it.)
        let token = tokens.mint(&me).unwrap_or_else(|e| {
            login_failures.push(format!("{me}: cannot mint a token: {e}"));
            String::new()
        });
        let opts = addr.options(token, DEVICE_ID);
        match Client::connect(&opts, 0).await {
            Ok(c) => clients.push(Some(c)),
            Err(e) => {
                login_failures.push(format!("{me}: {e}"));
                clients.push(None);
            }
        }
        users.push(Rc::new(User {
            name: me,
            partner,
            opts,
            churns,
            phase: cfg.interval.mul_f64(rand::random::<f64>()),
            next_k: Cell::new(1),
            unanswered: RefCell::default(),
            answers: RefCell::new(vec![Answer::None; n]),
            last_seq: Cell::new(0),
            missing: RefCell::default(),
            seen: RefCell::new(vec![false; n]),
            max_seen: Cell::new(0),
            connected: Cell::new(false),
            gave_up: Cell::new(false),
        }));
    }
    let t0 = start.arrive();
    let shared = Rc::new(Shared::new(t0, live)?);

    let mut tasks = Vec::new();
    if login_failures.is_empty() {
        for (user, client) in users.iter().zip(clients) {
            if let Some(client) = client {
                tasks.push(glommio::spawn_local(user_task(
                    shared.clone(),
                    user.clone(),
                    client,
                    cfg,
                )));
            }
        }
    }

    // Run, then stop churning and drain: every send answered, every OK delivered.
    let end_of_schedule = t0 + cfg.interval.mul_f64(cfg.per_sender as f64);
    let mut last_progress = (Instant::now(), 0u64);
    let mut next_report = Instant::now() + Duration::from_millis(250);
    while !tasks.is_empty() {
        glommio::timer::sleep(Duration::from_millis(20)).await;
        let now = Instant::now();
        if now >= next_report {
            next_report += Duration::from_millis(250);
            let p99 = shared.latency.borrow().value_at_quantile(0.99);
            shared.live.p99_us.store(p99, Ordering::Relaxed);
        }
        if now < end_of_schedule {
            continue;
        }
        shared.stop_churn.set(true);
        // Senders that fell behind (a reconnect took long) still send the rest of their schedule.
        let generated = users
            .iter()
            .all(|u| u.next_k.get() > cfg.per_sender || u.gave_up.get());
        let all_up = users.iter().all(|u| u.connected.get() || u.gave_up.get());
        let unanswered: usize = users.iter().map(|u| u.unanswered.borrow().len()).sum();
        // Once every send is answered, a delivered message is one acked OK (the broker only
        // delivers what it accepted), so equal counts mean every acked message arrived.
        if generated
            && all_up
            && unanswered == 0
            && shared.unique_delivered.get() >= shared.acked.get()
        {
            break;
        }
        let progress = shared.acked.get()
            + refused_total(&shared.refused.borrow())
            + shared.delivered.get()
            + shared.reconnects.get();
        if progress != last_progress.1 {
            last_progress = (now, progress);
        } else if last_progress.0.elapsed() > cfg.drain_timeout {
            break;
        }
    }
    shared.finish.set(true);
    let mut last_delivery = Duration::ZERO;
    for t in tasks {
        last_delivery = last_delivery.max(t.await);
    }

    // Verify every stream: user i's sends are received by its partner (i ^ 1).
    let mut lost = 0u64;
    for (i, u) in users.iter().enumerate() {
        let Some(partner) = users.get(i ^ 1) else {
            continue;
        };
        lost += count_lost(&u.answers.borrow(), &partner.seen.borrow());
    }
    let unanswered = users
        .iter()
        .map(|u| u.unanswered.borrow().len() as u64)
        .sum();
    let gave_up = users.iter().filter(|u| u.gave_up.get()).count() as u64;
    let drops = [0, 1, 2].map(|i| shared.drops[i].get());
    let outcome = Outcome {
        sent: shared.sent.get(),
        resent: shared.resent.get(),
        acked: shared.acked.get(),
        refused: shared.refused.borrow().clone(),
        delivered: shared.delivered.get(),
        unique_delivered: shared.unique_delivered.get(),
        lost,
        duplicated: shared.duplicated.get(),
        out_of_order: shared.out_of_order.get(),
        seq_gaps: shared.seq_gaps.get(),
        unanswered,
        gave_up,
        mismatched: shared.mismatched.get(),
        duplicate_acks: shared.duplicate_acks.get(),
        reconnects: shared.reconnects.get(),
        drops,
        reconnect_failures: shared.reconnect_failures.borrow().clone(),
        unexpected: shared.unexpected.borrow().clone(),
        latency: shared.latency.borrow().clone(),
        reconnect_latency: shared.reconnect_latency.borrow().clone(),
        login_latency: shared.login_latency.borrow().clone(),
        logout_latency: shared.logout_latency.borrow().clone(),
        last_delivery,
        login_failures,
    };
    Ok(outcome)
}

fn refused_total(m: &BTreeMap<String, u64>) -> u64 {
    m.values().sum()
}

/// Messages answered OK that the partner never saw.
fn count_lost(answers: &[Answer], partner_seen: &[bool]) -> u64 {
    answers
        .iter()
        .zip(partner_seen)
        .filter(|(a, s)| **a == Answer::Ok && !**s)
        .count() as u64
}

/// One user for the whole run: connection after connection until the run is over. Returns when
/// its last message arrived (after the run's start).
async fn user_task(shared: Rc<Shared>, me: Rc<User>, first: Client, cfg: Cfg) -> Duration {
    let mut backoff = Backoff::new(cfg.backoff_initial, cfg.backoff_max);
    let mut client = first;
    let mut last_delivery = Duration::ZERO;
    loop {
        let keepalive =
            Duration::from_millis(u64::from(client.login_info().heartbeat_ms.max(200)) / 2);
        let (mut reader, mut writer) = client.split();
        me.connected.set(true);
        let drop_at = me
            .churns
            .then(|| Instant::now() + cfg.churn_every.mul_f64(rand::rng().random_range(0.5..1.5)));
        let end = future::or(
            future::or(
                read_loop(&shared, &me, &mut reader, &mut last_delivery),
                write_loop(&shared, &me, &mut writer, &cfg, keepalive),
            ),
            control(&shared, drop_at),
        )
        .await;
        me.connected.set(false);
        // Dropped here, except with DropMode::Replace: then the old connection stays open
        // (unread) until the new login has replaced it.
        let mut old = Some((reader, writer));
        match end {
            End::Finish => return last_delivery,
            End::Churn => {
                let mode = DropMode::pick(cfg.drops);
                bump(&shared.drops[mode.index()]);
                match mode {
                    DropMode::Abrupt => old = None,
                    DropMode::Logout => {
                        if let Some((reader, writer)) = old.as_mut() {
                            let answer =
                                log_out(&shared, &me, reader, writer, &mut last_delivery).await;
                            if let Some(reason) = answer {
                                bump_key(&shared.unexpected, reason);
                                Live::add(&shared.live.errors, 1);
                            }
                        }
                        old = None;
                    }
                    DropMode::Replace => {}
                }
            }
            End::Lost(reason) => {
                old = None;
                bump_key(&shared.unexpected, reason);
                Live::add(&shared.live.errors, 1);
            }
        }
        // The client's reconnect: backoff (with jitter) before each attempt, resume after the
        // last seq processed, give up on a permanent refusal. Reconnect latency counts from
        // here (the old connection is gone, or unread with DropMode::Replace) to LoginOk.
        let down_at = Instant::now();
        client = loop {
            if shared.finish.get() {
                return last_delivery;
            }
            glommio::timer::sleep(backoff.next_delay()).await;
            let attempt = Instant::now();
            match Client::connect(&me.opts, me.last_seq.get()).await {
                Ok(c) => {
                    let now = Instant::now();
                    record_us(&shared.reconnect_latency, now - down_at);
                    record_us(&shared.login_latency, now - attempt);
                    bump(&shared.reconnects);
                    backoff.reset();
                    break c;
                }
                Err(e) => {
                    bump_key(&shared.reconnect_failures, error_name(&e));
                    Live::add(&shared.live.errors, 1);
                    if !e.is_transient() {
                        eprintln!("{}: gave up reconnecting: {e}", me.name);
                        me.gave_up.set(true);
                        return last_delivery;
                    }
                }
            }
        };
        drop(old);
    }
}

fn record_us(h: &RefCell<Histogram<u64>>, d: Duration) {
    let _ = h.borrow_mut().record((d.as_micros() as u64).max(1));
}

/// Ends the connection when the run is over or its uptime is (and churn has not stopped).
async fn control(shared: &Shared, drop_at: Option<Instant>) -> End {
    loop {
        let now = Instant::now();
        let wait = drop_at.map_or(Duration::from_millis(50), |at| {
            at.saturating_duration_since(now)
                .clamp(Duration::from_millis(1), Duration::from_millis(50))
        });
        glommio::timer::sleep(wait).await;
        if shared.finish.get() {
            return End::Finish;
        }
        if let Some(at) = drop_at {
            if !shared.stop_churn.get() && Instant::now() >= at {
                return End::Churn;
            }
        }
    }
}

/// When message `k` of `me` is due, after the run's start.
fn intended_offset(me: &User, cfg: &Cfg, k: u64) -> Duration {
    me.phase + cfg.interval.mul_f64(k.saturating_sub(1) as f64)
}

fn stamp_body(body: &mut [u8], me: &User, cfg: &Cfg, k: u64) {
    let intended = intended_offset(me, cfg, k).as_nanos() as u64;
    body[..8].copy_from_slice(&intended.to_le_bytes());
    body[8..STAMP].copy_from_slice(&k.to_le_bytes());
}

/// Sends on one connection: first everything unanswered from earlier connections (same
/// `client_msg_id`), then the schedule; acks what the reader processed; keeps the connection
/// alive. Returns only when a write fails.
async fn write_loop(
    shared: &Shared,
    me: &User,
    writer: &mut Writer,
    cfg: &Cfg,
    keepalive: Duration,
) -> End {
    let mut body = vec![0u8; cfg.size];
    let resend: Vec<u64> = me.unanswered.borrow().iter().copied().collect();
    for &k in &resend {
        stamp_body(&mut body, me, cfg, k);
        writer.queue(&ClientMsg::Send {
            client_msg_id: k,
            to_user: &me.partner,
            body: &body,
        });
    }
    shared.resent.set(shared.resent.get() + resend.len() as u64);
    // The login told the broker what this device has processed.
    let mut acked_up_to = me.last_seq.get();
    if writer.flush().await.is_err() {
        return End::Lost("WRITE_FAILED".into());
    }
    let mut last_write = Instant::now();
    let mut last_ack = Instant::now();
    loop {
        // Until the next send is due (forever once the schedule is done): ack what arrived
        // (every ACK_EVERY or 100 deliveries) and ping when the schedule is sparse.
        loop {
            let k = me.next_k.get();
            let wait = if k <= cfg.per_sender {
                (shared.t0 + intended_offset(me, cfg, k)).saturating_duration_since(Instant::now())
            } else {
                ACK_EVERY
            };
            if k <= cfg.per_sender && wait.is_zero() {
                break;
            }
            glommio::timer::sleep(wait.min(ACK_EVERY)).await;
            let due = me.last_seq.get();
            let ack =
                due > acked_up_to && (due - acked_up_to >= 100 || last_ack.elapsed() >= ACK_EVERY);
            let ping = last_write.elapsed() >= keepalive;
            if ack || ping {
                if ack {
                    writer.queue(&ClientMsg::Ack { up_to_seq: due });
                    acked_up_to = due;
                    last_ack = Instant::now();
                }
                if ping {
                    writer.queue(&ClientMsg::Ping { nonce: 0 });
                }
                if writer.flush().await.is_err() {
                    return End::Lost("WRITE_FAILED".into());
                }
                last_write = Instant::now();
            }
        }
        let due = me.last_seq.get();
        if due > acked_up_to {
            writer.queue(&ClientMsg::Ack { up_to_seq: due });
            acked_up_to = due;
            last_ack = Instant::now();
        }
        // Every send whose time has come (a batch when behind, e.g. after a reconnect: a
        // scheduled send is never skipped), flushed together. A number counts as written (and
        // is resent after a drop) from the moment it is queued.
        let first = me.next_k.get();
        let mut k = first;
        while k <= cfg.per_sender && k - first < MAX_BATCH {
            if k > first && shared.t0 + intended_offset(me, cfg, k) > Instant::now() {
                break;
            }
            stamp_body(&mut body, me, cfg, k);
            writer.queue(&ClientMsg::Send {
                client_msg_id: k,
                to_user: &me.partner,
                body: &body,
            });
            me.unanswered.borrow_mut().insert(k);
            k += 1;
        }
        me.next_k.set(k);
        shared.sent.set(shared.sent.get() + (k - first));
        Live::add(&shared.live.sent, k - first);
        if writer.flush().await.is_err() {
            return End::Lost("WRITE_FAILED".into());
        }
        last_write = Instant::now();
    }
}

/// Reads one connection until it ends: SendAcks settle sends, Delivers are checked and
/// recorded as processed.
async fn read_loop(
    shared: &Shared,
    me: &User,
    reader: &mut Reader,
    last_delivery: &mut Duration,
) -> End {
    loop {
        let event = reader.recv().await;
        if let Some(reason) = on_event(shared, me, event, last_delivery) {
            return End::Lost(reason);
        }
    }
}

/// Handles one thing read from the broker; `Some(reason)` when the connection is over.
fn on_event(
    shared: &Shared,
    me: &User,
    event: Result<Event, ClientError>,
    last_delivery: &mut Duration,
) -> Option<String> {
    match event {
        Ok(Event::SendAck {
            client_msg_id,
            status,
        }) => on_send_ack(shared, me, client_msg_id, status),
        Ok(Event::Deliver(d)) => {
            let received = Instant::now();
            *last_delivery = received.saturating_duration_since(shared.t0);
            on_deliver(
                shared,
                me,
                d.seq,
                &d.from_user,
                d.client_msg_id,
                &d.body,
                received,
            );
        }
        Ok(Event::Pong { .. }) => {}
        Ok(Event::GoAway { code, .. }) => return Some(format!("GOAWAY_{}", code_name(code))),
        Ok(Event::Error { code, .. }) => return Some(format!("ERROR_{}", code_name(code))),
        Err(e) => return Some(error_name(&e)),
    }
    None
}

/// Logs out and reads (and processes) what still arrives until the broker's
/// GoAway{LOGGED_OUT}; `Some(reason)` when that answer did not come.
async fn log_out(
    shared: &Shared,
    me: &User,
    reader: &mut Reader,
    writer: &mut Writer,
    last_delivery: &mut Duration,
) -> Option<String> {
    let start = Instant::now();
    let clean = async {
        if writer.send_msg(&ClientMsg::Logout).await.is_err() {
            return Some("LOGOUT_WRITE_FAILED".to_string());
        }
        loop {
            match reader.recv().await {
                Ok(Event::GoAway { code, .. }) if code == Code::LOGGED_OUT => {
                    record_us(&shared.logout_latency, start.elapsed());
                    return None;
                }
                event => {
                    if let Some(reason) = on_event(shared, me, event, last_delivery) {
                        return Some(format!("LOGOUT_{reason}"));
                    }
                }
            }
        }
    };
    let timeout = async {
        glommio::timer::sleep(LOGOUT_LIMIT).await;
        Some("LOGOUT_TIMEOUT".to_string())
    };
    future::or(clean, timeout).await
}

fn on_send_ack(shared: &Shared, me: &User, k: u64, status: Code) {
    me.unanswered.borrow_mut().remove(&k);
    let mut answers = me.answers.borrow_mut();
    let Some(slot) = answers.get_mut((k as usize).wrapping_sub(1)) else {
        shared.mismatch(); // an answer for a number never sent
        return;
    };
    if *slot != Answer::None {
        bump(&shared.duplicate_acks);
        return;
    }
    if status == Code::OK {
        *slot = Answer::Ok;
        bump(&shared.acked);
        Live::add(&shared.live.acked, 1);
    } else {
        *slot = Answer::Refused;
        bump_key(&shared.refused, code_name(status).to_string());
        Live::add(&shared.live.errors, 1);
    }
}

/// Checks and records one delivery (this is "processing" it: `last_seq` moves, so it is acked
/// and a later login resumes after it).
fn on_deliver(
    shared: &Shared,
    me: &User,
    seq: u64,
    from: &str,
    client_msg_id: u64,
    body: &[u8],
    received: Instant,
) {
    bump(&shared.delivered);
    Live::add(&shared.live.delivered, 1);
    let last = me.last_seq.get();
    if seq <= last {
        // Either a seq this receiver already processed (a duplicate: the same Deliver.seq
        // twice), or one a gap skipped, arriving late (out of order).
        if me.missing.borrow_mut().remove(&seq) {
            bump(&shared.out_of_order);
        } else {
            bump(&shared.duplicated);
            return; // the same delivery again: its message was counted the first time
        }
    } else {
        if seq > last + 1 {
            let gap = seq - last - 1;
            shared.seq_gaps.set(shared.seq_gaps.get() + gap);
            if gap <= MAX_REMEMBERED_GAP {
                me.missing.borrow_mut().extend(last + 1..seq);
            }
        }
        me.last_seq.set(seq);
    }
    let (Some(stamp), Some(k)) = (read_u64(body, 0), read_u64(body, 8)) else {
        shared.mismatch();
        return;
    };
    if from != me.partner {
        shared.mismatch(); // not from the partner: nothing of ours
        return;
    }
    if client_msg_id != k {
        shared.mismatch(); // the broker's client_msg_id disagrees with the stamped number
    }
    match me.seen.borrow_mut().get_mut((k as usize).wrapping_sub(1)) {
        Some(seen) if *seen => bump(&shared.duplicated),
        Some(seen) => {
            *seen = true;
            bump(&shared.unique_delivered);
            if k < me.max_seen.get() {
                bump(&shared.out_of_order);
            }
            me.max_seen.set(me.max_seen.get().max(k));
            let intended = shared.t0 + Duration::from_nanos(stamp);
            record_us(
                &shared.latency,
                received.saturating_duration_since(intended),
            );
        }
        None => shared.mismatch(),
    }
}

fn read_u64(body: &[u8], at: usize) -> Option<u64> {
    body.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
}

fn map_json(m: &BTreeMap<String, u64>) -> Value {
    Value::Object(m.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

fn map_text(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn merge(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

fn report(args: &ChurnArgs, churning: usize, outcomes: Vec<Outcome>, threads: usize) -> ExitCode {
    let mut t = match Outcome::empty() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    for o in &outcomes {
        t.sent += o.sent;
        t.resent += o.resent;
        t.acked += o.acked;
        merge(&mut t.refused, &o.refused);
        t.delivered += o.delivered;
        t.unique_delivered += o.unique_delivered;
        t.lost += o.lost;
        t.duplicated += o.duplicated;
        t.out_of_order += o.out_of_order;
        t.seq_gaps += o.seq_gaps;
        t.unanswered += o.unanswered;
        t.gave_up += o.gave_up;
        t.mismatched += o.mismatched;
        t.duplicate_acks += o.duplicate_acks;
        t.reconnects += o.reconnects;
        for i in 0..3 {
            t.drops[i] += o.drops[i];
        }
        merge(&mut t.reconnect_failures, &o.reconnect_failures);
        merge(&mut t.unexpected, &o.unexpected);
        let _ = t.latency.add(&o.latency);
        let _ = t.reconnect_latency.add(&o.reconnect_latency);
        let _ = t.login_latency.add(&o.login_latency);
        let _ = t.logout_latency.add(&o.logout_latency);
        t.last_delivery = t.last_delivery.max(o.last_delivery);
        t.login_failures.extend(o.login_failures.iter().cloned());
    }
    let window = args.common.duration.max(t.last_delivery);
    let throughput = t.unique_delivered as f64 / window.as_secs_f64().max(f64::EPSILON);
    let refused: u64 = refused_total(&t.refused);
    let failures: u64 = t.reconnect_failures.values().sum();
    let unexpected: u64 = t.unexpected.values().sum();
    let lat = percentiles_json(&t.latency);
    let rlat = percentiles_json(&t.reconnect_latency);
    let llat = percentiles_json(&t.login_latency);
    let olat = percentiles_json(&t.logout_latency);
    if args.common.json {
        println!(
            "{}",
            json!({
                "scenario": "churn", "sent": t.sent, "resent": t.resent, "acked": t.acked,
                "refused": refused, "refused_by_code": map_json(&t.refused),
                "delivered": t.delivered, "unique_delivered": t.unique_delivered,
                "lost": t.lost, "duplicated": t.duplicated, "out_of_order": t.out_of_order,
                "seq_gaps": t.seq_gaps, "unanswered": t.unanswered,
                "reconnects": t.reconnects,
                "drops": {"abrupt": t.drops[0], "logout": t.drops[1], "replace": t.drops[2]},
                "reconnect_failures": failures,
                "reconnect_failures_by_code": map_json(&t.reconnect_failures),
                "unexpected_disconnects": unexpected,
                "unexpected_disconnects_by_reason": map_json(&t.unexpected),
                "gave_up": t.gave_up, "duplicate_acks": t.duplicate_acks,
                "mismatched": t.mismatched,
                "errors": t.mismatched + t.login_failures.len() as u64
                    + (threads - outcomes.len()) as u64,
                "throughput_per_s": (throughput * 10.0).round() / 10.0,
                "latency_us": lat, "reconnect_latency_us": rlat, "login_latency_us": llat,
                "logout_latency_us": olat,
                "users": args.users, "churning_users": churning, "rate": args.rate,
                "size": args.size, "churn_fraction": args.churn_fraction,
                "churn_every_ms": args.churn_every.as_millis() as u64,
                "duration_s": args.common.duration.as_secs_f64(), "threads": threads,
            })
        );
    } else {
        let pct = |v: &Value| {
            format!(
                "p50 {} p90 {} p99 {} p99.9 {} p99.99 {} max {}",
                v["p50"], v["p90"], v["p99"], v["p999"], v["p9999"], v["max"]
            )
        };
        println!(
            "scenario            churn ({} users, {churning} churning every ~{:?}, {} msg/s offered, {} B)",
            args.users, args.churn_every, args.rate, args.size
        );
        println!("sent / resent       {} / {}", t.sent, t.resent);
        println!(
            "acked / refused     {} / {refused} ({})",
            t.acked,
            map_text(&t.refused)
        );
        println!(
            "delivered           {} ({} unique)",
            t.delivered, t.unique_delivered
        );
        println!(
            "reconnects          {} (drops: abrupt {} logout {} replace {})",
            t.reconnects, t.drops[0], t.drops[1], t.drops[2]
        );
        println!(
            "reconnect failures  {failures} ({})",
            map_text(&t.reconnect_failures)
        );
        println!(
            "unexpected drops    {unexpected} ({})",
            map_text(&t.unexpected)
        );
        println!(
            "lost / dup / ooo    {} / {} / {}",
            t.lost, t.duplicated, t.out_of_order
        );
        println!("seq gaps            {}", t.seq_gaps);
        println!(
            "unanswered          {} (sends never answered)",
            t.unanswered
        );
        println!("gave up             {} (users)", t.gave_up);
        println!("mismatched          {}", t.mismatched);
        println!("throughput          {throughput:.0} msg/s");
        println!("latency µs          {}", pct(&lat));
        println!("reconnect µs        {}", pct(&rlat));
        println!("login µs            {}", pct(&llat));
        println!("logout µs           {}", pct(&olat));
    }
    if !t.login_failures.is_empty() {
        for f in t.login_failures.iter().take(5) {
            eprintln!("login failed: {f}");
        }
        return ExitCode::from(2);
    }
    let mut failed = Vec::new();
    if t.lost + t.duplicated + t.out_of_order + t.seq_gaps > 0 {
        failed.push(format!(
            "lost={} duplicated={} out_of_order={} seq_gaps={}",
            t.lost, t.duplicated, t.out_of_order, t.seq_gaps
        ));
    }
    if t.mismatched > 0 {
        failed.push(format!(
            "{} answers or deliveries matched nothing that was sent",
            t.mismatched
        ));
    }
    if t.unanswered > 0 {
        failed.push(format!(
            "{} sends never answered (drain timed out)",
            t.unanswered
        ));
    }
    if t.gave_up > 0 {
        failed.push(format!("{} users gave up reconnecting", t.gave_up));
    }
    if t.acked == 0 || t.unique_delivered == 0 {
        failed.push("no message flowed".into());
    }
    if t.reconnects == 0 {
        failed.push("no reconnect happened".into());
    }
    if outcomes.len() < threads {
        failed.push("a generator thread failed".into());
    }
    if !failed.is_empty() {
        eprintln!("FAILED: {}", failed.join("; "));
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: usize) -> User {
        User {
            name: "b".into(),
            partner: "a".into(),
            opts: ClientOptions::new(([127, 0, 0, 1], 1).into(), "", DEVICE_ID),
            churns: true,
            phase: Duration::ZERO,
            next_k: Cell::new(1),
            unanswered: RefCell::default(),
            answers: RefCell::new(vec![Answer::None; n]),
            last_seq: Cell::new(0),
            missing: RefCell::default(),
            seen: RefCell::new(vec![false; n]),
            max_seen: Cell::new(0),
            connected: Cell::new(true),
            gave_up: Cell::new(false),
        }
    }

    fn body(k: u64) -> Vec<u8> {
        let mut b = vec![0u8; STAMP];
        b[8..].copy_from_slice(&k.to_le_bytes());
        b
    }

    /// Delivers (seq, k) from the partner; returns (duplicated, out_of_order, seq_gaps,
    /// mismatched) so far.
    fn deliver(s: &Shared, u: &User, seq: u64, k: u64) -> [u64; 4] {
        on_deliver(s, u, seq, "a", k, &body(k), s.t0);
        [
            s.duplicated.get(),
            s.out_of_order.get(),
            s.seq_gaps.get(),
            s.mismatched.get(),
        ]
    }

    fn shared() -> Shared {
        Shared::new(Instant::now(), Arc::new(Live::default())).unwrap()
    }

    #[test]
    fn a_clean_stream_counts_nothing() {
        let (s, u) = (shared(), user(10));
        for k in 1..=5 {
            assert_eq!(deliver(&s, &u, k, k), [0; 4]);
        }
        assert_eq!(u.last_seq.get(), 5);
        assert_eq!(s.unique_delivered.get(), 5);
    }

    #[test]
    fn the_same_seq_twice_is_a_duplicate() {
        let (s, u) = (shared(), user(10));
        deliver(&s, &u, 1, 1);
        deliver(&s, &u, 2, 2);
        assert_eq!(deliver(&s, &u, 2, 2), [1, 0, 0, 0]);
        assert_eq!(deliver(&s, &u, 1, 1), [2, 0, 0, 0]);
        assert_eq!(s.unique_delivered.get(), 2);
    }

    #[test]
    fn the_same_message_under_a_new_seq_is_a_duplicate() {
        // What a broken dedup window looks like: the resend got a new seq.
        let (s, u) = (shared(), user(10));
        deliver(&s, &u, 1, 1);
        deliver(&s, &u, 2, 2);
        assert_eq!(deliver(&s, &u, 3, 2), [1, 0, 0, 0]);
    }

    #[test]
    fn a_skipped_seq_is_a_gap_and_its_late_arrival_out_of_order() {
        let (s, u) = (shared(), user(10));
        deliver(&s, &u, 1, 1);
        assert_eq!(deliver(&s, &u, 3, 3), [0, 0, 1, 0]);
        assert_eq!(deliver(&s, &u, 2, 2), [0, 2, 1, 0]); // seq late, and k=2 after k=3
        assert_eq!(u.last_seq.get(), 3);
    }

    #[test]
    fn a_sender_stream_reordered_under_increasing_seqs_is_out_of_order() {
        let (s, u) = (shared(), user(10));
        deliver(&s, &u, 1, 2);
        assert_eq!(deliver(&s, &u, 2, 1), [0, 1, 0, 0]);
    }

    #[test]
    fn deliveries_that_match_nothing_sent_are_mismatched() {
        let (s, u) = (shared(), user(10));
        assert_eq!(deliver(&s, &u, 1, 11), [0, 0, 0, 1]); // number never sent
        on_deliver(&s, &u, 2, "a", 7, &body(2), s.t0); // id disagrees with the stamp
        on_deliver(&s, &u, 3, "zed", 3, &body(3), s.t0); // not from the partner
        on_deliver(&s, &u, 4, "a", 4, b"short", s.t0); // no stamp
        assert_eq!(s.mismatched.get(), 4);
    }

    #[test]
    fn acks_settle_sends_once() {
        let (s, u) = (shared(), user(3));
        u.unanswered.borrow_mut().extend([1, 2, 3]);
        on_send_ack(&s, &u, 1, Code::OK);
        on_send_ack(&s, &u, 1, Code::OK);
        on_send_ack(&s, &u, 2, Code::RATE_LIMITED);
        on_send_ack(&s, &u, 9, Code::OK);
        assert_eq!(s.acked.get(), 1);
        assert_eq!(s.duplicate_acks.get(), 1);
        assert_eq!(s.refused.borrow().get("RATE_LIMITED"), Some(&1));
        assert_eq!(s.mismatched.get(), 1);
        assert_eq!(*u.unanswered.borrow(), BTreeSet::from([3]));
    }

    #[test]
    fn lost_counts_only_acked_messages_never_seen() {
        let answers = [
            Answer::Ok,
            Answer::Ok,
            Answer::Refused,
            Answer::None,
            Answer::Ok,
        ];
        let seen = [true, false, false, false, true];
        assert_eq!(count_lost(&answers, &seen), 1);
    }

    #[test]
    fn churners_are_a_fraction_of_users_and_at_least_one() {
        assert_eq!(churning_users(20, 0.5).iter().filter(|c| **c).count(), 10);
        assert_eq!(churning_users(20, 0.01).iter().filter(|c| **c).count(), 1);
        assert_eq!(churning_users(20, 1.0).iter().filter(|c| **c).count(), 20);
    }
}

//! `load churn`: connections that keep disconnecting and reconnecting while messages flow.
//!
//! Users form pairs (2k and 2k+1) that send to each other on an open-loop schedule, as in
//! `load p2p`; a share of them (`--churn-fraction`) drops its connections every
//! `--churn-every` (±50 %) and comes back the way a real client does: the client library's
//! [`Backoff`], the same device ID (so the new login replaces the old session), and a resume
//! after the last seq it has processed. With `--devices-per-user N` a share of the users log in
//! with N devices (device 0 sends; every device receives, acks, and churns on its own). A drop
//! is one of
//!
//! - **abrupt**: both halves of the socket are dropped (a phone losing its network);
//! - **logout**: `Logout` is sent and what still arrives is processed until the broker's
//!   GoAway{LOGGED_OUT}, then the socket is dropped;
//! - **replace**: the old connection stops being read but stays open while the new one logs
//!   in, so the broker replaces it (GoAway{SESSION_REPLACED} goes to the old socket, which is
//!   dropped without being read).
//!
//! Every message has a `client_msg_id` (its number in the sender's schedule) and a stamp
//! ([`verify`]). A send that was not answered before a drop is sent again, with the same ID,
//! first thing on the next connection, so the broker's dedup window must keep it from being
//! delivered twice. Sends that fall due while a user is disconnected are sent on reconnect;
//! their latency still counts from the intended time (coordinated-omission correction).
//!
//! Every receiving device processes every Deliver, acks it, and logs in again with
//! `last_seq` = the highest seq it processed. After `--duration` the churn stops, every device
//! is connected again, and the run waits until every send is answered and every acked message
//! delivered to every device of its recipient (or `--drain-timeout` passes without progress).
//! Then it checks, per device:
//!
//! - **lost**: acked OK, never delivered to that device;
//! - **duplicated**: the same message (by its stamped number) delivered twice, or the same
//!   `Deliver.seq` delivered twice;
//! - **out of order**: a device's `Deliver.seq` not strictly increasing across its
//!   connections, or a sender's stamped numbers arriving out of order;
//! - **seq gaps**: a device's `Deliver.seq` skipping numbers (the inbox is gap-free);
//! - **mismatched**: what matches nothing that was sent (a wrong sender, a body stamp that
//!   disagrees with the `client_msg_id`, an answer for a number never sent);
//! - **unanswered**: sends never answered, even after resending;
//! - **error_acks**: sends answered with a code other than OK, by code (also `refused_by_code`).
//!
//! It also reports reconnect failures by code, unexpected disconnects by reason, and latency
//! percentiles for messages (from the intended send time), reconnects (drop → LoginOk, backoff
//! included), logins and logouts.
//!
//! Exit status: 0 when all of those checks are zero, messages flowed, reconnects happened, the
//! drain completed and no device gave up reconnecting; 1 otherwise; 2 on bad arguments or when
//! the first logins fail.
//!
//! The traffic itself ([`run_traffic`]) is shared with `load soak`, which also kills the broker
//! under it: then every reconnect goes to wherever [`Target`] says the broker is now.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;
use hdrhistogram::Histogram;
use rand::Rng;
use ringpost::client::{Backoff, Client, ClientError, ClientOptions, Event, Reader, Writer};
use ringpost::protocol::{code_name, ClientMsg, Code};
use serde_json::{json, Map, Value};

use super::verify::{
    self, count_lost, counts_text, merge_counts, AckOutcome, AckTally, Answer, Delivered,
    DeviceStream, Expect, Ledger, Stamp, Tally, STAMP,
};
use super::{
    counts_json, new_histogram, parse_duration, percentiles_json, pick_fraction, run_generators,
    CommonArgs, DeviceArgs, Live, StartLine, Target, Tokens,
};

/// Device IDs are `load-churn-<index>`, the same on every connection of that device: a
/// reconnect replaces the old session.
const DEVICE_ID: &str = "load-churn";
/// While waiting for the next send, deliveries are acked this often (or every 100 deliveries).
const ACK_EVERY: Duration = Duration::from_millis(50);
/// Sends queued back to back before a flush when the schedule has fallen behind.
const MAX_BATCH: u64 = 64;
/// How long a Logout may take to be answered (GoAway{LOGGED_OUT}) before the socket is
/// dropped anyway.
const LOGOUT_LIMIT: Duration = Duration::from_secs(2);

#[derive(clap::Args, Debug)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub traffic: TrafficArgs,
}

/// The traffic options `churn` and `soak` share.
#[derive(clap::Args, Debug, Clone)]
pub struct TrafficArgs {
    /// Users; user 2k and 2k+1 send to each other. Even, at least 2.
    #[arg(long, default_value_t = 100)]
    pub users: usize,
    /// Total messages per second across all senders (open loop).
    #[arg(long, default_value_t = 2_000.0)]
    pub rate: f64,
    /// Body size in bytes (at least 24: the timestamp, number and sender stamp).
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
    /// Give up waiting for the tail after this long without progress (what is unanswered then
    /// counts as unanswered).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    #[command(flatten)]
    pub devices: DeviceArgs,
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

/// One user: its sending schedule and answers, and its devices.
struct User {
    name: String,
    partner: String,
    tag: u64,
    churns: bool,
    /// Offset of this sender's schedule within one interval.
    phase: Duration,
    /// Next message number to send for the first time (1-based; > per_sender when done).
    next_k: Cell<u64>,
    /// Numbers written on some connection and not answered yet: resent on the next one.
    unanswered: RefCell<BTreeSet<u64>>,
    ledger: RefCell<Ledger>,
    devices: Vec<Rc<Device>>,
}

/// One device of a user, across all its connections.
struct Device {
    /// 0 is the one that sends.
    index: usize,
    opts: ClientOptions,
    stream: RefCell<DeviceStream>,
    connected: Cell<bool>,
    gave_up: Cell<bool>,
}

/// Counters and histograms of one generator thread.
struct Shared {
    t0: Instant,
    live: Arc<Live>,
    target: Arc<Target>,
    latency: RefCell<Histogram<u64>>,
    reconnect_latency: RefCell<Histogram<u64>>,
    login_latency: RefCell<Histogram<u64>>,
    /// Logout sent → GoAway{LOGGED_OUT} read (what arrived in between processed).
    logout_latency: RefCell<Histogram<u64>>,
    sent: Cell<u64>,
    resent: Cell<u64>,
    acks: RefCell<AckTally>,
    tally: RefCell<Tally>,
    /// Deliveries owed: for every message acked OK, one per device of its recipient.
    expected: Cell<u64>,
    reconnects: Cell<u64>,
    drops: [Cell<u64>; 3],
    reconnect_failures: RefCell<BTreeMap<String, u64>>,
    unexpected: RefCell<BTreeMap<String, u64>>,
    /// Churn has stopped: connections stay up (the tail is being drained).
    stop_churn: Cell<bool>,
    /// The run is over: every device task returns.
    finish: Cell<bool>,
}

impl Shared {
    fn new(t0: Instant, live: Arc<Live>, target: Arc<Target>) -> Result<Shared, String> {
        Ok(Shared {
            t0,
            live,
            target,
            latency: RefCell::new(new_histogram()?),
            reconnect_latency: RefCell::new(new_histogram()?),
            login_latency: RefCell::new(new_histogram()?),
            logout_latency: RefCell::new(new_histogram()?),
            sent: Cell::new(0),
            resent: Cell::new(0),
            acks: RefCell::default(),
            tally: RefCell::default(),
            expected: Cell::new(0),
            reconnects: Cell::new(0),
            drops: Default::default(),
            reconnect_failures: RefCell::default(),
            unexpected: RefCell::default(),
            stop_churn: Cell::new(false),
            finish: Cell::new(false),
        })
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

/// How one sender's messages to one recipient were answered (for `soak`'s replay check).
pub struct SentLedger {
    pub from: String,
    pub to: String,
    pub written: u64,
    pub answers: Vec<Answer>,
}

/// What one generator thread saw (or, summed, all of them).
pub struct Totals {
    pub sent: u64,
    pub resent: u64,
    pub acks: AckTally,
    pub tally: Tally,
    pub expected: u64,
    pub lost: u64,
    pub unanswered: u64,
    /// Devices that gave up reconnecting.
    pub gave_up: u64,
    pub reconnects: u64,
    drops: [u64; 3],
    reconnect_failures: BTreeMap<String, u64>,
    unexpected: BTreeMap<String, u64>,
    latency: Histogram<u64>,
    reconnect_latency: Histogram<u64>,
    login_latency: Histogram<u64>,
    logout_latency: Histogram<u64>,
    /// When the last message arrived, after the run's start.
    last_delivery: Duration,
    pub login_failures: Vec<String>,
    pub devices: u64,
    pub ledgers: Vec<SentLedger>,
    /// Generator threads that failed (merged totals only).
    pub threads_failed: usize,
}

impl Totals {
    fn empty() -> Result<Totals, String> {
        Ok(Totals {
            sent: 0,
            resent: 0,
            acks: AckTally::default(),
            tally: Tally::default(),
            expected: 0,
            lost: 0,
            unanswered: 0,
            gave_up: 0,
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
            devices: 0,
            ledgers: Vec::new(),
            threads_failed: 0,
        })
    }

    fn merge(&mut self, o: Totals) {
        self.sent += o.sent;
        self.resent += o.resent;
        self.acks.merge(&o.acks);
        self.tally.merge(&o.tally);
        self.expected += o.expected;
        self.lost += o.lost;
        self.unanswered += o.unanswered;
        self.gave_up += o.gave_up;
        self.reconnects += o.reconnects;
        for i in 0..3 {
            self.drops[i] += o.drops[i];
        }
        merge_counts(&mut self.reconnect_failures, &o.reconnect_failures);
        merge_counts(&mut self.unexpected, &o.unexpected);
        let _ = self.latency.add(&o.latency);
        let _ = self.reconnect_latency.add(&o.reconnect_latency);
        let _ = self.login_latency.add(&o.login_latency);
        let _ = self.logout_latency.add(&o.logout_latency);
        self.last_delivery = self.last_delivery.max(o.last_delivery);
        self.login_failures.extend(o.login_failures);
        self.devices += o.devices;
        self.ledgers.extend(o.ledgers);
    }

    pub fn mismatched(&self) -> u64 {
        self.tally.mismatched + self.acks.mismatched
    }

    /// Everything that went wrong that is not a loss, duplicate or reorder.
    pub fn errors(&self) -> u64 {
        self.mismatched()
            + self.acks.error_acks_total()
            + self.login_failures.len() as u64
            + self.threads_failed as u64
    }

    /// The report's fields (the traffic's part of it).
    pub fn json(&self, plan: &Plan, duration: Duration) -> Map<String, Value> {
        let window = duration.max(self.last_delivery);
        let throughput = self.tally.unique as f64 / window.as_secs_f64().max(f64::EPSILON);
        let error_acks = counts_json(&self.acks.error_acks);
        let v = json!({
            "sent": self.sent, "resent": self.resent, "acked": self.acks.acked,
            "refused": self.acks.error_acks_total(), "refused_by_code": error_acks.clone(),
            "error_acks": error_acks,
            "delivered": self.tally.delivered, "unique_delivered": self.tally.unique,
            "expected_deliveries": self.expected,
            "lost": self.lost, "duplicated": self.tally.duplicated,
            "out_of_order": self.tally.out_of_order,
            "seq_gaps": self.tally.seq_gaps, "unanswered": self.unanswered,
            "reconnects": self.reconnects,
            "drops": {"abrupt": self.drops[0], "logout": self.drops[1], "replace": self.drops[2]},
            "reconnect_failures": self.reconnect_failures.values().sum::<u64>(),
            "reconnect_failures_by_code": counts_json(&self.reconnect_failures),
            "unexpected_disconnects": self.unexpected.values().sum::<u64>(),
            "unexpected_disconnects_by_reason": counts_json(&self.unexpected),
            "gave_up": self.gave_up, "duplicate_acks": self.acks.duplicate_acks,
            "mismatched": self.mismatched(),
            "errors": self.errors(),
            "throughput_per_s": (throughput * 10.0).round() / 10.0,
            "latency_us": percentiles_json(&self.latency),
            "reconnect_latency_us": percentiles_json(&self.reconnect_latency),
            "login_latency_us": percentiles_json(&self.login_latency),
            "logout_latency_us": percentiles_json(&self.logout_latency),
            "users": plan.users, "devices": self.devices,
            "devices_per_user": plan.devices_per_user, "multi_device_users": plan.multi_device_users(),
            "churning_users": plan.churning_users(),
            "rate": plan.rate, "size": plan.cfg.size,
            "churn_fraction": plan.churn_fraction,
            "churn_every_ms": plan.cfg.churn_every.as_millis() as u64,
            "duration_s": duration.as_secs_f64(), "threads": plan.threads,
        });
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    /// The summary table's lines (the traffic's part of it).
    pub fn print_text(&self, plan: &Plan, duration: Duration) {
        let pct = |h: &Histogram<u64>| {
            let v = percentiles_json(h);
            format!(
                "p50 {} p90 {} p99 {} p99.9 {} p99.99 {} max {}",
                v["p50"], v["p90"], v["p99"], v["p999"], v["p9999"], v["max"]
            )
        };
        let window = duration.max(self.last_delivery);
        let throughput = self.tally.unique as f64 / window.as_secs_f64().max(f64::EPSILON);
        println!(
            "traffic             {} users ({} devices), {} churning every ~{:?}, {} msg/s offered, {} B",
            plan.users,
            self.devices,
            plan.churning_users(),
            plan.cfg.churn_every,
            plan.rate,
            plan.cfg.size
        );
        println!("sent / resent       {} / {}", self.sent, self.resent);
        println!(
            "acked / error acks  {} / {} ({})",
            self.acks.acked,
            self.acks.error_acks_total(),
            counts_text(&self.acks.error_acks)
        );
        println!(
            "delivered           {} ({} unique of {} owed to devices)",
            self.tally.delivered, self.tally.unique, self.expected
        );
        println!(
            "reconnects          {} (drops: abrupt {} logout {} replace {})",
            self.reconnects, self.drops[0], self.drops[1], self.drops[2]
        );
        println!(
            "reconnect failures  {} ({})",
            self.reconnect_failures.values().sum::<u64>(),
            counts_text(&self.reconnect_failures)
        );
        println!(
            "unexpected drops    {} ({})",
            self.unexpected.values().sum::<u64>(),
            counts_text(&self.unexpected)
        );
        println!(
            "lost / dup / ooo    {} / {} / {}",
            self.lost, self.tally.duplicated, self.tally.out_of_order
        );
        println!("seq gaps            {}", self.tally.seq_gaps);
        println!(
            "unanswered          {} (sends never answered)",
            self.unanswered
        );
        println!("gave up             {} (devices)", self.gave_up);
        println!("mismatched          {}", self.mismatched());
        println!("throughput          {throughput:.0} msg/s");
        println!("latency µs          {}", pct(&self.latency));
        println!("reconnect µs        {}", pct(&self.reconnect_latency));
        println!("login µs            {}", pct(&self.login_latency));
        println!("logout µs           {}", pct(&self.logout_latency));
    }

    /// Why the run failed (empty: it passed). `reconnects_expected`: churn must have made
    /// some.
    pub fn failures(&self, reconnects_expected: bool) -> Vec<String> {
        let mut failed = Vec::new();
        let t = &self.tally;
        if self.lost + t.duplicated + t.out_of_order + t.seq_gaps > 0 {
            failed.push(format!(
                "lost={} duplicated={} out_of_order={} seq_gaps={}",
                self.lost, t.duplicated, t.out_of_order, t.seq_gaps
            ));
        }
        if self.mismatched() > 0 {
            failed.push(format!(
                "{} answers or deliveries matched nothing that was sent",
                self.mismatched()
            ));
        }
        if self.unanswered > 0 {
            failed.push(format!(
                "{} sends never answered (drain timed out)",
                self.unanswered
            ));
        }
        if self.acks.error_acks_total() > 0 {
            failed.push(format!(
                "{} sends answered with an error ({})",
                self.acks.error_acks_total(),
                counts_text(&self.acks.error_acks)
            ));
        }
        if self.gave_up > 0 {
            failed.push(format!("{} devices gave up reconnecting", self.gave_up));
        }
        if self.acks.acked == 0 || t.unique == 0 {
            failed.push("no message flowed".into());
        }
        if reconnects_expected && self.reconnects == 0 {
            failed.push("no reconnect happened".into());
        }
        if self.threads_failed > 0 {
            failed.push("a generator thread failed".into());
        }
        failed
    }
}

/// Who is who and how the traffic goes, decided before the first login.
pub struct Plan {
    users: usize,
    rate: f64,
    churn_fraction: f64,
    devices_per_user: usize,
    churners: Vec<bool>,
    devices: Vec<usize>,
    threads: usize,
    run_id: u32,
    /// User names are `{prefix}-{run_id}-{i}`.
    prefix: &'static str,
    cfg: Cfg,
}

impl Plan {
    /// Checks `t` and plans it over `threads` generator threads.
    pub fn new(
        t: &TrafficArgs,
        duration: Duration,
        threads: usize,
        prefix: &'static str,
    ) -> Result<Plan, String> {
        check_args(t, duration)?;
        let interval = Duration::from_secs_f64(t.users as f64 / t.rate);
        let per_sender = (duration.as_secs_f64() / interval.as_secs_f64())
            .floor()
            .max(1.0) as u64;
        Ok(Plan {
            users: t.users,
            rate: t.rate,
            churn_fraction: t.churn_fraction,
            devices_per_user: t.devices.devices_per_user,
            churners: pick_fraction(t.users, t.churn_fraction, 1),
            devices: t.devices.plan(t.users),
            threads: threads.min(t.users / 2).max(1),
            run_id: rand::random(),
            prefix,
            cfg: Cfg {
                interval,
                per_sender,
                size: t.size,
                churn_every: t.churn_every,
                backoff_initial: t.backoff_initial,
                backoff_max: t.backoff_max,
                drain_timeout: t.drain_timeout,
                drops: [DropMode::Abrupt, DropMode::Logout, DropMode::Replace]
                    .map(|m| t.drops.contains(&m)),
            },
        })
    }

    fn churning_users(&self) -> usize {
        self.churners.iter().filter(|c| **c).count()
    }

    fn multi_device_users(&self) -> usize {
        self.devices.iter().filter(|d| **d > 1).count()
    }
}

pub fn run(args: ChurnArgs) -> ExitCode {
    if args.common.transport != super::TransportArg::Tcp {
        // Reconnects follow a broker that moves (soak) through `Target`, which is TCP-only.
        eprintln!("load churn drives TCP only; --transport ws is not supported here");
        return ExitCode::from(2);
    }
    let plan = match Plan::new(
        &args.traffic,
        args.common.duration,
        args.common.thread_count(),
        "churn",
    ) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let tokens = match Tokens::load_or_exit(&args.common) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let live = Arc::new(Live::default());
    let t = match run_traffic(&plan, Target::fixed(args.common.addr), tokens, &live) {
        Ok(t) => t,
        Err(code) => return code,
    };
    if args.common.json {
        let mut m = Map::new();
        m.insert("scenario".into(), json!("churn"));
        m.extend(t.json(&plan, args.common.duration));
        println!("{}", Value::Object(m));
    } else {
        println!("scenario            churn");
        t.print_text(&plan, args.common.duration);
    }
    if !t.login_failures.is_empty() {
        for f in t.login_failures.iter().take(5) {
            eprintln!("login failed: {f}");
        }
        return ExitCode::from(2);
    }
    let failed = t.failures(true);
    if !failed.is_empty() {
        eprintln!("FAILED: {}", failed.join("; "));
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

fn check_args(args: &TrafficArgs, duration: Duration) -> Result<(), String> {
    if args.users < 2 || !args.users.is_multiple_of(2) {
        return Err("--users must be an even number >= 2".into());
    }
    if args.size < STAMP {
        return Err(format!(
            "--size must be at least {STAMP} bytes (timestamp, number and sender stamp)"
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
    if duration.is_zero() {
        return Err("--duration must be more than 0".into());
    }
    args.devices.check()
}

/// Runs the planned traffic against `target` to the end of its drain and sums what every
/// generator thread saw. `Err` only when a generator thread cannot be started.
pub fn run_traffic(
    plan: &Plan,
    target: Arc<Target>,
    tokens: Tokens,
    live: &Arc<Live>,
) -> Result<Totals, ExitCode> {
    let threads = plan.threads;
    let outcomes = run_generators(plan.prefix, threads, live, |t, start| {
        let mut specs = Vec::new();
        for k in (0..plan.users / 2).skip(t).step_by(threads) {
            let (a, b) = (2 * k, 2 * k + 1);
            let name = |i: usize| format!("{}-{:08x}-{i}", plan.prefix, plan.run_id);
            for (me, partner) in [(a, b), (b, a)] {
                specs.push(UserSpec {
                    name: name(me),
                    partner: name(partner),
                    churns: plan.churners[me],
                    devices: plan.devices[me],
                });
            }
        }
        let (target, tokens, live, cfg) = (target.clone(), tokens.clone(), live.clone(), plan.cfg);
        move || async move { generator(target, tokens, specs, cfg, live, start).await }
    })?;
    let mut total = Totals::empty().map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })?;
    total.threads_failed = threads - outcomes.len();
    for o in outcomes {
        total.merge(o);
    }
    Ok(total)
}

struct UserSpec {
    name: String,
    partner: String,
    churns: bool,
    devices: usize,
}

async fn generator(
    target: Arc<Target>,
    tokens: Tokens,
    specs: Vec<UserSpec>,
    cfg: Cfg,
    live: Arc<Live>,
    start: StartLine,
) -> Result<Totals, String> {
    // Log every device in before the clock starts.
    let n = cfg.per_sender as usize;
    let mut users = Vec::new();
    let mut clients = Vec::new();
    let mut login_failures = Vec::new();
    for spec in specs {
        // (A failure here is reported after the barrier: every thread must reach it.)
        let token = tokens.mint(&spec.name).unwrap_or_else(|e| {
            login_failures.push(format!("{}: cannot mint a token: {e}", spec.name));
            String::new()
        });
        let mut devices = Vec::new();
        for d in 0..spec.devices {
            let opts = ClientOptions::new(target.addr(), token.clone(), format!("{DEVICE_ID}-{d}"));
            match Client::connect(&opts, 0).await {
                Ok(c) => clients.push(Some(c)),
                Err(e) => {
                    login_failures.push(format!("{} device {d}: {e}", spec.name));
                    clients.push(None);
                }
            }
            devices.push(Rc::new(Device {
                index: d,
                opts,
                stream: RefCell::new(DeviceStream::new(n)),
                connected: Cell::new(false),
                gave_up: Cell::new(false),
            }));
        }
        users.push(Rc::new(User {
            tag: verify::sender_tag(&spec.name),
            name: spec.name,
            partner: spec.partner,
            churns: spec.churns,
            phase: cfg.interval.mul_f64(rand::random::<f64>()),
            next_k: Cell::new(1),
            unanswered: RefCell::default(),
            ledger: RefCell::new(Ledger::new(n)),
            devices,
        }));
    }
    let t0 = start.arrive();
    let shared = Rc::new(Shared::new(t0, live, target)?);

    let mut tasks = Vec::new();
    if login_failures.is_empty() {
        let mut clients = clients.into_iter();
        for (i, user) in users.iter().enumerate() {
            let Some(partner) = users.get(i ^ 1) else {
                continue;
            };
            for dev in &user.devices {
                if let Some(Some(client)) = clients.next() {
                    tasks.push(glommio::spawn_local(device_task(
                        shared.clone(),
                        user.clone(),
                        partner.clone(),
                        dev.clone(),
                        client,
                        cfg,
                    )));
                }
            }
        }
    }

    // Run, then stop churning and drain: every send answered, every OK delivered to every
    // device of its recipient.
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
            .all(|u| u.next_k.get() > cfg.per_sender || u.devices[0].gave_up.get());
        let all_up = users
            .iter()
            .flat_map(|u| u.devices.iter())
            .all(|d| d.connected.get() || d.gave_up.get());
        let unanswered: usize = users.iter().map(|u| u.unanswered.borrow().len()).sum();
        // Once every send is answered, a delivered message is one acked OK (the broker only
        // delivers what it accepted), so equal counts mean every acked message arrived.
        if shared.target.is_stable()
            && generated
            && all_up
            && unanswered == 0
            && shared.tally.borrow().unique >= shared.expected.get()
        {
            break;
        }
        let progress = shared.acks.borrow().answered()
            + shared.tally.borrow().delivered
            + shared.reconnects.get();
        // While the broker may still be killed (soak), a stall is not the end.
        if progress != last_progress.1 || !shared.target.is_stable() {
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

    // Verify every stream: user i's acked sends reach every device of its partner (i ^ 1).
    let mut lost = 0u64;
    let mut unanswered = 0u64;
    let mut ledgers = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let Some(partner) = users.get(i ^ 1) else {
            continue;
        };
        let ledger = u.ledger.borrow();
        unanswered += ledger.unanswered();
        for dev in &partner.devices {
            lost += count_lost(ledger.answers(), dev.stream.borrow().seen());
        }
        ledgers.push(SentLedger {
            from: u.name.clone(),
            to: u.partner.clone(),
            written: ledger.written(),
            answers: ledger.answers().to_vec(),
        });
    }
    let devices = users.iter().flat_map(|u| u.devices.iter());
    let gave_up = devices.clone().filter(|d| d.gave_up.get()).count() as u64;
    let outcome = Totals {
        sent: shared.sent.get(),
        resent: shared.resent.get(),
        acks: shared.acks.borrow().clone(),
        tally: shared.tally.borrow().clone(),
        expected: shared.expected.get(),
        lost,
        unanswered,
        gave_up,
        reconnects: shared.reconnects.get(),
        drops: [0, 1, 2].map(|i| shared.drops[i].get()),
        reconnect_failures: shared.reconnect_failures.borrow().clone(),
        unexpected: shared.unexpected.borrow().clone(),
        latency: shared.latency.borrow().clone(),
        reconnect_latency: shared.reconnect_latency.borrow().clone(),
        login_latency: shared.login_latency.borrow().clone(),
        logout_latency: shared.logout_latency.borrow().clone(),
        last_delivery,
        login_failures,
        devices: devices.count() as u64,
        ledgers,
        threads_failed: 0,
    };
    Ok(outcome)
}

/// One device for the whole run: connection after connection until the run is over. Returns
/// when its last message arrived (after the run's start).
async fn device_task(
    shared: Rc<Shared>,
    me: Rc<User>,
    partner: Rc<User>,
    dev: Rc<Device>,
    first: Client,
    cfg: Cfg,
) -> Duration {
    let mut backoff = Backoff::new(cfg.backoff_initial, cfg.backoff_max);
    let mut client = first;
    let mut last_delivery = Duration::ZERO;
    let on = Conn {
        shared: &shared,
        me: &me,
        partner: &partner,
        dev: &dev,
    };
    loop {
        let keepalive =
            Duration::from_millis(u64::from(client.login_info().heartbeat_ms.max(200)) / 2);
        let (mut reader, mut writer) = client.split();
        dev.connected.set(true);
        let drop_at = me
            .churns
            .then(|| Instant::now() + cfg.churn_every.mul_f64(rand::rng().random_range(0.5..1.5)));
        let end = future::or(
            future::or(
                read_loop(&on, &mut reader, &mut last_delivery),
                write_loop(&on, &mut writer, &cfg, keepalive),
            ),
            control(&shared, drop_at),
        )
        .await;
        dev.connected.set(false);
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
                            let answer = log_out(&on, reader, writer, &mut last_delivery).await;
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
        // here (the old connection is gone, or unread with DropMode::Replace) to LoginOk. The
        // broker may have moved (soak restarts it on a new port).
        let down_at = Instant::now();
        client = loop {
            if shared.finish.get() {
                return last_delivery;
            }
            glommio::timer::sleep(backoff.next_delay()).await;
            let attempt = Instant::now();
            let mut opts = dev.opts.clone();
            opts.addr = shared.target.addr();
            let last_seq = dev.stream.borrow_mut().resume();
            match Client::connect(&opts, last_seq).await {
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
                        eprintln!(
                            "{} device {}: gave up reconnecting: {e}",
                            me.name, dev.index
                        );
                        dev.gave_up.set(true);
                        return last_delivery;
                    }
                }
            }
        };
        drop(old);
    }
}

/// What one connection's loops work on.
struct Conn<'a> {
    shared: &'a Shared,
    me: &'a User,
    partner: &'a User,
    dev: &'a Device,
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
    let stamp = Stamp {
        intended_ns: intended_offset(me, cfg, k).as_nanos() as u64,
        k,
        tag: me.tag,
    };
    verify::write_stamp(body, stamp);
}

/// Writes on one connection: on the sending device first everything unanswered from earlier
/// connections (same `client_msg_id`), then the schedule; on every device, acks for what the
/// reader processed and pings to stay alive. Returns only when a write fails.
async fn write_loop(on: &Conn<'_>, writer: &mut Writer, cfg: &Cfg, keepalive: Duration) -> End {
    let (shared, me) = (on.shared, on.me);
    let sends = on.dev.index == 0;
    let mut body = vec![0u8; cfg.size];
    if sends {
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
    }
    // The login told the broker what this device has processed.
    let mut acked_up_to = on.dev.stream.borrow().last_seq();
    if writer.flush().await.is_err() {
        return End::Lost("WRITE_FAILED".into());
    }
    let mut last_write = Instant::now();
    let mut last_ack = Instant::now();
    loop {
        // Until the next send is due (forever once the schedule is done, or on a device that
        // does not send): ack what arrived (every ACK_EVERY or 100 deliveries) and ping when
        // the schedule is sparse.
        loop {
            let k = me.next_k.get();
            let due_to_send = sends && k <= cfg.per_sender;
            let wait = if due_to_send {
                (shared.t0 + intended_offset(me, cfg, k)).saturating_duration_since(Instant::now())
            } else {
                ACK_EVERY
            };
            if due_to_send && wait.is_zero() {
                break;
            }
            glommio::timer::sleep(wait.min(ACK_EVERY)).await;
            let due = on.dev.stream.borrow().last_seq();
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
        let due = on.dev.stream.borrow().last_seq();
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
            me.ledger.borrow_mut().wrote(k);
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
async fn read_loop(on: &Conn<'_>, reader: &mut Reader, last_delivery: &mut Duration) -> End {
    loop {
        let event = reader.recv().await;
        if let Some(reason) = on_event(on, event, last_delivery) {
            return End::Lost(reason);
        }
    }
}

/// Handles one thing read from the broker; `Some(reason)` when the connection is over.
fn on_event(
    on: &Conn<'_>,
    event: Result<Event, ClientError>,
    last_delivery: &mut Duration,
) -> Option<String> {
    match event {
        Ok(Event::SendAck {
            client_msg_id,
            status,
            own_seq,
        }) => on_send_ack(on, client_msg_id, status, own_seq),
        Ok(Event::Deliver(d)) if d.outgoing => {
            // Own-send sync: the echo of one of this user's sends, in the same stream.
            on.dev
                .stream
                .borrow_mut()
                .echo(&mut on.shared.tally.borrow_mut(), d.seq);
        }
        Ok(Event::Deliver(d)) => {
            let received = Instant::now();
            *last_delivery = received.saturating_duration_since(on.shared.t0);
            let delivered = Delivered {
                seq: d.seq,
                from: &d.from_user,
                client_msg_id: d.client_msg_id,
                body: &d.body,
            };
            on_deliver(on, &delivered, received);
        }
        Ok(Event::Pong { .. }) | Ok(Event::GroupReply(_)) => {}
        Ok(Event::GoAway { code, .. }) => return Some(format!("GOAWAY_{}", code_name(code))),
        Ok(Event::Error { code, .. }) => return Some(format!("ERROR_{}", code_name(code))),
        Err(e) => return Some(error_name(&e)),
    }
    None
}

/// Logs out and reads (and processes) what still arrives until the broker's
/// GoAway{LOGGED_OUT}; `Some(reason)` when that answer did not come.
async fn log_out(
    on: &Conn<'_>,
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
                    record_us(&on.shared.logout_latency, start.elapsed());
                    return None;
                }
                event => {
                    if let Some(reason) = on_event(on, event, last_delivery) {
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

fn on_send_ack(on: &Conn<'_>, k: u64, status: Code, own_seq: u64) {
    let shared = on.shared;
    if on.dev.index != 0 {
        shared.acks.borrow_mut().mismatched += 1; // this device sent nothing
        Live::add(&shared.live.errors, 1);
        return;
    }
    on.me.unanswered.borrow_mut().remove(&k);
    let outcome = on
        .me
        .ledger
        .borrow_mut()
        .on_ack(&mut shared.acks.borrow_mut(), k, status);
    match outcome {
        AckOutcome::Ok => {
            // Own-send sync: the copy this connection is not sent (a hole, not a gap).
            on.dev
                .stream
                .borrow_mut()
                .own_copy(&mut shared.tally.borrow_mut(), own_seq);
            let owed = on.partner.devices.len() as u64;
            shared.expected.set(shared.expected.get() + owed);
            Live::add(&shared.live.acked, 1);
        }
        AckOutcome::Refused => Live::add(&shared.live.errors, 1),
        AckOutcome::Ignored => {}
    }
}

/// Checks and records one delivery (this is "processing" it: the device's `last_seq` moves, so
/// it is acked and a later login resumes after it).
fn on_deliver(on: &Conn<'_>, d: &Delivered<'_>, received: Instant) {
    let shared = on.shared;
    Live::add(&shared.live.delivered, 1);
    let expect = Expect {
        from: &on.partner.name,
        tag: on.partner.tag,
        written: on.partner.next_k.get() - 1,
    };
    let fresh = on
        .dev
        .stream
        .borrow_mut()
        .deliver(&mut shared.tally.borrow_mut(), d, &expect);
    if let Some(stamp) = fresh {
        let intended = shared.t0 + Duration::from_nanos(stamp.intended_ns);
        record_us(
            &shared.latency,
            received.saturating_duration_since(intended),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, partner: &str, devices: usize) -> User {
        User {
            name: name.into(),
            partner: partner.into(),
            tag: verify::sender_tag(name),
            churns: true,
            phase: Duration::ZERO,
            next_k: Cell::new(1),
            unanswered: RefCell::default(),
            ledger: RefCell::new(Ledger::new(10)),
            devices: (0..devices)
                .map(|index| {
                    Rc::new(Device {
                        index,
                        opts: ClientOptions::new(([127, 0, 0, 1], 1).into(), "", DEVICE_ID),
                        stream: RefCell::new(DeviceStream::new(10)),
                        connected: Cell::new(true),
                        gave_up: Cell::new(false),
                    })
                })
                .collect(),
        }
    }

    fn shared() -> Shared {
        Shared::new(
            Instant::now(),
            Arc::new(Live::default()),
            Target::fixed(([127, 0, 0, 1], 1).into()),
        )
        .unwrap()
    }

    #[test]
    fn an_ok_ack_owes_one_delivery_per_device_of_the_recipient() {
        let s = shared();
        let (a, b) = (user("a", "b", 1), user("b", "a", 3));
        a.ledger.borrow_mut().wrote(1);
        a.unanswered.borrow_mut().insert(1);
        let on = Conn {
            shared: &s,
            me: &a,
            partner: &b,
            dev: &a.devices[0],
        };
        on_send_ack(&on, 1, Code::OK, 0);
        assert_eq!(s.expected.get(), 3);
        assert!(a.unanswered.borrow().is_empty());
    }

    #[test]
    fn a_send_ack_on_a_device_that_sent_nothing_is_mismatched() {
        let s = shared();
        let (a, b) = (user("a", "b", 2), user("b", "a", 1));
        a.ledger.borrow_mut().wrote(1);
        let on = Conn {
            shared: &s,
            me: &a,
            partner: &b,
            dev: &a.devices[1],
        };
        on_send_ack(&on, 1, Code::OK, 0);
        assert_eq!(s.acks.borrow().mismatched, 1);
        assert_eq!(s.acks.borrow().acked, 0);
    }

    #[test]
    fn every_device_checks_its_own_stream() {
        // b's two devices each get a's message 1 once: two unique deliveries, no duplicate.
        let s = shared();
        let (a, b) = (user("a", "b", 1), user("b", "a", 2));
        a.next_k.set(2);
        let mut body = vec![0u8; 40];
        stamp_body(&mut body, &a, &Cfg::test(), 1);
        for dev in &b.devices {
            let on = Conn {
                shared: &s,
                me: &b,
                partner: &a,
                dev,
            };
            let d = Delivered {
                seq: 1,
                from: "a",
                client_msg_id: 1,
                body: &body,
            };
            on_deliver(&on, &d, s.t0);
        }
        let t = s.tally.borrow();
        assert_eq!((t.unique, t.duplicated, t.mismatched), (2, 0, 0));
    }

    impl Cfg {
        fn test() -> Cfg {
            Cfg {
                interval: Duration::from_millis(1),
                per_sender: 10,
                size: 40,
                churn_every: Duration::from_secs(1),
                backoff_initial: Duration::from_millis(1),
                backoff_max: Duration::from_millis(2),
                drain_timeout: Duration::from_secs(1),
                drops: [true; 3],
            }
        }
    }

    #[test]
    fn churners_are_a_fraction_of_users_and_at_least_one() {
        assert_eq!(pick_fraction(20, 0.5, 1).iter().filter(|c| **c).count(), 10);
        assert_eq!(pick_fraction(20, 0.01, 1).iter().filter(|c| **c).count(), 1);
        assert_eq!(pick_fraction(20, 1.0, 1).iter().filter(|c| **c).count(), 20);
    }
}

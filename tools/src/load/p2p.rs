//! `load p2p`: pairs of users send to each other at an open-loop total rate.
//!
//! Each sender follows a fixed schedule (one message every `users / rate` seconds, random phase)
//! and stamps each body ([`verify::write_stamp`]) with its *intended* send time, its message
//! number and its name's tag. Latency is measured from the intended time, so a stalled broker
//! shows up as latency instead of silently slowing the generator (coordinated-omission
//! correction). With `--devices-per-user N`, a share of the users log in with N devices: device
//! 0 sends, every device receives and acks.
//!
//! After the schedule it waits for the tail (every send answered, every message acked OK
//! delivered to every device of its recipient) until `--drain-timeout` passes without progress
//! or every connection is gone, then checks and reports:
//!
//! - **lost**: acked OK and never delivered, counted per device of the recipient;
//! - **duplicated**, **out_of_order**, **seq_gaps**: per device ([`verify::DeviceStream`]);
//! - **mismatched**: deliveries whose sender, `client_msg_id` or body stamp disagree with what
//!   the partner sent (a misrouted message), and SendAcks for numbers never sent;
//! - **unanswered**: sends written and never answered by the end of the drain;
//! - **error_acks**: sends answered with a code other than OK, by code name.
//!
//! Exit status 1 when any of those is non-zero (or a connection failed during the run), 2 on
//! bad arguments or failed logins, 0 otherwise.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ringpost::client::{Client, Event, Reader, Writer};
use ringpost::protocol::ClientMsg;
use serde_json::json;

use super::verify::{
    self, count_lost, counts_text, AckOutcome, AckTally, Delivered, DeviceStream, Expect, Ledger,
    Stamp, Tally, STAMP,
};
use super::{
    counts_json, new_histogram, parse_duration, percentiles_json, run_generators, CommonArgs,
    DeviceArgs, Live, StartLine, Tokens,
};

#[derive(clap::Args, Debug)]
pub struct P2pArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Users; user 2k and 2k+1 form a pair. Must be even, at least 2.
    #[arg(long, default_value_t = 100)]
    pub users: usize,
    /// Total messages per second across all senders (open loop).
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// Body size in bytes (at least 24: the timestamp, number and sender stamp).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Load before the measured period; its messages are checked but not measured.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// The broker's shard count (needed by --pairs-cross-shard-only).
    #[arg(long, default_value_t = 0)]
    pub shards: usize,
    /// Pick user names so that the two users of every pair live on different shards.
    #[arg(long, requires = "shards")]
    pub pairs_cross_shard_only: bool,
    /// Give up waiting for the tail after this long without progress (what is still unanswered
    /// then counts as unanswered).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    #[command(flatten)]
    pub devices: DeviceArgs,
    /// Run the same workload against an MQTT 3.1.1 broker instead (`mqtt://HOST:PORT`): one
    /// topic per user, QoS 1, persistent sessions; PUBACK stands for SendAck{OK}. --addr and
    /// --secret-file are not used then.
    #[arg(long)]
    pub target: Option<String>,
}

/// What one generator thread saw (also what the MQTT driver reports, [`super::mqtt_p2p`]).
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
    /// When the last measured message arrived, after the run's start.
    pub(super) last_measured: Duration,
    pub(super) login_failures: Vec<String>,
}

/// One user: how its sends were answered, and its devices.
struct UserState {
    name: String,
    tag: u64,
    ledger: RefCell<Ledger>,
    devices: Vec<Rc<Device>>,
}

/// One device (connection) of a user: what it received.
struct Device {
    stream: RefCell<DeviceStream>,
    /// Highest Deliver.seq to ack, set by the reader, sent by the writer task.
    ack_due: Cell<u64>,
}

struct Shared {
    t0: Instant,
    warmup_ns: u64,
    live: Arc<Live>,
    hist: RefCell<Histogram<u64>>,
    tally: RefCell<Tally>,
    acks: RefCell<AckTally>,
    /// Sends written, over all users.
    written: Cell<u64>,
    /// Deliveries owed: for every message acked OK, one per device of its recipient.
    expected: Cell<u64>,
    measured: Cell<u64>,
    last_measured: Cell<Duration>,
    conn_errors: Cell<u64>,
    senders_done: Cell<usize>,
    /// Connections whose reader has ended (closed by the broker or failed).
    readers_closed: Cell<usize>,
    stop: Cell<bool>,
}

impl Shared {
    fn conn_error(&self) {
        self.conn_errors.set(self.conn_errors.get() + 1);
        Live::add(&self.live.errors, 1);
    }
}

pub fn run(args: P2pArgs) -> ExitCode {
    if args.users < 2 || !args.users.is_multiple_of(2) {
        eprintln!("--users must be an even number >= 2");
        return ExitCode::from(2);
    }
    if args.size < STAMP {
        eprintln!("--size must be at least {STAMP} bytes (timestamp, number and sender stamp)");
        return ExitCode::from(2);
    }
    if args.pairs_cross_shard_only && args.shards < 2 {
        eprintln!(
            "--pairs-cross-shard-only needs --shards N with N >= 2 (the broker's shard count)"
        );
        return ExitCode::from(2);
    }
    if args.rate <= 0.0 {
        eprintln!("--rate must be positive");
        return ExitCode::from(2);
    }
    if let Err(e) = args.devices.check() {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    if let Some(target) = args.target.clone() {
        return super::mqtt_p2p::run(&args, &target);
    }
    let tokens = match Tokens::load_or_exit(&args.common) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let names = pair_names(&args);
    let devices = args.devices.plan(args.users);
    let threads = args.common.thread_count().min(args.users / 2).max(1);
    let interval = Duration::from_secs_f64(args.users as f64 / args.rate);
    let total = args.warmup + args.common.duration;
    let per_sender = (total.as_secs_f64() / interval.as_secs_f64())
        .floor()
        .max(1.0) as u64;
    let live = Arc::new(Live::default());
    // Every thread schedules against the same start, a moment after all have logged in.
    let outcomes = run_generators("load", threads, &live, |t, start| {
        let my_pairs: Vec<PairSpec> = names
            .iter()
            .enumerate()
            .skip(t)
            .step_by(threads)
            .map(|(k, (a, b))| PairSpec {
                a: a.clone(),
                b: b.clone(),
                devices: (devices[2 * k], devices[2 * k + 1]),
            })
            .collect();
        let (addr, tokens, live) = (args.common.endpoint(), tokens.clone(), live.clone());
        let cfg = ThreadCfg {
            interval,
            per_sender,
            size: args.size,
            warmup_ns: args.warmup.as_nanos() as u64,
            drain_timeout: args.drain_timeout,
            cross_shard_only: args.pairs_cross_shard_only,
        };
        move || async move { generator(addr, tokens, my_pairs, cfg, live, start).await }
    });
    let outcomes = match outcomes {
        Ok(o) => o,
        Err(code) => return code,
    };
    let multi = devices.iter().filter(|d| **d > 1).count();
    report(&args, outcomes, threads, multi)
}

/// Names for every pair; with --pairs-cross-shard-only, the partner's name is searched until
/// its owner shard differs.
pub(super) fn pair_names(args: &P2pArgs) -> Vec<(String, String)> {
    let run_id: u32 = rand::random();
    (0..args.users / 2)
        .map(|k| {
            let a = format!("load-{run_id:08x}-{}", 2 * k);
            let mut b = format!("load-{run_id:08x}-{}", 2 * k + 1);
            if args.pairs_cross_shard_only && args.shards > 1 {
                let home = ringpost::shard::owner(&a, args.shards);
                let mut j = 0;
                while ringpost::shard::owner(&b, args.shards) == home {
                    j += 1;
                    b = format!("load-{run_id:08x}-{}-{j}", 2 * k + 1);
                }
            }
            (a, b)
        })
        .collect()
}

struct PairSpec {
    a: String,
    b: String,
    /// Devices of a and of b.
    devices: (usize, usize),
}

#[derive(Clone, Copy)]
struct ThreadCfg {
    interval: Duration,
    per_sender: u64,
    size: usize,
    warmup_ns: u64,
    drain_timeout: Duration,
    cross_shard_only: bool,
}

/// Logs in every device of `name`; `Err` names the first that failed.
async fn log_in(
    addr: &super::Endpoint,
    tokens: &Tokens,
    name: &str,
    devices: usize,
) -> Result<Vec<Client>, String> {
    let token = tokens.mint(name)?;
    let mut clients = Vec::with_capacity(devices);
    for d in 0..devices {
        let opts = addr.options(token.clone(), format!("load-d{d}"));
        clients.push(
            Client::connect(&opts, 0)
                .await
                .map_err(|e| format!("{name} device {d}: {e}"))?,
        );
    }
    Ok(clients)
}

async fn generator(
    addr: super::Endpoint,
    tokens: Tokens,
    pairs: Vec<PairSpec>,
    cfg: ThreadCfg,
    live: Arc<Live>,
    start: StartLine,
) -> Result<Outcome, String> {
    // (name, devices) of each user in pair order: user 2p and 2p+1 are partners.
    let mut users: Vec<(String, Vec<Client>)> = Vec::new();
    let mut login_failures = Vec::new();
    let mut conn_errors = 0u64;
    for p in &pairs {
        let a = log_in(&addr, &tokens, &p.a, p.devices.0).await;
        let b = log_in(&addr, &tokens, &p.b, p.devices.1).await;
        match (a, b) {
            (Ok(a), Ok(b)) => {
                if cfg.cross_shard_only && a[0].login_info().shard == b[0].login_info().shard {
                    conn_errors += 1; // the pairing promised different shards and the broker disagrees
                }
                users.push((p.a.clone(), a));
                users.push((p.b.clone(), b));
            }
            (a, b) => login_failures.extend([a.err(), b.err()].into_iter().flatten()),
        }
    }
    let t0 = start.arrive();

    let shared = Rc::new(Shared {
        t0,
        warmup_ns: cfg.warmup_ns,
        live,
        hist: RefCell::new(new_histogram()?),
        tally: RefCell::default(),
        acks: RefCell::default(),
        written: Cell::new(0),
        expected: Cell::new(0),
        measured: Cell::new(0),
        last_measured: Cell::new(Duration::ZERO),
        conn_errors: Cell::new(conn_errors),
        senders_done: Cell::new(0),
        readers_closed: Cell::new(0),
        stop: Cell::new(false),
    });
    let n = cfg.per_sender as usize;
    let states: Vec<Rc<UserState>> = users
        .iter()
        .map(|(name, clients)| {
            Rc::new(UserState {
                name: name.clone(),
                tag: verify::sender_tag(name),
                ledger: RefCell::new(Ledger::new(n)),
                devices: clients
                    .iter()
                    .map(|_| {
                        Rc::new(Device {
                            stream: RefCell::new(DeviceStream::new(n)),
                            ack_due: Cell::new(0),
                        })
                    })
                    .collect(),
            })
        })
        .collect();
    let senders = states.len();
    let connections: usize = states.iter().map(|u| u.devices.len()).sum();
    let mut tasks = Vec::new();
    for (i, (_, clients)) in users.into_iter().enumerate() {
        let (me, partner) = (&states[i], &states[i ^ 1]);
        for (d, client) in clients.into_iter().enumerate() {
            // Send something at least twice per heartbeat so the broker's idle timeout never
            // fires.
            let keepalive =
                Duration::from_millis(u64::from(client.login_info().heartbeat_ms.max(200)) / 2);
            let (reader, writer) = client.split();
            let dev = me.devices[d].clone();
            if d == 0 {
                let phase = cfg.interval.mul_f64(rand::random::<f64>());
                tasks.push(glommio::spawn_local(send_loop(
                    shared.clone(),
                    me.clone(),
                    writer,
                    partner.name.clone(),
                    cfg,
                    phase,
                    keepalive,
                )));
            } else {
                tasks.push(glommio::spawn_local(ack_loop(
                    shared.clone(),
                    dev.clone(),
                    writer,
                    keepalive,
                )));
            }
            let receiver = Receiver {
                me: me.clone(),
                partner: partner.clone(),
                dev,
                sends: d == 0,
            };
            glommio::spawn_local(receive_loop(shared.clone(), receiver, reader)).detach();
        }
    }

    // Wait for the senders, then for the tail: every send answered, every OK delivered to
    // every device of its recipient.
    let mut last_progress = (Instant::now(), 0u64);
    let mut next_report = Instant::now() + Duration::from_millis(250);
    loop {
        glommio::timer::sleep(Duration::from_millis(20)).await;
        if Instant::now() >= next_report {
            next_report += Duration::from_millis(250);
            let p99 = shared.hist.borrow().value_at_quantile(0.99);
            shared.live.p99_us.store(p99, Ordering::Relaxed);
        }
        let answered = shared.acks.borrow().answered();
        let unique = shared.tally.borrow().unique;
        let senders_done = shared.senders_done.get() == senders;
        let done =
            senders_done && answered >= shared.written.get() && unique >= shared.expected.get();
        // Nothing more can arrive once every connection is closed.
        let all_closed = shared.readers_closed.get() == connections;
        if done || (senders_done && all_closed) {
            break;
        }
        let progress = answered + shared.tally.borrow().delivered;
        if progress != last_progress.1 {
            last_progress = (Instant::now(), progress);
        } else if senders_done && last_progress.0.elapsed() > cfg.drain_timeout {
            break;
        }
    }
    shared.stop.set(true);
    for t in tasks {
        t.await;
    }

    // Verify every stream: user i's acked sends reach every device of its partner (i ^ 1).
    let mut lost = 0u64;
    let mut unanswered = 0u64;
    for (i, u) in states.iter().enumerate() {
        let ledger = u.ledger.borrow();
        unanswered += ledger.unanswered();
        for dev in &states[i ^ 1].devices {
            lost += count_lost(ledger.answers(), dev.stream.borrow().seen());
        }
    }
    let latency = shared.hist.borrow().clone();
    let acks = shared.acks.borrow().clone();
    let tally = shared.tally.borrow().clone();
    Ok(Outcome {
        written: shared.written.get(),
        acks,
        tally,
        expected: shared.expected.get(),
        measured: shared.measured.get(),
        lost,
        unanswered,
        conn_errors: shared.conn_errors.get(),
        devices: connections as u64,
        latency,
        last_measured: shared.last_measured.get(),
        login_failures,
    })
}

/// While waiting for the next send, pending deliveries are acked once this much time or 100
/// deliveries have passed since the last ack (and every send carries an ack when one is due).
const ACK_EVERY: Duration = Duration::from_millis(50);
/// Sends queued back to back before a flush when the schedule has fallen behind.
const MAX_BATCH: u64 = 64;

async fn send_loop(
    shared: Rc<Shared>,
    me: Rc<UserState>,
    mut writer: Writer,
    partner: String,
    cfg: ThreadCfg,
    phase: Duration,
    keepalive: Duration,
) {
    let dev = me.devices[0].clone();
    let mut body = vec![0u8; cfg.size];
    let mut acked_up_to = 0u64;
    let mut last_write = Instant::now();
    let mut last_ack = Instant::now();
    let intended_at = |k: u64| shared.t0 + phase + cfg.interval.mul_f64((k - 1) as f64);
    let mut k = 1u64;
    'run: while k <= cfg.per_sender {
        // Until the next send is due: ack what arrived (every ACK_EVERY) and keep the
        // connection alive when the schedule is sparse.
        loop {
            let wait = intended_at(k).saturating_duration_since(Instant::now());
            if wait.is_zero() {
                break;
            }
            glommio::timer::sleep(wait.min(ACK_EVERY)).await;
            let due = dev.ack_due.get();
            let ack =
                due > acked_up_to && (due - acked_up_to >= 100 || last_ack.elapsed() >= ACK_EVERY);
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
        let due = dev.ack_due.get();
        if due > acked_up_to {
            writer.queue(&ClientMsg::Ack { up_to_seq: due });
            acked_up_to = due;
            last_ack = Instant::now();
        }
        // Queue every send whose time has come (one when on schedule, a batch when behind:
        // a scheduled send is never skipped), then flush them together. A send counts as
        // written (and owes an answer) from the moment it is queued.
        let first = k;
        while k <= cfg.per_sender && k - first < MAX_BATCH {
            let intended = intended_at(k);
            if k > first && intended > Instant::now() {
                break;
            }
            let stamp = Stamp {
                intended_ns: (intended - shared.t0).as_nanos() as u64,
                k,
                tag: me.tag,
            };
            verify::write_stamp(&mut body, stamp);
            writer.queue(&ClientMsg::Send {
                client_msg_id: k,
                to_user: &partner,
                body: &body,
            });
            me.ledger.borrow_mut().wrote(k);
            k += 1;
        }
        shared.written.set(shared.written.get() + (k - first));
        Live::add(&shared.live.sent, k - first);
        if writer.flush().await.is_err() {
            shared.conn_error();
            break;
        }
        last_write = Instant::now();
    }
    shared.senders_done.set(shared.senders_done.get() + 1);
    // Keep acking what arrives until the run is over, so inboxes drain.
    ack_until_stop(&shared, &dev, &mut writer, acked_up_to, keepalive).await;
}

/// A receiving-only device: acks what arrives and keeps the connection alive.
async fn ack_loop(shared: Rc<Shared>, dev: Rc<Device>, mut writer: Writer, keepalive: Duration) {
    ack_until_stop(&shared, &dev, &mut writer, 0, keepalive).await;
}

async fn ack_until_stop(
    shared: &Shared,
    dev: &Device,
    writer: &mut Writer,
    mut acked_up_to: u64,
    keepalive: Duration,
) {
    let mut last_write = Instant::now();
    while !shared.stop.get() {
        glommio::timer::sleep(Duration::from_millis(20)).await;
        let due = dev.ack_due.get();
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

/// What one connection's reader checks against.
struct Receiver {
    me: Rc<UserState>,
    partner: Rc<UserState>,
    dev: Rc<Device>,
    /// Device 0, the one that sends: the only one SendAcks may come to.
    sends: bool,
}

async fn receive_loop(shared: Rc<Shared>, r: Receiver, mut reader: Reader) {
    loop {
        match reader.recv().await {
            Ok(Event::SendAck {
                client_msg_id,
                status,
            }) => {
                if !r.sends {
                    shared.acks.borrow_mut().mismatched += 1; // this device sent nothing
                    Live::add(&shared.live.errors, 1);
                    continue;
                }
                let outcome = r.me.ledger.borrow_mut().on_ack(
                    &mut shared.acks.borrow_mut(),
                    client_msg_id,
                    status,
                );
                match outcome {
                    AckOutcome::Ok => {
                        let owed = r.partner.devices.len() as u64;
                        shared.expected.set(shared.expected.get() + owed);
                        Live::add(&shared.live.acked, 1);
                    }
                    AckOutcome::Refused => Live::add(&shared.live.errors, 1),
                    AckOutcome::Ignored => {}
                }
            }
            Ok(Event::Deliver(d)) if d.outgoing => {
                // Own-send sync: the echo of one of this user's sends, in the same stream.
                let mut stream = r.dev.stream.borrow_mut();
                stream.echo(&mut shared.tally.borrow_mut(), d.seq);
                r.dev.ack_due.set(stream.last_seq());
            }
            Ok(Event::Deliver(d)) => {
                let received = Instant::now();
                Live::add(&shared.live.delivered, 1);
                let expect = Expect {
                    from: &r.partner.name,
                    tag: r.partner.tag,
                    written: r.partner.ledger.borrow().written(),
                };
                let delivered = Delivered {
                    seq: d.seq,
                    from: &d.from_user,
                    client_msg_id: d.client_msg_id,
                    body: &d.body,
                };
                let mut stream = r.dev.stream.borrow_mut();
                let fresh = stream.deliver(&mut shared.tally.borrow_mut(), &delivered, &expect);
                r.dev.ack_due.set(stream.last_seq());
                let Some(stamp) = fresh else {
                    continue;
                };
                if stamp.intended_ns >= shared.warmup_ns {
                    let intended = shared.t0 + Duration::from_nanos(stamp.intended_ns);
                    let us = received.saturating_duration_since(intended).as_micros() as u64;
                    let _ = shared.hist.borrow_mut().record(us.max(1));
                    shared.measured.set(shared.measured.get() + 1);
                    shared
                        .last_measured
                        .set(received.saturating_duration_since(shared.t0));
                }
            }
            Ok(Event::Pong { .. }) | Ok(Event::GroupReply(_)) => {}
            Ok(Event::GoAway { .. }) | Ok(Event::Error { .. }) | Err(_) => {
                if !shared.stop.get() {
                    shared.conn_error();
                }
                shared.readers_closed.set(shared.readers_closed.get() + 1);
                return;
            }
        }
    }
}

pub(super) fn report(
    args: &P2pArgs,
    outcomes: Vec<Outcome>,
    threads: usize,
    multi: usize,
) -> ExitCode {
    let mut latency = match new_histogram() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let (mut written, mut expected, mut measured) = (0, 0, 0);
    let (mut lost, mut unanswered, mut conn_errors, mut devices) = (0, 0, 0, 0);
    let mut acks = AckTally::default();
    let mut tally = Tally::default();
    let mut login_failures = Vec::new();
    let mut last_measured = Duration::ZERO;
    for o in &outcomes {
        last_measured = last_measured.max(o.last_measured);
        written += o.written;
        acks.merge(&o.acks);
        tally.merge(&o.tally);
        expected += o.expected;
        measured += o.measured;
        lost += o.lost;
        unanswered += o.unanswered;
        conn_errors += o.conn_errors;
        devices += o.devices;
        let _ = latency.add(&o.latency);
        login_failures.extend(o.login_failures.iter().cloned());
    }
    if outcomes.len() < threads {
        conn_errors += 1;
    }
    let mismatched = tally.mismatched + acks.mismatched;
    let error_acks = acks.error_acks_total();
    let errors = conn_errors + error_acks + mismatched + login_failures.len() as u64;
    // Delivered messages over the time it really took to deliver them: when the broker falls
    // behind, the tail drained after the run stretches the denominator instead of inflating
    // the rate.
    let window = args
        .common
        .duration
        .max(last_measured.saturating_sub(args.warmup));
    let throughput = measured as f64 / window.as_secs_f64().max(f64::EPSILON);
    let lat = percentiles_json(&latency);
    if args.common.json {
        println!(
            "{}",
            json!({
                "scenario": "p2p", "target": args.target.as_deref().unwrap_or("ringpost"),
                "sent": written, "acked": acks.acked,
                "delivered": tally.delivered, "unique_delivered": tally.unique,
                "expected_deliveries": expected, "echoes": tally.echoes,
                "lost": lost, "duplicated": tally.duplicated, "out_of_order": tally.out_of_order,
                "seq_gaps": tally.seq_gaps, "mismatched": mismatched,
                "unanswered": unanswered, "error_acks": counts_json(&acks.error_acks),
                "duplicate_acks": acks.duplicate_acks,
                "errors": errors,
                "throughput_per_s": (throughput * 10.0).round() / 10.0,
                "latency_us": lat,
                "users": args.users, "devices": devices,
                "devices_per_user": args.devices.devices_per_user, "multi_device_users": multi,
                "rate": args.rate, "size": args.size,
                "duration_s": args.common.duration.as_secs_f64(),
                "warmup_s": args.warmup.as_secs_f64(), "threads": threads,
            })
        );
    } else {
        println!(
            "scenario          p2p ({} users, {devices} devices, {} msg/s offered, {} B)",
            args.users, args.rate, args.size
        );
        println!("sent / acked      {written} / {}", acks.acked);
        println!(
            "delivered         {} ({} unique of {expected} owed to devices)",
            tally.delivered, tally.unique
        );
        println!(
            "lost / dup / ooo  {lost} / {} / {}",
            tally.duplicated, tally.out_of_order
        );
        println!("seq gaps          {}", tally.seq_gaps);
        println!("unanswered        {unanswered} (sends never answered)");
        println!(
            "error acks        {error_acks} ({})",
            counts_text(&acks.error_acks)
        );
        println!("mismatched        {mismatched}");
        println!("errors            {errors}");
        println!("throughput        {throughput:.0} msg/s (measured period)");
        println!(
            "latency µs        p50 {} p90 {} p99 {} p99.9 {} p99.99 {} max {}",
            lat["p50"], lat["p90"], lat["p99"], lat["p999"], lat["p9999"], lat["max"]
        );
    }
    if !login_failures.is_empty() {
        for f in login_failures.iter().take(5) {
            eprintln!("login failed: {f}");
        }
        return ExitCode::from(2);
    }
    let failed = failures(&[
        ("lost", lost),
        ("duplicated", tally.duplicated),
        ("out_of_order", tally.out_of_order),
        ("seq_gaps", tally.seq_gaps),
        ("mismatched", mismatched),
        ("unanswered", unanswered),
        ("error_acks", error_acks),
        ("connection_errors", conn_errors),
    ]);
    if !failed.is_empty() {
        let codes = if acks.error_acks.is_empty() {
            String::new()
        } else {
            format!(" ({})", counts_text(&acks.error_acks))
        };
        eprintln!("FAILED: {failed}{codes}");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// `name=n` for each non-zero count, space-separated.
fn failures(counts: &[(&str, u64)]) -> String {
    let named: BTreeMap<&str, u64> = counts.iter().filter(|(_, n)| *n > 0).copied().collect();
    named
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

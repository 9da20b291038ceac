//! `load p2p`: pairs of users send to each other at an open-loop total rate.
//!
//! Each sender follows a fixed schedule (one message every `users / rate` seconds, random phase)
//! and stamps each body with its *intended* send time and a per-sender sequence number. Latency
//! is measured from the intended time, so a stalled broker shows up as latency instead of
//! silently slowing the generator (coordinated-omission correction). After the run it waits
//! for the tail, then checks every stream: each message acked OK is delivered exactly once, in
//! order, and each receiver's `Deliver.seq` strictly increases.

use std::cell::{Cell, RefCell};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ringpost::client::{Client, Event, Reader, Writer};
use ringpost::protocol::Code;
use serde_json::json;

use super::{
    new_histogram, parse_duration, percentiles_json, run_generators, CommonArgs, Live, StartLine,
    Tokens,
};

/// Bytes at the start of every body: intended send time (ns after the run's start), then the
/// sender's sequence number, both u64 little-endian.
const STAMP: usize = 16;

#[derive(clap::Args, Debug)]
pub struct P2pArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Users (connections); user 2k and 2k+1 form a pair. Must be even, at least 2.
    #[arg(long, default_value_t = 100)]
    pub users: usize,
    /// Total messages per second across all senders (open loop).
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// Body size in bytes (at least 16: the timestamp and sequence stamp).
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
    /// Give up waiting for the tail after this long without progress.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

/// What one generator thread saw.
struct Outcome {
    sent: u64,
    acked: u64,
    delivered: u64,
    measured: u64,
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
    errors: u64,
    latency: Histogram<u64>,
    /// When the last measured message arrived, after the run's start.
    last_measured: Duration,
    login_failures: Vec<String>,
}

/// One user's view: what it sent (and how it was acked) and what it received.
struct UserState {
    sent: Cell<u64>,
    /// `acked_ok[k]`: the send with sequence k+1 got SendAck{OK}.
    acked_ok: RefCell<Vec<bool>>,
    /// `seen[k]`: the partner's message k+1 was delivered here.
    seen: RefCell<Vec<bool>>,
    max_seen: Cell<u64>,
    last_seq: Cell<u64>,
    /// Highest Deliver.seq to ack, set by the reader, sent by the writer task.
    ack_due: Cell<u64>,
}

struct Shared {
    t0: Instant,
    warmup_ns: u64,
    live: Arc<Live>,
    hist: RefCell<Histogram<u64>>,
    acked: Cell<u64>,
    nacked: Cell<u64>,
    delivered: Cell<u64>,
    measured: Cell<u64>,
    last_measured: Cell<Duration>,
    duplicated: Cell<u64>,
    out_of_order: Cell<u64>,
    errors: Cell<u64>,
    senders_done: Cell<usize>,
    /// Connections whose reader has ended (closed by the broker or failed).
    readers_closed: Cell<usize>,
    stop: Cell<bool>,
}

pub fn run(args: P2pArgs) -> ExitCode {
    if args.users < 2 || !args.users.is_multiple_of(2) {
        eprintln!("--users must be an even number >= 2");
        return ExitCode::from(2);
    }
    if args.size < STAMP {
        eprintln!("--size must be at least {STAMP} bytes (timestamp + sequence stamp)");
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
    let tokens = match Tokens::load_or_exit(&args.common) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let names = pair_names(&args);
    let threads = args.common.thread_count().min(args.users / 2).max(1);
    let interval = Duration::from_secs_f64(args.users as f64 / args.rate);
    let total = args.warmup + args.common.duration;
    let per_sender = (total.as_secs_f64() / interval.as_secs_f64())
        .floor()
        .max(1.0) as u64;
    let live = Arc::new(Live::default());
    // Every thread schedules against the same start, a moment after all have logged in.
    let outcomes = run_generators("load", threads, &live, |t, start| {
        let my_pairs: Vec<(String, String)> =
            names.iter().skip(t).step_by(threads).cloned().collect();
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
    report(&args, outcomes, threads)
}

/// Names for every pair; with --pairs-cross-shard-only, the partner's name is searched until
/// its owner shard differs.
fn pair_names(args: &P2pArgs) -> Vec<(String, String)> {
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

#[derive(Clone, Copy)]
struct ThreadCfg {
    interval: Duration,
    per_sender: u64,
    size: usize,
    warmup_ns: u64,
    drain_timeout: Duration,
    cross_shard_only: bool,
}

async fn generator(
    addr: super::Endpoint,
    tokens: Tokens,
    pairs: Vec<(String, String)>,
    cfg: ThreadCfg,
    live: Arc<Live>,
    start: StartLine,
) -> Result<Outcome, String> {
    let mut clients: Vec<(String, String, Client)> = Vec::new();
    let mut login_failures = Vec::new();
    let mut errors = 0u64;
    for (a, b) in &pairs {
        let mut pair = Vec::new();
        for (me, partner) in [(a, b), (b, a)] {
            let opts = addr.options(tokens.mint(me)?, "load");
            match Client::connect(&opts, 0).await {
                Ok(c) => pair.push((me.clone(), partner.clone(), c)),
                Err(e) => login_failures.push(format!("{me}: {e}")),
            }
        }
        if pair.len() == 2 {
            if cfg.cross_shard_only && pair[0].2.login_info().shard == pair[1].2.login_info().shard
            {
                errors += 1; // the pairing promised different shards and the broker disagrees
            }
            clients.extend(pair);
        }
    }
    let t0 = start.arrive();

    let shared = Rc::new(Shared {
        t0,
        warmup_ns: cfg.warmup_ns,
        live,
        hist: RefCell::new(new_histogram()?),
        acked: Cell::new(0),
        nacked: Cell::new(0),
        delivered: Cell::new(0),
        measured: Cell::new(0),
        last_measured: Cell::new(Duration::ZERO),
        duplicated: Cell::new(0),
        out_of_order: Cell::new(0),
        errors: Cell::new(errors),
        senders_done: Cell::new(0),
        readers_closed: Cell::new(0),
        stop: Cell::new(false),
    });
    let n = cfg.per_sender as usize;
    let users: Vec<Rc<UserState>> = clients
        .iter()
        .map(|_| {
            Rc::new(UserState {
                sent: Cell::new(0),
                acked_ok: RefCell::new(vec![false; n]),
                seen: RefCell::new(vec![false; n]),
                max_seen: Cell::new(0),
                last_seq: Cell::new(0),
                ack_due: Cell::new(0),
            })
        })
        .collect();
    let senders = clients.len();
    let mut tasks = Vec::new();
    for (i, (_me, partner, client)) in clients.into_iter().enumerate() {
        // Send something at least twice per heartbeat so the broker's idle timeout never fires.
        let keepalive =
            Duration::from_millis(u64::from(client.login_info().heartbeat_ms.max(200)) / 2);
        let (reader, writer) = client.split();
        let phase = cfg.interval.mul_f64(rand::random::<f64>());
        tasks.push(glommio::spawn_local(send_loop(
            shared.clone(),
            users[i].clone(),
            writer,
            partner,
            cfg,
            phase,
            keepalive,
        )));
        glommio::spawn_local(receive_loop(shared.clone(), users[i].clone(), reader)).detach();
    }

    // Wait for the senders, then for the tail: every send answered, every OK delivered.
    let mut last_progress = (Instant::now(), 0u64);
    let mut next_report = Instant::now() + Duration::from_millis(250);
    loop {
        glommio::timer::sleep(Duration::from_millis(20)).await;
        if Instant::now() >= next_report {
            next_report += Duration::from_millis(250);
            let p99 = shared.hist.borrow().value_at_quantile(0.99);
            shared.live.p99_us.store(p99, Ordering::Relaxed);
        }
        let sent: u64 = users.iter().map(|u| u.sent.get()).sum();
        let answered = shared.acked.get() + shared.nacked.get();
        let done = shared.senders_done.get() == senders
            && answered >= sent
            && shared.delivered.get() >= shared.acked.get();
        // Nothing more can arrive once every connection is closed.
        let all_closed = shared.readers_closed.get() == senders;
        if done || (shared.senders_done.get() == senders && all_closed) {
            break;
        }
        let progress = answered + shared.delivered.get();
        if progress != last_progress.1 {
            last_progress = (Instant::now(), progress);
        } else if shared.senders_done.get() == senders
            && last_progress.0.elapsed() > cfg.drain_timeout
        {
            break;
        }
    }
    shared.stop.set(true);
    for t in tasks {
        t.await;
    }

    // Verify every stream: user i's sends are received by its partner (i ^ 1).
    let mut lost = 0u64;
    for (i, u) in users.iter().enumerate() {
        let partner = &users[i ^ 1];
        let acked = u.acked_ok.borrow();
        let seen = partner.seen.borrow();
        lost += acked
            .iter()
            .zip(seen.iter())
            .filter(|(a, s)| **a && !**s)
            .count() as u64;
    }
    let sent = users.iter().map(|u| u.sent.get()).sum();
    let latency = shared.hist.borrow().clone();
    Ok(Outcome {
        sent,
        acked: shared.acked.get(),
        delivered: shared.delivered.get(),
        measured: shared.measured.get(),
        lost,
        duplicated: shared.duplicated.get(),
        out_of_order: shared.out_of_order.get(),
        errors: shared.errors.get() + shared.nacked.get(),
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
            let due = me.ack_due.get();
            let ack =
                due > acked_up_to && (due - acked_up_to >= 100 || last_ack.elapsed() >= ACK_EVERY);
            let ping = last_write.elapsed() >= keepalive;
            if ack || ping {
                if ack {
                    last_ack = Instant::now();
                    writer.queue(&ringpost::protocol::ClientMsg::Ack { up_to_seq: due });
                    acked_up_to = due;
                }
                if ping {
                    writer.queue(&ringpost::protocol::ClientMsg::Ping { nonce: k });
                }
                if writer.flush().await.is_err() {
                    shared.errors.set(shared.errors.get() + 1);
                    Live::add(&shared.live.errors, 1);
                    break 'run;
                }
                last_write = Instant::now();
            }
        }
        let due = me.ack_due.get();
        if due > acked_up_to {
            writer.queue(&ringpost::protocol::ClientMsg::Ack { up_to_seq: due });
            acked_up_to = due;
            last_ack = Instant::now();
        }
        // Queue every send whose time has come (one when on schedule, a batch when behind:
        // a scheduled send is never skipped), then flush them together.
        let first = k;
        while k <= cfg.per_sender && k - first < MAX_BATCH {
            let intended = intended_at(k);
            if k > first && intended > Instant::now() {
                break;
            }
            let stamp = (intended - shared.t0).as_nanos() as u64;
            body[..8].copy_from_slice(&stamp.to_le_bytes());
            body[8..STAMP].copy_from_slice(&k.to_le_bytes());
            writer.queue(&ringpost::protocol::ClientMsg::Send {
                client_msg_id: k,
                to_user: &partner,
                body: &body,
            });
            k += 1;
        }
        if writer.flush().await.is_err() {
            shared.errors.set(shared.errors.get() + 1);
            Live::add(&shared.live.errors, 1);
            break;
        }
        last_write = Instant::now();
        me.sent.set(k - 1);
        Live::add(&shared.live.sent, k - first);
    }
    shared.senders_done.set(shared.senders_done.get() + 1);
    // Keep acking what arrives until the run is over, so inboxes drain.
    while !shared.stop.get() {
        glommio::timer::sleep(Duration::from_millis(20)).await;
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

async fn receive_loop(shared: Rc<Shared>, me: Rc<UserState>, mut reader: Reader) {
    loop {
        match reader.recv().await {
            Ok(Event::SendAck {
                client_msg_id,
                status,
            }) => {
                if status == Code::OK {
                    if let Some(slot) = me
                        .acked_ok
                        .borrow_mut()
                        .get_mut((client_msg_id as usize).wrapping_sub(1))
                    {
                        *slot = true;
                    }
                    shared.acked.set(shared.acked.get() + 1);
                    Live::add(&shared.live.acked, 1);
                } else {
                    shared.nacked.set(shared.nacked.get() + 1);
                    Live::add(&shared.live.errors, 1);
                }
            }
            Ok(Event::Deliver(d)) => {
                let received = Instant::now();
                shared.delivered.set(shared.delivered.get() + 1);
                Live::add(&shared.live.delivered, 1);
                if d.seq <= me.last_seq.get() {
                    shared.out_of_order.set(shared.out_of_order.get() + 1);
                }
                me.last_seq.set(d.seq);
                me.ack_due.set(d.seq);
                let (Some(stamp), Some(n)) = (read_u64(&d.body, 0), read_u64(&d.body, 8)) else {
                    shared.errors.set(shared.errors.get() + 1);
                    continue;
                };
                match me.seen.borrow_mut().get_mut((n as usize).wrapping_sub(1)) {
                    Some(seen) if *seen => shared.duplicated.set(shared.duplicated.get() + 1),
                    Some(seen) => {
                        *seen = true;
                        if n < me.max_seen.get() {
                            shared.out_of_order.set(shared.out_of_order.get() + 1);
                        }
                        me.max_seen.set(me.max_seen.get().max(n));
                    }
                    None => shared.errors.set(shared.errors.get() + 1),
                }
                if stamp >= shared.warmup_ns {
                    let intended = shared.t0 + Duration::from_nanos(stamp);
                    let us = received.saturating_duration_since(intended).as_micros() as u64;
                    let _ = shared.hist.borrow_mut().record(us.max(1));
                    shared.measured.set(shared.measured.get() + 1);
                    shared
                        .last_measured
                        .set(received.saturating_duration_since(shared.t0));
                }
            }
            Ok(Event::Pong { .. }) => {}
            Ok(Event::GoAway { .. }) | Ok(Event::Error { .. }) | Err(_) => {
                if !shared.stop.get() {
                    shared.errors.set(shared.errors.get() + 1);
                    Live::add(&shared.live.errors, 1);
                }
                shared.readers_closed.set(shared.readers_closed.get() + 1);
                return;
            }
        }
    }
}

fn read_u64(body: &[u8], at: usize) -> Option<u64> {
    body.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
}

fn report(args: &P2pArgs, outcomes: Vec<Outcome>, threads: usize) -> ExitCode {
    let mut latency = match new_histogram() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let (mut sent, mut acked, mut delivered, mut measured) = (0, 0, 0, 0);
    let (mut lost, mut duplicated, mut out_of_order, mut errors) = (0, 0, 0, 0);
    let mut login_failures = Vec::new();
    let mut last_measured = Duration::ZERO;
    for o in &outcomes {
        last_measured = last_measured.max(o.last_measured);
        sent += o.sent;
        acked += o.acked;
        delivered += o.delivered;
        measured += o.measured;
        lost += o.lost;
        duplicated += o.duplicated;
        out_of_order += o.out_of_order;
        errors += o.errors;
        let _ = latency.add(&o.latency);
        login_failures.extend(o.login_failures.iter().cloned());
    }
    if outcomes.len() < threads {
        errors += 1;
    }
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
                "scenario": "p2p", "sent": sent, "acked": acked, "delivered": delivered,
                "lost": lost, "duplicated": duplicated, "out_of_order": out_of_order,
                "errors": errors + login_failures.len() as u64,
                "throughput_per_s": (throughput * 10.0).round() / 10.0,
                "latency_us": lat,
                "users": args.users, "rate": args.rate, "size": args.size,
                "duration_s": args.common.duration.as_secs_f64(),
                "warmup_s": args.warmup.as_secs_f64(), "threads": threads,
            })
        );
    } else {
        println!(
            "scenario          p2p ({} users, {} msg/s offered, {} B)",
            args.users, args.rate, args.size
        );
        println!("sent / acked      {sent} / {acked}");
        println!("delivered         {delivered}");
        println!("lost / dup / ooo  {lost} / {duplicated} / {out_of_order}");
        println!("errors            {}", errors + login_failures.len() as u64);
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
    if lost + duplicated + out_of_order > 0 {
        eprintln!("FAILED: lost={lost} duplicated={duplicated} out_of_order={out_of_order}");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

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
//! `--target mqtt://HOST:PORT` runs the same workload against an MQTT 3.1.1 broker
//! ([`mqtt`]: a group is a topic its members subscribe to).
//!
//! Exit status 1 on any loss, duplicate, reorder, gap, mismatch, unanswered send, error ack or
//! failed connection; 2 on bad arguments or a failed set-up.
//!
//! Files: [`plan`] (who is where, and the checks on every entry a member gets), [`native`]
//! (ringpost clients: set-up, generator tasks, replays), [`mqtt`] (the same over MQTT),
//! [`shared`] (what a thread's tasks and the threads share), [`record`] (the crash-test
//! record), [`totals`] (the sums and the losses); this file runs the phases and reports.

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

mod mqtt;
mod native;
mod plan;
mod record;
mod shared;
mod totals;

use native::*;
use plan::*;
use record::*;
use shared::*;
use totals::*;

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
    /// Run the same workload against an MQTT 3.1.1 broker (`mqtt://HOST:PORT`): a group is a
    /// topic `rg/<group>` its members subscribe to (QoS 1, persistent sessions), a group send
    /// a QoS 1 PUBLISH to it; offline members subscribe once before the sends and reconnect
    /// afterwards for what their sessions queued. Only --phase all.
    #[arg(long)]
    pub target: Option<String>,
    /// Replays run at once (offline members after the sends, every member in --phase verify).
    #[arg(long, default_value_t = 32)]
    pub replay_concurrency: usize,
}

/// How the members reach the broker under test.
#[derive(Clone)]
enum Via {
    Ringpost { endpoint: Endpoint, tokens: Tokens },
    Mqtt(std::net::SocketAddr),
}

// ---- the scenario ----------------------------------------------------------------------------

pub fn run(args: FanoutArgs) -> ExitCode {
    if let Err(e) = check_args(&args) {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    let via = match &args.target {
        Some(t) => match super::mqtt::parse_target(t) {
            Ok(addr) => Via::Mqtt(addr),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        },
        None => match Tokens::load_or_exit(&args.common) {
            Ok(tokens) => Via::Ringpost {
                endpoint: args.common.endpoint(),
                tokens,
            },
            Err(code) => return code,
        },
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
    if let (Phase::Verify, Via::Ringpost { endpoint, tokens }) = (args.phase, &via) {
        return verify_phase(&args, endpoint, tokens);
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

    let record = match open_record(&args, &plan) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let set_up = match &via {
        Via::Ringpost { endpoint, tokens } => {
            on_executor(set_up_groups(endpoint, tokens, &plan, args.create_chunk))
        }
        Via::Mqtt(addr) => on_executor(mqtt::set_up_sessions(*addr, &plan)),
    };
    if let Err(e) = set_up {
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
            via: via.clone(),
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
        move || -> GeneratorFuture {
            match cfg.via {
                Via::Ringpost { .. } => Box::pin(generator(cfg, mine, start)),
                Via::Mqtt(_) => Box::pin(mqtt::generator(cfg, mine, start)),
            }
        }
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
    let offline: Vec<usize> = (0..plan.users.len())
        .filter(|&u| !plan.users[u].online)
        .collect();
    if args.phase == Phase::All && !offline.is_empty() {
        let n = args.replay_concurrency;
        let replay = match &via {
            Via::Ringpost { endpoint, tokens } => {
                on_executor(replay_members(endpoint, tokens, &plan, &offline, n))
            }
            Via::Mqtt(addr) => on_executor(mqtt::replay_members(*addr, &plan, &offline, &totals)),
        };
        match replay {
            Ok(r) => totals.add_replay(r),
            Err(e) => {
                eprintln!("replay failed: {e}");
                totals.conn_errors += 1;
            }
        }
    }
    let logs = log_before.zip(log_after).map(|(b, a)| b.growth(&a));
    report(&args, &plan, totals, logs)
}

/// A generator thread's work, whichever broker it talks to.
type GeneratorFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Outcome, String>>>>;

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
    if args.target.is_some() && (args.phase != Phase::All || args.data_dir.is_some()) {
        return Err("--phase send/verify and --data-dir are for ringpost, not --target".into());
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

fn verify_phase(args: &FanoutArgs, endpoint: &Endpoint, tokens: &Tokens) -> ExitCode {
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
    let replay = on_executor(replay_members(
        endpoint,
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
                "target": args.target.as_deref().unwrap_or("ringpost"),
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

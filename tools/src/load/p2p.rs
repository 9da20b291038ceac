//! `load p2p`: pairs of users send to each other at an open-loop total rate.
//!
//! Each sender follows a fixed schedule (one message every `users / rate` seconds, random phase)
//! and stamps each body ([`super::verify::write_stamp`]) with its *intended* send time, its
//! message number and its name's tag. Latency is measured from the intended time, so a stalled
//! broker shows up as latency instead of silently slowing the generator (coordinated-omission
//! correction). With `--devices-per-user N`, a share of the users log in with N devices: device
//! 0 sends, every device receives and acks.
//!
//! After the schedule it waits for the tail (every send answered, every message acked OK
//! delivered to every device of its recipient, and once echoes are seen, its echo on every
//! device of its sender) until `--drain-timeout` passes without progress
//! or every connection is gone, then checks and reports. (Own-send sync: the sending device is
//! not sent its copy; the `own_seq` of its SendAck marks the hole in its stream, which counts
//! with the echoes and is not a gap.)
//!
//! - **lost**: acked OK and never delivered, counted per device of the recipient;
//! - **duplicated**, **out_of_order**, **seq_gaps**: per device
//!   ([`super::verify::DeviceStream`]);
//! - **mismatched**: deliveries whose sender, `client_msg_id` or body stamp disagree with what
//!   the partner sent (a misrouted message), and SendAcks for numbers never sent;
//! - **unanswered**: sends written and never answered by the end of the drain;
//! - **error_acks**: sends answered with a code other than OK, by code name.
//!
//! `--target mqtt://HOST:PORT` runs the same workload against an MQTT 3.1.1 broker ([`mqtt`]),
//! with the same schedule, stamps, checks and report.
//!
//! Exit status 1 when any of those is non-zero (or a connection failed during the run), 2 on
//! bad arguments or failed logins, 0 otherwise.
//!
//! Files: [`native`] (ringpost clients: logins, the send, ack and receive tasks), [`mqtt`] (the
//! same over MQTT), [`shared`] (what is the same over both: the schedule and a sender's walk
//! through it, a thread's counters and tallies, the wait for the tail, the thread's
//! [`Outcome`]); this file checks the arguments, names the pairs and reports.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;

use super::verify::{counts_text, AckTally, Tally, STAMP};
use super::{counts_json, new_histogram, parse_duration, percentiles_json, CommonArgs, DeviceArgs};

mod mqtt;
mod native;
mod shared;

use shared::{Outcome, Schedule};

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
    let sched = Schedule::of(&args);
    match args.target.clone() {
        Some(target) => mqtt::run(&args, &target, sched),
        None => native::run(&args, sched),
    }
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

fn report(args: &P2pArgs, outcomes: Vec<Outcome>, threads: usize, multi: usize) -> ExitCode {
    let (mut latency, mut send_lag) = match (new_histogram(), new_histogram()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
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
        let _ = send_lag.add(&o.send_lag);
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
    let lag = percentiles_json(&send_lag);
    if args.common.json {
        println!(
            "{}",
            json!({
                "scenario": "p2p", "target": args.target.as_deref().unwrap_or("ringpost"),
                "sent": written, "acked": acks.acked,
                "delivered": tally.delivered, "unique_delivered": tally.unique,
                "expected_deliveries": expected, "echoes": tally.echoes,
                "own_copies": tally.own_copies,
                "lost": lost, "duplicated": tally.duplicated, "out_of_order": tally.out_of_order,
                "seq_gaps": tally.seq_gaps, "mismatched": mismatched,
                "unanswered": unanswered, "error_acks": counts_json(&acks.error_acks),
                "duplicate_acks": acks.duplicate_acks,
                "errors": errors,
                "throughput_per_s": (throughput * 10.0).round() / 10.0,
                "latency_us": lat, "send_lag_us": lag,
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
        println!(
            "send lag µs       p50 {} p99 {} p99.9 {} max {} (the generator's own lateness, inside latency)",
            lag["p50"], lag["p99"], lag["p999"], lag["max"]
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

//! `load offline`: messages to users who are offline, then their replay at login.
//!
//! Senders `off-<run>-s<i>` each send their share of `--messages` to recipient `off-<run>-r<i>`
//! while the recipients are offline; then the recipients log in as new devices
//! (`--verify-concurrency` of them at once) and receive everything from the log. Checks: every
//! message acked OK is delivered exactly once, in seq order, from its sender with its
//! `client_msg_id` (anything else is **mismatched**). Every send must be answered: one never
//! answered (the broker closed the connection, or no SendAck came for `--ack-timeout`) is
//! **unanswered**, one answered with another code than OK is an **error ack** (by code); either
//! fails the run. Reports send throughput, send→ack latency and replay msgs/s.
//!
//! For crash tests the two halves run separately: `--phase send --record FILE` appends a line
//! per SendAck{OK} to FILE and flushes it at once (so killing the broker mid-run leaves a true
//! record of what was acknowledged; the sends the kill left unanswered make that phase exit 1,
//! and its JSON says how many), and `--phase verify --record FILE` logs the recipients in and
//! checks that every recorded message arrives exactly once, in order.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;
use glommio::{LocalExecutorBuilder, Placement};
use ringpost::client::{Client, Event};
use serde_json::json;

use super::verify::{counts_text, AckOutcome, AckTally, Ledger};
use super::{counts_json, new_histogram, parse_duration, percentiles_json, CommonArgs, Tokens};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    All,
    Send,
    Verify,
}

#[derive(clap::Args, Debug)]
pub struct OfflineArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Recipients (and as many senders).
    #[arg(long, default_value_t = 10)]
    pub users: usize,
    /// Messages in total.
    #[arg(long, default_value_t = 10_000)]
    pub messages: u64,
    /// Body size in bytes (at least 8).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    #[arg(long, value_enum, default_value_t = Phase::All)]
    pub phase: Phase,
    /// Record of acknowledged messages (written by --phase send, read by --phase verify).
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// A connection with sends outstanding that gets no SendAck for this long gives up: its
    /// outstanding sends count as unanswered and the run fails.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub ack_timeout: Duration,
    /// Recipients logging in and replaying at once in the verify phase (each a connection of
    /// its own; 1 = one after another).
    #[arg(long, default_value_t = 64)]
    pub verify_concurrency: usize,
}

pub fn run(args: OfflineArgs) -> ExitCode {
    if args.size < 8 || args.users == 0 {
        eprintln!("--size must be at least 8 and --users at least 1");
        return ExitCode::from(2);
    }
    if args.phase != Phase::All && args.record.is_none() {
        eprintln!("--phase send/verify needs --record FILE");
        return ExitCode::from(2);
    }
    let tokens = match Tokens::load_or_exit(&args.common) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let ex = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(256 * 1024)
        .make();
    match ex {
        Ok(ex) => ex.run(scenario(args, tokens)),
        Err(e) => {
            eprintln!("cannot start the event loop: {e}");
            ExitCode::from(2)
        }
    }
}

/// (recipient index, client_msg_id) of every message acked OK.
type Acked = Vec<(usize, u64)>;

async fn scenario(args: OfflineArgs, tokens: Tokens) -> ExitCode {
    let (run_id, acked, send_report) = match args.phase {
        Phase::Verify => match read_record(args.record.as_deref()) {
            Ok((run_id, users, acked)) if users == args.users => (run_id, acked, None),
            Ok((_, users, _)) => {
                eprintln!("the record was written with --users {users}");
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("cannot read the record: {e}");
                return ExitCode::from(2);
            }
        },
        _ => {
            let run_id: u32 = rand::random();
            match send(&args, &tokens, run_id).await {
                Ok((acked, report)) => (run_id, acked, Some(report)),
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    let send_failed = send_report.as_ref().is_some_and(|r| r.failed());
    if let Some(r) = &send_report {
        r.explain();
    }
    if args.phase == Phase::Send {
        let r = send_report.unwrap_or_default();
        if args.common.json {
            let mut v = r.json();
            v["phase"] = json!("send");
            println!("{v}");
        } else {
            println!(
                "sent {}, acked {}, unanswered {}, error acks {} ({}), errors {}; record in {:?}",
                r.sent,
                r.acks.acked,
                r.unanswered,
                r.acks.error_acks_total(),
                counts_text(&r.acks.error_acks),
                r.errors(),
                args.record
            );
        }
        return if send_failed {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        };
    }
    let verdict = match verify(&args, &tokens, run_id, &acked).await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let r = send_report.unwrap_or_else(|| SendReport {
        acks: AckTally {
            acked: acked.len() as u64,
            ..AckTally::default()
        },
        ..SendReport::default()
    });
    let v = &verdict;
    if args.common.json {
        let mut out = r.json();
        out["delivered"] = json!(v.delivered);
        out["lost"] = json!(v.lost.len());
        out["duplicated"] = json!(v.duplicated);
        out["out_of_order"] = json!(v.out_of_order);
        out["mismatched"] = json!(r.acks.mismatched + v.mismatched);
        out["errors"] = json!(r.errors() + v.mismatched);
        out["replay_msgs_per_s"] = json!(v.replay_rate);
        println!("{out}");
    } else {
        println!(
            "sent {}, acked {}, unanswered {}, error acks {} ({})",
            r.sent,
            r.acks.acked,
            r.unanswered,
            r.acks.error_acks_total(),
            counts_text(&r.acks.error_acks)
        );
        println!(
            "delivered {} on replay at {:.0} msg/s",
            v.delivered, v.replay_rate
        );
        println!(
            "lost {} duplicated {} out of order {} mismatched {}",
            v.lost.len(),
            v.duplicated,
            v.out_of_order,
            r.acks.mismatched + v.mismatched
        );
    }
    if !v.lost.is_empty() {
        let shown: Vec<String> = v
            .lost
            .iter()
            .take(20)
            .map(|(r, id)| format!("r{r}#{id}"))
            .collect();
        eprintln!(
            "LOST {} acknowledged message(s): {}",
            v.lost.len(),
            shown.join(" ")
        );
    }
    if v.mismatched > 0 {
        eprintln!(
            "MISMATCHED {} deliveries (wrong sender or client_msg_id)",
            v.mismatched
        );
    }
    if v.lost.is_empty() && v.duplicated == 0 && v.out_of_order == 0 && v.mismatched == 0 {
        if send_failed {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        }
    } else {
        ExitCode::from(1)
    }
}

/// How one sender's connection ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Everything written and answered.
    Done,
    /// The broker closed it.
    Closed,
    /// No SendAck for --ack-timeout with sends outstanding.
    TimedOut,
}

/// What the send phase saw.
#[derive(Default)]
struct SendReport {
    sent: u64,
    acks: AckTally,
    unanswered: u64,
    /// Lines of the record that could not be written.
    record_errors: u64,
    /// Connections that got no SendAck for --ack-timeout with sends outstanding.
    timed_out: u64,
    /// Connections the broker closed with sends outstanding.
    closed: u64,
    ack_timeout: Duration,
    throughput: f64,
    latency: serde_json::Value,
}

impl SendReport {
    fn errors(&self) -> u64 {
        self.acks.error_acks_total() + self.acks.mismatched + self.record_errors
    }

    fn failed(&self) -> bool {
        self.unanswered > 0 || self.errors() > 0
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "scenario": "offline", "sent": self.sent, "acked": self.acks.acked,
            "unanswered": self.unanswered, "error_acks": counts_json(&self.acks.error_acks),
            "mismatched": self.acks.mismatched, "duplicate_acks": self.acks.duplicate_acks,
            "record_errors": self.record_errors,
            "timed_out_connections": self.timed_out, "closed_connections": self.closed,
            "errors": self.errors(), "throughput_per_s": self.throughput,
            "latency_us": self.latency,
        })
    }

    /// Says on stderr why the send phase fails, if it does.
    fn explain(&self) {
        if self.timed_out > 0 {
            eprintln!(
                "no SendAck for {:?} on {} connection(s) with sends outstanding: gave up (--ack-timeout)",
                self.ack_timeout, self.timed_out
            );
        }
        if self.closed > 0 {
            eprintln!(
                "the broker closed {} connection(s) with sends outstanding",
                self.closed
            );
        }
        if self.unanswered > 0 {
            eprintln!("UNANSWERED {} sends (never got a SendAck)", self.unanswered);
        }
        if self.acks.error_acks_total() > 0 {
            eprintln!(
                "ERROR ACKS {} ({})",
                self.acks.error_acks_total(),
                counts_text(&self.acks.error_acks)
            );
        }
    }
}

fn name(run_id: u32, role: char, i: usize) -> String {
    format!("off-{run_id:08x}-{role}{i}")
}

/// Sends everything, recording each SendAck{OK}. Returns what was acked and the report.
async fn send(
    args: &OfflineArgs,
    tokens: &Tokens,
    run_id: u32,
) -> Result<(Acked, SendReport), String> {
    let record = match (&args.record, args.phase) {
        (Some(path), Phase::Send) => {
            let mut f =
                std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
            writeln!(
                f,
                "# ringpost offline record run={run_id:08x} users={}",
                args.users
            )
            .map_err(|e| e.to_string())?;
            Some(Rc::new(RefCell::new(f)))
        }
        _ => None,
    };
    let per_user = args.messages / args.users as u64;
    let extra = args.messages % args.users as u64;
    // Everyone logs in before anyone sends, so a crash test's kill can only land mid-send.
    let mut clients = Vec::with_capacity(args.users);
    for i in 0..args.users {
        let opts = args
            .common
            .endpoint()
            .options(tokens.mint(&name(run_id, 's', i))?, "load");
        clients.push(
            Client::connect(&opts, 0)
                .await
                .map_err(|e| format!("sender login: {e}"))?,
        );
    }
    let started = Instant::now();
    let ack_timeout = args.ack_timeout;
    let mut tasks = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        let count = per_user + u64::from((i as u64) < extra);
        let to = name(run_id, 'r', i);
        let size = args.size;
        let record = record.clone();
        tasks.push(glommio::spawn_local(async move {
            let (mut reader, mut writer) = client.split();
            // The writer and the reader run side by side, so acks are read (and recorded)
            // while sends are still going out, and a broker that stops answering is noticed
            // even while a write is blocked on it.
            let sent_at = RefCell::new(HashMap::new());
            let ledger = RefCell::new(Ledger::new(count as usize));
            let acks = RefCell::new(AckTally::default());
            let all_written = Cell::new(false);
            let all_answered = || acks.borrow().answered() >= ledger.borrow().written();
            let write = async {
                let body_tail = vec![0u8; size - 8];
                for id in 1..=count {
                    let mut body = id.to_le_bytes().to_vec();
                    body.extend_from_slice(&body_tail);
                    writer.queue(&ringpost::protocol::ClientMsg::Send {
                        client_msg_id: id,
                        to_user: &to,
                        body: &body,
                    });
                    sent_at.borrow_mut().insert(id, Instant::now());
                    // Written from the moment it is queued: if the flush fails it may still
                    // have reached the broker, and it owes an answer either way.
                    ledger.borrow_mut().wrote(id);
                    if (id % 64 == 0 || id == count) && writer.flush().await.is_err() {
                        break;
                    }
                }
                all_written.set(true);
                if !all_answered() {
                    future::pending::<()>().await; // the reader ends the task
                }
                Ending::Done
            };
            let mut hist = new_histogram().ok();
            let (mut acked, mut record_errors) = (Vec::new(), 0u64);
            let read = async {
                loop {
                    if all_written.get() && all_answered() {
                        return Ending::Done;
                    }
                    let event = future::or(async { Some(reader.recv().await) }, async {
                        glommio::timer::sleep(ack_timeout).await;
                        None
                    })
                    .await;
                    let (client_msg_id, status) = match event {
                        Some(Ok(Event::SendAck {
                            client_msg_id,
                            status,
                            ..
                        })) => (client_msg_id, status),
                        Some(Ok(_)) => continue,
                        // Broker gone (crash tests): what was acked is recorded.
                        Some(Err(_)) => return Ending::Closed,
                        None if all_answered() => continue, // nothing outstanding yet
                        None => return Ending::TimedOut,
                    };
                    let outcome =
                        ledger
                            .borrow_mut()
                            .on_ack(&mut acks.borrow_mut(), client_msg_id, status);
                    if outcome != AckOutcome::Ok {
                        continue;
                    }
                    if let Some(rec) = &record {
                        // Flushed per ack: a broker crash must leave a true record.
                        let mut f = rec.borrow_mut();
                        if writeln!(f, "{i} {client_msg_id}")
                            .and_then(|_| f.flush())
                            .is_err()
                        {
                            record_errors += 1;
                        }
                    }
                    let sent = sent_at.borrow_mut().remove(&client_msg_id);
                    if let (Some(h), Some(t)) = (hist.as_mut(), sent) {
                        let _ = h.record((t.elapsed().as_micros() as u64).max(1));
                    }
                    acked.push((i, client_msg_id));
                }
            };
            let ending = future::or(write, read).await;
            let ledger = ledger.into_inner();
            let unanswered = ledger.unanswered();
            let part = SendReport {
                sent: ledger.written(),
                acks: acks.into_inner(),
                unanswered,
                record_errors,
                timed_out: u64::from(ending == Ending::TimedOut && unanswered > 0),
                closed: u64::from(ending == Ending::Closed && unanswered > 0),
                ..SendReport::default()
            };
            (acked, part, hist)
        }));
    }
    let mut acked = Vec::new();
    let mut total = SendReport {
        ack_timeout,
        ..SendReport::default()
    };
    let mut latency = new_histogram()?;
    for t in tasks {
        let (a, part, h) = t.await;
        acked.extend(a);
        total.sent += part.sent;
        total.acks.merge(&part.acks);
        total.unanswered += part.unanswered;
        total.record_errors += part.record_errors;
        total.timed_out += part.timed_out;
        total.closed += part.closed;
        if let Some(h) = h {
            let _ = latency.add(&h);
        }
    }
    total.throughput = acked.len() as f64 / started.elapsed().as_secs_f64();
    total.latency = percentiles_json(&latency);
    Ok((acked, total))
}

fn read_record(path: Option<&std::path::Path>) -> Result<(u32, usize, Acked), String> {
    let path = path.ok_or("no --record")?;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines = std::io::BufReader::new(file).lines();
    let header = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    let field = |key: &str| {
        header
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .map(str::to_owned)
    };
    let run_id = field("run=")
        .and_then(|r| u32::from_str_radix(&r, 16).ok())
        .ok_or("bad header")?;
    let users = field("users=")
        .and_then(|u| u.parse().ok())
        .ok_or("bad header")?;
    let mut acked = Vec::new();
    for line in lines.map_while(Result::ok) {
        let mut parts = line.split_whitespace();
        // A line cut short by a crash of this tool itself is ignored; the broker's crash cannot
        // cut one, as each line is flushed whole.
        if let (Some(Ok(r)), Some(Ok(id))) =
            (parts.next().map(str::parse), parts.next().map(str::parse))
        {
            acked.push((r, id));
        }
    }
    Ok((run_id, users, acked))
}

#[derive(Default)]
struct Verdict {
    delivered: u64,
    lost: Vec<(usize, u64)>,
    duplicated: u64,
    out_of_order: u64,
    /// Deliveries not from the recipient's sender, or whose `client_msg_id` disagrees with the
    /// number in the body: not counted as delivering anything.
    mismatched: u64,
    replay_rate: f64,
}

/// Logs every recipient in as a new device and receives everything retained, with
/// `--verify-concurrency` recipients replaying at once (one login after another from a single
/// task measured the client's round trips, not the broker's replay).
async fn verify(
    args: &OfflineArgs,
    tokens: &Tokens,
    run_id: u32,
    acked: &Acked,
) -> Result<Verdict, String> {
    let started = Instant::now();
    // Acked ids by recipient, so the loss check costs O(messages), not O(users × messages)
    // (at 1,000 users and 500k messages the scan was a large share of the measured replay).
    let mut acked_by: Vec<Vec<u64>> = vec![Vec::new(); args.users];
    for &(rr, id) in acked {
        if let Some(ids) = acked_by.get_mut(rr) {
            ids.push(id);
        }
    }
    let lanes = args.verify_concurrency.clamp(1, args.users);
    // Lane k verifies recipients k, k + lanes, k + 2·lanes, ... one after another.
    let acked_by = &acked_by;
    let parts = join_local((0..lanes).map(|lane| async move {
        let mut v = Verdict::default();
        let mut last = None;
        for r in (lane..args.users).step_by(lanes) {
            if let Some(t) = verify_recipient(args, tokens, run_id, r, &acked_by[r], &mut v).await?
            {
                last = Some(t);
            }
        }
        Ok::<_, String>((v, last))
    }))
    .await;
    let mut v = Verdict::default();
    let mut last_delivery = started;
    for part in parts {
        let (p, last) = part?;
        v.delivered += p.delivered;
        v.lost.extend(p.lost);
        v.duplicated += p.duplicated;
        v.out_of_order += p.out_of_order;
        v.mismatched += p.mismatched;
        last_delivery = last_delivery.max(last.unwrap_or(started));
    }
    v.lost.sort_unstable();
    v.replay_rate = v.delivered as f64
        / last_delivery
            .duration_since(started)
            .as_secs_f64()
            .max(1e-9);
    Ok(v)
}

/// Runs `futures` concurrently on this task and returns their outputs in order (the tool has
/// no `join_all`; these futures borrow the arguments, so they cannot be spawned).
async fn join_local<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.map(|f| Some(Box::pin(f))).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(o) => {
                        *out = Some(o);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Logs recipient `r` in as a new device, receives its stream up to the head it was told at
/// login, and adds what it saw to `v`. Returns when the last delivery came, if any did.
async fn verify_recipient(
    args: &OfflineArgs,
    tokens: &Tokens,
    run_id: u32,
    r: usize,
    acked_ids: &[u64],
    v: &mut Verdict,
) -> Result<Option<Instant>, String> {
    let device = format!("verify-{:08x}", rand::random::<u32>());
    let opts = args
        .common
        .endpoint()
        .options(tokens.mint(&name(run_id, 'r', r))?, device);
    let mut c = Client::connect(&opts, 0)
        .await
        .map_err(|e| format!("recipient login: {e}"))?;
    let head = c.login_info().head_seq;
    let sender = name(run_id, 's', r);
    let mut seen = HashSet::new();
    let (mut last_seq, mut last_id) = (0u64, 0u64);
    let mut last_delivery = None;
    while last_seq < head {
        let event = future::or(async { Some(c.recv().await) }, async {
            glommio::timer::sleep(Duration::from_secs(10)).await;
            None
        })
        .await;
        let d = match event {
            Some(Ok(Event::Deliver(d))) => d,
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("recipient {r}: {e}")),
            None => {
                return Err(format!(
                    "recipient {r}: replay stalled at seq {last_seq} of {head}"
                ))
            }
        };
        v.delivered += 1;
        last_delivery = Some(Instant::now());
        if d.seq <= last_seq {
            v.out_of_order += 1;
        }
        last_seq = d.seq;
        let id = d
            .body
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0);
        if d.from_user != sender || d.client_msg_id != id || id == 0 {
            v.mismatched += 1; // misrouted or mislabelled: it delivers nothing
            continue;
        }
        if !seen.insert(id) {
            v.duplicated += 1;
        } else if id < last_id {
            v.out_of_order += 1;
        }
        last_id = last_id.max(id);
    }
    let _ = c.ack(last_seq).await;
    for &id in acked_ids {
        if !seen.contains(&id) {
            v.lost.push((r, id));
        }
    }
    Ok(last_delivery)
}

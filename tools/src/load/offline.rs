//! `load offline`: messages to users who are offline, then their replay at login.
//!
//! Senders `off-<run>-s<i>` each send their share of `--messages` to recipient `off-<run>-r<i>`
//! while the recipients are offline; then the recipients log in as new devices and receive
//! everything from the log. Checks: every message acked OK is delivered exactly once, in seq
//! order. Reports send throughput, send→ack latency and replay msgs/s.
//!
//! For crash tests the two halves run separately: `--phase send --record FILE` appends a line
//! per SendAck{OK} to FILE and flushes it at once (so killing the broker mid-run leaves a true
//! record of what was acknowledged), and `--phase verify --record FILE` logs the recipients in
//! and checks that every recorded message arrives exactly once, in order.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use ringpost::client::{Client, Event};
use ringpost::protocol::Code;
use serde_json::json;

use super::{new_histogram, percentiles_json, CommonArgs, Tokens};

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
    if args.phase == Phase::Send {
        let (sent, acked_n, errors, _, _) = send_report.unwrap_or_default();
        if args.common.json {
            println!(
                "{}",
                json!({"scenario": "offline", "phase": "send", "sent": sent, "acked": acked_n, "errors": errors})
            );
        } else {
            println!(
                "sent {sent}, acked {acked_n}, errors {errors}; record in {:?}",
                args.record
            );
        }
        return ExitCode::SUCCESS;
    }
    let verdict = match verify(&args, &tokens, run_id, &acked).await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let (sent, acked_n, errors, throughput, latency) =
        send_report.unwrap_or((0, acked.len() as u64, 0, 0.0, json!(null)));
    let v = &verdict;
    if args.common.json {
        println!(
            "{}",
            json!({"scenario": "offline", "sent": sent, "acked": acked_n, "delivered": v.delivered,
                   "lost": v.lost.len(), "duplicated": v.duplicated, "out_of_order": v.out_of_order,
                   "errors": errors, "throughput_per_s": throughput, "latency_us": latency,
                   "replay_msgs_per_s": v.replay_rate})
        );
    } else {
        println!(
            "acked {acked_n}, delivered {} on replay at {:.0} msg/s",
            v.delivered, v.replay_rate
        );
        println!(
            "lost {} duplicated {} out of order {}",
            v.lost.len(),
            v.duplicated,
            v.out_of_order
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
    if v.lost.is_empty() && v.duplicated == 0 && v.out_of_order == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn name(run_id: u32, role: char, i: usize) -> String {
    format!("off-{run_id:08x}-{role}{i}")
}

/// Sends everything, recording each SendAck{OK}. Returns (acked, (sent, acked, errors,
/// throughput, latency)).
async fn send(
    args: &OfflineArgs,
    tokens: &Tokens,
    run_id: u32,
) -> Result<(Acked, (u64, u64, u64, f64, serde_json::Value)), String> {
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
            Some(Rc::new(std::cell::RefCell::new(f)))
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
    let mut tasks = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        let count = per_user + u64::from((i as u64) < extra);
        let to = name(run_id, 'r', i);
        let size = args.size;
        let record = record.clone();
        tasks.push(glommio::spawn_local(async move {
            let (mut reader, mut writer) = client.split();
            let mut sent_at = HashMap::new();
            let mut hist = new_histogram().ok();
            let body_tail = vec![0u8; size - 8];
            let mut sent = 0u64;
            for id in 1..=count {
                let mut body = id.to_le_bytes().to_vec();
                body.extend_from_slice(&body_tail);
                writer.queue(&ringpost::protocol::ClientMsg::Send {
                    client_msg_id: id,
                    to_user: &to,
                    body: &body,
                });
                sent_at.insert(id, Instant::now());
                if (id % 64 == 0 || id == count) && writer.flush().await.is_err() {
                    break;
                }
                sent = id;
            }
            let (mut acked, mut errors) = (Vec::new(), 0u64);
            while (acked.len() as u64) + errors < sent {
                match reader.recv().await {
                    Ok(Event::SendAck {
                        client_msg_id,
                        status,
                    }) if status == Code::OK => {
                        if let Some(rec) = &record {
                            // Flushed per ack: a broker crash must leave a true record.
                            let mut f = rec.borrow_mut();
                            if writeln!(f, "{i} {client_msg_id}")
                                .and_then(|_| f.flush())
                                .is_err()
                            {
                                errors += 1;
                            }
                        }
                        if let (Some(h), Some(t)) = (hist.as_mut(), sent_at.get(&client_msg_id)) {
                            let _ = h.record((t.elapsed().as_micros() as u64).max(1));
                        }
                        acked.push((i, client_msg_id));
                    }
                    Ok(Event::SendAck { .. }) => errors += 1,
                    Ok(_) => {}
                    Err(_) => break, // broker gone (crash tests): what was acked is recorded
                }
            }
            (sent, acked, errors, hist)
        }));
    }
    let (mut sent, mut acked, mut errors) = (0u64, Vec::new(), 0u64);
    let mut latency = new_histogram()?;
    for t in tasks {
        let (s, a, e, h) = t.await;
        sent += s;
        acked.extend(a);
        errors += e;
        if let Some(h) = h {
            let _ = latency.add(&h);
        }
    }
    let throughput = acked.len() as f64 / started.elapsed().as_secs_f64();
    let n = acked.len() as u64;
    Ok((
        acked,
        (sent, n, errors, throughput, percentiles_json(&latency)),
    ))
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

struct Verdict {
    delivered: u64,
    lost: Vec<(usize, u64)>,
    duplicated: u64,
    out_of_order: u64,
    replay_rate: f64,
}

/// Logs every recipient in as a new device and receives everything retained.
async fn verify(
    args: &OfflineArgs,
    tokens: &Tokens,
    run_id: u32,
    acked: &Acked,
) -> Result<Verdict, String> {
    let started = Instant::now();
    let mut v = Verdict {
        delivered: 0,
        lost: Vec::new(),
        duplicated: 0,
        out_of_order: 0,
        replay_rate: 0.0,
    };
    let mut last_delivery = started;
    for r in 0..args.users {
        let device = format!("verify-{:08x}", rand::random::<u32>());
        let opts = args
            .common
            .endpoint()
            .options(tokens.mint(&name(run_id, 'r', r))?, device);
        let mut c = Client::connect(&opts, 0)
            .await
            .map_err(|e| format!("recipient login: {e}"))?;
        let head = c.login_info().head_seq;
        let mut seen = HashSet::new();
        let (mut last_seq, mut last_id) = (0u64, 0u64);
        while last_seq < head {
            let event = futures_lite::future::or(async { Some(c.recv().await) }, async {
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
            last_delivery = Instant::now();
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
            if !seen.insert(id) {
                v.duplicated += 1;
            } else if id < last_id {
                v.out_of_order += 1;
            }
            last_id = last_id.max(id);
        }
        let _ = c.ack(last_seq).await;
        for &(rr, id) in acked.iter().filter(|(rr, _)| *rr == r) {
            if !seen.contains(&id) {
                v.lost.push((rr, id));
            }
        }
    }
    v.replay_rate = v.delivered as f64
        / last_delivery
            .duration_since(started)
            .as_secs_f64()
            .max(1e-9);
    Ok(v)
}

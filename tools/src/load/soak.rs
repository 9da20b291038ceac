//! `load soak`: churn traffic while the broker is killed with SIGKILL again and again.
//!
//! The tool runs the broker itself: it writes a config into `--dir` (fsync = "always", small
//! segments so that they roll during the run, `--shards`), starts `--broker-bin`, and runs
//! [`churn::run_traffic`] against it. Meanwhile a supervisor thread kills the broker
//! `--kills` times at random moments spread over `--duration` and restarts it on the same data
//! directory each time (on a new port, which every reconnect picks up through [`Target`]).
//! Clients behave as real ones do: reconnect with backoff, resume after the last seq each
//! device processed, resend every unanswered send with the same `client_msg_id`.
//!
//! After the last restart the traffic drains (every send answered, every acked message
//! delivered), and two checks run:
//!
//! - **live**: every device got every acked message exactly once, in seq order, gap-free
//!   (the churn checks, [`super::verify`]), and nothing was delivered twice — acked or not;
//! - **replay**: a fresh device of every recipient reads its whole inbox from the log; it must
//!   hold every acked message exactly once, in order, and nothing twice.
//!
//! Duplicates are reported, never excused: a send whose ack a kill swallowed is resent after
//! the restart, and a broker whose dedup window did not survive the restart stores and
//! delivers it again. Exit status 1 on any failed check, on fewer kills than asked for (the
//! broker did not come back), 2 when the first start fails or on bad arguments.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use futures_lite::future;
use hdrhistogram::Histogram;
use rand::Rng;
use ringpost::client::{Client, ClientOptions, Event};
use serde_json::{json, Map, Value};

use super::churn::{self, Plan, SentLedger, TrafficArgs};
use super::verify::{self, count_lost, Delivered, DeviceStream, Expect, Tally};
use super::{new_histogram, parse_duration, percentiles_json, Live, Target, Tokens};

/// A replay that delivers nothing for this long has stalled.
const REPLAY_STALL: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug)]
pub struct SoakArgs {
    /// The broker binary; default: `ringpost` next to this tool's binary.
    #[arg(long)]
    pub broker_bin: Option<PathBuf>,
    /// Scratch directory (created): the broker's config, data, auth secret and log
    /// (`broker.log`, appended by every start).
    #[arg(long)]
    pub dir: PathBuf,
    /// The broker's shard count.
    #[arg(long, default_value_t = 2)]
    pub shards: usize,
    /// The broker's log segment size (small, so that segments roll while it is being killed).
    #[arg(long, default_value = "1MiB")]
    pub segment_size: String,
    /// SIGKILLs, each at a random moment (spread over --duration) and each followed by a
    /// restart on the same data directory.
    #[arg(long, default_value_t = 20)]
    pub kills: u32,
    /// How long to generate traffic, e.g. "60s".
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// How long a (re)started broker may take to listen.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub restart_timeout: Duration,
    /// Load-generator threads (one glommio executor each).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Print exactly one JSON object on stdout instead of the summary table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub traffic: TrafficArgs,
}

pub fn run(args: SoakArgs) -> ExitCode {
    match run_inner(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("load soak: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_inner(args: &SoakArgs) -> Result<ExitCode, String> {
    if args.shards == 0 {
        return Err("--shards must be at least 1".into());
    }
    if args.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    let plan = Plan::new(&args.traffic, args.duration, args.threads, "soak")?;
    let bin = match &args.broker_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this binary: {e}"))?
            .with_file_name("ringpost"),
    };
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    let config = write_config(args)?;
    let mut broker = Broker {
        bin,
        config,
        log: args.dir.join("broker.log"),
        child: None,
        timeout: args.restart_timeout,
    };
    let (addr, _) = broker.start()?;
    let tokens = Tokens::load(&args.dir.join("auth.secret"))?;
    let target = Target::moving(addr);
    let live = Arc::new(Live::default());

    let mut report = Kills {
        done: 0,
        restart: new_histogram()?,
        failed: None,
    };
    let supervisor = {
        let (target, live, kills, duration) =
            (target.clone(), live.clone(), args.kills, args.duration);
        std::thread::spawn(move || {
            kill_and_restart(&mut broker, &mut report, &target, &live, kills, duration);
            target.settle();
            (broker, report)
        })
    };
    let traffic = churn::run_traffic(&plan, target.clone(), tokens.clone(), &live);
    // The traffic ends only once the supervisor settled, unless it could not start at all.
    target.settle();
    let (mut broker, kills) = supervisor
        .join()
        .map_err(|_| "the supervisor thread panicked".to_string())?;
    let traffic = match traffic {
        Ok(t) => t,
        Err(code) => {
            broker.kill();
            return Ok(code);
        }
    };
    let replay = if kills.failed.is_none() && traffic.login_failures.is_empty() {
        Some(replay_check(target.addr(), &tokens, &traffic.ledgers)?)
    } else {
        None
    };
    let stopped_cleanly = broker.stop();

    let mut failures = traffic.failures(true);
    if let Some(f) = &kills.failed {
        failures.push(format!("the broker did not come back: {f}"));
    }
    if kills.done < args.kills {
        failures.push(format!("{} of {} kills done", kills.done, args.kills));
    }
    if let Some(r) = &replay {
        failures.extend(r.failures());
    }
    if !stopped_cleanly {
        failures.push("the broker did not shut down cleanly at the end (see broker.log)".into());
    }
    if !traffic.login_failures.is_empty() {
        failures.push(format!(
            "{} first logins failed: {}",
            traffic.login_failures.len(),
            traffic.login_failures[0]
        ));
    }

    let mut out = Map::new();
    out.insert("scenario".into(), json!("soak"));
    out.insert("passed".into(), json!(failures.is_empty()));
    out.insert("failures".into(), json!(failures));
    out.insert("kills".into(), json!(kills.done));
    out.insert("kills_planned".into(), json!(args.kills));
    out.insert("restart_us".into(), percentiles_json(&kills.restart));
    out.insert("broker_failed".into(), json!(kills.failed));
    out.insert(
        "replay".into(),
        replay.as_ref().map_or(Value::Null, Replay::json),
    );
    out.extend(traffic.json(&plan, args.duration));
    out.insert("fsync".into(), json!("always"));
    out.insert("shards".into(), json!(args.shards));
    out.insert("segment_size".into(), json!(args.segment_size));
    out.insert("dir".into(), json!(args.dir));
    if args.json {
        println!("{}", Value::Object(out));
    } else {
        println!(
            "scenario            soak ({} of {} SIGKILLs, restart p50/max {}/{} ms)",
            kills.done,
            args.kills,
            kills.restart.value_at_quantile(0.5) / 1000,
            kills.restart.max() / 1000
        );
        traffic.print_text(&plan, args.duration);
        match &replay {
            Some(r) => r.print_text(),
            None => println!("replay              not run"),
        }
    }
    let dups = traffic.tally.duplicated + replay.as_ref().map_or(0, |r| r.tally.duplicated);
    if dups > 0 {
        eprintln!(
            "DUPLICATES: {} live, {} in the log: a send whose SendAck a kill swallowed was resent \
             with the same client_msg_id after the restart and stored again (the broker's dedup \
             window did not survive the restart)",
            traffic.tally.duplicated,
            replay.as_ref().map_or(0, |r| r.tally.duplicated)
        );
    }
    if failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("FAILED: {}", failures.join("; "));
        Ok(ExitCode::from(1))
    }
}

fn write_config(args: &SoakArgs) -> Result<PathBuf, String> {
    let dir = std::fs::canonicalize(&args.dir).map_err(|e| e.to_string())?;
    let d = dir.display();
    let text = format!(
        "# written by ringpost-tools load soak\n\
         [server]\nlisten = \"127.0.0.1:0\"\nws_listen = \"\"\nshards = {shards}\nshutdown_grace = \"5s\"\n\
         [admin]\nlisten = \"\"\n\
         [storage]\ndata_dir = \"{d}/data\"\nsegment_size = \"{seg}\"\nfsync = \"always\"\n\
         [auth]\nsecret_file = \"{d}/auth.secret\"\n\
         [limits]\nsends_per_sec = 1000000\n",
        shards = args.shards,
        seg = args.segment_size,
    );
    let path = dir.join("ringpost.toml");
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// The broker process the soak runs, kills and restarts.
struct Broker {
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    timeout: Duration,
}

impl Broker {
    /// Starts it and waits for its "listening on" line; returns its address and how long that
    /// took. Its stdout and stderr go to the log.
    fn start(&mut self) -> Result<(SocketAddr, Duration), String> {
        let started = Instant::now();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let stderr = log.try_clone().map_err(|e| e.to_string())?;
        let mut child = Command::new(&self.bin)
            .arg("--config")
            .arg(&self.config)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        let stdout = child.stdout.take().ok_or("the broker has no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || copy_stdout(stdout, log, tx));
        self.child = Some(child);
        match rx.recv_timeout(self.timeout) {
            Ok(addr) => Ok((addr, started.elapsed())),
            Err(e) => {
                self.kill();
                let why = match e {
                    mpsc::RecvTimeoutError::Timeout => {
                        format!("not listening after {:?}", self.timeout)
                    }
                    mpsc::RecvTimeoutError::Disconnected => "exited before listening".into(),
                };
                Err(format!(
                    "{why}; last lines of {}:\n{}",
                    self.log.display(),
                    tail(&self.log, 8)
                ))
            }
        }
    }

    /// SIGKILL: a crash.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and true when it exits 0 within 15 s (it is killed otherwise).
    fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let pid = c.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid (not yet reaped); no memory is involved.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let (tx, rx) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _ = tx.send(c.wait().map(|s| s.success()).unwrap_or(false));
        });
        let clean = rx.recv_timeout(Duration::from_secs(15));
        if clean.is_err() {
            // SAFETY: as above; the waiter thread has not reaped it (it would have sent).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = waiter.join();
        clean.unwrap_or(false)
    }
}

/// Copies the broker's stdout to its log; sends the address of its "listening on" line.
fn copy_stdout(stdout: std::process::ChildStdout, mut log: File, tx: mpsc::Sender<SocketAddr>) {
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { return };
        let addr = line
            .strip_prefix("ringpost listening on ")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.parse().ok());
        if let Some(addr) = addr {
            let _ = tx.send(addr);
        }
        let _ = writeln!(log, "{line}");
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What the supervisor did.
struct Kills {
    done: u32,
    /// Kill → listening again.
    restart: Histogram<u64>,
    /// Why the broker did not come back, if it did not.
    failed: Option<String>,
}

/// Waits for the traffic to start, then kills and restarts the broker `kills` times at random
/// moments spread over `duration`.
fn kill_and_restart(
    broker: &mut Broker,
    report: &mut Kills,
    target: &Target,
    live: &Live,
    kills: u32,
    duration: Duration,
) {
    // The traffic starts once every device has logged in (or the run is already over).
    let t0 = loop {
        if let Some(t) = live.started.get() {
            break *t;
        }
        if live.stop.load(Ordering::Relaxed) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let end = t0 + duration;
    let mut rng = rand::rng();
    for i in 0..kills {
        // Each gap is random (50-150 % of an even share of the time left), so kills land at
        // moments unrelated to what the traffic or the broker is doing.
        let left = end.saturating_duration_since(Instant::now());
        let share = left.div_f64(f64::from(kills - i) + 1.0);
        std::thread::sleep(share.mul_f64(rng.random_range(0.5..1.5)));
        broker.kill();
        let killed = Instant::now();
        eprintln!(
            "soak: SIGKILL {}/{kills} at t={:.1}s",
            i + 1,
            killed.saturating_duration_since(t0).as_secs_f64()
        );
        match broker.start() {
            Ok((addr, _)) => {
                target.set_port(addr.port());
                let _ = report
                    .restart
                    .record((killed.elapsed().as_micros() as u64).max(1));
                report.done += 1;
            }
            Err(e) => {
                eprintln!("soak: the broker did not come back: {e}");
                report.failed = Some(e);
                break;
            }
        }
    }
}

/// What a fresh device of every recipient found in the log.
struct Replay {
    tally: Tally,
    lost: u64,
    /// Recipients whose login reported a retention gap.
    gaps_reported: u64,
    recipients: u64,
    elapsed: Duration,
}

impl Replay {
    fn json(&self) -> Value {
        json!({
            "recipients": self.recipients, "delivered": self.tally.delivered,
            "unique": self.tally.unique, "lost": self.lost,
            "duplicated": self.tally.duplicated, "out_of_order": self.tally.out_of_order,
            "seq_gaps": self.tally.seq_gaps, "mismatched": self.tally.mismatched,
            "retention_gaps": self.gaps_reported, "elapsed_s": self.elapsed.as_secs_f64(),
        })
    }

    fn print_text(&self) {
        let t = &self.tally;
        println!(
            "replay (log)        {} recipients, {} delivered ({} unique); lost {} dup {} ooo {} gaps {} mismatched {}",
            self.recipients, t.delivered, t.unique, self.lost, t.duplicated, t.out_of_order,
            t.seq_gaps, t.mismatched
        );
    }

    fn failures(&self) -> Vec<String> {
        let t = &self.tally;
        let mut f = Vec::new();
        if self.lost + t.duplicated + t.out_of_order + t.seq_gaps + t.mismatched > 0 {
            f.push(format!(
                "replay from the log: lost={} duplicated={} out_of_order={} seq_gaps={} mismatched={}",
                self.lost, t.duplicated, t.out_of_order, t.seq_gaps, t.mismatched
            ));
        }
        if self.gaps_reported > 0 {
            f.push(format!(
                "{} logins reported a retention gap",
                self.gaps_reported
            ));
        }
        f
    }
}

/// Logs a fresh device of every recipient in and reads its whole inbox from the log.
fn replay_check(
    addr: SocketAddr,
    tokens: &Tokens,
    ledgers: &[SentLedger],
) -> Result<Replay, String> {
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(256 * 1024)
        .make()
        .map_err(|e| format!("cannot start the event loop: {e}"))?;
    ex.run(async {
        let started = Instant::now();
        let mut r = Replay {
            tally: Tally::default(),
            lost: 0,
            gaps_reported: 0,
            recipients: 0,
            elapsed: Duration::ZERO,
        };
        let device = format!("soak-verify-{:08x}", rand::random::<u32>());
        for l in ledgers {
            let opts = ClientOptions::new(addr, tokens.mint(&l.to)?, device.clone());
            let mut c = Client::connect(&opts, 0)
                .await
                .map_err(|e| format!("replay login of {}: {e}", l.to))?;
            r.recipients += 1;
            if c.login_info().gap {
                r.gaps_reported += 1;
            }
            let head = c.login_info().head_seq;
            let mut stream = DeviceStream::new(l.answers.len());
            let expect = Expect {
                from: &l.from,
                tag: verify::sender_tag(&l.from),
                written: l.written,
            };
            while stream.last_seq() < head {
                let event = future::or(async { Some(c.recv().await) }, async {
                    glommio::timer::sleep(REPLAY_STALL).await;
                    None
                })
                .await;
                let d = match event {
                    Some(Ok(Event::Deliver(d))) if d.outgoing => {
                        // Own-send sync: this user's own sends share the stream.
                        stream.echo(&mut r.tally, d.seq);
                        continue;
                    }
                    Some(Ok(Event::Deliver(d))) => d,
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(format!("replay of {}: {e}", l.to)),
                    None => {
                        return Err(format!(
                            "replay of {} stalled at seq {} of {head}",
                            l.to,
                            stream.last_seq()
                        ))
                    }
                };
                let delivered = Delivered {
                    seq: d.seq,
                    from: &d.from_user,
                    client_msg_id: d.client_msg_id,
                    body: &d.body,
                };
                stream.deliver(&mut r.tally, &delivered, &expect);
            }
            r.lost += count_lost(&l.answers, stream.seen());
        }
        r.elapsed = started.elapsed();
        Ok(r)
    })
}

//! `load connect`: open and log in many connections at a target rate, hold them idle with
//! pings, and report what holding them costs.
//!
//! Every connection is its own user (`{prefix}{i}`) on one fd ([`LeanClient`], a 256-byte read
//! buffer), so the generator itself stays small. Opening follows an open-loop schedule: the
//! i-th connection is due at `i / connect-rate` after the start, whatever happened to earlier
//! ones. Once every connection has either logged in or failed, the hold begins; during it each
//! connection pings every `--ping-interval` (random phase, then on a fixed schedule) and the
//! RTT goes into a histogram.
//!
//! Latencies count from the *intended* start, so that waiting is never hidden (no coordinated
//! omission): `login_latency_us` from the moment connection i was due by the schedule (all at
//! the start with `--connect-rate 0`), including the time it waited behind `--max-inflight`;
//! `login_attempt_latency_us` from the moment its TCP connect began (service time only), split
//! into `login_open_latency_us` (→ connection open: TCP, TLS, WebSocket upgrade) and
//! `login_reply_latency_us` (Login frame sent → LoginOk read; the rest, between the two, is
//! the generator's own write of the Login);
//! `ping_rtt_us` from the moment each ping was due, so a ping sent late because the previous
//! one was answered late counts that delay too.
//! At the end of the hold the broker's RSS (`/proc/PID/statm`), the kernel's TCP buffer pages
//! (`/proc/net/sockstat`) and slab (`/proc/meminfo`) are compared with their values before the
//! first connection.
//!
//! One process can hold only as many connections as its fd limit allows; `--processes P` runs
//! P copies of this scenario as child processes (each with its share of the connections and of
//! the rate), waits for all to finish connecting, measures, then stops them and merges their
//! histograms. Connections are spread over `--source-ips` so that more than 64k can reach one
//! broker address from one box.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, ExitCode, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use futures_lite::future;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use rand::Rng;
use ringpost::client::{ClientError, Event, LeanClient};
use ringpost::protocol::{self, ClientMsg};
use serde_json::{json, Value};

use super::{new_histogram, parse_duration, percentiles_json, CommonArgs, Tokens};

#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Connections to open (each logs in as its own user).
    #[arg(long, default_value_t = 1000)]
    pub conns: u64,
    /// Target connections opened per second (open loop); 0 = as fast as possible.
    #[arg(long, default_value_t = 10_000.0)]
    pub connect_rate: f64,
    /// How long to hold the connections once all are open; defaults to --duration.
    #[arg(long, value_parser = parse_duration)]
    pub hold: Option<Duration>,
    /// Each connection pings this often (random phase) to stay alive and measure RTT.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub ping_interval: Duration,
    /// A ping not answered within this long counts as lost and the connection is dropped.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub ping_timeout: Duration,
    /// Logins in flight at once per generator thread (bounds the SYN burst when the rate is 0).
    #[arg(long, default_value_t = 512)]
    pub max_inflight: usize,
    /// Local addresses to connect from, as `A-B` (an IPv4 range) or a comma list; connection i
    /// uses address i mod count. Needed past ~64k connections to one broker address.
    #[arg(long)]
    pub source_ips: Option<String>,
    /// The broker's pid: report its RSS per connection and the kernel's socket memory.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Run this many generator processes (to get past one process's fd limit).
    #[arg(long, default_value_t = 1)]
    pub processes: u32,
    /// User names are `{user_prefix}{i}`.
    #[arg(long, default_value = "conn-")]
    pub user_prefix: String,
    /// First user index (children of --processes get disjoint ranges).
    #[arg(long, default_value_t = 0, hide = true)]
    pub first_user: u64,
    /// Internal: run as a child of --processes (line protocol on stdin/stdout).
    #[arg(long, hide = true)]
    pub child: bool,
}

/// What one process saw (merged across its threads, then across processes).
struct Part {
    connected: u64,
    failed: BTreeMap<String, u64>,
    /// Time from the start until the last connection logged in or failed.
    connect_elapsed: Duration,
    /// Login latency from the scheduled start.
    login: Histogram<u64>,
    /// Login latency from the connect attempt.
    login_attempt: Histogram<u64>,
    /// The attempt's split: connect attempt → connection open (TCP, TLS, WebSocket upgrade).
    login_open: Histogram<u64>,
    /// Login frame handed to the kernel → LoginOk read.
    login_reply: Histogram<u64>,
    ping: Histogram<u64>,
    pings_lost: u64,
    /// Connections the broker closed during the hold.
    dropped: u64,
    /// Distinct local addresses the connections went out from.
    sources_seen: BTreeSet<String>,
}

impl Part {
    fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    fn to_json(&self) -> Result<Value, String> {
        Ok(json!({
            "connected": self.connected,
            "failed": self.failed,
            "connect_elapsed_ns": self.connect_elapsed.as_nanos() as u64,
            "login_hist": hist_to_hex(&self.login)?,
            "login_attempt_hist": hist_to_hex(&self.login_attempt)?,
            "login_open_hist": hist_to_hex(&self.login_open)?,
            "login_reply_hist": hist_to_hex(&self.login_reply)?,
            "ping_hist": hist_to_hex(&self.ping)?,
            "pings_lost": self.pings_lost,
            "dropped": self.dropped,
            "sources_seen": self.sources_seen,
        }))
    }

    fn from_json(v: &Value) -> Result<Part, String> {
        let num = |k: &str| v[k].as_u64().ok_or_else(|| format!("child JSON lacks {k}"));
        let hist = |k: &str| {
            v[k].as_str()
                .ok_or_else(|| format!("child JSON lacks {k}"))
                .and_then(hist_from_hex)
        };
        let mut failed = BTreeMap::new();
        if let Some(map) = v["failed"].as_object() {
            for (code, n) in map {
                failed.insert(code.clone(), n.as_u64().unwrap_or(0));
            }
        }
        Ok(Part {
            connected: num("connected")?,
            failed,
            connect_elapsed: Duration::from_nanos(num("connect_elapsed_ns")?),
            login: hist("login_hist")?,
            login_attempt: hist("login_attempt_hist")?,
            login_open: hist("login_open_hist")?,
            login_reply: hist("login_reply_hist")?,
            ping: hist("ping_hist")?,
            pings_lost: num("pings_lost")?,
            dropped: num("dropped")?,
            sources_seen: v["sources_seen"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    fn merge(&mut self, other: Part) -> Result<(), String> {
        self.connected += other.connected;
        for (code, n) in other.failed {
            *self.failed.entry(code).or_default() += n;
        }
        self.connect_elapsed = self.connect_elapsed.max(other.connect_elapsed);
        self.login.add(&other.login).map_err(|e| e.to_string())?;
        for (mine, theirs) in [
            (&mut self.login_attempt, &other.login_attempt),
            (&mut self.login_open, &other.login_open),
            (&mut self.login_reply, &other.login_reply),
        ] {
            mine.add(theirs).map_err(|e| e.to_string())?;
        }
        self.ping.add(&other.ping).map_err(|e| e.to_string())?;
        self.pings_lost += other.pings_lost;
        self.dropped += other.dropped;
        self.sources_seen.extend(other.sources_seen);
        Ok(())
    }
}

fn hist_to_hex(h: &Histogram<u64>) -> Result<String, String> {
    let mut bytes = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut bytes)
        .map_err(|e| format!("{e:?}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn hist_from_hex(s: &str) -> Result<Histogram<u64>, String> {
    if !s.len().is_multiple_of(2) {
        return Err("odd-length histogram hex".into());
    }
    let bytes: Result<Vec<u8>, _> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16))
        .collect();
    let bytes = bytes.map_err(|e| e.to_string())?;
    Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| format!("{e:?}"))
}

/// `127.0.0.2-127.0.0.200` or `127.0.0.2,127.0.0.3`.
pub fn parse_source_ips(s: &str) -> Result<Vec<IpAddr>, String> {
    if let Some((a, b)) = s.split_once('-') {
        let a: Ipv4Addr = a.trim().parse().map_err(|_| format!("bad address {a:?}"))?;
        let b: Ipv4Addr = b.trim().parse().map_err(|_| format!("bad address {b:?}"))?;
        let (a, b) = (u32::from(a), u32::from(b));
        if b < a {
            return Err(format!("empty range {s:?}"));
        }
        if b - a >= 1 << 16 {
            return Err(format!("range {s:?} has more than 65536 addresses"));
        }
        return Ok((a..=b).map(|x| IpAddr::V4(Ipv4Addr::from(x))).collect());
    }
    s.split(',')
        .map(|p| {
            p.trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("bad address {p:?}"))
        })
        .collect()
}

/// Counters for the progress line.
#[derive(Default)]
struct Progress {
    connected: AtomicU64,
    failed: AtomicU64,
    pings: AtomicU64,
    dropped: AtomicU64,
    /// Latest p99 (µs) of some thread's login / ping histogram (refreshed every 64 records).
    login_p99_us: AtomicU64,
    ping_p99_us: AtomicU64,
    stop: AtomicBool,
}

pub fn run(args: ConnectArgs) -> ExitCode {
    match run_inner(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("load connect: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_inner(args: &ConnectArgs) -> Result<ExitCode, String> {
    if args.conns == 0 {
        return Err("--conns must be at least 1".into());
    }
    if args.connect_rate < 0.0 {
        return Err("--connect-rate must be >= 0".into());
    }
    if args.processes == 0 {
        return Err("--processes must be at least 1".into());
    }
    if args.ping_interval.is_zero() {
        return Err("--ping-interval must be positive".into());
    }
    let sources = match &args.source_ips {
        Some(s) => parse_source_ips(s)?,
        None => Vec::new(),
    };
    let tokens = Tokens::load(&args.common.secret_file)?;
    // This process's share of the connections, plus room for its rings and the like: grown
    // now, while it has one thread, so that opening them never waits on the kernel's fd table
    // doubling (ringpost::diagnostics::reserve_fd_table).
    let share = args.conns.div_ceil(u64::from(args.processes));
    ringpost::diagnostics::reserve_fd_table(share as usize + 1024);
    if args.child {
        return run_child(args, tokens, sources);
    }
    let hold = args.hold.unwrap_or(args.common.duration);
    let before = args.broker_pid.map(Sample::take).transpose()?;
    let progress = Arc::new(Progress::default());
    // With children, each prints its own progress line.
    let ticker = (args.processes == 1).then(|| spawn_progress(progress.clone(), args.conns));
    let started = Instant::now();

    // Start the connecting: in this process, or in children.
    let (total, after) = if args.processes == 1 {
        let (ready_tx, ready_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let (args, tokens, sources, progress, stop) = (
                args.clone(),
                tokens.clone(),
                sources.clone(),
                progress.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                generate(&args, tokens, sources, progress, stop, move || {
                    let _ = ready_tx.send(());
                })
            })
        };
        // Every connection is in or failed: hold, measure, stop.
        let _ = ready_rx.recv();
        std::thread::sleep(hold);
        let after = args.broker_pid.map(Sample::take).transpose()?;
        stop.store(true, Ordering::Relaxed);
        let part = worker
            .join()
            .map_err(|_| "generator thread panicked".to_string())??;
        (part, after)
    } else {
        let mut children = spawn_children(args)?;
        let mut lines = Vec::new();
        for child in children.iter_mut() {
            let out = child.stdout.take().ok_or("child has no stdout")?;
            let mut reader = BufReader::new(out);
            let mut line = String::new();
            reader.read_line(&mut line).map_err(|e| e.to_string())?;
            if line.trim() != "connected" {
                return Err(format!("child failed before connecting: {line:?}"));
            }
            lines.push(reader);
        }
        std::thread::sleep(hold);
        let after = args.broker_pid.map(Sample::take).transpose()?;
        let mut total: Option<Part> = None;
        for (child, mut reader) in children.iter_mut().zip(lines) {
            if let Some(stdin) = child.stdin.as_mut() {
                let _ = stdin.write_all(b"stop\n");
            }
            let mut line = String::new();
            reader.read_line(&mut line).map_err(|e| e.to_string())?;
            let v: Value = serde_json::from_str(&line).map_err(|e| format!("child JSON: {e}"))?;
            let part = Part::from_json(&v)?;
            match &mut total {
                None => total = Some(part),
                Some(t) => t.merge(part)?,
            }
            let _ = child.wait();
        }
        (total.ok_or("no children")?, after)
    };
    progress.stop.store(true, Ordering::Relaxed);
    if let Some(t) = ticker {
        let _ = t.join();
    }
    let wall = started.elapsed();
    report(args, &total, before, after, hold, wall)
}

/// Broker and kernel memory at one moment.
#[derive(Clone, Copy)]
struct Sample {
    rss: u64,
    sock_pages: u64,
    tcp_inuse: u64,
    slab: u64,
}

impl Sample {
    fn take(pid: u32) -> Result<Sample, String> {
        let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"))
            .map_err(|e| format!("cannot read /proc/{pid}/statm: {e}"))?;
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|f| f.parse().ok())
            .ok_or("unexpected /proc/PID/statm")?;
        let sockstat = std::fs::read_to_string("/proc/net/sockstat")
            .map_err(|e| format!("cannot read /proc/net/sockstat: {e}"))?;
        let (mut sock_pages, mut tcp_inuse) = (0, 0);
        for line in sockstat.lines() {
            if let Some(rest) = line.strip_prefix("TCP:") {
                let f: Vec<&str> = rest.split_whitespace().collect();
                for pair in f.chunks(2) {
                    match pair {
                        ["mem", v] => sock_pages = v.parse().unwrap_or(0),
                        ["inuse", v] => tcp_inuse = v.parse().unwrap_or(0),
                        _ => {}
                    }
                }
            }
        }
        let meminfo = std::fs::read_to_string("/proc/meminfo")
            .map_err(|e| format!("cannot read /proc/meminfo: {e}"))?;
        let slab_kib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("Slab:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        Ok(Sample {
            rss: pages * page_size(),
            sock_pages,
            tcp_inuse,
            slab: slab_kib * 1024,
        })
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

fn spawn_children(args: &ConnectArgs) -> Result<Vec<std::process::Child>, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let p = u64::from(args.processes);
    let mut children = Vec::new();
    let mut first = args.first_user;
    for k in 0..p {
        let share = args.conns / p + u64::from(k < args.conns % p);
        let mut cmd = Command::new(&exe);
        cmd.args(["load", "connect", "--child", "--processes", "1"])
            .arg("--addr")
            .arg(args.common.addr.to_string())
            .arg("--transport")
            .arg(match args.common.transport {
                super::TransportArg::Tcp => "tcp",
                super::TransportArg::Ws => "ws",
            })
            .arg("--ws-addr")
            .arg(args.common.ws_addr.to_string())
            .arg("--secret-file")
            .arg(&args.common.secret_file)
            .arg("--threads")
            .arg(args.common.threads.to_string())
            .arg("--conns")
            .arg(share.to_string())
            .arg("--first-user")
            .arg(first.to_string())
            .arg("--user-prefix")
            .arg(&args.user_prefix)
            .arg("--connect-rate")
            .arg((args.connect_rate / p as f64).to_string())
            .arg("--ping-interval")
            .arg(format!("{}ms", args.ping_interval.as_millis()))
            .arg("--ping-timeout")
            .arg(format!("{}ms", args.ping_timeout.as_millis()))
            .arg("--max-inflight")
            .arg(args.max_inflight.to_string());
        if let Some(s) = &args.source_ips {
            cmd.arg("--source-ips").arg(s);
        }
        cmd.args(args.common.tls.to_args());
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start a child generator: {e}"))?;
        children.push(child);
        first += share;
    }
    Ok(children)
}

/// A child: connect, say "connected", hold until the parent says "stop", print the Part.
fn run_child(args: &ConnectArgs, tokens: Tokens, sources: Vec<IpAddr>) -> Result<ExitCode, String> {
    let progress = Arc::new(Progress::default());
    let ticker = spawn_progress(progress.clone(), args.conns);
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (args, progress, stop) = (args.clone(), progress.clone(), stop.clone());
        std::thread::spawn(move || {
            generate(&args, tokens, sources, progress, stop, || {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "connected");
                let _ = out.flush();
            })
        })
    };
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    stop.store(true, Ordering::Relaxed);
    let part = worker
        .join()
        .map_err(|_| "generator thread panicked".to_string())??;
    progress.stop.store(true, Ordering::Relaxed);
    let _ = ticker.join();
    println!("{}", part.to_json()?);
    Ok(ExitCode::SUCCESS)
}

/// Runs the generator threads until `stop`; calls `on_ready` once every connection has logged
/// in or failed.
fn generate(
    args: &ConnectArgs,
    tokens: Tokens,
    sources: Vec<IpAddr>,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    on_ready: impl FnOnce() + Send + 'static,
) -> Result<Part, String> {
    let threads = (args.common.thread_count() as u64).min(args.conns).max(1);
    // The schedule starts once every thread's executor is up (its rings made, its 10 MiB of
    // I/O memory zeroed, pinned and registered), not before: with a start fixed before the
    // threads existed, the first connections of a 15,000/s storm went out 5-19 ms late, in a
    // burst.
    let start = super::StartLine::new(threads as usize);
    let settled = Arc::new(AtomicU64::new(0));
    let ready_at = Arc::new(AtomicU64::new(0));
    let on_ready = Arc::new(std::sync::Mutex::new(Some(on_ready)));
    let sources = Arc::new(sources);
    let mut handles = Vec::new();
    for t in 0..threads {
        let start = start.clone();
        let (args, tokens, sources, progress, stop, settled, ready_at, on_ready) = (
            args.clone(),
            tokens.clone(),
            sources.clone(),
            progress.clone(),
            stop.clone(),
            settled.clone(),
            ready_at.clone(),
            on_ready.clone(),
        );
        let ex = LocalExecutorBuilder::new(Placement::Unbound)
            .name(&format!("connect-{t}"))
            .ring_depth(super::RING_DEPTH)
            .spawn(move || async move {
                let t0 = start.arrive();
                let ctx = Rc::new(Thread {
                    args,
                    tokens,
                    sources,
                    progress,
                    stop,
                    t0,
                    login: std::cell::RefCell::new(new_histogram()?),
                    login_attempt: std::cell::RefCell::new(new_histogram()?),
                    login_open: std::cell::RefCell::new(new_histogram()?),
                    login_reply: std::cell::RefCell::new(new_histogram()?),
                    ping: std::cell::RefCell::new(new_histogram()?),
                    failed: std::cell::RefCell::new(BTreeMap::new()),
                    connected: std::cell::Cell::new(0),
                    pings_lost: std::cell::Cell::new(0),
                    dropped: std::cell::Cell::new(0),
                    sources_seen: std::cell::RefCell::new(BTreeSet::new()),
                    inflight: Rc::new(glommio::sync::Semaphore::new(0)),
                });
                ctx.inflight.signal(ctx.args.max_inflight.max(1) as u64);
                let total = ctx.args.conns;
                let mut i = t;
                while i < total {
                    let due = ctx.t0 + schedule(i, ctx.args.connect_rate);
                    let now = Instant::now();
                    if due > now {
                        glommio::timer::sleep(due - now).await;
                    }
                    if ctx.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let permit = ctx.inflight.acquire_static_permit(1).await;
                    let Ok(permit) = permit else { break };
                    let c = ctx.clone();
                    let (settled, ready_at, on_ready) =
                        (settled.clone(), ready_at.clone(), on_ready.clone());
                    glommio::spawn_local(async move {
                        let client = c.open(i, due).await;
                        drop(permit);
                        if settled.fetch_add(1, Ordering::AcqRel) + 1 == c.args.conns {
                            ready_at.store(c.t0.elapsed().as_nanos() as u64, Ordering::Release);
                            let ready = on_ready.lock().ok().and_then(|mut g| g.take());
                            if let Some(f) = ready {
                                f();
                            }
                        }
                        if let Some(client) = client {
                            c.hold(client).await;
                        }
                    })
                    .detach();
                    i += threads;
                }
                // The connections live in detached tasks; they end with this executor.
                while !ctx.stop.load(Ordering::Relaxed) {
                    glommio::timer::sleep(Duration::from_millis(20)).await;
                }
                let login = ctx.login.borrow().clone();
                let login_attempt = ctx.login_attempt.borrow().clone();
                let login_open = ctx.login_open.borrow().clone();
                let login_reply = ctx.login_reply.borrow().clone();
                let ping = ctx.ping.borrow().clone();
                Ok::<_, String>(Part {
                    connected: ctx.connected.get(),
                    failed: ctx.failed.take(),
                    connect_elapsed: Duration::ZERO,
                    login,
                    login_attempt,
                    login_open,
                    login_reply,
                    ping,
                    pings_lost: ctx.pings_lost.get(),
                    dropped: ctx.dropped.get(),
                    sources_seen: ctx.sources_seen.take(),
                })
            })
            .map_err(|e| format!("cannot start generator thread: {e}"))?;
        handles.push(ex);
    }
    start.release(Duration::from_millis(20));
    let mut total: Option<Part> = None;
    for h in handles {
        let part = h
            .join()
            .map_err(|e| format!("generator thread failed: {e}"))??;
        match &mut total {
            None => total = Some(part),
            Some(t) => t.merge(part)?,
        }
    }
    let mut total = total.ok_or("no generator threads")?;
    total.connect_elapsed = Duration::from_nanos(ready_at.load(Ordering::Acquire));
    Ok(total)
}

/// When connection `i` is due after the start.
fn schedule(i: u64, rate: f64) -> Duration {
    if rate > 0.0 {
        Duration::from_secs_f64(i as f64 / rate)
    } else {
        Duration::ZERO
    }
}

/// One generator thread's state, shared by its connection tasks.
struct Thread {
    args: ConnectArgs,
    tokens: Tokens,
    sources: Arc<Vec<IpAddr>>,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    t0: Instant,
    /// From the scheduled start (queueing behind the in-flight cap included).
    login: std::cell::RefCell<Histogram<u64>>,
    /// From the connect attempt.
    login_attempt: std::cell::RefCell<Histogram<u64>>,
    /// Connect attempt → connection open.
    login_open: std::cell::RefCell<Histogram<u64>>,
    /// Login sent → LoginOk read.
    login_reply: std::cell::RefCell<Histogram<u64>>,
    ping: std::cell::RefCell<Histogram<u64>>,
    failed: std::cell::RefCell<BTreeMap<String, u64>>,
    connected: std::cell::Cell<u64>,
    pings_lost: std::cell::Cell<u64>,
    dropped: std::cell::Cell<u64>,
    sources_seen: std::cell::RefCell<BTreeSet<String>>,
    inflight: Rc<glommio::sync::Semaphore>,
}

impl Thread {
    /// Connects and logs in connection `i`, due at `due`; records the login latency (from
    /// `due` and from the attempt) or the failure.
    async fn open(&self, i: u64, due: Instant) -> Option<LeanClient> {
        let user = format!("{}{}", self.args.user_prefix, self.args.first_user + i);
        let token = match self.tokens.mint(&user) {
            Ok(t) => t,
            Err(_) => {
                self.fail("TOKEN".into());
                return None;
            }
        };
        let mut opts = self.args.common.endpoint().options(token, "load");
        opts.read_chunk = 256;
        opts.max_frame = 64 * 1024;
        if !self.sources.is_empty() {
            opts.source_ip = Some(self.sources[(i % self.sources.len() as u64) as usize]);
        }
        let attempt = Instant::now();
        // Boxed: the connect future (TLS and WebSocket handshakes included) is ~4 KiB, and
        // inline it would size this connection's task for as long as the connection is held.
        match Box::pin(LeanClient::connect_timed(&opts, 0)).await {
            Ok((client, times)) => {
                record(&self.login, due, &self.progress.login_p99_us);
                let done = Instant::now();
                for (h, from, to) in [
                    (&self.login_attempt, attempt, done),
                    (&self.login_open, attempt, times.opened),
                    (&self.login_reply, times.login_sent, done),
                ] {
                    let us = to.saturating_duration_since(from).as_micros() as u64;
                    let _ = h.borrow_mut().record(us.max(1));
                }
                self.connected.set(self.connected.get() + 1);
                if let Ok(local) = client.local_addr() {
                    let ip = local.ip().to_string();
                    if !self.sources_seen.borrow().contains(&ip) {
                        self.sources_seen.borrow_mut().insert(ip);
                    }
                }
                self.progress.connected.fetch_add(1, Ordering::Relaxed);
                Some(client)
            }
            Err(e) => {
                self.fail(failure_key(&e));
                None
            }
        }
    }

    fn fail(&self, key: String) {
        *self.failed.borrow_mut().entry(key).or_default() += 1;
        self.progress.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Pings every `ping_interval` (random phase, then a fixed schedule) until the run stops;
    /// each RTT counts from when its ping was due.
    async fn hold(&self, mut client: LeanClient) {
        let interval = self.args.ping_interval;
        let phase = rand::rng().random_range(Duration::ZERO..interval);
        let mut next = Instant::now() + phase;
        let mut nonce = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if next > now {
                glommio::timer::sleep(next - now).await;
                continue;
            }
            // Due now or earlier (a late answer to the previous ping delays this one; the delay
            // counts as latency, and the schedule does not slide).
            let due = next;
            next += interval;
            nonce += 1;
            if client.send_msg(&ClientMsg::Ping { nonce }).await.is_err() {
                self.drop_conn();
                return;
            }
            let pong = async {
                loop {
                    match client.recv().await {
                        Ok(Event::Pong { nonce: n }) if n == nonce => return true,
                        Ok(Event::GoAway { .. } | Event::Error { .. }) | Err(_) => return false,
                        Ok(_) => {}
                    }
                }
            };
            let lost = async {
                glommio::timer::sleep(self.args.ping_timeout).await;
                false
            };
            let answered = future::or(pong, lost).await;
            if answered {
                record(&self.ping, due, &self.progress.ping_p99_us);
                self.progress.pings.fetch_add(1, Ordering::Relaxed);
            } else if self.stop.load(Ordering::Relaxed) {
                return;
            } else {
                self.pings_lost.set(self.pings_lost.get() + 1);
                self.drop_conn();
                return;
            }
        }
    }

    fn drop_conn(&self) {
        self.dropped.set(self.dropped.get() + 1);
        self.progress.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Records the time since `since` (µs) and, every 64 records, publishes the p99 for the
/// progress line.
fn record(h: &std::cell::RefCell<Histogram<u64>>, since: Instant, p99: &AtomicU64) {
    let mut h = h.borrow_mut();
    let _ = h.record((since.elapsed().as_micros() as u64).max(1));
    if h.len().is_multiple_of(64) {
        p99.store(h.value_at_quantile(0.99), Ordering::Relaxed);
    }
}

/// A stable name for a failure: the broker's code name, or the errno name for I/O errors.
fn failure_key(e: &ClientError) -> String {
    match e {
        ClientError::Rejected { code, .. } => protocol::code_name(*code).to_string(),
        ClientError::Timeout => "TIMEOUT".into(),
        ClientError::Closed => "CLOSED".into(),
        ClientError::Protocol(_) => "PROTOCOL".into(),
        ClientError::Io(io) => match io.raw_os_error() {
            Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
            Some(libc::ECONNRESET) => "ECONNRESET".into(),
            Some(libc::EADDRNOTAVAIL) => "EADDRNOTAVAIL".into(),
            Some(libc::EMFILE) => "EMFILE".into(),
            Some(libc::ENFILE) => "ENFILE".into(),
            Some(libc::ETIMEDOUT) => "ETIMEDOUT".into(),
            Some(libc::EPIPE) => "EPIPE".into(),
            Some(n) => format!("ERRNO_{n}"),
            None => format!("IO_{:?}", io.kind()),
        },
    }
}

fn spawn_progress(p: Arc<Progress>, target: u64) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut last = 0u64;
        for t in 1u64.. {
            let due = start + Duration::from_secs(t);
            while Instant::now() < due {
                if p.stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let c = p.connected.load(Ordering::Relaxed);
            eprintln!(
                "t={t}s connected={c}/{target} conns/s={} login_p99={}µs pings={} ping_p99={}µs \
                 failed={} dropped={}",
                c.saturating_sub(last),
                p.login_p99_us.load(Ordering::Relaxed),
                p.pings.load(Ordering::Relaxed),
                p.ping_p99_us.load(Ordering::Relaxed),
                p.failed.load(Ordering::Relaxed),
                p.dropped.load(Ordering::Relaxed),
            );
            last = c;
        }
    })
}

fn report(
    args: &ConnectArgs,
    part: &Part,
    before: Option<Sample>,
    after: Option<Sample>,
    hold: Duration,
    wall: Duration,
) -> Result<ExitCode, String> {
    let secs = part.connect_elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        part.connected as f64 / secs
    } else {
        0.0
    };
    let per_conn = |a: u64, b: u64| -> Value {
        if part.connected == 0 {
            Value::Null
        } else {
            json!(((a as i64 - b as i64) as f64 / part.connected as f64).round() as i64)
        }
    };
    let (rss, sock, slab, broker) = match (before, after) {
        (Some(b), Some(a)) => (
            per_conn(a.rss, b.rss),
            per_conn(a.sock_pages * page_size(), b.sock_pages * page_size()),
            per_conn(a.slab, b.slab),
            json!({
                "pid": args.broker_pid,
                "rss_before_bytes": b.rss,
                "rss_holding_bytes": a.rss,
                "tcp_inuse_before": b.tcp_inuse,
                "tcp_inuse_holding": a.tcp_inuse,
                "tcp_mem_pages_before": b.sock_pages,
                "tcp_mem_pages_holding": a.sock_pages,
                "slab_before_bytes": b.slab,
                "slab_holding_bytes": a.slab,
            }),
        ),
        _ => (Value::Null, Value::Null, Value::Null, Value::Null),
    };
    let out = json!({
        "scenario": "connect",
        "conns": args.conns,
        "connected": part.connected,
        "failed": part.failed_total(),
        "failed_by_code": part.failed,
        "connect_elapsed_s": secs,
        "connect_rate_per_s": rate.round(),
        "target_connect_rate_per_s": args.connect_rate,
        "hold_s": hold.as_secs_f64(),
        "login_latency_us": percentiles_json(&part.login),
        "login_attempt_latency_us": percentiles_json(&part.login_attempt),
        "login_open_latency_us": percentiles_json(&part.login_open),
        "login_reply_latency_us": percentiles_json(&part.login_reply),
        "ping_rtt_us": percentiles_json(&part.ping),
        "pings": part.ping.len(),
        "pings_lost": part.pings_lost,
        "dropped_while_holding": part.dropped,
        "broker_rss_bytes_per_conn": rss,
        "kernel_sock_bytes_per_conn": sock,
        "kernel_slab_bytes_per_conn": slab,
        "broker": broker,
        "processes": args.processes,
        "source_ips": args.source_ips,
        "source_addrs_seen": part.sources_seen,
        "wall_s": wall.as_secs_f64(),
    });
    if args.common.json {
        println!("{out}");
    } else {
        print_table(&out);
    }
    let ok = part.failed_total() == 0 && part.dropped == 0 && part.connected == args.conns;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_table(v: &Value) {
    let p = |k: &str| {
        let h = &v[k];
        format!(
            "p50 {} · p90 {} · p99 {} · p99.9 {} · p99.99 {} · max {} µs",
            h["p50"], h["p90"], h["p99"], h["p999"], h["p9999"], h["max"]
        )
    };
    println!("connected         {} of {}", v["connected"], v["conns"]);
    println!(
        "failed            {} {}",
        v["failed"],
        if v["failed"] == 0 {
            String::new()
        } else {
            v["failed_by_code"].to_string()
        }
    );
    println!(
        "connect rate      {}/s (target {}/s; all in after {:.2} s)",
        v["connect_rate_per_s"],
        v["target_connect_rate_per_s"],
        v["connect_elapsed_s"].as_f64().unwrap_or(0.0)
    );
    println!(
        "login latency     {} (from the scheduled start)",
        p("login_latency_us")
    );
    println!(
        "login attempt     {} (from the connect call)",
        p("login_attempt_latency_us")
    );
    println!(
        "  open            {} (connect call → connection open)",
        p("login_open_latency_us")
    );
    println!(
        "  reply           {} (Login sent → LoginOk read)",
        p("login_reply_latency_us")
    );
    println!(
        "ping RTT (hold)   {} ({} pings, {} lost)",
        p("ping_rtt_us"),
        v["pings"],
        v["pings_lost"]
    );
    println!("dropped in hold   {}", v["dropped_while_holding"]);
    if !v["broker_rss_bytes_per_conn"].is_null() {
        println!(
            "broker RSS        {} B/conn (from {} to {} bytes)",
            v["broker_rss_bytes_per_conn"],
            v["broker"]["rss_before_bytes"],
            v["broker"]["rss_holding_bytes"]
        );
        println!(
            "kernel            {} B/conn TCP buffers, {} B/conn slab (both ends of each loopback connection)",
            v["kernel_sock_bytes_per_conn"], v["kernel_slab_bytes_per_conn"]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ranges_parse() {
        let r = parse_source_ips("127.0.0.2-127.0.0.4").unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[2], "127.0.0.4".parse::<IpAddr>().unwrap());
        assert_eq!(parse_source_ips("127.0.0.9, ::1").unwrap().len(), 2);
        assert!(parse_source_ips("127.0.0.4-127.0.0.2").is_err());
        assert!(parse_source_ips("127.0.0.x").is_err());
        assert!(parse_source_ips("10.0.0.0-10.2.0.0").is_err());
    }

    #[test]
    fn histograms_round_trip_through_hex() {
        let mut h = new_histogram().unwrap();
        for v in [1u64, 50, 900, 12_000] {
            h.record(v).unwrap();
        }
        let back = hist_from_hex(&hist_to_hex(&h).unwrap()).unwrap();
        assert_eq!(back.len(), 4);
        assert_eq!(back.max(), h.max());
        assert_eq!(back.value_at_quantile(0.5), h.value_at_quantile(0.5));
    }
}

//! `ringpost-tools load`: load scenarios against a running broker.
//!
//! Shared pieces for every scenario: options common to all, tokens from the secret file,
//! HdrHistogram percentiles as JSON, the once-a-second progress line, the broker address a
//! scenario connects to (which `soak` moves when it restarts the broker). What every scenario
//! checks about answers and deliveries is in [`verify`].

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::seq::SliceRandom;
use ringpost::client::ClientOptions;
use serde_json::{json, Value};

/// Submission-queue entries of a generator thread's rings (glommio's default: 128). The kernel
/// sizes a ring's cancel hash from it (`ilog2(cq_entries) - 5` bits, at most 8): 8 buckets at
/// 128, 256 at 4,096. Every connection a thread holds waits in a poll on its ring, and every
/// cancel the executor issues (its preemption timers, each pass) walks one bucket, so at 128
/// and ~10,000 held connections a thread spent a fifth of its CPU in the kernel's
/// `io_poll_find` (perf, `load connect` at 15,000 logins/s; BENCHMARKS.md). Costs ~1 MiB
/// per thread (three rings).
pub const RING_DEPTH: usize = 4096;

mod churn;
mod connect;
mod fanout;
mod logbytes;
mod mqtt;
mod offline;
mod p2p;
mod soak;
mod timers;
mod verify;

#[derive(clap::Subcommand, Debug)]
pub enum LoadCommand {
    /// Pairs of users send to each other at an open-loop total rate; checks loss, duplicates
    /// and order, and reports throughput and latency percentiles.
    P2p(p2p::P2pArgs),
    /// G groups of M connected members; senders among them send group messages at an
    /// open-loop total rate; checks every member gets every message once, in group order.
    Fanout(Box<fanout::FanoutArgs>),
    /// Messages to offline users, then their replay at login; with --phase send/verify and
    /// --record, the two halves of a crash test.
    Offline(offline::OfflineArgs),
    /// Opens and logs in many connections at a target rate, holds them idle with pings, and
    /// reports connect rate, login latency, ping RTT and (with --broker-pid) memory per
    /// connection.
    Connect(connect::ConnectArgs),
    /// A fraction of connections keeps disconnecting and reconnecting (backoff + resume) while
    /// messages flow; checks that nothing acked is lost or duplicated across the reconnects.
    Churn(churn::ChurnArgs),
    /// Starts a broker, runs churn traffic while killing it with SIGKILL at random moments and
    /// restarting it on the same data directory, then checks that every acked message reached
    /// every device exactly once and in order, and that nothing was delivered twice.
    Soak(soak::SoakArgs),
    /// No broker: how late this machine wakes the generator's timers (tasks on one executor,
    /// open-loop at a total rate), the floor under every latency a load run reports here.
    Timers(timers::TimersArgs),
}

pub fn run(cmd: LoadCommand) -> ExitCode {
    disable_huge_pages();
    match cmd {
        LoadCommand::P2p(args) => p2p::run(args),
        LoadCommand::Fanout(args) => fanout::run(*args),
        LoadCommand::Offline(args) => offline::run(args),
        LoadCommand::Connect(args) => connect::run(args),
        LoadCommand::Churn(args) => churn::run(args),
        LoadCommand::Soak(args) => soak::run(args),
        LoadCommand::Timers(args) => timers::run(args),
    }
}

/// Turns transparent huge pages off for this process (and the brokers or children it starts),
/// before the scenario allocates. A generator allocates in bursts (a login storm: a task, a
/// client and buffers per connection) and on huge pages each fresh 2 MiB is zeroed whole on
/// first touch: at 25,000 logins/s `clear_page_erms` was 3.5 % of `load connect`'s samples
/// with them, 0.3 % without, and its max RSS 101–103 → 85–86 MiB (the login tail did not move;
/// BENCHMARKS.md, "Where a login's time goes"); under CPU pressure the zeroing cost far more.
/// Best effort: a kernel without the knob keeps its default.
fn disable_huge_pages() {
    // SAFETY: prctl(PR_SET_THP_DISABLE) takes plain integers and changes only this process's
    // THP policy.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

/// Options every scenario takes.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub addr: SocketAddr,
    /// The broker's auth secret file (tokens are minted from it); the broker's default place.
    /// Not read when the scenario runs against another broker (`--target`).
    #[arg(long, default_value = "data/auth.secret")]
    pub secret_file: PathBuf,
    /// How long to generate load, e.g. "10s".
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Print exactly one JSON object on stdout instead of the summary table.
    #[arg(long)]
    pub json: bool,
    /// Load-generator threads (one glommio executor each); 0 = one per CPU.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// How clients connect: "tcp" to --addr, or "ws" (WebSocket, path /ws) to --ws-addr.
    #[arg(long, value_enum, default_value_t = TransportArg::Tcp)]
    pub transport: TransportArg,
    /// The broker's WebSocket address (`server.ws_listen`), used with --transport ws.
    #[arg(long, default_value = "127.0.0.1:7071")]
    pub ws_addr: SocketAddr,
    #[command(flatten)]
    pub tls: crate::tlsargs::TlsArgs,
}

/// `--transport`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportArg {
    Tcp,
    Ws,
}

/// Where and how a scenario's clients connect (`--addr`, `--transport`, `--ws-addr`).
#[derive(Debug, Clone)]
pub struct Endpoint {
    addr: SocketAddr,
    ws_addr: Option<SocketAddr>,
    tls: crate::tlsargs::TlsArgs,
}

impl Endpoint {
    /// Options for one client of the scenario.
    pub fn options(&self, token: String, device_id: impl Into<String>) -> ClientOptions {
        let opts = ClientOptions::new(self.addr, token, device_id);
        let opts = match self.ws_addr {
            Some(ws) => opts.over_websocket(ws),
            None => opts,
        };
        // `--tls-name` was checked when the arguments were parsed; a name that fails here
        // leaves the IP address to check.
        let fallback = opts.clone();
        self.tls.apply(opts).unwrap_or(fallback)
    }
}

impl CommonArgs {
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            addr: self.addr,
            ws_addr: (self.transport == TransportArg::Ws).then_some(self.ws_addr),
            tls: self.tls.clone(),
        }
    }

    pub fn thread_count(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    ringpost::config::units::parse_duration(s)
}

/// Mints tokens for many users from one secret.
#[derive(Clone)]
pub struct Tokens {
    secret: Arc<Vec<u8>>,
}

impl Tokens {
    pub fn load(path: &std::path::Path) -> Result<Tokens, String> {
        ringpost::auth::read_secret_file(path)
            .map(|s| Tokens {
                secret: Arc::new(s),
            })
            .map_err(|e| e.to_string())
    }

    /// [`Tokens::load`] from `--secret-file`, printing why it failed and giving exit code 2.
    pub fn load_or_exit(common: &CommonArgs) -> Result<Tokens, ExitCode> {
        Tokens::load(&common.secret_file).map_err(|e| {
            eprintln!("{e}");
            ExitCode::from(2)
        })
    }

    pub fn mint(&self, user: &str) -> Result<String, String> {
        ringpost::auth::mint(&self.secret, user, Duration::from_secs(24 * 3600))
            .map_err(|e| e.to_string())
    }
}

/// A latency histogram in microseconds (1 µs .. 1 h, 3 significant digits).
pub fn new_histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).map_err(|e| e.to_string())
}

/// `{"p50","p90","p99","p999","p9999","max"}` in µs.
pub fn percentiles_json(h: &Histogram<u64>) -> Value {
    json!({
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "p9999": h.value_at_quantile(0.9999),
        "max": h.max(),
    })
}

/// The start shared by a scenario's generator threads: each logs its connections in, then all
/// schedule against one instant taken once every thread is ready.
#[derive(Clone)]
pub struct StartLine {
    barrier: Arc<std::sync::Barrier>,
    t0: Arc<std::sync::OnceLock<Instant>>,
}

impl StartLine {
    /// A start line for `threads` generator threads and one coordinator.
    pub fn new(threads: usize) -> StartLine {
        StartLine {
            barrier: Arc::new(std::sync::Barrier::new(threads + 1)),
            t0: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// Called by each generator thread once it is ready (its executor up, its connections
    /// in); returns the common start. (Blocks the thread, on purpose: nothing else runs on it
    /// before the start.)
    pub fn arrive(&self) -> Instant {
        self.barrier.wait();
        self.barrier.wait();
        self.t0.get().copied().unwrap_or_else(Instant::now)
    }

    /// The coordinator's side: waits until every thread has arrived, sets the start `lead`
    /// from now and lets them go; returns the start.
    pub fn release(&self, lead: Duration) -> Instant {
        self.barrier.wait();
        let t0 = Instant::now() + lead;
        let _ = self.t0.set(t0);
        self.barrier.wait();
        t0
    }
}

/// Runs `threads` generator executors (`make(t, start)` builds thread t's future), starts them
/// together 50 ms after the last is ready, shows the progress line until they finish, and
/// returns what each returned. Exit code 2 if a thread cannot be started.
pub fn run_generators<O, G, Fut>(
    name: &str,
    threads: usize,
    live: &Arc<Live>,
    mut make: impl FnMut(usize, StartLine) -> G,
) -> Result<Vec<O>, ExitCode>
where
    O: Send + 'static,
    G: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<O, String>> + 'static,
{
    let start = StartLine::new(threads);
    let mut handles = Vec::new();
    for t in 0..threads {
        let spawned = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .name(&format!("{name}-{t}"))
            .io_memory(256 * 1024)
            .ring_depth(RING_DEPTH)
            .spawn(make(t, start.clone()));
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                eprintln!("cannot start generator thread: {e}");
                return Err(ExitCode::from(2));
            }
        }
    }
    // The coordinator's own bookkeeping waits until the threads are released.
    let t0 = start.release(Duration::from_millis(50));
    let _ = live.started.set(t0);
    let progress = spawn_progress(live.clone());
    let mut outcomes = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(o)) => outcomes.push(o),
            Ok(Err(e)) => eprintln!("generator thread failed: {e}"),
            Err(e) => eprintln!("generator thread panicked: {e}"),
        }
    }
    live.stop.store(true, Ordering::Relaxed);
    let _ = progress.join();
    Ok(outcomes)
}

/// Counters shared by all generator threads (relaxed atomics; read by the progress line).
#[derive(Default)]
pub struct Live {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub delivered: AtomicU64,
    pub errors: AtomicU64,
    /// Latest p99 (µs) reported by any thread over its last second.
    pub p99_us: AtomicU64,
    pub stop: AtomicBool,
    /// The common start, once every generator thread has logged its connections in.
    pub started: OnceLock<Instant>,
}

impl Live {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A receiving connection's writes until `stop` is set: every `interval`, an Ack up to
/// `ack_due` when that moved past `acked_up_to`, else a Ping once `keepalive` passed since the
/// last write (so the broker's idle timeout never fires). Ends at the first failed write (the
/// reader sees the connection end).
pub async fn ack_until_stop(
    stop: &std::cell::Cell<bool>,
    ack_due: &std::cell::Cell<u64>,
    writer: &mut ringpost::client::Writer,
    mut acked_up_to: u64,
    interval: Duration,
    keepalive: Duration,
) {
    let mut last_write = Instant::now();
    while !stop.get() {
        glommio::timer::sleep(interval).await;
        let due = ack_due.get();
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

/// Prints `t=… sent=… acked=… delivered=… msgs/s=… p99=…µs errors=…` on stderr once a second
/// until `live.stop` is set.
pub fn spawn_progress(live: Arc<Live>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut last = 0u64;
        for t in 1u64.. {
            let due = start + Duration::from_secs(t);
            loop {
                if live.stop.load(Ordering::Relaxed) {
                    return;
                }
                let left = due.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                std::thread::sleep(left.min(Duration::from_millis(50)));
            }
            let delivered = live.delivered.load(Ordering::Relaxed);
            eprintln!(
                "t={t}s sent={} acked={} delivered={delivered} msgs/s={} p99={}µs errors={}",
                live.sent.load(Ordering::Relaxed),
                live.acked.load(Ordering::Relaxed),
                delivered - last,
                live.p99_us.load(Ordering::Relaxed),
                live.errors.load(Ordering::Relaxed),
            );
            last = delivered;
        }
    })
}

/// The broker a scenario talks to: its address, which `soak` changes when it restarts the
/// broker on a new port, and whether it may still go away (`soak` kills it until `stable`).
pub struct Target {
    ip: IpAddr,
    port: AtomicU16,
    stable: AtomicBool,
}

impl Target {
    /// A broker that stays where it is (every scenario but `soak`).
    pub fn fixed(addr: SocketAddr) -> Arc<Target> {
        Arc::new(Target {
            ip: addr.ip(),
            port: AtomicU16::new(addr.port()),
            stable: AtomicBool::new(true),
        })
    }

    /// A broker that will be killed and restarted: not stable until [`Target::settle`].
    pub fn moving(addr: SocketAddr) -> Arc<Target> {
        let t = Target::fixed(addr);
        t.stable.store(false, Ordering::Release);
        t
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port.load(Ordering::Acquire))
    }

    pub fn set_port(&self, port: u16) {
        self.port.store(port, Ordering::Release);
    }

    /// No more kills: the broker is up and stays up.
    pub fn settle(&self) {
        self.stable.store(true, Ordering::Release);
    }

    pub fn is_stable(&self) -> bool {
        self.stable.load(Ordering::Acquire)
    }
}

/// `round(fraction × n)` of `n` items picked at random (at least `min`, at most `n`).
pub fn pick_fraction(n: usize, fraction: f64, min: usize) -> Vec<bool> {
    let k = ((n as f64 * fraction).round() as usize).clamp(min.min(n), n);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand::rng());
    let mut picked = vec![false; n];
    for &i in &order[..k] {
        picked[i] = true;
    }
    picked
}

/// Options that give some users several devices (p2p, churn, soak).
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct DeviceArgs {
    /// Devices (connections, each its own device ID) that a multi-device user logs in with.
    /// Device 0 sends; every device receives, acks, and must get every message once, in order.
    #[arg(long, default_value_t = 1)]
    pub devices_per_user: usize,
    /// Share of users that log in with --devices-per-user devices (the others with one), in
    /// [0, 1]; at least one user when --devices-per-user is more than 1.
    #[arg(long, default_value_t = 0.5)]
    pub multi_device_fraction: f64,
}

impl DeviceArgs {
    pub fn check(&self) -> Result<(), String> {
        if !(1..=64).contains(&self.devices_per_user) {
            return Err(
                "--devices-per-user must be in 1..=64 (the broker's max_devices caps it too)"
                    .into(),
            );
        }
        if !(0.0..=1.0).contains(&self.multi_device_fraction) {
            return Err("--multi-device-fraction must be in [0, 1]".into());
        }
        Ok(())
    }

    /// Devices of each of `users` users.
    pub fn plan(&self, users: usize) -> Vec<usize> {
        if self.devices_per_user == 1 {
            return vec![1; users];
        }
        pick_fraction(users, self.multi_device_fraction, 1)
            .into_iter()
            .map(|multi| if multi { self.devices_per_user } else { 1 })
            .collect()
    }
}

/// A `{name: count}` map as a JSON object.
pub fn counts_json(m: &BTreeMap<String, u64>) -> Value {
    Value::Object(m.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

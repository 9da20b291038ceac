//! Starting and stopping the shards.
//!
//! [`Broker::start`] opens the data directory (its lock, held for the broker's lifetime, and
//! meta file: [`crate::log::DataDir`]), refuses a listen address another process serves,
//! binds one SO_REUSEPORT listener per shard on the calling thread (so a bad
//! address fails fast, and port 0 resolves to one port shared by all shards), builds the mesh,
//! and spawns one glommio executor per shard pinned to its CPU. It returns once every shard has
//! connected its mesh queues and is accepting.
//!
//! Shutdown ([`ShutdownHandle::shutdown`], or SIGINT/SIGTERM in the binary), per shard:
//! 1. stop accepting and stop reading clients; tell every peer `Drained`;
//! 2. keep serving the mesh until every peer has drained and every message this shard sent
//!    has its SendAck back, then hand the acks we owe to the queues;
//! 3. GoAway(SHUTDOWN) to every connection, flush, close; exit.
//!
//! All of it is bounded by `[server] shutdown_grace`.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use futures_lite::future;
use glommio::channels::shared_channel::{SharedReceiver, SharedSender};
use glommio::net::TcpListener;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use super::acceptor::accept_loop;
use super::park::{self, Parking};
use super::recovery::{recover, shard_dir, Recovered};
use super::session;
use super::state::Shard;
use super::transport::{build_mesh, Batch, Mesh, MeshPorts};
use super::wake::Signal;
use crate::auth::Verifier;
use crate::config::{Config, FsyncPolicy};

/// Memory glommio registers with each ring for its own DMA buffers; we do no DMA file I/O, so
/// keep it small (it counts against RLIMIT_MEMLOCK for unprivileged users).
pub const IO_MEMORY: usize = 512 * 1024;
/// Envelopes an outbox may hold before session tasks pause reading (see transport).
pub const OUTBOX_HIGH_WATER: usize = 4096;
/// How often each shard sweeps its idle-timeout wheel.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Retention runs every this many sweeps.
const RETENTION_EVERY_TICKS: u64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start shard {shard}: {message}")]
    Executor { shard: usize, message: String },
    #[error("cannot create the shutdown channel: {0}")]
    Trigger(std::io::Error),
    #[error("cannot create the epoll set for parked connections: {0}")]
    Parking(std::io::Error),
    #[error("cannot listen on {addr}: another process already serves it (SO_REUSEPORT would silently split its connections with this broker); stop that process or set [server] listen to a free address")]
    Served { addr: SocketAddr },
    #[error("{0}")]
    DataDir(#[from] crate::log::DataDirError),
    #[error("cannot recover shard {shard}'s log: {source}")]
    Log {
        shard: usize,
        source: crate::log::LogError,
    },
}

/// A running broker: its shards, their address, and the means to stop them.
pub struct Broker {
    addr: SocketAddr,
    shards: usize,
    joins: Vec<ExecutorJoinHandle<()>>,
    triggers: Vec<std::os::unix::net::UnixStream>,
    /// Holds the data directory's lock for the broker's lifetime.
    _data_dir: crate::log::DataDir,
}

impl Broker {
    /// Starts every shard; returns once all of them are accepting.
    pub fn start(cfg: Config, secret: &[u8]) -> Result<Broker, StartError> {
        let cfg = Arc::new(cfg);
        let n = cfg.shard_count();
        let verifier = Arc::new(Verifier::new(secret, cfg.auth.leeway));
        let data_dir = crate::log::DataDir::open(&cfg.storage.data_dir, n)?;
        refuse_if_served(cfg.server.listen)?;
        let recovered = recover_all(&cfg, n)?;
        let listeners = bind_all(cfg.server.listen, n, cfg.server.listen_backlog)?;
        let addr = local_addr(&listeners[0]).map_err(|source| StartError::Bind {
            addr: cfg.server.listen,
            source,
        })?;
        let cores: Vec<usize> = core_affinity::get_core_ids()
            .map(|ids| ids.into_iter().map(|c| c.id).collect())
            .unwrap_or_default();
        let ready = Arc::new(Barrier::new(n + 1));
        let mut joins = Vec::with_capacity(n);
        let mut triggers = Vec::with_capacity(n);
        for (i, ((listener, ports), recovered)) in listeners
            .into_iter()
            .zip(build_mesh(n, cfg.server.mesh_queue))
            .zip(recovered)
            .enumerate()
        {
            let (ours, theirs) =
                std::os::unix::net::UnixStream::pair().map_err(StartError::Trigger)?;
            triggers.push(ours);
            let parking = Parking::new().map_err(StartError::Parking)?;
            let placement = match cfg.cpu_for_shard(i) {
                Some(cpu) => Placement::Fixed(cpu),
                None if !cores.is_empty() => Placement::Fixed(cores[i % cores.len()]),
                None => Placement::Unbound,
            };
            let (cfg, verifier, ready) = (cfg.clone(), verifier.clone(), ready.clone());
            let trigger = OwnedFd::from(theirs);
            let join = LocalExecutorBuilder::new(placement)
                .name(&format!("shard-{i}"))
                .io_memory(IO_MEMORY)
                .spawn(move || async move {
                    let ctx = ShardStart {
                        id: i,
                        shards: n,
                        cfg,
                        verifier,
                        listener,
                        ports,
                        trigger,
                        recovered,
                        parking,
                    };
                    run_shard(ctx, ready).await;
                })
                .map_err(|e| StartError::Executor {
                    shard: i,
                    message: e.to_string(),
                })?;
            joins.push(join);
        }
        ready.wait();
        Ok(Broker {
            addr,
            shards: n,
            joins,
            triggers,
            _data_dir: data_dir,
        })
    }

    /// The address every shard accepts on (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn shard_count(&self) -> usize {
        self.shards
    }

    /// A handle that starts a graceful shutdown; usable from another thread (signal handler).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            triggers: self
                .triggers
                .iter()
                .filter_map(|t| t.try_clone().ok())
                .collect(),
        }
    }

    /// Waits for every shard to finish. Err names the shards that panicked.
    pub fn join(self) -> Result<(), String> {
        let failed: Vec<String> = self
            .joins
            .into_iter()
            .enumerate()
            .filter_map(|(i, j)| j.join().err().map(|e| format!("shard {i}: {e}")))
            .collect();
        drop(self.triggers);
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }
}

/// Starts a graceful shutdown of every shard.
pub struct ShutdownHandle {
    triggers: Vec<std::os::unix::net::UnixStream>,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        use std::io::Write;
        for mut t in &self.triggers {
            let _ = t.write_all(&[1]);
        }
    }
}

fn bind_all(addr: SocketAddr, n: usize, backlog: u32) -> Result<Vec<OwnedFd>, StartError> {
    let first = bind_reuseport(addr, backlog)?;
    let actual = local_addr(&first).map_err(|source| StartError::Bind { addr, source })?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(bind_reuseport(actual, backlog)?);
    }
    Ok(all)
}

/// Binding with SO_REUSEPORT joins any listener group already on `addr`: probe it without
/// (SO_REUSEADDR still lets a restart reuse a port in TIME_WAIT) and refuse if it is taken.
fn refuse_if_served(addr: SocketAddr) -> Result<(), StartError> {
    use socket2::{Domain, Protocol, Socket, Type};
    if addr.port() == 0 {
        return Ok(());
    }
    let err = |source| StartError::Bind { addr, source };
    let probe =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    probe.set_reuse_address(true).map_err(err)?;
    match probe.bind(&addr.into()) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(StartError::Served { addr }),
        other => other.map_err(err),
    }
}

fn bind_reuseport(addr: SocketAddr, backlog: u32) -> Result<OwnedFd, StartError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |source| StartError::Bind { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_reuse_port(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(backlog as i32).map_err(err)?;
    Ok(OwnedFd::from(socket))
}

fn local_addr(fd: &OwnedFd) -> std::io::Result<SocketAddr> {
    let socket = socket2::SockRef::from(fd);
    socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| std::io::Error::other("listener has no IP address"))
}

struct ShardStart {
    id: usize,
    shards: usize,
    cfg: Arc<Config>,
    verifier: Arc<Verifier>,
    listener: OwnedFd,
    ports: MeshPorts,
    trigger: OwnedFd,
    recovered: Recovered,
    parking: Parking,
}

/// Recovers every shard's log, one thread per shard, before any shard starts serving.
fn recover_all(cfg: &Config, n: usize) -> Result<Vec<Recovered>, StartError> {
    let results: Vec<Result<Recovered, StartError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|shard| {
                let dir = shard_dir(&cfg.storage.data_dir, shard);
                let segment_size = cfg.storage.segment_size;
                scope.spawn(move || {
                    recover(&dir, segment_size).map_err(|source| StartError::Log { shard, source })
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(shard, h)| {
                h.join().unwrap_or_else(|_| {
                    Err(StartError::Executor {
                        shard,
                        message: "log recovery panicked".into(),
                    })
                })
            })
            .collect()
    });
    let recovered: Vec<Recovered> = results.into_iter().collect::<Result<_, _>>()?;
    for (shard, r) in recovered.iter().enumerate() {
        let rep = &r.report;
        tracing::info!(
            shard,
            segments = rep.segments,
            records = rep.records,
            bytes = rep.bytes,
            users = r.users.len(),
            ms = rep.elapsed.as_millis() as u64,
            "log recovered"
        );
        if let Some((pos, why)) = rep.torn_at {
            tracing::warn!(
                shard,
                position = pos,
                reason = why,
                "cut off a torn log tail (never acknowledged)"
            );
        }
    }
    Ok(recovered)
}

async fn run_shard(ctx: ShardStart, ready: Arc<Barrier>) {
    let mesh = Rc::new(Mesh::new(ctx.id, ctx.shards, OUTBOX_HIGH_WATER));
    let shard = Rc::new(Shard::new(
        ctx.id,
        ctx.shards,
        ctx.cfg.clone(),
        ctx.verifier,
        mesh.clone(),
        ctx.recovered,
        ctx.parking,
    ));

    // Each queue end connects in its own task: connect() waits for the other end, so doing
    // them one after another on every shard could deadlock.
    let pending = Rc::new(std::cell::Cell::new(0usize));
    let connected = Rc::new(Signal::default());
    for (peer, sender) in ctx.ports.senders.into_iter().enumerate() {
        if let Some(sender) = sender {
            pending.set(pending.get() + 1);
            let (mesh, pending, connected) = (mesh.clone(), pending.clone(), connected.clone());
            glommio::spawn_local(async move {
                let sender = connect_sender(sender, &pending, &connected).await;
                mesh.flush_to(peer, sender).await;
            })
            .detach();
        }
    }
    for (peer, receiver) in ctx.ports.receivers.into_iter().enumerate() {
        if let Some(receiver) = receiver {
            pending.set(pending.get() + 1);
            let (shard, pending, connected) = (shard.clone(), pending.clone(), connected.clone());
            glommio::spawn_local(async move {
                let receiver = connect_receiver(receiver, &pending, &connected).await;
                while let Some(batch) = receiver.recv().await {
                    for env in batch {
                        shard.handle_envelope(peer, env);
                    }
                    shard.flush_dirty();
                }
            })
            .detach();
        }
    }
    while pending.get() > 0 {
        connected.wait().await;
    }

    // SAFETY: the fd is a listening TCP socket we bound for this shard; ownership moves here.
    let listener = unsafe { TcpListener::from_raw_fd(ctx.listener.into_raw_fd()) };
    let stop = Rc::new(Signal::default());
    let acceptor = glommio::spawn_local(accept_loop(shard.clone(), listener, stop.clone()));
    let poller = glommio::spawn_local(poll_parked(shard.clone()));
    let sweeper = {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            let mut ticks = 0u64;
            loop {
                glommio::timer::sleep(SWEEP_EVERY).await;
                shard.sweep_idle();
                ticks += 1;
                if ticks.is_multiple_of(RETENTION_EVERY_TICKS) {
                    shard.apply_retention();
                }
            }
        })
    };
    // Group commit: runs once the current batch of work has yielded, so every append made
    // in that batch shares one sync.
    let committer = {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            loop {
                shard.commit_due.wait().await;
                shard.commit().await;
            }
        })
    };
    let syncer = (ctx.cfg.storage.fsync == FsyncPolicy::Interval).then(|| {
        let shard = shard.clone();
        let every = ctx.cfg.storage.fsync_interval;
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(every).await;
                if let Err(e) = shard.sync_off_thread().await {
                    tracing::error!(shard = shard.id, error = %e, "periodic log sync failed");
                }
            }
        })
    });
    ready.wait();
    tracing::debug!(shard = ctx.id, "accepting");

    // SAFETY: one end of a socketpair made for this shard; ownership moves here.
    let trigger = unsafe { glommio::net::UnixStream::from_raw_fd(ctx.trigger.into_raw_fd()) };
    let mut byte = [0u8; 1];
    let _ = trigger.peek(&mut byte).await;

    let deadline = Instant::now() + ctx.cfg.server.shutdown_grace;
    tracing::info!(
        shard = ctx.id,
        connections = shard.connection_count(),
        "shutting down"
    );
    stop.notify();
    acceptor.await;
    session::read_pending_input(&shard);
    shard.begin_drain();
    wait_until(&shard, deadline, |s| s.quiesced()).await;
    let _ = future::or(mesh.wait_idle(), sleep_until(deadline)).await;
    shard.say_goodbye();
    wait_until(&shard, deadline, |s| s.live_sessions.get() == 0).await;
    if !shard.quiesced() || shard.live_sessions.get() > 0 {
        tracing::warn!(
            shard = ctx.id,
            sessions = shard.live_sessions.get(),
            "shutdown_grace ran out before the shard was quiet"
        );
    }
    sweeper.cancel().await;
    poller.cancel().await;
    // The committer drains what is left (a running sync holds pointers into the log, so it
    // is never cancelled); once it idles, one last sync covers cursor records too.
    shard.commit_due.notify();
    wait_until(&shard, deadline, |s| {
        !s.is_committing() && !s.has_uncommitted()
    })
    .await;
    drop(committer); // idle now (or the grace ran out): dropping a glommio task cancels it
                     // The periodic syncer may be mid-sync; stop it only between syncs.
    if let Some(syncer) = syncer {
        wait_until(&shard, deadline, |s| !s.sync_in_flight()).await;
        drop(syncer);
    }
    shard.sync_log();
    mesh.close();
}

/// Wakes parked connections that have input (or a hang-up) waiting.
async fn poll_parked(shard: Rc<Shard>) {
    let mut ids = Vec::new();
    let mut empty_rounds = 0u32;
    loop {
        shard.parking.readable().await;
        ids.clear();
        if shard.parking.take_ready(&mut ids) == 0 {
            empty_rounds += 1;
            if empty_rounds >= 3 {
                glommio::timer::sleep(park::IDLE_RETRY).await;
            }
            continue;
        }
        empty_rounds = 0;
        shard.wake_connections(&ids);
    }
}

async fn connect_sender(
    sender: SharedSender<Batch>,
    pending: &std::cell::Cell<usize>,
    connected: &Signal,
) -> glommio::channels::shared_channel::ConnectedSender<Batch> {
    let sender = sender.connect().await;
    pending.set(pending.get() - 1);
    connected.notify();
    sender
}

async fn connect_receiver(
    receiver: SharedReceiver<Batch>,
    pending: &std::cell::Cell<usize>,
    connected: &Signal,
) -> glommio::channels::shared_channel::ConnectedReceiver<Batch> {
    let receiver = receiver.connect().await;
    pending.set(pending.get() - 1);
    connected.notify();
    receiver
}

async fn sleep_until(deadline: Instant) {
    glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
}

/// Waits until `cond` holds (re-checked on every shard state change) or `deadline` passes.
async fn wait_until(shard: &Shard, deadline: Instant, cond: impl Fn(&Shard) -> bool) {
    while !cond(shard) && Instant::now() < deadline {
        future::or(shard.changed.wait(), sleep_until(deadline)).await;
    }
}

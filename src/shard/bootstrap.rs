//! Starting and stopping the shards.
//!
//! First of all, [`Broker::start`] starts the admin listener (`crate::admin`, when `[admin]
//! listen` is set) so that `/healthz` and `/readyz` answer while the logs recover; readiness
//! turns on once every shard accepts and off when a shutdown begins.
//!
//! [`Broker::start`] then opens the data directory (its lock, held for the broker's lifetime,
//! and meta file: [`crate::log::DataDir`]), refuses a listen address another process serves,
//! binds one SO_REUSEPORT listener per shard on the calling thread (so a bad
//! address fails fast, and port 0 resolves to one port shared by all shards), and one more per
//! shard on `ws_listen` for WebSocket when that is set, builds the mesh,
//! and spawns one glommio executor per shard pinned to its CPU. It returns once every shard has
//! connected its mesh queues and is accepting.
//!
//! Each shard then builds its state, connects its ends of the mesh ([`super::transport`]),
//! registers its named tasks ([`super::tasks`]) and waits for the shutdown trigger
//! ([`ShutdownHandle::shutdown`], or SIGINT/SIGTERM in the binary), which runs the drain
//! sequence ([`super::drain`]).

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use glommio::net::TcpListener;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use super::acceptor::{accept_loop, Port};
use super::drain;
use super::gate::{ConnCount, Gate, GateShared};
use super::park::Parking;
use super::recovery::{recover, shard_dir, Recovered, RecoveryContext};
use super::reloader::ReloadHandle;
use super::session;
use super::state::Shard;
use super::tasks::{self, StopAt, Tasks};
use super::transport::{self, build_mesh, Mesh, MeshPorts};
use crate::admin::health::{Health, Phase};
use crate::admin::{AdminError, AdminServer};
use crate::auth::PrimaryKey;
use crate::config::Config;
use crate::metrics::ShardMetrics;
use crate::reload::Reloadable;

/// Memory glommio registers with each ring for its own DMA buffers; we do no DMA file I/O, so
/// keep it small (it counts against RLIMIT_MEMLOCK for unprivileged users).
pub const IO_MEMORY: usize = 512 * 1024;
/// Envelopes an outbox may hold before session tasks pause reading (see transport).
pub const OUTBOX_HIGH_WATER: usize = 4096;
/// How long a taken listen address is re-checked before another process counts as serving it.
const SERVED_PROBE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);
const SERVED_PROBE_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

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
    #[error("cannot listen on {addr}: another process already serves it (SO_REUSEPORT would silently split its connections with this broker); stop that process or set [server] {key} to a free address")]
    Served { addr: SocketAddr, key: &'static str },
    #[error("{0}")]
    DataDir(#[from] crate::log::DataDirError),
    #[error("{0}")]
    Keys(#[from] crate::auth::SecretError),
    #[error("{0}")]
    Tls(#[from] crate::wire::tls::TlsError),
    #[error("cannot recover shard {shard}'s log: {source}")]
    Log {
        shard: usize,
        source: crate::log::LogError,
    },
    #[error("{0}")]
    Admin(#[from] AdminError),
}

/// A running broker: its shards, their address, and the means to stop them.
pub struct Broker {
    addr: SocketAddr,
    ws_addr: Option<SocketAddr>,
    shards: usize,
    joins: Vec<ExecutorJoinHandle<()>>,
    triggers: Vec<std::os::unix::net::UnixStream>,
    reload: ReloadHandle,
    /// Holds the data directory's lock for the broker's lifetime.
    _data_dir: crate::log::DataDir,
    admin: Option<AdminServer>,
    health: Arc<Health>,
}

impl Broker {
    /// Starts the admin listener (if configured, before recovery so that health checks answer
    /// meanwhile), then every shard; returns once all of them are accepting. `primary` is the
    /// login key (`[auth] secret_dir` adds more, see [`crate::auth`]).
    pub fn start(
        cfg: Config,
        primary: PrimaryKey,
        admin_token: &[u8],
    ) -> Result<Broker, StartError> {
        let cfg = Arc::new(cfg);
        let n = cfg.shard_count();
        let (verifier, _) = crate::auth::verifier_for(&cfg.auth, &primary)?;
        let tls = match &cfg.tls.files {
            Some((cert, key)) => Some(Reloadable::new(crate::wire::tls::server_config(cert, key)?)),
            None => None,
        };
        let gate = GateShared {
            connections: ConnCount::new(cfg.limits.max_connections),
            verifier: Reloadable::new(verifier),
            tls,
            max_pending_logins_per_ip: cfg.limits.max_pending_logins_per_ip,
        };
        let reload = ReloadHandle::new(cfg.clone(), primary, gate.clone());
        let health = Arc::new(Health::default());
        let metrics = ShardMetrics::for_shards(n);
        let (admin, mut controls) = crate::admin::launch(&cfg, n, admin_token, &health, &metrics)?;
        let data_dir = crate::log::DataDir::open(&cfg.storage.data_dir, n)?;
        refuse_if_served(cfg.server.listen, "listen")?;
        if let Some(ws) = cfg.server.ws_listen {
            refuse_if_served(ws, "ws_listen")?;
        }
        let recovered = recover_all(&cfg, n)?;
        let listeners = bind_all(cfg.server.listen, n, cfg.server.listen_backlog)?;
        let addr = local_addr(&listeners[0]).map_err(|source| StartError::Bind {
            addr: cfg.server.listen,
            source,
        })?;
        let (mut ws_listeners, ws_addr) = match cfg.server.ws_listen {
            None => (Vec::new(), None),
            Some(ws) => {
                let all = bind_all(ws, n, cfg.server.listen_backlog)?;
                let actual =
                    local_addr(&all[0]).map_err(|source| StartError::Bind { addr: ws, source })?;
                (all, Some(actual))
            }
        };
        // Shard i takes the i-th listener of each port (popped from the back, hence reversed).
        ws_listeners.reverse();
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
            let (cfg, gate, ready) = (cfg.clone(), gate.clone(), ready.clone());
            let (metrics, control) = (metrics[i].clone(), controls[i].take());
            let trigger = OwnedFd::from(theirs);
            let ws_listener = ws_listeners.pop();
            let join = LocalExecutorBuilder::new(placement)
                .name(&format!("shard-{i}"))
                .io_memory(IO_MEMORY)
                .spawn(move || async move {
                    let ctx = ShardStart {
                        id: i,
                        shards: n,
                        cfg,
                        gate,
                        listener,
                        ws_listener,
                        ports,
                        trigger,
                        recovered,
                        parking,
                        metrics,
                        control,
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
        health.set(Phase::Ready);
        Ok(Broker {
            addr,
            ws_addr,
            shards: n,
            joins,
            triggers,
            reload,
            _data_dir: data_dir,
            admin,
            health,
        })
    }

    /// The admin listener's address (port 0 resolved), if it is enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::local_addr)
    }

    /// The address every shard accepts on (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address every shard accepts WebSocket connections on (port 0 resolved), if enabled.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws_addr
    }

    pub fn shard_count(&self) -> usize {
        self.shards
    }

    /// A handle that reloads the login keys and the TLS certificate (SIGHUP); usable from
    /// another thread.
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reload.clone()
    }

    /// Whether client connections speak TLS (`[tls]`).
    pub fn tls(&self) -> bool {
        self.reload.tls_on()
    }

    /// A handle that starts a graceful shutdown; usable from another thread (signal handler).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            triggers: self
                .triggers
                .iter()
                .filter_map(|t| t.try_clone().ok())
                .collect(),
            health: self.health.clone(),
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
        drop(self.admin);
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
    health: Arc<Health>,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        use std::io::Write;
        self.health.set(Phase::ShuttingDown);
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
fn refuse_if_served(addr: SocketAddr, key: &'static str) -> Result<(), StartError> {
    use socket2::{Domain, Protocol, Socket, Type};
    if addr.port() == 0 {
        return Ok(());
    }
    let err = |source| StartError::Bind { addr, source };
    // A broker killed a moment ago can still hold its port: the kernel tears its io_uring
    // down asynchronously, after the process is gone, and a pending accept keeps the listener
    // alive until then. So a taken port is re-checked for a while before it counts as served.
    let deadline = Instant::now() + SERVED_PROBE_PATIENCE;
    loop {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(err)?;
        probe.set_reuse_address(true).map_err(err)?;
        match probe.bind(&addr.into()) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if Instant::now() >= deadline {
                    return Err(StartError::Served { addr, key });
                }
                std::thread::sleep(SERVED_PROBE_RETRY);
            }
            other => return other.map_err(err),
        }
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
    gate: GateShared,
    listener: OwnedFd,
    ws_listener: Option<OwnedFd>,
    ports: MeshPorts,
    trigger: OwnedFd,
    recovered: Recovered,
    parking: Parking,
    metrics: Arc<ShardMetrics>,
    control: Option<super::control::ShardControl>,
}

/// Recovers every shard's log, one thread per shard, before any shard starts serving.
fn recover_all(cfg: &Config, n: usize) -> Result<Vec<Recovered>, StartError> {
    let results: Vec<Result<Recovered, StartError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|shard| {
                let dir = shard_dir(&cfg.storage.data_dir, shard);
                let segment_size = cfg.storage.segment_size;
                let ctx = RecoveryContext {
                    shard,
                    shards: n,
                    now_ms: super::clock::wall_ms_now(),
                    dedup_window_ms: cfg.limits.dedup_window.as_millis() as u64,
                    dedup_entries: cfg.limits.dedup_entries,
                };
                scope.spawn(move || {
                    recover(&dir, segment_size, ctx)
                        .map_err(|source| StartError::Log { shard, source })
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
            groups = r.groups.owned.len(),
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
    crate::metrics::install_local(ctx.metrics);
    let mesh = Rc::new(Mesh::new(ctx.id, ctx.shards, OUTBOX_HIGH_WATER));
    let shard = Rc::new(Shard::new(
        ctx.id,
        ctx.shards,
        ctx.cfg.clone(),
        Gate::new(&ctx.gate, ctx.shards),
        mesh.clone(),
        ctx.recovered,
        ctx.parking,
    ));
    let receiving = shard.clone();
    transport::connect(ctx.ports, mesh, move |peer, batch| {
        receiving.metrics.mesh_received(peer, batch.len());
        receiving.clock.batch(|| {
            for env in batch.drain(..) {
                if let Some(handoff) = receiving.handle_envelope(peer, env) {
                    session::start_handoff(&receiving, handoff);
                }
            }
            receiving.flush_dirty();
        });
    })
    .await;
    // Group entries committed before a crash that some shard has not applied yet; no client
    // is served before the peers' re-drives to this shard have been applied.
    shard.redrive_fanout();
    shard.redrive_settled().await;

    // SAFETY: the fd is a listening TCP socket we bound for this shard; ownership moves here.
    let listener = unsafe { TcpListener::from_raw_fd(ctx.listener.into_raw_fd()) };
    let mut tasks = Tasks::default();
    tasks
        .spawn("acceptor", accept_loop(shard.clone(), listener, Port::Tcp))
        .on_shutdown(StopAt::Accepting);
    if let Some(ws) = ctx.ws_listener {
        // SAFETY: as above, the WebSocket port's listening socket for this shard.
        let ws = unsafe { TcpListener::from_raw_fd(ws.into_raw_fd()) };
        tasks
            .spawn(
                "ws-acceptor",
                accept_loop(shard.clone(), ws, Port::WebSocket),
            )
            .on_shutdown(StopAt::Accepting);
    }
    tasks::start(&shard, &mut tasks);
    if let Some(control) = ctx.control {
        tasks::start_control(&shard, &mut tasks, control);
    }
    ready.wait();
    tracing::debug!(shard = ctx.id, "accepting");

    // SAFETY: one end of a socketpair made for this shard; ownership moves here.
    let trigger = unsafe { glommio::net::UnixStream::from_raw_fd(ctx.trigger.into_raw_fd()) };
    let mut byte = [0u8; 1];
    let _ = trigger.peek(&mut byte).await;

    let deadline = Instant::now() + ctx.cfg.server.shutdown_grace;
    drain::shutdown(&shard, &mut tasks, deadline).await;
}

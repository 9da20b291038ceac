//! The admin listener: Prometheus metrics, health and readiness, and the server API for the
//! app backend, over HTTP/1.1 with JSON (`[admin]` in the config).
//!
//! ## Where it runs, and why there
//!
//! On its own thread with its own small glommio executor ("admin", not pinned), never on a
//! shard. A shard's loop must only ever do a bounded amount of work between two batches of
//! client I/O; HTTP parsing, JSON, reading `/proc` and rendering a scrape are unbounded in the
//! size of what a client sends or of what is being scraped, and an admin client may be slow or
//! hostile. Here none of that can delay a message: the admin thread reads the shards' counters
//! directly (single-writer atomics, [`crate::metrics`]) and asks shards for everything else
//! over a control channel per shard ([`crate::shard::control`]: a lock-free request queue the
//! shard drains at the end of each batch of work, replies over an SPSC ring). It is unpinned so the scheduler puts it wherever a
//! core has room; it is idle unless an operator or the backend calls it.
//!
//! The listener starts inside `Broker::start` *before* the logs are recovered, so `/healthz`
//! and `/readyz` answer (`/readyz` with 503) while a large log recovers; the shards connect
//! their control channels once they run, and until then the `/v1` routes answer 503.
//!
//! ## Protection
//!
//! Requests are read with `httparse` ([`http`]) within hard limits: 16 KiB of head, 32
//! headers, `max_request` bytes in all, `request_timeout` from the first byte; an idle
//! keep-alive connection is closed after `keepalive_timeout`, and at most `max_connections`
//! are open at once. A client breaking any of these gets an error answer (when it can still
//! take one, itself bounded in time) and is closed; everyone else is served on.
//!
//! ## Routes
//!
//! See [`api`] and `openapi.yaml` beside this file (served at `/v1/openapi.yaml`).

pub mod api;
pub mod health;
pub mod http;
pub mod shards;

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future;
use glommio::net::{TcpListener, TcpStream};
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use crate::auth::KeyFile;
use crate::config::Config;
use crate::metrics::ShardMetrics;
use crate::shard::control::{AdminEnds, ShardControl};
use api::Ctx;
use health::Health;
use http::{Limits, ReadError, Response};
use shards::Links;

/// Environment variable that overrides `[admin] token_file`.
pub const ADMIN_TOKEN_ENV: &str = "RINGPOST_ADMIN_TOKEN";

/// The admin API's bearer token: the same key-file logic as the auth secret.
pub const ADMIN_TOKEN: KeyFile = KeyFile {
    what: "the admin token",
    env: ADMIN_TOKEN_ENV,
};

/// Memory glommio registers for the admin executor's ring (no DMA file I/O here).
const IO_MEMORY: usize = 256 * 1024;
/// Pause after accept(2) fails (e.g. EMFILE), so a full fd table does not spin the thread.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen on {addr} (admin.listen): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the admin thread: {0}")]
    Executor(String),
    #[error("cannot create the admin stop channel: {0}")]
    Trigger(std::io::Error),
}

/// The running admin listener; dropping it stops the admin thread.
pub struct AdminServer {
    addr: SocketAddr,
    join: Option<ExecutorJoinHandle<()>>,
    stop: std::os::unix::net::UnixStream,
}

/// Starts the admin listener if `[admin] listen` is set: returns it and each shard's end of
/// its control channel (all `None` when the listener is disabled).
pub fn launch(
    cfg: &Arc<Config>,
    shards: usize,
    token: &[u8],
    health: &Arc<Health>,
    metrics: &Arc<[Arc<ShardMetrics>]>,
) -> Result<(Option<AdminServer>, Vec<Option<ShardControl>>), AdminError> {
    let Some(addr) = cfg.admin.listen else {
        return Ok((None, (0..shards).map(|_| None).collect()));
    };
    let (ends, controls) = crate::shard::control::channels(shards);
    let server = AdminServer::start(AdminStart {
        cfg: cfg.clone(),
        addr,
        token: token.to_vec(),
        health: health.clone(),
        metrics: metrics.clone(),
        ends,
    })?;
    Ok((Some(server), controls.into_iter().map(Some).collect()))
}

/// What the admin thread is started with.
pub struct AdminStart {
    pub cfg: Arc<Config>,
    pub addr: SocketAddr,
    pub token: Vec<u8>,
    pub health: Arc<Health>,
    pub metrics: Arc<[Arc<ShardMetrics>]>,
    pub ends: Vec<AdminEnds>,
}

impl AdminServer {
    /// Binds `start.addr` on the calling thread (a bad address fails here) and starts the
    /// admin thread.
    pub fn start(start: AdminStart) -> Result<AdminServer, AdminError> {
        let listener = bind(start.addr)?;
        let addr = socket2::SockRef::from(&listener)
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or(start.addr);
        let (stop, theirs) = std::os::unix::net::UnixStream::pair().map_err(AdminError::Trigger)?;
        let trigger = OwnedFd::from(theirs);
        let join = LocalExecutorBuilder::new(Placement::Unbound)
            .name("admin")
            .io_memory(IO_MEMORY)
            .spawn(move || async move {
                // SAFETY: a listening TCP socket bound above; ownership moves here.
                let listener = unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) };
                // SAFETY: one end of a socketpair made for this thread; ownership moves here.
                let trigger =
                    unsafe { glommio::net::UnixStream::from_raw_fd(trigger.into_raw_fd()) };
                let ctx = Rc::new(Ctx {
                    cfg: start.cfg,
                    token: start.token,
                    health: start.health,
                    metrics: start.metrics,
                    links: Links::start(start.ends),
                    fds: Rc::default(),
                });
                let accepting = glommio::spawn_local(accept_loop(ctx, listener));
                let mut byte = [0u8; 1];
                let _ = trigger.peek(&mut byte).await;
                accepting.cancel().await;
            })
            .map_err(|e| AdminError::Executor(e.to_string()))?;
        tracing::info!(%addr, "admin listening");
        Ok(AdminServer {
            addr,
            join: Some(join),
            stop,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and ends the admin thread (open admin connections are dropped).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        use std::io::Write;
        let _ = (&self.stop).write_all(&[1]);
        if let Some(join) = self.join.take() {
            if join.join().is_err() {
                tracing::warn!("the admin thread panicked");
            }
        }
    }
}

/// How long a taken admin address is retried: a broker killed a moment ago can still hold its
/// listener while the kernel tears its io_uring down (asynchronously, after the process is
/// gone), as with the client listeners (`shard::bootstrap`).
const BIND_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);
const BIND_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

fn bind(addr: SocketAddr) -> Result<OwnedFd, AdminError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |source| AdminError::Bind { addr, source };
    let deadline = std::time::Instant::now() + BIND_PATIENCE;
    loop {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(err)?;
        socket.set_reuse_address(true).map_err(err)?;
        match socket.bind(&addr.into()) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(BIND_RETRY);
            }
            Err(e) => return Err(err(e)),
            Ok(()) => {
                socket.listen(128).map_err(err)?;
                return Ok(OwnedFd::from(socket));
            }
        }
    }
}

async fn accept_loop(ctx: Rc<Ctx>, listener: TcpListener) {
    let open = Rc::new(Cell::new(0usize));
    loop {
        match listener.accept().await {
            Ok(stream) => {
                if open.get() >= ctx.cfg.admin.max_connections {
                    tracing::info!(
                        peer = ?stream.peer_addr().ok(),
                        max = ctx.cfg.admin.max_connections,
                        "admin connection refused: admin.max_connections reached"
                    );
                    continue; // dropping the stream closes it
                }
                open.set(open.get() + 1);
                let (ctx, open) = (ctx.clone(), open.clone());
                glommio::spawn_local(async move {
                    serve(&ctx, stream).await;
                    open.set(open.get() - 1);
                })
                .detach();
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                glommio::timer::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

/// Serves one admin connection: requests in turn until it closes, breaks a limit or stays
/// idle past the keep-alive timeout.
async fn serve(ctx: &Ctx, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok();
    let admin = &ctx.cfg.admin;
    let limits = Limits {
        max_request: admin.max_request,
        request_timeout: admin.request_timeout,
        keepalive_timeout: admin.keepalive_timeout,
    };
    let mut buf = Vec::new();
    loop {
        let req = match http::read_request(&mut stream, &mut buf, limits).await {
            Ok(req) => req,
            Err(e) => {
                if let Some(resp) = refusal(&e) {
                    tracing::info!(peer = ?peer, status = resp.status, error = ?e, "admin request refused");
                    let _ = write(&mut stream, &resp, false, limits.request_timeout).await;
                }
                return;
            }
        };
        let resp = api::handle(ctx, &req).await;
        if resp.status >= 400 {
            tracing::info!(peer = ?peer, method = %req.method, path = %req.path, status = resp.status, "admin request refused");
        } else {
            tracing::debug!(peer = ?peer, method = %req.method, path = %req.path, status = resp.status, "admin request");
        }
        if !write(&mut stream, &resp, req.keep_alive, limits.request_timeout).await
            || !req.keep_alive
        {
            return;
        }
    }
}

/// The answer to a request that could not be read; `None`: close without one.
fn refusal(e: &ReadError) -> Option<Response> {
    let (status, message) = match e {
        ReadError::Closed | ReadError::Idle => return None,
        ReadError::Timeout => (
            408,
            "the request did not arrive in time (admin.request_timeout)".to_string(),
        ),
        ReadError::Malformed(why) => (400, format!("not an HTTP/1.1 request: {why}")),
        ReadError::HeadTooLarge => (
            431,
            format!(
                "the request head is over {} bytes or {} headers",
                http::MAX_HEAD,
                http::MAX_HEADERS
            ),
        ),
        ReadError::TooLarge { limit } => (
            413,
            format!("the request is over {limit} bytes (admin.max_request)"),
        ),
        ReadError::LengthRequired => (
            411,
            "send the body with a Content-Length, not chunked".to_string(),
        ),
    };
    Some(api::read_error_response(status, &message))
}

/// Writes `resp` within `timeout` (a client that does not read cannot hold the task).
async fn write(
    stream: &mut TcpStream,
    resp: &Response,
    keep_alive: bool,
    timeout: Duration,
) -> bool {
    let written = async { http::write_response(stream, resp, keep_alive).await.is_ok() };
    let late = async {
        glommio::timer::sleep(timeout).await;
        false
    };
    future::or(written, late).await
}

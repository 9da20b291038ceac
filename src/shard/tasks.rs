//! The shard's long-running tasks, each registered by name with the point of shutdown at which
//! it stops ([`StopAt`]), so the shutdown order is written down once ([`super::drain`]) instead
//! of being implied by code in bootstrap.
//!
//! | task | kind | stops at |
//! |---|---|---|
//! | `acceptor` | accept loop ([`super::acceptor`]) | [`StopAt::Accepting`] |
//! | `ws-acceptor` | accept loop of the WebSocket port, if `ws_listen` is set | [`StopAt::Accepting`] |
//! | `idle-sweep` | every [`SWEEP_EVERY`]: idle-timeout wheel | [`StopAt::SessionsGone`] |
//! | `retention` | every [`RETENTION_EVERY`]: delete expired segments | [`StopAt::SessionsGone`] |
//! | `expiry` | every [`EXPIRY_EVERY`]: dedup windows, group reservations left by a crash | [`StopAt::SessionsGone`] |
//! | `park-poller` | wakes parked connections with input | [`StopAt::SessionsGone`] |
//! | `committer` | group commit after each batch of work, pipelined ([`COMMITS_IN_FLIGHT`]) | [`StopAt::Committed`] |
//! | `syncer` | fsync = "interval": periodic log sync | [`StopAt::Synced`] |
//! | `control` | the admin thread's requests ([`super::control`]), when `[admin]` is on | [`StopAt::Synced`] |
//!
//! The mesh's flusher and receiver tasks are not here: they live as long as the mesh and end
//! when it closes ([`super::transport`]).

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use futures_lite::future;
use glommio::Task;

use super::inbox::{sync_batch, CommitBatch};

use super::park;
use super::state::Shard;

/// How often each shard sweeps its idle-timeout wheel.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How often each shard applies time-based retention (size-based retention also runs at every
/// segment roll).
pub const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// How often expired dedup entries and abandoned group reservations are dropped.
pub const EXPIRY_EVERY: Duration = Duration::from_secs(10);

/// The point of the shutdown sequence at which a task is stopped, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopAt {
    /// First: no new connections.
    Accepting,
    /// Once every session has ended: tasks that touch connections.
    SessionsGone,
    /// Once nothing is left to commit. A running sync holds pointers into the log, so the
    /// committer is only ever stopped while idle.
    Committed,
    /// Once no sync is running (the periodic syncer, for the same reason).
    Synced,
}

struct Registered {
    name: &'static str,
    stop_at: StopAt,
    task: Task<()>,
}

/// The shard's named tasks.
#[derive(Default)]
pub struct Tasks {
    running: Vec<Registered>,
}

/// A task being registered: says when it stops ([`Spawn::on_shutdown`]), which starts it.
#[must_use = "a task starts only once on_shutdown says when it stops"]
pub struct Spawn<'a, F> {
    tasks: &'a mut Tasks,
    name: &'static str,
    body: F,
}

impl<F: Future<Output = ()> + 'static> Spawn<'_, F> {
    pub fn on_shutdown(self, stop_at: StopAt) {
        tracing::trace!(task = self.name, ?stop_at, "task started");
        let task = glommio::spawn_local(self.body);
        self.tasks.running.push(Registered {
            name: self.name,
            stop_at,
            task,
        });
    }
}

impl Tasks {
    /// A task running `body` until it is stopped.
    pub fn spawn<F: Future<Output = ()> + 'static>(
        &mut self,
        name: &'static str,
        body: F,
    ) -> Spawn<'_, F> {
        Spawn {
            tasks: self,
            name,
            body,
        }
    }

    /// A task calling `tick` every `period`.
    pub fn every(
        &mut self,
        name: &'static str,
        period: Duration,
        mut tick: impl FnMut() + 'static,
    ) -> Spawn<'_, impl Future<Output = ()> + 'static> {
        self.spawn(name, async move {
            loop {
                glommio::timer::sleep(period).await;
                tick();
            }
        })
    }

    /// Stops (cancels) every task registered for `at`.
    pub async fn stop(&mut self, at: StopAt) {
        let (stopping, keep) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|t| t.stop_at == at);
        self.running = keep;
        for t in stopping {
            tracing::trace!(task = t.name, "task stopped");
            t.task.cancel().await;
        }
    }
}

/// Registers the shard's own tasks (everything but the acceptors, which bootstrap starts with
/// their listeners).
pub fn start(shard: &Rc<Shard>, tasks: &mut Tasks) {
    let s = shard.clone();
    tasks
        .every("idle-sweep", SWEEP_EVERY, move || s.sweep_idle())
        .on_shutdown(StopAt::SessionsGone);
    let s = shard.clone();
    tasks
        .every("retention", RETENTION_EVERY, move || s.apply_retention())
        .on_shutdown(StopAt::SessionsGone);
    let s = shard.clone();
    tasks
        .every("expiry", EXPIRY_EVERY, move || s.expire())
        .on_shutdown(StopAt::SessionsGone);
    tasks
        .spawn("park-poller", poll_parked(shard.clone()))
        .on_shutdown(StopAt::SessionsGone);
    tasks
        .spawn("resumer", resume_parked(shard.clone()))
        .on_shutdown(StopAt::SessionsGone);
    tasks
        .spawn("committer", commit_loop(shard.clone()))
        .on_shutdown(StopAt::Committed);
    if shard.cfg.storage.fsync == crate::config::FsyncPolicy::Interval {
        tasks
            .spawn("syncer", sync_loop(shard.clone()))
            .on_shutdown(StopAt::Synced);
    }
}

/// Registers the `control` task serving the admin thread's requests. It stops last: a
/// publish is answered by the final commits of the shutdown, and until then a scrape or a
/// lookup still gets an answer (publishes are refused with SHUTDOWN once draining).
pub fn start_control(shard: &Rc<Shard>, tasks: &mut Tasks, ends: super::control::ShardControl) {
    tasks
        .spawn("control", super::control::serve(shard.clone(), ends))
        .on_shutdown(StopAt::Synced);
}

/// Group commits in flight at once at most: the next one's sync starts while the previous
/// one's runs, so a message appended during a sync waits for a sync of its own, not for the
/// end of the current one first. Three rather than two: the wait for a free slot fell from
/// ~110 to ~25 µs p50 at 10,000 msg/s on the dev box (BENCHMARKS.md, "The durable latency
/// floor"); each fdatasync of the same file gets slower as more run at once.
pub const COMMITS_IN_FLIGHT: usize = 3;

/// What woke the committer.
enum CommitWake {
    Due,
    Synced(CommitBatch, std::io::Result<()>),
}

/// Group commit: runs once the current batch of work has yielded, so every append made in
/// that batch shares one sync. Pipelined: while up to [`COMMITS_IN_FLIGHT`] syncs run, new
/// appends start the next batch's sync at once; batches are finished (acked, delivered) in
/// the order they began, each once its own sync ended.
///
/// The syncs in flight are futures of this task, polled in place in a ring of slots made
/// once, not tasks of their own: starting one allocates nothing (a task each was one heap
/// allocation per sync, BENCHMARKS.md "The executor's loop without allocations"). Every
/// running one is polled at each wake-up, so each is submitted and completes on its own; one
/// that ends before an older one waits in `done` until that one is finished.
async fn commit_loop(shard: Rc<Shard>) {
    let mut slots: [_; COMMITS_IN_FLIGHT] = std::array::from_fn(|_| empty_slot(sync_batch));
    let mut done: [Option<(CommitBatch, std::io::Result<()>)>; COMMITS_IN_FLIGHT] =
        Default::default();
    // The oldest sync's slot, and how many are in flight from there on (round the ring).
    let (mut oldest, mut running) = (0, 0);
    loop {
        let wake = future::poll_fn(|cx| {
            for k in 0..running {
                let at = (oldest + k) % COMMITS_IN_FLIGHT;
                if let Some(sync) = slots[at].as_mut().as_pin_mut() {
                    if let Poll::Ready(out) = sync.poll(cx) {
                        slots[at].set(None);
                        done[at] = Some(out);
                    }
                }
            }
            if running > 0 {
                if let Some((batch, result)) = done[oldest].take() {
                    return Poll::Ready(CommitWake::Synced(batch, result));
                }
            }
            if running < COMMITS_IN_FLIGHT && shard.commit_due.poll_wait(cx).is_ready() {
                return Poll::Ready(CommitWake::Due);
            }
            Poll::Pending
        })
        .await;
        match wake {
            CommitWake::Due => {
                if let Some(batch) = shard.begin_commit() {
                    if !batch.syncs() && running == 0 {
                        shard.finish_commit(batch, Ok(()));
                    } else {
                        // One with nothing to sync still takes a slot: it must not overtake
                        // the batches before it (its sync future ends at its first poll).
                        slots[(oldest + running) % COMMITS_IN_FLIGHT].set(Some(sync_batch(batch)));
                        running += 1;
                    }
                }
            }
            CommitWake::Synced(batch, result) => {
                oldest = (oldest + 1) % COMMITS_IN_FLIGHT;
                running -= 1;
                shard.finish_commit(batch, result);
            }
        }
        shard.committing.set(running > 0);
        shard.changed.notify_all();
    }
}

/// A committer's slot for a future of `start`'s (named through `start`: an async fn's
/// future has no other name).
fn empty_slot<F: Future>(_start: fn(CommitBatch) -> F) -> Pin<Box<Option<F>>> {
    Box::pin(None)
}

/// fsync = "interval": syncs whatever was appended every `fsync_interval`.
async fn sync_loop(shard: Rc<Shard>) {
    let every = shard.cfg.storage.fsync_interval;
    loop {
        glommio::timer::sleep(every).await;
        if let Err(e) = shard.sync_off_thread().await {
            tracing::error!(shard = shard.id, error = %e, "periodic log sync failed");
        }
    }
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

/// Starts a session task for each parked connection that was notified (see [`park`]).
async fn resume_parked(shard: Rc<Shard>) {
    let mut ids = Vec::new();
    loop {
        ids.clear();
        park::take_resumed(&mut ids).await;
        let conns = shard.conns.borrow();
        for conn in ids.iter().filter_map(|id| conns.get(id)) {
            glommio::spawn_local(super::session::resume(shard.clone(), conn.clone())).detach();
        }
    }
}

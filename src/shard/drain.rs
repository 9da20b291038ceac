//! Drain: a shard's graceful shutdown, in order, all of it bounded by `[server] shutdown_grace`.
//!
//! 1. Stop accepting; take in what every connection already sent (so every send that reached
//!    the broker before the signal is answered); stop reading clients; tell every peer
//!    `Drained`.
//! 2. Keep serving the mesh until every peer has drained and every message this shard sent
//!    has its SendAck back, and hand the acks we owe to the queues.
//! 3. GoAway(SHUTDOWN) to every connection, flush, wait for the sessions to end.
//! 4. Stop the tasks in their [`StopAt`] order: timers and the poller; the committer once
//!    nothing is left to commit; the periodic syncer between syncs. One last sync covers the
//!    cursor records, then the mesh closes.

use std::time::Instant;

use futures_lite::future;

use super::envelope::Envelope;
use super::session;
use super::state::Shard;
use super::tasks::{StopAt, Tasks};
use crate::protocol::Code;
use std::rc::Rc;

impl Shard {
    /// Step 1: stop reading clients, tell peers nothing new will come from us.
    pub fn begin_drain(&self) {
        self.draining.set(true);
        for conn in self.conns.borrow().values() {
            conn.wake.notify();
        }
        for peer in (0..self.shards).filter(|&p| p != self.id) {
            self.mesh.push(peer, Envelope::Drained);
        }
        self.changed.notify_all();
    }

    /// True once every peer has drained and every message we sent has its ack.
    pub fn quiesced(&self) -> bool {
        self.drained_peers.get() + 1 >= self.shards
            && self.in_flight.get() == 0
            && self.pending.borrow().is_empty()
            && !self.committing.get()
    }

    /// Step 3: GoAway(SHUTDOWN) to every connection.
    pub fn say_goodbye(&self) {
        for conn in self.connections() {
            self.detach(&conn);
            conn.go_away(Code::SHUTDOWN, "broker is shutting down");
            self.mark_dirty(&conn);
        }
        self.flush_dirty();
    }
}

/// Runs the whole shutdown sequence (see the module doc) within `deadline`.
pub async fn shutdown(shard: &Rc<Shard>, tasks: &mut Tasks, deadline: Instant) {
    tracing::info!(
        shard = shard.id,
        connections = shard.connection_count(),
        "shutting down"
    );
    tasks.stop(StopAt::Accepting).await;
    session::read_pending_input(shard);
    shard.begin_drain();
    wait_until(shard, deadline, |s| s.quiesced()).await;
    let _ = future::or(shard.mesh.wait_idle(), sleep_until(deadline)).await;
    shard.say_goodbye();
    wait_until(shard, deadline, |s| s.live_sessions.get() == 0).await;
    if !shard.quiesced() || shard.live_sessions.get() > 0 {
        tracing::warn!(
            shard = shard.id,
            sessions = shard.live_sessions.get(),
            "shutdown_grace ran out before the shard was quiet"
        );
    }
    tasks.stop(StopAt::SessionsGone).await;
    // The committer drains what is left; once it idles, it stops.
    shard.commit_due.notify();
    wait_until(shard, deadline, |s| {
        !s.is_committing() && !s.has_uncommitted()
    })
    .await;
    tasks.stop(StopAt::Committed).await;
    wait_until(shard, deadline, |s| !s.sync_in_flight()).await;
    tasks.stop(StopAt::Synced).await;
    shard.sync_log();
    shard.mesh.close();
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

//! Transport between shards: an N×N mesh of bounded SPSC queues carrying batches of envelopes.
//!
//! Each ordered pair of shards (i → j, i ≠ j) has its own glommio `shared_channel` (a bounded,
//! lock-free single-producer single-consumer ring with eventfd wake-ups). We build the mesh by
//! hand instead of using glommio's `channel_mesh` so that queue indices are our shard indices
//! (the latter numbers peers in join order).
//!
//! Sending side, per peer: code on the shard pushes envelopes into a local `outbox` (a plain
//! `Vec`, never blocking) and a flusher task moves them to the queue in batches of up to
//! [`MAX_BATCH`]. While the flusher waits for room in a full queue, envelopes keep accumulating
//! in the outbox, so batches grow exactly when the peer is busy.
//!
//! Backpressure: when any outbox holds more than `high_water` envelopes, session tasks stop
//! reading their sockets ([`Mesh::wait_for_space`]) until flushers make room, so a slow peer
//! slows the clients that feed it; nothing is dropped. The overshoot past `high_water` is bounded
//! by what one read of one connection can carry.
//!
//! Why this cannot deadlock: a shard's receiving tasks never wait on its sending side. They
//! handle every envelope synchronously and only *push* to outboxes (acks back to the sender's
//! shard); only flushers and session tasks ever await, and a flusher waits only for the peer's
//! receiver, which always makes progress. So there is no cycle of blocking waits between
//! shards. The acks a receiver pushes are bounded too: one per message received, and messages
//! are bounded by the senders' own backpressure.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use glommio::channels::shared_channel::{self, ConnectedSender, SharedReceiver, SharedSender};

use super::envelope::Envelope;
use super::wake::{Broadcast, Signal};

/// Envelopes per queue slot at most; bounds the work a receiver does per wake-up.
pub const MAX_BATCH: usize = 1024;

/// A batch of envelopes: the unit a queue slot carries.
pub type Batch = Vec<Envelope>;

/// One shard's ends of the mesh before its executor connects them.
pub struct MeshPorts {
    /// `senders[j]`: this shard → shard j (`None` for itself).
    pub senders: Vec<Option<SharedSender<Batch>>>,
    /// `receivers[i]`: shard i → this shard (`None` for itself).
    pub receivers: Vec<Option<SharedReceiver<Batch>>>,
}

/// Builds the full mesh for `shards` shards with `capacity` batches per queue.
pub fn build_mesh(shards: usize, capacity: usize) -> Vec<MeshPorts> {
    let mut ports: Vec<MeshPorts> = (0..shards)
        .map(|_| MeshPorts {
            senders: (0..shards).map(|_| None).collect(),
            receivers: (0..shards).map(|_| None).collect(),
        })
        .collect();
    for from in 0..shards {
        for to in 0..shards {
            if from != to {
                let (tx, rx) = shared_channel::new_bounded(capacity);
                ports[from].senders[to] = Some(tx);
                ports[to].receivers[from] = Some(rx);
            }
        }
    }
    ports
}

/// The sending side of one shard: outboxes, flusher wake-ups, backpressure state.
pub struct Mesh {
    me: usize,
    outbox: Vec<RefCell<Vec<Envelope>>>,
    kick: Vec<Signal>,
    /// Batches handed to a queue but not yet accepted by it.
    sending: Cell<usize>,
    /// Notified whenever a flusher moved a batch: outboxes shrank.
    progress: Broadcast,
    high_water: usize,
    closed: Cell<bool>,
}

impl Mesh {
    pub fn new(me: usize, shards: usize, high_water: usize) -> Mesh {
        Mesh {
            me,
            outbox: (0..shards).map(|_| RefCell::new(Vec::new())).collect(),
            kick: (0..shards).map(|_| Signal::default()).collect(),
            sending: Cell::new(0),
            progress: Broadcast::default(),
            high_water,
            closed: Cell::new(false),
        }
    }

    /// Queues `env` for `peer` (never blocks; see the module doc for why that is bounded).
    pub fn push(&self, peer: usize, env: Envelope) {
        debug_assert_ne!(peer, self.me, "local work never goes through the mesh");
        let mut out = self.outbox[peer].borrow_mut();
        out.push(env);
        if out.len() == 1 {
            self.kick[peer].notify();
        }
    }

    /// True when some outbox is over its high-water mark.
    pub fn congested(&self) -> bool {
        self.outbox
            .iter()
            .any(|o| o.borrow().len() >= self.high_water)
    }

    /// Waits until no outbox is over its high-water mark.
    pub async fn wait_for_space(&self) {
        while self.congested() {
            self.progress.wait().await;
        }
    }

    /// True when every outbox is empty and no batch is in hand.
    pub fn is_idle(&self) -> bool {
        self.sending.get() == 0 && self.outbox.iter().all(|o| o.borrow().is_empty())
    }

    /// Waits until [`Mesh::is_idle`].
    pub async fn wait_idle(&self) {
        while !self.is_idle() {
            self.progress.wait().await;
        }
    }

    /// Lets flushers finish what is queued and then stop.
    pub fn close(&self) {
        self.closed.set(true);
        for k in &self.kick {
            k.notify();
        }
    }

    /// Moves `peer`'s outbox into its queue, batch by batch, until the mesh is closed.
    pub async fn flush_to(self: Rc<Self>, peer: usize, sender: ConnectedSender<Batch>) {
        loop {
            let batch = {
                let mut out = self.outbox[peer].borrow_mut();
                if out.is_empty() {
                    None
                } else if out.len() <= MAX_BATCH {
                    Some(std::mem::take(&mut *out))
                } else {
                    Some(out.drain(..MAX_BATCH).collect::<Vec<_>>())
                }
            };
            match batch {
                Some(batch) => {
                    self.sending.set(self.sending.get() + 1);
                    let result = sender.send(batch).await;
                    self.sending.set(self.sending.get() - 1);
                    if let Err(e) = result {
                        // Only happens when the peer's executor has exited (shutdown).
                        tracing::debug!(peer, error = %e, "peer gone; dropping batch");
                    }
                    self.progress.notify_all();
                }
                None if self.closed.get() => return,
                None => self.kick[peer].wait().await,
            }
        }
    }
}

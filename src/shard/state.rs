//! Per-shard state and the message path: users, their logged messages, connections, acks.
//!
//! Everything here runs on the shard's own thread, synchronously, between awaits; `RefCell`
//! borrows never live across an await. Entry points:
//! - [`Shard::adopt`]: a logged-in connection arrives (from this shard's acceptor or a peer's
//!   hand-off); LoginOk, replay, register the device, start its session task.
//! - `on_send`: a Send frame from a local connection; rate limit, dedup, route.
//! - `accept_message`: the owner of the recipient assigns the seq and appends the message to
//!   the shard's log; the user's index remembers (seq, position).
//! - [`Shard::commit`]: group commit. Once per batch of work it syncs the log (per
//!   `[storage] fsync`), then marks the appended messages durable, which releases their
//!   SendAcks and their deliveries.
//! - [`Shard::handle_envelope`]: work from peers.
//!
//! Delivery: every device has `sent_seq`, the last seq queued to it. A device is refilled from
//! the log, in seq order, up to the user's durable seq, while its queue holds less than
//! `max_outbound` bytes ([`Shard::after_drain`]). Live delivery, replay at login and catch-up of a
//! slow reader are all this one refill, so they can neither gap nor reorder at a switch, and a
//! slow reader costs memory only up to `max_outbound`.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::conn::{Conn, ConnState};
use super::cursors::Cursors;
use super::dedup::{Dedup, Verdict};
use super::envelope::{ConnId, Envelope, Handoff, Message, SendAck};
use super::park::Parking;
use super::ratelimit::{Bucket, RateVerdict};
use super::recovery::Recovered;
use super::routing::owner;
use super::session;
use super::transport::Mesh;
use super::wake::{Broadcast, Signal};
use crate::config::{Config, FsyncPolicy};
use crate::log::record::{CursorRecord, MessageRecord, Record, NO_POSITION};
use crate::log::Log;
use crate::protocol::{self, ClientMsg, Code, ServerMsg};

/// What the owner shard knows about one user.
#[derive(Default)]
struct User {
    /// Newest assigned seq (0 = none yet).
    head_seq: u64,
    /// Newest seq whose log record is durable (per the fsync policy): what may be delivered.
    durable_seq: u64,
    /// Retained messages in the log: (seq, position), oldest first, contiguous seqs. Replay
    /// of K messages is K reads at known positions, never a scan of the shard's log.
    index: VecDeque<(u64, u64)>,
    /// Device → highest seq it acked (durable as cursor records in the log).
    cursors: Cursors,
    /// Connected devices.
    devices: Vec<Rc<Conn>>,
    /// The user's own recent sends (idempotency window); allocated at the first send, so a
    /// user who only receives pays 8 bytes for it.
    sent: Option<Box<Dedup>>,
}

impl User {
    fn oldest_seq(&self) -> u64 {
        self.index.front().map_or(0, |&(seq, _)| seq)
    }

    /// The first seq that can still be replayed.
    fn first_retained(&self) -> u64 {
        self.index
            .front()
            .map_or(self.head_seq + 1, |&(seq, _)| seq)
    }

    fn position(&self, seq: u64) -> Option<u64> {
        let front = self.index.front()?.0;
        let i = usize::try_from(seq.checked_sub(front)?).ok()?;
        self.index.get(i).map(|&(_, pos)| pos)
    }

    /// Messages none of the user's devices has acked yet.
    fn unacked(&self) -> u64 {
        let acked = self.cursors.max();
        self.head_seq - acked.max(self.first_retained() - 1).min(self.head_seq)
    }
}

/// A SendAck waiting for the group commit that makes its message durable.
enum PendingAck {
    /// The sender is served by this shard.
    Local {
        sender: Arc<str>,
        origin_conn: ConnId,
        client_msg_id: u64,
    },
    /// The sender's shard is `peer`.
    Remote { peer: usize, ack: SendAck },
}

/// Idle-timeout wheel: connection ids bucketed by the second their deadline falls in. Each
/// connection sits in exactly one bucket; a sweep re-files those that were active since, so the
/// cost is O(expiring buckets), not O(connections), and there is no timer per connection.
#[derive(Default)]
struct IdleWheel {
    buckets: BTreeMap<u64, Vec<ConnId>>,
}

impl IdleWheel {
    fn insert(&mut self, deadline_ms: u64, id: ConnId) {
        self.buckets
            .entry(deadline_ms.div_ceil(1000))
            .or_default()
            .push(id);
    }

    fn take_due(&mut self, now_ms: u64) -> Vec<ConnId> {
        let later = self.buckets.split_off(&(now_ms / 1000 + 1));
        let due = std::mem::replace(&mut self.buckets, later);
        due.into_values().flatten().collect()
    }
}

pub struct Shard {
    pub id: usize,
    pub shards: usize,
    pub cfg: Arc<Config>,
    pub verifier: Arc<crate::auth::Verifier>,
    pub mesh: Rc<Mesh>,
    epoch: Instant,
    next_conn: Cell<ConnId>,
    conns: RefCell<HashMap<ConnId, Rc<Conn>>>,
    users: RefCell<HashMap<Arc<str>, User>>,
    dirty: RefCell<Vec<Rc<Conn>>>,
    idle: RefCell<IdleWheel>,
    /// Read buffer shared by all connections of the shard (reads are synchronous).
    pub scratch: RefCell<Vec<u8>>,
    /// The epoll set holding parked connections.
    pub parking: Parking,
    log: RefCell<Log>,
    /// Appended but not yet committed: their acks, and the users whose durable seq must move.
    pending: RefCell<Vec<PendingAck>>,
    /// (user, seq appended): what a commit may mark durable.
    touched: RefCell<Vec<(Arc<str>, u64)>>,
    /// A commit is between taking its batch and releasing it.
    committing: Cell<bool>,
    /// Wakes the committer task.
    pub commit_due: Signal,
    /// Shutdown has begun: no new connections, no more client reads.
    pub draining: Cell<bool>,
    drained_peers: Cell<usize>,
    /// Messages sent to peers whose SendAck has not come back yet.
    in_flight: Cell<u64>,
    pub live_sessions: Cell<usize>,
    /// Notified on shutdown progress (peers drained, acks back, sessions gone).
    pub changed: Broadcast,
}

/// Bytes read from a socket per `recv` call.
pub const READ_CHUNK: usize = 64 * 1024;

impl Shard {
    pub fn new(
        id: usize,
        shards: usize,
        cfg: Arc<Config>,
        verifier: Arc<crate::auth::Verifier>,
        mesh: Rc<Mesh>,
        recovered: Recovered,
        parking: Parking,
    ) -> Shard {
        let users = recovered
            .users
            .into_iter()
            .map(|(name, r)| {
                let user = User {
                    head_seq: r.head_seq,
                    durable_seq: r.head_seq,
                    index: r.index,
                    cursors: r.cursors,
                    ..User::default()
                };
                (name, user)
            })
            .collect();
        Shard {
            id,
            shards,
            cfg,
            verifier,
            mesh,
            epoch: Instant::now(),
            next_conn: Cell::new(1),
            conns: RefCell::default(),
            users: RefCell::new(users),
            dirty: RefCell::default(),
            idle: RefCell::default(),
            scratch: RefCell::new(vec![0; READ_CHUNK]),
            parking,
            log: RefCell::new(recovered.log),
            pending: RefCell::default(),
            touched: RefCell::default(),
            committing: Cell::new(false),
            commit_due: Signal::default(),
            draining: Cell::new(false),
            drained_peers: Cell::new(0),
            in_flight: Cell::new(0),
            live_sessions: Cell::new(0),
            changed: Broadcast::default(),
        }
    }

    /// Monotonic milliseconds since the shard started.
    pub fn mono_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn wall_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    pub fn connection_count(&self) -> usize {
        self.conns.borrow().len()
    }

    // ---- connections ------------------------------------------------------------------------

    /// Takes over a logged-in connection: LoginOk, replay, register, start its session task.
    /// `fd` is the connection's socket, owned from here on.
    pub fn adopt(
        self: &Rc<Self>,
        fd: std::os::fd::RawFd,
        user: Arc<str>,
        device_id: Box<str>,
        last_seq: u64,
        leftover: Vec<u8>,
    ) {
        let id = self.next_conn.get();
        self.next_conn.set(id + 1);
        let now = self.mono_ms();
        let conn = Rc::new(Conn {
            id,
            fd: Cell::new(fd),
            user: user.clone(),
            device_id,
            tx: RefCell::default(),
            writing: Cell::new(0),
            rx: RefCell::default(),
            state: Cell::new(ConnState::Open),
            last_seen_ms: Cell::new(now),
            acked: Cell::new(0),
            sent_seq: Cell::new(0),
            behind: Cell::new(false),
            bucket: Cell::new(Bucket::new(self.cfg.limits.sends_per_sec, now)),
            dirty: Cell::new(false),
            wake: Default::default(),
        });
        if self.draining.get() {
            conn.go_away(Code::SHUTDOWN, "broker is shutting down");
        } else {
            self.register_device(&conn, last_seq);
        }
        self.conns.borrow_mut().insert(id, conn.clone());
        let idle_ms = self.cfg.limits.idle_timeout.as_millis() as u64;
        self.idle.borrow_mut().insert(now + idle_ms, id);
        self.mark_dirty(&conn);
        self.live_sessions.set(self.live_sessions.get() + 1);
        glommio::spawn_local(session::run(self.clone(), conn, leftover)).detach();
        self.flush_dirty();
    }

    fn register_device(&self, conn: &Rc<Conn>, last_seq: u64) {
        let mut users = self.users.borrow_mut();
        let user = users.entry(conn.user.clone()).or_default();
        if !conn.device_id.is_empty() {
            if let Some(pos) = user
                .devices
                .iter()
                .position(|d| d.device_id == conn.device_id)
            {
                let old = user.devices.remove(pos);
                old.go_away(
                    Code::SESSION_REPLACED,
                    "another connection logged in with this device_id",
                );
                self.mark_dirty(&old);
            }
        }
        let max = self.cfg.limits.max_devices;
        if user.devices.len() >= max {
            let message = format!("user already has {max} devices connected (max_devices)");
            conn.close_with(&ServerMsg::Error {
                code: Code::TOO_MANY_DEVICES,
                message: &message,
            });
            return;
        }
        let oldest = user.oldest_seq();
        let first_retained = user.first_retained();
        // last_seq 0: resume from this device's stored cursor (a new device has none and gets
        // everything still retained).
        let last_seq = match last_seq {
            0 => user.cursors.get(&conn.device_id).unwrap_or(0),
            n => n,
        };
        // Replay starts after last_seq, or at the oldest retained message if that is later;
        // in the latter case part of what the device asked for is gone, and LoginOk says so.
        let start_after = last_seq.min(user.head_seq).max(first_retained - 1);
        let gap = last_seq > 0 && last_seq < user.head_seq && first_retained > last_seq + 1;
        conn.push(&ServerMsg::LoginOk {
            user_id: &conn.user,
            shard: self.id as u16,
            head_seq: user.head_seq,
            heartbeat_ms: self.cfg.heartbeat().as_millis() as u32,
            oldest_seq: oldest,
            gap,
        });
        conn.acked.set(start_after);
        conn.sent_seq.set(start_after);
        conn.behind.set(start_after < user.durable_seq);
        user.devices.push(conn.clone());
        Self::refill_from(user, conn, self.cfg.limits.max_outbound, &self.log.borrow());
    }

    /// Stops delivering to `conn` (it is closing or gone).
    pub fn detach(&self, conn: &Conn) {
        let mut users = self.users.borrow_mut();
        if let Some(user) = users.get_mut(&conn.user) {
            user.devices.retain(|d| d.id != conn.id);
        }
    }

    /// Wakes the live connections among `ids` (parked connections whose sockets have events).
    /// A wake-up only schedules the connection's task, so holding the map borrow is safe.
    pub fn wake_connections(&self, ids: &[ConnId]) {
        let conns = self.conns.borrow();
        for conn in ids.iter().filter_map(|id| conns.get(id)) {
            conn.wake.notify();
        }
    }

    /// Called by the session task when it ends.
    pub fn forget(&self, conn: &Conn) {
        self.detach(conn);
        self.conns.borrow_mut().remove(&conn.id);
        self.live_sessions.set(self.live_sessions.get() - 1);
        self.changed.notify_all();
    }

    pub fn mark_dirty(&self, conn: &Rc<Conn>) {
        if !conn.dirty.replace(true) {
            self.dirty.borrow_mut().push(conn.clone());
        }
    }

    /// End of a batch of work: hand every touched connection's bytes to the kernel, refilling
    /// devices that are catching up.
    pub fn flush_dirty(&self) {
        if !self.pending.borrow().is_empty() || !self.touched.borrow().is_empty() {
            self.commit_due.notify();
        }
        let dirty = std::mem::take(&mut *self.dirty.borrow_mut());
        for conn in dirty {
            conn.dirty.set(false);
            conn.flush();
            self.after_drain(&conn);
        }
    }

    /// If `conn`'s queue is empty and it is behind, queue the next slice of its messages.
    pub fn after_drain(&self, conn: &Rc<Conn>) {
        while conn.behind.get()
            && conn.is_open()
            && conn.writing.get() == 0
            && conn.tx.borrow().is_empty()
        {
            {
                let users = self.users.borrow();
                let Some(user) = users.get(&conn.user) else {
                    return;
                };
                Self::refill_from(user, conn, self.cfg.limits.max_outbound, &self.log.borrow());
            }
            conn.flush();
        }
    }

    /// Queues durable messages after `conn.sent_seq`, read from the log, until `max_outbound`
    /// bytes are queued or the device has caught up.
    fn refill_from(user: &User, conn: &Conn, max_outbound: usize, log: &Log) {
        while conn.behind.get() {
            let next = conn.sent_seq.get() + 1;
            if next > user.durable_seq {
                conn.behind.set(false);
                break;
            }
            if conn.queued_bytes() >= max_outbound || !conn.is_open() {
                break;
            }
            let Some(pos) = user.position(next) else {
                // Removed by retention while the device was behind: continue with what is
                // retained (the device learns of the gap at its next login).
                let resume = if user.index.is_empty() {
                    user.durable_seq
                } else {
                    user.first_retained().max(next) - 1
                };
                conn.sent_seq.set(resume.max(next));
                continue;
            };
            let framed = log.with_message(pos, |m| m.encode_deliver(&mut conn.tx.borrow_mut()));
            if let Err(e) = framed {
                tracing::error!(user = %conn.user, seq = next, error = %e, "cannot read a logged message; skipping it");
            }
            conn.sent_seq.set(next);
        }
    }

    // ---- inbound frames ---------------------------------------------------------------------

    /// Handles one decoded frame from a logged-in connection.
    pub fn on_frame(self: &Rc<Self>, conn: &Rc<Conn>, msg: ClientMsg<'_>) {
        match msg {
            ClientMsg::Send {
                client_msg_id,
                to_user,
                body,
            } => self.on_send(conn, client_msg_id, to_user, body),
            ClientMsg::Ack { up_to_seq } => self.on_ack(conn, up_to_seq),
            ClientMsg::Ping { nonce } => {
                conn.push(&ServerMsg::Pong { nonce });
            }
            ClientMsg::Logout => conn.go_away(Code::LOGGED_OUT, "logged out"),
            ClientMsg::Login { .. } => conn.close_with(&ServerMsg::Error {
                code: Code::ALREADY_LOGGED_IN,
                message: "this connection is already logged in",
            }),
        }
        self.mark_dirty(conn);
    }

    fn on_send(&self, conn: &Rc<Conn>, client_msg_id: u64, to: &str, body: &[u8]) {
        let now = self.mono_ms();
        let limits = &self.cfg.limits;
        let mut bucket = conn.bucket.get();
        let verdict = bucket.take(limits.sends_per_sec, now);
        conn.bucket.set(bucket);
        match verdict {
            RateVerdict::Allowed => {}
            RateVerdict::Limited => {
                conn.push(&ServerMsg::SendAck {
                    client_msg_id,
                    status: Code::RATE_LIMITED,
                });
                return;
            }
            RateVerdict::Abusive => {
                conn.go_away(
                    Code::RATE_LIMITED,
                    "kept sending past the rate limit (sends_per_sec)",
                );
                return;
            }
        }
        if to.is_empty() || to.len() > protocol::MAX_USER_ID {
            conn.push(&ServerMsg::SendAck {
                client_msg_id,
                status: Code::INVALID_RECIPIENT,
            });
            return;
        }
        let verdict = {
            let mut users = self.users.borrow_mut();
            match users.get_mut(&conn.user) {
                Some(user) => user.sent.get_or_insert_with(Box::default).check(
                    client_msg_id,
                    conn.id,
                    now,
                    limits.dedup_window.as_millis() as u64,
                    limits.dedup_entries,
                ),
                None => Verdict::New,
            }
        };
        match verdict {
            Verdict::Done(status) => {
                conn.push(&ServerMsg::SendAck {
                    client_msg_id,
                    status,
                });
            }
            Verdict::InFlight => {}
            Verdict::New => {
                let dest = owner(to, self.shards);
                if dest == self.id {
                    match self.accept_message(&conn.user, to, client_msg_id, body) {
                        Ok(()) => self.pending.borrow_mut().push(PendingAck::Local {
                            sender: conn.user.clone(),
                            origin_conn: conn.id,
                            client_msg_id,
                        }),
                        Err(status) => {
                            self.complete_send(&conn.user, conn.id, client_msg_id, status)
                        }
                    }
                } else {
                    self.in_flight.set(self.in_flight.get() + 1);
                    self.mesh.push(
                        dest,
                        Envelope::Message(Message {
                            from: conn.user.clone(),
                            to: Arc::from(to),
                            client_msg_id,
                            body: Bytes::copy_from_slice(body),
                            origin_conn: conn.id,
                        }),
                    );
                }
            }
        }
    }

    fn on_ack(&self, conn: &Rc<Conn>, up_to_seq: u64) {
        // A device cannot ack what it was never sent.
        let acked = up_to_seq.min(conn.sent_seq.get()).max(conn.acked.get());
        if acked == conn.acked.get() {
            return;
        }
        conn.acked.set(acked);
        let mut users = self.users.borrow_mut();
        let Some(user) = users.get_mut(&conn.user) else {
            return;
        };
        user.cursors.set(&conn.device_id, acked);
        // Cursor records ride along with the next group commit; losing the newest ones in a
        // crash only means re-delivering a few messages (at-least-once), never losing one.
        let record = Record::Cursor(CursorRecord {
            user: conn.user.to_string(),
            device: conn.device_id.to_string(),
            acked,
            at_ms: Self::wall_ms(),
        });
        if let Err(e) = self.log.borrow_mut().append(&record) {
            tracing::warn!(user = %conn.user, error = %e, "cannot log an ack cursor");
        }
    }

    // ---- the owner side of a message -------------------------------------------------------

    /// Assigns the next seq of `to` and appends the message to the log. `Ok` means it waits
    /// for the next group commit (which acks and delivers it); `Err` is the refusal to send
    /// back at once.
    fn accept_message(
        &self,
        from: &str,
        to: &str,
        client_msg_id: u64,
        body: &[u8],
    ) -> Result<(), Code> {
        let mut users = self.users.borrow_mut();
        let name: Arc<str> = match users.get_key_value(to) {
            Some((name, _)) => name.clone(),
            None => {
                let name: Arc<str> = Arc::from(to);
                users.insert(name.clone(), User::default());
                name
            }
        };
        let Some(user) = users.get_mut(to) else {
            return Err(Code::INTERNAL);
        };
        if user.unacked() >= self.cfg.limits.max_inbox as u64 {
            return Err(Code::INBOX_FULL);
        }
        let seq = user.head_seq + 1;
        let record = Record::Message(MessageRecord {
            to: to.to_owned(),
            seq,
            from: from.to_owned(),
            client_msg_id,
            sent_at_ms: Self::wall_ms(),
            body: body.to_vec(),
            prev: user.index.back().map_or(NO_POSITION, |&(_, pos)| pos),
        });
        let (pos, rolled) = {
            let mut log = self.log.borrow_mut();
            let segments = log.segment_count();
            match log.append(&record) {
                Ok(pos) => (pos, log.segment_count() != segments),
                Err(e) => {
                    tracing::error!(shard = self.id, error = %e, "append failed; refusing sends until it works again");
                    return Err(Code::STORAGE_UNAVAILABLE);
                }
            }
        };
        user.head_seq = seq;
        user.index.push_back((seq, pos));
        self.touched.borrow_mut().push((name, seq));
        drop(users);
        if rolled && self.cfg.storage.max_bytes_per_shard > 0 {
            // The log only grows when a segment rolls: enforce the size limit right there.
            self.apply_retention();
        }
        Ok(())
    }

    /// Group commit: makes everything appended since the last commit durable (per the fsync
    /// policy), then acks those messages and delivers them.
    ///
    /// The msync runs on glommio's blocking pool, so the shard keeps reading, routing and
    /// appending while the disk works; what is appended meanwhile waits for the next commit.
    pub async fn commit(&self) {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        let touched = std::mem::take(&mut *self.touched.borrow_mut());
        if pending.is_empty() && touched.is_empty() {
            return;
        }
        self.committing.set(true);
        let status = if self.cfg.storage.fsync == FsyncPolicy::Always {
            match self.sync_off_thread().await {
                Ok(()) => Code::OK,
                Err(e) => {
                    // The records are in the page cache and will be delivered, but we cannot
                    // promise durability: senders hear so and may retry (at-least-once).
                    tracing::error!(shard = self.id, error = %e, "log sync failed");
                    Code::STORAGE_UNAVAILABLE
                }
            }
        } else {
            Code::OK
        };
        {
            let mut users = self.users.borrow_mut();
            for (name, seq) in &touched {
                let Some(user) = users.get_mut(name) else {
                    continue;
                };
                if user.durable_seq >= *seq {
                    continue;
                }
                user.durable_seq = *seq;
                for dev in &user.devices {
                    dev.behind.set(true);
                    self.mark_dirty(dev);
                }
            }
        }
        for ack in pending {
            match ack {
                PendingAck::Local {
                    sender,
                    origin_conn,
                    client_msg_id,
                } => self.complete_send(&sender, origin_conn, client_msg_id, status),
                PendingAck::Remote { peer, mut ack } => {
                    ack.status = status;
                    self.mesh.push(peer, Envelope::SendAck(ack));
                }
            }
        }
        self.committing.set(false);
        self.flush_dirty();
        self.changed.notify_all();
    }

    pub fn is_committing(&self) -> bool {
        self.committing.get()
    }

    pub fn sync_in_flight(&self) -> bool {
        self.log.borrow().sync_in_flight()
    }

    /// Appends whose commit has not started yet.
    pub fn has_uncommitted(&self) -> bool {
        !self.pending.borrow().is_empty() || !self.touched.borrow().is_empty()
    }

    /// msync's everything appended so far on glommio's blocking pool, so the shard keeps
    /// serving while the disk works. One runs at a time: the committer (fsync = "always") and
    /// the periodic syncer (fsync = "interval") never coexist.
    pub async fn sync_off_thread(&self) -> std::io::Result<()> {
        let plan = self.log.borrow_mut().begin_sync();
        if plan.is_empty() {
            return Ok(());
        }
        let (plan, result) = glommio::executor()
            .spawn_blocking(move || {
                let result = plan.run();
                (plan, result)
            })
            .await;
        self.log.borrow_mut().end_sync(plan, result.is_ok());
        self.changed.notify_all();
        result
    }

    /// Syncs the log on the shard's own thread (shutdown, when nothing else runs).
    pub fn sync_log(&self) {
        if let Err(e) = self.log.borrow_mut().sync() {
            tracing::error!(shard = self.id, error = %e, "log sync failed");
        }
    }

    /// Deletes log segments past retention and forgets the index entries they held.
    pub fn apply_retention(&self) {
        let storage = &self.cfg.storage;
        let cutoff = Self::wall_ms().saturating_sub(storage.retention.as_millis() as u64);
        let max_bytes = match storage.max_bytes_per_shard {
            0 => u64::MAX,
            n => n,
        };
        let oldest = match self.log.borrow_mut().retain(cutoff, max_bytes) {
            Ok(oldest) => oldest,
            Err(e) => {
                tracing::warn!(shard = self.id, error = %e, "retention failed");
                return;
            }
        };
        for user in self.users.borrow_mut().values_mut() {
            while user.index.front().is_some_and(|&(_, pos)| pos < oldest) {
                user.index.pop_front();
            }
        }
    }

    /// Answers the sender (on the sender's owner shard) and settles the dedup entry.
    fn complete_send(&self, sender: &str, origin_conn: ConnId, client_msg_id: u64, status: Code) {
        let waiters = self
            .users
            .borrow_mut()
            .get_mut(sender)
            .and_then(|u| u.sent.as_mut())
            .map(|d| d.complete(client_msg_id, status))
            .unwrap_or_default();
        let conns = self.conns.borrow();
        for cid in std::iter::once(origin_conn).chain(waiters) {
            if let Some(c) = conns.get(&cid) {
                c.push(&ServerMsg::SendAck {
                    client_msg_id,
                    status,
                });
                self.mark_dirty(c);
            }
        }
    }

    // ---- work from peers --------------------------------------------------------------------

    pub fn handle_envelope(self: &Rc<Self>, from_shard: usize, env: Envelope) {
        match env {
            Envelope::Message(m) => {
                let outcome = self.accept_message(&m.from, &m.to, m.client_msg_id, &m.body);
                let ack = SendAck {
                    sender: m.from,
                    origin_conn: m.origin_conn,
                    client_msg_id: m.client_msg_id,
                    status: Code::OK,
                };
                match outcome {
                    Ok(()) => self.pending.borrow_mut().push(PendingAck::Remote {
                        peer: from_shard,
                        ack,
                    }),
                    Err(status) => self
                        .mesh
                        .push(from_shard, Envelope::SendAck(SendAck { status, ..ack })),
                }
            }
            Envelope::SendAck(a) => {
                self.in_flight.set(self.in_flight.get().saturating_sub(1));
                self.complete_send(&a.sender, a.origin_conn, a.client_msg_id, a.status);
                self.changed.notify_all();
            }
            Envelope::Handoff(h) => self.adopt_handoff(h),
            Envelope::Drained => {
                self.drained_peers.set(self.drained_peers.get() + 1);
                self.changed.notify_all();
            }
        }
    }

    fn adopt_handoff(self: &Rc<Self>, mut h: Handoff) {
        // The accepting shard dup'ed this fd for us and closed its own copy; take_fd makes us
        // its only owner.
        let fd = h.take_fd();
        let leftover = std::mem::take(&mut h.leftover);
        let device_id = std::mem::take(&mut h.device_id);
        self.adopt(fd, h.user.clone(), device_id, h.last_seq, leftover);
    }

    // ---- timers and shutdown ----------------------------------------------------------------

    /// Closes connections silent for longer than `idle_timeout`.
    pub fn sweep_idle(&self) {
        let now = self.mono_ms();
        let idle_ms = self.cfg.limits.idle_timeout.as_millis() as u64;
        let due = self.idle.borrow_mut().take_due(now);
        let conns = self.conns.borrow();
        for id in due {
            let Some(conn) = conns.get(&id) else { continue };
            let deadline = conn.last_seen_ms.get() + idle_ms;
            if deadline <= now {
                if conn.is_open() {
                    self.detach(conn);
                    conn.go_away(Code::IDLE_TIMEOUT, "no frame received within idle_timeout");
                    self.mark_dirty(conn);
                }
            } else {
                self.idle.borrow_mut().insert(deadline, id);
            }
        }
        drop(conns);
        self.flush_dirty();
    }

    /// Shutdown, step 1: stop reading clients, tell peers nothing new will come from us.
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

    /// Every live connection (a snapshot: handling one may change the map).
    pub fn connections(&self) -> Vec<Rc<Conn>> {
        self.conns.borrow().values().cloned().collect()
    }

    /// Shutdown, step 2: GoAway(SHUTDOWN) to every connection.
    pub fn say_goodbye(&self) {
        let conns = self.connections();
        for conn in conns {
            self.detach(&conn);
            conn.go_away(Code::SHUTDOWN, "broker is shutting down");
            self.mark_dirty(&conn);
        }
        self.flush_dirty();
    }
}

//! The shard: everything one core owns, and the map of where each part of the message path
//! lives.
//!
//! Everything here runs on the shard's own thread, synchronously, between awaits; `RefCell`
//! borrows never live across an await. The `Shard` struct only holds the state; its behaviour
//! is split along the data path (see the crate doc's diagram), one file per stage:
//!
//! | stage | file | entry points |
//! |---|---|---|
//! | connections | [`super::connections`] | `adopt` (register a logged-in connection), `forget`, idle sweep |
//! | ingress | [`super::ingress`] | `on_frame` (dispatch), `on_send` (rate limit, dedup, routing), `handle_envelope` (work from peers) |
//! | inbox | [`super::inbox`] | `accept_send` (dedup, seq, append), own-send copies, `commit` (group commit), retention |
//! | groups | [`super::groups`] | group operations and sends on the owner, fan-out to the shards with members, member-side apply |
//! | delivery | [`super::delivery`] | `register_device` (LoginOk, replay start), refill from the log, acks, end-of-batch flush |
//! | drain | [`super::drain`] | the shutdown sequence |
//!
//! Session tasks ([`super::session`]) call into the shard; the shard never starts or names a
//! session, so the dependency runs one way.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use super::clock::Clock;
use super::conn::Conn;
use super::connections::IdleWheel;
use super::dedup::Windows;
use super::envelope::ConnId;
use super::group_state::GroupsState;
use super::groups::{OwnerOps, Reservation};
use super::inbox::{AckTarget, PendingAck};
use super::park::Parking;
use super::recovery::Recovered;
use super::transport::Mesh;
use super::users::Users;
use super::wake::{Broadcast, Signal};
use crate::config::Config;
use crate::log::Log;
use crate::metrics::ShardMetrics;

pub struct Shard {
    pub id: usize,
    pub shards: usize,
    pub cfg: Arc<Config>,
    /// Admission limits, login keys and TLS certificate (see [`super::gate`]).
    pub gate: super::gate::Gate,
    pub mesh: Rc<Mesh>,
    /// Read once per batch of work (see [`super::clock`]).
    pub(super) clock: Clock,
    pub(super) next_conn: Cell<ConnId>,
    pub(super) conns: RefCell<super::FastMap<ConnId, Rc<Conn>>>,
    pub(super) users: RefCell<Users>,
    /// Connections with output queued in this batch of work (flushed at its end).
    pub(super) dirty: RefCell<Vec<Rc<Conn>>>,
    pub(super) idle: RefCell<IdleWheel>,
    /// Read buffer shared by all connections of the shard (reads are synchronous); reads are
    /// handed out as refcounted chunks (see [`super::read_buf`]).
    pub read_buf: RefCell<super::read_buf::ReadBuf>,
    /// The epoll set holding parked connections.
    pub parking: Parking,
    pub(super) log: RefCell<Log>,
    /// Appended but not yet committed: their acks, and the users whose durable seq must move.
    pub(super) pending: RefCell<Vec<PendingAck>>,
    /// (user, seq appended): what a commit may mark durable.
    pub(super) touched: RefCell<Vec<(Arc<str>, u64)>>,
    /// Emptied `pending` and `touched` vectors of finished commits, reused by the next.
    pub(super) spare_pending: super::spare_vec::SpareVecs<PendingAck>,
    pub(super) spare_touched: super::spare_vec::SpareVecs<(Arc<str>, u64)>,
    /// Stamps of SendAcks queued on connections since the last flush (metrics::stages).
    pub(super) ack_stamps: RefCell<Vec<crate::metrics::stages::Stamps>>,
    /// A commit is between taking its batch and releasing it.
    pub(super) committing: Cell<bool>,
    /// A segment rolled since the last commit (size-based retention runs then).
    pub(super) rolled: Cell<bool>,
    /// Retention restated state at this position and deletes once it is durable.
    pub(super) restated: Cell<Option<u64>>,
    /// Dedup windows of the senders whose messages this shard stores.
    pub(super) windows: RefCell<Windows<AckTarget>>,
    /// Groups this shard owns or serves members of.
    pub(super) groups: RefCell<GroupsState>,
    /// The owner's group operations waiting for reservations.
    pub(super) ops: RefCell<OwnerOps>,
    /// Places held for owners' operations: (owner shard, op) → users.
    pub(super) reservations: RefCell<HashMap<(usize, u64), Reservation>>,
    /// Wakes the committer task.
    pub commit_due: Signal,
    /// Shutdown has begun: no new connections, no more client reads.
    pub draining: Cell<bool>,
    pub(super) drained_peers: Cell<usize>,
    /// Peers whose start-up re-drive of group fan-out has reached this shard (`Redriven`).
    pub(super) redriven_peers: Cell<usize>,
    /// Messages sent to peers whose SendAck has not come back yet.
    pub(super) in_flight: Cell<u64>,
    pub live_sessions: Cell<usize>,
    /// Notified on shutdown progress (peers drained, acks back, sessions gone).
    pub changed: Broadcast,
    /// The admin thread's control channel, once the `control` task has connected it.
    pub(super) control: RefCell<Option<Rc<super::control::Port>>>,
    /// This shard's counters (written only here; read by the admin thread): the ones
    /// bootstrap installed for this thread before building the shard.
    pub metrics: Arc<ShardMetrics>,
}

impl Shard {
    pub fn new(
        id: usize,
        shards: usize,
        cfg: Arc<Config>,
        gate: super::gate::Gate,
        mesh: Rc<Mesh>,
        recovered: Recovered,
        parking: Parking,
    ) -> Shard {
        Shard {
            id,
            shards,
            cfg,
            gate,
            mesh,
            clock: Clock::default(),
            next_conn: Cell::new(1),
            conns: RefCell::default(),
            users: RefCell::new(Users::recovered(recovered.users)),
            windows: RefCell::new(recovered.windows),
            groups: RefCell::new(recovered.groups),
            ops: RefCell::default(),
            reservations: RefCell::default(),
            rolled: Cell::new(false),
            restated: Cell::new(None),
            dirty: RefCell::default(),
            idle: RefCell::default(),
            read_buf: RefCell::default(),
            parking,
            log: RefCell::new(recovered.log),
            pending: RefCell::default(),
            touched: RefCell::default(),
            spare_pending: Default::default(),
            spare_touched: Default::default(),
            ack_stamps: RefCell::default(),
            committing: Cell::new(false),
            commit_due: Signal::default(),
            draining: Cell::new(false),
            drained_peers: Cell::new(0),
            redriven_peers: Cell::new(0),
            in_flight: Cell::new(0),
            live_sessions: Cell::new(0),
            changed: Broadcast::default(),
            control: RefCell::default(),
            metrics: crate::metrics::local(),
        }
    }

    /// Monotonic milliseconds since the shard started (one reading per batch: [`Clock`]).
    pub fn mono_ms(&self) -> u64 {
        self.clock.mono_ms()
    }

    /// Wall-clock milliseconds since the Unix epoch (what records and Deliver carry; one
    /// reading per batch: [`Clock`]).
    pub fn wall_ms(&self) -> u64 {
        self.clock.wall_ms()
    }

    /// The stage stamps' clock (one reading per batch: [`Clock`]).
    pub fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }
}

//! The shard's connections: registering a logged-in connection, forgetting a closed one, waking
//! parked ones, and the idle-timeout wheel.
//!
//! Registering ([`Shard::adopt`]) builds the connection record, sends LoginOk and starts its
//! replay (`Shard::register_device` in `delivery`); the caller (`session::start_handoff`)
//! then runs the connection's task.
//!
//! After a burst of logins or closes, once a whole sweep interval passes without one, the shard
//! hands the memory the burst freed back to the OS (`release_after_churn`): the allocator
//! otherwise keeps the pages that the burst's login tasks, buffers and hand-offs touched, and
//! an idle broker makes no allocator calls that would ever purge them (measured: BENCHMARKS.md,
//! "Idle connections after a login storm").

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::rc::Rc;

use super::conn::{Conn, ConnState, ConnTls};
use super::envelope::{ConnId, Handoff};
use super::state::Shard;
use crate::protocol::Code;

/// Idle-timeout wheel: connection ids bucketed by the second their deadline falls in. Each
/// connection sits in exactly one bucket; a sweep re-files those that were active since, so the
/// cost is O(expiring buckets), not O(connections), and there is no timer per connection.
#[derive(Default)]
pub struct IdleWheel {
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

/// Connections registered or forgotten on this thread (a shard is one thread).
#[derive(Default)]
struct Churn {
    /// Adopted + forgotten so far.
    total: Cell<u64>,
    /// `total` at the previous sweep.
    at_sweep: Cell<u64>,
    /// `total` when memory was last released.
    at_release: Cell<u64>,
}

thread_local! {
    static CHURN: Churn = Churn::default();
}

/// A connection came or went (or a login attempt ended on the accepting shard).
pub(super) fn churned() {
    CHURN.with(|c| c.total.set(c.total.get() + 1));
}

/// Churn after which memory is released even if connections never stop coming and going.
const RELEASE_EVERY_CHURN: u64 = 100_000;

/// Called once per idle sweep: releases freed memory when connections came or went since the
/// last release and none did since the previous sweep (or after [`RELEASE_EVERY_CHURN`]).
/// Returns whether it released.
fn release_after_churn() -> bool {
    let due = CHURN.with(|c| {
        let total = c.total.get();
        let calm = total == c.at_sweep.get();
        c.at_sweep.set(total);
        let since = total - c.at_release.get();
        let due = since > 0 && (calm || since >= RELEASE_EVERY_CHURN);
        if due {
            c.at_release.set(total);
        }
        due
    });
    if due {
        release_free_memory();
    }
    due
}

/// Returns this thread's free allocator pages to the OS.
fn release_free_memory() {
    #[cfg(not(feature = "sysalloc"))]
    {
        extern "C" {
            /// mimalloc: frees empty pages of the calling thread's heap and, with `force`,
            /// purges (MADV_DONTNEED) freed segment memory now rather than on a later
            /// allocation.
            fn mi_collect(force: bool);
        }
        // SAFETY: mi_collect has no preconditions; it only touches the calling thread's heap
        // and mimalloc's own (internally synchronised) segment and arena state. mimalloc is
        // linked (the `mimalloc` dependency) whether or not it is the global allocator; when
        // it is not, its heap is empty and this does nothing.
        unsafe {
            // mimalloc 2.x purges a segment's free spans before it frees that segment's empty
            // pages (`mi_heap_page_collect`), and an idle shard triggers no later purge: the
            // second pass purges what the first freed.
            mi_collect(true);
            mi_collect(true);
        }
    }
    #[cfg(feature = "sysalloc")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Shard {
    pub fn connection_count(&self) -> usize {
        self.conns.borrow().len()
    }

    /// Takes over a logged-in connection: registers it, says LoginOk and queues its replay.
    /// `fd` is the connection's socket (taken out of `h`), owned from here on, speaking
    /// `h.framing` (through `h.tls`, if set). The caller starts its task (see
    /// `session::start_handoff`), which ends with [`Shard::forget`].
    pub fn adopt(&self, fd: RawFd, mut h: Handoff) -> Rc<Conn> {
        let id = self.next_conn.get();
        self.next_conn.set(id + 1);
        let now = self.mono_ms();
        let last_seq = h.last_seq;
        let conn = Rc::new(Conn {
            id,
            fd: Cell::new(fd),
            user: h.user.clone(),
            device_id: std::mem::take(&mut h.device_id),
            framing: Cell::new(h.framing),
            tls: h.tls.take().map(|session| Box::new(ConnTls::new(*session))),
            _slot: h.slot.take(),
            tx: RefCell::default(),
            writing: Cell::new(0),
            rx: RefCell::default(),
            state: Cell::new(ConnState::Open),
            last_seen_ms: Cell::new(now),
            acked: Cell::new(0),
            sent_seq: Cell::new(0),
            own_sends: Default::default(),
            behind: Cell::new(false),
            dirty: Cell::new(false),
            wake: Default::default(),
            connected_at_ms: self.wall_ms(),
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
        churned();
        tracing::debug!(shard = self.id, conn = id, user = %conn.user, device = %conn.device_id, "connection registered");
        conn
    }

    /// Stops delivering to `conn` (it is closing or gone).
    pub fn detach(&self, conn: &Conn) {
        self.cover_own_sends_at_close(conn);
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
        tracing::debug!(shard = self.id, conn = conn.id, user = %conn.user, device = %conn.device_id, state = ?conn.state.get(), "connection closed");
        self.detach(conn);
        self.conns.borrow_mut().remove(&conn.id);
        self.live_sessions.set(self.live_sessions.get() - 1);
        churned();
        self.changed.notify_all();
    }

    /// Every live connection (a snapshot: handling one may change the map).
    pub fn connections(&self) -> Vec<Rc<Conn>> {
        self.conns.borrow().values().cloned().collect()
    }

    /// Drops dedup entries past the window and reservations whose operation never ended.
    pub fn expire(&self) {
        let window = self.cfg.limits.dedup_window.as_millis() as u64;
        self.windows.borrow_mut().expire_all(self.wall_ms(), window);
        self.expire_reservations();
    }

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
        if release_after_churn() {
            tracing::debug!(shard = self.id, "released memory freed by connection churn");
        }
    }
}

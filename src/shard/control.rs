//! The control channel: what the admin thread (`crate::admin`) asks a shard, and the shard's
//! answers.
//!
//! Each shard has one pair of glommio `shared_channel`s with the admin thread, like a lane of
//! the mesh: requests in, replies out (bounded SPSC rings, no locks). The shard's `control`
//! task ([`serve`], registered in [`super::tasks`]) takes each request, handles it
//! synchronously on the shard ([`Shard::handle_control`]) and sends the replies. A request
//! that must wait — a published message waits for the group commit that makes it durable —
//! parks its answer in the shard's pending acks ([`PendingAck::Admin`]), and the commit sends
//! it. The admin side never waits on a shard for long: every call has a timeout there.
//!
//! | request | handled by | answer |
//! |---|---|---|
//! | [`Op::Gauges`] | any shard | connections, parked, mesh queue depth, log bytes, users |
//! | [`Op::Publish`] | the owner of `to` | status (and seq) once durable, like a client's SendAck |
//! | [`Op::User`] | the owner of the user | head/oldest seq, devices, cursors |
//! | [`Op::Kick`] | the owner of the user | how many sessions got GoAway(KICKED) |
//!
//! Publishes are deduplicated by `(from, client_msg_id)` in a window kept here, on the
//! recipient's owner ([`Port::admit`]); that is the one call to replace once client sends are
//! deduplicated on the recipient's owner too, so that both share one window.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use futures_lite::future;
use glommio::channels::shared_channel::{self, SharedReceiver, SharedSender};

use super::conn::Conn;
use super::dedup::{Dedup, Verdict};
use super::inbox::PendingAck;
use super::state::Shard;
use super::wake::Signal;
use crate::metrics::ShardGauges;
use crate::protocol::Code;

/// Requests (and replies) a control queue holds before its sender waits.
pub const CONTROL_QUEUE: usize = 256;
/// Distinct publish senders whose dedup windows a shard keeps at most; past it, the senders
/// idle longest are forgotten (their windows have usually expired by then).
pub const MAX_PUBLISH_SENDERS: usize = 1024;

/// One request from the admin thread; `id` comes back in the [`Reply`].
#[derive(Debug)]
pub struct Request {
    pub id: u64,
    pub op: Op,
}

#[derive(Debug)]
pub enum Op {
    /// The shard's gauges, for a metrics scrape.
    Gauges,
    /// Deliver a message like a client's Send (this shard owns `to`).
    Publish(Publish),
    /// What the shard knows about a user it owns.
    User(String),
    /// End the user's sessions (or the one device's) with GoAway(KICKED).
    Kick {
        user: String,
        device: Option<String>,
    },
}

#[derive(Debug)]
pub struct Publish {
    pub from: String,
    pub to: String,
    pub client_msg_id: u64,
    pub body: Vec<u8>,
}

#[derive(Debug)]
pub struct Reply {
    pub id: u64,
    pub answer: Answer,
}

#[derive(Debug)]
pub enum Answer {
    Gauges(ShardGauges),
    /// `seq` is the message's seq in the recipient's inbox; `None` when it was refused, or
    /// answered from the dedup window.
    Published {
        status: Code,
        seq: Option<u64>,
    },
    User(UserView),
    Kicked {
        sessions: usize,
    },
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UserView {
    pub head_seq: u64,
    pub durable_seq: u64,
    /// Oldest seq still retained (0 when nothing is).
    pub oldest_seq: u64,
    pub devices: Vec<DeviceView>,
    /// Stored ack cursors, per device ever seen (online or not).
    pub cursors: Vec<(String, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceView {
    pub device_id: String,
    pub transport: &'static str,
    pub shard: usize,
    /// Wall clock, ms since the Unix epoch, when the connection was registered here.
    pub connected_at_ms: u64,
    pub last_acked_seq: u64,
    /// Highest seq queued to the device.
    pub sent_seq: u64,
}

/// One shard's ends of its control channel, before its executor connects them.
pub struct ShardControl {
    requests: SharedReceiver<Request>,
    replies: SharedSender<Reply>,
}

/// The admin thread's ends for one shard.
pub struct AdminEnds {
    pub requests: SharedSender<Request>,
    pub replies: SharedReceiver<Reply>,
}

/// Builds every shard's control channel: the admin's ends and the shards' ends, by shard.
pub fn channels(shards: usize) -> (Vec<AdminEnds>, Vec<ShardControl>) {
    (0..shards)
        .map(|_| {
            let (req_tx, req_rx) = shared_channel::new_bounded(CONTROL_QUEUE);
            let (rep_tx, rep_rx) = shared_channel::new_bounded(CONTROL_QUEUE);
            (
                AdminEnds {
                    requests: req_tx,
                    replies: rep_rx,
                },
                ShardControl {
                    requests: req_rx,
                    replies: rep_tx,
                },
            )
        })
        .unzip()
}

/// The shard's side of its control channel: replies waiting to go out, and the dedup
/// windows of published messages.
#[derive(Default)]
pub struct Port {
    outbox: RefCell<Vec<Reply>>,
    kick: Signal,
    /// Publish sender → (last used, shard-monotonic ms; its window).
    dedup: RefCell<HashMap<Arc<str>, (u64, Dedup)>>,
}

impl Port {
    fn reply(&self, id: u64, answer: Answer) {
        self.outbox.borrow_mut().push(Reply { id, answer });
        self.kick.notify();
    }

    /// Dedup of `(from, client_msg_id)` for request `id` (waiters are request ids).
    fn admit(
        &self,
        from: &Arc<str>,
        client_msg_id: u64,
        id: u64,
        now: u64,
        shard: &Shard,
    ) -> Verdict {
        let limits = &shard.cfg.limits;
        let window = limits.dedup_window.as_millis() as u64;
        let mut senders = self.dedup.borrow_mut();
        if !senders.contains_key(from) && senders.len() >= MAX_PUBLISH_SENDERS {
            senders.retain(|_, (used, _)| now.saturating_sub(*used) < window);
            if senders.len() >= MAX_PUBLISH_SENDERS {
                let idlest = senders
                    .iter()
                    .min_by_key(|(_, (used, _))| *used)
                    .map(|(k, _)| k.clone());
                if let Some(k) = idlest {
                    senders.remove(&k);
                }
            }
        }
        let (used, dedup) = senders.entry(from.clone()).or_default();
        *used = now;
        dedup.check(client_msg_id, id, now, window, limits.dedup_entries)
    }

    /// Records the outcome of `(from, client_msg_id)`; returns the requests waiting for it.
    fn settle(&self, from: &str, client_msg_id: u64, status: Code) -> Vec<u64> {
        self.dedup
            .borrow_mut()
            .get_mut(from)
            .map(|(_, d)| d.complete(client_msg_id, status))
            .unwrap_or_default()
    }
}

/// A published message waiting for its group commit ([`PendingAck::Admin`]).
pub struct AdminAck {
    port: Rc<Port>,
    id: u64,
    from: Arc<str>,
    client_msg_id: u64,
    seq: Option<u64>,
}

impl AdminAck {
    /// Answers the request (and any resend waiting for it) with `status`.
    pub fn complete(self, status: Code) {
        let seq = self.seq.filter(|_| status == Code::OK);
        let waiters = self.port.settle(&self.from, self.client_msg_id, status);
        self.port.reply(self.id, Answer::Published { status, seq });
        for id in waiters {
            self.port.reply(id, Answer::Published { status, seq });
        }
    }
}

/// What woke the control task.
enum Woke {
    Request(Option<Request>),
    Replies,
}

/// The shard's `control` task: connects its ends, then handles requests and sends replies
/// until the admin thread goes away or the task is stopped.
pub async fn serve(shard: Rc<Shard>, ends: ShardControl) {
    let (requests, replies) = future::zip(ends.requests.connect(), ends.replies.connect()).await;
    let port = Rc::new(Port::default());
    loop {
        let woke = future::or(async { Woke::Request(requests.recv().await) }, async {
            port.kick.wait().await;
            Woke::Replies
        })
        .await;
        match woke {
            Woke::Request(Some(req)) => shard.handle_control(&port, req),
            Woke::Request(None) => return,
            Woke::Replies => {}
        }
        let out = std::mem::take(&mut *port.outbox.borrow_mut());
        for reply in out {
            // The admin thread's receiver always drains, so this wait is short.
            if replies.send(reply).await.is_err() {
                return;
            }
        }
    }
}

/// The transport of a connection, as the server API reports it.
fn transport(_conn: &Conn) -> &'static str {
    // Every connection is TCP today; WebSocket connections will say "websocket".
    "tcp"
}

impl Shard {
    /// Handles one control request, synchronously; its answer goes out through `port`, now
    /// or (a publish) after the group commit.
    pub fn handle_control(&self, port: &Rc<Port>, req: Request) {
        match req.op {
            Op::Gauges => port.reply(req.id, Answer::Gauges(self.gauges())),
            Op::Publish(p) => self.publish(port, req.id, p),
            Op::User(user) => port.reply(req.id, Answer::User(self.user_view(&user))),
            Op::Kick { user, device } => {
                let sessions = self.kick(&user, device.as_deref());
                port.reply(req.id, Answer::Kicked { sessions });
            }
        }
    }

    fn gauges(&self) -> ShardGauges {
        ShardGauges {
            connections: self.connection_count(),
            parked: self.parking.parked(),
            mesh_queued: self.mesh.queued(),
            log_bytes: self.log.borrow().disk_bytes(),
            users: self.users.borrow().len(),
        }
    }

    /// A message from the server API: admitted like a client's Send (dedup), appended to the
    /// recipient's inbox, answered after the group commit that makes it durable.
    fn publish(&self, port: &Rc<Port>, id: u64, p: Publish) {
        let answer = |status| port.reply(id, Answer::Published { status, seq: None });
        if self.draining.get() {
            return answer(Code::SHUTDOWN);
        }
        let from: Arc<str> = Arc::from(p.from);
        match port.admit(&from, p.client_msg_id, id, self.mono_ms(), self) {
            Verdict::Done(status) => return answer(status),
            Verdict::InFlight => return, // answered together with the original
            Verdict::New => {}
        }
        let mut ack = AdminAck {
            port: port.clone(),
            id,
            from: from.clone(),
            client_msg_id: p.client_msg_id,
            seq: None,
        };
        match self.accept_message(&from, &p.to, p.client_msg_id, &p.body) {
            Ok(()) => {
                ack.seq = self.users.borrow().get(&p.to).map(|u| u.head_seq);
                self.pending.borrow_mut().push(PendingAck::Admin(ack));
            }
            Err(status) => ack.complete(status),
        }
        self.flush_dirty(); // wakes the committer
    }

    fn user_view(&self, name: &str) -> UserView {
        let users = self.users.borrow();
        let Some(user) = users.get(name) else {
            return UserView::default();
        };
        UserView {
            head_seq: user.head_seq,
            durable_seq: user.durable_seq,
            oldest_seq: user.oldest_seq(),
            devices: user
                .devices
                .iter()
                .map(|c| DeviceView {
                    device_id: c.device_id.to_string(),
                    transport: transport(c),
                    shard: self.id,
                    connected_at_ms: c.connected_at_ms,
                    last_acked_seq: c.acked.get(),
                    sent_seq: c.sent_seq.get(),
                })
                .collect(),
            cursors: user
                .cursors
                .iter()
                .map(|(d, s)| (d.to_string(), s))
                .collect(),
        }
    }

    /// GoAway(KICKED) to the user's sessions (only `device`'s, if given); returns how many.
    fn kick(&self, user: &str, device: Option<&str>) -> usize {
        let victims: Vec<Rc<Conn>> = match self.users.borrow().get(user) {
            Some(u) => u
                .devices
                .iter()
                .filter(|c| device.is_none_or(|d| *c.device_id == *d))
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        for conn in &victims {
            self.detach(conn);
            conn.go_away(Code::KICKED, "session ended by the server API");
            self.mark_dirty(conn);
        }
        if !victims.is_empty() {
            tracing::info!(
                shard = self.id,
                user,
                sessions = victims.len(),
                "sessions kicked"
            );
        }
        self.flush_dirty();
        victims.len()
    }
}

//! The control channel: what the admin thread (`crate::admin`) asks a shard, and the shard's
//! answers.
//!
//! Per shard: requests go into a bounded lock-free queue ([`ControlInbox`], crossbeam's
//! `ArrayQueue`) and replies come back over a glommio `shared_channel` (a bounded SPSC ring,
//! like a lane of the mesh). The shard takes requests at the end of every batch of work
//! ([`Shard::poll_control`], called from `flush_dirty`) and, when it is idle, when the admin
//! thread rings a doorbell (a second `shared_channel` of `()`), handled by its `control` task
//! ([`serve`], registered in [`super::tasks`]). Each request is handled synchronously on the
//! shard ([`Shard::handle_control`]). A request that must wait — a published message waits
//! for the group commit that makes it durable — is accepted like a client's send with an
//! [`AckTarget::Admin`] waiting for its outcome, which the commit answers. The admin side never
//! waits on a shard for long: every call has a timeout there.
//!
//! Why not a `shared_channel` for requests too: a busy glommio executor whose task queue never
//! runs dry returns to its reactor, which is where channel wake-ups are noticed, only every so
//! many ring completions; under a p2p overload that was seconds (measured: a scrape's gauges
//! waited 1–5 s). The end of a batch of work is reached all the time under load, so the queue
//! is checked there (a couple of loads of a cache line only the admin thread writes, when it
//! sends a request; about 9 ns), and the doorbell covers the idle shard.
//!
//! | request | handled by | answer |
//! |---|---|---|
//! | [`Op::Gauges`] | any shard | connections, parked, mesh queue depth, log bytes, users |
//! | [`Op::Publish`] | the owner of `to` | status (and seq) once durable, like a client's SendAck |
//! | [`Op::User`] | the owner of the user | head/oldest seq, devices, cursors |
//! | [`Op::Kick`] | the owner of the user | how many sessions got GoAway(KICKED) |
//! | [`Op::Register`] | the owner of the user | once the user is durably known (`limits.recipients = "known"`) |
//! | [`Op::Group`] | the owner of the group | the GroupReply of the operation (create, add, remove, info) |
//! | [`Op::GroupPublish`] | the owner of the group | status once durable, like a client's GroupSend |
//!
//! Publishes are deduplicated by `(from, client_msg_id)` in the same window as clients'
//! sends, on the recipient's owner (`Shard::accept_send`): a publish and a client's send with
//! the same sender and id are one message. A publish does not enter the sender's own stream
//! (own-send sync covers sends made by the user's connections).
//!
//! Groups: management (create, add/remove members, info) and publishes to a group go to the
//! group's owner shard and run the very operations clients use (`super::groups`), marked
//! privileged: the app backend needs to be neither a member nor an admin, and a publish's
//! sender need not be a member (a system sender never is).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use futures_lite::future;
use glommio::channels::shared_channel::{self, ConnectedSender, SharedReceiver, SharedSender};

use super::conn::Conn;
use super::envelope::{GroupAnswer, GroupOpRequest, GroupRequest};
use super::inbox::{AckTarget, PendingAck, ReplyTarget, SenderCopy};
use super::state::Shard;
use super::wake::Signal;
use crate::metrics::ShardGauges;
use crate::protocol::Code;

/// Requests a shard's queue holds (more are refused as busy) and replies its channel holds
/// before the shard keeps them in its outbox.
pub const CONTROL_QUEUE: usize = 256;

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
    /// Make the user known (`limits.recipients`) without a login: answered with
    /// `Answer::Published` once that is durable.
    Register(String),
    /// A group operation (this shard owns the group); `actor` is the creator for Create.
    Group {
        actor: String,
        group: String,
        op: GroupOpRequest,
    },
    /// A message to a group (this shard owns `to`, the group), like a client's GroupSend.
    GroupPublish(Publish),
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
    /// The group operation's GroupReply.
    Group(GroupAnswer),
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
    /// Logged in once or registered (what `limits.recipients = "known"` asks).
    pub known: bool,
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

/// The pending-ack sender of a registration: empty, which no user ID is, so no dedup window
/// is ever looked up for it.
const REGISTER_SENDER: &str = "";

/// Requests for one shard: pushed by the admin thread, taken by the shard.
pub type ControlInbox = ArrayQueue<Request>;

/// One shard's ends of its control channel, before its executor connects them.
pub struct ShardControl {
    requests: Arc<ControlInbox>,
    doorbell: SharedReceiver<()>,
    replies: SharedSender<Reply>,
}

/// The admin thread's ends for one shard.
pub struct AdminEnds {
    pub requests: Arc<ControlInbox>,
    /// Rung after each request (a full doorbell means a ring is already pending).
    pub doorbell: SharedSender<()>,
    pub replies: SharedReceiver<Reply>,
}

/// Builds every shard's control channel: the admin's ends and the shards' ends, by shard.
pub fn channels(shards: usize) -> (Vec<AdminEnds>, Vec<ShardControl>) {
    (0..shards)
        .map(|_| {
            let requests = Arc::new(ArrayQueue::new(CONTROL_QUEUE));
            let (bell_tx, bell_rx) = shared_channel::new_bounded(1);
            let (rep_tx, rep_rx) = shared_channel::new_bounded(CONTROL_QUEUE);
            (
                AdminEnds {
                    requests: requests.clone(),
                    doorbell: bell_tx,
                    replies: rep_rx,
                },
                ShardControl {
                    requests,
                    doorbell: bell_rx,
                    replies: rep_tx,
                },
            )
        })
        .unzip()
}

/// The shard's side of its control channel: requests to take, replies waiting to go out, and
/// the recipient seqs of publishes not yet answered.
pub struct Port {
    requests: Arc<ControlInbox>,
    /// Connected by the `control` task; replies go straight into it when it has room.
    replies: RefCell<Option<Rc<ConnectedSender<Reply>>>>,
    /// Replies that found the channel full, sent by the `control` task as room appears.
    outbox: RefCell<Vec<Reply>>,
    kick: Signal,
    /// Request id → the recipient's seq of its publish, until it is answered.
    seqs: RefCell<HashMap<u64, u64>>,
}

impl Port {
    fn new(requests: Arc<ControlInbox>) -> Port {
        Port {
            requests,
            replies: RefCell::default(),
            outbox: RefCell::default(),
            kick: Signal::default(),
            seqs: RefCell::default(),
        }
    }

    /// Sends a reply now if the channel has room (`try_send` looks at the ring itself; the
    /// waiting `send` relies on the reactor noticing room, which a busy shard visits rarely),
    /// else leaves it to the `control` task.
    fn reply(&self, id: u64, answer: Answer) {
        let reply = Reply { id, answer };
        let reply = match self.replies.borrow().as_ref() {
            Some(tx) if self.outbox.borrow().is_empty() => match tx.try_send(reply) {
                Ok(()) => return,
                Err(e) => match e {
                    glommio::GlommioError::Closed(glommio::ResourceType::Channel(r))
                    | glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(r)) => r,
                    _ => return,
                },
            },
            _ => reply,
        };
        self.outbox.borrow_mut().push(reply);
        self.kick.notify();
    }
}

/// The shard's `control` task: connects its ends and installs the shard's [`Port`], then
/// takes requests whenever the doorbell rings (an idle shard; a busy one takes them at the
/// end of each batch of work) and sends the replies, until the admin thread goes away or the
/// task is stopped.
///
/// Both loops live in this one task and are never cancelled mid-wait (`or` returns only once
/// one of them has ended): a shared-channel `recv()` dropped before it completes would leave
/// a stale waker registered, which glommio may wake in place of the live one.
pub async fn serve(shard: Rc<Shard>, ends: ShardControl) {
    let (doorbell, replies) = future::zip(ends.doorbell.connect(), ends.replies.connect()).await;
    let port = Rc::new(Port::new(ends.requests));
    let replies = Rc::new(replies);
    *port.replies.borrow_mut() = Some(replies.clone());
    *shard.control.borrow_mut() = Some(port.clone());
    shard.flush_dirty(); // takes anything queued before we were connected
    let taking = async {
        while doorbell.recv().await.is_some() {
            shard.flush_dirty(); // which starts with `poll_control`
        }
    };
    let sending = async {
        loop {
            port.kick.wait().await;
            // In order; reply() queues behind these while any are left.
            while !port.outbox.borrow().is_empty() {
                let reply = port.outbox.borrow_mut().remove(0);
                // The admin thread's receiver always drains, so this wait is short.
                if replies.send(reply).await.is_err() {
                    return;
                }
            }
        }
    };
    // Either loop ending (the admin thread gone) ends the task.
    future::or(taking, sending).await;
    *shard.control.borrow_mut() = None;
}

/// The transport of a connection, as the server API reports it.
fn transport(conn: &Conn) -> &'static str {
    match conn.framing.get() {
        crate::wire::Framing::Tcp => "tcp",
        crate::wire::Framing::WebSocket(_) => "websocket",
    }
}

impl Shard {
    /// Takes and handles every queued control request. Called first thing in `flush_dirty`
    /// (the end of every batch of work, and the doorbell), so that what the requests queue
    /// (GoAways, appends to commit) is flushed right after. Costs about 9 ns when nothing is
    /// queued (BENCHMARKS.md), once per batch of work.
    pub fn poll_control(&self) {
        let Some(port) = self.control.borrow().clone() else {
            return;
        };
        while let Some(req) = port.requests.pop() {
            self.handle_control(&port, req);
        }
    }

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
            Op::Register(user) => {
                self.register_user(&user);
                // Answered by the commit that makes the registration durable, the way a
                // publish is.
                self.pending.borrow_mut().push(PendingAck::Send {
                    sender: Arc::from(REGISTER_SENDER),
                    client_msg_id: 0,
                    target: AckTarget::Admin { request: req.id },
                    stamps: crate::metrics::stages::Stamps::NONE,
                    own: SenderCopy::None,
                });
            }
            Op::Group { actor, group, op } => {
                let request = GroupRequest {
                    user: Arc::from(actor),
                    privileged: true,
                    origin_conn: 0,
                    request_id: req.id,
                    group: Arc::from(group),
                    op,
                };
                self.group_request(request, ReplyTarget::Admin { request: req.id });
            }
            Op::GroupPublish(p) => {
                if self.draining.get() {
                    return port.reply(
                        req.id,
                        Answer::Published {
                            status: Code::SHUTDOWN,
                            seq: None,
                        },
                    );
                }
                let from: Arc<str> = Arc::from(p.from);
                let target = AckTarget::Admin { request: req.id };
                let body = bytes::Bytes::from(p.body);
                if let Some(seq) =
                    self.group_send(&from, &p.to, p.client_msg_id, body, target, true)
                {
                    port.seqs.borrow_mut().insert(req.id, seq);
                }
            }
        }
    }

    /// The answer to a group operation the server API asked for.
    pub(super) fn answer_group_admin(&self, request: u64, answer: GroupAnswer) {
        if let Some(port) = self.control.borrow().clone() {
            port.reply(request, Answer::Group(answer));
        }
    }

    fn gauges(&self) -> ShardGauges {
        ShardGauges {
            connections: self.connection_count(),
            parked: self.parking.parked(),
            mesh_queued: self.mesh.queued(),
            log_bytes: self.log.borrow().disk_bytes(),
            users: self.users.borrow().len(),
            groups: self.groups.borrow().owned.len(),
            group_fanout_pending: self
                .groups
                .borrow()
                .owned
                .values()
                .map(|g| g.unacked.len())
                .sum(),
        }
    }

    /// A message from the server API: accepted like a client's Send (dedup on this, the
    /// recipient's owner), answered after the group commit that makes it durable.
    fn publish(&self, port: &Rc<Port>, id: u64, p: Publish) {
        if self.draining.get() {
            return port.reply(
                id,
                Answer::Published {
                    status: Code::SHUTDOWN,
                    seq: None,
                },
            );
        }
        let from: Arc<str> = Arc::from(p.from);
        let target = AckTarget::Admin { request: id };
        if self.accept_send(&from, &p.to, p.client_msg_id, &p.body, target) {
            if let Some(seq) = self.users.borrow().get(&p.to).map(|u| u.head_seq) {
                port.seqs.borrow_mut().insert(id, seq);
            }
        }
        // The caller (`poll_control`, at the start of `flush_dirty`) wakes the committer.
    }

    /// The outcome of publish request `request` (`duplicate`: it had been stored before, its
    /// seq is not known here).
    pub(super) fn answer_publish(&self, request: u64, status: Code, duplicate: bool) {
        let Some(port) = self.control.borrow().clone() else {
            return;
        };
        let seq = port.seqs.borrow_mut().remove(&request);
        let seq = seq.filter(|_| status == Code::OK && !duplicate);
        port.reply(request, Answer::Published { status, seq });
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
            known: user.is_known(),
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
        // The GoAways go out with the rest of `flush_dirty`, which called `poll_control`.
        victims.len()
    }
}

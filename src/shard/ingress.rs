//! Ingress: what comes into the shard — frames from its connections and envelopes from its
//! peers — and the admission of sends: rate limit, recipient check, routing to the owner of
//! the recipient (1:1) or of the group. Dedup happens where the message is stored (see
//! [`super::dedup`]); the SendAck that comes back lands here (`Shard::on_send_ack`), and
//! with own-send sync the accepted 1:1 message enters the sender's own stream from the copy
//! the recipient's shard put in it (so nothing waits here per message in flight).

use std::rc::Rc;

use super::conn::Conn;
use super::envelope::{Envelope, Handoff, Message, OwnCopy, SendAck, UserRef};
use super::inbox::{AckTarget, SenderCopy};
use super::ratelimit::RateVerdict;
use super::read_buf::ReadSource;
use super::routing::owner;
use super::state::Shard;
use crate::metrics::stages::{Stage, Stamps};
use crate::protocol::{self, ClientMsg, Code, ServerMsg};

impl Shard {
    /// Handles one decoded frame from a logged-in connection.
    pub fn on_frame(&self, conn: &Rc<Conn>, msg: ClientMsg<'_>, src: ReadSource<'_>) {
        match msg {
            ClientMsg::Send {
                client_msg_id,
                to_user,
                body,
            } => self.on_send(conn, client_msg_id, to_user, body, src),
            ClientMsg::Ack { up_to_seq } => self.on_ack(conn, up_to_seq),
            ClientMsg::Ping { nonce } => {
                conn.push(&ServerMsg::Pong { nonce });
            }
            ClientMsg::Logout => {
                // Before the GoAway: a login that follows it at once must not get them back.
                self.cover_own_sends_at_close(conn);
                conn.go_away(Code::LOGGED_OUT, "logged out");
            }
            ClientMsg::Group {
                request_id,
                group_id,
                op,
            } => self.on_group_frame(conn, request_id, group_id, op),
            ClientMsg::GroupList { request_id } => self.on_group_list(conn, request_id),
            ClientMsg::GroupSend {
                client_msg_id,
                group_id,
                body,
            } => {
                if self.admit_send(conn, client_msg_id) {
                    self.on_group_send(conn, client_msg_id, group_id, body, src);
                }
            }
            ClientMsg::Login { .. } => conn.close_with(&ServerMsg::Error {
                code: Code::ALREADY_LOGGED_IN,
                message: "this connection is already logged in",
            }),
        }
        self.mark_dirty(conn);
    }

    /// The rate limit, shared by 1:1 and group sends and by all of the user's devices (the
    /// bucket is in the user's record, see [`super::ratelimit`]). False: refused (answered
    /// here).
    fn admit_send(&self, conn: &Rc<Conn>, client_msg_id: u64) -> bool {
        let now = self.mono_ms();
        let rate = self.cfg.limits.sends_per_sec;
        let verdict = self
            .users
            .borrow_mut()
            .of_conn(&conn.user)
            .bucket
            .take(rate, now);
        match verdict {
            RateVerdict::Allowed => true,
            RateVerdict::Limited => {
                self.metrics.send_rejected.inc(Code::RATE_LIMITED);
                conn.push(&ServerMsg::SendAck {
                    client_msg_id,
                    status: Code::RATE_LIMITED,
                    own_seq: 0,
                });
                false
            }
            RateVerdict::Abusive => {
                tracing::info!(shard = self.id, user = %conn.user, device = %conn.device_id, "closing a client that kept sending past the rate limit");
                conn.go_away(
                    Code::RATE_LIMITED,
                    "kept sending past the rate limit (sends_per_sec)",
                );
                false
            }
        }
    }

    fn on_send(
        &self,
        conn: &Rc<Conn>,
        client_msg_id: u64,
        to: &str,
        body: &[u8],
        src: ReadSource<'_>,
    ) {
        let stamps = Stamps::read_at(self.now_ns());
        if !self.admit_send(conn, client_msg_id) {
            return;
        }
        if to.is_empty() || to.len() > protocol::MAX_USER_ID || crate::auth::is_reserved(to) {
            self.metrics.send_rejected.inc(Code::INVALID_RECIPIENT);
            conn.push(&ServerMsg::SendAck {
                client_msg_id,
                status: Code::INVALID_RECIPIENT,
                own_seq: 0,
            });
            return;
        }
        let dest = owner(to, self.shards);
        if dest == self.id {
            let target = AckTarget::Local { conn: conn.id };
            let stored =
                self.accept_send_stamped(&conn.user, to, client_msg_id, body, target, stamps);
            if stored && self.cfg.server.own_send_sync {
                let own_seq = self.append_outgoing(&conn.user, to, client_msg_id, body, conn.id);
                self.note_sender_copy(client_msg_id, SenderCopy::OwnSeq(own_seq));
            }
            return;
        }
        // Slices of the read, not copies: the recipient shard's append is the body's one copy.
        let body = src.keep(body);
        let to = UserRef::keep(src, to);
        self.in_flight.set(self.in_flight.get() + 1);
        self.mesh.push(
            dest,
            Envelope::Message(Message {
                from: conn.user.clone(),
                to,
                client_msg_id,
                body,
                origin_conn: conn.id,
                read_ns: stamps.read_ns,
            }),
        );
    }

    /// The outcome of a send this shard forwarded: to the sending connection, and (own-send
    /// sync) into the sender's stream if the message was stored for the first time (only then
    /// does the SendAck carry the copy).
    fn on_send_ack(&self, a: SendAck) {
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
        let received = self.now_ns();
        self.metrics
            .stages
            .between(Stage::AckMesh, a.pushed_ns, received);
        // The copy first, so that the SendAck can name it (it reaches the connection before
        // any entry after the copy: those need a commit that has not started yet).
        let own_seq = match &a.own_copy {
            Some(OwnCopy { to, body }) => {
                self.append_outgoing(&a.sender, to, a.client_msg_id, body, a.origin_conn)
            }
            None => 0,
        };
        self.ack_conn(a.origin_conn, a.client_msg_id, a.status, own_seq);
        self.ack_queued(Stamps {
            read_ns: a.read_ns,
            prev_ns: received,
        });
        self.changed.notify_all();
    }

    /// Work from peer `from_shard`. A hand-off is returned to the caller, which starts the
    /// connection's session (the shard itself never starts tasks).
    pub fn handle_envelope(&self, from_shard: usize, env: Envelope) -> Option<Handoff> {
        match env {
            Envelope::Message(m) => {
                let target = AckTarget::Remote {
                    peer: from_shard,
                    origin_conn: m.origin_conn,
                };
                let received = self.now_ns();
                self.metrics
                    .stages
                    .between(Stage::Mesh, m.read_ns, received);
                let stamps = Stamps {
                    read_ns: m.read_ns,
                    prev_ns: received,
                };
                let stored = self.accept_send_stamped(
                    &m.from,
                    &m.to,
                    m.client_msg_id,
                    &m.body,
                    target,
                    stamps,
                );
                if stored && self.cfg.server.own_send_sync {
                    // Kept with the pending ack until the commit, then handed back in the
                    // SendAck, for the copy in the sender's stream.
                    let copy = OwnCopy {
                        to: m.to,
                        body: m.body,
                    };
                    self.note_sender_copy(m.client_msg_id, SenderCopy::Remote(copy));
                }
            }
            Envelope::SendAck(a) => self.on_send_ack(a),
            Envelope::Handoff(h) => return Some(h),
            Envelope::Drained => {
                self.drained_peers.set(self.drained_peers.get() + 1);
                self.changed.notify_all();
            }
            Envelope::Redriven => {
                self.redriven_peers.set(self.redriven_peers.get() + 1);
                self.changed.notify_all();
            }
            other => self.handle_group_envelope(from_shard, other),
        }
        None
    }
}

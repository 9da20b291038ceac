//! Ingress: what comes into the shard — frames from its connections and envelopes from its
//! peers — and the admission of sends: rate limit, dedup of (sender, client_msg_id), routing to
//! the recipient's owner shard. The answer to a send ([`Shard::complete_send`]) also lands
//! here, whether it comes from this shard's own commit or back over the mesh.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use super::conn::Conn;
use super::dedup::Verdict;
use super::envelope::{ConnId, Envelope, Handoff, Message, SendAck};
use super::inbox::PendingAck;
use super::ratelimit::RateVerdict;
use super::routing::owner;
use super::state::Shard;
use crate::protocol::{self, ClientMsg, Code, ServerMsg};

impl Shard {
    /// Handles one decoded frame from a logged-in connection.
    pub fn on_frame(&self, conn: &Rc<Conn>, msg: ClientMsg<'_>) {
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
                self.metrics.send_rejected.inc(Code::RATE_LIMITED);
                conn.push(&ServerMsg::SendAck {
                    client_msg_id,
                    status: Code::RATE_LIMITED,
                });
                return;
            }
            RateVerdict::Abusive => {
                tracing::info!(shard = self.id, user = %conn.user, device = %conn.device_id, "closing a client that kept sending past the rate limit");
                conn.go_away(
                    Code::RATE_LIMITED,
                    "kept sending past the rate limit (sends_per_sec)",
                );
                return;
            }
        }
        if to.is_empty() || to.len() > protocol::MAX_USER_ID || crate::auth::is_reserved(to) {
            self.metrics.send_rejected.inc(Code::INVALID_RECIPIENT);
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
            Verdict::New => self.route(conn, client_msg_id, to, body),
        }
    }

    /// Sends an admitted message to the recipient's owner: appended here, or over the mesh.
    fn route(&self, conn: &Conn, client_msg_id: u64, to: &str, body: &[u8]) {
        let dest = owner(to, self.shards);
        if dest == self.id {
            match self.accept_message(&conn.user, to, client_msg_id, body) {
                Ok(()) => self.pending.borrow_mut().push(PendingAck::Local {
                    sender: conn.user.clone(),
                    origin_conn: conn.id,
                    client_msg_id,
                }),
                Err(status) => self.complete_send(&conn.user, conn.id, client_msg_id, status),
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

    /// Answers the sender (on the sender's owner shard) and settles the dedup entry.
    pub(super) fn complete_send(
        &self,
        sender: &str,
        origin_conn: ConnId,
        client_msg_id: u64,
        status: Code,
    ) {
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

    /// Work from peer `from_shard`. A hand-off is returned to the caller, which starts the
    /// connection's session (the shard itself never starts tasks).
    pub fn handle_envelope(&self, from_shard: usize, env: Envelope) -> Option<Handoff> {
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
            Envelope::Handoff(h) => return Some(h),
            Envelope::Drained => {
                self.drained_peers.set(self.drained_peers.get() + 1);
                self.changed.notify_all();
            }
        }
        None
    }
}

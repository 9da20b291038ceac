//! The inbox: the owner shard assigns each message its recipient's next seq, appends it to the
//! shard's log, and makes it durable with a group commit, which releases its SendAck and its
//! delivery. Retention trims the log and the user index together.
//!
//! Group commit ([`Shard::commit`]) runs on the committer task once the current batch of work
//! has yielded, so every append made in that batch shares one sync. The msync runs on glommio's
//! blocking pool; the shard keeps reading, routing and appending while the disk works, and what
//! is appended meanwhile waits for the next commit.

use std::sync::Arc;

use super::envelope::{ConnId, Envelope, SendAck};
use super::state::Shard;
use crate::config::FsyncPolicy;
use crate::log::record::{MessageRecord, Record, NO_POSITION};
use crate::protocol::Code;

/// A SendAck waiting for the group commit that makes its message durable.
pub enum PendingAck {
    /// The sender is served by this shard.
    Local {
        sender: Arc<str>,
        origin_conn: ConnId,
        client_msg_id: u64,
    },
    /// The sender's shard is `peer`.
    Remote { peer: usize, ack: SendAck },
    /// A message published through the server API (see [`super::control`]).
    Admin(super::control::AdminAck),
}

impl Shard {
    /// Assigns the next seq of `to` and appends the message to the log. `Ok` means it waits
    /// for the next group commit (which acks and delivers it); `Err` is the refusal to send
    /// back at once.
    pub(super) fn accept_message(
        &self,
        from: &str,
        to: &str,
        client_msg_id: u64,
        body: &[u8],
    ) -> Result<(), Code> {
        let mut users = self.users.borrow_mut();
        let (name, user) = users.entry(to);
        if user.unacked() >= self.cfg.limits.max_inbox as u64 {
            self.metrics.send_rejected.inc(Code::INBOX_FULL);
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
            prev: user.last_position().unwrap_or(NO_POSITION),
        });
        let (pos, rolled) = {
            let mut log = self.log.borrow_mut();
            let segments = log.segment_count();
            match log.append(&record) {
                Ok(pos) => (pos, log.segment_count() != segments),
                Err(e) => {
                    tracing::error!(shard = self.id, error = %e, "append failed; refusing sends until it works again");
                    self.metrics.send_rejected.inc(Code::STORAGE_UNAVAILABLE);
                    return Err(Code::STORAGE_UNAVAILABLE);
                }
            }
        };
        user.head_seq = seq;
        user.index.push_back((seq, pos));
        self.metrics.accepted.inc();
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
        if !touched.is_empty() {
            self.metrics.commit_batch.observe(touched.len() as u64);
        }
        if status != Code::OK {
            self.metrics.send_rejected.add(status, pending.len() as u64);
        }
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
                self.wake_devices(user);
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
                PendingAck::Admin(ack) => ack.complete(status),
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
        let started = std::time::Instant::now();
        let (plan, result) = glommio::executor()
            .spawn_blocking(move || {
                let result = plan.run();
                (plan, result)
            })
            .await;
        self.metrics
            .log_sync
            .observe(started.elapsed().as_nanos() as u64);
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
            user.forget_before(oldest);
        }
    }
}

//! The inbox: the shard that owns a stream assigns each entry the stream's next seq and appends
//! it to the shard's log — a 1:1 message on the recipient's owner, the sender's own copy on the
//! sender's owner (own-send sync), a group entry once per shard with members — and a group
//! commit makes it durable, which releases its answers (SendAck, GroupReply), its fan-out to
//! other shards and its delivery. Retention trims the log and the user index together.
//!
//! Group commit ([`Shard::commit`]) runs on the committer task once the current batch of work
//! has yielded, so every append made in that batch shares one sync. The msync runs on glommio's
//! blocking pool; the shard keeps reading, routing and appending while the disk works, and what
//! is appended meanwhile waits for the next commit.
//!
//! Dedup ([`super::dedup`]) is checked here, by the shard that stores the message, in
//! `Shard::accept_send` (1:1) and the group owner's send path.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::envelope::{ConnId, Envelope, GroupAnswer, GroupEntry, SendAck};
use super::state::Shard;
use super::users::User;
use crate::config::FsyncPolicy;
use crate::log::record::{
    AnchorRecord, CursorRecord, MessageRecord, OutgoingRecord, Record, NO_POSITION,
};
use crate::protocol::{Code, ServerMsg};

/// Who waits for the outcome of a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckTarget {
    /// A connection of this shard.
    Local { conn: ConnId },
    /// A connection of shard `peer`.
    Remote { peer: usize, origin_conn: ConnId },
    /// A server API request (see [`super::control`]), answered with the recipient's seq.
    Admin { request: u64 },
}

/// Who waits for the answer to a group operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyTarget {
    Local,
    Remote {
        peer: usize,
    },
    /// A server API request (see [`super::control`]).
    Admin {
        request: u64,
    },
}

/// Something released by the group commit that makes what it refers to durable.
pub enum PendingAck {
    /// A 1:1 or group message stored here: settle its dedup entry and answer the sender (and
    /// whoever re-sent it meanwhile).
    Send {
        sender: Arc<str>,
        client_msg_id: u64,
        target: AckTarget,
    },
    /// A group operation committed here (its owner): answer the requester and release the
    /// places reserved for it on users' shards.
    GroupOp {
        answer: GroupAnswer,
        target: ReplyTarget,
        op: u64,
        reserved_on: Vec<usize>,
    },
    /// An entry of a group this shard owns: fan it out to the shards with members.
    Fanout { group: Arc<str>, group_seq: u64 },
    /// A fan-out copy applied here: tell the group's owner.
    Applied {
        owner: usize,
        group: Arc<str>,
        group_seq: u64,
    },
}

impl Shard {
    /// A 1:1 message for a user this shard owns: dedup, then [`Shard::accept_message`]. Answers
    /// a duplicate at once; an accepted message is answered after its commit.
    pub(super) fn accept_send(
        &self,
        from: &Arc<str>,
        to: &str,
        client_msg_id: u64,
        body: &[u8],
        target: AckTarget,
    ) -> bool {
        let limits = &self.cfg.limits;
        let verdict = self.windows.borrow_mut().sender(from).check(
            client_msg_id,
            target,
            Self::wall_ms(),
            limits.dedup_window.as_millis() as u64,
            limits.dedup_entries,
        );
        match verdict {
            super::dedup::Verdict::Done(status) => {
                self.answer_send(target, from, client_msg_id, status, true);
                false
            }
            super::dedup::Verdict::InFlight => false,
            super::dedup::Verdict::New => {
                match self.accept_message(from, to, client_msg_id, body) {
                    Ok(()) => {
                        self.pending.borrow_mut().push(PendingAck::Send {
                            sender: from.clone(),
                            client_msg_id,
                            target,
                        });
                        true
                    }
                    Err(status) => {
                        self.settle_send(from, client_msg_id, target, status);
                        false
                    }
                }
            }
        }
    }

    /// Settles the dedup entry of a send and answers everyone waiting for it.
    pub(super) fn settle_send(
        &self,
        sender: &Arc<str>,
        client_msg_id: u64,
        target: AckTarget,
        status: Code,
    ) {
        let waiters = self
            .windows
            .borrow_mut()
            .get_mut(sender)
            .map(|d| d.complete(client_msg_id, status))
            .unwrap_or_default();
        self.answer_send(target, sender, client_msg_id, status, false);
        for w in waiters {
            self.answer_send(w, sender, client_msg_id, status, true);
        }
    }

    /// Sends a SendAck to `target` (a connection here, or its shard).
    pub(super) fn answer_send(
        &self,
        target: AckTarget,
        sender: &Arc<str>,
        client_msg_id: u64,
        status: Code,
        duplicate: bool,
    ) {
        match target {
            AckTarget::Local { conn } => self.ack_conn(conn, client_msg_id, status),
            AckTarget::Admin { request } => self.answer_publish(request, status, duplicate),
            AckTarget::Remote { peer, origin_conn } => self.mesh.push(
                peer,
                Envelope::SendAck(SendAck {
                    sender: sender.clone(),
                    origin_conn,
                    client_msg_id,
                    status,
                    duplicate,
                }),
            ),
        }
    }

    /// Queues a SendAck frame on connection `conn`, if it is still here.
    pub(super) fn ack_conn(&self, conn: ConnId, client_msg_id: u64, status: Code) {
        if let Some(c) = self.conns.borrow().get(&conn) {
            c.push(&ServerMsg::SendAck {
                client_msg_id,
                status,
            });
            self.mark_dirty(c);
        }
    }

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
        if !self.recipient_allowed(&users, to) {
            self.metrics.send_rejected.inc(Code::USER_UNKNOWN);
            return Err(Code::USER_UNKNOWN); // nothing stored, no user record made
        }
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
        let pos = self.append_explicit(&record, user)?;
        user.push_entry(seq, pos);
        self.metrics.accepted.inc();
        self.touched.borrow_mut().push((name, seq));
        Ok(())
    }

    /// Own-send sync: appends a 1:1 message `sender` sent (and `to`'s owner accepted) to the
    /// sender's own stream. It is delivered to the sender's devices after the next commit.
    pub(super) fn append_outgoing(&self, sender: &str, to: &str, client_msg_id: u64, body: &[u8]) {
        let mut users = self.users.borrow_mut();
        let (name, user) = users.entry(sender);
        let seq = user.head_seq + 1;
        let record = Record::Outgoing(OutgoingRecord {
            user: sender.to_owned(),
            seq,
            to: to.to_owned(),
            client_msg_id,
            sent_at_ms: Self::wall_ms(),
            body: body.to_vec(),
        });
        match self.append_explicit(&record, user) {
            Ok(pos) => {
                user.push_entry(seq, pos);
                self.touched.borrow_mut().push((name, seq));
            }
            Err(_) => {
                // The message itself is stored on the recipient's shard; only the copy in
                // the sender's own stream is missing (logged by append_explicit).
            }
        }
    }

    /// Appends a record that states `user`'s seq explicitly (message, outgoing) and notes the
    /// segment it anchors the user in.
    fn append_explicit(&self, record: &Record, user: &mut User) -> Result<u64, Code> {
        let (pos, base, rolled) = {
            let mut log = self.log.borrow_mut();
            let segments = log.segment_count();
            match log.append(record) {
                Ok(pos) => (pos, log.active_base(), log.segment_count() != segments),
                Err(e) => {
                    tracing::error!(shard = self.id, error = %e, "append failed; refusing sends until it works again");
                    self.metrics.send_rejected.inc(Code::STORAGE_UNAVAILABLE);
                    return Err(Code::STORAGE_UNAVAILABLE);
                }
            }
        };
        user.anchor_base = base;
        if rolled {
            self.rolled.set(true);
        }
        Ok(pos)
    }

    /// Appends `entry` (a group record framed by the caller) for the local `recipients`,
    /// preceded in the same segment by what makes that segment replayable on its own: a
    /// checkpoint of the group's state here (`checkpoint`, built only when the group has none
    /// in the segment) and an anchor of the recipients' head seqs. Returns the entry's
    /// position and the segment base; the caller then applies the entry.
    pub(super) fn append_group_entry(
        &self,
        entry: &[u8],
        time_ms: u64,
        checkpoint_base: Option<u64>,
        checkpoint: impl Fn() -> Record,
        recipients: &[Arc<str>],
    ) -> Result<(u64, u64), Code> {
        let fail = |e: crate::log::LogError| {
            tracing::error!(shard = self.id, error = %e, "append failed; refusing sends until it works again");
            Code::STORAGE_UNAVAILABLE
        };
        let users = self.users.borrow();
        let mut log = self.log.borrow_mut();
        let segments = log.segment_count();
        // At most two rounds: after a roll the new segment is empty.
        for _ in 0..2 {
            let base = log.active_base();
            let snapshot = match checkpoint_base == Some(base) {
                true => None,
                false => Some(crate::log::Log::frame(&checkpoint()).map_err(fail)?),
            };
            let heads: Vec<(String, u64)> = recipients
                .iter()
                .filter_map(|u| users.get(u).map(|user| (u, user)))
                .filter(|(_, user)| user.anchor_base != base && user.head_seq > 0)
                .map(|(u, user)| (u.to_string(), user.head_seq))
                .collect();
            let anchor = match heads.is_empty() {
                true => None,
                false => Some(
                    crate::log::Log::frame(&Record::Anchor(AnchorRecord {
                        heads,
                        cursors: Vec::new(),
                        at_ms: time_ms,
                    }))
                    .map_err(fail)?,
                ),
            };
            let total = entry.len()
                + snapshot.as_ref().map_or(0, Vec::len)
                + anchor.as_ref().map_or(0, Vec::len);
            if log.prepare(total).map_err(fail)? != base {
                continue; // rolled: the new segment needs its own checkpoint and anchors
            }
            for framed in [&snapshot, &anchor].into_iter().flatten() {
                log.append_framed(framed, time_ms);
            }
            let pos = log.append_framed(entry, time_ms);
            if log.segment_count() != segments {
                self.rolled.set(true);
            }
            return Ok((pos, base));
        }
        Err(Code::STORAGE_UNAVAILABLE)
    }

    /// Group commit: makes everything appended since the last commit durable (per the fsync
    /// policy), then answers, fans out and delivers it.
    pub async fn commit(&self) {
        if self.rolled.replace(false) && self.cfg.storage.max_bytes_per_shard > 0 {
            // The log only grows when a segment rolls: enforce the size limit right there.
            self.apply_retention();
        }
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
                    // fsyncgate: the failed pages may already be marked clean, so a retry
                    // proves nothing. The log is poisoned (no more appends); this batch is
                    // neither acked nor delivered nor fanned out. Whatever of it reached the
                    // disk is recovered at the next start, and a resend is then answered
                    // from the dedup window rebuilt from those records.
                    tracing::error!(shard = self.id, error = %e, "log sync failed; this shard acknowledges nothing more until it restarts");
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
        if status == Code::OK {
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
        let mut fanout: BTreeMap<usize, Vec<Arc<GroupEntry>>> = BTreeMap::new();
        let mut applied: BTreeMap<usize, Vec<(Arc<str>, u64)>> = BTreeMap::new();
        for ack in pending {
            if status != Code::OK
                && matches!(ack, PendingAck::Fanout { .. } | PendingAck::Applied { .. })
            {
                continue; // not durable: no other shard may build on it
            }
            match ack {
                PendingAck::Send {
                    sender,
                    client_msg_id,
                    target,
                } => self.settle_send(&sender, client_msg_id, target, status),
                PendingAck::GroupOp {
                    mut answer,
                    target,
                    op,
                    reserved_on,
                } => {
                    if status != Code::OK {
                        answer.status = status;
                        answer.message = "the change could not be made durable".into();
                    }
                    self.release_reservations(op, &reserved_on);
                    self.answer_group(target, answer);
                }
                PendingAck::Fanout { group, group_seq } => {
                    self.collect_fanout(&group, group_seq, &mut fanout)
                }
                PendingAck::Applied {
                    owner,
                    group,
                    group_seq,
                } => {
                    let list = applied.entry(owner).or_default();
                    match list.last_mut() {
                        Some((g, seq)) if *g == group => *seq = (*seq).max(group_seq),
                        _ => list.push((group, group_seq)),
                    }
                }
            }
        }
        for (peer, entries) in fanout {
            self.mesh.push(peer, Envelope::Fanout(entries));
        }
        for (owner, list) in applied {
            if owner == self.id {
                self.on_applied(owner, list);
            } else {
                self.mesh.push(owner, Envelope::Applied(list));
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
    ///
    /// What must outlive the deleted records — a user's head seq and cursors, a group's state
    /// — is restated first (anchor and checkpoint records), and the deletion waits until that
    /// restatement is durable (a later round), so no crash can lose both. Segments holding
    /// group entries some shard has not applied yet are kept.
    pub fn apply_retention(&self) {
        let storage = &self.cfg.storage;
        let cutoff = Self::wall_ms().saturating_sub(storage.retention.as_millis() as u64);
        let max_bytes = match storage.max_bytes_per_shard {
            0 => u64::MAX,
            n => n,
        };
        let keep_from = self.groups.borrow().oldest_needed().unwrap_or(u64::MAX);
        let survivor = self
            .log
            .borrow()
            .retention_survivor(cutoff, max_bytes, keep_from);
        if survivor <= self.log.borrow().oldest_position() {
            return; // nothing to delete
        }
        if let Some(pos) = self.restate_before(survivor) {
            self.restated.set(Some(pos));
            self.commit_due.notify();
            return; // delete once the restatement is durable
        }
        if let Some(pos) = self.restated.get() {
            let durable = storage.fsync == FsyncPolicy::Never || self.log.borrow().is_synced(pos);
            if !durable {
                return;
            }
            self.restated.set(None);
        }
        let oldest = match self.log.borrow_mut().retain(cutoff, max_bytes, keep_from) {
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

    /// Before records below `survivor` are deleted: restates the head seq and cursors of every
    /// user, and the state of every group, last stated only down there. Returns the position
    /// of the last record written, if any was.
    fn restate_before(&self, survivor: u64) -> Option<u64> {
        let now = Self::wall_ms();
        let mut heads = Vec::new();
        let mut cursors = Vec::new();
        for (name, user) in self.users.borrow().iter() {
            if user.last_pos >= survivor || (user.head_seq == 0 && user.cursors.is_empty()) {
                continue;
            }
            heads.push((name.to_string(), user.head_seq));
            for (device, acked) in user.cursors.iter() {
                cursors.push((name.to_string(), device.to_owned(), acked));
            }
        }
        let mut records = self.groups.borrow().checkpoints_before(survivor, now);
        if !heads.is_empty() || !cursors.is_empty() {
            records.push(Record::Anchor(AnchorRecord {
                heads,
                cursors,
                at_ms: now,
            }));
        }
        let mut last = None;
        {
            let mut log = self.log.borrow_mut();
            for record in &records {
                match log.append(record) {
                    Ok(pos) => last = Some(pos),
                    Err(e) => {
                        tracing::warn!(shard = self.id, error = %e, "cannot restate state before retention");
                        return None;
                    }
                }
            }
        }
        let pos = last?;
        for user in self.users.borrow_mut().values_mut() {
            if user.last_pos < survivor {
                user.last_pos = pos;
            }
        }
        self.groups.borrow_mut().restated(survivor, pos);
        Some(pos)
    }

    /// A device's ack cursor moved: log it with the next group commit.
    pub(super) fn append_cursor(&self, user: &str, device: &str, acked: u64) -> Option<u64> {
        let record = Record::Cursor(CursorRecord {
            user: user.to_owned(),
            device: device.to_owned(),
            acked,
            at_ms: Self::wall_ms(),
        });
        let mut log = self.log.borrow_mut();
        match log.append(&record) {
            Ok(pos) => Some(pos),
            Err(_) if log.is_poisoned() => None, // said once, when the sync failed
            Err(e) => {
                tracing::warn!(user, error = %e, "cannot log an ack cursor");
                None
            }
        }
    }
}

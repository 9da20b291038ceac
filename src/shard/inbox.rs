//! The inbox: the shard that owns a stream assigns each entry the stream's next seq and appends
//! it to the shard's log — a 1:1 message on the recipient's owner, the sender's own copy on the
//! sender's owner (own-send sync), a group entry once per shard with members — and a group
//! commit makes it durable, which releases its answers (SendAck, GroupReply), its fan-out to
//! other shards and its delivery. Retention trims the log and the user index together.
//!
//! Group commit runs on the committer task ([`super::tasks`]) once the current batch of work
//! has yielded, so every append made in that batch shares one sync: [`Shard::begin_commit`]
//! takes the batch and plans its sync, [`sync_batch`] runs it — an fdatasync of the segment
//! submitted to the shard's own io_uring, so the shard keeps reading, routing and appending
//! while the disk works — and [`Shard::finish_commit`] releases it. Commits are pipelined: what
//! is appended during a sync starts the next sync at once (up to
//! [`super::tasks::COMMITS_IN_FLIGHT`]), and batches are released in order.
//!
//! Each commit also takes a spare segment prepared meanwhile and starts preparing the next one
//! on a thread of its own once the active segment is half full ([`crate::log::Log::spare_job`]),
//! so a roll never creates a file on the shard's thread.
//!
//! The stage stamps of 1:1 messages ([`crate::metrics::stages`]) are taken here: appended,
//! sync start and end, ack released.
//!
//! Dedup ([`super::dedup`]) is checked here, by the shard that stores the message, in
//! `Shard::accept_send` (1:1) and the group owner's send path.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::envelope::{ConnId, Envelope, GroupAnswer, GroupEntry, OwnCopy, SendAck};
use super::state::Shard;
use super::users::User;
use crate::config::FsyncPolicy;
use crate::log::record::{
    AnchorRecord, Append, CursorRecord, GroupMessageRef, MessageRef, OutgoingRef, Record,
    NO_POSITION,
};
use crate::metrics::stages::{now_ns, Stage, Stamps};
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

/// Own-send sync: the copy of a 1:1 send in the sender's own stream, as the send's first
/// answer carries it (see [`super::own_sends`]).
#[derive(Debug, Default)]
pub enum SenderCopy {
    /// None: a group send, a publish, own-send sync off.
    #[default]
    None,
    /// A send from a connection here: the copy is appended already, and the sending
    /// connection is not sent this seq, which its SendAck names (0: it is sent the copy).
    OwnSeq(u64),
    /// A send from another shard: the copy for the sender's shard to append, in its SendAck.
    Remote(OwnCopy),
}

/// A group entry as `Shard::append_group_entry` takes it: a message borrowed from the
/// entry (archived in place: the body's one copy from the shared `Bytes` into the log), or a
/// membership change framed by the caller.
pub enum GroupEntryBytes<'a> {
    Message(GroupMessageRef<'a>),
    Framed(Vec<u8>),
}

impl GroupEntryBytes<'_> {
    /// Bytes of the segment it may take.
    fn room(&self) -> usize {
        match self {
            GroupEntryBytes::Framed(framed) => framed.len(),
            GroupEntryBytes::Message(m) => Append::GroupMessage(*m)
                .archive_bound()
                .map_or(0, crate::log::record::framed_len),
        }
    }
}

/// Something released by the group commit that makes what it refers to durable.
pub enum PendingAck {
    /// A 1:1 or group message stored here: settle its dedup entry and answer the sender (and
    /// whoever re-sent it meanwhile).
    Send {
        sender: Arc<str>,
        client_msg_id: u64,
        target: AckTarget,
        /// Read and appended ([`crate::metrics::stages`]; NONE for group sends).
        stamps: Stamps,
        /// The send's own-send copy, for its first answer.
        own: SenderCopy,
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
        self.accept_send_stamped(from, to, client_msg_id, body, target, Stamps::NONE)
    }

    /// [`Shard::accept_send`] of a client's Send, with its stage stamps.
    pub(super) fn accept_send_stamped(
        &self,
        from: &Arc<str>,
        to: &str,
        client_msg_id: u64,
        body: &[u8],
        target: AckTarget,
        stamps: Stamps,
    ) -> bool {
        if !self.admit_new(from, client_msg_id, target) {
            return false;
        }
        match self.accept_message(from, to, client_msg_id, body) {
            Ok(()) => {
                let stamps = match stamps.is_stamped() {
                    true => {
                        // Read afresh: the stage is the admission's and the append's cost.
                        let appended = now_ns();
                        self.metrics
                            .stages
                            .between(Stage::Append, stamps.prev_ns, appended);
                        stamps.at(appended)
                    }
                    false => stamps,
                };
                self.pending.borrow_mut().push(PendingAck::Send {
                    sender: from.clone(),
                    client_msg_id,
                    target,
                    stamps,
                    own: SenderCopy::None,
                });
                true
            }
            Err(status) => {
                self.settle_send(from, client_msg_id, target, status);
                false
            }
        }
    }

    /// The dedup check of a send, 1:1 or to a group: true for a new one, to be stored. A
    /// resend of a settled send is answered here with its first outcome; one still in flight
    /// is answered when its original settles.
    pub(super) fn admit_new(&self, from: &Arc<str>, client_msg_id: u64, target: AckTarget) -> bool {
        let limits = &self.cfg.limits;
        let verdict = self.windows.borrow_mut().sender(from).check(
            client_msg_id,
            target,
            self.wall_ms(),
            limits.dedup_window.as_millis() as u64,
            limits.dedup_entries,
        );
        match verdict {
            super::dedup::Verdict::Done => {
                self.answer_send(target, from, client_msg_id, Code::OK, true);
                false
            }
            super::dedup::Verdict::InFlight => false,
            super::dedup::Verdict::New => true,
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
        self.settle_send_stamped(
            sender,
            client_msg_id,
            target,
            status,
            Stamps::NONE,
            SenderCopy::None,
        );
    }

    /// [`Shard::settle_send`], the first answer stamped with `stamps` (its stage started at
    /// the sync's end) and carrying `own` (see [`PendingAck::Send`]); the waiters' answers
    /// (resends) carry no copy.
    fn settle_send_stamped(
        &self,
        sender: &Arc<str>,
        client_msg_id: u64,
        target: AckTarget,
        status: Code,
        stamps: Stamps,
        own: SenderCopy,
    ) {
        let waiters = self
            .windows
            .borrow_mut()
            .get_mut(sender)
            .map(|d| d.complete(client_msg_id, status))
            .unwrap_or_default();
        self.answer_send_stamped(target, sender, client_msg_id, status, false, stamps, own);
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
        self.answer_send_stamped(
            target,
            sender,
            client_msg_id,
            status,
            duplicate,
            Stamps::NONE,
            SenderCopy::None,
        );
    }

    #[allow(clippy::too_many_arguments)] // the answer's fields; one caller each way
    fn answer_send_stamped(
        &self,
        target: AckTarget,
        sender: &Arc<str>,
        client_msg_id: u64,
        status: Code,
        duplicate: bool,
        stamps: Stamps,
        own: SenderCopy,
    ) {
        let released = match stamps.is_stamped() {
            true => {
                let now = self.now_ns();
                self.metrics
                    .stages
                    .between(Stage::AckRelease, stamps.prev_ns, now);
                now
            }
            false => 0,
        };
        match target {
            AckTarget::Local { conn } => {
                let own_seq = match own {
                    SenderCopy::OwnSeq(seq) if status == Code::OK => seq,
                    _ => 0,
                };
                self.ack_conn(conn, client_msg_id, status, own_seq);
                self.ack_queued(stamps.at(released));
            }
            AckTarget::Admin { request } => self.answer_publish(request, status, duplicate),
            AckTarget::Remote { peer, origin_conn } => self.mesh.push(
                peer,
                Envelope::SendAck(SendAck {
                    sender: sender.clone(),
                    origin_conn,
                    client_msg_id,
                    status,
                    own_copy: match own {
                        SenderCopy::Remote(copy) if status == Code::OK && !duplicate => Some(copy),
                        _ => None,
                    },
                    read_ns: stamps.read_ns,
                    pushed_ns: released,
                }),
            ),
        }
    }

    /// A stamped SendAck was queued on a connection of this shard: the end-of-batch flush
    /// that hands it to the kernel records its last stages ([`Shard::flush_dirty`]).
    pub(super) fn ack_queued(&self, stamps: Stamps) {
        if stamps.is_stamped() {
            self.ack_stamps.borrow_mut().push(stamps);
        }
    }

    /// Queues a SendAck frame on connection `conn`, if it is still here.
    pub(super) fn ack_conn(&self, conn: ConnId, client_msg_id: u64, status: Code, own_seq: u64) {
        if let Some(c) = self.conns.borrow().get(&conn) {
            c.push(&ServerMsg::SendAck {
                client_msg_id,
                status,
                own_seq,
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
        // Borrowed: archived straight from the frame's bytes into the log.
        let record = Append::Message(MessageRef {
            to,
            seq,
            from,
            client_msg_id,
            sent_at_ms: self.wall_ms(),
            body,
            prev: user.last_position().unwrap_or(NO_POSITION),
        });
        let pos = self.append_explicit(record, user)?;
        user.push_entry(seq, pos);
        self.metrics.accepted.inc();
        self.touched.borrow_mut().push((name, seq));
        Ok(())
    }

    /// Own-send sync: appends a 1:1 message `sender` sent (and `to`'s owner accepted) to the
    /// sender's own stream. It is delivered to the sender's devices after the next commit,
    /// except to connection `origin`, which made the send: returns the copy's seq when that
    /// connection will be passed over it (its SendAck's `own_seq`; see [`super::own_sends`]),
    /// else 0.
    pub(super) fn append_outgoing(
        &self,
        sender: &str,
        to: &str,
        client_msg_id: u64,
        body: &[u8],
        origin: ConnId,
    ) -> u64 {
        let mut users = self.users.borrow_mut();
        let (name, user) = users.entry(sender);
        let seq = user.head_seq + 1;
        let record = Append::Outgoing(OutgoingRef {
            user: sender,
            seq,
            to,
            client_msg_id,
            sent_at_ms: self.wall_ms(),
            body,
        });
        match self.append_explicit(record, user) {
            Ok(pos) => {
                user.push_entry(seq, pos);
                self.touched.borrow_mut().push((name, seq));
                let conns = self.conns.borrow();
                match conns.get(&origin) {
                    Some(c) if c.own_sends.record(seq) => seq,
                    _ => 0,
                }
            }
            Err(_) => {
                // The message itself is stored on the recipient's shard; only the copy in
                // the sender's own stream is missing (logged by append_explicit).
                0
            }
        }
    }

    /// The send accepted last (a 1:1 send whose PendingAck was just queued) has own-send copy
    /// `own`, for its first answer.
    pub(super) fn note_sender_copy(&self, client_msg_id: u64, own: SenderCopy) {
        if let Some(PendingAck::Send {
            client_msg_id: id,
            own: slot,
            ..
        }) = self.pending.borrow_mut().last_mut()
        {
            if *id == client_msg_id {
                *slot = own;
            }
        }
    }

    /// Appends a record that states `user`'s seq explicitly (message, outgoing) and notes the
    /// segment it anchors the user in.
    fn append_explicit(&self, record: Append<'_>, user: &mut User) -> Result<u64, Code> {
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
        entry: GroupEntryBytes<'_>,
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
            let total = entry.room()
                + snapshot.as_ref().map_or(0, Vec::len)
                + anchor.as_ref().map_or(0, Vec::len);
            if log.prepare(total).map_err(fail)? != base {
                continue; // rolled: the new segment needs its own checkpoint and anchors
            }
            for framed in [&snapshot, &anchor].into_iter().flatten() {
                log.append_framed(framed, time_ms);
            }
            let pos = match &entry {
                GroupEntryBytes::Framed(framed) => log.append_framed(framed, time_ms),
                GroupEntryBytes::Message(m) => log
                    .append_prepared(Append::GroupMessage(*m))
                    .map_err(fail)?,
            };
            if log.segment_count() != segments {
                self.rolled.set(true);
            }
            return Ok((pos, base));
        }
        Err(Code::STORAGE_UNAVAILABLE)
    }

    /// Takes everything appended since the last commit as one batch and plans its sync (per
    /// the fsync policy); `None` when there is nothing to commit.
    pub fn begin_commit(&self) -> Option<CommitBatch> {
        if self.rolled.replace(false) && self.cfg.storage.max_bytes_per_shard > 0 {
            // The log only grows when a segment rolls: enforce the size limit right there.
            self.apply_retention();
        }
        self.prepare_spare();
        if !self.has_uncommitted() {
            return None;
        }
        let pending = self.spare_pending.swap_out(&self.pending);
        let touched = self.spare_touched.swap_out(&self.touched);
        let always = self.cfg.storage.fsync == FsyncPolicy::Always;
        let plan = match always {
            true => Some(self.log.borrow_mut().begin_sync()),
            false => None,
        };
        let sync_start = self.now_ns();
        Some(CommitBatch {
            pending,
            touched,
            plan,
            sync_start,
            sync_end: sync_start,
        })
    }

    /// Makes a batch whose sync ended durable, then answers, fans out and delivers it.
    /// Batches are finished in the order they began. One reading of the clock serves it all.
    pub fn finish_commit(&self, batch: CommitBatch, result: std::io::Result<()>) {
        self.clock.batch(|| self.complete_commit(batch, result));
    }

    fn complete_commit(&self, batch: CommitBatch, result: std::io::Result<()>) {
        let CommitBatch {
            mut pending,
            touched,
            plan,
            sync_start,
            sync_end,
        } = batch;
        let always = plan.is_some();
        let status = match plan {
            None => Code::OK,
            Some(plan) => {
                if !plan.is_empty() {
                    self.metrics
                        .log_sync
                        .observe(sync_end.saturating_sub(sync_start));
                }
                let durable = self.log.borrow_mut().end_sync(plan, result.is_ok());
                match (result, durable) {
                    (Ok(()), true) => Code::OK,
                    (Ok(()), false) => {
                        tracing::error!(shard = self.id, "an earlier log sync failed; this shard acknowledges nothing more until it restarts");
                        Code::STORAGE_UNAVAILABLE
                    }
                    (Err(e), _) => {
                        // fsyncgate: the failed pages may already be marked clean, so a
                        // retry proves nothing. The log is poisoned (no more appends); this
                        // batch is neither acked nor delivered nor fanned out. Whatever of it
                        // reached the disk is recovered at the next start, and a resend is
                        // then answered from the dedup window rebuilt from those records.
                        tracing::error!(shard = self.id, error = %e, "log sync failed; this shard acknowledges nothing more until it restarts");
                        Code::STORAGE_UNAVAILABLE
                    }
                }
            }
        };
        if !touched.is_empty() {
            self.metrics.commit_batch.observe(touched.len() as u64);
        }
        let mut online = 0u64;
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
                online += user.devices.len() as u64;
                self.wake_devices(user);
            }
        }
        let mut fanout: BTreeMap<usize, Vec<Arc<GroupEntry>>> = BTreeMap::new();
        let mut applied: BTreeMap<usize, Vec<(Arc<str>, u64)>> = BTreeMap::new();
        let batch_len = pending.len();
        for ack in pending.drain(..) {
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
                    stamps,
                    own,
                } => {
                    let stages = &self.metrics.stages;
                    if stamps.is_stamped() {
                        stages.between(Stage::CommitWait, stamps.prev_ns, sync_start);
                        if always {
                            stages.between(Stage::Sync, sync_start, sync_end);
                        }
                    }
                    let stamps = stamps.at(sync_end);
                    self.settle_send_stamped(&sender, client_msg_id, target, status, stamps, own)
                }
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
        self.spare_pending.give_back(pending, batch_len);
        let touched_len = touched.len();
        self.spare_touched.give_back(touched, touched_len);
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
        // Before a long flush (a group message's fan-out to hundreds of members here is
        // milliseconds of `send(2)`s), what this commit sends to peers (the fan-out, SendAcks
        // of their senders, Applied) goes first, so the peers work on it meanwhile. A short
        // flush is over before that matters, and waking the peer a little earlier bought 1:1
        // traffic nothing but a worse tail (BENCHMARKS.md, "A commit hands its envelopes over
        // first"); at every flush it would wake peers once per client read.
        if self.dirty.borrow().len() >= HAND_OVER_BEFORE_FLUSHING {
            self.mesh.hand_over();
        }
        self.flush_dirty();
        // What the flush handed to the kernel includes the Deliver of every entry of the
        // batch to each device online (live ones; a device catching up gets it later).
        self.metrics
            .stages
            .between_n(Stage::DeliverWrite, sync_end, now_ns(), online); // afresh: after the flush
    }

    /// Takes a spare segment prepared meanwhile, and starts preparing the next one once the
    /// active segment is half full ([`crate::log::Log::spare_job`]) on a thread of its own:
    /// not glommio's blocking pool, whose one thread runs the group commit's syncs, which
    /// must not queue behind a fallocate.
    fn prepare_spare(&self) {
        let mut log = self.log.borrow_mut();
        log.collect_spare();
        let Some(job) = log.spare_job() else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name(format!("spare-{}", self.id))
            .spawn(move || job.run());
        if let Err(e) = spawned {
            // The job is gone with the closure: the log sees its channel closed and a roll
            // creates the segment itself.
            tracing::warn!(shard = self.id, error = %e, "cannot start the thread that prepares the next log segment");
        }
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

    /// Syncs everything appended so far without blocking the shard: an fdatasync of each
    /// segment with new records submitted to the shard's own io_uring (`sync_on_ring`). One
    /// runs at a time: the committer (fsync = "always") and the periodic syncer (fsync =
    /// "interval") never coexist.
    pub async fn sync_off_thread(&self) -> std::io::Result<()> {
        let plan = self.log.borrow_mut().begin_sync();
        if plan.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let (plan, result) = sync_on_ring(plan).await;
        self.metrics
            .log_sync
            .observe(started.elapsed().as_nanos() as u64);
        let durable = self.log.borrow_mut().end_sync(plan, result.is_ok());
        self.changed.notify_all();
        match (result, durable) {
            (Ok(()), false) => Err(std::io::Error::other(
                "the log is poisoned by an earlier failed sync",
            )),
            (result, _) => result,
        }
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
        let cutoff = self
            .wall_ms()
            .saturating_sub(storage.retention.as_millis() as u64);
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
        let now = self.wall_ms();
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

    /// A device's ack cursor moved: log it with the next group commit. The record's strings
    /// are the shard's reused ones ([`CURSOR`]): an ack allocates nothing.
    pub(super) fn append_cursor(&self, user: &str, device: &str, acked: u64) -> Option<u64> {
        let mut cursor = CURSOR.take();
        cursor.user.clear();
        cursor.user.push_str(user);
        cursor.device.clear();
        cursor.device.push_str(device);
        cursor.acked = acked;
        cursor.at_ms = self.wall_ms();
        let record = Record::Cursor(cursor);
        let mut log = self.log.borrow_mut();
        let appended = log.append(&record);
        if let Record::Cursor(cursor) = record {
            CURSOR.set(cursor);
        }
        match appended {
            Ok(pos) => Some(pos),
            Err(_) if log.is_poisoned() => None, // said once, when the sync failed
            Err(e) => {
                tracing::warn!(user, error = %e, "cannot log an ack cursor");
                None
            }
        }
    }
}

/// A group commit between [`Shard::begin_commit`] and [`Shard::finish_commit`].
pub struct CommitBatch {
    pending: Vec<PendingAck>,
    touched: Vec<(Arc<str>, u64)>,
    /// fsync = "always": the batch's sync.
    plan: Option<crate::log::SyncPlan>,
    /// Stage stamps: when the sync started and ended (both the commit's start without one).
    sync_start: u64,
    sync_end: u64,
}

impl CommitBatch {
    /// Whether the batch waits for a sync (otherwise it can be finished at once).
    pub fn syncs(&self) -> bool {
        self.plan.as_ref().is_some_and(|p| !p.is_empty())
    }
}

/// Runs a batch's sync; touches nothing of the shard, so several can be in flight.
pub async fn sync_batch(mut batch: CommitBatch) -> (CommitBatch, std::io::Result<()>) {
    let Some(plan) = batch.plan.take() else {
        return (batch, Ok(()));
    };
    if plan.is_empty() {
        batch.plan = Some(plan);
        return (batch, Ok(()));
    }
    let (plan, result) = sync_on_ring(plan).await;
    batch.sync_end = now_ns();
    batch.plan = Some(plan);
    (batch, result)
}

/// (segment base, the segment's fd, the ring's handle on a dup of it).
type RingFile = (
    u64,
    std::os::fd::RawFd,
    std::rc::Rc<glommio::io::BufferedFile>,
);

thread_local! {
    /// The cursor record [`Shard::append_cursor`] fills and logs, kept with its strings'
    /// capacity from ack to ack (a shard is one thread).
    static CURSOR: std::cell::Cell<CursorRecord> = const {
        std::cell::Cell::new(CursorRecord {
            user: String::new(),
            device: String::new(),
            acked: 0,
            at_ms: 0,
        })
    };

    /// The ring's handles on this shard's segment files, by (segment base, fd): a dup of the
    /// segment's fd each (closing the handle must not close the segment's own), so the fd
    /// number of a deleted segment reused by a new one can never match a stale handle.
    static RING_FILES: std::cell::RefCell<Vec<RingFile>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Handles kept: the active segment and the one before it are all a plan ever covers.
const RING_FILES_KEPT: usize = 4;

/// Connections to write at the end of a commit from which the commit's envelopes for peers are
/// handed over before the writes ([`super::transport::Mesh::hand_over`]): ~0.5 ms of loopback
/// `send(2)`s here (`scripts/send_floor.py`).
const HAND_OVER_BEFORE_FLUSHING: usize = 64;

fn ring_file(
    base: u64,
    fd: std::os::fd::RawFd,
) -> std::io::Result<std::rc::Rc<glommio::io::BufferedFile>> {
    use std::os::fd::FromRawFd;
    RING_FILES.with(|files| {
        let mut files = files.borrow_mut();
        if let Some((_, _, f)) = files.iter().find(|(b, d, _)| *b == base && *d == fd) {
            return Ok(f.clone());
        }
        // SAFETY: dup of an fd the log keeps open while this shard runs a plan on it.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `dup` is ours alone; the BufferedFile owns and closes it.
        let file = std::rc::Rc::new(unsafe { glommio::io::BufferedFile::from_raw_fd(dup) });
        if files.len() >= RING_FILES_KEPT {
            files.remove(0);
        }
        files.push((base, fd, file.clone()));
        Ok(file)
    })
}

/// Runs `plan` without blocking the shard: an fdatasync of each segment with new records on
/// the shard's own io_uring ([`crate::log::SyncPlan::fds`]), rather than an msync on glommio's
/// blocking pool (one thread hop there and one back per sync; with pipelined commits, two
/// msyncs queued on its one thread: BENCHMARKS.md, "The durable latency floor"). The hold
/// fault (tests), which blocks, waits on the blocking pool first.
async fn sync_on_ring(plan: crate::log::SyncPlan) -> (crate::log::SyncPlan, std::io::Result<()>) {
    let plan = match plan.may_hold() {
        true => {
            glommio::executor()
                .spawn_blocking(move || {
                    plan.hold();
                    plan
                })
                .await
        }
        false => plan,
    };
    let result = async {
        let fds = plan.fds()?;
        // Plans begin in segment order, so no later one covers a segment below this one's
        // lowest: drop the handles on those, or a segment retention deleted would keep its
        // disk space for as long as the ring held a dup of its fd.
        if let Some(lowest) = fds.clone().map(|(base, _)| base).min() {
            RING_FILES.with(|files| files.borrow_mut().retain(|(b, _, _)| *b >= lowest));
        }
        for (base, fd) in fds {
            ring_file(base, fd)?
                .fdatasync()
                .await
                .map_err(std::io::Error::from)?;
        }
        plan.completed();
        Ok(())
    }
    .await;
    (plan, result)
}

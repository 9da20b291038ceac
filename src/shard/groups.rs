//! Groups on the message path: a member's shard forwards group operations and sends to the
//! group's owner shard; the owner orders them (`group_seq`), stores each entry once, answers
//! after the commit, and fans committed entries out — one envelope per destination shard per
//! commit, the body shared — to the shards that serve members, where each entry is stored once
//! and enters every local member's stream. The state and its rules are in
//! [`super::group_state`].
//!
//! ```text
//!  member's shard            owner shard (group_owner(g))              other shards with members
//!  on_group_send ──GroupSend──▶ group_send: member? dedup, seq,
//!                               append GroupRecord, local members' seqs
//!                               commit ─┬─▶ SendAck ──▶ sender
//!                                       └─▶ Fanout(entries) ──────────▶ on_fanout: append copy,
//!                                                                        local members' seqs,
//!                               on_applied ◀─────── Applied ◀─────────── commit
//! ```
//!
//! Exactly once across crashes: a destination applies an entry only if its `group_seq` is
//! above what it applied (rebuilt from its own log), and acks after its commit; the owner keeps
//! every committed entry some destination has not acked (rebuilt from its log and its
//! `FanoutRecord`s) and re-drives those at start ([`Shard::redrive_fanout`]).
//!
//! `max_groups_per_user` is checked on each new member's own shard: before an operation that
//! adds members, the owner asks those shards to reserve a place (`Reserve`), and commits only
//! if none refused; the places are released once the operation is over.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use super::conn::Conn;
use super::envelope::{Envelope, GroupAnswer, GroupEntry, GroupOpRequest, GroupRequest, GroupSend};
use super::group_state::{EntryRef, OwnedGroup};
use super::inbox::{AckTarget, GroupEntryBytes, PendingAck, ReplyTarget, SenderCopy};
use super::read_buf::ReadSource;
use super::recovery::{insert_sorted, remove_sorted};
use super::routing::{group_owner, owner};
use super::state::Shard;
use crate::log::record::{GroupMessageRef, GroupRecord, Record};
use crate::protocol::{self, Code, EntryKind, GroupOp, GroupReply, Members, Names, ServerMsg};

/// Members per GroupInfo page when the request says 0, and at most.
pub const INFO_PAGE: u32 = 1000;
/// A reservation whose operation never ended (its owner crashed) is dropped after this long.
pub const RESERVATION_TTL_MS: u64 = 60_000;

/// An operation on a group waiting for member shards to reserve places.
pub struct PendingOp {
    req: GroupRequest,
    target: ReplyTarget,
    /// The users the operation adds.
    users: Vec<Arc<str>>,
    waiting: usize,
    refused: Vec<(Arc<str>, Code)>,
    reserved_on: Vec<usize>,
}

/// The owner's operations in progress: one per group at a time, later ones queue behind it.
#[derive(Default)]
pub struct OwnerOps {
    next_id: u64,
    running: HashMap<u64, PendingOp>,
    /// Group → queued operations (present while one of its operations runs).
    queued: HashMap<Arc<str>, VecDeque<(GroupRequest, ReplyTarget)>>,
}

/// Places held on a user's shard for an owner's operation.
pub struct Reservation {
    users: Vec<Arc<str>>,
    at_ms: u64,
}

/// What an operation changes: the entry kind and the users it names.
type Change = (EntryKind, Vec<Arc<str>>);

/// Is `id` a valid user or group ID (1..=128 bytes)?
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= protocol::MAX_USER_ID
}

impl Shard {
    // ---- the member's shard: frames from connections ---------------------------------------

    /// A group operation from a connection: validated here, done by the group's owner.
    pub(super) fn on_group_frame(
        &self,
        conn: &Rc<Conn>,
        request_id: u64,
        group_id: &str,
        op: GroupOp<'_>,
    ) {
        let refuse = |code: Code, message: &str| {
            conn.push(&ServerMsg::GroupReply(GroupReply::status(
                request_id, group_id, code, message,
            )));
        };
        if !valid_id(group_id) {
            return refuse(Code::INVALID_GROUP, "group IDs are 1..=128 bytes of UTF-8");
        }
        let owned = |names: Names<'_>| -> Option<Vec<Arc<str>>> {
            let mut v: Vec<Arc<str>> = Vec::with_capacity(names.len());
            for n in names.iter() {
                if !valid_id(n) {
                    return None;
                }
                v.push(Arc::from(n));
            }
            v.sort_unstable();
            v.dedup();
            Some(v)
        };
        let op = match op {
            GroupOp::Create { members } => {
                owned(members).map(|m| GroupOpRequest::Create { members: m })
            }
            GroupOp::Add { members } => owned(members).map(|m| GroupOpRequest::Add { members: m }),
            GroupOp::Remove { members } => {
                owned(members).map(|m| GroupOpRequest::Remove { members: m })
            }
            GroupOp::Leave => Some(GroupOpRequest::Leave),
            GroupOp::Info { after, limit } => Some(GroupOpRequest::Info {
                after: after.into(),
                limit,
            }),
        };
        let Some(op) = op else {
            return refuse(Code::INVALID_GROUP, "member IDs are 1..=128 bytes of UTF-8");
        };
        let req = GroupRequest {
            user: conn.user.clone(),
            privileged: false,
            origin_conn: conn.id,
            request_id,
            group: Arc::from(group_id),
            op,
        };
        let dest = group_owner(group_id, self.shards);
        if dest == self.id {
            self.group_request(req, ReplyTarget::Local);
        } else {
            self.in_flight.set(self.in_flight.get() + 1);
            self.mesh.push(dest, Envelope::GroupRequest(req));
        }
    }

    /// GroupList: answered here, from the user's own state.
    pub(super) fn on_group_list(&self, conn: &Rc<Conn>, request_id: u64) {
        let users = self.users.borrow();
        let groups: Vec<&str> = users
            .get(&conn.user)
            .map(|u| u.groups.iter().map(|g| &**g).collect())
            .unwrap_or_default();
        conn.push(&ServerMsg::GroupReply(GroupReply {
            groups: Names::Slice(&groups),
            ..GroupReply::status(request_id, "", Code::OK, "")
        }));
    }

    /// A group message from a connection, for the group's owner.
    pub(super) fn on_group_send(
        &self,
        conn: &Rc<Conn>,
        client_msg_id: u64,
        group_id: &str,
        body: &[u8],
        src: ReadSource<'_>,
    ) {
        if !valid_id(group_id) {
            conn.push(&ServerMsg::SendAck {
                client_msg_id,
                status: Code::INVALID_GROUP,
                own_seq: 0,
            });
            return;
        }
        let dest = group_owner(group_id, self.shards);
        let body = src.keep(body); // a slice of the read where it can be (see read_buf)
        if dest == self.id {
            let target = AckTarget::Local { conn: conn.id };
            self.group_send(&conn.user, group_id, client_msg_id, body, target, false);
        } else {
            self.in_flight.set(self.in_flight.get() + 1);
            self.mesh.push(
                dest,
                Envelope::GroupSend(GroupSend {
                    from: conn.user.clone(),
                    group: Arc::from(group_id),
                    client_msg_id,
                    body,
                    origin_conn: conn.id,
                }),
            );
        }
    }

    /// The owner's answer reaches the requesting connection.
    pub(super) fn deliver_group_answer(&self, a: GroupAnswer) {
        let Some(conn) = self.conns.borrow().get(&a.origin_conn).cloned() else {
            return;
        };
        let members: Vec<(&str, bool)> = a.members.iter().map(|(u, ad)| (&**u, *ad)).collect();
        conn.push(&ServerMsg::GroupReply(GroupReply {
            request_id: a.request_id,
            status: a.status,
            group_id: &a.group,
            group_seq: a.group_seq,
            groups: Names::EMPTY,
            members: Members::Slice(&members),
            next_after: &a.next_after,
            member_count: a.member_count,
            message: &a.message,
        }));
        self.mark_dirty(&conn);
    }

    pub(super) fn answer_group(&self, target: ReplyTarget, answer: GroupAnswer) {
        match target {
            ReplyTarget::Local => self.deliver_group_answer(answer),
            ReplyTarget::Remote { peer } => self.mesh.push(peer, Envelope::GroupAnswer(answer)),
            ReplyTarget::Admin { request } => self.answer_group_admin(request, answer),
        }
    }

    // ---- the owner: operations --------------------------------------------------------------

    /// An operation on a group this shard owns.
    pub(super) fn group_request(&self, req: GroupRequest, target: ReplyTarget) {
        if let Some(queue) = self.ops.borrow_mut().queued.get_mut(&req.group) {
            queue.push_back((req, target));
            return;
        }
        self.run_group_op(req, target);
    }

    fn answer_now(&self, req: &GroupRequest, target: ReplyTarget, status: Code, message: &str) {
        self.answer_group(
            target,
            GroupAnswer {
                origin_conn: req.origin_conn,
                request_id: req.request_id,
                status,
                message: message.into(),
                group: req.group.clone(),
                ..GroupAnswer::default()
            },
        );
    }

    fn run_group_op(&self, req: GroupRequest, target: ReplyTarget) {
        let limits = &self.cfg.limits;
        let group_full = || {
            (
                Code::GROUP_FULL,
                format!(
                    "a group has at most {} members (max_group_members)",
                    limits.max_group_members
                ),
            )
        };
        let groups = self.groups.borrow();
        let group = groups.owned.get(&req.group);
        let user = &req.user;
        let privileged = req.privileged;
        let check = |needs_admin: bool| -> Result<&OwnedGroup, (Code, &'static str)> {
            let g = group.ok_or((Code::GROUP_NOT_FOUND, "no such group"))?;
            if privileged {
                return Ok(g);
            }
            if !g.is_member(user) {
                return Err((Code::NOT_A_MEMBER, "you are not a member of this group"));
            }
            if needs_admin && !g.is_admin(user) {
                return Err((Code::NOT_GROUP_ADMIN, "only the group's admins may do this"));
            }
            Ok(g)
        };
        let outcome: Result<Change, (Code, String)> = match &req.op {
            GroupOpRequest::Info { after, limit } => {
                let answer = match check(false) {
                    Ok(g) => info_page(g, &req, after, *limit),
                    Err((code, message)) => GroupAnswer {
                        origin_conn: req.origin_conn,
                        request_id: req.request_id,
                        status: code,
                        message: message.into(),
                        group: req.group.clone(),
                        ..GroupAnswer::default()
                    },
                };
                drop(groups);
                return self.answer_group(target, answer);
            }
            GroupOpRequest::Create { members } => {
                if group.is_some() {
                    Err((
                        Code::GROUP_EXISTS,
                        "a group with this ID already exists".into(),
                    ))
                } else {
                    let mut all = vec![user.clone()];
                    all.extend(members.iter().filter(|m| *m != user).cloned());
                    if all.len() > limits.max_group_members {
                        Err(group_full())
                    } else {
                        Ok((EntryKind::GroupCreated, all))
                    }
                }
            }
            GroupOpRequest::Add { members } => match check(true) {
                Err((c, m)) => Err((c, m.into())),
                Ok(g) => {
                    let new: Vec<Arc<str>> = members
                        .iter()
                        .filter(|m| !g.is_member(m))
                        .cloned()
                        .collect();
                    if new.is_empty() {
                        Err((
                            Code::ALREADY_A_MEMBER,
                            "every user named is already a member".into(),
                        ))
                    } else if g.members.len() + new.len() > limits.max_group_members {
                        Err(group_full())
                    } else {
                        Ok((EntryKind::MembersAdded, new))
                    }
                }
            },
            GroupOpRequest::Remove { members } => match check(true) {
                Err((c, m)) => Err((c, m.into())),
                Ok(g) => {
                    let gone: Vec<Arc<str>> =
                        members.iter().filter(|m| g.is_member(m)).cloned().collect();
                    if gone.is_empty() {
                        Err((
                            Code::NOT_A_MEMBER,
                            "none of the users named is a member".into(),
                        ))
                    } else {
                        Ok((EntryKind::MembersRemoved, gone))
                    }
                }
            },
            GroupOpRequest::Leave => match check(false) {
                Err((c, m)) => Err((c, m.into())),
                Ok(_) => Ok((EntryKind::MemberLeft, vec![user.clone()])),
            },
        };
        drop(groups);
        match outcome {
            Err((code, message)) => self.answer_now(&req, target, code, &message),
            Ok((EntryKind::GroupCreated | EntryKind::MembersAdded, users)) => {
                self.reserve_then_commit(req, target, users)
            }
            Ok((kind, users)) => self.commit_group_op(req, target, kind, users, 0, Vec::new()),
        }
    }

    /// Asks every new member's shard to hold a place for the group; the operation continues in
    /// [`Shard::on_reserved`] once all have answered.
    fn reserve_then_commit(&self, req: GroupRequest, target: ReplyTarget, users: Vec<Arc<str>>) {
        let mut by_shard: BTreeMap<usize, Vec<Arc<str>>> = BTreeMap::new();
        for u in &users {
            by_shard
                .entry(owner(u, self.shards))
                .or_default()
                .push(u.clone());
        }
        let group = req.group.clone();
        let id = {
            let mut ops = self.ops.borrow_mut();
            ops.next_id += 1;
            let id = ops.next_id;
            ops.queued.entry(group.clone()).or_default();
            ops.running.insert(
                id,
                PendingOp {
                    req,
                    target,
                    users,
                    waiting: by_shard.len(),
                    refused: Vec::new(),
                    reserved_on: by_shard.keys().copied().collect(),
                },
            );
            id
        };
        for (shard, users) in by_shard {
            if shard == self.id {
                let refused = self.on_reserve(self.id, id, &users);
                self.on_reserved(id, refused);
            } else {
                self.in_flight.set(self.in_flight.get() + 1);
                self.mesh.push(
                    shard,
                    Envelope::Reserve {
                        op: id,
                        group: group.clone(),
                        users,
                    },
                );
            }
        }
    }

    /// A member shard's answer to `Reserve`.
    pub(super) fn on_reserved(&self, op: u64, refused: Vec<(Arc<str>, Code)>) {
        let done = {
            let mut ops = self.ops.borrow_mut();
            let Some(p) = ops.running.get_mut(&op) else {
                return;
            };
            p.refused.extend(refused);
            p.waiting -= 1;
            if p.waiting > 0 {
                return;
            }
            ops.running.remove(&op)
        };
        let Some(p) = done else { return };
        if !p.refused.is_empty() {
            // Unknown users first: that refusal is about who, the other about how many.
            let code = match p.refused.iter().any(|(_, c)| *c == Code::USER_UNKNOWN) {
                true => Code::USER_UNKNOWN,
                false => Code::TOO_MANY_GROUPS,
            };
            let names: Vec<&str> = p
                .refused
                .iter()
                .filter(|(_, c)| *c == code)
                .map(|(u, _)| &**u)
                .collect();
            let message = match code {
                Code::USER_UNKNOWN => format!(
                    "never logged in (limits.recipients = \"known\"): {}",
                    names.join(", ")
                ),
                _ => format!(
                    "already in {} groups (max_groups_per_user): {}",
                    self.cfg.limits.max_groups_per_user,
                    names.join(", ")
                ),
            };
            self.release_reservations(op, &p.reserved_on);
            self.answer_now(&p.req, p.target, code, &message);
            return self.next_group_op(&p.req.group);
        }
        let kind = match p.req.op {
            GroupOpRequest::Create { .. } => EntryKind::GroupCreated,
            _ => EntryKind::MembersAdded,
        };
        // Membership may have changed while the places were reserved: re-check the adds.
        let users = match kind {
            EntryKind::MembersAdded => {
                let groups = self.groups.borrow();
                let g = groups.owned.get(&p.req.group);
                let fresh: Vec<Arc<str>> = p
                    .users
                    .iter()
                    .filter(|u| g.is_some_and(|g| !g.is_member(u)))
                    .cloned()
                    .collect();
                let admin = p.req.privileged || g.is_some_and(|g| g.is_admin(&p.req.user));
                drop(groups);
                if fresh.is_empty() || !admin {
                    self.release_reservations(op, &p.reserved_on);
                    self.answer_now(
                        &p.req,
                        p.target,
                        Code::NOT_GROUP_ADMIN,
                        "the group changed while the users were checked; try again",
                    );
                    return self.next_group_op(&p.req.group);
                }
                fresh
            }
            _ => p.users,
        };
        let group = p.req.group.clone();
        self.commit_group_op(p.req, p.target, kind, users, op, p.reserved_on);
        self.next_group_op(&group);
    }

    /// The running operation of `group` is over: runs the queued ones until one has to wait
    /// for reservations again (it then holds the rest of the queue).
    fn next_group_op(&self, group: &Arc<str>) {
        let Some(mut rest) = self.ops.borrow_mut().queued.remove(group) else {
            return;
        };
        while let Some((req, target)) = rest.pop_front() {
            self.run_group_op(req, target);
            if let Some(q) = self.ops.borrow_mut().queued.get_mut(group) {
                q.extend(rest.drain(..));
                return;
            }
        }
    }

    /// Appends a membership change and answers after its commit.
    fn commit_group_op(
        &self,
        req: GroupRequest,
        target: ReplyTarget,
        kind: EntryKind,
        users: Vec<Arc<str>>,
        op: u64,
        reserved_on: Vec<usize>,
    ) {
        if kind == EntryKind::GroupCreated {
            self.groups
                .borrow_mut()
                .owned
                .insert(req.group.clone(), OwnedGroup::new(self.shards));
        }
        let appended = self.append_owned_entry(&req.group, kind, &req.user, 0, Bytes::new(), users);
        match appended {
            Ok(group_seq) => self.pending.borrow_mut().push(PendingAck::GroupOp {
                answer: GroupAnswer {
                    origin_conn: req.origin_conn,
                    request_id: req.request_id,
                    status: Code::OK,
                    group: req.group.clone(),
                    group_seq,
                    ..GroupAnswer::default()
                },
                target,
                op,
                reserved_on,
            }),
            Err(code) => {
                if kind == EntryKind::GroupCreated {
                    self.groups.borrow_mut().owned.remove(&req.group);
                }
                self.release_reservations(op, &reserved_on);
                self.answer_now(&req, target, code, "the broker could not store the change");
            }
        }
    }

    /// Tells the shards that held places for operation `op` that it is over.
    pub(super) fn release_reservations(&self, op: u64, shards: &[usize]) {
        for &shard in shards {
            if shard == self.id {
                self.on_release(self.id, op);
            } else {
                self.mesh.push(shard, Envelope::Release { op });
            }
        }
    }

    // ---- the owner: messages ----------------------------------------------------------------

    /// A message to a group this shard owns; the group_seq it got when it is new (not a
    /// resend, not refused). `privileged`: the server API, whose sender need not be a member.
    pub(super) fn group_send(
        &self,
        from: &Arc<str>,
        group: &str,
        client_msg_id: u64,
        body: Bytes,
        target: AckTarget,
        privileged: bool,
    ) -> Option<u64> {
        let status = {
            let groups = self.groups.borrow();
            match groups.owned.get(group) {
                None => Some(Code::GROUP_NOT_FOUND),
                Some(g) if !privileged && !g.is_member(from) => Some(Code::NOT_A_MEMBER),
                Some(_) => None,
            }
        };
        if let Some(status) = status {
            self.answer_send(target, from, client_msg_id, status, false);
            return None;
        }
        if !self.admit_new(from, client_msg_id, target) {
            return None;
        }
        let group: Arc<str> = Arc::from(group);
        match self.append_owned_entry(
            &group,
            EntryKind::Message,
            from,
            client_msg_id,
            body,
            Vec::new(),
        ) {
            Ok(group_seq) => {
                self.metrics.group_messages.inc();
                self.pending.borrow_mut().push(PendingAck::Send {
                    sender: from.clone(),
                    client_msg_id,
                    target,
                    stamps: crate::metrics::stages::Stamps::NONE,
                    own: SenderCopy::None,
                });
                Some(group_seq)
            }
            Err(status) => {
                self.settle_send(from, client_msg_id, target, status);
                None
            }
        }
    }

    /// Assigns the next group_seq of a group this shard owns, stores the entry, applies it to
    /// the local members' streams and queues its fan-out for after the commit.
    fn append_owned_entry(
        &self,
        group: &Arc<str>,
        kind: EntryKind,
        from: &Arc<str>,
        client_msg_id: u64,
        body: Bytes,
        members: Vec<Arc<str>>,
    ) -> Result<u64, Code> {
        let group_seq = match self.groups.borrow().owned.get(group) {
            Some(g) => g.seq + 1,
            None => return Err(Code::GROUP_NOT_FOUND),
        };
        let entry = Arc::new(GroupEntry {
            group: group.clone(),
            group_seq,
            kind,
            from: from.clone(),
            client_msg_id,
            sent_at_ms: self.wall_ms(),
            body,
            members,
        });
        let pos = self.store_group_entry(&entry)?;
        let targets = {
            let mut groups = self.groups.borrow_mut();
            let Some(g) = groups.owned.get_mut(group) else {
                return Err(Code::INTERNAL);
            };
            let shards = self.shards;
            let targets = g.apply(&EntryRef::of(&entry), self.id, |u| owner(u, shards));
            if !targets.is_empty() {
                g.unacked.push_back(super::group_state::Unacked {
                    group_seq,
                    pos,
                    shards: targets.clone(),
                    entry: Some(entry.clone()),
                });
            }
            targets
        };
        if !targets.is_empty() {
            self.pending.borrow_mut().push(PendingAck::Fanout {
                group: group.clone(),
                group_seq,
            });
        }
        Ok(group_seq)
    }

    /// Stores a group entry in this shard's log and puts it in the local members' streams (the
    /// owner's own entries and the fan-out copies alike). Returns its position.
    fn store_group_entry(&self, entry: &GroupEntry) -> Result<u64, Code> {
        let shards = self.shards;
        let me = self.id;
        let is_local = |u: &str| owner(u, shards) == me;
        let e = EntryRef::of(entry);
        let (recipients, checkpoint_base) = {
            let groups = self.groups.borrow();
            let plan = groups
                .replicas
                .get(&entry.group)
                .map(|r| r.plan(&e, is_local))
                .unwrap_or_else(|| super::group_state::Replica::default().plan(&e, is_local));
            let base = match groups.owned.get(&entry.group) {
                Some(g) => g.checkpoint_base,
                None => groups
                    .replicas
                    .get(&entry.group)
                    .and_then(|r| r.checkpoint_base),
            };
            (plan.recipients, base)
        };
        // A message (any entry without a member list) is archived from the entry's own
        // strings and body; a membership change with its member list is framed from an
        // owned record.
        let bytes = if entry.members.is_empty() {
            GroupEntryBytes::Message(GroupMessageRef {
                group: &entry.group,
                group_seq: entry.group_seq,
                kind: entry.kind.0,
                from: &entry.from,
                client_msg_id: entry.client_msg_id,
                sent_at_ms: entry.sent_at_ms,
                body: &entry.body,
            })
        } else {
            let record = Record::Group(GroupRecord {
                group: entry.group.to_string(),
                group_seq: entry.group_seq,
                kind: entry.kind.0,
                from: entry.from.to_string(),
                client_msg_id: entry.client_msg_id,
                sent_at_ms: entry.sent_at_ms,
                body: entry.body.to_vec(),
                members: entry.members.iter().map(|m| m.to_string()).collect(),
            });
            GroupEntryBytes::Framed(crate::log::Log::frame(&record).map_err(|e| {
                tracing::error!(shard = self.id, error = %e, "cannot frame a group entry");
                Code::INTERNAL
            })?)
        };
        let now = entry.sent_at_ms;
        let (pos, base) = {
            let groups = self.groups.borrow();
            let checkpoint = || {
                groups
                    .checkpoint(&entry.group, now)
                    .unwrap_or_else(|| empty_checkpoint(&entry.group, now))
            };
            self.append_group_entry(bytes, now, checkpoint_base, checkpoint, &recipients)?
        };
        let applied = {
            let mut groups = self.groups.borrow_mut();
            if let Some(g) = groups.owned.get_mut(&entry.group) {
                g.checkpoint_base = Some(base);
                g.last_pos = pos;
            }
            let replica = groups.replicas.entry(entry.group.clone()).or_default();
            replica.checkpoint_base = Some(base);
            replica.last_pos = pos;
            replica.apply(&e, is_local)
        };
        let mut users = self.users.borrow_mut();
        let mut touched = self.touched.borrow_mut();
        self.metrics
            .group_member_entries
            .add(applied.recipients.len() as u64);
        for name in &applied.recipients {
            let user = users.of_conn(name);
            let seq = user.head_seq + 1;
            user.push_entry(seq, pos);
            user.anchor_base = base;
            touched.push((name.clone(), seq));
        }
        for name in &applied.joined {
            let user = users.of_conn(name);
            insert_sorted(&mut user.groups, &entry.group);
        }
        for name in &applied.left {
            remove_sorted(&mut users.of_conn(name).groups, &entry.group);
        }
        Ok(pos)
    }

    /// After the commit of entry `group_seq` of an owned group: adds it to the fan-out batch of
    /// every shard it must reach.
    pub(super) fn collect_fanout(
        &self,
        group: &str,
        group_seq: u64,
        batches: &mut BTreeMap<usize, Vec<Arc<GroupEntry>>>,
    ) {
        let groups = self.groups.borrow();
        let Some(g) = groups.owned.get(group) else {
            return;
        };
        let Some(u) = g.unacked.iter().find(|u| u.group_seq == group_seq) else {
            return; // every destination acked already (a re-drive overtook it)
        };
        let Some(entry) = &u.entry else { return };
        for &shard in &u.shards {
            batches
                .entry(shard as usize)
                .or_default()
                .push(entry.clone());
        }
    }

    /// A destination shard durably applied these entries.
    pub(super) fn on_applied(&self, from_shard: usize, list: Vec<(Arc<str>, u64)>) {
        let now = self.wall_ms();
        let mut records = Vec::new();
        {
            let mut groups = self.groups.borrow_mut();
            for (group, applied) in list {
                if let Some(g) = groups.owned.get_mut(&group) {
                    if g.ack(from_shard, applied) && from_shard != self.id {
                        records.push(Record::Fanout(crate::log::record::FanoutRecord {
                            group: group.to_string(),
                            shard: from_shard as u32,
                            applied,
                            at_ms: now,
                        }));
                    }
                }
            }
        }
        // Progress records ride along with the next commit: losing the newest ones in a crash
        // only means re-driving entries the destination ignores.
        let mut log = self.log.borrow_mut();
        for r in &records {
            if let Err(e) = log.append(r) {
                tracing::warn!(shard = self.id, error = %e, "cannot log fan-out progress");
            }
        }
    }

    /// At start: sends every committed entry of an owned group that some shard has not
    /// applied yet to those shards again (they ignore what they already have).
    pub fn redrive_fanout(&self) {
        let mut batches: BTreeMap<usize, Vec<Arc<GroupEntry>>> = BTreeMap::new();
        let mut groups = self.groups.borrow_mut();
        let log = self.log.borrow();
        let mut count = 0usize;
        for g in groups.owned.values_mut() {
            for u in g.unacked.iter_mut() {
                if u.entry.is_none() {
                    u.entry = match log.read(u.pos) {
                        Ok(Record::Group(r)) => Some(Arc::new(entry_of(r))),
                        Ok(_) | Err(_) => {
                            tracing::error!(
                                shard = self.id,
                                pos = u.pos,
                                "a group entry to re-drive is not readable"
                            );
                            None
                        }
                    };
                }
                let Some(entry) = &u.entry else { continue };
                count += 1;
                for &shard in &u.shards {
                    batches
                        .entry(shard as usize)
                        .or_default()
                        .push(entry.clone());
                }
            }
        }
        drop(log);
        drop(groups);
        if count > 0 {
            tracing::info!(shard = self.id, entries = count, "re-driving group fan-out");
        }
        for (shard, entries) in batches {
            self.mesh.push(shard, Envelope::Fanout(entries));
        }
        for peer in (0..self.shards).filter(|&p| p != self.id) {
            self.mesh.push(peer, Envelope::Redriven);
        }
    }

    /// Completes once this shard's re-drive is on the peers' queues and every peer's has been
    /// handled here: then every group entry acked before a crash is in its local members'
    /// streams, so a login sees it in its head_seq and replays it (rather than receiving it
    /// live a moment later). The first wait matters: the shard blocks its thread at the
    /// start-up barrier next, and a `Redriven` still in its outbox would never reach a peer
    /// that waits for it here.
    pub async fn redrive_settled(&self) {
        self.mesh.wait_idle().await;
        while self.redriven_peers.get() + 1 < self.shards {
            self.changed.wait().await;
        }
    }

    // ---- destinations -----------------------------------------------------------------------

    /// Committed entries from a group's owner: each one this shard has not applied yet is
    /// stored once and enters the local members' streams; the owner hears after the commit.
    pub(super) fn on_fanout(&self, owner_shard: usize, entries: Vec<Arc<GroupEntry>>) {
        for entry in entries {
            let applied = self
                .groups
                .borrow()
                .replicas
                .get(&entry.group)
                .map_or(0, |r| r.applied);
            if entry.group_seq > applied {
                if let Err(code) = self.store_group_entry(&entry) {
                    // Not acked: the owner re-drives it at its next start.
                    tracing::error!(shard = self.id, group = %entry.group, ?code, "cannot store a group entry");
                    continue;
                }
            }
            self.pending.borrow_mut().push(PendingAck::Applied {
                owner: owner_shard,
                group: entry.group.clone(),
                group_seq: entry.group_seq,
            });
        }
    }

    /// Holds a place in each user's group count for the owner's operation `op`; returns the
    /// users refused: already at `max_groups_per_user`, or (`limits.recipients = "known"`)
    /// never logged in — then no user record is made, so made-up members cost nothing.
    pub(super) fn on_reserve(
        &self,
        owner_shard: usize,
        op: u64,
        users: &[Arc<str>],
    ) -> Vec<(Arc<str>, Code)> {
        let max = self.cfg.limits.max_groups_per_user;
        let mut refused = Vec::new();
        let mut held = Vec::new();
        let mut all = self.users.borrow_mut();
        for name in users {
            if !self.recipient_allowed(&all, name) {
                refused.push((name.clone(), Code::USER_UNKNOWN));
                continue;
            }
            let user = all.of_conn(name);
            if user.group_count() >= max {
                refused.push((name.clone(), Code::TOO_MANY_GROUPS));
            } else {
                user.reserved += 1;
                held.push(name.clone());
            }
        }
        drop(all);
        self.reservations.borrow_mut().insert(
            (owner_shard, op),
            Reservation {
                users: held,
                at_ms: self.mono_ms(),
            },
        );
        refused
    }

    /// The owner's operation `op` is over: its places are released.
    pub(super) fn on_release(&self, owner_shard: usize, op: u64) {
        let Some(r) = self.reservations.borrow_mut().remove(&(owner_shard, op)) else {
            return;
        };
        let mut users = self.users.borrow_mut();
        for name in &r.users {
            if let Some(u) = users.get_mut(name) {
                u.reserved = u.reserved.saturating_sub(1);
            }
        }
    }

    /// Drops reservations whose operation never ended (its owner went away).
    pub fn expire_reservations(&self) {
        let now = self.mono_ms();
        let expired: Vec<(usize, u64)> = self
            .reservations
            .borrow()
            .iter()
            .filter(|(_, r)| now.saturating_sub(r.at_ms) >= RESERVATION_TTL_MS)
            .map(|(k, _)| *k)
            .collect();
        for (owner_shard, op) in expired {
            self.on_release(owner_shard, op);
        }
    }

    /// Work from peers about groups (see [`Shard::handle_envelope`]).
    pub(super) fn handle_group_envelope(&self, from_shard: usize, env: Envelope) {
        match env {
            Envelope::GroupRequest(req) => {
                self.group_request(req, ReplyTarget::Remote { peer: from_shard })
            }
            Envelope::GroupAnswer(a) => {
                self.in_flight.set(self.in_flight.get().saturating_sub(1));
                self.deliver_group_answer(a);
                self.changed.notify_all();
            }
            Envelope::GroupSend(s) => {
                let target = AckTarget::Remote {
                    peer: from_shard,
                    origin_conn: s.origin_conn,
                };
                self.group_send(&s.from, &s.group, s.client_msg_id, s.body, target, false);
            }
            Envelope::Fanout(entries) => self.on_fanout(from_shard, entries),
            Envelope::Applied(list) => self.on_applied(from_shard, list),
            Envelope::Reserve {
                op,
                group: _,
                users,
            } => {
                let refused = self.on_reserve(from_shard, op, &users);
                self.mesh
                    .push(from_shard, Envelope::Reserved { op, refused });
            }
            Envelope::Reserved { op, refused } => {
                self.in_flight.set(self.in_flight.get().saturating_sub(1));
                self.on_reserved(op, refused);
                self.changed.notify_all();
            }
            Envelope::Release { op } => self.on_release(from_shard, op),
            other => tracing::error!(shard = self.id, ?other, "not a group envelope"),
        }
    }
}

/// A page of a group's members after `after`.
fn info_page(g: &OwnedGroup, req: &GroupRequest, after: &str, limit: u32) -> GroupAnswer {
    let limit = match limit {
        0 => INFO_PAGE,
        n => n.min(INFO_PAGE),
    } as usize;
    let range = (Bound::Excluded(after), Bound::Unbounded);
    let start: Box<dyn Iterator<Item = (&Arc<str>, &bool)>> = if after.is_empty() {
        Box::new(g.members.iter())
    } else {
        Box::new(g.members.range::<str, _>(range))
    };
    let mut members: Vec<(Arc<str>, bool)> = Vec::with_capacity(limit.min(g.members.len()));
    let mut more = false;
    for (u, &admin) in start {
        if members.len() == limit {
            more = true;
            break;
        }
        members.push((u.clone(), admin));
    }
    let next_after: Box<str> = match (more, members.last()) {
        (true, Some((u, _))) => (**u).into(),
        _ => "".into(),
    };
    GroupAnswer {
        origin_conn: req.origin_conn,
        request_id: req.request_id,
        status: Code::OK,
        message: "".into(),
        group: req.group.clone(),
        group_seq: g.seq,
        members,
        next_after,
        member_count: g.members.len() as u32,
    }
}

/// A checkpoint for a group this shard knows nothing of yet (its first entry here).
fn empty_checkpoint(group: &str, now_ms: u64) -> Record {
    Record::GroupSnapshot(crate::log::record::GroupSnapshotRecord {
        group: group.to_owned(),
        group_seq: 0,
        owned: false,
        members: Vec::new(),
        fanout: Vec::new(),
        at_ms: now_ms,
    })
}

/// A stored group record as the entry that crosses the mesh.
fn entry_of(r: GroupRecord) -> GroupEntry {
    GroupEntry {
        group: Arc::from(r.group.as_str()),
        group_seq: r.group_seq,
        kind: EntryKind(r.kind),
        from: Arc::from(r.from.as_str()),
        client_msg_id: r.client_msg_id,
        sent_at_ms: r.sent_at_ms,
        body: Bytes::from(r.body),
        members: r.members.iter().map(|m| Arc::from(m.as_str())).collect(),
    }
}

//! Groups as data: what the owner of a group knows, what every shard with members knows, and
//! the one function each of them applies a group entry with — live and during recovery alike,
//! so a restarted shard rebuilds exactly the state (and member seqs) it had.
//!
//! - [`OwnedGroup`] (on the group's owner shard): every member and its role, the head
//!   `group_seq`, and the committed entries some destination shard has not durably applied
//!   yet (what to re-drive after a crash).
//! - [`Replica`] (on every shard with members of the group, the owner included): the members
//!   this shard serves and the last `group_seq` it applied. A group entry's copy in this
//!   shard's log names no member streams; each local member's seq for it is its next seq at the
//!   entry's position in the log, so replaying the log in order re-derives them.
//!
//! Membership rules (deterministic, so recovery agrees with the live path): the creator is the
//! first admin; a removed member receives the removal event and nothing after it; an added
//! member receives the addition event and everything after it; when the last admin leaves or
//! is removed, the remaining member with the smallest user ID becomes admin.
//!
//! Checkpoints: before a group's first entry in each log segment, the shard writes a
//! [`GroupSnapshotRecord`] of its view (members,
//! roles, group_seq, lagging destinations, and each local member's head seq), so every segment
//! can be replayed without the ones before it: retention may delete old segments without
//! breaking the derivation of member seqs in later ones.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use super::envelope::GroupEntry;
use crate::log::record::{GroupSnapshotRecord, Record};
use crate::protocol::EntryKind;

/// Every group this shard owns or serves members of.
#[derive(Debug, Default)]
pub struct GroupsState {
    pub owned: super::FastMap<Arc<str>, OwnedGroup>,
    pub replicas: super::FastMap<Arc<str>, Replica>,
}

impl GroupsState {
    /// The oldest log position a group entry some shard still has to apply sits at.
    pub fn oldest_needed(&self) -> Option<u64> {
        self.owned
            .values()
            .filter_map(OwnedGroup::oldest_needed)
            .min()
    }

    /// This shard's checkpoint of `group`: the owner's full view, or the local members.
    pub fn checkpoint(&self, group: &str, now_ms: u64) -> Option<Record> {
        if let Some(g) = self.owned.get(group) {
            return Some(Record::GroupSnapshot(GroupSnapshotRecord {
                group: group.to_owned(),
                group_seq: g.seq,
                owned: true,
                members: g
                    .members
                    .iter()
                    .map(|(u, &admin)| (u.to_string(), admin))
                    .collect(),
                fanout: g.lagging(),
                at_ms: now_ms,
            }));
        }
        let r = self.replicas.get(group)?;
        Some(Record::GroupSnapshot(GroupSnapshotRecord {
            group: group.to_owned(),
            group_seq: r.applied,
            owned: false,
            members: r.local.iter().map(|u| (u.to_string(), false)).collect(),
            fanout: Vec::new(),
            at_ms: now_ms,
        }))
    }

    /// Checkpoints of every group last stated below `survivor` (retention is about to delete
    /// those records).
    pub fn checkpoints_before(&self, survivor: u64, now_ms: u64) -> Vec<Record> {
        let mut names: Vec<&Arc<str>> = self
            .replicas
            .iter()
            .filter(|(_, r)| r.last_pos < survivor)
            .map(|(name, _)| name)
            .collect();
        names.extend(
            self.owned
                .iter()
                .filter(|(name, g)| g.last_pos < survivor && !self.replicas.contains_key(*name))
                .map(|(name, _)| name),
        );
        names
            .into_iter()
            .filter_map(|name| self.checkpoint(name, now_ms))
            .collect()
    }

    /// The groups last stated below `survivor` were restated at `pos`.
    pub fn restated(&mut self, survivor: u64, pos: u64) {
        for r in self.replicas.values_mut().filter(|r| r.last_pos < survivor) {
            r.last_pos = pos;
        }
        for g in self.owned.values_mut().filter(|g| g.last_pos < survivor) {
            g.last_pos = pos;
        }
    }
}

/// The fields of a group entry that change state (live: a `GroupEntry`; recovery: a record).
pub struct EntryRef<'a> {
    pub group_seq: u64,
    pub kind: EntryKind,
    pub from: &'a str,
    pub members: &'a [Arc<str>],
}

impl<'a> EntryRef<'a> {
    pub fn of(e: &'a GroupEntry) -> EntryRef<'a> {
        EntryRef {
            group_seq: e.group_seq,
            kind: e.kind,
            from: &e.from,
            members: &e.members,
        }
    }
}

/// A committed entry not yet durably applied by every destination shard.
#[derive(Debug)]
pub struct Unacked {
    pub group_seq: u64,
    /// Where the owner's log holds it (to re-drive it after a restart).
    pub pos: u64,
    /// Destination shards that have not applied it yet.
    pub shards: Vec<u16>,
    /// The entry in memory, while the process that committed it runs.
    pub entry: Option<Arc<GroupEntry>>,
}

/// A group on its owner shard.
#[derive(Debug)]
pub struct OwnedGroup {
    /// Head group_seq (the last one assigned).
    pub seq: u64,
    /// Every member → admin, in user-ID order (pages of GroupInfo).
    pub members: BTreeMap<Arc<str>, bool>,
    /// Members per shard (index: shard).
    pub per_shard: Vec<u32>,
    pub unacked: VecDeque<Unacked>,
    /// Per shard: the highest group_seq it is known to have applied.
    pub applied: Vec<u64>,
    /// Segment base of this group's last checkpoint on this shard.
    pub checkpoint_base: Option<u64>,
    /// Position of the newest record about the group here.
    pub last_pos: u64,
}

impl OwnedGroup {
    pub fn new(shards: usize) -> OwnedGroup {
        OwnedGroup {
            seq: 0,
            members: BTreeMap::new(),
            per_shard: vec![0; shards],
            unacked: VecDeque::new(),
            applied: vec![0; shards],
            checkpoint_base: None,
            last_pos: 0,
        }
    }

    pub fn is_member(&self, user: &str) -> bool {
        self.members.contains_key(user)
    }

    pub fn is_admin(&self, user: &str) -> bool {
        self.members.get(user).copied().unwrap_or(false)
    }

    /// Rebuilds from a snapshot: members with roles, head seq, lagging shards.
    pub fn restore(
        shards: usize,
        seq: u64,
        members: impl Iterator<Item = (Arc<str>, bool)>,
        lagging: &[(u32, u64)],
        owner_of: impl Fn(&str) -> usize,
    ) -> OwnedGroup {
        let mut g = OwnedGroup::new(shards);
        g.seq = seq;
        for (user, admin) in members {
            if let Some(c) = g.per_shard.get_mut(owner_of(&user)) {
                *c += 1;
            }
            g.members.insert(user, admin);
        }
        g.applied = vec![seq; shards];
        for &(shard, applied) in lagging {
            if let Some(a) = g.applied.get_mut(shard as usize) {
                *a = applied;
            }
        }
        g
    }

    /// Shards (other than `me`) with members now.
    fn shards_with_members(&self, me: usize) -> impl Iterator<Item = u16> + '_ {
        self.per_shard
            .iter()
            .enumerate()
            .filter(move |&(s, &n)| n > 0 && s != me)
            .map(|(s, _)| s as u16)
    }

    /// Applies an entry (assigned or recovered); returns the shards it must reach: those with
    /// members before or after it.
    pub fn apply(
        &mut self,
        e: &EntryRef<'_>,
        me: usize,
        owner_of: impl Fn(&str) -> usize,
    ) -> Vec<u16> {
        let mut targets: Vec<u16> = self.shards_with_members(me).collect();
        self.seq = self.seq.max(e.group_seq);
        match e.kind {
            EntryKind::GroupCreated => {
                for (i, user) in e.members.iter().enumerate() {
                    self.add(user.clone(), i == 0, &owner_of);
                }
            }
            EntryKind::MembersAdded => {
                for user in e.members {
                    self.add(user.clone(), false, &owner_of);
                }
            }
            EntryKind::MembersRemoved | EntryKind::MemberLeft => {
                for user in e.members {
                    if self.members.remove(user).is_some() {
                        if let Some(c) = self.per_shard.get_mut(owner_of(user)) {
                            *c = c.saturating_sub(1);
                        }
                    }
                }
                self.promote_if_no_admin();
            }
            _ => {}
        }
        targets.extend(self.shards_with_members(me));
        targets.sort_unstable();
        targets.dedup();
        targets
    }

    fn add(&mut self, user: Arc<str>, admin: bool, owner_of: &impl Fn(&str) -> usize) {
        if self.members.contains_key(&user) {
            return;
        }
        if let Some(c) = self.per_shard.get_mut(owner_of(&user)) {
            *c += 1;
        }
        self.members.insert(user, admin);
    }

    fn promote_if_no_admin(&mut self) {
        if self.members.values().any(|&admin| admin) {
            return;
        }
        if let Some((_, admin)) = self.members.iter_mut().next() {
            *admin = true;
        }
    }

    /// `shard` has durably applied everything up to `applied`: those entries no longer wait
    /// for it. Returns whether anything moved.
    pub fn ack(&mut self, shard: usize, applied: u64) -> bool {
        let Some(known) = self.applied.get_mut(shard) else {
            return false;
        };
        if applied <= *known {
            return false;
        }
        *known = applied;
        let s = shard as u16;
        for u in self.unacked.iter_mut() {
            if u.group_seq > applied {
                break;
            }
            u.shards.retain(|&x| x != s);
        }
        while self.unacked.front().is_some_and(|u| u.shards.is_empty()) {
            self.unacked.pop_front();
        }
        true
    }

    /// Shards that have not applied everything yet, with what they have (for a snapshot).
    pub fn lagging(&self) -> Vec<(u32, u64)> {
        self.applied
            .iter()
            .enumerate()
            .filter(|&(_, &a)| a < self.seq)
            .map(|(s, &a)| (s as u32, a))
            .collect()
    }

    /// The oldest log position an unacked entry needs (retention must keep it).
    pub fn oldest_needed(&self) -> Option<u64> {
        self.unacked.front().map(|u| u.pos)
    }
}

/// A group as seen by a shard that serves some of its members.
#[derive(Debug, Default)]
pub struct Replica {
    /// The last group_seq applied here.
    pub applied: u64,
    /// The members this shard serves, in user-ID order.
    pub local: Vec<Arc<str>>,
    /// Segment base of this group's last checkpoint on this shard.
    pub checkpoint_base: Option<u64>,
    /// Position of the newest record about the group here.
    pub last_pos: u64,
}

/// Who an entry changes on this shard.
#[derive(Debug, Default)]
pub struct Applied {
    /// Local members whose streams get the entry, in user-ID order.
    pub recipients: Vec<Arc<str>>,
    /// Local users who joined / left the group with it.
    pub joined: Vec<Arc<str>>,
    pub left: Vec<Arc<str>>,
}

impl Replica {
    pub fn is_member(&self, user: &str) -> bool {
        self.local.binary_search_by(|m| (**m).cmp(user)).is_ok()
    }

    /// What applying `e` would do, without doing it: an addition takes effect before the
    /// stream entry (new members see it), a removal after it (removed members see it, and
    /// nothing later).
    pub fn plan(&self, e: &EntryRef<'_>, is_local: impl Fn(&str) -> bool) -> Applied {
        let mut out = Applied::default();
        match e.kind {
            EntryKind::GroupCreated | EntryKind::MembersAdded => {
                out.joined = e
                    .members
                    .iter()
                    .filter(|u| is_local(u) && !self.is_member(u))
                    .cloned()
                    .collect();
                out.joined.sort_unstable();
                out.joined.dedup();
                out.recipients = merge_sorted(&self.local, &out.joined);
            }
            EntryKind::MembersRemoved | EntryKind::MemberLeft => {
                out.recipients = self.local.clone();
                out.left = e
                    .members
                    .iter()
                    .filter(|u| is_local(u) && self.is_member(u))
                    .cloned()
                    .collect();
                out.left.sort_unstable();
                out.left.dedup();
            }
            _ => out.recipients = self.local.clone(),
        }
        out
    }

    /// Applies `e` (see [`Replica::plan`]); returns what it did.
    pub fn apply(&mut self, e: &EntryRef<'_>, is_local: impl Fn(&str) -> bool) -> Applied {
        let out = self.plan(e, is_local);
        self.applied = self.applied.max(e.group_seq);
        match e.kind {
            EntryKind::GroupCreated | EntryKind::MembersAdded => {
                self.local = out.recipients.clone();
            }
            EntryKind::MembersRemoved | EntryKind::MemberLeft => {
                self.local.retain(|m| out.left.binary_search(m).is_err());
            }
            _ => {}
        }
        out
    }
}

/// The sorted union of two sorted, duplicate-free lists.
fn merge_sorted(a: &[Arc<str>], b: &[Arc<str>]) -> Vec<Arc<str>> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i].clone());
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j].clone());
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i].clone());
                i += 1;
                j += 1;
            }
        }
    }
    out.extend(a[i..].iter().cloned());
    out.extend(b[j..].iter().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<Arc<str>> {
        v.iter().map(|s| Arc::from(*s)).collect()
    }

    fn entry<'a>(
        seq: u64,
        kind: EntryKind,
        from: &'a str,
        members: &'a [Arc<str>],
    ) -> EntryRef<'a> {
        EntryRef {
            group_seq: seq,
            kind,
            from,
            members,
        }
    }

    /// Users "a*" live on shard 0, the rest on shard 1.
    fn shard_of(u: &str) -> usize {
        usize::from(!u.starts_with('a'))
    }

    #[test]
    fn owner_targets_shards_with_members_before_or_after() {
        let mut g = OwnedGroup::new(2);
        let created = names(&["a1", "b1"]);
        let t = g.apply(
            &entry(1, EntryKind::GroupCreated, "a1", &created),
            0,
            shard_of,
        );
        assert_eq!(t, vec![1], "the owner's own shard is not a target");
        assert!(g.is_admin("a1") && !g.is_admin("b1"));
        let removed = names(&["b1"]);
        let t = g.apply(
            &entry(2, EntryKind::MembersRemoved, "a1", &removed),
            0,
            shard_of,
        );
        assert_eq!(
            t,
            vec![1],
            "the removed member's shard hears of the removal"
        );
        let msg: Vec<Arc<str>> = Vec::new();
        let t = g.apply(&entry(3, EntryKind::Message, "a1", &msg), 0, shard_of);
        assert!(t.is_empty(), "no members on shard 1 any more");
        assert_eq!(g.seq, 3);
    }

    #[test]
    fn the_smallest_remaining_member_becomes_admin_when_the_last_admin_leaves() {
        let mut g = OwnedGroup::new(2);
        let created = names(&["z", "b", "c"]);
        g.apply(
            &entry(1, EntryKind::GroupCreated, "z", &created),
            0,
            shard_of,
        );
        let left = names(&["z"]);
        g.apply(&entry(2, EntryKind::MemberLeft, "z", &left), 0, shard_of);
        assert!(g.is_admin("b") && !g.is_admin("c"));
    }

    #[test]
    fn acks_release_entries_once_every_shard_applied_them() {
        let mut g = OwnedGroup::new(3);
        for seq in 1..=3 {
            g.unacked.push_back(Unacked {
                group_seq: seq,
                pos: seq * 100,
                shards: vec![1, 2],
                entry: None,
            });
        }
        g.seq = 3;
        assert!(g.ack(1, 2));
        assert_eq!(g.unacked.len(), 3);
        assert!(g.ack(2, 1));
        assert_eq!(g.unacked.front().map(|u| u.group_seq), Some(2));
        assert!(!g.ack(2, 1), "an old ack changes nothing");
        assert_eq!(g.oldest_needed(), Some(200));
        assert_eq!(g.lagging(), vec![(0, 0), (1, 2), (2, 1)]);
    }

    #[test]
    fn replica_delivers_additions_to_new_members_and_removals_to_removed_ones() {
        let mut r = Replica::default();
        let local = |u: &str| u.starts_with('a');
        let created = names(&["a2", "b1", "a1"]);
        let out = r.apply(&entry(1, EntryKind::GroupCreated, "a2", &created), local);
        assert_eq!(out.recipients, names(&["a1", "a2"]));
        assert_eq!(out.joined, names(&["a1", "a2"]));
        let added = names(&["a3"]);
        let out = r.apply(&entry(2, EntryKind::MembersAdded, "a2", &added), local);
        assert_eq!(out.recipients, names(&["a1", "a2", "a3"]));
        let removed = names(&["a1"]);
        let out = r.apply(&entry(3, EntryKind::MembersRemoved, "a2", &removed), local);
        assert_eq!(
            out.recipients,
            names(&["a1", "a2", "a3"]),
            "a1 sees its removal"
        );
        assert_eq!(out.left, names(&["a1"]));
        let none: Vec<Arc<str>> = Vec::new();
        let out = r.apply(&entry(4, EntryKind::Message, "b1", &none), local);
        assert_eq!(out.recipients, names(&["a2", "a3"]), "and nothing after it");
        assert_eq!(r.applied, 4);
        assert!(r.is_member("a2") && !r.is_member("a1"));
    }
}

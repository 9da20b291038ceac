//! Rebuilding a shard from its log at start: users (heads, indexes, cursors, groups), the
//! groups this shard owns or serves members of, and the dedup windows.
//!
//! Runs before the shard's executor starts (one thread per shard, in parallel), so what it
//! builds is plain `Send` data that the shard then owns. Records are replayed in log order
//! with the same rules the live path used ([`super::group_state`]), so derived member seqs
//! come out as they were assigned.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::cursors::Cursors;
use super::dedup::Windows;
use super::group_state::{EntryRef, GroupsState, OwnedGroup, Unacked};
use super::inbox::AckTarget;
use super::routing::{group_owner, owner};
use super::stream_index::StreamIndex;
use crate::log::record::{GroupRecord, GroupSnapshotRecord, Record};
use crate::log::{Log, LogError, Recovery};
use crate::protocol::EntryKind;

/// What the log says about one user.
#[derive(Debug, Default)]
pub struct RecoveredUser {
    pub head_seq: u64,
    /// Retained stream entries.
    pub index: StreamIndex,
    /// Device → highest seq it acked.
    pub cursors: Cursors,
    /// Groups the user is a member of (this shard serves the user), in ID order.
    pub groups: Vec<Arc<str>>,
    /// Position of the newest record about the user.
    pub last_pos: u64,
}

pub struct Recovered {
    pub log: Log,
    pub users: HashMap<Arc<str>, RecoveredUser>,
    pub groups: GroupsState,
    pub windows: Windows<AckTarget>,
    pub report: Recovery,
}

/// Who this shard is and what the dedup window keeps.
#[derive(Debug, Clone, Copy)]
pub struct RecoveryContext {
    pub shard: usize,
    pub shards: usize,
    pub now_ms: u64,
    pub dedup_window_ms: u64,
    pub dedup_entries: usize,
}

/// The directory of shard `shard` inside `data_dir`.
pub fn shard_dir(data_dir: &Path, shard: usize) -> std::path::PathBuf {
    data_dir.join(format!("shard-{shard:03}"))
}

/// Environment variable naming a file whose existence holds every shard's recovery before it
/// opens its log, until the file is removed: fault injection for tests of what the broker
/// does while a (large) log recovers, such as `/readyz` answering 503. A test controls the
/// window exactly instead of hoping that a big log takes long enough on a given disk.
pub const FAULT_HOLD_RECOVERY_ENV: &str = "RINGPOST_FAULT_HOLD_RECOVERY_FILE";

/// Waits while the [`FAULT_HOLD_RECOVERY_ENV`] file exists (runs on the recovery threads).
fn injected_hold() {
    if let Some(path) = std::env::var_os(FAULT_HOLD_RECOVERY_ENV) {
        let path = std::path::PathBuf::from(path);
        while path.exists() {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// Opens the shard's log and replays it.
pub fn recover(
    dir: &Path,
    segment_size: usize,
    ctx: RecoveryContext,
) -> Result<Recovered, LogError> {
    injected_hold();
    let mut r = Rebuild {
        ctx,
        users: HashMap::new(),
        groups: GroupsState::default(),
        windows: Windows::default(),
    };
    let (log, report) = Log::open(dir, segment_size, |pos, rec| r.visit(pos, rec))?;
    Ok(Recovered {
        log,
        users: r.users,
        groups: r.groups,
        windows: r.windows,
        report,
    })
}

struct Rebuild {
    ctx: RecoveryContext,
    users: HashMap<Arc<str>, RecoveredUser>,
    groups: GroupsState,
    windows: Windows<AckTarget>,
}

impl Rebuild {
    fn user(&mut self, name: &str) -> &mut RecoveredUser {
        let key = match self.users.get_key_value(name) {
            Some((key, _)) => key.clone(),
            None => Arc::from(name),
        };
        self.users.entry(key).or_default()
    }

    fn remember_send(&mut self, sender: &str, client_msg_id: u64, at_ms: u64) {
        let c = self.ctx;
        self.windows.sender(sender).remember(
            client_msg_id,
            at_ms,
            c.now_ms,
            c.dedup_window_ms,
            c.dedup_entries,
        );
    }

    fn visit(&mut self, pos: u64, rec: Record) {
        match rec {
            Record::Message(m) => {
                self.remember_send(&m.from, m.client_msg_id, m.sent_at_ms);
                self.explicit_entry(&m.to, m.seq, pos);
            }
            Record::Outgoing(o) => self.explicit_entry(&o.user, o.seq, pos),
            Record::Cursor(c) => {
                let user = self.user(&c.user);
                user.cursors.raise(&c.device, c.acked);
                user.last_pos = pos;
            }
            Record::Anchor(a) => {
                for (name, head) in &a.heads {
                    let user = self.user(name);
                    user.head_seq = user.head_seq.max(*head);
                    user.last_pos = pos;
                }
                for (name, device, acked) in &a.cursors {
                    let user = self.user(name);
                    user.cursors.raise(device, *acked);
                    user.last_pos = pos;
                }
            }
            Record::Group(g) => self.group_entry(&g, pos),
            Record::GroupSnapshot(s) => self.group_snapshot(&s),
            Record::Fanout(f) => {
                if let Some(g) = self.groups.owned.get_mut(f.group.as_str()) {
                    g.ack(f.shard as usize, f.applied);
                }
            }
        }
    }

    fn explicit_entry(&mut self, name: &str, seq: u64, pos: u64) {
        let user = self.user(name);
        user.head_seq = user.head_seq.max(seq);
        user.index.push(seq, pos);
        user.last_pos = pos;
    }

    fn group_entry(&mut self, g: &GroupRecord, pos: u64) {
        let RecoveryContext { shard, shards, .. } = self.ctx;
        let members: Vec<Arc<str>> = g.members.iter().map(|m| Arc::from(m.as_str())).collect();
        let entry = EntryRef {
            group_seq: g.group_seq,
            kind: EntryKind(g.kind),
            from: &g.from,
            members: &members,
        };
        let name: Arc<str> = Arc::from(g.group.as_str());
        if group_owner(&g.group, shards) == shard {
            let owned = self
                .groups
                .owned
                .entry(name.clone())
                .or_insert_with(|| OwnedGroup::new(shards));
            let targets = owned.apply(&entry, shard, |u| owner(u, shards));
            if !targets.is_empty() {
                owned.unacked.push_back(Unacked {
                    group_seq: g.group_seq,
                    pos,
                    shards: targets,
                    entry: None,
                });
            }
            if entry.kind == EntryKind::Message {
                self.remember_send(&g.from, g.client_msg_id, g.sent_at_ms);
            }
        }
        let replica = self.groups.replicas.entry(name.clone()).or_default();
        let applied = replica.apply(&entry, |u| owner(u, shards) == shard);
        for user in &applied.recipients {
            let u = self.user(user);
            // Saturating: a log is read as it is, and a head restated as u64::MAX (by a
            // damaged or foreign log; no broker gets there) must not panic the start.
            u.head_seq = u.head_seq.saturating_add(1);
            let seq = u.head_seq;
            u.index.push(seq, pos);
            u.last_pos = pos;
        }
        for user in &applied.joined {
            insert_sorted(&mut self.user(user).groups, &name);
        }
        for user in &applied.left {
            remove_sorted(&mut self.user(user).groups, &name);
        }
    }

    fn group_snapshot(&mut self, s: &GroupSnapshotRecord) {
        let RecoveryContext { shard, shards, .. } = self.ctx;
        let name: Arc<str> = Arc::from(s.group.as_str());
        let is_local = |u: &str| owner(u, shards) == shard;
        if s.owned {
            let members = s.members.iter().map(|(u, a)| (Arc::from(u.as_str()), *a));
            let mut restored = OwnedGroup::restore(shards, s.group_seq, members, &s.fanout, |u| {
                owner(u, shards)
            });
            if let Some(old) = self.groups.owned.remove(&name) {
                // Entries before the snapshot that some shard still lacks stay due.
                restored.unacked = old.unacked;
                for (shard, applied) in restored.applied.clone().into_iter().enumerate() {
                    restored.applied[shard] = 0;
                    restored.ack(shard, applied);
                }
            }
            self.groups.owned.insert(name.clone(), restored);
        }
        let local: Vec<Arc<str>> = {
            let mut v: Vec<Arc<str>> = s
                .members
                .iter()
                .filter(|(u, _)| is_local(u))
                .map(|(u, _)| Arc::from(u.as_str()))
                .collect();
            v.sort_unstable();
            // A set, as every replica's `local` is (a damaged snapshot naming a member twice
            // must not give them each later entry twice).
            v.dedup();
            v
        };
        let replica = self.groups.replicas.entry(name.clone()).or_default();
        let before = std::mem::replace(&mut replica.local, local.clone());
        replica.applied = replica.applied.max(s.group_seq);
        for user in before.iter().filter(|u| local.binary_search(u).is_err()) {
            remove_sorted(&mut self.user(user).groups, &name);
        }
        for user in local.iter().filter(|u| before.binary_search(u).is_err()) {
            insert_sorted(&mut self.user(user).groups, &name);
        }
    }
}

pub fn insert_sorted(v: &mut Vec<Arc<str>>, name: &Arc<str>) {
    if let Err(at) = v.binary_search(name) {
        v.insert(at, name.clone());
    }
}

pub fn remove_sorted(v: &mut Vec<Arc<str>>, name: &str) {
    if let Ok(at) = v.binary_search_by(|g| (**g).cmp(name)) {
        v.remove(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::record::{AnchorRecord, MessageRecord, NO_POSITION};

    fn message(to: &str, seq: u64) -> Record {
        Record::Message(MessageRecord {
            to: to.into(),
            seq,
            from: "alice".into(),
            client_msg_id: seq,
            sent_at_ms: 1,
            body: b"x".to_vec(),
            prev: NO_POSITION,
        })
    }

    /// Found by the `log_recovery` fuzz target (inputs in fuzz/artifacts-regressions/): a
    /// record with seq u64::MAX followed by another one for the same user overflowed the
    /// index's contiguity check, and a group entry for a user whose head was restated as
    /// u64::MAX overflowed the head; both panicked the shard's start.
    #[test]
    fn seqs_at_u64_max_do_not_overflow_the_rebuild() {
        let dir =
            std::env::temp_dir().join(format!("ringpost-recovery-max-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let group = Record::Group(GroupRecord {
            group: "g".into(),
            group_seq: 1,
            kind: EntryKind::GroupCreated.0,
            from: "carol".into(),
            client_msg_id: 1,
            sent_at_ms: 1,
            body: Vec::new(),
            members: vec!["carol".into()],
        });
        let anchor = Record::Anchor(AnchorRecord {
            heads: vec![("carol".into(), u64::MAX)],
            cursors: Vec::new(),
            at_ms: 1,
        });
        let mut pos = Vec::new();
        {
            let (mut log, _) = Log::open(&dir, 4096, |_, _| {}).unwrap();
            for rec in [message("bob", u64::MAX), message("bob", 1), anchor, group] {
                pos.push(log.append(&rec).unwrap());
            }
            log.sync().unwrap();
        }
        let ctx = RecoveryContext {
            shard: 0,
            shards: 1,
            now_ms: 0,
            dedup_window_ms: 0,
            dedup_entries: 1,
        };
        let r = recover(&dir, 4096, ctx).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let bob = &r.users["bob"];
        assert_eq!(bob.head_seq, u64::MAX);
        assert_eq!(
            bob.index.iter().collect::<Vec<_>>(),
            vec![(1, pos[1])],
            "a gap restarts the index"
        );
        let carol = &r.users["carol"];
        assert_eq!(carol.head_seq, u64::MAX, "the head saturates");
        assert_eq!(
            carol.index.iter().collect::<Vec<_>>(),
            vec![(u64::MAX, pos[3])]
        );
    }

    /// Found by the `log_recovery` fuzz target: a group snapshot naming a member twice made
    /// the member a local member twice, so each later group entry took two of their seqs.
    #[test]
    fn a_snapshot_naming_a_member_twice_gives_them_each_entry_once() {
        let dir =
            std::env::temp_dir().join(format!("ringpost-recovery-dup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let snapshot = Record::GroupSnapshot(GroupSnapshotRecord {
            group: "g".into(),
            group_seq: 1,
            owned: false,
            members: vec![("dave".into(), false), ("dave".into(), true)],
            fanout: Vec::new(),
            at_ms: 1,
        });
        let entry = Record::Group(GroupRecord {
            group: "g".into(),
            group_seq: 2,
            kind: EntryKind::Message.0,
            from: "erin".into(),
            client_msg_id: 1,
            sent_at_ms: 1,
            body: b"hi".to_vec(),
            members: Vec::new(),
        });
        let at = {
            let (mut log, _) = Log::open(&dir, 4096, |_, _| {}).unwrap();
            log.append(&snapshot).unwrap();
            let at = log.append(&entry).unwrap();
            log.sync().unwrap();
            at
        };
        let ctx = RecoveryContext {
            shard: 0,
            shards: 1,
            now_ms: 0,
            dedup_window_ms: 0,
            dedup_entries: 1,
        };
        let r = recover(&dir, 4096, ctx).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let dave = &r.users["dave"];
        assert_eq!(dave.index.iter().collect::<Vec<_>>(), vec![(1, at)]);
        assert_eq!(dave.head_seq, 1);
        assert_eq!(dave.groups, vec![Arc::<str>::from("g")]);
    }
}

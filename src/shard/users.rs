//! The user index: what the owner shard knows about each of its users.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use super::conn::Conn;
use super::cursors::Cursors;
use super::ratelimit::Bucket;
use super::recovery::RecoveredUser;
use super::stream_index::StreamIndex;

/// `User::anchor_base` before the user was anchored in any segment.
pub const NOT_ANCHORED: u64 = u64::MAX;

/// One user, on the shard that owns it.
pub struct User {
    /// Newest assigned seq (0 = none yet).
    pub head_seq: u64,
    /// Newest seq whose log record is durable (per the fsync policy): what may be delivered.
    pub durable_seq: u64,
    /// Retained stream entries in the log (messages to the user, the user's own sends, group
    /// entries): where each seq's record lies (see [`StreamIndex`]).
    pub index: StreamIndex,
    /// Device → highest seq it acked (durable as cursor records in the log).
    pub cursors: Cursors,
    /// Connected devices.
    pub devices: Vec<Rc<Conn>>,
    /// Groups the user is a member of, in ID order.
    pub groups: Vec<Arc<str>>,
    /// Places held in `groups` for group operations not yet committed (max_groups_per_user).
    pub reserved: u32,
    /// Base of the log segment where the user's head seq was last stated (an explicit-seq
    /// record or an anchor); a group entry in another segment needs an anchor first.
    pub anchor_base: u64,
    /// Position of the newest record about the user (retention restates what would be lost).
    pub last_pos: u64,
    /// The send rate limit, shared by all of the user's devices and kept across reconnects
    /// (16 bytes; see [`super::ratelimit`]).
    pub bucket: Bucket,
}

impl Default for User {
    fn default() -> User {
        User {
            head_seq: 0,
            durable_seq: 0,
            index: StreamIndex::default(),
            cursors: Cursors::default(),
            devices: Vec::new(),
            groups: Vec::new(),
            reserved: 0,
            anchor_base: NOT_ANCHORED,
            last_pos: 0,
            bucket: Bucket::new(),
        }
    }
}

impl User {
    pub fn recovered(r: RecoveredUser) -> User {
        User {
            head_seq: r.head_seq,
            durable_seq: r.head_seq,
            index: r.index,
            cursors: r.cursors,
            groups: r.groups,
            last_pos: r.last_pos,
            ..User::default()
        }
    }

    /// Appends stream entry `seq` at log position `pos` (the caller assigned `seq`, the head
    /// plus one). Only a damaged log recovered with an index that ends below the head makes
    /// that a gap; the index then starts afresh, as if retention had deleted what it held.
    pub fn push_entry(&mut self, seq: u64, pos: u64) {
        self.head_seq = seq;
        self.index.push(seq, pos);
        self.last_pos = pos;
    }

    /// Logged in at least once (a device cursor, written at the first login, survives restarts
    /// and retention), or connected now.
    pub fn is_known(&self) -> bool {
        !self.cursors.is_empty() || !self.devices.is_empty()
    }

    /// Groups held or reserved.
    pub fn group_count(&self) -> usize {
        self.groups.len() + self.reserved as usize
    }

    pub fn oldest_seq(&self) -> u64 {
        self.index.first_seq().unwrap_or(0)
    }

    /// The first seq that can still be replayed.
    pub fn first_retained(&self) -> u64 {
        self.index.first_seq().unwrap_or(self.head_seq + 1)
    }

    /// Log position of the message with `seq`, if retained.
    pub fn position(&self, seq: u64) -> Option<u64> {
        self.index.position(seq)
    }

    /// Position of the newest retained message (the back-pointer of the next one).
    pub fn last_position(&self) -> Option<u64> {
        self.index.last_position()
    }

    /// Messages none of the user's devices has acked yet.
    pub fn unacked(&self) -> u64 {
        let acked = self.cursors.max();
        self.head_seq - acked.max(self.first_retained() - 1).min(self.head_seq)
    }

    /// Forgets index entries for messages below log position `oldest` (deleted by retention).
    pub fn forget_before(&mut self, oldest: u64) {
        self.index.forget_before(oldest);
    }
}

/// Every user the shard owns, by ID.
///
/// Each user is boxed: the map's table is a power of two of slots filled 44–88 %, so an
/// unboxed `User` (160 B) would cost up to twice its size per user in empty slots, and each
/// growth would free a table of them that the allocator keeps (RSS after a login storm); a
/// slot is now the 16-byte name and an 8-byte pointer.
#[derive(Default)]
pub struct Users(super::FastMap<Arc<str>, Box<User>>);

impl Users {
    pub fn recovered(users: HashMap<Arc<str>, RecoveredUser>) -> Users {
        Users(
            users
                .into_iter()
                .map(|(name, r)| (name, Box::new(User::recovered(r))))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&User> {
        self.0.get(name).map(|u| &**u)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut User> {
        self.0.get_mut(name).map(|u| &mut **u)
    }

    /// The user `name` (created empty if the shard has never seen it), with its interned ID.
    pub fn entry(&mut self, name: &str) -> (Arc<str>, &mut User) {
        let key: Arc<str> = match self.0.get_key_value(name) {
            Some((key, _)) => key.clone(),
            None => Arc::from(name),
        };
        let user = &mut **self.0.entry(key.clone()).or_default();
        (key, user)
    }

    /// The user of a connection (whose ID is already interned).
    pub fn of_conn(&mut self, name: &Arc<str>) -> &mut User {
        self.0.entry(name.clone()).or_default()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut User> {
        self.0.values_mut().map(|u| &mut **u)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &User)> {
        self.0.iter().map(|(k, u)| (k, &**u))
    }
}

#[cfg(test)]
mod tests {
    /// Every user the shard knows has one boxed record (part of every idle connection's
    /// cost: BENCHMARKS.md, "Idle connections after a login storm"). mimalloc serves 129..=160
    /// bytes from its 160-byte size class; 8 bytes more and every user takes 192.
    #[test]
    fn a_user_record_fits_160_bytes() {
        let size = std::mem::size_of::<super::User>();
        assert!(size <= 160, "User takes {size} bytes");
    }
}

//! The user index: what the owner shard knows about each of its users.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use super::conn::Conn;
use super::cursors::Cursors;
use super::dedup::Dedup;
use super::recovery::RecoveredUser;

/// One user, on the shard that owns it.
#[derive(Default)]
pub struct User {
    /// Newest assigned seq (0 = none yet).
    pub head_seq: u64,
    /// Newest seq whose log record is durable (per the fsync policy): what may be delivered.
    pub durable_seq: u64,
    /// Retained messages in the log: (seq, position), oldest first, contiguous seqs. Replay
    /// of K messages is K reads at known positions, never a scan of the shard's log.
    pub index: VecDeque<(u64, u64)>,
    /// Device → highest seq it acked (durable as cursor records in the log).
    pub cursors: Cursors,
    /// Connected devices.
    pub devices: Vec<Rc<Conn>>,
    /// The user's own recent sends (idempotency window); allocated at the first send, so a
    /// user who only receives pays 8 bytes for it.
    pub sent: Option<Box<Dedup>>,
}

impl User {
    pub fn recovered(r: RecoveredUser) -> User {
        User {
            head_seq: r.head_seq,
            durable_seq: r.head_seq,
            index: r.index,
            cursors: r.cursors,
            ..User::default()
        }
    }

    pub fn oldest_seq(&self) -> u64 {
        self.index.front().map_or(0, |&(seq, _)| seq)
    }

    /// The first seq that can still be replayed.
    pub fn first_retained(&self) -> u64 {
        self.index
            .front()
            .map_or(self.head_seq + 1, |&(seq, _)| seq)
    }

    /// Log position of the message with `seq`, if retained.
    pub fn position(&self, seq: u64) -> Option<u64> {
        let front = self.index.front()?.0;
        let i = usize::try_from(seq.checked_sub(front)?).ok()?;
        self.index.get(i).map(|&(_, pos)| pos)
    }

    /// Position of the newest retained message (the back-pointer of the next one).
    pub fn last_position(&self) -> Option<u64> {
        self.index.back().map(|&(_, pos)| pos)
    }

    /// Messages none of the user's devices has acked yet.
    pub fn unacked(&self) -> u64 {
        let acked = self.cursors.max();
        self.head_seq - acked.max(self.first_retained() - 1).min(self.head_seq)
    }

    /// Forgets index entries for messages below log position `oldest` (deleted by retention).
    pub fn forget_before(&mut self, oldest: u64) {
        while self.index.front().is_some_and(|&(_, pos)| pos < oldest) {
            self.index.pop_front();
        }
    }
}

/// Every user the shard owns, by ID.
#[derive(Default)]
pub struct Users(HashMap<Arc<str>, User>);

impl Users {
    pub fn recovered(users: HashMap<Arc<str>, RecoveredUser>) -> Users {
        Users(
            users
                .into_iter()
                .map(|(name, r)| (name, User::recovered(r)))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&User> {
        self.0.get(name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut User> {
        self.0.get_mut(name)
    }

    /// The user `name` (created empty if the shard has never seen it), with its interned ID.
    pub fn entry(&mut self, name: &str) -> (Arc<str>, &mut User) {
        let key: Arc<str> = match self.0.get_key_value(name) {
            Some((key, _)) => key.clone(),
            None => Arc::from(name),
        };
        let user = self.0.entry(key.clone()).or_default();
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
        self.0.values_mut()
    }
}

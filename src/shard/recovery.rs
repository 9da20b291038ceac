//! Rebuilding a shard's users from its log at start.
//!
//! Runs before the shard's executor starts (one thread per shard, in parallel), so what it
//! builds is plain `Send` data that the shard then owns.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use super::cursors::Cursors;
use crate::log::record::Record;
use crate::log::{Log, LogError, Recovery};

/// What the log says about one user.
#[derive(Debug, Default)]
pub struct RecoveredUser {
    pub head_seq: u64,
    /// Retained messages, (seq, position), oldest first, contiguous seqs.
    pub index: VecDeque<(u64, u64)>,
    /// Device → highest seq it acked.
    pub cursors: Cursors,
}

pub struct Recovered {
    pub log: Log,
    pub users: HashMap<Arc<str>, RecoveredUser>,
    pub report: Recovery,
}

/// The directory of shard `shard` inside `data_dir`.
pub fn shard_dir(data_dir: &Path, shard: usize) -> std::path::PathBuf {
    data_dir.join(format!("shard-{shard:03}"))
}

/// Opens the shard's log and replays it into per-user state.
pub fn recover(dir: &Path, segment_size: usize) -> Result<Recovered, LogError> {
    let mut users: HashMap<Arc<str>, RecoveredUser> = HashMap::new();
    let (log, report) = Log::open(dir, segment_size, |pos, rec| match rec {
        Record::Message(m) => {
            let user = users.entry(Arc::from(m.to.as_str())).or_default();
            user.head_seq = user.head_seq.max(m.seq);
            user.index.push_back((m.seq, pos));
        }
        Record::Cursor(c) => {
            let user = users.entry(Arc::from(c.user.as_str())).or_default();
            user.cursors.raise(&c.device, c.acked);
        }
    })?;
    Ok(Recovered { log, users, report })
}

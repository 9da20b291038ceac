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

/// Opens the shard's log and replays it into per-user state.
pub fn recover(dir: &Path, segment_size: usize) -> Result<Recovered, LogError> {
    injected_hold();
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

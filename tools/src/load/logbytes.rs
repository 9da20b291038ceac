//! Bytes a broker's logs hold, by record kind: read from `<data_dir>/shard-*/` the way
//! `ringpost-tools inspect` walks a shard (read-only, safe on a live broker), so a scenario can
//! say what each message cost in the log (`fanout --data-dir`).
//!
//! Segments are preallocated, so file sizes say nothing: the used part of a segment is where
//! its framed records end. Read twice (before and after a run), the difference per kind is what
//! the run appended.

use std::collections::BTreeMap;
use std::path::Path;

use ringpost::log::record::{self, Framed};
use ringpost::log::segment;
use serde_json::{json, Value};

/// Framed bytes per record kind, over every shard of a data directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogBytes {
    pub by_kind: BTreeMap<&'static str, u64>,
    pub shards: usize,
}

impl LogBytes {
    pub fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }

    /// What `later` holds beyond `self`.
    pub fn growth(&self, later: &LogBytes) -> LogBytes {
        let mut by_kind = BTreeMap::new();
        for (k, v) in &later.by_kind {
            let before = self.by_kind.get(k).copied().unwrap_or(0);
            by_kind.insert(*k, v.saturating_sub(before));
        }
        LogBytes {
            by_kind,
            shards: later.shards,
        }
    }

    /// `{kind: bytes / n}`, one decimal.
    pub fn per(&self, n: u64) -> Value {
        let n = n.max(1) as f64;
        Value::Object(
            self.by_kind
                .iter()
                .map(|(k, v)| (k.to_string(), json!((*v as f64 / n * 10.0).round() / 10.0)))
                .collect(),
        )
    }
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        record::KIND_MESSAGE => "message",
        record::KIND_CURSOR => "cursor",
        record::KIND_OUTGOING => "outgoing",
        record::KIND_GROUP => "group",
        record::KIND_GROUP_SNAPSHOT => "group_snapshot",
        record::KIND_FANOUT => "fanout",
        record::KIND_ANCHOR => "anchor",
        _ => "other",
    }
}

/// Reads every segment of every `shard-*` directory under `data_dir`.
pub fn measure(data_dir: &Path) -> Result<LogBytes, String> {
    let mut out = LogBytes::default();
    let shards = std::fs::read_dir(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    for shard in shards.filter_map(|e| e.ok()) {
        let is_shard = shard.file_name().to_string_lossy().starts_with("shard-");
        if !is_shard || !shard.path().is_dir() {
            continue;
        }
        out.shards += 1;
        let dir = shard.path();
        let files = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for f in files.filter_map(|e| e.ok()) {
            if segment::parse_name(&f.file_name().to_string_lossy()).is_none() {
                continue;
            }
            let bytes = std::fs::read(f.path()).map_err(|e| format!("{:?}: {e}", f.path()))?;
            let mut off = 0usize;
            // A torn or half-written tail ends the used part, as it does for recovery.
            while let Framed::Record { kind, size, .. } = record::parse(&bytes[off..]) {
                *out.by_kind.entry(kind_name(kind)).or_default() += size as u64;
                off += size;
                if off >= bytes.len() {
                    break;
                }
            }
        }
    }
    Ok(out)
}

//! Replaying the power log onto a data directory: what a power cut would have left.
//!
//! Run it after the broker was killed with SIGKILL (its page cache still holds everything it
//! wrote; this takes away what no completed sync covered):
//! - a file or directory whose name was never made durable (no `dirsynced` of its parent after
//!   its `create`/`mkdir`/`rename`) is removed;
//! - every other file the log names is cut to its last durable size, and every byte past its
//!   last durable length is zeroed (or, with [`Unsynced::KeepSomePages`], each page past it
//!   is zeroed or kept at random: write-back in any order, which is what leaves stale records
//!   behind a torn tail);
//! - files the log never names (written before it started) are left alone.
//!
//! A file deleted after its last directory sync could come back after a real cut; its bytes
//! are gone here, so it is only reported ([`PowerCut::unrestorable`]).
//!
//! Afterwards the power log is emptied: what is on disk now is the new durable baseline.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// What to do with bytes written after the last completed sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsynced {
    /// Zero all of them.
    Drop,
    /// Zero or keep each 4 KiB page of them, chosen by a PRNG seeded with `seed`.
    KeepSomePages { seed: u64 },
}

/// What [`simulate_power_cut`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PowerCut {
    pub files_removed: usize,
    pub dirs_removed: usize,
    /// Files whose unsynced tail was cut (shortened, or pages past the durable end zeroed or
    /// kept).
    pub files_cut: usize,
    /// Unsynced bytes (whole pages that held something) zeroed, and such pages kept.
    pub bytes_zeroed: u64,
    pub pages_kept: u64,
    pub unrestorable: Vec<PathBuf>,
}

#[derive(Debug, Default)]
struct Entry {
    is_dir: bool,
    /// Linked under this name now.
    linked: bool,
    /// Linked under this name as of the parent's last directory sync.
    durable_link: bool,
    durable_len: u64,
    durable_size: u64,
}

const PAGE: u64 = 4096;

/// [`simulate_power_cut_with`] dropping every unsynced byte.
pub fn simulate_power_cut(data_dir: &Path, power_log: &Path) -> std::io::Result<PowerCut> {
    simulate_power_cut_with(data_dir, power_log, Unsynced::Drop)
}

/// Applies the power log at `power_log` to `data_dir` (see the module doc).
pub fn simulate_power_cut_with(
    data_dir: &Path,
    power_log: &Path,
    mode: Unsynced,
) -> std::io::Result<PowerCut> {
    let text = match std::fs::read_to_string(power_log) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let entries = replay(&text)?;
    let mut cut = PowerCut::default();
    let mut rng = match mode {
        Unsynced::Drop => None,
        Unsynced::KeepSomePages { seed } => Some(SplitMix(seed)),
    };
    // Files first (deepest paths last would not matter: a removed directory takes its files).
    // Only ever touch what lies inside the data directory.
    let inside = |rel: &Path| {
        rel.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
            && rel.components().next().is_some()
    };
    for (rel, e) in entries.iter().filter(|(r, e)| !e.is_dir && inside(r)) {
        let path = data_dir.join(rel);
        if !e.linked {
            if e.durable_link {
                cut.unrestorable.push(rel.clone());
            }
            continue;
        }
        if !e.durable_link {
            match std::fs::remove_file(&path) {
                Ok(()) => cut.files_removed += 1,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
            continue;
        }
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        let size = file.metadata()?.len();
        let keep_size = e.durable_size.min(size);
        if keep_size < size {
            file.set_len(keep_size)?;
        }
        let from = e.durable_len.min(keep_size);
        let before = (cut.bytes_zeroed, cut.pages_kept);
        let zeros = vec![0u8; PAGE as usize];
        let mut page = vec![0u8; PAGE as usize];
        let mut at = from;
        while at < keep_size {
            let end = ((at / PAGE + 1) * PAGE).min(keep_size);
            let chunk = &mut page[..(end - at) as usize];
            file.read_exact_at(chunk, at)?;
            // Only pages that hold something count (and are rewritten): the preallocated,
            // never-written rest of a segment stays a hole.
            if chunk.iter().any(|&b| b != 0) {
                if rng.as_mut().is_some_and(|r| r.next() & 1 == 1) {
                    cut.pages_kept += 1;
                } else {
                    file.write_all_at(&zeros[..chunk.len()], at)?;
                    cut.bytes_zeroed += end - at;
                }
            }
            at = end;
        }
        if (cut.bytes_zeroed, cut.pages_kept) != before || keep_size < size {
            cut.files_cut += 1;
        }
    }
    for (rel, e) in entries.iter().filter(|(r, e)| e.is_dir && inside(r)) {
        if e.linked && !e.durable_link {
            match std::fs::remove_dir_all(data_dir.join(rel)) {
                Ok(()) => cut.dirs_removed += 1,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
    }
    if !text.is_empty() {
        OpenOptions::new().write(true).open(power_log)?.set_len(0)?;
    }
    Ok(cut)
}

/// The state of every path the log names, after all its events.
fn replay(text: &str) -> std::io::Result<BTreeMap<PathBuf, Entry>> {
    let bad = |line: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("power log line {line:?} does not parse"),
        )
    };
    let mut entries: BTreeMap<PathBuf, Entry> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields.as_slice() {
            ["mkdir", p] => {
                let e = entries.entry(PathBuf::from(p)).or_default();
                e.is_dir = true;
                e.linked = true;
            }
            ["create", p] => {
                let e = entries.entry(PathBuf::from(p)).or_default();
                e.linked = true;
                e.durable_len = 0;
                e.durable_size = 0;
            }
            ["remove", p] => {
                if let Some(e) = entries.get_mut(Path::new(p)) {
                    e.linked = false;
                }
            }
            ["rename", from, to] => {
                let (len, size) = match entries.get_mut(Path::new(from)) {
                    Some(e) => {
                        e.linked = false;
                        (e.durable_len, e.durable_size)
                    }
                    None => (0, 0),
                };
                let e = entries.entry(PathBuf::from(to)).or_default();
                e.linked = true;
                e.durable_len = len;
                e.durable_size = size;
            }
            ["synced", p, len, size] => {
                let len: u64 = len.parse().map_err(|_| bad(line))?;
                let size: u64 = size.parse().map_err(|_| bad(line))?;
                // A file synced before the log began (recovered at start) counts as linked.
                let e = entries.entry(PathBuf::from(p)).or_insert_with(|| Entry {
                    linked: true,
                    durable_link: true,
                    ..Entry::default()
                });
                e.durable_len = e.durable_len.max(len);
                e.durable_size = size;
            }
            ["dirsynced", d] => {
                let dir = Path::new(d);
                for (path, e) in entries.iter_mut() {
                    let parent = match path.parent() {
                        Some(p) if !p.as_os_str().is_empty() => p,
                        _ => Path::new("."),
                    };
                    if parent == dir {
                        e.durable_link = e.linked;
                    }
                }
            }
            _ => return Err(bad(line)),
        }
    }
    Ok(entries)
}

/// A tiny seeded PRNG (splitmix64), so a test's page choices are reproducible.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

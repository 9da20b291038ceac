//! `<data_dir>/ringpost.meta`: what the stored data depends on.
//!
//! Users are placed on shards by `owner(user) = stable_hash(user) % shards`, so a data
//! directory written by N shards can only be served by N shards with the same hash. The meta
//! file records both; a start with another shard count is refused with the fix spelled out.
//!
//! It is written once, atomically ([`durable::write_atomically`]: `ringpost.meta.tmp`, fsync,
//! rename, fsync of the directory), before any shard directory exists, so a power cut leaves
//! either no meta file and no shard data, or a complete meta file. A leftover temp file is
//! only ever an unfinished write and is deleted at start.
//!
//! Releases before the atomic write wrote the file in place, and a power cut could leave it
//! empty (seen with LazyFS). The rule for a missing or empty meta file: with no shard data in
//! the directory (no segment holding a record) it is written afresh; with shard data it is
//! refused, because guessing the shard count would strand users on the wrong shard — the
//! message names the fix.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::fault::{self, Faults};
use super::{durable, record, segment};
use crate::shard::HASH_VERSION;

pub const META_FILE: &str = "ringpost.meta";
pub const META_TEMP: &str = "ringpost.meta.tmp";

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a ringpost meta file ({why}); move it away if the directory is not ringpost's")]
    Unreadable { path: PathBuf, why: String },
    #[error("{path} is {state}, but {dir} holds shard data ({dirs} shard directories with records; the last write of an older release was probably cut by a crash). Fix: if you know the shard count that wrote this data (with every shard having received messages, it is {dirs}), write {path} with the two lines `shards = <count>` and `hash_version = {HASH_VERSION}`; otherwise start with an empty data_dir")]
    MissingWithData {
        path: PathBuf,
        dir: PathBuf,
        state: &'static str,
        dirs: usize,
    },
    #[error("data directory {dir} was written by {found} shards, but this configuration runs {configured}. Users are placed by owner(user) = hash % shards, so their data would be stranded. Fix: set [server] shards = {found} (and cpus to match), or start with an empty data_dir; resharding an existing directory is not supported yet")]
    ShardCount {
        dir: PathBuf,
        found: usize,
        configured: usize,
    },
    #[error("data directory {dir} was written with owner-hash version {found}; this build uses {HASH_VERSION}. Start the release that wrote it, or an empty data_dir")]
    HashVersion { dir: PathBuf, found: u32 },
}

/// Creates `data_dir` and its meta file, or checks an existing one against `shards`.
pub fn check_or_create(data_dir: &Path, shards: usize) -> Result<(), MetaError> {
    check_or_create_with(data_dir, shards, &fault::active())
}

pub fn check_or_create_with(
    data_dir: &Path,
    shards: usize,
    faults: &Faults,
) -> Result<(), MetaError> {
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| MetaError::Io { what, path, source }
    };
    durable::create_dir(data_dir, faults).map_err(io("create", data_dir))?;
    let temp = data_dir.join(META_TEMP);
    match std::fs::remove_file(&temp) {
        Ok(()) => faults.record(fault::Event::Remove(&temp)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("remove", &temp)(e)),
    }
    let path = data_dir.join(META_FILE);
    let state = match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().is_empty() => "empty",
        Ok(text) => return check(data_dir, &path, &text, shards),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "missing",
        Err(e) => return Err(io("read", &path)(e)),
    };
    let dirs = shard_dirs_with_data(data_dir).map_err(io("list", data_dir))?;
    if dirs > 0 {
        return Err(MetaError::MissingWithData {
            path,
            dir: data_dir.to_path_buf(),
            state,
            dirs,
        });
    }
    let text = format!(
        "# written by ringpost; do not edit\nshards = {shards}\nhash_version = {HASH_VERSION}\n"
    );
    durable::write_atomically(data_dir, META_FILE, META_TEMP, text.as_bytes(), faults)
        .map_err(io("write", &path))
}

fn check(data_dir: &Path, path: &Path, text: &str, shards: usize) -> Result<(), MetaError> {
    let (found_shards, found_hash) = parse(text).ok_or_else(|| MetaError::Unreadable {
        path: path.to_path_buf(),
        why: "expected `shards = N` and `hash_version = N`".into(),
    })?;
    if found_hash != HASH_VERSION {
        return Err(MetaError::HashVersion {
            dir: data_dir.to_path_buf(),
            found: found_hash,
        });
    }
    if found_shards != shards {
        return Err(MetaError::ShardCount {
            dir: data_dir.to_path_buf(),
            found: found_shards,
            configured: shards,
        });
    }
    Ok(())
}

/// How many `shard-*` directories hold a segment whose first record header is not zero.
fn shard_dirs_with_data(data_dir: &Path) -> std::io::Result<usize> {
    let mut count = 0;
    for entry in std::fs::read_dir(data_dir)?.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("shard-") || !entry.path().is_dir() {
            continue;
        }
        let has_data = std::fs::read_dir(entry.path())?
            .filter_map(|e| e.ok())
            .filter(|e| segment::parse_name(&e.file_name().to_string_lossy()).is_some())
            .any(|e| first_header_is_set(&e.path()));
        count += usize::from(has_data);
    }
    Ok(count)
}

fn first_header_is_set(path: &Path) -> bool {
    let mut header = [0u8; record::HEADER_LEN];
    let mut n = 0;
    if let Ok(mut f) = std::fs::File::open(path) {
        n = f.read(&mut header).unwrap_or(0);
    }
    header[..n].iter().any(|&b| b != 0)
}

fn parse(text: &str) -> Option<(usize, u32)> {
    let mut shards = None;
    let mut hash = None;
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        let (key, value) = line.split_once('=')?;
        match key.trim() {
            "shards" => shards = value.trim().parse().ok(),
            "hash_version" => hash = value.trim().parse().ok(),
            _ => {}
        }
    }
    Some((shards?, hash?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_is_written_once_and_checked_after() {
        let dir = std::env::temp_dir().join(format!("ringpost-meta-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        check_or_create(&dir, 4).unwrap();
        check_or_create(&dir, 4).unwrap();
        let e = check_or_create(&dir, 2).unwrap_err().to_string();
        assert!(
            e.contains("written by 4 shards") && e.contains("shards = 4"),
            "{e}"
        );
        std::fs::write(dir.join(META_FILE), "shards = 4\nhash_version = 99\n").unwrap();
        assert!(matches!(
            check_or_create(&dir, 4),
            Err(MetaError::HashVersion { found: 99, .. })
        ));
        std::fs::write(dir.join(META_FILE), "garbage").unwrap();
        assert!(matches!(
            check_or_create(&dir, 4),
            Err(MetaError::Unreadable { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! `<data_dir>/ringpost.meta`: what the stored data depends on.
//!
//! Users are placed on shards by `owner(user) = stable_hash(user) % shards`, so a data
//! directory written by N shards can only be served by N shards with the same hash. The meta
//! file records both; a start with another shard count is refused with the fix spelled out.

use std::path::{Path, PathBuf};

use crate::shard::HASH_VERSION;

pub const META_FILE: &str = "ringpost.meta";

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
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| MetaError::Io { what, path, source }
    };
    std::fs::create_dir_all(data_dir).map_err(io("create", data_dir))?;
    let path = data_dir.join(META_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let (found_shards, found_hash) = parse(&text).ok_or_else(|| MetaError::Unreadable {
                path: path.clone(),
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
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::write(
            &path,
            format!("# written by ringpost; do not edit\nshards = {shards}\nhash_version = {HASH_VERSION}\n"),
        )
        .map_err(io("write", &path)),
        Err(e) => Err(io("read", &path)(e)),
    }
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

//! Opening the data directory before any shard log: create it durably, arm the test-only
//! faults, take the one-broker lock, and check (or write) the meta file — in that order, so
//! nothing reads or writes shard data without the lock.

use std::path::{Path, PathBuf};

use super::lock::{DataDirLock, LockError};
use super::meta::{self, MetaError};
use super::{durable, fault};

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot create data directory {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set up storage fault injection in {path}: {source}")]
    Fault {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Lock(#[from] LockError),
    #[error("{0}")]
    Meta(#[from] MetaError),
}

/// The open data directory; holds the lock for as long as it lives.
#[derive(Debug)]
pub struct DataDir {
    pub path: PathBuf,
    pub lock: DataDirLock,
}

impl DataDir {
    pub fn open(path: &Path, shards: usize) -> Result<DataDir, DataDirError> {
        let create = |source| DataDirError::Create {
            path: path.to_path_buf(),
            source,
        };
        durable::create_dir(path, &fault::Faults::none()).map_err(create)?;
        fault::install(path).map_err(|source| DataDirError::Fault {
            path: path.to_path_buf(),
            source,
        })?;
        let lock = DataDirLock::acquire(path)?;
        meta::check_or_create(path, shards)?;
        Ok(DataDir {
            path: path.to_path_buf(),
            lock,
        })
    }
}

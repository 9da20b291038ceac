//! Directory-level durability: a new, renamed or deleted file is only certain to survive a
//! power cut once the directory holding its name has been fsync'ed (POSIX leaves the name
//! in the directory's own metadata; ext4 and xfs need the fsync too).
//!
//! Every helper here reports what it made durable to the power-cut fault log
//! ([`super::fault`]), and only after the syscall completed.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::fault::{Event, Faults};

/// fsync's the directory `dir` (its entries: names created, renamed or removed in it).
pub fn sync_dir(dir: &Path, faults: &Faults) -> std::io::Result<()> {
    File::open(dir)?.sync_all()?;
    faults.record(Event::DirSynced(dir));
    Ok(())
}

/// Creates `dir` (and missing parents) and makes its name durable in its parent.
pub fn create_dir(dir: &Path, faults: &Faults) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    faults.record(Event::Mkdir(dir));
    sync_dir(parent_of(dir), faults)
}

/// Deletes `path` and makes the deletion durable.
pub fn remove_file(path: &Path, faults: &Faults) -> std::io::Result<()> {
    std::fs::remove_file(path)?;
    faults.record(Event::Remove(path));
    sync_dir(parent_of(path), faults)
}

/// Replaces `dir/name` with `bytes` so that a power cut leaves either the old file or the new
/// one, never a torn one: write `dir/temp`, fsync it, rename it over `name`, fsync `dir`.
pub fn write_atomically(
    dir: &Path,
    name: &str,
    temp: &str,
    bytes: &[u8],
    faults: &Faults,
) -> std::io::Result<()> {
    let tmp = dir.join(temp);
    let target = dir.join(name);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    faults.record(Event::Create(&tmp));
    file.write_all(bytes)?;
    file.sync_all()?;
    faults.record(Event::Synced {
        path: &tmp,
        len: bytes.len() as u64,
        size: bytes.len() as u64,
    });
    drop(file);
    std::fs::rename(&tmp, &target)?;
    faults.record(Event::Renamed {
        from: &tmp,
        to: &target,
    });
    sync_dir(dir, faults)
}

pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

//! One segment: a preallocated file of fixed size, mapped read-write, filled front to back.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use memmap2::MmapMut;

use super::record::{self, Framed};
use super::LogError;

/// Segment files are named by their first position, zero-padded so that names sort by
/// position: `00000000000134217728.seg`.
pub const SEGMENT_SUFFIX: &str = ".seg";
const NAME_DIGITS: usize = 20;

pub fn file_name(base: u64) -> String {
    format!("{base:0NAME_DIGITS$}{SEGMENT_SUFFIX}")
}

/// The base position encoded in a segment file name, if it is one.
pub fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    (digits.len() == NAME_DIGITS && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

pub struct Segment {
    pub base: u64,
    pub path: PathBuf,
    map: MmapMut,
    /// Bytes written (the next record goes here).
    pub len: usize,
    /// `[synced, len)` has not been msync'ed yet.
    synced: usize,
    /// Records in the segment and the newest record time (for retention).
    pub records: u64,
    pub newest_ms: u64,
}

/// What recovering a segment found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    pub records: u64,
    /// Offset and reason of the first invalid record, if the tail was torn.
    pub torn_at: Option<(usize, &'static str)>,
}

impl Segment {
    /// Creates and preallocates a new, empty segment.
    pub fn create(dir: &Path, base: u64, size: usize) -> Result<Segment, LogError> {
        let path = dir.join(file_name(base));
        if injected_no_space() {
            return Err(LogError::io(
                &path,
                "create segment",
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| LogError::io(&path, "create segment", e))?;
        preallocate(&file, size).map_err(|e| LogError::io(&path, "preallocate segment", e))?;
        Self::map(base, path, &file, 0)
    }

    /// Opens an existing segment and finds the end of its valid records; a torn tail is
    /// zeroed so the next append overwrites it. Calls `visit(offset, kind, payload)` for each
    /// valid record.
    pub fn recover(
        base: u64,
        path: PathBuf,
        mut visit: impl FnMut(usize, u8, &[u8]),
    ) -> Result<(Segment, SegmentScan), LogError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| LogError::io(&path, "open segment", e))?;
        let mut seg = Self::map(base, path, &file, 0)?;
        let mut scan = SegmentScan::default();
        let mut off = 0;
        while off < seg.map.len() {
            match record::parse(&seg.map[off..]) {
                Framed::Record {
                    kind,
                    payload,
                    size,
                } => {
                    visit(off, kind, payload);
                    scan.records += 1;
                    off += size;
                }
                Framed::End => break,
                Framed::Bad(why) => {
                    scan.torn_at = Some((off, why));
                    seg.zero_from(off);
                    break;
                }
            }
        }
        seg.len = off;
        seg.synced = off;
        seg.records = scan.records;
        Ok((seg, scan))
    }

    fn map(base: u64, path: PathBuf, file: &File, len: usize) -> Result<Segment, LogError> {
        // SAFETY: the file is ours alone (one shard owns its directory) and is never resized
        // while mapped, so the mapping stays valid for the segment's lifetime.
        let map = unsafe { MmapMut::map_mut(file) }.map_err(|e| LogError::io(&path, "map", e))?;
        Ok(Segment {
            base,
            path,
            map,
            len,
            synced: len,
            records: 0,
            newest_ms: 0,
        })
    }

    pub fn capacity(&self) -> usize {
        self.map.len()
    }

    /// Bytes already synced (`[0, synced_len)`).
    pub fn synced_len(&self) -> usize {
        self.synced
    }

    pub fn remaining(&self) -> usize {
        self.map.len() - self.len
    }

    /// Copies a framed record in; returns its offset. The caller checks `remaining()`.
    pub fn append(&mut self, framed: &[u8], time_ms: u64) -> usize {
        let off = self.len;
        self.map[off..off + framed.len()].copy_from_slice(framed);
        self.len += framed.len();
        self.records += 1;
        self.newest_ms = self.newest_ms.max(time_ms);
        off
    }

    /// The valid record at `off`.
    pub fn frame_at(&self, off: usize) -> Framed<'_> {
        match self.map.get(off..self.len) {
            Some(buf) => record::parse(buf),
            None => Framed::Bad("offset past the written end"),
        }
    }

    /// The page-aligned address range covering `[synced, len)`, for a sync run elsewhere
    /// ([`super::SyncPlan`]); marks it synced. `None` if nothing is pending.
    pub fn take_unsynced(&mut self) -> Option<(usize, usize, usize)> {
        if self.synced >= self.len {
            return None;
        }
        let page = page_size();
        let start = self.synced / page * page;
        let base = self.map.as_ptr() as usize;
        let range = (base + start, self.len - start, self.synced);
        self.synced = self.len;
        Some(range)
    }

    /// Undoes [`Segment::take_unsynced`] after the sync failed.
    pub fn restore_unsynced(&mut self, synced: usize) {
        self.synced = self.synced.min(synced);
    }

    /// msync's what was appended since the last sync.
    pub fn sync(&mut self) -> Result<(), LogError> {
        if self.synced < self.len {
            self.map
                .flush_range(self.synced, self.len - self.synced)
                .map_err(|e| LogError::io(&self.path, "msync", e))?;
            self.synced = self.len;
        }
        Ok(())
    }

    /// Zeroes a torn tail starting at `off` (up to the first all-zero 4 KiB page, which is
    /// where the preallocated, never-written part begins) and persists that.
    fn zero_from(&mut self, off: usize) {
        const PAGE: usize = 4096;
        let mut end = off;
        while end < self.map.len() {
            let page_end = ((end / PAGE) + 1) * PAGE;
            let page_end = page_end.min(self.map.len());
            let all_zero = self.map[end..page_end].iter().all(|&b| b == 0);
            self.map[end..page_end].fill(0);
            end = page_end;
            if all_zero {
                break;
            }
        }
        let _ = self.map.flush_range(off, end - off);
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// Environment variable naming a file whose existence makes segment creation fail with
/// ENOSPC: fault injection for tests of the disk-full path (segments are preallocated, so a
/// full disk surfaces exactly here). Checked only when a segment is created.
pub const FAULT_NO_SPACE_ENV: &str = "RINGPOST_FAULT_NO_SPACE_FILE";

fn injected_no_space() -> bool {
    static FAULT_FILE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    FAULT_FILE
        .get_or_init(|| std::env::var_os(FAULT_NO_SPACE_ENV).map(PathBuf::from))
        .as_ref()
        .is_some_and(|p| p.exists())
}

/// Reserves the file's blocks up front (so a full disk shows at segment creation, not as
/// SIGBUS on a later store into the map).
fn preallocate(file: &File, size: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fallocate on an fd we own, with a non-negative range.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size as libc::off_t) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_position_and_parse_back() {
        assert_eq!(file_name(134_217_728), "00000000000134217728.seg");
        assert_eq!(parse_name(&file_name(42)), Some(42));
        assert_eq!(parse_name("42.seg"), None);
        assert_eq!(parse_name("0000000000000000004x.seg"), None);
        assert!(file_name(9) < file_name(10));
    }
}

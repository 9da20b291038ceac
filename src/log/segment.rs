//! One segment: a preallocated file of fixed size, mapped read-write, filled front to back.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use memmap2::MmapMut;

use super::durable;
use super::fault::{Event, Faults};
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
    /// Kept open for hole-aware zeroing (SEEK_DATA) when the segment becomes active again
    /// after a restart ([`Segment::zero_tail`]).
    file: File,
    /// Bytes written (the next record goes here).
    pub len: usize,
    /// `[synced, len)` is not yet covered by a sync (running or done).
    synced: usize,
    /// `[0, durable)` is covered by a completed sync.
    durable: usize,
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
    /// Bytes past the end of the valid records rewritten with zeros (whole pages that held
    /// something).
    pub zeroed: usize,
}

impl Segment {
    /// Creates and preallocates a new, empty segment, durably: the file's full size is
    /// fsync'ed, then its name (the directory), before any record goes into it. On failure
    /// the half-made file is removed, so a later attempt can create it again.
    pub fn create(
        dir: &Path,
        base: u64,
        size: usize,
        faults: &Faults,
    ) -> Result<Segment, LogError> {
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
        faults.record(Event::Create(&path));
        let made = Self::prepare(dir, base, &path, file, size, faults);
        if made.is_err() && std::fs::remove_file(&path).is_ok() {
            faults.record(Event::Remove(&path));
        }
        made
    }

    fn prepare(
        dir: &Path,
        base: u64,
        path: &Path,
        file: File,
        size: usize,
        faults: &Faults,
    ) -> Result<Segment, LogError> {
        preallocate(&file, size).map_err(|e| LogError::io(path, "preallocate segment", e))?;
        file.sync_all()
            .map_err(|e| LogError::sync(path, "fsync new segment", e))?;
        faults.record(Event::Synced {
            path,
            len: 0,
            size: size as u64,
        });
        durable::sync_dir(dir, faults).map_err(|e| LogError::sync(dir, "fsync log dir", e))?;
        Self::map(base, path.to_path_buf(), file, 0)
    }

    /// The segment becomes the active one again (see the spare rule in [`super::Log::open_with`]):
    /// zeroes every non-zero byte past its valid records and syncs it, as recovery does for
    /// the newest segment (the stale-record rule).
    pub fn zero_tail(&mut self, faults: &Faults) -> Result<usize, LogError> {
        let zeroed = self.zero_beyond(self.len);
        if zeroed > 0 {
            self.map
                .flush()
                .map_err(|e| LogError::sync(&self.path, "msync recovered segment", e))?;
            faults.record(Event::Synced {
                path: &self.path,
                len: self.len as u64,
                size: self.map.len() as u64,
            });
        }
        Ok(zeroed)
    }

    /// Opens an existing segment and finds the end of its valid records, calling
    /// `visit(offset, kind, payload)` for each. For the `trailing` (active) segment, every
    /// non-zero byte past that end is zeroed (see the stale-record rule in the module doc of
    /// [`super`]). Then the whole segment is synced, so nothing recovery saw, and no zeroing,
    /// can be lost after it returns.
    pub fn recover(
        base: u64,
        path: PathBuf,
        trailing: bool,
        faults: &Faults,
        mut visit: impl FnMut(usize, u8, &[u8]),
    ) -> Result<(Segment, SegmentScan), LogError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| LogError::io(&path, "open segment", e))?;
        let mut seg = Self::map(base, path, file, 0)?;
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
                    break;
                }
            }
        }
        if trailing {
            scan.zeroed = seg.zero_beyond(off);
        }
        seg.map
            .flush()
            .map_err(|e| LogError::sync(&seg.path, "msync recovered segment", e))?;
        faults.record(Event::Synced {
            path: &seg.path,
            len: off as u64,
            size: seg.map.len() as u64,
        });
        seg.len = off;
        seg.synced = off;
        seg.durable = off;
        seg.records = scan.records;
        Ok((seg, scan))
    }

    fn map(base: u64, path: PathBuf, file: File, len: usize) -> Result<Segment, LogError> {
        // SAFETY: the file is ours alone (one shard owns its directory, one broker its data
        // directory) and is never resized while mapped, so the mapping stays valid for the
        // segment's lifetime.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| LogError::io(&path, "map", e))?;
        Ok(Segment {
            base,
            path,
            map,
            file,
            len,
            synced: len,
            durable: len,
            records: 0,
            newest_ms: 0,
        })
    }

    /// Brings the whole map into the page cache with read faults (`MADV_POPULATE_READ`), for
    /// a spare being prepared off the shard's thread. Otherwise the first store into each page
    /// of a fresh, preallocated segment faults the page in on the shard's thread, where ext4
    /// zeroes it (an unwritten extent reads as zeros: `zero_user_segments`, 4–7 % of each
    /// shard's CPU at the p2p peak, twice that with own-send sync's second record). Read
    /// faults leave the pages clean, so nothing extra is written to disk; the first store
    /// into a page still takes a write-protect fault, without the zeroing. Best effort: on a
    /// kernel without it (< 5.14), or once memory pressure evicts the pages, the old cost is
    /// back, nothing else changes.
    pub fn populate(&self) {
        // In steps, so that the process's mmap lock, which the call holds, is released
        // between them: a writer waiting for it (an mmap by the allocator, say) would make
        // every page fault of the shards queue behind the whole segment's population.
        const STEP: usize = 1 << 20;
        let base = self.map.as_ptr() as usize;
        let mut at = 0;
        while at < self.map.len() {
            let len = STEP.min(self.map.len() - at);
            // SAFETY: a page-aligned range (STEP is a multiple of the page size) inside the
            // live mapping this segment owns; POPULATE_READ only faults pages in, it changes
            // no content.
            let rc = unsafe {
                libc::madvise(
                    (base + at) as *mut libc::c_void,
                    len,
                    libc::MADV_POPULATE_READ,
                )
            };
            if rc != 0 {
                return; // not supported, or no memory: appends fault the pages in
            }
            at += len;
        }
    }

    /// Pages of the map in the page cache (mincore), for tests.
    #[cfg(test)]
    pub fn resident_pages(&self) -> usize {
        let page = page_size();
        let mut vec = vec![0u8; self.map.len().div_ceil(page)];
        // SAFETY: the live mapping's exact range; `vec` has one byte per page of it.
        let rc = unsafe {
            libc::mincore(
                self.map.as_ptr() as *mut libc::c_void,
                self.map.len(),
                vec.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        vec.iter().filter(|&&b| b & 1 == 1).count()
    }

    /// The segment's file (kept open for as long as it is mapped).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether nothing was ever appended (a spare: see [`super::Log::spare_job`]).
    pub fn is_empty(&self) -> bool {
        self.len == 0
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
        self.append_with(framed.len(), time_ms, |out| out.copy_from_slice(framed))
    }

    /// Appends a `size`-byte framed record that `write` lays out in place (the caller made
    /// room, as for [`Segment::append`]); returns its offset.
    pub fn append_with(
        &mut self,
        size: usize,
        time_ms: u64,
        write: impl FnOnce(&mut [u8]),
    ) -> usize {
        let off = self.len;
        write(&mut self.map[off..off + size]);
        self.len += size;
        self.records += 1;
        self.newest_ms = self.newest_ms.max(time_ms);
        off
    }

    /// Appends a record of `kind` whose archive `archive` writes in place, straight into the
    /// map after the header (at most `bound` bytes; the caller checked `remaining()` has room
    /// for `framed_len(bound)`); returns its offset. On an error nothing is appended and the
    /// bytes `archive` may have written are zeroed again (the log's end is a zero header, and
    /// what follows it must stay zero for the next record's padding).
    pub fn append_archived<E>(
        &mut self,
        kind: u8,
        bound: usize,
        time_ms: u64,
        archive: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<usize, E> {
        let off = self.len;
        let start = off + record::HEADER_LEN;
        let n = match archive(&mut self.map[start..start + bound]) {
            Ok(n) => n,
            Err(e) => {
                self.map[start..start + bound].fill(0);
                return Err(e);
            }
        };
        let size = record::framed_len(n);
        let (head, rest) = self.map[off..off + size].split_at_mut(record::HEADER_LEN);
        let (payload, pad) = rest.split_at_mut(n);
        pad.fill(0);
        record::write_header(kind, payload, head);
        self.len += size;
        self.records += 1;
        self.newest_ms = self.newest_ms.max(time_ms);
        Ok(off)
    }

    /// The valid record at `off`.
    pub fn frame_at(&self, off: usize) -> Framed<'_> {
        match self.map.get(off..self.len) {
            Some(buf) => record::parse(buf),
            None => Framed::Bad("offset past the written end"),
        }
    }

    /// The page-aligned address range covering `[synced, len)` and the offset a sync of it
    /// makes durable, for a sync run elsewhere ([`super::SyncPlan`]); marks it taken. `None`
    /// if nothing is pending.
    pub fn take_unsynced(&mut self) -> Option<(usize, usize, usize)> {
        if self.synced >= self.len {
            return None;
        }
        let page = page_size();
        let start = self.synced / page * page;
        let base = self.map.as_ptr() as usize;
        let range = (base + start, self.len - start, self.len);
        self.synced = self.len;
        Some(range)
    }

    /// A sync of `[0, upto)` completed.
    pub fn mark_durable(&mut self, upto: usize) {
        self.durable = self.durable.max(upto);
    }

    /// `[0, durable_len)` is covered by a completed sync.
    pub fn durable_len(&self) -> usize {
        self.durable
    }

    /// Writes every page holding records at or after position `pos` again and syncs them
    /// (see [`super::POISON_MARKER`]); returns the bytes covered.
    pub fn rewrite_from(&mut self, pos: u64) -> Result<usize, LogError> {
        let Some(off) = pos
            .checked_sub(self.base)
            .map_or(Some(0), |o| usize::try_from(o).ok())
        else {
            return Ok(0);
        };
        if off >= self.len {
            return Ok(0);
        }
        let page = page_size();
        let start = off / page * page;
        let base = self.map.as_mut_ptr();
        for p in (start..self.len).step_by(page) {
            // SAFETY: p < len <= map.len(), so the byte lies in our live, exclusively borrowed
            // mapping. Volatile, so the store of the value just read is not optimised away:
            // the store is what makes the kernel treat the page as dirty again.
            unsafe {
                let at = base.add(p);
                std::ptr::write_volatile(at, std::ptr::read_volatile(at));
            }
        }
        self.map
            .flush_range(start, self.len - start)
            .map_err(|e| LogError::sync(&self.path, "msync rewritten pages", e))?;
        Ok(self.len - start)
    }

    /// Whether everything appended is covered by a completed sync.
    pub fn is_durable(&self) -> bool {
        self.durable >= self.len
    }

    /// msync's everything not yet covered by a *completed* sync (a sync still running
    /// elsewhere is covered again: the result must not depend on it).
    pub fn sync(&mut self, faults: &Faults) -> Result<(), LogError> {
        if self.durable >= self.len {
            return Ok(());
        }
        if let Some(e) = faults.sync_failure() {
            return Err(LogError::sync(&self.path, "msync", e));
        }
        let upto = self.len;
        self.map
            .flush_range(self.durable, upto - self.durable)
            .map_err(|e| LogError::sync(&self.path, "msync", e))?;
        faults.record(Event::Synced {
            path: &self.path,
            len: upto as u64,
            size: self.map.len() as u64,
        });
        self.synced = self.synced.max(upto);
        self.mark_durable(upto);
        Ok(())
    }

    /// Zeroes every page past `off` that holds a non-zero byte; returns the bytes rewritten. Ranges
    /// the file system reports as holes (SEEK_DATA; preallocated, never-written extents on
    /// ext4/xfs) read as zeros and are skipped, so a clean tail costs almost nothing.
    fn zero_beyond(&mut self, off: usize) -> usize {
        let page = page_size();
        let end = self.map.len();
        let mut zeroed = 0;
        let mut at = off;
        while at < end {
            let Some((data, hole)) = next_data(&self.file, at, end) else {
                break;
            };
            let mut p = data;
            while p < hole {
                let stop = ((p / page + 1) * page).min(hole);
                let chunk = &mut self.map[p..stop];
                if chunk.iter().any(|&b| b != 0) {
                    chunk.fill(0);
                    zeroed += stop - p;
                }
                p = stop;
            }
            at = hole;
        }
        zeroed
    }
}

/// The next range `[data, hole)` at or after `from` (and before `end`) that may hold non-zero
/// bytes. Without SEEK_DATA support the whole rest counts as data.
fn next_data(file: &File, from: usize, end: usize) -> Option<(usize, usize)> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let Ok(from_off) = libc::off_t::try_from(from) else {
        return Some((from, end));
    };
    // SAFETY: lseek on an fd we own; it only moves the file offset, which nothing else uses.
    let data = unsafe { libc::lseek(fd, from_off, libc::SEEK_DATA) };
    if data < 0 {
        return match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::ENXIO) => None, // nothing but holes from here on
            _ => Some((from, end)),
        };
    }
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
    let data = usize::try_from(data).unwrap_or(from).max(from);
    if data >= end {
        return None;
    }
    let hole = usize::try_from(hole).map_or(end, |h| h.min(end));
    // A hole right at `data` would be a file system bug; scan to the end rather than loop.
    Some((data, if hole > data { hole } else { end }))
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

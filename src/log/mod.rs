//! The per-shard segment log: append-only, preallocated, memory-mapped segment files.
//!
//! A shard's log lives in `<data_dir>/shard-NNN/`: segments of `segment_size` bytes named by
//! the position of their first byte. A *position* is `segment base + offset`, unique for the
//! log's lifetime, so it can be stored (per-user back-pointers, cursors) and read back in O(1).
//! Records are framed with length + CRC32C + kind ([`record`]) and hold rkyv archives read in
//! place from the map.
//!
//! Durability is the caller's choice: [`Log::append`] only copies into the map; a sync covers
//! everything appended before it, so one sync serves a whole batch of appends (group commit).
//! [`Log::begin_sync`] plans that sync as a [`SyncPlan`] to run off the shard's thread;
//! [`Log::sync`] does it in place.
//!
//! Recovery ([`Log::open`]) walks every segment in order, validates each record's CRC, and
//! stops at the first invalid one in the newest segment: that torn tail is zeroed, so the next
//! append overwrites it. Retention ([`Log::retain`]) deletes whole sealed segments, oldest
//! first, never the active one.
//!
pub mod meta;
pub mod record;
pub mod segment;

use std::path::{Path, PathBuf};
use std::time::Instant;

use record::{Framed, Record};
use segment::Segment;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{what} {path}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("record of {size} bytes does not fit in a {segment_size}-byte segment")]
    TooLarge { size: usize, segment_size: usize },
    #[error("cannot serialise record: {0}")]
    Serialize(String),
    #[error("no valid record at position {0}")]
    BadPosition(u64),
    #[error("record at position {pos} does not decode: {why}")]
    Corrupt { pos: u64, why: String },
}

impl LogError {
    pub(crate) fn io(path: &Path, what: &'static str, source: std::io::Error) -> LogError {
        LogError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    }
}

/// What [`Log::open`] found.
#[derive(Debug, Default)]
pub struct Recovery {
    pub segments: usize,
    pub records: u64,
    pub bytes: u64,
    /// Position and reason where a torn tail was cut off.
    pub torn_at: Option<(u64, &'static str)>,
    pub elapsed: std::time::Duration,
}

/// One shard's log.
pub struct Log {
    dir: PathBuf,
    segment_size: usize,
    /// Sorted by base; the last one is active.
    segments: Vec<Segment>,
    /// A [`SyncPlan`] is running elsewhere: no segment may be unmapped until it ends.
    sync_in_flight: bool,
}

/// An msync of everything appended up to a point, to run off the shard's thread (glommio's
/// blocking pool) so the shard keeps serving while the disk works. It holds raw addresses into
/// the segment maps; [`Log::retain`] unmaps nothing while one is in flight, and the shard keeps
/// the log alive until it ends.
pub struct SyncPlan {
    /// (address, length) of page-aligned ranges to msync.
    ranges: Vec<(usize, usize)>,
    /// (segment base, synced offset before the plan), to undo on failure.
    undo: Vec<(u64, usize)>,
}

// SAFETY: the addresses stay mapped while the plan runs (see the type's doc) and msync only
// reads the mapping's page state.
unsafe impl Send for SyncPlan {}

impl SyncPlan {
    /// Runs the msyncs (blocking).
    pub fn run(&self) -> std::io::Result<()> {
        for &(addr, len) in &self.ranges {
            // SAFETY: a page-aligned range inside a live MAP_SHARED mapping (see above).
            let rc = unsafe { libc::msync(addr as *mut libc::c_void, len, libc::MS_SYNC) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

impl Log {
    /// Opens (or creates) the log in `dir`, recovering every segment. `visit(pos, record)` is
    /// called for every valid record in position order, to rebuild in-memory state.
    pub fn open(
        dir: &Path,
        segment_size: usize,
        mut visit: impl FnMut(u64, Record),
    ) -> Result<(Log, Recovery), LogError> {
        let started = Instant::now();
        std::fs::create_dir_all(dir).map_err(|e| LogError::io(dir, "create log dir", e))?;
        let mut bases: Vec<u64> = std::fs::read_dir(dir)
            .map_err(|e| LogError::io(dir, "list log dir", e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| segment::parse_name(&e.file_name().to_string_lossy()))
            .collect();
        bases.sort_unstable();
        let mut report = Recovery::default();
        let mut segments = Vec::with_capacity(bases.len());
        for base in bases {
            let path = dir.join(segment::file_name(base));
            let mut failure = None;
            let mut newest = 0u64;
            let (seg, scan) =
                Segment::recover(base, path, |off, kind, payload| {
                    match record::decode(kind, payload) {
                        Ok(rec) => {
                            newest = newest.max(rec.time_ms());
                            visit(base + off as u64, rec);
                        }
                        Err(e) => {
                            failure.get_or_insert((base + off as u64, e.to_string()));
                        }
                    }
                })?;
            if let Some((pos, why)) = failure {
                return Err(LogError::Corrupt { pos, why });
            }
            report.records += scan.records;
            report.bytes += seg.len as u64;
            if let Some((off, why)) = scan.torn_at {
                report.torn_at = Some((base + off as u64, why));
            }
            let mut seg = seg;
            seg.newest_ms = newest;
            segments.push(seg);
        }
        report.segments = segments.len();
        let mut log = Log {
            dir: dir.to_path_buf(),
            segment_size,
            segments,
            sync_in_flight: false,
        };
        if log.segments.is_empty() {
            log.segments.push(Segment::create(dir, 0, segment_size)?);
        }
        report.elapsed = started.elapsed();
        Ok((log, report))
    }

    /// Appends `rec`; returns its position. Not durable until [`Log::sync`].
    pub fn append(&mut self, rec: &Record) -> Result<u64, LogError> {
        let framed = Self::frame(rec)?;
        self.prepare(framed.len())?;
        Ok(self.append_framed(&framed, rec.time_ms()))
    }

    /// Frames `rec` for [`Log::append_framed`].
    pub fn frame(rec: &Record) -> Result<Vec<u8>, LogError> {
        record::frame(rec).map_err(|e| LogError::Serialize(e.to_string()))
    }

    /// Makes sure the active segment can take `bytes` more (rolling to a new one if not), so
    /// records appended together land in one segment; returns the active segment's base.
    pub fn prepare(&mut self, bytes: usize) -> Result<u64, LogError> {
        if bytes > self.segment_size {
            return Err(LogError::TooLarge {
                size: bytes,
                segment_size: self.segment_size,
            });
        }
        if self.active().remaining() < bytes {
            self.roll()?;
        }
        Ok(self.active().base)
    }

    /// Appends a record framed by [`Log::frame`] into room made by [`Log::prepare`]; returns
    /// its position.
    pub fn append_framed(&mut self, framed: &[u8], time_ms: u64) -> u64 {
        let seg = self.active_mut();
        let off = seg.append(framed, time_ms);
        seg.base + off as u64
    }

    /// Base position of the active segment.
    pub fn active_base(&self) -> u64 {
        self.active().base
    }

    /// Plans the sync of everything appended so far, to run with [`SyncPlan::run`] elsewhere;
    /// finish with [`Log::end_sync`].
    pub fn begin_sync(&mut self) -> SyncPlan {
        let mut plan = SyncPlan {
            ranges: Vec::new(),
            undo: Vec::new(),
        };
        for seg in &mut self.segments {
            if let Some((addr, len, prev)) = seg.take_unsynced() {
                plan.ranges.push((addr, len));
                plan.undo.push((seg.base, prev));
            }
        }
        self.sync_in_flight = !plan.is_empty();
        plan
    }

    /// Ends a [`Log::begin_sync`]; after a failure its ranges count as unsynced again.
    pub fn end_sync(&mut self, plan: SyncPlan, ok: bool) {
        self.sync_in_flight = false;
        if !ok {
            for (base, prev) in plan.undo {
                if let Some(seg) = self.segments.iter_mut().find(|s| s.base == base) {
                    seg.restore_unsynced(prev);
                }
            }
        }
    }

    pub fn sync_in_flight(&self) -> bool {
        self.sync_in_flight
    }

    /// Makes everything appended so far durable (msync), sealed segments included.
    pub fn sync(&mut self) -> Result<(), LogError> {
        for seg in &mut self.segments {
            seg.sync()?;
        }
        Ok(())
    }

    /// The segment holding `pos` and the offset inside it.
    fn locate(&self, pos: u64) -> Result<(&Segment, usize), LogError> {
        let idx = self.segments.partition_point(|s| s.base <= pos);
        let seg = idx
            .checked_sub(1)
            .and_then(|i| self.segments.get(i))
            .ok_or(LogError::BadPosition(pos))?;
        let off = usize::try_from(pos - seg.base).map_err(|_| LogError::BadPosition(pos))?;
        Ok((seg, off))
    }

    /// The kind and validated frame payload at `pos`.
    fn payload_at(&self, pos: u64) -> Result<(u8, &[u8]), LogError> {
        let (seg, off) = self.locate(pos)?;
        match seg.frame_at(off) {
            Framed::Record { kind, payload, .. } => Ok((kind, payload)),
            Framed::End | Framed::Bad(_) => Err(LogError::BadPosition(pos)),
        }
    }

    /// Reads and validates the record at `pos`.
    pub fn read(&self, pos: u64) -> Result<Record, LogError> {
        let (kind, payload) = self.payload_at(pos)?;
        record::decode(kind, payload).map_err(|e| LogError::Corrupt {
            pos,
            why: e.to_string(),
        })
    }

    /// Calls `f` with the validated, zero-copy archive of the stream entry (message, outgoing
    /// or group record) at `pos` (replay path: nothing is deserialised or copied but what `f`
    /// copies).
    pub fn with_entry<T>(
        &self,
        pos: u64,
        f: impl FnOnce(&record::ArchivedEntry<'_>) -> T,
    ) -> Result<T, LogError> {
        let (kind, payload) = self.payload_at(pos)?;
        let entry =
            record::access_entry(kind, payload).map_err(|why| LogError::Corrupt { pos, why })?;
        Ok(f(&entry))
    }

    /// Every record from `pos` on, in order (for inspection and tests; replay follows
    /// per-user positions instead).
    pub fn scan_from(&self, pos: u64) -> Result<Vec<(u64, Record)>, LogError> {
        let mut out = Vec::new();
        for seg in self.segments.iter().filter(|s| s.base + s.len as u64 > pos) {
            let mut off = usize::try_from(pos.saturating_sub(seg.base)).unwrap_or(0);
            while let Framed::Record {
                kind,
                payload,
                size,
            } = seg.frame_at(off)
            {
                let at = seg.base + off as u64;
                let rec = record::decode(kind, payload).map_err(|e| LogError::Corrupt {
                    pos: at,
                    why: e.to_string(),
                })?;
                out.push((at, rec));
                off += size;
            }
        }
        Ok(out)
    }

    /// Deletes sealed segments whose newest record is older than `cutoff_ms`, and then the
    /// oldest sealed segments while the log is larger than `max_bytes`, but never one holding
    /// a position at or after `keep_from` (records the shard still needs). Returns the
    /// position of the oldest byte still retained.
    pub fn retain(
        &mut self,
        cutoff_ms: u64,
        max_bytes: u64,
        keep_from: u64,
    ) -> Result<u64, LogError> {
        // A running SyncPlan points into the maps; deleting waits for the next round.
        while !self.sync_in_flight {
            let sealed = self.segments.len() > 1;
            let Some(oldest) = self.segments.first() else {
                break;
            };
            let too_old = oldest.newest_ms < cutoff_ms;
            let too_big = self.disk_bytes() > max_bytes;
            let needed = oldest.base + oldest.capacity() as u64 > keep_from;
            if !sealed || needed || !(too_old || too_big) {
                break;
            }
            let seg = self.segments.remove(0);
            let path = seg.path.clone();
            drop(seg);
            std::fs::remove_file(&path).map_err(|e| LogError::io(&path, "delete segment", e))?;
        }
        Ok(self.oldest_position())
    }

    /// The oldest position [`Log::retain`] with these arguments would keep (what it deletes
    /// lies below it), without deleting anything.
    pub fn retention_survivor(&self, cutoff_ms: u64, max_bytes: u64, keep_from: u64) -> u64 {
        let mut bytes = self.disk_bytes();
        let mut i = 0;
        while i + 1 < self.segments.len() {
            let seg = &self.segments[i];
            let needed = seg.base + seg.capacity() as u64 > keep_from;
            if needed || !(seg.newest_ms < cutoff_ms || bytes > max_bytes) {
                break;
            }
            bytes -= seg.capacity() as u64;
            i += 1;
        }
        self.segments[i].base
    }

    /// True once every byte before `pos` has been synced (and no sync is still running).
    pub fn is_synced(&self, pos: u64) -> bool {
        !self.sync_in_flight
            && self
                .segments
                .iter()
                .filter(|s| s.base < pos)
                .all(|s| s.base + s.synced_len() as u64 >= pos.min(s.base + s.len as u64))
    }

    /// Bytes of segment files on disk (they are preallocated, so this is capacity).
    pub fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.capacity() as u64).sum()
    }

    pub fn oldest_position(&self) -> u64 {
        self.segments.first().map_or(0, |s| s.base)
    }

    /// Position the next append will get (if it fits in the active segment).
    pub fn head_position(&self) -> u64 {
        self.active().base + self.active().len as u64
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn active(&self) -> &Segment {
        // `open` guarantees at least one segment and `retain` never removes the last.
        &self.segments[self.segments.len() - 1]
    }

    fn active_mut(&mut self) -> &mut Segment {
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }

    /// Seals the active segment (synced) and starts the next one.
    fn roll(&mut self) -> Result<(), LogError> {
        let next = {
            let seg = self.active_mut();
            seg.sync()?;
            seg.base + seg.capacity() as u64
        };
        let seg = Segment::create(&self.dir, next, self.segment_size)?;
        self.segments.push(seg);
        Ok(())
    }
}

#[cfg(test)]
mod tests;

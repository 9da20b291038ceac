//! The per-shard segment log: append-only, preallocated, memory-mapped segment files.
//!
//! A shard's log lives in `<data_dir>/shard-NNN/`: segments of `segment_size` bytes named by
//! the position of their first byte. A *position* is `segment base + offset`, unique for the
//! log's lifetime, so it can be stored (per-user back-pointers, cursors) and read back in O(1).
//! Records are framed with length + CRC32C + kind ([`record`]) and hold rkyv archives read in
//! place from the map. Before any log opens, [`DataDir::open`] takes the data directory's lock
//! ([`lock`]: one broker per directory) and checks its meta file ([`meta`]).
//!
//! # Durability rules
//! - [`Log::append`] only copies into the map. A sync covers everything appended before it,
//!   so one sync serves a whole batch of appends (group commit). [`Log::begin_sync`] plans
//!   that sync as a [`SyncPlan`] to run off the shard's thread; [`Log::sync`] does it in place.
//!   Whoever acknowledges a record waits for a completed sync that covers it.
//! - A roll syncs the active segment before the next one takes records, so only the newest
//!   segment in use can ever hold unsynced bytes.
//! - A new segment is fallocated to its full size and fsync'ed, then its directory is
//!   fsync'ed, before a record goes into it. The shard prepares the next segment (the
//!   *spare*) that way ahead of time, off its thread ([`Log::spare_job`], [`SpareJob::run`]),
//!   so that a roll only syncs the small unsynced tail of the active segment and swaps the
//!   spare in; a roll that finds none (yet) creates the segment itself. The preparing thread
//!   also reads the spare's pages into the page cache ([`Segment::populate`]), so that the
//!   kernel zeroes them there rather than in a page fault on the shard's thread at the first
//!   append into each page (the spare's pages count in the broker's RSS from then on: up to
//!   one segment per shard, clean page cache the kernel can reclaim). Deleting a segment
//!   (retention) and writing the meta file (temp file, fsync, rename) are followed by an
//!   fsync of the directory too ([`durable`]). Creating a shard directory fsyncs the data
//!   directory.
//! - **Poisoning.** When an msync/fsync fails, Linux may already have marked the pages it
//!   could not write clean, so a retried sync would report success without writing them
//!   ("fsyncgate"). The log therefore never retries: the first failed sync poisons it, and
//!   every later append fails with [`LogError::Poisoned`], as do the next sync and every
//!   later one that has records to cover (an idle one stays quiet). The shard answers STORAGE_UNAVAILABLE until
//!   a restart recovers from the log. Pages the kernel dropped that way still sit in the page
//!   cache, so the restarted broker would read them fine and build on them; the poisoned log
//!   therefore leaves [`POISON_MARKER`], and the next open writes everything from the first
//!   unsynced position on again and syncs it before serving.
//!
//! # Recovery and the stale-record rule
//! [`Log::open`] walks every segment in order and validates each record's CRC; in the newest
//! segment the first invalid record, or the first zero header, is the end of the log.
//! Nothing after it counts, even if it parses: with write-back in any order, a page past the
//! end can hold a complete record from before the crash whose predecessors never reached the
//! disk. New appends land at the end, and had that stale record sat exactly where they end, a
//! later recovery would have taken it for the next record. So recovery zeroes every non-zero
//! byte past the end of the newest segment and syncs that (and everything it read) before the
//! first append: from then on, bytes past the end are zeros on disk, and any valid record
//! there was written, in order, after this open. Only pages that hold data are rewritten
//! (holes are skipped with SEEK_DATA), so a clean tail costs a few syscalls. Sealed segments
//! are never appended to again, so whatever follows their end is never read.
//!
//! A newest segment that came back empty or shorter than `segment_size` and holds no valid
//! record was cut mid-creation by a power loss and is made anew (see [`Log::open_with`]).
//!
//! **The spare at restart.** A newest segment of full size that holds no valid record, after
//! a segment that does, is a spare that was prepared but never rolled into (or rolled into
//! with nothing synced in it: nothing there was acknowledged). It becomes the spare again and
//! the segment before it stays the active one: recovery zeroes that one's tail too (the
//! stale-record rule applies to the newest segment *in use*), so none of its room is wasted
//! and bytes past its end are zeros on disk before the first append.
//! Retention ([`Log::retain`]) deletes whole sealed segments, oldest first, never the active
//! one.
//!
//! # Fault modes (tests only)
//! [`fault`] documents the `RINGPOST_FAULT_*` environment variables: a power log of every
//! completed sync plus [`fault::simulate_power_cut`], which cuts a killed broker's data
//! directory back to what was durable; failed syncs; skipped syncs; a full disk. Every record
//! kind goes through the same append and sync path, so the power-loss tests cover any record
//! type added later.

pub mod datadir;
pub mod durable;
pub mod fault;
pub mod lock;
pub mod meta;
pub mod record;
pub mod segment;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub use datadir::{DataDir, DataDirError};
use fault::{Event, Faults};
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
    /// An fsync/msync failed: what it covered may be lost, and the log is poisoned.
    #[error("{what} {path} failed: {source}")]
    Sync {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("the log in {dir} takes no more writes: a sync failed earlier, and the kernel may have dropped those writes (a retried sync would wrongly succeed). Restart the broker to recover from what is on disk, after checking the disk")]
    Poisoned { dir: PathBuf },
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

    pub(crate) fn sync(path: &Path, what: &'static str, source: std::io::Error) -> LogError {
        LogError::Sync {
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
    /// Stale bytes zeroed past the end of the newest segment's valid records.
    pub zeroed: u64,
    /// Base of a trailing segment that came back empty or short and was made anew.
    pub recreated: Option<u64>,
    /// Bytes written again because the previous process poisoned the log ([`POISON_MARKER`]).
    pub rewritten: u64,
    /// Base of a prepared, never used newest segment kept as the spare (module doc).
    pub spare: Option<u64>,
    pub elapsed: std::time::Duration,
}

/// Left in a log directory when a failed sync poisons the log: the position from which writes may have been
/// lost. The page cache still holds those pages, so recovery reads them fine; but after a
/// failed write the kernel may keep them as *clean* pages it never wrote, which no later sync
/// writes either. The next open writes every page from there on again and syncs it (failing
/// the start if that fails too), then removes the marker.
pub const POISON_MARKER: &str = "POISONED";

/// See [`POISON_MARKER`]. Returns the bytes written again.
fn rewrite_after_poisoning(
    dir: &Path,
    segments: &mut [Segment],
    faults: &Faults,
) -> Result<u64, LogError> {
    let marker = dir.join(POISON_MARKER);
    let from = match std::fs::read_to_string(&marker) {
        // Unreadable: write everything again.
        Ok(text) => text.trim().parse::<u64>().unwrap_or(0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(LogError::io(&marker, "read", e)),
    };
    let mut rewritten = 0;
    for seg in segments.iter_mut() {
        rewritten += seg.rewrite_from(from)? as u64;
    }
    std::fs::remove_file(&marker).map_err(|e| LogError::io(&marker, "remove", e))?;
    faults.record(Event::Remove(&marker));
    durable::sync_dir(dir, faults).map_err(|e| LogError::sync(dir, "fsync log dir", e))?;
    tracing::warn!(
        dir = %dir.display(),
        from,
        bytes = rewritten,
        "the previous run poisoned this log after a failed sync; rewrote and synced everything from there"
    );
    Ok(rewritten)
}

/// One shard's log.
pub struct Log {
    dir: PathBuf,
    segment_size: usize,
    /// Sorted by base; the last one is active.
    segments: Vec<Segment>,
    /// The next segment, prepared ahead of time (module doc): empty, durable, mapped.
    spare: Option<Segment>,
    /// A [`SpareJob`] is out; its segment comes back through this channel.
    preparing: Option<std::sync::mpsc::Receiver<Result<Segment, LogError>>>,
    /// A failed preparation is not tried again before this (a full disk).
    spare_retry_at: Option<Instant>,
    /// The lowest segment base of each [`SyncPlan`] running elsewhere (group commits are
    /// pipelined): a segment at or after one of them may not be unmapped until it ends.
    sync_in_flight: Vec<u64>,
    /// A sync failed: no append or sync succeeds again in this process (module doc).
    poisoned: bool,
    /// Set by poisoning: the next plan fails even if it has nothing new to cover. Records
    /// appended before the failure may have been synced meanwhile by a roll, but an msync
    /// that ran alongside the failing one can report success for pages the kernel dropped
    /// (the error is reported once per file), so they must not be acknowledged either.
    owe_failure: bool,
    faults: Arc<Faults>,
    /// Reused by every [`Log::append`] for the record's archive: no allocation per record.
    scratch: rkyv::util::AlignedVec,
    /// The vectors of ended plans, emptied, for the next [`Log::begin_sync`]: no allocation
    /// per group commit.
    plan_vecs: Vec<PlanVecs>,
}

/// A [`SyncPlan`]'s ranges and targets.
type PlanVecs = (Vec<(usize, usize)>, Vec<SyncTarget>);

/// Emptied [`PlanVecs`] kept at most: as many as plans may be in flight at once (the shard's
/// pipelined commits), and one more.
const MAX_PLAN_VECS: usize = 4;

/// A sync of everything appended up to a point, to run without blocking the shard's thread so
/// the shard keeps serving while the disk works: as msyncs elsewhere ([`SyncPlan::run`]) or as
/// fdatasyncs the caller submits to its io_uring ([`SyncPlan::fds`]; what the broker does).
/// Several may be in flight (pipelined group commits); they end in the order they began. It
/// holds raw addresses into the segment maps; [`Log::retain`] unmaps no segment a running plan
/// covers, and the shard keeps the log alive until it ends.
pub struct SyncPlan {
    /// (address, length) of page-aligned ranges to msync.
    ranges: Vec<(usize, usize)>,
    /// What each segment has durable once the plan succeeds.
    targets: Vec<SyncTarget>,
    /// The log is poisoned and records were waiting: running fails without touching the disk.
    poisoned: bool,
    /// The skip-sync fault answered instead of msync (nothing became durable).
    skipped: AtomicBool,
    /// Its lowest segment base, as pinned in the log's syncs in flight (it has ranges).
    pinned: Option<u64>,
    /// Only when a fault is armed: a shared refcount touched by every shard's commit would
    /// bounce between cores.
    faults: Option<Arc<Faults>>,
}

struct SyncTarget {
    base: u64,
    /// The segment's file, for a sync by fd ([`SyncPlan::fds`]).
    fd: std::os::fd::RawFd,
    upto: usize,
    /// For the power log (only when one is recording).
    path: Option<PathBuf>,
    size: usize,
}

// SAFETY: the addresses stay mapped while the plan runs (see the type's doc) and msync only
// reads the mapping's page state.
unsafe impl Send for SyncPlan {}

impl SyncPlan {
    /// Runs the msyncs (blocking).
    pub fn run(&self) -> std::io::Result<()> {
        if self.poisoned {
            return Err(std::io::Error::other(
                "the log is poisoned by an earlier failed sync",
            ));
        }
        if self.ranges.is_empty() {
            return Ok(());
        }
        if let Some(faults) = &self.faults {
            faults.hold_sync();
            if let Some(e) = faults.sync_failure() {
                return Err(e);
            }
            if faults.skips_sync() {
                self.skipped.store(true, Ordering::Relaxed);
                return Ok(());
            }
        }
        for &(addr, len) in &self.ranges {
            // SAFETY: a page-aligned range inside a live MAP_SHARED mapping (see above).
            let rc = unsafe { libc::msync(addr as *mut libc::c_void, len, libc::MS_SYNC) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // Recorded right here, after the msyncs returned, so that the power log stands for
        // syncs that really ran: take them out of the commit path and the power-loss test
        // sees acked records vanish.
        self.completed();
        Ok(())
    }

    /// Nothing to run (and nothing that must fail).
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty() && !self.poisoned
    }

    /// The plan as an `fdatasync` of each segment's file instead of msyncs of its ranges
    /// (the same write-back: msync(MS_SYNC) is a ranged fdatasync of the mapped file), for a
    /// caller that submits those itself (the shard's io_uring). `Ok`: the (segment base, fd)
    /// of each file to sync, then [`SyncPlan::completed`] (none: nothing to do, the skip fault
    /// answered); `Err`: the plan fails without touching the disk. The hold fault, which
    /// blocks, is for the caller to run first ([`SyncPlan::hold`]).
    pub fn fds(
        &self,
    ) -> std::io::Result<impl Iterator<Item = (u64, std::os::fd::RawFd)> + Clone + '_> {
        if self.poisoned {
            return Err(std::io::Error::other(
                "the log is poisoned by an earlier failed sync",
            ));
        }
        if let Some(faults) = &self.faults {
            if let Some(e) = faults.sync_failure() {
                return Err(e);
            }
        }
        let skip = self.faults.as_ref().is_some_and(|f| f.skips_sync());
        if skip {
            self.skipped.store(true, Ordering::Relaxed);
        }
        let targets: &[SyncTarget] = if skip { &[] } else { &self.targets };
        Ok(targets.iter().map(|t| (t.base, t.fd)))
    }

    /// Whether the hold fault is armed: the caller runs [`SyncPlan::hold`] off its thread.
    pub fn may_hold(&self) -> bool {
        self.faults.as_ref().is_some_and(|f| f.holds())
    }

    /// Waits while the hold fault says so (blocking).
    pub fn hold(&self) {
        if let Some(faults) = &self.faults {
            faults.hold_sync();
        }
    }

    /// The caller's syncs of [`SyncPlan::fds`] all succeeded: recorded in the power log.
    pub fn completed(&self) {
        if self.skipped.load(Ordering::Relaxed) {
            return;
        }
        if let Some(faults) = &self.faults {
            for t in &self.targets {
                if let Some(path) = &t.path {
                    faults.record(Event::Synced {
                        path,
                        len: t.upto as u64,
                        size: t.size as u64,
                    });
                }
            }
        }
    }
}

/// Preparing the next segment off the shard's thread: create, fallocate to full size,
/// fsync it and its directory, map it ([`Segment::create`]). From [`Log::spare_job`]; run it
/// on any thread (the shard starts one); its result goes back to the log, which takes it at
/// the next [`Log::collect_spare`] or roll.
pub struct SpareJob {
    dir: PathBuf,
    base: u64,
    size: usize,
    faults: Arc<Faults>,
    done: std::sync::mpsc::SyncSender<Result<Segment, LogError>>,
}

impl SpareJob {
    /// Creates the segment (blocking: a posix_fallocate of the whole segment and two fsyncs)
    /// and brings its pages into the page cache ([`Segment::populate`]), so that appends into
    /// it do not fault them in on the shard's thread.
    pub fn run(self) {
        let made = Segment::create(&self.dir, self.base, self.size, &self.faults);
        if let Ok(segment) = &made {
            segment.populate();
        }
        // The log may be gone (shutdown): the file stays, and the next open adopts it.
        let _ = self.done.send(made);
    }
}

/// When the active segment is this full (1/N), the spare is prepared: an idle or small broker
/// keeps one segment on disk, and a busy one has half a segment of appends to prepare in.
const SPARE_AT_FILL: usize = 2;
/// How long a failed preparation waits before the next try (a full disk).
const SPARE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

impl Log {
    /// Opens (or creates) the log in `dir`, recovering every segment, with the faults the
    /// broker installed ([`fault::install`]; none elsewhere). `visit(pos, record)` is called
    /// for every valid record in position order, to rebuild in-memory state.
    pub fn open(
        dir: &Path,
        segment_size: usize,
        visit: impl FnMut(u64, Record),
    ) -> Result<(Log, Recovery), LogError> {
        Self::open_with(dir, segment_size, fault::active(), visit)
    }

    /// [`Log::open`] with explicit fault injection (tests).
    pub fn open_with(
        dir: &Path,
        segment_size: usize,
        faults: Arc<Faults>,
        mut visit: impl FnMut(u64, Record),
    ) -> Result<(Log, Recovery), LogError> {
        let started = Instant::now();
        durable::create_dir(dir, &faults).map_err(|e| LogError::io(dir, "create log dir", e))?;
        let mut bases: Vec<u64> = std::fs::read_dir(dir)
            .map_err(|e| LogError::io(dir, "list log dir", e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| segment::parse_name(&e.file_name().to_string_lossy()))
            .collect();
        bases.sort_unstable();
        let trailing = bases.last().copied();
        let mut report = Recovery::default();
        let mut segments = Vec::with_capacity(bases.len());
        for base in bases {
            let path = dir.join(segment::file_name(base));
            let is_trailing = Some(base) == trailing;
            let mut failure = None;
            let mut newest = 0u64;
            let (mut seg, scan) = Segment::recover(
                base,
                path.clone(),
                is_trailing,
                &faults,
                |off, kind, payload| match record::decode(kind, payload) {
                    Ok(rec) => {
                        newest = newest.max(rec.time_ms());
                        visit(base + off as u64, rec);
                    }
                    Err(e) => {
                        failure.get_or_insert((base + off as u64, e.to_string()));
                    }
                },
            )?;
            if let Some((pos, why)) = failure {
                return Err(LogError::Corrupt { pos, why });
            }
            if is_trailing && scan.records == 0 && seg.capacity() != segment_size {
                // A segment is preallocated and fsync'ed to its full size before its name is
                // made durable and before any record goes into it, and every later msync of
                // its data would have made its size durable too. So a newest segment that
                // came back shorter than a full one and holds no valid record was being
                // created by a roll when the power went: nothing in it was ever synced, let
                // alone acknowledged. (Older releases did not fsync new segments; LazyFS found
                // such a file at 0 bytes, and the next roll then failed with EEXIST.)
                tracing::warn!(
                    path = %path.display(),
                    bytes = seg.capacity(),
                    "the newest log segment came back empty or short after a crash; recreating it"
                );
                drop(seg);
                std::fs::remove_file(&path)
                    .map_err(|e| LogError::io(&path, "remove torn segment", e))?;
                faults.record(Event::Remove(&path));
                seg = Segment::create(dir, base, segment_size, &faults)?;
                report.recreated = Some(base);
            }
            report.records += scan.records;
            report.bytes += seg.len as u64;
            report.zeroed += scan.zeroed as u64;
            if let Some((off, why)) = scan.torn_at {
                report.torn_at = Some((base + off as u64, why));
            }
            seg.newest_ms = newest;
            segments.push(seg);
        }
        if report.zeroed > 0 {
            tracing::warn!(
                dir = %dir.display(),
                bytes = report.zeroed,
                "zeroed stale bytes past the end of the log (written before a crash, never synced)"
            );
        }
        let spare = match &segments[..] {
            [.., prev, last]
                if prev.records > 0 && last.is_empty() && last.capacity() == segment_size =>
            {
                segments.pop()
            }
            _ => None,
        };
        if let Some(spare) = &spare {
            // The one before is the active segment again: its tail gets the stale-record
            // rule (the spare's whole content was zeroed as the trailing one's).
            let active = segments.len() - 1;
            report.zeroed += segments[active].zero_tail(&faults)? as u64;
            report.spare = Some(spare.base);
            tracing::info!(
                dir = %dir.display(),
                spare = spare.base,
                "the newest segment was a prepared spare that took no record; keeping it as the spare"
            );
        }
        report.rewritten = rewrite_after_poisoning(dir, &mut segments, &faults)?;
        report.segments = segments.len();
        let mut log = Log {
            dir: dir.to_path_buf(),
            segment_size,
            segments,
            spare,
            preparing: None,
            spare_retry_at: None,
            sync_in_flight: Vec::new(),
            poisoned: false,
            owe_failure: false,
            faults,
            scratch: rkyv::util::AlignedVec::new(),
            plan_vecs: Vec::new(),
        };
        if log.segments.is_empty() {
            log.segments
                .push(Segment::create(dir, 0, segment_size, &log.faults)?);
        }
        report.elapsed = started.elapsed();
        Ok((log, report))
    }

    /// Appends `rec`; returns its position. Not durable until [`Log::sync`].
    pub fn append<'a>(&mut self, rec: impl Into<record::Append<'a>>) -> Result<u64, LogError> {
        let rec = rec.into();
        // Borrowed records (the send path's, group messages) are archived straight into the
        // segment's map when the active segment surely has room: the body's one copy into the
        // log. Anything else, or a record that may not fit, goes through the reused scratch
        // buffer, framed into the map. (Should the bound ever be short, the in-place attempt
        // fails and leaves nothing; the scratch path then appends the record or says why not.)
        if let Some(bound) = rec.archive_bound() {
            if !self.poisoned && self.active().remaining() >= record::framed_len(bound) {
                if let Ok(pos) = self.archive_in_place(&rec, bound) {
                    return Ok(pos);
                }
            }
        }
        let scratch = std::mem::take(&mut self.scratch);
        let payload = match rec.archive_in(scratch) {
            Ok(payload) => payload,
            Err(e) => return Err(LogError::Serialize(e.to_string())),
        };
        let size = record::framed_len(payload.len());
        let prepared = self.prepare(size);
        let pos = prepared.map(|_| {
            let seg = self.active_mut();
            let off = seg.append_with(size, rec.time_ms(), |out| {
                record::frame_into(rec.kind(), &payload, out)
            });
            seg.base + off as u64
        });
        self.scratch = payload;
        pos
    }

    /// Appends a borrowed record ([`record::Append::archive_bound`] is `Some`) in place into
    /// room that [`Log::prepare`] made for that bound (so it lands after what was appended
    /// with it, in the same segment); never rolls. Fails, appending nothing, without that room.
    pub fn append_prepared(&mut self, rec: record::Append<'_>) -> Result<u64, LogError> {
        let room = |what: &str| LogError::Serialize(format!("{what}: no room prepared for it"));
        let bound = rec.archive_bound().ok_or_else(|| room("an owned record"))?;
        if self.poisoned {
            return Err(self.poisoned_error());
        }
        if self.active().remaining() < record::framed_len(bound) {
            return Err(room("a borrowed record"));
        }
        self.archive_in_place(&rec, bound)
            .map_err(|e| LogError::Serialize(e.to_string()))
    }

    /// Archives `rec` into the active segment's map (which has room for `bound`); its position.
    fn archive_in_place(
        &mut self,
        rec: &record::Append<'_>,
        bound: usize,
    ) -> Result<u64, rkyv::rancor::Error> {
        let seg = self.active_mut();
        seg.append_archived(rec.kind(), bound, rec.time_ms(), |out| {
            rec.archive_into(out)
        })
        .map(|off| seg.base + off as u64)
    }

    /// Frames `rec` for [`Log::append_framed`].
    pub fn frame(rec: &Record) -> Result<Vec<u8>, LogError> {
        record::frame(rec).map_err(|e| LogError::Serialize(e.to_string()))
    }

    /// Makes sure the active segment can take `bytes` more (rolling to a new one if not), so
    /// records appended together land in one segment; returns the active segment's base.
    /// Fails once the log is poisoned (a sync failed): nothing more may be appended.
    pub fn prepare(&mut self, bytes: usize) -> Result<u64, LogError> {
        if self.poisoned {
            return Err(self.poisoned_error());
        }
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
    /// finish with [`Log::end_sync`]. On a poisoned log, a plan that fails: the first one
    /// after the failure always, later ones if anything was appended since the last plan (an
    /// empty one otherwise, so an idle periodic sync stays quiet).
    pub fn begin_sync(&mut self) -> SyncPlan {
        let (ranges, targets) = self.plan_vecs.pop().unwrap_or_default();
        let mut plan = SyncPlan {
            ranges,
            targets,
            poisoned: false,
            skipped: AtomicBool::new(false),
            pinned: None,
            faults: self.faults.is_armed().then(|| self.faults.clone()),
        };
        let recording = self.faults.is_recording();
        for seg in &mut self.segments {
            if let Some((addr, len, upto)) = seg.take_unsynced() {
                plan.ranges.push((addr, len));
                plan.targets.push(SyncTarget {
                    base: seg.base,
                    fd: std::os::fd::AsRawFd::as_raw_fd(seg.file()),
                    upto,
                    path: recording.then(|| seg.path.clone()),
                    size: seg.capacity(),
                });
            }
        }
        if self.poisoned && (!plan.ranges.is_empty() || std::mem::take(&mut self.owe_failure)) {
            plan.ranges.clear();
            plan.targets.clear();
            plan.poisoned = true;
        }
        plan.pinned = plan.targets.iter().map(|t| t.base).min();
        self.sync_in_flight.extend(plan.pinned);
        plan
    }

    /// Ends a [`Log::begin_sync`]; returns whether what it covered is durable (and may be
    /// acknowledged). Plans end in the order they began. A failure poisons the log: the
    /// kernel may already have marked the pages it could not write clean, so syncing them
    /// again would "succeed" without writing them (fsyncgate) — and so may a plan that ran
    /// alongside the failing one (the error is reported once per file): once poisoned, no
    /// later plan counts as durable either.
    pub fn end_sync(&mut self, mut plan: SyncPlan, ok: bool) -> bool {
        let durable = self.settle_sync(&mut plan, ok);
        if self.plan_vecs.len() < MAX_PLAN_VECS {
            let (mut ranges, mut targets) = (plan.ranges, plan.targets);
            ranges.clear();
            targets.clear();
            self.plan_vecs.push((ranges, targets));
        }
        durable
    }

    /// [`Log::end_sync`]'s decision: what became durable, and whether all of it did.
    fn settle_sync(&mut self, plan: &mut SyncPlan, ok: bool) -> bool {
        if let Some(base) = plan.pinned {
            if let Some(i) = self.sync_in_flight.iter().position(|&b| b == base) {
                self.sync_in_flight.swap_remove(i);
            }
        }
        if plan.poisoned {
            return false;
        }
        if !ok {
            self.poison("a group-commit sync failed");
            return false;
        }
        if self.poisoned && plan.pinned.is_some() {
            return false;
        }
        if plan.skipped.load(Ordering::Relaxed) {
            return true; // the skip fault: "durable" without a sync (tests must catch it)
        }
        for t in &plan.targets {
            if let Some(seg) = self.segments.iter_mut().find(|s| s.base == t.base) {
                seg.mark_durable(t.upto);
            }
        }
        true
    }

    pub fn sync_in_flight(&self) -> bool {
        !self.sync_in_flight.is_empty()
    }

    /// A sync failed in this process: appends and syncs fail with [`LogError::Poisoned`].
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Makes everything appended so far durable (msync), sealed segments included.
    pub fn sync(&mut self) -> Result<(), LogError> {
        if self.poisoned {
            return Err(self.poisoned_error());
        }
        for i in 0..self.segments.len() {
            let result = self.segments[i].sync(&self.faults);
            self.poison_on_sync_failure(result)?;
        }
        Ok(())
    }

    /// Whether everything appended so far is covered by a completed sync.
    pub fn is_durable(&self) -> bool {
        self.segments.iter().all(Segment::is_durable)
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
        // A running SyncPlan points into the maps of the segments it covers: those wait for
        // the next round.
        let pinned = self
            .sync_in_flight
            .iter()
            .copied()
            .min()
            .unwrap_or(u64::MAX);
        loop {
            let sealed = self.segments.len() > 1;
            let Some(oldest) = self.segments.first() else {
                break;
            };
            if oldest.base >= pinned {
                break;
            }
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
            self.faults.record(Event::Remove(&path));
            let synced = durable::sync_dir(&self.dir, &self.faults)
                .map_err(|e| LogError::sync(&self.dir, "fsync log dir", e));
            self.poison_on_sync_failure(synced)?;
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

    /// True once every byte before `pos` is covered by a completed sync.
    pub fn is_synced(&self, pos: u64) -> bool {
        self.segments
            .iter()
            .filter(|s| s.base < pos)
            .all(|s| s.base + s.durable_len() as u64 >= pos.min(s.base + s.len as u64))
    }

    /// Bytes of segment files on disk (they are preallocated, so this is capacity), the
    /// spare's included.
    pub fn disk_bytes(&self) -> u64 {
        let spare = self.spare.as_ref().map_or(0, |s| s.capacity() as u64);
        self.segments
            .iter()
            .map(|s| s.capacity() as u64)
            .sum::<u64>()
            + spare
    }

    /// The next segment to prepare off the shard's thread, once the active segment is half
    /// full and none is prepared or being prepared ([`SpareJob`]). `None` also while a
    /// failed preparation waits to be tried again, and on a poisoned log.
    pub fn spare_job(&mut self) -> Option<SpareJob> {
        if self.spare.is_some() || self.preparing.is_some() || self.poisoned {
            return None;
        }
        if self.spare_retry_at.is_some_and(|at| Instant::now() < at) {
            return None;
        }
        let active = self.active();
        if active.len < active.capacity() / SPARE_AT_FILL {
            return None;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.preparing = Some(rx);
        Some(SpareJob {
            dir: self.dir.clone(),
            base: self.next_base(),
            size: self.segment_size,
            faults: self.faults.clone(),
            done: tx,
        })
    }

    /// Takes the result of a finished [`SpareJob`], if there is one (without waiting).
    pub fn collect_spare(&mut self) {
        let Some(rx) = &self.preparing else {
            return;
        };
        match rx.try_recv() {
            Ok(made) => {
                self.preparing = None;
                self.adopt_spare(made);
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                // The job was dropped unrun (its thread could not start): try again later.
                self.preparing = None;
                self.spare_retry_at = Some(Instant::now() + SPARE_RETRY);
            }
        }
    }

    /// Whether a prepared spare is waiting for the next roll.
    pub fn has_spare(&self) -> bool {
        self.spare.is_some()
    }

    fn adopt_spare(&mut self, made: Result<Segment, LogError>) {
        match made {
            Ok(seg) if seg.base == self.next_base() && seg.capacity() == self.segment_size => {
                self.spare = Some(seg)
            }
            Ok(seg) => {
                // Cannot happen (the base is fixed by the active segment, which only a roll
                // changes, and a roll takes the job's result first); never keep a wrong one.
                tracing::warn!(
                    base = seg.base,
                    "dropping a spare segment that does not fit"
                );
            }
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot prepare the next log segment; a roll will try again");
                self.spare_retry_at = Some(Instant::now() + SPARE_RETRY);
            }
        }
    }

    /// The base of the segment after the active one.
    fn next_base(&self) -> u64 {
        self.active().base + self.active().capacity() as u64
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

    /// Seals the active segment (synced) and starts the next one: the spare if one is ready
    /// (a preparation still running is waited for: it is creating that very file), else a
    /// segment made here.
    fn roll(&mut self) -> Result<(), LogError> {
        let last = self.segments.len() - 1;
        let synced = self.segments[last].sync(&self.faults);
        self.poison_on_sync_failure(synced)?;
        if let Some(rx) = self.preparing.take() {
            if let Ok(made) = rx.recv() {
                self.adopt_spare(made);
            }
        }
        let seg = match self.spare.take() {
            Some(seg) => seg,
            None => {
                let next = self.next_base();
                let created = Segment::create(&self.dir, next, self.segment_size, &self.faults);
                self.poison_on_sync_failure(created)?
            }
        };
        self.segments.push(seg);
        self.spare_retry_at = None;
        Ok(())
    }

    /// Passes `result` on, poisoning the log first if it is a failed sync.
    fn poison_on_sync_failure<T>(&mut self, result: Result<T, LogError>) -> Result<T, LogError> {
        if let Err(LogError::Sync { what, .. }) = &result {
            self.poison(what);
        }
        result
    }

    fn poison(&mut self, what: &str) {
        if self.poisoned {
            return;
        }
        self.poisoned = true;
        self.owe_failure = true;
        let from = self
            .segments
            .iter()
            .find(|s| !s.is_durable())
            .map_or_else(|| self.head_position(), |s| s.base + s.durable_len() as u64);
        // Best effort (the disk is failing): tells the next open to write these pages again.
        let marker = self.dir.join(POISON_MARKER);
        let marked = std::fs::write(&marker, format!("{from}\n"))
            .and_then(|()| std::fs::File::open(&marker)?.sync_all());
        tracing::error!(
            dir = %self.dir.display(),
            failed = what,
            from,
            marker_written = marked.is_ok(),
            "log poisoned: a sync failed, so nothing more is appended or acknowledged until a restart recovers from the disk"
        );
    }

    fn poisoned_error(&self) -> LogError {
        LogError::Poisoned {
            dir: self.dir.clone(),
        }
    }
}

#[cfg(test)]
mod tests;

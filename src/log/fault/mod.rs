//! Test-only fault injection for the storage layer, switched on by environment variables
//! (never by the config file: nothing here is for production use).
//!
//! | variable | while set |
//! |---|---|
//! | `RINGPOST_FAULT_POWER_LOG=<file>` | after every *completed* sync, one line is appended to `<file>` saying what is now durable ([`Event`]); [`simulate_power_cut`] replays it |
//! | `RINGPOST_FAULT_SYNC_FAIL_FILE=<file>` | while `<file>` exists, every msync of appended records (group commit, roll, shutdown) fails with EIO before touching the disk; recovery's own syncs are not affected |
//! | `RINGPOST_FAULT_SKIP_SYNC_FILE=<file>` | while `<file>` exists, the group-commit sync ([`super::SyncPlan`]) reports success without syncing, and records nothing as durable: the "msync removed" build a power-loss test must catch |
//! | `RINGPOST_FAULT_SYNC_HOLD_FILE=<file>` | while `<file>` exists, the group-commit sync waits before it starts: what is appended meanwhile is in the log but not acknowledged (a kill -9 then lands between append and ack) |
//! | `RINGPOST_FAULT_NO_SPACE_FILE=<file>` | while `<file>` exists, creating a segment fails with ENOSPC (see [`super::segment`]) |
//!
//! A relative `<file>` is taken relative to the data directory, so one value serves every
//! broker a test process starts. The broker reads the variables once, when it opens its data
//! directory ([`install`]); code that opens a [`super::Log`] without one (tools, unit tests)
//! runs without faults unless it passes its own [`Faults`] to [`super::Log::open_with`].
//!
//! # The power log
//! Text, one event per line, fields separated by tabs, paths relative to the data directory:
//!
//! ```text
//! mkdir      <dir>                    a directory was created
//! create     <file>                   a file was created (empty; nothing of it durable yet)
//! remove     <file>                   a file was deleted
//! rename     <from> <to>              a file was renamed
//! synced     <file> <len> <size>      fsync/msync completed: bytes [0, len) and the size are durable
//! dirsynced  <dir>                    fsync of <dir> completed: its entries as of now are durable
//! ```
//!
//! Each line is written after the syscall it describes returned, and before the caller acts on
//! it (a SendAck{OK} follows the `synced` line of the sync that covers the message), so after a
//! SIGKILL the log never claims more than the disk holds.

mod power_cut;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

pub use power_cut::{simulate_power_cut, simulate_power_cut_with, PowerCut, Unsynced};

pub const POWER_LOG_ENV: &str = "RINGPOST_FAULT_POWER_LOG";
pub const SYNC_FAIL_ENV: &str = "RINGPOST_FAULT_SYNC_FAIL_FILE";
pub const SKIP_SYNC_ENV: &str = "RINGPOST_FAULT_SKIP_SYNC_FILE";
pub const SYNC_HOLD_ENV: &str = "RINGPOST_FAULT_SYNC_HOLD_FILE";

/// How often a held sync looks whether it may go on.
const HOLD_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// What was made durable, as written to the power log.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    Mkdir(&'a Path),
    Create(&'a Path),
    Remove(&'a Path),
    Renamed { from: &'a Path, to: &'a Path },
    Synced { path: &'a Path, len: u64, size: u64 },
    DirSynced(&'a Path),
}

/// The faults one log (or the whole broker) runs with. [`Faults::none`] costs one branch per
/// sync.
#[derive(Debug, Default)]
pub struct Faults {
    /// Paths in the power log are written relative to this.
    root: PathBuf,
    power_log: Option<File>,
    sync_fail: Option<PathBuf>,
    skip_sync: Option<PathBuf>,
    sync_hold: Option<PathBuf>,
}

impl Faults {
    pub fn none() -> Faults {
        Faults::default()
    }

    /// Faults for the data directory `root`, none armed yet.
    pub fn for_dir(root: &Path) -> Faults {
        Faults {
            root: root.to_path_buf(),
            ..Faults::default()
        }
    }

    /// The faults the environment asks for (see the module doc).
    pub fn from_env(data_dir: &Path) -> std::io::Result<Faults> {
        let resolve = |var: &str| {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(|v| data_dir.join(v))
        };
        let mut faults = Faults::for_dir(data_dir);
        if let Some(path) = resolve(POWER_LOG_ENV) {
            faults = faults.with_power_log(&path)?;
        }
        faults.sync_fail = resolve(SYNC_FAIL_ENV);
        faults.skip_sync = resolve(SKIP_SYNC_ENV);
        faults.sync_hold = resolve(SYNC_HOLD_ENV);
        Ok(faults)
    }

    /// Appends durability events to `path` (created if missing).
    pub fn with_power_log(mut self, path: &Path) -> std::io::Result<Faults> {
        self.power_log = Some(OpenOptions::new().create(true).append(true).open(path)?);
        Ok(self)
    }

    /// Syncs fail with EIO while `path` exists.
    pub fn with_sync_fail(mut self, path: &Path) -> Faults {
        self.sync_fail = Some(path.to_path_buf());
        self
    }

    /// Group-commit syncs are skipped while `path` exists.
    pub fn with_skip_sync(mut self, path: &Path) -> Faults {
        self.skip_sync = Some(path.to_path_buf());
        self
    }

    /// Whether a power log is being written.
    pub fn is_recording(&self) -> bool {
        self.power_log.is_some()
    }

    /// Whether the sync-hold fault is configured (its file may or may not exist now).
    pub fn holds(&self) -> bool {
        self.sync_hold.is_some()
    }

    pub fn is_armed(&self) -> bool {
        self.power_log.is_some()
            || self.sync_fail.is_some()
            || self.skip_sync.is_some()
            || self.sync_hold.is_some()
    }

    /// Waits while the hold file exists (called on the blocking pool, never on a shard).
    pub fn hold_sync(&self) {
        while self.sync_hold.as_ref().is_some_and(|p| p.exists()) {
            std::thread::sleep(HOLD_POLL);
        }
    }

    /// The injected sync failure, if armed now.
    pub fn sync_failure(&self) -> Option<std::io::Error> {
        self.sync_fail
            .as_ref()
            .filter(|p| p.exists())
            .map(|_| std::io::Error::from_raw_os_error(libc::EIO))
    }

    pub fn skips_sync(&self) -> bool {
        self.skip_sync.as_ref().is_some_and(|p| p.exists())
    }

    /// Appends `event` to the power log, if there is one.
    pub fn record(&self, event: Event<'_>) {
        let Some(log) = &self.power_log else {
            return;
        };
        let line = match event {
            Event::Mkdir(p) => format!("mkdir\t{}\n", self.rel(p)),
            Event::Create(p) => format!("create\t{}\n", self.rel(p)),
            Event::Remove(p) => format!("remove\t{}\n", self.rel(p)),
            Event::Renamed { from, to } => {
                format!("rename\t{}\t{}\n", self.rel(from), self.rel(to))
            }
            Event::Synced { path, len, size } => {
                format!("synced\t{}\t{len}\t{size}\n", self.rel(path))
            }
            Event::DirSynced(p) => format!("dirsynced\t{}\n", self.rel(p)),
        };
        // One write(2) on an O_APPEND file: lines from different shards never interleave.
        if let Err(e) = (&*log).write_all(line.as_bytes()) {
            tracing::error!(error = %e, "cannot write the power-cut fault log");
        }
    }

    fn rel(&self, path: &Path) -> String {
        let rel = path.strip_prefix(&self.root).unwrap_or(path);
        if rel.as_os_str().is_empty() {
            ".".to_owned()
        } else {
            rel.to_string_lossy().into_owned()
        }
    }
}

static ACTIVE: OnceLock<Arc<Faults>> = OnceLock::new();
static NONE: OnceLock<Arc<Faults>> = OnceLock::new();

/// Reads the fault variables for the broker's data directory; the first call wins.
pub fn install(data_dir: &Path) -> std::io::Result<()> {
    if ACTIVE.get().is_none() {
        let faults = Faults::from_env(data_dir)?;
        if faults.is_armed() {
            tracing::warn!(data_dir = %data_dir.display(), "storage fault injection is on (RINGPOST_FAULT_* variables; tests only)");
        }
        let _ = ACTIVE.set(Arc::new(faults));
    }
    Ok(())
}

/// The faults [`install`] set up, or none.
pub fn active() -> Arc<Faults> {
    match ACTIVE.get() {
        Some(f) => f.clone(),
        None => NONE.get_or_init(|| Arc::new(Faults::none())).clone(),
    }
}

//! Startup checks that turn io_uring and resource-limit problems into a message naming the fix,
//! instead of a panic backtrace from deep inside the executor (see kernel-tuning.md).

use std::fmt;

use crate::config::Config;
use crate::shard::bootstrap::IO_MEMORY;

/// Ring memory per shard beyond `IO_MEMORY` (three rings of glommio's default depth), used to
/// estimate the locked memory a start needs on kernels that still charge rings to memlock.
const RING_OVERHEAD: u64 = 1024 * 1024;

/// A startup problem and how to fix it.
#[derive(Debug)]
pub struct Problem {
    pub what: String,
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}\n  fix: {}\n  see: kernel-tuning.md",
            self.what, self.fix
        )
    }
}

/// Runs every check; the first failure is returned. Also raises the soft open-files limit to
/// the hard limit (each connection is one fd).
pub fn preflight(cfg: &Config) -> Result<(), Problem> {
    raise_nofile();
    // The admin listener runs its own (smaller) executor: count it like a shard.
    check_memlock(cfg.shard_count() + usize::from(cfg.admin.listen.is_some()))?;
    check_io_uring()
}

fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                tracing::info!(
                    from = lim.rlim_cur,
                    to = lim.rlim_max,
                    "raised open-files limit"
                );
            }
        }
    }
}

/// Bytes the shards need locked; root (CAP_IPC_LOCK) is exempt.
/// `executors`: the shards plus the admin thread's executor, if any.
fn check_memlock(executors: usize) -> Result<(), Problem> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit on a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Ok(());
    }
    let need = executors as u64 * (IO_MEMORY as u64 + RING_OVERHEAD);
    if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < need {
        return Err(Problem {
            what: format!(
                "locked-memory limit (RLIMIT_MEMLOCK) is {} KiB; {} executors (shards and the admin listener) need about {} KiB for their io_uring rings and buffers",
                lim.rlim_cur / 1024,
                executors,
                need / 1024
            ),
            fix: "raise it: `ulimit -l unlimited` in the shell that starts ringpost, `LimitMEMLOCK=infinity` in its systemd unit, or `* - memlock unlimited` in /etc/security/limits.conf; or run fewer shards ([server] shards)".into(),
        });
    }
    Ok(())
}

/// Creates and closes a tiny ring to prove io_uring is usable here.
fn check_io_uring() -> Result<(), Problem> {
    // io_uring_params is 120 bytes; the kernel only needs it zeroed for a default ring.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup(2) with a valid, zeroed params buffer of the kernel's size.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd >= 0 {
        // SAFETY: closing the fd we just created.
        unsafe { libc::close(fd as libc::c_int) };
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    let (what, fix) = match err.raw_os_error() {
        Some(libc::ENOSYS) => (
            "this kernel has no io_uring".to_string(),
            "run on Linux 5.8 or newer built with CONFIG_IO_URING=y".to_string(),
        ),
        Some(libc::EPERM) | Some(libc::EACCES) => (
            format!("io_uring is not permitted here ({err})"),
            "set `sysctl kernel.io_uring_disabled=0` (or 1 and add this user to kernel.io_uring_group); in containers allow io_uring_setup in the seccomp profile".to_string(),
        ),
        Some(libc::ENOMEM) => (
            format!("io_uring ring could not be allocated ({err})"),
            "raise the locked-memory limit: `ulimit -l unlimited` or `LimitMEMLOCK=infinity`".to_string(),
        ),
        _ => (
            format!("io_uring_setup failed: {err}"),
            "check that io_uring is enabled in this kernel and container".to_string(),
        ),
    };
    Err(Problem { what, fix })
}

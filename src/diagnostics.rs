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

/// Fds the process holds besides its connections (listeners, rings, eventfds, the log's
/// segment files, the epoll sets), and connections' second fd while one is handed off.
const FD_HEADROOM: usize = 4096;

/// Runs every check; the first failure is returned. Also raises the soft open-files limit to
/// the hard limit (each connection is one fd) and grows the fd table to match
/// ([`reserve_fd_table`]). Call it while the process has one thread.
pub fn preflight(cfg: &Config) -> Result<(), Problem> {
    raise_nofile();
    let connections = match cfg.limits.max_connections {
        0 => usize::MAX,
        n => n,
    };
    reserve_fd_table(connections.saturating_add(FD_HEADROOM));
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

/// Grows this process's fd table now to hold `want` fds (capped by the soft RLIMIT_NOFILE);
/// returns the table's new minimum size, or None where it was left alone.
///
/// Why: the kernel doubles the table as fds are opened, and in a multi-threaded process each
/// doubling waits for an RCU grace period (`expand_fdtable` calls `synchronize_rcu`) in the
/// thread that opened the fd. In a login storm against a fresh broker those waits, one per
/// doubling from 64 to 32,768 fds, stalled a shard for milliseconds at a time and every login
/// queued behind it (BENCHMARKS.md, "Where a login's time goes"). Grown once, while the process
/// has one thread, the table never shrinks. It costs the kernel 8 bytes per slot (8 MiB for a
/// million fds), which a broker that fills its limit would allocate anyway.
pub fn reserve_fd_table(want: usize) -> Option<usize> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit on a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    let limit = usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX);
    let top = want.min(limit).checked_sub(1)?;
    let top_fd = libc::c_int::try_from(top).ok()?;
    if top < 1024 {
        return None; // the table starts at 64 slots: a few doublings cost nothing to speak of
    }
    // SAFETY: eventfd(2) makes a new fd we own; F_DUPFD_CLOEXEC duplicates it onto the lowest
    // free fd >= `top`, which makes the kernel size the table to hold `top`; both are closed.
    unsafe {
        let fd = libc::eventfd(0, libc::EFD_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let high = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, top_fd);
        if high >= 0 {
            libc::close(high);
        }
        libc::close(fd);
        (high >= 0).then_some(top + 1)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling process's fd table size (`FDSize` in /proc/self/status).
    fn fd_table_size() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("FDSize:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("FDSize line")
    }

    #[test]
    fn the_fd_table_is_grown_to_the_reservation_at_once() {
        raise_nofile();
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit on a local struct.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        let limit = lim.rlim_cur as usize;
        let before = fd_table_size();
        let want = (before * 4).max(4096).min(limit);
        assert!(
            want > before,
            "needs an open-files limit above {before} (have {limit}): raise ulimit -n"
        );
        assert_eq!(reserve_fd_table(want), Some(want));
        assert!(fd_table_size() >= want, "{} < {want}", fd_table_size());
        // Below 1,024 fds the table is left to grow by itself.
        assert_eq!(reserve_fd_table(100), None);
    }
}

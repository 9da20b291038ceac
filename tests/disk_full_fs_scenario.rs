//! A really full disk: the data directory is a size-limited tmpfs mounted by the test (no
//! injected fault). Sends fill it until SendAck{STORAGE_UNAVAILABLE} — never a crash, never a
//! SIGBUS (segments are preallocated, so the disk runs out when a segment is created, not on
//! a store into the map) — nothing acked is lost, and once space is freed sends succeed again
//! without a restart.
//!
//! Needs root (or CAP_SYS_ADMIN) for `mount -t tmpfs`; without it the test fails loudly.

use std::path::{Path, PathBuf};
use std::process::Command;

use ringpost::client::Event;
use ringpost::protocol::Code;
use ringpost_harness::*;

/// A tmpfs of `size` mounted at `path`; unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .expect("run mount(8)");
        assert!(
            out.status.success(),
            "THIS TEST NEEDS A REAL SMALL FILE SYSTEM: `mount -t tmpfs -o size={size} tmpfs {}` failed ({}): {}. Run the test as root (or with CAP_SYS_ADMIN); it is not skipped, because a skipped disk-full test proves nothing.",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }

    /// Bytes still free on the file system.
    fn free_bytes(&self) -> u64 {
        let c = std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: statvfs is a plain C struct of integers, for which all-zero is valid.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated path and a valid, writable struct.
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        assert_eq!(rc, 0, "statvfs {}", self.path.display());
        st.f_bavail as u64 * st.f_frsize as u64
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds it open: detach it so it goes once released.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

#[test]
fn a_full_tmpfs_refuses_sends_loses_nothing_acked_and_recovers_when_space_returns() {
    const SEGMENT: u64 = 1 << 20;
    let dir = test_dir("disk-full-fs");
    let fs = Tmpfs::mount(&dir.join("data"), "8m");
    let broker = test_broker()
        .dir(&dir)
        .shards(1)
        .limits("sends_per_sec = 1000000")
        .storage("segment_size = \"1MiB\"\nfsync = \"always\"")
        .start();
    // Leave room for two more segments and a half: the third roll hits a full disk.
    let filler = fs.path.join("filler");
    let fill = fs.free_bytes().saturating_sub(2 * SEGMENT + SEGMENT / 2);
    std::fs::write(&filler, vec![0xa5u8; fill as usize]).expect("write the filler");
    assert!(fs.free_bytes() < 3 * SEGMENT, "free: {}", fs.free_bytes());

    let body = vec![7u8; 1000];
    run(async {
        let mut a = broker.connect("dff-a", "d").await;
        // Pipelined sends, 32 at a time, until a window sees a refusal. (Refusals are
        // answered at once, OKs after their group commit: acks of one window may cross.)
        let mut acked = Vec::new();
        let mut refused = Vec::new();
        let mut id = 0u64;
        while refused.is_empty() {
            for _ in 0..32 {
                id += 1;
                a.send(id, "dff-b", &body).await.unwrap();
            }
            for _ in 0..32 {
                match expect_event(&mut a).await {
                    Event::SendAck {
                        client_msg_id,
                        status: Code::OK,
                        ..
                    } => acked.push(client_msg_id),
                    Event::SendAck {
                        client_msg_id,
                        status: Code::STORAGE_UNAVAILABLE,
                        ..
                    } => refused.push(client_msg_id),
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert!(id < 20_000, "the file system never filled up");
        }
        acked.sort_unstable();
        refused.sort_unstable();
        assert!(
            acked.len() > 2000,
            "about three segments of messages went in before the disk filled: {}",
            acked.len()
        );
        // Once the active segment is full every send is refused: OKs are a prefix.
        let k = acked.len() as u64;
        assert_eq!(acked, (1..=k).collect::<Vec<_>>());
        assert_eq!(refused, (k + 1..=id).collect::<Vec<_>>());
        // Still refused while the disk is full.
        id += 1;
        a.send(id, "dff-b", &body).await.unwrap();
        expect_ack(&mut a, id, Code::STORAGE_UNAVAILABLE).await;

        // Nothing acked is lost: a fresh device replays every acked message, in order.
        let mut b = broker.connect("dff-b", "fresh").await;
        assert_eq!(b.login_info().head_seq, acked.len() as u64);
        for (i, want) in acked.iter().enumerate() {
            let d = expect_deliver(&mut b).await;
            assert_eq!((d.seq, d.client_msg_id), (i as u64 + 1, *want));
        }

        // Space returns: sends go through again, with no restart.
        std::fs::remove_file(&filler).unwrap();
        id += 1;
        a.send(id, "dff-b", &body).await.unwrap();
        expect_ack(&mut a, id, Code::OK).await;
        let d = expect_deliver(&mut b).await;
        assert_eq!(
            (d.seq, d.client_msg_id),
            (acked.len() as u64 + 1, id),
            "no seq was burnt by the refusals"
        );
    });
    assert!(
        broker.stderr().contains("No space left on device"),
        "the broker logged the real ENOSPC"
    );
    drop(broker);
    drop(fs);
    let _ = std::fs::remove_dir_all(&dir);
}

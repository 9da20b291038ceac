//! Segment-log benchmarks: append throughput under each sync pattern, replay (read + encode a
//! Deliver frame, as a device's refill does), and recovery time of a large log.
//!
//! `cargo bench -p ringpost-bench --bench log` (set RINGPOST_BENCH_DIR to put the files on
//! the disk you care about; default: the system temp dir). Under `cargo test` it runs tiny.

use std::path::PathBuf;
use std::time::Instant;

use ringpost::log::record::{MessageRecord, Record, NO_POSITION};
use ringpost::log::Log;

fn full() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn scratch(name: &str) -> PathBuf {
    let base = std::env::var_os("RINGPOST_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("ringpost-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn message(seq: u64, body: &[u8]) -> Record {
    Record::Message(MessageRecord {
        to: "user-42".into(),
        seq,
        from: "user-7".into(),
        client_msg_id: seq,
        sent_at_ms: 1_700_000_000_000 + seq,
        body: body.to_vec(),
        prev: NO_POSITION,
    })
}

/// Appends `n` records of `size`-byte bodies, syncing every `sync_every` appends (0: never).
fn append(n: u64, size: usize, sync_every: u64) -> f64 {
    let dir = scratch("append");
    let (mut log, _) = match Log::open(&dir, 128 << 20, |_, _| {}) {
        Ok(x) => x,
        Err(e) => panic!("open: {e}"),
    };
    let body = vec![0xab; size];
    let t = Instant::now();
    for seq in 1..=n {
        if let Err(e) = log.append(&message(seq, &body)) {
            panic!("append: {e}");
        }
        if sync_every > 0 && seq % sync_every == 0 {
            if let Err(e) = log.sync() {
                panic!("sync: {e}");
            }
        }
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    drop(log);
    let _ = std::fs::remove_dir_all(&dir);
    rate
}

/// Writes `n` records, then reads them back by position and encodes each as a Deliver frame.
fn replay(n: u64, size: usize) -> f64 {
    let dir = scratch("replay");
    let (mut log, _) = match Log::open(&dir, 128 << 20, |_, _| {}) {
        Ok(x) => x,
        Err(e) => panic!("open: {e}"),
    };
    let body = vec![0xcd; size];
    let positions: Vec<u64> = (1..=n)
        .map(|seq| {
            log.append(&message(seq, &body))
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    let mut out = Vec::with_capacity(1 << 20);
    let t = Instant::now();
    for (seq, pos) in positions.iter().enumerate() {
        let r = log.with_entry(*pos, |e| {
            e.encode_deliver(
                seq as u64 + 1,
                "bob",
                &ringpost::protocol::LenPrefix,
                &mut out,
            )
        });
        if let Err(e) = r {
            panic!("read: {e}");
        }
        if out.len() > 512 * 1024 {
            out.clear();
        }
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    drop(log);
    let _ = std::fs::remove_dir_all(&dir);
    rate
}

/// Builds a log of about `bytes` bytes of 1 KiB messages, then times `Log::open` on it.
fn recovery(bytes: u64) -> (f64, u64, u64) {
    let dir = scratch("recovery");
    let body = vec![0xef; 1024];
    {
        let (mut log, _) = match Log::open(&dir, 128 << 20, |_, _| {}) {
            Ok(x) => x,
            Err(e) => panic!("open: {e}"),
        };
        let mut seq = 0;
        while log.head_position() < bytes {
            seq += 1;
            if let Err(e) = log.append(&message(seq, &body)) {
                panic!("append: {e}");
            }
        }
        if let Err(e) = log.sync() {
            panic!("sync: {e}");
        }
    }
    let t = Instant::now();
    let mut records = 0u64;
    let (_, report) = match Log::open(&dir, 128 << 20, |_, _| records += 1) {
        Ok(x) => x,
        Err(e) => panic!("reopen: {e}"),
    };
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    (secs, records, report.bytes)
}

fn main() {
    let n = if full() { 1_000_000 } else { 2_000 };
    for size in [64usize, 1024] {
        for (label, every) in [
            ("no sync (fsync=never)", 0u64),
            ("sync every 1024 appends", 1024),
            ("sync every 64 appends", 64),
            ("sync every append", 1),
        ] {
            // Syncing every append is slow by design; fewer records keep the run short.
            let count = if every == 1 { n / 50 } else { n };
            let rate = append(count.max(100), size, every);
            println!("append {size:>5} B, {label:<26} {rate:>12.0} msg/s");
        }
        let rate = replay(n, size);
        println!("replay {size:>5} B (read by position + encode)   {rate:>12.0} msg/s");
    }
    let target = if full() { 1 << 30 } else { 4 << 20 };
    let (secs, records, bytes) = recovery(target);
    println!(
        "recovery of {:.0} MiB ({records} records, 1 KiB bodies): {:.3} s ({:.0} MiB/s)",
        bytes as f64 / (1 << 20) as f64,
        secs,
        bytes as f64 / (1 << 20) as f64 / secs
    );
}

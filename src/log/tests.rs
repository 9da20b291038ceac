use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;

use super::record::{CursorRecord, MessageRecord, Record, NO_POSITION};
use super::*;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "ringpost-log-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn msg(seq: u64, body_len: usize, at_ms: u64) -> Record {
    Record::Message(MessageRecord {
        to: "bob".into(),
        seq,
        from: "alice".into(),
        client_msg_id: seq * 10,
        sent_at_ms: at_ms,
        body: vec![seq as u8; body_len],
        prev: NO_POSITION,
    })
}

fn reopen(dir: &Path, size: usize) -> (Log, Recovery, Vec<(u64, Record)>) {
    let mut seen = Vec::new();
    let (log, rec) = Log::open(dir, size, |pos, r| seen.push((pos, r))).unwrap();
    (log, rec, seen)
}

#[test]
fn append_read_and_recover_across_segments() {
    let dir = TempDir::new();
    let (mut log, rec, seen) = reopen(&dir.0, 4096);
    assert_eq!((rec.records, seen.len()), (0, 0));
    let mut written = Vec::new();
    for seq in 1..=100 {
        let r = msg(seq, 100, seq);
        written.push((log.append(&r).unwrap(), r));
    }
    log.append(&Record::Cursor(CursorRecord {
        user: "bob".into(),
        device: "phone".into(),
        acked: 50,
        at_ms: 101,
    }))
    .unwrap();
    assert!(log.segment_count() > 1, "rolled over");
    for (pos, r) in &written {
        assert_eq!(&log.read(*pos).unwrap(), r);
    }
    log.sync().unwrap();
    drop(log);

    let (log, rec, seen) = reopen(&dir.0, 4096);
    assert_eq!(rec.records, 101);
    assert_eq!(rec.torn_at, None);
    assert_eq!(&seen[..100], &written[..]);
    assert!(matches!(seen[100].1, Record::Cursor(ref c) if c.acked == 50));
    assert_eq!(log.scan_from(0).unwrap(), seen);
    assert!(
        log.read(written[0].0 + 1).is_err(),
        "mid-record position is refused"
    );
}

/// Cut the newest record at every byte offset: recovery keeps exactly the records before it,
/// and the log takes new appends that survive another reopen.
#[test]
fn a_torn_last_record_is_cut_off_at_every_byte_offset() {
    let dir = TempDir::new();
    let size = 8192;
    let (mut log, _, _) = reopen(&dir.0, size);
    let kept: Vec<(u64, Record)> = (1..=3)
        .map(|s| {
            let r = msg(s, 40, s);
            (log.append(&r).unwrap(), r)
        })
        .collect();
    let last = msg(4, 300, 4);
    let last_pos = log.append(&last).unwrap() as usize;
    log.sync().unwrap();
    let end = log.head_position() as usize;
    drop(log);
    let path = dir.0.join(segment::file_name(0));
    let pristine = std::fs::read(&path).unwrap();

    for cut in last_pos..end {
        // The record was only partly written: bytes from `cut` on never reached the disk.
        let mut bytes = pristine.clone();
        bytes[cut..end].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        let (mut log, rec, seen) = reopen(&dir.0, size);
        assert_eq!(seen, kept, "cut at {cut}");
        if cut > last_pos {
            assert!(
                rec.torn_at.is_some(),
                "cut at {cut} must be reported as torn"
            );
        }
        assert_eq!(log.head_position() as usize, last_pos, "cut at {cut}");
        let again = msg(5, 10, 5);
        let pos = log.append(&again).unwrap();
        log.sync().unwrap();
        drop(log);
        let (_, _, seen) = reopen(&dir.0, size);
        assert_eq!(seen.last(), Some(&(pos, again)), "cut at {cut}");
        std::fs::write(&path, &pristine).unwrap();
    }
}

#[test]
fn a_corrupted_byte_in_the_last_record_truncates_it() {
    let dir = TempDir::new();
    let (mut log, _, _) = reopen(&dir.0, 8192);
    let first = msg(1, 20, 1);
    let p1 = log.append(&first).unwrap();
    let p2 = log.append(&msg(2, 20, 2)).unwrap();
    log.sync().unwrap();
    drop(log);
    let path = dir.0.join(segment::file_name(0));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[p2 as usize + 30] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let (_, rec, seen) = reopen(&dir.0, 8192);
    assert_eq!(seen, vec![(p1, first)]);
    assert_eq!(rec.torn_at.map(|t| t.0), Some(p2));
}

#[test]
fn retention_deletes_whole_sealed_segments_only() {
    let dir = TempDir::new();
    let (mut log, _, _) = reopen(&dir.0, 2048);
    for seq in 1..=60 {
        log.append(&msg(seq, 100, seq * 1000)).unwrap();
    }
    let segments = log.segment_count();
    assert!(segments >= 4);
    // Nothing is older than 0 ms: nothing goes.
    assert_eq!(log.retain(0, u64::MAX, u64::MAX).unwrap(), 0);
    // Everything is older than the cutoff: every sealed segment goes, the active one stays.
    let oldest = log.retain(u64::MAX, u64::MAX, u64::MAX).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert!(oldest > 0);
    let remaining = log.scan_from(0).unwrap();
    assert!(!remaining.is_empty());
    assert!(remaining.iter().all(|(p, _)| *p >= oldest));
    drop(log);
    let (_, _, seen) = reopen(&dir.0, 2048);
    assert_eq!(seen, remaining, "retention survives a restart");
}

#[test]
fn retention_by_size_keeps_the_newest_segments() {
    let dir = TempDir::new();
    let (mut log, _, _) = reopen(&dir.0, 2048);
    for seq in 1..=60 {
        log.append(&msg(seq, 100, seq)).unwrap();
    }
    log.retain(0, 2 * 2048, u64::MAX).unwrap();
    assert_eq!(log.segment_count(), 2);
    assert!(log.disk_bytes() <= 2 * 2048);
}

#[test]
fn a_record_larger_than_a_segment_is_refused() {
    let dir = TempDir::new();
    let (mut log, _, _) = reopen(&dir.0, 1024);
    assert!(matches!(
        log.append(&msg(1, 2000, 1)),
        Err(LogError::TooLarge { .. })
    ));
    log.append(&msg(1, 10, 1)).unwrap();
}

#[derive(Debug, Clone)]
enum Op {
    Append(u8, u16),
    Sync,
    Reopen,
    Retain,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<u8>(), 0u16..600).prop_map(|(b, n)| Op::Append(b, n)),
        1 => Just(Op::Sync),
        1 => Just(Op::Reopen),
        1 => Just(Op::Retain),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The log behaves like a list of records from which retention drops a prefix: after any
    /// sequence of appends, syncs, reopens and retentions, a reopen sees exactly the model's
    /// records, at the positions append returned.
    #[test]
    fn log_matches_a_simple_model(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = TempDir::new();
        let size = 2048;
        let (mut log, _, _) = reopen(&dir.0, size);
        let mut model: Vec<(u64, Record)> = Vec::new();
        let mut t = 0u64;
        for op in ops {
            match op {
                Op::Append(b, n) => {
                    t += 1;
                    let r = msg(u64::from(b), usize::from(n), t);
                    let pos = log.append(&r).unwrap();
                    prop_assert!(model.last().is_none_or(|(p, _)| *p < pos));
                    model.push((pos, r));
                }
                Op::Sync => log.sync().unwrap(),
                Op::Reopen => {
                    log.sync().unwrap();
                    drop(log);
                    let (l, rec, seen) = reopen(&dir.0, size);
                    prop_assert_eq!(&seen, &model);
                    prop_assert_eq!(rec.torn_at, None);
                    log = l;
                }
                Op::Retain => {
                    let oldest = log.retain(t / 2, u64::MAX, u64::MAX).unwrap();
                    model.retain(|(p, _)| *p >= oldest);
                }
            }
            for (pos, r) in &model {
                prop_assert_eq!(&log.read(*pos).unwrap(), r);
            }
        }
        log.sync().unwrap();
        drop(log);
        let (_, _, seen) = reopen(&dir.0, size);
        prop_assert_eq!(seen, model);
    }
}

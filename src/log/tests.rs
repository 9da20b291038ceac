use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;

use super::fault::Faults;
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

// ---- meta file -------------------------------------------------------------------------

fn faults_with_power_log(dir: &Path) -> (Arc<Faults>, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let power = dir.join("power.log");
    let faults = Faults::for_dir(dir).with_power_log(&power).unwrap();
    (Arc::new(faults), power)
}

/// A record in a shard directory, as an older release would have left it.
fn shard_with_a_record(data: &Path) {
    let (mut log, _) = Log::open_with(
        &data.join("shard-000"),
        65536,
        Arc::new(Faults::none()),
        |_, _| {},
    )
    .unwrap();
    log.append(&msg(1, 10, 1)).unwrap();
    log.sync().unwrap();
}

#[test]
fn a_leftover_meta_temp_file_never_blocks_a_start() {
    for leftover in [&b""[..], b"shards = 4\nhash_"] {
        let dir = TempDir::new();
        std::fs::create_dir_all(&dir.0).unwrap();
        std::fs::write(dir.0.join(meta::META_TEMP), leftover).unwrap();
        meta::check_or_create(&dir.0, 4).unwrap();
        assert!(
            !dir.0.join(meta::META_TEMP).exists(),
            "the temp file is gone"
        );
        meta::check_or_create(&dir.0, 4).unwrap();
        assert!(meta::check_or_create(&dir.0, 2).is_err());
    }
}

#[test]
fn an_empty_meta_file_is_rewritten_only_while_no_shard_holds_data() {
    // Empty and no shard data (a preallocated segment without records does not count).
    let dir = TempDir::new();
    std::fs::create_dir_all(dir.0.join("shard-000")).unwrap();
    drop(Log::open(&dir.0.join("shard-000"), 65536, |_, _| {}).unwrap());
    std::fs::write(dir.0.join(meta::META_FILE), b"").unwrap();
    meta::check_or_create(&dir.0, 2).unwrap();
    assert!(matches!(
        meta::check_or_create(&dir.0, 3),
        Err(meta::MetaError::ShardCount { found: 2, .. })
    ));

    // Empty (or missing) with shard data: refused, naming the file and the fix.
    for state in ["empty", "missing"] {
        let dir = TempDir::new();
        shard_with_a_record(&dir.0);
        if state == "empty" {
            std::fs::write(dir.0.join(meta::META_FILE), b"").unwrap();
        }
        let e = meta::check_or_create(&dir.0, 1).unwrap_err();
        assert!(
            matches!(e, meta::MetaError::MissingWithData { dirs: 1, .. }),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.contains(state)
                && text.contains("shards = <count>")
                && text.contains("ringpost.meta"),
            "{text}"
        );
    }
}

#[test]
fn the_meta_file_is_written_atomically_and_survives_a_power_cut_only_once_durable() {
    let dir = TempDir::new();
    std::fs::create_dir_all(&dir.0).unwrap();
    let (faults, power) = faults_with_power_log(&dir.0);
    meta::check_or_create_with(&dir.0, 2, &faults).unwrap();
    let events = std::fs::read_to_string(&power).unwrap();
    let kinds: Vec<&str> = events
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["create", "synced", "rename", "dirsynced"],
        "temp file, fsync, rename, directory fsync: {events}"
    );
    // Cut after the rename but before the directory fsync: no meta file at all (never an
    // empty one), and the next start writes it again.
    let before_dirsync: String = events.lines().take(3).map(|l| format!("{l}\n")).collect();
    std::fs::write(&power, before_dirsync).unwrap();
    let cut = fault::simulate_power_cut(&dir.0, &power).unwrap();
    assert_eq!(cut.files_removed, 1, "{cut:?}");
    assert!(!dir.0.join(meta::META_FILE).exists());
    meta::check_or_create_with(&dir.0, 2, &faults).unwrap();
    // A cut after the directory fsync keeps it.
    fault::simulate_power_cut(&dir.0, &power).unwrap();
    meta::check_or_create(&dir.0, 2).unwrap();
    assert!(meta::check_or_create(&dir.0, 3).is_err());
}

// ---- torn segment creation ---------------------------------------------------------------

/// Appends 100-byte messages until the log has `segments` segments; returns what it wrote.
fn fill_segments(log: &mut Log, segments: usize, seq: &mut u64) -> Vec<(u64, Record)> {
    let mut out = Vec::new();
    while log.segment_count() < segments {
        *seq += 1;
        let r = msg(*seq, 100, *seq);
        out.push((log.append(&r).unwrap(), r));
    }
    out
}

#[test]
fn an_empty_or_short_trailing_segment_is_recreated_and_rolls_keep_working() {
    for short_len in [0u64, 1000] {
        let dir = TempDir::new();
        let size = 4096;
        let (mut log, _, _) = reopen(&dir.0, size);
        let mut seq = 0;
        let mut written = fill_segments(&mut log, 2, &mut seq);
        // The record that rolled sits in the new segment: drop it, as if the segment's
        // creation and everything after it never reached the disk.
        let (rolled_pos, _) = written.pop().unwrap();
        log.sync().unwrap();
        drop(log);
        let trailing = dir.0.join(segment::file_name(rolled_pos));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&trailing)
            .unwrap();
        f.set_len(0).unwrap();
        f.set_len(short_len).unwrap();
        drop(f);

        let (mut log, rec, seen) = reopen(&dir.0, size);
        assert_eq!(
            seen, written,
            "short {short_len}: the first segment is intact"
        );
        assert_eq!(rec.recreated, Some(rolled_pos), "short {short_len}");
        assert_eq!(
            std::fs::metadata(&trailing).unwrap().len(),
            size as u64,
            "recreated at full size"
        );
        // Appends go on, through at least two more rolls, and survive a reopen.
        written.extend(fill_segments(&mut log, 4, &mut seq));
        log.sync().unwrap();
        drop(log);
        let (_, rec, seen) = reopen(&dir.0, size);
        assert_eq!(seen, written, "short {short_len}");
        assert_eq!(rec.recreated, None);
    }
}

#[test]
fn a_shorter_trailing_segment_with_records_is_kept_after_segment_size_grows() {
    let dir = TempDir::new();
    let (mut log, _, _) = reopen(&dir.0, 4096);
    let mut seq = 0;
    let mut written = fill_segments(&mut log, 2, &mut seq);
    log.sync().unwrap();
    drop(log);
    let (mut log, rec, seen) = reopen(&dir.0, 8192);
    assert_eq!((seen.as_slice(), rec.recreated), (written.as_slice(), None));
    written.extend(fill_segments(&mut log, 4, &mut seq));
    log.sync().unwrap();
    drop(log);
    let (_, _, seen) = reopen(&dir.0, 8192);
    assert_eq!(seen, written);
}

/// A roll whose segment cannot be created (here: the name is taken; a full disk is covered by
/// tests/disk_full_fs_scenario.rs) fails that append without poisoning the log, and the next
/// append tries again.
#[test]
fn a_failed_roll_is_retried_by_the_next_append_and_does_not_poison() {
    let dir = TempDir::new();
    let (mut log, _, _) = reopen(&dir.0, 4096);
    let mut seq = 0;
    fill_segments(&mut log, 1, &mut seq);
    let next = log.active().base + log.active().capacity() as u64;
    let blocker = dir.0.join(segment::file_name(next));
    std::fs::create_dir(&blocker).unwrap();
    let mut failed = false;
    for _ in 0..100 {
        seq += 1;
        if log.append(&msg(seq, 100, seq)).is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed, "the roll must fail while the name is taken");
    assert!(!log.is_poisoned(), "a failed creation is not a failed sync");
    std::fs::remove_dir(&blocker).unwrap();
    seq += 1;
    log.append(&msg(seq, 100, seq)).unwrap();
    assert_eq!(log.segment_count(), 2);
}

// ---- directory fsyncs --------------------------------------------------------------------

#[test]
fn creating_and_deleting_segments_fsyncs_the_directory() {
    let dir = TempDir::new();
    let (faults, power) = faults_with_power_log(&dir.0);
    let shard = dir.0.join("shard-000");
    let (mut log, _) = Log::open_with(&shard, 2048, faults, |_, _| {}).unwrap();
    let events = std::fs::read_to_string(&power).unwrap();
    let first = segment::file_name(0);
    assert_eq!(
        events,
        format!(
            "mkdir\tshard-000\ndirsynced\t.\ncreate\tshard-000/{first}\n\
             synced\tshard-000/{first}\t0\t2048\ndirsynced\tshard-000\n"
        ),
        "shard dir made durable in the data dir; new segment fsync'ed, then its directory"
    );
    std::fs::write(&power, b"").unwrap();
    for seq in 1..=40 {
        log.append(&msg(seq, 100, seq)).unwrap();
    }
    let segments = log.segment_count();
    assert!(segments >= 3);
    log.retain(u64::MAX, u64::MAX, u64::MAX).unwrap();
    let events = std::fs::read_to_string(&power).unwrap();
    let lines: Vec<&str> = events.lines().collect();
    // Every roll: the sealed segment synced, the new one created, fsync'ed, dir fsync'ed.
    let creates = lines.iter().filter(|l| l.starts_with("create\t")).count();
    assert_eq!(creates, segments - 1, "{events}");
    for (i, l) in lines.iter().enumerate() {
        if l.starts_with("create\t") {
            assert!(
                lines[i + 1].starts_with("synced\t") && lines[i + 2] == "dirsynced\tshard-000",
                "{events}"
            );
        }
        if l.starts_with("remove\t") {
            assert_eq!(lines[i + 1], "dirsynced\tshard-000", "{events}");
        }
    }
    let removes = lines.iter().filter(|l| l.starts_with("remove\t")).count();
    assert_eq!(removes, segments - 1, "{events}");
}

// ---- poisoning (fsyncgate) ---------------------------------------------------------------

#[test]
fn a_failed_sync_poisons_the_log_until_it_is_reopened() {
    let dir = TempDir::new();
    let fail = dir.0.join("fail-sync");
    let faults = Arc::new(Faults::for_dir(&dir.0).with_sync_fail(&fail));
    let open = |faults: Arc<Faults>| {
        let mut seen = Vec::new();
        let (log, _) = Log::open_with(&dir.0, 65536, faults, |p, r| seen.push((p, r))).unwrap();
        (log, seen)
    };
    let (mut log, _) = open(faults.clone());
    let mut written = Vec::new();
    for seq in 1..=3 {
        let r = msg(seq, 10, seq);
        written.push((log.append(&r).unwrap(), r));
    }
    let plan = log.begin_sync();
    plan.run().unwrap();
    log.end_sync(plan, true);

    std::fs::write(&fail, b"").unwrap();
    let r = msg(4, 10, 4);
    written.push((log.append(&r).unwrap(), r));
    let plan = log.begin_sync();
    assert!(!plan.is_empty());
    assert!(plan.run().is_err(), "the injected EIO");
    log.end_sync(plan, false);
    assert!(log.is_poisoned());

    // The fault is gone, but a retried sync would "succeed" over pages the kernel dropped.
    std::fs::remove_file(&fail).unwrap();
    assert!(matches!(
        log.append(&msg(5, 10, 5)),
        Err(LogError::Poisoned { .. })
    ));
    assert!(matches!(log.sync(), Err(LogError::Poisoned { .. })));
    let owed = log.begin_sync();
    assert!(
        !owed.is_empty() && owed.run().is_err(),
        "the next plan fails, always"
    );
    log.end_sync(owed, false);
    assert!(
        log.begin_sync().is_empty(),
        "nothing new to cover: idle syncs stay quiet"
    );
    drop(log);

    // A restart recovers from the log (and the records are synced by recovery).
    let (mut log, seen) = open(faults);
    assert_eq!(seen, written);
    assert!(!log.is_poisoned());
    log.append(&msg(5, 10, 5)).unwrap();
    log.sync().unwrap();
}

#[test]
fn a_restart_after_poisoning_writes_the_unsynced_range_again() {
    let dir = TempDir::new();
    let fail = dir.0.join("fail-sync");
    let faults = Arc::new(Faults::for_dir(&dir.0).with_sync_fail(&fail));
    let (mut log, _) = Log::open_with(&dir.0, 65536, faults.clone(), |_, _| {}).unwrap();
    log.append(&msg(1, 10, 1)).unwrap();
    log.sync().unwrap();
    let unsynced = log.append(&msg(2, 5000, 2)).unwrap();
    std::fs::write(&fail, b"").unwrap();
    let plan = log.begin_sync();
    assert!(plan.run().is_err());
    log.end_sync(plan, false);
    std::fs::remove_file(&fail).unwrap();
    let marker = dir.0.join(POISON_MARKER);
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().trim(),
        unsynced.to_string(),
        "the marker names where the possibly lost writes begin"
    );
    let end = log.head_position();
    drop(log);
    let mut seen = 0;
    let (_, rec) = Log::open_with(&dir.0, 65536, faults.clone(), |_, _| seen += 1).unwrap();
    assert_eq!(seen, 2);
    // From the page holding `unsynced` to the end of the records.
    assert_eq!(rec.rewritten, end - unsynced / 4096 * 4096);
    assert!(!marker.exists(), "done once");
    let (_, rec) = Log::open_with(&dir.0, 65536, faults, |_, _| {}).unwrap();
    assert_eq!(rec.rewritten, 0);
}

#[test]
fn records_appended_while_the_failing_sync_ran_are_never_reported_durable() {
    let dir = TempDir::new();
    let fail = dir.0.join("fail-sync");
    let faults = Arc::new(Faults::for_dir(&dir.0).with_sync_fail(&fail));
    let (mut log, _) = Log::open_with(&dir.0, 65536, faults, |_, _| {}).unwrap();
    log.append(&msg(1, 10, 1)).unwrap();
    std::fs::write(&fail, b"").unwrap();
    let failing = log.begin_sync();
    // Appended while the sync is in flight, to be covered by the next group commit.
    log.append(&msg(2, 10, 2)).unwrap();
    assert!(failing.run().is_err());
    log.end_sync(failing, false);
    std::fs::remove_file(&fail).unwrap();
    let next = log.begin_sync();
    assert!(
        !next.is_empty(),
        "record 2 waits for a sync: the plan must fail, not be skipped"
    );
    assert!(next.run().is_err());
    log.end_sync(next, false);
    assert!(!log.is_durable());
}

/// Records a roll synced while the failing plan ran are not acknowledged either: the kernel
/// reports a write-back error to one msync only, so the roll's "success" proves nothing.
#[test]
fn records_synced_by_a_roll_during_a_failing_sync_are_not_acknowledged() {
    let dir = TempDir::new();
    let fail = dir.0.join("fail-sync");
    let faults = Arc::new(Faults::for_dir(&dir.0).with_sync_fail(&fail));
    let (mut log, _) = Log::open_with(&dir.0, 4096, faults, |_, _| {}).unwrap();
    log.append(&msg(1, 100, 1)).unwrap();
    let failing = log.begin_sync();
    let mut seq = 1;
    while log.segment_count() < 2 {
        seq += 1;
        log.append(&msg(seq, 100, seq)).unwrap(); // the roll syncs the first segment
    }
    let rolled = log.begin_sync(); // the record that rolled, in the new segment
    rolled.run().unwrap();
    log.end_sync(rolled, true);
    std::fs::write(&fail, b"").unwrap();
    assert!(failing.run().is_err());
    log.end_sync(failing, false);
    std::fs::remove_file(&fail).unwrap();
    let next = log.begin_sync();
    assert!(
        !next.is_empty(),
        "nothing is left unsynced, yet the next commit must fail"
    );
    assert!(next.run().is_err());
    log.end_sync(next, false);
}

#[test]
fn a_failed_sync_at_a_roll_poisons_the_log() {
    let dir = TempDir::new();
    let fail = dir.0.join("fail-sync");
    let faults = Arc::new(Faults::for_dir(&dir.0).with_sync_fail(&fail));
    let (mut log, _) = Log::open_with(&dir.0, 4096, faults, |_, _| {}).unwrap();
    std::fs::write(&fail, b"").unwrap();
    let mut seq = 0;
    let err = loop {
        seq += 1;
        if let Err(e) = log.append(&msg(seq, 100, seq)) {
            break e;
        }
        assert!(seq < 100, "never rolled");
    };
    assert!(matches!(err, LogError::Sync { .. }), "{err:?}");
    assert!(log.is_poisoned());
    std::fs::remove_file(&fail).unwrap();
    assert!(matches!(
        log.append(&msg(seq, 100, seq)),
        Err(LogError::Poisoned { .. })
    ));
}

// ---- stale records past a torn tail ------------------------------------------------------

/// A message whose framed size is exactly `size` bytes.
fn msg_of_size(seq: u64, size: usize) -> Record {
    (0..size)
        .map(|n| msg(seq, n, seq))
        .find(|r| record::frame(r).unwrap().len() == size)
        .unwrap_or_else(|| panic!("no body length frames to {size} bytes"))
}

/// A, B, C written and synced; then B is torn (zeroed, or one byte flipped) while C, written
/// back out of order, survives. After reopening, a new record D that ends exactly where C
/// begins must not bring C back.
#[test]
fn a_stale_record_past_a_torn_tail_is_never_resurrected() {
    for torn in ["zeroed", "flipped"] {
        let dir = TempDir::new();
        let size = 65536;
        let (mut log, _, _) = reopen(&dir.0, size);
        let a = msg(1, 300, 1);
        let pa = log.append(&a).unwrap();
        let pb = log.append(&msg(2, 5000, 2)).unwrap();
        let pc = log.append(&msg(3, 300, 3)).unwrap();
        log.sync().unwrap();
        let end = log.head_position() as usize;
        drop(log);
        let path = dir.0.join(segment::file_name(0));
        let mut bytes = std::fs::read(&path).unwrap();
        match torn {
            "zeroed" => bytes[pb as usize..pc as usize].fill(0),
            _ => bytes[pb as usize + 100] ^= 0x55,
        }
        std::fs::write(&path, &bytes).unwrap();

        let (mut log, rec, seen) = reopen(&dir.0, size);
        assert_eq!(seen, vec![(pa, a.clone())], "{torn}");
        assert!(rec.zeroed > 0, "{torn}: the stale bytes were found");
        let on_disk = std::fs::read(&path).unwrap();
        assert!(
            on_disk[pb as usize..end].iter().all(|&b| b == 0),
            "{torn}: everything past the end is zero on disk before the first append"
        );
        let d = msg_of_size(4, (pc - pb) as usize);
        let pd = log.append(&d).unwrap();
        assert_eq!((pd, log.head_position()), (pb, pc), "D ends where C began");
        log.sync().unwrap();
        drop(log);
        let (_, _, seen) = reopen(&dir.0, size);
        let seqs = |v: &[(u64, Record)]| -> Vec<(u64, u64)> {
            v.iter()
                .map(|(p, r)| match r {
                    Record::Message(m) => (*p, m.seq),
                    _ => (*p, 0),
                })
                .collect()
        };
        assert_eq!(
            seqs(&seen),
            seqs(&[(pa, a), (pd, d)]),
            "{torn}: C stays dead"
        );
    }
}

#[test]
fn stale_bytes_far_past_the_end_are_zeroed_too() {
    let dir = TempDir::new();
    let size = 1 << 20;
    let (mut log, _, _) = reopen(&dir.0, size);
    let a = msg(1, 10, 1);
    let pa = log.append(&a).unwrap();
    log.sync().unwrap();
    drop(log);
    // A whole valid record near the segment's end, as if left by an earlier incarnation.
    let path = dir.0.join(segment::file_name(0));
    let stale = record::frame(&msg(9, 10, 9)).unwrap();
    let far = size - 8192;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&stale, far as u64).unwrap();
    }
    let (_, rec, seen) = reopen(&dir.0, size);
    assert_eq!(seen, vec![(pa, a)]);
    assert!(rec.zeroed as usize >= stale.len(), "{rec:?}");
    let on_disk = std::fs::read(&path).unwrap();
    assert!(on_disk[far..far + stale.len()].iter().all(|&b| b == 0));
}

// ---- power-cut simulation ----------------------------------------------------------------

#[test]
fn a_power_cut_keeps_exactly_what_completed_syncs_covered() {
    let dir = TempDir::new();
    let (faults, power) = faults_with_power_log(&dir.0);
    let shard = dir.0.join("shard-000");
    let open = |faults: Arc<Faults>| {
        let mut seen = Vec::new();
        let (log, _) = Log::open_with(&shard, 4096, faults, |p, r| seen.push((p, r))).unwrap();
        (log, seen)
    };
    let (mut log, _) = open(faults.clone());
    let mut durable = Vec::new();
    for seq in 1..=5 {
        let r = msg(seq, 100, seq);
        durable.push((log.append(&r).unwrap(), r));
    }
    let plan = log.begin_sync();
    plan.run().unwrap();
    log.end_sync(plan, true);
    // Not synced: lost in the cut, even though the page cache has them.
    for seq in 6..=8 {
        log.append(&msg(seq, 100, seq)).unwrap();
    }
    let running = log.begin_sync(); // planned, but "the power goes" before it completes
    drop(running);
    drop(log);
    let cut = fault::simulate_power_cut(&dir.0, &power).unwrap();
    assert_eq!(cut.files_cut, 1, "{cut:?}");
    let (log, seen) = open(faults.clone());
    assert_eq!(seen, durable);
    drop(log);
    let events = std::fs::read_to_string(&power).unwrap();
    assert!(
        events.starts_with("synced\t"),
        "the cut emptied the power log, and the reopen logged its recovery sync: {events}"
    );
}

#[test]
fn a_power_cut_drops_a_segment_whose_creation_was_not_durable_and_the_log_still_rolls() {
    let dir = TempDir::new();
    let (faults, power) = faults_with_power_log(&dir.0);
    let shard = dir.0.join("shard-000");
    let (mut log, _) = Log::open_with(&shard, 4096, faults.clone(), |_, _| {}).unwrap();
    let mut seq = 0;
    let written = fill_segments(&mut log, 2, &mut seq);
    drop(log);
    // Cut the power log right after the new segment's `create`: its name never became durable.
    let events = std::fs::read_to_string(&power).unwrap();
    let lines: Vec<&str> = events.lines().collect();
    let create = lines
        .iter()
        .rposition(|l| l.starts_with("create\t"))
        .unwrap();
    let kept: String = events
        .lines()
        .take(create + 1)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&power, kept).unwrap();
    let cut = fault::simulate_power_cut(&dir.0, &power).unwrap();
    assert_eq!(cut.files_removed, 1, "{cut:?}");
    let mut seen = Vec::new();
    let (mut log, _) = Log::open_with(&shard, 4096, faults, |p, r| seen.push((p, r))).unwrap();
    // The roll synced the first segment before creating the second.
    assert_eq!(seen, written[..written.len() - 1]);
    fill_segments(&mut log, 3, &mut seq);
}

#[test]
fn the_skip_sync_fault_acknowledges_without_making_anything_durable() {
    let dir = TempDir::new();
    std::fs::create_dir_all(&dir.0).unwrap();
    let skip = dir.0.join("skip-sync");
    std::fs::write(&skip, b"").unwrap();
    let power = dir.0.join("power.log");
    let faults = Arc::new(
        Faults::for_dir(&dir.0)
            .with_power_log(&power)
            .unwrap()
            .with_skip_sync(&skip),
    );
    let shard = dir.0.join("shard-000");
    let (mut log, _) = Log::open_with(&shard, 65536, faults.clone(), |_, _| {}).unwrap();
    log.append(&msg(1, 10, 1)).unwrap();
    let plan = log.begin_sync();
    plan.run().unwrap();
    log.end_sync(plan, true);
    drop(log);
    fault::simulate_power_cut(&dir.0, &power).unwrap();
    let mut seen = Vec::new();
    Log::open_with(&shard, 65536, faults, |p, r| seen.push((p, r))).unwrap();
    assert!(seen.is_empty(), "the 'acked' record is lost: {seen:?}");
}

#[test]
fn keeping_random_unsynced_pages_never_resurrects_a_record() {
    // Pages past the durable end survive at random (write-back in any order); recovery keeps
    // a prefix of what was appended and never a record after a gap.
    for seed in 0..20u64 {
        let dir = TempDir::new();
        let (faults, power) = faults_with_power_log(&dir.0);
        let shard = dir.0.join("shard-000");
        let (mut log, _) = Log::open_with(&shard, 1 << 16, faults.clone(), |_, _| {}).unwrap();
        let mut written = Vec::new();
        for seq in 1..=10 {
            let r = msg(seq, 500, seq);
            written.push((log.append(&r).unwrap(), r));
        }
        log.sync().unwrap();
        for seq in 11..=60 {
            let r = msg(seq, 500, seq);
            written.push((log.append(&r).unwrap(), r));
        }
        drop(log);
        fault::simulate_power_cut_with(&dir.0, &power, fault::Unsynced::KeepSomePages { seed })
            .unwrap();
        let mut seen = Vec::new();
        let (mut log, _) =
            Log::open_with(&shard, 1 << 16, faults.clone(), |p, r| seen.push((p, r))).unwrap();
        assert!(seen.len() >= 10, "seed {seed}: the synced ones stay");
        assert_eq!(seen, written[..seen.len()], "seed {seed}: a prefix");
        // New records of the same size after the cut (so they end exactly where stale ones
        // begin), then another cut keeping random pages: exactly what was synced.
        let mut expected = seen.clone();
        for seq in 100..110 {
            let r = msg(seq, 500, seq);
            expected.push((log.append(&r).unwrap(), r));
        }
        log.sync().unwrap();
        drop(log);
        fault::simulate_power_cut_with(&dir.0, &power, fault::Unsynced::KeepSomePages { seed })
            .unwrap();
        let mut again = Vec::new();
        Log::open_with(&shard, 1 << 16, faults, |p, r| again.push((p, r))).unwrap();
        assert_eq!(again, expected, "seed {seed}");
    }
}

// ---- the data-directory lock -------------------------------------------------------------

#[test]
fn a_data_directory_is_locked_by_one_holder_at_a_time() {
    let dir = TempDir::new();
    std::fs::create_dir_all(&dir.0).unwrap();
    let first = lock::DataDirLock::acquire(&dir.0).unwrap();
    let e = lock::DataDirLock::acquire(&dir.0).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains(&dir.0.display().to_string())
            && text.contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
    drop(first);
    lock::DataDirLock::acquire(&dir.0).unwrap();
}

// ---- the spare segment -------------------------------------------------------------------

/// Appends 100-byte messages until the active segment is at least half full.
fn fill_half(log: &mut Log, seq: &mut u64) -> Vec<(u64, Record)> {
    let mut out = Vec::new();
    while log.head_position() - log.active_base() < log.segment_size as u64 / 2 {
        *seq += 1;
        let r = msg(*seq, 100, *seq);
        out.push((log.append(&r).unwrap(), r));
    }
    out
}

/// Prepares the spare as the shard does (here on a thread of the test) and takes it.
fn prepare_spare(log: &mut Log) {
    let job = log.spare_job().expect("half full and no spare yet: a job");
    assert!(log.spare_job().is_none(), "one preparation at a time");
    std::thread::spawn(move || job.run()).join().unwrap();
    log.collect_spare();
    assert!(log.has_spare());
}

#[test]
fn the_spare_is_in_the_page_cache_before_the_roll() {
    let dir = TempDir::new();
    let size = 256 * 1024;
    let (mut log, _, _) = reopen(&dir.0, size);
    fill_half(&mut log, &mut 0);
    prepare_spare(&mut log);
    let spare = log.spare.as_ref().expect("the prepared spare");
    assert_eq!(
        spare.resident_pages(),
        size / 4096,
        "pages of the spare in the page cache"
    );
}

#[test]
fn no_spare_is_prepared_before_the_active_segment_is_half_full() {
    let dir = TempDir::new();
    let (mut log, _, _) = reopen(&dir.0, 4096);
    log.append(&msg(1, 100, 1)).unwrap();
    assert!(log.spare_job().is_none());
    let mut seq = 1;
    fill_half(&mut log, &mut seq);
    assert!(log.spare_job().is_some());
}

#[test]
fn a_roll_swaps_the_prepared_spare_in_without_creating_a_segment() {
    let dir = TempDir::new();
    let (faults, power) = faults_with_power_log(&dir.0);
    let shard = dir.0.join("shard-000");
    let (mut log, _) = Log::open_with(&shard, 4096, faults.clone(), |_, _| {}).unwrap();
    let mut seq = 0;
    let mut written = fill_half(&mut log, &mut seq);
    prepare_spare(&mut log);
    assert_eq!(log.disk_bytes(), 2 * 4096, "the spare is on disk");
    let creates = || {
        std::fs::read_to_string(&power)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("create\t"))
            .count()
    };
    let before = creates();
    written.extend(fill_segments(&mut log, 2, &mut seq));
    assert_eq!(creates(), before, "the roll created nothing");
    assert!(!log.has_spare());
    log.sync().unwrap();
    drop(log);
    let (_, rec, seen) = reopen(&shard, 4096);
    assert_eq!((seen, rec.spare), (written, None));
}

#[test]
fn a_prepared_spare_left_unused_is_adopted_at_open_and_the_active_segment_stays_active() {
    let dir = TempDir::new();
    let (mut log, _, _) = reopen(&dir.0, 4096);
    let mut seq = 0;
    let mut written = fill_half(&mut log, &mut seq);
    prepare_spare(&mut log);
    let spare_base = log.active_base() + 4096;
    log.sync().unwrap();
    let head = log.head_position();
    drop(log);
    // A stale, complete record past the end of the active segment (written before a crash,
    // never synced, its page written back): the reopened active segment must not take it.
    let stale = record::frame(&msg(999, 100, 999)).unwrap();
    let active = dir.0.join(segment::file_name(0));
    let mut bytes = std::fs::read(&active).unwrap();
    let at = head as usize + 512;
    bytes[at..at + stale.len()].copy_from_slice(&stale);
    std::fs::write(&active, &bytes).unwrap();

    let (mut log, rec, seen) = reopen(&dir.0, 4096);
    assert_eq!(seen, written);
    assert_eq!(rec.spare, Some(spare_base));
    assert_eq!(rec.segments, 1, "the spare is not a segment in use");
    assert!(
        rec.zeroed > 0,
        "the active segment's stale tail was zeroed: {rec:?}"
    );
    assert!(log.has_spare());
    assert_eq!(
        log.head_position(),
        head,
        "appends go on where the active segment ended"
    );
    // The room left in the active segment is used, then the roll takes the spare.
    written.extend(fill_segments(&mut log, 2, &mut seq));
    assert_eq!(written[written.len() - 1].0, spare_base);
    log.sync().unwrap();
    drop(log);
    let (_, rec, seen) = reopen(&dir.0, 4096);
    assert_eq!((seen, rec.spare), (written, None));
}

#[test]
fn a_crash_while_the_spare_is_being_created_costs_nothing() {
    for short_len in [0u64, 1000] {
        let dir = TempDir::new();
        let (mut log, _, _) = reopen(&dir.0, 4096);
        let mut seq = 0;
        let mut written = fill_half(&mut log, &mut seq);
        log.sync().unwrap();
        let head = log.head_position();
        drop(log);
        // The preparing thread had created the file and not yet preallocated it.
        let spare = dir.0.join(segment::file_name(4096));
        std::fs::write(&spare, vec![0u8; short_len as usize]).unwrap();

        let (mut log, rec, seen) = reopen(&dir.0, 4096);
        assert_eq!(seen, written, "short {short_len}");
        assert_eq!(rec.recreated, Some(4096), "short {short_len}");
        assert_eq!(rec.spare, Some(4096), "made anew, it is the spare");
        assert_eq!(log.head_position(), head);
        written.extend(fill_segments(&mut log, 3, &mut seq));
        log.sync().unwrap();
        drop(log);
        let (_, _, seen) = reopen(&dir.0, 4096);
        assert_eq!(seen, written, "short {short_len}");
    }
}

#[test]
fn a_power_cut_during_the_spare_s_creation_leaves_a_log_that_rolls() {
    let dir = TempDir::new();
    let (faults, power) = faults_with_power_log(&dir.0);
    let shard = dir.0.join("shard-000");
    let (mut log, _) = Log::open_with(&shard, 4096, faults.clone(), |_, _| {}).unwrap();
    let mut seq = 0;
    let mut written = fill_half(&mut log, &mut seq);
    let plan = log.begin_sync();
    plan.run().unwrap();
    log.end_sync(plan, true);
    prepare_spare(&mut log);
    drop(log);
    // The power goes right after the spare's `create`: neither its size nor its name is durable.
    let events = std::fs::read_to_string(&power).unwrap();
    let lines: Vec<&str> = events.lines().collect();
    let create = lines
        .iter()
        .rposition(|l| l.starts_with("create\t"))
        .unwrap();
    let kept: String = events
        .lines()
        .take(create + 1)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&power, kept).unwrap();
    let cut = fault::simulate_power_cut(&dir.0, &power).unwrap();
    assert_eq!(cut.files_removed, 1, "{cut:?}");
    let mut seen = Vec::new();
    let (mut log, rec) =
        Log::open_with(&shard, 4096, faults.clone(), |p, r| seen.push((p, r))).unwrap();
    assert_eq!((seen, rec.spare), (written.clone(), None));
    written.extend(fill_segments(&mut log, 3, &mut seq));
    log.sync().unwrap();
    drop(log);
    let (_, _, seen) = reopen(&shard, 4096);
    assert_eq!(seen, written);
}

/// A power cut at every point of the power log across a roll into the spare keeps exactly
/// the records that a completed sync covered, and the log rolls on afterwards.
#[test]
fn a_power_cut_across_a_roll_into_the_spare_keeps_what_was_synced() {
    let base = TempDir::new();
    // The run, once, to learn how many events it logs.
    // Returns the power log, what is durable at each of its lines, and how many lines the
    // log's own creation took (a cut before those is not across a roll: the simulation does
    // not know files whose creation it never saw).
    let run = |root: &Path| -> (PathBuf, Vec<Vec<(u64, Record)>>, usize) {
        let (faults, power) = faults_with_power_log(root);
        let shard = root.join("shard-000");
        let (mut log, _) = Log::open_with(&shard, 4096, faults, |_, _| {}).unwrap();
        let mut seq = 0;
        let mut synced: Vec<(u64, Record)> = Vec::new();
        // durable_after[i]: what is durable once the power log has i + 1 lines.
        let mut durable_after: Vec<Vec<(u64, Record)>> = Vec::new();
        let mut note = |synced: &Vec<(u64, Record)>| {
            let lines = std::fs::read_to_string(&power).unwrap().lines().count();
            while durable_after.len() < lines {
                durable_after.push(synced.clone());
            }
        };
        note(&synced); // the log's own creation: nothing of ours durable yet
        let created = std::fs::read_to_string(&power).unwrap().lines().count();
        let mut pending = fill_half(&mut log, &mut seq);
        let plan = log.begin_sync();
        plan.run().unwrap();
        log.end_sync(plan, true);
        synced.append(&mut pending);
        note(&synced);
        prepare_spare(&mut log);
        note(&synced);
        // Fill past the roll; the roll syncs the old segment, then two group commits.
        for _ in 0..2 {
            let mut batch = Vec::new();
            for _ in 0..12 {
                seq += 1;
                let r = msg(seq, 100, seq);
                let segments = log.segment_count();
                batch.push((log.append(&r).unwrap(), r));
                if log.segment_count() != segments {
                    // The roll synced everything before the record that rolled.
                    let rolled = batch.pop().unwrap();
                    synced.append(&mut batch);
                    note(&synced);
                    batch.push(rolled);
                }
            }
            let plan = log.begin_sync();
            plan.run().unwrap();
            log.end_sync(plan, true);
            synced.append(&mut batch);
            note(&synced);
        }
        assert_eq!(log.segment_count(), 2);
        (power, durable_after, created)
    };
    let (power, durable_after, created) = run(&base.0);
    let lines = std::fs::read_to_string(&power).unwrap().lines().count();
    assert_eq!(durable_after.len(), lines);
    assert!(created > 0 && created < lines);
    for cut_at in created..=lines {
        let dir = TempDir::new();
        let (power, _, _) = run(&dir.0);
        let events = std::fs::read_to_string(&power).unwrap();
        let kept: String = events
            .lines()
            .take(cut_at)
            .map(|l| format!("{l}\n"))
            .collect();
        // A file created after the cut never existed as far as the disk knows; the simulation
        // only judges files whose creation it saw.
        for later in events.lines().skip(cut_at) {
            if let Some(rel) = later.strip_prefix("create\t") {
                std::fs::remove_file(dir.0.join(rel)).unwrap();
            }
        }
        std::fs::write(&power, kept).unwrap();
        fault::simulate_power_cut(&dir.0, &power).unwrap();
        let shard = dir.0.join("shard-000");
        let (mut log, _, seen) = reopen(&shard, 4096);
        assert_eq!(
            seen,
            durable_after[cut_at - 1],
            "cut after {cut_at} of {lines} events"
        );
        let mut seq = 10_000;
        let mut more = seen.clone();
        let target = log.segment_count() + 2;
        more.extend(fill_segments(&mut log, target, &mut seq));
        log.sync().unwrap();
        drop(log);
        let (_, _, again) = reopen(&shard, 4096);
        assert_eq!(again, more, "cut after {cut_at}: the log rolls on");
    }
}

/// Pipelined syncs: retention deletes old sealed segments while a sync runs, but never a
/// segment a running plan covers (it holds addresses into that map).
#[test]
fn retention_spares_only_the_segments_a_running_sync_covers() {
    let dir = TempDir::new();
    let (mut log, _, _) = reopen(&dir.0, 2048);
    let mut seq = 0;
    fill_segments(&mut log, 3, &mut seq);
    // A plan covering the active segment's unsynced records, still running ...
    let covered = log.active_base();
    let running = log.begin_sync();
    assert!(!running.is_empty());
    // ... while appends roll past it (the roll syncs it in place, and it is sealed now).
    fill_segments(&mut log, 5, &mut seq);
    assert!(log.sync_in_flight());
    let oldest = log.retain(u64::MAX, u64::MAX, u64::MAX).unwrap();
    assert_eq!(
        oldest, covered,
        "everything before the covered segment went, it stayed"
    );
    running.run().unwrap();
    assert!(log.end_sync(running, true));
    let oldest = log.retain(u64::MAX, u64::MAX, u64::MAX).unwrap();
    assert_eq!(oldest, log.active_base(), "once it ended, it went too");
    assert_eq!(log.segment_count(), 1);
}

/// The send path's records, archived straight into the map, are byte for byte what the
/// scratch-buffer path writes, in the same segments: every body length from empty to past a
/// segment's room for the in-place bound, so appends near each segment's end take the
/// fallback (exact size) and the rolls fall where they did.
#[test]
fn send_records_archived_in_place_match_the_scratch_path_byte_for_byte() {
    use super::record::{Append, MessageRef, OutgoingRecord, OutgoingRef};
    let (direct_dir, scratch_dir) = (TempDir::new(), TempDir::new());
    let (mut direct, _, _) = reopen(&direct_dir.0, 4096);
    let (mut scratch, _, _) = reopen(&scratch_dir.0, 4096);
    for seq in 1..=400u64 {
        let body = vec![seq as u8; (seq as usize * 7) % 900];
        let (a, b) = if seq % 3 == 0 {
            let out = OutgoingRecord {
                user: "alice-with-a-longer-name".into(),
                seq,
                to: "bob".into(),
                client_msg_id: seq * 10,
                sent_at_ms: seq,
                body: body.clone(),
            };
            let direct_pos = direct
                .append(Append::Outgoing(OutgoingRef {
                    user: &out.user,
                    seq,
                    to: &out.to,
                    client_msg_id: out.client_msg_id,
                    sent_at_ms: out.sent_at_ms,
                    body: &out.body,
                }))
                .unwrap();
            (direct_pos, scratch.append(&Record::Outgoing(out)).unwrap())
        } else {
            let Record::Message(m) = msg(seq, body.len(), seq) else {
                unreachable!()
            };
            let direct_pos = direct
                .append(Append::Message(MessageRef {
                    to: &m.to,
                    seq,
                    from: &m.from,
                    client_msg_id: m.client_msg_id,
                    sent_at_ms: m.sent_at_ms,
                    body: &m.body,
                    prev: m.prev,
                }))
                .unwrap();
            (direct_pos, scratch.append(&Record::Message(m)).unwrap())
        };
        assert_eq!(a, b, "record {seq} at the same position");
        assert_eq!(direct.read(a).unwrap(), scratch.read(b).unwrap());
    }
    assert!(
        direct.segment_count() > 10,
        "the run crossed many segment ends"
    );
    drop((direct, scratch));
    let files = |d: &Path| {
        let mut names: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    assert_eq!(files(&direct_dir.0), files(&scratch_dir.0));
    for name in files(&direct_dir.0) {
        let (a, b) = (direct_dir.0.join(&name), scratch_dir.0.join(&name));
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "{name:?} differs"
        );
    }
}

/// An in-place archive that fails leaves nothing behind: the bytes it wrote are zeroed, so
/// the next, shorter record ends at a zero header and recovery finds no torn or stale tail.
#[test]
fn a_failed_in_place_archive_leaves_no_bytes_behind() {
    let dir = TempDir::new();
    let (mut log, _, _) = reopen(&dir.0, 4096);
    let first = log.append(&msg(1, 10, 1)).unwrap();
    let seg = log.active_mut();
    let before = seg.remaining();
    let failed = seg.append_archived(record::KIND_MESSAGE, 600, 2, |out| {
        out.fill(0xAB);
        Err("serializer failed")
    });
    assert_eq!(failed, Err("serializer failed"));
    assert_eq!(log.active().remaining(), before, "nothing appended");
    let second = log.append(&msg(2, 10, 3)).unwrap();
    log.sync().unwrap();
    drop(log);
    let (log, rec, seen) = reopen(&dir.0, 4096);
    assert_eq!((rec.torn_at, rec.zeroed), (None, 0), "{rec:?}");
    let positions: Vec<u64> = seen.iter().map(|(pos, _)| *pos).collect();
    assert_eq!(positions, vec![first, second]);
    assert_eq!(log.read(second).unwrap(), msg(2, 10, 3));
}

/// The in-place bound holds for every shape of send record (user IDs up to the protocol's
/// 128 bytes, bodies across the alignment steps), so the send path never falls back for it.
#[test]
fn the_in_place_bound_covers_every_send_record() {
    use super::record::{Append, MessageRef, OutgoingRef};
    for name_len in [0, 1, 7, 8, 9, 64, 127, 128] {
        let name = "u".repeat(name_len);
        for body_len in [0, 1, 7, 8, 9, 15, 16, 17, 64, 1000] {
            let body = vec![1u8; body_len];
            let records = [
                Append::Message(MessageRef {
                    to: &name,
                    seq: u64::MAX,
                    from: &name,
                    client_msg_id: u64::MAX,
                    sent_at_ms: u64::MAX,
                    body: &body,
                    prev: NO_POSITION,
                }),
                Append::Outgoing(OutgoingRef {
                    user: &name,
                    seq: u64::MAX,
                    to: &name,
                    client_msg_id: u64::MAX,
                    sent_at_ms: u64::MAX,
                    body: &body,
                }),
            ];
            for r in records {
                let bound = r.archive_bound().unwrap();
                let len = r.archive_in(rkyv::util::AlignedVec::new()).unwrap().len();
                assert!(len <= bound, "{name_len}/{body_len}: {len} > {bound}");
                let mut out = vec![0u8; bound];
                assert_eq!(r.archive_into(&mut out).unwrap(), len);
            }
        }
    }
}

/// A group entry borrowed from the fan-out's shared entry archives to exactly the owned
/// record's bytes (read back equal, in place through the room `prepare` made), and its bound
/// holds for 128-byte IDs and bodies across alignment steps.
#[test]
fn group_messages_archived_in_place_match_the_owned_record() {
    use super::record::{Append, GroupMessageRef, GroupRecord};
    let dir = TempDir::new();
    let (mut log, _, _) = reopen(&dir.0, 1 << 20);
    for name_len in [1, 7, 8, 9, 64, 128] {
        let name = "g".repeat(name_len);
        for body_len in [0, 1, 7, 8, 9, 16, 17, 64, 1000] {
            let body = vec![body_len as u8; body_len];
            let borrowed = GroupMessageRef {
                group: &name,
                group_seq: u64::MAX - body_len as u64,
                kind: 0,
                from: &name,
                client_msg_id: 7,
                sent_at_ms: 9,
                body: &body,
            };
            let owned = Record::Group(GroupRecord {
                group: name.clone(),
                group_seq: borrowed.group_seq,
                kind: 0,
                from: name.clone(),
                client_msg_id: 7,
                sent_at_ms: 9,
                body: body.clone(),
                members: Vec::new(),
            });
            let a = Append::GroupMessage(borrowed);
            let scratch = Append::Record(&owned)
                .archive_in(rkyv::util::AlignedVec::new())
                .unwrap();
            assert_eq!(
                a.archive_in(rkyv::util::AlignedVec::new())
                    .unwrap()
                    .as_slice(),
                scratch.as_slice()
            );
            let bound = a.archive_bound().unwrap();
            assert!(scratch.len() <= bound, "{name_len}/{body_len}");
            let mut out = vec![0u8; bound];
            let n = a.archive_into(&mut out).unwrap();
            assert_eq!(&out[..n], scratch.as_slice(), "in place = through scratch");
            log.prepare(record::framed_len(bound)).unwrap();
            let pos = log.append_prepared(a).unwrap();
            assert_eq!(log.read(pos).unwrap(), owned);
        }
    }
    // Without the room prepared it appends nothing rather than rolling.
    let seg = log.active_mut();
    let left = seg.remaining();
    let body = vec![0u8; left];
    let too_big = Append::GroupMessage(GroupMessageRef {
        group: "g",
        group_seq: 1,
        kind: 0,
        from: "u",
        client_msg_id: 1,
        sent_at_ms: 1,
        body: &body,
    });
    let segments = log.segment_count();
    assert!(log.append_prepared(too_big).is_err());
    assert_eq!(
        (log.segment_count(), log.active().remaining()),
        (segments, left)
    );
}

#[test]
fn a_group_commit_plan_allocates_nothing_once_warm() {
    use crate::alloc_count::allocations;
    let dir = TempDir::new();
    let (mut log, _, _) = reopen(&dir.0, 1 << 20);
    let record = msg(1, 64, 1);
    let mut allocated = 0;
    for round in 0..100 {
        log.append(&record).unwrap();
        let before = allocations();
        let plan = log.begin_sync();
        let files = plan.fds().unwrap().count();
        plan.completed();
        let durable = log.end_sync(plan, true);
        let after = allocations();
        assert_eq!((files, durable), (1, true), "round {round}");
        if round >= 2 {
            allocated += after - before;
        }
    }
    assert_eq!(allocated, 0, "allocations in 98 warm begin/end_sync rounds");
}

//! Log recovery from arbitrary segment files: `Log::open` and the shard's rebuild
//! (`shard::recovery::recover`) on a log directory written from fuzz bytes.
//!
//! Input: `flags | shard | ...`. flags & 1 picks the mode; (flags >> 1) & 3 the segment size
//! (4, 8, 16 or 64 KiB); (flags >> 3) & 3 the shard count - 1 (and `shard` % count is the
//! shard); flags & 0x20 adds a POISONED marker; flags & 0x40 leaves the newest segment file
//! short (not preallocated).
//! - raw (flags & 1 = 0): up to four segments, each `len: u16 LE | bytes`, then with the
//!   marker `len: u8 | text`. flags & 0x80 rewrites the CRC of every record header that looks
//!   like one, so fuzzed payloads reach rkyv's validation and the rebuild.
//! - structured (flags & 1 = 1): well-formed records of every kind (`ringpost_fuzz::records`),
//!   laid out as the log appends them, then optionally a torn tail (the newest segment zeroed
//!   from some offset on) and byte flips.
//!
//! Must hold: no panic, no out-of-bounds access (ASan), whatever the files hold; the log
//! either refuses to open with an error or opens, and then every record it visited reads back
//! (`Log::read`, `scan_from`) as the same record, every stream entry encodes as a Deliver
//! that decodes; a second open (the shard's rebuild) finds the same records, with each
//! user's index contiguous and below its head; a record appended after recovery is found,
//! after the recovered ones, by a third open. Structured logs without flips recover exactly
//! the records written (before the torn tail).
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use ringpost::log::record::{MessageRecord, Record, NO_POSITION};
use ringpost::log::{segment, Log, POISON_MARKER};
use ringpost::protocol::{decode_server, LenPrefix, ServerMsg, LEN_PREFIX};
use ringpost::shard::recovery::{recover, RecoveryContext};
use ringpost_fuzz::input::Header;
use ringpost_fuzz::records::{arb_record, fix_crcs, layout};

/// A directory of this process's own, on tmpfs when there is one (syncs cost nothing there).
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = std::env::var_os("RINGPOST_FUZZ_TMP")
            .map(PathBuf::from)
            .or_else(|| Some(PathBuf::from("/dev/shm")).filter(|p| p.is_dir()))
            .unwrap_or_else(std::env::temp_dir);
        root.join(format!("ringpost-fuzz-log-{}", std::process::id()))
    })
}

struct Case {
    segment_size: usize,
    /// File contents, oldest segment first (bases follow from the file sizes).
    files: Vec<Vec<u8>>,
    marker: Option<Vec<u8>>,
    /// Exactly what recovery must find, when the input says.
    expected: Option<Vec<Record>>,
}

fn raw_case(h: &mut Header<'_>, flags: u8, segment_size: usize) -> Case {
    let mut files = Vec::new();
    for _ in 0..4 {
        let len = usize::from(h.u16());
        let bytes = h.take(len);
        if bytes.is_empty() && !files.is_empty() {
            break;
        }
        let mut seg = bytes.to_vec();
        if flags & 0x80 != 0 {
            fix_crcs(&mut seg);
        }
        files.push(seg);
    }
    let marker = (flags & 0x20 != 0).then(|| {
        let len = usize::from(h.byte());
        h.take(len).to_vec()
    });
    let short = flags & 0x40 != 0;
    let last = files.len() - 1;
    for (i, f) in files.iter_mut().enumerate() {
        if f.len() < segment_size && !(short && i == last) {
            f.resize(segment_size, 0);
        }
    }
    Case {
        segment_size,
        files,
        marker,
        expected: None,
    }
}

fn structured_case(u: &mut Unstructured<'_>, flags: u8, segment_size: usize) -> Case {
    let mut records = Vec::new();
    let n = u.int_in_range(0..=24).unwrap_or(0);
    for _ in 0..n {
        match arb_record(u) {
            Ok(r) => records.push(r),
            Err(_) => break,
        }
    }
    let (mut segs, placed) = layout(records, segment_size);
    let last = segs.len() - 1;
    let written = segs[last].clone();
    // A torn tail: the newest segment zeroed from `cut` on.
    let cut: Option<u16> = u.arbitrary().unwrap_or(None);
    let cut = cut.map_or(usize::MAX, |c| usize::from(c) % (segs[last].len() + 1));
    if cut < segs[last].len() {
        segs[last][cut..].fill(0);
    }
    let mut flipped = false;
    for _ in 0..u.int_in_range(0..=3).unwrap_or(0) {
        let (Ok(s), Ok(off), Ok(x)) = (
            u.int_in_range(0..=last),
            u.arbitrary::<u16>(),
            u.arbitrary::<u8>(),
        ) else {
            break;
        };
        if let Some(b) = segs[s].get_mut(usize::from(off)) {
            *b ^= x;
            flipped |= x != 0;
        }
    }
    // Recovery keeps every record of a sealed segment, and in the newest one those before
    // the first that the tear damaged.
    let expected = (!flipped).then(|| {
        let mut out = Vec::new();
        let mut torn = false;
        for p in placed {
            if p.segment == last {
                let span = p.offset..p.offset + p.framed_len;
                torn |= segs[last][span.clone()] != written[span];
                if torn {
                    continue;
                }
            }
            out.push(p.record);
        }
        out
    });
    let short = flags & 0x40 != 0;
    for (i, s) in segs.iter_mut().enumerate() {
        if !(short && i == last) {
            s.resize(segment_size, 0);
        }
    }
    let marker = (flags & 0x20 != 0).then(|| b"0\n".to_vec());
    Case {
        segment_size,
        files: segs,
        marker,
        expected,
    }
}

fn write(case: &Case) -> PathBuf {
    let root = scratch();
    let _ = std::fs::remove_dir_all(root);
    let dir = root.join("shard-000");
    std::fs::create_dir_all(&dir).expect("create the scratch log dir");
    let mut base = 0u64;
    for f in &case.files {
        std::fs::write(dir.join(segment::file_name(base)), f).expect("write a segment");
        base += f.len() as u64;
    }
    if let Some(m) = &case.marker {
        std::fs::write(dir.join(POISON_MARKER), m).expect("write the marker");
    }
    dir
}

/// Every record the log visits on open, in order.
fn open_all(dir: &Path, segment_size: usize) -> Result<(Log, Vec<(u64, Record)>), String> {
    let mut seen = Vec::new();
    let (log, report) = Log::open(dir, segment_size, |pos, rec| seen.push((pos, rec)))
        .map_err(|e| e.to_string())?;
    assert_eq!(report.records, seen.len() as u64);
    assert_eq!(report.segments, log.segment_count());
    Ok((log, seen))
}

/// A recovered stream entry is what replay sends: it must encode as a Deliver that decodes.
fn check_entry(log: &Log, pos: u64) {
    let out = log
        .with_entry(pos, |e| {
            let mut out = Vec::new();
            e.encode_deliver(1, "alice", &LenPrefix, &mut out);
            out
        })
        .unwrap_or_else(|e| panic!("recovered entry at {pos} is not readable in place: {e}"));
    match decode_server(&out[LEN_PREFIX..]) {
        Ok(ServerMsg::Deliver(_)) => {}
        other => panic!("recovered entry at {pos} encodes as {other:?}"),
    }
}

fn run(data: &[u8]) {
    let mut h = Header::new(data);
    let flags = h.byte();
    let shard_byte = h.byte();
    let segment_size = [4096, 8192, 16384, 65536][usize::from((flags >> 1) & 3)];
    let shards = 1 + usize::from((flags >> 3) & 3);
    let ctx = RecoveryContext {
        shard: usize::from(shard_byte) % shards,
        shards,
        now_ms: 10,
        dedup_window_ms: 1000,
        dedup_entries: 16,
    };
    let case = if flags & 1 == 0 {
        raw_case(&mut h, flags, segment_size)
    } else {
        structured_case(&mut Unstructured::new(h.rest()), flags, segment_size)
    };
    let dir = write(&case);

    // 1. Open: refuse cleanly, or find records that all read back.
    let (log, seen) = match open_all(&dir, case.segment_size) {
        Ok(opened) => opened,
        Err(why) => {
            assert!(
                case.expected.is_none(),
                "a log of well-formed records was refused: {why}"
            );
            return;
        }
    };
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "positions ascend");
    for (pos, rec) in &seen {
        let again = log
            .read(*pos)
            .unwrap_or_else(|e| panic!("recovered record at {pos} does not read back: {e}"));
        assert_eq!(&again, rec);
        if matches!(
            rec,
            Record::Message(_) | Record::Outgoing(_) | Record::Group(_)
        ) {
            check_entry(&log, *pos);
        }
    }
    let scanned = log.scan_from(0).expect("scan of a recovered log");
    assert_eq!(scanned, seen, "scan_from(0) finds what open visited");
    if let Some(expected) = &case.expected {
        let got: Vec<&Record> = seen.iter().map(|(_, r)| r).collect();
        assert_eq!(got, expected.iter().collect::<Vec<_>>());
    }
    drop(log);

    // 2. The shard's rebuild on the recovered directory: the same records.
    let mut rec = recover(&dir, case.segment_size, ctx)
        .unwrap_or_else(|e| panic!("a log that opened once is refused the second time: {e}"));
    assert_eq!(rec.report.records, seen.len() as u64);
    for (name, user) in &rec.users {
        let index: Vec<(u64, u64)> = user.index.iter().collect();
        for w in index.windows(2) {
            assert_eq!(w[0].0.checked_add(1), Some(w[1].0), "{name}: index seqs");
            assert!(w[0].1 < w[1].1, "{name}: index positions");
        }
        if let Some(&(seq, _)) = index.last() {
            assert!(seq <= user.head_seq, "{name}: index past the head");
        }
    }
    let _ = rec.groups.oldest_needed();

    // 3. It takes appends where recovery left off, and a restart finds them.
    let extra = Record::Message(MessageRecord {
        to: "alice".into(),
        seq: 1,
        from: "bob".into(),
        client_msg_id: 1,
        sent_at_ms: 1,
        body: b"after recovery".to_vec(),
        prev: NO_POSITION,
    });
    let pos = rec.log.append(&extra).expect("append after recovery");
    rec.log.sync().expect("sync after recovery");
    drop(rec);
    let (_, after) = open_all(&dir, case.segment_size)
        .unwrap_or_else(|e| panic!("the log is refused after an append: {e}"));
    let mut want = seen;
    want.push((pos, extra));
    assert_eq!(
        after, want,
        "a restart finds the recovered records and the append"
    );
}

fuzz_target!(|data: &[u8]| run(data));

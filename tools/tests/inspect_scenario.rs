//! `ringpost-tools inspect` on a real log, intact and with a torn tail.

use std::process::Command;

use ringpost::log::record::{CursorRecord, MessageRecord, Record, NO_POSITION};
use ringpost::log::Log;

#[test]
fn inspect_reports_users_cursors_and_a_torn_tail_without_writing() {
    let dir = std::env::temp_dir().join(format!("ringpost-inspect-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut log, _) = Log::open(&dir, 64 * 1024, |_, _| {}).unwrap();
    let mut last = 0;
    for seq in 1..=3 {
        last = log
            .append(&Record::Message(MessageRecord {
                to: "bob".into(),
                seq,
                from: "alice".into(),
                client_msg_id: seq,
                sent_at_ms: 1,
                body: b"hi".to_vec(),
                prev: NO_POSITION,
            }))
            .unwrap();
    }
    log.append(&Record::Cursor(CursorRecord {
        user: "bob".into(),
        device: "phone".into(),
        acked: 2,
        at_ms: 2,
    }))
    .unwrap();
    log.sync().unwrap();
    drop(log);

    let inspect = || {
        let out = Command::new(env!("CARGO_BIN_EXE_ringpost-tools"))
            .args(["inspect", "--json"])
            .arg(&dir)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), v)
    };
    let (code, v) = inspect();
    assert_eq!(code, Some(0));
    assert_eq!(v["messages"], 3);
    assert_eq!(v["cursors"], 1);
    assert_eq!(v["users"]["bob"]["head_seq"], 3);
    assert_eq!(v["users"]["bob"]["cursors"]["phone"], 2);

    // Tear the third message: inspect reports it (exit 3) and leaves the file as it was.
    let seg = dir.join(ringpost::log::segment::file_name(0));
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[last as usize + 20] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let (code, v) = inspect();
    assert_eq!(code, Some(3));
    assert_eq!(v["messages"], 2);
    assert!(v["segments"][0]["problem"]
        .as_str()
        .unwrap()
        .contains("CRC"));
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "inspect never writes");
    let _ = std::fs::remove_dir_all(&dir);
}

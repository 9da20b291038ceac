//! The broker's diagnostics on stderr: `[log] format` and `level`, `RUST_LOG` over `level`, no
//! ANSI colours when stderr is not a terminal, and what is logged at which level.

use ringpost::protocol::Code;
use ringpost_harness::{expect_ack, run, test_broker, try_login};
use serde_json::Value;

#[test]
fn text_logs_to_a_file_carry_no_colour_codes() {
    let b = test_broker().start();
    b.assert_serving();
    let err = b.stderr();
    assert!(err.contains("log recovered"), "{err}");
    assert!(!err.contains('\u{1b}'), "ANSI escape in a log file:\n{err}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let b = test_broker().table("log", "format = \"json\"").start();
    b.assert_serving();
    let err = b.stderr();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{err}");
    for line in lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{v}");
        assert!(v["fields"]["message"].is_string(), "{v}");
    }
    assert!(err.contains("\"message\":\"log recovered\""), "{err}");
}

#[test]
fn the_level_decides_what_is_logged_and_rust_log_overrides_it() {
    // `[log] level = "debug"` (RUST_LOG empty): connection lifecycle lines appear.
    let b = test_broker()
        .env("RUST_LOG", "")
        .table("log", "level = \"debug\"")
        .start();
    b.assert_serving();
    b.wait_for_log("connection registered");
    // RUST_LOG=warn over the same `level = "debug"`: not even the info lines of the start.
    let quiet = test_broker()
        .env("RUST_LOG", "warn")
        .table("log", "level = \"debug\"")
        .start();
    quiet.assert_serving();
    assert!(
        !quiet.stderr().contains("log recovered"),
        "{}",
        quiet.stderr()
    );
}

#[test]
fn at_info_refusals_are_logged_and_messages_are_not() {
    let b = test_broker().limits("sends_per_sec = 100000").start();
    run(async {
        let mut a = b.connect("alice", "d").await;
        let _bob = b.connect("bob", "d").await;
        let before = b.stderr().lines().count();
        for i in 1..=100 {
            a.send(i, "bob", b"quiet please").await.unwrap();
        }
        // The acks prove the sends were handled before stderr is read again.
        for i in 1..=100 {
            expect_ack(&mut a, i, Code::OK).await;
        }
        // 100 messages, not one more line.
        assert_eq!(b.stderr().lines().count(), before, "{}", b.stderr());
    });
    let token = ringpost::auth::mint(
        b"not the secret",
        "mallory",
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(
        try_login(b.addr, &token, "d").unwrap_err().0,
        Code::AUTH_FAILED
    );
    b.wait_for_log("login refused");
    let line = b
        .stderr()
        .lines()
        .find(|l| l.contains("login refused"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        line.contains("INFO") && line.contains("AUTH_FAILED"),
        "{line}"
    );
}

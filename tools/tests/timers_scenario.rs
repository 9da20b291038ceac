//! `load timers`: the machine's wake-up floor, measured with no broker. Every scheduled
//! wake-up is counted once and the report is ordered; bad arguments exit 2.

use ringpost_harness::tools;
use serde_json::Value;

#[test]
fn every_scheduled_wake_up_is_measured_once() {
    let out = tools(&[
        "load",
        "timers",
        "--tasks",
        "10",
        "--rate",
        "2000",
        "--duration",
        "500ms",
        "--json",
    ])
    .output()
    .expect("run tool");
    assert!(out.status.success(), "{out:?}");
    let r: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    // 10 tasks, each one wake-up every 5 ms for 500 ms.
    assert_eq!(r["interval_us"], 5000, "{r}");
    assert_eq!(r["wakeups"], 1000, "{r}");
    let lag = &r["lag_us"];
    let at = |k: &str| lag[k].as_u64().unwrap_or(0);
    assert!(at("p50") >= 1, "{r}");
    assert!(
        at("p50") <= at("p99") && at("p99") <= at("p999") && at("p999") <= at("max"),
        "{r}"
    );
}

#[test]
fn bad_arguments_exit_2() {
    for args in [
        &["load", "timers", "--tasks", "0"][..],
        &["load", "timers", "--rate", "0"],
        &[
            "load",
            "timers",
            "--tasks",
            "100",
            "--rate",
            "10",
            "--duration",
            "1s",
        ],
    ] {
        let out = tools(args).output().expect("run tool");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
}

//! Process lifecycle: graceful shutdown, and the config CLI.

use std::time::{Duration, Instant};

use ringpost::client::Event;
use ringpost::protocol::{ClientMsg, Code};
use ringpost_harness::*;

#[test]
fn sigterm_acks_in_flight_sends_then_says_goaway_and_exits_zero() {
    let mut broker = test_broker().start();
    let (a, b) = (user_on_shard("a", 0, 2), user_on_shard("b", 1, 2));
    run(async {
        let mut ca = broker.connect(&a, "d").await;
        let mut cb = broker.connect(&b, "d").await;
        // Cross-shard sends immediately followed by SIGTERM: every one must be acked before
        // the GoAway. The 50 frames go out in one write: written one by one, the client's
        // kernel may still hold some of them when the signal lands (TCP's congestion window
        // waits on the broker's delayed ACKs), and bytes that never reached the broker are
        // not in flight there.
        let mut burst = Vec::new();
        for i in 1..=50u64 {
            burst.extend(frame(&ClientMsg::Send {
                client_msg_id: i,
                to_user: &b,
                body: b"last words",
            }));
        }
        ca.send_raw(&burst).await.unwrap();
        broker.signal(libc::SIGTERM);
        let mut acked = 0;
        loop {
            match expect_event(&mut ca).await {
                Event::SendAck { status, .. } => {
                    assert_eq!(status, Code::OK);
                    acked += 1;
                }
                Event::GoAway { code, .. } => {
                    assert_eq!(code, Code::SHUTDOWN);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            acked, 50,
            "every send before SIGTERM is acked before the GoAway"
        );
        let mut delivered = 0;
        loop {
            match expect_event(&mut cb).await {
                Event::Deliver(d) => {
                    delivered += 1;
                    assert_eq!(d.seq, delivered);
                }
                Event::GoAway { code, .. } => {
                    assert_eq!(code, Code::SHUTDOWN);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(delivered, 50);
        assert!(next_event(&mut ca).await.is_err(), "closed after GoAway");
    });
    let started = Instant::now();
    let status = broker
        .wait_exit(Duration::from_secs(6))
        .expect("broker exits within shutdown_grace (5s) + 1s");
    assert!(
        status.success(),
        "exit status {status:?}; stderr:\n{}",
        broker.stderr()
    );
    assert!(started.elapsed() < Duration::from_secs(6));
    assert!(
        std::net::TcpStream::connect(broker.addr).is_err(),
        "no new connections after shutdown"
    );
}

#[test]
fn sigint_with_idle_clients_exits_promptly() {
    let mut broker = test_broker().start();
    run(async {
        let mut c = broker.connect("idle-one", "d").await;
        broker.signal(libc::SIGINT);
        expect_goaway_then_close(&mut c, Code::SHUTDOWN).await;
    });
    let status = broker.wait_exit(Duration::from_secs(6)).expect("exited");
    assert!(status.success());
}

#[test]
fn print_config_prints_the_embedded_default() {
    let out = ringpost_cli(&["--print-config"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, ringpost::config::Config::DEFAULT_TOML);
    assert!(ringpost::config::Config::from_toml_str(&text).is_ok());
}

#[test]
fn check_config_names_the_bad_key_and_exits_2() {
    let dir = TempDir::new("cli");
    let (code, err) = check_config(
        dir.path(),
        "unknown.toml",
        "[limits]\nmax_fraem = \"1MiB\"\n",
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("limits.max_fraem"), "{err}");

    let (code, err) = check_config(
        dir.path(),
        "bad.toml",
        "[limits]\nidle_timeout = \"soon\"\n",
    );
    assert_eq!(code, Some(2));
    assert!(
        err.contains("limits.idle_timeout") && err.contains("90s"),
        "{err}"
    );

    let (code, err) = check_config(
        dir.path(),
        "good.toml",
        "[server]\nshards = 2\n[limits]\nmax_frame = \"1MiB\"\n",
    );
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_config_with_a_bad_value_does_not_start() {
    let dir = TempDir::new("cli-bad");
    let p = dir.path().join("c.toml");
    std::fs::write(&p, "[server]\nlisten = \"nowhere\"\n").unwrap();
    let out = ringpost_cli(&["--config", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.listen"));
}

//! Parked connections (server.park_after): an idle connection's socket moves into its shard's
//! epoll set and the connection must still behave exactly like an active one — receive, send,
//! time out, notice a hang-up, take a slow reader's backlog, and get its GoAway at shutdown.
//!
//! "Parked" is observed from outside through /proc: the broker's epoll sets list the fds they
//! watch, so the number of distinct watched fds is the number of parked connections.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ringpost::protocol::Code;
use ringpost_harness::*;

const PARK: &str = "park_after = \"100ms\"";

/// Distinct fds watched by the broker's epoll sets (a set and its duplicate list the same fds).
fn parked(pid: i32) -> usize {
    let mut watched = BTreeSet::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    for fd in fds.flatten() {
        let is_epoll = std::fs::read_link(fd.path())
            .map(|l| l.to_string_lossy().contains("eventpoll"))
            .unwrap_or(false);
        if !is_epoll {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        for line in info.lines() {
            if let Some(rest) = line.strip_prefix("tfd:") {
                if let Some(n) = rest.split_whitespace().next() {
                    watched.insert(n.to_string());
                }
            }
        }
    }
    watched.len()
}

/// Waits (polling /proc, bounded) until exactly `n` connections are parked.
async fn wait_parked(broker: &TestBroker, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = parked(broker.pid());
        if now == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} parked connections, see {now}"
        );
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn parked_connections_receive_and_send_and_park_again() {
    let broker = test_broker().server(PARK).start();
    run(async {
        let (a, b) = (user_on_shard("pa", 0, 2), user_on_shard("pb", 1, 2));
        let mut ca = broker.connect(&a, "d").await;
        let mut cb = broker.connect(&b, "d").await;
        wait_parked(&broker, 2).await;

        // A parked sender sends; a parked receiver receives.
        ca.send(1, &b, b"to a parked receiver").await.unwrap();
        expect_ack(&mut ca, 1, Code::OK).await;
        let d = expect_deliver(&mut cb).await;
        assert_eq!(
            (d.seq, d.body.as_slice()),
            (1, &b"to a parked receiver"[..])
        );
        cb.ack(1).await.unwrap();

        // Both go idle and park again; then the other direction.
        wait_parked(&broker, 2).await;
        cb.send(7, &a, b"back").await.unwrap();
        expect_ack(&mut cb, 7, Code::OK).await;
        let d = expect_deliver(&mut ca).await;
        assert_eq!((d.seq, d.from_user.as_str()), (1, b.as_str()));

        // Pings are answered from parked state too.
        wait_parked(&broker, 2).await;
        ca.ping(42).await.unwrap();
        match expect_event(&mut ca).await {
            ringpost::client::Event::Pong { nonce } => assert_eq!(nonce, 42),
            other => panic!("expected Pong, got {other:?}"),
        }
    });
    broker.assert_serving();
}

/// The park timer is armed once per stretch and re-armed when traffic ends a wait early, so
/// both ways of getting it wrong are caught here: parking a connection that is busy (a timer
/// counted from the stretch's start, not from the last traffic) and never parking one that has
/// gone quiet after being busy (a timer re-armed from each pass instead of the quiet spell).
#[test]
fn a_busy_connection_stays_active_and_parks_once_it_goes_quiet() {
    let broker = test_broker()
        .limits("sends_per_sec = 1000000")
        .server("park_after = \"300ms\"")
        .start();
    run(async {
        let (a, b) = (user_on_shard("busy", 0, 2), user_on_shard("peer", 1, 2));
        let mut ca = broker.connect(&a, "d").await;
        let mut cb = broker.connect(&b, "d").await;
        // Traffic every 25 ms for a second: more than three park_after periods in all, never
        // one of them quiet. Both start parked (a new connection with nothing to read does);
        // from the second message on, each has had traffic within the last 25 ms or so.
        for n in 1..=40u64 {
            if n > 1 {
                assert_eq!(
                    parked(broker.pid()),
                    0,
                    "a busy connection parked before message {n}"
                );
            }
            ca.send(n, &b, b"still here").await.unwrap();
            expect_ack(&mut ca, n, Code::OK).await;
            let d = expect_deliver(&mut cb).await;
            assert_eq!(d.seq, n);
            cb.ack(n).await.unwrap();
            // A parked receiver is sent its Deliver without waking, and its Ack wakes it in the
            // broker's own time: the Pong says the broker has read the Ack (it came first).
            cb.ping(n).await.unwrap();
            match expect_event(&mut cb).await {
                ringpost::client::Event::Pong { nonce } => assert_eq!(nonce, n),
                other => panic!("expected Pong, got {other:?}"),
            }
            glommio::timer::sleep(Duration::from_millis(25)).await; // the workload's pacing
        }
        wait_parked(&broker, 2).await;
    });
    broker.assert_serving();
}

#[test]
fn a_parked_connection_still_times_out() {
    let broker = test_broker()
        .limits("idle_timeout = \"1s\"")
        .server(PARK)
        .start();
    run(async {
        let mut silent = broker.connect(&user_on_shard("quiet", 1, 2), "d").await;
        wait_parked(&broker, 1).await;
        expect_goaway_then_close(&mut silent, Code::IDLE_TIMEOUT).await;
        wait_parked(&broker, 0).await;
    });
    broker.assert_serving();
}

#[test]
fn a_parked_connection_that_hangs_up_is_forgotten() {
    let broker = test_broker().limits("max_devices = 1").server(PARK).start();
    run(async {
        let u = user_on_shard("gone", 0, 2);
        let c = broker.connect(&u, "phone").await;
        wait_parked(&broker, 1).await;
        drop(c);
        // The hang-up wakes the parked connection, which closes and leaves the epoll set ...
        wait_parked(&broker, 0).await;
        // ... and frees its device slot: another device fits under max_devices = 1.
        let mut other = broker.connect(&u, "laptop").await;
        other.ping(1).await.unwrap();
        assert!(matches!(
            expect_event(&mut other).await,
            ringpost::client::Event::Pong { nonce: 1 }
        ));
    });
}

#[test]
fn a_parked_slow_reader_gets_its_whole_backlog_in_order() {
    let broker = test_broker()
        .limits("sends_per_sec = 1000000")
        .server(PARK)
        .start();
    run(async {
        let (a, b) = (user_on_shard("fast", 0, 2), user_on_shard("slow", 1, 2));
        let mut sender = broker.connect(&a, "d").await;
        let mut reader = broker.connect(&b, "d").await;
        wait_parked(&broker, 2).await;
        // Far more than the socket buffers hold while the reader reads nothing: the broker
        // must wake the parked connection to wait for writability.
        send_backlog_then_read(&mut sender, &mut reader, &b, 3000, 2048, 500).await;
    });
}

#[test]
fn shutdown_says_goaway_to_parked_connections() {
    let mut broker = test_broker().server(PARK).start();
    run(async {
        let mut clients = Vec::new();
        for i in 0..4 {
            clients.push(broker.connect(&format!("sleeper{i}"), "d").await);
        }
        wait_parked(&broker, 4).await;
        broker.signal(libc::SIGTERM);
        for c in &mut clients {
            expect_goaway_then_close(c, Code::SHUTDOWN).await;
        }
    });
    let status = broker
        .wait_exit(Duration::from_secs(10))
        .expect("broker exits");
    assert!(status.success(), "{status:?}");
}

//! One broker per data directory and per listen address: a second `ringpost` on either exits
//! non-zero naming what is taken, and the first keeps serving its connected clients.

use std::path::Path;

use ringpost::protocol::Code;
use ringpost_harness::*;

/// What a second broker printed before it exited.
struct Refused {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Starts a second `ringpost` (its config in `dir`) on `listen` and `data_dir`; it must exit on
/// its own (a broker that starts serving instead fails the test).
fn second_broker(dir: &Path, listen: &str, data_dir: &Path) -> Refused {
    let (status, stdout, stderr) = test_broker()
        .dir(dir)
        .server(&format!("listen = \"{listen}\""))
        .storage(&format!("data_dir = \"{}\"", data_dir.display()))
        .start_expecting_failure();
    Refused {
        code: status.code(),
        stdout,
        stderr,
    }
}

/// A client connected before the second broker tried still gets messages afterwards.
fn first_keeps_serving(broker: &TestBroker, try_second: impl FnOnce()) {
    let (a, b) = (user_on_shard("keep-a", 0, 2), user_on_shard("keep-b", 1, 2));
    run(async {
        let mut ca = broker.connect(&a, "d").await;
        let mut cb = broker.connect(&b, "d").await;
        ca.send(1, &b, b"before").await.unwrap();
        expect_ack(&mut ca, 1, Code::OK).await;
        assert_eq!(expect_deliver(&mut cb).await.body, b"before");
        try_second();
        for id in 2..=20 {
            ca.send(id, &b, b"after").await.unwrap();
            expect_ack(&mut ca, id, Code::OK).await;
            let d = expect_deliver(&mut cb).await;
            assert_eq!((d.seq, d.body.as_slice()), (id, &b"after"[..]));
        }
    });
    broker.assert_serving();
}

#[test]
fn a_second_broker_on_the_same_data_dir_exits_naming_it_and_the_holder() {
    let broker = test_broker().start();
    let data = broker.dir.join("data");
    first_keeps_serving(&broker, || {
        let refused = second_broker(&broker.dir.join("second"), "127.0.0.1:0", &data);
        assert_eq!(refused.code, Some(1), "{}", refused.stderr);
        assert!(
            refused.stderr.contains(&data.display().to_string())
                && refused.stderr.contains(&format!("pid {}", broker.pid())),
            "the refusal names the data dir and the holder: {}",
            refused.stderr
        );
        assert!(!refused.stdout.contains("listening"), "it never served");
    });
    let lock = std::fs::read_to_string(data.join("LOCK")).unwrap();
    assert_eq!(
        lock.trim(),
        broker.pid().to_string(),
        "LOCK names the holder"
    );
}

#[test]
fn a_second_broker_on_a_served_address_exits_naming_it() {
    // A fixed port below the ephemeral range: a port the kernel handed out for port 0 may be
    // handed out again as the source port of another test's client once the first broker
    // dies, and the restart below would then find it taken.
    let port = free_port_below_ephemeral();
    let broker = test_broker()
        .server(&format!("listen = \"127.0.0.1:{port}\""))
        .start();
    let listen = broker.addr.to_string();
    let other = broker.dir.join("other-data");
    first_keeps_serving(&broker, || {
        let refused = second_broker(&broker.dir.join("second"), &listen, &other);
        assert_eq!(refused.code, Some(1), "{}", refused.stderr);
        assert!(
            refused.stderr.contains(&listen) && refused.stderr.contains("already serves"),
            "the refusal names the address: {}",
            refused.stderr
        );
        assert!(!refused.stdout.contains("listening"), "it never served");
    });
    // The probe does not get in the way of a restart on the same address (connections the
    // killed broker held are left in TIME_WAIT).
    let config = broker.builder().clone();
    let dir = broker.crash();
    let restarted = config.dir(&dir).start();
    assert_eq!(
        restarted.addr.to_string(),
        listen,
        "a restart on the same address starts"
    );
    drop(restarted);
    let _ = std::fs::remove_dir_all(&dir);
}

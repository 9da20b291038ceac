//! One broker per data directory and per listen address: a second `ringpost` on either exits
//! non-zero naming what is taken, and the first keeps serving its connected clients.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ringpost::protocol::Code;
use support::*;

/// What a second broker printed before it exited.
struct Refused {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Starts a second `ringpost` with `listen` and `data_dir`; it must exit on its own within
/// 20 s (a broker that starts serving instead fails the test here).
fn second_broker(dir: &Path, name: &str, listen: &str, data_dir: &Path) -> Refused {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{listen}\"\nshards = 2\n[storage]\ndata_dir = \"{}\"\nsegment_size = \"1MiB\"\n[auth]\nsecret_file = \"{}/auth.secret\"\n",
            data_dir.display(),
            dir.display(),
        ),
    )
    .unwrap();
    let out_path = dir.join(format!("{name}.stdout"));
    let err_path = dir.join(format!("{name}.stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringpost"))
        .arg("--config")
        .arg(&config)
        .env("RINGPOST_AUTH_SECRET", SECRET)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn the second ringpost");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the second broker kept running; stdout: {}; stderr: {}",
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Refused {
        code: status.code(),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
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
    let broker = TestBroker::start(2, "", "");
    let data = broker.dir.join("data");
    first_keeps_serving(&broker, || {
        let refused = second_broker(&broker.dir, "second", "127.0.0.1:0", &data);
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
    let mut broker = TestBroker::start(2, "", "");
    let listen = broker.addr.to_string();
    let other = broker.dir.join("other-data");
    first_keeps_serving(&broker, || {
        let refused = second_broker(&broker.dir, "second", &listen, &other);
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
    broker.signal(libc::SIGKILL);
    assert!(broker.wait_exit(WAIT).is_some());
    let config = broker.dir.join("restart.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{listen}\"\nshards = 2\n[storage]\ndata_dir = \"{}\"\nsegment_size = \"1MiB\"\n[auth]\nsecret_file = \"{}/auth.secret\"\n",
            broker.dir.join("data").display(),
            broker.dir.display(),
        ),
    )
    .unwrap();
    let mut restarted = Command::new(env!("CARGO_BIN_EXE_ringpost"))
        .arg("--config")
        .arg(&config)
        .env("RINGPOST_AUTH_SECRET", SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(restarted.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = restarted.kill();
    let _ = restarted.wait();
    assert!(
        line.starts_with(&format!("ringpost listening on {listen}")),
        "a restart on the same address starts: {line:?}"
    );
}

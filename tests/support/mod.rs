//! Test harness: start the real `ringpost` binary on port 0 with a per-test config, mint
//! tokens, run client code on a glommio executor, and read raw frames off plain sockets.
#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_lite::future;
use glommio::{LocalExecutorBuilder, Placement};
use ringpost::client::{Client, ClientError, ClientOptions, Event};
use ringpost::protocol::{self, ClientMsg, Code, ServerMsg};

pub const SECRET: &str = "integration-test-secret";
/// Upper bound for any single expected event; generous for a loaded 2-core CI box.
pub const WAIT: Duration = Duration::from_secs(10);

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A broker process owned by one test; killed on drop.
pub struct TestBroker {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub shards: usize,
    pub dir: PathBuf,
}

impl TestBroker {
    /// Starts a broker with `shards` shards; `limits` are extra lines for the `[limits]` table
    /// and `server` for `[server]`.
    pub fn start(shards: usize, limits: &str, server: &str) -> TestBroker {
        let dir = std::env::temp_dir().join(format!(
            "ringpost-test-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        Self::start_in(dir, shards, limits, server, "")
    }

    /// Starts a broker over an existing test directory (a restart keeps its data); `storage`
    /// are extra lines for `[storage]`.
    pub fn start_in(
        dir: PathBuf,
        shards: usize,
        limits: &str,
        server: &str,
        storage: &str,
    ) -> TestBroker {
        let config = dir.join("ringpost.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nshards = {shards}\nshutdown_grace = \"5s\"\n{server}\n\
                 [storage]\ndata_dir = \"{d}/data\"\n{segment}{storage}\n\
                 [auth]\nsecret_file = \"{d}/auth.secret\"\n\
                 [limits]\n{limits}\n",
                d = dir.display(),
                // Small segments unless the test picks a size: tests run many brokers at once.
                segment = if storage.contains("segment_size") {
                    ""
                } else {
                    "segment_size = \"4MiB\"\n"
                },
            ),
        )
        .expect("write config");
        let stderr = std::fs::File::create(dir.join("stderr.log")).expect("stderr log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringpost"))
            .arg("--config")
            .arg(&config)
            .env("RINGPOST_AUTH_SECRET", SECRET)
            .env("RUST_LOG", "info")
            .env("RINGPOST_FAULT_NO_SPACE_FILE", dir.join("fault-no-space"))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn ringpost");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {} // keep draining so the broker never blocks on stdout
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "broker did not start; stderr:\n{}",
                    std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
                );
            }
        };
        let addr = line
            .strip_prefix("ringpost listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
        TestBroker {
            child: Some(child),
            addr,
            shards,
            dir,
        }
    }

    pub fn token(&self, user: &str) -> String {
        ringpost::auth::mint(SECRET.as_bytes(), user, Duration::from_secs(3600)).expect("mint")
    }

    pub fn opts(&self, user: &str, device: &str) -> ClientOptions {
        ClientOptions::new(self.addr, self.token(user), device)
    }

    pub async fn connect(&self, user: &str, device: &str) -> Client {
        match Client::connect(&self.opts(user, device), 0).await {
            Ok(c) => c,
            Err(e) => panic!("{user}/{device} could not log in: {e}"),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for the broker to exit; None if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Kills the broker with SIGKILL (a crash) and keeps its directory for a restart.
    pub fn crash(mut self) -> PathBuf {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let dir = self.dir.clone();
        self.dir = PathBuf::new(); // Drop must not delete it
        dir
    }

    /// Makes the broker's next segment creations fail with ENOSPC (a full disk) until
    /// [`TestBroker::free_disk`].
    pub fn fill_disk(&self) {
        std::fs::write(self.dir.join("fault-no-space"), b"").expect("fault file");
    }

    pub fn free_disk(&self) {
        std::fs::remove_file(self.dir.join("fault-no-space")).expect("fault file");
    }

    /// Waits until the broker's log contains `needle` (for events a client cannot observe
    /// without changing them).
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.stderr().contains(needle) {
            assert!(Instant::now() < deadline, "broker never logged {needle:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Proves the broker still serves: a fresh pair of users exchanges a message.
    pub fn assert_serving(&self) {
        let probe = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        run(async {
            let (a, b) = (format!("probe-a-{probe}"), format!("probe-b-{probe}"));
            let mut ca = self.connect(&a, "d").await;
            let mut cb = self.connect(&b, "d").await;
            ca.send(1, &b, b"still here").await.expect("send");
            expect_ack(&mut ca, 1, Code::OK).await;
            let d = expect_deliver(&mut cb).await;
            assert_eq!(
                (d.from_user.as_str(), d.body.as_slice()),
                (a.as_str(), &b"still here"[..])
            );
        });
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.dir.as_os_str().is_empty() {
            return;
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("broker stderr:\n{}", self.stderr());
        }
    }
}

/// An empty directory for a test that restarts brokers over it (removed by the test).
pub fn fresh_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ringpost-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create test dir");
    d
}

/// Runs `f` on a fresh single-threaded glommio executor.
pub fn run<T>(f: impl Future<Output = T>) -> T {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(256 * 1024)
        .make()
        .expect("glommio executor")
        .run(f)
}

/// A user name `prefix-N` owned by `shard` when the broker runs `shards` shards.
pub fn user_on_shard(prefix: &str, shard: usize, shards: usize) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|u| ringpost::shard::owner(u, shards) == shard)
        .unwrap_or_default()
}

/// Next event, or panic after `WAIT`.
pub async fn next_event(c: &mut Client) -> Result<Event, ClientError> {
    let recv = async { Some(c.recv().await) };
    let timeout = async {
        glommio::timer::sleep(WAIT).await;
        None
    };
    match future::or(recv, timeout).await {
        Some(r) => r,
        None => panic!("no event within {WAIT:?}"),
    }
}

pub async fn expect_event(c: &mut Client) -> Event {
    match next_event(c).await {
        Ok(e) => e,
        Err(e) => panic!("expected an event, got {e}"),
    }
}

pub async fn expect_deliver(c: &mut Client) -> ringpost::client::Delivery {
    match expect_event(c).await {
        Event::Deliver(d) => d,
        other => panic!("expected Deliver, got {other:?}"),
    }
}

pub async fn expect_ack(c: &mut Client, client_msg_id: u64, status: Code) {
    match expect_event(c).await {
        Event::SendAck {
            client_msg_id: id,
            status: s,
        } => assert_eq!((id, s), (client_msg_id, status), "SendAck"),
        other => panic!("expected SendAck({client_msg_id}), got {other:?}"),
    }
}

/// `sender` sends `n` messages of `body_len` bytes to `to` without `reader` reading, waits for
/// every SendAck{OK}, then `reader` takes them all in seq order, acking every `ack_every`.
pub async fn send_backlog_then_read(
    sender: &mut Client,
    reader: &mut Client,
    to: &str,
    n: u64,
    body_len: usize,
    ack_every: u64,
) {
    let body = vec![b'x'; body_len];
    for i in 1..=n {
        sender.send(i, to, &body).await.unwrap();
    }
    for i in 1..=n {
        expect_ack(sender, i, Code::OK).await;
    }
    for i in 1..=n {
        let d = expect_deliver(reader).await;
        assert_eq!(d.seq, i);
        assert_eq!(d.body.len(), body_len);
        if i % ack_every == 0 {
            reader.ack(i).await.unwrap();
        }
    }
}

/// Expects GoAway(code) and then the end of the stream.
pub async fn expect_goaway_then_close(c: &mut Client, code: Code) {
    match expect_event(c).await {
        Event::GoAway { code: got, reason } => {
            assert_eq!(got, code, "GoAway code (reason: {reason})");
            assert!(!reason.is_empty(), "GoAway must carry a reason");
        }
        other => panic!("expected GoAway({code:?}), got {other:?}"),
    }
    match next_event(c).await {
        Err(ClientError::Closed) | Err(ClientError::Io(_)) => {}
        other => panic!("expected close after GoAway, got {other:?}"),
    }
}

// ---- raw sockets ---------------------------------------------------------------------------

pub fn raw_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s
}

pub fn frame(msg: &ClientMsg<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    protocol::encode_client(msg, &mut out);
    out
}

/// Reads one whole server frame's payload; None on EOF/reset.
pub fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut payload = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut payload).ok()?;
    Some(payload)
}

/// Expects an Error frame with `code` and then EOF.
pub fn expect_error_then_close(s: &mut TcpStream, code: Code) -> String {
    let payload = read_frame(s).unwrap_or_else(|| panic!("expected Error({code:?}), got EOF"));
    let message = match protocol::decode_server(&payload) {
        Ok(ServerMsg::Error { code: got, message }) => {
            assert_eq!(got, code, "Error code (message: {message})");
            assert!(!message.is_empty(), "Error must carry a message");
            message.to_owned()
        }
        other => panic!("expected Error({code:?}), got {other:?}"),
    };
    let mut rest = [0u8; 1];
    match s.read(&mut rest) {
        Ok(0) => {}
        Ok(_) => panic!("expected close after Error"),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("expected close after Error, got {e}"),
    }
    message
}

/// Logs in on a raw socket and returns it after LoginOk.
pub fn raw_login(broker: &TestBroker, user: &str) -> TcpStream {
    let mut s = raw_connect(broker.addr);
    s.write_all(&frame(&ClientMsg::Login {
        token: &broker.token(user),
        device_id: "raw",
        last_seq: 0,
    }))
    .expect("write login");
    let payload = read_frame(&mut s).expect("LoginOk");
    assert!(
        matches!(
            protocol::decode_server(&payload),
            Ok(ServerMsg::LoginOk { .. })
        ),
        "expected LoginOk"
    );
    s
}

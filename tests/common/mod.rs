//! A broker whose whole configuration and environment the test controls — every table including
//! `[auth]`, and whether `RINGPOST_AUTH_SECRET` is set — for the auth and startup scenarios.
//! (Most scenario files use `support`, whose broker fixes `[auth]` and the secret.)
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ringpost::protocol::{self, ClientMsg, Code, ServerMsg};

pub const WAIT: Duration = Duration::from_secs(10);

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A fresh, empty directory unique to this process and call.
pub fn test_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "ringpost-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create test dir");
    d
}

/// What goes into the config file and the environment. Each `String` holds extra lines for its
/// table; a key given there replaces the harness's default for it.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    pub shards: usize,
    pub server: String,
    pub storage: String,
    pub auth: String,
    pub limits: String,
    /// `Some(s)`: `RINGPOST_AUTH_SECRET=s`; `None`: the variable is removed from the child's env.
    pub env_secret: Option<String>,
}

/// `[table]`, the defaults whose key `extra` does not set, then `extra`.
fn table(name: &str, defaults: &[(&str, String)], extra: &str) -> String {
    let sets = |key: &str| {
        extra.lines().any(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
    };
    let mut out = format!("[{name}]\n");
    for (key, value) in defaults {
        if !sets(key) {
            out.push_str(&format!("{key} = {value}\n"));
        }
    }
    out.push_str(extra);
    out.push('\n');
    out
}

/// The config file a `Setup` describes, with data and secret inside `dir`.
pub fn config_text(dir: &Path, setup: &Setup) -> String {
    let d = dir.display();
    let q = |s: String| format!("\"{s}\"");
    table(
        "server",
        &[
            ("listen", q("127.0.0.1:0".into())),
            ("shards", setup.shards.to_string()),
            ("shutdown_grace", q("5s".into())),
        ],
        &setup.server,
    ) + &table(
        "storage",
        &[
            ("data_dir", q(format!("{d}/data"))),
            ("segment_size", q("4MiB".into())),
        ],
        &setup.storage,
    ) + &table(
        "auth",
        &[("secret_file", q(format!("{d}/auth.secret")))],
        &setup.auth,
    ) + &table("limits", &[], &setup.limits)
}

/// A broker process owned by one test; killed on drop (its directory is left to the test).
pub struct Broker {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// N from the `ringpost listening on ADDR with N shards` line.
    pub shards: usize,
    pub dir: PathBuf,
    stderr_path: PathBuf,
}

impl Broker {
    /// Writes `dir/ringpost.toml` from `setup` and starts the broker on it; panics with its
    /// stderr if it does not print its listening line within 20 s.
    pub fn start(dir: &Path, setup: &Setup) -> Broker {
        let config = dir.join("ringpost.toml");
        std::fs::write(&config, config_text(dir, setup)).expect("write config");
        let stderr_path = dir.join(format!(
            "stderr-{}.log",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let stderr = std::fs::File::create(&stderr_path).expect("stderr log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringpost"));
        cmd.arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr);
        match &setup.env_secret {
            Some(s) => cmd.env("RINGPOST_AUTH_SECRET", s),
            None => cmd.env_remove("RINGPOST_AUTH_SECRET"),
        };
        let mut child = cmd.spawn().expect("spawn ringpost");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {} // keep draining so the broker never blocks on stdout
        });
        let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "broker did not print its listening line; stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        };
        let parsed = line
            .strip_prefix("ringpost listening on ")
            .and_then(|rest| {
                let mut words = rest.split_whitespace();
                let addr = words.next()?.parse().ok()?;
                let with = words.next()?;
                let n = words.next()?.parse().ok()?;
                let unit = words.next()?;
                (with == "with" && unit == "shards" && words.next().is_none()).then_some((addr, n))
            });
        let Some((addr, shards)) = parsed else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("unexpected first stdout line: {line:?}");
        };
        Broker {
            child: Some(child),
            addr,
            shards,
            dir: dir.to_path_buf(),
            stderr_path,
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn sigterm(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
    }

    /// Waits for the process to exit; None if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then expects exit status 0 within `within`.
    pub fn stop(&mut self, within: Duration) {
        self.sigterm();
        let status = self
            .wait_exit(within)
            .unwrap_or_else(|| panic!("broker still running {within:?} after SIGTERM"));
        assert!(
            status.success(),
            "exit status {status:?}; stderr:\n{}",
            self.stderr()
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("broker stderr:\n{}", self.stderr());
        }
    }
}

/// Logs in on a fresh raw socket: `Ok((user_id, shard))` on LoginOk, `Err((code, message))` on
/// an Error frame, which must be followed by the close.
pub fn try_login(
    addr: SocketAddr,
    token: &str,
    device_id: &str,
) -> Result<(String, u16), (Code, String)> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("read timeout");
    let mut login = Vec::new();
    protocol::encode_client(
        &ClientMsg::Login {
            token,
            device_id,
            last_seq: 0,
        },
        &mut login,
    );
    s.write_all(&login).expect("write login");
    let payload = read_frame(&mut s).expect("a reply to Login, not EOF");
    match protocol::decode_server(&payload) {
        Ok(ServerMsg::LoginOk { user_id, shard, .. }) => Ok((user_id.to_owned(), shard)),
        Ok(ServerMsg::Error { code, message }) => {
            let message = message.to_owned();
            assert!(
                read_frame(&mut s).is_none(),
                "the connection is closed after Error({code:?})"
            );
            Err((code, message))
        }
        other => panic!("expected LoginOk or Error, got {other:?}"),
    }
}

/// Reads one whole frame's payload; None on EOF or reset.
pub fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut payload = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut payload).ok()?;
    Some(payload)
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Runs the broker on `setup` expecting it to refuse to start: returns its exit status, stdout
/// and stderr. Panics (after killing it) if it is still running after `WAIT`.
pub fn start_expecting_failure(dir: &Path, setup: &Setup) -> (ExitStatus, String, String) {
    let config = dir.join("ringpost.toml");
    std::fs::write(&config, config_text(dir, setup)).expect("write config");
    let out_path = dir.join("failed-stdout.log");
    let err_path = dir.join("failed-stderr.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringpost"));
    cmd.arg("--config")
        .arg(&config)
        .stdout(std::fs::File::create(&out_path).expect("stdout log"))
        .stderr(std::fs::File::create(&err_path).expect("stderr log"));
    match &setup.env_secret {
        Some(s) => cmd.env("RINGPOST_AUTH_SECRET", s),
        None => cmd.env_remove("RINGPOST_AUTH_SECRET"),
    };
    let mut child = cmd.spawn().expect("spawn ringpost");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the broker was expected to refuse to start but is still running; stdout:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (
        status,
        std::fs::read_to_string(&out_path).unwrap_or_default(),
        std::fs::read_to_string(&err_path).unwrap_or_default(),
    )
}

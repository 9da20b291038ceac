//! The one test harness for ringpost's black-box tests, in `tests/` and `tools/tests/`.
//!
//! - [`test_broker`] returns a [`BrokerBuilder`]: config tables as TOML lines (a key given there
//!   replaces the harness default), the shard count, the environment, and the directory; then
//!   [`BrokerBuilder::start`] runs the real `ringpost` binary on port 0 and waits for its
//!   listening line, or [`BrokerBuilder::start_expecting_failure`] expects it to refuse.
//! - [`TestBroker`]: the running process (killed on drop): its TCP and WebSocket addresses,
//!   tokens, logged-in clients (TCP or WebSocket), signals,
//!   crash and restart over the same directory, its log.
//! - Client helpers on a glommio executor ([`run`], [`expect_deliver`], …) and raw-socket
//!   helpers ([`raw_login`], [`read_frame`], …) for bad-input tests.
//! - [`tools`]: the `ringpost-tools` binary.
//! - The admin listener is on `127.0.0.1:0` with its token file in the broker's directory:
//!   [`TestBroker::admin_addr`] (from the `ringpost admin on ADDR` line that follows the
//!   listening line) and [`TestBroker::admin_token`]; [`TestBroker::metrics`] scrapes it and
//!   [`metric`] / [`metric_total`] read the exposition.
//! - [`tls`]: test certificates (a CA and broker certificates) for TLS scenarios;
//!   [`BrokerBuilder::tls`] turns the broker's `[tls]` on with one, [`TestBroker::tls_opts`]
//!   gives a client that trusts the CA.
//!
//! Every broker gets its own directory under the system temp dir, removed when the test
//! passes and kept (with the broker's stderr printed) when it fails.
//!
//! Defaults that differ from the embedded config, for tests: 4 MiB segments (many brokers run
//! at once), a 5 s shutdown grace, and `own_send_sync = false`, so that in scenarios about
//! other concerns a sender's connection carries its SendAcks and nothing else. The own-send
//! and group scenarios, and the tools' brokers ([`tools_broker`]), run with own-send sync on,
//! as the embedded default has it.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_lite::future;
use glommio::{LocalExecutorBuilder, Placement};
use ringpost::client::{Client, ClientError, ClientOptions, Delivery, Event};
use ringpost::protocol::{self, ClientMsg, Code, ServerMsg};

pub mod tls;

/// The HMAC secret brokers get through `RINGPOST_AUTH_SECRET` unless a test says otherwise.
pub const SECRET: &str = "integration-test-secret";
/// Upper bound for any single expected event; generous for a loaded 2-core CI box.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a broker may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(20);

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn next_id() -> usize {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

// ---- directories ---------------------------------------------------------------------------

/// A fresh, empty directory unique to this process and call.
pub fn test_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "ringpost-{name}-{}-{}",
        std::process::id(),
        next_id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create test dir");
    d
}

/// A [`test_dir`] removed on drop (kept if the test fails, for a look at what it holds).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        TempDir(test_dir(name))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

// ---- binaries ------------------------------------------------------------------------------

/// A binary of the workspace, next to the running test in the target directory
/// (`target/<profile>/deps/<test>` → `target/<profile>/<name>`).
fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the running test");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|profile| profile.join(name))
        .unwrap_or_else(|| PathBuf::from(name));
    assert!(
        bin.exists(),
        "{bin:?} is missing: build the workspace first (cargo test --workspace)"
    );
    bin
}

/// The broker binary (`RINGPOST_BIN` overrides).
pub fn broker_bin() -> PathBuf {
    std::env::var_os("RINGPOST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_bin("ringpost"))
}

/// `ringpost ARGS`, run to completion (the CLI: --print-config, --check-config, …).
pub fn ringpost_cli(args: &[&str]) -> std::process::Output {
    Command::new(broker_bin())
        .args(args)
        .output()
        .expect("run ringpost")
}

/// `ringpost --check-config` on `body` written to `dir/name`: exit code and stderr.
pub fn check_config(dir: &Path, name: &str, body: &str) -> (Option<i32>, String) {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write config");
    let out = ringpost_cli(&["--check-config", &p.to_string_lossy()]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `ringpost-tools ARGS`.
pub fn tools(args: &[&str]) -> Command {
    let mut c = Command::new(workspace_bin("ringpost-tools"));
    c.args(args);
    c
}

// ---- configuration -------------------------------------------------------------------------

/// What to start: config tables, shard count, environment, directory.
#[derive(Debug, Clone)]
pub struct BrokerBuilder {
    shards: usize,
    /// Extra TOML lines per table, in the order given.
    tables: BTreeMap<String, String>,
    /// `Some(s)`: `RINGPOST_AUTH_SECRET=s`; `None`: removed from the child's environment.
    env_secret: Option<String>,
    env: Vec<(String, String)>,
    dir: Option<PathBuf>,
}

/// A broker with 2 shards, 4 MiB segments and [`SECRET`], in a fresh directory.
pub fn test_broker() -> BrokerBuilder {
    BrokerBuilder {
        shards: 2,
        tables: BTreeMap::new(),
        env_secret: Some(SECRET.into()),
        env: Vec::new(),
        dir: None,
    }
}

/// A broker for the tools' tests: [`test_broker`] with fsync = "always", own-send sync on (the
/// embedded default: the load tools must handle it) and its own secret file (the tools read
/// `--secret-file`; see [`TestBroker::secret_path`]).
pub fn tools_broker() -> BrokerBuilder {
    test_broker()
        .server("own_send_sync = true")
        .storage("fsync = \"always\"")
        .secret_file()
}

impl BrokerBuilder {
    /// `[server] shards` (0: one per CPU).
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = n;
        self
    }

    /// Extra lines for `[name]`; a key set here replaces the harness default for it.
    pub fn table(mut self, name: &str, lines: &str) -> Self {
        let t = self.tables.entry(name.to_owned()).or_default();
        t.push_str(lines);
        t.push('\n');
        self
    }

    pub fn server(self, lines: &str) -> Self {
        self.table("server", lines)
    }

    pub fn storage(self, lines: &str) -> Self {
        self.table("storage", lines)
    }

    pub fn auth(self, lines: &str) -> Self {
        self.table("auth", lines)
    }

    pub fn limits(self, lines: &str) -> Self {
        self.table("limits", lines)
    }

    /// `[tls]` on with `cert` (see [`tls::TestCa::issue`]).
    pub fn tls(self, cert: &tls::ServerCert) -> Self {
        self.table("tls", &cert.config_lines())
    }

    /// The secret comes from `RINGPOST_AUTH_SECRET=secret` (the default is [`SECRET`]).
    pub fn env_secret(mut self, secret: &str) -> Self {
        self.env_secret = Some(secret.into());
        self
    }

    /// No `RINGPOST_AUTH_SECRET`: the broker uses (or creates) its secret file.
    pub fn secret_file(mut self) -> Self {
        self.env_secret = None;
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.env.push((
            key.to_owned(),
            value.as_ref().to_string_lossy().into_owned(),
        ));
        self
    }

    /// Runs in `dir` (kept on drop: the test owns it, e.g. to restart over the same data).
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// The config file this builder describes, with data and secret inside `dir`.
    pub fn config_text(&self, dir: &Path) -> String {
        let d = dir.display();
        let q = |s: String| format!("\"{s}\"");
        let defaults: [(&str, Vec<(&str, String)>); 5] = [
            (
                "server",
                vec![
                    ("listen", q("127.0.0.1:0".into())),
                    ("ws_listen", q("127.0.0.1:0".into())),
                    ("shards", self.shards.to_string()),
                    ("shutdown_grace", q("5s".into())),
                    ("own_send_sync", "false".into()),
                ],
            ),
            (
                "storage",
                vec![
                    ("data_dir", q(format!("{d}/data"))),
                    // Small segments: tests run many brokers at once.
                    ("segment_size", q("4MiB".into())),
                ],
            ),
            ("auth", vec![("secret_file", q(format!("{d}/auth.secret")))]),
            ("limits", vec![]),
            (
                "admin",
                vec![
                    ("listen", q("127.0.0.1:0".into())),
                    ("token_file", q(format!("{d}/admin.token"))),
                ],
            ),
        ];
        let mut out = String::new();
        for (name, keys) in &defaults {
            out += &table_text(
                name,
                keys,
                self.tables.get(*name).map_or("", String::as_str),
            );
        }
        for (name, extra) in &self.tables {
            if !defaults.iter().any(|(n, _)| n == name) {
                out += &table_text(name, &[], extra);
            }
        }
        out
    }

    /// Writes the config into the broker's directory and builds the command.
    fn command(&self, dir: &Path) -> Command {
        let config = dir.join("ringpost.toml");
        std::fs::write(&config, self.config_text(dir)).expect("write config");
        let mut cmd = Command::new(broker_bin());
        cmd.arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .env(
                ringpost::log::segment::FAULT_NO_SPACE_ENV,
                dir.join("fault-no-space"),
            );
        match &self.env_secret {
            Some(s) => cmd.env("RINGPOST_AUTH_SECRET", s),
            None => cmd.env_remove("RINGPOST_AUTH_SECRET"),
        };
        cmd.env_remove("RINGPOST_ADMIN_TOKEN");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn take_dir(&self) -> (PathBuf, bool) {
        match &self.dir {
            Some(d) => {
                std::fs::create_dir_all(d).expect("create broker dir");
                (d.clone(), true)
            }
            None => (test_dir("broker"), false),
        }
    }

    /// Starts the broker; panics with its stderr if it does not print its listening line.
    pub fn start(&self) -> TestBroker {
        let (dir, keep_dir) = self.take_dir();
        let stderr_path = dir.join(format!("stderr-{}.log", next_id()));
        let stderr = std::fs::File::create(&stderr_path).expect("stderr log");
        let mut child = self
            .command(&dir)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn ringpost");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            // The listening line, then the websocket line (when WebSocket is on), then the
            // admin line (when the admin listener is on).
            for line in lines.by_ref().take(3).map_while(Result::ok) {
                let _ = tx.send(line);
            }
            for _ in lines {} // keep draining so the broker never blocks on stdout
        });
        let fail = |child: &mut Child, what: String| -> ! {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what}; stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            )
        };
        let Ok(line) = rx.recv_timeout(START_TIMEOUT) else {
            fail(&mut child, "broker did not print its listening line".into())
        };
        let Some((addr, shards)) = parse_listening(&line) else {
            fail(
                &mut child,
                format!("unexpected first stdout line: {line:?}"),
            )
        };
        let ws_on = ringpost::config::Config::from_toml_str(&self.config_text(&dir))
            .map(|c| c.server.ws_listen.is_some())
            .unwrap_or(false);
        let ws_addr = if ws_on {
            let line = rx.recv_timeout(START_TIMEOUT).unwrap_or_default();
            match line.strip_prefix("ringpost websocket on ").map(str::parse) {
                Some(Ok(addr)) => Some(addr),
                _ => fail(
                    &mut child,
                    format!("expected `ringpost websocket on ADDR`, got {line:?}"),
                ),
            }
        } else {
            None
        };
        // With the admin listener on, the next line names its address.
        let admin = if self.admin_enabled() {
            let line = rx.recv_timeout(START_TIMEOUT).unwrap_or_default();
            match line.strip_prefix("ringpost admin on ").map(str::parse) {
                Some(Ok(a)) => Some(a),
                _ => fail(&mut child, format!("expected the admin line, got {line:?}")),
            }
        } else {
            None
        };
        TestBroker {
            child: Some(child),
            addr,
            ws_addr,
            admin,
            shards,
            dir,
            keep_dir,
            stderr_path,
            builder: self.clone(),
        }
    }

    /// False when the test turned the admin listener off (`[admin] listen = ""`).
    fn admin_enabled(&self) -> bool {
        !self.tables.get("admin").is_some_and(|t| {
            t.lines()
                .any(|l| l.split_whitespace().collect::<String>() == "listen=\"\"")
        })
    }

    /// Runs the broker expecting it to refuse to start: its exit status, stdout and stderr.
    /// Panics (after killing it) if it is still running after [`WAIT`].
    pub fn start_expecting_failure(&self) -> (ExitStatus, String, String) {
        let (dir, keep_dir) = self.take_dir();
        let n = next_id();
        let out_path = dir.join(format!("failed-stdout-{n}.log"));
        let err_path = dir.join(format!("failed-stderr-{n}.log"));
        let mut child = self
            .command(&dir)
            .stdout(std::fs::File::create(&out_path).expect("stdout log"))
            .stderr(std::fs::File::create(&err_path).expect("stderr log"))
            .spawn()
            .expect("spawn ringpost");
        let status = wait_child(&mut child, WAIT);
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the broker was expected to refuse to start but is still running; stdout:\n{}",
                read(&out_path)
            );
        };
        let result = (status, read(&out_path), read(&err_path));
        if !keep_dir {
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }
}

/// `[name]`, the defaults whose key `extra` does not set, then `extra`.
fn table_text(name: &str, defaults: &[(&str, String)], extra: &str) -> String {
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

/// `ringpost listening on ADDR with N shards` → (ADDR, N).
fn parse_listening(line: &str) -> Option<(SocketAddr, usize)> {
    let rest = line.strip_prefix("ringpost listening on ")?;
    let mut words = rest.split_whitespace();
    let addr = words.next()?.parse().ok()?;
    let with = words.next()?;
    let n = words.next()?.parse().ok()?;
    let unit = words.next()?;
    (with == "with" && unit == "shards").then_some((addr, n))
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
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

// ---- a running broker ----------------------------------------------------------------------

/// A broker process owned by one test; killed on drop.
pub struct TestBroker {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// From the `ringpost websocket on ADDR` line (None when `ws_listen = ""`).
    pub ws_addr: Option<SocketAddr>,
    /// The admin listener, from the `ringpost admin on ADDR` line (None when disabled).
    pub admin: Option<SocketAddr>,
    /// N from the `ringpost listening on ADDR with N shards` line.
    pub shards: usize,
    pub dir: PathBuf,
    /// The test owns `dir` (given with [`BrokerBuilder::dir`] or kept by [`TestBroker::crash`]).
    keep_dir: bool,
    stderr_path: PathBuf,
    builder: BrokerBuilder,
}

impl TestBroker {
    pub fn token(&self, user: &str) -> String {
        let secret = match &self.builder.env_secret {
            Some(s) => s.clone(),
            None => std::fs::read_to_string(self.secret_path())
                .expect("the broker's secret file")
                .trim()
                .to_owned(),
        };
        ringpost::auth::mint(secret.as_bytes(), user, Duration::from_secs(3600)).expect("mint")
    }

    /// Where the broker keeps (or would create) its secret file.
    pub fn secret_path(&self) -> PathBuf {
        self.dir.join("auth.secret")
    }

    /// The secret file, written with [`SECRET`] when the broker took the secret from the
    /// environment (for tools that read `--secret-file`).
    pub fn secret_file(&self) -> PathBuf {
        let path = self.secret_path();
        if let Some(s) = &self.builder.env_secret {
            std::fs::write(&path, s).expect("write secret file");
        }
        path
    }

    /// The admin listener's address; panics if the test disabled it.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.expect("the admin listener is enabled")
    }

    /// The admin API's bearer token (the file the broker created, unless the test set
    /// `RINGPOST_ADMIN_TOKEN` with [`BrokerBuilder::env`]).
    pub fn admin_token(&self) -> String {
        if let Some((_, t)) = self
            .builder
            .env
            .iter()
            .find(|(k, _)| k == "RINGPOST_ADMIN_TOKEN")
        {
            return t.clone();
        }
        std::fs::read_to_string(self.dir.join("admin.token"))
            .expect("the broker's admin token file")
            .trim()
            .to_owned()
    }

    /// `GET /metrics` on the admin listener: the exposition text (see [`metric`]).
    pub fn metrics(&self) -> String {
        let (status, body) = self.admin_call("GET", "/metrics", None);
        assert_eq!(status, 200, "{body}");
        body
    }

    /// One request to the admin listener with the bearer token (`body` as JSON text):
    /// the status and the body. (`tests/admin_scenario.rs` has the hostile-HTTP client.)
    pub fn admin_call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let mut s = TcpStream::connect(self.admin_addr()).expect("connect to admin");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        let body = body.unwrap_or("");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.admin_token(),
            body.len()
        );
        s.write_all(request.as_bytes()).expect("write request");
        let mut out = Vec::new();
        loop {
            let mut chunk = [0u8; 16 * 1024];
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                // A glommio thread (inside `run`) sees EINTR on blocking reads.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("reading the answer to {method} {path}: {e}"),
            }
        }
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head}"));
        (status, body.to_owned())
    }

    pub fn addr_string(&self) -> String {
        self.addr.to_string()
    }

    pub fn opts(&self, user: &str, device: &str) -> ClientOptions {
        ClientOptions::new(self.addr, self.token(user), device)
    }

    /// [`TestBroker::opts`] over TLS, trusting the CA in `ca_file`.
    pub fn tls_opts(&self, user: &str, device: &str, ca_file: &Path) -> ClientOptions {
        self.opts(user, device)
            .with_tls(ca_file)
            .expect("a readable CA file")
    }

    /// The WebSocket port (panics if the broker runs without one).
    pub fn ws(&self) -> SocketAddr {
        self.ws_addr.expect("this broker has WebSocket off")
    }

    /// [`TestBroker::opts`] for a client on the WebSocket port.
    pub fn ws_opts(&self, user: &str, device: &str) -> ClientOptions {
        self.opts(user, device).over_websocket(self.ws())
    }

    /// A logged-in client on the WebSocket port.
    pub async fn connect_ws(&self, user: &str, device: &str) -> Client {
        match Client::connect(&self.ws_opts(user, device), 0).await {
            Ok(c) => c,
            Err(e) => panic!("{user}/{device} could not log in over WebSocket: {e}"),
        }
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

    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Waits for the broker to exit; None if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_child(self.child.as_mut()?, timeout)
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

    /// Kills the broker with SIGKILL (a crash) and keeps its directory for a restart.
    pub fn crash(mut self) -> PathBuf {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.keep_dir = true;
        self.dir.clone()
    }

    /// The builder this broker was started from: `broker.builder().clone().dir(dir).start()`
    /// starts it again over its directory after [`TestBroker::crash`].
    pub fn builder(&self) -> &BrokerBuilder {
        &self.builder
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
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Proves the broker still serves: a fresh pair of users exchanges a message.
    pub fn assert_serving(&self) {
        let probe = next_id();
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
        if std::thread::panicking() {
            eprintln!("broker stderr:\n{}", self.stderr());
        } else if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// ---- clients on glommio --------------------------------------------------------------------

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

pub async fn expect_deliver(c: &mut Client) -> Delivery {
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
            ..
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
        sender.send(i, to, &body).await.expect("send");
    }
    for i in 1..=n {
        expect_ack(sender, i, Code::OK).await;
    }
    for i in 1..=n {
        let d = expect_deliver(reader).await;
        assert_eq!(d.seq, i);
        assert_eq!(d.body.len(), body_len);
        if i % ack_every == 0 {
            reader.ack(i).await.expect("ack");
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

/// A port that is free now and below the kernel's ephemeral range (so no client connection
/// is given it as its source port), for tests that must bind the same port twice.
pub fn free_port_below_ephemeral() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| {
            r.split_whitespace()
                .next()
                .and_then(|p| p.parse::<u16>().ok())
        })
        .unwrap_or(32768);
    let start = 20_000 + (std::process::id() % 5_000) as u16;
    (start..low.max(start + 1))
        .chain(10_000..start)
        .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port below the ephemeral range")
}

pub fn raw_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s
}

/// [`raw_connect`] from the local address `source` (e.g. 127.0.0.2: all of 127.0.0.0/8 is
/// loopback), for tests of per-address limits.
pub fn raw_connect_from(addr: SocketAddr, source: std::net::Ipv4Addr) -> TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(to) = addr else {
        panic!("raw_connect_from is IPv4 only")
    };
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a socket made here; every result is checked, and the fd is
    // given to the TcpStream, which owns it from then on.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let local = sockaddr(source, 0);
        let rc = libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len);
        assert_eq!(rc, 0, "bind {source}: {}", std::io::Error::last_os_error());
        let remote = sockaddr(*to.ip(), to.port());
        let rc = libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len);
        assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        stream
    }
}

pub fn frame(msg: &ClientMsg<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    protocol::encode_client(msg, &mut out);
    out
}

/// Reads one whole server frame's payload (exactly its bytes, nothing after it); None on EOF
/// or reset.
pub fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; protocol::LEN_PREFIX];
    s.read_exact(&mut len).ok()?;
    let mut payload = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut payload).ok()?;
    Some(payload)
}

/// Expects an Error frame with `code` and then EOF; returns its message.
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

/// Logs in on a fresh raw socket: `Ok((user_id, shard))` on LoginOk, `Err((code, message))` on
/// an Error frame, which must be followed by the close.
pub fn try_login(
    addr: SocketAddr,
    token: &str,
    device_id: &str,
) -> Result<(String, u16), (Code, String)> {
    let mut s = raw_connect(addr);
    s.write_all(&frame(&ClientMsg::Login {
        token,
        device_id,
        last_seq: 0,
    }))
    .expect("write login");
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

/// The value of one exact series (`name{labels}`) in an exposition, 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (s, v) = l.rsplit_once(' ')?;
            (s == series).then(|| v.parse::<f64>().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// The sum over every series named `name` (`name` or `name{...}`) in an exposition.
pub fn metric_total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (s, v) = l.rsplit_once(' ')?;
            (s == name || s.starts_with(&format!("{name}{{")))
                .then(|| v.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

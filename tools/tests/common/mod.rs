//! Shared harness for the tools' black-box tests: the real broker binary on a free port, and
//! the `ringpost-tools` binary.
#![allow(dead_code)] // each test file uses a different part

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("ringpost-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running broker (killed on drop). Its data and secret live in `dir`, so a broker started
/// again over the same `dir` recovers the same log.
pub struct Broker {
    child: Child,
    pub addr: String,
    pub secret: PathBuf,
}

impl Broker {
    /// 2 shards, fsync = "always", 4 MiB segments; `extra` is appended to the config (whole
    /// tables, e.g. "[limits]\nsends_per_sec = 100000\n").
    pub fn start(dir: &Path, extra: &str) -> Broker {
        let config = dir.join("ringpost.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nshards = 2\n\
                 [storage]\ndata_dir = \"{d}/data\"\nsegment_size = \"4MiB\"\nfsync = \"always\"\n\
                 [auth]\nsecret_file = \"{d}/auth.secret\"\n{extra}",
                d = dir.display()
            ),
        )
        .unwrap();
        let mut child = Command::new(broker_bin())
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .strip_prefix("ringpost listening on ")
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("broker did not start: {line:?}"))
            .to_string();
        Broker {
            child,
            addr,
            secret: dir.join("auth.secret"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: a crash.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn broker_bin() -> PathBuf {
    // The broker is a binary of the sibling package, built into the same target directory.
    let tools = PathBuf::from(env!("CARGO_BIN_EXE_ringpost-tools"));
    let bin = tools.with_file_name("ringpost");
    assert!(
        bin.exists(),
        "build the workspace first (cargo test --workspace): {bin:?}"
    );
    bin
}

/// `ringpost-tools ARGS`.
pub fn tools(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ringpost-tools"));
    c.args(args);
    c
}

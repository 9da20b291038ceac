//! What a new user meets first: every tool exits quietly when its reader goes away, `token`
//! takes the secret from where the broker does, and the README's walk-through crosses cores.

use std::process::Stdio;

use ringpost_harness::{tools, TempDir};

/// Runs the tool with its stdout a pipe whose reader has already gone (`… | head` after
/// `head` exited): (exit code, stderr).
fn with_closed_stdout(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let mut cmd = tools(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run tool");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tools_exit_quietly_when_the_reader_goes_away() {
    let dir = TempDir::new("cli-epipe");
    let (code, err) = with_closed_stdout(&["inspect", &dir.path().to_string_lossy()], &[]);
    assert_eq!((code, err.as_str()), (Some(0), ""), "inspect");
    let (code, err) =
        with_closed_stdout(&["inspect", "--json", &dir.path().to_string_lossy()], &[]);
    assert_eq!((code, err.as_str()), (Some(0), ""), "inspect --json");
    let (code, err) = with_closed_stdout(
        &["token", "--user", "alice"],
        &[("RINGPOST_AUTH_SECRET", "s")],
    );
    assert_eq!((code, err.as_str()), (Some(0), ""), "token");
}

#[test]
fn token_honours_ringpost_auth_secret_like_the_broker() {
    let out = tools(&["token", "--secret-file", "/nope", "--user", "alice"])
        .env("RINGPOST_AUTH_SECRET", "from-the-environment")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let v = ringpost::auth::Verifier::new(b"from-the-environment", std::time::Duration::ZERO);
    assert_eq!(v.verify(token.trim()).unwrap(), "alice");

    // Without it, the missing file is named, and so is the variable (which now works).
    let out = tools(&["token", "--secret-file", "/nope", "--user", "alice"])
        .env_remove("RINGPOST_AUTH_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nope") && err.contains("RINGPOST_AUTH_SECRET"),
        "{err}"
    );
}

#[test]
fn the_readme_walk_through_sends_between_two_shards() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let users: Vec<&str> = readme
        .split("--user ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert!(
        users.len() >= 2,
        "the walk-through mints two tokens: {users:?}"
    );
    let (a, b) = (users[0], users[1]);
    assert_ne!(a, b);
    // With the 2 shards of the walk-through, and on a 16-core box.
    for shards in [2, 16] {
        assert_ne!(
            ringpost::shard::owner(a, shards),
            ringpost::shard::owner(b, shards),
            "{a} and {b} share a shard of {shards}: the message would not cross cores"
        );
    }
    assert!(
        readme.contains(&format!("@{b} ")),
        "the message goes from {a} to {b}"
    );
}

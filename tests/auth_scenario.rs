//! Where the token key comes from and how strictly `exp` is read: the secret file created on
//! first start (mode 0600, kept across restarts), an existing file, the environment variable
//! overriding it, an empty file refusing startup, and `[auth] leeway`.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use ringpost::protocol::Code;
use ringpost_harness::*;

fn mint(secret: &str, user: &str) -> String {
    ringpost::auth::mint(secret.as_bytes(), user, Duration::from_secs(600)).expect("mint")
}

fn assert_logs_in(broker: &TestBroker, token: &str, user: &str) {
    match try_login(broker.addr, token, "d") {
        Ok((got, shard)) => {
            assert_eq!(got, user);
            assert_eq!(
                shard as usize,
                ringpost::shard::owner(user, broker.shards),
                "LoginOk.shard is the owner shard"
            );
        }
        Err((code, message)) => panic!("{user} was refused: {code:?} {message}"),
    }
}

fn assert_refused(broker: &TestBroker, token: &str, code: Code) {
    match try_login(broker.addr, token, "d") {
        Ok(ok) => panic!("expected {code:?}, logged in as {ok:?}"),
        Err((got, message)) => assert_eq!(got, code, "{message}"),
    }
}

#[test]
fn a_missing_secret_file_is_created_with_mode_0600_and_kept_across_restarts() {
    let dir = TempDir::new("secret-created");
    let secret_path = dir.path().join("auth.secret");
    assert!(!secret_path.exists());
    let config = test_broker().dir(dir.path()).secret_file();
    let mut broker = config.start();

    let meta = std::fs::metadata(&secret_path).expect("the broker created the secret file");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "only the owner may read the secret"
    );
    let text = std::fs::read_to_string(&secret_path).unwrap();
    let key = text.trim();
    assert_eq!(key.len(), 64, "32 random bytes as hex: {text:?}");
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()), "{text:?}");
    let log = broker.stderr();
    assert!(
        log.contains(&secret_path.display().to_string()) && log.to_lowercase().contains("creat"),
        "the log says the secret was created, and where:\n{log}"
    );

    let token = mint(key, "first-start");
    assert_logs_in(&broker, &token, "first-start");
    assert_refused(
        &broker,
        &mint("integration-test-secret", "x"),
        Code::AUTH_FAILED,
    );

    broker.stop(Duration::from_secs(6));
    let broker = config.start();
    assert_eq!(
        std::fs::read_to_string(&secret_path).unwrap(),
        text,
        "a restart keeps the secret"
    );
    assert_logs_in(&broker, &token, "first-start");
}

#[test]
fn an_existing_secret_file_is_used_trimmed_and_the_environment_overrides_it() {
    let dir = TempDir::new("secret-file");
    let secret_path = dir.path().join("auth.secret");
    std::fs::write(&secret_path, "  from-the-file \n").unwrap();

    let mut broker = test_broker().dir(dir.path()).secret_file().start();
    assert_logs_in(&broker, &mint("from-the-file", "filed"), "filed");
    assert_refused(&broker, &mint("from-the-env", "x"), Code::AUTH_FAILED);
    broker.stop(Duration::from_secs(6));

    let broker = test_broker()
        .dir(dir.path())
        .env_secret("from-the-env")
        .start();
    assert_logs_in(&broker, &mint("from-the-env", "envied"), "envied");
    assert_refused(&broker, &mint("from-the-file", "x"), Code::AUTH_FAILED);
    assert_eq!(
        std::fs::read_to_string(&secret_path).unwrap(),
        "  from-the-file \n",
        "the file is left alone"
    );
}

#[test]
fn an_empty_secret_file_stops_startup_with_a_message_naming_it() {
    let dir = TempDir::new("secret-empty");
    let secret_path = dir.path().join("auth.secret");
    std::fs::write(&secret_path, " \n").unwrap();
    let (status, stdout, stderr) = test_broker()
        .dir(dir.path())
        .secret_file()
        .start_expecting_failure();
    assert!(!status.success(), "exit status {status:?}");
    assert!(
        !stdout.contains("listening"),
        "it never listened: {stdout:?}"
    );
    assert!(
        stderr.contains(&secret_path.display().to_string()),
        "stderr names the file: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
}

#[test]
fn token_expiry_allows_the_configured_leeway_and_no_more() {
    const SECRET: &str = "leeway-secret";
    let setup = |leeway: &str| {
        test_broker()
            .auth(&format!("leeway = \"{leeway}\""))
            .env_secret(SECRET)
    };
    let broker = setup("10s").start();
    let now = now_unix();
    let just_late = ringpost::auth::mint_with_exp(SECRET.as_bytes(), "just-late", now - 3).unwrap();
    assert_logs_in(&broker, &just_late, "just-late");
    let too_late = ringpost::auth::mint_with_exp(SECRET.as_bytes(), "too-late", now - 60).unwrap();
    assert_refused(&broker, &too_late, Code::TOKEN_EXPIRED);
    drop(broker);

    let broker = setup("0s").start();
    let now = now_unix();
    let late = ringpost::auth::mint_with_exp(SECRET.as_bytes(), "late", now - 3).unwrap();
    assert_refused(&broker, &late, Code::TOKEN_EXPIRED);
    let fresh = ringpost::auth::mint_with_exp(SECRET.as_bytes(), "fresh", now + 60).unwrap();
    assert_logs_in(&broker, &fresh, "fresh");
}

//! Login keys over the wire: several accepted at once (`[auth] secret_dir`; a token's `kid`
//! picks one, a token without one is tried against each), rotation on SIGHUP without dropping
//! logged-in connections, and the optional `iss`/`aud` checks.

use std::path::Path;
use std::time::Duration;

use ringpost::auth::{mint_with, Mint};
use ringpost::protocol::Code;
use ringpost_harness::*;

fn token(secret: &str, user: &str, kid: Option<&str>) -> String {
    let extra = Mint {
        kid: kid.map(Into::into),
        ..Mint::default()
    };
    mint_with(secret.as_bytes(), user, Duration::from_secs(600), &extra).unwrap()
}

fn keys_dir(dir: &TempDir) -> std::path::PathBuf {
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    keys
}

fn auth_lines(keys: &Path) -> String {
    format!("secret_dir = \"{}\"", keys.display())
}

#[test]
fn every_key_of_the_directory_is_accepted_and_kid_picks_one() {
    let dir = TempDir::new("keys");
    let keys = keys_dir(&dir);
    std::fs::write(keys.join("k1"), "first-key\n").unwrap();
    std::fs::write(keys.join("k2"), "second-key").unwrap();
    let broker = test_broker()
        .dir(dir.path().join("broker"))
        .auth(&auth_lines(&keys))
        .start();
    let ok = |t: &str| try_login(broker.addr, t, "d").map(|(u, _)| u);
    assert_eq!(ok(&token("first-key", "a", Some("k1"))), Ok("a".into()));
    assert_eq!(ok(&token("second-key", "b", None)), Ok("b".into()));
    assert_eq!(
        ok(&token(SECRET, "c", None)),
        Ok("c".into()),
        "the primary key"
    );
    assert_eq!(ok(&token(SECRET, "d", Some("env"))), Ok("d".into()));
    let (code, message) = ok(&token("second-key", "e", Some("k1"))).unwrap_err();
    assert_eq!(
        (code, message.as_str()),
        (Code::AUTH_FAILED, "authentication failed: bad signature")
    );
    let (code, message) = ok(&token("first-key", "f", Some("k9"))).unwrap_err();
    assert_eq!(code, Code::AUTH_FAILED);
    assert!(message.contains("unknown key id `k9`"), "{message}");
    let (code, _) = ok(&token("nobody's-key", "g", None)).unwrap_err();
    assert_eq!(code, Code::AUTH_FAILED);
}

#[test]
fn keys_rotate_on_sighup_and_logged_in_connections_stay() {
    let dir = TempDir::new("rotate");
    let keys = keys_dir(&dir);
    std::fs::write(keys.join("2024"), "old-key").unwrap();
    let broker = test_broker()
        .dir(dir.path().join("broker"))
        .auth(&auth_lines(&keys))
        .start();
    let (a, b) = (user_on_shard("steady", 0, 2), user_on_shard("fresh", 1, 2));
    run(async {
        let mut opts = broker.opts(&a, "d");
        opts.token = token("old-key", &a, Some("2024"));
        let mut steady = ringpost::client::Client::connect(&opts, 0).await.unwrap();
        // Add the new key.
        std::fs::write(keys.join("2025"), "new-key").unwrap();
        broker.signal(libc::SIGHUP);
        broker.wait_for_log("auth keys reloaded (generation 2)");
        assert!(try_login(broker.addr, &token("new-key", &b, Some("2025")), "d").is_ok());
        assert!(try_login(broker.addr, &token("old-key", &b, Some("2024")), "d").is_ok());
        // Retire the old one.
        std::fs::remove_file(keys.join("2024")).unwrap();
        broker.signal(libc::SIGHUP);
        broker.wait_for_log("auth keys reloaded (generation 3)");
        let (code, message) =
            try_login(broker.addr, &token("old-key", &b, Some("2024")), "d").unwrap_err();
        assert_eq!(code, Code::AUTH_FAILED);
        assert!(message.contains("unknown key id"), "{message}");
        assert!(try_login(broker.addr, &token("old-key", &b, None), "d").is_err());
        // The connection that logged in with the retired key is still served.
        let mut fresh_opts = broker.opts(&b, "d2");
        fresh_opts.token = token("new-key", &b, None);
        let mut fresh = ringpost::client::Client::connect(&fresh_opts, 0)
            .await
            .unwrap();
        steady.send(1, &b, b"still in").await.unwrap();
        expect_ack(&mut steady, 1, Code::OK).await;
        assert_eq!(expect_deliver(&mut fresh).await.body, b"still in");
    });
    // A directory that cannot be read keeps the keys in use.
    std::fs::remove_dir_all(&keys).unwrap();
    broker.signal(libc::SIGHUP);
    broker.wait_for_log("auth keys not reloaded");
    assert!(try_login(broker.addr, &token("new-key", "late", Some("2025")), "d").is_ok());
}

#[test]
fn issuer_and_audience_are_checked_when_configured() {
    let broker = test_broker()
        .auth("issuer = \"https://backend.example\"\naudience = \"ringpost\"")
        .start();
    let with = |iss: Option<&str>, aud: Option<&str>| {
        let extra = Mint {
            kid: None,
            issuer: iss.map(Into::into),
            audience: aud.map(Into::into),
        };
        let t = mint_with(SECRET.as_bytes(), "u", Duration::from_secs(60), &extra).unwrap();
        try_login(broker.addr, &t, "d")
    };
    assert!(with(Some("https://backend.example"), Some("ringpost")).is_ok());
    for (iss, aud, says) in [
        (None, Some("ringpost"), "`iss`"),
        (Some("https://backend.example"), None, "`aud`"),
        (Some("https://evil.example"), Some("ringpost"), "`iss`"),
        (
            Some("https://backend.example"),
            Some("another-service"),
            "`aud`",
        ),
    ] {
        let (code, message) = with(iss, aud).unwrap_err();
        assert_eq!(code, Code::AUTH_FAILED, "{message}");
        assert!(message.contains(says), "{message} should name {says}");
    }
}

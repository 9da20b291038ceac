//! The config CLI beyond `lifecycle_scenario`'s basics: the printed default is itself a valid
//! file, every kind of bad value is refused with exit code 2 naming the key and what is allowed,
//! unreadable files are refused, and a running broker has exactly the shards it was given.

use std::collections::BTreeSet;
use std::time::Duration;

use ringpost_harness::*;

#[test]
fn the_printed_default_config_is_itself_a_valid_config_file() {
    let dir = test_dir("cli-roundtrip");
    let out = ringpost_cli(&["--print-config"]);
    assert!(out.status.success());
    let (code, stderr) = check_config(
        &dir,
        "printed.toml",
        &String::from_utf8(out.stdout).unwrap(),
    );
    assert_eq!(code, Some(0), "{stderr}");
    // An empty file means "all defaults" and is valid too.
    let (code, stderr) = check_config(&dir, "empty.toml", "");
    assert_eq!(code, Some(0), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_names_the_key_and_what_is_allowed_for_every_kind_of_bad_value() {
    let dir = test_dir("cli-bad-values");
    // (file, key that must be named, words of the allowed values that must appear)
    let cases: &[(&str, &str, &[&str])] = &[
        ("[server]\nshards = 2000\n", "server.shards", &["1024"]),
        (
            "[server]\nmesh_queue = 8\n",
            "server.mesh_queue",
            &["16", "65536"],
        ),
        (
            "[server]\nshards = 2\ncpus = [0]\n",
            "server.cpus",
            &["shards"],
        ),
        ("[server]\nlisten = \"nowhere\"\n", "server.listen", &[]),
        (
            "[limits]\nmax_frame = \"32MiB\"\n",
            "limits.max_frame",
            &["16MiB"],
        ),
        (
            "[limits]\nmax_frame = \"12 parsecs\"\n",
            "limits.max_frame",
            &["KiB"],
        ),
        (
            "[limits]\nmax_frame = \"64KiB\"\nmax_outbound = \"4KiB\"\n",
            "limits.max_outbound",
            &["max_frame"],
        ),
        (
            "[limits]\nsends_per_sec = 0\n",
            "limits.sends_per_sec",
            &["1..="],
        ),
        (
            "[limits]\nidle_timeout = \"500ms\"\n",
            "limits.idle_timeout",
            &["1s"],
        ),
        (
            "[limits]\nmax_devices = \"many\"\n",
            "limits.max_devices",
            &["integer"],
        ),
        ("[auth]\nleeway = \"1h\"\n", "auth.leeway", &["5min"]),
        (
            "[storage]\nfsync = \"sometimes\"\n",
            "storage.fsync",
            &["always", "interval", "never"],
        ),
        ("[metrics]\nport = 1\n", "metrics", &[]),
        ("[limits]\nmax_fraem = \"1MiB\"\n", "limits.max_fraem", &[]),
    ];
    for (i, (body, key, allowed)) in cases.iter().enumerate() {
        let (code, stderr) = check_config(&dir, &format!("bad{i}.toml"), body);
        assert_eq!(
            code,
            Some(2),
            "{body:?} must be refused with exit 2: {stderr}"
        );
        assert!(
            stderr.contains(key),
            "{body:?}: stderr names `{key}`: {stderr}"
        );
        for word in *allowed {
            assert!(
                stderr.contains(word),
                "{body:?}: stderr says what is allowed ({word}): {stderr}"
            );
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unreadable_and_non_toml_config_files_are_refused_with_exit_2() {
    let dir = test_dir("cli-unreadable");
    let (code, stderr) = check_config(&dir, "prose.toml", "this is not toml\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("prose.toml"), "{stderr}");

    let missing = dir.join("missing.toml");
    let out = ringpost_cli(&["--check-config", missing.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("missing.toml"), "{stderr}");

    let out = ringpost_cli(&["--config", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "never listened"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_config_with_an_unknown_key_does_not_start_the_broker() {
    let (status, stdout, stderr) = test_broker()
        .limits("max_inbox_size = 3")
        .start_expecting_failure();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("limits.max_inbox_size"), "{stderr}");
    assert!(!stdout.contains("listening"), "{stdout}");
}

#[test]
fn the_broker_runs_exactly_the_configured_number_of_shards() {
    const SECRET: &str = "shards-secret";
    let mut broker = test_broker().shards(3).env_secret(SECRET).start();
    assert_eq!(broker.shards, 3, "the listening line names 3 shards");
    let mut shards = BTreeSet::new();
    for i in 0..24 {
        let user = format!("spread-{i}");
        let token =
            ringpost::auth::mint(SECRET.as_bytes(), &user, Duration::from_secs(60)).unwrap();
        let (got, shard) =
            try_login(broker.addr, &token, "d").unwrap_or_else(|e| panic!("{user} refused: {e:?}"));
        assert_eq!(got, user);
        assert_eq!(shard as usize, ringpost::shard::owner(&user, 3));
        shards.insert(shard);
    }
    assert_eq!(
        shards,
        BTreeSet::from([0, 1, 2]),
        "24 users land on all 3 shards and no other"
    );
    broker.stop(Duration::from_secs(6));
}

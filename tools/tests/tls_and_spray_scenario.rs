//! The tools against a TLS broker (`load p2p --tls --ca-file`, `spray --tls`, `token --check
//! --tls`), `token --kid` accepted by a broker with a key directory, and `spray` under both
//! recipient policies.

use ringpost_harness::tls::TestCa;
use ringpost_harness::{tools, tools_broker, try_login, TempDir};
use serde_json::Value;

fn json_of(out: std::process::Output) -> Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let v: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("no JSON; stderr: {stderr}"));
    assert!(out.status.success(), "{v} {stderr}");
    v
}

#[test]
fn load_p2p_and_spray_over_tls() {
    let dir = TempDir::new("tools-tls");
    let ca = TestCa::new(dir.path(), "tools");
    let broker = tools_broker()
        .dir(dir.path().join("broker"))
        .tls(&ca.issue("broker"))
        .limits("sends_per_sec = 100000")
        .start();
    let ca_file = ca.ca_file();
    let out = tools(&["load", "p2p", "--json", "--tls", "--ca-file"])
        .arg(&ca_file)
        .arg("--addr")
        .arg(broker.addr_string())
        .arg("--secret-file")
        .arg(broker.secret_path())
        .args([
            "--users",
            "10",
            "--rate",
            "1000",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--size",
            "64",
            "--threads",
            "2",
        ])
        .output()
        .unwrap();
    let r = json_of(out);
    for k in ["lost", "duplicated", "out_of_order", "errors"] {
        assert_eq!(r[k], 0, "{k}: {r}");
    }
    assert!(r["delivered"].as_u64().unwrap() > 0, "{r}");
    // Without --tls the same tool gets nowhere.
    let plain = tools(&["load", "p2p", "--json", "--duration", "1s", "--users", "2"])
        .arg("--addr")
        .arg(broker.addr_string())
        .arg("--secret-file")
        .arg(broker.secret_path())
        .output()
        .unwrap();
    assert!(!plain.status.success());
    let s = tools(&["spray", "--tls", "--ca-file"])
        .arg(&ca_file)
        .args(["--recipients", "50", "--broker-pid"])
        .arg(broker.pid().to_string())
        .arg("--addr")
        .arg(broker.addr_string())
        .arg("--secret-file")
        .arg(broker.secret_path())
        .output()
        .unwrap();
    let s = json_of(s);
    assert_eq!(s["statuses"]["OK"], 50, "{s}");
    assert!(s["rss_anon_before"].as_u64().unwrap() > 0, "{s}");
}

#[test]
fn spray_is_refused_under_the_known_policy() {
    let dir = TempDir::new("tools-spray");
    let broker = tools_broker()
        .dir(dir.path())
        .limits("sends_per_sec = 100000\nrecipients = \"known\"")
        .start();
    let out = tools(&["spray", "--recipients", "200"])
        .arg("--addr")
        .arg(broker.addr_string())
        .arg("--secret-file")
        .arg(broker.secret_path())
        .output()
        .unwrap();
    let s = json_of(out);
    assert_eq!(s["statuses"]["USER_UNKNOWN"], 200, "{s}");
    assert!(s["statuses"].get("OK").is_none(), "{s}");
}

#[test]
fn token_kid_issuer_and_audience_are_accepted_by_a_broker_configured_for_them() {
    let dir = TempDir::new("tools-kid");
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(keys.join("2025-06"), "rotated-key").unwrap();
    let broker = tools_broker()
        .dir(dir.path().join("broker"))
        .auth(&format!(
            "secret_dir = \"{}\"\nissuer = \"backend\"\naudience = \"chat\"",
            keys.display()
        ))
        .start();
    let mint = |kid: &str| {
        let out = tools(&[
            "token",
            "--user",
            "carol",
            "--issuer",
            "backend",
            "--audience",
            "chat",
        ])
        .arg("--secret-file")
        .arg(keys.join("2025-06"))
        .args(["--kid", kid])
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    assert_eq!(
        try_login(broker.addr, &mint("2025-06"), "d").map(|(u, _)| u),
        Ok("carol".into())
    );
    assert!(try_login(broker.addr, &mint("2024-01"), "d").is_err());
}

/// `token --check ADDR` logs in with the token it minted before printing it, over TLS with
/// `--tls --ca-file`; a token the broker refuses (here: the wrong audience) is not printed and
/// the tool exits 1 with the broker's reason.
#[test]
fn token_check_logs_in_over_tls_and_refuses_a_token_the_broker_refuses() {
    let dir = TempDir::new("tools-token-check");
    let ca = TestCa::new(dir.path(), "token");
    let broker = tools_broker()
        .dir(dir.path().join("broker"))
        .tls(&ca.issue("broker"))
        .auth("audience = \"chat\"")
        .start();
    let check = |audience: &str, tls: bool| {
        let mut cmd = tools(&["token", "--user", "dave", "--audience", audience]);
        cmd.arg("--secret-file")
            .arg(broker.secret_path())
            .arg("--check")
            .arg(broker.addr_string());
        if tls {
            cmd.arg("--tls").arg("--ca-file").arg(ca.ca_file());
        }
        cmd.output().unwrap()
    };
    let ok = check("chat", true);
    let stderr = String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success(), "{stderr}");
    assert!(stderr.contains("logged in as dave"), "{stderr}");
    let token = String::from_utf8(ok.stdout).unwrap();
    assert_eq!(
        token.trim().split('.').count(),
        3,
        "a JWT on stdout: {token:?}"
    );
    for (audience, tls) in [("other", true), ("chat", false)] {
        let refused = check(audience, tls);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(
            refused.status.code(),
            Some(1),
            "{audience} tls={tls}: {stderr}"
        );
        assert!(
            refused.stdout.is_empty(),
            "{audience} tls={tls}: a token was printed"
        );
        assert!(stderr.contains("token check at"), "{stderr}");
    }
}

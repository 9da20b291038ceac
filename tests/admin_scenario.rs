//! The admin listener over real HTTP against the real broker: health and readiness (also
//! while logs recover and during shutdown), authentication, metrics moving with known
//! traffic, the server API (publish, user lookup, kick), hostile HTTP clients, and the OpenAPI
//! document checked by schemathesis.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use base64::Engine;
use ringpost::client::{Delivery, Event};
use ringpost::protocol::{Code, EntryKind};
use ringpost::shard::group_owner;
use ringpost_harness::{
    expect_ack, expect_deliver, expect_event, expect_goaway_then_close, metric as sample,
    metric_total as total, read_frame, run, test_broker, try_login, user_on_shard, TempDir,
    TestBroker, WAIT,
};
use serde_json::{json, Value};

// ---- a small HTTP/1.1 client -----------------------------------------------------------------

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn request_bytes(method: &str, path: &str, token: Option<&str>, body: Option<&[u8]>) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: ringpost\r\n");
    if let Some(t) = token {
        head += &format!("Authorization: Bearer {t}\r\n");
    }
    if let Some(b) = body {
        head += &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        );
    }
    head += "\r\n";
    let mut out = head.into_bytes();
    out.extend_from_slice(body.unwrap_or_default());
    out
}

/// Reads one response (by its Content-Length); None on EOF before a whole head.
fn read_reply(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Reply> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = resp.parse(buf) {
            let headers: Vec<(String, String)> = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .expect("content-length");
            let status = resp.code.expect("status");
            while buf.len() < n + len {
                let mut chunk = [0u8; 8192];
                match s.read(&mut chunk) {
                    Ok(0) => return None,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return None,
                }
            }
            let body = buf[n..n + len].to_vec();
            buf.drain(..n + len);
            return Some(Reply {
                status,
                headers,
                body,
            });
        }
        let mut chunk = [0u8; 8192];
        match s.read(&mut chunk) {
            Ok(0) => return None,
            // A glommio thread (inside `run`) sees EINTR on blocking reads.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}

fn connect_admin(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect to admin");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s
}

fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Reply {
    let mut s = connect_admin(addr);
    let body = body.map(|b| b.to_string().into_bytes());
    s.write_all(&request_bytes(method, path, token, body.as_deref()))
        .expect("write request");
    read_reply(&mut s, &mut Vec::new()).unwrap_or_else(|| panic!("no answer to {method} {path}"))
}

/// True when the peer closed the connection (EOF or reset) within `WAIT`.
fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1024];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

// ---- helpers over the broker -----------------------------------------------------------------

fn get(b: &TestBroker, path: &str) -> Reply {
    http(b.admin_addr(), "GET", path, Some(&b.admin_token()), None)
}

fn publish(b: &TestBroker, body: Value) -> Reply {
    http(
        b.admin_addr(),
        "POST",
        "/v1/messages",
        Some(&b.admin_token()),
        Some(&body),
    )
}

fn scrape(b: &TestBroker) -> String {
    let r = http(b.admin_addr(), "GET", "/metrics", None, None);
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("application/openmetrics-text"),
        "{:?}",
        r.headers
    );
    r.text()
}

/// Polls `/metrics` until `cond` holds (state a client cannot signal, like a connection
/// being parked), panicking after `WAIT`.
fn wait_metrics(b: &TestBroker, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = scrape(b);
        if cond(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "never saw {what}:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn error_code(r: &Reply) -> u64 {
    let v = r.json();
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(v["name"].as_str().is_some(), "{v}");
    v["code"].as_u64().expect("code")
}

// ---- health, auth ----------------------------------------------------------------------------

#[test]
fn health_is_open_and_v1_needs_the_bearer_token() {
    let b = test_broker().start();
    let a = b.admin_addr();
    let r = http(a, "GET", "/healthz", None, None);
    assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})));
    let r = http(a, "GET", "/readyz", None, None);
    assert_eq!((r.status, r.json()), (200, json!({"status": "ready"})));

    // Missing token: 401 with the challenge; wrong token: 403; both AUTH_FAILED (100).
    for path in ["/v1/users/alice", "/v1/openapi.yaml", "/v1/nothing-here"] {
        let r = http(a, "GET", path, None, None);
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(error_code(&r), u64::from(Code::AUTH_FAILED.0));
        assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
        let r = http(a, "GET", path, Some("not-the-token"), None);
        assert_eq!(r.status, 403, "{path}");
        assert_eq!(error_code(&r), u64::from(Code::AUTH_FAILED.0));
    }
    let mut s = connect_admin(a);
    s.write_all(b"GET /v1/users/alice HTTP/1.1\r\nAuthorization: Basic YTpi\r\n\r\n")
        .unwrap();
    let r = read_reply(&mut s, &mut Vec::new()).unwrap();
    assert_eq!(r.status, 401, "a non-Bearer scheme is no token");
    let r = http(a, "POST", "/v1/messages", None, Some(&json!({})));
    assert_eq!(r.status, 401, "auth is checked before the body");

    // With the token: the document, 404 for unknown routes, 405 with Allow for wrong methods.
    let r = get(&b, "/v1/openapi.yaml");
    assert_eq!(r.status, 200);
    assert!(r.text().starts_with("openapi: 3"), "{}", r.text());
    let r = get(&b, "/v1/nothing-here");
    assert_eq!((r.status, error_code(&r)), (404, 1404));
    let r = http(a, "DELETE", "/v1/messages", Some(&b.admin_token()), None);
    assert_eq!((r.status, error_code(&r)), (405, 1405));
    assert_eq!(r.header("allow"), Some("POST"));
    let r = http(a, "POST", "/healthz", None, Some(&json!({})));
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
    let r = http(a, "GET", "/nope", None, None);
    assert_eq!((r.status, error_code(&r)), (404, 1404));
}

#[test]
fn the_admin_token_file_is_created_0600_and_the_environment_overrides_it() {
    use std::os::unix::fs::PermissionsExt;
    let b = test_broker().start();
    let path = b.dir.join("admin.token");
    let meta = std::fs::metadata(&path).expect("token file created");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let token = b.admin_token();
    assert_eq!(token.len(), 64);
    assert!(token.bytes().all(|c| c.is_ascii_hexdigit()), "{token}");
    assert_eq!(get(&b, "/v1/users/x").status, 200);
    assert!(
        b.stderr()
            .contains("admin token did not exist; created one"),
        "{}",
        b.stderr()
    );

    let b = test_broker()
        .env("RINGPOST_ADMIN_TOKEN", "from-the-environment")
        .start();
    assert!(
        !b.dir.join("admin.token").exists(),
        "no file when the environment gives the token"
    );
    let a = b.admin_addr();
    assert_eq!(
        http(a, "GET", "/v1/users/x", Some("from-the-environment"), None).status,
        200
    );

    // Disabled: no admin line, nothing listening.
    let b = test_broker().table("admin", "listen = \"\"").start();
    assert_eq!(b.admin, None);
    b.assert_serving();
}

// ---- metrics ---------------------------------------------------------------------------------

#[test]
fn metrics_move_by_the_traffic_sent() {
    let b = test_broker()
        .server("park_after = \"300ms\"")
        .limits("sends_per_sec = 100000")
        .start();
    let n = 40u64;
    let (alice, bob) = (user_on_shard("alice", 0, 2), user_on_shard("bob", 1, 2));
    let before = scrape(&b);
    for family in [
        "ringpost_build_info{version=\"0.1.0\"} 1",
        "# TYPE ringpost_log_sync_seconds histogram",
        "# TYPE ringpost_commit_batch_size histogram",
        "# TYPE ringpost_mesh_queue_depth gauge",
        "# TYPE ringpost_log_bytes gauge",
        "# TYPE process_cpu_seconds counter",
        "# TYPE process_resident_memory_bytes gauge",
        "# TYPE process_open_fds gauge",
    ] {
        assert!(
            before.lines().any(|l| l == family),
            "missing {family:?}:\n{before}"
        );
    }
    assert!(sample(&before, "ringpost_log_bytes{shard=\"0\"}") > 0.0);
    assert!(sample(&before, "process_open_fds") > 0.0);
    assert!(sample(&before, "process_resident_memory_bytes") > 0.0);

    run(async {
        let mut a = b.connect(&alice, "phone").await;
        let mut bo = b.connect(&bob, "phone").await;
        // n messages across shards (alice → bob), n within one (alice → alice's other self
        // is not allowed as a device here, so alice → a user on her shard).
        let carol = user_on_shard("carol", 0, 2);
        for i in 1..=n {
            a.send(i, &bob, b"cross").await.unwrap();
            a.send(1000 + i, &carol, b"local").await.unwrap();
        }
        // Local acks may overtake cross-shard ones: compare as sets.
        let mut acked = Vec::new();
        for _ in 0..2 * n {
            match ringpost_harness::expect_event(&mut a).await {
                Event::SendAck {
                    client_msg_id,
                    status: Code::OK,
                    ..
                } => acked.push(client_msg_id),
                other => panic!("expected SendAck OK, got {other:?}"),
            }
        }
        acked.sort_unstable();
        let want: Vec<u64> = (1..=n).chain(1001..=1000 + n).collect();
        assert_eq!(acked, want);
        for i in 1..=n {
            assert_eq!(expect_deliver(&mut bo).await.seq, i);
        }
        // One refusal decided on the sender's shard.
        a.send(9999, "", b"nobody").await.unwrap();
        expect_ack(&mut a, 9999, Code::INVALID_RECIPIENT).await;
        // carol logs in and is replayed her n messages.
        let mut c = b.connect(&carol, "phone").await;
        for i in 1..=n {
            assert_eq!(expect_deliver(&mut c).await.seq, i);
        }
        let text = scrape(&b);
        assert_eq!(total(&text, "ringpost_connections"), 3.0, "{text}");
        c.logout().await.unwrap();
        expect_goaway_then_close(&mut c, Code::LOGGED_OUT).await;
        // carol's connection ends (after its linger); the others go idle and park.
        wait_metrics(&b, "two parked connections and no active one", |t| {
            (0..2).all(|s| {
                sample(
                    t,
                    &format!("ringpost_connections{{shard=\"{s}\",state=\"parked\"}}"),
                ) == 1.0
                    && sample(
                        t,
                        &format!("ringpost_connections{{shard=\"{s}\",state=\"active\"}}"),
                    ) == 0.0
            })
        });
        drop((a, bo));
    });
    let after = scrape(&b);
    let delta = |series: &str| sample(&after, series) - sample(&before, series);
    let delta_total = |name: &str| total(&after, name) - total(&before, name);
    assert_eq!(
        delta("ringpost_messages_accepted_total{shard=\"1\"}"),
        n as f64,
        "to bob"
    );
    assert_eq!(
        delta("ringpost_messages_accepted_total{shard=\"0\"}"),
        n as f64,
        "to carol"
    );
    assert_eq!(
        delta("ringpost_messages_delivered_total{shard=\"1\"}"),
        n as f64,
        "bob live"
    );
    assert_eq!(
        delta("ringpost_messages_delivered_total{shard=\"0\"}"),
        n as f64,
        "carol replay"
    );
    assert_eq!(delta_total("ringpost_replayed_messages_total"), n as f64);
    assert_eq!(delta("ringpost_logins_total{result=\"OK\"}"), 3.0);
    // Each login is timed stage by stage, and the stages add up to its total.
    let stage = |part: &str, name: &str| {
        delta(&format!(
            "ringpost_login_stage_seconds_{part}{{stage=\"{name}\"}}"
        ))
    };
    let stages = ["login_read", "handoff", "register", "total"];
    for name in stages {
        assert_eq!(stage("count", name), 3.0, "{name}: {after}");
    }
    let parts: f64 = stages[..3].iter().map(|name| stage("sum", name)).sum();
    assert!(
        stage("sum", "total") > 0.0 && (parts - stage("sum", "total")).abs() < 1e-6,
        "stages {parts} s, total {} s",
        stage("sum", "total")
    );
    assert_eq!(
        delta("ringpost_send_rejected_total{code=\"INVALID_RECIPIENT\"}"),
        1.0
    );
    assert_eq!(delta("ringpost_goaway_total{code=\"LOGGED_OUT\"}"), 1.0);
    // Each cross-shard message crosses 0 → 1 and its ack 1 → 0 (plus bob's hand-off, if he
    // was accepted on shard 0).
    assert!(
        delta("ringpost_mesh_envelopes_total{from=\"0\",to=\"1\"}") >= n as f64,
        "{after}"
    );
    assert!(
        delta("ringpost_mesh_envelopes_total{from=\"1\",to=\"0\"}") >= n as f64,
        "{after}"
    );
    // fsync = "always": every commit synced; 2n messages in at least one batch each.
    let commits = delta("ringpost_commit_batch_size_count");
    assert!(commits >= 1.0 && commits <= 2.0 * n as f64, "{commits}");
    assert_eq!(delta("ringpost_commit_batch_size_sum"), 2.0 * n as f64);
    assert!(
        delta("ringpost_log_sync_seconds_count") >= commits,
        "{after}"
    );
    assert_eq!(
        delta("ringpost_log_sync_seconds_bucket{le=\"+Inf\"}"),
        delta("ringpost_log_sync_seconds_count")
    );

    // A refused login counts under its code.
    let token = ringpost::auth::mint(b"wrong secret", "mallory", Duration::from_secs(60)).unwrap();
    assert_eq!(
        try_login(b.addr, &token, "d").unwrap_err().0,
        Code::AUTH_FAILED
    );
    let text = wait_metrics(&b, "the refused login", |t| {
        sample(t, "ringpost_logins_total{result=\"AUTH_FAILED\"}") == 1.0
    });
    assert_eq!(sample(&text, "ringpost_logins_total{result=\"OK\"}"), 3.0);
    assert_eq!(
        sample(&text, "ringpost_login_stage_seconds_count{stage=\"total\"}"),
        3.0,
        "only logins that succeed are timed"
    );
}

// ---- server API ------------------------------------------------------------------------------

#[test]
fn a_published_message_reaches_a_connected_client_and_an_offline_user_at_login() {
    let b = test_broker().start();
    let (bob, carol) = (user_on_shard("bob", 1, 2), user_on_shard("carol", 0, 2));
    run(async {
        let mut c = b.connect(&bob, "phone").await;
        let r = publish(
            &b,
            json!({"from": "system:alerts", "to_user": bob, "body": "maintenance at 6", "client_msg_id": 7}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json(), json!({"status": "OK", "code": 0, "seq": 1}));
        let d = expect_deliver(&mut c).await;
        assert_eq!(
            (
                d.seq,
                d.from_user.as_str(),
                d.client_msg_id,
                d.body.as_slice()
            ),
            (1, "system:alerts", 7, &b"maintenance at 6"[..])
        );

        // The same (from, client_msg_id) again: the original answer, no second delivery.
        let r = publish(
            &b,
            json!({"from": "system:alerts", "to_user": bob, "body": "maintenance at 6", "client_msg_id": 7}),
        );
        assert_eq!(
            (r.status, r.json()),
            (200, json!({"status": "OK", "code": 0}))
        );
        // Per-user order with a client's sends in between: seqs 2, 3, 4 in that order.
        let mut alice = b.connect("alice", "laptop").await;
        let r = publish(
            &b,
            json!({"from": "alice", "to_user": bob, "body": "from the backend", "client_msg_id": 1}),
        );
        assert_eq!(r.json()["seq"], 2);
        // One dedup window for publishes and clients' sends: alice's app resending the id the
        // backend published under is the same message (acked, not stored again)...
        alice.send(1, &bob, b"from the backend").await.unwrap();
        expect_ack(&mut alice, 1, Code::OK).await;
        // ...and a new id is a new message.
        alice.send(2, &bob, b"from alice's app").await.unwrap();
        expect_ack(&mut alice, 2, Code::OK).await;
        let r = publish(
            &b,
            json!({"from": "system:alerts", "to_user": bob, "body": "done", "client_msg_id": 8}),
        );
        assert_eq!(r.json()["seq"], 4);
        let got: Vec<(u64, String, Vec<u8>)> = [
            expect_deliver(&mut c).await,
            expect_deliver(&mut c).await,
            expect_deliver(&mut c).await,
        ]
        .into_iter()
        .map(|d| (d.seq, d.from_user, d.body))
        .collect();
        assert_eq!(
            got,
            vec![
                (2, "alice".into(), b"from the backend".to_vec()),
                (3, "alice".into(), b"from alice's app".to_vec()),
                (4, "system:alerts".into(), b"done".to_vec()),
            ]
        );

        // Bytes to an offline user, delivered at login.
        let bytes = [0u8, 159, 146, 150, 255];
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let r = publish(
            &b,
            json!({"from": "system:billing", "to_user": carol, "body_base64": b64, "client_msg_id": 1}),
        );
        assert_eq!(
            (r.status, r.json()),
            (200, json!({"status": "OK", "code": 0, "seq": 1}))
        );
        let mut cc = b.connect(&carol, "tablet").await;
        let d = expect_deliver(&mut cc).await;
        assert_eq!(
            (d.seq, d.from_user.as_str(), d.body.as_slice()),
            (1, "system:billing", &bytes[..])
        );
    });
    // Durable before the 200: a crash right after loses nothing.
    let dir = b.crash();
    let b = ringpost_harness::test_broker().dir(&dir).start();
    let r = get(&b, &format!("/v1/users/{carol}"));
    assert_eq!(r.json()["head_seq"], 1);
    let r = get(&b, &format!("/v1/users/{bob}"));
    assert_eq!(r.json()["head_seq"], 4);
}

#[test]
fn bad_publishes_are_refused_with_their_codes() {
    let b = test_broker().limits("max_frame = \"4KiB\"").start();
    let msg = |extra: Value| {
        let mut v = json!({"from": "system:x", "to_user": "bob", "client_msg_id": 1});
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        v
    };
    let cases: Vec<(Value, u16, u64)> = vec![
        (msg(json!({})), 400, 1400),
        (msg(json!({"body": "a", "body_base64": "YQ=="})), 400, 1400),
        (msg(json!({"body_base64": "not base64!"})), 400, 1400),
        (msg(json!({"body": "a", "to_user": ""})), 400, 402),
        (msg(json!({"body": "a", "to_user": "system:ops"})), 400, 402),
        (
            msg(json!({"body": "a", "to_user": "x".repeat(129)})),
            400,
            402,
        ),
        (msg(json!({"body": "a", "from": ""})), 400, 1400),
        (msg(json!({"body": "a", "client_msg_id": -1})), 400, 1400),
        (msg(json!({"body": "a", "colour": "red"})), 400, 1400),
        (
            msg(json!({"body": "x".repeat(5000)})),
            413,
            u64::from(Code::FRAME_TOO_LARGE.0),
        ),
    ];
    for (body, status, code) in cases {
        let r = publish(&b, body.clone());
        assert_eq!(
            (r.status, error_code(&r)),
            (status, code),
            "{body} → {}",
            r.text()
        );
    }
    let mut s = connect_admin(b.admin_addr());
    s.write_all(&request_bytes(
        "POST",
        "/v1/messages",
        Some(&b.admin_token()),
        Some(b"{not json"),
    ))
    .unwrap();
    let r = read_reply(&mut s, &mut Vec::new()).unwrap();
    assert_eq!((r.status, error_code(&r)), (400, 1400));
    // None of it reached an inbox.
    assert_eq!(get(&b, "/v1/users/bob").json()["head_seq"], 0);

    // Nor may a client send to one.
    run(async {
        let mut c = b.connect("alice", "d").await;
        c.send(5, "system:x", b"hi").await.unwrap();
        expect_ack(&mut c, 5, Code::INVALID_RECIPIENT).await;
    });
    // No client may log in as a reserved sender.
    let (code, message) = try_login(b.addr, &b.token("system:alerts"), "d").unwrap_err();
    assert_eq!(code, Code::AUTH_FAILED);
    assert!(message.contains("reserved"), "{message}");
}

// ---- groups --------------------------------------------------------------------------------

fn post(b: &TestBroker, path: &str, body: Value) -> Reply {
    http(
        b.admin_addr(),
        "POST",
        path,
        Some(&b.admin_token()),
        Some(&body),
    )
}

fn delete(b: &TestBroker, path: &str) -> Reply {
    http(b.admin_addr(), "DELETE", path, Some(&b.admin_token()), None)
}

/// The next stream entry of `c`, which must be of `group` and `kind`.
async fn group_entry(c: &mut ringpost::client::Client, group: &str, kind: EntryKind) -> Delivery {
    let d = expect_deliver(c).await;
    assert_eq!((d.group_id.as_str(), d.kind), (group, kind), "{d:?}");
    d
}

/// Nothing more is queued for `c`: a ping is answered next.
async fn quiet(c: &mut ringpost::client::Client) {
    c.ping(77).await.expect("write");
    assert_eq!(expect_event(c).await, Event::Pong { nonce: 77 });
}

#[test]
fn the_backend_creates_a_group_manages_its_members_and_publishes_to_it() {
    let b = test_broker().start();
    // The group lives on shard 0; alice and bob on shard 1, carol on shard 0.
    let g = (0..)
        .map(|i| format!("team-{i}"))
        .find(|g| group_owner(g, 2) == 0)
        .unwrap();
    let (alice, bob) = (user_on_shard("alice", 1, 2), user_on_shard("bob", 1, 2));
    let (carol, dave) = (user_on_shard("carol", 0, 2), user_on_shard("dave", 0, 2));
    let mut sorted = vec![alice.clone(), bob.clone(), carol.clone()];
    sorted.sort();
    run(async {
        let mut a = b.connect(&alice, "phone").await;
        let mut bo = b.connect(&bob, "phone").await;
        let mut c = b.connect(&carol, "phone").await;

        // Created as if by alice: she is its admin and everyone sees the creation.
        let r = post(
            &b,
            "/v1/groups",
            json!({"group_id": g, "creator": alice, "members": [bob, carol, bob]}),
        );
        assert_eq!(
            (r.status, r.json()),
            (200, json!({"group_id": g, "group_seq": 1}))
        );
        for m in [&mut a, &mut bo, &mut c] {
            let d = group_entry(m, &g, EntryKind::GroupCreated).await;
            assert_eq!((d.group_seq, d.from_user.as_str()), (1, alice.as_str()));
            let mut got = d.members.clone();
            got.sort();
            assert_eq!(got, sorted);
        }

        // Info, a page at a time, in user-ID order with the admin flag.
        let r = get(&b, &format!("/v1/groups/{g}?limit=2"));
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.json();
        let row = |u: &str| json!({"user_id": u, "admin": u == alice});
        assert_eq!(
            page,
            json!({"group_id": g, "group_seq": 1, "member_count": 3,
                   "members": [row(&sorted[0]), row(&sorted[1])], "next_after": sorted[1]})
        );
        let r = get(&b, &format!("/v1/groups/{g}?after={}", sorted[1]));
        assert_eq!(
            r.json(),
            json!({"group_id": g, "group_seq": 1, "member_count": 3,
                   "members": [row(&sorted[2])], "next_after": null})
        );

        // The backend adds dave (no member or admin needed): one event, made by system:admin.
        let r = post(
            &b,
            &format!("/v1/groups/{g}/members"),
            json!({"members": [dave]}),
        );
        assert_eq!(
            (r.status, r.json()),
            (200, json!({"group_id": g, "group_seq": 2}))
        );
        for m in [&mut a, &mut bo, &mut c] {
            let d = group_entry(m, &g, EntryKind::MembersAdded).await;
            assert_eq!(
                (d.group_seq, d.from_user.as_str(), d.members.clone()),
                (2, "system:admin", vec![dave.clone()])
            );
        }

        // A publish to the group reaches every member in group order, after a member's send.
        a.group_send(1, &g, b"from alice").await.unwrap();
        let mut alice_seqs = Vec::new();
        loop {
            match expect_event(&mut a).await {
                Event::Deliver(d) if d.group_id == g => alice_seqs.push(d.group_seq),
                Event::SendAck {
                    client_msg_id: 1,
                    status: Code::OK,
                    ..
                } => break,
                other => panic!("alice got {other:?}"),
            }
        }
        let r = publish(
            &b,
            json!({"from": "system:announce", "to_group": g, "body": "release at 5", "client_msg_id": 9}),
        );
        assert_eq!(
            (r.status, r.json()),
            (200, json!({"status": "OK", "code": 0, "seq": 4}))
        );
        // The resend: the original answer and no second message.
        let r = publish(
            &b,
            json!({"from": "system:announce", "to_group": g, "body": "release at 5", "client_msg_id": 9}),
        );
        assert_eq!(
            (r.status, r.json()),
            (200, json!({"status": "OK", "code": 0}))
        );
        for m in [&mut bo, &mut c] {
            let d = group_entry(m, &g, EntryKind::Message).await;
            assert_eq!((d.group_seq, d.body.as_slice()), (3, &b"from alice"[..]));
            let d = group_entry(m, &g, EntryKind::Message).await;
            assert_eq!(
                (d.group_seq, d.from_user.as_str(), d.body.as_slice()),
                (4, "system:announce", &b"release at 5"[..])
            );
        }

        // Removing bob: he sees his removal and nothing after it.
        let r = delete(&b, &format!("/v1/groups/{g}/members/{bob}"));
        assert_eq!(
            (r.status, r.json()),
            (200, json!({"group_id": g, "group_seq": 5}))
        );
        let d = group_entry(&mut bo, &g, EntryKind::MembersRemoved).await;
        assert_eq!((d.group_seq, d.members.clone()), (5, vec![bob.clone()]));
        let r = publish(
            &b,
            json!({"from": "system:announce", "to_group": g, "body": "after bob", "client_msg_id": 10}),
        );
        assert_eq!(r.json()["seq"], 6);
        // alice's stream is fed by the same fan-out to shard 1 as bob's would be: once she
        // has message 6, bob would have it queued too.
        while alice_seqs.last() != Some(&6) {
            let d = expect_deliver(&mut a).await;
            assert_eq!(d.group_id, g, "{d:?}");
            alice_seqs.push(d.group_seq);
        }
        assert_eq!(alice_seqs, vec![3, 4, 5, 6]);
        quiet(&mut bo).await;
        let d = group_entry(&mut c, &g, EntryKind::MembersRemoved).await;
        assert_eq!(d.group_seq, 5);
        assert_eq!(
            group_entry(&mut c, &g, EntryKind::Message).await.group_seq,
            6
        );
    });
    // The metrics count it: 3 messages (the resend is not one) on the owner, shard 0; each
    // entry once per member it reached: 3 + 4 + 4 + 4 + 4 (bob gets his removal) + 3.
    let text = wait_metrics(&b, "the fan-out acked", |t| {
        total(t, "ringpost_group_fanout_pending") == 0.0
    });
    assert_eq!(sample(&text, "ringpost_groups{shard=\"0\"}"), 1.0);
    assert_eq!(total(&text, "ringpost_groups"), 1.0);
    assert_eq!(
        sample(&text, "ringpost_group_messages_total{shard=\"0\"}"),
        3.0
    );
    assert_eq!(total(&text, "ringpost_group_messages_total"), 3.0);
    assert_eq!(total(&text, "ringpost_group_member_entries_total"), 22.0);
    // Durable before each 200: a crash right after loses none of it.
    let dir = b.crash();
    let b = test_broker().dir(&dir).start();
    let r = get(&b, &format!("/v1/groups/{g}"));
    let members: Vec<String> = r.json()["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["user_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let mut want = vec![alice, carol, dave];
    want.sort();
    assert_eq!((r.json()["group_seq"].clone(), members), (json!(6), want));
}

#[test]
fn bad_group_requests_are_refused_with_their_codes() {
    let b = test_broker()
        .limits("max_group_members = 3\nmax_groups_per_user = 1")
        .start();
    let ok = post(
        &b,
        "/v1/groups",
        json!({"group_id": "g", "creator": "ann", "members": ["ben"]}),
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    let cases: Vec<(&str, &str, Option<Value>, u16, u64)> = vec![
        // The group exists; ann may be in one group only.
        (
            "POST",
            "/v1/groups",
            Some(json!({"group_id": "g", "creator": "cat"})),
            409,
            601,
        ),
        (
            "POST",
            "/v1/groups",
            Some(json!({"group_id": "h", "creator": "ann"})),
            422,
            605,
        ),
        (
            "POST",
            "/v1/groups",
            Some(json!({"group_id": "", "creator": "cat"})),
            400,
            606,
        ),
        (
            "POST",
            "/v1/groups",
            Some(json!({"group_id": "h", "creator": "system:x"})),
            400,
            606,
        ),
        (
            "POST",
            "/v1/groups",
            Some(json!({"group_id": "h"})),
            400,
            1400,
        ),
        (
            "POST",
            "/v1/groups",
            Some(json!({"group_id": "h", "creator": "c", "x": 1})),
            400,
            1400,
        ),
        ("GET", "/v1/groups/nope", None, 404, 600),
        ("GET", "/v1/groups/g?limit=0", None, 400, 1400),
        ("GET", "/v1/groups/g?colour=red", None, 400, 1400),
        (
            "POST",
            "/v1/groups/g/members",
            Some(json!({"members": ["ben"]})),
            409,
            607,
        ),
        (
            "POST",
            "/v1/groups/g/members",
            Some(json!({"members": []})),
            400,
            1400,
        ),
        (
            "POST",
            "/v1/groups/g/members",
            Some(json!({"members": ["c", "d"]})),
            422,
            604,
        ),
        (
            "POST",
            "/v1/groups/nope/members",
            Some(json!({"members": ["c"]})),
            404,
            600,
        ),
        ("DELETE", "/v1/groups/g/members/zed", None, 409, 602),
        ("DELETE", "/v1/groups/nope/members/ann", None, 404, 600),
        ("PUT", "/v1/groups/g", None, 405, 1405),
        // A publish names exactly one recipient.
        (
            "POST",
            "/v1/messages",
            Some(
                json!({"from": "s", "to_user": "ann", "to_group": "g", "body": "x", "client_msg_id": 1}),
            ),
            400,
            1400,
        ),
        (
            "POST",
            "/v1/messages",
            Some(json!({"from": "s", "body": "x", "client_msg_id": 1})),
            400,
            1400,
        ),
        (
            "POST",
            "/v1/messages",
            Some(json!({"from": "s", "to_group": "", "body": "x", "client_msg_id": 1})),
            400,
            606,
        ),
    ];
    for (method, path, body, status, code) in cases {
        let r = http(
            b.admin_addr(),
            method,
            path,
            Some(&b.admin_token()),
            body.as_ref(),
        );
        assert_eq!(
            (r.status, error_code(&r)),
            (status, code),
            "{method} {path} {body:?} → {}",
            r.text()
        );
    }
    // A publish to no group: the publish answer, with the group code.
    let r = publish(
        &b,
        json!({"from": "s", "to_group": "nope", "body": "x", "client_msg_id": 1}),
    );
    assert_eq!(
        (r.status, r.json()),
        (404, json!({"status": "GROUP_NOT_FOUND", "code": 600}))
    );
    // Nothing changed the group.
    let r = get(&b, "/v1/groups/g");
    assert_eq!(
        (
            r.json()["group_seq"].clone(),
            r.json()["member_count"].clone()
        ),
        (json!(1), json!(2))
    );
    b.assert_serving();
}

#[test]
fn user_lookup_shows_devices_and_kick_ends_their_sessions() {
    let b = test_broker().start();
    let alice = user_on_shard("alice", 1, 2);
    let started = ringpost_harness::now_unix() as u64 * 1000;
    run(async {
        let mut phone = b.connect(&alice, "phone").await;
        let mut laptop = b.connect(&alice, "laptop").await;
        for i in 1..=3 {
            let r = publish(
                &b,
                json!({"from": "system:x", "to_user": alice, "body": "m", "client_msg_id": i}),
            );
            assert_eq!(r.status, 200);
        }
        for _ in 0..3 {
            expect_deliver(&mut phone).await;
            expect_deliver(&mut laptop).await;
        }
        phone.ack(2).await.unwrap();
        // The ack is handled before a later frame of the same connection is answered.
        phone.ping(1).await.unwrap();
        assert!(matches!(
            ringpost_harness::expect_event(&mut phone).await,
            Event::Pong { nonce: 1 }
        ));

        let v = get(&b, &format!("/v1/users/{alice}")).json();
        assert_eq!(
            (
                v["user_id"].as_str(),
                v["shard"].as_u64(),
                v["head_seq"].as_u64(),
                v["durable_seq"].as_u64(),
                v["oldest_seq"].as_u64(),
                v["online"].as_bool()
            ),
            (
                Some(alice.as_str()),
                Some(1),
                Some(3),
                Some(3),
                Some(1),
                Some(true)
            ),
            "{v}"
        );
        let devices = v["devices"].as_array().unwrap();
        assert_eq!(devices.len(), 2, "{v}");
        let phone_dev = devices.iter().find(|d| d["device_id"] == "phone").unwrap();
        assert_eq!(phone_dev["transport"], "tcp");
        assert_eq!(phone_dev["shard"], 1);
        assert_eq!(phone_dev["last_acked_seq"], 2);
        assert_eq!(phone_dev["sent_seq"], 3);
        let since = phone_dev["connected_since_ms"].as_u64().unwrap();
        assert!(
            since + 2000 >= started && since <= started + 60_000,
            "{since} vs {started}"
        );
        assert_eq!(v["cursors"]["phone"], 2, "{v}");

        // One device, by ID: only that session ends, with GoAway(KICKED).
        let token = b.admin_token();
        let r = http(
            b.admin_addr(),
            "DELETE",
            &format!("/v1/users/{alice}/sessions?device=phone"),
            Some(&token),
            None,
        );
        assert_eq!(
            (r.status, r.json()),
            (
                200,
                json!({"user_id": alice, "device": "phone", "kicked": 1})
            )
        );
        expect_goaway_then_close(&mut phone, Code::KICKED).await;
        let v = get(&b, &format!("/v1/users/{alice}")).json();
        assert_eq!(v["devices"].as_array().unwrap().len(), 1, "{v}");
        laptop.ping(2).await.unwrap();
        assert!(matches!(
            ringpost_harness::expect_event(&mut laptop).await,
            Event::Pong { nonce: 2 }
        ));

        // All of them.
        let r = http(
            b.admin_addr(),
            "DELETE",
            &format!("/v1/users/{alice}/sessions"),
            Some(&token),
            None,
        );
        assert_eq!(r.json()["kicked"], 1);
        expect_goaway_then_close(&mut laptop, Code::KICKED).await;
        let v = get(&b, &format!("/v1/users/{alice}")).json();
        assert_eq!(
            (v["online"].as_bool(), v["devices"].as_array().map(Vec::len)),
            (Some(false), Some(0))
        );
        let r = http(
            b.admin_addr(),
            "DELETE",
            &format!("/v1/users/{alice}/sessions"),
            Some(&token),
            None,
        );
        assert_eq!(r.json()["kicked"], 0);
        // A kicked user may log in again.
        let _back = b.connect(&alice, "phone").await;
    });
    let text = scrape(&b);
    assert_eq!(
        sample(&text, "ringpost_goaway_total{code=\"KICKED\"}"),
        2.0,
        "{text}"
    );

    // IDs are percent-decoded; one never seen is all zeros; bad ones are 400.
    let v = get(&b, "/v1/users/%E7%94%A8%E6%88%B7%2Fx").json();
    assert_eq!(
        (v["user_id"].as_str(), v["head_seq"].as_u64()),
        (Some("用户/x"), Some(0))
    );
    assert_eq!(
        v["shard"].as_u64(),
        Some(ringpost::shard::owner("用户/x", 2) as u64)
    );
    let long = "x".repeat(129);
    assert_eq!(get(&b, &format!("/v1/users/{long}")).status, 400);
    assert_eq!(get(&b, "/v1/users/%FF").status, 400);
    let r = http(
        b.admin_addr(),
        "DELETE",
        "/v1/users/a/sessions?colour=red",
        Some(&b.admin_token()),
        None,
    );
    assert_eq!(r.status, 400);
}

// ---- readiness during recovery and shutdown -------------------------------------------------

/// A port that was free a moment ago (for a broker whose admin address must be known before
/// it prints anything).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port()
}

#[test]
fn readyz_is_503_while_the_logs_recover_then_200() {
    let dir = TempDir::new("admin-recovery");
    let b = test_broker().dir(dir.path()).start();
    for i in 1..=50 {
        assert_eq!(
            publish(
                &b,
                json!({"from": "system:x", "to_user": "bob", "body": "m", "client_msg_id": i})
            )
            .status,
            200
        );
    }
    let _ = b.crash();

    // Restart with recovery held at its start (see RINGPOST_FAULT_HOLD_RECOVERY_FILE).
    let hold = dir.path().join("hold-recovery");
    std::fs::write(&hold, b"").unwrap();
    let port = free_port();
    let builder = test_broker()
        .dir(dir.path())
        .table("admin", &format!("listen = \"127.0.0.1:{port}\""))
        .env(ringpost::shard::recovery::FAULT_HOLD_RECOVERY_ENV, &hold);
    let starting = std::thread::spawn(move || builder.start());
    let admin: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + WAIT;
    let r = loop {
        if let Ok(mut s) = TcpStream::connect(admin) {
            s.set_read_timeout(Some(WAIT)).unwrap();
            s.write_all(&request_bytes("GET", "/readyz", None, None))
                .unwrap();
            if let Some(r) = read_reply(&mut s, &mut Vec::new()) {
                break r;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the admin listener never answered during recovery"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["status"], "starting");
    assert_eq!(http(admin, "GET", "/healthz", None, None).status, 200);
    let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let r = http(admin, "GET", "/v1/users/bob", Some(token.trim()), None);
    assert_eq!((r.status, error_code(&r)), (503, 1503), "{}", r.text());
    let r = http(admin, "GET", "/metrics", None, None);
    assert_eq!(r.status, 200, "metrics answer during recovery too");
    assert!(
        !r.text().contains("ringpost_connections{"),
        "no shard gauges yet"
    );

    std::fs::remove_file(&hold).unwrap();
    let b = starting.join().expect("broker started");
    assert_eq!(b.admin_addr(), admin);
    assert_eq!(http(admin, "GET", "/readyz", None, None).status, 200);
    assert_eq!(get(&b, "/v1/users/bob").json()["head_seq"], 50);
}

#[test]
fn readyz_is_503_during_shutdown() {
    let mut b = test_broker().shards(1).start();
    // A client that reads nothing holds the shutdown in its final write for a while.
    let mut stuck = ringpost_harness::raw_login(&b, "stuck");
    let body = "x".repeat(30_000);
    for i in 1..=200 {
        let r = publish(
            &b,
            json!({"from": "system:x", "to_user": "stuck", "body": body, "client_msg_id": i}),
        );
        assert_eq!(r.status, 200);
    }
    let admin = b.admin_addr();
    b.sigterm();
    let deadline = Instant::now() + WAIT;
    loop {
        let r = http(admin, "GET", "/readyz", None, None);
        if r.status == 503 {
            assert_eq!(r.json()["status"], "shutting_down");
            break;
        }
        assert!(Instant::now() < deadline, "readyz never turned 503");
    }
    // Publishes are refused once the shard drains (readiness turns first: one that reaches
    // the shard before its drain began is still accepted, and that is fine).
    let mut id = 0;
    let refused = loop {
        id += 1;
        let r = publish(
            &b,
            json!({"from": "system:x", "to_user": "late", "body": "m", "client_msg_id": id}),
        );
        if r.status != 200 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "publishes never refused during shutdown"
        );
    };
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(
        refused.json()["code"],
        u64::from(Code::SHUTDOWN.0),
        "{}",
        refused.text()
    );
    while read_frame(&mut stuck).is_some() {}
    assert!(b.wait_exit(WAIT).is_some_and(|s| s.success()));
}

// ---- hostile HTTP clients --------------------------------------------------------------------

#[test]
fn garbage_slow_and_oversized_http_clients_are_closed_and_the_broker_serves_on() {
    let b = test_broker()
        .table(
            "admin",
            "request_timeout = \"500ms\"\nkeepalive_timeout = \"1s\"\nmax_request = \"8KiB\"\nmax_connections = 8",
        )
        .start();
    let a = b.admin_addr();
    let token = b.admin_token();

    // Keep-alive: several requests on one connection, pipelined too.
    let mut s = connect_admin(a);
    let mut buf = Vec::new();
    s.write_all(
        &[
            request_bytes("GET", "/healthz", None, None),
            request_bytes("GET", "/v1/users/a", Some(&token), None),
        ]
        .concat(),
    )
    .unwrap();
    assert_eq!(read_reply(&mut s, &mut buf).unwrap().status, 200);
    assert_eq!(read_reply(&mut s, &mut buf).unwrap().json()["user_id"], "a");
    s.write_all(&request_bytes("GET", "/readyz", None, None))
        .unwrap();
    let r = read_reply(&mut s, &mut buf).unwrap();
    assert_eq!(
        (r.status, r.header("connection")),
        (200, Some("keep-alive"))
    );
    // ... until it idles past keepalive_timeout: closed without a word.
    assert!(closed(&mut s), "idle keep-alive connection not closed");

    // Garbage: 400, then closed.
    let mut s = connect_admin(a);
    s.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")
        .unwrap();
    let r = read_reply(&mut s, &mut Vec::new()).unwrap();
    assert_eq!((r.status, error_code(&r)), (400, 1400));
    assert!(closed(&mut s));

    // Slow (half a request line, then nothing): 408 after request_timeout, then closed.
    let mut s = connect_admin(a);
    let t0 = Instant::now();
    s.write_all(b"GET /v1/users/a HT").unwrap();
    let r = read_reply(&mut s, &mut Vec::new()).unwrap();
    assert_eq!((r.status, error_code(&r)), (408, 1408));
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t0.elapsed()
    );
    assert!(closed(&mut s));

    // A slowloris that keeps trickling headers is cut off by the same deadline.
    let mut s = connect_admin(a);
    s.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    let t0 = Instant::now();
    let mut answer = None;
    for i in 0..40 {
        if s.write_all(format!("x-{i}: y\r\n").as_bytes()).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        s.set_nonblocking(true).unwrap();
        let mut peek = [0u8; 1];
        let ready = s.peek(&mut peek).is_ok();
        s.set_nonblocking(false).unwrap();
        if ready {
            answer = read_reply(&mut s, &mut Vec::new());
            break;
        }
    }
    let r = answer.expect("the trickling client got an answer");
    assert!(matches!(r.status, 408 | 431), "{}", r.status);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());

    // Too many headers, too long a head, too big a body, chunked bodies.
    let many: String = (0..40).map(|i| format!("x-{i}: y\r\n")).collect();
    let mut s = connect_admin(a);
    s.write_all(format!("GET /healthz HTTP/1.1\r\n{many}\r\n").as_bytes())
        .unwrap();
    assert_eq!(read_reply(&mut s, &mut Vec::new()).unwrap().status, 431);
    let mut s = connect_admin(a);
    s.write_all(
        format!(
            "GET /healthz HTTP/1.1\r\nx-big: {}\r\n\r\n",
            "y".repeat(20_000)
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(read_reply(&mut s, &mut Vec::new()).unwrap().status, 431);
    let mut s = connect_admin(a);
    s.write_all(&request_bytes(
        "POST",
        "/v1/messages",
        Some(&token),
        Some(&vec![b' '; 9000]),
    ))
    .unwrap();
    let r = read_reply(&mut s, &mut Vec::new()).unwrap();
    assert_eq!((r.status, error_code(&r)), (413, 1413));
    let mut s = connect_admin(a);
    s.write_all(
        b"POST /v1/messages HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_reply(&mut s, &mut Vec::new()).unwrap().status, 411);

    // More connections than max_connections: the extra ones are closed at once.
    let held: Vec<TcpStream> = (0..8).map(|_| connect_admin(a)).collect();
    // Make sure all eight were accepted before the ninth arrives.
    for mut h in held.iter() {
        h.write_all(&request_bytes("GET", "/healthz", None, None))
            .unwrap();
    }
    for h in &held {
        let mut h = h.try_clone().unwrap();
        assert_eq!(read_reply(&mut h, &mut Vec::new()).unwrap().status, 200);
    }
    let mut extra = connect_admin(a);
    let _ = extra.write_all(&request_bytes("GET", "/healthz", None, None));
    assert!(
        read_reply(&mut extra, &mut Vec::new()).is_none(),
        "the ninth was served"
    );
    drop(held);

    // Through all of it, clients and the admin API kept being served.
    b.assert_serving();
    // The held connections' slots free up as the admin thread sees them close.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut s = connect_admin(a);
        let _ = s.write_all(&request_bytes("GET", "/healthz", None, None));
        if read_reply(&mut s, &mut Vec::new()).is_some_and(|r| r.status == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the admin listener stopped serving"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(get(&b, "/v1/users/a").status, 200);
}

// ---- the OpenAPI document against the live server --------------------------------------------

fn schemathesis() -> std::path::PathBuf {
    let st = std::env::var_os("SCHEMATHESIS").map_or_else(|| "st".into(), std::path::PathBuf::from);
    let ok = std::process::Command::new(&st)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "schemathesis (`st`) is not installed: `python3 -m pip install schemathesis` (make test does)"
    );
    st
}

/// Runs schemathesis with `spec` against the broker; (success, output).
fn run_schemathesis(b: &TestBroker, spec: &std::path::Path, extra: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(schemathesis())
        .arg("run")
        .arg(spec)
        .args(["--url", &format!("http://{}", b.admin_addr())])
        .args(["-H", &format!("Authorization: Bearer {}", b.admin_token())])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,negative_data_rejection,ignored_auth,unsupported_method",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "30",
            "--seed",
            "1",
            "--request-timeout",
            "15",
            "--no-color",
        ])
        .args(extra)
        .env("SCHEMATHESIS_HOOKS", "")
        // It keeps a cache of what it found in its working directory: not in the repository.
        .current_dir(&b.dir)
        .output()
        .expect("run schemathesis");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The report ends with the failures and the summary; that is what a reader needs.
    let tail = text.len().saturating_sub(6000);
    let tail = (tail..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    (out.status.success(), text[tail..].to_string())
}

#[test]
fn the_openapi_document_matches_the_server() {
    let b = test_broker().limits("max_frame = \"4KiB\"").start();
    let spec = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/admin/openapi.yaml");
    // The served document is the file in the repository.
    assert_eq!(
        get(&b, "/v1/openapi.yaml").text(),
        std::fs::read_to_string(&spec).unwrap()
    );
    let (ok, out) = run_schemathesis(&b, &spec, &[]);
    assert!(
        ok,
        "schemathesis found the server and its OpenAPI document disagree:\n{out}"
    );
    b.assert_serving();

    // The check has teeth: a document that forgets a field the server sends fails it.
    let dir = TempDir::new("openapi-broken");
    let broken = dir.path().join("openapi.yaml");
    let text = std::fs::read_to_string(&spec).unwrap();
    let (property, required) = (
        "        durable_seq:\n          type: integer\n          minimum: 0\n          description: the newest seq that is durable and may be delivered\n",
        "required: [user_id, shard, head_seq, durable_seq, oldest_seq, online, known, devices, cursors]",
    );
    assert!(
        text.contains(property) && text.contains(required),
        "both edits apply"
    );
    let wrong = text.replacen(property, "", 1).replacen(
        required,
        &required.replace(" durable_seq,", ""),
        1,
    );
    std::fs::write(&broken, wrong).unwrap();
    let (ok, out) = run_schemathesis(
        &b,
        &broken,
        &[
            "--include-path",
            "/v1/users/{id}",
            "--include-method",
            "GET",
        ],
    );
    assert!(
        !ok,
        "schemathesis accepted a document that disagrees with the server:\n{out}"
    );
}

// ---- deployment files ------------------------------------------------------------------------

#[test]
fn the_deployment_files_use_what_the_broker_exposes() {
    let b = test_broker().start();
    let text = scrape(&b);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard = std::fs::read_to_string(root.join("deploy/grafana-dashboard.json")).unwrap();
    let parsed: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 8));
    let mut names: Vec<&str> = Vec::new();
    for (i, _) in dashboard
        .match_indices("ringpost_")
        .chain(dashboard.match_indices("process_"))
    {
        let name = &dashboard[i..];
        let end = name
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(name.len());
        names.push(&name[..end]);
    }
    names.sort_unstable();
    names.dedup();
    // Every family of the issue is on a panel.
    for family in [
        "ringpost_connections",
        "ringpost_logins_total",
        "ringpost_messages_accepted_total",
        "ringpost_messages_delivered_total",
        "ringpost_send_rejected_total",
        "ringpost_log_sync_seconds_bucket",
        "ringpost_mesh_queue_depth",
        "ringpost_log_bytes",
        "ringpost_group_messages_total",
        "ringpost_group_fanout_pending",
    ] {
        assert!(
            names.contains(&family),
            "the dashboard has no panel for {family}"
        );
    }
    // And every name it uses is one the broker exposes (a # TYPE line for its family).
    for name in &names {
        let family = ["_total", "_bucket", "_sum", "_count", "_info"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# TYPE {family} "))),
            "the dashboard uses {name}, which the broker does not expose:\n{text}"
        );
    }
    let prometheus = std::fs::read_to_string(root.join("deploy/prometheus.yml")).unwrap();
    assert!(prometheus.contains("metrics_path: /metrics"));
    let default = ringpost::config::Config::embedded_default().unwrap();
    let port = default.admin.listen.unwrap().port();
    assert!(
        prometheus.contains(&format!("127.0.0.1:{port}")),
        "scrapes the default admin port"
    );
    let unit = std::fs::read_to_string(root.join("deploy/ringpost.service")).unwrap();
    for directive in [
        "User=ringpost",
        "LimitNOFILE=",
        "LimitMEMLOCK=",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/ringpost",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(
            unit.contains(directive),
            "ringpost.service lacks {directive:?}"
        );
    }
}

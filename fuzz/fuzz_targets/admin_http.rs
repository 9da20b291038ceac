//! The admin listener's HTTP/1.1 side (`admin::http`, `admin::api`): arbitrary request bytes
//! arriving in arbitrary reads, read as `http::read_request` reads them (`http::parse` after
//! every read, pipelined requests carried over), each request answered by the real router
//! (`api::handle`, JSON bodies and query strings included) and the answer encoded as
//! `http::write_response` writes it.
//!
//! The shards' control channels are made but never connected, as while a broker starts: a
//! request that passes every check of its route is answered 503 instead of reaching a shard,
//! so everything before that — routing, the bearer token, percent-decoding, the bodies of
//! `POST /v1/messages`, `POST /v1/groups`, `POST /v1/groups/{id}/members`, and the queries of
//! `DELETE /v1/users/{id}/sessions?device=` and `GET /v1/groups/{id}?after=&limit=` — runs on
//! fuzz bytes.
//!
//! Input: `flags | cuts (ringpost_fuzz::input) | bytes`. flags & 3 picks `admin.max_request`
//! (the default 1 MiB, 4 KiB, 16 KiB, 64 KiB); ((flags >> 2) & 3) % 3 the broker's phase (starting,
//! ready, shutting down); flags & 0x10: the peer closes after its last byte (else it stalls,
//! and the request timeout fires). The bearer token is [`TOKEN`].
//!
//! Must hold: no panic; every answer is a well-formed HTTP/1.1 response (httparse reads it
//! whole, Content-Length is its body, `connection` says what the server does next) with one
//! of the documented statuses and a known reason phrase; every JSON body parses, and every
//! error body (but `/readyz`'s 503, its phase) is `{code, name, message}` with code 1000 + status or a wire code; 401 carries
//! `www-authenticate`, 405 `allow`; 200 only for the routes that need no shard; a /v1 route
//! never answers without the right token; a parsed request's head and body fit
//! `max_request` and its body is exactly its Content-Length; what waits in the buffer for
//! more bytes never exceeds the head or request limit.
#![no_main]

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};
use libfuzzer_sys::fuzz_target;
use ringpost::admin::api::{self, Ctx, FdCount};
use ringpost::admin::health::{Health, Phase};
use ringpost::admin::http::{self, ReadError, Request, Response, MAX_HEAD};
use ringpost::admin::shards::Links;
use ringpost::config::Config;
use ringpost::metrics::ShardMetrics;
use ringpost::shard::control::{channels, ShardControl};
use ringpost_fuzz::input::{Cuts, Header};

/// The admin token the fuzzed broker expects (seeds and the dictionary use it).
const TOKEN: &[u8] = b"fuzz-admin-token";
const SHARDS: usize = 2;
/// Every status the admin listener documents (openapi.yaml and the refusals in
/// `admin::refusal`) that can occur without a shard answering: 409, 422, 429, 500 and 504
/// need a shard's answer (or its silence), and none is connected here.
const STATUSES: &[u16] = &[200, 400, 401, 403, 404, 405, 408, 411, 413, 431, 503];
const MAX_REQUESTS: [usize; 4] = [1 << 20, 4 << 10, 16 << 10, 64 << 10];

/// What every input shares: one executor, the control links (never connected), the shards'
/// ends (kept so the links stay "not connected" rather than "gone").
struct World {
    executor: LocalExecutor,
    links: Option<Rc<Links>>,
    fds: Rc<FdCount>,
    _controls: Vec<ShardControl>,
    ends: Option<Vec<ringpost::shard::control::AdminEnds>>,
    cfgs: Vec<Arc<Config>>,
    health: [Arc<Health>; 3],
    metrics: Arc<[Arc<ShardMetrics>]>,
}

thread_local! {
    static WORLD: RefCell<World> = RefCell::new(world());
}

fn world() -> World {
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(256 * 1024)
        .make()
        .expect("a glommio executor");
    let (ends, controls) = channels(SHARDS);
    let base = Config::embedded_default().expect("the embedded config");
    let cfgs = MAX_REQUESTS
        .iter()
        .map(|&max| {
            let mut c = base.clone();
            c.admin.max_request = max;
            Arc::new(c)
        })
        .collect();
    let health = [Phase::Starting, Phase::Ready, Phase::ShuttingDown].map(|p| {
        let h = Arc::new(Health::default());
        h.set(p);
        h
    });
    World {
        executor,
        links: None,
        fds: Rc::default(),
        _controls: controls,
        ends: Some(ends),
        cfgs,
        health,
        metrics: (0..SHARDS)
            .map(|s| Arc::new(ShardMetrics::new(s, SHARDS)))
            .collect(),
    }
}

/// The status and message `admin::refusal` answers a read error with (`None`: close quietly).
fn refusal(e: &ReadError) -> Option<u16> {
    match e {
        ReadError::Closed | ReadError::Idle => None,
        ReadError::Timeout => Some(408),
        ReadError::Malformed(_) => Some(400),
        ReadError::HeadTooLarge => Some(431),
        ReadError::TooLarge { .. } => Some(413),
        ReadError::LengthRequired => Some(411),
    }
}

fn reason_ok(status: u16, reason: &str) -> bool {
    !reason.is_empty() && reason != "Unknown" && (status != 200 || reason == "OK")
}

/// The invariants of one encoded answer; `req` is the request it answers (`None`: a
/// refusal, after which the connection closes).
fn check_response(bytes: &[u8], resp: &Response, keep_alive: bool, req: Option<&Request>) {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("not a whole HTTP response: {other:?}: {bytes:?}"),
    };
    assert_eq!(parsed.version, Some(1), "HTTP/1.1");
    let status = parsed.code.expect("a status");
    assert_eq!(status, resp.status);
    assert!(STATUSES.contains(&status), "undocumented status {status}");
    let reason = parsed.reason.unwrap_or("");
    assert!(reason_ok(status, reason), "reason {reason:?} for {status}");
    let header = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let body = &bytes[head_len..];
    assert_eq!(
        header("content-length").and_then(|v| v.parse::<usize>().ok()),
        Some(body.len()),
        "Content-Length is not the body"
    );
    assert_eq!(
        header("connection").as_deref(),
        Some(if keep_alive { "keep-alive" } else { "close" })
    );
    let content_type = header("content-type").expect("a content type");
    if content_type == "application/json" {
        let v: serde_json::Value = serde_json::from_slice(body).expect("a JSON body");
        let probe = req.is_some_and(|r| r.method == "GET" && r.path == "/readyz");
        if probe {
            // `/readyz` answers its phase, 200 or 503, not an error.
            assert!([200, 503].contains(&status), "/readyz {status}");
            assert!(v["status"].as_str().is_some(), "{v}");
        } else if status >= 400 {
            let code = v["code"].as_u64().expect("an error code");
            assert!(
                code == 1000 + u64::from(status) || code < 1000,
                "code {code} for {status}"
            );
            assert!(v["name"].as_str().is_some_and(|n| !n.is_empty()), "{v}");
            assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        }
    } else {
        assert!(status == 200, "a {status} that is not JSON: {content_type}");
    }
    if status == 401 {
        assert!(
            header("www-authenticate").is_some(),
            "401 without a challenge"
        );
    }
    if status == 405 {
        assert!(header("allow").is_some(), "405 without Allow");
    }
    let Some(req) = req else {
        assert!(
            [400, 408, 411, 413, 431].contains(&status),
            "refusal {status}"
        );
        return;
    };
    let authorized = req.header("authorization").is_some_and(|v| {
        v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") && v[7..].trim_ascii() == TOKEN
    });
    if (req.path == "/v1" || req.path.starts_with("/v1/")) && !authorized {
        assert!(
            [401, 403].contains(&status),
            "/v1 answered {status} without the token"
        );
        if req.header("authorization").is_none() {
            assert_eq!(status, 401);
        }
    }
    if status == 200 {
        let open = matches!(
            (req.method.as_str(), req.path.as_str()),
            (
                "GET",
                "/healthz" | "/readyz" | "/metrics" | "/v1/openapi.yaml"
            )
        );
        assert!(open, "200 for {} {} with no shard", req.method, req.path);
    }
}

/// The invariants of a request `parse` gave.
fn check_request(req: &Request, max_request: usize) {
    assert!(req.body.len() <= max_request);
    assert!(
        req.path.starts_with('/'),
        "origin-form only: {:?}",
        req.path
    );
    assert!(!req.path.contains('?'), "the query is split off");
    let length = req.header("content-length").map(|v| {
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
    });
    match length {
        None => assert!(req.body.is_empty()),
        Some(n) => assert_eq!(n, Some(req.body.len())),
    }
    assert!(req.header("transfer-encoding").is_none());
    assert!(req.headers.len() <= http::MAX_HEADERS);
}

fuzz_target!(|data: &[u8]| {
    let mut h = Header::new(data);
    let flags = h.byte();
    let cuts = Cuts::read(&mut h);
    let bytes = h.rest();
    let closes = flags & 0x10 != 0;
    WORLD.with(|w| {
        let mut w = w.borrow_mut();
        let w = &mut *w;
        let cfg = w.cfgs[usize::from(flags & 3)].clone();
        let health = w.health[usize::from((flags >> 2) & 3) % 3].clone();
        let max_request = cfg.admin.max_request;
        let (links, fds, metrics) = (&mut w.links, w.fds.clone(), w.metrics.clone());
        let ends = &mut w.ends;
        w.executor.run(async {
            let links = links
                .get_or_insert_with(|| Links::start(ends.take().expect("ends, once")))
                .clone();
            let ctx = Ctx {
                cfg,
                token: TOKEN.to_vec(),
                health,
                metrics,
                links,
                fds,
            };
            let mut reads = cuts.split(bytes).into_iter().filter(|r| !r.is_empty());
            let mut buf = Vec::new();
            loop {
                // http::read_request: parse what is buffered, else read more.
                let read = loop {
                    if !buf.is_empty() {
                        match http::parse(&mut buf, max_request) {
                            Ok(Some(req)) => break Ok(req),
                            Ok(None) => assert!(
                                buf.len() <= MAX_HEAD.max(max_request),
                                "{} bytes waiting",
                                buf.len()
                            ),
                            Err(e) => break Err(e),
                        }
                    }
                    match reads.next() {
                        Some(r) => buf.extend_from_slice(r),
                        None if buf.is_empty() => break Err(ReadError::Closed),
                        None if closes => {
                            break Err(ReadError::Malformed("closed mid-request".into()))
                        }
                        None => break Err(ReadError::Timeout),
                    }
                };
                match read {
                    Ok(req) => {
                        check_request(&req, max_request);
                        let resp = api::handle(&ctx, &req).await;
                        let out = http::encode_response(&resp, req.keep_alive);
                        check_response(&out, &resp, req.keep_alive, Some(&req));
                        if !req.keep_alive {
                            return;
                        }
                    }
                    Err(e) => {
                        if let Some(status) = refusal(&e) {
                            let resp = api::read_error_response(status, &format!("{e:?}"));
                            let out = http::encode_response(&resp, false);
                            check_response(&out, &resp, false, None);
                        }
                        return;
                    }
                }
            }
        });
    });
});

//! The HTTP side of the WebSocket port (`wire::upgrade`): `route` on arbitrary request bytes
//! arriving in arbitrary reads, the client's `client_request` / `check_client_response`, and
//! `OriginPolicy`.
//!
//! Input: `flags | cuts (ringpost_fuzz::input) | bytes`. flags & 3 picks the origin policy
//! (any, loopback, a list, nothing); (flags >> 2) & 3 the mode:
//! - 0: the bytes are what a client sends, read as the acceptor reads them (route after every
//!   read, until it decides);
//! - 1: lines `host`, `path`, `origin` for `client_request`, whose request is routed;
//! - 2: lines of `ws_allowed_origins` entries for `OriginPolicy::parse`;
//! - 3: the bytes are a server's answer to `check_client_response`.
//!
//! Must hold: no panic; an answer is a well-formed HTTP response whose Content-Length is its
//! body, with one of the documented statuses (never 500); an upgrade is only for `GET /ws`
//! with an allowed or absent Origin, its head ends where the request head ends, and the 101 it
//! answers with is accepted by the client's check for the request's key; a valid request is
//! never refused while still incomplete (every prefix up to the limit is "need more"); the
//! acceptor's decision after its reads is the decision on the whole request; a policy allows
//! every origin it lists.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpost::wire::upgrade::{
    check_client_response, client_request, route, OriginPolicy, Route, MAX_REQUEST_HEAD, WS_PATH,
};
use ringpost_fuzz::input::{Cuts, Header};
use tungstenite::handshake::machine::TryParse;
use tungstenite::handshake::server::Request;

const STATUSES: &[u16] = &[200, 400, 403, 404, 405, 408, 426, 431];

fn policy(sel: u8) -> OriginPolicy {
    let entries: &[&str] = match sel & 3 {
        0 => &["*"],
        1 => &["loopback"],
        2 => &["https://chat.example.com", "null", "loopback"],
        _ => &[],
    };
    OriginPolicy::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("fixed policies parse")
}

/// The invariants of one routing decision on `buf`.
fn check_route(buf: &[u8], route: &Route, policy: &OriginPolicy) {
    match route {
        Route::Answer { response, status } => {
            assert!(STATUSES.contains(status), "status {status}");
            let text = String::from_utf8_lossy(response);
            assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text:?}");
            let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .expect("Content-Length");
            assert_eq!(length.parse::<usize>().ok(), Some(body.len()), "{head}");
        }
        Route::Upgrade { response, head_len } => {
            assert!(*head_len <= buf.len());
            let (n, request) = Request::try_parse(buf)
                .expect("an upgraded request parses")
                .expect("an upgraded request is complete");
            assert_eq!(n, *head_len);
            assert_eq!(request.uri().path(), WS_PATH);
            if let Some(origin) = request.headers().get("Origin") {
                let origin = origin.to_str().expect("an allowed origin is text");
                assert!(policy.allows(origin), "upgrade for origin {origin:?}");
            }
            let key = request
                .headers()
                .get("Sec-WebSocket-Key")
                .expect("an upgrade has a key")
                .to_str()
                .expect("a key that was answered is text");
            assert_eq!(
                check_client_response(response, key),
                Ok(Some(response.len())),
                "our 101 fails the client's check"
            );
        }
    }
}

fn acceptor(stream: &[u8], cuts: &Cuts, policy: &OriginPolicy) {
    let whole = route(stream, policy);
    if let Some(r) = &whole {
        check_route(stream, r, policy);
    }
    // A valid request is "need more" at every shorter prefix within the limit.
    if let Some(Route::Upgrade { head_len, .. }) = &whole {
        for read in cuts.split(stream) {
            let k = read.as_ptr() as usize - stream.as_ptr() as usize;
            if k > 0 && k < *head_len && k <= MAX_REQUEST_HEAD {
                assert_eq!(route(&stream[..k], policy), None, "prefix of {k} bytes");
            }
        }
    }
    // The acceptor routes after each read, on everything read so far, until it decides.
    let mut buf = Vec::new();
    for read in cuts.split(stream) {
        buf.extend_from_slice(read);
        if let Some(r) = route(&buf, policy) {
            check_route(&buf, &r, policy);
            // Once the whole head is in, more bytes change nothing.
            if let Some(Route::Upgrade { head_len, .. }) = &whole {
                if *head_len <= buf.len() {
                    assert_eq!(Some(r), whole, "the acceptor decided otherwise");
                }
            }
            return;
        }
    }
}

fn lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .split('\n')
        .map(str::to_owned)
        .collect()
}

fn client(bytes: &[u8]) {
    let parts = lines(bytes);
    let host = parts.first().map_or("127.0.0.1:7071", String::as_str);
    let path = parts.get(1).map_or(WS_PATH, String::as_str);
    let origin = parts.get(2).map(String::as_str);
    let Ok((request, key)) = client_request(host, path, origin) else {
        return;
    };
    let any = OriginPolicy::Any;
    if let Some(r) = route(&request, &any) {
        check_route(&request, &r, &any);
        if let Route::Upgrade { head_len, response } = &r {
            assert_eq!(*head_len, request.len());
            assert_eq!(
                check_client_response(response, &key),
                Ok(Some(response.len()))
            );
        }
    }
}

fn origins(bytes: &[u8]) {
    let entries = lines(bytes);
    let Ok(policy) = OriginPolicy::parse(&entries) else {
        return;
    };
    for e in &entries {
        match e.as_str() {
            "*" => assert_eq!(policy, OriginPolicy::Any),
            "loopback" => assert!(policy.allows("http://localhost")),
            origin => assert!(policy.allows(origin), "{origin:?} is listed, not allowed"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut h = Header::new(data);
    let flags = h.byte();
    let cuts = Cuts::read(&mut h);
    let bytes = h.rest();
    match (flags >> 2) & 3 {
        0 => acceptor(bytes, &cuts, &policy(flags)),
        1 => client(bytes),
        2 => origins(bytes),
        _ => {
            let key = "dGhlIHNhbXBsZSBub25jZQ==";
            if let Ok(Some(n)) = check_client_response(bytes, key) {
                assert!(n <= bytes.len());
            }
        }
    }
});

//! The HTTP/1.1 request that opens every connection on the WebSocket port, decided without
//! I/O: the acceptor reads bytes, [`route`] says what to answer.
//!
//! - `GET /ws` with a valid upgrade and an allowed `Origin` → `101 Switching Protocols`
//!   (tungstenite checks the headers and derives `Sec-WebSocket-Accept`); the connection then
//!   speaks WebSocket. A refused origin → `403`; a broken upgrade → `400`, or `426` when the
//!   WebSocket version is not 13.
//! - `GET` of a chat-page file ([`super::web`]) → `200` with the file.
//! - Any other path → `404`; another method → `405`; a head over [`MAX_REQUEST_HEAD`] → `431`;
//!   bytes that are not HTTP → `400`. Each of these closes the connection after the answer.
//!
//! Tokens never travel in the URL (URLs end up in logs and browser history): a WebSocket
//! client sends its token in the Login frame, the first binary message after the upgrade.
//!
//! ## Origins
//!
//! Browsers send `Origin` with every WebSocket upgrade, and any web page can open a WebSocket
//! to any address, so the origin is what stops another site's page from talking to the broker
//! with a user's help. `[server] ws_allowed_origins` lists what is allowed ([`OriginPolicy`]);
//! by default only pages served from loopback (`http(s)://localhost`, `127.0.0.1`, `[::1]`,
//! any port), which includes the chat page the broker serves itself on a loopback address. A
//! request *without* `Origin` is not from a browser (browsers always send it) and is allowed:
//! native and server-side clients authenticate with their token like TCP clients do. The
//! Host header is deliberately not trusted to mean "same origin": with DNS rebinding a hostile
//! page can make it match.

use tungstenite::error::{Error as WsLibError, ProtocolError};
use tungstenite::handshake::machine::TryParse;
use tungstenite::handshake::server::{create_response, write_response, Request};

use super::web;

/// The path of WebSocket upgrades.
pub const WS_PATH: &str = "/ws";
/// Longest request head (request line and headers) we read.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Which `Origin` values may open a WebSocket (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPolicy {
    /// `["*"]`: any origin.
    Any,
    /// Loopback origins (if `loopback`) and these exact ones, lowercased.
    Listed { loopback: bool, exact: Vec<String> },
}

impl OriginPolicy {
    /// Builds the policy from `ws_allowed_origins` entries: `"*"`, `"loopback"`, `"null"`, or an
    /// origin `scheme://host[:port]` (no path). Err says which entry is wrong and why.
    pub fn parse(entries: &[String]) -> Result<OriginPolicy, String> {
        let mut loopback = false;
        let mut exact = Vec::new();
        for e in entries {
            match e.as_str() {
                "*" => return Ok(OriginPolicy::Any),
                "loopback" => loopback = true,
                "null" => exact.push("null".to_owned()),
                origin => {
                    if split_origin(origin).is_none() {
                        return Err(format!(
                            "`{origin}` is not an origin; use \"*\", \"loopback\", \"null\" or scheme://host[:port] without a path, e.g. \"https://chat.example.com\""
                        ));
                    }
                    exact.push(origin.to_ascii_lowercase());
                }
            }
        }
        Ok(OriginPolicy::Listed { loopback, exact })
    }

    /// True if a request with this `Origin` header value may upgrade.
    pub fn allows(&self, origin: &str) -> bool {
        match self {
            OriginPolicy::Any => true,
            OriginPolicy::Listed { loopback, exact } => {
                let origin = origin.trim().to_ascii_lowercase();
                (*loopback && is_loopback_origin(&origin)) || exact.contains(&origin)
            }
        }
    }
}

/// `scheme://host[:port]` → (scheme, host, port); None if it is not of that shape.
fn split_origin(origin: &str) -> Option<(&str, &str, Option<u16>)> {
    let (scheme, rest) = origin.split_once("://")?;
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return None;
    }
    // Browsers send an Origin header as visible ASCII (IDNs in punycode), so an entry with
    // whitespace, control characters or non-ASCII could never match one: refuse it.
    if rest.is_empty()
        || rest.contains(['/', '?', '#', '@'])
        || !rest.bytes().all(|b| b.is_ascii_graphic())
    {
        return None;
    }
    // An IPv6 host is bracketed: [::1]:8080.
    let (host, port) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains(']') => (&rest[..i], Some(rest[i + 1..].parse().ok()?)),
        _ => (rest, None),
    };
    if host.is_empty() {
        return None;
    }
    Some((scheme, host, port))
}

/// `http(s)://localhost|127.0.0.1|[::1]` with any port (`origin` is lowercased).
fn is_loopback_origin(origin: &str) -> bool {
    match split_origin(origin) {
        Some((scheme, host, _)) => {
            matches!(scheme, "http" | "https")
                && matches!(host, "localhost" | "127.0.0.1" | "[::1]")
        }
        None => false,
    }
}

/// What to do with a connection on the WebSocket port, once its request head is read.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Write `response` (101), then speak WebSocket; the request head was `head_len` bytes
    /// (what follows it is the first WebSocket bytes).
    Upgrade { response: Vec<u8>, head_len: usize },
    /// Write `response`, then close. `status` is its HTTP status (for logs and tests).
    Answer { response: Vec<u8>, status: u16 },
}

/// Decides what `buf` (the bytes received so far) asks for: `None` while the request head is
/// incomplete (and under [`MAX_REQUEST_HEAD`]).
pub fn route(buf: &[u8], origins: &OriginPolicy) -> Option<Route> {
    let (head_len, request) = match Request::try_parse(buf) {
        Ok(Some(parsed)) => parsed,
        Ok(None) if buf.len() > MAX_REQUEST_HEAD => {
            return Some(error(
                431,
                "Request Header Fields Too Large",
                "request head too long",
            ))
        }
        Ok(None) => return None,
        Err(WsLibError::Protocol(ProtocolError::WrongHttpMethod)) => {
            return Some(error(405, "Method Not Allowed", "only GET is served here"))
        }
        Err(WsLibError::HttpFormat(_)) | Err(WsLibError::Url(_)) | Err(_) => {
            return Some(error(400, "Bad Request", "not an HTTP/1.1 request"))
        }
    };
    let path = request.uri().path();
    if path == WS_PATH {
        if let Some(origin) = request.headers().get("Origin") {
            let allowed = origin.to_str().is_ok_and(|o| origins.allows(o));
            if !allowed {
                return Some(error(
                    403,
                    "Forbidden",
                    "this Origin is not in [server] ws_allowed_origins",
                ));
            }
        }
        return Some(match create_response(&request) {
            Ok(response) => {
                let mut out = Vec::with_capacity(160);
                match write_response(&mut out, &response) {
                    Ok(()) => Route::Upgrade {
                        response: out,
                        head_len,
                    },
                    Err(_) => error(500, "Internal Server Error", "cannot write the response"),
                }
            }
            Err(WsLibError::Protocol(ProtocolError::MissingSecWebSocketVersionHeader)) => {
                upgrade_required()
            }
            Err(e) => error(400, "Bad Request", &format!("not a WebSocket upgrade: {e}")),
        });
    }
    Some(match web::find(path) {
        Some(file) => ok(file),
        None => error(
            404,
            "Not Found",
            "no such page; WebSocket clients connect to /ws",
        ),
    })
}

/// The answer when the login timeout expires before the request head is complete.
pub fn request_timeout() -> Vec<u8> {
    match error(
        408,
        "Request Timeout",
        "no complete request within login_timeout",
    ) {
        Route::Answer { response, .. } | Route::Upgrade { response, .. } => response,
    }
}

/// The answer to a connection refused before the upgrade (`limits.max_connections`,
/// `max_pending_logins_per_ip`), naming the wire code SERVER_BUSY; `why` says which limit.
pub fn server_busy(why: &str) -> Vec<u8> {
    let body = format!("SERVER_BUSY: {why}; retry later");
    match error(503, "Service Unavailable", &body) {
        Route::Answer { response, .. } | Route::Upgrade { response, .. } => {
            let mut response = String::from_utf8_lossy(&response).into_owned();
            response = response.replacen("\r\n", "\r\nRetry-After: 1\r\n", 1);
            response.into_bytes()
        }
    }
}

/// The answer to plaintext HTTP on a TLS port (`wss://` only).
pub fn tls_required() -> Vec<u8> {
    match error(
        400,
        "Bad Request",
        "this port speaks TLS: connect with wss://",
    ) {
        Route::Answer { response, .. } | Route::Upgrade { response, .. } => response,
    }
}

fn error(status: u16, reason: &str, body: &str) -> Route {
    let body = format!("{status} {reason}: {body}\n");
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    Route::Answer {
        response: response.into_bytes(),
        status,
    }
}

fn upgrade_required() -> Route {
    let body = "426 Upgrade Required: WebSocket version 13 only\n";
    let response = format!(
        "HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    Route::Answer {
        response: response.into_bytes(),
        status: 426,
    }
}

fn ok(file: &web::File) -> Route {
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        file.content_type,
        file.body.len()
    )
    .into_bytes();
    response.extend_from_slice(file.body);
    Route::Answer {
        response,
        status: 200,
    }
}

/// Builds the client's upgrade request for `host` (as `host:port`) and `path`, with `origin`
/// if given. Returns the request bytes and the key whose accept value the response must carry.
pub fn client_request(
    host: &str,
    path: &str,
    origin: Option<&str>,
) -> Result<(Vec<u8>, String), String> {
    use tungstenite::client::IntoClientRequest;
    let url = format!("ws://{host}{path}");
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    if let Some(origin) = origin {
        let value = origin
            .parse()
            .map_err(|_| format!("`{origin}` is not a valid Origin header value"))?;
        request.headers_mut().insert("Origin", value);
    }
    tungstenite::handshake::client::generate_request(request).map_err(|e| e.to_string())
}

/// Checks the server's answer to [`client_request`]: `Ok(None)` while incomplete,
/// `Ok(Some(head_len))` for a valid `101` with the right `Sec-WebSocket-Accept` (the bytes
/// after `head_len` are WebSocket frames), Err with the reason otherwise.
pub fn check_client_response(buf: &[u8], key: &str) -> Result<Option<usize>, String> {
    use tungstenite::handshake::client::Response;
    let (head_len, response) = match Response::try_parse(buf) {
        Ok(Some(parsed)) => parsed,
        Ok(None) if buf.len() > MAX_REQUEST_HEAD => return Err("response head too long".into()),
        Ok(None) => return Ok(None),
        Err(e) => return Err(format!("bad upgrade response: {e}")),
    };
    if response.status() != 101 {
        return Err(format!("upgrade refused: HTTP {}", response.status()));
    }
    let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let accept = response.headers().get("Sec-WebSocket-Accept");
    if accept.is_none_or(|a| a.as_bytes() != expected.as_bytes()) {
        return Err("upgrade response has a wrong Sec-WebSocket-Accept".into());
    }
    Ok(Some(head_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> OriginPolicy {
        OriginPolicy::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn loopback_policy_allows_only_loopback_pages() {
        let p = policy(&["loopback"]);
        for ok in [
            "http://localhost",
            "http://localhost:3000",
            "https://127.0.0.1:7071",
            "http://[::1]:8080",
            "HTTP://LOCALHOST:1",
        ] {
            assert!(p.allows(ok), "{ok}");
        }
        for refused in [
            "http://evil.example",
            "http://localhost.evil.example",
            "http://127.0.0.2",
            "ftp://localhost",
            "null",
            "http://localhost/path",
            "",
        ] {
            assert!(!p.allows(refused), "{refused}");
        }
    }

    #[test]
    fn listed_and_any_policies() {
        let p = policy(&["https://chat.example.com", "null"]);
        assert!(p.allows("https://Chat.Example.com"));
        assert!(p.allows("null"));
        assert!(!p.allows("http://chat.example.com"));
        assert!(!p.allows("http://localhost"));
        assert!(policy(&["*"]).allows("http://anything.example:9"));
        assert!(!policy(&[]).allows("http://localhost"));
    }

    #[test]
    fn bad_entries_are_named() {
        for bad in [
            "chat.example.com",
            "https://x.example/path",
            "https://",
            "://x",
            // Found by the `ws_upgrade` fuzz target: accepted, but never allowed (`allows`
            // trims the header value, and browsers send visible ASCII only).
            "https://chat.example.com\t",
            "https://chat.example.com\u{b}",
            "https://chat.e\u{fffd}xample.com",
        ] {
            let e = OriginPolicy::parse(&[bad.to_string()]).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn upgrade(path: &str, extra: &str) -> Vec<u8> {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
        )
        .into_bytes()
    }

    fn status(r: Option<Route>) -> u16 {
        match r {
            Some(Route::Answer { status, .. }) => status,
            Some(Route::Upgrade { .. }) => 101,
            None => 0,
        }
    }

    #[test]
    fn routes() {
        let p = policy(&["loopback"]);
        let req = upgrade("/ws", "Origin: http://localhost:7071\r\n");
        match route(&req, &p) {
            Some(Route::Upgrade { response, head_len }) => {
                assert_eq!(head_len, req.len());
                let text = String::from_utf8(response).unwrap();
                assert!(text.starts_with("HTTP/1.1 101"), "{text}");
                // RFC 6455's example key and accept value.
                assert!(text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{text}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(status(route(&upgrade("/ws", ""), &p)), 101, "no Origin");
        let evil = upgrade("/ws", "Origin: http://evil.example\r\n");
        assert_eq!(status(route(&evil, &p)), 403);
        assert_eq!(status(route(&upgrade("/nope", ""), &p)), 404);
        assert_eq!(status(route(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &p)), 200);
        assert_eq!(
            status(route(b"POST /ws HTTP/1.1\r\nHost: x\r\n\r\n", &p)),
            405
        );
        let no_key = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n";
        assert_eq!(status(route(no_key, &p)), 400);
        let old = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        assert_eq!(status(route(old, &p)), 426);
        assert_eq!(status(route(b"\x16\x03\x01garbage\r\n\r\n", &p)), 400);
        assert_eq!(status(route(b"GET /ws HTTP/1.1\r\nHost:", &p)), 0);
        let long = vec![b'a'; MAX_REQUEST_HEAD + 1];
        assert_ne!(status(route(&long, &p)), 0);
    }

    #[test]
    fn client_request_and_response_check() {
        let (req, key) = client_request("127.0.0.1:7071", "/ws", Some("http://localhost")).unwrap();
        let p = policy(&["loopback"]);
        let Some(Route::Upgrade { response, .. }) = route(&req, &p) else {
            panic!("the broker's side refused our own request")
        };
        let mut with_frames = response.clone();
        with_frames.extend_from_slice(b"\x82\x00");
        assert_eq!(
            check_client_response(&with_frames, &key),
            Ok(Some(response.len()))
        );
        assert_eq!(check_client_response(&response[..10], &key), Ok(None));
        assert!(check_client_response(&response, "d3Jvbmcga2V5IGhlcmUhIQ==").is_err());
    }
}

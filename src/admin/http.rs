//! HTTP/1.1 glue over `httparse`: read one request within limits and a deadline, write one
//! response. Everything a client sends is bounded — header bytes ([`MAX_HEAD`]), header count
//! ([`MAX_HEADERS`]), the whole request (`[admin] max_request`) and its time
//! (`[admin] request_timeout`) — and anything else is an error that closes the connection.

use std::time::{Duration, Instant};

use futures_lite::future;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

/// Bytes of the request line and headers at most.
pub const MAX_HEAD: usize = 16 * 1024;
/// Headers per request at most.
pub const MAX_HEADERS: usize = 32;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 8 * 1024;

/// One parsed request.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path, still percent-encoded, without the query.
    pub path: String,
    pub query: Option<String>,
    /// (lower-case name, value) in order.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// The connection stays open after the response (HTTP/1.1 without `Connection: close`).
    pub keep_alive: bool,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// Why no request came through; each maps to the answer (if any) before closing.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The peer closed (or reset) between requests: close quietly.
    Closed,
    /// No request started within the keep-alive timeout: close quietly.
    Idle,
    /// The request did not arrive whole within `request_timeout`.
    Timeout,
    /// Not HTTP/1.x, or a malformed head.
    Malformed(String),
    HeadTooLarge,
    TooLarge {
        limit: usize,
    },
    /// `Transfer-Encoding` (chunked) request bodies are not accepted.
    LengthRequired,
}

/// Limits for reading one request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_request: usize,
    pub request_timeout: Duration,
    pub keepalive_timeout: Duration,
}

/// Reads one request from `stream`; `buf` carries bytes read past the previous request
/// (pipelining) and keeps those past this one.
pub async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    limits: Limits,
) -> Result<Request, ReadError> {
    // Waiting for a new request is the keep-alive timeout; once its first byte is here, the
    // whole request must arrive within the request timeout.
    let mut deadline = (!buf.is_empty()).then(|| Instant::now() + limits.request_timeout);
    loop {
        if !buf.is_empty() {
            if let Some(req) = parse(buf, limits.max_request)? {
                return Ok(req);
            }
        }
        let wait = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => limits.keepalive_timeout,
        };
        let n = read_some(stream, buf, wait).await;
        match n {
            Some(Ok(0)) | Some(Err(_)) => {
                return Err(if buf.is_empty() {
                    ReadError::Closed
                } else {
                    ReadError::Malformed("the connection closed mid-request".into())
                })
            }
            Some(Ok(_)) => {
                deadline.get_or_insert_with(|| Instant::now() + limits.request_timeout);
            }
            None if deadline.is_none() => return Err(ReadError::Idle),
            None => return Err(ReadError::Timeout),
        }
    }
}

/// One read into `buf`, or `None` after `wait`.
async fn read_some(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    wait: Duration,
) -> Option<std::io::Result<usize>> {
    let mut chunk = [0u8; READ_CHUNK];
    let read = async { Some(stream.read(&mut chunk).await) };
    let timeout = async {
        glommio::timer::sleep(wait).await;
        None
    };
    let r = future::or(read, timeout).await;
    if let Some(Ok(n)) = r {
        buf.extend_from_slice(&chunk[..n]);
    }
    r
}

/// A whole request at the front of `buf` (removed from it), `None` if more bytes are needed.
/// Public for the `admin_http` fuzz target, which feeds it arbitrary reads as
/// [`read_request`] does.
pub fn parse(buf: &mut Vec<u8>, max_request: usize) -> Result<Option<Request>, ReadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD {
                return Err(ReadError::HeadTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(ReadError::HeadTooLarge),
        Err(e) => return Err(ReadError::Malformed(e.to_string())),
    };
    if head_len > MAX_HEAD {
        return Err(ReadError::HeadTooLarge);
    }
    let version = req.version.unwrap_or(1);
    let method = req.method.unwrap_or("").to_string();
    let target = req.path.unwrap_or("/");
    // Only origin-form (`/path?query`) names a route: the router splits the path on `/` and
    // drops what comes before the first one, so `GET x/healthz` was served as `/healthz`.
    if !target.starts_with('/') {
        return Err(ReadError::Malformed(
            "the request target must be a path starting with `/`".into(),
        ));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let headers: Vec<(String, Vec<u8>)> = req
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect();
    let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    if find("transfer-encoding").is_some() {
        return Err(ReadError::LengthRequired);
    }
    let body_len = match find("content-length") {
        None => 0,
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .ok_or_else(|| ReadError::Malformed("Content-Length is not a number".into()))?,
    };
    if head_len.saturating_add(body_len) > max_request {
        return Err(ReadError::TooLarge { limit: max_request });
    }
    if buf.len() < head_len + body_len {
        return Ok(None);
    }
    let connection = find("connection")
        .map(|v| String::from_utf8_lossy(v).to_ascii_lowercase())
        .unwrap_or_default();
    let keep_alive = if version == 0 {
        connection.contains("keep-alive")
    } else {
        !connection.contains("close")
    };
    let body = buf[head_len..head_len + body_len].to_vec();
    buf.drain(..head_len + body_len);
    Ok(Some(Request {
        method,
        path,
        query,
        headers,
        body,
        keep_alive,
    }))
}

/// A response ready to write.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Extra headers (name, value).
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        let mut body = value.to_string().into_bytes();
        body.push(b'\n');
        Response::new(status, "application/json", body)
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// Writes `resp`; `keep_alive` says whether the connection stays open after it.
pub async fn write_response(
    stream: &mut TcpStream,
    resp: &Response,
    keep_alive: bool,
) -> std::io::Result<()> {
    stream.write_all(&encode_response(resp, keep_alive)).await?;
    stream.flush().await
}

/// The bytes [`write_response`] writes (public for the `admin_http` fuzz target).
pub fn encode_response(resp: &Response, keep_alive: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: {}\r\ncache-control: no-store\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len(),
        if keep_alive { "keep-alive" } else { "close" },
    )
    .into_bytes();
    for (name, value) in &resp.headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&resp.body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(text: &[u8], max: usize) -> Result<Option<Request>, ReadError> {
        parse(&mut text.to_vec(), max)
    }

    #[test]
    fn every_status_the_routes_answer_has_its_reason_phrase() {
        // The group and registration routes answer 409 and 422 too (GROUP_EXISTS, GROUP_FULL).
        for (status, phrase) in [(409, "Conflict"), (422, "Unprocessable Content")] {
            let out = encode_response(&Response::new(status, "application/json", "{}"), true);
            let head = String::from_utf8(out).unwrap();
            assert!(
                head.starts_with(&format!("HTTP/1.1 {status} {phrase}\r\n")),
                "{head}"
            );
        }
    }

    #[test]
    fn requests_parse_with_body_query_and_keep_alive() {
        let mut buf = b"POST /v1/messages?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}GET /healthz HTTP/1.0\r\n\r\n".to_vec();
        let r = parse(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.query.as_deref()),
            ("POST", "/v1/messages", Some("x=1"))
        );
        assert_eq!(r.body, b"{}");
        assert!(r.keep_alive);
        assert_eq!(r.header("host"), Some(&b"a"[..]));
        let r = parse(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(r.path, "/healthz");
        assert!(!r.keep_alive, "HTTP/1.0 closes by default");
        assert!(buf.is_empty());
    }

    /// Found by the admin_http fuzz target: `GET -/healthz` was answered as `/healthz`.
    #[test]
    fn targets_that_are_not_a_path_are_malformed() {
        for target in [
            "-/healthz",
            "healthz",
            "x/v1/users/alice",
            "*",
            "http://a/healthz",
        ] {
            let req = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
            assert!(
                matches!(
                    parse_all(req.as_bytes(), 1 << 20),
                    Err(ReadError::Malformed(_))
                ),
                "{target}"
            );
        }
        let r = parse_all(b"GET /healthz?x=/y HTTP/1.1\r\n\r\n", 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.path.as_str(), r.query.as_deref()),
            ("/healthz", Some("x=/y"))
        );
    }

    #[test]
    fn partial_requests_wait_and_bad_ones_are_named() {
        assert!(parse_all(b"GET / HTTP/1.1\r\nHost:", 1 << 20)
            .unwrap()
            .is_none());
        assert!(
            parse_all(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", 1 << 20)
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            parse_all(b"\x16\x03\x01garbage\r\n\r\n", 1 << 20),
            Err(ReadError::Malformed(_))
        ));
        assert_eq!(
            parse_all(b"POST / HTTP/1.1\r\nContent-Length: 999999\r\n\r\n", 4096).unwrap_err(),
            ReadError::TooLarge { limit: 4096 }
        );
        assert_eq!(
            parse_all(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                4096
            )
            .unwrap_err(),
            ReadError::LengthRequired
        );
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("h{i}: v\r\n"))
            .collect();
        assert_eq!(
            parse_all(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes(), 1 << 20).unwrap_err(),
            ReadError::HeadTooLarge
        );
        let long = vec![b'a'; MAX_HEAD + 1];
        assert_eq!(
            parse_all(&long, 1 << 20).unwrap_err(),
            ReadError::HeadTooLarge
        );
    }
}

//! The routes: operations endpoints (`/metrics`, `/healthz`, `/readyz`, open) and the server
//! API under `/v1` (bearer token), each answered in JSON. `src/admin/openapi.yaml` documents
//! every route; a test runs schemathesis against a live broker to keep the two in step.
//!
//! Errors are `{code, name, message}`. `code` is one of the wire protocol's stable codes
//! (`schema/ringpost.fbs`) where one fits — AUTH_FAILED (100) for a missing or wrong token,
//! INVALID_RECIPIENT (402), FRAME_TOO_LARGE (200) for a body over `limits.max_frame`, SHUTDOWN
//! (305) — and otherwise 1000 + the HTTP status (1400 BAD_REQUEST, 1404 NOT_FOUND, …), a range
//! the schema's codes (all below 1000) never reach.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::health::{Health, Phase};
use super::http::{Request, Response};
use super::shards::{CallError, Links};
use crate::config::Config;
use crate::metrics::exposition::{self, Scrape};
use crate::metrics::process::ProcessStats;
use crate::metrics::ShardMetrics;
use crate::protocol::{code_name, Code, MAX_DEVICE_ID, MAX_USER_ID};
use crate::shard::control::{Answer, Op, Publish, UserView};
use crate::shard::envelope::{GroupAnswer, GroupOpRequest};
use crate::shard::{group_owner, owner};

/// The OpenAPI 3 document of these routes, served at `GET /v1/openapi.yaml`.
pub const OPENAPI: &str = include_str!("openapi.yaml");
/// How long a publish may wait for its shard (the group commit included).
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long lookups and kicks may wait for their shard.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a scrape waits for the shards' gauges; a shard that is later is left out.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);

/// What every request handler shares.
pub struct Ctx {
    pub cfg: Arc<Config>,
    pub token: Vec<u8>,
    pub health: Arc<Health>,
    pub metrics: Arc<[Arc<ShardMetrics>]>,
    pub links: Rc<Links>,
    pub fds: Rc<FdCount>,
}

/// Open fds counted below this are counted during the scrape (well under a millisecond).
const FDS_COUNTED_INLINE: u64 = 4096;

/// `process_open_fds` without making a scrape wait: with many connections, counting
/// `/proc/self/fd` takes milliseconds (15 ms at 19,000), so a scrape reports the count taken
/// after the previous one and starts the next count on glommio's blocking pool.
#[derive(Default)]
pub struct FdCount {
    last: std::cell::Cell<Option<u64>>,
    counting: std::cell::Cell<bool>,
}

impl FdCount {
    fn current(self: &Rc<Self>) -> Option<u64> {
        match self.last.get() {
            None => {}
            Some(n) if n < FDS_COUNTED_INLINE => {}
            last => {
                if !self.counting.replace(true) {
                    let me = self.clone();
                    glommio::spawn_local(async move {
                        let n = glommio::executor()
                            .spawn_blocking(crate::metrics::process::open_fds)
                            .await;
                        me.last.set(n);
                        me.counting.set(false);
                    })
                    .detach();
                }
                return last;
            }
        }
        let n = crate::metrics::process::open_fds();
        self.last.set(n);
        n
    }
}

/// An error answer: a wire code where one fits, else 1000 + the HTTP status.
struct Fault {
    status: u16,
    code: Option<Code>,
    message: String,
}

impl Fault {
    fn http(status: u16, message: impl Into<String>) -> Fault {
        Fault {
            status,
            code: None,
            message: message.into(),
        }
    }

    fn wire(status: u16, code: Code, message: impl Into<String>) -> Fault {
        Fault {
            status,
            code: Some(code),
            message: message.into(),
        }
    }

    fn response(self) -> Response {
        let (code, name) = match self.code {
            Some(c) => (u32::from(c.0), code_name(c)),
            None => (1000 + u32::from(self.status), http_name(self.status)),
        };
        let resp = Response::json(
            self.status,
            &json!({"code": code, "name": name, "message": self.message}),
        );
        match self.status {
            401 => resp.with_header("www-authenticate", "Bearer realm=\"ringpost admin\""),
            _ => resp,
        }
    }
}

/// Names of the admin API's own error codes (1000 + HTTP status).
pub fn http_name(status: u16) -> &'static str {
    match status {
        400 => "BAD_REQUEST",
        404 => "NOT_FOUND",
        405 => "METHOD_NOT_ALLOWED",
        408 => "REQUEST_TIMEOUT",
        411 => "LENGTH_REQUIRED",
        413 => "CONTENT_TOO_LARGE",
        415 => "UNSUPPORTED_MEDIA_TYPE",
        431 => "HEADERS_TOO_LARGE",
        503 => "NOT_READY",
        504 => "TIMEOUT",
        _ => "ERROR",
    }
}

/// The error answer for a request that could not be read (before closing the connection).
pub fn read_error_response(status: u16, message: &str) -> Response {
    Fault::http(status, message).response()
}

/// Answers one request.
pub async fn handle(ctx: &Ctx, req: &Request) -> Response {
    match route(ctx, req).await {
        Ok(resp) => resp,
        Err(f) => f.response(),
    }
}

async fn route(ctx: &Ctx, req: &Request) -> Result<Response, Fault> {
    let segments: Vec<&str> = req.path.split('/').skip(1).collect();
    let method = req.method.as_str();
    let allow = |methods: &'static str| -> Result<Response, Fault> {
        Ok(Fault::http(
            405,
            format!("{method} is not allowed here; allowed: {methods}"),
        )
        .response()
        .with_header("allow", methods))
    };
    match segments.as_slice() {
        ["metrics"] => match method {
            "GET" => Ok(metrics(ctx).await),
            _ => allow("GET"),
        },
        ["healthz"] => match method {
            "GET" => Ok(Response::json(200, &json!({"status": "ok"}))),
            _ => allow("GET"),
        },
        ["readyz"] => match method {
            "GET" => Ok(readyz(&ctx.health)),
            _ => allow("GET"),
        },
        ["v1", rest @ ..] => {
            authorize(ctx, req)?;
            match (rest, method) {
                (["openapi.yaml"], "GET") => Ok(Response::new(200, "application/yaml", OPENAPI)),
                (["openapi.yaml"], _) => allow("GET"),
                (["messages"], "POST") => publish(ctx, req).await,
                (["messages"], _) => allow("POST"),
                (["users", id], "GET") => user(ctx, &decode_id(id)?).await,
                (["users", id], "PUT") => register(ctx, &decode_id(id)?).await,
                (["users", _], _) => allow("GET, PUT"),
                (["users", id, "sessions"], "DELETE") => kick(ctx, &decode_id(id)?, req).await,
                (["users", _, "sessions"], _) => allow("DELETE"),
                (["groups"], "POST") => group_create(ctx, req).await,
                (["groups"], _) => allow("POST"),
                (["groups", id], "GET") => group_info(ctx, &decode_group(id)?, req).await,
                (["groups", _], _) => allow("GET"),
                (["groups", id, "members"], "POST") => {
                    group_add(ctx, &decode_group(id)?, req).await
                }
                (["groups", _, "members"], _) => allow("POST"),
                (["groups", id, "members", user], "DELETE") => {
                    let (group, user) = (decode_group(id)?, decode_id(user)?);
                    group_op(
                        ctx,
                        &group,
                        GroupOpRequest::Remove {
                            members: vec![Arc::from(user)],
                        },
                    )
                    .await
                }
                (["groups", _, "members", _], _) => allow("DELETE"),
                _ => Err(Fault::http(404, format!("no route {}", req.path))),
            }
        }
        _ => Err(Fault::http(404, format!("no route {}", req.path))),
    }
}

/// `Authorization: Bearer <token>`, compared in constant time: missing → 401, wrong → 403.
fn authorize(ctx: &Ctx, req: &Request) -> Result<(), Fault> {
    let Some(value) = req.header("authorization") else {
        return Err(Fault::wire(
            401,
            Code::AUTH_FAILED,
            "missing `Authorization: Bearer <token>` (the token is in [admin] token_file)",
        ));
    };
    let given = match value.split_at_checked(7) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer ") => rest.trim_ascii(),
        _ => {
            return Err(Fault::wire(
                401,
                Code::AUTH_FAILED,
                "the Authorization header must be `Bearer <token>`",
            ))
        }
    };
    if bool::from(given.ct_eq(&ctx.token)) {
        Ok(())
    } else {
        Err(Fault::wire(403, Code::AUTH_FAILED, "wrong admin token"))
    }
}

fn readyz(health: &Health) -> Response {
    match health.phase() {
        Phase::Ready => Response::json(200, &json!({"status": "ready"})),
        Phase::Starting => Response::json(
            503,
            &json!({"status": "starting", "message": "recovering the logs and starting the shards"}),
        ),
        Phase::ShuttingDown => Response::json(
            503,
            &json!({"status": "shutting_down", "message": "a graceful shutdown is in progress"}),
        ),
    }
}

async fn metrics(ctx: &Ctx) -> Response {
    let answers = ctx.links.call_all(|_| Op::Gauges, SCRAPE_TIMEOUT).await;
    let gauges = answers
        .into_iter()
        .map(|a| match a {
            Ok(Answer::Gauges(g)) => Some(g),
            _ => None,
        })
        .collect();
    let text = exposition::render(Scrape {
        shards: ctx.metrics.clone(),
        gauges,
        process: ProcessStats {
            open_fds: ctx.fds.current(),
            ..ProcessStats::read_without_fds()
        },
        version: env!("CARGO_PKG_VERSION"),
    });
    Response::new(200, exposition::CONTENT_TYPE, text)
}

/// A user ID from a path segment, percent-decoded and checked.
fn decode_id(segment: &str) -> Result<String, Fault> {
    decode_segment("user ID", segment)
}

fn decode_group(segment: &str) -> Result<String, Fault> {
    decode_segment("group ID", segment)
}

/// A percent-decoded path segment naming a user or a group (`what`).
fn decode_segment(what: &str, segment: &str) -> Result<String, Fault> {
    let id = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| Fault::http(400, format!("the {what} is not UTF-8 once percent-decoded")))?;
    check_user_id(what, &id)?;
    Ok(id.into_owned())
}

fn check_user_id(what: &str, id: &str) -> Result<(), Fault> {
    if id.is_empty() || id.len() > MAX_USER_ID {
        return Err(Fault::http(
            400,
            format!("{what} must be 1..={MAX_USER_ID} bytes, got {}", id.len()),
        ));
    }
    Ok(())
}

fn call_fault(ctx: &Ctx, shard: usize, e: CallError) -> Fault {
    match e {
        CallError::NotConnected => Fault::http(
            503,
            format!("shard {shard} is not serving yet (the broker is starting)"),
        ),
        CallError::Gone => Fault::wire(503, Code::SHUTDOWN, "the broker is shutting down"),
        CallError::Busy => Fault::http(
            503,
            format!("shard {shard} has too many admin requests queued; retry"),
        ),
        CallError::Timeout if ctx.health.phase() == Phase::ShuttingDown => {
            Fault::wire(503, Code::SHUTDOWN, "the broker is shutting down")
        }
        CallError::Timeout => Fault::http(
            504,
            format!("shard {shard} did not answer in time; the outcome is unknown (a retry with the same client_msg_id is safe)"),
        ),
    }
}

fn unexpected(shard: usize) -> Fault {
    Fault::wire(
        500,
        Code::INTERNAL,
        format!("shard {shard} gave an answer of the wrong kind"),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    from: String,
    /// Exactly one of `to_user` and `to_group`.
    #[serde(default, deserialize_with = "present")]
    to_user: Option<String>,
    #[serde(default, deserialize_with = "present")]
    to_group: Option<String>,
    #[serde(default, deserialize_with = "present")]
    body: Option<String>,
    #[serde(default, deserialize_with = "present")]
    body_base64: Option<String>,
    client_msg_id: u64,
}

/// An optional field that, when present, must be a string (`null` is refused, as the
/// OpenAPI document says).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

/// `POST /v1/messages`: delivered exactly like a client's Send; answered once durable.
async fn publish(ctx: &Ctx, req: &Request) -> Result<Response, Fault> {
    let p: PublishRequest = serde_json::from_slice(&req.body)
        .map_err(|e| Fault::http(400, format!("the body is not a valid message: {e}")))?;
    check_user_id("`from`", &p.from)?;
    let target = match (p.to_user, p.to_group) {
        (Some(user), None) => {
            if user.is_empty() || user.len() > MAX_USER_ID || crate::auth::is_reserved(&user) {
                return Err(Fault::wire(
                    400,
                    Code::INVALID_RECIPIENT,
                    format!(
                        "`to_user` must be 1..={MAX_USER_ID} bytes and not start with `{}`",
                        crate::auth::RESERVED_PREFIX
                    ),
                ));
            }
            Ok(user)
        }
        (None, Some(group)) => {
            check_group_id(&group)?;
            Err(group)
        }
        _ => {
            return Err(Fault::http(
                400,
                "give exactly one of `to_user` and `to_group`",
            ))
        }
    };
    let body = match (p.body, p.body_base64) {
        (Some(text), None) => text.into_bytes(),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| Fault::http(400, format!("`body_base64` is not base64: {e}")))?,
        _ => {
            return Err(Fault::http(
                400,
                "give exactly one of `body` (UTF-8 text) and `body_base64` (bytes)",
            ))
        }
    };
    let max = ctx.cfg.limits.max_frame;
    if body.len() > max {
        return Err(Fault::wire(
            413,
            Code::FRAME_TOO_LARGE,
            format!(
                "the body is {} bytes; limits.max_frame is {max}",
                body.len()
            ),
        ));
    }
    let (shard, op) = match target {
        Ok(user) => (
            owner(&user, ctx.links.count()),
            Op::Publish(Publish {
                from: p.from,
                to: user,
                client_msg_id: p.client_msg_id,
                body,
            }),
        ),
        Err(group) => (
            group_owner(&group, ctx.links.count()),
            Op::GroupPublish(Publish {
                from: p.from,
                to: group,
                client_msg_id: p.client_msg_id,
                body,
            }),
        ),
    };
    match ctx.links.call(shard, op, PUBLISH_TIMEOUT).await {
        Ok(Answer::Published { status, seq }) => {
            let mut v = json!({"status": code_name(status), "code": status.0});
            if let Some(seq) = seq {
                v["seq"] = json!(seq);
            }
            Ok(Response::json(publish_status(status), &v))
        }
        Ok(_) => Err(unexpected(shard)),
        Err(e) => Err(call_fault(ctx, shard, e)),
    }
}

/// The HTTP status of a publish's outcome.
fn publish_status(status: Code) -> u16 {
    match status {
        Code::OK => 200,
        Code::INVALID_RECIPIENT | Code::INVALID_GROUP => 400,
        Code::USER_UNKNOWN => 404,
        Code::GROUP_NOT_FOUND => 404,
        Code::INBOX_FULL | Code::RATE_LIMITED => 429,
        Code::STORAGE_UNAVAILABLE | Code::SHUTDOWN => 503,
        _ => 500,
    }
}

/// `GET /v1/users/{id}`.
async fn user(ctx: &Ctx, id: &str) -> Result<Response, Fault> {
    let shard = owner(id, ctx.links.count());
    let view = match ctx
        .links
        .call(shard, Op::User(id.to_owned()), CALL_TIMEOUT)
        .await
    {
        Ok(Answer::User(v)) => v,
        Ok(_) => return Err(unexpected(shard)),
        Err(e) => return Err(call_fault(ctx, shard, e)),
    };
    Ok(Response::json(200, &user_json(id, shard, &view)))
}

/// `PUT /v1/users/{id}`: the user is known from now on (`limits.recipients = "known"`), as
/// if they had logged in once; answered once that is durable. Idempotent.
async fn register(ctx: &Ctx, id: &str) -> Result<Response, Fault> {
    if crate::auth::is_reserved(id) {
        return Err(Fault::wire(
            400,
            Code::INVALID_RECIPIENT,
            format!(
                "user IDs starting with `{}` are the server API's senders",
                crate::auth::RESERVED_PREFIX
            ),
        ));
    }
    let shard = owner(id, ctx.links.count());
    match ctx
        .links
        .call(shard, Op::Register(id.to_owned()), PUBLISH_TIMEOUT)
        .await
    {
        Ok(Answer::Published {
            status: Code::OK, ..
        }) => Ok(Response::json(200, &json!({"user_id": id, "known": true}))),
        Ok(Answer::Published { status, .. }) => Err(Fault::wire(
            publish_status(status),
            status,
            "the registration could not be made durable",
        )),
        Ok(_) => Err(unexpected(shard)),
        Err(e) => Err(call_fault(ctx, shard, e)),
    }
}

fn user_json(id: &str, shard: usize, v: &UserView) -> Value {
    let devices: Vec<Value> = v
        .devices
        .iter()
        .map(|d| {
            json!({
                "device_id": d.device_id,
                "transport": d.transport,
                "shard": d.shard,
                "connected_since_ms": d.connected_at_ms,
                "last_acked_seq": d.last_acked_seq,
                "sent_seq": d.sent_seq,
            })
        })
        .collect();
    let cursors: serde_json::Map<String, Value> = v
        .cursors
        .iter()
        .map(|(d, s)| (d.clone(), json!(s)))
        .collect();
    json!({
        "user_id": id,
        "shard": shard,
        "head_seq": v.head_seq,
        "durable_seq": v.durable_seq,
        "oldest_seq": v.oldest_seq,
        "online": !v.devices.is_empty(),
        "known": v.known,
        "devices": devices,
        "cursors": cursors,
    })
}

/// `DELETE /v1/users/{id}/sessions[?device=D]`.
async fn kick(ctx: &Ctx, id: &str, req: &Request) -> Result<Response, Fault> {
    let mut device = None;
    for (k, v) in form_urlencoded::parse(req.query.as_deref().unwrap_or("").as_bytes()) {
        match &*k {
            "device" if v.len() <= MAX_DEVICE_ID => device = Some(v.into_owned()),
            "device" => {
                return Err(Fault::http(
                    400,
                    format!("`device` must be at most {MAX_DEVICE_ID} bytes"),
                ))
            }
            other => {
                return Err(Fault::http(
                    400,
                    format!("unknown query parameter `{other}`"),
                ))
            }
        }
    }
    let shard = owner(id, ctx.links.count());
    let op = Op::Kick {
        user: id.to_owned(),
        device: device.clone(),
    };
    match ctx.links.call(shard, op, CALL_TIMEOUT).await {
        Ok(Answer::Kicked { sessions }) => Ok(Response::json(
            200,
            &json!({"user_id": id, "device": device, "kicked": sessions}),
        )),
        Ok(_) => Err(unexpected(shard)),
        Err(e) => Err(call_fault(ctx, shard, e)),
    }
}

// ---- groups ------------------------------------------------------------------------------

fn check_group_id(id: &str) -> Result<(), Fault> {
    if id.is_empty() || id.len() > MAX_USER_ID {
        return Err(Fault::wire(
            400,
            Code::INVALID_GROUP,
            format!(
                "a group ID must be 1..={MAX_USER_ID} bytes, got {}",
                id.len()
            ),
        ));
    }
    Ok(())
}

/// Member IDs from a request, checked, sorted and without repeats.
fn member_ids(members: Vec<String>) -> Result<Vec<Arc<str>>, Fault> {
    let mut out = Vec::with_capacity(members.len());
    for m in members {
        if m.is_empty() || m.len() > MAX_USER_ID || crate::auth::is_reserved(&m) {
            return Err(Fault::wire(
                400,
                Code::INVALID_GROUP,
                format!(
                    "member IDs must be 1..={MAX_USER_ID} bytes and not start with `{}`",
                    crate::auth::RESERVED_PREFIX
                ),
            ));
        }
        out.push(Arc::from(m));
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateGroup {
    group_id: String,
    /// The group's first admin (and member), as if they had created it.
    creator: String,
    #[serde(default)]
    members: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddMembers {
    members: Vec<String>,
}

/// `POST /v1/groups`: creates a group on behalf of `creator`.
async fn group_create(ctx: &Ctx, req: &Request) -> Result<Response, Fault> {
    let c: CreateGroup = serde_json::from_slice(&req.body)
        .map_err(|e| Fault::http(400, format!("the body is not a valid group: {e}")))?;
    check_group_id(&c.group_id)?;
    let creator = member_ids(vec![c.creator.clone()])?;
    let members = member_ids(c.members)?;
    let op = GroupOpRequest::Create { members };
    group_call(ctx, &c.group_id, &creator[0], op).await
}

/// `POST /v1/groups/{id}/members`.
async fn group_add(ctx: &Ctx, group: &str, req: &Request) -> Result<Response, Fault> {
    let a: AddMembers = serde_json::from_slice(&req.body)
        .map_err(|e| Fault::http(400, format!("the body is not a valid member list: {e}")))?;
    let members = member_ids(a.members)?;
    if members.is_empty() {
        return Err(Fault::http(400, "`members` is empty"));
    }
    group_op(ctx, group, GroupOpRequest::Add { members }).await
}

/// `GET /v1/groups/{id}?after=&limit=`.
async fn group_info(ctx: &Ctx, group: &str, req: &Request) -> Result<Response, Fault> {
    let (mut after, mut limit) = (String::new(), 0u32);
    for (k, v) in form_urlencoded::parse(req.query.as_deref().unwrap_or("").as_bytes()) {
        match &*k {
            "after" if v.len() <= MAX_USER_ID => after = v.into_owned(),
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=crate::shard::groups::INFO_PAGE).contains(n))
                    .ok_or_else(|| {
                        Fault::http(
                            400,
                            format!("`limit` must be 1..={}", crate::shard::groups::INFO_PAGE),
                        )
                    })?
            }
            "after" => {
                return Err(Fault::http(
                    400,
                    format!("`after` must be at most {MAX_USER_ID} bytes"),
                ))
            }
            other => {
                return Err(Fault::http(
                    400,
                    format!("unknown query parameter `{other}`"),
                ))
            }
        }
    }
    let op = GroupOpRequest::Info {
        after: after.into(),
        limit,
    };
    group_op(ctx, group, op).await
}

/// A group operation of the app backend (privileged: no member or admin check).
async fn group_op(ctx: &Ctx, group: &str, op: GroupOpRequest) -> Result<Response, Fault> {
    check_group_id(group)?;
    group_call(ctx, group, crate::auth::RESERVED_ADMIN_ACTOR, op).await
}

async fn group_call(
    ctx: &Ctx,
    group: &str,
    actor: &str,
    op: GroupOpRequest,
) -> Result<Response, Fault> {
    let info = matches!(op, GroupOpRequest::Info { .. });
    let shard = group_owner(group, ctx.links.count());
    let call = Op::Group {
        actor: actor.to_owned(),
        group: group.to_owned(),
        op,
    };
    match ctx.links.call(shard, call, PUBLISH_TIMEOUT).await {
        Ok(Answer::Group(a)) if a.status == Code::OK => {
            Ok(Response::json(200, &group_json(&a, info)))
        }
        Ok(Answer::Group(a)) => Err(Fault::wire(group_status(a.status), a.status, &*a.message)),
        Ok(_) => Err(unexpected(shard)),
        Err(e) => Err(call_fault(ctx, shard, e)),
    }
}

fn group_json(a: &GroupAnswer, info: bool) -> Value {
    let mut v = json!({"group_id": &*a.group, "group_seq": a.group_seq});
    if info {
        let members: Vec<Value> = a
            .members
            .iter()
            .map(|(u, admin)| json!({"user_id": &**u, "admin": admin}))
            .collect();
        v["members"] = json!(members);
        v["member_count"] = json!(a.member_count);
        // Null on the last page; otherwise the `after` of the next one.
        v["next_after"] = match &*a.next_after {
            "" => Value::Null,
            after => json!(after),
        };
    }
    v
}

/// The HTTP status of a group operation's outcome.
fn group_status(status: Code) -> u16 {
    match status {
        Code::INVALID_GROUP => 400,
        Code::GROUP_NOT_FOUND => 404,
        Code::GROUP_EXISTS | Code::ALREADY_A_MEMBER | Code::NOT_A_MEMBER => 409,
        Code::GROUP_FULL | Code::TOO_MANY_GROUPS | Code::USER_UNKNOWN => 422,
        Code::STORAGE_UNAVAILABLE | Code::SHUTDOWN => 503,
        _ => 500,
    }
}

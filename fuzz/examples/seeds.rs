//! Writes the seed corpora under `fuzz/corpus/<target>/` from the real codec, config, log and
//! WebSocket code, and requests as the admin API's clients send them, in each target's input format (see the targets' docs). Deterministic:
//! rerunning it rewrites the same files. `make fuzz-seeds` runs it.
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds
//! ```

use std::path::{Path, PathBuf};

use bytes::Bytes;
use ringpost::config::Config;
use ringpost::log::record::{
    AnchorRecord, CursorRecord, FanoutRecord, GroupRecord, GroupSnapshotRecord, MessageRecord,
    OutgoingRecord, Record, NO_POSITION,
};
use ringpost::log::Log;
use ringpost::protocol::{
    encode_client, encode_raw_union, encode_server, ClientMsg, Code, Deliver, EntryKind, FrameHead,
    GroupOp, GroupReply, Members, Names, ServerMsg, LEN_PREFIX,
};
use ringpost::wire::upgrade::{client_request, route, OriginPolicy, Route};
use ringpost::wire::ws::{self, WsHead};
use ringpost_fuzz::input::Cuts;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};

struct Corpus {
    dir: PathBuf,
}

impl Corpus {
    fn new(root: &Path, target: &str) -> Corpus {
        let dir = root.join(target);
        // Seeds are regenerated whole: stale ones from an older format must not linger.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create corpus dir");
        Corpus { dir }
    }

    fn put(&mut self, name: &str, bytes: &[u8]) {
        std::fs::write(self.dir.join(name), bytes).expect("write seed");
    }
}

/// `flags | cuts | bytes`, the stream targets' input format.
fn stream_seed(flags: u8, cuts: &[u16], bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![flags];
    v.extend_from_slice(&Cuts::encode(cuts));
    v.extend_from_slice(bytes);
    v
}

const MEMBERS: &[&str] = &["alice", "bob"];

fn clients() -> Vec<(&'static str, ClientMsg<'static>)> {
    let members = Names::Slice(MEMBERS);
    let group = |request_id, op| ClientMsg::Group {
        request_id,
        group_id: "g1",
        op,
    };
    vec![
        (
            "login",
            ClientMsg::Login {
                token: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln",
                device_id: "phone-1",
                last_seq: 42,
            },
        ),
        (
            "send",
            ClientMsg::Send {
                client_msg_id: 7,
                to_user: "bob",
                body: b"hello bob",
            },
        ),
        ("ack", ClientMsg::Ack { up_to_seq: 9 }),
        ("ping", ClientMsg::Ping { nonce: u64::MAX }),
        ("logout", ClientMsg::Logout),
        ("group_create", group(1, GroupOp::Create { members })),
        ("group_add", group(2, GroupOp::Add { members })),
        ("group_remove", group(3, GroupOp::Remove { members })),
        ("group_leave", group(4, GroupOp::Leave)),
        (
            "group_info",
            group(
                5,
                GroupOp::Info {
                    after: "alice",
                    limit: 50,
                },
            ),
        ),
        ("group_list", ClientMsg::GroupList { request_id: 6 }),
        (
            "group_send",
            ClientMsg::GroupSend {
                client_msg_id: 8,
                group_id: "g1",
                body: b"hello group",
            },
        ),
    ]
}

fn servers() -> Vec<(&'static str, ServerMsg<'static>)> {
    const ADDED: &[&str] = &["carol"];
    const GROUPS: &[&str] = &["g1", "g2"];
    const ROLES: &[(&str, bool)] = &[("alice", true), ("bob", false)];
    vec![
        (
            "login_ok",
            ServerMsg::LoginOk {
                user_id: "alice",
                shard: 1,
                head_seq: 10,
                heartbeat_ms: 30_000,
                oldest_seq: 2,
                gap: true,
            },
        ),
        (
            "send_ack",
            ServerMsg::SendAck {
                client_msg_id: 7,
                status: Code::OK,
                own_seq: 3,
            },
        ),
        (
            "deliver",
            ServerMsg::Deliver(Deliver::message(11, "bob", 7, 1_700_000_000_000, b"hi")),
        ),
        (
            "deliver_outgoing",
            ServerMsg::Deliver(Deliver {
                outgoing: true,
                to_user: "bob",
                ..Deliver::message(12, "alice", 8, 1_700_000_000_001, b"sent")
            }),
        ),
        (
            "deliver_group_added",
            ServerMsg::Deliver(Deliver {
                group_id: "g1",
                group_seq: 3,
                kind: EntryKind::MembersAdded,
                members: Names::Slice(ADDED),
                ..Deliver::message(13, "alice", 0, 1_700_000_000_002, b"")
            }),
        ),
        ("pong", ServerMsg::Pong { nonce: 5 }),
        (
            "error",
            ServerMsg::Error {
                code: Code::MALFORMED_FRAME,
                message: "malformed frame: missing frame body",
            },
        ),
        (
            "go_away",
            ServerMsg::GoAway {
                code: Code::SHUTDOWN,
                reason: "shutting down",
            },
        ),
        (
            "group_reply_list",
            ServerMsg::GroupReply(GroupReply {
                groups: Names::Slice(GROUPS),
                ..GroupReply::status(6, "", Code::OK, "")
            }),
        ),
        (
            "group_reply_info",
            ServerMsg::GroupReply(GroupReply {
                members: Members::Slice(ROLES),
                next_after: "bob",
                member_count: 2,
                group_seq: 4,
                ..GroupReply::status(5, "g1", Code::OK, "")
            }),
        ),
    ]
}

/// A frame's payload (what follows the length prefix).
fn payload(frame: &[u8]) -> &[u8] {
    &frame[LEN_PREFIX..]
}

fn client_frame(msg: &ClientMsg<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_client(msg, &mut out);
    out
}

fn server_frame(msg: &ServerMsg<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_server(msg, &mut out);
    out
}

fn codec_seeds(root: &Path) {
    let mut c = Corpus::new(root, "client_frame");
    for (name, msg) in clients() {
        c.put(name, payload(&client_frame(&msg)));
    }
    // Tags without a body table of their own: none, a known one without its required
    // fields, a server-only one, one this build does not know.
    for tag in [0u8, 1, 6, 200] {
        let mut out = Vec::new();
        encode_raw_union(tag, &mut out);
        c.put(&format!("raw_union_{tag}"), payload(&out));
    }
    // A whole prefixed frame, for the `check` half of the target.
    c.put(
        "prefixed_ping",
        &client_frame(&ClientMsg::Ping { nonce: 1 }),
    );

    let mut s = Corpus::new(root, "server_frame");
    for (name, msg) in servers() {
        s.put(name, payload(&server_frame(&msg)));
    }
}

fn reader_seeds(root: &Path) {
    let mut c = Corpus::new(root, "frame_reader");
    let mut all = Vec::new();
    for (_, msg) in clients() {
        all.extend(client_frame(&msg));
    }
    let cuts = [3, 50, 51, 140, 400];
    c.put("all_frames", &stream_seed(0x02, &cuts, &all));
    c.put(
        "all_frames_spare_stop3",
        &stream_seed(0x22 | (3 << 2), &cuts, &all),
    );
    c.put("all_frames_small_limit", &stream_seed(0x01, &cuts, &all));
    let ping = client_frame(&ClientMsg::Ping { nonce: 9 });
    let mut partial = ping.clone();
    partial.extend_from_slice(&ping[..6]);
    let mut byte_by_byte = vec![0x02, 0x10];
    byte_by_byte.extend_from_slice(&partial);
    c.put("ping_and_partial_byte_by_byte", &byte_by_byte);
    let mut oversized = ping.clone();
    oversized.extend_from_slice(&(1u32 << 30).to_le_bytes());
    c.put("oversized_prefix", &stream_seed(0x02, &cuts, &oversized));
    let mut empty = ping;
    empty.extend_from_slice(&[0, 0, 0, 0]);
    c.put("zero_prefix", &stream_seed(0x02, &cuts, &empty));
}

fn config_seeds(root: &Path) {
    let mut c = Corpus::new(root, "config");
    c.put("default.toml", Config::DEFAULT_TOML.as_bytes());
    c.put("empty.toml", b"");
    c.put(
        "small.toml",
        b"[server]\nlisten = \"0.0.0.0:7070\"\nshards = 2\ncpus = [0, 1]\nws_listen = \"\"\n\n[storage]\ndata_dir = \"/var/lib/ringpost\"\nsegment_size = \"64MiB\"\nfsync = \"interval\"\nfsync_interval = \"10ms\"\n",
    );
    c.put(
        "limits.toml",
        b"[limits]\nmax_frame = \"64KiB\"\nlogin_timeout = \"500ms\"\nidle_timeout = \"2min\"\nsends_per_sec = 100\nmax_outbound = 1048576\n[auth]\nleeway = \"0s\"\n",
    );
    c.put(
        "origins.toml",
        b"[server]\nws_listen = \"[::1]:7071\"\nws_allowed_origins = [\"loopback\", \"https://Chat.Example.com:8443\", \"null\"]\n",
    );
    c.put("unknown_key.toml", b"[server]\nlistn = \"127.0.0.1:1\"\n");
    c.put(
        "bad_value.toml",
        b"[storage]\nsegment_size = \"12 parsecs\"\n",
    );
    c.put("not_a_table.toml", b"server = 1\n");
}

/// One record of every kind, as a shard writes them.
fn records() -> Vec<Record> {
    let group = |group_seq, kind: EntryKind, members: &[&str], body: &[u8]| {
        Record::Group(GroupRecord {
            group: "g1".into(),
            group_seq,
            kind: kind.0,
            from: "alice".into(),
            client_msg_id: group_seq,
            sent_at_ms: 1_700_000_000_000 + group_seq,
            body: body.to_vec(),
            members: members.iter().map(|m| m.to_string()).collect(),
        })
    };
    vec![
        Record::Message(MessageRecord {
            to: "bob".into(),
            seq: 1,
            from: "alice".into(),
            client_msg_id: 1,
            sent_at_ms: 1_700_000_000_000,
            body: b"hello bob".to_vec(),
            prev: NO_POSITION,
        }),
        Record::Outgoing(OutgoingRecord {
            user: "alice".into(),
            seq: 1,
            to: "bob".into(),
            client_msg_id: 1,
            sent_at_ms: 1_700_000_000_000,
            body: b"hello bob".to_vec(),
        }),
        Record::Cursor(CursorRecord {
            user: "bob".into(),
            device: "phone".into(),
            acked: 1,
            at_ms: 1_700_000_000_001,
        }),
        group(1, EntryKind::GroupCreated, &["alice", "bob", "carol"], b""),
        group(2, EntryKind::Message, &[], b"hello group"),
        group(3, EntryKind::MembersRemoved, &["carol"], b""),
        Record::Fanout(FanoutRecord {
            group: "g1".into(),
            shard: 1,
            applied: 2,
            at_ms: 1_700_000_000_002,
        }),
        Record::GroupSnapshot(GroupSnapshotRecord {
            group: "g1".into(),
            group_seq: 3,
            owned: true,
            members: vec![("alice".into(), true), ("bob".into(), false)],
            fanout: vec![(1, 2)],
            at_ms: 1_700_000_000_003,
        }),
        Record::Anchor(AnchorRecord {
            heads: vec![("alice".into(), 4), ("bob".into(), 3)],
            cursors: vec![("bob".into(), "phone".into(), 1)],
            at_ms: 1_700_000_000_004,
        }),
    ]
}

/// The segment files of a real log written by `Log` with 4 KiB segments (`rounds` times every
/// record kind), each cut to its used bytes (the target pads sealed ones back to 4 KiB).
fn real_segments(rounds: usize) -> Vec<Vec<u8>> {
    const SEGMENT: u64 = 4096;
    let dir = std::env::temp_dir().join(format!("ringpost-seeds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut log, _) = Log::open(&dir, SEGMENT as usize, |_, _| {}).expect("open a fresh log");
    let mut used = vec![0u64; 1];
    for _ in 0..rounds {
        for r in records() {
            let pos = log.append(&r).expect("append");
            let seg = (pos / SEGMENT) as usize;
            used.resize(used.len().max(seg + 1), 0);
            used[seg] = log.head_position() - seg as u64 * SEGMENT;
        }
    }
    log.sync().expect("sync");
    drop(log);
    let out = used
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let path = dir.join(ringpost::log::segment::file_name(i as u64 * SEGMENT));
            let bytes = std::fs::read(path).expect("read segment");
            bytes[..n as usize].to_vec()
        })
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// The log target's raw-mode input: `flags | shard | (len: u16 | bytes)* | 0 [| marker]`.
fn raw_log(flags: u8, segments: &[Vec<u8>], marker: Option<&[u8]>) -> Vec<u8> {
    let mut v = vec![flags, 0];
    for s in segments {
        v.extend_from_slice(&(s.len() as u16).to_le_bytes());
        v.extend_from_slice(s);
    }
    if segments.len() < 4 {
        v.extend_from_slice(&0u16.to_le_bytes());
    }
    if let Some(m) = marker {
        v.push(m.len() as u8);
        v.extend_from_slice(m);
    }
    v
}

fn log_seeds(root: &Path) {
    let mut c = Corpus::new(root, "log_recovery");
    let one = real_segments(1);
    let rolled = real_segments(7);
    assert!(rolled.len() >= 2, "seven rounds roll a 4 KiB segment");
    c.put("one_segment", &raw_log(0x00, &one, None));
    c.put("one_segment_two_shards", &raw_log(0x08, &one, None));
    c.put("one_segment_fix_crc", &raw_log(0x80, &one, None));
    c.put("one_segment_short", &raw_log(0x40, &one, None));
    c.put("one_segment_poisoned", &raw_log(0x20, &one, Some(b"128\n")));
    c.put(
        "rolled_segments_two_shards",
        &raw_log(0x08, &rolled[..rolled.len().min(4)], None),
    );
    let mut torn = one[0].clone();
    let at = torn.len() / 2;
    torn[at..].fill(0);
    c.put("torn_tail", &raw_log(0x00, &[torn], None));
    // Structured mode: any bytes are a recipe (records, a tear, flips).
    c.put(
        "structured_a",
        &[0x01, 0, 9, 3, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
    );
    c.put(
        "structured_b",
        &[
            0x19, 1, 20, 6, 6, 6, 5, 4, 3, 2, 1, 0, 255, 128, 64, 32, 16, 8, 4, 2, 1, 0, 7,
        ],
    );
}

const SAMPLE_KEY_REQUEST: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

fn upgrade_seeds(root: &Path) {
    let mut c = Corpus::new(root, "ws_upgrade");
    let cuts = [5, 18, 40, 90];
    let (req, _) = client_request("127.0.0.1:7071", "/ws", Some("http://localhost:7071"))
        .expect("our own request");
    c.put("upgrade_loopback_origin", &stream_seed(0x01, &cuts, &req));
    c.put("upgrade_any_policy", &stream_seed(0x00, &cuts, &req));
    let (bare, _) = client_request("127.0.0.1:7071", "/ws", None).expect("our own request");
    c.put("upgrade_no_origin", &stream_seed(0x01, &cuts, &bare));
    let browser = b"GET /ws HTTP/1.1\r\nHost: chat.example.com\r\nUser-Agent: Mozilla/5.0\r\nAccept: */*\r\nAccept-Language: en\r\nSec-WebSocket-Version: 13\r\nOrigin: https://chat.example.com\r\nSec-WebSocket-Extensions: permessage-deflate\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nConnection: keep-alive, Upgrade\r\nPragma: no-cache\r\nUpgrade: websocket\r\n\r\n";
    c.put("upgrade_browser_listed", &stream_seed(0x02, &cuts, browser));
    c.put(
        "upgrade_browser_refused",
        &stream_seed(0x01, &cuts, browser),
    );
    let answers: &[(&str, &[u8])] = &[
        ("chat_page", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("not_found", b"GET /nope?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("post", b"POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
        ("http_1_0", b"GET /ws HTTP/1.0\r\n\r\n"),
        ("old_version", b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"),
        ("tls_hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
    ];
    for (name, bytes) in answers {
        c.put(name, &stream_seed(0x01, &cuts, bytes));
    }
    c.put(
        "client_fields",
        &stream_seed(0x04, &[], b"127.0.0.1:7071\n/ws\nhttp://localhost"),
    );
    c.put(
        "origin_entries",
        &stream_seed(0x08, &[], b"loopback\nhttps://chat.example.com\nnull"),
    );
    // Mode 3 checks answers against the sample key, so answer a request with that key.
    let Some(Route::Upgrade { response, .. }) = route(SAMPLE_KEY_REQUEST, &OriginPolicy::Any)
    else {
        panic!("the sample request is not upgraded");
    };
    let mut with_frames = response;
    with_frames.extend_from_slice(b"\x82\x00");
    c.put("response_101", &stream_seed(0x0c, &[], &with_frames));
    c.put(
        "response_403",
        &stream_seed(
            0x0c,
            &[],
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
        ),
    );
}

/// A client's frame, masked with a fixed key (seeds are deterministic).
fn masked(opcode: OpCode, fin: bool, payload: &[u8], out: &mut Vec<u8>) {
    let header = FrameHeader {
        is_final: fin,
        opcode,
        mask: Some([0x37, 0xfa, 0x21, 0x3d]),
        ..FrameHeader::default()
    };
    Frame::from_payload(header, Bytes::copy_from_slice(payload))
        .format(out)
        .expect("format into a Vec");
}

fn frame_seeds(root: &Path) {
    const BIN: OpCode = OpCode::Data(Data::Binary);
    const CONT: OpCode = OpCode::Data(Data::Continue);
    let mut c = Corpus::new(root, "ws_frames");
    let cuts = [1, 2, 7, 30, 31, 200];
    let login = client_frame(&clients()[0].1);
    let send = client_frame(&clients()[1].1);
    let mut client = Vec::new();
    masked(BIN, true, payload(&login), &mut client);
    masked(OpCode::Control(Control::Ping), true, b"hb", &mut client);
    masked(BIN, false, &payload(&send)[..10], &mut client);
    masked(OpCode::Control(Control::Pong), true, b"", &mut client);
    masked(CONT, true, &payload(&send)[10..], &mut client);
    masked(BIN, true, &[0x5a; 300], &mut client);
    masked(
        OpCode::Control(Control::Close),
        true,
        &1000u16.to_be_bytes(),
        &mut client,
    );
    c.put(
        "client_login_fragments_controls",
        &stream_seed(0x02, &cuts, &client),
    );
    c.put(
        "client_spare_small_limit",
        &stream_seed(0x10, &cuts, &client),
    );
    let mut text = Vec::new();
    masked(OpCode::Data(Data::Text), true, b"hello", &mut text);
    c.put("client_text", &stream_seed(0x02, &cuts, &text));
    let mut server = Vec::new();
    for (_, msg) in servers() {
        let frame = server_frame(&msg);
        WsHead.write_head(frame.len() - LEN_PREFIX, &mut server);
        server.extend_from_slice(payload(&frame));
    }
    ws::write_pong(b"hb", &mut server);
    ws::write_close(ws::close::GOING_AWAY, "SHUTDOWN", &mut server);
    c.put("server_frames", &stream_seed(0x03, &cuts, &server));
    // Built mode: any bytes are a recipe (messages, fragments, control frames).
    c.put(
        "built_client_frames",
        &stream_seed(
            0x0a,
            &cuts,
            &[3, 1, 0, 200, 7, 7, 7, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        ),
    );
    c.put(
        "built_server_frames",
        &stream_seed(
            0x0b,
            &cuts,
            &[5, 0, 1, 100, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2],
        ),
    );
}

/// A request as the admin API's clients send it (tests/admin_scenario.rs, the app backend).
fn admin_request(method: &str, path: &str, token: bool, body: Option<&str>) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: ringpost\r\n");
    if token {
        head += "Authorization: Bearer fuzz-admin-token\r\n";
    }
    if let Some(b) = body {
        head += &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        );
    }
    head += "\r\n";
    let mut out = head.into_bytes();
    out.extend_from_slice(body.unwrap_or_default().as_bytes());
    out
}

/// Seeds for `admin_http`: `flags | cuts | request bytes` (flags: max_request, phase, close).
fn admin_seeds(root: &Path) {
    let mut c = Corpus::new(root, "admin_http");
    let cuts = [3, 17, 40, 100];
    // Phase "ready" (flags 0x04), the default max_request, the peer closes after its bytes.
    let ready = 0x14;
    let requests: &[(&str, &str, &str, bool, Option<&str>)] = &[
        ("healthz", "GET", "/healthz", false, None),
        ("readyz", "GET", "/readyz", false, None),
        ("metrics", "GET", "/metrics", false, None),
        ("openapi", "GET", "/v1/openapi.yaml", true, None),
        (
            "publish_user",
            "POST",
            "/v1/messages",
            true,
            Some(
                r#"{"from":"system:alerts","to_user":"bob","body":"maintenance at 6","client_msg_id":7}"#,
            ),
        ),
        (
            "publish_base64",
            "POST",
            "/v1/messages",
            true,
            Some(
                r#"{"from":"system:billing","to_user":"carol","body_base64":"AAECA/8=","client_msg_id":1}"#,
            ),
        ),
        (
            "publish_group",
            "POST",
            "/v1/messages",
            true,
            Some(r#"{"from":"alice","to_group":"g1","body":"hi all","client_msg_id":2}"#),
        ),
        (
            "publish_both_bodies",
            "POST",
            "/v1/messages",
            true,
            Some(
                r#"{"from":"system:x","to_user":"bob","body":"a","body_base64":"YQ==","client_msg_id":1}"#,
            ),
        ),
        (
            "publish_unknown_field",
            "POST",
            "/v1/messages",
            true,
            Some(r#"{"from":"a","to_user":"b","body":"a","client_msg_id":1,"x":null}"#),
        ),
        ("user", "GET", "/v1/users/alice", true, None),
        (
            "user_encoded",
            "GET",
            "/v1/users/al%C3%AFce%2Fx",
            true,
            None,
        ),
        ("register", "PUT", "/v1/users/bob", true, None),
        (
            "register_reserved",
            "PUT",
            "/v1/users/system:ops",
            true,
            None,
        ),
        ("kick", "DELETE", "/v1/users/alice/sessions", true, None),
        (
            "kick_device",
            "DELETE",
            "/v1/users/alice/sessions?device=phone",
            true,
            None,
        ),
        (
            "group_create",
            "POST",
            "/v1/groups",
            true,
            Some(r#"{"group_id":"g1","creator":"alice","members":["bob","carol","bob"]}"#),
        ),
        (
            "group_create_bare",
            "POST",
            "/v1/groups",
            true,
            Some(r#"{"group_id":"h","creator":"ann"}"#),
        ),
        (
            "group_add",
            "POST",
            "/v1/groups/g1/members",
            true,
            Some(r#"{"members":["dave"]}"#),
        ),
        (
            "group_add_empty",
            "POST",
            "/v1/groups/g1/members",
            true,
            Some(r#"{"members":[]}"#),
        ),
        ("group_info", "GET", "/v1/groups/g1", true, None),
        (
            "group_info_page",
            "GET",
            "/v1/groups/g1?after=bob&limit=2",
            true,
            None,
        ),
        (
            "group_info_bad_limit",
            "GET",
            "/v1/groups/g1?limit=0&after=",
            true,
            None,
        ),
        (
            "group_remove",
            "DELETE",
            "/v1/groups/g1/members/bob",
            true,
            None,
        ),
        ("no_token", "GET", "/v1/users/alice", false, None),
        ("wrong_method", "PATCH", "/v1/messages", true, None),
        ("no_route", "GET", "/v1/nope", true, None),
    ];
    for (name, method, path, token, body) in requests {
        c.put(
            name,
            &stream_seed(ready, &cuts, &admin_request(method, path, *token, *body)),
        );
    }
    // Keep-alive: three requests pipelined in one stream, in odd reads.
    let mut pipelined = admin_request("GET", "/healthz", false, None);
    pipelined.extend(admin_request("PUT", "/v1/users/bob", true, None));
    pipelined.extend(admin_request(
        "POST",
        "/v1/groups/g1/members",
        true,
        Some(r#"{"members":["erin"]}"#),
    ));
    c.put(
        "pipelined",
        &stream_seed(ready, &[1, 30, 77, 130], &pipelined),
    );
    let raw: &[(&str, u8, &[u8])] = &[
        ("starting_readyz", 0x10, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("shutting_down_readyz", 0x18, b"GET /readyz HTTP/1.0\r\n\r\n"),
        ("wrong_token", ready, b"GET /v1/users/a HTTP/1.1\r\nAuthorization: Bearer nope\r\n\r\n"),
        ("basic_auth", ready, b"GET /v1/users/alice HTTP/1.1\r\nAuthorization: Basic YTpi\r\n\r\n"),
        ("chunked", ready, b"POST /v1/messages HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("too_large", 0x15, b"POST /v1/messages HTTP/1.1\r\nContent-Length: 999999\r\n\r\n"),
        ("bad_length", ready, b"POST /v1/groups HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
        ("stalls_mid_body", 0x04, b"POST /v1/groups HTTP/1.1\r\nContent-Length: 10\r\n\r\n{\"gr"),
        ("closes_mid_head", ready, b"GET /healthz HTTP/1.1\r\nHost"),
        ("tls_hello", ready, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
        ("http_1_0_keep_alive", ready, b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /readyz HTTP/1.1\r\nConnection: close\r\n\r\n"),
    ];
    for (name, flags, bytes) in raw {
        c.put(name, &stream_seed(*flags, &cuts, bytes));
    }
    let many: String = (0..40).map(|i| format!("h{i}: v\r\n")).collect();
    c.put(
        "too_many_headers",
        &stream_seed(
            ready,
            &cuts,
            format!("GET /healthz HTTP/1.1\r\n{many}\r\n").as_bytes(),
        ),
    );
    // Byte by byte (cuts & 0x10).
    let mut every = vec![ready, 0x10];
    every.extend(admin_request(
        "POST",
        "/v1/messages",
        true,
        Some(r#"{"from":"a","to_user":"b","body":"x","client_msg_id":3}"#),
    ));
    c.put("publish_byte_by_byte", &every);
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    codec_seeds(&root);
    reader_seeds(&root);
    config_seeds(&root);
    log_seeds(&root);
    upgrade_seeds(&root);
    frame_seeds(&root);
    admin_seeds(&root);
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .expect("list corpus")
        .filter_map(|e| e.ok())
        .collect();
    dirs.sort_by_key(|e| e.file_name());
    for entry in dirs {
        let n = std::fs::read_dir(entry.path()).map_or(0, |d| d.count());
        println!("{}: {n} seeds", entry.file_name().to_string_lossy());
    }
}

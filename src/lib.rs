//! # ringpost
//!
//! A thread-per-core, io_uring instant-messaging broker. One glommio executor per core (a
//! *shard*) owns a slice of the users outright — their connections, logged messages, sequence
//! numbers, cursors and dedup windows — so nothing on the message path takes a lock. Shards
//! talk only through an N×N mesh of bounded single-producer single-consumer queues carrying
//! batches. Each shard keeps its users' messages in its own mmap'd segment log.
//!
//! ## Modules
//!
//! | module | concern |
//! |---|---|
//! | [`config`] | the embedded default TOML, parsing, validation, human units |
//! | [`protocol`] | wire framing (u32 LE length + FlatBuffers `Frame`), check-then-parse codec, codes |
//! | [`wire`] | client transports: TCP or WebSocket framing per connection, the HTTP upgrade, origins, the embedded chat page |
//! | [`auth`] | JWT HS256 login tokens; the secret file, several keys at once (`kid`), `iss`/`aud` checks |
//! | [`reload`] | values SIGHUP replaces (login keys, TLS certificate), read per shard without a lock |
//! | [`shard`] | executors, ownership (`owner()`), the mesh, accept/login/hand-off, sessions, delivery, group commit |
//! | [`log`] | the per-shard segment log: framing, segments, recovery, retention, the data-dir meta file |
//! | [`client`] | async client used by the tests and `ringpost-tools` |
//! | [`diagnostics`] | startup checks that name the fix for io_uring / memlock problems |
//!
//! ## Data path of a 1:1 message
//!
//! Each stage is one file of [`shard`]: `session` (socket I/O), `ingress` (dispatch and
//! admission), `transport` (the mesh), `inbox` (seq, append, group commit), `delivery` (from
//! the log to the devices).
//!
//! ```text
//!  client A ──TCP──▶ shard a (owner of A)                      shard b (owner of B) ──TCP──▶ client B
//!                    session::read_ready                         │
//!                     reader::feed → decode_client               │
//!                    ingress: Shard::on_send                     │
//!                     rate limit, dedup(A, client_msg_id)        │
//!                     route: owner(B) == b ≠ a                   │
//!                    transport: Mesh::push(b, Message) ─SPSC a→b─▶ ingress: Shard::handle_envelope
//!                                                                │ inbox: accept_message: seq = head(B)+1,
//!                                                                │  Log::append → index(B) += (seq, pos)
//!                                                                │ inbox: Shard::commit (once per batch):
//!                                                                │  msync on the blocking pool,
//!                                                                │  durable(B) = seq
//!                                                                │ delivery: devices refill from the log
//!                                                                │  → one send(2) per conn (flush_dirty)
//!                    ingress: Shard::complete_send ◀─SPSC b→a─── SendAck{OK}
//!  client A ◀──SendAck{OK}
//! ```
//!
//! A connection may land on any shard (SO_REUSEPORT). The accepting shard reads the Login
//! frame, verifies the token and, if another shard owns the user, hands over the fd and any
//! bytes already read through the same mesh (`shard::acceptor`); the owner starts the
//! connection's session (`session::start_handoff`) and does all I/O for it from then on.
//!
//! WebSocket connections (`server.ws_listen`) take the same path after an HTTP upgrade
//! (`shard::ws_accept`): one binary message carries one Frame, and the connection's
//! [`wire::Framing`] — TCP or WebSocket, with the WebSocket decoder's few bytes of state —
//! travels with the hand-off and decides how the session decodes reads and frames output.
//!
//! With `[tls]` on, the accepting shard also completes the TLS handshake before the Login
//! (`shard::link`), and the connection's TLS session ([`wire::tls::ServerTls`]) travels in
//! the hand-off next to the framing; the owner's session decrypts each read and seals each
//! flush with it. Before any of that the accepting shard's gate (`shard::gate`) admits the
//! connection under `limits.max_connections` and `max_pending_logins_per_ip`, or answers
//! SERVER_BUSY.
//!
//! ## Idle connections
//!
//! A connection without traffic is *parked* (`shard::park`): its socket waits in the shard's
//! epoll set and its task is a small stub, so it costs its connection record and nothing on
//! the io_uring ring. New connections start parked; the first byte in, or anything the shard
//! has to send that would block, resumes a full session task (`shard::session`), which parks
//! again after `server.park_after` without traffic. Outbound deliveries to a parked connection
//! go straight out with a non-blocking `send(2)`.

pub mod auth;
pub mod client;
pub mod config;
pub mod diagnostics;
pub mod log;
pub mod protocol;
pub mod reload;
pub mod shard;
pub mod wire;

//! # ringpost
//!
//! A thread-per-core, io_uring instant-messaging broker. One glommio executor per core (a
//! *shard*) owns a slice of the users outright — their connections, logged messages, sequence
//! numbers, cursors and dedup windows — so nothing on the message path takes a lock. Shards
//! talk only through an N×N mesh of bounded single-producer single-consumer queues carrying
//! batches (glommio's shared channels; the vendored glommio wakes a sleeping shard without a
//! `membarrier` IPI and allocates nothing per pass of its loop, `vendor/README.md`). Each shard
//! keeps its users' messages in its own mmap'd segment log.
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
//! | [`shard`] | executors, ownership (`owner()`, `group_owner()`), the mesh, accept/login/hand-off, sessions, dedup, groups, delivery, group commit |
//! | [`log`] | the per-shard segment log: record kinds and framing, segments, recovery, retention, the data-dir lock and meta file, test-only fault injection |
//! | [`client`] | async client used by the tests and `ringpost-tools` |
//! | [`diagnostics`] | startup checks that name the fix for io_uring / memlock problems; the fd table grown for `max_connections` before any thread starts |
//! | [`admin`] | the admin HTTP listener on its own thread: metrics, health, the server API |
//! | [`metrics`] | per-shard single-writer counters and histograms (per-stage message and login latency included); the Prometheus exposition |
//! | [`logging`] | `[log]` format and level for the diagnostics on stderr |
//!
//! ## Data path of a 1:1 message
//!
//! Each stage is one file of [`shard`]: `session` (socket I/O), `ingress` (dispatch and
//! admission), `transport` (the mesh), `inbox` (dedup, seq, append, group commit), `delivery`
//! (from the log to the devices).
//!
//! ```text
//!  client A ──TCP──▶ shard a (owner of A)                      shard b (owner of B) ──TCP──▶ client B
//!                    session::read_ready                         │
//!                     reader::feed → decode_client               │
//!                    ingress: Shard::on_send                     │
//!                     rate limit; route: owner(B) == b ≠ a       │
//!                     body: a slice of the read (read_buf)       │
//!                    transport: Mesh::push(b, Message) ─SPSC a→b─▶ ingress: Shard::handle_envelope
//!                                                                │ inbox: accept_send: dedup(A, client_msg_id),
//!                                                                │  accept_message: seq = head(B)+1,
//!                                                                │  Log::append (archived from the frame's
//!                                                                │  bytes into the map: the body's one copy)
//!                                                                │  → index(B) += (seq, pos)
//!                                                                │  (own-send sync: to and body kept for A's copy)
//!                                                                │ inbox: group commit (once per batch,
//!                                                                │  up to 3 in flight, released in order):
//!                                                                │  fdatasync on the shard's io_uring,
//!                                                                │  durable(B) = seq
//!                                                                │ delivery: devices refill from the log
//!                                                                │  (Deliver laid out from the record, body
//!                                                                │  copied once) → one send(2) per conn
//!                    ingress: Shard::on_send_ack ◀──SPSC b→a──── SendAck{OK, own copy: to, body}
//!                    inbox: append_outgoing: A's stream gets the copy (own-send sync),
//!                     delivered to every device of A after a's next commit
//!  client A ◀──SendAck{OK, own_seq: the copy's seq}
//! ```
//!
//! ## Data path of a group message
//!
//! ```text
//!  member's shard               owner shard o = group_owner(G)           every other shard d with members
//!  ingress: on_group_send ──GroupSend──▶ groups: group_send: member? dedup,
//!                                        group_seq += 1, one GroupRecord,
//!                                        local members' seqs (index entries)
//!                                        inbox: commit ─┬─▶ SendAck ─▶ sender
//!                                                       └─▶ Fanout(entries) ─▶ groups: on_fanout: applied(G) < seq?
//!                                                          (one envelope per     one GroupRecord copy, local
//!                                                           shard per commit)    members' seqs; after d's commit
//!                                        groups: on_applied ◀─── Applied ◀────── (the owner re-drives at start
//!                                                                                 what was never applied)
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
//! ## Operations
//!
//! The admin thread ([`admin`]) never runs on a shard. It reads every shard's counters
//! directly ([`metrics::ShardMetrics`], written only by their shard) and asks shards for the
//! rest over a control channel each (`shard::control`): gauges for a scrape, a
//! user's devices, a kick, or a server-side publish, which enters the data path above at
//! `inbox: accept_send` on the recipient's owner (dedup included) and is answered after its
//! group commit.
//!
//! ## Idle connections
//!
//! A connection without traffic is *parked* (`shard::park`): its socket waits in the shard's
//! epoll set and it has no task (its wake-up queues it for the shard's resumer), so it costs
//! its connection record and nothing on the io_uring ring. New connections start parked; the
//! first byte in, or anything the shard has to send that would block, starts a session task
//! again (`shard::session`), which parks again after `server.park_after` without traffic.
//! Outbound deliveries to a parked connection go straight out with a non-blocking `send(2)`.

pub mod admin;
#[cfg(test)]
mod alloc_count;
pub mod auth;
pub mod client;
pub mod config;
pub mod diagnostics;
pub mod log;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod reload;
pub mod shard;
pub mod wire;

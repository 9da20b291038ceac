//! The shards: one glommio executor per core, each owning its users outright.
//!
//! | module | role |
//! |---|---|
//! | [`bootstrap`] | bind listeners, build the mesh, spawn pinned executors, wait for shutdown |
//! | [`routing`] | the pure owner function `owner(user) = stable_hash(user) % shards` |
//! | [`transport`] | the N×N mesh of SPSC queues: sending and receiving sides, batching, backpressure, why it cannot deadlock |
//! | [`envelope`] | what crosses the mesh: hand-offs, messages, send-acks |
//! | [`tasks`] | the shard's named long-running tasks and when each stops |
//! | [`acceptor`] | accept, read Login, verify the token, hand off to the owner |
//! | [`gate`] | admission (`max_connections`, pending logins per address), login keys and TLS certificate per shard |
//! | [`link`] | the accepting shard's side of a connection during login: plain or TLS (handshake, reads, writes) |
//! | [`ws_accept`] | the WebSocket port: HTTP request, upgrade (or the chat page), then the Login message |
//! | [`control`] | the admin thread's requests (server API, metrics gauges) and their answers |
//! | [`state`] | the `Shard` struct: what one core owns, and where each stage of the path lives |
//! | [`connections`] | registering and forgetting connections, the idle-timeout wheel |
//! | [`ingress`] | frame dispatch, send admission (rate limit, dedup, routing), work from peers |
//! | [`inbox`] | dedup, seq assignment, log appends (own-send copies too), group commit, retention |
//! | [`groups`] | group operations, sends and fan-out on the message path |
//! | [`group_state`] | groups as data: the owner's view, each shard's replica, the rules both apply |
//! | [`delivery`] | LoginOk and replay, refill from the log, acks and cursors, end-of-batch flush |
//! | [`drain`] | the graceful shutdown sequence |
//! | [`users`] | the user index: head and durable seq, log positions, devices |
//! | [`stream_index`] | one user's retained entries: seq → log position, 8 bytes each |
//! | [`recipients`] | the recipient policy (`limits.recipients`) and how a user becomes known |
//! | [`reloader`] | SIGHUP: the login keys and the TLS certificate read again, swapped in for new logins |
//! | [`recovery`] | rebuilding users (heads, indexes, cursors) from the log at start |
//! | [`read_buf`] | the shard's read buffer, handed out per read so a forwarded body is a slice of it |
//! | [`session`] | the per-connection task: starts on adoption, reads, blocked writes, parking |
//! | [`park`] | idle connections parked in a shard epoll set instead of a task each |
//! | [`conn`] | a connection's outbound queue and non-blocking flush (sealed by its TLS session, if any) |
//! | [`cursors`] | per-user device cursors (highest acked seq per device) |
//! | [`own_sends`] | the copies of a connection's own sends it is not sent, and how its acks cover them |
//! | [`dedup`] | the idempotent-send windows, kept where messages are stored |
//! | [`ratelimit`] | the per-user token bucket (in the user's record, shared by their devices) |
//! | [`wake`] | single-threaded wake-ups between a shard's tasks |
//! | [`spare_vec`] | vectors emptied and reused round after round (commit batches, mesh outboxes) |
//! | [`clock`] | the shard's clock, read once per batch of work |

/// The map of the shard's per-message state (users, dedup windows, connections, groups):
/// ahash with per-process random keys instead of std's SipHash-1-3, which took ~6 % of the
/// broker's CPU at the p2p peak (BENCHMARKS.md, "CPU per message"). Keys come from clients
/// (recipient names, client_msg_ids), so the hasher stays seeded: no fixed-key hash a client
/// could flood.
pub type FastMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;

pub mod acceptor;
pub mod bootstrap;
pub mod clock;
pub mod conn;
pub mod connections;
pub mod control;
pub mod cursors;
pub mod dedup;
pub mod delivery;
pub mod drain;
pub mod envelope;
pub mod gate;
pub mod group_state;
pub mod groups;
pub mod inbox;
pub mod ingress;
pub mod link;
pub mod own_sends;
pub mod park;
pub mod ratelimit;
pub mod read_buf;
pub mod recipients;
pub mod recovery;
pub mod reloader;
pub mod routing;
#[cfg(test)]
mod runtime_allocs;
pub mod session;
pub mod spare_vec;
pub mod state;
pub mod stream_index;
pub mod tasks;
pub mod transport;
pub mod users;
pub mod wake;
pub mod ws_accept;

pub use bootstrap::{Broker, ShutdownHandle, StartError};
pub use reloader::{ReloadHandle, Reloaded};
pub use routing::{group_owner, owner, stable_group_hash, stable_hash, HASH_VERSION};

//! The shards: one glommio executor per core, each owning its users outright.
//!
//! | module | role |
//! |---|---|
//! | [`bootstrap`] | bind listeners, build the mesh, spawn pinned executors, graceful shutdown |
//! | [`routing`] | the pure owner function `owner(user) = stable_hash(user) % shards` |
//! | [`transport`] | the N×N mesh of SPSC queues, batching, backpressure, why it cannot deadlock |
//! | [`envelope`] | what crosses the mesh: hand-offs, messages, send-acks |
//! | [`acceptor`] | accept, read Login, verify the token, hand off to the owner |
//! | [`state`] | per-shard users, seq assignment, log appends, group commit, delivery, acks |
//! | [`recovery`] | rebuilding users (heads, indexes, cursors) from the log at start |
//! | [`session`] | the per-connection task: reads, frame dispatch, blocked writes |
//! | [`park`] | idle connections parked in a shard epoll set instead of a task each |
//! | [`conn`] | a connection's outbound queue and non-blocking flush |
//! | [`cursors`] | per-user device cursors (highest acked seq per device) |
//! | [`dedup`] | the idempotent-send window per sender |
//! | [`ratelimit`] | the per-connection token bucket |
//! | [`wake`] | single-threaded wake-ups between a shard's tasks |

pub mod acceptor;
pub mod bootstrap;
pub mod conn;
pub mod cursors;
pub mod dedup;
pub mod envelope;
pub mod park;
pub mod ratelimit;
pub mod recovery;
pub mod routing;
pub mod session;
pub mod state;
pub mod transport;
pub mod wake;

pub use bootstrap::{Broker, ShutdownHandle, StartError};
pub use routing::{owner, stable_hash, HASH_VERSION};

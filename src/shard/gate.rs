//! The gate: what a shard checks before a connection may log in, and the per-shard state of
//! it — admission limits, the login keys, the TLS certificate.
//!
//! - **`limits.max_connections`** (whole process): one counter shared by all shards
//!   ([`ConnCount`]), a relaxed atomic bumped once at accept and once when the connection is
//!   gone ([`Slot`]'s drop). Relaxed is enough: the counter orders nothing else, and a
//!   momentary overshoot by the handful of accepts racing on other cores is harmless next
//!   to a limit of a million. A per-shard share would need no shared cache line at all, but
//!   a connection is accepted on one shard and held by another (its user's owner), so the
//!   share could not follow it; two atomic operations per connection lifetime cost nothing
//!   next to a login, and nothing on the message path touches the counter.
//! - **`limits.max_pending_logins_per_ip`**: per shard, without cross-core state. A
//!   connection stays on its accepting shard until it has logged in, so each shard counts
//!   its own not-yet-logged-in connections per source address ([`Pending`]) and admits a
//!   share, `ceil(limit / shards)`; the kernel's SO_REUSEPORT hash spreads one address's
//!   connections (different ports) evenly over the shards. IPv6 addresses are counted per /64
//!   (one host usually holds a whole /64); IPv4-mapped IPv6 as the IPv4 address.
//! - **keys and certificate**: each shard's view of the values SIGHUP replaces
//!   ([`crate::reload::Local`]).
//!
//! A refused connection is told SERVER_BUSY (an Error frame; HTTP 503 on the WebSocket port
//! before the upgrade) and closed; connections already open are not affected.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::auth::Verifier;
use crate::reload::{Local, Reloadable};

/// Connections of the whole process (see the module doc).
#[derive(Debug)]
pub struct ConnCount {
    open: AtomicUsize,
    max: usize,
}

impl ConnCount {
    /// `max` = 0: no limit (connections are still counted).
    pub fn new(max: usize) -> Arc<ConnCount> {
        Arc::new(ConnCount {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// A place for one more connection, or None when the process holds `max`.
    pub fn admit(self: &Arc<Self>) -> Option<Slot> {
        let before = self.open.fetch_add(1, Ordering::Relaxed);
        if self.max > 0 && before >= self.max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot(self.clone()))
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// One connection's place in [`ConnCount`]; travels with the connection (hand-off included)
/// and frees the place when dropped.
#[derive(Debug)]
pub struct Slot(Arc<ConnCount>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What pending logins are counted by: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKey {
    V4(u32),
    V6Prefix(u64),
}

impl SourceKey {
    pub fn of(ip: IpAddr) -> SourceKey {
        match ip {
            IpAddr::V4(v4) => SourceKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(u32::from(v4)),
                None => SourceKey::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// This shard's connections not yet logged in, per source.
#[derive(Debug, Default)]
pub struct Pending {
    by_source: RefCell<HashMap<SourceKey, u32>>,
    /// This shard's share of the limit (0 = no limit).
    share: u32,
}

impl Pending {
    pub fn new(limit: usize, shards: usize) -> Pending {
        let share = match limit {
            0 => 0,
            n => n.div_ceil(shards.max(1)).min(u32::MAX as usize) as u32,
        };
        Pending {
            by_source: RefCell::default(),
            share,
        }
    }

    /// Counts a new connection from `ip` until the guard is dropped (logged in, or gone);
    /// None when that source already has this shard's share.
    pub fn admit(&self, ip: IpAddr) -> Option<PendingGuard<'_>> {
        let key = SourceKey::of(ip);
        let mut map = self.by_source.borrow_mut();
        let n = map.entry(key).or_insert(0);
        if self.share > 0 && *n >= self.share {
            return None;
        }
        *n += 1;
        Some(PendingGuard { pending: self, key })
    }

    /// The per-shard share of the limit (0 = none).
    pub fn share(&self) -> u32 {
        self.share
    }

    /// Sources with pending logins on this shard.
    pub fn sources(&self) -> usize {
        self.by_source.borrow().len()
    }
}

/// A pending login's place in [`Pending`].
#[derive(Debug)]
pub struct PendingGuard<'a> {
    pending: &'a Pending,
    key: SourceKey,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.pending.by_source.borrow_mut();
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// The shard's gate (see the module doc).
pub struct Gate {
    pub connections: Arc<ConnCount>,
    pub pending: Pending,
    pub verifier: Local<Verifier>,
    /// The TLS certificate, when `[tls]` is on.
    pub tls: Option<Local<rustls::ServerConfig>>,
    /// Plaintext decrypted from one read (TLS connections), shared like the read buffer and
    /// handed out the same way: a forwarded body is a slice of it (`session::feed_tls`).
    pub plain: RefCell<super::read_buf::ReadBuf>,
}

/// What every shard's gate is built from (shared by all shards).
#[derive(Clone)]
pub struct GateShared {
    pub connections: Arc<ConnCount>,
    pub verifier: Arc<Reloadable<Verifier>>,
    pub tls: Option<Arc<Reloadable<rustls::ServerConfig>>>,
    pub max_pending_logins_per_ip: usize,
}

impl Gate {
    pub fn new(shared: &GateShared, shards: usize) -> Gate {
        Gate {
            connections: shared.connections.clone(),
            pending: Pending::new(shared.max_pending_logins_per_ip, shards),
            verifier: Local::new(shared.verifier.clone()),
            tls: shared.tls.clone().map(Local::new),
            plain: RefCell::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_count_refuses_past_max_and_frees_on_drop() {
        let count = ConnCount::new(2);
        let a = count.admit().unwrap();
        let _b = count.admit().unwrap();
        assert!(count.admit().is_none());
        assert_eq!(count.open(), 2);
        drop(a);
        assert!(count.admit().is_some());
        let unlimited = ConnCount::new(0);
        let all: Vec<_> = (0..100).filter_map(|_| unlimited.admit()).collect();
        assert_eq!((all.len(), unlimited.open()), (100, 100));
    }

    #[test]
    fn pending_logins_are_counted_per_source_and_ipv6_per_64() {
        let p = Pending::new(3, 2); // a share of 2 on each of 2 shards
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a1 = p.admit(ip("127.0.0.2")).unwrap();
        let _a2 = p.admit(ip("::ffff:127.0.0.2")).unwrap();
        assert!(p.admit(ip("127.0.0.2")).is_none());
        let _b = p.admit(ip("127.0.0.3")).unwrap();
        let _v6a = p.admit(ip("2001:db8::1")).unwrap();
        let _v6b = p.admit(ip("2001:db8::ffff:2")).unwrap();
        assert!(p.admit(ip("2001:db8::3")).is_none(), "same /64");
        assert!(p.admit(ip("2001:db8:0:1::1")).is_some(), "another /64");
        drop(a1);
        assert!(p.admit(ip("127.0.0.2")).is_some());
        assert_eq!(Pending::new(0, 4).share(), 0);
        let none = Pending::new(0, 4);
        let held: Vec<_> = (0..1000)
            .filter_map(|_| none.admit(ip("10.0.0.1")))
            .collect();
        assert_eq!(held.len(), 1000);
    }

    #[test]
    fn the_map_forgets_sources_without_pending_logins() {
        let p = Pending::new(1, 1);
        let g = p.admit("127.0.0.9".parse().unwrap()).unwrap();
        assert!(p.admit("127.0.0.9".parse().unwrap()).is_none());
        assert_eq!(p.sources(), 1);
        drop(g);
        assert_eq!(p.sources(), 0);
    }
}

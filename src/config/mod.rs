//! Configuration: one TOML file over one embedded, documented default.
//!
//! The defaults live in exactly one place, `default.toml` beside this file, embedded in the
//! binary ([`Config::DEFAULT_TOML`], printed by `ringpost --print-config`). Loading a user's
//! file: reject keys the default does not have (naming them), overlay the user's values on the
//! default table, deserialize into typed sections (sizes and durations in human units, see
//! [`units`]), then check every value's range (`validate`). So a missing key takes its
//! documented default and a present key is always checked.

mod ops;
pub mod units;

pub use ops::{AdminConfig, LogConfig, LogFormat};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::{Table, Value};

use crate::wire::upgrade::OriginPolicy;
use units::{Dur, Size};

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub tls: TlsConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// 0 = one per online CPU (see [`Config::shard_count`]).
    pub shards: usize,
    pub cpus: Option<Vec<usize>>,
    pub shutdown_grace: Duration,
    pub mesh_queue: usize,
    /// Listen backlog per shard (the kernel caps it at net.core.somaxconn).
    pub listen_backlog: u32,
    /// A connection with no traffic for this long is parked (0 = never).
    pub park_after: Duration,
    /// Every message a user sends also enters their own stream (their other devices see it).
    pub own_send_sync: bool,
    /// Where WebSocket connections are accepted (None = WebSocket off).
    pub ws_listen: Option<SocketAddr>,
    /// Which browser origins may open a WebSocket.
    pub ws_allowed_origins: OriginPolicy,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    pub segment_size: usize,
    pub fsync: FsyncPolicy,
    pub fsync_interval: Duration,
    pub retention: Duration,
    /// 0 = no limit.
    pub max_bytes_per_shard: u64,
}

/// When SendAck{OK} goes out relative to the disk (see default.toml for what each risks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    Always,
    Interval,
    Never,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuthConfig {
    pub secret_file: PathBuf,
    pub leeway: Duration,
    /// Directory of further accepted keys, each file one key named by its file name (kid).
    pub secret_dir: Option<PathBuf>,
    /// Required `iss` claim, if set.
    pub issuer: Option<String>,
    /// Required `aud` claim, if set.
    pub audience: Option<String>,
}

/// `[tls]`: both files set turn TLS on for `server.listen` and `server.ws_listen`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TlsConfig {
    /// (certificate chain PEM, private key PEM); None = TLS off.
    pub files: Option<(PathBuf, PathBuf)>,
}

/// `[limits] recipients`: who may be sent a 1:1 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipientPolicy {
    /// Any user ID, whether or not it has ever logged in.
    Any,
    /// Only users the broker knows: logged in at least once (or registered by the app
    /// backend); others are refused with USER_UNKNOWN and cost nothing.
    Known,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    pub max_frame: usize,
    pub login_timeout: Duration,
    pub idle_timeout: Duration,
    pub dedup_window: Duration,
    pub dedup_entries: usize,
    pub max_devices: usize,
    pub sends_per_sec: u32,
    pub max_inbox: usize,
    pub max_group_members: usize,
    pub max_groups_per_user: usize,
    pub max_outbound: usize,
    pub slow_consumer_timeout: Duration,
    /// Connections of the whole process (0 = no limit).
    pub max_connections: usize,
    /// Connections from one source address (IPv6: one /64) not yet logged in (0 = no limit).
    pub max_pending_logins_per_ip: usize,
    pub recipients: RecipientPolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config is not valid TOML: {0}")]
    Parse(String),
    #[error("unknown config key `{0}` (see `ringpost --print-config` for every key)")]
    UnknownKey(String),
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: String, message: String },
}

/// Keys that may appear in a user's file although the default leaves them commented out.
const OPTIONAL_KEYS: &[&str] = &["server.cpus"];

impl Config {
    /// The documented default configuration, embedded in the binary.
    pub const DEFAULT_TOML: &'static str = include_str!("default.toml");

    /// The embedded default, parsed and validated.
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Config::from_toml_str("")
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_str(&text)
    }

    /// Parses a user's TOML over the embedded default and validates the result.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let mut base: Table = toml::from_str(Self::DEFAULT_TOML)
            .map_err(|e| ConfigError::Parse(format!("embedded default: {e}")))?;
        let user: Table = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        overlay(&mut base, user, "")?;
        let raw: RawConfig = Value::Table(base)
            .try_into()
            .map_err(|e: toml::de::Error| invalid_from_serde(&e))?;
        validate(raw)
    }

    /// Shards to run: `shards`, else the length of `cpus`, else the CPUs this process may use.
    pub fn shard_count(&self) -> usize {
        if self.server.shards > 0 {
            return self.server.shards;
        }
        if let Some(cpus) = &self.server.cpus {
            return cpus.len();
        }
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    /// The CPU to pin `shard` to when `cpus` is given.
    pub fn cpu_for_shard(&self, shard: usize) -> Option<usize> {
        self.server.cpus.as_ref()?.get(shard).copied()
    }

    /// How often clients should send something (LoginOk.heartbeat_ms).
    pub fn heartbeat(&self) -> Duration {
        self.limits.idle_timeout / 3
    }
}

/// Copies `user` into `base`, refusing keys `base` does not have.
fn overlay(base: &mut Table, user: Table, prefix: &str) -> Result<(), ConfigError> {
    for (key, value) in user {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (base.get_mut(&key), value) {
            (Some(Value::Table(b)), Value::Table(u)) => overlay(b, u, &path)?,
            (Some(Value::Table(_)), _) => {
                return Err(ConfigError::Invalid {
                    key: path,
                    message: "must be a table".into(),
                })
            }
            (Some(slot), value) => *slot = value,
            (None, value) if OPTIONAL_KEYS.contains(&path.as_str()) => {
                base.insert(key, value);
            }
            (None, _) => return Err(ConfigError::UnknownKey(path)),
        }
    }
    Ok(())
}

/// Turns a serde type error into one naming the key (toml reports the field in its message).
fn invalid_from_serde(e: &toml::de::Error) -> ConfigError {
    ConfigError::Invalid {
        key: "config".into(),
        message: e.message().to_string(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    storage: RawStorage,
    auth: RawAuth,
    limits: RawLimits,
    admin: ops::RawAdmin,
    log: ops::RawLog,
    tls: RawTls,
}

/// Each field is parsed on its own so a type error can name its key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Value,
    shards: Value,
    cpus: Option<Value>,
    shutdown_grace: Value,
    mesh_queue: Value,
    listen_backlog: Value,
    park_after: Value,
    own_send_sync: Value,
    ws_listen: Value,
    ws_allowed_origins: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    data_dir: Value,
    segment_size: Value,
    fsync: Value,
    fsync_interval: Value,
    retention: Value,
    max_bytes_per_shard: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    secret_file: Value,
    leeway: Value,
    secret_dir: Value,
    issuer: Value,
    audience: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Value,
    key_file: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_frame: Value,
    login_timeout: Value,
    idle_timeout: Value,
    dedup_window: Value,
    dedup_entries: Value,
    max_devices: Value,
    sends_per_sec: Value,
    max_inbox: Value,
    max_group_members: Value,
    max_groups_per_user: Value,
    max_outbound: Value,
    slow_consumer_timeout: Value,
    max_connections: Value,
    max_pending_logins_per_ip: Value,
    recipients: Value,
}

fn field<T: for<'de> Deserialize<'de>>(key: &str, v: Value, what: &str) -> Result<T, ConfigError> {
    v.try_into()
        .map_err(|e: toml::de::Error| ConfigError::Invalid {
            key: key.into(),
            message: format!("expected {what}: {}", e.message()),
        })
}

fn in_range<T: PartialOrd + std::fmt::Display>(
    key: &str,
    v: T,
    lo: T,
    hi: T,
    shown: (&str, &str),
) -> Result<T, ConfigError> {
    if v < lo || v > hi {
        return Err(ConfigError::Invalid {
            key: key.into(),
            message: format!("{v} is out of range; allowed {}..={}", shown.0, shown.1),
        });
    }
    Ok(v)
}

fn int(key: &str, v: Value, lo: u64, hi: u64) -> Result<u64, ConfigError> {
    let n: i64 = field(key, v, "an integer")?;
    let n = u64::try_from(n).map_err(|_| ConfigError::Invalid {
        key: key.into(),
        message: format!("{n} is negative; allowed {lo}..={hi}"),
    })?;
    in_range(key, n, lo, hi, (&lo.to_string(), &hi.to_string()))
}

fn size(key: &str, v: Value, lo: u64, hi: u64, shown: (&str, &str)) -> Result<usize, ConfigError> {
    let Size(n) = field(key, v, "a size such as \"64KiB\"")?;
    in_range(key, n, lo, hi, shown).map(|n| n as usize)
}

fn dur(
    key: &str,
    v: Value,
    lo: Duration,
    hi: Duration,
    shown: (&str, &str),
) -> Result<Duration, ConfigError> {
    let Dur(d) = field(key, v, "a duration such as \"90s\"")?;
    if d < lo || d > hi {
        return Err(ConfigError::Invalid {
            key: key.into(),
            message: format!("{d:?} is out of range; allowed {}..={}", shown.0, shown.1),
        });
    }
    Ok(d)
}

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);
const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Checks every value and builds the typed config.
fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let s = raw.server;
    let listen_text: String = field(
        "server.listen",
        s.listen,
        "an address such as \"127.0.0.1:7070\"",
    )?;
    let listen: SocketAddr = listen_text.parse().map_err(|_| ConfigError::Invalid {
        key: "server.listen".into(),
        message: format!(
            "`{listen_text}` is not an IP:port address, e.g. \"127.0.0.1:7070\" or \"[::1]:7070\""
        ),
    })?;
    let ws_text: String = field(
        "server.ws_listen",
        s.ws_listen,
        "an address such as \"127.0.0.1:7071\", or \"\" for none",
    )?;
    let ws_listen = match ws_text.as_str() {
        "" => None,
        text => Some(text.parse::<SocketAddr>().map_err(|_| ConfigError::Invalid {
            key: "server.ws_listen".into(),
            message: format!(
                "`{text}` is not an IP:port address, e.g. \"127.0.0.1:7071\", or \"\" to turn WebSocket off"
            ),
        })?),
    };
    if ws_listen.is_some_and(|ws| ws == listen && ws.port() != 0) {
        return Err(ConfigError::Invalid {
            key: "server.ws_listen".into(),
            message: format!("{listen} is also server.listen; WebSocket needs its own port"),
        });
    }
    let origins: Vec<String> = field(
        "server.ws_allowed_origins",
        s.ws_allowed_origins,
        "a list of origins",
    )?;
    let ws_allowed_origins =
        OriginPolicy::parse(&origins).map_err(|message| ConfigError::Invalid {
            key: "server.ws_allowed_origins".into(),
            message,
        })?;
    let shards = int("server.shards", s.shards, 0, 1024)? as usize;
    let cpus = match s.cpus {
        None => None,
        Some(v) => {
            let list: Vec<i64> = field("server.cpus", v, "a list of CPU ids")?;
            let mut cpus = Vec::with_capacity(list.len());
            for c in list {
                let c = usize::try_from(c)
                    .ok()
                    .filter(|&c| c < 4096)
                    .ok_or_else(|| ConfigError::Invalid {
                        key: "server.cpus".into(),
                        message: format!("{c} is not a CPU id; allowed 0..=4095"),
                    })?;
                if cpus.contains(&c) {
                    return Err(ConfigError::Invalid {
                        key: "server.cpus".into(),
                        message: format!("CPU {c} is listed twice; each shard needs its own CPU"),
                    });
                }
                cpus.push(c);
            }
            if cpus.is_empty() {
                return Err(ConfigError::Invalid {
                    key: "server.cpus".into(),
                    message: "must list at least one CPU (or be left out)".into(),
                });
            }
            if shards > 0 && cpus.len() != shards {
                return Err(ConfigError::Invalid {
                    key: "server.cpus".into(),
                    message: format!(
                        "lists {} CPUs but server.shards = {shards}; they must match",
                        cpus.len()
                    ),
                });
            }
            Some(cpus)
        }
    };
    let server = ServerConfig {
        listen,
        shards,
        cpus,
        shutdown_grace: dur(
            "server.shutdown_grace",
            s.shutdown_grace,
            Duration::ZERO,
            600 * SEC,
            ("0s", "10min"),
        )?,
        mesh_queue: int("server.mesh_queue", s.mesh_queue, 16, 65_536)? as usize,
        listen_backlog: int("server.listen_backlog", s.listen_backlog, 1, 65_535)? as u32,
        park_after: dur(
            "server.park_after",
            s.park_after,
            Duration::ZERO,
            3600 * SEC,
            ("0s", "1h"),
        )?,
        own_send_sync: field("server.own_send_sync", s.own_send_sync, "true or false")?,
        ws_listen,
        ws_allowed_origins,
    };
    let path = |key: &str, v: Value| -> Result<PathBuf, ConfigError> {
        let p: String = field(key, v, "a path")?;
        if p.is_empty() {
            return Err(ConfigError::Invalid {
                key: key.into(),
                message: "must not be empty".into(),
            });
        }
        Ok(PathBuf::from(p))
    };
    let st = raw.storage;
    let fsync_text: String = field("storage.fsync", st.fsync, "a string")?;
    let fsync = match fsync_text.as_str() {
        "always" => FsyncPolicy::Always,
        "interval" => FsyncPolicy::Interval,
        "never" => FsyncPolicy::Never,
        other => {
            return Err(ConfigError::Invalid {
                key: "storage.fsync".into(),
                message: format!(
                    "`{other}` is not a policy; allowed \"always\", \"interval\", \"never\""
                ),
            })
        }
    };
    let max_bytes_per_shard = size(
        "storage.max_bytes_per_shard",
        st.max_bytes_per_shard,
        0,
        u64::MAX,
        ("0", "any"),
    )? as u64;
    let storage = StorageConfig {
        data_dir: path("storage.data_dir", st.data_dir)?,
        segment_size: size(
            "storage.segment_size",
            st.segment_size,
            64 * KIB,
            4 * GIB,
            ("64KiB", "4GiB"),
        )?,
        fsync,
        fsync_interval: dur(
            "storage.fsync_interval",
            st.fsync_interval,
            MS,
            10 * SEC,
            ("1ms", "10s"),
        )?,
        retention: dur(
            "storage.retention",
            st.retention,
            60 * SEC,
            3650 * 86_400 * SEC,
            ("1min", "3650d"),
        )?,
        max_bytes_per_shard,
    };
    // "" = not set.
    let optional = |key: &str, v: Value| -> Result<Option<String>, ConfigError> {
        let text: String = field(key, v, "a string (\"\" for none)")?;
        Ok(Some(text).filter(|t| !t.is_empty()))
    };
    let auth = AuthConfig {
        secret_file: path("auth.secret_file", raw.auth.secret_file)?,
        leeway: dur(
            "auth.leeway",
            raw.auth.leeway,
            Duration::ZERO,
            300 * SEC,
            ("0s", "5min"),
        )?,
        secret_dir: optional("auth.secret_dir", raw.auth.secret_dir)?.map(PathBuf::from),
        issuer: optional("auth.issuer", raw.auth.issuer)?,
        audience: optional("auth.audience", raw.auth.audience)?,
    };
    let tls = match (
        optional("tls.cert_file", raw.tls.cert_file)?,
        optional("tls.key_file", raw.tls.key_file)?,
    ) {
        (None, None) => TlsConfig { files: None },
        (Some(cert), Some(key)) => TlsConfig {
            files: Some((PathBuf::from(cert), PathBuf::from(key))),
        },
        (Some(_), None) => {
            return Err(ConfigError::Invalid {
                key: "tls.key_file".into(),
                message: "tls.cert_file is set, so the private key's PEM file is needed too".into(),
            })
        }
        (None, Some(_)) => {
            return Err(ConfigError::Invalid {
                key: "tls.cert_file".into(),
                message: "tls.key_file is set, so the certificate chain's PEM file is needed too"
                    .into(),
            })
        }
    };
    let l = raw.limits;
    let recipients_text: String = field("limits.recipients", l.recipients, "a string")?;
    let recipients = match recipients_text.as_str() {
        "any" => RecipientPolicy::Any,
        "known" => RecipientPolicy::Known,
        other => {
            return Err(ConfigError::Invalid {
                key: "limits.recipients".into(),
                message: format!("`{other}` is not a policy; allowed \"any\", \"known\""),
            })
        }
    };
    let max_frame = size(
        "limits.max_frame",
        l.max_frame,
        KIB,
        16 * MIB,
        ("1KiB", "16MiB"),
    )?;
    let limits = LimitsConfig {
        max_frame,
        login_timeout: dur(
            "limits.login_timeout",
            l.login_timeout,
            100 * MS,
            300 * SEC,
            ("100ms", "5min"),
        )?,
        idle_timeout: dur(
            "limits.idle_timeout",
            l.idle_timeout,
            SEC,
            3600 * SEC,
            ("1s", "1h"),
        )?,
        dedup_window: dur(
            "limits.dedup_window",
            l.dedup_window,
            Duration::ZERO,
            86_400 * SEC,
            ("0s", "24h"),
        )?,
        dedup_entries: int("limits.dedup_entries", l.dedup_entries, 1, 1_000_000)? as usize,
        max_devices: int("limits.max_devices", l.max_devices, 1, 64)? as usize,
        sends_per_sec: int("limits.sends_per_sec", l.sends_per_sec, 1, 1_000_000)? as u32,
        max_inbox: int("limits.max_inbox", l.max_inbox, 1, 100_000_000)? as usize,
        max_group_members: int(
            "limits.max_group_members",
            l.max_group_members,
            1,
            1_000_000,
        )? as usize,
        max_groups_per_user: int(
            "limits.max_groups_per_user",
            l.max_groups_per_user,
            1,
            1_000_000,
        )? as usize,
        max_outbound: size(
            "limits.max_outbound",
            l.max_outbound,
            4 * KIB,
            GIB,
            ("4KiB", "1GiB"),
        )?,
        slow_consumer_timeout: dur(
            "limits.slow_consumer_timeout",
            l.slow_consumer_timeout,
            SEC,
            3600 * SEC,
            ("1s", "1h"),
        )?,
        max_connections: int("limits.max_connections", l.max_connections, 0, 100_000_000)? as usize,
        max_pending_logins_per_ip: int(
            "limits.max_pending_logins_per_ip",
            l.max_pending_logins_per_ip,
            0,
            1_000_000,
        )? as usize,
        recipients,
    };
    if limits.max_outbound < max_frame {
        return Err(ConfigError::Invalid {
            key: "limits.max_outbound".into(),
            message: format!(
                "{} bytes is less than limits.max_frame ({max_frame} bytes); it must hold at least one frame",
                limits.max_outbound
            ),
        });
    }
    if storage.segment_size < 2 * limits.max_frame {
        return Err(ConfigError::Invalid {
            key: "storage.segment_size".into(),
            message: format!(
                "{} bytes cannot hold two frames of limits.max_frame ({max_frame} bytes)",
                storage.segment_size
            ),
        });
    }
    Ok(Config {
        server,
        storage,
        auth,
        limits,
        admin: ops::admin(raw.admin)?,
        log: ops::log(raw.log)?,
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match Config::from_toml_str(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn embedded_default_parses_to_the_documented_values() {
        let c = Config::embedded_default().unwrap();
        assert_eq!(
            c.server.listen,
            "127.0.0.1:7070".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(c.server.shards, 0);
        assert_eq!(c.server.cpus, None);
        assert_eq!(c.server.shutdown_grace, Duration::from_secs(10));
        assert_eq!(c.server.mesh_queue, 1024);
        assert_eq!(c.server.listen_backlog, 4096);
        assert_eq!(c.server.park_after, Duration::from_secs(5));
        assert_eq!(
            c.server.ws_listen,
            Some("127.0.0.1:7071".parse::<SocketAddr>().unwrap())
        );
        assert!(c.server.ws_allowed_origins.allows("http://localhost:7071"));
        assert!(!c.server.ws_allowed_origins.allows("https://example.com"));
        assert_eq!(c.storage.data_dir, PathBuf::from("data"));
        assert_eq!(c.auth.secret_file, PathBuf::from("data/auth.secret"));
        assert_eq!(c.auth.leeway, Duration::from_secs(30));
        assert_eq!(c.limits.max_frame, 64 * 1024);
        assert_eq!(c.limits.login_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(90));
        assert_eq!(c.limits.dedup_window, Duration::from_secs(600));
        assert_eq!(c.limits.dedup_entries, 1024);
        assert_eq!(c.limits.max_devices, 8);
        assert_eq!(c.limits.sends_per_sec, 1000);
        assert_eq!(c.limits.max_inbox, 100_000);
        assert_eq!(c.storage.segment_size, 128 << 20);
        assert_eq!(c.storage.fsync, FsyncPolicy::Always);
        assert_eq!(c.storage.fsync_interval, Duration::from_millis(5));
        assert_eq!(c.storage.retention, Duration::from_secs(7 * 86_400));
        assert_eq!(c.storage.max_bytes_per_shard, 0);
        assert_eq!(c.limits.max_outbound, 1 << 20);
        assert_eq!(c.limits.slow_consumer_timeout, Duration::from_secs(60));
        assert_eq!(c.heartbeat(), Duration::from_secs(30));
        assert_eq!(c.limits.max_connections, 1_100_000);
        assert_eq!(c.limits.max_pending_logins_per_ip, 256);
        assert_eq!(c.limits.recipients, RecipientPolicy::Any);
        assert_eq!(c.auth.secret_dir, None);
        assert_eq!(
            (c.auth.issuer.clone(), c.auth.audience.clone()),
            (None, None)
        );
        assert_eq!(c.tls.files, None);
        assert!(c.shard_count() >= 1);
    }

    #[test]
    fn a_partial_file_overrides_only_what_it_names() {
        let c = Config::from_toml_str("[limits]\nmax_frame = \"1MiB\"\n").unwrap();
        assert_eq!(c.limits.max_frame, 1 << 20);
        assert_eq!(c.limits.max_devices, 8);
        assert_eq!(
            c.server.listen,
            "127.0.0.1:7070".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        assert!(err("[limits]\nmax_fram = 5\n").contains("`limits.max_fram`"));
        assert!(err("[metrics]\nport = 1\n").contains("`metrics`"));
        assert!(err("verbose = true\n").contains("`verbose`"));
    }

    #[test]
    fn invalid_values_name_the_key_and_what_is_allowed() {
        let cases = [
            (
                "[limits]\nmax_frame = \"64 parsecs\"",
                "limits.max_frame",
                "KiB",
            ),
            ("[limits]\nmax_frame = -1", "limits.max_frame", "negative"),
            (
                "[limits]\nmax_frame = 1.5",
                "limits.max_frame",
                "whole number",
            ),
            ("[limits]\nmax_frame = 1.5", "limits.max_frame", "KiB"),
            (
                "[limits]\nmax_frame = \"64MiB\"",
                "limits.max_frame",
                "16MiB",
            ),
            (
                "[limits]\nidle_timeout = \"90 fortnights\"",
                "limits.idle_timeout",
                "min",
            ),
            (
                "[limits]\nidle_timeout = 90",
                "limits.idle_timeout",
                "duration",
            ),
            (
                "[limits]\nmax_outbound = \"8KiB\"",
                "limits.max_outbound",
                "max_frame",
            ),
            ("[limits]\nmax_devices = 0", "limits.max_devices", "1..=64"),
            (
                "[server]\nshards = 2\ncpus = [0, 1, 2]",
                "server.cpus",
                "must match",
            ),
            ("[server]\ncpus = [1, 1]", "server.cpus", "twice"),
            (
                "[server]\nlisten = \"localhost\"",
                "server.listen",
                "IP:port",
            ),
            ("[server]\nshards = 5000", "server.shards", "0..=1024"),
            ("[storage]\ndata_dir = \"\"", "storage.data_dir", "empty"),
            (
                "[storage]\nfsync = \"sometimes\"",
                "storage.fsync",
                "interval",
            ),
            (
                "[storage]\nsegment_size = \"64KiB\"",
                "storage.segment_size",
                "two frames",
            ),
            ("[storage]\nretention = \"1s\"", "storage.retention", "1min"),
            (
                "[limits]\nsends_per_sec = \"fast\"",
                "limits.sends_per_sec",
                "integer",
            ),
            (
                "[server]\nws_listen = \"localhost:7071\"",
                "server.ws_listen",
                "IP:port",
            ),
            (
                "[server]\nlisten = \"127.0.0.1:9000\"\nws_listen = \"127.0.0.1:9000\"",
                "server.ws_listen",
                "own port",
            ),
            ("[server]\nws_listen = 7071", "server.ws_listen", "address"),
            (
                "[server]\nws_allowed_origins = [\"example.com\"]",
                "server.ws_allowed_origins",
                "scheme://host",
            ),
            (
                "[server]\nws_allowed_origins = \"*\"",
                "server.ws_allowed_origins",
                "list",
            ),
            (
                "[limits]\nrecipients = \"some\"",
                "limits.recipients",
                "known",
            ),
            (
                "[limits]\nmax_connections = -1",
                "limits.max_connections",
                "negative",
            ),
            (
                "[limits]\nmax_pending_logins_per_ip = 2000000",
                "limits.max_pending_logins_per_ip",
                "0..=1000000",
            ),
            (
                "[tls]\ncert_file = \"c.pem\"",
                "tls.key_file",
                "private key",
            ),
            (
                "[tls]\nkey_file = \"k.pem\"",
                "tls.cert_file",
                "certificate",
            ),
            ("[tls]\ncert_file = 5", "tls.cert_file", "string"),
            ("[auth]\nissuer = 1", "auth.issuer", "string"),
            ("[auth]\nsecret_dir = []", "auth.secret_dir", "string"),
        ];
        for (text, key, hint) in cases {
            let e = err(text);
            assert!(e.contains(key) && e.contains(hint), "{text:?} gave {e:?}");
        }
    }

    #[test]
    fn websocket_can_be_turned_off_and_opened_to_any_origin() {
        let c = Config::from_toml_str("[server]\nws_listen = \"\"\nws_allowed_origins = [\"*\"]\n")
            .unwrap();
        assert_eq!(c.server.ws_listen, None);
        assert_eq!(c.server.ws_allowed_origins, OriginPolicy::Any);
        let c = Config::from_toml_str("[server]\nws_allowed_origins = []\n").unwrap();
        assert!(!c.server.ws_allowed_origins.allows("http://localhost"));
    }

    #[test]
    fn security_keys_parse() {
        let c = Config::from_toml_str(
            "[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n[limits]\nrecipients = \"known\"\nmax_connections = 0\n[auth]\nsecret_dir = \"keys\"\nissuer = \"i\"\naudience = \"a\"\n",
        )
        .unwrap();
        assert_eq!(
            c.tls.files,
            Some((PathBuf::from("c.pem"), PathBuf::from("k.pem")))
        );
        assert_eq!(c.limits.recipients, RecipientPolicy::Known);
        assert_eq!(c.limits.max_connections, 0);
        assert_eq!(c.auth.secret_dir, Some(PathBuf::from("keys")));
        assert_eq!(c.auth.issuer.as_deref(), Some("i"));
        assert_eq!(c.auth.audience.as_deref(), Some("a"));
    }

    #[test]
    fn cpus_decide_the_shard_count_when_shards_is_zero() {
        let c = Config::from_toml_str("[server]\ncpus = [1, 0]\n").unwrap();
        assert_eq!(c.shard_count(), 2);
        assert_eq!(c.cpu_for_shard(0), Some(1));
        assert_eq!(c.cpu_for_shard(2), None);
    }

    #[test]
    fn not_toml_is_a_parse_error() {
        assert!(matches!(
            Config::from_toml_str("[limits"),
            Err(ConfigError::Parse(_))
        ));
    }
}

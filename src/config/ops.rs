//! The operations sections: `[admin]` (the admin HTTP listener) and `[log]` (diagnostic
//! output). Parsed and checked like every other section (see the module doc of `config`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Value;

use super::{dur, field, int, size, ConfigError, KIB, MIB, MS, SEC};

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// `None`: the admin listener is disabled (`listen = ""`).
    pub listen: Option<SocketAddr>,
    pub token_file: PathBuf,
    pub request_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_request: usize,
    pub max_connections: usize,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter directive such as `"info"` or `"info,ringpost::shard=debug"`.
    pub level: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    listen: Value,
    token_file: Value,
    request_timeout: Value,
    keepalive_timeout: Value,
    max_request: Value,
    max_connections: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    format: Value,
    level: Value,
}

pub(super) fn admin(a: RawAdmin) -> Result<AdminConfig, ConfigError> {
    let text: String = field(
        "admin.listen",
        a.listen,
        "an address such as \"127.0.0.1:9090\", or \"\"",
    )?;
    let listen = match text.trim() {
        "" => None,
        t => Some(t.parse().map_err(|_| ConfigError::Invalid {
            key: "admin.listen".into(),
            message: format!(
                "`{t}` is not an IP:port address, e.g. \"127.0.0.1:9090\", or \"\" to disable"
            ),
        })?),
    };
    let token_file: String = field("admin.token_file", a.token_file, "a path")?;
    if token_file.is_empty() {
        return Err(ConfigError::Invalid {
            key: "admin.token_file".into(),
            message: "must not be empty".into(),
        });
    }
    Ok(AdminConfig {
        listen,
        token_file: PathBuf::from(token_file),
        request_timeout: dur(
            "admin.request_timeout",
            a.request_timeout,
            100 * MS,
            300 * SEC,
            ("100ms", "5min"),
        )?,
        keepalive_timeout: dur(
            "admin.keepalive_timeout",
            a.keepalive_timeout,
            100 * MS,
            3600 * SEC,
            ("100ms", "1h"),
        )?,
        max_request: size(
            "admin.max_request",
            a.max_request,
            4 * KIB,
            64 * MIB,
            ("4KiB", "64MiB"),
        )?,
        max_connections: int("admin.max_connections", a.max_connections, 1, 10_000)? as usize,
    })
}

pub(super) fn log(l: RawLog) -> Result<LogConfig, ConfigError> {
    let format: String = field("log.format", l.format, "a string")?;
    let format = match format.as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            return Err(ConfigError::Invalid {
                key: "log.format".into(),
                message: format!("`{other}` is not a format; allowed \"text\", \"json\""),
            })
        }
    };
    let level: String = field("log.level", l.level, "a string such as \"info\"")?;
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&level) {
        return Err(ConfigError::Invalid {
            key: "log.level".into(),
            message: format!(
                "`{level}` is not a filter ({e}); e.g. \"info\", \"debug\", \"info,ringpost::shard=debug\""
            ),
        });
    }
    Ok(LogConfig { format, level })
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, LogFormat};
    use std::time::Duration;

    #[test]
    fn defaults_and_overrides() {
        let c = Config::embedded_default().unwrap();
        assert_eq!(c.admin.listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(
            c.admin.token_file,
            std::path::PathBuf::from("data/admin.token")
        );
        assert_eq!(c.admin.request_timeout, Duration::from_secs(10));
        assert_eq!(c.admin.keepalive_timeout, Duration::from_secs(60));
        assert_eq!(c.admin.max_request, 1 << 20);
        assert_eq!(c.admin.max_connections, 64);
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.log.level, "info");
        let c = Config::from_toml_str("[admin]\nlisten = \"\"\n[log]\nformat = \"json\"\nlevel = \"info,ringpost::shard=debug\"\n").unwrap();
        assert_eq!(c.admin.listen, None);
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key, hint) in [
            ("[admin]\nlisten = \"localhost\"", "admin.listen", "IP:port"),
            ("[admin]\ntoken_file = \"\"", "admin.token_file", "empty"),
            (
                "[admin]\nrequest_timeout = \"1ms\"",
                "admin.request_timeout",
                "100ms",
            ),
            (
                "[admin]\nmax_request = \"1KiB\"",
                "admin.max_request",
                "4KiB",
            ),
            (
                "[admin]\nmax_connections = 0",
                "admin.max_connections",
                "1..=10000",
            ),
            ("[log]\nformat = \"xml\"", "log.format", "json"),
            ("[log]\nlevel = \"info,=[\"", "log.level", "filter"),
        ] {
            let e = Config::from_toml_str(text).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(hint), "{text:?} gave {e:?}");
        }
    }
}

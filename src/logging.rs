//! Diagnostic logs on stderr: `[log] format` ("text" or "json") and `[log] level` (a tracing
//! filter; `RUST_LOG` overrides it). Text has ANSI colours only when stderr is a terminal, so
//! files, journald and pipes get plain lines.
//!
//! What is logged where: connection lifecycle events (registered, closed, refused before
//! Login) at debug; refusals (bad logins, bad frames, floods, refused admin requests) at info;
//! nothing per message at info.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// The filter: `RUST_LOG` if set (and valid), else `[log] level`.
pub fn filter(cfg: &LogConfig) -> EnvFilter {
    match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::builder()
            .parse(&v)
            .unwrap_or_else(|_| EnvFilter::new(&cfg.level)),
        _ => EnvFilter::new(&cfg.level),
    }
}

/// Installs the global subscriber (once per process; later calls do nothing).
pub fn init(cfg: &LogConfig) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter(cfg));
    let _ = match cfg.format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
    };
}

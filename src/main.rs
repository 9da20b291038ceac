//! The `ringpost` broker binary: configuration, preflight checks, signals, exit codes.
//!
//! Signals: SIGINT/SIGTERM shut down gracefully; SIGHUP reloads the login keys and the TLS
//! certificate (`shard::reloader`) without touching open connections.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ringpost::auth::{self, SecretSource};
use ringpost::config::Config;
use ringpost::diagnostics;
use ringpost::shard::Broker;

#[cfg(not(feature = "sysalloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Thread-per-core io_uring instant-messaging broker.
#[derive(Parser, Debug)]
#[command(name = "ringpost", version, about)]
struct Cli {
    /// Run with this TOML file (keys missing from it take the embedded defaults).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the embedded, documented default configuration and exit.
    #[arg(long, conflicts_with_all = ["config", "check_config"])]
    print_config: bool,
    /// Validate FILE and exit: 0 if valid, 2 with the reason if not.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check_config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.print_config {
        print!("{}", Config::DEFAULT_TOML);
        return ExitCode::SUCCESS;
    }
    if let Some(path) = cli.check_config {
        return match Config::load(&path) {
            Ok(cfg) => {
                println!(
                    "{}: ok ({} shards, listen {})",
                    path.display(),
                    cfg.shard_count(),
                    cfg.server.listen
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                ExitCode::from(2)
            }
        };
    }
    let cfg = match &cli.config {
        Some(path) => match Config::load(path) {
            Ok(cfg) => cfg,
            Err(e) => {
                eprintln!("ringpost: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => match Config::embedded_default() {
            Ok(cfg) => cfg,
            Err(e) => {
                eprintln!("ringpost: embedded default config: {e}");
                return ExitCode::from(2);
            }
        },
    };
    ringpost::logging::init(&cfg.log);
    if let Err(problem) = diagnostics::preflight(&cfg) {
        eprintln!("ringpost: cannot start: {problem}");
        return ExitCode::from(1);
    }
    let env_secret = std::env::var(auth::SECRET_ENV).ok();
    let primary = match auth::load_or_create_secret(&cfg.auth.secret_file, env_secret) {
        Ok((secret, source)) => {
            match &source {
                SecretSource::Env => tracing::info!("auth secret from {}", auth::SECRET_ENV),
                SecretSource::File(p) => tracing::info!(path = %p.display(), "auth secret loaded"),
                SecretSource::Created(p) => tracing::warn!(
                    path = %p.display(),
                    "auth secret did not exist; created one with 32 random bytes (mode 0600). Give it to the app backend that mints login tokens"
                ),
            }
            auth::PrimaryKey { secret, source }
        }
        Err(e) => {
            eprintln!("ringpost: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let admin_token = match load_admin_token(&cfg) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ringpost: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let grace = cfg.server.shutdown_grace;
    let tls_on = cfg.tls.files.is_some();
    let broker = match Broker::start(cfg, primary, &admin_token) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("ringpost: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    // Registered before the listening line: a script that signals the broker as soon as it
    // listens (SIGHUP included, whose default action would kill it) is always handled.
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ]);
    // Scripts and tests wait for this exact line.
    println!(
        "ringpost listening on {} with {} shards",
        broker.local_addr(),
        broker.shard_count()
    );
    // Always after the line above, which must stay the first.
    if let Some(ws) = broker.ws_addr() {
        println!("ringpost websocket on {ws}");
    }
    if let Some(addr) = broker.admin_addr() {
        // A later line, so that the first stays exactly the one above.
        println!("ringpost admin on {addr}");
    }
    if tls_on {
        tracing::info!("tls on for every client port (SIGHUP reloads the certificate)");
    }
    let handle = broker.shutdown_handle();
    let reload = broker.reload_handle();
    match signals {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                for sig in signals.forever() {
                    if sig == signal_hook::consts::SIGHUP {
                        // Keys and certificate; each part logs what happened.
                        tracing::info!("SIGHUP: reloading auth keys and tls certificate");
                        let _ = reload.reload();
                        continue;
                    }
                    tracing::info!(signal = sig, "shutting down");
                    handle.shutdown();
                    // Shards bound themselves by the grace; this is the backstop.
                    std::thread::sleep(grace + Duration::from_secs(2));
                    eprintln!("ringpost: shards did not stop within shutdown_grace; exiting");
                    std::process::exit(1);
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot install signal handlers"),
    }
    match broker.join() {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringpost: shard failure: {e}");
            ExitCode::from(1)
        }
    }
}

/// The admin API's bearer token (empty when `[admin] listen` is off): like the auth secret,
/// from the environment, or the token file, created on first start.
fn load_admin_token(cfg: &Config) -> Result<Vec<u8>, ringpost::auth::SecretError> {
    use ringpost::admin::{ADMIN_TOKEN, ADMIN_TOKEN_ENV};
    if cfg.admin.listen.is_none() {
        return Ok(Vec::new());
    }
    let env = std::env::var(ADMIN_TOKEN_ENV).ok();
    let (token, source) = ADMIN_TOKEN.load_or_create(&cfg.admin.token_file, env)?;
    match source {
        SecretSource::Env => tracing::info!("admin token from {ADMIN_TOKEN_ENV}"),
        SecretSource::File(p) => tracing::info!(path = %p.display(), "admin token loaded"),
        SecretSource::Created(p) => tracing::warn!(
            path = %p.display(),
            "admin token did not exist; created one with 32 random bytes (mode 0600). The app backend sends it as `Authorization: Bearer <token>`"
        ),
    }
    Ok(token)
}

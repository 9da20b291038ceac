//! `ringpost-tools token`: mint a login token the way an app backend would.
//!
//! The key comes from where the broker takes it: `RINGPOST_AUTH_SECRET` if set, else
//! `--secret-file` (default `data/auth.secret`, the broker's default `[auth] secret_file`).
//! With `--check ADDR` (and `--tls --ca-file` for a TLS broker) the token is first tried: a
//! login as `--device` (default `token-check`) that must succeed before the token is printed,
//! so a script never goes on with a token the broker refuses (wrong key, issuer, audience).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use glommio::{LocalExecutorBuilder, Placement};
use ringpost::auth;
use ringpost::client::{Client, ClientOptions};
use ringpost::config::units::parse_duration;

#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// File holding the HMAC key (the broker's `[auth] secret_file`); the environment variable
    /// RINGPOST_AUTH_SECRET overrides it, as it does for the broker.
    #[arg(long, default_value = "data/auth.secret")]
    pub secret_file: PathBuf,
    /// User ID to put in `sub` (1..=128 bytes).
    #[arg(long)]
    pub user: String,
    /// Lifetime of the token, e.g. "90s", "1h", "7d".
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// Key ID for the JWT header (`kid`): the name of the key's file in the broker's
    /// `[auth] secret_dir` (or of its secret_file). Without it the broker tries each key.
    #[arg(long)]
    pub kid: Option<String>,
    /// `iss` claim (the broker's `[auth] issuer`).
    #[arg(long)]
    pub issuer: Option<String>,
    /// `aud` claim (the broker's `[auth] audience`).
    #[arg(long)]
    pub audience: Option<String>,
    /// Log in with the token at this broker address before printing it (exit 1 with the
    /// broker's refusal if it does not take it).
    #[arg(long)]
    pub check: Option<SocketAddr>,
    /// Device ID for the --check login (a device of the user like any other).
    #[arg(long, default_value = "token-check", requires = "check")]
    pub device: String,
    #[command(flatten)]
    pub tls: crate::tlsargs::TlsArgs,
}

/// Prints the token on stdout; errors go to stderr with exit code 1.
pub fn run(args: &TokenArgs) -> ExitCode {
    let ttl = match parse_duration(&args.ttl) {
        Ok(ttl) => ttl,
        Err(e) => {
            eprintln!("--ttl: {e}");
            return ExitCode::from(1);
        }
    };
    let env = std::env::var(auth::SECRET_ENV).ok();
    let secret = match auth::AUTH_SECRET.load(&args.secret_file, env) {
        Ok((s, _)) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let extra = auth::Mint {
        kid: args.kid.clone(),
        issuer: args.issuer.clone(),
        audience: args.audience.clone(),
    };
    let token = match auth::mint_with(&secret, &args.user, ttl, &extra) {
        Ok(token) => token,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    if let Some(addr) = args.check {
        if let Err(e) = check(args, addr, &token) {
            eprintln!("token check at {addr}: {e}");
            return ExitCode::from(1);
        }
    }
    println!("{token}");
    ExitCode::SUCCESS
}

/// Logs in once with `token` and logs out; the broker's refusal as the error.
fn check(args: &TokenArgs, addr: SocketAddr, token: &str) -> Result<(), String> {
    let opts = args
        .tls
        .apply(ClientOptions::new(addr, token, args.device.clone()))?;
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(256 * 1024)
        .make()
        .map_err(|e| format!("cannot start the event loop (io_uring): {e}"))?;
    executor.run(async move {
        let mut client = Client::connect(&opts, 0).await.map_err(|e| e.to_string())?;
        let info = client.login_info().clone();
        eprintln!(
            "token check: logged in as {} on shard {} (head seq {})",
            info.user_id, info.shard, info.head_seq
        );
        // A clean goodbye; the login already proved the token.
        let _ = client.logout().await;
        Ok(())
    })
}

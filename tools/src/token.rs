//! `ringpost-tools token`: mint a login token the way an app backend would.
//!
//! The key comes from where the broker takes it: `RINGPOST_AUTH_SECRET` if set, else
//! `--secret-file` (default `data/auth.secret`, the broker's default `[auth] secret_file`).

use std::path::PathBuf;
use std::process::ExitCode;

use ringpost::auth;
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
    match auth::mint_with(&secret, &args.user, ttl, &extra) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

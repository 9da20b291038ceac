//! `ringpost-tools`: mint login tokens, chat interactively, and load-test a broker.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod chat;
mod inspect;
mod load;
mod spray;
mod tlsargs;
mod token;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "ringpost-tools",
    version,
    about = "Tools for the ringpost broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a login token (JWT HS256) for a user.
    Token(token::TokenArgs),
    /// Interactive client: `@user text` on stdin sends; deliveries print as they arrive.
    Chat(chat::ChatArgs),
    /// Show what a shard's log holds (read-only): segments, records, users, corruption.
    Inspect(inspect::InspectArgs),
    /// One user sends to many recipients that never logged in (memory per recipient).
    Spray(spray::SprayArgs),
    /// Load scenarios against a running broker.
    #[command(subcommand)]
    Load(load::LoadCommand),
}

fn main() -> ExitCode {
    exit_quietly_on_broken_pipe();
    match Cli::parse().command {
        Command::Token(args) => token::run(&args),
        Command::Chat(args) => chat::run(args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Load(cmd) => load::run(cmd),
        Command::Spray(args) => spray::run(args),
    }
}

/// A reader that goes away (`ringpost-tools inspect … | head`) ends every tool quietly, with
/// status 0, as it does a Unix filter. Rust ignores SIGPIPE, so the write fails with EPIPE and
/// the print macros panic on it; this hook turns that one panic into a quiet exit. (Restoring
/// SIGPIPE's default instead would also kill the network tools on a peer's reset: glommio
/// sends without MSG_NOSIGNAL.)
fn exit_quietly_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to std") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// For output written with `writeln!` (which returns the error instead of panicking): exits
/// quietly when the reader has gone away; any other error is ignored.
pub fn quiet_on_broken_pipe(written: std::io::Result<()>) {
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

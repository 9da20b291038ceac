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
    match Cli::parse().command {
        Command::Token(args) => token::run(&args),
        Command::Chat(args) => chat::run(args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Load(cmd) => load::run(cmd),
        Command::Spray(args) => spray::run(args),
    }
}

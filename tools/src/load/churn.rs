//! `load churn`: connections that keep disconnecting and reconnecting while messages flow.
//! (Being written; see issue 4.)

use std::process::ExitCode;

use super::CommonArgs;

#[derive(clap::Args, Debug)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}

pub fn run(_args: ChurnArgs) -> ExitCode {
    eprintln!("load churn: not built yet");
    ExitCode::from(2)
}

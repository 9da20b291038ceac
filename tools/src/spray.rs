//! `ringpost-tools spray`: one user sends one message to each of N distinct recipients that
//! never logged in — what an abusive account can do — and reports how the broker answered and,
//! with `--broker-pid`, how much its anonymous memory (RssAnon) grew per recipient.
//!
//! Sends keep `--window` unanswered at most; the broker's `limits.sends_per_sec` should be set
//! high for a measurement (the rate limit itself is one of the answers otherwise).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures_lite::future;
use glommio::{LocalExecutorBuilder, Placement};
use ringpost::client::{Client, ClientOptions, Event};
use ringpost::protocol::code_name;
use serde_json::json;

#[derive(clap::Args, Debug)]
pub struct SprayArgs {
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub addr: SocketAddr,
    /// The broker's auth secret file.
    #[arg(long)]
    pub secret_file: PathBuf,
    /// The sending user.
    #[arg(long, default_value = "sprayer")]
    pub user: String,
    /// Distinct recipients, named `<prefix>-<i>`.
    #[arg(long, default_value_t = 100_000)]
    pub recipients: u64,
    #[arg(long, default_value = "nobody")]
    pub prefix: String,
    /// Sends outstanding at most.
    #[arg(long, default_value_t = 1000)]
    pub window: u64,
    /// The broker's pid: report its RssAnon before and after (from /proc/PID/status).
    #[arg(long)]
    pub broker_pid: Option<u32>,
    #[command(flatten)]
    pub tls: crate::tlsargs::TlsArgs,
}

/// RssAnon of `pid` in bytes.
fn rss_anon(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn run(args: SprayArgs) -> ExitCode {
    let secret = match ringpost::auth::read_secret_file(&args.secret_file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let token = match ringpost::auth::mint(&secret, &args.user, Duration::from_secs(3600)) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let opts = match args
        .tls
        .apply(ClientOptions::new(args.addr, token, "spray"))
    {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let ex = match LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(256 * 1024)
        .make()
    {
        Ok(ex) => ex,
        Err(e) => {
            eprintln!("cannot start an executor: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = ex.run(spray(&args, opts));
    match outcome {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("spray: {e}");
            ExitCode::from(1)
        }
    }
}

async fn spray(args: &SprayArgs, opts: ClientOptions) -> Result<serde_json::Value, String> {
    let client = Client::connect(&opts, 0).await.map_err(|e| e.to_string())?;
    let (mut reader, mut writer) = client.split();
    let before = args.broker_pid.and_then(rss_anon);
    let started = Instant::now();
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let (mut sent, mut answered) = (0u64, 0u64);
    while answered < args.recipients {
        while sent < args.recipients && sent - answered < args.window {
            let to = format!("{}-{sent}", args.prefix);
            writer.queue(&ringpost::protocol::ClientMsg::Send {
                client_msg_id: sent + 1,
                to_user: &to,
                body: b"spray",
            });
            sent += 1;
        }
        writer.flush().await.map_err(|e| e.to_string())?;
        let next = future::or(async { Some(reader.recv().await) }, async {
            glommio::timer::sleep(Duration::from_secs(30)).await;
            None
        })
        .await;
        match next {
            None => return Err(format!("no answer for 30 s after {answered} of {sent}")),
            Some(Err(e)) => return Err(format!("after {answered} answers: {e}")),
            Some(Ok(Event::SendAck { status, .. })) => {
                answered += 1;
                *statuses.entry(code_name(status).to_owned()).or_default() += 1;
            }
            Some(Ok(Event::GoAway { code, reason })) => {
                return Err(format!("GoAway {}: {reason}", code_name(code)))
            }
            Some(Ok(_)) => {}
        }
    }
    let elapsed = started.elapsed();
    let after = args.broker_pid.and_then(rss_anon);
    let per = match (before, after) {
        (Some(b), Some(a)) => json!((a as f64 - b as f64) / args.recipients as f64),
        _ => json!(null),
    };
    Ok(json!({
        "recipients": args.recipients,
        "statuses": statuses,
        "seconds": elapsed.as_secs_f64(),
        "rss_anon_before": before,
        "rss_anon_after": after,
        "rss_anon_bytes_per_recipient": per,
    }))
}

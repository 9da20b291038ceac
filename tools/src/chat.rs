//! `ringpost-tools chat`: an interactive client.
//!
//! Stdin lines `@user text` send; deliveries print as they arrive (plain, or one JSON object per
//! event with `--json`) and are acked once printed. Pings keep the session alive; an unexpected
//! close reconnects with backoff, resumes after the last seq printed and resends what had no
//! SendAck yet (same client_msg_id, so never delivered twice). Once stdin has ended and every
//! send is answered, the client logs out and exits — also while the broker is unreachable,
//! instead of retrying for ever with nothing left to do.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures_lite::future;
use futures_lite::io::{AsyncBufReadExt, BufReader};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::{LocalExecutorBuilder, Placement};
use ringpost::client::{Backoff, Client, ClientError, ClientOptions, Event, Reader, Writer};
use ringpost::protocol::{code_name, Code};
use serde_json::json;

#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub addr: SocketAddr,
    /// Login token (see `ringpost-tools token`).
    #[arg(long)]
    pub token: String,
    /// Device ID of this client (each device gets every message).
    #[arg(long, default_value = "chat")]
    pub device: String,
    /// Highest seq this device already has; the broker replays what follows.
    #[arg(long, default_value_t = 0)]
    pub last_seq: u64,
    /// One JSON object per event on stdout.
    #[arg(long)]
    pub json: bool,
}

/// What the stdin task asks the session to do.
enum Command {
    Send { to: String, text: String },
    Eof,
}

/// How one connection ended.
enum Ended {
    /// Stdin closed and the broker said goodbye (or we stopped waiting): exit 0.
    Done,
    /// The broker closed on us: reconnect.
    Lost(String),
    /// The broker closed for good (e.g. shutdown is not retried forever, auth is never).
    Fatal(u8, String),
}

pub fn run(args: ChatArgs) -> ExitCode {
    let (stdin_ours, stdin_theirs) = match std::os::unix::net::UnixStream::pair() {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("cannot create stdin pipe: {e}");
            return ExitCode::from(1);
        }
    };
    // glommio cannot read stdin; a plain thread forwards its lines through a socketpair.
    std::thread::spawn(move || {
        let mut out = stdin_ours;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if writeln!(out, "{line}").is_err() {
                break;
            }
        }
        // Dropping `out` signals EOF to the session.
    });
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(256 * 1024)
        .make();
    let executor = match executor {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cannot start the event loop (io_uring): {e}");
            return ExitCode::from(1);
        }
    };
    let fd = OwnedFd::from(stdin_theirs);
    executor.run(async move { session(args, fd).await })
}

async fn session(args: ChatArgs, stdin: OwnedFd) -> ExitCode {
    let (cmd_tx, cmd_rx) = local_channel::new_unbounded();
    // SAFETY: one end of a socketpair created for us; ownership moves into the stream.
    let stdin = unsafe { glommio::net::UnixStream::from_raw_fd(stdin.into_raw_fd()) };
    glommio::spawn_local(read_stdin(stdin, cmd_tx)).detach();

    let opts = ClientOptions::new(args.addr, args.token.clone(), args.device.clone());
    let mut backoff = Backoff::default();
    let mut state = State {
        last_seq: args.last_seq,
        // A random start below 2^48 (exact in JSON doubles), so that a new session does not
        // reuse the IDs of a recent one inside the broker's dedup window.
        next_id: rand::random::<u64>() >> 16,
        input_done: false,
        unacked: BTreeMap::new(),
    };
    let mut connected_once = false;
    loop {
        let client = match Client::connect(&opts, state.last_seq).await {
            Ok(c) => c,
            Err(ClientError::Rejected { code, message }) if !transient(code) => {
                eprintln!("login failed: {} ({}): {message}", code_name(code), code.0);
                return ExitCode::from(2);
            }
            Err(e) if !connected_once => {
                eprintln!("cannot connect to {}: {e}", args.addr);
                return ExitCode::from(1);
            }
            Err(e) => {
                eprintln!("reconnect failed: {e}; retrying");
                if wait_or_input(&cmd_rx, &mut state, backoff.next_delay()).await {
                    return finished();
                }
                continue;
            }
        };
        backoff.reset();
        connected_once = true;
        let info = client.login_info().clone();
        print_event(
            args.json,
            json!({"event": "login", "user": info.user_id, "shard": info.shard,
                   "head_seq": info.head_seq, "oldest_seq": info.oldest_seq, "gap": info.gap}),
            &format!(
                "logged in as {} on shard {} (head seq {}{})",
                info.user_id,
                info.shard,
                info.head_seq,
                if info.gap {
                    ", some messages were no longer retained"
                } else {
                    ""
                }
            ),
        );
        let heartbeat = Duration::from_millis(u64::from(info.heartbeat_ms.max(200)) / 2);
        let (reader, writer) = client.split();
        match serve(&args, reader, writer, &cmd_rx, heartbeat, &mut state).await {
            Ended::Done => return ExitCode::SUCCESS,
            Ended::Fatal(code, why) => {
                eprintln!("{why}");
                return ExitCode::from(code);
            }
            Ended::Lost(why) if state.finished() => {
                eprintln!("connection lost ({why})");
                return finished();
            }
            Ended::Lost(why) => {
                eprintln!(
                    "connection lost ({why}); reconnecting after seq {}",
                    state.last_seq
                );
                if wait_or_input(&cmd_rx, &mut state, backoff.next_delay()).await {
                    return finished();
                }
            }
        }
    }
}

/// What a session carries across reconnects.
struct State {
    /// Highest seq printed (and acked): the next login resumes after it.
    last_seq: u64,
    next_id: u64,
    /// Stdin has ended: no more sends will come.
    input_done: bool,
    /// Sends without a SendAck yet, by client_msg_id, resent after a reconnect (with the same
    /// IDs, so the broker's dedup never delivers one twice).
    unacked: BTreeMap<u64, (String, String)>,
}

impl State {
    /// Input is done and nothing is in flight: nothing left to do.
    fn finished(&self) -> bool {
        self.input_done && self.unacked.is_empty()
    }

    /// Takes a send from stdin: a new ID, remembered until its SendAck.
    fn queue(&mut self, to: String, text: String) -> u64 {
        self.next_id += 1;
        self.unacked.insert(self.next_id, (to, text));
        self.next_id
    }
}

fn finished() -> ExitCode {
    eprintln!("input is done and nothing is in flight; exiting");
    ExitCode::SUCCESS
}

/// Waits `delay` before a reconnect while still taking stdin; true once the session is
/// finished (stdin ended with nothing in flight), so there is no need to reconnect.
async fn wait_or_input(
    commands: &LocalReceiver<Command>,
    state: &mut State,
    delay: Duration,
) -> bool {
    let until = Instant::now() + delay;
    while !state.finished() {
        let left = until.saturating_duration_since(Instant::now());
        if state.input_done {
            glommio::timer::sleep(left).await;
            return false;
        }
        let got = future::or(async { Some(commands.recv().await) }, async {
            glommio::timer::sleep(left).await;
            None
        })
        .await;
        match got {
            None => return false,
            Some(Some(Command::Send { to, text })) => {
                state.queue(to, text);
            }
            Some(Some(Command::Eof)) | Some(None) => state.input_done = true,
        }
    }
    true
}

fn transient(code: Code) -> bool {
    matches!(code, Code::SHUTDOWN | Code::LOGIN_TIMEOUT)
}

/// One event from the select in [`serve`].
enum Step {
    Server(Result<Event, ClientError>),
    Stdin(Option<Command>),
    PingDue,
}

async fn serve(
    args: &ChatArgs,
    mut reader: Reader,
    mut writer: Writer,
    commands: &LocalReceiver<Command>,
    heartbeat: Duration,
    state: &mut State,
) -> Ended {
    let mut next_ping = Instant::now() + heartbeat;
    let mut logging_out: Option<Instant> = None;
    // What the last connection left unanswered goes again, under its own IDs.
    for (id, (to, text)) in &state.unacked {
        if let Err(e) = writer.send(*id, to, text.as_bytes()).await {
            return Ended::Lost(e.to_string());
        }
    }
    loop {
        if state.finished() && logging_out.is_none() {
            logging_out = Some(Instant::now());
            next_ping = Instant::now() + Duration::from_secs(1);
            if let Err(e) = writer
                .send_msg(&ringpost::protocol::ClientMsg::Logout)
                .await
            {
                return Ended::Lost(e.to_string());
            }
        }
        let wait_ping = next_ping.saturating_duration_since(Instant::now());
        let stdin_open = !state.input_done;
        let step = future::or(
            async { Step::Server(reader.recv().await) },
            future::or(
                async {
                    if !stdin_open {
                        future::pending::<()>().await;
                    }
                    Step::Stdin(commands.recv().await)
                },
                async {
                    glommio::timer::sleep(wait_ping).await;
                    Step::PingDue
                },
            ),
        )
        .await;
        let result = match step {
            Step::Server(Ok(event)) => {
                if let Some(end) = show(args.json, &event, logging_out.is_some()) {
                    return end;
                }
                match &event {
                    Event::Deliver(d) => {
                        state.last_seq = state.last_seq.max(d.seq);
                        writer.ack(d.seq).await
                    }
                    Event::SendAck { client_msg_id, .. } => {
                        state.unacked.remove(client_msg_id);
                        Ok(())
                    }
                    _ => Ok(()),
                }
            }
            Step::Server(Err(e)) => {
                return if logging_out.is_some() {
                    Ended::Done
                } else {
                    Ended::Lost(e.to_string())
                }
            }
            Step::Stdin(Some(Command::Send { to, text })) => {
                let id = state.queue(to.clone(), text.clone());
                writer.send(id, &to, text.as_bytes()).await
            }
            Step::Stdin(Some(Command::Eof)) | Step::Stdin(None) => {
                state.input_done = true;
                Ok(()) // the loop logs out once nothing is in flight
            }
            Step::PingDue => {
                if logging_out.is_some() {
                    return Ended::Done; // no GoAway within a second: we are done anyway
                }
                next_ping = Instant::now() + heartbeat;
                writer.ping(0).await
            }
        };
        if let Err(e) = result {
            return Ended::Lost(e.to_string());
        }
    }
}

/// Prints one server event; returns how the session ends if the event ends it.
fn show(json_mode: bool, event: &Event, logging_out: bool) -> Option<Ended> {
    match event {
        Event::Deliver(d) => {
            let body = String::from_utf8_lossy(&d.body);
            print_event(
                json_mode,
                json!({"event": "deliver", "seq": d.seq, "from": d.from_user,
                       "client_msg_id": d.client_msg_id, "sent_at_ms": d.sent_at_ms, "body": body}),
                &format!("[{}] {}: {}", d.seq, d.from_user, body),
            );
            None
        }
        Event::SendAck {
            client_msg_id,
            status,
        } => {
            print_event(
                json_mode,
                json!({"event": "send_ack", "client_msg_id": client_msg_id,
                       "status": code_name(*status), "code": status.0}),
                &format!("(sent #{client_msg_id}: {})", code_name(*status)),
            );
            None
        }
        Event::Pong { .. } => None,
        Event::GoAway { code, reason } => {
            print_event(
                json_mode,
                json!({"event": "goaway", "code": code.0, "name": code_name(*code), "reason": reason}),
                &format!(
                    "server closing: {} ({}): {reason}",
                    code_name(*code),
                    code.0
                ),
            );
            Some(if logging_out || *code == Code::LOGGED_OUT {
                Ended::Done
            } else if matches!(
                *code,
                Code::SHUTDOWN | Code::IDLE_TIMEOUT | Code::SLOW_CONSUMER
            ) {
                Ended::Lost(code_name(*code).to_string())
            } else {
                Ended::Fatal(1, format!("closed by the broker: {}", code_name(*code)))
            })
        }
        Event::Error { code, message } => {
            print_event(
                json_mode,
                json!({"event": "error", "code": code.0, "name": code_name(*code), "message": message}),
                &format!("error: {} ({}): {message}", code_name(*code), code.0),
            );
            Some(Ended::Fatal(1, format!("rejected: {}", code_name(*code))))
        }
    }
}

fn print_event(json_mode: bool, value: serde_json::Value, text: &str) {
    let mut out = std::io::stdout().lock();
    let written = if json_mode {
        writeln!(out, "{value}")
    } else {
        writeln!(out, "{text}")
    };
    crate::quiet_on_broken_pipe(written.and_then(|()| out.flush()));
}

async fn read_stdin(stdin: glommio::net::UnixStream, commands: LocalSender<Command>) {
    let mut lines = BufReader::new(stdin);
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = line.trim_end_matches(['\r', '\n']);
        if text.trim().is_empty() {
            continue;
        }
        match text.strip_prefix('@').and_then(|rest| rest.split_once(' ')) {
            Some((to, msg)) if !to.is_empty() => {
                let cmd = Command::Send {
                    to: to.to_string(),
                    text: msg.to_string(),
                };
                if commands.send(cmd).await.is_err() {
                    return;
                }
            }
            _ => eprintln!("usage: @user message"),
        }
    }
    let _ = commands.send(Command::Eof).await;
}

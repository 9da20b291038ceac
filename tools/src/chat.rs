//! `ringpost-tools chat`: an interactive client.
//!
//! Stdin lines (see [`USAGE`]): `@user text` sends to a user, `#group text` to a group, and
//! `/create`, `/add`, `/remove`, `/leave`, `/groups`, `/members` manage groups. Deliveries
//! print as they arrive (plain, or one JSON object per event with `--json`) and are acked once
//! printed. With own-send sync, what this user sends from other devices prints as `me -> …`;
//! the echo of this device's own sends is printed only in `--json` (as `"echo": true`), so each
//! message shows once. Pings keep the session alive; an unexpected close reconnects with
//! backoff, resumes after the last seq printed and resends what had no SendAck yet (same
//! client_msg_id, so never delivered twice). Once stdin has ended and every send is answered,
//! the client logs out and exits — also while the broker is unreachable, instead of retrying
//! for ever with nothing left to do.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures_lite::future;
use futures_lite::io::{AsyncBufReadExt, BufReader};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::{LocalExecutorBuilder, Placement};
use ringpost::client::{
    Backoff, Client, ClientError, ClientOptions, Delivery, Event, Reader, Writer,
};
use ringpost::protocol::{code_name, Code, EntryKind, GroupOp, Names};
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
    #[command(flatten)]
    pub tls: crate::tlsargs::TlsArgs,
}

/// What the stdin task asks the session to do.
enum Command {
    Send {
        to: String,
        text: String,
    },
    GroupSend {
        group: String,
        text: String,
    },
    /// A group operation; the reply prints as it comes.
    Group {
        group: String,
        op: GroupCommand,
    },
    ListGroups,
    Eof,
}

#[derive(Debug)]
enum GroupCommand {
    Create(Vec<String>),
    Add(Vec<String>),
    Remove(Vec<String>),
    Leave,
    Members(String),
}

/// What stdin lines mean.
pub const USAGE: &str = "@user text | #group text | /create GROUP [user …] | /add GROUP user … | \
/remove GROUP user … | /leave GROUP | /groups | /members GROUP [after]";

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
    let opts = match args.tls.apply(opts) {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("--tls-name: {e}");
            return ExitCode::from(2);
        }
    };
    let mut backoff = Backoff::default();
    let mut state = State {
        last_seq: args.last_seq,
        // A random start below 2^48 (exact in JSON doubles), so that a new session does not
        // reuse the IDs of a recent one inside the broker's dedup window.
        next_id: rand::random::<u64>() >> 16,
        input_done: false,
        unacked: BTreeMap::new(),
        requests: BTreeSet::new(),
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
    unacked: BTreeMap<u64, (Target, String)>,
    /// Group operations of this connection waiting for their GroupReply (not resent after a
    /// reconnect: a create or add is not idempotent; the reply is lost with the connection).
    requests: BTreeSet<u64>,
}

/// Where a send goes.
#[derive(Debug, Clone)]
enum Target {
    User(String),
    Group(String),
}

impl State {
    /// Input is done and nothing is in flight: nothing left to do.
    fn finished(&self) -> bool {
        self.input_done && self.unacked.is_empty() && self.requests.is_empty()
    }

    /// Takes a send from stdin: a new ID, remembered until its SendAck.
    fn queue(&mut self, to: Target, text: String) -> u64 {
        self.next_id += 1;
        self.unacked.insert(self.next_id, (to, text));
        self.next_id
    }

    /// A group operation's request id, remembered until its reply.
    fn request(&mut self) -> u64 {
        self.next_id += 1;
        self.requests.insert(self.next_id);
        self.next_id
    }
}

/// Writes one send (a first try or a resend under the same id).
async fn write_send(
    writer: &mut Writer,
    id: u64,
    to: &Target,
    text: &str,
) -> Result<(), ClientError> {
    match to {
        Target::User(user) => writer.send(id, user, text.as_bytes()).await,
        Target::Group(group) => writer.group_send(id, group, text.as_bytes()).await,
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
                state.queue(Target::User(to), text);
            }
            Some(Some(Command::GroupSend { group, text })) => {
                state.queue(Target::Group(group), text);
            }
            Some(Some(Command::Group { .. } | Command::ListGroups)) => {
                eprintln!(
                    "not connected: group requests need a connection; try again once it is back"
                );
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
    // What the last connection left unanswered goes again, under its own IDs; its group
    // requests are lost with it.
    state.requests.clear();
    for (id, (to, text)) in &state.unacked {
        if let Err(e) = write_send(&mut writer, *id, to, text).await {
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
                    Event::GroupReply(r) => {
                        state.requests.remove(&r.request_id);
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
                let to = Target::User(to);
                let id = state.queue(to.clone(), text.clone());
                write_send(&mut writer, id, &to, &text).await
            }
            Step::Stdin(Some(Command::GroupSend { group, text })) => {
                let to = Target::Group(group);
                let id = state.queue(to.clone(), text.clone());
                write_send(&mut writer, id, &to, &text).await
            }
            Step::Stdin(Some(Command::Group { group, op })) => {
                let id = state.request();
                let names: Vec<&str> = match &op {
                    GroupCommand::Create(m) | GroupCommand::Add(m) | GroupCommand::Remove(m) => {
                        m.iter().map(String::as_str).collect()
                    }
                    _ => Vec::new(),
                };
                let members = Names::Slice(&names);
                let op = match &op {
                    GroupCommand::Create(_) => GroupOp::Create { members },
                    GroupCommand::Add(_) => GroupOp::Add { members },
                    GroupCommand::Remove(_) => GroupOp::Remove { members },
                    GroupCommand::Leave => GroupOp::Leave,
                    GroupCommand::Members(after) => GroupOp::Info { after, limit: 0 },
                };
                writer.group_op(id, &group, op).await
            }
            Step::Stdin(Some(Command::ListGroups)) => {
                let id = state.request();
                writer.group_list(id).await
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
            let text = delivery_text(d, &body);
            let value = json!({"event": "deliver", "seq": d.seq, "from": d.from_user,
                   "client_msg_id": d.client_msg_id, "sent_at_ms": d.sent_at_ms, "body": body,
                   "group": (!d.group_id.is_empty()).then_some(&d.group_id),
                   "group_seq": (d.group_seq > 0).then_some(d.group_seq),
                   "kind": d.kind.variant_name().unwrap_or("Unknown"),
                   "outgoing": d.outgoing, "echo": d.echo,
                   "to": (!d.to_user.is_empty()).then_some(&d.to_user),
                   "members": (!d.members.is_empty()).then_some(&d.members)});
            if json_mode || !d.echo {
                print_event(json_mode, value, &text);
            }
            None
        }
        Event::GroupReply(r) => {
            let members: Vec<serde_json::Value> = r
                .members
                .iter()
                .map(|(u, admin)| json!({"user": u, "admin": admin}))
                .collect();
            let text = if r.status != Code::OK {
                format!(
                    "(group request #{}: {} ({}): {})",
                    r.request_id,
                    code_name(r.status),
                    r.status.0,
                    r.message
                )
            } else if !r.members.is_empty() {
                let names: Vec<String> = r
                    .members
                    .iter()
                    .map(|(u, admin)| {
                        if *admin {
                            format!("{u} (admin)")
                        } else {
                            u.clone()
                        }
                    })
                    .collect();
                let more = if r.next_after.is_empty() {
                    String::new()
                } else {
                    format!(" … more after {}", r.next_after)
                };
                format!(
                    "#{} has {} members: {}{more}",
                    r.group_id,
                    r.member_count,
                    names.join(", ")
                )
            } else if r.group_id.is_empty() {
                format!("groups: {}", r.groups.join(", "))
            } else {
                format!(
                    "(group request #{}: OK, #{} at group_seq {})",
                    r.request_id, r.group_id, r.group_seq
                )
            };
            print_event(
                json_mode,
                json!({"event": "group_reply", "request_id": r.request_id,
                       "status": code_name(r.status), "code": r.status.0, "group": r.group_id,
                       "group_seq": r.group_seq, "groups": r.groups, "members": members,
                       "member_count": r.member_count, "next_after": r.next_after,
                       "message": r.message}),
                &text,
            );
            None
        }
        Event::SendAck {
            client_msg_id,
            status,
            own_seq,
        } => {
            let at = match own_seq {
                0 => String::new(),
                seq => format!(", your seq {seq}"),
            };
            print_event(
                json_mode,
                json!({"event": "send_ack", "client_msg_id": client_msg_id,
                       "status": code_name(*status), "code": status.0, "own_seq": own_seq}),
                &format!("(sent #{client_msg_id}: {}{at})", code_name(*status)),
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

/// One delivery as a line of text.
fn delivery_text(d: &Delivery, body: &str) -> String {
    let who = |u: &str| u.to_owned();
    match d.kind {
        EntryKind::GroupCreated => format!(
            "[{}] #{}: {} created the group with {}",
            d.seq,
            d.group_id,
            d.from_user,
            d.members.join(", ")
        ),
        EntryKind::MembersAdded => format!(
            "[{}] #{}: {} added {}",
            d.seq,
            d.group_id,
            d.from_user,
            d.members.join(", ")
        ),
        EntryKind::MembersRemoved => format!(
            "[{}] #{}: {} removed {}",
            d.seq,
            d.group_id,
            d.from_user,
            d.members.join(", ")
        ),
        EntryKind::MemberLeft => format!("[{}] #{}: {} left", d.seq, d.group_id, d.from_user),
        _ if d.is_group() => {
            let from = if d.outgoing {
                "me".into()
            } else {
                who(&d.from_user)
            };
            format!("[{}] #{} {from}: {body}", d.seq, d.group_id)
        }
        _ if d.outgoing => format!("[{}] me -> {}: {body}", d.seq, d.to_user),
        _ => format!("[{}] {}: {body}", d.seq, d.from_user),
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
        match parse_command(text) {
            Some(cmd) => {
                if commands.send(cmd).await.is_err() {
                    return;
                }
            }
            None => eprintln!("usage: {USAGE}"),
        }
    }
    let _ = commands.send(Command::Eof).await;
}

/// One stdin line as a command (None: not one; the usage is printed).
fn parse_command(text: &str) -> Option<Command> {
    if let Some(rest) = text.strip_prefix('@') {
        let (to, msg) = rest.split_once(' ')?;
        return (!to.is_empty()).then(|| Command::Send {
            to: to.to_string(),
            text: msg.to_string(),
        });
    }
    if let Some(rest) = text.strip_prefix('#') {
        let (group, msg) = rest.split_once(' ')?;
        return (!group.is_empty()).then(|| Command::GroupSend {
            group: group.to_string(),
            text: msg.to_string(),
        });
    }
    let mut words = text.strip_prefix('/')?.split_whitespace();
    let verb = words.next()?;
    if verb == "groups" {
        return Some(Command::ListGroups);
    }
    let group = words.next()?.to_string();
    let rest: Vec<String> = words.map(str::to_string).collect();
    let op = match verb {
        "create" => GroupCommand::Create(rest),
        "add" if !rest.is_empty() => GroupCommand::Add(rest),
        "remove" if !rest.is_empty() => GroupCommand::Remove(rest),
        "leave" => GroupCommand::Leave,
        "members" => GroupCommand::Members(rest.first().cloned().unwrap_or_default()),
        _ => return None,
    };
    Some(Command::Group { group, op })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_lines_parse_into_commands() {
        assert!(
            matches!(parse_command("@bob hi there"), Some(Command::Send { to, text }) if to == "bob" && text == "hi there")
        );
        assert!(
            matches!(parse_command("#team hello"), Some(Command::GroupSend { group, .. }) if group == "team")
        );
        assert!(matches!(
            parse_command("/create team bob carol"),
            Some(Command::Group { group, op: GroupCommand::Create(m) }) if group == "team" && m == ["bob", "carol"]
        ));
        assert!(matches!(
            parse_command("/leave team"),
            Some(Command::Group {
                op: GroupCommand::Leave,
                ..
            })
        ));
        assert!(matches!(
            parse_command("/groups"),
            Some(Command::ListGroups)
        ));
        assert!(
            matches!(parse_command("/members team carol"), Some(Command::Group { op: GroupCommand::Members(a), .. }) if a == "carol")
        );
        assert!(parse_command("/add team").is_none(), "add needs users");
        assert!(parse_command("hello").is_none());
        assert!(parse_command("@bob").is_none());
    }
}

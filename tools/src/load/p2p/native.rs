//! The ringpost side of `load p2p`: every device of every user is a [`Client`] over the native
//! protocol (TCP, WebSocket or TLS, as `--addr` says); device 0 of each user runs the send
//! schedule, the others only ack, and every device's reader checks what it receives against
//! the partner's ledger ([`verify::DeviceStream`]). SendAck, Deliver and own-send echoes come
//! over the same connection.

use std::cell::{Cell, RefCell};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringpost::client::{Client, Event, Reader, Writer};
use ringpost::protocol::ClientMsg;

use super::super::verify::{self, AckOutcome, Delivered, DeviceStream, Expect, Ledger};
use super::super::{ack_until_stop, run_generators, Endpoint, Live, StartLine, Tokens};
use super::shared::{Outcome, Schedule, Sending, Shared};
use super::{pair_names, report, P2pArgs};

/// One user: how its sends were answered, and its devices.
struct UserState {
    name: String,
    tag: u64,
    ledger: RefCell<Ledger>,
    devices: Vec<Rc<Device>>,
}

/// One device (connection) of a user: what it received.
struct Device {
    stream: RefCell<DeviceStream>,
    /// Highest Deliver.seq to ack, set by the reader, sent by the writer task.
    ack_due: Cell<u64>,
}

pub(super) fn run(args: &P2pArgs, sched: Schedule) -> ExitCode {
    let tokens = match Tokens::load_or_exit(&args.common) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let names = pair_names(args);
    let devices = args.devices.plan(args.users);
    let threads = sched.threads;
    let live = Arc::new(Live::default());
    // Every thread schedules against the same start, a moment after all have logged in.
    let outcomes = run_generators("load", threads, &live, |t, start| {
        let my_pairs: Vec<PairSpec> = names
            .iter()
            .enumerate()
            .skip(t)
            .step_by(threads)
            .map(|(k, (a, b))| PairSpec {
                a: a.clone(),
                b: b.clone(),
                devices: (devices[2 * k], devices[2 * k + 1]),
            })
            .collect();
        let thread = Thread {
            addr: args.common.endpoint(),
            tokens: tokens.clone(),
            sched,
            cross_shard_only: args.pairs_cross_shard_only,
            live: live.clone(),
        };
        move || async move { generator(thread, my_pairs, start).await }
    });
    let outcomes = match outcomes {
        Ok(o) => o,
        Err(code) => return code,
    };
    let multi = devices.iter().filter(|d| **d > 1).count();
    report(args, outcomes, threads, multi)
}

struct PairSpec {
    a: String,
    b: String,
    /// Devices of a and of b.
    devices: (usize, usize),
}

/// What a generator thread is given besides its pairs.
struct Thread {
    addr: Endpoint,
    tokens: Tokens,
    sched: Schedule,
    cross_shard_only: bool,
    live: Arc<Live>,
}

/// Logs in every device of `name`; `Err` names the first that failed.
async fn log_in(
    addr: &Endpoint,
    tokens: &Tokens,
    name: &str,
    devices: usize,
) -> Result<Vec<Client>, String> {
    let token = tokens.mint(name)?;
    let mut clients = Vec::with_capacity(devices);
    for d in 0..devices {
        let opts = addr.options(token.clone(), format!("load-d{d}"));
        clients.push(
            Client::connect(&opts, 0)
                .await
                .map_err(|e| format!("{name} device {d}: {e}"))?,
        );
    }
    Ok(clients)
}

async fn generator(
    thread: Thread,
    pairs: Vec<PairSpec>,
    start: StartLine,
) -> Result<Outcome, String> {
    let Thread {
        addr,
        tokens,
        sched,
        cross_shard_only,
        live,
    } = thread;
    // (name, devices) of each user in pair order: user 2p and 2p+1 are partners.
    let mut users: Vec<(String, Vec<Client>)> = Vec::new();
    let mut login_failures = Vec::new();
    let mut conn_errors = 0u64;
    for p in &pairs {
        let a = log_in(&addr, &tokens, &p.a, p.devices.0).await;
        let b = log_in(&addr, &tokens, &p.b, p.devices.1).await;
        match (a, b) {
            (Ok(a), Ok(b)) => {
                if cross_shard_only && a[0].login_info().shard == b[0].login_info().shard {
                    conn_errors += 1; // the pairing promised different shards and the broker disagrees
                }
                users.push((p.a.clone(), a));
                users.push((p.b.clone(), b));
            }
            (a, b) => login_failures.extend([a.err(), b.err()].into_iter().flatten()),
        }
    }
    let t0 = start.arrive();

    let shared = Shared::new(t0, &sched, live, conn_errors)?;
    let n = sched.per_sender as usize;
    let states: Vec<Rc<UserState>> = users
        .iter()
        .map(|(name, clients)| {
            Rc::new(UserState {
                name: name.clone(),
                tag: verify::sender_tag(name),
                ledger: RefCell::new(Ledger::new(n)),
                devices: clients
                    .iter()
                    .map(|_| {
                        Rc::new(Device {
                            stream: RefCell::new(DeviceStream::new(n)),
                            ack_due: Cell::new(0),
                        })
                    })
                    .collect(),
            })
        })
        .collect();
    let senders = states.len();
    let connections: usize = states.iter().map(|u| u.devices.len()).sum();
    let mut tasks = Vec::new();
    for (i, (_, clients)) in users.into_iter().enumerate() {
        let (me, partner) = (&states[i], &states[i ^ 1]);
        for (d, client) in clients.into_iter().enumerate() {
            // Send something at least twice per heartbeat so the broker's idle timeout never
            // fires.
            let keepalive =
                Duration::from_millis(u64::from(client.login_info().heartbeat_ms.max(200)) / 2);
            let (reader, writer) = client.split();
            let dev = me.devices[d].clone();
            if d == 0 {
                let phase = sched.interval.mul_f64(rand::random::<f64>());
                tasks.push(glommio::spawn_local(send_loop(
                    shared.clone(),
                    me.clone(),
                    writer,
                    partner.name.clone(),
                    sched,
                    phase,
                    keepalive,
                )));
            } else {
                tasks.push(glommio::spawn_local(ack_loop(
                    shared.clone(),
                    dev.clone(),
                    writer,
                    keepalive,
                )));
            }
            let receiver = Receiver {
                me: me.clone(),
                partner: partner.clone(),
                dev,
                sends: d == 0,
            };
            glommio::spawn_local(receive_loop(shared.clone(), receiver, reader)).detach();
        }
    }

    shared
        .drain(tasks, senders, connections, sched.drain_timeout)
        .await;
    // User i's acked sends must reach every device of its partner (i ^ 1).
    let checks = states.iter().enumerate().map(|(i, u)| {
        let partner = states[i ^ 1].devices.iter().map(|d| &d.stream).collect();
        (&u.ledger, partner)
    });
    Ok(shared.outcome(checks, connections, login_failures))
}

/// While waiting for the next send, pending deliveries are acked once this much time or 100
/// deliveries have passed since the last ack (and every send carries an ack when one is due).
const ACK_EVERY: Duration = Duration::from_millis(50);
/// How often a device that only receives (and a sender once its sends are done) acks.
const DRAIN_ACK_EVERY: Duration = Duration::from_millis(20);

async fn send_loop(
    shared: Rc<Shared>,
    me: Rc<UserState>,
    writer: Writer,
    partner: String,
    sched: Schedule,
    phase: Duration,
    keepalive: Duration,
) {
    let dev = me.devices[0].clone();
    let mut conn = SendConn {
        dev: &dev,
        writer,
        partner: &partner,
        keepalive,
        acked_up_to: 0,
        last_write: Instant::now(),
        last_ack: Instant::now(),
    };
    shared
        .send_scheduled(&sched, phase, me.tag, &me.ledger, &mut conn)
        .await;
    // Keep acking what arrives until the run is over, so inboxes drain.
    let acked_up_to = conn.acked_up_to;
    ack_until_stop(
        &shared.stop,
        &dev.ack_due,
        &mut conn.writer,
        acked_up_to,
        DRAIN_ACK_EVERY,
        keepalive,
    )
    .await;
}

/// Device 0 of a user as the schedule drives it: its sends, and between them the acks of what
/// arrived (every [`ACK_EVERY`]) and the pings that keep the connection alive.
struct SendConn<'a> {
    dev: &'a Device,
    writer: Writer,
    partner: &'a str,
    keepalive: Duration,
    acked_up_to: u64,
    last_write: Instant,
    last_ack: Instant,
}

impl Sending for SendConn<'_> {
    const TICK: Duration = ACK_EVERY;

    async fn idle(&mut self, k: u64) -> Result<(), ()> {
        let due = self.dev.ack_due.get();
        let ack = due > self.acked_up_to
            && (due - self.acked_up_to >= 100 || self.last_ack.elapsed() >= ACK_EVERY);
        let ping = self.last_write.elapsed() >= self.keepalive;
        if ack || ping {
            if ack {
                self.last_ack = Instant::now();
                self.writer.queue(&ClientMsg::Ack { up_to_seq: due });
                self.acked_up_to = due;
            }
            if ping {
                self.writer.queue(&ClientMsg::Ping { nonce: k });
            }
            self.flush().await?;
        }
        Ok(())
    }

    fn before_batch(&mut self) {
        let due = self.dev.ack_due.get();
        if due > self.acked_up_to {
            self.writer.queue(&ClientMsg::Ack { up_to_seq: due });
            self.acked_up_to = due;
            self.last_ack = Instant::now();
        }
    }

    async fn queue(&mut self, k: u64, body: &[u8]) -> Result<(), ()> {
        self.writer.queue(&ClientMsg::Send {
            client_msg_id: k,
            to_user: self.partner,
            body,
        });
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ()> {
        self.writer.flush().await.map_err(|_| ())?;
        self.last_write = Instant::now();
        Ok(())
    }
}

/// A receiving-only device: acks what arrives and keeps the connection alive.
async fn ack_loop(shared: Rc<Shared>, dev: Rc<Device>, mut writer: Writer, keepalive: Duration) {
    ack_until_stop(
        &shared.stop,
        &dev.ack_due,
        &mut writer,
        0,
        DRAIN_ACK_EVERY,
        keepalive,
    )
    .await;
}

/// What one connection's reader checks against.
struct Receiver {
    me: Rc<UserState>,
    partner: Rc<UserState>,
    dev: Rc<Device>,
    /// Device 0, the one that sends: the only one SendAcks may come to.
    sends: bool,
}

async fn receive_loop(shared: Rc<Shared>, r: Receiver, mut reader: Reader) {
    loop {
        match reader.recv().await {
            Ok(Event::SendAck {
                client_msg_id,
                status,
                own_seq,
            }) => {
                if !r.sends {
                    shared.ack_mismatched(); // this device sent nothing
                    continue;
                }
                let outcome = r.me.ledger.borrow_mut().on_ack(
                    &mut shared.acks.borrow_mut(),
                    client_msg_id,
                    status,
                );
                match outcome {
                    AckOutcome::Ok => {
                        // Own-send sync: the copy the broker passes over for this device.
                        r.dev
                            .stream
                            .borrow_mut()
                            .own_copy(&mut shared.tally.borrow_mut(), own_seq);
                        shared.acked_ok(r.partner.devices.len() as u64, r.me.devices.len() as u64)
                    }
                    AckOutcome::Refused => Live::add(&shared.live.errors, 1),
                    AckOutcome::Ignored => {}
                }
            }
            Ok(Event::Deliver(d)) if d.outgoing => {
                // Own-send sync: the echo of one of this user's sends, in the same stream.
                let mut stream = r.dev.stream.borrow_mut();
                stream.echo(&mut shared.tally.borrow_mut(), d.seq);
                r.dev.ack_due.set(stream.last_seq());
            }
            Ok(Event::Deliver(d)) => {
                let received = Instant::now();
                Live::add(&shared.live.delivered, 1);
                let expect = Expect {
                    from: &r.partner.name,
                    tag: r.partner.tag,
                    written: r.partner.ledger.borrow().written(),
                };
                let delivered = Delivered {
                    seq: d.seq,
                    from: &d.from_user,
                    client_msg_id: d.client_msg_id,
                    body: &d.body,
                };
                let mut stream = r.dev.stream.borrow_mut();
                let fresh = stream.deliver(&mut shared.tally.borrow_mut(), &delivered, &expect);
                r.dev.ack_due.set(stream.last_seq());
                if let Some(stamp) = fresh {
                    shared.measure(received, stamp);
                }
            }
            Ok(Event::Pong { .. }) | Ok(Event::GroupReply(_)) => {}
            Ok(Event::GoAway { .. }) | Ok(Event::Error { .. }) | Err(_) => {
                shared.reader_ended();
                return;
            }
        }
    }
}

//! `load p2p --target mqtt://HOST:PORT`: the p2p workload against an MQTT 3.1.1 broker, with the
//! same schedule, stamps, checks and report as against ringpost ([`super::native`]); the
//! counters, the tail's wait and the outcome are the same code ([`super::shared`]).
//!
//! Each user is an MQTT client whose client ID is its name, with a persistent session (clean
//! session = false) subscribed at QoS 1 to its own topic `rp/<name>`; a user sends to its
//! partner by publishing at QoS 1 to the partner's topic. The broker's PUBACK plays SendAck{OK}
//! (MQTT has no refusal in a PUBACK, so error acks cannot occur), a PUBLISH from the broker
//! plays Deliver and is answered with PUBACK at once. MQTT carries no sender and no sequence
//! number: the stamp's sender tag must be the partner's (else **mismatched**), and the
//! device's arrival order stands for the stream order, so duplicates (a QoS 1 redelivery) and
//! reorders are still caught; seq gaps cannot be observed.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::mqtt::packet::VariablePacket;
use ::mqtt::TopicNameRef;
use ringpost::protocol::Code;

use super::super::mqtt::{self as link, MqttReader, Outbox};
use super::super::verify::{self, AckOutcome, Delivered, DeviceStream, Expect, Ledger};
use super::super::{run_generators, Live, StartLine};
use super::shared::{Outcome, Schedule, Sending, Shared};
use super::{pair_names, report, P2pArgs};

/// The keep-alive announced in CONNECT; a PINGREQ goes out after half of it without writes.
const KEEP_ALIVE: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn run(args: &P2pArgs, target: &str, sched: Schedule) -> ExitCode {
    let addr = match link::parse_target(target) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if args.devices.devices_per_user > 1 || args.pairs_cross_shard_only {
        eprintln!("--devices-per-user and --pairs-cross-shard-only are for ringpost, not --target");
        return ExitCode::from(2);
    }
    let names = pair_names(args);
    let threads = sched.threads;
    let live = Arc::new(Live::default());
    let outcomes = run_generators("mqtt", threads, &live, |t, start| {
        let pairs: Vec<(String, String)> = names.iter().skip(t).step_by(threads).cloned().collect();
        let live = live.clone();
        move || async move { generator(addr, sched, pairs, live, start).await }
    });
    match outcomes {
        Ok(o) => report(args, o, threads, 0),
        Err(code) => code,
    }
}

fn topic_of(name: &str) -> String {
    format!("rp/{name}")
}

/// One user: its sends and what it received.
struct User {
    name: String,
    tag: u64,
    ledger: RefCell<Ledger>,
    /// Packet identifier → message number, for PUBLISHes not yet PUBACKed.
    inflight: RefCell<HashMap<u16, u64>>,
    stream: RefCell<DeviceStream>,
    /// Deliveries so far: the synthetic seq of the next one minus one.
    arrivals: Cell<u64>,
}

/// Packet identifier of message `k` (1..=65535, never 0).
fn pkid(k: u64) -> u16 {
    ((k - 1) % 65_535 + 1) as u16
}

async fn generator(
    addr: SocketAddr,
    sched: Schedule,
    pairs: Vec<(String, String)>,
    live: Arc<Live>,
    start: StartLine,
) -> Result<Outcome, String> {
    let mut conns: Vec<(String, MqttReader, Rc<Outbox>)> = Vec::new();
    let mut login_failures = Vec::new();
    for (a, b) in &pairs {
        let mut both = Vec::new();
        for name in [a, b] {
            match link::connect(addr, name, KEEP_ALIVE, &[topic_of(name)], CONNECT_TIMEOUT).await {
                Ok((r, o)) => both.push((name.clone(), r, o)),
                Err(e) => login_failures.push(format!("{name}: {e}")),
            }
        }
        if both.len() == 2 {
            conns.extend(both);
        }
    }
    let t0 = start.arrive();
    let shared = Shared::new(t0, &sched, live, 0)?;
    let n = sched.per_sender as usize;
    let users: Vec<Rc<User>> = conns
        .iter()
        .map(|(name, _, _)| {
            Rc::new(User {
                name: name.clone(),
                tag: verify::sender_tag(name),
                ledger: RefCell::new(Ledger::new(n)),
                inflight: RefCell::default(),
                stream: RefCell::new(DeviceStream::new(n)),
                arrivals: Cell::new(0),
            })
        })
        .collect();
    let connections = users.len();
    let mut tasks = Vec::new();
    for (i, (_, reader, out)) in conns.into_iter().enumerate() {
        let (me, partner) = (users[i].clone(), users[i ^ 1].clone());
        let phase = sched.interval.mul_f64(rand::random::<f64>());
        tasks.push(glommio::spawn_local(send_loop(
            shared.clone(),
            me.clone(),
            topic_of(&partner.name),
            out.clone(),
            sched,
            phase,
        )));
        glommio::spawn_local(receive_loop(shared.clone(), me, partner, out, reader)).detach();
    }

    shared
        .drain(tasks, connections, connections, sched.drain_timeout)
        .await;
    // User i's acked sends must reach its partner (i ^ 1), one device each.
    let checks = users
        .iter()
        .enumerate()
        .map(|(i, u)| (&u.ledger, vec![&users[i ^ 1].stream]));
    Ok(shared.outcome(checks, connections, login_failures))
}

async fn send_loop(
    shared: Rc<Shared>,
    me: Rc<User>,
    to: String,
    out: Rc<Outbox>,
    sched: Schedule,
    phase: Duration,
) {
    let Ok(topic) = link::topic(&to) else {
        shared.conn_error();
        shared.sender_done();
        return;
    };
    let mut conn = SendConn {
        shared: &shared,
        me: &me,
        out: &out,
        topic,
        last_write: Instant::now(),
    };
    shared
        .send_scheduled(&sched, phase, me.tag, &me.ledger, &mut conn)
        .await;
    while !shared.stop.get() {
        glommio::timer::sleep(Duration::from_millis(20)).await;
        if conn.idle(0).await.is_err() {
            break;
        }
    }
    out.disconnect();
    let _ = out.flush().await;
}

/// A user's connection as the schedule drives it: its PUBLISHes, and a PINGREQ after half the
/// keep-alive without writes.
struct SendConn<'a> {
    shared: &'a Shared,
    me: &'a User,
    out: &'a Outbox,
    topic: &'a TopicNameRef,
    last_write: Instant,
}

impl Sending for SendConn<'_> {
    const TICK: Duration = Duration::from_millis(50);

    async fn idle(&mut self, _k: u64) -> Result<(), ()> {
        if self.last_write.elapsed() >= KEEP_ALIVE / 2 {
            self.out.pingreq();
            self.flush().await?;
        }
        Ok(())
    }

    async fn queue(&mut self, k: u64, body: &[u8]) -> Result<(), ()> {
        // A packet identifier still in flight 65,535 messages later: wait for its PUBACK (the
        // schedule's delay shows as latency).
        while self.me.inflight.borrow().contains_key(&pkid(k)) {
            if self.out.flush().await.is_err() || self.shared.stop.get() {
                return Err(());
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        self.me.inflight.borrow_mut().insert(pkid(k), k);
        self.out.publish(self.topic, pkid(k), body);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ()> {
        self.out.flush().await.map_err(|_| ())?;
        self.last_write = Instant::now();
        Ok(())
    }
}

async fn receive_loop(
    shared: Rc<Shared>,
    me: Rc<User>,
    partner: Rc<User>,
    out: Rc<Outbox>,
    mut reader: MqttReader,
) {
    let my_topic = topic_of(&me.name);
    loop {
        let packet = match reader.recv().await {
            Ok(p) => p,
            Err(_) => {
                shared.reader_ended();
                return;
            }
        };
        match packet {
            VariablePacket::PubackPacket(ack) => {
                let k = me.inflight.borrow_mut().remove(&ack.packet_identifier());
                let Some(k) = k else {
                    shared.ack_mismatched(); // a PUBACK for nothing in flight
                    continue;
                };
                let outcome =
                    me.ledger
                        .borrow_mut()
                        .on_ack(&mut shared.acks.borrow_mut(), k, Code::OK);
                if outcome == AckOutcome::Ok {
                    shared.acked_ok(1, 0); // one device, no echoes
                }
            }
            VariablePacket::PublishPacket(p) => {
                let received = Instant::now();
                Live::add(&shared.live.delivered, 1);
                if let (_, Some(id)) = p.qos().split() {
                    out.puback(id);
                    out.kick();
                }
                let seq = me.arrivals.get() + 1;
                me.arrivals.set(seq);
                let mut t = shared.tally.borrow_mut();
                if p.topic_name() != my_topic {
                    t.delivered += 1;
                    t.mismatched += 1;
                    continue;
                }
                let k = verify::read_stamp(p.payload()).map_or(0, |s| s.k);
                let expect = Expect {
                    from: &partner.name,
                    tag: partner.tag,
                    written: partner.ledger.borrow().written(),
                };
                // MQTT names no sender: the stamp's tag is checked against the partner's.
                let delivered = Delivered {
                    seq,
                    from: &partner.name,
                    client_msg_id: k,
                    body: p.payload(),
                };
                let fresh = me.stream.borrow_mut().deliver(&mut t, &delivered, &expect);
                drop(t);
                if let Some(stamp) = fresh {
                    shared.measure(received, stamp);
                }
            }
            _ => {} // PINGRESP
        }
    }
}

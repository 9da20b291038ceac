//! `load p2p --target mqtt://HOST:PORT`: the p2p workload against an MQTT 3.1.1 broker, with the
//! same schedule, stamps, checks and report as against ringpost ([`super::p2p`]).
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
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mqtt::packet::VariablePacket;
use ringpost::protocol::Code;

use super::mqtt::{self as link, MqttReader, Outbox};
use super::p2p::{self, Outcome, P2pArgs};
use super::verify::{
    self, count_lost, AckOutcome, AckTally, Delivered, DeviceStream, Expect, Ledger, Stamp, Tally,
};
use super::{new_histogram, run_generators, Live, StartLine};

/// The keep-alive announced in CONNECT; a PINGREQ goes out after half of it without writes.
const KEEP_ALIVE: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Sends queued back to back before a flush when the schedule has fallen behind.
const MAX_BATCH: u64 = 64;

pub fn run(args: &P2pArgs, target: &str) -> ExitCode {
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
    let names = p2p::pair_names(args);
    let threads = args.common.thread_count().min(args.users / 2).max(1);
    let interval = Duration::from_secs_f64(args.users as f64 / args.rate);
    let total = args.warmup + args.common.duration;
    let per_sender = (total.as_secs_f64() / interval.as_secs_f64())
        .floor()
        .max(1.0) as u64;
    let live = Arc::new(Live::default());
    let outcomes = run_generators("mqtt", threads, &live, |t, start| {
        let pairs: Vec<(String, String)> = names.iter().skip(t).step_by(threads).cloned().collect();
        let cfg = Cfg {
            addr,
            interval,
            per_sender,
            size: args.size,
            warmup_ns: args.warmup.as_nanos() as u64,
            drain_timeout: args.drain_timeout,
        };
        let live = live.clone();
        move || async move { generator(cfg, pairs, live, start).await }
    });
    match outcomes {
        Ok(o) => p2p::report(args, o, threads, 0),
        Err(code) => code,
    }
}

#[derive(Clone, Copy)]
struct Cfg {
    addr: SocketAddr,
    interval: Duration,
    per_sender: u64,
    size: usize,
    warmup_ns: u64,
    drain_timeout: Duration,
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

struct Shared {
    t0: Instant,
    warmup_ns: u64,
    live: Arc<Live>,
    hist: RefCell<Histogram<u64>>,
    tally: RefCell<Tally>,
    acks: RefCell<AckTally>,
    written: Cell<u64>,
    expected: Cell<u64>,
    measured: Cell<u64>,
    last_measured: Cell<Duration>,
    conn_errors: Cell<u64>,
    senders_done: Cell<usize>,
    readers_closed: Cell<usize>,
    stop: Cell<bool>,
}

impl Shared {
    fn conn_error(&self) {
        self.conn_errors.set(self.conn_errors.get() + 1);
        Live::add(&self.live.errors, 1);
    }
}

/// Packet identifier of message `k` (1..=65535, never 0).
fn pkid(k: u64) -> u16 {
    ((k - 1) % 65_535 + 1) as u16
}

async fn generator(
    cfg: Cfg,
    pairs: Vec<(String, String)>,
    live: Arc<Live>,
    start: StartLine,
) -> Result<Outcome, String> {
    let mut conns: Vec<(String, MqttReader, Rc<Outbox>)> = Vec::new();
    let mut login_failures = Vec::new();
    for (a, b) in &pairs {
        let mut both = Vec::new();
        for name in [a, b] {
            match link::connect(
                cfg.addr,
                name,
                KEEP_ALIVE,
                &[topic_of(name)],
                CONNECT_TIMEOUT,
            )
            .await
            {
                Ok((r, o)) => both.push((name.clone(), r, o)),
                Err(e) => login_failures.push(format!("{name}: {e}")),
            }
        }
        if both.len() == 2 {
            conns.extend(both);
        }
    }
    let t0 = start.arrive();
    let shared = Rc::new(Shared {
        t0,
        warmup_ns: cfg.warmup_ns,
        live,
        hist: RefCell::new(new_histogram()?),
        tally: RefCell::default(),
        acks: RefCell::default(),
        written: Cell::new(0),
        expected: Cell::new(0),
        measured: Cell::new(0),
        last_measured: Cell::new(Duration::ZERO),
        conn_errors: Cell::new(0),
        senders_done: Cell::new(0),
        readers_closed: Cell::new(0),
        stop: Cell::new(false),
    });
    let n = cfg.per_sender as usize;
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
        let phase = cfg.interval.mul_f64(rand::random::<f64>());
        tasks.push(glommio::spawn_local(send_loop(
            shared.clone(),
            me.clone(),
            topic_of(&partner.name),
            out.clone(),
            cfg,
            phase,
        )));
        glommio::spawn_local(receive_loop(shared.clone(), me, partner, out, reader)).detach();
    }

    let mut last_progress = (Instant::now(), 0u64);
    let mut next_report = Instant::now() + Duration::from_millis(250);
    loop {
        glommio::timer::sleep(Duration::from_millis(20)).await;
        if Instant::now() >= next_report {
            next_report += Duration::from_millis(250);
            let p99 = shared.hist.borrow().value_at_quantile(0.99);
            shared.live.p99_us.store(p99, Ordering::Relaxed);
        }
        let answered = shared.acks.borrow().answered();
        let unique = shared.tally.borrow().unique;
        let senders_done = shared.senders_done.get() == connections;
        let done =
            senders_done && answered >= shared.written.get() && unique >= shared.expected.get();
        let all_closed = shared.readers_closed.get() == connections;
        if done || (senders_done && all_closed) {
            break;
        }
        let progress = answered + shared.tally.borrow().delivered;
        if progress != last_progress.1 {
            last_progress = (Instant::now(), progress);
        } else if senders_done && last_progress.0.elapsed() > cfg.drain_timeout {
            break;
        }
    }
    shared.stop.set(true);
    for t in tasks {
        t.await;
    }
    let (mut lost, mut unanswered) = (0, 0);
    for (i, u) in users.iter().enumerate() {
        let ledger = u.ledger.borrow();
        unanswered += ledger.unanswered();
        lost += count_lost(ledger.answers(), users[i ^ 1].stream.borrow().seen());
    }
    let latency = shared.hist.borrow().clone();
    let acks = shared.acks.borrow().clone();
    let tally = shared.tally.borrow().clone();
    Ok(Outcome {
        written: shared.written.get(),
        acks,
        tally,
        expected: shared.expected.get(),
        measured: shared.measured.get(),
        lost,
        unanswered,
        conn_errors: shared.conn_errors.get(),
        devices: connections as u64,
        latency,
        last_measured: shared.last_measured.get(),
        login_failures,
    })
}

async fn send_loop(
    shared: Rc<Shared>,
    me: Rc<User>,
    to: String,
    out: Rc<Outbox>,
    cfg: Cfg,
    phase: Duration,
) {
    let Ok(topic) = link::topic(&to) else {
        shared.conn_error();
        shared.senders_done.set(shared.senders_done.get() + 1);
        return;
    };
    let mut body = vec![0u8; cfg.size];
    let mut last_write = Instant::now();
    let intended_at = |k: u64| shared.t0 + phase + cfg.interval.mul_f64((k - 1) as f64);
    let mut k = 1u64;
    'run: while k <= cfg.per_sender {
        loop {
            let wait = intended_at(k).saturating_duration_since(Instant::now());
            if wait.is_zero() {
                break;
            }
            glommio::timer::sleep(wait.min(Duration::from_millis(50))).await;
            if last_write.elapsed() >= KEEP_ALIVE / 2 {
                out.pingreq();
                if out.flush().await.is_err() {
                    shared.conn_error();
                    break 'run;
                }
                last_write = Instant::now();
            }
        }
        let first = k;
        while k <= cfg.per_sender && k - first < MAX_BATCH {
            let intended = intended_at(k);
            if k > first && intended > Instant::now() {
                break;
            }
            // A packet identifier still in flight 65,535 messages later: wait for its PUBACK
            // (the schedule's delay shows as latency).
            while me.inflight.borrow().contains_key(&pkid(k)) {
                if out.flush().await.is_err() || shared.stop.get() {
                    shared.conn_error();
                    break 'run;
                }
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            let stamp = Stamp {
                intended_ns: (intended - shared.t0).as_nanos() as u64,
                k,
                tag: me.tag,
            };
            verify::write_stamp(&mut body, stamp);
            me.inflight.borrow_mut().insert(pkid(k), k);
            out.publish(topic, pkid(k), &body);
            me.ledger.borrow_mut().wrote(k);
            k += 1;
        }
        shared.written.set(shared.written.get() + (k - first));
        Live::add(&shared.live.sent, k - first);
        if out.flush().await.is_err() {
            shared.conn_error();
            break;
        }
        last_write = Instant::now();
    }
    shared.senders_done.set(shared.senders_done.get() + 1);
    while !shared.stop.get() {
        glommio::timer::sleep(Duration::from_millis(20)).await;
        if last_write.elapsed() >= KEEP_ALIVE / 2 {
            out.pingreq();
            if out.flush().await.is_err() {
                break;
            }
            last_write = Instant::now();
        }
    }
    out.disconnect();
    let _ = out.flush().await;
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
                if !shared.stop.get() {
                    shared.conn_error();
                }
                shared.readers_closed.set(shared.readers_closed.get() + 1);
                return;
            }
        };
        match packet {
            VariablePacket::PubackPacket(ack) => {
                let k = me.inflight.borrow_mut().remove(&ack.packet_identifier());
                let Some(k) = k else {
                    shared.acks.borrow_mut().mismatched += 1; // a PUBACK for nothing in flight
                    Live::add(&shared.live.errors, 1);
                    continue;
                };
                let outcome =
                    me.ledger
                        .borrow_mut()
                        .on_ack(&mut shared.acks.borrow_mut(), k, Code::OK);
                if outcome == AckOutcome::Ok {
                    shared.expected.set(shared.expected.get() + 1);
                    Live::add(&shared.live.acked, 1);
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
                let Some(stamp) = fresh else { continue };
                if stamp.intended_ns >= shared.warmup_ns {
                    let intended = shared.t0 + Duration::from_nanos(stamp.intended_ns);
                    let us = received.saturating_duration_since(intended).as_micros() as u64;
                    let _ = shared.hist.borrow_mut().record(us.max(1));
                    shared.measured.set(shared.measured.get() + 1);
                    shared
                        .last_measured
                        .set(received.saturating_duration_since(shared.t0));
                }
            }
            _ => {} // PINGRESP
        }
    }
}

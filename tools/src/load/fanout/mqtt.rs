//! The MQTT side of `load fanout --target mqtt://HOST:PORT`: a group is a topic `rg/<group>`
//! that its members subscribe to at QoS 1 with persistent sessions (clean session = false); a
//! group send is a QoS 1 PUBLISH to it, PUBACK standing for SendAck{OK}; every member (the
//! sender too, as a subscriber) must receive it once. Offline members subscribe before the
//! sends and disconnect; afterwards they reconnect with the same client ID and take what their
//! session queued.

use std::net::SocketAddr;

use ::mqtt::packet::VariablePacket;

use super::super::mqtt::{self as link, MqttReader, Outbox};
use super::*;

/// The keep-alive announced in CONNECT; a PINGREQ goes out after half of it without writes.
const KEEP_ALIVE: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A replaying member that receives nothing for this long has everything its session held.
const REPLAY_IDLE: Duration = Duration::from_secs(5);

/// Packet identifier of message `k` (1..=65535, never 0).
fn pkid(k: u64) -> u16 {
    ((k - 1) % 65_535 + 1) as u16
}

/// Offline members open their persistent sessions (subscribed to their group) and leave, so
/// the broker queues the group's messages for them.
pub(super) async fn set_up_sessions(addr: SocketAddr, plan: &Plan) -> Result<(), String> {
    for u in plan.users.iter().filter(|u| !u.online) {
        let topic = group_topic(&plan.groups[u.group].id);
        let (_reader, out) = link::connect(addr, &u.name, KEEP_ALIVE, &[topic], CONNECT_TIMEOUT)
            .await
            .map_err(|e| format!("{}: {e}", u.name))?;
        out.disconnect();
        out.flush().await.map_err(|e| format!("{}: {e}", u.name))?;
    }
    Ok(())
}

/// A sender's packets in flight: packet identifier → message number.
type Inflight = Rc<RefCell<HashMap<u16, u64>>>;

pub(super) async fn generator(
    cfg: ThreadCfg,
    users: Vec<usize>,
    start: StartLine,
) -> Result<Outcome, String> {
    let plan = cfg.plan.clone();
    let Via::Mqtt(addr) = cfg.via else {
        return Err("the MQTT generator needs an mqtt:// target".into());
    };
    let mut conns = Vec::new();
    let mut login_failures = Vec::new();
    for &u in &users {
        let name = &plan.users[u].name;
        let topic = group_topic(&plan.groups[plan.users[u].group].id);
        match link::connect(addr, name, KEEP_ALIVE, &[topic], CONNECT_TIMEOUT).await {
            Ok((reader, out)) => conns.push((u, reader, out)),
            Err(e) => login_failures.push(format!("{name}: {e}")),
        }
    }
    cfg.progress
        .connections
        .fetch_add(conns.len(), Ordering::AcqRel);
    let t0 = start.arrive();
    let shared = Rc::new(Shared::new(&cfg, t0)?);
    let mut ledgers: HashMap<usize, Rc<RefCell<Ledger>>> = HashMap::new();
    let mut members = Vec::new();
    let mut tasks = Vec::new();
    for (u, reader, out) in conns {
        let member = Rc::new(Member::new(&plan, u));
        members.push(member.clone());
        let sending = plan.users[u].sender.map(|s| {
            let l = Rc::new(RefCell::new(Ledger::new(plan.per_sender as usize)));
            ledgers.insert(s, l.clone());
            (s, l, Inflight::default())
        });
        match &sending {
            Some((s, l, inflight)) => {
                let phase = plan.interval.mul_f64(rand::random::<f64>());
                tasks.push(glommio::spawn_local(send_loop(
                    shared.clone(),
                    *s,
                    l.clone(),
                    inflight.clone(),
                    out.clone(),
                    phase,
                )));
            }
            None => tasks.push(glommio::spawn_local(idle_loop(
                shared.clone(),
                out.clone(),
                Instant::now(),
            ))),
        }
        glommio::spawn_local(receive_loop(shared.clone(), member, sending, out, reader)).detach();
    }
    wait_for_tail(&shared, cfg.drain_timeout).await;
    for t in tasks {
        t.await;
    }
    Ok(shared.outcome(&members, &ledgers, login_failures))
}

async fn send_loop(
    shared: Rc<Shared>,
    sender: usize,
    ledger: Rc<RefCell<Ledger>>,
    inflight: Inflight,
    out: Rc<Outbox>,
    phase: Duration,
) {
    let plan = shared.plan.clone();
    let sp = &plan.senders[sender];
    let name = group_topic(&plan.groups[sp.group].id);
    let Ok(topic) = link::topic(&name) else {
        shared.conn_error();
        shared.progress.senders_done.fetch_add(1, Ordering::AcqRel);
        return;
    };
    let mut body = vec![0u8; plan.size];
    let mut last_write = Instant::now();
    let intended_at = |k: u64| shared.t0 + phase + plan.interval.mul_f64((k - 1) as f64);
    let mut k = 1u64;
    'run: while k <= plan.per_sender {
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
        while k <= plan.per_sender && k - first < MAX_BATCH {
            let intended = intended_at(k);
            if k > first && intended > Instant::now() {
                break;
            }
            // A packet identifier still in flight 65,535 messages later waits for its PUBACK.
            while inflight.borrow().contains_key(&pkid(k)) {
                if out.flush().await.is_err() || shared.stop.get() {
                    shared.conn_error();
                    break 'run;
                }
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            let stamp = Stamp {
                intended_ns: (intended - shared.t0).as_nanos() as u64,
                k,
                tag: sp.tag,
            };
            verify::write_stamp(&mut body, stamp);
            inflight.borrow_mut().insert(pkid(k), k);
            out.publish(topic, pkid(k), &body);
            ledger.borrow_mut().wrote(k);
            plan.written[sender].store(k, Ordering::Release);
            k += 1;
        }
        Progress::add(&shared.progress.written, k - first);
        Live::add(&shared.live.sent, k - first);
        if out.flush().await.is_err() {
            shared.conn_error();
            break;
        }
        last_write = Instant::now();
    }
    shared.progress.senders_done.fetch_add(1, Ordering::AcqRel);
    idle_loop(shared, out, last_write).await;
}

/// Keeps the connection alive until the run is over, then disconnects (the session stays).
async fn idle_loop(shared: Rc<Shared>, out: Rc<Outbox>, mut last_write: Instant) {
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
    me: Rc<Member>,
    sending: Option<(usize, Rc<RefCell<Ledger>>, Inflight)>,
    out: Rc<Outbox>,
    mut reader: MqttReader,
) {
    let plan = shared.plan.clone();
    loop {
        let packet = match reader.recv().await {
            Ok(p) => p,
            Err(_) => {
                if !shared.stop.get() {
                    shared.conn_error();
                }
                shared
                    .progress
                    .readers_closed
                    .fetch_add(1, Ordering::AcqRel);
                return;
            }
        };
        match packet {
            VariablePacket::PubackPacket(ack) => {
                let Some((s, ledger, inflight)) = &sending else {
                    shared.acks.borrow_mut().mismatched += 1; // this member sent nothing
                    continue;
                };
                match inflight.borrow_mut().remove(&ack.packet_identifier()) {
                    Some(k) => on_ack(&shared, Some(&(*s, ledger.clone())), k, Code::OK),
                    None => shared.acks.borrow_mut().mismatched += 1,
                }
            }
            VariablePacket::PublishPacket(p) => {
                let received = Instant::now();
                if let (_, Some(id)) = p.qos().split() {
                    out.puback(id);
                    out.kick();
                }
                let fresh = check_publish(
                    &plan,
                    &me,
                    &mut shared.tally.borrow_mut(),
                    p.topic_name(),
                    p.payload(),
                );
                if let Some((s, stamp)) = fresh {
                    shared.on_fresh(s, stamp, received);
                }
            }
            _ => {} // PINGRESP
        }
    }
}

/// Offline members reconnect (same client ID, persistent session, no new subscription) and
/// take what their sessions queued: everything acked to their group's senders, once, in each
/// sender's order.
pub(super) async fn replay_members(
    addr: SocketAddr,
    plan: &Arc<Plan>,
    users: &[usize],
    totals: &Totals,
) -> Result<Replay, String> {
    let started = Instant::now();
    let mut out = Replay::default();
    for &u in users {
        let group = &plan.groups[plan.users[u].group];
        let owed: u64 = group
            .senders
            .iter()
            .map(|&s| {
                totals.answers[s]
                    .iter()
                    .filter(|a| **a == Answer::Ok)
                    .count() as u64
            })
            .sum();
        match replay_one(addr, plan, u, owed).await {
            Ok((t, seen)) => {
                out.tally.merge(&t);
                out.seen.push((u, seen));
            }
            Err(e) => out.failures.push(e),
        }
    }
    out.elapsed = started.elapsed();
    Ok(out)
}

async fn replay_one(
    addr: SocketAddr,
    plan: &Plan,
    user: usize,
    owed: u64,
) -> Result<(Tally, Vec<Vec<bool>>), String> {
    let name = &plan.users[user].name;
    let (mut reader, out) = link::connect(addr, name, KEEP_ALIVE, &[], CONNECT_TIMEOUT)
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    let m = Member::new(plan, user);
    let mut t = Tally::default();
    while t.unique < owed {
        let event = futures_lite::future::or(async { Some(reader.recv().await) }, async {
            glommio::timer::sleep(REPLAY_IDLE).await;
            None
        })
        .await;
        match event {
            Some(Ok(VariablePacket::PublishPacket(p))) => {
                if let (_, Some(id)) = p.qos().split() {
                    out.puback(id);
                    out.kick();
                }
                check_publish(plan, &m, &mut t, p.topic_name(), p.payload());
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("{name}: {e}")),
            None => break, // the session held no more: what is missing counts as lost
        }
    }
    out.disconnect();
    let _ = out.flush().await;
    let seen = m.seen.borrow().iter().map(|s| s.seen().to_vec()).collect();
    Ok((t, seen))
}

//! The ringpost side of the scenario: group set-up over the wire, the generator threads'
//! members (one `Client` each), and replays of members' streams at login.

use super::*;

/// Each creator creates its group, `chunk` members per frame, and waits for every OK.
pub(super) async fn set_up_groups(
    endpoint: &Endpoint,
    tokens: &Tokens,
    plan: &Plan,
    chunk: usize,
) -> Result<(), String> {
    for g in &plan.groups {
        let creator = &plan.users[g.members[0]].name;
        let opts = endpoint.options(tokens.mint(creator)?, "load-admin");
        let mut c = Client::connect(&opts, 0)
            .await
            .map_err(|e| format!("{creator}: {e}"))?;
        let names: Vec<&str> = g.members[1..]
            .iter()
            .map(|&u| plan.users[u].name.as_str())
            .collect();
        let mut parts = names.chunks(chunk);
        let first = parts.next().unwrap_or(&[]);
        c.group_create(1, &g.id, first)
            .await
            .map_err(|e| e.to_string())?;
        await_reply(&mut c, 1, &g.id).await?;
        for (i, part) in parts.enumerate() {
            let id = i as u64 + 2;
            let op = GroupOp::Add {
                members: Names::Slice(part),
            };
            c.group_op(id, &g.id, op).await.map_err(|e| e.to_string())?;
            await_reply(&mut c, id, &g.id).await?;
        }
        let _ = c.logout().await;
    }
    Ok(())
}

pub(super) async fn await_reply(
    c: &mut Client,
    request_id: u64,
    group: &str,
) -> Result<(), String> {
    loop {
        let event = future::or(async { Some(c.recv().await) }, async {
            glommio::timer::sleep(Duration::from_secs(30)).await;
            None
        })
        .await;
        match event {
            Some(Ok(Event::GroupReply(r))) if r.request_id == request_id => {
                return if r.status == Code::OK {
                    Ok(())
                } else {
                    Err(format!(
                        "{group}: {} ({})",
                        ringpost::protocol::code_name(r.status),
                        r.message
                    ))
                };
            }
            Some(Ok(_)) => {} // the group's own events in the creator's stream
            Some(Err(e)) => return Err(format!("{group}: {e}")),
            None => return Err(format!("{group}: no GroupReply within 30 s")),
        }
    }
}

// ---- the generator threads ---------------------------------------------------------------------

/// Sends queued back to back before a flush when the schedule has fallen behind.
pub(super) const MAX_BATCH: u64 = 64;

pub(super) async fn generator(
    cfg: ThreadCfg,
    users: Vec<usize>,
    start: StartLine,
) -> Result<Outcome, String> {
    let plan = cfg.plan.clone();
    let Via::Ringpost { endpoint, tokens } = &cfg.via else {
        return Err("the ringpost generator needs a ringpost endpoint".into());
    };
    let mut clients = Vec::new();
    let mut login_failures = Vec::new();
    for &u in &users {
        let name = &plan.users[u].name;
        let opts = endpoint.options(tokens.mint(name)?, "load-d0");
        match Client::connect(&opts, 0).await {
            Ok(c) => clients.push((u, c)),
            Err(e) => login_failures.push(format!("{name}: {e}")),
        }
    }
    cfg.progress
        .connections
        .fetch_add(clients.len(), Ordering::AcqRel);
    let t0 = start.arrive();
    let shared = Rc::new(Shared::new(&cfg, t0)?);
    let mut ledgers: HashMap<usize, Rc<RefCell<Ledger>>> = HashMap::new();
    let mut members = Vec::new();
    let mut tasks = Vec::new();
    for (u, client) in clients {
        let member = Rc::new(Member::new(&plan, u));
        members.push(member.clone());
        let keepalive =
            Duration::from_millis(u64::from(client.login_info().heartbeat_ms.max(200)) / 2);
        let (reader, writer) = client.split();
        let ledger = plan.users[u].sender.map(|s| {
            let l = Rc::new(RefCell::new(Ledger::new(plan.per_sender as usize)));
            ledgers.insert(s, l.clone());
            (s, l)
        });
        match &ledger {
            Some((s, l)) => {
                let phase = plan.interval.mul_f64(rand::random::<f64>());
                tasks.push(glommio::spawn_local(send_loop(
                    shared.clone(),
                    member.clone(),
                    *s,
                    l.clone(),
                    writer,
                    phase,
                    keepalive,
                )));
            }
            None => tasks.push(glommio::spawn_local(ack_loop(
                shared.clone(),
                member.clone(),
                writer,
                keepalive,
                0,
            ))),
        }
        glommio::spawn_local(receive_loop(shared.clone(), member, ledger, reader)).detach();
    }

    wait_for_tail(&shared, cfg.drain_timeout).await;
    for t in tasks {
        t.await;
    }
    Ok(shared.outcome(&members, &ledgers, login_failures))
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn send_loop(
    shared: Rc<Shared>,
    me: Rc<Member>,
    sender: usize,
    ledger: Rc<RefCell<Ledger>>,
    mut writer: Writer,
    phase: Duration,
    keepalive: Duration,
) {
    let plan = shared.plan.clone();
    let group = &plan.groups[plan.senders[sender].group].id;
    let tag = plan.senders[sender].tag;
    let mut body = vec![0u8; plan.size];
    let mut acked_up_to = 0u64;
    let mut last_write = Instant::now();
    let mut last_ack = Instant::now();
    let intended_at = |k: u64| shared.t0 + phase + plan.interval.mul_f64((k - 1) as f64);
    let mut k = 1u64;
    'run: while k <= plan.per_sender {
        loop {
            let wait = intended_at(k).saturating_duration_since(Instant::now());
            if wait.is_zero() {
                break;
            }
            glommio::timer::sleep(wait.min(shared.ack_interval)).await;
            let due = me.ack_due.get();
            let ack = due > acked_up_to
                && (due - acked_up_to >= 100 || last_ack.elapsed() >= shared.ack_interval);
            let ping = last_write.elapsed() >= keepalive;
            if ack || ping {
                if ack {
                    last_ack = Instant::now();
                    writer.queue(&ClientMsg::Ack { up_to_seq: due });
                    acked_up_to = due;
                }
                if ping {
                    writer.queue(&ClientMsg::Ping { nonce: k });
                }
                if writer.flush().await.is_err() {
                    shared.conn_error();
                    break 'run;
                }
                last_write = Instant::now();
            }
        }
        let due = me.ack_due.get();
        if due > acked_up_to {
            writer.queue(&ClientMsg::Ack { up_to_seq: due });
            acked_up_to = due;
            last_ack = Instant::now();
        }
        let first = k;
        while k <= plan.per_sender && k - first < MAX_BATCH {
            let intended = intended_at(k);
            if k > first && intended > Instant::now() {
                break;
            }
            let stamp = Stamp {
                intended_ns: (intended - shared.t0).as_nanos() as u64,
                k,
                tag,
            };
            verify::write_stamp(&mut body, stamp);
            writer.queue(&ClientMsg::GroupSend {
                client_msg_id: k,
                group_id: group,
                body: &body,
            });
            ledger.borrow_mut().wrote(k);
            plan.written[sender].store(k, Ordering::Release);
            k += 1;
        }
        Progress::add(&shared.progress.written, k - first);
        Live::add(&shared.live.sent, k - first);
        if writer.flush().await.is_err() {
            shared.conn_error();
            break;
        }
        last_write = Instant::now();
    }
    shared.progress.senders_done.fetch_add(1, Ordering::AcqRel);
    ack_loop(shared, me, writer, keepalive, acked_up_to).await;
}

/// Acks what arrives (every `--ack-interval`) and keeps the connection alive until the run
/// is over.
pub(super) async fn ack_loop(
    shared: Rc<Shared>,
    me: Rc<Member>,
    mut writer: Writer,
    keepalive: Duration,
    acked_up_to: u64,
) {
    let every = shared.ack_interval;
    super::super::ack_until_stop(
        &shared.stop,
        &me.ack_due,
        &mut writer,
        acked_up_to,
        every,
        keepalive,
    )
    .await;
}

pub(super) async fn receive_loop(
    shared: Rc<Shared>,
    me: Rc<Member>,
    ledger: Option<(usize, Rc<RefCell<Ledger>>)>,
    mut reader: Reader,
) {
    let plan = shared.plan.clone();
    loop {
        match reader.recv().await {
            Ok(Event::SendAck {
                client_msg_id,
                status,
                ..
            }) => on_ack(&shared, ledger.as_ref(), client_msg_id, status),
            Ok(Event::Deliver(d)) => {
                let received = Instant::now();
                let fresh = check_entry(
                    &plan,
                    &me,
                    &mut shared.tally.borrow_mut(),
                    &mut shared.groups.borrow_mut(),
                    &d,
                );
                if let Some((s, stamp)) = fresh {
                    shared.on_fresh(s, stamp, received);
                }
            }
            Ok(Event::Pong { .. }) | Ok(Event::GroupReply(_)) => {}
            Ok(Event::GoAway { .. }) | Ok(Event::Error { .. }) | Err(_) => {
                if !shared.stop.get() {
                    shared.conn_error();
                }
                shared
                    .progress
                    .readers_closed
                    .fetch_add(1, Ordering::AcqRel);
                return;
            }
        }
    }
}

// ---- replays: offline members after the sends, and every member in --phase verify -----------

/// What replaying some members' streams found.
#[derive(Default)]
pub(super) struct Replay {
    pub(super) tally: Tally,
    pub(super) groups: GroupTally,
    pub(super) seen: Vec<(usize, Vec<Vec<bool>>)>,
    pub(super) failures: Vec<String>,
    pub(super) elapsed: Duration,
}

/// Logs each of `users` in as a new device (`concurrency` at a time) and reads its stream up
/// to the head its LoginOk announced.
pub(super) async fn replay_members(
    endpoint: &Endpoint,
    tokens: &Tokens,
    plan: &Arc<Plan>,
    users: &[usize],
    concurrency: usize,
) -> Result<Replay, String> {
    let started = Instant::now();
    let mut out = Replay::default();
    let device = format!("replay-{:08x}", rand::random::<u32>());
    for batch in users.chunks(concurrency) {
        let tasks: Vec<_> = batch
            .iter()
            .map(|&u| {
                let (e, t, p, d) = (
                    endpoint.clone(),
                    tokens.clone(),
                    plan.clone(),
                    device.clone(),
                );
                glommio::spawn_local(async move { replay_one(&e, &t, &p, u, &d).await })
            })
            .collect();
        for task in tasks {
            match task.await {
                Ok((user, t, g, seen)) => {
                    out.tally.merge(&t);
                    out.groups.group_seq_gaps += g.group_seq_gaps;
                    out.seen.push((user, seen));
                }
                Err(e) => out.failures.push(e),
            }
        }
    }
    out.elapsed = started.elapsed();
    Ok(out)
}

pub(super) type ReplayOne = (usize, Tally, GroupTally, Vec<Vec<bool>>);

pub(super) async fn replay_one(
    endpoint: &Endpoint,
    tokens: &Tokens,
    plan: &Plan,
    user: usize,
    device: &str,
) -> Result<ReplayOne, String> {
    let name = &plan.users[user].name;
    let opts = endpoint.options(tokens.mint(name)?, device);
    let mut c = Client::connect(&opts, 0)
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    let head = c.login_info().head_seq;
    let m = Member::new(plan, user);
    let (mut t, mut g) = (Tally::default(), GroupTally::default());
    while m.stream.borrow().last_seq() < head {
        let event = future::or(async { Some(c.recv().await) }, async {
            glommio::timer::sleep(Duration::from_secs(10)).await;
            None
        })
        .await;
        match event {
            Some(Ok(Event::Deliver(d))) => {
                check_entry(plan, &m, &mut t, &mut g, &d);
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("{name}: {e}")),
            None => {
                return Err(format!(
                    "{name}: replay stalled at seq {} of {head}",
                    m.stream.borrow().last_seq()
                ))
            }
        }
    }
    let last = m.stream.borrow().last_seq();
    let _ = c.ack(last).await;
    let _ = c.logout().await;
    let seen = m.seen.borrow().iter().map(|s| s.seen().to_vec()).collect();
    Ok((user, t, g, seen))
}

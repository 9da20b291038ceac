//! Who is in which group, who sends, who is offline; one member's view of its stream and
//! the checks on each of its entries.

use super::*;

// ---- the plan ------------------------------------------------------------------------------------

pub(super) struct UserPlan {
    pub(super) name: String,
    pub(super) group: usize,
    /// Global sender index, for members that send.
    pub(super) sender: Option<usize>,
    pub(super) online: bool,
}

pub(super) struct SenderPlan {
    pub(super) user: usize,
    pub(super) group: usize,
    /// Index among its group's senders.
    pub(super) local: usize,
    pub(super) tag: u64,
    /// First message slot of this sender ([`Plan::slot`]).
    pub(super) first_slot: usize,
}

pub(super) struct GroupPlan {
    pub(super) id: String,
    /// Global user indices; member 0 creates the group.
    pub(super) members: Vec<usize>,
    /// Global sender indices.
    pub(super) senders: Vec<usize>,
    pub(super) online_members: u64,
}

pub(super) struct Plan {
    pub(super) run_id: u32,
    pub(super) groups: Vec<GroupPlan>,
    pub(super) users: Vec<UserPlan>,
    pub(super) senders: Vec<SenderPlan>,
    pub(super) sender_by_name: HashMap<String, usize>,
    /// Sender by the tag in its stamps (MQTT deliveries name no sender).
    pub(super) sender_by_tag: HashMap<u64, usize>,
    pub(super) per_sender: u64,
    pub(super) interval: Duration,
    pub(super) size: usize,
    /// Highest message number each sender has written (read by every thread's checks).
    pub(super) written: Vec<AtomicU64>,
}

impl Plan {
    pub(super) fn new(
        run_id: u32,
        groups: usize,
        members: usize,
        senders: usize,
        offline: f64,
        per_sender: u64,
    ) -> Plan {
        let mut plan = Plan {
            run_id,
            groups: Vec::new(),
            users: Vec::new(),
            senders: Vec::new(),
            sender_by_name: HashMap::new(),
            sender_by_tag: HashMap::new(),
            per_sender,
            interval: Duration::ZERO,
            size: STAMP,
            written: Vec::new(),
        };
        for g in 0..groups {
            let quiet = members - senders;
            let offline = if offline > 0.0 {
                pick_fraction(quiet, offline, 0)
            } else {
                vec![false; quiet]
            };
            let mut gp = GroupPlan {
                id: format!("fan-{run_id:08x}-g{g}"),
                members: Vec::new(),
                senders: Vec::new(),
                online_members: 0,
            };
            for i in 0..members {
                let user = plan.users.len();
                let name = format!("fan-{run_id:08x}-g{g}-m{i}");
                let sender = (i < senders).then(|| {
                    let s = plan.senders.len();
                    plan.senders.push(SenderPlan {
                        user,
                        group: g,
                        local: i,
                        tag: verify::sender_tag(&name),
                        first_slot: s * per_sender as usize,
                    });
                    plan.sender_by_name.insert(name.clone(), s);
                    plan.sender_by_tag.insert(verify::sender_tag(&name), s);
                    gp.senders.push(s);
                    s
                });
                let online = i < senders || !offline[i - senders];
                gp.online_members += u64::from(online);
                gp.members.push(user);
                plan.users.push(UserPlan {
                    name,
                    group: g,
                    sender,
                    online,
                });
            }
            plan.groups.push(gp);
        }
        plan.written = (0..plan.senders.len()).map(|_| AtomicU64::new(0)).collect();
        plan
    }

    pub(super) fn slot(&self, sender: usize, k: u64) -> usize {
        self.senders[sender].first_slot + (k as usize - 1)
    }

    pub(super) fn slots(&self) -> usize {
        self.senders.len() * self.per_sender as usize
    }
}

// ---- one member's view of its stream ----------------------------------------------------------

pub(super) struct Member {
    pub(super) user: usize,
    pub(super) stream: RefCell<DeviceStream>,
    /// Per sender of the member's group (by local index): the messages seen.
    pub(super) seen: RefCell<Vec<Seen>>,
    pub(super) last_group_seq: Cell<u64>,
    /// Highest seq to ack, set by the reader, sent by the writer.
    pub(super) ack_due: Cell<u64>,
}

impl Member {
    pub(super) fn new(plan: &Plan, user: usize) -> Member {
        let senders = plan.groups[plan.users[user].group].senders.len();
        Member {
            user,
            stream: RefCell::new(DeviceStream::new(0)),
            seen: RefCell::new(
                (0..senders)
                    .map(|_| Seen::new(plan.per_sender as usize))
                    .collect(),
            ),
            last_group_seq: Cell::new(0),
            ack_due: Cell::new(0),
        }
    }
}

/// Counts the fan-out adds to the shared [`Tally`].
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct GroupTally {
    /// group_seqs a member's stream skipped over.
    pub(super) group_seq_gaps: u64,
}

/// Checks one entry of `m`'s stream. Returns the sender and stamp of a message seen here for
/// the first time and verified.
pub(super) fn check_entry(
    plan: &Plan,
    m: &Member,
    t: &mut Tally,
    g: &mut GroupTally,
    d: &Delivery,
) -> Option<(usize, Stamp)> {
    let message = d.kind == EntryKind::Message;
    if message {
        t.delivered += 1;
    }
    if !m.stream.borrow_mut().track_seq(t, d.seq) {
        return None;
    }
    m.ack_due.set(m.stream.borrow().last_seq());
    let group = &plan.groups[plan.users[m.user].group];
    if d.group_id != group.id {
        t.mismatched += 1;
        return None;
    }
    let last = m.last_group_seq.get();
    let late = last != 0 && d.group_seq <= last;
    if last != 0 && d.group_seq > last + 1 {
        g.group_seq_gaps += d.group_seq - last - 1;
    }
    m.last_group_seq.set(last.max(d.group_seq));
    if !message {
        if late {
            t.duplicated += 1; // a group event again, under a new seq
        } else {
            t.events += 1;
        }
        return None;
    }
    let sender = plan
        .sender_by_name
        .get(&d.from_user)
        .copied()
        .filter(|&s| plan.senders[s].group == plan.users[m.user].group);
    let Some(s) = sender else {
        t.mismatched += 1;
        return None;
    };
    let sp = &plan.senders[s];
    if d.outgoing != (sp.user == m.user) {
        t.mismatched += 1;
        return None;
    }
    let expect = Expect {
        from: &plan.users[sp.user].name,
        tag: sp.tag,
        written: plan.written[s].load(Ordering::Acquire),
    };
    let delivered = Delivered {
        seq: d.seq,
        from: &d.from_user,
        client_msg_id: d.client_msg_id,
        body: &d.body,
    };
    let Some(stamp) = check_stamp(&delivered, &expect) else {
        t.mismatched += 1;
        return None;
    };
    let before = t.out_of_order;
    if !m.seen.borrow_mut()[sp.local].see(t, stamp) {
        return None;
    }
    if late && t.out_of_order == before {
        t.out_of_order += 1; // behind the group's order (another sender's later message came first)
    }
    Some((s, stamp))
}

/// The MQTT topic of a group (`--target`): its members subscribe to it, senders publish to it.
pub(super) fn group_topic(group: &str) -> String {
    format!("rg/{group}")
}

/// Checks one PUBLISH a member received from an MQTT broker. MQTT names no sender and carries
/// no seq or group_seq: the sender is the one whose tag the stamp carries (it must be one of
/// the group's), the arrival order stands for the stream, and the order checked is each
/// sender's.
pub(super) fn check_publish(
    plan: &Plan,
    m: &Member,
    t: &mut Tally,
    topic: &str,
    payload: &[u8],
) -> Option<(usize, Stamp)> {
    t.delivered += 1;
    let seq = m.stream.borrow().last_seq() + 1;
    m.stream.borrow_mut().track_seq(t, seq);
    let group = plan.users[m.user].group;
    if topic.strip_prefix("rg/") != Some(plan.groups[group].id.as_str()) {
        t.mismatched += 1;
        return None;
    }
    let sender = verify::read_stamp(payload)
        .and_then(|s| plan.sender_by_tag.get(&s.tag).copied())
        .filter(|&s| plan.senders[s].group == group);
    let Some(s) = sender else {
        t.mismatched += 1;
        return None;
    };
    let sp = &plan.senders[s];
    let name = &plan.users[sp.user].name;
    let expect = Expect {
        from: name,
        tag: sp.tag,
        written: plan.written[s].load(Ordering::Acquire),
    };
    let k = verify::read_stamp(payload).map_or(0, |st| st.k);
    let delivered = Delivered {
        seq,
        from: name,
        client_msg_id: k,
        body: payload,
    };
    let Some(stamp) = check_stamp(&delivered, &expect) else {
        t.mismatched += 1;
        return None;
    };
    m.seen.borrow_mut()[sp.local]
        .see(t, stamp)
        .then_some((s, stamp))
}

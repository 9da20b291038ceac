//! Groups over the wire: creation, membership and its boundaries, ordered fan-out across
//! shards, dedup of group sends, offline members, limits and every group error code, and
//! restarts (graceful and kill -9) with nothing lost or duplicated.

use std::collections::BTreeMap;

use ringpost::client::{Client, Delivery, Event, GroupResult};
use ringpost::protocol::{Code, EntryKind, GroupOp, Names};
use ringpost::shard::group_owner;
use ringpost_harness::*;

/// Groups run with own-send sync on (the embedded default): the sender is a member anyway.
fn groups_broker() -> BrokerBuilder {
    test_broker()
        .server("own_send_sync = true")
        .limits("sends_per_sec = 100000")
}

/// A member's connection. A user's stream entries (Deliver) and the answers to what it asked
/// (GroupReply, SendAck) travel independently — a reply may come before or after the entry the
/// request made — so the answers are taken in order while the entries read meanwhile are kept,
/// in order, for [`Member::entry`]. Every entry is still checked, and `quiet` proves none is
/// left over.
struct Member {
    c: Client,
    entries: std::collections::VecDeque<Delivery>,
}

impl Member {
    async fn login(broker: &TestBroker, user: &str, device: &str) -> Member {
        Member {
            c: broker.connect(user, device).await,
            entries: Default::default(),
        }
    }

    /// The next event that is not a stream entry.
    async fn answer(&mut self) -> Event {
        loop {
            match expect_event(&mut self.c).await {
                Event::Deliver(d) => self.entries.push_back(d),
                other => return other,
            }
        }
    }

    async fn reply(&mut self, request_id: u64) -> GroupResult {
        match self.answer().await {
            Event::GroupReply(r) => {
                assert_eq!(
                    r.request_id, request_id,
                    "GroupReply for another request: {r:?}"
                );
                r
            }
            other => panic!("expected GroupReply({request_id}), got {other:?}"),
        }
    }

    async fn ack(&mut self, client_msg_id: u64, status: Code) {
        match self.answer().await {
            Event::SendAck {
                client_msg_id: id,
                status: s,
                ..
            } => assert_eq!((id, s), (client_msg_id, status), "SendAck"),
            other => panic!("expected SendAck({client_msg_id}), got {other:?}"),
        }
    }

    async fn op(&mut self, request_id: u64, group: &str, op: GroupOp<'_>) -> GroupResult {
        self.c.group_op(request_id, group, op).await.expect("write");
        self.reply(request_id).await
    }

    async fn create(&mut self, request_id: u64, group: &str, members: &[&str]) -> GroupResult {
        self.c
            .group_create(request_id, group, members)
            .await
            .expect("write");
        self.reply(request_id).await
    }

    async fn list(&mut self, request_id: u64) -> Vec<String> {
        self.c.group_list(request_id).await.expect("write");
        self.reply(request_id).await.groups
    }

    async fn send(&mut self, client_msg_id: u64, group: &str, body: &[u8], status: Code) {
        self.c
            .group_send(client_msg_id, group, body)
            .await
            .expect("write");
        self.ack(client_msg_id, status).await;
    }

    async fn entry(&mut self) -> Delivery {
        match self.entries.pop_front() {
            Some(d) => d,
            None => expect_deliver(&mut self.c).await,
        }
    }

    async fn group_entry(&mut self, group: &str, kind: EntryKind) -> Delivery {
        let d = self.entry().await;
        assert_eq!(
            (d.group_id.as_str(), d.kind),
            (group, kind),
            "unexpected entry {d:?}"
        );
        d
    }

    /// Nothing more arrives: no entry kept, and a ping is answered next.
    async fn quiet(&mut self) {
        assert!(self.entries.is_empty(), "left over: {:?}", self.entries);
        self.c.ping(77).await.expect("write");
        assert_eq!(
            expect_event(&mut self.c).await,
            Event::Pong { nonce: 77 },
            "nothing more arrived"
        );
    }
}

fn names<'a>(v: &'a [&'a str]) -> Names<'a> {
    Names::Slice(v)
}

/// The group's owner shard is `shard` (of 2).
fn group_on(prefix: &str, shard: usize) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|g| group_owner(g, 2) == shard)
        .unwrap_or_default()
}

#[test]
fn a_group_spans_shards_and_every_member_sees_its_messages_in_group_order() {
    let broker = groups_broker().start();
    run(async {
        let (a, b, c) = (
            user_on_shard("g-alice", 0, 2),
            user_on_shard("g-bob", 1, 2),
            user_on_shard("g-carol", 1, 2),
        );
        // The group is owned by the shard the creator is not on.
        let group = group_on("team", 1);
        let mut ma = Member::login(&broker, &a, "d").await;
        let mut mb = Member::login(&broker, &b, "d").await;
        let mut mc = Member::login(&broker, &c, "d").await;
        let r = ma.create(1, &group, &[&b, &c]).await;
        assert_eq!((r.status, r.group_seq), (Code::OK, 1), "{r:?}");
        for (m, who) in [(&mut ma, &a), (&mut mb, &b), (&mut mc, &c)] {
            let d = m.group_entry(&group, EntryKind::GroupCreated).await;
            assert_eq!((d.seq, d.group_seq), (1, 1));
            assert_eq!(d.from_user, a);
            assert_eq!(d.members[0], a, "the creator comes first");
            assert_eq!(d.members.len(), 3);
            assert_eq!(d.outgoing, who == &a);
        }
        // Messages from two senders on two shards: each member sees the same group order.
        for i in 0..20u64 {
            let body = format!("m{i}");
            if i % 2 == 0 {
                ma.send(100 + i, &group, body.as_bytes(), Code::OK).await;
            } else {
                mb.send(200 + i, &group, body.as_bytes(), Code::OK).await;
            }
        }
        let mut orders = Vec::new();
        for m in [&mut ma, &mut mb, &mut mc] {
            let mut seen = Vec::new();
            for i in 0..20u64 {
                let d = m.group_entry(&group, EntryKind::Message).await;
                assert_eq!(d.seq, i + 2, "the member's own stream is gap-free");
                seen.push((d.group_seq, String::from_utf8(d.body).unwrap()));
            }
            orders.push(seen);
        }
        assert_eq!(orders[0], orders[1]);
        assert_eq!(orders[1], orders[2]);
        let seqs: Vec<u64> = orders[0].iter().map(|(s, _)| *s).collect();
        assert_eq!(
            seqs,
            (2..=21).collect::<Vec<_>>(),
            "group_seq counts up by one"
        );
        let bodies: Vec<&str> = orders[0].iter().map(|(_, b)| b.as_str()).collect();
        let expected: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
        assert_eq!(bodies, expected, "each message in the order it was acked");
        // Info and list.
        let info = mc
            .op(
                9,
                &group,
                GroupOp::Info {
                    after: "",
                    limit: 0,
                },
            )
            .await;
        assert_eq!((info.status, info.member_count), (Code::OK, 3));
        let mut expected: Vec<(String, bool)> =
            vec![(a.clone(), true), (b.clone(), false), (c.clone(), false)];
        expected.sort();
        assert_eq!(info.members, expected);
        assert_eq!(mb.list(10).await, vec![group.clone()]);
        for m in [&mut ma, &mut mb, &mut mc] {
            m.quiet().await;
        }
    });
}

#[test]
fn the_sender_sees_its_own_group_message_once_flagged_as_its_echo() {
    let broker = groups_broker().start();
    run(async {
        let a = user_on_shard("echo-a", 0, 2);
        let group = group_on("echo", 0);
        let mut phone = Member::login(&broker, &a, "phone").await;
        let mut laptop = Member::login(&broker, &a, "laptop").await;
        assert_eq!(phone.create(1, &group, &[]).await.status, Code::OK);
        for m in [&mut phone, &mut laptop] {
            m.group_entry(&group, EntryKind::GroupCreated).await;
        }
        phone.send(7, &group, b"hi", Code::OK).await;
        let on_phone = phone.group_entry(&group, EntryKind::Message).await;
        let on_laptop = laptop.group_entry(&group, EntryKind::Message).await;
        assert!(on_phone.outgoing && on_phone.echo, "{on_phone:?}");
        assert!(on_laptop.outgoing && !on_laptop.echo, "{on_laptop:?}");
        assert_eq!(
            on_phone.seq, on_laptop.seq,
            "one stream, the same seq on every device"
        );
        phone.quiet().await;
        laptop.quiet().await;
    });
}

#[test]
fn a_removed_member_gets_nothing_after_its_removal_and_an_added_one_nothing_before() {
    let broker = groups_broker().start();
    run(async {
        let (a, b, c) = (
            user_on_shard("rm-admin", 0, 2),
            user_on_shard("rm-bob", 1, 2),
            user_on_shard("rm-carol", 0, 2),
        );
        let group = group_on("boundary", 1);
        let mut ma = Member::login(&broker, &a, "d").await;
        let mut mb = Member::login(&broker, &b, "d").await;
        assert_eq!(ma.create(1, &group, &[&b]).await.status, Code::OK);
        ma.send(10, &group, b"before", Code::OK).await;
        // Remove bob, add carol, send again.
        let r = ma
            .op(
                2,
                &group,
                GroupOp::Remove {
                    members: names(&[&b]),
                },
            )
            .await;
        assert_eq!((r.status, r.group_seq), (Code::OK, 3), "{r:?}");
        let r = ma
            .op(
                3,
                &group,
                GroupOp::Add {
                    members: names(&[&c]),
                },
            )
            .await;
        assert_eq!((r.status, r.group_seq), (Code::OK, 4), "{r:?}");
        ma.send(11, &group, b"after", Code::OK).await;

        // Bob: creation, the message before, then his removal, then nothing.
        mb.group_entry(&group, EntryKind::GroupCreated).await;
        assert_eq!(
            mb.group_entry(&group, EntryKind::Message).await.body,
            b"before"
        );
        let removed = mb.group_entry(&group, EntryKind::MembersRemoved).await;
        assert_eq!(
            (removed.group_seq, removed.members.clone()),
            (3, vec![b.clone()])
        );
        mb.quiet().await;
        // Carol, on a new device (it gets her whole stream): her addition, then the message
        // after it, and nothing from before.
        let mut mc = Member::login(&broker, &c, "d").await;
        let added = mc.group_entry(&group, EntryKind::MembersAdded).await;
        assert_eq!((added.seq, added.group_seq), (1, 4));
        assert_eq!(added.members, vec![c.clone()]);
        let after = mc.group_entry(&group, EntryKind::Message).await;
        assert_eq!((after.group_seq, after.body.as_slice()), (5, &b"after"[..]));
        mc.quiet().await;
        // The admin's stream has all five entries.
        let kinds: Vec<EntryKind> = {
            let mut v = Vec::new();
            for _ in 0..5 {
                v.push(ma.entry().await.kind);
            }
            v
        };
        assert_eq!(
            kinds,
            vec![
                EntryKind::GroupCreated,
                EntryKind::Message,
                EntryKind::MembersRemoved,
                EntryKind::MembersAdded,
                EntryKind::Message
            ]
        );
        ma.quiet().await;
        // Bob can no longer send or read the member list, and the group left his list.
        mb.send(12, &group, b"let me in", Code::NOT_A_MEMBER).await;
        let r = mb
            .op(
                4,
                &group,
                GroupOp::Info {
                    after: "",
                    limit: 0,
                },
            )
            .await;
        assert_eq!(r.status, Code::NOT_A_MEMBER);
        assert!(mb.list(5).await.is_empty());
        mb.quiet().await;
    });
}

#[test]
fn every_group_error_has_its_code() {
    let broker = groups_broker()
        .limits("max_group_members = 3\nmax_groups_per_user = 2")
        .start();
    run(async {
        let (a, b, c, d) = (
            user_on_shard("err-a", 0, 2),
            user_on_shard("err-b", 1, 2),
            user_on_shard("err-c", 1, 2),
            user_on_shard("err-d", 0, 2),
        );
        let mut ma = Member::login(&broker, &a, "d").await;
        let mut mb = Member::login(&broker, &b, "d").await;
        let group = group_on("errs", 1);
        let long = "g".repeat(129);
        assert_eq!(ma.create(1, "", &[]).await.status, Code::INVALID_GROUP);
        assert_eq!(ma.create(2, &long, &[]).await.status, Code::INVALID_GROUP);
        assert_eq!(
            ma.create(3, &group, &[&long]).await.status,
            Code::INVALID_GROUP,
            "member IDs are checked too"
        );
        assert_eq!(
            ma.create(4, &group, &[&b, &c, &d]).await.status,
            Code::GROUP_FULL
        );
        assert_eq!(ma.create(5, &group, &[&b]).await.status, Code::OK);
        assert_eq!(mb.create(6, &group, &[]).await.status, Code::GROUP_EXISTS);
        assert_eq!(
            ma.op(7, "no-such-group", GroupOp::Leave).await.status,
            Code::GROUP_NOT_FOUND
        );
        ma.send(8, "no-such-group", b"x", Code::GROUP_NOT_FOUND)
            .await;
        assert_eq!(
            mb.op(
                9,
                &group,
                GroupOp::Add {
                    members: names(&[&c])
                }
            )
            .await
            .status,
            Code::NOT_GROUP_ADMIN
        );
        assert_eq!(
            ma.op(
                10,
                &group,
                GroupOp::Add {
                    members: names(&[&b])
                }
            )
            .await
            .status,
            Code::ALREADY_A_MEMBER
        );
        assert_eq!(
            ma.op(
                11,
                &group,
                GroupOp::Remove {
                    members: names(&[&d])
                }
            )
            .await
            .status,
            Code::NOT_A_MEMBER
        );
        assert_eq!(
            ma.op(
                12,
                &group,
                GroupOp::Add {
                    members: names(&[&c, &d])
                }
            )
            .await
            .status,
            Code::GROUP_FULL,
            "3 members at most"
        );
        // max_groups_per_user, counted on each user's own shard: b (shard 1) joins a second
        // group owned by shard 0; a third one (owned by shard 1, created by d, who is in no
        // group) is refused because of b, and names b only.
        let second = group_on("second", 0);
        let third = group_on("third", 1);
        assert_eq!(ma.create(13, &second, &[&b]).await.status, Code::OK);
        let mut md = Member::login(&broker, &d, "d").await;
        let r = md.create(14, &third, &[&b]).await;
        assert_eq!(r.status, Code::TOO_MANY_GROUPS, "{r:?}");
        assert!(
            r.message.contains(&b) && !r.message.contains(&d),
            "the refusal names the user at the limit: {}",
            r.message
        );
        // The creator is counted too: a is in two groups already.
        let r = ma.create(15, &group_on("fourth", 0), &[]).await;
        assert_eq!(r.status, Code::TOO_MANY_GROUPS, "{r:?}");
        // The refused operations created nothing and hold no place: once b leaves a group, b
        // may join another.
        assert_eq!(mb.op(16, &second, GroupOp::Leave).await.status, Code::OK);
        assert_eq!(md.create(17, &third, &[&b]).await.status, Code::OK);
        assert_eq!(md.create(18, &third, &[]).await.status, Code::GROUP_EXISTS);
    });
}

#[test]
fn when_the_last_admin_leaves_the_smallest_member_becomes_admin() {
    let broker = groups_broker().start();
    run(async {
        let (z, m, n) = ("zz-admin", "mm-member", "nn-member");
        let mut mz = Member::login(&broker, z, "d").await;
        let mut mm = Member::login(&broker, m, "d").await;
        let group = "promotion";
        assert_eq!(mz.create(1, group, &[m, n]).await.status, Code::OK);
        assert_eq!(mz.op(2, group, GroupOp::Leave).await.status, Code::OK);
        let info = mm
            .op(
                3,
                group,
                GroupOp::Info {
                    after: "",
                    limit: 0,
                },
            )
            .await;
        assert_eq!(
            info.members,
            vec![(m.to_string(), true), (n.to_string(), false)]
        );
        assert_eq!(
            mm.op(
                4,
                group,
                GroupOp::Add {
                    members: names(&["oo-new"])
                }
            )
            .await
            .status,
            Code::OK,
            "the promoted member may administer"
        );
        // z's stream ends with its own departure.
        assert_eq!(mz.entry().await.kind, EntryKind::GroupCreated);
        let left = mz.entry().await;
        assert_eq!(
            (left.kind, left.from_user.as_str()),
            (EntryKind::MemberLeft, z)
        );
        mz.quiet().await;
    });
}

#[test]
fn group_info_pages_through_members_in_id_order() {
    let broker = groups_broker().start();
    run(async {
        let mut ma = Member::login(&broker, "pager", "d").await;
        let members: Vec<String> = (0..25).map(|i| format!("page-{i:02}")).collect();
        let refs: Vec<&str> = members.iter().map(String::as_str).collect();
        assert_eq!(ma.create(1, "paged", &refs).await.status, Code::OK);
        let mut all = Vec::new();
        let mut after = String::new();
        for request in 2.. {
            let r = ma
                .op(
                    request,
                    "paged",
                    GroupOp::Info {
                        after: &after,
                        limit: 10,
                    },
                )
                .await;
            assert_eq!((r.status, r.member_count), (Code::OK, 26));
            assert!(r.members.len() <= 10);
            all.extend(r.members.iter().map(|(u, _)| u.clone()));
            if r.next_after.is_empty() {
                break;
            }
            after = r.next_after;
        }
        let mut expected: Vec<String> = members.clone();
        expected.push("pager".into());
        expected.sort();
        assert_eq!(all, expected);
    });
}

#[test]
fn a_resent_group_message_is_stored_once_and_answered_ok() {
    let broker = groups_broker().start();
    run(async {
        let (a, b) = (user_on_shard("dup-a", 0, 2), user_on_shard("dup-b", 1, 2));
        let group = group_on("dups", 1);
        let mut ma = Member::login(&broker, &a, "d").await;
        let mut mb = Member::login(&broker, &b, "d").await;
        assert_eq!(ma.create(1, &group, &[&b]).await.status, Code::OK);
        // Twice back to back (the second while the first is in flight), then again from
        // another device of the sender: every copy is answered OK, one is stored.
        ma.c.group_send(42, &group, b"once").await.unwrap();
        ma.c.group_send(42, &group, b"once").await.unwrap();
        ma.ack(42, Code::OK).await;
        ma.ack(42, Code::OK).await;
        let mut other = Member::login(&broker, &a, "other").await;
        other.send(42, &group, b"once", Code::OK).await;
        mb.group_entry(&group, EntryKind::GroupCreated).await;
        let d = mb.group_entry(&group, EntryKind::Message).await;
        assert_eq!((d.group_seq, d.client_msg_id), (2, 42));
        mb.quiet().await;
    });
}

#[test]
fn an_offline_member_replays_group_messages_at_login_in_order() {
    let broker = groups_broker().start();
    run(async {
        let (a, b) = (user_on_shard("off-a", 0, 2), user_on_shard("off-b", 1, 2));
        let group = group_on("offline", 0);
        let mut ma = Member::login(&broker, &a, "d").await;
        assert_eq!(ma.create(1, &group, &[&b]).await.status, Code::OK);
        for i in 1..=30u64 {
            ma.send(i, &group, &i.to_le_bytes(), Code::OK).await;
        }
        let mut mb = Member::login(&broker, &b, "d").await;
        // The acks come from the owner's commit; the fan-out to b's shard follows it, so the
        // last few may still be on their way at login (they then arrive live, in order).
        let head = mb.c.login_info().head_seq;
        assert!(head <= 31, "head_seq {head}");
        mb.group_entry(&group, EntryKind::GroupCreated).await;
        for i in 1..=30u64 {
            let d = mb.group_entry(&group, EntryKind::Message).await;
            assert_eq!((d.seq, d.group_seq), (i + 1, i + 1));
            assert_eq!(d.body, i.to_le_bytes());
            assert_eq!((d.from_user.as_str(), d.client_msg_id), (a.as_str(), i));
        }
        mb.quiet().await;
    });
}

/// Sends `n` group messages from `sender` without waiting, then collects acks until
/// `kill_after` are OK; returns the acked client_msg_ids.
async fn burst(c: &mut Client, group: &str, n: u64, kill_after: usize) -> Vec<u64> {
    for id in 1..=n {
        if c.group_send(id, group, &id.to_le_bytes()).await.is_err() {
            break;
        }
    }
    let mut acked = Vec::new();
    while acked.len() < kill_after {
        match expect_event(c).await {
            Event::SendAck {
                client_msg_id,
                status,
                ..
            } => {
                assert_eq!(status, Code::OK);
                acked.push(client_msg_id);
            }
            Event::Deliver(_) => {} // own echoes
            other => panic!("unexpected {other:?}"),
        }
    }
    acked
}

/// What a fresh device of `user` replays: group_seq → client_msg_id of the group's messages.
async fn replay_group(broker: &TestBroker, user: &str, group: &str) -> BTreeMap<u64, u64> {
    let mut c = broker
        .connect(user, &format!("fresh-{}", broker.pid()))
        .await;
    let head = c.login_info().head_seq;
    let mut seen = BTreeMap::new();
    let mut last = (0, 0);
    while last.0 < head {
        let d = expect_deliver(&mut c).await;
        assert_eq!(d.seq, last.0 + 1, "{user}: gap-free stream");
        assert!(d.group_seq > last.1, "{user}: group order");
        last = (d.seq, d.group_seq);
        if d.group_id == group && d.kind == EntryKind::Message {
            assert!(
                seen.insert(d.group_seq, d.client_msg_id).is_none(),
                "{user}: group_seq {} twice",
                d.group_seq
            );
        }
    }
    seen
}

fn kill_during_fanout(kill_after: usize) {
    const N: u64 = 2000;
    let config = groups_broker().storage("fsync = \"always\"");
    let broker = config.start();
    let members: Vec<String> = (0..8)
        .map(|i| user_on_shard(&format!("kf-{kill_after}-{i}"), i % 2, 2))
        .collect();
    let sender = members[0].clone();
    let group = group_on(&format!("crash-{kill_after}"), 1);
    let acked = run(async {
        let mut m = Member::login(&broker, &sender, "d").await;
        let rest: Vec<&str> = members[1..].iter().map(String::as_str).collect();
        assert_eq!(m.create(1, &group, &rest).await.status, Code::OK);
        burst(&mut m.c, &group, N, kill_after).await
    });
    let dir = broker.crash();
    let broker = config.dir(&dir).start();
    run(async {
        let mut reference: Option<BTreeMap<u64, u64>> = None;
        for m in &members {
            let seen = replay_group(&broker, m, &group).await;
            let ids: Vec<u64> = seen.values().copied().collect();
            for id in &acked {
                assert!(ids.contains(id), "{m}: acked group message {id} lost");
            }
            let mut unique = ids.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), ids.len(), "{m}: a message twice");
            // Every member holds the same messages under the same group_seqs: the fan-out
            // cut short by the kill was completed after the restart, not re-ordered.
            match &reference {
                None => reference = Some(seen),
                Some(r) => assert_eq!(r, &seen, "{m} disagrees with {}", members[0]),
            }
        }
        // And the group goes on.
        let mut c = broker.connect(&sender, "again").await;
        c.group_send(N + 1, &group, b"after").await.unwrap();
        loop {
            match expect_event(&mut c).await {
                Event::SendAck {
                    client_msg_id,
                    status,
                    ..
                } if client_msg_id == N + 1 => {
                    assert_eq!(status, Code::OK);
                    break;
                }
                _ => {}
            }
        }
    });
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kill_9_early_in_a_fanout_loses_and_duplicates_nothing() {
    kill_during_fanout(20);
}

#[test]
fn kill_9_mid_fanout_loses_and_duplicates_nothing() {
    kill_during_fanout(900);
}

#[test]
fn membership_survives_graceful_and_kill_9_restarts() {
    let dir = TempDir::new("group-restart");
    let config = groups_broker().dir(dir.path());
    let mut broker = config.start();
    let (a, b, c) = ("keep-a", "keep-b", "keep-c");
    run(async {
        let mut ma = Member::login(&broker, a, "d").await;
        assert_eq!(ma.create(1, "kept", &[b, c]).await.status, Code::OK);
        let r = ma
            .op(
                2,
                "kept",
                GroupOp::Remove {
                    members: names(&[c]),
                },
            )
            .await;
        assert_eq!(r.status, Code::OK);
    });
    broker.stop(std::time::Duration::from_secs(6));
    for round in 0..2 {
        let broker = config.start();
        run(async {
            let mut mb = Member::login(&broker, b, &format!("b{round}")).await;
            let info = mb
                .op(
                    3,
                    "kept",
                    GroupOp::Info {
                        after: "",
                        limit: 0,
                    },
                )
                .await;
            assert_eq!(
                info.members,
                vec![(a.to_string(), true), (b.to_string(), false)],
                "round {round}"
            );
            assert_eq!(mb.list(4).await, vec!["kept".to_string()]);
            let mut mc = Member::login(&broker, c, &format!("c{round}")).await;
            assert!(mc.list(5).await.is_empty());
            assert_eq!(mc.create(6, "kept", &[]).await.status, Code::GROUP_EXISTS);
            mb.send(7 + round, "kept", b"still here", Code::OK).await;
        });
        broker.crash(); // the second round starts after a kill -9
    }
}

#[test]
fn group_state_and_member_seqs_survive_retention_deleting_old_segments() {
    // 64 KiB segments, at most three: old segments (with the group's creation) are deleted
    // while the group is active; a restart must rebuild members and seqs from what remains.
    let dir = TempDir::new("group-retention");
    let config = groups_broker()
        .dir(dir.path())
        .shards(1)
        .limits("max_frame = \"4KiB\"")
        .storage("segment_size = \"64KiB\"\nmax_bytes_per_shard = \"192KiB\"");
    let broker = config.start();
    let body = vec![3u8; 1000];
    let (a, b) = ("ret-a", "ret-b");
    let last_seq = run(async {
        let mut ma = Member::login(&broker, a, "d").await;
        // A 1:1 history first, so b's seqs do not start at the group.
        for i in 1..=5u64 {
            ma.c.send(i, b, b"1:1").await.unwrap();
            ma.ack(i, Code::OK).await;
        }
        assert_eq!(ma.create(1, "retained", &[b]).await.status, Code::OK);
        for i in 100..400u64 {
            ma.send(i, "retained", &body, Code::OK).await;
            ma.entries.clear(); // a's own echoes: not what this test is about
        }
        let cb = broker.connect(b, "probe").await;
        cb.login_info().head_seq
    });
    assert_eq!(last_seq, 5 + 1 + 300);
    let dir_path = broker.crash();
    let broker = config.dir(&dir_path).start();
    run(async {
        let mut cb = broker.connect(b, "after").await;
        let info = cb.login_info().clone();
        assert_eq!(
            info.head_seq, last_seq,
            "b's head survived the deleted segments"
        );
        assert!(
            info.oldest_seq > 1,
            "retention did delete the oldest entries"
        );
        // The stream resumes gap-free from the oldest retained entry.
        let mut seq = info.oldest_seq;
        while seq <= info.head_seq {
            let d = expect_deliver(&mut cb).await;
            assert_eq!(d.seq, seq);
            seq += 1;
        }
        // The group still knows its members and goes on at the right seqs.
        let mut ma = Member::login(&broker, a, "again").await;
        let r = ma
            .op(
                2,
                "retained",
                GroupOp::Info {
                    after: "",
                    limit: 0,
                },
            )
            .await;
        assert_eq!(r.member_count, 2, "{r:?}");
        ma.c.group_send(1000, "retained", b"later").await.unwrap();
        let d = loop {
            let d = expect_deliver(&mut cb).await;
            if d.client_msg_id == 1000 {
                break d;
            }
        };
        assert_eq!((d.seq, d.group_seq), (last_seq + 1, 302));
    });
}

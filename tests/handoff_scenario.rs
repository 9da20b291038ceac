//! Connection hand-off and the cross-shard mesh under pressure: every login ends up on its owner
//! shard whichever shard accepted it, frames pipelined behind the Login travel with the
//! connection, devices joining mid-stream see the one order every other device sees, and a
//! minimal mesh queue is backpressure, never loss.

use std::cell::Cell;
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::net::TcpStream;
use std::rc::Rc;

use futures_lite::future;
use glommio::channels::local_channel;
use ringpost::client::{Client, Event};
use ringpost::protocol::{self, ClientMsg, Code, ServerMsg};
use ringpost::shard::owner;
use ringpost_harness::*;

/// (seq, from_user, client_msg_id) of every delivery, in arrival order.
type Seen = Vec<(u64, String, u64)>;

/// Asserts seqs are exactly 1..=n and each sender's client_msg_ids arrive in increasing order.
fn assert_one_gap_free_order(seen: &Seen, n: u64, who: &str) {
    let seqs: Vec<u64> = seen.iter().map(|d| d.0).collect();
    assert_eq!(
        seqs,
        (1..=n).collect::<Vec<_>>(),
        "{who}: gap-free seqs 1..={n}"
    );
    let mut last: HashMap<&str, u64> = HashMap::new();
    for (seq, from, id) in seen {
        let prev = last.insert(from, *id).unwrap_or(0);
        assert!(
            *id > prev,
            "{who}: {from}'s message {id} arrived after {prev} (seq {seq})"
        );
    }
}

async fn collect(c: &mut Client, n: u64) -> Seen {
    let mut seen = Vec::with_capacity(n as usize);
    while (seen.len() as u64) < n {
        let d = expect_deliver(c).await;
        seen.push((d.seq, d.from_user, d.client_msg_id));
    }
    seen
}

#[test]
fn every_login_is_served_by_its_owner_shard_whichever_shard_accepted_it() {
    const SHARDS: usize = 4;
    const PER_SHARD: usize = 8;
    let broker = test_broker().shards(SHARDS).start();
    run(async {
        // Users spread over every shard; with SO_REUSEPORT most of these 32 connections are
        // accepted by a shard that does not own their user and must be handed off.
        let users: Vec<String> = (0..SHARDS)
            .flat_map(|s| (0..PER_SHARD).map(move |i| user_on_shard(&format!("u{i}"), s, SHARDS)))
            .collect();
        let mut clients = Vec::new();
        for u in &users {
            let c = broker.connect(u, "d").await;
            assert_eq!(&c.login_info().user_id, u);
            assert_eq!(
                c.login_info().shard as usize,
                owner(u, SHARDS),
                "{u}'s LoginOk names its owner shard"
            );
            clients.push(c);
        }
        let shards_seen: BTreeSet<u16> = clients.iter().map(|c| c.login_info().shard).collect();
        assert_eq!(shards_seen.len(), SHARDS, "every shard serves someone");

        // A ring: each user sends to the next one, so messages cross every pair of shards.
        let n = users.len();
        for (i, c) in clients.iter_mut().enumerate() {
            let to = &users[(i + 1) % n];
            c.send(i as u64 + 1, to, users[i].as_bytes()).await.unwrap();
        }
        for (i, c) in clients.iter_mut().enumerate() {
            let from = &users[(i + n - 1) % n];
            // Each client gets its own SendAck and its predecessor's message, in either order.
            let (mut acked, mut got) = (false, false);
            while !(acked && got) {
                match expect_event(c).await {
                    Event::SendAck {
                        client_msg_id,
                        status,
                        ..
                    } => {
                        assert_eq!((client_msg_id, status), (i as u64 + 1, Code::OK));
                        acked = true;
                    }
                    Event::Deliver(d) => {
                        assert_eq!(
                            (d.seq, d.from_user.as_str(), d.body.as_slice()),
                            (1, from.as_str(), from.as_bytes())
                        );
                        got = true;
                    }
                    other => panic!("{}: unexpected {other:?}", users[i]),
                }
            }
        }
    });
}

/// What a raw socket read back, owned.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Reply {
    LoginOk { shard: u16 },
    SendAck { id: u64, status: u16 },
    Pong { nonce: u64 },
    Other(String),
}

fn read_reply(s: &mut TcpStream) -> Reply {
    let payload = read_frame(s).expect("a frame, not EOF");
    match protocol::decode_server(&payload) {
        Ok(ServerMsg::LoginOk { shard, .. }) => Reply::LoginOk { shard },
        Ok(ServerMsg::SendAck {
            client_msg_id,
            status,
            ..
        }) => Reply::SendAck {
            id: client_msg_id,
            status: status.0,
        },
        Ok(ServerMsg::Pong { nonce }) => Reply::Pong { nonce },
        other => Reply::Other(format!("{other:?}")),
    }
}

/// Reads `n` replies and returns them sorted (acks of cross-shard sends and Pongs may
/// interleave in either order).
fn read_replies(s: &mut TcpStream, n: usize) -> Vec<Reply> {
    let mut got: Vec<Reply> = (0..n).map(|_| read_reply(s)).collect();
    got.sort();
    got
}

fn send_frame(id: u64, to: &str, body: &[u8]) -> Vec<u8> {
    frame(&ClientMsg::Send {
        client_msg_id: id,
        to_user: to,
        body,
    })
}

#[test]
fn frames_pipelined_behind_the_login_travel_with_the_connection() {
    const SHARDS: usize = 4;
    let broker = test_broker().shards(SHARDS).start();
    let rcpt = user_on_shard("rcpt", 0, SHARDS);
    let senders: Vec<String> = (0..SHARDS)
        .flat_map(|s| (0..4).map(move |i| user_on_shard(&format!("pipe{i}"), s, SHARDS)))
        .collect();
    for (k, sender) in senders.iter().enumerate() {
        let mut s = raw_connect(broker.addr);
        // One write: Login, two Sends, a Ping, and the first half of a third Send.
        let third = send_frame(3, &rcpt, format!("{sender} #3").as_bytes());
        let (head, tail) = third.split_at(third.len() / 2);
        let mut bytes = frame(&ClientMsg::Login {
            token: &broker.token(sender),
            device_id: "d",
            last_seq: 0,
        });
        bytes.extend(send_frame(1, &rcpt, format!("{sender} #1").as_bytes()));
        bytes.extend(send_frame(2, &rcpt, format!("{sender} #2").as_bytes()));
        bytes.extend(frame(&ClientMsg::Ping { nonce: k as u64 }));
        bytes.extend_from_slice(head);
        s.write_all(&bytes).unwrap();
        assert_eq!(
            read_reply(&mut s),
            Reply::LoginOk {
                shard: owner(sender, SHARDS) as u16
            },
            "{sender}"
        );
        assert_eq!(
            read_replies(&mut s, 3),
            vec![
                Reply::SendAck { id: 1, status: 0 },
                Reply::SendAck { id: 2, status: 0 },
                Reply::Pong { nonce: k as u64 },
            ],
            "{sender}: the frames after the Login were all served"
        );
        // The half frame was kept too: its other half completes it.
        s.write_all(tail).unwrap();
        assert_eq!(read_reply(&mut s), Reply::SendAck { id: 3, status: 0 });
    }
    run(async {
        let mut r = broker.connect(&rcpt, "d").await;
        assert_eq!(r.login_info().head_seq, 3 * senders.len() as u64);
        let mut seen: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
        for seq in 1..=3 * senders.len() as u64 {
            let d = expect_deliver(&mut r).await;
            assert_eq!(d.seq, seq);
            seen.entry(d.from_user).or_default().push(d.body);
        }
        for sender in &senders {
            let want: Vec<Vec<u8>> = (1..=3)
                .map(|i| format!("{sender} #{i}").into_bytes())
                .collect();
            assert_eq!(seen.get(sender), Some(&want), "{sender}'s three messages");
        }
    });
}

#[test]
fn a_large_burst_written_with_the_login_is_served_in_full() {
    const N: u64 = 60;
    let broker = test_broker().limits("sends_per_sec = 100000").start();
    let (a, b) = (user_on_shard("burst", 1, 2), user_on_shard("sink", 0, 2));
    let mut s = raw_connect(broker.addr);
    let mut bytes = frame(&ClientMsg::Login {
        token: &broker.token(&a),
        device_id: "d",
        last_seq: 0,
    });
    for i in 1..=N {
        bytes.extend(send_frame(i, &b, &[i as u8; 900]));
    }
    s.write_all(&bytes).unwrap();
    assert_eq!(read_reply(&mut s), Reply::LoginOk { shard: 1 });
    let acks = read_replies(&mut s, N as usize);
    let want: Vec<Reply> = (1..=N).map(|id| Reply::SendAck { id, status: 0 }).collect();
    assert_eq!(acks, want);
    run(async {
        let mut r = broker.connect(&b, "d").await;
        for i in 1..=N {
            let d = expect_deliver(&mut r).await;
            assert_eq!((d.seq, d.client_msg_id), (i, i));
            assert_eq!(d.body, vec![i as u8; 900]);
        }
    });
}

#[test]
fn devices_joining_mid_stream_see_the_same_order_as_the_others() {
    const SHARDS: usize = 3;
    const CHUNKS: u64 = 10;
    const CHUNK: u64 = 30;
    const N: u64 = SHARDS as u64 * CHUNKS * CHUNK;
    let broker = test_broker()
        .shards(SHARDS)
        .limits("sends_per_sec = 100000")
        .start();
    run(async {
        let rcpt = user_on_shard("fan", 0, SHARDS);
        let mut early = Vec::new();
        for dev in ["d1", "d2"] {
            let mut c = broker.connect(&rcpt, dev).await;
            early.push(glommio::spawn_local(
                async move { collect(&mut c, N).await },
            ));
        }
        let (joined_tx, joined_rx) = local_channel::new_bounded::<()>(1);
        let joined_tx = Rc::new(joined_tx);
        let acked_by_first = Rc::new(Cell::new(0u64));
        let mut senders = Vec::new();
        for s in 0..SHARDS {
            let sender = user_on_shard("src", s, SHARDS);
            let mut c = broker.connect(&sender, "d").await;
            let rcpt = rcpt.clone();
            let joined_tx = joined_tx.clone();
            let acked_by_first = acked_by_first.clone();
            senders.push(glommio::spawn_local(async move {
                let mut id = 0;
                for chunk in 0..CHUNKS {
                    for _ in 0..CHUNK {
                        id += 1;
                        c.send(id, &rcpt, &id.to_le_bytes()).await.unwrap();
                    }
                    for _ in 0..CHUNK {
                        match expect_event(&mut c).await {
                            Event::SendAck { status, .. } => assert_eq!(status, Code::OK),
                            other => panic!("expected SendAck, got {other:?}"),
                        }
                    }
                    if s == 0 {
                        acked_by_first.set(id);
                        if chunk == 3 {
                            joined_tx.send(()).await.unwrap();
                        }
                    }
                }
            }));
        }
        // Join while the senders are still going (sender 0 is 4 chunks in).
        future::or(async { joined_rx.recv().await.unwrap() }, async {
            glommio::timer::sleep(WAIT).await;
            panic!("sender 0 never got through 4 chunks");
        })
        .await;
        let head_before = acked_by_first.get();
        assert!(head_before >= 4 * CHUNK);
        let mut d3 = broker.connect(&rcpt, "d3").await;
        let mut d4 = Client::connect(&broker.opts(&rcpt, "d4"), 50)
            .await
            .expect("d4 logs in");
        assert!(d3.login_info().head_seq >= head_before);
        let late = vec![
            glommio::spawn_local(async move { collect(&mut d3, N).await }),
            glommio::spawn_local(async move { collect(&mut d4, N - 50).await }),
        ];
        for t in senders {
            t.await;
        }
        let mut all = Vec::new();
        for t in early.into_iter().chain(late) {
            all.push(t.await);
        }
        for (who, seen) in ["d1", "d2", "d3"].iter().zip(&all) {
            assert_one_gap_free_order(seen, N, who);
        }
        assert_eq!(all[0], all[1], "d1 and d2 saw the same order");
        assert_eq!(all[0], all[2], "d3 (replay, then live) saw the same order");
        assert_eq!(
            all[3].as_slice(),
            &all[0][50..],
            "d4 (resuming after seq 50) saw the same order from seq 51"
        );
    });
}

#[test]
fn a_minimal_mesh_queue_is_backpressure_not_loss() {
    const SHARDS: usize = 4;
    const PER_SENDER: u64 = 2000;
    let broker = test_broker()
        .shards(SHARDS)
        .limits("sends_per_sec = 1000000\nmax_inbox = 100000")
        .server("mesh_queue = 16")
        .start();
    run(async {
        let rcpt = user_on_shard("hot", 0, SHARDS);
        let mut r = broker.connect(&rcpt, "d").await;
        let reader = glommio::spawn_local(async move { collect(&mut r, 3 * PER_SENDER).await });
        let mut tasks = Vec::new();
        for s in 1..SHARDS {
            let sender = user_on_shard("cold", s, SHARDS);
            let (mut rx, mut tx) = broker.connect(&sender, "d").await.split();
            let rcpt = rcpt.clone();
            // Writer and ack reader run at once, so a paused broker never deadlocks the test.
            tasks.push(glommio::spawn_local(async move {
                for i in 1..=PER_SENDER {
                    tx.queue(&ClientMsg::Send {
                        client_msg_id: i,
                        to_user: &rcpt,
                        body: &i.to_le_bytes(),
                    });
                    if i % 100 == 0 {
                        tx.flush().await.unwrap();
                    }
                }
                tx.flush().await.unwrap();
            }));
            tasks.push(glommio::spawn_local(async move {
                let mut acked = vec![false; PER_SENDER as usize + 1];
                for _ in 0..PER_SENDER {
                    let next = future::or(async { Some(rx.recv().await) }, async {
                        glommio::timer::sleep(WAIT).await;
                        None
                    })
                    .await;
                    match next.expect("a SendAck within the wait") {
                        Ok(Event::SendAck {
                            client_msg_id,
                            status,
                            ..
                        }) => {
                            assert_eq!(status, Code::OK, "send {client_msg_id}");
                            assert!(
                                !std::mem::replace(&mut acked[client_msg_id as usize], true),
                                "send {client_msg_id} acked twice"
                            );
                        }
                        other => panic!("expected SendAck, got {other:?}"),
                    }
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        let seen = reader.await;
        assert_one_gap_free_order(&seen, 3 * PER_SENDER, "recipient");
    });
}

//! Micro-benchmarks: owner hash, codec encode/decode, cross-shard hop through the real mesh.
//!
//! `make bench` (= `cargo bench -p ringpost-bench`). Each line prints ns per operation, best of
//! several rounds; record results in BENCHMARKS.md with the commit and machine.

use std::hint::black_box;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};
use ringpost::protocol::{self, ClientMsg, Deliver, ServerMsg};
use ringpost::shard::bootstrap::OUTBOX_HIGH_WATER;
use ringpost::shard::envelope::{Envelope, Message, UserRef};
use ringpost::shard::read_buf::ReadSource;
use ringpost::shard::transport::{build_mesh, Mesh};

const ROUNDS: usize = 5;

/// `cargo bench` passes `--bench`; under `cargo test` the same binary runs a quick smoke pass.
fn scale(iters: u64) -> u64 {
    if std::env::args().any(|a| a == "--bench") {
        iters
    } else {
        (iters / 1000).max(1)
    }
}

/// Runs `f(iters)` ROUNDS times and reports the best ns/iteration.
fn bench(name: &str, iters: u64, mut f: impl FnMut(u64)) {
    let iters = scale(iters);
    let mut best = f64::MAX;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        f(iters);
        best = best.min(t.elapsed().as_nanos() as f64 / iters as f64);
    }
    println!("{name:<44} {best:>10.1} ns/op");
}

fn main() {
    let users: Vec<String> = (0..1024).map(|i| format!("user-{i}")).collect();
    bench("owner(user, 16)", 10_000_000, |n| {
        for i in 0..n {
            black_box(ringpost::shard::owner(&users[(i & 1023) as usize], 16));
        }
    });

    let body = vec![7u8; 64];
    let mut out = Vec::with_capacity(1 << 20);
    bench("encode_client(Send, 64 B body)", 2_000_000, |n| {
        for i in 0..n {
            out.clear();
            protocol::encode_client(
                &ClientMsg::Send {
                    client_msg_id: i,
                    to_user: "user-42",
                    body: &body,
                },
                &mut out,
            );
            black_box(&out);
        }
    });
    let mut send_frame = Vec::new();
    protocol::encode_client(
        &ClientMsg::Send {
            client_msg_id: 1,
            to_user: "user-42",
            body: &body,
        },
        &mut send_frame,
    );
    bench("check + decode_client(Send, 64 B body)", 2_000_000, |n| {
        for _ in 0..n {
            if let Ok(Some(len)) = protocol::check(&send_frame, 65536) {
                let _ = black_box(protocol::decode_client(
                    &send_frame[protocol::LEN_PREFIX..len],
                ));
            }
        }
    });
    bench("encode_server(Deliver, 64 B body)", 2_000_000, |n| {
        for i in 0..n {
            out.clear();
            protocol::encode_server(
                &ServerMsg::Deliver(Deliver::message(i, "user-7", i, 1, &body)),
                &mut out,
            );
            black_box(&out);
        }
    });

    // What the metrics add per message: the inbox counts one accept, delivery one Deliver
    // (single-writer atomics: a load and a store each), plus one histogram observation per
    // group commit, amortised over its batch.
    let m = ringpost::metrics::ShardMetrics::new(0, 2);
    bench("metrics: accepted.inc + delivered.add", 50_000_000, |n| {
        for _ in 0..n {
            black_box(&m.accepted).inc();
            black_box(&m.delivered).add(1);
        }
    });
    bench("metrics: commit_batch.observe", 20_000_000, |n| {
        for i in 0..n {
            black_box(&m.commit_batch).observe(i & 63);
        }
    });
    // What every end of a batch of work pays for the admin's control queue when it is empty.
    let queue = ringpost::shard::control::ControlInbox::new(256);
    bench("control queue: pop when empty", 50_000_000, |n| {
        for _ in 0..n {
            black_box(black_box(&queue).pop());
        }
    });

    let ns = cross_shard_hop(scale(2_000_000));
    println!(
        "{:<44} {ns:>10.1} ns/msg",
        "cross-shard hop (mesh push → receive)"
    );
}

/// Shard 0 pushes `total` Message envelopes to shard 1 through the real `Mesh` (outbox,
/// flusher, SPSC queue, batches); shard 1 receives them. Returns ns per message, end to end.
fn cross_shard_hop(total: u64) -> f64 {
    let mut ports = build_mesh(2, 1024).into_iter();
    let (p0, p1) = match (ports.next(), ports.next()) {
        (Some(a), Some(b)) => (a, b),
        _ => return f64::NAN,
    };
    let from: Arc<str> = Arc::from("user-1");
    let to = UserRef::keep(ReadSource::ELSEWHERE, "user-2");
    let body = Bytes::from_static(&[0u8; 64]);
    let start = Arc::new(std::sync::Barrier::new(2));
    let s0 = start.clone();
    let producer = LocalExecutorBuilder::new(Placement::Unbound).spawn(move || async move {
        let mesh = Rc::new(Mesh::new(0, 2, OUTBOX_HIGH_WATER));
        let sender = match p0.senders.into_iter().nth(1).flatten() {
            Some(s) => s.connect().await,
            None => return Duration::ZERO,
        };
        let flusher = glommio::spawn_local(mesh.clone().flush_to(1, sender));
        s0.wait();
        let t = Instant::now();
        for i in 0..total {
            mesh.push(
                1,
                Envelope::Message(Message {
                    from: from.clone(),
                    to: to.clone(),
                    client_msg_id: i,
                    body: body.clone(),
                    origin_conn: 1,
                    read_ns: 0,
                }),
            );
            if i % 256 == 255 {
                glommio::yield_if_needed().await;
            }
        }
        mesh.wait_idle().await;
        mesh.close();
        flusher.await;
        t.elapsed()
    });
    let consumer = LocalExecutorBuilder::new(Placement::Unbound).spawn(move || async move {
        let receiver = match p1.receivers.into_iter().next().flatten() {
            Some(r) => r.connect().await,
            None => return Duration::ZERO,
        };
        start.wait();
        let t = Instant::now();
        let mut got = 0u64;
        while got < total {
            match receiver.recv().await {
                Some(batch) => got += batch.len() as u64,
                None => break,
            }
        }
        t.elapsed()
    });
    match (producer.map(|h| h.join()), consumer.map(|h| h.join())) {
        (Ok(Ok(_)), Ok(Ok(elapsed))) => elapsed.as_nanos() as f64 / total as f64,
        _ => f64::NAN,
    }
}

//! (Tests only.) What a shard's executor allocates per wake-up in the vendored glommio
//! (`vendor/README.md`): nothing, once warmed up. Upstream allocated a readiness source for
//! each wait on a socket, two preemption-timer sources per pass of the loop, a ring link per
//! sleep, new timer-map nodes per pass whenever a timer was pending, and churned the timer map
//! at each poll of a pending timer.
#![cfg(test)]

use std::io::{Read, Write};
use std::time::Duration;

use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use glommio::{LocalExecutorBuilder, Placement};

use crate::alloc_count::{allocations, record_sites, take_sites};

/// Where the one allocation the executor may still make is: its pool of I/O sources
/// (`glommio::sys::source`, vendor/README.md) grows, a few at a time, to the most requests
/// that are in the ring at once. How many that is depends on scheduling (on a loaded machine a
/// cancelled timer's completion can still be outstanding several passes later), so the pool
/// may grow once more long after any warm-up: bounded, not per wake-up.
const POOL_GROWTH: &str = "glommio::sys::source::";

/// Round trips of one byte between a blocking client thread and a task on the executor, which
/// waits for each byte in a 1-byte read raced with a long timer (as a session waits, with its
/// park timer) while another timer is pending; between rounds the executor has nothing to run
/// and goes through its wait for I/O. Counts the executor thread's allocations over the rounds
/// after a warm-up: fewer than one per hundred wake-ups, and each one the source pool growing
/// (before the vendored changes there were several per wake-up: 7,988 over these rounds with
/// the timer map split each pass, 2,340 with sources not reused).
#[test]
fn waiting_for_a_socket_and_sleeping_allocate_nothing_per_wake_up() {
    const WARM_UP: usize = 200;
    const ROUNDS: usize = 2_000;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let client = std::thread::spawn(move || {
        let (mut peer, _) = listener.accept().expect("accept");
        let mut byte = [0u8; 1];
        for round in 0..WARM_UP + ROUNDS {
            peer.write_all(&[round as u8]).expect("client write");
            peer.read_exact(&mut byte).expect("client read");
            assert_eq!(byte[0], round as u8);
        }
    });
    let counted = LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            // Pending the whole time: the timer map is never empty.
            let _pending = glommio::spawn_local(glommio::timer::sleep(Duration::from_secs(3600)));
            glommio::yield_if_needed().await;
            let mut stream = glommio::net::TcpStream::connect(addr)
                .await
                .expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            // Raced with every read and polled again each time, as a session's park timer is.
            let mut park = glommio::timer::Timer::new(Duration::from_secs(3600));
            let mut byte = [0u8; 1];
            let mut before = 0;
            for round in 0..WARM_UP + ROUNDS {
                if round == WARM_UP {
                    before = allocations();
                    record_sites();
                }
                let read = async { Some(stream.read_exact(&mut byte).await) };
                let parked = async {
                    (&mut park).await;
                    None
                };
                future::or(read, parked)
                    .await
                    .expect("not parked")
                    .expect("read");
                stream.write_all(&byte).await.expect("write");
            }
            let made = allocations() - before;
            (made, take_sites())
        })
        .expect("executor")
        .join()
        .expect("executor thread");
    client.join().expect("client thread");
    let (made, sites) = counted;
    let elsewhere = sites
        .iter()
        .filter(|site| !site.contains(POOL_GROWTH))
        .count();
    assert!(
        made < ROUNDS as u64 / 100 && elsewhere == 0,
        "{made} allocations over {ROUNDS} wake-ups, {elsewhere} of the first {} not the \
         source pool growing; made at:\n{}",
        sites.len(),
        sites.join("\n---\n")
    );
}

//! `limits.recipients = "known"`: a send to a user that never logged in is refused with
//! USER_UNKNOWN and stores nothing; a user that logged in once is known — across logouts,
//! restarts (the first login writes a cursor record) — and offline delivery to them works.

use ringpost::protocol::Code;
use ringpost_harness::*;

#[test]
fn unknown_recipients_are_refused_and_known_ones_get_offline_delivery() {
    let dir = TempDir::new("recipients");
    let builder = test_broker()
        .dir(dir.path())
        .limits("recipients = \"known\"");
    let broker = builder.start();
    let sender = user_on_shard("sender", 0, 2);
    let (ghost_here, ghost_there) = (user_on_shard("ghost", 0, 2), user_on_shard("ghost", 1, 2));
    let (known_here, known_there) = (user_on_shard("member", 0, 2), user_on_shard("member", 1, 2));
    run(async {
        for user in [&known_here, &known_there] {
            let mut c = broker.connect(user, "phone").await;
            c.logout().await.unwrap();
            expect_goaway_then_close(&mut c, Code::LOGGED_OUT).await;
        }
        let mut s = broker.connect(&sender, "d").await;
        s.send(1, &ghost_here, b"x").await.unwrap();
        expect_ack(&mut s, 1, Code::USER_UNKNOWN).await;
        s.send(2, &ghost_there, b"x").await.unwrap();
        expect_ack(&mut s, 2, Code::USER_UNKNOWN).await;
        s.send(3, &known_here, b"while away").await.unwrap();
        expect_ack(&mut s, 3, Code::OK).await;
        s.send(4, &known_there, b"while away").await.unwrap();
        expect_ack(&mut s, 4, Code::OK).await;
        // The ghosts got no stream: when they do log in, there is nothing for them.
        let g = broker.connect(&ghost_there, "d").await;
        assert_eq!(g.login_info().head_seq, 0);
    });
    // Known survives a crash and restart (the marker is in the log).
    let dir_kept = broker.crash();
    let broker = builder.clone().dir(dir_kept).start();
    run(async {
        let mut s = broker.connect(&sender, "d").await;
        s.send(5, &known_there, b"after restart").await.unwrap();
        expect_ack(&mut s, 5, Code::OK).await;
        s.send(6, &ghost_here, b"x").await.unwrap();
        expect_ack(&mut s, 6, Code::USER_UNKNOWN).await;
        // ghost_there logged in before the crash: known now.
        s.send(7, &ghost_there, b"welcome").await.unwrap();
        expect_ack(&mut s, 7, Code::OK).await;
        let mut k = broker.connect(&known_there, "phone").await;
        let bodies: Vec<Vec<u8>> = [expect_deliver(&mut k).await, expect_deliver(&mut k).await]
            .into_iter()
            .map(|d| d.body)
            .collect();
        assert_eq!(bodies, [b"while away".to_vec(), b"after restart".to_vec()]);
        let mut h = broker.connect(&known_here, "phone").await;
        assert_eq!(expect_deliver(&mut h).await.body, b"while away");
    });
}

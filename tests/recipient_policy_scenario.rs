//! `limits.recipients = "known"`: a send to a user that never logged in is refused with
//! USER_UNKNOWN and stores nothing; a user that logged in once, or that the app backend
//! registered (`PUT /v1/users/{id}`), is known — across logouts, restarts (the first login
//! writes a cursor record) — and offline delivery to them works; groups take known members
//! only.

use ringpost::protocol::Code;
use ringpost_harness::*;
use serde_json::{json, Value};

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

/// The next GroupReply (the group's entries, delivered independently, are skipped).
async fn group_reply(c: &mut ringpost::client::Client) -> ringpost::client::GroupResult {
    loop {
        match expect_event(c).await {
            ringpost::client::Event::GroupReply(r) => return r,
            ringpost::client::Event::Deliver(_) => {}
            other => panic!("expected a GroupReply, got {other:?}"),
        }
    }
}

/// `(status, JSON body)` of an admin request.
fn admin(broker: &TestBroker, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let (status, text) = broker.admin_call(method, path, body);
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, v)
}

#[test]
fn the_backend_registers_users_and_unknown_ones_cannot_be_made_members() {
    let dir = TempDir::new("recipients-register");
    let builder = test_broker()
        .dir(dir.path())
        .limits("recipients = \"known\"");
    let broker = builder.start();
    let (ghost, signup) = (user_on_shard("ghost", 1, 2), user_on_shard("signup", 1, 2));
    let alice = user_on_shard("alice", 0, 2);
    let publish = |to: &str, id: u64| {
        format!(
            r#"{{"from": "system:welcome", "to_user": "{to}", "body": "hi", "client_msg_id": {id}}}"#
        )
    };

    // Never seen: not known, and a publish to them is refused like a client's send.
    let (s, v) = admin(&broker, "GET", &format!("/v1/users/{signup}"), None);
    assert_eq!((s, v["known"].clone()), (200, json!(false)));
    let (s, v) = admin(&broker, "POST", "/v1/messages", Some(&publish(&signup, 1)));
    assert_eq!(
        (s, v),
        (404, json!({"status": "USER_UNKNOWN", "code": 403}))
    );

    // Registered by the backend (twice: idempotent): known, and a publish is stored.
    for _ in 0..2 {
        let (s, v) = admin(&broker, "PUT", &format!("/v1/users/{signup}"), None);
        assert_eq!((s, v), (200, json!({"user_id": signup, "known": true})));
    }
    let (s, v) = admin(&broker, "GET", &format!("/v1/users/{signup}"), None);
    assert_eq!(
        (s, v["known"].clone(), v["head_seq"].clone()),
        (200, json!(true), json!(0))
    );
    let (s, v) = admin(&broker, "POST", "/v1/messages", Some(&publish(&signup, 2)));
    assert_eq!((s, v), (200, json!({"status": "OK", "code": 0, "seq": 1})));
    let (s, v) = admin(&broker, "PUT", "/v1/users/system:x", None);
    assert_eq!((s, v["code"].clone()), (400, json!(402)));

    // Groups take known members only: a client's create and the backend's add.
    run(async {
        let mut a = broker.connect(&alice, "phone").await;
        a.group_create(1, "team", &[ghost.as_str(), signup.as_str()])
            .await
            .unwrap();
        let r = group_reply(&mut a).await;
        assert_eq!((r.request_id, r.status), (1, Code::USER_UNKNOWN), "{r:?}");
        assert!(
            r.message.contains(&ghost) && !r.message.contains(&signup),
            "{r:?}"
        );
        a.group_create(2, "team", &[signup.as_str()]).await.unwrap();
        let r = group_reply(&mut a).await;
        assert_eq!((r.request_id, r.status), (2, Code::OK), "{r:?}");
    });
    let add = format!(r#"{{"members": ["{ghost}"]}}"#);
    let (s, v) = admin(&broker, "POST", "/v1/groups/team/members", Some(&add));
    assert_eq!((s, v["code"].clone()), (422, json!(403)), "{v}");
    let (_, v) = admin(&broker, "GET", "/v1/groups/team", None);
    assert_eq!(v["member_count"], 2, "{v}");
    // The made-up member cost no user record.
    let (_, v) = admin(&broker, "GET", &format!("/v1/users/{ghost}"), None);
    assert_eq!(v["known"], false);

    let kept = broker.crash();
    let broker = builder.clone().dir(kept).start();
    // (Their stream: the publish, then the group's creation.)
    let (s, v) = admin(&broker, "GET", &format!("/v1/users/{signup}"), None);
    assert_eq!(
        (s, v["known"].clone(), v["head_seq"].clone()),
        (200, json!(true), json!(2))
    );
    let (s, v) = admin(&broker, "POST", "/v1/messages", Some(&publish(&signup, 3)));
    assert_eq!((s, v["status"].clone()), (200, json!("OK")));
}

#[test]
fn a_registration_survives_a_power_cut_right_after_its_answer() {
    use ringpost::log::fault;
    let dir = TempDir::new("recipients-power");
    let builder = test_broker()
        .dir(dir.path())
        .limits("recipients = \"known\"")
        .storage("fsync = \"always\"")
        .env(fault::POWER_LOG_ENV, "power.log");
    let broker = builder.start();
    let late = user_on_shard("late", 0, 2);
    let (s, _) = admin(&broker, "PUT", &format!("/v1/users/{late}"), None);
    assert_eq!(s, 200);
    // Everything not synced when the 200 went out is gone after the cut.
    let kept = broker.crash();
    let data = kept.join("data");
    let cut = fault::simulate_power_cut(&data, &data.join("power.log")).expect("power cut");
    eprintln!("power cut: {cut:?}");
    let broker = builder.clone().dir(kept).start();
    let (_, v) = admin(&broker, "GET", &format!("/v1/users/{late}"), None);
    assert_eq!(v["known"], true, "{v}");
}

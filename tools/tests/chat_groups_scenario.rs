//! `ringpost-tools chat` walk-through of a group, as README's "groups in five minutes" does it:
//! two chat processes on stdin/stdout (`--json`), one creates a group with the other, both
//! talk in it, list and inspect it, one leaves — every step shows up on both sides.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ringpost_harness::{tools, tools_broker, TempDir, TestBroker, WAIT};
use serde_json::Value;

/// A running `ringpost-tools chat --json`: its stdin, and its stdout as JSON events.
struct Chat {
    child: Child,
    stdin: Option<ChildStdin>,
    events: mpsc::Receiver<Value>,
    /// Events read while waiting for another kind, in order.
    pending: std::collections::VecDeque<Value>,
}

impl Chat {
    fn start(broker: &TestBroker, user: &str) -> Chat {
        let mut child = tools(&["chat", "--json", "--addr", &broker.addr_string()])
            .arg("--token")
            .arg(broker.token(user))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chat");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    panic!("chat printed a line that is not JSON: {line}");
                };
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let mut chat = Chat {
            child,
            stdin,
            events,
            pending: Default::default(),
        };
        assert_eq!(chat.next()["event"], "login");
        chat
    }

    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to chat");
        stdin.flush().expect("flush");
    }

    fn next(&mut self) -> Value {
        self.events
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("chat printed nothing within {WAIT:?}"))
    }

    /// The next event of kind `event` (`group_reply`, `deliver`, `send_ack`): events of one
    /// kind come in order; those of other kinds read meanwhile wait for their own call (a
    /// reply and the stream entry its request caused may come in either order).
    fn until(&mut self, event: &str) -> Value {
        if let Some(i) = self.pending.iter().position(|v| v["event"] == event) {
            return self.pending.remove(i).unwrap_or_default();
        }
        loop {
            let v = self.next();
            if v["event"] == event {
                return v;
            }
            self.pending.push_back(v);
        }
    }

    /// Ends stdin; the chat logs out and must exit 0.
    fn finish(mut self) {
        assert!(
            self.pending.iter().all(|v| v["event"] != "deliver"),
            "deliveries left unchecked: {:?}",
            self.pending
        );
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "chat exit status {status:?}");
                return;
            }
            assert!(std::time::Instant::now() < deadline, "chat did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn two_chats_create_use_inspect_and_leave_a_group() {
    let dir = TempDir::new("chat-groups");
    let broker = tools_broker().dir(dir.path()).start();
    let mut alice = Chat::start(&broker, "chat-alice");
    let mut bob = Chat::start(&broker, "chat-bob");

    alice.say("/create book-club chat-bob");
    let reply = alice.until("group_reply");
    assert_eq!(
        (reply["status"].as_str(), reply["group"].as_str()),
        (Some("OK"), Some("book-club"))
    );
    let created = bob.until("deliver");
    assert_eq!(created["kind"], "GroupCreated");
    assert_eq!(created["group"], "book-club");
    assert_eq!(
        created["members"],
        serde_json::json!(["chat-alice", "chat-bob"])
    );

    alice.say("#book-club who has read it?");
    let ack = alice.until("send_ack");
    assert_eq!(ack["status"], "OK");
    let msg = bob.until("deliver");
    assert_eq!(
        (
            msg["kind"].as_str(),
            msg["from"].as_str(),
            msg["body"].as_str()
        ),
        (
            Some("Message"),
            Some("chat-alice"),
            Some("who has read it?")
        )
    );
    assert_eq!(msg["group_seq"], 2);
    // Alice's own stream: her creation event, then the echo of her message, flagged.
    let own_created = alice.until("deliver");
    assert_eq!(own_created["kind"], "GroupCreated");
    let echo = alice.until("deliver");
    assert_eq!(
        (echo["outgoing"].as_bool(), echo["echo"].as_bool()),
        (Some(true), Some(true))
    );

    bob.say("/groups");
    let list = bob.until("group_reply");
    assert_eq!(list["groups"], serde_json::json!(["book-club"]));
    bob.say("/members book-club");
    let info = bob.until("group_reply");
    assert_eq!(info["member_count"], 2);
    assert_eq!(
        info["members"],
        serde_json::json!([
            {"user": "chat-alice", "admin": true},
            {"user": "chat-bob", "admin": false}
        ])
    );
    bob.say("/add book-club chat-carol");
    let refused = bob.until("group_reply");
    assert_eq!(refused["status"], "NOT_GROUP_ADMIN", "{refused}");

    bob.say("/leave book-club");
    let left = bob.until("group_reply");
    assert_eq!(left["status"], "OK");
    let gone = alice.until("deliver");
    assert_eq!(
        (gone["kind"].as_str(), gone["from"].as_str()),
        (Some("MemberLeft"), Some("chat-bob"))
    );
    alice.finish();
    bob.finish();
}

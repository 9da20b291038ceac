//! `ringpost-tools chat` as a person drives it: lines on stdin, then the end of input — with
//! the broker up, down, and back.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ringpost::protocol::Code;
use ringpost_harness::{expect_deliver, run, tools, tools_broker, TempDir, TestBroker, WAIT};

/// A running chat: its stdin, its stdout lines, the process.
struct Chat {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    errors: mpsc::Receiver<String>,
}

fn lines_of(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

fn expect_in(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(needle) => return l,
            Ok(_) => {}
            Err(_) => panic!("chat never printed {needle:?}"),
        }
    }
}

impl Chat {
    fn start(b: &TestBroker, user: &str) -> Chat {
        let mut child = tools(&[
            "chat",
            "--addr",
            &b.addr_string(),
            "--token",
            &b.token(user),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chat");
        let lines = lines_of(child.stdout.take().expect("stdout"));
        let errors = lines_of(child.stderr.take().expect("stderr"));
        let stdin = child.stdin.take();
        let chat = Chat {
            child,
            stdin,
            lines,
            errors,
        };
        chat.expect_line("logged in as");
        chat
    }

    fn expect_line(&self, needle: &str) -> String {
        expect_in(&self.lines, needle)
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to chat");
    }

    /// Ends the input (Ctrl-D) and waits for the exit: (status, stderr).
    fn end_input_and_wait(mut self) -> (std::process::ExitStatus, String) {
        drop(self.stdin.take());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                let err: Vec<String> = self.errors.try_iter().collect();
                return (status, err.join("\n"));
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("chat still running {WAIT:?} after its input ended");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn chat_sends_what_it_was_given_then_logs_out_at_the_end_of_input() {
    let b = tools_broker().start();
    run(async {
        let mut bob = b.connect("bob", "phone").await;
        let mut chat = Chat::start(&b, "alice");
        chat.type_line("@bob hello from the terminal");
        let ack = chat.expect_line("(sent #");
        // Own-send sync: alice's copy is the first entry of her stream.
        assert!(ack.ends_with(": OK, your seq 1)"), "{ack}");
        let (status, stderr) = chat.end_input_and_wait();
        assert!(status.success(), "{status:?} {stderr}");
        let d = expect_deliver(&mut bob).await;
        assert_eq!(
            (d.from_user.as_str(), d.body.as_slice()),
            ("alice", &b"hello from the terminal"[..])
        );
    });
}

#[test]
fn chat_whose_input_ended_exits_while_the_broker_is_down() {
    let b = tools_broker().start();
    let chat = Chat::start(&b, "alice");
    let _dir = b.crash();
    // Nothing typed, nothing in flight: the end of input ends the chat, broker or not.
    let (status, stderr) = chat.end_input_and_wait();
    assert!(status.success(), "{status:?} {stderr}");
    assert!(stderr.contains("nothing is in flight"), "{stderr}");
}

#[test]
fn chat_keeps_an_unanswered_send_until_the_broker_is_back_then_exits() {
    let dir = TempDir::new("chat-resend");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let builder = tools_broker()
        .dir(dir.path())
        .server(&format!("listen = \"127.0.0.1:{port}\""));
    let b = builder.start();
    let mut chat = Chat::start(&b, "alice");
    let _ = b.crash();
    // Typed while the broker is down, then the input ends: the send is in flight, so the chat
    // must keep trying rather than exit.
    chat.type_line("@bob sent while you were away");
    drop(chat.stdin.take());
    // It keeps trying; the broker comes back only after a failed attempt. (Had the chat
    // exited, the login below would never be printed.)
    expect_in(&chat.errors, "reconnect failed");
    let b = builder.start();
    chat.expect_line("logged in as");
    let ack = chat.expect_line("(sent #");
    assert!(ack.ends_with(": OK, your seq 1)"), "{ack}");
    let (status, stderr) = chat.end_input_and_wait();
    assert!(status.success(), "{status:?} {stderr}");
    run(async {
        let mut bob = b.connect("bob", "phone").await;
        let d = expect_deliver(&mut bob).await;
        assert_eq!(d.body, b"sent while you were away");
        // Exactly once: the next thing bob sees is his own probe's ack, not a duplicate.
        bob.send(1, "bob-probe", b"x").await.unwrap();
        ringpost_harness::expect_ack(&mut bob, 1, Code::OK).await;
    });
}

//! The WebSocket frame decoder (`wire::ws`) on arbitrary frame streams cut into arbitrary
//! reads: the session's push decoder (`Framing::WebSocket`, i.e. `ws::feed` as a server), the
//! pull reader (`MessageReader`, as the acceptor and the client use it), and the acceptor → session
//! hand-off in the middle of a stream.
//!
//! Input: `flags | cuts (ringpost_fuzz::input) | bytes`. flags & 1: the decoding end (0: the
//! server, reading masked client frames; 1: the client, reading the server's); (flags >> 1) & 3:
//! the message limit (125 B, 1 KiB, 64 KiB, 1 MiB); flags & 0x08: build the stream from the
//! bytes (`ringpost_fuzz::ws_build`: messages in fragments, control frames between them) instead
//! of taking them raw; flags & 0x10: the pull reader reads through `spare`/`filled`.
//!
//! Must hold: no panic; every way of reading (whole, cut into reads, push or pull, handed off
//! after the first message) hands out the same messages, Pings and Closes and ends the same
//! way (the same refusal, or the same decoder state); an idle push decoder keeps no buffer; a
//! built stream decodes to exactly the messages and control frames it was built from, or to
//! the refusal its size limit calls for.
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use ringpost::protocol::Flow;
use ringpost::wire::ws::{self, MessageReader, Role, WsError, WsState};
use ringpost::wire::{DecodeError, Framing};
use ringpost_fuzz::input::{Cuts, Header};
use ringpost_fuzz::ws_build::{build, Got};

#[derive(Debug, PartialEq)]
enum End {
    /// Still open, in this decoder state.
    Open(WsState),
    Refused(WsError),
}

#[derive(Debug, PartialEq)]
struct Outcome {
    got: Vec<Got>,
    end: End,
}

/// The push decoder over `reads`, starting from `st` (a hand-off carries it); also returns the
/// bytes it kept.
fn push(
    reads: &[&[u8]],
    role: Role,
    max: usize,
    st: WsState,
    mut got: Vec<Got>,
) -> (Outcome, Vec<u8>) {
    let mut carry = Vec::new();
    let mut framing = Framing::WebSocket(st);
    let mut client_st = st;
    for read in reads {
        let mut data = read.to_vec();
        let on = |i: ws::Inbound<'_>| {
            got.push(Got::of(&i));
            Flow::More
        };
        let result = match role {
            // The session's path.
            Role::Server => framing
                .decode(&mut carry, &mut data, max, on)
                .map_err(|e| match e {
                    DecodeError::Ws(e) => e,
                    DecodeError::Codec(e) => panic!("WebSocket framing refused with {e:?}"),
                }),
            Role::Client => ws::feed(&mut client_st, &mut carry, &mut data, max, role, on),
        };
        if carry.is_empty() {
            assert_eq!(carry.capacity(), 0, "an idle decoder keeps a buffer");
        }
        if let Err(e) = result {
            assert!(carry.is_empty(), "a refused stream keeps bytes");
            let end = End::Refused(e);
            return (Outcome { got, end }, carry);
        }
    }
    let st = match (role, framing) {
        (Role::Server, Framing::WebSocket(st)) => st,
        (Role::Server, Framing::Tcp) => panic!("the framing changed transport"),
        (Role::Client, _) => client_st,
    };
    let end = End::Open(st);
    (Outcome { got, end }, carry)
}

fn fill(r: &mut MessageReader, read: &[u8], use_spare: bool) {
    if use_spare {
        let room = r.spare(read.len());
        room[..read.len()].copy_from_slice(read);
        r.filled(read.len());
    } else {
        r.extend(read);
    }
}

/// The pull reader over `reads`; with `hand_off`, only up to the first message, then the push
/// decoder from where it stopped (the acceptor reads the Login, the session the rest).
fn pull(reads: &[&[u8]], role: Role, max: usize, use_spare: bool, hand_off: bool) -> Outcome {
    let mut r = MessageReader::new(role);
    let mut got = Vec::new();
    for (i, read) in reads.iter().enumerate() {
        fill(&mut r, read, use_spare);
        loop {
            match r.next(max) {
                Ok(Some(inbound)) => {
                    let g = Got::of(&inbound);
                    let first_message = matches!(g, Got::Msg(_));
                    got.push(g);
                    if hand_off && first_message {
                        let (rest, st) = r.rest();
                        assert!(st.is_idle(), "a hand-off right after a message");
                        let rest = rest.to_vec();
                        let mut next: Vec<&[u8]> = vec![&rest];
                        next.extend_from_slice(&reads[i + 1..]);
                        return push(&next, role, max, st, got).0;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return Outcome {
                        got,
                        end: End::Refused(e),
                    }
                }
            }
        }
    }
    let (_, st) = r.rest();
    Outcome {
        got,
        end: End::Open(st),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut h = Header::new(data);
    let flags = h.byte();
    let role = if flags & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let max = [125, 1024, 65_536, 1 << 20][usize::from((flags >> 1) & 3)];
    let use_spare = flags & 0x10 != 0;
    let cuts = Cuts::read(&mut h);
    let bytes = h.rest();
    let built = match flags & 0x08 {
        0 => None,
        _ => match build(&mut Unstructured::new(bytes), role, max) {
            Ok(b) => Some(b),
            Err(_) => return,
        },
    };
    let stream = built.as_ref().map_or(bytes, |b| &b.stream[..]);
    let reads = cuts.split(stream);

    let (whole, whole_carry) = push(&[stream], role, max, WsState::default(), Vec::new());
    if let Some(b) = &built {
        assert_eq!(
            whole.got, b.expected,
            "a built stream decodes to what it was built from"
        );
        match &b.error {
            Some(e) => assert_eq!(whole.end, End::Refused(e.clone())),
            None => {
                assert_eq!(whole.end, End::Open(WsState::default()));
                assert!(whole_carry.is_empty());
            }
        }
    }
    let (split, split_carry) = push(&reads, role, max, WsState::default(), Vec::new());
    assert_eq!(split, whole, "push decoder, cut into reads");
    assert_eq!(
        split_carry, whole_carry,
        "push decoder keeps the same bytes"
    );
    assert_eq!(
        pull(&reads, role, max, use_spare, false),
        whole,
        "pull reader"
    );
    assert_eq!(pull(&reads, role, max, use_spare, true), whole, "hand-off");
});

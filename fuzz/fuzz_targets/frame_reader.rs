//! The TCP frame reader on arbitrary byte streams cut into arbitrary reads: the session's
//! push-style `reader::feed` (directly and through `wire::Framing::Tcp`, as the session calls
//! it) and the client's / acceptor's pull-style `FrameReader`.
//!
//! Input: `flags | cuts (see ringpost_fuzz::input) | stream`. flags & 3 picks `max_frame`,
//! (flags >> 2) & 7 stops the receiver after that many frames (0: never), flags & 0x20 makes
//! the pull reader read through `spare`/`filled` instead of `extend`.
//!
//! Must hold: no panic; every way of reading hands out the same frames, ends the same way (the
//! same refusal, the same stop, or the same partial frame kept) as reading the whole stream at
//! once; an idle push reader keeps no buffer; every frame's payload goes through
//! `decode_client`, and what decodes round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpost::protocol::{decode_client, reader, CodecError, Flow, FrameReader};
use ringpost::wire::ws::Inbound;
use ringpost::wire::{DecodeError, Framing};
use ringpost_fuzz::codec::client_round_trip;
use ringpost_fuzz::input::{Cuts, Header};

#[derive(Debug, PartialEq)]
enum End {
    /// Still open, keeping these bytes of a partial frame.
    Open(Vec<u8>),
    Stopped,
    Refused(CodecError),
}

#[derive(Debug, PartialEq)]
struct Outcome {
    frames: Vec<Vec<u8>>,
    end: End,
}

/// Runs `feed` (or `Framing::Tcp.decode`) over the reads.
fn push(reads: &[&[u8]], max_frame: usize, stop_after: usize, via_framing: bool) -> Outcome {
    let mut carry = Vec::new();
    let mut frames = Vec::new();
    let mut framing = Framing::Tcp;
    for read in reads {
        let mut stopped = false;
        let mut on = |payload: &[u8]| {
            frames.push(payload.to_vec());
            if frames.len() == stop_after {
                stopped = true;
                Flow::Stop
            } else {
                Flow::More
            }
        };
        let result = if via_framing {
            let mut data = read.to_vec();
            framing
                .decode(&mut carry, &mut data, max_frame, |i| match i {
                    Inbound::Message(p) => on(p),
                    other => panic!("the TCP framing handed out {other:?}"),
                })
                .map_err(|e| match e {
                    DecodeError::Codec(e) => e,
                    DecodeError::Ws(e) => panic!("the TCP framing refused with {e:?}"),
                })
        } else {
            reader::feed(&mut carry, read, max_frame, on)
        };
        if carry.is_empty() {
            assert_eq!(carry.capacity(), 0, "an idle reader keeps a buffer");
        }
        if let Err(e) = result {
            assert!(carry.is_empty(), "a refused stream keeps bytes");
            return Outcome {
                frames,
                end: End::Refused(e),
            };
        }
        if stopped {
            assert!(carry.is_empty(), "a stopped stream keeps bytes");
            return Outcome {
                frames,
                end: End::Stopped,
            };
        }
    }
    Outcome {
        frames,
        end: End::Open(carry),
    }
}

/// Runs a `FrameReader` over the reads.
fn pull(reads: &[&[u8]], max_frame: usize, stop_after: usize, use_spare: bool) -> Outcome {
    let mut r = FrameReader::new();
    let mut frames = Vec::new();
    for read in reads {
        if use_spare {
            let room = r.spare(read.len());
            assert!(room.len() >= read.len());
            room[..read.len()].copy_from_slice(read);
            r.filled(read.len());
        } else {
            r.extend(read);
        }
        loop {
            let has = r.has_frame(max_frame);
            match r.next_frame(max_frame) {
                Ok(Some(p)) => {
                    assert_eq!(has, Ok(true));
                    frames.push(p.to_vec());
                    if frames.len() == stop_after {
                        return Outcome {
                            frames,
                            end: End::Stopped,
                        };
                    }
                }
                Ok(None) => {
                    assert_eq!(has, Ok(false));
                    break;
                }
                Err(e) => {
                    assert_eq!(has, Err(e.clone()));
                    return Outcome {
                        frames,
                        end: End::Refused(e),
                    };
                }
            }
        }
    }
    Outcome {
        frames,
        end: End::Open(r.buffered().to_vec()),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut h = Header::new(data);
    let flags = h.byte();
    let max_frame = [16, 256, 4096, 4 << 20][usize::from(flags & 3)];
    let stop_after = usize::from((flags >> 2) & 7);
    let use_spare = flags & 0x20 != 0;
    let cuts = Cuts::read(&mut h);
    let stream = h.rest();
    let reads = cuts.split(stream);

    let whole = push(&[stream], max_frame, stop_after, false);
    assert_eq!(push(&reads, max_frame, stop_after, false), whole, "feed");
    assert_eq!(
        push(&reads, max_frame, stop_after, true),
        whole,
        "Framing::Tcp"
    );
    assert_eq!(
        pull(&reads, max_frame, stop_after, use_spare),
        whole,
        "FrameReader"
    );
    for payload in &whole.frames {
        assert!(!payload.is_empty() && payload.len() <= max_frame);
        if let Ok(msg) = decode_client(payload) {
            client_round_trip(&msg);
        }
    }
});

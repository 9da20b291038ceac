//! WebSocket frame streams built from fuzz bytes, with what decoding them must give.
//!
//! A stream is a list of binary messages, each sent whole or in fragments with control frames
//! (Ping, Pong, Close) between them, masked with an arbitrary key when a client sends it. The
//! expected outcome follows RFC 6455 and ringpost's limit: each message is handed out once its
//! last fragment arrives, Pings and Closes as they come, Pongs not at all, and a message
//! whose fragments add up past `max_message` is refused as soon as the header that crosses
//! the limit is readable.

use arbitrary::{Result, Unstructured};
use bytes::Bytes;
use ringpost::protocol::FrameHead;
use ringpost::wire::ws::{self, Inbound, Role, WsError, WsHead};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};

/// What a decoder handed out, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    Msg(Vec<u8>),
    Ping(Vec<u8>),
    Close(Option<u16>),
}

impl Got {
    pub fn of(i: &Inbound<'_>) -> Got {
        match i {
            Inbound::Message(p) => Got::Msg(p.to_vec()),
            Inbound::Ping(p) => Got::Ping(p.to_vec()),
            Inbound::Close(c) => Got::Close(*c),
        }
    }
}

/// A built stream and what decoding it must give.
#[derive(Debug, Default)]
pub struct Built {
    pub stream: Vec<u8>,
    pub expected: Vec<Got>,
    /// The refusal decoding must end with (nothing after it is decoded).
    pub error: Option<WsError>,
}

struct Builder {
    /// The end that decodes: a server reads masked frames, a client unmasked ones.
    role: Role,
    max_message: usize,
    assembled: u64,
    out: Built,
}

impl Builder {
    fn mask(&self, u: &mut Unstructured<'_>) -> Result<Option<[u8; 4]>> {
        Ok(match self.role {
            Role::Server => Some(u.arbitrary()?),
            Role::Client => None,
        })
    }

    /// Appends one frame; false once the stream has ended in a refusal.
    fn frame(
        &mut self,
        u: &mut Unstructured<'_>,
        opcode: OpCode,
        fin: bool,
        payload: Vec<u8>,
    ) -> Result<bool> {
        if self.out.error.is_some() {
            return Ok(false);
        }
        let len = payload.len() as u64;
        if matches!(opcode, OpCode::Data(_)) && self.assembled + len > self.max_message as u64 {
            self.out.error = Some(WsError::TooLarge {
                len: self.assembled + len,
                max: self.max_message,
            });
        }
        let header = FrameHeader {
            is_final: fin,
            opcode,
            mask: self.mask(u)?,
            ..FrameHeader::default()
        };
        // The broker's own writers, for what a server sends (unmasked) when they apply.
        let ours = self.role == Role::Client && u.arbitrary()?;
        match opcode {
            OpCode::Data(Data::Binary) if ours && fin => {
                WsHead.write_head(payload.len(), &mut self.out.stream);
                self.out.stream.extend_from_slice(&payload);
            }
            OpCode::Control(Control::Pong) if ours => {
                ws::write_pong(&payload, &mut self.out.stream)
            }
            _ => {
                let frame = Frame::from_payload(header, Bytes::from(payload.clone()));
                frame
                    .format(&mut self.out.stream)
                    .expect("formatting into a Vec cannot fail");
            }
        }
        if self.out.error.is_some() {
            return Ok(false);
        }
        match opcode {
            OpCode::Data(_) => {
                self.assembled += len;
                if fin {
                    self.assembled = 0;
                }
            }
            OpCode::Control(Control::Ping) => self.out.expected.push(Got::Ping(payload)),
            OpCode::Control(Control::Close) => {
                let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                self.out.expected.push(Got::Close(code));
            }
            OpCode::Control(_) => {}
        }
        Ok(true)
    }

    /// Zero to two control frames (allowed anywhere, also between fragments).
    fn controls(&mut self, u: &mut Unstructured<'_>) -> Result<bool> {
        for _ in 0..u.int_in_range(0..=2)? {
            let payload = short(u)?;
            let ok = match u.int_in_range(0..=3)? {
                0 => self.frame(u, OpCode::Control(Control::Ping), true, payload)?,
                1 => self.frame(u, OpCode::Control(Control::Pong), true, payload)?,
                2 => self.frame(u, OpCode::Control(Control::Close), true, Vec::new())?,
                _ => {
                    let code: u16 = u.arbitrary()?;
                    let mut p = code.to_be_bytes().to_vec();
                    p.extend(payload.iter().take(123));
                    self.frame(u, OpCode::Control(Control::Close), true, p)?
                }
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn message(&mut self, u: &mut Unstructured<'_>) -> Result<bool> {
        let payload = message_payload(u)?;
        let pieces = u.int_in_range(1..=4usize)?;
        let mut cuts: Vec<usize> = (1..pieces)
            .map(|_| u.int_in_range(0..=payload.len()))
            .collect::<Result<_>>()?;
        cuts.sort_unstable();
        let mut at = 0;
        let bounds: Vec<usize> = cuts.into_iter().chain([payload.len()]).collect();
        for (i, &end) in bounds.iter().enumerate() {
            let first = i == 0;
            let fin = i + 1 == bounds.len();
            let opcode = if first {
                OpCode::Data(Data::Binary)
            } else {
                OpCode::Data(Data::Continue)
            };
            if !self.frame(u, opcode, fin, payload[at..end].to_vec())? {
                return Ok(false);
            }
            at = end;
            if !fin && !self.controls(u)? {
                return Ok(false);
            }
        }
        self.out.expected.push(Got::Msg(payload));
        Ok(true)
    }
}

/// A control frame's payload (at most 125 bytes).
fn short(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let n = u.int_in_range(0..=125)?;
    Ok(u.bytes(n.min(u.len()))?.to_vec())
}

/// A message payload: small from the input, or one of the sizes where the header's length
/// format changes (7-bit, 16-bit, 64-bit), filled with one byte.
fn message_payload(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    const EDGES: &[usize] = &[125, 126, 65_535, 65_536];
    if u.ratio(1, 8)? {
        let n = *u.choose(EDGES)?;
        let fill: u8 = u.arbitrary()?;
        return Ok(vec![fill; n]);
    }
    let n = u.int_in_range(0..=300)?;
    Ok(u.bytes(n.min(u.len()))?.to_vec())
}

/// A stream of up to eight messages and control frames decoded by `role` (see the module doc).
pub fn build(u: &mut Unstructured<'_>, role: Role, max_message: usize) -> Result<Built> {
    let mut b = Builder {
        role,
        max_message,
        assembled: 0,
        out: Built::default(),
    };
    for _ in 0..u.int_in_range(0..=8)? {
        let more = if u.ratio(2, 3)? {
            b.message(u)?
        } else {
            b.controls(u)?
        };
        if !more {
            break;
        }
    }
    Ok(b.out)
}

//! An MQTT 3.1.1 client connection for the load scenarios' MQTT driver (`--target
//! mqtt://HOST:PORT`), on glommio: packets encoded and decoded by the `mqtt-protocol` crate
//! (codec only, no runtime; its tokio support is an off-by-default feature), framed here
//! check-then-parse. Of the codec-only crates it is the one still released (0.12, 2024);
//! `mqttbytes` was folded into rumqttc (tokio) and `mqttrs` has had no release since 2021.
//!
//! A connection is split like [`ringpost::client::Client`]: a [`MqttReader`] and an [`Outbox`]
//! on two fds of the same socket. The outbox is a combining writer: any task appends whole
//! encoded packets, and whichever task finds the socket free writes everything pending, so the
//! reader can answer every PUBLISH with its PUBACK at once without ever waiting on a write
//! (the broker's in-flight window for QoS 1 is small — Mosquitto's default is 20 — so late
//! PUBACKs would throttle delivery).

use std::cell::{Cell, RefCell};
use std::io::Cursor;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use mqtt::control::variable_header::ConnectReturnCode;
use mqtt::packet::suback::SubscribeReturnCode;
use mqtt::packet::{
    ConnectPacket, DisconnectPacket, PingreqPacket, PubackPacket, PublishPacketRef,
    QoSWithPacketIdentifier, SubscribePacket, VariablePacket,
};
use mqtt::{Decodable, Encodable, QualityOfService, TopicFilter, TopicNameRef};

/// Bytes asked of the socket at a time.
const READ_CHUNK: usize = 64 * 1024;
/// Largest packet accepted from the broker (the load's bodies are small).
const MAX_PACKET: usize = 1024 * 1024;
/// Fixed header: type byte, then 1..=4 bytes of remaining length.
const MAX_FIXED_HEADER: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed by the broker")]
    Closed,
    #[error("malformed packet from the broker: {0}")]
    Malformed(String),
    #[error("the broker refused the connection: {0:?}")]
    Refused(ConnectReturnCode),
    #[error("the broker refused the subscription to {0}")]
    SubscribeRefused(String),
    #[error("invalid topic {0:?}")]
    Topic(String),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("unexpected packet while waiting for {0}")]
    Unexpected(&'static str),
}

/// `mqtt://host:port` → the address.
pub fn parse_target(target: &str) -> Result<SocketAddr, String> {
    let rest = target
        .strip_prefix("mqtt://")
        .ok_or_else(|| format!("--target {target:?}: only mqtt://HOST:PORT is supported"))?;
    use std::net::ToSocketAddrs;
    rest.to_socket_addrs()
        .map_err(|e| format!("--target {target:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("--target {target:?}: no address"))
}

/// Length of the whole packet at the start of `buf`, once its fixed header is complete.
fn packet_len(buf: &[u8]) -> Result<Option<usize>, MqttError> {
    let mut remaining = 0usize;
    for i in 1..MAX_FIXED_HEADER {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        remaining |= ((b & 0x7f) as usize) << (7 * (i - 1));
        if b & 0x80 == 0 {
            let total = i + 1 + remaining;
            if total > MAX_PACKET {
                return Err(MqttError::Malformed(format!("a packet of {total} bytes")));
            }
            return Ok(Some(total));
        }
    }
    Err(MqttError::Malformed("remaining length over 4 bytes".into()))
}

/// The receiving half.
pub struct MqttReader {
    stream: TcpStream,
    /// Bytes received are `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl MqttReader {
    /// The next packet from the broker. Cancel-safe: bytes count once a read completes.
    pub async fn recv(&mut self) -> Result<VariablePacket, MqttError> {
        loop {
            let avail = &self.buf[self.start..self.end];
            if let Some(len) = packet_len(avail)? {
                if avail.len() >= len {
                    let packet = VariablePacket::decode(&mut Cursor::new(&avail[..len]))
                        .map_err(|e| MqttError::Malformed(e.to_string()))?;
                    self.start += len;
                    return Ok(packet);
                }
            }
            if self.end == self.buf.len() {
                if self.start > 0 {
                    self.buf.copy_within(self.start..self.end, 0);
                    self.end -= self.start;
                    self.start = 0;
                } else {
                    self.buf.resize(self.buf.len() + READ_CHUNK, 0);
                }
            }
            match self.stream.read(&mut self.buf[self.end..]).await? {
                0 => return Err(MqttError::Closed),
                n => self.end += n,
            }
        }
    }
}

/// The sending half, shared by a connection's tasks (see the module doc).
pub struct Outbox {
    pending: RefCell<Vec<u8>>,
    /// The socket, when no task is writing.
    stream: RefCell<Option<TcpStream>>,
    failed: Cell<bool>,
}

impl Outbox {
    /// Appends one packet; nothing is written until [`Outbox::flush`] or [`Outbox::kick`].
    pub fn queue(&self, packet: &impl Encodable) {
        // Encoding into a Vec cannot fail.
        let _ = packet.encode(&mut *self.pending.borrow_mut());
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.borrow().is_empty()
    }

    /// Writes everything pending, including what other tasks append meanwhile; returns at
    /// once if another task is writing (it takes ours along).
    pub async fn flush(&self) -> Result<(), MqttError> {
        if self.failed.get() {
            return Err(MqttError::Closed);
        }
        let Some(mut stream) = self.stream.borrow_mut().take() else {
            return Ok(());
        };
        let result = loop {
            let out = std::mem::take(&mut *self.pending.borrow_mut());
            if out.is_empty() {
                break Ok(());
            }
            if let Err(e) = stream.write_all(&out).await {
                self.failed.set(true);
                break Err(MqttError::Io(e));
            }
        };
        *self.stream.borrow_mut() = Some(stream);
        result
    }

    /// [`Outbox::flush`] in a task of its own, for callers that must not wait on the socket.
    pub fn kick(self: &Rc<Self>) {
        if self.stream.borrow().is_some() && self.has_pending() {
            let me = self.clone();
            glommio::spawn_local(async move {
                let _ = me.flush().await;
            })
            .detach();
        }
    }

    pub fn publish(&self, topic: &TopicNameRef, pkid: u16, payload: &[u8]) {
        let qos = QoSWithPacketIdentifier::new(QualityOfService::Level1, pkid);
        self.queue(&PublishPacketRef::new(topic, qos, payload));
    }

    pub fn puback(&self, pkid: u16) {
        self.queue(&PubackPacket::new(pkid));
    }

    pub fn pingreq(&self) {
        self.queue(&PingreqPacket::new());
    }

    pub fn disconnect(&self) {
        self.queue(&DisconnectPacket::new());
    }
}

/// A topic name checked once, for publishing many times.
pub fn topic(name: &str) -> Result<&TopicNameRef, MqttError> {
    TopicNameRef::new(name).map_err(|_| MqttError::Topic(name.to_owned()))
}

/// Connects as `client_id` with a persistent session (clean session = false), subscribes to
/// `topics` at QoS 1, and waits for CONNACK and SUBACK (each within `timeout`).
pub async fn connect(
    addr: SocketAddr,
    client_id: &str,
    keep_alive: Duration,
    topics: &[String],
    timeout: Duration,
) -> Result<(MqttReader, Rc<Outbox>), MqttError> {
    let attempt = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(std::io::Error::from)?;
        let _ = stream.set_nodelay(true);
        // SAFETY: dup(2) of a socket we own; checked below. Each half owns one fd.
        let fd = unsafe { libc::dup(stream.as_raw_fd()) };
        if fd < 0 {
            return Err(MqttError::Io(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh duplicate owned by nobody else.
        let write_stream = unsafe { TcpStream::from_raw_fd(fd) };
        let mut reader = MqttReader {
            stream,
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
        };
        let out = Rc::new(Outbox {
            pending: RefCell::default(),
            stream: RefCell::new(Some(write_stream)),
            failed: Cell::new(false),
        });
        let mut hello = ConnectPacket::new(client_id);
        hello.set_clean_session(false);
        hello.set_keep_alive(keep_alive.as_secs().clamp(1, u16::MAX as u64) as u16);
        out.queue(&hello);
        out.flush().await?;
        match reader.recv().await? {
            VariablePacket::ConnackPacket(ack) => match ack.connect_return_code() {
                ConnectReturnCode::ConnectionAccepted => {}
                other => return Err(MqttError::Refused(other)),
            },
            _ => return Err(MqttError::Unexpected("CONNACK")),
        }
        if !topics.is_empty() {
            let mut filters = Vec::with_capacity(topics.len());
            for t in topics {
                let f = TopicFilter::new(t.as_str()).map_err(|_| MqttError::Topic(t.clone()))?;
                filters.push((f, QualityOfService::Level1));
            }
            out.queue(&SubscribePacket::new(1, filters));
            out.flush().await?;
            match reader.recv().await? {
                VariablePacket::SubackPacket(ack) if ack.packet_identifier() == 1 => {
                    if ack.subscribes().contains(&SubscribeReturnCode::Failure) {
                        return Err(MqttError::SubscribeRefused(topics.join(",")));
                    }
                }
                // The load's users are fresh: nothing is queued for their sessions yet.
                _ => return Err(MqttError::Unexpected("SUBACK")),
            }
        }
        Ok((reader, out))
    };
    let limit = async {
        glommio::timer::sleep(timeout).await;
        Err(MqttError::Timeout("CONNACK/SUBACK"))
    };
    future::or(attempt, limit).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_lengths_come_from_the_fixed_header() {
        assert_eq!(packet_len(&[0x30]).unwrap(), None);
        assert_eq!(packet_len(&[0x40, 0x02]).unwrap(), Some(4)); // PUBACK
        assert_eq!(packet_len(&[0x30, 0xc1]).unwrap(), None); // continues
        assert_eq!(packet_len(&[0x30, 0xc1, 0x02]).unwrap(), Some(3 + 321));
        assert!(packet_len(&[0x30, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(packet_len(&[0x30, 0xff, 0xff, 0x7f]).is_err()); // over MAX_PACKET
    }

    #[test]
    fn targets_must_be_mqtt_urls() {
        assert_eq!(
            parse_target("mqtt://127.0.0.1:1883").unwrap(),
            "127.0.0.1:1883".parse::<SocketAddr>().unwrap()
        );
        assert!(parse_target("tcp://127.0.0.1:1883").is_err());
        assert!(parse_target("mqtt://nowhere").is_err());
    }
}

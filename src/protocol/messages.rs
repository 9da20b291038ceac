//! The decoded messages, one enum per direction. Strings and bodies borrow from the payload
//! they were decoded from (zero copy); encoding takes the same borrowed form.
//!
//! Field meanings are documented on the tables in `schema/ringpost.fbs`.

use super::Code;

/// A frame a client sends (client → server), borrowed from the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMsg<'a> {
    /// First frame of every connection (`table Login`).
    Login {
        /// HS256 JWT minted by the app backend. Required on the wire.
        token: &'a str,
        /// Stable per-device identifier, at most [`MAX_DEVICE_ID`](super::MAX_DEVICE_ID) bytes;
        /// "" when absent.
        device_id: &'a str,
        /// Highest seq this device has processed; 0 means "everything still retained".
        last_seq: u64,
    },
    /// A 1:1 message, idempotent per (sender, `client_msg_id`) (`table Send`).
    Send {
        /// Client-chosen ID, echoed in the SendAck and used for dedup.
        client_msg_id: u64,
        /// Recipient user ID. Required on the wire.
        to_user: &'a str,
        /// Opaque payload; empty when absent.
        body: &'a [u8],
    },
    /// Every Deliver with `seq <= up_to_seq` has been processed (`table Ack`).
    Ack {
        /// Highest processed seq.
        up_to_seq: u64,
    },
    /// Keep-alive, answered by Pong with the same nonce (`table Ping`).
    Ping {
        /// Echoed in the Pong.
        nonce: u64,
    },
    /// Close the session cleanly; answered by GoAway(LOGGED_OUT) (`table Logout`).
    Logout,
}

/// A frame the server sends (server → client), borrowed from the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMsg<'a> {
    /// Answer to a successful Login (`table LoginOk`).
    LoginOk {
        /// The token's `sub`; "" when absent.
        user_id: &'a str,
        /// Shard (core) that owns the user and serves this connection.
        shard: u16,
        /// The user's newest assigned seq (0 if none yet).
        head_seq: u64,
        /// Send something at least this often (ms).
        heartbeat_ms: u32,
        /// Oldest seq still retained (0 when nothing is retained).
        oldest_seq: u64,
        /// Part of `(last_seq, head_seq]` was removed and cannot be replayed.
        gap: bool,
    },
    /// Outcome of one Send (`table SendAck`).
    SendAck {
        /// The Send's `client_msg_id`.
        client_msg_id: u64,
        /// `Code::OK` or why the message was not accepted.
        status: Code,
    },
    /// A message for this user (`table Deliver`).
    Deliver {
        /// The recipient's per-user sequence number.
        seq: u64,
        /// Sender user ID; "" when absent.
        from_user: &'a str,
        /// The sender's `client_msg_id`.
        client_msg_id: u64,
        /// Broker wall clock (ms since the Unix epoch) when the message was accepted.
        sent_at_ms: u64,
        /// Opaque payload; empty when absent.
        body: &'a [u8],
    },
    /// Answer to a Ping (`table Pong`).
    Pong {
        /// The Ping's nonce.
        nonce: u64,
    },
    /// A rejection; the server closes the connection after it (`table Error`).
    Error {
        /// Why.
        code: Code,
        /// Human-readable detail; "" when absent.
        message: &'a str,
    },
    /// The server is closing this connection (`table GoAway`).
    GoAway {
        /// Why.
        code: Code,
        /// Human-readable detail; "" when absent.
        reason: &'a str,
    },
}

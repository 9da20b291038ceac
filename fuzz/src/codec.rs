//! Decode → encode → decode round trips of frames.
//!
//! What the decoder accepted, the encoder must write back into a frame that decodes to the
//! same message: over the TCP framing (length prefix, split by `check`) and, for server frames,
//! over WebSocket (the broker's `WsHead`, read back by the client's `MessageReader`).

use ringpost::protocol::{
    check, decode_client, decode_server, encode_client, encode_server, encode_server_with,
    ClientMsg, ServerMsg, LEN_PREFIX,
};
use ringpost::wire::ws::{Inbound, MessageReader, Role, WsHead};

/// The payload of the one frame in `out`, checked by `check`.
fn only_payload(out: &[u8]) -> &[u8] {
    let n = check(out, usize::MAX)
        .expect("our own length prefix is accepted")
        .expect("our own frame is complete");
    assert_eq!(n, out.len(), "one frame, nothing after it");
    &out[LEN_PREFIX..n]
}

/// Re-encodes a decoded client message; it must decode to the same message.
pub fn client_round_trip(msg: &ClientMsg<'_>) {
    let mut out = Vec::new();
    encode_client(msg, &mut out);
    let again = decode_client(only_payload(&out))
        .unwrap_or_else(|e| panic!("re-encoded {msg:?} does not decode: {e}"));
    assert_eq!(&again, msg, "re-encoded client frame decodes differently");
}

/// Re-encodes a decoded server message, over TCP and over WebSocket; both must decode to the
/// same message.
pub fn server_round_trip(msg: &ServerMsg<'_>) {
    let mut out = Vec::new();
    encode_server(msg, &mut out);
    let again = decode_server(only_payload(&out))
        .unwrap_or_else(|e| panic!("re-encoded {msg:?} does not decode: {e}"));
    assert_eq!(&again, msg, "re-encoded server frame decodes differently");

    let mut ws = Vec::new();
    encode_server_with(msg, &WsHead, &mut ws);
    let mut reader = MessageReader::new(Role::Client);
    reader.extend(&ws);
    match reader.next(usize::MAX) {
        Ok(Some(Inbound::Message(payload))) => {
            let again = decode_server(payload)
                .unwrap_or_else(|e| panic!("{msg:?} over WebSocket does not decode: {e}"));
            assert_eq!(
                &again, msg,
                "server frame over WebSocket decodes differently"
            );
        }
        other => panic!("{msg:?} over WebSocket reads back as {other:?}"),
    }
    assert_eq!(
        reader.rest().0,
        b"",
        "one WebSocket message, nothing after it"
    );
}

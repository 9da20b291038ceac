//! Server → client frames: `protocol::decode_server` on an arbitrary payload, as the client
//! library and `ringpost-tools` see them.
//!
//! Must hold: no panic; a payload that decodes re-encodes, over TCP and over WebSocket (the
//! broker's `WsHead`, read back by the client's `MessageReader`), into a frame that decodes to
//! the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpost::protocol::decode_server;
use ringpost_fuzz::codec::server_round_trip;

fuzz_target!(|data: &[u8]| {
    match decode_server(data) {
        Ok(msg) => server_round_trip(&msg),
        Err(e) => {
            let _ = (e.code(), e.to_string());
        }
    }
});

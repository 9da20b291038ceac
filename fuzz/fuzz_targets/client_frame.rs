//! Client → server frames: `protocol::decode_client` on an arbitrary payload (the bytes after
//! the length prefix), as the broker's session and acceptor see them.
//!
//! Must hold: no panic, whatever the bytes; a payload that decodes re-encodes (with the
//! broker's own encoder) into a frame that decodes to the same message; `check` on the same
//! bytes read as a whole frame (prefix included) agrees with the prefix it reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpost::protocol::{check, decode_client, CodecError, LEN_PREFIX};
use ringpost_fuzz::codec::client_round_trip;

fuzz_target!(|data: &[u8]| {
    match decode_client(data) {
        Ok(msg) => client_round_trip(&msg),
        Err(e) => {
            // Every refusal has a stable code and a readable message.
            let _ = (e.code(), e.to_string());
        }
    }
    // The same bytes as a prefixed frame, limit 1 MiB.
    match check(data, 1 << 20) {
        Ok(Some(n)) => {
            let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
            assert_eq!(n, LEN_PREFIX + len);
            let _ = decode_client(&data[LEN_PREFIX..n]);
        }
        Ok(None) => {
            if let Some(p) = data.first_chunk::<LEN_PREFIX>() {
                let len = u32::from_le_bytes(*p) as usize;
                assert!((1..=1 << 20).contains(&len) && data.len() < LEN_PREFIX + len);
            }
        }
        Err(CodecError::Empty) => assert_eq!(&data[..LEN_PREFIX], &[0; 4]),
        Err(CodecError::TooLarge { len, max }) => assert!(len > max),
        Err(e) => panic!("check refused a prefix with {e:?}"),
    }
});

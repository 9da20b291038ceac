//! The wire protocol: framing, the check-then-parse codec, and the stable codes.
//!
//! # Framing
//!
//! Every frame on the TCP stream is a u32 little-endian length `N` ([`LEN_PREFIX`] bytes)
//! followed by `N` bytes holding one FlatBuffers `Frame` (schema: `schema/ringpost.fbs`, root
//! type `Frame`), whose `body` is a union; the union tag says which message it is.
//! `1 <= N <= max_frame`, where `max_frame` is the caller's configured limit. The layout is
//! spelled out in the `layout` submodule.
//!
//! # Check, then parse
//!
//! Decoding is two steps, after mini-redis:
//! 1. [`check`] looks only at the length prefix. "Not enough bytes yet" is the cheap,
//!    non-allocating `Ok(None)`; an oversized or empty frame is an error as soon as the prefix
//!    is readable, without waiting for (or buffering) its body. `Ok(Some(n))` means a whole
//!    frame occupies `buf[..n]`.
//!    The loop over a byte stream that runs this check and keeps partial frames is in
//!    [`reader`], shared by every receiver.
//! 2. [`decode_client`] / [`decode_server`] run the FlatBuffers verifier over the payload
//!    (`buf[LEN_PREFIX..n]`) and borrow strings and bodies from it (zero copy). Arbitrary bytes
//!    give an error, never a panic or an out-of-bounds read.
//!
//! Verification uses `root_as_frame_with_opts` with fixed options: table depth at most 16,
//! at most 64 tables, NUL-terminated valid UTF-8 strings. Today's frames are two tables deep
//! (Frame → body), so the limits only cut hostile input short. Absent optional strings decode
//! as `""`, absent bodies as `&[]`; absent `required` fields (`Login.token`, `Send.to_user`)
//! fail verification and are [`CodecError::Malformed`].
//!
//! Encoding ([`encode_client`], [`encode_server`]) appends prefix + payload to a caller's
//! `Vec<u8>` and reuses one `FlatBufferBuilder` per thread. The `_with` variants take the
//! [`FrameHead`] to write in front of the payload instead of the length prefix: a WebSocket
//! connection writes its frame header there (`crate::wire`), so encoding for either transport
//! copies the payload once, from the builder into the output. Deliver frames without group
//! fields (1:1 and outgoing entries: nearly every delivery) skip the builder: the `deliver`
//! submodule lays the FlatBuffer out directly in the output, so the body is copied once, from
//! the log record into the connection's buffer.
//!
//! # Compatibility
//!
//! The rules are in the schema's header: [`Code`] values and `Body` union tags are append-only
//! and never reused; tables only grow at the end, with defaults, so older peers ignore new
//! fields (the verifier skips fields it does not know).
//!
//! A union tag this build does not know is [`CodecError::UnknownType`] (reported as
//! UNKNOWN_FRAME). flatc's Rust verifier *accepts* an unknown tag: it checks the tag byte and
//! that the body offset field is in bounds, but does not verify the body table (its generated
//! match ends in `_ => Ok(())`). The decoders therefore classify the tag after verification
//! and never read such a body. A known tag of the other direction (a client sending Deliver)
//! is [`CodecError::Unexpected`] (UNEXPECTED_FRAME).
//!
//! # Regenerating the FlatBuffers code
//!
//! `ringpost_generated.rs` is flatc output and is never edited by hand. From the workspace
//! root, with flatc 25.12.19, this reproduces it byte for byte:
//!
//! ```text
//! flatc --rust --gen-all -o src/protocol schema/ringpost.fbs
//! ```

mod codec;
mod deliver;
mod layout;
mod messages;
pub mod reader;
#[allow(
    clippy::all,
    clippy::pedantic,
    unused_imports,
    dead_code,
    non_camel_case_types,
    non_snake_case,
    missing_docs,
    mismatched_lifetime_syntaxes
)]
#[rustfmt::skip]
mod ringpost_generated;

pub use codec::{
    check, code_name, decode_client, decode_server, encode_client, encode_client_with,
    encode_raw_union, encode_server, encode_server_with, CodecError, FrameHead, LenPrefix, NoHead,
};
pub use layout::{LEN_PREFIX, MAX_DEVICE_ID, MAX_USER_ID};
pub use messages::{ClientMsg, Deliver, GroupOp, GroupReply, Members, Names, ServerMsg};
pub use reader::{Flow, FrameReader};
pub use ringpost_generated::ringpost::wire::{Code, EntryKind};

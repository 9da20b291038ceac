//! The wire protocol: framing, the check-then-parse codec, and the stable codes.
//!
//! A frame is a u32 little-endian length `N` ([`LEN_PREFIX`] bytes) followed by `N` bytes
//! holding one FlatBuffers `Frame` (schema: `schema/ringpost.fbs`), whose body is a union.
//! `1 <= N <= max_frame`.
//!
//! Decoding is two steps, after mini-redis:
//! 1. [`check`] looks only at the length prefix. "Not enough bytes yet" is the cheap,
//!    non-allocating `Ok(None)`; an oversized or empty frame is an error as soon as the prefix is
//!    readable, without waiting for (or buffering) its body.
//! 2. [`decode_client`] / [`decode_server`] run the FlatBuffers verifier over the payload and
//!    borrow strings and bodies from it (zero copy). Arbitrary bytes give an error, never a
//!    panic or an out-of-bounds read.
//!
//! Compatibility: codes and union tags are append-only (see the schema's header). A union tag
//! this build does not know is [`CodecError::UnknownType`], reported to the client as
//! UNKNOWN_FRAME.

mod codec;
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
    check, code_name, decode_client, decode_server, encode_client, encode_raw_union, encode_server,
    ClientMsg, CodecError, ServerMsg, LEN_PREFIX, MAX_DEVICE_ID, MAX_USER_ID,
};
pub use ringpost_generated::ringpost::wire::Code;

//! Byte layout of a frame on the stream and the size limits of its identifiers.
//!
//! ```text
//! offset 0            4                      4 + N
//!        +------------+----------------------+
//!        | N: u32 LE  | FlatBuffers `Frame`  |   1 <= N <= max_frame
//!        +------------+----------------------+
//! ```

/// Bytes of the length prefix that starts every frame: a `u32`, little-endian, counting the
/// payload (the FlatBuffers `Frame`) that follows it, not itself.
pub const LEN_PREFIX: usize = 4;

/// Smallest legal payload length `N`. A prefix of 0 is [`CodecError::Empty`](super::CodecError::Empty).
pub(crate) const MIN_PAYLOAD: usize = 1;

/// User IDs (the token's `sub`, `Send.to_user`, `Deliver.from_user`) are 1..=128 bytes of
/// UTF-8. The codec does not enforce this; the broker answers INVALID_RECIPIENT.
pub const MAX_USER_ID: usize = 128;

/// `Login.device_id` is at most 64 bytes of UTF-8 (enforced by the broker, not the codec).
pub const MAX_DEVICE_ID: usize = 64;

//! Helpers shared by ringpost's fuzz targets (`fuzz_targets/`), and by the seed generator
//! (`examples/seeds.rs`), which writes inputs in the same formats.
//!
//! | module | concern |
//! |---|---|
//! | [`input`] | the small control header at the front of an input, and cutting a stream into reads |
//! | [`codec`] | decode → encode → decode round trips of frames, both directions |
//! | [`config_text`] | a [`ringpost::config::Config`] written back as TOML |
//! | [`records`] | log records and segments generated from fuzz bytes |
//! | [`ws_build`] | WebSocket frame streams generated from fuzz bytes, with what decoding them must give |
//!
//! Every target keeps its inputs raw enough that a real frame, config, segment or request is a
//! meaningful seed: a few control bytes (how to cut the stream into reads, which limit to
//! apply), then the bytes themselves. Targets that generate structured inputs (log records, WebSocket
//! messages with fragments) do so from the same bytes with `arbitrary::Unstructured`, chosen
//! by a flag bit, so one corpus holds both kinds.

pub mod codec;
pub mod config_text;
pub mod input;
pub mod records;
pub mod ws_build;

//! Benchmarks live in `benches/`; see `make bench`.

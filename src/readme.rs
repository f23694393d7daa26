//! The README's Rust snippets, compiled (and run, unless marked `no_run`) as doc-tests by
//! `cargo test`, so the README cannot drift from the API. Owns nothing else.
#![doc = include_str!("../README.md")]

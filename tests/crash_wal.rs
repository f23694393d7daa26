//! The kill -9 durability loop (`crash_loop/mod.rs`) with the engine as configured by
//! default: with the write-ahead log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "crash_loop/mod.rs"]
mod crash_loop;

fn main() -> std::process::ExitCode {
    crash_loop::main()
}

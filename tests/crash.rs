//! The kill -9 durability loop (`crash_loop/mod.rs`) with `write_ahead_log = false`: every
//! commit synced in the B-tree.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "crash_loop/mod.rs"]
mod crash_loop;

fn main() -> std::process::ExitCode {
    crash_loop::main()
}

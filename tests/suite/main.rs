//! The integration tests: one binary, a module per area (so the crate is linked once for all of
//! them), sharing the helpers of `common`. `cargo test --test suite -- <area>::` runs one area.
//!
//! The tests of every module run on parallel threads of this one process, so nothing here may
//! change process-wide state unguarded: no environment variables are set (children get theirs
//! through `Command::env`), panics are watched through one hook that tells the areas apart
//! (`common::panics`), the captured logs of `security` are switched on only while its tests run,
//! tests that open TCP listeners in this process share `common::tcp_lock`, and a test that
//! re-runs this binary as a child names its child test by its full path (`common::child`).
//!
//! `tests/crash.rs` stays a binary of its own: it has its own `main` (`harness = false`).

mod common;

mod admin;
mod architecture;
mod bad_input;
mod bad_input_table;
mod cleanup;
#[cfg(feature = "cli")]
mod cli;
mod concurrency;
mod control;
mod corruption;
mod delayed;
mod disk_full;
mod fencing;
mod fuzz_corpus;
mod handlers;
mod handoff;
mod history;
mod limits;
mod log_sync;
mod metrics;
mod pause;
mod poison;
mod power_loss;
mod priority;
#[cfg(feature = "rabbitmq")]
mod rabbitmq;
mod recovery;
mod retry;
mod schedules;
#[cfg(feature = "cli")]
mod security;
mod settings;
mod shutdown;
mod slots;
mod state_machine;
mod testing;
mod timeout_cancel;
mod unique;
mod wait;
#[cfg(feature = "web")]
mod web;
mod web_app;
mod why;
mod workers;

//! Arbitrary bytes into the redo log's reader, plus logs built from the input and cut at a
//! point it chooses; see `checks::log_replay_check`.

#![no_main]

// Each target uses one of the shared checks.
#[allow(dead_code)]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::log_replay_check(data));

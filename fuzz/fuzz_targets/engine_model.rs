//! Sequences of engine operations (enqueue, claim, complete, fail, clock advance, cancel,
//! crash and reopen, ...) against the real engine and a reference model; see
//! `checks::engine_model_check`.

#![no_main]

// Each target uses one of the shared checks.
#[allow(dead_code)]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    checks::engine_model_check(data);
});

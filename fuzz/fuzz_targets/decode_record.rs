//! Arbitrary bytes into the task-record decoder, plus records built from the input's leading
//! bytes; see `checks::decode_record_check`.

#![no_main]

// Each target uses one of the shared checks.
#[allow(dead_code)]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::decode_record_check(data));

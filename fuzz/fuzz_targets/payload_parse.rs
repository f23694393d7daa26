//! Arbitrary UTF-8 into `Payload::from_json_str`; see `checks::payload_parse_check`.

#![no_main]

// Each target uses one of the shared checks.
#[allow(dead_code)]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::payload_parse_check(data));

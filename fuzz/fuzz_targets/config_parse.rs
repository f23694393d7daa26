//! Arbitrary UTF-8 into the TOML and YAML config parsers; see `checks::config_parse_check`.

#![no_main]

// Each target uses one of the shared checks.
#[allow(dead_code)]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::config_parse_check(data));

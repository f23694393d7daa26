//! The properties the fuzz targets check, one function per target. Shared, through
//! `#[path = ...] mod checks;`, by the targets here and by `tests/fuzz_corpus.rs`, which replays
//! the committed corpus under `cargo test`. Each function takes the raw input bytes, returns
//! normally when the property holds, and panics (with the reason) when it does not.

use std::path::Path;

use fq::internals::{decode_record, encode_sample_record};
use fq::{Config, Payload};

/// Longest text input the parsing checks look at; longer inputs are skipped, so that a run's
/// time goes into many inputs rather than a few huge ones.
pub(crate) const MAX_TEXT_INPUT: usize = 64 * 1024;

/// `decode_record` target: arbitrary bytes never panic the decoder, anything it accepts
/// re-encodes to bytes that decode and re-encode to themselves; the same for the input framed
/// as a record body (current version byte, valid checksum), which is what lets the fuzzer past
/// the checksum into the body decoder; and a record built from the input's leading bytes
/// decodes to exactly its own bytes, with any single flipped bit refused.
pub(crate) fn decode_record_check(data: &[u8]) {
    arbitrary_bytes_round_trip(data);
    arbitrary_bytes_round_trip(&frame_body(data));
    sample_record_round_trips(data);
}

/// `body` framed as a record: the current format version byte (read off a freshly encoded
/// record), `body`, then the CRC-32 of both, little-endian.
fn frame_body(body: &[u8]) -> Vec<u8> {
    let version = encode_sample_record("", "", 0, 0)[0];
    let mut framed = Vec::with_capacity(body.len() + 5);
    framed.push(version);
    framed.extend_from_slice(body);
    let crc = crc32(&framed);
    framed.extend_from_slice(&crc.to_le_bytes());
    framed
}

/// CRC-32 (IEEE 802.3, reflected), bit by bit: an oracle independent of the codec's crate.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn arbitrary_bytes_round_trip(data: &[u8]) {
    let Ok(encoded) = decode_record(data) else {
        return;
    };
    let again = decode_record(&encoded)
        .unwrap_or_else(|err| panic!("a re-encoded record does not decode: {err}"));
    assert_eq!(again, encoded, "re-encoding a decoded record is not stable");
}

/// The structured variant: priority (4 bytes LE), attempts (4 bytes LE), a split byte, then the
/// rest cut in two at a point chosen by the split byte: name, then payload (lossy UTF-8). Short
/// inputs are padded with zeros, so every input exercises this.
fn sample_record_round_trips(data: &[u8]) {
    let byte = |index: usize| data.get(index).copied().unwrap_or(0);
    let priority = i32::from_le_bytes([byte(0), byte(1), byte(2), byte(3)]);
    let attempts = u32::from_le_bytes([byte(4), byte(5), byte(6), byte(7)]);
    let rest = data.get(9..).unwrap_or_default();
    let cut = rest.len() * usize::from(byte(8)) / 255;
    let (name, payload) = rest.split_at(cut);
    let name = String::from_utf8_lossy(name);
    let payload = String::from_utf8_lossy(payload);

    let bytes = encode_sample_record(&name, &payload, priority, attempts);
    assert_eq!(
        decode_record(&bytes),
        Ok(bytes.clone()),
        "a freshly encoded record does not decode to its own bytes"
    );
    assert_eq!(
        frame_body(&bytes[1..bytes.len() - 4]),
        bytes,
        "the checks' framing no longer matches the codec's (version byte, body, CRC-32 LE)"
    );
    // CRC-32 catches every single-bit error; which bit is flipped comes from the input.
    let bit = usize::from(byte(8))
        .wrapping_mul(31)
        .wrapping_add(data.len())
        % (bytes.len() * 8);
    let mut flipped = bytes;
    flipped[bit / 8] ^= 1 << (bit % 8);
    assert!(
        decode_record(&flipped).is_err(),
        "a record with bit {bit} flipped still decodes"
    );
}

/// `payload_parse` target: arbitrary UTF-8 never panics `Payload::from_json_str`; an accepted
/// payload's normalized text is accepted again unchanged (normalization is idempotent), and so
/// is its JSON value.
pub(crate) fn payload_parse_check(data: &[u8]) {
    let Some(text) = bounded_text(data) else {
        return;
    };
    let payload = match Payload::from_json_str(text) {
        Ok(payload) => payload,
        Err(err) => {
            // Error messages are built from the input; building one must not panic either.
            std::hint::black_box(err.to_string());
            return;
        }
    };
    let again = Payload::from_json_str(payload.as_str()).unwrap_or_else(|err| {
        panic!(
            "the normalized payload {:?} is refused: {err}",
            payload.as_str()
        )
    });
    assert_eq!(again, payload, "normalizing a payload twice changes it");
    let from_value = Payload::from_value(&payload.to_value())
        .unwrap_or_else(|err| panic!("the payload's own value is refused: {err}"));
    assert_eq!(
        from_value, payload,
        "the payload's value normalizes differently"
    );
}

/// `config_parse` target: arbitrary UTF-8 never panics (nor hangs) the TOML and YAML config
/// parsers; an accepted configuration passes validation again, and errors can be displayed.
pub(crate) fn config_parse_check(data: &[u8]) {
    let Some(text) = bounded_text(data) else {
        return;
    };
    let origins = [Path::new("fuzz/fq.toml"), Path::new("fuzz/services.yaml")];
    let results = [
        Config::from_toml_str(text, origins[0]),
        Config::from_yaml_str(text, origins[1]),
    ];
    for result in results {
        match result {
            Ok(config) => {
                if let Err(err) = config.validate() {
                    panic!("an accepted configuration fails validation: {err}");
                }
            }
            Err(err) => {
                std::hint::black_box(err.to_string());
            }
        }
    }
}

/// `data` as text, when it is UTF-8 and at most [`MAX_TEXT_INPUT`] bytes.
fn bounded_text(data: &[u8]) -> Option<&str> {
    if data.len() > MAX_TEXT_INPUT {
        return None;
    }
    std::str::from_utf8(data).ok()
}

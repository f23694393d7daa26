//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the same checks the
//! fuzz targets run, so `cargo test` keeps every interesting input found so far passing without
//! libFuzzer or a nightly toolchain.

#[path = "../../fuzz/fuzz_targets/checks.rs"]
mod checks;

use std::fs;
use std::panic;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// Every file of the target's corpus, in name order. Fails on an empty or missing directory,
/// so the replay cannot pass on nothing.
fn corpus(target: &str) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut paths = Vec::new();
    for entry in fs::read_dir(&dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            paths.push(entry.path());
        }
    }
    paths.sort();
    assert!(
        !paths.is_empty(),
        "the corpus {} is empty; it must hold at least the hand-written seeds",
        dir.display()
    );
    paths
        .into_iter()
        .map(|path| fs::read(&path).map(|bytes| (path, bytes)))
        .collect()
}

/// Runs `check` on every corpus file of `target` and fails naming each input that broke it
/// (each panic message is printed above the failure).
fn replay(target: &str, check: fn(&[u8])) -> std::io::Result<()> {
    let inputs = corpus(target)?;
    let started = std::time::Instant::now();
    let failed: Vec<String> = inputs
        .iter()
        .filter(|(_, bytes)| panic::catch_unwind(|| check(bytes)).is_err())
        .map(|(path, _)| path.display().to_string())
        .collect();
    // The corpus is the whole input: no random seed to print or replay.
    println!(
        "{target}: {} corpus inputs ({} bytes) replayed in {:.2} s, {} failed",
        inputs.len(),
        inputs.iter().map(|(_, bytes)| bytes.len()).sum::<usize>(),
        started.elapsed().as_secs_f64(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} {target} corpus inputs fail their check:\n{}",
        failed.len(),
        inputs.len(),
        failed.join("\n")
    );
    Ok(())
}

#[test]
fn decode_record_corpus_round_trips() -> std::io::Result<()> {
    replay("decode_record", checks::decode_record_check)
}

#[test]
fn payload_parse_corpus_normalizes_idempotently() -> std::io::Result<()> {
    replay("payload_parse", checks::payload_parse_check)
}

#[test]
fn config_parse_corpus_parses_without_panicking() -> std::io::Result<()> {
    replay("config_parse", checks::config_parse_check)
}

#[test]
fn frame_decode_corpus_decodes_alike_in_any_chunking() -> std::io::Result<()> {
    // No allocation counting here (the fuzz target's allocator does it): this binary forbids
    // unsafe code, and its other tests allocate on other threads meanwhile.
    replay("frame_decode", |data| {
        checks::frame_decode_check(data, None)
    })
}

#[test]
fn engine_model_corpus_agrees_with_the_model() -> std::io::Result<()> {
    static TALLY: Mutex<checks::ModelTally> = Mutex::new(checks::ModelTally {
        ops: 0,
        tasks: 0,
        claimed: 0,
        completed: 0,
        retrying: 0,
        failed: 0,
        lost: 0,
        reopens: 0,
    });
    replay("engine_model", |data| {
        let run = checks::engine_model_check(data);
        let mut tally = TALLY.lock().unwrap_or_else(PoisonError::into_inner);
        tally.ops += run.ops;
        tally.tasks += run.tasks;
        tally.claimed += run.claimed;
        tally.completed += run.completed;
        tally.retrying += run.retrying;
        tally.failed += run.failed;
        tally.lost += run.lost;
        tally.reopens += run.reopens;
    })?;
    let tally = *TALLY.lock().unwrap_or_else(PoisonError::into_inner);
    println!(
        "engine_model: {} ops, {} tasks, {} claimed, {} completed, {} failed into RETRYING and {} into FAILED ({} by expired leases or crashes), {} crash-and-reopens; engine and model agreed after every op",
        tally.ops,
        tally.tasks,
        tally.claimed,
        tally.completed,
        tally.retrying,
        tally.failed,
        tally.lost,
        tally.reopens
    );
    Ok(())
}

#[test]
fn log_replay_corpus_reads_back_whole_records() -> std::io::Result<()> {
    replay("log_replay", checks::log_replay_check)
}

/// Regression: `payload_parse` found that `{"args":[184467440737047758083]}` normalized to a
/// float text that parsed one ULP away on the next pass, so a stored payload could differ from
/// the one sent. Fixed by serde_json's `float_roundtrip` feature.
#[test]
fn payload_normalization_is_stable_for_misrounded_floats() {
    let once =
        fq::Payload::from_json_str(r#"{"args":[184467440737047758083]}"#).expect("a valid payload");
    let twice = fq::Payload::from_json_str(once.as_str()).expect("its own normal form");
    assert_eq!(once, twice);
}

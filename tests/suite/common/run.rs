//! The knobs every figure-printing test shares: the run's seed (`FQ_SEED` replays a run) and
//! whether to run at full size (`FQ_FULL=1`). Included by `#[path]`, so tests that do not use
//! the rest of `common` (and `crash`, which has its own `main`) take only this.
#![allow(dead_code, unreachable_pub)]

/// The run's seed: `FQ_SEED`, else the clock; the same for every test of the run.
pub fn seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        std::env::var("FQ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
    })
}

/// `FQ_FULL` set to anything but empty or `0`: run the full size.
pub fn full() -> bool {
    std::env::var("FQ_FULL").is_ok_and(|v| !v.is_empty() && v != "0")
}

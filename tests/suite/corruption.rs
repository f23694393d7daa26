//! Corrupt store files (issue 6, item 4): at least 1,000 mutants of a store holding 10,000
//! tasks (truncations, bit flips in the header and in data pages, zeroed pages, overwritten
//! runs, appended garbage, a text file, a random binary file, an empty file, a directory, a
//! newer schema version) are opened by the engine in this process, each first read-only (as
//! `fq stats`, `list` and `show` open a store nobody serves) and then as its owner, and a
//! sample of them by `fq stats --db` under a timeout.
//!
//! Pass: no panic escapes, nothing aborts or hangs; each mutant either opens and passes the
//! integrity check (every task readable through `list` and `task`, and equal to what was
//! stored; a record that no longer decodes surfaces as `StoreError::CorruptRecord`), or is
//! refused with a store error that names the path and the problem. Separately, every flipped
//! byte of a task record is caught by the record checksum.
//!
//! Smoke size under `cargo test`; `FQ_FULL=1` runs the full size; `FQ_SEED=<n>` replays a run.
//! The figures are printed (`cargo test --test suite -- corruption:: --nocapture` shows them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use fq::{Engine, Error, ListQuery, Outcome, Settlement, StoreError, TaskFailure};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::common::{panics, run};
use run::{full, seed};

/// Tasks in the base store (the issue's figure, at both sizes).
const TASKS: usize = 10_000;
/// How long one mutant may take (open, check, close) before it counts as a hang.
const MUTANT_PATIENCE: Duration = Duration::from_secs(60);
/// How long `fq stats` may take on one mutant before it counts as a hang.
const CLI_PATIENCE: Duration = Duration::from_secs(60);
/// The redb page size.
const PAGE: usize = 4096;

// --- seeds and sizes ----------------------------------------------------------------------------

// --- panic accounting ---------------------------------------------------------------------------

/// The scope of a thread checking a mutant: its panics are counted, not printed
/// (`common::panics`).
const SCOPE: &str = "corruption";

/// The panics seen on the thread that checked mutant `index`.
fn mutant_panics(index: usize) -> Vec<String> {
    panics::since(0)
        .into_iter()
        .filter(|seen| seen.scope == Some((SCOPE, index)))
        .map(|seen| seen.text)
        .collect()
}

fn install_panic_counter() {
    panics::watch();
}

// --- the base store -----------------------------------------------------------------------------

/// Every task of a store, in id order (comparable across opens).
type Snapshot = Vec<fq::TaskRecord>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Reads every task of an open engine through `list` (paged), and every `sample_every`th
/// again through `task`.
async fn snapshot(engine: &Engine, sample_every: usize) -> fq::Result<Snapshot> {
    let mut all = Snapshot::new();
    let mut after = None;
    loop {
        let page = engine
            .list(ListQuery {
                limit: 2_500,
                after,
                ..ListQuery::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        all.extend(page);
    }
    if sample_every > 0 {
        for record in all.iter().step_by(sample_every) {
            let again = engine.task(record.id).await?;
            if again.as_ref() != Some(record) {
                return Err(Error::Internal(format!(
                    "task() and list() disagree about {}",
                    record.id
                )));
            }
        }
    }
    Ok(all)
}

/// What the base store holds, and the states an opened mutant may legitimately show.
struct Base {
    bytes: Vec<u8>,
    /// The final state.
    state: Snapshot,
    /// The state before the last commit (a marker task): redb keeps the previous commit's
    /// header slot, and falls back to it when the newest one is damaged.
    previous: Snapshot,
    /// The file as it was before the last commit: what a store that silently fell back to
    /// its previous commit would hold (the negative control of the check against that).
    previous_bytes: Vec<u8>,
    counts: BTreeMap<&'static str, usize>,
}

/// Builds a store of [`TASKS`] tasks in every status: completed, failed, retrying, pending,
/// scheduled and cancelled; then one last commit (a marker task).
fn build_base(dir: &Path) -> Base {
    let path = dir.join("base.redb");
    let rt = runtime();
    rt.block_on(async {
        let mut config = fq::Config::default();
        config.defaults.retry_delay = Duration::from_secs(3_600);
        config.defaults.retry_max_delay = Duration::from_secs(7_200);
        let engine = Engine::builder(&path)
            .config(config)
            .control(false)
            .open()
            .unwrap();
        let mut ids = Vec::with_capacity(TASKS);
        for chunk in 0..TASKS / 1_000 {
            let batch = (0..1_000).map(|i| {
                let n = chunk * 1_000 + i;
                let queue = ["default", "emails", "reports"][n % 3];
                let task = engine
                    .queue_task_named(
                        &format!("test.corrupt.kind{}", n % 7),
                        &json!({"args": [n], "kwargs": {"n": n, "text": format!("payload of task {n}")}}),
                    )
                    .queue(queue)
                    .priority((n % 11) as i32 - 5)
                    .max_retries(if n % 10 == 1 { 0 } else { 3 });
                if n % 20 == 19 {
                    task.delay(Duration::from_secs(86_400))
                } else {
                    task
                }
            });
            ids.extend(engine.queue_batch(batch).await.unwrap());
        }
        for id in ids.iter().skip(3).step_by(37) {
            engine.cancel(*id).await.unwrap();
        }
        // Settle most due tasks: 6 in 10 complete, 1 in 10 fails for good, 1 in 10 retries.
        let broker = engine.broker();
        let queues: Vec<Arc<str>> = ["default", "emails", "reports"]
            .into_iter()
            .map(Arc::from)
            .collect();
        let never = CancellationToken::new();
        let mut settled = 0;
        while settled < TASKS * 8 / 10 {
            let claimed = broker
                .claim(fq::ClaimRequest::new(&queues, 500, Duration::from_millis(100), &never))
                .await
                .unwrap();
            if claimed.is_empty() {
                break;
            }
            let mut joins = Vec::new();
            for record in claimed {
                let n = record.payload.to_value()["kwargs"]["n"].as_u64().unwrap();
                let outcome = match n % 10 {
                    1 | 2 => Outcome::Failed {
                        failure: TaskFailure {
                            message: format!("task {n} failed on purpose"),
                            kind: fq::FailureKind::Error,
                        },
                        retry_after: None,
                    },
                    _ => Outcome::Completed {
                        result: json!({"n": n, "ok": true}),
                    },
                };
                let broker = Arc::clone(&broker);
                joins.push(tokio::spawn(async move {
                    broker
                        .settle(Settlement {
                            id: record.id,
                            attempt: record.attempts,
                            outcome,
                        })
                        .await
                        .unwrap()
                }));
            }
            for join in joins {
                join.await.unwrap();
                settled += 1;
            }
        }
        drop(engine);
    });
    // Compacted, so that the file holds live pages only and the mutations below land on data
    // rather than on free space.
    let mut db = redb::Database::open(&path).unwrap();
    while db.compact().unwrap() {}
    drop(db);
    let previous_bytes = std::fs::read(&path).unwrap();
    let (state, previous) = rt.block_on(async {
        let engine = Engine::builder(&path).control(false).open().unwrap();
        let previous = snapshot(&engine, 0).await.unwrap();
        engine
            .queue_task_named("test.corrupt.marker", &json!({}))
            .send()
            .await
            .unwrap();
        let state = snapshot(&engine, 0).await.unwrap();
        (state, previous)
    });
    drop(rt);
    let mut counts = BTreeMap::new();
    for record in &state {
        *counts.entry(record.status.as_str()).or_default() += 1;
    }
    Base {
        bytes: std::fs::read(&path).unwrap(),
        state,
        previous,
        previous_bytes,
        counts,
    }
}

// --- mutants ------------------------------------------------------------------------------------

/// How to damage the base store.
enum Recipe {
    /// Keep only the first this many bytes.
    Truncate(usize),
    /// XOR these masks into these bytes.
    Xor(Vec<(usize, u8)>),
    /// Overwrite from this offset with these bytes.
    Overwrite(usize, Vec<u8>),
    /// Append these bytes.
    Append(Vec<u8>),
    /// A file with these bytes instead of the store.
    Replace(Vec<u8>),
    /// A directory at the store's path.
    Directory,
}

/// One damaged store.
struct Mutant {
    kind: &'static str,
    detail: String,
    recipe: Recipe,
}

impl Mutant {
    /// The mutant's file content; `None` for a directory.
    fn bytes(&self, base: &[u8]) -> Option<Vec<u8>> {
        Some(match &self.recipe {
            Recipe::Truncate(len) => base[..*len].to_vec(),
            Recipe::Xor(flips) => {
                let mut bytes = base.to_vec();
                for (at, mask) in flips {
                    bytes[*at] ^= mask;
                }
                bytes
            }
            Recipe::Overwrite(at, with) => {
                let mut bytes = base.to_vec();
                bytes[*at..*at + with.len()].copy_from_slice(with);
                bytes
            }
            Recipe::Append(extra) => {
                let mut bytes = base.to_vec();
                bytes.extend_from_slice(extra);
                bytes
            }
            Recipe::Replace(bytes) => bytes.clone(),
            Recipe::Directory => return None,
        })
    }

    fn write(&self, base: &[u8], path: &Path) {
        match self.bytes(base) {
            Some(bytes) => std::fs::write(path, bytes).unwrap(),
            None => std::fs::create_dir(path).unwrap(),
        }
    }
}

fn bit_flips(rng: &mut fastrand::Rng, range: std::ops::Range<usize>, n: usize) -> Vec<(usize, u8)> {
    (0..n)
        .map(|_| (rng.usize(range.clone()), 1u8 << rng.u32(0..8)))
        .collect()
}

/// The mutants: `per_kind` of each random kind, plus the fixed ones.
fn mutants(base: &Base, newer: &[u8], rng: &mut fastrand::Rng, per_kind: usize) -> Vec<Mutant> {
    let len = base.bytes.len();
    let pages = len / PAGE;
    let mut out = Vec::new();
    let mut push = |kind, detail: String, recipe| {
        out.push(Mutant {
            kind,
            detail,
            recipe,
        });
    };
    for _ in 0..per_kind {
        // Truncations: anywhere, half of them on a page boundary.
        let cut = if rng.bool() {
            rng.usize(0..pages) * PAGE
        } else {
            rng.usize(1..len)
        };
        push(
            "truncated",
            format!("to {cut} of {len} bytes"),
            Recipe::Truncate(cut),
        );
    }
    for _ in 0..per_kind {
        // The database header and its two commit slots are the first 320 bytes; the rest of
        // page 0 is the region header and allocator state.
        let n = rng.usize(1..=3);
        let end = if rng.bool() { 320 } else { PAGE };
        let flips = bit_flips(rng, 0..end, n);
        push("header bit flip", format!("{flips:?}"), Recipe::Xor(flips));
    }
    for _ in 0..per_kind {
        let n = rng.usize(1..=4);
        let flips = bit_flips(rng, PAGE..len, n);
        push("data bit flip", format!("{flips:?}"), Recipe::Xor(flips));
    }
    for _ in 0..per_kind {
        let page = rng.usize(0..pages);
        push(
            "zeroed page",
            format!("page {page} of {pages}"),
            Recipe::Overwrite(page * PAGE, vec![0; PAGE]),
        );
    }
    for _ in 0..per_kind {
        let run = rng.usize(1..=512);
        let at = rng.usize(0..len - run);
        let with = (0..run).map(|_| rng.u8(..)).collect();
        push(
            "overwritten run",
            format!("{run} random bytes at {at}"),
            Recipe::Overwrite(at, with),
        );
    }
    for _ in 0..per_kind {
        let extra = rng.usize(1..=3 * PAGE);
        let zeros = rng.bool();
        let bytes = (0..extra)
            .map(|_| if zeros { 0 } else { rng.u8(..) })
            .collect();
        let what = if zeros { "zero" } else { "random" };
        push(
            "appended garbage",
            format!("{extra} {what} bytes"),
            Recipe::Append(bytes),
        );
    }
    push(
        "text file",
        "a config file".into(),
        Recipe::Replace(b"[worker]\nconcurrency = 4\n".to_vec()),
    );
    push(
        "text file",
        "4 KiB of prose".into(),
        Recipe::Replace("not a task store, just words. ".repeat(140).into_bytes()),
    );
    push(
        "random file",
        "64 KiB of random bytes".into(),
        Recipe::Replace((0..65_536).map(|_| rng.u8(..)).collect()),
    );
    push(
        "random file",
        "the store's first 16 bytes, then random ones".into(),
        Recipe::Replace(
            base.bytes[..16]
                .iter()
                .copied()
                .chain((0..PAGE * 4).map(|_| rng.u8(..)))
                .collect(),
        ),
    );
    // Every single-bit flip of the first 16 bytes (redb's magic, its god byte, which names the
    // primary commit slot, and the page size): a flipped slot bit would make redb open the
    // previous commit, losing the last acknowledged write without a word.
    for at in 0..16 {
        for bit in 0..8 {
            push(
                "first-bytes flip",
                format!("byte {at} bit {bit}"),
                Recipe::Xor(vec![(at, 1 << bit)]),
            );
        }
    }
    push("empty file", "0 bytes".into(), Recipe::Replace(Vec::new()));
    push(
        "directory",
        "a directory at the store path".into(),
        Recipe::Directory,
    );
    push(
        "newer schema",
        "META schema_version 2".into(),
        Recipe::Replace(newer.to_vec()),
    );
    out
}

/// A copy of the base store whose META says schema version 2, written with redb directly.
fn newer_schema(base: &Base, dir: &Path) -> Vec<u8> {
    let path = dir.join("newer.redb");
    std::fs::write(&path, &base.bytes).unwrap();
    let db = redb::Database::open(&path).unwrap();
    let meta: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("meta");
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(meta).unwrap();
        table
            .insert("schema_version", &2u32.to_be_bytes()[..])
            .unwrap();
    }
    txn.commit().unwrap();
    drop(db);
    std::fs::read(&path).unwrap()
}

// --- checking one mutant ------------------------------------------------------------------------

/// How one mutant fared.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Verdict {
    /// Opened; every task read back as stored.
    Intact,
    /// Opened; a damaged record surfaced as `CorruptRecord` (or a store error) when read.
    DetectedOnRead(&'static str),
    /// Refused at open with this error kind.
    Refused(&'static str),
}

fn store_error_kind(error: &StoreError) -> &'static str {
    match error {
        StoreError::NotFqStore { .. } => "not an fq store",
        StoreError::NewerSchema { .. } => "newer schema",
        StoreError::Corrupt { .. } => "corrupt",
        StoreError::Locked { .. } => "locked",
        StoreError::Io { .. } => "i/o",
        StoreError::Full { .. } => "full",
        StoreError::Storage { .. } => "storage",
        StoreError::CorruptRecord { .. } => "corrupt record",
        _ => "other store error",
    }
}

/// The first message seen for each kind of refusal, for the report.
fn examples() -> &'static Mutex<BTreeMap<&'static str, String>> {
    static EXAMPLES: OnceLock<Mutex<BTreeMap<&'static str, String>>> = OnceLock::new();
    EXAMPLES.get_or_init(|| Mutex::new(BTreeMap::new()))
}

fn remember_example(kind: &'static str, text: &str) {
    examples()
        .lock()
        .unwrap()
        .entry(kind)
        .or_insert_with(|| text.to_owned());
}

/// What one mutant gave: the verdict of an open that owns the store (the engine's), and of a
/// read-only open (the one `fq stats`, `list` and `show` make on a store nobody serves).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Verdicts {
    owned: Verdict,
    read_only: Verdict,
}

impl Verdicts {
    fn intact() -> Self {
        Self {
            owned: Verdict::Intact,
            read_only: Verdict::Intact,
        }
    }
}

/// Opens the mutant at `path` read-only, then as its owner; checks each, closes it. `Err` is a
/// failed expectation.
fn check_mutant(path: &Path, base: &Base, write_check: bool) -> Result<Verdicts, String> {
    // First: an owner's open may repair or write the file.
    let read_only = open_and_judge(path, base, true).map_err(|e| format!("read-only: {e}"))?;
    let owned = open_and_judge(path, base, false)?;
    if write_check && matches!(owned, Verdict::Intact) {
        write_and_reopen(path)?;
    }
    Ok(Verdicts { owned, read_only })
}

/// Opens the mutant (read-only or as its owner) and reads every task back.
fn open_and_judge(path: &Path, base: &Base, read_only: bool) -> Result<Verdict, String> {
    let opened = Engine::builder(path)
        .control(false)
        .read_only(read_only)
        .open();
    let engine = match opened {
        Ok(engine) => engine,
        Err(Error::Store(error)) => {
            let text = error.to_string();
            let name = path.file_name().unwrap().to_string_lossy();
            if !text.contains(name.as_ref()) {
                return Err(format!("refusal does not name the path: {text}"));
            }
            let kind = store_error_kind(&error);
            // The message says what is wrong beyond the path.
            if text.trim_start_matches(&path.display().to_string()).len() < 12 {
                return Err(format!("refusal does not name the problem: {text}"));
            }
            remember_example(kind, &text);
            return Ok(Verdict::Refused(kind));
        }
        Err(other) => return Err(format!("open failed with a non-store error: {other}")),
    };
    let rt = scoped_runtime();
    rt.block_on(async {
        let stats = engine.stats().await;
        let read = snapshot(&engine, 97).await;
        match (stats, read) {
            (Ok(stats), Ok(state)) => {
                if state == base.state {
                    if stats.total() != state.len() as u64 {
                        return Err(format!(
                            "stats count {} tasks, list reads {}",
                            stats.total(),
                            state.len()
                        ));
                    }
                    Ok(Verdict::Intact)
                } else if state == base.previous {
                    // redb fell back to its previous commit slot: the last acknowledged write
                    // (the marker task) is gone without a word. A store never opens with
                    // silently wrong data, so this fails (issue 15 §1).
                    Err(
                        "opened at redb's previous commit: the last acknowledged write is \
                         missing and nothing said so"
                            .to_owned(),
                    )
                } else {
                    let stored: HashMap<_, _> = base.state.iter().map(|r| (r.id, r)).collect();
                    let read: HashMap<_, _> = state.iter().map(|r| (r.id, r)).collect();
                    let missing = stored.keys().filter(|id| !read.contains_key(*id)).count();
                    let changed = stored
                        .iter()
                        .filter(|(id, r)| read.get(*id).is_some_and(|w| w != *r))
                        .count();
                    let extra = read.keys().filter(|id| !stored.contains_key(*id)).count();
                    Err(format!(
                        "opened and read without error, but the tasks differ from what was \
                         stored: {missing} missing, {changed} changed, {extra} invented"
                    ))
                }
            }
            (Err(Error::Store(error)), _) | (_, Err(Error::Store(error))) => {
                let kind = store_error_kind(&error);
                match &error {
                    StoreError::CorruptRecord { id, .. } => {
                        if !error.to_string().contains(&id.to_string()) {
                            return Err(format!("corrupt record error without its id: {error}"));
                        }
                    }
                    other => {
                        let name = path.file_name().unwrap().to_string_lossy();
                        if !other.to_string().contains(name.as_ref()) {
                            return Err(format!("read error does not name the path: {other}"));
                        }
                    }
                }
                remember_example(kind, &error.to_string());
                Ok(Verdict::DetectedOnRead(kind))
            }
            (Err(other), _) | (_, Err(other)) => Err(format!("read failed: {other}")),
        }
    })
}

/// A write and a reopen after it, on a mutant that opened intact: the engine must neither panic
/// nor lose the write.
fn write_and_reopen(path: &Path) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = Engine::builder(path)
        .control(false)
        .open()
        .map_err(|e| format!("the open before a write failed: {e}"))?;
    let id = rt
        .block_on(
            engine
                .queue_task_named("test.corrupt.after", &json!({}))
                .send(),
        )
        .map_err(|e| format!("enqueue on an opened mutant failed: {e}"))?;
    drop(engine);
    let engine = Engine::builder(path)
        .control(false)
        .open()
        .map_err(|e| format!("reopen after a write failed: {e}"))?;
    let found = rt
        .block_on(engine.task(id))
        .map_err(|e| format!("read after reopen failed: {e}"))?;
    if found.is_none() {
        return Err("a task queued on the opened mutant was lost at reopen".into());
    }
    Ok(())
}

/// A mutant's index, its verdict (or what went wrong), and how long it took.
type Checked = (usize, Result<Verdicts, String>, Duration);

/// Runs [`check_mutant`] on its own thread with a time limit; panics are caught and counted.
fn check_with_timeout(
    index: usize,
    path: &Path,
    base: &Arc<Base>,
    write_check: bool,
) -> Result<Verdicts, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (path_owned, base) = (path.to_path_buf(), Arc::clone(base));
    std::thread::Builder::new()
        .name(format!("mutant-{index}"))
        .spawn(move || {
            panics::set_scope(Some((SCOPE, index)));
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                check_mutant(&path_owned, &base, write_check)
            }));
            drop(tx.send(result));
        })
        .unwrap();
    let result = match rx.recv_timeout(MUTANT_PATIENCE) {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err("a panic escaped the engine".into()),
        Err(_) => Err(format!("hang: no verdict within {MUTANT_PATIENCE:?}")),
    };
    let seen = mutant_panics(index);
    match result {
        // redb's panics on a damaged file are caught by the engine and come back as an error
        // naming the file; a panic anywhere else, or beside an intact verdict, is a bug.
        Ok(verdicts)
            if seen.is_empty()
                || (verdicts != Verdicts::intact() && seen.iter().all(|p| p.contains("redb"))) =>
        {
            Ok(verdicts)
        }
        Ok(verdicts) => Err(format!("{verdicts:?}, but panicked: {seen:?}")),
        Err(error) => Err(format!("{error}; panics: {seen:?}")),
    }
}

// --- fq stats -----------------------------------------------------------------------------------

/// Runs `fq stats --db <path>` with a time limit: (exit code, stderr), or an error for a hang.
fn fq_stats(path: &Path, home: &Path) -> Result<(Option<i32>, String), String> {
    let mut child = crate::common::child::fq()
        .arg("--db")
        .arg(path)
        .arg("stats")
        .current_dir(home)
        .env_remove("RUST_LOG")
        .env_remove("FQ_DATABASE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + CLI_PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            return Ok((status.code(), stderr));
        }
        if Instant::now() > deadline {
            drop(child.kill());
            drop(child.wait());
            return Err(format!("fq stats hung for {CLI_PATIENCE:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn remove_mutant(path: &Path) {
    if path.is_dir() {
        std::fs::remove_dir_all(path).unwrap();
    } else if path.exists() {
        std::fs::remove_file(path).unwrap();
    }
}

// --- the tests ----------------------------------------------------------------------------------

#[test]
fn a_thousand_mutants_of_a_10000_task_store_open_cleanly_or_are_refused_naming_the_file() {
    install_panic_counter();
    let seed = seed();
    let (per_kind, cli_sample) = if full() { (500, 200) } else { (170, 40) };
    let per_kind = std::env::var("FQ_CORRUPTION_PER_KIND")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(per_kind);
    let cli_sample = std::env::var("FQ_CORRUPTION_CLI_SAMPLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cli_sample);
    println!(
        "corruption: seed {seed} (FQ_SEED={seed} replays), full={}",
        full()
    );
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();

    let started = Instant::now();
    let base = build_base(dir.path());
    println!(
        "corruption: base store of {} tasks ({:?}), {} bytes, built in {:.1?}",
        base.state.len(),
        base.counts,
        base.bytes.len(),
        started.elapsed()
    );
    let newer = newer_schema(&base, dir.path());
    let base = Arc::new(base);
    let mutants = mutants(&base, &newer, &mut rng, per_kind);
    if per_kind >= 170 {
        assert!(mutants.len() >= 1_000, "{} mutants", mutants.len());
    }

    // The base itself opens intact, and survives a write and a reopen.
    let pristine = dir.path().join("pristine.redb");
    std::fs::write(&pristine, &base.bytes).unwrap();
    assert_eq!(
        check_with_timeout(usize::MAX, &pristine, &base, true),
        Ok(Verdicts::intact())
    );

    // Negative control: a store holding everything but the last acknowledged write (as one
    // that fell back to its previous commit would) must fail the check, not pass as intact.
    let previous = dir.path().join("previous.redb");
    std::fs::write(&previous, &base.previous_bytes).unwrap();
    let verdict = check_with_timeout(usize::MAX - 1, &previous, &base, false);
    assert!(
        verdict
            .as_ref()
            .is_err_and(|problem| problem.contains("previous commit")),
        "a store missing its last acknowledged write passed the check: {verdict:?}"
    );

    // Two checkers share the mutants (two cores); each mutant is written to a file of its
    // own, checked, and removed.
    // Panics on engine threads from here to the end of the checks count as stray.
    let window = panics::mark();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Mutex<Vec<Checked>> = Mutex::new(Vec::new());
    let checked = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(mutant) = mutants.get(index) else {
                        break;
                    };
                    let path = dir.path().join(format!("mutant-{index}.redb"));
                    mutant.write(&base.bytes, &path);
                    let started = Instant::now();
                    // The write-and-reopen check costs two more opens: on every opened mutant
                    // at full size, on one in eight in the smoke run.
                    let verdict =
                        check_with_timeout(index, &path, &base, full() || index.is_multiple_of(8));
                    let took = started.elapsed();
                    remove_mutant(&path);
                    results.lock().unwrap().push((index, verdict, took));
                }
            });
        }
    });
    let window = (window, panics::mark());
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(index, _, _)| *index);
    let mut tally: BTreeMap<(&'static str, &'static str, Verdict), usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut times = Vec::with_capacity(results.len());
    for (index, verdict, took) in results {
        let mutant = &mutants[index];
        times.push(took);
        match verdict {
            Ok(Verdicts { owned, read_only }) => {
                *tally.entry((mutant.kind, "owner", owned)).or_default() += 1;
                *tally
                    .entry((mutant.kind, "read-only", read_only))
                    .or_default() += 1;
            }
            Err(problem) => failures.push(format!(
                "mutant {index} ({}: {}): {problem}",
                mutant.kind, mutant.detail
            )),
        }
    }
    let stray: Vec<String> = panics::between(window.0, window.1)
        .into_iter()
        .filter(|seen| seen.scope.is_none() && seen.on_engine_thread() && !seen.elsewhere(file!()))
        .map(|seen| seen.text)
        .collect();
    if !stray.is_empty() {
        failures.push(format!("panics on engine threads: {stray:?}"));
    }
    times.sort();
    println!(
        "corruption: {} mutants checked in {:.1?} on 2 threads (per mutant p50 {:.0?}, max {:.0?})",
        mutants.len(),
        checked.elapsed(),
        times[times.len() / 2],
        times[times.len() - 1]
    );
    let mut by_kind: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
    for ((kind, open, verdict), n) in &tally {
        by_kind
            .entry((kind, open))
            .or_default()
            .push(format!("{n} {verdict:?}"));
    }
    for ((kind, open), verdicts) in &by_kind {
        println!("corruption:   {kind:<17} {open:<9} {}", verdicts.join(", "));
    }
    for (kind, text) in examples().lock().unwrap().iter() {
        println!("corruption:   e.g. {kind}: {text}");
    }
    let caught = panics::since(0)
        .iter()
        .filter(|seen| seen.scope.is_some_and(|(scope, _)| scope == SCOPE))
        .count();
    println!(
        "corruption: {caught} redb panics on damaged pages were caught by the engine and \
         returned as errors; {} failures",
        failures.len()
    );

    // A sample through the binary: one of each kind first, then random ones.
    let mut sample: Vec<usize> = Vec::new();
    let mut seen_kinds = std::collections::HashSet::new();
    for (index, mutant) in mutants.iter().enumerate() {
        if seen_kinds.insert(mutant.kind) {
            sample.push(index);
        }
    }
    while sample.len() < cli_sample.min(mutants.len()) {
        let index = rng.usize(0..mutants.len());
        if !sample.contains(&index) {
            sample.push(index);
        }
    }
    let home = tempfile::tempdir().unwrap();
    let mut codes: BTreeMap<Option<i32>, usize> = BTreeMap::new();
    let mut noisy = 0;
    let cli_started = Instant::now();
    for index in &sample {
        let mutant = &mutants[*index];
        let path = dir.path().join(format!("cli-{index}.redb"));
        mutant.write(&base.bytes, &path);
        let label = format!(
            "fq stats on mutant {index} ({}: {})",
            mutant.kind, mutant.detail
        );
        match fq_stats(&path, home.path()) {
            Ok((code, stderr)) => {
                *codes.entry(code).or_default() += 1;
                if stderr.contains("panicked") {
                    noisy += 1;
                    failures.push(format!("{label}: a panic printed on stderr: {stderr}"));
                }
                match code {
                    Some(0) => {}
                    Some(1) => {
                        let name = path.file_name().unwrap().to_string_lossy();
                        if !stderr.contains(name.as_ref()) {
                            failures
                                .push(format!("{label}: error does not name the file: {stderr}"));
                        }
                    }
                    other => failures.push(format!(
                        "{label}: exit {other:?} (a panic is 101, a signal has none): {stderr}"
                    )),
                }
            }
            Err(hang) => failures.push(format!("{label}: {hang}")),
        }
        remove_mutant(&path);
    }
    println!(
        "corruption: fq stats on {} mutants in {:.1?}: exit codes {codes:?}; {noisy} printed a \
         caught redb panic message on stderr",
        sample.len(),
        cli_started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {} mutants failed (seed {seed}):\n{}",
        failures.len(),
        mutants.len(),
        failures.join("\n")
    );
}

#[test]
fn every_flipped_byte_of_a_task_record_is_caught_by_its_checksum() {
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut records = vec![
        fq::internals::encode_sample_record("t", "{}", 0, 0),
        fq::internals::encode_sample_record(
            "myapp.tasks.send_email",
            r#"{"args":[],"kwargs":{"to":"ada@example.com"}}"#,
            5,
            2,
        ),
    ];
    let sizes = if full() {
        vec![0, 1, 100, 4_000, 65_536]
    } else {
        vec![0, 1, 100, 2_000]
    };
    for size in sizes {
        let text: String = (0..size).map(|_| rng.alphanumeric()).collect();
        let payload = json!({"args": [], "kwargs": {"blob": text}}).to_string();
        records.push(fq::internals::encode_sample_record(
            "test.blob",
            &payload,
            rng.i32(..),
            rng.u32(..1000),
        ));
    }
    let mut flips = 0u64;
    let mut bytes_checked = 0u64;
    for record in &records {
        assert_eq!(
            fq::internals::decode_record(record).as_deref(),
            Ok(record.as_slice()),
            "a sample record round-trips"
        );
        for index in 0..record.len() {
            bytes_checked += 1;
            for bit in 0..8 {
                let mut mutant = record.clone();
                mutant[index] ^= 1 << bit;
                flips += 1;
                let decoded = fq::internals::decode_record(&mutant);
                assert!(
                    decoded.is_err(),
                    "flip of bit {bit} of byte {index} (of {}) decoded: seed {seed}",
                    record.len()
                );
            }
            // A whole byte replaced by another random value, too.
            let mut mutant = record.clone();
            mutant[index] ^= rng.u8(1..);
            flips += 1;
            assert!(fq::internals::decode_record(&mutant).is_err());
        }
    }
    let mut reasons: HashMap<String, u64> = HashMap::new();
    for record in &records {
        let mut mutant = record.clone();
        let last = mutant.len() / 2;
        mutant[last] ^= 1;
        let reason = fq::internals::decode_record(&mutant).unwrap_err();
        *reasons
            .entry(reason.split(' ').take(2).collect::<Vec<_>>().join(" "))
            .or_default() += 1;
    }
    println!(
        "record checksum: seed {seed}: {} records, {bytes_checked} bytes, {flips} flips, all \
         caught ({reasons:?})",
        records.len()
    );
}

/// The TASKS table, as the store defines it (`src/store/tables.rs`).
const TASKS_TABLE: redb::TableDefinition<'_, u128, &[u8]> = redb::TableDefinition::new("tasks");

/// Replaces one task's stored record with `bytes`, through redb itself: the pages stay valid
/// (checksummed by redb), only the record is wrong, as a bug or another program would leave it.
fn write_record(path: &Path, id: fq::TaskId, bytes: &[u8]) {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut tasks = txn.open_table(TASKS_TABLE).unwrap();
        tasks.insert(id.as_u128(), bytes).unwrap();
    }
    txn.commit().unwrap();
}

fn read_record(path: &Path, id: fq::TaskId) -> Vec<u8> {
    use redb::ReadableDatabase;
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let tasks = txn.open_table(TASKS_TABLE).unwrap();
    tasks.get(id.as_u128()).unwrap().unwrap().value().to_vec()
}

fn is_corrupt_record<T: std::fmt::Debug>(result: &fq::Result<T>, id: fq::TaskId) -> bool {
    matches!(result, Err(Error::Store(StoreError::CorruptRecord { id: bad, .. })) if *bad == id)
        && result
            .as_ref()
            .err()
            .is_some_and(|e| e.to_string().contains(&id.to_string()))
}

/// Every byte of a stored record flipped in turn, under valid page checksums: the engine opens
/// the store, reads of that task (and pages of `list` holding it) fail with `CorruptRecord`
/// naming it, everything else keeps working, and a worker skips it.
#[test]
fn every_flipped_byte_of_a_stored_record_surfaces_as_corrupt_record_naming_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.redb");
    let rt = runtime();
    let (victim, good, done) = rt.block_on(async {
        let engine = Engine::builder(&base).control(false).open().unwrap();
        let done = engine
            .queue_task_named("t.done", &json!({"kwargs": {"n": 0}}))
            .send()
            .await
            .unwrap();
        let broker = engine.broker();
        let never = CancellationToken::new();
        let claimed = broker
            .claim(fq::ClaimRequest::new(
                &[Arc::from("default")],
                1,
                Duration::from_secs(5),
                &never,
            ))
            .await
            .unwrap();
        broker
            .settle(Settlement {
                id: claimed[0].id,
                attempt: 1,
                outcome: Outcome::Completed {
                    result: json!({"ok": true}),
                },
            })
            .await
            .unwrap();
        let victim = engine
            .queue_task_named("t.victim", &json!({"kwargs": {"to": "ada@example.com"}}))
            .send()
            .await
            .unwrap();
        let good = engine
            .queue_task_named("t.good", &json!({"kwargs": {"n": 2}}))
            .send()
            .await
            .unwrap();
        (victim, good, done)
    });
    let original = read_record(&base, victim);
    let path = dir.path().join("damaged.redb");
    let base_bytes = std::fs::read(&base).unwrap();
    let mut flips = 0;
    for index in 0..original.len() {
        std::fs::write(&path, &base_bytes).unwrap();
        let mut damaged = original.clone();
        damaged[index] ^= 1 << (index % 8);
        write_record(&path, victim, &damaged);
        let engine = Engine::builder(&path).control(false).open().unwrap();
        rt.block_on(async {
            let read = engine.task(victim).await;
            assert!(is_corrupt_record(&read, victim), "byte {index}: {read:?}");
            let listed = engine.list(ListQuery::default()).await;
            assert!(
                is_corrupt_record(&listed, victim),
                "byte {index}: {listed:?}"
            );
            let cancelled = engine.cancel(victim).await;
            assert!(
                is_corrupt_record(&cancelled, victim),
                "byte {index}: {cancelled:?}"
            );
            assert!(engine.task(good).await.unwrap().is_some());
            assert!(engine.task(done).await.unwrap().is_some());
            assert_eq!(engine.stats().await.unwrap().total(), 3);
            // A worker's claim skips the damaged task and takes the good one.
            let never = CancellationToken::new();
            let claimed = engine
                .broker()
                .claim(fq::ClaimRequest::new(
                    &[Arc::from("default")],
                    10,
                    Duration::from_millis(50),
                    &never,
                ))
                .await
                .unwrap();
            let ids: Vec<_> = claimed.iter().map(|r| r.id).collect();
            assert_eq!(ids, vec![good], "byte {index}");
        });
        drop(engine);
        flips += 1;
    }
    // The CLI reports it too, naming the task, with a runtime failure.
    std::fs::write(&path, &base_bytes).unwrap();
    let mut damaged = original.clone();
    damaged[original.len() / 2] ^= 0x20;
    write_record(&path, victim, &damaged);
    let home = tempfile::tempdir().unwrap();
    let fq_on_the_store = |args: &[&str]| {
        let out = crate::common::child::fq()
            .arg("--db")
            .arg(&path)
            .args(args)
            .current_dir(home.path())
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for args in [vec!["show", &*victim.to_string()], vec!["list"]] {
        let (code, stderr) = fq_on_the_store(&args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&victim.to_string()) && stderr.contains("corrupt"),
            "{stderr}"
        );
    }
    // The read-only open serves the rest: a damaged record is that task's error, not the
    // store's.
    for args in [vec!["show", &*good.to_string()], vec!["stats"]] {
        let (code, stderr) = fq_on_the_store(&args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
    }
    println!(
        "record checksum in the store: {flips} single-byte flips of a {}-byte record under \
         valid page checksums, each reported as CorruptRecord naming the task; the other tasks \
         readable, a worker skips it; fq show and fq list exit 1 naming it, fq show of another task and fq stats exit 0",
        original.len()
    );
}

/// One damaged record of a task left RUNNING made the whole store refuse to open: recovery
/// reads every orphan's record to make it RETRYING, and the `CorruptRecord` error (naming the
/// task, not the file) ended the open. Now the orphan is skipped with an error in the log, as
/// a claim skips a damaged record, and everything else is recovered and served.
#[test]
fn regression_an_orphan_with_a_damaged_record_kept_the_store_from_opening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    let rt = runtime();
    let (orphan, other, healthy_orphan) = rt.block_on(async {
        let engine = Engine::builder(&path).control(false).open().unwrap();
        let mut ids = Vec::new();
        for name in ["t.orphan", "t.healthy_orphan", "t.other"] {
            ids.push(
                engine
                    .queue_task_named(name, &json!({}))
                    .send()
                    .await
                    .unwrap(),
            );
        }
        let never = CancellationToken::new();
        let claimed = engine
            .broker()
            .claim(fq::ClaimRequest::new(
                &[Arc::from("default")],
                2,
                Duration::from_secs(5),
                &never,
            ))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 2);
        (ids[0], ids[2], ids[1])
    });
    // Both claimed tasks are left RUNNING (the engine closes without settling them); one of
    // their records is then damaged.
    let mut record = read_record(&path, orphan);
    let middle = record.len() / 2;
    record[middle] ^= 0x01;
    write_record(&path, orphan, &record);
    let engine = Engine::builder(&path)
        .control(false)
        .open()
        .expect("the store opens despite one damaged orphan");
    assert_eq!(
        engine.recovery().orphans_retrying,
        1,
        "{:?}",
        engine.recovery()
    );
    rt.block_on(async {
        let read = engine.task(orphan).await;
        assert!(is_corrupt_record(&read, orphan), "{read:?}");
        let recovered = engine.task(healthy_orphan).await.unwrap().unwrap();
        assert_eq!(recovered.status, fq::TaskStatus::Retrying);
        assert_eq!(recovered.attempts, 1);
        assert!(engine.task(other).await.unwrap().is_some());
        let never = CancellationToken::new();
        let claimed = engine
            .broker()
            .claim(fq::ClaimRequest::new(
                &[Arc::from("default")],
                10,
                Duration::from_millis(50),
                &never,
            ))
            .await
            .unwrap();
        let mut ids: Vec<_> = claimed.iter().map(|r| r.id).collect();
        ids.sort();
        let mut expected = vec![healthy_orphan, other];
        expected.sort();
        assert_eq!(ids, expected);
    });
    drop(engine);
    // And again: the damaged orphan does not stop later opens either.
    let engine = Engine::builder(&path).control(false).open().unwrap();
    let read = rt.block_on(engine.task(orphan));
    assert!(is_corrupt_record(&read, orphan), "{read:?}");
}

/// A small store of `tasks` pending tasks, closed cleanly; their ids.
fn small_store(path: &Path, tasks: usize) -> Vec<fq::TaskId> {
    runtime().block_on(async {
        let engine = Engine::builder(path).control(false).open().unwrap();
        let mut ids = Vec::new();
        for n in 0..tasks {
            let payload = json!({"args": [n, "x".repeat(n % 300)], "kwargs": {}});
            ids.push(
                engine
                    .queue_task_named("t.small", &payload)
                    .priority((n % 5) as i32)
                    .send()
                    .await
                    .unwrap(),
            );
        }
        drop(engine);
        ids
    })
}

/// A runtime for one thread's reads: the engine reads on its blocking threads, and their
/// panics count as that thread's (its `panics` scope).
fn scoped_runtime() -> tokio::runtime::Runtime {
    let scope = panics::scope();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_start(move || panics::set_scope(scope))
        .build()
        .unwrap()
}

/// Opens `path` read-only (verifying it or not) and reads stats and the first page of tasks:
/// `Ok` with their ids, or the store error met.
fn read_only_look(path: &Path, verify: bool) -> Result<Vec<fq::TaskId>, StoreError> {
    let rt = scoped_runtime();
    let opened = Engine::builder(path)
        .control(false)
        .read_only(true)
        .verify_on_open(verify)
        .open();
    let engine = match opened {
        Ok(engine) => engine,
        Err(Error::Store(error)) => return Err(error),
        Err(other) => panic!("a read-only open failed with a non-store error: {other}"),
    };
    rt.block_on(async {
        let read = async {
            engine.stats().await?;
            engine.list(ListQuery::default()).await
        };
        match read.await {
            Ok(tasks) => Ok(tasks.iter().map(|task| task.id).collect()),
            Err(Error::Store(error)) => Err(error),
            Err(other) => panic!("a read-only read failed with a non-store error: {other}"),
        }
    })
}

/// `fq stats --db` on a store whose last page was zeroed exited 101: redb met the page while
/// listing the tables for the store's identity check, at an `unreachable!()`, and only the
/// open itself was guarded (CI, seed lost). Every page of a small store is zeroed in turn here
/// and opened read-only, with and without page verification; each open and read gives the
/// tasks or a store error naming the file. Without verification the identity read meets the
/// damage first, and some zeroed pages make redb panic there (else this test would guard
/// nothing); with it, every damaged page is refused before any read.
#[test]
fn regression_a_zeroed_page_made_redb_panic_past_the_guarded_read_only_open() {
    install_panic_counter();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.redb");
    let ids = small_store(&path, 400);
    let pristine = std::fs::read(&path).unwrap();
    for verify in [false, true] {
        let read = read_only_look(&path, verify).map_err(|e| e.to_string());
        assert_eq!(read, Ok(ids[..100].to_vec()));
        // Verifying writes through redb, into memory only: the file stays as it was.
        assert!(
            std::fs::read(&path).unwrap() == pristine,
            "verify {verify}: the file changed"
        );
    }
    let pages = pristine.len() / PAGE;
    let mutant_path = dir.path().join("zeroed.redb");
    // The pages whose verified open met a panic inside redb, for `fq stats` below.
    let mut panicking_pages = Vec::new();
    for verify in [false, true] {
        let (mut refused, mut caught, mut read_wrong) = (0, 0, 0);
        for page in 1..pages {
            let mut bytes = pristine.clone();
            bytes[page * PAGE..(page + 1) * PAGE].fill(0);
            std::fs::write(&mutant_path, &bytes).unwrap();
            let index = usize::MAX - 10 - page - if verify { pages } else { 0 };
            let (tx, rx) = std::sync::mpsc::channel();
            let checked = mutant_path.clone();
            std::thread::spawn(move || {
                panics::set_scope(Some((SCOPE, index)));
                let looked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    read_only_look(&checked, verify)
                }));
                drop(tx.send(looked.map_err(|_| ())));
            });
            let looked = rx
                .recv_timeout(MUTANT_PATIENCE)
                .unwrap_or_else(|_| panic!("page {page} of {pages} zeroed: hang"));
            let seen = mutant_panics(index);
            match looked {
                Err(()) => panic!("page {page} of {pages} zeroed: a panic escaped: {seen:?}"),
                Ok(Ok(read)) => {
                    assert!(seen.is_empty(), "page {page}: read, but panicked: {seen:?}");
                    read_wrong += usize::from(read != ids[..100]);
                }
                Ok(Err(error)) => {
                    let text = error.to_string();
                    assert!(
                        text.contains("zeroed.redb"),
                        "page {page}: the error does not name the file: {text}"
                    );
                    refused += 1;
                    caught += usize::from(!seen.is_empty());
                    if verify && !seen.is_empty() {
                        panicking_pages.push(page);
                    }
                }
            }
        }
        println!(
            "zeroed pages under a read-only open (verify {verify}): {pages} pages, {refused} \
             refused naming the file, {caught} of them after a redb panic the engine caught; \
             {read_wrong} read other tasks than were stored"
        );
        if verify {
            assert_eq!(
                read_wrong, 0,
                "a verified open read a damaged page's wrong content"
            );
        } else {
            assert!(
                caught > 0,
                "no zeroed page made redb panic: the test guards nothing"
            );
        }
    }
    // `fq stats` on those: the error naming the file, and no panic's message or backtrace
    // before it (the CLI's hook logs a caught one at debug level).
    assert!(
        !panicking_pages.is_empty(),
        "no verified open met a panic: nothing to run fq on"
    );
    for page in &panicking_pages {
        let mut bytes = pristine.clone();
        bytes[page * PAGE..(page + 1) * PAGE].fill(0);
        std::fs::write(&mutant_path, &bytes).unwrap();
        let (code, stderr) = fq_stats(&mutant_path, dir.path()).unwrap();
        assert_eq!(code, Some(1), "page {page}: {stderr}");
        assert!(
            stderr.contains("zeroed.redb") && !stderr.contains("panicked"),
            "page {page}: {stderr}"
        );
    }
}

/// A read-only open (`fq stats`, `list`, `show` on a store nobody serves) verified no pages:
/// redb verifies them only in an open that may write. So a flipped bit in a key of the tasks
/// table read as one task missing and another invented, or as `task` and `list` disagreeing
/// (the mutants test, read-only, seeds 1796522692698046223 and 1796524624917985016). Now the
/// read-only open verifies every page through a layer that keeps redb's writes in memory.
/// Here one bit of every copy of a task's id in the file is flipped in turn: each mutant is
/// refused naming the file, or reads the tasks as stored (a copy in a page no longer used);
/// without verification some read other tasks (the control).
#[test]
fn regression_a_read_only_open_showed_a_flipped_task_key_as_another_task() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flipped.redb");
    let ids = small_store(&path, 20);
    let pristine = std::fs::read(&path).unwrap();
    let victim = ids[7].as_u128();
    let copies: Vec<usize> = [victim.to_le_bytes(), victim.to_be_bytes()]
        .iter()
        .flat_map(|pattern| {
            pristine
                .windows(16)
                .enumerate()
                .filter(move |(_, window)| window == pattern)
                .map(|(at, _)| at)
        })
        .collect();
    assert!(!copies.is_empty(), "the task's id is nowhere in the file");
    let (mut refused, mut unverified_wrong) = (0, 0);
    for &at in &copies {
        let mut bytes = pristine.clone();
        bytes[at + 15] ^= 0x10;
        bytes[at] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        match read_only_look(&path, true) {
            Ok(read) => assert_eq!(read, ids, "copy at byte {at}: read other tasks"),
            Err(error) => {
                let text = error.to_string();
                assert!(
                    matches!(error, StoreError::Corrupt { .. }) && text.contains("flipped.redb"),
                    "copy at byte {at}: {text}"
                );
                refused += 1;
            }
        }
        unverified_wrong += usize::from(read_only_look(&path, false).is_ok_and(|read| read != ids));
    }
    println!(
        "flipped task keys: {} copies of the id in the file, {refused} refused by a verified \
         read-only open; without verification {unverified_wrong} read other tasks",
        copies.len()
    );
    assert!(
        unverified_wrong > 0,
        "no flipped copy read wrong unverified: the test guards nothing"
    );
    // fq stats refuses such a store too, naming it.
    let mut bytes = pristine.clone();
    let at = copies[0];
    bytes[at + 15] ^= 0x10;
    bytes[at] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    if read_only_look(&path, true).is_err() {
        let (code, stderr) = fq_stats(&path, dir.path()).unwrap();
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("flipped.redb"), "{stderr}");
    }
}

//! One panic hook for the whole suite. The areas that count panics (engine threads must never
//! panic on bad input, corrupt stores or failing disks) share the process with areas whose
//! handlers and listeners panic on purpose, so every panic is recorded with its thread, its
//! location and the scope its thread was tagged with, and each area counts the panics that are
//! not provably another area's.
#![allow(dead_code, unreachable_pub)]

use std::cell::Cell;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

/// A panic seen by the hook.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The name of the thread it happened on (`?` for an unnamed one).
    pub thread: String,
    /// The source file of its location (`tests/suite/<area>.rs` for a test's own code).
    pub file: String,
    /// The scope its thread was tagged with ([`set_scope`]), if any.
    pub scope: Option<(&'static str, usize)>,
    /// `[thread] message and location`.
    pub text: String,
}

impl Seen {
    /// On one of the engine's threads (`fq-*`) or a tokio runtime or blocking-pool thread.
    pub fn on_engine_thread(&self) -> bool {
        self.thread.starts_with("fq-") || self.thread.starts_with("tokio")
    }

    /// Provably another area's than the one whose source file is `own_file` (its `file!()`):
    /// on another area's test thread (libtest names them by the test's path, `<area>::…`), on a
    /// thread tagged with another area's scope, or at a line of another area's file. A panic in
    /// the shared helpers or outside the tests (fq, its dependencies) on an untagged engine
    /// thread belongs to every area.
    pub fn elsewhere(&self, own_file: &str) -> bool {
        let area = area_of(own_file);
        let other_test_thread = self
            .thread
            .split_once("::")
            .is_some_and(|(first, _)| first != area);
        let other_scope = self.scope.is_some_and(|(scope, _)| scope != area);
        let other_file = self.file.starts_with("tests/suite/")
            && !self.file.starts_with("tests/suite/common/")
            && self.file != own_file;
        other_test_thread || other_scope || other_file
    }
}

/// `tests/suite/power_loss.rs` → `power_loss`.
fn area_of(file: &str) -> &str {
    let name = file.rsplit('/').next().unwrap_or(file);
    name.strip_suffix(".rs").unwrap_or(name)
}

thread_local! {
    /// The scope this thread works for: its panics are recorded, not printed.
    static SCOPE: Cell<Option<(&'static str, usize)>> = const { Cell::new(None) };
}

fn seen() -> MutexGuard<'static, Vec<Seen>> {
    static SEEN: Mutex<Vec<Seen>> = Mutex::new(Vec::new());
    SEEN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Installs the hook (once for the process): every panic is recorded, and printed as before
/// unless its thread is tagged with a scope.
pub fn watch() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current().name().unwrap_or("?").to_owned();
            let scope = SCOPE.with(Cell::get);
            seen().push(Seen {
                file: info
                    .location()
                    .map(|l| l.file().to_owned())
                    .unwrap_or_default(),
                text: format!("[{thread}] {info}"),
                thread,
                scope,
            });
            if scope.is_none() {
                previous(info);
            }
        }));
    });
}

/// Tags this thread's panics with `scope` (an area's name and a number of its own), or
/// removes the tag.
pub fn set_scope(scope: Option<(&'static str, usize)>) {
    SCOPE.with(|s| s.set(scope));
}

/// This thread's tag ([`set_scope`]), to hand on to threads it starts.
pub fn scope() -> Option<(&'static str, usize)> {
    SCOPE.with(Cell::get)
}

/// Where the record stands now: [`since`] it returns what came after.
pub fn mark() -> usize {
    watch();
    seen().len()
}

/// Every panic recorded after `mark`.
pub fn since(mark: usize) -> Vec<Seen> {
    seen().get(mark..).map(<[Seen]>::to_vec).unwrap_or_default()
}

/// Every panic recorded between the two marks.
pub fn between(start: usize, end: usize) -> Vec<Seen> {
    seen()
        .get(start..end)
        .map(<[Seen]>::to_vec)
        .unwrap_or_default()
}

//! The store's consistency check: every task record decodes and is in exactly the index its
//! status calls for, every index entry points at such a task, and the counts table matches the
//! records, every unique-key entry names a task with that key in the state it records, and
//! every attempt history belongs to a task.
//! Reads one snapshot; writes nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use redb::ReadableTable;

use super::tables::{ATTEMPTS, COUNTS, FINISHED, LEASES, TASKS, UNIQUE, WAITING, read_lazy_table};
use super::{Store, StoreError, codec, keys};
use crate::task::ReadyOrder;
use crate::task::unique::holds_key;
use crate::task::{TaskId, TaskStatus};

/// What [`crate::Engine::check_integrity`] found. Not a stable API: for fq's own tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IntegrityReport {
    /// Task records read.
    pub tasks: u64,
    /// Entries of the waiting index.
    pub waiting: u64,
    /// Entries of the running set.
    pub leases: u64,
    /// Entries of the finished index.
    pub finished: u64,
    /// Every inconsistency found, one sentence each; empty for a sound store.
    pub problems: Vec<String>,
    /// The tasks whose record does not decode (each also one of `problems`). Index entries
    /// and unique keys naming them are not judged: what the record held is unknown.
    pub undecodable: Vec<TaskId>,
}

/// How a record that does not decode is named among the problems.
const UNDECODABLE: &str = ": record does not decode: ";

impl Store {
    /// Checks the whole store in one read transaction (see the module docs). A first pass
    /// keeps only digests of the index entries the records call for and of those found; only
    /// when they differ does a second pass keep every entry, to name each that differs.
    pub(crate) fn check_integrity(&self) -> Result<IntegrityReport, StoreError> {
        match self.check_with(Keep::Digests)? {
            Some(report) => Ok(report),
            None => self
                .check_with(Keep::Entries)
                .map(Option::unwrap_or_default),
        }
    }

    /// One pass of the check; `None` when digests were kept and the indexes differ from what
    /// the records call for.
    fn check_with(&self, keep: Keep) -> Result<Option<IntegrityReport>, StoreError> {
        let err = self.storage("checking the store");
        let txn = self.begin_read("checking the store")?;
        let tasks = txn.open_table(TASKS).map_err(|e| err(e.into()))?;
        let waiting = txn.open_table(WAITING).map_err(|e| err(e.into()))?;
        let leases = txn.open_table(LEASES).map_err(|e| err(e.into()))?;
        let finished = txn.open_table(FINISHED).map_err(|e| err(e.into()))?;
        let counts_table = txn.open_table(COUNTS).map_err(|e| err(e.into()))?;

        let mut report = IntegrityReport::default();
        let mut undecodable: HashSet<TaskId> = HashSet::new();
        let mut per_queue: HashMap<String, BTreeMap<TaskStatus, u64>> = HashMap::new();
        let mut expected_waiting: Expected<Vec<u8>, TaskId> = Expected::new(keep);
        let mut expected_leases: Expected<u128, u32> = Expected::new(keep);
        let mut expected_finished: Expected<[u8; keys::FINISHED_KEY_BYTES], ()> =
            Expected::new(keep);
        // Tasks with a unique key: (key, whether their status holds it).
        let mut keyed: BTreeMap<u128, (String, bool)> = BTreeMap::new();
        for item in tasks.iter().map_err(|e| err(e.into()))? {
            let (key, value) = item.map_err(|e| err(e.into()))?;
            report.tasks += 1;
            let id = TaskId::from_u128(key.value());
            let task = match codec::decode(value.value()) {
                Ok(task) => task,
                Err(e) => {
                    report.problems.push(format!("task {id}{UNDECODABLE}{e}"));
                    undecodable.insert(id);
                    continue;
                }
            };
            // Looked up before inserting: a clone of the queue's name per record costs a
            // large store's check more than its decoding.
            let of_queue = match per_queue.get_mut(task.queue.as_str()) {
                Some(of_queue) => of_queue,
                None => per_queue.entry(task.queue.clone()).or_default(),
            };
            *of_queue.entry(task.status).or_insert(0) += 1;
            if let Some(spec) = &task.unique {
                keyed.insert(id.as_u128(), (spec.key.clone(), holds_key(task.status)));
            }
            if task.attempts > task.max_retries.saturating_add(1) {
                report.problems.push(format!(
                    "task {id}: {} attempts, more than max_retries + 1 = {}",
                    task.attempts,
                    task.max_retries.saturating_add(1)
                ));
            }
            // A RUNNING or RETRYING record whose runs are reported from another store
            // (RabbitMQ) holds no waiting row and no lease.
            if task.waits_here() {
                let key = keys::waiting_key(
                    &task.queue,
                    ReadyOrder::new(task.priority, task.due_at, task.seq),
                );
                expected_waiting.insert(key, id);
            } else if task.leased_here() {
                expected_leases.insert(id.as_u128(), task.attempts);
            } else if task.status.is_terminal() {
                match task.finished_at {
                    Some(at) => {
                        expected_finished.insert(keys::finished_key(task.status, at, id), ());
                    }
                    None => report
                        .problems
                        .push(format!("task {id}: {} without a finish time", task.status)),
                }
            }
        }

        for item in waiting.iter().map_err(|e| err(e.into()))? {
            let (key, value) = item.map_err(|e| err(e.into()))?;
            report.waiting += 1;
            let id = TaskId::from_u128(value.value());
            if undecodable.contains(&id) && !expected_waiting.may_hold(key.value()) {
                continue;
            }
            match expected_waiting.found(key.value(), &id) {
                Found::Deferred => {}
                Found::Expected(expected) if expected == id => {}
                Found::Expected(expected) => report.problems.push(format!(
                    "waiting entry of task {expected} points at task {id}"
                )),
                Found::Unexpected => report.problems.push(format!(
                    "waiting entry for task {id} that is not waiting under that key"
                )),
            }
        }
        let Some(missing) = expected_waiting.missing() else {
            return Ok(None);
        };
        for (_, id) in missing {
            report.problems.push(format!(
                "task {id} is waiting but missing from the waiting index"
            ));
        }

        for item in leases.iter().map_err(|e| err(e.into()))? {
            let (key, value) = item.map_err(|e| err(e.into()))?;
            report.leases += 1;
            let id = TaskId::from_u128(key.value());
            if undecodable.contains(&id) && !expected_leases.may_hold(&key.value()) {
                continue;
            }
            match expected_leases.found(&key.value(), &value.value()) {
                Found::Deferred => {}
                Found::Expected(attempt) if attempt == value.value() => {}
                Found::Expected(attempt) => report.problems.push(format!(
                    "task {id}: lease for attempt {} but the record is at attempt {attempt}",
                    value.value()
                )),
                Found::Unexpected => report
                    .problems
                    .push(format!("lease for task {id}, which is not RUNNING")),
            }
        }
        let Some(missing) = expected_leases.missing() else {
            return Ok(None);
        };
        for (id, _) in missing {
            report.problems.push(format!(
                "task {} is RUNNING without a lease",
                TaskId::from_u128(id)
            ));
        }

        for item in finished.iter().map_err(|e| err(e.into()))? {
            let (key, _) = item.map_err(|e| err(e.into()))?;
            report.finished += 1;
            let of_undecodable = keys::parse_finished_key(key.value())
                .is_some_and(|(_, _, id)| undecodable.contains(&id));
            let found = match <[u8; keys::FINISHED_KEY_BYTES]>::try_from(key.value()) {
                Ok(_) if of_undecodable => continue,
                Ok(key) => expected_finished.found(&key, &()),
                Err(_) => Found::Unexpected,
            };
            if matches!(found, Found::Unexpected) {
                let what = keys::parse_finished_key(key.value()).map_or_else(
                    || "a malformed finished entry".to_owned(),
                    |(status, at, id)| format!("finished entry ({status} at {at}) for task {id}"),
                );
                report
                    .problems
                    .push(format!("{what} that no record matches"));
            }
        }
        let Some(missing) = expected_finished.missing() else {
            return Ok(None);
        };
        if !missing.is_empty() {
            report.problems.push(format!(
                "{} finished tasks missing from the finished index",
                missing.len()
            ));
        }

        // None: no run has ended since the store gained histories.
        if let Some(attempts) = read_lazy_table(&txn, ATTEMPTS).map_err(|e| err(e.into()))? {
            for item in attempts.iter().map_err(|e| err(e.into()))? {
                let (key, _) = item.map_err(|e| err(e.into()))?;
                if tasks.get(key.value()).map_err(|e| err(e.into()))?.is_none() {
                    report.problems.push(format!(
                        "attempt history of task {} whose record is gone",
                        TaskId::from_u128(key.value())
                    ));
                }
            }
        }

        // None: a store that never had a task with a key.
        if let Some(unique) = read_lazy_table(&txn, UNIQUE).map_err(|e| err(e.into()))? {
            for item in unique.iter().map_err(|e| err(e.into()))? {
                let (key, value) = item.map_err(|e| err(e.into()))?;
                let of_undecodable = keys::parse_unique_value(value.value())
                    .is_some_and(|holder| undecodable.contains(&holder.id));
                if !of_undecodable {
                    check_unique_entry(key.value(), value.value(), &mut keyed, &mut report);
                }
            }
        }
        for (id, (key, _)) in keyed.iter().filter(|(_, (_, holds))| *holds) {
            report.problems.push(format!(
                "task {} holds unique key {key:?} but no unfinished task is recorded as its holder",
                TaskId::from_u128(*id)
            ));
        }

        let counts: BTreeMap<(String, TaskStatus), u64> = per_queue
            .into_iter()
            .flat_map(|(queue, of_queue)| {
                of_queue
                    .into_iter()
                    .map(move |(status, n)| ((queue.clone(), status), n))
            })
            .collect();
        let mut stored_counts = BTreeMap::new();
        for item in counts_table.iter().map_err(|e| err(e.into()))? {
            let (key, value) = item.map_err(|e| err(e.into()))?;
            match keys::parse_count_key(key.value()) {
                Some((queue, status)) => {
                    stored_counts.insert((queue.to_owned(), status), value.value());
                }
                None => report.problems.push("a malformed counts key".to_owned()),
            }
        }
        // A record that does not decode was counted under a queue and status no longer known:
        // the counts may then exceed the records by as many, and no more.
        report.undecodable = undecodable.into_iter().collect();
        report.undecodable.sort();
        let undecodable = report.undecodable.len() as u64;
        let explained = if undecodable == 0 {
            stored_counts == counts
        } else {
            counts
                .iter()
                .all(|(key, n)| stored_counts.get(key).is_some_and(|stored| stored >= n))
                && stored_counts.values().sum::<u64>() == counts.values().sum::<u64>() + undecodable
        };
        if !explained {
            report.problems.push(format!(
                "counts table {stored_counts:?} differs from the records {counts:?}{}",
                if undecodable == 0 {
                    String::new()
                } else {
                    format!(" and {undecodable} records that do not decode")
                }
            ));
        }
        Ok(Some(report))
    }
}

/// What a pass of the check keeps of the index entries the records call for.
#[derive(Clone, Copy)]
enum Keep {
    /// An order-free digest of them and one of the entries found: a large store's check then
    /// holds no copy of its indexes, and a sound store needs no more.
    Digests,
    /// Every one, to name each entry that differs.
    Entries,
}

/// The entries of one index that the records call for, kept as [`Keep`] says.
enum Expected<K, V> {
    Entries(HashMap<K, V>),
    Digests { expected: Digest, found: Digest },
}

/// What became of an entry found in an index.
enum Found<V> {
    /// The records call for it; this is the value they call for.
    Expected(V),
    /// The records call for no entry under its key.
    Unexpected,
    /// Only digests are kept: judged with the whole index, by [`Expected::missing`].
    Deferred,
}

impl<K: Hash + Eq, V: Hash> Expected<K, V> {
    fn new(keep: Keep) -> Self {
        match keep {
            Keep::Entries => Self::Entries(HashMap::new()),
            Keep::Digests => Self::Digests {
                expected: Digest::default(),
                found: Digest::default(),
            },
        }
    }

    fn insert(&mut self, key: K, value: V) {
        match self {
            Self::Entries(entries) => {
                entries.insert(key, value);
            }
            Self::Digests { expected, .. } => expected.add(&key, &value),
        }
    }

    /// Whether an entry under `key` may be called for (always false for digests, whose
    /// verdict waits for the whole index).
    fn may_hold<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
    {
        match self {
            Self::Entries(entries) => entries.contains_key(key),
            Self::Digests { .. } => false,
        }
    }

    fn found<Q: Hash + Eq + ?Sized>(&mut self, key: &Q, value: &V) -> Found<V>
    where
        K: std::borrow::Borrow<Q>,
    {
        match self {
            Self::Entries(entries) => entries
                .remove(key)
                .map_or(Found::Unexpected, Found::Expected),
            Self::Digests { found, .. } => {
                found.add(key, value);
                Found::Deferred
            }
        }
    }

    /// The entries called for and not found; `None` when digests were kept and the index
    /// differs from what the records call for.
    fn missing(self) -> Option<Vec<(K, V)>> {
        match self {
            Self::Entries(entries) => Some(entries.into_iter().collect()),
            Self::Digests { expected, found } => (expected == found).then(Vec::new),
        }
    }
}

/// An order-free digest of a multiset of entries: their number and the wrapping sum of a
/// 64-bit hash of each. Two sets that differ give the same digest by chance only (about one
/// in 2^64 for a given difference); a difference found sends the check to a pass that names it.
#[derive(Default, PartialEq, Eq)]
struct Digest {
    entries: u64,
    sum: u64,
}

impl Digest {
    fn add<K: Hash + ?Sized, V: Hash>(&mut self, key: &K, value: &V) {
        // SipHash under fixed keys: the same entry hashes alike in both digests.
        let mut hasher = std::hash::DefaultHasher::new();
        key.hash(&mut hasher);
        value.hash(&mut hasher);
        self.entries += 1;
        self.sum = self.sum.wrapping_add(hasher.finish());
    }
}

/// Checks one UNIQUE entry against the keyed tasks; a holding task whose key has an
/// unfinished holder (itself, or another task an operator's retry could not take it from) is
/// removed from `keyed`, so what stays there holding is a task whose key lost its entry.
fn check_unique_entry(
    key: &[u8],
    value: &[u8],
    keyed: &mut BTreeMap<u128, (String, bool)>,
    report: &mut IntegrityReport,
) {
    let name = String::from_utf8_lossy(key);
    let Some(holder) = keys::parse_unique_value(value) else {
        report
            .problems
            .push(format!("unique key {name:?}: malformed entry"));
        return;
    };
    match keyed.get(&holder.id.as_u128()) {
        Some((own, holds)) if own.as_bytes() == key => {
            if *holds != holder.finished_until.is_none() {
                report.problems.push(format!(
                    "unique key {name:?}: entry says its task {} is {}finished, the record disagrees",
                    holder.id,
                    if holder.finished_until.is_none() { "not " } else { "" }
                ));
            }
        }
        _ => report.problems.push(format!(
            "unique key {name:?} names task {}, which has no such key",
            holder.id
        )),
    }
    if holder.finished_until.is_none() {
        keyed.retain(|_, (own, holds)| !(*holds && own.as_bytes() == key));
    }
}

#[cfg(test)]
mod tests;

//! The store's consistency check: every task record decodes and is in exactly the index its
//! status calls for, every index entry points at such a task, and the counts table matches the
//! records, every unique-key entry names a task with that key in the state it records, and
//! every attempt history belongs to a task.
//! Reads one snapshot; writes nothing.

use std::collections::{BTreeMap, HashSet};

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
}

impl Store {
    /// Checks the whole store in one read transaction (see the module docs).
    pub(crate) fn check_integrity(&self) -> Result<IntegrityReport, StoreError> {
        let err = self.storage("checking the store");
        let txn = self.begin_read("checking the store")?;
        let tasks = txn.open_table(TASKS).map_err(|e| err(e.into()))?;
        let waiting = txn.open_table(WAITING).map_err(|e| err(e.into()))?;
        let leases = txn.open_table(LEASES).map_err(|e| err(e.into()))?;
        let finished = txn.open_table(FINISHED).map_err(|e| err(e.into()))?;
        let counts_table = txn.open_table(COUNTS).map_err(|e| err(e.into()))?;

        let mut report = IntegrityReport::default();
        let mut counts: BTreeMap<(String, TaskStatus), u64> = BTreeMap::new();
        let mut expected_waiting: BTreeMap<Vec<u8>, TaskId> = BTreeMap::new();
        let mut expected_leases: BTreeMap<u128, u32> = BTreeMap::new();
        let mut expected_finished: HashSet<Vec<u8>> = HashSet::new();
        // Tasks with a unique key: (key, whether their status holds it).
        let mut keyed: BTreeMap<u128, (String, bool)> = BTreeMap::new();
        for item in tasks.iter().map_err(|e| err(e.into()))? {
            let (key, value) = item.map_err(|e| err(e.into()))?;
            report.tasks += 1;
            let id = TaskId::from_u128(key.value());
            let task = match codec::decode(value.value()) {
                Ok(task) => task,
                Err(e) => {
                    report
                        .problems
                        .push(format!("task {id}: record does not decode: {e}"));
                    continue;
                }
            };
            *counts.entry((task.queue.clone(), task.status)).or_insert(0) += 1;
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
                        expected_finished.insert(keys::finished_key(task.status, at, id).to_vec());
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
            match expected_waiting.remove(key.value()) {
                Some(expected) if expected == id => {}
                Some(expected) => report.problems.push(format!(
                    "waiting entry of task {expected} points at task {id}"
                )),
                None => report.problems.push(format!(
                    "waiting entry for task {id} that is not waiting under that key"
                )),
            }
        }
        for id in expected_waiting.values() {
            report.problems.push(format!(
                "task {id} is waiting but missing from the waiting index"
            ));
        }

        for item in leases.iter().map_err(|e| err(e.into()))? {
            let (key, value) = item.map_err(|e| err(e.into()))?;
            report.leases += 1;
            let id = TaskId::from_u128(key.value());
            match expected_leases.remove(&key.value()) {
                Some(attempt) if attempt == value.value() => {}
                Some(attempt) => report.problems.push(format!(
                    "task {id}: lease for attempt {} but the record is at attempt {attempt}",
                    value.value()
                )),
                None => report
                    .problems
                    .push(format!("lease for task {id}, which is not RUNNING")),
            }
        }
        for id in expected_leases.keys() {
            report.problems.push(format!(
                "task {} is RUNNING without a lease",
                TaskId::from_u128(*id)
            ));
        }

        for item in finished.iter().map_err(|e| err(e.into()))? {
            let (key, _) = item.map_err(|e| err(e.into()))?;
            report.finished += 1;
            if !expected_finished.remove(key.value()) {
                let what = keys::parse_finished_key(key.value()).map_or_else(
                    || "a malformed finished entry".to_owned(),
                    |(status, at, id)| format!("finished entry ({status} at {at}) for task {id}"),
                );
                report
                    .problems
                    .push(format!("{what} that no record matches"));
            }
        }
        if !expected_finished.is_empty() {
            report.problems.push(format!(
                "{} finished tasks missing from the finished index",
                expected_finished.len()
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
                check_unique_entry(key.value(), value.value(), &mut keyed, &mut report);
            }
        }
        for (id, (key, _)) in keyed.iter().filter(|(_, (_, holds))| *holds) {
            report.problems.push(format!(
                "task {} holds unique key {key:?} but no unfinished task is recorded as its holder",
                TaskId::from_u128(*id)
            ));
        }

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
        if stored_counts != counts {
            report.problems.push(format!(
                "counts table {stored_counts:?} differs from the records {counts:?}"
            ));
        }
        Ok(report)
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
mod tests {
    use super::*;
    use crate::store::StoreOptions;
    use crate::store::codec::sample_task;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("fq.redb"), &StoreOptions::default()).unwrap();
        (dir, store)
    }

    #[test]
    fn a_sound_store_has_no_problems_and_each_broken_index_is_named() {
        let (_dir, store) = store();
        let task = sample_task();
        let order = ReadyOrder::new(task.priority, task.due_at, task.seq);
        let (sound, unindexed, running) = (TaskId::new(), TaskId::new(), TaskId::new());
        store
            .write(|t| {
                t.put_task(sound, &task, None)?;
                t.insert_waiting(&task.queue, order, sound)
            })
            .unwrap();
        let report = store.check_integrity().unwrap();
        assert_eq!((report.tasks, report.waiting), (1, 1));
        assert!(report.problems.is_empty(), "{:?}", report.problems);

        // A waiting task missing from the waiting index; a RUNNING task without a lease and a
        // lease of another attempt; counts that the records do not match.
        let mut waiting = task.clone();
        waiting.seq = 78;
        let mut run = task.clone();
        run.status = TaskStatus::Running;
        store
            .write(|t| {
                t.put_task(unindexed, &waiting, None)?;
                t.put_task(running, &run, Some(TaskStatus::Retrying))?;
                t.insert_lease(sound, 9)
            })
            .unwrap();
        let problems = store.check_integrity().unwrap().problems;
        let text = problems.join("\n");
        assert!(
            text.contains(&format!("task {unindexed} is waiting but missing")),
            "{text}"
        );
        assert!(
            text.contains(&format!("task {running} is RUNNING without a lease")),
            "{text}"
        );
        assert!(
            text.contains(&format!("lease for task {sound}, which is not RUNNING")),
            "{text}"
        );
        assert!(text.contains("counts table"), "{text}");
    }
}

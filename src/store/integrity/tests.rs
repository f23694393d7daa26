//! Unit tests of the store's consistency check.

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

/// A record that does not decode is one problem, not one per index entry naming it: its
/// waiting entry and its count are not judged, and every other problem still is.
#[test]
fn a_record_that_does_not_decode_is_one_problem_and_its_entries_are_not_judged() {
    let (_dir, store) = store();
    let task = sample_task();
    let order = ReadyOrder::new(task.priority, task.due_at, task.seq);
    let (damaged, sound) = (TaskId::new(), TaskId::new());
    let mut other = task.clone();
    other.seq = 2;
    store
        .write(|t| {
            t.put_task(damaged, &task, None)?;
            t.insert_waiting(&task.queue, order, damaged)?;
            t.put_task(sound, &other, None)?;
            t.insert_waiting(
                &other.queue,
                ReadyOrder::new(other.priority, other.due_at, other.seq),
                sound,
            )
        })
        .unwrap();
    let mut bytes = codec::encode(&task);
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    store
        .write(|t| {
            t.tasks
                .insert(damaged.as_u128(), bytes.as_slice())
                .map_err(|e| crate::store::map_storage_error(t.path, "test", e.into()))
        })
        .unwrap();
    let report = store.check_integrity().unwrap();
    assert_eq!(report.undecodable, vec![damaged]);
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0].contains(UNDECODABLE),
        "{:?}",
        report.problems
    );

    // Damage beside it is still named: the sound task's waiting entry removed.
    store
        .write(|t| {
            t.remove_waiting(
                &other.queue,
                ReadyOrder::new(other.priority, other.due_at, other.seq),
            )
        })
        .unwrap();
    let problems = store.check_integrity().unwrap().problems.join("\n");
    assert!(
        problems.contains(&format!("task {sound} is waiting but missing")),
        "{problems}"
    );
}

/// The digest pass passes a sound store by itself and hands every kind of index damage,
/// each with the entry counts unchanged, to the pass that names it.
#[test]
fn the_digest_pass_sends_each_changed_index_to_the_naming_pass() {
    let (_dir, store) = store();
    let task = sample_task();
    let order = ReadyOrder::new(task.priority, task.due_at, task.seq);
    let mut done = task.clone();
    done.status = TaskStatus::Completed;
    done.finished_at = Some(500);
    let mut run = task.clone();
    run.status = TaskStatus::Running;
    run.attempts = 1;
    let (waiting, finished, running) = (TaskId::new(), TaskId::new(), TaskId::new());
    store
        .write(|t| {
            t.put_task(waiting, &task, None)?;
            t.insert_waiting(&task.queue, order, waiting)?;
            t.put_task(finished, &done, None)?;
            t.insert_finished(TaskStatus::Completed, 500, finished)?;
            t.put_task(running, &run, None)?;
            t.insert_lease(running, 1)
        })
        .unwrap();
    let sound = store.check_with(Keep::Digests).unwrap();
    assert!(sound.is_some_and(|report| report.problems.is_empty()));

    type Change =
        fn(&mut crate::store::write_tables::WriteTables<'_>, TaskId) -> Result<(), StoreError>;
    // Each damage leaves the entry counts as they were; each undo restores the store.
    let damages: [(&str, TaskId, Change, Change); 3] = [
        (
            "waiting entry",
            waiting,
            |t, id| {
                let task = sample_task();
                let order = ReadyOrder::new(task.priority, task.due_at, task.seq);
                t.insert_waiting(&task.queue, order, TaskId::from_u128(id.as_u128() ^ 1))
            },
            |t, id| {
                let task = sample_task();
                let order = ReadyOrder::new(task.priority, task.due_at, task.seq);
                t.insert_waiting(&task.queue, order, id)
            },
        ),
        (
            "finished entry",
            finished,
            |t, id| {
                t.remove_finished(TaskStatus::Completed, 500, id)?;
                t.insert_finished(TaskStatus::Completed, 501, id)
            },
            |t, id| {
                t.remove_finished(TaskStatus::Completed, 501, id)?;
                t.insert_finished(TaskStatus::Completed, 500, id)
            },
        ),
        (
            "lease",
            running,
            |t, id| t.insert_lease(id, 2),
            |t, id| t.insert_lease(id, 1),
        ),
    ];
    for (what, id, damage, undo) in damages {
        store.write(|t| damage(t, id)).unwrap();
        assert!(
            store.check_with(Keep::Digests).unwrap().is_none(),
            "a changed {what} passed the digests"
        );
        let named = store.check_integrity().unwrap().problems.join("\n");
        assert!(named.contains(&id.to_string()), "{what}: {named}");
        store.write(|t| undo(t, id)).unwrap();
        let restored = store.check_with(Keep::Digests).unwrap();
        assert!(
            restored.is_some_and(|report| report.problems.is_empty()),
            "{what}"
        );
    }
}

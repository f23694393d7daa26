use super::*;
use crate::store::StoreOptions;
use crate::store::codec::sample_task;
use crate::store::flaky_disk::SharedFlakyDisk;
use crate::store::tests::queue_sample;
use crate::task::{TaskId, TaskStatus};

fn wal_options() -> StoreOptions {
    StoreOptions {
        write_ahead_log: true,
        ..StoreOptions::default()
    }
}

fn no_wal_options() -> StoreOptions {
    StoreOptions {
        write_ahead_log: false,
        ..StoreOptions::default()
    }
}

/// Without the log, and going on when a crashed store's log is missing (`fq forget-log`).
fn forgetting_options() -> StoreOptions {
    StoreOptions {
        forget_missing_log: true,
        ..no_wal_options()
    }
}

/// What a crash at this moment leaves: the store's and the log's files as the operating
/// system holds them (redb keeps the pages of commits made without a sync in its own memory,
/// so they are not in the copy), copied while the store is still open.
fn crash_image(path: &Path, into: &Path) -> PathBuf {
    std::fs::create_dir_all(into).unwrap();
    let copy = into.join("fq.redb");
    std::fs::copy(path, &copy).unwrap();
    if wal_path(path).exists() {
        std::fs::copy(wal_path(path), wal_path(&copy)).unwrap();
    }
    copy
}

fn assert_sound(store: &Store) {
    let report = store.check_integrity().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn acknowledged_commits_survive_a_crash_through_the_log_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    let store = Store::open(&path, &wal_options()).unwrap();
    assert!(wal_path(&path).exists(), "the log was not created");
    let ids: Vec<TaskId> = (0..20).map(|_| queue_sample(&store)).collect();

    let copy = crash_image(&path, &dir.path().join("crash"));
    // Control: without the log, the B-tree alone has not got them (it was never synced since
    // the store was created), so what the open below finds came from the log.
    let bare = dir.path().join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::copy(&copy, bare.join("fq.redb")).unwrap();
    let without_log = Store::open(&bare.join("fq.redb"), &forgetting_options()).unwrap();
    assert_eq!(without_log.read_task(ids[0]).unwrap(), None);

    let reopened = Store::open(&copy, &wal_options()).unwrap();
    for id in &ids {
        assert!(reopened.read_task(*id).unwrap().is_some(), "task {id} lost");
    }
    let counts = reopened.counts().unwrap();
    assert_eq!(counts, store.counts().unwrap());
    assert_eq!(counts.values().sum::<u64>(), 20);
    assert_sound(&reopened);
}

#[test]
fn records_applied_at_open_stay_in_the_log_until_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    let store = Store::open(&path, &wal_options()).unwrap();
    let ids: Vec<TaskId> = (0..10).map(|_| queue_sample(&store)).collect();
    let first = crash_image(&path, &dir.path().join("first"));

    // The open applies the records without syncing the B-tree, so a second crash before any
    // checkpoint must find them in the log again, and the commits made since after them.
    let reopened = Store::open(&first, &wal_options()).unwrap();
    let end = reopened.wal.lock().unwrap().as_ref().unwrap().log.end();
    assert!(
        end > crate::store::log::HEADER_BYTES,
        "the log was rewound at open"
    );
    let later = queue_sample(&reopened);
    let second = crash_image(&first, &dir.path().join("second"));
    let again = Store::open(&second, &wal_options()).unwrap();
    for id in ids.iter().chain([&later]) {
        assert!(again.read_task(*id).unwrap().is_some(), "task {id} lost");
    }
    assert_sound(&again);
}

#[test]
fn an_idle_checkpoint_waits_for_an_eighth_of_the_checkpoint_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    let options = StoreOptions {
        wal_checkpoint_bytes: 64 * 1024,
        ..wal_options()
    };
    let store = Store::open(&path, &options).unwrap();
    queue_sample(&store);
    assert!(!store.checkpoint_when(true).unwrap(), "one small record");
    let log_end = || store.wal.lock().unwrap().as_ref().unwrap().log.end();
    while log_end() - crate::store::log::HEADER_BYTES < 8 * 1024 {
        queue_sample(&store);
    }
    let ids: Vec<TaskId> = (0..3).map(|_| queue_sample(&store)).collect();
    assert!(store.checkpoint_when(true).unwrap());
    assert_eq!(log_end(), crate::store::log::HEADER_BYTES, "not rewound");
    // What the log held is now in the B-tree alone.
    let copy = crash_image(&path, &dir.path().join("crash"));
    std::fs::remove_file(wal_path(&copy)).unwrap();
    let reopened = Store::open(&copy, &forgetting_options()).unwrap();
    for id in &ids {
        assert!(reopened.read_task(*id).unwrap().is_some(), "task {id} lost");
    }
}

#[test]
fn commits_after_a_checkpoint_survive_and_the_log_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    let store = Store::open(&path, &wal_options()).unwrap();
    let before: Vec<TaskId> = (0..5).map(|_| queue_sample(&store)).collect();
    {
        let mut slot = store.wal.lock().unwrap();
        let wal = slot.as_mut().unwrap();
        let end_before = wal.log.end();
        store.checkpoint(wal).unwrap();
        assert!(wal.log.end() < end_before, "the log was not rewound");
    }
    let after: Vec<TaskId> = (0..5).map(|_| queue_sample(&store)).collect();
    let copy = crash_image(&path, &dir.path().join("crash"));
    let reopened = Store::open(&copy, &wal_options()).unwrap();
    for id in before.iter().chain(&after) {
        assert!(reopened.read_task(*id).unwrap().is_some(), "task {id} lost");
    }
    assert_sound(&reopened);
}

#[test]
fn a_commit_without_durability_reaches_the_log_with_the_next_durable_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    let store = Store::open(&path, &wal_options()).unwrap();
    let durable = queue_sample(&store);
    let lazy = TaskId::new();
    store
        .write_with(false, |t| t.put_task(lazy, &sample_task(), None))
        .unwrap();
    // A crash now may lose the lazy commit, but leaves a sound store.
    let early = crash_image(&path, &dir.path().join("early"));
    let reopened = Store::open(&early, &wal_options()).unwrap();
    assert!(reopened.read_task(durable).unwrap().is_some());
    assert_eq!(reopened.read_task(lazy).unwrap(), None);
    assert_sound(&reopened);
    drop(reopened);

    let next = queue_sample(&store);
    let late = crash_image(&path, &dir.path().join("late"));
    let reopened = Store::open(&late, &wal_options()).unwrap();
    for id in [durable, lazy, next] {
        assert!(reopened.read_task(id).unwrap().is_some(), "task {id} lost");
    }
    assert_sound(&reopened);
}

#[test]
fn a_clean_close_leaves_nothing_to_apply_and_the_log_can_be_switched_off() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    let store = Store::open(&path, &wal_options()).unwrap();
    let id = queue_sample(&store);
    let copy = crash_image(&path, &dir.path().join("crash"));
    drop(store);
    assert!(!wal_path(&path).exists(), "a clean close left the log");

    let store = Store::open_read_only(&path, &wal_options()).unwrap();
    assert!(!store.wal_has_unapplied_records().unwrap());
    drop(store);

    // A crash image opened by a build configured without the log: its records are applied
    // all the same, then the log is removed.
    let reopened = Store::open(&copy, &no_wal_options()).unwrap();
    assert!(reopened.read_task(id).unwrap().is_some());
    assert!(!wal_path(&copy).exists(), "the unused log was kept");
    assert_sound(&reopened);
}

#[test]
fn a_crashed_store_whose_log_went_missing_is_refused_naming_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    let store = Store::open(&path, &wal_options()).unwrap();
    let ids: Vec<TaskId> = (0..5).map(|_| queue_sample(&store)).collect();
    let copy = crash_image(&path, &dir.path().join("crash"));
    std::fs::remove_file(wal_path(&copy)).unwrap();

    let refused = |result: Result<Store, StoreError>| {
        let Err(err) = result else {
            panic!("a store whose log is missing was opened");
        };
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        let text = err.to_string();
        for words in ["fq.redb-wal", "missing", "fq forget-log"] {
            assert!(text.contains(words), "{words:?} not in: {text}");
        }
    };
    refused(Store::open(&copy, &wal_options()));
    refused(Store::open(&copy, &no_wal_options()));
    refused(Store::open_read_only(&copy, &wal_options()));
    // Refusing changed nothing: put back, the log brings every acknowledged task.
    let kept = crash_image(&path, &dir.path().join("kept"));
    let with_log = Store::open(&kept, &wal_options()).unwrap();
    for id in &ids {
        assert!(with_log.read_task(*id).unwrap().is_some(), "task {id} lost");
    }

    // Forgetting the log opens the store as its B-tree holds it: the tasks only the log had
    // are gone (the store was never checkpointed), and the store keeps a log of its own again.
    let forgotten = Store::open(
        &copy,
        &StoreOptions {
            forget_missing_log: true,
            ..wal_options()
        },
    )
    .unwrap();
    assert!(forgotten.forgot_missing_log());
    assert_eq!(forgotten.read_task(ids[0]).unwrap(), None);
    assert_sound(&forgotten);
    let new_id = queue_sample(&forgotten);
    let again = crash_image(&copy, &dir.path().join("again"));
    drop(forgotten);
    std::fs::remove_file(wal_path(&again)).unwrap();
    refused(Store::open(&again, &wal_options()));
    // Control: the clean close above cleared the mark, so the store opens without a log.
    assert!(!wal_path(&copy).exists(), "a clean close left the log");
    let reopened = Store::open(&copy, &no_wal_options()).unwrap();
    assert!(!reopened.forgot_missing_log());
    assert!(reopened.read_task(new_id).unwrap().is_some());
}

#[test]
fn a_store_that_stopped_using_its_log_opens_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    let store = Store::open(&path, &wal_options()).unwrap();
    let id = queue_sample(&store);
    let copy = crash_image(&path, &dir.path().join("crash"));
    // Opened without the log: its records are applied, the mark cleared, the log removed.
    drop(Store::open(&copy, &no_wal_options()).unwrap());
    assert!(!wal_path(&copy).exists(), "the unused log was kept");
    for options in [no_wal_options(), wal_options()] {
        let reopened = Store::open(&copy, &options).unwrap();
        assert!(reopened.read_task(id).unwrap().is_some());
    }
}

#[test]
fn a_read_only_open_of_a_crashed_store_sees_what_the_log_holds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    let store = Store::open(&path, &wal_options()).unwrap();
    let id = queue_sample(&store);
    let copy = crash_image(&path, &dir.path().join("crash"));
    let looked = Store::open_read_only(&copy, &wal_options()).unwrap();
    assert!(looked.read_task(id).unwrap().is_some());
}

#[test]
fn damage_before_the_last_record_is_refused_naming_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    let store = Store::open(&path, &wal_options()).unwrap();
    for _ in 0..3 {
        queue_sample(&store);
    }
    let copy = crash_image(&path, &dir.path().join("crash"));
    let log = wal_path(&copy);
    let mut bytes = std::fs::read(&log).unwrap();
    // The first record's payload: damage there, with two intact records after it.
    let at = crate::store::log::HEADER_BYTES as usize + 20;
    bytes[at] ^= 0xff;
    std::fs::write(&log, &bytes).unwrap();
    let err = Store::open(&copy, &wal_options()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("fq.redb-wal"), "{err}");
    // Control: the undamaged log opens.
    bytes[at] ^= 0xff;
    std::fs::write(&log, &bytes).unwrap();
    assert!(Store::open(&copy, &wal_options()).is_ok());
}

#[test]
fn a_torn_last_record_was_never_acknowledged_and_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    let store = Store::open(&path, &wal_options()).unwrap();
    let first = queue_sample(&store);
    let end_first = store.wal.lock().unwrap().as_ref().unwrap().log.end();
    let second = queue_sample(&store);
    let copy = crash_image(&path, &dir.path().join("crash"));
    let log = wal_path(&copy);
    let bytes = std::fs::read(&log).unwrap();
    std::fs::write(&log, &bytes[..end_first as usize + 30]).unwrap();
    let reopened = Store::open(&copy, &wal_options()).unwrap();
    assert!(reopened.read_task(first).unwrap().is_some());
    assert_eq!(reopened.read_task(second).unwrap(), None);
    assert_sound(&reopened);
}

#[test]
fn a_failed_commit_leaves_no_record_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    let store = Store::open(&path, &wal_options()).unwrap();
    queue_sample(&store);
    let end = store.wal.lock().unwrap().as_ref().unwrap().log.end();
    store
        .fail_commits
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let id = TaskId::new();
    assert!(
        store
            .write(|t| t.put_task(id, &sample_task(), None))
            .is_err()
    );
    assert_eq!(store.wal.lock().unwrap().as_ref().unwrap().log.end(), end);
    let copy = crash_image(&path, &dir.path().join("crash"));
    let reopened = Store::open(&copy, &wal_options()).unwrap();
    assert_eq!(reopened.read_task(id).unwrap(), None);
}

#[test]
fn every_table_write_is_replayed() {
    // Unique keys, pauses, schedules, attempts, leases and the finished index all change
    // through logged tables: a crash image shows the same rows as the live store.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    let store = Store::open(&path, &wal_options()).unwrap();
    let id = TaskId::new();
    let mut task = sample_task();
    store
        .write(|t| {
            t.put_task(id, &task, None)?;
            t.insert_lease(id, 1)?;
            t.set_paused("emails", true)?;
            Ok(())
        })
        .unwrap();
    task.status = TaskStatus::Completed;
    store
        .write(|t| {
            t.remove_lease(id)?;
            t.put_task(id, &task, Some(TaskStatus::Pending))?;
            t.insert_finished(TaskStatus::Completed, 7, id)
        })
        .unwrap();
    let copy = crash_image(&path, &dir.path().join("crash"));
    let reopened = Store::open(&copy, &wal_options()).unwrap();
    assert_eq!(
        reopened.read_task(id).unwrap(),
        store.read_task(id).unwrap()
    );
    assert_eq!(reopened.paused_queues().unwrap(), vec!["emails".to_owned()]);
    assert!(reopened.running().unwrap().is_empty());
    assert_eq!(reopened.counts().unwrap(), store.counts().unwrap());
}

#[test]
fn leases_released_together_are_removed_at_the_end_and_a_lease_taken_again_stays() {
    // Releases wait for the transaction's end (`flush_lease_removals`), in one pass over a
    // small table and one at a time over a large one: a task released and claimed again in
    // one transaction keeps its new lease, one claimed and released in it has none, the others
    // go, and the crash image's replay of the log agrees with the live store.
    for others in [0, 1100] {
        releases_then_a_claim_again(others);
    }
}

/// Six leases among `others` more; four of the six and the last released, one of them
/// claimed again, and a seventh task claimed and released, in one transaction.
fn releases_then_a_claim_again(others: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    let store = Store::open(&path, &wal_options()).unwrap();
    let mut all: Vec<TaskId> = (0..6 + others).map(|_| TaskId::new()).collect();
    all.sort_unstable();
    let ids: Vec<TaskId> = all[others / 2..others / 2 + 6].to_vec();
    store
        .write(|t| all.iter().try_for_each(|id| t.insert_lease(*id, 1)))
        .unwrap();
    let claimed_and_released = TaskId::new();
    store
        .write(|t| {
            for id in &ids[..4] {
                t.remove_lease(*id)?;
            }
            t.insert_lease(ids[1], 2)?;
            t.insert_lease(claimed_and_released, 1)?;
            t.remove_lease(ids[5])?;
            t.remove_lease(claimed_and_released)
        })
        .unwrap();
    let released = [ids[0], ids[2], ids[3], ids[5]];
    let expected: Vec<(TaskId, u32)> = all
        .iter()
        .filter(|id| !released.contains(id))
        .map(|id| (*id, if *id == ids[1] { 2 } else { 1 }))
        .collect();
    assert_eq!(store.running().unwrap().len(), others + 2);
    assert_eq!(store.running().unwrap(), expected);
    let copy = crash_image(&path, &dir.path().join("crash"));
    let reopened = Store::open(&copy, &wal_options()).unwrap();
    assert_eq!(reopened.running().unwrap(), expected);
}

#[test]
fn a_log_left_beside_a_replaced_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    let store = Store::open(&path, &wal_options()).unwrap();
    queue_sample(&store);
    let copy = crash_image(&path, &dir.path().join("crash"));
    // Another store at another path, given the first one's log.
    let other_dir = dir.path().join("other");
    let other = Store::open(&other_dir.join("fq.redb"), &no_wal_options()).unwrap();
    drop(other);
    std::fs::copy(wal_path(&copy), wal_path(&other_dir.join("fq.redb"))).unwrap();
    for options in [wal_options(), no_wal_options()] {
        let err = Store::open(&other_dir.join("fq.redb"), &options).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("not the store's own"), "{err}");
        assert!(err.to_string().contains("fq.redb-wal"), "{err}");
    }
    // Control: the same log beside its own store opens.
    assert!(Store::open(&copy, &wal_options()).is_ok());
}

#[test]
fn a_large_transaction_syncs_the_b_tree_itself_and_later_ones_are_logged_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    let options = StoreOptions {
        wal_checkpoint_bytes: 16 * 1024,
        ..wal_options()
    };
    let store = Store::open(&path, &options).unwrap();
    let first = queue_sample(&store);
    let before = store.wal.lock().unwrap().as_ref().unwrap().log.end();
    assert!(
        before > crate::store::log::HEADER_BYTES,
        "a small commit was not logged"
    );
    let many: Vec<TaskId> = (0..40).map(|_| TaskId::new()).collect();
    store
        .write(|t| {
            for id in &many {
                t.put_task(*id, &sample_task(), None)?;
            }
            Ok(())
        })
        .unwrap();
    let after = store.wal.lock().unwrap().as_ref().unwrap().log.end();
    assert_eq!(
        after,
        crate::store::log::HEADER_BYTES,
        "the large commit went through the log"
    );
    // The B-tree alone holds the large commit and what came before it.
    let bare = dir.path().join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::copy(&path, bare.join("fq.redb")).unwrap();
    let without_log = Store::open(&bare.join("fq.redb"), &forgetting_options()).unwrap();
    for id in many.iter().chain([&first]) {
        assert!(
            without_log.read_task(*id).unwrap().is_some(),
            "task {id} not synced"
        );
    }
    drop(without_log);
    let last = queue_sample(&store);
    let copy = crash_image(&path, &dir.path().join("crash"));
    let reopened = Store::open(&copy, &options).unwrap();
    for id in many.iter().chain([&first, &last]) {
        assert!(reopened.read_task(*id).unwrap().is_some(), "task {id} lost");
    }
    assert_sound(&reopened);
}

#[test]
fn a_transaction_at_the_direct_threshold_never_takes_a_number_it_does_not_log() {
    // Regression (found by the full power-loss run, 2026-12-05): the applied mark's own bytes
    // tipped a transaction just under the threshold over it, so it skipped the log with its
    // record number written in the B-tree, and the next logged commit, given the same number,
    // was skipped at replay. Every threshold around one enqueue's size is tried.
    let probe_dir = tempfile::tempdir().unwrap();
    let probe = Store::open(&probe_dir.path().join("fq.redb"), &wal_options()).unwrap();
    let start = probe.wal.lock().unwrap().as_ref().unwrap().log.end();
    queue_sample(&probe);
    let one = probe.wal.lock().unwrap().as_ref().unwrap().log.end() - start;
    for threshold in one.saturating_sub(64)..one + 16 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fq.redb");
        let options = StoreOptions {
            wal_checkpoint_bytes: threshold * 8,
            ..wal_options()
        };
        let store = Store::open(&path, &options).unwrap();
        let first = queue_sample(&store);
        // A small commit after it, logged whatever the threshold.
        store.write(|t| t.set_paused("emails", true)).unwrap();
        let copy = crash_image(&path, &dir.path().join("crash"));
        let reopened = Store::open(&copy, &options).unwrap();
        assert!(
            reopened.read_task(first).unwrap().is_some(),
            "threshold {threshold}: task {first} lost"
        );
        assert_eq!(
            reopened.paused_queues().unwrap(),
            vec!["emails".to_owned()],
            "threshold {threshold}: the pause after it was lost"
        );
    }
}

fn flaky_store() -> (SharedFlakyDisk, Store) {
    let log = SharedFlakyDisk::default();
    let options = StoreOptions {
        backend: Some(crate::store::CustomBackend::in_memory()),
        log_backend: Some(log.clone().into()),
        ..wal_options()
    };
    let store = Store::open(Path::new("/flaky/fq.redb"), &options).unwrap();
    (log, store)
}

#[test]
fn a_record_whose_sync_failed_is_taken_back_and_never_applied() {
    let (log, store) = flaky_store();
    let kept = queue_sample(&store);
    let end = store.wal.lock().unwrap().as_ref().unwrap().log.end();
    // The append's sync fails; the one that takes the record back works.
    log.0
        .failing_syncs
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let failed = TaskId::new();
    let err = store
        .write(|t| t.put_task(failed, &sample_task(), None))
        .unwrap_err();
    assert!(err.to_string().contains("fq.redb-wal"), "{err}");
    assert_eq!(store.wal.lock().unwrap().as_ref().unwrap().log.end(), end);
    // The reopen that healing makes reads the log again: the failed record is not in it.
    store.reopen().unwrap();
    assert!(store.read_task(kept).unwrap().is_some());
    assert_eq!(
        store.read_task(failed).unwrap(),
        None,
        "a failed commit came back"
    );
    // And the log goes on: the next commit is logged and kept.
    let after = queue_sample(&store);
    assert!(store.read_task(after).unwrap().is_some());
}

#[test]
fn a_record_that_cannot_be_taken_back_stops_writes_until_the_engine_reopens() {
    let (log, store) = flaky_store();
    queue_sample(&store);
    // Both the append's sync and the take-back's fail.
    log.0
        .failing_syncs
        .store(2, std::sync::atomic::Ordering::SeqCst);
    let failed = TaskId::new();
    assert!(
        store
            .write(|t| t.put_task(failed, &sample_task(), None))
            .is_err()
    );
    // The disk works again and the store is reopened, as healing would: still refused, since
    // the log may hold a change the engine was told failed.
    store.reopen().unwrap();
    let err = store.write(|_| Ok(())).unwrap_err();
    assert!(err.to_string().contains("reopen the engine"), "{err}");
}

/// Queues a sample task in a commit made visible ahead of its log sync; its number.
/// Queues a sample task numbered `id` (record and ready index) in the transaction `t`.
fn queue_in(t: &mut crate::store::WriteTables<'_>, id: TaskId) -> Result<(), StoreError> {
    let task = sample_task();
    t.put_task(id, &task, None)?;
    t.insert_waiting(
        &task.queue,
        crate::task::ReadyOrder::new(task.priority, task.due_at, task.seq),
        id,
    )
}

fn queue_deferred(store: &Store) -> (TaskId, u64) {
    let id = TaskId::new();
    let ((), seq) = store
        .write_as(crate::store::Commit::Deferred, None, |t| queue_in(t, id))
        .unwrap();
    (
        id,
        seq.expect("a logged commit made ahead of its sync is numbered"),
    )
}

/// Reads task `id` on another thread; the receiver says whether it was found.
fn read_elsewhere(store: &std::sync::Arc<Store>, id: TaskId) -> std::sync::mpsc::Receiver<bool> {
    let (found, receiver) = std::sync::mpsc::channel();
    let store = std::sync::Arc::clone(store);
    std::thread::spawn(move || {
        let _ = found.send(store.read_task(id).unwrap().is_some());
    });
    receiver
}

#[test]
fn a_read_waits_until_a_sync_covers_what_it_would_see() {
    let (_log, store) = flaky_store();
    let store = std::sync::Arc::new(store);
    let durable = queue_sample(&store);
    assert!(read_elsewhere(&store, durable).recv().unwrap());
    let (id, seq) = queue_deferred(&store);

    let found = read_elsewhere(&store, id);
    assert_eq!(
        found.recv_timeout(std::time::Duration::from_millis(300)),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout),
        "a read saw a commit whose log sync had not returned"
    );
    let sync = store.log_sync().expect("a commit waits for a sync");
    assert_eq!(sync.seq, seq);
    sync.run().unwrap();
    store.log_synced(sync.seq);
    assert_eq!(store.durable_seq(), seq);
    assert_eq!(
        found.recv_timeout(std::time::Duration::from_secs(10)),
        Ok(true),
        "the synced commit stayed hidden"
    );
    assert!(store.log_sync().is_none(), "nothing is left to sync");
}

/// A change synced on the writer's thread may be answered before the B-tree commits it
/// (`Commit::SyncedHere`): a read on another thread that starts meanwhile waits for that
/// commit, then sees the change.
#[test]
fn a_read_started_before_a_synced_change_reaches_the_b_tree_waits_for_it() {
    let (_log, store) = flaky_store();
    let store = std::sync::Arc::new(store);
    let id = TaskId::new();
    let ((), pending) = store.write_synced_here(|t| queue_in(t, id)).unwrap();
    let pending = pending.expect("a logged commit synced here leaves the B-tree to its caller");

    let found = read_elsewhere(&store, id);
    assert_eq!(
        found.recv_timeout(std::time::Duration::from_millis(300)),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout),
        "a read went on before the B-tree committed a change that may be answered"
    );
    pending.commit().unwrap();
    assert_eq!(
        found.recv_timeout(std::time::Duration::from_secs(10)),
        Ok(true),
        "the read missed the change it waited for"
    );
    assert!(store.log_sync().is_none(), "the change was synced already");
}

/// The B-tree's commit of a change synced here fails: the change is durable in the log, so
/// reads wait until the store is reopened, which applies the log again, and then see it.
#[test]
fn a_synced_change_whose_b_tree_commit_failed_is_read_after_the_reopen() {
    let (_log, store) = flaky_store();
    let store = std::sync::Arc::new(store);
    let id = TaskId::new();
    store
        .fail_commit_after_log
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let ((), pending) = store.write_synced_here(|t| queue_in(t, id)).unwrap();
    let pending = pending.expect("a logged commit synced here leaves the B-tree to its caller");
    pending.commit().unwrap_err();
    store
        .fail_commit_after_log
        .store(false, std::sync::atomic::Ordering::SeqCst);

    let found = read_elsewhere(&store, id);
    assert_eq!(
        found.recv_timeout(std::time::Duration::from_millis(300)),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout),
        "a read went on against a B-tree that lacks a durable change"
    );
    store.reopen().unwrap();
    assert_eq!(
        found.recv_timeout(std::time::Duration::from_secs(10)),
        Ok(true),
        "the reopen did not bring back the durable change"
    );
    assert_sound(&store);
}

#[test]
fn a_failed_sync_takes_back_every_commit_made_visible_ahead_of_it() {
    let (log, store) = flaky_store();
    let store = std::sync::Arc::new(store);
    let kept = queue_sample(&store);
    let (synced, seq) = queue_deferred(&store);
    let sync = store.log_sync().unwrap();
    sync.run().unwrap();
    store.log_synced(seq);
    let (first, _) = queue_deferred(&store);
    let (second, _) = queue_deferred(&store);
    let waiting_read = read_elsewhere(&store, second);

    let sync = store.log_sync().unwrap();
    log.0
        .failing_syncs
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let error = sync.run().unwrap_err();
    let failure = store
        .log_sync_failed(sync.seq, error)
        .expect("the commits it covered were not durable");
    assert!(failure.to_string().contains("fq.redb-wal"), "{failure}");
    // As healing does: the reopen rolls the B-tree back to its last durable commit and applies
    // the log's synced records to it.
    store.reopen().unwrap();
    assert_eq!(
        waiting_read.recv_timeout(std::time::Duration::from_secs(10)),
        Ok(false),
        "a read waiting for the failed sync saw its commit"
    );
    assert!(store.read_task(kept).unwrap().is_some());
    assert!(
        store.read_task(synced).unwrap().is_some(),
        "a commit whose sync returned was lost"
    );
    for id in [first, second] {
        assert_eq!(
            store.read_task(id).unwrap(),
            None,
            "a commit whose sync failed came back"
        );
    }
    assert_eq!(store.counts().unwrap().values().sum::<u64>(), 2);
    assert_sound(&store);
    let after = queue_sample(&store);
    assert!(store.read_task(after).unwrap().is_some());
}

/// The log's sync is offered as soon as the record is in the log, before the B-tree commits
/// (so the disk works while the B-tree commits). When that B-tree commit then fails, the
/// record is taken back even though a sync covering it may already have made it durable: it
/// never comes back, at a reopen or after the offered sync has run.
#[test]
fn a_sync_started_before_a_failed_b_tree_commit_never_brings_its_record_back() {
    let (_log, store) = flaky_store();
    let kept = queue_sample(&store);
    let offered = std::cell::RefCell::new(None);
    let start = |job: LogSync| {
        *offered.borrow_mut() = Some(job);
    };
    let (synced, _) = {
        let id = TaskId::new();
        let ((), seq) = store
            .write_as(crate::store::Commit::Deferred, Some(&start), |t| {
                queue_in(t, id)
            })
            .unwrap();
        (id, seq.unwrap())
    };
    let job = offered.take().expect("a deferred commit offers its sync");
    job.run().unwrap();
    store.log_synced(job.seq);

    store
        .fail_commit_after_log
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = TaskId::new();
    let error = store
        .write_as(crate::store::Commit::Deferred, Some(&start), |t| {
            queue_in(t, failed)
        })
        .unwrap_err();
    assert!(error.to_string().contains("committing"), "{error}");
    let job = offered
        .take()
        .expect("the sync was offered before the B-tree commit, which then failed");
    store
        .fail_commit_after_log
        .store(false, std::sync::atomic::Ordering::SeqCst);
    job.run().unwrap();
    store.log_synced(job.seq);
    assert_eq!(store.read_task(failed).unwrap(), None);

    // As healing does after a failed commit: the log's records are applied again.
    store.reopen().unwrap();
    assert!(store.read_task(kept).unwrap().is_some());
    assert!(
        store.read_task(synced).unwrap().is_some(),
        "a commit whose early sync returned was lost"
    );
    assert_eq!(
        store.read_task(failed).unwrap(),
        None,
        "a failed commit's record came back from the log"
    );
    assert_sound(&store);
}

/// A store whose held commits may stay open for `hold_batches` batches (`held.rs`).
fn holding_store(hold_batches: u32) -> std::sync::Arc<Store> {
    let options = StoreOptions {
        backend: Some(crate::store::CustomBackend::in_memory()),
        log_backend: Some(SharedFlakyDisk::default().into()),
        hold_batches,
        ..wal_options()
    };
    std::sync::Arc::new(Store::open(Path::new("/held/fq.redb"), &options).unwrap())
}

/// As `queue_deferred`, in a commit whose B-tree transaction may stay open.
fn queue_held(store: &Store) -> (TaskId, u64) {
    let id = TaskId::new();
    let ((), seq) = store
        .write_as(crate::store::Commit::Held, None, |t| queue_in(t, id))
        .unwrap();
    (
        id,
        seq.expect("a logged commit made ahead of its sync is numbered"),
    )
}

/// Syncs the log over every commit made so far, as the writer's sync thread does.
fn sync_log(store: &Store) {
    let sync = store
        .log_sync()
        .expect("a deferred commit waits for a sync");
    sync.run().unwrap();
    store.log_synced(sync.seq);
}

/// Every task of `ids` is stored, `total` tasks in all, and the indexes agree.
fn assert_all_there<'a>(store: &Store, ids: impl IntoIterator<Item = &'a TaskId>, total: u64) {
    for id in ids {
        assert!(store.read_task(*id).unwrap().is_some(), "task {id} lost");
    }
    assert_eq!(store.counts().unwrap().values().sum::<u64>(), total);
    assert_sound(store);
}

const A_WHILE: std::time::Duration = std::time::Duration::from_millis(300);
const LONG_ENOUGH: std::time::Duration = std::time::Duration::from_secs(10);

/// Deferred batches ride one open B-tree transaction: synced, they are durable, yet a read on
/// another thread waits for the transaction's commit (and asks for it) instead of missing
/// them. The transaction commits by itself once it carries `hold_batches` batches.
#[test]
fn a_read_waits_for_the_held_transaction_and_asks_the_writer_to_commit_it() {
    let store = holding_store(3);
    let (first, _) = queue_held(&store);
    let (second, _) = queue_held(&store);
    sync_log(&store);
    assert_eq!(
        store.durable_seq(),
        2,
        "both batches are durable in the log"
    );

    assert!(!store.commit_wanted());
    let found = read_elsewhere(&store, second);
    assert_eq!(
        found.recv_timeout(A_WHILE),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout),
        "a read went on while the B-tree lacked durable batches it may have been told of"
    );
    assert!(
        store.commit_wanted(),
        "the waiting read did not ask for the commit"
    );
    store.commit_held().unwrap();
    assert_eq!(found.recv_timeout(LONG_ENOUGH), Ok(true));
    assert!(!store.commit_wanted());
    assert!(store.read_task(first).unwrap().is_some());

    // Two batches are held again; the third would make three, so its write commits them.
    let held: Vec<TaskId> = (0..2).map(|_| queue_held(&store).0).collect();
    let (third, _) = queue_held(&store);
    sync_log(&store);
    for id in held.into_iter().chain([third]) {
        assert_eq!(
            read_elsewhere(&store, id).recv_timeout(LONG_ENOUGH),
            Ok(true),
            "the batch that fills the transaction did not commit it"
        );
    }
    assert_eq!(store.counts().unwrap().values().sum::<u64>(), 5);
    assert_sound(&store);
}

/// A crash while batches are held: the B-tree on disk never saw them, and the open applies
/// the log's records of every one whose sync returned.
#[test]
fn batches_held_at_a_crash_come_back_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    let options = StoreOptions {
        hold_batches: 8,
        ..wal_options()
    };
    let store = Store::open(&path, &options).unwrap();
    let before = queue_sample(&store);
    let held: Vec<TaskId> = (0..4).map(|_| queue_held(&store).0).collect();
    sync_log(&store);
    assert!(store.held.lock().unwrap().is_some(), "nothing is held");

    let copy = crash_image(&path, &dir.path().join("crash"));
    // Control: the B-tree alone lacks the held batches, so the open below took them from
    // the log.
    let bare = dir.path().join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::copy(&copy, bare.join("fq.redb")).unwrap();
    let without_log = Store::open(&bare.join("fq.redb"), &forgetting_options()).unwrap();
    assert_eq!(without_log.read_task(held[0]).unwrap(), None);

    let reopened = Store::open(&copy, &wal_options()).unwrap();
    assert_all_there(&reopened, held.iter().chain([&before]), 5);
}

/// The held transaction's commit fails: its batches are durable in the log, so reads wait
/// until the store is reopened, which applies the log again, and then see every one.
#[test]
fn a_held_transaction_whose_commit_failed_comes_back_at_the_reopen() {
    let store = holding_store(8);
    let held: Vec<TaskId> = (0..3).map(|_| queue_held(&store).0).collect();
    sync_log(&store);
    store
        .fail_commit_after_log
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let error = store.commit_held().unwrap_err();
    assert!(error.to_string().contains("committing"), "{error}");
    store
        .fail_commit_after_log
        .store(false, std::sync::atomic::Ordering::SeqCst);

    let found = read_elsewhere(&store, held[2]);
    assert_eq!(
        found.recv_timeout(A_WHILE),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout),
        "a read went on against a B-tree that lacks durable batches"
    );
    store.reopen().unwrap();
    assert_eq!(found.recv_timeout(LONG_ENOUGH), Ok(true));
    assert_all_there(&store, &held, 3);
}

/// A lazy write, a checkpoint and a write synced here each commit the held transaction with
/// their own: whatever commits next carries the held batches.
#[test]
fn the_next_commit_of_any_kind_carries_the_held_batches() {
    let store = holding_store(8);
    let (lazy_carried, _) = queue_held(&store);
    sync_log(&store);
    assert!(store.held.lock().unwrap().is_some(), "nothing is held");
    store.write_with(false, |_| Ok(())).unwrap();
    assert_eq!(
        read_elsewhere(&store, lazy_carried).recv_timeout(LONG_ENOUGH),
        Ok(true)
    );

    let (checkpoint_carried, _) = queue_held(&store);
    sync_log(&store);
    assert!(store.held.lock().unwrap().is_some(), "nothing is held");
    let mut wal = store.wal.lock().unwrap();
    store.checkpoint(wal.as_mut().unwrap()).unwrap();
    drop(wal);
    assert_eq!(
        read_elsewhere(&store, checkpoint_carried).recv_timeout(LONG_ENOUGH),
        Ok(true)
    );

    let (synced_carried, _) = queue_held(&store);
    sync_log(&store);
    assert!(store.held.lock().unwrap().is_some(), "nothing is held");
    let ((), pending) = store.write_synced_here(|_| Ok(())).unwrap();
    pending
        .expect("a logged write synced here")
        .commit()
        .unwrap();
    assert_eq!(
        read_elsewhere(&store, synced_carried).recv_timeout(LONG_ENOUGH),
        Ok(true)
    );
    assert_eq!(store.counts().unwrap().values().sum::<u64>(), 3);
    assert_sound(&store);
}

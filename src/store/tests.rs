use super::*;
use crate::store::codec::sample_task;

fn temp_store() -> (tempfile::TempDir, PathBuf, Store) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("fq.redb");
    let store = Store::open(&path, &StoreOptions::default()).unwrap();
    (dir, path, store)
}

/// Queues one sample task (record and ready index) in its own durable commit.
pub(crate) fn queue_sample(store: &Store) -> TaskId {
    let id = TaskId::new();
    let task = sample_task();
    store
        .write(|t| {
            t.put_task(id, &task, None)?;
            t.insert_waiting(
                &task.queue,
                ReadyOrder::new(task.priority, task.due_at, task.seq),
                id,
            )
        })
        .unwrap();
    id
}

#[test]
fn creates_reopens_and_keeps_tasks() {
    let (_dir, path, store) = temp_store();
    let id = queue_sample(&store);
    let task = sample_task();
    drop(store);
    let store = Store::open(&path, &StoreOptions::default()).unwrap();
    assert_eq!(store.read_task(id).unwrap(), Some(task.clone()));
    let mut waiting = Vec::new();
    let visited = store
        .for_each_waiting(|queue, order, id| waiting.push((queue.to_owned(), order, id)))
        .unwrap();
    assert_eq!(visited, 1);
    assert_eq!(waiting[0].2, id);
    assert_eq!(waiting[0].0, "emails");
    assert_eq!(waiting[0].1.priority(), 5);
}

#[test]
fn a_failed_apply_writes_nothing() {
    let (_dir, _path, store) = temp_store();
    let id = TaskId::new();
    let res: Result<(), StoreError> = store.write(|t| {
        t.put_task(id, &sample_task(), None)?;
        Err(StoreError::CorruptRecord {
            id,
            detail: "forced".into(),
        })
    });
    assert!(res.is_err());
    assert_eq!(store.read_task(id).unwrap(), None);
}

#[test]
fn a_new_task_written_over_a_stored_one_is_refused_and_the_stored_one_kept() {
    let (_dir, _path, store) = temp_store();
    let id = queue_sample(&store);
    let mut other = sample_task();
    other.name = "other.task".into();
    let res = store.write(|t| t.put_task(id, &other, None));
    assert!(
        matches!(res, Err(StoreError::IdClash { id: clashed }) if clashed == id),
        "{res:?}"
    );
    assert_eq!(store.read_task(id).unwrap(), Some(sample_task()));
    // The same record written as a change of the stored task (its status given) is no clash.
    store
        .write(|t| t.put_task(id, &other, Some(sample_task().status)))
        .unwrap();
    assert_eq!(store.read_task(id).unwrap().unwrap().name, "other.task");
}

#[test]
fn refuses_files_that_are_not_fq_stores() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.redb");
    std::fs::write(&empty, b"").unwrap();
    let err = Store::open(&empty, &StoreOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::NotFqStore { .. }), "{err}");
    assert!(err.to_string().contains("empty"));
    assert_eq!(
        std::fs::read(&empty).unwrap(),
        b"",
        "the file was written to"
    );

    let text = dir.path().join("notes.txt");
    let content = b"hello, this is not a database\n".repeat(200);
    std::fs::write(&text, &content).unwrap();
    let err = Store::open(&text, &StoreOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotFqStore { .. } | StoreError::Corrupt { .. }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("notes.txt"), "{err}");
    assert_eq!(
        std::fs::read(&text).unwrap(),
        content,
        "the file was written to"
    );

    let err = Store::open(dir.path(), &StoreOptions::default()).unwrap_err();
    assert!(err.to_string().contains("directory"), "{err}");
}

#[test]
fn refuses_a_foreign_redb_database_and_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("other.redb");
    {
        let db = redb::Database::create(&foreign).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<'_, u64, u64> = redb::TableDefinition::new("users");
            let mut table = txn.open_table(def).unwrap();
            table.insert(1, 2).unwrap();
        }
        txn.commit().unwrap();
    }
    let err = Store::open(&foreign, &StoreOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::NotFqStore { .. }), "{err}");
    assert!(err.to_string().contains("users"), "{err}");

    let (_dir, path, store) = temp_store();
    store
        .write(|t| t.set_meta(META_SCHEMA, &(SCHEMA_VERSION + 1).to_be_bytes()))
        .unwrap();
    drop(store);
    let err = Store::open(&path, &StoreOptions::default()).unwrap_err();
    assert!(
        matches!(err, StoreError::NewerSchema { found, .. } if found == SCHEMA_VERSION + 1),
        "{err}"
    );
}

#[test]
fn a_second_open_in_the_same_process_is_refused() {
    let (_dir, path, store) = temp_store();
    let err = Store::open(&path, &StoreOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::OpenInThisProcess { .. }), "{err}");
    assert!(err.to_string().contains("this process"), "{err}");
    // Closed, it is free again: the registry follows the store's life.
    drop(store);
    assert!(Store::open(&path, &StoreOptions::default()).is_ok());
}

#[test]
fn deletes_only_finished_tasks_past_the_cutoff() {
    let (_dir, _path, store) = temp_store();
    let old = TaskId::new();
    let young = TaskId::new();
    let failed_old = TaskId::new();
    store
        .write(|t| {
            for (id, status, at) in [
                (old, TaskStatus::Completed, 100),
                (young, TaskStatus::Completed, 300),
                (failed_old, TaskStatus::Failed, 100),
            ] {
                t.put_task(id, &sample_task(), None)?;
                t.insert_finished(status, at, id)?;
            }
            Ok(())
        })
        .unwrap();
    let deleted = store
        .write(|t| t.delete_finished_before(TaskStatus::Completed, 200, 100))
        .unwrap();
    assert_eq!(deleted, vec![old]);
    assert!(store.read_task(old).unwrap().is_none());
    assert!(store.read_task(young).unwrap().is_some());
    assert!(store.read_task(failed_old).unwrap().is_some());
}

#[cfg(unix)]
#[test]
fn free_space_is_probed_at_the_file_or_else_its_folder() {
    let (dir, path, store) = temp_store();
    let at_file = store
        .free_bytes()
        .expect("the store's file system is probed");
    assert!(at_file > 0);
    let not_yet = dir.path().join("nested").join("not-created.redb");
    assert!(
        free_bytes_at(&not_yet).is_some(),
        "a file not created yet is probed at its folder"
    );
    assert_eq!(
        free_bytes_at(&dir.path().join("missing").join("fq.redb")),
        None,
        "no folder to ask: the space is unknown"
    );
    drop(store);
    assert!(free_bytes_at(&path).is_some());
}

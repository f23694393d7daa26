use super::*;
use proptest::prelude::*;
use redb::ReadableDatabase;

fn database() -> (tempfile::TempDir, redb::Database) {
    let dir = tempfile::tempdir().unwrap();
    let db = redb::Database::create(dir.path().join("changes.redb")).unwrap();
    (dir, db)
}

fn entry(tag: u8, key: &[u8], value: Option<&[u8]>) -> Vec<u8> {
    let mut bytes = vec![tag];
    push_chunk(&mut bytes, Some(key));
    push_chunk(&mut bytes, value);
    bytes
}

#[test]
fn recorded_changes_replay_to_the_same_rows() {
    let (_dir, source) = database();
    let changes = ChangeList::default();
    let txn = source.begin_write().unwrap();
    {
        let mut leases =
            LoggedTable::new(txn.open_table(LEASES).unwrap(), TableTag::Leases, &changes);
        let mut meta = LoggedTable::new(txn.open_table(META).unwrap(), TableTag::Meta, &changes);
        assert!(!leases.insert(7u128, 3u32).unwrap());
        assert!(leases.insert(7u128, 4u32).unwrap());
        assert!(!leases.insert(8u128, 1u32).unwrap());
        assert!(leases.remove(8u128).unwrap());
        // A remove of nothing changes nothing and records nothing.
        assert!(!leases.remove(9u128).unwrap());
        assert!(!meta.insert("paused:emails", &[][..]).unwrap());
    }
    let recorded = changes.take();
    txn.commit().unwrap();

    let (_dir, target) = database();
    let txn = target.begin_write().unwrap();
    replay(&txn, &recorded).unwrap();
    // Replaying again over its own result ends in the same rows.
    replay(&txn, &recorded).unwrap();
    txn.commit().unwrap();
    let read = target.begin_read().unwrap();
    let leases = read.open_table(LEASES).unwrap();
    let rows: Vec<(u128, u32)> = redb::ReadableTable::iter(&leases)
        .unwrap()
        .map(|row| {
            let (k, v) = row.unwrap();
            (k.value(), v.value())
        })
        .collect();
    assert_eq!(rows, vec![(7, 4)]);
    let meta = read.open_table(META).unwrap();
    assert!(
        redb::ReadableTable::get(&meta, "paused:emails")
            .unwrap()
            .is_some()
    );
}

#[test]
fn malformed_change_lists_are_refused_by_name() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![99, 0, 0, 0, 0], "unknown table"),
        (vec![TableTag::Leases as u8, 1, 0], "cut short in a length"),
        (
            vec![TableTag::Leases as u8, 9, 0, 0, 0, 1],
            "cut short in a key or value",
        ),
        (
            entry(TableTag::Leases as u8, &[1; 3], Some(&[0; 4])),
            "wrong width",
        ),
        (
            entry(TableTag::Leases as u8, &[1; 16], Some(&[0; 3])),
            "wrong width",
        ),
        (
            entry(TableTag::Finished as u8, b"key", Some(&[1])),
            "wrong width",
        ),
        (
            entry(TableTag::Reports as u8, &[0; 19], Some(b"x")),
            "wrong width",
        ),
        (
            entry(TableTag::Meta as u8, &[0xff, 0xfe], Some(b"x")),
            "not UTF-8",
        ),
        (entry(TableTag::Schedules as u8, &[0xc3], None), "not UTF-8"),
    ];
    let (_dir, db) = database();
    for (bytes, expected) in cases {
        let txn = db.begin_write().unwrap();
        let err = replay(&txn, &bytes).unwrap_err();
        assert!(err.to_string().contains(expected), "{bytes:?}: {err}");
    }
    // Control: the same shapes, well formed, apply.
    let txn = db.begin_write().unwrap();
    let good = [
        entry(TableTag::Leases as u8, &[1; 16], Some(&[0; 4])),
        entry(TableTag::Meta as u8, b"name", Some(b"x")),
        entry(TableTag::Reports as u8, &[0; 20], Some(b"x")),
    ]
    .concat();
    replay(&txn, &good).unwrap();
}

#[test]
fn a_malformed_list_among_several_is_named_by_its_index() {
    let (_dir, db) = database();
    let good = entry(TableTag::Leases as u8, &[1; 16], Some(&[0; 4]));
    let wrong_width = entry(TableTag::Leases as u8, &[2; 3], Some(&[0; 4]));
    let unknown_table = vec![99, 0, 0, 0, 0];
    // Found while decoding, and while applying (the width): both name the second list.
    for bad in [&unknown_table, &wrong_width] {
        let txn = db.begin_write().unwrap();
        let (index, _) = replay_all(&txn, [&good[..], &bad[..], &good[..]]).unwrap_err();
        assert_eq!(index, 1, "{bad:?}");
    }
    // Control: the good lists alone apply, the later write of a key winning.
    let txn = db.begin_write().unwrap();
    let later = entry(TableTag::Leases as u8, &[1; 16], Some(&[9, 0, 0, 0]));
    replay_all(&txn, [&good[..], &later[..]]).unwrap();
    let leases = txn.open_table(LEASES).unwrap();
    assert_eq!(
        redb::ReadableTable::get(&leases, u128::from_le_bytes([1; 16]))
            .unwrap()
            .unwrap()
            .value(),
        9
    );
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, cases: 256, ..ProptestConfig::default() })]

    /// Whatever bytes a record carries, replaying them is an answer, never a panic.
    #[test]
    fn arbitrary_change_lists_never_panic(tag in 0u8..12, key in proptest::collection::vec(any::<u8>(), 0..24), value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..24)), tail in proptest::collection::vec(any::<u8>(), 0..16)) {
        let (_dir, db) = database();
        let txn = db.begin_write().unwrap();
        let mut bytes = entry(tag, &key, value.as_deref());
        bytes.extend_from_slice(&tail);
        let _ = replay(&txn, &bytes);
    }
}

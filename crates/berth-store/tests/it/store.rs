use berth_store::{Durability, Space, Store, StoreError};

fn kv(k: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
    (k.as_bytes().to_vec(), v.as_bytes().to_vec())
}

#[test]
fn write_read_scan_and_spaces_are_separate() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut b = store.batch();
    for k in ["a", "b", "c", "d"] {
        b.put(Space::Data, k.as_bytes(), format!("v{k}").as_bytes());
    }
    b.put(Space::Local, b"a", b"local");
    b.put(Space::Data, b"x", b"1");
    b.delete(Space::Data, b"x");
    assert_eq!(b.len(), 6);
    store.write(b, Durability::Sync).unwrap();

    assert_eq!(store.get(Space::Data, b"a").unwrap(), Some(b"va".to_vec()));
    assert_eq!(
        store.get(Space::Local, b"a").unwrap(),
        Some(b"local".to_vec())
    );
    assert_eq!(store.get(Space::Data, b"x").unwrap(), None);
    assert_eq!(store.get(Space::RaftLog, b"a").unwrap(), None);
    assert_eq!(
        store.scan(Space::Data, b"b", b"d", 10).unwrap(),
        vec![kv("b", "vb"), kv("c", "vc")]
    );
    assert_eq!(store.scan(Space::Data, b"b", b"", 10).unwrap().len(), 3);
    assert_eq!(store.scan(Space::Data, b"", b"", 2).unwrap().len(), 2);
    assert!(store.scan(Space::Data, b"d", b"b", 10).unwrap().is_empty());
    assert_eq!(
        store.last_in_range(Space::Data, b"a", b"d").unwrap(),
        Some(kv("c", "vc"))
    );

    let mut b = store.batch();
    b.put(Space::Data, b"bb", b"new");
    assert_eq!(b.delete_range(Space::Data, b"b", b"d").unwrap(), 3);
    assert_eq!(b.pending(Space::Data, b"bb"), Some(None));
    store.write(b, Durability::Buffered).unwrap();
    assert_eq!(
        store.scan(Space::Data, b"", b"", 10).unwrap(),
        vec![kv("a", "va"), kv("d", "vd")]
    );
    let m = store.metrics();
    assert_eq!(m.writes, 2);
    assert_eq!(m.syncs, 1);
    assert!(m.bytes_written > 0);
}

#[test]
fn snapshot_is_point_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut b = store.batch();
    b.put(Space::Data, b"k1", b"old");
    store.write(b, Durability::Buffered).unwrap();
    let snap = store.snapshot();
    let mut b = store.batch();
    b.put(Space::Data, b"k1", b"new");
    b.put(Space::Data, b"k2", b"new");
    store.write(b, Durability::Buffered).unwrap();
    assert_eq!(snap.get(Space::Data, b"k1").unwrap(), Some(b"old".to_vec()));
    assert_eq!(
        snap.scan(Space::Data, b"", b"", 10).unwrap(),
        vec![kv("k1", "old")]
    );
    assert_eq!(
        store.get(Space::Data, b"k1").unwrap(),
        Some(b"new".to_vec())
    );
}

#[test]
fn synced_writes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let mut b = store.batch();
        b.put(Space::RaftLog, b"e1", b"entry");
        store.write(b, Durability::Sync).unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.get(Space::RaftLog, b"e1").unwrap(),
        Some(b"entry".to_vec())
    );
}

#[test]
fn failed_sync_poisons_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut b = store.batch();
    b.put(Space::Data, b"before", b"1");
    store.write(b, Durability::Buffered).unwrap();

    store.fail_next_sync_for_test();
    let mut b = store.batch();
    b.put(Space::Data, b"k", b"v");
    assert!(store.write(b, Durability::Sync).is_err());
    assert!(store.is_poisoned());

    for durability in [Durability::Sync, Durability::Buffered] {
        let mut b = store.batch();
        b.put(Space::Data, b"after", b"1");
        assert!(matches!(
            store.write(b, durability),
            Err(StoreError::Poisoned)
        ));
    }
    // Reads still work; the refused write is not there.
    assert_eq!(
        store.get(Space::Data, b"before").unwrap(),
        Some(b"1".to_vec())
    );
    assert_eq!(store.get(Space::Data, b"after").unwrap(), None);
}

#[test]
fn oversized_batches_are_refused_not_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let other = tempfile::tempdir().unwrap();
    let other = Store::open(other.path()).unwrap();
    let mut b = other.batch();
    b.put(Space::Data, b"k", b"v");
    assert!(matches!(
        store.write(b, Durability::Buffered),
        Err(StoreError::Invalid(_))
    ));
    let mut b = store.batch();
    b.put(
        Space::Data,
        &vec![7u8; berth_store::MAX_KEY_BYTES + 1],
        b"v",
    );
    assert!(matches!(
        store.write(b, Durability::Buffered),
        Err(StoreError::Invalid(_))
    ));
    assert!(!store.is_poisoned());
}

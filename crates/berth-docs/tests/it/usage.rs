//! Tables' bytes in their volume's usage and quota: every write path moves
//! the counter by exactly what it stores (key and value of each document
//! and index entry), removals take it back, and growth past the quota is
//! refused with 14031 OutOfDiskSpace while shrinking writes pass.

use berth_docs::error::codes;
use berth_docs::table::{Right, TableRef};
use berth_docs::txn::Txn;
use berth_docs::update::{ApplyContext, Update};
use berth_fs::{VolumeChange, VolumeSpec};
use berth_store::keys::{object_range, Kind};
use bson::{doc, Bson, Document};

use crate::{filter, kernel, update, Kernel};

async fn volume(k: &Kernel, path: &str, quota_bytes: u64) {
    let spec = VolumeSpec {
        path: path.into(),
        quota_bytes,
        ..Default::default()
    };
    k.tables
        .namespace()
        .volume_create(&k.admin, &spec)
        .await
        .unwrap();
}

/// The volume's usage counter, as stored (an i64: a drift below zero shows).
async fn used(k: &Kernel, t: &TableRef) -> i64 {
    let key = berth_fs::records::usage_key(t.vol.id);
    let raw = k.meta.router().get(t.vol.shard_id, &key).await.unwrap();
    raw.map_or(0, |v| i64::from_be_bytes(v.try_into().unwrap()))
}

/// What table `t` stores and counts: key and value bytes of its documents
/// and index entries (not its settings).
async fn stored(k: &Kernel, t: &TableRef) -> i64 {
    let (docs, docs_end) = t.doc_range();
    let (settings, end) = object_range(t.vol.id, Kind::TableIndex, t.entry.ino);
    let mut entries = settings;
    entries.push(0);
    let mut n = 0;
    for (s, e) in [(docs, docs_end), (entries, end)] {
        let rows = k
            .meta
            .router()
            .scan(t.vol.shard_id, &s, &e, 1 << 20)
            .await
            .unwrap();
        n += rows
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as i64)
            .sum::<i64>();
    }
    n
}

async fn open(k: &Kernel, path: &str) -> TableRef {
    k.tables.open(&k.admin, path, Right::Write).await.unwrap()
}

/// Asserts that the volume counts exactly the bytes its tables store.
async fn agrees(k: &Kernel, tables: &[&str], what: &str) -> i64 {
    let mut sum = 0;
    let mut t0 = None;
    for p in tables {
        let t = open(k, p).await;
        sum += stored(k, &t).await;
        t0 = Some(t);
    }
    let t = t0.expect("a table");
    assert_eq!(used(k, &t).await, sum, "after {what}");
    sum
}

fn change(
    u: Document,
) -> impl Fn(&mut Document, &ApplyContext) -> Result<bool, berth_docs::DocError> {
    let spec = Update::parse(&u, &[]).unwrap();
    move |d: &mut Document, ctx: &ApplyContext| spec.apply(d, ctx)
}

#[tokio::test]
async fn every_write_path_moves_the_volume_usage_by_what_it_stores() {
    let k = kernel().await;
    let a = &k.admin;
    volume(&k, "/q", 0).await;
    let path = "/q/db/t";
    let t = k.tables.create(a, path, true).await.unwrap();
    assert_eq!(used(&k, &t).await, 0, "settings are not counted");

    // Inserts, with an index and a multikey index there before them.
    k.tables
        .create_indexes(
            a,
            path,
            &[doc! {"key": {"g": 1}}, doc! {"key": {"tags": 1}}],
        )
        .await
        .unwrap();
    let t = open(&k, path).await;
    let docs: Vec<Document> = (0..40)
        .map(|i| doc! {"_id": i, "u": i, "g": i % 4, "s": "x".repeat(i as usize), "tags": ["a", format!("t{i}")]})
        .collect();
    let out = k.tables.insert(a, &t, docs, false).await.unwrap();
    assert_eq!(out.n, 40);
    let after_insert = agrees(&k, &[path], "inserts").await;
    assert!(after_insert > 0);

    // Index builds over the documents there (unique and not), and a drop.
    k.tables
        .create_indexes(
            a,
            path,
            &[
                doc! {"key": {"u": 1}, "unique": true, "sparse": true},
                doc! {"key": {"g": 1, "s": -1}},
            ],
        )
        .await
        .unwrap();
    let built = agrees(&k, &[path], "index builds").await;
    assert!(built > after_insert);
    k.tables
        .drop_indexes(a, path, |i| i.name == "g_1_s_-1")
        .await
        .unwrap();
    agrees(&k, &[path], "dropIndexes").await;

    // Updates: growing, shrinking, multi, a replacement, an upsert, a no-op.
    update(
        &k,
        a,
        path,
        doc! {"_id": 3},
        doc! {"$set": {"s": "y".repeat(500)}},
        false,
        false,
    )
    .await;
    agrees(&k, &[path], "a growing update").await;
    update(
        &k,
        a,
        path,
        doc! {"g": 1},
        doc! {"$unset": {"s": ""}, "$push": {"tags": "z"}},
        true,
        false,
    )
    .await;
    agrees(&k, &[path], "a shrinking multi-update").await;
    update(
        &k,
        a,
        path,
        doc! {"_id": 4},
        doc! {"$set": {"g": 0}},
        false,
        false,
    )
    .await;
    agrees(&k, &[path], "an update with the same value").await;
    let t = open(&k, path).await;
    let replace = |d: &mut Document, _: &ApplyContext| {
        let id = d.get("_id").cloned().unwrap_or(Bson::Null);
        *d = doc! {"_id": id, "u": -5, "whole": "new", "tags": []};
        Ok::<bool, berth_docs::DocError>(true)
    };
    let q = doc! {"_id": 5};
    k.tables
        .update(
            a,
            &t,
            &filter(q.clone()),
            &q,
            &replace,
            false,
            false,
            bson::DateTime::now(),
            true,
            true,
        )
        .await
        .unwrap();
    agrees(&k, &[path], "a replacement").await;
    update(
        &k,
        a,
        path,
        doc! {"_id": 100},
        doc! {"$set": {"g": 9, "s": "upserted"}},
        false,
        true,
    )
    .await;
    agrees(&k, &[path], "an upsert").await;

    // Deletes: one, by filter.
    let t = open(&k, path).await;
    k.tables
        .delete(a, &t, &filter(doc! {"_id": 0}), true)
        .await
        .unwrap();
    k.tables
        .delete(a, &t, &filter(doc! {"g": 2}), false)
        .await
        .unwrap();
    agrees(&k, &[path], "deletes").await;

    // A multi-document transaction: counted when it commits, not when it
    // aborts.
    let txn = Txn::new();
    let mut in_txn = open(&k, path).await;
    in_txn.txn = Some(txn.clone());
    k.tables
        .insert(
            a,
            &in_txn,
            vec![doc! {"_id": 200, "s": "in a transaction", "g": 1}],
            true,
        )
        .await
        .unwrap();
    let grow = change(doc! {"$set": {"s": "w".repeat(300)}});
    let q = doc! {"_id": 200};
    k.tables
        .update(
            a,
            &in_txn,
            &filter(q.clone()),
            &q,
            &grow,
            false,
            false,
            bson::DateTime::now(),
            false,
            false,
        )
        .await
        .unwrap();
    k.tables
        .delete(a, &in_txn, &filter(doc! {"_id": 1}), true)
        .await
        .unwrap();
    let before = agrees(&k, &[path], "statements of an open transaction").await;
    txn.commit().await.unwrap();
    let committed = agrees(&k, &[path], "a committed transaction").await;
    assert_ne!(before, committed);
    let txn = Txn::new();
    let mut in_txn = open(&k, path).await;
    in_txn.txn = Some(txn.clone());
    k.tables
        .insert(a, &in_txn, vec![doc! {"_id": 300, "s": "aborted"}], true)
        .await
        .unwrap();
    txn.abort().await;
    assert_eq!(
        agrees(&k, &[path], "an aborted transaction").await,
        committed
    );

    // The TTL sweep deletes through the delete path.
    k.tables
        .create_indexes(a, path, &[doc! {"key": {"at": 1}, "expireAfterSeconds": 0}])
        .await
        .unwrap();
    let t = open(&k, path).await;
    let old = bson::DateTime::from_millis(1_000);
    k.tables
        .insert(
            a,
            &t,
            (400..410).map(|i| doc! {"_id": i, "at": old}).collect(),
            true,
        )
        .await
        .unwrap();
    agrees(&k, &[path], "dated inserts").await;
    assert_eq!(k.tables.expire_all(bson::DateTime::now()).await, 10);
    agrees(&k, &[path], "the TTL sweep").await;

    // A second table; a rename over the first removes it, a drop the other.
    let other = "/q/db/other";
    let o = k.tables.create(a, other, true).await.unwrap();
    k.tables
        .insert(a, &o, vec![doc! {"_id": 1, "x": "other"}], true)
        .await
        .unwrap();
    let only_other = stored(&k, &o).await;
    agrees(&k, &[path, other], "a second table").await;
    k.tables
        .namespace()
        .rename(a, other, path, false)
        .await
        .unwrap();
    assert_eq!(
        agrees(&k, &[path], "a rename over a table").await,
        only_other
    );
    assert!(k.tables.drop_table(a, path).await.unwrap());
    assert_eq!(used(&k, &t).await, 0, "every table dropped");
}

#[tokio::test]
async fn growth_past_the_quota_is_refused_and_shrinking_writes_pass() {
    let k = kernel().await;
    let a = &k.admin;
    let quota = 8192;
    volume(&k, "/small", quota).await;
    let path = "/small/db/t";
    let t = k.tables.create(a, path, true).await.unwrap();
    let pad = |i: i32| doc! {"_id": i, "pad": format!("{i:04}{}", "x".repeat(996))};

    // Unordered: the documents that fit go in, each of the others is a
    // write error 14031 naming the volume and its quota.
    let out = k
        .tables
        .insert(a, &t, (0..12).map(pad).collect(), false)
        .await
        .unwrap();
    assert_eq!(out.n, 7, "{:?}", out.errors);
    assert_eq!(out.errors.len(), 5);
    for e in &out.errors {
        assert_eq!(e.error.code, codes::OUT_OF_DISK_SPACE);
        assert_eq!(e.error.code_name(), "OutOfDiskSpace");
        assert!(
            e.error.message.contains("/small") && e.error.message.contains("8192"),
            "{}",
            e.error.message
        );
    }
    let full = agrees(&k, &[path], "a refused insert").await;
    assert!(full <= quota as i64 && full > quota as i64 - 1100, "{full}");
    // Ordered: stops at the first.
    let out = k
        .tables
        .insert(a, &t, (20..23).map(pad).collect(), true)
        .await
        .unwrap();
    assert_eq!((out.n, out.errors.len(), out.errors[0].index), (0, 1, 0));

    // An update that grows is refused, one that shrinks passes.
    let q = doc! {"_id": 0};
    let grow = change(doc! {"$set": {"more": "y".repeat(1000)}});
    let e = k
        .tables
        .update(
            a,
            &t,
            &filter(q.clone()),
            &q,
            &grow,
            false,
            false,
            bson::DateTime::now(),
            false,
            false,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, codes::OUT_OF_DISK_SPACE);
    update(
        &k,
        a,
        path,
        doc! {"_id": 1},
        doc! {"$set": {"pad": ""}},
        false,
        false,
    )
    .await;
    let shrunk = agrees(&k, &[path], "a shrinking update").await;
    assert!(shrunk < full);

    // An index whose entries do not fit is refused and removed.
    let e = k
        .tables
        .create_indexes(a, path, &[doc! {"key": {"pad": 1}}])
        .await
        .unwrap_err();
    assert_eq!(e.code, codes::OUT_OF_DISK_SPACE);
    assert!(open(&k, path).await.config.indexes.is_empty());
    assert_eq!(agrees(&k, &[path], "a refused index build").await, shrunk);

    // In a transaction, its own earlier statements count.
    let txn = Txn::new();
    let mut in_txn = open(&k, path).await;
    in_txn.txn = Some(txn.clone());
    let first = k
        .tables
        .insert(a, &in_txn, vec![pad(30)], true)
        .await
        .unwrap();
    assert_eq!(first.n, 1);
    let second = k
        .tables
        .insert(a, &in_txn, vec![pad(31)], true)
        .await
        .unwrap();
    assert_eq!(second.errors[0].error.code, codes::OUT_OF_DISK_SPACE);
    txn.commit().await.unwrap();
    let t = open(&k, path).await;
    assert!(agrees(&k, &[path], "a transaction at the quota").await <= quota as i64);

    // Deletes always pass, and make room again.
    let (n, _) = k
        .tables
        .delete(a, &t, &filter(doc! {}), false)
        .await
        .unwrap();
    assert_eq!(n, 8);
    assert_eq!(used(&k, &t).await, 0);
    let out = k
        .tables
        .insert(a, &t, (40..43).map(pad).collect(), true)
        .await
        .unwrap();
    assert_eq!((out.n, out.errors.len()), (3, 0));

    // Without a quota, anything goes.
    k.tables
        .namespace()
        .volume_set(
            a,
            "/small",
            &VolumeChange {
                quota_bytes: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let t = open(&k, path).await;
    let out = k
        .tables
        .insert(a, &t, (50..70).map(pad).collect(), true)
        .await
        .unwrap();
    assert_eq!((out.n, out.errors.len()), (20, 0));
    agrees(&k, &[path], "inserts without a quota").await;
}

//! The table service against a real single-node kernel (store, multi-raft
//! loop, meta shard) in a temp dir, no network: documents in, out, changed
//! and removed through conditional transactions, and who may do what.

use std::sync::Arc;

use berth_docs::error::codes;
use berth_docs::matcher::Filter;
use berth_docs::table::{Right, Tables};
use berth_docs::update::{ApplyContext, Update};
use berth_fs::Namespace;
use berth_meta::testing::{single_node, SingleNode};
use berth_meta::Meta;
use berth_security::principal::Principal;
use bson::{doc, Bson, Document};

struct Kernel {
    _node: SingleNode,
    tables: Arc<Tables>,
    meta: Arc<Meta>,
    admin: Principal,
}

async fn kernel() -> Kernel {
    let node = single_node().await;
    let ns = Namespace::new(node.meta.clone());
    ns.reconcile().await.unwrap();
    let tables = Tables::new(ns);
    tables.ensure_root("/tables").await.unwrap();
    Kernel {
        tables,
        meta: node.meta.clone(),
        admin: node.admin.clone(),
        _node: node,
    }
}

impl Kernel {
    async fn user(&self, name: &str) -> Principal {
        self.meta
            .user_add(&self.admin, name, Some("pw"), None, vec![], false)
            .await
            .unwrap();
        let (t, _) = self.meta.sign_for(name, None, 3600).unwrap();
        self.meta.authenticate(&t).unwrap()
    }
}

fn filter(d: Document) -> Filter {
    Filter::parse(&d).unwrap()
}

async fn update(
    k: &Kernel,
    p: &Principal,
    path: &str,
    q: Document,
    u: Document,
    multi: bool,
    upsert: bool,
) -> berth_docs::table::UpdateOutcome {
    let t = k.tables.open_or_create(p, path).await.unwrap();
    let spec = Update::parse(&u, &[]).unwrap();
    let change = move |d: &mut Document, ctx: &ApplyContext| spec.apply(d, ctx);
    k.tables
        .update(
            p,
            &t,
            &filter(q.clone()),
            &q,
            &change,
            multi,
            upsert,
            bson::DateTime::from_millis(0),
            false,
            false,
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn documents_go_in_come_out_change_and_go() {
    let k = kernel().await;
    let a = &k.admin;
    let t = k
        .tables
        .create(a, "/tables/shop/users", true)
        .await
        .unwrap();
    let docs = vec![
        doc! {"_id": 1, "name": "ada"},
        doc! {"name": "grace"},
        doc! {"_id": 1.0, "name": "same id as 1"},
        doc! {"_id": "x", "name": "x"},
    ];
    // Unordered: the duplicate fails alone (1.0 is the same _id as 1).
    let out = k.tables.insert(a, &t, docs.clone(), false).await.unwrap();
    assert_eq!(out.n, 3);
    assert_eq!(out.errors.len(), 1);
    assert_eq!(out.errors[0].index, 2);
    assert_eq!(out.errors[0].error.code, codes::DUPLICATE_KEY);
    // Ordered: stops at the first failure, the ones before it go in.
    let out = k
        .tables
        .insert(
            a,
            &t,
            vec![doc! {"_id": 2}, doc! {"_id": 1}, doc! {"_id": 3}],
            true,
        )
        .await
        .unwrap();
    assert_eq!((out.n, out.errors.len(), out.errors[0].index), (1, 1, 1));

    // A generated _id comes first.
    let all = k
        .tables
        .select(a, &t, &filter(doc! {}), 0, 0)
        .await
        .unwrap();
    assert_eq!(all.len(), 4);
    let grace = all
        .iter()
        .find(|(_, d, _)| d.get_str("name").ok() == Some("grace"))
        .unwrap();
    assert_eq!(grace.1.keys().next().map(String::as_str), Some("_id"));
    assert!(matches!(grace.1.get("_id"), Some(Bson::ObjectId(_))));
    // _id order: numbers before strings before ObjectIds.
    let ids: Vec<_> = all
        .iter()
        .map(|(_, d, _)| d.get("_id").cloned().unwrap())
        .collect();
    assert_eq!(ids[0], Bson::Int32(1));
    assert_eq!(ids[1], Bson::Int32(2));
    assert_eq!(ids[2], Bson::String("x".into()));

    let o = update(
        &k,
        a,
        "/tables/shop/users",
        doc! {"_id": 1},
        doc! {"$set": {"age": 36}},
        false,
        false,
    )
    .await;
    assert_eq!((o.matched, o.modified), (1, 1));
    let o = update(
        &k,
        a,
        "/tables/shop/users",
        doc! {"_id": 1},
        doc! {"$set": {"age": 36}},
        false,
        false,
    )
    .await;
    assert_eq!(
        (o.matched, o.modified),
        (1, 0),
        "an update that changes nothing"
    );
    let o = update(
        &k,
        a,
        "/tables/shop/users",
        doc! {"name": "zoe"},
        doc! {"$set": {"age": 1}},
        false,
        true,
    )
    .await;
    assert_eq!(o.matched, 0);
    let id = o.upserted.expect("upserted");
    let zoe = k
        .tables
        .select(a, &t, &filter(doc! {"_id": id}), 0, 0)
        .await
        .unwrap();
    assert_eq!(zoe[0].1.get_str("name").ok(), Some("zoe"));
    assert_eq!(zoe[0].1.get_i32("age").ok(), Some(1));

    let gone = k
        .tables
        .delete(a, &t, &filter(doc! {"_id": {"$in": [1, 2]}}), false)
        .await
        .unwrap();
    assert_eq!(gone.len(), 2);
    let (n, _) = k.tables.stats(a, &t).await.unwrap();
    assert_eq!(n, 3);
    assert!(k.tables.drop_table(a, "/tables/shop/users").await.unwrap());
    let e = k
        .tables
        .open(a, "/tables/shop/users", Right::Read)
        .await
        .unwrap_err();
    assert_eq!(e.code, codes::NAMESPACE_NOT_FOUND);
}

#[tokio::test]
async fn only_those_the_table_allows_read_or_write_it() {
    let k = kernel().await;
    let alice = k.user("alice").await;
    let bob = k.user("bob").await;
    // Anyone may make a database under the root; alice owns hers.
    let t = k
        .tables
        .open_or_create(&alice, "/tables/a/notes")
        .await
        .unwrap();
    k.tables
        .insert(&alice, &t, vec![doc! {"_id": 1}], true)
        .await
        .unwrap();
    let e = k
        .tables
        .open(&bob, "/tables/a/notes", Right::Read)
        .await
        .unwrap_err();
    assert_eq!(e.code, codes::UNAUTHORIZED, "{e:?}");
    let e = k
        .tables
        .open(&bob, "/tables/a/notes", Right::Write)
        .await
        .unwrap_err();
    assert_eq!(e.code, codes::UNAUTHORIZED, "{e:?}");
    // Nor may bob add a table to alice's database.
    let e = k
        .tables
        .create(&bob, "/tables/a/other", true)
        .await
        .unwrap_err();
    assert_eq!(e.code, codes::UNAUTHORIZED, "{e:?}");
    // Once the read ACE names him, bob reads, and still may not write.
    k.tables
        .configure(&alice, "/tables/a/notes", |c| {
            c.read_ace = Some("u:bob".into())
        })
        .await
        .unwrap();
    let t = k
        .tables
        .open(&bob, "/tables/a/notes", Right::Read)
        .await
        .unwrap();
    let docs = k
        .tables
        .select(&bob, &t, &filter(doc! {}), 0, 0)
        .await
        .unwrap();
    assert_eq!(docs.len(), 1);
    let e = k
        .tables
        .insert(&bob, &t, vec![doc! {"_id": 2}], true)
        .await
        .unwrap_err();
    assert_eq!(e.code, codes::UNAUTHORIZED);
    // Only the admin right changes the settings or drops the table.
    let e = k
        .tables
        .configure(&bob, "/tables/a/notes", |c| {
            c.write_ace = Some("u:bob".into())
        })
        .await
        .unwrap_err();
    assert_eq!(e.code, codes::UNAUTHORIZED);
    let e = k
        .tables
        .drop_table(&bob, "/tables/a/notes")
        .await
        .unwrap_err();
    assert_eq!(e.code, codes::UNAUTHORIZED);
}

#[tokio::test]
async fn bad_documents_are_refused_and_nothing_else_changes() {
    let k = kernel().await;
    let a = &k.admin;
    let t = k.tables.create(a, "/tables/db/c", true).await.unwrap();
    let mut deep = doc! {"x": 1};
    for _ in 0..120 {
        deep = doc! {"d": deep};
    }
    let out = k
        .tables
        .insert(
            a,
            &t,
            vec![
                doc! {"_id": [1, 2]},
                // `$` names are stored (MongoDB 5.0+), but not inside _id.
                doc! {"_id": {"$bad": 1}},
                deep,
                doc! {"_id": 9},
            ],
            false,
        )
        .await
        .unwrap();
    assert_eq!(out.n, 1);
    let codes_seen: Vec<i32> = out.errors.iter().map(|e| e.error.code).collect();
    assert_eq!(
        codes_seen,
        vec![
            codes::INVALID_ID_FIELD,
            codes::DOLLAR_PREFIXED_FIELD_NAME,
            15
        ]
    );
    // An update may not change _id.
    let spec = Update::parse(&doc! {"_id": 10, "v": 1}, &[]).unwrap();
    let change = move |d: &mut Document, ctx: &ApplyContext| spec.apply(d, ctx);
    let q = doc! {"_id": 9};
    let e = k
        .tables
        .update(
            a,
            &t,
            &filter(q.clone()),
            &q,
            &change,
            false,
            false,
            bson::DateTime::from_millis(0),
            false,
            false,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, codes::IMMUTABLE_FIELD);
    let docs = k
        .tables
        .select(a, &t, &filter(doc! {}), 0, 0)
        .await
        .unwrap();
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].1, doc! {"_id": 9});
}

#[tokio::test]
async fn unique_indexes_hold_across_inserts_updates_and_builds() {
    let k = kernel().await;
    let a = &k.admin;
    let path = "/tables/db/people";
    let t = k.tables.create(a, path, true).await.unwrap();
    k.tables
        .insert(
            a,
            &t,
            vec![
                doc! {"_id": 1, "email": "a@x"},
                doc! {"_id": 2, "email": "b@x"},
            ],
            true,
        )
        .await
        .unwrap();
    let (before, after) = k
        .tables
        .create_indexes(a, path, &[doc! {"key": {"email": 1}, "unique": true}])
        .await
        .unwrap();
    assert_eq!((before, after), (1, 2));
    // The same spec again is already there.
    let (before, after) = k
        .tables
        .create_indexes(a, path, &[doc! {"key": {"email": 1}, "unique": true}])
        .await
        .unwrap();
    assert_eq!((before, after), (2, 2));
    let t = k.tables.open(a, path, Right::Write).await.unwrap();
    assert!(t.config.indexes[0].ready);
    // A duplicate email fails alone; in one batch too.
    let out = k
        .tables
        .insert(
            a,
            &t,
            vec![
                doc! {"_id": 3, "email": "a@x"},
                doc! {"_id": 4, "email": "c@x"},
                doc! {"_id": 5, "email": "c@x"},
            ],
            false,
        )
        .await
        .unwrap();
    assert_eq!(out.n, 1);
    let failed: Vec<usize> = out.errors.iter().map(|e| e.index).collect();
    assert_eq!(failed, vec![0, 2]);
    assert!(out
        .errors
        .iter()
        .all(|e| e.error.code == codes::DUPLICATE_KEY));
    assert!(
        out.errors[0].error.message.contains("email_1"),
        "{:?}",
        out.errors[0]
    );
    // An update onto a taken email is refused; onto a free one it moves the entry.
    let e = {
        let spec = Update::parse(&doc! {"$set": {"email": "b@x"}}, &[]).unwrap();
        let change = move |d: &mut Document, ctx: &ApplyContext| spec.apply(d, ctx);
        let q = doc! {"_id": 1};
        k.tables
            .update(
                a,
                &t,
                &filter(q.clone()),
                &q,
                &change,
                false,
                false,
                bson::DateTime::from_millis(0),
                false,
                false,
            )
            .await
            .unwrap_err()
    };
    assert_eq!(e.code, codes::DUPLICATE_KEY);
    let o = update(
        &k,
        a,
        path,
        doc! {"_id": 1},
        doc! {"$set": {"email": "z@x"}},
        false,
        false,
    )
    .await;
    assert_eq!(o.modified, 1);
    // a@x is free again.
    let out = k
        .tables
        .insert(a, &t, vec![doc! {"_id": 6, "email": "a@x"}], true)
        .await
        .unwrap();
    assert_eq!((out.n, out.errors.len()), (1, 0));
    // Deleting frees the entry too.
    k.tables
        .delete(a, &t, &filter(doc! {"_id": 6}), true)
        .await
        .unwrap();
    let out = k
        .tables
        .insert(a, &t, vec![doc! {"_id": 7, "email": "a@x"}], true)
        .await
        .unwrap();
    assert_eq!((out.n, out.errors.len()), (1, 0));

    // A unique index the documents already violate is not made.
    k.tables
        .insert(
            a,
            &t,
            vec![
                doc! {"_id": 8, "team": "red"},
                doc! {"_id": 9, "team": "red"},
            ],
            true,
        )
        .await
        .unwrap();
    let e = k
        .tables
        .create_indexes(a, path, &[doc! {"key": {"team": 1}, "unique": true}])
        .await
        .unwrap_err();
    assert_eq!(e.code, codes::DUPLICATE_KEY);
    let t = k.tables.open(a, path, Right::Write).await.unwrap();
    assert_eq!(t.config.indexes.len(), 1, "the failed index was removed");
    // Dropped, the unique index no longer refuses.
    let (had, dropped) = k
        .tables
        .drop_indexes(a, path, |i| i.name == "email_1")
        .await
        .unwrap();
    assert_eq!((had, dropped), (2, 1));
    let t = k.tables.open(a, path, Right::Write).await.unwrap();
    let out = k
        .tables
        .insert(a, &t, vec![doc! {"_id": 10, "email": "a@x"}], true)
        .await
        .unwrap();
    assert_eq!((out.n, out.errors.len()), (1, 0));
}

#[tokio::test]
async fn every_committed_change_is_in_the_change_log_in_commit_order() {
    use berth_docs::changes::{OpType, Position};
    let k = kernel().await;
    let a = &k.admin;
    let t = k.tables.open_or_create(a, "/tables/db/log").await.unwrap();
    let vol = t.vol.id;
    let start = k.tables.changes_now(vol).await.unwrap();
    let docs = vec![doc! {"_id": 1, "v": 1}, doc! {"_id": 2, "v": 2}];
    k.tables.insert(a, &t, docs, true).await.unwrap();
    // A duplicate is refused and leaves no record.
    let dup = k
        .tables
        .insert(a, &t, vec![doc! {"_id": 1}], true)
        .await
        .unwrap();
    assert_eq!(dup.errors.len(), 1);
    update(
        &k,
        a,
        "/tables/db/log",
        doc! {"_id": 1},
        doc! {"$set": {"v": 5}},
        false,
        false,
    )
    .await;
    k.tables
        .delete(a, &t, &filter(doc! {"_id": 2}), true)
        .await
        .unwrap();
    let (records, reached) = k.tables.changes_after(vol, start, 100).await.unwrap();
    let seen: Vec<_> = records
        .iter()
        .map(|(_, r)| (r.op, r.id.clone().unwrap()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (OpType::Insert, Bson::Int32(1)),
            (OpType::Insert, Bson::Int32(2)),
            (OpType::Update, Bson::Int32(1)),
            (OpType::Delete, Bson::Int32(2)),
        ]
    );
    // The two inserts went in one transaction: one index, two places.
    assert_eq!(records[0].0.index, records[1].0.index);
    assert!(records.windows(2).all(|w| w[0].0 < w[1].0));
    let upd = &records[2].1;
    assert_eq!(upd.doc, Some(doc! {"_id": 1, "v": 5}));
    assert_eq!(
        upd.update
            .as_ref()
            .unwrap()
            .get_document("updatedFields")
            .unwrap(),
        &doc! {"v": 5}
    );
    assert_eq!(upd.path, "/tables/db/log");
    // Reading on from where the read reached gives nothing new, then the next change.
    let (none, again) = k.tables.changes_after(vol, reached, 100).await.unwrap();
    assert!(none.is_empty() && again >= reached);
    k.tables
        .insert(a, &t, vec![doc! {"_id": 3}], true)
        .await
        .unwrap();
    let (next, _) = k.tables.changes_after(vol, again, 100).await.unwrap();
    assert_eq!(next.len(), 1);
    // A page of one reaches its record, not past it.
    let (one, at) = k.tables.changes_after(vol, start, 1).await.unwrap();
    assert_eq!(at, one[0].0);
    // Trimming removes the oldest records and remembers where it cut.
    assert_eq!(k.tables.changes_trimmed(vol).await.unwrap(), None);
    let later = bson::DateTime::from_millis(bson::DateTime::now().timestamp_millis() + 60_000);
    let n = k.tables.trim_changes(vol, later, None, 2).await.unwrap();
    assert_eq!(n, 2);
    assert_eq!(
        k.tables.changes_trimmed(vol).await.unwrap(),
        Some(records[1].0)
    );
    let (left, _) = k
        .tables
        .changes_after(vol, Position::default(), 100)
        .await
        .unwrap();
    assert_eq!(left.len(), 3);
    // Nothing newer than the cut-off is trimmed.
    let earlier = bson::DateTime::from_millis(0);
    assert_eq!(
        k.tables
            .trim_changes(vol, earlier, None, 100)
            .await
            .unwrap(),
        0
    );
    // A drop is recorded too.
    assert!(k.tables.drop_table(a, "/tables/db/log").await.unwrap());
    let (last, _) = k
        .tables
        .changes_after(vol, Position::default(), 100)
        .await
        .unwrap();
    assert_eq!(last.last().unwrap().1.op, OpType::Drop);
}

#[tokio::test]
async fn a_retried_write_is_answered_from_its_mark_and_not_applied_again() {
    use berth_docs::retry::Stmt;
    let k = kernel().await;
    let a = &k.admin;
    let t = k
        .tables
        .create(a, "/tables/shop/retry", true)
        .await
        .unwrap();
    let stmt = |txn, index| Stmt {
        lsid: b"session-1",
        txn_number: txn,
        index,
        image: false,
    };
    let count = |k: &Kernel| {
        let t = t.clone();
        let tables = k.tables.clone();
        let a = a.clone();
        async move {
            tables
                .select(&a, &t, &filter(doc! {}), 0, 0)
                .await
                .unwrap()
                .len()
        }
    };

    // An insert with a generated _id, sent twice as the same statements:
    // the second try inserts nothing more and still reports both.
    let docs = vec![doc! {"v": 1}, doc! {"v": 2}];
    let out = k
        .tables
        .insert_retryable(a, &t, docs.clone(), true, Some(stmt(1, 0)))
        .await
        .unwrap();
    assert_eq!(out.n, 2);
    let again = k
        .tables
        .insert_retryable(a, &t, docs.clone(), true, Some(stmt(1, 0)))
        .await
        .unwrap();
    assert_eq!((again.n, again.errors.len()), (2, 0));
    assert_eq!(count(&k).await, 2);
    // A new txnNumber is a new write.
    k.tables
        .insert_retryable(a, &t, vec![doc! {"v": 3}], true, Some(stmt(2, 0)))
        .await
        .unwrap();
    assert_eq!(count(&k).await, 3);

    // $inc retried: applied once, the retry answers the first outcome.
    k.tables
        .insert(a, &t, vec![doc! {"_id": "c", "n": 0}], true)
        .await
        .unwrap();
    let spec = Update::parse(&doc! {"$inc": {"n": 1}}, &[]).unwrap();
    let change = move |d: &mut Document, ctx: &ApplyContext| spec.apply(d, ctx);
    let q = doc! {"_id": "c"};
    for _ in 0..2 {
        let o = k
            .tables
            .update_retryable(
                a,
                &t,
                &filter(q.clone()),
                &q,
                &change,
                false,
                bson::DateTime::now(),
                false,
                false,
                stmt(3, 1),
            )
            .await
            .unwrap();
        assert_eq!((o.matched, o.modified), (1, 1));
    }
    let c = k
        .tables
        .select(a, &t, &filter(q.clone()), 0, 0)
        .await
        .unwrap();
    assert_eq!(c[0].1.get_i32("n").unwrap(), 1);

    // An upsert retried reports the same upserted _id and inserts once.
    let q = doc! {"name": "new"};
    let mut ids = vec![];
    for _ in 0..2 {
        let o = k
            .tables
            .update_retryable(
                a,
                &t,
                &filter(q.clone()),
                &q,
                &change,
                true,
                bson::DateTime::now(),
                false,
                false,
                stmt(4, 0),
            )
            .await
            .unwrap();
        ids.push(o.upserted.expect("upserted"));
    }
    assert_eq!(ids[0], ids[1]);
    assert_eq!(count(&k).await, 5);

    // A delete of one document retried deletes one, not two.
    for _ in 0..2 {
        let (n, _) = k
            .tables
            .delete_one_retryable(a, &t, &filter(doc! {"v": {"$exists": true}}), stmt(5, 0))
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
    assert_eq!(count(&k).await, 4);

    // findAndModify keeps the document it returned: a retry returns the
    // same after-image although the document has not changed again.
    let q = doc! {"_id": "c"};
    let fam = Stmt {
        image: true,
        ..stmt(6, 0)
    };
    for _ in 0..2 {
        let o = k
            .tables
            .update_retryable(
                a,
                &t,
                &filter(q.clone()),
                &q,
                &change,
                false,
                bson::DateTime::now(),
                false,
                true,
                fam,
            )
            .await
            .unwrap();
        assert_eq!(o.document, Some(doc! {"_id": "c", "n": 2}));
    }
    // And a removal the document it removed.
    let gone = Stmt {
        image: true,
        ..stmt(7, 0)
    };
    for _ in 0..2 {
        let (n, d) = k
            .tables
            .delete_one_retryable(a, &t, &filter(q.clone()), gone)
            .await
            .unwrap();
        assert_eq!((n, d), (1, Some(doc! {"_id": "c", "n": 2})));
    }
    assert_eq!(count(&k).await, 3);

    // The session's later number removed the earlier marks; only the
    // last one's are left, and a sweep far in the future removes them.
    let removed = k
        .tables
        .trim_retry_marks(t.vol.id, bson::DateTime::from_millis(i64::MAX))
        .await
        .unwrap();
    assert_eq!(removed, 1);
}

/// Writes raw keys into a table's shard, behind the table service's back
/// (what a bug or a lost write would leave): `Some` puts, `None` deletes.
async fn raw_write(
    k: &Kernel,
    t: &berth_docs::table::TableRef,
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
) {
    let mut tx = k.meta.router().begin(t.vol.shard_id).await.unwrap();
    for (key, value) in writes {
        match value {
            Some(v) => tx.put(key, v),
            None => tx.delete(key),
        }
    }
    assert!(matches!(
        tx.commit().await.unwrap(),
        berth_meta::Commit::Done(_)
    ));
}

fn id_enc(id: impl Into<Bson>) -> Vec<u8> {
    let mut out = Vec::new();
    berth_docs::keys::encode_value(&id.into(), &mut out);
    out
}

#[tokio::test]
async fn check_finds_missing_stale_dangling_duplicate_and_orphan_entries() {
    use berth_docs::check::ProblemKind;
    use berth_docs::table::entry_keys;
    let k = kernel().await;
    let a = &k.admin;
    let path = "/tables/db/checked";
    let t = k.tables.create(a, path, true).await.unwrap();
    // More than a page of documents (256), a unique and a multikey index.
    let docs: Vec<Document> = (0..300)
        .map(
            |i| doc! {"_id": i, "email": format!("u{i}@x"), "tags": [format!("t{}", i % 7), "all"]},
        )
        .collect();
    k.tables.insert(a, &t, docs, true).await.unwrap();
    k.tables
        .create_indexes(
            a,
            path,
            &[
                doc! {"key": {"email": 1}, "unique": true},
                doc! {"key": {"tags": 1}},
            ],
        )
        .await
        .unwrap();
    let t = k.tables.open(a, path, Right::Read).await.unwrap();
    let healthy = k.tables.check(a, &t).await.unwrap();
    assert!(healthy.ok(), "{healthy:?}");
    assert_eq!(healthy.documents, 300);
    let entries: Vec<(&str, u64)> = healthy
        .indexes
        .iter()
        .map(|i| (i.name.as_str(), i.entries))
        .collect();
    assert_eq!(entries, vec![("email_1", 300), ("tags_1", 600)]);

    let (email, tags) = (&t.config.indexes[0], &t.config.indexes[1]);
    let keys_of = |def, d: &Document, id: Bson| entry_keys(&t, def, d, &id_enc(id)).unwrap();
    // Doc 5 loses its email entry; doc 7 gets a tags entry it does not
    // give (stale); an email entry points at no document (dangling); a
    // document written without its entries takes doc 1's email
    // (duplicate, and its tags entries are missing); an entry of an index
    // the table does not have; a document that does not decode.
    let d5 = doc! {"_id": 5, "email": "u5@x"};
    let stale = keys_of(tags, &doc! {"tags": "zzz"}, Bson::Int32(7));
    let dangling = keys_of(email, &doc! {"email": "ghost@x"}, Bson::Int32(9999));
    let dup = doc! {"_id": 1000, "email": "u1@x", "tags": ["x"]};
    let orphan =
        berth_store::keys::Key::new(t.vol.id, berth_store::keys::Kind::TableIndex, t.entry.ino)
            .u64(77)
            .bytes(b"k")
            .build();
    let mut writes = vec![
        (keys_of(email, &d5, Bson::Int32(5)).remove(0), None),
        (stale[0].clone(), Some(id_enc(7))),
        (dangling[0].clone(), Some(id_enc(9999))),
        (
            t.doc_key(&Bson::Int32(1000)),
            Some(berth_docs::table::encode_doc(&dup).unwrap()),
        ),
        (orphan, Some(id_enc(3))),
        (t.doc_key(&Bson::Int32(2000)), Some(vec![1, 0xff, 0xff])),
    ];
    raw_write(&k, &t, writes.clone()).await;
    let r = k.tables.check(a, &t).await.unwrap();
    assert!(!r.ok());
    assert_eq!(r.documents, 302);
    assert_eq!(
        (r.bad_documents, r.orphan_entries, r.unindexable),
        (1, 1, 0),
        "{r:?}"
    );
    let counts = |name: &str| {
        let i = r.indexes.iter().find(|i| i.name == name).unwrap();
        (i.missing, i.dangling, i.stale, i.duplicates, i.malformed)
    };
    assert_eq!(counts("email_1"), (1, 1, 0, 1, 0), "{r:?}");
    assert_eq!(counts("tags_1"), (1, 0, 1, 0, 0), "{r:?}");
    assert_eq!(r.problem_count, 7);
    assert_eq!(r.problems.len(), 7);
    let has = |kind: ProblemKind, index: Option<&str>, id: &str| {
        r.problems
            .iter()
            .any(|p| p.kind == kind && p.index.as_deref() == index && p.id == id)
    };
    assert!(has(ProblemKind::Missing, Some("email_1"), "5"), "{r:?}");
    assert!(has(ProblemKind::Stale, Some("tags_1"), "7"), "{r:?}");
    assert!(
        has(ProblemKind::Duplicate, Some("email_1"), "1000"),
        "{r:?}"
    );
    assert!(has(ProblemKind::Missing, Some("tags_1"), "1000"), "{r:?}");
    assert!(r.problems.iter().any(|p| p.kind == ProblemKind::Dangling
        && p.index.as_deref() == Some("email_1")
        && p.id.starts_with("key:")));
    assert!(r
        .problems
        .iter()
        .any(|p| p.kind == ProblemKind::Orphan && p.detail.contains("77")));
    assert!(r
        .problems
        .iter()
        .any(|p| p.kind == ProblemKind::BadDocument));

    // Undone, the table checks clean again.
    for w in &mut writes {
        w.1 = None;
    }
    writes[0].1 = Some(id_enc(5));
    raw_write(&k, &t, writes).await;
    let r = k.tables.check(a, &t).await.unwrap();
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.documents, 300);

    // The admin right is needed (the table's owner has it; another user not).
    let bob = k.user("bob").await;
    let e = k.tables.check(&bob, &t).await.unwrap_err();
    assert_eq!(e.code, codes::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_nothing_for_writes_in_flight() {
    // Updates moving unique and multikey entries while the check reads:
    // its first looks may catch a document and its entries at different
    // moments, and nothing may be reported for that.
    let k = kernel().await;
    let a = &k.admin;
    let path = "/tables/db/busy";
    let t = k.tables.create(a, path, true).await.unwrap();
    let docs: Vec<Document> = (0..200)
        .map(|i| doc! {"_id": i, "email": format!("u{i}@x"), "n": 0})
        .collect();
    k.tables.insert(a, &t, docs, true).await.unwrap();
    k.tables
        .create_indexes(
            a,
            path,
            &[
                doc! {"key": {"email": 1}, "unique": true},
                doc! {"key": {"n": 1}},
            ],
        )
        .await
        .unwrap();
    let t = k.tables.open(a, path, Right::Write).await.unwrap();
    let writer = {
        let (tables, a, t) = (k.tables.clone(), a.clone(), t.clone());
        tokio::spawn(async move {
            for round in 1..=3 {
                for i in 0..200 {
                    let spec = Update::parse(
                        &doc! {"$set": {"email": format!("u{i}-{round}@x"), "n": round}},
                        &[],
                    )
                    .unwrap();
                    let change = move |d: &mut Document, ctx: &ApplyContext| spec.apply(d, ctx);
                    let q = doc! {"_id": i};
                    tables
                        .update(
                            &a,
                            &t,
                            &filter(q.clone()),
                            &q,
                            &change,
                            false,
                            false,
                            bson::DateTime::from_millis(0),
                            false,
                            false,
                        )
                        .await
                        .unwrap();
                }
            }
        })
    };
    let mut checks = 0;
    while !writer.is_finished() {
        let r = k.tables.check(a, &t).await.unwrap();
        assert!(r.ok(), "a clean table under writes: {r:?}");
        checks += 1;
        assert!(checks < 10_000, "the writer does not finish");
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    assert!(checks > 0);
    assert!(k.tables.check(a, &t).await.unwrap().ok());
}

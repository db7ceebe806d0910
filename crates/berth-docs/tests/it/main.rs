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

mod usage;

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
    assert_eq!(gone.0, 2);
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

    // Through the namespace (`berth mv`, `berth rm`, a rename over a
    // table), each change's record commits with it, and a table a rename
    // replaces goes with its documents.
    let ns = k.tables.namespace().clone();
    let x = k.tables.open_or_create(a, "/tables/db/x").await.unwrap();
    let y = k.tables.open_or_create(a, "/tables/db/y").await.unwrap();
    k.tables
        .insert(a, &x, vec![doc! {"_id": "x"}], true)
        .await
        .unwrap();
    k.tables
        .insert(a, &y, vec![doc! {"_id": "y"}], true)
        .await
        .unwrap();
    let from = k.tables.changes_now(vol).await.unwrap();
    ns.rename(a, "/tables/db/x", "/tables/db/y", false)
        .await
        .unwrap();
    ns.rename(a, "/tables/db/y", "/tables/db/z", false)
        .await
        .unwrap();
    ns.remove(a, "/tables/db/z", false).await.unwrap();
    let (records, _) = k.tables.changes_after(vol, from, 100).await.unwrap();
    let got: Vec<_> = records
        .iter()
        .map(|(_, r)| (r.op, r.table, r.path.clone(), r.to.clone()))
        .collect();
    let (xi, yi) = (x.entry.ino, y.entry.ino);
    assert_eq!(
        got,
        vec![
            (OpType::Drop, yi, "/tables/db/y".to_string(), None),
            (
                OpType::Rename,
                xi,
                "/tables/db/x".to_string(),
                Some("/tables/db/y".to_string())
            ),
            (
                OpType::Rename,
                xi,
                "/tables/db/y".to_string(),
                Some("/tables/db/z".to_string())
            ),
            (OpType::Drop, xi, "/tables/db/z".to_string(), None),
        ]
    );
    let (left, _) = k.tables.page(a, &y, None, 10).await.unwrap();
    assert!(left.is_empty(), "the replaced table's documents stayed");
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

#[tokio::test]
async fn a_transaction_reads_one_snapshot_and_commits_all_or_nothing() {
    use berth_docs::txn::Txn;
    let k = kernel().await;
    let a = &k.admin;
    let t = k
        .tables
        .create(a, "/tables/bank/accounts", true)
        .await
        .unwrap();
    k.tables
        .insert(
            a,
            &t,
            vec![doc! {"_id": "alice", "n": 100}, doc! {"_id": "bob", "n": 0}],
            true,
        )
        .await
        .unwrap();
    let all = |t: berth_docs::table::TableRef| {
        let tables = k.tables.clone();
        let a = a.clone();
        async move {
            tables
                .select(&a, &t, &filter(doc! {}), 0, 0)
                .await
                .unwrap()
                .into_iter()
                .map(|(_, d, _)| d)
                .collect::<Vec<_>>()
        }
    };
    let inc = |by: i32| {
        let spec = Update::parse(&doc! {"$inc": {"n": by}}, &[]).unwrap();
        move |d: &mut Document, ctx: &ApplyContext| spec.apply(d, ctx)
    };
    let move_money = |t: &berth_docs::table::TableRef, from: &str, to: &str, n: i32| {
        let tables = k.tables.clone();
        let a = a.clone();
        let t = t.clone();
        let (from, to) = (from.to_string(), to.to_string());
        async move {
            for (id, by) in [(from, -n), (to, n)] {
                let q = doc! {"_id": id};
                let o = tables
                    .update(
                        &a,
                        &t,
                        &filter(q.clone()),
                        &q,
                        &inc(by),
                        false,
                        false,
                        bson::DateTime::now(),
                        false,
                        false,
                    )
                    .await
                    .unwrap();
                assert_eq!(o.matched, 1);
            }
        }
    };

    // Writes in a transaction: seen inside, not outside, until commit.
    let txn = Txn::new();
    let mut in_txn = t.clone();
    in_txn.txn = Some(txn.clone());
    move_money(&in_txn, "alice", "bob", 30).await;
    k.tables
        .insert(a, &in_txn, vec![doc! {"_id": "carol", "n": 5}], true)
        .await
        .unwrap();
    assert_eq!(
        all(in_txn.clone()).await,
        vec![
            doc! {"_id": "alice", "n": 70},
            doc! {"_id": "bob", "n": 30},
            doc! {"_id": "carol", "n": 5}
        ]
    );
    assert_eq!(all(t.clone()).await.len(), 2);
    assert_eq!(all(t.clone()).await[0], doc! {"_id": "alice", "n": 100});
    txn.commit().await.unwrap();
    assert_eq!(
        all(t.clone()).await,
        vec![
            doc! {"_id": "alice", "n": 70},
            doc! {"_id": "bob", "n": 30},
            doc! {"_id": "carol", "n": 5}
        ]
    );
    // Ended: nothing more runs in it.
    let err = k
        .tables
        .insert(a, &in_txn, vec![doc! {"_id": "late"}], true)
        .await
        .unwrap_err();
    assert_eq!(err.code, codes::NO_SUCH_TRANSACTION);

    // Snapshot: a write committed after the transaction's first read is
    // not seen by it, and a transaction writing the same document loses.
    let txn = Txn::new();
    let mut in_txn = t.clone();
    in_txn.txn = Some(txn.clone());
    let before = all(in_txn.clone()).await;
    move_money(&t, "alice", "bob", 1).await; // committed outside
    assert_eq!(all(in_txn.clone()).await, before);
    move_money(&in_txn, "alice", "carol", 10).await;
    let err = txn.commit().await.unwrap_err();
    assert_eq!(err.code, codes::WRITE_CONFLICT);
    assert_eq!(
        all(t.clone()).await,
        vec![
            doc! {"_id": "alice", "n": 69},
            doc! {"_id": "bob", "n": 31},
            doc! {"_id": "carol", "n": 5}
        ]
    );

    // Disjoint writes both commit; an abort leaves nothing.
    let (t1, t2) = (Txn::new(), Txn::new());
    let (mut a1, mut a2) = (t.clone(), t.clone());
    a1.txn = Some(t1.clone());
    a2.txn = Some(t2.clone());
    k.tables
        .insert(a, &a1, vec![doc! {"_id": "d1"}], true)
        .await
        .unwrap();
    k.tables
        .insert(a, &a2, vec![doc! {"_id": "d2"}], true)
        .await
        .unwrap();
    t1.commit().await.unwrap();
    t2.commit().await.unwrap();
    let t3 = Txn::new();
    let mut a3 = t.clone();
    a3.txn = Some(t3.clone());
    k.tables
        .delete(a, &a3, &filter(doc! {}), false)
        .await
        .unwrap();
    assert!(all(a3.clone()).await.is_empty());
    t3.abort().await;
    assert_eq!(all(t.clone()).await.len(), 5);
}

#[tokio::test]
async fn a_table_created_in_a_transaction_exists_once_it_commits() {
    use berth_docs::txn::Txn;
    let k = kernel().await;
    let a = &k.admin;
    let ns = k.tables.namespace().clone();
    let select = |t: berth_docs::table::TableRef| {
        let tables = k.tables.clone();
        let a = a.clone();
        async move {
            let rows = tables.select(&a, &t, &filter(doc! {}), 0, 0).await.unwrap();
            rows.into_iter().map(|(_, d, _)| d).collect::<Vec<_>>()
        }
    };
    let missing = |path: &'static str| {
        let tables = k.tables.clone();
        let a = a.clone();
        async move {
            let e = tables.open(&a, path, Right::Read).await.unwrap_err();
            assert_eq!(e.code, codes::NAMESPACE_NOT_FOUND, "{path}: {e:?}");
        }
    };

    // Two tables of a new database, made and written in one transaction:
    // seen by it (opened again by path), by nobody else until it commits.
    let txn = Txn::new();
    for (path, id) in [("/tables/newdb/x", 1), ("/tables/newdb/y", 2)] {
        let t = k.tables.open_or_create_in(a, path, &txn).await.unwrap();
        k.tables
            .insert(a, &t, vec![doc! {"_id": id}], true)
            .await
            .unwrap();
    }
    let x = k
        .tables
        .open_in(a, "/tables/newdb/x", Right::Read, &txn)
        .await
        .unwrap();
    assert_eq!(select(x).await, vec![doc! {"_id": 1}]);
    let again = k
        .tables
        .open_or_create_in(a, "/tables//newdb/y", &txn)
        .await
        .unwrap();
    assert_eq!(select(again).await, vec![doc! {"_id": 2}]);
    missing("/tables/newdb/x").await;
    assert!(ns.stat(a, "/tables/newdb").await.is_err());
    txn.commit().await.unwrap();
    for (path, id) in [("/tables/newdb/x", 1), ("/tables/newdb/y", 2)] {
        let t = k.tables.open(a, path, Right::Read).await.unwrap();
        assert_eq!(select(t).await, vec![doc! {"_id": id}]);
    }

    // Aborted: neither the table nor its new database stays.
    let txn = Txn::new();
    let t = k
        .tables
        .open_or_create_in(a, "/tables/gone/t", &txn)
        .await
        .unwrap();
    k.tables
        .insert(a, &t, vec![doc! {"_id": 1}], true)
        .await
        .unwrap();
    txn.abort().await;
    missing("/tables/gone/t").await;
    assert!(ns.stat(a, "/tables/gone").await.is_err());

    // The same table created outside meanwhile: the commit conflicts and
    // the outside table is left as it was.
    let txn = Txn::new();
    let t = k
        .tables
        .open_or_create_in(a, "/tables/newdb/race", &txn)
        .await
        .unwrap();
    k.tables
        .insert(a, &t, vec![doc! {"_id": "in"}], true)
        .await
        .unwrap();
    let out = k
        .tables
        .create(a, "/tables/newdb/race", true)
        .await
        .unwrap();
    k.tables
        .insert(a, &out, vec![doc! {"_id": "out"}], true)
        .await
        .unwrap();
    assert_eq!(txn.commit().await.unwrap_err().code, codes::WRITE_CONFLICT);
    assert_eq!(select(out).await, vec![doc! {"_id": "out"}]);

    // Creating needs the write right where the table would be.
    let bob = k.user("bob").await;
    let txn = Txn::new();
    let e = k
        .tables
        .open_or_create_in(&bob, "/tables/newdb/bobs", &txn)
        .await
        .unwrap_err();
    assert_eq!(e.code, codes::UNAUTHORIZED, "{e:?}");
}

#[tokio::test]
async fn many_document_writes_and_counts_go_page_by_page() {
    let k = kernel().await;
    let a = &k.admin;
    let t = k.tables.create(a, "/tables/shop/many", true).await.unwrap();
    let docs: Vec<Document> = (0..700).map(|i| doc! {"_id": i, "v": i % 2}).collect();
    assert_eq!(k.tables.insert(a, &t, docs, true).await.unwrap().n, 700);
    let count = |f: Document, skip, limit| {
        let tables = k.tables.clone();
        let (a, t) = (a.clone(), t.clone());
        async move { tables.count(&a, &t, &filter(f), skip, limit).await.unwrap() }
    };
    assert_eq!(count(doc! {}, 0, 0).await, 700);
    assert_eq!(count(doc! {}, 650, 0).await, 50);
    assert_eq!(count(doc! {}, 10, 20).await, 20);
    assert_eq!(count(doc! {"v": 1}, 0, 0).await, 350);
    assert_eq!(count(doc! {"v": 1}, 340, 100).await, 10);
    assert_eq!(count(doc! {"_id": {"$in": [1, 2, 1000]}}, 0, 0).await, 2);

    // Every matching document is updated once, across pages.
    let o = update(
        &k,
        a,
        "/tables/shop/many",
        doc! {"v": 1},
        doc! {"$inc": {"n": 1}},
        true,
        false,
    )
    .await;
    assert_eq!((o.matched, o.modified), (350, 350));
    assert_eq!(count(doc! {"n": 1}, 0, 0).await, 350);
    assert_eq!(count(doc! {"n": 2}, 0, 0).await, 0);
    // A single-document update takes the first match only.
    let o = update(
        &k,
        a,
        "/tables/shop/many",
        doc! {"v": 1},
        doc! {"$inc": {"n": 1}},
        false,
        false,
    )
    .await;
    assert_eq!(o.matched, 1);
    assert_eq!(count(doc! {"n": 2}, 0, 0).await, 1);

    let (n, first) = k
        .tables
        .delete(a, &t, &filter(doc! {"v": 0}), false)
        .await
        .unwrap();
    assert_eq!((n, first), (350, Some(doc! {"_id": 0, "v": 0})));
    assert_eq!(count(doc! {}, 0, 0).await, 350);
    let (n, first) = k
        .tables
        .delete(a, &t, &filter(doc! {"_id": {"$in": [1, 2, 3]}}), false)
        .await
        .unwrap();
    assert_eq!((n, first.and_then(|d| d.get_i32("_id").ok())), (2, Some(1)));
}

/// The `_id`s of the documents matching `q`, through the index the planner
/// picks (it must pick one) and through a scan of the table, with the
/// entries the index scan examined.
async fn through_index_and_scan(
    k: &Kernel,
    t: &berth_docs::table::TableRef,
    q: Document,
    sort: Option<Document>,
) -> (Vec<Document>, Vec<Bson>, u64, berth_docs::plan::IndexPlan) {
    let a = &k.admin;
    let plan = berth_docs::plan::choose(&t.config.indexes, &q, sort.as_ref())
        .unwrap_or_else(|| panic!("{q}: no index chosen"));
    let f = filter(q.clone());
    let (docs, keys, _) = k
        .tables
        .index_scan(a, t, &plan, &f, None, usize::MAX)
        .await
        .unwrap();
    let mut got: Vec<Bson> = docs.iter().map(|d| d.get("_id").unwrap().clone()).collect();
    got.sort_by(berth_docs::order::compare);
    let mut want: Vec<Bson> = k
        .tables
        .select(a, t, &f, 0, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, d, _)| d.get("_id").unwrap().clone())
        .collect();
    want.sort_by(berth_docs::order::compare);
    assert_eq!(got, want, "{q} through {} ({:?})", plan.name, plan.bounds);
    (docs, want, keys, plan)
}

#[tokio::test]
async fn ranges_in_lists_and_regex_prefixes_through_indexes_find_what_a_scan_finds() {
    let k = kernel().await;
    let a = &k.admin;
    let path = "/tables/db/mixed";
    let t = k.tables.create(a, path, true).await.unwrap();
    // `v` of every kind (arrays too), `n` numbers only, `s` strings and
    // arrays of them, `g` a group.
    let kinds = |i: i32| -> Bson {
        match i % 12 {
            0 => Bson::Int32(i),
            1 => Bson::Double(f64::from(i) + 0.5),
            2 => Bson::Int64(i64::from(i)),
            3 => Bson::String(format!("s{i:03}")),
            4 => Bson::DateTime(bson::DateTime::from_millis(i64::from(i) * 1000)),
            5 => Bson::Array(vec![Bson::Int32(i), Bson::String(format!("a{i}"))]),
            6 => Bson::Null,
            7 => Bson::Boolean(i % 2 == 0),
            8 => Bson::Array(vec![Bson::Int32(i - 50), Bson::Int32(i + 50)]),
            9 => Bson::Double(f64::NAN),
            10 => Bson::Document(doc! {"x": i}),
            _ => Bson::Array(vec![]),
        }
    };
    let mut docs = Vec::new();
    for i in 0..240 {
        let mut d = doc! {"_id": i, "n": i, "g": format!("g{}", i % 4), "ts": 1000 - i};
        if i % 13 != 0 {
            d.insert("v", kinds(i));
        }
        let s = match i % 5 {
            0 => Bson::String(format!("abc{i}")),
            1 => Bson::String(format!("ab{i}")),
            2 => Bson::Array(vec![
                Bson::String(format!("x{i}")),
                Bson::String("abz".into()),
            ]),
            3 => Bson::Symbol(format!("abc-sym{i}")),
            _ => Bson::Int32(i),
        };
        d.insert("s", s);
        docs.push(d);
    }
    let out = k.tables.insert(a, &t, docs, true).await.unwrap();
    assert_eq!(out.n, 240);
    k.tables
        .create_indexes(
            a,
            path,
            &[
                doc! {"key": {"v": 1}},
                doc! {"key": {"n": 1}},
                doc! {"key": {"s": -1}},
                doc! {"key": {"g": 1, "ts": 1}},
            ],
        )
        .await
        .unwrap();
    let t = k.tables.open(a, path, Right::Read).await.unwrap();
    // Built over documents with arrays: `v` and `s` are multikey, `n` not.
    let mk: Vec<(String, bool)> = t
        .config
        .indexes
        .iter()
        .map(|d| (d.name.clone(), d.is_multikey(0)))
        .collect();
    assert_eq!(
        mk,
        vec![
            ("v_1".into(), true),
            ("n_1".into(), false),
            ("s_-1".into(), true),
            ("g_1_ts_1".into(), false),
        ]
    );
    let date = |s: i64| bson::DateTime::from_millis(s * 1000);
    for q in [
        doc! {"v": {"$gt": 100}},
        doc! {"v": {"$gte": 50, "$lt": 150}},
        doc! {"v": {"$lte": 60.5}},
        doc! {"v": {"$gt": "s1"}},
        doc! {"v": {"$lt": "s100"}},
        doc! {"v": {"$gte": date(0), "$lt": date(100)}},
        doc! {"v": {"$gt": false}},
        doc! {"v": {"$gt": 5, "$lt": "z"}},
        doc! {"v": {"$in": [0, 24, "s003", null, true, 2.5]}},
        doc! {"v": {"$in": [{"x": 10}, 96]}},
        doc! {"v": null},
        doc! {"v": {"$eq": 12}},
        doc! {"$and": [{"v": {"$gt": 10}}, {"v": {"$lt": 30}}]},
        doc! {"n": {"$gte": 10, "$lt": 20}},
        doc! {"n": {"$gt": 200}, "g": "g1"},
        doc! {"n": {"$in": [1, 5, 9, 1000]}},
        doc! {"$and": [{"n": {"$gt": 10}}, {"n": {"$lt": 30}}, {"n": {"$ne": 20}}]},
        doc! {"s": {"$regex": "^abc"}},
        doc! {"s": {"$regex": "^ab"}},
        doc! {"s": {"$in": [{"$regex": "^x1"}, "abz"]}},
        doc! {"s": {"$gte": "ab1", "$lt": "ab2"}},
        doc! {"s": {"$lt": 10}},
        doc! {"g": {"$in": ["g1", "g3"]}, "ts": {"$gt": 900}},
    ] {
        // `$in` of a regex is written as an operator document above only
        // for brevity: turn it into a regex value.
        let q = match q
            .get_document("s")
            .ok()
            .and_then(|s| s.get_array("$in").ok())
        {
            Some(items) => {
                let items: Vec<Bson> = items
                    .iter()
                    .map(|i| match i {
                        Bson::Document(d) => Bson::RegularExpression(bson::Regex {
                            pattern: d.get_str("$regex").unwrap().try_into().unwrap(),
                            options: "".try_into().unwrap(),
                        }),
                        v => v.clone(),
                    })
                    .collect();
                doc! {"s": {"$in": items}}
            }
            None => q,
        };
        through_index_and_scan(&k, &t, q, None).await;
    }
    // A range over a field without arrays reads only its entries.
    let (_, want, keys, plan) =
        through_index_and_scan(&k, &t, doc! {"n": {"$gte": 10, "$lt": 20}}, None).await;
    assert_eq!((want.len(), keys), (10, 10), "{:?}", plan.bounds);
    assert_eq!(plan.bounds, doc! {"n": ["[10, 20)"]});
    // Strings never come into a numeric range: $gt 100 on `v` reads only numbers.
    let (_, want, keys, _) = through_index_and_scan(&k, &t, doc! {"v": {"$gt": 100}}, None).await;
    assert!(
        keys as usize >= want.len() && keys < 100,
        "{keys} keys for {}",
        want.len()
    );
    // Sorted through the index: ranges in order, $in runs merged in order.
    let (docs, _, _, plan) = through_index_and_scan(
        &k,
        &t,
        doc! {"n": {"$gt": 100, "$lte": 130}},
        Some(doc! {"n": 1}),
    )
    .await;
    assert!(plan.provides_sort);
    let ns: Vec<i32> = docs.iter().map(|d| d.get_i32("n").unwrap()).collect();
    assert_eq!(ns, (101..=130).collect::<Vec<_>>());
    let (docs, _, _, plan) = through_index_and_scan(
        &k,
        &t,
        doc! {"g": {"$in": ["g2", "g0", "g3"]}},
        Some(doc! {"ts": 1}),
    )
    .await;
    assert!(plan.provides_sort && plan.merge);
    let ts: Vec<i32> = docs.iter().map(|d| d.get_i32("ts").unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");
    assert_eq!(ts.len(), 180);
    // A limit over the merged order stops early, with the least first.
    let f = filter(doc! {"g": {"$in": ["g2", "g0"]}});
    let (first, keys, _) = k
        .tables
        .index_scan(
            a,
            &t,
            &plan_of(&t, doc! {"g": {"$in": ["g2", "g0"]}}, doc! {"ts": 1}),
            &f,
            Some(3),
            usize::MAX,
        )
        .await
        .unwrap();
    let ts: Vec<i32> = first.iter().map(|d| d.get_i32("ts").unwrap()).collect();
    assert_eq!(ts, vec![762, 764, 766]);
    assert!(keys <= 4, "{keys}");

    // A document written with an array marks `n` multikey: its bounds are
    // no longer intersected, and the query still finds it.
    update(
        &k,
        a,
        path,
        doc! {"_id": 3},
        doc! {"$set": {"n": [-5, 500]}},
        false,
        false,
    )
    .await;
    let t = k.tables.open(a, path, Right::Read).await.unwrap();
    assert!(t.config.indexes[1].is_multikey(0));
    let (_, want, _, plan) =
        through_index_and_scan(&k, &t, doc! {"n": {"$gt": 100, "$lt": 102}}, None).await;
    assert!(want.contains(&Bson::Int32(3)), "{want:?} {:?}", plan.bounds);
    assert_eq!(want.len(), 2);
}

/// The `_id`s in the table, in `_id` order.
async fn ids(k: &Kernel, t: &berth_docs::table::TableRef) -> Vec<i32> {
    let all = k
        .tables
        .select(&k.admin, t, &filter(doc! {}), 0, 0)
        .await
        .unwrap();
    all.into_iter()
        .map(|(_, d, _)| d.get_i32("_id").unwrap())
        .collect()
}

fn plan_of(
    t: &berth_docs::table::TableRef,
    q: Document,
    sort: Document,
) -> berth_docs::plan::IndexPlan {
    berth_docs::plan::choose(&t.config.indexes, &q, Some(&sort)).unwrap()
}

#[tokio::test]
async fn ttl_indexes_expire_dated_documents_through_the_delete_path() {
    use berth_docs::changes::OpType;
    let k = kernel().await;
    let a = &k.admin;
    let path = "/tables/db/sessions";
    let t = k.tables.create(a, path, true).await.unwrap();
    let now = bson::DateTime::from_millis(10_000_000_000);
    let ago = |s: i64| bson::DateTime::from_millis(now.timestamp_millis() - s * 1000);
    k.tables
        .create_indexes(
            a,
            path,
            &[
                doc! {"key": {"at": 1}, "expireAfterSeconds": 60},
                doc! {"key": {"x": 1}},
            ],
        )
        .await
        .unwrap();
    let t = k.tables.open(a, &t.entry.path, Right::Write).await.unwrap();
    assert_eq!(
        t.config.indexes[0]
            .listed()
            .get_i32("expireAfterSeconds")
            .ok(),
        Some(60)
    );
    let docs = vec![
        doc! {"_id": 1, "x": 1, "at": ago(120)},
        doc! {"_id": 2, "x": 2, "at": ago(30)},
        doc! {"_id": 3, "x": 3, "at": [ago(10), ago(300)]},
        doc! {"_id": 4, "x": 4, "at": [ago(10), "old"]},
        doc! {"_id": 5, "x": 5, "at": "yesterday"},
        doc! {"_id": 6, "x": 6},
        doc! {"_id": 7, "x": 7, "at": 12},
        doc! {"_id": 8, "x": 8, "at": ago(600)},
    ];
    k.tables.insert(a, &t, docs, true).await.unwrap();
    let start = k.tables.changes_now(t.vol.id).await.unwrap();
    // At `now`: those with a date (or, in an array, some date) over 60 s old.
    assert_eq!(k.tables.expire_all(now).await, 3);
    assert_eq!(ids(&k, &t).await, vec![2, 4, 5, 6, 7]);
    // Through the delete path: the change log has the deletes, the other
    // index lost their entries.
    let (records, _) = k.tables.changes_after(t.vol.id, start, 100).await.unwrap();
    let mut deleted: Vec<Bson> = records
        .iter()
        .filter(|(_, r)| r.op == OpType::Delete && r.path == path)
        .map(|(_, r)| r.id.clone().unwrap())
        .collect();
    deleted.sort_by(berth_docs::order::compare);
    assert_eq!(
        deleted,
        vec![Bson::Int32(1), Bson::Int32(3), Bson::Int32(8)]
    );
    let (_, want, keys, _) = through_index_and_scan(&k, &t, doc! {"x": {"$gte": 0}}, None).await;
    assert_eq!((want.len(), keys), (5, 5));
    // Nothing more now; an hour on, the rest of the dated ones.
    assert_eq!(k.tables.expire_all(now).await, 0);
    let later = bson::DateTime::from_millis(now.timestamp_millis() + 3_600_000);
    assert_eq!(k.tables.expire_all(later).await, 2);
    assert_eq!(ids(&k, &t).await, vec![5, 6, 7]);

    // Renamed (as `berth mv` does: the namespace alone), the table is
    // still swept.
    let to = "/tables/db/sessions2";
    k.tables
        .namespace()
        .rename(a, path, to, true)
        .await
        .unwrap();
    let t = k.tables.open(a, to, Right::Write).await.unwrap();
    k.tables
        .insert(a, &t, vec![doc! {"_id": 9, "at": ago(61)}], true)
        .await
        .unwrap();
    assert_eq!(k.tables.expire_all(now).await, 1);
    let (records, _) = k.tables.changes_after(t.vol.id, start, 100).await.unwrap();
    assert!(records
        .iter()
        .any(|(_, r)| r.op == OpType::Delete && r.path == to && r.id == Some(Bson::Int32(9))));

    // So is it when the directory holding it moves.
    k.tables
        .namespace()
        .rename(a, "/tables/db", "/tables/db2", true)
        .await
        .unwrap();
    let to = "/tables/db2/sessions2";
    let t = k.tables.open(a, to, Right::Write).await.unwrap();
    k.tables
        .insert(a, &t, vec![doc! {"_id": 10, "at": ago(61)}], true)
        .await
        .unwrap();
    assert_eq!(k.tables.expire_all(now).await, 1);
    let (records, _) = k.tables.changes_after(t.vol.id, start, 100).await.unwrap();
    assert!(records
        .iter()
        .any(|(_, r)| r.op == OpType::Delete && r.path == to && r.id == Some(Bson::Int32(10))));

    // Dropped, the index expires nothing (and the sweep forgets the table).
    k.tables
        .drop_indexes(a, to, |i| i.name == "at_1")
        .await
        .unwrap();
    let t = k.tables.open(a, to, Right::Write).await.unwrap();
    k.tables
        .insert(a, &t, vec![doc! {"_id": 10, "at": ago(600)}], true)
        .await
        .unwrap();
    assert_eq!(k.tables.expire_all(later).await, 0);
    assert_eq!(ids(&k, &t).await, vec![5, 6, 7, 10]);
    // Bad specs are refused as MongoDB refuses them.
    for bad in [
        doc! {"key": {"at": 1}, "expireAfterSeconds": -1},
        doc! {"key": {"at": 1, "y": 1}, "expireAfterSeconds": 5},
    ] {
        let e = k.tables.create_indexes(a, to, &[bad]).await.unwrap_err();
        assert_eq!(e.code, berth_docs::index::CANNOT_CREATE_INDEX);
    }
}

/// An index build cut short (its settings say not ready, its registry
/// entry and progress are there, as a crash leaves them) goes on from
/// its progress when the volume's leader resumes builds, then is ready
/// and its build keys are gone.
#[tokio::test]
async fn an_interrupted_index_build_resumes_from_its_progress() {
    use berth_docs::builds::{progress_key, registry_key, Building};
    use berth_docs::index::IndexDef;
    let k = kernel().await;
    let a = &k.admin;
    let path = "/tables/db/building";
    let t = k.tables.create(a, path, true).await.unwrap();
    let docs: Vec<Document> = (0..600).map(|i| doc! {"_id": i, "g": i % 3}).collect();
    k.tables.insert(a, &t, docs, true).await.unwrap();
    // What a crash in the middle of `createIndexes({g: 1})` leaves: the
    // index in the settings, not ready, with no entries below document
    // 300 written yet (so the test sees where the build went on from).
    let mut config = t.config.clone();
    let mut def = IndexDef::parse(
        config.next_index_id.max(1),
        &doc! {"key": {"g": 1}, "name": "g_1"},
    )
    .unwrap();
    def.ready = false;
    let id = def.id;
    config.next_index_id = id + 1;
    config.indexes.push(def);
    let router = k.meta.router();
    let mut tx = router.begin(t.vol.shard_id).await.unwrap();
    let settings =
        berth_store::keys::Key::new(t.vol.id, berth_store::keys::Kind::TableIndex, t.entry.ino)
            .build();
    tx.put(settings, config.encode());
    tx.put(
        registry_key(t.vol.id, t.entry.ino),
        berth_meta::codec::encode(&Building { path: path.into() }),
    );
    let mut at = t.doc_key(&Bson::Int32(300));
    at.push(0);
    tx.put(progress_key(t.vol.id, t.entry.ino, id), at);
    assert!(matches!(
        tx.commit().await.unwrap(),
        berth_meta::Commit::Done(_)
    ));

    // Moved meanwhile (`berth mv`: the namespace alone), the build still
    // resumes at the table's new path.
    let path = "/tables/db/built";
    k.tables
        .namespace()
        .rename(a, "/tables/db/building", path, true)
        .await
        .unwrap();

    assert_eq!(k.tables.resume_builds().await, 1);
    let t = k.tables.open(a, path, Right::Read).await.unwrap();
    assert!(
        t.config.indexes.iter().all(|i| i.ready),
        "not ready after resuming"
    );
    // Entries from the progress on: documents 301.. (the 200 of them in
    // each group from there), none before it.
    let plan = berth_docs::plan::choose(&t.config.indexes, &doc! {"g": 1}, None).unwrap();
    let (found, _, _) = k
        .tables
        .index_scan(a, &t, &plan, &filter(doc! {"g": 1}), None, usize::MAX)
        .await
        .unwrap();
    let ids: Vec<i32> = found.iter().map(|d| d.get_i32("_id").unwrap()).collect();
    assert!(
        ids.iter().all(|i| *i > 300),
        "entries before the progress: {ids:?}"
    );
    assert_eq!(ids.len(), 100);
    // The build's keys are gone; nothing more to resume.
    assert_eq!(
        router
            .get(t.vol.shard_id, &registry_key(t.vol.id, t.entry.ino))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        router
            .get(t.vol.shard_id, &progress_key(t.vol.id, t.entry.ino, id))
            .await
            .unwrap(),
        None
    );
    assert_eq!(k.tables.resume_builds().await, 0);
    // A real createIndexes on the table builds everything and leaves no keys.
    k.tables
        .create_indexes(a, path, &[doc! {"key": {"_id": 1, "g": 1}, "name": "both"}])
        .await
        .unwrap();
    assert_eq!(
        router
            .get(t.vol.shard_id, &registry_key(t.vol.id, t.entry.ino))
            .await
            .unwrap(),
        None
    );
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

/// A ticket scoped read-write to a directory creates tables there (as
/// MongoDB's readWrite role creates collections on first insert), and
/// nowhere else.
#[tokio::test]
async fn a_read_write_ticket_creates_tables_in_its_scope_only() {
    let k = kernel().await;
    let a = &k.admin;
    k.tables
        .namespace()
        .mkdir(a, "/tables/app", 0o777, true)
        .await
        .unwrap();
    k.tables
        .namespace()
        .mkdir(a, "/tables/other", 0o777, true)
        .await
        .unwrap();
    k.meta
        .user_add(a, "app", Some("pw"), None, vec![], false)
        .await
        .unwrap();
    let scope = berth_security::scope::Scope::parse("/tables/app:rw").unwrap();
    let (ticket, _) = k.meta.sign_for("app", Some(scope), 3600).unwrap();
    let app = k.meta.authenticate(&ticket).unwrap();
    let t = k
        .tables
        .open_or_create(&app, "/tables/app/users")
        .await
        .unwrap();
    let out = k
        .tables
        .insert(&app, &t, vec![doc! {"_id": 1}], true)
        .await
        .unwrap();
    assert_eq!(out.n, 1);
    let err = k
        .tables
        .open_or_create(&app, "/tables/other/users")
        .await
        .unwrap_err();
    assert_eq!(err.code, codes::UNAUTHORIZED, "{err:?}");
}

/// The `_id`s of `docs`, in their order.
fn order_of(docs: &[Document]) -> Vec<i32> {
    docs.iter().map(|d| d.get_i32("_id").unwrap()).collect()
}

#[tokio::test]
async fn backward_scans_read_indexes_and_ids_from_their_end_page_by_page() {
    use berth_docs::plan::{choose, plan, QueryPlan};
    let k = kernel().await;
    let a = &k.admin;
    let path = "/tables/db/events";
    let t = k.tables.create(a, path, true).await.unwrap();
    // More than a page (256 entries) of each, to cross pages backward.
    let docs: Vec<Document> = (0..700)
        .map(|i| doc! {"_id": i, "a": i % 3, "ts": (i * 37) % 701, "b": format!("b{}", i % 11)})
        .collect();
    k.tables.insert(a, &t, docs.clone(), true).await.unwrap();
    k.tables
        .create_indexes(
            a,
            path,
            &[doc! {"key": {"a": 1, "ts": 1}}, doc! {"key": {"b": 1}}],
        )
        .await
        .unwrap();
    let t = k.tables.open(a, path, Right::Read).await.unwrap();
    let by = |q: &Document, key: &str, desc: bool| -> Vec<i32> {
        let f = filter(q.clone());
        let mut m: Vec<&Document> = docs.iter().filter(|d| f.matches(d)).collect();
        m.sort_by_key(|d| d.get_i32(key).unwrap());
        if desc {
            m.reverse();
        }
        m.iter().map(|d| d.get_i32("_id").unwrap()).collect()
    };

    // find({a: 1}).sort({ts: -1}): the index {a: 1, ts: 1} backward; a
    // limit stops it after that many entries.
    let q = doc! {"a": 1};
    let p = choose(&t.config.indexes, &q, Some(&doc! {"ts": -1})).unwrap();
    assert!(p.backward && p.provides_sort && p.name == "a_1_ts_1");
    let (got, keys, _) = k
        .tables
        .index_scan(a, &t, &p, &filter(q.clone()), None, usize::MAX)
        .await
        .unwrap();
    assert_eq!(order_of(&got), by(&q, "ts", true));
    assert_eq!(keys, 233);
    let (top, keys, _) = k
        .tables
        .index_scan(a, &t, &p, &filter(q.clone()), Some(10), usize::MAX)
        .await
        .unwrap();
    assert_eq!(order_of(&top), by(&q, "ts", true)[..10]);
    assert_eq!(keys, 10);
    // A range, backward.
    let q = doc! {"a": 2, "ts": {"$gte": 100, "$lt": 500}};
    let p = choose(&t.config.indexes, &q, Some(&doc! {"a": -1, "ts": -1})).unwrap();
    assert!(p.backward);
    let (got, _, _) = k
        .tables
        .index_scan(a, &t, &p, &filter(q.clone()), None, usize::MAX)
        .await
        .unwrap();
    assert_eq!(order_of(&got), by(&q, "ts", true));
    // $in runs merged backward.
    let q = doc! {"a": {"$in": [0, 2]}};
    let p = choose(&t.config.indexes, &q, Some(&doc! {"ts": -1})).unwrap();
    assert!(p.backward && p.merge);
    let (got, _, _) = k
        .tables
        .index_scan(a, &t, &p, &filter(q.clone()), None, usize::MAX)
        .await
        .unwrap();
    assert_eq!(order_of(&got), by(&q, "ts", true));
    // find().sort({_id: -1}): the documents themselves, backward.
    let all = doc! {};
    let p = choose(&t.config.indexes, &all, Some(&doc! {"_id": -1})).unwrap();
    assert!(p.on_id() && p.backward);
    let (got, keys, docs_read) = k
        .tables
        .index_scan(a, &t, &p, &filter(all.clone()), None, usize::MAX)
        .await
        .unwrap();
    assert_eq!(order_of(&got), (0..700).rev().collect::<Vec<_>>());
    assert_eq!((keys, docs_read), (700, 700));

    // An $or of indexed branches: their union, each document once.
    let q = doc! {"$or": [{"a": 1, "ts": {"$lt": 100}}, {"b": "b3"}, {"_id": {"$gte": 690}}]};
    let Some(QueryPlan::Or(branches)) = plan(&t.config.indexes, &q, None) else {
        panic!("no union for {q}");
    };
    let (got, examined) = k
        .tables
        .union_scan(a, &t, &branches, &filter(q.clone()), None, usize::MAX)
        .await
        .unwrap();
    let mut ids = order_of(&got);
    ids.sort();
    assert_eq!(ids, {
        let mut w = by(&q, "_id", false);
        w.sort();
        w
    });
    assert_eq!(examined.len(), 3);
    assert_eq!(examined[1].0, 64, "the b3 entries");
    assert!(examined.iter().map(|e| e.0).sum::<u64>() < 200);
}

#[tokio::test]
async fn a_backward_scan_in_a_transaction_sees_its_own_writes() {
    use berth_docs::plan::choose;
    use berth_docs::txn::Txn;
    let k = kernel().await;
    let a = &k.admin;
    let path = "/tables/db/feed";
    let t = k.tables.create(a, path, true).await.unwrap();
    let docs: Vec<Document> = (0..300)
        .map(|i| doc! {"_id": i, "u": i % 2, "ts": i})
        .collect();
    k.tables.insert(a, &t, docs, true).await.unwrap();
    k.tables
        .create_indexes(a, path, &[doc! {"key": {"u": 1, "ts": 1}}])
        .await
        .unwrap();
    let t = k.tables.open(a, path, Right::Read).await.unwrap();
    let latest = |t: berth_docs::table::TableRef, sort: Document| {
        let tables = k.tables.clone();
        let a = a.clone();
        async move {
            let q = doc! {"u": 1};
            let p = choose(&t.config.indexes, &q, Some(&sort)).unwrap();
            assert!(p.backward);
            let (got, _, _) = tables
                .index_scan(&a, &t, &p, &filter(q), Some(3), usize::MAX)
                .await
                .unwrap();
            order_of(&got)
        }
    };
    let newest = |t: berth_docs::table::TableRef| {
        let tables = k.tables.clone();
        let a = a.clone();
        async move {
            let p = choose(&t.config.indexes, &doc! {}, Some(&doc! {"_id": -1})).unwrap();
            let (got, _, _) = tables
                .index_scan(&a, &t, &p, &filter(doc! {}), Some(2), usize::MAX)
                .await
                .unwrap();
            order_of(&got)
        }
    };
    assert_eq!(
        latest(t.clone(), doc! {"ts": -1}).await,
        vec![299, 297, 295]
    );

    let txn = Txn::new();
    let mut in_txn = t.clone();
    in_txn.txn = Some(txn.clone());
    // Read first (the snapshot is taken), then write: an insert at the
    // top of both orders and a delete just below it.
    assert_eq!(newest(in_txn.clone()).await, vec![299, 298]);
    k.tables
        .insert(
            a,
            &in_txn,
            vec![doc! {"_id": 1000, "u": 1, "ts": 5000}],
            true,
        )
        .await
        .unwrap();
    k.tables
        .delete(a, &in_txn, &filter(doc! {"_id": 299}), false)
        .await
        .unwrap();
    assert_eq!(
        latest(in_txn.clone(), doc! {"ts": -1}).await,
        vec![1000, 297, 295]
    );
    assert_eq!(
        latest(in_txn.clone(), doc! {"u": -1, "ts": -1}).await,
        vec![1000, 297, 295]
    );
    assert_eq!(newest(in_txn.clone()).await, vec![1000, 298]);
    // Outside it: nothing yet.
    assert_eq!(
        latest(t.clone(), doc! {"ts": -1}).await,
        vec![299, 297, 295]
    );
    assert_eq!(newest(t.clone()).await, vec![299, 298]);
    txn.commit().await.unwrap();
    assert_eq!(
        latest(t.clone(), doc! {"ts": -1}).await,
        vec![1000, 297, 295]
    );
    assert_eq!(newest(t.clone()).await, vec![1000, 298]);
}

/// An index build on a table being written: the build's pages (growing
/// while they commit, shrinking when a write conflicts) and the writes
/// leave every entry agreeing with its document.
#[tokio::test]
async fn an_index_build_under_writes_agrees_with_the_documents() {
    let k = kernel().await;
    let a = &k.admin;
    let path = "/tables/db/busy";
    let t = k.tables.create(a, path, true).await.unwrap();
    let docs: Vec<Document> = (0..3000).map(|i| doc! {"_id": i, "v": i % 7}).collect();
    k.tables.insert(a, &t, docs, true).await.unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (tables, a, t, stop) = (k.tables.clone(), a.clone(), t.clone(), stop.clone());
        tokio::spawn(async move {
            let spec = Update::parse(&doc! {"$inc": {"v": 1}}, &[]).unwrap();
            let change = move |d: &mut Document, ctx: &ApplyContext| spec.apply(d, ctx);
            let mut n = 0u64;
            let mut i = 0i32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Spread over the table, so some land in a page being built.
                i = (i + 997) % 3000;
                let q = doc! {"_id": i};
                let r = tables
                    .update(
                        &a,
                        &t,
                        &filter(q.clone()),
                        &q,
                        &change,
                        false,
                        false,
                        bson::DateTime::now(),
                        false,
                        false,
                    )
                    .await;
                if r.is_ok() {
                    n += 1;
                }
                tokio::task::yield_now().await;
            }
            n
        })
    };
    k.tables
        .create_indexes(a, path, &[doc! {"key": {"v": 1}, "name": "v_1"}])
        .await
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let updates = writer.await.unwrap();
    assert!(updates > 0, "no update ran during the build");
    let t = k.tables.open(a, path, Right::Read).await.unwrap();
    let report = k.tables.check(a, &t).await.unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.documents, 3000);
    assert_eq!(report.indexes[0].entries, 3000);
}

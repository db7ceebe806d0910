//! The meta service against a real single-node kernel (store, multi-raft
//! loop, meta shard) in a temp dir, no network.

use std::sync::Arc;

use berth_meta::codec::{decode, encode};
use berth_meta::map::{scram_key, user_key, ScramRecord, UserRecord, META_SHARD};
use berth_meta::{Commit, Meta, ScramLookup};
use berth_security::principal::Principal;
use berth_security::scram::{self, Mechanism};

// The shared single-node harness, compiled straight into this binary: a
// package cannot turn on its own `testing` feature for its integration
// tests (no self dev-dependency), and `required-features` would make
// `cargo test -p berth-meta` skip them. So `cargo test -p berth-meta` and
// `cargo test --workspace` (where berth-fs enables the feature) both run
// this same file. Not every item of the harness is used here.
#[allow(dead_code)]
#[path = "../../src/testing.rs"]
mod testing;

mod forward;
mod net;
mod pd;

use testing::{single_node, SingleNode};

struct Kernel {
    /// Keeps the node and its temp dir alive for the test.
    _node: SingleNode,
    meta: Arc<Meta>,
    admin: Principal,
}

async fn kernel() -> Kernel {
    let node = single_node().await;
    Kernel {
        meta: node.meta.clone(),
        admin: node.admin.clone(),
        _node: node,
    }
}

impl Kernel {
    fn scram(&self, user: &str, m: Mechanism) -> ScramLookup {
        self.meta.map().scram_credential(user, m)
    }

    /// Whether the stored credential of `user` is the one `password` gives.
    fn scram_matches(&self, user: &str, password: &str) -> bool {
        Mechanism::ALL.into_iter().all(|m| {
            let ScramLookup::Found(c) = self.scram(user, m) else {
                panic!("no {} credential for {user}", m.name());
            };
            assert_eq!(c.iterations, scram::ITERATIONS_DEFAULT);
            assert!(c.salt.len() >= 16);
            scram::credential_with(password, &c.salt, c.iterations, m).unwrap() == c
        })
    }

    /// Writes raw records into the meta shard, as an older node would.
    async fn put_raw(&self, records: Vec<(Vec<u8>, Vec<u8>)>) {
        let mut tx = self.meta.router().begin(META_SHARD).await.unwrap();
        for (k, v) in records {
            tx.put(k, v);
        }
        assert!(matches!(tx.commit().await.unwrap(), Commit::Done(_)));
        self.meta.refresh().await.unwrap();
    }

    fn user(&self, name: &str) -> UserRecord {
        self.meta.map().users.get(name).unwrap().clone()
    }
}

#[tokio::test]
async fn setting_a_password_stores_scram_credentials() {
    let k = kernel().await;
    k.meta
        .user_add(&k.admin, "alice", Some("pencil"), None, vec![], false)
        .await
        .unwrap();
    assert!(k.scram_matches("alice", "pencil"));
    assert!(!k.scram_matches("alice", "pencil2"));
    let before = k.meta.map().scram.get("alice").cloned().unwrap();

    // A password change replaces them, with fresh salts.
    k.meta
        .user_password(&k.admin, "alice", "crayon")
        .await
        .unwrap();
    assert!(k.scram_matches("alice", "crayon"));
    assert!(!k.scram_matches("alice", "pencil"));
    let after = k.meta.map().scram.get("alice").cloned().unwrap();
    assert_ne!(before.credentials[0].salt, after.credentials[0].salt);

    // Nothing secret in Debug output.
    let shown = format!("{after:?}");
    assert!(
        !shown.contains("stored_key") && !shown.contains("salt"),
        "{shown}"
    );

    // Unknown users and principals without a password have none.
    assert_eq!(
        k.scram("nobody", Mechanism::Sha256),
        ScramLookup::UnknownUser
    );
    assert_eq!(k.scram("admin", Mechanism::Sha256), ScramLookup::NoPassword);
    k.meta
        .user_add(&k.admin, "svc", None, None, vec![], true)
        .await
        .unwrap();
    assert_eq!(k.scram("svc", Mechanism::Sha512), ScramLookup::NoPassword);

    // Removing the user removes its credentials.
    k.meta.user_remove(&k.admin, "alice").await.unwrap();
    assert!(!k.meta.map().scram.contains_key("alice"));
    assert_eq!(
        k.scram("alice", Mechanism::Sha256),
        ScramLookup::UnknownUser
    );
}

#[tokio::test]
async fn passwords_set_without_scram_have_no_credential() {
    let k = kernel().await;
    // A user whose password was set before SCRAM credentials existed: the
    // user record as it was always encoded, no SCRAM record.
    let hash = berth_security::password::hash_password("pencil").unwrap();
    let old = UserRecord {
        name: "bob".into(),
        uid: 2000,
        kind: berth_security::principal::PrincipalKind::User,
        password_hash: Some(hash),
        groups: vec![],
    };
    k.put_raw(vec![(user_key("bob"), encode(&old))]).await;
    assert_eq!(k.user("bob"), old, "user records decode as before");
    assert_eq!(k.scram("bob", Mechanism::Sha256), ScramLookup::Missing);
    // Password login still works; setting the password again derives them.
    k.meta.login("bob", "pencil", 60).await.unwrap();
    k.meta
        .user_password(&k.admin, "bob", "pencil")
        .await
        .unwrap();
    assert!(k.scram_matches("bob", "pencil"));

    // A password changed by a node that writes no SCRAM records (rolling
    // upgrade): the old credentials no longer count.
    let mut changed = k.user("bob");
    changed.password_hash = Some(berth_security::password::hash_password("crayon").unwrap());
    k.put_raw(vec![(user_key("bob"), encode(&changed))]).await;
    assert!(k.meta.map().scram.contains_key("bob"));
    assert_eq!(k.scram("bob", Mechanism::Sha512), ScramLookup::Missing);
}

#[tokio::test]
async fn scram_records_round_trip_and_bad_ones_are_skipped() {
    let k = kernel().await;
    k.meta
        .user_add(&k.admin, "carol", Some("pw"), None, vec![], false)
        .await
        .unwrap();
    let rec = k.meta.map().scram.get("carol").cloned().unwrap();
    let bytes = encode(&rec);
    assert_eq!(decode::<ScramRecord>(&bytes, "scram").unwrap(), rec);
    // An undecodable SCRAM record costs that user SCRAM, not the map.
    k.put_raw(vec![(scram_key("carol"), vec![1, 0xff])]).await;
    assert!(k.meta.map().users.contains_key("carol"));
    assert_eq!(k.scram("carol", Mechanism::Sha256), ScramLookup::Missing);
}

/// Join tokens: issued by administrators only, admit as many joins as they
/// say, and are refused once used up, revoked, or from another cluster,
/// each with its own reason.
#[tokio::test]
async fn join_tokens_admit_their_uses_and_no_more() {
    let k = kernel().await;
    let ca = [9u8; 32];
    let servers = vec!["n1:5660".to_string()];
    let (token, rec) = k
        .meta
        .create_join_token(&k.admin, 0, 2, ca, servers.clone())
        .await
        .unwrap();
    assert_eq!(rec.uses_left, 2);
    let body = berth_security::join::decode_unverified(&token).unwrap();
    assert_eq!(
        (body.ca_sha256, &body.servers, &body.id),
        (ca, &servers, &rec.id)
    );
    for _ in 0..2 {
        assert_eq!(k.meta.redeem_join_token(&token).await.unwrap().id, rec.id);
    }
    let e = k.meta.redeem_join_token(&token).await.unwrap_err();
    assert!(e.message.contains("used up"), "{e}");

    let (t2, r2) = k
        .meta
        .create_join_token(&k.admin, 60, 1, ca, servers.clone())
        .await
        .unwrap();
    k.meta.revoke_join_token(&k.admin, &r2.id).await.unwrap();
    let e = k.meta.redeem_join_token(&t2).await.unwrap_err();
    assert!(e.message.contains("revoked"), "{e}");
    let listed = k.meta.join_tokens(&k.admin).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().any(|r| r.id == r2.id && r.revoked));

    // Not a token of this cluster: signed with another key.
    let other = berth_security::ticket::TicketSigner::generate(1);
    let forged = berth_security::join::sign(&other, &body);
    let e = k.meta.redeem_join_token(&forged).await.unwrap_err();
    assert!(e.message.contains("not signed by this cluster"), "{e}");

    // Only unscoped administrators issue, list and revoke.
    k.meta
        .user_add(&k.admin, "bob", Some("pw"), None, vec![], false)
        .await
        .unwrap();
    let (ticket, _) = k.meta.sign_for("bob", None, 60).unwrap();
    let bob = k.meta.authenticate(&ticket).unwrap();
    assert!(k
        .meta
        .create_join_token(&bob, 0, 1, ca, vec![])
        .await
        .is_err());
    assert!(k.meta.join_tokens(&bob).await.is_err());
    assert!(k.meta.revoke_join_token(&bob, &rec.id).await.is_err());
    assert!(k
        .meta
        .create_join_token(&k.admin, 0, 0, ca, vec![])
        .await
        .is_err());
}

fn applicant(csr_pem: &str) -> berth_meta::Applicant {
    berth_meta::Applicant {
        csr_pem: csr_pem.to_string(),
        advertise: vec!["n.example".into()],
        native_addr: "n.example:5660".into(),
        admin_addr: "n.example:8443".into(),
        kafka_addr: String::new(),
        labels: [("zone".to_string(), "b".to_string())].into(),
        mongo_addr: String::new(),
    }
}

/// A join admits a node in one transaction: one use of the token, the next
/// node id, a certificate signed by the cluster CA for the key the node
/// made, a record in state `joining`. A refused request costs no use.
#[tokio::test]
async fn a_join_admits_a_node_with_a_certificate_of_the_cluster_ca() {
    use berth_meta::map::{ca_key, CaRecord, NodeState};
    use berth_security::pki;
    let k = kernel().await;
    let ca: CaRecord = {
        let tx = k.meta.router().begin(META_SHARD).await.unwrap();
        decode(&tx.peek(&ca_key(1)).await.unwrap().unwrap(), "ca").unwrap()
    };
    let ca_sha = berth_security::join::ca_sha256(&ca.cert_pem).unwrap();
    let (token, rec) = k
        .meta
        .create_join_token(&k.admin, 0, 2, ca_sha, vec![])
        .await
        .unwrap();

    // Refused requests: nothing is used.
    let e = k
        .meta
        .admit_node(&token, &applicant("not a request"))
        .await
        .unwrap_err();
    assert_eq!(e.code, berth_meta::Code::Invalid, "{e}");
    assert!(e.message.contains("malformed"), "{e}");
    let req = pki::new_node_request().unwrap();
    let mut bad_label = applicant(&req.csr_pem);
    bad_label.labels.insert("zone".into(), "a b".into());
    assert!(k.meta.admit_node(&token, &bad_label).await.is_err());
    let listed = k.meta.join_tokens(&k.admin).await.unwrap();
    assert_eq!(listed.iter().find(|t| t.id == rec.id).unwrap().uses_left, 2);

    let a = k
        .meta
        .admit_node(&token, &applicant(&req.csr_pem))
        .await
        .unwrap();
    assert_eq!(a.node.id, 2);
    assert_eq!(a.node.state, NodeState::Joining);
    assert_eq!(a.cluster.id, "t");
    assert_eq!(a.ca_cert_pem, ca.cert_pem);
    assert_eq!(a.nodes.iter().map(|n| n.id).collect::<Vec<_>>(), vec![1, 2]);
    use rustls::pki_types::pem::PemObject as _;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(a.node_cert_pem.as_bytes());
    assert_eq!(pki::node_id_of_cert(der.unwrap().as_ref()), Some(2));
    let m = berth_security::tls::NodeMaterial {
        ca_pem: a.ca_cert_pem.clone(),
        cert_pem: a.node_cert_pem.clone(),
        key_pem: req.key_pem.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    berth_security::tls::write_joined(dir.path(), &m).unwrap();
    let map = k.meta.map();
    let n2 = map.nodes.iter().find(|n| n.id == 2).unwrap();
    assert_eq!(
        (n2.state, n2.labels["zone"].as_str()),
        (NodeState::Joining, "b")
    );

    // Ids are never reused: the next join gets 3 even after node 2's record
    // is gone.
    let mut tx = k.meta.router().begin(META_SHARD).await.unwrap();
    tx.delete(berth_meta::map::node_key(2));
    assert!(matches!(tx.commit().await.unwrap(), Commit::Done(_)));
    let req3 = pki::new_node_request().unwrap();
    let a3 = k
        .meta
        .admit_node(&token, &applicant(&req3.csr_pem))
        .await
        .unwrap();
    assert_eq!(a3.node.id, 3);
    // The same request again (its answer was lost on the way): the same node, a
    // certificate for the same key, and no other use of the token.
    let again = k
        .meta
        .admit_node(&token, &applicant(&req3.csr_pem))
        .await
        .unwrap();
    assert_eq!(again.node.id, 3);
    let der = rustls::pki_types::CertificateDer::from_pem_slice(again.node_cert_pem.as_bytes());
    assert_eq!(pki::node_id_of_cert(der.unwrap().as_ref()), Some(3));
    assert_eq!(
        k.meta.map().nodes.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![1, 3]
    );
    let e = k
        .meta
        .admit_node(
            &token,
            &applicant(&pki::new_node_request().unwrap().csr_pem),
        )
        .await
        .unwrap_err();
    assert!(e.message.contains("used up"), "{e}");

    // A node's registration keeps the state the cluster gave it; the state
    // changes only through set_node_state.
    let mut again = a3.node.clone();
    again.state = NodeState::Up;
    again.native_addr = "n3:5660".into();
    k.meta.register_node(&again).await.unwrap();
    let n3 = |k: &Kernel| {
        k.meta
            .map()
            .nodes
            .iter()
            .find(|n| n.id == 3)
            .unwrap()
            .clone()
    };
    assert_eq!(
        (n3(&k).state, n3(&k).native_addr.as_str()),
        (NodeState::Joining, "n3:5660")
    );
    k.meta.set_node_state(3, NodeState::Up).await.unwrap();
    assert_eq!(n3(&k).state, NodeState::Up);
    // Once the node has joined, its request admits nothing again.
    let e = k
        .meta
        .admit_node(&token, &applicant(&req3.csr_pem))
        .await
        .unwrap_err();
    assert_eq!(e.code, berth_meta::Code::Exists, "{e}");
    assert_eq!(
        k.meta
            .set_node_state(9, NodeState::Up)
            .await
            .unwrap_err()
            .code,
        berth_meta::Code::NotFound
    );
}

/// A cluster bootstrapped before table 14 gets its CA recorded once, from
/// the first node's files; a map that holds one is left alone.
#[tokio::test]
async fn the_ca_is_recorded_once() {
    use berth_meta::map::{table_range, CaRecord, T_CA};
    async fn held(k: &Kernel) -> Vec<CaRecord> {
        let (start, end) = table_range(T_CA);
        let tx = k.meta.router().begin(META_SHARD).await.unwrap();
        tx.peek_range(&start, &end, 10)
            .await
            .unwrap()
            .iter()
            .map(|(_, v)| decode::<CaRecord>(v, "ca").unwrap())
            .collect()
    }
    let k = kernel().await;
    let bootstrapped = held(&k).await;
    assert_eq!(bootstrapped.len(), 1);
    let other = berth_security::tls::new_ca("other").unwrap();
    assert!(!k.meta.ensure_ca_record(&other).await.unwrap());
    assert_eq!(held(&k).await, bootstrapped);

    // As an older cluster: no CA in the map.
    let (start, end) = table_range(T_CA);
    let mut tx = k.meta.router().begin(META_SHARD).await.unwrap();
    tx.delete_range(start, end);
    assert!(matches!(tx.commit().await.unwrap(), Commit::Done(_)));
    assert!(held(&k).await.is_empty());
    assert!(k.meta.ensure_ca_record(&other).await.unwrap());
    assert!(!k.meta.ensure_ca_record(&other).await.unwrap());
    let now = held(&k).await;
    assert_eq!(now.len(), 1);
    assert_eq!((now[0].id, &now[0].cert_pem), (1, &other.cert_pem));
}

/// A snapshot transaction reads one instant under its own writes, pages
/// through its scans with the same result, and loses to a write committed
/// after its view on a key it wrote.
#[tokio::test]
async fn a_snapshot_transaction_reads_its_view_under_its_writes() {
    let k = kernel().await;
    let router = k.meta.router();
    let key = |i: u8| user_key(&format!("snap-{i:02}"));
    let mut tx = router.begin(META_SHARD).await.unwrap();
    for i in 0..10 {
        tx.put(key(i), vec![i]);
    }
    assert!(matches!(tx.commit().await.unwrap(), Commit::Done(_)));

    let mut snap = router.begin_snapshot(META_SHARD).await.unwrap();
    // Committed after the view: not seen.
    let mut later = router.begin(META_SHARD).await.unwrap();
    later.put(key(20), vec![20]);
    later.delete(key(0));
    assert!(matches!(later.commit().await.unwrap(), Commit::Done(_)));
    // Its own writes: seen.
    snap.delete(key(3));
    snap.delete(key(4));
    snap.put(key(5), vec![55]);
    snap.put(key(11), vec![11]);
    assert_eq!(snap.peek(&key(0)).await.unwrap(), Some(vec![0]));
    assert_eq!(snap.peek(&key(20)).await.unwrap(), None);
    assert_eq!(snap.get(&key(4)).await.unwrap(), None);
    let (start, end) = (key(0), key(99));
    let want: Vec<(Vec<u8>, Vec<u8>)> = [0u8, 1, 2, 5, 6, 7, 8, 9, 11]
        .iter()
        .map(|&i| (key(i), if i == 5 { vec![55] } else { vec![i] }))
        .collect();
    assert_eq!(snap.peek_range(&start, &end, 100).await.unwrap(), want);
    // Page by page (three at a time) gives the same pairs.
    let mut paged = Vec::new();
    let mut from = start.clone();
    loop {
        let page = snap.peek_range(&from, &end, 3).await.unwrap();
        let Some((last, _)) = page.last() else { break };
        from = last.clone();
        from.push(0);
        paged.extend(page);
    }
    assert_eq!(paged, want);
    // Backward, whole and page by page (the next page ends at the last
    // key read), under the same writes: the same pairs in reverse.
    let mut backward = want.clone();
    backward.reverse();
    assert_eq!(
        snap.peek_range_rev(&start, &end, 100).await.unwrap(),
        backward
    );
    for page_len in [1, 2, 3, 4] {
        let mut paged = Vec::new();
        let mut to = end.clone();
        loop {
            let page = snap.peek_range_rev(&start, &to, page_len).await.unwrap();
            let Some((last, _)) = page.last() else { break };
            to = last.clone();
            paged.extend(page);
        }
        assert_eq!(paged, backward, "pages of {page_len}");
    }
    // The view was cut short just above a deletion and an insert of the
    // transaction: both are placed by the page that reaches them.
    assert_eq!(
        snap.peek_range_rev(&start, &key(6), 2).await.unwrap(),
        vec![(key(5), vec![55]), (key(2), vec![2])]
    );
    // The later write deleted key 0 after the view: writing key 0 now
    // conflicts, and nothing of the transaction is written.
    snap.put(key(0), vec![100]);
    assert_eq!(snap.commit().await.unwrap(), Commit::Conflict);
    assert_eq!(
        router.get(META_SHARD, &key(5)).await.unwrap(),
        Some(vec![5])
    );

    // Without a conflicting write it commits.
    let mut snap = router.begin_snapshot(META_SHARD).await.unwrap();
    snap.put(key(1), vec![101]);
    assert!(matches!(snap.commit().await.unwrap(), Commit::Done(_)));
    assert_eq!(
        router.get(META_SHARD, &key(1)).await.unwrap(),
        Some(vec![101])
    );
}

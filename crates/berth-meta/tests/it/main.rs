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

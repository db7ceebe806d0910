//! Security: every way in without the right credential is refused with a
//! clear error, and the administrator can do everything.

use std::time::Duration;

use berth_api::v1::PathRequest;

use crate::harness::TestServer;

/// Calls Namespace/Stat with `ticket` (raw text) and returns the symbolic code.
fn stat_code(s: &TestServer, ticket: Option<&str>) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut cfg = s.client_config();
        cfg.ticket = ticket.map(str::to_string);
        let c = match ticket {
            Some(_) => berth_client::Client::connect(cfg).await,
            None => berth_client::Client::connect_without_ticket(cfg).await,
        }
        .expect("connect");
        match c.namespace().stat(PathRequest { path: "/".into() }).await {
            Ok(_) => "OK".to_string(),
            Err(st) => {
                let e = berth_client::ClientError::from_status(st);
                e.code().unwrap_or("none").to_string()
            }
        }
    })
}

#[test]
fn tickets_are_verified() {
    let s = TestServer::start();
    let admin = std::fs::read_to_string(s.admin_ticket()).unwrap();
    let admin = admin.trim();
    assert_eq!(stat_code(&s, Some(admin)), "OK");

    // No ticket.
    assert_eq!(stat_code(&s, None), "EAUTH");
    // Garbage.
    assert_eq!(stat_code(&s, Some("not-a-ticket")), "EAUTH");
    // Forged signature: change one character of the signature part.
    let mut forged: Vec<char> = admin.chars().collect();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == 'A' { 'B' } else { 'A' };
    let forged: String = forged.into_iter().collect();
    assert_eq!(stat_code(&s, Some(&forged)), "EAUTH");
    // Forged body: a ticket whose body claims more than was signed.
    let parts: Vec<&str> = admin.split('.').collect();
    assert_eq!(parts.len(), 3, "ticket format berth1.<body>.<sig>");
    let other = s.ok(&[
        "ticket",
        "issue",
        "--principal",
        "admin",
        "--scope",
        "/x:r",
        "--out",
        "/dev/stdout",
    ]);
    let other = other.trim().lines().last().unwrap_or("").to_string();
    let oparts: Vec<&str> = other.split('.').collect();
    if oparts.len() == 3 {
        let spliced = format!("{}.{}.{}", parts[0], oparts[1], parts[2]);
        assert_eq!(stat_code(&s, Some(&spliced)), "EAUTH");
    }

    // Expired: a one-second ticket, used after it ran out.
    let t = s.dir.path().join("short.ticket");
    s.ok(&[
        "ticket",
        "issue",
        "--principal",
        "admin",
        "--ttl",
        "1s",
        "--out",
        t.to_str().unwrap(),
    ]);
    let short = std::fs::read_to_string(&t).unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(stat_code(&s, Some(short.trim())), "EAUTH");
    let out = s.cli_with(&["ls", "/"], &[("BERTH_TICKET_FILE", &t)], None);
    let err = s.check_err(&["ls", "/"], out, "EAUTH");
    assert!(
        err.contains("expired"),
        "expired ticket error should say so: {err}"
    );

    // Another cluster's ticket.
    let other = TestServer::start_with(&["--cluster", "other"]);
    let foreign = std::fs::read_to_string(other.admin_ticket()).unwrap();
    assert_eq!(stat_code(&s, Some(foreign.trim())), "EAUTH");
}

#[test]
fn scope_ace_and_mode_bits_deny() {
    let s = TestServer::start();
    // Scope: a ticket narrowed to /apps/a.
    s.ok(&["mkdir", "-p", "/apps/a", "/apps/b"]);
    let scoped = s.dir.path().join("scoped.ticket");
    s.ok(&[
        "ticket",
        "issue",
        "--principal",
        "admin",
        "--scope",
        "/apps/a:rw",
        "--out",
        scoped.to_str().unwrap(),
    ]);
    let env = [("BERTH_TICKET_FILE", scoped.as_path())];
    let out = s.cli_with(&["mkdir", "/apps/a/x"], &env, None);
    s.check_ok(&["mkdir", "/apps/a/x"], out);
    let out = s.cli_with(&["mkdir", "/apps/b/x"], &env, None);
    let msg = s.check_err(&["mkdir", "/apps/b/x"], out, "EACCES");
    assert!(
        msg.contains("scope"),
        "scope denial should name the scope: {msg}"
    );
    let out = s.cli_with(&["ls", "/apps/b"], &env, None);
    s.check_err(&["ls", "/apps/b"], out, "EACCES");
    // A scoped admin ticket cannot manage principals.
    let out = s.cli_with(&["user", "add", "mallory", "--password", "pw"], &env, None);
    s.check_err(&["user", "add"], out, "EPERM");

    // Users: alice in dev, bob outside.
    s.ok(&["group", "add", "dev"]);
    s.ok(&[
        "user",
        "add",
        "alice",
        "--password",
        "alice-pw",
        "--group",
        "dev",
    ]);
    s.ok(&["user", "add", "bob", "--password", "bob-pw"]);
    let alice = s.login("alice", "alice-pw");
    let bob = s.login("bob", "bob-pw");
    // Wrong password.
    let f = s.dir.path().join("x.ticket");
    let out = s.cli_with(
        &[
            "login",
            "--user",
            "alice",
            "--password-stdin",
            "--out",
            f.to_str().unwrap(),
        ],
        &[],
        Some("wrong\n"),
    );
    s.check_err(&["login"], out, "EAUTH");

    // Mode bits: / is 0755 root-owned, so alice may not create there.
    let a = [("BERTH_TICKET_FILE", alice.as_path())];
    let b = [("BERTH_TICKET_FILE", bob.as_path())];
    let out = s.cli_with(&["mkdir", "/alice"], &a, None);
    s.check_err(&["mkdir", "/alice"], out, "EACCES");
    // Non-admins cannot manage principals or volumes.
    let out = s.cli_with(&["user", "add", "eve", "--password", "x"], &a, None);
    s.check_err(&["user", "add"], out, "EPERM");
    let out = s.cli_with(&["volume", "create", "/v2"], &a, None);
    s.check_err(&["volume", "create"], out, "EPERM");
    let out = s.cli_with(&["volume", "set", "/", "--quota", "1M"], &a, None);
    s.check_err(&["volume", "set"], out, "EPERM");

    // Volume ACE: /team is world-writable by mode, but only g:dev may write.
    s.ok(&["volume", "create", "/team", "--write-ace", "g:dev"]);
    s.ok(&["chmod", "777", "/team"]);
    let out = s.cli_with(&["mkdir", "/team/alice"], &a, None);
    s.check_ok(&["mkdir", "/team/alice"], out);
    let out = s.cli_with(&["mkdir", "/team/bob"], &b, None);
    let msg = s.check_err(&["mkdir", "/team/bob"], out, "EACCES");
    assert!(msg.contains("ACE"), "ACE denial should say so: {msg}");

    // Entry ACE: alice's directory readable only by u:alice.
    let out = s.cli_with(&["chmod", "777", "/team/alice"], &a, None);
    s.check_ok(&["chmod"], out);
    let out = s.cli_with(
        &["acl", "set", "/team/alice", "--read", "u:alice"],
        &a,
        None,
    );
    s.check_ok(&["acl", "set"], out);
    let out = s.cli_with(&["ls", "/team/alice"], &b, None);
    s.check_err(&["ls", "/team/alice"], out, "EACCES");
    let out = s.cli_with(&["ls", "/team/alice"], &a, None);
    s.check_ok(&["ls", "/team/alice"], out);
    // Only the owner (or an admin) changes modes and ACLs.
    let out = s.cli_with(&["chmod", "700", "/team/alice"], &b, None);
    s.check_err(&["chmod"], out, "EPERM");
    let out = s.cli_with(&["acl", "set", "/team/alice", "--read", "p"], &b, None);
    s.check_err(&["acl", "set"], out, "EPERM");
    // A bad expression is refused with its position.
    let msg = s.err(
        &["acl", "set", "/team", "--read", "u:alice | (g:dev"],
        "EINVAL",
    );
    assert!(
        msg.contains("position"),
        "ACE parse error should give a position: {msg}"
    );

    // Sticky directory (as /tmp): others may create, but only an entry's
    // owner (or the directory's, or an admin) may remove or rename it.
    s.ok(&["mkdir", "/team/tmp"]);
    s.ok(&["chmod", "1777", "/team/tmp"]);
    let out = s.cli_with(&["touch", "/team/tmp/alices"], &a, None);
    s.check_ok(&["touch"], out);
    s.ok(&["group", "add-member", "dev", "bob"]);
    // Group membership is in the ticket: bob logs in again.
    let bob2 = s.login("bob", "bob-pw");
    let b2 = [("BERTH_TICKET_FILE", bob2.as_path())];
    let out = s.cli_with(&["rm", "/team/tmp/alices"], &b2, None);
    s.check_err(&["rm", "sticky"], out, "EPERM");
    let out = s.cli_with(&["mv", "/team/tmp/alices", "/team/tmp/bobs"], &b2, None);
    s.check_err(&["mv", "sticky"], out, "EPERM");
    let out = s.cli_with(&["touch", "/team/tmp/bobs"], &b2, None);
    s.check_ok(&["touch"], out);
    let out = s.cli_with(&["rm", "/team/tmp/bobs"], &b2, None);
    s.check_ok(&["rm", "own file in sticky dir"], out);
    // touch (times = now) needs only write access; alice's file is 0644
    // until she opens it up.
    let out = s.cli_with(&["touch", "/team/tmp/alices"], &b2, None);
    s.check_err(&["touch", "read-only file"], out, "EACCES");
    let out = s.cli_with(&["chmod", "666", "/team/tmp/alices"], &a, None);
    s.check_ok(&["chmod"], out);
    let out = s.cli_with(&["touch", "/team/tmp/alices"], &b2, None);
    s.check_ok(&["touch", "writable file"], out);
    let out = s.cli_with(&["rm", "/team/tmp/alices"], &a, None);
    s.check_ok(&["rm", "own file in sticky dir"], out);

    // The admin can do everything, ACEs and modes notwithstanding.
    s.ok(&["ls", "/team/alice"]);
    s.ok(&["mkdir", "/team/alice/by-admin"]);
    s.ok(&["rm", "-r", "/team/alice"]);

    // A removed user's ticket stops working.
    s.ok(&["user", "remove", "bob"]);
    let out = s.cli_with(&["ls", "/"], &b, None);
    s.check_err(&["ls", "/"], out, "EAUTH");
}

/// Issues an unscoped admin ticket into `name` and returns its path and key id.
fn issue_admin(s: &TestServer, name: &str) -> (std::path::PathBuf, u32) {
    let path = s.dir.path().join(name);
    s.ok(&[
        "ticket",
        "issue",
        "--principal",
        "admin",
        "--out",
        path.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&path).unwrap();
    let key = berth_security::ticket::decode_unverified(text.trim())
        .unwrap()
        .key_id;
    (path, key)
}

#[test]
fn signing_keys_rotate_without_breaking_old_tickets() {
    let s = TestServer::start();
    let (before, old_key) = issue_admin(&s, "before.ticket");
    s.ok(&["ticket", "rotate-key"]);
    let keys = s.json(&["ticket", "keys"]);
    let text = keys.to_string();
    assert!(
        text.contains("true") && text.contains("false"),
        "one active and one retired key: {text}"
    );
    let (after, new_key) = issue_admin(&s, "after.ticket");
    assert_ne!(old_key, new_key, "new tickets are signed with the new key");
    // Both verify: the old key stays in the ring until its tickets expire.
    for t in [&before, &after] {
        let out = s.cli_with(&["ls", "/"], &[("BERTH_TICKET_FILE", t.as_path())], None);
        s.check_ok(&["ls", "/"], out);
    }
}

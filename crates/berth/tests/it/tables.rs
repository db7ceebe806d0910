//! `berth table …` against a real server: tables created, shown, listed,
//! changed and removed, and each right enforced by its ACE.

use std::path::Path;
use std::process::Output;

use berth_api::v1::TableListRequest;
use serde_json::Value;

use crate::TestServer;

/// Checks a denial: exit 1, exactly one `error: EACCES …` line.
fn denied(s: &TestServer, args: &[&str], out: Output) -> String {
    let stderr = s.check_err(args, out, "EACCES");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr
}

fn as_user(s: &TestServer, ticket: &Path, args: &[&str]) -> Output {
    s.cli_with(args, &[("BERTH_TICKET_FILE", ticket)], None)
}

fn json_as(s: &TestServer, ticket: &Path, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let text = s.check_ok(&a, as_user(s, ticket, &a));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("berth {a:?}: bad JSON ({e}):\n{text}"))
}

fn paths(v: &Value) -> Vec<&str> {
    v.as_array()
        .expect("table list --json prints an array")
        .iter()
        .map(|e| e["path"].as_str().expect("path"))
        .collect()
}

#[test]
fn tables_created_shown_listed_changed_removed() {
    let s = TestServer::start();

    // Like mkdir: the directory must exist, unless -p.
    let msg = s.err(&["table", "create", "/tables/db1/c1"], "ENOENT");
    assert!(msg.contains("-p"), "the error says how: {msg}");
    let created = s.ok(&["table", "create", "-p", "/tables/db1/c1"]);
    assert!(
        created.contains("created table /tables/db1/c1"),
        "{created}"
    );

    let info = s.json(&["table", "info", "/tables/db1/c1"]);
    assert_eq!(info["path"], "/tables/db1/c1");
    assert_eq!(info["documents"], 0);
    assert_eq!(info["bytes"], 0);
    assert_eq!(info["volume"], "/");
    // Settings format 2: with the indexes' multikey marks.
    assert_eq!(info["format"], 2);
    assert!(info["key_format"].as_u64() >= Some(1), "{info}");
    assert_eq!(info["entry"]["type"], "table");
    let admin_uid = s.json(&["whoami"])["uid"].clone();
    assert_eq!(info["entry"]["uid"], admin_uid, "the creator owns it");
    for ace in ["read_ace", "write_ace", "admin_ace"] {
        assert_eq!(info[ace], Value::Null, "{ace}: {info}");
    }
    let text = s.ok(&["table", "info", "/tables/db1/c1"]);
    let owner = format!("uid {admin_uid}");
    for want in ["/tables/db1/c1", "(the owner only)", "documents", &owner] {
        assert!(text.contains(want), "{want} in:\n{text}");
    }

    // ACEs given at creation (a relative path means from /).
    let c2 = s.json(&[
        "table",
        "create",
        "tables/db1/c2",
        "--read-ace",
        "p",
        "--write-ace",
        "",
    ]);
    assert_eq!(c2["path"], "/tables/db1/c2");
    assert_eq!(c2["read_ace"], "p");
    assert_eq!(c2["write_ace"], "");
    assert_eq!(c2["documents"], 0);
    assert!(s
        .ok(&["table", "info", "/tables/db1/c2"])
        .contains("'' (nobody)"));

    // Refused: what exists already, a file included; a bad ACE, which
    // leaves no table behind.
    s.err(&["table", "create", "/tables/db1/c1"], "EEXIST");
    s.ok(&["touch", "/tables/file"]);
    s.err(&["table", "create", "/tables/file"], "EEXIST");
    s.err(&["table", "create", "-p", "/tables/file/c"], "EEXIST");
    s.err(&["table", "create", "/tables/file/c"], "ENOTDIR");
    let msg = s.err(&["table", "info", "/tables/file"], "ENOENT");
    assert!(msg.contains("not a table"), "{msg}");
    let msg = s.err(
        &[
            "table",
            "create",
            "/tables/db1/bad",
            "--read-ace",
            "u:alice | (g:dev",
        ],
        "EINVAL",
    );
    assert!(msg.contains("read ACE"), "{msg}");
    s.err(&["table", "info", "/tables/db1/bad"], "ENOENT");

    // List: only tables; directly in the directory, or depth first.
    s.ok(&["mkdir", "/tables/db2"]);
    s.ok(&["table", "create", "/tables/db2/c3"]);
    s.ok(&["table", "create", "/tables/top"]);
    s.ok(&["stream", "create", "/tables/db2/s"]);
    assert_eq!(paths(&s.json(&["table", "list"])), vec!["/tables/top"]);
    assert_eq!(
        paths(&s.json(&["table", "list", "/tables/db1"])),
        vec!["/tables/db1/c1", "/tables/db1/c2"]
    );
    let all = s.json(&["table", "list", "--recursive"]);
    assert_eq!(
        paths(&all),
        vec![
            "/tables/db1/c1",
            "/tables/db1/c2",
            "/tables/db2/c3",
            "/tables/top"
        ]
    );
    assert_eq!(all[0]["type"], "table");
    assert_eq!(paths(&s.json(&["table", "list", "-r", "/"])), paths(&all));
    let text = s.ok(&["table", "list", "-r"]);
    assert!(text.starts_with("PATH"), "{text}");
    assert_eq!(text.lines().count(), 5, "{text}");
    s.err(&["table", "list", "/tables/file"], "ENOTDIR");
    s.err(&["table", "list", "/nowhere"], "ENOENT");

    // Edit: only what is given changes; clearing goes back to the owner.
    let e = s.json(&[
        "table",
        "edit",
        "/tables/db1/c1",
        "--read-ace",
        "u:alice",
        "--write-ace",
        "g:dev | u:bob",
    ]);
    assert_eq!(e["read_ace"], "u:alice");
    assert_eq!(e["write_ace"], "g:dev | u:bob");
    assert_eq!(e["admin_ace"], Value::Null);
    assert_eq!(e["documents"], 0, "the admin reads: {e}");
    let e = s.json(&["table", "edit", "/tables/db1/c1", "--clear-ace", "read"]);
    assert_eq!(e["read_ace"], Value::Null);
    assert_eq!(e["write_ace"], "g:dev | u:bob");
    let msg = s.err(
        &["table", "edit", "/tables/db1/c1", "--admin-ace", "u:"],
        "EINVAL",
    );
    assert!(msg.contains("admin ACE"), "{msg}");
    assert_eq!(
        s.json(&["table", "info", "/tables/db1/c1"])["admin_ace"],
        Value::Null,
        "a refused edit changes nothing"
    );
    s.err(
        &["table", "edit", "/tables/nope", "--read-ace", "p"],
        "ENOENT",
    );

    // Delete.
    s.ok(&["table", "delete", "/tables/db1/c2"]);
    let msg = s.err(&["table", "info", "/tables/db1/c2"], "ENOENT");
    assert!(msg.contains("/tables/db1/c2"), "{msg}");
    s.err(&["table", "delete", "/tables/db1/c2"], "ENOENT");
    assert_eq!(
        paths(&s.json(&["table", "list", "/tables/db1"])),
        vec!["/tables/db1/c1"]
    );
}

#[test]
fn table_rights_follow_the_aces() {
    let s = TestServer::start();
    s.ok(&["user", "add", "alice", "--password", "alice-pw"]);
    s.ok(&["user", "add", "bob", "--password", "bob-pw"]);
    let alice = s.login("alice", "alice-pw");
    let bob = s.login("bob", "bob-pw");
    s.ok(&[
        "table",
        "create",
        "-p",
        "/tables/db/t",
        "--write-ace",
        "u:alice",
    ]);

    // bob holds no right: not even the settings.
    let args = ["table", "info", "/tables/db/t"];
    let msg = denied(&s, &args, as_user(&s, &bob, &args));
    assert!(
        msg.contains("read ACE") && msg.contains("bob"),
        "the denial names the ACE and the principal: {msg}"
    );
    let args = ["table", "edit", "/tables/db/t", "--read-ace", "u:bob"];
    denied(&s, &args, as_user(&s, &bob, &args));
    let args = ["table", "delete", "/tables/db/t"];
    denied(&s, &args, as_user(&s, &bob, &args));

    // alice may write: she sees the settings, not the size (that is reading).
    let info = json_as(&s, &alice, &["table", "info", "/tables/db/t"]);
    assert_eq!(info["write_ace"], "u:alice");
    assert_eq!(info["documents"], Value::Null);
    let args = ["table", "info", "/tables/db/t"];
    let text = s.check_ok(&args, as_user(&s, &alice, &args));
    assert!(text.contains("needs the read right"), "{text}");
    let args = ["table", "edit", "/tables/db/t", "--read-ace", "u:alice"];
    denied(&s, &args, as_user(&s, &alice, &args));

    // The admin names bob: now bob may read, and with the admin ACE change
    // the table and remove it.
    s.ok(&["table", "edit", "/tables/db/t", "--read-ace", "u:bob"]);
    let info = json_as(&s, &bob, &["table", "info", "/tables/db/t"]);
    assert_eq!(info["documents"], 0);
    let args = ["table", "edit", "/tables/db/t", "--write-ace", "u:bob"];
    denied(&s, &args, as_user(&s, &bob, &args));
    s.ok(&["table", "edit", "/tables/db/t", "--admin-ace", "u:bob"]);
    let e = json_as(
        &s,
        &bob,
        &["table", "edit", "/tables/db/t", "--write-ace", "u:bob"],
    );
    assert_eq!(e["write_ace"], "u:bob");
    // An edit that leaves the caller without the read right still answers.
    let e = json_as(
        &s,
        &bob,
        &["table", "edit", "/tables/db/t", "--clear-ace", "read"],
    );
    assert_eq!(e["read_ace"], Value::Null);
    assert_eq!(e["documents"], Value::Null);
    // Removing an entry also needs write on its directory, as in POSIX.
    let args = ["table", "delete", "/tables/db/t"];
    s.check_err(&args, as_user(&s, &bob, &args), "/tables/db (mode 0755");
    s.ok(&["chmod", "777", "/tables/db"]);
    s.check_ok(&args, as_user(&s, &bob, &args));
    s.err(&["table", "info", "/tables/db/t"], "ENOENT");

    // A recursive listing skips, and names, the directories the caller may
    // not list.
    s.ok(&["table", "create", "-p", "/tables/open/a"]);
    s.ok(&["table", "create", "-p", "/tables/secret/b"]);
    s.ok(&["chmod", "700", "/tables/secret"]);
    let args = ["table", "list", "-r", "--json"];
    let out = as_user(&s, &bob, &args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let list: Value = serde_json::from_str(&s.check_ok(&args, out)).expect("JSON");
    assert_eq!(paths(&list), vec!["/tables/open/a"]);
    assert!(
        stderr.contains("warning: /tables/secret"),
        "the skipped directory is named: {stderr}"
    );
    assert_eq!(
        paths(&s.json(&["table", "list", "-r"])),
        vec!["/tables/open/a", "/tables/secret/b"]
    );
}

/// A recursive listing read a table at a time resumes where it stopped,
/// inside nested directories and after them, and finds every table once.
#[test]
fn recursive_listing_pages_resume_depth_first() {
    let s = TestServer::start();
    for p in [
        "/t/a/x/1",
        "/t/a/x/2",
        "/t/a/y",
        "/t/b",
        "/t/c/z/deep/3",
        "/t/d",
    ] {
        s.ok(&["table", "create", "-p", p]);
    }
    s.ok(&["mkdir", "-p", "/t/a/empty/sub"]);
    s.ok(&["touch", "/t/a/file"]);
    let want = [
        "/t/a/x/1",
        "/t/a/x/2",
        "/t/a/y",
        "/t/b",
        "/t/c/z/deep/3",
        "/t/d",
    ];
    assert_eq!(paths(&s.json(&["table", "list", "-r", "/t"])), want);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let c = berth_client::Client::connect(s.client_config())
            .await
            .expect("connect");
        let mut tables = c.tables();
        for limit in [1, 2, 4] {
            let mut got = Vec::new();
            let mut start_after = String::new();
            for _ in 0..20 {
                let page = tables
                    .list(TableListRequest {
                        path: "/t".into(),
                        recursive: true,
                        start_after: start_after.clone(),
                        limit,
                    })
                    .await
                    .expect("list")
                    .into_inner();
                assert!(page.tables.len() <= limit as usize);
                got.extend(page.tables.into_iter().map(|e| e.path));
                if !page.more {
                    break;
                }
                start_after = page.next_start_after;
            }
            assert_eq!(got, want, "limit {limit}");
        }
        // A token passing through a directory resumes inside it.
        let page = tables
            .list(TableListRequest {
                path: "/t".into(),
                recursive: true,
                start_after: "a/x/1".into(),
                limit: 0,
            })
            .await
            .expect("list")
            .into_inner();
        let got: Vec<_> = page.tables.into_iter().map(|e| e.path).collect();
        assert_eq!(got, want[1..]);
        // Without recursive a token is one name.
        let e = tables
            .list(TableListRequest {
                path: "/t".into(),
                recursive: false,
                start_after: "a/x".into(),
                limit: 0,
            })
            .await
            .expect_err("a path token without recursive");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    });
}

/// Seeds `path` (database `db`) with documents `{_id: i, email}` and a
/// unique index on `email`, through pymongo.
fn seed_with_pymongo(s: &TestServer, coll: &str, n: u32) {
    let ticket = std::fs::read_to_string(s.admin_ticket()).expect("admin ticket");
    let code = format!(
        "import pymongo\n\
         c = pymongo.MongoClient('mongodb://admin:{}@127.0.0.1:{}/?tls=true&tlsCAFile={}\
         &authMechanism=PLAIN&authSource=$external', directConnection=True)\n\
         t = c['db']['{coll}']\n\
         t.insert_many([{{'_id': i, 'email': f'u{{i}}@x'}} for i in range({n})])\n\
         t.create_index('email', unique=True)\n",
        ticket.trim(),
        s.mongo_port,
        s.ca_file().display()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &code])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn table_check_finds_a_table_damaged_on_disk() {
    use berth_store::keys::{Key, Kind};
    use berth_store::{Durability, Space, Store};
    if !crate::kafka::have("pymongo", crate::kafka::python_has("pymongo")) {
        return;
    }
    let mut s = TestServer::start();
    seed_with_pymongo(&s, "checked", 30);
    let path = "/tables/db/checked";
    let text = s.ok(&["table", "check", path]);
    assert!(
        text.contains("30 documents, 1 indexes, 0 problems"),
        "{text}"
    );
    let r = s.json(&["table", "check", path]);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["documents"], 30);
    assert_eq!(r["indexes"][0]["name"], "email_1");
    assert_eq!(r["indexes"][0]["unique"], true);
    assert_eq!(r["indexes"][0]["entries"], 30);
    assert_eq!(r["problems"], Value::Array(vec![]));

    // Another user may not check it (the admin right), a missing table is ENOENT.
    s.ok(&["user", "add", "carol", "--password", "carol-pw"]);
    let carol = s.login("carol", "carol-pw");
    let args = ["table", "check", path];
    denied(&s, &args, as_user(&s, &carol, &args));
    s.err(&["table", "check", "/tables/db/none"], "ENOENT");

    // Behind the stopped server's back: one entry of the unique index
    // removed, one entry of an index the table does not have added.
    let info = s.json(&["table", "info", path]);
    let (vol, ino) = (
        info["entry"]["volume_id"].as_u64().expect("volume_id"),
        info["entry"]["inode"].as_u64().expect("inode"),
    );
    s.kill9();
    {
        let store = Store::open(&s.data.join("store")).expect("open the node store");
        let index = Key::new(vol, Kind::TableIndex, ino).u64(1).build();
        let end = berth_store::keys::prefix_end(&index);
        let entries = store
            .scan(Space::Data, &index, &end, 1)
            .expect("scan the index");
        assert_eq!(entries.len(), 1, "the unique index's entries are on disk");
        let mut batch = store.batch();
        batch.delete(Space::Data, &entries[0].0);
        let orphan = Key::new(vol, Kind::TableIndex, ino)
            .u64(9)
            .bytes(b"k")
            .build();
        batch.put(Space::Data, &orphan, &entries[0].1);
        store.write(batch, Durability::Sync).expect("write");
    }
    s.restart();
    let args = ["table", "check", path, "--json"];
    let out = s.cli(&args);
    assert_eq!(out.status.code(), Some(1), "problems fail the command");
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["problem_count"], 2, "{r}");
    assert_eq!(r["orphan_entries"], 1, "{r}");
    assert_eq!(r["indexes"][0]["missing"], 1, "{r}");
    assert_eq!(r["indexes"][0]["entries"], 29, "{r}");
    let kinds: Vec<&str> = r["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["missing-entry", "orphan-entry"], "{r}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("inconsistent (2 problems)"), "{stderr}");
    let text = String::from_utf8_lossy(&s.cli(&["table", "check", path]).stdout).into_owned();
    for want in [
        "2 problems",
        "missing-entry index email_1 _id ",
        "orphan-entry",
    ] {
        assert!(text.contains(want), "{want} in:\n{text}");
    }
}

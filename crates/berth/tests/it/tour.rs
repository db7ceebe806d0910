//! The CLI tour: every command family against a real server, the way a
//! person would use it after `berth server`.

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;

use crate::TestServer;

/// Names of the entries in a `ls --json` array.
fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("ls --json prints an array")
        .iter()
        .map(|e| e["name"].as_str().expect("entry name").to_string())
        .collect()
}

#[test]
fn namespace_tour() {
    let s = TestServer::start();

    // mkdir -p, ls, stat
    s.ok(&["mkdir", "-p", "/a/b/c"]);
    assert!(s.ok(&["ls"]).lines().any(|l| l == "a"), "ls / shows a");
    assert_eq!(names(&s.json(&["ls", "/a/b"])), vec!["c"]);
    let c = s.json(&["stat", "/a/b/c"]);
    assert_eq!(c["type"], "directory");
    assert_eq!(c["path"], "/a/b/c");
    assert_eq!(
        c["mode_string"], "drwxr-xr-x",
        "default mkdir mode 0755: {c}"
    );
    let human = s.ok(&["stat", "/a/b/c"]);
    assert!(
        human.contains("directory") && human.contains("drwxr-xr-x"),
        "{human}"
    );

    // mkdir -m
    s.ok(&["mkdir", "-m", "700", "/a/private"]);
    assert_eq!(s.json(&["stat", "/a/private"])["mode"], "0700");

    // touch creates a file; a second touch is fine
    s.ok(&["touch", "/a/f"]);
    s.ok(&["touch", "/a/f"]);
    let f = s.json(&["stat", "/a/f"]);
    assert_eq!(f["type"], "file");
    assert_eq!(f["size"], 0);

    // ln -s
    s.ok(&["ln", "-s", "/a/f", "/a/link"]);
    let l = s.json(&["stat", "/a/link"]);
    assert_eq!(l["type"], "symlink");
    assert_eq!(l["symlink_target"], "/a/f");
    let long = s.ok(&["ls", "-l", "/a"]);
    assert!(
        long.lines()
            .any(|x| x.starts_with('l') && x.ends_with("link -> /a/f")),
        "{long}"
    );
    assert!(
        long.lines()
            .any(|x| x.starts_with("-rw-r--r--") && x.ends_with(" f")),
        "{long}"
    );
    assert!(
        long.lines()
            .any(|x| x.starts_with("drwx------") && x.ends_with(" private")),
        "{long}"
    );

    // chmod
    s.ok(&["chmod", "600", "/a/f"]);
    assert_eq!(s.json(&["stat", "/a/f"])["mode"], "0600");

    // chown (numbers)
    s.ok(&["chown", "1234:2345", "/a/f"]);
    let f = s.json(&["stat", "/a/f"]);
    assert_eq!(
        (f["uid"].as_u64(), f["gid"].as_u64()),
        (Some(1234), Some(2345))
    );

    // mv
    s.ok(&["mv", "/a/f", "/a/b/g"]);
    s.err(&["stat", "/a/f"], "ENOENT");
    assert_eq!(s.json(&["stat", "/a/b/g"])["mode"], "0600");
    let mut n = names(&s.json(&["ls", "/a/b"]));
    n.sort();
    assert_eq!(n, vec!["c", "g"]);

    // ls of a file shows the file; several paths at once
    assert_eq!(s.ok(&["ls", "/a/b/g"]).trim(), "/a/b/g");
    let both = s.ok(&["ls", "/a", "/a/b"]);
    assert!(both.contains("/a:") && both.contains("/a/b:"), "{both}");

    // rm -r
    s.ok(&["rm", "-r", "/a"]);
    s.err(&["stat", "/a"], "ENOENT");
    assert!(!names(&s.json(&["ls", "/"])).contains(&"a".to_string()));
}

#[test]
fn ls_pages_through_large_directories() {
    let s = TestServer::start();
    s.ok(&["mkdir", "/many"]);
    // More than one List page (the CLI asks for 1000 per page).
    let paths: Vec<String> = (0..1100).map(|i| format!("/many/e{i:04}")).collect();
    for chunk in paths.chunks(200) {
        let mut args = vec!["touch"];
        args.extend(chunk.iter().map(String::as_str));
        s.ok(&args);
    }
    let listed = names(&s.json(&["ls", "/many"]));
    assert_eq!(listed.len(), 1100);
    let mut sorted = listed.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 1100, "no entry listed twice");
}

#[test]
fn volume_tour() {
    let s = TestServer::start();
    let v = s.json(&[
        "volume",
        "create",
        "/vol1",
        "--quota",
        "1G",
        "--replication",
        "1",
    ]);
    assert_eq!(v["path"], "/vol1");
    assert_eq!(v["quota_bytes"], 1u64 << 30);
    assert_eq!(v["replication"], 1);
    let id = v["id"].as_u64().expect("volume id");

    let list = s.json(&["volume", "list"]);
    let found = list
        .as_array()
        .expect("volume list --json prints an array")
        .iter()
        .find(|x| x["path"] == "/vol1")
        .unwrap_or_else(|| panic!("/vol1 not in {list}"));
    assert_eq!(found["id"].as_u64(), Some(id));
    let human = s.ok(&["volume", "list"]);
    assert!(
        human.starts_with("PATH") && human.contains("/vol1") && human.contains("1.0 GiB"),
        "{human}"
    );

    let info = s.json(&["volume", "info", "/vol1"]);
    assert_eq!(info["id"].as_u64(), Some(id));
    assert!(s.ok(&["volume", "info", "/vol1"]).contains("1.0 GiB"));

    // Entries inside the volume say so.
    s.ok(&["mkdir", "/vol1/d"]);
    let d = s.json(&["stat", "/vol1/d"]);
    assert_eq!(d["volume_path"], "/vol1");
    assert_eq!(d["volume_id"].as_u64(), Some(id));
    assert_eq!(s.json(&["stat", "/vol1"])["volume_root"], true);

    s.ok(&["volume", "remove", "/vol1", "--force"]);
    let list = s.json(&["volume", "list"]);
    assert!(
        !list
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["path"] == "/vol1"),
        "{list}"
    );
    s.err(&["volume", "info", "/vol1"], "ENOENT");
}

#[test]
fn principals_login_and_tickets() {
    let s = TestServer::start();
    let password = "correct horse battery staple";

    let g = s.json(&["group", "add", "ops"]);
    assert_eq!(g["name"], "ops");
    s.ok(&[
        "user",
        "add",
        "alice",
        "--password",
        password,
        "--group",
        "ops",
    ]);
    let out = s.cli_with(
        &["user", "add", "bob", "--password-stdin"],
        &[],
        Some("bob-password-1\n"),
    );
    s.check_ok(&["user", "add", "bob"], out);
    s.ok(&["user", "add", "svc-app", "--service"]);

    let users = s.json(&["user", "list"]);
    let alice = users
        .as_array()
        .expect("user list --json prints an array")
        .iter()
        .find(|u| u["name"] == "alice")
        .unwrap_or_else(|| panic!("alice not in {users}"));
    assert!(alice["uid"].as_u64().unwrap() >= 1000);
    assert_eq!(alice["groups"], serde_json::json!(["ops"]));
    assert!(users
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["name"] == "svc-app" && u["kind"] == "service"));
    assert!(s.ok(&["user", "list"]).starts_with("NAME"));

    // Group membership both ways.
    s.ok(&["group", "add-member", "ops", "bob"]);
    let ops = |s: &TestServer| {
        let gl = s.json(&["group", "list"]);
        gl.as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == "ops")
            .cloned()
            .unwrap_or_else(|| panic!("{gl}"))
    };
    let members = ops(&s)["members"].clone();
    assert!(
        members.as_array().unwrap().iter().any(|m| m == "bob"),
        "{members}"
    );
    s.ok(&["group", "remove-member", "ops", "bob"]);
    let members = ops(&s)["members"].clone();
    assert!(
        !members.as_array().unwrap().iter().any(|m| m == "bob"),
        "{members}"
    );

    // login with a password, then whoami with that ticket.
    let alice_ticket = s.home.join("alice.ticket");
    let args = [
        "login",
        "--user",
        "alice",
        "--password-stdin",
        "--out",
        alice_ticket.to_str().unwrap(),
    ];
    let out = s.cli_with(&args, &[], Some(&format!("{password}\n")));
    s.check_ok(&args, out);
    let mode = std::fs::metadata(&alice_ticket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "ticket file mode");
    let out = s.cli_with(
        &["whoami", "--json"],
        &[("BERTH_TICKET_FILE", &alice_ticket)],
        None,
    );
    let who: Value = serde_json::from_str(&s.check_ok(&["whoami"], out)).unwrap();
    assert_eq!(who["principal"], "alice");
    assert!(
        who["groups"].as_array().unwrap().iter().any(|g| g == "ops"),
        "{who}"
    );

    // A wrong password is refused.
    let args = [
        "login",
        "--user",
        "alice",
        "--password-stdin",
        "--out",
        "/dev/null",
    ];
    let out = s.cli_with(&args, &[], Some("wrong\n"));
    s.check_err(&args, out, "EAUTH");

    // The admin is who the admin ticket says.
    let who = s.json(&["whoami"]);
    assert!(
        who["principal"].as_str().is_some_and(|p| !p.is_empty()),
        "{who}"
    );

    // ticket issue / print.
    let svc_ticket = s.home.join("svc.ticket");
    s.ok(&[
        "ticket",
        "issue",
        "--principal",
        "svc-app",
        "--scope",
        "/apps:rw",
        "--ttl",
        "1h",
        "--out",
        svc_ticket.to_str().unwrap(),
    ]);
    let mode = std::fs::metadata(&svc_ticket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "issued ticket file mode");
    let body = s.json(&["ticket", "print", svc_ticket.to_str().unwrap()]);
    assert_eq!(body["principal"], "svc-app");
    assert!(
        body["scope"].as_str().is_some_and(|x| x.contains("/apps")),
        "{body}"
    );
    assert_eq!(body["expired"], false);
    let human = s.ok(&["ticket", "print", svc_ticket.to_str().unwrap()]);
    assert!(
        human.contains("svc-app") && human.contains("not verified"),
        "{human}"
    );
    let out = s.cli_with(
        &["whoami", "--json"],
        &[("BERTH_TICKET_FILE", &svc_ticket)],
        None,
    );
    let who: Value = serde_json::from_str(&s.check_ok(&["whoami"], out)).unwrap();
    assert_eq!(who["principal"], "svc-app");

    // Signing keys.
    let keys = s.json(&["ticket", "keys"]);
    assert!(
        keys.as_array().unwrap().iter().any(|k| k["active"] == true),
        "{keys}"
    );

    // Removal.
    s.ok(&["user", "remove", "alice"]);
    s.ok(&["group", "remove", "ops"]);
    let users = s.json(&["user", "list"]);
    assert!(
        !users
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["name"] == "alice"),
        "{users}"
    );
    let groups = s.json(&["group", "list"]);
    assert!(
        !groups
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "ops"),
        "{groups}"
    );
}

#[test]
fn acl_and_status() {
    let s = TestServer::start();
    s.ok(&["mkdir", "/shared"]);
    let a = s.json(&["acl", "get", "/shared"]);
    assert_eq!(a["read"], Value::Null, "no ACE on a new directory: {a}");

    s.ok(&[
        "acl",
        "set",
        "/shared",
        "--read",
        "u:alice | g:ops",
        "--write",
        "",
    ]);
    let a = s.json(&["acl", "get", "/shared"]);
    assert_eq!(a["read"], "u:alice | g:ops");
    assert_eq!(a["write"], "");
    assert_eq!(a["admin"], Value::Null);
    let human = s.ok(&["acl", "get", "/shared"]);
    assert!(
        human.contains("u:alice | g:ops") && human.contains("nobody"),
        "{human}"
    );

    s.ok(&["acl", "set", "/shared", "--clear"]);
    let a = s.json(&["acl", "get", "/shared"]);
    assert_eq!(
        (a["read"].clone(), a["write"].clone()),
        (Value::Null, Value::Null),
        "{a}"
    );

    s.err(&["acl", "set", "/shared", "--read", "u:alice &"], "EINVAL");

    let st = s.json(&["status"]);
    assert!(!st["nodes"].as_array().unwrap().is_empty(), "{st}");
    assert!(!st["shards"].as_array().unwrap().is_empty(), "{st}");
    assert!(s.ok(&["status"]).contains("NODE"));
}

#[test]
fn acknowledged_entries_survive_kill_9() {
    let mut s = TestServer::start();
    s.ok(&["mkdir", "-p", "/durable/x"]);
    s.ok(&["touch", "/durable/x/f"]);
    s.kill9();
    s.restart();
    assert_eq!(s.json(&["stat", "/durable/x/f"])["type"], "file");
    assert_eq!(names(&s.json(&["ls", "/durable"])), vec!["x"]);
}

#[test]
fn bench_meta_runs() {
    let s = TestServer::start();
    let local = s.dir.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    let r = s.json(&[
        "bench",
        "meta",
        "--clients",
        "2",
        "--ops",
        "20",
        "--local-dir",
        local.to_str().unwrap(),
    ]);
    for op in ["mkdir", "create", "stat"] {
        assert_eq!(r["berth"][op]["ops"], 40, "{r}");
        assert_eq!(r["local"][op]["ops"], 40, "{r}");
        assert!(r["ratio_berth_to_local"][op].as_f64().is_some(), "{r}");
    }
    // The bench cleans up after itself, here and there.
    assert!(
        std::fs::read_dir(&local).unwrap().next().is_none(),
        "local bench dir left behind"
    );
    let left = s.json(&["ls", "/bench"]);
    assert!(
        left.as_array().unwrap().is_empty(),
        "bench run dir left behind: {left}"
    );
}

//! Client failover against three `berth server` processes on loopback: a
//! CLI naming several servers keeps working when the first one is killed,
//! and a CLI naming one node that holds no replica of a volume is sent to
//! the node that does (`x-berth-leader`); a FUSE mount given the first node
//! only keeps serving from the nodes it learned.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::harness::TestServer;
use crate::join::{eventually_json, join_addr, token};
use crate::mount::{bounded, fuse_available, names, Mount};

/// Every shard in `st` has a leader, and three replicas on distinct nodes
/// unless it is `single` (a volume made with one replica).
fn all_placed(st: &serde_json::Value, single: &serde_json::Value) -> Option<()> {
    st["shards"]
        .as_array()?
        .iter()
        .all(|s| {
            let mut r: Vec<u64> = s["replicas"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
                .unwrap_or_default();
            r.sort_unstable();
            r.dedup();
            let want = if &s["id"] == single { 1 } else { 3 };
            r.len() == want && s["leader"].as_u64().unwrap_or(0) != 0
        })
        .then_some(())
}

/// `berth ARGS` through `via`'s harness with `servers` as BERTH_SERVERS.
fn cli(via: &TestServer, servers: &str, args: &[&str]) -> Output {
    via.cli_with(args, &[("BERTH_SERVERS", Path::new(servers))], None)
}

fn ok(via: &TestServer, servers: &str, args: &[&str]) -> String {
    let out = cli(via, servers, args);
    assert!(
        out.status.success(),
        "{args:?} with BERTH_SERVERS={servers}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// [`ok`] for a call the client does not repeat by itself: while a shard
/// has no leader yet (an election, a node that has not heard of the new
/// leader) it is refused with EAGAIN; anything else fails the test.
fn ok_eventually(via: &TestServer, servers: &str, args: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cli(via, servers, args);
        if out.status.success() {
            return;
        }
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains("EAGAIN"), "{args:?}: {err}");
        assert!(Instant::now() < deadline, "{args:?}: {err}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn cli_and_mount_fail_over_and_follow_redirects() {
    let n1 = TestServer::start();
    n1.ok(&["volume", "create", "/v3", "--replication", "3"]);
    n1.ok(&["mkdir", "/v3/before"]);
    let (t, _) = token(&n1, &["--uses", "2"]);
    let n2 = TestServer::start_joining(&join_addr(&n1), &t, &[]);
    let n3 = TestServer::start_joining(&join_addr(&n1), &t, &[]);
    let mut nodes = [n1, n2, n3];
    let addr = |s: &TestServer| format!("127.0.0.1:{}", s.native_port);

    // A volume with one replica: the two nodes without it refuse its
    // requests and name the node that has it.
    nodes[0].ok(&["volume", "create", "/one", "--replication", "1"]);
    let shard = nodes[0].json(&["volume", "info", "/one"])["shard_id"].clone();
    let st = eventually_json(&nodes[0], &nodes[0], |st| all_placed(st, &shard));
    let holder = st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == shard)
        .and_then(|s| s["leader"].as_u64())
        .unwrap() as usize;
    let stranger = (1..=3).find(|&n| n != holder).unwrap();
    let only = addr(&nodes[stranger - 1]);
    ok_eventually(&nodes[0], &only, &["mkdir", "/one/redirected"]);
    let ls = ok(&nodes[0], &only, &["ls", "/one"]);
    assert!(ls.contains("redirected"), "{ls}");

    // Kill the first listed node: the CLI moves on to the others.
    let all = nodes.iter().map(addr).collect::<Vec<_>>().join(",");
    assert!(ok(&nodes[0], &all, &["ls", "/v3"]).contains("before"));
    // The mount names the first node only: it learns the others.
    let mut mount = fuse_available().then(|| {
        let mp = nodes[1].dir.path().join("mnt");
        std::fs::create_dir_all(&mp).unwrap();
        let mp = mp.canonicalize().unwrap();
        let m = Mount::start(&nodes[0], &mp, &[]);
        assert!(names(&mp.join("v3")).contains(&"before".to_string()));
        (m, mp)
    });
    nodes[0].kill9();
    let ls = ok(&nodes[1], &all, &["ls", "/v3"]);
    assert!(ls.contains("before"), "{ls}");
    ok(&nodes[1], &all, &["stat", "/v3/before"]);
    ok_eventually(&nodes[1], &all, &["mkdir", "/v3/after-kill"]);
    let ls = ok(&nodes[2], &all, &["ls", "/v3"]);
    assert!(ls.contains("after-kill"), "{ls}");
    if let Some((m, mp)) = mount.as_mut() {
        let dir = mp.join("v3");
        bounded("listing through the mount after a kill", m, move || {
            let seen = names(&dir);
            assert!(seen.contains(&"after-kill".to_string()), "{seen:?}");
        });
    }

    // A dead node listed first is skipped when connecting.
    let dead_first = format!("{},{}", addr(&nodes[0]), addr(&nodes[2]));
    assert!(ok(&nodes[2], &dead_first, &["ls", "/v3"]).contains("after-kill"));
}

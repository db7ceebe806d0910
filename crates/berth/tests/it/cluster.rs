//! Three `berth server` processes on loopback, grown by joining: every
//! shard reaches its replication factor on distinct nodes by itself (a
//! volume made with RF 3 on a one-node cluster included), any node serves
//! any request, a killed leader is replaced, and a restarted node rejoins
//! from its data directory.

use crate::harness::TestServer;
use crate::join::{eventually_json, join_addr, token};

/// Every shard in `st` has `n` replicas, on distinct nodes, and a leader.
pub(crate) fn all_at(st: &serde_json::Value, n: usize) -> Option<()> {
    let shards = st["shards"].as_array()?;
    shards
        .iter()
        .all(|s| {
            let r: Vec<u64> = s["replicas"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
                .unwrap_or_default();
            let mut d = r.clone();
            d.sort_unstable();
            d.dedup();
            r.len() == n && d.len() == n && s["leader"].as_u64().unwrap_or(0) != 0
        })
        .then_some(())
}

#[test]
fn three_nodes_replicate_fail_over_and_rejoin() {
    let n1 = TestServer::start();
    n1.ok(&["volume", "create", "/v3", "--replication", "3"]);
    n1.ok(&["mkdir", "/v3/before"]);
    let (t, _) = token(&n1, &["--uses", "2"]);
    let n2 = TestServer::start_joining(&join_addr(&n1), &t, &["--label", "zone=b"]);
    let n3 = TestServer::start_joining(&join_addr(&n1), &t, &["--label", "zone=c"]);
    let mut nodes = [n1, n2, n3];

    // Meta, root and /v3 all reach three replicas by themselves.
    let st = eventually_json(&nodes[0], &nodes[0], |st| {
        all_at(st, 3)?;
        st["nodes"]
            .as_array()?
            .iter()
            .all(|n| n["state"] == "up" && n["alive"] == true)
            .then_some(())
    });
    assert_eq!(st["nodes"].as_array().unwrap().len(), 3, "{st}");

    // Any node serves any request: written through node 3, read through
    // node 2 (with node 1's admin ticket: one cluster, one key ring).
    let ticket = nodes[0].admin_ticket();
    let via = |nodes: &[TestServer], i: usize, args: &[&str]| {
        let out = nodes[i].cli_with(args, &[("BERTH_TICKET_FILE", &ticket)], None);
        assert!(
            out.status.success(),
            "{args:?} via node {}: {}",
            i + 1,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    via(&nodes, 2, &["mkdir", "/v3/from-3"]);
    let ls = via(&nodes, 1, &["ls", "/v3"]);
    assert!(ls.contains("before") && ls.contains("from-3"), "{ls}");

    // Kill -9 the leader of /v3's shard: the others elect a leader and
    // keep serving.
    let v3 = st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["volume_id"] != 0 && s["volume_id"] != 1)
        .cloned()
        .unwrap_or_else(|| panic!("no /v3 shard in {st}"));
    let leader = v3["leader"].as_u64().unwrap() as usize;
    nodes[leader - 1].kill9();
    let alive = (1..=3).find(|&n| n != leader).unwrap();
    let other = (1..=3).find(|&n| n != leader && n != alive).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = nodes[alive - 1].cli_with(
            &["mkdir", "/v3/after-kill"],
            &[("BERTH_TICKET_FILE", &ticket)],
            None,
        );
        if out.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        // Only "try again" while the group elects; anything else is a bug.
        assert!(err.contains("EAGAIN") || err.contains("EEXIST"), "{err}");
        if err.contains("EEXIST") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{err}\nnode {alive}:\n{}\nnode {other}:\n{}",
            nodes[alive - 1].log(),
            nodes[other - 1].log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let ls = via(&nodes, other - 1, &["ls", "/v3"]);
    assert!(ls.contains("after-kill"), "{ls}");

    // The killed node restarts from its data directory, rejoins, catches
    // up, and serves again.
    nodes[leader - 1].restart();
    let st = eventually_json(&nodes[leader - 1], &nodes[0], |st| {
        all_at(st, 3)?;
        (st["node_id"] == leader as u64).then_some(())
    });
    assert_eq!(st["nodes"].as_array().unwrap().len(), 3, "{st}");
    let ls = via(&nodes, leader - 1, &["ls", "/v3"]);
    assert!(ls.contains("after-kill") && ls.contains("from-3"), "{ls}");
}

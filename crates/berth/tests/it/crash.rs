//! Crash test: a client performs namespace mutations while the server is
//! killed with SIGKILL at random moments, repeatedly. After each restart
//! every acknowledged mutation is present, nothing unacknowledged appears
//! from nowhere, and the directory's link count matches its entries.

use std::collections::BTreeSet;
use std::time::Duration;

use berth_api::v1::{ListRequest, MkdirRequest, PathRequest, RemoveRequest, RenameRequest};
use rand::{Rng, SeedableRng};

use crate::harness::TestServer;

const ROUNDS: usize = 5;
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What the client knows after a round.
#[derive(Default, Debug)]
struct Model {
    /// Acknowledged present.
    present: BTreeSet<String>,
    /// Acknowledged removed (or renamed away).
    absent: BTreeSet<String>,
    /// In flight when the server died: either outcome is allowed.
    uncertain: BTreeSet<String>,
}

async fn client(s: &TestServer) -> berth_client::Client {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let cfg = s.client_config();
        if let Ok(c) = berth_client::Client::connect(cfg).await {
            let ok = c
                .namespace()
                .stat(PathRequest { path: "/".into() })
                .await
                .is_ok();
            if ok {
                return c;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "server did not come back\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs mutations until the first failure (the kill) and returns the model
/// changes of this round.
async fn mutate(c: berth_client::Client, round: usize, seed: u64, mut m: Model) -> Model {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut ns = c.namespace();
    let mut mine: Vec<String> = Vec::new();
    for i in 0..100_000usize {
        let op = rng.gen_range(0..10);
        if op < 6 || mine.is_empty() {
            let path = format!("/crash/r{round}-{i}");
            let call = ns.mkdir(MkdirRequest {
                path: path.clone(),
                mode: Some(0o755),
                parents: false,
            });
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(Ok(_)) => {
                    m.present.insert(path.clone());
                    mine.push(path);
                }
                _ => {
                    m.uncertain.insert(path);
                    return m;
                }
            }
        } else if op < 8 {
            let from = mine.swap_remove(rng.gen_range(0..mine.len()));
            let to = format!("{from}-mv{i}");
            let call = ns.rename(RenameRequest {
                from: from.clone(),
                to: to.clone(),
                no_replace: true,
                exchange: false,
            });
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(Ok(_)) => {
                    m.present.remove(&from);
                    m.absent.insert(from);
                    m.present.insert(to.clone());
                    mine.push(to);
                }
                _ => {
                    m.present.remove(&from);
                    m.uncertain.insert(from);
                    m.uncertain.insert(to);
                    return m;
                }
            }
        } else {
            let victim = mine.swap_remove(rng.gen_range(0..mine.len()));
            let call = ns.remove(RemoveRequest {
                path: victim.clone(),
                recursive: false,
            });
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(Ok(_)) => {
                    m.present.remove(&victim);
                    m.absent.insert(victim);
                }
                _ => {
                    m.present.remove(&victim);
                    m.uncertain.insert(victim);
                    return m;
                }
            }
        }
    }
    m
}

async fn listing(c: &berth_client::Client, dir: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut after = String::new();
    loop {
        let page = c
            .namespace()
            .list(ListRequest {
                path: dir.into(),
                start_after: after.clone(),
                limit: 500,
            })
            .await
            .expect("list after restart")
            .into_inner();
        for e in &page.entries {
            out.insert(e.path.clone());
            after = e.name.clone();
        }
        if !page.more {
            return out;
        }
    }
}

#[test]
fn acknowledged_mutations_survive_sigkill() {
    let seed: u64 = std::env::var("BERTH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash test seed {seed} (rerun with BERTH_CRASH_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut s = TestServer::start();
    s.ok(&["mkdir", "/crash"]);
    let mut model = Model::default();
    let mut total_acked = 0usize;
    for round in 0..ROUNDS {
        let c = rt.block_on(client(&s));
        let before = model.present.len() + model.absent.len();
        let worker = rt.spawn(mutate(c, round, rng.gen(), model));
        std::thread::sleep(Duration::from_millis(rng.gen_range(300..1500)));
        s.kill9();
        model = rt.block_on(worker).expect("worker panicked");
        total_acked += model.present.len() + model.absent.len() - before;
        s.restart();
        let c = rt.block_on(client(&s));
        let listed = rt.block_on(listing(&c, "/crash"));
        for p in &model.present {
            assert!(
                listed.contains(p),
                "round {round}: acknowledged {p} is missing after SIGKILL (seed {seed})"
            );
        }
        for p in &model.absent {
            assert!(
                !listed.contains(p) || model.uncertain.contains(p),
                "round {round}: {p} was acknowledged removed but is back (seed {seed})"
            );
        }
        for p in &listed {
            assert!(
                model.present.contains(p) || model.uncertain.contains(p),
                "round {round}: {p} appeared without being acknowledged (seed {seed})"
            );
        }
        // Consistency: the directory's link count is 2 + its subdirectories.
        let st = rt
            .block_on(c.namespace().stat(PathRequest {
                path: "/crash".into(),
            }))
            .expect("stat /crash")
            .into_inner();
        assert_eq!(
            st.nlink as usize,
            2 + listed.len(),
            "round {round}: nlink of /crash disagrees with its entries (seed {seed})"
        );
        // Consistency of the whole namespace: entries, inodes, link counts.
        let check = rt
            .block_on(c.volumes().check(PathRequest { path: "/".into() }))
            .expect("volume check")
            .into_inner();
        assert!(
            check.problems.is_empty(),
            "round {round}: namespace inconsistent after SIGKILL (seed {seed}): {:?}",
            check.problems
        );
        // Resolve the uncertain outcomes with what the server now says.
        for p in std::mem::take(&mut model.uncertain) {
            if listed.contains(&p) {
                model.absent.remove(&p);
                model.present.insert(p);
            } else {
                model.present.remove(&p);
                model.absent.insert(p);
            }
        }
    }
    assert!(
        total_acked > 0,
        "no mutation was acknowledged at all; the test proved nothing\n{}",
        s.log()
    );
    eprintln!("crash test: {total_acked} acknowledged mutations over {ROUNDS} kills");
}

/// A writer appends 64 KiB records to a file while the server is killed;
/// every acknowledged byte must read back identically after the restart.
#[test]
fn acknowledged_file_writes_survive_sigkill() {
    use berth_api::v1::{OpenRequest, ReadRequest, WriteRequest};
    const RECORD: usize = 64 << 10;
    let seed: u64 = std::env::var("BERTH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("file crash test seed {seed} (rerun with BERTH_CRASH_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut s = TestServer::start();
    let record = |i: u64| -> Vec<u8> {
        (0..RECORD)
            .map(|j| (i as usize * 7 + j * 13) as u8)
            .collect()
    };
    let mut acked: u64 = 0; // records acknowledged so far
    for round in 0..3 {
        let c = rt.block_on(client(&s));
        let start = acked;
        let writer = rt.spawn(async move {
            let mut files = c.files();
            let h = files
                .open(OpenRequest {
                    path: "/data.log".into(),
                    write: true,
                    create: true,
                    ..Default::default()
                })
                .await
                .expect("open")
                .into_inner()
                .handle;
            let mut n = start;
            loop {
                let w = files.write(WriteRequest {
                    handle: h.clone(),
                    offset: n * RECORD as u64,
                    data: record(n).into(),
                });
                match tokio::time::timeout(CALL_TIMEOUT, w).await {
                    Ok(Ok(_)) => n += 1,
                    _ => return n,
                }
            }
        });
        std::thread::sleep(Duration::from_millis(rng.gen_range(300..1200)));
        s.kill9();
        acked = rt.block_on(writer).expect("writer");
        s.restart();
        let c = rt.block_on(client(&s));
        let (size, data) = rt.block_on(async {
            let mut files = c.files();
            let r = files
                .open(OpenRequest {
                    path: "/data.log".into(),
                    read: true,
                    ..Default::default()
                })
                .await
                .expect("open after restart")
                .into_inner();
            let size = r.entry.unwrap().size;
            let mut data = Vec::new();
            while (data.len() as u64) < acked * RECORD as u64 {
                let chunk = files
                    .read(ReadRequest {
                        handle: r.handle.clone(),
                        offset: data.len() as u64,
                        length: 4 << 20,
                    })
                    .await
                    .expect("read")
                    .into_inner()
                    .data;
                assert!(
                    !chunk.is_empty(),
                    "file shorter than its acknowledged writes"
                );
                data.extend(chunk);
            }
            (size, data)
        });
        assert!(
            size >= acked * RECORD as u64,
            "round {round}: size {size} < acknowledged {} bytes (seed {seed})",
            acked * RECORD as u64
        );
        for i in 0..acked {
            let at = (i as usize) * RECORD;
            assert!(
                data[at..at + RECORD] == record(i)[..],
                "round {round}: acknowledged record {i} differs after SIGKILL (seed {seed})"
            );
        }
    }
    assert!(
        acked > 0,
        "nothing was acknowledged; the test proved nothing\n{}",
        s.log()
    );
    eprintln!(
        "file crash test: {acked} records ({} MiB) acknowledged and intact",
        (acked as usize * RECORD) >> 20
    );
}

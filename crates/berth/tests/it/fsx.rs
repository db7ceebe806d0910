//! Model-based random operations (fsx-style): the same random sequence of
//! writes, truncates, renames, links, unlinks and reads is applied to a
//! Berth mount and to a local directory, and the two are compared after
//! every step: the result of each call, names, sizes, link counts, and
//! (every few steps, and at the end) every byte. Seeds are printed; rerun
//! one with BERTH_FSX_SEEDS=seed[,seed...].

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use rand::{Rng, SeedableRng};

use crate::harness::TestServer;
use crate::mount::{bounded, fuse_available, Mount};

const STEPS: usize = 80;
const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];
const SIZE_MAX: u64 = 1 << 20;

fn snapshot(dir: &Path) -> Vec<(String, u64, u64)> {
    let mut v: Vec<(String, u64, u64)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                m.len(),
                m.nlink(),
            )
        })
        .collect();
    v.sort();
    v
}

fn outcome<T>(r: std::io::Result<T>) -> Result<(), i32> {
    r.map(|_| ()).map_err(|e| e.raw_os_error().unwrap_or(-1))
}

fn run(seed: u64, berth: &Path, local: &Path) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    fs::create_dir(berth).unwrap();
    fs::create_dir(local).unwrap();
    for step in 0..STEPS {
        let name = NAMES[rng.gen_range(0..NAMES.len())];
        let other = NAMES[rng.gen_range(0..NAMES.len())];
        let op = rng.gen_range(0..10);
        let what;
        let (rb, rl) = match op {
            0..=3 => {
                let off = rng.gen_range(0..SIZE_MAX);
                let len = rng.gen_range(1..65_536usize);
                let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                what = format!("write {name} @{off} +{len}");
                let w = |d: &Path| {
                    OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(d.join(name))
                        .and_then(|f| f.write_all_at(&data, off))
                };
                (outcome(w(berth)), outcome(w(local)))
            }
            4 => {
                let size = rng.gen_range(0..SIZE_MAX);
                what = format!("truncate {name} to {size}");
                let t = |d: &Path| {
                    OpenOptions::new()
                        .write(true)
                        .open(d.join(name))
                        .and_then(|f| f.set_len(size))
                };
                (outcome(t(berth)), outcome(t(local)))
            }
            5 => {
                what = format!("rename {name} -> {other}");
                (
                    outcome(fs::rename(berth.join(name), berth.join(other))),
                    outcome(fs::rename(local.join(name), local.join(other))),
                )
            }
            6 => {
                what = format!("link {name} -> {other}");
                (
                    outcome(fs::hard_link(berth.join(name), berth.join(other))),
                    outcome(fs::hard_link(local.join(name), local.join(other))),
                )
            }
            7 => {
                what = format!("unlink {name}");
                (
                    outcome(fs::remove_file(berth.join(name))),
                    outcome(fs::remove_file(local.join(name))),
                )
            }
            _ => {
                what = format!("read {name}");
                let rb = fs::read(berth.join(name));
                let rl = fs::read(local.join(name));
                if let (Ok(b), Ok(l)) = (&rb, &rl) {
                    assert!(
                        b == l,
                        "seed {seed} step {step} ({what}): contents differ ({} vs {} bytes)",
                        b.len(),
                        l.len()
                    );
                }
                (outcome(rb), outcome(rl))
            }
        };
        assert_eq!(
            rb, rl,
            "seed {seed} step {step} ({what}): result differs (Berth vs local)"
        );
        assert_eq!(
            snapshot(berth),
            snapshot(local),
            "seed {seed} step {step} ({what}): names, sizes or link counts differ"
        );
        if step % 20 == 19 || step + 1 == STEPS {
            for n in NAMES {
                let b = fs::read(berth.join(n)).ok();
                let l = fs::read(local.join(n)).ok();
                assert!(b == l, "seed {seed} step {step}: bytes of {n} differ");
            }
        }
    }
}

#[test]
fn random_operations_match_a_local_directory() {
    if !fuse_available() {
        return;
    }
    let seeds: Vec<u64> = match std::env::var("BERTH_FSX_SEEDS") {
        Ok(s) => s.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) => {
            let base: u64 = rand::random::<u32>() as u64;
            (base..base + 4).collect()
        }
    };
    eprintln!("fsx seeds {seeds:?} (rerun with BERTH_FSX_SEEDS=...)");
    let s = TestServer::start();
    let mp = s.dir.path().join("fsx-mnt");
    let model = s.dir.path().join("fsx-model");
    fs::create_dir_all(&mp).unwrap();
    fs::create_dir_all(&model).unwrap();
    let mut m = Mount::start(&s, &mp, &[]);
    bounded("fsx", &mut m, move || {
        for seed in seeds {
            run(
                seed,
                &mp.join(format!("s{seed}")),
                &model.join(format!("s{seed}")),
            );
        }
    });
}

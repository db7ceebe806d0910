//! `berth cp` both ways through the Files API, with real bytes compared.

use std::path::Path;

use crate::harness::TestServer;

fn write_file(path: &Path, len: usize, seed: u8) -> Vec<u8> {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(17).wrapping_add(seed))
        .collect();
    std::fs::write(path, &data).unwrap();
    data
}

#[test]
fn cp_up_and_down_recursive() {
    let s = TestServer::start();
    let src = s.dir.path().join("src");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    let files = [
        ("empty", 0usize),
        ("one", 1),
        ("chunk-plus", (1 << 20) + 3),
        ("sub/five-mib", 5 << 20),
        ("sub/deeper/small", 4096),
    ];
    let mut expect = Vec::new();
    for (i, (name, len)) in files.iter().enumerate() {
        expect.push((name, write_file(&src.join(name), *len, i as u8)));
    }
    s.ok(&["mkdir", "/up"]);
    s.ok(&["cp", "-r", src.to_str().unwrap(), "berth:/up"]);
    let ls = s.ok(&["ls", "/up/src/sub"]);
    assert!(ls.contains("five-mib") && ls.contains("deeper"), "{ls}");
    let st = s.json(&["stat", "/up/src/sub/five-mib"]);
    assert_eq!(st["size"], 5 << 20);
    let down = s.dir.path().join("down");
    std::fs::create_dir_all(&down).unwrap();
    s.ok(&["cp", "-r", "berth:/up/src", down.to_str().unwrap()]);
    for (name, data) in &expect {
        let got = std::fs::read(down.join("src").join(name)).unwrap();
        assert!(
            got == *data,
            "{name}: {} bytes back, {} expected",
            got.len(),
            data.len()
        );
    }
    // A single file to an explicit name, and usage accounting.
    s.ok(&["cp", src.join("one").to_str().unwrap(), "berth:/up/renamed"]);
    assert_eq!(s.json(&["stat", "/up/renamed"])["size"], 1);
    let total: usize = files.iter().map(|(_, l)| l).sum::<usize>() + 1;
    assert_eq!(s.json(&["volume", "info", "/"])["used_bytes"], total);
    // Mistakes give one clear line.
    let msg = s.err_any(&["cp", src.to_str().unwrap(), "berth:/up/x"]);
    assert!(msg.contains("cp -r"), "{msg}");
    let msg = s.err_any(&["cp", "a", "b"]);
    assert!(msg.contains("berth:/path"), "{msg}");
    s.err(
        &["cp", "berth:/up/missing", down.to_str().unwrap()],
        "ENOENT",
    );
}

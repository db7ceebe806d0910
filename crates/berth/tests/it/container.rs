//! Containers, whole system: `berth docker-plugin` driven over its unix
//! socket with real FUSE mounts, and the berth-client image with real
//! Docker (two containers on two Docker networks standing in for two hosts,
//! a scoped ticket, the non-root application, signals, the volume plugin
//! with an image that knows nothing of Berth, non-root containers on a
//! plugin volume, kcat in the image finding the streams with the Kafka
//! settings the entrypoint exports, and the MongoDB C driver reaching the
//! tables with `MONGODB_URI` alone).
//!
//! Skipped with a line on stderr where /dev/fuse, root (for mounting), or
//! Docker is missing, or while the binary lacks the two subcommands.
//!
//! Networking: the server listens (native API, Kafka, MongoDB) on the gateway
//! address of a Docker network the test creates (the host side of that
//! bridge) and on nothing else but its loopback admin port; containers on either test network reach it there. Everything the
//! test creates (containers, networks, images, volumes, processes, mounts)
//! is removed on the way out, also when it fails.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{output_within, TestServer, BIN};
use crate::posix_user::{run_op, Op, Who};

/// Longest a docker command (build, run, stop) may take.
pub(crate) const DOCKER_TIMEOUT_S: u64 = 180;
/// Longest a CLI call may take.
const CLI_TIMEOUT_S: u64 = 60;
/// Longest a server or plugin may take to start or stop.
const START_TIMEOUT_S: u64 = 60;
/// Longest one plugin request may take (a mount waits up to 30 s).
const REQUEST_TIMEOUT_S: u64 = 60;

/// Repository root (for the docker/ scripts).
pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

pub(crate) fn skip(test: &str, why: &str) {
    eprintln!("skipping {test}: {why}");
}

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a command with a deadline; a hung command is killed and fails the
/// test.
pub(crate) fn run(cmd: &mut Command, timeout_s: u64) -> Output {
    let what = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    match output_within(child, timeout_s) {
        Some(out) => out.unwrap_or_else(|e| panic!("{what}: {e}")),
        None => panic!("{what} did not finish in {timeout_s} s"),
    }
}

pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub(crate) fn explain(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

pub(crate) fn ok(what: &str, out: Output) -> String {
    assert!(out.status.success(), "{}", explain(what, &out));
    text(&out.stdout)
}

/// Both subcommands are in the binary (they are wired in by the lead).
fn wired() -> bool {
    ["container-run", "docker-plugin"].iter().all(|c| {
        Command::new(BIN)
            .args([c, "--help"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// FUSE mount points in this mount namespace.
fn fuse_mounts() -> Vec<PathBuf> {
    berth_fuse::mounts()
        .expect("reading /proc/self/mountinfo")
        .into_iter()
        .filter(berth_fuse::MountEntry::is_fuse)
        .map(|m| m.mount_point)
        .collect()
}

fn is_fuse(mp: &Path) -> bool {
    fuse_mounts().iter().any(|m| m == mp)
}

fn wait_until(what: &str, timeout_s: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not after {timeout_s} s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Detaches every FUSE mount under `root` (a failing test must not leave
/// mounts behind).
fn detach_under(root: &Path) {
    use std::os::unix::ffi::OsStrExt;
    for mp in fuse_mounts().iter().filter(|m| m.starts_with(root)) {
        if let Ok(c) = std::ffi::CString::new(mp.as_os_str().as_bytes()) {
            // SAFETY: `c` is a valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// One request to a plugin socket (HTTP/1.1, `Connection: close`); returns
/// the JSON answer, checking status 200 and the content type.
fn plugin_call(sock: &Path, endpoint: &str, body: Value) -> Value {
    let mut s = UnixStream::connect(sock).unwrap_or_else(|e| panic!("{}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(REQUEST_TIMEOUT_S)))
        .unwrap();
    let body = body.to_string();
    // One write, as Docker sends it: endpoints that ignore the body answer
    // and close at once, and body bytes arriving after that would make the
    // write fail (EPIPE) or the read (ECONNRESET).
    let req = format!(
        "POST /{endpoint} HTTP/1.1\r\nHost: plugin\r\n\
         Content-Type: application/vnd.docker.plugins.v1.2+json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
    let mut out = String::new();
    s.read_to_string(&mut out)
        .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{endpoint}: {head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/vnd.docker.plugins.v1+json"),
        "{head}"
    );
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{endpoint}: {e}: {body}"))
}

/// A `berth docker-plugin` process; killed on drop, its mounts detached.
struct Plugin {
    child: Option<Child>,
    sock: PathBuf,
    state: PathBuf,
    mounts: PathBuf,
    log: PathBuf,
    env: Vec<(String, String)>,
}

impl Plugin {
    fn start(sock: &Path, state: &Path, log: &Path, env: &[(&str, String)]) -> Plugin {
        let mut p = Plugin {
            child: None,
            sock: sock.to_path_buf(),
            state: state.to_path_buf(),
            mounts: state.join("mounts"),
            log: log.to_path_buf(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(BIN);
        for k in [
            "BERTH_TICKET",
            "BERTH_TICKET_FILE",
            "BERTH_CA_FILE",
            "BERTH_SERVERS",
            "BERTH_INSECURE",
            "BERTH_DATA_DIR",
        ] {
            cmd.env_remove(k);
        }
        cmd.arg("docker-plugin")
            .arg("--socket")
            .arg(&self.sock)
            .arg("--state-dir")
            .arg(&self.state)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn berth docker-plugin"));
        let sock = self.sock.clone();
        let deadline = Instant::now() + Duration::from_secs(START_TIMEOUT_S);
        while UnixStream::connect(&sock).is_err() {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("the plugin exited ({st}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "no plugin socket:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Mount points as /proc/self/mountinfo shows them.
        if let Ok(m) = self.mounts.canonicalize() {
            self.mounts = m;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn call(&self, endpoint: &str, body: Value) -> Value {
        plugin_call(&self.sock, endpoint, body)
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; returns whether it exited with status 0 in time.
    fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        // SAFETY: plain kill(2) on our own unreaped child.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(START_TIMEOUT_S);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.kill9();
        detach_under(&self.mounts);
        let _ = std::fs::remove_file(&self.sock);
    }
}

/// The plugin on the host, with real FUSE mounts (no Docker needed):
/// create, shared mounts, reference counts, read-only volumes, errors, and
/// a restart after SIGKILL that detaches the stale mount and keeps the
/// definitions.
#[test]
fn docker_plugin_with_fuse_mounts() {
    let name = "docker_plugin_with_fuse_mounts";
    if !Path::new("/dev/fuse").exists() {
        return skip(name, "/dev/fuse is absent");
    }
    if !is_root() {
        return skip(name, "the plugin mounts as root; run the tests as root");
    }
    if !wired() {
        return skip(
            name,
            "`berth container-run`/`docker-plugin` are not in the binary yet",
        );
    }
    let s = TestServer::start();
    s.ok(&["mkdir", "-p", "/apps"]);
    let dir = s.dir.path().join("plugin");
    std::fs::create_dir_all(&dir).unwrap();
    let env = [
        ("BERTH_SERVERS", format!("127.0.0.1:{}", s.native_port)),
        (
            "BERTH_CA_FILE",
            s.data.join("tls/ca.crt").display().to_string(),
        ),
        ("BERTH_TICKET_FILE", s.admin_ticket().display().to_string()),
    ];
    let mut p = Plugin::start(
        &dir.join("plugins/berth-it.sock"),
        &dir.join("state"),
        &dir.join("plugin.log"),
        &env,
    );

    assert_eq!(
        p.call("Plugin.Activate", json!({})),
        json!({"Implements": ["VolumeDriver"]})
    );
    assert_eq!(
        p.call("VolumeDriver.Capabilities", json!({})),
        json!({"Capabilities": {"Scope": "global"}})
    );

    // Create makes the path (mkdir -p through the native API).
    let v = p.call(
        "VolumeDriver.Create",
        json!({"Name": "vol1", "Opts": {"path": "/apps/vol1/data"}}),
    );
    assert_eq!(v, json!({"Err": ""}), "{}", p.log());
    assert_eq!(s.json(&["stat", "/apps/vol1/data"])["type"], "directory");

    // The first Mount mounts; the second shares it.
    let v = p.call("VolumeDriver.Mount", json!({"Name": "vol1", "ID": "c1"}));
    assert_eq!(v["Err"], "", "{v}\n{}", p.log());
    let mp = PathBuf::from(v["Mountpoint"].as_str().unwrap());
    assert!(mp.starts_with(p.mounts.canonicalize().unwrap()), "{mp:?}");
    assert!(is_fuse(&mp), "{mp:?} is not a FUSE mount");
    std::fs::write(mp.join("hello"), "hi\n").unwrap();
    assert_eq!(s.json(&["stat", "/apps/vol1/data/hello"])["size"], 3);
    // Any uid may use the volume (a container's `--user`), checked as
    // itself against the mode bits; what it creates is its own.
    let (u, other) = (
        Who::user(1000, 1000, &[1000]),
        Who::user(2000, 2000, &[2000]),
    );
    assert_eq!(run_op(&u, &Op::Create("mine", 0o644), &mp), libc::EACCES);
    std::os::unix::fs::chown(&mp, Some(1000), Some(1000)).unwrap();
    assert_eq!(
        run_op(&u, &Op::Create("mine", 0o644), &mp),
        0,
        "{}",
        p.log()
    );
    assert_eq!(run_op(&u, &Op::Read("mine"), &mp), 0);
    let st = s.json(&["stat", "/apps/vol1/data/mine"]);
    assert_eq!(
        (&st["uid"], &st["gid"]),
        (&json!(1000), &json!(1000)),
        "{st}"
    );
    assert_eq!(run_op(&other, &Op::Read("mine"), &mp), 0);
    assert_eq!(run_op(&other, &Op::Write("mine"), &mp), libc::EACCES);
    assert_eq!(run_op(&other, &Op::Unlink("mine"), &mp), libc::EACCES);
    assert_eq!(run_op(&u, &Op::Unlink("mine"), &mp), 0);
    let v = p.call("VolumeDriver.Mount", json!({"Name": "vol1", "ID": "c2"}));
    assert_eq!(v["Mountpoint"], mp.display().to_string());
    let v = p.call("VolumeDriver.Get", json!({"Name": "vol1"}));
    assert_eq!(v["Volume"]["Status"]["users"], 2, "{v}");
    let v = p.call("VolumeDriver.Remove", json!({"Name": "vol1"}));
    assert!(v["Err"].as_str().unwrap().contains("in use"), "{v}");

    // The last Unmount unmounts.
    assert_eq!(
        p.call("VolumeDriver.Unmount", json!({"Name": "vol1", "ID": "c1"})),
        json!({"Err": ""})
    );
    assert!(is_fuse(&mp), "still used by c2");
    p.call("VolumeDriver.Unmount", json!({"Name": "vol1", "ID": "c2"}));
    assert!(!is_fuse(&mp), "unmounted after the last user");
    assert_eq!(
        p.call("VolumeDriver.Path", json!({"Name": "vol1"})),
        json!({"Mountpoint": "", "Err": ""})
    );

    // A read-only volume of the same path.
    let v = p.call(
        "VolumeDriver.Create",
        json!({"Name": "ro", "Opts": {"path": "/apps/vol1/data", "readonly": "true"}}),
    );
    assert_eq!(v["Err"], "");
    let v = p.call("VolumeDriver.Mount", json!({"Name": "ro", "ID": "r"}));
    let ro = PathBuf::from(v["Mountpoint"].as_str().unwrap());
    assert_eq!(std::fs::read_to_string(ro.join("hello")).unwrap(), "hi\n");
    let e = std::fs::write(ro.join("nope"), "x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    p.call("VolumeDriver.Unmount", json!({"Name": "ro", "ID": "r"}));

    // Errors come back as Err.
    let v = p.call(
        "VolumeDriver.Create",
        json!({"Name": "bad", "Opts": {"colour": "red"}}),
    );
    assert!(v["Err"].as_str().unwrap().contains("unknown option"), "{v}");
    let v = p.call("VolumeDriver.Mount", json!({"Name": "none", "ID": "x"}));
    assert_eq!(v["Err"], "no such volume: none");

    // SIGKILL leaves the mount behind; the next start detaches it, keeps
    // the definitions, and mounts again on request.
    p.call("VolumeDriver.Mount", json!({"Name": "vol1", "ID": "c3"}));
    assert!(is_fuse(&mp));
    p.kill9();
    assert!(is_fuse(&mp), "the mount outlives the plugin");
    p.spawn();
    assert!(
        !is_fuse(&mp),
        "the stale mount is detached at start\n{}",
        p.log()
    );
    let v = p.call("VolumeDriver.List", json!({}));
    let mut names: Vec<&str> = v["Volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["Name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["ro", "vol1"], "{v}");
    assert_eq!(
        v["Volumes"][1]["Mountpoint"], "",
        "nothing counted as mounted"
    );
    let v = p.call("VolumeDriver.Mount", json!({"Name": "vol1", "ID": "c3"}));
    assert_eq!(v["Err"], "", "{v}\n{}", p.log());
    assert_eq!(std::fs::read_to_string(mp.join("hello")).unwrap(), "hi\n");
    p.call("VolumeDriver.Unmount", json!({"Name": "vol1", "ID": "c3"}));
    assert_eq!(
        p.call("VolumeDriver.Remove", json!({"Name": "vol1"})),
        json!({"Err": ""})
    );
    assert_eq!(
        s.json(&["stat", "/apps/vol1/data/hello"])["size"],
        3,
        "removing a volume keeps its data"
    );

    // SIGTERM: a clean exit that leaves no socket.
    p.call("VolumeDriver.Mount", json!({"Name": "ro", "ID": "last"}));
    assert!(p.terminate(), "plugin exit on SIGTERM\n{}", p.log());
    assert!(!p.sock.exists(), "socket removed");
    wait_until("mounts detached on SIGTERM", START_TIMEOUT_S, || {
        !fuse_mounts().iter().any(|m| m.starts_with(&p.mounts))
    });
}

/// Everything the Docker test creates, removed on drop.
#[derive(Default)]
pub(crate) struct DockerJunk {
    pub(crate) containers: Vec<String>,
    pub(crate) volumes: Vec<String>,
    pub(crate) images: Vec<String>,
    pub(crate) networks: Vec<String>,
}

impl Drop for DockerJunk {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new("docker")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        for c in &self.containers {
            quiet(&["rm", "-f", c]);
        }
        for v in &self.volumes {
            quiet(&["volume", "rm", "-f", v]);
        }
        for i in self.images.iter().rev() {
            quiet(&["rmi", "-f", i]);
        }
        for n in &self.networks {
            quiet(&["network", "rm", n]);
        }
    }
}

/// The absolute path of `program` on the host's PATH.
fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// Builds `tag` FROM `base` plus host programs (source, path in the image)
/// and every library `ldd` lists for them, at the same paths, as
/// docker/build-image.sh copies programs. No registry.
fn build_derived_image(base: &str, tag: &str, programs: &[(&Path, &str)], dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let stage = tempfile::Builder::new()
        .prefix("image-")
        .tempdir_in(dir)
        .unwrap();
    let root = stage.path().join("rootfs");
    let mut files: Vec<(PathBuf, PathBuf)> = Vec::new();
    for (src, dest) in programs {
        files.push((src.to_path_buf(), PathBuf::from(dest)));
        let out = ok(
            &format!("ldd {}", src.display()),
            // Cargo points LD_LIBRARY_PATH at build outputs (rdkafka-sys
            // builds its own librdkafka): the system's libraries are wanted.
            run(
                Command::new("ldd").env_remove("LD_LIBRARY_PATH").arg(src),
                CLI_TIMEOUT_S,
            ),
        );
        for line in out.lines().map(str::trim) {
            assert!(!line.contains("not found"), "{}: {line}", src.display());
            let lib = match line.split_once("=> ") {
                Some((_, l)) => l,
                None if line.starts_with('/') => line,
                None => continue, // linux-vdso
            };
            let lib = lib.split(" (").next().unwrap_or_default().trim();
            if lib.starts_with('/') {
                files.push((PathBuf::from(lib), PathBuf::from(lib)));
            }
        }
    }
    for (src, dest) in &files {
        let to = root.join(dest.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        // Follows symlinks: the image gets the file itself.
        std::fs::copy(src, &to).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let tar = stage.path().join("rootfs.tar");
    ok(
        "tar",
        run(
            Command::new("tar")
                .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
                .arg(&root)
                .arg("-cf")
                .arg(&tar)
                .arg("."),
            CLI_TIMEOUT_S,
        ),
    );
    std::fs::write(
        stage.path().join("Dockerfile"),
        format!("FROM {base}\nADD rootfs.tar /\n"),
    )
    .unwrap();
    std::fs::remove_dir_all(&root).unwrap();
    let out = run(
        Command::new("docker")
            .env("DOCKER_BUILDKIT", "0")
            .args(["build", "--quiet", "-t", tag])
            .arg(stage.path()),
        DOCKER_TIMEOUT_S,
    );
    ok(&format!("docker build {tag}"), out);
}

pub(crate) fn docker(args: &[&str]) -> Output {
    run(Command::new("docker").args(args), DOCKER_TIMEOUT_S)
}

pub(crate) fn docker_ok(args: &[&str]) -> String {
    ok(&format!("docker {args:?}"), docker(args))
}

/// A server bound to one address only (a Docker network's gateway), killed
/// on drop.
struct BridgeServer {
    child: Child,
    data: PathBuf,
    addr: String,
    /// The Kafka listener (TLS, SASL), as advertised.
    kafka_addr: String,
    /// The MongoDB listener (TLS), as advertised.
    mongo_addr: String,
    dir: PathBuf,
}

impl BridgeServer {
    fn start(dir: &Path, ip: &str) -> BridgeServer {
        let native_port = TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port on the bridge")
            .port();
        let kafka_port = TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port on the bridge")
            .port();
        let mongo_port = TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port on the bridge")
            .port();
        let admin_port = TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let data = dir.join("data");
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        let mut cmd = Command::new(BIN);
        for k in ["BERTH_TICKET", "BERTH_INSECURE", "BERTH_DATA_DIR"] {
            cmd.env_remove(k);
        }
        let child = cmd
            .arg("server")
            .arg("--data-dir")
            .arg(&data)
            .arg("--native-addr")
            .arg(format!("{ip}:{native_port}"))
            .arg("--admin-addr")
            .arg(format!("127.0.0.1:{admin_port}"))
            .arg("--kafka-addr")
            .arg(format!("{ip}:{kafka_port}"))
            .arg("--mongo-addr")
            .arg(format!("{ip}:{mongo_port}"))
            .args(["--advertise", ip, "--advertise", "127.0.0.1"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn berth server");
        let mut s = BridgeServer {
            child,
            data,
            addr: format!("{ip}:{native_port}"),
            kafka_addr: format!("{ip}:{kafka_port}"),
            mongo_addr: format!("{ip}:{mongo_port}"),
            dir: dir.to_path_buf(),
        };
        let sock = s.addr.parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(START_TIMEOUT_S);
        while !(s.data.join("admin.ticket").is_file()
            && TcpStream::connect_timeout(&sock, Duration::from_millis(200)).is_ok())
        {
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!("server exited ({st}):\n{}", s.log());
            }
            assert!(Instant::now() < deadline, "server not ready:\n{}", s.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn ca(&self) -> PathBuf {
        self.data.join("tls/ca.crt")
    }

    fn ticket(&self) -> PathBuf {
        self.data.join("admin.ticket")
    }

    fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(BIN);
        cmd.env_remove("BERTH_TICKET")
            .env_remove("BERTH_INSECURE")
            .env("BERTH_SERVERS", &self.addr)
            .env("BERTH_TICKET_FILE", self.ticket())
            .env("BERTH_CA_FILE", self.ca())
            .current_dir(&self.dir)
            .args(args);
        ok(&format!("berth {args:?}"), run(&mut cmd, CLI_TIMEOUT_S))
    }
}

impl Drop for BridgeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The berth-client image and the example application with real Docker.
#[test]
fn docker_image_end_to_end() {
    let name = "docker_image_end_to_end";
    if !Path::new("/dev/fuse").exists() {
        return skip(name, "/dev/fuse is absent");
    }
    let info = Command::new("docker")
        .args(["info", "--format", "{{json .SecurityOptions}}"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    let security = match info {
        Ok(o) if o.status.success() => text(&o.stdout),
        _ => return skip(name, "`docker info` fails (no Docker daemon reachable)"),
    };
    if !wired() {
        return skip(
            name,
            "`berth container-run`/`docker-plugin` are not in the binary yet",
        );
    }
    let tmp = tempfile::Builder::new()
        .prefix("berth-it-docker-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    let id = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
            % 100_000
    );
    let mut junk = DockerJunk::default();

    // Two networks: the server listens on the gateway of the first.
    let (net_a, net_b) = (format!("berth-it-{id}-a"), format!("berth-it-{id}-b"));
    for n in [&net_a, &net_b] {
        docker_ok(&["network", "create", "--label", "berth-it", n]);
        junk.networks.push(n.clone());
    }
    let gateway = docker_ok(&[
        "network",
        "inspect",
        "-f",
        "{{(index .IPAM.Config 0).Gateway}}",
        &net_a,
    ])
    .trim()
    .to_string();
    assert!(!gateway.is_empty(), "network {net_a} has no gateway");
    let server = BridgeServer::start(dir, &gateway);

    // Images: built from the binary under test, no registry.
    let client_image = format!("berth-client:it-{id}");
    let app_image = format!("berth-example:it-{id}");
    junk.images.push(client_image.clone());
    let built = run(
        Command::new(repo().join("docker/build-image.sh")).args([
            "--bin",
            BIN,
            "--tag",
            &client_image,
        ]),
        DOCKER_TIMEOUT_S,
    );
    ok("docker/build-image.sh", built);
    junk.images.push(app_image.clone());
    let built = run(
        Command::new(repo().join("docker/example-app/build.sh")).args([
            "--base",
            &client_image,
            "--tag",
            &app_image,
        ]),
        DOCKER_TIMEOUT_S,
    );
    ok("docker/example-app/build.sh", built);
    let kcat_image = which("kcat").map(|kcat| {
        let tag = format!("berth-kcat:it-{id}");
        junk.images.push(tag.clone());
        build_derived_image(&app_image, &tag, &[(&kcat, "/usr/bin/kcat")], dir);
        tag
    });

    // Data and a ticket narrowed to /apps/a.
    server.cli(&["mkdir", "-p", "/apps/a", "/apps/b"]);
    std::fs::write(dir.join("secret"), "b's secret\n").unwrap();
    let secret = dir.join("secret").display().to_string();
    server.cli(&["cp", &secret, "berth:/apps/b/secret"]);
    let scoped = dir.join("a.ticket");
    server.cli(&[
        "ticket",
        "issue",
        "--principal",
        "admin",
        "--scope",
        "/apps/a:rw",
        "--out",
        scoped.to_str().unwrap(),
    ]);

    let apparmor = security.contains("apparmor");
    let mut n = 0;
    let mut app = |image: &str, net: &str, env: &[&str], fuse: bool, cmd: &[&str]| -> Output {
        n += 1;
        let cname = format!("berth-it-{id}-c{n}");
        junk.containers.push(cname.clone());
        let ticket = format!("{}:/run/secrets/berth.ticket:ro", scoped.display());
        let ca = format!("{}:/run/secrets/berth-ca.crt:ro", server.ca().display());
        let servers = format!("BERTH_SERVERS={}", server.addr);
        let mut args = vec!["run", "--rm", "--name", &cname, "--network", net];
        if fuse {
            args.extend(["--device", "/dev/fuse", "--cap-add", "SYS_ADMIN"]);
            if apparmor {
                args.extend(["--security-opt", "apparmor=unconfined"]);
            }
        }
        args.extend(["-v", &ticket, "-v", &ca]);
        args.extend(["-e", "BERTH_TICKET_FILE=/run/secrets/berth.ticket"]);
        args.extend(["-e", "BERTH_CA_FILE=/run/secrets/berth-ca.crt"]);
        args.extend(["-e", "BERTH_PATH=/apps"]);
        if !env.contains(&"no-servers") {
            args.extend(["-e", &servers]);
        }
        for e in env.iter().filter(|e| **e != "no-servers") {
            args.extend(["-e", e]);
        }
        args.push(image);
        args.extend(cmd.iter().copied());
        docker(&args)
    };

    // 1. Network a: the non-root application writes its own file.
    let out = app(
        &app_image,
        &net_a,
        &[],
        true,
        &[
            "/usr/local/bin/notes",
            "write",
            "a/hello",
            "hello",
            "from",
            "a",
        ],
    );
    let stdout = ok("write a/hello", out.clone());
    assert!(
        stdout.contains("wrote /berth/a/hello as uid 1000 gid 1000"),
        "{}",
        explain("write", &out)
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("berth: admin on cluster berth, mounting /apps at /berth\n"),
        "{stderr}"
    );
    let copy = dir.join("hello.out").display().to_string();
    server.cli(&["cp", "berth:/apps/a/hello", &copy]);
    assert_eq!(std::fs::read_to_string(&copy).unwrap(), "hello from a\n");

    // 2. Network b (another "host"): a new container reads it back and
    // appends to it.
    let out = app(
        &app_image,
        &net_b,
        &[],
        true,
        &["/usr/local/bin/notes", "cat", "a/hello"],
    );
    assert_eq!(ok("cat a/hello", out), "hello from a\n");
    let out = app(
        &app_image,
        &net_b,
        &[],
        true,
        &["/usr/local/bin/notes", "append", "a/hello", "and b"],
    );
    ok("append a/hello", out);
    let out = app(
        &app_image,
        &net_a,
        &[],
        true,
        &["/usr/local/bin/notes", "cat", "a/hello"],
    );
    assert_eq!(ok("cat a/hello", out), "hello from a\nand b\n");

    // 3. The ticket's scope is the container's reach.
    for cmd in [
        &["/usr/local/bin/notes", "cat", "b/secret"][..],
        &["/usr/local/bin/notes", "write", "b/x", "y"][..],
    ] {
        let out = app(&app_image, &net_a, &[], true, cmd);
        assert_eq!(out.status.code(), Some(1), "{}", explain("scope", &out));
        assert!(
            text(&out.stderr).contains("Permission denied (os error 13)"),
            "{}",
            explain("scope", &out)
        );
    }

    // 4. What the application sees.
    let out = app(
        &app_image,
        &net_a,
        &[],
        true,
        &["/usr/local/bin/notes", "id"],
    );
    let id_out = ok("notes id", out);
    for want in [
        "uid=1000 gid=1000",
        "BERTH_MOUNT=/berth",
        "BERTH_PATH=/apps",
        "BERTH_TICKET_FILE=/run/berth/ticket",
        "BERTH_CA_FILE=/run/berth/ca.crt",
        "BERTH_CLUSTER=berth",
        &format!("KAFKA_BOOTSTRAP_SERVERS={}", server.kafka_addr),
        "KAFKA_SECURITY_PROTOCOL=SASL_SSL",
        "KAFKA_SASL_MECHANISM=PLAIN",
        "KAFKA_SASL_USERNAME=admin",
        "KAFKA_SSL_CA_LOCATION=/run/berth/ca.crt",
        "KAFKA_CONFIG_FILE=/run/berth/kafka.properties",
        "KCAT_CONFIG=/run/berth/kafka.properties",
    ] {
        assert!(id_out.lines().any(|l| l == want), "{want} in\n{id_out}");
    }
    // The ticket is in no variable; its file and the properties file
    // (which holds it as the SASL password) are the application's alone.
    let ticket_text = std::fs::read_to_string(&scoped).unwrap();
    assert!(!id_out.contains(ticket_text.trim()), "{id_out}");
    for (file, mode) in [("ticket", "400"), ("kafka.properties", "600")] {
        let out = app(
            &app_image,
            &net_a,
            &[],
            true,
            &[
                "/usr/local/bin/notes",
                "stat",
                &format!("/run/berth/{file}"),
            ],
        );
        let stdout = ok(&format!("stat {file}"), out);
        assert!(
            stdout.ends_with(&format!("mode={mode} uid=1000 gid=1000\n")),
            "{stdout}"
        );
    }

    // 5. Exit status and misconfiguration.
    let out = app(
        &app_image,
        &net_a,
        &[],
        true,
        &["/usr/local/bin/notes", "exit", "7"],
    );
    assert_eq!(out.status.code(), Some(7), "{}", explain("exit 7", &out));
    let out = app(
        &app_image,
        &net_a,
        &["no-servers"],
        true,
        &["/usr/local/bin/notes", "id"],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        explain("no servers", &out)
    );
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("BERTH_SERVERS is not set"), "{stderr}");
    let out = app(
        &app_image,
        &net_a,
        &[],
        false,
        &["/usr/local/bin/notes", "id"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", explain("no fuse", &out));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("--device /dev/fuse --cap-add SYS_ADMIN"),
        "{stderr}"
    );
    let out = app(
        &app_image,
        &net_a,
        &["BERTH_UID=0"],
        true,
        &["/usr/local/bin/notes", "id"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", explain("uid 0", &out));

    // 6. Kafka with the exported settings only: kcat (Debian's, with its
    // libraries, added to the example image) finds the cluster through
    // KCAT_CONFIG; the ticket's scope bounds its topics.
    match &kcat_image {
        None => skip(
            "docker_image_end_to_end (Kafka part)",
            "kcat is not installed on the host (scripts/test installs it)",
        ),
        Some(kcat_image) => {
            server.cli(&["mkdir", "-p", "/other"]);
            server.cli(&["stream", "create", "/apps/a/events"]);
            server.cli(&["stream", "create", "/other/events"]);
            let lines = dir.join("lines.txt");
            std::fs::write(&lines, "one\ntwo\nthree\n").unwrap();
            server.cli(&["cp", lines.to_str().unwrap(), "berth:/apps/a/lines.txt"]);
            // Produced on one "host", consumed on the other; no flags but
            // the mode and the topic.
            let produce = |topic| {
                [
                    "/usr/bin/kcat",
                    "-P",
                    "-l",
                    "-t",
                    topic,
                    "/berth/a/lines.txt",
                ]
            };
            let consume = |topic| {
                [
                    "/usr/bin/kcat",
                    "-C",
                    "-e",
                    "-q",
                    "-o",
                    "beginning",
                    "-t",
                    topic,
                ]
            };
            let cmd = produce("/apps/a/events:lines");
            let out = app(kcat_image, &net_a, &[], true, &cmd);
            ok(&format!("{cmd:?}\n{}", server.log()), out);
            let cmd = consume("/apps/a/events:lines");
            let out = app(kcat_image, &net_b, &[], true, &cmd);
            assert_eq!(
                ok(&format!("{cmd:?}\n{}", server.log()), out),
                "one\ntwo\nthree\n"
            );
            // Outside the ticket's scope: TOPIC_AUTHORIZATION_FAILED.
            for cmd in [
                &produce("/other/events:lines")[..],
                &consume("/other/events:lines")[..],
            ] {
                let out = app(kcat_image, &net_a, &[], true, cmd);
                let what = format!("{cmd:?}");
                assert!(!out.status.success(), "{}", explain(&what, &out));
                assert!(
                    text(&out.stderr).contains("Topic authorization failed"),
                    "{}",
                    explain(&what, &out)
                );
            }
        }
    }

    // 6b. MongoDB with MONGODB_URI alone: the C driver's check program
    // (with its libraries, added to the example image) connects with the
    // variable and nothing else, on the other "host"; the ticket's scope
    // bounds its tables (Unauthorized, 13).
    match crate::mongo_drivers::c_check() {
        None => skip(
            "docker_image_end_to_end (MongoDB part)",
            "libmongoc is not installed on the host (scripts/test installs it)",
        ),
        Some(check) => {
            let tag = format!("berth-mongoc:it-{id}");
            junk.images.push(tag.clone());
            build_derived_image(&app_image, &tag, &[(check, "/usr/bin/mongoc-check")], dir);
            // The application's first insert creates the table, as
            // MongoDB's readWrite role does (its rw ticket suffices).
            let cmd = ["/usr/bin/mongoc-check", "app", "x./apps/a/users"];
            let out = app(&tag, &net_b, &[], true, &cmd);
            assert_eq!(ok(&format!("{cmd:?}\n{}", server.log()), out), "ok\n");
            let info = server.cli(&["table", "info", "/apps/a/users", "--json"]);
            let info: Value = serde_json::from_str(&info).unwrap();
            assert_eq!(info["documents"], 1, "{info}");
            server.cli(&["mkdir", "-p", "/other"]);
            server.cli(&["table", "create", "/other/users"]);
            let cmd = ["/usr/bin/mongoc-check", "app-denied", "x./other/users"];
            let out = app(&tag, &net_a, &[], true, &cmd);
            assert_eq!(ok(&format!("{cmd:?}\n{}", server.log()), out), "ok\n");
            // The URI names the node's advertised MongoDB address.
            let status = server.cli(&["status", "--json"]);
            assert!(status.contains(&server.mongo_addr), "{status}");
        }
    }

    // 7. `docker stop` reaches the application through PID 1.
    let cname = format!("berth-it-{id}-sleeper");
    junk.containers.push(cname.clone());
    let ticket = format!("{}:/run/secrets/t:ro", scoped.display());
    let ca = format!("{}:/run/secrets/ca:ro", server.ca().display());
    let servers = format!("BERTH_SERVERS={}", server.addr);
    let mut args = vec![
        "run",
        "-d",
        "--name",
        &cname,
        "--network",
        &net_a,
        "--device",
        "/dev/fuse",
        "--cap-add",
        "SYS_ADMIN",
    ];
    if apparmor {
        args.extend(["--security-opt", "apparmor=unconfined"]);
    }
    args.extend([
        "-v",
        &ticket,
        "-v",
        &ca,
        "-e",
        &servers,
        "-e",
        "BERTH_TICKET_FILE=/run/secrets/t",
        "-e",
        "BERTH_CA_FILE=/run/secrets/ca",
        &app_image,
        "/usr/local/bin/notes",
        "sleep",
        "300",
    ]);
    docker_ok(&args);
    wait_until("the application runs", START_TIMEOUT_S, || {
        text(&docker(&["top", &cname]).stdout).contains("notes sleep")
    });
    docker_ok(&["stop", "-t", "30", &cname]);
    let code = docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", &cname]);
    let logs = docker(&["logs", &cname]);
    assert_eq!(
        code.trim(),
        "143",
        "128 + SIGTERM\n{}",
        explain("logs", &logs)
    );
    assert!(
        !text(&logs.stderr).contains("warning"),
        "{}",
        explain("logs", &logs)
    );

    // 8. The volume plugin with an image that knows nothing of Berth (the
    // entrypoint is bypassed; the volume comes from Docker).
    if !is_root() {
        return skip(
            "docker_image_end_to_end (volume plugin part)",
            "the plugin needs root",
        );
    }
    let driver = format!("berth-it-{id}");
    let plugin_env = [
        ("BERTH_SERVERS", server.addr.clone()),
        ("BERTH_CA_FILE", server.ca().display().to_string()),
        ("BERTH_TICKET_FILE", server.ticket().display().to_string()),
    ];
    let mut plugin = Plugin::start(
        &Path::new("/run/docker/plugins").join(format!("{driver}.sock")),
        &dir.join("plugin-state"),
        &dir.join("plugin.log"),
        &plugin_env,
    );
    let vol = format!("berth-it-{id}-vol");
    junk.volumes.push(vol.clone());
    let vpath = format!("path=/apps/vol-{id}");
    docker_ok(&["volume", "create", "-d", &driver, "-o", &vpath, &vol]);
    let mount = format!("{vol}:/data");
    for (net, cmd, want) in [
        (
            &net_a,
            &["write", "/data/greeting", "hi", "from", "a", "volume"][..],
            None,
        ),
        (
            &net_b,
            &["cat", "/data/greeting"][..],
            Some("hi from a volume\n"),
        ),
    ] {
        let cname = format!("berth-it-{id}-v{}", junk.containers.len());
        junk.containers.push(cname.clone());
        let mut args = vec![
            "run",
            "--rm",
            "--name",
            &cname,
            "--network",
            net,
            "-v",
            &mount,
            "--entrypoint",
            "/usr/local/bin/notes",
            &app_image,
        ];
        args.extend(cmd.iter().copied());
        let out = docker(&args);
        let stdout = ok(&format!("{cmd:?}\n{}", plugin.log()), out);
        if let Some(w) = want {
            assert_eq!(stdout, w);
        }
    }
    let stat = server.cli(&["stat", "--json", &format!("/apps/vol-{id}/greeting")]);
    let stat: Value = serde_json::from_str(&stat).expect("stat --json");
    assert_eq!(stat["size"], 17, "{stat}");

    // 9. Non-root containers (`--user`) on a plugin volume: each is checked
    // as its own uid, and what one creates is its own.
    let uvol = format!("berth-it-{id}-uvol");
    junk.volumes.push(uvol.clone());
    let upath = format!("/apps/uvol-{id}");
    docker_ok(&[
        "volume",
        "create",
        "-d",
        &driver,
        "-o",
        &format!("path={upath}"),
        &uvol,
    ]);
    server.cli(&["chown", "1000:1000", &upath]);
    let umount = format!("{uvol}:/data");
    let mut as_user = |user: &str, net: &str, cmd: &[&str]| -> Output {
        let cname = format!("berth-it-{id}-u{}", junk.containers.len());
        junk.containers.push(cname.clone());
        let mut args = vec![
            "run",
            "--rm",
            "--name",
            &cname,
            "--network",
            net,
            "--user",
            user,
            "-v",
            &umount,
            "--entrypoint",
            "/usr/local/bin/notes",
            &app_image,
        ];
        args.extend(cmd);
        docker(&args)
    };
    let out = as_user("1000:1000", &net_a, &["write", "/data/mine", "by", "1000"]);
    let stdout = ok(&format!("write as 1000\n{}", plugin.log()), out);
    assert!(stdout.contains("as uid 1000 gid 1000"), "{stdout}");
    let out = as_user("1000:1000", &net_b, &["cat", "/data/mine"]);
    assert_eq!(
        ok(&format!("cat as 1000\n{}", plugin.log()), out),
        "by 1000\n"
    );
    let out = as_user("1000:1000", &net_b, &["stat", "/data/mine"]);
    let stdout = ok(&format!("stat as 1000\n{}", plugin.log()), out);
    assert!(stdout.ends_with("mode=644 uid=1000 gid=1000\n"), "{stdout}");
    let out = as_user("2000:2000", &net_a, &["cat", "/data/mine"]);
    assert_eq!(ok("cat as 2000", out), "by 1000\n");
    for cmd in [
        &["append", "/data/mine", "by 2000"][..],
        &["write", "/data/theirs", "by 2000"][..],
    ] {
        let out = as_user("2000:2000", &net_a, cmd);
        assert_eq!(out.status.code(), Some(1), "{}", explain("as 2000", &out));
        assert!(
            text(&out.stderr).contains("Permission denied (os error 13)"),
            "{}",
            explain("as 2000", &out)
        );
    }
    let stat = server.cli(&["stat", "--json", &format!("{upath}/mine")]);
    let stat: Value = serde_json::from_str(&stat).expect("stat --json");
    assert_eq!(
        (&stat["uid"], &stat["gid"]),
        (&json!(1000), &json!(1000)),
        "{stat}"
    );
    assert_eq!(stat["size"], 8, "{stat}");
    docker_ok(&["volume", "rm", &uvol]);
    assert!(
        !fuse_mounts().iter().any(|m| m.starts_with(&plugin.mounts)),
        "unmounted once no container uses it"
    );
    docker_ok(&["volume", "rm", &vol]);
    assert!(plugin.terminate(), "plugin exit\n{}", plugin.log());
}

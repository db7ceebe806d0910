//! `TestServer`: one real `berth server` process on loopback ports with its
//! own temporary data directory, and a way to run the real `berth` CLI
//! against it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to become ready.
const READY_TIMEOUT_S: u64 = 60;
/// How long one CLI invocation may take before the test fails.
const CLI_TIMEOUT_S: u64 = 60;

pub const BIN: &str = env!("CARGO_BIN_EXE_berth");

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub home: PathBuf,
    pub native_port: u16,
    /// The Kafka listener's port.
    pub kafka_port: u16,
    /// The MongoDB listener's port.
    pub mongo_port: u16,
    pub admin_port: u16,
    /// Extra `berth server` arguments, kept for restarts.
    extra_args: Vec<String>,
    /// What "started" means for this server.
    ready: Ready,
    /// [`WAITING_LINE`]s on stdout before the last spawn.
    waiting_lines_before: usize,
    child: Option<Child>,
}

/// When a started server counts as ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ready {
    /// It serves requests: the admin ticket exists and the native port
    /// accepts connections.
    Serving,
    /// It joined a cluster and waits for replicas: it said so once more on
    /// stdout, and the native port accepts connections.
    Waiting,
}

/// What a node that joined prints once it is up.
pub const WAITING_LINE: &str = "waiting for the cluster to give it replicas";
/// What a server prints once it serves requests.
pub const SERVING_LINE: &str = "is serving";

/// Waits for `child`'s output for at most `timeout_s`; `None` when it did
/// not finish in time (it is then killed), so a hung program fails its
/// test instead of hanging it.
pub fn output_within(child: Child, timeout_s: u64) -> Option<std::io::Result<Output>> {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(timeout_s)) {
        Ok(out) => Some(out),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            None
        }
    }
}

/// A port that was free a moment ago (bind :0, read it, drop the listener).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

impl TestServer {
    /// Starts a server and waits until it is ready.
    pub fn start() -> TestServer {
        TestServer::start_with(&[])
    }

    /// Starts a server with extra `berth server` arguments.
    pub fn start_with(extra_args: &[&str]) -> TestServer {
        let mut s = TestServer::prepare(extra_args);
        s.spawn();
        s.wait_ready();
        s
    }

    /// Starts a server that joins the cluster of the node at `join`
    /// (`HOST:PORT`) with `token`, and waits until it has joined.
    pub fn start_joining(join: &str, token: &str, extra_args: &[&str]) -> TestServer {
        let mut args = vec!["--join", join, "--join-token", token];
        args.extend_from_slice(extra_args);
        let mut s = TestServer::prepare(&args);
        s.ready = Ready::Waiting;
        s.spawn();
        s.wait_ready();
        s
    }

    /// Runs `berth server` with `--join` and `token` in a new temp dir and
    /// expects it to exit (a refused join) within the CLI timeout. Returns
    /// the server (not running) and what the process printed.
    pub fn join_refused(join: &str, token: &str) -> (TestServer, Output) {
        let s = TestServer::prepare(&["--join", join, "--join-token", token]);
        let child = s
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn berth server");
        match output_within(child, CLI_TIMEOUT_S) {
            Some(out) => (s, out.expect("collect berth server output")),
            None => panic!("berth server --join did not exit in {CLI_TIMEOUT_S} s"),
        }
    }

    /// A server's directories and free ports; nothing runs yet.
    fn prepare(extra_args: &[&str]) -> TestServer {
        let dir = tempfile::Builder::new()
            .prefix("berth-it-")
            .tempdir()
            .expect("tempdir");
        let data = dir.path().join("data");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).expect("home dir");
        std::fs::create_dir_all(dir.path().join("work")).expect("work dir");
        let native_port = free_port();
        let mut admin_port = free_port();
        while admin_port == native_port {
            admin_port = free_port();
        }
        let mut kafka_port = free_port();
        while kafka_port == native_port || kafka_port == admin_port {
            kafka_port = free_port();
        }
        let mut mongo_port = free_port();
        while [native_port, admin_port, kafka_port].contains(&mongo_port) {
            mongo_port = free_port();
        }
        TestServer {
            dir,
            data,
            home,
            native_port,
            kafka_port,
            mongo_port,
            admin_port,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            ready: Ready::Serving,
            waiting_lines_before: 0,
            child: None,
        }
    }

    fn log_file(&self, name: &str) -> File {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(name))
            .expect("server log file")
    }

    /// The `berth server` command line of this server.
    fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("server")
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--native-addr")
            .arg(format!("127.0.0.1:{}", self.native_port))
            .arg("--admin-addr")
            .arg(format!("127.0.0.1:{}", self.admin_port))
            .arg("--kafka-addr")
            .arg(format!("127.0.0.1:{}", self.kafka_port))
            .arg("--mongo-addr")
            .arg(format!("127.0.0.1:{}", self.mongo_port))
            .arg("--advertise")
            .arg("127.0.0.1")
            .args(&self.extra_args)
            .current_dir(self.dir.path().join("work"))
            .env("HOME", &self.home)
            .stdin(Stdio::null());
        for k in ENV_TO_CLEAR {
            cmd.env_remove(k);
        }
        cmd
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "server already running");
        self.waiting_lines_before = self.waiting_lines();
        let mut cmd = self.command();
        cmd.stdout(self.log_file("server.stdout.log"))
            .stderr(self.log_file("server.stderr.log"));
        self.child = Some(cmd.spawn().expect("spawn berth server"));
    }

    /// How often the server's stdout said it waits for replicas, or that it
    /// serves (a joined node that already holds replicas starts serving
    /// without waiting).
    fn waiting_lines(&self) -> usize {
        let out =
            std::fs::read_to_string(self.dir.path().join("server.stdout.log")).unwrap_or_default();
        out.matches(WAITING_LINE).count() + out.matches(SERVING_LINE).count()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(READY_TIMEOUT_S);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.native_port).parse().unwrap();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "berth server exited during startup ({status})\n{}",
                    self.log()
                );
            }
            let up = match self.ready {
                Ready::Serving => self.data.join("admin.ticket").is_file(),
                Ready::Waiting => self.waiting_lines() > self.waiting_lines_before,
            };
            if up && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "berth server not ready after {READY_TIMEOUT_S} s\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Both log files of the server, for failure messages.
    pub fn log(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!(
            "--- server stdout ---\n{}\n--- server stderr ---\n{}",
            read("server.stdout.log"),
            read("server.stderr.log")
        )
    }

    pub fn admin_ticket(&self) -> PathBuf {
        self.data.join("admin.ticket")
    }

    /// The cluster CA certificate (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.data.join("tls").join("ca.crt")
    }

    /// A native client configuration for this server, as the admin.
    pub fn client_config(&self) -> berth_client::ClientConfig {
        berth_client::ClientConfig {
            servers: vec![format!("127.0.0.1:{}", self.native_port)],
            ticket: std::fs::read_to_string(self.admin_ticket())
                .ok()
                .map(|t| t.trim().to_string()),
            ca_pem: std::fs::read_to_string(self.data.join("tls").join("ca.crt")).ok(),
            insecure: false,
        }
    }

    /// Runs `berth ARGS` as the admin.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with(args, &[], None)
    }

    /// Runs `berth ARGS` with extra environment (which may replace the
    /// defaults, e.g. BERTH_TICKET_FILE) and optional stdin.
    pub fn cli_with(&self, args: &[&str], env: &[(&str, &Path)], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(BIN);
        for k in ENV_TO_CLEAR {
            cmd.env_remove(k);
        }
        cmd.args(args)
            .current_dir(self.dir.path().join("work"))
            .env("HOME", &self.home)
            .env("BERTH_SERVERS", format!("127.0.0.1:{}", self.native_port))
            .env("BERTH_TICKET_FILE", self.admin_ticket())
            .env("BERTH_CA_FILE", self.data.join("tls").join("ca.crt"))
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn berth");
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().expect("stdin pipe");
            pipe.write_all(text.as_bytes()).expect("write stdin");
        }
        // Bound the wait: a hung CLI must fail the test, not hang it.
        match output_within(child, CLI_TIMEOUT_S) {
            Some(out) => out.expect("collect berth output"),
            None => panic!(
                "berth {args:?} did not finish in {CLI_TIMEOUT_S} s\n{}",
                self.log()
            ),
        }
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again with `extra` arguments added (kept for
    /// later restarts).
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.extra_args.extend(extra.iter().map(|a| a.to_string()));
        self.restart();
    }

    /// Starts the server again on the same data directory and ports.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.wait_ready();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Variables of the developer's shell that would change what the CLI does.
const ENV_TO_CLEAR: [&str; 8] = [
    "BERTH_TICKET",
    "BERTH_INSECURE",
    "BERTH_DATA_DIR",
    "BERTH_SERVERS",
    "BERTH_TICKET_FILE",
    "BERTH_CA_FILE",
    "BERTH_JOIN_TOKEN",
    "RUST_BACKTRACE",
];

/// Assertions on CLI runs, with the server log in every failure message.
impl TestServer {
    fn explain(&self, args: &[&str], out: &Output) -> String {
        format!(
            "berth {args:?} exited with {}\nstdout: {}\nstderr: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        )
    }

    /// Checks that a run succeeded; returns its stdout.
    pub fn check_ok(&self, args: &[&str], out: Output) -> String {
        assert!(out.status.success(), "{}", self.explain(args, &out));
        String::from_utf8(out.stdout).expect("stdout is UTF-8")
    }

    /// Runs as admin and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        self.check_ok(args, out)
    }

    /// Runs with the ticket in `ticket` (e.g. another node's admin ticket)
    /// and expects success; returns stdout.
    pub fn ok_as(&self, args: &[&str], ticket: &Path) -> String {
        let out = self.cli_with(args, &[("BERTH_TICKET_FILE", ticket)], None);
        self.check_ok(args, out)
    }

    /// `berth login` as `user`; returns the path of the ticket file
    /// (`<user>.ticket` in the test directory, replaced on a second login).
    pub fn login(&self, user: &str, password: &str) -> PathBuf {
        let f = self.dir.path().join(format!("{user}.ticket"));
        let args = [
            "login",
            "--user",
            user,
            "--password-stdin",
            "--out",
            f.to_str().expect("UTF-8 temp path"),
        ];
        let out = self.cli_with(&args, &[], Some(&format!("{password}\n")));
        self.check_ok(&args, out);
        f
    }

    /// Runs as admin with `--json` and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let text = self.ok(&a);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("berth {a:?}: bad JSON ({e}):\n{text}"))
    }

    /// Checks that a run failed the Berth way: exit 1, one `error:` line on
    /// stderr that names `code`, no panic or Debug dump. Returns stderr.
    pub fn check_err(&self, args: &[&str], out: Output, code: &str) -> String {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{}", self.explain(args, &out));
        assert!(
            stderr.starts_with("error: "),
            "{}",
            self.explain(args, &out)
        );
        assert!(
            stderr.contains(code),
            "expected {code}\n{}",
            self.explain(args, &out)
        );
        for bad in ["panicked", "backtrace", "Status {", "RUST_BACKTRACE"] {
            assert!(
                !stderr.contains(bad),
                "{bad:?} in stderr\n{}",
                self.explain(args, &out)
            );
        }
        stderr
    }

    /// Runs as admin and expects a failure (exit 1, one `error:` line) of
    /// any kind; returns stderr.
    pub fn err_any(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{}", self.explain(args, &out));
        assert!(
            stderr.starts_with("error: "),
            "{}",
            self.explain(args, &out)
        );
        stderr
    }

    /// Runs as admin and expects failure with `code`.
    pub fn err(&self, args: &[&str], code: &str) -> String {
        let out = self.cli(args);
        self.check_err(args, out, code)
    }
}

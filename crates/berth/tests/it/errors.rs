//! Errors reach the user as stable codes, one line on stderr, exit code 1
//! (2 for usage errors).

use crate::TestServer;

#[test]
fn namespace_error_codes() {
    let s = TestServer::start();

    // ENOENT on stat of a missing path, with the path in the message.
    let e = s.err(&["stat", "/missing"], "ENOENT");
    assert!(e.contains("/missing"), "{e}");
    s.err(&["ls", "/missing"], "ENOENT");
    s.err(&["mkdir", "/no/parent"], "ENOENT");

    // EEXIST on mkdir of an existing directory without -p; -p is fine.
    s.ok(&["mkdir", "/d"]);
    s.err(&["mkdir", "/d"], "EEXIST");
    s.ok(&["mkdir", "-p", "/d"]);

    // ENOTEMPTY on rm of a non-empty directory without -r.
    s.ok(&["touch", "/d/f"]);
    s.err(&["rm", "/d"], "ENOTEMPTY");
    s.ok(&["stat", "/d/f"]);

    // ENOTDIR below a file.
    s.err(&["mkdir", "/d/f/sub"], "ENOTDIR");

    // rm: ENOENT unless -f.
    s.err(&["rm", "/missing"], "ENOENT");
    s.ok(&["rm", "-f", "/missing"]);

    // Several paths: every failure is reported, the rest is done, exit 1.
    let out = s.cli(&["mkdir", "/d", "/e", "/d"]);
    let stderr = s.check_err(&["mkdir", "/d", "/e", "/d"], out, "EEXIST");
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("error: ")).count(),
        2,
        "{stderr}"
    );
    s.ok(&["stat", "/e"]);

    s.ok(&["rm", "-r", "/d"]);
    s.err(&["stat", "/d/f"], "ENOENT");
}

#[test]
fn auth_and_connection_errors() {
    let s = TestServer::start();

    // A forged ticket is refused.
    let forged = s.home.join("forged.ticket");
    std::fs::write(&forged, "not-a-ticket\n").unwrap();
    let out = s.cli_with(&["ls", "/"], &[("BERTH_TICKET_FILE", &forged)], None);
    s.check_err(&["ls"], out, "EAUTH");

    // No ticket at all: say how to get one (HOME and the working directory
    // hold none).
    let none = s.home.join("no-such.ticket");
    let out = s.cli_with(&["ls", "/"], &[("BERTH_TICKET_FILE", &none)], None);
    let e = s.check_err(&["ls"], out, "--ticket-file");
    assert!(e.contains("no-such.ticket"), "{e}");

    // Wrong CA: a TLS failure, with a hint about the CA file.
    let other_ca = s.home.join("other-ca.crt");
    std::fs::write(&other_ca, other_ca_pem()).unwrap();
    let out = s.cli_with(&["ls", "/"], &[("BERTH_CA_FILE", &other_ca)], None);
    s.check_err(&["ls"], out, "CA file");

    // Nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = s.cli(&["--servers", &format!("127.0.0.1:{port}"), "ls"]);
    s.check_err(&["ls"], out, "is the server running");
}

#[test]
fn usage_errors_exit_2() {
    // No server needed: clap rejects these before any connection.
    for args in [
        &["ln", "a", "b"][..],
        &["volume", "create", "/v", "--quota", "ten"],
        &["frobnicate"],
    ] {
        let out = std::process::Command::new(crate::harness::BIN)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "berth {args:?}: {out:?}");
    }
}

/// A self-signed certificate that did not sign the server's certificate.
fn other_ca_pem() -> String {
    rcgen::generate_simple_self_signed(vec!["other-test".to_string()])
        .expect("rcgen")
        .cert
        .pem()
}

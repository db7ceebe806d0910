//! The SASL messages a client sends before it is authenticated: PLAIN and
//! OAUTHBEARER tokens (berth-kafka's `sasl`), and SCRAM's client-first and
//! client-final (berth-security's `scram`, server side), as a connection
//! takes them. Input: one selector byte, then the message; for SCRAM the
//! client-first and client-final are separated by a 0xff byte (never in
//! UTF-8, so no message loses anything by it). The SCRAM exchange runs
//! against the credential of RFC 7677's example user ("pencil"), so the
//! seeds reach the proof check and its success path.
//!
//! Seeds: `BERTH_FUZZ_SEEDS=<dir>` writes valid messages to `<dir>` and exits.

#![no_main]

use std::sync::OnceLock;

use berth_kafka::fuzzing::{parse_oauthbearer, parse_plain, TOKEN_BYTES_MAX};
use berth_security::scram::{self, Credential, Mechanism};
use libfuzzer_sys::fuzz_target;

/// RFC 7677, section 3.
const SALT: &[u8] = b"\x5b\x6d\x99\x68\x9d\x12\x35\x8e\xec\xa0\x4b\x14\x12\x36\xfa\x81";
const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const CLIENT_FIRST: &[u8] = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const CLIENT_FINAL: &[u8] = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";

/// The credentials are derived once (PBKDF2, 4096 rounds: too slow per run).
fn credential(m: Mechanism) -> Credential {
    static CREDS: OnceLock<[Credential; 2]> = OnceLock::new();
    let creds = CREDS.get_or_init(|| {
        Mechanism::ALL.map(|m| scram::credential_with("pencil", SALT, 4096, m).expect("credential"))
    });
    creds[usize::from(m == Mechanism::Sha512)].clone()
}

fuzz_target!(
    init: {
        if let Some(dir) = std::env::var_os("BERTH_FUZZ_SEEDS") {
            write_seeds(std::path::Path::new(&dir));
            std::process::exit(0);
        }
    },
    |data: &[u8]| {
        let Some((&which, msg)) = data.split_first() else {
            return;
        };
        match which % 4 {
            0 => {
                if let Ok(p) = parse_plain(msg) {
                    assert!(msg.len() <= TOKEN_BYTES_MAX);
                    assert!(!p.user.is_empty() && !p.password.is_empty());
                    assert!(!p.user.contains('\0') && !p.password.contains('\0'));
                }
            }
            1 => {
                if let Ok(token) = parse_oauthbearer(msg) {
                    assert!(!token.is_empty());
                    assert!(token.bytes().all(|b| b.is_ascii_graphic()));
                }
            }
            n => {
                let m = if n == 2 { Mechanism::Sha256 } else { Mechanism::Sha512 };
                let (first, last) = match msg.iter().position(|&b| b == 0xff) {
                    Some(i) => (&msg[..i], &msg[i + 1..]),
                    None => (msg, &[][..]),
                };
                let Ok(first) = scram::parse_client_first(first) else {
                    return;
                };
                assert!(!first.user.is_empty() && !first.client_nonce.is_empty());
                let (exchange, server_first) =
                    scram::ServerExchange::start(m, first, credential(m), SERVER_NONCE);
                assert!(server_first.starts_with("r="));
                if let Ok(server_final) = exchange.finish(last) {
                    // Only the RFC user's password passes the proof check.
                    assert!(server_final.starts_with("v="));
                }
            }
        }
    }
);

fn write_seeds(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("seed dir");
    let scram = |sel: u8| {
        let mut s = vec![sel];
        s.extend_from_slice(CLIENT_FIRST);
        s.push(0xff);
        s.extend_from_slice(CLIENT_FINAL);
        s
    };
    let seeds: Vec<Vec<u8>> = vec![
        b"\0\0alice\0secret".to_vec(),
        b"\0alice\0alice\0berth1.body.sig".to_vec(),
        b"\x01n,,\x01auth=Bearer berth1.abc.def\x01\x01".to_vec(),
        b"\x01n,,\x01host=x\x01auth=Bearer t\x01logicalCluster=c\x01\x01".to_vec(),
        scram(2),
        scram(3),
        b"\x02n,a=us=2Cer,n=us=2Cer,r=abc,ext=1\xffc=bixhPXVzPTJDZXIs,r=abc%hv,p=AAAA".to_vec(),
    ];
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), seed).expect("seed written");
    }
}

//! SASL: the mechanisms the gateway offers and the parsing of their tokens.
//! - PLAIN (RFC 4616): `authzid NUL authcid NUL passwd`; the password may be
//!   a Berth ticket, the backend decides.
//! - SCRAM-SHA-256 / SCRAM-SHA-512 (RFC 5802/7677, Kafka's KIP-84): two
//!   rounds; the exchange itself is `berth_security::scram` (shared by the
//!   gateways), the stored credential comes from
//!   [`Backend::scram_credential`](crate::Backend::scram_credential).
//! - OAUTHBEARER (RFC 7628, Kafka's KIP-255): one client message
//!   `n,,\x01auth=Bearer <token>\x01\x01`; the token is a Berth ticket.
//!   A failure is answered at once with SASL_AUTHENTICATION_FAILED rather
//!   than with RFC 7628's error challenge (Kafka clients accept both).

use berth_security::scram;

/// Mechanisms offered in SaslHandshake.
pub const MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"];

/// RFC 4616 bounds each field to 255 UTF-8 octets; tickets are longer, so
/// the gateway allows more but still bounds the token (of every mechanism).
pub const TOKEN_BYTES_MAX: usize = 16 * 1024;

/// A mechanism chosen in SaslHandshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Scram(scram::Mechanism),
    OAuthBearer,
}

impl Mechanism {
    pub fn from_name(name: &str) -> Option<Mechanism> {
        match name {
            "PLAIN" => Some(Mechanism::Plain),
            "OAUTHBEARER" => Some(Mechanism::OAuthBearer),
            n => scram::Mechanism::from_name(n).map(Mechanism::Scram),
        }
    }
}

/// Where the connection is in its SASL exchange. `raw`: the handshake was
/// v0, so tokens arrive (and are answered) as bare frames without request
/// headers; a failure then just closes the connection.
#[derive(Debug, Clone)]
pub enum State<P> {
    /// Waiting for SaslHandshake (ApiVersions is also allowed).
    Start,
    /// Handshake done: the next token is the client's first.
    Handshaken {
        mechanism: Mechanism,
        raw: bool,
    },
    /// SCRAM server-first sent: the next token is the client-final.
    ScramFinal {
        exchange: Box<scram::ServerExchange>,
        raw: bool,
    },
    Authenticated(P),
}

impl<P> State<P> {
    /// Whether the next frame is a bare token (handshake v0).
    pub fn raw(&self) -> bool {
        matches!(
            self,
            State::Handshaken { raw: true, .. } | State::ScramFinal { raw: true, .. }
        )
    }
}

/// The key unknown users' fake SCRAM credentials derive from: random per
/// process, so they cannot be told from real ones by recomputing them.
pub fn fake_secret() -> &'static [u8; 32] {
    static SECRET: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    SECRET.get_or_init(rand::random)
}

/// User and password of a PLAIN token.
#[derive(Debug, PartialEq, Eq)]
pub struct Plain<'a> {
    pub user: &'a str,
    pub password: &'a str,
}

/// Parses a PLAIN token. An authorization id other than the user is
/// refused (as Kafka's PlainSaslServer does): one may not act as someone
/// else by asking.
pub fn parse_plain(token: &[u8]) -> Result<Plain<'_>, &'static str> {
    if token.len() > TOKEN_BYTES_MAX {
        return Err("token too long");
    }
    let text = std::str::from_utf8(token).map_err(|_| "token is not UTF-8")?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("token is not authzid\\0user\\0password");
    };
    if user.is_empty() || password.is_empty() {
        return Err("empty user or password");
    }
    if !authzid.is_empty() && authzid != user {
        return Err("authorization id differs from the user");
    }
    Ok(Plain { user, password })
}

/// The token of an OAUTHBEARER client initial response:
/// `n,,\x01auth=Bearer <token>\x01\x01`, possibly with more `key=value`
/// pairs (Kafka's SASL extensions, ignored). An authorization id is refused:
/// the gateway cannot check it against the (opaque) principal, and acting
/// as someone else is not granted by asking.
pub fn parse_oauthbearer(msg: &[u8]) -> Result<&str, &'static str> {
    if msg.len() > TOKEN_BYTES_MAX {
        return Err("token too long");
    }
    let text = std::str::from_utf8(msg).map_err(|_| "message is not UTF-8")?;
    let (header, rest) = text.split_once('\x01').ok_or("no GS2 header")?;
    match header {
        "n,," | "y,," => {}
        h if h.starts_with("p=") => return Err("channel binding is not offered"),
        h if h.starts_with("n,a=") || h.starts_with("y,a=") => {
            return Err("an authorization id is not supported")
        }
        _ => return Err("bad GS2 header"),
    }
    let pairs = rest
        .strip_suffix("\x01\x01")
        .ok_or("not terminated by \\x01\\x01")?;
    let mut token = None;
    for pair in pairs.split('\x01') {
        let (key, value) = pair.split_once('=').ok_or("pair without '='")?;
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err("bad key");
        }
        if key != "auth" {
            continue;
        }
        if token.is_some() {
            return Err("two auth values");
        }
        let (scheme, t) = value
            .split_once(' ')
            .ok_or("auth is not `Bearer <token>`")?;
        if !scheme.eq_ignore_ascii_case("bearer") || t.is_empty() {
            return Err("auth is not `Bearer <token>`");
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("bad characters in the token");
        }
        token = Some(t);
    }
    token.ok_or("no auth value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_tokens() {
        let ok = Plain {
            user: "alice",
            password: "secret",
        };
        assert_eq!(parse_plain(b"\0alice\0secret"), Ok(ok));
        assert_eq!(parse_plain(b"alice\0alice\0secret").unwrap().user, "alice");
        // A ticket may contain anything but NUL.
        assert_eq!(parse_plain(b"\0x\0a.b-c_d=").unwrap().password, "a.b-c_d=");
    }

    #[test]
    fn refuses_malformed_tokens() {
        for bad in [
            &b""[..],
            b"alice",
            b"\0alice",
            b"\0alice\0",
            b"\0\0secret",
            b"\0alice\0secret\0more",
            b"bob\0alice\0secret",
            b"\0al\xffice\0secret",
        ] {
            assert!(parse_plain(bad).is_err(), "{bad:?}");
        }
        let long = [b'a'; TOKEN_BYTES_MAX + 1];
        assert!(parse_plain(&long).is_err());
    }

    #[test]
    fn parses_oauthbearer() {
        let ok = parse_oauthbearer;
        assert_eq!(ok(b"n,,\x01auth=Bearer abc.d-e_f\x01\x01"), Ok("abc.d-e_f"));
        assert_eq!(ok(b"y,,\x01auth=bearer t\x01\x01"), Ok("t"));
        assert_eq!(
            ok(b"n,,\x01host=x\x01auth=Bearer t\x01logicalCluster=c\x01\x01"),
            Ok("t")
        );
        for bad in [
            &b""[..],
            b"n,,",
            b"n,,\x01\x01",
            b"n,,\x01auth=Bearer t\x01",
            b"n,,\x01auth=Bearer \x01\x01",
            b"n,,\x01auth=Basic t\x01\x01",
            b"n,,\x01auth=Bearer t u\x01\x01",
            b"n,,\x01auth=Bearer t\x01auth=Bearer u\x01\x01",
            b"n,,\x01noequals\x01auth=Bearer t\x01\x01",
            b"n,a=alice,\x01auth=Bearer t\x01\x01",
            b"p=tls-unique,,\x01auth=Bearer t\x01\x01",
            b"n,,\x01auth=Bearer \xff\x01\x01",
        ] {
            assert!(parse_oauthbearer(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mechanisms() {
        for name in MECHANISMS {
            assert!(Mechanism::from_name(name).is_some(), "{name}");
        }
        assert_eq!(
            Mechanism::from_name("SCRAM-SHA-512"),
            Some(Mechanism::Scram(scram::Mechanism::Sha512))
        );
        assert_eq!(Mechanism::from_name("GSSAPI"), None);
    }
}

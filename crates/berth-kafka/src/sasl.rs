//! SASL PLAIN (RFC 4616), the one mechanism the gateway enables: the token
//! is `authzid NUL authcid NUL passwd`. The password may be a Berth ticket;
//! the backend decides.

/// Mechanisms offered in SaslHandshake.
pub const MECHANISMS: &[&str] = &["PLAIN"];

/// RFC 4616 bounds each field to 255 UTF-8 octets; tickets are longer, so
/// the gateway allows more but still bounds the token.
pub const TOKEN_BYTES_MAX: usize = 16 * 1024;

/// Where the connection is in its SASL exchange.
#[derive(Debug, Clone)]
pub enum State<P> {
    /// Waiting for SaslHandshake (ApiVersions is also allowed).
    Start,
    /// Handshake v1 done: the next request must be SaslAuthenticate.
    Handshaken,
    /// Handshake v0 done: the next frame is the bare PLAIN token, without
    /// a request header.
    HandshakenRaw,
    Authenticated(P),
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
}

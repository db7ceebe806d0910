//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677) as Kafka speaks
//! them (KIP-84): the credential a server stores instead of a password, and
//! the server side of the exchange, without I/O, so every gateway that
//! offers SCRAM (Kafka now, Mongo later) runs this one implementation.
//!
//! The exchange:
//! 1. client-first `n,,n=user,r=<client nonce>` → [`parse_client_first`];
//! 2. server-first `r=<client nonce><server nonce>,s=<salt>,i=<iterations>`
//!    ← [`ServerExchange::start`];
//! 3. client-final `c=biws,r=<nonce>,p=<proof>` → [`ServerExchange::finish`],
//!    which checks the proof against the stored key (`ClientKey = proof XOR
//!    ClientSignature`, `H(ClientKey) == StoredKey`, in constant time) and
//!    returns the server-final `v=<server signature>`.
//!
//! Differences from the RFC, all as Kafka does: passwords are used as their
//! UTF-8 bytes (no SASLprep); an authorization id other than the user is
//! refused; channel binding is not offered (`p=` is refused, `y,,` is fine
//! since the server advertises no `-PLUS` mechanism). Kafka's `tokenauth`
//! extension (delegation tokens) is refused; other extensions are ignored.
//!
//! Unknown users: a gateway answers them with [`fake_credential`] (a salt
//! stable per user, keys no password matches), so they fail exactly where
//! and how a wrong password fails and the exchange reveals nothing about
//! which users exist.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use crate::password::{PasswordError, PASSWORD_LEN_MAX_BYTES};

/// Iterations of new credentials: Kafka's minimum (clients refuse fewer).
pub const ITERATIONS_DEFAULT: u32 = 4096;
/// Kafka's bounds on a credential's iterations.
pub const ITERATIONS_MIN: u32 = 4096;
pub const ITERATIONS_MAX: u32 = 16384;
/// Bytes of salt of new credentials (and of fake ones): the hash's length
/// less 4 for SHA-256, as MongoDB makes them; libmongoc refuses any other
/// length for SCRAM-SHA-256 (Kafka clients take any).
pub const SALT_BYTES: usize = 28;
/// Random bytes in a server nonce (base64 in the message).
pub const NONCE_BYTES: usize = 24;
/// Bound on one SCRAM message (client-first or client-final).
pub const MESSAGE_BYTES_MAX: usize = 4096;
/// Bound on a client nonce.
pub const CLIENT_NONCE_BYTES_MAX: usize = 512;

/// A SCRAM mechanism: which hash the exchange uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    Sha256,
    Sha512,
}

impl Mechanism {
    pub const ALL: [Mechanism; 2] = [Mechanism::Sha256, Mechanism::Sha512];

    /// The SASL mechanism name (`SCRAM-SHA-256`, `SCRAM-SHA-512`).
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Sha256 => "SCRAM-SHA-256",
            Mechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_name(name: &str) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Bytes of the hash (and of keys, signatures and proofs).
    pub fn output_bytes(self) -> usize {
        match self {
            Mechanism::Sha256 => 32,
            Mechanism::Sha512 => 64,
        }
    }

    /// `H(data)`.
    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Mechanism::Sha256 => Sha256::digest(data).to_vec(),
            Mechanism::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// `HMAC(key, data)`.
    pub fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            Mechanism::Sha256 => mac::<Hmac<Sha256>>(key, data),
            Mechanism::Sha512 => mac::<Hmac<Sha512>>(key, data),
        }
    }

    /// `Hi(password, salt, i)`: PBKDF2 with this HMAC, one hash long.
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0u8; self.output_bytes()];
        match self {
            Mechanism::Sha256 => {
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
            }
            Mechanism::Sha512 => {
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
            }
        }
        out
    }
}

fn mac<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length: this cannot fail.
    let mut m = <M as hmac::digest::KeyInit>::new_from_slice(key).expect("HMAC key of any length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// What a server keeps of a password for one mechanism: never the password.
/// `stored_key` and `server_key` are secrets (with a recorded exchange,
/// `stored_key` lets one impersonate the client; `server_key` the server).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub salt: Vec<u8>,
    pub iterations: u32,
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Vec<u8>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("salt_bytes", &self.salt.len())
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// A credential for `password` with a fresh random salt and
/// [`ITERATIONS_DEFAULT`] iterations (a few ms of CPU for SHA-512).
pub fn credential(password: &str, m: Mechanism) -> Result<Credential, PasswordError> {
    let mut salt = vec![0u8; SALT_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    credential_with(password, &salt, ITERATIONS_DEFAULT, m)
}

/// A credential for `password` with the given salt and iterations (tests,
/// and clients: the salted password is what a client derives too).
pub fn credential_with(
    password: &str,
    salt: &[u8],
    iterations: u32,
    m: Mechanism,
) -> Result<Credential, PasswordError> {
    if password.is_empty() {
        return Err(PasswordError::Empty);
    }
    if password.len() > PASSWORD_LEN_MAX_BYTES {
        return Err(PasswordError::TooLong {
            len: password.len(),
        });
    }
    if salt.is_empty() || !(ITERATIONS_MIN..=ITERATIONS_MAX).contains(&iterations) {
        return Err(PasswordError::Hash(format!(
            "SCRAM needs a salt and {ITERATIONS_MIN}..={ITERATIONS_MAX} iterations"
        )));
    }
    let salted = m.salted_password(password.as_bytes(), salt, iterations);
    Ok(Credential {
        salt: salt.to_vec(),
        iterations,
        stored_key: m.hash(&m.hmac(&salted, b"Client Key")),
        server_key: m.hmac(&salted, b"Server Key"),
    })
}

/// The credential an unknown user is answered with: derived from `secret`
/// (random, per process) and the user name, so the salt a probe sees is
/// stable per name, like a real user's, and no password matches its keys.
pub fn fake_credential(user: &str, m: Mechanism, secret: &[u8]) -> Credential {
    let derive = |label: &[u8]| {
        let mut data = label.to_vec();
        data.push(0);
        data.extend_from_slice(user.as_bytes());
        m.hmac(secret, &data)
    };
    let mut salt = derive(b"salt");
    salt.truncate(SALT_BYTES);
    Credential {
        salt,
        iterations: ITERATIONS_DEFAULT,
        stored_key: derive(b"stored"),
        server_key: derive(b"server"),
    }
}

/// A fresh server nonce: [`NONCE_BYTES`] from the OS CSPRNG, base64
/// (printable, no commas).
pub fn nonce() -> String {
    let mut bytes = [0u8; NONCE_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    STANDARD.encode(bytes)
}

/// The client's proof: `ClientKey XOR HMAC(StoredKey, AuthMessage)`. For
/// clients and tests; the server only verifies.
pub fn client_proof(m: Mechanism, salted_password: &[u8], auth_message: &[u8]) -> Vec<u8> {
    let client_key = m.hmac(salted_password, b"Client Key");
    let signature = m.hmac(&m.hash(&client_key), auth_message);
    xor(&client_key, &signature)
}

/// The server's signature: `HMAC(ServerKey, AuthMessage)` (`v=` in the
/// server-final message).
pub fn server_signature(m: Mechanism, server_key: &[u8], auth_message: &[u8]) -> Vec<u8> {
    m.hmac(server_key, auth_message)
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// Why an exchange failed. None of these carries a secret; a gateway logs
/// them and tells the client only that authentication failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding requested, but none is offered")]
    ChannelBinding,
    #[error("the authorization id differs from the user")]
    Authzid,
    #[error("delegation tokens (tokenauth) are not supported")]
    TokenAuth,
    #[error("the client-final message does not repeat the exchange's nonce")]
    NonceMismatch,
    #[error("the client-final message does not repeat the GS2 header")]
    BindingMismatch,
    #[error("wrong password or unknown user")]
    WrongProof,
}

/// A parsed client-first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    /// The user, unescaped (`=2C` → `,`, `=3D` → `=`).
    pub user: String,
    pub client_nonce: String,
    /// `n,,` / `y,,` / `n,a=user,`: repeated (base64) in the client-final.
    gs2_header: String,
    /// The message without the GS2 header: the start of AuthMessage.
    bare: String,
}

/// Parses a client-first message (see the module docs for what is refused).
pub fn parse_client_first(msg: &[u8]) -> Result<ClientFirst, ScramError> {
    use ScramError::Malformed;
    if msg.len() > MESSAGE_BYTES_MAX {
        return Err(Malformed("message too long"));
    }
    let text = std::str::from_utf8(msg).map_err(|_| Malformed("not UTF-8"))?;
    let (flag, rest) = text.split_once(',').ok_or(Malformed("no GS2 header"))?;
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
        _ => return Err(Malformed("bad channel binding flag")),
    }
    let (authzid, bare) = rest.split_once(',').ok_or(Malformed("no GS2 header"))?;
    let authzid = match authzid {
        "" => None,
        a => Some(unescape(
            a.strip_prefix("a=")
                .ok_or(Malformed("bad authorization id"))?,
        )?),
    };
    let gs2_header = text[..text.len() - bare.len()].to_string();
    let mut attrs = bare.split(',');
    let user = attrs.next().unwrap_or("");
    if user.starts_with("m=") {
        return Err(Malformed("mandatory extension"));
    }
    let user = unescape(user.strip_prefix("n=").ok_or(Malformed("no user (n=)"))?)?;
    if user.is_empty() {
        return Err(Malformed("empty user"));
    }
    let client_nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or(Malformed("no nonce (r=)"))?;
    if client_nonce.is_empty()
        || client_nonce.len() > CLIENT_NONCE_BYTES_MAX
        || !client_nonce.bytes().all(|b| (0x21..=0x7e).contains(&b))
    {
        return Err(Malformed("bad nonce"));
    }
    for ext in attrs {
        let (key, value) = ext.split_once('=').ok_or(Malformed("bad extension"))?;
        if key == "tokenauth" && value.eq_ignore_ascii_case("true") {
            return Err(ScramError::TokenAuth);
        }
    }
    if authzid.is_some_and(|a| a != user) {
        return Err(ScramError::Authzid);
    }
    Ok(ClientFirst {
        user,
        client_nonce: client_nonce.to_string(),
        gs2_header,
        bare: bare.to_string(),
    })
}

/// `saslname`: `=2C` is `,` and `=3D` is `=`; any other `=` is malformed.
fn unescape(s: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::Malformed("bad escape in a name")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The server side after the server-first message: waits for the
/// client-final.
#[derive(Clone)]
pub struct ServerExchange {
    mechanism: Mechanism,
    user: String,
    gs2_header: String,
    /// The client's part of the nonce (librdkafka < 2.6.1 repeats it).
    client_nonce: String,
    /// The exchange's nonce: client nonce then server nonce.
    nonce: String,
    client_first_bare: String,
    server_first: String,
    credential: Credential,
}

impl std::fmt::Debug for ServerExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerExchange")
            .field("mechanism", &self.mechanism)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl ServerExchange {
    /// Answers the client-first with `credential` (the user's, or
    /// [`fake_credential`]) and `server_nonce` ([`nonce`]); returns the
    /// exchange and the server-first message.
    pub fn start(
        mechanism: Mechanism,
        first: ClientFirst,
        credential: Credential,
        server_nonce: &str,
    ) -> (ServerExchange, String) {
        let nonce = format!("{}{server_nonce}", first.client_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            STANDARD.encode(&credential.salt),
            credential.iterations
        );
        let exchange = ServerExchange {
            mechanism,
            user: first.user,
            gs2_header: first.gs2_header,
            client_nonce: first.client_nonce,
            nonce,
            client_first_bare: first.bare,
            server_first: server_first.clone(),
            credential,
        };
        (exchange, server_first)
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The user named in the client-first message.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Whether the client-final's `r=` names this exchange: the exchange's
    /// nonce, or (librdkafka before 2.6.1, confluentinc/librdkafka#4895)
    /// the client nonce followed by the exchange's nonce, which Apache
    /// Kafka 3.8.1 to 3.9 accept for the same clients. The proof is still
    /// verified over the message as sent, so this admits no other client.
    fn nonce_matches(&self, r: &str) -> bool {
        r == self.nonce
            || r.strip_prefix(self.client_nonce.as_str())
                .is_some_and(|rest| rest == self.nonce)
    }

    /// Checks the client-final message; on success returns the
    /// server-final message (`v=<server signature>`).
    pub fn finish(&self, client_final: &[u8]) -> Result<String, ScramError> {
        use ScramError::Malformed;
        if client_final.len() > MESSAGE_BYTES_MAX {
            return Err(Malformed("message too long"));
        }
        let text = std::str::from_utf8(client_final).map_err(|_| Malformed("not UTF-8"))?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or(Malformed("no proof (p=)"))?;
        let mut attrs = without_proof.split(',');
        let binding = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(Malformed("no channel binding (c=)"))?;
        let binding = STANDARD
            .decode(binding)
            .map_err(|_| Malformed("channel binding is not base64"))?;
        if binding != self.gs2_header.as_bytes() {
            return Err(ScramError::BindingMismatch);
        }
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(Malformed("no nonce (r=)"))?;
        if !self.nonce_matches(nonce) {
            return Err(ScramError::NonceMismatch);
        }
        let proof = STANDARD
            .decode(proof)
            .map_err(|_| Malformed("proof is not base64"))?;
        let m = self.mechanism;
        if proof.len() != m.output_bytes() {
            return Err(Malformed("proof of the wrong length"));
        }
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let c = &self.credential;
        let client_signature = m.hmac(&c.stored_key, auth_message.as_bytes());
        let client_key = xor(&proof, &client_signature);
        if !bool::from(m.hash(&client_key).ct_eq(&c.stored_key)) {
            return Err(ScramError::WrongProof);
        }
        let v = server_signature(m, &c.server_key, auth_message.as_bytes());
        Ok(format!("v={}", STANDARD.encode(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677, section 3.
    const USER: &str = "user";
    const PASSWORD: &str = "pencil";
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const SALT_B64: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
         p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_credential() -> Credential {
        let salt = STANDARD.decode(SALT_B64).unwrap();
        credential_with(PASSWORD, &salt, 4096, Mechanism::Sha256).unwrap()
    }

    fn rfc_exchange(credential: Credential) -> ServerExchange {
        let first = parse_client_first(CLIENT_FIRST.as_bytes()).unwrap();
        assert_eq!(first.user, USER);
        let (ex, server_first) =
            ServerExchange::start(Mechanism::Sha256, first, credential, SERVER_NONCE);
        assert_eq!(server_first, SERVER_FIRST);
        ex
    }

    #[test]
    fn rfc7677_test_vector() {
        let ex = rfc_exchange(rfc_credential());
        assert_eq!(ex.finish(CLIENT_FINAL.as_bytes()).unwrap(), SERVER_FINAL);

        // The client side computes the same proof and expects the same `v=`.
        let c = rfc_credential();
        let salted = Mechanism::Sha256.salted_password(PASSWORD.as_bytes(), &c.salt, 4096);
        let auth_message = format!(
            "{},{SERVER_FIRST},{}",
            &CLIENT_FIRST[3..],
            CLIENT_FINAL.rsplit_once(",p=").unwrap().0
        );
        let proof = client_proof(Mechanism::Sha256, &salted, auth_message.as_bytes());
        assert_eq!(
            STANDARD.encode(proof),
            "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        let v = server_signature(Mechanism::Sha256, &c.server_key, auth_message.as_bytes());
        assert_eq!(format!("v={}", STANDARD.encode(v)), SERVER_FINAL);
    }

    #[test]
    fn wrong_password_and_fake_credentials_fail_alike() {
        let salt = STANDARD.decode(SALT_B64).unwrap();
        let wrong = credential_with("pencil2", &salt, 4096, Mechanism::Sha256).unwrap();
        let ex = rfc_exchange(wrong);
        assert_eq!(
            ex.finish(CLIENT_FINAL.as_bytes()),
            Err(ScramError::WrongProof)
        );

        let secret = [7u8; 32];
        let fake = fake_credential(USER, Mechanism::Sha256, &secret);
        assert_eq!(fake, fake_credential(USER, Mechanism::Sha256, &secret));
        assert_ne!(
            fake.salt,
            fake_credential("other", Mechanism::Sha256, &secret).salt
        );
        assert_eq!(fake.salt.len(), SALT_BYTES);
        assert_eq!(fake.iterations, ITERATIONS_DEFAULT);
        let first = parse_client_first(CLIENT_FIRST.as_bytes()).unwrap();
        let (ex, _) = ServerExchange::start(Mechanism::Sha256, first, fake, SERVER_NONCE);
        assert_eq!(
            ex.finish(CLIENT_FINAL.as_bytes()),
            Err(ScramError::WrongProof)
        );
    }

    /// The client-final of librdkafka < 2.6.1: the client nonce twice.
    #[test]
    fn client_final_with_the_client_nonce_repeated_is_accepted() {
        let ex = rfc_exchange(rfc_credential());
        let doubled_nonce =
            "rOprNGfwEbeRWgbNEkqOrOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let without_proof = format!("c=biws,r={doubled_nonce}");
        let auth_message = format!("{},{SERVER_FIRST},{without_proof}", &CLIENT_FIRST[3..]);
        let c = rfc_credential();
        let salted = Mechanism::Sha256.salted_password(PASSWORD.as_bytes(), &c.salt, 4096);
        let proof = client_proof(Mechanism::Sha256, &salted, auth_message.as_bytes());
        let msg = format!("{without_proof},p={}", STANDARD.encode(proof));
        let v = ex.finish(msg.as_bytes()).expect("doubled nonce accepted");
        let expected = server_signature(Mechanism::Sha256, &c.server_key, auth_message.as_bytes());
        assert_eq!(v, format!("v={}", STANDARD.encode(expected)));

        // The proof covers the message as sent: the RFC's proof (over the
        // single nonce) does not pass with the doubled nonce.
        let rfc_proof = CLIENT_FINAL.rsplit_once(",p=").unwrap().1;
        let mixed = format!("{without_proof},p={rfc_proof}");
        assert_eq!(ex.finish(mixed.as_bytes()), Err(ScramError::WrongProof));

        // Anything else around the exchange's nonce is refused.
        for r in [
            "xrOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0rOprNGfwEbeRWgbNEkqO",
            "rOprNGfwEbeRWgbNEkqOrOprNGfwEbeRWgbNEkqOrOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            "rOprNGfwEbeRWgbNEkqO",
        ] {
            let m = format!("c=biws,r={r},p={rfc_proof}");
            assert_eq!(ex.finish(m.as_bytes()), Err(ScramError::NonceMismatch), "{r}");
        }
    }

    #[test]
    fn client_final_must_repeat_nonce_and_header() {
        let ex = rfc_exchange(rfc_credential());
        let other_nonce = CLIENT_FINAL.replace("k0,p=", "k1,p=");
        assert_eq!(
            ex.finish(other_nonce.as_bytes()),
            Err(ScramError::NonceMismatch)
        );
        let other_header = CLIENT_FINAL.replace("c=biws", "c=eSws");
        assert_eq!(
            ex.finish(other_header.as_bytes()),
            Err(ScramError::BindingMismatch)
        );
        for bad in [
            "",
            "c=biws",
            "c=biws,r=x",
            "r=x,c=biws,p=AAAA",
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AAAA",
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=!!",
        ] {
            assert!(ex.finish(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_client_first() {
        let f = parse_client_first(b"y,,n=a=2Cb=3Dc,r=abc,ext=1").unwrap();
        assert_eq!(f.user, "a,b=c");
        assert_eq!(f.client_nonce, "abc");
        assert_eq!(f.gs2_header, "y,,");
        assert_eq!(f.bare, "n=a=2Cb=3Dc,r=abc,ext=1");
        let f = parse_client_first(b"n,a=alice,n=alice,r=x").unwrap();
        assert_eq!(f.gs2_header, "n,a=alice,");
    }

    #[test]
    fn refuses_bad_client_first() {
        use ScramError::*;
        let cases: &[(&[u8], ScramError)] = &[
            (b"p=tls-unique,,n=u,r=x", ChannelBinding),
            (b"n,,n=u,r=x,tokenauth=true", TokenAuth),
            (b"n,,n=u,r=x,tokenauth=TRUE", TokenAuth),
            (b"n,a=bob,n=alice,r=x", Authzid),
        ];
        for (msg, want) in cases {
            assert_eq!(parse_client_first(msg).as_ref(), Err(want), "{msg:?}");
        }
        for bad in [
            &b""[..],
            b"n",
            b"n,,",
            b"x,,n=u,r=x",
            b"n,,m=ext,n=u,r=x",
            b"n,,n=,r=x",
            b"n,,n=u",
            b"n,,n=u,r=",
            b"n,,n=u,r=a b",
            b"n,,n=u=2X,r=x",
            b"n,,r=x,n=u",
            b"n,b=u,n=u,r=x",
            b"n,,n=u,r=x,noequals",
            b"n,,n=\xff,r=x",
        ] {
            assert!(
                matches!(parse_client_first(bad), Err(Malformed(_))),
                "{bad:?}"
            );
        }
        let long = format!("n,,n=u,r={}", "x".repeat(MESSAGE_BYTES_MAX));
        assert!(parse_client_first(long.as_bytes()).is_err());
    }

    #[test]
    fn credentials() {
        let a = credential("secret", Mechanism::Sha512).unwrap();
        let b = credential("secret", Mechanism::Sha512).unwrap();
        assert_ne!(a.salt, b.salt, "salts are random");
        assert_eq!(a.salt.len(), SALT_BYTES);
        assert_eq!(a.iterations, ITERATIONS_DEFAULT);
        assert_eq!(a.stored_key.len(), 64);
        assert_eq!(a.server_key.len(), 64);
        assert_eq!(
            credential_with("secret", &a.salt, a.iterations, Mechanism::Sha512).unwrap(),
            a
        );
        assert_eq!(credential("", Mechanism::Sha256), Err(PasswordError::Empty));
        assert!(credential_with("x", b"salt", 1, Mechanism::Sha256).is_err());
        assert!(!format!("{a:?}").contains("stored_key"));
        assert_eq!(
            Mechanism::from_name("SCRAM-SHA-512"),
            Some(Mechanism::Sha512)
        );
        assert_eq!(Mechanism::from_name("SCRAM-SHA-1"), None);
        let n = nonce();
        assert!(n.len() >= NONCE_BYTES && !n.contains(','));
        assert_ne!(n, nonce());
    }
}

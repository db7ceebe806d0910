//! Password hashing: argon2id with the `argon2` crate's default parameters
//! (19 MiB, 2 passes, 1 lane — the OWASP recommendation), a random salt, and
//! the PHC string format (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`), so the
//! parameters can be raised later without invalidating stored hashes.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, Params};

/// Longest password accepted, in bytes.
pub const PASSWORD_LEN_MAX_BYTES: usize = 1024;
/// Costliest stored parameters `verify_password` will run (a hash with more
/// is refused rather than letting a bad record tie up the server).
const VERIFY_M_COST_MAX_KIB: u32 = 256 * 1024;
const VERIFY_T_COST_MAX: u32 = 16;
const VERIFY_P_COST_MAX: u32 = 16;

/// A password could not be hashed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("the password is empty: choose a non-empty password")]
    Empty,
    #[error(
        "the password is {len} bytes long, more than the {PASSWORD_LEN_MAX_BYTES}-byte \
         limit: choose a shorter one"
    )]
    TooLong { len: usize },
    #[error("hashing the password failed: {0}")]
    Hash(String),
}

/// Hashes `password` with argon2id and a fresh random salt; returns the PHC
/// string to store.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    hash_with(&Argon2::default(), password)
}

fn hash_with(argon: &Argon2<'_>, password: &str) -> Result<String, PasswordError> {
    if password.is_empty() {
        return Err(PasswordError::Empty);
    }
    if password.len() > PASSWORD_LEN_MAX_BYTES {
        return Err(PasswordError::TooLong {
            len: password.len(),
        });
    }
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Whether `password` matches the stored PHC string `hash`. A malformed hash,
/// a hash that is not argon2, or one with absurd cost parameters never
/// matches. The comparison is constant-time.
pub fn verify_password(password: &str, hash: &str) -> bool {
    if password.len() > PASSWORD_LEN_MAX_BYTES {
        return false;
    }
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    if params.m_cost() > VERIFY_M_COST_MAX_KIB
        || params.t_cost() > VERIFY_T_COST_MAX
        || params.p_cost() > VERIFY_P_COST_MAX
    {
        return false;
    }
    // The algorithm, version and parameters come from the PHC string.
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::{Algorithm, Version};

    /// Minimal-cost argon2id so most tests run in microseconds; verification
    /// reads the parameters from the hash.
    fn cheap(password: &str) -> String {
        let params = Params::new(8, 1, 1, None).unwrap();
        hash_with(
            &Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            password,
        )
        .unwrap()
    }

    #[test]
    fn default_parameters_round_trip() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct horsE", &h));
    }

    #[test]
    fn salts_differ() {
        assert_ne!(cheap("pw"), cheap("pw"));
    }

    #[test]
    fn wrong_and_malformed() {
        let h = cheap("secret");
        assert!(verify_password("secret", &h));
        assert!(!verify_password("Secret", &h));
        assert!(!verify_password("", &h));
        assert!(!verify_password("secret", ""));
        assert!(!verify_password("secret", "secret"));
        assert!(!verify_password("secret", "$argon2id$v=19$garbage"));
        assert!(!verify_password("secret", &h[..h.len() - 2]));
    }

    #[test]
    fn excessive_stored_costs_are_refused() {
        let h = cheap("secret");
        let costly = h.replacen("m=8,", "m=1048576,", 1);
        assert_ne!(costly, h);
        assert!(!verify_password("secret", &costly));
    }

    #[test]
    fn input_limits() {
        assert_eq!(hash_password(""), Err(PasswordError::Empty));
        let long = "x".repeat(PASSWORD_LEN_MAX_BYTES + 1);
        assert_eq!(
            hash_password(&long),
            Err(PasswordError::TooLong {
                len: PASSWORD_LEN_MAX_BYTES + 1
            })
        );
        assert!(!verify_password(&long, &cheap("x")));
    }
}

//! Server-side stored SCRAM credentials.

use crate::ScramHash;
use crate::crypto;

/// The StoredKey/ServerKey pair of one SCRAM hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramKeys {
    /// StoredKey = H(HMAC(SaltedPassword, "Client Key")).
    pub stored_key: Vec<u8>,
    /// ServerKey = HMAC(SaltedPassword, "Server Key").
    pub server_key: Vec<u8>,
}

impl ScramKeys {
    /// Compute the keys of one hash from a SaltedPassword.
    fn from_salted(hash: ScramHash, salted: &[u8]) -> Self {
        ScramKeys {
            stored_key: crypto::digest(hash, &crypto::client_key(hash, salted)),
            server_key: crypto::server_key(hash, salted),
        }
    }
}

/// What the server stores per account: salt, iteration count and the SCRAM
/// keys for both hashes. Never the password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCredentials {
    /// PBKDF2 salt.
    pub salt: Vec<u8>,
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// Keys for SCRAM-SHA-1.
    pub sha1: ScramKeys,
    /// Keys for SCRAM-SHA-256.
    pub sha256: ScramKeys,
}

impl StoredCredentials {
    /// Default (and minimum for [`StoredCredentials::new`]) iteration count.
    pub const DEFAULT_ITERATIONS: u32 = 4096;
    /// Minimum iteration count accepted for new credentials and by [`crate::ScramClient`].
    pub const MIN_ITERATIONS: u32 = 4096;
    /// Length of freshly generated salts.
    pub const SALT_LEN: usize = 16;

    /// Derive from a password with a fresh random 16-byte salt; `iterations`
    /// below [`Self::MIN_ITERATIONS`] are raised to it.
    pub fn new(password: &str, iterations: u32) -> Self {
        let salt: [u8; Self::SALT_LEN] = rand::random();
        Self::derive(password, &salt, iterations.max(Self::MIN_ITERATIONS))
    }

    /// Derive from a password with the given salt and iteration count (used
    /// as-is, so test vectors and imported hashes reproduce exactly).
    pub fn derive(password: &str, salt: &[u8], iterations: u32) -> Self {
        let s1 = crypto::salted_password(ScramHash::Sha1, password, salt, iterations);
        let s256 = crypto::salted_password(ScramHash::Sha256, password, salt, iterations);
        StoredCredentials {
            salt: salt.to_vec(),
            iterations,
            sha1: ScramKeys::from_salted(ScramHash::Sha1, &s1),
            sha256: ScramKeys::from_salted(ScramHash::Sha256, &s256),
        }
    }

    /// The keys for one hash.
    pub fn keys(&self, hash: ScramHash) -> &ScramKeys {
        match hash {
            ScramHash::Sha1 => &self.sha1,
            ScramHash::Sha256 => &self.sha256,
        }
    }

    /// PLAIN check: recompute SaltedPassword with salt/iterations and compare
    /// the SHA-256 StoredKey in constant time.
    pub fn verify_password(&self, password: &str) -> bool {
        let salted =
            crypto::salted_password(ScramHash::Sha256, password, &self.salt, self.iterations);
        let keys = ScramKeys::from_salted(ScramHash::Sha256, &salted);
        crypto::ct_eq(&keys.stored_key, &self.sha256.stored_key)
    }
}

/// Fake, deterministic credentials for a username that does not exist, so a
/// SCRAM exchange for it looks like one for a real account (stable salt,
/// default iterations) and then fails at the proof. Cheap: no PBKDF2.
///
/// `secret` is a server-wide secret; salt and keys are HMAC-SHA-256 outputs
/// keyed by it, so they are stable per username but unpredictable.
pub fn fake_credentials(username: &str, secret: &[u8]) -> StoredCredentials {
    let derive = |label: &[u8], len: usize| -> Vec<u8> {
        let mut data = Vec::with_capacity(label.len() + 1 + username.len());
        data.extend_from_slice(label);
        data.push(0);
        data.extend_from_slice(username.as_bytes());
        let mut out = crypto::hmac(ScramHash::Sha256, secret, &data);
        out.truncate(len);
        out
    };
    StoredCredentials {
        salt: derive(b"salt", StoredCredentials::SALT_LEN),
        iterations: StoredCredentials::DEFAULT_ITERATIONS,
        sha1: ScramKeys {
            stored_key: derive(b"sha1-stored", 20),
            server_key: derive(b"sha1-server", 20),
        },
        sha256: ScramKeys {
            stored_key: derive(b"sha256-stored", 32),
            server_key: derive(b"sha256-server", 32),
        },
    }
}

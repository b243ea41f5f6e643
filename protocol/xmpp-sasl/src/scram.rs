//! SCRAM (RFC 5802 / RFC 7677) without channel binding.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::credentials::{ScramKeys, StoredCredentials};
use crate::{SaslError, ScramHash, crypto};

/// Escape a username for the `n=`/`a=` attributes (`=` → `=3D`, `,` → `=2C`).
fn escape_saslname(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '=' => out.push_str("=3D"),
            ',' => out.push_str("=2C"),
            c => out.push(c),
        }
    }
    out
}

/// Undo [`escape_saslname`]; `None` on any other `=` sequence.
fn unescape_saslname(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('=') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if tail.starts_with("=2C") {
            out.push(',');
        } else if tail.starts_with("=3D") {
            out.push('=');
        } else {
            return None;
        }
        rest = &tail[3..];
    }
    out.push_str(rest);
    Some(out)
}

/// A nonce is non-empty printable ASCII without `,`.
fn valid_nonce(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// An optional extension attribute: `ALPHA "=" value`.
fn is_extension(attr: &str) -> bool {
    let b = attr.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b'='
}

/// A fresh random printable nonce (24 base64 characters).
fn random_nonce() -> String {
    let bytes: [u8; 18] = rand::random();
    B64.encode(bytes)
}

/// Parsed SCRAM client-first-message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFirst {
    /// Username, unescaped (`=2C`, `=3D`) and SASLprep'd.
    pub username: String,
    /// Authorization identity from `a=`, unescaped.
    pub authzid: Option<String>,
    gs2_header: String,
    client_nonce: String,
    bare: String,
}

impl ClientFirst {
    /// The client's nonce (`r=`).
    pub fn client_nonce(&self) -> &str {
        &self.client_nonce
    }
}

/// Parse a SCRAM client-first-message (`gs2-header client-first-message-bare`).
pub fn parse_client_first(msg: &[u8]) -> Result<ClientFirst, SaslError> {
    let s = std::str::from_utf8(msg).map_err(|_| SaslError::Malformed("message is not UTF-8"))?;
    let (flag, rest) = s
        .split_once(',')
        .ok_or(SaslError::Malformed("missing GS2 header"))?;
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => return Err(SaslError::ChannelBindingNotSupported),
        _ => return Err(SaslError::Malformed("bad GS2 channel binding flag")),
    }
    let (authz, bare) = rest
        .split_once(',')
        .ok_or(SaslError::Malformed("missing GS2 header"))?;
    let authzid = if authz.is_empty() {
        None
    } else {
        let raw = authz
            .strip_prefix("a=")
            .ok_or(SaslError::Malformed("bad GS2 authzid"))?;
        let decoded = unescape_saslname(raw).ok_or(SaslError::InvalidAuthzid)?;
        if decoded.is_empty() {
            return Err(SaslError::InvalidAuthzid);
        }
        Some(decoded)
    };
    let gs2_header = &s[..s.len() - bare.len()];

    let mut attrs = bare.split(',');
    let user_attr = attrs.next().unwrap_or_default();
    if user_attr.starts_with("m=") {
        return Err(SaslError::UnsupportedExtension);
    }
    let raw_user = user_attr
        .strip_prefix("n=")
        .ok_or(SaslError::Malformed("missing n="))?;
    let user = unescape_saslname(raw_user).ok_or(SaslError::InvalidUsername)?;
    let username = stringprep::saslprep(&user).map_err(|_| SaslError::InvalidUsername)?;
    if username.is_empty() {
        return Err(SaslError::InvalidUsername);
    }
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or(SaslError::Malformed("missing r="))?;
    if !valid_nonce(nonce) {
        return Err(SaslError::Malformed("invalid nonce"));
    }
    if !attrs.all(is_extension) {
        return Err(SaslError::Malformed("bad attribute"));
    }
    Ok(ClientFirst {
        username: username.into_owned(),
        authzid,
        gs2_header: gs2_header.to_owned(),
        client_nonce: nonce.to_owned(),
        bare: bare.to_owned(),
    })
}

/// Server side of one SCRAM exchange after the credentials were looked up.
#[derive(Clone)]
pub struct ScramServer {
    hash: ScramHash,
    first: ClientFirst,
    server_first: String,
    nonce: String,
    keys: ScramKeys,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramServer")
            .field("hash", &self.hash)
            .field("username", &self.first.username)
            .finish_non_exhaustive()
    }
}

impl ScramServer {
    /// Start with a random server nonce; returns the state and the server-first-message.
    pub fn start(
        hash: ScramHash,
        first: ClientFirst,
        salt: &[u8],
        iterations: u32,
        keys: &ScramKeys,
    ) -> (Self, Vec<u8>) {
        Self::start_with_nonce(hash, first, salt, iterations, keys, &random_nonce())
    }

    /// Like [`ScramServer::start`] with a given server nonce suffix (printable
    /// ASCII without `,`; for test vectors).
    pub fn start_with_nonce(
        hash: ScramHash,
        first: ClientFirst,
        salt: &[u8],
        iterations: u32,
        keys: &ScramKeys,
        server_nonce: &str,
    ) -> (Self, Vec<u8>) {
        debug_assert!(
            valid_nonce(server_nonce),
            "server nonce must be printable without ','"
        );
        let nonce = format!("{}{}", first.client_nonce, server_nonce);
        let server_first = format!("r={nonce},s={},i={iterations}", B64.encode(salt));
        let out = server_first.clone().into_bytes();
        let state = ScramServer {
            hash,
            first,
            server_first,
            nonce,
            keys: keys.clone(),
        };
        (state, out)
    }

    /// Start from [`StoredCredentials`], picking the keys of `hash`.
    pub fn start_with_credentials(
        hash: ScramHash,
        first: ClientFirst,
        creds: &StoredCredentials,
    ) -> (Self, Vec<u8>) {
        Self::start(hash, first, &creds.salt, creds.iterations, creds.keys(hash))
    }

    /// The (unescaped, SASLprep'd) username being authenticated.
    pub fn username(&self) -> &str {
        &self.first.username
    }

    /// The requested authorization identity, if any.
    pub fn authzid(&self) -> Option<&str> {
        self.first.authzid.as_deref()
    }

    /// Verify the client-final-message; on success returns the server-final-message (`v=...`).
    pub fn finish(self, client_final: &[u8]) -> Result<Vec<u8>, SaslError> {
        let s = std::str::from_utf8(client_final)
            .map_err(|_| SaslError::Malformed("message is not UTF-8"))?;
        let attrs: Vec<&str> = s.split(',').collect();
        if attrs.len() < 3 {
            return Err(SaslError::Malformed("client-final-message too short"));
        }
        let cbind = attrs[0]
            .strip_prefix("c=")
            .ok_or(SaslError::Malformed("missing c="))?;
        let nonce = attrs[1]
            .strip_prefix("r=")
            .ok_or(SaslError::Malformed("missing r="))?;
        let last = attrs[attrs.len() - 1];
        let proof = last
            .strip_prefix("p=")
            .ok_or(SaslError::Malformed("missing p="))?;
        if !attrs[2..attrs.len() - 1].iter().all(|a| is_extension(a)) {
            return Err(SaslError::Malformed("bad attribute"));
        }
        let cbind = B64.decode(cbind).map_err(|_| SaslError::Base64)?;
        if cbind != self.first.gs2_header.as_bytes() {
            return Err(SaslError::ChannelBindingMismatch);
        }
        if nonce != self.nonce {
            return Err(SaslError::NonceMismatch);
        }
        let proof = B64.decode(proof).map_err(|_| SaslError::Base64)?;
        if proof.len() != self.hash.output_len() {
            return Err(SaslError::InvalidProof);
        }
        let without_proof = &s[..s.len() - last.len() - 1];
        let auth_message = format!("{},{},{without_proof}", self.first.bare, self.server_first);
        let client_sig = crypto::hmac(self.hash, &self.keys.stored_key, auth_message.as_bytes());
        let client_key = crypto::xor(&proof, &client_sig);
        let stored = crypto::digest(self.hash, &client_key);
        if !crypto::ct_eq(&stored, &self.keys.stored_key) {
            return Err(SaslError::InvalidProof);
        }
        let server_sig = crypto::hmac(self.hash, &self.keys.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_sig)).into_bytes())
    }
}

/// Client state after processing server-first.
#[derive(Clone)]
struct ClientExchange {
    salted_password: Vec<u8>,
    server_signature: Vec<u8>,
}

/// Client side of SCRAM (used by the client SDK and load tools).
#[derive(Clone)]
pub struct ScramClient {
    hash: ScramHash,
    password: String,
    client_first_bare: String,
    nonce: String,
    min_iterations: u32,
    exchange: Option<ClientExchange>,
    cache: Option<std::sync::Arc<SaltedCache>>,
}

/// SaltedPasswords a client computed, by (hash, password, salt,
/// iterations): a load tool logging the same accounts in again and again
/// skips PBKDF2, so it does not burn the CPU it measures. Bounded.
#[derive(Debug, Default)]
pub struct SaltedCache {
    entries: std::sync::Mutex<std::collections::HashMap<SaltedKey, Vec<u8>>>,
}

/// (hash, password, salt, iterations).
type SaltedKey = (ScramHash, String, Vec<u8>, u32);

impl SaltedCache {
    /// Most entries kept; beyond it new ones are not remembered.
    pub const MAX_ENTRIES: usize = 1_000_000;

    fn salted(&self, hash: ScramHash, password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
        let key = (hash, password.to_owned(), salt.to_vec(), iterations);
        if let Some(s) = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return s.clone();
        }
        let salted = crypto::salted_password(hash, password, salt, iterations);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() < Self::MAX_ENTRIES {
            entries.insert(key, salted.clone());
        }
        salted
    }
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClient")
            .field("hash", &self.hash)
            .field("client_first_bare", &self.client_first_bare)
            .field("min_iterations", &self.min_iterations)
            .finish_non_exhaustive()
    }
}

impl ScramClient {
    /// Highest iteration count accepted from the server: a fraction of a
    /// second of PBKDF2 (OWASP's 600,000 for SHA-256 fits); the count is the
    /// server's to choose, and `u32::MAX` would take most of an hour.
    pub const MAX_ITERATIONS: u32 = 1_000_000;

    /// New exchange with a random client nonce.
    pub fn new(hash: ScramHash, username: &str, password: &str) -> Self {
        Self::with_nonce(hash, username, password, &random_nonce())
    }

    /// New exchange with a given client nonce (printable ASCII without `,`; for test vectors).
    pub fn with_nonce(hash: ScramHash, username: &str, password: &str, nonce: &str) -> Self {
        debug_assert!(
            valid_nonce(nonce),
            "client nonce must be printable without ','"
        );
        let user = stringprep::saslprep(username).unwrap_or(username.into());
        ScramClient {
            hash,
            password: password.to_owned(),
            client_first_bare: format!("n={},r={nonce}", escape_saslname(&user)),
            nonce: nonce.to_owned(),
            min_iterations: StoredCredentials::MIN_ITERATIONS,
            exchange: None,
            cache: None,
        }
    }

    /// Takes SaltedPasswords from (and adds them to) `cache`.
    pub fn with_cache(mut self, cache: std::sync::Arc<SaltedCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Lowest iteration count accepted from the server (default 4096; lower only in tests).
    pub fn set_min_iterations(&mut self, min: u32) {
        self.min_iterations = min;
    }

    /// The client-first-message: `n,,n=user,r=nonce`.
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// Process server-first, return client-final.
    pub fn handle_server_first(&mut self, server_first: &[u8]) -> Result<Vec<u8>, SaslError> {
        if self.exchange.is_some() {
            return Err(SaslError::OutOfOrder);
        }
        let s = std::str::from_utf8(server_first)
            .map_err(|_| SaslError::Malformed("message is not UTF-8"))?;
        let mut attrs = s.split(',');
        let first = attrs.next().unwrap_or_default();
        if first.starts_with("m=") {
            return Err(SaslError::UnsupportedExtension);
        }
        let nonce = first
            .strip_prefix("r=")
            .ok_or(SaslError::Malformed("missing r="))?;
        let salt = attrs
            .next()
            .and_then(|a| a.strip_prefix("s="))
            .ok_or(SaslError::Malformed("missing s="))?;
        let iter = attrs
            .next()
            .and_then(|a| a.strip_prefix("i="))
            .ok_or(SaslError::Malformed("missing i="))?;
        if !attrs.all(is_extension) {
            return Err(SaslError::Malformed("bad attribute"));
        }
        if !valid_nonce(nonce)
            || nonce.len() <= self.nonce.len()
            || !nonce.starts_with(self.nonce.as_str())
        {
            return Err(SaslError::NonceMismatch);
        }
        let salt = B64.decode(salt).map_err(|_| SaslError::Base64)?;
        if salt.is_empty() {
            return Err(SaslError::Malformed("empty salt"));
        }
        if iter.is_empty() || !iter.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SaslError::Malformed("bad iteration count"));
        }
        let iterations: u32 = iter
            .parse()
            .map_err(|_| SaslError::Malformed("bad iteration count"))?;
        if iterations == 0 || iterations < self.min_iterations {
            return Err(SaslError::IterationsTooLow {
                got: iterations,
                min: self.min_iterations,
            });
        }
        if iterations > Self::MAX_ITERATIONS {
            return Err(SaslError::IterationsTooHigh {
                got: iterations,
                max: Self::MAX_ITERATIONS,
            });
        }

        let hash = self.hash;
        let salted = match &self.cache {
            Some(cache) => cache.salted(hash, &self.password, &salt, iterations),
            None => crypto::salted_password(hash, &self.password, &salt, iterations),
        };
        let client_key = crypto::client_key(hash, &salted);
        let stored_key = crypto::digest(hash, &client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{s},{without_proof}", self.client_first_bare);
        let client_sig = crypto::hmac(hash, &stored_key, auth_message.as_bytes());
        let proof = crypto::xor(&client_key, &client_sig);
        let server_key = crypto::server_key(hash, &salted);
        let server_signature = crypto::hmac(hash, &server_key, auth_message.as_bytes());
        self.exchange = Some(ClientExchange {
            salted_password: salted,
            server_signature,
        });
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Verify the server signature in server-final (`v=...`); `e=...` is an error.
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), SaslError> {
        let exchange = self.exchange.as_ref().ok_or(SaslError::OutOfOrder)?;
        let s = std::str::from_utf8(server_final)
            .map_err(|_| SaslError::Malformed("message is not UTF-8"))?;
        let first = s.split(',').next().unwrap_or_default();
        if let Some(e) = first.strip_prefix("e=") {
            return Err(SaslError::ServerError(e.to_owned()));
        }
        let v = first
            .strip_prefix("v=")
            .ok_or(SaslError::Malformed("missing v="))?;
        let v = B64.decode(v).map_err(|_| SaslError::Base64)?;
        if crypto::ct_eq(&v, &exchange.server_signature) {
            Ok(())
        } else {
            Err(SaslError::InvalidServerSignature)
        }
    }

    /// The SaltedPassword computed in [`ScramClient::handle_server_first`], for caching client keys.
    pub fn salted_password(&self) -> Option<&[u8]> {
        self.exchange.as_ref().map(|e| e.salted_password.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saslname_escaping() {
        assert_eq!(escape_saslname("a,b=c"), "a=2Cb=3Dc");
        assert_eq!(unescape_saslname("a=2Cb=3Dc").as_deref(), Some("a,b=c"));
        assert_eq!(unescape_saslname("=3D=2C").as_deref(), Some("=,"));
        assert_eq!(unescape_saslname("a=2"), None);
        assert_eq!(unescape_saslname("a=41"), None);
        assert_eq!(unescape_saslname("a="), None);
    }
}

//! Hash primitives dispatched on [`ScramHash`].

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ScramHash;

/// HMAC(key, data) with the given hash.
pub(crate) fn hmac(hash: ScramHash, key: &[u8], data: &[u8]) -> Vec<u8> {
    match hash {
        ScramHash::Sha1 => {
            let mut mac =
                Hmac::<Sha1>::new_from_slice(key).expect("HMAC accepts keys of any length");
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        ScramHash::Sha256 => {
            let mut mac =
                Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
    }
}

/// H(data).
pub(crate) fn digest(hash: ScramHash, data: &[u8]) -> Vec<u8> {
    match hash {
        ScramHash::Sha1 => Sha1::digest(data).to_vec(),
        ScramHash::Sha256 => Sha256::digest(data).to_vec(),
    }
}

#[cfg(feature = "count-derivations")]
thread_local! {
    static DERIVATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// PBKDF2 runs made on the calling thread so far.
#[cfg(feature = "count-derivations")]
pub fn derivations_on_this_thread() -> u64 {
    DERIVATIONS.with(std::cell::Cell::get)
}

/// SaltedPassword = Hi(Normalize(password), salt, i).
pub(crate) fn salted_password(
    hash: ScramHash,
    password: &str,
    salt: &[u8],
    iterations: u32,
) -> Vec<u8> {
    #[cfg(feature = "count-derivations")]
    DERIVATIONS.with(|n| n.set(n.get() + 1));
    let normalized = normalize_password(password);
    let mut out = vec![0u8; hash.output_len()];
    match hash {
        ScramHash::Sha1 => {
            pbkdf2::pbkdf2_hmac::<Sha1>(normalized.as_bytes(), salt, iterations, &mut out)
        }
        ScramHash::Sha256 => {
            pbkdf2::pbkdf2_hmac::<Sha256>(normalized.as_bytes(), salt, iterations, &mut out)
        }
    }
    out
}

/// SASLprep the password; if it contains prohibited code points, use it as-is
/// (consistently on both sides, so such passwords still work).
fn normalize_password(password: &str) -> std::borrow::Cow<'_, str> {
    stringprep::saslprep(password).unwrap_or(std::borrow::Cow::Borrowed(password))
}

/// ClientKey = HMAC(SaltedPassword, "Client Key").
pub(crate) fn client_key(hash: ScramHash, salted: &[u8]) -> Vec<u8> {
    hmac(hash, salted, b"Client Key")
}

/// ServerKey = HMAC(SaltedPassword, "Server Key").
pub(crate) fn server_key(hash: ScramHash, salted: &[u8]) -> Vec<u8> {
    hmac(hash, salted, b"Server Key")
}

/// Constant-time equality (length is not secret).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// XOR two equal-length byte strings.
pub(crate) fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

//! SM ids (XEP-0198 `id`/`previd`): the resumption token, tagged so that
//! only the user it was issued to can resume with it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Makes and checks SM ids: `base64url(token ‖ HMAC-SHA-256(secret, token ‖ bare JID)[..16])`.
/// An id is worthless to anyone but the user it was issued to.
#[derive(Clone)]
pub struct SmIds {
    secret: [u8; 32],
}

impl std::fmt::Debug for SmIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SmIds(..)")
    }
}

impl SmIds {
    /// Ids keyed with `secret`.
    pub fn new(secret: [u8; 32]) -> Self {
        Self { secret }
    }

    /// The tag that binds `token` to `bare`.
    fn tag(&self, token: u64, bare: &str) -> [u8; 16] {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.secret) else {
            return [0; 16];
        };
        mac.update(&token.to_be_bytes());
        mac.update(bare.as_bytes());
        let full = mac.finalize().into_bytes();
        let mut tag = [0; 16];
        tag.copy_from_slice(&full[..16]);
        tag
    }

    /// The SM id for `token` issued to `bare`.
    pub fn issue(&self, token: u64, bare: &str) -> String {
        let mut raw = token.to_be_bytes().to_vec();
        raw.extend_from_slice(&self.tag(token, bare));
        B64.encode(raw)
    }

    /// The token inside `id` if `id` was issued to `bare`.
    pub fn verify(&self, id: &str, bare: &str) -> Option<u64> {
        let raw = B64.decode(id.as_bytes()).ok()?;
        if raw.len() != 24 {
            return None;
        }
        let token = u64::from_be_bytes(raw[..8].try_into().ok()?);
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).ok()?;
        mac.update(&token.to_be_bytes());
        mac.update(bare.as_bytes());
        // constant-time comparison of the truncated tag
        mac.verify_truncated_left(&raw[8..]).ok()?;
        Some(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_bound_to_the_user_and_unforgeable() {
        let ids = SmIds::new([7; 32]);
        let id = ids.issue(42, "alice@x");
        assert_eq!(ids.verify(&id, "alice@x"), Some(42));
        assert_eq!(ids.verify(&id, "mallory@x"), None);
        assert_eq!(SmIds::new([8; 32]).verify(&id, "alice@x"), None);
        let mut forged = B64.decode(&id).unwrap();
        forged[7] ^= 1; // another token, same tag
        assert_eq!(ids.verify(&B64.encode(forged), "alice@x"), None);
        assert_eq!(ids.verify("garbage!", "alice@x"), None);
    }
}

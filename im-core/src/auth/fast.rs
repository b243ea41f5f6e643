//! FAST tokens (XEP-0484) at the core: what a token is made of, and the
//! checks of a token use that are not SASL (mechanism binding, expiry,
//! rotation). The HT mechanisms themselves are `xmpp_sasl::ht`; the rows
//! are [`crate::storage::FastToken`]s, keyed by user and the SHA-256 of
//! the client's user-agent id (docs/design/sasl2-fast.md §6.1).
//!
//! A token is never stored: a row holds a random seed and the token is
//! `derive_token(key, seed)`, the key derived from the SM key (the same on
//! every core of a cluster), so a copy of the database logs nobody in.

use std::time::Duration;

use cm_protocol::FastTokenGrant;
use sha2::{Digest, Sha256};
use xmpp_sasl::HtMechanism;
use xmpp_sasl::ht::derive_token;

use crate::storage::{FastSlot, FastToken};

/// Octets of a token's random seed.
const SEED_LEN: usize = 16;

/// What the core needs to issue and check FAST tokens.
pub struct FastTokens {
    key: [u8; 32],
    lifetime: Duration,
}

impl std::fmt::Debug for FastTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastTokens")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// A token to issue with a success: for this user agent, bound to this
/// mechanism.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// SHA-256 of the client's user-agent id.
    pub client: [u8; 32],
    /// The HT mechanism the token is bound to.
    pub mechanism: HtMechanism,
}

/// How a token use ends, before its count is recorded.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    /// Usable: record the use of this slot.
    Usable(FastSlot),
    /// Bound to another mechanism (XEP-0484: a token is only good for the
    /// mechanism it was requested for): `not-authorized`.
    WrongMechanism,
    /// Expired: `credentials-expired`, and the client's tokens go.
    Expired,
}

impl FastTokens {
    /// Tokens derived with `key`, living `lifetime`.
    pub fn new(key: [u8; 32], lifetime: Duration) -> Self {
        Self { key, lifetime }
    }

    /// The storage key of a user agent: the SHA-256 of its id.
    pub fn client(user_agent: &str) -> [u8; 32] {
        Sha256::digest(user_agent.as_bytes()).into()
    }

    /// The token a row stands for.
    pub fn token(&self, row: &FastToken) -> String {
        derive_token(&self.key, &row.seed)
    }

    /// A token no row stands for, compared against when a user agent has
    /// fewer than two tokens (or the user does not exist), so every use
    /// costs the same two HMACs.
    pub fn fake_token(&self, authcid: &str, index: usize) -> String {
        let seed = [
            b"longlink fake fast token\0",
            authcid.as_bytes(),
            &[index as u8],
        ]
        .concat();
        derive_token(&self.key, &seed)
    }

    /// A new token for `mechanism`, as stored (in slot New) and as granted,
    /// issued at `now` (Unix seconds) with `seed` (random, from outside).
    pub fn issue(
        &self,
        mechanism: HtMechanism,
        now: i64,
        seed: [u8; SEED_LEN],
    ) -> (FastToken, FastTokenGrant) {
        let lifetime = i64::try_from(self.lifetime.as_secs()).unwrap_or(i64::MAX);
        let expires_at = now.saturating_add(lifetime);
        let row = FastToken {
            slot: FastSlot::New,
            seed: seed.to_vec(),
            mechanism: mechanism.name().to_owned(),
            expires_at,
            last_count: -1,
        };
        let grant = FastTokenGrant {
            token: self.token(&row),
            expiry: u64::try_from(expires_at).unwrap_or(0),
        };
        (row, grant)
    }

    /// Whether `row`, whose token the client proved it holds with
    /// `mechanism`, may be used at `now` (Unix seconds).
    pub fn check(&self, row: &FastToken, mechanism: HtMechanism, now: i64) -> Checked {
        if row.mechanism != mechanism.name() {
            Checked::WrongMechanism
        } else if row.expires_at <= now {
            Checked::Expired
        } else {
            Checked::Usable(row.slot)
        }
    }

    /// Whether a successful use of `row` at `now` gets a fresh token
    /// (rotation, XEP-0484 §5): in the second half of its life. Also when
    /// a newer token waits unused: the client may never have received it
    /// (a lost success), and a new one replaces it.
    pub fn rotation_due(&self, row: &FastToken, now: i64) -> bool {
        let half = i64::try_from(self.lifetime.as_secs() / 2).unwrap_or(i64::MAX);
        row.expires_at.saturating_sub(now) <= half
    }
}

/// Now, in seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> FastTokens {
        FastTokens::new([7; 32], Duration::from_secs(1000))
    }

    #[test]
    fn an_issued_token_is_derived_from_its_seed_and_key_only() {
        let t = tokens();
        let (row, grant) = t.issue(HtMechanism::Sha256None, 100, [1; SEED_LEN]);
        assert_eq!(row.slot, FastSlot::New);
        assert_eq!(row.expires_at, 1100);
        assert_eq!(grant.expiry, 1100);
        assert_eq!(grant.token, t.token(&row));
        assert_eq!(grant.token.len(), 43, "256 bits, base64url");
        let other_key = FastTokens::new([8; 32], Duration::from_secs(1000));
        assert_ne!(other_key.token(&row), grant.token);
        let (row2, _) = t.issue(HtMechanism::Sha256None, 100, [2; SEED_LEN]);
        assert_ne!(t.token(&row2), grant.token);
        assert_ne!(t.fake_token("alice", 0), t.fake_token("alice", 1));
    }

    #[test]
    fn a_token_is_refused_for_another_mechanism_and_after_expiry() {
        let t = tokens();
        let (mut row, _) = t.issue(HtMechanism::Sha256Expr, 0, [1; SEED_LEN]);
        assert_eq!(
            t.check(&row, HtMechanism::Sha256None, 10),
            Checked::WrongMechanism
        );
        assert_eq!(
            t.check(&row, HtMechanism::Sha256Expr, 10),
            Checked::Usable(FastSlot::New)
        );
        assert_eq!(
            t.check(&row, HtMechanism::Sha256Expr, 1000),
            Checked::Expired
        );
        row.slot = FastSlot::Current;
        assert_eq!(
            t.check(&row, HtMechanism::Sha256Expr, 999),
            Checked::Usable(FastSlot::Current)
        );
    }

    #[test]
    fn rotation_is_due_in_the_second_half_of_the_used_tokens_life() {
        let t = tokens();
        let (mut current, _) = t.issue(HtMechanism::Sha256None, 0, [1; SEED_LEN]);
        current.slot = FastSlot::Current;
        let (new, _) = t.issue(HtMechanism::Sha256None, 600, [2; SEED_LEN]);
        assert!(!t.rotation_due(&current, 499));
        assert!(t.rotation_due(&current, 600));
        // (a waiting New token may never have reached the client: the
        // current one's use in its second half replaces it)
        assert!(!t.rotation_due(&new, 700), "New just used");
    }
}

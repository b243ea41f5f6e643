//! What storage keeps of FAST tokens (XEP-0484): per user and user agent
//! (the SHA-256 of its `<user-agent id/>`), at most two tokens, the one in
//! use ([`FastSlot::Current`]) and the one last issued and not yet used
//! ([`FastSlot::New`]). A row holds a random seed, not the token: the
//! token is derived from the seed with the core's FAST key
//! (`auth::fast`), so a copy of the database authenticates nobody. Both
//! backends implement the calls on [`super::Store`] (`fast_tokens`,
//! `fast_issue`, `fast_use`, `fast_invalidate`); deleting a user or
//! changing their password deletes their tokens.

/// Most user agents one user keeps tokens for: issuing a token to one more
/// deletes the tokens of the user agent whose newest token expires first.
pub const MAX_FAST_CLIENTS: i64 = 32;

/// Which of a user agent's two tokens a row is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FastSlot {
    /// The token the client last authenticated with (or the first one it
    /// was given, before it used it).
    Current = 0,
    /// A token issued since (rotation, or a new request), not used yet: the
    /// client may not have seen it, so the current one stays valid until
    /// this one is used.
    New = 1,
}

impl FastSlot {
    /// The slot stored as `n`, if it is one.
    pub fn from_stored(n: i64) -> Option<FastSlot> {
        match n {
            0 => Some(FastSlot::Current),
            1 => Some(FastSlot::New),
            _ => None,
        }
    }

    /// The stored number.
    pub fn stored(self) -> i64 {
        self as i64
    }
}

/// One stored FAST token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FastToken {
    /// Its slot.
    pub slot: FastSlot,
    /// The random seed the token is derived from.
    pub seed: Vec<u8>,
    /// The HT mechanism it is bound to (`HT-SHA-256-NONE`, ...).
    pub mechanism: String,
    /// When it expires, in seconds since the Unix epoch.
    pub expires_at: i64,
    /// The highest count a successful use of it carried (-1: none yet).
    pub last_count: i64,
}

/// Rows read as (stored slot, token) with their slots set; rows of an
/// unknown slot (written by a newer version) are left out.
pub(super) fn with_slots(rows: Vec<(i64, FastToken)>) -> Vec<FastToken> {
    rows.into_iter()
        .filter_map(|(n, token)| {
            Some(FastToken {
                slot: FastSlot::from_stored(n)?,
                ..token
            })
        })
        .collect()
}

//! SASL mechanisms for XMPP: SCRAM-SHA-256, SCRAM-SHA-1 and PLAIN; the
//! Hashed Token mechanisms of FAST tokens (XEP-0484: `HT-SHA-256-EXPR`,
//! `-ENDP`, `-NONE`, in [`ht`]); the TLS channel bindings they use
//! ([`channel_binding`]); and the SCRAM downgrade-protection hash
//! (XEP-0474, [`ssdp`]).
//!
//! Everything here is a sans-IO state machine or a pure function: raw
//! (already base64-decoded) SASL payload bytes go in, raw payload bytes
//! come out. The XMPP layer owns the base64 transport encoding, the
//! `<auth/>`/`<authenticate/>`/`<challenge/>` elements and the user (and
//! token) lookup.
//!
//! SCRAM offers no channel binding (no `-PLUS` mechanisms); GS2 headers
//! `n,,` and `y,,` are accepted, `p=` is refused.

pub mod channel_binding;
mod credentials;
mod crypto;
mod error;
pub mod ht;
mod plain;
mod scram;
pub mod ssdp;

pub use channel_binding::{ChannelBindingType, ChannelBindings};
pub use credentials::{ScramKeys, StoredCredentials, fake_credentials};
#[cfg(feature = "count-derivations")]
pub use crypto::derivations_on_this_thread;
pub use error::SaslError;
pub use ht::{HtClient, HtMechanism, ht_verify, parse_ht_initial};
pub use plain::{Plain, parse_plain, plain_message};
pub use scram::{ClientFirst, SaltedCache, ScramClient, ScramServer, parse_client_first};

/// A SASL mechanism longlink offers in its mechanism list, in preference
/// order. FAST's HT-* mechanisms are not among them: they are offered
/// only inside SASL2's `<fast/>` ([`HtMechanism`]), so they never enter
/// the list the downgrade-protection hash covers ([`ssdp`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// SCRAM-SHA-256 (RFC 7677).
    ScramSha256,
    /// SCRAM-SHA-1 (RFC 5802).
    ScramSha1,
    /// PLAIN (RFC 4616); only acceptable over TLS.
    Plain,
}

impl Mechanism {
    /// All mechanisms in preference order (strongest first).
    pub const ALL: [Mechanism; 3] = [
        Mechanism::ScramSha256,
        Mechanism::ScramSha1,
        Mechanism::Plain,
    ];

    /// The IANA-registered mechanism name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::Plain => "PLAIN",
        }
    }

    /// Look up a mechanism by its exact (upper-case) name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The SCRAM hash of this mechanism, or `None` for PLAIN.
    pub fn scram_hash(self) -> Option<ScramHash> {
        match self {
            Mechanism::ScramSha256 => Some(ScramHash::Sha256),
            Mechanism::ScramSha1 => Some(ScramHash::Sha1),
            Mechanism::Plain => None,
        }
    }
}

/// Hash used by a SCRAM variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScramHash {
    /// SHA-1, for SCRAM-SHA-1.
    Sha1,
    /// SHA-256, for SCRAM-SHA-256.
    Sha256,
}

impl ScramHash {
    /// The mechanism using this hash.
    pub fn mechanism(self) -> Mechanism {
        match self {
            ScramHash::Sha1 => Mechanism::ScramSha1,
            ScramHash::Sha256 => Mechanism::ScramSha256,
        }
    }

    /// Digest output length in bytes (20 or 32).
    pub fn output_len(self) -> usize {
        match self {
            ScramHash::Sha1 => 20,
            ScramHash::Sha256 => 32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanism_names_round_trip() {
        for m in Mechanism::ALL {
            assert_eq!(Mechanism::from_name(m.name()), Some(m));
        }
        assert_eq!(Mechanism::ALL[0], Mechanism::ScramSha256);
        assert_eq!(Mechanism::from_name("scram-sha-1"), None);
        assert_eq!(Mechanism::from_name("SCRAM-SHA-1-PLUS"), None);
        assert_eq!(Mechanism::Plain.scram_hash(), None);
        assert_eq!(ScramHash::Sha1.mechanism(), Mechanism::ScramSha1);
    }
}

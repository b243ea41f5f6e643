//! The Hashed Token (HT) SASL mechanisms that FAST (XEP-0484) uses, in the
//! form XEP-0484 references and deployed clients speak
//! (draft-schmaus-kitten-sasl-ht-08, plus the `-NONE` variant):
//!
//! ```text
//! initiator-msg = authcid NUL HMAC(token, "Initiator" || cb-data)
//! responder-msg =             HMAC(token, "Responder" || cb-data)
//! ```
//!
//! with SHA-256, `token` the UTF-8 octets of the token string, and
//! `cb-data` the connection's channel binding of the mechanism's type
//! (empty for `-NONE`). One round trip: the client's initial response
//! authenticates it, the responder message in `<success/>`'s additional
//! data authenticates the server.
//!
//! Only `HT-SHA-256-EXPR` (`tls-exporter`), `HT-SHA-256-ENDP`
//! (`tls-server-end-point`) and `HT-SHA-256-NONE` exist here: `-UNIQ`
//! (`tls-unique`) is undefined for TLS 1.3, the only TLS longlink speaks,
//! so it is never offered nor accepted.
//!
//! Which token the client holds, whether it expired, which mechanism it
//! is bound to and its replay counter are the caller's business (the
//! token store); this module only computes and compares, in constant
//! time.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use crate::channel_binding::{ChannelBindingType, ChannelBindings};
use crate::{SaslError, ScramHash, crypto};

/// Length of every HT-SHA-256 hashed token (the HMAC-SHA-256 output).
pub const HT_HASH_LEN: usize = 32;

/// Longest authcid accepted (a JID localpart's limit; the draft asks for
/// at least 255 octets).
pub const MAX_AUTHCID: usize = 1023;

/// An HT mechanism longlink offers for FAST tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HtMechanism {
    /// `HT-SHA-256-EXPR`: bound to the connection's `tls-exporter`.
    Sha256Expr,
    /// `HT-SHA-256-ENDP`: bound to the server certificate (`tls-server-end-point`).
    Sha256Endp,
    /// `HT-SHA-256-NONE`: no channel binding (web clients; TLS 0-RTT, where
    /// no binding is known yet).
    Sha256None,
}

impl HtMechanism {
    /// All of them, in preference order (strongest binding first).
    pub const ALL: [HtMechanism; 3] = [
        HtMechanism::Sha256Expr,
        HtMechanism::Sha256Endp,
        HtMechanism::Sha256None,
    ];

    /// The mechanism name.
    pub fn name(self) -> &'static str {
        match self {
            HtMechanism::Sha256Expr => "HT-SHA-256-EXPR",
            HtMechanism::Sha256Endp => "HT-SHA-256-ENDP",
            HtMechanism::Sha256None => "HT-SHA-256-NONE",
        }
    }

    /// Looks a mechanism up by its exact name; `-UNIQ` and other hashes
    /// are not ours.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The channel binding it uses, if any.
    pub fn channel_binding(self) -> Option<ChannelBindingType> {
        match self {
            HtMechanism::Sha256Expr => Some(ChannelBindingType::TlsExporter),
            HtMechanism::Sha256Endp => Some(ChannelBindingType::TlsServerEndPoint),
            HtMechanism::Sha256None => None,
        }
    }

    /// The mechanisms a connection with `bindings` can offer, in
    /// preference order (`-NONE` always).
    pub fn offered(bindings: &ChannelBindings) -> Vec<HtMechanism> {
        Self::ALL
            .into_iter()
            .filter(|m| m.cb_data(bindings).is_ok())
            .collect()
    }

    /// The `cb-data` of this mechanism on a connection with `bindings`.
    fn cb_data(self, bindings: &ChannelBindings) -> Result<&[u8], SaslError> {
        match self.channel_binding() {
            Some(cb) => bindings.require(cb),
            None => Ok(&[]),
        }
    }
}

/// HMAC-SHA-256(token, label || cb-data).
fn ht_hash(token: &[u8], label: &[u8], cb: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(label.len() + cb.len());
    data.extend_from_slice(label);
    data.extend_from_slice(cb);
    crypto::hmac(ScramHash::Sha256, token, &data)
}

/// An authcid: non-empty, no NUL, at most [`MAX_AUTHCID`] octets, SASLprep'd.
fn valid_authcid(authcid: &str) -> Result<String, SaslError> {
    if authcid.is_empty() || authcid.len() > MAX_AUTHCID || authcid.contains('\0') {
        return Err(SaslError::InvalidUsername);
    }
    let prepped = stringprep::saslprep(authcid).map_err(|_| SaslError::InvalidUsername)?;
    if prepped.is_empty() {
        return Err(SaslError::InvalidUsername);
    }
    Ok(prepped.into_owned())
}

/// Client side of one HT exchange.
#[derive(Clone)]
pub struct HtClient {
    mechanism: HtMechanism,
    authcid: String,
    token: Vec<u8>,
    cb: Vec<u8>,
}

impl fmt::Debug for HtClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HtClient")
            .field("mechanism", &self.mechanism)
            .field("authcid", &self.authcid)
            .finish_non_exhaustive()
    }
}

impl HtClient {
    /// An exchange authenticating `authcid` with `token` over a connection
    /// with `bindings`; fails if the mechanism's channel binding is not
    /// known for it ([`SaslError::ChannelBindingUnavailable`]) or the
    /// authcid is not acceptable.
    pub fn new(
        mechanism: HtMechanism,
        authcid: &str,
        token: &str,
        bindings: &ChannelBindings,
    ) -> Result<Self, SaslError> {
        let cb = mechanism.cb_data(bindings)?.to_vec();
        Ok(Self {
            mechanism,
            authcid: valid_authcid(authcid)?,
            token: token.as_bytes().to_vec(),
            cb,
        })
    }

    /// The mechanism.
    pub fn mechanism(&self) -> HtMechanism {
        self.mechanism
    }

    /// The initial response: `authcid NUL HMAC(token, "Initiator" || cb-data)`.
    pub fn initial_response(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.authcid.len() + 1 + HT_HASH_LEN);
        out.extend_from_slice(self.authcid.as_bytes());
        out.push(0);
        out.extend(ht_hash(&self.token, b"Initiator", &self.cb));
        out
    }

    /// Checks the server's responder message (the additional data of its
    /// success) in constant time: [`SaslError::InvalidServerSignature`] if
    /// the server does not know the token.
    pub fn verify_responder(&self, responder: &[u8]) -> Result<(), SaslError> {
        let expected = ht_hash(&self.token, b"Responder", &self.cb);
        if crypto::ct_eq(responder, &expected) {
            Ok(())
        } else {
            Err(SaslError::InvalidServerSignature)
        }
    }
}

/// A parsed HT initial response.
#[derive(Clone, PartialEq, Eq)]
pub struct HtInitial {
    /// The authentication identity, SASLprep'd (for XMPP: the localpart).
    pub authcid: String,
    hashed_token: [u8; HT_HASH_LEN],
}

impl fmt::Debug for HtInitial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // the hashed token proves possession: not for logs
        f.debug_struct("HtInitial")
            .field("authcid", &self.authcid)
            .finish_non_exhaustive()
    }
}

/// Parses an HT-SHA-256 initial response: the authcid up to the first NUL
/// (the hash after it may hold NULs), then exactly [`HT_HASH_LEN`] octets.
pub fn parse_ht_initial(msg: &[u8]) -> Result<HtInitial, SaslError> {
    let nul = msg
        .iter()
        .position(|&b| b == 0)
        .ok_or(SaslError::Malformed("HT initial response without NUL"))?;
    let (authcid, rest) = (&msg[..nul], &msg[nul + 1..]);
    let authcid = std::str::from_utf8(authcid).map_err(|_| SaslError::InvalidUsername)?;
    let hashed_token: [u8; HT_HASH_LEN] = rest
        .try_into()
        .map_err(|_| SaslError::Malformed("HT hashed token is not 32 octets"))?;
    Ok(HtInitial {
        authcid: valid_authcid(authcid)?,
        hashed_token,
    })
}

/// A token the server accepted ([`ht_verify`]).
#[derive(Clone, PartialEq, Eq)]
pub struct HtVerified {
    /// Which of the candidate tokens matched.
    pub index: usize,
    /// The responder message, to send as the success's additional data.
    pub responder: Vec<u8>,
}

impl fmt::Debug for HtVerified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HtVerified")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// Server side: checks `initial` against every candidate token (the
/// client's current and newly issued one, XEP-0484 §6.1) over a connection
/// with `bindings`, computing every candidate's hash and comparing in
/// constant time, without stopping at a match. For an unknown user pass a
/// fake token, so the work is the same. Fails with
/// [`SaslError::ChannelBindingUnavailable`] if the mechanism's binding is
/// not known for this connection, [`SaslError::InvalidProof`] if no token
/// matches.
pub fn ht_verify(
    mechanism: HtMechanism,
    bindings: &ChannelBindings,
    initial: &HtInitial,
    tokens: &[&str],
) -> Result<HtVerified, SaslError> {
    let cb = mechanism.cb_data(bindings)?;
    let mut found = Choice::from(0);
    let mut index = 0u32;
    for (i, token) in tokens.iter().enumerate() {
        let expected = ht_hash(token.as_bytes(), b"Initiator", cb);
        let matches = expected.as_slice().ct_eq(&initial.hashed_token);
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        index = u32::conditional_select(&index, &i, matches & !found);
        found |= matches;
    }
    if !bool::from(found) {
        return Err(SaslError::InvalidProof);
    }
    let index = index as usize;
    let token = tokens.get(index).ok_or(SaslError::InvalidProof)?;
    Ok(HtVerified {
        index,
        responder: ht_hash(token.as_bytes(), b"Responder", cb),
    })
}

/// A FAST token derived from a server secret and a stored seed:
/// `base64url(HMAC-SHA-256(secret, "longlink fast token" || seed))`, 43
/// characters, 256 bits. The token store keeps only the seed, so what it
/// holds at rest does not authenticate anyone without the secret.
pub fn derive_token(secret: &[u8], seed: &[u8]) -> String {
    let mac = ht_hash(secret, b"longlink fast token", seed);
    URL_SAFE_NO_PAD.encode(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_uniq_is_refused() {
        for m in HtMechanism::ALL {
            assert_eq!(HtMechanism::from_name(m.name()), Some(m));
        }
        assert_eq!(HtMechanism::from_name("HT-SHA-256-UNIQ"), None);
        assert_eq!(HtMechanism::from_name("HT-SHA-512-ENDP"), None);
        assert_eq!(HtMechanism::from_name("ht-sha-256-none"), None);
    }

    #[test]
    fn a_connection_offers_only_the_bindings_it_knows() {
        let none = ChannelBindings::none();
        assert_eq!(HtMechanism::offered(&none), vec![HtMechanism::Sha256None]);
        let exporter_only = ChannelBindings {
            tls_exporter: Some(vec![1; 32]),
            ..ChannelBindings::none()
        };
        assert_eq!(
            HtMechanism::offered(&exporter_only),
            vec![HtMechanism::Sha256Expr, HtMechanism::Sha256None]
        );
    }

    #[test]
    fn authcid_with_nul_or_empty_or_too_long_is_refused() {
        let cb = ChannelBindings::none();
        for bad in ["", "a\0b", "x".repeat(MAX_AUTHCID + 1).as_str()] {
            assert_eq!(
                HtClient::new(HtMechanism::Sha256None, bad, "t", &cb).map(|_| ()),
                Err(SaslError::InvalidUsername)
            );
        }
        assert!(HtClient::new(HtMechanism::Sha256None, &"x".repeat(MAX_AUTHCID), "t", &cb).is_ok());
    }

    #[test]
    fn derived_tokens_are_43_url_safe_characters_and_depend_on_both_inputs() {
        let a = derive_token(&[1; 32], b"seed-1");
        assert_eq!(a.len(), 43);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(a, derive_token(&[1; 32], b"seed-1"));
        assert_ne!(a, derive_token(&[2; 32], b"seed-1"));
        assert_ne!(a, derive_token(&[1; 32], b"seed-2"));
    }
}

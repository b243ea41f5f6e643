//! TLS channel bindings (RFC 5056) of one connection, as the TLS
//! terminator (the CM) computes them and the authenticator (the core)
//! uses them. Only the types defined for TLS 1.3 are here:
//! `tls-server-end-point` (RFC 5929 §4) and `tls-exporter` (RFC 9266).
//! `tls-unique` is undefined for TLS 1.3 (RFC 9266 §3), and longlink
//! speaks nothing older, so it is never offered.

use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::SaslError;

/// A channel-binding type (IANA "Channel-Binding Types" registry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChannelBindingType {
    /// `tls-server-end-point`: a hash of the server's certificate (RFC 5929 §4).
    TlsServerEndPoint,
    /// `tls-exporter`: 32 bytes of the TLS exporter, label
    /// `EXPORTER-Channel-Binding`, empty context (RFC 9266).
    TlsExporter,
}

impl ChannelBindingType {
    /// Both types, in the order they are advertised (XEP-0440).
    pub const ALL: [ChannelBindingType; 2] = [
        ChannelBindingType::TlsExporter,
        ChannelBindingType::TlsServerEndPoint,
    ];

    /// The registered name, as XEP-0440 advertises it.
    pub fn name(self) -> &'static str {
        match self {
            ChannelBindingType::TlsServerEndPoint => "tls-server-end-point",
            ChannelBindingType::TlsExporter => "tls-exporter",
        }
    }

    /// Looks a type up by its registered name (`tls-unique` is not one of ours).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// The RFC 9266 exporter label for `tls-exporter`.
pub const TLS_EXPORTER_LABEL: &[u8] = b"EXPORTER-Channel-Binding";

/// Length of the `tls-exporter` value (RFC 9266 §2).
pub const TLS_EXPORTER_LEN: usize = 32;

/// The hash of a certificate's signature algorithm, as RFC 5929 §4.1
/// uses it to pick the `tls-server-end-point` hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CertSignatureHash {
    /// MD5 or SHA-1 (the binding then uses SHA-256), or SHA-256.
    Sha256OrWeaker,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

/// `tls-server-end-point` of a certificate (its DER): the certificate's
/// hash with its signature algorithm's hash function, SHA-256 when that is
/// MD5 or SHA-1 (RFC 5929 §4.1).
pub fn tls_server_end_point(cert_der: &[u8], hash: CertSignatureHash) -> Vec<u8> {
    match hash {
        CertSignatureHash::Sha256OrWeaker => Sha256::digest(cert_der).to_vec(),
        CertSignatureHash::Sha384 => Sha384::digest(cert_der).to_vec(),
        CertSignatureHash::Sha512 => Sha512::digest(cert_der).to_vec(),
    }
}

/// What one connection can bind to: filled in by whoever terminates TLS
/// (each value only when it is known to be the one the client sees),
/// carried to whoever authenticates.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ChannelBindings {
    /// `tls-server-end-point` of the certificate the client saw, if known.
    pub tls_server_end_point: Option<Vec<u8>>,
    /// `tls-exporter` of this connection, if known.
    pub tls_exporter: Option<Vec<u8>>,
}

impl std::fmt::Debug for ChannelBindings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // the exporter value is key material of the connection
        f.debug_struct("ChannelBindings")
            .field(
                "tls_server_end_point",
                &self.tls_server_end_point.as_ref().map(Vec::len),
            )
            .field("tls_exporter", &self.tls_exporter.as_ref().map(|_| ".."))
            .finish()
    }
}

impl ChannelBindings {
    /// No channel binding known (e.g. a connection not over TLS).
    pub fn none() -> Self {
        Self::default()
    }

    /// The data of one type, if this connection has it (never empty).
    pub fn data(&self, cb: ChannelBindingType) -> Option<&[u8]> {
        let value = match cb {
            ChannelBindingType::TlsServerEndPoint => self.tls_server_end_point.as_deref(),
            ChannelBindingType::TlsExporter => self.tls_exporter.as_deref(),
        };
        value.filter(|v| !v.is_empty())
    }

    /// The data of one type, or [`SaslError::ChannelBindingUnavailable`].
    pub fn require(&self, cb: ChannelBindingType) -> Result<&[u8], SaslError> {
        self.data(cb).ok_or(SaslError::ChannelBindingUnavailable)
    }

    /// The types this connection can offer (XEP-0440), in advertised order.
    pub fn available(&self) -> Vec<ChannelBindingType> {
        ChannelBindingType::ALL
            .into_iter()
            .filter(|t| self.data(*t).is_some())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_tls_unique_is_not_a_type_here() {
        for t in ChannelBindingType::ALL {
            assert_eq!(ChannelBindingType::from_name(t.name()), Some(t));
        }
        assert_eq!(ChannelBindingType::from_name("tls-unique"), None);
    }

    #[test]
    fn available_lists_only_non_empty_values_and_require_refuses_the_rest() {
        let cb = ChannelBindings {
            tls_server_end_point: Some(Vec::new()),
            tls_exporter: Some(vec![7; TLS_EXPORTER_LEN]),
        };
        assert_eq!(cb.available(), vec![ChannelBindingType::TlsExporter]);
        assert_eq!(
            cb.require(ChannelBindingType::TlsServerEndPoint),
            Err(SaslError::ChannelBindingUnavailable)
        );
        assert_eq!(
            cb.require(ChannelBindingType::TlsExporter).map(<[u8]>::len),
            Ok(32)
        );
        assert!(ChannelBindings::none().available().is_empty());
        assert!(
            !format!("{cb:?}").contains('7'),
            "exporter value not logged"
        );
    }

    #[test]
    fn end_point_hash_follows_the_signature_hash() {
        let der = b"not a real certificate, just DER-ish bytes";
        // recorded from Python's hashlib
        assert_eq!(
            hex(&tls_server_end_point(
                der,
                CertSignatureHash::Sha256OrWeaker
            )),
            "079beff52c3db22643735fb95e56423c59d4186416f6ae4b7716a4c9a691e09e"
        );
        assert_eq!(
            hex(&tls_server_end_point(der, CertSignatureHash::Sha384)),
            "04cc79c1864df469faf3e29007f8a12e129db266208e6ec4146968396e4f7c0e2ca8e83e1cbec8b47c687ae0373aad3a"
        );
        assert_eq!(
            tls_server_end_point(der, CertSignatureHash::Sha512).len(),
            64
        );
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}

//! SASL SCRAM Downgrade Protection (XEP-0474, v0.4+ delimiters): the hash
//! a SCRAM server puts in its server-first-message as the `h` attribute,
//! over the SASL mechanisms and the channel-binding types it advertised.
//!
//! Only the SASL (or SASL2) mechanism list itself counts. FAST's HT-*
//! mechanisms are advertised inside `<fast/>`, not in that list, and a
//! client computes the hash without them: a server that hashed them in
//! made every SSDP client see a downgrade attack (ejabberd #4331). So
//! [`ssdp_hash`] drops any `HT-` name it is handed.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::{ScramHash, crypto};

/// Separates values within a list.
const VALUE_SEPARATOR: u8 = 0x1e;
/// Separates the mechanism list from the channel-binding list.
const LIST_SEPARATOR: u8 = 0x1f;

/// Whether `name` is a FAST (HT-*) mechanism, never part of the hash.
fn is_fast_mechanism(name: &str) -> bool {
    name.starts_with("HT-")
}

/// The base64 SSDP hash with the SCRAM mechanism's own hash function:
/// the advertised mechanisms (HT-* left out) sorted by octets and joined
/// by `0x1E`; then, if channel-binding types were advertised (XEP-0440;
/// `Some`, even empty), `0x1F` and those types sorted and joined the same
/// way.
pub fn ssdp_hash(
    hash: ScramHash,
    mechanisms: &[&str],
    channel_bindings: Option<&[&str]>,
) -> String {
    let mut mechs: Vec<&str> = mechanisms
        .iter()
        .copied()
        .filter(|m| !is_fast_mechanism(m))
        .collect();
    mechs.sort_unstable();
    let mut s: Vec<u8> = Vec::new();
    join(&mut s, &mechs);
    if let Some(cbs) = channel_bindings {
        let mut cbs = cbs.to_vec();
        cbs.sort_unstable();
        s.push(LIST_SEPARATOR);
        join(&mut s, &cbs);
    }
    B64.encode(crypto::digest(hash, &s))
}

/// Client side: whether the server's `h` matches what the client saw
/// advertised (not secret; compared plainly).
pub fn ssdp_matches(
    hash: ScramHash,
    mechanisms: &[&str],
    channel_bindings: Option<&[&str]>,
    received: &str,
) -> bool {
    ssdp_hash(hash, mechanisms, channel_bindings) == received
}

fn join(out: &mut Vec<u8>, values: &[&str]) {
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(VALUE_SEPARATOR);
        }
        out.extend_from_slice(v.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xep_0474_example_hash() {
        // XEP-0474 §5.3: SHA-1 of
        // 'SCRAM-SHA-1\x1eSCRAM-SHA-1-PLUS\x1ftls-exporter\x1etls-server-end-point'
        assert_eq!(
            ssdp_hash(
                ScramHash::Sha1,
                &["SCRAM-SHA-1-PLUS", "SCRAM-SHA-1"],
                Some(&["tls-server-end-point", "tls-exporter"]),
            ),
            "G6k/rBLDqgOhRRaCuuatSDFkJ08="
        );
    }

    #[test]
    fn fast_mechanisms_never_change_the_hash() {
        let plain = ssdp_hash(
            ScramHash::Sha256,
            &["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"],
            None,
        );
        let with_fast = ssdp_hash(
            ScramHash::Sha256,
            &[
                "HT-SHA-256-NONE",
                "SCRAM-SHA-256",
                "HT-SHA-256-EXPR",
                "SCRAM-SHA-1",
                "PLAIN",
                "HT-SHA-256-ENDP",
            ],
            None,
        );
        assert_eq!(plain, with_fast);
        // recorded from Python: sha256(b"PLAIN\x1eSCRAM-SHA-1\x1eSCRAM-SHA-256")
        assert_eq!(plain, "J++Diu+JubnE6dLVvZjjI5KHnheOLsUSQWiw/prdbAA=");
    }

    #[test]
    fn an_advertised_empty_channel_binding_list_still_adds_the_separator() {
        // recorded from Python: sha256(b"SCRAM-SHA-1\x1eSCRAM-SHA-256\x1f")
        let h = ssdp_hash(
            ScramHash::Sha256,
            &["SCRAM-SHA-256", "SCRAM-SHA-1"],
            Some(&[]),
        );
        assert_eq!(h, "5JyB+q2RhLBcxFYRGsjJgEHnbBGu29x7jgu/3+4yt9w=");
        assert_ne!(
            h,
            ssdp_hash(ScramHash::Sha256, &["SCRAM-SHA-256", "SCRAM-SHA-1"], None)
        );
        assert!(ssdp_matches(
            ScramHash::Sha256,
            &["SCRAM-SHA-1", "SCRAM-SHA-256"],
            Some(&[]),
            &h
        ));
        assert!(!ssdp_matches(
            ScramHash::Sha256,
            &["SCRAM-SHA-1"],
            Some(&[]),
            &h
        ));
    }
}

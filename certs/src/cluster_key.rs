//! Keys derived from the cluster key every CM shares, so that any CM can
//! continue what another started:
//! - TLS 1.3 session tickets sealed with one key, so a phone that reconnects
//!   through the balancer resumes its TLS session on whichever CM it lands
//!   on (no certificate chain, no full handshake);
//! - one QUIC stateless-reset key, so when a CM dies the balancer can hand
//!   the dead connections' packets to a live CM, whose stateless reset the
//!   client accepts and reconnects at once instead of waiting for its idle
//!   timeout;
//! - the core's QUIC stateless-reset and connection-id keys (labels of
//!   their own), so a restarted core recognises the connection ids of its
//!   previous process's CM connections and answers their packets with
//!   a stateless reset the CMs accept, and they reconnect within a round
//!   trip instead of waiting for their idle timeout.

use std::sync::Arc;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

/// How long a session ticket is valid.
pub const TICKET_LIFETIME_SECS: u32 = 24 * 3600;

/// The shared cluster secret (see the module docs).
#[derive(Clone)]
pub struct ClusterKey([u8; 32]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// Wraps 32 secret bytes.
    pub fn new(secret: [u8; 32]) -> Self {
        Self(secret)
    }

    /// A fresh random key (for a node running alone).
    pub fn random() -> Self {
        let mut k = [0u8; 32];
        // SystemRandom only fails without an OS random source; the key is
        // then still unique per process through the address entropy below.
        if SystemRandom::new().fill(&mut k).is_err() {
            let addr = &k as *const _ as usize as u64;
            k[..8].copy_from_slice(&addr.to_le_bytes());
        }
        Self(k)
    }

    /// A subkey for one purpose (HMAC-SHA-256 of the label).
    pub fn derive(&self, label: &str) -> [u8; 32] {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        let tag = hmac::sign(&key, label.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// The QUIC stateless-reset key every CM uses.
    pub fn reset_key(&self) -> hmac::Key {
        hmac::Key::new(
            hmac::HMAC_SHA256,
            &self.derive("longlink quic stateless reset"),
        )
    }

    /// The core's QUIC stateless-reset key: the same for every process of
    /// the core, distinct from the CMs' ([`ClusterKey::reset_key`]).
    pub fn core_reset_key(&self) -> hmac::Key {
        hmac::Key::new(
            hmac::HMAC_SHA256,
            &self.derive("longlink core quic stateless reset"),
        )
    }

    /// The key of the core's QUIC connection ids (quinn's
    /// `HashedConnectionIdGenerator` signs its ids with it, and an endpoint
    /// answers only packets whose id it signed): the same for every process
    /// of the core, so a restarted core takes its previous process's ids as
    /// its own and answers them with a stateless reset.
    pub fn core_cid_key(&self) -> u64 {
        let k = self.derive("longlink core quic connection ids");
        u64::from_le_bytes([k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]])
    }

    /// A rustls ticketer every CM shares.
    pub fn ticketer(&self) -> Arc<dyn ProducesTickets> {
        let key = UnboundKey::new(&CHACHA20_POLY1305, &self.derive("longlink tls tickets"))
            .map(LessSafeKey::new);
        match key {
            Ok(key) => Arc::new(SharedTicketer { key }),
            // cannot happen: the key has the algorithm's length
            Err(_) => Arc::new(NoTickets),
        }
    }
}

/// Seals tickets with ChaCha20-Poly1305: `nonce ‖ ciphertext ‖ tag`.
struct SharedTicketer {
    key: LessSafeKey,
}

impl std::fmt::Debug for SharedTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedTicketer")
    }
}

impl ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME_SECS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).ok()?;
        let mut sealed = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut sealed,
            )
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = cipher.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = self.key.open_in_place(nonce, Aad::empty(), &mut buf).ok()?;
        Some(plain.to_vec())
    }
}

#[derive(Debug)]
struct NoTickets;

impl ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }
    fn lifetime(&self) -> u32 {
        0
    }
    fn encrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn decrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_open_on_every_node_with_the_key_and_nowhere_else() {
        let a = ClusterKey::new([1; 32]).ticketer();
        let b = ClusterKey::new([1; 32]).ticketer();
        let other = ClusterKey::new([2; 32]).ticketer();
        let t = a.encrypt(b"session state").unwrap();
        assert_eq!(b.decrypt(&t).as_deref(), Some(&b"session state"[..]));
        assert_eq!(other.decrypt(&t), None);
        let mut tampered = t.clone();
        tampered[20] ^= 1;
        assert_eq!(b.decrypt(&tampered), None);
        assert_eq!(b.decrypt(b"short"), None);
    }

    #[test]
    fn the_core_reset_and_connection_id_keys_survive_a_restart_and_differ_from_the_cms() {
        let tag = |k: hmac::Key| hmac::sign(&k, b"connection id").as_ref().to_vec();
        let core = tag(ClusterKey::new([4; 32]).core_reset_key());
        assert_eq!(core, tag(ClusterKey::new([4; 32]).core_reset_key()));
        assert_ne!(core, tag(ClusterKey::new([4; 32]).reset_key()));
        assert_ne!(core, tag(ClusterKey::new([5; 32]).core_reset_key()));
        let cids = ClusterKey::new([4; 32]).core_cid_key();
        assert_eq!(cids, ClusterKey::new([4; 32]).core_cid_key());
        assert_ne!(cids, ClusterKey::new([5; 32]).core_cid_key());
    }

    #[test]
    fn subkeys_differ_by_purpose() {
        let k = ClusterKey::new([3; 32]);
        assert_ne!(k.derive("a"), k.derive("b"));
        assert_eq!(k.derive("a"), ClusterKey::new([3; 32]).derive("a"));
    }
}

//! quinn integration: a [`ConnectionIdGenerator`] issuing routable QUIC-LB CIDs.

use std::time::Duration;

use quinn_proto::{ConnectionId, ConnectionIdGenerator, InvalidCid};

use crate::MAX_CID_LEN;
use crate::codec::CidEncoder;

/// A quinn [`ConnectionIdGenerator`] that issues routable CIDs for one server; plug it
/// in with `quinn::EndpointConfig::cid_generator(move || Box::new(generator.clone()))`.
///
/// Every CID carries a fresh random nonce, so CIDs are unlinkable. `validate` accepts
/// CIDs whose first octet matches this configuration (config id and length
/// self-description) and that decode under it, whichever server's id they carry,
/// letting the endpoint drop stray short-header packets cheaply: a packet of
/// another server's connection it does not know (the balancer sends a departed
/// server's packets to a live one) is answered with a stateless reset, which the
/// client accepts when the servers share the reset key.
#[derive(Clone, Debug)]
pub struct QuicLbGenerator {
    encoder: CidEncoder,
    lifetime: Option<Duration>,
}

impl QuicLbGenerator {
    /// Wraps an encoder; generated CIDs have no lifetime (never retired by age).
    pub fn new(encoder: CidEncoder) -> Self {
        Self {
            encoder,
            lifetime: None,
        }
    }

    /// Sets the lifetime after which quinn retires and replaces each issued CID.
    pub fn with_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// The wrapped encoder.
    pub fn encoder(&self) -> &CidEncoder {
        &self.encoder
    }
}

impl ConnectionIdGenerator for QuicLbGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut out = [0u8; MAX_CID_LEN];
        let len = self.encoder.generate_into(&mut out);
        ConnectionId::new(&out[..len])
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        let bytes: &[u8] = cid;
        let expected = self.encoder.config().first_octet();
        if bytes.first() != Some(&expected) {
            return Err(InvalidCid);
        }
        match self.encoder.decode(bytes) {
            Some(_) if bytes.len() == self.encoder.cid_len() => Ok(()),
            _ => Err(InvalidCid),
        }
    }

    fn cid_len(&self) -> usize {
        self.encoder.cid_len()
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        self.lifetime
    }
}

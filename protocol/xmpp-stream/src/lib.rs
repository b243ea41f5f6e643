//! The XMPP client stream layer shared by the CM, the core and the client SDK.
//!
//! - [`framer`]: an incremental, policing framer that cuts a byte stream into
//!   the stream header, complete top-level elements and the stream close,
//!   enforcing size, depth and restricted-XML rules (RFC 6120 §11).
//! - [`wellformed`]: the strict, allocation-free well-formedness pass every
//!   element passes before quick-xml reads it (what the CM relays, a strict
//!   parser such as expat accepts).
//! - [`stanza`]: validation of one complete element, its routing header
//!   (kind, type, to, id), the server claims a client could forge, and
//!   `from` stamping without building a tree.
//! - [`element`]: a small element tree for the places that must look inside
//!   a stanza (server IQs, the SDK).
//! - [`caps`]: the entity capabilities verification string (XEP-0115).
//! - [`sasl2`]: SASL2 (XEP-0388) with Bind2 (XEP-0386) and inline
//!   XEP-0198 resumption: `<authenticate/>` and `<success/>` both ways.
//! - [`stream`]: builders for stream headers, features, SASL and errors.
//! - [`condition`]: stream and stanza error conditions.
//! - [`pacing`]: a token bucket for the rates clients are held to, and the
//!   jittered backoff between reconnections.

pub mod caps;
pub mod condition;
pub mod element;
pub mod framer;
pub mod ns;
pub mod pacing;
pub mod sasl2;
pub mod stanza;
pub mod stream;
pub mod wellformed;

pub use condition::{StanzaCondition, StreamCondition};
pub use element::{Element, Node};
pub use framer::{FrameEvent, Framer, Limits, StreamHeader, StreamKind};
pub use stanza::{Claim, ClaimKind, StanzaHeader, StanzaKind, TopLevel};

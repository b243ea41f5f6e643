//! The longlink client library: XMPP over QUIC (XEP-0467) with a typed API.
//!
//! ```no_run
//! # async fn demo() -> Result<(), client_sdk::ClientError> {
//! use client_sdk::{Client, ConnectOptions, Event};
//! let opts = ConnectOptions::new("127.0.0.1:5222".parse().unwrap(), "alice@example.org", "secret")
//!     .with_ca_file("dev/pki/ca.pem");
//! let mut client = Client::connect(opts).await?;
//! client.send_presence(0).await?;
//! let id = client.send_message("bob@example.org", "hello").await?;
//! while let Some(Event::Message(m)) = client.next_event().await {
//!     println!("{} says {:?}", m.from, m.body);
//! }
//! # Ok(()) }
//! ```
//!
//! Inside: [`Client`] is a handle on a session task (`driver`), a thin tokio
//! driver around a sans-IO state machine (`session`) that decides
//! everything: outbox, stream management, reconnection, answers.
//!
//! The `tools` feature (off by default) also makes public the plumbing the
//! interop harness and the load tool drive by hand: `transport` (plain
//! TCP, STARTTLS, direct TLS or QUIC) and `negotiation` (an XMPP stream
//! step by step).

mod client;
mod connection;
mod driver;
mod error;
mod event;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod im;
pub mod muc;
#[cfg(feature = "tools")]
pub mod negotiation;
#[cfg(not(feature = "tools"))]
mod negotiation;
mod options;
pub mod pep;
pub mod push;
mod session;
mod sm;
mod tls;
#[cfg(feature = "tools")]
pub mod transport;
pub mod upload;

pub use client::{Client, Events};
pub use error::ClientError;
pub use event::{Carbon, Event, IqResponse, Message, MessageState, Presence};
pub use options::{ConnectOptions, DEFAULT_ROOM_PING_INTERVAL, FastToken, Trust};
pub use tls::load_roots;
pub use xmpp_sasl::Mechanism;

/// ALPN of XMPP client connections.
pub const ALPN: &[u8] = b"xmpp-client";

/// Events waiting for the app; when it stops reading, the session stops
/// reading the server (which then holds back, bounded by QUIC flow control).
pub const EVENT_QUEUE: usize = 4096;

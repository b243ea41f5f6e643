//! One simulated user: log in over the chosen transport (SCRAM keys cached
//! across logins), bind, send presence; then a writer half and a reader that
//! yields parsed stanzas.

use std::sync::Arc;

use client_sdk::transport::{Dialer, Io};
use client_sdk::{ClientError, Mechanism};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use xmpp_sasl::SaltedCache;
use xmpp_stream::element::Element;

/// What every simulated user shares.
#[derive(Clone)]
pub struct Setup {
    /// Reaches the server.
    pub dialer: Dialer,
    /// Accounts are `{prefix}{i}` with this password.
    pub prefix: String,
    /// The password of every account.
    pub password: String,
    /// SASL mechanism.
    pub mechanism: Mechanism,
    /// SCRAM SaltedPasswords computed so far.
    pub cache: Arc<SaltedCache>,
    /// The resource every user binds (scenarios differ, so a scenario's
    /// logins never collide with the sessions of the one before).
    pub resource: String,
}

impl Setup {
    /// The bare JID of user `i`.
    pub fn jid(&self, i: usize) -> String {
        format!("{}{i}@{}", self.prefix, self.dialer.domain())
    }
}

/// A logged-in user.
pub struct Online {
    /// Where stanzas go.
    pub writer: Box<dyn AsyncWrite + Unpin + Send>,
    /// Where they come from (its writer half is a sink).
    pub reader: Io,
    /// The QUIC connection, kept open with the user.
    pub quic: Option<quinn::Connection>,
    /// The bound full JID.
    pub jid: String,
}

/// A login or registration not done in this long has failed.
pub const LOGIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Logs user `i` in (stream, SASL, bind, initial presence) within
/// [`LOGIN_TIMEOUT`]. QUIC needs an endpoint.
pub async fn login(
    setup: &Setup,
    i: usize,
    endpoint: Option<&quinn::Endpoint>,
) -> Result<Online, ClientError> {
    tokio::time::timeout(LOGIN_TIMEOUT, login_inner(setup, i, endpoint))
        .await
        .unwrap_or(Err(ClientError::Timeout))
}

async fn login_inner(
    setup: &Setup,
    i: usize,
    endpoint: Option<&quinn::Endpoint>,
) -> Result<Online, ClientError> {
    let connected = setup.dialer.connect(endpoint).await?;
    let mut io = connected.io;
    let user = format!("{}{i}", setup.prefix);
    io.authenticate_cached(&user, &setup.password, setup.mechanism, Some(&setup.cache))
        .await?;
    io.open(setup.dialer.domain()).await?;
    let features = io.element().await?;
    let jid = io.bind(&features, Some(&setup.resource)).await?;
    io.write(b"<presence/>").await?;
    let client_sdk::negotiation::Negotiation { send, recv, framer } = io;
    let reader = Io {
        send: Box::new(tokio::io::sink()),
        recv,
        framer,
    };
    Ok(Online {
        writer: send,
        reader,
        quic: connected.quic,
        jid,
    })
}

/// Creates account `i` by in-band registration (XEP-0077): how the load
/// tool fills ejabberd and Prosody. An existing account is fine.
pub async fn register(
    setup: &Setup,
    i: usize,
    endpoint: Option<&quinn::Endpoint>,
) -> Result<(), ClientError> {
    tokio::time::timeout(LOGIN_TIMEOUT, register_inner(setup, i, endpoint))
        .await
        .unwrap_or(Err(ClientError::Timeout))
}

async fn register_inner(
    setup: &Setup,
    i: usize,
    endpoint: Option<&quinn::Endpoint>,
) -> Result<(), ClientError> {
    use xmpp_stream::ns;
    let mut io = setup.dialer.connect(endpoint).await?.io;
    let _features = io.element().await?;
    let iq = Element::new("iq", ns::CLIENT)
        .with_attr("type", "set")
        .with_attr("id", "reg")
        .with_child(
            Element::new("query", ns::REGISTER)
                .with_child(
                    Element::new("username", ns::REGISTER)
                        .with_text(format!("{}{i}", setup.prefix)),
                )
                .with_child(
                    Element::new("password", ns::REGISTER).with_text(setup.password.clone()),
                ),
        );
    io.write(&iq.to_bytes(ns::CLIENT)).await?;
    let answer = io.element().await?;
    let _ = io.write(xmpp_stream::stream::STREAM_CLOSE).await;
    let condition = answer.child("error", ns::CLIENT).and_then(|e| {
        e.elements()
            .find(|c| c.ns == ns::STANZA_ERRORS)
            .map(|c| c.name.clone())
    });
    match (answer.attr("type"), condition.as_deref()) {
        (Some("result"), _) | (_, Some("conflict")) => Ok(()),
        (_, c) => Err(ClientError::StanzaError(
            c.unwrap_or("undefined-condition").to_owned(),
        )),
    }
}

/// How long [`Online::close`] waits for the server's end of the stream.
pub const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Online {
    /// Ends the stream, then the connection, the way a client must for the
    /// server to end its session at once: writes `</stream:stream>`, ends
    /// its side of the stream, waits (at most [`CLOSE_WAIT`]) for the
    /// server's `</stream:stream>` or the stream's end, and only then
    /// closes a QUIC connection. (Closing at once, as this did before,
    /// drops the unsent `</stream:stream>`: quinn sends nothing of a closed
    /// connection's streams. The server then learns of the end only from
    /// the one CONNECTION_CLOSE packet; if that is lost, or the tool exits
    /// before quinn's driver sent it, only from its idle timeout, 55 s
    /// later with longlink's CM: keep-alive 25 s, then 30 s idle.)
    pub async fn close(mut self) {
        let said = async {
            let _ = self
                .writer
                .write_all(xmpp_stream::stream::STREAM_CLOSE)
                .await;
            let _ = self.writer.shutdown().await;
        };
        // a server that does not read must not hold the close up
        let _ = tokio::time::timeout(CLOSE_WAIT, said).await;
        let answered = async {
            loop {
                match self.reader.next().await {
                    Ok(xmpp_stream::framer::FrameEvent::Close) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, answered).await;
        if let Some(c) = &self.quic {
            c.close(0u32.into(), b"bye");
        }
    }
}

/// Closes every connection on the endpoints and waits (briefly) until the
/// servers were told: a load tool that just exits leaves its QUIC sessions
/// open on the server until they time out, and they would still receive
/// (and cost) the next scenario's messages.
pub async fn close_endpoints(endpoints: &[quinn::Endpoint]) {
    for ep in endpoints {
        ep.close(0u32.into(), b"done");
    }
    for ep in endpoints {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), ep.wait_idle()).await;
    }
}

/// The next stanza, or None when the stream ended.
pub async fn next(reader: &mut Io) -> Option<Element> {
    reader.element().await.ok()
}

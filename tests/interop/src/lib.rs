//! A conformance suite any XMPP server can be pointed at (`longlink
//! interop`): two accounts, one connection per case, over TCP with
//! STARTTLS, direct TLS (XEP-0368) or QUIC (XEP-0467). Each case reports
//! pass or fail with the reason; a case is only as trustworthy as a
//! reference server passing it (docs/INTEROP.md records Prosody's run).
//! A second suite, [`compliance`], looks up the features XEP-0479 asks of
//! a server, as Conversations' compliance tester does.

pub mod compliance;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use client_sdk::Mechanism;
use xmpp_stream::element::Element;
use xmpp_stream::framer::FrameEvent;
use xmpp_stream::ns;

pub use client_sdk::transport::Transport;

/// The server under test.
#[derive(Clone, Debug)]
pub struct Target {
    /// Address to connect to.
    pub server: SocketAddr,
    /// The XMPP domain (also the TLS server name).
    pub domain: String,
    /// Transport.
    pub transport: Transport,
    /// CA certificates to trust (PEM); the system's if None.
    pub ca: Option<PathBuf>,
    /// Two existing accounts: (user, password).
    pub accounts: [(String, String); 2],
}

/// One case's outcome.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Case name.
    pub name: &'static str,
    /// Ok, or why it failed.
    pub result: Result<(), String>,
}

use client_sdk::transport::{Dialer, Io};

/// One open connection.
struct Conn {
    io: Io,
    jid: String,
    /// The stream features offered after authentication.
    features: Element,
    _quic: Option<(quinn::Endpoint, quinn::Connection)>,
}

const WAIT: Duration = Duration::from_secs(10);

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn roots(target: &Target) -> Result<rustls::RootCertStore, String> {
    let path = target
        .ca
        .clone()
        .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
    client_sdk::load_roots(&path).map_err(err)
}

/// Connects and opens the stream (after STARTTLS on TCP).
async fn connect(
    target: &Target,
) -> Result<(Io, Option<(quinn::Endpoint, quinn::Connection)>), String> {
    let dialer = Dialer::new(
        target.server,
        &target.domain,
        target.transport,
        roots(target)?,
    )
    .map_err(err)?;
    let endpoint = match target.transport {
        Transport::Quic => Some(dialer.endpoint().map_err(err)?),
        _ => None,
    };
    let c = dialer.connect(endpoint.as_ref()).await.map_err(err)?;
    Ok((c.io, endpoint.zip(c.quic)))
}

/// Logs account `n` in with `mechanism` (None: the best the server
/// offers) and binds `resource`.
async fn login(
    target: &Target,
    n: usize,
    mechanism: Option<Mechanism>,
    resource: &str,
) -> Result<Conn, String> {
    let Some(mechanism) = mechanism else {
        // the best the server offers
        let mut last = String::new();
        for m in [
            Mechanism::ScramSha256,
            Mechanism::ScramSha1,
            Mechanism::Plain,
        ] {
            match Box::pin(login(target, n, Some(m), resource)).await {
                Err(e) if e.contains("invalid-mechanism") => last = e,
                other => return other,
            }
        }
        return Err(last);
    };
    let (mut io, quic) = connect(target).await?;
    let (user, password) = &target.accounts[n];
    io.authenticate(user, password, mechanism)
        .await
        .map_err(err)?;
    io.open(&target.domain).await.map_err(err)?;
    let features = io.element().await.map_err(err)?;
    let jid = io.bind(&features, Some(resource)).await.map_err(err)?;
    Ok(Conn {
        io,
        jid,
        features,
        _quic: quic,
    })
}

impl Conn {
    async fn send(&mut self, xml: &str) -> Result<(), String> {
        self.io.write(xml.as_bytes()).await.map_err(err)
    }

    /// The next element matching `want`, skipping others, within `WAIT`.
    async fn until(&mut self, want: impl Fn(&Element) -> bool) -> Result<Element, String> {
        let io = &mut self.io;
        let found = tokio::time::timeout(WAIT, async {
            loop {
                let el = io.element().await.map_err(err)?;
                if want(&el) {
                    return Ok::<_, String>(el);
                }
            }
        })
        .await;
        found.map_err(|_| "nothing came in time".to_owned())?
    }

    async fn close(mut self) {
        let _ = self.io.write(xmpp_stream::stream::STREAM_CLOSE).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while !matches!(self.io.next().await, Ok(FrameEvent::Close) | Err(_)) {}
        })
        .await;
    }
}

fn bare(jid: &str) -> &str {
    jid.split('/').next().unwrap_or(jid)
}

fn message(to: &str, body: &str) -> String {
    let m = Element::new("message", ns::CLIENT)
        .with_attr("to", to)
        .with_attr("type", "chat")
        .with_attr("id", format!("interop-{}", rand::random::<u32>()))
        .with_child(Element::new("body", ns::CLIENT).with_text(body));
    String::from_utf8_lossy(&m.to_bytes(ns::CLIENT)).into_owned()
}

fn body_is(body: &str) -> impl Fn(&Element) -> bool + '_ {
    move |el| {
        el.name == "message"
            && el
                .child("body", ns::CLIENT)
                .is_some_and(|b| b.text() == body)
    }
}

fn unique(what: &str) -> String {
    format!("{what} {:08x}", rand::random::<u32>())
}

async fn case_login(target: &Target, mechanism: Mechanism) -> Result<(), String> {
    let conn = login(target, 0, Some(mechanism), "interop-login").await?;
    conn.close().await;
    Ok(())
}

async fn case_bind(target: &Target) -> Result<(), String> {
    let conn = login(target, 0, None, "interop-bind").await?;
    let want = format!("{}@{}/interop-bind", target.accounts[0].0, target.domain);
    let ok = conn.jid.eq_ignore_ascii_case(&want);
    conn.close().await;
    if ok {
        Ok(())
    } else {
        Err(format!("bound {}", want))
    }
}

async fn case_message(target: &Target, to_bare: bool) -> Result<(), String> {
    let mut a = login(target, 0, None, "interop-a").await?;
    let mut b = login(target, 1, None, "interop-b").await?;
    b.send("<presence/>").await?;
    // make sure b's presence is processed before a writes
    ping(&mut b, &target.domain).await?;
    let to = if to_bare {
        bare(&b.jid).to_owned()
    } else {
        b.jid.clone()
    };
    let body = unique("to a JID");
    a.send(&message(&to, &body)).await?;
    let got = b.until(body_is(&body)).await;
    let a_jid = a.jid.clone();
    a.close().await;
    b.close().await;
    let got = got?;
    let from = got.attr("from").unwrap_or_default();
    if bare(from).eq_ignore_ascii_case(bare(&a_jid)) {
        Ok(())
    } else {
        Err(format!("from {from}"))
    }
}

async fn case_offline(target: &Target) -> Result<(), String> {
    let b = login(target, 1, None, "interop-offline").await?;
    let b_bare = bare(&b.jid).to_owned();
    b.close().await;
    let mut a = login(target, 0, None, "interop-a").await?;
    let body = unique("while you were away");
    a.send(&message(&b_bare, &body)).await?;
    ping(&mut a, &target.domain).await?;
    a.close().await;
    let mut b = login(target, 1, None, "interop-offline").await?;
    b.send("<presence/>").await?;
    let got = b.until(body_is(&body)).await;
    b.close().await;
    let got = got?;
    if got.child("delay", ns::DELAY).is_some() {
        Ok(())
    } else {
        Err("no XEP-0203 delay".into())
    }
}

async fn ping(conn: &mut Conn, domain: &str) -> Result<(), String> {
    let id = format!("ping-{:08x}", rand::random::<u32>());
    let iq = Element::new("iq", ns::CLIENT)
        .with_attr("type", "get")
        .with_attr("to", domain)
        .with_attr("id", id.clone())
        .with_child(Element::new("ping", ns::PING));
    conn.send(&String::from_utf8_lossy(&iq.to_bytes(ns::CLIENT)))
        .await?;
    let answer = conn
        .until(|el| el.name == "iq" && el.attr("id") == Some(&id))
        .await?;
    match answer.attr("type") {
        Some("result") => Ok(()),
        other => Err(format!("ping answered {other:?}")),
    }
}

async fn case_ping(target: &Target) -> Result<(), String> {
    let mut conn = login(target, 0, None, "interop-ping").await?;
    let r = ping(&mut conn, &target.domain).await;
    conn.close().await;
    r
}

async fn case_unsupported_iq(target: &Target) -> Result<(), String> {
    let mut conn = login(target, 0, None, "interop-iq").await?;
    let iq = format!(
        "<iq type='get' to='{}' id='unsupported-1'><query xmlns='urn:example:nothing-serves-this'/></iq>",
        target.domain
    );
    conn.send(&iq).await?;
    let answer = conn
        .until(|el| el.name == "iq" && el.attr("id") == Some("unsupported-1"))
        .await;
    conn.close().await;
    let answer = answer?;
    let condition = answer.child("error", ns::CLIENT).and_then(|e| {
        e.elements()
            .find(|c| c.ns == ns::STANZA_ERRORS)
            .map(|c| c.name.clone())
    });
    match condition.as_deref() {
        Some("service-unavailable") => Ok(()),
        other => Err(format!("answered {:?} with {other:?}", answer.attr("type"))),
    }
}

async fn case_malformed(target: &Target) -> Result<(), String> {
    let mut conn = login(target, 0, None, "interop-bad").await?;
    conn.send("<message><body>&undefined-entity;</body></message>")
        .await?;
    let result = tokio::time::timeout(WAIT, conn.io.element()).await;
    match result {
        Ok(Err(client_sdk::ClientError::Stream(c)))
            if matches!(
                c.as_str(),
                "not-well-formed" | "invalid-xml" | "restricted-xml"
            ) =>
        {
            Ok(())
        }
        Ok(other) => Err(format!("got {other:?}")),
        Err(_) => Err("no stream error in time".into()),
    }
}

async fn case_stream_management(target: &Target) -> Result<(), String> {
    let mut conn = login(target, 0, None, "interop-sm").await?;
    conn.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await?;
    let enabled = conn.until(|el| el.ns == ns::SM).await?;
    if enabled.name != "enabled" {
        conn.close().await;
        return Err(format!("<enable/> answered <{}/>", enabled.name));
    }
    ping(&mut conn, &target.domain).await?;
    conn.send("<r xmlns='urn:xmpp:sm:3'/>").await?;
    let a = conn.until(|el| el.ns == ns::SM && el.name == "a").await;
    conn.close().await;
    match a?.attr("h") {
        Some("1") => Ok(()),
        other => Err(format!("h {other:?} after one stanza")),
    }
}

/// Runs every case against `target`, in order.
pub async fn run_suite(target: &Target) -> Vec<Outcome> {
    let mut out = Vec::new();
    macro_rules! case {
        ($name:expr, $fut:expr) => {
            let result = match tokio::time::timeout(Duration::from_secs(60), $fut).await {
                Ok(r) => r,
                Err(_) => Err("timed out".to_owned()),
            };
            out.push(Outcome {
                name: $name,
                result,
            });
        };
    }
    case!(
        "login SCRAM-SHA-256",
        case_login(target, Mechanism::ScramSha256)
    );
    case!(
        "login SCRAM-SHA-1",
        case_login(target, Mechanism::ScramSha1)
    );
    case!("login PLAIN", case_login(target, Mechanism::Plain));
    case!("bind a requested resource", case_bind(target));
    case!("message to a full JID", case_message(target, false));
    case!("message to a bare JID", case_message(target, true));
    case!("offline delivery with delay", case_offline(target));
    case!("ping (XEP-0199)", case_ping(target));
    case!(
        "unsupported IQ gets service-unavailable",
        case_unsupported_iq(target)
    );
    case!("malformed XML gets a stream error", case_malformed(target));
    case!(
        "stream management (XEP-0198)",
        case_stream_management(target)
    );
    out
}

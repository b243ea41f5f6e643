//! The compliance suite (`longlink interop --suite compliance`): one
//! login, then the lookups a client makes to learn what a server serves
//! (its stream features, the server's and the account's disco#info, and
//! the disco#info of each service in the server's disco#items), checked
//! against what XEP-0479 (Compliance Suites 2023) asks of a server in its
//! Core, IM and Mobile categories, where Conversations' compliance
//! tester (caas) looks for it: a service is one of the server's
//! disco#items or the server itself. A lookup shows a feature is advertised, not that it works:
//! the conformance suite and the end-to-end tests do that.

use std::time::Duration;

use xmpp_stream::element::Element;
use xmpp_stream::ns;

use crate::{Conn, Outcome, Target, login};

/// Where a feature shows.
#[derive(Clone, Copy, Debug)]
enum Look {
    /// A stream feature after authentication: element name and namespace.
    StreamFeature(&'static str, &'static str),
    /// A feature of the server's disco#info.
    ServerFeature(&'static str),
    /// An identity (category, type) of the server's disco#info.
    ServerIdentity(&'static str, &'static str),
    /// A feature of the account's (bare JID's) disco#info.
    AccountFeature(&'static str),
    /// An identity (category, type) of the account's disco#info.
    AccountIdentity(&'static str, &'static str),
    /// A service among the server's disco#items with this feature.
    ServiceFeature(&'static str),
    /// A feature of a group chat service: one of the server's disco#items
    /// (not the server itself) with identity conference/text and the MUC
    /// feature, as Conversations takes one.
    GroupChatFeature(&'static str),
    /// A private XML get (XEP-0049, which has no disco feature) is
    /// answered with a result.
    PrivateStorageAnswers,
}

/// One check: its name (the XEP and what it is) and where it looks.
const CHECKS: &[(&str, Look)] = &[
    (
        "XEP-0030 service discovery (server identity server/im)",
        Look::ServerIdentity("server", "im"),
    ),
    (
        "XEP-0115 entity capabilities (stream feature)",
        Look::StreamFeature("c", "http://jabber.org/protocol/caps"),
    ),
    (
        "XEP-0163 personal eventing (account identity pubsub/pep)",
        Look::AccountIdentity("pubsub", "pep"),
    ),
    (
        "XEP-0223 PEP publish-options (account feature)",
        Look::AccountFeature("http://jabber.org/protocol/pubsub#publish-options"),
    ),
    (
        "RFC 6121 roster versioning (stream feature)",
        Look::StreamFeature("ver", ns::ROSTER_VER),
    ),
    (
        "XEP-0045 multi-user chat (a conference/text service)",
        Look::GroupChatFeature("http://jabber.org/protocol/muc"),
    ),
    (
        "XEP-0410 MUC self-ping optimization (group chat service feature)",
        Look::GroupChatFeature("http://jabber.org/protocol/muc#self-ping-optimization"),
    ),
    (
        "XEP-0191 blocking command (server feature)",
        Look::ServerFeature(ns::BLOCKING),
    ),
    (
        "XEP-0280 message carbons (server feature)",
        Look::ServerFeature(ns::CARBONS),
    ),
    (
        "XEP-0313 message archive (account feature)",
        Look::AccountFeature(ns::MAM),
    ),
    (
        "XEP-0160 offline messages (server feature)",
        Look::ServerFeature("msgoffline"),
    ),
    (
        "XEP-0049 private XML storage (a get is answered)",
        Look::PrivateStorageAnswers,
    ),
    (
        "XEP-0402 bookmarks with #compat (account feature)",
        Look::AccountFeature("urn:xmpp:bookmarks:1#compat"),
    ),
    (
        "XEP-0398 avatar conversion (account feature)",
        Look::AccountFeature("urn:xmpp:pep-vcard-conversion:0"),
    ),
    (
        "XEP-0054 vcard-temp (server feature)",
        Look::ServerFeature(ns::VCARD),
    ),
    (
        "XEP-0363 HTTP file upload (a service)",
        Look::ServiceFeature("urn:xmpp:http:upload:0"),
    ),
    (
        "XEP-0198 stream management (stream feature)",
        Look::StreamFeature("sm", ns::SM),
    ),
    (
        "XEP-0352 client state indication (stream feature)",
        Look::StreamFeature("csi", ns::CSI),
    ),
    (
        "XEP-0357 push notifications (account feature)",
        Look::AccountFeature("urn:xmpp:push:0"),
    ),
    (
        "XEP-0215 external services for calls (server feature)",
        Look::ServerFeature(ns::EXTDISCO),
    ),
];

/// The names of every check, in order.
pub fn check_names() -> Vec<&'static str> {
    CHECKS.iter().map(|(name, _)| *name).collect()
}

/// What the lookups found.
#[derive(Debug, Default)]
struct Found {
    stream_features: Option<Element>,
    server: Option<Element>,
    account: Option<Element>,
    /// The disco#info of the server's disco#items.
    items: Vec<Element>,
    /// Those and the server's own (where a service such as upload may be).
    services: Vec<Element>,
    private_storage: bool,
}

/// Most services of the server's disco#items looked into.
const MAX_SERVICES: usize = 32;
/// Longest wait for one service's disco#info.
const SERVICE_WAIT: Duration = Duration::from_secs(3);

/// Runs the lookups with account 0 and every check against them.
pub async fn run_compliance(target: &Target) -> Vec<Outcome> {
    // (logins and three lookups, plus every service at most SERVICE_WAIT)
    let found = match tokio::time::timeout(Duration::from_secs(150), look(target)).await {
        Ok(Ok(found)) => found,
        Ok(Err(why)) => return fail_all(&why),
        Err(_) => return fail_all("the lookups timed out"),
    };
    CHECKS
        .iter()
        .map(|(name, how)| Outcome {
            name,
            result: check(&found, *how),
        })
        .collect()
}

fn fail_all(why: &str) -> Vec<Outcome> {
    CHECKS
        .iter()
        .map(|(name, _)| Outcome {
            name,
            result: Err(why.to_owned()),
        })
        .collect()
}

async fn look(target: &Target) -> Result<Found, String> {
    let mut conn = login(target, 0, None, "compliance").await?;
    let account = crate::bare(&conn.jid).to_owned();
    let mut found = Found {
        stream_features: Some(conn.features.clone()),
        ..Found::default()
    };
    found.server = disco(&mut conn, &target.domain, ns::DISCO_INFO).await.ok();
    found.account = disco(&mut conn, &account, ns::DISCO_INFO).await.ok();
    if let Ok(items) = disco(&mut conn, &target.domain, ns::DISCO_ITEMS).await {
        let jids: Vec<String> = items
            .elements()
            .filter(|i| i.name == "item")
            .filter_map(|i| i.attr("jid").map(str::to_owned))
            .take(MAX_SERVICES)
            .collect();
        for jid in jids {
            // (one slow service costs its check, not the run)
            let asked = disco(&mut conn, &jid, ns::DISCO_INFO);
            if let Ok(Ok(info)) = tokio::time::timeout(SERVICE_WAIT, asked).await {
                found.items.push(info);
            }
        }
    }
    // (a service such as upload may be the server itself)
    found.services = found.items.iter().chain(&found.server).cloned().collect();
    found.private_storage = private_get(&mut conn).await;
    conn.close().await;
    Ok(found)
}

/// Whether a private XML get of the account's own is answered with a
/// result.
async fn private_get(conn: &mut Conn) -> bool {
    let id = format!("private-{:08x}", rand::random::<u32>());
    let iq = Element::new("iq", ns::CLIENT)
        .with_attr("type", "get")
        .with_attr("id", id.clone())
        .with_child(
            Element::new("query", ns::PRIVATE)
                .with_child(Element::new("probe", "urn:longlink:compliance")),
        );
    if conn
        .send(&String::from_utf8_lossy(&iq.to_bytes(ns::CLIENT)))
        .await
        .is_err()
    {
        return false;
    }
    conn.until(|el| el.name == "iq" && el.attr("id") == Some(&id))
        .await
        .is_ok_and(|answer| {
            answer.attr("type") == Some("result") && answer.child("query", ns::PRIVATE).is_some()
        })
}

/// The `<query/>` of a disco get to `to`, or why there is none.
async fn disco(conn: &mut Conn, to: &str, namespace: &str) -> Result<Element, String> {
    let id = format!("disco-{:08x}", rand::random::<u32>());
    let iq = Element::new("iq", ns::CLIENT)
        .with_attr("type", "get")
        .with_attr("to", to)
        .with_attr("id", id.clone())
        .with_child(Element::new("query", namespace));
    conn.send(&String::from_utf8_lossy(&iq.to_bytes(ns::CLIENT)))
        .await?;
    let answer = conn
        .until(|el| el.name == "iq" && el.attr("id") == Some(&id))
        .await?;
    answer
        .child("query", namespace)
        .filter(|_| answer.attr("type") == Some("result"))
        .cloned()
        .ok_or_else(|| format!("{to} answered {:?}", answer.attr("type")))
}

fn has_feature(info: &Element, var: &str) -> bool {
    info.elements()
        .any(|f| f.name == "feature" && f.attr("var") == Some(var))
}

fn has_identity(info: &Element, category: &str, kind: &str) -> bool {
    info.elements().any(|i| {
        i.name == "identity" && i.attr("category") == Some(category) && i.attr("type") == Some(kind)
    })
}

fn check(found: &Found, how: Look) -> Result<(), String> {
    let ok = match how {
        Look::StreamFeature(name, namespace) => found
            .stream_features
            .as_ref()
            .is_some_and(|f| f.child(name, namespace).is_some()),
        Look::ServerFeature(var) => found.server.as_ref().is_some_and(|i| has_feature(i, var)),
        Look::AccountFeature(var) => found.account.as_ref().is_some_and(|i| has_feature(i, var)),
        Look::AccountIdentity(c, t) => found
            .account
            .as_ref()
            .is_some_and(|i| has_identity(i, c, t)),
        Look::ServiceFeature(var) => found.services.iter().any(|i| has_feature(i, var)),
        Look::ServerIdentity(c, t) => found.server.as_ref().is_some_and(|i| has_identity(i, c, t)),
        Look::GroupChatFeature(var) => found.items.iter().any(|i| {
            has_identity(i, "conference", "text")
                && has_feature(i, "http://jabber.org/protocol/muc")
                && has_feature(i, var)
        }),
        Look::PrivateStorageAnswers => found.private_storage,
    };
    ok.then_some(()).ok_or_else(|| match how {
        Look::StreamFeature(name, namespace) => format!("no <{name} xmlns='{namespace}'/> feature"),
        Look::ServerFeature(var) => format!("the server's disco#info lacks {var}"),
        Look::AccountFeature(var) => format!("the account's disco#info lacks {var}"),
        Look::AccountIdentity(c, t) => format!("the account has no {c}/{t} identity"),
        Look::ServiceFeature(var) => format!("no service in disco#items offers {var}"),
        Look::ServerIdentity(c, t) => format!("the server has no {c}/{t} identity"),
        Look::GroupChatFeature(var) => format!("no conference/text service offers {var}"),
        Look::PrivateStorageAnswers => "a private XML get was not answered with a result".into(),
    })
}

//! The session task: owns the current connection, the outbox and the
//! stream-management state, and keeps the session alive across network
//! loss (reconnect with jittered exponential backoff, resume when the
//! server still holds the session, else log in again and resend what it
//! never acknowledged).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::SendStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use xmpp_stream::element::Element;
use xmpp_stream::framer::{FrameEvent, Framer};
use xmpp_stream::{ns, stream};

use crate::event::{self, Event, MessageState};
use crate::negotiation::{Negotiation, dial};
use crate::sm::{Outgoing, Seen, SmClient};
use crate::{ClientError, ConnectOptions, Pending, Shared};

/// Id prefix of the IQ that enables carbons (its answer is not an event).
const CARBONS_ID: &str = "carbons-";
/// Id prefix of the roster get a new session sends (its items become
/// roster-push events).
const ROSTER_ID: &str = "roster-";

/// Messages kept while offline; beyond that sends fail.
pub const MAX_OUTBOX: usize = 10_000;

/// What the [`crate::Client`] handle asks of the session task.
pub(crate) enum Command {
    /// A stanza (tracked until the server acknowledges it).
    Stanza(Outgoing),
    /// Available presence: sent, and sent again after a new login.
    Presence(Bytes),
    /// XEP-0352 client state: kept, and sent again after a new login.
    Active(bool),
    /// Close the stream cleanly, then stop.
    Close(oneshot::Sender<()>),
    /// Drop the connection without a goodbye, then stop.
    Abort,
}

/// From the reader task of one connection.
enum Inbound {
    Element(Element),
    End(String),
}

/// A new connection, negotiated up to resumption or binding.
pub(crate) struct Attached {
    conn: quinn::Connection,
    nego: Negotiation,
    /// `h` of `<resumed/>`, or None if a new session was bound.
    pub(crate) resumed: Option<u32>,
    /// The bound full JID of a new session.
    pub(crate) jid: Option<String>,
}

/// A reconnection in progress (it owns what it needs: the session task
/// keeps serving the app meanwhile).
type Connecting = Pin<Box<dyn Future<Output = Result<Attached, ClientError>> + Send>>;

/// One live connection.
/// How long a client whose writes the server stopped waits for the
/// server's reason (see `read_last_words`).
const LAST_WORDS: Duration = Duration::from_secs(2);

struct Live {
    conn: quinn::Connection,
    send: SendStream,
    inbound: mpsc::Receiver<Inbound>,
}

impl Live {
    fn start(conn: quinn::Connection, nego: Negotiation) -> Self {
        let (tx, inbound) = mpsc::channel(256);
        let Negotiation { send, recv, framer } = nego;
        tokio::spawn(read_loop(recv, framer, tx));
        Self {
            conn,
            send,
            inbound,
        }
    }
}

/// The session task (see the module docs).
pub(crate) struct Driver {
    pub(crate) opts: ConnectOptions,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) domain: String,
    pub(crate) username: String,
    /// Resource to ask for again after a new login.
    pub(crate) resource: Option<String>,
    live: Option<Live>,
    sm: SmClient,
    seen: Seen,
    outbox: VecDeque<Outgoing>,
    presence: Option<Bytes>,
    /// The app changed its presence while offline: send it on reconnecting,
    /// even if the session resumes.
    presence_unsent: bool,
    /// XEP-0352 state the app set.
    active: bool,
    events: mpsc::Sender<Event>,
    pending: Pending,
    shared: Arc<Shared>,
    /// When an unanswered `<r/>` means the connection is dead.
    ack_deadline: Option<Instant>,
    /// Next reconnection attempt and how many failed before it.
    retry: Option<(Instant, u32)>,
    /// The reconnection under way and its attempt number.
    connecting: Option<(Connecting, u32)>,
    finished: bool,
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        opts: ConnectOptions,
        endpoint: quinn::Endpoint,
        domain: String,
        username: String,
        resource: Option<String>,
        events: mpsc::Sender<Event>,
        pending: Pending,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            opts,
            endpoint,
            domain,
            username,
            resource,
            live: None,
            sm: SmClient::default(),
            seen: Seen::default(),
            outbox: VecDeque::new(),
            presence: None,
            presence_unsent: false,
            active: true,
            events,
            pending,
            shared,
            ack_deadline: None,
            retry: None,
            connecting: None,
            finished: false,
        }
    }

    /// Takes over a negotiated connection: `resumed` is the server's `h` if
    /// `<resume/>` succeeded, otherwise the session was just bound.
    pub(crate) async fn attach(&mut self, attached: Attached, previous: Option<(String, u32)>) {
        let Attached {
            conn,
            nego,
            resumed,
            ..
        } = attached;
        self.live = Some(Live::start(conn, nego));
        match (resumed, previous) {
            (Some(h), Some((id, inbound))) => {
                // Resumed from the options of `connect`: continue those counters.
                self.sm.enabling();
                self.sm.enabled(Some(id));
                for _ in 0..inbound {
                    self.sm.received();
                }
                let _ = self.sm.resumed(h);
            }
            _ => self.new_session().await,
        }
        self.publish();
    }

    /// What a freshly bound session asks for: stream management, carbons,
    /// and the roster if the app wanted it (its items arrive as roster
    /// pushes, as they may have changed meanwhile).
    async fn new_session(&mut self) {
        self.enable_sm().await;
        if self
            .shared
            .roster_wanted
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            let get = Element::new("iq", ns::CLIENT)
                .with_attr("type", "get")
                .with_attr("id", format!("{ROSTER_ID}{}", crate::new_id()))
                .with_child(Element::new("query", ns::ROSTER));
            let bytes = Bytes::from(get.to_bytes(ns::CLIENT));
            self.send(Outgoing { bytes, id: None }).await;
        }
        if self.opts.carbons {
            let enable = Element::new("iq", ns::CLIENT)
                .with_attr("type", "set")
                .with_attr("id", format!("{CARBONS_ID}{}", crate::new_id()))
                .with_child(Element::new("enable", ns::CARBONS));
            let bytes = Bytes::from(enable.to_bytes(ns::CLIENT));
            self.send(Outgoing { bytes, id: None }).await;
        }
    }

    async fn enable_sm(&mut self) {
        if !self.opts.stream_management {
            return;
        }
        let max = self.opts.resume_max_secs.to_string();
        let mut attrs = vec![("resume", "true")];
        if self.opts.resume_max_secs > 0 {
            attrs.push(("max", &max));
        }
        let enable = stream::sm_element("enable", &attrs);
        if self.write_raw(&enable).await {
            self.sm.enabling();
        }
    }

    /// Runs until the session ends.
    pub(crate) async fn run(mut self, mut cmds: mpsc::Receiver<Command>) {
        loop {
            if self.finished {
                let _ = self.events.send(Event::Disconnected).await;
                return;
            }
            self.request_ack().await;
            let ack_deadline = self.ack_deadline;
            let retry = self.retry;
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    None | Some(Command::Abort) => {
                        if let Some(live) = self.live.take() {
                            live.conn.close(0u32.into(), b"");
                        }
                        return;
                    }
                    Some(Command::Close(done)) => {
                        self.close().await;
                        let _ = done.send(());
                        return;
                    }
                    Some(Command::Stanza(out)) => self.send(out).await,
                    Some(Command::Presence(p)) => {
                        // kept for every new login; sent now only if connected
                        self.presence = Some(p.clone());
                        self.presence_unsent = self.live.is_none();
                        if self.live.is_some() {
                            self.send(Outgoing { bytes: p, id: None }).await;
                        }
                    }
                    Some(Command::Active(active)) => {
                        self.active = active;
                        self.send_client_state().await;
                    }
                },
                inbound = next_inbound(&mut self.live) => match inbound {
                    Inbound::Element(el) => self.element(el).await,
                    Inbound::End(reason) => self.lost(reason).await,
                },
                _ = sleep_until(ack_deadline), if ack_deadline.is_some() && self.live.is_some() => {
                    self.lost("no acknowledgement from the server in time".into()).await;
                }
                _ = sleep_until(retry.map(|r| r.0)), if retry.is_some() => self.start_connecting(),
                attached = next_attached(&mut self.connecting) => self.connected(attached).await,
            }
        }
    }

    /// Publishes what [`crate::Client::resumption`] reports.
    fn publish(&self) {
        *self
            .shared
            .resumption
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = self.sm.resumption();
    }

    async fn event(&mut self, ev: Event) {
        let _ = self.events.send(ev).await;
    }

    async fn state(&mut self, id: Option<String>, state: MessageState) {
        if !self.opts.message_states {
            return;
        }
        if let Some(id) = id {
            self.event(Event::MessageState { id, state }).await;
        }
    }

    /// Writes bytes that are not stanzas; false (and the connection is
    /// treated as lost) if that failed.
    async fn write_raw(&mut self, bytes: &[u8]) -> bool {
        let Some(live) = &mut self.live else {
            return false;
        };
        match live.send.write_all(bytes).await {
            Ok(()) => true,
            Err(e) => {
                // The server stopped reading (STOP_SENDING): it has usually
                // said why in a stream error that is still on its way.
                let stopped = matches!(e, quinn::WriteError::Stopped(_));
                if !(stopped && self.read_last_words().await) {
                    self.lost(format!("write: {e}")).await;
                }
                false
            }
        }
    }

    /// Reads what the server sent before it stopped reading, for up to
    /// [`LAST_WORDS`]; true if that ended or moved the session (a stream
    /// error), false if nothing did.
    async fn read_last_words(&mut self) -> bool {
        let deadline = Instant::now() + LAST_WORDS;
        loop {
            let Some(live) = &mut self.live else {
                return true;
            };
            match tokio::time::timeout_at(deadline, live.inbound.recv()).await {
                Ok(Some(Inbound::Element(el))) => {
                    // (boxed: handling it may write, which may end up here)
                    Box::pin(self.element(el)).await;
                    if self.finished || self.live.is_none() {
                        return true;
                    }
                }
                _ => return false,
            }
        }
    }

    /// Sends a stanza now, or keeps it in the outbox until connected.
    async fn send(&mut self, out: Outgoing) {
        if self.live.is_none() {
            if self.outbox.len() >= MAX_OUTBOX {
                self.state(out.id, MessageState::Failed("outbox full".into()))
                    .await;
                return;
            }
            let id = out.id.clone();
            self.outbox.push_back(out);
            self.state(id, MessageState::Queued).await;
            return;
        }
        if self.write_raw(&out.bytes.clone()).await {
            let id = out.id.clone();
            self.sm.written(out);
            self.state(id, MessageState::Sent).await;
        } else {
            self.outbox.push_front(out);
        }
    }

    async fn send_client_state(&mut self) {
        let name = if self.active { "active" } else { "inactive" };
        let el = Element::new(name, ns::CSI).to_bytes(ns::CLIENT);
        self.write_raw(&el).await;
    }

    async fn request_ack(&mut self) {
        if self.live.is_some() && self.sm.want_ack() {
            let r = stream::sm_element("r", &[]);
            if self.write_raw(&r).await {
                self.ack_deadline = Some(Instant::now() + self.opts.ack_timeout);
            }
        }
    }

    async fn element(&mut self, el: Element) {
        if el.ns == ns::SM {
            return self.sm_element(el).await;
        }
        if el.ns == ns::STREAMS && el.name == "error" {
            let condition = event::stream_error_condition(&el);
            self.event(Event::StreamError(condition.clone())).await;
            // A CM going down, a stream the server gave up on, a client found
            // too slow: the session may go on (resumed). Other errors are final.
            let transient = matches!(
                condition.as_str(),
                "system-shutdown"
                    | "connection-timeout"
                    | "resource-constraint"
                    | "reset"
                    | "internal-server-error"
                    | "undefined-condition"
            );
            if transient {
                self.lost(condition).await;
            } else {
                self.finished = true;
                self.live = None;
            }
            return;
        }
        if el.ns != ns::CLIENT {
            return;
        }
        self.sm.received();
        self.publish();
        let own = self.opts.jid.clone();
        if el.name == "message"
            && let Some(result) = el.child("result", ns::MAM)
            && el.attr("from").is_none_or(|f| f == own)
        {
            // a page of an archive query the app waits for
            let mut history = self
                .shared
                .history
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(page) = result.attr("queryid").and_then(|q| history.get_mut(q))
                && let Some(m) = crate::im::archived(result)
            {
                page.push(m);
            }
            return;
        }
        if el.name == "iq"
            && event::roster_push(&el, Some(&own)).is_some()
            && let Some(id) = el.attr("id")
        {
            let ack = Element::new("iq", ns::CLIENT)
                .with_attr("type", "result")
                .with_attr("id", id);
            let bytes = Bytes::from(ack.to_bytes(ns::CLIENT));
            self.send(Outgoing { bytes, id: None }).await;
        }
        if el.name == "message" {
            if let Some(r) = el.child("received", ns::RECEIPTS) {
                let id = r.attr("id").map(str::to_owned);
                return self.state(id, MessageState::Delivered).await;
            }
            let from = el.attr("from").unwrap_or_default().to_owned();
            if let Some(id) = el.attr("id")
                && !self.seen.first_time(&from, id)
            {
                tracing::debug!(from, id, "duplicate message dropped");
                self.shared
                    .duplicates
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            let wants_receipt = el.child("request", ns::RECEIPTS).is_some()
                && el.attr("type") != Some("error")
                && el.child("body", ns::CLIENT).is_some();
            if wants_receipt
                && self.opts.receipts
                && let Some(id) = el.attr("id")
            {
                let receipt = Element::new("message", ns::CLIENT)
                    .with_attr("to", from.clone())
                    .with_attr("id", crate::new_id())
                    .with_child(Element::new("received", ns::RECEIPTS).with_attr("id", id));
                let bytes = Bytes::from(receipt.to_bytes(ns::CLIENT));
                self.send(Outgoing { bytes, id: None }).await;
            }
        }
        if el.name == "iq" && el.attr("id").is_some_and(|id| id.starts_with(CARBONS_ID)) {
            return; // the answer to enabling carbons
        }
        if el.name == "iq" && el.attr("id").is_some_and(|id| id.starts_with(ROSTER_ID)) {
            let items: Vec<_> = el
                .child("query", ns::ROSTER)
                .map(|q| {
                    q.elements()
                        .filter_map(crate::im::RosterItem::parse)
                        .collect()
                })
                .unwrap_or_default();
            for item in items {
                self.event(Event::RosterPush(item)).await;
            }
            return;
        }
        if let Some(ev) = event::classify(el, &self.pending, Some(&own)) {
            self.event(ev).await;
        }
    }

    async fn sm_element(&mut self, el: Element) {
        match el.name.as_str() {
            "r" => {
                let h = self.sm.inbound().to_string();
                self.write_raw(&stream::sm_element("a", &[("h", &h)])).await;
            }
            "a" => {
                let Some(h) = el.attr("h").and_then(|h| h.parse().ok()) else {
                    return;
                };
                match self.sm.acked(h) {
                    Ok(acked) => {
                        if !self.sm.ack_outstanding() {
                            self.ack_deadline = None;
                        }
                        for out in acked {
                            self.state(out.id, MessageState::Acknowledged).await;
                        }
                    }
                    Err(_) => tracing::warn!(h, "server acknowledged more than was sent"),
                }
            }
            "enabled" => {
                self.sm.enabled(el.attr("id").map(str::to_owned));
                self.publish();
            }
            "failed" => {
                tracing::info!("server refused stream management");
                self.sm.refused();
                self.publish();
            }
            _ => {}
        }
    }

    /// The connection is gone: reconnect (after a short random delay) or end.
    async fn lost(&mut self, reason: String) {
        let Some(live) = self.live.take() else {
            return;
        };
        live.conn.close(0u32.into(), b"");
        self.ack_deadline = None;
        tracing::info!(reason, "connection lost");
        self.event(Event::ConnectionLost(reason)).await;
        if self.opts.reconnect {
            self.retry = Some((Instant::now() + backoff(0), 0));
        } else {
            self.finished = true;
        }
    }

    fn start_connecting(&mut self) {
        let Some((_, attempt)) = self.retry.take() else {
            return;
        };
        let attempt_fut = negotiate(
            self.endpoint.clone(),
            self.opts.clone(),
            self.domain.clone(),
            self.username.clone(),
            self.sm.resumption(),
            self.resource.clone(),
        );
        let timeout = self.opts.timeout;
        let fut = async move {
            tokio::time::timeout(timeout, attempt_fut)
                .await
                .unwrap_or(Err(ClientError::Timeout))
        };
        self.connecting = Some((Box::pin(fut), attempt));
    }

    async fn connected(&mut self, (result, attempt): (Result<Attached, ClientError>, u32)) {
        match result {
            Ok(attached) => {
                let resumed = attached.resumed.is_some();
                self.adopt(attached).await;
                tracing::info!(resumed, attempt, "reconnected");
                self.event(Event::Reconnected { resumed }).await;
            }
            Err(e @ (ClientError::Auth(_) | ClientError::Config(_) | ClientError::Tls(_))) => {
                tracing::warn!(error = %e, "cannot reconnect");
                self.event(Event::StreamError(e.to_string())).await;
                self.finished = true;
            }
            Err(e) => {
                tracing::debug!(error = %e, attempt, "reconnect failed");
                self.retry = Some((Instant::now() + backoff(attempt + 1), attempt + 1));
            }
        }
    }

    /// Takes over a reconnected stream and sends what is owed on it.
    async fn adopt(&mut self, attached: Attached) {
        let Attached {
            conn,
            nego,
            resumed,
            jid,
        } = attached;
        let resend = match resumed {
            Some(h) => {
                let (acked, rest) = self.sm.resumed(h);
                for out in acked {
                    self.state(out.id, MessageState::Acknowledged).await;
                }
                rest
            }
            None => {
                if let Some((_, res)) = jid.as_deref().and_then(|j| j.split_once('/')) {
                    self.resource = Some(res.to_owned());
                }
                self.sm.restart()
            }
        };
        self.live = Some(Live::start(conn, nego));
        if resumed.is_none() {
            // a resumed session keeps its carbons; a new one asks again
            self.new_session().await;
        }
        if !self.active {
            // a new CM knows nothing of it, resumed or not
            self.send_client_state().await;
        }
        // a new session needs its presence; a resumed one only if it changed
        if (resumed.is_none() || self.presence_unsent)
            && let Some(p) = self.presence.clone()
        {
            self.presence_unsent = false;
            self.send(Outgoing { bytes: p, id: None }).await;
        }
        let owed: Vec<_> = resend.into_iter().chain(self.outbox.drain(..)).collect();
        for out in owed {
            self.send(out).await;
        }
        self.publish();
    }

    async fn close(&mut self) {
        // What never reached the server will not now.
        let unsent: Vec<Outgoing> = self.outbox.drain(..).collect();
        let unacked = if self.live.is_none() {
            self.sm.restart()
        } else {
            Vec::new()
        };
        for out in unsent.into_iter().chain(unacked) {
            self.state(out.id, MessageState::Failed("session closed".into()))
                .await;
        }
        // XEP-0198 §4: acknowledge what arrived, so the server keeps nothing.
        if self.sm.tracking() {
            let h = self.sm.inbound().to_string();
            if !self.write_raw(&stream::sm_element("a", &[("h", &h)])).await {
                return;
            }
        }
        if !self.write_raw(stream::STREAM_CLOSE).await {
            return;
        }
        let Some(mut live) = self.live.take() else {
            return;
        };
        let _ = live.send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(i) = live.inbound.recv().await {
                if matches!(i, Inbound::End(_)) {
                    break;
                }
            }
        })
        .await;
        live.conn.close(0u32.into(), b"bye");
    }
}

/// Reconnection delay: the first attempt at once (a phone that just lost
/// its connection wants it back), then jittered exponential backoff,
/// 0.5–1 × min(200 ms × 2^(attempt-1), 30 s), so a fleet that lost one CM
/// does not come back in one wave.
fn backoff(attempt: u32) -> Duration {
    if attempt == 0 {
        return Duration::ZERO;
    }
    let base = Duration::from_millis(200).saturating_mul(1 << (attempt - 1).min(8));
    let cap = base.min(Duration::from_secs(30));
    cap.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Dials, authenticates, then resumes `resumption` if the server offers
/// stream management, or binds `resource`.
pub(crate) async fn negotiate(
    endpoint: quinn::Endpoint,
    opts: ConnectOptions,
    domain: String,
    username: String,
    resumption: Option<(String, u32)>,
    resource: Option<String>,
) -> Result<Attached, ClientError> {
    let (conn, mut nego) = dial(
        &endpoint,
        opts.server,
        &domain,
        &username,
        &opts.password,
        opts.mechanism,
    )
    .await?;
    let features = nego.element().await?;
    let mut resumed = None;
    if let Some((id, h)) = resumption
        && features.child("sm", ns::SM).is_some()
    {
        resumed = nego.resume(&id, h).await?;
    }
    let jid = match resumed {
        Some(_) => None,
        None => Some(nego.bind(&features, resource.as_deref()).await?),
    };
    Ok(Attached {
        conn,
        nego,
        resumed,
        jid,
    })
}

async fn next_attached(
    connecting: &mut Option<(Connecting, u32)>,
) -> (Result<Attached, ClientError>, u32) {
    match connecting {
        Some((fut, attempt)) => {
            let result = fut.await;
            let attempt = *attempt;
            *connecting = None;
            (result, attempt)
        }
        None => std::future::pending().await,
    }
}

async fn next_inbound(live: &mut Option<Live>) -> Inbound {
    match live {
        Some(l) => l
            .inbound
            .recv()
            .await
            .unwrap_or_else(|| Inbound::End("reader ended".into())),
        None => std::future::pending().await,
    }
}

async fn read_loop(mut recv: quinn::RecvStream, mut framer: Framer, tx: mpsc::Sender<Inbound>) {
    let reason = 'outer: loop {
        loop {
            match framer.next_event() {
                Ok(Some(FrameEvent::Element(raw))) => {
                    let Ok(el) = Element::parse_in_stream(&raw) else {
                        continue;
                    };
                    if tx.send(Inbound::Element(el)).await.is_err() {
                        return;
                    }
                }
                Ok(Some(FrameEvent::Close)) => break 'outer "server closed the stream".to_owned(),
                Ok(Some(FrameEvent::Open(_))) => {}
                Ok(None) => break,
                Err(e) => break 'outer format!("malformed data from the server: {e}"),
            }
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(c)) => framer.push(&c.bytes),
            Ok(None) => break "stream ended".to_owned(),
            Err(e) => break e.to_string(),
        }
    };
    let _ = tx.send(Inbound::End(reason)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        assert_eq!(backoff(0), Duration::ZERO);
        for attempt in 1..20 {
            let b = backoff(attempt);
            let cap = Duration::from_millis(200)
                .saturating_mul(1 << (attempt - 1).min(8))
                .min(Duration::from_secs(30));
            assert!(b >= cap / 2 && b <= cap, "{attempt}: {b:?}");
        }
    }
}

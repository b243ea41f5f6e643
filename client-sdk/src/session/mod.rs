//! The client session as a sans-IO state machine: everything the SDK
//! decides between the app and the server, with no sockets and no clock.
//!
//! In: the app's commands, elements from the server, the connection coming
//! up or going down, writes that failed, and the current time. Out
//! ([`Session::poll_output`]): bytes to write, connections to open or close,
//! events for the app, answers to its requests, and the end of the session;
//! [`Session::poll_timeout`] says when to call [`Session::handle_timeout`]
//! next (acknowledgement timeout, reconnection backoff, unanswered IQs, the
//! wait for the server's last words, the rooms' self-pings). Ids, backoff
//! and self-ping jitter come from the RNG given to [`Session::new`].
//!
//! What it owns: the outbox (what the app sends while offline), XEP-0198
//! state (`crate::sm`), the IQs waiting for answers (`requests`), duplicate
//! suppression (`dedup`), the presence and client state to restore after a
//! new login, the rooms the app joined (`rooms`: told apart from contacts,
//! joined again after a new login, or when an XEP-0410 self-ping finds the
//! app out of one), and the reconnection schedule (`reconnect`).

mod dedup;
mod requests;
mod rooms;
#[cfg(test)]
mod tests;

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use rand::rngs::StdRng;
use xmpp_stream::element::Element;
use xmpp_stream::pacing::Backoff;
use xmpp_stream::{ns, stream};

use crate::connection::Inbound;
use crate::event::{self, Event, IqResponse, MessageState};
use crate::im::{self, HistoryPage, HistoryQuery, RosterItem};
use crate::sm::{Outgoing, SmClient};
use crate::{ClientError, ConnectOptions};
use dedup::DuplicateFilter;
pub use requests::RequestId;
pub(crate) use requests::same_jid;
use requests::{
    ArchiveId, HistoryResults, IQ_TIMEOUT, MAX_HISTORY_RESULTS, PendingIqs, Responder, Waiter,
};
use rooms::Rooms;

/// Reconnection after a lost connection: the first attempt at once (a phone
/// that just lost its connection wants it back), then jittered exponential
/// backoff, 0.5–1 × min(200 ms × 2^(attempt-1), 30 s), so a fleet that lost
/// one CM does not come back in one wave.
pub(crate) const RECONNECT: Backoff =
    Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
/// Stanzas kept while offline; beyond that sends fail.
pub(crate) const MAX_OUTBOX: usize = 10_000;
/// How long a clean close waits for the server to end its stream too.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How long a client whose writes the server stopped (QUIC STOP_SENDING)
/// waits for the server's reason (a stream error usually on its way)
/// before counting the connection as lost.
pub(crate) const LAST_WORDS: Duration = Duration::from_secs(2);

/// Stream errors after which the session may go on (resumed, or logged in
/// again): a CM going down, a stream the server gave up on, a client found
/// too slow. Any other stream error ends the session.
const TRANSIENT_STREAM_ERRORS: &[&str] = &[
    "system-shutdown",
    "connection-timeout",
    "resource-constraint",
    "reset",
    "internal-server-error",
    "undefined-condition",
];

/// The SASL condition that asks the client to try again later (RFC 6120
/// §6.5.12); every other SASL failure is final.
const TEMPORARY_AUTH_FAILURE: &str = "temporary-auth-failure";

/// What the session needs of [`ConnectOptions`].
#[derive(Clone, Debug)]
pub(crate) struct SessionConfig {
    /// The account's bare JID, normalized as the server writes it.
    pub(crate) jid: String,
    /// The resource to ask for at a new login (until one is bound).
    pub(crate) resource: Option<String>,
    /// Enable XEP-0198 at each new login.
    pub(crate) stream_management: bool,
    /// Enable carbons at each new login.
    pub(crate) carbons: bool,
    /// The resumption time to ask for (0: the server's).
    pub(crate) resume_max_secs: u32,
    /// Reconnect after losing the connection (else the session ends).
    pub(crate) reconnect: bool,
    /// An `<r/>` unanswered this long means the connection is dead.
    pub(crate) ack_timeout: Duration,
    /// Answer receipt requests.
    pub(crate) receipts: bool,
    /// Report sent messages' progress as events.
    pub(crate) message_states: bool,
    /// The session the first connection tried to resume (SM id, our `h`).
    pub(crate) previous_session: Option<(String, u32)>,
    /// The personal eventing nodes the app wants (its capabilities).
    pub(crate) notify: Vec<String>,
    /// Self-ping each joined room when it was silent this long (XEP-0410;
    /// `None`: only after a resumption and when the app asks), within
    /// [`rooms::MIN_ROOM_PING_INTERVAL`]..=[`rooms::MAX_ROOM_PING_INTERVAL`].
    pub(crate) room_ping_interval: Option<Duration>,
}

impl SessionConfig {
    /// The session's part of `opts` (whose JID must be normalized).
    pub(crate) fn new(opts: &ConnectOptions) -> Self {
        Self {
            jid: opts.jid.clone(),
            resource: opts.resource.clone(),
            stream_management: opts.stream_management,
            carbons: opts.carbons,
            resume_max_secs: opts.resume_max_secs,
            reconnect: opts.reconnect,
            ack_timeout: opts.ack_timeout,
            receipts: opts.receipts,
            message_states: opts.message_states,
            previous_session: opts.previous_session.clone(),
            notify: opts.notify.clone(),
            room_ping_interval: opts
                .room_ping_interval
                .filter(|i| !i.is_zero())
                .map(|i| i.clamp(rooms::MIN_ROOM_PING_INTERVAL, rooms::MAX_ROOM_PING_INTERVAL)),
        }
    }
}

/// What the app asks that needs no answer.
#[derive(Debug)]
pub(crate) enum Command {
    /// A stanza (tracked until the server acknowledges it).
    Send(Outgoing),
    /// Available presence: sent, and sent again after a new login.
    Presence(Bytes),
    /// XEP-0352 client state: kept, and sent again on every new connection.
    Active(bool),
    /// A question; its answer comes out as [`Output::Reply`] with this id.
    Request(RequestId, Request),
    /// Leave a room (its bare JID, normalized) with this status text; the
    /// session forgets it.
    LeaveRoom {
        room: String,
        status: Option<String>,
    },
    /// Self-ping every joined room now (XEP-0410); a room that lost the
    /// app is joined again.
    CheckRooms,
    /// End the stream cleanly, then the session.
    Close,
    /// Drop the connection without a goodbye (a resumable session waits at
    /// the server), and end the session.
    Abort,
}

/// What the app asks that has an answer ([`Answer`]).
#[derive(Debug)]
pub(crate) enum Request {
    /// An IQ (the session sets its id): answered by its result or error.
    Iq(Element),
    /// The roster; from now on every new login fetches it again and
    /// reports its items as roster pushes.
    Roster,
    /// A page of the archive.
    History(HistoryQuery),
    /// Join a room (its bare JID, normalized) as `nick`; kept, and joined
    /// again after every new login.
    JoinRoom {
        room: String,
        nick: String,
        password: Option<String>,
        /// The most history messages wanted.
        history: Option<u32>,
    },
    /// A new nick in a joined room.
    ChangeNick { room: String, nick: String },
    /// A page of a room's archive.
    RoomHistory { room: String, query: HistoryQuery },
}

/// The answer to a [`Request`] (the variant of the same name).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Answer {
    /// The IQ's result or error.
    Iq(IqResponse),
    /// The page, its messages oldest first.
    History(HistoryPage),
    /// The room's answer to the join.
    RoomJoined(crate::muc::RoomJoined),
    /// The nick the room gave.
    NickChanged(String),
    /// A page of a room's archive.
    RoomHistory(HistoryPage<crate::muc::RoomMessage>),
}

/// What the session reports to the handle without a request (see
/// [`Session::update_snapshot`]): [`crate::Client::resumption`] and
/// [`crate::Client::duplicates_dropped`] read it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// The SM id and our `h`, if the session can be resumed.
    pub(crate) resumption: Option<(String, u32)>,
    /// Messages dropped because their sender and id were seen before.
    pub(crate) duplicates_dropped: u64,
}

/// How a new connection was negotiated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Negotiated {
    /// `h` of `<resumed/>`, or None if a new session was bound.
    pub(crate) resumed: Option<u32>,
    /// The bound full JID of a new session.
    pub(crate) jid: Option<String>,
    /// Logged in with SASL2 (XEP-0388).
    pub(crate) sasl2: bool,
    /// Stream management was enabled with a Bind2 binding: the
    /// `<enabled/>`'s id (None: not resumable).
    pub(crate) sm_enabled: Option<Option<String>>,
    /// Carbons were enabled with a Bind2 binding.
    pub(crate) carbons_enabled: bool,
}

/// What the session decided; carried out in order by the driver.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Output {
    /// Write these bytes on the current connection (what is not a stanza,
    /// and stanzas stream management keeps until acknowledged).
    Transmit(Bytes),
    /// Write this stanza on the current connection. Nothing else keeps it
    /// (stream management does not track it): if the write fails, hand it
    /// back to [`Session::on_write_failed`], which queues it again.
    TransmitStanza(Outgoing),
    /// Open a connection and negotiate it: resume `resumption` if the
    /// server still holds it, else log in and bind `resource`. Report with
    /// [`Session::on_connected`] or [`Session::on_connect_failed`].
    Connect {
        /// The SM id and our `h`, if the session can be resumed.
        resumption: Option<(String, u32)>,
        /// The resource to bind at a new login.
        resource: Option<String>,
    },
    /// Our stream is closed: finish the sending direction.
    FinishSending,
    /// Close the current connection (`clean`: after a closed stream).
    CloseConnection { clean: bool },
    /// Give the app this event.
    Event(Event),
    /// The answer to the app's request `id`.
    Reply {
        /// The request's id.
        id: RequestId,
        /// Its answer, or why there is none.
        answer: Result<Answer, ClientError>,
    },
    /// The session is over: nothing more comes out.
    Ended,
}

/// Where the connection stands.
#[derive(Debug)]
enum Link {
    /// None; attempt number `attempt` is due at `retry_at`.
    Down { retry_at: Instant, attempt: u32 },
    /// An attempt (this number) is under way.
    Connecting { attempt: u32 },
    /// Connected and negotiated.
    Up {
        /// An `<r/>` unanswered by then means the connection is dead.
        ack_deadline: Option<Instant>,
        /// A write failed: nothing more is written; the connection counts
        /// as lost at this deadline, for this reason, unless the server's
        /// last words end it first.
        write_failed: Option<(Instant, String)>,
    },
    /// Our stream is closed; waiting for the server's end until then.
    Closing { deadline: Instant },
    /// The session is over.
    Ended,
}

/// The client session (see the module docs).
#[derive(Debug)]
pub(crate) struct Session {
    config: SessionConfig,
    link: Link,
    /// A connection was up before (the next one is a reconnection).
    connected_before: bool,
    /// The resource to ask for at a new login.
    resource: Option<String>,
    sm: SmClient,
    seen: DuplicateFilter,
    duplicates: u64,
    outbox: VecDeque<Outgoing>,
    presence: Option<Bytes>,
    /// The app changed its presence while offline: send it on
    /// reconnecting, even if the session resumes.
    presence_unsent: bool,
    /// XEP-0352 state the app set.
    active: bool,
    /// The app asked for the roster: a new login asks again, so roster
    /// pushes keep coming.
    roster_wanted: bool,
    /// The rooms the app joined.
    rooms: Rooms,
    iqs: PendingIqs,
    rng: StdRng,
    ids_issued: u64,
    outputs: VecDeque<Output>,
}

impl Session {
    /// A session whose first connection is being negotiated (report it with
    /// [`Self::on_connected`]). `rng` makes its ids and backoff jitter.
    pub(crate) fn new(config: SessionConfig, rng: StdRng) -> Self {
        let sm = match config.previous_session.clone() {
            Some((id, h)) => SmClient::saved(id, h),
            None => SmClient::default(),
        };
        Self {
            resource: config.resource.clone(),
            config,
            link: Link::Connecting { attempt: 0 },
            connected_before: false,
            sm,
            seen: DuplicateFilter::default(),
            duplicates: 0,
            outbox: VecDeque::new(),
            presence: None,
            presence_unsent: false,
            active: true,
            roster_wanted: false,
            rooms: Rooms::default(),
            iqs: PendingIqs::default(),
            rng,
            ids_issued: 0,
            outputs: VecDeque::new(),
        }
    }

    /// The next thing to carry out.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Self::handle_timeout`] is due next.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let link = match &self.link {
            Link::Up {
                ack_deadline,
                write_failed,
            } => earliest(*ack_deadline, write_failed.as_ref().map(|(at, _)| *at)),
            Link::Down { retry_at, .. } => Some(*retry_at),
            Link::Closing { deadline } => Some(*deadline),
            Link::Connecting { .. } | Link::Ended => None,
        };
        // (self-pings wait while the connection takes no writes: a
        // resumption checks every room anyway, a new login joins them)
        let pings = if self.writable() {
            self.rooms.next_ping()
        } else {
            None
        };
        earliest(
            earliest(link, self.iqs.next_deadline()),
            earliest(self.rooms.next_deadline(self.writable()), pings),
        )
    }

    /// Brings `snapshot` up to date; true if anything in it changed. (It
    /// allocates only when the SM id changed.)
    pub(crate) fn update_snapshot(&self, snapshot: &mut Snapshot) -> bool {
        let mut changed = false;
        match (&mut snapshot.resumption, self.sm.resumable()) {
            (Some((id, h)), Some((current_id, current_h))) if id.as_str() == current_id => {
                changed |= *h != current_h;
                *h = current_h;
            }
            (None, None) => {}
            (slot, current) => {
                *slot = current.map(|(id, h)| (id.to_owned(), h));
                changed = true;
            }
        }
        changed |= snapshot.duplicates_dropped != self.duplicates;
        snapshot.duplicates_dropped = self.duplicates;
        changed
    }

    /// Time passed: whatever is due at `now` happens.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        match &self.link {
            Link::Up {
                ack_deadline: Some(at),
                ..
            } if *at <= now => {
                self.lost("no acknowledgement from the server in time".into());
            }
            Link::Up {
                write_failed: Some((at, reason)),
                ..
            } if *at <= now => {
                let reason = reason.clone();
                self.lost(reason);
            }
            Link::Down { retry_at, attempt } if *retry_at <= now => {
                let attempt = *attempt;
                self.link = Link::Connecting { attempt };
                self.outputs.push_back(Output::Connect {
                    resumption: self.sm.resumption(),
                    resource: self.resource.clone(),
                });
            }
            Link::Closing { deadline } if *deadline <= now => {
                self.outputs
                    .push_back(Output::CloseConnection { clean: true });
                self.end();
            }
            _ => {}
        }
        for waiter in self.iqs.expire(now) {
            if let Some(id) = waiter.request() {
                self.reply(id, Err(ClientError::Timeout));
            }
            if let Waiter::RoomPing { room, id } = waiter {
                self.room_ping_answered(now, &room, &id, None);
            }
        }
        self.expire_rooms(now);
        self.ping_due_rooms(now);
        self.request_ack(now);
    }

    /// What the app asks.
    pub(crate) fn command(&mut self, now: Instant, command: Command) {
        if matches!(self.link, Link::Closing { .. } | Link::Ended) {
            match command {
                Command::Request(id, _) => self.reply(id, Err(ClientError::Closed)),
                // no more waiting for the server's end (the handle may be
                // gone: nobody else would end the wait before CLOSE_WAIT)
                Command::Abort if matches!(self.link, Link::Closing { .. }) => {
                    self.outputs
                        .push_back(Output::CloseConnection { clean: true });
                    self.end();
                }
                _ => {}
            }
            return;
        }
        match command {
            Command::Send(out) => {
                self.send(out);
            }
            Command::Presence(p) => {
                // kept for every new login; sent now only if connected
                self.presence = Some(p.clone());
                let up = matches!(self.link, Link::Up { .. });
                self.presence_unsent = !up;
                if up {
                    self.send(Outgoing { bytes: p, id: None });
                }
            }
            Command::Active(active) => {
                self.active = active;
                self.send_client_state();
            }
            Command::Request(id, request) => self.request(now, id, request),
            Command::LeaveRoom { room, status } => self.leave_room(&room, status.as_deref()),
            Command::CheckRooms => self.check_rooms(now),
            Command::Close => self.close(now),
            Command::Abort => {
                self.outputs
                    .push_back(Output::CloseConnection { clean: false });
                self.end();
            }
        }
        self.request_ack(now);
    }

    /// A connection attempt succeeded (the first one too): take it over
    /// and send what is owed on it.
    pub(crate) fn on_connected(&mut self, now: Instant, negotiated: Negotiated) {
        let Link::Connecting { attempt } = self.link else {
            return;
        };
        let Negotiated {
            resumed,
            jid,
            sm_enabled,
            carbons_enabled,
            ..
        } = negotiated;
        let resend = match resumed {
            Some(h) => {
                let (acked, rest) = self.sm.resumed(h);
                for out in acked {
                    self.rooms.acknowledged(&out.bytes);
                    self.state(out.id, MessageState::Acknowledged);
                }
                rest
            }
            None => {
                if let Some((_, resource)) = jid.as_deref().and_then(|j| j.split_once('/')) {
                    self.resource = Some(resource.to_owned());
                }
                self.sm.restart()
            }
        };
        self.link = Link::Up {
            ack_deadline: None,
            write_failed: None,
        };
        if resumed.is_none() {
            // a resumed session keeps its carbons and roster pushes
            self.new_login(now, sm_enabled, carbons_enabled);
        }
        if !self.active {
            // a new CM knows nothing of it, resumed or not
            self.send_client_state();
        }
        // A resumed stream gets what the server did not acknowledge first,
        // in its order (the server expects those stanzas right after
        // `<resumed/>`); a new session starts with its presence.
        let (first, after): (Vec<_>, Vec<_>) = match resumed {
            Some(_) => (resend, Vec::new()),
            None => (Vec::new(), resend),
        };
        // a new session is in no room: each is joined again below, so
        // the joins written before are not sent again
        let stale_joins = match resumed {
            Some(_) => Vec::new(),
            None => self.rooms_after_new_login(now),
        };
        for out in first {
            self.send(out);
        }
        // a new session needs its presence; a resumed one only if it changed
        if (resumed.is_none() || self.presence_unsent)
            && let Some(p) = self.presence.clone()
        {
            self.presence_unsent = false;
            self.send(Outgoing { bytes: p, id: None });
        }
        // joins before what the app sent to the rooms meanwhile
        self.send_pending_joins(now);
        let owed: Vec<_> = after
            .into_iter()
            .chain(self.outbox.drain(..))
            .filter(|out| !stale_joins.contains(&out.bytes))
            .collect();
        for out in owed {
            self.send(out);
        }
        if resumed.is_some() {
            // the server may have lost the app's occupants meanwhile (a
            // core restart forgets them): make sure of each room, spread
            // over a moment
            self.rooms_after_resumption(now);
        }
        if self.connected_before {
            let resumed = resumed.is_some();
            tracing::info!(resumed, attempt, "reconnected");
            self.event(Event::Reconnected { resumed });
        }
        self.connected_before = true;
        self.request_ack(now);
    }

    /// A connection attempt failed. Refused credentials, bad options and
    /// TLS failures end the session; anything else, `temporary-auth-failure`
    /// included (RFC 6120 §6.5.12: a CM answers it while its core is away),
    /// is retried with the reconnection backoff.
    pub(crate) fn on_connect_failed(&mut self, now: Instant, error: ClientError) {
        let Link::Connecting { attempt } = self.link else {
            return;
        };
        let is_final = match &error {
            ClientError::Auth(condition) => condition != TEMPORARY_AUTH_FAILURE,
            ClientError::Config(_) | ClientError::Tls(_) => true,
            _ => false,
        };
        if is_final {
            tracing::warn!(%error, "cannot reconnect");
            self.event(Event::StreamError(error.to_string()));
            self.end();
        } else {
            tracing::debug!(%error, attempt, "reconnect failed");
            self.schedule_retry(now, attempt + 1);
        }
    }

    /// The server's stream (or the connection) ended.
    pub(crate) fn on_stream_end(&mut self, reason: String) {
        match &self.link {
            Link::Up {
                write_failed: Some((_, why)),
                ..
            } => {
                let why = why.clone();
                self.lost(why);
            }
            Link::Up { .. } => self.lost(reason),
            Link::Closing { .. } => {
                self.outputs
                    .push_back(Output::CloseConnection { clean: true });
                self.end();
            }
            _ => {}
        }
    }

    /// A write on the current connection failed; `stopped` if the server
    /// stopped reading (it has usually said why, in a stream error still on
    /// its way: wait [`LAST_WORDS`] for it). `unwritten` is the stanza of
    /// the failed [`Output::TransmitStanza`], if it was one: it and the
    /// stanzas not yet handed out go back to the front of the outbox.
    pub(crate) fn on_write_failed(
        &mut self,
        now: Instant,
        reason: &str,
        stopped: bool,
        unwritten: Option<Outgoing>,
    ) {
        self.take_back_unwritten(unwritten);
        match &mut self.link {
            Link::Up {
                write_failed: write_failed @ None,
                ..
            } => {
                let reason = format!("write: {reason}");
                if stopped {
                    *write_failed = Some((now + LAST_WORDS, reason));
                } else {
                    self.lost(reason);
                }
            }
            Link::Closing { .. } => {
                self.outputs
                    .push_back(Output::CloseConnection { clean: false });
                self.end();
            }
            _ => {}
        }
    }

    /// Puts the stanzas nothing else keeps that a broken connection did not
    /// take — `unwritten` and the [`Output::TransmitStanza`]s still queued —
    /// back at the front of the outbox, in order, reported `Queued` (their
    /// `Sent`, not handed out yet, is dropped). Tracked stanzas come back
    /// from stream management on the next connection. While closing they
    /// fail instead.
    fn take_back_unwritten(&mut self, unwritten: Option<Outgoing>) {
        let queued = |o: &Output| matches!(o, Output::TransmitStanza(_));
        if unwritten.is_none() && !self.outputs.iter().any(queued) {
            return;
        }
        let mut back: Vec<Outgoing> = unwritten.into_iter().collect();
        let mut back_ids: HashSet<String> = back.iter().filter_map(|o| o.id.clone()).collect();
        for output in std::mem::take(&mut self.outputs) {
            match output {
                Output::TransmitStanza(out) => {
                    back_ids.extend(out.id.clone());
                    back.push(out);
                }
                // (`send` reports it after the stanza's transmit)
                Output::Event(Event::MessageState {
                    id,
                    state: MessageState::Sent,
                }) if back_ids.contains(&id) => {}
                other => self.outputs.push_back(other),
            }
        }
        if back.is_empty() {
            return;
        }
        if matches!(self.link, Link::Closing { .. } | Link::Ended) {
            for out in back {
                self.state(out.id, MessageState::Failed("session closed".into()));
            }
            return;
        }
        let ids: Vec<Option<String>> = back.iter().map(|out| out.id.clone()).collect();
        for out in back.into_iter().rev() {
            self.outbox.push_front(out);
        }
        for id in ids {
            self.state(id, MessageState::Queued);
        }
        // (it held at most MAX_OUTBOX before the last connection came up)
        while self.outbox.len() > MAX_OUTBOX {
            if let Some(out) = self.outbox.pop_back() {
                self.state(out.id, MessageState::Failed("outbox full".into()));
            }
        }
    }

    /// What the connection's reader read.
    pub(crate) fn on_inbound(&mut self, now: Instant, inbound: Inbound) {
        match inbound {
            Inbound::Element(el) => self.on_element(now, el),
            Inbound::Unreadable { stanza, error } => self.on_unreadable(now, stanza, &error),
            Inbound::End(reason) => self.on_stream_end(reason),
        }
    }

    /// An element from the server the SDK cannot parse: dropped, but a
    /// stanza counts for XEP-0198 like any other (the server counted it as
    /// sent; were it not acknowledged, the server would send it again on
    /// every resumption and its ledger would never drain).
    fn on_unreadable(&mut self, now: Instant, stanza: bool, error: &str) {
        if !matches!(self.link, Link::Up { .. }) {
            return;
        }
        tracing::warn!(
            stanza,
            error,
            "dropped an element from the server that does not parse"
        );
        if stanza {
            self.sm.received();
        }
        self.request_ack(now);
    }

    /// An element from the server.
    pub(crate) fn on_element(&mut self, now: Instant, el: Element) {
        if !matches!(self.link, Link::Up { .. }) {
            return; // closing: the server's goodbye traffic is not for the app
        }
        if el.ns == ns::SM {
            self.sm_element(&el);
        } else if el.ns == ns::STREAMS && el.name == "error" {
            self.stream_error(&el);
        } else if el.ns == ns::CLIENT {
            self.stanza(now, el);
        }
        self.request_ack(now);
    }

    fn writable(&self) -> bool {
        matches!(
            self.link,
            Link::Up {
                write_failed: None,
                ..
            }
        )
    }

    fn event(&mut self, ev: Event) {
        self.outputs.push_back(Output::Event(ev));
    }

    fn reply(&mut self, id: RequestId, answer: Result<Answer, ClientError>) {
        self.outputs.push_back(Output::Reply { id, answer });
    }

    /// Reports a sent message's progress, if the app follows it.
    fn state(&mut self, id: Option<String>, state: MessageState) {
        if !self.config.message_states {
            return;
        }
        if let Some(id) = id {
            self.event(Event::MessageState { id, state });
        }
    }

    /// A fresh id for a stanza the session makes.
    fn new_id(&mut self) -> String {
        self.ids_issued += 1;
        format!("lls{:x}-{:08x}", self.ids_issued, self.rng.r#gen::<u32>())
    }

    /// Writes bytes that are not stanzas, if the connection takes writes.
    fn write_raw(&mut self, bytes: Vec<u8>) -> bool {
        let writable = self.writable();
        if writable {
            self.outputs.push_back(Output::Transmit(Bytes::from(bytes)));
        }
        writable
    }

    /// Sends a stanza now, or keeps it in the outbox until connected; false
    /// if the outbox is full (it is dropped).
    fn send(&mut self, out: Outgoing) -> bool {
        if !self.writable() {
            if self.outbox.len() >= MAX_OUTBOX {
                self.state(out.id, MessageState::Failed("outbox full".into()));
                return false;
            }
            let id = out.id.clone();
            self.outbox.push_back(out);
            self.state(id, MessageState::Queued);
            return true;
        }
        let id = out.id.clone();
        if self.sm.tracking() {
            // stream management keeps it, to send again if need be
            self.outputs.push_back(Output::Transmit(out.bytes.clone()));
            self.sm.written(out);
        } else {
            self.outputs.push_back(Output::TransmitStanza(out));
        }
        self.state(id, MessageState::Sent);
        true
    }

    /// Sends an IQ (its id set to `id`) and waits for its answer.
    fn send_iq(
        &mut self,
        now: Instant,
        mut iq: Element,
        id: String,
        waiter: Waiter,
    ) -> Result<(), ClientError> {
        iq.set_attr("id", id.clone());
        let responder = Responder::of(iq.attr("to"), &self.config.jid);
        self.iqs
            .insert(id.clone(), waiter, responder, now + IQ_TIMEOUT)
            .map_err(|_| ClientError::Busy("too many requests waiting for answers".into()))?;
        let bytes = Bytes::from(iq.to_bytes(ns::CLIENT));
        if !self.send(Outgoing { bytes, id: None }) {
            self.iqs.cancel(&id);
            return Err(ClientError::Busy("the outbox is full".into()));
        }
        Ok(())
    }

    fn request(&mut self, now: Instant, id: RequestId, request: Request) {
        let sent = match request {
            Request::Iq(iq) => {
                let iq_id = self.new_id();
                self.send_iq(now, iq, iq_id, Waiter::App(id))
            }
            Request::Roster => {
                self.roster_wanted = true;
                let iq_id = self.new_id();
                self.send_iq(now, roster_get(), iq_id, Waiter::App(id))
            }
            Request::History(mut query) => {
                // no more than a page keeps (a server that sends more
                // anyway gets an incomplete page: see HistoryResults)
                query.max = query.max.map(|max| max.min(MAX_HISTORY_RESULTS));
                let backward = query.latest || query.before.is_some();
                // the results name their query by `queryid`: the IQ's id
                let iq_id = self.new_id();
                let iq = Element::new("iq", ns::CLIENT)
                    .with_attr("type", "set")
                    .with_child(im::history_query(&query, &iq_id));
                let waiter = Waiter::History {
                    request: id,
                    results: HistoryResults::new(backward),
                };
                self.send_iq(now, iq, iq_id, waiter)
            }
            Request::RoomHistory { room, mut query } => {
                query.max = query.max.map(|max| max.min(MAX_HISTORY_RESULTS));
                let backward = query.latest || query.before.is_some();
                let iq_id = self.new_id();
                let iq = Element::new("iq", ns::CLIENT)
                    .with_attr("type", "set")
                    .with_attr("to", room.clone())
                    .with_child(im::history_query(&query, &iq_id));
                let waiter = Waiter::RoomHistory {
                    request: id,
                    room,
                    results: HistoryResults::new(backward),
                };
                self.send_iq(now, iq, iq_id, waiter)
            }
            Request::JoinRoom {
                room,
                nick,
                password,
                history,
            } => {
                self.join_room(now, id, room, nick, password, history);
                Ok(())
            }
            Request::ChangeNick { room, nick } => {
                self.change_nick(now, id, &room, nick);
                Ok(())
            }
        };
        if let Err(e) = sent {
            self.reply(id, Err(e));
        }
    }

    fn send_client_state(&mut self) {
        let name = if self.active { "active" } else { "inactive" };
        self.write_raw(Element::new(name, ns::CSI).to_bytes(ns::CLIENT));
    }

    /// Asks for an acknowledgement of what was written, if one is due.
    fn request_ack(&mut self, now: Instant) {
        if self.writable()
            && self.sm.want_ack()
            && self.write_raw(stream::sm_element("r", &[]))
            && let Link::Up { ack_deadline, .. } = &mut self.link
        {
            *ack_deadline = Some(now + self.config.ack_timeout);
        }
    }

    /// What a freshly bound session asks for: stream management, the
    /// roster if the app wanted it (its items arrive as roster pushes, as
    /// they may have changed meanwhile), and carbons.
    /// With Bind2 (SASL2), stream management (`sm_enabled`: the id of
    /// the `<enabled/>`) and carbons may already be on.
    fn new_login(&mut self, now: Instant, sm_enabled: Option<Option<String>>, carbons_on: bool) {
        if let Some(id) = sm_enabled {
            self.sm.enabling();
            self.sm.enabled(id);
        } else if self.config.stream_management {
            let max = self.config.resume_max_secs.to_string();
            let mut attrs = vec![("resume", "true")];
            if self.config.resume_max_secs > 0 {
                attrs.push(("max", &max));
            }
            if self.write_raw(stream::sm_element("enable", &attrs)) {
                self.sm.enabling();
            }
        }
        // (neither can fail: the table and the outbox are empty or nearly)
        if self.roster_wanted {
            let id = self.new_id();
            let _ = self.send_iq(now, roster_get(), id, Waiter::RosterRefresh);
        }
        if self.config.carbons && !carbons_on {
            let enable = Element::new("iq", ns::CLIENT)
                .with_attr("type", "set")
                .with_child(Element::new("enable", ns::CARBONS));
            let id = self.new_id();
            let _ = self.send_iq(now, enable, id, Waiter::Carbons);
        }
    }

    fn sm_element(&mut self, el: &Element) {
        match el.name.as_str() {
            "r" => {
                let h = self.sm.inbound().to_string();
                self.write_raw(stream::sm_element("a", &[("h", &h)]));
            }
            "a" => {
                let Some(h) = el.attr("h").and_then(|h| h.parse().ok()) else {
                    return;
                };
                match self.sm.acked(h) {
                    Ok(acked) => {
                        if !self.sm.ack_outstanding()
                            && let Link::Up { ack_deadline, .. } = &mut self.link
                        {
                            *ack_deadline = None;
                        }
                        for out in acked {
                            self.rooms.acknowledged(&out.bytes);
                            self.state(out.id, MessageState::Acknowledged);
                        }
                    }
                    Err(_) => tracing::warn!(h, "server acknowledged more than was sent"),
                }
            }
            "enabled" => self.sm.enabled(el.attr("id").map(str::to_owned)),
            "failed" => {
                tracing::info!("server refused stream management");
                self.sm.refused();
            }
            _ => {}
        }
    }

    fn stream_error(&mut self, el: &Element) {
        let condition = event::stream_error_condition(el);
        self.event(Event::StreamError(condition.clone()));
        if TRANSIENT_STREAM_ERRORS.contains(&condition.as_str()) {
            self.lost(condition);
        } else {
            self.outputs
                .push_back(Output::CloseConnection { clean: false });
            self.end();
        }
    }

    /// A stanza from the server: counted, then answered, dropped, matched
    /// to a waiting IQ, or given to the app.
    fn stanza(&mut self, now: Instant, el: Element) {
        self.sm.received();
        let own = self.config.jid.as_str();
        if el.name == "message"
            && let Some(result) = el.child("result", ns::MAM)
        {
            let from = el.attr("from");
            let query_id = result.attr("queryid");
            if from.is_none_or(|f| f == own) {
                // a result of an archive query the app waits for
                if let Some(query_id) = query_id {
                    self.iqs.collect(query_id, im::archived(result, own));
                }
                return;
            }
            // one of a room's archive, from the room asked
            if let Some(query_id) = query_id
                && self.iqs.collect_room(query_id, from, own, result)
            {
                return;
            }
        }
        if el.name == "iq"
            && event::roster_push(&el, Some(own)).is_some()
            && let Some(id) = el.attr("id")
        {
            let ack = Element::new("iq", ns::CLIENT)
                .with_attr("type", "result")
                .with_attr("id", id);
            let bytes = Bytes::from(ack.to_bytes(ns::CLIENT));
            self.send(Outgoing { bytes, id: None });
        }
        if el.name == "message" && !self.message_for_app(&el) {
            return;
        }
        if let Some(reply) = crate::pep::disco_answer(&el, &self.config.notify) {
            // (what the capabilities in its presence stand for, XEP-0115)
            let bytes = Bytes::from(reply.to_bytes(ns::CLIENT));
            self.send(Outgoing { bytes, id: None });
            return;
        }
        if el.name == "iq"
            && matches!(el.attr("type"), Some("result" | "error"))
            && let Some(waiter) = el
                .attr("id")
                .and_then(|id| self.iqs.answer(id, el.attr("from"), &self.config.jid))
        {
            return self.answered(now, waiter, el);
        }
        if el.name == "iq"
            && matches!(el.attr("type"), Some("result" | "error"))
            && el
                .attr("id")
                .is_some_and(|id| self.rooms.take_abandoned(id))
        {
            // (the answer to a self-ping a resumption superseded)
            return;
        }
        if self.room_stanza(now, &el) {
            return;
        }
        let own = self.config.jid.as_str();
        if let Some(ev) = event::classify(el, Some(own)) {
            self.event(ev);
        }
    }

    /// Handles what a message means to the session (a receipt, a
    /// duplicate, a receipt to send); false if the app does not see it.
    fn message_for_app(&mut self, el: &Element) -> bool {
        if let Some(r) = el.child("received", ns::RECEIPTS) {
            let id = r.attr("id").map(str::to_owned);
            self.state(id, MessageState::Delivered);
            return false;
        }
        let from = el.attr("from").unwrap_or_default();
        if let Some(id) = el.attr("id")
            && !self.seen.first_time(from, id)
        {
            tracing::debug!(from, id, "duplicate message dropped");
            self.duplicates += 1;
            return false;
        }
        // (not in a room: XEP-0184 §5.3)
        let wants_receipt = el.child("request", ns::RECEIPTS).is_some()
            && !matches!(el.attr("type"), Some("error" | "groupchat"))
            && el.child("body", ns::CLIENT).is_some();
        if wants_receipt
            && self.config.receipts
            && let Some(id) = el.attr("id")
        {
            let receipt = Element::new("message", ns::CLIENT)
                .with_attr("to", from)
                .with_attr("id", self.new_id())
                .with_child(Element::new("received", ns::RECEIPTS).with_attr("id", id));
            let bytes = Bytes::from(receipt.to_bytes(ns::CLIENT));
            self.send(Outgoing { bytes, id: None });
        }
        true
    }

    /// The answer to an IQ the session waited for.
    fn answered(&mut self, now: Instant, waiter: Waiter, iq: Element) {
        match waiter {
            Waiter::App(id) => self.reply(id, Ok(Answer::Iq(event::iq_response(iq)))),
            Waiter::History { request, results } => {
                let answer = history_answer(&iq, results).map(Answer::History);
                self.reply(request, answer);
            }
            Waiter::RoomHistory {
                request, results, ..
            } => {
                let answer = history_answer(&iq, results).map(Answer::RoomHistory);
                self.reply(request, answer);
            }
            Waiter::RosterRefresh => {
                let items: Vec<_> = iq
                    .child("query", ns::ROSTER)
                    .map(|q| q.elements().filter_map(RosterItem::parse).collect())
                    .unwrap_or_default();
                for item in items {
                    self.event(Event::RosterPush(item));
                }
            }
            Waiter::Carbons => {}
            Waiter::RoomPing { room, id } => self.room_ping_answered(now, &room, &id, Some(&iq)),
        }
    }

    /// The connection is gone: reconnect (at once) or end.
    fn lost(&mut self, reason: String) {
        if !matches!(self.link, Link::Up { .. }) {
            return;
        }
        self.outputs
            .push_back(Output::CloseConnection { clean: false });
        tracing::info!(reason, "connection lost");
        self.event(Event::ConnectionLost(reason));
        if self.config.reconnect {
            self.connect_now();
        } else {
            self.end();
        }
    }

    /// The first attempt after a loss goes at once.
    fn connect_now(&mut self) {
        self.link = Link::Connecting { attempt: 0 };
        self.outputs.push_back(Output::Connect {
            resumption: self.sm.resumption(),
            resource: self.resource.clone(),
        });
    }

    fn schedule_retry(&mut self, now: Instant, attempt: u32) {
        let retry_at = now + RECONNECT.delay(attempt, self.rng.r#gen());
        self.link = Link::Down { retry_at, attempt };
    }

    /// Ends the stream cleanly: what never reached the server fails, what
    /// arrived is acknowledged (XEP-0198 §4, so the server keeps nothing),
    /// `</stream:stream>` goes out, and the server has [`CLOSE_WAIT`] to end
    /// its stream too.
    fn close(&mut self, now: Instant) {
        let unsent: Vec<Outgoing> = self.outbox.drain(..).collect();
        // (on a connection still taking writes they went out before our
        // end of stream, which the server reads after them)
        let unacked = if self.writable() {
            Vec::new()
        } else {
            self.sm.restart()
        };
        for out in unsent.into_iter().chain(unacked) {
            self.state(out.id, MessageState::Failed("session closed".into()));
        }
        if !self.writable() {
            self.outputs
                .push_back(Output::CloseConnection { clean: false });
            return self.end();
        }
        if self.sm.tracking() {
            let h = self.sm.inbound().to_string();
            self.write_raw(stream::sm_element("a", &[("h", &h)]));
        }
        self.write_raw(stream::STREAM_CLOSE.to_vec());
        self.outputs.push_back(Output::FinishSending);
        self.link = Link::Closing {
            deadline: now + CLOSE_WAIT,
        };
    }

    /// The session is over: waiting requests fail, the app hears of it.
    fn end(&mut self) {
        if matches!(self.link, Link::Ended) {
            return;
        }
        self.link = Link::Ended;
        for waiter in self.iqs.drain() {
            if let Some(id) = waiter.request() {
                self.reply(id, Err(ClientError::Closed));
            }
        }
        self.drop_rooms();
        self.event(Event::Disconnected);
        self.outputs.push_back(Output::Ended);
    }
}

/// The page an archive query's answer `iq` closes, or its error.
fn history_answer<T: ArchiveId>(
    iq: &Element,
    results: HistoryResults<T>,
) -> Result<HistoryPage<T>, ClientError> {
    match event::stanza_error_condition(iq) {
        Some(condition) => Err(ClientError::StanzaError(condition)),
        None if iq.attr("type") == Some("error") => {
            Err(ClientError::StanzaError("undefined-condition".into()))
        }
        None => Ok(results.into_page(iq)),
    }
}

/// The roster get (RFC 6121 §2.1.3).
fn roster_get() -> Element {
    Element::new("iq", ns::CLIENT)
        .with_attr("type", "get")
        .with_child(Element::new("query", ns::ROSTER))
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

//! The session task: the thin tokio driver of a [`Session`]. It does only
//! I/O — opens connections when the session asks, feeds it what the
//! connection reads and what the app asks, writes what it decided, sleeps
//! until its [`Session::poll_timeout`], and hands events and answers to
//! the app. Every decision is the session's.
//!
//! It reads the time from tokio's clock only ([`now`]), the clock it sleeps
//! on: under paused time (an app's tests) the two would disagree and the
//! task would spin.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use crate::ClientError;
use crate::connection::{Dialer, Inbound, Live};
use crate::event::Event;
use crate::session::{Answer, Command, Negotiated, Output, Request, RequestId, Session, Snapshot};
use crate::sm::Outgoing;

/// Where the answer to a request goes.
pub(crate) type Responder = oneshot::Sender<Result<Answer, ClientError>>;

/// What the [`crate::Client`] handle sends the session task.
pub(crate) enum ToSession {
    /// A command without an answer.
    Command(Command),
    /// A request, and where its answer goes.
    Request(Request, Responder),
}

/// A connection attempt under way (it owns what it needs: the task keeps
/// serving the app meanwhile).
type Connecting = Pin<Box<dyn Future<Output = Result<(Live, Negotiated), ClientError>> + Send>>;

/// The session task (see the module docs).
pub(crate) struct Driver {
    session: Session,
    dialer: Dialer,
    /// Gives up an attempt to connect and log in after this long.
    connect_timeout: Duration,
    live: Option<Live>,
    connecting: Option<Connecting>,
    events: mpsc::Sender<Event>,
    /// Where the handle reads the session's [`Snapshot`] (it keeps the last
    /// one after the task ended).
    snapshot: watch::Sender<Snapshot>,
    /// Requests waiting for the session's answer (as many as it has
    /// waiting: it answers or refuses each at once or in time).
    responders: HashMap<RequestId, Responder>,
    next_request: u64,
}

impl Driver {
    /// A driver for `session`, whose first connection `live` is, and
    /// where the handle reads the session's snapshot.
    pub(crate) fn new(
        session: Session,
        dialer: Dialer,
        connect_timeout: Duration,
        live: Live,
        events: mpsc::Sender<Event>,
    ) -> (Self, watch::Receiver<Snapshot>) {
        let mut first = Snapshot::default();
        session.update_snapshot(&mut first);
        let (snapshot, reader) = watch::channel(first);
        let driver = Self {
            session,
            dialer,
            connect_timeout,
            live: Some(live),
            connecting: None,
            events,
            snapshot,
            responders: HashMap::new(),
            next_request: 0,
        };
        (driver, reader)
    }

    /// Runs until the session ends.
    pub(crate) async fn run(mut self, mut from_app: mpsc::Receiver<ToSession>) {
        // false once the handle is gone (the channel would answer None at
        // once, every time)
        let mut app_connected = true;
        loop {
            if self.carry_out().await {
                return;
            }
            let deadline = self.session.poll_timeout();
            tokio::select! {
                msg = from_app.recv(), if app_connected => {
                    let command = match msg {
                        // the handle is gone: like abort
                        None => {
                            app_connected = false;
                            Command::Abort
                        }
                        Some(ToSession::Command(c)) => c,
                        Some(ToSession::Request(request, responder)) => {
                            let id = RequestId(self.next_request);
                            self.next_request += 1;
                            self.responders.insert(id, responder);
                            Command::Request(id, request)
                        }
                    };
                    self.session.command(now(), command);
                }
                inbound = next_inbound(&mut self.live) => self.session.on_inbound(now(), inbound),
                () = sleep_until(deadline) => self.session.handle_timeout(now()),
                result = next_connected(&mut self.connecting) => match result {
                    Ok((live, negotiated)) => {
                        self.live = Some(live);
                        self.session.on_connected(now(), negotiated);
                    }
                    Err(e) => self.session.on_connect_failed(now(), e),
                },
            }
        }
    }

    /// Carries out what the session decided; true once it ended. The
    /// snapshot is published first (an app that saw an event finds the
    /// snapshot at least that new) and again at the end.
    async fn carry_out(&mut self) -> bool {
        self.publish();
        let ended = self.carry_out_outputs().await;
        self.publish();
        ended
    }

    /// Hands the handle the session's snapshot, if it changed.
    fn publish(&self) {
        self.snapshot
            .send_if_modified(|snapshot| self.session.update_snapshot(snapshot));
    }

    async fn carry_out_outputs(&mut self) -> bool {
        while let Some(output) = self.session.poll_output() {
            match output {
                Output::Transmit(bytes) => match self.write(&bytes).await {
                    Ok(Written::Yes) | Ok(Written::NoConnection) => {}
                    Err(e) => self.write_failed(&e, None),
                },
                Output::TransmitStanza(out) => match self.write(&out.bytes).await {
                    Ok(Written::Yes) => {}
                    // (the session sends no stanza where there is no
                    // connection; should it, the stanza goes back to it)
                    Ok(Written::NoConnection) => {
                        self.session
                            .on_write_failed(now(), "no connection", false, Some(out));
                    }
                    Err(e) => self.write_failed(&e, Some(out)),
                },
                Output::Connect {
                    resumption,
                    resource,
                } => {
                    let attempt = self.dialer.clone().connect(resumption, resource);
                    let timeout = self.connect_timeout;
                    self.connecting = Some(Box::pin(async move {
                        tokio::time::timeout(timeout, attempt)
                            .await
                            .unwrap_or(Err(ClientError::Timeout))
                    }));
                }
                Output::FinishSending => {
                    if let Some(live) = &mut self.live {
                        let _ = live.send.finish();
                    }
                }
                Output::CloseConnection { clean } => {
                    if let Some(live) = self.live.take() {
                        let reason: &[u8] = if clean { b"bye" } else { b"" };
                        live.conn.close(0u32.into(), reason);
                    }
                }
                Output::Event(ev) => {
                    // waits while the app's queue is full: the session stops
                    // reading the server, which then holds back
                    let _ = self.events.send(ev).await;
                }
                Output::Reply { id, answer } => {
                    if let Some(responder) = self.responders.remove(&id) {
                        let _ = responder.send(answer);
                    }
                }
                Output::Ended => return true,
            }
        }
        false
    }

    /// Writes on the current connection; nothing if there is none or a
    /// write on it failed before (the session already knows of that
    /// failure).
    async fn write(&mut self, bytes: &[u8]) -> Result<Written, quinn::WriteError> {
        match &mut self.live {
            Some(live) if !live.broken => {
                let written = live.send.write_all(bytes).await;
                live.broken = written.is_err();
                written.map(|()| Written::Yes)
            }
            _ => Ok(Written::NoConnection),
        }
    }

    /// Tells the session a write failed, handing back the stanza it carried
    /// if the session keeps no copy.
    fn write_failed(&mut self, e: &quinn::WriteError, unwritten: Option<Outgoing>) {
        let stopped = matches!(e, quinn::WriteError::Stopped(_));
        self.session
            .on_write_failed(now(), &e.to_string(), stopped, unwritten);
    }
}

/// Whether [`Driver::write`] wrote.
enum Written {
    /// On the current connection.
    Yes,
    /// There is none, or a write on it failed before.
    NoConnection,
}

/// The current time on tokio's clock (the one the driver sleeps on).
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

async fn next_connected(
    connecting: &mut Option<Connecting>,
) -> Result<(Live, Negotiated), ClientError> {
    match connecting {
        Some(attempt) => {
            let result = attempt.await;
            *connecting = None;
            result
        }
        None => std::future::pending().await,
    }
}

async fn next_inbound(live: &mut Option<Live>) -> Inbound {
    match live {
        Some(live) => live.next().await,
        None => std::future::pending().await,
    }
}

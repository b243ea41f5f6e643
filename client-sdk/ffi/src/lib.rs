//! The longlink client library for apps: `client-sdk` behind a UniFFI
//! interface, from which `scripts/bindings.sh` generates Kotlin (Android),
//! Swift (iOS) and Python sources. docs/MOBILE.md tells how an app embeds
//! it.
//!
//! The interface: [`Client::connect`] logs in and returns a [`Client`];
//! events come from [`Client::next_event`] (async: a Kotlin `Flow`, a Swift
//! `AsyncStream`) or, instead, from an [`EventListener`] the app sets.
//! Sending, the roster, history, presence and push registration are async
//! methods (Kotlin `suspend`, Swift `async`, Python coroutines);
//! [`Client::network_changed`] is a plain call for the OS network callback.
//!
//! Inside: the library owns one tokio runtime (two worker threads) that
//! runs every session and every call; a call from the app's executor
//! waits on the task it started there. Cancelling the call (a coroutine
//! cancelled) does not undo what the task does.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock, Weak};

mod error;
mod types;

pub use error::LonglinkError;
pub use types::{
    ArchivedMessage, Carbon, ConnectOptions, Event, FastToken, HistoryPage, HistoryQuery, Message,
    MessageState, Presence, PushOption, RosterItem, SessionToken, Show, Subscription,
    SubscriptionRequest, Trust,
};

uniffi::setup_scaffolding!();

/// The library's runtime, made at first use.
static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// The library's runtime.
fn runtime() -> Result<&'static tokio::runtime::Runtime, LonglinkError> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("longlink")
        .enable_all()
        .build()
        .map_err(|e| LonglinkError::Internal {
            detail: format!("cannot start the runtime: {e}"),
        })?;
    // (two first calls at once: one runtime is kept, the other dropped
    // here, outside any runtime)
    Ok(RUNTIME.get_or_init(|| rt))
}

/// Runs `fut` on the library's runtime and waits for its outcome, from
/// whichever executor polls the caller.
async fn on_runtime<T, F>(fut: F) -> Result<T, LonglinkError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, LonglinkError>> + Send + 'static,
{
    runtime()?.spawn(fut).await.unwrap_or_else(|e| {
        Err(LonglinkError::Internal {
            detail: format!("the call's task failed: {e}"),
        })
    })
}

/// Receives every event of a session, in order, on a thread of the
/// library's own (one per client): hand them to the app's main thread or
/// queue, and return soon (the session waits meanwhile). An exception
/// thrown by `on_event` is logged and that event is lost; the next ones
/// still come.
#[uniffi::export(with_foreign)]
pub trait EventListener: Send + Sync {
    /// One event. The last is `Event.Disconnected`, when the session is
    /// over.
    fn on_event(&self, event: Event);
}

/// What a caught panic says.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)")
}

/// Aborts the session of a client whose listener's thread is ending
/// before the events did (when dropped unless `finished`): nobody would
/// read them, yet the session would go on acknowledging their stanzas.
struct ListenerGuard {
    /// The client (weak: the thread does not keep it alive).
    client: Weak<Client>,
    /// The event queue ended: nothing to abort.
    finished: bool,
}

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        tracing::error!("the event listener's thread ended early: aborting the session");
        let (Some(client), Some(rt)) = (self.client.upgrade(), RUNTIME.get()) else {
            return;
        };
        // (on the runtime: this may run while the thread unwinds, where
        // blocking is no option)
        rt.spawn(async move {
            if let Some(session) = client.session.write().await.take() {
                session.abort();
            }
        });
    }
}

/// Creates the account `options.jid` with `options.password` by in-band
/// registration (XEP-0077), where the server allows it; then
/// [`Client::connect`]. Fails with the server's condition (`conflict`:
/// the name is taken; `not-allowed`: registration is off).
#[uniffi::export]
pub async fn register(options: ConnectOptions) -> Result<(), LonglinkError> {
    on_runtime(async move {
        options
            .each_address(|opts| async move { client_sdk::im::register(&opts).await })
            .await
    })
    .await
}

/// A logged-in session. It keeps itself connected: when the connection is
/// lost it reconnects and resumes by itself, and what is sent meanwhile
/// waits in an outbox. Events must be read (with [`Client::next_event`]
/// or an [`EventListener`]) for the session to go on.
#[derive(uniffi::Object)]
pub struct Client {
    /// The bound full JID.
    jid: String,
    /// The session; `None` once disconnected or aborted. Calls share it,
    /// ending it waits for them.
    session: tokio::sync::RwLock<Option<client_sdk::Client>>,
    /// The event queue; `None` once an [`EventListener`] took it.
    events: tokio::sync::Mutex<Option<client_sdk::Events>>,
    /// Told when the listener's thread had the last event and released
    /// the listener.
    listener_done: std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
}

/// The name of a listener's thread.
const EVENT_THREAD: &str = "longlink-events";

/// How long [`Client::disconnect`] waits for the listener's last event.
const LISTENER_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs `$body` with the session `$c` on the library's runtime (a
/// [`LonglinkError::Closed`] once it ended); `$body` is a future of a
/// `Result` whose error converts.
macro_rules! with_session {
    ($self:ident, |$c:ident| $body:expr) => {{
        let this = Arc::clone(&$self);
        on_runtime(async move {
            let guard = this.session.read().await;
            let $c = guard.as_ref().ok_or(LonglinkError::Closed)?;
            Ok($body.await?)
        })
        .await
    }};
}

#[uniffi::export]
impl Client {
    /// Connects (QUIC; each address the server's name resolves to in
    /// turn while one is unreachable) and logs in (SCRAM-SHA-256): with
    /// SASL2 (unless `options.sasl2` is off) it resumes
    /// `options.previous_session` or binds a resource with Bind2
    /// (`tag/random`) in the same round trip; a `resource` asked for is
    /// bound afterwards, the legacy way.
    #[uniffi::constructor]
    pub async fn connect(options: ConnectOptions) -> Result<Arc<Self>, LonglinkError> {
        on_runtime(async move {
            let mut client = options.each_address(client_sdk::Client::connect).await?;
            let events = client.take_events();
            Ok(Arc::new(Self {
                jid: client.jid().to_owned(),
                session: tokio::sync::RwLock::new(Some(client)),
                events: tokio::sync::Mutex::new(Some(events)),
                listener_done: std::sync::Mutex::new(None),
            }))
        })
        .await
    }

    /// The bound full JID (`alice@example.org/phone`).
    pub fn jid(&self) -> String {
        self.jid.clone()
    }

    /// Whether `connect` logged in with SASL2 (XEP-0388: one round trip
    /// for login, binding or resumption); `false` once the session ended.
    pub fn used_sasl2(&self) -> bool {
        self.session
            .try_read()
            .ok()
            .and_then(|s| s.as_ref().map(client_sdk::Client::used_sasl2))
            .unwrap_or(false)
    }

    /// The FAST token the next login would use (save it, with
    /// [`Client::user_agent_id`], after every login); `None` once the
    /// session ended or without one.
    pub fn fast_token(&self) -> Option<FastToken> {
        let session = self.session.try_read().ok()?;
        session.as_ref()?.fast_token().map(Into::into)
    }

    /// The `<user-agent id/>` the session's FAST tokens are bound to.
    pub fn user_agent_id(&self) -> Option<String> {
        let session = self.session.try_read().ok()?;
        Some(session.as_ref()?.user_agent_id().to_owned())
    }

    /// Whether `connect` resumed `previous_session`.
    pub fn was_resumed(&self) -> bool {
        self.session
            .try_read()
            .ok()
            .and_then(|s| s.as_ref().map(client_sdk::Client::was_resumed))
            .unwrap_or(false)
    }

    /// What to resume this session with from a new process (keep it when
    /// the app goes to the background); `None` if it cannot be resumed.
    /// Its count includes the events still waiting unread: take it, then
    /// read what is waiting ([`Client::drain_events`]) before the process
    /// may die, or those are lost.
    pub fn resumption(&self) -> Option<SessionToken> {
        let session = self.session.try_read().ok()?;
        let (id, h) = session.as_ref()?.resumption()?;
        Some(SessionToken { id, h })
    }

    /// The next event; `None` once the session is over and every event was
    /// read. Cancelling the wait loses no event. Fails with
    /// [`LonglinkError::EventsTaken`] when an [`EventListener`] is set.
    pub async fn next_event(&self) -> Result<Option<Event>, LonglinkError> {
        // (polled by the app's executor directly: a channel needs no
        // runtime, and a cancelled wait then takes nothing)
        let mut events = self.events.lock().await;
        let events = events.as_mut().ok_or(LonglinkError::EventsTaken)?;
        Ok(events.next().await.map(Event::from))
    }

    /// The events waiting now, without waiting (at most
    /// [`client_sdk::EVENT_QUEUE`]): to empty the queue before saving
    /// [`Client::resumption`]. Fails with [`LonglinkError::EventsTaken`]
    /// when an [`EventListener`] is set, and with [`LonglinkError::Busy`]
    /// while a `next_event` (or another `drain_events`) call holds the
    /// queue.
    pub fn drain_events(&self) -> Result<Vec<Event>, LonglinkError> {
        let Ok(mut events) = self.events.try_lock() else {
            // (a `next_event` still waits: what it gets next would be lost
            // to an app that believed the queue empty)
            return Err(LonglinkError::Busy {
                detail: "a next_event call is waiting: end it first".into(),
            });
        };
        let events = events.as_mut().ok_or(LonglinkError::EventsTaken)?;
        let mut drained = Vec::new();
        while drained.len() < client_sdk::EVENT_QUEUE
            && let Some(event) = events.try_next()
        {
            drained.push(event.into());
        }
        Ok(drained)
    }

    /// Sends every event to `listener` from now on, on a thread of its own,
    /// instead of [`Client::next_event`]; once only. Should that thread
    /// end before the events do, the session is aborted (nothing more is
    /// acknowledged to the server unread).
    pub fn set_event_listener(
        self: Arc<Self>,
        listener: Arc<dyn EventListener>,
    ) -> Result<(), LonglinkError> {
        let rt = runtime()?;
        let mut events = self
            .events
            .try_lock()
            .ok()
            .and_then(|mut e| e.take())
            .ok_or(LonglinkError::EventsTaken)?;
        let (done, listener_done) = tokio::sync::oneshot::channel();
        let guard = ListenerGuard {
            client: Arc::downgrade(&self),
            finished: false,
        };
        std::thread::Builder::new()
            .name(EVENT_THREAD.into())
            .spawn(move || {
                // (the whole guard moves in, not only its field)
                let mut guard = guard;
                while let Some(event) = rt.block_on(events.next()) {
                    let event = Event::from(event);
                    // (a foreign exception is a panic here: UniFFI's
                    // "Callback interface failure")
                    let delivered =
                        std::panic::catch_unwind(AssertUnwindSafe(|| listener.on_event(event)));
                    if let Err(panic) = delivered {
                        tracing::error!(
                            "the event listener failed, its event is lost: {}",
                            panic_text(&*panic)
                        );
                    }
                }
                guard.finished = true;
                // (releasing a foreign listener calls into its language:
                // done before `disconnect` returns)
                drop(listener);
                let _ = done.send(());
            })
            .map_err(|e| LonglinkError::Internal {
                detail: format!("cannot start the event thread: {e}"),
            })?;
        if let Ok(mut slot) = self.listener_done.lock() {
            *slot = Some(listener_done);
        }
        Ok(())
    }

    /// The device's network changed (call it from the OS network callback:
    /// Wi-Fi to cellular, a new address): the connection moves to a new
    /// local socket (QUIC migration), with no new handshake or login.
    pub fn network_changed(&self) -> Result<(), LonglinkError> {
        let rt = runtime()?;
        let session = self.session.try_read().map_err(|_| LonglinkError::Closed)?;
        let client = session.as_ref().ok_or(LonglinkError::Closed)?;
        // (the new socket registers with the runtime's reactor)
        let _inside = rt.enter();
        Ok(client.network_changed()?)
    }

    /// Whether the app is in the foreground (XEP-0352): call with `false`
    /// when it goes to the background (the server then holds back presence
    /// updates and sends only what matters), `true` when it comes back.
    pub async fn set_active(self: Arc<Self>, active: bool) -> Result<(), LonglinkError> {
        with_session!(self, |c| c.set_active(active))
    }

    /// Sends a chat message to `to` (a bare or full JID); returns its id,
    /// which its `Event.MessageStateChanged` events name.
    pub async fn send_message(
        self: Arc<Self>,
        to: String,
        body: String,
    ) -> Result<String, LonglinkError> {
        with_session!(self, |c| c.send_message(&to, &body))
    }

    /// Sends available presence with `priority` (after login, to receive
    /// messages sent to the bare JID and contacts' presence).
    pub async fn send_presence(self: Arc<Self>, priority: i8) -> Result<(), LonglinkError> {
        with_session!(self, |c| c.send_presence(priority))
    }

    /// Sets your presence: `show`, a status text, a priority (sent again
    /// after every new login).
    pub async fn set_presence(
        self: Arc<Self>,
        show: Option<Show>,
        status: Option<String>,
        priority: i8,
    ) -> Result<(), LonglinkError> {
        with_session!(self, |c| c.set_presence(
            show.map(Into::into),
            status.as_deref(),
            priority
        ))
    }

    /// The roster (and roster changes as `Event.RosterChanged` from then on).
    pub async fn roster(self: Arc<Self>) -> Result<Vec<RosterItem>, LonglinkError> {
        let items = with_session!(self, |c| c.roster())?;
        Ok(items.into_iter().map(Into::into).collect())
    }

    /// Adds a contact, or changes its name and groups.
    pub async fn set_contact(
        self: Arc<Self>,
        jid: String,
        name: Option<String>,
        groups: Vec<String>,
    ) -> Result<(), LonglinkError> {
        with_session!(self, |c| {
            let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
            async move { c.set_contact(&jid, name.as_deref(), &groups).await }
        })
    }

    /// Removes a contact (and the subscriptions both ways).
    pub async fn remove_contact(self: Arc<Self>, jid: String) -> Result<(), LonglinkError> {
        with_session!(self, |c| c.remove_contact(&jid))
    }

    /// Asks to see `jid`'s presence.
    pub async fn subscribe(self: Arc<Self>, jid: String) -> Result<(), LonglinkError> {
        with_session!(self, |c| c.subscribe(&jid))
    }

    /// Lets `jid` see your presence (answers their request).
    pub async fn approve(self: Arc<Self>, jid: String) -> Result<(), LonglinkError> {
        with_session!(self, |c| c.approve(&jid))
    }

    /// Refuses `jid`'s request, or revokes their subscription.
    pub async fn deny(self: Arc<Self>, jid: String) -> Result<(), LonglinkError> {
        with_session!(self, |c| c.deny(&jid))
    }

    /// Stops seeing `jid`'s presence.
    pub async fn unsubscribe(self: Arc<Self>, jid: String) -> Result<(), LonglinkError> {
        with_session!(self, |c| c.unsubscribe(&jid))
    }

    /// One page of the message archive (XEP-0313), oldest first.
    pub async fn history(
        self: Arc<Self>,
        query: HistoryQuery,
    ) -> Result<HistoryPage, LonglinkError> {
        let query = client_sdk::im::HistoryQuery::from(query);
        let page = with_session!(self, |c| c.history(&query))?;
        Ok(page.into())
    }

    /// Pings the server; the round trip in milliseconds.
    pub async fn ping(self: Arc<Self>) -> Result<u64, LonglinkError> {
        let rtt = with_session!(self, |c| c.ping())?;
        Ok(u64::try_from(rtt.as_millis()).unwrap_or(u64::MAX))
    }

    /// Whether the account offers push notifications (XEP-0357).
    pub async fn push_supported(self: Arc<Self>) -> Result<bool, LonglinkError> {
        with_session!(self, |c| c.push_supported())
    }

    /// Registers this device for push notifications: with the app server
    /// `app_server` (its push service's JID), under `node` (the app
    /// server's name for this device, e.g. derived from the APNs or FCM
    /// token), with the `options` the app server needs with each
    /// notification. Registering the same node again replaces it.
    pub async fn enable_push(
        self: Arc<Self>,
        app_server: String,
        node: String,
        options: Vec<PushOption>,
    ) -> Result<(), LonglinkError> {
        with_session!(self, |c| {
            let options: Vec<(&str, &str)> = options
                .iter()
                .map(|o| (o.name.as_str(), o.value.as_str()))
                .collect();
            async move { c.enable_push(&app_server, &node, &options).await }
        })
    }

    /// Stops push notifications to `node` of `app_server`, or to every
    /// node of it (`None`): at logout, or before registering a new token.
    pub async fn disable_push(
        self: Arc<Self>,
        app_server: String,
        node: Option<String>,
    ) -> Result<(), LonglinkError> {
        with_session!(self, |c| c.disable_push(&app_server, node.as_deref()))
    }

    /// Ends the session cleanly (logout): the server keeps nothing to
    /// resume. With `next_event`, the events still waiting come until it
    /// returns `None`. An [`EventListener`] has had its last event
    /// (`Event.Disconnected`) and is released when this returns (unless
    /// that takes more than 5 s, or this is called on the listener's
    /// thread).
    pub async fn disconnect(self: Arc<Self>) -> Result<(), LonglinkError> {
        // (the listener cannot wait for itself: called from its thread,
        // polled there)
        let listener_done = match std::thread::current().name() {
            Some(EVENT_THREAD) => None,
            _ => self.listener_done.lock().ok().and_then(|mut d| d.take()),
        };
        let this = Arc::clone(&self);
        on_runtime(async move {
            if let Some(client) = this.session.write().await.take() {
                client.disconnect().await;
            }
            if let Some(done) = listener_done {
                let _ = tokio::time::timeout(LISTENER_DRAIN, done).await;
            }
            Ok(())
        })
        .await
    }

    /// Drops the connection without ending the session (as a lost network
    /// would): the server keeps it for a resume. Returns what to resume it
    /// with from a new process, if it can be.
    pub async fn abort(self: Arc<Self>) -> Result<Option<SessionToken>, LonglinkError> {
        let this = Arc::clone(&self);
        on_runtime(async move {
            let Some(client) = this.session.write().await.take() else {
                return Err(LonglinkError::Closed);
            };
            let token = client.resumption().map(|(id, h)| SessionToken { id, h });
            client.abort();
            Ok(token)
        })
        .await
    }
}

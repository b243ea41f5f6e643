//! How to connect and log in: [`ConnectOptions`] and the [`Trust`] it uses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use xmpp_sasl::Mechanism;

/// The default [`ConnectOptions::room_ping_interval`]: 10 minutes.
pub const DEFAULT_ROOM_PING_INTERVAL: Duration = Duration::from_secs(600);

/// Where the client trusts certificates from.
#[derive(Clone, Debug)]
pub enum Trust {
    /// A PEM file of CA certificates (e.g. the cluster CA).
    CaFile(PathBuf),
    /// A ready root store.
    Roots(Arc<rustls::RootCertStore>),
}

/// A FAST token (XEP-0484) the server granted: the SDK logs in with it
/// instead of the password. An app that keeps it across processes stores
/// it as a password (keychain, keystore), with its `count`, after every
/// login ([`crate::Client::fast_token`]).
#[derive(Clone, PartialEq, Eq)]
pub struct FastToken {
    /// The token.
    pub token: String,
    /// The HT mechanism it is bound to (`HT-SHA-256-EXPR`, `-NONE`).
    pub mechanism: String,
    /// When it expires, in seconds since the Unix epoch.
    pub expiry: i64,
    /// The count of its last use (each use sends one more, so a replayed
    /// login is refused).
    pub count: u64,
}

impl std::fmt::Debug for FastToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // a credential: not for logs
        f.debug_struct("FastToken")
            .field("mechanism", &self.mechanism)
            .field("expiry", &self.expiry)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

/// How to connect and log in.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// The server (CM or balancer) address.
    pub server: SocketAddr,
    /// Bare JID to log in as.
    pub jid: String,
    /// Password.
    pub password: String,
    /// Requested resource (server-generated if None).
    pub resource: Option<String>,
    /// Trusted roots.
    pub trust: Trust,
    /// Give up connecting and logging in after this long.
    pub timeout: Duration,
    /// SASL mechanism to use (SCRAM-SHA-256 unless changed).
    pub mechanism: Mechanism,
    /// Log in with SASL2 (XEP-0388), Bind2 (XEP-0386) and inline
    /// resumption where the server offers them (default on): one round
    /// trip for authentication, binding, SM enable and carbons. Off: SASL,
    /// a stream restart, then bind or resume, SM and carbons one by one.
    pub sasl2: bool,
    /// Log in again with a FAST token (XEP-0484) where the server offers
    /// FAST (default on): a password login asks for a token, later logins
    /// (the SDK's reconnections, or [`Self::fast_token`] saved by the app)
    /// use it instead of SCRAM, one round trip less; a token the server
    /// refuses is forgotten and the password used on the same stream.
    pub fast: bool,
    /// The stable id of this installation of the app (XEP-0388
    /// `<user-agent id/>`, a UUID); FAST tokens are bound to it. None: a
    /// random one per [`crate::Client`] (a saved token is then useless to
    /// the next process: apps keep theirs).
    pub user_agent_id: Option<String>,
    /// Reconnect in one round trip where possible (default on): with a
    /// FAST token usable in TLS early data and a session ticket of the
    /// server's, a reconnection's stream header and `<authenticate/>`
    /// (with the inline resumption) ride as QUIC 0-RTT data. Replays are
    /// refused by the token's count.
    pub zero_rtt: bool,
    /// A FAST token saved from an earlier session
    /// ([`crate::Client::fast_token`]), used at the first login.
    pub fast_token: Option<FastToken>,
    /// The Bind2 tag: a session bound with Bind2 gets the resource
    /// `tag/random` (default `longlink`). A [`Self::resource`] asked for
    /// is bound the legacy way instead (after SASL2, on the same stream).
    pub tag: String,
    /// Enable XEP-0198 stream management with resumption (default on).
    pub stream_management: bool,
    /// Ask for carbon copies of this account's conversations (XEP-0280).
    pub carbons: bool,
    /// Resumption time to ask for, in seconds (0: the server's default).
    pub resume_max_secs: u32,
    /// Reconnect by itself when the connection is lost (default on).
    pub reconnect: bool,
    /// An `<r/>` unanswered this long means the connection is dead.
    pub ack_timeout: Duration,
    /// Ask for and send XEP-0184 delivery receipts (default on).
    pub receipts: bool,
    /// A session to resume instead of binding a new one (SM id, our `h`).
    pub previous_session: Option<(String, u32)>,
    /// Report each sent message's progress as [`Event::MessageState`]
    /// (off by default: an app that turns it on must read its events).
    pub message_states: bool,
    /// The personal eventing nodes (XEP-0163) whose notifications the app
    /// wants, such as `urn:xmpp:avatar:metadata` or
    /// `eu.siacs.conversations.axolotl.devicelist`: announced in the
    /// session's entity capabilities; they arrive as [`crate::Event::Pep`],
    /// the newest item of each at login.
    pub notify: Vec<String>,
    /// How often the session checks that it is still in each room it
    /// joined (an XEP-0410 self-ping of its own occupant, when the room
    /// was silent that long; ±25 % jitter), and joins again a room that
    /// lost it (a core restart forgets occupants): default 10 minutes.
    /// `None` or zero turns the periodic check off; a resumed stream is
    /// checked either way, each room within 2 s (see
    /// [`crate::Client::check_rooms`]). Other values are kept between
    /// 1 second and 1 day.
    pub room_ping_interval: Option<Duration>,
}

impl ConnectOptions {
    /// Options with defaults: no resource, 10 s timeout, trust `ca.pem` in the working directory.
    pub fn new(server: SocketAddr, jid: &str, password: &str) -> Self {
        Self {
            server,
            jid: jid.to_owned(),
            password: password.to_owned(),
            resource: None,
            trust: Trust::CaFile(PathBuf::from("ca.pem")),
            timeout: Duration::from_secs(10),
            mechanism: Mechanism::ScramSha256,
            sasl2: true,
            fast: true,
            user_agent_id: None,
            fast_token: None,
            zero_rtt: true,
            tag: "longlink".into(),
            stream_management: true,
            carbons: true,
            resume_max_secs: 0,
            reconnect: true,
            ack_timeout: Duration::from_secs(20),
            receipts: true,
            previous_session: None,
            message_states: false,
            notify: Vec::new(),
            room_ping_interval: Some(DEFAULT_ROOM_PING_INTERVAL),
        }
    }

    /// Uses FAST tokens or not (see [`Self::fast`]).
    pub fn with_fast(mut self, on: bool) -> Self {
        self.fast = on;
        self
    }

    /// Uses QUIC 0-RTT or not (see [`Self::zero_rtt`]).
    pub fn with_zero_rtt(mut self, on: bool) -> Self {
        self.zero_rtt = on;
        self
    }

    /// The app installation's stable id (see [`Self::user_agent_id`]).
    pub fn with_user_agent_id(mut self, id: &str) -> Self {
        self.user_agent_id = Some(id.to_owned());
        self
    }

    /// A FAST token saved from an earlier session (needs the same
    /// [`Self::user_agent_id`]).
    pub fn with_fast_token(mut self, token: FastToken) -> Self {
        self.fast_token = Some(token);
        self
    }

    /// Checks the rooms joined this often (`None` or zero: never by
    /// itself); see [`Self::room_ping_interval`].
    pub fn with_room_ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.room_ping_interval = interval;
        self
    }

    /// Wants notifications of these personal eventing nodes (see
    /// [`Self::notify`]).
    pub fn with_notify(mut self, nodes: &[&str]) -> Self {
        self.notify = nodes.iter().map(|n| (*n).to_owned()).collect();
        self
    }

    /// Reports each sent message's progress as [`Event::MessageState`].
    pub fn with_message_states(mut self) -> Self {
        self.message_states = true;
        self
    }

    /// No carbon copies of the account's other conversations.
    pub fn without_carbons(mut self) -> Self {
        self.carbons = false;
        self
    }

    /// A plain session: no stream management, no reconnection (what a
    /// desktop client without XEP-0198 does).
    pub fn without_stream_management(mut self) -> Self {
        self.stream_management = false;
        self.reconnect = false;
        self
    }

    /// Asks for this resumption time (seconds).
    pub fn with_resume_max(mut self, secs: u32) -> Self {
        self.resume_max_secs = secs;
        self
    }

    /// Tries to resume this session (from [`crate::Client::resumption`]) first.
    pub fn with_previous_session(mut self, id: &str, h: u32) -> Self {
        self.previous_session = Some((id.to_owned(), h));
        self
    }

    /// Whether to ask for and send delivery receipts.
    pub fn with_receipts(mut self, on: bool) -> Self {
        self.receipts = on;
        self
    }

    /// Logs in with RFC 6120 SASL only, as servers without SASL2 need (a
    /// stream restart, then bind or resume).
    pub fn with_sasl1_only(mut self) -> Self {
        self.sasl2 = false;
        self
    }

    /// Uses another Bind2 tag (see [`Self::tag`]).
    pub fn with_tag(mut self, tag: &str) -> Self {
        self.tag = tag.to_owned();
        self
    }

    /// Uses another SASL mechanism.
    pub fn with_mechanism(mut self, mechanism: Mechanism) -> Self {
        self.mechanism = mechanism;
        self
    }

    /// Trusts the CA certificates in a PEM file.
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.trust = Trust::CaFile(path.into());
        self
    }

    /// Requests a resource.
    pub fn with_resource(mut self, resource: &str) -> Self {
        self.resource = Some(resource.to_owned());
        self
    }
}

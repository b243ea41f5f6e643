//! SASL authentication of client sessions relayed by the CMs.
//!
//! The mechanisms themselves are sans-IO state machines in `xmpp-sasl`; this
//! service keeps the in-progress SCRAM exchanges (bounded, with a deadline),
//! looks credentials up in storage and runs PBKDF2 for PLAIN on blocking
//! threads so routing never waits for it. Unknown users get a SCRAM exchange
//! with fake credentials, and PLAIN checks their password against such
//! credentials with the same single PBKDF2 run, so which accounts exist is
//! not revealed. Failures are throttled per account and per client address
//! ([`throttle`]): a blocked attempt is refused before any password check,
//! an attempt counts against its account and address from its start (an
//! [`Attempt`] settled when it ends, or dropped as abandoned), and the
//! throttle is asked again right before the password is checked.
//!
//! FAST (XEP-0484, [`fast`]): a successful SASL2 authentication that asks
//! for a token gets one; a token use (an HT mechanism) is checked against
//! the user agent's two stored tokens with the connection's channel
//! binding as the CM relayed it, its count recorded before the success is
//! answered (so a replayed 0-RTT flight cannot log in twice).

pub mod fast;
pub mod throttle;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cm_protocol::{FastAuth, FastTokenGrant};
use xmpp_sasl::ht::{ht_verify, parse_ht_initial};
use xmpp_sasl::{
    ChannelBindings, HtMechanism, Mechanism, ScramServer, StoredCredentials, fake_credentials,
    parse_client_first, parse_plain,
};

use xmpp_stream::pacing::TokenBucket;

use self::throttle::{AuthThrottle, Refused, Settled, ThrottleSettings};
use crate::routing::SessionAddr;
use crate::storage::Storage;

/// Most SCRAM exchanges in progress at once.
const MAX_PENDING: usize = 100_000;
/// An exchange not finished within this is forgotten.
const DEADLINE: Duration = Duration::from_secs(30);

/// What to answer the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send a challenge.
    Challenge(Vec<u8>),
    /// Authenticated as `user` (bare JID); send success with `data`.
    Success {
        /// Additional data with success.
        data: Vec<u8>,
        /// Bare JID.
        user: String,
        /// A FAST token issued with it (asked for, or a rotation).
        token: Option<FastTokenGrant>,
    },
    /// Fail with this RFC 6120 §6.5 condition.
    Failure(&'static str),
}

struct Pending {
    server: ScramServer,
    exists: bool,
    started: Instant,
    /// Its admission by the throttle, settled when the exchange ends.
    attempt: Attempt,
    /// A FAST token to issue on success.
    token: Option<fast::TokenRequest>,
}

/// An attempt admitted by the throttle ([`AuthThrottle::begin`]); settled
/// once, by [`Attempt::settle`] or, if dropped unsettled (the session left,
/// the exchange expired, the future was cancelled), as abandoned.
struct Attempt {
    throttle: Arc<Mutex<AuthThrottle>>,
    /// The normalized account.
    account: String,
    client_ip: Option<IpAddr>,
    settled: bool,
}

impl Attempt {
    /// Whether its account or address got blocked since it was admitted.
    fn blocked_now(&self) -> bool {
        let throttle = self.throttle.lock().unwrap_or_else(|e| e.into_inner());
        match throttle.check(Instant::now(), &self.account, self.client_ip) {
            Ok(()) => false,
            Err(blocked) => {
                tracing::info!(account = self.account, client_ip = ?self.client_ip, until = ?blocked.until, "authentication throttled before the check");
                true
            }
        }
    }

    /// Tells the throttle how the attempt ended.
    fn settle(mut self, how: Settled) {
        self.end(how);
    }

    fn end(&mut self, how: Settled) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        self.throttle.lock().unwrap_or_else(|e| e.into_inner()).end(
            Instant::now(),
            &self.account,
            self.client_ip,
            how,
        );
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.end(Settled::Abandoned);
    }
}

impl Settled {
    /// How an attempt that ended in `outcome` (not a challenge) settles.
    fn of(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Success { .. } => Settled::Succeeded,
            Outcome::Failure(_) => Settled::Failed,
            Outcome::Challenge(_) => Settled::Abandoned,
        }
    }
}

/// The authentication service (see the module docs).
pub struct AuthService {
    domain: String,
    storage: Storage,
    allow_plain: bool,
    fake_secret: [u8; 32],
    pending: Mutex<HashMap<SessionAddr, Pending>>,
    /// Bounds PBKDF2 runs for PLAIN (CPU-heavy) in flight at once.
    plain_slots: tokio::sync::Semaphore,
    /// In-band registration (XEP-0077) is offered.
    registration: bool,
    /// SASL2 (XEP-0388) with Bind2 is offered beside SASL.
    sasl2: bool,
    /// Registrations allowed now (a token bucket refilled over time).
    register_tokens: Mutex<TokenBucket>,
    /// Failed attempts per account and per client address.
    throttle: Arc<Mutex<AuthThrottle>>,
    /// FAST tokens, if offered.
    fast: Option<fast::FastTokens>,
}

/// Accounts created in-band per second, cluster-wide, and the burst allowed.
const REGISTRATIONS_PER_SEC: u64 = 10;
const REGISTRATION_BURST: u64 = 20;
/// Longest password accepted at registration.
const MAX_PASSWORD: usize = 1023;

/// Most PLAIN verifications computing at once; more wait their turn.
const PLAIN_SLOTS: usize = 16;

impl AuthService {
    /// A service for `domain` over `storage`.
    pub fn new(domain: &str, storage: Storage, allow_plain: bool) -> Self {
        Self {
            domain: domain.to_owned(),
            storage,
            allow_plain,
            fake_secret: rand::random(),
            pending: Mutex::new(HashMap::new()),
            plain_slots: tokio::sync::Semaphore::new(PLAIN_SLOTS),
            registration: false,
            sasl2: true,
            register_tokens: Mutex::new(TokenBucket::new(
                REGISTRATIONS_PER_SEC,
                REGISTRATION_BURST,
                Instant::now(),
            )),
            throttle: Arc::new(Mutex::new(AuthThrottle::new(ThrottleSettings::default()))),
            fast: None,
        }
    }

    /// Offers FAST tokens (XEP-0484) in SASL2.
    pub fn with_fast(mut self, tokens: fast::FastTokens) -> Self {
        self.fast = Some(tokens);
        self
    }

    /// Whether FAST tokens are offered.
    pub fn fast(&self) -> bool {
        self.sasl2 && self.fast.is_some()
    }

    /// Offers in-band registration.
    pub fn with_registration(mut self, on: bool) -> Self {
        self.registration = on;
        self
    }

    /// Offers SASL2 with Bind2 and inline stream management (default on).
    pub fn with_sasl2(mut self, on: bool) -> Self {
        self.sasl2 = on;
        self
    }

    /// Whether SASL2 is offered.
    pub fn sasl2(&self) -> bool {
        self.sasl2
    }

    /// Whether in-band registration is offered.
    pub fn registration(&self) -> bool {
        self.registration
    }

    /// Creates an account in-band (XEP-0077 §3.1); the error is a stanza
    /// condition: `not-allowed` (off), `not-acceptable` (bad name or
    /// password), `conflict` (taken), `resource-constraint` (too many
    /// registrations right now), `internal-server-error`.
    pub async fn register(&self, username: &str, password: &str) -> Result<(), &'static str> {
        if !self.registration {
            return Err("not-allowed");
        }
        let user = normalize_user(username).ok_or("not-acceptable")?;
        if password.is_empty() || password.len() > MAX_PASSWORD {
            return Err("not-acceptable");
        }
        let admitted = self
            .register_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_take(1, Instant::now());
        if !admitted {
            return Err("resource-constraint");
        }
        // PBKDF2 is CPU work: on a blocking thread, bounded like PLAIN.
        let _slot = self
            .plain_slots
            .acquire()
            .await
            .map_err(|_| "internal-server-error")?;
        let password = password.to_owned();
        let creds = tokio::task::spawn_blocking(move || {
            StoredCredentials::new(&password, StoredCredentials::DEFAULT_ITERATIONS)
        })
        .await
        .map_err(|_| "internal-server-error")?;
        match self
            .storage
            .call(move |db| db.add_user(&user, &creds))
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err("conflict"),
            Err(e) => {
                tracing::error!(error = %e, "registration failed");
                Err("internal-server-error")
            }
        }
    }

    /// Mechanism names to offer, in preference order.
    pub fn mechanisms(&self) -> Vec<String> {
        Mechanism::ALL
            .iter()
            .filter(|m| self.allow_plain || **m != Mechanism::Plain)
            .map(|m| m.name().to_owned())
            .collect()
    }

    /// The client (from `client_ip`, if the CM said) chose `mechanism`
    /// with an initial response, and said `fast` of FAST tokens.
    pub async fn start(
        &self,
        addr: SessionAddr,
        mechanism: &str,
        data: &[u8],
        client_ip: Option<IpAddr>,
        fast: &FastAuth,
    ) -> Outcome {
        if let Some(ht) = HtMechanism::from_name(mechanism) {
            return self.fast_login(ht, data, client_ip, fast).await;
        }
        let token = self.token_request(fast);
        let mech = match Mechanism::from_name(mechanism) {
            Some(Mechanism::Plain) if !self.allow_plain => {
                return Outcome::Failure("invalid-mechanism");
            }
            Some(m) => m,
            None => return Outcome::Failure("invalid-mechanism"),
        };
        match mech.scram_hash() {
            None => {
                let outcome = self.plain(data, client_ip).await;
                self.with_token(outcome, token).await
            }
            Some(hash) => {
                let first = match parse_client_first(data) {
                    Ok(f) => f,
                    Err(e) => return Outcome::Failure(e.condition()),
                };
                if first
                    .authzid
                    .as_deref()
                    .is_some_and(|a| a != self.bare(&first.username))
                {
                    return Outcome::Failure("invalid-authzid");
                }
                let Some(attempt) = self.admit(self.account(&first.username), client_ip) else {
                    return Outcome::Failure(THROTTLED);
                };
                let (creds, exists) = match self.lookup(&first.username).await {
                    Ok(Some(c)) => (c, true),
                    Ok(None) => (fake_credentials(&first.username, &self.fake_secret), false),
                    Err(()) => return Outcome::Failure("temporary-auth-failure"),
                };
                let (server, challenge) = ScramServer::start_with_credentials(hash, first, &creds);
                let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                let mut expired = Vec::new();
                if pending.len() >= MAX_PENDING {
                    expired.extend(pending.extract_if(|_, p| p.started.elapsed() >= DEADLINE));
                    if pending.len() >= MAX_PENDING {
                        drop(pending);
                        drop(expired);
                        return Outcome::Failure("temporary-auth-failure");
                    }
                }
                let replaced = pending.insert(
                    addr,
                    Pending {
                        server,
                        exists,
                        started: Instant::now(),
                        attempt,
                        token,
                    },
                );
                // the sweep's and a replaced exchange's attempts are settled
                // (dropped) after the lock is released
                drop(pending);
                drop((expired, replaced));
                Outcome::Challenge(challenge)
            }
        }
    }

    /// The client answered a challenge.
    pub async fn respond(&self, addr: SessionAddr, data: &[u8]) -> Outcome {
        let (outcome, token) = self.finish(addr, data);
        self.with_token(outcome, token).await
    }

    /// The end of a SCRAM exchange, and the token it asked for.
    fn finish(&self, addr: SessionAddr, data: &[u8]) -> (Outcome, Option<fast::TokenRequest>) {
        let Some(p) = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&addr)
        else {
            return (Outcome::Failure("malformed-request"), None);
        };
        if p.started.elapsed() > DEADLINE {
            return (Outcome::Failure("not-authorized"), None);
        }
        if p.attempt.blocked_now() {
            return (Outcome::Failure(THROTTLED), None);
        }
        let user = self.bare(p.server.username());
        let outcome = match p.server.finish(data) {
            Ok(data) if p.exists => Outcome::Success {
                data,
                user,
                token: None,
            },
            Ok(_) => Outcome::Failure("not-authorized"),
            Err(e) => Outcome::Failure(e.condition()),
        };
        p.attempt.settle(Settled::of(&outcome));
        (outcome, p.token)
    }

    /// The token a SASL2 attempt asks for, if FAST is offered and the
    /// request is usable (a user agent, an HT mechanism).
    fn token_request(&self, fast: &FastAuth) -> Option<fast::TokenRequest> {
        self.fast.as_ref()?;
        Some(fast::TokenRequest {
            client: fast::FastTokens::client(fast.user_agent.as_deref()?),
            mechanism: HtMechanism::from_name(fast.request_token.as_deref()?)?,
        })
    }

    /// A success with the token it asked for (none if storing it fails:
    /// the login stands, the client just has no token).
    async fn with_token(&self, outcome: Outcome, request: Option<fast::TokenRequest>) -> Outcome {
        match (outcome, request) {
            (Outcome::Success { data, user, .. }, Some(request)) => {
                let token = self.issue_token(&user, request).await;
                Outcome::Success { data, user, token }
            }
            (outcome, _) => outcome,
        }
    }

    /// Stores a new token for `user` (a bare JID) and returns its grant.
    async fn issue_token(&self, user: &str, request: fast::TokenRequest) -> Option<FastTokenGrant> {
        let tokens = self.fast.as_ref()?;
        let node = normalize_user(user.split('@').next()?)?;
        let (row, grant) = tokens.issue(request.mechanism, fast::unix_now(), rand::random());
        let stored = self
            .storage
            .call(move |db| db.fast_issue(&node, &request.client, &row))
            .await;
        match stored {
            Ok(crate::storage::Stored::Stored) => Some(grant),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "FAST token not stored; none issued");
                None
            }
        }
    }

    /// A FAST token use (XEP-0484 §4) with HT mechanism `mechanism`.
    async fn fast_login(
        &self,
        mechanism: HtMechanism,
        data: &[u8],
        client_ip: Option<IpAddr>,
        fast: &FastAuth,
    ) -> Outcome {
        let Some(tokens) = &self.fast else {
            return Outcome::Failure("invalid-mechanism");
        };
        let initial = match parse_ht_initial(data) {
            Ok(i) => i,
            Err(e) => return Outcome::Failure(e.condition()),
        };
        // tokens are per user agent; 0-RTT data may be a replay: only a
        // count above the last lets it in
        let Some(user_agent) = fast.user_agent.as_deref() else {
            return Outcome::Failure("not-authorized");
        };
        if fast.early && fast.count.is_none() {
            return Outcome::Failure("not-authorized");
        }
        let Some(attempt) = self.admit(self.account(&initial.authcid), client_ip) else {
            return Outcome::Failure(THROTTLED);
        };
        let client = fast::FastTokens::client(user_agent);
        let node = normalize_user(&initial.authcid);
        let rows = match node.clone() {
            Some(node) => {
                match self
                    .storage
                    .call(move |db| db.fast_tokens(&node, &client))
                    .await
                {
                    Ok(rows) => rows,
                    Err(e) => {
                        tracing::error!(error = %e, "FAST token lookup failed");
                        return Outcome::Failure("temporary-auth-failure");
                    }
                }
            }
            None => Vec::new(),
        };
        // every use costs the same two HMACs, whatever is stored
        let mut candidates: Vec<String> = rows.iter().take(2).map(|r| tokens.token(r)).collect();
        while candidates.len() < 2 {
            candidates.push(tokens.fake_token(&initial.authcid, candidates.len()));
        }
        let bindings = ChannelBindings {
            tls_exporter: fast.tls_exporter.as_ref().map(|b| b.to_vec()),
            tls_server_end_point: None,
        };
        let refs: Vec<&str> = candidates.iter().map(String::as_str).collect();
        let verified = ht_verify(mechanism, &bindings, &initial, &refs);
        let (Ok(verified), Some(node)) = (verified, node) else {
            attempt.settle(Settled::Failed);
            return Outcome::Failure("not-authorized");
        };
        let Some(row) = rows.get(verified.index) else {
            attempt.settle(Settled::Failed);
            return Outcome::Failure("not-authorized");
        };
        let now = fast::unix_now();
        match tokens.check(row, mechanism, now) {
            fast::Checked::Usable(_) => {}
            fast::Checked::WrongMechanism => {
                attempt.settle(Settled::Failed);
                return Outcome::Failure("not-authorized");
            }
            fast::Checked::Expired => {
                let node = node.clone();
                let _ = self
                    .storage
                    .call(move |db| db.fast_invalidate(&node, &client))
                    .await;
                attempt.settle(Settled::Failed);
                return Outcome::Failure("credentials-expired");
            }
        }
        if attempt.blocked_now() {
            return Outcome::Failure(THROTTLED);
        }
        // (a count beyond what storage holds is no count anyone sent in earnest)
        let count = match fast.count.map(i64::try_from).transpose() {
            Ok(count) => count,
            Err(_) => {
                attempt.settle(Settled::Failed);
                return Outcome::Failure("not-authorized");
            }
        };
        let used_row = row.clone();
        let invalidate = fast.invalidate;
        let used = {
            let node = node.clone();
            self.storage
                .call(move |db| {
                    let used = db.fast_use(&node, &client, &used_row, count)?;
                    if used && invalidate {
                        db.fast_invalidate(&node, &client)?;
                    }
                    Ok(used)
                })
                .await
        };
        match used {
            Ok(true) => {}
            Ok(false) => {
                // a count not above the last: a replay (or a client that
                // lost its count)
                tracing::info!(
                    user = node,
                    "FAST token use refused: count not above the last"
                );
                attempt.settle(Settled::Failed);
                return Outcome::Failure("not-authorized");
            }
            Err(e) => {
                tracing::error!(error = %e, "FAST token use not recorded");
                return Outcome::Failure("temporary-auth-failure");
            }
        }
        attempt.settle(Settled::Succeeded);
        let user = self.bare(&node);
        let request = match self.token_request(fast) {
            Some(asked) => Some(asked),
            None if !invalidate && tokens.rotation_due(row, now) => {
                // rotation: the same mechanism as the token in use
                Some(fast::TokenRequest { client, mechanism })
            }
            None => None,
        };
        let token = match request {
            Some(request) => self.issue_token(&user, request).await,
            None => None,
        };
        Outcome::Success {
            data: verified.responder,
            user,
            token,
        }
    }

    /// The session went away mid-exchange.
    pub fn abort(&self, addr: SessionAddr) {
        let aborted = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&addr);
        // settled as abandoned, outside the pending lock
        drop(aborted);
    }

    async fn plain(&self, data: &[u8], client_ip: Option<IpAddr>) -> Outcome {
        let plain = match parse_plain(data) {
            Ok(p) => p,
            Err(e) => return Outcome::Failure(e.condition()),
        };
        let user = self.bare(&plain.username);
        if plain.authzid.as_deref().is_some_and(|a| a != user) {
            return Outcome::Failure("invalid-authzid");
        }
        let Some(attempt) = self.admit(self.account(&plain.username), client_ip) else {
            return Outcome::Failure(THROTTLED);
        };
        let creds = match self.lookup(&plain.username).await {
            Ok(c) => c,
            Err(()) => return Outcome::Failure("temporary-auth-failure"),
        };
        let (username, password) = (plain.username, plain.password);
        let Ok(_slot) = self.plain_slots.acquire().await else {
            return Outcome::Failure("temporary-auth-failure");
        };
        // it may have waited for the slot while others failed
        if attempt.blocked_now() {
            return Outcome::Failure(THROTTLED);
        }
        let fake_secret = self.fake_secret;
        let ok = tokio::task::spawn_blocking(move || {
            verify_plain(creds.as_ref(), &username, &password, &fake_secret)
        })
        .await
        .unwrap_or(false);
        let outcome = if ok {
            Outcome::Success {
                data: Vec::new(),
                user,
                token: None,
            }
        } else {
            Outcome::Failure("not-authorized")
        };
        attempt.settle(Settled::of(&outcome));
        outcome
    }

    /// The account a username names, as the throttle counts it.
    fn account(&self, username: &str) -> String {
        normalize_user(username).unwrap_or_else(|| username.to_owned())
    }

    /// Admits an attempt for `account` from `client_ip` now, or `None` if
    /// the throttle refuses it.
    fn admit(&self, account: String, client_ip: Option<IpAddr>) -> Option<Attempt> {
        let admitted = self
            .throttle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .begin(Instant::now(), &account, client_ip);
        match admitted {
            Ok(()) => Some(Attempt {
                throttle: self.throttle.clone(),
                account,
                client_ip,
                settled: false,
            }),
            Err(refused) => {
                let until = match refused {
                    Refused::Blocked(b) => Some(b.until),
                    Refused::InFlight => None,
                };
                tracing::info!(account, ?client_ip, ?until, "authentication throttled");
                None
            }
        }
    }

    async fn lookup(&self, username: &str) -> Result<Option<StoredCredentials>, ()> {
        let Some(node) = normalize_user(username) else {
            return Ok(None);
        };
        self.storage
            .call(move |db| db.credentials(&node))
            .await
            .map_err(|e| tracing::error!(error = %e, "credential lookup failed"))
    }

    fn bare(&self, username: &str) -> String {
        format!(
            "{}@{}",
            normalize_user(username).unwrap_or_else(|| username.to_owned()),
            self.domain
        )
    }
}

/// The condition of an attempt refused by the throttle: the client may try
/// again later.
const THROTTLED: &str = "temporary-auth-failure";

/// PLAIN's password check: exactly one PBKDF2 run whether the account
/// exists or not (an unknown user's password is checked against fake
/// credentials of the default iteration count), so the time it takes does
/// not tell which accounts exist.
fn verify_plain(
    creds: Option<&StoredCredentials>,
    username: &str,
    password: &str,
    fake_secret: &[u8],
) -> bool {
    match creds {
        Some(c) => c.verify_password(password),
        None => {
            let _ = fake_credentials(username, fake_secret).verify_password(password);
            false
        }
    }
}

/// Normalizes a username as a JID local part (nodeprep via the `jid` crate).
pub fn normalize_user(username: &str) -> Option<String> {
    let jid = jid::BareJid::new(&format!("{username}@localhost")).ok()?;
    jid.node().map(|n| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn derivations(f: impl FnOnce() -> bool) -> (bool, u64) {
        let before = xmpp_sasl::derivations_on_this_thread();
        let ok = f();
        (ok, xmpp_sasl::derivations_on_this_thread() - before)
    }

    #[tokio::test]
    async fn after_its_free_failures_an_account_is_refused_unchecked_even_with_the_right_password()
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let storage =
            Storage::start(move || crate::storage::open(None, &path, 1000)).expect("storage");
        let creds = StoredCredentials::new("right", StoredCredentials::DEFAULT_ITERATIONS);
        storage
            .call(move |db| db.add_user("alice", &creds))
            .await
            .unwrap();
        let auth = AuthService::new("x", storage, true);
        let attacker = Some(IpAddr::from([192, 0, 2, 1]));
        let plain = |user: &str, password: &str| xmpp_sasl::plain_message(user, password);
        let free = ThrottleSettings::default().account_free_failures;
        for sid in 0..=u64::from(free) {
            let outcome = auth
                .start(
                    (1, sid),
                    "PLAIN",
                    &plain("alice", "guess"),
                    attacker,
                    &FastAuth::default(),
                )
                .await;
            assert_eq!(outcome, Outcome::Failure("not-authorized"), "guess {sid}");
        }
        // blocked now: even the right password is not checked
        let outcome = auth
            .start(
                (1, 99),
                "PLAIN",
                &plain("alice", "right"),
                attacker,
                &FastAuth::default(),
            )
            .await;
        assert_eq!(outcome, Outcome::Failure(THROTTLED));
        let outcome = auth
            .start(
                (1, 100),
                "SCRAM-SHA-256",
                b"n,,n=alice,r=abc",
                None,
                &FastAuth::default(),
            )
            .await;
        assert_eq!(outcome, Outcome::Failure(THROTTLED));
        // other accounts are not blocked by it
        let outcome = auth
            .start(
                (1, 101),
                "PLAIN",
                &plain("bob", "x"),
                None,
                &FastAuth::default(),
            )
            .await;
        assert_eq!(outcome, Outcome::Failure("not-authorized"));
    }

    async fn service_with_alice() -> (tempfile::TempDir, AuthService) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let storage =
            Storage::start(move || crate::storage::open(None, &path, 1000)).expect("storage");
        let creds = StoredCredentials::new("right", StoredCredentials::DEFAULT_ITERATIONS);
        storage
            .call(move |db| db.add_user("alice", &creds))
            .await
            .unwrap();
        (dir, AuthService::new("x", storage, true))
    }

    #[tokio::test]
    async fn scram_starts_in_flight_at_once_get_a_challenge_only_up_to_the_free_allowance() {
        let (_dir, auth) = service_with_alice().await;
        let free = u64::from(ThrottleSettings::default().account_free_failures);
        let mut challenged = 0;
        let mut throttled = 0;
        // none of them answers yet: no failure is recorded before all start
        for sid in 0..4 * free {
            let from = Some(IpAddr::from([192, 0, 2, sid as u8]));
            match auth
                .start(
                    (1, sid),
                    "SCRAM-SHA-256",
                    b"n,,n=alice,r=abc",
                    from,
                    &FastAuth::default(),
                )
                .await
            {
                Outcome::Challenge(_) => challenged += 1,
                Outcome::Failure(THROTTLED) => throttled += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        // as many as a serial guesser gets checked before its block
        assert_eq!((challenged, throttled), (free + 1, 3 * free - 1));
        // the exchanges that were let in fail; then the account is blocked
        for sid in 0..=free {
            let outcome = auth.respond((1, sid), b"c=biws,r=abc,p=AAAA").await;
            assert_ne!(outcome, Outcome::Failure(THROTTLED), "exchange {sid}");
            assert!(matches!(outcome, Outcome::Failure(_)), "exchange {sid}");
        }
        let outcome = auth
            .start(
                (1, 1000),
                "SCRAM-SHA-256",
                b"n,,n=alice,r=abc",
                None,
                &FastAuth::default(),
            )
            .await;
        assert_eq!(outcome, Outcome::Failure(THROTTLED));
    }

    #[tokio::test]
    async fn plain_attempts_started_at_once_run_the_password_check_only_up_to_the_free_allowance() {
        let (_dir, auth) = service_with_alice().await;
        let auth = std::sync::Arc::new(auth);
        let free = u64::from(ThrottleSettings::default().account_free_failures);
        let attempts = 4 * free;
        let mut tasks = tokio::task::JoinSet::new();
        for sid in 0..attempts {
            let auth = auth.clone();
            let from = Some(IpAddr::from([198, 51, 100, sid as u8]));
            let message = xmpp_sasl::plain_message("alice", "guess");
            tasks.spawn(async move {
                auth.start((2, sid), "PLAIN", &message, from, &FastAuth::default())
                    .await
            });
        }
        let (mut checked, mut throttled) = (0, 0);
        while let Some(outcome) = tasks.join_next().await {
            match outcome.unwrap() {
                Outcome::Failure("not-authorized") => checked += 1,
                Outcome::Failure(THROTTLED) => throttled += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!((checked, throttled), (free + 1, attempts - free - 1));
    }

    #[test]
    fn plain_runs_one_pbkdf2_derivation_for_known_and_unknown_users_alike() {
        let secret = [7u8; 32];
        let creds = StoredCredentials::new("right", StoredCredentials::DEFAULT_ITERATIONS);
        let known_right = derivations(|| verify_plain(Some(&creds), "alice", "right", &secret));
        let known_wrong = derivations(|| verify_plain(Some(&creds), "alice", "wrong", &secret));
        let unknown = derivations(|| verify_plain(None, "nobody", "right", &secret));
        assert_eq!(
            (known_right, known_wrong, unknown),
            ((true, 1), (false, 1), (false, 1))
        );
    }

    fn fast_service(auth: AuthService) -> AuthService {
        auth.with_fast(fast::FastTokens::new(
            [3; 32],
            Duration::from_secs(14 * 86_400),
        ))
    }

    fn fast_request(user_agent: Option<&str>, request: Option<&str>) -> FastAuth {
        FastAuth {
            user_agent: user_agent.map(str::to_owned),
            request_token: request.map(str::to_owned),
            ..FastAuth::default()
        }
    }

    /// The HT initial response of `user` with `token` over `mechanism`.
    fn ht(user: &str, token: &str, mechanism: HtMechanism, exporter: Option<&[u8]>) -> Vec<u8> {
        let bindings = ChannelBindings {
            tls_exporter: exporter.map(<[u8]>::to_vec),
            tls_server_end_point: None,
        };
        xmpp_sasl::HtClient::new(mechanism, user, token, &bindings)
            .unwrap()
            .initial_response()
    }

    /// A `HT-SHA-256-NONE` use of `token` by `user` with what `fast` says.
    async fn use_none(
        auth: &AuthService,
        sid: u64,
        user: &str,
        token: &str,
        fast: FastAuth,
    ) -> Outcome {
        let none = HtMechanism::Sha256None;
        auth.start(
            (1, sid),
            none.name(),
            &ht(user, token, none, None),
            None,
            &fast,
        )
        .await
    }

    async fn token_by_plain(auth: &AuthService, sid: u64, ua: &str, mechanism: &str) -> String {
        let plain = xmpp_sasl::plain_message("alice", "right");
        match auth
            .start(
                (1, sid),
                "PLAIN",
                &plain,
                None,
                &fast_request(Some(ua), Some(mechanism)),
            )
            .await
        {
            Outcome::Success {
                token: Some(grant), ..
            } => grant.token,
            other => panic!("no token: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_fast_token_logs_in_once_per_count_and_only_its_user_agent_mechanism_and_binding() {
        let (_dir, auth) = service_with_alice().await;
        let auth = fast_service(auth);
        let none = HtMechanism::Sha256None;
        let token = token_by_plain(&auth, 1, "phone", none.name()).await;
        // no token without a user agent, nor for a mechanism that is not HT
        let plain = xmpp_sasl::plain_message("alice", "right");
        for fast in [
            fast_request(None, Some(none.name())),
            fast_request(Some("phone"), Some("PLAIN")),
        ] {
            let outcome = auth.start((1, 2), "PLAIN", &plain, None, &fast).await;
            assert!(matches!(outcome, Outcome::Success { token: None, .. }));
        }
        let use_with = |count: Option<u64>, ua: &str| FastAuth {
            count,
            ..fast_request(Some(ua), None)
        };
        // the token, with a count: in, with the server's proof
        let initial = ht("alice", &token, none, None);
        let Outcome::Success { data, user, .. } = auth
            .start(
                (1, 3),
                none.name(),
                &initial,
                None,
                &use_with(Some(1), "phone"),
            )
            .await
        else {
            panic!("token refused");
        };
        assert_eq!(user, "alice@x");
        let client =
            xmpp_sasl::HtClient::new(none, "alice", &token, &ChannelBindings::none()).unwrap();
        client
            .verify_responder(&data)
            .expect("the server proves it knows the token");
        // the same count again (a replay), another user agent, a wrong token: out
        for (fast, initial) in [
            (use_with(Some(1), "phone"), initial.clone()),
            (use_with(Some(5), "laptop"), initial.clone()),
            (
                use_with(Some(6), "phone"),
                ht("alice", "not-the-token", none, None),
            ),
        ] {
            let outcome = auth.start((1, 4), none.name(), &initial, None, &fast).await;
            assert_eq!(outcome, Outcome::Failure("not-authorized"));
        }
        // a higher count: in again; without a count (not early): in
        let outcome = auth
            .start(
                (1, 5),
                none.name(),
                &initial,
                None,
                &use_with(Some(2), "phone"),
            )
            .await;
        assert!(matches!(outcome, Outcome::Success { .. }));
        let outcome = auth
            .start(
                (1, 6),
                none.name(),
                &initial,
                None,
                &use_with(None, "phone"),
            )
            .await;
        assert!(matches!(outcome, Outcome::Success { .. }));
        // early data must carry a count above the last
        let early = |count| FastAuth {
            early: true,
            ..use_with(count, "phone")
        };
        let outcome = auth
            .start((1, 7), none.name(), &initial, None, &early(None))
            .await;
        assert_eq!(outcome, Outcome::Failure("not-authorized"));
        let outcome = auth
            .start((1, 8), none.name(), &initial, None, &early(Some(3)))
            .await;
        assert!(matches!(outcome, Outcome::Success { .. }));
        // a -NONE token is not an -EXPR one, even with the binding known
        let exporter = [9u8; 32];
        let expr = HtMechanism::Sha256Expr;
        let fast = FastAuth {
            tls_exporter: Some(bytes::Bytes::copy_from_slice(&exporter)),
            ..use_with(Some(10), "phone")
        };
        let outcome = auth
            .start(
                (1, 9),
                expr.name(),
                &ht("alice", &token, expr, Some(&exporter)),
                None,
                &fast,
            )
            .await;
        assert_eq!(outcome, Outcome::Failure("not-authorized"));
        // an -EXPR token is bound to the connection's exporter
        let expr_token = token_by_plain(&auth, 10, "tablet", expr.name()).await;
        let on = |exporter: &[u8]| FastAuth {
            tls_exporter: Some(bytes::Bytes::copy_from_slice(exporter)),
            ..use_with(None, "tablet")
        };
        let proof = ht("alice", &expr_token, expr, Some(&exporter));
        let outcome = auth
            .start((1, 11), expr.name(), &proof, None, &on(&[8; 32]))
            .await;
        assert_eq!(
            outcome,
            Outcome::Failure("not-authorized"),
            "another connection"
        );
        let outcome = auth
            .start((1, 12), expr.name(), &proof, None, &on(&exporter))
            .await;
        assert!(matches!(outcome, Outcome::Success { .. }));
        // FAST off: HT is not a mechanism
        let (_dir2, plain_only) = service_with_alice().await;
        let outcome = plain_only
            .start(
                (1, 13),
                none.name(),
                &initial,
                None,
                &use_with(Some(9), "phone"),
            )
            .await;
        assert_eq!(outcome, Outcome::Failure("invalid-mechanism"));
    }

    #[tokio::test]
    async fn a_fast_token_can_be_invalidated_and_a_new_one_replaces_the_old_once_used() {
        let (_dir, auth) = service_with_alice().await;
        let auth = fast_service(auth);
        let none = HtMechanism::Sha256None;
        let fast = |count| FastAuth {
            count: Some(count),
            ..fast_request(Some("phone"), None)
        };
        let unused = token_by_plain(&auth, 1, "phone", none.name()).await;
        let first = token_by_plain(&auth, 2, "phone", none.name()).await;
        let outcome = use_none(&auth, 3, "alice", &unused, fast(1)).await;
        assert_eq!(
            outcome,
            Outcome::Failure("not-authorized"),
            "an unused new token is replaced"
        );
        let outcome = use_none(&auth, 3, "alice", &first, fast(1)).await;
        assert!(matches!(outcome, Outcome::Success { .. }));
        // a second request (e.g. a password login): both valid until the new one is used
        let second = token_by_plain(&auth, 2, "phone", none.name()).await;
        assert_ne!(first, second);
        let outcome = use_none(&auth, 3, "alice", &first, fast(2)).await;
        assert!(
            matches!(outcome, Outcome::Success { .. }),
            "the old one, before the new is used"
        );
        let outcome = use_none(&auth, 4, "alice", &second, fast(1)).await;
        assert!(
            matches!(outcome, Outcome::Success { token: None, .. }),
            "fresh: no rotation"
        );
        let outcome = use_none(&auth, 5, "alice", &first, fast(9)).await;
        assert_eq!(
            outcome,
            Outcome::Failure("not-authorized"),
            "the old one ended"
        );
        // invalidate: this use is the last
        let end = FastAuth {
            invalidate: true,
            ..fast(2)
        };
        let outcome = use_none(&auth, 6, "alice", &second, end).await;
        assert!(matches!(outcome, Outcome::Success { token: None, .. }));
        let outcome = use_none(&auth, 7, "alice", &second, fast(3)).await;
        assert_eq!(outcome, Outcome::Failure("not-authorized"));
        // an unknown user costs the same and fails the same
        let outcome = use_none(&auth, 8, "nobody", &second, fast(1)).await;
        assert_eq!(outcome, Outcome::Failure("not-authorized"));
    }

    #[tokio::test]
    async fn a_fast_token_in_its_second_half_is_rotated_and_an_expired_one_refused() {
        let (_dir, auth) = service_with_alice().await;
        // a lifetime of 4 s: in its second half after two (Unix seconds)
        let auth = auth.with_fast(fast::FastTokens::new([3; 32], Duration::from_secs(4)));
        let none = HtMechanism::Sha256None;
        let token = token_by_plain(&auth, 1, "phone", none.name()).await;
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let fast = |count| FastAuth {
            count: Some(count),
            ..fast_request(Some("phone"), None)
        };
        let Outcome::Success {
            token: Some(rotated),
            ..
        } = use_none(&auth, 2, "alice", &token, fast(1)).await
        else {
            panic!("no rotation");
        };
        tokio::time::sleep(Duration::from_millis(4100)).await;
        let outcome = use_none(&auth, 3, "alice", &rotated.token, fast(1)).await;
        assert_eq!(outcome, Outcome::Failure("credentials-expired"));
    }
}

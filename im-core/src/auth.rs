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

pub mod throttle;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use xmpp_sasl::{
    Mechanism, ScramServer, StoredCredentials, fake_credentials, parse_client_first, parse_plain,
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
        }
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
    /// with an initial response.
    pub async fn start(
        &self,
        addr: SessionAddr,
        mechanism: &str,
        data: &[u8],
        client_ip: Option<IpAddr>,
    ) -> Outcome {
        let mech = match Mechanism::from_name(mechanism) {
            Some(Mechanism::Plain) if !self.allow_plain => {
                return Outcome::Failure("invalid-mechanism");
            }
            Some(m) => m,
            None => return Outcome::Failure("invalid-mechanism"),
        };
        match mech.scram_hash() {
            None => self.plain(data, client_ip).await,
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
    pub fn respond(&self, addr: SessionAddr, data: &[u8]) -> Outcome {
        let Some(p) = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&addr)
        else {
            return Outcome::Failure("malformed-request");
        };
        if p.started.elapsed() > DEADLINE {
            return Outcome::Failure("not-authorized");
        }
        if p.attempt.blocked_now() {
            return Outcome::Failure(THROTTLED);
        }
        let user = self.bare(p.server.username());
        let outcome = match p.server.finish(data) {
            Ok(data) if p.exists => Outcome::Success { data, user },
            Ok(_) => Outcome::Failure("not-authorized"),
            Err(e) => Outcome::Failure(e.condition()),
        };
        p.attempt.settle(Settled::of(&outcome));
        outcome
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
                .start((1, sid), "PLAIN", &plain("alice", "guess"), attacker)
                .await;
            assert_eq!(outcome, Outcome::Failure("not-authorized"), "guess {sid}");
        }
        // blocked now: even the right password is not checked
        let outcome = auth
            .start((1, 99), "PLAIN", &plain("alice", "right"), attacker)
            .await;
        assert_eq!(outcome, Outcome::Failure(THROTTLED));
        let outcome = auth
            .start((1, 100), "SCRAM-SHA-256", b"n,,n=alice,r=abc", None)
            .await;
        assert_eq!(outcome, Outcome::Failure(THROTTLED));
        // other accounts are not blocked by it
        let outcome = auth
            .start((1, 101), "PLAIN", &plain("bob", "x"), None)
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
                .start((1, sid), "SCRAM-SHA-256", b"n,,n=alice,r=abc", from)
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
            let outcome = auth.respond((1, sid), b"c=biws,r=abc,p=AAAA");
            assert_ne!(outcome, Outcome::Failure(THROTTLED), "exchange {sid}");
            assert!(matches!(outcome, Outcome::Failure(_)), "exchange {sid}");
        }
        let outcome = auth
            .start((1, 1000), "SCRAM-SHA-256", b"n,,n=alice,r=abc", None)
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
            tasks.spawn(async move { auth.start((2, sid), "PLAIN", &message, from).await });
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
}

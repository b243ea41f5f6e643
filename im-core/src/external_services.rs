//! External services (XEP-0215) the core tells clients about: STUN and
//! TURN servers for calls, from the core's TOML, with time-limited
//! credentials in the form coturn's REST API expects (`use-auth-secret`
//! with a `static-auth-secret` shared with the core): the user name is
//! `EXPIRY:LOCALPART` and the password the base64 HMAC-SHA1 of that name
//! under the secret, so the TURN server checks them without asking anyone.

use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;

/// One external service, as configured (`[[external_services]]`). Its
/// `Debug` leaves the secret out.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExternalService {
    /// `stun`, `turn`, `stuns` or `turns`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Host name or address clients reach it at.
    pub host: String,
    /// Port (the protocol's default if unset).
    #[serde(default)]
    pub port: Option<u16>,
    /// `udp` or `tcp` (unset: either).
    #[serde(default)]
    pub transport: Option<String>,
    /// A name to show.
    #[serde(default)]
    pub name: Option<String>,
    /// The secret shared with the server (coturn's `static-auth-secret`):
    /// set, clients get credentials for it; unset, none are needed.
    #[serde(default)]
    pub secret: Option<String>,
    /// How long credentials last, in seconds.
    #[serde(default = "default_ttl")]
    pub credentials_ttl_secs: u64,
}

fn default_ttl() -> u64 {
    24 * 3600
}

/// Longest lifetime of credentials: a year.
const MAX_TTL_SECS: u64 = 366 * 24 * 3600;

impl std::fmt::Debug for ExternalService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalService")
            .field("kind", &self.kind)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("transport", &self.transport)
            .field("name", &self.name)
            .field("secret", &self.secret.as_ref().map(|_| "(set)"))
            .field("credentials_ttl_secs", &self.credentials_ttl_secs)
            .finish()
    }
}

/// Why a configured service cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ServiceError {
    /// `type` is none of stun, stuns, turn, turns.
    #[error("external service {0}: type must be stun, stuns, turn or turns")]
    Kind(String),
    /// `transport` is neither udp nor tcp.
    #[error("external service {0}: transport must be udp or tcp")]
    Transport(String),
    /// `credentials_ttl_secs` is 0 or over a year.
    #[error("external service {0}: credentials_ttl_secs must be 1 to {MAX_TTL_SECS}")]
    Ttl(String),
    /// `secret` is set but empty.
    #[error("external service {0}: secret is empty")]
    EmptySecret(String),
}

impl ExternalService {
    /// Checks the configuration (the core refuses to start otherwise).
    pub fn validate(&self) -> Result<(), ServiceError> {
        let name = || self.host.clone();
        if !matches!(self.kind.as_str(), "stun" | "stuns" | "turn" | "turns") {
            return Err(ServiceError::Kind(name()));
        }
        if self
            .transport
            .as_deref()
            .is_some_and(|t| !matches!(t, "udp" | "tcp"))
        {
            return Err(ServiceError::Transport(name()));
        }
        if self.credentials_ttl_secs == 0 || self.credentials_ttl_secs > MAX_TTL_SECS {
            return Err(ServiceError::Ttl(name()));
        }
        if self.secret.as_deref() == Some("") {
            return Err(ServiceError::EmptySecret(name()));
        }
        Ok(())
    }
}

/// Credentials for one user of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// `EXPIRY:LOCALPART`.
    pub username: String,
    /// Base64 HMAC-SHA1 of the user name under the service's secret.
    pub password: String,
    /// When they expire, in seconds since the Unix epoch.
    pub expires: u64,
}

impl ExternalService {
    /// A TURN server at `turn.example:3478` (UDP) with secret `s3cret`
    /// and 600 s credentials, for tests.
    #[cfg(test)]
    pub(crate) fn turn_for_tests() -> Self {
        Self {
            kind: "turn".into(),
            host: "turn.example".into(),
            port: Some(3478),
            transport: Some("udp".into()),
            name: None,
            secret: Some("s3cret".into()),
            credentials_ttl_secs: 600,
        }
    }

    /// Credentials for `user` (a local part) valid from `now` (Unix
    /// seconds), if the service has a secret.
    pub fn credentials(&self, user: &str, now: u64) -> Option<Credentials> {
        let secret = self.secret.as_deref()?;
        let expires = now.saturating_add(self.credentials_ttl_secs);
        let username = format!("{expires}:{user}");
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).ok()?;
        mac.update(username.as_bytes());
        let password =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        Some(Credentials {
            username,
            password,
            expires,
        })
    }
}

/// The services and the wall clock the router reads their credentials'
/// times from: the Unix time at one instant, handed in from outside.
#[derive(Clone, Debug)]
pub struct ExternalServices {
    services: Vec<ExternalService>,
    anchor: (Instant, u64),
}

impl ExternalServices {
    /// `services`, with the Unix time `unix_secs` at `at`.
    pub fn new(services: Vec<ExternalService>, at: Instant, unix_secs: u64) -> Self {
        Self {
            services,
            anchor: (at, unix_secs),
        }
    }

    /// The services.
    pub fn services(&self) -> &[ExternalService] {
        &self.services
    }

    /// The Unix time is `unix_secs` at `at` (a newer reading of the clock).
    pub fn set_clock(&mut self, at: Instant, unix_secs: u64) {
        self.anchor = (at, unix_secs);
    }

    /// The Unix time (seconds) at `now`.
    pub fn unix_at(&self, now: Instant) -> u64 {
        let (at, secs) = self.anchor;
        secs + now.saturating_duration_since(at).as_secs()
    }

    /// The Unix time now, for [`ExternalServices::new`].
    pub fn unix_now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_coturns_rest_form_checked_against_openssl() {
        let turn = ExternalService::turn_for_tests();
        let c = turn
            .credentials("alice", 1_796_125_516)
            .expect("a secret is set");
        assert_eq!(c.username, "1796126116:alice");
        assert_eq!(c.expires, 1_796_126_116);
        // printf '%s' 1796126116:alice | openssl dgst -sha1 -hmac s3cret -binary | base64
        assert_eq!(c.password, "O0hdwTBpuLClVwZu60YE1sZc0Js=");
        let stun = ExternalService {
            secret: None,
            ..turn
        };
        assert_eq!(stun.credentials("alice", 0), None);
    }

    #[test]
    fn the_wall_clock_moves_with_the_instants_handed_in_and_follows_a_new_reading() {
        let t0 = Instant::now();
        let mut s = ExternalServices::new(Vec::new(), t0, 1000);
        assert_eq!(s.unix_at(t0 + Duration::from_secs(90)), 1090);
        assert_eq!(s.unix_at(t0), 1000);
        // the system clock was corrected by an hour
        s.set_clock(t0 + Duration::from_secs(100), 4700);
        assert_eq!(s.unix_at(t0 + Duration::from_secs(160)), 4760);
    }

    #[test]
    fn bad_types_transports_lifetimes_and_empty_secrets_are_refused_and_debug_hides_the_secret() {
        let good = ExternalService {
            kind: "turns".into(),
            host: "turn.example".into(),
            port: None,
            transport: Some("tcp".into()),
            name: None,
            secret: Some("hush".into()),
            credentials_ttl_secs: 3600,
        };
        assert_eq!(good.validate(), Ok(()));
        assert!(!format!("{good:?}").contains("hush"));
        let bad = |f: fn(&mut ExternalService)| {
            let mut s = good.clone();
            f(&mut s);
            s.validate()
        };
        assert!(matches!(
            bad(|s| s.kind = "http".into()),
            Err(ServiceError::Kind(_))
        ));
        assert!(matches!(
            bad(|s| s.transport = Some("sctp".into())),
            Err(ServiceError::Transport(_))
        ));
        assert!(matches!(
            bad(|s| s.credentials_ttl_secs = 0),
            Err(ServiceError::Ttl(_))
        ));
        assert!(matches!(
            bad(|s| s.credentials_ttl_secs = u64::MAX),
            Err(ServiceError::Ttl(_))
        ));
        assert!(matches!(
            bad(|s| s.secret = Some(String::new())),
            Err(ServiceError::EmptySecret(_))
        ));
    }
}

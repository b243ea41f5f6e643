//! The control protocol: how a CM joins the balancer.
//!
//! A CM opens a QUIC connection to the balancer's control endpoint with its
//! cluster certificate (mutual TLS, ALPN [`ALPN`]), opens one bidirectional
//! stream and sends one [`Registration`] as a JSON line, then finishes the
//! stream:
//!
//! ```text
//! CM → balancer:  {"node":"cm-1","server_id":1,"encap":"10.0.0.5:4433"}\n
//! balancer → CM:  ok\n                  (accepted)
//!                 <why, one line>\n     (refused; the balancer closes the stream)
//! ```
//!
//! The balancer checks that the node name matches the certificate and that
//! the server id fits the QUIC-LB configuration and is not another CM's, and
//! keeps the CM in its table for as long as the connection lives. Both sides
//! send QUIC keep-alives every [`KEEP_ALIVE`]; a CM that stops answering is
//! gone after [`IDLE_TIMEOUT`], so a dead CM leaves the table within about
//! 2 s. When the balancer restarts, CMs reconnect and register again: the
//! balancer itself keeps nothing that its restart would lose.
//!
//! Sans-IO: this module builds and parses the lines; the CM's client and the
//! balancer's server move them.

use std::net::SocketAddr;
use std::time::Duration;

use quinn_proto::TransportConfig;
use serde::{Deserialize, Serialize};

/// ALPN of the control protocol.
pub const ALPN: &[u8] = b"longlink-lb/1";
/// Keep-alive on control connections.
pub const KEEP_ALIVE: Duration = Duration::from_millis(300);
/// A control connection silent this long is dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_millis(1500);
/// Longest registration line the balancer reads.
pub const MAX_REGISTRATION_LEN: usize = 1024;
/// Longest answer a CM reads.
pub const MAX_ANSWER_LEN: usize = 64;
/// The balancer's answer to an accepted registration.
pub const ACCEPTED: &[u8] = b"ok\n";

/// A CM announcing itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Node name (must match the certificate).
    pub node: String,
    /// QUIC-LB server id.
    pub server_id: u64,
    /// Where the balancer sends this CM's encapsulated datagrams.
    pub encap: SocketAddr,
}

/// A registration line that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Not a registration.
    #[error("bad registration: {0}")]
    BadRegistration(#[source] serde_json::Error),
}

impl Registration {
    /// The registration as the CM sends it: one JSON line.
    pub fn to_line(&self) -> Vec<u8> {
        // Serializing a struct of a string, an integer and an address into a
        // Vec cannot fail; an empty line would be refused by the balancer.
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }

    /// Parses the line a CM sent.
    pub fn from_line(line: &[u8]) -> Result<Self, ControlError> {
        serde_json::from_slice(line).map_err(ControlError::BadRegistration)
    }
}

/// The balancer's answer to a registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The CM is in the table.
    Accepted,
    /// The CM was refused, for this reason.
    Refused(String),
}

impl Answer {
    /// The answer as the balancer sends it: one line.
    pub fn to_line(&self) -> Vec<u8> {
        match self {
            Answer::Accepted => ACCEPTED.to_vec(),
            Answer::Refused(why) => format!("{why}\n").into_bytes(),
        }
    }

    /// Reads the balancer's answer: anything but [`ACCEPTED`] is a refusal.
    pub fn from_line(line: &[u8]) -> Self {
        if line == ACCEPTED {
            Answer::Accepted
        } else {
            Answer::Refused(String::from_utf8_lossy(line).trim().to_owned())
        }
    }
}

/// Transport settings of control connections, on both sides: one stream,
/// keep-alives every [`KEEP_ALIVE`], dead after [`IDLE_TIMEOUT`].
/// (`quinn::TransportConfig` is this type.)
pub fn transport() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(IDLE_TIMEOUT.try_into().ok());
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_round_trips_as_one_json_line() {
        let reg = Registration {
            node: "cm-1".into(),
            server_id: 258,
            encap: "[::1]:4433".parse().unwrap(),
        };
        let line = reg.to_line();
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        assert_eq!(
            line,
            b"{\"node\":\"cm-1\",\"server_id\":258,\"encap\":\"[::1]:4433\"}\n"
        );
        assert_eq!(Registration::from_line(&line).unwrap(), reg);
    }

    #[test]
    fn a_line_that_is_not_a_registration_is_refused() {
        let err = Registration::from_line(b"{\"node\":\"cm-1\"}\n").unwrap_err();
        assert!(err.to_string().starts_with("bad registration: "), "{err}");
        assert!(Registration::from_line(b"\xff\xfe").is_err());
    }

    #[test]
    fn only_ok_is_an_acceptance() {
        assert_eq!(Answer::Accepted.to_line(), b"ok\n");
        assert_eq!(Answer::from_line(b"ok\n"), Answer::Accepted);
        assert_eq!(
            Answer::from_line(&Answer::Refused("server id taken by cm-2".into()).to_line()),
            Answer::Refused("server id taken by cm-2".into())
        );
        assert_eq!(Answer::from_line(b"ok"), Answer::Refused("ok".into()));
        assert_eq!(Answer::from_line(b""), Answer::Refused(String::new()));
    }
}

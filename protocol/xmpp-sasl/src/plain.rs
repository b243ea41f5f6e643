//! PLAIN (RFC 4616).

use std::fmt;

use crate::SaslError;

/// Parsed PLAIN message (`authzid NUL authcid NUL passwd`).
#[derive(Clone, PartialEq, Eq)]
pub struct Plain {
    /// Authorization identity, `None` when empty.
    pub authzid: Option<String>,
    /// Authentication identity, SASLprep'd.
    pub username: String,
    /// Password as sent (normalized by [`crate::StoredCredentials::verify_password`]).
    pub password: String,
}

impl fmt::Debug for Plain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plain")
            .field("authzid", &self.authzid)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Parse a PLAIN initial response.
pub fn parse_plain(msg: &[u8]) -> Result<Plain, SaslError> {
    let mut parts = msg.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(passwd), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed(
            "PLAIN needs exactly two NUL separators",
        ));
    };
    let authzid = std::str::from_utf8(authzid).map_err(|_| SaslError::InvalidAuthzid)?;
    let authcid =
        std::str::from_utf8(authcid).map_err(|_| SaslError::Malformed("username is not UTF-8"))?;
    let passwd =
        std::str::from_utf8(passwd).map_err(|_| SaslError::Malformed("password is not UTF-8"))?;
    if authcid.is_empty() {
        return Err(SaslError::Malformed("empty username"));
    }
    if passwd.is_empty() {
        return Err(SaslError::Malformed("empty password"));
    }
    let username = stringprep::saslprep(authcid).map_err(|_| SaslError::InvalidUsername)?;
    if username.is_empty() {
        return Err(SaslError::InvalidUsername);
    }
    Ok(Plain {
        authzid: (!authzid.is_empty()).then(|| authzid.to_owned()),
        username: username.into_owned(),
        password: passwd.to_owned(),
    })
}

/// PLAIN client message without authzid: `NUL username NUL password`.
pub fn plain_message(username: &str, password: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + username.len() + password.len());
    out.push(0);
    out.extend_from_slice(username.as_bytes());
    out.push(0);
    out.extend_from_slice(password.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain() {
        let p = parse_plain(b"\0juliet\0r0m30myr0m30").unwrap();
        assert_eq!(p.authzid, None);
        assert_eq!(p.username, "juliet");
        assert_eq!(p.password, "r0m30myr0m30");
        let p = parse_plain(b"admin@example.com\0juliet\0pw").unwrap();
        assert_eq!(p.authzid.as_deref(), Some("admin@example.com"));
        assert_eq!(parse_plain(&plain_message("u", "p")).unwrap().username, "u");
        assert!(!format!("{p:?}").contains("pw\""));
    }

    #[test]
    fn rejects_malformed_plain() {
        for bad in [
            &b""[..],
            b"juliet",
            b"\0juliet",
            b"juliet\0pw",
            b"\0juliet\0pw\0extra",
            b"\0\0pw",
            b"\0juliet\0",
            b"\0jul\xffiet\0pw",
            b"\0juliet\0p\xc3w",
        ] {
            let err = parse_plain(bad).unwrap_err();
            assert_eq!(err.condition(), "malformed-request", "{bad:?}: {err}");
        }
        assert_eq!(
            parse_plain(b"\xff\0juliet\0pw").unwrap_err(),
            SaslError::InvalidAuthzid
        );
        // Prohibited by SASLprep (control character).
        assert_eq!(
            parse_plain(b"\0jul\x07iet\0pw").unwrap_err(),
            SaslError::InvalidUsername
        );
    }
}

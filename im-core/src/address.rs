//! Splitting JID strings the core already holds in normalized form (bound
//! full JIDs, bare JIDs of accounts): `local@domain/resource`. The one place
//! im-core takes a JID string apart; borrowed slices, no allocation.
//!
//! A resource may contain `/` and `@` (RFC 7622 §3.4), a local part neither
//! (§3.3.1), so the first `/` ends the bare JID and the first `@` before it
//! ends the local part.

/// The bare JID of a full or bare JID: everything before the first `/`.
pub fn bare(jid: &str) -> &str {
    jid.split_once('/').map_or(jid, |(bare, _)| bare)
}

/// The resource of a full JID: everything after the first `/` (none for a
/// bare JID).
pub fn resource(jid: &str) -> Option<&str> {
    jid.split_once('/').map(|(_, resource)| resource)
}

/// A full JID's bare JID and resource (none for a bare JID).
pub fn split_full(jid: &str) -> Option<(&str, &str)> {
    jid.split_once('/')
}

/// The local part (the account's user name) of a bare or full JID; none
/// for a domain-only JID.
pub fn local(jid: &str) -> Option<&str> {
    bare(jid).split_once('@').map(|(local, _)| local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_jid_splits_at_the_first_slash() {
        assert_eq!(bare("alice@x/phone"), "alice@x");
        assert_eq!(resource("alice@x/phone"), Some("phone"));
        assert_eq!(split_full("alice@x/phone"), Some(("alice@x", "phone")));
        assert_eq!(local("alice@x/phone"), Some("alice"));
    }

    #[test]
    fn a_bare_jid_has_no_resource() {
        assert_eq!(bare("alice@x"), "alice@x");
        assert_eq!(resource("alice@x"), None);
        assert_eq!(split_full("alice@x"), None);
        assert_eq!(local("alice@x"), Some("alice"));
    }

    #[test]
    fn a_resource_may_contain_slashes_and_ats() {
        let full = "alice@x/home/desk@work";
        assert_eq!(bare(full), "alice@x");
        assert_eq!(resource(full), Some("home/desk@work"));
        assert_eq!(split_full(full), Some(("alice@x", "home/desk@work")));
        assert_eq!(local(full), Some("alice"));
    }

    #[test]
    fn a_domain_only_jid_has_no_local_part() {
        assert_eq!(bare("x"), "x");
        assert_eq!(local("x"), None);
        assert_eq!(resource("x"), None);
        // an '@' in the resource is not a local part
        assert_eq!(bare("x/r@s"), "x");
        assert_eq!(local("x/r@s"), None);
        assert_eq!(resource("x/r@s"), Some("r@s"));
    }

    #[test]
    fn an_empty_string_is_an_empty_bare_jid() {
        assert_eq!(bare(""), "");
        assert_eq!(local(""), None);
        assert_eq!(resource(""), None);
    }
}

//! Block lists (XEP-0191): which items of a user's list a JID matches.
//!
//! An item is a JID in any of four forms, matched as privacy lists match
//! them (XEP-0016 §2.1, which XEP-0191 refers to): a JID matches an item
//! equal to its full JID, its bare JID, its `domain/resource` or its
//! domain. So a bare item matches every resource of it, and a domain item
//! every JID of that domain.

use crate::address;

/// Most items in one block list.
pub const MAX_BLOCKED: usize = 1000;
/// Most bytes of one block list's JIDs (each counted with the markup of
/// its `<item/>`), so that the whole list fits one stanza (and one CM↔core
/// frame) with room to spare, and a cached list stays small.
pub const MAX_BLOCKED_BYTES: usize = 64 * 1024;

/// Whether `list` keeps within [`MAX_BLOCKED`] and [`MAX_BLOCKED_BYTES`].
pub fn fits(list: &[String]) -> bool {
    list.len() <= MAX_BLOCKED
        && list.iter().map(|j| j.len() + ITEM_MARKUP).sum::<usize>() <= MAX_BLOCKED_BYTES
}

/// The bytes `<item jid=''/>` adds to a JID.
const ITEM_MARKUP: usize = 16;

/// The forms of `jid` (normalized, as the core holds JIDs) that a block
/// list item can equal to match it, most specific first: each a slice of
/// `jid` (`user@domain/resource`, `user@domain`, `domain/resource`,
/// `domain`), so looking costs no allocation.
pub fn forms(jid: &str) -> impl Iterator<Item = &str> {
    let bare = address::bare(jid);
    let at = bare.find('@');
    let domain_start = at.map_or(0, |at| at + 1);
    let has_resource = address::resource(jid).is_some();
    [
        (has_resource && at.is_some()).then_some(jid),
        at.is_some().then_some(bare),
        has_resource.then(|| &jid[domain_start..]),
        Some(&bare[domain_start..]),
    ]
    .into_iter()
    .flatten()
}

/// [`forms`], owned (for a storage job).
pub fn owned_forms(jid: &str) -> Vec<String> {
    forms(jid).map(str::to_owned).collect()
}

/// Whether `list` (sorted) has an item that matches `jid`.
pub fn matches(list: &[String], jid: &str) -> bool {
    !list.is_empty()
        && forms(jid).any(|f| list.binary_search_by(|item| item.as_str().cmp(f)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jid_has_each_form_an_item_can_match_it_by() {
        assert_eq!(
            owned_forms("bob@x/phone"),
            vec!["bob@x/phone", "bob@x", "x/phone", "x"]
        );
        assert_eq!(owned_forms("bob@x"), vec!["bob@x", "x"]);
        assert_eq!(owned_forms("x/admin"), vec!["x/admin", "x"]);
        assert_eq!(owned_forms("x"), vec!["x"]);
    }

    #[test]
    fn a_bare_item_matches_every_resource_a_full_item_only_its_own_and_a_domain_every_jid_there() {
        let list = |items: &[&str]| {
            let mut v: Vec<String> = items.iter().map(|s| s.to_string()).collect();
            v.sort();
            v
        };
        assert!(matches(&list(&["bob@x"]), "bob@x/phone"));
        assert!(matches(&list(&["bob@x"]), "bob@x"));
        assert!(!matches(&list(&["bob@x"]), "bobby@x/phone"));
        assert!(matches(&list(&["bob@x/phone"]), "bob@x/phone"));
        assert!(!matches(&list(&["bob@x/phone"]), "bob@x/desk"));
        assert!(!matches(&list(&["bob@x/phone"]), "bob@x"));
        assert!(matches(&list(&["evil.example"]), "mallory@evil.example/a"));
        assert!(!matches(&list(&["evil.example"]), "mallory@x"));
        assert!(matches(&list(&["x/admin"]), "x/admin"));
        // (XEP-0016 compares the `domain/resource` form of any JID)
        assert!(matches(&list(&["x/admin"]), "bob@x/admin"));
        assert!(!matches(&list(&["x/admin"]), "bob@x/phone"));
        assert!(!matches(&[], "bob@x"));
    }
}

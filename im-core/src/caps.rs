//! Entity capabilities (XEP-0115) as the core uses them: which personal
//! eventing nodes a session wants notifications of (its `NODE+notify`
//! features, XEP-0163 §4.4).
//!
//! A presence names a verification string (`ver`). The first session
//! showing one this core does not know is asked for its disco#info; the
//! answer is verified against the string (§5.4: SHA-1 only) and kept for
//! every later session showing it, bounded in bytes. An answer that does
//! not verify serves the session that gave it and is not kept, so one
//! client cannot teach the core wrong features for others. Only the
//! `+notify` nodes are kept: they are all the core needs.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use xmpp_stream::caps::verification_string;
use xmpp_stream::element::Element;
use xmpp_stream::ns;

use crate::routing::SessionAddr;

/// The nodes a session wants notifications of, sorted.
pub type Notify = Arc<[Box<str>]>;

/// Most bytes of known verification strings and their nodes.
pub const MAX_CAPS_BYTES: usize = 4 * 1024 * 1024;
/// Most verification strings being asked about at once.
pub const MAX_ASKING: usize = 1024;
/// Most sessions waiting for one verification string's answer.
pub const MAX_WAITING: usize = 4096;
/// How long an unanswered question stands before the next session showing
/// the string is asked instead.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(30);
/// The prefix of the ids of the core's disco#info questions.
pub const ASK_ID_PREFIX: &str = "caps-";
/// Bytes counted for one known string besides its text.
const ENTRY_OVERHEAD: usize = 64;

/// The entity capabilities a presence shows (`<c/>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShownCaps {
    /// The hash function's name (`sha-1`).
    pub hash: String,
    /// The client's node (a URI naming the software).
    pub node: String,
    /// The verification string.
    pub ver: String,
}

impl ShownCaps {
    /// The `<c/>` of a presence stanza, if it has one.
    pub fn of_presence(payload: &[u8]) -> Option<Self> {
        // (most presences are parsed only when they name the namespace)
        let needle = ns::CAPS.as_bytes();
        if !payload.windows(needle.len()).any(|w| w == needle) {
            return None;
        }
        let el = Element::parse(payload, ns::CLIENT).ok()?;
        let c = el.child("c", ns::CAPS)?;
        Some(Self {
            hash: c.attr("hash")?.to_owned(),
            node: c.attr("node").unwrap_or_default().to_owned(),
            ver: c.attr("ver")?.to_owned(),
        })
    }
}

/// What is known of a verification string.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Its nodes.
    Known(Notify),
    /// Unknown: ask the session (a disco#info get with this id to
    /// `node#ver`).
    Ask(String),
    /// Another session was asked: this one waits for that answer.
    Wait,
}

/// A question about one verification string.
#[derive(Debug)]
struct Asking {
    id: String,
    asked: SessionAddr,
    hash: String,
    since: Instant,
    /// Answered without verifying: the next session showing it is asked.
    void: bool,
    waiting: Vec<SessionAddr>,
}

/// The core's knowledge of verification strings; sans-IO.
#[derive(Debug, Default)]
pub struct CapsCache {
    known: HashMap<Box<str>, Notify>,
    /// Known strings, oldest first (the first to go when over the bound).
    order: VecDeque<Box<str>>,
    bytes: usize,
    asking: HashMap<Box<str>, Asking>,
    next_id: u64,
}

impl CapsCache {
    /// What `addr`, showing `caps`, wants notifications of; or whom to ask.
    pub fn lookup(&mut self, caps: &ShownCaps, addr: SessionAddr, now: Instant) -> Lookup {
        if let Some(n) = self.known.get(caps.ver.as_str()) {
            return Lookup::Known(n.clone());
        }
        if let Some(a) = self.asking.get_mut(caps.ver.as_str())
            && !a.void
            && now.saturating_duration_since(a.since) < ASK_TIMEOUT
        {
            if a.asked != addr && a.waiting.len() < MAX_WAITING && !a.waiting.contains(&addr) {
                a.waiting.push(addr);
            }
            return Lookup::Wait;
        }
        if self.asking.len() >= MAX_ASKING {
            self.asking
                .retain(|_, a| now.saturating_duration_since(a.since) < ASK_TIMEOUT);
            if self.asking.len() >= MAX_ASKING {
                return Lookup::Wait;
            }
        }
        self.next_id += 1;
        let id = format!("{ASK_ID_PREFIX}{}", self.next_id);
        // (waiters of an expired question stay waiting on the new one)
        let waiting = self
            .asking
            .remove(caps.ver.as_str())
            .map(|a| a.waiting)
            .unwrap_or_default();
        self.asking.insert(
            caps.ver.as_str().into(),
            Asking {
                id: id.clone(),
                asked: addr,
                hash: caps.hash.clone(),
                since: now,
                void: false,
                waiting,
            },
        );
        Lookup::Ask(id)
    }

    /// The answer to question `id` from `from`: its nodes and the
    /// sessions they are for (the asked one first). Kept for later
    /// sessions if it verifies. None if no such question was asked of
    /// `from`.
    pub fn answered(
        &mut self,
        id: &str,
        from: SessionAddr,
        info: &Element,
    ) -> Option<(Notify, Vec<SessionAddr>)> {
        let ver = self
            .asking
            .iter()
            .find(|(_, a)| a.id == id && a.asked == from)
            .map(|(v, _)| v.clone())?;
        let notify = notify_nodes(info);
        let verified = self.asking.get(&ver).is_some_and(|a| a.hash == "sha-1")
            && verification_string(info) == *ver;
        if !verified {
            // serves the session that answered; the others ask again
            self.asking.get_mut(&ver)?.void = true;
            return Some((notify, vec![from]));
        }
        let asking = self.asking.remove(&ver)?;
        self.keep(ver, notify.clone());
        let mut to = vec![asking.asked];
        to.extend(asking.waiting);
        Some((notify, to))
    }

    /// Question `id` was answered with an error: the next session showing
    /// its string is asked instead.
    pub fn refused(&mut self, id: &str, from: SessionAddr) {
        self.asking.retain(|_, a| !(a.id == id && a.asked == from));
    }

    /// How many verification strings are known.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    fn keep(&mut self, ver: Box<str>, notify: Notify) {
        let size = |ver: &str, n: &Notify| {
            ENTRY_OVERHEAD + ver.len() + n.iter().map(|s| s.len() + 16).sum::<usize>()
        };
        self.bytes += size(&ver, &notify);
        if let Some(old) = self.known.insert(ver.clone(), notify) {
            self.bytes -= size(&ver, &old);
        } else {
            self.order.push_back(ver);
        }
        while self.bytes > MAX_CAPS_BYTES {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(n) = self.known.remove(&oldest) {
                self.bytes -= size(&oldest, &n);
            }
        }
    }
}

/// The nodes whose `NODE+notify` features a disco#info `<query/>` lists.
pub fn notify_nodes(info: &Element) -> Notify {
    let mut nodes: Vec<Box<str>> = info
        .elements()
        .filter(|e| e.name == "feature")
        .filter_map(|e| e.attr("var")?.strip_suffix("+notify"))
        .filter(|n| !n.is_empty())
        .map(Box::from)
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    nodes.into()
}

/// Whether `notify` has `node`.
pub fn wants(notify: &Notify, node: &str) -> bool {
    notify.binary_search_by(|n| (**n).cmp(node)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(ver: &str) -> ShownCaps {
        ShownCaps {
            hash: "sha-1".into(),
            node: "n".into(),
            ver: ver.into(),
        }
    }

    fn with_notify(nodes: &[&str]) -> Element {
        let mut q = Element::new("query", ns::DISCO_INFO);
        for n in nodes {
            q = q.with_child(
                Element::new("feature", ns::DISCO_INFO).with_attr("var", format!("{n}+notify")),
            );
        }
        q
    }

    #[test]
    fn one_session_is_asked_the_others_wait_and_a_verified_answer_serves_all_and_is_kept() {
        let mut cache = CapsCache::default();
        let answer = with_notify(&["urn:b", "urn:a"]);
        let ver = verification_string(&answer);
        let now = Instant::now();
        let Lookup::Ask(id) = cache.lookup(&shown(&ver), (1, 1), now) else {
            panic!("not asked")
        };
        assert_eq!(cache.lookup(&shown(&ver), (1, 2), now), Lookup::Wait);
        // an answer from a session not asked is ignored
        assert_eq!(cache.answered(&id, (1, 2), &answer), None);
        let (notify, to) = cache.answered(&id, (1, 1), &answer).unwrap();
        assert_eq!(&notify[..], [Box::from("urn:a"), Box::from("urn:b")]);
        assert!(wants(&notify, "urn:b") && !wants(&notify, "urn:c"));
        assert_eq!(to, [(1, 1), (1, 2)]);
        assert_eq!(
            cache.lookup(&shown(&ver), (1, 3), now),
            Lookup::Known(notify)
        );
    }

    #[test]
    fn an_answer_that_does_not_verify_serves_only_its_session_and_is_not_kept() {
        let mut cache = CapsCache::default();
        let now = Instant::now();
        let Lookup::Ask(id) = cache.lookup(&shown("forged="), (1, 1), now) else {
            panic!("not asked")
        };
        let (notify, to) = cache
            .answered(&id, (1, 1), &with_notify(&["urn:a"]))
            .unwrap();
        assert_eq!(to, [(1, 1)]);
        assert!(wants(&notify, "urn:a"));
        // the next session showing it is asked itself
        assert!(matches!(
            cache.lookup(&shown("forged="), (1, 2), now),
            Lookup::Ask(_)
        ));
        assert!(cache.is_empty());
    }

    #[test]
    fn an_unanswered_question_is_asked_again_after_its_timeout_and_waiters_carry_over() {
        let mut cache = CapsCache::default();
        let answer = with_notify(&["urn:a"]);
        let ver = verification_string(&answer);
        let now = Instant::now();
        assert!(matches!(
            cache.lookup(&shown(&ver), (1, 1), now),
            Lookup::Ask(_)
        ));
        assert_eq!(cache.lookup(&shown(&ver), (1, 2), now), Lookup::Wait);
        let later = now + ASK_TIMEOUT;
        let Lookup::Ask(id) = cache.lookup(&shown(&ver), (1, 3), later) else {
            panic!("not asked again")
        };
        let (_, to) = cache.answered(&id, (1, 3), &answer).unwrap();
        assert_eq!(to, [(1, 3), (1, 2)]);
    }

    #[test]
    fn known_strings_are_bounded_in_bytes_oldest_first() {
        let mut cache = CapsCache::default();
        let node = "n".repeat(1000);
        let per = ENTRY_OVERHEAD + 28 + node.len() + 16;
        for i in 0..(MAX_CAPS_BYTES / per + 10) {
            cache.keep(
                format!("{i:028}").into(),
                vec![Box::from(node.as_str())].into(),
            );
        }
        assert!(cache.bytes <= MAX_CAPS_BYTES);
        assert_eq!(cache.len(), MAX_CAPS_BYTES / per);
        assert!(!cache.known.contains_key(format!("{:028}", 0).as_str()));
    }
}

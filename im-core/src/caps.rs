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
/// Most questions open to announced sessions at once (a core restart
/// asks every available session once).
pub const MAX_UNSHOWN: usize = 1 << 20;
/// Most nodes one session can want notifications of.
pub const MAX_NOTIFY_NODES: usize = 64;
/// The length of a SHA-1 verification string (base64).
const VER_LEN: usize = 28;
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
    /// The `<c/>` of a presence stanza, if it has one this core can
    /// verify (SHA-1, a 28-character string: anything else is ignored,
    /// as §5.4 allows).
    pub fn of_presence(payload: &[u8]) -> Option<Self> {
        // (most presences are parsed only when they name the namespace)
        let needle = ns::CAPS.as_bytes();
        if !payload.windows(needle.len()).any(|w| w == needle) {
            return None;
        }
        let el = Element::parse(payload, ns::CLIENT).ok()?;
        let c = el.child("c", ns::CAPS)?;
        let (hash, ver) = (c.attr("hash")?, c.attr("ver")?);
        if hash != "sha-1" || ver.len() != VER_LEN {
            return None;
        }
        Some(Self {
            hash: hash.to_owned(),
            node: c
                .attr("node")
                .unwrap_or_default()
                .chars()
                .take(1023)
                .collect(),
            ver: ver.to_owned(),
        })
    }
}

/// A disco#info question to one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    /// The IQ's id.
    pub id: String,
    /// The session asked.
    pub to: SessionAddr,
    /// The `node` to ask about (`node#ver`).
    pub node: String,
}

/// What is known of a verification string.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Its nodes.
    Known(Notify),
    /// Unknown: ask this session.
    Ask(Question),
    /// Another session was asked (or this one has a question open): this
    /// one waits.
    Wait,
}

/// What an answer to a question did.
#[derive(Debug, PartialEq, Eq)]
pub struct Answered {
    /// The nodes the answer names.
    pub notify: Notify,
    /// The sessions they are for (the asked one first).
    pub to: Vec<SessionAddr>,
    /// The next session to ask, if the answer did not serve the waiters.
    pub ask: Option<Question>,
}

/// A question about one verification string.
#[derive(Debug)]
struct Asking {
    id: String,
    asked: SessionAddr,
    node: String,
    since: Instant,
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
    /// Questions to sessions whose string is not known (announced by a
    /// CM, their presence unseen here), by id: the session and when.
    unshown: HashMap<String, (SessionAddr, Instant)>,
    next_id: u64,
}

impl CapsCache {
    /// What `addr`, showing `caps`, wants notifications of; or whom to ask.
    pub fn lookup(&mut self, caps: &ShownCaps, addr: SessionAddr, now: Instant) -> Lookup {
        if let Some(n) = self.known.get(caps.ver.as_str()) {
            return Lookup::Known(n.clone());
        }
        let open = |a: &Asking| now.saturating_duration_since(a.since) < ASK_TIMEOUT;
        if let Some(a) = self.asking.get_mut(caps.ver.as_str())
            && open(a)
        {
            if a.asked != addr && a.waiting.len() < MAX_WAITING && !a.waiting.contains(&addr) {
                a.waiting.push(addr);
            }
            return Lookup::Wait;
        }
        // one open question per session: a client cannot hold them all
        if self.asking.values().any(|a| a.asked == addr && open(a)) {
            return Lookup::Wait;
        }
        if self.asking.len() >= MAX_ASKING {
            self.asking.retain(|_, a| open(a));
            if self.asking.len() >= MAX_ASKING {
                return Lookup::Wait;
            }
        }
        // (waiters of an expired question, and the session it asked,
        // wait on the new one)
        let waiting = self
            .asking
            .remove(caps.ver.as_str())
            .map(|mut a| {
                a.waiting.push(a.asked);
                a.waiting
            })
            .unwrap_or_default();
        let node = format!("{}#{}", caps.node, caps.ver);
        let question = self.ask(caps.ver.as_str().into(), addr, node, waiting, now);
        Lookup::Ask(question)
    }

    fn ask(
        &mut self,
        ver: Box<str>,
        to: SessionAddr,
        node: String,
        mut waiting: Vec<SessionAddr>,
        now: Instant,
    ) -> Question {
        self.next_id += 1;
        let id = format!("{ASK_ID_PREFIX}{}", self.next_id);
        waiting.retain(|w| *w != to);
        self.asking.insert(
            ver,
            Asking {
                id: id.clone(),
                asked: to,
                node: node.clone(),
                since: now,
                waiting,
            },
        );
        Question { id, to, node }
    }

    /// The answer to question `id` from `from`. Kept for later sessions,
    /// and serving the waiters, if it verifies; otherwise it serves `from`
    /// alone and the first waiter is asked. None if no such question was
    /// asked of `from`.
    pub fn answered(
        &mut self,
        id: &str,
        from: SessionAddr,
        info: &Element,
        now: Instant,
    ) -> Option<Answered> {
        let ver = self.question(id, from)?;
        let notify = notify_nodes(info);
        let asking = self.asking.remove(&ver)?;
        if !(sound(info) && verification_string(info) == *ver) {
            let ask = self.ask_next(ver, asking, now);
            return Some(Answered {
                notify,
                to: vec![from],
                ask,
            });
        }
        self.keep(ver, notify.clone());
        let mut to = vec![asking.asked];
        to.extend(asking.waiting);
        Some(Answered {
            notify,
            to,
            ask: None,
        })
    }

    /// Question `id` was answered with an error: the first waiter is asked
    /// instead, if any.
    pub fn refused(&mut self, id: &str, from: SessionAddr, now: Instant) -> Option<Question> {
        let ver = self.question(id, from)?;
        let asking = self.asking.remove(&ver)?;
        self.ask_next(ver, asking, now)
    }

    /// The verification string of question `id` asked of `from`.
    fn question(&self, id: &str, from: SessionAddr) -> Option<Box<str>> {
        self.asking
            .iter()
            .find(|(_, a)| a.id == id && a.asked == from)
            .map(|(v, _)| v.clone())
    }

    /// A question that failed: its first waiter is asked in turn.
    fn ask_next(&mut self, ver: Box<str>, mut asking: Asking, now: Instant) -> Option<Question> {
        if asking.waiting.is_empty() {
            return None;
        }
        let next = asking.waiting.remove(0);
        Some(self.ask(ver, next, asking.node, asking.waiting, now))
    }

    /// The id of a question to `addr`, whose presence this core has not
    /// seen (a session a CM announced: after a core restart, a slot's
    /// move, a link's return), about its own features (no node); none
    /// past [`MAX_UNSHOWN`] such questions open.
    pub fn ask_unshown(&mut self, addr: SessionAddr, now: Instant) -> Option<String> {
        if self.unshown.len() >= MAX_UNSHOWN {
            // (unanswered ones lapse, as other questions do)
            self.unshown
                .retain(|_, (_, since)| now.saturating_duration_since(*since) < ASK_TIMEOUT);
            if self.unshown.len() >= MAX_UNSHOWN {
                return None;
            }
        }
        self.next_id += 1;
        let id = format!("{ASK_ID_PREFIX}a{}", self.next_id);
        self.unshown.insert(id.clone(), (addr, now));
        Some(id)
    }

    /// The answer to an [`CapsCache::ask_unshown`] question: its nodes
    /// (kept under the string they hash to, if sound). None if no such
    /// question was asked of `from`.
    pub fn answered_unshown(
        &mut self,
        id: &str,
        from: SessionAddr,
        info: Option<&Element>,
    ) -> Option<Notify> {
        if self.unshown.get(id).map(|(a, _)| *a) != Some(from) {
            return None;
        }
        self.unshown.remove(id);
        let info = info?;
        let notify = notify_nodes(info);
        if sound(info) {
            self.keep(verification_string(info).into(), notify.clone());
        }
        Some(notify)
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

/// The nodes whose `NODE+notify` features a disco#info `<query/>` lists
/// (at most [`MAX_NOTIFY_NODES`], each at most 1023 bytes).
pub fn notify_nodes(info: &Element) -> Notify {
    let mut nodes: Vec<Box<str>> = info
        .elements()
        .filter(|e| e.name == "feature")
        .filter_map(|e| e.attr("var")?.strip_suffix("+notify"))
        .filter(|n| !n.is_empty() && n.len() <= 1023)
        .take(MAX_NOTIFY_NODES)
        .map(Box::from)
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    nodes.into()
}

/// Whether a disco#info answer can be verified at all (XEP-0115 §5.4):
/// no `<` in what the string joins with `<` (else several features could
/// pass for one), no identity or feature twice, no form type twice.
fn sound(info: &Element) -> bool {
    let mut identities = std::collections::HashSet::new();
    let mut features = std::collections::HashSet::new();
    let mut forms = std::collections::HashSet::new();
    let clean = |v: &str| !v.contains('<');
    for e in info.elements() {
        match e.name.as_str() {
            "identity" => {
                let key: Vec<&str> = ["category", "type", "xml:lang", "name"]
                    .iter()
                    .map(|a| e.attr(a).unwrap_or_default())
                    .collect();
                if !key.iter().all(|v| clean(v)) || !identities.insert(key[..3].join("/")) {
                    return false;
                }
            }
            "feature" => {
                let var = e.attr("var").unwrap_or_default();
                if !clean(var) || !features.insert(var.to_owned()) {
                    return false;
                }
            }
            "x" if e.ns == ns::DATA => {
                for field in e.elements() {
                    let var = field.attr("var").unwrap_or_default();
                    if !clean(var) || field.elements().any(|v| !clean(&v.text())) {
                        return false;
                    }
                    if var == "FORM_TYPE"
                        && !forms.insert(field.elements().map(|v| v.text()).collect::<String>())
                    {
                        return false;
                    }
                }
            }
            _ => {}
        }
    }
    true
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

    fn asked(l: Lookup) -> Question {
        match l {
            Lookup::Ask(q) => q,
            other => panic!("not asked: {other:?}"),
        }
    }

    #[test]
    fn one_session_is_asked_the_others_wait_and_a_verified_answer_serves_all_and_is_kept() {
        let mut cache = CapsCache::default();
        let answer = with_notify(&["urn:b", "urn:a"]);
        let ver = verification_string(&answer);
        let now = Instant::now();
        let q = asked(cache.lookup(&shown(&ver), (1, 1), now));
        assert_eq!(
            (q.to, q.node.as_str()),
            ((1, 1), format!("n#{ver}").as_str())
        );
        assert_eq!(cache.lookup(&shown(&ver), (1, 2), now), Lookup::Wait);
        // an answer from a session not asked is ignored
        assert_eq!(cache.answered(&q.id, (1, 2), &answer, now), None);
        let done = cache.answered(&q.id, (1, 1), &answer, now).unwrap();
        assert_eq!(&done.notify[..], [Box::from("urn:a"), Box::from("urn:b")]);
        assert!(wants(&done.notify, "urn:b") && !wants(&done.notify, "urn:c"));
        assert_eq!((done.to, done.ask), (vec![(1, 1), (1, 2)], None));
        assert_eq!(
            cache.lookup(&shown(&ver), (1, 3), now),
            Lookup::Known(done.notify)
        );
    }

    #[test]
    fn an_answer_that_does_not_verify_serves_only_its_session_and_the_next_waiter_is_asked() {
        let mut cache = CapsCache::default();
        let now = Instant::now();
        let forged = "AAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        let q = asked(cache.lookup(&shown(forged), (1, 1), now));
        assert_eq!(cache.lookup(&shown(forged), (1, 2), now), Lookup::Wait);
        let done = cache
            .answered(&q.id, (1, 1), &with_notify(&["urn:a"]), now)
            .unwrap();
        assert_eq!(done.to, [(1, 1)]);
        assert!(wants(&done.notify, "urn:a"));
        let next = done.ask.expect("the waiter is asked");
        assert_eq!(next.to, (1, 2));
        assert!(cache.is_empty());
        // an error answer passes the question on the same way (none left)
        assert_eq!(cache.refused(&next.id, (1, 2), now), None);
        assert!(matches!(
            cache.lookup(&shown(forged), (1, 3), now),
            Lookup::Ask(_)
        ));
    }

    #[test]
    fn features_joined_with_the_separator_do_not_pass_for_the_ones_they_imitate() {
        // an answer whose one feature hashes like a real client's two
        let real = with_notify(&["urn:a", "urn:b"]);
        let ver = verification_string(&real);
        let forged = Element::new("query", ns::DISCO_INFO).with_child(
            Element::new("feature", ns::DISCO_INFO).with_attr("var", "urn:a+notify<urn:b+notify"),
        );
        assert_eq!(verification_string(&forged), ver);
        let mut cache = CapsCache::default();
        let now = Instant::now();
        let q = asked(cache.lookup(&shown(&ver), (1, 1), now));
        let done = cache.answered(&q.id, (1, 1), &forged, now).unwrap();
        assert_eq!(done.to, [(1, 1)]);
        assert!(cache.is_empty(), "the forged answer was kept");
        // twice the same feature does not verify either
        let twice = with_notify(&["urn:a", "urn:a"]);
        assert!(!sound(&twice));
        assert!(sound(&real));
    }

    #[test]
    fn a_session_has_one_open_question_and_unverifiable_caps_are_ignored() {
        let mut cache = CapsCache::default();
        let now = Instant::now();
        asked(cache.lookup(&shown("BBBBBBBBBBBBBBBBBBBBBBBBBBB="), (1, 1), now));
        assert_eq!(
            cache.lookup(&shown("CCCCCCCCCCCCCCCCCCCCCCCCCCC="), (1, 1), now),
            Lookup::Wait
        );
        let presence = |hash: &str, ver: &str| {
            format!(
                "<presence><c xmlns='http://jabber.org/protocol/caps' hash='{hash}' node='n' ver='{ver}'/></presence>"
            )
        };
        let ok = "DDDDDDDDDDDDDDDDDDDDDDDDDDD=";
        assert!(ShownCaps::of_presence(presence("sha-1", ok).as_bytes()).is_some());
        assert!(ShownCaps::of_presence(presence("sha-256", ok).as_bytes()).is_none());
        assert!(ShownCaps::of_presence(presence("sha-1", &"x".repeat(4000)).as_bytes()).is_none());
    }

    #[test]
    fn an_unanswered_question_is_asked_again_after_its_timeout_and_waiters_carry_over() {
        let mut cache = CapsCache::default();
        let answer = with_notify(&["urn:a"]);
        let ver = verification_string(&answer);
        let now = Instant::now();
        asked(cache.lookup(&shown(&ver), (1, 1), now));
        assert_eq!(cache.lookup(&shown(&ver), (1, 2), now), Lookup::Wait);
        let later = now + ASK_TIMEOUT;
        let q = asked(cache.lookup(&shown(&ver), (1, 3), later));
        let done = cache.answered(&q.id, (1, 3), &answer, later).unwrap();
        assert_eq!(done.to, [(1, 3), (1, 2), (1, 1)], "the first asked too");
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

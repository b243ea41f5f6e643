//! Moderation (`muc#admin`: roles and affiliations, XEP-0045 §8, §9) and
//! ownership (`muc#owner`: configuration, destruction, §10).

use xmpp_stream::element::Element;
use xmpp_stream::{StanzaCondition, ns};

use super::room::{Affiliation, Role};
use super::stanzas::PresenceNote;
use super::{Inbound, MUC_ADMIN, MUC_OWNER, MucAction, MucService, forms, to_bytes};
use crate::address;
use cm_protocol::Kind;

/// Items one admin request may change.
const MAX_ITEMS: usize = 64;

/// One item of an admin request, checked.
enum Change {
    /// A role, by nick.
    Role {
        nick: String,
        role: String,
        reason: Option<String>,
    },
    /// An affiliation, by bare JID.
    Affiliation {
        jid: String,
        affiliation: String,
        reason: Option<String>,
    },
}

impl MucService {
    pub(super) fn admin_iq(
        &mut self,
        room_jid: &str,
        inbound: &Inbound,
        el: &Element,
        query: &Element,
    ) {
        let Some(room) = self.rooms.get(room_jid) else {
            return;
        };
        let actor_bare = address::bare(&inbound.from).to_owned();
        let actor_aff = room.affiliation(&actor_bare);
        let actor_role = room
            .occupant_of(&inbound.from)
            .map_or(Role::None, |(_, o)| o.role);
        let items: Vec<&Element> = query
            .elements()
            .filter(|i| i.name == "item")
            .take(MAX_ITEMS + 1)
            .collect();
        if items.is_empty() || items.len() > MAX_ITEMS {
            return self.refuse_el(inbound, el, StanzaCondition::BadRequest);
        }
        if el.attr("type") == Some("get") {
            return self.admin_list(room_jid, inbound, el, items[0], actor_aff, actor_role);
        }
        // check every item first: all or nothing (and the room keeps an owner)
        let mut owners = room
            .affiliations
            .values()
            .filter(|a| **a == Affiliation::Owner)
            .count();
        for item in &items {
            let verdict = if let Some(role) = item.attr("role") {
                let Some(role) = Role::parse(role) else {
                    return self.refuse_el(inbound, el, StanzaCondition::BadRequest);
                };
                let Some(target) = item.attr("nick").and_then(|n| room.occupants.get(n)) else {
                    return self.refuse_el(inbound, el, StanzaCondition::ItemNotFound);
                };
                let target_aff = room.affiliation(&target.bare);
                role_change_allowed(actor_aff, actor_role, target_aff, target.role, role)
            } else if let Some(aff) = item.attr("affiliation") {
                let Some(aff) = Affiliation::parse(aff) else {
                    return self.refuse_el(inbound, el, StanzaCondition::BadRequest);
                };
                let Some(jid) = item.attr("jid").and_then(|j| jid::Jid::new(j).ok()) else {
                    return self.refuse_el(inbound, el, StanzaCondition::BadRequest);
                };
                let target = jid.to_bare().to_string();
                let target_aff = room.affiliation(&target);
                if target_aff == Affiliation::Owner && aff != Affiliation::Owner {
                    if owners <= 1 {
                        // the last owner stays
                        return self.refuse_el(inbound, el, StanzaCondition::Conflict);
                    }
                    owners -= 1;
                }
                affiliation_change_allowed(actor_aff, target_aff, aff)
            } else {
                false
            };
            if !verdict {
                return self.refuse_el(inbound, el, StanzaCondition::NotAllowed);
            }
        }
        let changes: Vec<Change> = items
            .iter()
            .filter_map(|i| {
                let reason = i.child("reason", MUC_ADMIN).map(|r| r.text());
                match (
                    i.attr("role"),
                    i.attr("nick"),
                    i.attr("affiliation"),
                    i.attr("jid"),
                ) {
                    (Some(role), Some(nick), _, _) => Some(Change::Role {
                        nick: nick.to_owned(),
                        role: role.to_owned(),
                        reason,
                    }),
                    (None, _, Some(aff), Some(jid)) => Some(Change::Affiliation {
                        jid: jid::Jid::new(jid).ok()?.to_bare().to_string(),
                        affiliation: aff.to_owned(),
                        reason,
                    }),
                    _ => None,
                }
            })
            .collect();
        for change in changes {
            match change {
                Change::Role { nick, role, reason } => {
                    self.set_role(room_jid, &nick, &role, reason.as_deref())
                }
                Change::Affiliation {
                    jid,
                    affiliation,
                    reason,
                } => self.set_affiliation(room_jid, &jid, &affiliation, reason.as_deref()),
            }
        }
        self.save_and_answer(room_jid, inbound, el);
        // (only now may an emptied room leave memory: its record is built)
        self.end_if_empty(room_jid);
    }

    fn admin_list(
        &mut self,
        room_jid: &str,
        inbound: &Inbound,
        el: &Element,
        item: &Element,
        actor_aff: Affiliation,
        actor_role: Role,
    ) {
        let Some(room) = self.rooms.get(room_jid) else {
            return;
        };
        let mut q = Element::new("query", MUC_ADMIN);
        if let Some(aff) = item.attr("affiliation").and_then(Affiliation::parse) {
            if actor_aff < Affiliation::Admin
                && !(aff == Affiliation::Member && actor_role == Role::Moderator)
            {
                return self.refuse_el(inbound, el, StanzaCondition::Forbidden);
            }
            for (jid, a) in room.affiliations.iter().filter(|(_, a)| **a == aff) {
                q = q.with_child(
                    Element::new("item", MUC_ADMIN)
                        .with_attr("affiliation", a.name())
                        .with_attr("jid", jid.clone()),
                );
            }
        } else if let Some(role) = item.attr("role").and_then(Role::parse) {
            if actor_role != Role::Moderator {
                return self.refuse_el(inbound, el, StanzaCondition::Forbidden);
            }
            for (nick, o) in room.occupants.iter().filter(|(_, o)| o.role == role) {
                q = q.with_child(
                    Element::new("item", MUC_ADMIN)
                        .with_attr("role", role.name())
                        .with_attr("nick", nick.clone())
                        .with_attr("affiliation", room.affiliation(&o.bare).name())
                        .with_attr("jid", o.bare.clone()),
                );
            }
        } else {
            return self.refuse_el(inbound, el, StanzaCondition::BadRequest);
        }
        self.result(inbound, el, Some(q));
    }

    fn set_role(&mut self, room_jid: &str, nick: &str, role: &str, reason: Option<&str>) {
        let Some(role) = Role::parse(role) else {
            return;
        };
        if role == Role::None {
            let note = PresenceNote {
                unavailable: true,
                codes: vec![307],
                reason,
                ..PresenceNote::default()
            };
            self.remove_occupant(room_jid, nick, &note, None);
            return;
        }
        if let Some(o) = self
            .rooms
            .get_mut(room_jid)
            .and_then(|r| r.occupants.get_mut(nick))
        {
            o.role = role;
        }
        self.broadcast_presence(room_jid, nick, &PresenceNote::default(), None);
    }

    fn set_affiliation(&mut self, room_jid: &str, bare: &str, aff: &str, reason: Option<&str>) {
        let Some(aff) = Affiliation::parse(aff) else {
            return;
        };
        let Some(room) = self.rooms.get_mut(room_jid) else {
            return;
        };
        if !room.set_affiliation(bare, aff) {
            tracing::warn!(room = room_jid, "affiliation table full");
            return;
        }
        let members_only = room.config.members_only;
        let present: Vec<String> = room
            .occupants
            .iter()
            .filter(|(_, o)| o.bare == bare)
            .map(|(n, _)| n.clone())
            .collect();
        for nick in present {
            let removed = match aff {
                Affiliation::Outcast => Some(301),
                Affiliation::None if members_only => Some(321),
                _ => None,
            };
            if let Some(code) = removed {
                let note = PresenceNote {
                    unavailable: true,
                    codes: vec![code],
                    reason,
                    ..PresenceNote::default()
                };
                self.remove_occupant(room_jid, &nick, &note, None);
                continue;
            }
            if let Some(room) = self.rooms.get_mut(room_jid) {
                let role = room.entry_role(aff);
                if let Some(o) = room.occupants.get_mut(&nick) {
                    // (an affiliation change sets the role it implies)
                    o.role = role;
                }
            }
            self.broadcast_presence(room_jid, &nick, &PresenceNote::default(), None);
        }
    }

    pub(super) fn owner_iq(
        &mut self,
        room_jid: &str,
        inbound: &Inbound,
        el: &Element,
        query: &Element,
    ) {
        let Some(room) = self.rooms.get(room_jid) else {
            return;
        };
        if room.affiliation(address::bare(&inbound.from)) != Affiliation::Owner {
            return self.refuse_el(inbound, el, StanzaCondition::Forbidden);
        }
        if el.attr("type") == Some("get") {
            let form = forms::config_form(&room.config);
            return self.result(
                inbound,
                el,
                Some(Element::new("query", MUC_OWNER).with_child(form)),
            );
        }
        if let Some(destroy) = query.child("destroy", MUC_OWNER) {
            let venue = destroy.attr("jid").map(str::to_owned);
            let reason = destroy.child("reason", MUC_OWNER).map(|r| r.text());
            self.destroy(room_jid, venue.as_deref(), reason.as_deref());
            return self.result(inbound, el, None);
        }
        let Some(form) = query.child("x", ns::DATA) else {
            return self.refuse_el(inbound, el, StanzaCondition::BadRequest);
        };
        if form.attr("type") == Some("cancel") {
            if room.locked {
                self.destroy(room_jid, None, None);
            }
            return self.result(inbound, el, None);
        }
        let mut config = room.config.clone();
        if forms::apply_form(&mut config, form).is_err() {
            return self.refuse_el(inbound, el, StanzaCondition::NotAcceptable);
        }
        let was = room.config.clone();
        let Some(room) = self.rooms.get_mut(room_jid) else {
            return;
        };
        room.config = config;
        room.locked = false;
        let now = room.config.clone();
        // who is no member of a room turned members-only leaves it (322)
        let outsiders: Vec<String> = match now.members_only && !was.members_only {
            true => room
                .occupants
                .iter()
                .filter(|(_, o)| room.affiliation(&o.bare) < Affiliation::Member)
                .map(|(n, _)| n.clone())
                .collect(),
            false => Vec::new(),
        };
        if now.persistent {
            self.save_and_answer(room_jid, inbound, el);
        } else {
            if was.persistent {
                self.out.push_back(MucAction::Delete {
                    room: room_jid.to_owned(),
                });
            }
            self.result(inbound, el, None);
        }
        for nick in outsiders {
            let note = PresenceNote {
                unavailable: true,
                codes: vec![322],
                ..PresenceNote::default()
            };
            self.remove_occupant(room_jid, &nick, &note, None);
        }
        // XEP-0045 §10.2.1: a configuration change is announced (104;
        // 172/173 when real JIDs became visible or hidden)
        let mut x = Element::new("x", super::MUC_USER)
            .with_child(Element::new("status", super::MUC_USER).with_attr("code", "104"));
        if now.whois != was.whois {
            let code = match now.whois {
                super::room::Whois::Anyone => "172",
                super::room::Whois::Moderators => "173",
            };
            x = x.with_child(Element::new("status", super::MUC_USER).with_attr("code", code));
        }
        let notice = Element::new("message", ns::CLIENT)
            .with_attr("from", room_jid)
            .with_attr("type", "groupchat")
            .with_child(x);
        let all = self.sessions_of(room_jid);
        self.fanout(all, Kind::Message, room_jid, to_bytes(notice));
        self.end_if_empty(room_jid);
    }

    /// Destroys a room: everyone leaves with the reason, its record and
    /// archive are removed.
    fn destroy(&mut self, room_jid: &str, venue: Option<&str>, reason: Option<&str>) {
        let nicks: Vec<String> = self
            .rooms
            .get(room_jid)
            .map(|r| r.occupants.keys().cloned().collect())
            .unwrap_or_default();
        let note = PresenceNote {
            unavailable: true,
            destroyed: Some((venue, reason)),
            ..PresenceNote::default()
        };
        for nick in nicks {
            self.remove_occupant(room_jid, &nick, &note, None);
        }
        self.rooms.remove(room_jid);
        self.out.push_back(MucAction::Delete {
            room: room_jid.to_owned(),
        });
    }
}

/// Whether an actor may give `target` (of affiliation `target_aff`) role
/// `role` (XEP-0045 §8.4, §8.5, §9.6).
fn role_change_allowed(
    actor_aff: Affiliation,
    actor_role: Role,
    target_aff: Affiliation,
    target_role: Role,
    role: Role,
) -> bool {
    if actor_role != Role::Moderator {
        return false;
    }
    // only admins and owners give or take moderator (§9.6, §9.7)
    if (target_role == Role::Moderator || role == Role::Moderator) && actor_aff < Affiliation::Admin
    {
        return false;
    }
    match role {
        // admins and owners cannot be kicked or silenced by moderators
        Role::None | Role::Visitor => {
            target_aff < Affiliation::Admin
                && (actor_aff >= target_aff || target_aff < Affiliation::Member)
        }
        Role::Participant => target_aff < Affiliation::Admin,
        Role::Moderator => actor_aff >= Affiliation::Admin,
    }
}

/// Whether an actor may change an affiliation from `from` to `to`
/// (XEP-0045 §9, §10): admins manage members and outcasts below admin,
/// owners anything.
fn affiliation_change_allowed(actor: Affiliation, from: Affiliation, to: Affiliation) -> bool {
    match actor {
        Affiliation::Owner => true,
        Affiliation::Admin => from < Affiliation::Admin && to < Affiliation::Admin,
        _ => false,
    }
}

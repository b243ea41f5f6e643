//! The room configuration form (`muc#roomconfig`, XEP-0045 §10.2) and
//! the room's disco#info extension (`muc#roominfo`, §15.5.4).

use xmpp_stream::element::Element;
use xmpp_stream::ns;

use super::room::{MAX_OCCUPANTS, MAX_TEXT_BYTES, RoleSet, RoomConfig, Whois};

const ROOMCONFIG: &str = "http://jabber.org/protocol/muc#roomconfig";
const ROOMINFO: &str = "http://jabber.org/protocol/muc#roominfo";

fn field(var: &str, kind: &str, label: &str, values: &[&str]) -> Element {
    let mut f = Element::new("field", ns::DATA)
        .with_attr("var", var)
        .with_attr("type", kind);
    if !label.is_empty() {
        f.set_attr("label", label);
    }
    for v in values {
        f = f.with_child(Element::new("value", ns::DATA).with_text(*v));
    }
    f
}

fn flag(b: bool) -> &'static str {
    if b { "1" } else { "0" }
}

/// The configuration form for `config`.
pub fn config_form(config: &RoomConfig) -> Element {
    let max = config.max_users.to_string();
    let whois = match config.whois {
        Whois::Anyone => "anyone",
        Whois::Moderators => "moderators",
    };
    let mut whois_field = field(
        "muc#roomconfig_whois",
        "list-single",
        "Who may discover real JIDs",
        &[whois],
    );
    for option in ["moderators", "anyone"] {
        whois_field = whois_field.with_child(
            Element::new("option", ns::DATA)
                .with_child(Element::new("value", ns::DATA).with_text(option)),
        );
    }
    Element::new("x", ns::DATA)
        .with_attr("type", "form")
        .with_child(field("FORM_TYPE", "hidden", "", &[ROOMCONFIG]))
        .with_child(field(
            "muc#roomconfig_roomname",
            "text-single",
            "Name",
            &[&config.name],
        ))
        .with_child(field(
            "muc#roomconfig_roomdesc",
            "text-single",
            "Description",
            &[&config.description],
        ))
        .with_child(field(
            "muc#roomconfig_persistentroom",
            "boolean",
            "Persistent",
            &[flag(config.persistent)],
        ))
        .with_child(field(
            "muc#roomconfig_publicroom",
            "boolean",
            "Listed in the directory",
            &[flag(config.public)],
        ))
        .with_child(field(
            "muc#roomconfig_membersonly",
            "boolean",
            "Members only",
            &[flag(config.members_only)],
        ))
        .with_child(field(
            "muc#roomconfig_moderatedroom",
            "boolean",
            "Moderated",
            &[flag(config.moderated)],
        ))
        .with_child(field(
            "muc#roomconfig_passwordprotectedroom",
            "boolean",
            "Password protected",
            &[flag(config.password.is_some())],
        ))
        .with_child(field(
            "muc#roomconfig_roomsecret",
            "text-private",
            "Password",
            &[config.password.as_deref().unwrap_or("")],
        ))
        .with_child(whois_field)
        .with_child(field(
            "muc#roomconfig_maxusers",
            "text-single",
            "Most occupants",
            &[&max],
        ))
        .with_child(field(
            "muc#roomconfig_changesubject",
            "boolean",
            "Participants may change the subject",
            &[flag(config.change_subject)],
        ))
        .with_child(field(
            "muc#roomconfig_allowinvites",
            "boolean",
            "Participants may invite",
            &[flag(config.allow_invites)],
        ))
        .with_child(field(
            "muc#roomconfig_allowpm",
            "list-single",
            "Private messages",
            &[if config.allow_pm { "anyone" } else { "none" }],
        ))
        .with_child(field(
            "muc#roomconfig_enablearchiving",
            "boolean",
            "Archive messages",
            &[flag(config.archive)],
        ))
        .with_child(roles_field(config.presence_broadcast))
}

fn roles_field(set: RoleSet) -> Element {
    let names = [
        ("moderator", set.moderator),
        ("participant", set.participant),
        ("visitor", set.visitor),
    ];
    let values: Vec<&str> = names
        .iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| *n)
        .collect();
    let mut f = field(
        "muc#roomconfig_presencebroadcast",
        "list-multi",
        "Roles whose presence is broadcast",
        &values,
    );
    for (n, _) in names {
        f = f.with_child(
            Element::new("option", ns::DATA)
                .with_child(Element::new("value", ns::DATA).with_text(n)),
        );
    }
    f
}

/// Why a submitted form was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    /// A value is not of its field's type or out of bounds.
    #[error("field {0} has a bad value")]
    BadValue(String),
}

/// Applies a submitted form to `config` (fields not given keep their
/// values; unknown fields are ignored).
pub fn apply_form(config: &mut RoomConfig, form: &Element) -> Result<(), FormError> {
    let mut password_protected = None;
    let mut secret = None;
    for f in form.elements().filter(|f| f.name == "field") {
        let Some(var) = f.attr("var") else { continue };
        let value = f
            .elements()
            .find(|v| v.name == "value")
            .map(|v| v.text())
            .unwrap_or_default();
        let bad = || FormError::BadValue(var.to_owned());
        let boolean = || match value.as_str() {
            "1" | "true" => Ok(true),
            "0" | "false" | "" => Ok(false),
            _ => Err(bad()),
        };
        if value.len() > MAX_TEXT_BYTES {
            return Err(bad());
        }
        match var {
            "muc#roomconfig_roomname" => config.name = value,
            "muc#roomconfig_roomdesc" => config.description = value,
            "muc#roomconfig_persistentroom" => config.persistent = boolean()?,
            "muc#roomconfig_publicroom" => config.public = boolean()?,
            "muc#roomconfig_membersonly" => config.members_only = boolean()?,
            "muc#roomconfig_moderatedroom" => config.moderated = boolean()?,
            "muc#roomconfig_passwordprotectedroom" => password_protected = Some(boolean()?),
            "muc#roomconfig_roomsecret" => secret = Some(value),
            "muc#roomconfig_whois" => {
                config.whois = match value.as_str() {
                    "anyone" => Whois::Anyone,
                    "moderators" | "" => Whois::Moderators,
                    _ => return Err(bad()),
                }
            }
            "muc#roomconfig_maxusers" => {
                config.max_users = match value.as_str() {
                    "" | "none" => MAX_OCCUPANTS,
                    v => v
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=MAX_OCCUPANTS).contains(n))
                        .ok_or_else(bad)?,
                }
            }
            "muc#roomconfig_changesubject" => config.change_subject = boolean()?,
            "muc#roomconfig_allowinvites" => config.allow_invites = boolean()?,
            "muc#roomconfig_allowpm" => config.allow_pm = value != "none",
            "muc#roomconfig_enablearchiving" | "mam" => config.archive = boolean()?,
            "muc#roomconfig_presencebroadcast" => {
                let mut set = RoleSet {
                    moderator: false,
                    participant: false,
                    visitor: false,
                };
                for v in f.elements().filter(|v| v.name == "value") {
                    match v.text().as_str() {
                        "moderator" => set.moderator = true,
                        "participant" => set.participant = true,
                        "visitor" => set.visitor = true,
                        _ => return Err(bad()),
                    }
                }
                config.presence_broadcast = set;
            }
            _ => {}
        }
    }
    // a secret alone protects; "protected" without a secret keeps the old one
    match (password_protected, secret) {
        (Some(false), _) => config.password = None,
        (_, Some(s)) if !s.is_empty() => config.password = Some(s),
        (Some(true), _) if config.password.is_some() => {}
        (Some(true), _) => return Err(FormError::BadValue("muc#roomconfig_roomsecret".into())),
        (None, _) => {}
    }
    Ok(())
}

/// The room's disco#info extension form (XEP-0045 §15.5.4).
pub fn room_info(config: &RoomConfig, occupants: usize, subject: &str) -> Element {
    let count = occupants.to_string();
    Element::new("x", ns::DATA)
        .with_attr("type", "result")
        .with_child(field("FORM_TYPE", "hidden", "", &[ROOMINFO]))
        .with_child(field(
            "muc#roominfo_description",
            "text-single",
            "Description",
            &[&config.description],
        ))
        .with_child(field(
            "muc#roominfo_occupants",
            "text-single",
            "Occupants",
            &[&count],
        ))
        .with_child(field(
            "muc#roominfo_subject",
            "text-single",
            "Subject",
            &[subject],
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_submitted_form_changes_only_the_fields_it_gives() {
        let mut config = RoomConfig::default();
        let form = Element::new("x", ns::DATA)
            .with_attr("type", "submit")
            .with_child(field("muc#roomconfig_persistentroom", "", "", &["1"]))
            .with_child(field("muc#roomconfig_roomsecret", "", "", &["s3cret"]))
            .with_child(field("muc#roomconfig_whois", "", "", &["anyone"]))
            .with_child(field("muc#roomconfig_maxusers", "", "", &["30"]));
        apply_form(&mut config, &form).unwrap();
        assert!(config.persistent);
        assert_eq!(config.password.as_deref(), Some("s3cret"));
        assert_eq!(config.whois, Whois::Anyone);
        assert_eq!(config.max_users, 30);
        assert!(!config.members_only);
        // turning protection off drops the secret
        let off = Element::new("x", ns::DATA).with_child(field(
            "muc#roomconfig_passwordprotectedroom",
            "",
            "",
            &["0"],
        ));
        apply_form(&mut config, &off).unwrap();
        assert_eq!(config.password, None);
    }

    #[test]
    fn bad_values_are_refused() {
        let mut config = RoomConfig::default();
        for (var, value) in [
            ("muc#roomconfig_persistentroom", "maybe"),
            ("muc#roomconfig_maxusers", "0"),
            ("muc#roomconfig_maxusers", "99999999"),
            ("muc#roomconfig_whois", "everyone"),
            ("muc#roomconfig_passwordprotectedroom", "1"),
        ] {
            let form = Element::new("x", ns::DATA).with_child(field(var, "", "", &[value]));
            assert!(apply_form(&mut config, &form).is_err(), "{var}={value}");
        }
        let long = "x".repeat(MAX_TEXT_BYTES + 1);
        let form = Element::new("x", ns::DATA).with_child(field(
            "muc#roomconfig_roomname",
            "",
            "",
            &[&long],
        ));
        assert!(apply_form(&mut config, &form).is_err());
    }

    #[test]
    fn the_form_shows_the_configuration_back() {
        let config = RoomConfig {
            members_only: true,
            password: Some("pw".into()),
            ..RoomConfig::default()
        };
        let mut copy = RoomConfig::default();
        apply_form(&mut copy, &config_form(&config)).unwrap();
        assert_eq!(copy, config);
    }
}

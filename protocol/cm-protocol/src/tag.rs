//! The frame type octet: the one list of every frame type, its octet on the
//! wire and its name in logs.

use crate::error::UnknownFrameType;

/// Declares [`FrameTag`] and its tables from one list, so a frame type's
/// octet and name are written once.
macro_rules! frame_tags {
    ($($(#[$doc:meta])* $variant:ident = $octet:literal, $name:literal;)*) => {
        /// The type octet that follows a frame's length; one per [`Frame`](crate::Frame)
        /// variant, of the same name.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum FrameTag {
            $($(#[$doc])* $variant = $octet,)*
        }

        impl FrameTag {
            /// Every frame type, in octet order.
            pub const ALL: &[FrameTag] = &[$(FrameTag::$variant,)*];

            /// A short name for logs and metrics.
            pub fn name(self) -> &'static str {
                match self {
                    $(FrameTag::$variant => $name,)*
                }
            }
        }

        impl TryFrom<u8> for FrameTag {
            type Error = UnknownFrameType;

            fn try_from(octet: u8) -> Result<Self, Self::Error> {
                match octet {
                    $($octet => Ok(FrameTag::$variant),)*
                    other => Err(UnknownFrameType(other)),
                }
            }
        }
    };
}

frame_tags! {
    /// [`Frame::Hello`](crate::Frame::Hello).
    Hello = 0, "hello";
    /// [`Frame::Welcome`](crate::Frame::Welcome).
    Welcome = 1, "welcome";
    /// [`Frame::AuthStart`](crate::Frame::AuthStart).
    AuthStart = 2, "auth-start";
    /// [`Frame::AuthResponse`](crate::Frame::AuthResponse).
    AuthResponse = 3, "auth-response";
    /// [`Frame::AuthChallenge`](crate::Frame::AuthChallenge).
    AuthChallenge = 4, "auth-challenge";
    /// [`Frame::AuthSuccess`](crate::Frame::AuthSuccess).
    AuthSuccess = 5, "auth-success";
    /// [`Frame::AuthFailure`](crate::Frame::AuthFailure).
    AuthFailure = 6, "auth-failure";
    /// [`Frame::Bind`](crate::Frame::Bind).
    Bind = 7, "bind";
    /// [`Frame::BindResult`](crate::Frame::BindResult).
    BindResult = 8, "bind-result";
    /// [`Frame::Announce`](crate::Frame::Announce).
    Announce = 9, "announce";
    /// [`Frame::Stanza`](crate::Frame::Stanza).
    Stanza = 10, "stanza";
    /// [`Frame::Deliver`](crate::Frame::Deliver).
    Deliver = 11, "deliver";
    /// [`Frame::Bounce`](crate::Frame::Bounce).
    Bounce = 12, "bounce";
    /// [`Frame::SessionEnd`](crate::Frame::SessionEnd).
    SessionEnd = 13, "session-end";
    /// [`Frame::Kick`](crate::Frame::Kick).
    Kick = 14, "kick";
    /// [`Frame::SmEnable`](crate::Frame::SmEnable).
    SmEnable = 15, "sm-enable";
    /// [`Frame::SmEnabled`](crate::Frame::SmEnabled).
    SmEnabled = 16, "sm-enabled";
    /// [`Frame::AckRequest`](crate::Frame::AckRequest).
    AckRequest = 17, "ack-request";
    /// [`Frame::Handled`](crate::Frame::Handled).
    Handled = 18, "handled";
    /// [`Frame::Acked`](crate::Frame::Acked).
    Acked = 19, "acked";
    /// [`Frame::Skipped`](crate::Frame::Skipped).
    Skipped = 20, "skipped";
    /// [`Frame::Resume`](crate::Frame::Resume).
    Resume = 21, "resume";
    /// [`Frame::Resumed`](crate::Frame::Resumed).
    Resumed = 22, "resumed";
    /// [`Frame::Register`](crate::Frame::Register).
    Register = 23, "register";
    /// [`Frame::RegisterResult`](crate::Frame::RegisterResult).
    RegisterResult = 24, "register-result";
    /// [`Frame::SlotOwners`](crate::Frame::SlotOwners).
    SlotOwners = 25, "slot-owners";
    /// [`Frame::Forward`](crate::Frame::Forward).
    Forward = 26, "forward";
    /// [`Frame::ForwardDone`](crate::Frame::ForwardDone).
    ForwardDone = 27, "forward-done";
    /// [`Frame::DeliverMany`](crate::Frame::DeliverMany).
    DeliverMany = 28, "deliver-many";
}

impl From<FrameTag> for u8 {
    fn from(tag: FrameTag) -> u8 {
        tag as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tag_round_trips_through_its_octet() {
        for &tag in FrameTag::ALL {
            assert_eq!(FrameTag::try_from(u8::from(tag)), Ok(tag));
        }
    }

    #[test]
    fn octets_without_a_frame_type_are_an_unknown_frame_type() {
        let known = FrameTag::ALL.len();
        assert_eq!(known, 29);
        for octet in 0..=u8::MAX {
            match FrameTag::try_from(octet) {
                Ok(tag) => assert_eq!(u8::from(tag), octet),
                Err(e) => {
                    assert!(usize::from(octet) >= known, "{octet} has no tag");
                    assert_eq!(e, UnknownFrameType(octet));
                }
            }
        }
    }

    #[test]
    fn names_are_distinct() {
        let mut names: Vec<&str> = FrameTag::ALL.iter().map(|t| t.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FrameTag::ALL.len());
    }
}

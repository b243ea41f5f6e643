//! XMPP stream layer.

//! SASL mechanisms for XMPP.

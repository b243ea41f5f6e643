//! CM<->core protocol.

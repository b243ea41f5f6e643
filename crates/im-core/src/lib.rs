//! IM core.

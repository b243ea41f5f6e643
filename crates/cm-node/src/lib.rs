//! CM node.

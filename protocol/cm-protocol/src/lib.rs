//! The CM↔core wire protocol.
//!
//! A CM keeps a small pool of QUIC connections to the core (mutual TLS, ALPN
//! [`ALPN`]). On each connection the CM opens one bidirectional stream and
//! both sides exchange length-prefixed binary [`Frame`]s on it. The first
//! frame is the CM's [`Frame::Hello`]; the core answers [`Frame::Welcome`].
//! Frames of one client session always travel on one connection, so a
//! session's order is kept; sessions are spread over the pool.
//!
//! Encoding: `u32` big-endian length of the rest, one type octet, then the
//! fields in order. Integers are LEB128 varints (`i8` as one octet), strings
//! and byte strings are a varint length then the bytes, optional values are a
//! `0`/`1` octet then the value. [`FrameDecoder`] is sans-IO: push bytes,
//! pull frames.
//!
//! Modules: [`Frame`] and the values it carries (`frame`); the type octet of
//! each frame, [`FrameTag`] (`tag`); frames to bytes (`encoder`); bytes to
//! frames, [`FrameDecoder`] (`decoder`); the field encodings (`primitive`);
//! [`DecodeError`] (`error`); which shard slot a user is in ([`slots`]); and with feature `quinn`, [`read_frame`] over a
//! quinn stream (`quinn_stream`).

mod decoder;
mod encoder;
mod error;
mod frame;
mod primitive;
#[cfg(feature = "quinn")]
mod quinn_stream;
pub mod slots;
mod tag;

pub use decoder::{FrameDecoder, MAX_FANOUT_SIDS, MAX_FRAME};
pub use encoder::FrameTooLarge;
pub use error::{DecodeError, UnknownFrameType};
pub use frame::{
    Bind2, CoreAddress, FastAuth, FastTokenGrant, Frame, Kind, Resumption, RouteHeader, SessionId,
    SlotEpoch, SmRequest, SmSnapshot,
};
#[cfg(feature = "quinn")]
pub use quinn_stream::{ReadFrameError, read_frame};
pub use tag::FrameTag;

/// The largest client stanza a CM may accept: every frame that carries
/// one (a `Stanza` with its routing header, whose strings are copies of
/// attributes of the stanza itself, a `Deliver` of it wrapped as a carbon
/// copy at the core, or a `DeliverMany` of it to [`MAX_FANOUT_SIDS`]
/// sessions) then fits in [`MAX_FRAME`].
pub const MAX_STANZA: usize = MAX_FRAME / 2 - 16 * 1024;

/// ALPN of the CM↔core protocol; the version is part of it (6: the core
/// may send [`Frame::DeliverMany`], which a CM of version 5 cannot decode;
/// 7: `Welcome.sasl2` and `Bind.bind2`, SASL2 with Bind2; 8:
/// `Welcome.fast`, `AuthStart.fast` and `AuthSuccess.token`, FAST tokens).
pub const ALPN: &[u8] = b"longlink-cm/8";

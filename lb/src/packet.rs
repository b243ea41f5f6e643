//! Classifying a UDP datagram's first QUIC packet header without decrypting
//! anything (RFC 8999 invariants, RFC 9000 §17, RFC 9369 for QUIC v2).
//!
//! Only the version-independent fields and the connection ids are read; the
//! rest of the header (token, length, packet number) is header-protected or
//! irrelevant to routing. Parsing never allocates and never panics.
//!
//! The fixed bit (0x40) is *not* required by [`parse`]: quinn (like other
//! stacks) advertises `grease_quic_bit` (RFC 9287) by default and its peers
//! then clear that bit in about half of their packets after the handshake
//! starts. [`parse_strict`] rejects such packets for callers whose servers
//! never advertise greasing.

use thiserror::Error;

/// QUIC version 1 (RFC 9000).
pub const QUIC_V1: u32 = 1;
/// QUIC version 2 (RFC 9369); its long packet type bits differ from v1.
pub const QUIC_V2: u32 = 0x6b33_43cf;
/// Minimum size of a datagram carrying a client Initial (RFC 9000 §14.1); the
/// caller's policy, not enforced by [`parse`].
pub const MIN_INITIAL_SIZE: usize = 1200;
/// Longest connection id in QUIC v1 and v2 (RFC 9000 §17.2).
pub const MAX_CID_LEN: usize = 20;

/// Header form bit: set for long headers.
const LONG_FORM: u8 = 0x80;
/// Fixed ("QUIC") bit: set in v1/v2 packets unless greased (RFC 9287).
const FIXED_BIT: u8 = 0x40;
/// Long packet type bits.
const LONG_TYPE_MASK: u8 = 0x30;

/// The first QUIC packet of a datagram, classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind<'a> {
    /// Long header: version, DCID, SCID, and the long packet type for QUIC v1
    /// and v2 (`None` for other versions, whose type bits mean nothing here).
    Long {
        /// The version field (neither 0 nor necessarily supported).
        version: u32,
        /// Destination connection id.
        dcid: &'a [u8],
        /// Source connection id.
        scid: &'a [u8],
        /// Packet type for v1/v2, `None` otherwise.
        long_type: Option<LongType>,
    },
    /// Version negotiation (long header with version 0).
    VersionNegotiation {
        /// Destination connection id.
        dcid: &'a [u8],
        /// Source connection id.
        scid: &'a [u8],
    },
    /// Short header (1-RTT); the DCID length comes from the caller.
    Short {
        /// The first octet (header-protected except form and fixed bits).
        first_octet: u8,
        /// Destination connection id.
        dcid: &'a [u8],
    },
}

/// Long header packet type (QUIC v1 and v2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LongType {
    /// Initial packet.
    Initial,
    /// 0-RTT packet.
    ZeroRtt,
    /// Handshake packet.
    Handshake,
    /// Retry packet.
    Retry,
}

/// Why a datagram is not a parsable QUIC packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum PacketError {
    /// The datagram is empty.
    #[error("empty datagram")]
    Empty,
    /// The datagram ends inside the header.
    #[error("truncated QUIC header")]
    Truncated,
    /// A connection id longer than 20 octets in a v1/v2 packet, or a
    /// caller-supplied short-header length over 20.
    #[error("connection id longer than {MAX_CID_LEN} octets")]
    CidTooLong,
    /// The fixed bit is clear in a v1/v2 or short-header packet ([`parse_strict`] only).
    #[error("QUIC fixed bit clear")]
    FixedBitClear,
    /// The caller could not tell the short-header DCID length from its first octet.
    #[error("unknown short-header connection id length")]
    UnknownCidLength,
}

/// The long packet type encoded in the type bits of `first_octet`, for QUIC v1
/// and v2; `None` for other versions.
pub fn long_type(version: u32, first_octet: u8) -> Option<LongType> {
    let bits = (first_octet & LONG_TYPE_MASK) >> 4;
    match version {
        QUIC_V1 => Some(match bits {
            0 => LongType::Initial,
            1 => LongType::ZeroRtt,
            2 => LongType::Handshake,
            _ => LongType::Retry,
        }),
        QUIC_V2 => Some(match bits {
            0 => LongType::Retry,
            1 => LongType::Initial,
            2 => LongType::ZeroRtt,
            _ => LongType::Handshake,
        }),
        _ => None,
    }
}

/// Parses the invariant header of a datagram's first packet. `short_dcid_len`
/// maps a short header's first DCID octet to the CID length in use (e.g. the
/// QUIC-LB self-described length); `None` gives
/// [`PacketError::UnknownCidLength`]. A cleared fixed bit is accepted (RFC 9287
/// greasing); see [`parse_strict`].
pub fn parse<'a>(
    datagram: &'a [u8],
    short_dcid_len: impl Fn(u8) -> Option<usize>,
) -> Result<PacketKind<'a>, PacketError> {
    let (&first, rest) = datagram.split_first().ok_or(PacketError::Empty)?;
    if first & LONG_FORM == 0 {
        let &cid_first = rest.first().ok_or(PacketError::Truncated)?;
        let len = short_dcid_len(cid_first).ok_or(PacketError::UnknownCidLength)?;
        if len > MAX_CID_LEN {
            return Err(PacketError::CidTooLong);
        }
        let dcid = rest.get(..len).ok_or(PacketError::Truncated)?;
        return Ok(PacketKind::Short {
            first_octet: first,
            dcid,
        });
    }
    let (version, rest) = split_array::<4>(rest)?;
    let version = u32::from_be_bytes(*version);
    // RFC 8999 allows connection ids of up to 255 octets; v1 and v2 cap them at 20.
    let max_cid = match version {
        QUIC_V1 | QUIC_V2 => MAX_CID_LEN,
        _ => usize::from(u8::MAX),
    };
    let (dcid, rest) = cid(rest, max_cid)?;
    let (scid, _) = cid(rest, max_cid)?;
    if version == 0 {
        return Ok(PacketKind::VersionNegotiation { dcid, scid });
    }
    Ok(PacketKind::Long {
        version,
        dcid,
        scid,
        long_type: long_type(version, first),
    })
}

/// Like [`parse`], but a cleared fixed bit in a QUIC v1/v2 long header or in a
/// short header is [`PacketError::FixedBitClear`] (for servers that never
/// advertise `grease_quic_bit`). Version negotiation and other versions are not
/// checked: their bit is unconstrained.
pub fn parse_strict<'a>(
    datagram: &'a [u8],
    short_dcid_len: impl Fn(u8) -> Option<usize>,
) -> Result<PacketKind<'a>, PacketError> {
    let kind = parse(datagram, short_dcid_len)?;
    let checked = match kind {
        PacketKind::Short { .. } => true,
        PacketKind::Long { version, .. } => version == QUIC_V1 || version == QUIC_V2,
        PacketKind::VersionNegotiation { .. } => false,
    };
    // parse succeeded, so the datagram is not empty.
    let first = datagram.first().copied().unwrap_or(FIXED_BIT);
    if checked && first & FIXED_BIT == 0 {
        return Err(PacketError::FixedBitClear);
    }
    Ok(kind)
}

/// Splits off the first `N` octets.
fn split_array<const N: usize>(buf: &[u8]) -> Result<(&[u8; N], &[u8]), PacketError> {
    buf.split_first_chunk::<N>().ok_or(PacketError::Truncated)
}

/// Reads a length-prefixed connection id of at most `max` octets.
fn cid(buf: &[u8], max: usize) -> Result<(&[u8], &[u8]), PacketError> {
    let (&len, rest) = buf.split_first().ok_or(PacketError::Truncated)?;
    let len = usize::from(len);
    if len > max {
        return Err(PacketError::CidTooLong);
    }
    if rest.len() < len {
        return Err(PacketError::Truncated);
    }
    Ok(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DCID: [u8; 8] = [0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08];
    const SCID: [u8; 5] = [0xc1, 0x01, 0x02, 0x03, 0x04];

    /// QUIC-LB style: the low 5 bits of the first CID octet are its length - 1.
    fn self_described(first: u8) -> Option<usize> {
        Some(usize::from(first & 0x1f) + 1)
    }

    fn never(_: u8) -> Option<usize> {
        None
    }

    /// A long header packet: first octet, version, DCID, SCID, then `tail`.
    fn long(first: u8, version: u32, dcid: &[u8], scid: &[u8], tail: &[u8]) -> Vec<u8> {
        let mut p = vec![first];
        p.extend_from_slice(&version.to_be_bytes());
        p.push(dcid.len() as u8);
        p.extend_from_slice(dcid);
        p.push(scid.len() as u8);
        p.extend_from_slice(scid);
        p.extend_from_slice(tail);
        p
    }

    /// A v1 client Initial padded to 1200 octets: token length 0 (varint),
    /// length varint (2 octets), packet number, then filler.
    fn v1_initial() -> Vec<u8> {
        let mut p = long(
            0xc3,
            QUIC_V1,
            &DCID,
            &[],
            &[0x00, 0x44, 0x9e, 0x00, 0x00, 0x00, 0x02],
        );
        p.resize(MIN_INITIAL_SIZE, 0xa5);
        p
    }

    #[test]
    fn v1_initial_parses() {
        let p = v1_initial();
        assert_eq!(
            parse(&p, never),
            Ok(PacketKind::Long {
                version: QUIC_V1,
                dcid: &DCID,
                scid: &[],
                long_type: Some(LongType::Initial),
            })
        );
        assert_eq!(parse_strict(&p, never), parse(&p, never));
    }

    #[test]
    fn v1_initial_with_token() {
        // Token length 0x4010 would be a 2-octet varint; a 1-octet one here.
        let p = long(
            0xc0,
            QUIC_V1,
            &DCID,
            &SCID,
            &[0x03, 0xaa, 0xbb, 0xcc, 0x41, 0x00, 0x01],
        );
        let Ok(PacketKind::Long {
            dcid,
            scid,
            long_type,
            ..
        }) = parse(&p, never)
        else {
            panic!("not long");
        };
        assert_eq!(
            (dcid, scid, long_type),
            (&DCID[..], &SCID[..], Some(LongType::Initial))
        );
    }

    #[test]
    fn v1_and_v2_long_types() {
        let v1 = [
            LongType::Initial,
            LongType::ZeroRtt,
            LongType::Handshake,
            LongType::Retry,
        ];
        let v2 = [
            LongType::Retry,
            LongType::Initial,
            LongType::ZeroRtt,
            LongType::Handshake,
        ];
        for bits in 0u8..4 {
            // Reserved and packet-number-length bits must not matter.
            for low in [0x00, 0x0f] {
                let first = 0xc0 | (bits << 4) | low;
                let p = long(first, QUIC_V1, &DCID, &SCID, &[0; 4]);
                let Ok(PacketKind::Long { long_type, .. }) = parse(&p, never) else {
                    panic!("v1");
                };
                assert_eq!(long_type, Some(v1[usize::from(bits)]));
                let p = long(first, QUIC_V2, &DCID, &SCID, &[0; 4]);
                let Ok(PacketKind::Long {
                    long_type, version, ..
                }) = parse(&p, never)
                else {
                    panic!("v2");
                };
                assert_eq!((version, long_type), (QUIC_V2, Some(v2[usize::from(bits)])));
            }
        }
    }

    #[test]
    fn unknown_version_has_no_type_and_long_cids() {
        let big = [0x5au8; 40];
        let p = long(0x80, 0xff00_001d, &big, &big[..33], &[]);
        assert_eq!(
            parse(&p, never),
            Ok(PacketKind::Long {
                version: 0xff00_001d,
                dcid: &big,
                scid: &big[..33],
                long_type: None,
            })
        );
        // The fixed bit of other versions is not checked, even when strict.
        assert!(parse_strict(&p, never).is_ok());
    }

    #[test]
    fn v1_cid_over_20_rejected() {
        let big = [1u8; 21];
        let p = long(0xc0, QUIC_V1, &big, &SCID, &[0; 8]);
        assert_eq!(parse(&p, never), Err(PacketError::CidTooLong));
        let p = long(0xc0, QUIC_V2, &DCID, &big, &[0; 8]);
        assert_eq!(parse(&p, never), Err(PacketError::CidTooLong));
        let p = long(0xc0, QUIC_V1, &big[..20], &big[..20], &[]);
        assert!(parse(&p, never).is_ok());
    }

    #[test]
    fn version_negotiation() {
        // First octet: form bit plus 7 arbitrary bits (here the fixed bit clear).
        let mut versions = Vec::new();
        versions.extend_from_slice(&QUIC_V1.to_be_bytes());
        versions.extend_from_slice(&QUIC_V2.to_be_bytes());
        let p = long(0x8a, 0, &SCID, &DCID, &versions);
        let expected = Ok(PacketKind::VersionNegotiation {
            dcid: &SCID[..],
            scid: &DCID[..],
        });
        assert_eq!(parse(&p, never), expected);
        assert_eq!(parse_strict(&p, never), expected);
    }

    #[test]
    fn short_header_uses_callback_length() {
        // QUIC-LB CID: first octet 0x07 says 8 octets.
        let cid = [0x07, 0xc4, 0x60, 0x5e, 0x45, 0x04, 0xcc, 0x4f];
        let mut p = vec![0x41];
        p.extend_from_slice(&cid);
        p.extend_from_slice(&[0xee; 30]);
        let seen = std::cell::Cell::new(None);
        let got = parse(&p, |first| {
            seen.set(Some(first));
            self_described(first)
        });
        assert_eq!(
            got,
            Ok(PacketKind::Short {
                first_octet: 0x41,
                dcid: &cid,
            })
        );
        assert_eq!(seen.get(), Some(0x07));
        assert_eq!(parse(&p, never), Err(PacketError::UnknownCidLength));
        assert_eq!(parse(&p, |_| Some(21)), Err(PacketError::CidTooLong));
        assert_eq!(
            parse(&p, |_| Some(0)),
            Ok(PacketKind::Short {
                first_octet: 0x41,
                dcid: &[]
            })
        );
        // A CID running past the end is truncated.
        assert_eq!(parse(&p[..5], self_described), Err(PacketError::Truncated));
        // Exactly the CID and nothing else still yields it.
        assert!(parse(&p[..9], self_described).is_ok());
    }

    #[test]
    fn greased_fixed_bit() {
        let mut short = vec![0x01];
        short.extend_from_slice(&[0x07; 8]);
        assert!(matches!(
            parse(&short, self_described),
            Ok(PacketKind::Short { .. })
        ));
        assert_eq!(
            parse_strict(&short, self_described),
            Err(PacketError::FixedBitClear)
        );

        let hs = long(0xa0, QUIC_V1, &DCID, &SCID, &[0; 4]);
        assert!(matches!(
            parse(&hs, never),
            Ok(PacketKind::Long {
                long_type: Some(LongType::Handshake),
                ..
            })
        ));
        assert_eq!(parse_strict(&hs, never), Err(PacketError::FixedBitClear));
    }

    #[test]
    fn empty_and_truncated_at_every_length() {
        assert_eq!(parse(&[], self_described), Err(PacketError::Empty));
        assert_eq!(parse_strict(&[], self_described), Err(PacketError::Empty));
        let vn = long(0x80, 0, &DCID, &SCID, &[]);
        let hs = long(0xe0, QUIC_V1, &DCID, &SCID, &[]);
        let odd = long(0xc0, 0x1a2a_3a4a, &[9; 30], &[8; 25], &[]);
        let mut short = vec![0x40, 0x0b];
        short.extend_from_slice(&[0x33; 11]);
        for full in [vn, hs, odd, short] {
            // Every header above ends exactly at its last CID octet.
            assert!(parse(&full, self_described).is_ok());
            for cut in 0..full.len() {
                let err = parse(&full[..cut], self_described).unwrap_err();
                let want = if cut == 0 {
                    PacketError::Empty
                } else {
                    PacketError::Truncated
                };
                assert_eq!(err, want, "cut {cut} of {full:02x?}");
                assert!(parse_strict(&full[..cut], self_described).is_err());
            }
        }
        // And the whole Initial at every length.
        let p = v1_initial();
        // First octet, version, DCID length and DCID, SCID length (SCID empty).
        let header_len = 1 + 4 + 1 + DCID.len() + 1;
        for cut in 0..p.len() {
            let r = parse(&p[..cut], never);
            assert_eq!(r.is_ok(), cut >= header_len, "cut {cut}");
        }
    }

    #[test]
    fn random_garbage_never_panics() {
        // xorshift64*: fixed seed, reproducible.
        let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            s.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let mut buf = [0u8; 1500];
        let mut ok = 0usize;
        for round in 0..100_000u32 {
            let len = (next() % 1500) as usize;
            for b in &mut buf[..len] {
                *b = next() as u8;
            }
            // Bias a share toward plausible headers so the deeper paths run.
            if len >= 7 && round % 4 == 0 {
                buf[0] |= 0x80;
                let v = [QUIC_V1, QUIC_V2, 0][(round / 4 % 3) as usize];
                buf[1..5].copy_from_slice(&v.to_be_bytes());
                buf[5] %= 24;
                let at = 6 + usize::from(buf[5]);
                if at < len {
                    buf[at] %= 24;
                }
            }
            let d = &buf[..len];
            let lens = |first: u8| (!first.is_multiple_of(3)).then_some(usize::from(first % 24));
            for r in [parse(d, lens), parse_strict(d, lens)] {
                match r {
                    Ok(PacketKind::Long { dcid, scid, .. })
                    | Ok(PacketKind::VersionNegotiation { dcid, scid }) => {
                        assert!(dcid.len() + scid.len() + 7 <= len);
                        ok += 1;
                    }
                    Ok(PacketKind::Short { first_octet, dcid }) => {
                        assert_eq!(first_octet & 0x80, 0);
                        assert!(dcid.len() < len);
                        ok += 1;
                    }
                    Err(_) => {}
                }
            }
        }
        assert!(ok > 10_000, "only {ok} parsed");
    }
}

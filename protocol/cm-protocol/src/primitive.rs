//! The field encodings frames are made of: single octets, LEB128 varints,
//! length-prefixed byte strings and strings, optional strings behind a `0`/`1`
//! presence octet.
//!
//! [`Reader`] checks every length against the bytes actually left before it
//! takes or allocates anything, so a hostile length costs an error, not memory.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::tag::FrameTag;

/// Longest LEB128 encoding of a `u64`, in octets.
const MAX_VARINT_LEN: u32 = 10;

/// Appends fields to a frame being encoded.
pub(crate) struct Writer<'a>(&'a mut BytesMut);

impl<'a> Writer<'a> {
    /// Writes after the current end of `out`.
    pub(crate) fn new(out: &'a mut BytesMut) -> Self {
        Writer(out)
    }

    /// The frame's type octet.
    pub(crate) fn tag(&mut self, tag: FrameTag) {
        self.u8(u8::from(tag));
    }

    /// One raw octet.
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.put_u8(v);
    }

    /// A boolean field: `0` or `1`.
    pub(crate) fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    /// The octet in front of an optional value (`1`: present) or of a
    /// result (`1`: the error follows, `0`: the success value).
    pub(crate) fn flag(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    /// One octet, two's complement.
    pub(crate) fn i8(&mut self, v: i8) {
        self.u8(v as u8);
    }

    /// A LEB128 varint.
    pub(crate) fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.put_u8((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.put_u8(v as u8);
    }

    /// A varint length, then the bytes.
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.varint(b.len() as u64);
        self.0.put_slice(b);
    }

    /// A string as its UTF-8 bytes.
    pub(crate) fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    /// `0`, or `1` then the string.
    pub(crate) fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.flag(true);
                self.str(s);
            }
            None => self.flag(false),
        }
    }
}

/// Takes fields off the front of one frame's body.
pub(crate) struct Reader(Bytes);

impl Reader {
    /// Reads `body` from its start.
    pub(crate) fn new(body: Bytes) -> Self {
        Reader(body)
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.0.remaining()
    }

    /// Succeeds when every byte was read: a frame has no trailing bytes.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.0.has_remaining() {
            Err(DecodeError::Invalid)
        } else {
            Ok(())
        }
    }

    /// One raw octet.
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.0.has_remaining() {
            Ok(self.0.get_u8())
        } else {
            Err(DecodeError::Truncated)
        }
    }

    /// A boolean field: any octet but `0` is true.
    pub(crate) fn bool(&mut self) -> Result<bool, DecodeError> {
        Ok(self.u8()? != 0)
    }

    /// The octet in front of an optional value (`1`: present) or of a
    /// result (`1`: the error follows): strictly `0` or `1`.
    pub(crate) fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid),
        }
    }

    /// One octet, two's complement.
    pub(crate) fn i8(&mut self) -> Result<i8, DecodeError> {
        Ok(self.u8()? as i8)
    }

    /// A LEB128 varint of at most ten octets. Bits above 64 in the tenth
    /// octet are dropped.
    pub(crate) fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for i in 0..MAX_VARINT_LEN {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::Invalid)
    }

    /// A varint that must fit a `u16`.
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        u16::try_from(self.varint()?).map_err(|_| DecodeError::Invalid)
    }

    /// A varint that must fit a `u32`.
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        u32::try_from(self.varint()?).map_err(|_| DecodeError::Invalid)
    }

    /// A varint count of items that each take at least one octet: more than
    /// the bytes left is a truncated frame. Bounds any allocation by the
    /// frame's size.
    pub(crate) fn count(&mut self) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        if n > self.remaining() as u64 {
            return Err(DecodeError::Truncated);
        }
        // n <= remaining, which is a usize
        Ok(n as usize)
    }

    /// A varint length, then that many bytes (shared with the frame, not
    /// copied).
    pub(crate) fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        let len = usize::try_from(self.varint()?).map_err(|_| DecodeError::Invalid)?;
        if self.0.remaining() < len {
            return Err(DecodeError::Truncated);
        }
        Ok(self.0.split_to(len))
    }

    /// A length-prefixed UTF-8 string.
    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| DecodeError::Invalid)
    }

    /// `0`, or `1` then a string.
    pub(crate) fn opt_string(&mut self) -> Result<Option<String>, DecodeError> {
        if self.flag()? {
            self.string().map(Some)
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(f: impl FnOnce(&mut Writer<'_>)) -> Bytes {
        let mut out = BytesMut::new();
        f(&mut Writer::new(&mut out));
        out.freeze()
    }

    #[test]
    fn varints_use_seven_bits_per_octet_low_group_first() {
        for (v, wire) in [
            (0u64, &[0x00][..]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (300, &[0xac, 0x02]),
            (
                u64::MAX,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ] {
            assert_eq!(written(|w| w.varint(v)).as_ref(), wire);
            let mut r = Reader::new(Bytes::copy_from_slice(wire));
            assert_eq!(r.varint(), Ok(v));
            assert_eq!(r.finish(), Ok(()));
        }
    }

    #[test]
    fn varint_longer_than_ten_octets_is_invalid() {
        let mut r = Reader::new(Bytes::from_static(&[0x80; 11]));
        assert_eq!(r.varint(), Err(DecodeError::Invalid));
    }

    #[test]
    fn varint_cut_short_is_truncated() {
        let mut r = Reader::new(Bytes::from_static(&[0x80, 0x80]));
        assert_eq!(r.varint(), Err(DecodeError::Truncated));
    }

    #[test]
    fn length_beyond_the_body_is_truncated() {
        let mut huge = written(|w| w.varint(u64::MAX)).to_vec();
        huge.extend_from_slice(b"abc");
        assert_eq!(
            Reader::new(Bytes::from(huge)).bytes(),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            Reader::new(Bytes::from_static(&[4, b'a', b'b', b'c'])).string(),
            Err(DecodeError::Truncated)
        );
    }

    #[test]
    fn count_beyond_the_bytes_left_is_truncated() {
        assert_eq!(
            Reader::new(Bytes::from_static(&[3, 1, 2])).count(),
            Err(DecodeError::Truncated)
        );
        assert_eq!(Reader::new(Bytes::from_static(&[2, 1, 2])).count(), Ok(2));
    }

    #[test]
    fn strings_must_be_utf8() {
        assert_eq!(
            Reader::new(Bytes::from_static(&[1, 0xff])).string(),
            Err(DecodeError::Invalid)
        );
    }

    #[test]
    fn optional_string_presence_octet_is_zero_or_one() {
        let some = written(|w| w.opt_str(Some("x")));
        assert_eq!(some.as_ref(), &[1, 1, b'x']);
        assert_eq!(Reader::new(some).opt_string(), Ok(Some("x".into())));
        let none = written(|w| w.opt_str(None));
        assert_eq!(none.as_ref(), &[0]);
        assert_eq!(Reader::new(none).opt_string(), Ok(None));
        assert_eq!(
            Reader::new(Bytes::from_static(&[2, 1, b'x'])).opt_string(),
            Err(DecodeError::Invalid)
        );
    }

    #[test]
    fn booleans_read_any_nonzero_octet_as_true() {
        assert_eq!(written(|w| w.bool(true)).as_ref(), &[1]);
        assert_eq!(Reader::new(Bytes::from_static(&[7])).bool(), Ok(true));
        assert_eq!(Reader::new(Bytes::from_static(&[0])).bool(), Ok(false));
    }

    #[test]
    fn trailing_bytes_are_invalid() {
        let mut r = Reader::new(Bytes::from_static(&[1, 2]));
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.finish(), Err(DecodeError::Invalid));
    }
}

//! Primitives of Kafka's wire format for hand-written, zero-copy walks of
//! request bodies. Every length read from the input is checked against the
//! bytes that are left before anything is allocated, so a hostile length
//! cannot make the gateway reserve memory.

use std::ops::Range;

use bytes::{BufMut, BytesMut};

use crate::error::Malformed;

type Result<T> = std::result::Result<T, Malformed>;

/// Most array elements one walk of a request reads (all arrays together).
/// An element may take one byte on the wire while the gateway keeps about
/// a hundred for it (its range, name and check, the error it may be
/// answered with), so the frame limit alone would let one 100 MiB request
/// cost gigabytes; a quarter million elements is far more than any client
/// sends (a Fetch of every partition of a large cluster) and costs tens of
/// MB at most.
pub(crate) const MAX_ELEMENTS: usize = 1 << 18;

/// A cursor over a frame body.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Array elements announced so far, against [`MAX_ELEMENTS`].
    elements: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], pos: usize) -> Self {
        Reader {
            buf,
            pos,
            elements: 0,
        }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        if self.remaining() < n {
            return Err(Malformed::new(what, self.pos));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn skip(&mut self, n: usize, what: &'static str) -> Result<()> {
        self.take(n, what).map(|_| ())
    }

    pub(crate) fn i8(&mut self, what: &'static str) -> Result<i8> {
        Ok(self.take(1, what)?[0] as i8)
    }

    pub(crate) fn i16(&mut self, what: &'static str) -> Result<i16> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn i32(&mut self, what: &'static str) -> Result<i32> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn i64(&mut self, what: &'static str) -> Result<i64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    pub(crate) fn uuid(&mut self, what: &'static str) -> Result<[u8; 16]> {
        let b = self.take(16, what)?;
        let mut a = [0u8; 16];
        a.copy_from_slice(b);
        Ok(a)
    }

    /// An unsigned varint of at most five bytes (u32).
    pub(crate) fn uvarint(&mut self, what: &'static str) -> Result<u32> {
        let start = self.pos;
        let mut value: u32 = 0;
        for i in 0..5 {
            let b = self.take(1, what)?[0];
            if i == 4 && b > 0x0f {
                return Err(Malformed::new(what, start));
            }
            value |= ((b & 0x7f) as u32) << (i * 7);
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err(Malformed::new(what, start))
    }

    /// The length prefix of a nullable string (`wide`: false, i16) or bytes
    /// (`wide`: true, i32), or in flexible versions a varint length + 1.
    /// `None` is null (-1); any other negative length is malformed.
    fn nullable_len(
        &mut self,
        flexible: bool,
        wide: bool,
        what: &'static str,
    ) -> Result<Option<usize>> {
        let at = self.pos;
        let len: i64 = if flexible {
            self.uvarint(what)? as i64 - 1
        } else if wide {
            self.i32(what)? as i64
        } else {
            self.i16(what)? as i64
        };
        match len {
            -1 => Ok(None),
            n if n < 0 => Err(Malformed::new(what, at)),
            n => Ok(Some(n as usize)),
        }
    }

    /// A (nullable) string: i16 length, or in flexible versions a varint
    /// length + 1 (0 = null). Returns its byte range, checked to be UTF-8.
    pub(crate) fn string(
        &mut self,
        flexible: bool,
        what: &'static str,
    ) -> Result<Option<Range<usize>>> {
        let Some(len) = self.nullable_len(flexible, false, what)? else {
            return Ok(None);
        };
        let start = self.pos;
        let s = self.take(len, what)?;
        if std::str::from_utf8(s).is_err() {
            return Err(Malformed::new(what, start));
        }
        Ok(Some(start..self.pos))
    }

    /// A non-null string.
    pub(crate) fn required_string(
        &mut self,
        flexible: bool,
        what: &'static str,
    ) -> Result<Range<usize>> {
        let at = self.pos;
        self.string(flexible, what)?
            .ok_or_else(|| Malformed::new(what, at))
    }

    /// (Nullable) bytes: i32 length, or in flexible versions a varint length + 1.
    pub(crate) fn bytes(
        &mut self,
        flexible: bool,
        what: &'static str,
    ) -> Result<Option<Range<usize>>> {
        let Some(len) = self.nullable_len(flexible, true, what)? else {
            return Ok(None);
        };
        let start = self.pos;
        self.skip(len, what)?;
        Ok(Some(start..self.pos))
    }

    /// An array's element count (`None` for a null array). Every element
    /// takes at least one byte, so a count larger than what is left is
    /// refused here.
    pub(crate) fn array(&mut self, flexible: bool, what: &'static str) -> Result<Option<usize>> {
        let at = self.pos;
        let n: i64 = if flexible {
            self.uvarint(what)? as i64 - 1
        } else {
            self.i32(what)? as i64
        };
        if n < 0 {
            if n == -1 {
                return Ok(None);
            }
            return Err(Malformed::new(what, at));
        }
        if n as usize > self.remaining() {
            return Err(Malformed::new(what, at));
        }
        self.elements += n as usize;
        if self.elements > MAX_ELEMENTS {
            return Err(Malformed::new(
                "more array elements than the gateway reads in one request (262144)",
                at,
            ));
        }
        Ok(Some(n as usize))
    }

    /// A non-null array's element count.
    pub(crate) fn required_array(&mut self, flexible: bool, what: &'static str) -> Result<usize> {
        let at = self.pos;
        self.array(flexible, what)?
            .ok_or_else(|| Malformed::new(what, at))
    }

    /// Skips a tagged-field section (flexible versions only).
    pub(crate) fn skip_tags(&mut self, flexible: bool) -> Result<()> {
        if !flexible {
            return Ok(());
        }
        let n = self.uvarint("tagged fields")?;
        if n as usize > self.remaining() {
            return Err(Malformed::new("tagged fields", self.pos));
        }
        for _ in 0..n {
            self.uvarint("tag")?;
            let len = self.uvarint("tagged field size")?;
            self.skip(len as usize, "tagged field")?;
        }
        Ok(())
    }

    /// An array of i32 (partition indexes), collected.
    pub(crate) fn i32_array(&mut self, flexible: bool, what: &'static str) -> Result<Vec<i32>> {
        let n = self.array(flexible, what)?.unwrap_or(0);
        if n.saturating_mul(4) > self.remaining() {
            return Err(Malformed::new(what, self.pos));
        }
        (0..n).map(|_| self.i32(what)).collect()
    }
}

/// The string at `range` of `buf` (ranges come from [`Reader::string`],
/// which checked UTF-8).
pub(crate) fn str_at(buf: &[u8], range: Range<usize>) -> &str {
    std::str::from_utf8(&buf[range]).unwrap_or_default()
}

/// Encodes an array count as the version's format has it.
pub(crate) fn put_array_len(out: &mut BytesMut, flexible: bool, n: usize) {
    if flexible {
        put_uvarint(out, n as u32 + 1);
    } else {
        out.put_i32(n as i32);
    }
}

pub(crate) fn put_uvarint(out: &mut BytesMut, mut v: u32) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_in_both_encodings() {
        let buf = [0, 3, b'a', b'b', b'c', 4, b'x', b'y', b'z', 0xff, 0xff, 0];
        let mut r = Reader::new(&buf, 0);
        assert_eq!(str_at(&buf, r.string(false, "s").unwrap().unwrap()), "abc");
        assert_eq!(str_at(&buf, r.string(true, "s").unwrap().unwrap()), "xyz");
        assert_eq!(r.string(false, "s").unwrap(), None);
        assert_eq!(r.string(true, "s").unwrap(), None);
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn hostile_lengths_are_refused_without_allocating() {
        // An array claiming 2^31-1 elements in a 10-byte buffer.
        let buf = [0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0];
        let err = Reader::new(&buf, 0).array(false, "topics").unwrap_err();
        assert_eq!(err, Malformed::new("topics", 0));
        // A varint that never ends.
        let buf = [0xff; 8];
        assert!(Reader::new(&buf, 0).uvarint("n").is_err());
        // A string longer than the buffer.
        let buf = [0, 50, b'a'];
        assert!(Reader::new(&buf, 0).string(false, "name").is_err());
        // Invalid UTF-8.
        let buf = [0, 1, 0xff];
        assert!(Reader::new(&buf, 0).string(false, "name").is_err());
    }

    #[test]
    fn varints_round_trip() {
        for v in [0u32, 1, 127, 128, 300, 16_383, 16_384, u32::MAX] {
            let mut out = BytesMut::new();
            put_uvarint(&mut out, v);
            assert_eq!(Reader::new(&out, 0).uvarint("v").unwrap(), v);
        }
    }
}

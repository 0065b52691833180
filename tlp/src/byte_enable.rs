//! First/Last DW Byte Enables: from a byte range to the header fields and back (PCIe Base Spec
//! r6.3 §2.2.5.1 "Byte Enable Rules for Non-Flit Mode").
//!
//! A memory, I/O or configuration request addresses whole DWs (Address\[1:0\] is not sent) and
//! says which bytes of the first and last DW take part with two 4-bit masks. Bit *i* of First DW
//! BE enables byte *i* of the first DW; bit *i* of Last DW BE enables byte *i* of the last DW; all
//! bytes of the DWs in between are enabled. The rules this module knows:
//!
//! - Length 1 DW: Last DW BE must be 0000b. First DW BE 0000b with Length 1 is the zero-length
//!   request (a read used as a flush, or a write with no effect) — what [`ByteEnables::for_range`]
//!   returns for an empty range.
//! - Length > 1 DW: neither field may be 0000b.
//! - Non-contiguous enables (enabled bytes separated by disabled ones) are allowed only in First
//!   DW BE of a 1 DW request, and in both fields of a QW-aligned 2 DW memory request; everything
//!   else must enable one contiguous run (First DW BE one of 1111b/1110b/1100b/1000b, Last DW BE
//!   one of 0001b/0011b/0111b/1111b).
//! - The byte count a read asks for is the span from the first to the last enabled byte (Table
//!   2-40), 1 for a zero-length read; the Lower Address of its first completion ends in the
//!   offset of the first enabled byte (Table 2-41).
//!
//! [`enabled_runs`] turns a (possibly non-contiguous) pair of masks into the contiguous byte
//! runs a completer must access, so that disabled bytes with read side effects are never touched.

use crate::TlpError;

/// The largest Length a TLP can carry: 1024 DW (the wire value 0).
pub const MAX_LENGTH_DW: u16 = 1024;

/// The byte-enable fields and Length (in DW, 1..=1024) of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ByteEnables {
    /// First DW BE\[3:0\].
    pub first_be: u8,
    /// Last DW BE\[3:0\]; 0 when `length_dw` is 1.
    pub last_be: u8,
    /// Length in DW, 1..=1024 (not the raw field: 1024 is 1024 here).
    pub length_dw: u16,
}

impl ByteEnables {
    /// The zero-length form: Length 1, both fields 0000b.
    pub const ZERO_LENGTH: ByteEnables = ByteEnables { first_be: 0, last_be: 0, length_dw: 1 };

    /// The enables and Length for `len_bytes` bytes starting at byte `address`. An empty range
    /// gives [`ByteEnables::ZERO_LENGTH`]. Fails when the DWs touched exceed 1024 (4096 bytes
    /// starting DW-aligned, fewer otherwise).
    pub fn for_range(address: u64, len_bytes: u32) -> Result<Self, TlpError> {
        if len_bytes == 0 {
            return Ok(Self::ZERO_LENGTH);
        }
        let start_offset = (address & 3) as u32;
        let span = start_offset as u64 + len_bytes as u64;
        let length_dw = span.div_ceil(4);
        if length_dw > MAX_LENGTH_DW as u64 {
            return Err(TlpError::RequestTooLong { address, len: len_bytes as u64, length_dw });
        }
        // Bytes of the last DW that are enabled: 1..=4.
        let end_bytes = (span - 1) % 4 + 1;
        let first_mask = (0xf_u8 << start_offset) & 0xf;
        let last_mask = 0xf_u8 >> (4 - end_bytes);
        Ok(if length_dw == 1 {
            ByteEnables { first_be: first_mask & last_mask, last_be: 0, length_dw: 1 }
        } else {
            ByteEnables { first_be: first_mask, last_be: last_mask, length_dw: length_dw as u16 }
        })
    }

    /// True for the zero-length form (Length 1, no byte enabled).
    pub const fn is_zero_length(&self) -> bool {
        self.length_dw == 1 && self.first_be & 0xf == 0
    }

    /// Offset of the first enabled byte within the first DW, Lower Address\[1:0\] of Table 2-41
    /// (0 for the zero-length form).
    pub const fn first_enabled_offset(&self) -> u8 {
        let be = self.first_be & 0xf;
        if be == 0 { 0 } else { be.trailing_zeros() as u8 }
    }

    /// Lower Address\[6:0\] of the first (or only) completion for a read of these bytes at the
    /// DW address `dw_address`: address bits \[6:2\] and the first enabled byte's offset.
    pub const fn lower_address(&self, dw_address: u64) -> u8 {
        (dw_address as u8 & 0x7c) | self.first_enabled_offset()
    }

    /// The byte count of Table 2-40: from the first to the last enabled byte inclusive (disabled
    /// bytes between them count), and 1 when no byte is enabled (the zero-length form). This is
    /// the Byte Count of the first completion of a read.
    pub fn byte_count(&self) -> u16 {
        match self.enabled_span() {
            (_, 0) => 1,
            // A span is at most 1024 DW = 4096 bytes.
            (_, len) => len as u16,
        }
    }

    /// The bytes a successful read returns (or a write affects) from the first to the last
    /// enabled byte: `(offset of the first enabled byte from the DW address, length)`; `(0, 0)`
    /// when no byte is enabled.
    pub fn enabled_span(&self) -> (u32, u32) {
        let mut runs = self.runs();
        let Some((first, len)) = runs.next() else {
            return (0, 0);
        };
        let end = runs.last().map_or(first + len, |(offset, len)| offset + len);
        (first, end - first)
    }

    /// Back to a byte range: `(address of the first enabled byte, span length)` for a request
    /// at DW address `dw_address` (the inverse of [`ByteEnables::for_range`] for contiguous
    /// enables; for non-contiguous ones the span includes the disabled bytes between).
    pub fn byte_range(&self, dw_address: u64) -> (u64, u32) {
        let (offset, len) = self.enabled_span();
        // Wrapping: only hand-built, rule-breaking enables put the first byte beyond the first DW.
        ((dw_address & !3).wrapping_add(offset as u64), len)
    }

    /// True when the enabled bytes form one run (also true for the zero-length form).
    pub fn is_contiguous(&self) -> bool {
        let mut runs = self.runs();
        runs.next();
        runs.next().is_none()
    }

    /// Whether byte `offset` (counted from the DW address) is enabled.
    pub const fn is_enabled(&self, offset: u32) -> bool {
        let len = self.length_dw as u32 * 4;
        if offset >= len {
            return false;
        }
        if offset < 4 {
            return self.first_be >> offset & 1 != 0;
        }
        if offset >= len - 4 && self.length_dw > 1 {
            return self.last_be >> (offset - (len - 4)) & 1 != 0;
        }
        true
    }

    /// The contiguous runs of enabled bytes, in increasing order (see [`enabled_runs`]).
    pub fn runs(&self) -> EnabledRuns {
        enabled_runs(self.first_be, self.last_be, self.length_dw)
    }

    /// Checks the §2.2.5.1 rules for a request at DW address `dw_address`. `memory` selects the
    /// memory-request exception for QW-aligned 2 DW requests; for I/O and configuration requests
    /// Length must also be 1.
    pub fn check(&self, dw_address: u64, memory: bool) -> Result<(), TlpError> {
        let violation = |rule: &'static str| TlpError::ByteEnables {
            first_be: self.first_be,
            last_be: self.last_be,
            length_dw: self.length_dw,
            rule,
        };
        if self.first_be > 0xf || self.last_be > 0xf {
            return Err(violation("byte-enable fields are 4 bits wide"));
        }
        if self.length_dw == 0 || self.length_dw > MAX_LENGTH_DW {
            return Err(violation("Length must be 1..=1024 DW"));
        }
        if !memory && self.length_dw != 1 {
            return Err(violation("I/O and configuration requests have Length 1"));
        }
        if self.length_dw == 1 {
            if self.last_be != 0 {
                return Err(violation("Last DW BE must be 0000b when Length is 1 DW"));
            }
            return Ok(());
        }
        if self.first_be == 0 {
            return Err(violation("First DW BE must not be 0000b when Length is more than 1 DW"));
        }
        if self.last_be == 0 {
            return Err(violation("Last DW BE must not be 0000b when Length is more than 1 DW"));
        }
        let qw_aligned_two_dw = memory && self.length_dw == 2 && dw_address & 4 == 0;
        if !qw_aligned_two_dw {
            // Contiguous with the data in between: First DW BE ends at byte 3 (no gap above its
            // lowest set bit), Last DW BE starts at byte 0.
            let first_contiguous = self.first_be == (0xf << self.first_be.trailing_zeros()) & 0xf;
            let last_contiguous = (self.last_be + 1) & self.last_be == 0;
            if !first_contiguous || !last_contiguous {
                return Err(violation(
                    "enabled bytes must be contiguous unless Length is 1 DW or a QW-aligned 2 DW memory request",
                ));
            }
        }
        Ok(())
    }
}

/// The contiguous runs of enabled bytes of a request with these fields, as `(offset, len)`
/// pairs counted from the request's DW address, in increasing order. Length 1 ignores `last_be`;
/// a zero-length request has no runs. The bridge turns each run into one access so that
/// disabled bytes are neither written nor read.
pub fn enabled_runs(first_be: u8, last_be: u8, length_dw: u16) -> EnabledRuns {
    let length_dw = length_dw.clamp(1, MAX_LENGTH_DW);
    EnabledRuns {
        enables: ByteEnables {
            first_be: first_be & 0xf,
            last_be: if length_dw == 1 { 0 } else { last_be & 0xf },
            length_dw,
        },
        offset: 0,
    }
}

/// Iterator returned by [`enabled_runs`]; yields `(offset, len)`.
#[derive(Clone, Debug)]
pub struct EnabledRuns {
    enables: ByteEnables,
    offset: u32,
}

impl EnabledRuns {
    /// The next byte offset whose enable may differ from `offset`'s: the next byte inside the
    /// first and last DW, and the start of the last DW from inside the middle ones (all enabled).
    fn next_boundary(&self, offset: u32) -> u32 {
        let len = self.enables.length_dw as u32 * 4;
        if offset >= 3 && offset < len - 4 { len - 4 } else { offset + 1 }
    }
}

impl Iterator for EnabledRuns {
    type Item = (u32, u32);

    fn next(&mut self) -> Option<(u32, u32)> {
        let len = self.enables.length_dw as u32 * 4;
        while self.offset < len && !self.enables.is_enabled(self.offset) {
            self.offset += 1;
        }
        if self.offset >= len {
            return None;
        }
        let start = self.offset;
        let mut end = start + 1;
        while end < len && self.enables.is_enabled(end) {
            end = self.next_boundary(end).max(end + 1);
        }
        self.offset = end;
        Some((start, end - start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_2_40_byte_counts() {
        let one = |first_be| ByteEnables { first_be, last_be: 0, length_dw: 1 }.byte_count();
        assert_eq!(one(0b1001), 4);
        assert_eq!(one(0b1111), 4);
        assert_eq!(one(0b0101), 3);
        assert_eq!(one(0b1010), 3);
        assert_eq!(one(0b0011), 2);
        assert_eq!(one(0b0110), 2);
        assert_eq!(one(0b1100), 2);
        assert_eq!(one(0b0100), 1);
        assert_eq!(one(0b0000), 1);
        let many = |first_be, last_be| ByteEnables { first_be, last_be, length_dw: 4 }.byte_count();
        assert_eq!(many(0b0001, 0b1000), 16);
        assert_eq!(many(0b1011, 0b0100), 15);
        assert_eq!(many(0b0010, 0b0001), 12);
        assert_eq!(many(0b1100, 0b0010), 12);
        assert_eq!(many(0b1000, 0b0001), 10); // Figure 2-92
    }

    #[test]
    fn table_2_41_lower_address() {
        let la = |first_be| ByteEnables { first_be, last_be: 0, length_dw: 1 }.lower_address(0x1234_5678);
        assert_eq!(la(0b0000), 0x78);
        assert_eq!(la(0b0111), 0x78);
        assert_eq!(la(0b0110), 0x79);
        assert_eq!(la(0b1100), 0x7a);
        assert_eq!(la(0b1000), 0x7b);
    }

    #[test]
    fn for_range_examples() {
        assert_eq!(ByteEnables::for_range(0x1000, 0).unwrap(), ByteEnables::ZERO_LENGTH);
        assert_eq!(
            ByteEnables::for_range(0x1001, 2).unwrap(),
            ByteEnables { first_be: 0b0110, last_be: 0, length_dw: 1 }
        );
        assert_eq!(
            ByteEnables::for_range(0x1003, 2).unwrap(),
            ByteEnables { first_be: 0b1000, last_be: 0b0001, length_dw: 2 }
        );
        assert_eq!(
            ByteEnables::for_range(0x1002, 9).unwrap(),
            ByteEnables { first_be: 0b1100, last_be: 0b0111, length_dw: 3 }
        );
        assert_eq!(
            ByteEnables::for_range(0x1000, 4096).unwrap(),
            ByteEnables { first_be: 0xf, last_be: 0xf, length_dw: 1024 }
        );
        assert!(matches!(
            ByteEnables::for_range(0x1001, 4096),
            Err(TlpError::RequestTooLong { length_dw: 1025, .. })
        ));
    }

    #[test]
    fn runs_of_non_contiguous_enables() {
        assert_eq!(enabled_runs(0b1011, 0, 1).collect::<Vec<_>>(), [(0, 2), (3, 1)]);
        assert_eq!(enabled_runs(0b0101, 0b1010, 2).collect::<Vec<_>>(), [(0, 1), (2, 1), (5, 1), (7, 1)]);
        assert_eq!(enabled_runs(0b1100, 0b0011, 3).collect::<Vec<_>>(), [(2, 8)]);
        assert_eq!(enabled_runs(0b1111, 0b1111, 1024).collect::<Vec<_>>(), [(0, 4096)]);
        assert_eq!(enabled_runs(0, 0, 1).count(), 0);
        // Length 1 ignores Last DW BE.
        assert_eq!(enabled_runs(0b0001, 0b1111, 1).collect::<Vec<_>>(), [(0, 1)]);
    }

    #[test]
    fn rules_of_2_2_5_1() {
        let be = |first_be, last_be, length_dw| ByteEnables { first_be, last_be, length_dw };
        assert!(be(0b1010, 0, 1).check(0x1004, true).is_ok());
        assert!(be(0b1111, 0b0001, 1).check(0x1000, true).is_err());
        assert!(be(0, 0b0001, 2).check(0x1000, true).is_err());
        assert!(be(0b0001, 0, 2).check(0x1000, true).is_err());
        // Non-contiguous 2 DW: legal only when QW-aligned and a memory request.
        assert!(be(0b0101, 0b1010, 2).check(0x1000, true).is_ok());
        assert!(be(0b0101, 0b1010, 2).check(0x1004, true).is_err());
        assert!(be(0b1110, 0b0111, 2).check(0x1004, true).is_ok());
        assert!(be(0b0111, 0b0111, 3).check(0x1000, true).is_err());
        assert!(be(0b1110, 0b1110, 3).check(0x1000, true).is_err());
        assert!(be(0b1111, 0b1111, 2).check(0x1000, false).is_err());
        assert!(be(0x10, 0, 1).check(0x1000, true).is_err());
    }
}

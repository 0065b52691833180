//! Byte enables from and back to byte ranges (PCIe Base Spec r6.3 §2.2.5.1, Tables 2-40/2-41).

use proptest::prelude::*;
use tlp::byte_enable::{ByteEnables, enabled_runs};

/// Reference: is byte `offset` of a request with these fields enabled?
fn enabled(first_be: u8, last_be: u8, length_dw: u16, offset: u32) -> bool {
    let dw = offset / 4;
    let bit = offset % 4;
    if dw == 0 {
        first_be >> bit & 1 != 0
    } else if dw + 1 == length_dw as u32 {
        last_be >> bit & 1 != 0
    } else {
        dw < length_dw as u32
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn range_to_enables_and_back(address in 0u64..1 << 48, len in 0u32..=4093) {
        let be = ByteEnables::for_range(address, len).unwrap();
        prop_assert!(be.check(address & !3, true).is_ok());
        prop_assert!(be.is_contiguous());
        prop_assert_eq!(be.length_dw as u64, if len == 0 { 1 } else { ((address & 3) + len as u64).div_ceil(4) });
        prop_assert_eq!(be.byte_range(address & !3), (if len == 0 { address & !3 } else { address }, len));
        prop_assert_eq!(be.is_zero_length(), len == 0);
        prop_assert_eq!(be.byte_count() as u32, len.max(1));
        prop_assert_eq!(be.lower_address(address & !3), (address & if len == 0 { 0x7c } else { 0x7f }) as u8);
        let runs: Vec<(u32, u32)> = be.runs().collect();
        if len == 0 {
            prop_assert!(runs.is_empty());
        } else {
            prop_assert_eq!(runs, vec![((address & 3) as u32, len)]);
        }
    }

    #[test]
    fn runs_are_exactly_the_enabled_bytes(first_be in 0u8..16, last_be in 0u8..16, length_dw in 1u16..=1024) {
        let last_be = if length_dw == 1 { 0 } else { last_be };
        let runs: Vec<(u32, u32)> = enabled_runs(first_be, last_be, length_dw).collect();
        let be = ByteEnables { first_be, last_be, length_dw };
        let total = length_dw as u32 * 4;
        let mut covered = vec![false; total as usize];
        let mut previous_end = None;
        for &(offset, len) in &runs {
            prop_assert!(len > 0);
            // In order, and separated by at least one disabled byte (maximal runs).
            if let Some(end) = previous_end {
                prop_assert!(offset > end);
            }
            previous_end = Some(offset + len);
            covered[offset as usize..(offset + len) as usize].fill(true);
        }
        for offset in 0..total {
            let on = enabled(first_be, last_be, length_dw, offset);
            prop_assert_eq!(covered[offset as usize], on);
            prop_assert_eq!(be.is_enabled(offset), on);
        }
        prop_assert_eq!(be.is_contiguous(), runs.len() <= 1);
        // Table 2-40: first to last enabled byte (1 for the zero-length form).
        if let (Some(&(first, _)), Some(&(last, last_len))) = (runs.first(), runs.last()) {
            let span = last + last_len - first;
            prop_assert_eq!(be.enabled_span(), (first, span));
            prop_assert_eq!(be.byte_count() as u32, span);
            if first_be != 0 {
                // Table 2-41 (Lower Address[1:0]) looks at First DW BE only.
                prop_assert_eq!(be.first_enabled_offset() as u32, first);
            }
        } else {
            prop_assert_eq!(be.byte_count(), 1);
            prop_assert_eq!(be.enabled_span(), (0, 0));
        }
    }
}

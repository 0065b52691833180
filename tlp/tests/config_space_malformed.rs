//! Malformed config images: every broken capability chain and BAR is an error naming the
//! offending offset, never a panic or an endless walk.

use tlp::TlpError;
use tlp::config_space::*;

/// A 256-byte image with the Capabilities List bit set and `pieces` written in.
fn image(len: usize, pieces: &[(u16, &[u8])]) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    bytes[0x06] = Status::CAPABILITIES_LIST as u8; // Status 0x0010
    for (offset, piece) in pieces {
        let start = usize::from(*offset);
        bytes[start..start + piece.len()].copy_from_slice(piece);
    }
    bytes
}

/// Walks the standard list; returns the capabilities seen and the error that ended the walk.
fn walk(bytes: &[u8]) -> (Vec<u16>, Option<TlpError>) {
    let view = ConfigView::new(bytes).unwrap();
    let mut seen = Vec::new();
    for cap in view.capabilities() {
        match cap {
            Ok(cap) => seen.push(cap.offset),
            Err(e) => return (seen, Some(e)),
        }
    }
    (seen, None)
}

fn walk_extended(bytes: &[u8]) -> (Vec<u16>, Option<TlpError>) {
    let view = ConfigView::new(bytes).unwrap();
    let mut seen = Vec::new();
    for cap in view.extended_capabilities() {
        match cap {
            Ok(cap) => seen.push(cap.offset),
            Err(e) => return (seen, Some(e)),
        }
    }
    (seen, None)
}

fn chain_error(chain: CapabilityChain, at: u16, pointer: u16, problem: ChainProblem) -> Option<TlpError> {
    Some(TlpError::CapabilityChain { chain, at, pointer, problem })
}

#[test]
fn loop_is_reported_at_the_pointer_that_closes_it() {
    // 0x34 → 0x40 → 0x50 → 0x40 again.
    let bytes = image(256, &[(0x34, &[0x40]), (0x40, &[0x01, 0x50]), (0x50, &[0x05, 0x40])]);
    let (seen, err) = walk(&bytes);
    assert_eq!(seen, [0x40, 0x50]);
    assert_eq!(err, chain_error(CapabilityChain::Standard, 0x51, 0x40, ChainProblem::Loop));
    let message = err.unwrap().to_string();
    assert!(message.contains("0x051") && message.contains("loop"), "{message}");
}

#[test]
fn self_loop() {
    let bytes = image(256, &[(0x34, &[0x40]), (0x40, &[0x01, 0x40])]);
    assert_eq!(
        walk(&bytes),
        (vec![0x40], chain_error(CapabilityChain::Standard, 0x41, 0x40, ChainProblem::Loop))
    );
}

#[test]
fn pointer_into_the_header() {
    let bytes = image(256, &[(0x34, &[0x20])]);
    assert_eq!(
        walk(&bytes),
        (vec![], chain_error(CapabilityChain::Standard, 0x34, 0x20, ChainProblem::IntoHeader))
    );
    let bytes = image(256, &[(0x34, &[0x40]), (0x40, &[0x01, 0x3c])]);
    let (seen, err) = walk(&bytes);
    assert_eq!(seen, [0x40]);
    assert_eq!(err, chain_error(CapabilityChain::Standard, 0x41, 0x3c, ChainProblem::IntoHeader));
    assert!(err.unwrap().to_string().contains("points into the header"));
}

#[test]
fn unaligned_pointer() {
    let bytes = image(256, &[(0x34, &[0x40]), (0x40, &[0x01, 0x52])]);
    assert_eq!(
        walk(&bytes),
        (vec![0x40], chain_error(CapabilityChain::Standard, 0x41, 0x52, ChainProblem::Unaligned))
    );
}

#[test]
fn pointer_beyond_a_short_image() {
    // A 128-byte image (the first half of a PCI space) cannot hold a capability at 0x80.
    let bytes = image(128, &[(0x34, &[0x40]), (0x40, &[0x01, 0x80])]);
    assert_eq!(
        walk(&bytes),
        (vec![0x40], chain_error(CapabilityChain::Standard, 0x41, 0x80, ChainProblem::BeyondEnd))
    );
}

#[test]
fn capability_list_bit_clear_means_no_list() {
    let mut bytes = image(256, &[(0x34, &[0x40]), (0x40, &[0x01, 0x00])]);
    bytes[0x06] = 0;
    assert_eq!(walk(&bytes), (vec![], None));
}

#[test]
fn truncated_capability_body() {
    // A 64-bit maskable MSI capability needs 0x18 bytes; at 0xf0 it runs past 0x100.
    let bytes = image(4096, &[(0x34, &[0xf0]), (0xf0, &[0x05, 0x00, 0x80, 0x01])]);
    let view = ConfigView::new(&bytes).unwrap();
    let cap = view.capabilities().next().unwrap().unwrap();
    let err = cap.decode(&view).unwrap_err();
    assert_eq!(err, TlpError::CapabilityTruncated { name: "MSI", offset: 0xf0, needed: 0x18, limit: 0x100 });
    assert!(err.to_string().contains("0x0f0"));
    // The same through the convenience getter.
    assert_eq!(view.msi(), Err(err));
}

#[test]
fn decoder_at_the_wrong_capability() {
    let bytes = image(256, &[(0x34, &[0x40]), (0x40, &[0x01, 0x00])]);
    let view = ConfigView::new(&bytes).unwrap();
    assert_eq!(
        Msi::parse(&view, 0x40),
        Err(TlpError::CapabilityIdMismatch { offset: 0x40, expected: 0x05, found: 0x01 })
    );
}

#[test]
fn vendor_specific_length_past_the_end() {
    let bytes = image(256, &[(0x34, &[0xf8]), (0xf8, &[0x09, 0x00, 0x10])]);
    let view = ConfigView::new(&bytes).unwrap();
    assert!(matches!(
        VendorSpecific::parse(&view, 0xf8),
        Err(TlpError::CapabilityTruncated { offset: 0xf8, .. })
    ));
}

#[test]
fn extended_loop_and_bad_pointers() {
    let ext =
        |id: u16, next: u16| ExtendedCapability { id, version: 1, offset: 0, next }.header().to_le_bytes();
    // 0x100 → 0x140 → 0x100.
    let (a, b) = (ext(0x0001, 0x140), ext(0x0003, 0x100));
    let bytes = image(4096, &[(0x100, &a), (0x140, &b)]);
    assert_eq!(
        walk_extended(&bytes),
        (vec![0x100, 0x140], chain_error(CapabilityChain::Extended, 0x140, 0x100, ChainProblem::Loop))
    );
    // Next pointing into the standard space.
    let a = ext(0x0001, 0x0f0);
    let bytes = image(4096, &[(0x100, &a)]);
    assert_eq!(
        walk_extended(&bytes),
        (vec![0x100], chain_error(CapabilityChain::Extended, 0x100, 0x0f0, ChainProblem::BelowExtendedSpace))
    );
    // Unaligned.
    let a = ext(0x0001, 0x142);
    let bytes = image(4096, &[(0x100, &a)]);
    assert_eq!(
        walk_extended(&bytes),
        (vec![0x100], chain_error(CapabilityChain::Extended, 0x100, 0x142, ChainProblem::Unaligned))
    );
    // Past the end of a 512-byte image.
    let a = ext(0x0001, 0x200);
    let bytes = image(512, &[(0x100, &a)]);
    assert_eq!(
        walk_extended(&bytes),
        (vec![0x100], chain_error(CapabilityChain::Extended, 0x100, 0x200, ChainProblem::BeyondEnd))
    );
}

#[test]
fn extended_space_absent_or_empty() {
    // All-ones at 0x100: a function without extended space (or a failed read).
    let bytes = image(4096, &[(0x100, &[0xff; 4])]);
    assert_eq!(walk_extended(&bytes), (vec![], None));
    // Zero header: no extended capabilities.
    assert_eq!(walk_extended(&image(4096, &[])), (vec![], None));
}

#[test]
fn reserved_bar_type_and_64bit_bar_in_the_last_slot() {
    // BAR1 has memory type 11b; BAR5 claims to be 64-bit.
    let bytes = image(256, &[(0x14, &[0x06, 0, 0, 0]), (0x24, &[0x04, 0, 0, 0xe0])]);
    let view = ConfigView::new(&bytes).unwrap();
    let results: Vec<_> = view.bar_iter().collect();
    assert_eq!(results.len(), 6);
    assert_eq!(results[1], Err(TlpError::BarReservedType { slot: 1, raw: 0x6 }));
    assert_eq!(results[5], Err(TlpError::Bar64InLastSlot { slot: 5 }));
    assert!(results[2].is_ok());
    assert_eq!(view.bars(), Err(TlpError::BarReservedType { slot: 1, raw: 0x6 }));
}

#[test]
fn out_of_range_reads_are_errors() {
    let bytes = image(256, &[]);
    let view = ConfigView::new(&bytes).unwrap();
    assert_eq!(view.read_u32(0xfd), Err(TlpError::ConfigOutOfRange { offset: 0xfd, width: 4, len: 256 }));
    assert_eq!(view.read_u8(0xff), Ok(0));
    assert!(view.read_bytes(0xffff, usize::MAX).is_err());
    assert_eq!(ConfigView::new(&[0; 63]).unwrap_err(), TlpError::ConfigImageLength { len: 63 });
    assert_eq!(ConfigView::new(&[0; 4097]).unwrap_err(), TlpError::ConfigImageLength { len: 4097 });
}

#[test]
fn bridge_header_has_two_bars() {
    let mut bytes = image(256, &[]);
    bytes[0x0e] = HeaderType::PCI_BRIDGE | HeaderType::MULTI_FUNCTION;
    let view = ConfigView::new(&bytes).unwrap();
    assert!(view.header_type().is_multi_function());
    assert_eq!(view.bars().unwrap().len(), 2);
    assert_eq!(view.bar_register(2), None);
    assert_eq!(view.subsystem_id(), None);
}

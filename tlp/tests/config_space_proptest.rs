//! Random config images never panic the walkers or decoders, and walks always end.

use proptest::prelude::*;
use tlp::config_space::*;

/// Everything a user of a received config image would call.
fn exercise(bytes: &[u8]) {
    let Ok(view) = ConfigView::new(bytes) else {
        assert!(bytes.len() < 64 || bytes.len() > PCIE_CONFIG_LEN);
        return;
    };
    let _ = (view.vendor_id(), view.device_id(), view.class_code().name(), view.expansion_rom());
    let _ = view.bars();
    assert!(view.bar_iter().count() <= 6);

    let mut standard = 0;
    let mut errors = 0;
    for cap in view.capabilities() {
        standard += 1;
        match cap {
            Ok(cap) => {
                if let Ok(DecodedCapability::VendorSpecific(vs)) = cap.decode(&view) {
                    let _ = vs.data(&view);
                }
            }
            Err(_) => errors += 1,
        }
    }
    // At most one capability per dword between 0x40 and 0x100, plus the closing error.
    assert!(standard <= 48 + 1, "{standard} standard capabilities");
    assert!(errors <= 1);

    let mut extended = 0;
    for cap in view.extended_capabilities() {
        extended += 1;
        if let Ok(cap) = cap {
            let _ = cap.name();
        }
    }
    assert!(extended <= (PCIE_CONFIG_LEN - 0x100) / 4 + 1, "{extended} extended capabilities");

    let _ = (view.power_management(), view.msi(), view.msix(), view.pci_express());
    // Decoders pointed at arbitrary offsets must fail cleanly too.
    for offset in (0u16..0x110).step_by(4).chain(0xfff0..=u16::MAX) {
        let _ =
            (PowerManagement::parse(&view, offset), Msi::parse(&view, offset), Msix::parse(&view, offset));
        let _ = (PciExpress::parse(&view, offset), VendorSpecific::parse(&view, offset));
    }
}

/// Images shaped like real ones: Capabilities List set, aligned pointers, capability IDs the
/// decoders know, so that random bytes reach deep into the decoders.
fn structured_image(len: usize) -> impl Strategy<Value = Vec<u8>> {
    let ids = prop::sample::select(vec![0x01u8, 0x05, 0x09, 0x10, 0x11, 0x03]);
    (
        prop::collection::vec(any::<u8>(), len),
        prop::collection::vec((0x10u8..0x40, ids), 1..12),
        prop::collection::vec((0x40u16..0x400, any::<u16>()), 0..8),
    )
        .prop_map(move |(mut bytes, caps, ext)| {
            bytes[0x06] |= 0x10;
            bytes[0x34] = caps[0].0 * 4;
            for (i, (dword, id)) in caps.iter().enumerate() {
                let at = usize::from(*dword) * 4;
                bytes[at] = *id;
                bytes[at + 1] = caps.get(i + 1).map_or(0, |(next, _)| next * 4);
            }
            if let (Some((first, _)), Some(head)) = (ext.first(), bytes.get_mut(0x100..0x104)) {
                let header = 0x0001 | (1 << 16) | (u32::from(*first * 4) << 20);
                head.copy_from_slice(&header.to_le_bytes());
            }
            for (i, (dword, id)) in ext.iter().enumerate() {
                let at = usize::from(*dword) * 4;
                let next = ext.get(i + 1).map_or(0, |(next, _)| next * 4);
                if at + 4 <= bytes.len() {
                    let header = u32::from(*id % 0x32) | (1 << 16) | (u32::from(next) << 20);
                    bytes[at..at + 4].copy_from_slice(&header.to_le_bytes());
                }
            }
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_pci_images_never_panic(bytes in prop::collection::vec(any::<u8>(), 256)) {
        exercise(&bytes);
    }

    #[test]
    fn random_pcie_images_never_panic(bytes in prop::collection::vec(any::<u8>(), 4096)) {
        exercise(&bytes);
    }

    #[test]
    fn random_lengths_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4200)) {
        exercise(&bytes);
    }

    #[test]
    fn structured_pci_images_never_panic(bytes in structured_image(256)) {
        exercise(&bytes);
    }

    #[test]
    fn structured_pcie_images_never_panic(bytes in structured_image(4096)) {
        exercise(&bytes);
    }

    #[test]
    fn msix_table_entry_round_trips(bytes in any::<[u8; 16]>()) {
        prop_assert_eq!(MsixTableEntry::parse(&bytes).emit(), bytes);
    }

    #[test]
    fn bar_encode_decode_round_trips(slot in 0u8..5, kind in prop::sample::select(vec![BarKind::Io, BarKind::Mem32, BarKind::Mem64]),
                                      prefetchable in any::<bool>(), address in any::<u64>()) {
        let address = address & kind.address_mask() & if kind == BarKind::Mem64 { u64::MAX } else { 0xffff_ffff };
        let bar = Bar { slot, kind, prefetchable: prefetchable && kind != BarKind::Io, address };
        let (low, high) = bar.encode();
        prop_assert_eq!(Bar::decode(slot, low, high), Ok(bar));
    }

    #[test]
    fn bar_sizing_recovers_the_size(log2 in 4u32..40, kind in prop::sample::select(vec![BarKind::Mem32, BarKind::Mem64])) {
        let size = 1u64 << log2;
        prop_assume!(kind == BarKind::Mem64 || log2 < 32);
        let readback = bar_value_after_write(kind, false, size, u64::MAX);
        prop_assert_eq!(size_from_probe(kind, readback), Some(size));
    }
}

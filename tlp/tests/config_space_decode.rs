//! Decoding a hand-built PCIe config image: header, BARs, ROM, every typed capability and the
//! extended list. The image is written out byte by byte below; every multi-byte register is
//! little-endian.

use std::time::Duration;

use tlp::config_space::*;

/// (offset, bytes) pieces of the test image; everything not listed is 0.
const PIECES: &[(u16, &[u8])] = &[
    // --- Type 0 header ---
    (0x00, &[0x36, 0x1b, 0x10, 0x00]), // Vendor ID 0x1b36, Device ID 0x0010
    (0x04, &[0x06, 0x04, 0x10, 0x00]), // Command 0x0406 (Mem, BusMaster, DisINTx), Status 0x0010 (Cap)
    (0x08, &[0x02, 0x02, 0x08, 0x01]), // Revision 0x02, class 01 08 02 (NVM controller, NVMe)
    (0x0c, &[0x10, 0x00, 0x00, 0x00]), // Cache line 0x10, latency 0, header type 0 (single function), BIST 0
    (0x10, &[0x0c, 0x00, 0x00, 0xfe]), // BAR0 0xfe00000c: memory, 64-bit (bits 2:1 = 10b), prefetchable
    (0x14, &[0x01, 0x00, 0x00, 0x00]), // BAR1: upper half of BAR0 → BAR0 = 0x1_fe00_0000
    (0x18, &[0x01, 0xc0, 0x00, 0x00]), // BAR2 0x0000c001: I/O at 0xc000
    (0x1c, &[0x00, 0x00, 0x10, 0xfd]), // BAR3 0xfd100000: memory, 32-bit, not prefetchable
    // BAR4, BAR5 = 0 (unassigned 32-bit memory BARs as far as the image can tell)
    (0x2c, &[0xf4, 0x1a, 0x00, 0x11]), // Subsystem vendor 0x1af4, subsystem 0x1100
    (0x30, &[0x01, 0x00, 0x04, 0xfd]), // Expansion ROM 0xfd040001: address 0xfd040000, enabled
    (0x34, &[0x40]),                   // Capabilities pointer → 0x40
    (0x3c, &[0x0b, 0x01, 0x00, 0x00]), // Interrupt line 11, pin 1 (INTA)
    // --- 0x40 Power Management, next 0x50 ---
    (0x40, &[0x01, 0x50, 0x03, 0xfa]), // ID 01, next 50, PMC 0xfa03: v3, D1, PME from D0..D3cold
    (0x44, &[0x08, 0x00, 0x00, 0x00]), // PMCSR 0x0008: D0, No_Soft_Reset
    // --- 0x50 MSI, next 0x70: 64-bit, per-vector masking ---
    (0x50, &[0x05, 0x70, 0x87, 0x01]), // ID 05, next 70, control 0x0187: enable, 8 capable, 1 enabled, 64-bit, PVM
    (0x54, &[0x00, 0x00, 0xe0, 0xfe]), // Message Address lo 0xfee00000
    (0x58, &[0x00, 0x00, 0x00, 0x00]), // Message Address hi 0
    (0x5c, &[0x21, 0x40, 0x00, 0x00]), // Message Data 0x4021, Extended Message Data 0
    (0x60, &[0xfe, 0x00, 0x00, 0x00]), // Mask Bits 0x000000fe
    (0x64, &[0x01, 0x00, 0x00, 0x00]), // Pending Bits 0x00000001
    // --- 0x70 MSI-X, next 0x80 ---
    (0x70, &[0x11, 0x80, 0x1f, 0xc0]), // ID 11, next 80, control 0xc01f: 32 entries, function mask, enable
    (0x74, &[0x03, 0x20, 0x00, 0x00]), // Table: BIR 3, offset 0x2000
    (0x78, &[0x03, 0x30, 0x00, 0x00]), // PBA: BIR 3, offset 0x3000
    // --- 0x80 PCI Express (version 2, endpoint), next 0xc0 ---
    (0x80, &[0x10, 0xc0, 0x02, 0x00]), // ID 10, next c0, PCIe caps 0x0002: version 2, type 0 (Endpoint)
    (0x84, &[0x22, 0x80, 0x00, 0x10]), // DevCap 0x10008022: MPS supp 512, ext tag, RBER, FLR capable
    (0x88, &[0x30, 0x29, 0x00, 0x00]), // DevCtl 0x2930: RO, MPS 256, ext tag, no snoop, MRRS 512; DevSta 0
    (0x8c, &[0x43, 0x00, 0x00, 0x00]), // LinkCap 0x00000043: max 8GT/s x4, port 0
    (0x90, &[0x08, 0x00, 0x43, 0x00]), // LinkCtl 0x0008 (RCB 128), LinkSta 0x0043 (8GT/s x4)
    (0xa4, &[0x13, 0x00, 0x03, 0x00]), // DevCap2 0x00030013: CTO ranges A+B, CTO disable, 10-bit tag compl+req
    (0xa8, &[0x06, 0x10, 0x00, 0x00]), // DevCtl2 0x1006: CTV 0110b (65-210 ms), 10-bit tag requester enable
    (0xac, &[0x0e, 0x00, 0x00, 0x00]), // LinkCap2: speeds 2.5/5/8 GT/s
    (0xb0, &[0x03, 0x00, 0x00, 0x00]), // LinkCtl2: target 8 GT/s
    // --- 0xc0 Vendor-specific, last ---
    (0xc0, &[0x09, 0x00, 0x08, 0xab, 0xcd, 0xef, 0x01, 0x02]), // ID 09, next 00, length 8, 5 data bytes
    // --- extended capabilities ---
    (0x100, &[0x01, 0x00, 0x82, 0x14]), // AER (0x0001) v2, next 0x148
    (0x148, &[0x03, 0x00, 0x81, 0x15]), // Device Serial Number (0x0003) v1, next 0x158
    (0x14c, &[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]), // serial 0x1122334455667788
    (0x158, &[0x0e, 0x00, 0x01, 0x00]), // ARI (0x000e) v1, next 0 (end)
];

fn image() -> Vec<u8> {
    let mut bytes = vec![0u8; PCIE_CONFIG_LEN];
    for (offset, piece) in PIECES {
        let start = usize::from(*offset);
        bytes[start..start + piece.len()].copy_from_slice(piece);
    }
    bytes
}

#[test]
fn header_fields() {
    let bytes = image();
    let view = ConfigView::new(&bytes).unwrap();
    assert_eq!(view.vendor_id(), 0x1b36);
    assert_eq!(view.device_id(), 0x0010);
    assert_eq!(view.command(), Command(Command::MEMORY_SPACE | Command::BUS_MASTER | Command::INTX_DISABLE));
    assert_eq!(view.command().set_flag_names(), ["Mem", "BusMaster", "DisINTx"]);
    assert!(view.status().capabilities_list());
    assert_eq!(view.revision_id(), 0x02);
    let class = view.class_code();
    assert_eq!(class, ClassCode { base: 0x01, sub: 0x08, prog_if: 0x02 });
    assert_eq!(class.to_u24(), 0x010802);
    assert_eq!(class.name(), Some("Non-Volatile memory controller"));
    assert_eq!(view.cache_line_size(), 0x10);
    assert_eq!(view.header_type().layout(), HeaderType::ENDPOINT);
    assert!(!view.header_type().is_multi_function());
    assert_eq!(view.subsystem_vendor_id(), Some(0x1af4));
    assert_eq!(view.subsystem_id(), Some(0x1100));
    assert_eq!(view.capabilities_pointer(), 0x40);
    assert_eq!(view.interrupt_line(), 11);
    assert_eq!(interrupt_pin_name(view.interrupt_pin()), Some("INTA"));
    assert!(view.has_extended_space());
}

#[test]
fn bars_and_rom() {
    let bytes = image();
    let view = ConfigView::new(&bytes).unwrap();
    let bars = view.bars().unwrap();
    assert_eq!(
        bars,
        [
            Bar { slot: 0, kind: BarKind::Mem64, prefetchable: true, address: 0x1_fe00_0000 },
            Bar { slot: 2, kind: BarKind::Io, prefetchable: false, address: 0xc000 },
            Bar { slot: 3, kind: BarKind::Mem32, prefetchable: false, address: 0xfd10_0000 },
            Bar { slot: 4, kind: BarKind::Mem32, prefetchable: false, address: 0 },
            Bar { slot: 5, kind: BarKind::Mem32, prefetchable: false, address: 0 },
        ]
    );
    // Encoding gives back the registers.
    assert_eq!(bars[0].encode(), (0xfe00_000c, Some(0x1)));
    assert_eq!(bars[1].encode(), (0xc001, None));
    assert_eq!(bars[2].register_offset(), 0x1c);
    assert_eq!(view.expansion_rom(), Some(ExpansionRom { enabled: true, address: 0xfd04_0000 }));
    assert_eq!(view.expansion_rom().unwrap().encode(), 0xfd04_0001);
}

#[test]
fn capability_list() {
    let bytes = image();
    let view = ConfigView::new(&bytes).unwrap();
    let caps: Vec<(u8, u16)> =
        view.capabilities().map(|c| c.map(|c| (c.id, c.offset))).collect::<Result<_, _>>().unwrap();
    assert_eq!(caps, [(0x01, 0x40), (0x05, 0x50), (0x11, 0x70), (0x10, 0x80), (0x09, 0xc0)]);
    let names: Vec<_> = view.capabilities().map(|c| c.unwrap().name().unwrap()).collect();
    assert_eq!(names, ["Power Management", "MSI", "MSI-X", "PCI Express", "Vendor Specific"]);
    assert_eq!(view.find_capability(cap_id::MSI_X).unwrap().map(|c| c.offset), Some(0x70));
    assert_eq!(view.find_capability(cap_id::PCI_X).unwrap(), None);
}

#[test]
fn power_management() {
    let bytes = image();
    let view = ConfigView::new(&bytes).unwrap();
    let pm = view.power_management().unwrap().unwrap();
    assert_eq!(pm.offset, 0x40);
    assert_eq!(pm.capabilities.version(), 3);
    assert!(pm.capabilities.d1_support());
    assert!(!pm.capabilities.d2_support());
    assert_eq!(pm.capabilities.pme_support(), 0x1f);
    assert_eq!(pm.capabilities.pme_support_names(), ["D0", "D1", "D2", "D3hot", "D3cold"]);
    assert_eq!(pm.control_status.power_state(), PowerState::D0);
    assert!(pm.control_status.no_soft_reset());
    assert!(!pm.control_status.pme_enable());
}

#[test]
fn msi_64bit_maskable() {
    let bytes = image();
    let view = ConfigView::new(&bytes).unwrap();
    let msi = view.msi().unwrap().unwrap();
    assert_eq!(msi.offset, 0x50);
    assert!(msi.control.enabled());
    assert_eq!(msi.control.vectors_capable(), 8);
    assert_eq!(msi.control.vectors_enabled(), 1);
    assert!(msi.control.is_64bit());
    assert!(msi.control.per_vector_masking());
    assert_eq!(msi.address, 0xfee0_0000);
    assert_eq!(msi.data, 0x4021);
    assert_eq!(msi.mask_bits, Some(0xfe));
    assert_eq!(msi.pending_bits, Some(0x1));
    let layout = msi.layout();
    assert_eq!(
        (layout.address_lo(), layout.address_hi(), layout.data(), layout.mask_bits(), layout.pending_bits()),
        (0x04, Some(0x08), 0x0c, Some(0x10), Some(0x14))
    );
    assert_eq!(layout.struct_len(), 0x18);
    assert_eq!(msi.control.with_enabled(false).0, 0x0186);
    assert_eq!(msi.control.with_multiple_message_enable(3).multiple_message_enable(), 3);
}

#[test]
fn msi_layouts_move_with_64bit_and_masking() {
    let plain = MsiLayout { is_64bit: false, per_vector_masking: false };
    assert_eq!(
        (plain.address_hi(), plain.data(), plain.mask_bits(), plain.struct_len()),
        (None, 0x08, None, 0x0c)
    );
    let masked32 = MsiLayout { is_64bit: false, per_vector_masking: true };
    assert_eq!(
        (masked32.data(), masked32.mask_bits(), masked32.pending_bits()),
        (0x08, Some(0x0c), Some(0x10))
    );
    assert_eq!(masked32.struct_len(), 0x14);
    let plain64 = MsiLayout { is_64bit: true, per_vector_masking: false };
    assert_eq!((plain64.address_hi(), plain64.data(), plain64.struct_len()), (Some(0x08), 0x0c, 0x10));
}

#[test]
fn msix() {
    let bytes = image();
    let view = ConfigView::new(&bytes).unwrap();
    let msix = view.msix().unwrap().unwrap();
    assert_eq!(msix.offset, 0x70);
    assert_eq!(msix.control.table_size(), 32);
    assert!(msix.control.enabled());
    assert!(msix.control.function_mask());
    assert_eq!((msix.table_bir, msix.table_offset), (3, 0x2000));
    assert_eq!((msix.pba_bir, msix.pba_offset), (3, 0x3000));
    assert_eq!(msix.table_len(), 32 * 16);
    assert_eq!(msix.pba_len(), 8);
    assert!(msix.birs_valid());
    assert_eq!((msix.table_register(), msix.pba_register()), (0x2003, 0x3003));
}

#[test]
fn msix_table_entry_layout() {
    // addr lo 0xfee01000, addr hi 0x00000001, data 0x00000041, vector control 1 (masked)
    let bytes =
        [0x00, 0x10, 0xe0, 0xfe, 0x01, 0x00, 0x00, 0x00, 0x41, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00];
    let entry = MsixTableEntry::parse(&bytes);
    assert_eq!(entry, MsixTableEntry { address: 0x1_fee0_1000, data: 0x41, vector_control: 1 });
    assert!(entry.masked());
    assert_eq!(entry.emit(), bytes);
}

#[test]
fn pci_express() {
    let bytes = image();
    let view = ConfigView::new(&bytes).unwrap();
    let pcie = view.pci_express().unwrap().unwrap();
    assert_eq!(pcie.offset, 0x80);
    assert_eq!(pcie.capabilities.version(), 2);
    assert_eq!(pcie.capabilities.port_type(), PortType::Endpoint);
    let devcap = pcie.device_capabilities;
    assert_eq!(devcap.max_payload_supported(), Some(512));
    assert!(devcap.extended_tag_supported());
    assert!(devcap.flr_capable());
    let devctl = pcie.device_control;
    assert_eq!(devctl.max_payload_size(), Some(256));
    assert_eq!(devctl.max_read_request_size(), Some(512));
    assert!(devctl.extended_tag());
    assert!(devctl.relaxed_ordering());
    assert!(devctl.no_snoop());
    assert!(!devctl.initiate_flr());
    assert_eq!(pcie.device_control_offset(), 0x88);
    assert_eq!(pcie.link_capabilities.max_link_speed(), LinkSpeed::Gt8);
    assert_eq!(pcie.link_capabilities.max_link_width(), 4);
    assert_eq!(pcie.link_control.read_completion_boundary(), 128);
    assert_eq!(pcie.link_control_offset(), 0x90);
    assert_eq!(pcie.link_status.current_link_speed().to_string(), "8GT/s");
    assert_eq!(pcie.link_status.negotiated_link_width(), 4);
    let devcap2 = pcie.device_capabilities_2.unwrap();
    assert_eq!(devcap2.completion_timeout_ranges().names(), ["A", "B"]);
    assert!(devcap2.completion_timeout_disable_supported());
    assert!(devcap2.ten_bit_tag_completer_supported());
    assert!(devcap2.ten_bit_tag_requester_supported());
    let devctl2 = pcie.device_control_2.unwrap();
    assert_eq!(devctl2.completion_timeout_value(), 0b0110);
    assert_eq!(devctl2.completion_timeout(), Some((Duration::from_millis(65), Duration::from_millis(210))));
    assert!(devctl2.ten_bit_tag_requester());
    assert_eq!(pcie.device_control_2_offset(), Some(0xa8));
}

#[test]
fn vendor_specific() {
    let bytes = image();
    let view = ConfigView::new(&bytes).unwrap();
    let cap = view.find_capability(cap_id::VENDOR_SPECIFIC).unwrap().unwrap();
    let DecodedCapability::VendorSpecific(vs) = cap.decode(&view).unwrap() else {
        panic!("not vendor-specific")
    };
    assert_eq!(vs.length, 8);
    assert_eq!(vs.data(&view).unwrap(), [0xab, 0xcd, 0xef, 0x01, 0x02]);
}

#[test]
fn extended_capability_list() {
    let bytes = image();
    let view = ConfigView::new(&bytes).unwrap();
    let caps: Vec<ExtendedCapability> = view.extended_capabilities().collect::<Result<_, _>>().unwrap();
    let summary: Vec<(u16, u8, u16, &str)> =
        caps.iter().map(|c| (c.id, c.version, c.offset, c.name().unwrap())).collect();
    assert_eq!(
        summary,
        [
            (0x0001, 2, 0x100, "Advanced Error Reporting"),
            (0x0003, 1, 0x148, "Device Serial Number"),
            (0x000e, 1, 0x158, "Alternative Routing-ID Interpretation"),
        ]
    );
    assert_eq!(caps[0].header(), 0x1482_0001);
    assert_eq!(view.find_extended_capability(ext_cap_id::SR_IOV).unwrap(), None);
    // A 256-byte prefix of the same image has no extended space.
    let pci = ConfigView::new(&bytes[..PCI_CONFIG_LEN]).unwrap();
    assert_eq!(pci.extended_capabilities().count(), 0);
    assert_eq!(pci.capabilities().count(), 5);
}

#[test]
fn bar_sizing_from_all_ones_readback() {
    // 4 KiB 32-bit memory BAR.
    assert_eq!(size_from_probe(BarKind::Mem32, 0xffff_f000), Some(0x1000));
    // 1 MiB 32-bit prefetchable: flag bits 0x8 are ignored.
    assert_eq!(size_from_probe(BarKind::Mem32, 0xfff0_0008), Some(0x10_0000));
    // 32-byte I/O BAR decoding 16 address bits: bits 31:16 read 0.
    assert_eq!(size_from_probe(BarKind::Io, 0x0000_ffe1), Some(0x20));
    // 8 GiB 64-bit BAR: low dword has no address bits set, the high dword 0xfffffffe.
    assert_eq!(size_from_probe(BarKind::Mem64, 0xffff_fffe_0000_000c), Some(0x2_0000_0000));
    // 16 KiB 64-bit BAR.
    assert_eq!(size_from_probe(BarKind::Mem64, 0xffff_ffff_ffff_c00c), Some(0x4000));
    // Unimplemented BAR reads back 0.
    assert_eq!(size_from_probe(BarKind::Mem32, 0), None);
    // Expansion ROM of 64 KiB (enable bit not an address bit).
    assert_eq!(ExpansionRom::size_from_probe(0xffff_0001), Some(0x1_0000));
    assert_eq!(ExpansionRom::size_from_probe(0x0000_0001), None);
}

#[test]
fn bar_register_after_write() {
    // A device model answering the sizing write and a real address for a 4 KiB 64-bit BAR.
    assert_eq!(bar_value_after_write(BarKind::Mem64, true, 0x1000, u64::MAX), 0xffff_ffff_ffff_f00c);
    assert_eq!(bar_value_after_write(BarKind::Mem64, true, 0x1000, 0x1_2345_6789), 0x1_2345_600c);
    assert_eq!(bar_value_after_write(BarKind::Mem32, false, 0x100, u64::MAX), 0xffff_ff00);
    assert_eq!(bar_value_after_write(BarKind::Io, false, 0x20, 0xffff_ffff), 0xffff_ffe1);
    // Sizing what the model returns gives the size back.
    let size = 0x4000;
    let readback = bar_value_after_write(BarKind::Mem64, false, size, u64::MAX);
    assert_eq!(size_from_probe(BarKind::Mem64, readback), Some(size));
}

#[test]
fn payload_size_encoders() {
    assert_eq!(mps_bytes_to_code(128), Some(0));
    assert_eq!(mps_bytes_to_code(256), Some(1));
    assert_eq!(mps_bytes_to_code(4096), Some(5));
    assert_eq!(mps_bytes_to_code(300), None);
    assert_eq!(mps_bytes_to_code(64), None);
    assert_eq!(mps_bytes_to_code(8192), None);
    assert_eq!(mrrs_bytes_to_code(512), Some(2));
    assert_eq!(mps_code_to_bytes(5), Some(4096));
    assert_eq!(mrrs_code_to_bytes(6), None);
    let devctl = DeviceControl(0).with_mps_code(mps_bytes_to_code(512).unwrap()).with_mrrs_code(5);
    assert_eq!(devctl.0, 0x5040);
    assert_eq!((devctl.max_payload_size(), devctl.max_read_request_size()), (Some(512), Some(4096)));
    assert_eq!(LinkControl(0).with_rcb_128(true).read_completion_boundary(), 128);
}

#[test]
fn completion_timeout_values() {
    assert_eq!(completion_timeout_range(0), Some((Duration::from_micros(50), Duration::from_millis(50))));
    assert_eq!(completion_timeout_range(0b1110), Some((Duration::from_secs(17), Duration::from_secs(64))));
    assert_eq!(completion_timeout_range(0b0011), None);
    assert_eq!(DeviceControl2(0xffff).with_completion_timeout_value(2).completion_timeout_value(), 2);
}

#[test]
fn built_image_decodes_like_the_hand_written_one() {
    let mut image = ConfigImage::new(PCIE_CONFIG_LEN).unwrap();
    image.set_u16(header::VENDOR_ID, 0x1b36).unwrap();
    image.set_u16(header::DEVICE_ID, 0x0010).unwrap();
    image
        .set_bar(&Bar { slot: 0, kind: BarKind::Mem64, prefetchable: true, address: 0x1_fe00_0000 })
        .unwrap();
    image.set_bar(&Bar { slot: 2, kind: BarKind::Io, prefetchable: false, address: 0xc000 }).unwrap();
    let pm = image.add_capability(cap_id::POWER_MANAGEMENT, &[0x03, 0xfa, 0x08, 0x00, 0x00, 0x00]).unwrap();
    let control = MsiControl(MsiControl::ADDRESS_64BIT | MsiControl::PER_VECTOR_MASKING);
    let mut msi_body = vec![0u8; usize::from(control.layout().struct_len()) - 2];
    msi_body[..2].copy_from_slice(&control.0.to_le_bytes());
    let msi = image.add_capability(cap_id::MSI, &msi_body).unwrap();
    let aer = image.add_extended_capability(ext_cap_id::AER, 2, &[0; 0x44]).unwrap();
    let dsn = image.add_extended_capability(ext_cap_id::DEVICE_SERIAL_NUMBER, 1, &[0; 8]).unwrap();
    assert_eq!((pm, msi, aer, dsn), (0x40, 0x48, 0x100, 0x148));

    let view = image.view();
    assert!(view.status().capabilities_list());
    assert_eq!(view.capabilities_pointer(), 0x40);
    let ids: Vec<u8> = view.capabilities().map(|c| c.unwrap().id).collect();
    assert_eq!(ids, [cap_id::POWER_MANAGEMENT, cap_id::MSI]);
    assert_eq!(view.msi().unwrap().unwrap().layout().struct_len(), 0x18);
    let ext: Vec<(u16, u16)> =
        view.extended_capabilities().map(|c| c.map(|c| (c.id, c.offset)).unwrap()).collect();
    assert_eq!(ext, [(ext_cap_id::AER, 0x100), (ext_cap_id::DEVICE_SERIAL_NUMBER, 0x148)]);
    assert_eq!(view.bars().unwrap()[0].address, 0x1_fe00_0000);
    // Same bytes as the hand-written image where they overlap.
    assert_eq!(&image.bytes()[0x10..0x1c], &self::image()[0x10..0x1c]);
    assert_eq!(&image.bytes()[0x42..0x48], &self::image()[0x42..0x48]);
}

#[test]
fn builder_rejects_what_does_not_fit() {
    let mut image = ConfigImage::new(PCI_CONFIG_LEN).unwrap();
    assert!(matches!(
        image.add_capability(cap_id::VENDOR_SPECIFIC, &[0; 200]),
        Err(tlp::TlpError::NoRoomForCapability { .. })
    ));
    assert!(matches!(
        image.add_extended_capability(ext_cap_id::AER, 2, &[0; 4]),
        Err(tlp::TlpError::NoRoomForCapability { .. })
    ));
    assert!(matches!(
        image.set_bar(&Bar { slot: 5, kind: BarKind::Mem64, prefetchable: false, address: 0 }),
        Err(tlp::TlpError::Bar64InLastSlot { slot: 5 })
    ));
    assert!(matches!(
        image.set_u32(0xfe, 0),
        Err(tlp::TlpError::ConfigOutOfRange { offset: 0xfe, width: 4, len: 256 })
    ));
    assert!(matches!(ConfigImage::new(300), Err(tlp::TlpError::ConfigImageLength { len: 300 })));
}

#[test]
fn typed_capabilities_round_trip_through_a_built_image() {
    let bytes = image();
    let view = ConfigView::new(&bytes).unwrap();
    let (pm, msi, msix, pcie) = (
        view.power_management().unwrap().unwrap(),
        view.msi().unwrap().unwrap(),
        view.msix().unwrap().unwrap(),
        view.pci_express().unwrap().unwrap(),
    );

    let mut built = ConfigImage::new(PCIE_CONFIG_LEN).unwrap();
    let pm_at = built.add_power_management(pm.capabilities).unwrap();
    let msi_at = built.add_msi(msi.control).unwrap();
    let msix_at = built.add_msix(&msix).unwrap();
    let pcie_at = built.add_pci_express(&pcie).unwrap();
    assert_eq!((pm_at, msi_at, msix_at, pcie_at), (0x40, 0x48, 0x60, 0x6c));

    let view = built.view();
    let pm2 = view.power_management().unwrap().unwrap();
    assert_eq!(pm2.capabilities, pm.capabilities);
    let msi2 = view.msi().unwrap().unwrap();
    assert_eq!(
        (msi2.control, msi2.layout(), msi2.address, msi2.mask_bits),
        (msi.control, msi.layout(), 0, Some(0))
    );
    assert_eq!(view.msix().unwrap().unwrap(), Msix { offset: 0x60, ..msix });
    assert_eq!(view.pci_express().unwrap().unwrap(), PciExpress { offset: 0x6c, ..pcie });
    // The chain ends after the PCIe capability, which is 0x3c bytes (version 2).
    assert_eq!(view.capabilities().count(), 4);
    assert_eq!(view.read_u8(0x6c + 1).unwrap(), 0);
}

#[test]
fn config_write_overlap() {
    // A dword write at 0x10 touches BAR0; a byte write at 0x13 too; 0x14 does not.
    assert!(write_touches(0x10, 4, header::bar(0), 4));
    assert!(write_touches(0x13, 1, header::bar(0), 4));
    assert!(!write_touches(0x14, 4, header::bar(0), 4));
    // A 2-byte write of Device Status (0x8a) does not touch Device Control (0x88, 2 bytes).
    assert!(!write_touches(0x8a, 2, 0x88, 2));
    assert!(write_touches(0x88, 4, 0x88, 2));
    assert!(!write_touches(0x88, 0, 0x88, 2));
    assert!(write_touches(u16::MAX, u16::MAX, u16::MAX, 1));
}

//! Names and encodings of the model's small types, and `RoutingId` parsing.

use tlp::{CplStatus, MessageCode, MsgRouting, RoutingId};

#[test]
fn cpl_status_encodings_round_trip() {
    let expected = ["SC", "UR", "CRS", "Reserved(3)", "CA", "Reserved(5)", "Reserved(6)", "Reserved(7)"];
    for (bits, name) in (0u8..8).zip(expected) {
        let status = CplStatus::from_bits(bits);
        assert_eq!(status.bits(), bits);
        assert_eq!(status.name(), name);
    }
    assert_eq!(CplStatus::from_bits(0b100), CplStatus::Ca);
}

#[test]
fn msg_routing_encodings_round_trip() {
    let expected = ["to-rc", "by-addr", "by-id", "broadcast", "local", "gather"];
    for (bits, name) in (0u8..6).zip(expected) {
        let routing = MsgRouting::from_bits(bits).unwrap();
        assert_eq!((routing.bits(), routing.name()), (bits, name));
    }
    assert_eq!(MsgRouting::from_bits(6), None);
    assert_eq!(MsgRouting::from_bits(7), None);
}

#[test]
fn message_code_names() {
    assert_eq!(MessageCode::ASSERT_INTA.name(), Some("Assert_INTA"));
    assert_eq!(MessageCode::DEASSERT_INTD.name(), Some("Deassert_INTD"));
    assert_eq!(MessageCode::PME_TO_ACK.name(), Some("PME_TO_Ack"));
    assert_eq!(MessageCode(0x1b).name(), Some("PME_TO_Ack"));
    assert_eq!(MessageCode::ERR_FATAL.name(), Some("ERR_FATAL"));
    assert_eq!(MessageCode(0x33).name(), Some("ERR_FATAL"));
    assert_eq!(MessageCode::SET_SLOT_POWER_LIMIT.name(), Some("Set_Slot_Power_Limit"));
    assert_eq!(MessageCode::VENDOR_DEFINED_TYPE1.name(), Some("Vendor_Defined_Type1"));
    assert_eq!(MessageCode(0x32).name(), None);
    assert_eq!(MessageCode(0x44).to_string(), "code=0x44");
}

#[test]
fn routing_id_from_str() {
    assert_eq!("01:00.0".parse(), Ok(RoutingId::new(1, 0, 0)));
    assert_eq!("ff:1f.7".parse(), Ok(RoutingId(0xffff)));
    assert_eq!("0000:3a:02.1".parse(), Ok(RoutingId::new(0x3a, 2, 1)));
    assert_eq!("3A:02.1".parse(), Ok(RoutingId::new(0x3a, 2, 1)));
    // ARI: bus.function with an 8-bit function number.
    let ari: RoutingId = "05.8c".parse().unwrap();
    assert_eq!((ari.bus(), ari.ari_function()), (5, 0x8c));
    for bad in ["", "01:20.0", "01:00.8", "100:00.0", "01-00.0", "0001:01:00.0", "01:00", "xx:00.0", "05.100"]
    {
        let err = bad.parse::<RoutingId>().unwrap_err();
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
}

#[test]
fn routing_id_display_parses_back() {
    for raw in [0u16, 0x0100, 0x3a11, 0xffff] {
        let id = RoutingId(raw);
        assert_eq!(id.to_string().parse(), Ok(id));
    }
}

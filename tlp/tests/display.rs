//! `Display` examples for every TLP kind (the bytes are the TLP as on the wire).

use tlp::Tlp;
use tlp::wire::Packet;

fn hex(s: &str) -> Vec<u8> {
    let digits: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..digits.len()).step_by(2).map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap()).collect()
}

fn shown(bytes: &str) -> String {
    Tlp::parse(&hex(bytes)).unwrap().to_string()
}

const CASES: &[(&str, &str)] = &[
    (
        "20 00 00 04  01 00 12 ff  00 00 00 01  00 00 00 40",
        "MRd64 01:00.0 tag=0x12 addr=0x1_0000_0040 len=4 be=f/f",
    ),
    ("00 00 00 01  01 00 05 0f  fe dc 10 00", "MRd32 01:00.0 tag=0x05 addr=0xfedc_1000 len=1 be=f/0"),
    ("01 00 00 01  00 00 01 0f  00 00 20 00", "MRdLk32 00:00.0 tag=0x01 addr=0x2000 len=1 be=f/0"),
    (
        "40 00 00 01  01 00 00 0f  fe e0 00 00  00 00 00 41",
        "MWr32 01:00.0 tag=0x00 addr=0xfee0_0000 len=1 be=f/0 data=00000041",
    ),
    (
        "60 a0 30 02  03 01 a5 3f  00 00 00 01  23 45 67 80  11 22 33 44 55 66 77 88",
        "MWr64 03:00.1 tag=0x2a5 addr=0x1_2345_6780 len=2 be=f/3 data=1122334455667788 tc=2 ro ns",
    ),
    ("02 00 00 01  00 00 07 01  00 00 03 f8", "IORd 00:00.0 tag=0x07 addr=0x3f8 be=1/0"),
    (
        "42 00 00 01  00 00 08 03  00 00 03 f8  41 42 00 00",
        "IOWr 00:00.0 tag=0x08 addr=0x3f8 be=3/0 data=41420000",
    ),
    ("04 00 00 01  00 00 01 0f  01 00 00 10", "CfgRd0 00:00.0→01:00.0 tag=0x01 reg=0x010 be=f/0"),
    (
        "44 00 00 01  00 00 02 0f  01 08 01 04  ff ff ff ff",
        "CfgWr0 00:00.0→01:01.0 tag=0x02 reg=0x104 be=f/0 data=ffffffff",
    ),
    ("05 00 00 01  00 00 03 0f  02 00 00 00", "CfgRd1 00:00.0→02:00.0 tag=0x03 reg=0x000 be=f/0"),
    (
        "45 00 00 01  00 00 04 0c  02 00 00 3c  00 00 0b 00",
        "CfgWr1 00:00.0→02:00.0 tag=0x04 reg=0x03c be=c/0 data=00000b00",
    ),
    ("0a 00 00 00  01 00 00 04  00 00 01 00", "Cpl 01:00.0→00:00.0 tag=0x01 SC bc=4 la=0x0"),
    ("0a 00 00 00  01 00 20 40  00 00 09 00", "Cpl 01:00.0→00:00.0 tag=0x09 UR bc=64 la=0x0"),
    (
        "4a 00 00 04  00 00 00 10  01 00 12 40  00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f",
        "CplD 00:00.0→01:00.0 tag=0x12 SC bc=16 la=0x40 len=4",
    ),
    ("0b 00 00 00  00 00 80 04  01 00 12 00", "CplLk 00:00.0→01:00.0 tag=0x12 CA bc=4 la=0x0"),
    (
        "4b 00 40 01  00 00 00 04  01 00 12 00  de ad be ef",
        "CplDLk 00:00.0→01:00.0 tag=0x12 SC bc=4 la=0x0 len=1 data=deadbeef ep",
    ),
    ("34 00 00 00  01 00 00 20  00 00 00 00  00 00 00 00", "Msg 01:00.0 local Assert_INTA"),
    ("34 00 00 00  01 00 00 27  00 00 00 00  00 00 00 00", "Msg 01:00.0 local Deassert_INTD"),
    ("33 00 00 00  00 00 00 19  00 00 00 00  00 00 00 00", "Msg 00:00.0 broadcast PME_Turn_Off"),
    ("35 00 00 00  01 00 00 1b  00 00 00 00  00 00 00 00", "Msg 01:00.0 gather PME_TO_Ack"),
    ("30 00 00 00  01 00 00 31  00 00 00 00  00 00 00 00", "Msg 01:00.0 to-rc ERR_NONFATAL"),
    ("30 00 00 00  01 00 00 10  00 00 00 00  80 64 80 64", "Msg 01:00.0 to-rc LTR ltr=0x80648064"),
    (
        "74 00 00 01  00 00 00 50  00 00 00 00  00 00 00 00  00 00 00 fa",
        "MsgD 00:00.0 local Set_Slot_Power_Limit len=1 data=000000fa",
    ),
    (
        "72 00 00 01  01 00 00 7f  02 00 1a f4  00 00 00 00  01 02 03 04",
        "MsgD 01:00.0 by-id Vendor_Defined_Type1 to=02:00.0 vendor=0x1af4 len=1 data=01020304",
    ),
    ("31 00 00 00  01 00 00 44  00 00 00 00  fe e0 00 00", "Msg 01:00.0 by-addr code=0x44 addr=0xfee0_0000"),
    (
        "4c 00 00 01  01 00 20 00  00 00 10 00  00 00 00 01",
        "FetchAdd32 01:00.0 tag=0x20 addr=0x1000 len=1 data=00000001",
    ),
    (
        "6d 00 00 02  01 00 21 00  00 00 00 02  00 00 00 08  00 00 00 00 00 00 00 01",
        "Swap64 01:00.0 tag=0x21 addr=0x2_0000_0008 len=2 data=0000000000000001",
    ),
    (
        "4e 00 00 04  01 00 22 00  00 00 10 00  00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 02",
        "CAS32 01:00.0 tag=0x22 addr=0x1000 len=4",
    ),
    (
        "91 00 00 05  00 01 80 01  01 00 23 00  00 00 10 02  12 34 56 78",
        "MRd32 01:00.0 tag=0x23 addr=0x1000 len=1 be=0/0 th ph=2 ecrc=0x12345678 pfx=1",
    ),
];

#[test]
fn every_kind_has_a_readable_summary() {
    let mut kinds: Vec<&str> = Vec::new();
    for (bytes, expected) in CASES {
        let tlp = Tlp::parse(&hex(bytes)).unwrap_or_else(|e| panic!("{bytes}: {e}"));
        assert_eq!(tlp.to_string(), *expected, "{bytes}");
        kinds.push(tlp.kind_name());
    }
    for kind in tlp::arbitrary::KIND_NAMES {
        assert!(kinds.contains(&kind), "no Display example for {kind}");
    }
}

#[test]
fn flags_show_only_when_set() {
    // TC7, IDO (Attr[2]), LN, EP, AT 2 on an MRd32.
    assert_eq!(
        shown("00 76 48 01  01 00 00 0f  00 00 10 00"),
        "MRd32 01:00.0 tag=0x00 addr=0x1000 len=1 be=f/0 tc=7 ido ep ln at=2"
    );
}

#[test]
fn vendor_defined_messages_show_a_vendor_id_unless_routed_by_address() {
    // By ID: bytes 8..10 are the target, 10..12 the Vendor ID.
    assert_eq!(
        shown("32 00 00 00  01 00 00 7e  02 00 1a f4  00 00 00 00"),
        "Msg 01:00.0 by-id Vendor_Defined_Type0 to=02:00.0 vendor=0x1af4"
    );
    // Broadcast: bytes 10..12 are the Vendor ID.
    assert_eq!(
        shown("33 00 00 00  01 00 00 7f  00 00 1a f4  00 00 00 00"),
        "Msg 01:00.0 broadcast Vendor_Defined_Type1 vendor=0x1af4"
    );
    // By address: bytes 8..16 are the address, so there is no Vendor ID.
    assert_eq!(
        shown("71 00 00 01  01 00 00 7e  00 00 00 01  00 00 00 00  ca fe ba be"),
        "MsgD 01:00.0 by-addr Vendor_Defined_Type0 addr=0x1_0000_0000 len=1 data=cafebabe"
    );
}

#[test]
fn packet_display_names_the_problem() {
    let bytes = hex("00 00 00 01  01 00");
    assert_eq!(
        Packet::new_unchecked(&bytes[..]).to_string(),
        "malformed TLP (6 bytes): TLP truncated: 12 bytes needed, 6 present"
    );
    let bytes = hex("34 00 00 00  01 00 00 20  00 00 00 00  00 00 00 00");
    assert_eq!(Packet::new_checked(&bytes[..]).unwrap().to_string(), "Msg 01:00.0 local Assert_INTA");
}

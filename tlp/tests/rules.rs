//! One test per validation rule and per structural parse error, each named after the rule, with
//! the violating TLP written out as hex (DW by DW, big-endian as on the wire).
//!
//! DW0 cheat sheet: byte 0 = Fmt[2:0] Type[4:0]; byte 1 = T9 TC[2:0] T8 Attr[2] LN TH;
//! byte 2 = TD EP Attr[1:0] AT[1:0] Length[9:8]; byte 3 = Length[7:0].

use tlp::{Attr, Body, Limits, MemOp, MemRequest, RoutingId, Rule, Tlp, TlpError};

fn hex(s: &str) -> Vec<u8> {
    let digits: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    assert_eq!(digits.len() % 2, 0, "odd number of hex digits in {s:?}");
    (0..digits.len()).step_by(2).map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap()).collect()
}

fn with_zero_payload(header: &str, payload_len: usize) -> Vec<u8> {
    let mut bytes = hex(header);
    bytes.resize(bytes.len() + payload_len, 0);
    bytes
}

/// Parses the bytes (which must be well-formed) and checks that `rule` is among the violations,
/// that its text names the rule, and that its detail mentions `expect_in_detail`.
fn assert_violates(bytes: &[u8], limits: &Limits, rule: Rule, expect_in_detail: &str) {
    let tlp = Tlp::parse(bytes).unwrap_or_else(|e| panic!("fixture does not parse: {e}"));
    let violations = tlp.violations(limits);
    let v = violations
        .iter()
        .find(|v| v.rule == rule)
        .unwrap_or_else(|| panic!("{tlp}: expected {} among {violations:?}", rule.name()));
    let text = v.to_string();
    assert!(text.starts_with(&format!("{}: ", rule.name())), "{text}");
    assert!(v.detail.contains(expect_in_detail), "detail {:?} lacks {expect_in_detail:?}", v.detail);
    assert!(tlp.validate(limits).is_err());
}

fn assert_valid(bytes: &[u8], limits: &Limits) {
    let tlp = Tlp::parse(bytes).unwrap();
    assert_eq!(tlp.violations(limits), vec![], "{tlp}");
}

const NO_LIMITS: Limits = Limits { max_payload_size: None, max_read_request_size: None };

/// A valid MRd32 (requester 01:00.0, tag 0, Length 1, BE f/0, address 0x1000) to put prefixes on.
const MRD32: &str = "00 00 00 01  01 00 00 0f  00 00 10 00";

#[test]
fn rule_names_are_unique_and_kebab_case() {
    let mut names: Vec<&str> = Rule::ALL.iter().map(Rule::name).collect();
    assert!(
        names.iter().all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
    );
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), Rule::ALL.len());
    assert!(Rule::ALL.iter().all(|r| r.spec_section().starts_with('§')));
}

#[test]
fn valid_fixture_has_no_violations() {
    assert_valid(&hex(MRD32), &NO_LIMITS);
}

// ---- structural errors (Tlp::parse) ----

#[test]
fn reserved_fmt_type() {
    // Fmt 101b.
    let err = Tlp::parse(&hex("a0 00 00 01  01 00 00 0f  00 00 10 00")).unwrap_err();
    assert_eq!(err, TlpError::ReservedFmtType { fmt: 0b101, ty: 0, offset: 0 });
    // Deprecated TCfgRd (Type 11011b).
    let err = Tlp::parse(&hex("1b 00 00 01  01 00 00 0f  00 00 10 00")).unwrap_err();
    assert_eq!(err, TlpError::ReservedFmtType { fmt: 0, ty: 0b11011, offset: 0 });
    // Msg with routing 110b.
    let err = Tlp::parse(&hex("36 00 00 00  01 00 00 20  00 00 00 00  00 00 00 00")).unwrap_err();
    assert_eq!(err, TlpError::ReservedFmtType { fmt: 0b001, ty: 0b10110, offset: 0 });
    // Cpl with a 4DW header, after one prefix: the offset points past the prefix.
    let err =
        Tlp::parse(&hex("91 00 00 01  2a 00 00 00  00 00 00 04  01 00 00 00  00 00 00 00")).unwrap_err();
    assert_eq!(err, TlpError::ReservedFmtType { fmt: 0b001, ty: 0b01010, offset: 4 });
    assert!(err.to_string().contains("Fmt=0b001 Type=0b01010"), "{err}");
}

#[test]
fn truncated() {
    assert_eq!(Tlp::parse(&[]), Err(TlpError::Truncated { needed: 4, got: 0 }));
    assert_eq!(Tlp::parse(&hex("00 00 00 01  01 00")), Err(TlpError::Truncated { needed: 12, got: 6 }));
    // A prefix with no header after it.
    assert_eq!(Tlp::parse(&hex("91 00 00 01")), Err(TlpError::Truncated { needed: 8, got: 4 }));
    // TD set on an MRd but the digest is missing.
    assert_eq!(
        Tlp::parse(&hex("00 00 80 01  01 00 00 0f  00 00 10 00")),
        Err(TlpError::Truncated { needed: 16, got: 12 })
    );
}

#[test]
fn trailing_bytes() {
    let err = Tlp::parse(&hex("00 00 00 01  01 00 00 0f  00 00 10 00  ff")).unwrap_err();
    assert_eq!(err, TlpError::TrailingBytes { expected: 12, got: 13 });
}

#[test]
fn length_mismatch() {
    // MWr32 Length 2 carrying one DW.
    let err = Tlp::parse(&hex("40 00 00 02  01 00 00 ff  00 00 10 00  11 22 33 44")).unwrap_err();
    assert_eq!(
        err,
        TlpError::LengthMismatch {
            length_field: 2,
            length_dw: 2,
            header_len: 12,
            td: false,
            expected: 20,
            got: 16
        }
    );
    // MWr32 Length 0 means 1024 DW.
    let err = Tlp::parse(&hex("40 00 00 00  01 00 00 ff  00 00 10 00  11 22 33 44")).unwrap_err();
    assert!(matches!(err, TlpError::LengthMismatch { length_dw: 1024, expected: 4108, .. }), "{err}");
}

#[test]
fn reserved_bits_set() {
    // IORd with address bits 1:0 = 01b.
    let err = Tlp::parse(&hex("02 00 00 01  01 00 00 0f  00 00 03 f9")).unwrap_err();
    assert_eq!(err, TlpError::ReservedBitsSet { field: "I/O address bits 1:0", offset: 11, value: 1 });
    // CfgRd0 with DW2 bit 12 set.
    let err = Tlp::parse(&hex("04 00 00 01  01 00 00 0f  01 00 10 00")).unwrap_err();
    assert!(matches!(err, TlpError::ReservedBitsSet { offset: 10, value: 1, .. }), "{err}");
    // Cpl with DW2 bit 7 set.
    let err = Tlp::parse(&hex("0a 00 00 00  00 00 00 04  01 00 12 80")).unwrap_err();
    assert!(matches!(err, TlpError::ReservedBitsSet { offset: 11, .. }), "{err}");
}

// ---- semantic rules (Tlp::validate) ----

#[test]
fn field_out_of_range() {
    // Not expressible in bytes: the wire fields are exactly as wide as the spec's. A hand-built
    // TLP can hold TC 8 or an 11-bit tag.
    let mut tlp = Tlp::parse(&hex(MRD32)).unwrap();
    tlp.tc = 8;
    let v = tlp.validate(&NO_LIMITS).unwrap_err();
    assert_eq!(v.rule, Rule::FieldOutOfRange);
    assert_eq!(v.to_string(), "field-out-of-range: TC 8 > 7");
    let Body::Memory(m) = &mut tlp.body else { unreachable!() };
    tlp.tc = 0;
    m.tag = 0x400;
    assert_eq!(
        tlp.validate(&NO_LIMITS).unwrap_err().to_string(),
        "field-out-of-range: tag 0x400 wider than 10 bits"
    );
}

#[test]
fn length_payload_mismatch() {
    // Parse rejects such bytes (see `length_mismatch`); a hand-built MWr can still hold them.
    let tlp = Tlp {
        prefixes: vec![],
        tc: 0,
        attr: Attr::default(),
        ln: false,
        th: false,
        ep: false,
        at: 0,
        length: 2,
        body: Body::Memory(MemRequest {
            op: MemOp::Write,
            requester: RoutingId::new(1, 0, 0),
            tag: 0,
            first_be: 0xf,
            last_be: 0xf,
            address: 0x1000,
            ph: 0,
            addr64: false,
        }),
        payload: vec![1, 2, 3, 4],
        digest: None,
    };
    let v = tlp.validate(&NO_LIMITS).unwrap_err();
    assert_eq!(v.rule, Rule::LengthPayloadMismatch);
    assert_eq!(
        v.to_string(),
        "length-payload-mismatch: MWr Length 2 (2 DW = 8 bytes) but the payload has 4 bytes"
    );
}

#[test]
fn length_reserved_nonzero() {
    // Cpl (no data) with Length 1.
    assert_violates(
        &hex("0a 00 00 01  00 00 00 04  01 00 12 00"),
        &NO_LIMITS,
        Rule::LengthReservedNonzero,
        "Length 1",
    );
}

#[test]
fn payload_exceeds_mps() {
    // MWr32 Length 64 (256 bytes of zeros follow) with Max_Payload_Size 128.
    let bytes = with_zero_payload("40 00 00 40  01 00 00 ff  00 00 10 00", 256);
    let limits = Limits { max_payload_size: Some(128), ..NO_LIMITS };
    assert_violates(&bytes, &limits, Rule::PayloadExceedsMps, "payload 256 bytes > Max_Payload_Size 128");
    assert_valid(&bytes, &Limits { max_payload_size: Some(256), ..NO_LIMITS });
}

#[test]
fn read_request_exceeds_mrrs() {
    // MRd32 Length 128 DW (512 bytes) with Max_Read_Request_Size 256.
    let bytes = hex("00 00 00 80  01 00 01 ff  00 00 00 00");
    let limits = Limits { max_read_request_size: Some(256), ..NO_LIMITS };
    assert_violates(&bytes, &limits, Rule::ReadRequestExceedsMrrs, "512 bytes > Max_Read_Request_Size 256");
    assert_valid(&bytes, &NO_LIMITS);
}

#[test]
fn crosses_4k_boundary() {
    // MRd32 at 0xff0, Length 8 DW: bytes 0xff0..0x1010.
    let bytes = hex("00 00 00 08  01 00 02 ff  00 00 0f f0");
    assert_violates(
        &bytes,
        &NO_LIMITS,
        Rule::Crosses4kBoundary,
        "ends at 0x100f, past the 4 KiB boundary 0x1000",
    );
    // Length 4 at 0xff0 ends exactly at the boundary.
    assert_valid(&hex("00 00 00 04  01 00 02 ff  00 00 0f f0"), &NO_LIMITS);
}

#[test]
fn four_dw_address_below_4g() {
    // MRd64 with address 0x1000.
    let bytes = hex("20 00 00 01  01 00 03 0f  00 00 00 00  00 00 10 00");
    assert_violates(&bytes, &NO_LIMITS, Rule::FourDwAddressBelow4G, "address 0x1000 below 4 GiB");
}

#[test]
fn three_dw_address_above_4g() {
    // A 3DW header cannot carry it, so only a hand-built TLP can break this.
    let mut tlp = Tlp::parse(&hex(MRD32)).unwrap();
    let Body::Memory(m) = &mut tlp.body else { unreachable!() };
    m.address = 0x1_0000_1000;
    let v = tlp.validate(&NO_LIMITS).unwrap_err();
    assert_eq!(v.rule, Rule::ThreeDwAddressAbove4G);
    assert!(v.detail.contains("0x100001000"), "{v}");
}

#[test]
fn last_be_nonzero_for_length_1() {
    // MRd32 Length 1, BE f/f.
    let bytes = hex("00 00 00 01  01 00 04 ff  00 00 10 00");
    assert_violates(&bytes, &NO_LIMITS, Rule::LastBeNonzeroForLength1, "Last DW BE 0b1111");
}

#[test]
fn first_be_zero_for_multi_dw() {
    // MRd32 Length 2, First BE 0000b, Last BE 1111b.
    let bytes = hex("00 00 00 02  01 00 05 f0  00 00 10 00");
    assert_violates(&bytes, &NO_LIMITS, Rule::FirstBeZeroForMultiDw, "Length 2 with First DW BE 0000b");
}

#[test]
fn last_be_zero_for_multi_dw() {
    // MRd32 Length 2, First BE 1111b, Last BE 0000b.
    let bytes = hex("00 00 00 02  01 00 06 0f  00 00 10 00");
    assert_violates(&bytes, &NO_LIMITS, Rule::LastBeZeroForMultiDw, "Length 2 with Last DW BE 0000b");
}

#[test]
fn non_contiguous_be() {
    // MRd32 Length 3, First BE 0101b.
    assert_violates(
        &hex("00 00 00 03  01 00 07 f5  00 00 10 00"),
        &NO_LIMITS,
        Rule::NonContiguousBe,
        "0b0101/0b1111",
    );
    // Length 2, not QW aligned (0x1004), BEs 0101b/1010b.
    assert_violates(
        &hex("00 00 00 02  01 00 07 a5  00 00 10 04"),
        &NO_LIMITS,
        Rule::NonContiguousBe,
        "not QW aligned",
    );
    // The same BEs at a QW-aligned address are allowed, and so is a zero-length read.
    assert_valid(&hex("00 00 00 02  01 00 07 a5  00 00 10 08"), &NO_LIMITS);
    assert_valid(&hex("00 00 00 01  01 00 07 00  00 00 10 08"), &NO_LIMITS);
}

#[test]
fn io_cfg_length_not_1() {
    // IORd Length 2.
    assert_violates(
        &hex("02 00 00 02  01 00 08 ff  00 00 03 f8"),
        &NO_LIMITS,
        Rule::IoCfgLengthNot1,
        "IORd Length 2",
    );
}

#[test]
fn io_cfg_tc_not_0() {
    // CfgRd0 TC1 to 01:00.0 register 0x10.
    assert_violates(
        &hex("04 10 00 01  01 00 09 0f  01 00 00 10"),
        &NO_LIMITS,
        Rule::IoCfgTcNot0,
        "CfgRd0 TC 1",
    );
}

#[test]
fn io_cfg_attr_not_0() {
    // CfgWr0 with Relaxed Ordering, one DW of data.
    let bytes = hex("44 00 20 01  00 00 0a 0f  01 00 00 04  78 56 34 12");
    assert_violates(&bytes, &NO_LIMITS, Rule::IoCfgAttrNot0, "RO=1 NS=0 IDO=0");
}

#[test]
fn io_cfg_ln_th_at_not_0() {
    // IOWr with AT 01b.
    let bytes = hex("42 00 04 01  01 00 0b 01  00 00 03 f8  41 00 00 00");
    assert_violates(&bytes, &NO_LIMITS, Rule::IoCfgLnThAtNot0, "IOWr LN 0 TH 0 AT 1");
}

#[test]
fn ph_without_th() {
    // MRd32 with address bits 1:0 (PH) = 01b but TH 0.
    assert_violates(
        &hex("00 00 00 01  01 00 0c 0f  00 00 10 01"),
        &NO_LIMITS,
        Rule::PhWithoutTh,
        "PH 1 with TH 0",
    );
    // With TH set (DW0 bit 16) the same PH is fine.
    assert_valid(&hex("00 01 00 01  01 00 0c 0f  00 00 10 01"), &NO_LIMITS);
}

#[test]
fn reserved_cpl_status() {
    // Cpl with status 011b.
    let bytes = hex("0a 00 00 00  00 00 60 04  01 00 12 00");
    assert_violates(&bytes, &NO_LIMITS, Rule::ReservedCplStatus, "status 0b011 is reserved");
}

#[test]
fn crs_with_data() {
    // CplD with status CRS (010b) and one DW.
    let bytes = hex("4a 00 00 01  00 00 40 04  01 00 12 00  01 00 ff ff");
    assert_violates(&bytes, &NO_LIMITS, Rule::CrsWithData, "CRS carries 4 bytes");
}

#[test]
fn io_cfg_cpl_byte_count() {
    // Cpl SC without data, Byte Count 8.
    let bytes = hex("0a 00 00 00  00 00 00 08  01 00 12 00");
    assert_violates(&bytes, &NO_LIMITS, Rule::IoCfgCplByteCount, "Byte Count 8 and Lower Address 0x0");
    // UR without data may carry any byte count.
    assert_valid(&hex("0a 00 00 00  00 00 20 08  01 00 12 00"), &NO_LIMITS);
}

#[test]
fn cpl_length_exceeds_byte_count() {
    // CplD Length 2 with Byte Count 4 and Lower Address 0x40.
    let bytes = hex("4a 00 00 02  00 00 00 04  01 00 12 40  00 00 00 00  00 00 00 00");
    assert_violates(&bytes, &NO_LIMITS, Rule::CplLengthExceedsByteCount, "carries 8 bytes");
    // Byte Count 5 at Lower Address 0x43 spans two DWs.
    assert_valid(&hex("4a 00 00 02  00 00 00 05  01 00 12 43  00 00 00 00  00 00 00 00"), &NO_LIMITS);
}

#[test]
fn message_requires_tc0() {
    // Assert_INTA (Msg, local) with TC1.
    let bytes = hex("34 10 00 00  01 00 00 20  00 00 00 00  00 00 00 00");
    assert_violates(&bytes, &NO_LIMITS, Rule::MessageRequiresTc0, "Assert_INTA (code 0x20) sent with TC 1");
}

#[test]
fn message_routing() {
    // Assert_INTA routed to the Root Complex instead of local.
    let bytes = hex("30 00 00 00  01 00 00 20  00 00 00 00  00 00 00 00");
    assert_violates(&bytes, &NO_LIMITS, Rule::MessageRouting, "Assert_INTA routed to-rc (must be local)");
}

#[test]
fn message_data() {
    // Assert_INTA sent as MsgD with one DW.
    let bytes = hex("74 00 00 01  01 00 00 20  00 00 00 00  00 00 00 00  00 00 00 01");
    assert_violates(&bytes, &NO_LIMITS, Rule::MessageData, "sent as MsgD with 4 bytes");
    // Set_Slot_Power_Limit without its DW of data.
    let bytes = hex("34 00 00 00  00 00 00 50  00 00 00 00  00 00 00 00");
    assert_violates(&bytes, &NO_LIMITS, Rule::MessageData, "MsgD with 1 DW of data but carries 0 bytes");
}

#[test]
fn atomic_operand_size() {
    // FetchAdd32 with a 12-byte operand (Length 3).
    let bytes = hex("4c 00 00 03  01 00 0d 00  00 00 10 00  00 00 00 00  00 00 00 00  00 00 00 00");
    assert_violates(
        &bytes,
        &NO_LIMITS,
        Rule::AtomicOperandSize,
        "payload is 12 bytes; allowed sizes are [4, 8]",
    );
}

#[test]
fn atomic_address_misaligned() {
    // CAS32 with 16 bytes (two 8-byte operands) at 0x1004.
    let bytes = with_zero_payload("4e 00 00 04  01 00 0e 00  00 00 10 04", 16);
    assert_violates(
        &bytes,
        &NO_LIMITS,
        Rule::AtomicAddressMisaligned,
        "0x1004 is not aligned to its 8-byte operand",
    );
}

#[test]
fn reserved_address_type() {
    // MRd32 (the MRD32 fixture) with AT 11b.
    let bytes = hex("00 00 0c 01  01 00 00 0f  00 00 10 00");
    assert_violates(&bytes, &NO_LIMITS, Rule::ReservedAddressType, "MRd AT 11b is a reserved encoding");
    assert_eq!(Tlp::parse(&bytes).unwrap().violations(&NO_LIMITS).len(), 1);
    // FetchAdd32 with AT 11b.
    let bytes = hex("4c 00 0c 01  01 00 20 00  00 00 10 00  00 00 00 01");
    assert_violates(&bytes, &NO_LIMITS, Rule::ReservedAddressType, "FetchAdd AT 11b");
    // Cpl (SC, Byte Count 4) with AT 10b: AT is reserved in completions.
    let bytes = hex("0a 00 08 00  01 00 00 04  00 00 01 00");
    assert_violates(&bytes, &NO_LIMITS, Rule::ReservedAddressType, "Cpl AT 10b (reserved in completions");
    // Assert_INTA with AT 01b: AT is reserved in messages.
    let bytes = hex("34 00 04 00  01 00 00 20  00 00 00 00  00 00 00 00");
    assert_violates(&bytes, &NO_LIMITS, Rule::ReservedAddressType, "Msg AT 01b");
    // Memory requests may use 01b (translation request) and 10b (translated).
    assert_valid(&hex("00 00 04 01  01 00 00 0f  00 00 10 00"), &NO_LIMITS);
    assert_valid(&hex("40 00 08 01  01 00 00 0f  00 00 10 00  00 00 00 41"), &NO_LIMITS);
    // IORd with AT 11b is io-cfg-ln-th-at-not-0, reported once.
    let rules: Vec<Rule> = Tlp::parse(&hex("02 00 0c 01  01 00 0b 01  00 00 03 f8"))
        .unwrap()
        .violations(&NO_LIMITS)
        .into_iter()
        .map(|v| v.rule)
        .collect();
    assert_eq!(rules, vec![Rule::IoCfgLnThAtNot0]);
}

#[test]
fn prefix_reserved_type() {
    // Prefix type 00101b.
    let bytes = hex(&format!("85 00 00 00  {MRD32}"));
    assert_violates(&bytes, &NO_LIMITS, Rule::PrefixReservedType, "reserved type 0b00101");
}

#[test]
fn local_prefix_after_end_end() {
    // PASID (End-End) then VendPrefixL0 (Local).
    let bytes = hex(&format!("91 00 00 01  8e 00 00 00  {MRD32}"));
    assert_violates(&bytes, &NO_LIMITS, Rule::LocalPrefixAfterEndEnd, "prefix 1 = 0x8e000000 is Local");
    assert_valid(&hex(&format!("8e 00 00 00  91 00 00 01  {MRD32}")), &NO_LIMITS);
}

#[test]
fn too_many_end_end_prefixes() {
    let bytes = hex(&format!("9e 00 00 00  9e 00 00 01  9e 00 00 02  9e 00 00 03  9e 00 00 04  {MRD32}"));
    assert_violates(&bytes, &NO_LIMITS, Rule::TooManyEndEndPrefixes, "5 End-End prefixes");
}

#[test]
fn ext_tph_prefix_without_th() {
    let bytes = hex(&format!("90 00 00 12  {MRD32}"));
    assert_violates(&bytes, &NO_LIMITS, Rule::ExtTphPrefixWithoutTh, "TH is 0");
}

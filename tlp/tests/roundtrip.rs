//! parse and emit are exact inverses, and the `wire::Packet` view agrees with `Tlp`.

use proptest::prelude::*;
use tlp::arbitrary::{KIND_NAMES, any_tlp, valid_tlp, valid_tlp_of};
use tlp::wire::Packet;
use tlp::{Body, Limits, Tlp, TlpError};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn emit_then_parse_gives_back_a_valid_tlp(tlp in valid_tlp()) {
        let bytes = tlp.to_bytes();
        prop_assert_eq!(bytes.len(), tlp.buffer_len());
        prop_assert_eq!(Tlp::parse(&bytes), Ok(tlp));
    }

    #[test]
    fn parse_then_emit_gives_back_the_bytes(tlp in valid_tlp()) {
        let bytes = tlp.to_bytes();
        let parsed = Tlp::parse(&bytes).unwrap();
        let mut out = vec![0xa5; parsed.buffer_len() + 7];
        let written = parsed.emit(&mut out).unwrap();
        prop_assert_eq!(&out[..written], &bytes[..]);
    }

    /// Parsing into a reused payload buffer gives the same TLP, whatever the buffer held, and
    /// keeps the buffer's allocation when it is large enough.
    #[test]
    fn parse_reusing_a_buffer_equals_parse(tlp in any_tlp(), old in proptest::collection::vec(any::<u8>(), 0..64)) {
        let bytes = tlp.to_bytes();
        let mut buffer = Vec::with_capacity(4096 + 64);
        buffer.extend_from_slice(&old);
        let at = buffer.as_ptr();
        let parsed = Tlp::parse_reusing(&bytes, buffer).unwrap();
        prop_assert_eq!(parsed.payload.as_ptr(), at);
        prop_assert_eq!(parsed, tlp);
    }

    #[test]
    fn any_representable_tlp_round_trips(tlp in any_tlp()) {
        prop_assert_eq!(Tlp::parse(&tlp.to_bytes()), Ok(tlp));
    }

    #[test]
    fn generated_valid_tlps_pass_validation(tlp in valid_tlp()) {
        prop_assert_eq!(tlp.validate(&Limits::default()), Ok(()), "{}", tlp);
    }

    #[test]
    fn packet_view_agrees_with_tlp(tlp in any_tlp()) {
        let bytes = tlp.to_bytes();
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        prop_assert_eq!(packet.prefix_count(), tlp.prefixes.len());
        for (i, p) in tlp.prefixes.iter().enumerate() {
            prop_assert_eq!(packet.prefix(i), Some(*p));
        }
        prop_assert_eq!(packet.fmt(), Some(tlp.fmt()));
        prop_assert_eq!(packet.type_bits(), tlp.type_field());
        prop_assert_eq!(packet.tc(), tlp.tc);
        prop_assert_eq!(packet.attr(), tlp.attr);
        prop_assert_eq!((packet.ln(), packet.th(), packet.ep(), packet.at()), (tlp.ln, tlp.th, tlp.ep, tlp.at));
        prop_assert_eq!(packet.length(), tlp.length);
        prop_assert_eq!(Some(packet.tag()), tlp.tag());
        prop_assert_eq!(packet.requester_id(), tlp.requester());
        prop_assert_eq!(packet.payload(), &tlp.payload[..]);
        prop_assert_eq!(packet.digest(), tlp.digest);
        prop_assert_eq!(packet.total_len(), bytes.len());
        match tlp.body {
            Body::Memory(m) => {
                prop_assert_eq!((packet.address(), packet.ph()), (m.address, m.ph));
                prop_assert_eq!((packet.first_be(), packet.last_be()), (m.first_be, m.last_be));
            }
            Body::Atomic(a) => prop_assert_eq!((packet.address(), packet.ph()), (a.address, a.ph)),
            Body::Io(io) => prop_assert_eq!(packet.address(), u64::from(io.address)),
            Body::Config(c) => {
                prop_assert_eq!((packet.cfg_target(), packet.cfg_register()), (c.target, c.register));
            }
            Body::Completion(c) => {
                prop_assert_eq!(packet.completer_id(), c.completer);
                prop_assert_eq!(packet.cpl_status(), c.status);
                prop_assert_eq!(packet.bcm(), c.bcm);
                prop_assert_eq!(packet.byte_count(), c.byte_count);
                prop_assert_eq!(packet.lower_address(), c.lower_address);
            }
            Body::Message(m) => {
                prop_assert_eq!(packet.message_code(), m.code);
                prop_assert_eq!(packet.message_fields(), &m.fields[..]);
            }
        }
    }

    #[test]
    fn emit_into_a_short_buffer_fails(tlp in valid_tlp(), short in 1usize..16) {
        let needed = tlp.buffer_len();
        let mut buf = vec![0; needed.saturating_sub(short)];
        prop_assert_eq!(tlp.emit(&mut buf), Err(TlpError::BufferTooSmall { needed, got: buf.len() }));
    }
}

#[test]
fn every_kind_is_generated() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    for name in KIND_NAMES {
        let strategy = valid_tlp_of(name);
        for _ in 0..20 {
            let tlp = strategy.new_tree(&mut runner).unwrap().current();
            assert_eq!(tlp.kind_name(), name);
        }
    }
}

/// smoltcp-style fixed vectors: the same bytes deconstructed, constructed, parsed and emitted.
mod fixed {
    use tlp::wire::Packet;
    use tlp::{Attr, Body, Completion, CplStatus, MemOp, MemRequest, RoutingId, Tlp};

    // MWr 4DW, TC2, RO, Length 2, requester 03:00.1, tag 0x2a5 (T9 set, T8 clear),
    // BEs f/3, address 0x1_2345_6780, data 11 22 33 44 55 66 77 88.
    static MWR64: [u8; 24] = [
        0x60, 0xa0, 0x20, 0x02, 0x03, 0x01, 0xa5, 0x3f, 0x00, 0x00, 0x00, 0x01, 0x23, 0x45, 0x67, 0x80, 0x11,
        0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88,
    ];

    fn mwr64() -> Tlp {
        Tlp {
            prefixes: vec![],
            tc: 2,
            attr: Attr { relaxed_ordering: true, no_snoop: false, id_based_ordering: false },
            ln: false,
            th: false,
            ep: false,
            at: 0,
            length: 2,
            body: Body::Memory(MemRequest {
                op: MemOp::Write,
                requester: RoutingId::new(3, 0, 1),
                tag: 0x2a5,
                first_be: 0xf,
                last_be: 0x3,
                address: 0x1_2345_6780,
                ph: 0,
                addr64: true,
            }),
            payload: vec![0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88],
            digest: None,
        }
    }

    // CplD with ECRC: completer 00:00.0, SC, Byte Count 4096 (wire 0), requester 01:00.0,
    // tag 0x12, Lower Address 0x40, Length 1, data de ad be ef, digest 0x0badcafe.
    static CPLD_TD: [u8; 20] = [
        0x4a, 0x00, 0x80, 0x01, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x12, 0x40, 0xde, 0xad, 0xbe, 0xef, 0x0b,
        0xad, 0xca, 0xfe,
    ];

    fn cpld_td() -> Tlp {
        Tlp {
            prefixes: vec![],
            tc: 0,
            attr: Attr::default(),
            ln: false,
            th: false,
            ep: false,
            at: 0,
            length: 1,
            body: Body::Completion(Completion {
                locked: false,
                completer: RoutingId::new(0, 0, 0),
                status: CplStatus::Sc,
                bcm: false,
                byte_count: 4096,
                requester: RoutingId::new(1, 0, 0),
                tag: 0x12,
                lower_address: 0x40,
            }),
            payload: vec![0xde, 0xad, 0xbe, 0xef],
            digest: Some(0x0bad_cafe),
        }
    }

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&MWR64[..]).unwrap();
        assert_eq!((p.fmt_bits(), p.type_bits()), (0b011, 0));
        assert_eq!((p.tc(), p.attr().relaxed_ordering, p.length(), p.tag()), (2, true, 2, 0x2a5));
        assert_eq!(p.requester_id(), RoutingId::new(3, 0, 1));
        assert_eq!((p.first_be(), p.last_be(), p.address()), (0xf, 0x3, 0x1_2345_6780));
        assert_eq!(p.payload(), &MWR64[16..]);

        let p = Packet::new_checked(&CPLD_TD[..]).unwrap();
        assert!(p.td());
        assert_eq!((p.cpl_status(), p.byte_count_field(), p.byte_count()), (CplStatus::Sc, 0, 4096));
        assert_eq!((p.requester_id(), p.tag(), p.lower_address()), (RoutingId::new(1, 0, 0), 0x12, 0x40));
        assert_eq!(p.digest(), Some(0x0bad_cafe));
    }

    #[test]
    fn construct() {
        let mut buf = [0xffu8; 24];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_fmt_type(tlp::Fmt::FourDwWithData, 0);
        p.set_tc(2);
        p.set_attr(Attr { relaxed_ordering: true, ..Attr::default() });
        p.set_ln(false);
        p.set_th(false);
        p.set_td(false);
        p.set_ep(false);
        p.set_at(0);
        p.set_length(2);
        p.set_tag(0x2a5);
        p.set_requester_id(RoutingId::new(3, 0, 1));
        p.set_first_be(0xf);
        p.set_last_be(0x3);
        p.set_address(0x1_2345_6780);
        p.set_ph(0);
        p.payload_mut().copy_from_slice(&[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]);
        assert_eq!(buf, MWR64);
    }

    #[test]
    fn parse() {
        assert_eq!(Tlp::parse(&MWR64), Ok(mwr64()));
        assert_eq!(Tlp::parse(&CPLD_TD), Ok(cpld_td()));
    }

    #[test]
    fn emit() {
        assert_eq!(mwr64().to_bytes(), MWR64);
        assert_eq!(cpld_td().to_bytes(), CPLD_TD);
    }
}

//! Every TLP the split and completion builders produce is valid on the wire: it survives
//! `to_bytes` → `parse` unchanged and passes `validate` with the link's MPS and MRRS.

use proptest::prelude::*;
use tlp::completion::{
    MemoryRead, ReadReassembly, io_config_read_completion, io_config_write_completion, read_completions,
    unsuccessful_completion,
};
use tlp::split::{
    LinkParams, RequestFields, SplitChunk, memory_read_requests, memory_read_tlp, memory_write_tlps,
};
use tlp::validate::Limits;
use tlp::{Attr, Body, CfgType, ConfigRequest, CplStatus, RoutingId, Tlp};

const REQUESTER: RoutingId = RoutingId::new(0x00, 0x02, 0x0);
const COMPLETER: RoutingId = RoutingId::new(0x04, 0x00, 0x0);

fn assert_on_wire(tlp: &Tlp, limits: &Limits) {
    let bytes = tlp.to_bytes();
    assert_eq!(
        Tlp::parse(&bytes).as_ref(),
        Ok(tlp),
        "{} does not survive the wire: {bytes:02x?}",
        tlp.kind_name()
    );
    if let Err(violation) = tlp.validate(limits) {
        panic!("{} violates {violation}: {tlp:?}", tlp.kind_name());
    }
}

fn size() -> impl Strategy<Value = u16> {
    (0u32..=5).prop_map(|code| 128 << code)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn split_reads_and_their_completions_are_valid(
        address in prop_oneof![0u64..1 << 20, 0xffff_0000u64..0x1_0001_0000, 0u64..1 << 50],
        len in 0u64..10_000,
        mps in size(),
        mrrs in size(),
        rcb in prop_oneof![Just(64u16), Just(128u16)],
        tc in 0u8..8,
    ) {
        let fields = RequestFields { requester: REQUESTER, tc, attr: Attr { no_snoop: true, ..Attr::default() } };
        let link = LinkParams::new(mps, mrrs, rcb).unwrap();
        let limits = Limits { max_payload_size: Some(mps), max_read_request_size: Some(mrrs) };
        for (tag, chunk) in memory_read_requests(address, len, mrrs).unwrap().enumerate() {
            let request = memory_read_tlp(&fields, chunk, tag as u16 & 0x3ff, mrrs).unwrap();
            assert_on_wire(&request, &limits);
            let read = MemoryRead::from_tlp(&request).unwrap();
            let data: Vec<u8> = (0..chunk.len).map(|i| i as u8 ^ 0x5a).collect();
            let mut reassembly = ReadReassembly::for_request(&request).unwrap();
            for completion in read_completions(&read, COMPLETER, &data, &link).unwrap() {
                assert_on_wire(&completion, &limits);
                // What the requester gets back from the wire still reassembles.
                reassembly.accept(&Tlp::parse(&completion.to_bytes()).unwrap()).unwrap();
            }
            prop_assert!(reassembly.is_finished());
            for status in [CplStatus::Ur, CplStatus::Ca] {
                assert_on_wire(&unsuccessful_completion(&request, COMPLETER, status).unwrap(), &limits);
            }
        }
    }

    #[test]
    fn split_writes_are_valid(
        address in prop_oneof![0u64..1 << 20, 0xffff_0000u64..0x1_0001_0000, 0u64..1 << 50],
        data in proptest::collection::vec(any::<u8>(), 0..10_000),
        mps in size(),
    ) {
        let fields = RequestFields { requester: REQUESTER, tc: 0, attr: Attr::default() };
        let limits = Limits { max_payload_size: Some(mps), max_read_request_size: None };
        for write in memory_write_tlps(fields, address, &data, mps).unwrap() {
            assert_on_wire(&write, &limits);
        }
    }
}

#[test]
fn config_completions_are_valid() {
    let mut request = Tlp {
        prefixes: vec![],
        tc: 0,
        attr: Attr::default(),
        ln: false,
        th: false,
        ep: false,
        at: 0,
        length: 1,
        body: Body::Config(ConfigRequest {
            cfg_type: CfgType::Type0,
            write: false,
            requester: REQUESTER,
            tag: 0x80,
            first_be: 0b1100,
            last_be: 0,
            target: COMPLETER,
            register: 0x40,
        }),
        payload: vec![],
        digest: None,
    };
    let limits = Limits::default();
    assert_on_wire(&request, &limits);
    assert_on_wire(&io_config_read_completion(&request, COMPLETER, [1, 2, 3, 4]).unwrap(), &limits);
    for status in [CplStatus::Ur, CplStatus::Ca, CplStatus::Crs] {
        assert_on_wire(&unsuccessful_completion(&request, COMPLETER, status).unwrap(), &limits);
    }
    if let Body::Config(c) = &mut request.body {
        c.write = true;
    }
    request.payload = vec![0, 0, 5, 6];
    assert_on_wire(&io_config_write_completion(&request, COMPLETER).unwrap(), &limits);
}

#[test]
fn zero_length_and_full_page_reads_are_valid() {
    let fields = RequestFields { requester: REQUESTER, tc: 0, attr: Attr::default() };
    let limits = Limits { max_payload_size: Some(4096), max_read_request_size: Some(4096) };
    let link = LinkParams::new(4096, 4096, 128).unwrap();
    for (address, len) in [(0x1_0000_0010, 0), (0x2000, 4096), (0x3001, 4095)] {
        let request = memory_read_tlp(&fields, SplitChunk { address, len }, 1, 4096).unwrap();
        assert_on_wire(&request, &limits);
        let read = MemoryRead::from_tlp(&request).unwrap();
        let data = vec![0xa5; len as usize];
        let completions: Vec<Tlp> = read_completions(&read, COMPLETER, &data, &link).unwrap().collect();
        assert_eq!(completions.len(), 1);
        assert_on_wire(&completions[0], &limits);
        assert_on_wire(&unsuccessful_completion(&request, COMPLETER, CplStatus::Ur).unwrap(), &limits);
    }
}

//! Request splitting: hand-worked examples and properties (PCIe Base Spec r6.3 §2.2.7.1, §2.2.2,
//! §2.2.5.1).

use proptest::prelude::*;
use tlp::byte_enable::{ByteEnables, enabled_runs};
use tlp::split::{
    LinkParams, RequestFields, SplitChunk, memory_read_requests, memory_read_tlp, memory_write_tlp,
    memory_write_tlps, split_range,
};
use tlp::{Attr, Body, MemOp, MemRequest, RoutingId, Tlp, TlpError};

const REQUESTER: RoutingId = RoutingId::new(0x01, 0x00, 0x0);

fn fields() -> RequestFields {
    RequestFields { requester: REQUESTER, tc: 0, attr: Attr::default() }
}

fn mem(tlp: &Tlp) -> &MemRequest {
    match &tlp.body {
        Body::Memory(m) => m,
        other => panic!("not a memory request: {other:?}"),
    }
}

fn chunks(address: u64, len: u64, mrrs: u16) -> Vec<(u64, u32)> {
    memory_read_requests(address, len, mrrs).unwrap().map(|c| (c.address, c.len)).collect()
}

#[test]
fn link_params_are_validated() {
    assert!(LinkParams::new(128, 512, 64).is_ok());
    assert!(LinkParams::new(4096, 4096, 128).is_ok());
    assert_eq!(
        LinkParams::new(100, 512, 64),
        Err(TlpError::InvalidSize { parameter: "Max_Payload_Size", value: 100 })
    );
    assert_eq!(
        LinkParams::new(128, 8192, 64),
        Err(TlpError::InvalidSize { parameter: "Max_Read_Request_Size", value: 8192 })
    );
    assert_eq!(
        LinkParams::new(64, 512, 64),
        Err(TlpError::InvalidSize { parameter: "Max_Payload_Size", value: 64 })
    );
    assert_eq!(LinkParams::new(128, 512, 256), Err(TlpError::InvalidRcb { value: 256 }));
    let p = LinkParams::from_encodings(0b001, 0b010, true).unwrap();
    assert_eq!(
        (p.max_payload_size(), p.max_read_request_size(), p.read_completion_boundary()),
        (256, 512, 128)
    );
    assert_eq!(
        LinkParams::from_encodings(0b110, 0, false),
        Err(TlpError::ReservedSizeEncoding { parameter: "Max_Payload_Size", code: 0b110 })
    );
    assert_eq!(LinkParams::default(), LinkParams::new(128, 512, 64).unwrap());
}

/// The 512-byte read at 0x…fc0 of the issue: it crosses 4 KiB, so it becomes 64 bytes up to the
/// boundary and the rest after it; with MRRS 128 the rest is cut at multiples of 128.
#[test]
fn read_at_fc0_is_split_at_4k_and_mrrs() {
    let address = 0x1_2345_6fc0;
    assert_eq!(chunks(address, 512, 512), [(0x1_2345_6fc0, 64), (0x1_2345_7000, 448)]);
    assert_eq!(chunks(address, 512, 4096), [(0x1_2345_6fc0, 64), (0x1_2345_7000, 448)]);
    assert_eq!(
        chunks(address, 512, 128),
        [
            (0x1_2345_6fc0, 64),
            (0x1_2345_7000, 128),
            (0x1_2345_7080, 128),
            (0x1_2345_7100, 128),
            (0x1_2345_7180, 64)
        ]
    );

    let tlps: Vec<Tlp> = memory_read_requests(address, 512, 512)
        .unwrap()
        .zip([0x21_u16, 0x3ff])
        .map(|(chunk, tag)| memory_read_tlp(&fields(), chunk, tag, 512).unwrap())
        .collect();
    let expected = [
        MemRequest {
            op: MemOp::Read,
            requester: REQUESTER,
            tag: 0x21,
            first_be: 0xf,
            last_be: 0xf,
            address: 0x1_2345_6fc0,
            ph: 0,
            addr64: true,
        },
        MemRequest {
            op: MemOp::Read,
            requester: REQUESTER,
            tag: 0x3ff,
            first_be: 0xf,
            last_be: 0xf,
            address: 0x1_2345_7000,
            ph: 0,
            addr64: true,
        },
    ];
    assert_eq!(tlps.len(), 2);
    assert_eq!(*mem(&tlps[0]), expected[0]);
    assert_eq!(tlps[0].length, 16);
    assert_eq!(*mem(&tlps[1]), expected[1]);
    assert_eq!(tlps[1].length, 112);
    assert!(tlps.iter().all(|t| t.payload.is_empty()));
}

#[test]
fn read_requests_crossing_4k_below_4g() {
    // 3DW headers below 4 GiB; the boundary at 4 GiB is also a 4 KiB boundary.
    assert_eq!(chunks(0xffff_ff00, 0x200, 4096), [(0xffff_ff00, 0x100), (0x1_0000_0000, 0x100)]);
    let tlps: Vec<Tlp> = memory_read_requests(0xffff_ff00, 0x200, 4096)
        .unwrap()
        .map(|c| memory_read_tlp(&fields(), c, 1, 4096).unwrap())
        .collect();
    assert!(!mem(&tlps[0]).addr64);
    assert!(mem(&tlps[1]).addr64);
    // Unaligned ends: byte enables trim the first and last DW.
    assert_eq!(chunks(0x0ffe, 5, 512), [(0x0ffe, 2), (0x1000, 3)]);
    let t: Vec<Tlp> = memory_read_requests(0x0ffe, 5, 512)
        .unwrap()
        .map(|c| memory_read_tlp(&fields(), c, 2, 512).unwrap())
        .collect();
    assert_eq!(
        (mem(&t[0]).first_be, mem(&t[0]).last_be, t[0].length, mem(&t[0]).address),
        (0b1100, 0, 1, 0x0ffc)
    );
    assert_eq!(
        (mem(&t[1]).first_be, mem(&t[1]).last_be, t[1].length, mem(&t[1]).address),
        (0b0111, 0, 1, 0x1000)
    );
}

#[test]
fn read_of_4096_bytes_uses_length_field_zero() {
    let chunk = SplitChunk { address: 0x8000, len: 4096 };
    let tlp = memory_read_tlp(&fields(), chunk, 7, 4096).unwrap();
    assert_eq!(tlp.length, 0);
    assert_eq!(tlp.length_dw(), 1024);
    assert_eq!((mem(&tlp).first_be, mem(&tlp).last_be), (0xf, 0xf));
    assert_eq!(
        memory_read_tlp(&fields(), chunk, 7, 2048),
        Err(TlpError::ExceedsLimit {
            address: 0x8000,
            len: 4096,
            length_dw: 1024,
            parameter: "Max_Read_Request_Size",
            limit: 2048
        })
    );
    // Misaligned by one byte, 4096 bytes cross 4 KiB.
    assert_eq!(
        memory_read_tlp(&fields(), SplitChunk { address: 0x8001, len: 4095 }, 7, 4096).map(|t| t.length),
        Ok(0)
    );
    assert_eq!(
        memory_read_tlp(&fields(), SplitChunk { address: 0x8001, len: 4096 }, 7, 4096),
        Err(TlpError::CrossesPage { address: 0x8001, len: 4096, boundary: 0x9000 })
    );
}

#[test]
fn read_tags_and_zero_length() {
    assert_eq!(
        memory_read_tlp(&fields(), SplitChunk { address: 0, len: 4 }, 0x400, 512),
        Err(TlpError::TagOutOfRange { tag: 0x400 })
    );
    let zero = memory_read_tlp(&fields(), SplitChunk { address: 0x1002, len: 0 }, 3, 128).unwrap();
    assert_eq!((zero.length, mem(&zero).first_be, mem(&zero).last_be, mem(&zero).address), (1, 0, 0, 0x1000));
    assert_eq!(memory_read_requests(0x1000, 0, 128).unwrap().count(), 0);
}

#[test]
fn one_byte_reads_at_each_offset() {
    for offset in 0..4u64 {
        let tlp = memory_read_tlp(&fields(), SplitChunk { address: 0x40 + offset, len: 1 }, 0, 128).unwrap();
        assert_eq!(tlp.length, 1);
        assert_eq!(mem(&tlp).first_be, 1 << offset);
        assert_eq!(mem(&tlp).last_be, 0);
        assert_eq!(mem(&tlp).address, 0x40);
    }
}

#[test]
fn unaligned_write_has_first_and_last_byte_enables() {
    let data: Vec<u8> = (1..=10).collect();
    let tlps: Vec<Tlp> = memory_write_tlps(fields(), 0x2003, &data, 128).unwrap().collect();
    assert_eq!(tlps.len(), 1);
    let t = &tlps[0];
    assert_eq!(t.length, 4);
    assert_eq!(
        (mem(t).op, mem(t).first_be, mem(t).last_be, mem(t).address),
        (MemOp::Write, 0b1000, 0b0001, 0x2000)
    );
    assert!(!mem(t).addr64);
    assert_eq!(t.payload, [0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 0, 0]);
}

#[test]
fn write_across_4k_above_4g_is_split_at_mps_multiples() {
    let data: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
    let tlps: Vec<Tlp> = memory_write_tlps(fields(), 0x1_0000_0ff2, &data, 256).unwrap().collect();
    let shape: Vec<(u64, u16, u8, u8, bool)> = tlps
        .iter()
        .map(|t| (mem(t).address, t.length, mem(t).first_be, mem(t).last_be, mem(t).addr64))
        .collect();
    // 0xff2..0x1000 (14 B), 0x1000..0x1100 (256 B), 0x1100..0x111e (30 B).
    assert_eq!(
        shape,
        [
            (0x1_0000_0ff0, 4, 0b1100, 0b1111, true),
            (0x1_0000_1000, 64, 0b1111, 0b1111, true),
            (0x1_0000_1100, 8, 0b1111, 0b0011, true),
        ]
    );
    assert_eq!(&tlps[0].payload[..2], [0, 0]);
    assert_eq!(&tlps[0].payload[2..], &data[..14]);
    assert_eq!(tlps[1].payload, &data[14..270]);
    assert_eq!(&tlps[2].payload[..30], &data[270..]);
    assert_eq!(&tlps[2].payload[30..], [0, 0]);
}

#[test]
fn write_helpers_reject_what_no_tlp_can_carry() {
    let data = [0u8; 200];
    assert!(matches!(
        memory_write_tlp(&fields(), 0x1000, &data, 128),
        Err(TlpError::ExceedsLimit { parameter: "Max_Payload_Size", limit: 128, .. })
    ));
    assert!(matches!(memory_write_tlp(&fields(), 0xfff0, &data, 256), Err(TlpError::CrossesPage { .. })));
    assert!(matches!(
        memory_write_tlps(fields(), u64::MAX - 10, &data, 256),
        Err(TlpError::AddressOverflow { .. })
    ));
    let zero = memory_write_tlp(&fields(), 0x1001, &[], 128).unwrap();
    assert_eq!((zero.length, mem(&zero).first_be, mem(&zero).last_be, zero.payload.len()), (1, 0, 0, 4));
    assert_eq!(memory_write_tlps(fields(), 0x1000, &[], 128).unwrap().count(), 0);
}

#[test]
fn tc_and_attributes_are_carried() {
    let f = RequestFields {
        requester: RoutingId::new(3, 4, 5),
        tc: 6,
        attr: Attr { relaxed_ordering: true, no_snoop: true, id_based_ordering: false },
    };
    let t = memory_write_tlp(&f, 0x10, &[1, 2, 3, 4], 128).unwrap();
    assert_eq!((t.tc, t.attr, mem(&t).requester), (6, f.attr, f.requester));
}

fn limit() -> impl Strategy<Value = u16> {
    (0u32..=5).prop_map(|code| 128 << code)
}

fn address() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..0x10_000,
        (0xffff_0000u64..0x1_0001_0000),
        (0u64..1 << 52),
        (u64::MAX - 0x10_000..u64::MAX - 0x8000),
    ]
}

/// Checks a request TLP against the chunk it was built for.
fn check_request(t: &Tlp, chunk: &SplitChunk, limit: u16) {
    let m = mem(t);
    let enables = ByteEnables::for_range(chunk.address, chunk.len).unwrap();
    assert_eq!(m.address, chunk.address & !3);
    assert_eq!(m.address & 3, 0);
    assert_eq!(
        (m.first_be, m.last_be, t.length_dw()),
        (enables.first_be, enables.last_be, enables.length_dw)
    );
    assert!(enables.check(m.address, true).is_ok());
    assert!(t.length_dw() as u32 * 4 <= limit as u32);
    assert_eq!(m.addr64, m.address >= 1 << 32);
    assert_eq!(enables.byte_range(m.address), (chunk.address, chunk.len));
    // Never across 4 KiB, counted in whole DWs from the header address.
    assert!((m.address & 0xfff) + t.length_dw() as u64 * 4 <= 4096);
}

proptest! {
    #[test]
    fn split_covers_the_range_in_order(address in address(), len in 0u64..20_000, limit in limit()) {
        let chunks: Vec<SplitChunk> = split_range(address, len, "limit", limit).unwrap().collect();
        let hint = split_range(address, len, "limit", limit).unwrap().size_hint();
        prop_assert_eq!(hint, (chunks.len(), Some(chunks.len())));
        let mut next = address;
        for (i, c) in chunks.iter().enumerate() {
            prop_assert_eq!(c.address, next);
            prop_assert!(c.len > 0);
            next = c.address + c.len as u64;
            // Inside one naturally aligned `limit` block (hence one 4 KiB page) ...
            prop_assert_eq!(c.address / limit as u64, (c.address + c.len as u64 - 1) / limit as u64);
            prop_assert_eq!(c.address / 4096, (c.address + c.len as u64 - 1) / 4096);
            // ... and as large as that allows: only the last chunk ends off a block boundary.
            if i + 1 < chunks.len() {
                prop_assert_eq!((c.address + c.len as u64) % limit as u64, 0);
            }
        }
        prop_assert_eq!(next, address + len);
    }

    #[test]
    fn read_requests_are_legal(address in address(), len in 0u64..20_000, mrrs in limit(), tag in 0u16..=0x3ff) {
        for chunk in memory_read_requests(address, len, mrrs).unwrap() {
            let t = memory_read_tlp(&fields(), chunk, tag, mrrs).unwrap();
            prop_assert_eq!(mem(&t).op, MemOp::Read);
            prop_assert_eq!(mem(&t).tag, tag);
            prop_assert!(t.payload.is_empty());
            check_request(&t, &chunk, mrrs);
        }
    }

    #[test]
    fn write_bytes_are_the_emitted_writes(
        address in address(),
        data in proptest::collection::vec(any::<u8>(), 0..9000),
        mps in limit(),
    ) {
        let emitted: Vec<Vec<u8>> =
            memory_write_tlps(fields(), address, &data, mps).unwrap().map(|t| t.to_bytes()).collect();
        let mut writes = memory_write_tlps(fields(), address, &data, mps).unwrap();
        let mut direct = Vec::new();
        while let Some(bytes) = writes.next_bytes() {
            prop_assert_eq!(bytes.len(), bytes.capacity());
            direct.push(bytes);
        }
        prop_assert_eq!(direct, emitted);
    }

    #[test]
    fn writes_carry_exactly_the_data(
        address in address(),
        data in proptest::collection::vec(any::<u8>(), 0..9000),
        mps in limit(),
    ) {
        let chunks: Vec<SplitChunk> =
            split_range(address, data.len() as u64, "Max_Payload_Size", mps).unwrap().collect();
        let tlps: Vec<Tlp> = memory_write_tlps(fields(), address, &data, mps).unwrap().collect();
        prop_assert_eq!(tlps.len(), chunks.len());
        let mut written = Vec::new();
        for (t, chunk) in tlps.iter().zip(&chunks) {
            check_request(t, chunk, mps);
            prop_assert_eq!(t.payload.len(), t.length_dw() as usize * 4);
            let m = mem(t);
            let mut enabled = vec![false; t.payload.len()];
            for (offset, run) in enabled_runs(m.first_be, m.last_be, t.length_dw()) {
                written.extend_from_slice(&t.payload[offset as usize..(offset + run) as usize]);
                enabled[offset as usize..(offset + run) as usize].fill(true);
            }
            // Bytes outside the enables are zero.
            for (byte, on) in t.payload.iter().zip(enabled) {
                prop_assert!(on || *byte == 0);
            }
        }
        prop_assert_eq!(written, data);
    }
}

#[test]
fn ranges_may_end_at_the_top_of_the_address_space() {
    assert_eq!(
        chunks(u64::MAX - 299, 300, 128),
        [(u64::MAX - 299, 44), (u64::MAX - 255, 128), (u64::MAX - 127, 128)]
    );
    assert!(matches!(memory_read_requests(u64::MAX - 299, 301, 128), Err(TlpError::AddressOverflow { .. })));
    let data = [0xaa; 6];
    let writes: Vec<Tlp> = memory_write_tlps(fields(), u64::MAX - 5, &data, 128).unwrap().collect();
    assert_eq!(writes.len(), 1);
    let m = mem(&writes[0]);
    assert_eq!((m.address, m.first_be, m.last_be, writes[0].length), (u64::MAX - 7, 0b1100, 0b1111, 2));
}

//! Completion building and reassembly on hand-worked examples (PCIe Base Spec r6.3 §2.2.9.1,
//! §2.3.1.1, §2.2.5.1).

use tlp::byte_enable::ByteEnables;
use tlp::completion::{
    MemoryRead, Progress, ReadReassembly, io_config_read_completion, io_config_write_completion,
    read_completions, unsuccessful_completion,
};
use tlp::split::{LinkParams, RequestFields, SplitChunk, memory_read_requests, memory_read_tlp};
use tlp::{
    AtomicOp, AtomicRequest, Attr, Body, CfgType, Completion, ConfigRequest, CplStatus, IoRequest, MemOp,
    MemRequest, RoutingId, Tlp, TlpError,
};

const REQUESTER: RoutingId = RoutingId::new(0x00, 0x00, 0x0);
const COMPLETER: RoutingId = RoutingId::new(0x03, 0x00, 0x1);

fn link(mps: u16, rcb: u16) -> LinkParams {
    LinkParams::new(mps, 4096, rcb).unwrap()
}

fn read_tlp(address: u64, len: u32, tag: u16) -> Tlp {
    let fields = RequestFields {
        requester: REQUESTER,
        tc: 2,
        attr: Attr { relaxed_ordering: true, ..Attr::default() },
    };
    memory_read_tlp(&fields, SplitChunk { address, len }, tag, 4096).unwrap()
}

fn cpl(tlp: &Tlp) -> &Completion {
    match &tlp.body {
        Body::Completion(c) => c,
        other => panic!("not a completion: {other:?}"),
    }
}

/// (Length in DW, Lower Address, Byte Count) of each completion.
fn shape(tlps: &[Tlp]) -> Vec<(u16, u8, u16)> {
    tlps.iter().map(|t| (t.length_dw(), cpl(t).lower_address, cpl(t).byte_count)).collect()
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

/// Builds the completions for a read, checks the echoed fields, and feeds them back.
fn complete(address: u64, len: u32, mps: u16, rcb: u16) -> Vec<Tlp> {
    let request = read_tlp(address, len, 0x2a);
    let read = MemoryRead::from_tlp(&request).unwrap();
    let data = pattern(len as usize);
    let tlps: Vec<Tlp> = read_completions(&read, COMPLETER, &data, &link(mps, rcb)).unwrap().collect();
    let mut reassembly =
        ReadReassembly::for_request(&request).unwrap().with_read_completion_boundary(rcb).unwrap();
    for (i, t) in tlps.iter().enumerate() {
        let c = cpl(t);
        assert_eq!(
            (c.requester, c.tag, c.completer, c.status, c.locked, c.bcm),
            (REQUESTER, 0x2a, COMPLETER, CplStatus::Sc, false, false)
        );
        assert_eq!((t.tc, t.attr), (request.tc, request.attr));
        let progress = reassembly.accept(t).unwrap();
        if i + 1 == tlps.len() {
            assert_eq!(progress, Progress::Done(data.clone()));
        } else {
            assert!(matches!(progress, Progress::More { .. }));
        }
    }
    tlps
}

/// The example: a 512-byte read at 0x…fc0 with RCB 64 and MPS 128. No single MRd may
/// cross 4 KiB, so the requester sends 64 bytes at 0xfc0 and 448 at 0x1000 (MRRS 512); the
/// completer answers the first with one CplD and splits the second into MPS-sized pieces.
#[test]
fn read_512_at_fc0_rcb64_mps128() {
    let chunks: Vec<SplitChunk> = memory_read_requests(0x8765_4fc0, 512, 512).unwrap().collect();
    assert_eq!(
        chunks,
        [SplitChunk { address: 0x8765_4fc0, len: 64 }, SplitChunk { address: 0x8765_5000, len: 448 }]
    );

    // 0xfc0..0x1000: 16 DW, Lower Address 0x40 (0xfc0 & 0x7f), all 64 bytes remain.
    assert_eq!(shape(&complete(0x8765_4fc0, 64, 128, 64)), [(16, 0x40, 64)]);

    // 0x1000..0x11c0 in 128-byte pieces ending on 128 (hence 64) boundaries.
    assert_eq!(
        shape(&complete(0x8765_5000, 448, 128, 64)),
        [
            (32, 0x00, 448), // 0x1000..0x1080
            (32, 0x00, 320), // 0x1080..0x1100
            (32, 0x00, 192), // 0x1100..0x1180
            (16, 0x00, 64),  // 0x1180..0x11c0
        ]
    );
}

/// 256 bytes at 0x…e52: the first piece ends at the last RCB boundary that its MPS reaches.
#[test]
fn unaligned_read_rcb_and_mps_variants() {
    // RCB 64, MPS 128: 0xe52..0xec0 (110 B in 28 DW from 0xe50), 0xec0..0xf40, 0xf40..0xf52.
    assert_eq!(shape(&complete(0x3e52, 256, 128, 64)), [(28, 0x52, 256), (32, 0x40, 146), (5, 0x40, 18)]);
    // RCB 128, MPS 128: 0xe52..0xe80 (46 B), 0xe80..0xf00, 0xf00..0xf52 (82 B in 21 DW).
    assert_eq!(shape(&complete(0x3e52, 256, 128, 128)), [(12, 0x52, 256), (32, 0x00, 210), (21, 0x00, 82)]);
    // RCB 128, MPS 256: 0xe52..0xf00 (174 B in 44 DW), 0xf00..0xf52.
    assert_eq!(shape(&complete(0x3e52, 256, 256, 128)), [(44, 0x52, 256), (21, 0x00, 82)]);
    // MPS 512: everything at once, 65 DW from 0xe50 to 0xf54.
    assert_eq!(shape(&complete(0x3e52, 256, 512, 64)), [(65, 0x52, 256)]);
}

/// The examples at the end of §2.3.1.1: the sizes we produce are among the allowed ones.
#[test]
fn spec_examples_of_split_completions() {
    let sizes = |address, len, mps, rcb| -> Vec<u32> {
        let tlps = complete(address, len, mps, rcb);
        let bc: Vec<u32> = tlps.iter().map(|t| cpl(t).byte_count as u32).collect();
        bc.iter().zip(bc.iter().skip(1).chain([&0])).map(|(a, b)| a - b).collect()
    };
    // Example 1 (RCB 64) and 2 (RCB 128): 192 bytes at 0x10000.
    assert_eq!(sizes(0x10000, 192, 128, 64), [128, 64]);
    assert_eq!(sizes(0x10000, 192, 128, 128), [128, 64]);
    assert_eq!(sizes(0x10000, 192, 256, 64), [192]);
    // Example 3 (RCB 64) and 4 (an Endpoint: RCB 128): 256 bytes at 0x10020.
    assert_eq!(sizes(0x10020, 256, 128, 64), [96, 128, 32]);
    assert_eq!(sizes(0x10020, 256, 128, 128), [96, 128, 32]);
    assert_eq!(sizes(0x10020, 256, 256, 128), [224, 32]);
    assert_eq!(sizes(0x10020, 256, 512, 128), [256]);
}

#[test]
fn one_byte_reads_at_every_offset() {
    for offset in 0..4u64 {
        let tlps = complete(0x1000 + offset, 1, 128, 64);
        assert_eq!(shape(&tlps), [(1, offset as u8, 1)]);
        let mut expected = [0u8; 4];
        expected[offset as usize] = pattern(1)[0];
        assert_eq!(tlps[0].payload, expected);
    }
}

#[test]
fn read_of_4096_bytes() {
    let tlps = complete(0x7000, 4096, 4096, 128);
    assert_eq!(shape(&tlps), [(1024, 0, 4096)]);
    assert_eq!(tlps[0].length, 0, "1024 DW is Length field 0");
    let tlps = complete(0x7000, 4096, 256, 64);
    assert_eq!(tlps.len(), 16);
    assert_eq!(cpl(&tlps[0]).byte_count, 4096);
    assert_eq!(cpl(&tlps[15]).byte_count, 256);
}

#[test]
fn zero_length_read_gets_one_dw_and_byte_count_1() {
    let tlps = complete(0x5004, 0, 128, 64);
    assert_eq!(shape(&tlps), [(1, 0x04, 1)]);
    assert_eq!(tlps[0].payload.len(), 4);
}

#[test]
fn non_contiguous_enables_return_the_span_with_disabled_bytes_zero() {
    let mut request = read_tlp(0x6008, 4, 9);
    if let Body::Memory(m) = &mut request.body {
        m.first_be = 0b1001;
    }
    let read = MemoryRead::from_tlp(&request).unwrap();
    assert_eq!((read.first_byte_address(), read.byte_count()), (0x6008, 4));
    assert_eq!(read.enabled_runs().collect::<Vec<_>>(), [(0x6008, 1), (0x600b, 1)]);
    let tlps: Vec<Tlp> = read_completions(&read, COMPLETER, &[1, 2, 3, 4], &link(128, 64)).unwrap().collect();
    assert_eq!(shape(&tlps), [(1, 0x08, 4)]);
    assert_eq!(tlps[0].payload, [1, 0, 0, 4]);
    // QW-aligned 2 DW with holes in both enables: span from byte 1 to byte 6.
    let mut request = read_tlp(0x6010, 8, 9);
    if let Body::Memory(m) = &mut request.body {
        (m.first_be, m.last_be) = (0b1010, 0b0101);
    }
    let read = MemoryRead::from_tlp(&request).unwrap();
    assert_eq!((read.first_byte_address(), read.byte_count()), (0x6011, 6));
    let tlps: Vec<Tlp> =
        read_completions(&read, COMPLETER, &[1, 2, 3, 4, 5, 6], &link(128, 64)).unwrap().collect();
    assert_eq!(shape(&tlps), [(2, 0x11, 6)]);
    assert_eq!(tlps[0].payload, [0, 1, 0, 3, 4, 0, 6, 0]);
    let mut reassembly = ReadReassembly::for_request(&request).unwrap();
    assert_eq!(reassembly.accept(&tlps[0]), Ok(Progress::Done(vec![1, 0, 3, 4, 0, 6])));
}

#[test]
fn memory_reads_that_break_request_rules_are_refused() {
    let mut request = read_tlp(0x6ff0, 16, 1);
    if let Body::Memory(m) = &mut request.body {
        m.address = 0x6ffc; // Length 4 DW from 0xffc crosses 4 KiB.
    }
    assert_eq!(
        MemoryRead::from_tlp(&request),
        Err(TlpError::CrossesPage { address: 0x6ffc, len: 16, boundary: 0x7000 })
    );
    let mut request = read_tlp(0x6000, 12, 1);
    if let Body::Memory(m) = &mut request.body {
        m.first_be = 0b0111; // Not contiguous with the middle DW.
    }
    assert!(matches!(
        MemoryRead::from_tlp(&request),
        Err(TlpError::ByteEnables { first_be: 0b0111, last_be: 0b1111, length_dw: 3, .. })
    ));
    let read = MemoryRead::from_tlp(&read_tlp(0x6000, 12, 1)).unwrap();
    assert_eq!(
        read_completions(&read, COMPLETER, &[0; 11], &link(128, 64)).map(|_| ()),
        Err(TlpError::ReadDataLength { expected: 12, got: 11 })
    );
}

#[test]
fn tph_read_implies_all_bytes_enabled() {
    let mut request = read_tlp(0x6000, 12, 1);
    request.th = true;
    if let Body::Memory(m) = &mut request.body {
        (m.first_be, m.last_be) = (0x5a, 0); // ST[7:0], not byte enables.
    }
    let read = MemoryRead::from_tlp(&request).unwrap();
    assert_eq!(read.enables, ByteEnables { first_be: 0xf, last_be: 0xf, length_dw: 3 });
}

#[test]
fn locked_read_gets_cpldlk() {
    let mut request = read_tlp(0x100, 8, 4);
    if let Body::Memory(m) = &mut request.body {
        m.op = MemOp::ReadLocked;
    }
    let read = MemoryRead::from_tlp(&request).unwrap();
    let tlps: Vec<Tlp> = read_completions(&read, COMPLETER, &[0; 8], &link(128, 64)).unwrap().collect();
    assert!(cpl(&tlps[0]).locked);
    assert_eq!(tlps[0].kind_name(), "CplDLk");
    let failed = unsuccessful_completion(&request, COMPLETER, CplStatus::Ur).unwrap();
    assert_eq!(failed.kind_name(), "CplLk");
}

fn config_read(first_be: u8) -> Tlp {
    Tlp {
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
            tag: 0x11,
            first_be,
            last_be: 0,
            target: COMPLETER,
            register: 0x10,
        }),
        payload: vec![],
        digest: None,
    }
}

#[test]
fn config_and_io_completions() {
    let t = io_config_read_completion(&config_read(0b0011), COMPLETER, [0xde, 0xad, 0xbe, 0xef]).unwrap();
    assert_eq!(
        *cpl(&t),
        Completion {
            locked: false,
            completer: COMPLETER,
            status: CplStatus::Sc,
            bcm: false,
            byte_count: 4,
            requester: REQUESTER,
            tag: 0x11,
            lower_address: 0
        }
    );
    assert_eq!((t.length, t.payload.as_slice()), (1, &[0xde, 0xad, 0, 0][..]));

    let mut write = config_read(0b1111);
    if let Body::Config(c) = &mut write.body {
        c.write = true;
    }
    write.payload = vec![1, 2, 3, 4];
    let t = io_config_write_completion(&write, COMPLETER).unwrap();
    assert_eq!((t.length, t.payload.len(), cpl(&t).byte_count, cpl(&t).lower_address), (0, 0, 4, 0));
    assert_eq!(t.kind_name(), "Cpl");
    assert!(matches!(
        io_config_read_completion(&write, COMPLETER, [0; 4]),
        Err(TlpError::WrongRequestKind { kind: "CfgWr0", .. })
    ));

    let io_read = Tlp {
        body: Body::Io(IoRequest {
            write: false,
            requester: REQUESTER,
            tag: 3,
            first_be: 0b1000,
            last_be: 0,
            address: 0xcf8,
        }),
        ..config_read(0)
    };
    let t = io_config_read_completion(&io_read, COMPLETER, [1, 2, 3, 4]).unwrap();
    assert_eq!((t.payload.as_slice(), cpl(&t).byte_count, cpl(&t).lower_address), (&[0, 0, 0, 4][..], 4, 0));

    // Configuration Request Retry Status: config only, Byte Count 4.
    let crs = unsuccessful_completion(&config_read(0xf), COMPLETER, CplStatus::Crs).unwrap();
    assert_eq!(
        (crs.length, cpl(&crs).byte_count, cpl(&crs).lower_address, cpl(&crs).status),
        (0, 4, 0, CplStatus::Crs)
    );
    assert_eq!(
        unsuccessful_completion(&io_read, COMPLETER, CplStatus::Crs),
        Err(TlpError::CrsForNonConfig { kind: "IORd" })
    );
    let ur = unsuccessful_completion(&io_read, COMPLETER, CplStatus::Ur).unwrap();
    assert_eq!((cpl(&ur).byte_count, cpl(&ur).lower_address, cpl(&ur).tag), (4, 0, 3));
}

#[test]
fn unsuccessful_memory_read_completion_carries_what_success_would() {
    // 10 bytes at 0x2013: Byte Count 10, Lower Address 0x13.
    let request = read_tlp(0x2013, 10, 5);
    let ur = unsuccessful_completion(&request, COMPLETER, CplStatus::Ur).unwrap();
    assert_eq!(
        (ur.kind_name(), ur.length, cpl(&ur).byte_count, cpl(&ur).lower_address),
        ("Cpl", 0, 10, 0x13)
    );
    assert_eq!(
        unsuccessful_completion(&request, COMPLETER, CplStatus::Sc),
        Err(TlpError::SuccessIsNotFailure)
    );
    assert_eq!(
        unsuccessful_completion(&request, COMPLETER, CplStatus::Crs),
        Err(TlpError::CrsForNonConfig { kind: "MRd" })
    );
    let zero = unsuccessful_completion(&read_tlp(0x2010, 0, 5), COMPLETER, CplStatus::Ca).unwrap();
    assert_eq!((cpl(&zero).byte_count, cpl(&zero).lower_address), (1, 0x10));

    // Failing half-way: the Cpl says what the next successful one would have.
    let read = MemoryRead::from_tlp(&read_tlp(0x2010, 300, 5)).unwrap();
    let data = pattern(300);
    let mut completions = read_completions(&read, COMPLETER, &data, &link(128, 64)).unwrap();
    let first = completions.next().unwrap();
    assert_eq!(shape(&[first]), [(28, 0x10, 300)]); // 0x2010..0x2080
    let ca = completions.unsuccessful(CplStatus::Ca).unwrap().unwrap();
    assert_eq!(
        (ca.length, cpl(&ca).byte_count, cpl(&ca).lower_address, cpl(&ca).status),
        (0, 188, 0x00, CplStatus::Ca)
    );
    assert_eq!(completions.remaining(), 188);
    completions.by_ref().for_each(drop);
    assert_eq!(completions.unsuccessful(CplStatus::Ca), Ok(None));

    // Posted requests and completions get none.
    let mut write = read_tlp(0x2010, 4, 0);
    if let Body::Memory(m) = &mut write.body {
        m.op = MemOp::Write;
    }
    write.payload = vec![0; 4];
    assert_eq!(
        unsuccessful_completion(&write, COMPLETER, CplStatus::Ur),
        Err(TlpError::NoCompletion { kind: "MWr" })
    );
    assert_eq!(
        unsuccessful_completion(&ur, COMPLETER, CplStatus::Ur),
        Err(TlpError::NoCompletion { kind: "Cpl" })
    );
}

#[test]
fn unsuccessful_atomic_completion_has_operand_size_byte_count() {
    let cas = Tlp {
        length: 4,
        body: Body::Atomic(AtomicRequest {
            op: AtomicOp::Cas,
            requester: REQUESTER,
            tag: 8,
            first_be: 0,
            last_be: 0,
            address: 0x1_0000_0008,
            ph: 0,
            addr64: true,
        }),
        payload: vec![0; 16],
        ..config_read(0)
    };
    let ur = unsuccessful_completion(&cas, COMPLETER, CplStatus::Ur).unwrap();
    assert_eq!((cpl(&ur).byte_count, cpl(&ur).lower_address), (8, 0));
}

/// Sends one read's completions through `tamper` at position `index` and returns the error.
fn tampered(index: usize, tamper: impl Fn(&mut Tlp)) -> (TlpError, ReadReassembly, Vec<Tlp>) {
    let request = read_tlp(0x3e52, 256, 0x2a);
    let read = MemoryRead::from_tlp(&request).unwrap();
    let data = pattern(256);
    let tlps: Vec<Tlp> = read_completions(&read, COMPLETER, &data, &link(128, 64)).unwrap().collect();
    let mut reassembly = ReadReassembly::for_request(&request).unwrap();
    for t in &tlps[..index] {
        reassembly.accept(t).unwrap();
    }
    let mut bad = tlps[index].clone();
    tamper(&mut bad);
    let err = reassembly.accept(&bad).unwrap_err();
    (err, reassembly, tlps)
}

fn cpl_mut(t: &mut Tlp) -> &mut Completion {
    match &mut t.body {
        Body::Completion(c) => c,
        _ => unreachable!(),
    }
}

#[test]
fn reassembly_names_what_is_wrong() {
    // Completions: (28 DW, LA 0x52, BC 256), (32 DW, LA 0x40, BC 146), (5 DW, LA 0x40, BC 18).
    let (err, mut reassembly, tlps) = tampered(1, |t| cpl_mut(t).lower_address = 0x00);
    assert_eq!(err, TlpError::LowerAddress { expected: 0x40, got: 0x00, next_address: 0x3ec0 });
    // A rejected completion leaves the state as it was: the genuine one still fits.
    assert_eq!(reassembly.remaining(), 146);
    assert_eq!(reassembly.accept(&tlps[1]), Ok(Progress::More { remaining: 18 }));
    assert_eq!(reassembly.accept(&tlps[2]), Ok(Progress::Done(pattern(256))));
    assert!(matches!(reassembly.accept(&tlps[2]), Err(TlpError::AlreadyFinished { .. })));

    let (err, ..) = tampered(1, |t| cpl_mut(t).byte_count = 150);
    assert_eq!(err, TlpError::ByteCount { expected: 146, got: 150 });
    let (err, ..) = tampered(2, |t| cpl_mut(t).byte_count = 20);
    assert_eq!(err, TlpError::ByteCount { expected: 18, got: 20 });

    let (err, reassembly, _) = tampered(1, |t| cpl_mut(t).status = CplStatus::Ca);
    assert_eq!(err, TlpError::Unsuccessful { status: CplStatus::Ca, received: 110, requested: 256 });
    assert!(reassembly.is_finished());

    let (err, ..) = tampered(0, |t| t.ep = true);
    assert_eq!(err, TlpError::Poisoned { lower_address: 0x52 });
    let (err, ..) = tampered(0, |t| cpl_mut(t).tag = 0x2b);
    assert!(matches!(err, TlpError::TransactionId { expected_tag: 0x2a, got_tag: 0x2b, .. }));
    let (err, ..) = tampered(0, |t| {
        t.payload.clear();
        t.length = 0;
    });
    assert_eq!(err, TlpError::MissingData { remaining: 256 });

    // The last completion one DW too long: payload beyond the request.
    let (err, ..) = tampered(2, |t| {
        t.payload.extend([0; 4]);
        t.length += 1;
    });
    assert_eq!(
        err,
        TlpError::FinalCompletionLength { expected_dw: 5, got_dw: 6, remaining: 18, lower_address: 0x40 }
    );

    // A middle completion one DW short ends off the RCB.
    let (err, ..) = tampered(1, |t| {
        t.payload.truncate(124);
        t.length -= 1;
    });
    assert_eq!(err, TlpError::RcbBoundary { end: 0x3f3c, rcb: 64, remaining: 146 });

    // The first completion again (a duplicate) after it was accepted.
    let (err, ..) = tampered(1, |t| {
        *t = read_completions(
            &MemoryRead::from_tlp(&read_tlp(0x3e52, 256, 0x2a)).unwrap(),
            COMPLETER,
            &pattern(256),
            &link(128, 64),
        )
        .unwrap()
        .next()
        .unwrap()
    });
    assert!(matches!(err, TlpError::LowerAddress { expected: 0x40, got: 0x52, .. }));

    let (err, ..) = tampered(0, |t| *t = read_tlp(0x3e52, 256, 0x2a));
    assert_eq!(err, TlpError::NotACompletion { kind: "MRd" });
}

#[test]
fn reassembly_checks_rcb_128_when_told() {
    // RCB 64 completions are legal for a Root Complex with RCB 64, not for one with RCB 128.
    let tlps = complete(0x3e52, 256, 128, 64);
    let mut strict = ReadReassembly::new(0x3e52, 256).unwrap().with_read_completion_boundary(128).unwrap();
    assert_eq!(strict.accept(&tlps[0]), Err(TlpError::RcbBoundary { end: 0x3ec0, rcb: 128, remaining: 256 }));
    assert!(ReadReassembly::new(0x3e52, 256).unwrap().with_read_completion_boundary(32).is_err());
    assert!(ReadReassembly::new(0x3ff0, 32).is_err());
    assert!(ReadReassembly::new(0x3000, 4097).is_err());
}

#[test]
fn reassembly_honours_bcm_from_pci_x_completers() {
    let tlps = complete(0x10020, 256, 128, 64); // 96, 128, 32
    let mut first = tlps[0].clone();
    cpl_mut(&mut first).bcm = true;
    cpl_mut(&mut first).byte_count = 96;
    let mut reassembly = ReadReassembly::new(0x10020, 256).unwrap();
    assert_eq!(reassembly.accept(&first), Ok(Progress::More { remaining: 160 }));
    assert_eq!(reassembly.accept(&tlps[1]), Ok(Progress::More { remaining: 32 }));
    assert_eq!(reassembly.accept(&tlps[2]), Ok(Progress::Done(pattern(256))));
}

#[test]
fn memory_request_fields_are_echoed() {
    let request = Tlp {
        tc: 5,
        attr: Attr { relaxed_ordering: false, no_snoop: true, id_based_ordering: true },
        length: 1,
        body: Body::Memory(MemRequest {
            op: MemOp::Read,
            requester: RoutingId::new(0x42, 3, 1),
            tag: 0x3ff,
            first_be: 0xf,
            last_be: 0,
            address: 0x1_0000_0000,
            ph: 0,
            addr64: true,
        }),
        ..config_read(0)
    };
    let read = MemoryRead::from_tlp(&request).unwrap();
    let t = read_completions(&read, COMPLETER, &[9; 4], &link(128, 64)).unwrap().next().unwrap();
    assert_eq!(
        (t.tc, t.attr, cpl(&t).requester, cpl(&t).tag),
        (5, request.attr, RoutingId::new(0x42, 3, 1), 0x3ff)
    );
}

#[test]
fn reads_at_the_top_of_the_address_space_do_not_overflow() {
    // The last page: completions are built as anywhere else.
    let tlps = complete(0xffff_ffff_ffff_f000, 0xff0, 4096, 128);
    assert_eq!(shape(&tlps), [(1020, 0x00, 0xff0)]);
    let tlps = complete(0xffff_ffff_ffff_ff02, 0xf0, 128, 64);
    assert_eq!(shape(&tlps), [(32, 0x02, 0xf0), (29, 0x00, 0x72)]);
    // A request running past 2^64 is refused, yet can still be answered with UR.
    let mut request = read_tlp(0xffff_ffff_ffff_f000, 64, 1);
    if let Body::Memory(m) = &mut request.body {
        m.address = 0xffff_ffff_ffff_fff0;
    }
    assert_eq!(
        MemoryRead::from_tlp(&request),
        Err(TlpError::AddressOverflow { address: 0xffff_ffff_ffff_fff0, len: 64 })
    );
    let ur = unsuccessful_completion(&request, COMPLETER, CplStatus::Ur).unwrap();
    assert_eq!((cpl(&ur).byte_count, cpl(&ur).lower_address), (64, 0x70));
    // The very last bytes of the address space can be read; one more cannot.
    assert_eq!(shape(&complete(u64::MAX - 99, 100, 128, 64)), [(25, 0x1c, 100)]);
    assert!(ReadReassembly::new(u64::MAX - 3, 4).is_ok());
    assert_eq!(
        ReadReassembly::new(u64::MAX - 3, 5).map(|_| ()),
        Err(TlpError::AddressOverflow { address: u64::MAX - 3, len: 5 })
    );
    // A hand-built MemoryRead is checked too.
    let mut read = MemoryRead::from_tlp(&read_tlp(0x1000, 8, 1)).unwrap();
    read.dw_address = 0xffff_ffff_ffff_fffc;
    assert!(read_completions(&read, COMPLETER, &[0; 8], &link(128, 64)).is_err());
    read.dw_address = 0x1002;
    assert_eq!(
        read_completions(&read, COMPLETER, &[0; 8], &link(128, 64)).map(|_| ()),
        Err(TlpError::UnalignedAddress { address: 0x1002 })
    );
}

//! Properties of completion building and reassembly for random reads (PCIe Base Spec r6.3
//! §2.3.1.1, §2.2.9.1).

use proptest::prelude::*;
use tlp::TlpError;
use tlp::byte_enable::ByteEnables;
use tlp::completion::{MemoryRead, Progress, ReadReassembly, RequestEcho, read_completions};
use tlp::split::{LinkParams, RequestFields, SplitChunk, memory_read_tlp};
use tlp::{Attr, Body, Completion, CplStatus, RoutingId, Tlp};

const REQUESTER: RoutingId = RoutingId::new(0x00, 0x01, 0x0);
const COMPLETER: RoutingId = RoutingId::new(0x05, 0x00, 0x0);

fn cpl(t: &Tlp) -> &Completion {
    match &t.body {
        Body::Completion(c) => c,
        other => panic!("not a completion: {other:?}"),
    }
}

fn cpl_mut(t: &mut Tlp) -> &mut Completion {
    match &mut t.body {
        Body::Completion(c) => c,
        other => panic!("not a completion: {other:?}"),
    }
}

/// A legal read: address and length inside one 4 KiB page (the last one included), 0..=4096 bytes.
fn read_range() -> impl Strategy<Value = (u64, u32)> {
    const LAST_PAGE: u64 = (1 << 52) - 1;
    (prop_oneof![0u64..1 << 40, LAST_PAGE - 3..=LAST_PAGE], 0u32..4096)
        .prop_flat_map(|(page, offset)| (Just(page * 4096 + offset as u64), 0..=(4096 - offset)))
}

fn size() -> impl Strategy<Value = u16> {
    (0u32..=5).prop_map(|code| 128 << code)
}

fn rcb() -> impl Strategy<Value = u16> {
    prop_oneof![Just(64u16), Just(128u16)]
}

struct Case {
    request: Tlp,
    data: Vec<u8>,
    completions: Vec<Tlp>,
}

fn build(address: u64, len: u32, mps: u16, rcb: u16, seed: u8) -> Case {
    let fields = RequestFields { requester: REQUESTER, tc: 1, attr: Attr::default() };
    let request = memory_read_tlp(&fields, SplitChunk { address, len }, 0x155, 4096).unwrap();
    let read = MemoryRead::from_tlp(&request).unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    let link = LinkParams::new(mps, 4096, rcb).unwrap();
    let completions = read_completions(&read, COMPLETER, &data, &link).unwrap().collect();
    Case { request, data, completions }
}

/// `ReadCompletions::next_bytes` yields exactly the emitted `Iterator::next` TLPs.
fn bytes_equal_emitted(read: &MemoryRead, data: &[u8], link: &LinkParams) -> Result<(), TestCaseError> {
    let emitted: Vec<Vec<u8>> =
        read_completions(read, COMPLETER, data, link).unwrap().map(|t| t.to_bytes()).collect();
    let mut completions = read_completions(read, COMPLETER, data, link).unwrap();
    let mut direct = Vec::new();
    while let Some(bytes) = completions.next_bytes() {
        direct.push(bytes);
    }
    prop_assert_eq!(direct, emitted);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn completion_bytes_are_the_emitted_completions((address, len) in read_range(), mps in size(), rcb in rcb(), seed: u8) {
        let case = build(address, len, mps, rcb, seed);
        let read = MemoryRead::from_tlp(&case.request).unwrap();
        bytes_equal_emitted(&read, &case.data, &LinkParams::new(mps, 4096, rcb).unwrap())?;
    }

    /// Reads of 1-2 DW may have non-contiguous byte enables (and locked reads CplDLk).
    #[test]
    fn completion_bytes_zero_disabled_bytes_like_the_tlps(
        dw in 0u64..1 << 40,
        two_dw: bool,
        first_be in 1u8..16,
        last_be in 1u8..16,
        locked: bool,
        seed: u8,
    ) {
        let enables = ByteEnables {
            first_be,
            last_be: if two_dw { last_be } else { 0 },
            length_dw: if two_dw { 2 } else { 1 },
        };
        // Non-contiguous enables over 2 DW are legal only QW aligned (which keeps the read in
        // its page too).
        let dw_address = if two_dw { (dw & !1) * 4 } else { dw * 4 };
        let read = MemoryRead {
            echo: RequestEcho { requester: REQUESTER, tag: 0x2a, tc: 3, attr: Attr::default() },
            locked,
            dw_address,
            enables,
        };
        let data: Vec<u8> = (0..read.byte_count()).map(|i| (i as u8).wrapping_add(seed) | 1).collect();
        bytes_equal_emitted(&read, &data, &LinkParams::new(128, 4096, 64).unwrap())?;
    }

    #[test]
    fn completions_follow_the_rules_and_reassemble((address, len) in read_range(), mps in size(), rcb in rcb(), seed: u8) {
        let case = build(address, len, mps, rcb, seed);
        let n = case.completions.len();
        prop_assert!(n >= 1);
        let end = address.wrapping_add(len as u64);
        // A zero-length read names the DW only.
        let mut next = if len == 0 { address & !3 } else { address };
        for (i, t) in case.completions.iter().enumerate() {
            let c = cpl(t);
            let last = i + 1 == n;
            prop_assert_eq!(c.status, CplStatus::Sc);
            prop_assert_eq!((c.requester, c.tag, c.completer), (REQUESTER, 0x155, COMPLETER));
            prop_assert!(t.length_dw() as u32 * 4 <= mps as u32, "payload over MPS");
            prop_assert_eq!(t.payload.len(), t.length_dw() as usize * 4);
            prop_assert_eq!(c.lower_address as u64, next & 0x7f);
            if len == 0 {
                prop_assert_eq!((t.length_dw(), c.byte_count), (1, 1));
                continue;
            }
            prop_assert_eq!(c.byte_count as u64, end.wrapping_sub(next));
            let returned = if last { end.wrapping_sub(next) } else { t.length_dw() as u64 * 4 - (next & 3) };
            // Bytes of the payload's DWs outside the read are 0.
            let lane = (next & 3) as usize;
            prop_assert!(t.payload[..lane].iter().all(|&b| b == 0));
            prop_assert!(t.payload[lane + returned as usize..].iter().all(|&b| b == 0));
            // Length covers the DW-aligned span of the bytes returned.
            prop_assert_eq!(t.length_dw() as u64, ((next & 3) + returned).div_ceil(4));
            next = next.wrapping_add(returned);
            if !last {
                prop_assert_eq!(next % rcb as u64, 0, "non-final completion off the RCB");
            }
            // The final one is recognised from its header alone.
            prop_assert_eq!(
                last,
                t.length_dw() as u32 * 4 == ((c.lower_address as u32 & 3) + c.byte_count as u32 + 3) & !3
            );
        }
        if len > 0 {
            prop_assert_eq!(next, end);
        }
        // A read that crosses no RCB boundary is completed at once.
        if len > 0 && address / rcb as u64 == end.wrapping_sub(1) / rcb as u64 {
            prop_assert_eq!(n, 1);
        }

        let mut reassembly = ReadReassembly::for_request(&case.request)
            .unwrap()
            .with_read_completion_boundary(rcb)
            .unwrap();
        for (i, t) in case.completions.iter().enumerate() {
            let progress = reassembly.accept(t).unwrap();
            if i + 1 == n {
                prop_assert_eq!(&progress, &Progress::Done(case.data.clone()));
            } else {
                prop_assert_eq!(progress, Progress::More { remaining: reassembly.remaining() });
            }
        }
    }

    #[test]
    fn reassembly_rejects_tampered_completions(
        (address, len) in read_range(),
        mps in size(),
        rcb in rcb(),
        pick: prop::sample::Index,
        tamper in 0u8..4,
        delta in 1u16..4096,
    ) {
        let case = build(address, len, mps, rcb, 7);
        let index = pick.index(case.completions.len());
        let mut reassembly = ReadReassembly::for_request(&case.request).unwrap();
        for t in &case.completions[..index] {
            reassembly.accept(t).unwrap();
        }
        let genuine = &case.completions[index];
        let mut bad = genuine.clone();
        let c = cpl_mut(&mut bad);
        let expected_la = c.lower_address;
        let expected_bc = c.byte_count;
        match tamper {
            0 => {
                c.lower_address = (c.lower_address + (delta % 127) as u8 + 1) & 0x7f;
                let err = reassembly.accept(&bad).unwrap_err();
                prop_assert_eq!(
                    err,
                    TlpError::LowerAddress {
                        expected: expected_la,
                        got: c_la(&bad),
                        next_address: if len == 0 { address & !3 } else { address + reassembly.received() as u64 },
                    }
                );
            }
            1 => {
                c.byte_count = (c.byte_count - 1 + delta) % 4096 + 1;
                let err = reassembly.accept(&bad).unwrap_err();
                prop_assert_eq!(err, TlpError::ByteCount { expected: expected_bc, got: cpl(&bad).byte_count });
            }
            2 => {
                let status = [CplStatus::Ur, CplStatus::Ca, CplStatus::Crs, CplStatus::Reserved(5)][delta as usize % 4];
                c.status = status;
                let received = reassembly.received();
                let err = reassembly.accept(&bad).unwrap_err();
                prop_assert_eq!(err, TlpError::Unsuccessful { status, received, requested: len });
                prop_assert!(reassembly.is_finished());
                return Ok(());
            }
            _ => {
                // The same completion twice: only the first is taken.
                reassembly.accept(genuine).unwrap();
                if reassembly.is_finished() {
                    let is_finished_error =
                        matches!(reassembly.accept(genuine), Err(TlpError::AlreadyFinished { .. }));
                    prop_assert!(is_finished_error);
                } else {
                    let is_rejected = matches!(
                        reassembly.accept(genuine),
                        Err(TlpError::LowerAddress { .. } | TlpError::ByteCount { .. })
                    );
                    prop_assert!(is_rejected);
                }
                return Ok(());
            }
        }
        // After a rejected completion the genuine ones still complete the read.
        for t in &case.completions[index..] {
            reassembly.accept(t).unwrap();
        }
        prop_assert!(reassembly.is_finished());
    }
}

fn c_la(t: &Tlp) -> u8 {
    cpl(t).lower_address
}

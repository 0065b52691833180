//! FPGA-link frames (COBS, CRC-32, frame types; docs/fpga-link.md): the `Deframer` cutting a
//! byte stream at 0x00 delimiters, `decode_block` (COBS + CRC), `FrameRepr::parse`.
//!
//! Properties: every body the deframer yields is at most `MAX_BODY_BYTES` long and parses or
//! fails with a documented `FrameError`; a parsed frame re-encodes (`to_wire`) to a wire form
//! that deframes to the same frame; a block longer than `MAX_ENCODED_BYTES` yields `Oversize`;
//! any single flipped bit in a valid frame is caught (CRC-32 detects all 1-bit errors); the
//! deframer's buffer stays within twice `MAX_ENCODED_BYTES` (Vec growth) whatever the input.

use fpga::framing::{DELIMITER, Deframer, FrameError, FrameRepr, MAX_ENCODED_BYTES, decode_block};

use crate::alloc_watch;

fn deframe(bytes: &[u8]) -> Vec<Result<Vec<u8>, FrameError>> {
    let mut out = Vec::new();
    Deframer::new().push(bytes, |f| out.push(f));
    out
}

pub fn check(data: &[u8]) {
    // The first byte cuts the input in two pushes, so partial frames across reads are covered.
    let (split, stream) = data.split_first().map_or((0, data), |(s, rest)| (usize::from(*s), rest));
    let split = split.min(stream.len());
    // At most one body per delimiter; reserved up front so only the deframer allocates below.
    let mut bodies = Vec::with_capacity(stream.len() + 1);
    let mut deframer = Deframer::new();
    let ((), largest) = alloc_watch::largest_during(|| {
        deframer.push(&stream[..split], |f| bodies.push(f));
        deframer.push(&stream[split..], |f| bodies.push(f));
    });
    assert!(largest <= 2 * MAX_ENCODED_BYTES + 64, "deframing allocated {largest}");
    assert_eq!(bodies, deframe(stream), "a split push differs from one push");

    let delimited_blocks = stream.split(|&b| b == DELIMITER).filter(|b| !b.is_empty()).count();
    let complete =
        if stream.last() == Some(&DELIMITER) { delimited_blocks } else { delimited_blocks.saturating_sub(1) };
    assert!(bodies.len() <= complete + 1);

    for body in bodies {
        let body = match body {
            Ok(body) => body,
            Err(FrameError::Oversize) => continue,
            Err(FrameError::Cobs(_) | FrameError::Short(_) | FrameError::Crc { .. }) => continue,
            Err(other) => panic!("decode_block gave {other:?}, which only FrameRepr::parse may give"),
        };
        assert!(body.len() < MAX_ENCODED_BYTES);
        let frame = match FrameRepr::parse(&body) {
            Ok(frame) => frame,
            Err(FrameError::UnknownType(_) | FrameError::Length { .. } | FrameError::Short(_)) => continue,
            Err(other) => panic!("FrameRepr::parse gave {other:?}"),
        };
        assert_eq!(frame.body_len(), body.len());
        let wire = frame.to_wire();
        assert_eq!(wire.iter().filter(|&&b| b == DELIMITER).count(), 1, "COBS left a 0x00 inside");
        let again = deframe(&wire);
        assert_eq!(again.len(), 1);
        let back = again[0].as_ref().unwrap_or_else(|e| panic!("{frame:?} re-encoded fails: {e}"));
        assert_eq!(FrameRepr::parse(back).unwrap(), frame);
        // One flipped bit anywhere before the delimiter never yields a good frame that differs.
        let bit = usize::from(body[0]) * 8 % ((wire.len() - 1) * 8);
        let mut damaged = wire.clone();
        damaged[bit / 8] ^= 1 << (bit % 8);
        for b in deframe(&damaged).into_iter().flatten() {
            assert_eq!(FrameRepr::parse(&b).ok(), Some(frame.clone()), "a flipped bit went undetected");
        }
    }
    // Whole blocks straight through decode_block: the same result as the deframer gives.
    if let Some(block) =
        stream.split(|&b| b == DELIMITER).find(|b| !b.is_empty() && b.len() < MAX_ENCODED_BYTES)
    {
        let mut wire = block.to_vec();
        wire.push(DELIMITER);
        assert_eq!(deframe(&wire), vec![decode_block(block)]);
    }
}

//! Consistent Overhead Byte Stuffing: frames contain no 0x00 byte, so 0x00 delimits them and a
//! receiver that lost or corrupted bytes resynchronises at the next 0x00.
//!
//! Encoding: the frame is cut at each 0x00 (and after every run of 254 non-zero bytes); each
//! block is written as a code byte (block length + 1) followed by the block's non-zero bytes. A
//! code of 0xFF means "254 bytes, no zero follows". `n` bytes encode to at most
//! `n + ceil(n / 254) + 1` bytes, plus the 0x00 delimiter the sender appends.

/// Worst-case encoded length of `n` bytes (without the delimiter).
pub const fn max_encoded_len(n: usize) -> usize {
    n + n.div_ceil(254) + 1
}

/// Appends the COBS encoding of `data` to `out` (no delimiter).
pub fn encode_into(data: &[u8], out: &mut Vec<u8>) {
    out.reserve(max_encoded_len(data.len()));
    let mut code_at = out.len();
    out.push(0);
    let mut code: u8 = 1;
    for &byte in data {
        if byte == 0 {
            out[code_at] = code;
            code_at = out.len();
            out.push(0);
            code = 1;
        } else {
            out.push(byte);
            code += 1;
            if code == 0xFF {
                out[code_at] = code;
                code_at = out.len();
                out.push(0);
                code = 1;
            }
        }
    }
    out[code_at] = code;
}

/// Why a block of bytes between two delimiters is not a COBS encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CobsError {
    /// A code byte points past the end of the block (a byte was lost or corrupted).
    Truncated,
    /// A 0x00 inside the block (cannot happen when blocks are split at delimiters).
    ZeroInBlock,
}

/// Decodes one block (the bytes between two delimiters).
pub fn decode(encoded: &[u8]) -> Result<Vec<u8>, CobsError> {
    let mut out = Vec::with_capacity(encoded.len());
    let mut i = 0;
    while i < encoded.len() {
        let code = encoded[i];
        if code == 0 {
            return Err(CobsError::ZeroInBlock);
        }
        let end = i + usize::from(code);
        let block = encoded.get(i + 1..end).ok_or(CobsError::Truncated)?;
        if block.contains(&0) {
            return Err(CobsError::ZeroInBlock);
        }
        out.extend_from_slice(block);
        i = end;
        if code != 0xFF && i < encoded.len() {
            out.push(0);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_into(data, &mut out);
        out
    }

    #[test]
    fn known_encodings() {
        assert_eq!(enc(&[]), [0x01]);
        assert_eq!(enc(&[0x00]), [0x01, 0x01]);
        assert_eq!(enc(&[0x11, 0x22, 0x00, 0x33]), [0x03, 0x11, 0x22, 0x02, 0x33]);
        assert_eq!(enc(&[0x11, 0x00, 0x00]), [0x02, 0x11, 0x01, 0x01]);
        let run: Vec<u8> = (1..=254).collect();
        let mut expected = vec![0xFF];
        expected.extend_from_slice(&run);
        expected.push(0x01);
        assert_eq!(enc(&run), expected);
    }

    #[test]
    fn corrupted_code_is_detected() {
        assert_eq!(decode(&[0x05, 0x11]), Err(CobsError::Truncated));
        assert_eq!(decode(&[0x02, 0x00]), Err(CobsError::ZeroInBlock));
    }

    proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let e = enc(&data);
            prop_assert!(!e.contains(&0));
            prop_assert!(e.len() <= max_encoded_len(data.len()));
            prop_assert_eq!(decode(&e).unwrap(), data);
        }
    }
}

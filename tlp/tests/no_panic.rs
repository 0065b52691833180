//! Parsing never panics, whatever the bytes; whatever it accepts, it re-emits unchanged.

use proptest::prelude::*;
use tlp::arbitrary::{valid_tlp, valid_tlp_bytes};
use tlp::wire::Packet;
use tlp::{Limits, Tlp};

/// Everything a consumer might do with untrusted bytes.
fn exercise(bytes: &[u8]) -> Result<(), TestCaseError> {
    let parsed = Tlp::parse(bytes);
    let packet = Packet::new_checked(bytes);
    if let Ok(tlp) = &parsed {
        prop_assert!(packet.is_ok(), "parse accepted what the checked view rejects: {:?}", packet);
        prop_assert_eq!(&tlp.to_bytes()[..], bytes);
        let _ = tlp.to_string();
        let _ = tlp.violations(&Limits { max_payload_size: Some(128), max_read_request_size: Some(128) });
    }
    if let Ok(p) = &packet {
        // Every getter is in bounds on a checked view.
        let _ = (p.kind(), p.tag(), p.requester_id(), p.address(), p.ph(), p.cfg_register(), p.cfg_target());
        let _ = (p.completer_id(), p.cpl_status(), p.byte_count(), p.lower_address(), p.message_code());
        let _ = (p.message_fields(), p.payload(), p.digest(), p.prefix(0), p.first_be(), p.last_be());
        prop_assert_eq!(p.total_len(), bytes.len());
    }
    let _ = Packet::new_unchecked(bytes).to_string();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..160)) {
        exercise(&bytes)?;
    }

    /// Arbitrary bytes after a DW0 that names a real kind, so the header parsers are reached.
    #[test]
    fn arbitrary_bytes_after_a_valid_dw0(tlp in valid_tlp(), tail in prop::collection::vec(any::<u8>(), 0..160)) {
        let mut bytes = tlp.to_bytes();
        let header = tlp.prefixes.len() * 4 + 4;
        bytes.truncate(header);
        bytes.extend_from_slice(&tail);
        exercise(&bytes)?;
    }

    #[test]
    fn truncated_valid_tlps_are_rejected(bytes in valid_tlp_bytes(), cut in 1usize..64) {
        let keep = bytes.len().saturating_sub(cut);
        prop_assert!(Tlp::parse(&bytes[..keep]).is_err());
        exercise(&bytes[..keep])?;
    }

    #[test]
    fn valid_tlps_with_trailing_bytes_are_rejected(bytes in valid_tlp_bytes(), extra in 1usize..8) {
        let mut longer = bytes.clone();
        longer.extend(std::iter::repeat_n(0u8, extra));
        prop_assert!(Tlp::parse(&longer).is_err());
    }

    #[test]
    fn bit_flips_of_valid_tlps(bytes in valid_tlp_bytes(), flips in prop::collection::vec(any::<prop::sample::Index>(), 1..4)) {
        let mut bytes = bytes;
        for flip in flips {
            let bit = flip.index(bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
        }
        exercise(&bytes)?;
    }
}

//! Sim-link frames (docs/sim-protocol.md): `decode_frame` over a byte stream, as the bridge's
//! sim link reads it.
//!
//! Properties: frames are consumed in order and never past the input or the documented
//! maximum (8-byte header + `MAX_PAYLOAD_LEN`); a decoded message encodes to a frame that
//! decodes to the same message; a header announcing more than `MAX_PAYLOAD_LEN` bytes is
//! refused from the header alone; decoding allocates at most the payload it returns (an ERROR
//! text may grow 3× when invalid UTF-8 is replaced by U+FFFD, plus String growth).

use sim::link::wire::{FrameHeader, HEADER_LEN, MAX_PAYLOAD_LEN, Message, decode_frame};

use crate::alloc_watch;

pub fn check(data: &[u8]) {
    let mut rest = data;
    loop {
        if let Some(h) = rest.first_chunk::<HEADER_LEN>() {
            let announced = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
            if announced > MAX_PAYLOAD_LEN {
                assert!(
                    FrameHeader::parse(h).is_err(),
                    "a {announced}-byte payload was announced and accepted"
                );
            }
        }
        let (decoded, largest) = alloc_watch::largest_during(|| decode_frame(rest));
        match decoded {
            Ok(Some((message, consumed))) => {
                assert!(consumed >= HEADER_LEN && consumed <= rest.len());
                assert!(consumed <= HEADER_LEN + MAX_PAYLOAD_LEN);
                assert!(
                    largest <= 4 * (consumed - HEADER_LEN) + 64,
                    "{consumed}-byte frame allocated {largest}"
                );
                let frame = message.to_frame();
                match decode_frame(&frame) {
                    // An ERROR text grown by U+FFFD replacement is cut to fit the maximum
                    // payload when re-encoded (documented in `Message::to_frame`).
                    Ok(Some((Message::Error { code, message: text }, used)))
                        if matches!(&message, Message::Error { .. }) =>
                    {
                        let Message::Error { code: original_code, message: original } = &message else {
                            unreachable!()
                        };
                        assert_eq!(code, *original_code);
                        assert!(
                            original.starts_with(text.trim_end_matches('\u{fffd}')),
                            "ERROR text changed"
                        );
                        assert_eq!(used, frame.len());
                    }
                    Ok(Some((back, used))) => {
                        assert_eq!(back, message);
                        assert_eq!(used, frame.len());
                    }
                    other => panic!("{message:?} encodes to a frame that decodes to {other:?}"),
                }
                if !matches!(message, Message::Error { .. }) {
                    // Every other message keeps every payload byte: the frame is the input.
                    assert_eq!(frame, &rest[..consumed], "{message:?}");
                }
                rest = &rest[consumed..];
            }
            Ok(None) => {
                // Needs more bytes: a header, or the payload the header announced.
                if let Some(h) = rest.first_chunk::<HEADER_LEN>() {
                    let header = FrameHeader::parse(h).unwrap();
                    assert!(rest.len() < HEADER_LEN + header.length as usize);
                }
                assert!(largest == 0, "an incomplete frame allocated {largest}");
                return;
            }
            Err(_) => return,
        }
    }
}

//! The FPGA link's frame format (`docs/fpga-link.md`), used by the serial and stream links.
//!
//! On the wire: `COBS(body ‖ CRC-32(body) as 4 bytes little-endian) ‖ 0x00`. The body's first
//! byte is the frame type; multi-byte fields in the body are big-endian, like the TLPs they
//! carry. [`FrameRepr`] is the parsed form; [`Deframer`] cuts a byte stream into frames.

pub mod cobs;
pub mod crc;

pub use crc::crc32;

/// Largest TLP a frame carries: 4 prefix DWs, a 4-DW header, 4096 payload bytes and a digest.
pub const MAX_TLP_BYTES: usize = 16 + 16 + 4096 + 4;
/// Largest frame body (type, sequence number, timestamp, TLP).
pub const MAX_BODY_BYTES: usize = field::TLP_TS_DATA + MAX_TLP_BYTES;
/// Largest frame on the wire between two delimiters (COBS of body + CRC).
pub const MAX_ENCODED_BYTES: usize = cobs::max_encoded_len(MAX_BODY_BYTES + field::CRC_LEN);
/// The frame delimiter.
pub const DELIMITER: u8 = 0x00;
/// The protocol version sent in HELLO.
/// The protocol version sent in HELLO (2: HELLO carries session identifiers).
pub const VERSION: u8 = 2;

/// Byte offsets inside a frame body.
pub mod field {
    use std::ops::Range;

    pub const TYPE: usize = 0;

    pub mod kind {
        pub const HELLO: u8 = 0x01;
        pub const TLP: u8 = 0x02;
        pub const TLP_TS: u8 = 0x03;
        pub const ACK: u8 = 0x04;
        pub const NAK: u8 = 0x05;
    }

    // HELLO
    pub const HELLO_VERSION: usize = 1;
    pub const HELLO_FLAGS: usize = 2;
    pub const HELLO_MPS: Range<usize> = 3..5;
    pub const HELLO_MRRS: Range<usize> = 5..7;
    pub const HELLO_RCB: usize = 7;
    pub const HELLO_TAG_BITS: usize = 8;
    pub const HELLO_CREDITS: Range<usize> = 9..11;
    pub const HELLO_MAX_TLP: Range<usize> = 11..13;
    pub const HELLO_KEEPALIVE_MS: Range<usize> = 13..15;
    pub const HELLO_SESSION: Range<usize> = 15..19;
    pub const HELLO_PEER_SESSION: Range<usize> = 19..23;
    pub const HELLO_LEN: usize = 23;

    pub mod flags {
        /// The sender stamps its TLP frames (type TLP_TS).
        pub const TIMESTAMPS: u8 = 0x01;
        /// The sender has received a HELLO from its peer since it last went down; the HELLO's
        /// peer session field holds that HELLO's session.
        pub const PEER_SEEN: u8 = 0x02;
        /// The sender's link is up (a HELLO with this bit set is never answered).
        pub const UP: u8 = 0x04;
        /// The sender went down for a hot reset (secondary bus reset) its user asked for: set
        /// in every HELLO it sends from then until it is up again. A peer that is up reports
        /// the reset it causes as a hot reset instead of a link down.
        pub const HOT_RESET: u8 = 0x08;
    }

    // TLP / TLP_TS
    pub const SEQ: Range<usize> = 1..3;
    pub const TLP_DATA: usize = 3;
    pub const TLP_TIMESTAMP: Range<usize> = 3..11;
    pub const TLP_TS_DATA: usize = 11;

    // ACK / NAK
    pub const ACK_SEQ: Range<usize> = 1..3;
    pub const ACK_CREDIT_LIMIT: Range<usize> = 3..5;
    pub const ACK_LEN: usize = 5;

    pub const CRC_LEN: usize = 4;
}

/// Link parameters a side announces in its HELLO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version: u8,
    pub flags: u8,
    /// Max payload size in bytes (128..=4096).
    pub mps: u16,
    /// Max read request size in bytes (128..=4096).
    pub mrrs: u16,
    /// Read completion boundary in bytes (64 or 128).
    pub rcb: u8,
    /// Tag width in bits (5, 8 or 10).
    pub tag_bits: u8,
    /// TLP frames the sender can buffer (1..=32767).
    pub credits: u16,
    /// Largest TLP in bytes the sender accepts in one frame.
    pub max_tlp: u16,
    /// How often the sender sends a frame when idle, in milliseconds (1..).
    pub keepalive_ms: u16,
    /// The sender's session: a new value each time the sender goes down, so that a HELLO can be
    /// told apart from one sent before a link reset.
    pub session: u32,
    /// The session of the last peer HELLO the sender received (meaningful with PEER_SEEN).
    pub peer_session: u32,
}

impl Hello {
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// A parsed frame body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameRepr<'a> {
    Hello(Hello),
    Tlp {
        seq: u16,
        timestamp: Option<u64>,
        tlp: &'a [u8],
    },
    /// `seq`: the last sequence number received in order; `credit_limit`: the total number of TLP
    /// frames (mod 2^16) the peer may have sent since the link came up.
    Ack {
        seq: u16,
        credit_limit: u16,
    },
    /// As ACK, and: resend everything after `seq`.
    Nak {
        seq: u16,
        credit_limit: u16,
    },
}

/// Why a frame was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("COBS decoding failed: {0:?}")]
    Cobs(cobs::CobsError),
    #[error("frame of {0} bytes is shorter than type + CRC")]
    Short(usize),
    #[error("CRC mismatch: frame says {expected:#010x}, body has {actual:#010x}")]
    Crc { expected: u32, actual: u32 },
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    #[error("frame type {kind:#04x} must be {expected} bytes, got {actual}")]
    Length { kind: u8, expected: usize, actual: usize },
    #[error("frame longer than {MAX_ENCODED_BYTES} bytes between delimiters")]
    Oversize,
}

fn be16(body: &[u8], r: std::ops::Range<usize>) -> u16 {
    body.get(r).and_then(|b| b.try_into().ok()).map_or(0, u16::from_be_bytes)
}

fn be32(body: &[u8], r: std::ops::Range<usize>) -> u32 {
    body.get(r).and_then(|b| b.try_into().ok()).map_or(0, u32::from_be_bytes)
}

impl<'a> FrameRepr<'a> {
    /// Parses a frame body (CRC already checked and removed).
    pub fn parse(body: &'a [u8]) -> Result<Self, FrameError> {
        use field::kind;
        let &ty = body.first().ok_or(FrameError::Short(0))?;
        let exact = |expected: usize| {
            if body.len() == expected {
                Ok(())
            } else {
                Err(FrameError::Length { kind: ty, expected, actual: body.len() })
            }
        };
        match ty {
            kind::HELLO => {
                exact(field::HELLO_LEN)?;
                Ok(FrameRepr::Hello(Hello {
                    version: body[field::HELLO_VERSION],
                    flags: body[field::HELLO_FLAGS],
                    mps: be16(body, field::HELLO_MPS),
                    mrrs: be16(body, field::HELLO_MRRS),
                    rcb: body[field::HELLO_RCB],
                    tag_bits: body[field::HELLO_TAG_BITS],
                    credits: be16(body, field::HELLO_CREDITS),
                    max_tlp: be16(body, field::HELLO_MAX_TLP),
                    keepalive_ms: be16(body, field::HELLO_KEEPALIVE_MS),
                    session: be32(body, field::HELLO_SESSION),
                    peer_session: be32(body, field::HELLO_PEER_SESSION),
                }))
            }
            kind::TLP | kind::TLP_TS => {
                let (timestamp, data) = if ty == kind::TLP_TS {
                    let ts = body
                        .get(field::TLP_TIMESTAMP)
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_be_bytes)
                        .ok_or(FrameError::Length {
                            kind: ty,
                            expected: field::TLP_TS_DATA,
                            actual: body.len(),
                        })?;
                    (Some(ts), field::TLP_TS_DATA)
                } else {
                    (None, field::TLP_DATA)
                };
                let tlp = body.get(data..).filter(|t| !t.is_empty()).ok_or(FrameError::Length {
                    kind: ty,
                    expected: data + 4,
                    actual: body.len(),
                })?;
                Ok(FrameRepr::Tlp { seq: be16(body, field::SEQ), timestamp, tlp })
            }
            kind::ACK | kind::NAK => {
                exact(field::ACK_LEN)?;
                let seq = be16(body, field::ACK_SEQ);
                let credit_limit = be16(body, field::ACK_CREDIT_LIMIT);
                Ok(if ty == kind::ACK {
                    FrameRepr::Ack { seq, credit_limit }
                } else {
                    FrameRepr::Nak { seq, credit_limit }
                })
            }
            other => Err(FrameError::UnknownType(other)),
        }
    }

    /// The body's length.
    pub fn body_len(&self) -> usize {
        match self {
            FrameRepr::Hello(_) => field::HELLO_LEN,
            FrameRepr::Tlp { timestamp: Some(_), tlp, .. } => field::TLP_TS_DATA + tlp.len(),
            FrameRepr::Tlp { timestamp: None, tlp, .. } => field::TLP_DATA + tlp.len(),
            FrameRepr::Ack { .. } | FrameRepr::Nak { .. } => field::ACK_LEN,
        }
    }

    /// Writes the body.
    pub fn emit_body(&self, out: &mut Vec<u8>) {
        use field::kind;
        match self {
            FrameRepr::Hello(h) => {
                out.extend_from_slice(&[kind::HELLO, h.version, h.flags]);
                out.extend_from_slice(&h.mps.to_be_bytes());
                out.extend_from_slice(&h.mrrs.to_be_bytes());
                out.extend_from_slice(&[h.rcb, h.tag_bits]);
                out.extend_from_slice(&h.credits.to_be_bytes());
                out.extend_from_slice(&h.max_tlp.to_be_bytes());
                out.extend_from_slice(&h.keepalive_ms.to_be_bytes());
                out.extend_from_slice(&h.session.to_be_bytes());
                out.extend_from_slice(&h.peer_session.to_be_bytes());
            }
            FrameRepr::Tlp { seq, timestamp, tlp } => {
                out.push(if timestamp.is_some() { kind::TLP_TS } else { kind::TLP });
                out.extend_from_slice(&seq.to_be_bytes());
                if let Some(ts) = timestamp {
                    out.extend_from_slice(&ts.to_be_bytes());
                }
                out.extend_from_slice(tlp);
            }
            FrameRepr::Ack { seq, credit_limit } | FrameRepr::Nak { seq, credit_limit } => {
                out.push(if matches!(self, FrameRepr::Ack { .. }) { kind::ACK } else { kind::NAK });
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&credit_limit.to_be_bytes());
            }
        }
    }

    /// The complete wire form: COBS(body ‖ CRC) ‖ 0x00.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.body_len() + field::CRC_LEN);
        self.emit_body(&mut body);
        let crc = crc32(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        let mut wire = Vec::with_capacity(cobs::max_encoded_len(body.len()) + 1);
        cobs::encode_into(&body, &mut wire);
        wire.push(DELIMITER);
        wire
    }
}

/// Decodes one block between delimiters into a checked body (CRC removed).
pub fn decode_block(block: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut body = cobs::decode(block).map_err(FrameError::Cobs)?;
    if body.len() < 1 + field::CRC_LEN {
        return Err(FrameError::Short(body.len()));
    }
    let crc_at = body.len() - field::CRC_LEN;
    let expected = body[crc_at..].try_into().map(u32::from_le_bytes).unwrap_or(0);
    body.truncate(crc_at);
    let actual = crc32(&body);
    if actual != expected {
        return Err(FrameError::Crc { expected, actual });
    }
    Ok(body)
}

/// Cuts a byte stream into frame bodies at 0x00 delimiters. Bounded: a block longer than
/// [`MAX_ENCODED_BYTES`] is discarded up to the next delimiter and reported once.
#[derive(Debug, Default)]
pub struct Deframer {
    block: Vec<u8>,
    oversize: bool,
}

impl Deframer {
    pub fn new() -> Self {
        Deframer::default()
    }

    /// Feeds bytes; calls `on_frame` with each complete body or error, in order.
    pub fn push(&mut self, bytes: &[u8], mut on_frame: impl FnMut(Result<Vec<u8>, FrameError>)) {
        for &byte in bytes {
            if byte == DELIMITER {
                if self.oversize {
                    on_frame(Err(FrameError::Oversize));
                } else if !self.block.is_empty() {
                    on_frame(decode_block(&self.block));
                }
                self.block.clear();
                self.oversize = false;
            } else if self.block.len() >= MAX_ENCODED_BYTES {
                self.oversize = true;
            } else {
                self.block.push(byte);
            }
        }
    }

    /// Forgets a partial frame (after the device was reopened).
    pub fn reset(&mut self) {
        self.block.clear();
        self.oversize = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(wire: &[u8]) -> Vec<Result<Vec<u8>, FrameError>> {
        let mut out = Vec::new();
        Deframer::new().push(wire, |f| out.push(f));
        out
    }

    /// The hex examples of docs/fpga-link.md, byte for byte.
    #[test]
    fn documented_examples() {
        assert_eq!(
            FrameRepr::Ack { seq: 5, credit_limit: 16 }.to_wire(),
            [0x02, 0x04, 0x02, 0x05, 0x06, 0x10, 0x52, 0x83, 0xde, 0x28, 0x00]
        );
        assert_eq!(
            FrameRepr::Nak { seq: 0xffff, credit_limit: 8 }.to_wire(),
            [0x04, 0x05, 0xff, 0xff, 0x06, 0x08, 0x43, 0xc2, 0x84, 0x60, 0x00]
        );
        let hello = Hello {
            version: 2,
            flags: 0,
            mps: 256,
            mrrs: 512,
            rcb: 64,
            tag_bits: 8,
            credits: 8,
            max_tlp: 4132,
            keepalive_ms: 100,
            session: 0x0102_0304,
            peer_session: 0,
        };
        assert_eq!(
            FrameRepr::Hello(hello).to_wire(),
            [
                0x03, 0x01, 0x02, 0x02, 0x01, 0x02, 0x02, 0x03, 0x40, 0x08, 0x04, 0x08, 0x10, 0x24, 0x06,
                0x64, 0x01, 0x02, 0x03, 0x04, 0x01, 0x01, 0x01, 0x05, 0x1d, 0xba, 0x37, 0x0f, 0x00
            ]
        );
        // The first HELLO after a hot reset: the next session, HOT_RESET, nothing seen yet.
        let hot_reset = Hello { flags: field::flags::HOT_RESET, session: 0x0102_0305, ..hello };
        assert_eq!(
            FrameRepr::Hello(hot_reset).to_wire(),
            [
                0x05, 0x01, 0x02, 0x08, 0x01, 0x02, 0x02, 0x03, 0x40, 0x08, 0x04, 0x08, 0x10, 0x24, 0x06,
                0x64, 0x01, 0x02, 0x03, 0x05, 0x01, 0x01, 0x01, 0x05, 0xdb, 0x9a, 0xa5, 0x17, 0x00
            ]
        );
        let tlp =
            [0x40, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x0f, 0x80, 0x00, 0x00, 0x10, 0x78, 0x56, 0x34, 0x12];
        assert_eq!(
            FrameRepr::Tlp { seq: 0, timestamp: None, tlp: &tlp }.to_wire(),
            [
                0x02, 0x02, 0x01, 0x02, 0x40, 0x01, 0x02, 0x01, 0x01, 0x01, 0x03, 0x0f, 0x80, 0x01, 0x0a,
                0x10, 0x78, 0x56, 0x34, 0x12, 0xa6, 0x65, 0x1f, 0x3f, 0x00
            ]
        );
        assert_eq!(
            FrameRepr::Tlp { seq: 0x0102, timestamp: Some(1_000_000), tlp: &tlp }.to_wire(),
            [
                0x04, 0x03, 0x01, 0x02, 0x01, 0x01, 0x01, 0x01, 0x05, 0x0f, 0x42, 0x40, 0x40, 0x01, 0x02,
                0x01, 0x01, 0x01, 0x03, 0x0f, 0x80, 0x01, 0x0a, 0x10, 0x78, 0x56, 0x34, 0x12, 0x5b, 0xbd,
                0xb6, 0xee, 0x00
            ]
        );
    }

    #[test]
    fn frames_round_trip() {
        let hello = Hello {
            version: VERSION,
            flags: field::flags::TIMESTAMPS,
            mps: 256,
            mrrs: 512,
            rcb: 64,
            tag_bits: 8,
            credits: 8,
            max_tlp: 4132,
            keepalive_ms: 100,
            session: 0x0102_0304,
            peer_session: 0,
        };
        let tlp = [0x40, 0, 0, 1, 0, 0, 0, 0xf, 0xfe, 0xe0, 0, 0, 1, 2, 3, 4];
        let frames = [
            FrameRepr::Hello(hello),
            FrameRepr::Tlp { seq: 7, timestamp: None, tlp: &tlp },
            FrameRepr::Tlp { seq: 0xffff, timestamp: Some(123456789), tlp: &tlp },
            FrameRepr::Ack { seq: 1, credit_limit: 9 },
            FrameRepr::Nak { seq: 0xffff, credit_limit: 0 },
        ];
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend(f.to_wire());
        }
        let bodies: Vec<Vec<u8>> = decode_all(&wire).into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(bodies.len(), frames.len());
        for (body, frame) in bodies.iter().zip(&frames) {
            assert_eq!(&FrameRepr::parse(body).unwrap(), frame);
        }
    }

    #[test]
    fn corruption_is_caught_and_the_next_frame_survives() {
        let mut wire = FrameRepr::Ack { seq: 1, credit_limit: 2 }.to_wire();
        wire[2] ^= 0x10;
        wire.extend(FrameRepr::Ack { seq: 3, credit_limit: 4 }.to_wire());
        let out = decode_all(&wire);
        assert!(matches!(out[0], Err(FrameError::Crc { .. }) | Err(FrameError::Cobs(_))));
        assert_eq!(
            FrameRepr::parse(out[1].as_ref().unwrap()).unwrap(),
            FrameRepr::Ack { seq: 3, credit_limit: 4 }
        );
    }

    #[test]
    fn oversize_blocks_are_discarded_up_to_the_delimiter() {
        let mut wire = vec![0x55; MAX_ENCODED_BYTES + 10];
        wire.push(0);
        wire.extend(FrameRepr::Ack { seq: 3, credit_limit: 4 }.to_wire());
        let out = decode_all(&wire);
        assert_eq!(out[0], Err(FrameError::Oversize));
        assert!(out[1].is_ok());
    }

    #[test]
    fn bad_lengths_and_types_are_rejected() {
        assert!(matches!(FrameRepr::parse(&[0x04, 0, 1]), Err(FrameError::Length { .. })));
        assert!(matches!(FrameRepr::parse(&[0x02, 0, 1]), Err(FrameError::Length { .. })));
        assert_eq!(FrameRepr::parse(&[0x7f]), Err(FrameError::UnknownType(0x7f)));
    }
}

//! Bytes → [`Tlp`], with `nom`.
//!
//! The shape of a TLP branches on its first header byte: prefixes (Fmt 100b) repeat until a
//! header DW0; Fmt/Type then pick a 3DW or 4DW header of one of six families; Fmt[1] says whether
//! Length DWs of data follow, and TD whether an ECRC digest ends the TLP. The parsers below
//! follow that shape. Before any field is decoded, the byte count is checked against what DW0
//! announces, so every error names the sizes involved.
//!
//! # What parse accepts
//!
//! Parse is structural: it accepts every TLP the model can hold unchanged, so that for any input
//! it accepts, emitting the result gives back the same bytes. It rejects:
//! - a buffer that ends inside the prefixes, header or digest ([`TlpError::Truncated`]), or holds
//!   more than a no-data TLP ([`TlpError::TrailingBytes`]);
//! - a data TLP whose size is not header + Length × 4 (+ 4 with TD) ([`TlpError::LengthMismatch`]);
//! - a reserved or deprecated Fmt/Type pair ([`TlpError::ReservedFmtType`]);
//! - reserved header bits the model has no field for ([`TlpError::ReservedBitsSet`]): address bits
//!   1:0 of an I/O request, DW2 bits 15:12 and 1:0 of a configuration request, DW2 bit 7 of a
//!   completion. Keeping them would need fields with no meaning; dropping them would make a
//!   malformed TLP look well-formed after a round trip. Reserved bits that do carry meaning in some
//!   context are kept instead: PH (address bits 1:0 of memory and AtomicOp requests), T9/T8,
//!   message header bytes 8..16, the Length field of Cpl and Msg without data, and the tag and
//!   byte-enable positions of messages.
//!
//! Semantic rules (byte enables, 4 KiB crossing, TC of messages, …) are [`Tlp::validate`]'s job.
//! Parsing never panics and allocates only for the payload and, when present, prefixes.

use nom::IResult;
use nom::bytes::complete::take;
use nom::combinator::{cond, verify};
use nom::multi::fold_many0;
use nom::number::complete::{be_u8, be_u16, be_u32};
use nom::sequence::tuple;

use crate::error::TlpError;
use crate::model::{
    AtomicRequest, Attr, Body, Completion, ConfigRequest, CplStatus, IoRequest, MemOp, MemRequest, Message,
    MessageCode, Prefix, RoutingId, Tlp,
};
use crate::wire::{DW_LEN, Dw0, HEADER_3DW_LEN, HEADER_4DW_LEN, Kind, check_total_len};

/// Header DW0 (bit positions in `wire`'s field table).
fn dw0(input: &[u8]) -> IResult<&[u8], Dw0> {
    let (rest, dw) = be_u32(input)?;
    Ok((rest, Dw0::decode(dw)))
}

/// Leading DWs with Fmt = 100b. `Vec::new` does not allocate, so TLPs without prefixes cost
/// nothing here.
fn prefixes(input: &[u8]) -> IResult<&[u8], Vec<Prefix>> {
    fold_many0(verify(be_u32, |dw: &u32| dw >> 29 == 0b100), Vec::new, |mut acc, dw| {
        acc.push(Prefix(dw));
        acc
    })(input)
}

/// DW1 of a request: Requester ID, Tag[7:0], Last BE, First BE.
fn request_dw1(input: &[u8]) -> IResult<&[u8], (RoutingId, u16, u8, u8)> {
    let (rest, (requester, tag, be)) = tuple((be_u16, be_u8, be_u8))(input)?;
    Ok((rest, (RoutingId(requester), u16::from(tag), be & 0xf, be >> 4)))
}

/// Address DW(s) of memory and AtomicOp requests: (address, PH).
fn address(four_dw: bool) -> impl Fn(&[u8]) -> IResult<&[u8], (u64, u8)> {
    move |input| {
        if four_dw {
            let (rest, (hi, lo)) = tuple((be_u32, be_u32))(input)?;
            Ok((rest, ((u64::from(hi) << 32) | u64::from(lo & !0x3), (lo & 0x3) as u8)))
        } else {
            let (rest, lo) = be_u32(input)?;
            Ok((rest, (u64::from(lo & !0x3), (lo & 0x3) as u8)))
        }
    }
}

/// A `nom` failure after the size check can only mean the input ran out.
fn truncated(needed: usize, got: usize) -> impl Fn(nom::Err<nom::error::Error<&[u8]>>) -> TlpError {
    move |_| TlpError::Truncated { needed, got }
}

fn reserved_bits(field: &'static str, offset: usize, value: u32) -> TlpError {
    TlpError::ReservedBitsSet { field, offset, value }
}

/// The family-specific header after DW0. `offset` is DW1's offset in the TLP, for errors.
fn body<'a>(kind: Kind, d: &Dw0, input: &'a [u8], offset: usize) -> Result<(&'a [u8], Body), HeaderError> {
    let tag_high = d.tag_high;
    Ok(match kind {
        Kind::MemRead | Kind::MemReadLocked | Kind::MemWrite => {
            let (rest, (requester, tag, first_be, last_be)) = request_dw1(input)?;
            let (rest, (address, ph)) = address(d.four_dw())(rest)?;
            let op = match kind {
                Kind::MemRead => MemOp::Read,
                Kind::MemReadLocked => MemOp::ReadLocked,
                _ => MemOp::Write,
            };
            let tag = tag_high | tag;
            let addr64 = d.four_dw();
            (rest, Body::Memory(MemRequest { op, requester, tag, first_be, last_be, address, ph, addr64 }))
        }
        Kind::Atomic(op) => {
            let (rest, (requester, tag, first_be, last_be)) = request_dw1(input)?;
            let (rest, (address, ph)) = address(d.four_dw())(rest)?;
            let tag = tag_high | tag;
            let addr64 = d.four_dw();
            (rest, Body::Atomic(AtomicRequest { op, requester, tag, first_be, last_be, address, ph, addr64 }))
        }
        Kind::IoRead | Kind::IoWrite => {
            let (rest, (requester, tag, first_be, last_be)) = request_dw1(input)?;
            let (rest, addr) = be_u32(rest)?;
            if addr & 0x3 != 0 {
                return Err(HeaderError::Tlp(reserved_bits("I/O address bits 1:0", offset + 7, addr & 0x3)));
            }
            let write = kind == Kind::IoWrite;
            let tag = tag_high | tag;
            (rest, Body::Io(IoRequest { write, requester, tag, first_be, last_be, address: addr }))
        }
        Kind::CfgRead(cfg_type) | Kind::CfgWrite(cfg_type) => {
            let (rest, (requester, tag, first_be, last_be)) = request_dw1(input)?;
            let (rest, (target, ext, reg)) = tuple((be_u16, be_u8, be_u8))(rest)?;
            if ext & 0xf0 != 0 {
                let value = u32::from(ext >> 4);
                return Err(HeaderError::Tlp(reserved_bits("config DW2 bits 15:12", offset + 6, value)));
            }
            if reg & 0x3 != 0 {
                let value = u32::from(reg & 0x3);
                return Err(HeaderError::Tlp(reserved_bits("config DW2 bits 1:0", offset + 7, value)));
            }
            let write = matches!(kind, Kind::CfgWrite(_));
            let register = (u16::from(ext) << 8) | u16::from(reg);
            let target = RoutingId(target);
            let tag = tag_high | tag;
            let c = ConfigRequest { cfg_type, write, requester, tag, first_be, last_be, target, register };
            (rest, Body::Config(c))
        }
        Kind::Completion | Kind::CompletionLocked => {
            let (rest, (completer, status_bc, requester, tag, la)) =
                tuple((be_u16, be_u16, be_u16, be_u8, be_u8))(input)?;
            if la & 0x80 != 0 {
                return Err(HeaderError::Tlp(reserved_bits("completion DW2 bit 7", offset + 7, 1)));
            }
            let byte_count = match status_bc & 0xfff {
                0 => 4096,
                n => n,
            };
            let c = Completion {
                locked: kind == Kind::CompletionLocked,
                completer: RoutingId(completer),
                status: CplStatus::from_bits((status_bc >> 13) as u8),
                bcm: status_bc & 0x1000 != 0,
                byte_count,
                requester: RoutingId(requester),
                tag: tag_high | u16::from(tag),
                lower_address: la,
            };
            (rest, Body::Completion(c))
        }
        Kind::Message(routing) => {
            let (rest, (requester, tag, code, fields)) = tuple((be_u16, be_u8, be_u8, take(8usize)))(input)?;
            let mut raw = [0u8; 8];
            raw.copy_from_slice(fields);
            let m = Message {
                routing,
                requester: RoutingId(requester),
                tag: tag_high | u16::from(tag),
                code: MessageCode(code),
                fields: raw,
            };
            (rest, Body::Message(m))
        }
    })
}

/// Either nom ran out of input or a header rule rejected the TLP.
enum HeaderError {
    /// Cannot happen after the size check; mapped to [`TlpError::Truncated`] all the same.
    OutOfInput,
    Tlp(TlpError),
}

impl From<nom::Err<nom::error::Error<&[u8]>>> for HeaderError {
    fn from(_: nom::Err<nom::error::Error<&[u8]>>) -> Self {
        HeaderError::OutOfInput
    }
}

impl Tlp {
    /// Structural parse of exactly one TLP occupying all of `bytes` (prefixes, header, payload,
    /// digest). Errors: truncated/trailing bytes, reserved Fmt/Type, Length inconsistent with the
    /// byte count, reserved bits the model cannot keep (see the [module docs](crate::parse)).
    pub fn parse(bytes: &[u8]) -> Result<Tlp, TlpError> {
        Tlp::parse_reusing(bytes, Vec::new())
    }

    /// [`Tlp::parse`] that puts the payload into `payload_buffer` (cleared first), reusing its
    /// allocation: a receiver that parses one TLP after another can hand the previous one's
    /// `payload` back in and allocate nothing per TLP once the buffer is large enough.
    pub fn parse_reusing(bytes: &[u8], mut payload_buffer: Vec<u8>) -> Result<Tlp, TlpError> {
        let got = bytes.len();
        // `prefixes` cannot fail: fold_many0 stops at the first non-prefix DW or the end.
        let (rest, prefixes) = prefixes(bytes).map_err(truncated(DW_LEN, got))?;
        let header_offset = got - rest.len();
        let (after_dw0, d) = dw0(rest).map_err(truncated(header_offset + DW_LEN, got))?;
        let kind = Kind::classify(d.fmt, d.ty).ok_or(TlpError::ReservedFmtType {
            fmt: d.fmt,
            ty: d.ty,
            offset: header_offset,
        })?;
        let header_len = if d.four_dw() { HEADER_4DW_LEN } else { HEADER_3DW_LEN };
        let td = d.td;
        check_total_len(header_offset, header_len, d.has_data(), d.length, td, got)?;

        let header_end = header_offset + header_len;
        let (rest, body) = match body(kind, &d, after_dw0, header_offset + DW_LEN) {
            Ok(parsed) => parsed,
            Err(HeaderError::Tlp(e)) => return Err(e),
            Err(HeaderError::OutOfInput) => return Err(TlpError::Truncated { needed: header_end, got }),
        };
        let data_len = if d.has_data() { usize::from(crate::wire::length_dw(d.length)) * DW_LEN } else { 0 };
        let (rest, (payload, digest)) = tuple((take(data_len), cond(td, be_u32)))(rest)
            .map_err(truncated(header_end + data_len + if td { 4 } else { 0 }, got))?;
        if !rest.is_empty() {
            return Err(TlpError::TrailingBytes { expected: got - rest.len(), got });
        }
        payload_buffer.clear();
        payload_buffer.extend_from_slice(payload);

        Ok(Tlp {
            prefixes,
            tc: d.tc,
            attr: Attr {
                relaxed_ordering: d.attr10 & 0b10 != 0,
                no_snoop: d.attr10 & 0b01 != 0,
                id_based_ordering: d.attr2,
            },
            ln: d.ln,
            th: d.th,
            ep: d.ep,
            at: d.at,
            length: d.length,
            body,
            payload: payload_buffer,
            digest,
        })
    }
}

/// Parses the TLP a checked [`Packet`](crate::wire::Packet) view holds.
impl<'a> TryFrom<&crate::wire::Packet<&'a [u8]>> for Tlp {
    type Error = TlpError;

    fn try_from(packet: &crate::wire::Packet<&'a [u8]>) -> Result<Tlp, TlpError> {
        Tlp::parse(packet.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mrd32_fields() {
        // MRd 3DW, TC0, Length 4, requester 01:00.0, tag 0x12, BEs f/f, address 0x40.
        let bytes = [0x00, 0x00, 0x00, 0x04, 0x01, 0x00, 0x12, 0xff, 0x00, 0x00, 0x00, 0x40];
        let tlp = Tlp::parse(&bytes).unwrap();
        assert_eq!(tlp.kind_name(), "MRd");
        assert_eq!(tlp.length, 4);
        assert_eq!(tlp.requester(), RoutingId::new(1, 0, 0));
        assert_eq!(tlp.tag(), Some(0x12));
        match tlp.body {
            Body::Memory(m) => {
                assert_eq!(m.address, 0x40);
                assert_eq!((m.first_be, m.last_be), (0xf, 0xf));
                assert!(!m.addr64);
            }
            other => panic!("expected memory body, got {other:?}"),
        }
    }

    #[test]
    fn ten_bit_tag_uses_t9_and_t8() {
        // T9 (bit 23) and T8 (bit 19) set: DW0 byte 1 = 0x88.
        let bytes = [0x00, 0x88, 0x00, 0x01, 0x01, 0x00, 0x34, 0x0f, 0x00, 0x00, 0x10, 0x00];
        assert_eq!(Tlp::parse(&bytes).unwrap().tag(), Some(0x334));
    }
}

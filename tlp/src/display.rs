//! One-line summaries of TLPs, for logs and the CLI.
//!
//! The form is `<kind> <ids> <fields> <flags>`:
//!
//! ```text
//! MRd64 01:00.0 tag=0x12 addr=0x1_0000_0040 len=4 be=f/f
//! MWr32 01:00.0 tag=0x00 addr=0xfee0_0000 len=1 be=f/0 data=00000041
//! CplD 00:00.0→01:00.0 tag=0x12 SC bc=16 la=0x40 len=4
//! CfgRd0 00:00.0→01:00.0 tag=0x01 reg=0x010 be=f/0
//! Msg 01:00.0 local Assert_INTA
//! ```
//!
//! Memory and AtomicOp kinds carry the address width (32/64). `→` points from the sender to the
//! target: requester → config target, completer → requester. Addresses are hex in groups of four
//! digits. Payloads of up to 8 bytes are shown as `data=` in wire byte order. Flags appear only
//! when they differ from the default: `tc=N`, `ro`, `ns`, `ido`, `ep`, `ln`, `th`, `ph=N`,
//! `at=N`, `ecrc=0x…` (TD set), `pfx=N` (N prefixes).

use core::fmt;

use crate::model::{Body, CplStatus, MessageCode, MsgRouting, RoutingId, Tlp};

/// Payloads up to this many bytes are printed in full.
const MAX_SHOWN_PAYLOAD: usize = 8;

/// Hex with `_` between groups of four digits: `0x1_0000_0040`.
struct GroupedHex(u64);

impl fmt::Display for GroupedHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = if self.0 == 0 { 1 } else { (64 - self.0.leading_zeros()).div_ceil(4) };
        f.write_str("0x")?;
        for i in (0..digits).rev() {
            write!(f, "{:x}", (self.0 >> (i * 4)) & 0xf)?;
            if i != 0 && i % 4 == 0 {
                f.write_str("_")?;
            }
        }
        Ok(())
    }
}

struct HexBytes<'a>(&'a [u8]);

impl fmt::Display for HexBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

fn width(addr64: bool) -> &'static str {
    if addr64 { "64" } else { "32" }
}

impl Tlp {
    fn fmt_data(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.payload.is_empty() && self.payload.len() <= MAX_SHOWN_PAYLOAD {
            write!(f, " data={}", HexBytes(&self.payload))?;
        }
        Ok(())
    }

    fn fmt_flags(&self, f: &mut fmt::Formatter<'_>, ph: u8) -> fmt::Result {
        if self.tc != 0 {
            write!(f, " tc={}", self.tc)?;
        }
        for (set, name) in [
            (self.attr.relaxed_ordering, " ro"),
            (self.attr.no_snoop, " ns"),
            (self.attr.id_based_ordering, " ido"),
            (self.ep, " ep"),
            (self.ln, " ln"),
            (self.th, " th"),
        ] {
            if set {
                f.write_str(name)?;
            }
        }
        if ph != 0 {
            write!(f, " ph={ph}")?;
        }
        if self.at != 0 {
            write!(f, " at={}", self.at)?;
        }
        if let Some(digest) = self.digest {
            write!(f, " ecrc={digest:#010x}")?;
        }
        if !self.prefixes.is_empty() {
            write!(f, " pfx={}", self.prefixes.len())?;
        }
        Ok(())
    }
}

impl fmt::Display for Tlp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.kind_name();
        let mut ph = 0;
        match &self.body {
            Body::Memory(m) => {
                ph = m.ph;
                write!(
                    f,
                    "{kind}{} {} tag={:#04x} addr={} len={} be={:x}/{:x}",
                    width(m.addr64),
                    m.requester,
                    m.tag,
                    GroupedHex(m.address),
                    self.length_dw(),
                    m.first_be,
                    m.last_be
                )?;
                self.fmt_data(f)?;
            }
            Body::Atomic(a) => {
                ph = a.ph;
                write!(
                    f,
                    "{kind}{} {} tag={:#04x} addr={} len={}",
                    width(a.addr64),
                    a.requester,
                    a.tag,
                    GroupedHex(a.address),
                    self.length_dw()
                )?;
                self.fmt_data(f)?;
            }
            Body::Io(io) => {
                write!(
                    f,
                    "{kind} {} tag={:#04x} addr={} be={:x}/{:x}",
                    io.requester,
                    io.tag,
                    GroupedHex(u64::from(io.address)),
                    io.first_be,
                    io.last_be
                )?;
                if self.length_dw() != 1 {
                    write!(f, " len={}", self.length_dw())?;
                }
                self.fmt_data(f)?;
            }
            Body::Config(c) => {
                write!(
                    f,
                    "{kind} {}→{} tag={:#04x} reg={:#05x} be={:x}/{:x}",
                    c.requester, c.target, c.tag, c.register, c.first_be, c.last_be
                )?;
                if self.length_dw() != 1 {
                    write!(f, " len={}", self.length_dw())?;
                }
                self.fmt_data(f)?;
            }
            Body::Completion(c) => {
                write!(
                    f,
                    "{kind} {}→{} tag={:#04x} {} bc={} la={:#x}",
                    c.completer, c.requester, c.tag, c.status, c.byte_count, c.lower_address
                )?;
                if c.bcm {
                    f.write_str(" bcm")?;
                }
                if !self.payload.is_empty() {
                    write!(f, " len={}", self.length_dw())?;
                    self.fmt_data(f)?;
                }
            }
            Body::Message(m) => {
                write!(f, "{kind} {} {} {}", m.requester, m.routing.name(), m.code)?;
                let word = |i: usize| {
                    u32::from_be_bytes([m.fields[i], m.fields[i + 1], m.fields[i + 2], m.fields[i + 3]])
                };
                match m.routing {
                    MsgRouting::ByAddress => {
                        let address = (u64::from(word(0)) << 32) | u64::from(word(4));
                        write!(f, " addr={}", GroupedHex(address))?;
                    }
                    MsgRouting::ById => {
                        write!(f, " to={}", RoutingId(u16::from_be_bytes([m.fields[0], m.fields[1]])))?;
                    }
                    _ => {}
                }
                // Routed by address, bytes 8..16 are the address and there is no Vendor ID
                // (the same views as `tlp::json`'s `address`, `target_id`, `vendor_id`).
                if m.code.is_vendor_defined() && m.routing != MsgRouting::ByAddress {
                    write!(f, " vendor={:#06x}", u16::from_be_bytes([m.fields[2], m.fields[3]]))?;
                } else if m.code == MessageCode::LTR {
                    write!(f, " ltr={:#010x}", word(4))?;
                }
                if m.tag != 0 {
                    write!(f, " tag={:#04x}", m.tag)?;
                }
                if !self.payload.is_empty() {
                    write!(f, " len={}", self.length_dw())?;
                    self.fmt_data(f)?;
                }
            }
        }
        self.fmt_flags(f, ph)
    }
}

impl fmt::Display for CplStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for MsgRouting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The spec name, or `code=0xNN` for an undefined code.
impl fmt::Display for MessageCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "code={:#04x}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::GroupedHex;

    #[test]
    fn grouped_hex() {
        assert_eq!(GroupedHex(0).to_string(), "0x0");
        assert_eq!(GroupedHex(0x40).to_string(), "0x40");
        assert_eq!(GroupedHex(0xfee0_0000).to_string(), "0xfee0_0000");
        assert_eq!(GroupedHex(0x1_0000_0040).to_string(), "0x1_0000_0040");
        assert_eq!(GroupedHex(u64::MAX).to_string(), "0xffff_ffff_ffff_ffff");
    }
}

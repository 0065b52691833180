//! The spec's semantic rules for a well-formed TLP (PCIe Base Spec r6.x, non-flit mode).
//!
//! [`Tlp::parse`] only checks structure; [`Tlp::validate`] checks what a receiver would report as
//! a Malformed TLP (or a sender must never produce): byte-enable rules, 4 KiB crossing, header size
//! for the address, reserved Address Type encodings, I/O and configuration request restrictions,
//! Max_Payload_Size and Max_Read_Request_Size when given, completion Byte Count / Lower Address
//! consistency, message TC, routing and data rules, AtomicOp operand sizes and alignment, TLP
//! prefix rules, and fields whose value does not fit their width (possible in a hand-built
//! [`Tlp`]).
//!
//! Each [`Violation`] names its [`Rule`] (a stable kebab-case id and the spec section) and the
//! values that broke it. [`Tlp::violations`] lists all of them; [`Tlp::validate`] stops at the first.
//!
//! Rules that need the request (RCB splitting, matching a completion to its request, tag
//! ownership) belong to the completer/requester logic in [`crate::completion`] and
//! [`crate::split`], not here.

use core::fmt;

use crate::model::{AtomicOp, Body, CplStatus, MemOp, MessageCode, MsgRouting, Tlp};

/// Link limits the conditional rules check. `Limits::default()` checks neither.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Max_Payload_Size in bytes (128..=4096).
    pub max_payload_size: Option<u16>,
    /// Max_Read_Request_Size in bytes (128..=4096).
    pub max_read_request_size: Option<u16>,
}

/// A broken rule and the values that broke it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{}: {detail}", rule.name())]
pub struct Violation {
    pub rule: Rule,
    pub detail: String,
}

impl Violation {
    pub fn new(rule: Rule, detail: impl Into<String>) -> Self {
        Violation { rule, detail: detail.into() }
    }
}

/// One variant per rule [`Tlp::validate`] checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// A field holds a value wider than its wire field (TC > 7, tag > 1023, BE > 0xf, address
    /// bits 1:0 set, Byte Count 0 or > 4096, a prefix DW without Fmt 100b, …).
    FieldOutOfRange,
    /// The payload is not Length DWs (or a TLP without data carries one).
    LengthPayloadMismatch,
    /// Length is reserved (must be 0) in Cpl and Msg without data.
    LengthReservedNonzero,
    /// The payload is larger than Max_Payload_Size.
    PayloadExceedsMps,
    /// A memory read asks for more than Max_Read_Request_Size.
    ReadRequestExceedsMrrs,
    /// A memory request's address and length cross a naturally aligned 4 KiB boundary.
    Crosses4kBoundary,
    /// A 4DW (64-bit) header for an address below 4 GiB.
    FourDwAddressBelow4G,
    /// A 3DW header cannot hold an address at or above 4 GiB.
    ThreeDwAddressAbove4G,
    /// Length 1 with a non-zero Last DW BE.
    LastBeNonzeroForLength1,
    /// Length > 1 with First DW BE 0000b.
    FirstBeZeroForMultiDw,
    /// Length > 1 with Last DW BE 0000b.
    LastBeZeroForMultiDw,
    /// Non-contiguous byte enables where not allowed (Length > 2, or Length 2 not QW aligned).
    NonContiguousBe,
    /// I/O and configuration requests have Length 1.
    IoCfgLengthNot1,
    /// I/O and configuration requests use TC0.
    IoCfgTcNot0,
    /// I/O and configuration requests have Attr 0 (no RO, NS, IDO).
    IoCfgAttrNot0,
    /// I/O and configuration requests have LN 0 and TH 0 (reserved for them) and AT 0.
    IoCfgLnThAtNot0,
    /// PH (address bits 1:0) is reserved when TH is 0.
    PhWithoutTh,
    /// Completion Status is a reserved encoding.
    ReservedCplStatus,
    /// A Configuration Request Retry Status completion carries no data.
    CrsWithData,
    /// A successful or CRS completion without data answers an I/O or configuration request, so
    /// Byte Count is 4 and Lower Address 0.
    IoCfgCplByteCount,
    /// A CplD returns more bytes than Byte Count says remain (Length × 4 >
    /// (Lower Address\[1:0\] + Byte Count) rounded up to a DW).
    CplLengthExceedsByteCount,
    /// INTx, power-management, error, unlock and Set_Slot_Power_Limit messages use TC0.
    MessageRequiresTc0,
    /// A message code used with a routing the spec does not give it.
    MessageRouting,
    /// A message code sent with data when it has none, or without the data it needs.
    MessageData,
    /// FetchAdd/Swap operands are 4 or 8 bytes, CAS operands 8, 16 or 32 bytes.
    AtomicOperandSize,
    /// An AtomicOp address is naturally aligned to the operand size.
    AtomicAddressMisaligned,
    /// Address Type 11b (reserved in every TLP), or AT not 00b in a completion or message, where
    /// the field is reserved (it is defined only for memory and AtomicOp requests; I/O and
    /// configuration requests are [`Rule::IoCfgLnThAtNot0`]). A Translation Agent answers a
    /// memory request with AT 11b with Unsupported Request.
    ReservedAddressType,
    /// A TLP prefix of a reserved type.
    PrefixReservedType,
    /// Local TLP prefixes precede End-End prefixes.
    LocalPrefixAfterEndEnd,
    /// At most 4 End-End TLP prefixes.
    TooManyEndEndPrefixes,
    /// The Extended TPH prefix only goes with TH set.
    ExtTphPrefixWithoutTh,
}

impl Rule {
    /// Every rule, in the order [`Tlp::violations`] checks them.
    pub const ALL: [Rule; 31] = [
        Rule::FieldOutOfRange,
        Rule::LengthPayloadMismatch,
        Rule::LengthReservedNonzero,
        Rule::PayloadExceedsMps,
        Rule::ReadRequestExceedsMrrs,
        Rule::Crosses4kBoundary,
        Rule::FourDwAddressBelow4G,
        Rule::ThreeDwAddressAbove4G,
        Rule::LastBeNonzeroForLength1,
        Rule::FirstBeZeroForMultiDw,
        Rule::LastBeZeroForMultiDw,
        Rule::NonContiguousBe,
        Rule::IoCfgLengthNot1,
        Rule::IoCfgTcNot0,
        Rule::IoCfgAttrNot0,
        Rule::IoCfgLnThAtNot0,
        Rule::PhWithoutTh,
        Rule::ReservedCplStatus,
        Rule::CrsWithData,
        Rule::IoCfgCplByteCount,
        Rule::CplLengthExceedsByteCount,
        Rule::MessageRequiresTc0,
        Rule::MessageRouting,
        Rule::MessageData,
        Rule::AtomicOperandSize,
        Rule::AtomicAddressMisaligned,
        Rule::ReservedAddressType,
        Rule::PrefixReservedType,
        Rule::LocalPrefixAfterEndEnd,
        Rule::TooManyEndEndPrefixes,
        Rule::ExtTphPrefixWithoutTh,
    ];

    /// A stable kebab-case id.
    pub const fn name(&self) -> &'static str {
        match self {
            Rule::FieldOutOfRange => "field-out-of-range",
            Rule::LengthPayloadMismatch => "length-payload-mismatch",
            Rule::LengthReservedNonzero => "length-reserved-nonzero",
            Rule::PayloadExceedsMps => "payload-exceeds-mps",
            Rule::ReadRequestExceedsMrrs => "read-request-exceeds-mrrs",
            Rule::Crosses4kBoundary => "crosses-4k-boundary",
            Rule::FourDwAddressBelow4G => "4dw-address-below-4g",
            Rule::ThreeDwAddressAbove4G => "3dw-address-above-4g",
            Rule::LastBeNonzeroForLength1 => "last-be-nonzero-for-length-1",
            Rule::FirstBeZeroForMultiDw => "first-be-zero-for-multi-dw",
            Rule::LastBeZeroForMultiDw => "last-be-zero-for-multi-dw",
            Rule::NonContiguousBe => "non-contiguous-be",
            Rule::IoCfgLengthNot1 => "io-cfg-length-not-1",
            Rule::IoCfgTcNot0 => "io-cfg-tc-not-0",
            Rule::IoCfgAttrNot0 => "io-cfg-attr-not-0",
            Rule::IoCfgLnThAtNot0 => "io-cfg-ln-th-at-not-0",
            Rule::PhWithoutTh => "ph-without-th",
            Rule::ReservedCplStatus => "reserved-cpl-status",
            Rule::CrsWithData => "crs-with-data",
            Rule::IoCfgCplByteCount => "io-cfg-cpl-byte-count",
            Rule::CplLengthExceedsByteCount => "cpl-length-exceeds-byte-count",
            Rule::MessageRequiresTc0 => "message-requires-tc0",
            Rule::MessageRouting => "message-routing",
            Rule::MessageData => "message-data",
            Rule::AtomicOperandSize => "atomic-operand-size",
            Rule::AtomicAddressMisaligned => "atomic-address-misaligned",
            Rule::ReservedAddressType => "reserved-address-type",
            Rule::PrefixReservedType => "prefix-reserved-type",
            Rule::LocalPrefixAfterEndEnd => "local-prefix-after-end-end",
            Rule::TooManyEndEndPrefixes => "too-many-end-end-prefixes",
            Rule::ExtTphPrefixWithoutTh => "ext-tph-prefix-without-th",
        }
    }

    /// Where the rule is in the PCIe Base Specification (r6.x section numbers, unchanged since
    /// r4.0 for these).
    pub const fn spec_section(&self) -> &'static str {
        match self {
            Rule::FieldOutOfRange => "§2.2.1",
            Rule::LengthPayloadMismatch => "§2.2.2",
            Rule::LengthReservedNonzero => "§2.2.1.1",
            Rule::PayloadExceedsMps => "§2.2.2",
            Rule::ReadRequestExceedsMrrs => "§2.2.7",
            Rule::Crosses4kBoundary => "§2.2.7",
            Rule::FourDwAddressBelow4G | Rule::ThreeDwAddressAbove4G | Rule::ReservedAddressType => {
                "§2.2.4.1"
            }
            Rule::LastBeNonzeroForLength1
            | Rule::FirstBeZeroForMultiDw
            | Rule::LastBeZeroForMultiDw
            | Rule::NonContiguousBe => "§2.2.5",
            Rule::IoCfgLengthNot1 | Rule::IoCfgTcNot0 | Rule::IoCfgAttrNot0 | Rule::IoCfgLnThAtNot0 => {
                "§2.2.7"
            }
            Rule::PhWithoutTh => "§2.2.7.1",
            Rule::ReservedCplStatus
            | Rule::CrsWithData
            | Rule::IoCfgCplByteCount
            | Rule::CplLengthExceedsByteCount => "§2.2.9",
            Rule::MessageRequiresTc0 | Rule::MessageRouting | Rule::MessageData => "§2.2.8",
            Rule::AtomicOperandSize | Rule::AtomicAddressMisaligned => "§2.2.7, §6.15",
            Rule::PrefixReservedType
            | Rule::LocalPrefixAfterEndEnd
            | Rule::TooManyEndEndPrefixes
            | Rule::ExtTphPrefixWithoutTh => "§2.2.10",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.spec_section())
    }
}

/// How a message code must be sent: the routings it may use and whether it carries data.
struct MessageShape {
    routings: &'static [MsgRouting],
    /// `Some(n)`: exactly n DW of data (0 = Msg without data); `None`: either.
    data_dw: Option<u16>,
}

fn message_shape(code: MessageCode) -> Option<MessageShape> {
    use MsgRouting::*;
    let (routings, data_dw): (&'static [MsgRouting], Option<u16>) = match code.0 {
        0x00 => (&[Broadcast], Some(0)),                   // Unlock
        0x01 => (&[ById], Some(2)),                        // Invalidate Request (ATS)
        0x02 => (&[ById], Some(0)),                        // Invalidate Completion
        0x04 => (&[ToRootComplex], Some(0)),               // Page Request
        0x05 => (&[ById], Some(0)),                        // PRG Response
        0x10 => (&[ToRootComplex], Some(0)),               // LTR
        0x12 => (&[Broadcast], Some(0)),                   // OBFF
        0x14 => (&[Local], Some(0)),                       // PM_Active_State_Nak
        0x18 => (&[ToRootComplex], Some(0)),               // PM_PME
        0x19 => (&[Broadcast], Some(0)),                   // PME_Turn_Off
        0x1b => (&[Gather], Some(0)),                      // PME_TO_Ack
        0x20..=0x27 => (&[Local], Some(0)),                // Assert/Deassert_INTx
        0x30 | 0x31 | 0x33 => (&[ToRootComplex], Some(0)), // ERR_*
        0x50 => (&[Local], Some(1)),                       // Set_Slot_Power_Limit
        0x52 => (&[Local], Some(0)),                       // PTM Request
        0x53 => (&[Local], None),                          // PTM Response / ResponseD
        _ => return None,
    };
    Some(MessageShape { routings, data_dw })
}

fn requires_tc0(code: MessageCode) -> bool {
    code.is_intx()
        || code.is_power_management()
        || code.is_error_signaling()
        || code == MessageCode::UNLOCK
        || code == MessageCode::SET_SLOT_POWER_LIMIT
}

fn is_contiguous_first_be(be: u8) -> bool {
    matches!(be, 0b1111 | 0b1110 | 0b1100 | 0b1000)
}

fn is_contiguous_last_be(be: u8) -> bool {
    matches!(be, 0b0001 | 0b0011 | 0b0111 | 0b1111)
}

/// Collects violations.
struct Report(Vec<Violation>);

impl Report {
    fn fail(&mut self, rule: Rule, detail: String) {
        self.0.push(Violation { rule, detail });
    }
    fn check(&mut self, ok: bool, rule: Rule, detail: impl FnOnce() -> String) {
        if !ok {
            self.fail(rule, detail());
        }
    }
}

impl Tlp {
    /// Checks the spec's semantic rules; `Limits::default()` checks only the unconditional ones.
    /// Returns the first violation found (see [`Tlp::violations`] for all).
    pub fn validate(&self, limits: &Limits) -> Result<(), crate::validate::Violation> {
        match self.violations(limits).into_iter().next() {
            Some(v) => Err(v),
            None => Ok(()),
        }
    }

    /// Every rule violation, in [`Rule::ALL`] order per family. Empty for a valid TLP (and then
    /// allocation-free).
    pub fn violations(&self, limits: &Limits) -> Vec<Violation> {
        let mut r = Report(Vec::new());
        self.check_common(&mut r, limits);
        match &self.body {
            Body::Memory(_) | Body::Atomic(_) => self.check_address_request(&mut r, limits),
            Body::Io(_) | Body::Config(_) => self.check_io_cfg(&mut r),
            Body::Completion(_) => self.check_completion(&mut r),
            Body::Message(_) => self.check_message(&mut r),
        }
        self.check_address_type(&mut r);
        self.check_prefixes(&mut r);
        r.0
    }

    fn check_common(&self, r: &mut Report, limits: &Limits) {
        let name = self.kind_name();
        r.check(self.tc <= 7, Rule::FieldOutOfRange, || format!("TC {} > 7", self.tc));
        r.check(self.at <= 3, Rule::FieldOutOfRange, || format!("AT {} > 3", self.at));
        r.check(self.length <= 0x3ff, Rule::FieldOutOfRange, || {
            format!("Length field {:#x} wider than 10 bits", self.length)
        });
        if let Some(tag) = self.tag() {
            r.check(tag <= 0x3ff, Rule::FieldOutOfRange, || format!("tag {tag:#x} wider than 10 bits"));
        }
        for (i, p) in self.prefixes.iter().enumerate() {
            r.check(p.0 >> 29 == 0b100, Rule::FieldOutOfRange, || {
                format!("prefix {i} = {:#010x} does not have Fmt 100b", p.0)
            });
        }

        let length_bytes = usize::from(self.length_dw()) * 4;
        let payload = self.payload.len();
        if self.has_data() {
            r.check(payload == length_bytes, Rule::LengthPayloadMismatch, || {
                format!(
                    "{name} Length {} ({} DW = {length_bytes} bytes) but the payload has {payload} bytes",
                    self.length,
                    self.length_dw()
                )
            });
            if let Some(mps) = limits.max_payload_size {
                r.check(payload <= usize::from(mps), Rule::PayloadExceedsMps, || {
                    format!("{name} payload {payload} bytes > Max_Payload_Size {mps}")
                });
            }
        } else {
            r.check(payload == 0, Rule::LengthPayloadMismatch, || {
                format!("{name} carries no data but the payload has {payload} bytes")
            });
            if matches!(self.body, Body::Completion(_) | Body::Message(_)) {
                r.check(self.length == 0, Rule::LengthReservedNonzero, || {
                    format!("{name} without data has Length {} (reserved, must be 0)", self.length)
                });
            }
        }
    }

    /// Memory and AtomicOp requests.
    fn check_address_request(&self, r: &mut Report, limits: &Limits) {
        let name = self.kind_name();
        let (address, addr64, ph, first_be, last_be, be_meaningful) = match &self.body {
            Body::Memory(m) => {
                // MRd with TH set carries ST[7:0] in the byte-enable fields.
                let be_meaningful = !(self.th && m.op != MemOp::Write);
                (m.address, m.addr64, m.ph, m.first_be, m.last_be, be_meaningful)
            }
            // AtomicOp byte enables are reserved (or ST[7:0] with TH).
            Body::Atomic(a) => (a.address, a.addr64, a.ph, a.first_be, a.last_be, false),
            _ => return,
        };
        r.check(address & 0x3 == 0, Rule::FieldOutOfRange, || {
            format!("address {address:#x} has bits 1:0 set (those bits are PH on the wire)")
        });
        r.check(ph <= 3, Rule::FieldOutOfRange, || format!("PH {ph} > 3"));
        r.check(first_be <= 0xf && last_be <= 0xf, Rule::FieldOutOfRange, || {
            format!("byte enables {first_be:#x}/{last_be:#x} wider than 4 bits")
        });
        r.check(!(addr64 && address < 1 << 32), Rule::FourDwAddressBelow4G, || {
            format!("{name} uses a 4DW header for address {address:#x} below 4 GiB")
        });
        r.check(addr64 || address < 1 << 32, Rule::ThreeDwAddressAbove4G, || {
            format!("{name} uses a 3DW header for address {address:#x} at or above 4 GiB")
        });
        r.check(ph == 0 || self.th, Rule::PhWithoutTh, || format!("{name} has PH {ph} with TH 0"));

        let length_dw = u64::from(self.length_dw());
        if let Body::Memory(m) = &self.body {
            let last = address.wrapping_add(length_dw * 4 - 1);
            r.check(address >> 12 == last >> 12, Rule::Crosses4kBoundary, || {
                format!(
                    "{name} address {address:#x} + {} bytes ends at {last:#x}, past the 4 KiB boundary {:#x}",
                    length_dw * 4,
                    (address | 0xfff).wrapping_add(1)
                )
            });
            if m.op != MemOp::Write {
                if let Some(mrrs) = limits.max_read_request_size {
                    r.check(length_dw * 4 <= u64::from(mrrs), Rule::ReadRequestExceedsMrrs, || {
                        format!(
                            "{name} Length {length_dw} DW = {} bytes > Max_Read_Request_Size {mrrs}",
                            length_dw * 4
                        )
                    });
                }
            }
            if be_meaningful {
                self.check_byte_enables(r, first_be, last_be, address % 8 == 0, true);
            }
        }

        if let Body::Atomic(a) = &self.body {
            let payload = self.payload.len();
            let (sizes, operand): (&[usize], usize) = match a.op {
                AtomicOp::FetchAdd | AtomicOp::Swap => (&[4, 8], payload),
                AtomicOp::Cas => (&[8, 16, 32], payload / 2),
            };
            if sizes.contains(&payload) {
                r.check(address % operand as u64 == 0, Rule::AtomicAddressMisaligned, || {
                    format!("{name} address {address:#x} is not aligned to its {operand}-byte operand")
                });
            } else {
                r.fail(
                    Rule::AtomicOperandSize,
                    format!("{name} payload is {payload} bytes; allowed sizes are {sizes:?}"),
                );
            }
        }
    }

    fn check_byte_enables(&self, r: &mut Report, first_be: u8, last_be: u8, qw_aligned: bool, memory: bool) {
        let name = self.kind_name();
        let length_dw = self.length_dw();
        if length_dw == 1 {
            r.check(last_be == 0, Rule::LastBeNonzeroForLength1, || {
                format!("{name} Length 1 with Last DW BE {last_be:#06b} (must be 0000b)")
            });
            return;
        }
        r.check(first_be != 0, Rule::FirstBeZeroForMultiDw, || {
            format!("{name} Length {length_dw} with First DW BE 0000b")
        });
        r.check(last_be != 0, Rule::LastBeZeroForMultiDw, || {
            format!("{name} Length {length_dw} with Last DW BE 0000b")
        });
        let exempt = memory && length_dw == 2 && qw_aligned;
        if !exempt && first_be != 0 && last_be != 0 {
            r.check(
                is_contiguous_first_be(first_be) && is_contiguous_last_be(last_be),
                Rule::NonContiguousBe,
                || {
                    format!(
                        "{name} Length {length_dw}{} with byte enables {first_be:#06b}/{last_be:#06b}: \
                         only Length 1 or QW-aligned Length 2 may be non-contiguous",
                        if length_dw == 2 { " not QW aligned" } else { "" }
                    )
                },
            );
        }
    }

    fn check_io_cfg(&self, r: &mut Report) {
        let name = self.kind_name();
        let (first_be, last_be) = match &self.body {
            Body::Io(io) => {
                r.check(io.address & 0x3 == 0, Rule::FieldOutOfRange, || {
                    format!("I/O address {:#x} has bits 1:0 set", io.address)
                });
                (io.first_be, io.last_be)
            }
            Body::Config(c) => {
                r.check(c.register & !0xffc == 0, Rule::FieldOutOfRange, || {
                    format!("config register {:#x} is not a DW offset below 0x1000", c.register)
                });
                (c.first_be, c.last_be)
            }
            _ => return,
        };
        r.check(first_be <= 0xf && last_be <= 0xf, Rule::FieldOutOfRange, || {
            format!("byte enables {first_be:#x}/{last_be:#x} wider than 4 bits")
        });
        r.check(self.length_dw() == 1, Rule::IoCfgLengthNot1, || {
            format!("{name} Length {} (must be 1)", self.length_dw())
        });
        r.check(self.tc == 0, Rule::IoCfgTcNot0, || format!("{name} TC {} (must be 0)", self.tc));
        r.check(self.attr.is_default(), Rule::IoCfgAttrNot0, || {
            let a = self.attr;
            format!(
                "{name} Attr RO={} NS={} IDO={} (must all be 0)",
                u8::from(a.relaxed_ordering),
                u8::from(a.no_snoop),
                u8::from(a.id_based_ordering)
            )
        });
        r.check(!self.ln && !self.th && self.at == 0, Rule::IoCfgLnThAtNot0, || {
            format!("{name} LN {} TH {} AT {} (must be 0)", u8::from(self.ln), u8::from(self.th), self.at)
        });
        self.check_byte_enables(r, first_be, last_be, false, false);
    }

    fn check_completion(&self, r: &mut Report) {
        let Body::Completion(c) = &self.body else { return };
        let name = self.kind_name();
        r.check(c.lower_address <= 0x7f, Rule::FieldOutOfRange, || {
            format!("Lower Address {:#x} wider than 7 bits", c.lower_address)
        });
        r.check((1..=4096).contains(&c.byte_count), Rule::FieldOutOfRange, || {
            format!("Byte Count {} outside 1..=4096", c.byte_count)
        });
        if let CplStatus::Reserved(bits) = c.status {
            if CplStatus::from_bits(bits) == c.status {
                r.fail(Rule::ReservedCplStatus, format!("{name} status {bits:#05b} is reserved"));
            } else {
                r.fail(
                    Rule::FieldOutOfRange,
                    format!("CplStatus::Reserved({bits}) is not a reserved encoding"),
                );
            }
        }
        let payload = self.payload.len();
        r.check(!(c.status == CplStatus::Crs && payload != 0), Rule::CrsWithData, || {
            format!("{name} with status CRS carries {payload} bytes of data")
        });
        if payload == 0 {
            if matches!(c.status, CplStatus::Sc | CplStatus::Crs) {
                r.check(c.byte_count == 4 && c.lower_address == 0, Rule::IoCfgCplByteCount, || {
                    format!(
                        "{name} {} without data (an I/O or config completion) has Byte Count {} and \
                         Lower Address {:#x} (must be 4 and 0)",
                        c.status.name(),
                        c.byte_count,
                        c.lower_address
                    )
                });
            }
        } else {
            let first_offset = u32::from(c.lower_address & 0x3);
            let remaining = (first_offset + u32::from(c.byte_count)).div_ceil(4) * 4;
            r.check(payload as u32 <= remaining, Rule::CplLengthExceedsByteCount, || {
                format!(
                    "{name} carries {payload} bytes but Lower Address {:#x} and Byte Count {} leave {remaining} \
                     (DW-rounded) to return",
                    c.lower_address, c.byte_count
                )
            });
        }
    }

    fn check_message(&self, r: &mut Report) {
        let Body::Message(m) = &self.body else { return };
        let code_name = m.code.name().unwrap_or("unknown message");
        let kind = self.kind_name();
        if requires_tc0(m.code) {
            r.check(self.tc == 0, Rule::MessageRequiresTc0, || {
                format!("{code_name} (code {:#04x}) sent with TC {} (must be TC0)", m.code.0, self.tc)
            });
        }
        let Some(shape) = message_shape(m.code) else { return };
        r.check(shape.routings.contains(&m.routing), Rule::MessageRouting, || {
            let allowed: Vec<&str> = shape.routings.iter().map(|r| r.name()).collect();
            format!("{code_name} routed {} (must be {})", m.routing.name(), allowed.join(" or "))
        });
        if let Some(dw) = shape.data_dw {
            let payload_dw = self.payload.len() / 4;
            r.check(payload_dw == usize::from(dw) && self.payload.len() % 4 == 0, Rule::MessageData, || {
                if dw == 0 {
                    format!(
                        "{code_name} is a Msg without data but is sent as {kind} with {} bytes",
                        self.payload.len()
                    )
                } else {
                    format!(
                        "{code_name} is a MsgD with {dw} DW of data but carries {} bytes",
                        self.payload.len()
                    )
                }
            });
        }
    }

    /// §2.2.4.1: AT encodings are 00b untranslated, 01b translation request, 10b translated, 11b
    /// reserved, for memory and AtomicOp requests; for all other TLPs the field is reserved.
    fn check_address_type(&self, r: &mut Report) {
        let name = self.kind_name();
        match &self.body {
            Body::Memory(_) | Body::Atomic(_) => {
                r.check(self.at != 0b11, Rule::ReservedAddressType, || {
                    format!("{name} AT 11b is a reserved encoding")
                });
            }
            Body::Completion(_) | Body::Message(_) => {
                r.check(self.at == 0, Rule::ReservedAddressType, || {
                    format!("{name} AT {:02b}b (reserved in completions and messages, must be 00b)", self.at)
                });
            }
            // AT is checked with LN and TH there (IoCfgLnThAtNot0).
            Body::Io(_) | Body::Config(_) => {}
        }
    }

    fn check_prefixes(&self, r: &mut Report) {
        let mut end_end = 0usize;
        let mut seen_end_end = false;
        for (i, p) in self.prefixes.iter().enumerate() {
            r.check(p.name().is_some(), Rule::PrefixReservedType, || {
                format!("prefix {i} = {:#010x} has reserved type {:#07b}", p.0, p.type_field())
            });
            if p.is_end_end() {
                seen_end_end = true;
                end_end += 1;
                if p.type_field() == 0b10000 {
                    r.check(self.th, Rule::ExtTphPrefixWithoutTh, || {
                        format!("prefix {i} is an Extended TPH prefix but TH is 0")
                    });
                }
            } else {
                r.check(!seen_end_end, Rule::LocalPrefixAfterEndEnd, || {
                    format!("prefix {i} = {:#010x} is Local but follows an End-End prefix", p.0)
                });
            }
        }
        r.check(end_end <= 4, Rule::TooManyEndEndPrefixes, || {
            format!("{end_end} End-End prefixes (at most 4)")
        });
    }
}

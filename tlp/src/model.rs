//! The high-level TLP representation (the `Repr` side, in smoltcp terms): plain fields, no bytes.
//!
//! `Tlp` holds everything that is on the wire in a non-flit TLP: prefixes, the header fields of one
//! of the six request/completion/message families, the data payload and the optional ECRC digest.
//! Parsing (`Tlp::parse`) and emitting (`Tlp::emit`) are exact inverses for every valid TLP, so
//! reserved bits that the spec gives meaning in some contexts (PH, message-specific header bytes)
//! are kept rather than dropped.

use core::fmt;

/// A PCI routing ID (Requester ID, Completer ID, config target): Bus[15:8] Device[7:3]
/// Function[2:0]. With ARI the function number is bits [7:0]; see [`RoutingId::ari_function`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoutingId(pub u16);

impl RoutingId {
    /// Builds an ID from bus, device (0..=31) and function (0..=7); excess bits are masked off.
    pub const fn new(bus: u8, device: u8, function: u8) -> Self {
        RoutingId(((bus as u16) << 8) | (((device & 0x1f) as u16) << 3) | ((function & 0x7) as u16))
    }
    pub const fn bus(self) -> u8 {
        (self.0 >> 8) as u8
    }
    pub const fn device(self) -> u8 {
        ((self.0 >> 3) & 0x1f) as u8
    }
    pub const fn function(self) -> u8 {
        (self.0 & 0x7) as u8
    }
    /// The 8-bit function number of an ARI device (device number is implied 0).
    pub const fn ari_function(self) -> u8 {
        self.0 as u8
    }
}

/// Fmt[2:0]: header size and whether data follows, or a TLP prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fmt {
    ThreeDwNoData = 0b000,
    FourDwNoData = 0b001,
    ThreeDwWithData = 0b010,
    FourDwWithData = 0b011,
    Prefix = 0b100,
}

/// Attribute bits: Attr[1] Relaxed Ordering, Attr[0] No Snoop (DW0 bits 13:12), Attr[2] ID-Based
/// Ordering (DW0 bit 18).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Attr {
    pub relaxed_ordering: bool,
    pub no_snoop: bool,
    pub id_based_ordering: bool,
}

/// Completion Status[2:0]. Values 3, 5, 6, 7 are reserved; they are kept so that a capture of a
/// misbehaving completer round-trips, and validation reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CplStatus {
    /// Successful Completion (000b).
    Sc,
    /// Unsupported Request (001b).
    Ur,
    /// Configuration Request Retry Status (010b), called RRS since r6.0.
    Crs,
    /// Completer Abort (100b).
    Ca,
    /// A reserved encoding (3, 5, 6 or 7).
    Reserved(u8),
}

/// Message routing, r[2:0] of the Msg/MsgD Type field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MsgRouting {
    /// 000b Routed to Root Complex.
    ToRootComplex = 0,
    /// 001b Routed by Address.
    ByAddress = 1,
    /// 010b Routed by ID.
    ById = 2,
    /// 011b Broadcast from Root Complex.
    Broadcast = 3,
    /// 100b Local – Terminate at Receiver (INTx, for example).
    Local = 4,
    /// 101b Gathered and routed to Root Complex (PME_TO_Ack).
    Gather = 5,
}

/// A message code (DW1 byte 3 of a Msg/MsgD). Names are in [`MessageCode::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MessageCode(pub u8);

impl MessageCode {
    pub const UNLOCK: Self = Self(0x00);
    pub const INVALIDATE_REQUEST: Self = Self(0x01);
    pub const INVALIDATE_COMPLETION: Self = Self(0x02);
    pub const PAGE_REQUEST: Self = Self(0x04);
    pub const PRG_RESPONSE: Self = Self(0x05);
    pub const LTR: Self = Self(0x10);
    pub const OBFF: Self = Self(0x12);
    pub const PM_ACTIVE_STATE_NAK: Self = Self(0x14);
    pub const PM_PME: Self = Self(0x18);
    pub const PME_TURN_OFF: Self = Self(0x19);
    pub const PME_TO_ACK: Self = Self(0x1b);
    pub const ASSERT_INTA: Self = Self(0x20);
    pub const ASSERT_INTB: Self = Self(0x21);
    pub const ASSERT_INTC: Self = Self(0x22);
    pub const ASSERT_INTD: Self = Self(0x23);
    pub const DEASSERT_INTA: Self = Self(0x24);
    pub const DEASSERT_INTB: Self = Self(0x25);
    pub const DEASSERT_INTC: Self = Self(0x26);
    pub const DEASSERT_INTD: Self = Self(0x27);
    pub const ERR_COR: Self = Self(0x30);
    pub const ERR_NONFATAL: Self = Self(0x31);
    pub const ERR_FATAL: Self = Self(0x33);
    pub const SET_SLOT_POWER_LIMIT: Self = Self(0x50);
    pub const PTM_REQUEST: Self = Self(0x52);
    pub const PTM_RESPONSE: Self = Self(0x53);
    pub const VENDOR_DEFINED_TYPE0: Self = Self(0x7e);
    pub const VENDOR_DEFINED_TYPE1: Self = Self(0x7f);
}

/// Memory request operation: MRd, MRdLk or MWr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemOp {
    Read,
    ReadLocked,
    Write,
}

/// AtomicOp request operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AtomicOp {
    FetchAdd,
    Swap,
    Cas,
}

/// Configuration request type: Type 0 (to the function on this link) or Type 1 (to be forwarded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CfgType {
    Type0,
    Type1,
}

/// MRd, MRdLk, MWr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MemRequest {
    pub op: MemOp,
    pub requester: RoutingId,
    /// 10-bit tag: T9 and T8 live in DW0, Tag[7:0] in DW1.
    pub tag: u16,
    pub first_be: u8,
    pub last_be: u8,
    /// Byte address of the first DW; bits [1:0] are always 0 here (see `ph`).
    pub address: u64,
    /// Bits [1:0] of the last address DW: the Processing Hint when TH is set, else reserved (0).
    pub ph: u8,
    /// True for the 4DW (64-bit address) header. Must be true only for addresses >= 4 GiB.
    pub addr64: bool,
}

/// IORd, IOWr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IoRequest {
    pub write: bool,
    pub requester: RoutingId,
    pub tag: u16,
    pub first_be: u8,
    pub last_be: u8,
    /// Byte address of the DW; bits [1:0] are 0.
    pub address: u32,
}

/// CfgRd0, CfgWr0, CfgRd1, CfgWr1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConfigRequest {
    pub cfg_type: CfgType,
    pub write: bool,
    pub requester: RoutingId,
    pub tag: u16,
    pub first_be: u8,
    pub last_be: u8,
    /// Bus, device and function the request targets.
    pub target: RoutingId,
    /// Byte offset of the register: Extended Register Number[3:0] << 8 | Register Number[5:0] << 2.
    pub register: u16,
}

/// Cpl, CplD, CplLk, CplDLk. Whether data follows is whether the TLP's payload is non-empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Completion {
    /// CplLk / CplDLk (completion for a locked read).
    pub locked: bool,
    pub completer: RoutingId,
    pub status: CplStatus,
    /// Byte Count Modified (PCI-X completers only).
    pub bcm: bool,
    /// Remaining byte count, 1..=4096 (the wire value 0 means 4096).
    pub byte_count: u16,
    pub requester: RoutingId,
    pub tag: u16,
    /// Lower Address[6:0].
    pub lower_address: u8,
}

/// Msg, MsgD. Bytes 8..16 of the header depend on the routing and the code: the address for
/// routing by address, the target ID in bytes 8..10 for routing by ID and vendor-defined messages,
/// the vendor ID in bytes 10..12 for vendor-defined messages, and so on. They are kept raw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Message {
    pub routing: MsgRouting,
    pub requester: RoutingId,
    pub tag: u16,
    pub code: MessageCode,
    /// Header bytes 8..16 in wire order.
    pub fields: [u8; 8],
}

/// FetchAdd, Swap, CAS (always with data: 4 or 8 bytes of operand, 8 or 16 for CAS... up to 32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AtomicRequest {
    pub op: AtomicOp,
    pub requester: RoutingId,
    pub tag: u16,
    pub first_be: u8,
    pub last_be: u8,
    pub address: u64,
    pub ph: u8,
    pub addr64: bool,
}

/// The family-specific part of the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Body {
    Memory(MemRequest),
    Io(IoRequest),
    Config(ConfigRequest),
    Completion(Completion),
    Message(Message),
    Atomic(AtomicRequest),
}

/// A TLP prefix DW as on the wire (byte 0 = Fmt 100b + Type). Bit 4 of the type distinguishes
/// End-End (1) from Local (0) prefixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prefix(pub u32);

/// A whole TLP.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tlp {
    pub prefixes: Vec<Prefix>,
    /// Traffic Class, 0..=7.
    pub tc: u8,
    pub attr: Attr,
    /// Lightweight Notification (DW0 bit 17).
    pub ln: bool,
    /// TLP Processing Hints present (DW0 bit 16).
    pub th: bool,
    /// Error Poisoned.
    pub ep: bool,
    /// Address Type, 0..=3.
    pub at: u8,
    /// The raw 10-bit Length field (0 means 1024 DW where Length is meaningful). See
    /// [`Tlp::length_dw`].
    pub length: u16,
    pub body: Body,
    /// Data payload, a whole number of DWs, exactly as on the wire (bytes outside the byte enables
    /// included).
    pub payload: Vec<u8>,
    /// ECRC digest; TD is set exactly when this is present.
    pub digest: Option<u32>,
}

impl Tlp {
    /// Length in DW as the spec defines it: the raw field, with 0 meaning 1024.
    pub fn length_dw(&self) -> u16 {
        if self.length == 0 { 1024 } else { self.length }
    }
}

impl fmt::Display for RoutingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{:x}", self.bus(), self.device(), self.function())
    }
}

impl Fmt {
    /// The 3-bit Fmt field value.
    pub const fn bits(self) -> u8 {
        self as u8
    }
    /// Decodes Fmt[2:0]; `None` for the reserved encodings 101b, 110b, 111b.
    pub const fn from_bits(bits: u8) -> Option<Self> {
        match bits & 0x7 {
            0b000 => Some(Fmt::ThreeDwNoData),
            0b001 => Some(Fmt::FourDwNoData),
            0b010 => Some(Fmt::ThreeDwWithData),
            0b011 => Some(Fmt::FourDwWithData),
            0b100 => Some(Fmt::Prefix),
            _ => None,
        }
    }
    /// True for the 4DW header formats.
    pub const fn is_four_dw(self) -> bool {
        matches!(self, Fmt::FourDwNoData | Fmt::FourDwWithData)
    }
    /// True when a data payload follows the header.
    pub const fn has_data(self) -> bool {
        matches!(self, Fmt::ThreeDwWithData | Fmt::FourDwWithData)
    }
    /// The header format for a header size and data presence.
    pub const fn for_header(four_dw: bool, data: bool) -> Self {
        match (four_dw, data) {
            (false, false) => Fmt::ThreeDwNoData,
            (true, false) => Fmt::FourDwNoData,
            (false, true) => Fmt::ThreeDwWithData,
            (true, true) => Fmt::FourDwWithData,
        }
    }
}

impl Attr {
    /// True when no attribute bit is set (the default ordering, snooped).
    pub const fn is_default(self) -> bool {
        !self.relaxed_ordering && !self.no_snoop && !self.id_based_ordering
    }
}

impl CplStatus {
    /// Decodes Completion Status[2:0] (only the low three bits of `bits` are used).
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 0x7 {
            0b000 => CplStatus::Sc,
            0b001 => CplStatus::Ur,
            0b010 => CplStatus::Crs,
            0b100 => CplStatus::Ca,
            other => CplStatus::Reserved(other),
        }
    }
    /// The 3-bit field value.
    pub const fn bits(self) -> u8 {
        match self {
            CplStatus::Sc => 0b000,
            CplStatus::Ur => 0b001,
            CplStatus::Crs => 0b010,
            CplStatus::Ca => 0b100,
            CplStatus::Reserved(bits) => bits & 0x7,
        }
    }
    /// "SC", "UR", "CRS", "CA", or "Reserved(n)" for a reserved encoding.
    pub const fn name(self) -> &'static str {
        match self {
            CplStatus::Sc => "SC",
            CplStatus::Ur => "UR",
            CplStatus::Crs => "CRS",
            CplStatus::Ca => "CA",
            CplStatus::Reserved(bits) => match bits & 0x7 {
                0 => "Reserved(0)",
                1 => "Reserved(1)",
                2 => "Reserved(2)",
                3 => "Reserved(3)",
                4 => "Reserved(4)",
                5 => "Reserved(5)",
                6 => "Reserved(6)",
                _ => "Reserved(7)",
            },
        }
    }
}

impl MsgRouting {
    /// Decodes r[2:0]; `None` for the reserved values 110b and 111b.
    pub const fn from_bits(bits: u8) -> Option<Self> {
        match bits & 0x7 {
            0 => Some(MsgRouting::ToRootComplex),
            1 => Some(MsgRouting::ByAddress),
            2 => Some(MsgRouting::ById),
            3 => Some(MsgRouting::Broadcast),
            4 => Some(MsgRouting::Local),
            5 => Some(MsgRouting::Gather),
            _ => None,
        }
    }
    /// The 3-bit r[2:0] value (Type = 10rrrb).
    pub const fn bits(self) -> u8 {
        self as u8
    }
    /// A short stable name: "to-rc", "by-addr", "by-id", "broadcast", "local", "gather".
    pub const fn name(self) -> &'static str {
        match self {
            MsgRouting::ToRootComplex => "to-rc",
            MsgRouting::ByAddress => "by-addr",
            MsgRouting::ById => "by-id",
            MsgRouting::Broadcast => "broadcast",
            MsgRouting::Local => "local",
            MsgRouting::Gather => "gather",
        }
    }
}

impl MessageCode {
    /// The spec's name of the message, `None` for codes the spec does not define.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x00 => "Unlock",
            0x01 => "Invalidate_Request",
            0x02 => "Invalidate_Completion",
            0x04 => "Page_Request",
            0x05 => "PRG_Response",
            0x10 => "LTR",
            0x12 => "OBFF",
            0x14 => "PM_Active_State_Nak",
            0x18 => "PM_PME",
            0x19 => "PME_Turn_Off",
            0x1b => "PME_TO_Ack",
            0x20 => "Assert_INTA",
            0x21 => "Assert_INTB",
            0x22 => "Assert_INTC",
            0x23 => "Assert_INTD",
            0x24 => "Deassert_INTA",
            0x25 => "Deassert_INTB",
            0x26 => "Deassert_INTC",
            0x27 => "Deassert_INTD",
            0x30 => "ERR_COR",
            0x31 => "ERR_NONFATAL",
            0x33 => "ERR_FATAL",
            0x50 => "Set_Slot_Power_Limit",
            0x52 => "PTM_Request",
            0x53 => "PTM_Response",
            0x7e => "Vendor_Defined_Type0",
            0x7f => "Vendor_Defined_Type1",
            _ => return None,
        })
    }
    /// Assert_INTx / Deassert_INTx (0x20..=0x27).
    pub const fn is_intx(self) -> bool {
        matches!(self.0, 0x20..=0x27)
    }
    /// Power-management messages: PM_Active_State_Nak, PM_PME, PME_Turn_Off, PME_TO_Ack.
    pub const fn is_power_management(self) -> bool {
        matches!(self.0, 0x14 | 0x18 | 0x19 | 0x1b)
    }
    /// ERR_COR, ERR_NONFATAL, ERR_FATAL.
    pub const fn is_error_signaling(self) -> bool {
        matches!(self.0, 0x30 | 0x31 | 0x33)
    }
    /// Vendor_Defined Type 0 or Type 1.
    pub const fn is_vendor_defined(self) -> bool {
        matches!(self.0, 0x7e | 0x7f)
    }
}

impl Prefix {
    /// The prefix Type field (byte 0 bits 4:0); bit 4 set means End-End.
    pub const fn type_field(self) -> u8 {
        ((self.0 >> 24) & 0x1f) as u8
    }
    /// True for an End-End prefix (Type[4] = 1), false for a Local one.
    pub const fn is_end_end(self) -> bool {
        self.type_field() & 0x10 != 0
    }
    /// The spec's name for the prefix type, `None` for a reserved type.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.type_field() {
            0b00000 => "MR-IOV",
            0b01110 => "VendPrefixL0",
            0b01111 => "VendPrefixL1",
            0b10000 => "ExtTPH",
            0b10001 => "PASID",
            0b11110 => "VendPrefixE0",
            0b11111 => "VendPrefixE1",
            _ => return None,
        })
    }
}

impl Tlp {
    /// The kind as the spec names it: "MRd", "MRdLk", "MWr", "IORd", "IOWr", "CfgRd0", "CfgWr0",
    /// "CfgRd1", "CfgWr1", "Cpl", "CplD", "CplLk", "CplDLk", "Msg", "MsgD", "FetchAdd", "Swap", "CAS".
    pub fn kind_name(&self) -> &'static str {
        match &self.body {
            Body::Memory(m) => match m.op {
                MemOp::Read => "MRd",
                MemOp::ReadLocked => "MRdLk",
                MemOp::Write => "MWr",
            },
            Body::Io(io) => {
                if io.write {
                    "IOWr"
                } else {
                    "IORd"
                }
            }
            Body::Config(c) => match (c.cfg_type, c.write) {
                (CfgType::Type0, false) => "CfgRd0",
                (CfgType::Type0, true) => "CfgWr0",
                (CfgType::Type1, false) => "CfgRd1",
                (CfgType::Type1, true) => "CfgWr1",
            },
            Body::Completion(c) => match (c.locked, self.payload.is_empty()) {
                (false, true) => "Cpl",
                (false, false) => "CplD",
                (true, true) => "CplLk",
                (true, false) => "CplDLk",
            },
            Body::Message(_) => {
                if self.payload.is_empty() {
                    "Msg"
                } else {
                    "MsgD"
                }
            }
            Body::Atomic(a) => match a.op {
                AtomicOp::FetchAdd => "FetchAdd",
                AtomicOp::Swap => "Swap",
                AtomicOp::Cas => "CAS",
            },
        }
    }

    /// True when the header is the 4DW form (64-bit address, or any message).
    pub fn is_four_dw(&self) -> bool {
        match &self.body {
            Body::Memory(m) => m.addr64,
            Body::Atomic(a) => a.addr64,
            Body::Message(_) => true,
            Body::Io(_) | Body::Config(_) | Body::Completion(_) => false,
        }
    }

    /// True when a data payload follows the header (Fmt[1]).
    pub fn has_data(&self) -> bool {
        match &self.body {
            Body::Memory(m) => m.op == MemOp::Write,
            Body::Io(io) => io.write,
            Body::Config(c) => c.write,
            Body::Completion(_) | Body::Message(_) => !self.payload.is_empty(),
            Body::Atomic(_) => true,
        }
    }

    /// The header's Fmt field (never [`Fmt::Prefix`]; prefixes are in [`Tlp::prefixes`]).
    pub fn fmt(&self) -> Fmt {
        Fmt::for_header(self.is_four_dw(), self.has_data())
    }

    /// The 5-bit Type field.
    pub fn type_field(&self) -> u8 {
        match &self.body {
            Body::Memory(m) => match m.op {
                MemOp::Read | MemOp::Write => 0b0_0000,
                MemOp::ReadLocked => 0b0_0001,
            },
            Body::Io(_) => 0b0_0010,
            Body::Config(c) => match c.cfg_type {
                CfgType::Type0 => 0b0_0100,
                CfgType::Type1 => 0b0_0101,
            },
            Body::Completion(c) => {
                if c.locked {
                    0b0_1011
                } else {
                    0b0_1010
                }
            }
            Body::Message(m) => 0b1_0000 | m.routing.bits(),
            Body::Atomic(a) => match a.op {
                AtomicOp::FetchAdd => 0b0_1100,
                AtomicOp::Swap => 0b0_1101,
                AtomicOp::Cas => 0b0_1110,
            },
        }
    }

    /// Header size in bytes: 12 or 16.
    pub fn header_len(&self) -> usize {
        if self.is_four_dw() { 16 } else { 12 }
    }

    /// The 10-bit tag. Every TLP kind of this model carries one (a message's tag field is
    /// reserved by the spec but kept), so this is always `Some`; it stays an `Option` so a caller
    /// never assumes it for TLP forms that have none.
    pub fn tag(&self) -> Option<u16> {
        Some(match &self.body {
            Body::Memory(m) => m.tag,
            Body::Io(io) => io.tag,
            Body::Config(c) => c.tag,
            Body::Completion(c) => c.tag,
            Body::Message(m) => m.tag,
            Body::Atomic(a) => a.tag,
        })
    }

    /// The Requester ID: who sent the request, or for a completion, who it is returned to.
    pub fn requester(&self) -> RoutingId {
        match &self.body {
            Body::Memory(m) => m.requester,
            Body::Io(io) => io.requester,
            Body::Config(c) => c.requester,
            Body::Completion(c) => c.requester,
            Body::Message(m) => m.requester,
            Body::Atomic(a) => a.requester,
        }
    }
}

/// Accepted forms (hex digits, case-insensitive): `bb:dd.f` (bus, device 0..=1f, function 0..=7),
/// optionally with a leading PCI domain `dddd:` which must be 0, and the ARI form `bb.ff`
/// (bus, 8-bit function number).
impl core::str::FromStr for RoutingId {
    type Err = RoutingIdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &'static str| RoutingIdParseError { input: s.to_owned(), reason };
        let hex = |t: &str, max: u16, what: &'static str| -> Result<u16, RoutingIdParseError> {
            if t.is_empty() || t.len() > 4 {
                return Err(err(what));
            }
            match u16::from_str_radix(t, 16) {
                Ok(v) if v <= max => Ok(v),
                _ => Err(err(what)),
            }
        };
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            [ari] => {
                let (bus, func) = ari.split_once('.').ok_or_else(|| err("expected bb:dd.f or bb.ff"))?;
                let bus = hex(bus, 0xff, "bus must be hex 00..ff")?;
                let func = hex(func, 0xff, "ARI function must be hex 00..ff")?;
                Ok(RoutingId((bus << 8) | func))
            }
            [domain, bus, devfn] => {
                if hex(domain, 0xffff, "domain must be hex")? != 0 {
                    return Err(err("only PCI domain 0000 is addressable by a routing ID"));
                }
                parse_bdf(bus, devfn, &hex, &err)
            }
            [bus, devfn] => parse_bdf(bus, devfn, &hex, &err),
            _ => Err(err("expected bb:dd.f or bb.ff")),
        }
    }
}

fn parse_bdf(
    bus: &str,
    devfn: &str,
    hex: &dyn Fn(&str, u16, &'static str) -> Result<u16, RoutingIdParseError>,
    err: &dyn Fn(&'static str) -> RoutingIdParseError,
) -> Result<RoutingId, RoutingIdParseError> {
    let (dev, func) = devfn.split_once('.').ok_or_else(|| err("expected bb:dd.f"))?;
    let bus = hex(bus, 0xff, "bus must be hex 00..ff")?;
    let dev = hex(dev, 0x1f, "device must be hex 00..1f")?;
    let func = hex(func, 0x7, "function must be 0..7")?;
    Ok(RoutingId::new(bus as u8, dev as u8, func as u8))
}

/// A string that is not a routing ID; says which part was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid routing ID {input:?}: {reason}")]
pub struct RoutingIdParseError {
    pub input: String,
    pub reason: &'static str,
}

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

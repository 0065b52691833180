//! A typed zero-copy view over the bytes of one TLP, in the manner of smoltcp's `wire` module.
//!
//! [`Packet`] wraps any `T: AsRef<[u8]>` holding exactly one TLP as it is on the wire: optional
//! prefix DWs, the 3DW or 4DW header, the data payload and the optional ECRC digest. Every DW is
//! big-endian (byte 0 of a DW is bits 31:24). Getters read the fields in place; when
//! `T: AsMut<[u8]>`, setters write them. The layout is listed once, in the private `mod field`, in
//! the spec's own notation (DW n, bits hi:lo), so it can be checked line by line against the
//! figures of PCIe Base Spec §2.2.
//!
//! [`Packet::new_checked`] verifies that the buffer holds exactly the TLP its header describes
//! (prefixes followed by a header, a known Fmt/Type, header + Length × 4 + digest bytes), after
//! which every getter is safe to call. A [`Packet::new_unchecked`] view over a shorter buffer
//! panics in the getters that reach past its end, as smoltcp's views do; use it only on buffers
//! built locally (the emitter does).
//!
//! Which getters are meaningful depends on [`Packet::kind`]: `address` for memory, I/O and
//! AtomicOp requests, `cfg_*` for configuration requests, `completer_id`/`cpl_*` for completions,
//! `message_*` for messages. Reading another family's getter returns those header bits
//! reinterpreted; it never panics on a checked packet.

use core::fmt;

use crate::error::TlpError;
use crate::model::{AtomicOp, Attr, CfgType, CplStatus, Fmt, MessageCode, MsgRouting, Prefix, RoutingId};

/// The header layout. A bit field is `Bits { dw, hi, lo }`: bits `hi..=lo` of header DW `dw`,
/// counted the spec's way (bit 31 is the most significant bit of the DW's first byte).
mod field {
    #[derive(Clone, Copy)]
    pub struct Bits {
        pub dw: usize,
        pub hi: u32,
        pub lo: u32,
    }

    const fn bits(dw: usize, hi: u32, lo: u32) -> Bits {
        Bits { dw, hi, lo }
    }

    pub const DW_LEN: usize = 4;
    pub const HEADER_3DW_LEN: usize = 12;
    pub const HEADER_4DW_LEN: usize = 16;
    pub const DIGEST_LEN: usize = 4;

    // Prefix DW: Fmt[31:29] = 100b, Type[28:24]; bit 28 set = End-End.
    pub const PREFIX_FMT: u8 = 0b100;

    // DW0, common to every TLP.
    pub const FMT: Bits = bits(0, 31, 29);
    pub const TYPE: Bits = bits(0, 28, 24);
    pub const T9: Bits = bits(0, 23, 23);
    pub const TC: Bits = bits(0, 22, 20);
    pub const T8: Bits = bits(0, 19, 19);
    pub const ATTR2_IDO: Bits = bits(0, 18, 18);
    pub const LN: Bits = bits(0, 17, 17);
    pub const TH: Bits = bits(0, 16, 16);
    pub const TD: Bits = bits(0, 15, 15);
    pub const EP: Bits = bits(0, 14, 14);
    pub const ATTR1_RO: Bits = bits(0, 13, 13);
    pub const ATTR0_NS: Bits = bits(0, 12, 12);
    pub const AT: Bits = bits(0, 11, 10);
    pub const LENGTH: Bits = bits(0, 9, 0);

    // DW1 of requests (memory, I/O, config, message, AtomicOp).
    pub const REQUESTER_ID: Bits = bits(1, 31, 16);
    pub const TAG: Bits = bits(1, 15, 8);
    pub const LAST_BE: Bits = bits(1, 7, 4);
    pub const FIRST_BE: Bits = bits(1, 3, 0);
    /// Messages put the Message Code where requests have the byte enables.
    pub const MESSAGE_CODE: Bits = bits(1, 7, 0);

    // Address of memory, AtomicOp and I/O requests. 3DW: DW2; 4DW: DW2 = [63:32], DW3 = [31:2].
    // Bits 1:0 of the last address DW hold PH when TH is set (reserved otherwise; always for I/O).
    pub const ADDR_3DW: Bits = bits(2, 31, 2);
    pub const PH_3DW: Bits = bits(2, 1, 0);
    pub const ADDR_HI_4DW: Bits = bits(2, 31, 0);
    pub const ADDR_LO_4DW: Bits = bits(3, 31, 2);
    pub const PH_4DW: Bits = bits(3, 1, 0);

    // DW2 of configuration requests.
    pub const CFG_TARGET_ID: Bits = bits(2, 31, 16);
    pub const CFG_RESERVED_HI: Bits = bits(2, 15, 12);
    pub const CFG_EXT_REGISTER: Bits = bits(2, 11, 8);
    pub const CFG_REGISTER: Bits = bits(2, 7, 2);
    pub const CFG_RESERVED_LO: Bits = bits(2, 1, 0);

    // DW1 and DW2 of completions.
    pub const COMPLETER_ID: Bits = bits(1, 31, 16);
    pub const CPL_STATUS: Bits = bits(1, 15, 13);
    pub const BCM: Bits = bits(1, 12, 12);
    pub const BYTE_COUNT: Bits = bits(1, 11, 0);
    pub const CPL_REQUESTER_ID: Bits = bits(2, 31, 16);
    pub const CPL_TAG: Bits = bits(2, 15, 8);
    pub const CPL_RESERVED: Bits = bits(2, 7, 7);
    pub const LOWER_ADDRESS: Bits = bits(2, 6, 0);

    /// Header bytes 8..16 of a message (DW2 and DW3), kept raw.
    pub const MESSAGE_FIELDS: core::ops::Range<usize> = 8..16;
}

pub use field::{DIGEST_LEN, DW_LEN, HEADER_3DW_LEN, HEADER_4DW_LEN};

/// What a Fmt/Type pair names; `None` from [`Kind::classify`] means a reserved combination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    MemRead,
    MemReadLocked,
    MemWrite,
    IoRead,
    IoWrite,
    CfgRead(CfgType),
    CfgWrite(CfgType),
    /// Cpl or CplD (which one is Fmt's data bit).
    Completion,
    /// CplLk or CplDLk.
    CompletionLocked,
    /// Msg or MsgD.
    Message(MsgRouting),
    Atomic(AtomicOp),
}

impl Kind {
    /// Decodes Fmt[2:0] and Type[4:0] of a header DW0 (§2.2.1, Table "Fmt\[2:0\] and Type\[4:0\]
    /// Field Encodings"). TCfgRd/TCfgWr (deprecated) and every unlisted pair are reserved.
    pub const fn classify(fmt: u8, ty: u8) -> Option<Kind> {
        let four_dw = fmt & 0b001 != 0;
        let data = fmt & 0b010 != 0;
        if fmt & 0b100 != 0 {
            return None;
        }
        Some(match (ty & 0x1f, four_dw, data) {
            (0b0_0000, _, false) => Kind::MemRead,
            (0b0_0000, _, true) => Kind::MemWrite,
            (0b0_0001, _, false) => Kind::MemReadLocked,
            (0b0_0010, false, false) => Kind::IoRead,
            (0b0_0010, false, true) => Kind::IoWrite,
            (0b0_0100, false, false) => Kind::CfgRead(CfgType::Type0),
            (0b0_0100, false, true) => Kind::CfgWrite(CfgType::Type0),
            (0b0_0101, false, false) => Kind::CfgRead(CfgType::Type1),
            (0b0_0101, false, true) => Kind::CfgWrite(CfgType::Type1),
            (0b0_1010, false, _) => Kind::Completion,
            (0b0_1011, false, _) => Kind::CompletionLocked,
            (0b0_1100, _, true) => Kind::Atomic(AtomicOp::FetchAdd),
            (0b0_1101, _, true) => Kind::Atomic(AtomicOp::Swap),
            (0b0_1110, _, true) => Kind::Atomic(AtomicOp::Cas),
            (t, true, _) if t & 0b1_1000 == 0b1_0000 => match MsgRouting::from_bits(t & 0x7) {
                Some(routing) => Kind::Message(routing),
                None => return None,
            },
            _ => return None,
        })
    }

    /// True for Cpl/CplD/CplLk/CplDLk, whose tag and requester ID sit in DW2.
    pub const fn is_completion(self) -> bool {
        matches!(self, Kind::Completion | Kind::CompletionLocked)
    }
}

/// A read/write view over the bytes of one TLP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
    /// Offset of header DW0: 4 × the number of leading prefix DWs.
    header: usize,
}

#[inline]
fn read_dw(buf: &[u8], offset: usize) -> u32 {
    let mut dw = [0u8; 4];
    dw.copy_from_slice(&buf[offset..offset + field::DW_LEN]);
    u32::from_be_bytes(dw)
}

#[inline]
const fn mask(f: field::Bits) -> u32 {
    if f.hi - f.lo == 31 { u32::MAX } else { (1u32 << (f.hi - f.lo + 1)) - 1 }
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it. Leading DWs whose Fmt is 100b are taken as prefixes.
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        let bytes = buffer.as_ref();
        let mut header = 0;
        while let Some(&b0) = bytes.get(header) {
            if b0 >> 5 != field::PREFIX_FMT {
                break;
            }
            header += field::DW_LEN;
        }
        Packet { buffer, header }
    }

    /// Wraps a buffer after checking, with [`Packet::check_len`], that it holds exactly one TLP.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, TlpError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that a header follows the prefixes, that its Fmt/Type pair names a TLP kind, and
    /// that the buffer is exactly prefixes + header + payload (+ digest) long.
    pub fn check_len(&self) -> Result<(), TlpError> {
        let got = self.buffer.as_ref().len();
        if got < self.header + field::DW_LEN {
            return Err(TlpError::Truncated { needed: self.header + field::DW_LEN, got });
        }
        if self.kind().is_none() {
            return Err(TlpError::ReservedFmtType {
                fmt: self.fmt_bits(),
                ty: self.type_bits(),
                offset: self.header,
            });
        }
        check_total_len(self.header, self.header_len(), self.has_data(), self.length(), self.td(), got)
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// All bytes of the view (prefixes through digest).
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    #[inline]
    fn get(&self, f: field::Bits) -> u32 {
        (read_dw(self.buffer.as_ref(), self.header + f.dw * field::DW_LEN) >> f.lo) & mask(f)
    }

    #[inline]
    fn flag(&self, f: field::Bits) -> bool {
        self.get(f) != 0
    }

    /// Number of prefix DWs before the header.
    pub fn prefix_count(&self) -> usize {
        self.header / field::DW_LEN
    }

    /// Byte offset of header DW0.
    pub fn header_offset(&self) -> usize {
        self.header
    }

    /// Prefix DW `index`, if there is one.
    pub fn prefix(&self, index: usize) -> Option<Prefix> {
        if index < self.prefix_count() {
            Some(Prefix(read_dw(self.buffer.as_ref(), index * field::DW_LEN)))
        } else {
            None
        }
    }

    /// The raw Fmt[2:0].
    pub fn fmt_bits(&self) -> u8 {
        self.get(field::FMT) as u8
    }

    /// The decoded Fmt (`None` for a reserved encoding).
    pub fn fmt(&self) -> Option<Fmt> {
        Fmt::from_bits(self.fmt_bits())
    }

    /// The raw Type[4:0].
    pub fn type_bits(&self) -> u8 {
        self.get(field::TYPE) as u8
    }

    /// What the Fmt/Type pair names; `None` if reserved.
    pub fn kind(&self) -> Option<Kind> {
        Kind::classify(self.fmt_bits(), self.type_bits())
    }

    /// 12 or 16, from Fmt[0].
    pub fn header_len(&self) -> usize {
        if self.fmt_bits() & 0b001 != 0 { field::HEADER_4DW_LEN } else { field::HEADER_3DW_LEN }
    }

    /// Fmt[1]: a data payload follows the header.
    pub fn has_data(&self) -> bool {
        self.fmt_bits() & 0b010 != 0
    }

    pub fn tc(&self) -> u8 {
        self.get(field::TC) as u8
    }

    pub fn attr(&self) -> Attr {
        Attr {
            relaxed_ordering: self.flag(field::ATTR1_RO),
            no_snoop: self.flag(field::ATTR0_NS),
            id_based_ordering: self.flag(field::ATTR2_IDO),
        }
    }

    pub fn ln(&self) -> bool {
        self.flag(field::LN)
    }

    pub fn th(&self) -> bool {
        self.flag(field::TH)
    }

    /// TLP Digest present.
    pub fn td(&self) -> bool {
        self.flag(field::TD)
    }

    pub fn ep(&self) -> bool {
        self.flag(field::EP)
    }

    pub fn at(&self) -> u8 {
        self.get(field::AT) as u8
    }

    /// The raw 10-bit Length field.
    pub fn length(&self) -> u16 {
        self.get(field::LENGTH) as u16
    }

    /// Length in DW with 0 meaning 1024.
    pub fn length_dw(&self) -> u16 {
        length_dw(self.length())
    }

    fn is_completion(&self) -> bool {
        self.kind().is_some_and(Kind::is_completion)
    }

    /// The 10-bit tag: T9 (DW0 bit 23), T8 (DW0 bit 19), Tag[7:0] (DW1 of requests, DW2 of
    /// completions).
    pub fn tag(&self) -> u16 {
        let low = if self.is_completion() { self.get(field::CPL_TAG) } else { self.get(field::TAG) };
        ((self.get(field::T9) << 9) | (self.get(field::T8) << 8) | low) as u16
    }

    /// The Requester ID (DW1 of requests, DW2 of completions).
    pub fn requester_id(&self) -> RoutingId {
        let id = if self.is_completion() {
            self.get(field::CPL_REQUESTER_ID)
        } else {
            self.get(field::REQUESTER_ID)
        };
        RoutingId(id as u16)
    }

    pub fn first_be(&self) -> u8 {
        self.get(field::FIRST_BE) as u8
    }

    pub fn last_be(&self) -> u8 {
        self.get(field::LAST_BE) as u8
    }

    /// The byte address of a memory, I/O or AtomicOp request (bits 1:0 are 0).
    pub fn address(&self) -> u64 {
        if self.header_len() == field::HEADER_4DW_LEN {
            (u64::from(self.get(field::ADDR_HI_4DW)) << 32) | u64::from(self.get(field::ADDR_LO_4DW) << 2)
        } else {
            u64::from(self.get(field::ADDR_3DW) << 2)
        }
    }

    /// Bits 1:0 of the last address DW: PH when TH is set, else reserved.
    pub fn ph(&self) -> u8 {
        if self.header_len() == field::HEADER_4DW_LEN {
            self.get(field::PH_4DW) as u8
        } else {
            self.get(field::PH_3DW) as u8
        }
    }

    /// Bus/device/function a configuration request targets.
    pub fn cfg_target(&self) -> RoutingId {
        RoutingId(self.get(field::CFG_TARGET_ID) as u16)
    }

    /// Byte offset of the configuration register: Ext Register Number << 8 | Register Number << 2.
    pub fn cfg_register(&self) -> u16 {
        ((self.get(field::CFG_EXT_REGISTER) << 8) | (self.get(field::CFG_REGISTER) << 2)) as u16
    }

    /// DW2 bits 15:12 and 1:0 of a configuration request, reserved (both packed, hi << 2 | lo).
    pub fn cfg_reserved(&self) -> u8 {
        ((self.get(field::CFG_RESERVED_HI) << 2) | self.get(field::CFG_RESERVED_LO)) as u8
    }

    pub fn completer_id(&self) -> RoutingId {
        RoutingId(self.get(field::COMPLETER_ID) as u16)
    }

    pub fn cpl_status(&self) -> CplStatus {
        CplStatus::from_bits(self.get(field::CPL_STATUS) as u8)
    }

    pub fn bcm(&self) -> bool {
        self.flag(field::BCM)
    }

    /// The raw 12-bit Byte Count field.
    pub fn byte_count_field(&self) -> u16 {
        self.get(field::BYTE_COUNT) as u16
    }

    /// Byte Count with 0 meaning 4096.
    pub fn byte_count(&self) -> u16 {
        match self.byte_count_field() {
            0 => 4096,
            n => n,
        }
    }

    pub fn lower_address(&self) -> u8 {
        self.get(field::LOWER_ADDRESS) as u8
    }

    /// DW2 bit 7 of a completion, reserved.
    pub fn cpl_reserved(&self) -> bool {
        self.flag(field::CPL_RESERVED)
    }

    pub fn message_code(&self) -> MessageCode {
        MessageCode(self.get(field::MESSAGE_CODE) as u8)
    }

    /// Header bytes 8..16 of a message (messages always have a 4DW header; on a 3DW header of
    /// another kind this is bytes 8..12).
    pub fn message_fields(&self) -> &[u8] {
        let start = self.header + field::MESSAGE_FIELDS.start;
        let end = self.header + self.header_len().min(field::MESSAGE_FIELDS.end);
        &self.buffer.as_ref()[start..end]
    }

    fn payload_range(&self) -> core::ops::Range<usize> {
        let start = self.header + self.header_len();
        let len = if self.has_data() { usize::from(self.length_dw()) * field::DW_LEN } else { 0 };
        start..start + len
    }

    /// The data payload (empty for TLPs without data).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.payload_range()]
    }

    /// The ECRC digest, present when TD is set.
    pub fn digest(&self) -> Option<u32> {
        if self.td() { Some(read_dw(self.buffer.as_ref(), self.payload_range().end)) } else { None }
    }

    /// Total TLP length the header describes: prefixes + header + payload + digest.
    pub fn total_len(&self) -> usize {
        self.payload_range().end + if self.td() { field::DIGEST_LEN } else { 0 }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    fn set(&mut self, f: field::Bits, value: u32) {
        let offset = self.header + f.dw * field::DW_LEN;
        let buf = self.buffer.as_mut();
        let m = mask(f) << f.lo;
        let dw = (read_dw(buf, offset) & !m) | ((value << f.lo) & m);
        buf[offset..offset + field::DW_LEN].copy_from_slice(&dw.to_be_bytes());
    }

    /// Writes Fmt[2:0] and Type[4:0]. Write these first: where the tag and requester ID of
    /// later setters go depends on them.
    pub fn set_fmt_type(&mut self, fmt: Fmt, ty: u8) {
        self.set(field::FMT, u32::from(fmt.bits()));
        self.set(field::TYPE, u32::from(ty));
    }

    pub fn set_tc(&mut self, tc: u8) {
        self.set(field::TC, u32::from(tc));
    }

    pub fn set_attr(&mut self, attr: Attr) {
        self.set(field::ATTR1_RO, u32::from(attr.relaxed_ordering));
        self.set(field::ATTR0_NS, u32::from(attr.no_snoop));
        self.set(field::ATTR2_IDO, u32::from(attr.id_based_ordering));
    }

    pub fn set_ln(&mut self, ln: bool) {
        self.set(field::LN, u32::from(ln));
    }

    pub fn set_th(&mut self, th: bool) {
        self.set(field::TH, u32::from(th));
    }

    pub fn set_td(&mut self, td: bool) {
        self.set(field::TD, u32::from(td));
    }

    pub fn set_ep(&mut self, ep: bool) {
        self.set(field::EP, u32::from(ep));
    }

    pub fn set_at(&mut self, at: u8) {
        self.set(field::AT, u32::from(at));
    }

    /// Writes the raw Length field (only bits 9:0 of `length` are kept).
    pub fn set_length(&mut self, length: u16) {
        self.set(field::LENGTH, u32::from(length));
    }

    /// Writes the 10-bit tag (T9, T8 and Tag[7:0] where the kind puts it).
    pub fn set_tag(&mut self, tag: u16) {
        let tag = u32::from(tag);
        self.set(field::T9, tag >> 9);
        self.set(field::T8, tag >> 8);
        if self.is_completion() {
            self.set(field::CPL_TAG, tag);
        } else {
            self.set(field::TAG, tag);
        }
    }

    /// Writes the Requester ID (DW1 of requests, DW2 of completions).
    pub fn set_requester_id(&mut self, id: RoutingId) {
        if self.is_completion() {
            self.set(field::CPL_REQUESTER_ID, u32::from(id.0));
        } else {
            self.set(field::REQUESTER_ID, u32::from(id.0));
        }
    }

    pub fn set_first_be(&mut self, be: u8) {
        self.set(field::FIRST_BE, u32::from(be));
    }

    pub fn set_last_be(&mut self, be: u8) {
        self.set(field::LAST_BE, u32::from(be));
    }

    /// Writes the address for the header size Fmt gives (a 3DW header keeps bits 31:2 only).
    pub fn set_address(&mut self, address: u64) {
        if self.header_len() == field::HEADER_4DW_LEN {
            self.set(field::ADDR_HI_4DW, (address >> 32) as u32);
            self.set(field::ADDR_LO_4DW, (address as u32) >> 2);
        } else {
            self.set(field::ADDR_3DW, (address as u32) >> 2);
        }
    }

    pub fn set_ph(&mut self, ph: u8) {
        if self.header_len() == field::HEADER_4DW_LEN {
            self.set(field::PH_4DW, u32::from(ph));
        } else {
            self.set(field::PH_3DW, u32::from(ph));
        }
    }

    pub fn set_cfg_target(&mut self, target: RoutingId) {
        self.set(field::CFG_TARGET_ID, u32::from(target.0));
    }

    /// Writes Extended Register Number (bits 11:8) and Register Number (bits 7:2) of `register`.
    pub fn set_cfg_register(&mut self, register: u16) {
        self.set(field::CFG_EXT_REGISTER, u32::from(register >> 8));
        self.set(field::CFG_REGISTER, u32::from(register) >> 2);
    }

    pub fn set_completer_id(&mut self, id: RoutingId) {
        self.set(field::COMPLETER_ID, u32::from(id.0));
    }

    pub fn set_cpl_status(&mut self, status: CplStatus) {
        self.set(field::CPL_STATUS, u32::from(status.bits()));
    }

    pub fn set_bcm(&mut self, bcm: bool) {
        self.set(field::BCM, u32::from(bcm));
    }

    /// Writes Byte Count; 4096 is written as 0.
    pub fn set_byte_count(&mut self, byte_count: u16) {
        self.set(field::BYTE_COUNT, u32::from(byte_count));
    }

    pub fn set_lower_address(&mut self, lower_address: u8) {
        self.set(field::LOWER_ADDRESS, u32::from(lower_address));
    }

    pub fn set_message_code(&mut self, code: MessageCode) {
        self.set(field::MESSAGE_CODE, u32::from(code.0));
    }

    pub fn message_fields_mut(&mut self) -> &mut [u8] {
        let start = self.header;
        &mut self.buffer.as_mut()[start + field::MESSAGE_FIELDS.start..start + field::MESSAGE_FIELDS.end]
    }

    /// The data payload, sized by Fmt and Length (write those first).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.payload_range();
        &mut self.buffer.as_mut()[range]
    }

    /// Writes the digest DW after the payload (set TD and Length first).
    pub fn set_digest(&mut self, digest: u32) {
        let offset = self.payload_range().end;
        self.buffer.as_mut()[offset..offset + field::DIGEST_LEN].copy_from_slice(&digest.to_be_bytes());
    }
}

/// Header DW0 split into its fields, for the parser.
pub(crate) struct Dw0 {
    pub fmt: u8,
    pub ty: u8,
    pub tc: u8,
    pub attr2: bool,
    pub ln: bool,
    pub th: bool,
    pub td: bool,
    pub ep: bool,
    pub attr10: u8,
    pub at: u8,
    pub length: u16,
    /// T9 and T8 in place: bits 9 and 8 of the 10-bit tag.
    pub tag_high: u16,
}

impl Dw0 {
    pub(crate) const fn decode(dw: u32) -> Dw0 {
        const fn get(dw: u32, f: field::Bits) -> u32 {
            (dw >> f.lo) & mask(f)
        }
        Dw0 {
            fmt: get(dw, field::FMT) as u8,
            ty: get(dw, field::TYPE) as u8,
            tc: get(dw, field::TC) as u8,
            attr2: get(dw, field::ATTR2_IDO) != 0,
            ln: get(dw, field::LN) != 0,
            th: get(dw, field::TH) != 0,
            td: get(dw, field::TD) != 0,
            ep: get(dw, field::EP) != 0,
            attr10: ((get(dw, field::ATTR1_RO) << 1) | get(dw, field::ATTR0_NS)) as u8,
            at: get(dw, field::AT) as u8,
            length: get(dw, field::LENGTH) as u16,
            tag_high: ((get(dw, field::T9) << 9) | (get(dw, field::T8) << 8)) as u16,
        }
    }
    pub(crate) const fn four_dw(&self) -> bool {
        self.fmt & 0b001 != 0
    }
    pub(crate) const fn has_data(&self) -> bool {
        self.fmt & 0b010 != 0
    }
}

/// Length in DW with the raw field 0 meaning 1024.
pub(crate) const fn length_dw(length: u16) -> u16 {
    match length & 0x3ff {
        0 => 1024,
        n => n,
    }
}

/// The byte-count check shared by [`Packet::check_len`] and the parser.
pub(crate) fn check_total_len(
    header_offset: usize,
    header_len: usize,
    has_data: bool,
    length: u16,
    td: bool,
    got: usize,
) -> Result<(), TlpError> {
    let data_len = if has_data { usize::from(length_dw(length)) * field::DW_LEN } else { 0 };
    let digest_len = if td { field::DIGEST_LEN } else { 0 };
    let header_end = header_offset + header_len;
    let expected = header_end + data_len + digest_len;
    if got == expected {
        return Ok(());
    }
    if got < header_end {
        return Err(TlpError::Truncated { needed: header_end, got });
    }
    if has_data {
        return Err(TlpError::LengthMismatch {
            length_field: length,
            length_dw: length_dw(length),
            header_len,
            td,
            expected,
            got,
        });
    }
    if got < expected {
        Err(TlpError::Truncated { needed: expected, got })
    } else {
        Err(TlpError::TrailingBytes { expected, got })
    }
}

/// One-line summary of the TLP the bytes hold, or why they hold none.
impl<T: AsRef<[u8]>> fmt::Display for Packet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match crate::Tlp::parse(self.buffer.as_ref()) {
            Ok(tlp) => write!(f, "{tlp}"),
            Err(err) => write!(f, "malformed TLP ({} bytes): {err}", self.buffer.as_ref().len()),
        }
    }
}

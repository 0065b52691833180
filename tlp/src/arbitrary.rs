//! proptest strategies over every TLP kind, for property tests and fuzzers in this and other
//! crates (enable the `proptest` feature).
//!
//! - [`valid_tlp`]: TLPs that pass `validate(&Limits::default())` (every kind of
//!   [`KIND_NAMES`], 3DW and 4DW, 10-bit tags, prefixes, digests, payloads up to 128 bytes).
//! - [`valid_tlp_of`]: the same for one kind.
//! - [`any_tlp`]: TLPs whose fields fit their wire fields but that may break semantic rules (bad
//!   byte enables, 4 KiB crossing, reserved status, reserved Address Type, odd prefixes…); parse
//!   and emit are exact inverses on these too.
//!
//! Each TLP is built from a random seed, so shrinking reduces the seed, not the fields; failing
//! cases print the whole `Tlp`.

use proptest::prelude::*;

use crate::model::{
    AtomicOp, AtomicRequest, Attr, Body, CfgType, Completion, ConfigRequest, CplStatus, IoRequest, MemOp,
    MemRequest, Message, MessageCode, MsgRouting, Prefix, RoutingId, Tlp,
};

/// The kinds the strategies generate, by index.
pub const KIND_NAMES: [&str; 18] = [
    "MRd", "MRdLk", "MWr", "IORd", "IOWr", "CfgRd0", "CfgWr0", "CfgRd1", "CfgWr1", "Cpl", "CplD", "CplLk",
    "CplDLk", "Msg", "MsgD", "FetchAdd", "Swap", "CAS",
];

/// TLPs of every kind that pass `validate(&Limits::default())`.
pub fn valid_tlp() -> impl Strategy<Value = Tlp> {
    (0..KIND_NAMES.len(), any::<u64>()).prop_map(|(kind, seed)| build(kind, &mut Rng(seed), true))
}

/// Valid TLPs of the kind named as in [`KIND_NAMES`]; an unknown name gives every kind.
pub fn valid_tlp_of(kind_name: &str) -> impl Strategy<Value = Tlp> + use<> {
    let kinds: Vec<usize> = match KIND_NAMES.iter().position(|k| *k == kind_name) {
        Some(i) => vec![i],
        None => (0..KIND_NAMES.len()).collect(),
    };
    (proptest::sample::select(kinds), any::<u64>()).prop_map(|(kind, seed)| build(kind, &mut Rng(seed), true))
}

/// TLPs whose fields all fit their wire fields, valid or not.
pub fn any_tlp() -> impl Strategy<Value = Tlp> {
    (0..KIND_NAMES.len(), any::<u64>()).prop_map(|(kind, seed)| build(kind, &mut Rng(seed), false))
}

/// The wire bytes of a [`valid_tlp`].
pub fn valid_tlp_bytes() -> impl Strategy<Value = Vec<u8>> {
    valid_tlp().prop_map(|tlp| tlp.to_bytes())
}

/// splitmix64: a seed expands into as many fields as a TLP needs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bits(&mut self, width: u32) -> u64 {
        self.next() & ((1u64 << width) - 1)
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

const FIRST_BE_CONTIGUOUS: [u8; 4] = [0b1111, 0b1110, 0b1100, 0b1000];
const LAST_BE_CONTIGUOUS: [u8; 4] = [0b0001, 0b0011, 0b0111, 0b1111];

/// Payload length in DW for data TLPs: mostly small, sometimes the 1024-DW maximum (Length 0).
fn data_length_dw(rng: &mut Rng, valid: bool) -> u16 {
    if !valid && rng.chance(50) { 1024 } else { 1 + rng.below(32) as u16 }
}

fn length_field(length_dw: u16) -> u16 {
    length_dw & 0x3ff
}

fn build(kind: usize, rng: &mut Rng, valid: bool) -> Tlp {
    let mut tlp = Tlp {
        prefixes: Vec::new(),
        tc: rng.bits(3) as u8,
        attr: Attr {
            relaxed_ordering: rng.chance(2),
            no_snoop: rng.chance(2),
            id_based_ordering: rng.chance(2),
        },
        ln: rng.chance(8),
        th: rng.chance(8),
        ep: rng.chance(8),
        at: rng.bits(2) as u8,
        length: 0,
        body: Body::Message(Message {
            routing: MsgRouting::Local,
            requester: RoutingId(0),
            tag: 0,
            code: MessageCode(0),
            fields: [0; 8],
        }),
        payload: Vec::new(),
        digest: if rng.chance(4) { Some(rng.next() as u32) } else { None },
    };
    let requester = RoutingId(rng.next() as u16);
    let tag = rng.bits(10) as u16;
    match KIND_NAMES.get(kind).copied().unwrap_or("MRd") {
        name @ ("MRd" | "MRdLk" | "MWr") => {
            let op = match name {
                "MRd" => MemOp::Read,
                "MRdLk" => MemOp::ReadLocked,
                _ => MemOp::Write,
            };
            build_memory(&mut tlp, rng, valid, op, requester, tag);
        }
        name @ ("IORd" | "IOWr" | "CfgRd0" | "CfgWr0" | "CfgRd1" | "CfgWr1") => {
            let write = name.contains("Wr");
            let first_be = rng.bits(4) as u8;
            let last_be = if valid { 0 } else { rng.bits(4) as u8 };
            if valid {
                tlp.tc = 0;
                tlp.attr = Attr::default();
                tlp.ln = false;
                tlp.th = false;
            }
            tlp.length = if valid { 1 } else { rng.bits(10) as u16 };
            if write {
                tlp.payload = rng.bytes(usize::from(crate::wire::length_dw(tlp.length)) * 4);
            }
            tlp.body = if name.starts_with("IO") {
                let address = (rng.next() as u32) & !0x3;
                Body::Io(IoRequest { write, requester, tag, first_be, last_be, address })
            } else {
                let cfg_type = if name.ends_with('0') { CfgType::Type0 } else { CfgType::Type1 };
                let target = RoutingId(rng.next() as u16);
                let register = (rng.bits(12) as u16) & !0x3;
                Body::Config(ConfigRequest {
                    cfg_type,
                    write,
                    requester,
                    tag,
                    first_be,
                    last_be,
                    target,
                    register,
                })
            };
        }
        name @ ("Cpl" | "CplD" | "CplLk" | "CplDLk") => {
            let locked = name.contains("Lk");
            let data = name.contains('D');
            build_completion(&mut tlp, rng, valid, locked, data, requester, tag);
        }
        name @ ("Msg" | "MsgD") => build_message(&mut tlp, rng, valid, name == "MsgD", requester, tag),
        name => {
            let op = match name {
                "FetchAdd" => AtomicOp::FetchAdd,
                "Swap" => AtomicOp::Swap,
                _ => AtomicOp::Cas,
            };
            build_atomic(&mut tlp, rng, valid, op, requester, tag);
        }
    }
    if valid {
        // §2.2.4.1: AT 11b is reserved; outside memory and AtomicOp requests AT is reserved (00b).
        tlp.at = match tlp.body {
            Body::Memory(_) | Body::Atomic(_) => rng.below(3) as u8,
            _ => 0,
        };
    }
    tlp.prefixes = build_prefixes(rng, valid, tlp.th);
    tlp
}

fn build_memory(tlp: &mut Tlp, rng: &mut Rng, valid: bool, op: MemOp, requester: RoutingId, tag: u16) {
    let addr64 = rng.chance(2);
    let mut address =
        if addr64 { (rng.next() & !0x3) | if valid { 1 << 32 } else { 0 } } else { rng.next() & 0xffff_fffc };
    let mut length_dw = data_length_dw(rng, valid);
    if valid {
        // Stay inside the 4 KiB page: shorten, or move the address down.
        let room = (0x1000 - (address & 0xfff)) / 4;
        if u64::from(length_dw) > room {
            if rng.chance(2) {
                length_dw = room as u16;
            } else {
                address -= (u64::from(length_dw) - room) * 4;
            }
        }
    }
    let (first_be, last_be) = if !valid {
        (rng.bits(4) as u8, rng.bits(4) as u8)
    } else if length_dw == 1 {
        (rng.bits(4) as u8, 0)
    } else if length_dw == 2 && address % 8 == 0 {
        (1 + rng.below(15) as u8, 1 + rng.below(15) as u8)
    } else {
        (rng.pick(&FIRST_BE_CONTIGUOUS), rng.pick(&LAST_BE_CONTIGUOUS))
    };
    let ph = if tlp.th || !valid { rng.bits(2) as u8 } else { 0 };
    tlp.length = length_field(length_dw);
    if op == MemOp::Write {
        tlp.payload = rng.bytes(usize::from(length_dw) * 4);
    }
    tlp.body = Body::Memory(MemRequest { op, requester, tag, first_be, last_be, address, ph, addr64 });
}

fn build_completion(
    tlp: &mut Tlp,
    rng: &mut Rng,
    valid: bool,
    locked: bool,
    data: bool,
    requester: RoutingId,
    tag: u16,
) {
    let completer = RoutingId(rng.next() as u16);
    let bcm = rng.chance(16);
    let (status, byte_count, lower_address) = if !valid {
        (CplStatus::from_bits(rng.bits(3) as u8), 1 + rng.below(4096) as u16, rng.bits(7) as u8)
    } else if data {
        let status = rng.pick(&[CplStatus::Sc, CplStatus::Sc, CplStatus::Ur, CplStatus::Ca]);
        (status, 1 + rng.below(4096) as u16, rng.bits(7) as u8)
    } else {
        match rng.pick(&[CplStatus::Sc, CplStatus::Ur, CplStatus::Crs, CplStatus::Ca]) {
            s @ (CplStatus::Sc | CplStatus::Crs) => (s, 4, 0),
            s => (s, 1 + rng.below(4096) as u16, rng.bits(7) as u8),
        }
    };
    if data {
        let room = (u32::from(lower_address & 3) + u32::from(byte_count)).div_ceil(4) as u16;
        let length_dw =
            if valid { 1 + rng.below(u64::from(room.min(32))) as u16 } else { data_length_dw(rng, false) };
        tlp.length = length_field(length_dw);
        tlp.payload = rng.bytes(usize::from(length_dw) * 4);
    } else {
        tlp.length = if valid { 0 } else { rng.bits(10) as u16 };
    }
    tlp.body = Body::Completion(Completion {
        locked,
        completer,
        status,
        bcm,
        byte_count,
        requester,
        tag,
        lower_address,
    });
}

fn build_message(tlp: &mut Tlp, rng: &mut Rng, valid: bool, data: bool, requester: RoutingId, tag: u16) {
    use MsgRouting::*;
    // (code, routing, tc0 required); MsgD codes carry data, Msg codes none.
    const NO_DATA: [(u8, MsgRouting, bool); 24] = [
        (0x00, Broadcast, true),
        (0x02, ById, false),
        (0x04, ToRootComplex, false),
        (0x05, ById, false),
        (0x10, ToRootComplex, false),
        (0x12, Broadcast, false),
        (0x14, Local, true),
        (0x18, ToRootComplex, true),
        (0x19, Broadcast, true),
        (0x1b, Gather, true),
        (0x20, Local, true),
        (0x21, Local, true),
        (0x22, Local, true),
        (0x23, Local, true),
        (0x24, Local, true),
        (0x25, Local, true),
        (0x26, Local, true),
        (0x27, Local, true),
        (0x30, ToRootComplex, true),
        (0x31, ToRootComplex, true),
        (0x33, ToRootComplex, true),
        (0x52, Local, false),
        (0x7e, ById, false),
        (0x7f, Broadcast, false),
    ];
    const WITH_DATA: [(u8, MsgRouting, bool, u16); 5] = [
        (0x50, Local, true, 1),
        (0x01, ById, false, 2),
        (0x53, Local, false, 2),
        (0x7e, ToRootComplex, false, 4),
        (0x7f, Broadcast, false, 1),
    ];
    let (code, routing, tc0, length_dw) = if !valid {
        let routing = MsgRouting::from_bits(rng.below(6) as u8).unwrap_or(Local);
        (rng.next() as u8, routing, false, data_length_dw(rng, false))
    } else if data {
        let (code, routing, tc0, dw) = rng.pick(&WITH_DATA);
        (code, routing, tc0, if code & 0xfe == 0x7e { 1 + rng.below(16) as u16 } else { dw })
    } else {
        let (code, routing, tc0) = rng.pick(&NO_DATA);
        (code, routing, tc0, 0)
    };
    if tc0 {
        tlp.tc = 0;
    }
    let mut fields = [0u8; 8];
    fields.copy_from_slice(&rng.bytes(8));
    if routing == ByAddress {
        // Address routing: bytes 8..16 are a DW-aligned address.
        fields[7] &= !0x3;
    }
    if data {
        tlp.length = length_field(length_dw);
        tlp.payload = rng.bytes(usize::from(length_dw) * 4);
    } else {
        tlp.length = if valid { 0 } else { rng.bits(10) as u16 };
    }
    let tag = if valid { 0 } else { tag };
    tlp.body = Body::Message(Message { routing, requester, tag, code: MessageCode(code), fields });
}

fn build_atomic(tlp: &mut Tlp, rng: &mut Rng, valid: bool, op: AtomicOp, requester: RoutingId, tag: u16) {
    let payload_len: u64 = match op {
        AtomicOp::FetchAdd | AtomicOp::Swap => rng.pick(&[4, 8]),
        AtomicOp::Cas => rng.pick(&[8, 16, 32]),
    };
    let operand = if op == AtomicOp::Cas { payload_len / 2 } else { payload_len };
    let addr64 = rng.chance(2);
    let mut address =
        if addr64 { (rng.next() & !0x3) | if valid { 1 << 32 } else { 0 } } else { rng.next() & 0xffff_fffc };
    if valid {
        address &= !(operand - 1);
    }
    let ph = if tlp.th || !valid { rng.bits(2) as u8 } else { 0 };
    tlp.length = length_field((payload_len / 4) as u16);
    tlp.payload = rng.bytes(payload_len as usize);
    let (first_be, last_be) = (rng.bits(4) as u8, rng.bits(4) as u8);
    tlp.body = Body::Atomic(AtomicRequest { op, requester, tag, first_be, last_be, address, ph, addr64 });
}

fn build_prefixes(rng: &mut Rng, valid: bool, th: bool) -> Vec<Prefix> {
    let count = rng.pick(&[0, 0, 0, 1, 2, 3]);
    let mut types: Vec<u8> = (0..count)
        .map(|_| {
            if valid {
                let mut t = rng.pick(&[0b00000, 0b01110, 0b01111, 0b10001, 0b11110, 0b11111, 0b10000]);
                if t == 0b10000 && !th {
                    t = 0b10001;
                }
                t
            } else {
                rng.bits(5) as u8
            }
        })
        .collect();
    if valid {
        // Local prefixes first.
        types.sort_by_key(|t| t & 0x10);
    }
    types
        .into_iter()
        .map(|t| Prefix(0x8000_0000 | (u32::from(t) << 24) | (rng.next() as u32 & 0x00ff_ffff)))
        .collect()
}

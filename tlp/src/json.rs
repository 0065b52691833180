//! The stable JSON form of a TLP, used by `tlpbridge tlp decode --json` and `tlpbridge tlp encode`.
//!
//! `docs/tlp-json.md` is the reference: every field, its JSON type, the kinds it appears for and its
//! default on encode. In short: small fields are JSON numbers, 64-bit values (addresses, the ECRC
//! digest) are `"0x…"` hex strings so that every JSON parser keeps them exact, byte strings
//! (`payload`, message `fields`, `prefixes`) are bare hex, IDs are `"bb:dd.f"`.
//!
//! [`to_json`] and [`from_json`] are exact inverses: for every `Tlp` that [`Tlp::parse`] returns,
//! `from_json(&to_json(&tlp)) == Ok(tlp)`, so decode → encode gives back the same bytes. Encoding is
//! strict: an unknown field, a field that does not apply to the kind, a value out of its range or
//! fields that contradict each other are [`TlpError`]s naming the field.

use core::fmt::Write as _;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::TlpError;
use crate::model::{
    AtomicOp, AtomicRequest, Attr, Body, CfgType, Completion, ConfigRequest, CplStatus, Fmt, IoRequest,
    MemOp, MemRequest, Message, MessageCode, MsgRouting, Prefix, RoutingId, Tlp,
};

/// A [`TlpError::JsonField`] about `field`.
fn field_error(field: impl Into<String>, problem: impl Into<String>) -> TlpError {
    TlpError::JsonField { field: field.into(), problem: problem.into() }
}

impl TlpError {
    /// The JSON field the error is about, if it is about one.
    pub fn json_field(&self) -> Option<&str> {
        match self {
            TlpError::JsonField { field, .. } => Some(field),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tlp → JSON
// ---------------------------------------------------------------------------------------------

/// `attr` as a JSON object.
#[derive(Serialize)]
struct AttrJson {
    ro: bool,
    ns: bool,
    ido: bool,
}

/// The decoded form, fields in the documented order. Kind-specific fields are `None` for the kinds
/// they do not apply to and are then left out.
#[derive(Serialize)]
struct TlpJson {
    kind: &'static str,
    fmt: u8,
    #[serde(rename = "type")]
    type_field: u8,
    tc: u8,
    attr: AttrJson,
    ln: bool,
    th: bool,
    td: bool,
    ep: bool,
    at: u8,
    length_dw: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    completer_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bcm: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    byte_count: Option<u16>,
    requester_id: String,
    tag: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    lower_address: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_be: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_be: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bus: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    register: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_code: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    routing: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ph: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vendor_id: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fields: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prefixes: Option<Vec<String>>,
}

/// True when the Length field is reserved rather than a DW count: Cpl, CplLk and Msg (no data).
/// There the raw value is shown and taken; everywhere else 0 means 1024.
fn length_is_reserved(tlp: &Tlp) -> bool {
    matches!(tlp.body, Body::Completion(_) | Body::Message(_)) && tlp.payload.is_empty()
}

/// `"0x"` + 8 hex digits for an address in a 3DW header, 16 for a 4DW header.
fn address_hex(address: u64, four_dw: bool) -> String {
    u64_to_hex(address, if four_dw { 16 } else { 8 })
}

/// `"0x"` + lower-case hex of `value`, zero-padded to at least `digits` digits (0: as few as
/// needed, `"0x0"` for zero): the form of a 64-bit value in this JSON and in `tlpbridge probe
/// --json`, exact in every JSON parser where a number above 2^53 would not be.
pub fn u64_to_hex(value: u64, digits: usize) -> String {
    format!("0x{value:0digits$x}")
}

/// Lower-case hex of `bytes`, no separators.
pub fn bytes_to_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Parses hex digits into bytes. ASCII whitespace and `_` between digits are ignored, so
/// `"0000_0001 0100 00ff"` is accepted; an odd number of digits or any other character is an error
/// naming the offending character's position.
pub fn hex_to_bytes(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len() / 2);
    let mut high: Option<u8> = None;
    for (pos, c) in text.char_indices() {
        if c == '_' || c.is_ascii_whitespace() {
            continue;
        }
        let Some(nibble) = c.to_digit(16) else {
            return Err(format!("{c:?} at position {pos} is not a hex digit"));
        };
        let nibble = nibble as u8;
        match high.take() {
            None => high = Some(nibble),
            Some(h) => out.push((h << 4) | nibble),
        }
    }
    if high.is_some() {
        return Err("odd number of hex digits (each byte needs two)".to_owned());
    }
    Ok(out)
}

fn decoded(tlp: &Tlp) -> TlpJson {
    let mut j = TlpJson {
        kind: tlp.kind_name(),
        fmt: tlp.fmt().bits(),
        type_field: tlp.type_field(),
        tc: tlp.tc,
        attr: AttrJson {
            ro: tlp.attr.relaxed_ordering,
            ns: tlp.attr.no_snoop,
            ido: tlp.attr.id_based_ordering,
        },
        ln: tlp.ln,
        th: tlp.th,
        td: tlp.digest.is_some(),
        ep: tlp.ep,
        at: tlp.at,
        length_dw: if length_is_reserved(tlp) { tlp.length } else { tlp.length_dw() },
        completer_id: None,
        status: None,
        bcm: None,
        byte_count: None,
        requester_id: tlp.requester().to_string(),
        tag: tlp.tag().unwrap_or(0),
        lower_address: None,
        first_be: None,
        last_be: None,
        bus: None,
        device: None,
        function: None,
        register: None,
        message_code: None,
        message: None,
        routing: None,
        address: None,
        ph: None,
        target_id: None,
        vendor_id: None,
        fields: None,
        payload: tlp.has_data().then(|| bytes_to_hex(&tlp.payload)),
        digest: tlp.digest.map(|d| format!("0x{d:08x}")),
        prefixes: (!tlp.prefixes.is_empty())
            .then(|| tlp.prefixes.iter().map(|p| format!("{:08x}", p.0)).collect()),
    };
    match &tlp.body {
        Body::Memory(MemRequest { first_be, last_be, address, ph, addr64, .. })
        | Body::Atomic(AtomicRequest { first_be, last_be, address, ph, addr64, .. }) => {
            j.first_be = Some(*first_be);
            j.last_be = Some(*last_be);
            j.address = Some(address_hex(*address, *addr64));
            j.ph = Some(*ph);
        }
        Body::Io(io) => {
            j.first_be = Some(io.first_be);
            j.last_be = Some(io.last_be);
            j.address = Some(address_hex(u64::from(io.address), false));
        }
        Body::Config(c) => {
            j.first_be = Some(c.first_be);
            j.last_be = Some(c.last_be);
            j.bus = Some(c.target.bus());
            j.device = Some(c.target.device());
            j.function = Some(c.target.function());
            j.register = Some(c.register);
        }
        Body::Completion(c) => {
            j.completer_id = Some(c.completer.to_string());
            j.status = Some(c.status.name());
            j.bcm = Some(c.bcm);
            j.byte_count = Some(c.byte_count);
            j.lower_address = Some(c.lower_address);
        }
        Body::Message(m) => {
            j.message_code = Some(m.code.0);
            j.message = m.code.name();
            j.routing = Some(m.routing.name());
            j.fields = Some(bytes_to_hex(&m.fields));
            match m.routing {
                MsgRouting::ByAddress => j.address = Some(address_hex(u64::from_be_bytes(m.fields), true)),
                MsgRouting::ById => j.target_id = Some(message_target_id(&m.fields).to_string()),
                _ => {}
            }
            if has_vendor_id(m.code, m.routing) {
                j.vendor_id = Some(message_vendor_id(&m.fields));
            }
        }
    }
    j
}

/// Bytes 8..10 of a message header: the target ID of an ID-routed message.
fn message_target_id(fields: &[u8; 8]) -> RoutingId {
    RoutingId(u16::from_be_bytes([fields[0], fields[1]]))
}

/// Vendor-defined messages carry a vendor ID in bytes 10..12, except when routed by address
/// (then bytes 8..16 are the address).
fn has_vendor_id(code: MessageCode, routing: MsgRouting) -> bool {
    code.is_vendor_defined() && routing != MsgRouting::ByAddress
}

/// Bytes 10..12 of a message header: the vendor ID of a vendor-defined message.
fn message_vendor_id(fields: &[u8; 8]) -> u16 {
    u16::from_be_bytes([fields[2], fields[3]])
}

/// The JSON form of `tlp` (see `docs/tlp-json.md`).
pub fn to_json(tlp: &Tlp) -> Value {
    // Serializing a struct of strings, numbers and bools cannot fail.
    serde_json::to_value(decoded(tlp)).unwrap_or(Value::Null)
}

/// The JSON form of `tlp` as one line, fields in the documented order.
pub fn to_json_string(tlp: &Tlp) -> String {
    // Serializing a struct of strings, numbers and bools cannot fail.
    serde_json::to_string(&decoded(tlp)).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// JSON → Tlp
// ---------------------------------------------------------------------------------------------

/// Every field name the format knows, to tell an unknown field from one that does not apply.
const KNOWN_FIELDS: &[&str] = &[
    "kind",
    "fmt",
    "type",
    "tc",
    "attr",
    "ln",
    "th",
    "td",
    "ep",
    "at",
    "length_dw",
    "completer_id",
    "status",
    "bcm",
    "byte_count",
    "requester_id",
    "tag",
    "lower_address",
    "first_be",
    "last_be",
    "bus",
    "device",
    "function",
    "register",
    "message_code",
    "message",
    "routing",
    "address",
    "ph",
    "target_id",
    "vendor_id",
    "fields",
    "payload",
    "digest",
    "prefixes",
];

/// Reads fields of one JSON object, remembering which were consumed so that leftovers can be
/// reported as unknown or not applicable.
struct Fields<'a> {
    object: &'a Map<String, Value>,
    used: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    fn get(&mut self, name: &'static str) -> Option<&'a Value> {
        self.used.push(name);
        self.object.get(name)
    }

    /// An unsigned integer no larger than `max`: a JSON number, or a string `"0x…"` of hex digits
    /// (underscores allowed).
    fn uint(&mut self, name: &'static str, max: u64) -> Result<Option<u64>, TlpError> {
        let Some(value) = self.get(name) else { return Ok(None) };
        let n = match value {
            Value::Number(n) => {
                n.as_u64().ok_or_else(|| field_error(name, format!("{n} is not a non-negative integer")))?
            }
            Value::String(s) => hex_to_u64(s).map_err(|p| field_error(name, p))?,
            other => {
                return Err(field_error(
                    name,
                    format!("expected a number or a \"0x…\" hex string, got {}", type_name(other)),
                ));
            }
        };
        if n > max {
            return Err(field_error(name, format!("{n} is out of range (at most {max}, {max:#x})")));
        }
        Ok(Some(n))
    }

    fn u8(&mut self, name: &'static str, max: u8) -> Result<Option<u8>, TlpError> {
        // `max` bounds the value, so the narrowing cannot lose bits.
        Ok(self.uint(name, u64::from(max))?.map(|n| n as u8))
    }

    fn u16(&mut self, name: &'static str, max: u16) -> Result<Option<u16>, TlpError> {
        Ok(self.uint(name, u64::from(max))?.map(|n| n as u16))
    }

    fn bool(&mut self, name: &'static str) -> Result<Option<bool>, TlpError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => {
                Err(field_error(name, format!("expected true or false, got {}", type_name(other))))
            }
        }
    }

    fn str(&mut self, name: &'static str) -> Result<Option<&'a str>, TlpError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(field_error(name, format!("expected a string, got {}", type_name(other)))),
        }
    }

    fn routing_id(&mut self, name: &'static str) -> Result<Option<RoutingId>, TlpError> {
        self.str(name)?
            .map(|s| s.parse::<RoutingId>().map_err(|e| field_error(name, e.to_string())))
            .transpose()
    }

    fn hex_bytes(&mut self, name: &'static str) -> Result<Option<Vec<u8>>, TlpError> {
        self.str(name)?.map(|s| hex_to_bytes(s).map_err(|p| field_error(name, p))).transpose()
    }

    /// Fails on the first field of the object that was not consumed.
    fn finish(self, kind: &str) -> Result<(), TlpError> {
        for name in self.object.keys() {
            if !self.used.iter().any(|u| u == name) {
                let problem = if KNOWN_FIELDS.contains(&name.as_str()) {
                    format!("does not apply to {kind} (see docs/tlp-json.md)")
                } else {
                    "unknown field (see docs/tlp-json.md for the field names)".to_owned()
                };
                return Err(field_error(name.clone(), problem));
            }
        }
        Ok(())
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `"0x…"` or `"0X…"` hex (underscores allowed) → u64; the inverse of [`u64_to_hex`].
pub fn hex_to_u64(s: &str) -> Result<u64, String> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .ok_or_else(|| format!("{s:?} is not a \"0x…\" hex string"))?;
    let digits: String = digits.chars().filter(|&c| c != '_').collect();
    if digits.is_empty() {
        return Err(format!("{s:?} has no hex digits after 0x"));
    }
    u64::from_str_radix(&digits, 16).map_err(|e| format!("{s:?} is not a 64-bit hex number: {e}"))
}

/// What `kind` names, before the fields are read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Memory(MemOp),
    Io { write: bool },
    Config { cfg_type: CfgType, write: bool },
    Completion { locked: bool, data: bool },
    Message { data: bool },
    Atomic(AtomicOp),
}

impl Family {
    fn from_kind(kind: &str) -> Option<Self> {
        Some(match kind {
            "MRd" => Family::Memory(MemOp::Read),
            "MRdLk" => Family::Memory(MemOp::ReadLocked),
            "MWr" => Family::Memory(MemOp::Write),
            "IORd" => Family::Io { write: false },
            "IOWr" => Family::Io { write: true },
            "CfgRd0" => Family::Config { cfg_type: CfgType::Type0, write: false },
            "CfgWr0" => Family::Config { cfg_type: CfgType::Type0, write: true },
            "CfgRd1" => Family::Config { cfg_type: CfgType::Type1, write: false },
            "CfgWr1" => Family::Config { cfg_type: CfgType::Type1, write: true },
            "Cpl" => Family::Completion { locked: false, data: false },
            "CplD" => Family::Completion { locked: false, data: true },
            "CplLk" => Family::Completion { locked: true, data: false },
            "CplDLk" => Family::Completion { locked: true, data: true },
            "Msg" => Family::Message { data: false },
            "MsgD" => Family::Message { data: true },
            "FetchAdd" => Family::Atomic(AtomicOp::FetchAdd),
            "Swap" => Family::Atomic(AtomicOp::Swap),
            "CAS" => Family::Atomic(AtomicOp::Cas),
            _ => return None,
        })
    }

    fn has_data(self) -> bool {
        match self {
            Family::Memory(op) => op == MemOp::Write,
            Family::Io { write } | Family::Config { write, .. } => write,
            Family::Completion { data, .. } | Family::Message { data } => data,
            Family::Atomic(_) => true,
        }
    }
}

const KIND_NAMES: &str = "MRd, MRdLk, MWr, IORd, IOWr, CfgRd0, CfgWr0, CfgRd1, CfgWr1, Cpl, CplD, CplLk, CplDLk, Msg, MsgD, FetchAdd, Swap, CAS";

/// Parses JSON text (one object) into a TLP.
pub fn from_json_str(text: &str) -> Result<Tlp, TlpError> {
    let value: Value = serde_json::from_str(text).map_err(|e| TlpError::JsonSyntax(e.to_string()))?;
    from_json(&value)
}

/// The TLP the JSON object describes (see `docs/tlp-json.md` for fields and defaults). The result is
/// not validated against the spec's rules; call [`Tlp::validate`] for that.
pub fn from_json(value: &Value) -> Result<Tlp, TlpError> {
    let object = match value {
        Value::Object(o) => o,
        other => return Err(TlpError::JsonNotAnObject(type_name(other))),
    };
    let mut f = Fields { object, used: Vec::new() };

    let kind = f.str("kind")?.ok_or_else(|| field_error("kind", format!("missing; one of {KIND_NAMES}")))?;
    let family = Family::from_kind(kind)
        .ok_or_else(|| field_error("kind", format!("{kind:?} is not a TLP kind; one of {KIND_NAMES}")))?;

    // Common DW0 fields.
    let tc = f.u8("tc", 7)?.unwrap_or(0);
    let attr = attr_field(&mut f)?;
    let ln = f.bool("ln")?.unwrap_or(false);
    let th = f.bool("th")?.unwrap_or(false);
    let ep = f.bool("ep")?.unwrap_or(false);
    let at = f.u8("at", 3)?.unwrap_or(0);
    let fmt_given = f.u8("fmt", 7)?;
    let type_given = f.u8("type", 0x1f)?;

    let digest = match f.str("digest")? {
        None => None,
        Some(s) => {
            let d = hex_to_u64(s).map_err(|p| field_error("digest", p))?;
            Some(u32::try_from(d).map_err(|_| field_error("digest", format!("{s} does not fit 32 bits")))?)
        }
    };
    match (f.bool("td")?, digest) {
        (Some(true), None) => {
            return Err(field_error("digest", "missing; td is true, so the 32-bit ECRC must be given"));
        }
        (Some(false), Some(_)) => {
            return Err(field_error(
                "td",
                "false, but a digest is given (TD is set exactly when there is one)",
            ));
        }
        _ => {}
    }
    let prefixes = prefixes_field(&mut f)?;

    let payload = if family.has_data() {
        let payload = f
            .hex_bytes("payload")?
            .ok_or_else(|| field_error("payload", format!("missing; {kind} carries data")))?;
        if payload.is_empty() || payload.len() % 4 != 0 || payload.len() > 4096 {
            return Err(field_error(
                "payload",
                format!(
                    "{} bytes; a payload is 1 to 1024 whole DWs (4 to 4096 bytes, a multiple of 4)",
                    payload.len()
                ),
            ));
        }
        payload
    } else {
        Vec::new()
    };
    // Cpl, CplLk and Msg keep the raw reserved Length; everything else counts DWs (1024 ↔ 0).
    let reserved_length =
        matches!(family, Family::Completion { data: false, .. } | Family::Message { data: false });
    let length = if reserved_length {
        f.u16("length_dw", 0x3ff)?.unwrap_or(0)
    } else {
        let default = match family {
            _ if family.has_data() => Some(payload.len() / 4),
            Family::Io { .. } | Family::Config { .. } => Some(1),
            _ => None,
        };
        let n = match f.uint("length_dw", 1024)? {
            Some(n) => n as usize,
            None => {
                default.ok_or_else(|| field_error("length_dw", format!("missing; {kind} needs a length")))?
            }
        };
        if n == 0 {
            return Err(field_error("length_dw", "0; a length is 1 to 1024 DWs (1024 is sent as 0)"));
        }
        // 1..=1024; the field holds 1024 as 0.
        (n % 1024) as u16
    };
    let length_dw = if length == 0 && !reserved_length { 1024 } else { length };

    let requester = f.routing_id("requester_id")?.unwrap_or_default();
    let tag = f.u16("tag", 0x3ff)?.unwrap_or(0);

    let body = match family {
        Family::Memory(op) => {
            let (first_be, last_be) = byte_enables(&mut f, length_dw, false)?;
            let (address, ph, addr64) = memory_address(&mut f, kind, fmt_given, family)?;
            Body::Memory(MemRequest { op, requester, tag, first_be, last_be, address, ph, addr64 })
        }
        Family::Atomic(op) => {
            let (first_be, last_be) = byte_enables(&mut f, length_dw, true)?;
            let (address, ph, addr64) = memory_address(&mut f, kind, fmt_given, family)?;
            Body::Atomic(AtomicRequest { op, requester, tag, first_be, last_be, address, ph, addr64 })
        }
        Family::Io { write } => {
            let (first_be, last_be) = byte_enables(&mut f, length_dw, false)?;
            let address = f
                .uint("address", u64::from(u32::MAX))?
                .ok_or_else(|| field_error("address", format!("missing; {kind} needs a 32-bit address")))?;
            if address & 0x3 != 0 {
                return Err(field_error(
                    "address",
                    format!(
                        "{address:#x} is not DW-aligned; bits 1:0 must be 0 (first_be selects the bytes)"
                    ),
                ));
            }
            Body::Io(IoRequest { write, requester, tag, first_be, last_be, address: address as u32 })
        }
        Family::Config { cfg_type, write } => {
            let (first_be, last_be) = byte_enables(&mut f, length_dw, false)?;
            let bus = f.u8("bus", 0xff)?.unwrap_or(0);
            let device = f.u8("device", 0x1f)?.unwrap_or(0);
            let function = f.u8("function", 7)?.unwrap_or(0);
            let register = f.u16("register", 0xffc)?.unwrap_or(0);
            if register & 0x3 != 0 {
                return Err(field_error(
                    "register",
                    format!("{register:#x} is not DW-aligned; it is the byte offset of a 32-bit register"),
                ));
            }
            let target = RoutingId::new(bus, device, function);
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
        }
        Family::Completion { locked, .. } => {
            let completer = f.routing_id("completer_id")?.unwrap_or_default();
            let status = status_field(&mut f)?;
            let bcm = f.bool("bcm")?.unwrap_or(false);
            let byte_count = f
                .u16("byte_count", 4096)?
                .ok_or_else(|| field_error("byte_count", "missing; the remaining byte count, 1 to 4096"))?;
            if byte_count == 0 {
                return Err(field_error("byte_count", "0; a byte count is 1 to 4096 (4096 is sent as 0)"));
            }
            let lower_address = f.u8("lower_address", 0x7f)?.unwrap_or(0);
            Body::Completion(Completion {
                locked,
                completer,
                status,
                bcm,
                byte_count,
                requester,
                tag,
                lower_address,
            })
        }
        Family::Message { .. } => message_body(&mut f, requester, tag, type_given)?,
    };

    let tlp = Tlp { prefixes, tc, attr, ln, th, ep, at, length, body, payload, digest };

    if let Some(fmt) = fmt_given {
        if fmt != tlp.fmt().bits() {
            return Err(field_error(
                "fmt",
                format!("{fmt} does not match {kind} (Fmt of this TLP is {})", tlp.fmt().bits()),
            ));
        }
    }
    if let Some(ty) = type_given {
        if ty != tlp.type_field() {
            return Err(field_error(
                "type",
                format!("{ty:#07b} does not match {kind} (Type of this TLP is {:#07b})", tlp.type_field()),
            ));
        }
    }
    f.finish(kind)?;
    Ok(tlp)
}

fn attr_field(f: &mut Fields<'_>) -> Result<Attr, TlpError> {
    let Some(value) = f.get("attr") else { return Ok(Attr::default()) };
    let Value::Object(o) = value else {
        return Err(field_error(
            "attr",
            format!("expected an object {{\"ro\":bool,\"ns\":bool,\"ido\":bool}}, got {}", type_name(value)),
        ));
    };
    let mut attr = Attr::default();
    for (name, v) in o {
        let Value::Bool(b) = v else {
            return Err(field_error(
                format!("attr.{name}"),
                format!("expected true or false, got {}", type_name(v)),
            ));
        };
        match name.as_str() {
            "ro" => attr.relaxed_ordering = *b,
            "ns" => attr.no_snoop = *b,
            "ido" => attr.id_based_ordering = *b,
            _ => return Err(field_error(format!("attr.{name}"), "unknown attribute; ro, ns or ido")),
        }
    }
    Ok(attr)
}

fn prefixes_field(f: &mut Fields<'_>) -> Result<Vec<Prefix>, TlpError> {
    let Some(value) = f.get("prefixes") else { return Ok(Vec::new()) };
    let Value::Array(items) = value else {
        return Err(field_error(
            "prefixes",
            format!("expected an array of hex strings, got {}", type_name(value)),
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let name = format!("prefixes[{i}]");
            let Value::String(s) = item else {
                return Err(field_error(name, format!("expected a hex string, got {}", type_name(item))));
            };
            let bytes = hex_to_bytes(s).map_err(|p| field_error(name.clone(), p))?;
            let dw: [u8; 4] = bytes.as_slice().try_into().map_err(|_| {
                field_error(name.clone(), format!("{} bytes; a prefix is one DW (8 hex digits)", bytes.len()))
            })?;
            if dw[0] >> 5 != Fmt::Prefix.bits() {
                return Err(field_error(
                    name,
                    format!("first byte {:#04x} lacks Fmt 100b (a prefix starts with 0x80..=0x9f)", dw[0]),
                ));
            }
            Ok(Prefix(u32::from_be_bytes(dw)))
        })
        .collect()
}

/// `first_be` defaults to 0xf; `last_be` to 0 for a 1-DW request and 0xf otherwise. Both default to
/// 0 where the fields are reserved (AtomicOp requests).
fn byte_enables(f: &mut Fields<'_>, length_dw: u16, reserved: bool) -> Result<(u8, u8), TlpError> {
    let (first_default, last_default) = match (reserved, length_dw) {
        (true, _) => (0, 0),
        (false, 1) => (0xf, 0),
        (false, _) => (0xf, 0xf),
    };
    let first_be = f.u8("first_be", 0xf)?.unwrap_or(first_default);
    let last_be = f.u8("last_be", 0xf)?.unwrap_or(last_default);
    Ok((first_be, last_be))
}

/// `address`, `ph` and the header size of a memory or AtomicOp request. Without `fmt`, the 4DW
/// header is used exactly for addresses of 4 GiB and up.
fn memory_address(
    f: &mut Fields<'_>,
    kind: &str,
    fmt_given: Option<u8>,
    family: Family,
) -> Result<(u64, u8, bool), TlpError> {
    let address = f
        .uint("address", u64::MAX)?
        .ok_or_else(|| field_error("address", format!("missing; {kind} needs an address")))?;
    if address & 0x3 != 0 {
        return Err(field_error(
            "address",
            format!(
                "{address:#x} is not DW-aligned; bits 1:0 must be 0 (they hold ph; first_be selects the bytes)"
            ),
        ));
    }
    let ph = f.u8("ph", 3)?.unwrap_or(0);
    let data = family.has_data();
    let addr64 = match fmt_given {
        None => address > u64::from(u32::MAX),
        Some(fmt) if fmt == Fmt::for_header(false, data).bits() => {
            if address > u64::from(u32::MAX) {
                return Err(field_error(
                    "fmt",
                    format!("{fmt} selects a 3DW header, which cannot hold address {address:#x}"),
                ));
            }
            false
        }
        Some(fmt) if fmt == Fmt::for_header(true, data).bits() => true,
        Some(fmt) => {
            return Err(field_error(
                "fmt",
                format!(
                    "{fmt} does not match {kind} ({} for a 3DW header, {} for 4DW)",
                    Fmt::for_header(false, data).bits(),
                    Fmt::for_header(true, data).bits()
                ),
            ));
        }
    };
    Ok((address, ph, addr64))
}

fn status_field(f: &mut Fields<'_>) -> Result<CplStatus, TlpError> {
    let Some(value) = f.get("status") else { return Ok(CplStatus::Sc) };
    match value {
        Value::String(s) => (0u8..8)
            .map(CplStatus::from_bits)
            .find(|st| st.name() == s)
            .ok_or_else(|| field_error("status", format!("{s:?} is not SC, UR, CRS, CA or Reserved(n)"))),
        Value::Number(n) => match n.as_u64() {
            Some(bits @ 0..=7) => Ok(CplStatus::from_bits(bits as u8)),
            _ => Err(field_error("status", format!("{n} is not a 3-bit status (0 to 7)"))),
        },
        other => {
            Err(field_error("status", format!("expected a status name or number, got {}", type_name(other))))
        }
    }
}

fn routing_field(f: &mut Fields<'_>, type_given: Option<u8>) -> Result<MsgRouting, TlpError> {
    let all = || (0u8..8).filter_map(MsgRouting::from_bits);
    match f.str("routing")? {
        Some(name) => all().find(|r| r.name() == name).ok_or_else(|| {
            let names: Vec<&str> = all().map(MsgRouting::name).collect();
            field_error("routing", format!("{name:?} is not one of {}", names.join(", ")))
        }),
        // The routing is the low three bits of a message's Type (10rrrb).
        None => match type_given {
            Some(ty) if ty & 0x18 == 0x10 => MsgRouting::from_bits(ty & 0x7)
                .ok_or_else(|| field_error("type", format!("{ty:#07b} is a reserved message routing"))),
            _ => Err(field_error("routing", "missing; to-rc, by-addr, by-id, broadcast, local or gather")),
        },
    }
}

fn message_body(
    f: &mut Fields<'_>,
    requester: RoutingId,
    tag: u16,
    type_given: Option<u8>,
) -> Result<Body, TlpError> {
    let routing = routing_field(f, type_given)?;
    let code = match (f.u8("message_code", 0xff)?, f.str("message")?) {
        (Some(code), None) => MessageCode(code),
        (code, Some(name)) => {
            let named = (0u8..=0xff).map(MessageCode).find(|c| c.name() == Some(name)).ok_or_else(|| {
                field_error("message", format!("{name:?} is not a message name the spec defines"))
            })?;
            if let Some(code) = code {
                if code != named.0 {
                    return Err(field_error(
                        "message",
                        format!("{name} is code {:#04x}, but message_code is {code:#04x}", named.0),
                    ));
                }
            }
            named
        }
        (None, None) => {
            return Err(field_error("message_code", "missing; give message_code or message"));
        }
    };
    let mut fields = [0u8; 8];
    let fields_given = match f.hex_bytes("fields")? {
        Some(bytes) => {
            fields = bytes.as_slice().try_into().map_err(|_| {
                field_error(
                    "fields",
                    format!("{} bytes; header bytes 8..16 are 8 bytes (16 hex digits)", bytes.len()),
                )
            })?;
            true
        }
        None => false,
    };
    // The interpreted views of bytes 8..16 write those bytes; with `fields` also given they must agree.
    let mut overlay = |name: &'static str, range: core::ops::Range<usize>, bytes: &[u8]| {
        if fields_given && fields[range.clone()] != *bytes {
            return Err(field_error(
                name,
                format!("disagrees with bytes {}..{} of `fields`", range.start + 8, range.end + 8),
            ));
        }
        fields[range].copy_from_slice(bytes);
        Ok(())
    };
    if routing == MsgRouting::ByAddress {
        if let Some(address) = f.uint("address", u64::MAX)? {
            overlay("address", 0..8, &address.to_be_bytes())?;
        }
    }
    if routing == MsgRouting::ById {
        if let Some(target) = f.routing_id("target_id")? {
            overlay("target_id", 0..2, &target.0.to_be_bytes())?;
        }
    }
    if has_vendor_id(code, routing) {
        if let Some(vendor) = f.u16("vendor_id", 0xffff)? {
            overlay("vendor_id", 2..4, &vendor.to_be_bytes())?;
        }
    }
    Ok(Body::Message(Message { routing, requester, tag, code, fields }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mrd() -> Tlp {
        Tlp {
            prefixes: Vec::new(),
            tc: 0,
            attr: Attr::default(),
            ln: false,
            th: false,
            ep: false,
            at: 0,
            length: 4,
            body: Body::Memory(MemRequest {
                op: MemOp::Read,
                requester: RoutingId::new(1, 0, 0),
                tag: 0x12,
                first_be: 0xf,
                last_be: 0xf,
                address: 0x40,
                ph: 0,
                addr64: false,
            }),
            payload: Vec::new(),
            digest: None,
        }
    }

    #[test]
    fn mrd_json_has_documented_fields_in_order() {
        assert_eq!(
            to_json_string(&mrd()),
            r#"{"kind":"MRd","fmt":0,"type":0,"tc":0,"attr":{"ro":false,"ns":false,"ido":false},"ln":false,"th":false,"td":false,"ep":false,"at":0,"length_dw":4,"requester_id":"01:00.0","tag":18,"first_be":15,"last_be":15,"address":"0x00000040","ph":0}"#
        );
    }

    #[test]
    fn minimal_json_uses_documented_defaults() {
        let tlp = from_json(
            &json!({"kind":"MRd","length_dw":4,"requester_id":"01:00.0","tag":18,"address":"0x40"}),
        )
        .unwrap();
        assert_eq!(tlp, mrd());
    }

    #[test]
    fn round_trips_through_json() {
        let mut tlp = mrd();
        tlp.digest = Some(0xdead_beef);
        tlp.prefixes.push(Prefix(0x9100_0001));
        assert_eq!(from_json(&to_json(&tlp)), Ok(tlp));
    }

    #[test]
    fn length_1024_is_sent_as_zero() {
        let tlp = from_json(&json!({"kind":"MRd","length_dw":1024,"address":"0x1000"})).unwrap();
        assert_eq!(tlp.length, 0);
        assert_eq!(to_json(&tlp)["length_dw"], json!(1024));
    }

    #[test]
    fn address_above_4gib_selects_4dw_header_unless_fmt_says_otherwise() {
        let tlp = from_json(&json!({"kind":"MWr","address":"0x1_0000_0040","payload":"01020304"})).unwrap();
        assert_eq!(tlp.fmt(), Fmt::FourDwWithData);
        let err = from_json(&json!({"kind":"MWr","fmt":2,"address":"0x1_0000_0040","payload":"01020304"}));
        assert_eq!(err.unwrap_err().json_field(), Some("fmt"));
        let low = from_json(&json!({"kind":"MWr","fmt":3,"address":"0x40","payload":"01020304"})).unwrap();
        assert_eq!(to_json(&low)["address"], json!("0x0000000000000040"));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (json!({"kind":"MRd","length_dw":1,"address":"0x40","tag":1024}), "tag"),
            (json!({"kind":"MRd","length_dw":1,"address":"0x41"}), "address"),
            (json!({"kind":"MRd","length_dw":1,"address":"0x40","status":"SC"}), "status"),
            (json!({"kind":"MRd","length_dw":1,"address":"0x40","colour":"red"}), "colour"),
            (json!({"kind":"CplD","byte_count":4}), "payload"),
            (json!({"kind":"Cpl"}), "byte_count"),
            (json!({"kind":"MRd","length_dw":1,"address":"0x40","td":true}), "digest"),
            (json!({"kind":"MRd","length_dw":1,"address":"0x40","attr":{"xx":true}}), "attr.xx"),
            (json!({"kind":"Msg","routing":"local","message_code":0x20,"message":"Assert_INTB"}), "message"),
            (json!({"kind":"Mrd"}), "kind"),
        ];
        for (value, field) in cases {
            let err = from_json(&value).unwrap_err();
            assert_eq!(err.json_field(), Some(field), "{value} gave {err}");
        }
    }

    #[test]
    fn message_views_fill_header_bytes_8_to_16() {
        let tlp = from_json(&json!({
            "kind":"Msg","routing":"by-id","message":"Vendor_Defined_Type1","target_id":"02:00.0","vendor_id":0x1af4
        }))
        .unwrap();
        let Body::Message(m) = &tlp.body else { panic!("not a message") };
        assert_eq!(m.fields, [0x02, 0x00, 0x1a, 0xf4, 0, 0, 0, 0]);
        assert_eq!(m.code, MessageCode::VENDOR_DEFINED_TYPE1);
        let j = to_json(&tlp);
        assert_eq!(j["target_id"], json!("02:00.0"));
        assert_eq!(j["vendor_id"], json!(0x1af4));
        assert_eq!(j["fields"], json!("02001af400000000"));
        assert_eq!(from_json(&j), Ok(tlp));
    }

    #[test]
    fn hex_accepts_separators_and_rejects_odd_digits() {
        assert_eq!(hex_to_bytes("0a_0B 0c"), Ok(vec![0x0a, 0x0b, 0x0c]));
        assert!(hex_to_bytes("abc").is_err());
        assert!(hex_to_bytes("zz").is_err());
    }

    #[test]
    fn u64_hex_pads_to_the_digits_asked_and_reads_back_exactly() {
        assert_eq!(u64_to_hex(0, 0), "0x0");
        assert_eq!(u64_to_hex(0x4000, 0), "0x4000");
        assert_eq!(u64_to_hex(0xfee0_0000, 8), "0xfee00000");
        assert_eq!(u64_to_hex(0x1_fe00_0000, 16), "0x00000001fe000000");
        assert_eq!(u64_to_hex(0x1_fe00_0000, 8), "0x1fe000000");
        // 2^53 + 1 is where f64-based JSON readers start rounding.
        for value in [0, 1, (1u64 << 53) + 1, 0xffff_ffff_ffff_f000, u64::MAX] {
            assert_eq!(hex_to_u64(&u64_to_hex(value, 0)), Ok(value));
            assert_eq!(hex_to_u64(&u64_to_hex(value, 16)), Ok(value));
        }
        assert_eq!(hex_to_u64("0X1_0000"), Ok(0x1_0000));
        assert!(hex_to_u64("0x").is_err());
        assert!(hex_to_u64("4096").is_err());
        assert!(hex_to_u64("0x1_0000_0000_0000_0000").is_err());
    }
}

/// Decode → encode is exact for every TLP the strategies make, valid or not, through the
/// `Value` and through the one-line text.
#[cfg(all(test, feature = "proptest"))]
mod round_trip {
    use super::*;
    use crate::arbitrary::{any_tlp, valid_tlp};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn valid_tlps_round_trip_through_json(tlp in valid_tlp()) {
            prop_assert_eq!(from_json(&to_json(&tlp)), Ok(tlp.clone()));
            let bytes = tlp.to_bytes();
            let again = from_json_str(&to_json_string(&Tlp::parse(&bytes).unwrap())).unwrap();
            prop_assert_eq!(again.to_bytes(), bytes);
        }

        #[test]
        fn any_tlp_round_trips_through_json(tlp in any_tlp()) {
            prop_assert_eq!(from_json_str(&to_json_string(&tlp)), Ok(tlp));
        }
    }
}

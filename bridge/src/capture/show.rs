//! Decoding a capture for `tlpbridge pcap show`: every record through our own TLP and vfio-user
//! decoders, requests matched to completions (and vfio-user commands to replies) with latency,
//! a filter, and the one-line and JSON forms documented in `docs/capture-format.md`.

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use tlp::validate::Limits;
use tlp::{Body, CplStatus, MemOp, MsgRouting, RoutingId, Tlp};
use transports::vfio_user::Command;
use transports::vfio_user::wire::{
    DmaAccessRepr, Header, HeaderRepr, MessageType, RegionAccessRepr, dma_access, region_access,
};

use super::format::{self, Direction, NetTlpHeaderRepr, TlpHeaderRepr, VfioSocket, VfioUserHeaderRepr};
use super::read::RawRecord;
use crate::engine::{BridgeError, Result};

/// What a record carried, decoded.
#[derive(Clone, Debug)]
pub enum Content {
    Tlp(TlpRecord),
    VfioUser(VfioUserRecord),
    /// A record this tool does not decode (another link type, a non-NetTLP packet) or whose
    /// pseudo-header is broken.
    Other {
        reason: String,
    },
}

/// Where a TLP record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlpSource {
    /// A tlpbridge capture: the pseudo-header.
    Bridge(TlpHeaderRepr),
    /// A NetTLP capture: the NetTLP header and the UDP ports.
    NetTlp { header: NetTlpHeaderRepr, src_port: u16, dst_port: u16 },
}

#[derive(Clone, Debug)]
pub struct TlpRecord {
    pub source: TlpSource,
    pub bytes: Vec<u8>,
    /// `Err`: the bytes are not a TLP (the parser's reason).
    pub tlp: Result<Tlp, String>,
    /// The first spec rule the TLP breaks: (rule name, spec section, detail).
    pub violation: Option<(String, String, String)>,
}

#[derive(Clone, Debug)]
pub struct VfioUserRecord {
    pub header: VfioUserHeaderRepr,
    /// The whole message as captured.
    pub bytes: Vec<u8>,
    pub message: Result<VfioMessage, String>,
}

/// The decoded fields of one vfio-user message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VfioMessage {
    pub header: HeaderRepr,
    /// REGION_READ/REGION_WRITE: (region, offset, count).
    pub region_access: Option<(u32, u64, u32)>,
    /// DMA_READ/DMA_WRITE: (address, count).
    pub dma_access: Option<(u64, u64)>,
}

/// A record with everything `pcap show` prints about it.
#[derive(Clone, Debug)]
pub struct ShownRecord {
    pub raw_number: u64,
    pub time_ns: u64,
    pub direction: Option<Direction>,
    pub drop_count: Option<u64>,
    pub content: Content,
    /// The request (or vfio-user command) this completion (reply) answers.
    pub request_record: Option<u64>,
    pub latency_ns: Option<u64>,
    /// For completions: the matched request's address (so address filters keep them).
    pub request_address: Option<u64>,
}

fn decode_vfio_message(bytes: &[u8]) -> Result<VfioMessage, String> {
    let view = Header::new_checked(bytes).map_err(|e| e.to_string())?;
    let header = HeaderRepr::parse(&view).map_err(|e| e.to_string())?;
    let payload = bytes.get(transports::vfio_user::wire::HEADER_LEN..).unwrap_or(&[]);
    let mut message = VfioMessage { header, region_access: None, dma_access: None };
    // An error reply carries no access structure.
    if header.error.is_some() {
        return Ok(message);
    }
    match header.command {
        Command::RegionRead | Command::RegionWrite => {
            if let Ok(view) = region_access::View::new_checked(payload)
                && let Ok(r) = RegionAccessRepr::parse(&view)
            {
                message.region_access = Some((r.region, r.offset, r.count));
            }
        }
        Command::DmaRead | Command::DmaWrite => {
            if let Ok(view) = dma_access::View::new_checked(payload)
                && let Ok(d) = DmaAccessRepr::parse(&view)
            {
                message.dma_access = Some((d.address, d.count));
            }
        }
        _ => {}
    }
    Ok(message)
}

fn decode_tlp(source: TlpSource, bytes: &[u8]) -> TlpRecord {
    let tlp = Tlp::parse(bytes).map_err(|e| e.to_string());
    let violation = tlp
        .as_ref()
        .ok()
        .and_then(|t| t.validate(&Limits::default()).err())
        .map(|v| (v.rule.name().to_string(), v.rule.spec_section().to_string(), v.detail));
    TlpRecord { source, bytes: bytes.to_vec(), tlp, violation }
}

/// Decodes one record by its link type.
pub fn decode(record: &RawRecord) -> Content {
    match record.linktype {
        format::LINKTYPE_TLP => match TlpHeaderRepr::parse(&record.data) {
            Ok((header, bytes)) => Content::Tlp(decode_tlp(TlpSource::Bridge(header), bytes)),
            Err(e) => Content::Other { reason: e.to_string() },
        },
        format::LINKTYPE_VFIO_USER => match VfioUserHeaderRepr::parse(&record.data) {
            Ok((header, bytes)) => Content::VfioUser(VfioUserRecord {
                header,
                bytes: bytes.to_vec(),
                message: decode_vfio_message(bytes),
            }),
            Err(e) => Content::Other { reason: e.to_string() },
        },
        format::LINKTYPE_ETHERNET => {
            let Some((src_port, dst_port, payload)) = format::udp_in_ethernet(&record.data) else {
                return Content::Other { reason: "not an IPv4/UDP frame".to_owned() };
            };
            if !format::is_nettlp_port(src_port) && !format::is_nettlp_port(dst_port) {
                return Content::Other {
                    reason: format!("UDP {src_port} → {dst_port} is not a NetTLP port"),
                };
            }
            match NetTlpHeaderRepr::parse(payload) {
                Some((header, tlp)) => {
                    Content::Tlp(decode_tlp(TlpSource::NetTlp { header, src_port, dst_port }, tlp))
                }
                None => {
                    Content::Other { reason: "UDP payload shorter than the 6-byte NetTLP header".to_owned() }
                }
            }
        }
        other => Content::Other { reason: format!("link type {other} is not decoded by this tool") },
    }
}

/// Non-posted requests: the ones a completion answers.
fn is_non_posted(tlp: &Tlp) -> bool {
    match &tlp.body {
        Body::Memory(m) => m.op != MemOp::Write,
        Body::Io(_) | Body::Config(_) | Body::Atomic(_) => true,
        Body::Completion(_) | Body::Message(_) => false,
    }
}

/// The address a request targets, if it has one.
fn request_address(tlp: &Tlp) -> Option<u64> {
    match &tlp.body {
        Body::Memory(m) => Some(m.address),
        Body::Atomic(a) => Some(a.address),
        Body::Io(io) => Some(u64::from(io.address)),
        Body::Message(m) if m.routing == MsgRouting::ByAddress => Some(u64::from_be_bytes(m.fields)),
        _ => None,
    }
}

/// True when this completion ends its request: an error status, no data, or data reaching the
/// end of the remaining byte count (`Length*4 == ((LowerAddress & 3) + ByteCount + 3) & !3`).
fn completes_request(tlp: &Tlp) -> bool {
    let Body::Completion(c) = &tlp.body else { return false };
    if c.status != CplStatus::Sc || tlp.payload.is_empty() {
        return true;
    }
    let needed = (u32::from(c.lower_address & 3) + u32::from(c.byte_count) + 3) & !3;
    u32::from(tlp.length_dw()) * 4 >= needed
}

/// The time used for latency: link time (ps) when the record has one, else capture time.
fn latency_clock(record: &ShownRecord) -> (u8, u64) {
    match &record.content {
        Content::Tlp(TlpRecord { source: TlpSource::Bridge(h), .. }) => (0, h.link_time_ps),
        Content::Tlp(TlpRecord { source: TlpSource::NetTlp { header, .. }, .. }) => {
            (1, u64::from(header.tstamp))
        }
        _ => (2, record.time_ns),
    }
}

fn latency_ns(request: (u8, u64), completion: (u8, u64)) -> Option<u64> {
    match (request, completion) {
        ((0, a), (0, b)) => Some(b.saturating_sub(a) / 1000),
        // NetTLP's 32-bit tick counter wraps.
        ((1, a), (1, b)) => {
            Some(u64::from((b as u32).wrapping_sub(a as u32)) * NetTlpHeaderRepr::NS_PER_TICK)
        }
        ((2, a), (2, b)) => Some(b.saturating_sub(a)),
        _ => None,
    }
}

/// A non-posted request waiting for its completions.
#[derive(Clone, Copy, Debug)]
struct Outstanding {
    number: u64,
    clock: (u8, u64),
    address: Option<u64>,
}

/// Decodes records in file order and matches completions to requests by (direction, requester,
/// tag) and vfio-user replies to commands by (socket, direction, id). Its tables are bounded by
/// their key spaces, so it runs over captures of any length.
#[derive(Debug, Default)]
pub struct Analyzer {
    requests: HashMap<(Option<Direction>, u16, u16), Outstanding>,
    commands: HashMap<(VfioSocket, Direction, u16), (u64, u64)>,
}

impl Analyzer {
    pub fn new() -> Self {
        Analyzer::default()
    }

    /// Decodes the next record of the file and matches it against those before it.
    pub fn record(&mut self, raw: &RawRecord) -> ShownRecord {
        let content = decode(raw);
        let direction = match &content {
            Content::Tlp(TlpRecord { source: TlpSource::Bridge(h), .. }) => Some(h.direction),
            Content::VfioUser(v) => Some(v.header.direction),
            _ => raw.epb_direction,
        };
        let mut record = ShownRecord {
            raw_number: raw.number,
            time_ns: raw.time_ns,
            direction,
            drop_count: raw.drop_count,
            content,
            request_record: None,
            latency_ns: None,
            request_address: None,
        };
        let clock = latency_clock(&record);
        match &record.content {
            Content::Tlp(TlpRecord { tlp: Ok(tlp), .. }) => {
                let tag = tlp.tag().unwrap_or(0);
                if is_non_posted(tlp) {
                    self.requests.insert(
                        (direction, tlp.requester().0, tag),
                        Outstanding { number: raw.number, clock, address: request_address(tlp) },
                    );
                } else if let Body::Completion(c) = &tlp.body {
                    let key = (direction.map(Direction::opposite), c.requester.0, tag);
                    if let Some(request) = self.requests.get(&key) {
                        record.request_record = Some(request.number);
                        record.latency_ns = latency_ns(request.clock, clock);
                        record.request_address = request.address;
                    }
                    if completes_request(tlp) {
                        self.requests.remove(&key);
                    }
                }
            }
            Content::VfioUser(VfioUserRecord { header, message: Ok(m), .. }) => match m.header.message_type {
                MessageType::Command if !m.header.no_reply => {
                    self.commands
                        .insert((header.socket, header.direction, m.header.id), (raw.number, raw.time_ns));
                }
                MessageType::Command => {}
                MessageType::Reply => {
                    if let Some((number, time)) =
                        self.commands.remove(&(header.socket, header.direction.opposite(), m.header.id))
                    {
                        record.request_record = Some(number);
                        record.latency_ns = Some(raw.time_ns.saturating_sub(time));
                    }
                }
            },
            _ => {}
        }
        record
    }
}

/// [`Analyzer::record`] over every record.
pub fn analyze(records: &[RawRecord]) -> Vec<ShownRecord> {
    let mut analyzer = Analyzer::new();
    records.iter().map(|raw| analyzer.record(raw)).collect()
}

// ---------------------------------------------------------------------------------------------
// Filter
// ---------------------------------------------------------------------------------------------

/// One `key=value,...` term; a record passes a term if any value matches.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Term {
    Kind(Vec<String>),
    Requester(Vec<RoutingId>),
    Tag(Vec<u16>),
    Address(Vec<(u64, u64)>),
    Direction(Vec<Direction>),
    Interface(Vec<String>),
}

/// `--filter`: space-separated terms, all of which must match (see `docs/capture-format.md`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    terms: Vec<Term>,
}

fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16).ok(),
        None => text.replace('_', "").parse().ok(),
    }
}

impl Filter {
    pub fn parse(expr: &str) -> Result<Filter> {
        let err = |reason: String| BridgeError::CaptureFilter { expr: expr.to_owned(), reason };
        let mut terms = Vec::new();
        for word in expr.split_whitespace() {
            let (key, values) =
                word.split_once('=').ok_or_else(|| err(format!("{word:?} is not key=value")))?;
            let values: Vec<&str> = values.split(',').filter(|v| !v.is_empty()).collect();
            if values.is_empty() {
                return Err(err(format!("{key}= has no value")));
            }
            let term = match key {
                "kind" => Term::Kind(values.iter().map(|v| v.to_ascii_lowercase()).collect()),
                "requester" => Term::Requester(
                    values
                        .iter()
                        .map(|v| v.parse::<RoutingId>().map_err(|e| err(e.to_string())))
                        .collect::<Result<_, _>>()?,
                ),
                "tag" => Term::Tag(
                    values
                        .iter()
                        .map(|v| {
                            parse_number(v)
                                .and_then(|n| u16::try_from(n).ok())
                                .filter(|n| *n < 1024)
                                .ok_or_else(|| err(format!("tag {v:?} is not a number below 1024")))
                        })
                        .collect::<Result<_, _>>()?,
                ),
                "addr" => Term::Address(
                    values
                        .iter()
                        .map(|v| {
                            let (low, high) = v.split_once('-').unwrap_or((v, v));
                            match (parse_number(low), parse_number(high)) {
                                (Some(l), Some(h)) if l <= h => Ok((l, h)),
                                _ => Err(err(format!("address range {v:?} is not A or A-B with A <= B"))),
                            }
                        })
                        .collect::<Result<_, _>>()?,
                ),
                "dir" => Term::Direction(
                    values
                        .iter()
                        .map(|v| match *v {
                            "in" => Ok(Direction::Inbound),
                            "out" => Ok(Direction::Outbound),
                            other => Err(err(format!("dir {other:?} is neither in nor out"))),
                        })
                        .collect::<Result<_, _>>()?,
                ),
                "iface" => Term::Interface(
                    values
                        .iter()
                        .map(|v| match *v {
                            "tlp" | "vfio-user" | "nettlp" | "other" => Ok((*v).to_owned()),
                            other => {
                                Err(err(format!("iface {other:?} is not tlp, vfio-user, nettlp or other")))
                            }
                        })
                        .collect::<Result<_, _>>()?,
                ),
                other => {
                    return Err(err(format!(
                        "unknown key {other:?} (keys: kind, requester, tag, addr, dir, iface)"
                    )));
                }
            };
            terms.push(term);
        }
        Ok(Filter { terms })
    }

    pub fn matches(&self, record: &ShownRecord) -> bool {
        self.terms.iter().all(|term| term_matches(term, record))
    }
}

fn term_matches(term: &Term, record: &ShownRecord) -> bool {
    let tlp = match &record.content {
        Content::Tlp(TlpRecord { tlp: Ok(tlp), .. }) => Some(tlp),
        _ => None,
    };
    match term {
        Term::Kind(kinds) => {
            let kind = match &record.content {
                Content::Tlp(TlpRecord { tlp: Ok(tlp), .. }) => tlp.kind_name().to_ascii_lowercase(),
                Content::VfioUser(VfioUserRecord { message: Ok(m), .. }) => {
                    m.header.command.to_string().to_ascii_lowercase()
                }
                _ => return false,
            };
            kinds.contains(&kind)
        }
        Term::Requester(ids) => tlp.is_some_and(|t| ids.contains(&t.requester())),
        Term::Tag(tags) => tlp.and_then(Tlp::tag).is_some_and(|t| tags.contains(&t)),
        Term::Address(ranges) => {
            let address = tlp.and_then(request_address).or(record.request_address);
            address.is_some_and(|a| ranges.iter().any(|(l, h)| (*l..=*h).contains(&a)))
        }
        Term::Direction(dirs) => record.direction.is_some_and(|d| dirs.contains(&d)),
        Term::Interface(names) => names.iter().any(|n| n == interface_name(record)),
    }
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

fn interface_name(record: &ShownRecord) -> &'static str {
    match &record.content {
        Content::Tlp(TlpRecord { source: TlpSource::Bridge(_), .. }) => "tlp",
        Content::Tlp(TlpRecord { source: TlpSource::NetTlp { .. }, .. }) => "nettlp",
        Content::VfioUser(_) => "vfio-user",
        Content::Other { .. } => "other",
    }
}

fn message_type_name(t: MessageType) -> &'static str {
    match t {
        MessageType::Command => "command",
        MessageType::Reply => "reply",
    }
}

/// The `--json` object of one record (fields documented in `docs/capture-format.md`).
pub fn to_json(record: &ShownRecord) -> Value {
    let mut j = Map::new();
    j.insert("record".into(), json!(record.raw_number));
    j.insert("time_ns".into(), json!(record.time_ns));
    j.insert("interface".into(), json!(interface_name(record)));
    j.insert("direction".into(), json!(record.direction.map(Direction::name)));
    if let Some(n) = record.drop_count {
        j.insert("drop_count".into(), json!(n));
    }
    match &record.content {
        Content::Tlp(t) => {
            match t.source {
                TlpSource::Bridge(h) => {
                    j.insert("link_id".into(), json!(h.link_id));
                    j.insert("link_time_ps".into(), json!(h.link_time_ps));
                    j.insert("flags".into(), json!(h.flags.names()));
                }
                TlpSource::NetTlp { header, src_port, dst_port } => {
                    j.insert(
                        "nettlp".into(),
                        json!({"seq": header.seq, "tstamp": header.tstamp, "src_port": src_port, "dst_port": dst_port}),
                    );
                }
            }
            j.insert("bytes".into(), json!(tlp::json::bytes_to_hex(&t.bytes)));
            match &t.tlp {
                Ok(tlp) => {
                    j.insert("kind".into(), json!(tlp.kind_name()));
                    j.insert("summary".into(), json!(tlp.to_string()));
                    j.insert("tlp".into(), tlp::json::to_json(tlp));
                }
                Err(e) => {
                    j.insert("kind".into(), Value::Null);
                    j.insert("error".into(), json!(e));
                }
            }
            if let Some((rule, section, detail)) = &t.violation {
                j.insert("violation".into(), json!({"rule": rule, "section": section, "detail": detail}));
            }
        }
        Content::VfioUser(v) => {
            j.insert("socket".into(), json!(v.header.socket.name()));
            j.insert("fds".into(), json!(v.header.fds));
            j.insert("bytes".into(), json!(tlp::json::bytes_to_hex(&v.bytes)));
            match &v.message {
                Ok(m) => {
                    j.insert("kind".into(), json!(m.header.command.to_string()));
                    j.insert("summary".into(), json!(vfio_summary(m)));
                    let mut vj = Map::new();
                    vj.insert("id".into(), json!(m.header.id));
                    vj.insert("command".into(), json!(m.header.command.to_string()));
                    vj.insert("command_number".into(), json!(u16::from(m.header.command)));
                    vj.insert("type".into(), json!(message_type_name(m.header.message_type)));
                    vj.insert("size".into(), json!(m.header.size));
                    vj.insert("no_reply".into(), json!(m.header.no_reply));
                    vj.insert("error".into(), json!(m.header.error));
                    if let Some((region, offset, count)) = m.region_access {
                        vj.insert("region".into(), json!(region));
                        vj.insert("offset".into(), json!(format!("0x{offset:x}")));
                        vj.insert("count".into(), json!(count));
                    }
                    if let Some((address, count)) = m.dma_access {
                        vj.insert("address".into(), json!(format!("0x{address:x}")));
                        vj.insert("count".into(), json!(count));
                    }
                    j.insert("vfio_user".into(), Value::Object(vj));
                }
                Err(e) => {
                    j.insert("kind".into(), Value::Null);
                    j.insert("error".into(), json!(e));
                }
            }
        }
        Content::Other { reason } => {
            j.insert("kind".into(), Value::Null);
            j.insert("error".into(), json!(reason));
        }
    }
    if let Some(n) = record.request_record {
        j.insert("request_record".into(), json!(n));
    }
    if let Some(ns) = record.latency_ns {
        j.insert("latency_ns".into(), json!(ns));
    }
    Value::Object(j)
}

fn vfio_summary(m: &VfioMessage) -> String {
    let mut s = m.header.to_string();
    if let Some((region, offset, count)) = m.region_access {
        s.push_str(&format!(" region={region} offset=0x{offset:x} count={count}"));
    }
    if let Some((address, count)) = m.dma_access {
        s.push_str(&format!(" address=0x{address:x} count={count}"));
    }
    s
}

/// The one-line form: record number, seconds since `t0`, interface, direction, summary.
pub fn to_line(record: &ShownRecord, t0_ns: u64) -> String {
    let t = record.time_ns.saturating_sub(t0_ns);
    let dir = match record.direction {
        Some(Direction::Inbound) => "->",
        Some(Direction::Outbound) => "<-",
        None => "  ",
    };
    let mut line = format!(
        "{:>6} {:>4}.{:09} {:<9} {dir} ",
        record.raw_number,
        t / 1_000_000_000,
        t % 1_000_000_000,
        interface_name(record)
    );
    match &record.content {
        Content::Tlp(t) => {
            if let TlpSource::Bridge(h) = t.source {
                let flags =
                    h.flags.names().into_iter().filter(|f| *f != "simulated-time").collect::<Vec<_>>();
                if !flags.is_empty() {
                    line.push_str(&format!("[{}] ", flags.join(",")));
                }
            }
            match &t.tlp {
                Ok(tlp) => line.push_str(&tlp.to_string()),
                Err(e) => line.push_str(&format!("not a TLP ({e}): {}", tlp::json::bytes_to_hex(&t.bytes))),
            }
            if let Some((rule, section, _)) = &t.violation {
                line.push_str(&format!(" !{rule} (§{section})"));
            }
        }
        Content::VfioUser(v) => {
            line.push_str(&format!("{} ", v.header.socket.name()));
            match &v.message {
                Ok(m) => line.push_str(&vfio_summary(m)),
                Err(e) => line.push_str(&format!("not a vfio-user message: {e}")),
            }
            if v.header.fds > 0 {
                line.push_str(&format!(" fds={}", v.header.fds));
            }
        }
        Content::Other { reason } => line.push_str(&format!("({reason})")),
    }
    if let Some(n) = record.request_record {
        line.push_str(&format!(" [reply to #{n}"));
        if let Some(ns) = record.latency_ns {
            line.push_str(&format!(", {ns} ns"));
        }
        line.push(']');
    }
    if let Some(n) = record.drop_count {
        line.push_str(&format!(" ({n} records dropped before this one)"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlp(hex: &str) -> Tlp {
        Tlp::parse(&tlp::json::hex_to_bytes(hex).unwrap()).unwrap()
    }

    fn raw(number: u64, direction: Direction, time_ps: u64, hex: &str) -> RawRecord {
        let header = TlpHeaderRepr {
            direction,
            link_id: 0,
            flags: super::super::TlpFlags::default(),
            link_time_ps: time_ps,
        };
        let mut data = Vec::new();
        header.emit(&mut data);
        data.extend_from_slice(&tlp::json::hex_to_bytes(hex).unwrap());
        RawRecord {
            number,
            interface: 0,
            linktype: format::LINKTYPE_TLP,
            time_ns: number,
            data,
            epb_direction: Some(direction),
            drop_count: None,
        }
    }

    #[test]
    fn the_last_completion_is_recognized_from_byte_count_and_lower_address() {
        // CplD of 1 DW, Byte Count 4: last. Byte Count 8: more to come.
        assert!(completes_request(&tlp("4a0000010000000401001200deadbeef")));
        assert!(!completes_request(&tlp("4a0000010000000801001200deadbeef")));
        // Lower Address 2 with Byte Count 2 still fits the one DW: last.
        assert!(completes_request(&tlp("4a0000010000000201001202deadbeef")));
        // Any unsuccessful status and any Cpl without data ends the request.
        assert!(completes_request(&tlp("0a0000000000800801001200")));
        assert!(!completes_request(&tlp("000000010100120f00001000")));
    }

    #[test]
    fn split_completions_all_point_at_the_request_and_a_reused_tag_starts_over() {
        let mrd = "000000020100120f00001000";
        let mut analyzer = Analyzer::new();
        let records = [
            raw(1, Direction::Inbound, 1_000, mrd),
            raw(2, Direction::Outbound, 3_000, "4a0000010000000801001200 00000001"),
            raw(3, Direction::Outbound, 9_000, "4a0000010000000401001204 00000002"),
            // The request ended with record 3: this stray completion matches nothing.
            raw(4, Direction::Outbound, 10_000, "4a0000010000000401001200 00000003"),
            // Same tag, new request.
            raw(5, Direction::Inbound, 20_000, mrd),
            // A completion in the same direction as the request does not answer it.
            raw(6, Direction::Inbound, 21_000, "4a0000010000000801001200 00000004"),
        ];
        let shown: Vec<ShownRecord> = records.iter().map(|r| analyzer.record(r)).collect();
        let matched: Vec<(Option<u64>, Option<u64>)> =
            shown.iter().map(|r| (r.request_record, r.latency_ns)).collect();
        assert_eq!(
            matched,
            [(None, None), (Some(1), Some(2)), (Some(1), Some(8)), (None, None), (None, None), (None, None)]
        );
        assert_eq!(shown[1].request_address, Some(0x1000));
    }

    #[test]
    fn nettlp_latency_wraps_with_the_32_bit_tick_counter() {
        assert_eq!(latency_ns((1, u64::from(u32::MAX)), (1, 1)), Some(2 * 4));
        assert_eq!(latency_ns((0, 5_000), (0, 4_000)), Some(0));
        assert_eq!(latency_ns((0, 5_000), (2, 9_000)), None);
    }
}

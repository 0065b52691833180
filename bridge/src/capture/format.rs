//! The capture file's record layouts (see `docs/capture-format.md`): the pseudo-headers in front
//! of TLP and vfio-user records, as typed views with `Repr`s (parse/emit), plus the pcapng
//! constants the writer and the readers share.

use crate::engine::{BridgeError, Result};

/// LINKTYPE_USER0: interface 0, one TLP per record behind a [`TlpHeaderRepr`].
pub const LINKTYPE_TLP: u32 = 147;
/// LINKTYPE_USER1: interface 1, one vfio-user message per record behind a [`VfioUserHeaderRepr`].
pub const LINKTYPE_VFIO_USER: u32 = 148;
/// LINKTYPE_ETHERNET: NetTLP captures (Ethernet/IPv4/UDP/NetTLP header/TLP).
pub const LINKTYPE_ETHERNET: u32 = 1;

/// Interface ids in files the bridge writes.
pub const INTERFACE_TLP: u32 = 0;
pub const INTERFACE_VFIO_USER: u32 = 1;

/// The pseudo-header format version both layouts start with.
pub const FORMAT_VERSION: u8 = 1;

/// `if_tsresol` of both interfaces: 10^-9 s (the writer stamps records with wall-clock ns).
pub const TS_RESOLUTION_NS: u8 = 9;

/// Which way a record went, as seen by the bridge. The values are the pcapng `epb_flags`
/// direction bits (01 inbound, 10 outbound), also used in the pseudo-headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// To the bridge: from the root port (TLP) or from the vfio-user server.
    Inbound = 1,
    /// From the bridge: to the root port (TLP) or to the vfio-user server.
    Outbound = 2,
}

impl Direction {
    pub fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            1 => Some(Direction::Inbound),
            2 => Some(Direction::Outbound),
            _ => None,
        }
    }

    pub fn bits(self) -> u8 {
        self as u8
    }

    /// `"in"` or `"out"`.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Inbound => "in",
            Direction::Outbound => "out",
        }
    }

    pub fn opposite(self) -> Self {
        match self {
            Direction::Inbound => Direction::Outbound,
            Direction::Outbound => Direction::Inbound,
        }
    }
}

/// Per-record TLP flags (pseudo-header bytes 4..6, big-endian).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TlpFlags {
    /// The bridge rejected the TLP (it did not parse or broke a spec rule) and dropped it.
    pub malformed: bool,
    /// EP (poisoned) was set.
    pub poisoned: bool,
    /// The link layer sent or received this TLP again (a link that retransmits reports it).
    pub retransmitted: bool,
    /// `link_time_ps` counts simulated time (the link is a simulator), not wall time.
    pub simulated_time: bool,
}

pub mod tlp_flag_bits {
    pub const MALFORMED: u16 = 1 << 0;
    pub const POISONED: u16 = 1 << 1;
    pub const RETRANSMITTED: u16 = 1 << 2;
    pub const SIMULATED_TIME: u16 = 1 << 3;
}

impl TlpFlags {
    pub fn bits(self) -> u16 {
        use tlp_flag_bits::*;
        let mut bits = 0;
        for (set, bit) in [
            (self.malformed, MALFORMED),
            (self.poisoned, POISONED),
            (self.retransmitted, RETRANSMITTED),
            (self.simulated_time, SIMULATED_TIME),
        ] {
            if set {
                bits |= bit;
            }
        }
        bits
    }

    /// Unknown bits are ignored (a newer writer may define them).
    pub fn from_bits(bits: u16) -> Self {
        use tlp_flag_bits::*;
        TlpFlags {
            malformed: bits & MALFORMED != 0,
            poisoned: bits & POISONED != 0,
            retransmitted: bits & RETRANSMITTED != 0,
            simulated_time: bits & SIMULATED_TIME != 0,
        }
    }

    /// Names of the set flags, in bit order: "malformed", "poisoned", "retransmitted",
    /// "simulated-time".
    pub fn names(self) -> Vec<&'static str> {
        let mut names = Vec::new();
        for (set, name) in [
            (self.malformed, "malformed"),
            (self.poisoned, "poisoned"),
            (self.retransmitted, "retransmitted"),
            (self.simulated_time, "simulated-time"),
        ] {
            if set {
                names.push(name);
            }
        }
        names
    }
}

/// Byte ranges of the TLP pseudo-header.
pub mod tlp_header {
    pub const VERSION: usize = 0;
    pub const HEADER_LEN: usize = 1;
    pub const DIRECTION: usize = 2;
    pub const LINK_ID: usize = 3;
    pub const FLAGS: std::ops::Range<usize> = 4..6;
    pub const RESERVED: std::ops::Range<usize> = 6..8;
    pub const LINK_TIME: std::ops::Range<usize> = 8..16;
    /// Length of a version-1 header; the TLP starts here.
    pub const LEN: usize = 16;
}

/// Byte ranges of the vfio-user pseudo-header.
pub mod vfio_user_header {
    pub const VERSION: usize = 0;
    pub const HEADER_LEN: usize = 1;
    pub const DIRECTION: usize = 2;
    pub const SOCKET: usize = 3;
    pub const FDS: usize = 4;
    pub const RESERVED: std::ops::Range<usize> = 5..8;
    /// Length of a version-1 header; the message starts here.
    pub const LEN: usize = 8;
}

/// The TLP pseudo-header's meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlpHeaderRepr {
    pub direction: Direction,
    pub link_id: u8,
    pub flags: TlpFlags,
    /// Picoseconds since the link started, on the link's clock (simulated when
    /// `flags.simulated_time`).
    pub link_time_ps: u64,
}

fn bad(what: String) -> BridgeError {
    BridgeError::CaptureRecord(what)
}

/// Checks version and header length; returns the header length (where the body starts).
fn check_prefix(record: &[u8], min_len: usize, what: &str) -> Result<usize> {
    let (Some(&version), Some(&header_len)) = (record.first(), record.get(1)) else {
        return Err(bad(format!("{what} record of {} bytes has no pseudo-header", record.len())));
    };
    if version != FORMAT_VERSION {
        return Err(bad(format!(
            "{what} pseudo-header version {version}; this reader knows {FORMAT_VERSION}"
        )));
    }
    let header_len = usize::from(header_len);
    if header_len < min_len || header_len > record.len() {
        return Err(bad(format!(
            "{what} pseudo-header length {header_len} (record {} bytes, at least {min_len} expected)",
            record.len()
        )));
    }
    Ok(header_len)
}

impl TlpHeaderRepr {
    /// Parses the pseudo-header of a record; returns it and the TLP bytes behind it. A longer
    /// header (a later minor extension) is skipped using its length byte.
    pub fn parse(record: &[u8]) -> Result<(Self, &[u8])> {
        let header_len = check_prefix(record, tlp_header::LEN, "TLP")?;
        let byte = |i: usize| record.get(i).copied().unwrap_or(0);
        let direction = Direction::from_bits(byte(tlp_header::DIRECTION)).ok_or_else(|| {
            bad(format!("TLP record direction {} is neither 1 nor 2", byte(tlp_header::DIRECTION)))
        })?;
        let flags = u16::from_be_bytes([byte(tlp_header::FLAGS.start), byte(tlp_header::FLAGS.start + 1)]);
        let mut time = [0u8; 8];
        time.copy_from_slice(record.get(tlp_header::LINK_TIME).unwrap_or(&[0; 8]));
        let repr = TlpHeaderRepr {
            direction,
            link_id: byte(tlp_header::LINK_ID),
            flags: TlpFlags::from_bits(flags),
            link_time_ps: u64::from_be_bytes(time),
        };
        Ok((repr, record.get(header_len..).unwrap_or(&[])))
    }

    /// Appends the 16-byte header to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.push(FORMAT_VERSION);
        out.push(tlp_header::LEN as u8);
        out.push(self.direction.bits());
        out.push(self.link_id);
        out.extend_from_slice(&self.flags.bits().to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.link_time_ps.to_be_bytes());
    }
}

/// Which vfio-user socket a message used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VfioSocket {
    Main = 0,
    Twin = 1,
}

impl VfioSocket {
    pub fn name(self) -> &'static str {
        match self {
            VfioSocket::Main => "main",
            VfioSocket::Twin => "twin",
        }
    }
}

/// The vfio-user pseudo-header's meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VfioUserHeaderRepr {
    pub direction: Direction,
    pub socket: VfioSocket,
    /// File descriptors that travelled with the message (SCM_RIGHTS; not captured), at most 255.
    pub fds: u8,
}

impl VfioUserHeaderRepr {
    /// Parses the pseudo-header; returns it and the message bytes behind it.
    pub fn parse(record: &[u8]) -> Result<(Self, &[u8])> {
        let header_len = check_prefix(record, vfio_user_header::LEN, "vfio-user")?;
        let byte = |i: usize| record.get(i).copied().unwrap_or(0);
        let direction = Direction::from_bits(byte(vfio_user_header::DIRECTION)).ok_or_else(|| {
            bad(format!(
                "vfio-user record direction {} is neither 1 nor 2",
                byte(vfio_user_header::DIRECTION)
            ))
        })?;
        let socket = match byte(vfio_user_header::SOCKET) {
            0 => VfioSocket::Main,
            1 => VfioSocket::Twin,
            other => {
                return Err(bad(format!("vfio-user record socket {other} is neither 0 (main) nor 1 (twin)")));
            }
        };
        let repr = VfioUserHeaderRepr { direction, socket, fds: byte(vfio_user_header::FDS) };
        Ok((repr, record.get(header_len..).unwrap_or(&[])))
    }

    /// Appends the 8-byte header to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[
            FORMAT_VERSION,
            vfio_user_header::LEN as u8,
            self.direction.bits(),
            self.socket as u8,
            self.fds,
            0,
            0,
            0,
        ]);
    }
}

/// The 6-byte NetTLP header (big-endian): u16 sequence, u32 timestamp in 4 ns ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetTlpHeaderRepr {
    pub seq: u16,
    pub tstamp: u32,
}

impl NetTlpHeaderRepr {
    pub const LEN: usize = 6;
    /// Nanoseconds per timestamp tick (the adapter's PCIe clock).
    pub const NS_PER_TICK: u64 = 4;

    pub fn parse(bytes: &[u8]) -> Option<(Self, &[u8])> {
        let header = bytes.get(..Self::LEN)?;
        let seq = u16::from_be_bytes([header[0], header[1]]);
        let tstamp = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
        Some((NetTlpHeaderRepr { seq, tstamp }, bytes.get(Self::LEN..)?))
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.tstamp.to_be_bytes());
    }
}

/// UDP ports NetTLP uses: LibTLP's 0x3000 + tag (12288..=12544 as the NetTLP Wireshark plugin
/// registers) and the adapter's memory-request port 0x4000.
pub fn is_nettlp_port(port: u16) -> bool {
    (0x3000..=0x3100).contains(&port) || port == 0x4000
}

/// Finds the UDP payload of an Ethernet II / IPv4 / UDP frame (one optional 802.1Q tag); returns
/// (source port, destination port, payload).
pub fn udp_in_ethernet(frame: &[u8]) -> Option<(u16, u16, &[u8])> {
    let mut ethertype_at = 12;
    let mut ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    if ethertype == 0x8100 {
        ethertype_at += 4;
        ethertype = u16::from_be_bytes([*frame.get(16)?, *frame.get(17)?]);
    }
    if ethertype != 0x0800 {
        return None;
    }
    let ip = frame.get(ethertype_at + 2..)?;
    let version_ihl = *ip.first()?;
    if version_ihl >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    if ihl < 20 || *ip.get(9)? != 17 {
        return None;
    }
    let total_len = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let ip = ip.get(..total_len.min(ip.len()))?;
    let udp = ip.get(ihl..)?;
    let src = u16::from_be_bytes([*udp.first()?, *udp.get(1)?]);
    let dst = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    let udp_len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    if udp_len < 8 {
        return None;
    }
    let payload = udp.get(8..udp_len.min(udp.len()))?;
    Some((src, dst, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlp_header_layout_is_exact() {
        let repr = TlpHeaderRepr {
            direction: Direction::Outbound,
            link_id: 3,
            flags: TlpFlags { malformed: true, simulated_time: true, ..TlpFlags::default() },
            link_time_ps: 0x0102_0304_0506_0708,
        };
        let mut out = Vec::new();
        repr.emit(&mut out);
        assert_eq!(out, [1, 16, 2, 3, 0x00, 0x09, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        out.extend_from_slice(&[0xaa, 0xbb]);
        let (parsed, body) = TlpHeaderRepr::parse(&out).unwrap();
        assert_eq!(parsed, repr);
        assert_eq!(body, [0xaa, 0xbb]);
    }

    #[test]
    fn vfio_user_header_layout_is_exact() {
        let repr = VfioUserHeaderRepr { direction: Direction::Inbound, socket: VfioSocket::Twin, fds: 2 };
        let mut out = Vec::new();
        repr.emit(&mut out);
        assert_eq!(out, [1, 8, 1, 1, 2, 0, 0, 0]);
        assert_eq!(VfioUserHeaderRepr::parse(&out).unwrap(), (repr, &[][..]));
    }

    #[test]
    fn bad_pseudo_headers_are_errors() {
        assert!(TlpHeaderRepr::parse(&[]).is_err());
        assert!(TlpHeaderRepr::parse(&[2, 16, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(TlpHeaderRepr::parse(&[1, 16, 1, 0]).is_err());
        assert!(TlpHeaderRepr::parse(&[1, 16, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(VfioUserHeaderRepr::parse(&[1, 8, 1, 2, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn longer_headers_are_skipped_by_length() {
        let mut record = vec![1, 20, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 9, 9, 9, 9];
        record.extend_from_slice(&[0xcc]);
        let (repr, body) = TlpHeaderRepr::parse(&record).unwrap();
        assert_eq!(repr.link_time_ps, 7);
        assert_eq!(body, [0xcc]);
    }
}

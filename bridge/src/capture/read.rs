//! Reading capture files: pcapng (any interfaces, any `if_tsresol`) and classic pcap, into
//! plain records with times in nanoseconds.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use pcap_file::PcapError;
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::PcapNgReader;
use pcap_file::pcapng::blocks::Block;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::blocks::interface_statistics::InterfaceStatisticsOption;

use super::CaptureError;
use super::format::Direction;

/// One packet record of a capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRecord {
    /// 1-based position among the file's packet records (Wireshark's frame number).
    pub number: u64,
    /// Interface id (0 for classic pcap).
    pub interface: u32,
    pub linktype: u32,
    /// Capture timestamp in nanoseconds (since the epoch for files the bridge writes).
    pub time_ns: u64,
    pub data: Vec<u8>,
    /// Direction from `epb_flags`, when present.
    pub epb_direction: Option<Direction>,
    /// `epb_dropcount`: records lost just before this one on its interface.
    pub drop_count: Option<u64>,
}

/// What a capture file's interface description says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceInfo {
    pub linktype: u32,
    pub name: Option<String>,
    pub description: Option<String>,
    /// Raw `if_tsresol` (default 6: microseconds).
    pub tsresol: u8,
}

/// A whole capture read into memory.
#[derive(Clone, Debug, Default)]
pub struct CaptureFile {
    pub records: Vec<RawRecord>,
    pub interfaces: Vec<InterfaceInfo>,
    /// `isb_ifdrop` per interface id, from the last statistics block of each.
    pub interface_drops: Vec<(u32, u64)>,
    /// Set when the file ends inside a block (a killed writer): what the reader said.
    pub truncated: Option<String>,
}

impl CaptureFile {
    /// Drops recorded in the file: statistics blocks where present, else the per-record counts.
    pub fn dropped(&self) -> u64 {
        if !self.interface_drops.is_empty() {
            return self.interface_drops.iter().map(|(_, d)| d).sum();
        }
        self.records.iter().filter_map(|r| r.drop_count).sum()
    }
}

/// Converts a raw pcapng timestamp in `if_tsresol` units to nanoseconds.
pub fn raw_to_ns(raw: u64, tsresol: u8) -> u64 {
    let raw = u128::from(raw);
    let ns = if tsresol & 0x80 == 0 {
        let exp = u32::from(tsresol);
        if exp <= 9 { raw * 10u128.pow(9 - exp) } else { raw / 10u128.pow((exp - 9).min(38)) }
    } else {
        let shift = u32::from(tsresol & 0x7f).min(127);
        (raw * 1_000_000_000) >> shift
    };
    u64::try_from(ns).unwrap_or(u64::MAX)
}

const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

/// Reads a pcapng or pcap file.
pub fn read_capture(path: &Path) -> Result<CaptureFile, CaptureError> {
    let open =
        |path: &Path| File::open(path).map_err(|source| CaptureError::Open { path: path.to_owned(), source });
    let mut magic = [0u8; 4];
    open(path)?.read_exact(&mut magic).map_err(|e| CaptureError::NotACapture {
        path: path.to_owned(),
        detail: format!("cannot read the magic number: {e}"),
    })?;
    let file = BufReader::new(open(path)?);
    if magic == PCAPNG_MAGIC { read_pcapng(path, file) } else { read_pcap(path, file) }
}

fn truncation(e: &PcapError) -> String {
    match e {
        PcapError::IncompleteBuffer => "the file ends inside a block (the writer was killed?)".to_owned(),
        PcapError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the file ends inside a block (the writer was killed?)".to_owned()
        }
        PcapError::IoError(io) => format!("reading failed: {io}"),
        other => other.to_string(),
    }
}

fn read_pcapng(path: &Path, file: BufReader<File>) -> Result<CaptureFile, CaptureError> {
    let mut reader = PcapNgReader::new(file)
        .map_err(|e| CaptureError::NotACapture { path: path.to_owned(), detail: e.to_string() })?;
    let mut capture = CaptureFile::default();
    let corrupt = |path: &PathBuf, detail: String| CaptureError::Corrupt { path: path.clone(), detail };
    let path = path.to_owned();
    while let Some(block) = reader.next_block() {
        let block = match block {
            Ok(block) => block,
            Err(e) => {
                // Everything before the bad block is good: a killed writer leaves a partial block.
                capture.truncated = Some(truncation(&e));
                break;
            }
        };
        match block {
            Block::SectionHeader(_) => capture.interfaces.clear(),
            Block::InterfaceDescription(idb) => {
                let mut info = InterfaceInfo {
                    linktype: u32::from(idb.linktype),
                    tsresol: 6,
                    ..InterfaceInfo::default()
                };
                for option in &idb.options {
                    match option {
                        InterfaceDescriptionOption::IfName(name) => info.name = Some(name.to_string()),
                        InterfaceDescriptionOption::IfDescription(d) => {
                            info.description = Some(d.to_string())
                        }
                        InterfaceDescriptionOption::IfTsResol(r) => info.tsresol = *r,
                        _ => {}
                    }
                }
                capture.interfaces.push(info);
            }
            Block::EnhancedPacket(epb) => {
                let interface = capture.interfaces.get(epb.interface_id as usize).ok_or_else(|| {
                    corrupt(
                        &path,
                        format!("a packet names interface {} which was never described", epb.interface_id),
                    )
                })?;
                let mut record = RawRecord {
                    number: capture.records.len() as u64 + 1,
                    interface: epb.interface_id,
                    linktype: interface.linktype,
                    // pcap-file hands the raw 64-bit timestamp over as nanoseconds.
                    time_ns: raw_to_ns(
                        u64::try_from(epb.timestamp.as_nanos()).unwrap_or(u64::MAX),
                        interface.tsresol,
                    ),
                    data: epb.data.to_vec(),
                    epb_direction: None,
                    drop_count: None,
                };
                for option in &epb.options {
                    match option {
                        EnhancedPacketOption::Flags(flags) => {
                            record.epb_direction = Direction::from_bits((flags & 0x3) as u8)
                        }
                        EnhancedPacketOption::DropCount(n) => record.drop_count = Some(*n),
                        _ => {}
                    }
                }
                capture.records.push(record);
            }
            Block::SimplePacket(spb) => {
                let interface = capture.interfaces.first().ok_or_else(|| {
                    corrupt(&path, "a simple packet block before any interface description".to_owned())
                })?;
                capture.records.push(RawRecord {
                    number: capture.records.len() as u64 + 1,
                    interface: 0,
                    linktype: interface.linktype,
                    time_ns: 0,
                    data: spb.data.to_vec(),
                    epb_direction: None,
                    drop_count: None,
                });
            }
            Block::InterfaceStatistics(isb) => {
                for option in &isb.options {
                    if let InterfaceStatisticsOption::IsbIfDrop(n) = option {
                        capture.interface_drops.retain(|(i, _)| *i != isb.interface_id);
                        capture.interface_drops.push((isb.interface_id, *n));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(capture)
}

fn read_pcap(path: &Path, file: BufReader<File>) -> Result<CaptureFile, CaptureError> {
    let mut reader = PcapReader::new(file)
        .map_err(|e| CaptureError::NotACapture { path: path.to_owned(), detail: e.to_string() })?;
    let linktype = u32::from(reader.header().datalink);
    let mut capture = CaptureFile {
        interfaces: vec![InterfaceInfo { linktype, tsresol: 9, ..InterfaceInfo::default() }],
        ..CaptureFile::default()
    };
    while let Some(packet) = reader.next_packet() {
        let packet = match packet {
            Ok(packet) => packet,
            Err(e) => {
                capture.truncated = Some(truncation(&e));
                break;
            }
        };
        capture.records.push(RawRecord {
            number: capture.records.len() as u64 + 1,
            interface: 0,
            linktype,
            time_ns: u64::try_from(packet.timestamp.as_nanos()).unwrap_or(u64::MAX),
            data: packet.data.to_vec(),
            epb_direction: None,
            drop_count: None,
        });
    }
    Ok(capture)
}

#[cfg(test)]
mod tests {
    use super::raw_to_ns;

    #[test]
    fn timestamp_resolutions() {
        assert_eq!(raw_to_ns(5, 9), 5);
        assert_eq!(raw_to_ns(5, 6), 5_000);
        assert_eq!(raw_to_ns(5_000, 12), 5);
        assert_eq!(raw_to_ns(1 << 10, 0x80 | 10), 1_000_000_000);
    }
}

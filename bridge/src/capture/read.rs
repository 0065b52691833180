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

use super::format::Direction;
use crate::engine::{BridgeError, Result};

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

enum Source {
    PcapNg(Box<PcapNgReader<BufReader<File>>>),
    Pcap(Box<PcapReader<BufReader<File>>>),
}

/// Reads a pcapng or pcap file one record at a time (captures may be larger than memory).
pub struct RecordReader {
    path: PathBuf,
    source: Source,
    interfaces: Vec<InterfaceInfo>,
    interface_drops: Vec<(u32, u64)>,
    truncated: Option<String>,
    records: u64,
}

impl std::fmt::Debug for RecordReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordReader")
            .field("path", &self.path)
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

impl RecordReader {
    /// Opens `path` and reads its file header.
    pub fn open(path: &Path) -> Result<RecordReader> {
        let open = |path: &Path| {
            File::open(path).map_err(|source| BridgeError::CaptureOpen { path: path.to_owned(), source })
        };
        let mut magic = [0u8; 4];
        open(path)?.read_exact(&mut magic).map_err(|e| BridgeError::NotACapture {
            path: path.to_owned(),
            detail: format!("cannot read the magic number: {e}"),
        })?;
        let file = BufReader::new(open(path)?);
        let not_capture =
            |e: PcapError| BridgeError::NotACapture { path: path.to_owned(), detail: e.to_string() };
        let (source, interfaces) = if magic == PCAPNG_MAGIC {
            (Source::PcapNg(Box::new(PcapNgReader::new(file).map_err(not_capture)?)), Vec::new())
        } else {
            let reader = PcapReader::new(file).map_err(not_capture)?;
            let linktype = u32::from(reader.header().datalink);
            let interface = InterfaceInfo { linktype, tsresol: 9, ..InterfaceInfo::default() };
            (Source::Pcap(Box::new(reader)), vec![interface])
        };
        Ok(RecordReader {
            path: path.to_owned(),
            source,
            interfaces,
            interface_drops: Vec::new(),
            truncated: None,
            records: 0,
        })
    }

    /// Interfaces described so far.
    pub fn interfaces(&self) -> &[InterfaceInfo] {
        &self.interfaces
    }

    /// `isb_ifdrop` per interface id, from the statistics blocks read so far.
    pub fn interface_drops(&self) -> &[(u32, u64)] {
        &self.interface_drops
    }

    /// Set once the reader stopped at a block it could not read (a file cut short).
    pub fn truncated(&self) -> Option<&str> {
        self.truncated.as_deref()
    }

    /// The next packet record; `Ok(None)` at the end of the file or at a block that cannot be
    /// read (then [`RecordReader::truncated`] says why: everything before it is good).
    pub fn next_record(&mut self) -> Result<Option<RawRecord>> {
        if self.truncated.is_some() {
            return Ok(None);
        }
        loop {
            let number = self.records + 1;
            let record = match &mut self.source {
                Source::Pcap(reader) => match reader.next_packet() {
                    None => return Ok(None),
                    Some(Err(e)) => {
                        self.truncated = Some(truncation(&e));
                        return Ok(None);
                    }
                    Some(Ok(packet)) => Some(RawRecord {
                        number,
                        interface: 0,
                        linktype: self.interfaces.first().map_or(0, |i| i.linktype),
                        time_ns: u64::try_from(packet.timestamp.as_nanos()).unwrap_or(u64::MAX),
                        data: packet.data.to_vec(),
                        epb_direction: None,
                        drop_count: None,
                    }),
                },
                Source::PcapNg(reader) => match reader.next_block() {
                    None => return Ok(None),
                    Some(Err(e)) => {
                        self.truncated = Some(truncation(&e));
                        return Ok(None);
                    }
                    Some(Ok(block)) => pcapng_block(
                        block,
                        number,
                        &mut self.interfaces,
                        &mut self.interface_drops,
                        &self.path,
                    )?,
                },
            };
            if let Some(record) = record {
                self.records = number;
                return Ok(Some(record));
            }
        }
    }
}

impl Iterator for RecordReader {
    type Item = Result<RawRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

/// Applies one pcapng block; returns the packet record it holds, if any.
fn pcapng_block(
    block: Block<'_>,
    number: u64,
    interfaces: &mut Vec<InterfaceInfo>,
    interface_drops: &mut Vec<(u32, u64)>,
    path: &Path,
) -> Result<Option<RawRecord>> {
    let corrupt = |detail: String| BridgeError::CaptureCorrupt { path: path.to_owned(), detail };
    match block {
        Block::SectionHeader(_) => interfaces.clear(),
        Block::InterfaceDescription(idb) => {
            let mut info =
                InterfaceInfo { linktype: u32::from(idb.linktype), tsresol: 6, ..InterfaceInfo::default() };
            for option in &idb.options {
                match option {
                    InterfaceDescriptionOption::IfName(name) => info.name = Some(name.to_string()),
                    InterfaceDescriptionOption::IfDescription(d) => info.description = Some(d.to_string()),
                    InterfaceDescriptionOption::IfTsResol(r) => info.tsresol = *r,
                    _ => {}
                }
            }
            interfaces.push(info);
        }
        Block::EnhancedPacket(epb) => {
            let interface = interfaces.get(epb.interface_id as usize).ok_or_else(|| {
                corrupt(format!("a packet names interface {} which was never described", epb.interface_id))
            })?;
            let mut record = RawRecord {
                number,
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
            return Ok(Some(record));
        }
        Block::SimplePacket(spb) => {
            let interface = interfaces.first().ok_or_else(|| {
                corrupt("a simple packet block before any interface description".to_owned())
            })?;
            return Ok(Some(RawRecord {
                number,
                interface: 0,
                linktype: interface.linktype,
                time_ns: 0,
                data: spb.data.to_vec(),
                epb_direction: None,
                drop_count: None,
            }));
        }
        Block::InterfaceStatistics(isb) => {
            for option in &isb.options {
                if let InterfaceStatisticsOption::IsbIfDrop(n) = option {
                    interface_drops.retain(|(i, _)| *i != isb.interface_id);
                    interface_drops.push((isb.interface_id, *n));
                }
            }
        }
        _ => {}
    }
    Ok(None)
}

/// Reads a whole pcapng or pcap file into memory.
pub fn read_capture(path: &Path) -> Result<CaptureFile> {
    let mut reader = RecordReader::open(path)?;
    let mut records = Vec::new();
    while let Some(record) = reader.next_record()? {
        records.push(record);
    }
    Ok(CaptureFile {
        records,
        interfaces: reader.interfaces,
        interface_drops: reader.interface_drops,
        truncated: reader.truncated,
    })
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

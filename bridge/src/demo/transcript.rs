//! The demo's transcript and latencies, read back from the capture of the run.
//!
//! Every TLP record is classified by what it is for (enumeration, MMIO, the device's DMA,
//! interrupts); the few that tell the story are shown and runs of the rest are counted.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Serialize;
use tlp::{Body, MemOp, Tlp};

use crate::capture::Direction;
use crate::capture::show::{Content, ShownRecord, TlpRecord, TlpSource};

/// Memory writes from the device to this range are interrupts (MSI / MSI-X), not DMA.
const INTERRUPT_WINDOW: std::ops::Range<u64> = 0xfee0_0000..0xfef0_0000;

/// Back-to-back TLPs of one kind beyond this many show only the first and the last.
const LONGEST_RUN_SHOWN: usize = 6;

/// Picoseconds, shown in the unit that reads best.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimTime(pub u64);

impl fmt::Display for SimTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ps = self.0;
        if ps < 100_000_000 {
            write!(f, "{} ns", ps.div_ceil(1000))
        } else {
            write!(f, "{}.{:03} us", ps / 1_000_000, (ps / 1000) % 1000)
        }
    }
}

/// What a TLP is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Category {
    /// Configuration requests from the root port and their completions.
    Config,
    /// Root-port reads of the device's BARs and their completions.
    MmioRead,
    /// Root-port writes to the device's BARs (and IOWr completions).
    MmioWrite,
    /// The device reading host memory, and the host's completions.
    DmaRead,
    /// The device writing host memory.
    DmaWrite,
    /// MSI / MSI-X writes and INTx messages from the device.
    Interrupt,
    /// Anything else: shown in full.
    Other,
}

impl Category {
    fn label(self, completion: bool) -> &'static str {
        match (self, completion) {
            (Category::Config, false) => "config",
            (Category::Config, true) => "config cpl",
            (Category::MmioRead, false) => "MMIO read",
            (Category::MmioRead, true) => "MMIO read cpl",
            (Category::MmioWrite, false) => "MMIO write",
            (Category::MmioWrite, true) => "MMIO write cpl",
            (Category::DmaRead, false) => "DMA read",
            (Category::DmaRead, true) => "DMA read cpl",
            (Category::DmaWrite, _) => "DMA write",
            (Category::Interrupt, _) => "interrupt",
            (Category::Other, _) => "other",
        }
    }

    /// Few enough, and each telling, to show every one.
    fn show_all(self) -> bool {
        matches!(self, Category::MmioRead | Category::MmioWrite | Category::Interrupt | Category::Other)
    }
}

/// One TLP record of the capture, as the transcript sees it.
struct Item<'a> {
    record: u64,
    time_ps: u64,
    direction: Direction,
    tlp: &'a Tlp,
    category: Category,
    completion: bool,
    /// The request this completion answers (record number).
    request: Option<u64>,
}

fn classify_request(tlp: &Tlp, direction: Direction) -> Category {
    let from_root_port = direction == Direction::Inbound;
    match (&tlp.body, from_root_port) {
        (Body::Config(_), true) => Category::Config,
        (Body::Memory(m), true) if m.op == MemOp::Write => Category::MmioWrite,
        (Body::Memory(_), true) => Category::MmioRead,
        (Body::Io(io), true) => {
            if io.write {
                Category::MmioWrite
            } else {
                Category::MmioRead
            }
        }
        (Body::Memory(m), false) if m.op == MemOp::Write && INTERRUPT_WINDOW.contains(&m.address) => {
            Category::Interrupt
        }
        (Body::Memory(m), false) if m.op == MemOp::Write => Category::DmaWrite,
        (Body::Memory(_), false) => Category::DmaRead,
        (Body::Message(_), false) => Category::Interrupt,
        _ => Category::Other,
    }
}

fn items(records: &[ShownRecord]) -> Vec<Item<'_>> {
    let mut categories: HashMap<u64, Category> = HashMap::new();
    let mut out = Vec::new();
    for record in records {
        let Content::Tlp(TlpRecord { source: TlpSource::Bridge(header), tlp: Ok(tlp), .. }) = &record.content
        else {
            continue;
        };
        let completion = matches!(tlp.body, Body::Completion(_));
        let category = if completion {
            record.request_record.and_then(|n| categories.get(&n).copied()).unwrap_or(Category::Other)
        } else {
            classify_request(tlp, header.direction)
        };
        categories.insert(record.raw_number, category);
        out.push(Item {
            record: record.raw_number,
            time_ps: header.link_time_ps,
            direction: header.direction,
            tlp,
            category,
            completion,
            request: record.request_record,
        });
    }
    out
}

/// One transcript line: a TLP, or a count of the TLPs left out before the next one shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TranscriptLine {
    /// The capture record (`tlpbridge pcap show` numbering); `None` for a count line.
    pub record: Option<u64>,
    /// Link time in picoseconds (simulated).
    pub time_ps: Option<u64>,
    /// `"to-device"` (root port to device) or `"to-root-port"`.
    pub direction: Option<&'static str>,
    pub what: String,
    /// The TLP's one-line summary, or what was left out.
    pub text: String,
}

/// The key TLPs of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Transcript {
    pub lines: Vec<TranscriptLine>,
    /// TLP records in the capture, root port to device and device to root port.
    pub tlps_to_device: u64,
    pub tlps_to_root_port: u64,
}

impl Transcript {
    /// Picks the lines from an analysed capture (`capture::show::analyze`).
    pub fn from_records(records: &[ShownRecord]) -> Transcript {
        let items = items(records);
        // First and last of each (category, completion) group.
        let mut ends: BTreeMap<(Category, bool), (usize, usize)> = BTreeMap::new();
        for (i, item) in items.iter().enumerate() {
            ends.entry((item.category, item.completion)).and_modify(|(_, last)| *last = i).or_insert((i, i));
        }
        // Back-to-back runs of one group (an MSI-X table being filled) show their ends only.
        let group = |i: usize| items.get(i).map(|item| (item.category, item.completion));
        let mut run_of: Vec<(usize, usize)> = Vec::with_capacity(items.len());
        let mut start = 0;
        while start < items.len() {
            let mut end = start;
            while end + 1 < items.len() && group(end + 1) == group(start) {
                end += 1;
            }
            run_of.extend(std::iter::repeat_n((start, end), end - start + 1));
            start = end + 1;
        }
        let mut transcript = Transcript::default();
        let mut left_out: BTreeMap<&'static str, u64> = BTreeMap::new();
        let flush = |left_out: &mut BTreeMap<&'static str, u64>, lines: &mut Vec<TranscriptLine>| {
            if left_out.is_empty() {
                return;
            }
            let total: u64 = left_out.values().sum();
            let kinds: Vec<String> = left_out.iter().map(|(k, n)| format!("{k} {n}")).collect();
            lines.push(TranscriptLine {
                record: None,
                time_ps: None,
                direction: None,
                what: String::new(),
                text: format!("... {total} more ({})", kinds.join(", ")),
            });
            left_out.clear();
        };
        for (i, item) in items.iter().enumerate() {
            match item.direction {
                Direction::Inbound => transcript.tlps_to_device += 1,
                Direction::Outbound => transcript.tlps_to_root_port += 1,
            }
            let (run_start, run_end) = run_of.get(i).copied().unwrap_or((i, i));
            let long_run = run_end - run_start + 1 > LONGEST_RUN_SHOWN;
            let shown = (item.category.show_all() && (!long_run || i == run_start || i == run_end))
                || ends
                    .get(&(item.category, item.completion))
                    .is_some_and(|(first, last)| i == *first || i == *last);
            if !shown {
                *left_out.entry(item.tlp.kind_name()).or_default() += 1;
                continue;
            }
            flush(&mut left_out, &mut transcript.lines);
            transcript.lines.push(TranscriptLine {
                record: Some(item.record),
                time_ps: Some(item.time_ps),
                direction: Some(match item.direction {
                    Direction::Inbound => "to-device",
                    Direction::Outbound => "to-root-port",
                }),
                what: item.category.label(item.completion).to_owned(),
                text: item.tlp.to_string(),
            });
        }
        flush(&mut left_out, &mut transcript.lines);
        transcript
    }

    /// (root port to device, device to root port) TLP records.
    pub fn tlp_counts(&self) -> (u64, u64) {
        (self.tlps_to_device, self.tlps_to_root_port)
    }
}

impl fmt::Display for Transcript {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.lines {
            match (line.time_ps, line.direction) {
                (Some(ps), Some(direction)) => {
                    let arrow = if direction == "to-device" { "->" } else { "<-" };
                    writeln!(
                        f,
                        "  {:>5}.{:03} us {arrow} {:<13} {}",
                        ps / 1_000_000,
                        (ps / 1000) % 1000,
                        line.what,
                        line.text
                    )?;
                }
                _ => writeln!(f, "  {:>12} {}", "", line.text)?,
            }
        }
        Ok(())
    }
}

/// Min, mean and max of some simulated durations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LatencyRange {
    pub count: u64,
    pub min_ps: u64,
    pub mean_ps: u64,
    pub max_ps: u64,
}

impl LatencyRange {
    fn of(samples: &[u64]) -> Option<LatencyRange> {
        let count = u64::try_from(samples.len()).ok().filter(|n| *n > 0)?;
        let total: u128 = samples.iter().map(|s| u128::from(*s)).sum();
        Some(LatencyRange {
            count,
            min_ps: samples.iter().copied().min()?,
            mean_ps: u64::try_from(total / u128::from(count)).unwrap_or(u64::MAX),
            max_ps: samples.iter().copied().max()?,
        })
    }
}

impl fmt::Display for LatencyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count == 1 {
            write!(f, "{}", SimTime(self.min_ps))
        } else {
            write!(
                f,
                "min {} / mean {} / max {} ({} samples)",
                SimTime(self.min_ps),
                SimTime(self.mean_ps),
                SimTime(self.max_ps),
                self.count
            )
        }
    }
}

/// Latencies in simulated time, measured on the link (capture timestamps).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Latencies {
    /// Root-port MRd/IORd to its completion.
    pub mmio_read: Option<LatencyRange>,
    /// Device DMA MRd to its last completion.
    pub dma_read: Option<LatencyRange>,
    /// The last root-port write before each interrupt (the doorbell) to the interrupt.
    pub doorbell_to_interrupt: Option<LatencyRange>,
    /// First DMA MRd to last DMA MWr.
    pub dma_copy: Option<LatencyRange>,
}

impl Latencies {
    pub fn from_records(records: &[ShownRecord]) -> Latencies {
        let items = items(records);
        let times: HashMap<u64, u64> = items.iter().map(|i| (i.record, i.time_ps)).collect();
        let mut mmio = Vec::new();
        let mut dma_done: BTreeMap<u64, u64> = BTreeMap::new();
        let mut doorbell = Vec::new();
        let mut last_write: Option<u64> = None;
        let (mut first_dma_read, mut last_dma_write) = (None, None);
        for item in &items {
            let request_time = item.request.and_then(|n| times.get(&n).copied());
            match (item.category, item.completion) {
                (Category::MmioRead, true) => {
                    if let Some(t) = request_time {
                        mmio.push(item.time_ps.saturating_sub(t));
                    }
                }
                (Category::DmaRead, true) => {
                    if let (Some(n), Some(t)) = (item.request, request_time) {
                        dma_done.insert(n, item.time_ps.saturating_sub(t));
                    }
                }
                (Category::DmaRead, false) => {
                    first_dma_read.get_or_insert(item.time_ps);
                }
                (Category::DmaWrite, false) => last_dma_write = Some(item.time_ps),
                (Category::MmioWrite, false) => last_write = Some(item.time_ps),
                (Category::Interrupt, false) => {
                    if let Some(t) = last_write {
                        doorbell.push(item.time_ps.saturating_sub(t));
                    }
                }
                _ => {}
            }
        }
        let dma: Vec<u64> = dma_done.into_values().collect();
        let copy = match (first_dma_read, last_dma_write) {
            (Some(a), Some(b)) if b >= a => vec![b - a],
            _ => Vec::new(),
        };
        Latencies {
            mmio_read: LatencyRange::of(&mmio),
            dma_read: LatencyRange::of(&dma),
            doorbell_to_interrupt: LatencyRange::of(&doorbell),
            dma_copy: LatencyRange::of(&copy),
        }
    }
}

impl fmt::Display for Latencies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "latencies (simulated time, on the link):")?;
        for (name, range) in [
            ("MMIO read round trip", self.mmio_read),
            ("DMA read (MRd to last CplD)", self.dma_read),
            ("doorbell to interrupt", self.doorbell_to_interrupt),
            ("DMA copy (first MRd to last MWr)", self.dma_copy),
        ] {
            match range {
                Some(range) => writeln!(f, "  {name:<33} {range}")?,
                None => writeln!(f, "  {name:<33} -")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_times_read_well() {
        assert_eq!(SimTime(1000).to_string(), "1 ns");
        assert_eq!(SimTime(1500).to_string(), "2 ns");
        assert_eq!(SimTime(123_456_789_000).to_string(), "123456.789 us");
    }

    #[test]
    fn latency_ranges_need_samples() {
        assert_eq!(LatencyRange::of(&[]), None);
        let range = LatencyRange::of(&[3000, 1000, 2000]).unwrap();
        assert_eq!((range.count, range.min_ps, range.mean_ps, range.max_ps), (3, 1000, 2000, 3000));
        assert_eq!(range.to_string(), "min 1 ns / mean 2 ns / max 3 ns (3 samples)");
    }
}

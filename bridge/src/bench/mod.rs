//! `tlpbridge bench`: the bridge's performance, each figure next to a baseline measured in the
//! same run (docs/performance.md, "End-to-end benchmark").
//!
//! Everything runs in one process on one tokio runtime: the sample device (vfio-user server on
//! a UNIX socket), the engine on a sim link (TCP over 127.0.0.1), and the load generator on the
//! simulator end of that link ([`rig`]). The baselines ([`floor`]) use the same layout with the
//! bridge replaced by a byte relay between the two sockets. Bridge and baseline blocks alternate,
//! so that drift of a shared machine hits both alike.

pub mod floor;
pub mod own_thread;
pub mod process;
pub mod rig;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::capture::{Capture, CaptureConfig};
use crate::engine::{BridgeError, EngineConfig};
use floor::{Echo, Floor, Initiator, Requester};
use rig::{BAR0, BAR2, REG_SCRATCH, Rig, SEQUENCE_PORT, bench_error};
use sim::device::DmaEngineConfig;

/// How much to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// CI-sized run: fewer samples and smaller transfers (seconds instead of about a minute).
    pub quick: bool,
    /// Worker threads of the bridge's runtime (`tlpbridge run --threads`).
    pub bridge_threads: usize,
    /// The `tlpbridge` program, run as a process of its own for the bridge's memory figures;
    /// `None` leaves them out (with a note).
    pub bridge_program: Option<PathBuf>,
    /// The sections to run; empty: all of them.
    pub sections: Vec<Section>,
}

/// A part of the report, as `tlpbridge bench --section` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    Mmio,
    Dma,
    Capture,
    Tags,
    Memory,
    Serial,
}

/// One line of the table.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    pub section: &'static str,
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    /// The same-run baseline in the same unit, if the figure has one.
    pub baseline: Option<f64>,
    /// `value / baseline`.
    pub ratio: Option<f64>,
    /// The target on the ratio, e.g. `<= 1.30`.
    pub target: Option<String>,
    pub met: Option<bool>,
}

/// Everything one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub quick: bool,
    pub rows: Vec<BenchRow>,
    /// Checks and remarks (order of posted writes, RSS samples, what was varied).
    pub notes: Vec<String>,
}

impl BenchReport {
    fn row(&mut self, section: &'static str, name: String, value: f64, unit: &'static str) {
        self.rows.push(BenchRow {
            section,
            name,
            value,
            unit,
            baseline: None,
            ratio: None,
            target: None,
            met: None,
        });
    }

    fn compared(
        &mut self,
        section: &'static str,
        name: String,
        (value, baseline): (f64, f64),
        unit: &'static str,
        target: Option<Target>,
    ) {
        let ratio = if baseline > 0.0 { value / baseline } else { f64::NAN };
        self.rows.push(BenchRow {
            section,
            name,
            value,
            unit,
            baseline: Some(baseline),
            ratio: Some(ratio),
            target: target.map(Target::label),
            met: target.map(|t| t.met(ratio)),
        });
    }

    /// The table as Markdown.
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        out.push_str("| section | figure | value | baseline | ratio | target |\n");
        out.push_str("|---|---|---:|---:|---:|---|\n");
        for row in &self.rows {
            let baseline = row.baseline.map(|b| format!("{} {}", number(b), row.unit)).unwrap_or_default();
            let ratio = row.ratio.map(|r| format!("{r:.2}")).unwrap_or_default();
            let target = match (&row.target, row.met) {
                (Some(t), Some(true)) => format!("{t} met"),
                (Some(t), _) => format!("{t} NOT met"),
                _ => String::new(),
            };
            out.push_str(&format!(
                "| {} | {} | {} {} | {} | {} | {} |\n",
                row.section,
                row.name,
                number(row.value),
                row.unit,
                baseline,
                ratio,
                target
            ));
        }
        for note in &self.notes {
            out.push_str(&format!("\n- {note}"));
        }
        out.push('\n');
        out
    }
}

/// A target on a ratio.
#[derive(Clone, Copy, Debug)]
enum Target {
    AtMost(f64),
    AtLeast(f64),
}

impl Target {
    fn label(self) -> String {
        match self {
            Target::AtMost(r) => format!("<= {r:.2}"),
            Target::AtLeast(r) => format!(">= {r:.2}"),
        }
    }

    fn met(self, ratio: f64) -> bool {
        match self {
            Target::AtMost(r) => ratio <= r,
            Target::AtLeast(r) => ratio >= r,
        }
    }
}

fn number(v: f64) -> String {
    if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") }
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort_unstable();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples.get(index).map(|d| d.as_secs_f64() * 1e6).unwrap_or(f64::NAN)
}

/// Resident set size of this process (`VmRSS`) and its peak (`VmHWM`), in KiB (0 where
/// `/proc` cannot tell).
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    rss_fields(&status).unwrap_or((0, 0))
}

/// `VmRSS` and `VmHWM` in KiB from the text of a `/proc/PID/status` file.
fn rss_fields(status: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

struct Sizes {
    rounds: usize,
    reads_per_round: usize,
    writes_per_round: usize,
    dma_bytes_per_size: usize,
    scaling_len: u32,
    scaling_copies: usize,
    soak_copies: usize,
    serial_bytes_per_size: usize,
    serial_round_trips: u32,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                rounds: 3,
                reads_per_round: 300,
                writes_per_round: 2_000,
                dma_bytes_per_size: 1 << 20,
                scaling_len: 256 << 10,
                scaling_copies: 2,
                soak_copies: 30,
                serial_bytes_per_size: 1 << 20,
                serial_round_trips: 200,
            }
        } else {
            Sizes {
                rounds: 5,
                reads_per_round: 2_000,
                writes_per_round: 20_000,
                dma_bytes_per_size: 16 << 20,
                scaling_len: 1 << 20,
                scaling_copies: 6,
                soak_copies: 200,
                serial_bytes_per_size: 8 << 20,
                serial_round_trips: 2_000,
            }
        }
    }
}

/// Runs every measurement; needs a multi-threaded tokio runtime.
pub async fn run(options: BenchOptions) -> Result<BenchReport, BridgeError> {
    let sizes = Sizes::new(options.quick);
    let mut report = BenchReport { quick: options.quick, rows: Vec::new(), notes: Vec::new() };
    report.notes.push(format!(
        "the bridge runs on a runtime of {} worker thread(s) of its own (--bridge-threads, as `tlpbridge run --threads`)",
        options.bridge_threads
    ));
    let (rss_before, _) = rss_kib();

    let wanted = |section: Section| options.sections.is_empty() || options.sections.contains(&section);
    if wanted(Section::Mmio) || wanted(Section::Dma) || wanted(Section::Capture) {
        let mut rig = Rig::start(bench_engine_config(), options.bridge_threads, "main").await?;
        if wanted(Section::Mmio) {
            mmio(&mut rig, &sizes, &mut report).await?;
        }
        if wanted(Section::Dma) {
            dma(&mut rig, &sizes, &mut report).await?;
        }
        if wanted(Section::Capture) {
            capture(&mut rig, &sizes, &mut report).await?;
        }
        let counters = rig.stop().await;
        if counters.device_timeouts + counters.completion_timeouts + counters.malformed != 0 {
            return Err(bench_error("checking the bridge's counters", format!("errors counted: {counters}")));
        }
    }
    if wanted(Section::Tags) {
        scaling(&sizes, options.bridge_threads, &mut report).await?;
    }
    if wanted(Section::Memory) {
        memory(&sizes, options.bridge_threads, rss_before, &mut report).await?;
        match &options.bridge_program {
            Some(program) => {
                bridge_process_memory(&sizes, program, options.bridge_threads, false, &mut report).await?;
                bridge_process_memory(&sizes, program, options.bridge_threads, true, &mut report).await?;
            }
            None => report
                .notes
                .push("the bridge process's own memory was not measured (no program given)".into()),
        }
    }
    if !wanted(Section::Serial) {
        return Ok(report);
    }
    serial(&sizes, &mut report).await?;
    Ok(report)
}

fn bench_engine_config() -> EngineConfig {
    EngineConfig { device_timeout: Some(Duration::from_secs(10)), ..EngineConfig::default() }
}

/// MMIO read latency and posted write rate against the socket floor.
async fn mmio(rig: &mut Rig, sizes: &Sizes, report: &mut BenchReport) -> Result<(), BridgeError> {
    let (mut bridge_lat, mut floor_lat) = (Vec::new(), Vec::new());
    let (mut bridge_rate, mut floor_rate) = (Vec::new(), Vec::new());
    let floor = Floor::start(Initiator::Host).await?;
    let mut host = floor.host.ok_or_else(|| bench_error("socket floor", "no host stream"))?;
    let mut requester = Requester::default();
    let mut sequence = 0u32;
    // Warm-up of both paths.
    for _ in 0..50 {
        rig.port.mem_read(BAR0 + REG_SCRATCH, 4).await?;
        requester.read(&mut host, 4).await?;
    }
    for _ in 0..sizes.rounds {
        for _ in 0..sizes.reads_per_round {
            let start = Instant::now();
            rig.port.mem_read(BAR0 + REG_SCRATCH, 4).await?;
            bridge_lat.push(start.elapsed());
        }
        for _ in 0..sizes.reads_per_round {
            let start = Instant::now();
            requester.read(&mut host, 4).await?;
            floor_lat.push(start.elapsed());
        }
        let start = Instant::now();
        for _ in 0..sizes.writes_per_round {
            rig.port.mem_write(BAR2 + SEQUENCE_PORT, &sequence.to_le_bytes()).await?;
            sequence = sequence.wrapping_add(1);
        }
        // A read after the writes completes only once every write has reached the device.
        rig.port.mem_read(BAR0 + REG_SCRATCH, 4).await?;
        bridge_rate.push(sizes.writes_per_round as f64 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        for _ in 0..sizes.writes_per_round {
            requester.post(&mut host, 4).await?;
        }
        requester.read(&mut host, 4).await?;
        floor_rate.push(sizes.writes_per_round as f64 / start.elapsed().as_secs_f64());
    }
    drop(host);
    let (received, out_of_order) = rig.card.sequence();
    let sent = (sizes.rounds * sizes.writes_per_round) as u64;
    if received != sent || out_of_order != 0 {
        return Err(bench_error(
            "posted MWr order check",
            format!("the device saw {received} of {sent} writes, {out_of_order} out of order"),
        ));
    }
    report.notes.push(format!(
        "posted MWr: the device received all {sent} sequence-numbered writes, none lost, none out of order"
    ));
    let samples = bridge_lat.len();
    report.compared(
        "MMIO",
        format!("MRd 4 B latency p50 ({samples} samples)"),
        (percentile(&mut bridge_lat, 0.5), percentile(&mut floor_lat, 0.5)),
        "µs",
        Some(Target::AtMost(1.3)),
    );
    report.compared(
        "MMIO",
        "MRd 4 B latency p99".into(),
        (percentile(&mut bridge_lat, 0.99), percentile(&mut floor_lat, 0.99)),
        "µs",
        None,
    );
    link_share(sizes, report).await?;
    report.compared(
        "MMIO",
        format!("posted MWr 4 B rate (median of {})", sizes.rounds),
        (median(bridge_rate), median(floor_rate)),
        "/s",
        None,
    );
    Ok(())
}

/// The sim link's share of an MMIO read: a 4-byte MRd sent through a sim link whose bridge side
/// echoes it (no engine), against the same frame (28 bytes) through a TCP echo task.
async fn link_share(sizes: &Sizes, report: &mut BenchReport) -> Result<(), BridgeError> {
    let (mut end, echo_task) = rig::link_echo().await?;
    let mut tcp = Echo::start().await?;
    let fields = tlp::split::RequestFields {
        requester: tlp::RoutingId::new(0, 0, 0),
        tc: 0,
        attr: tlp::Attr::default(),
    };
    let chunk = tlp::split::SplitChunk { address: BAR0 + REG_SCRATCH, len: 4 };
    let mrd = tlp::split::memory_read_tlp(&fields, chunk, 1, 4096)
        .map_err(|e| bench_error("building an MRd", e))?
        .to_bytes();
    let mut frame = Vec::new();
    sim::link::wire::append_tlp_frame(&mut frame, 0, &mrd);
    let mut back = vec![0u8; frame.len()];
    let (mut link_lat, mut tcp_lat) = (Vec::new(), Vec::new());
    for _ in 0..50 {
        rig::echo_round_trip(&mut end, &mrd).await?;
        tcp.round_trip(&frame, &mut back).await?;
    }
    for _ in 0..sizes.rounds {
        for _ in 0..sizes.reads_per_round {
            let start = Instant::now();
            rig::echo_round_trip(&mut end, &mrd).await?;
            link_lat.push(start.elapsed());
        }
        for _ in 0..sizes.reads_per_round {
            let start = Instant::now();
            tcp.round_trip(&frame, &mut back).await?;
            tcp_lat.push(start.elapsed());
        }
    }
    end.close().await.map_err(|e| bench_error("closing the echo sim link", e))?;
    let _ = tokio::time::timeout(Duration::from_secs(5), echo_task).await;
    tcp.stop().await;
    report.compared(
        "MMIO",
        "sim link round trip p50, TLP echoed without the engine (baseline: TCP echo task)".into(),
        (percentile(&mut link_lat, 0.5), percentile(&mut tcp_lat, 0.5)),
        "µs",
        None,
    );
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

const DMA_SIZES: [u32; 4] = [64, 4 << 10, 64 << 10, 1 << 20];
const SRC: u64 = 0;
const DST: u64 = 2 << 20;

/// DMA read and write throughput per transfer size against raw socket transfers: with the
/// card's reset MPS 128 B / MRRS 512 B, then (64 KiB and 1 MiB) with the largest sizes a host
/// programs for it, MPS 256 B (the card's maximum) and MRRS 4096 B, and last on a card that
/// supports the largest payload PCIe allows, programmed with MPS 4096 B and MRRS 4096 B.
async fn dma(rig: &mut Rig, sizes: &Sizes, report: &mut BenchReport) -> Result<(), BridgeError> {
    rig.port.fill_host(SRC as usize, 1 << 20);
    let floor = Floor::start(Initiator::Device).await?;
    let mut device = floor.device.ok_or_else(|| bench_error("socket floor", "no device stream"))?;
    let mut requester = Requester::default();
    for len in DMA_SIZES {
        dma_size(rig, &mut device, &mut requester, len, sizes, report, "").await?;
    }
    let mut tuned = Rig::start(bench_engine_config(), rig.bridge_threads, "mps256").await?;
    tuned.port.set_payload_sizes(256, 4096).await?;
    tuned.port.fill_host(SRC as usize, 1 << 20);
    for len in DMA_SIZES.into_iter().filter(|&len| len >= 64 << 10) {
        dma_size(&mut tuned, &mut device, &mut requester, len, sizes, report, ", MPS 256 MRRS 4096").await?;
    }
    tuned.stop().await;
    let card = DmaEngineConfig { max_payload_supported: 4096, ..DmaEngineConfig::default() };
    let mut largest =
        Rig::start_with_card(bench_engine_config(), card, rig.bridge_threads, "mps4096").await?;
    largest.port.set_payload_sizes(4096, 4096).await?;
    largest.port.fill_host(SRC as usize, 1 << 20);
    for len in DMA_SIZES.into_iter().filter(|&len| len >= 64 << 10) {
        dma_size(&mut largest, &mut device, &mut requester, len, sizes, report, ", MPS 4096 MRRS 4096")
            .await?;
    }
    largest.stop().await;
    Ok(())
}

/// Copies of `len` bytes by the card, blocks alternating with floor transfers of `len` bytes.
async fn dma_size(
    rig: &mut Rig,
    device: &mut tokio::net::UnixStream,
    requester: &mut Requester,
    len: u32,
    sizes: &Sizes,
    report: &mut BenchReport,
    label: &str,
) -> Result<(), BridgeError> {
    let copies = (sizes.dma_bytes_per_size / len as usize).clamp(4, 400);
    let per_round = copies.div_ceil(sizes.rounds);
    let (mut read, mut write, mut floor_read, mut floor_write) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::ZERO);
    rig.port.copy(SRC, DST, len).await?;
    if rig.port.host(SRC as usize, len as usize) != rig.port.host(DST as usize, len as usize) {
        return Err(bench_error("DMA copy check", format!("the {len}-byte copy differs from its source")));
    }
    for _ in 0..sizes.rounds {
        for _ in 0..per_round {
            let timing = rig.port.copy(SRC, DST, len).await?;
            read += timing.read;
            write += timing.write;
        }
        for _ in 0..per_round {
            let start = Instant::now();
            requester.read(device, len as usize).await?;
            floor_read += start.elapsed();
            let start = Instant::now();
            requester.write(device, len as usize).await?;
            floor_write += start.elapsed();
        }
    }
    let bytes = (per_round * sizes.rounds) as f64 * f64::from(len);
    let mib_s = |d: Duration| bytes / d.as_secs_f64() / f64::from(1u32 << 20);
    let target = if len >= 64 << 10 { Some(Target::AtLeast(0.6)) } else { None };
    report.compared(
        "DMA",
        format!("read {}{label}", size_name(len)),
        (mib_s(read), mib_s(floor_read)),
        "MiB/s",
        target,
    );
    report.compared(
        "DMA",
        format!("write {}{label}", size_name(len)),
        (mib_s(write), mib_s(floor_write)),
        "MiB/s",
        target,
    );
    // The read/write split point is when the load generator sent its last completion, but the
    // bridge may still be working through the completions then: that work shows up in "write".
    // The whole copy has no such split.
    report.compared(
        "DMA",
        format!("copy {} (read + write){label}", size_name(len)),
        (mib_s(read + write), mib_s(floor_read + floor_write)),
        "MiB/s",
        target,
    );
    Ok(())
}

fn size_name(len: u32) -> String {
    match len {
        l if l >= 1 << 20 => format!("{} MiB", l >> 20),
        l if l >= 1 << 10 => format!("{} KiB", l >> 10),
        l => format!("{l} B"),
    }
}

/// DMA read throughput with 1..256 MRds outstanding per DMA (`max_reads_per_dma`).
async fn scaling(sizes: &Sizes, threads: usize, report: &mut BenchReport) -> Result<(), BridgeError> {
    let mut first = None;
    for tags in [1usize, 4, 16, 64, 256] {
        let config = EngineConfig { max_reads_per_dma: tags, ..bench_engine_config() };
        let mut rig = Rig::start(config, threads, &format!("tags{tags}")).await?;
        rig.port.fill_host(SRC as usize, sizes.scaling_len as usize);
        rig.port.copy(SRC, DST, sizes.scaling_len).await?;
        let mut read = Duration::ZERO;
        for _ in 0..sizes.scaling_copies {
            read += rig.port.copy(SRC, DST, sizes.scaling_len).await?.read;
        }
        rig.stop().await;
        let mib_s =
            sizes.scaling_copies as f64 * f64::from(sizes.scaling_len) / read.as_secs_f64() / 1048576.0;
        let base = *first.get_or_insert(mib_s);
        report.compared(
            "tags",
            format!("DMA read {}, {tags} MRd outstanding", size_name(sizes.scaling_len)),
            (mib_s, base),
            "MiB/s",
            None,
        );
    }
    report.notes.push(
        "tag scaling varies EngineConfig::max_reads_per_dma (MRRS 512 B, 8-bit tags); the baseline is the 1-tag figure"
            .into(),
    );
    Ok(())
}

/// Capture on vs off: the same workloads on a second rig that records to a pcapng file.
async fn capture(rig: &mut Rig, sizes: &Sizes, report: &mut BenchReport) -> Result<(), BridgeError> {
    let path = std::env::temp_dir().join(format!("tlpbridge-bench-{}.pcapng", std::process::id()));
    let (handle, writer) = Capture::create(&path, CaptureConfig::default())
        .map_err(|e| bench_error("creating the capture", e))?;
    let config = EngineConfig { capture: Some(handle.clone()), ..bench_engine_config() };
    let mut on = Rig::start(config, rig.bridge_threads, "capture").await?;
    on.port.fill_host(SRC as usize, 64 << 10);
    let mut lat = (Vec::new(), Vec::new());
    let mut rate = (Vec::new(), Vec::new());
    let mut dma = (Duration::ZERO, Duration::ZERO);
    let copies = (sizes.dma_bytes_per_size >> 16).clamp(2, 64).div_ceil(sizes.rounds);
    for _ in 0..sizes.rounds {
        for (port, lat, rate, dma) in [
            (&mut rig.port, &mut lat.0, &mut rate.0, &mut dma.0),
            (&mut on.port, &mut lat.1, &mut rate.1, &mut dma.1),
        ] {
            for _ in 0..sizes.reads_per_round {
                let start = Instant::now();
                port.mem_read(BAR0 + REG_SCRATCH, 4).await?;
                lat.push(start.elapsed());
            }
            let start = Instant::now();
            for i in 0..sizes.writes_per_round {
                port.mem_write(BAR0 + REG_SCRATCH, &(i as u32).to_le_bytes()).await?;
            }
            port.mem_read(BAR0 + REG_SCRATCH, 4).await?;
            rate.push(sizes.writes_per_round as f64 / start.elapsed().as_secs_f64());
            for _ in 0..copies {
                let t = port.copy(SRC, DST, 64 << 10).await?;
                *dma += t.read + t.write;
            }
        }
    }
    on.stop().await;
    drop(handle);
    let summary = writer.finish().map_err(|e| bench_error("finishing the capture", e))?;
    let _ = std::fs::remove_file(&path);
    let within = Some(Target::AtMost(1.1));
    let within_rate = Some(Target::AtLeast(0.9));
    report.compared(
        "capture",
        "MRd latency p50, on (baseline: off)".into(),
        (percentile(&mut lat.1, 0.5), percentile(&mut lat.0, 0.5)),
        "µs",
        within,
    );
    report.compared(
        "capture",
        "posted MWr rate, on (baseline: off)".into(),
        (median(rate.1), median(rate.0)),
        "/s",
        within_rate,
    );
    report.compared(
        "capture",
        "DMA copy 64 KiB time, on (baseline: off)".into(),
        (dma.1.as_secs_f64() * 1e3, dma.0.as_secs_f64() * 1e3),
        "ms",
        within,
    );
    report.notes.push(format!(
        "capture: {} TLP records written, {} dropped",
        summary.tlp_records,
        summary.dropped()
    ));
    Ok(())
}

/// Peak RSS under the heaviest load (1 MiB copies, 256 MRds outstanding) and its growth over a
/// long run of them.
async fn memory(
    sizes: &Sizes,
    threads: usize,
    rss_before: u64,
    report: &mut BenchReport,
) -> Result<(), BridgeError> {
    let config = EngineConfig { max_reads_per_dma: 256, ..bench_engine_config() };
    let mut rig = Rig::start(config, threads, "soak").await?;
    let soaked = soak(&mut rig.port, sizes, || Ok(rss_kib())).await;
    rig.stop().await;
    report.row("memory", "process RSS before any bridge started".into(), rss_before as f64 / 1024.0, "MiB");
    report_soak(report, "process", sizes, &soaked?);
    report.notes.push(
        "\"process\" RSS is the whole bench process (load generator with 4 MiB host memory, device, bridge, floors); \
         \"bridge process\" rows are `tlpbridge run` alone, in its default settings, in a process of its own"
            .into(),
    );
    Ok(())
}

/// The heaviest load of [`memory`] (1 MiB copies, each followed by 100 MMIO reads) through
/// `tlpbridge run` as a process of its own, in its default settings (64 MRds outstanding per DMA
/// read), with or without `--pcap`: that process's peak RSS, and its RSS at the end of the run
/// against after its first tenth.
async fn bridge_process_memory(
    sizes: &Sizes,
    program: &Path,
    threads: usize,
    capture: bool,
    report: &mut BenchReport,
) -> Result<(), BridgeError> {
    let pcap = std::env::temp_dir().join(format!("tlpbridge-bench-{}-process.pcapng", std::process::id()));
    let mut args = vec!["--threads".to_owned(), threads.to_string()];
    if capture {
        args.push("--pcap".to_owned());
        args.push(pcap.display().to_string());
    }
    let name = if capture { "process-pcap" } else { "process" };
    let mut bridge = process::BridgeProcess::start(program, &args, name).await?;
    let pid = bridge.pid();
    let soaked = soak(&mut bridge.port, sizes, || process::rss_kib(pid)).await;
    let stopped = bridge.stop().await;
    let _ = std::fs::remove_file(&pcap);
    let soaked = soaked?;
    let problems = stopped?;
    let which = if capture { "bridge process with --pcap" } else { "bridge process" };
    if problems.is_empty() {
        let lost = if capture { " (no capture record lost)" } else { "" };
        report.notes.push(format!("{which}: stopped by SIGINT, exit status 0, no problem reported{lost}"));
    } else {
        report.notes.push(format!("{which} reported at exit: {problems}"));
    }
    report_soak(report, which, sizes, &soaked);
    Ok(())
}

/// What a memory soak measured, in KiB.
struct Soak {
    /// Copies made before `rss_warm` was read.
    warm: usize,
    rss_warm: u64,
    rss_end: u64,
    peak: u64,
}

/// The memory soak's load on `port`: `sizes.soak_copies` copies of 1 MiB, each after the first
/// tenth followed by 100 MMIO reads. `rss` reads (VmRSS, VmHWM) of the process measured.
async fn soak(
    port: &mut rig::LoadGen,
    sizes: &Sizes,
    rss: impl Fn() -> Result<(u64, u64), BridgeError>,
) -> Result<Soak, BridgeError> {
    port.fill_host(SRC as usize, 1 << 20);
    // The first tenth, and at least 10 copies: the heap settles over the first few.
    let warm = (sizes.soak_copies / 10 + 1).max(10);
    for _ in 0..warm {
        port.copy(SRC, DST, 1 << 20).await?;
    }
    let (rss_warm, _) = rss()?;
    for _ in warm..sizes.soak_copies {
        port.copy(SRC, DST, 1 << 20).await?;
        for _ in 0..100 {
            port.mem_read(BAR0 + REG_SCRATCH, 4).await?;
        }
    }
    if port.host(DST as usize, 1 << 20) != port.host(SRC as usize, 1 << 20) {
        return Err(bench_error("memory soak", "the last copy's destination differs from its source"));
    }
    let (rss_end, peak) = rss()?;
    Ok(Soak { warm, rss_warm, rss_end, peak })
}

fn report_soak(report: &mut BenchReport, which: &str, sizes: &Sizes, soaked: &Soak) {
    report.row("memory", format!("{which}: peak RSS (VmHWM)"), soaked.peak as f64 / 1024.0, "MiB");
    report.compared(
        "memory",
        format!("{which}: RSS after {} × 1 MiB copies (baseline: after {})", sizes.soak_copies, soaked.warm),
        (soaked.rss_end as f64 / 1024.0, soaked.rss_warm as f64 / 1024.0),
        "MiB",
        Some(Target::AtMost(1.05)),
    );
}

/// A directory in the temp directory, removed with what it holds when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The FPGA serial link over a pty pair (`fpga::measure`): payload throughput and framing
/// efficiency of MWr TLPs of 64 B, 256 B and 4 KiB, each against raw pty throughput measured just
/// before it, and the read round trip through both data-link layers against a raw 1-byte
/// ping-pong.
async fn serial(sizes: &Sizes, report: &mut BenchReport) -> Result<(), BridgeError> {
    use fpga::measure;
    let fail = |e: fpga::error::Error| bench_error("serial link over a pty", e);
    let dir = TempDir(std::env::temp_dir().join(format!("tlpbridge-bench-{}-serial", std::process::id())));
    std::fs::create_dir_all(&dir.0).map_err(|e| bench_error("serial link over a pty", e))?;
    for payload in [64usize, 256, 4096] {
        let raw = measure::raw_pty_throughput(sizes.serial_bytes_per_size).await.map_err(fail)?;
        let t = measure::throughput(&dir.0, payload, sizes.serial_bytes_per_size).await.map_err(fail)?;
        report.compared(
            "serial",
            format!("MWr {payload} B payload over a pty, payload throughput (baseline: raw pty)"),
            (t.payload_per_second / 1e6, raw / 1e6),
            "MB/s",
            None,
        );
        report.row(
            "serial",
            format!("MWr {payload} B payload: framing efficiency (payload / bytes on the wire both ways)"),
            100.0 * t.efficiency(),
            "%",
        );
    }
    let raw = measure::raw_pty_round_trip(sizes.serial_round_trips).await.map_err(fail)?;
    let rtt = measure::read_round_trip(&dir.0, sizes.serial_round_trips).await.map_err(fail)?;
    report.compared(
        "serial",
        "MRd → CplD round trip through both data-link layers (baseline: raw pty 1-byte ping-pong)".into(),
        (rtt.as_secs_f64() * 1e6, raw.as_secs_f64() * 1e6),
        "µs",
        None,
    );
    report.notes.push(
        "serial: the FPGA serial link (COBS + CRC-32 frames, ACK/NAK, credits; docs/fpga-link.md) between `fpga::open` on a pty slave and the FPGA emulator on its master, both on the bench's runtime; no faults"
            .into(),
    );
    Ok(())
}

//! What the root complex reports: enumeration results, step results, counters (`--json`).

use std::collections::BTreeMap;

use serde::Serialize;

/// Interrupt kinds the root complex tracks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IrqKind {
    Msi,
    Msix,
    /// Vector 0..=3 = INTA..INTD.
    Intx,
}

impl IrqKind {
    pub fn name(self) -> &'static str {
        match self {
            IrqKind::Msi => "MSI",
            IrqKind::Msix => "MSI-X",
            IrqKind::Intx => "INTx",
        }
    }

    pub fn vector_name(self, vector: u32) -> String {
        match (self, vector) {
            (IrqKind::Intx, 0..=3) => ["INTA", "INTB", "INTC", "INTD"][vector as usize].to_owned(),
            _ => vector.to_string(),
        }
    }
}

/// Request-to-completion latency of the root complex's own requests, in cycles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LatencyStats {
    pub count: u64,
    pub min_cycles: Option<u64>,
    pub max_cycles: Option<u64>,
    pub total_cycles: u64,
}

impl LatencyStats {
    pub fn record(&mut self, cycles: u64) {
        self.count += 1;
        self.total_cycles = self.total_cycles.saturating_add(cycles);
        self.min_cycles = Some(self.min_cycles.map_or(cycles, |m| m.min(cycles)));
        self.max_cycles = Some(self.max_cycles.map_or(cycles, |m| m.max(cycles)));
    }

    pub fn mean_cycles(&self) -> Option<u64> {
        self.total_cycles.checked_div(self.count)
    }
}

/// One BAR as enumeration assigned it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BarReport {
    pub slot: u8,
    /// `io`, `mem32` or `mem64`.
    pub kind: &'static str,
    pub prefetchable: bool,
    pub address: u64,
    pub size: u64,
}

/// The expansion ROM (assigned, decode left disabled).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RomReport {
    pub address: u64,
    pub size: u64,
}

/// A capability found in the standard or extended list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CapabilityReport {
    pub offset: u16,
    pub id: u16,
    pub name: String,
}

/// What enumeration found and programmed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Enumeration {
    /// `bb:dd.f`.
    pub bdf: String,
    pub vendor_id: u16,
    pub device_id: u16,
    pub revision_id: u8,
    /// 24-bit class code.
    pub class_code: u32,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
    pub header_type: u8,
    pub interrupt_pin: u8,
    pub bars: Vec<BarReport>,
    pub rom: Option<RomReport>,
    pub capabilities: Vec<CapabilityReport>,
    pub extended_capabilities: Vec<CapabilityReport>,
    /// Max_Payload_Size / Max_Read_Request_Size programmed (bytes), when the device has a PCI
    /// Express capability.
    pub mps: Option<u16>,
    pub mrrs: Option<u16>,
    pub extended_tags: bool,
    /// MSI vectors the device can request, and MSI-X table size.
    pub msi_vectors: Option<u8>,
    pub msi_offset: Option<u16>,
    pub msix_table_size: Option<u16>,
    pub msix_offset: Option<u16>,
    /// BAR slot and offset of the MSI-X table.
    pub msix_table_bar: Option<u8>,
    pub msix_table_offset: Option<u32>,
    /// Command register value written at the end (memory/I/O decode, bus master).
    pub command: u16,
    /// `msi`, `msix` or `none`: the interrupt mode left enabled.
    pub interrupts: &'static str,
}

/// One script step's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StepReport {
    pub line: usize,
    pub command: String,
    pub passed: bool,
    /// A value read, the cycles waited, or the failure.
    pub detail: String,
    pub start_cycle: u64,
    pub cycles: u64,
}

/// Interrupts seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IrqReport {
    pub kind: IrqKind,
    pub vector: u32,
    pub cycle: u64,
}

/// The whole run, for `--json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub passed: bool,
    /// The first failure, with its script line.
    pub error: Option<String>,
    pub enumeration: Option<Enumeration>,
    pub steps: Vec<StepReport>,
    pub tlps_sent: BTreeMap<String, u64>,
    pub tlps_received: BTreeMap<String, u64>,
    pub malformed_received: u64,
    pub unexpected_completions: u64,
    pub dma_read_requests: u64,
    pub dma_read_bytes: u64,
    pub dma_write_requests: u64,
    pub dma_write_bytes: u64,
    pub unsupported_requests: u64,
    pub latency: LatencyStats,
    pub mean_latency_cycles: Option<u64>,
    pub interrupts: Vec<IrqReport>,
    pub ps_per_cycle: u32,
    pub final_cycle: u64,
}

impl std::fmt::Display for Report {
    /// The human-readable report `tlpbridge sim rc` prints without `--json`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let simulated_ps = self.final_cycle.saturating_mul(u64::from(self.ps_per_cycle));
        writeln!(
            f,
            "{}: {} steps, final cycle {} ({} ns simulated)",
            if self.passed { "PASS" } else { "FAIL" },
            self.steps.len(),
            self.final_cycle,
            simulated_ps / 1000
        )?;
        if let Some(e) = &self.enumeration {
            writeln!(
                f,
                "device {} {:04x}:{:04x} class {:06x} subsystem {:04x}:{:04x}, MPS {} MRRS {}, interrupts {}",
                e.bdf,
                e.vendor_id,
                e.device_id,
                e.class_code,
                e.subsystem_vendor_id,
                e.subsystem_id,
                e.mps.map_or("-".to_owned(), |v| v.to_string()),
                e.mrrs.map_or("-".to_owned(), |v| v.to_string()),
                e.interrupts
            )?;
            for bar in &e.bars {
                let pf = if bar.prefetchable { " prefetchable" } else { "" };
                writeln!(
                    f,
                    "  BAR{} {}{pf} at {:#x}, {:#x} bytes",
                    bar.slot, bar.kind, bar.address, bar.size
                )?;
            }
            if let Some(rom) = &e.rom {
                writeln!(f, "  ROM at {:#x}, {:#x} bytes (decode disabled)", rom.address, rom.size)?;
            }
            let caps: Vec<String> = e
                .capabilities
                .iter()
                .chain(&e.extended_capabilities)
                .map(|c| format!("{}@{:#x}", c.name, c.offset))
                .collect();
            writeln!(f, "  capabilities: {}", if caps.is_empty() { "none".into() } else { caps.join(", ") })?;
        }
        for step in &self.steps {
            writeln!(
                f,
                "line {:>4} {} {} ({} cycles): {}",
                step.line,
                if step.passed { "ok  " } else { "FAIL" },
                step.command,
                step.cycles,
                step.detail
            )?;
        }
        let counts = |m: &BTreeMap<String, u64>| -> String {
            if m.is_empty() {
                return "none".into();
            }
            m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
        };
        writeln!(f, "TLPs sent: {}; received: {}", counts(&self.tlps_sent), counts(&self.tlps_received))?;
        writeln!(
            f,
            "DMA: {} reads ({} bytes), {} writes ({} bytes), {} unsupported; {} malformed TLPs, {} unexpected completions",
            self.dma_read_requests,
            self.dma_read_bytes,
            self.dma_write_requests,
            self.dma_write_bytes,
            self.unsupported_requests,
            self.malformed_received,
            self.unexpected_completions
        )?;
        if let (Some(min), Some(mean), Some(max)) =
            (self.latency.min_cycles, self.mean_latency_cycles, self.latency.max_cycles)
        {
            writeln!(
                f,
                "request latency: {} requests, min {min} / mean {mean} / max {max} cycles",
                self.latency.count
            )?;
        }
        if let Some(error) = &self.error {
            writeln!(f, "error: {error}")?;
        }
        Ok(())
    }
}

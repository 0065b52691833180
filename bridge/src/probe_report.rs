//! What `tlpbridge probe` prints: the data a probe gathers from a vfio-user server, and its text
//! and JSON renderings.
//!
//! The types are plain data, independent of the transports crate: the network side fills a
//! [`ProbeReport`] (negotiated version and capabilities, DEVICE_GET_INFO, every region and IRQ
//! index, the config space image) and hands it to [`render_text`] or [`render_json`]. The config
//! image is decoded with [`tlp::config_space`]; a malformed image produces error lines and
//! everything decodable is still shown. The JSON field names are documented in `docs/probe.md`.

use core::fmt::{self, Write as _};
use core::time::Duration;

use serde_json::{Value, json};
use tlp::config_space::{
    Bar, BarKind, Capability, ConfigView, DecodedCapability, ExpansionRom, ExtendedCapability, Msi, Msix,
    PciExpress, PowerManagement, VendorSpecific, interrupt_pin_name,
};

/// Region indices of a vfio-user PCI device (the kernel's `VFIO_PCI_*_REGION_INDEX`).
pub mod region_index {
    pub const BAR0: u32 = 0;
    pub const BAR5: u32 = 5;
    pub const ROM: u32 = 6;
    pub const CONFIG: u32 = 7;
    pub const VGA: u32 = 8;
}

/// IRQ indices of a vfio-user PCI device (`VFIO_PCI_*_IRQ_INDEX`).
pub mod irq_index {
    pub const INTX: u32 = 0;
    pub const MSI: u32 = 1;
    pub const MSIX: u32 = 2;
    pub const ERR: u32 = 3;
    pub const REQ: u32 = 4;
}

/// Everything a probe learned from one server.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeReport {
    /// The server's socket path, as given on the command line.
    pub server: String,
    /// Negotiated protocol version (major, minor).
    pub version: (u16, u16),
    pub capabilities: NegotiatedCaps,
    pub device: DeviceInfo,
    pub regions: Vec<RegionReport>,
    pub irqs: Vec<IrqReport>,
    /// The config space image read from the config region (index 7).
    pub config: Vec<u8>,
}

/// The server's capabilities after VERSION negotiation (defaults applied).
#[derive(Clone, Debug, PartialEq)]
pub struct NegotiatedCaps {
    pub max_msg_fds: u32,
    /// As the client keeps it: clamped to 64 MiB, so it fits in u32.
    pub max_data_xfer_size: u32,
    pub max_dma_maps: u32,
    /// Supported DMA page sizes, OR-ed together.
    pub pgsizes: u64,
    /// The twin socket was negotiated (server DMA arrives on its own socket).
    pub twin_socket: bool,
    pub write_multiple: bool,
    /// The legacy `migration` object exactly as the server sent it.
    pub migration: Option<Value>,
}

/// DEVICE_GET_INFO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Raw flags: bit 0 RESET, bit 1 PCI.
    pub flags: u32,
    pub reset_supported: bool,
    pub is_pci: bool,
    pub num_regions: u32,
    pub num_irqs: u32,
}

/// DEVICE_GET_REGION_INFO for one index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionReport {
    pub index: u32,
    /// `BAR0`..`BAR5`, `ROM`, `CONFIG`, `VGA` or `REGION<n>`; see [`region_name`].
    pub name: String,
    pub size: u64,
    pub flags: RegionFlags,
    pub caps: Vec<RegionCap>,
}

impl RegionReport {
    /// A report for region `index`, named after it.
    pub fn new(index: u32, size: u64, flags: RegionFlags, caps: Vec<RegionCap>) -> Self {
        RegionReport { index, name: region_name(index), size, flags, caps }
    }
}

/// Region flags (bit 0 READ, bit 1 WRITE, bit 2 MMAP).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionFlags {
    pub readable: bool,
    pub writable: bool,
    /// The server offered an fd to mmap the region (the bridge never maps it).
    pub mmap: bool,
}

/// One capability from a region info chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegionCap {
    /// Sparse mmap areas (cap ID 1), offsets relative to the region's mmap offset.
    SparseMmap { areas: Vec<SparseArea> },
    /// Device-specific region type (cap ID 2).
    Type { region_type: u32, subtype: u32 },
    /// Any other capability, by ID and version.
    Unknown { id: u16, version: u16 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SparseArea {
    pub offset: u64,
    pub size: u64,
}

/// DEVICE_GET_IRQ_INFO for one index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IrqReport {
    pub index: u32,
    /// `INTx`, `MSI`, `MSI-X`, `ERR`, `REQ` or `IRQ<n>`; see [`irq_name`].
    pub name: String,
    pub count: u32,
    pub flags: IrqFlags,
}

impl IrqReport {
    pub fn new(index: u32, count: u32, flags: IrqFlags) -> Self {
        IrqReport { index, name: irq_name(index), count, flags }
    }
}

/// IRQ info flags (bit 0 EVENTFD, bit 1 MASKABLE, bit 2 AUTOMASKED, bit 3 NORESIZE).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqFlags {
    pub eventfd: bool,
    pub maskable: bool,
    pub automasked: bool,
    pub noresize: bool,
}

/// The name of a vfio-user PCI region index.
pub fn region_name(index: u32) -> String {
    match index {
        region_index::BAR0..=region_index::BAR5 => format!("BAR{index}"),
        region_index::ROM => "ROM".to_owned(),
        region_index::CONFIG => "CONFIG".to_owned(),
        region_index::VGA => "VGA".to_owned(),
        _ => format!("REGION{index}"),
    }
}

/// The name of a vfio-user PCI IRQ index.
pub fn irq_name(index: u32) -> String {
    match index {
        irq_index::INTX => "INTx".to_owned(),
        irq_index::MSI => "MSI".to_owned(),
        irq_index::MSIX => "MSI-X".to_owned(),
        irq_index::ERR => "ERR".to_owned(),
        irq_index::REQ => "REQ".to_owned(),
        _ => format!("IRQ{index}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Config space decoding shared by both renderings
// ---------------------------------------------------------------------------------------------

/// The config image decoded once, with every problem found on the way.
struct DecodedConfig<'a> {
    view: ConfigView<'a>,
    bars: Vec<Bar>,
    capabilities: Vec<(Capability, Result<DecodedCapability, tlp::TlpError>)>,
    extended: Vec<ExtendedCapability>,
    /// Malformations, in the order found (BARs, standard list, extended list).
    errors: Vec<String>,
    /// Inconsistencies between the config space and the vfio-user regions/IRQs.
    warnings: Vec<String>,
}

fn decode_config<'a>(report: &'a ProbeReport) -> Result<DecodedConfig<'a>, tlp::TlpError> {
    let view = ConfigView::new(&report.config)?;
    let mut errors = Vec::new();
    let mut bars = Vec::new();
    for bar in view.bar_iter() {
        match bar {
            Ok(bar) => bars.push(bar),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let mut capabilities = Vec::new();
    for cap in view.capabilities() {
        match cap {
            Ok(cap) => {
                let decoded = cap.decode(&view);
                if let Err(e) = &decoded {
                    errors.push(e.to_string());
                }
                capabilities.push((cap, decoded));
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !view.status().capabilities_list() && view.capabilities_pointer() != 0 {
        errors.push(format!(
            "capabilities pointer is {:#04x} but the Status register's Capabilities List bit is clear; \
             the list is ignored",
            view.capabilities_pointer()
        ));
    }
    let mut extended = Vec::new();
    for cap in view.extended_capabilities() {
        match cap {
            Ok(cap) => extended.push(cap),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let mut decoded = DecodedConfig { view, bars, capabilities, extended, errors, warnings: Vec::new() };
    decoded.warnings = cross_check(report, &decoded);
    Ok(decoded)
}

impl DecodedConfig<'_> {
    fn msi(&self) -> Option<&Msi> {
        self.capabilities.iter().find_map(|(_, d)| match d {
            Ok(DecodedCapability::Msi(msi)) => Some(msi),
            _ => None,
        })
    }
    fn msix(&self) -> Option<&Msix> {
        self.capabilities.iter().find_map(|(_, d)| match d {
            Ok(DecodedCapability::Msix(msix)) => Some(msix),
            _ => None,
        })
    }
}

fn region(report: &ProbeReport, index: u32) -> Option<&RegionReport> {
    report.regions.iter().find(|r| r.index == index)
}

fn irq(report: &ProbeReport, index: u32) -> Option<&IrqReport> {
    report.irqs.iter().find(|i| i.index == index)
}

/// The vfio-user region size of BAR `slot` (sizing a live device by writing all-ones is not
/// done); `None` when the server reported no such region or a size of 0.
fn bar_size(report: &ProbeReport, slot: u8) -> Option<u64> {
    region(report, u32::from(slot)).map(|r| r.size).filter(|&s| s != 0)
}

/// Config space versus regions and IRQ indices: what a bridge would trip over.
fn cross_check(report: &ProbeReport, config: &DecodedConfig<'_>) -> Vec<String> {
    let mut warnings = Vec::new();
    for bar in &config.bars {
        if bar.address != 0 && bar_size(report, bar.slot).is_none() {
            warnings.push(format!(
                "BAR{} holds address {:#x} but the server reports no region {} (or size 0)",
                bar.slot, bar.address, bar.slot
            ));
        }
    }
    if let Some(msix) = config.msix() {
        let areas = [
            ("table", msix.table_bir, msix.table_offset, msix.table_len()),
            ("PBA", msix.pba_bir, msix.pba_offset, msix.pba_len()),
        ];
        for (what, bir, offset, len) in areas {
            if bir > 5 {
                warnings.push(format!("MSI-X {what} BIR {bir} is reserved (valid: 0-5)"));
                continue;
            }
            match bar_size(report, bir) {
                None => warnings.push(format!("MSI-X {what} is in BAR{bir}, which has no region")),
                Some(size) if u64::from(offset) + u64::from(len) > size => warnings.push(format!(
                    "MSI-X {what} at BAR{bir}+{offset:#x} ({len} bytes) runs past the end of BAR{bir} ({size:#x} bytes)"
                )),
                Some(_) => {}
            }
        }
        match irq(report, irq_index::MSIX) {
            Some(i) if i.count != u32::from(msix.control.table_size()) => warnings.push(format!(
                "MSI-X table has {} entries but the server's MSI-X IRQ index has {} vectors",
                msix.control.table_size(),
                i.count
            )),
            None => warnings
                .push("device has an MSI-X capability but the server reports no MSI-X IRQ index".to_owned()),
            Some(_) => {}
        }
    }
    if let Some(msi) = config.msi() {
        match irq(report, irq_index::MSI) {
            Some(i) if i.count != u32::from(msi.control.vectors_capable()) => warnings.push(format!(
                "MSI capability requests {} vectors but the server's MSI IRQ index has {}",
                msi.control.vectors_capable(),
                i.count
            )),
            None => warnings
                .push("device has an MSI capability but the server reports no MSI IRQ index".to_owned()),
            Some(_) => {}
        }
    }
    warnings
}

// ---------------------------------------------------------------------------------------------
// Text
// ---------------------------------------------------------------------------------------------

/// `+` or `-` after a flag name, as `lspci` prints it.
fn pm(on: bool) -> char {
    if on { '+' } else { '-' }
}

fn yes_no(on: bool) -> &'static str {
    if on { "yes" } else { "no" }
}

/// A byte count in binary units: "16 KiB", "1.5 MiB", "300 bytes".
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    // The largest unit not above `bytes`.
    let largest = UNITS
        .iter()
        .enumerate()
        .map(|(i, unit)| (1u64 << (10 * (i + 1)), *unit))
        .take_while(|(scale, _)| bytes >= *scale)
        .last();
    match largest {
        None => format!("{bytes} bytes"),
        Some((scale, unit)) if bytes % scale == 0 => format!("{} {unit}", bytes / scale),
        Some((scale, unit)) => format!("{:.1} {unit}", bytes as f64 / scale as f64),
    }
}

/// "50us", "65ms", "3.5s".
fn human_duration(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{}us", d.as_micros())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Accumulates indented lines.
struct Text(String);

impl Text {
    fn line(&mut self, indent: usize, args: fmt::Arguments<'_>) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.0, "{:indent$}{args}", "");
    }
}

/// The report as text for a terminal: protocol and device first, then regions, IRQs and the
/// config space decoded like `lspci -vv`.
pub fn render_text(report: &ProbeReport) -> String {
    let mut t = Text(String::new());
    let caps = &report.capabilities;
    t.line(0, format_args!("vfio-user server {}", report.server));
    t.line(0, format_args!("Protocol version {}.{}", report.version.0, report.version.1));
    t.line(0, format_args!("Negotiated capabilities:"));
    t.line(2, format_args!("twin socket         {}", yes_no(caps.twin_socket)));
    t.line(2, format_args!("max_msg_fds         {}", caps.max_msg_fds));
    t.line(
        2,
        format_args!(
            "max_data_xfer_size  {} ({})",
            caps.max_data_xfer_size,
            human_size(u64::from(caps.max_data_xfer_size))
        ),
    );
    t.line(2, format_args!("max_dma_maps        {}", caps.max_dma_maps));
    let pgsizes: Vec<String> =
        (0..64).filter(|bit| caps.pgsizes & (1u64 << bit) != 0).map(|bit| human_size(1u64 << bit)).collect();
    t.line(2, format_args!("pgsizes             {:#x} ({})", caps.pgsizes, pgsizes.join(", ")));
    t.line(2, format_args!("write_multiple      {}", yes_no(caps.write_multiple)));
    match &caps.migration {
        Some(m) => t.line(2, format_args!("migration           {m}")),
        None => t.line(2, format_args!("migration           none")),
    }

    let dev = &report.device;
    let mut dev_flags = Vec::new();
    if dev.reset_supported {
        dev_flags.push("RESET");
    }
    if dev.is_pci {
        dev_flags.push("PCI");
    }
    t.line(
        0,
        format_args!(
            "Device: flags {:#x} ({}), {} regions, {} IRQ indices",
            dev.flags,
            if dev_flags.is_empty() { "none".to_owned() } else { dev_flags.join(" ") },
            dev.num_regions,
            dev.num_irqs
        ),
    );

    t.line(0, format_args!("Regions:"));
    if report.regions.is_empty() {
        t.line(2, format_args!("(none)"));
    }
    for r in &report.regions {
        let mut flags = Vec::new();
        for (on, name) in [(r.flags.readable, "read"), (r.flags.writable, "write"), (r.flags.mmap, "mmap")] {
            if on {
                flags.push(name);
            }
        }
        let flags = if flags.is_empty() { "-".to_owned() } else { flags.join(",") };
        let size =
            if r.size == 0 { "unused".to_owned() } else { format!("{} ({:#x})", human_size(r.size), r.size) };
        t.line(2, format_args!("[{}] {:<8} {:<24} {}", r.index, r.name, size, flags));
        for cap in &r.caps {
            match cap {
                RegionCap::SparseMmap { areas } => {
                    let list: Vec<String> =
                        areas.iter().map(|a| format!("{:#x}+{:#x}", a.offset, a.size)).collect();
                    t.line(
                        6,
                        format_args!(
                            "sparse mmap areas: {}",
                            if list.is_empty() { "none".to_owned() } else { list.join(", ") }
                        ),
                    );
                }
                RegionCap::Type { region_type, subtype } => {
                    t.line(6, format_args!("region type {region_type:#x}, subtype {subtype:#x}"));
                }
                RegionCap::Unknown { id, version } => {
                    t.line(6, format_args!("capability id {id} version {version}"))
                }
            }
        }
    }

    t.line(0, format_args!("IRQs:"));
    if report.irqs.is_empty() {
        t.line(2, format_args!("(none)"));
    }
    for i in &report.irqs {
        let mut flags = Vec::new();
        for (on, name) in [
            (i.flags.eventfd, "eventfd"),
            (i.flags.maskable, "maskable"),
            (i.flags.automasked, "automasked"),
            (i.flags.noresize, "noresize"),
        ] {
            if on {
                flags.push(name);
            }
        }
        t.line(2, format_args!("[{}] {:<6} count {:<5} {}", i.index, i.name, i.count, flags.join(",")));
    }

    render_config_text(&mut t, report);
    t.0
}

fn render_config_text(t: &mut Text, report: &ProbeReport) {
    t.line(0, format_args!("Config space ({} bytes):", report.config.len()));
    let config = match decode_config(report) {
        Ok(c) => c,
        Err(e) => {
            t.line(2, format_args!("MALFORMED: {e}"));
            return;
        }
    };
    let v = &config.view;
    let class = v.class_code();
    t.line(
        2,
        format_args!(
            "{:04x}:{:04x} {} [{:02x}{:02x}] (prog-if {:02x}) (rev {:02x})",
            v.vendor_id(),
            v.device_id(),
            class.name().unwrap_or("Unknown class"),
            class.base,
            class.sub,
            class.prog_if,
            v.revision_id()
        ),
    );
    if let (Some(sv), Some(sd)) = (v.subsystem_vendor_id(), v.subsystem_id()) {
        t.line(2, format_args!("Subsystem: {sv:04x}:{sd:04x}"));
    }
    let ht = v.header_type();
    t.line(
        2,
        format_args!(
            "Header: {}, {}",
            ht.layout_name(),
            if ht.is_multi_function() { "multi-function" } else { "single-function" }
        ),
    );
    let cmd = v.command();
    let cmd_flags: Vec<String> = tlp::config_space::Command::FLAGS
        .iter()
        .map(|(bit, name)| format!("{name}{}", pm(cmd.0 & bit != 0)))
        .collect();
    t.line(2, format_args!("Control: {}", cmd_flags.join(" ")));
    let sta = v.status();
    let devsel = match sta.devsel_timing() {
        0 => "fast",
        1 => "medium",
        2 => "slow",
        _ => "reserved",
    };
    let sta_flags: Vec<String> = tlp::config_space::Status::FLAGS
        .iter()
        .map(|(bit, name)| format!("{name}{}", pm(sta.0 & bit != 0)))
        .collect();
    t.line(2, format_args!("Status: {} DEVSEL={devsel}", sta_flags.join(" ")));
    match interrupt_pin_name(v.interrupt_pin()) {
        Some(pin) => t.line(2, format_args!("Interrupt: pin {pin}, line {}", v.interrupt_line())),
        None if v.interrupt_pin() == 0 => t.line(2, format_args!("Interrupt: none")),
        None => t.line(2, format_args!("Interrupt: invalid pin {}", v.interrupt_pin())),
    }

    for bar in &config.bars {
        let size = bar_size(report, bar.slot);
        if bar.address == 0 && size.is_none() {
            continue; // unimplemented slot
        }
        let size =
            size.map_or_else(|| "no region".to_owned(), |s| format!("size={} ({s:#x})", human_size(s)));
        let what = match bar.kind {
            BarKind::Io => format!("I/O ports at {:#x}", bar.address),
            BarKind::Mem32 | BarKind::Mem64 => format!(
                "Memory at {:#x} ({}, {})",
                bar.address,
                if bar.kind == BarKind::Mem64 { "64-bit" } else { "32-bit" },
                if bar.prefetchable { "prefetchable" } else { "non-prefetchable" }
            ),
        };
        t.line(2, format_args!("BAR{}: {what} [{size}]", bar.slot));
    }
    if let Some(rom) = v.expansion_rom() {
        let size = region(report, region_index::ROM).map(|r| r.size).filter(|&s| s != 0);
        if rom.address != 0 || rom.enabled || size.is_some() {
            let size =
                size.map_or_else(|| "no region".to_owned(), |s| format!("size={} ({s:#x})", human_size(s)));
            t.line(
                2,
                format_args!(
                    "Expansion ROM at {:#x} [{}] [{size}]",
                    rom.address,
                    if rom.enabled { "enabled" } else { "disabled" }
                ),
            );
        }
    }

    if config.capabilities.is_empty() {
        t.line(2, format_args!("Capabilities: none"));
    } else {
        t.line(2, format_args!("Capabilities:"));
    }
    for (cap, decoded) in &config.capabilities {
        match decoded {
            Ok(d) => render_capability_text(t, cap, d),
            Err(e) => t.line(
                4,
                format_args!(
                    "[{:02x}] {}: MALFORMED: {e}",
                    cap.offset,
                    cap.name().unwrap_or("Unknown capability")
                ),
            ),
        }
    }
    if !config.extended.is_empty() {
        t.line(2, format_args!("Extended capabilities:"));
    }
    for cap in &config.extended {
        match cap.name() {
            Some(name) => t.line(4, format_args!("[{:03x} v{}] {name}", cap.offset, cap.version)),
            None => t.line(
                4,
                format_args!(
                    "[{:03x} v{}] Unknown extended capability {:#06x}",
                    cap.offset, cap.version, cap.id
                ),
            ),
        }
    }
    for e in &config.errors {
        t.line(2, format_args!("MALFORMED: {e}"));
    }
    for w in &config.warnings {
        t.line(2, format_args!("WARNING: {w}"));
    }
}

fn render_capability_text(t: &mut Text, cap: &Capability, decoded: &DecodedCapability) {
    let at = cap.offset;
    match decoded {
        DecodedCapability::PowerManagement(p) => render_pm_text(t, p),
        DecodedCapability::Msi(m) => {
            let c = m.control;
            t.line(
                4,
                format_args!(
                    "[{at:02x}] MSI: Enable{} Count={}/{} Maskable{} 64bit{}",
                    pm(c.enabled()),
                    c.vectors_enabled(),
                    c.vectors_capable(),
                    pm(c.per_vector_masking()),
                    pm(c.is_64bit())
                ),
            );
            t.line(9, format_args!("Address: {:016x}  Data: {:04x}", m.address, m.data));
            if let (Some(mask), Some(pending)) = (m.mask_bits, m.pending_bits) {
                t.line(9, format_args!("Masking: {mask:08x}  Pending: {pending:08x}"));
            }
        }
        DecodedCapability::Msix(m) => render_msix_text(t, m),
        DecodedCapability::PciExpress(p) => render_pcie_text(t, p),
        DecodedCapability::VendorSpecific(vs) => render_vendor_text(t, vs),
        DecodedCapability::Other(c) => match c.name() {
            Some(name) => t.line(4, format_args!("[{at:02x}] {name} (ID {:#04x})", c.id)),
            None => t.line(4, format_args!("[{at:02x}] Unknown capability ID {:#04x}", c.id)),
        },
    }
}

fn render_pm_text(t: &mut Text, p: &PowerManagement) {
    let c = p.capabilities;
    let s = p.control_status;
    let pme: Vec<String> = ["D0", "D1", "D2", "D3hot", "D3cold"]
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{n}{}", pm(c.pme_support() & (1 << i) != 0)))
        .collect();
    t.line(4, format_args!("[{:02x}] Power Management version {}", p.offset, c.version()));
    t.line(
        9,
        format_args!(
            "Flags: PMEClk{} DSI{} D1{} D2{} AuxCurrent={} PME({})",
            pm(c.pme_clock()),
            pm(c.device_specific_init()),
            pm(c.d1_support()),
            pm(c.d2_support()),
            c.aux_current(),
            pme.join(",")
        ),
    );
    t.line(
        9,
        format_args!(
            "Status: {} NoSoftRst{} PME-Enable{} PME{}",
            s.power_state(),
            pm(s.no_soft_reset()),
            pm(s.pme_enable()),
            pm(s.pme_status())
        ),
    );
}

fn render_msix_text(t: &mut Text, m: &Msix) {
    let c = m.control;
    t.line(
        4,
        format_args!(
            "[{:02x}] MSI-X: Enable{} Count={} Masked{}",
            m.offset,
            pm(c.enabled()),
            c.table_size(),
            pm(c.function_mask())
        ),
    );
    t.line(9, format_args!("Vector table: BAR={} offset={:08x}", m.table_bir, m.table_offset));
    t.line(9, format_args!("PBA: BAR={} offset={:08x}", m.pba_bir, m.pba_offset));
}

fn render_pcie_text(t: &mut Text, p: &PciExpress) {
    let size = |s: Option<u16>| s.map_or_else(|| "reserved".to_owned(), |b| format!("{b} bytes"));
    t.line(
        4,
        format_args!(
            "[{:02x}] Express (v{}) {}",
            p.offset,
            p.capabilities.version(),
            p.capabilities.port_type()
        ),
    );
    let dc = p.device_capabilities;
    t.line(
        9,
        format_args!(
            "DevCap: MaxPayload {}, PhantFunc {}, ExtTag{} RBE{} FLReset{}",
            size(dc.max_payload_supported()),
            dc.phantom_functions(),
            pm(dc.extended_tag_supported()),
            pm(dc.role_based_error_reporting()),
            pm(dc.flr_capable())
        ),
    );
    let ctl = p.device_control;
    t.line(
        9,
        format_args!(
            "DevCtl: MaxPayload {}, MaxReadReq {}, ExtTag{} RlxdOrd{} NoSnoop{} FLReset{}",
            size(ctl.max_payload_size()),
            size(ctl.max_read_request_size()),
            pm(ctl.extended_tag()),
            pm(ctl.relaxed_ordering()),
            pm(ctl.no_snoop()),
            pm(ctl.initiate_flr())
        ),
    );
    let sta: Vec<String> = tlp::config_space::DeviceStatus::FLAGS
        .iter()
        .map(|(bit, name)| format!("{name}{}", pm(p.device_status.0 & bit != 0)))
        .collect();
    t.line(9, format_args!("DevSta: {}", sta.join(" ")));
    let lc = p.link_capabilities;
    let aspm = match lc.aspm_support() {
        0 => "not supported",
        1 => "L0s",
        2 => "L1",
        _ => "L0s L1",
    };
    t.line(
        9,
        format_args!(
            "LnkCap: Speed {}, Width x{}, ASPM {aspm}, Port #{}",
            lc.max_link_speed(),
            lc.max_link_width(),
            lc.port_number()
        ),
    );
    let lctl = p.link_control;
    t.line(
        9,
        format_args!(
            "LnkCtl: RCB {} bytes, ASPM {}, Disabled{} CommClk{}",
            lctl.read_completion_boundary(),
            match lctl.aspm_control() {
                0 => "Disabled",
                1 => "L0s Enabled",
                2 => "L1 Enabled",
                _ => "L0s L1 Enabled",
            },
            pm(lctl.link_disable()),
            pm(lctl.common_clock())
        ),
    );
    let ls = p.link_status;
    t.line(
        9,
        format_args!(
            "LnkSta: Speed {}, Width x{}, Train{} DLActive{}",
            ls.current_link_speed(),
            ls.negotiated_link_width(),
            pm(ls.link_training()),
            pm(ls.dll_link_active())
        ),
    );
    if let Some(dc2) = p.device_capabilities_2 {
        let ranges = dc2.completion_timeout_ranges().names().concat();
        t.line(
            9,
            format_args!(
                "DevCap2: Completion Timeout: {}, TimeoutDis{} 10BitTagComp{} 10BitTagReq{} LTR{}",
                if ranges.is_empty() { "Not Supported".to_owned() } else { format!("Range {ranges}") },
                pm(dc2.completion_timeout_disable_supported()),
                pm(dc2.ten_bit_tag_completer_supported()),
                pm(dc2.ten_bit_tag_requester_supported()),
                pm(dc2.ltr_supported())
            ),
        );
    }
    if let Some(dctl2) = p.device_control_2 {
        let timeout = match dctl2.completion_timeout() {
            Some((lo, hi)) => format!("{} to {}", human_duration(lo), human_duration(hi)),
            None => format!("reserved value {:#x}", dctl2.completion_timeout_value()),
        };
        t.line(
            9,
            format_args!(
                "DevCtl2: Completion Timeout: {timeout}, TimeoutDis{} 10BitTagReq{} LTR{}",
                pm(dctl2.completion_timeout_disable()),
                pm(dctl2.ten_bit_tag_requester()),
                pm(dctl2.ltr())
            ),
        );
    }
}

fn render_vendor_text(t: &mut Text, vs: &VendorSpecific) {
    t.line(4, format_args!("[{:02x}] Vendor Specific Information: Len={:02x}", vs.offset, vs.length));
}

// ---------------------------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------------------------

/// A 64-bit address or size as the TLP JSON form writes 64-bit values (`docs/tlp-json.md`): a
/// `"0x…"` string, zero-padded to `digits` (0: as few digits as needed), exact in every JSON reader.
fn hex64(value: u64, digits: usize) -> Value {
    Value::String(tlp::json::u64_to_hex(value, digits))
}

/// Hex digits of a BAR's address: its register width.
fn bar_address_digits(kind: BarKind) -> usize {
    match kind {
        BarKind::Mem64 => 16,
        BarKind::Mem32 | BarKind::Io => 8,
    }
}

/// The report as one JSON document; the schema is in `docs/probe.md`.
pub fn render_json(report: &ProbeReport) -> Value {
    let caps = &report.capabilities;
    let dev = &report.device;
    json!({
        "server": report.server,
        "version": { "major": report.version.0, "minor": report.version.1 },
        "capabilities": {
            "max_msg_fds": caps.max_msg_fds,
            "max_data_xfer_size": caps.max_data_xfer_size,
            "max_dma_maps": caps.max_dma_maps,
            "pgsizes": hex64(caps.pgsizes, 0),
            "twin_socket": caps.twin_socket,
            "write_multiple": caps.write_multiple,
            "migration": caps.migration,
        },
        "device": {
            "flags": dev.flags,
            "reset_supported": dev.reset_supported,
            "is_pci": dev.is_pci,
            "num_regions": dev.num_regions,
            "num_irqs": dev.num_irqs,
        },
        "regions": report.regions.iter().map(region_json).collect::<Vec<_>>(),
        "irqs": report.irqs.iter().map(|i| json!({
            "index": i.index,
            "name": i.name,
            "count": i.count,
            "flags": {
                "eventfd": i.flags.eventfd,
                "maskable": i.flags.maskable,
                "automasked": i.flags.automasked,
                "noresize": i.flags.noresize,
            },
        })).collect::<Vec<_>>(),
        "config": config_json(report),
    })
}

fn region_json(r: &RegionReport) -> Value {
    let caps: Vec<Value> = r
        .caps
        .iter()
        .map(|c| match c {
            RegionCap::SparseMmap { areas } => json!({
                "kind": "sparse_mmap",
                "areas": areas
                    .iter()
                    .map(|a| json!({ "offset": hex64(a.offset, 0), "size": hex64(a.size, 0) }))
                    .collect::<Vec<_>>(),
            }),
            RegionCap::Type { region_type, subtype } => {
                json!({ "kind": "type", "region_type": region_type, "subtype": subtype })
            }
            RegionCap::Unknown { id, version } => json!({ "kind": "unknown", "id": id, "version": version }),
        })
        .collect();
    json!({
        "index": r.index,
        "name": r.name,
        "size": hex64(r.size, 0),
        "flags": { "read": r.flags.readable, "write": r.flags.writable, "mmap": r.flags.mmap },
        "caps": caps,
    })
}

fn config_json(report: &ProbeReport) -> Value {
    let raw = tlp::json::bytes_to_hex(&report.config);
    let config = match decode_config(report) {
        Ok(c) => c,
        Err(e) => {
            return json!({
                "length": report.config.len(),
                "raw": raw,
                "header": null,
                "bars": [],
                "expansion_rom": null,
                "capabilities": [],
                "extended_capabilities": [],
                "errors": [e.to_string()],
                "warnings": [],
            });
        }
    };
    let v = &config.view;
    let class = v.class_code();
    let header = json!({
        "vendor_id": v.vendor_id(),
        "device_id": v.device_id(),
        "command": v.command().0,
        "command_flags": v.command().set_flag_names(),
        "status": v.status().0,
        "status_flags": v.status().set_flag_names(),
        "revision_id": v.revision_id(),
        "class": { "base": class.base, "sub": class.sub, "prog_if": class.prog_if, "name": class.name() },
        "header_type": v.header_type().layout(),
        "multi_function": v.header_type().is_multi_function(),
        "subsystem_vendor_id": v.subsystem_vendor_id(),
        "subsystem_id": v.subsystem_id(),
        "interrupt_line": v.interrupt_line(),
        "interrupt_pin": v.interrupt_pin(),
    });
    let bars: Vec<Value> = config
        .bars
        .iter()
        .map(|b| {
            json!({
                "slot": b.slot,
                "kind": match b.kind { BarKind::Io => "io", BarKind::Mem32 => "mem32", BarKind::Mem64 => "mem64" },
                "prefetchable": b.prefetchable,
                "address": hex64(b.address, bar_address_digits(b.kind)),
                "size": bar_size(report, b.slot).map(|size| hex64(size, 0)),
            })
        })
        .collect();
    let rom = v.expansion_rom().map(|ExpansionRom { enabled, address }| {
        json!({
            "address": hex64(u64::from(address), 8),
            "enabled": enabled,
            "size": region(report, region_index::ROM).map(|r| r.size).filter(|&s| s != 0).map(|s| hex64(s, 0)),
        })
    });
    let capabilities: Vec<Value> =
        config.capabilities.iter().map(|(cap, decoded)| capability_json(cap, decoded)).collect();
    let extended: Vec<Value> = config
        .extended
        .iter()
        .map(|c| json!({ "offset": c.offset, "id": c.id, "version": c.version, "name": c.name() }))
        .collect();
    json!({
        "length": report.config.len(),
        "raw": raw,
        "header": header,
        "bars": bars,
        "expansion_rom": rom,
        "capabilities": capabilities,
        "extended_capabilities": extended,
        "errors": config.errors,
        "warnings": config.warnings,
    })
}

fn capability_json(cap: &Capability, decoded: &Result<DecodedCapability, tlp::TlpError>) -> Value {
    let mut out = json!({ "offset": cap.offset, "id": cap.id, "name": cap.name() });
    let (key, value) = match decoded {
        Err(e) => ("error", json!(e.to_string())),
        Ok(DecodedCapability::PowerManagement(p)) => (
            "pm",
            json!({
                "version": p.capabilities.version(),
                "d1_support": p.capabilities.d1_support(),
                "d2_support": p.capabilities.d2_support(),
                "pme_support": p.capabilities.pme_support_names(),
                "power_state": p.control_status.power_state().to_string(),
                "no_soft_reset": p.control_status.no_soft_reset(),
                "pme_enable": p.control_status.pme_enable(),
            }),
        ),
        Ok(DecodedCapability::Msi(m)) => (
            "msi",
            json!({
                "enabled": m.control.enabled(),
                "vectors_capable": m.control.vectors_capable(),
                "vectors_enabled": m.control.vectors_enabled(),
                "is_64bit": m.control.is_64bit(),
                "per_vector_masking": m.control.per_vector_masking(),
                "address": hex64(m.address, if m.control.is_64bit() { 16 } else { 8 }),
                "data": m.data,
                "mask_bits": m.mask_bits,
                "pending_bits": m.pending_bits,
            }),
        ),
        Ok(DecodedCapability::Msix(m)) => (
            "msix",
            json!({
                "enabled": m.control.enabled(),
                "function_mask": m.control.function_mask(),
                "table_size": m.control.table_size(),
                "table_bir": m.table_bir,
                "table_offset": m.table_offset,
                "pba_bir": m.pba_bir,
                "pba_offset": m.pba_offset,
            }),
        ),
        Ok(DecodedCapability::PciExpress(p)) => ("pcie", pcie_json(p)),
        Ok(DecodedCapability::VendorSpecific(vs)) => ("vendor_specific", json!({ "length": vs.length })),
        Ok(DecodedCapability::Other(_)) => return out,
    };
    if let Some(map) = out.as_object_mut() {
        map.insert(key.to_owned(), value);
    }
    out
}

fn pcie_json(p: &PciExpress) -> Value {
    let timeout = |d: Option<(Duration, Duration)>| {
        // At most 64 s (range D), so microseconds fit in u32.
        let us = |d: Duration| u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
        d.map(|(lo, hi)| json!({ "min_us": us(lo), "max_us": us(hi) }))
    };
    json!({
        "version": p.capabilities.version(),
        "port_type": p.capabilities.port_type().bits(),
        "port_type_name": p.capabilities.port_type().to_string(),
        "max_payload_supported": p.device_capabilities.max_payload_supported(),
        "extended_tag_supported": p.device_capabilities.extended_tag_supported(),
        "flr_capable": p.device_capabilities.flr_capable(),
        "max_payload_size": p.device_control.max_payload_size(),
        "max_read_request_size": p.device_control.max_read_request_size(),
        "extended_tag_enabled": p.device_control.extended_tag(),
        "relaxed_ordering_enabled": p.device_control.relaxed_ordering(),
        "no_snoop_enabled": p.device_control.no_snoop(),
        "max_link_speed": p.link_capabilities.max_link_speed().to_string(),
        "max_link_width": p.link_capabilities.max_link_width(),
        "link_speed": p.link_status.current_link_speed().to_string(),
        "link_width": p.link_status.negotiated_link_width(),
        "read_completion_boundary": p.link_control.read_completion_boundary(),
        "completion_timeout_ranges": p.device_capabilities_2.map(|d| d.completion_timeout_ranges().names()),
        "completion_timeout_disable_supported": p.device_capabilities_2.map(|d| d.completion_timeout_disable_supported()),
        "ten_bit_tag_completer_supported": p.device_capabilities_2.map(|d| d.ten_bit_tag_completer_supported()),
        "ten_bit_tag_requester_supported": p.device_capabilities_2.map(|d| d.ten_bit_tag_requester_supported()),
        "completion_timeout_value": p.device_control_2.map(|d| d.completion_timeout_value()),
        "completion_timeout": p.device_control_2.and_then(|d| timeout(d.completion_timeout())),
        "completion_timeout_disabled": p.device_control_2.map(|d| d.completion_timeout_disable()),
        "ten_bit_tag_requester_enabled": p.device_control_2.map(|d| d.ten_bit_tag_requester()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tlp::config_space::{
        ConfigImage, DeviceControl, LinkControl, MsiControl, MsixControl, PCIE_CONFIG_LEN, cap_id,
        ext_cap_id, header,
    };

    /// An NVMe-like PCIe function: 16 KiB 64-bit prefetchable BAR0, 256-byte I/O BAR2, a ROM,
    /// PM, 64-bit maskable MSI, MSI-X in BAR0, PCIe v2, AER and DSN.
    fn config_image() -> Vec<u8> {
        let mut img = ConfigImage::new(PCIE_CONFIG_LEN).unwrap();
        img.set_u16(header::VENDOR_ID, 0x1b36).unwrap();
        img.set_u16(header::DEVICE_ID, 0x0010).unwrap();
        img.set_u16(header::COMMAND, 0x0406).unwrap();
        img.set_u32(header::REVISION_ID, 0x0108_0202).unwrap();
        img.set_bar(&Bar { slot: 0, kind: BarKind::Mem64, prefetchable: true, address: 0x1_fe00_0000 })
            .unwrap();
        img.set_bar(&Bar { slot: 2, kind: BarKind::Io, prefetchable: false, address: 0xc000 }).unwrap();
        img.set_u16(header::SUBSYSTEM_VENDOR_ID, 0x1af4).unwrap();
        img.set_u16(header::SUBSYSTEM_ID, 0x1100).unwrap();
        img.set_u32(header::EXPANSION_ROM, 0xfd04_0001).unwrap();
        img.set_u8(header::INTERRUPT_LINE, 11).unwrap();
        img.set_u8(header::INTERRUPT_PIN, 1).unwrap();
        img.add_capability(cap_id::POWER_MANAGEMENT, &[0x03, 0xfa, 0x08, 0x00, 0x00, 0x00]).unwrap();
        let msi = MsiControl(0x0187); // enabled, 8 capable, 64-bit, maskable
        let mut body = vec![0u8; usize::from(msi.layout().struct_len()) - 2];
        body[..2].copy_from_slice(&msi.0.to_le_bytes());
        body[2..6].copy_from_slice(&0xfee0_0000u32.to_le_bytes());
        body[10..12].copy_from_slice(&0x4021u16.to_le_bytes());
        img.add_capability(cap_id::MSI, &body).unwrap();
        let msix = MsixControl(0x801f); // enabled, 32 entries
        let mut body = Vec::new();
        body.extend_from_slice(&msix.0.to_le_bytes());
        body.extend_from_slice(&0x2000u32.to_le_bytes()); // table BAR0 + 0x2000
        body.extend_from_slice(&0x3000u32.to_le_bytes()); // PBA BAR0 + 0x3000
        img.add_capability(cap_id::MSI_X, &body).unwrap();
        let mut pcie = vec![0u8; 0x3c - 2];
        pcie[0..2].copy_from_slice(&0x0002u16.to_le_bytes()); // v2 endpoint
        pcie[2..6].copy_from_slice(&0x1000_8022u32.to_le_bytes()); // DevCap: MPS 512, ext tag, FLR
        let devctl = DeviceControl(0).with_mps_code(1).with_mrrs_code(2).with_extended_tag(true);
        pcie[6..8].copy_from_slice(&devctl.0.to_le_bytes());
        pcie[10..14].copy_from_slice(&0x43u32.to_le_bytes()); // LinkCap 8GT/s x4
        pcie[14..16].copy_from_slice(&LinkControl(0).with_rcb_128(true).0.to_le_bytes());
        pcie[16..18].copy_from_slice(&0x43u16.to_le_bytes()); // LinkSta 8GT/s x4
        pcie[0x22..0x26].copy_from_slice(&0x0003_0013u32.to_le_bytes()); // DevCap2
        pcie[0x26..0x28].copy_from_slice(&0x1006u16.to_le_bytes()); // DevCtl2
        img.add_capability(cap_id::PCI_EXPRESS, &pcie).unwrap();
        img.add_capability(0x0d, &[0, 0, 0, 0, 0, 0]).unwrap(); // bridge subsystem VID, no decoder
        img.add_extended_capability(ext_cap_id::AER, 2, &[0; 0x44]).unwrap();
        img.add_extended_capability(ext_cap_id::DEVICE_SERIAL_NUMBER, 1, &[0; 8]).unwrap();
        img.add_extended_capability(0x7777, 1, &[]).unwrap();
        img.into_bytes()
    }

    fn report(config: Vec<u8>) -> ProbeReport {
        let rw = RegionFlags { readable: true, writable: true, mmap: false };
        let mut regions: Vec<RegionReport> =
            (0..9).map(|i| RegionReport::new(i, 0, RegionFlags::default(), vec![])).collect();
        regions[0] = RegionReport::new(
            0,
            0x4000,
            RegionFlags { mmap: true, ..rw },
            vec![RegionCap::SparseMmap { areas: vec![SparseArea { offset: 0, size: 0x1000 }] }],
        );
        regions[2] = RegionReport::new(2, 0x100, rw, vec![]);
        regions[6] =
            RegionReport::new(6, 0x1_0000, RegionFlags { readable: true, ..Default::default() }, vec![]);
        regions[7] = RegionReport::new(7, 0x1000, rw, vec![]);
        let eventfd = IrqFlags { eventfd: true, ..Default::default() };
        ProbeReport {
            server: "/tmp/nvme.sock".to_owned(),
            version: (0, 2),
            capabilities: NegotiatedCaps {
                max_msg_fds: 8,
                max_data_xfer_size: 1 << 20,
                max_dma_maps: 65535,
                pgsizes: 4096,
                twin_socket: true,
                write_multiple: false,
                migration: None,
            },
            device: DeviceInfo { flags: 3, reset_supported: true, is_pci: true, num_regions: 9, num_irqs: 5 },
            regions,
            irqs: vec![
                IrqReport::new(0, 1, eventfd),
                IrqReport::new(1, 8, IrqFlags { maskable: true, ..eventfd }),
                IrqReport::new(2, 32, eventfd),
                IrqReport::new(3, 1, eventfd),
                IrqReport::new(4, 1, eventfd),
            ],
            config,
        }
    }

    /// The report shown in `docs/probe.md`: the fixture with a 256-byte (PCI-sized) config space.
    fn example_report() -> ProbeReport {
        let mut r = report(config_image()[..256].to_vec());
        r.regions[7].size = 256;
        r
    }

    fn assert_has_line(text: &str, expected: &str) {
        assert!(text.lines().any(|l| l.trim() == expected), "missing line {expected:?} in:\n{text}");
    }

    /// The fenced block after `marker` in `docs/probe.md`.
    fn doc_example(marker: &str) -> String {
        let doc = include_str!("../../docs/probe.md");
        let after = &doc[doc.find(marker).unwrap()..];
        let body = &after[after.find("```").unwrap()..];
        let body = &body[body.find('\n').unwrap() + 1..];
        body[..body.find("```").unwrap()].to_owned()
    }

    #[test]
    fn docs_examples_are_what_the_renderers_print() {
        let report = example_report();
        assert_eq!(doc_example("<!-- example: probe-text"), render_text(&report));
        let documented: Value = serde_json::from_str(&doc_example("<!-- example: probe-json")).unwrap();
        assert_eq!(documented, render_json(&report));
    }

    #[test]
    fn names_of_regions_and_irqs() {
        let names: Vec<String> = (0..10).map(region_name).collect();
        assert_eq!(
            names,
            ["BAR0", "BAR1", "BAR2", "BAR3", "BAR4", "BAR5", "ROM", "CONFIG", "VGA", "REGION9"]
        );
        let names: Vec<String> = (0..6).map(irq_name).collect();
        assert_eq!(names, ["INTx", "MSI", "MSI-X", "ERR", "REQ", "IRQ5"]);
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(300), "300 bytes");
        assert_eq!(human_size(0x4000), "16 KiB");
        assert_eq!(human_size(0x18_0000), "1.5 MiB");
        assert_eq!(human_size(1 << 33), "8 GiB");
        assert_eq!(human_size(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn text_shows_protocol_device_regions_and_irqs() {
        let text = render_text(&report(config_image()));
        assert_has_line(&text, "vfio-user server /tmp/nvme.sock");
        assert_has_line(&text, "Protocol version 0.2");
        assert_has_line(&text, "twin socket         yes");
        assert_has_line(&text, "max_data_xfer_size  1048576 (1 MiB)");
        assert_has_line(&text, "pgsizes             0x1000 (4 KiB)");
        assert_has_line(&text, "Device: flags 0x3 (RESET PCI), 9 regions, 5 IRQ indices");
        assert_has_line(&text, "[0] BAR0     16 KiB (0x4000)          read,write,mmap");
        assert_has_line(&text, "sparse mmap areas: 0x0+0x1000");
        assert_has_line(&text, "[1] BAR1     unused                   -");
        assert_has_line(&text, "[7] CONFIG   4 KiB (0x1000)           read,write");
        assert_has_line(&text, "[1] MSI    count 8     eventfd,maskable");
        assert_has_line(&text, "[2] MSI-X  count 32    eventfd");
    }

    #[test]
    fn text_decodes_config_like_lspci() {
        let text = render_text(&report(config_image()));
        assert_has_line(&text, "Config space (4096 bytes):");
        assert_has_line(&text, "1b36:0010 Non-Volatile memory controller [0108] (prog-if 02) (rev 02)");
        assert_has_line(&text, "Subsystem: 1af4:1100");
        assert_has_line(&text, "Header: endpoint (type 0), single-function");
        assert_has_line(
            &text,
            "Control: I/O- Mem+ BusMaster+ SpecCycle- MemWINV- VGASnoop- ParErr- Stepping- SERR- FastB2B- DisINTx+",
        );
        assert_has_line(
            &text,
            "Status: Cap+ 66MHz- FastB2B- ParErr- >TAbort- <TAbort- <MAbort- >SERR- <PERR- INTx- DEVSEL=fast",
        );
        assert_has_line(&text, "Interrupt: pin INTA, line 11");
        assert_has_line(&text, "BAR0: Memory at 0x1fe000000 (64-bit, prefetchable) [size=16 KiB (0x4000)]");
        assert_has_line(&text, "BAR2: I/O ports at 0xc000 [size=256 bytes (0x100)]");
        assert!(!text.contains("BAR1:") && !text.contains("BAR3:"), "unused BARs listed:\n{text}");
        assert_has_line(&text, "Expansion ROM at 0xfd040000 [enabled] [size=64 KiB (0x10000)]");
        assert_has_line(&text, "[40] Power Management version 3");
        assert_has_line(&text, "Flags: PMEClk- DSI- D1+ D2- AuxCurrent=0 PME(D0+,D1+,D2+,D3hot+,D3cold+)");
        assert_has_line(&text, "Status: D0 NoSoftRst+ PME-Enable- PME-");
        assert_has_line(&text, "[48] MSI: Enable+ Count=1/8 Maskable+ 64bit+");
        assert_has_line(&text, "Address: 00000000fee00000  Data: 4021");
        assert_has_line(&text, "[60] MSI-X: Enable+ Count=32 Masked-");
        assert_has_line(&text, "Vector table: BAR=0 offset=00002000");
        assert_has_line(&text, "PBA: BAR=0 offset=00003000");
        assert_has_line(&text, "[6c] Express (v2) Endpoint");
        assert_has_line(&text, "DevCap: MaxPayload 512 bytes, PhantFunc 0, ExtTag+ RBE+ FLReset+");
        assert_has_line(
            &text,
            "DevCtl: MaxPayload 256 bytes, MaxReadReq 512 bytes, ExtTag+ RlxdOrd- NoSnoop- FLReset-",
        );
        assert_has_line(&text, "LnkCap: Speed 8GT/s, Width x4, ASPM not supported, Port #0");
        assert_has_line(&text, "LnkCtl: RCB 128 bytes, ASPM Disabled, Disabled- CommClk-");
        assert_has_line(
            &text,
            "DevCap2: Completion Timeout: Range AB, TimeoutDis+ 10BitTagComp+ 10BitTagReq+ LTR-",
        );
        assert_has_line(&text, "DevCtl2: Completion Timeout: 65ms to 210ms, TimeoutDis- 10BitTagReq+ LTR-");
        assert_has_line(&text, "[a8] Bridge Subsystem Vendor ID (ID 0x0d)");
        assert_has_line(&text, "[100 v2] Advanced Error Reporting");
        assert_has_line(&text, "[148 v1] Device Serial Number");
        assert_has_line(&text, "[154 v1] Unknown extended capability 0x7777");
        assert!(!text.contains("MALFORMED") && !text.contains("WARNING"), "{text}");
    }

    #[test]
    fn malformed_chain_is_named_and_the_rest_still_printed() {
        let mut config = config_image();
        // The PCIe capability (0x6c) points back at the MSI capability (0x48): a loop.
        config[0x6d] = 0x48;
        let text = render_text(&report(config));
        assert_has_line(
            &text,
            "MALFORMED: standard capability list is malformed: the pointer at 0x06d is 0x048, which points back \
             to a capability already visited (loop)",
        );
        assert_has_line(&text, "[6c] Express (v2) Endpoint");
        assert_has_line(&text, "[100 v2] Advanced Error Reporting");
        assert_has_line(&text, "BAR0: Memory at 0x1fe000000 (64-bit, prefetchable) [size=16 KiB (0x4000)]");
    }

    #[test]
    fn truncated_config_image_is_reported() {
        let text = render_text(&report(vec![0xff; 10]));
        assert_has_line(
            &text,
            "MALFORMED: config space image is 10 bytes; expected 64 to 4096 (256 for PCI, 4096 for PCIe)",
        );
        assert_has_line(&text, "[0] INTx   count 1     eventfd");
        let json = render_json(&report(vec![0xff; 10]));
        assert_eq!(json["config"]["header"], Value::Null);
        assert_eq!(json["config"]["raw"], "ffffffffffffffffffff");
        assert_eq!(json["config"]["errors"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn inconsistencies_between_config_and_regions_are_warned() {
        let mut r = report(config_image());
        r.regions[0].size = 0x2400; // the table (0x2000..0x2200) fits, the PBA at 0x3000 does not
        r.irqs[2].count = 16;
        let text = render_text(&r);
        assert_has_line(
            &text,
            "WARNING: MSI-X PBA at BAR0+0x3000 (8 bytes) runs past the end of BAR0 (0x2400 bytes)",
        );
        assert_has_line(
            &text,
            "WARNING: MSI-X table has 32 entries but the server's MSI-X IRQ index has 16 vectors",
        );
        let json = render_json(&r);
        assert_eq!(json["config"]["warnings"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn json_document() {
        let json = render_json(&report(config_image()));
        assert_eq!(json["server"], "/tmp/nvme.sock");
        assert_eq!(json["version"], serde_json::json!({ "major": 0, "minor": 2 }));
        assert_eq!(json["capabilities"]["twin_socket"], true);
        assert_eq!(json["capabilities"]["max_data_xfer_size"], 1048576);
        assert_eq!(json["capabilities"]["pgsizes"], "0x1000");
        assert_eq!(json["capabilities"]["migration"], Value::Null);
        assert_eq!(json["device"]["reset_supported"], true);
        assert_eq!(json["regions"].as_array().unwrap().len(), 9);
        assert_eq!(
            json["regions"][0],
            serde_json::json!({
                "index": 0, "name": "BAR0", "size": "0x4000",
                "flags": { "read": true, "write": true, "mmap": true },
                "caps": [{ "kind": "sparse_mmap", "areas": [{ "offset": "0x0", "size": "0x1000" }] }],
            })
        );
        assert_eq!(json["irqs"][2]["name"], "MSI-X");
        assert_eq!(json["irqs"][2]["count"], 32);
        assert_eq!(json["irqs"][1]["flags"]["maskable"], true);

        let config = &json["config"];
        assert_eq!(config["length"], 4096);
        assert_eq!(config["raw"].as_str().unwrap().len(), 8192);
        assert!(config["raw"].as_str().unwrap().starts_with("361b100006041000"));
        assert_eq!(config["header"]["vendor_id"], 0x1b36);
        assert_eq!(config["header"]["command_flags"], serde_json::json!(["Mem", "BusMaster", "DisINTx"]));
        assert_eq!(config["header"]["class"]["name"], "Non-Volatile memory controller");
        assert_eq!(
            config["bars"][0],
            serde_json::json!({ "slot": 0, "kind": "mem64", "prefetchable": true, "address": "0x00000001fe000000", "size": "0x4000" })
        );
        assert_eq!(config["bars"][1]["kind"], "io");
        assert_eq!(config["bars"][1]["address"], "0x0000c000");
        assert_eq!(config["bars"][1]["size"], "0x100");
        assert_eq!(config["bars"][2]["size"], Value::Null);
        assert_eq!(
            config["expansion_rom"],
            serde_json::json!({ "address": "0xfd040000", "enabled": true, "size": "0x10000" })
        );
        let caps = config["capabilities"].as_array().unwrap();
        let ids: Vec<u64> = caps.iter().map(|c| c["id"].as_u64().unwrap()).collect();
        assert_eq!(ids, [0x01, 0x05, 0x11, 0x10, 0x0d]);
        assert_eq!(caps[1]["msi"]["vectors_capable"], 8);
        assert_eq!(caps[1]["msi"]["address"], "0x00000000fee00000");
        assert_eq!(caps[1]["msi"]["mask_bits"], 0);
        assert_eq!(caps[2]["msix"]["table_size"], 32);
        assert_eq!(caps[3]["pcie"]["max_payload_size"], 256);
        assert_eq!(caps[3]["pcie"]["max_read_request_size"], 512);
        assert_eq!(caps[3]["pcie"]["read_completion_boundary"], 128);
        assert_eq!(caps[3]["pcie"]["max_link_speed"], "8GT/s");
        assert_eq!(
            caps[3]["pcie"]["completion_timeout"],
            serde_json::json!({ "min_us": 65000, "max_us": 210000 })
        );
        assert_eq!(caps[3]["pcie"]["ten_bit_tag_requester_enabled"], true);
        assert_eq!(caps[4]["name"], "Bridge Subsystem Vendor ID");
        assert!(caps[4].get("error").is_none());
        let ext = config["extended_capabilities"].as_array().unwrap();
        assert_eq!(
            ext[0],
            serde_json::json!({ "offset": 256, "id": 1, "version": 2, "name": "Advanced Error Reporting" })
        );
        assert_eq!(ext[2]["name"], Value::Null);
        assert_eq!(config["errors"], serde_json::json!([]));
        assert_eq!(config["warnings"], serde_json::json!([]));
    }

    #[test]
    fn json_keeps_64_bit_values_exact_as_hex_strings() {
        // Above 2^53, where a JSON number read as f64 is rounded.
        let high_address = 0xfedc_ba98_7654_0000u64;
        let mut config = config_image();
        // BAR0 stays a prefetchable 64-bit memory BAR (type bits 0b1100), now at `high_address`.
        config[0x10..0x14].copy_from_slice(&(high_address as u32 | 0b1100).to_le_bytes());
        config[0x14..0x18].copy_from_slice(&((high_address >> 32) as u32).to_le_bytes());
        let mut r = report(config);
        r.capabilities.pgsizes = 0xffff_ffff_ffff_f001;
        r.regions[0].size = (1 << 53) + 0x1000;
        let text = serde_json::to_string_pretty(&render_json(&r)).unwrap();
        let json: Value = serde_json::from_str(&text).unwrap();
        let read = |v: &Value| tlp::json::hex_to_u64(v.as_str().unwrap()).unwrap();
        assert_eq!(json["config"]["bars"][0]["address"], "0xfedcba9876540000");
        assert_eq!(read(&json["config"]["bars"][0]["address"]), high_address);
        assert_eq!(read(&json["config"]["bars"][0]["size"]), (1 << 53) + 0x1000);
        assert_eq!(read(&json["regions"][0]["size"]), (1 << 53) + 0x1000);
        assert_eq!(read(&json["capabilities"]["pgsizes"]), 0xffff_ffff_ffff_f001);
    }

    #[test]
    fn json_reports_a_capability_that_fails_to_decode() {
        let mut config = config_image();
        // The last capability (0xa8) now points to a 64-bit MSI at 0xf8, which needs 0x18 bytes.
        config[0xa9] = 0xf8;
        config[0xf8] = cap_id::MSI;
        config[0xfa..0xfc].copy_from_slice(&0x0180u16.to_le_bytes());
        let json = render_json(&report(config));
        let caps = json["config"]["capabilities"].as_array().unwrap();
        let last = caps.last().unwrap();
        assert_eq!(last["offset"], 0xf8);
        assert!(last["error"].as_str().unwrap().contains("MSI capability at 0x0f8 needs 24 bytes"), "{last}");
        assert_eq!(json["config"]["errors"].as_array().unwrap().len(), 1);
    }
}

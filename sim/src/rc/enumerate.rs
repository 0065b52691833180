//! Enumeration the way firmware does it: IDs, BAR sizing and assignment, capability walk,
//! MPS/MRRS, decode and bus-master enable, MSI or MSI-X.

use tlp::config_space::{
    BarKind, Command, ConfigView, DeviceControl, ExpansionRom, MsiControl, MsixControl, PCI_CONFIG_LEN,
    PCIE_CONFIG_LEN, capability_name, extended_capability_name, header, msix, pcie, size_from_probe,
};

use super::complex::{MSIX_WINDOW_OFFSET, RootComplex, rc_error};
use super::io::RootPortIo;
use super::report::{BarReport, CapabilityReport, Enumeration, RomReport};
use crate::error::Result;

/// A bump allocator for one address space.
struct Pool {
    next: u64,
    limit: u64,
    name: &'static str,
}

impl Pool {
    fn allocate(&mut self, size: u64) -> Result<u64> {
        let base = self
            .next
            .checked_next_multiple_of(size)
            .filter(|b| b.checked_add(size).is_some_and(|e| e <= self.limit));
        let base = base.ok_or_else(|| {
            rc_error(format!(
                "{} space exhausted: cannot place {size:#x} bytes at or above {:#x}",
                self.name, self.next
            ))
        })?;
        self.next = base + size;
        Ok(base)
    }
}

/// Which interrupt mode to enable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqMode {
    Msi,
    Msix,
}

impl<I: RootPortIo> RootComplex<I> {
    /// Enumerates the device: see the module docs. Leaves MSI-X enabled if the device has it,
    /// else MSI if it has that.
    pub async fn enumerate(&mut self) -> Result<Enumeration> {
        let device = self.config().device;
        let id = self
            .config_read(header::VENDOR_ID)
            .await
            .map_err(|e| rc_error(format!("no device answers configuration reads at {device}: {e}")))?;
        if id & 0xffff == 0xffff || id == 0 {
            return Err(rc_error(format!("no device at {device} (vendor ID reads {:#06x})", id & 0xffff)));
        }
        // Decode off while BARs are sized, as firmware does.
        self.config_write(header::COMMAND, 2, 0).await?;
        let header_type = ((self.config_read(header::CACHE_LINE_SIZE).await? >> 16) & 0xff) as u8;
        if header_type & 0x7f != 0 {
            return Err(rc_error(format!(
                "{device} has header layout {}; only Type 0 endpoints are enumerated",
                header_type & 0x7f
            )));
        }
        let mut mem32 =
            Pool { next: self.config().mem32_base, limit: self.config().msi_window, name: "32-bit memory" };
        let mut mem64 = Pool { next: self.config().mem64_base, limit: u64::MAX, name: "64-bit memory" };
        let mut io = Pool { next: self.config().io_base, limit: 0x1_0000, name: "I/O" };
        let mut bars = Vec::new();
        let mut slot = 0u8;
        while slot < header::TYPE0_BAR_COUNT {
            let offset = header::bar(slot);
            let original = self.config_read(offset).await?;
            let Some(kind) = BarKind::from_low_dword(original) else {
                return Err(rc_error(format!(
                    "BAR{slot} announces the reserved memory type ({original:#010x})"
                )));
            };
            if kind == BarKind::Mem64 && slot + 1 >= header::TYPE0_BAR_COUNT {
                return Err(rc_error(format!("BAR{slot} is 64-bit but is the last slot")));
            }
            self.config_write(offset, 4, u32::MAX).await?;
            let mut readback = u64::from(self.config_read(offset).await?);
            if kind == BarKind::Mem64 {
                self.config_write(offset + 4, 4, u32::MAX).await?;
                readback |= u64::from(self.config_read(offset + 4).await?) << 32;
            }
            let prefetchable = kind != BarKind::Io && original & (1 << 3) != 0;
            if let Some(size) = size_from_probe(kind, readback) {
                let address = match kind {
                    BarKind::Io => io.allocate(size)?,
                    BarKind::Mem32 => mem32.allocate(size)?,
                    BarKind::Mem64 => mem64.allocate(size)?,
                };
                self.config_write(offset, 4, address as u32).await?;
                if kind == BarKind::Mem64 {
                    self.config_write(offset + 4, 4, (address >> 32) as u32).await?;
                }
                let kind_name = match kind {
                    BarKind::Io => "io",
                    BarKind::Mem32 => "mem32",
                    BarKind::Mem64 => "mem64",
                };
                tracing::info!(slot, kind = kind_name, address, size, "rc: BAR assigned");
                bars.push(BarReport { slot, kind: kind_name, prefetchable, address, size });
            } else if kind == BarKind::Mem64 {
                self.config_write(offset + 4, 4, 0).await?;
            }
            slot += kind.slots();
        }
        self.config_write(header::EXPANSION_ROM, 4, ExpansionRom::ADDRESS_MASK).await?;
        let rom_probe = self.config_read(header::EXPANSION_ROM).await?;
        let rom = match ExpansionRom::size_from_probe(rom_probe) {
            Some(size) => {
                let address = mem32.allocate(u64::from(size))?;
                let value = ExpansionRom { enabled: false, address: address as u32 }.encode();
                self.config_write(header::EXPANSION_ROM, 4, value).await?;
                Some(RomReport { address, size: u64::from(size) })
            }
            None => None,
        };

        // The header and standard capabilities, then the extended capability headers.
        let mut image = vec![0u8; PCI_CONFIG_LEN];
        for offset in (0..PCI_CONFIG_LEN as u16).step_by(4) {
            let value = self.config_read(offset).await?;
            image[usize::from(offset)..usize::from(offset) + 4].copy_from_slice(&value.to_le_bytes());
        }
        let mut capabilities = Vec::new();
        let (pcie_offset, msi_cap, msix_cap) = {
            let view = ConfigView::new(&image).map_err(|e| rc_error(e.to_string()))?;
            for cap in view.capabilities() {
                let cap = cap.map_err(|e| rc_error(format!("capability list: {e}")))?;
                capabilities.push(CapabilityReport {
                    offset: cap.offset,
                    id: u16::from(cap.id),
                    name: capability_name(cap.id).unwrap_or("unknown").to_owned(),
                });
            }
            let caps = |e: tlp::TlpError| rc_error(e.to_string());
            (view.pci_express().map_err(caps)?, view.msi().map_err(caps)?, view.msix().map_err(caps)?)
        };
        let mut extended_capabilities = Vec::new();
        if pcie_offset.is_some() {
            let mut ext = vec![0u8; PCIE_CONFIG_LEN];
            ext[..PCI_CONFIG_LEN].copy_from_slice(&image);
            let mut at = tlp::config_space::EXTENDED_CAPABILITIES_START;
            for _ in 0..(PCIE_CONFIG_LEN - PCI_CONFIG_LEN) / 4 {
                if at < tlp::config_space::EXTENDED_CAPABILITIES_START
                    || at % 4 != 0
                    || usize::from(at) + 4 > PCIE_CONFIG_LEN
                {
                    break;
                }
                // A function that fails extended-space reads simply has no extended capabilities.
                let value = match self.config_read(at).await {
                    Ok(value) => value,
                    Err(e) => {
                        tracing::warn!(offset = at, error = %e, "rc: extended configuration space unreadable");
                        break;
                    }
                };
                ext[usize::from(at)..usize::from(at) + 4].copy_from_slice(&value.to_le_bytes());
                let next = (value >> 20) as u16;
                if value == 0 || value == u32::MAX || next == 0 {
                    break;
                }
                at = next;
            }
            let view = ConfigView::new(&ext).map_err(|e| rc_error(e.to_string()))?;
            for cap in view.extended_capabilities() {
                let cap = cap.map_err(|e| rc_error(format!("extended capability list: {e}")))?;
                extended_capabilities.push(CapabilityReport {
                    offset: cap.offset,
                    id: cap.id,
                    name: extended_capability_name(cap.id).unwrap_or("unknown").to_owned(),
                });
            }
        }

        let view = ConfigView::new(&image).map_err(|e| rc_error(e.to_string()))?;
        let mut report = Enumeration {
            bdf: device.to_string(),
            vendor_id: view.vendor_id(),
            device_id: view.device_id(),
            revision_id: view.revision_id(),
            class_code: view.class_code().to_u24(),
            subsystem_vendor_id: view.subsystem_vendor_id().unwrap_or(0),
            subsystem_id: view.subsystem_id().unwrap_or(0),
            header_type,
            interrupt_pin: view.interrupt_pin(),
            bars,
            rom,
            capabilities,
            extended_capabilities,
            msi_vectors: msi_cap.map(|m| m.control.vectors_capable()),
            msi_offset: msi_cap.map(|m| m.offset),
            msix_table_size: msix_cap.map(|m| m.control.table_size()),
            msix_offset: msix_cap.map(|m| m.offset),
            msix_table_bar: msix_cap.map(|m| m.table_bir),
            msix_table_offset: msix_cap.map(|m| m.table_offset),
            interrupts: "none",
            ..Enumeration::default()
        };

        if let Some(pcie) = pcie_offset {
            let link = self.config().link;
            let supported = pcie.device_capabilities.max_payload_supported().unwrap_or(128);
            let mps = link.max_payload_size().min(supported);
            let mrrs = link.max_read_request_size();
            let extended_tags =
                self.config().extended_tags && pcie.device_capabilities.extended_tag_supported();
            let control = pcie
                .device_control
                .with_mps_code(tlp::config_space::mps_bytes_to_code(mps).unwrap_or(0))
                .with_mrrs_code(tlp::config_space::mrrs_bytes_to_code(mrrs).unwrap_or(2))
                .with_extended_tag(extended_tags);
            self.config_write(pcie.offset + pcie::DEVICE_CONTROL, 2, u32::from(control.0)).await?;
            let devctl = pcie.offset + pcie::DEVICE_CONTROL;
            let check = DeviceControl((self.config_read(devctl).await? >> (8 * (devctl & 3))) as u16);
            report.mps = check.max_payload_size();
            report.mrrs = check.max_read_request_size();
            report.extended_tags = check.extended_tag();
            let link_control = pcie.link_control.with_rcb_128(link.read_completion_boundary() == 128);
            self.config_write(pcie.offset + pcie::LINK_CONTROL, 2, u32::from(link_control.0)).await?;
        }

        let mut command = Command::BUS_MASTER;
        if report.bars.iter().any(|b| b.kind == "io") {
            command |= Command::IO_SPACE;
        }
        if report.bars.iter().any(|b| b.kind != "io") {
            command |= Command::MEMORY_SPACE;
        }
        self.config_write(header::COMMAND, 2, u32::from(command)).await?;
        report.command = command;

        if report.msix_offset.is_some() {
            self.enable_interrupts(&mut report, IrqMode::Msix).await?;
        } else if report.msi_offset.is_some() {
            self.enable_interrupts(&mut report, IrqMode::Msi).await?;
        }
        tracing::info!(?report, "rc: enumeration done");
        Ok(report)
    }

    /// Routes the device's MSI or MSI-X vectors to the interrupt window and enables that mode
    /// (disabling the other and INTx).
    pub async fn enable_interrupts(&mut self, report: &mut Enumeration, mode: IrqMode) -> Result<()> {
        let window = self.config().msi_window;
        match mode {
            IrqMode::Msi => {
                let offset = report.msi_offset.ok_or_else(|| rc_error("the device has no MSI capability"))?;
                if let Some(msix) = report.msix_offset {
                    self.disable_msix(msix).await?;
                }
                let control = MsiControl((self.config_read(offset).await? >> 16) as u16);
                let layout = control.layout();
                self.config_write(offset + layout.address_lo(), 4, window as u32).await?;
                if let Some(hi) = layout.address_hi() {
                    self.config_write(offset + hi, 4, (window >> 32) as u32).await?;
                }
                // Message Data 0: the device puts the vector number in the low bits.
                self.config_write(offset + layout.data(), 2, 0).await?;
                let enabled = control
                    .with_multiple_message_enable(control.multiple_message_capable())
                    .with_enabled(true);
                self.config_write(offset + 2, 2, u32::from(enabled.0)).await?;
                report.interrupts = "msi";
            }
            IrqMode::Msix => {
                let offset =
                    report.msix_offset.ok_or_else(|| rc_error("the device has no MSI-X capability"))?;
                if let Some(msi) = report.msi_offset {
                    let control = MsiControl((self.config_read(msi).await? >> 16) as u16);
                    self.config_write(msi + 2, 2, u32::from(control.with_enabled(false).0)).await?;
                }
                let bir = report.msix_table_bar.unwrap_or(0);
                let bar = report.bars.iter().find(|b| b.slot == bir).ok_or_else(|| {
                    rc_error(format!("the MSI-X table is in BAR{bir}, which is not implemented"))
                })?;
                let table = bar.address + u64::from(report.msix_table_offset.unwrap_or(0));
                let target = window + MSIX_WINDOW_OFFSET;
                for entry in 0..u64::from(report.msix_table_size.unwrap_or(0)) {
                    let mut bytes = [0u8; msix::entry::LEN];
                    bytes[0..4].copy_from_slice(&(target as u32).to_le_bytes());
                    bytes[4..8].copy_from_slice(&((target >> 32) as u32).to_le_bytes());
                    bytes[8..12].copy_from_slice(&(entry as u32).to_le_bytes());
                    self.mem_write(table + entry * msix::entry::LEN as u64, &bytes).await?;
                }
                let control = MsixControl((self.config_read(offset).await? >> 16) as u16);
                let enabled = control.with_function_mask(false).with_enabled(true);
                self.config_write(offset + 2, 2, u32::from(enabled.0)).await?;
                report.interrupts = "msix";
            }
        }
        report.command |= Command::INTX_DISABLE;
        self.config_write(header::COMMAND, 2, u32::from(report.command)).await
    }

    async fn disable_msix(&mut self, offset: u16) -> Result<()> {
        let control = MsixControl((self.config_read(offset).await? >> 16) as u16);
        self.config_write(offset + 2, 2, u32::from(control.with_enabled(false).0)).await
    }
}

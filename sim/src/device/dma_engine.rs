//! The sample device: a small DMA-engine card (see `docs/sample-device.md` for the register
//! map). Software programs a source, a destination and a length in BAR0 and rings the
//! doorbell; the card copies with DMA_READ then DMA_WRITE messages and raises the interrupt
//! selected in its interrupt control register (INTx, MSI or MSI-X).
//!
//! The copy runs in a task the card owns, never inside the REGION_WRITE that rang the doorbell,
//! so the write is answered at once and status reads are served while the copy runs.

use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use tlp::config_space::{
    Bar, BarKind, Command as PciCommand, ConfigImage, DeviceCapabilities, DeviceCapabilities2, DeviceControl,
    DeviceControl2, DeviceStatus, LinkCapabilities, LinkControl, LinkStatus, MsiControl, Msix, MsixControl,
    PCIE_CONFIG_LEN, PciExpress, PcieCapabilities, PmCapabilities, Status, header, msi, msix, pcie, pm,
};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use transports::vfio_user::wire::irq_index;

use super::bus::{DeviceBus, IRQ_INDEX_COUNT};
use super::pci_config::{BarSpec, ConfigSpace};
use super::server::{CONFIG_REGION, DeviceDescription, DeviceModel, PCI_REGION_COUNT, RegionDesc};
use crate::error::Error;

/// PCI IDs. Vendor 0x1234 is not assigned to any company and is customary for emulated test
/// devices (QEMU's `edu` uses it); these IDs are for testing only.
pub const VENDOR_ID: u16 = 0x1234;
pub const DEVICE_ID: u16 = 0x7e57;
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x1234;
pub const SUBSYSTEM_ID: u16 = 0x0001;
pub const REVISION_ID: u8 = 0x01;
/// Class 08/80/00: other system peripheral.
pub const CLASS_CODE: u32 = 0x08_80_00;

/// BAR0: the register file.
pub const BAR0_SIZE: u64 = 0x1000;
/// BAR2: a plain memory window (64-bit, prefetchable).
pub const BAR2_SIZE: u64 = 0x1_0000;
/// BAR4: MSI-X table at 0 and PBA at [`MSIX_PBA_OFFSET`].
pub const BAR4_SIZE: u64 = 0x1000;
pub const MSIX_TABLE_OFFSET: u32 = 0;
pub const MSIX_PBA_OFFSET: u32 = 0x800;
/// The table must end before the PBA.
pub const MAX_MSIX_VECTORS: u16 = (MSIX_PBA_OFFSET / 16) as u16;

/// BAR0 register offsets (all registers are 32-bit, little-endian; 64-bit values are LO/HI
/// pairs).
pub mod regs {
    /// RO: [`super::ID_MAGIC`].
    pub const ID: u64 = 0x00;
    /// RO: the largest LENGTH accepted.
    pub const MAX_LENGTH: u64 = 0x04;
    pub const SRC_LO: u64 = 0x08;
    pub const SRC_HI: u64 = 0x0c;
    pub const DST_LO: u64 = 0x10;
    pub const DST_HI: u64 = 0x14;
    pub const LENGTH: u64 = 0x18;
    /// WO (reads 0): writing bit 0 starts a copy.
    pub const DOORBELL: u64 = 0x1c;
    pub const STATUS: u64 = 0x20;
    pub const IRQ_CONTROL: u64 = 0x24;
    /// RO: copies completed without error since reset (wraps).
    pub const COPY_COUNT: u64 = 0x28;
    /// RO: errno of the client's error reply that failed the last copy, else 0.
    pub const DMA_ERRNO: u64 = 0x2c;
    pub const SCRATCH_LO: u64 = 0x30;
    pub const SCRATCH_HI: u64 = 0x34;
}

/// The ID register's value: "DMA" engine magic 0xD3A0 and register-map version 1.
pub const ID_MAGIC: u32 = 0xd3a0_0001;
pub const DOORBELL_START: u32 = 1 << 0;

/// STATUS bits.
pub mod status {
    /// RO: a copy is running.
    pub const BUSY: u32 = 1 << 0;
    /// W1C: the last copy completed.
    pub const DONE: u32 = 1 << 1;
    /// W1C: the last copy failed; ERROR_CODE says why. Clearing it clears the code.
    pub const ERROR: u32 = 1 << 2;
    pub const ERROR_CODE_SHIFT: u32 = 8;
    pub const ERROR_CODE_MASK: u32 = 0xff << ERROR_CODE_SHIFT;
}

/// STATUS.ERROR_CODE values.
pub mod error_code {
    pub const NONE: u8 = 0x00;
    pub const SOURCE_NOT_MAPPED: u8 = 0x01;
    pub const DESTINATION_NOT_MAPPED: u8 = 0x02;
    pub const READ_REJECTED: u8 = 0x03;
    pub const WRITE_REJECTED: u8 = 0x04;
    pub const TIMEOUT: u8 = 0x05;
    pub const BAD_LENGTH: u8 = 0x06;
    pub const BUS_MASTER_DISABLED: u8 = 0x07;
    pub const LINK_ERROR: u8 = 0x08;
}

/// IRQ_CONTROL fields.
pub mod irq_control {
    pub const ENABLE: u32 = 1 << 0;
    pub const MODE_SHIFT: u32 = 1;
    pub const MODE_MASK: u32 = 0b11 << MODE_SHIFT;
    pub const MODE_INTX: u32 = 0;
    pub const MODE_MSI: u32 = 1;
    pub const MODE_MSIX: u32 = 2;
    pub const VECTOR_SHIFT: u32 = 8;
    pub const VECTOR_MASK: u32 = 0xff << VECTOR_SHIFT;
    /// Bits software can write.
    pub const WRITABLE: u32 = ENABLE | MODE_MASK | VECTOR_MASK;
}

/// Card settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaEngineConfig {
    /// MSI vectors: 1, 2, 4, 8, 16 or 32.
    pub msi_vectors: u8,
    /// MSI-X table entries: 1..=128.
    pub msix_vectors: u16,
    /// The largest copy (MAX_LENGTH register).
    pub max_length: u32,
    /// Max Payload Size Supported in Device Capabilities, in bytes: 128, 256, 512, 1024, 2048
    /// or 4096. A software card has no buffer limit; 256 B is the usual hardware value.
    pub max_payload_supported: u16,
}

impl Default for DmaEngineConfig {
    fn default() -> Self {
        Self { msi_vectors: 4, msix_vectors: 8, max_length: 1024 * 1024, max_payload_supported: 256 }
    }
}

/// Capability offsets in config space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapabilityOffsets {
    pub power_management: u16,
    pub msi: u16,
    pub msix: u16,
    pub pci_express: u16,
}

#[derive(Debug, Default, Clone, Copy)]
struct Registers {
    src: u64,
    dst: u64,
    length: u32,
    status: u32,
    irq_control: u32,
    copy_count: u32,
    dma_errno: u32,
    scratch: u64,
}

struct RunningCopy {
    generation: u64,
    task: JoinHandle<()>,
}

struct CardState {
    max_length: u32,
    config: ConfigSpace,
    caps: CapabilityOffsets,
    regs: Registers,
    bar2: Vec<u8>,
    msix_table: Vec<u8>,
    msix_pending: Vec<bool>,
    running: Option<RunningCopy>,
    /// Bumped by every doorbell and reset; a copy finishing under an older generation was
    /// aborted and leaves no trace.
    generation: u64,
}

/// The sample DMA-engine card. Cheap to share (`Arc`); all state is behind one mutex that is
/// never held across an await.
pub struct DmaEngine {
    settings: DmaEngineConfig,
    state: Arc<Mutex<CardState>>,
}

impl std::fmt::Debug for DmaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaEngine").field("settings", &self.settings).finish_non_exhaustive()
    }
}

fn lock(state: &Mutex<CardState>) -> MutexGuard<'_, CardState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl DmaEngine {
    pub fn new(settings: DmaEngineConfig) -> Result<Self, Error> {
        if !settings.msi_vectors.is_power_of_two() || settings.msi_vectors > 32 {
            return Err(Error::Config(format!(
                "msi_vectors {} is not 1, 2, 4, 8, 16 or 32",
                settings.msi_vectors
            )));
        }
        if settings.msix_vectors == 0 || settings.msix_vectors > MAX_MSIX_VECTORS {
            return Err(Error::Config(format!(
                "msix_vectors {} not in 1..={MAX_MSIX_VECTORS}",
                settings.msix_vectors
            )));
        }
        if settings.max_length == 0 || settings.max_length > 64 * 1024 * 1024 {
            return Err(Error::Config(format!("max_length {} not in 1..=64 MiB", settings.max_length)));
        }
        if max_payload_code(settings.max_payload_supported).is_none() {
            return Err(Error::Config(format!(
                "max_payload_supported {} is not 128, 256, 512, 1024, 2048 or 4096",
                settings.max_payload_supported
            )));
        }
        let (config, caps) = build_config_space(&settings).map_err(Error::Config)?;
        let entries = usize::from(settings.msix_vectors);
        let state = CardState {
            max_length: settings.max_length,
            config,
            caps,
            regs: Registers::default(),
            bar2: vec![0; BAR2_SIZE as usize],
            msix_table: initial_msix_table(entries),
            msix_pending: vec![false; entries],
            running: None,
            generation: 0,
        };
        Ok(Self { settings, state: Arc::new(Mutex::new(state)) })
    }

    pub fn settings(&self) -> DmaEngineConfig {
        self.settings
    }

    /// Where the capabilities sit in config space.
    pub fn capability_offsets(&self) -> CapabilityOffsets {
        lock(&self.state).caps
    }
}

impl Drop for DmaEngine {
    fn drop(&mut self) {
        if let Some(running) = lock(&self.state).running.take() {
            running.task.abort();
        }
    }
}

fn initial_msix_table(entries: usize) -> Vec<u8> {
    // Every vector starts masked (PCI spec: Vector Control Mask bit is 1 after reset).
    let mut table = vec![0u8; entries * msix::entry::LEN];
    for entry in table.chunks_mut(msix::entry::LEN) {
        if let Some(control) = entry.get_mut(msix::entry::VECTOR_CONTROL) {
            *control = msix::entry::MASKED as u8;
        }
    }
    table
}

/// Builds the config space with `tlp::config_space::ConfigImage` and sets its write semantics.
/// The Device Capabilities encoding of a Max Payload Size Supported of `bytes` (128 << code).
fn max_payload_code(bytes: u16) -> Option<u32> {
    (bytes.is_power_of_two() && (128..=4096).contains(&bytes)).then(|| (bytes / 128).trailing_zeros())
}

fn build_config_space(settings: &DmaEngineConfig) -> Result<(ConfigSpace, CapabilityOffsets), String> {
    let e = |err: tlp::TlpError| err.to_string();
    let mut image = ConfigImage::new(PCIE_CONFIG_LEN).map_err(e)?;
    image.set_u16(header::VENDOR_ID, VENDOR_ID).map_err(e)?;
    image.set_u16(header::DEVICE_ID, DEVICE_ID).map_err(e)?;
    image.set_u8(header::REVISION_ID, REVISION_ID).map_err(e)?;
    image.set_u8(header::PROG_IF, CLASS_CODE as u8).map_err(e)?;
    image.set_u8(header::SUBCLASS, (CLASS_CODE >> 8) as u8).map_err(e)?;
    image.set_u8(header::BASE_CLASS, (CLASS_CODE >> 16) as u8).map_err(e)?;
    image.set_u16(header::SUBSYSTEM_VENDOR_ID, SUBSYSTEM_VENDOR_ID).map_err(e)?;
    image.set_u16(header::SUBSYSTEM_ID, SUBSYSTEM_ID).map_err(e)?;
    image.set_u8(header::INTERRUPT_PIN, 1).map_err(e)?; // INTA#
    image.set_bar(&Bar { slot: 0, kind: BarKind::Mem32, prefetchable: false, address: 0 }).map_err(e)?;
    image.set_bar(&Bar { slot: 2, kind: BarKind::Mem64, prefetchable: true, address: 0 }).map_err(e)?;
    image.set_bar(&Bar { slot: 4, kind: BarKind::Mem32, prefetchable: false, address: 0 }).map_err(e)?;

    let power_management = image.add_power_management(PmCapabilities(0x0003)).map_err(e)?;
    let mmc = u16::from(settings.msi_vectors.trailing_zeros() as u8);
    let msi_control = MsiControl(MsiControl::ADDRESS_64BIT | MsiControl::PER_VECTOR_MASKING | (mmc << 1));
    let msi_offset = image.add_msi(msi_control).map_err(e)?;
    let msix_offset = image
        .add_msix(&Msix {
            offset: 0,
            control: MsixControl(settings.msix_vectors - 1),
            table_bir: 4,
            table_offset: MSIX_TABLE_OFFSET,
            pba_bir: 4,
            pba_offset: MSIX_PBA_OFFSET,
        })
        .map_err(e)?;
    let pcie_offset = image
        .add_pci_express(&PciExpress {
            offset: 0,
            // Version 2, endpoint.
            capabilities: PcieCapabilities(0x0002),
            // Bits 2:0, Max Payload Size Supported; nothing else (no phantom functions, 5-bit
            // tags, no FLR).
            device_capabilities: DeviceCapabilities(
                max_payload_code(settings.max_payload_supported)
                    .ok_or_else(|| format!("max_payload_supported {}", settings.max_payload_supported))?,
            ),
            // Relaxed ordering and no-snoop enabled, MPS 128, MRRS 512 (the reset values).
            device_control: DeviceControl(0x2810),
            device_status: DeviceStatus(0),
            // 2.5 GT/s, x1.
            link_capabilities: LinkCapabilities(0x0000_0011),
            link_control: LinkControl(0),
            link_status: LinkStatus(0x0011),
            device_capabilities_2: Some(DeviceCapabilities2(0)),
            device_control_2: Some(DeviceControl2(0)),
        })
        .map_err(e)?;

    let bars = [
        Some(BarSpec { kind: BarKind::Mem32, prefetchable: false, size: BAR0_SIZE }),
        None,
        Some(BarSpec { kind: BarKind::Mem64, prefetchable: true, size: BAR2_SIZE }),
        None,
        Some(BarSpec { kind: BarKind::Mem32, prefetchable: false, size: BAR4_SIZE }),
        None,
    ];
    let mut space = ConfigSpace::new(image, bars)?;
    let writable_command = PciCommand::MEMORY_SPACE
        | PciCommand::BUS_MASTER
        | PciCommand::PARITY_ERROR_RESPONSE
        | PciCommand::SERR_ENABLE
        | PciCommand::INTX_DISABLE;
    space.set_writable(header::COMMAND, &writable_command.to_le_bytes());
    space.set_write_one_to_clear(header::STATUS, &Status::WRITE_ONE_TO_CLEAR.to_le_bytes());
    space.set_writable(header::CACHE_LINE_SIZE, &[0xff]);
    space.set_writable(header::INTERRUPT_LINE, &[0xff]);
    // PM: power state and PME enable; PME status is W1C.
    space.set_writable(power_management + pm::CONTROL_STATUS, &0x0103u16.to_le_bytes());
    space.set_write_one_to_clear(power_management + pm::CONTROL_STATUS, &0x8000u16.to_le_bytes());
    // MSI: enable, multiple message enable, address, data, per-vector mask bits.
    let layout = msi_control.layout();
    space.set_writable(
        msi_offset + msi::CONTROL,
        &(MsiControl::ENABLE | MsiControl::MULTIPLE_MESSAGE_ENABLE_MASK).to_le_bytes(),
    );
    space.set_writable(msi_offset + layout.address_lo(), &0xffff_fffcu32.to_le_bytes());
    if let Some(hi) = layout.address_hi() {
        space.set_writable(msi_offset + hi, &u32::MAX.to_le_bytes());
    }
    space.set_writable(msi_offset + layout.data(), &0xffffu16.to_le_bytes());
    if let Some(mask) = layout.mask_bits() {
        let bits = if settings.msi_vectors >= 32 { u32::MAX } else { (1u32 << settings.msi_vectors) - 1 };
        space.set_writable(msi_offset + mask, &bits.to_le_bytes());
    }
    // MSI-X: enable and function mask.
    space.set_writable(
        msix_offset + msix::CONTROL,
        &(MsixControl::ENABLE | MsixControl::FUNCTION_MASK).to_le_bytes(),
    );
    // PCIe: Device Control (all but Initiate FLR), Device Status errors W1C, Link Control
    // (ASPM, RCB, common clock, extended synch, clock PM, autonomous width), Device Control 2
    // (completion timeout value and disable).
    space.set_writable(pcie_offset + pcie::DEVICE_CONTROL, &0x7fffu16.to_le_bytes());
    space.set_write_one_to_clear(pcie_offset + pcie::DEVICE_STATUS, &0x000fu16.to_le_bytes());
    space.set_writable(pcie_offset + pcie::LINK_CONTROL, &0x03cbu16.to_le_bytes());
    space.set_writable(pcie_offset + pcie::DEVICE_CONTROL_2, &0x001fu16.to_le_bytes());
    let caps =
        CapabilityOffsets { power_management, msi: msi_offset, msix: msix_offset, pci_express: pcie_offset };
    Ok((space, caps))
}

/// Why a copy failed: (error code, errno of a client error reply).
fn classify(error: &Error, reading: bool) -> (u8, u32) {
    match error {
        Error::DmaNotMapped { .. } if reading => (error_code::SOURCE_NOT_MAPPED, 0),
        Error::DmaNotMapped { .. } => (error_code::DESTINATION_NOT_MAPPED, 0),
        Error::DmaRejected { errno, .. } if reading => (error_code::READ_REJECTED, *errno),
        Error::DmaRejected { errno, .. } => (error_code::WRITE_REJECTED, *errno),
        Error::DmaTimeout { .. } => (error_code::TIMEOUT, 0),
        _ => (error_code::LINK_ERROR, 0),
    }
}

/// Reads dword-aligned registers through a byte-granular access.
fn for_each_dword(offset: u64, len: usize, mut f: impl FnMut(u64, usize, usize)) {
    // f(dword offset, first byte within the dword, byte index in the access)
    for i in 0..len {
        let at = offset + i as u64;
        f(at & !3, (at & 3) as usize, i);
    }
}

impl CardState {
    fn command(&self) -> PciCommand {
        self.config.view().command()
    }

    fn read_register(&self, offset: u64) -> u32 {
        let r = &self.regs;
        match offset {
            regs::ID => ID_MAGIC,
            regs::MAX_LENGTH => self.max_length,
            regs::SRC_LO => r.src as u32,
            regs::SRC_HI => (r.src >> 32) as u32,
            regs::DST_LO => r.dst as u32,
            regs::DST_HI => (r.dst >> 32) as u32,
            regs::LENGTH => r.length,
            regs::STATUS => r.status,
            regs::IRQ_CONTROL => r.irq_control,
            regs::COPY_COUNT => r.copy_count,
            regs::DMA_ERRNO => r.dma_errno,
            regs::SCRATCH_LO => r.scratch as u32,
            regs::SCRATCH_HI => (r.scratch >> 32) as u32,
            _ => 0,
        }
    }

    fn bar4_read(&self, offset: u64) -> u8 {
        let table_len = self.msix_table.len() as u64;
        let pba = u64::from(MSIX_PBA_OFFSET);
        if offset < table_len {
            return self.msix_table.get(offset as usize).copied().unwrap_or(0);
        }
        if offset >= pba {
            let bit = (offset - pba) * 8;
            let mut byte = 0u8;
            for b in 0..8u64 {
                if self.msix_pending.get((bit + b) as usize).copied().unwrap_or(false) {
                    byte |= 1 << b;
                }
            }
            return byte;
        }
        0
    }

    fn msix_entry_masked(&self, vector: usize) -> bool {
        self.msix_table
            .get(vector * msix::entry::LEN + msix::entry::VECTOR_CONTROL)
            .is_none_or(|control| u32::from(*control) & msix::entry::MASKED != 0)
    }

    /// Raises the interrupt selected by IRQ_CONTROL, honouring the config-space enables.
    fn raise_interrupt(&mut self, bus: &DeviceBus) {
        let control = self.regs.irq_control;
        if control & irq_control::ENABLE == 0 {
            return;
        }
        let vector = (control & irq_control::VECTOR_MASK) >> irq_control::VECTOR_SHIFT;
        let view = self.config.view();
        match (control & irq_control::MODE_MASK) >> irq_control::MODE_SHIFT {
            irq_control::MODE_INTX => {
                // Interrupt Status follows the condition even when INTx is disabled.
                let status = view.status().0 | Status::INTERRUPT_STATUS;
                self.set_config_u16(header::STATUS, status);
                if self.command().intx_disable() {
                    debug!("INTx disabled in the command register; not signalled");
                } else {
                    let outcome = bus.trigger(irq_index::INTX, 0);
                    debug!(?outcome, "INTx raised");
                }
            }
            irq_control::MODE_MSI => {
                let Ok(Some(msi_cap)) = view.msi() else { return };
                if !msi_cap.control.enabled() {
                    debug!("MSI selected but disabled in config space; not signalled");
                    return;
                }
                // Software may enable more vectors than the device is capable of; only the
                // capable ones exist (at most 32, so the shift below stays in range).
                let enabled = msi_cap.control.vectors_enabled().min(msi_cap.control.vectors_capable());
                let Some(bit) = 1u32.checked_shl(vector).filter(|_| vector < u32::from(enabled)) else {
                    warn!(vector, enabled, "MSI vector not enabled; not signalled");
                    return;
                };
                let masked = msi_cap.mask_bits.is_some_and(|bits| bits & bit != 0);
                if masked {
                    if let Some(pending) = msi_cap.layout().pending_bits() {
                        let bits = msi_cap.pending_bits.unwrap_or(0) | bit;
                        self.set_config_u32(self.caps.msi + pending, bits);
                    }
                    debug!(vector, "MSI vector masked; pending");
                } else {
                    let outcome = bus.trigger(irq_index::MSI, vector);
                    debug!(vector, ?outcome, "MSI raised");
                }
            }
            irq_control::MODE_MSIX => {
                let Ok(Some(msix_cap)) = view.msix() else { return };
                if !msix_cap.control.enabled() {
                    debug!("MSI-X selected but disabled in config space; not signalled");
                    return;
                }
                let v = vector as usize;
                if v >= self.msix_pending.len() {
                    warn!(
                        vector,
                        table_size = self.msix_pending.len(),
                        "MSI-X vector beyond the table; not signalled"
                    );
                    return;
                }
                if msix_cap.control.function_mask() || self.msix_entry_masked(v) {
                    if let Some(p) = self.msix_pending.get_mut(v) {
                        *p = true;
                    }
                    debug!(vector, "MSI-X vector masked; pending");
                } else {
                    let outcome = bus.trigger(irq_index::MSIX, vector);
                    debug!(vector, ?outcome, "MSI-X raised");
                }
            }
            _ => warn!(control, "IRQ_CONTROL mode 3 is reserved; no interrupt"),
        }
    }

    /// Signals MSI/MSI-X vectors whose mask was lifted while pending.
    fn deliver_unmasked(&mut self, bus: &DeviceBus) {
        let view = self.config.view();
        if let Ok(Some(msi_cap)) = view.msi() {
            if let (Some(pending_at), Some(pending)) = (msi_cap.layout().pending_bits(), msi_cap.pending_bits)
            {
                let unmasked = pending & !msi_cap.mask_bits.unwrap_or(0);
                if unmasked != 0 && msi_cap.control.enabled() {
                    self.set_config_u32(self.caps.msi + pending_at, pending & !unmasked);
                    for vector in (0..32).filter(|v| unmasked & (1 << v) != 0) {
                        bus.trigger(irq_index::MSI, vector);
                    }
                }
            }
        }
        let view = self.config.view();
        if let Ok(Some(msix_cap)) = view.msix() {
            if msix_cap.control.enabled() && !msix_cap.control.function_mask() {
                for v in 0..self.msix_pending.len() {
                    if self.msix_pending.get(v).copied().unwrap_or(false) && !self.msix_entry_masked(v) {
                        if let Some(p) = self.msix_pending.get_mut(v) {
                            *p = false;
                        }
                        bus.trigger(irq_index::MSIX, v as u32);
                    }
                }
            }
        }
    }

    fn set_config_u16(&mut self, offset: u16, value: u16) {
        let at = usize::from(offset);
        if let Some(dst) = self.config.bytes_mut().get_mut(at..at + 2) {
            dst.copy_from_slice(&value.to_le_bytes());
        }
    }

    fn set_config_u32(&mut self, offset: u16, value: u32) {
        let at = usize::from(offset);
        if let Some(dst) = self.config.bytes_mut().get_mut(at..at + 4) {
            dst.copy_from_slice(&value.to_le_bytes());
        }
    }

    /// Ends a copy: status, counters and the interrupt.
    fn finish(&mut self, outcome: Result<(), (u8, u32)>, bus: &DeviceBus) {
        self.running = None;
        self.regs.status &= !status::BUSY;
        match outcome {
            Ok(()) => {
                self.regs.status |= status::DONE;
                self.regs.copy_count = self.regs.copy_count.wrapping_add(1);
                self.regs.dma_errno = 0;
            }
            Err((code, errno)) => {
                self.regs.status = (self.regs.status & !status::ERROR_CODE_MASK)
                    | status::ERROR
                    | (u32::from(code) << status::ERROR_CODE_SHIFT);
                self.regs.dma_errno = errno;
            }
        }
        self.raise_interrupt(bus);
    }

    /// Puts everything back to power-on values, aborting a running copy.
    fn reset(&mut self) {
        if let Some(running) = self.running.take() {
            info!(generation = running.generation, "copy aborted by reset");
            running.task.abort();
        }
        self.generation = self.generation.wrapping_add(1);
        self.regs = Registers::default();
        self.config.reset();
        self.bar2.iter_mut().for_each(|b| *b = 0);
        self.msix_table = initial_msix_table(self.msix_pending.len());
        self.msix_pending.iter_mut().for_each(|p| *p = false);
    }
}

impl DmaEngine {
    fn write_register(
        &self,
        state: &mut CardState,
        bus: &DeviceBus,
        offset: u64,
        value: u32,
        byte_mask: u32,
    ) {
        let merge = |old: u32| (old & !byte_mask) | (value & byte_mask);
        let r = &mut state.regs;
        match offset {
            regs::SRC_LO => r.src = (r.src & !0xffff_ffff) | u64::from(merge(r.src as u32)),
            regs::SRC_HI => r.src = (r.src & 0xffff_ffff) | (u64::from(merge((r.src >> 32) as u32)) << 32),
            regs::DST_LO => r.dst = (r.dst & !0xffff_ffff) | u64::from(merge(r.dst as u32)),
            regs::DST_HI => r.dst = (r.dst & 0xffff_ffff) | (u64::from(merge((r.dst >> 32) as u32)) << 32),
            regs::LENGTH => r.length = merge(r.length),
            regs::SCRATCH_LO => r.scratch = (r.scratch & !0xffff_ffff) | u64::from(merge(r.scratch as u32)),
            regs::SCRATCH_HI => {
                r.scratch = (r.scratch & 0xffff_ffff) | (u64::from(merge((r.scratch >> 32) as u32)) << 32)
            }
            regs::IRQ_CONTROL => {
                r.irq_control = merge(r.irq_control) & irq_control::WRITABLE;
            }
            regs::STATUS => {
                let clear = value & byte_mask & (status::DONE | status::ERROR);
                r.status &= !clear;
                if clear & status::ERROR != 0 {
                    r.status &= !status::ERROR_CODE_MASK;
                    r.dma_errno = 0;
                }
                if r.status & (status::DONE | status::ERROR) == 0 {
                    // The interrupt condition is gone: INTx deasserts.
                    let cleared = state.config.view().status().0 & !Status::INTERRUPT_STATUS;
                    state.set_config_u16(header::STATUS, cleared);
                }
            }
            regs::DOORBELL => {
                if value & byte_mask & DOORBELL_START != 0 {
                    self.ring_doorbell(state, bus);
                }
            }
            _ => debug!(offset, value, "write to a read-only or unimplemented BAR0 register ignored"),
        }
    }

    fn ring_doorbell(&self, state: &mut CardState, bus: &DeviceBus) {
        if state.regs.status & status::BUSY != 0 {
            warn!("doorbell rung while a copy is running; ignored");
            return;
        }
        let (src, dst, len) = (state.regs.src, state.regs.dst, state.regs.length);
        state.regs.status &= !(status::DONE | status::ERROR | status::ERROR_CODE_MASK);
        state.regs.dma_errno = 0;
        let cleared = state.config.view().status().0 & !Status::INTERRUPT_STATUS;
        state.set_config_u16(header::STATUS, cleared);
        state.generation = state.generation.wrapping_add(1);
        info!(src, dst, len, "doorbell: copy requested");
        if len > self.settings.max_length {
            state.finish(Err((error_code::BAD_LENGTH, 0)), bus);
            return;
        }
        if !state.command().bus_master() {
            state.finish(Err((error_code::BUS_MASTER_DISABLED, 0)), bus);
            return;
        }
        if len == 0 {
            state.finish(Ok(()), bus);
            return;
        }
        state.regs.status |= status::BUSY;
        let generation = state.generation;
        let shared = self.state.clone();
        let bus = bus.clone();
        let task = tokio::spawn(async move {
            let outcome = async {
                let data = bus.dma_read(src, len as usize).await.map_err(|e| (classify(&e, true), e))?;
                bus.dma_write(dst, &data).await.map_err(|e| (classify(&e, false), e))
            }
            .await;
            let mut state = lock(&shared);
            if state.generation != generation {
                return;
            }
            match outcome {
                Ok(()) => {
                    info!(src, dst, len, "copy done");
                    state.finish(Ok(()), &bus);
                }
                Err((code, error)) => {
                    warn!(src, dst, len, error = %error, code = code.0, "copy failed");
                    state.finish(Err(code), &bus);
                }
            }
        });
        state.running = Some(RunningCopy { generation, task });
    }

    fn config_write(
        &self,
        state: &mut CardState,
        bus: &DeviceBus,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Errno> {
        let intx_was_disabled = state.command().intx_disable();
        if !state.config.write(offset, data) {
            return Err(Errno::EINVAL);
        }
        let interrupt_pending = state.config.view().status().interrupt_status();
        let intx_mode = state.regs.irq_control & irq_control::MODE_MASK
            == irq_control::MODE_INTX << irq_control::MODE_SHIFT;
        if intx_was_disabled && !state.command().intx_disable() && interrupt_pending && intx_mode {
            // Re-enabling INTx with the condition still present asserts it again.
            bus.trigger(irq_index::INTX, 0);
        }
        state.deliver_unmasked(bus);
        Ok(())
    }

    fn bar4_write(&self, state: &mut CardState, bus: &DeviceBus, offset: u64, data: &[u8]) {
        let table_len = state.msix_table.len() as u64;
        for (i, &byte) in data.iter().enumerate() {
            let at = offset + i as u64;
            if at >= table_len {
                continue; // PBA and the gap are read-only.
            }
            let within = (at % msix::entry::LEN as u64) as usize;
            let value = if within == msix::entry::VECTOR_CONTROL {
                byte & msix::entry::MASKED as u8
            } else if within > msix::entry::VECTOR_CONTROL {
                0 // reserved bits of Vector Control
            } else {
                byte
            };
            if let Some(slot) = state.msix_table.get_mut(at as usize) {
                *slot = value;
            }
        }
        state.deliver_unmasked(bus);
    }
}

impl DeviceModel for DmaEngine {
    fn describe(&self) -> DeviceDescription {
        let mut regions = [RegionDesc::ABSENT; PCI_REGION_COUNT];
        regions[0] = RegionDesc::read_write(BAR0_SIZE);
        regions[2] = RegionDesc::read_write(BAR2_SIZE);
        regions[4] = RegionDesc::read_write(BAR4_SIZE);
        regions[CONFIG_REGION as usize] = RegionDesc::read_write(PCIE_CONFIG_LEN as u64);
        let mut irq_counts = [0u32; IRQ_INDEX_COUNT];
        irq_counts[irq_index::INTX as usize] = 1;
        irq_counts[irq_index::MSI as usize] = u32::from(self.settings.msi_vectors);
        irq_counts[irq_index::MSIX as usize] = u32::from(self.settings.msix_vectors);
        irq_counts[irq_index::ERR as usize] = 1;
        irq_counts[irq_index::REQ as usize] = 1;
        DeviceDescription { regions, irq_counts }
    }

    fn region_read(&self, _bus: &DeviceBus, region: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno> {
        let state = lock(&self.state);
        match region {
            0 => {
                let len = data.len();
                for_each_dword(offset, len, |dword, byte, i| {
                    let value = state.read_register(dword).to_le_bytes();
                    if let (Some(dst), Some(src)) = (data.get_mut(i), value.get(byte)) {
                        *dst = *src;
                    }
                });
                Ok(())
            }
            2 => {
                let start = offset as usize;
                let src = state.bar2.get(start..start + data.len()).ok_or(Errno::EINVAL)?;
                data.copy_from_slice(src);
                Ok(())
            }
            4 => {
                for (i, byte) in data.iter_mut().enumerate() {
                    *byte = state.bar4_read(offset + i as u64);
                }
                Ok(())
            }
            CONFIG_REGION => {
                if state.config.read(offset, data) {
                    Ok(())
                } else {
                    Err(Errno::EINVAL)
                }
            }
            _ => Err(Errno::EINVAL),
        }
    }

    fn region_write(&self, bus: &DeviceBus, region: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        match region {
            0 => {
                // Group the bytes per dword, then apply each dword once with its byte mask so
                // side effects (doorbell, W1C) happen once per register.
                let mut dwords: Vec<(u64, u32, u32)> = Vec::new();
                for_each_dword(offset, data.len(), |dword, byte, i| {
                    let value = u32::from(data.get(i).copied().unwrap_or(0)) << (8 * byte);
                    let mask = 0xffu32 << (8 * byte);
                    match dwords.last_mut() {
                        Some((at, v, m)) if *at == dword => {
                            *v |= value;
                            *m |= mask;
                        }
                        _ => dwords.push((dword, value, mask)),
                    }
                });
                for (dword, value, mask) in dwords {
                    self.write_register(state, bus, dword, value, mask);
                }
                Ok(())
            }
            2 => {
                let start = offset as usize;
                let dst = state.bar2.get_mut(start..start + data.len()).ok_or(Errno::EINVAL)?;
                dst.copy_from_slice(data);
                Ok(())
            }
            4 => {
                self.bar4_write(state, bus, offset, data);
                Ok(())
            }
            CONFIG_REGION => self.config_write(state, bus, offset, data),
            _ => Err(Errno::EINVAL),
        }
    }

    fn reset(&self, _bus: &DeviceBus) {
        lock(&self.state).reset();
    }

    fn disconnected(&self) {
        // Device state stays (the spec's rule for a client that leaves); a running copy
        // fails on its own with LINK_ERROR because the bus is closed.
        debug!("client gone; device state kept");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::UnixStream;
    use transports::vfio_user::socket::{MessageSocket, ReceivedMessage};
    use transports::vfio_user::wire::{self, Command, DmaAccessRepr, MessageType};

    use super::super::bus::{MappedWindow, SocketWriter};
    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    /// The card on a bus whose client end the test plays: DMA in pieces of `max_transfer` bytes
    /// over one socket; replies the test sends are handed to the bus as the server's reader does.
    struct Rig {
        card: DmaEngine,
        bus: DeviceBus,
        client: MessageSocket,
        reader: JoinHandle<()>,
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            self.reader.abort();
        }
    }

    impl Rig {
        fn new(max_transfer: usize) -> Self {
            let (ours, theirs) = UnixStream::pair().unwrap();
            let socket = Arc::new(MessageSocket::new(ours));
            let writer = Arc::new(SocketWriter::new(socket.clone(), WAIT));
            let bus = DeviceBus::new(writer, false, WAIT, max_transfer, 1, [1, 4, 8, 1, 1]);
            bus.inner.windows.lock().unwrap().push(MappedWindow { address: 0, size: 1 << 20, flags: 3 });
            let replies = bus.clone();
            let reader = tokio::spawn(async move {
                while let Ok(Some(message)) = socket.recv(1 << 20, 0).await {
                    replies.deliver_reply(message);
                }
            });
            let card = DmaEngine::new(DmaEngineConfig::default()).unwrap();
            Rig { card, bus, client: MessageSocket::new(theirs), reader }
        }

        fn write(&self, offset: u64, value: u32) {
            self.card.region_write(&self.bus, 0, offset, &value.to_le_bytes()).unwrap();
        }

        fn read(&self, offset: u64) -> u32 {
            let mut data = [0u8; 4];
            self.card.region_read(&self.bus, 0, offset, &mut data).unwrap();
            u32::from_le_bytes(data)
        }

        fn start_copy(&self, src: u64, dst: u64, len: u32) {
            // Memory space and bus mastering, then the registers and the doorbell.
            self.card.region_write(&self.bus, CONFIG_REGION, 4, &[0x06, 0x00]).unwrap();
            self.write(regs::SRC_LO, src as u32);
            self.write(regs::DST_LO, dst as u32);
            self.write(regs::LENGTH, len);
            self.write(regs::DOORBELL, DOORBELL_START);
        }

        /// The card's next DMA request: (message, address, count).
        async fn next_dma(&self) -> (ReceivedMessage, u64, u64) {
            let message =
                tokio::time::timeout(WAIT, self.client.recv(1 << 20, 0)).await.unwrap().unwrap().unwrap();
            let view = wire::dma_access::View::new_checked(&message.payload[..]).unwrap();
            let access = DmaAccessRepr::parse(&view).unwrap();
            (message, access.address, access.count)
        }

        async fn reply(&self, request: &ReceivedMessage, address: u64, data: &[u8]) {
            let count = if request.header.command == Command::DmaRead { data.len() } else { 0 };
            let access = DmaAccessRepr { address, count: data.len() as u64 };
            let payload = access.to_bytes_with(&data[..count]);
            let bytes = wire::encode_message(
                request.header.id,
                request.header.command,
                MessageType::Reply,
                false,
                None,
                &payload,
            )
            .unwrap();
            self.client.send(&bytes, &[]).await.unwrap();
        }
    }

    /// DEVICE_RESET while a copy waits for the reply to one of its DMA pieces ends the copy:
    /// the late reply is dropped, no further piece is requested, and the next copy runs alone.
    #[tokio::test]
    async fn device_capabilities_advertise_the_configured_max_payload() {
        let rig = Rig::new(1 << 20);
        for (bytes, code) in [(128u16, 0u32), (256, 1), (4096, 5)] {
            let card = DmaEngine::new(DmaEngineConfig { max_payload_supported: bytes, ..Default::default() })
                .unwrap();
            let at = u64::from(card.capability_offsets().pci_express) + 4;
            let mut devcap = [0u8; 4];
            card.region_read(&rig.bus, CONFIG_REGION, at, &mut devcap).unwrap();
            assert_eq!(u32::from_le_bytes(devcap), code, "{bytes} bytes");
        }
        for bytes in [0u16, 64, 384, 8192] {
            let refused =
                DmaEngine::new(DmaEngineConfig { max_payload_supported: bytes, ..Default::default() });
            assert!(matches!(refused, Err(Error::Config(_))), "{bytes} bytes accepted");
        }
    }

    #[tokio::test]
    async fn reset_while_a_copy_waits_on_dma_cancels_it_and_no_further_dma_is_issued() {
        let rig = Rig::new(64);
        rig.start_copy(0x1000, 0x8000, 256);
        let (first, address, count) = rig.next_dma().await;
        assert_eq!((first.header.command, address, count), (Command::DmaRead, 0x1000, 64));
        rig.reply(&first, address, &[0xaa; 64]).await;
        let (second, address, count) = rig.next_dma().await;
        assert_eq!((second.header.command, address, count), (Command::DmaRead, 0x1040, 64));
        assert_eq!(rig.read(regs::STATUS), status::BUSY);

        rig.card.reset(&rig.bus);
        assert_eq!(rig.read(regs::STATUS), 0, "idle at once, no DONE, no ERROR");
        // The answer to the piece it was waiting for arrives after the reset: dropped.
        rig.reply(&second, address, &[0xbb; 64]).await;

        // The next request the card makes is the new copy's, never the old copy's third piece.
        rig.start_copy(0x2000, 0x9000, 32);
        let (read, address, count) = rig.next_dma().await;
        assert_eq!((read.header.command, address, count), (Command::DmaRead, 0x2000, 32));
        rig.reply(&read, address, &[0xcc; 32]).await;
        let (write, address, count) = rig.next_dma().await;
        assert_eq!((write.header.command, address, count), (Command::DmaWrite, 0x9000, 32));
        let data = &write.payload[DmaAccessRepr::LEN..];
        assert_eq!(data, &[0xcc; 32][..], "the new copy's data, nothing of the old one");
        rig.reply(&write, address, data).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while rig.read(regs::STATUS) & status::DONE == 0 {
            assert!(tokio::time::Instant::now() < deadline, "the new copy never finished");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(rig.read(regs::COPY_COUNT), 1);
    }
}

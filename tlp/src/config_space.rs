//! PCI/PCIe configuration space: register layout, BAR decoding, capability lists and typed
//! capability decoders. No I/O.
//!
//! Everything here works on a *config image*: the bytes of one function's configuration space,
//! registers little-endian at their spec offsets (256 bytes for conventional PCI, 4096 for PCIe).
//! One module serves every user of config space: `tlpbridge probe` (decoding what a device
//! reports), the bridge engine (snooping BAR, MSI/MSI-X, Device Control and Link Control writes),
//! the reference root complex (enumeration, BAR sizing, programming MPS/MRRS) and the sample
//! device (building its config space with [`ConfigImage`]).
//!
//! - [`header`]: offsets of the Type 0/1 header registers; [`Command`], [`Status`],
//!   [`HeaderType`], [`ClassCode`] decode them.
//! - [`Bar`], [`size_from_probe`], [`ExpansionRom`]: base address registers.
//! - [`ConfigView`]: a read-only view with bounds-checked getters; it walks the standard
//!   ([`ConfigView::capabilities`]) and extended ([`ConfigView::extended_capabilities`])
//!   capability lists and never panics on a malformed image.
//! - Typed capabilities: [`PowerManagement`], [`Msi`] (+ [`MsiLayout`] for register offsets),
//!   [`Msix`] (+ [`MsixTableEntry`]), [`PciExpress`] (+ register newtypes such as
//!   [`DeviceControl`] and [`LinkControl`]), [`VendorSpecific`].
//! - [`ConfigImage`]: a writable image for building config spaces.
//!
//! Layouts follow the PCI Local Bus Specification 3.0 (chapter 6) and the PCI Express Base
//! Specification (chapter 7: §7.5.1 header, §7.5.3 PCI Express capability, §7.7.1 MSI,
//! §7.7.2 MSI-X, §7.5.2 Power Management).

use core::fmt;
use core::time::Duration;

use crate::TlpError;

type Result<T> = core::result::Result<T, TlpError>;

/// Size of a conventional PCI configuration space (and of the PCIe space below the extended area).
pub const PCI_CONFIG_LEN: usize = 256;
/// Size of a PCI Express configuration space.
pub const PCIE_CONFIG_LEN: usize = 4096;
/// Offset of the first extended capability (PCIe only).
pub const EXTENDED_CAPABILITIES_START: u16 = 0x100;

/// Offsets of the configuration header registers (Type 0 unless marked Type 1).
pub mod header {
    pub const VENDOR_ID: u16 = 0x00;
    pub const DEVICE_ID: u16 = 0x02;
    pub const COMMAND: u16 = 0x04;
    pub const STATUS: u16 = 0x06;
    pub const REVISION_ID: u16 = 0x08;
    /// Programming interface, the low byte of the 24-bit class code.
    pub const PROG_IF: u16 = 0x09;
    pub const SUBCLASS: u16 = 0x0a;
    pub const BASE_CLASS: u16 = 0x0b;
    pub const CACHE_LINE_SIZE: u16 = 0x0c;
    pub const LATENCY_TIMER: u16 = 0x0d;
    pub const HEADER_TYPE: u16 = 0x0e;
    pub const BIST: u16 = 0x0f;
    /// BAR0; BARn is at `BAR0 + 4 * n` (see [`bar`]).
    pub const BAR0: u16 = 0x10;
    pub const BAR5: u16 = 0x24;
    pub const CARDBUS_CIS_POINTER: u16 = 0x28;
    pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
    pub const SUBSYSTEM_ID: u16 = 0x2e;
    pub const EXPANSION_ROM: u16 = 0x30;
    pub const CAPABILITIES_POINTER: u16 = 0x34;
    pub const INTERRUPT_LINE: u16 = 0x3c;
    /// 0 = none, 1..=4 = INTA..INTD.
    pub const INTERRUPT_PIN: u16 = 0x3d;
    pub const MIN_GNT: u16 = 0x3e;
    pub const MAX_LAT: u16 = 0x3f;
    /// Type 1 (bridge): expansion ROM base address.
    pub const TYPE1_EXPANSION_ROM: u16 = 0x38;
    /// Length of the header; capabilities live at or above this offset.
    pub const LEN: u16 = 0x40;
    /// Number of BAR slots in a Type 0 header.
    pub const TYPE0_BAR_COUNT: u8 = 6;
    /// Number of BAR slots in a Type 1 header.
    pub const TYPE1_BAR_COUNT: u8 = 2;

    /// Offset of BAR `slot` (0..=5).
    pub const fn bar(slot: u8) -> u16 {
        BAR0 + 4 * slot as u16
    }
}

fn bit16(value: u16, bit: u32) -> bool {
    value & (1 << bit) != 0
}

fn bit32(value: u32, bit: u32) -> bool {
    value & (1 << bit) != 0
}

fn set_bit16(value: u16, mask: u16, on: bool) -> u16 {
    if on { value | mask } else { value & !mask }
}

/// Names of the set bits of `value`, in table order.
fn flag_names<T: Copy + Into<u32>>(value: T, table: &[(T, &'static str)]) -> Vec<&'static str> {
    let value: u32 = value.into();
    table.iter().filter(|(mask, _)| value & (*mask).into() != 0).map(|(_, name)| *name).collect()
}

/// Whether a config write of `len` bytes at `offset` touches any byte of the `width`-byte
/// register at `register`: how a bridge decides that a CfgWr changes a BAR, the MSI address or
/// Device Control and must be snooped.
pub fn write_touches(offset: u16, len: u16, register: u16, width: u16) -> bool {
    let (start, end) = (u32::from(offset), u32::from(offset) + u32::from(len));
    let (reg_start, reg_end) = (u32::from(register), u32::from(register) + u32::from(width));
    start < reg_end && reg_start < end
}

// ---------------------------------------------------------------------------------------------
// Header registers
// ---------------------------------------------------------------------------------------------

/// The Command register (0x04).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Command(pub u16);

impl Command {
    pub const IO_SPACE: u16 = 1 << 0;
    pub const MEMORY_SPACE: u16 = 1 << 1;
    pub const BUS_MASTER: u16 = 1 << 2;
    pub const SPECIAL_CYCLES: u16 = 1 << 3;
    pub const MEMORY_WRITE_INVALIDATE: u16 = 1 << 4;
    pub const VGA_PALETTE_SNOOP: u16 = 1 << 5;
    pub const PARITY_ERROR_RESPONSE: u16 = 1 << 6;
    pub const IDSEL_STEPPING: u16 = 1 << 7;
    pub const SERR_ENABLE: u16 = 1 << 8;
    pub const FAST_BACK_TO_BACK: u16 = 1 << 9;
    pub const INTX_DISABLE: u16 = 1 << 10;
    /// Each bit with its `lspci` name.
    pub const FLAGS: [(u16, &'static str); 11] = [
        (Self::IO_SPACE, "I/O"),
        (Self::MEMORY_SPACE, "Mem"),
        (Self::BUS_MASTER, "BusMaster"),
        (Self::SPECIAL_CYCLES, "SpecCycle"),
        (Self::MEMORY_WRITE_INVALIDATE, "MemWINV"),
        (Self::VGA_PALETTE_SNOOP, "VGASnoop"),
        (Self::PARITY_ERROR_RESPONSE, "ParErr"),
        (Self::IDSEL_STEPPING, "Stepping"),
        (Self::SERR_ENABLE, "SERR"),
        (Self::FAST_BACK_TO_BACK, "FastB2B"),
        (Self::INTX_DISABLE, "DisINTx"),
    ];

    pub fn io_space(self) -> bool {
        self.0 & Self::IO_SPACE != 0
    }
    pub fn memory_space(self) -> bool {
        self.0 & Self::MEMORY_SPACE != 0
    }
    pub fn bus_master(self) -> bool {
        self.0 & Self::BUS_MASTER != 0
    }
    pub fn intx_disable(self) -> bool {
        self.0 & Self::INTX_DISABLE != 0
    }
    /// `lspci` names of the set bits.
    pub fn set_flag_names(self) -> Vec<&'static str> {
        flag_names(self.0, &Self::FLAGS)
    }
}

/// The Status register (0x06).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Status(pub u16);

impl Status {
    pub const IMMEDIATE_READINESS: u16 = 1 << 0;
    pub const INTERRUPT_STATUS: u16 = 1 << 3;
    /// The capabilities pointer at 0x34 is valid.
    pub const CAPABILITIES_LIST: u16 = 1 << 4;
    pub const CAPABLE_66MHZ: u16 = 1 << 5;
    pub const FAST_BACK_TO_BACK: u16 = 1 << 7;
    pub const MASTER_DATA_PARITY_ERROR: u16 = 1 << 8;
    /// DEVSEL timing, bits 10:9 (conventional PCI only).
    pub const DEVSEL_MASK: u16 = 0b11 << 9;
    pub const SIGNALED_TARGET_ABORT: u16 = 1 << 11;
    pub const RECEIVED_TARGET_ABORT: u16 = 1 << 12;
    pub const RECEIVED_MASTER_ABORT: u16 = 1 << 13;
    pub const SIGNALED_SYSTEM_ERROR: u16 = 1 << 14;
    pub const DETECTED_PARITY_ERROR: u16 = 1 << 15;
    /// The error bits, which software clears by writing 1 (RW1C).
    pub const WRITE_ONE_TO_CLEAR: u16 = Self::MASTER_DATA_PARITY_ERROR
        | Self::SIGNALED_TARGET_ABORT
        | Self::RECEIVED_TARGET_ABORT
        | Self::RECEIVED_MASTER_ABORT
        | Self::SIGNALED_SYSTEM_ERROR
        | Self::DETECTED_PARITY_ERROR;
    /// Each single-bit flag with its `lspci` name.
    pub const FLAGS: [(u16, &'static str); 10] = [
        (Self::CAPABILITIES_LIST, "Cap"),
        (Self::CAPABLE_66MHZ, "66MHz"),
        (Self::FAST_BACK_TO_BACK, "FastB2B"),
        (Self::MASTER_DATA_PARITY_ERROR, "ParErr"),
        (Self::SIGNALED_TARGET_ABORT, ">TAbort"),
        (Self::RECEIVED_TARGET_ABORT, "<TAbort"),
        (Self::RECEIVED_MASTER_ABORT, "<MAbort"),
        (Self::SIGNALED_SYSTEM_ERROR, ">SERR"),
        (Self::DETECTED_PARITY_ERROR, "<PERR"),
        (Self::INTERRUPT_STATUS, "INTx"),
    ];

    pub fn capabilities_list(self) -> bool {
        self.0 & Self::CAPABILITIES_LIST != 0
    }
    pub fn interrupt_status(self) -> bool {
        self.0 & Self::INTERRUPT_STATUS != 0
    }
    /// DEVSEL timing: 0 fast, 1 medium, 2 slow (3 reserved).
    pub fn devsel_timing(self) -> u8 {
        ((self.0 & Self::DEVSEL_MASK) >> 9) as u8
    }
    /// `lspci` names of the set single-bit flags.
    pub fn set_flag_names(self) -> Vec<&'static str> {
        flag_names(self.0, &Self::FLAGS)
    }
}

/// The Header Type register (0x0e): layout in bits 6:0, multi-function in bit 7.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HeaderType(pub u8);

impl HeaderType {
    pub const MULTI_FUNCTION: u8 = 0x80;
    pub const LAYOUT_MASK: u8 = 0x7f;
    /// Layout 0: an endpoint (Type 0 header).
    pub const ENDPOINT: u8 = 0;
    /// Layout 1: a PCI-to-PCI bridge (Type 1 header).
    pub const PCI_BRIDGE: u8 = 1;
    /// Layout 2: a CardBus bridge.
    pub const CARDBUS_BRIDGE: u8 = 2;

    pub fn layout(self) -> u8 {
        self.0 & Self::LAYOUT_MASK
    }
    pub fn is_multi_function(self) -> bool {
        self.0 & Self::MULTI_FUNCTION != 0
    }
    /// How many BAR slots the layout has (0 for CardBus and reserved layouts).
    pub fn bar_count(self) -> u8 {
        match self.layout() {
            Self::ENDPOINT => header::TYPE0_BAR_COUNT,
            Self::PCI_BRIDGE => header::TYPE1_BAR_COUNT,
            _ => 0,
        }
    }
    /// Offset of the expansion ROM BAR for this layout.
    pub fn expansion_rom_offset(self) -> Option<u16> {
        match self.layout() {
            Self::ENDPOINT => Some(header::EXPANSION_ROM),
            Self::PCI_BRIDGE => Some(header::TYPE1_EXPANSION_ROM),
            _ => None,
        }
    }
    /// A short name of the layout.
    pub fn layout_name(self) -> &'static str {
        match self.layout() {
            Self::ENDPOINT => "endpoint (type 0)",
            Self::PCI_BRIDGE => "PCI bridge (type 1)",
            Self::CARDBUS_BRIDGE => "CardBus bridge (type 2)",
            _ => "reserved layout",
        }
    }
}

/// The 24-bit class code at 0x09..0x0b.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClassCode {
    pub base: u8,
    pub sub: u8,
    pub prog_if: u8,
}

impl ClassCode {
    /// Decodes the dword at 0x08 (revision ID in its low byte).
    pub fn from_register(dword_at_0x08: u32) -> Self {
        let [_revision, prog_if, sub, base] = dword_at_0x08.to_le_bytes();
        ClassCode { base, sub, prog_if }
    }
    /// The class code as the 24-bit value `base << 16 | sub << 8 | prog_if`.
    pub fn to_u24(self) -> u32 {
        (u32::from(self.base) << 16) | (u32::from(self.sub) << 8) | u32::from(self.prog_if)
    }
    /// The `lspci` name of the sub-class if known, else of the base class.
    pub fn name(self) -> Option<&'static str> {
        subclass_name(self.base, self.sub).or_else(|| base_class_name(self.base))
    }
}

impl fmt::Display for ClassCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}{:02x}{:02x}", self.base, self.sub, self.prog_if)
    }
}

/// Names of the base classes (PCI Code and ID Assignment Specification).
pub fn base_class_name(base: u8) -> Option<&'static str> {
    Some(match base {
        0x00 => "Unclassified device",
        0x01 => "Mass storage controller",
        0x02 => "Network controller",
        0x03 => "Display controller",
        0x04 => "Multimedia controller",
        0x05 => "Memory controller",
        0x06 => "Bridge",
        0x07 => "Communication controller",
        0x08 => "Generic system peripheral",
        0x09 => "Input device controller",
        0x0a => "Docking station",
        0x0b => "Processor",
        0x0c => "Serial bus controller",
        0x0d => "Wireless controller",
        0x0e => "Intelligent controller",
        0x0f => "Satellite communications controller",
        0x10 => "Encryption controller",
        0x11 => "Signal processing controller",
        0x12 => "Processing accelerators",
        0x13 => "Non-Essential Instrumentation",
        0x40 => "Coprocessor",
        0xff => "Unassigned class",
        _ => return None,
    })
}

/// Names of common sub-classes.
pub fn subclass_name(base: u8, sub: u8) -> Option<&'static str> {
    Some(match (base, sub) {
        (0x00, 0x00) => "Non-VGA unclassified device",
        (0x00, 0x01) => "VGA compatible unclassified device",
        (0x01, 0x00) => "SCSI storage controller",
        (0x01, 0x01) => "IDE interface",
        (0x01, 0x04) => "RAID bus controller",
        (0x01, 0x05) => "ATA controller",
        (0x01, 0x06) => "SATA controller",
        (0x01, 0x07) => "Serial Attached SCSI controller",
        (0x01, 0x08) => "Non-Volatile memory controller",
        (0x01, 0x80) => "Mass storage controller",
        (0x02, 0x00) => "Ethernet controller",
        (0x02, 0x07) => "Infiniband controller",
        (0x02, 0x80) => "Network controller",
        (0x03, 0x00) => "VGA compatible controller",
        (0x03, 0x02) => "3D controller",
        (0x03, 0x80) => "Display controller",
        (0x04, 0x00) => "Multimedia video controller",
        (0x04, 0x01) => "Multimedia audio controller",
        (0x04, 0x03) => "Audio device",
        (0x05, 0x00) => "RAM memory",
        (0x05, 0x01) => "FLASH memory",
        (0x05, 0x02) => "CXL",
        (0x06, 0x00) => "Host bridge",
        (0x06, 0x01) => "ISA bridge",
        (0x06, 0x04) => "PCI bridge",
        (0x06, 0x80) => "Bridge",
        (0x07, 0x00) => "Serial controller",
        (0x07, 0x80) => "Communication controller",
        (0x08, 0x05) => "SD Host controller",
        (0x08, 0x06) => "IOMMU",
        (0x08, 0x80) => "System peripheral",
        (0x0c, 0x03) => "USB controller",
        (0x0c, 0x05) => "SMBus",
        (0x0d, 0x80) => "Network controller",
        (0x10, 0x00) => "Network and computing encryption device",
        (0x11, 0x80) => "Signal processing controller",
        (0x12, 0x00) => "Processing accelerators",
        _ => return None,
    })
}

/// Interrupt Pin register value as a name: 1..=4 → INTA..INTD.
pub fn interrupt_pin_name(pin: u8) -> Option<&'static str> {
    match pin {
        1 => Some("INTA"),
        2 => Some("INTB"),
        3 => Some("INTC"),
        4 => Some("INTD"),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// BARs
// ---------------------------------------------------------------------------------------------

/// Bit fields of a base address register's low dword.
pub mod bar_bits {
    /// Bit 0: 1 = I/O space BAR.
    pub const IO_SPACE: u32 = 1 << 0;
    /// Bits 2:1 of a memory BAR: the decoder type.
    pub const MEM_TYPE_MASK: u32 = 0b11 << 1;
    pub const MEM_TYPE_32: u32 = 0b00 << 1;
    /// "Below 1 MiB" (PCI 2.x; reserved since PCI 3.0). Decoded as a 32-bit BAR.
    pub const MEM_TYPE_BELOW_1M: u32 = 0b01 << 1;
    pub const MEM_TYPE_64: u32 = 0b10 << 1;
    /// Bit 3 of a memory BAR.
    pub const PREFETCHABLE: u32 = 1 << 3;
    /// Address bits of an I/O BAR.
    pub const IO_ADDRESS_MASK: u32 = !0x3;
    /// Address bits of a memory BAR (low dword).
    pub const MEM_ADDRESS_MASK: u32 = !0xf;
}

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BarKind {
    /// I/O space.
    Io,
    /// 32-bit memory space.
    Mem32,
    /// 64-bit memory space; takes this slot and the next (upper 32 address bits).
    Mem64,
}

impl BarKind {
    /// The kind announced by a BAR's low dword, or `None` for the reserved memory type 11b.
    pub fn from_low_dword(low: u32) -> Option<Self> {
        if low & bar_bits::IO_SPACE != 0 {
            return Some(BarKind::Io);
        }
        match low & bar_bits::MEM_TYPE_MASK {
            bar_bits::MEM_TYPE_32 | bar_bits::MEM_TYPE_BELOW_1M => Some(BarKind::Mem32),
            bar_bits::MEM_TYPE_64 => Some(BarKind::Mem64),
            _ => None,
        }
    }
    /// The read-only low bits (type and prefetchable) a BAR of this kind reports.
    pub fn flag_bits(self, prefetchable: bool) -> u32 {
        let prefetch = if prefetchable && self != BarKind::Io { bar_bits::PREFETCHABLE } else { 0 };
        match self {
            BarKind::Io => bar_bits::IO_SPACE,
            BarKind::Mem32 => bar_bits::MEM_TYPE_32 | prefetch,
            BarKind::Mem64 => bar_bits::MEM_TYPE_64 | prefetch,
        }
    }
    /// How many BAR slots the kind occupies.
    pub fn slots(self) -> u8 {
        if self == BarKind::Mem64 { 2 } else { 1 }
    }
    /// The address bits of the (combined 64-bit) register value.
    pub fn address_mask(self) -> u64 {
        match self {
            BarKind::Io => u64::from(bar_bits::IO_ADDRESS_MASK),
            BarKind::Mem32 => u64::from(bar_bits::MEM_ADDRESS_MASK),
            BarKind::Mem64 => !0xf,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            BarKind::Io => "I/O",
            BarKind::Mem32 => "Memory 32-bit",
            BarKind::Mem64 => "Memory 64-bit",
        }
    }
}

/// One decoded base address register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Bar {
    /// The BAR slot (0..=5); a 64-bit BAR also uses `slot + 1`.
    pub slot: u8,
    pub kind: BarKind,
    /// Memory BARs only; always false for I/O.
    pub prefetchable: bool,
    /// The programmed base address (flag bits removed).
    pub address: u64,
}

impl Bar {
    /// Decodes BAR `slot` from its low dword and, for a 64-bit BAR, the next slot's dword.
    pub fn decode(slot: u8, low: u32, high: Option<u32>) -> Result<Bar> {
        let kind = BarKind::from_low_dword(low).ok_or(TlpError::BarReservedType { slot, raw: low })?;
        let address = match kind {
            BarKind::Io => u64::from(low & bar_bits::IO_ADDRESS_MASK),
            BarKind::Mem32 => u64::from(low & bar_bits::MEM_ADDRESS_MASK),
            BarKind::Mem64 => {
                let high = high.ok_or(TlpError::Bar64InLastSlot { slot })?;
                (u64::from(high) << 32) | u64::from(low & bar_bits::MEM_ADDRESS_MASK)
            }
        };
        let prefetchable = kind != BarKind::Io && low & bar_bits::PREFETCHABLE != 0;
        Ok(Bar { slot, kind, prefetchable, address })
    }

    /// The register values of this BAR: the low dword and, for a 64-bit BAR, the high dword.
    pub fn encode(&self) -> (u32, Option<u32>) {
        let flags = self.kind.flag_bits(self.prefetchable);
        let low = (self.address as u32 & self.kind.address_mask() as u32) | flags;
        let high = (self.kind == BarKind::Mem64).then_some((self.address >> 32) as u32);
        (low, high)
    }

    /// Offset of the BAR's (low) register.
    pub fn register_offset(&self) -> u16 {
        header::bar(self.slot)
    }
}

/// The size of a BAR from the value read back after writing all-ones to it.
///
/// `readback` is the low dword, with the high dword in bits 63:32 for a 64-bit BAR (ignored for
/// the others). The size is the lowest address bit the BAR lets software set; `None` when no
/// address bit sticks (an unimplemented BAR). I/O BARs that decode only 16 address bits read back
/// zeros in bits 31:16; the lowest set bit is still the size.
pub fn size_from_probe(kind: BarKind, readback: u64) -> Option<u64> {
    let mask = match kind {
        BarKind::Mem64 => kind.address_mask(),
        BarKind::Io | BarKind::Mem32 => kind.address_mask() & 0xffff_ffff,
    };
    let address_bits = readback & mask;
    if address_bits == 0 { None } else { Some(1 << address_bits.trailing_zeros()) }
}

/// The (combined 64-bit) register value a BAR of `size` bytes holds after software writes
/// `written`: address bits below the size read as 0, the flag bits are fixed. This is what a
/// device model returns, including the all-ones sizing write. `size` must be a power of two.
pub fn bar_value_after_write(kind: BarKind, prefetchable: bool, size: u64, written: u64) -> u64 {
    let size_mask = !size.saturating_sub(1);
    let width_mask = if kind == BarKind::Mem64 { u64::MAX } else { 0xffff_ffff };
    (written & kind.address_mask() & size_mask & width_mask) | u64::from(kind.flag_bits(prefetchable))
}

/// The expansion ROM base address register (0x30 in a Type 0 header).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExpansionRom {
    /// Bit 0: address decode enable.
    pub enabled: bool,
    /// Bits 31:11.
    pub address: u32,
}

impl ExpansionRom {
    pub const ENABLE: u32 = 1 << 0;
    pub const ADDRESS_MASK: u32 = 0xffff_f800;

    pub fn decode(raw: u32) -> Self {
        ExpansionRom { enabled: raw & Self::ENABLE != 0, address: raw & Self::ADDRESS_MASK }
    }
    pub fn encode(&self) -> u32 {
        (self.address & Self::ADDRESS_MASK) | u32::from(self.enabled)
    }
    /// The ROM size from the value read back after writing 0xffff_f800 (`None` = no ROM).
    pub fn size_from_probe(readback: u32) -> Option<u32> {
        let bits = readback & Self::ADDRESS_MASK;
        if bits == 0 { None } else { Some(1 << bits.trailing_zeros()) }
    }
}

// ---------------------------------------------------------------------------------------------
// Capability IDs and names
// ---------------------------------------------------------------------------------------------

/// Standard capability IDs (PCI Code and ID Assignment Specification).
pub mod cap_id {
    pub const POWER_MANAGEMENT: u8 = 0x01;
    pub const AGP: u8 = 0x02;
    pub const VPD: u8 = 0x03;
    pub const SLOT_ID: u8 = 0x04;
    pub const MSI: u8 = 0x05;
    pub const COMPACT_PCI_HOT_SWAP: u8 = 0x06;
    pub const PCI_X: u8 = 0x07;
    pub const HYPERTRANSPORT: u8 = 0x08;
    pub const VENDOR_SPECIFIC: u8 = 0x09;
    pub const DEBUG_PORT: u8 = 0x0a;
    pub const COMPACT_PCI_CRC: u8 = 0x0b;
    pub const PCI_HOT_PLUG: u8 = 0x0c;
    pub const BRIDGE_SUBSYSTEM_VENDOR_ID: u8 = 0x0d;
    pub const AGP_8X: u8 = 0x0e;
    pub const SECURE_DEVICE: u8 = 0x0f;
    pub const PCI_EXPRESS: u8 = 0x10;
    pub const MSI_X: u8 = 0x11;
    pub const SATA: u8 = 0x12;
    pub const ADVANCED_FEATURES: u8 = 0x13;
    pub const ENHANCED_ALLOCATION: u8 = 0x14;
    pub const FLATTENING_PORTAL_BRIDGE: u8 = 0x15;
}

/// The name of a standard capability ID.
pub fn capability_name(id: u8) -> Option<&'static str> {
    use cap_id::*;
    Some(match id {
        POWER_MANAGEMENT => "Power Management",
        AGP => "AGP",
        VPD => "Vital Product Data",
        SLOT_ID => "Slot Identification",
        MSI => "MSI",
        COMPACT_PCI_HOT_SWAP => "CompactPCI Hot Swap",
        PCI_X => "PCI-X",
        HYPERTRANSPORT => "HyperTransport",
        VENDOR_SPECIFIC => "Vendor Specific",
        DEBUG_PORT => "Debug Port",
        COMPACT_PCI_CRC => "CompactPCI Central Resource Control",
        PCI_HOT_PLUG => "PCI Hot-Plug",
        BRIDGE_SUBSYSTEM_VENDOR_ID => "Bridge Subsystem Vendor ID",
        AGP_8X => "AGP 8x",
        SECURE_DEVICE => "Secure Device",
        PCI_EXPRESS => "PCI Express",
        MSI_X => "MSI-X",
        SATA => "SATA Data/Index Configuration",
        ADVANCED_FEATURES => "Advanced Features",
        ENHANCED_ALLOCATION => "Enhanced Allocation",
        FLATTENING_PORTAL_BRIDGE => "Flattening Portal Bridge",
        _ => return None,
    })
}

/// Extended capability IDs (PCIe, from 0x100).
pub mod ext_cap_id {
    pub const NULL: u16 = 0x0000;
    pub const AER: u16 = 0x0001;
    pub const VIRTUAL_CHANNEL: u16 = 0x0002;
    pub const DEVICE_SERIAL_NUMBER: u16 = 0x0003;
    pub const POWER_BUDGETING: u16 = 0x0004;
    pub const RC_LINK_DECLARATION: u16 = 0x0005;
    pub const RC_INTERNAL_LINK_CONTROL: u16 = 0x0006;
    pub const RC_EVENT_COLLECTOR_ASSOCIATION: u16 = 0x0007;
    pub const MULTI_FUNCTION_VC: u16 = 0x0008;
    pub const VIRTUAL_CHANNEL_MFVC: u16 = 0x0009;
    pub const RCRB_HEADER: u16 = 0x000a;
    pub const VENDOR_SPECIFIC: u16 = 0x000b;
    pub const CONFIG_ACCESS_CORRELATION: u16 = 0x000c;
    pub const ACS: u16 = 0x000d;
    pub const ARI: u16 = 0x000e;
    pub const ATS: u16 = 0x000f;
    pub const SR_IOV: u16 = 0x0010;
    pub const MR_IOV: u16 = 0x0011;
    pub const MULTICAST: u16 = 0x0012;
    pub const PAGE_REQUEST: u16 = 0x0013;
    pub const RESIZABLE_BAR: u16 = 0x0015;
    pub const DYNAMIC_POWER_ALLOCATION: u16 = 0x0016;
    pub const TPH_REQUESTER: u16 = 0x0017;
    pub const LTR: u16 = 0x0018;
    pub const SECONDARY_PCIE: u16 = 0x0019;
    pub const PMUX: u16 = 0x001a;
    pub const PASID: u16 = 0x001b;
    pub const LN_REQUESTER: u16 = 0x001c;
    pub const DPC: u16 = 0x001d;
    pub const L1_PM_SUBSTATES: u16 = 0x001e;
    pub const PTM: u16 = 0x001f;
    pub const M_PCIE: u16 = 0x0020;
    pub const FRS_QUEUEING: u16 = 0x0021;
    pub const READINESS_TIME_REPORTING: u16 = 0x0022;
    pub const DVSEC: u16 = 0x0023;
    pub const VF_RESIZABLE_BAR: u16 = 0x0024;
    pub const DATA_LINK_FEATURE: u16 = 0x0025;
    pub const PHYSICAL_LAYER_16GT: u16 = 0x0026;
    pub const LANE_MARGINING: u16 = 0x0027;
    pub const HIERARCHY_ID: u16 = 0x0028;
    pub const NPEM: u16 = 0x0029;
    pub const PHYSICAL_LAYER_32GT: u16 = 0x002a;
    pub const ALTERNATE_PROTOCOL: u16 = 0x002b;
    pub const SFI: u16 = 0x002c;
    pub const SHADOW_FUNCTIONS: u16 = 0x002d;
    pub const DOE: u16 = 0x002e;
    pub const DEVICE_3: u16 = 0x002f;
    pub const IDE: u16 = 0x0030;
    pub const PHYSICAL_LAYER_64GT: u16 = 0x0031;
}

/// The name of an extended capability ID.
pub fn extended_capability_name(id: u16) -> Option<&'static str> {
    use ext_cap_id::*;
    Some(match id {
        NULL => "Null",
        AER => "Advanced Error Reporting",
        VIRTUAL_CHANNEL | VIRTUAL_CHANNEL_MFVC => "Virtual Channel",
        DEVICE_SERIAL_NUMBER => "Device Serial Number",
        POWER_BUDGETING => "Power Budgeting",
        RC_LINK_DECLARATION => "Root Complex Link Declaration",
        RC_INTERNAL_LINK_CONTROL => "Root Complex Internal Link Control",
        RC_EVENT_COLLECTOR_ASSOCIATION => "Root Complex Event Collector Endpoint Association",
        MULTI_FUNCTION_VC => "Multi-Function Virtual Channel",
        RCRB_HEADER => "RCRB Header",
        VENDOR_SPECIFIC => "Vendor-Specific Extended",
        CONFIG_ACCESS_CORRELATION => "Configuration Access Correlation",
        ACS => "Access Control Services",
        ARI => "Alternative Routing-ID Interpretation",
        ATS => "Address Translation Services",
        SR_IOV => "Single Root I/O Virtualization",
        MR_IOV => "Multi-Root I/O Virtualization",
        MULTICAST => "Multicast",
        PAGE_REQUEST => "Page Request Interface",
        RESIZABLE_BAR => "Resizable BAR",
        DYNAMIC_POWER_ALLOCATION => "Dynamic Power Allocation",
        TPH_REQUESTER => "TPH Requester",
        LTR => "Latency Tolerance Reporting",
        SECONDARY_PCIE => "Secondary PCI Express",
        PMUX => "Protocol Multiplexing",
        PASID => "Process Address Space ID",
        LN_REQUESTER => "LN Requester",
        DPC => "Downstream Port Containment",
        L1_PM_SUBSTATES => "L1 PM Substates",
        PTM => "Precision Time Measurement",
        M_PCIE => "M-PCIe",
        FRS_QUEUEING => "FRS Queueing",
        READINESS_TIME_REPORTING => "Readiness Time Reporting",
        DVSEC => "Designated Vendor-Specific",
        VF_RESIZABLE_BAR => "VF Resizable BAR",
        DATA_LINK_FEATURE => "Data Link Feature",
        PHYSICAL_LAYER_16GT => "Physical Layer 16.0 GT/s",
        LANE_MARGINING => "Lane Margining at the Receiver",
        HIERARCHY_ID => "Hierarchy ID",
        NPEM => "Native PCIe Enclosure Management",
        PHYSICAL_LAYER_32GT => "Physical Layer 32.0 GT/s",
        ALTERNATE_PROTOCOL => "Alternate Protocol",
        SFI => "System Firmware Intermediary",
        SHADOW_FUNCTIONS => "Shadow Functions",
        DOE => "Data Object Exchange",
        DEVICE_3 => "Device 3",
        IDE => "Integrity and Data Encryption",
        PHYSICAL_LAYER_64GT => "Physical Layer 64.0 GT/s",
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Capability list walks
// ---------------------------------------------------------------------------------------------

/// Which capability list a malformed pointer belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CapabilityChain {
    /// The list starting at the pointer at 0x34.
    Standard,
    /// The PCIe extended list starting at 0x100.
    Extended,
}

impl fmt::Display for CapabilityChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CapabilityChain::Standard => "standard",
            CapabilityChain::Extended => "extended",
        })
    }
}

/// What is wrong with a capability pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChainProblem {
    /// A standard capability pointer below 0x40 (inside the header).
    IntoHeader,
    /// An extended capability pointer below 0x100 (outside the extended space).
    BelowExtendedSpace,
    /// The two low bits of the pointer are not 0.
    Unaligned,
    /// The capability header would extend past the end of the image.
    BeyondEnd,
    /// The pointer leads back to a capability already visited.
    Loop,
}

impl fmt::Display for ChainProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChainProblem::IntoHeader => "points into the header (below 0x40)",
            ChainProblem::BelowExtendedSpace => "points below the extended space (0x100)",
            ChainProblem::Unaligned => "is not dword-aligned",
            ChainProblem::BeyondEnd => "points past the end of the config space",
            ChainProblem::Loop => "points back to a capability already visited (loop)",
        })
    }
}

/// One entry of the standard capability list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Capability {
    pub id: u8,
    /// Offset of the capability's ID byte.
    pub offset: u16,
    /// The Next Capability Pointer (0 = end of list).
    pub next: u8,
}

impl Capability {
    pub fn name(&self) -> Option<&'static str> {
        capability_name(self.id)
    }

    /// Decodes the capability's registers if this module knows its ID.
    pub fn decode(&self, view: &ConfigView<'_>) -> Result<DecodedCapability> {
        Ok(match self.id {
            cap_id::POWER_MANAGEMENT => {
                DecodedCapability::PowerManagement(PowerManagement::parse(view, self.offset)?)
            }
            cap_id::MSI => DecodedCapability::Msi(Msi::parse(view, self.offset)?),
            cap_id::MSI_X => DecodedCapability::Msix(Msix::parse(view, self.offset)?),
            cap_id::PCI_EXPRESS => DecodedCapability::PciExpress(PciExpress::parse(view, self.offset)?),
            cap_id::VENDOR_SPECIFIC => {
                DecodedCapability::VendorSpecific(VendorSpecific::parse(view, self.offset)?)
            }
            _ => DecodedCapability::Other(*self),
        })
    }
}

/// A standard capability decoded by its ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodedCapability {
    PowerManagement(PowerManagement),
    Msi(Msi),
    Msix(Msix),
    PciExpress(PciExpress),
    VendorSpecific(VendorSpecific),
    /// An ID without a typed decoder here.
    Other(Capability),
}

/// One entry of the extended capability list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExtendedCapability {
    pub id: u16,
    pub version: u8,
    pub offset: u16,
    /// The Next Capability Offset (0 = end of list).
    pub next: u16,
}

impl ExtendedCapability {
    pub fn name(&self) -> Option<&'static str> {
        extended_capability_name(self.id)
    }
    /// Decodes an extended capability header dword.
    pub fn from_header(offset: u16, header: u32) -> Self {
        ExtendedCapability {
            id: (header & 0xffff) as u16,
            version: ((header >> 16) & 0xf) as u8,
            offset,
            next: (header >> 20) as u16,
        }
    }
    /// The header dword for this capability.
    pub fn header(&self) -> u32 {
        u32::from(self.id) | (u32::from(self.version & 0xf) << 16) | (u32::from(self.next & 0xfff) << 20)
    }
}

/// A set of dword positions in a 4 KiB space, for loop detection.
struct Visited([u64; PCIE_CONFIG_LEN / 4 / 64]);

impl Visited {
    fn new() -> Self {
        Visited([0; PCIE_CONFIG_LEN / 4 / 64])
    }
    /// Marks `offset`'s dword; false if it was already marked (or lies outside 4 KiB).
    fn insert(&mut self, offset: u16) -> bool {
        let dword = usize::from(offset / 4);
        let Some(word) = self.0.get_mut(dword / 64) else { return false };
        let bit = 1u64 << (dword % 64);
        let fresh = *word & bit == 0;
        *word |= bit;
        fresh
    }
}

/// Iterator over the standard capability list; see [`ConfigView::capabilities`].
///
/// Yields each capability, or one error for the first broken pointer, after which it ends.
pub struct Capabilities<'v, 'a> {
    view: &'v ConfigView<'a>,
    /// Where the pointer about to be followed was read.
    at: u16,
    pointer: u16,
    visited: Visited,
    done: bool,
}

impl Iterator for Capabilities<'_, '_> {
    type Item = Result<Capability>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pointer == 0 {
            return None;
        }
        let (at, pointer) = (self.at, self.pointer);
        let broken =
            |problem| TlpError::CapabilityChain { chain: CapabilityChain::Standard, at, pointer, problem };
        let limit = self.view.image_len().min(PCI_CONFIG_LEN);
        let problem = if pointer < header::LEN {
            Some(ChainProblem::IntoHeader)
        } else if pointer % 4 != 0 {
            Some(ChainProblem::Unaligned)
        } else if usize::from(pointer) + 2 > limit {
            Some(ChainProblem::BeyondEnd)
        } else if !self.visited.insert(pointer) {
            Some(ChainProblem::Loop)
        } else {
            None
        };
        if let Some(problem) = problem {
            self.done = true;
            return Some(Err(broken(problem)));
        }
        let read = self.view.read_u8(pointer).and_then(|id| Ok((id, self.view.read_u8(pointer + 1)?)));
        match read {
            Ok((id, next)) => {
                self.at = pointer + 1;
                self.pointer = u16::from(next);
                Some(Ok(Capability { id, offset: pointer, next }))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Iterator over the extended capability list; see [`ConfigView::extended_capabilities`].
pub struct ExtendedCapabilities<'v, 'a> {
    view: &'v ConfigView<'a>,
    at: u16,
    pointer: u16,
    visited: Visited,
    done: bool,
}

impl Iterator for ExtendedCapabilities<'_, '_> {
    type Item = Result<ExtendedCapability>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pointer == 0 {
            return None;
        }
        let (at, pointer) = (self.at, self.pointer);
        let problem = if pointer < EXTENDED_CAPABILITIES_START {
            Some(ChainProblem::BelowExtendedSpace)
        } else if pointer % 4 != 0 {
            Some(ChainProblem::Unaligned)
        } else if usize::from(pointer) + 4 > self.view.image_len() {
            Some(ChainProblem::BeyondEnd)
        } else if !self.visited.insert(pointer) {
            Some(ChainProblem::Loop)
        } else {
            None
        };
        if let Some(problem) = problem {
            self.done = true;
            return Some(Err(TlpError::CapabilityChain {
                chain: CapabilityChain::Extended,
                at,
                pointer,
                problem,
            }));
        }
        match self.view.read_u32(pointer) {
            Ok(header) => {
                let cap = ExtendedCapability::from_header(pointer, header);
                self.at = pointer;
                self.pointer = cap.next;
                Some(Ok(cap))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ConfigView
// ---------------------------------------------------------------------------------------------

/// A read-only view of a config image with bounds-checked getters.
///
/// The image holds at least the 64-byte header and at most 4096 bytes; a length in between (for
/// example a 256-byte PCI space) is fine and limits what the walkers reach. Header getters cannot
/// fail; everything past the header returns an error instead of panicking when out of range.
#[derive(Clone, Copy, Debug)]
pub struct ConfigView<'a> {
    bytes: &'a [u8],
    header: &'a [u8; header::LEN as usize],
}

impl<'a> ConfigView<'a> {
    /// Wraps `bytes`; fails unless 64 <= length <= 4096.
    pub fn new(bytes: &'a [u8]) -> Result<Self> {
        if bytes.len() > PCIE_CONFIG_LEN {
            return Err(TlpError::ConfigImageLength { len: bytes.len() });
        }
        let header = bytes
            .get(..usize::from(header::LEN))
            .and_then(|h| h.try_into().ok())
            .ok_or(TlpError::ConfigImageLength { len: bytes.len() })?;
        Ok(ConfigView { bytes, header })
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// Length of the image in bytes.
    pub fn image_len(&self) -> usize {
        self.bytes.len()
    }
    /// Whether the image reaches into the PCIe extended space (beyond 256 bytes).
    pub fn has_extended_space(&self) -> bool {
        self.bytes.len() > PCI_CONFIG_LEN
    }

    /// `width` bytes at `offset`, or an error naming the access.
    pub fn read_bytes(&self, offset: u16, width: usize) -> Result<&'a [u8]> {
        let start = usize::from(offset);
        start
            .checked_add(width)
            .and_then(|end| self.bytes.get(start..end))
            .ok_or(TlpError::ConfigOutOfRange { offset: start, width, len: self.bytes.len() })
    }
    pub fn read_u8(&self, offset: u16) -> Result<u8> {
        Ok(self.read_array::<1>(offset)?[0])
    }
    pub fn read_u16(&self, offset: u16) -> Result<u16> {
        Ok(u16::from_le_bytes(self.read_array(offset)?))
    }
    pub fn read_u32(&self, offset: u16) -> Result<u32> {
        Ok(u32::from_le_bytes(self.read_array(offset)?))
    }
    fn read_array<const N: usize>(&self, offset: u16) -> Result<[u8; N]> {
        let bytes = self.read_bytes(offset, N)?;
        bytes.try_into().map_err(|_| TlpError::ConfigOutOfRange {
            offset: usize::from(offset),
            width: N,
            len: self.bytes.len(),
        })
    }

    fn header_u16(&self, offset: u16) -> u16 {
        let o = usize::from(offset);
        u16::from_le_bytes([self.header[o & 0x3f], self.header[(o + 1) & 0x3f]])
    }
    fn header_u32(&self, offset: u16) -> u32 {
        let o = usize::from(offset);
        u32::from_le_bytes([
            self.header[o & 0x3f],
            self.header[(o + 1) & 0x3f],
            self.header[(o + 2) & 0x3f],
            self.header[(o + 3) & 0x3f],
        ])
    }
    fn header_u8(&self, offset: u16) -> u8 {
        self.header[usize::from(offset) & 0x3f]
    }

    pub fn vendor_id(&self) -> u16 {
        self.header_u16(header::VENDOR_ID)
    }
    pub fn device_id(&self) -> u16 {
        self.header_u16(header::DEVICE_ID)
    }
    pub fn command(&self) -> Command {
        Command(self.header_u16(header::COMMAND))
    }
    pub fn status(&self) -> Status {
        Status(self.header_u16(header::STATUS))
    }
    pub fn revision_id(&self) -> u8 {
        self.header_u8(header::REVISION_ID)
    }
    pub fn class_code(&self) -> ClassCode {
        ClassCode::from_register(self.header_u32(header::REVISION_ID))
    }
    pub fn cache_line_size(&self) -> u8 {
        self.header_u8(header::CACHE_LINE_SIZE)
    }
    pub fn latency_timer(&self) -> u8 {
        self.header_u8(header::LATENCY_TIMER)
    }
    pub fn header_type(&self) -> HeaderType {
        HeaderType(self.header_u8(header::HEADER_TYPE))
    }
    pub fn bist(&self) -> u8 {
        self.header_u8(header::BIST)
    }
    /// Raw value of BAR `slot`, or `None` if the header layout has no such slot.
    pub fn bar_register(&self, slot: u8) -> Option<u32> {
        (slot < self.header_type().bar_count()).then(|| self.header_u32(header::bar(slot)))
    }
    /// Subsystem vendor ID (Type 0 only; `None` for other layouts).
    pub fn subsystem_vendor_id(&self) -> Option<u16> {
        (self.header_type().layout() == HeaderType::ENDPOINT)
            .then(|| self.header_u16(header::SUBSYSTEM_VENDOR_ID))
    }
    /// Subsystem ID (Type 0 only).
    pub fn subsystem_id(&self) -> Option<u16> {
        (self.header_type().layout() == HeaderType::ENDPOINT).then(|| self.header_u16(header::SUBSYSTEM_ID))
    }
    /// The raw expansion ROM register for the header layout (0x30 Type 0, 0x38 Type 1).
    pub fn expansion_rom_register(&self) -> Option<u32> {
        self.header_type().expansion_rom_offset().map(|o| self.header_u32(o))
    }
    pub fn expansion_rom(&self) -> Option<ExpansionRom> {
        self.expansion_rom_register().map(ExpansionRom::decode)
    }
    /// The raw Capabilities Pointer (0x34), valid only when [`Status::capabilities_list`] is set.
    pub fn capabilities_pointer(&self) -> u8 {
        self.header_u8(header::CAPABILITIES_POINTER)
    }
    pub fn interrupt_line(&self) -> u8 {
        self.header_u8(header::INTERRUPT_LINE)
    }
    pub fn interrupt_pin(&self) -> u8 {
        self.header_u8(header::INTERRUPT_PIN)
    }

    /// The BAR slots of the header layout, decoded in order. A 64-bit BAR consumes the next slot.
    /// A bad slot yields an error and decoding continues with the next slot.
    pub fn bar_iter(&self) -> impl Iterator<Item = Result<Bar>> + '_ {
        let count = self.header_type().bar_count();
        let mut slot = 0u8;
        core::iter::from_fn(move || {
            if slot >= count {
                return None;
            }
            let this = slot;
            let low = self.header_u32(header::bar(this));
            let kind = BarKind::from_low_dword(low);
            let high = if kind == Some(BarKind::Mem64) && this + 1 < count {
                Some(self.header_u32(header::bar(this + 1)))
            } else {
                None
            };
            slot += kind.map_or(1, BarKind::slots);
            Some(Bar::decode(this, low, high))
        })
    }

    /// All BAR slots decoded (including unassigned ones reading 0), or the first error.
    pub fn bars(&self) -> Result<Vec<Bar>> {
        self.bar_iter().collect()
    }

    /// The standard capability list, from the pointer at 0x34. Empty when the Status register's
    /// Capabilities List bit is clear. Bounded: every pointer is checked (not into the header,
    /// dword-aligned, inside the image) and a revisited offset ends the walk with an error.
    pub fn capabilities(&self) -> Capabilities<'_, 'a> {
        let pointer =
            if self.status().capabilities_list() { u16::from(self.capabilities_pointer()) } else { 0 };
        Capabilities {
            view: self,
            at: header::CAPABILITIES_POINTER,
            pointer,
            visited: Visited::new(),
            done: false,
        }
    }

    /// The extended capability list from 0x100. Empty for images of 256 bytes or less, and when
    /// the header at 0x100 is 0 (no extended capabilities) or all-ones (no extended space).
    pub fn extended_capabilities(&self) -> ExtendedCapabilities<'_, 'a> {
        let first = self.read_u32(EXTENDED_CAPABILITIES_START).unwrap_or(0);
        let pointer = if first == 0 || first == u32::MAX { 0 } else { EXTENDED_CAPABILITIES_START };
        ExtendedCapabilities {
            view: self,
            at: EXTENDED_CAPABILITIES_START,
            pointer,
            visited: Visited::new(),
            done: false,
        }
    }

    /// The first standard capability with `id`; an error if the list breaks before it is found.
    pub fn find_capability(&self, id: u8) -> Result<Option<Capability>> {
        for cap in self.capabilities() {
            let cap = cap?;
            if cap.id == id {
                return Ok(Some(cap));
            }
        }
        Ok(None)
    }

    /// The first extended capability with `id`.
    pub fn find_extended_capability(&self, id: u16) -> Result<Option<ExtendedCapability>> {
        for cap in self.extended_capabilities() {
            let cap = cap?;
            if cap.id == id {
                return Ok(Some(cap));
            }
        }
        Ok(None)
    }

    pub fn power_management(&self) -> Result<Option<PowerManagement>> {
        self.find_capability(cap_id::POWER_MANAGEMENT)?
            .map(|c| PowerManagement::parse(self, c.offset))
            .transpose()
    }
    pub fn msi(&self) -> Result<Option<Msi>> {
        self.find_capability(cap_id::MSI)?.map(|c| Msi::parse(self, c.offset)).transpose()
    }
    pub fn msix(&self) -> Result<Option<Msix>> {
        self.find_capability(cap_id::MSI_X)?.map(|c| Msix::parse(self, c.offset)).transpose()
    }
    pub fn pci_express(&self) -> Result<Option<PciExpress>> {
        self.find_capability(cap_id::PCI_EXPRESS)?.map(|c| PciExpress::parse(self, c.offset)).transpose()
    }
}

/// Checks that a standard capability with `id` sits at `offset` and that `len` bytes of it fit in
/// the image.
fn check_capability(view: &ConfigView<'_>, offset: u16, id: u8, name: &'static str, len: u16) -> Result<()> {
    let found = view.read_u8(offset)?;
    if found != id {
        return Err(TlpError::CapabilityIdMismatch { offset, expected: id.into(), found: found.into() });
    }
    // Standard capabilities live below 0x100 even in a 4 KiB space.
    let limit = view.image_len().min(PCI_CONFIG_LEN);
    if usize::from(offset) + usize::from(len) > limit {
        return Err(TlpError::CapabilityTruncated { name, offset, needed: len, limit });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Power Management (0x01)
// ---------------------------------------------------------------------------------------------

/// Power Management capability register offsets, relative to the capability.
pub mod pm {
    pub const CAPABILITIES: u16 = 0x02;
    pub const CONTROL_STATUS: u16 = 0x04;
    /// PMCSR_BSE (bridge) and Data register.
    pub const BRIDGE_EXTENSIONS: u16 = 0x06;
    pub const DATA: u16 = 0x07;
    pub const LEN: u16 = 0x08;
}

/// Power Management Capabilities (PMC) register.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PmCapabilities(pub u16);

impl PmCapabilities {
    pub const VERSION_MASK: u16 = 0x7;
    pub const PME_CLOCK: u16 = 1 << 3;
    pub const IMMEDIATE_READINESS_ON_D0: u16 = 1 << 4;
    pub const DEVICE_SPECIFIC_INIT: u16 = 1 << 5;
    pub const D1_SUPPORT: u16 = 1 << 9;
    pub const D2_SUPPORT: u16 = 1 << 10;
    /// PME_Support, bits 15:11: one bit per state D0, D1, D2, D3hot, D3cold.
    pub const PME_SUPPORT_SHIFT: u32 = 11;

    pub fn version(self) -> u8 {
        (self.0 & Self::VERSION_MASK) as u8
    }
    pub fn pme_clock(self) -> bool {
        bit16(self.0, 3)
    }
    pub fn device_specific_init(self) -> bool {
        bit16(self.0, 5)
    }
    /// Aux current, bits 8:6 (encoded).
    pub fn aux_current(self) -> u8 {
        ((self.0 >> 6) & 0x7) as u8
    }
    pub fn d1_support(self) -> bool {
        bit16(self.0, 9)
    }
    pub fn d2_support(self) -> bool {
        bit16(self.0, 10)
    }
    /// PME_Support bits: bit 0 D0, 1 D1, 2 D2, 3 D3hot, 4 D3cold.
    pub fn pme_support(self) -> u8 {
        (self.0 >> Self::PME_SUPPORT_SHIFT) as u8
    }
    /// Names of the states from which PME# can be signalled.
    pub fn pme_support_names(self) -> Vec<&'static str> {
        let names = ["D0", "D1", "D2", "D3hot", "D3cold"];
        names
            .iter()
            .enumerate()
            .filter(|(i, _)| self.pme_support() & (1 << i) != 0)
            .map(|(_, n)| *n)
            .collect()
    }
}

/// Power states, PMCSR bits 1:0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PowerState {
    D0,
    D1,
    D2,
    D3Hot,
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PowerState::D0 => "D0",
            PowerState::D1 => "D1",
            PowerState::D2 => "D2",
            PowerState::D3Hot => "D3hot",
        })
    }
}

/// Power Management Control/Status (PMCSR) register.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PmControlStatus(pub u16);

impl PmControlStatus {
    pub const POWER_STATE_MASK: u16 = 0x3;
    pub const NO_SOFT_RESET: u16 = 1 << 3;
    pub const PME_ENABLE: u16 = 1 << 8;
    /// RW1C.
    pub const PME_STATUS: u16 = 1 << 15;

    pub fn power_state(self) -> PowerState {
        match self.0 & Self::POWER_STATE_MASK {
            0 => PowerState::D0,
            1 => PowerState::D1,
            2 => PowerState::D2,
            _ => PowerState::D3Hot,
        }
    }
    pub fn no_soft_reset(self) -> bool {
        bit16(self.0, 3)
    }
    pub fn pme_enable(self) -> bool {
        bit16(self.0, 8)
    }
    pub fn pme_status(self) -> bool {
        bit16(self.0, 15)
    }
}

/// The Power Management capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PowerManagement {
    pub offset: u16,
    pub capabilities: PmCapabilities,
    pub control_status: PmControlStatus,
}

impl PowerManagement {
    pub fn parse(view: &ConfigView<'_>, offset: u16) -> Result<Self> {
        check_capability(view, offset, cap_id::POWER_MANAGEMENT, "Power Management", pm::LEN)?;
        Ok(PowerManagement {
            offset,
            capabilities: PmCapabilities(view.read_u16(offset + pm::CAPABILITIES)?),
            control_status: PmControlStatus(view.read_u16(offset + pm::CONTROL_STATUS)?),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// MSI (0x05)
// ---------------------------------------------------------------------------------------------

/// MSI register offsets that do not depend on the layout; see [`MsiLayout`] for the others.
pub mod msi {
    pub const CONTROL: u16 = 0x02;
    pub const ADDRESS_LO: u16 = 0x04;
}

/// MSI Message Control register.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MsiControl(pub u16);

impl MsiControl {
    pub const ENABLE: u16 = 1 << 0;
    /// Multiple Message Capable, bits 3:1 (log2 of the vector count).
    pub const MULTIPLE_MESSAGE_CAPABLE_MASK: u16 = 0x7 << 1;
    /// Multiple Message Enable, bits 6:4 (log2 of the vectors software allocated).
    pub const MULTIPLE_MESSAGE_ENABLE_MASK: u16 = 0x7 << 4;
    pub const ADDRESS_64BIT: u16 = 1 << 7;
    pub const PER_VECTOR_MASKING: u16 = 1 << 8;
    pub const EXTENDED_MESSAGE_DATA_CAPABLE: u16 = 1 << 9;
    pub const EXTENDED_MESSAGE_DATA_ENABLE: u16 = 1 << 10;

    pub fn enabled(self) -> bool {
        bit16(self.0, 0)
    }
    /// log2 of the vectors requested (0..=5 valid; 6, 7 reserved).
    pub fn multiple_message_capable(self) -> u8 {
        ((self.0 >> 1) & 0x7) as u8
    }
    /// log2 of the vectors allocated.
    pub fn multiple_message_enable(self) -> u8 {
        ((self.0 >> 4) & 0x7) as u8
    }
    /// Vectors requested: 1, 2, 4, 8, 16 or 32 (reserved encodings are clamped to 32).
    pub fn vectors_capable(self) -> u8 {
        1 << self.multiple_message_capable().min(5)
    }
    /// Vectors allocated: 1 to 32 (reserved encodings are clamped to 32).
    pub fn vectors_enabled(self) -> u8 {
        1 << self.multiple_message_enable().min(5)
    }
    pub fn is_64bit(self) -> bool {
        bit16(self.0, 7)
    }
    pub fn per_vector_masking(self) -> bool {
        bit16(self.0, 8)
    }
    pub fn extended_message_data_capable(self) -> bool {
        bit16(self.0, 9)
    }
    pub fn with_enabled(self, on: bool) -> Self {
        MsiControl(set_bit16(self.0, Self::ENABLE, on))
    }
    /// Sets Multiple Message Enable to `log2_vectors` (0..=5).
    pub fn with_multiple_message_enable(self, log2_vectors: u8) -> Self {
        MsiControl((self.0 & !Self::MULTIPLE_MESSAGE_ENABLE_MASK) | ((u16::from(log2_vectors.min(5))) << 4))
    }
    /// The layout these bits select.
    pub fn layout(self) -> MsiLayout {
        MsiLayout { is_64bit: self.is_64bit(), per_vector_masking: self.per_vector_masking() }
    }
}

/// Where the MSI registers are, relative to the capability; they move with the 64-bit and
/// per-vector-masking bits:
///
/// | register     | 32-bit | 64-bit |
/// |--------------|--------|--------|
/// | address lo   | 0x04   | 0x04   |
/// | address hi   | —      | 0x08   |
/// | data         | 0x08   | 0x0c   |
/// | mask bits    | 0x0c   | 0x10   |
/// | pending bits | 0x10   | 0x14   |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MsiLayout {
    pub is_64bit: bool,
    pub per_vector_masking: bool,
}

impl MsiLayout {
    pub fn address_lo(self) -> u16 {
        msi::ADDRESS_LO
    }
    pub fn address_hi(self) -> Option<u16> {
        self.is_64bit.then_some(0x08)
    }
    /// Message Data (16 bits; the Extended Message Data follows at +2).
    pub fn data(self) -> u16 {
        if self.is_64bit { 0x0c } else { 0x08 }
    }
    pub fn mask_bits(self) -> Option<u16> {
        self.per_vector_masking.then_some(self.data() + 4)
    }
    pub fn pending_bits(self) -> Option<u16> {
        self.per_vector_masking.then_some(self.data() + 8)
    }
    /// The capability's length in bytes (dword-rounded, including Extended Message Data).
    pub fn struct_len(self) -> u16 {
        self.data() + if self.per_vector_masking { 12 } else { 4 }
    }
}

/// The MSI capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Msi {
    pub offset: u16,
    pub control: MsiControl,
    /// Message Address (upper dword 0 for a 32-bit capability).
    pub address: u64,
    pub data: u16,
    pub mask_bits: Option<u32>,
    pub pending_bits: Option<u32>,
}

impl Msi {
    pub fn parse(view: &ConfigView<'_>, offset: u16) -> Result<Self> {
        // The control register says how long the capability is; check that it exists first.
        check_capability(view, offset, cap_id::MSI, "MSI", msi::CONTROL + 2)?;
        let control = MsiControl(view.read_u16(offset + msi::CONTROL)?);
        let layout = control.layout();
        check_capability(view, offset, cap_id::MSI, "MSI", layout.struct_len())?;
        let lo = view.read_u32(offset + layout.address_lo())?;
        let hi = layout.address_hi().map(|o| view.read_u32(offset + o)).transpose()?.unwrap_or(0);
        Ok(Msi {
            offset,
            control,
            address: (u64::from(hi) << 32) | u64::from(lo),
            data: view.read_u16(offset + layout.data())?,
            mask_bits: layout.mask_bits().map(|o| view.read_u32(offset + o)).transpose()?,
            pending_bits: layout.pending_bits().map(|o| view.read_u32(offset + o)).transpose()?,
        })
    }
    pub fn layout(&self) -> MsiLayout {
        self.control.layout()
    }
}

// ---------------------------------------------------------------------------------------------
// MSI-X (0x11)
// ---------------------------------------------------------------------------------------------

/// MSI-X capability register offsets, relative to the capability, and the table entry layout.
pub mod msix {
    pub const CONTROL: u16 = 0x02;
    /// Table Offset/BIR: BIR in bits 2:0, offset (8-byte aligned) in bits 31:3.
    pub const TABLE: u16 = 0x04;
    /// PBA Offset/BIR, same layout.
    pub const PBA: u16 = 0x08;
    pub const LEN: u16 = 0x0c;
    pub const BIR_MASK: u32 = 0x7;
    pub const OFFSET_MASK: u32 = !0x7;

    /// Offsets inside one 16-byte MSI-X table entry.
    pub mod entry {
        pub const ADDRESS_LO: usize = 0x0;
        pub const ADDRESS_HI: usize = 0x4;
        pub const DATA: usize = 0x8;
        pub const VECTOR_CONTROL: usize = 0xc;
        /// Vector Control bit 0.
        pub const MASKED: u32 = 1 << 0;
        pub const LEN: usize = 16;
    }
}

/// MSI-X Message Control register.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MsixControl(pub u16);

impl MsixControl {
    /// Table Size, bits 10:0, encoded as N-1.
    pub const TABLE_SIZE_MASK: u16 = 0x7ff;
    pub const FUNCTION_MASK: u16 = 1 << 14;
    pub const ENABLE: u16 = 1 << 15;

    /// Number of table entries (1..=2048).
    pub fn table_size(self) -> u16 {
        (self.0 & Self::TABLE_SIZE_MASK) + 1
    }
    pub fn function_mask(self) -> bool {
        bit16(self.0, 14)
    }
    pub fn enabled(self) -> bool {
        bit16(self.0, 15)
    }
    pub fn with_enabled(self, on: bool) -> Self {
        MsixControl(set_bit16(self.0, Self::ENABLE, on))
    }
    pub fn with_function_mask(self, on: bool) -> Self {
        MsixControl(set_bit16(self.0, Self::FUNCTION_MASK, on))
    }
}

/// The MSI-X capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Msix {
    pub offset: u16,
    pub control: MsixControl,
    /// BAR indicator of the table (0..=5 valid; 6, 7 reserved).
    pub table_bir: u8,
    /// Offset of the table inside that BAR.
    pub table_offset: u32,
    pub pba_bir: u8,
    pub pba_offset: u32,
}

impl Msix {
    pub fn parse(view: &ConfigView<'_>, offset: u16) -> Result<Self> {
        check_capability(view, offset, cap_id::MSI_X, "MSI-X", msix::LEN)?;
        let table = view.read_u32(offset + msix::TABLE)?;
        let pba = view.read_u32(offset + msix::PBA)?;
        Ok(Msix {
            offset,
            control: MsixControl(view.read_u16(offset + msix::CONTROL)?),
            table_bir: (table & msix::BIR_MASK) as u8,
            table_offset: table & msix::OFFSET_MASK,
            pba_bir: (pba & msix::BIR_MASK) as u8,
            pba_offset: pba & msix::OFFSET_MASK,
        })
    }
    /// Table length in bytes (16 per entry).
    pub fn table_len(&self) -> u32 {
        u32::from(self.control.table_size()) * msix::entry::LEN as u32
    }
    /// Pending Bit Array length in bytes (one bit per entry, in whole qwords).
    pub fn pba_len(&self) -> u32 {
        u32::from(self.control.table_size()).div_ceil(64) * 8
    }
    /// Both BIRs name a BAR slot (0..=5).
    pub fn birs_valid(&self) -> bool {
        self.table_bir <= 5 && self.pba_bir <= 5
    }
    /// The Table Offset/BIR register value.
    pub fn table_register(&self) -> u32 {
        (self.table_offset & msix::OFFSET_MASK) | (u32::from(self.table_bir) & msix::BIR_MASK)
    }
    /// The PBA Offset/BIR register value.
    pub fn pba_register(&self) -> u32 {
        (self.pba_offset & msix::OFFSET_MASK) | (u32::from(self.pba_bir) & msix::BIR_MASK)
    }
}

/// One 16-byte MSI-X table entry (little-endian dwords: address lo, address hi, data, vector
/// control).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MsixTableEntry {
    pub address: u64,
    pub data: u32,
    /// The whole Vector Control dword (bit 0 = masked; other bits reserved or steering tag).
    pub vector_control: u32,
}

impl MsixTableEntry {
    pub fn parse(bytes: &[u8; msix::entry::LEN]) -> Self {
        // Field order as in `msix::entry`: address lo, address hi, data, vector control.
        let [a0, a1, a2, a3, h0, h1, h2, h3, d0, d1, d2, d3, v0, v1, v2, v3] = *bytes;
        let address_lo = u32::from_le_bytes([a0, a1, a2, a3]);
        let address_hi = u32::from_le_bytes([h0, h1, h2, h3]);
        MsixTableEntry {
            address: (u64::from(address_hi) << 32) | u64::from(address_lo),
            data: u32::from_le_bytes([d0, d1, d2, d3]),
            vector_control: u32::from_le_bytes([v0, v1, v2, v3]),
        }
    }
    pub fn emit(&self) -> [u8; msix::entry::LEN] {
        let mut out = [0u8; msix::entry::LEN];
        let dwords = [self.address as u32, (self.address >> 32) as u32, self.data, self.vector_control];
        for (chunk, dword) in out.chunks_exact_mut(4).zip(dwords) {
            chunk.copy_from_slice(&dword.to_le_bytes());
        }
        out
    }
    pub fn masked(&self) -> bool {
        self.vector_control & msix::entry::MASKED != 0
    }
}

// ---------------------------------------------------------------------------------------------
// PCI Express (0x10)
// ---------------------------------------------------------------------------------------------

/// PCI Express capability register offsets, relative to the capability.
pub mod pcie {
    pub const CAPABILITIES: u16 = 0x02;
    pub const DEVICE_CAPABILITIES: u16 = 0x04;
    pub const DEVICE_CONTROL: u16 = 0x08;
    pub const DEVICE_STATUS: u16 = 0x0a;
    pub const LINK_CAPABILITIES: u16 = 0x0c;
    pub const LINK_CONTROL: u16 = 0x10;
    pub const LINK_STATUS: u16 = 0x12;
    pub const SLOT_CAPABILITIES: u16 = 0x14;
    pub const SLOT_CONTROL: u16 = 0x18;
    pub const SLOT_STATUS: u16 = 0x1a;
    pub const ROOT_CONTROL: u16 = 0x1c;
    pub const ROOT_CAPABILITIES: u16 = 0x1e;
    pub const ROOT_STATUS: u16 = 0x20;
    pub const DEVICE_CAPABILITIES_2: u16 = 0x24;
    pub const DEVICE_CONTROL_2: u16 = 0x28;
    pub const DEVICE_STATUS_2: u16 = 0x2a;
    pub const LINK_CAPABILITIES_2: u16 = 0x2c;
    pub const LINK_CONTROL_2: u16 = 0x30;
    pub const LINK_STATUS_2: u16 = 0x32;
    pub const SLOT_CAPABILITIES_2: u16 = 0x34;
    pub const SLOT_CONTROL_2: u16 = 0x38;
    pub const SLOT_STATUS_2: u16 = 0x3a;
    /// Length of a version 1 capability (up to Root Status).
    pub const LEN_V1: u16 = 0x24;
    /// Length of a version 2 capability.
    pub const LEN_V2: u16 = 0x3c;
}

/// Encoded payload/read-request sizes 0..=5 → 128..=4096 bytes (DevCap MPS Supported, DevCtl MPS
/// and MRRS share the encoding); `None` for the reserved codes 6 and 7.
pub fn size_code_to_bytes(code: u8) -> Option<u16> {
    (code <= 5).then(|| 128u16 << code)
}

/// The code for a size of 128, 256, 512, 1024, 2048 or 4096 bytes.
pub fn bytes_to_size_code(bytes: u16) -> Option<u8> {
    (bytes.is_power_of_two() && (128..=4096).contains(&bytes)).then(|| (bytes.trailing_zeros() - 7) as u8)
}

/// Max_Payload_Size code → bytes.
pub fn mps_code_to_bytes(code: u8) -> Option<u16> {
    size_code_to_bytes(code)
}
/// Max_Payload_Size bytes → code.
pub fn mps_bytes_to_code(bytes: u16) -> Option<u8> {
    bytes_to_size_code(bytes)
}
/// Max_Read_Request_Size code → bytes.
pub fn mrrs_code_to_bytes(code: u8) -> Option<u16> {
    size_code_to_bytes(code)
}
/// Max_Read_Request_Size bytes → code.
pub fn mrrs_bytes_to_code(bytes: u16) -> Option<u8> {
    bytes_to_size_code(bytes)
}

/// PCI Express Capabilities register (cap + 0x02).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PcieCapabilities(pub u16);

impl PcieCapabilities {
    pub fn version(self) -> u8 {
        (self.0 & 0xf) as u8
    }
    pub fn port_type(self) -> PortType {
        PortType::from_bits(((self.0 >> 4) & 0xf) as u8)
    }
    pub fn slot_implemented(self) -> bool {
        bit16(self.0, 8)
    }
    pub fn interrupt_message_number(self) -> u8 {
        ((self.0 >> 9) & 0x1f) as u8
    }
}

/// Device/Port Type, PCI Express Capabilities bits 7:4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortType {
    Endpoint,
    LegacyEndpoint,
    RootPort,
    UpstreamSwitchPort,
    DownstreamSwitchPort,
    PcieToPciBridge,
    PciToPcieBridge,
    RcIntegratedEndpoint,
    RcEventCollector,
    Reserved(u8),
}

impl PortType {
    pub fn from_bits(bits: u8) -> Self {
        match bits & 0xf {
            0x0 => PortType::Endpoint,
            0x1 => PortType::LegacyEndpoint,
            0x4 => PortType::RootPort,
            0x5 => PortType::UpstreamSwitchPort,
            0x6 => PortType::DownstreamSwitchPort,
            0x7 => PortType::PcieToPciBridge,
            0x8 => PortType::PciToPcieBridge,
            0x9 => PortType::RcIntegratedEndpoint,
            0xa => PortType::RcEventCollector,
            other => PortType::Reserved(other),
        }
    }
    pub fn bits(self) -> u8 {
        match self {
            PortType::Endpoint => 0x0,
            PortType::LegacyEndpoint => 0x1,
            PortType::RootPort => 0x4,
            PortType::UpstreamSwitchPort => 0x5,
            PortType::DownstreamSwitchPort => 0x6,
            PortType::PcieToPciBridge => 0x7,
            PortType::PciToPcieBridge => 0x8,
            PortType::RcIntegratedEndpoint => 0x9,
            PortType::RcEventCollector => 0xa,
            PortType::Reserved(bits) => bits & 0xf,
        }
    }
}

impl fmt::Display for PortType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortType::Endpoint => f.write_str("Endpoint"),
            PortType::LegacyEndpoint => f.write_str("Legacy Endpoint"),
            PortType::RootPort => f.write_str("Root Port"),
            PortType::UpstreamSwitchPort => f.write_str("Upstream Port of Switch"),
            PortType::DownstreamSwitchPort => f.write_str("Downstream Port of Switch"),
            PortType::PcieToPciBridge => f.write_str("PCI Express to PCI/PCI-X Bridge"),
            PortType::PciToPcieBridge => f.write_str("PCI/PCI-X to PCI Express Bridge"),
            PortType::RcIntegratedEndpoint => f.write_str("Root Complex Integrated Endpoint"),
            PortType::RcEventCollector => f.write_str("Root Complex Event Collector"),
            PortType::Reserved(bits) => write!(f, "reserved type {bits:#x}"),
        }
    }
}

/// Device Capabilities register (cap + 0x04).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DeviceCapabilities(pub u32);

impl DeviceCapabilities {
    pub const MAX_PAYLOAD_SUPPORTED_MASK: u32 = 0x7;
    pub const EXTENDED_TAG_SUPPORTED: u32 = 1 << 5;
    pub const ROLE_BASED_ERROR_REPORTING: u32 = 1 << 15;
    pub const FLR_CAPABLE: u32 = 1 << 28;

    pub fn max_payload_supported_code(self) -> u8 {
        (self.0 & Self::MAX_PAYLOAD_SUPPORTED_MASK) as u8
    }
    /// Max_Payload_Size Supported in bytes (`None` for a reserved code).
    pub fn max_payload_supported(self) -> Option<u16> {
        size_code_to_bytes(self.max_payload_supported_code())
    }
    pub fn phantom_functions(self) -> u8 {
        ((self.0 >> 3) & 0x3) as u8
    }
    /// 8-bit tags supported (else 5-bit).
    pub fn extended_tag_supported(self) -> bool {
        bit32(self.0, 5)
    }
    pub fn role_based_error_reporting(self) -> bool {
        bit32(self.0, 15)
    }
    pub fn flr_capable(self) -> bool {
        bit32(self.0, 28)
    }
}

/// Device Control register (cap + 0x08).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DeviceControl(pub u16);

impl DeviceControl {
    pub const CORRECTABLE_ERROR_REPORTING: u16 = 1 << 0;
    pub const NON_FATAL_ERROR_REPORTING: u16 = 1 << 1;
    pub const FATAL_ERROR_REPORTING: u16 = 1 << 2;
    pub const UNSUPPORTED_REQUEST_REPORTING: u16 = 1 << 3;
    pub const RELAXED_ORDERING: u16 = 1 << 4;
    /// Max_Payload_Size, bits 7:5.
    pub const MPS_MASK: u16 = 0x7 << 5;
    pub const EXTENDED_TAG: u16 = 1 << 8;
    pub const PHANTOM_FUNCTIONS: u16 = 1 << 9;
    pub const AUX_POWER_PM: u16 = 1 << 10;
    pub const NO_SNOOP: u16 = 1 << 11;
    /// Max_Read_Request_Size, bits 14:12.
    pub const MRRS_MASK: u16 = 0x7 << 12;
    /// Initiate Function Level Reset (endpoints; reads 0). Bridge Configuration Retry Enable on
    /// PCIe-to-PCI bridges.
    pub const INITIATE_FLR: u16 = 1 << 15;

    pub fn relaxed_ordering(self) -> bool {
        bit16(self.0, 4)
    }
    pub fn mps_code(self) -> u8 {
        ((self.0 & Self::MPS_MASK) >> 5) as u8
    }
    /// Max_Payload_Size in bytes (`None` for a reserved code).
    pub fn max_payload_size(self) -> Option<u16> {
        size_code_to_bytes(self.mps_code())
    }
    pub fn extended_tag(self) -> bool {
        bit16(self.0, 8)
    }
    pub fn no_snoop(self) -> bool {
        bit16(self.0, 11)
    }
    pub fn mrrs_code(self) -> u8 {
        ((self.0 & Self::MRRS_MASK) >> 12) as u8
    }
    /// Max_Read_Request_Size in bytes (`None` for a reserved code).
    pub fn max_read_request_size(self) -> Option<u16> {
        size_code_to_bytes(self.mrrs_code())
    }
    pub fn initiate_flr(self) -> bool {
        bit16(self.0, 15)
    }
    pub fn with_mps_code(self, code: u8) -> Self {
        DeviceControl((self.0 & !Self::MPS_MASK) | ((u16::from(code) << 5) & Self::MPS_MASK))
    }
    pub fn with_mrrs_code(self, code: u8) -> Self {
        DeviceControl((self.0 & !Self::MRRS_MASK) | ((u16::from(code) << 12) & Self::MRRS_MASK))
    }
    pub fn with_extended_tag(self, on: bool) -> Self {
        DeviceControl(set_bit16(self.0, Self::EXTENDED_TAG, on))
    }
    pub fn with_relaxed_ordering(self, on: bool) -> Self {
        DeviceControl(set_bit16(self.0, Self::RELAXED_ORDERING, on))
    }
    pub fn with_no_snoop(self, on: bool) -> Self {
        DeviceControl(set_bit16(self.0, Self::NO_SNOOP, on))
    }
}

/// Device Status register (cap + 0x0a).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DeviceStatus(pub u16);

impl DeviceStatus {
    pub const CORRECTABLE_ERROR: u16 = 1 << 0;
    pub const NON_FATAL_ERROR: u16 = 1 << 1;
    pub const FATAL_ERROR: u16 = 1 << 2;
    pub const UNSUPPORTED_REQUEST: u16 = 1 << 3;
    pub const AUX_POWER: u16 = 1 << 4;
    pub const TRANSACTIONS_PENDING: u16 = 1 << 5;
    /// Each bit with its `lspci` name.
    pub const FLAGS: [(u16, &'static str); 6] = [
        (Self::CORRECTABLE_ERROR, "CorrErr"),
        (Self::NON_FATAL_ERROR, "NonFatalErr"),
        (Self::FATAL_ERROR, "FatalErr"),
        (Self::UNSUPPORTED_REQUEST, "UnsupReq"),
        (Self::AUX_POWER, "AuxPwr"),
        (Self::TRANSACTIONS_PENDING, "TransPend"),
    ];
    pub fn transactions_pending(self) -> bool {
        bit16(self.0, 5)
    }
    pub fn set_flag_names(self) -> Vec<&'static str> {
        flag_names(self.0, &Self::FLAGS)
    }
}

/// Link speed encodings (Max Link Speed, Current Link Speed, Target Link Speed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkSpeed {
    Gt2_5,
    Gt5,
    Gt8,
    Gt16,
    Gt32,
    Gt64,
    Reserved(u8),
}

impl LinkSpeed {
    pub fn from_bits(bits: u8) -> Self {
        match bits & 0xf {
            1 => LinkSpeed::Gt2_5,
            2 => LinkSpeed::Gt5,
            3 => LinkSpeed::Gt8,
            4 => LinkSpeed::Gt16,
            5 => LinkSpeed::Gt32,
            6 => LinkSpeed::Gt64,
            other => LinkSpeed::Reserved(other),
        }
    }
    pub fn bits(self) -> u8 {
        match self {
            LinkSpeed::Gt2_5 => 1,
            LinkSpeed::Gt5 => 2,
            LinkSpeed::Gt8 => 3,
            LinkSpeed::Gt16 => 4,
            LinkSpeed::Gt32 => 5,
            LinkSpeed::Gt64 => 6,
            LinkSpeed::Reserved(bits) => bits & 0xf,
        }
    }
}

impl fmt::Display for LinkSpeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkSpeed::Gt2_5 => f.write_str("2.5GT/s"),
            LinkSpeed::Gt5 => f.write_str("5GT/s"),
            LinkSpeed::Gt8 => f.write_str("8GT/s"),
            LinkSpeed::Gt16 => f.write_str("16GT/s"),
            LinkSpeed::Gt32 => f.write_str("32GT/s"),
            LinkSpeed::Gt64 => f.write_str("64GT/s"),
            LinkSpeed::Reserved(bits) => write!(f, "unknown speed code {bits}"),
        }
    }
}

/// Link Capabilities register (cap + 0x0c).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LinkCapabilities(pub u32);

impl LinkCapabilities {
    pub fn max_link_speed(self) -> LinkSpeed {
        LinkSpeed::from_bits((self.0 & 0xf) as u8)
    }
    /// Maximum Link Width (x1 = 1 ... x32 = 32).
    pub fn max_link_width(self) -> u8 {
        ((self.0 >> 4) & 0x3f) as u8
    }
    /// ASPM Support, bits 11:10 (bit 0 L0s, bit 1 L1).
    pub fn aspm_support(self) -> u8 {
        ((self.0 >> 10) & 0x3) as u8
    }
    pub fn dll_link_active_reporting(self) -> bool {
        bit32(self.0, 20)
    }
    pub fn port_number(self) -> u8 {
        (self.0 >> 24) as u8
    }
}

/// Link Control register (cap + 0x10).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LinkControl(pub u16);

impl LinkControl {
    pub const ASPM_CONTROL_MASK: u16 = 0x3;
    /// Read Completion Boundary: 0 = 64 bytes, 1 = 128 bytes.
    pub const READ_COMPLETION_BOUNDARY: u16 = 1 << 3;
    pub const LINK_DISABLE: u16 = 1 << 4;
    pub const RETRAIN_LINK: u16 = 1 << 5;
    pub const COMMON_CLOCK: u16 = 1 << 6;
    pub const EXTENDED_SYNCH: u16 = 1 << 7;

    pub fn aspm_control(self) -> u8 {
        (self.0 & Self::ASPM_CONTROL_MASK) as u8
    }
    pub fn rcb_128(self) -> bool {
        bit16(self.0, 3)
    }
    /// The Read Completion Boundary in bytes: 64 or 128.
    pub fn read_completion_boundary(self) -> u16 {
        if self.rcb_128() { 128 } else { 64 }
    }
    pub fn link_disable(self) -> bool {
        bit16(self.0, 4)
    }
    pub fn common_clock(self) -> bool {
        bit16(self.0, 6)
    }
    pub fn with_rcb_128(self, on: bool) -> Self {
        LinkControl(set_bit16(self.0, Self::READ_COMPLETION_BOUNDARY, on))
    }
}

/// Link Status register (cap + 0x12).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LinkStatus(pub u16);

impl LinkStatus {
    pub fn current_link_speed(self) -> LinkSpeed {
        LinkSpeed::from_bits((self.0 & 0xf) as u8)
    }
    pub fn negotiated_link_width(self) -> u8 {
        ((self.0 >> 4) & 0x3f) as u8
    }
    pub fn link_training(self) -> bool {
        bit16(self.0, 11)
    }
    pub fn dll_link_active(self) -> bool {
        bit16(self.0, 13)
    }
}

/// Completion Timeout Ranges Supported, Device Capabilities 2 bits 3:0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CompletionTimeoutRanges(pub u8);

impl CompletionTimeoutRanges {
    /// Range A: 50 µs to 10 ms.
    pub fn a(self) -> bool {
        self.0 & 0b0001 != 0
    }
    /// Range B: 10 ms to 250 ms.
    pub fn b(self) -> bool {
        self.0 & 0b0010 != 0
    }
    /// Range C: 250 ms to 4 s.
    pub fn c(self) -> bool {
        self.0 & 0b0100 != 0
    }
    /// Range D: 4 s to 64 s.
    pub fn d(self) -> bool {
        self.0 & 0b1000 != 0
    }
    /// "A", "B", "C", "D" for each supported range; empty means programming is not supported.
    pub fn names(self) -> Vec<&'static str> {
        ["A", "B", "C", "D"]
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, n)| *n)
            .collect()
    }
}

/// The range a Completion Timeout Value code (Device Control 2 bits 3:0) selects, or `None` for
/// a reserved code. Code 0 is the default range, 50 µs to 50 ms.
pub fn completion_timeout_range(code: u8) -> Option<(Duration, Duration)> {
    let us = Duration::from_micros;
    let ms = Duration::from_millis;
    Some(match code {
        0b0000 => (us(50), ms(50)),
        0b0001 => (us(50), us(100)),
        0b0010 => (ms(1), ms(10)),
        0b0101 => (ms(16), ms(55)),
        0b0110 => (ms(65), ms(210)),
        0b1001 => (ms(260), ms(900)),
        0b1010 => (ms(1000), ms(3500)),
        0b1101 => (ms(4000), ms(13000)),
        0b1110 => (ms(17000), ms(64000)),
        _ => return None,
    })
}

/// Device Capabilities 2 register (cap + 0x24, capability version 2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DeviceCapabilities2(pub u32);

impl DeviceCapabilities2 {
    pub const COMPLETION_TIMEOUT_DISABLE_SUPPORTED: u32 = 1 << 4;
    pub const ARI_FORWARDING_SUPPORTED: u32 = 1 << 5;
    pub const LTR_SUPPORTED: u32 = 1 << 11;
    pub const TEN_BIT_TAG_COMPLETER_SUPPORTED: u32 = 1 << 16;
    pub const TEN_BIT_TAG_REQUESTER_SUPPORTED: u32 = 1 << 17;

    pub fn completion_timeout_ranges(self) -> CompletionTimeoutRanges {
        CompletionTimeoutRanges((self.0 & 0xf) as u8)
    }
    pub fn completion_timeout_disable_supported(self) -> bool {
        bit32(self.0, 4)
    }
    pub fn ari_forwarding_supported(self) -> bool {
        bit32(self.0, 5)
    }
    pub fn ltr_supported(self) -> bool {
        bit32(self.0, 11)
    }
    pub fn ten_bit_tag_completer_supported(self) -> bool {
        bit32(self.0, 16)
    }
    pub fn ten_bit_tag_requester_supported(self) -> bool {
        bit32(self.0, 17)
    }
}

/// Device Control 2 register (cap + 0x28, capability version 2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DeviceControl2(pub u16);

impl DeviceControl2 {
    pub const COMPLETION_TIMEOUT_VALUE_MASK: u16 = 0xf;
    pub const COMPLETION_TIMEOUT_DISABLE: u16 = 1 << 4;
    pub const ARI_FORWARDING: u16 = 1 << 5;
    pub const IDO_REQUEST: u16 = 1 << 8;
    pub const IDO_COMPLETION: u16 = 1 << 9;
    pub const LTR: u16 = 1 << 10;
    pub const TEN_BIT_TAG_REQUESTER: u16 = 1 << 12;

    pub fn completion_timeout_value(self) -> u8 {
        (self.0 & Self::COMPLETION_TIMEOUT_VALUE_MASK) as u8
    }
    /// The selected completion timeout range (`None` for a reserved code).
    pub fn completion_timeout(self) -> Option<(Duration, Duration)> {
        completion_timeout_range(self.completion_timeout_value())
    }
    pub fn completion_timeout_disable(self) -> bool {
        bit16(self.0, 4)
    }
    pub fn ari_forwarding(self) -> bool {
        bit16(self.0, 5)
    }
    pub fn ltr(self) -> bool {
        bit16(self.0, 10)
    }
    pub fn ten_bit_tag_requester(self) -> bool {
        bit16(self.0, 12)
    }
    pub fn with_completion_timeout_value(self, code: u8) -> Self {
        DeviceControl2((self.0 & !Self::COMPLETION_TIMEOUT_VALUE_MASK) | (u16::from(code) & 0xf))
    }
    pub fn with_ten_bit_tag_requester(self, on: bool) -> Self {
        DeviceControl2(set_bit16(self.0, Self::TEN_BIT_TAG_REQUESTER, on))
    }
}

/// The PCI Express capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PciExpress {
    pub offset: u16,
    pub capabilities: PcieCapabilities,
    pub device_capabilities: DeviceCapabilities,
    pub device_control: DeviceControl,
    pub device_status: DeviceStatus,
    pub link_capabilities: LinkCapabilities,
    pub link_control: LinkControl,
    pub link_status: LinkStatus,
    /// Present for capability version 2 and later.
    pub device_capabilities_2: Option<DeviceCapabilities2>,
    pub device_control_2: Option<DeviceControl2>,
}

impl PciExpress {
    pub fn parse(view: &ConfigView<'_>, offset: u16) -> Result<Self> {
        check_capability(view, offset, cap_id::PCI_EXPRESS, "PCI Express", pcie::CAPABILITIES + 2)?;
        let capabilities = PcieCapabilities(view.read_u16(offset + pcie::CAPABILITIES)?);
        let v2 = capabilities.version() >= 2;
        let len = if v2 { pcie::LEN_V2 } else { pcie::LEN_V1 };
        check_capability(view, offset, cap_id::PCI_EXPRESS, "PCI Express", len)?;
        let r16 = |reg: u16| view.read_u16(offset + reg);
        let r32 = |reg: u16| view.read_u32(offset + reg);
        Ok(PciExpress {
            offset,
            capabilities,
            device_capabilities: DeviceCapabilities(r32(pcie::DEVICE_CAPABILITIES)?),
            device_control: DeviceControl(r16(pcie::DEVICE_CONTROL)?),
            device_status: DeviceStatus(r16(pcie::DEVICE_STATUS)?),
            link_capabilities: LinkCapabilities(r32(pcie::LINK_CAPABILITIES)?),
            link_control: LinkControl(r16(pcie::LINK_CONTROL)?),
            link_status: LinkStatus(r16(pcie::LINK_STATUS)?),
            device_capabilities_2: if v2 {
                Some(DeviceCapabilities2(r32(pcie::DEVICE_CAPABILITIES_2)?))
            } else {
                None
            },
            device_control_2: if v2 { Some(DeviceControl2(r16(pcie::DEVICE_CONTROL_2)?)) } else { None },
        })
    }
    /// Absolute offset of the Device Control register (what the engine watches for MPS, MRRS
    /// and FLR writes).
    pub fn device_control_offset(&self) -> u16 {
        self.offset.saturating_add(pcie::DEVICE_CONTROL)
    }
    /// Absolute offset of the Link Control register (RCB).
    pub fn link_control_offset(&self) -> u16 {
        self.offset.saturating_add(pcie::LINK_CONTROL)
    }
    /// Absolute offset of Device Control 2 (completion timeout, 10-bit tags), if present.
    pub fn device_control_2_offset(&self) -> Option<u16> {
        self.device_control_2.map(|_| self.offset.saturating_add(pcie::DEVICE_CONTROL_2))
    }
}

// ---------------------------------------------------------------------------------------------
// Vendor-specific (0x09)
// ---------------------------------------------------------------------------------------------

/// The vendor-specific capability: ID, next, a length byte (the whole capability, header
/// included), then vendor data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VendorSpecific {
    pub offset: u16,
    /// Capability length in bytes, from cap + 2.
    pub length: u8,
}

impl VendorSpecific {
    pub const LENGTH: u16 = 0x02;

    pub fn parse(view: &ConfigView<'_>, offset: u16) -> Result<Self> {
        check_capability(view, offset, cap_id::VENDOR_SPECIFIC, "Vendor Specific", Self::LENGTH + 1)?;
        let length = view.read_u8(offset + Self::LENGTH)?;
        check_capability(view, offset, cap_id::VENDOR_SPECIFIC, "Vendor Specific", u16::from(length).max(3))?;
        Ok(VendorSpecific { offset, length })
    }
    /// The vendor data after the 3-byte header.
    pub fn data<'a>(&self, view: &ConfigView<'a>) -> Result<&'a [u8]> {
        view.read_bytes(self.offset.saturating_add(3), usize::from(self.length).saturating_sub(3))
    }
}

// ---------------------------------------------------------------------------------------------
// ConfigImage: building config spaces
// ---------------------------------------------------------------------------------------------

/// A writable config image, for device models that build and own their config space.
///
/// Capabilities are placed one after another, dword-aligned, from 0x40 (standard) and 0x100
/// (extended), and linked into their list; adding the first standard capability sets the Status
/// register's Capabilities List bit and the pointer at 0x34.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigImage {
    bytes: Vec<u8>,
    next_free: u16,
    last_capability: Option<u16>,
    next_free_extended: u16,
    last_extended: Option<u16>,
}

impl ConfigImage {
    /// A zeroed image of 256 (PCI) or 4096 (PCIe) bytes.
    pub fn new(len: usize) -> Result<Self> {
        if len != PCI_CONFIG_LEN && len != PCIE_CONFIG_LEN {
            return Err(TlpError::ConfigImageLength { len });
        }
        Ok(ConfigImage {
            bytes: vec![0; len],
            next_free: header::LEN,
            last_capability: None,
            next_free_extended: EXTENDED_CAPABILITIES_START,
            last_extended: None,
        })
    }

    pub fn view(&self) -> ConfigView<'_> {
        ConfigView { bytes: &self.bytes, header: self.header_array() }
    }
    fn header_array(&self) -> &[u8; header::LEN as usize] {
        // `new` allocates at least 256 bytes, so the first 64 always exist.
        self.bytes.first_chunk().unwrap_or(&[0; header::LEN as usize])
    }
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// Direct access for device models that apply register writes themselves.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Writes `data` at `offset`.
    pub fn write(&mut self, offset: u16, data: &[u8]) -> Result<()> {
        let start = usize::from(offset);
        let len = self.bytes.len();
        let target = start
            .checked_add(data.len())
            .and_then(|end| self.bytes.get_mut(start..end))
            .ok_or(TlpError::ConfigOutOfRange { offset: start, width: data.len(), len })?;
        target.copy_from_slice(data);
        Ok(())
    }
    pub fn set_u8(&mut self, offset: u16, value: u8) -> Result<()> {
        self.write(offset, &[value])
    }
    pub fn set_u16(&mut self, offset: u16, value: u16) -> Result<()> {
        self.write(offset, &value.to_le_bytes())
    }
    pub fn set_u32(&mut self, offset: u16, value: u32) -> Result<()> {
        self.write(offset, &value.to_le_bytes())
    }
    /// Writes a BAR's register(s).
    pub fn set_bar(&mut self, bar: &Bar) -> Result<()> {
        let (low, high) = bar.encode();
        if high.is_some() && bar.slot + 1 >= header::TYPE0_BAR_COUNT {
            return Err(TlpError::Bar64InLastSlot { slot: bar.slot });
        }
        if bar.slot >= header::TYPE0_BAR_COUNT {
            return Err(TlpError::ConfigOutOfRange {
                offset: usize::from(bar.register_offset()),
                width: 4,
                len: 0x28,
            });
        }
        self.set_u32(bar.register_offset(), low)?;
        match high {
            Some(high) => self.set_u32(header::bar(bar.slot + 1), high),
            None => Ok(()),
        }
    }

    /// Appends a standard capability with `id` and `body` (the bytes after the ID and Next
    /// bytes) and returns its offset.
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> Result<u16> {
        let len = body.len() + 2;
        let offset = self.next_free;
        let end = usize::from(offset) + len;
        if end > PCI_CONFIG_LEN {
            return Err(TlpError::NoRoomForCapability { id: id.into(), len, limit: PCI_CONFIG_LEN as u16 });
        }
        self.write(offset, &[id, 0])?;
        self.write(offset + 2, body)?;
        match self.last_capability {
            Some(last) => self.set_u8(last + 1, offset as u8)?,
            None => {
                self.set_u8(header::CAPABILITIES_POINTER, offset as u8)?;
                let status = self.view().status().0 | Status::CAPABILITIES_LIST;
                self.set_u16(header::STATUS, status)?;
            }
        }
        self.last_capability = Some(offset);
        self.next_free = (end as u16).next_multiple_of(4);
        Ok(offset)
    }

    /// Appends an extended capability (4096-byte images only) and returns its offset. `body` is
    /// what follows the 4-byte header.
    pub fn add_extended_capability(&mut self, id: u16, version: u8, body: &[u8]) -> Result<u16> {
        let len = body.len() + 4;
        let offset = self.next_free_extended;
        let end = usize::from(offset) + len;
        if end > self.bytes.len() {
            return Err(TlpError::NoRoomForCapability {
                id,
                len,
                limit: self.bytes.len().min(0xffff) as u16,
            });
        }
        let cap = ExtendedCapability { id, version, offset, next: 0 };
        self.set_u32(offset, cap.header())?;
        self.write(offset + 4, body)?;
        if let Some(last) = self.last_extended {
            let prev = ExtendedCapability::from_header(last, self.view().read_u32(last)?);
            self.set_u32(last, ExtendedCapability { next: offset, ..prev }.header())?;
        }
        self.last_extended = Some(offset);
        self.next_free_extended = (end as u16).next_multiple_of(4);
        Ok(offset)
    }

    /// Appends a Power Management capability (PMCSR 0: D0) and returns its offset.
    pub fn add_power_management(&mut self, capabilities: PmCapabilities) -> Result<u16> {
        let mut body = [0u8; pm::LEN as usize - 2];
        body[..2].copy_from_slice(&capabilities.0.to_le_bytes());
        self.add_capability(cap_id::POWER_MANAGEMENT, &body)
    }

    /// Appends an MSI capability sized for `control` (64-bit, masking) with the message registers
    /// zeroed, and returns its offset.
    pub fn add_msi(&mut self, control: MsiControl) -> Result<u16> {
        let mut body = vec![0u8; usize::from(control.layout().struct_len()) - 2];
        body[..2].copy_from_slice(&control.0.to_le_bytes());
        self.add_capability(cap_id::MSI, &body)
    }

    /// Appends an MSI-X capability with `msix`'s control, table and PBA registers (its `offset`
    /// field is ignored) and returns its offset.
    pub fn add_msix(&mut self, msix: &Msix) -> Result<u16> {
        let mut body = [0u8; msix::LEN as usize - 2];
        body[0..2].copy_from_slice(&msix.control.0.to_le_bytes());
        body[2..6].copy_from_slice(&msix.table_register().to_le_bytes());
        body[6..10].copy_from_slice(&msix.pba_register().to_le_bytes());
        self.add_capability(cap_id::MSI_X, &body)
    }

    /// Appends a PCI Express capability holding `regs` and returns its offset. Its `offset` field
    /// is ignored. Version 2 and later capabilities are 0x3c bytes and get the Device
    /// Capabilities/Control 2 registers when present; version 1 capabilities are 0x24 bytes and
    /// have no such registers.
    pub fn add_pci_express(&mut self, regs: &PciExpress) -> Result<u16> {
        let len = if regs.capabilities.version() >= 2 { pcie::LEN_V2 } else { pcie::LEN_V1 };
        let mut body = vec![0u8; usize::from(len) - 2];
        let mut put = |reg: u16, bytes: &[u8]| {
            let at = usize::from(reg) - 2;
            if let Some(dst) = body.get_mut(at..at + bytes.len()) {
                dst.copy_from_slice(bytes);
            }
        };
        put(pcie::CAPABILITIES, &regs.capabilities.0.to_le_bytes());
        put(pcie::DEVICE_CAPABILITIES, &regs.device_capabilities.0.to_le_bytes());
        put(pcie::DEVICE_CONTROL, &regs.device_control.0.to_le_bytes());
        put(pcie::DEVICE_STATUS, &regs.device_status.0.to_le_bytes());
        put(pcie::LINK_CAPABILITIES, &regs.link_capabilities.0.to_le_bytes());
        put(pcie::LINK_CONTROL, &regs.link_control.0.to_le_bytes());
        put(pcie::LINK_STATUS, &regs.link_status.0.to_le_bytes());
        if let Some(dc2) = regs.device_capabilities_2 {
            put(pcie::DEVICE_CAPABILITIES_2, &dc2.0.to_le_bytes());
        }
        if let Some(dctl2) = regs.device_control_2 {
            put(pcie::DEVICE_CONTROL_2, &dctl2.0.to_le_bytes());
        }
        self.add_capability(cap_id::PCI_EXPRESS, &body)
    }
}

//! The function's state as the host programmed it, kept by snooping config writes: routing ID,
//! Command register, BAR map, link parameters, tag mode, MSI/MSI-X programming, readiness.
//!
//! The server stays the authority for config *reads*; this is the bridge's copy of what it needs
//! to route requests and build TLPs, updated in request order by the non-posted dispatcher.

use tlp::RoutingId;
use tlp::config_space::{
    self as cs, BarKind, ConfigView, DeviceControl, DeviceControl2, ExpansionRom, LinkControl, MsiControl,
    MsiLayout, MsixControl, header, msi, msix,
};
use tlp::split::LinkParams;
use tracing::warn;

/// vfio-user region index of the expansion ROM.
pub const ROM_REGION: u32 = 6;
/// vfio-user region index of config space.
pub const CONFIG_REGION: u32 = 7;

/// One implemented BAR: its kind and size come from the device, its address from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarSlot {
    pub slot: u8,
    pub kind: BarKind,
    pub prefetchable: bool,
    /// The size the host decodes: what it computes from the device's sizing answer, the
    /// lowest set bit of the region size (a power of two, at most `region_size`).
    pub size: u64,
    /// From the server's region info; accesses never go beyond it.
    pub region_size: u64,
    /// The base the host programmed (0 until it does).
    pub address: u64,
    /// The bridge answers the host's reads of this BAR's register itself (an I/O BAR of the
    /// server presented as a memory BAR, [`FunctionState::with_io_bars_as_memory`]).
    pub emulated: bool,
}

/// The MSI capability as programmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiState {
    pub offset: u16,
    pub layout: MsiLayout,
    pub control: MsiControl,
    pub address: u64,
    pub data: u16,
    pub mask_bits: u32,
}

impl MsiState {
    /// Vectors the host enabled (Multiple Message Enable), capped by what the device offers.
    pub fn vectors_enabled(&self) -> u32 {
        u32::from(self.control.vectors_enabled().min(self.control.vectors_capable())).max(1)
    }
}

/// The MSI-X capability as programmed (the table itself lives in the interrupt state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixState {
    pub offset: u16,
    pub table_bir: u8,
    pub table_offset: u32,
    pub pba_bir: u8,
    pub pba_offset: u32,
    pub table_size: u16,
    pub enabled: bool,
    pub function_mask: bool,
}

impl MsixState {
    pub fn table_len(&self) -> u64 {
        u64::from(self.table_size) * msix::entry::LEN as u64
    }
    pub fn pba_len(&self) -> u64 {
        u64::from(self.table_size).div_ceil(64) * 8
    }
}

/// Where a memory or I/O request lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarHit {
    /// vfio-user region index (BAR slot, or [`ROM_REGION`]).
    pub region: u32,
    /// Offset inside the region.
    pub offset: u64,
    pub prefetchable: bool,
}

/// What a config write changed that needs action beyond the state update.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnoopEffects {
    /// Device Control bit 15 was written as 1.
    pub flr: bool,
    /// MSI/MSI-X enable, masks, MSI address/data or Command.INTx Disable changed.
    pub interrupts_changed: bool,
}

/// Facts read from the device at connect time.
#[derive(Clone, Debug)]
pub struct DeviceLayout {
    /// The config header and standard capabilities (first 256 bytes) as first read.
    pub config: Vec<u8>,
    /// Size of regions 0..=6 from REGION_INFO (0 = not implemented).
    pub region_sizes: [u64; 7],
}

/// The size a host decodes for a BAR backed by a region of `region_size` bytes (not 0): the
/// lowest set bit, which is also the lowest set bit of the sizing mask `!region_size + 1`.
pub fn reachable_size(region_size: u64) -> u64 {
    region_size & region_size.wrapping_neg()
}

/// The bridge's copy of the function's programming.
#[derive(Clone, Debug)]
pub struct FunctionState {
    /// Routing ID: bus and device captured from CfgWr0, function fixed.
    pub id: RoutingId,
    pub id_captured: bool,
    pub command: u16,
    pub bars: Vec<BarSlot>,
    /// Expansion ROM size (0: none), address and enable.
    pub rom_size: u32,
    pub rom: ExpansionRom,
    pub msi: Option<MsiState>,
    pub msix: Option<MsixState>,
    pub device_control_offset: Option<u16>,
    pub link_control_offset: Option<u16>,
    pub device_control_2_offset: Option<u16>,
    pub device_control: DeviceControl,
    /// The host has written Device Control since reset.
    pub device_control_written: bool,
    pub link_control: LinkControl,
    pub device_control_2: DeviceControl2,
    /// Interrupt Pin (1..=4 = INTA..INTD, 0 = none).
    pub interrupt_pin: u8,
    /// Link parameters currently in force.
    pub link: LinkParams,
    /// The server is connected and not resetting (else config requests get CRS).
    pub ready: bool,
    /// The server's connection ended and the engine is connecting to a restarted one: memory
    /// and I/O requests get Completer Abort, posted writes are dropped (counted).
    pub server_lost: bool,
    /// The bridge may use 10-bit tags if the host enables them.
    pub ten_bit_tags_allowed: bool,
    /// Raw bytes of the registers the bridge snoops (BARs, ROM, capabilities), 256 bytes.
    shadow: Vec<u8>,
    /// Which bytes of `shadow` the host has written since reset (replayed into a restarted
    /// server by [`FunctionState::host_config_writes`]).
    host_written: Vec<bool>,
    /// The state right after `new`, restored by `reset`.
    pristine: Option<Box<FunctionState>>,
}

impl FunctionState {
    /// The state after reset, from the device's layout. Problems in the device's config space
    /// (a malformed capability list) are reported, never panicked on.
    pub fn new(
        layout: &DeviceLayout,
        initial: RoutingId,
        link: LinkParams,
        ten_bit: bool,
    ) -> Result<Self, String> {
        let mut config = layout.config.clone();
        config.resize(cs::PCI_CONFIG_LEN, 0);
        let view = ConfigView::new(&config).map_err(|e| format!("config header: {e}"))?;
        let mut bars = Vec::new();
        let mut slot = 0u8;
        while slot < header::TYPE0_BAR_COUNT {
            let low = view.bar_register(slot).unwrap_or(0);
            let kind = BarKind::from_low_dword(low).unwrap_or(BarKind::Mem32);
            let size = layout.region_sizes.get(slot as usize).copied().unwrap_or(0);
            if size != 0 {
                // A host sizes a BAR from the lowest set bit of the mask it reads back after
                // writing all ones; for a region that is not a power of two, servers such as
                // libvfio-user answer `!size + 1`, whose lowest set bit is the region size's.
                let decoded = reachable_size(size);
                if decoded != size {
                    warn!(
                        bar = slot,
                        region_size = format_args!("{size:#x}"),
                        reachable = format_args!("{decoded:#x}"),
                        "BAR{slot} region size {size:#x} is not a power of two: the host sizes the BAR \
                         as {decoded:#x}, only its first {decoded:#x} bytes are reachable"
                    );
                }
                if kind == BarKind::Mem64 && slot == header::TYPE0_BAR_COUNT - 1 {
                    return Err("BAR5 announces a 64-bit BAR with no slot for its upper half".to_owned());
                }
                let prefetchable = kind != BarKind::Io && low & cs::bar_bits::PREFETCHABLE != 0;
                bars.push(BarSlot {
                    slot,
                    kind,
                    prefetchable,
                    size: decoded,
                    region_size: size,
                    address: 0,
                    emulated: false,
                });
            }
            slot += kind.slots();
        }
        let rom_size = u32::try_from(layout.region_sizes[ROM_REGION as usize]).unwrap_or(0);
        let msi = match view.msi() {
            Ok(Some(m)) => Some(MsiState {
                offset: m.offset,
                layout: m.layout(),
                control: MsiControl(
                    m.control.0 & !(MsiControl::ENABLE | MsiControl::MULTIPLE_MESSAGE_ENABLE_MASK),
                ),
                address: 0,
                data: 0,
                mask_bits: 0,
            }),
            Ok(None) => None,
            Err(e) => return Err(format!("MSI capability: {e}")),
        };
        let msix = match view.msix() {
            Ok(Some(m)) if m.birs_valid() => Some(MsixState {
                offset: m.offset,
                table_bir: m.table_bir,
                table_offset: m.table_offset,
                pba_bir: m.pba_bir,
                pba_offset: m.pba_offset,
                table_size: m.control.table_size(),
                enabled: false,
                function_mask: false,
            }),
            Ok(Some(_)) => return Err("MSI-X capability names a BIR above 5".to_owned()),
            Ok(None) => None,
            Err(e) => return Err(format!("MSI-X capability: {e}")),
        };
        let pcie = view.pci_express().map_err(|e| format!("PCI Express capability: {e}"))?;
        let state = FunctionState {
            id: initial,
            id_captured: false,
            command: 0,
            bars,
            rom_size: if rom_size.is_power_of_two() { rom_size } else { 0 },
            rom: ExpansionRom::default(),
            msi,
            msix,
            device_control_offset: pcie.as_ref().map(|p| p.device_control_offset()),
            link_control_offset: pcie.as_ref().map(|p| p.link_control_offset()),
            device_control_2_offset: pcie.as_ref().and_then(|p| p.device_control_2_offset()),
            device_control: DeviceControl(0),
            device_control_written: false,
            link_control: LinkControl(0),
            device_control_2: DeviceControl2(0),
            interrupt_pin: view.interrupt_pin(),
            link,
            ready: false,
            server_lost: false,
            ten_bit_tags_allowed: ten_bit,
            shadow: vec![0; cs::PCI_CONFIG_LEN],
            host_written: vec![false; cs::PCI_CONFIG_LEN],
            pristine: None,
        };
        let mut state = state;
        state.pristine = Some(Box::new(state.clone()));
        Ok(state)
    }

    /// Presents the server's I/O BARs to the host as 32-bit non-prefetchable memory BARs of at
    /// least 16 bytes (the smallest a memory BAR can be), for root ports without I/O space and
    /// for servers whose I/O registers take accesses wider than the one DW an I/O request
    /// carries (libvfio-user's sample server: one 8-byte access). The bridge answers the
    /// host's reads of those BAR registers itself ([`FunctionState::emulated_bar_register`]);
    /// accesses reach the region at the same offsets, never past its end.
    pub fn with_io_bars_as_memory(mut self) -> Self {
        self.pristine = None;
        for bar in &mut self.bars {
            if bar.kind == BarKind::Io {
                bar.kind = BarKind::Mem32;
                bar.prefetchable = false;
                bar.size = bar.size.max(16);
                bar.emulated = true;
            }
        }
        self.pristine = Some(Box::new(self.clone()));
        self
    }

    /// The value of BAR register `register` (its config offset) as the host reads it, for a BAR
    /// the bridge presents itself: the address bits the host wrote above the BAR's size, type
    /// bits 0 (32-bit memory, not prefetchable), so that sizing with all ones reads back
    /// `!(size - 1)`. `None` for every other register.
    pub fn emulated_bar_register(&self, register: u16) -> Option<u32> {
        let bar = self.bars.iter().find(|b| b.emulated && header::bar(b.slot) == register)?;
        let mask = u32::try_from(bar.size).map_or(0, |size| !(size - 1));
        Some(self.shadow_u32(register) & mask)
    }

    /// Back to the reset values (FLR, hot reset, link down). `keep_id`: FLR keeps the captured
    /// bus/device number; a conventional reset clears it. Link parameters return to the
    /// configured start values.
    pub fn reset(&mut self, keep_id: bool) {
        let Some(pristine) = self.pristine.take() else { return };
        let (id, captured) = (self.id, self.id_captured);
        *self = (*pristine).clone();
        self.pristine = Some(pristine);
        if keep_id {
            self.id = id;
            self.id_captured = captured;
        }
    }

    pub fn memory_enabled(&self) -> bool {
        self.command & cs::Command::MEMORY_SPACE != 0
    }
    pub fn io_enabled(&self) -> bool {
        self.command & cs::Command::IO_SPACE != 0
    }
    pub fn bus_master(&self) -> bool {
        self.command & cs::Command::BUS_MASTER != 0
    }
    pub fn intx_disabled(&self) -> bool {
        self.command & cs::Command::INTX_DISABLE != 0
    }
    /// 10-bit tags: allowed by configuration and enabled by the host.
    pub fn ten_bit_tags(&self) -> bool {
        self.ten_bit_tags_allowed && self.device_control_2.ten_bit_tag_requester()
    }

    /// The tags the bridge may use for its reads.
    pub fn tag_width(&self) -> super::tags::TagWidth {
        use super::tags::TagWidth;
        if self.ten_bit_tags() {
            TagWidth::Ten
        } else if self.device_control_written && !self.device_control.extended_tag() {
            TagWidth::Five
        } else {
            TagWidth::Eight
        }
    }

    /// Records the bus and device number a CfgWr0 was addressed with (§2.2.6.2: a function
    /// captures them from every Type 0 configuration write it completes).
    pub fn capture_id(&mut self, target: RoutingId) {
        self.id = RoutingId::new(target.bus(), target.device(), self.id.function());
        self.id_captured = true;
    }

    /// Decodes a memory (`io == false`) or I/O request of `len` bytes at `address`: the region
    /// and offset if it lies entirely inside one enabled BAR.
    pub fn decode(&self, address: u64, len: u64, io: bool) -> Option<BarHit> {
        let end = address.checked_add(len.max(1))?;
        let enabled = if io { self.io_enabled() } else { self.memory_enabled() };
        if !enabled {
            return None;
        }
        for bar in &self.bars {
            if (bar.kind == BarKind::Io) != io || bar.address == 0 {
                continue;
            }
            // A BAR larger than its region (a 16-byte memory BAR over an 8-byte I/O region)
            // decodes only the region.
            let bar_end = bar.address.checked_add(bar.size.min(bar.region_size))?;
            if address >= bar.address && end <= bar_end {
                return Some(BarHit {
                    region: u32::from(bar.slot),
                    offset: address - bar.address,
                    prefetchable: bar.prefetchable,
                });
            }
        }
        if !io && self.rom.enabled && self.rom_size != 0 && self.rom.address != 0 {
            let base = u64::from(self.rom.address);
            if address >= base && end <= base + u64::from(self.rom_size) {
                return Some(BarHit { region: ROM_REGION, offset: address - base, prefetchable: true });
            }
        }
        None
    }

    fn shadow_u32(&self, offset: u16) -> u32 {
        let at = usize::from(offset);
        match self.shadow.get(at..at + 4) {
            Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]),
            _ => 0,
        }
    }

    fn shadow_u16(&self, offset: u16) -> u16 {
        let at = usize::from(offset);
        match self.shadow.get(at..at + 2) {
            Some(&[a, b]) => u16::from_le_bytes([a, b]),
            _ => 0,
        }
    }

    /// Applies one contiguous run of written bytes at config `offset` and returns what changed.
    pub fn snoop_config_write(&mut self, offset: u16, data: &[u8]) -> SnoopEffects {
        let mut effects = SnoopEffects::default();
        let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
        let start = usize::from(offset);
        // Only the first 256 bytes hold registers the bridge needs.
        if let Some(dst) = self.shadow.get_mut(start..start + data.len()) {
            dst.copy_from_slice(data);
        } else {
            return effects;
        }
        if let Some(written) = self.host_written.get_mut(start..start + data.len()) {
            written.fill(true);
        }
        let touches = |reg: u16, width: u16| cs::write_touches(offset, len, reg, width);
        if touches(header::COMMAND, 2) {
            let before = self.command;
            self.command = self.shadow_u16(header::COMMAND);
            // Bus Master Enable gates MSI/MSI-X (they are memory writes): setting it delivers
            // what was held pending while it was clear.
            if (before ^ self.command) & (cs::Command::INTX_DISABLE | cs::Command::BUS_MASTER) != 0 {
                effects.interrupts_changed = true;
            }
        }
        for i in 0..self.bars.len() {
            let Some(bar) = self.bars.get(i).copied() else { continue };
            let width = u16::from(bar.kind.slots()) * 4;
            if touches(header::bar(bar.slot), width) {
                let low = u64::from(self.shadow_u32(header::bar(bar.slot)));
                let high = if bar.kind == BarKind::Mem64 {
                    u64::from(self.shadow_u32(header::bar(bar.slot + 1))) << 32
                } else {
                    0
                };
                let address = (high | low) & bar.kind.address_mask() & !(bar.size - 1);
                let address = if bar.kind == BarKind::Mem64 { address } else { address & 0xffff_ffff };
                if let Some(b) = self.bars.get_mut(i) {
                    b.address = address;
                }
            }
        }
        if touches(header::EXPANSION_ROM, 4) && self.rom_size != 0 {
            let raw = self.shadow_u32(header::EXPANSION_ROM);
            let rom = ExpansionRom::decode(raw);
            self.rom = ExpansionRom { enabled: rom.enabled, address: rom.address & !(self.rom_size - 1) };
        }
        if let Some(mut m) = self.msi {
            if touches(m.offset, m.layout.struct_len()) {
                let control = self.shadow_u16(m.offset + msi::CONTROL);
                let writable = MsiControl::ENABLE | MsiControl::MULTIPLE_MESSAGE_ENABLE_MASK;
                m.control = MsiControl((m.control.0 & !writable) | (control & writable));
                let lo = u64::from(self.shadow_u32(m.offset + m.layout.address_lo()));
                let hi = m.layout.address_hi().map_or(0, |o| u64::from(self.shadow_u32(m.offset + o)));
                m.address = (hi << 32) | (lo & !3);
                m.data = self.shadow_u16(m.offset + m.layout.data());
                m.mask_bits = m.layout.mask_bits().map_or(0, |o| self.shadow_u32(m.offset + o));
                effects.interrupts_changed = true;
                self.msi = Some(m);
            }
        }
        if let Some(mut m) = self.msix {
            if touches(m.offset + msix::CONTROL, 2) {
                let control = MsixControl(self.shadow_u16(m.offset + msix::CONTROL));
                m.enabled = control.enabled();
                m.function_mask = control.function_mask();
                effects.interrupts_changed = true;
                self.msix = Some(m);
            }
        }
        if let Some(reg) = self.device_control_offset {
            if touches(reg, 2) {
                let value = DeviceControl(self.shadow_u16(reg));
                effects.flr = value.initiate_flr();
                self.device_control = DeviceControl(value.0 & !DeviceControl::INITIATE_FLR);
                self.device_control_written = true;
                self.update_link_params();
            }
        }
        if let Some(reg) = self.link_control_offset {
            if touches(reg, 2) {
                self.link_control = LinkControl(self.shadow_u16(reg));
                self.update_link_params();
            }
        }
        if let Some(reg) = self.device_control_2_offset {
            if touches(reg, 2) {
                self.device_control_2 = DeviceControl2(self.shadow_u16(reg));
            }
        }
        effects
    }

    /// The host's configuration writes since reset, as `(offset, bytes)` runs that never cross
    /// a dword, for replaying into a restarted server so that it decodes the addresses the host
    /// assigned. Command comes last (the device decodes only once its BARs are in place);
    /// Status (write-1-to-clear) and Initiate Function Level Reset are left out. Only the first
    /// 256 bytes are tracked: extended configuration space is not replayed.
    pub fn host_config_writes(&self) -> Vec<(u16, Vec<u8>)> {
        let mut bytes = self.shadow.clone();
        if let Some(reg) = self.device_control_offset {
            let high = usize::from(reg) + 1;
            if let Some(b) = bytes.get_mut(high) {
                *b &= !((DeviceControl::INITIATE_FLR >> 8) as u8);
            }
        }
        let command = usize::from(header::COMMAND);
        let status = usize::from(header::COMMAND) + 2..usize::from(header::COMMAND) + 4;
        let mut runs = Vec::new();
        let mut command_run = None;
        for dword in (0..cs::PCI_CONFIG_LEN).step_by(4) {
            let mut at = dword;
            while at < dword + 4 {
                let written =
                    |i: usize| self.host_written.get(i).copied().unwrap_or(false) && !status.contains(&i);
                if !written(at) {
                    at += 1;
                    continue;
                }
                let start = at;
                while at < dword + 4 && written(at) {
                    at += 1;
                }
                let run = (start as u16, bytes.get(start..at).unwrap_or(&[]).to_vec());
                if start == command || start == command + 1 {
                    command_run = Some(run);
                } else {
                    runs.push(run);
                }
            }
        }
        runs.extend(command_run);
        runs
    }

    fn update_link_params(&mut self) {
        let mps = self.device_control.max_payload_size();
        let mrrs = self.device_control.max_read_request_size();
        // The completer RCB is the bridge's own (configured); Link Control's RCB bit names the
        // root port's, which the tag table's reassembly accepts either way (it checks 64).
        let rcb = self.link.read_completion_boundary();
        if let (Some(mps), Some(mrrs)) = (mps, mrrs) {
            if let Ok(params) = LinkParams::new(mps, mrrs, rcb) {
                self.link = params;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BAR0 mem32 4 KiB, BAR1 I/O 256 B, BAR2 mem64 prefetchable 1 MiB, ROM 64 KiB, MSI at
    /// 0x40 (64-bit, per-vector masking), PCIe v2 at 0x70.
    fn state() -> FunctionState {
        let mut config = vec![0u8; 256];
        config[0x06] = 0x10;
        config[0x14] = 0x01;
        config[0x18] = 0x0c;
        config[0x34] = 0x40;
        config[0x3d] = 1;
        config[0x40..0x44].copy_from_slice(&[0x05, 0x70, 0x84, 0x01]);
        config[0x70..0x74].copy_from_slice(&[0x10, 0x00, 0x02, 0x00]);
        let layout = DeviceLayout { config, region_sizes: [0x1000, 0x100, 0x10_0000, 0, 0, 0, 0x1_0000] };
        FunctionState::new(&layout, RoutingId::new(0, 0, 0), LinkParams::DEFAULT, true).unwrap()
    }

    #[test]
    fn an_io_bar_presented_as_memory_is_at_least_16_bytes_and_decodes_only_its_region() {
        let mut config = vec![0u8; 256];
        config[0x10] = 0x01; // BAR0: I/O, 8 bytes
        let layout = DeviceLayout { config, region_sizes: [8, 0, 0, 0, 0, 0, 0] };
        let f = FunctionState::new(&layout, RoutingId::new(0, 0, 0), LinkParams::DEFAULT, false).unwrap();
        let mut f = f.with_io_bars_as_memory();
        assert_eq!((f.bars[0].kind, f.bars[0].size, f.bars[0].region_size), (BarKind::Mem32, 16, 8));
        assert_eq!(f.emulated_bar_register(0x10), Some(0));
        f.snoop_config_write(0x10, &u32::MAX.to_le_bytes());
        assert_eq!(f.emulated_bar_register(0x10), Some(0xffff_fff0));
        assert_eq!(f.emulated_bar_register(0x14), None);
        f.snoop_config_write(0x10, &0xfe00_0010u32.to_le_bytes());
        f.snoop_config_write(0x04, &[0x02, 0x00]);
        assert_eq!(f.emulated_bar_register(0x10), Some(0xfe00_0010));
        assert_eq!(f.decode(0xfe00_0010, 8, false).map(|h| (h.region, h.offset)), Some((0, 0)));
        assert_eq!(f.decode(0xfe00_0018, 4, false), None, "past the 8-byte region");
        assert_eq!(f.decode(0xfe00_0010, 4, true), None, "no longer an I/O BAR");
        // A reset keeps the presentation.
        f.reset(false);
        assert_eq!((f.bars[0].kind, f.bars[0].address), (BarKind::Mem32, 0));
    }

    #[test]
    fn a_bar_region_that_is_not_a_power_of_two_decodes_its_lowest_set_bit() {
        assert_eq!(
            (reachable_size(0x3000), reachable_size(0x1000), reachable_size(0x2400)),
            (0x1000, 0x1000, 0x400)
        );
        let mut config = vec![0u8; 256];
        config[0x14] = 0x00; // BAR1: mem32
        let layout = DeviceLayout { config, region_sizes: [0, 0x3000, 0, 0, 0, 0, 0] };
        let mut f = FunctionState::new(&layout, RoutingId::new(0, 0, 0), LinkParams::DEFAULT, false).unwrap();
        assert_eq!((f.bars[0].slot, f.bars[0].size, f.bars[0].region_size), (1, 0x1000, 0x3000));
        // The host writes a base aligned to what it sized (0x1000).
        f.snoop_config_write(0x14, &0xfebf_1000u32.to_le_bytes());
        f.snoop_config_write(0x04, &[0x02, 0x00]);
        assert_eq!(f.bars[0].address, 0xfebf_1000);
        assert_eq!(
            f.decode(0xfebf_1ffc, 4, false),
            Some(BarHit { region: 1, offset: 0xffc, prefetchable: false })
        );
        assert_eq!(f.decode(0xfebf_2000, 4, false), None, "beyond what the host sized");
    }

    #[test]
    fn bars_decode_only_when_programmed_and_enabled() {
        let mut f = state();
        assert_eq!(f.bars.len(), 3);
        f.snoop_config_write(0x10, &0xfebf_f123u32.to_le_bytes());
        f.snoop_config_write(0x14, &0x0000_c001u32.to_le_bytes());
        f.snoop_config_write(0x18, &0x0000_000cu32.to_le_bytes());
        f.snoop_config_write(0x1c, &0x0000_0008u32.to_le_bytes());
        f.snoop_config_write(0x30, &0xfff0_0001u32.to_le_bytes());
        assert_eq!(f.decode(0xfebf_f000, 4, false), None, "memory space still disabled");
        f.snoop_config_write(0x04, &[0x03, 0x00]);
        assert_eq!(
            f.decode(0xfebf_f010, 4, false),
            Some(BarHit { region: 0, offset: 0x10, prefetchable: false })
        );
        assert_eq!(f.decode(0xfebf_fffe, 4, false), None, "crosses the end of BAR0");
        assert_eq!(f.decode(0xc004, 2, true), Some(BarHit { region: 1, offset: 4, prefetchable: false }));
        assert_eq!(
            f.decode(0x8_0000_1000, 8, false),
            Some(BarHit { region: 2, offset: 0x1000, prefetchable: true })
        );
        assert_eq!(
            f.decode(0xfff0_0010, 4, false),
            Some(BarHit { region: ROM_REGION, offset: 0x10, prefetchable: true })
        );
        // Byte write to the Command register's low byte only.
        f.snoop_config_write(0x04, &[0x01]);
        assert_eq!(f.decode(0xfebf_f010, 4, false), None);
    }

    #[test]
    fn msi_devctl_and_flr_are_snooped_and_reset_keeps_the_id_only_for_flr() {
        let mut f = state();
        f.capture_id(RoutingId::new(3, 4, 0));
        f.snoop_config_write(0x44, &0xfee0_1000u32.to_le_bytes());
        f.snoop_config_write(0x4c, &0x4321u16.to_le_bytes());
        let effects = f.snoop_config_write(0x42, &(0x0001u16 | (1 << 4)).to_le_bytes());
        assert!(effects.interrupts_changed);
        let msi = f.msi.unwrap();
        assert!(msi.control.enabled());
        assert_eq!((msi.address, msi.data, msi.vectors_enabled()), (0xfee0_1000, 0x4321, 2));
        assert!(msi.control.is_64bit(), "read-only bits survive a write of 0");
        let effects = f.snoop_config_write(0x78, &(0x8000u16 | (1 << 5) | (3 << 12)).to_le_bytes());
        assert!(effects.flr);
        assert_eq!((f.link.max_payload_size(), f.link.max_read_request_size()), (256, 1024));
        f.snoop_config_write(0x98, &(1u16 << 12).to_le_bytes());
        assert!(f.ten_bit_tags());
        f.reset(true);
        assert_eq!(f.id, RoutingId::new(3, 4, 0));
        assert!(f.msi.is_some_and(|m| !m.control.enabled()));
        assert_eq!(f.link, LinkParams::DEFAULT);
        f.reset(false);
        assert_eq!(f.id, RoutingId::new(0, 0, 0));
    }

    #[test]
    fn host_config_writes_replay_bars_and_caps_then_command_without_status_or_flr() {
        let mut f = state();
        assert!(f.host_config_writes().is_empty(), "nothing written since reset");
        // Command and Status in one dword write: Status bits are write-1-to-clear.
        f.snoop_config_write(0x04, &0xffff_0006u32.to_le_bytes());
        f.snoop_config_write(0x10, &0xffff_ffffu32.to_le_bytes()); // sizing, then the address
        f.snoop_config_write(0x10, &0xfe00_0000u32.to_le_bytes());
        f.snoop_config_write(0x3c, &[0x0b]); // Interrupt Line
        f.snoop_config_write(0x43, &[0x01]); // a byte in the middle of a dword
        f.snoop_config_write(0x78, &(0x8000u16 | (1 << 5)).to_le_bytes()); // Device Control + FLR
        assert_eq!(
            f.host_config_writes(),
            vec![
                (0x10, vec![0x00, 0x00, 0x00, 0xfe]),
                (0x3c, vec![0x0b]),
                (0x43, vec![0x01]),
                (0x78, vec![0x20, 0x00]),
                (0x04, vec![0x06, 0x00]),
            ]
        );
        f.reset(true);
        assert!(f.host_config_writes().is_empty(), "a reset forgets the host's writes");
    }
}

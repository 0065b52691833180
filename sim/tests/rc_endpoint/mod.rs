//! A tiny PCIe endpoint for the root-complex tests, playing the bridge's side of an in-memory
//! link: config space from a `ConfigImage` with sizable BARs and ROM, a register file in BAR0
//! with a copy engine (DMA MRd from host memory, MWr back, then an interrupt).
//!
//! BAR0 registers: 0x00 ID (0xc0ffee01, read-only), 0x08 source (64-bit), 0x10 destination
//! (64-bit), 0x18 length, 0x20 doorbell (write 1 to start), 0x28 status (1 done, 2 failed).
//! The MSI-X table lives at BAR0 + 0x800.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tlp::completion::{
    MemoryRead, Progress, ReadReassembly, io_config_read_completion, io_config_write_completion,
    read_completions, unsuccessful_completion,
};
use tlp::config_space::{
    BarKind, ConfigImage, DeviceCapabilities, DeviceControl, DeviceStatus, LinkCapabilities, LinkControl,
    LinkStatus, MsiControl, Msix, MsixControl, PciExpress, PcieCapabilities, bar_value_after_write, header,
};
use tlp::split::{
    LinkParams, RequestFields, memory_read_requests, memory_read_tlp, memory_write_tlp, memory_write_tlps,
};
use tlp::{Attr, Body, CplStatus, MemOp, Message, MessageCode, MsgRouting, RoutingId, Tlp};
use transports::link::{Link, LinkInput, MemoryClock, memory_pair};

pub const VENDOR: u16 = 0x1de5;
pub const DEVICE: u16 = 0x0001;
pub const ID_REGISTER: u32 = 0xc0ff_ee01;
pub const MSIX_TABLE: usize = 0x800;
const DEV_ID: RoutingId = RoutingId::new(1, 0, 0);

#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// MSI and MSI-X capabilities (else the endpoint signals INTA).
    pub interrupts: bool,
    /// Never answer MMIO reads (to test the completion timeout).
    pub silent_mmio: bool,
    /// Answer configuration requests that arrive before this simulated time (picoseconds since
    /// the link started) with CRS, like a bridge still connecting to its device (`u64::MAX`:
    /// always).
    pub crs_until_ps: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options { interrupts: true, silent_mmio: false, crs_until_ps: 0 }
    }
}

/// BAR layout: slot, kind, prefetchable, size.
pub const BARS: [(u8, BarKind, bool, u64); 3] = [
    (0, BarKind::Mem32, false, 0x1000),
    (2, BarKind::Mem64, true, 0x10_0000),
    (4, BarKind::Io, false, 0x100),
];
pub const ROM_SIZE: u32 = 0x1_0000;

/// What the test inspects afterwards.
#[derive(Debug, Default)]
pub struct Observed {
    /// Payload lengths of the completions the endpoint received for its DMA reads.
    pub completion_lengths: Vec<usize>,
    /// Completion statuses (names) received.
    pub completion_statuses: Vec<&'static str>,
    /// Raw BAR values as last written (by slot), and the ROM register.
    pub bar_written: HashMap<u8, u64>,
    pub rom_written: u32,
    pub config: Vec<u8>,
    pub io_register: u32,
    /// Configuration requests answered with CRS, and the simulated time (ps) of the last one.
    pub crs_answers: u64,
    pub last_crs_ps: u64,
    /// Tags of the configuration requests answered with CRS.
    pub crs_tags: std::collections::BTreeSet<u16>,
}

struct Copy {
    dst: u64,
    buffer: Vec<u8>,
    pending: HashMap<u16, (usize, ReadReassembly)>,
    failed: bool,
}

pub struct Endpoint {
    link: Link,
    options: Options,
    config: ConfigImage,
    regs: Vec<u8>,
    msi: Option<u16>,
    msix: Option<u16>,
    pcie: u16,
    copy: Option<Copy>,
    observed: Arc<Mutex<Observed>>,
}

fn build_config(options: Options) -> (ConfigImage, Option<u16>, Option<u16>, u16) {
    let mut c = ConfigImage::new(4096).unwrap();
    c.set_u16(header::VENDOR_ID, VENDOR).unwrap();
    c.set_u16(header::DEVICE_ID, DEVICE).unwrap();
    c.set_u32(0x08, 0x0880_0001).unwrap(); // class 08 80 00, revision 1
    c.set_u16(header::SUBSYSTEM_VENDOR_ID, VENDOR).unwrap();
    c.set_u16(header::SUBSYSTEM_ID, 0x0042).unwrap();
    c.set_u8(header::INTERRUPT_PIN, 1).unwrap();
    c.add_power_management(tlp::config_space::PmCapabilities(0x0003)).unwrap();
    let (msi, msix) = if options.interrupts {
        let msi = c.add_msi(MsiControl(MsiControl::ADDRESS_64BIT | (2 << 1))).unwrap();
        let msix = c
            .add_msix(&Msix {
                offset: 0,
                control: MsixControl(7),
                table_bir: 0,
                table_offset: MSIX_TABLE as u32,
                pba_bir: 0,
                pba_offset: 0xc00,
            })
            .unwrap();
        (Some(msi), Some(msix))
    } else {
        (None, None)
    };
    let pcie = c
        .add_pci_express(&PciExpress {
            offset: 0,
            capabilities: PcieCapabilities(0x0002),
            device_capabilities: DeviceCapabilities(0x0000_0022), // MPS 512, extended tags
            device_control: DeviceControl(0x2810),
            device_status: DeviceStatus(0),
            link_capabilities: LinkCapabilities(0x0000_0011),
            link_control: LinkControl(0),
            link_status: LinkStatus(0x0011),
            device_capabilities_2: Some(tlp::config_space::DeviceCapabilities2(0)),
            device_control_2: Some(tlp::config_space::DeviceControl2(0)),
        })
        .unwrap();
    c.add_extended_capability(0x0001, 1, &[0u8; 0x44]).unwrap(); // AER
    c.add_extended_capability(0x0003, 1, &[0u8; 8]).unwrap(); // Device Serial Number
    (c, msi, msix, pcie)
}

/// An in-memory link with an endpoint task on the bridge side; returns the root-port end.
pub fn spawn(
    options: Options,
) -> (transports::link::RootPortEnd, Arc<Mutex<Observed>>, tokio::task::JoinHandle<()>) {
    let (link, rp) = memory_pair(MemoryClock::Simulated, 1024);
    let (observed, task) = spawn_on(link, options);
    (rp, observed, task)
}

/// The endpoint serving the bridge side of any link (in-memory or the TCP sim link).
pub fn spawn_on(link: Link, options: Options) -> (Arc<Mutex<Observed>>, tokio::task::JoinHandle<()>) {
    let (config, msi, msix, pcie) = build_config(options);
    let observed = Arc::new(Mutex::new(Observed::default()));
    let mut regs = vec![0u8; 0x1000];
    regs[0..4].copy_from_slice(&ID_REGISTER.to_le_bytes());
    let endpoint =
        Endpoint { link, options, config, regs, msi, msix, pcie, copy: None, observed: observed.clone() };
    (observed, tokio::spawn(endpoint.run()))
}

impl Endpoint {
    async fn run(mut self) {
        while let Some(input) = self.link.rx.recv().await {
            if let LinkInput::Tlp(t) = input {
                let tlp = Tlp::parse(&t.bytes).expect("the rc sends well-formed TLPs");
                let replies = if matches!(tlp.body, Body::Config(_)) && t.time.0 < self.options.crs_until_ps {
                    let mut observed = self.observed.lock().unwrap();
                    observed.crs_answers += 1;
                    observed.last_crs_ps = t.time.0;
                    observed.crs_tags.extend(tlp.tag());
                    vec![unsuccessful_completion(&tlp, DEV_ID, CplStatus::Crs).unwrap()]
                } else {
                    self.handle(&tlp)
                };
                for out in replies {
                    self.link.tx.send(out.to_bytes()).await.unwrap();
                }
            }
            self.observed.lock().unwrap().config = self.config.bytes().to_vec();
            self.link.progress.handled_one();
        }
    }

    fn bar_base(&self, slot: u8) -> Option<(u64, u64)> {
        let (_, kind, pf, size) = BARS.iter().find(|b| b.0 == slot)?;
        let written = *self.observed.lock().unwrap().bar_written.get(&slot).unwrap_or(&0);
        Some((bar_value_after_write(*kind, *pf, *size, written) & kind.address_mask(), *size))
    }

    fn config_dword(&self, register: u16) -> u32 {
        let observed = self.observed.lock().unwrap();
        for (slot, kind, pf, size) in BARS {
            let value = bar_value_after_write(kind, pf, size, *observed.bar_written.get(&slot).unwrap_or(&0));
            if register == header::bar(slot) {
                return value as u32;
            }
            if kind == BarKind::Mem64 && register == header::bar(slot + 1) {
                return (value >> 32) as u32;
            }
        }
        if (header::BAR0..=header::BAR5).contains(&register) {
            return 0;
        }
        if register == header::EXPANSION_ROM {
            let w = observed.rom_written;
            return (w & !(ROM_SIZE - 1) & 0xffff_f800) | (w & 1);
        }
        drop(observed);
        self.config.view().read_u32(register).unwrap_or(0)
    }

    fn config_write(&mut self, register: u16, first_be: u8, data: &[u8]) {
        let old = self.config_dword(register).to_le_bytes();
        let mut merged = old;
        for i in 0..4 {
            if first_be & (1 << i) != 0 {
                merged[i] = data[i];
            }
        }
        let value = u32::from_le_bytes(merged);
        let mut observed = self.observed.lock().unwrap();
        for (slot, kind, _, _) in BARS {
            let entry = observed.bar_written.entry(slot).or_insert(0);
            if register == header::bar(slot) {
                *entry = (*entry & !0xffff_ffff) | u64::from(value);
                return;
            }
            if kind == BarKind::Mem64 && register == header::bar(slot + 1) {
                *entry = (*entry & 0xffff_ffff) | (u64::from(value) << 32);
                return;
            }
        }
        if register == header::EXPANSION_ROM {
            observed.rom_written = value;
            return;
        }
        if register < 0x10 && register != header::COMMAND {
            return; // IDs, class, header type: read-only
        }
        drop(observed);
        self.config.write(register, &merged).unwrap();
    }

    fn handle(&mut self, tlp: &Tlp) -> Vec<Tlp> {
        match &tlp.body {
            Body::Config(c) => {
                if c.write {
                    self.config_write(c.register, c.first_be, &tlp.payload);
                    vec![io_config_write_completion(tlp, DEV_ID).unwrap()]
                } else {
                    let data = self.config_dword(c.register).to_le_bytes();
                    vec![io_config_read_completion(tlp, DEV_ID, data).unwrap()]
                }
            }
            Body::Io(io) => {
                if io.write {
                    let mut dw = [0u8; 4];
                    dw.copy_from_slice(&tlp.payload[..4]);
                    self.observed.lock().unwrap().io_register = u32::from_le_bytes(dw);
                    vec![io_config_write_completion(tlp, DEV_ID).unwrap()]
                } else {
                    let value = self.observed.lock().unwrap().io_register;
                    vec![io_config_read_completion(tlp, DEV_ID, value.to_le_bytes()).unwrap()]
                }
            }
            Body::Memory(m) if m.op == MemOp::Read => {
                if self.options.silent_mmio {
                    return Vec::new();
                }
                let read = MemoryRead::from_tlp(tlp).unwrap();
                let mut data = vec![0u8; read.byte_count() as usize];
                let (base, _) = self.bar_base(0).unwrap();
                let start = read.first_byte_address();
                if start >= base && start - base + data.len() as u64 <= 0x1000 {
                    let at = (start - base) as usize;
                    let len = data.len();
                    data.copy_from_slice(&self.regs[at..at + len]);
                }
                let link = LinkParams::new(128, 512, 128).unwrap();
                read_completions(&read, DEV_ID, &data, &link).unwrap().collect()
            }
            Body::Memory(m) => {
                let (base, _) = self.bar_base(0).unwrap();
                if m.address < base || m.address >= base + 0x1000 {
                    return Vec::new();
                }
                let offset = (m.address - base) as usize;
                for (o, l) in tlp::byte_enable::enabled_runs(m.first_be, m.last_be, tlp.length_dw()) {
                    let (o, l) = (o as usize, l as usize);
                    self.regs[offset + o..offset + o + l].copy_from_slice(&tlp.payload[o..o + l]);
                }
                if offset == 0x20 && self.regs[0x20] == 1 {
                    self.regs[0x20] = 0;
                    return self.start_copy();
                }
                Vec::new()
            }
            Body::Completion(c) => {
                let mut observed = self.observed.lock().unwrap();
                observed.completion_lengths.push(tlp.payload.len());
                observed.completion_statuses.push(c.status.name());
                drop(observed);
                self.on_completion(c.tag, tlp)
            }
            _ => Vec::new(),
        }
    }

    fn reg64(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.regs[at..at + 8].try_into().unwrap())
    }

    fn start_copy(&mut self) -> Vec<Tlp> {
        let (src, dst) = (self.reg64(0x08), self.reg64(0x10));
        let len = u32::from_le_bytes(self.regs[0x18..0x1c].try_into().unwrap()) as u64;
        self.regs[0x28] = 0;
        let fields = RequestFields { requester: DEV_ID, tc: 0, attr: Attr::default() };
        let mut copy = Copy { dst, buffer: vec![0; len as usize], pending: HashMap::new(), failed: false };
        let mut out = Vec::new();
        for (tag, chunk) in memory_read_requests(src, len, 512).unwrap().enumerate() {
            let tag = tag as u16;
            let tlp = memory_read_tlp(&fields, chunk, tag, 512).unwrap();
            let reassembly =
                ReadReassembly::for_request(&tlp).unwrap().with_read_completion_boundary(64).unwrap();
            copy.pending.insert(tag, ((chunk.address - src) as usize, reassembly));
            out.push(tlp);
        }
        self.copy = Some(copy);
        out
    }

    fn on_completion(&mut self, tag: u16, tlp: &Tlp) -> Vec<Tlp> {
        let Some(copy) = self.copy.as_mut() else { return Vec::new() };
        let Some((offset, reassembly)) = copy.pending.get_mut(&tag) else { return Vec::new() };
        match reassembly.accept(tlp) {
            Ok(Progress::More { .. }) => return Vec::new(),
            Ok(Progress::Done(data)) => {
                let offset = *offset;
                copy.buffer[offset..offset + data.len()].copy_from_slice(&data);
            }
            Err(_) => copy.failed = true,
        }
        copy.pending.remove(&tag);
        if !copy.pending.is_empty() {
            return Vec::new();
        }
        let Some(copy) = self.copy.take() else { return Vec::new() };
        let fields = RequestFields { requester: DEV_ID, tc: 0, attr: Attr::default() };
        let mut out = Vec::new();
        if copy.failed {
            self.regs[0x28] = 2;
        } else {
            out.extend(memory_write_tlps(fields, copy.dst, &copy.buffer, 128).unwrap());
            self.regs[0x28] = 1;
        }
        out.extend(self.interrupt());
        out
    }

    fn interrupt(&self) -> Option<Tlp> {
        let fields = RequestFields { requester: DEV_ID, tc: 0, attr: Attr::default() };
        let view = self.config.view();
        if let Some(msix) = self.msix {
            if view.read_u16(msix + 2).unwrap() & MsixControl::ENABLE != 0 {
                let entry = &self.regs[MSIX_TABLE..MSIX_TABLE + 16];
                let address = u64::from_le_bytes(entry[0..8].try_into().unwrap());
                return Some(memory_write_tlp(&fields, address, &entry[8..12], 128).unwrap());
            }
        }
        if let Some(msi) = self.msi {
            let control = MsiControl(view.read_u16(msi + 2).unwrap());
            if control.enabled() {
                let layout = control.layout();
                let lo = view.read_u32(msi + layout.address_lo()).unwrap();
                let hi = layout.address_hi().map(|o| view.read_u32(msi + o).unwrap()).unwrap_or(0);
                let data = view.read_u16(msi + layout.data()).unwrap();
                let address = (u64::from(hi) << 32) | u64::from(lo);
                return Some(memory_write_tlp(&fields, address, &data.to_le_bytes(), 128).unwrap());
            }
        }
        Some(Tlp {
            prefixes: Vec::new(),
            tc: 0,
            attr: Attr::default(),
            ln: false,
            th: false,
            ep: false,
            at: 0,
            length: 0,
            body: Body::Message(Message {
                routing: MsgRouting::Local,
                requester: DEV_ID,
                tag: 0,
                code: MessageCode::ASSERT_INTA,
                fields: [0; 8],
            }),
            payload: Vec::new(),
            digest: None,
        })
    }
}

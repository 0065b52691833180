//! Interrupts: eventfds handed to the server with SET_IRQS, turned into MSI/MSI-X memory writes
//! or Assert_INTx/Deassert_INTx messages as the host programmed the function.
//!
//! One watcher task per eventfd reports `Fired { index, vector }` to the interrupt task, which
//! alone decides what goes on the link: only the index the host enabled is assigned on the
//! server (INTx at start, MSI when MSI Enable is set, MSI-X when MSI-X Enable is set; switching
//! disables the others, as QEMU's vfio-pci does). Masked vectors are held pending (MSI Mask
//! Bits, MSI-X per-vector and function masks) and delivered on unmask; the MSI-X PBA the host
//! reads is served from these pending bits. MSI and MSI-X are memory writes, so they are also
//! held pending while Bus Master Enable is clear (PCIe §7.5.1.1.3) and delivered once it is set.
//! INTx follows QEMU's EOI heuristic: assert once,
//! and on the next BAR access deassert and `SET_IRQS(INTX, UNMASK)` so the device can fire again.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;

use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use tlp::config_space::{MsixTableEntry, msix};
use tlp::split::{RequestFields, memory_write_tlp};
use tlp::{MessageCode, MsgRouting};
use transports::vfio_user::wire::irq_index;
use transports::vfio_user::{IrqAction, IrqData};

use super::Shared;
use super::counters::Counters;

/// Most MSI-X vectors the bridge wires up (the capability allows 2048).
pub const MAX_MSIX_VECTORS: u32 = 2048;

/// What the interrupt task is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqCommand {
    /// An eventfd fired.
    Fired { index: u32, vector: u32 },
    /// The host changed MSI/MSI-X enables, masks or Command.INTx Disable.
    Reconfigure,
    /// A BAR was accessed while INTx was asserted (QEMU's EOI heuristic).
    IntxEoi,
    /// The function was reset: forget the mode (re-armed by the next `Reconfigure`).
    Reset,
}

/// Interrupt state shared with the dispatchers (MSI-X table writes, PBA reads).
#[derive(Debug, Default)]
pub struct IrqShared {
    /// The MSI-X table as the host wrote it (the server holds its own copy too).
    pub msix_table: Vec<u8>,
    pub msix_pending: Vec<bool>,
    pub msi_pending: u32,
    /// INTx fired while Command.INTx Disable was set.
    pub intx_pending: bool,
    pub intx_asserted: bool,
}

impl IrqShared {
    /// The table at reset: every vector masked (§7.7.2.4 Vector Control reset value).
    pub fn reset(&mut self, table_size: u16) {
        let mut entry = [0u8; msix::entry::LEN];
        entry[msix::entry::VECTOR_CONTROL] = 1;
        self.msix_table = entry.repeat(usize::from(table_size));
        self.msix_pending = vec![false; usize::from(table_size)];
        self.msi_pending = 0;
        self.intx_pending = false;
        self.intx_asserted = false;
    }

    /// Applies a host write of `data` at `offset` inside the table.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let Ok(start) = usize::try_from(offset) else { return };
        let end = start.saturating_add(data.len()).min(self.msix_table.len());
        if start < end {
            if let (Some(dst), Some(src)) = (self.msix_table.get_mut(start..end), data.get(..end - start)) {
                dst.copy_from_slice(src);
            }
        }
    }

    fn entry(&self, vector: u32) -> Option<MsixTableEntry> {
        let start = usize::try_from(vector).ok()?.checked_mul(msix::entry::LEN)?;
        let bytes: &[u8; msix::entry::LEN] =
            self.msix_table.get(start..start + msix::entry::LEN)?.try_into().ok()?;
        Some(MsixTableEntry::parse(bytes))
    }

    /// The Pending Bit Array bytes `offset..offset+len` (little-endian qwords, bit n = vector n).
    pub fn pba_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| {
                let byte = offset + i;
                (0..8u64).fold(0u8, |acc, bit| {
                    let vector = byte * 8 + bit;
                    let set = usize::try_from(vector).ok().and_then(|v| self.msix_pending.get(v)).copied();
                    if set == Some(true) { acc | (1 << bit) } else { acc }
                })
            })
            .collect()
    }
}

/// The eventfds of one irq index.
pub struct IndexFds {
    pub index: u32,
    pub fds: Vec<Arc<EventFd>>,
}

/// Creates `count` eventfds for `index` (non-blocking, close-on-exec).
pub fn eventfds(index: u32, count: u32) -> std::io::Result<IndexFds> {
    let fds = (0..count)
        .map(|_| {
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map(Arc::new)
                .map_err(std::io::Error::from)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(IndexFds { index, fds })
}

struct RawEventFd(Arc<EventFd>);

impl AsRawFd for RawEventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Spawns one watcher per eventfd into `tasks`; each reports firings until shutdown.
pub fn spawn_watchers(
    tasks: &mut JoinSet<()>,
    fds: &IndexFds,
    commands: &mpsc::Sender<IrqCommand>,
    shutdown: &watch::Receiver<bool>,
) -> std::io::Result<()> {
    for (vector, fd) in fds.fds.iter().enumerate() {
        // SAFETY: `RawEventFd` owns an `Arc` of the eventfd, so the descriptor stays open and
        // unchanged for as long as the `AsyncFd` lives.
        let afd = unsafe { AsyncFd::register(RawEventFd(fd.clone())) }
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let commands = commands.clone();
        let mut shutdown = shutdown.clone();
        let (index, vector) = (fds.index, vector as u32);
        tasks.spawn(async move {
            loop {
                let ready = tokio::select! {
                    _ = super::wait_shutdown(&mut shutdown) => return,
                    ready = afd.readable() => ready,
                };
                let Ok(mut guard) = ready else { return };
                match guard.try_io(|inner| inner.get_ref().0.read().map_err(std::io::Error::from)) {
                    Ok(Ok(_)) => {
                        if commands.send(IrqCommand::Fired { index, vector }).await.is_err() {
                            return;
                        }
                    }
                    Ok(Err(e)) => {
                        warn!(index, vector, error = %e, "eventfd read failed; watcher stops");
                        return;
                    }
                    Err(_would_block) => continue,
                }
            }
        });
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    None,
    Intx,
    Msi(u32),
    Msix,
}

impl Mode {
    fn index(self) -> Option<u32> {
        match self {
            Mode::None => None,
            Mode::Intx => Some(irq_index::INTX),
            Mode::Msi(_) => Some(irq_index::MSI),
            Mode::Msix => Some(irq_index::MSIX),
        }
    }
}

/// The interrupt task: owns the mode and everything interrupts put on the link.
pub struct InterruptTask {
    pub(crate) shared: Arc<Shared>,
    pub(crate) intx: Option<IndexFds>,
    pub(crate) msi: Option<IndexFds>,
    pub(crate) msix: Option<IndexFds>,
    mode: Mode,
}

impl InterruptTask {
    pub fn new(
        shared: Arc<Shared>,
        intx: Option<IndexFds>,
        msi: Option<IndexFds>,
        msix: Option<IndexFds>,
    ) -> Self {
        InterruptTask { shared, intx, msi, msix, mode: Mode::None }
    }

    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<IrqCommand>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let command = tokio::select! {
                _ = super::wait_shutdown(&mut shutdown) => return,
                command = commands.recv() => match command { Some(c) => c, None => return },
            };
            match command {
                IrqCommand::Fired { index, vector } => self.fired(index, vector).await,
                IrqCommand::Reconfigure => self.reconfigure().await,
                IrqCommand::IntxEoi => self.intx_eoi().await,
                IrqCommand::Reset => {
                    // The server forgets its eventfds on DEVICE_RESET; re-assign on Reconfigure.
                    self.mode = Mode::None;
                }
            }
        }
    }

    fn fds(&self, index: u32) -> Option<&IndexFds> {
        match index {
            irq_index::INTX => self.intx.as_ref(),
            irq_index::MSI => self.msi.as_ref(),
            irq_index::MSIX => self.msix.as_ref(),
            _ => None,
        }
    }

    fn desired_mode(&self) -> Mode {
        let (msix_enabled, msi, pin) = {
            let f = self.shared.function();
            (f.msix.is_some_and(|m| m.enabled), f.msi, f.interrupt_pin)
        };
        let intx = if self.intx.is_some() && pin != 0 { Mode::Intx } else { Mode::None };
        if msix_enabled && self.msix.is_some() {
            return Mode::Msix;
        }
        match (msi, self.msi.as_ref()) {
            (Some(m), Some(fds)) if m.control.enabled() => {
                Mode::Msi(m.vectors_enabled().min(fds.fds.len() as u32))
            }
            _ => intx,
        }
    }

    async fn reconfigure(&mut self) {
        // Before the first connection there is nothing to configure; after a server restart the
        // control task sends Reconfigure again once the new connection is in place.
        let Some(client) = self.shared.client() else { return };
        let desired = self.desired_mode();
        if desired != self.mode {
            if self.mode == Mode::Intx && self.shared.irq().intx_asserted {
                self.send_intx(false).await;
            }
            if let Some(old) = self.mode.index() {
                if let Err(e) = client.disable_irqs(old).await {
                    warn!(index = old, error = %e, "SET_IRQS disabling an interrupt index failed");
                }
            }
            self.mode = Mode::None;
            if let Some(index) = desired.index() {
                let count = match desired {
                    Mode::Msi(n) => n as usize,
                    _ => self.fds(index).map_or(0, |f| f.fds.len()),
                };
                let result = match self.fds(index) {
                    Some(fds) if count > 0 => {
                        let borrowed: Vec<BorrowedFd<'_>> =
                            fds.fds.iter().take(count).map(|fd| fd.as_fd()).collect();
                        client.set_irqs_eventfds(index, 0, &borrowed).await
                    }
                    _ => Ok(()),
                };
                match result {
                    Ok(()) => {
                        info!(index, vectors = count, "interrupt eventfds assigned");
                        self.mode = desired;
                    }
                    Err(e) => {
                        warn!(index, error = %e, "SET_IRQS assigning eventfds failed; interrupts of this kind are lost")
                    }
                }
            }
        }
        self.deliver_pending().await;
    }

    async fn fired(&mut self, index: u32, vector: u32) {
        if self.mode.index() != Some(index) {
            debug!(index, vector, "eventfd of an index not in use fired; ignored");
            return;
        }
        match self.mode {
            Mode::Intx => {
                let disabled = self.shared.function().intx_disabled();
                let asserted = self.shared.irq().intx_asserted;
                if disabled {
                    Counters::inc(&self.shared.counters.interrupts_masked);
                    self.shared.irq().intx_pending = true;
                } else if !asserted {
                    self.send_intx(true).await;
                }
            }
            Mode::Msi(n) if vector < n => {
                let masked = {
                    let f = self.shared.function();
                    !f.bus_master() || f.msi.is_some_and(|m| m.mask_bits & (1 << vector) != 0)
                };
                if masked {
                    Counters::inc(&self.shared.counters.interrupts_masked);
                    self.shared.irq().msi_pending |= 1 << vector;
                } else {
                    self.send_msi(vector).await;
                }
            }
            Mode::Msix => {
                let function_mask = {
                    let f = self.shared.function();
                    !f.bus_master() || f.msix.is_some_and(|m| m.function_mask)
                };
                let entry = self.shared.irq().entry(vector);
                match entry {
                    Some(entry) if !function_mask && !entry.masked() => self.send_msix(vector, entry).await,
                    Some(_) => {
                        Counters::inc(&self.shared.counters.interrupts_masked);
                        if let Some(p) = self.shared.irq().msix_pending.get_mut(vector as usize) {
                            *p = true;
                        }
                    }
                    None => debug!(vector, "MSI-X vector beyond the table fired; ignored"),
                }
            }
            _ => debug!(index, vector, "vector beyond the enabled ones fired; ignored"),
        }
    }

    async fn deliver_pending(&mut self) {
        match self.mode {
            Mode::Intx => {
                let disabled = self.shared.function().intx_disabled();
                let pending = {
                    let mut irq = self.shared.irq();
                    let p = irq.intx_pending && !irq.intx_asserted;
                    if p && !disabled {
                        irq.intx_pending = false;
                        true
                    } else {
                        false
                    }
                };
                if pending {
                    self.send_intx(true).await;
                }
            }
            Mode::Msi(_) | Mode::Msix if !self.shared.function().bus_master() => {}
            Mode::Msi(n) => {
                let mask = self.shared.function().msi.map_or(0, |m| m.mask_bits);
                let due = {
                    let mut irq = self.shared.irq();
                    let due = irq.msi_pending & !mask;
                    irq.msi_pending &= mask;
                    due
                };
                for vector in (0..n.min(32)).filter(|v| due & (1 << v) != 0) {
                    self.send_msi(vector).await;
                }
            }
            Mode::Msix => {
                if self.shared.function().msix.is_some_and(|m| m.function_mask) {
                    return;
                }
                let due: Vec<(u32, MsixTableEntry)> = {
                    let mut irq = self.shared.irq();
                    let mut due = Vec::new();
                    for vector in 0..irq.msix_pending.len() {
                        let entry = irq.entry(vector as u32);
                        if let (Some(true), Some(entry)) = (irq.msix_pending.get(vector).copied(), entry) {
                            if !entry.masked() {
                                due.push((vector as u32, entry));
                                if let Some(p) = irq.msix_pending.get_mut(vector) {
                                    *p = false;
                                }
                            }
                        }
                    }
                    due
                };
                for (vector, entry) in due {
                    self.send_msix(vector, entry).await;
                }
            }
            Mode::None => {}
        }
    }

    async fn intx_eoi(&mut self) {
        if self.mode != Mode::Intx || !self.shared.irq().intx_asserted {
            return;
        }
        self.send_intx(false).await;
        let Some(client) = self.shared.client() else { return };
        if let Err(e) = client.set_irqs_action(irq_index::INTX, 0, 1, IrqAction::Unmask, IrqData::None).await
        {
            debug!(error = %e, "SET_IRQS(INTX, UNMASK) failed");
        }
    }

    fn requester(&self) -> RequestFields {
        RequestFields { requester: self.shared.function().id, tc: 0, attr: tlp::Attr::default() }
    }

    async fn send_msi(&self, vector: u32) {
        let Some(m) = self.shared.function().msi else { return };
        let n = m.vectors_enabled();
        // Multiple Message: the low log2(n) bits of the data carry the vector number.
        let data = (u32::from(m.data) & !(n - 1)) | (vector & (n - 1));
        self.send_message_write(m.address, data, "MSI", vector).await;
        Counters::inc(&self.shared.counters.msi_sent);
    }

    async fn send_msix(&self, vector: u32, entry: MsixTableEntry) {
        self.send_message_write(entry.address, entry.data, "MSI-X", vector).await;
        Counters::inc(&self.shared.counters.msix_sent);
    }

    async fn send_message_write(&self, address: u64, data: u32, kind: &'static str, vector: u32) {
        let mps = self.shared.function().link.max_payload_size();
        match memory_write_tlp(&self.requester(), address & !3, &data.to_le_bytes(), mps) {
            Ok(tlp) => {
                debug!(tlp = %tlp, kind, vector, "interrupt message");
                let _ = self.shared.tx.send(&tlp).await;
            }
            Err(e) => warn!(kind, vector, address, error = %e, "interrupt address unusable; message dropped"),
        }
    }

    async fn send_intx(&self, assert: bool) {
        let pin = self.shared.function().interrupt_pin;
        if !(1..=4).contains(&pin) {
            return;
        }
        let base = if assert { MessageCode::ASSERT_INTA.0 } else { MessageCode::DEASSERT_INTA.0 };
        let requester = self.shared.function().id;
        self.shared.irq().intx_asserted = assert;
        if assert {
            Counters::inc(&self.shared.counters.intx_asserted);
        }
        self.shared.send_message(MessageCode(base + pin - 1), MsgRouting::Local, requester).await;
    }
}

//! The per-connection handle a device model uses to reach the client: message-based DMA
//! (DMA_READ/DMA_WRITE, checked against the client's DMA_MAP windows) and interrupts (eventfds
//! given with SET_IRQS).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tokio::sync::{Semaphore, oneshot};
use tracing::{debug, warn};
use transports::vfio_user::socket::{MessageSocket, ReceivedMessage};
use transports::vfio_user::wire::{self, Command, DmaAccessRepr, MessageType, dma_map_flags, irq_index};

use crate::error::Error;

/// Number of vfio-user PCI IRQ indices (INTx, MSI, MSI-X, ERR, REQ).
pub const IRQ_INDEX_COUNT: usize = 5;

/// Serialises whole messages onto one socket (replies and DMA commands may come from
/// different tasks), each send bounded by a timeout.
#[derive(Debug)]
pub(crate) struct SocketWriter {
    pub(crate) socket: Arc<MessageSocket>,
    lock: tokio::sync::Mutex<()>,
    timeout: Duration,
}

impl SocketWriter {
    pub(crate) fn new(socket: Arc<MessageSocket>, timeout: Duration) -> Self {
        Self { socket, lock: tokio::sync::Mutex::new(()), timeout }
    }

    pub(crate) async fn send(
        &self,
        message: &[u8],
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<(), Error> {
        self.send_parts(&[message], fds).await
    }

    /// [`SocketWriter::send`] of the concatenation of `parts` (vectored: a DMA_WRITE's data is
    /// not copied behind its header).
    pub(crate) async fn send_parts(
        &self,
        parts: &[&[u8]],
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<(), Error> {
        let _turn = self.lock.lock().await;
        let sent = AtomicUsize::new(0);
        match tokio::time::timeout(self.timeout, self.socket.send_parts_tracked(parts, fds, &sent)).await {
            Ok(result) => result.map_err(Error::from),
            Err(_) => Err(Error::Io {
                context: "sending a message (the client stopped reading)",
                source: std::io::Error::from(std::io::ErrorKind::TimedOut),
            }),
        }
    }
}

/// A DMA window from DMA_MAP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappedWindow {
    pub address: u64,
    pub size: u64,
    /// DMA_MAP flags (READ = device may read, WRITE = device may write).
    pub flags: u32,
}

impl MappedWindow {
    fn contains(&self, address: u64, len: u64) -> bool {
        let Some(end) = address.checked_add(len) else { return false };
        let Some(window_end) = self.address.checked_add(self.size) else { return false };
        address >= self.address && end <= window_end
    }
}

/// What happened to an interrupt the device raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqOutcome {
    /// 1 was written to the vector's eventfd.
    Signalled,
    /// The client masked the vector with SET_IRQS(MASK); it fires on UNMASK.
    MaskedPending,
    /// No eventfd is assigned to the vector (or the vector does not exist).
    NoEventfd,
}

/// Per-index interrupt state: one eventfd slot and one client mask bit per vector.
#[derive(Debug, Default)]
pub(crate) struct IrqVectors {
    pub(crate) eventfds: Vec<Option<File>>,
    pub(crate) masked: Vec<bool>,
    pub(crate) pending: Vec<bool>,
}

impl IrqVectors {
    pub(crate) fn with_count(count: u32) -> Self {
        let n = count as usize;
        Self { eventfds: (0..n).map(|_| None).collect(), masked: vec![false; n], pending: vec![false; n] }
    }

    /// Raises `vector`: signals its eventfd unless masked.
    pub(crate) fn raise(&mut self, index: u32, vector: u32) -> IrqOutcome {
        let v = vector as usize;
        if self.masked.get(v).copied().unwrap_or(false) {
            if let Some(p) = self.pending.get_mut(v) {
                *p = true;
            }
            return IrqOutcome::MaskedPending;
        }
        match self.eventfds.get(v) {
            Some(Some(file)) => {
                signal_eventfd(file, index, vector);
                IrqOutcome::Signalled
            }
            _ => IrqOutcome::NoEventfd,
        }
    }
}

/// Writes 1 to an eventfd without ever blocking: a client may hand us any fd, so a full one is
/// reported and skipped rather than stalling the device.
fn signal_eventfd(file: &File, index: u32, vector: u32) {
    let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLOUT)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(1) => {
            let mut writer: &File = file;
            if let Err(e) = writer.write(&1u64.to_ne_bytes()) {
                warn!(irq_index = index, vector, error = %e, "writing the interrupt eventfd failed");
            } else {
                debug!(irq_index = index, vector, "interrupt signalled");
            }
        }
        Ok(_) => warn!(irq_index = index, vector, "interrupt eventfd not writable; interrupt dropped"),
        Err(e) => warn!(irq_index = index, vector, error = %e, "polling the interrupt eventfd failed"),
    }
}

/// Outstanding DMA commands, by message id.
#[derive(Debug, Default)]
struct PendingDma {
    next_id: u16,
    waiting: HashMap<u16, oneshot::Sender<ReceivedMessage>>,
}

pub(crate) struct BusInner {
    writer: Arc<SocketWriter>,
    /// Main socket (single-socket mode) or twin socket.
    pub(crate) dma_on_twin: bool,
    pending: Mutex<PendingDma>,
    dma_slots: Semaphore,
    dma_timeout: Duration,
    /// Chunk size for DMA_READ/DMA_WRITE: the client's max_data_xfer_size, bounded by ours.
    max_transfer: usize,
    pub(crate) windows: Mutex<Vec<MappedWindow>>,
    pub(crate) irqs: Mutex<Vec<IrqVectors>>,
    closed: AtomicBool,
}

/// The device model's handle to the connected client. Cheap to clone; a copy job keeps one.
/// Once the client disconnects every DMA fails with [`Error::Disconnected`] and interrupts go
/// nowhere.
#[derive(Clone)]
pub struct DeviceBus {
    pub(crate) inner: Arc<BusInner>,
}

impl std::fmt::Debug for DeviceBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBus")
            .field("dma_on_twin", &self.inner.dma_on_twin)
            .field("max_transfer", &self.inner.max_transfer)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish()
    }
}

/// Removes a DMA waiter when its request finishes or is abandoned (e.g. the job was aborted by
/// a reset), so a late reply finds no one and is dropped.
struct WaiterGuard<'a> {
    bus: &'a BusInner,
    id: u16,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.bus.pending().waiting.remove(&self.id);
    }
}

impl BusInner {
    fn pending(&self) -> MutexGuard<'_, PendingDma> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl DeviceBus {
    pub(crate) fn new(
        writer: Arc<SocketWriter>,
        dma_on_twin: bool,
        dma_timeout: Duration,
        max_transfer: usize,
        max_dma_in_flight: usize,
        irq_counts: [u32; IRQ_INDEX_COUNT],
    ) -> Self {
        Self {
            inner: Arc::new(BusInner {
                writer,
                dma_on_twin,
                pending: Mutex::new(PendingDma::default()),
                dma_slots: Semaphore::new(max_dma_in_flight.max(1)),
                dma_timeout,
                max_transfer: max_transfer.max(1),
                windows: Mutex::new(Vec::new()),
                irqs: Mutex::new(irq_counts.iter().map(|&c| IrqVectors::with_count(c)).collect()),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// Largest DMA_READ/DMA_WRITE `count` this bus sends (the client's `max_data_xfer_size`,
    /// bounded by the server's).
    pub fn max_transfer(&self) -> usize {
        self.inner.max_transfer
    }

    /// Whether DMA goes over the twin socket.
    pub fn dma_on_twin_socket(&self) -> bool {
        self.inner.dma_on_twin
    }

    pub fn is_connected(&self) -> bool {
        !self.inner.closed.load(Ordering::Acquire)
    }

    /// The windows the client has mapped.
    pub fn windows(&self) -> Vec<MappedWindow> {
        self.inner.windows.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Checks that `[address, address+len)` lies inside one mapped window that allows
    /// `device_writes` (DMA_WRITE) or reads (DMA_READ).
    pub fn check_window(&self, address: u64, len: u64, device_writes: bool) -> Result<(), Error> {
        let needed = if device_writes { dma_map_flags::WRITE } else { dma_map_flags::READ };
        let windows = self.inner.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.iter().any(|w| w.flags & needed != 0 && w.contains(address, len)) {
            Ok(())
        } else {
            Err(Error::DmaNotMapped { address, len })
        }
    }

    /// Reads `len` bytes of client memory with DMA_READ messages of at most
    /// [`DeviceBus::max_transfer`] bytes, one in flight at a time. A read that takes one
    /// message returns a slice of its reply (no copy); a longer one gathers the pieces.
    pub async fn dma_read(&self, address: u64, len: usize) -> Result<Bytes, Error> {
        self.check_window(address, len as u64, false)?;
        let mut data = BytesMut::new();
        let mut done = 0usize;
        while done < len {
            let count = (len - done).min(self.inner.max_transfer);
            let at =
                address.checked_add(done as u64).ok_or(Error::DmaNotMapped { address, len: len as u64 })?;
            // Re-checked per chunk: the client may unmap while a transfer runs.
            self.check_window(at, count as u64, false)?;
            let request = DmaAccessRepr { address: at, count: count as u64 };
            let reply = self.transact(Command::DmaRead, &request, &[]).await?;
            let view = wire::dma_access::View::new_checked(&reply.payload[..])
                .map_err(|e| Error::Protocol(format!("DMA_READ reply: {e}")))?;
            let answered = DmaAccessRepr::parse(&view)?;
            if answered != request || view.trailing().len() != count {
                return Err(Error::Protocol(format!(
                    "DMA_READ of {count} bytes at {at:#x} answered for {} bytes at {:#x} with {} data bytes",
                    answered.count,
                    answered.address,
                    view.trailing().len()
                )));
            }
            if count == len {
                return Ok(Bytes::from(reply.payload).slice(DmaAccessRepr::LEN..));
            }
            if data.is_empty() {
                data.reserve(len);
            }
            data.extend_from_slice(view.trailing());
            done += count;
        }
        Ok(data.freeze())
    }

    /// Writes `data` to client memory with DMA_WRITE messages of at most
    /// [`DeviceBus::max_transfer`] bytes, one in flight at a time.
    pub async fn dma_write(&self, address: u64, data: &[u8]) -> Result<(), Error> {
        self.check_window(address, data.len() as u64, true)?;
        for (i, chunk) in data.chunks(self.inner.max_transfer).enumerate() {
            let at = address
                .checked_add((i * self.inner.max_transfer) as u64)
                .ok_or(Error::DmaNotMapped { address, len: data.len() as u64 })?;
            self.check_window(at, chunk.len() as u64, true)?;
            let request = DmaAccessRepr { address: at, count: chunk.len() as u64 };
            let reply = self.transact(Command::DmaWrite, &request, chunk).await?;
            let view = wire::dma_access::View::new_checked(&reply.payload[..])
                .map_err(|e| Error::Protocol(format!("DMA_WRITE reply: {e}")))?;
            let answered = DmaAccessRepr::parse(&view)?;
            if answered != request {
                return Err(Error::Protocol(format!(
                    "DMA_WRITE of {} bytes at {at:#x} answered for {} bytes at {:#x}",
                    chunk.len(),
                    answered.count,
                    answered.address
                )));
            }
        }
        Ok(())
    }

    /// Sends one DMA command (`request`, then `data` for a DMA_WRITE) and waits (bounded) for
    /// its reply.
    async fn transact(
        &self,
        command: Command,
        request: &DmaAccessRepr,
        data: &[u8],
    ) -> Result<ReceivedMessage, Error> {
        let address = request.address;
        let inner = &*self.inner;
        let timeout = inner.dma_timeout;
        let timed_out = || Error::DmaTimeout { command, address, timeout };
        let _slot = tokio::time::timeout(timeout, inner.dma_slots.acquire())
            .await
            .map_err(|_| timed_out())?
            .map_err(|_| Error::Disconnected)?;
        if !self.is_connected() {
            return Err(Error::Disconnected);
        }
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut pending = inner.pending();
            // Skip ids still waiting (ids wrap after 65536 commands).
            let mut id = pending.next_id;
            while pending.waiting.contains_key(&id) {
                id = id.wrapping_add(1);
            }
            pending.next_id = id.wrapping_add(1);
            pending.waiting.insert(id, tx);
            id
        };
        let _guard = WaiterGuard { bus: inner, id };
        // The data goes out from the caller's buffer, behind the header (a vectored write).
        let head = wire::encode_message_head(
            id,
            command,
            MessageType::Command,
            None,
            &request.to_array(),
            data.len(),
        )?;
        debug!(%command, id, address, len = request.count, twin = inner.dma_on_twin, "DMA request sent");
        tokio::time::timeout(timeout, inner.writer.send_parts(&[&head, data], &[]))
            .await
            .map_err(|_| timed_out())??;
        let reply = tokio::time::timeout(timeout, rx)
            .await
            .map_err(|_| timed_out())?
            .map_err(|_| Error::Disconnected)?;
        if reply.header.command != command {
            return Err(Error::Protocol(format!(
                "reply to {command} id {id} names {}",
                reply.header.command
            )));
        }
        if let Some(errno) = reply.header.error {
            return Err(Error::DmaRejected { command, address, errno });
        }
        Ok(reply)
    }

    /// Hands a reply read from the socket to the DMA request waiting for it. A reply nobody
    /// waits for (late after a timeout, or for an aborted job) is logged and dropped.
    pub(crate) fn deliver_reply(&self, message: ReceivedMessage) {
        let waiter = self.inner.pending().waiting.remove(&message.header.id);
        match waiter {
            Some(tx) => {
                let _ = tx.send(message);
            }
            None => warn!(header = %message.header, "reply matches no outstanding DMA request; dropped"),
        }
    }

    /// Raises `vector` of IRQ `index` (see [`IrqOutcome`]).
    pub fn trigger(&self, index: u32, vector: u32) -> IrqOutcome {
        if !self.is_connected() {
            return IrqOutcome::NoEventfd;
        }
        let mut irqs = self.inner.irqs.lock().unwrap_or_else(|p| p.into_inner());
        match irqs.get_mut(index as usize) {
            Some(vectors) => vectors.raise(index, vector),
            None => IrqOutcome::NoEventfd,
        }
    }

    /// Whether `vector` of `index` has an eventfd.
    pub fn has_eventfd(&self, index: u32, vector: u32) -> bool {
        let irqs = self.inner.irqs.lock().unwrap_or_else(|p| p.into_inner());
        matches!(irqs.get(index as usize).and_then(|v| v.eventfds.get(vector as usize)), Some(Some(_)))
    }

    /// Ends the connection's resources: outstanding DMA fails, eventfds close, windows go.
    pub(crate) fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.dma_slots.close();
        self.inner.pending().waiting.clear();
        self.inner.windows.lock().unwrap_or_else(|p| p.into_inner()).clear();
        for vectors in self.inner.irqs.lock().unwrap_or_else(|p| p.into_inner()).iter_mut() {
            vectors.eventfds.iter_mut().for_each(|fd| *fd = None);
        }
    }
}

/// Turns a received eventfd into the file the bus writes to.
pub(crate) fn eventfd_file(fd: OwnedFd) -> File {
    File::from(fd)
}

/// Human name of an IRQ index.
pub fn irq_index_name(index: u32) -> &'static str {
    match index {
        irq_index::INTX => "INTx",
        irq_index::MSI => "MSI",
        irq_index::MSIX => "MSI-X",
        irq_index::ERR => "ERR",
        irq_index::REQ => "REQ",
        _ => "unknown",
    }
}

//! Server-to-client DMA: the handler the bridge implements, and the window table that acts as
//! the IOMMU in front of it.
//!
//! The client maps bus-address windows with DMA_MAP *without* an fd, so the server can reach
//! them only with DMA_READ/DMA_WRITE messages. Before a request reaches the handler, the client
//! checks it against the windows it has mapped (and the window's READ/WRITE permission) and
//! against its own advertised `max_data_xfer_size`; refused requests get an error reply.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;

use bytes::Bytes;

use super::wire::dma_map_flags;
use crate::error::Error;

/// Why a DMA request failed; each maps to the errno of the error reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DmaError {
    /// The host answered Unsupported Request (or a bus error): EFAULT.
    #[error("unsupported request / bus error")]
    UnsupportedRequest,
    /// The host answered Completer Abort: EIO.
    #[error("completer abort")]
    CompleterAbort,
    /// Bus mastering is disabled in the device's command register: EPERM.
    #[error("bus master enable is clear")]
    BusMasterDisabled,
    /// The completion did not arrive in time: ETIMEDOUT.
    #[error("completion timeout")]
    CompletionTimeout,
    /// The link to the host is down: ENOTCONN.
    #[error("link to the host is down")]
    LinkDown,
    /// The range is not inside any mapped window (refused by the client): EFAULT.
    #[error("address range outside every mapped DMA window")]
    OutsideWindows,
    /// The window does not allow this direction (refused by the client): EPERM.
    #[error("the DMA window does not permit this access")]
    AccessDenied,
    /// `count` exceeds the client's advertised max_data_xfer_size (refused by the client): E2BIG.
    #[error("transfer larger than the advertised max_data_xfer_size")]
    TooLarge,
    /// The request carried fds, which DMA requests never do (refused by the client): EINVAL.
    #[error("DMA request carried file descriptors")]
    UnexpectedFds,
    /// The client's DMA queue is full (refused by the client, a flood): EBUSY.
    #[error("too many DMA requests waiting; the client's DMA queue is full")]
    Busy,
}

impl DmaError {
    /// The errno sent in the error reply.
    pub fn errno(self) -> u32 {
        let errno = match self {
            DmaError::UnsupportedRequest | DmaError::OutsideWindows => nix::errno::Errno::EFAULT,
            DmaError::CompleterAbort => nix::errno::Errno::EIO,
            DmaError::BusMasterDisabled | DmaError::AccessDenied => nix::errno::Errno::EPERM,
            DmaError::CompletionTimeout => nix::errno::Errno::ETIMEDOUT,
            DmaError::LinkDown => nix::errno::Errno::ENOTCONN,
            DmaError::TooLarge => nix::errno::Errno::E2BIG,
            DmaError::UnexpectedFds => nix::errno::Errno::EINVAL,
            DmaError::Busy => nix::errno::Errno::EBUSY,
        };
        errno as u32
    }
}

/// Serves the device's DMA. Implemented by the bridge (DMA_READ → memory-read TLPs, DMA_WRITE
/// → memory-write TLPs). Several calls may run concurrently; each returns when its transfer is
/// complete. `address` is a bus address inside a mapped window.
pub trait DmaHandler: Send + Sync + 'static {
    /// Reads `len` bytes of host memory; the result must be exactly `len` bytes long.
    fn dma_read(&self, address: u64, len: usize) -> impl Future<Output = Result<Vec<u8>, DmaError>> + Send;
    /// Writes `data` to host memory. `data` is a slice of the received DMA_WRITE message (no
    /// copy was made to hand it over).
    fn dma_write(&self, address: u64, data: Bytes) -> impl Future<Output = Result<(), DmaError>> + Send;
}

/// A handler for clients that never serve DMA (e.g. a probe): every request fails with
/// Unsupported Request (EFAULT).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDma;

impl DmaHandler for NoDma {
    async fn dma_read(&self, _address: u64, _len: usize) -> Result<Vec<u8>, DmaError> {
        Err(DmaError::UnsupportedRequest)
    }

    async fn dma_write(&self, _address: u64, _data: Bytes) -> Result<(), DmaError> {
        Err(DmaError::UnsupportedRequest)
    }
}

/// A bus-address range the device may reach with DMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaWindow {
    pub address: u64,
    pub size: u64,
    /// The device may read this window (DMA_READ; DMA_MAP flag READ).
    pub device_reads: bool,
    /// The device may write this window (DMA_WRITE; DMA_MAP flag WRITE).
    pub device_writes: bool,
}

impl DmaWindow {
    pub fn read_write(address: u64, size: u64) -> Self {
        Self { address, size, device_reads: true, device_writes: true }
    }

    /// One past the last address, or `None` if the window wraps the 64-bit space.
    pub fn end(&self) -> Option<u64> {
        self.address.checked_add(self.size)
    }

    /// DMA_MAP flag bits for this window.
    pub fn map_flags(&self) -> u32 {
        let mut flags = 0;
        if self.device_reads {
            flags |= dma_map_flags::READ;
        }
        if self.device_writes {
            flags |= dma_map_flags::WRITE;
        }
        flags
    }
}

impl fmt::Display for DmaWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{:#x}, +{:#x}) {}{}",
            self.address,
            self.size,
            if self.device_reads { "r" } else { "-" },
            if self.device_writes { "w" } else { "-" }
        )
    }
}

/// Which way a DMA request moves data, seen from the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaDirection {
    /// DMA_READ: the device reads host memory.
    DeviceRead,
    /// DMA_WRITE: the device writes host memory.
    DeviceWrite,
}

/// The windows currently mapped on the server, keyed by start address. Windows never overlap.
#[derive(Debug, Default, Clone)]
pub struct DmaWindowTable {
    windows: BTreeMap<u64, DmaWindow>,
}

impl DmaWindowTable {
    /// Validates a window for insertion: non-empty, not wrapping, no overlap with a mapped one.
    pub fn check_insert(&self, window: &DmaWindow) -> Result<(), Error> {
        if window.size == 0 {
            return Err(Error::InvalidArgument(format!("DMA window {window} is empty")));
        }
        let end = window.end().ok_or_else(|| {
            Error::InvalidArgument(format!("DMA window {window} wraps the 64-bit address space"))
        })?;
        if !window.device_reads && !window.device_writes {
            return Err(Error::InvalidArgument(format!(
                "DMA window {window} allows neither reads nor writes"
            )));
        }
        // The nearest window starting before `end` is the only one that can overlap.
        if let Some((_, existing)) = self.windows.range(..end).next_back() {
            if existing.end().is_none_or(|existing_end| existing_end > window.address) {
                return Err(Error::InvalidArgument(format!(
                    "DMA window {window} overlaps the mapped window {existing}"
                )));
            }
        }
        Ok(())
    }

    pub fn insert(&mut self, window: DmaWindow) -> Result<(), Error> {
        self.check_insert(&window)?;
        self.windows.insert(window.address, window);
        Ok(())
    }

    /// The mapped window with exactly this address and size.
    pub fn find_exact(&self, address: u64, size: u64) -> Option<DmaWindow> {
        self.windows.get(&address).filter(|w| w.size == size).copied()
    }

    pub fn remove(&mut self, address: u64) -> Option<DmaWindow> {
        self.windows.remove(&address)
    }

    pub fn len(&self) -> usize {
        self.windows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &DmaWindow> {
        self.windows.values()
    }

    /// Checks that `[address, address + len)` lies inside one window permitting `direction`.
    pub fn check_access(&self, address: u64, len: u64, direction: DmaDirection) -> Result<(), DmaError> {
        let end = address.checked_add(len).ok_or(DmaError::OutsideWindows)?;
        let (_, window) = self.windows.range(..=address).next_back().ok_or(DmaError::OutsideWindows)?;
        let window_end = window.end().ok_or(DmaError::OutsideWindows)?;
        if end > window_end || address < window.address {
            return Err(DmaError::OutsideWindows);
        }
        let allowed = match direction {
            DmaDirection::DeviceRead => window.device_reads,
            DmaDirection::DeviceWrite => window.device_writes,
        };
        if allowed { Ok(()) } else { Err(DmaError::AccessDenied) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_windows_are_refused() {
        let mut table = DmaWindowTable::default();
        table.insert(DmaWindow::read_write(0x1000, 0x1000)).unwrap();
        assert!(table.insert(DmaWindow::read_write(0x1800, 0x1000)).is_err());
        assert!(table.insert(DmaWindow::read_write(0x0800, 0x1000)).is_err());
        assert!(table.insert(DmaWindow::read_write(0x0, 0x10000)).is_err());
        table.insert(DmaWindow::read_write(0x2000, 0x1000)).unwrap();
        table.insert(DmaWindow::read_write(0x0, 0x1000)).unwrap();
        assert!(table.insert(DmaWindow::read_write(0x5000, 0)).is_err());
        assert!(table.insert(DmaWindow::read_write(u64::MAX, 2)).is_err());
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn access_must_fit_one_window_with_permission() {
        let mut table = DmaWindowTable::default();
        table.insert(DmaWindow::read_write(0x1000, 0x1000)).unwrap();
        table
            .insert(DmaWindow { address: 0x4000, size: 0x1000, device_reads: true, device_writes: false })
            .unwrap();
        assert_eq!(table.check_access(0x1000, 0x1000, DmaDirection::DeviceRead), Ok(()));
        assert_eq!(
            table.check_access(0x1800, 0x1000, DmaDirection::DeviceRead),
            Err(DmaError::OutsideWindows)
        );
        assert_eq!(table.check_access(0x0, 4, DmaDirection::DeviceRead), Err(DmaError::OutsideWindows));
        assert_eq!(table.check_access(u64::MAX, 4, DmaDirection::DeviceRead), Err(DmaError::OutsideWindows));
        assert_eq!(table.check_access(0x4000, 4, DmaDirection::DeviceWrite), Err(DmaError::AccessDenied));
        assert_eq!(table.check_access(0x4000, 4, DmaDirection::DeviceRead), Ok(()));
    }

    #[test]
    fn errnos_follow_the_documented_mapping() {
        assert_eq!(DmaError::UnsupportedRequest.errno(), 14);
        assert_eq!(DmaError::CompleterAbort.errno(), 5);
        assert_eq!(DmaError::BusMasterDisabled.errno(), 1);
        assert_eq!(DmaError::CompletionTimeout.errno(), 110);
        assert_eq!(DmaError::TooLarge.errno(), 7);
        assert_eq!(DmaError::OutsideWindows.errno(), 14);
        assert_eq!(DmaError::AccessDenied.errno(), 1);
        assert_eq!(DmaError::LinkDown.errno(), 107);
        assert_eq!(DmaError::UnexpectedFds.errno(), 22);
    }
}

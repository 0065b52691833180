//! The crate's error type.

use std::path::PathBuf;
use std::time::Duration;

use transports::vfio_user::wire::Command;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listening socket could not be set up.
    #[error("cannot listen on {path}: {reason}")]
    Listen { path: PathBuf, reason: String },

    /// A socket operation failed.
    #[error("vfio-user socket I/O failed while {context}: {source}")]
    Io { context: &'static str, source: std::io::Error },

    /// The vfio-user transport layer reported an error (framing, malformed header, ...).
    #[error(transparent)]
    Transport(#[from] transports::Error),

    /// The client broke the protocol; the connection is closed.
    #[error("vfio-user client broke the protocol: {0}")]
    Protocol(String),

    /// The configuration given to the server or the device model is unusable.
    #[error("invalid device configuration: {0}")]
    Config(String),

    /// A device DMA touched bus addresses outside every window the client mapped (or a window
    /// without the needed READ/WRITE permission).
    #[error("DMA of {len} bytes at {address:#x} is outside the client's mapped DMA windows")]
    DmaNotMapped { address: u64, len: u64 },

    /// The client answered a DMA_READ/DMA_WRITE with an error reply.
    #[error("client refused {command} at {address:#x}: errno {errno}")]
    DmaRejected { command: Command, address: u64, errno: u32 },

    /// The client did not answer a DMA request in time.
    #[error("client did not answer {command} at {address:#x} within {timeout:?}")]
    DmaTimeout { command: Command, address: u64, timeout: Duration },

    /// The client connection is gone (or was never there).
    #[error("no vfio-user client connected")]
    Disconnected,
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

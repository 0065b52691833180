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

    // --- sim link (`crate::link`) and reference root complex (`crate::rc`) ---
    /// A `sim://` / `sim-listen://` address that cannot be used.
    #[error("invalid sim link address {input:?}: {reason}")]
    SimAddress { input: String, reason: String },

    /// A sim-link socket operation failed.
    #[error("sim link I/O failed while {context}: {source}")]
    SimIo { context: String, source: std::io::Error },

    /// A sim-link frame could not be decoded; `code` is the ERROR code sent to the peer.
    #[error("malformed sim-link frame: {reason}")]
    SimFrame { code: u16, reason: String },

    /// The two sides' HELLO messages are incompatible.
    #[error("sim-link hello mismatch: {problems}")]
    HelloMismatch { problems: String },

    /// The peer sent an ERROR message and closed the link.
    #[error("sim-link peer reported error {code}: {message}")]
    SimPeerError { code: u16, message: String },

    /// A well-formed sim-link message that breaks the protocol at this point.
    #[error("sim-link protocol violation: {0}")]
    SimProtocol(String),

    /// A sim-link wait ran out of wall-clock time (a safety net against a hung peer).
    #[error("sim link: {what} did not happen within {timeout:?} of wall-clock time")]
    SimTimeout { what: String, timeout: std::time::Duration },

    /// The sim link is closed (orderly or by the peer going away).
    #[error("sim link closed: {0}")]
    SimClosed(String),

    /// An rc workload script does not parse.
    #[error("{file}:{line}: {message}")]
    Script { file: String, line: usize, message: String },

    /// A root-complex operation failed: enumeration, an expectation, a completion timeout, an
    /// unexpected completion status. `line` is the script line when one was running.
    #[error("{}{message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
    Rc { line: Option<usize>, message: String },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! The crate's error type.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::vfio_user::wire::Command;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Connecting to the server's socket failed.
    #[error("cannot connect to the vfio-user server socket {path}: {source}")]
    Connect { path: PathBuf, source: std::io::Error },

    /// A socket operation failed.
    #[error("vfio-user socket I/O failed while {context}: {source}")]
    Io { context: &'static str, source: std::io::Error },

    /// The server sent something that breaks the protocol; the connection is closed.
    #[error("malformed vfio-user message from the server: {0}")]
    Malformed(String),

    /// The server sent a command larger than the receive limit. Its body was read and
    /// discarded, so the stream is still framed: the command can be refused (E2BIG) and the
    /// connection goes on.
    #[error("{header}: command of {} bytes exceeds the {limit}-byte limit; its body was discarded", header.size)]
    OversizedCommand { header: crate::vfio_user::wire::HeaderRepr, limit: usize },

    /// The server answered VERSION with a version this client cannot speak.
    #[error(
        "vfio-user server replied with version {major}.{minor}; this client proposed 0.2 and accepts 0.0 to 0.2"
    )]
    UnsupportedVersion { major: u16, minor: u16 },

    /// The server's capabilities JSON is unusable (bad types, zero limits, inconsistent twin socket).
    #[error("vfio-user server capabilities rejected: {0}")]
    Capabilities(String),

    /// The server answered a command with an error reply.
    #[error("vfio-user {command} failed on the server: errno {errno} ({})", errno_text(*errno))]
    Server { command: Command, errno: u32 },

    /// No reply arrived in time; a reply arriving later is logged and dropped.
    #[error(
        "vfio-user {command} ({}) got no reply within {timeout:?}; raise ClientConfig::request_timeout if the device is slow",
        match id { Some(id) => format!("message id {id}"), None => "still queued, never sent".to_owned() }
    )]
    Timeout {
        command: Command,
        /// `None` when the request timed out before it got a message id (queue back-pressure).
        id: Option<u16>,
        timeout: Duration,
    },

    /// The connection is gone; every request pending at that moment failed with this.
    #[error("vfio-user connection is down: {0}")]
    Disconnected(DisconnectReason),

    /// The caller asked for something the protocol or the negotiated limits cannot express.
    #[error("invalid vfio-user request: {0}")]
    InvalidArgument(String),

    /// `dma_map`/`dma_unmap` while the client runs with `DmaMode::Disabled`.
    #[error("DMA is disabled by configuration (DmaMode::Disabled); no DMA_MAP is ever sent")]
    DmaDisabled,
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// `Client::close` was called, or every `Client` handle was dropped.
    ClosedByClient,
    /// The server closed its end of the socket (EOF).
    ServerClosed,
    /// A socket read or write failed.
    Io(String),
    /// The server sent a message that breaks the protocol.
    Malformed(String),
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::ClosedByClient => f.write_str("closed by the client"),
            DisconnectReason::ServerClosed => f.write_str("the server closed the connection"),
            DisconnectReason::Io(e) => write!(f, "socket error: {e}"),
            DisconnectReason::Malformed(e) => write!(f, "malformed message from the server: {e}"),
        }
    }
}

/// Human text for an errno received from the server.
pub fn errno_text(errno: u32) -> &'static str {
    match i32::try_from(errno) {
        Ok(raw) => nix::errno::Errno::from_raw(raw).desc(),
        Err(_) => "out of range",
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong opening or running an FPGA link or the emulator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A link argument (`serial:…`, `stream:…`, `nettlp:…`) that cannot be used.
    #[error("invalid FPGA link {spec:?}: {reason}")]
    Spec { spec: String, reason: String },

    /// The serial port could not be opened or configured.
    #[error("cannot open serial port {path}: {reason}")]
    Serial { path: String, reason: String },

    /// A device file could not be opened.
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },

    /// Some other I/O operation failed.
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },

    /// The emulator's configuration is unusable.
    #[error("invalid emulator setting: {0}")]
    Emulator(String),

    /// The reference root complex (hosted by the emulator) failed.
    #[error(transparent)]
    Rc(#[from] sim::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
}

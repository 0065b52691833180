//! The bridge crate's error type.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that stops the engine or `tlpbridge run`; each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A configuration value is out of range or inconsistent.
    #[error("invalid engine configuration: {0}")]
    InvalidConfig(String),

    /// The `--link` argument does not parse.
    #[error("invalid link {spec:?}: {reason}")]
    InvalidLinkSpec { spec: String, reason: String },

    /// The link kind is known but not part of this build.
    #[error("link kind `{kind}` is not available in this build (available: {available})")]
    LinkKindUnavailable { kind: String, available: String },

    /// Opening the link failed.
    #[error("cannot open link {spec}: {reason}")]
    LinkOpen { spec: String, reason: String },

    /// The server's socket did not appear or refused connections within the retry window.
    #[error(
        "cannot connect to the vfio-user server at {path} within {window:?}: {source}; check that the server is running and --server names its socket"
    )]
    ServerUnreachable { path: PathBuf, window: Duration, source: transports::Error },

    /// The server connected but a setup step failed.
    #[error("vfio-user server setup failed while {step}: {source}")]
    ServerSetup { step: String, source: transports::Error },

    /// The server does not describe a PCI device the bridge can present.
    #[error("the vfio-user device cannot be bridged: {0}")]
    UnsupportedDevice(String),

    /// The server closed the connection or broke the protocol while running.
    #[error("the vfio-user server connection ended: {0}")]
    ServerDisconnected(transports::DisconnectReason),

    /// The server's connection ended and no server came back at its path in time.
    #[error(
        "the vfio-user server connection ended ({reason}) and no server answered at {path} within {window:?}: {last_error}"
    )]
    ServerLost { reason: transports::DisconnectReason, path: PathBuf, window: Duration, last_error: String },

    /// The server that came back at the path presents a different device than the one the host
    /// enumerated.
    #[error(
        "the restarted vfio-user server presents a different device ({0}); restart the bridge so that the host enumerates it anew"
    )]
    ServerChanged(String),

    /// The link closed for good (its implementation stopped).
    #[error("the root-port link {0} closed")]
    LinkClosed(String),

    /// Setting up interrupt eventfds failed.
    #[error("interrupt setup failed: {0}")]
    Interrupts(String),

    /// A step of `tlpbridge bench` failed.
    #[error("benchmark step `{step}` failed: {reason}")]
    Bench { step: String, reason: String },

    /// `tlpbridge demo` cannot create its temporary directory.
    #[error("cannot create the demo's temporary directory under {dir}: {source}")]
    DemoTempDir { dir: PathBuf, source: std::io::Error },

    /// The demo's sample vfio-user device failed to start or did not stop cleanly.
    #[error("the sample device: {0}")]
    DemoDevice(String),

    /// The demo's sim link could not be set up (bind, accept, connect).
    #[error("the sim link: {0}")]
    DemoLink(#[source] sim::Error),

    /// The demo's reference root complex could not run.
    #[error("the root complex could not run: {0}")]
    DemoRootComplex(#[source] sim::Error),

    /// The capture file cannot be created (`tlpbridge run --capture`, `demo`, `pcap write`).
    #[error("cannot create capture file {path}: {source}; check the directory exists and is writable")]
    CaptureCreate { path: PathBuf, source: std::io::Error },

    /// Writing a record, the statistics block or the final flush of a capture file failed.
    #[error("writing capture file {path} failed: {detail}")]
    CaptureWrite { path: PathBuf, detail: String },

    /// A capture file to read cannot be opened.
    #[error("cannot open capture file {path}: {source}")]
    CaptureOpen { path: PathBuf, source: std::io::Error },

    /// A file to read is neither pcap nor pcapng.
    #[error("{path} is not a pcap or pcapng file: {detail}")]
    NotACapture { path: PathBuf, detail: String },

    /// A pcap or pcapng file whose blocks or records cannot be read (cut short, bad lengths).
    #[error("{path}: {detail}")]
    CaptureCorrupt { path: PathBuf, detail: String },

    /// A capture record whose pseudo-header cannot be decoded.
    #[error("{0}")]
    CaptureRecord(String),

    /// A `tlpbridge pcap show --filter` expression that does not parse.
    #[error("invalid filter {expr:?}: {reason}")]
    CaptureFilter { expr: String, reason: String },

    /// The capture's queue buffers cannot be allocated (`--pcap-queue-bytes`).
    #[error("cannot allocate the capture's queue, 2 × {bytes} bytes; give a smaller --pcap-queue-bytes")]
    CaptureMemory { bytes: usize },

    /// The capture writer thread could not start, was already finished, or panicked.
    #[error("capture writer thread: {0}")]
    CaptureThread(String),

    /// `tlpbridge demo` did not finish within its wall-clock limit.
    #[error("the demo did not finish within {limit:?} of wall-clock time; it was stuck {phase}")]
    DemoWatchdog { limit: Duration, phase: &'static str },
}

/// Result alias for the bridge crate.
pub type Result<T, E = BridgeError> = std::result::Result<T, E>;

//! Shared helpers for the end-to-end tests in `tests/tests/`.
//!
//! - [`peers`]: find and launch the real vfio-user peers (QEMU's `x-vfio-user-server`, libvfio-user's
//!   sample servers, usbvfiod) and the Python interpreter with `cocotbext-pcie`, installed by
//!   `.ci/install-peers`. A missing peer fails the test under `CI=true` and skips it otherwise.
//! - [`tlpbridge_bin`]: the path of an up-to-date `tlpbridge` binary for tests outside the
//!   `bridge` package.
//! - [`TestDir`]: a per-test temporary directory, short enough for UNIX socket paths.
//! - [`run_bounded`]: run a short command to completion with a timeout, output captured.
//! - [`Running`], [`spawn_logged`], [`free_port`], [`wait_listening`]: long-running child
//!   processes (killed and reaped on drop) with their output in a log file, and their TCP ports.
//! - [`bridge_counter`]: a counter from the line `tlpbridge run` prints when it stops.
//!
//! See `docs/peers.md` for how the peers are built and found.

pub mod peers;
mod process;
mod run_log;
mod temp_dir;
mod tlpbridge_bin;

pub use process::{CommandOutput, Running, free_port, run_bounded, spawn_logged, wait_listening};
pub use run_log::{bridge_counter, final_counters_line};
pub use temp_dir::TestDir;
pub use tlpbridge_bin::tlpbridge_bin;

use std::path::PathBuf;
use std::time::Duration;

/// Everything the test helpers can fail at, with what a person needs to fix it.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{peer} not installed: {reason}; run .ci/install-peers (as root) or set {env_var} to its path")]
    PeerNotInstalled { peer: &'static str, env_var: &'static str, reason: String },

    #[error("{env_var}={path} does not name an executable file")]
    BadOverride { env_var: &'static str, path: PathBuf },

    #[error("cannot read {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },

    #[error("{path}:{line}: expected KEY=/absolute/path, found {text:?}")]
    BadPeersEnv { path: PathBuf, line: usize, text: String },

    #[error("cannot create temporary directory: {0}")]
    TempDir(std::io::Error),

    #[error("socket path {path} is {len} bytes; UNIX sockets allow at most {max}")]
    SocketPathTooLong { path: PathBuf, len: usize, max: usize },

    #[error("cannot start {program}: {source}")]
    Spawn { program: PathBuf, source: std::io::Error },

    #[error("{peer} exited ({status}) before creating {socket}; its stderr:\n{stderr}")]
    ExitedEarly { peer: &'static str, status: std::process::ExitStatus, socket: PathBuf, stderr: String },

    #[error("{peer} did not create {socket} within {timeout:?}; its stderr:\n{stderr}")]
    SocketTimeout { peer: &'static str, socket: PathBuf, timeout: Duration, stderr: String },

    #[error("waiting for {what}: {source}")]
    Wait { what: String, source: std::io::Error },

    #[error("{what} did not finish within {timeout:?}")]
    Timeout { what: String, timeout: Duration },

    #[error("{what} failed ({status}):\n{output}")]
    CommandFailed { what: String, status: std::process::ExitStatus, output: String },

    #[error("cannot locate the cargo target directory from test executable {exe}: {reason}")]
    TargetDir { exe: PathBuf, reason: String },

    #[error("cargo build printed no executable for the tlpbridge binary:\n{output}")]
    NoBridgeExecutable { output: String },

    #[error("cannot create log file {path}: {source}")]
    CreateLog { path: PathBuf, source: std::io::Error },

    #[error("cannot find a free TCP port on 127.0.0.1: {0}")]
    FreePort(std::io::Error),

    #[error("nothing listened on 127.0.0.1:{port} within {timeout:?}; the listener's log:\n{log}")]
    NotListening { port: u16, timeout: Duration, log: String },

    #[error("{path} has no VmRSS line (the process has exited?)")]
    NoRss { path: PathBuf },
}

/// True when running under CI (`CI=true`), where every peer must be installed.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value.eq_ignore_ascii_case("true") || value == "1")
}

//! The real vfio-user peers the end-to-end tests talk to, as child processes.
//!
//! `.ci/install-peers` builds them into a cache and writes `peers.env` there (`KEY=/abs/path`
//! lines). A peer is found, first match wins:
//! 1. its own environment variable ([`Peer::env_var`]), which must then name an executable;
//! 2. the same key in `$TLPBRIDGE_PEERS_DIR/peers.env` (default `/var/cache/tlpbridge-peers`).
//!
//! A missing peer fails the test under `CI=true` (CI installs every peer) and otherwise prints a
//! `SKIP:` line to stderr so the test can return early; see [`find`].
//!
//! A launched peer ([`RunningPeer`]) listens on a UNIX socket in the test's [`TestDir`], has its
//! stdout and stderr captured to a file there, and is killed and reaped when dropped.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::process::{POLL_INTERVAL, read_log, run_bounded};
use crate::{HarnessError, TestDir, in_ci};

/// Where `.ci/install-peers` caches the peers unless `TLPBRIDGE_PEERS_DIR` says otherwise.
pub const DEFAULT_PEERS_DIR: &str = "/var/cache/tlpbridge-peers";

/// How long a peer gets to create its socket. Generous: CI runs tests in parallel on 2 cores.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the Python import check may take.
const PYTHON_CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// One program `.ci/install-peers` provides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// libvfio-user's `samples/server`: a PCI device with a BAR0 and a DMA-capable BAR1.
    LibvfioUserServer,
    /// libvfio-user's `samples/gpio-pci-idio-16`: a 16-line GPIO card with one I/O BAR.
    LibvfioUserGpio,
    /// `qemu-system-x86_64` with the `x-remote` machine and `x-vfio-user-server` object.
    Qemu,
    /// usbvfiod, a Rust vfio-user server emulating an xHCI controller.
    Usbvfiod,
    /// A Python 3 interpreter that can `import cocotbext.pcie.core.tlp`.
    Python,
}

impl Peer {
    pub const ALL: [Peer; 5] =
        [Peer::LibvfioUserServer, Peer::LibvfioUserGpio, Peer::Qemu, Peer::Usbvfiod, Peer::Python];

    pub fn name(self) -> &'static str {
        match self {
            Peer::LibvfioUserServer => "libvfio-user sample server",
            Peer::LibvfioUserGpio => "libvfio-user gpio-pci-idio-16 sample",
            Peer::Qemu => "QEMU vfio-user server (qemu-system-x86_64)",
            Peer::Usbvfiod => "usbvfiod",
            Peer::Python => "python3 with cocotbext-pcie",
        }
    }

    /// The environment variable that overrides the path, also the key in `peers.env`.
    pub fn env_var(self) -> &'static str {
        match self {
            Peer::LibvfioUserServer => "TLPBRIDGE_LIBVFIO_USER_SERVER",
            Peer::LibvfioUserGpio => "TLPBRIDGE_LIBVFIO_USER_GPIO",
            Peer::Qemu => "TLPBRIDGE_QEMU",
            Peer::Usbvfiod => "TLPBRIDGE_USBVFIOD",
            Peer::Python => "TLPBRIDGE_PYTHON",
        }
    }

    /// The peer's executable, from its environment variable or `peers.env`.
    pub fn locate(self) -> Result<PathBuf, HarnessError> {
        let path = match std::env::var_os(self.env_var()) {
            Some(value) if !value.is_empty() => {
                let path = PathBuf::from(value);
                if !is_executable(&path) {
                    return Err(HarnessError::BadOverride { env_var: self.env_var(), path });
                }
                path
            }
            _ => self.locate_in_peers_env()?,
        };
        if self == Peer::Python {
            check_python(&path)?;
        }
        Ok(path)
    }

    fn locate_in_peers_env(self) -> Result<PathBuf, HarnessError> {
        let env_file = peers_env_path();
        let not_installed = |reason: String| HarnessError::PeerNotInstalled {
            peer: self.name(),
            env_var: self.env_var(),
            reason,
        };
        if !env_file.exists() {
            return Err(not_installed(format!("{} does not exist", env_file.display())));
        }
        let entries = read_peers_env(&env_file)?;
        let Some((_, path)) = entries.into_iter().find(|(key, _)| key == self.env_var()) else {
            return Err(not_installed(format!("{} has no {}", env_file.display(), self.env_var())));
        };
        if !is_executable(&path) {
            return Err(not_installed(format!(
                "{} names {}, which is not an executable file",
                env_file.display(),
                path.display()
            )));
        }
        Ok(path)
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The cache directory `.ci/install-peers` fills.
pub fn peers_dir() -> PathBuf {
    match std::env::var_os("TLPBRIDGE_PEERS_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_PEERS_DIR),
    }
}

/// `peers.env` in [`peers_dir`].
pub fn peers_env_path() -> PathBuf {
    peers_dir().join("peers.env")
}

/// Parses `peers.env`: `KEY=/absolute/path` lines; blank lines and `#` comments are ignored.
/// Keys whose value is not an absolute path (such as version records) are skipped.
pub fn read_peers_env(path: &Path) -> Result<Vec<(String, PathBuf)>, HarnessError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| HarnessError::ReadFile { path: path.to_owned(), source })?;
    let mut entries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(HarnessError::BadPeersEnv {
                path: path.to_owned(),
                line: index + 1,
                text: line.to_owned(),
            });
        };
        if value.starts_with('/') {
            entries.push((key.trim().to_owned(), PathBuf::from(value.trim())));
        }
    }
    Ok(entries)
}

/// The peer's path, or `None` after a loud `SKIP:` line when it is not installed and not under
/// CI. Under `CI=true` a missing peer panics, failing the test: CI installs every peer.
pub fn find(peer: Peer) -> Option<PathBuf> {
    match peer.locate() {
        Ok(path) => Some(path),
        Err(err) if in_ci() => panic!("CI=true but {peer} is unavailable: {err}"),
        Err(err) => {
            // Straight to the process's stderr: `eprintln!` would be captured by the test harness
            // and hidden for a test that returns early (passes).
            let line = format!("SKIP: {peer} not installed; run .ci/install-peers ({err})\n");
            let _ = std::io::stderr().write_all(line.as_bytes());
            None
        }
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

fn check_python(python: &Path) -> Result<(), HarnessError> {
    let mut command = Command::new(python);
    command.args(["-c", "import cocotbext.pcie.core.tlp"]);
    let what = format!("{} -c 'import cocotbext.pcie.core.tlp'", python.display());
    let out = run_bounded(command, &what, PYTHON_CHECK_TIMEOUT)?;
    if !out.status.success() {
        return Err(HarnessError::PeerNotInstalled {
            peer: Peer::Python.name(),
            env_var: Peer::Python.env_var(),
            reason: format!("{what} failed ({}): {}", out.status, out.output.trim()),
        });
    }
    Ok(())
}

/// A PCI device model QEMU's vfio-user server can serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QemuDevice {
    /// QEMU's educational device: BAR0 with ID/liveness/factorial registers, DMA, MSI.
    Edu,
    /// An NVMe controller without namespaces: BAR0 registers, MSI-X.
    Nvme,
    /// Intel 82574L NIC without a network backend: memory, flash and I/O BARs, MSI-X.
    E1000e,
    /// QEMU's pci-testdev: BAR0 memory and BAR1 I/O test registers.
    PciTestdev,
}

impl QemuDevice {
    pub const ALL: [QemuDevice; 4] =
        [QemuDevice::Edu, QemuDevice::Nvme, QemuDevice::E1000e, QemuDevice::PciTestdev];

    /// The `-device` argument, with the id `dev0` the server object refers to.
    pub fn device_arg(self) -> &'static str {
        match self {
            QemuDevice::Edu => "edu,id=dev0",
            QemuDevice::Nvme => "nvme,id=dev0,serial=tlpbridge0",
            // Debian's QEMU ships no option ROM blobs; an empty romfile disables the ROM BAR.
            QemuDevice::E1000e => "e1000e,id=dev0,romfile=",
            QemuDevice::PciTestdev => "pci-testdev,id=dev0",
        }
    }

    /// A short name for socket and log files.
    pub fn short_name(self) -> &'static str {
        match self {
            QemuDevice::Edu => "edu",
            QemuDevice::Nvme => "nvme",
            QemuDevice::E1000e => "e1000e",
            QemuDevice::PciTestdev => "pci-testdev",
        }
    }
}

/// The arguments that make `qemu-system-x86_64` serve `device` on `socket` and exit when the
/// vfio-user client disconnects.
pub fn qemu_args(device: QemuDevice, socket: &Path) -> Vec<OsString> {
    // QEMU 7.2 takes the `socket` SocketAddress flattened: `type=unix,path=…`. The default
    // accelerator (TCG) is kept: `-accel qtest` would freeze the virtual clock that edu's DMA
    // timer and e1000e's timers run on. The x-remote machine has no CPUs, so nothing spins.
    let mut server = OsString::from("x-vfio-user-server,id=vfu0,type=unix,path=");
    server.push(socket);
    server.push(",device=dev0");
    [
        "-machine",
        "x-remote,vfio-user=on,auto-shutdown=on",
        "-nodefaults",
        "-display",
        "none",
        "-device",
        device.device_arg(),
        "-object",
    ]
    .into_iter()
    .map(OsString::from)
    .chain([server])
    .collect()
}

/// A peer process serving vfio-user on [`RunningPeer::socket`]; killed and reaped on drop.
#[derive(Debug)]
pub struct RunningPeer {
    peer: Peer,
    child: Child,
    socket: PathBuf,
    log_path: PathBuf,
    log: File,
}

impl RunningPeer {
    pub fn peer(&self) -> Peer {
        self.peer
    }

    /// The UNIX socket a vfio-user client connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file holding the peer's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the peer printed so far (stdout and stderr, interleaved).
    pub fn output(&self) -> String {
        read_log(&self.log)
    }

    /// `Some(status)` once the peer has exited.
    pub fn exit_status(&mut self) -> Result<Option<ExitStatus>, HarnessError> {
        self.child
            .try_wait()
            .map_err(|source| HarnessError::Wait { what: self.peer.name().to_owned(), source })
    }

    pub fn is_running(&mut self) -> Result<bool, HarnessError> {
        Ok(self.exit_status()?.is_none())
    }

    /// Waits up to `timeout` for the peer to exit on its own (for example after the client
    /// disconnects from a QEMU started with auto-shutdown), killing it if it does not.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, HarnessError> {
        crate::process::wait_bounded(&mut self.child, self.peer.name(), timeout)
    }
}

impl Drop for RunningPeer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGKILL cannot be caught, so the reaping wait below returns promptly.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `program args…`, which must create the UNIX socket `socket`, with its output captured
/// in `<dir>/<log_name>.log`, and waits up to `timeout` for the socket to appear.
pub fn launch(
    peer: Peer,
    program: &Path,
    args: &[OsString],
    socket: &Path,
    dir: &TestDir,
    log_name: &str,
    timeout: Duration,
) -> Result<RunningPeer, HarnessError> {
    let log_path = dir.join(format!("{log_name}.log"));
    let io_err = |source| HarnessError::ReadFile { path: log_path.clone(), source };
    let log = File::options().create(true).truncate(true).read(true).write(true).open(&log_path);
    let log = log.map_err(io_err)?;
    let stdout = log.try_clone().map_err(io_err)?;
    let stderr = log.try_clone().map_err(io_err)?;
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map_err(|source| HarnessError::Spawn { program: program.to_owned(), source })?;
    let mut running = RunningPeer { peer, child, socket: socket.to_owned(), log_path, log };
    wait_for_socket(&mut running, timeout)?;
    Ok(running)
}

fn wait_for_socket(running: &mut RunningPeer, timeout: Duration) -> Result<(), HarnessError> {
    let deadline = Instant::now() + timeout;
    loop {
        if std::fs::symlink_metadata(&running.socket).is_ok_and(|meta| meta.file_type().is_socket()) {
            return Ok(());
        }
        if let Some(status) = running.exit_status()? {
            return Err(HarnessError::ExitedEarly {
                peer: running.peer.name(),
                status,
                socket: running.socket.clone(),
                stderr: running.output(),
            });
        }
        if Instant::now() >= deadline {
            // Dropping `running` kills the peer; collect its output first.
            return Err(HarnessError::SocketTimeout {
                peer: running.peer.name(),
                socket: running.socket.clone(),
                timeout,
                stderr: running.output(),
            });
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Finds `peer` (skip/fail policy of [`find`]) and launches it on `<dir>/<name>.sock`.
/// Panics, failing the test, if the peer is installed but does not start.
fn start(
    peer: Peer,
    dir: &TestDir,
    name: &str,
    args: impl FnOnce(&Path) -> Vec<OsString>,
) -> Option<RunningPeer> {
    let program = find(peer)?;
    let socket = match dir.socket_path(&format!("{name}.sock")) {
        Ok(socket) => socket,
        Err(err) => panic!("{err}"),
    };
    match launch(peer, &program, &args(&socket), &socket, dir, name, DEFAULT_START_TIMEOUT) {
        Ok(running) => Some(running),
        Err(err) => panic!("starting {peer} ({}): {err}", program.display()),
    }
}

/// libvfio-user's sample server (verbose logging) on `<dir>/libvfio-user-server.sock`.
pub fn start_libvfio_user_server(dir: &TestDir) -> Option<RunningPeer> {
    start(Peer::LibvfioUserServer, dir, "libvfio-user-server", |socket| vec!["-v".into(), socket.into()])
}

/// libvfio-user's gpio-pci-idio-16 sample (verbose logging) on `<dir>/libvfio-user-gpio.sock`.
pub fn start_libvfio_user_gpio(dir: &TestDir) -> Option<RunningPeer> {
    start(Peer::LibvfioUserGpio, dir, "libvfio-user-gpio", |socket| vec!["-v".into(), socket.into()])
}

/// QEMU serving `device` on `<dir>/qemu-<device>.sock`; it exits when the client disconnects.
pub fn start_qemu(dir: &TestDir, device: QemuDevice) -> Option<RunningPeer> {
    let name = format!("qemu-{}", device.short_name());
    start(Peer::Qemu, dir, &name, |socket| qemu_args(device, socket))
}

/// usbvfiod (no USB devices attached) on `<dir>/usbvfiod.sock`.
pub fn start_usbvfiod(dir: &TestDir) -> Option<RunningPeer> {
    start(Peer::Usbvfiod, dir, "usbvfiod", |socket| {
        vec!["--no-color".into(), "-v".into(), "--socket-path".into(), socket.into()]
    })
}

/// The Python interpreter with `cocotbext-pcie`, under the skip/fail policy of [`find`].
pub fn python() -> Option<PathBuf> {
    find(Peer::Python)
}

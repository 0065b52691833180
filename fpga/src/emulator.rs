//! The FPGA half of a link, in software: for tests and for users without a board.
//!
//! [`PtyPort`] makes a pseudo-terminal pair whose slave the bridge opens as its serial port
//! (`serial:/dev/pts/N`, or a stable symlink to it); [`start_fpga_side`] runs the same data-link
//! layer the bridge runs, with a fault injector between it and the wire, and hands the root
//! complex an [`FpgaPort`] — the [`RootPortIo`] that [`sim::rc::RootComplex`] runs over. Closing
//! the pty pair (dropping the [`PtyPort`] and the [`FpgaPort`]) is an unplugged cable.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sim::rc::{RcConfig, Report, RootComplex, RootPortIo, Script, run_script};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use transports::link::{LinkClock, LinkEvent, LinkInput};

use crate::dll::DllConfig;
use crate::driver::{self, Device, DriverCommand, DriverConfig, FdIo, LinkStatus, UserChannels};
use crate::error::{Error, Result};
use crate::faults::{FaultConfig, FaultCounters, FaultReport};

/// How the emulated FPGA behaves.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// Its data-link layer: credits (receive buffers), keep-alive, replay timeout.
    pub dll: DllConfig,
    pub faults: FaultConfig,
    /// Stamp TLP frames with the emulator's nanosecond counter (as an FPGA with a free-running
    /// counter would).
    pub timestamps: bool,
    /// The hosted root complex. Its cycle is `ps_per_cycle` of wall time.
    pub rc: RcConfig,
    /// Longest wait to hand one TLP to a link that is down or out of credits.
    pub send_timeout: Duration,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            dll: DllConfig::new(8),
            faults: FaultConfig::default(),
            timestamps: false,
            rc: emulator_rc_config(),
            send_timeout: Duration::from_secs(10),
        }
    }
}

/// The root complex's settings for wall-clock operation: 1 ns cycles, 1 ms steps (each step
/// ends early when a TLP arrives), and a completion timeout of 5 s so that replays on a faulty
/// line do not look like lost completions.
pub fn emulator_rc_config() -> RcConfig {
    RcConfig {
        ps_per_cycle: 1000,
        step_cycles: 1_000_000,
        completion_timeout: 5_000_000_000,
        ..RcConfig::default()
    }
}

/// A pseudo-terminal pair; the bridge opens [`PtyPort::path`].
pub struct PtyPort {
    master: Option<File>,
    /// Held open so that the master never reads EIO while the bridge has the slave closed.
    _slave: OwnedFd,
    slave_path: PathBuf,
    link: Option<PathBuf>,
}

impl PtyPort {
    /// Opens a pty pair in raw mode. With `link`, a symlink at that path points to the slave
    /// (replaced atomically), so that a bridge can reopen the same path after a replug.
    pub fn open(link: Option<&Path>) -> Result<Self> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let pty =
            nix::pty::openpty(None, None).map_err(|e| Error::io("opening a pseudo-terminal", e.into()))?;
        let slave_path =
            nix::unistd::ttyname(&pty.slave).map_err(|e| Error::io("naming the pty slave", e.into()))?;
        let mut attrs = tcgetattr(&pty.slave).map_err(|e| Error::io("reading pty attributes", e.into()))?;
        cfmakeraw(&mut attrs);
        tcsetattr(&pty.slave, SetArg::TCSANOW, &attrs)
            .map_err(|e| Error::io("setting the pty to raw mode", e.into()))?;
        if let Some(link) = link {
            let tmp = link.with_extension("tmp-link");
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&slave_path, &tmp)
                .and_then(|()| std::fs::rename(&tmp, link))
                .map_err(|e| {
                    Error::io(format!("linking {} to {}", link.display(), slave_path.display()), e)
                })?;
        }
        Ok(PtyPort {
            master: Some(File::from(pty.master)),
            _slave: pty.slave,
            slave_path,
            link: link.map(Path::to_path_buf),
        })
    }

    /// The path the bridge should open (the symlink if there is one).
    pub fn path(&self) -> &Path {
        self.link.as_deref().unwrap_or(&self.slave_path)
    }

    pub fn slave_path(&self) -> &Path {
        &self.slave_path
    }

    /// The bridge's `--link` argument for this port.
    pub fn link_spec(&self) -> String {
        format!("serial:{}", self.path().display())
    }

    /// The master side as the emulator's byte device (once).
    pub fn take_device(&mut self) -> Result<Device> {
        let master =
            self.master.take().ok_or_else(|| Error::Emulator("the pty master was already taken".into()))?;
        let io = FdIo::new(master).map_err(|e| Error::io("driving the pty master", e))?;
        let (reader, writer) = tokio::io::split(io);
        Ok(Device {
            reader: Box::new(reader),
            writer: Box::new(writer),
            name: self.slave_path.display().to_string(),
        })
    }
}

/// The FPGA side's link as the root complex sees it, plus its counters.
pub struct FpgaPort {
    rx: mpsc::Receiver<LinkInput>,
    tx: mpsc::Sender<Vec<u8>>,
    start: Instant,
    ps_per_cycle: u32,
    send_timeout: Duration,
    arrived: VecDeque<Vec<u8>>,
    /// Link events seen, in order.
    pub events: Vec<LinkEvent>,
    status: watch::Receiver<LinkStatus>,
    faults: Arc<FaultCounters>,
    /// Requests to the FPGA side's driver (none over NetTLP, which has no link state).
    commands: Option<mpsc::Sender<DriverCommand>>,
    task: Option<JoinHandle<()>>,
    /// A link whose tasks this port keeps alive (NetTLP).
    _link: Option<transports::link::Link>,
}

impl Drop for FpgaPort {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl FpgaPort {
    pub fn status(&self) -> LinkStatus {
        self.status.borrow().clone()
    }

    pub fn status_receiver(&self) -> watch::Receiver<LinkStatus> {
        self.status.clone()
    }

    pub fn faults(&self) -> FaultReport {
        self.faults.snapshot()
    }

    /// Waits (up to `timeout`) until the link is up.
    pub async fn wait_up(&mut self, timeout: Duration) -> Result<()> {
        let mut status = self.status.clone();
        tokio::time::timeout(timeout, status.wait_for(|s| s.up))
            .await
            .map_err(|_| Error::Emulator(format!("the link did not come up within {timeout:?}")))?
            .map_err(|_| Error::Emulator("the emulator's link task ended".into()))?;
        Ok(())
    }

    /// Signals a hot reset (secondary bus reset) to the bridge, as a root port does when
    /// software sets Secondary Bus Reset in its Bridge Control register: the link goes down and
    /// comes back (`docs/fpga-link.md` section 3), the bridge's engine gets
    /// [`LinkEvent::HotReset`] and resets the device. Returns once the link is up again (within
    /// `timeout`); TLPs the root complex had in flight are lost, as on a real link.
    pub async fn hot_reset(&mut self, timeout: Duration) -> Result<()> {
        let commands = self.commands.as_ref().ok_or_else(|| {
            Error::Emulator("this link has no link state to reset (NetTLP): hot reset unsupported".into())
        })?;
        let ended = || Error::Emulator("the emulator's link task ended".into());
        let mut status = self.status.clone();
        let ups_before = status.borrow_and_update().stats.links_up;
        commands.send(DriverCommand::HotReset).await.map_err(|_| ended())?;
        let deadline = Instant::now() + timeout;
        loop {
            if status.borrow_and_update().up && status.borrow().stats.links_up > ups_before {
                return Ok(());
            }
            // The driver reports the link up only once this port has taken the Down before it.
            tokio::select! {
                input = self.rx.recv() => match input {
                    Some(LinkInput::Tlp(t)) => self.arrived.push_back(Vec::from(t.bytes)),
                    Some(LinkInput::Event { event, .. }) => {
                        if matches!(event, LinkEvent::Down | LinkEvent::HotReset) {
                            // Sent before the reset: nothing of it survives a hot reset.
                            self.arrived.clear();
                        }
                        self.events.push(event);
                    }
                    None => return Err(ended()),
                },
                changed = status.changed() => changed.map_err(|_| ended())?,
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Error::Emulator(format!(
                        "the link did not come back from the hot reset within {timeout:?}"
                    )));
                }
            }
        }
    }

    /// Takes the next TLP, waiting up to `timeout`.
    pub async fn recv_tlp(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        if let Some(t) = self.arrived.pop_front() {
            return Some(t);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(LinkInput::Tlp(t))) => return Some(Vec::from(t.bytes)),
                Ok(Some(LinkInput::Event { event, .. })) => self.events.push(event),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    fn cycle_now(&self) -> u64 {
        let ps = self.start.elapsed().as_nanos().saturating_mul(1000);
        u64::try_from(ps / u128::from(self.ps_per_cycle.max(1))).unwrap_or(u64::MAX)
    }

    fn closed() -> sim::Error {
        sim::Error::SimClosed("the emulator's link task ended".into())
    }
}

impl RootPortIo for FpgaPort {
    fn now(&self) -> u64 {
        self.cycle_now()
    }

    async fn send_tlp(&mut self, bytes: Vec<u8>) -> sim::Result<()> {
        let timeout = self.send_timeout;
        match tokio::time::timeout(timeout, self.tx.send(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Self::closed()),
            Err(_) => Err(sim::Error::SimTimeout { what: "the FPGA link accepting a TLP".into(), timeout }),
        }
    }

    fn try_recv(&mut self) -> sim::Result<Option<Vec<u8>>> {
        if let Some(t) = self.arrived.pop_front() {
            return Ok(Some(t));
        }
        loop {
            match self.rx.try_recv() {
                Ok(LinkInput::Tlp(t)) => return Ok(Some(Vec::from(t.bytes))),
                Ok(LinkInput::Event { event, .. }) => self.events.push(event),
                Err(TryRecvError::Empty) => return Ok(None),
                Err(TryRecvError::Disconnected) => return Err(Self::closed()),
            }
        }
    }

    /// Sleeps until wall time reaches `cycle`, or until a TLP arrives (so the root complex
    /// answers at once instead of at the end of its step).
    async fn advance_to(&mut self, cycle: u64) -> sim::Result<()> {
        if !self.arrived.is_empty() {
            return Ok(());
        }
        let ns = u128::from(cycle).saturating_mul(u128::from(self.ps_per_cycle)) / 1000;
        let deadline = self.start + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX / 2));
        loop {
            tokio::select! {
                input = self.rx.recv() => match input {
                    Some(LinkInput::Tlp(t)) => {
                        self.arrived.push_back(Vec::from(t.bytes));
                        return Ok(());
                    }
                    Some(LinkInput::Event { event, .. }) => self.events.push(event),
                    None => return Err(Self::closed()),
                },
                _ = tokio::time::sleep_until(deadline) => return Ok(()),
            }
        }
    }

    fn lockstep(&self) -> bool {
        false
    }
}

/// Starts the FPGA side's data-link layer on `device` (no reopening: the emulator owns its end).
pub fn start_fpga_side(device: Device, config: &EmulatorConfig) -> FpgaPort {
    // One slot each way: the FPGA's buffering is its credits, not a deep software queue.
    let (to_user, rx) = mpsc::channel(1);
    let (tx, from_user) = mpsc::channel(1);
    let (status_tx, status) = watch::channel(LinkStatus::default());
    let faults = Arc::new(FaultCounters::default());
    let mut driver_config = DriverConfig::new(config.dll.clone());
    driver_config.faults = config.faults.clone();
    driver_config.send_timestamps = config.timestamps;
    if config.timestamps {
        driver_config.dll.hello.flags |= crate::framing::field::flags::TIMESTAMPS;
    }
    let (commands, commands_rx) = mpsc::channel(4);
    let user = UserChannels { to_user, from_user, clock: LinkClock::wall(), commands: Some(commands_rx) };
    let task = tokio::spawn(driver::run(device, None, driver_config, user, status_tx, faults.clone()));
    FpgaPort {
        rx,
        tx,
        start: Instant::now(),
        ps_per_cycle: config.rc.ps_per_cycle,
        send_timeout: config.send_timeout,
        arrived: VecDeque::new(),
        events: Vec::new(),
        status,
        faults,
        commands: Some(commands),
        task: Some(task),
        _link: None,
    }
}

/// The FPGA side over an already open link (the NetTLP emulator: the same UDP link the bridge
/// uses, pointed the other way). No faults are injected.
pub fn fpga_side_over_link(
    mut link: transports::link::Link,
    status: watch::Receiver<LinkStatus>,
    config: &EmulatorConfig,
) -> FpgaPort {
    let (_closed, placeholder) = mpsc::channel(1);
    let rx = std::mem::replace(&mut link.rx, placeholder);
    FpgaPort {
        rx,
        tx: link.tx.clone(),
        start: Instant::now(),
        ps_per_cycle: config.rc.ps_per_cycle,
        send_timeout: config.send_timeout,
        arrived: VecDeque::new(),
        events: Vec::new(),
        status,
        faults: Arc::new(FaultCounters::default()),
        commands: None,
        task: None,
        _link: Some(link),
    }
}

/// What one emulator run did.
#[derive(Clone, Debug)]
pub struct EmulatorReport {
    pub rc: Report,
    pub link: LinkStatus,
    pub faults: FaultReport,
}

impl std::fmt::Display for EmulatorReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", self.rc)?;
        let s = &self.link.stats;
        writeln!(
            f,
            "link: {} TLPs sent, {} received; {} frames sent ({} bytes), {} received ({} bytes)",
            s.tlps_sent, s.tlps_delivered, s.frames_sent, s.bytes_sent, s.frames_received, s.bytes_received
        )?;
        writeln!(
            f,
            "link recovery: {} retransmissions, {} replay timeouts, {} NAKs sent, {} NAKs received, {} bad frames, {} duplicates, {} out of order, {} overruns, {} times up, {} times down ({} hot resets)",
            s.retransmissions,
            s.replay_timeouts,
            s.naks_sent,
            s.naks_received,
            s.bad_frames,
            s.duplicates,
            s.out_of_order,
            s.overruns,
            s.links_up,
            s.links_down,
            self.link.hot_resets
        )?;
        write!(
            f,
            "faults injected: {} bits flipped, {} bytes dropped, {} frames dropped, {} frames delayed",
            self.faults.bits_flipped,
            self.faults.bytes_dropped,
            self.faults.frames_dropped,
            self.faults.frames_delayed
        )
    }
}

/// Waits for the link, enumerates and runs `script` with the reference root complex.
pub async fn run_rc(
    mut port: FpgaPort,
    config: &EmulatorConfig,
    script: &Script,
    up_timeout: Duration,
) -> Result<(EmulatorReport, FpgaPort)> {
    port.wait_up(up_timeout).await?;
    let mut complex = RootComplex::new(port, config.rc.clone())?;
    let rc = run_script(&mut complex, script).await;
    let port = complex.into_io();
    let report = EmulatorReport { rc, link: port.status(), faults: port.faults() };
    Ok((report, port))
}

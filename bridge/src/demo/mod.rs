//! `tlpbridge demo`: the sample vfio-user device, the bridge engine and the reference root
//! complex in one process, on one tokio runtime, running a workload script over a real TCP sim
//! link and a real UNIX vfio-user socket (see `docs/demo.md`).
//!
//! Every TLP crossing the link is captured (to `--pcap FILE` or a temporary file); the
//! transcript and the latencies are read back from that capture, so what the demo prints is what
//! crossed the link, stamped with simulated time.

mod transcript;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use sim::device::{DmaEngine, DmaEngineConfig, ServerConfig};
use sim::link::wire::hello_flags;
use sim::link::{BridgeConfig, HelloParams, SimListener, SimMode, SimulatorConfig, SimulatorEnd};
use sim::rc::{RcConfig, Report, RootComplex, Script};
use tlp::split::LinkParams;
use tokio::task::JoinHandle;

use crate::capture::{Capture, CaptureConfig, CaptureSummary, CaptureWriter};
use crate::engine::counters::TLP_KINDS;
use crate::engine::{BridgeError, CountersSnapshot, Engine, EngineConfig, ServerEndpoint};

pub use transcript::{Latencies, LatencyRange, Transcript, TranscriptLine};

/// The built-in workload: enumerate, read the ID register, DMA 4 KiB from host memory to host
/// memory through the sample card, check the bytes, wait for the MSI.
pub const BUILTIN_SCRIPT: &str = include_str!("demo.rcs");
/// The name the built-in script's parse errors and step lines use.
pub const BUILTIN_SCRIPT_NAME: &str = "demo.rcs";

/// Picoseconds per simulated cycle (the link's tick): 1 ns.
const PS_PER_CYCLE: u32 = 1000;
/// Free-running mode: wall-clock time the root complex sleeps per time step (100 cycles), so
/// simulated time runs about 100 times slower than wall time and the device keeps up.
const FREE_RUNNING_PACE: Duration = Duration::from_micros(10);
/// How long the sample device's server may take to stop after the demo.
const DEVICE_STOP_GRACE: Duration = Duration::from_secs(2);

/// What to run and how.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub script: Script,
    pub mode: SimMode,
    /// Keep the capture here; without it the capture lives in the temporary directory.
    pub pcap: Option<PathBuf>,
    /// Wall-clock limit for the whole demo.
    pub watchdog: Duration,
}

/// One check the demo judged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// The demo's result: the root complex's report, the bridge's counters, the transcript read
/// back from the capture, and the checks.
#[derive(Clone, Debug, Serialize)]
pub struct DemoOutcome {
    pub passed: bool,
    pub mode: &'static str,
    pub checks: Vec<Check>,
    pub transcript: Transcript,
    pub latencies: Latencies,
    /// TLPs the bridge received from the root port, by kind (engine counters).
    pub tlps_from_root_port: Vec<(&'static str, u64)>,
    /// TLPs the bridge sent to the root port, by kind (engine counters).
    pub tlps_to_root_port: Vec<(&'static str, u64)>,
    pub dma_bytes_read: u64,
    pub dma_bytes_written: u64,
    pub msi_sent: u64,
    pub msix_sent: u64,
    pub intx_asserted: u64,
    /// The root complex's final simulated time, in picoseconds.
    pub simulated_ps: u64,
    pub wall_ms: u64,
    /// Where the capture was kept (`--pcap`), if it was.
    pub pcap: Option<PathBuf>,
    pub report: Report,
}

/// Which phase the demo is in, for the watchdog's message.
#[derive(Clone, Debug, Default)]
pub struct Progress(Arc<Mutex<&'static str>>);

impl Progress {
    fn set(&self, phase: &'static str) {
        tracing::debug!(phase, "demo");
        if let Ok(mut current) = self.0.lock() {
            *current = phase;
        }
    }

    pub fn phase(&self) -> &'static str {
        self.0.lock().map(|p| *p).unwrap_or("in an unknown phase")
    }
}

/// A directory under the system temporary directory, removed with its contents when dropped.
struct DemoDir(PathBuf);

impl DemoDir {
    fn create() -> Result<DemoDir, BridgeError> {
        let base = std::env::temp_dir();
        let mut last_error = None;
        for attempt in 0..16u32 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let path = base.join(format!("tlpbridge-demo-{}-{nanos:x}-{attempt}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(DemoDir(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last_error = Some(e),
                Err(source) => return Err(BridgeError::DemoTempDir { dir: base, source }),
            }
        }
        let source = last_error.unwrap_or_else(|| std::io::Error::other("no free name"));
        Err(BridgeError::DemoTempDir { dir: base, source })
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for DemoDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), error = %e, "demo: cannot remove the temporary directory");
        }
    }
}

/// Aborts the task when dropped, so a watchdog or an early error leaves nothing running.
struct OwnedTask<T>(JoinHandle<T>);

impl<T> Drop for OwnedTask<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The sample device serving its socket until told to stop.
struct RunningDevice {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: OwnedTask<Result<(), sim::Error>>,
}

impl RunningDevice {
    fn start(socket: PathBuf) -> Result<RunningDevice, BridgeError> {
        let card =
            DmaEngine::new(DmaEngineConfig::default()).map_err(|e| BridgeError::DemoDevice(e.to_string()))?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            sim::device::serve(&socket, Arc::new(card), ServerConfig::default(), async move {
                let _ = stopped.await;
            })
            .await
        });
        Ok(RunningDevice { stop: Some(stop), task: OwnedTask(task) })
    }

    /// Stops the server; an error it ended with is the demo's error.
    async fn stop(mut self) -> Result<(), BridgeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(DEVICE_STOP_GRACE, &mut self.task.0).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(BridgeError::DemoDevice(e.to_string())),
            Ok(Err(e)) => Err(BridgeError::DemoDevice(format!("the server task ended abnormally: {e}"))),
            Err(_) => {
                Err(BridgeError::DemoDevice(format!("the server did not stop within {DEVICE_STOP_GRACE:?}")))
            }
        }
    }
}

/// The bridge side: accepts the root complex's connection, attaches the capture, starts the
/// engine on the device's socket.
async fn start_bridge(
    listener: SimListener,
    link_config: BridgeConfig,
    socket: PathBuf,
    capture_path: PathBuf,
) -> Result<(Engine, CaptureWriter), BridgeError> {
    let link = listener.accept_bridge(&link_config).await.map_err(BridgeError::DemoLink)?;
    let (handle, writer) = Capture::create(&capture_path, CaptureConfig::for_link(&link))?;
    let config = EngineConfig { capture: Some(handle), ..EngineConfig::default() };
    match Engine::start(link, ServerEndpoint::Path(socket), config).await {
        Ok(engine) => Ok((engine, writer)),
        Err(e) => {
            // The capture file is still closed orderly; the start error is what matters.
            let _ = tokio::task::spawn_blocking(move || writer.finish()).await;
            Err(e)
        }
    }
}

async fn finish_capture(writer: CaptureWriter) -> Result<CaptureSummary, BridgeError> {
    tokio::task::spawn_blocking(move || writer.finish())
        .await
        .map_err(|e| BridgeError::CaptureThread(e.to_string()))?
}

fn mode_name(mode: SimMode) -> &'static str {
    match mode {
        SimMode::Lockstep => "lockstep",
        SimMode::FreeRunning => "free",
    }
}

/// Runs the demo; the wall-clock watchdog ends it with [`BridgeError::DemoWatchdog`].
pub async fn run(options: &DemoOptions) -> Result<DemoOutcome, BridgeError> {
    let progress = Progress::default();
    let started = Instant::now();
    match tokio::time::timeout(options.watchdog, run_phases(options, &progress, started)).await {
        Ok(result) => result,
        Err(_) => Err(BridgeError::DemoWatchdog { limit: options.watchdog, phase: progress.phase() }),
    }
}

async fn run_phases(
    options: &DemoOptions,
    progress: &Progress,
    started: Instant,
) -> Result<DemoOutcome, BridgeError> {
    progress.set("creating the temporary directory");
    let dir = DemoDir::create()?;
    let socket = dir.join("device.sock");
    let capture_path = options.pcap.clone().unwrap_or_else(|| dir.join("demo.pcapng"));

    progress.set("starting the sample device");
    let device = RunningDevice::start(socket.clone())?;

    progress.set("binding the sim link on 127.0.0.1");
    let listener = SimListener::bind("127.0.0.1:0").await.map_err(BridgeError::DemoLink)?;
    let address = listener.local_addr().map_err(BridgeError::DemoLink)?.to_string();
    let link = LinkParams::DEFAULT;
    let hello = HelloParams {
        mode: options.mode,
        ps_per_tick: PS_PER_CYCLE,
        link,
        tag_flags: hello_flags::EXTENDED_TAG,
        link_latency_ticks: 0,
    };
    let bridge_link = BridgeConfig { hello, ..BridgeConfig::default() };
    // Shorter than the watchdog, so a bridge that stops acknowledging is reported by the root
    // complex with the step it was on.
    let wait = (options.watchdog / 2).max(Duration::from_secs(1));
    let simulator =
        SimulatorConfig { hello, connect_timeout: wait, ack_timeout: wait, ..SimulatorConfig::default() };
    let rc = RcConfig {
        link,
        ps_per_cycle: PS_PER_CYCLE,
        // Free-running time would otherwise race ahead of the device by millions of steps.
        pace: (options.mode == SimMode::FreeRunning).then_some(FREE_RUNNING_PACE),
        ..RcConfig::default()
    };

    progress.set("connecting the root complex, the bridge and the device");
    // The bridge is up (device connected, capture attached) before the script sends its first
    // TLP, so no run starts with CRS completions and a lockstep transcript is repeatable.
    let bridge = start_bridge(listener, bridge_link, socket, capture_path.clone());
    let rc_end = SimulatorEnd::connect(&address, &simulator);
    let (bridge, rc_end) = tokio::join!(bridge, rc_end);
    let (engine, writer) = bridge?;
    let mut complex =
        RootComplex::new(rc_end.map_err(BridgeError::DemoLink)?, rc).map_err(BridgeError::DemoRootComplex)?;

    progress.set("running the script");
    let report = sim::rc::run_script(&mut complex, &options.script).await;

    progress.set("stopping the bridge");
    // The bridge stops first, so the root complex's CLOSE does not look like a lost link to it.
    let counters = engine.shutdown().await;
    progress.set("closing the sim link");
    if let Err(e) = complex.into_io().close().await {
        tracing::debug!(error = %e, "demo: the sim link did not close orderly");
    }
    progress.set("closing the capture");
    let capture = finish_capture(writer).await;
    progress.set("stopping the sample device");
    let device_stopped = device.stop().await;
    let capture = capture?;

    progress.set("reading the capture back");
    let records = crate::capture::read::read_capture(&capture_path)?;
    let shown = crate::capture::show::analyze(&records.records);
    let transcript = Transcript::from_records(&shown);
    let latencies = Latencies::from_records(&shown);

    let checks = judge(&report, &counters, &capture, &transcript, device_stopped);
    let count = |sent: bool| -> Vec<(&'static str, u64)> {
        TLP_KINDS
            .iter()
            .map(|kind| (*kind, if sent { counters.sent(kind) } else { counters.received(kind) }))
            .filter(|(_, n)| *n > 0)
            .collect()
    };
    Ok(DemoOutcome {
        passed: checks.iter().all(|c| c.passed),
        mode: mode_name(options.mode),
        checks,
        transcript,
        latencies,
        tlps_from_root_port: count(false),
        tlps_to_root_port: count(true),
        dma_bytes_read: counters.dma_bytes_read,
        dma_bytes_written: counters.dma_bytes_written,
        msi_sent: counters.msi_sent,
        msix_sent: counters.msix_sent,
        intx_asserted: counters.intx_asserted,
        simulated_ps: report.final_cycle.saturating_mul(u64::from(report.ps_per_cycle)),
        wall_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        pcap: options.pcap.clone(),
        report,
    })
}

/// The checks: every script step, then what the bridge and the capture say about the run.
fn judge(
    report: &Report,
    counters: &CountersSnapshot,
    capture: &CaptureSummary,
    transcript: &Transcript,
    device_stopped: Result<(), BridgeError>,
) -> Vec<Check> {
    let mut checks: Vec<Check> = report
        .steps
        .iter()
        .map(|step| Check {
            name: format!("line {}: {}", step.line, step.command),
            passed: step.passed,
            detail: step.detail.clone(),
        })
        .collect();
    if let Some(error) = &report.error {
        // A failure outside any step (the link, a step that never got to report).
        if report.steps.iter().all(|s| s.passed) {
            checks.push(Check { name: "root complex".into(), passed: false, detail: error.clone() });
        }
    }
    if report.steps.is_empty() {
        checks.push(Check { name: "script".into(), passed: false, detail: "no step ran".into() });
    }
    let zero = |name: &str, value: u64, what: &str| Check {
        name: name.to_owned(),
        passed: value == 0,
        detail: if value == 0 { format!("no {what}") } else { format!("{value} {what}") },
    };
    checks.push(zero("bridge: malformed TLPs", counters.malformed, "malformed TLPs from the root port"));
    checks.push(zero(
        "bridge: completions",
        counters.unexpected_completions.saturating_add(counters.late_completions),
        "unexpected or late completions",
    ));
    checks.push(zero(
        "bridge: timeouts",
        counters.completion_timeouts.saturating_add(counters.device_timeouts),
        "completion or device timeouts",
    ));
    checks.push(zero(
        "bridge: error completions",
        counters.ur_sent.saturating_add(counters.ca_sent).saturating_add(counters.dma_failed_status),
        "UR/CA completions or failed DMA reads",
    ));
    checks.push(zero("capture: records lost", capture.dropped(), "capture records lost"));
    // The capture and the engine's counters are two independent records of the same traffic.
    let (captured_in, captured_out) = transcript.tlp_counts();
    let counted_in = counters.tlps_in.iter().fold(0u64, |a, n| a.saturating_add(*n));
    let counted_out = counters.tlps_out.iter().fold(0u64, |a, n| a.saturating_add(*n));
    checks.push(Check {
        name: "capture agrees with the bridge's counters".into(),
        passed: (captured_in, captured_out) == (counted_in, counted_out),
        detail: format!(
            "captured {captured_in} TLPs in / {captured_out} out, counted {counted_in} in / {counted_out} out"
        ),
    });
    checks.push(match device_stopped {
        Ok(()) => Check { name: "sample device".into(), passed: true, detail: "stopped cleanly".into() },
        Err(e) => Check { name: "sample device".into(), passed: false, detail: e.to_string() },
    });
    checks
}

/// Parses a script file for `--script`.
pub fn load_script(path: &Path) -> Result<Script, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Script::parse(&path.display().to_string(), &text).map_err(|e| e.to_string())
}

/// The built-in script, parsed.
pub fn builtin_script() -> Result<Script, String> {
    Script::parse(BUILTIN_SCRIPT_NAME, BUILTIN_SCRIPT).map_err(|e| e.to_string())
}

impl std::fmt::Display for DemoOutcome {
    /// The transcript and the summary `tlpbridge demo` prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(e) = &self.report.enumeration {
            writeln!(
                f,
                "device {} {:04x}:{:04x} class {:06x}, interrupts {}, MPS {} MRRS {}",
                e.bdf,
                e.vendor_id,
                e.device_id,
                e.class_code,
                e.interrupts,
                e.mps.map_or("-".to_owned(), |v| v.to_string()),
                e.mrrs.map_or("-".to_owned(), |v| v.to_string()),
            )?;
            for bar in &e.bars {
                let pf = if bar.prefetchable { " prefetchable" } else { "" };
                writeln!(f, "  BAR{} {}{pf} at {:#x}, {} bytes", bar.slot, bar.kind, bar.address, bar.size)?;
            }
        }
        writeln!(f)?;
        writeln!(f, "key TLPs (simulated time; -> root port to device, <- device to root port):")?;
        write!(f, "{}", self.transcript)?;
        writeln!(f)?;
        let passed = self.checks.iter().filter(|c| c.passed).count();
        writeln!(f, "checks: {passed}/{} passed", self.checks.len())?;
        for check in self.checks.iter().filter(|c| !c.passed) {
            writeln!(f, "  FAILED {}: {}", check.name, check.detail)?;
        }
        let kinds = |list: &[(&str, u64)]| {
            if list.is_empty() {
                return "none".to_owned();
            }
            list.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
        };
        writeln!(f, "TLPs root port -> device: {}", kinds(&self.tlps_from_root_port))?;
        writeln!(f, "TLPs device -> root port: {}", kinds(&self.tlps_to_root_port))?;
        writeln!(
            f,
            "DMA: {} bytes read from host memory, {} bytes written; interrupts: {} MSI, {} MSI-X, {} INTx",
            self.dma_bytes_read, self.dma_bytes_written, self.msi_sent, self.msix_sent, self.intx_asserted
        )?;
        write!(f, "{}", self.latencies)?;
        writeln!(
            f,
            "simulated time {}, wall time {} ms, {} mode",
            transcript::SimTime(self.simulated_ps),
            self.wall_ms,
            self.mode
        )?;
        if let Some(path) = &self.pcap {
            writeln!(f, "capture: {}", path.display())?;
        }
        writeln!(f, "{}", if self.passed { "PASS" } else { "FAIL" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_script_parses() {
        let script = builtin_script().unwrap();
        assert!(script.steps.len() >= 10);
    }
}

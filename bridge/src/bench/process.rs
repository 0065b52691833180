//! The bridge as a process of its own (`tlpbridge run`), for the figures that belong to that
//! process alone, its resident memory: the sample device and the load generator stay in the
//! bench's process, on the same sockets as in [`super::rig::Rig`].

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sim::device::DmaEngineConfig;
use sim::link::{SimListener, SimulatorConfig};
use tokio::process::{Child, Command};

use super::rig::{DeviceServer, LoadGen, bench_error};
use crate::engine::BridgeError;

/// Longest wait for the bridge process to connect, and to exit after SIGINT.
const PROCESS_WAIT: Duration = Duration::from_secs(20);

/// A file in the temp directory, removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Device and load generator in this process, `tlpbridge run` between them in a child process
/// (killed if this is dropped without [`BridgeProcess::stop`]).
pub struct BridgeProcess {
    pub port: LoadGen,
    device: DeviceServer,
    child: Child,
    pid: Pid,
    /// The bridge's standard error, shown when it fails.
    log: TempFile,
}

impl BridgeProcess {
    /// Starts the sample card, then `exe run --server <card> --link sim://<our listener>` with
    /// `extra_args`, and enumerates the card through it as [`super::rig::Rig::start`] does.
    pub async fn start(exe: &Path, extra_args: &[String], name: &str) -> Result<BridgeProcess, BridgeError> {
        let step = "starting the bridge process";
        let device = DeviceServer::start(DmaEngineConfig::default(), name)?;
        let listener = SimListener::bind("127.0.0.1:0").await.map_err(|e| bench_error(step, e))?;
        let addr = listener.local_addr().map_err(|e| bench_error(step, e))?;
        let log =
            TempFile(std::env::temp_dir().join(format!("tlpbridge-bench-{}-{name}.log", std::process::id())));
        let log_file = std::fs::File::create(&log.0)
            .map_err(|e| bench_error(step, format!("creating {}: {e}", log.0.display())))?;
        let mut child = Command::new(exe)
            .arg("run")
            .arg("--server")
            .arg(device.path())
            .arg("--link")
            .arg(format!("sim://{addr}"))
            .args(["--device-timeout", "10s", "--no-reconnect"])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| bench_error(step, format!("running {}: {e}", exe.display())))?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw)
            .ok_or_else(|| bench_error(step, "the bridge process has no pid"))?;
        let simulator = SimulatorConfig::default();
        let end = tokio::select! {
            accepted = tokio::time::timeout(PROCESS_WAIT, listener.accept_simulator(&simulator)) => {
                match accepted {
                    Ok(Ok(end)) => end,
                    Ok(Err(e)) => return Err(bench_error(step, e)),
                    Err(_) => return Err(bench_error(step, format!("no connection within {PROCESS_WAIT:?}; its log: {}", read_log(&log.0)))),
                }
            }
            status = child.wait() => {
                let status = status.map_err(|e| bench_error(step, e))?;
                return Err(bench_error(step, format!("it exited ({status}) before connecting; its log: {}", read_log(&log.0))));
            }
        };
        let mut port = LoadGen::new(end);
        // The bridge answers CRS until it has read the server's device.
        port.wait_config_ready(0x10, super::rig::BAR0 as u32, PROCESS_WAIT).await?;
        port.enumerate().await?;
        Ok(BridgeProcess { port, device, child, pid, log })
    }

    /// The bridge process's id, for [`rss_kib`].
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Stops the bridge as Ctrl-C does and checks it exited successfully, then stops the device.
    /// Returns the problems the bridge reported at exit (such as capture records lost), empty if
    /// none.
    pub async fn stop(mut self) -> Result<String, BridgeError> {
        let step = "stopping the bridge process";
        let result = async {
            kill(self.pid, Signal::SIGINT).map_err(|e| bench_error(step, format!("SIGINT: {e}")))?;
            match tokio::time::timeout(PROCESS_WAIT, self.child.wait()).await {
                Ok(Ok(status)) if status.success() => {
                    let log = std::fs::read_to_string(&self.log.0).unwrap_or_default();
                    // "tlpbridge run finished: <counters>" is the normal end; "tlpbridge run: ..."
                    // lines are problems.
                    let problems: Vec<&str> =
                        log.lines().filter(|l| l.starts_with("tlpbridge run:")).collect();
                    Ok(problems.join("; "))
                }
                Ok(Ok(status)) => Err(bench_error(
                    step,
                    format!("it exited with {status}; its log: {}", read_log(&self.log.0)),
                )),
                Ok(Err(e)) => Err(bench_error(step, e)),
                Err(_) => Err(bench_error(step, format!("still running {PROCESS_WAIT:?} after SIGINT"))),
            }
        }
        .await;
        drop(self.port);
        self.device.stop().await;
        result
    }
}

/// The resident set size of process `pid` now (`VmRSS`) and its peak (`VmHWM`), in KiB.
pub fn rss_kib(pid: Pid) -> Result<(u64, u64), BridgeError> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| bench_error("reading the bridge's memory", e))?;
    super::rss_fields(&status)
        .ok_or_else(|| bench_error("reading the bridge's memory", format!("no VmRSS/VmHWM in {path}")))
}

/// The last lines of the bridge's log, for an error message.
fn read_log(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines.get(lines.len().saturating_sub(5)..).unwrap_or(&[]).join(" | ");
    if tail.is_empty() { "(empty)".to_owned() } else { tail }
}

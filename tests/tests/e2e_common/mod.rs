//! Helpers shared by the `e2e_*` tests: owned child processes, bounded waits, ports, captures.
#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use serde_json::Value;
use sim::rc::{Enumeration, RootComplex, RootPortIo};

/// A child process killed (SIGKILL) and reaped when dropped (by [`tlpbridge_tests::Running`]),
/// with the log file its output goes to.
pub struct Running {
    pub process: tlpbridge_tests::Running,
    pub log: PathBuf,
}

impl Running {
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status, or `None` if it still runs after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_exit(timeout).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Starts `bin args...` with stdout and stderr going to `log`.
pub fn spawn(bin: &Path, args: &[&str], log: PathBuf) -> Running {
    spawn_with_env(bin, args, &[], log)
}

/// [`spawn`] with extra environment variables (e.g. `RUST_LOG`).
pub fn spawn_with_env(bin: &Path, args: &[&str], env: &[(&str, &str)], log: PathBuf) -> Running {
    let process = tlpbridge_tests::spawn_logged(bin, args, env, &log).unwrap_or_else(|e| panic!("{e}"));
    Running { process, log }
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    tlpbridge_tests::free_port().unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until something listens on 127.0.0.1:`port` (read from /proc/net/tcp, so the one
/// connection a sim link accepts is not used up by probing).
pub fn wait_listening(port: u16, who: &Running, timeout: Duration) {
    tlpbridge_tests::wait_listening(port, timeout, &who.log).unwrap_or_else(|e| panic!("{e}"));
}

/// Waits until `path` exists (a server's socket).
pub fn wait_for_path(path: &Path, who: &Running, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear within {timeout:?}:\n{}",
            path.display(),
            who.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `tlpbridge pcap show --json FILE`: one JSON object per record.
pub fn pcap_show_json(bin: &Path, capture: &Path) -> Vec<Value> {
    let mut show = Command::new(bin);
    show.args(["pcap", "show", "--json"]).arg(capture);
    let out = tlpbridge_tests::run_bounded(show, "tlpbridge pcap show --json", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "pcap show failed:\n{}", out.output);
    out.output
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// The TLP records of a capture as (direction, kind, address, length in DW, tag), in order.
pub fn tlp_sequence(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .filter(|r| r["interface"] == "tlp")
        .map(|r| {
            let t = &r["tlp"];
            format!(
                "{} {} addr={} reg={} len={} tag={} status={}",
                r["direction"].as_str().unwrap_or("?"),
                r["kind"].as_str().unwrap_or("?"),
                t["address"],
                t["register"],
                t["length_dw"],
                t["tag"],
                t["status"]
            )
        })
        .collect()
}

/// Enumerates the device behind the bridge through `rc`, retrying while the bridge answers CRS:
/// it does until it has read the device, which on a loaded machine can outlast the root
/// complex's own CRS retries. Any other failure panics with the bridge's log at `bridge_log`.
pub async fn enumerate_past_crs<I: RootPortIo>(rc: &mut RootComplex<I>, bridge_log: &Path) -> Enumeration {
    const ATTEMPTS: u32 = 100;
    let mut attempts = 0;
    loop {
        match rc.enumerate().await {
            Ok(enumeration) => return enumeration,
            Err(e) if e.to_string().contains("CRS") && attempts < ATTEMPTS => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                panic!("enumeration failed: {e}\n{}", std::fs::read_to_string(bridge_log).unwrap_or_default())
            }
        }
    }
}

//! Helpers shared by the `e2e_*` tests: owned child processes, bounded waits, ports, captures.
#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A child process killed (SIGKILL) and reaped when dropped, with its output in a log file.
pub struct Running {
    pub child: Child,
    pub log: PathBuf,
}

impl Running {
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status, or `None` if it still runs after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `bin args...` with stdout and stderr going to `log`.
pub fn spawn(bin: &Path, args: &[&str], log: PathBuf) -> Running {
    spawn_with_env(bin, args, &[], log)
}

/// [`spawn`] with extra environment variables (e.g. `RUST_LOG`).
pub fn spawn_with_env(bin: &Path, args: &[&str], env: &[(&str, &str)], log: PathBuf) -> Running {
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    Running { child, log }
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something listens on 127.0.0.1:`port` (read from /proc/net/tcp, so the one
/// connection a sim link accepts is not used up by probing).
pub fn wait_listening(port: u16, who: &Running, timeout: Duration) {
    let local = format!("0100007F:{port:04X}");
    let deadline = Instant::now() + timeout;
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        let listening = table.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A")
        });
        if listening {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nothing listened on port {port} within {timeout:?}:\n{}",
            who.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
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

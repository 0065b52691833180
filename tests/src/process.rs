//! Bounded runs of short helper commands.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::HarnessError;

/// How often waits re-check a child process or a socket path.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// What a finished command printed (stdout and stderr, interleaved) and how it exited.
pub struct CommandOutput {
    pub status: ExitStatus,
    pub output: String,
}

/// Runs `command` to completion with its output in an anonymous file (so a chatty command cannot
/// block on a full pipe), killing it if it takes longer than `timeout`.
pub fn run_bounded(
    mut command: Command,
    what: &str,
    timeout: Duration,
) -> Result<CommandOutput, HarnessError> {
    let wait_err = |source| HarnessError::Wait { what: what.to_owned(), source };
    let log = tempfile::tempfile().map_err(HarnessError::TempDir)?;
    let log_for_stderr = log.try_clone().map_err(wait_err)?;
    let log_for_stdout = log.try_clone().map_err(wait_err)?;
    command.stdin(Stdio::null()).stdout(log_for_stdout).stderr(log_for_stderr);
    let program = command.get_program().into();
    let mut child = command.spawn().map_err(|source| HarnessError::Spawn { program, source })?;
    let status = wait_bounded(&mut child, what, timeout)?;
    Ok(CommandOutput { status, output: read_log(&log) })
}

/// Waits for `child` to exit, killing and reaping it if `timeout` passes first.
pub(crate) fn wait_bounded(
    child: &mut Child,
    what: &str,
    timeout: Duration,
) -> Result<ExitStatus, HarnessError> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                // Best effort: the child is abandoned either way, but must not outlive the test.
                let _ = child.kill();
                let _ = child.wait();
                return Err(HarnessError::Timeout { what: what.to_owned(), timeout });
            }
            Ok(None) => std::thread::sleep(POLL_INTERVAL),
            Err(source) => return Err(HarnessError::Wait { what: what.to_owned(), source }),
        }
    }
}

/// Everything written to `log` so far, lossily decoded; diagnostics only.
pub(crate) fn read_log(mut log: &File) -> String {
    let mut bytes = Vec::new();
    let read = log.seek(SeekFrom::Start(0)).and_then(|_| log.read_to_end(&mut bytes));
    match read {
        Ok(_) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(err) => format!("<cannot read captured output: {err}>"),
    }
}

/// A child process killed (SIGKILL) and reaped when dropped, so no test leaves one behind.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        // Best effort: the child may have exited already, and a drop has no one to report to.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// The exit status, or `None` if the child still runs after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self
                .0
                .try_wait()
                .map_err(|source| HarnessError::Wait { what: format!("process {}", self.0.id()), source })?;
            if status.is_some() || Instant::now() >= deadline {
                return Ok(status);
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// True while the child has not exited.
    pub fn is_running(&mut self) -> Result<bool, HarnessError> {
        self.wait_exit(Duration::ZERO).map(|status| status.is_none())
    }

    /// Sends signal `name` (`STOP`, `CONT`, `INT`, ...) with kill(1).
    pub fn signal(&self, name: &str) -> Result<(), HarnessError> {
        let mut kill = Command::new("kill");
        kill.arg(format!("-{name}")).arg(self.0.id().to_string());
        let what = format!("kill -{name} {}", self.0.id());
        let done = run_bounded(kill, &what, Duration::from_secs(10))?;
        if !done.status.success() {
            return Err(HarnessError::CommandFailed { what, status: done.status, output: done.output });
        }
        Ok(())
    }

    /// The resident set of the child, in KiB (`VmRSS` in `/proc/PID/status`).
    pub fn rss_kib(&self) -> Result<u64, HarnessError> {
        let path = std::path::PathBuf::from(format!("/proc/{}/status", self.0.id()));
        let status = std::fs::read_to_string(&path)
            .map_err(|source| HarnessError::ReadFile { path: path.clone(), source })?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.split_whitespace().next())
            .and_then(|value| value.parse().ok())
            .ok_or(HarnessError::NoRss { path })
    }
}

/// Starts `bin args...` with the extra environment `env`, stdin closed and stdout and stderr
/// both going to the file `log` (created or truncated).
pub fn spawn_logged(
    bin: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    log: &Path,
) -> Result<Running, HarnessError> {
    let create_err = |source| HarnessError::CreateLog { path: log.to_owned(), source };
    let stdout = File::create(log).map_err(create_err)?;
    let stderr = stdout.try_clone().map_err(create_err)?;
    let child = Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map_err(|source| HarnessError::Spawn { program: bin.to_owned(), source })?;
    Ok(Running(child))
}

/// A TCP port on 127.0.0.1 that was free a moment ago and that no other caller in this process
/// has been given. The kernel may hand the same free port to two binds in a row, and tests run
/// in parallel threads: two children told to listen on one port made one test's root complex
/// talk to the other test's bridge (`wait_listening` cannot tell whose listener it sees).
pub fn free_port() -> Result<u16, HarnessError> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    // Far more than the ports a test binary asks for; the loop ends when the kernel offers a
    // port not given out yet, which takes one or two tries.
    for _ in 0..1000 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .map_err(HarnessError::FreePort)?;
        let mut given = GIVEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
    Err(HarnessError::FreePort(std::io::Error::other("every free port offered was already given out")))
}

/// Waits until something listens on 127.0.0.1:`port`, read from `/proc/net/tcp`: connecting to
/// find out would use up the one connection a sim link accepts. `log` is the listener's log,
/// quoted in the error when `timeout` passes first.
pub fn wait_listening(port: u16, timeout: Duration, log: &Path) -> Result<(), HarnessError> {
    const TCP_TABLE: &str = "/proc/net/tcp";
    const TCP_LISTEN: &str = "0A";
    let local = format!("0100007F:{port:04X}");
    let deadline = Instant::now() + timeout;
    loop {
        let table = std::fs::read_to_string(TCP_TABLE)
            .map_err(|source| HarnessError::ReadFile { path: TCP_TABLE.into(), source })?;
        // Rows: `sl local_address rem_address st ...`, after one header line.
        let listening = table.lines().skip(1).any(|line| {
            let mut fields = line.split_whitespace();
            fields.nth(1) == Some(local.as_str()) && fields.nth(1) == Some(TCP_LISTEN)
        });
        if listening {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let log_text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(HarnessError::NotListening { port, timeout, log: log_text });
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

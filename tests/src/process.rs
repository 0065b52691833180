//! Bounded runs of short helper commands.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
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

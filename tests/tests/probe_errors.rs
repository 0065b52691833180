//! `tlpbridge probe` when there is no usable server: one `error:` line saying what to fix, exit
//! status 2, nothing on stdout.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use tlpbridge_tests::{TestDir, tlpbridge_bin};

fn probe(socket: &Path, extra: &[&str]) -> Output {
    Command::new(tlpbridge_bin().unwrap())
        .arg("probe")
        .arg("--server")
        .arg(socket)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Exit status 2, empty stdout, and exactly one stderr line: `error: …` containing `needle`.
fn assert_one_error_line(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(out.stdout.is_empty(), "stdout: {}", String::from_utf8_lossy(&out.stdout));
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    assert!(lines[0].contains(needle), "{:?} lacks {needle:?}", lines[0]);
}

#[test]
fn missing_socket() {
    let dir = TestDir::new("probe-missing").unwrap();
    let socket = dir.join("nothing.sock");
    let out = probe(&socket, &[]);
    assert_one_error_line(&out, "does not exist");
    assert_one_error_line(&out, &socket.display().to_string());
}

#[test]
fn stale_socket_refuses() {
    let dir = TestDir::new("probe-stale").unwrap();
    let socket = dir.socket_path("stale.sock").unwrap();
    // Bound then closed: the socket file stays, nobody listens (a server that exited).
    drop(UnixListener::bind(&socket).unwrap());
    let out = probe(&socket, &[]);
    assert_one_error_line(&out, "connection refused");
}

#[test]
fn silent_server_times_out() {
    let dir = TestDir::new("probe-silent").unwrap();
    let socket = dir.socket_path("silent.sock").unwrap();
    // Listening but never accepting: connect succeeds through the backlog, VERSION is never
    // answered.
    let _listener = UnixListener::bind(&socket).unwrap();
    let out = probe(&socket, &["--timeout", "300ms"]);
    assert_one_error_line(&out, "did not answer VERSION within 300ms");
    assert_one_error_line(&out, "--timeout");
}

#[test]
fn zero_timeout_is_refused_by_the_parser() {
    let dir = TestDir::new("probe-zero").unwrap();
    let out = probe(&dir.join("x.sock"), &["--timeout", "0s"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be more than 0"));
}

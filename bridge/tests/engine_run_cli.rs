//! `tlpbridge run` argument and startup errors: one line that says what to fix, exit status 2.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tlpbridge")).arg("run").args(args).output().unwrap();
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn a_missing_server_socket_is_a_one_line_error_with_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let (code, stderr) = run(&[
        "--server",
        socket.to_str().unwrap(),
        "--link",
        "sim-listen://127.0.0.1:0",
        "--connect-timeout",
        "100ms",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no vfio-user server socket at") && stderr.contains("fix --server"), "{stderr}");
}

#[test]
fn a_link_kind_not_in_this_build_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("server.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let (code, stderr) = run(&["--server", socket.to_str().unwrap(), "--link", "udp://10.0.0.1:9"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("link kind `udp` is not available in this build"), "{stderr}");
}

#[test]
fn bad_arguments_exit_2() {
    for args in [
        &["--server", "/tmp/x", "--link", "no-scheme"][..],
        &["--server", "/tmp/x", "--link", "sim://h:1", "--mps", "100"],
        &["--server", "/tmp/x", "--link", "sim://h:1", "--dma-window", "0x1000"],
        &["--server", "/tmp/x", "--link", "sim://h:1", "--cpl-timeout", "0ms"],
    ] {
        let (code, stderr) = run(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
}

#[test]
fn argument_errors_are_one_line_that_names_the_fix() {
    for (args, expect) in [
        (&["--link", "sim://h:1"][..], "required arguments were not provided: --server <PATH>"),
        (
            &["--server", "/tmp/x", "--link", "sim://h:1", "--mpss", "256"],
            "tip: a similar argument exists: '--mps'",
        ),
        (&["--server", "/tmp/x", "--link", "sim://h:1", "--mps", "100"], "is not one of 128, 256"),
        (&["--server", "/tmp/x", "--link", "sim://h:1", "--device-timeout", "soon"], "is not a duration"),
    ] {
        let (code, stderr) = run(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("tlpbridge: ") && stderr.contains(expect), "{args:?}: {stderr}");
        assert!(!stderr.contains("Usage"), "{args:?}: {stderr}");
    }
}

#[test]
fn help_still_prints_the_usage_and_succeeds() {
    let (code, _) = run(&["--help"]);
    assert_eq!(code, 0);
}

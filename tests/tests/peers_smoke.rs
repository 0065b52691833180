//! The peers `.ci/install-peers` provides start, create their vfio-user socket and keep running.
//! This checks the installation, not tlpbridge; a missing peer skips locally and fails under CI.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use tlpbridge_tests::TestDir;
use tlpbridge_tests::peers::{self, Peer, QemuDevice, RunningPeer};

/// A started peer is alive and its socket accepts a connection. Aliveness is checked first: a
/// connection closed before the vfio-user version handshake makes the servers give up (QEMU with
/// auto-shutdown aborts), which is their business, not the installation's.
fn assert_serving(mut peer: RunningPeer) {
    assert!(peer.is_running().unwrap(), "{} exited after starting:\n{}", peer.peer(), peer.output());
    let connected = UnixStream::connect(peer.socket());
    assert!(
        connected.is_ok(),
        "{} socket {} refused a connection: {connected:?}\n{}",
        peer.peer(),
        peer.socket().display(),
        peer.output()
    );
}

#[test]
fn libvfio_user_sample_server_serves() {
    let dir = TestDir::new("lvu-server").unwrap();
    let Some(peer) = peers::start_libvfio_user_server(&dir) else { return };
    assert_serving(peer);
}

#[test]
fn libvfio_user_gpio_sample_serves() {
    let dir = TestDir::new("lvu-gpio").unwrap();
    let Some(peer) = peers::start_libvfio_user_gpio(&dir) else { return };
    assert_serving(peer);
}

#[test]
fn qemu_serves_every_device_the_tests_use() {
    for device in QemuDevice::ALL {
        let dir = TestDir::new(device.short_name()).unwrap();
        let Some(peer) = peers::start_qemu(&dir, device) else { return };
        assert_serving(peer);
    }
}

#[test]
fn usbvfiod_serves() {
    let dir = TestDir::new("usbvfiod").unwrap();
    let Some(peer) = peers::start_usbvfiod(&dir) else { return };
    assert_serving(peer);
}

#[test]
fn python_imports_cocotbext_pcie() {
    // `find` runs the import check; under CI a failure panics inside it.
    let Some(python) = peers::python() else { return };
    assert!(python.is_absolute(), "{python:?}");
}

#[test]
fn killed_on_drop() {
    let dir = TestDir::new("drop").unwrap();
    let Some(peer) = peers::start_libvfio_user_server(&dir) else { return };
    let pid = peer.pid();
    drop(peer);
    // The child was reaped in drop, so its /proc entry is gone (pids are not reused that fast).
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} survived drop");
}

#[test]
fn every_peer_has_an_env_var_override() {
    let mut vars: Vec<_> = Peer::ALL.iter().map(|peer| peer.env_var()).collect();
    vars.sort_unstable();
    vars.dedup();
    assert_eq!(vars.len(), Peer::ALL.len());
    assert!(vars.iter().all(|var| var.starts_with("TLPBRIDGE_")));
}

#[test]
fn tlpbridge_bin_is_a_runnable_tlpbridge() {
    let bin = tlpbridge_tests::tlpbridge_bin().unwrap();
    assert_eq!(bin.file_name().unwrap(), "tlpbridge");
    let mut help = std::process::Command::new(&bin);
    help.arg("--help");
    let out = tlpbridge_tests::run_bounded(help, "tlpbridge --help", Duration::from_secs(60)).unwrap();
    assert!(out.status.success(), "{}", out.output);
    assert!(out.output.contains("Usage"), "{}", out.output);
}

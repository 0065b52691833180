//! Replays every file under `fuzz/seeds/TARGET/` and `fuzz/regressions/TARGET/` through the
//! target's checks without libFuzzer (`cargo test --manifest-path fuzz/Cargo.toml`), so seeds
//! and past crashes keep passing in an ordinary build.

use std::path::Path;
use std::sync::Mutex;

/// The checks measure allocations with a process-wide counter, so replays must not run
/// concurrently on the test harness's threads.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn replay(target: &str, check: fn(&[u8])) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut replayed = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            eprintln!("{target}: {}", path.display());
            check(&data);
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no seeds for {target}");
}

#[test]
fn tlp_parse() {
    replay("tlp_parse", tlpbridge_fuzz::tlp_parse::check);
}

#[test]
fn vfio_user_message() {
    replay("vfio_user_message", tlpbridge_fuzz::vfio_user_message::check);
}

#[test]
fn vfio_user_client() {
    replay("vfio_user_client", tlpbridge_fuzz::vfio_user_client::check);
}

#[test]
fn sim_frame() {
    replay("sim_frame", tlpbridge_fuzz::sim_frame::check);
}

#[test]
fn fpga_frame() {
    replay("fpga_frame", tlpbridge_fuzz::fpga_frame::check);
}

#[test]
fn fpga_dll() {
    replay("fpga_dll", tlpbridge_fuzz::fpga_dll::check);
}

#[test]
fn capture_read() {
    replay("capture_read", tlpbridge_fuzz::capture_read::check);
}

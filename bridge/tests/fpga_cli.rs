//! `tlpbridge fpga emulate` as a program: it prints the bridge's link argument first, a bridge
//! that opens it gets the link up and the default script (enumerate) passes against the sample
//! card; bad arguments exit 2.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bridge::engine::{Engine, EngineConfig, ServerEndpoint};
use sim::device::{DmaEngine, DmaEngineConfig, ServerConfig};

fn tlpbridge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tlpbridge"))
}

#[test]
fn bad_arguments_exit_2() {
    for args in [
        &["fpga", "emulate", "--pty", "--ber", "2"][..],
        &["fpga", "emulate", "--pty", "--credits", "0"],
        &["fpga", "emulate", "--pty", "--delay", "5parsecs"],
        &["fpga", "emulate", "--udp", "127.0.0.1:12288", "--drop-frames", "0.1"],
        &["fpga", "emulate", "--pty", "--script", "/nonexistent/script.rcs"],
    ] {
        let out = tlpbridge().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_enumerates_the_card_behind_a_bridge() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("card.sock");
    let card = Arc::new(DmaEngine::new(DmaEngineConfig::default()).unwrap());
    let serve_path = socket.clone();
    tokio::spawn(async move {
        let _ = sim::device::serve(&serve_path, card, ServerConfig::default(), std::future::pending()).await;
    });
    let mut child = tlpbridge()
        .args(["fpga", "emulate", "--pty", "--wait-s", "30", "--ber", "1e-5", "--seed", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let spec = first.trim().to_owned();
    assert!(spec.starts_with("serial:/dev/pts/"), "{spec:?}");
    let link = fpga::open(&spec).await.unwrap();
    // The default device timeout of wall-clock links (8 ms, below a root port's shortest
    // completion timeout) answers CA to a config read the loaded test machine serves late;
    // this test is about the emulator program, so the bridge waits nearly as long as the
    // emulator's root complex does (5 s), still answering before it would time out.
    let config = EngineConfig { device_timeout: Some(Duration::from_secs(4)), ..EngineConfig::default() };
    let engine = Engine::start(link, ServerEndpoint::Path(socket), config).await.unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
        (child.wait().unwrap(), rest)
    });
    let (code, report) = tokio::time::timeout(Duration::from_secs(60), status).await.unwrap().unwrap();
    assert!(code.success(), "{report}");
    assert!(report.contains("1234:7e57") && report.contains("faults injected:"), "{report}");
    engine.shutdown().await;
}

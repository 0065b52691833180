//! The warning about a server without a twin socket, alone in its test binary: tracing's
//! callsite interest cache is global, so a test that captures log lines races every other test
//! that hits the same callsites from threads without a subscriber. Here one global subscriber
//! sees everything and no other test runs.

mod support;

use std::sync::{Arc, Mutex};

use support::*;
use transports::vfio_user::{ClientConfig, DmaMode, NoDma};

/// Every formatted log line, for the test to search.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn take(&self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut *self.0.lock().unwrap())).into_owned()
    }
}

/// The missing twin socket matters only to a client that serves DMA: one with DMA disabled
/// (`tlpbridge probe`) does not warn about it.
#[tokio::test]
async fn a_missing_twin_socket_warns_only_when_the_client_serves_dma() {
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let no_twin = || Hello::libvfio_user_like(8, 1 << 20, false);

    let disabled = ClientConfig { dma: DmaMode::Disabled, ..ClientConfig::default() };
    let (client, _events, _peer) = connect(disabled, no_twin(), NoDma).await;
    assert!(!client.negotiated().twin_socket);
    let quiet = lines.take();
    assert!(!quiet.contains("did not grant a twin socket"), "{quiet}");

    let serving = ClientConfig { dma: DmaMode::Windows(Vec::new()), ..ClientConfig::default() };
    let (client, _events, _peer) = connect(serving, no_twin(), NoDma).await;
    assert!(!client.negotiated().twin_socket);
    let loud = lines.take();
    assert!(loud.contains("did not grant a twin socket"), "{loud}");
}

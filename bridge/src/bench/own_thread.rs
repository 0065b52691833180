//! A tokio runtime on threads of its own: where the bench runs the bridge, and the floor's relay
//! in its place, as each would run in a process of its own, with its own event loop.

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::rig::bench_error;
use crate::engine::BridgeError;

/// A runtime driven by a dedicated OS thread (plus its workers) until [`OwnThread::stop`] (or
/// drop).
pub struct OwnThread {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OwnThread {
    /// `workers` 1: a current-thread runtime; more: a multi-threaded one with that many workers.
    pub fn start(name: &str, workers: usize) -> Result<OwnThread, BridgeError> {
        let fail = |e: std::io::Error| bench_error("starting a runtime thread", e);
        let runtime = crate::runtime::build(workers, name).map_err(fail)?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                // Tasks spawned on the handle run while this blocks; dropping the runtime on
                // return cancels whatever is left.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(fail)?;
        Ok(OwnThread { handle, stop: Some(stop), thread: Some(thread) })
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Ends the runtime (cancelling its remaining tasks) and waits for its thread.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for OwnThread {
    fn drop(&mut self) {
        // Without `stop` (an error path): end the runtime; its thread exits on its own.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

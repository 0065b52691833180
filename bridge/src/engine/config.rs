//! Engine settings and their defaults.

use std::path::PathBuf;
use std::time::Duration;

use tlp::RoutingId;
use transports::vfio_user::DmaWindow;

use super::error::{BridgeError, Result};

/// The largest DMA window libvfio-user accepts in one DMA_MAP (its `MAX_DMA_SIZE`, 8 TiB).
pub const MAX_DMA_WINDOW: u64 = 8 << 40;
/// The default window when the server takes it: the whole 64-bit bus address space but its last
/// 4 KiB page (a window's end must fit in 64 bits).
pub const WHOLE_BUS_WINDOW: u64 = u64::MAX - 0xfff;
/// How far the default reaches with [`MAX_DMA_WINDOW`]-sized windows, when the server refuses
/// the whole space: 48-bit bus addresses (256 TiB, 32 windows), or fewer if the server's window
/// count runs out first (libvfio-user keeps 16: 128 TiB).
pub const DEFAULT_DMA_REACH: u64 = 1 << 48;

/// Where the vfio-user server is.
#[derive(Debug)]
pub enum ServerEndpoint {
    /// A UNIX socket path; connecting is retried until `EngineConfig::connect_window` ends so
    /// that a server started at the same time has time to create its socket.
    Path(PathBuf),
    /// An already-connected socket (tests, `socketpair`, fd passing).
    Socket(std::os::fd::OwnedFd),
}

/// How region accesses are cut before they reach the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessSplit {
    /// Naturally aligned pieces of 1, 2, 4 or 8 bytes (what QEMU's client sends; usbvfiod
    /// accepts nothing else).
    Aligned8,
    /// Whole contiguous runs, up to the server's `max_data_xfer_size`.
    Whole,
}

/// What the device's DMA may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DmaWindows {
    /// The whole bus address space the server accepts: one read-write window of
    /// [`WHOLE_BUS_WINDOW`] bytes from 0; if the server refuses it, consecutive
    /// [`MAX_DMA_WINDOW`] windows from 0 until the server refuses one or [`DEFAULT_DMA_REACH`]
    /// is covered (a DMA must lie inside one window, so one that crosses an 8 TiB boundary is
    /// then refused).
    Default,
    /// Exactly these windows (an IOMMU: DMA elsewhere is refused).
    List(Vec<DmaWindow>),
    /// No DMA_MAP at all (for servers that cannot take a map without fd, such as usbvfiod).
    Disabled,
}

/// Engine settings. `EngineConfig::default()` is what `tlpbridge run` uses without options.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Routing ID used before the host's first CfgWr0 tells the device its bus and device
    /// number; its function number is the function the bridge answers config requests for.
    pub initial_id: RoutingId,
    /// Max_Payload_Size the bridge starts with (bytes); the host's Device Control writes replace it.
    pub mps: u16,
    /// Max_Read_Request_Size the bridge starts with (bytes); replaced by Device Control writes.
    pub mrrs: u16,
    /// Read Completion Boundary of the bridge's completions. A completer other than a Root
    /// Complex has an RCB of 128 bytes (§2.3.1.1); 64 only for a peer that expects it. Link
    /// Control's RCB bit does not change it: in an endpoint that bit describes the root port.
    pub rcb: u16,
    /// How long a DMA read waits for its completions, on the link's clock (simulated time on a
    /// sim link). `None`: 50 ms.
    pub completion_timeout: Option<Duration>,
    /// How long a request from the root port may wait for the server before it is answered with
    /// Completer Abort (wall time: the server runs on wall time). `None`: 8 ms on a wall-clock
    /// link, 1 s on a simulated one.
    pub device_timeout: Option<Duration>,
    /// Allow 10-bit tags when the host also enables them (Device Control 2 bit 12).
    pub ten_bit_tags: bool,
    /// Splitting of config-space and non-prefetchable BAR accesses.
    pub split_non_prefetchable: AccessSplit,
    /// Present the server's I/O BARs to the host as 32-bit memory BARs
    /// ([`super::function::FunctionState::with_io_bars_as_memory`]).
    pub io_bars_as_memory: bool,
    /// Splitting of prefetchable BAR accesses.
    pub split_prefetchable: AccessSplit,
    /// DMA windows mapped at start.
    pub dma_windows: DmaWindows,
    /// How long to keep retrying to connect to the server socket.
    pub connect_window: Duration,
    /// When the server's connection ends, how long to try connecting to a restarted server at
    /// the same path (`None`: the engine stops). Never used with [`ServerEndpoint::Socket`].
    pub reconnect_window: Option<Duration>,
    /// Depth of the posted request queue. When it is full the link reader waits (back-pressure,
    /// like exhausted posted credits).
    pub posted_queue_depth: usize,
    /// Depth of the non-posted request queue. The link reader never waits on it, so that posted
    /// writes and completions are never held behind reads: a non-posted request that finds it
    /// full is answered Completer Abort (`non_posted_overflow`). The default holds every request
    /// one requester can have outstanding (1024 tags with 10-bit tags).
    pub non_posted_queue_depth: usize,
    /// Non-posted requests awaiting the server at once.
    pub max_outstanding_non_posted: usize,
    /// Device DMA requests served at once.
    pub max_concurrent_dma: usize,
    /// MRds one DMA read keeps outstanding at once.
    pub max_reads_per_dma: usize,
    /// How long shutdown waits for in-flight requests before abandoning them.
    pub shutdown_grace: Duration,
    /// Records every TLP on the link and every vfio-user message (`--pcap`).
    pub capture: Option<crate::capture::CaptureHandle>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            initial_id: RoutingId::new(0, 0, 0),
            mps: 128,
            mrrs: 512,
            rcb: 128,
            completion_timeout: None,
            device_timeout: None,
            ten_bit_tags: false,
            split_non_prefetchable: AccessSplit::Aligned8,
            split_prefetchable: AccessSplit::Whole,
            io_bars_as_memory: false,
            dma_windows: DmaWindows::Default,
            connect_window: Duration::from_secs(5),
            reconnect_window: None,
            posted_queue_depth: 64,
            non_posted_queue_depth: 1024,
            max_outstanding_non_posted: 32,
            max_concurrent_dma: 16,
            max_reads_per_dma: 64,
            shutdown_grace: Duration::from_secs(1),
            capture: None,
        }
    }
}

/// Default DMA completion timeout (the PCIe default range tops out at 50 ms).
pub const DEFAULT_COMPLETION_TIMEOUT: Duration = Duration::from_millis(50);
/// Default device timeout on wall-clock links: below the 10 ms the spec recommends as the
/// shortest completion timeout a root port uses in its default range, so that the root port
/// gets our Completer Abort before its own timeout fires.
pub const DEFAULT_DEVICE_TIMEOUT_WALL: Duration = Duration::from_millis(8);
/// Default device timeout on simulated links: simulated time may stand still while the server
/// works, so the bound is generous wall time.
pub const DEFAULT_DEVICE_TIMEOUT_SIMULATED: Duration = Duration::from_secs(1);

impl EngineConfig {
    /// Checks every value; the error names the field and the allowed range.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(BridgeError::InvalidConfig(what));
        if tlp::split::LinkParams::new(self.mps, self.mrrs, self.rcb).is_err() {
            return bad(format!(
                "mps {} / mrrs {} must be powers of two from 128 to 4096 and rcb {} must be 64 or 128",
                self.mps, self.mrrs, self.rcb
            ));
        }
        for (name, value) in [
            ("posted_queue_depth", self.posted_queue_depth),
            ("non_posted_queue_depth", self.non_posted_queue_depth),
            ("max_outstanding_non_posted", self.max_outstanding_non_posted),
            ("max_concurrent_dma", self.max_concurrent_dma),
            ("max_reads_per_dma", self.max_reads_per_dma),
        ] {
            if value == 0 || value > 4096 {
                return bad(format!("{name} {value} not in 1..=4096"));
            }
        }
        if self.completion_timeout.is_some_and(|t| t.is_zero())
            || self.device_timeout.is_some_and(|t| t.is_zero())
        {
            return bad("timeouts must be non-zero".to_owned());
        }
        if let DmaWindows::List(windows) = &self.dma_windows {
            for w in windows {
                if w.size == 0 || w.end().is_none() {
                    return bad(format!("DMA window {w} is empty or wraps the 64-bit space"));
                }
            }
        }
        Ok(())
    }

    pub(crate) fn completion_timeout(&self) -> Duration {
        self.completion_timeout.unwrap_or(DEFAULT_COMPLETION_TIMEOUT)
    }

    pub(crate) fn device_timeout(&self, simulated: bool) -> Duration {
        self.device_timeout.unwrap_or(if simulated {
            DEFAULT_DEVICE_TIMEOUT_SIMULATED
        } else {
            DEFAULT_DEVICE_TIMEOUT_WALL
        })
    }

    pub(crate) fn windows(&self) -> transports::vfio_user::DmaMode {
        use transports::vfio_user::DmaMode;
        match &self.dma_windows {
            // Mapped after negotiation by the engine (`map_default_windows`), which tries sizes.
            DmaWindows::Default => DmaMode::Windows(Vec::new()),
            DmaWindows::List(list) => DmaMode::Windows(list.clone()),
            DmaWindows::Disabled => DmaMode::Disabled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_are_named() {
        assert!(EngineConfig::default().validate().is_ok());
        let bad = EngineConfig { mps: 100, ..EngineConfig::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("mps 100"));
        let bad = EngineConfig { posted_queue_depth: 0, ..EngineConfig::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("posted_queue_depth"));
    }
}

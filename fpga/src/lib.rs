//! Links to real root-port hardware: a serial port or a pair of stream device files carrying the
//! reliable framing of `docs/fpga-link.md`, and UDP in NetTLP format; plus an FPGA-side emulator
//! (`tlpbridge fpga emulate`) that hosts the reference root complex.
//!
//! [`open`] turns a link argument into the bridge's [`Link`]:
//!
//! | argument | link |
//! |---|---|
//! | `serial:PATH[?baud=N&parity=…&flow=…&data=N&stop=N]` | [`serial`] |
//! | `stream:RX_PATH,TX_PATH` | [`stream`] |
//! | `nettlp:REMOTE_IPV4[?local=IP&port-base=N]` | [`nettlp`] |
//!
//! Serial and stream links also take the data-link keys `credits`, `keepalive-ms`, `missed` and
//! `replay-ms`. All links run on the wall clock ([`LinkClock::wall`]); TLPs the FPGA stamps with
//! its own counter are placed on that clock relative to the first stamped TLP after link-up.

pub mod dll;
pub mod driver;
pub mod emulator;
pub mod error;
pub mod faults;
pub mod framing;
pub mod measure;
pub mod nettlp;
pub mod serial;
pub mod spec;
pub mod stream;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use transports::link::{Link, LinkClock, LinkInfo};

pub use driver::LinkStatus;
pub use error::{Error, Result};
pub use spec::Spec;

use dll::DllConfig;
use driver::{DriverConfig, Reopen, UserChannels};
use faults::FaultCounters;

/// Capacity of the link's channels to and from the engine.
pub const LINK_QUEUE: usize = 64;

/// Kinds [`open`] understands.
pub const KINDS: [&str; 3] = ["serial", "stream", "nettlp"];

/// Opens a link (`serial:…`, `stream:…`, `nettlp:…`).
pub async fn open(spec: &str) -> Result<Link> {
    Ok(open_monitored(Spec::parse(spec)?).await?.0)
}

/// Opens a link and returns a view of its state and counters as well.
pub async fn open_monitored(mut spec: Spec) -> Result<(Link, watch::Receiver<LinkStatus>)> {
    match spec.kind.as_str() {
        "serial" => {
            let options = serial::SerialOptions::from_spec(&mut spec)?;
            let mut dll = dll_config_from_spec(&mut spec)?;
            // Keep-alives must outlast the largest frame on a slow line.
            let frame_time = options.byte_time() * framing::MAX_ENCODED_BYTES as u32;
            let min_keepalive = u16::try_from((frame_time * 2).as_millis()).unwrap_or(u16::MAX);
            dll.hello.keepalive_ms = dll.hello.keepalive_ms.max(min_keepalive);
            // The replay timeout grows with the largest frame the link carries (see
            // `Dll::replay_timeout`), not with the largest possible: a tail loss must not stall
            // a link of small TLPs for seconds.
            dll.byte_time = options.byte_time();
            spec.finish()?;
            let device = serial::open_port(&options)?;
            let description = format!("serial port {} at {} baud", options.path, options.baud);
            let reopen: Reopen = Box::new(move || {
                let options = options.clone();
                Box::pin(async move { serial::open_port(&options).map_err(std::io::Error::other) })
            });
            Ok(start_framed("serial", description, device, Some(reopen), DriverConfig::new(dll)))
        }
        "stream" => {
            let paths = stream::StreamPaths::from_spec(&spec)?;
            let dll = dll_config_from_spec(&mut spec)?;
            spec.finish()?;
            let device = stream::open_files(&paths)?;
            let again = paths.clone();
            let reopen: Reopen = Box::new(move || {
                let paths = again.clone();
                Box::pin(async move { stream::open_files(&paths).map_err(std::io::Error::other) })
            });
            let description = format!("stream files {} (receive) and {} (transmit)", paths.rx, paths.tx);
            Ok(start_framed("stream", description, device, Some(reopen), DriverConfig::new(dll)))
        }
        "nettlp" => {
            let config = nettlp::NetTlpConfig::from_spec(&mut spec)?;
            spec.finish()?;
            nettlp::open(config).await
        }
        other => {
            Err(spec
                .error(format!("unknown FPGA link kind `{other}` (expected one of {})", KINDS.join(", "))))
        }
    }
}

/// Reads the data-link keys shared by serial and stream links.
pub fn dll_config_from_spec(spec: &mut Spec) -> Result<DllConfig> {
    let credits = spec.take::<u16>("credits", "a number of TLP frames (1..=32767)")?.unwrap_or(32);
    if credits == 0 || credits > dll::MAX_CREDITS {
        return Err(spec.error(format!("credits={credits}: expected 1..=32767")));
    }
    let mut dll = DllConfig::new(credits);
    if let Some(ms) = spec.take::<u16>("keepalive-ms", "milliseconds (1..=65535)")? {
        if ms == 0 {
            return Err(spec.error("keepalive-ms=0: must be at least 1"));
        }
        dll.hello.keepalive_ms = ms;
    }
    if let Some(n) = spec.take::<u32>("missed", "a number of keep-alive intervals")? {
        dll.missed_keepalives = n.max(2);
    }
    if let Some(ms) = spec.take::<u64>("replay-ms", "milliseconds")? {
        dll.replay_timeout = Duration::from_millis(ms.max(1));
    }
    Ok(dll)
}

/// Starts the driver of a framed link and wraps it as the engine's [`Link`].
pub fn start_framed(
    kind: &str,
    description: String,
    device: driver::Device,
    reopen: Option<Reopen>,
    config: DriverConfig,
) -> (Link, watch::Receiver<LinkStatus>) {
    let (to_user, rx) = mpsc::channel(LINK_QUEUE);
    let (tx, from_user) = mpsc::channel(LINK_QUEUE);
    let clock = LinkClock::wall();
    let (status_tx, status_rx) = watch::channel(LinkStatus::default());
    let user = UserChannels { to_user, from_user, clock: clock.clone(), commands: None };
    let retransmits = config.retransmits.clone();
    let task = tokio::spawn(driver::run(
        device,
        reopen,
        config,
        user,
        status_tx,
        Arc::new(FaultCounters::default()),
    ));
    let info = LinkInfo { kind: kind.to_owned(), description };
    (Link::new(info, clock, rx, tx).with_task(task).with_retransmit_tap(retransmits), status_rx)
}

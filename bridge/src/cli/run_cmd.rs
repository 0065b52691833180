//! `tlpbridge run`: bridge a vfio-user server to a root-port link until Ctrl-C (`docs/run.md`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bridge::capture::{Capture, CaptureConfig, CaptureWriter};
use bridge::engine::{AccessSplit, DmaWindows, Engine, EngineConfig, LinkRegistry, LinkSpec, ServerEndpoint};
use transports::vfio_user::DmaWindow;

use super::EXIT_BAD_INPUT;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The vfio-user server's UNIX socket (waited for up to --connect-timeout).
    #[arg(long, value_name = "PATH")]
    server: PathBuf,
    /// The root-port link, KIND://ADDRESS (docs/run.md lists the kinds).
    #[arg(long, value_name = "LINK")]
    link: LinkSpec,
    /// Max_Payload_Size to start with, bytes (128..4096); the host's Device Control writes win.
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = parse_size)]
    mps: u16,
    /// Max_Read_Request_Size to start with, bytes (128..4096).
    #[arg(long, value_name = "N", default_value_t = 512, value_parser = parse_size)]
    mrrs: u16,
    /// Read Completion Boundary of the bridge's completions, 64 or 128 (an endpoint's is 128).
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = parse_rcb)]
    rcb: u16,
    /// Completion timeout for the device's DMA reads on the link's clock, e.g. 50ms.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    cpl_timeout: Option<Duration>,
    /// Longest wait for the server before a request is answered with Completer Abort.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    device_timeout: Option<Duration>,
    /// A DMA window START:SIZE (hex with 0x or decimal; SIZE may end in K, M, G, T); repeat
    /// for several. Without it, the whole address space the server accepts is mapped
    /// (docs/run.md).
    #[arg(long, value_name = "START:SIZE", value_parser = parse_window, conflicts_with = "no_dma")]
    dma_window: Vec<DmaWindow>,
    /// Map no DMA window (for servers that cannot take DMA_MAP without fd, e.g. usbvfiod).
    #[arg(long)]
    no_dma: bool,
    /// Routing ID before the host's first configuration write, BB:DD.F; its function number
    /// is the one the bridge answers.
    #[arg(long, value_name = "BB:DD.F")]
    bdf: Option<tlp::RoutingId>,
    /// Use 10-bit tags when the host enables them.
    #[arg(long)]
    ten_bit_tags: bool,
    /// Pass accesses to non-prefetchable BARs and config space whole instead of naturally
    /// aligned pieces of at most 8 bytes.
    #[arg(long)]
    whole_accesses: bool,
    /// Present the server's I/O BARs to the host as 32-bit memory BARs (for root ports without
    /// I/O space, and I/O registers that take wider accesses than an I/O request's one DW).
    #[arg(long)]
    io_bars_as_memory: bool,
    /// Cut accesses to prefetchable BARs (and the ROM) into naturally aligned pieces of at most 8
    /// bytes too, for servers that accept nothing larger (e.g. usbvfiod).
    #[arg(long)]
    split_prefetchable: bool,
    /// Record every TLP on the link and every vfio-user message in this pcapng file
    /// (docs/capture-format.md; read it with `tlpbridge pcap show` or Wireshark).
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,
    /// Records the capture holds for its writer thread at most (1..=1048576); beyond, records
    /// are dropped, counted in the file and reported at exit, never waited for.
    #[arg(long, value_name = "N", default_value_t = 16384, requires = "pcap", value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pcap_queue: u32,
    /// Bytes of records the capture holds for its writer thread at most (2M..=1G; K, M, G
    /// suffixes); beyond, records are dropped as for --pcap-queue. Allocated when the capture
    /// starts, twice (the bridge's buffer and the writer's), so capture's memory stays flat.
    #[arg(long, value_name = "SIZE", default_value = "8M", requires = "pcap", value_parser = parse_queue_bytes)]
    pcap_queue_bytes: usize,
    /// How long to wait for the server's socket to appear.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// When the server's connection ends, how long to wait for a restarted server at --server
    /// before stopping; the root port sees a device reset reported with ERR_FATAL (docs/run.md).
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = parse_duration)]
    reconnect_window: Duration,
    /// Stop (exit status 1) as soon as the server's connection ends instead of reconnecting.
    #[arg(long, conflicts_with = "reconnect_window")]
    no_reconnect: bool,
    /// Worker threads of the bridge's async runtime, 1..=64. One (the default) keeps every
    /// hand-off between the bridge's tasks on one thread: faster MMIO reads and DMA; two
    /// sustain more back-to-back posted writes (docs/performance.md, "Fourth round").
    #[arg(long, value_name = "N", default_value_t = bridge::runtime::DEFAULT_THREADS, value_parser = super::parse_threads)]
    threads: usize,
}

fn parse_size(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(v) if v.is_power_of_two() && (128..=4096).contains(&v) => Ok(v),
        _ => Err(format!("{text:?} is not one of 128, 256, 512, 1024, 2048, 4096")),
    }
}

fn parse_rcb(text: &str) -> Result<u16, String> {
    match text {
        "64" => Ok(64),
        "128" => Ok(128),
        _ => Err(format!("{text:?} is not 64 or 128")),
    }
}

/// `500us`, `50ms`, `5s`, `1m`; a bare number is seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration such as 500us, 50ms, 5s or 1m");
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let d = match unit {
        "us" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
        _ => return Err(bad()),
    };
    if d.is_zero() { Err(format!("{text:?}: the duration must be non-zero")) } else { Ok(d) }
}

fn parse_u64(text: &str) -> Result<u64, String> {
    let (digits, scale) = match text.char_indices().last() {
        Some((i, 'K' | 'k')) => (&text[..i], 1u64 << 10),
        Some((i, 'M')) => (&text[..i], 1 << 20),
        Some((i, 'G')) => (&text[..i], 1 << 30),
        Some((i, 'T')) => (&text[..i], 1 << 40),
        _ => (text, 1),
    };
    let value = match digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => digits.parse(),
    }
    .map_err(|_| format!("{text:?} is not a number"))?;
    value.checked_mul(scale).ok_or_else(|| format!("{text:?} does not fit in 64 bits"))
}

fn parse_queue_bytes(text: &str) -> Result<usize, String> {
    let bytes = parse_u64(text)?;
    let (least, most) = (bridge::capture::MIN_QUEUE_BYTES as u64, 1u64 << 30);
    if bytes < least || bytes > most {
        return Err(format!("{text:?} is not between 2M and 1G"));
    }
    usize::try_from(bytes).map_err(|_| format!("{text:?} does not fit in memory"))
}

fn parse_window(text: &str) -> Result<DmaWindow, String> {
    let (start, size) = text.split_once(':').ok_or_else(|| format!("{text:?} is not START:SIZE"))?;
    let (start, size) = (parse_u64(start)?, parse_u64(size)?);
    if size == 0 || start.checked_add(size).is_none() {
        return Err(format!("{text:?}: the window is empty or runs past the 64-bit address space"));
    }
    Ok(DmaWindow::read_write(start, size))
}

/// Waits until `path` exists and is a UNIX socket (without connecting: some servers serve one
/// client and exit when it leaves).
async fn wait_for_socket(path: &std::path::Path, window: Duration) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let deadline = tokio::time::Instant::now() + window;
    loop {
        match std::fs::metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => return Ok(()),
            Ok(_) => {
                return Err(format!(
                    "{} is not a UNIX socket; --server must name the vfio-user server's socket",
                    path.display()
                ));
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(format!(
                    "no vfio-user server socket at {} after {window:?} ({e}); start the server or fix --server",
                    path.display()
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

pub fn run(args: RunArgs) -> ExitCode {
    let config = EngineConfig {
        initial_id: args.bdf.unwrap_or_default(),
        mps: args.mps,
        mrrs: args.mrrs,
        rcb: args.rcb,
        completion_timeout: args.cpl_timeout,
        device_timeout: args.device_timeout,
        ten_bit_tags: args.ten_bit_tags,
        split_non_prefetchable: if args.whole_accesses { AccessSplit::Whole } else { AccessSplit::Aligned8 },
        split_prefetchable: if args.split_prefetchable { AccessSplit::Aligned8 } else { AccessSplit::Whole },
        io_bars_as_memory: args.io_bars_as_memory,
        dma_windows: if args.no_dma {
            DmaWindows::Disabled
        } else if args.dma_window.is_empty() {
            DmaWindows::Default
        } else {
            DmaWindows::List(args.dma_window.clone())
        },
        connect_window: args.connect_timeout,
        reconnect_window: (!args.no_reconnect).then_some(args.reconnect_window),
        ..EngineConfig::default()
    };
    if let Err(e) = config.validate() {
        eprintln!("tlpbridge run: {e}");
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    let runtime = match bridge::runtime::build(args.threads, "tlpbridge") {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tlpbridge run: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let mut config = config;
        // Checked before the link is opened: a listening link may wait a long time for its peer,
        // and a wrong --server should not be discovered only after that.
        if let Err(e) = wait_for_socket(&args.server, args.connect_timeout).await {
            eprintln!("tlpbridge run: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
        let link = match LinkRegistry::builtin().open(&args.link).await {
            Ok(link) => link,
            Err(e) => {
                eprintln!("tlpbridge run: {e}");
                return ExitCode::from(EXIT_BAD_INPUT);
            }
        };
        let capture = match &args.pcap {
            None => None,
            Some(path) => match Capture::create(
                path,
                CaptureConfig {
                    queue_depth: args.pcap_queue as usize,
                    queue_bytes: args.pcap_queue_bytes,
                    ..CaptureConfig::for_link(&link)
                },
            ) {
                Ok((handle, writer)) => {
                    config.capture = Some(handle);
                    Some(writer)
                }
                Err(e) => {
                    eprintln!("tlpbridge run: {e}");
                    return ExitCode::from(EXIT_BAD_INPUT);
                }
            },
        };
        let mut engine = match Engine::start(link, ServerEndpoint::Path(args.server.clone()), config).await {
            Ok(engine) => engine,
            Err(e) => {
                eprintln!("tlpbridge run: {e}");
                finish_capture(capture).await;
                return ExitCode::from(EXIT_BAD_INPUT);
            }
        };
        let outcome = tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("SIGINT: stopping");
                None
            }
            reason = engine.stopped() => Some(reason),
        };
        let counters = engine.shutdown().await;
        // Printed, not logged: the counters are the run's result and must show with the default
        // log filter.
        eprintln!("tlpbridge run finished: {counters}");
        finish_capture(capture).await;
        match outcome {
            None => ExitCode::SUCCESS,
            Some(reason) => {
                eprintln!("tlpbridge run: {reason}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Writes the capture's statistics and closes it (off the async threads: the writer thread
/// drains its bounded queue first); reports lost records.
async fn finish_capture(writer: Option<CaptureWriter>) {
    let Some(writer) = writer else { return };
    match tokio::task::spawn_blocking(move || writer.finish()).await {
        Ok(Ok(summary)) if summary.dropped() > 0 => eprintln!(
            "tlpbridge run: the capture lost {} of {} records (the writer fell behind)",
            summary.dropped(),
            summary.dropped() + summary.tlp_records + summary.vfio_user_records
        ),
        Ok(Ok(summary)) => tracing::info!(?summary, "capture complete"),
        Ok(Err(e)) => eprintln!("tlpbridge run: {e}"),
        Err(e) => eprintln!("tlpbridge run: finishing the capture: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_sizes_and_durations_parse() {
        assert_eq!(parse_window("0x1000_0000:1M").ok(), None);
        assert_eq!(parse_window("0x10000000:1M").unwrap(), DmaWindow::read_write(0x1000_0000, 1 << 20));
        assert_eq!(parse_window("0:8T").unwrap().size, 8 << 40);
        assert!(parse_window("5:0").is_err());
        assert!(parse_window("0xffffffffffffffff:2").is_err());
        assert_eq!(parse_duration("50ms").unwrap(), Duration::from_millis(50));
        assert!(parse_duration("0s").is_err());
        assert!(parse_size("100").is_err());
        assert_eq!(parse_rcb("128").unwrap(), 128);
        assert_eq!(parse_queue_bytes("8M").unwrap(), 8 << 20);
        assert_eq!(parse_queue_bytes("1G").unwrap(), 1 << 30);
        assert_eq!(parse_queue_bytes("2097152").unwrap(), 2 << 20);
        assert!(parse_queue_bytes("1M").unwrap_err().contains("between 2M and 1G"));
        assert!(parse_queue_bytes("2G").is_err());
        assert!(parse_queue_bytes("lots").is_err());
    }
}

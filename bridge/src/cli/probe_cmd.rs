//! `tlpbridge probe`: connect to a vfio-user server, read what it says about its device and print
//! it (`docs/probe.md`). The probe only reads: no DMA_MAP (some servers, e.g. usbvfiod, panic on
//! a map without fd), no SET_IRQS, no config or BAR writes.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use transports::vfio_user::wire::irq_info_flags;
use transports::vfio_user::{Client, ClientConfig, DmaMode, NoDma, RegionCap as WireRegionCap};

use super::EXIT_BAD_INPUT;
use bridge::probe_report::{
    DeviceInfo, IrqFlags, IrqReport, NegotiatedCaps, ProbeReport, RegionCap, RegionFlags, RegionReport,
    SparseArea, region_index, render_json, render_text,
};

/// Config space bytes read when the config region is smaller than the PCIe extended space.
const CONVENTIONAL_CONFIG_LEN: u64 = 256;
/// Config space bytes read when the config region holds the PCIe extended space.
const EXTENDED_CONFIG_LEN: u64 = 4096;

#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// The vfio-user server's UNIX socket.
    #[arg(long, value_name = "PATH")]
    server: PathBuf,
    /// Print one JSON document (docs/probe.md) instead of text.
    #[arg(long)]
    json: bool,
    /// Longest wait for each reply from the server, e.g. 500ms, 5s, 1m (a bare number is
    /// seconds). The default is QEMU's `x-msg-timeout`.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
}

/// Why a probe failed; the text says what to fix.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("no vfio-user server socket at {}: it does not exist; start the server or fix --server", .0.display())]
    NoSocket(PathBuf),

    #[error(
        "nothing is listening on {}: connection refused (a stale socket of a server that exited?); \
         start the server or fix --server",
        .0.display()
    )]
    Refused(PathBuf),

    #[error(
        "cannot connect to {}: permission denied; run as a user allowed to open the socket",
        .0.display()
    )]
    PermissionDenied(PathBuf),

    #[error(
        "the vfio-user server at {} did not answer {what} within {timeout:?}; check that it is a \
         vfio-user server and not busy with another client, or raise --timeout",
        path.display()
    )]
    NoAnswer { path: PathBuf, what: String, timeout: Duration },

    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),

    #[error("{what}: {source}")]
    Client { what: String, source: transports::Error },

    #[error("cannot write the report to stdout: {0}")]
    Output(std::io::Error),
}

impl ProbeError {
    /// Exit status: 2 when the server cannot be reached or does not answer (fix the command line
    /// or start the server), 1 when the server answered but the probe still failed.
    fn exit_code(&self) -> ExitCode {
        match self {
            ProbeError::NoSocket(_)
            | ProbeError::Refused(_)
            | ProbeError::PermissionDenied(_)
            | ProbeError::NoAnswer { .. } => ExitCode::from(EXIT_BAD_INPUT),
            ProbeError::Runtime(_) | ProbeError::Client { .. } | ProbeError::Output(_) => ExitCode::FAILURE,
        }
    }

    /// Classifies a client error met while doing `what`.
    fn from_client(
        path: &Path,
        what: impl Into<String>,
        timeout: Duration,
        source: transports::Error,
    ) -> Self {
        let what = what.into();
        match &source {
            transports::Error::Connect { source: io, .. } => match io.kind() {
                ErrorKind::NotFound => ProbeError::NoSocket(path.to_owned()),
                ErrorKind::ConnectionRefused => ProbeError::Refused(path.to_owned()),
                ErrorKind::PermissionDenied => ProbeError::PermissionDenied(path.to_owned()),
                _ => ProbeError::Client { what, source },
            },
            transports::Error::Timeout { .. } => {
                ProbeError::NoAnswer { path: path.to_owned(), what, timeout }
            }
            _ => ProbeError::Client { what, source },
        }
    }
}

/// `500ms`, `5s`, `2m` or a bare number of seconds; zero is refused (every wait needs a bound).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 =
        number.parse().map_err(|_| format!("{text:?} is not a duration such as 500ms, 5s or 1m"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        other => return Err(format!("unknown unit {other:?} in {text:?}; use ms, s or m")),
    };
    match Duration::try_from_secs_f64(seconds) {
        Ok(d) if !d.is_zero() && d <= Duration::from_secs(3600) => Ok(d),
        _ => Err(format!("{text:?} must be more than 0 and at most 1 hour")),
    }
}

pub fn run(args: ProbeArgs) -> ExitCode {
    match probe_and_print(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

fn probe_and_print(args: &ProbeArgs) -> Result<(), ProbeError> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ProbeError::Runtime)?;
    let report = runtime.block_on(probe(&args.server, args.timeout))?;
    let text = if args.json {
        // Serialising a serde_json::Value cannot fail; fall back to the compact form regardless.
        let json = render_json(&report);
        serde_json::to_string_pretty(&json).unwrap_or_else(|_| json.to_string()) + "\n"
    } else {
        render_text(&report)
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(ProbeError::Output)
}

/// Connects, negotiates, gathers the report and closes the connection, whatever happened.
async fn probe(path: &Path, timeout: Duration) -> Result<ProbeReport, ProbeError> {
    let config = ClientConfig {
        request_timeout: timeout,
        reset_timeout: timeout,
        dma: DmaMode::Disabled,
        ..ClientConfig::default()
    };
    let (client, _events) = Client::connect(path, config, NoDma)
        .await
        .map_err(|e| ProbeError::from_client(path, "VERSION", timeout, e))?;
    let report = gather(&client, path, timeout).await;
    client.close().await;
    report
}

async fn gather(client: &Client, path: &Path, timeout: Duration) -> Result<ProbeReport, ProbeError> {
    let fail = |what: String| move |e| ProbeError::from_client(path, what, timeout, e);
    let negotiated = client.negotiated();
    let server = &negotiated.server;
    let capabilities = NegotiatedCaps {
        max_msg_fds: server.max_msg_fds,
        max_data_xfer_size: server.max_data_xfer_size,
        max_dma_maps: server.max_dma_maps,
        pgsizes: server.pgsizes,
        twin_socket: negotiated.twin_socket,
        write_multiple: server.write_multiple,
        migration: server.migration.clone(),
    };

    // The client refuses replies above QEMU's bounds (100 regions, 50 IRQ indices), so the loops
    // below are bounded.
    let info = client.device_info().await.map_err(fail("DEVICE_GET_INFO".to_owned()))?;
    let device = DeviceInfo {
        flags: info.flags,
        reset_supported: info.resettable(),
        is_pci: info.is_pci(),
        num_regions: info.num_regions,
        num_irqs: info.num_irqs,
    };

    let mut regions = Vec::new();
    for index in 0..info.num_regions {
        let region = client
            .region_info(index)
            .await
            .map_err(fail(format!("DEVICE_GET_REGION_INFO for region {index}")))?;
        let flags = RegionFlags {
            readable: region.readable(),
            writable: region.writable(),
            mmap: region.mmap_offered(),
        };
        let caps = region.caps.iter().map(region_cap).collect();
        regions.push(RegionReport::new(index, region.size, flags, caps));
    }

    let mut irqs = Vec::new();
    for index in 0..info.num_irqs {
        let irq =
            client.irq_info(index).await.map_err(fail(format!("DEVICE_GET_IRQ_INFO for index {index}")))?;
        let flags = IrqFlags {
            eventfd: irq.flags & irq_info_flags::EVENTFD != 0,
            maskable: irq.flags & irq_info_flags::MASKABLE != 0,
            automasked: irq.flags & irq_info_flags::AUTOMASKED != 0,
            noresize: irq.flags & irq_info_flags::NORESIZE != 0,
        };
        irqs.push(IrqReport::new(index, irq.count, flags));
    }

    // The READ flag is not consulted: libvfio-user (2022) reports the config region without
    // flags yet serves reads of it, and QEMU's client reads it regardless too.
    let config_len =
        regions.iter().find(|r| r.index == region_index::CONFIG).map_or(0, |r| config_image_len(r.size));
    let config = client
        .config_read(0, config_len as usize)
        .await
        .map_err(fail(format!("reading {config_len} bytes of config space (region 7)")))?;

    Ok(ProbeReport {
        server: path.display().to_string(),
        version: (negotiated.major, negotiated.minor),
        capabilities,
        device,
        regions,
        irqs,
        config,
    })
}

/// How much of a config region of `size` bytes to read: 4096 for PCIe's extended space, 256
/// otherwise, less if the region is smaller still (the report flags the short image).
fn config_image_len(size: u64) -> u64 {
    if size >= EXTENDED_CONFIG_LEN { EXTENDED_CONFIG_LEN } else { size.min(CONVENTIONAL_CONFIG_LEN) }
}

fn region_cap(cap: &WireRegionCap) -> RegionCap {
    match cap {
        WireRegionCap::SparseMmap(areas) => RegionCap::SparseMmap {
            areas: areas.iter().map(|a| SparseArea { offset: a.offset, size: a.size }).collect(),
        },
        WireRegionCap::Type { region_type, subtype } => {
            RegionCap::Type { region_type: *region_type, subtype: *subtype }
        }
        WireRegionCap::Unknown { id, version } => RegionCap::Unknown { id: *id, version: *version },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("2 hours").is_err());
        assert!(parse_duration("7200").is_err());
    }

    #[test]
    fn config_length_follows_the_region_size() {
        assert_eq!(config_image_len(4096), 4096);
        assert_eq!(config_image_len(8192), 4096);
        assert_eq!(config_image_len(256), 256);
        assert_eq!(config_image_len(1024), 256);
        assert_eq!(config_image_len(64), 64);
        assert_eq!(config_image_len(0), 0);
    }
}

//! `tlpbridge sim device|rc`: the co-simulation tools.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use sim::device::{DmaEngine, DmaEngineConfig, ServerConfig};

use super::EXIT_BAD_INPUT;

mod rc;

#[derive(Debug, clap::Args)]
pub struct SimArgs {
    #[command(subcommand)]
    command: SimCommand,
}

#[derive(Debug, clap::Subcommand)]
enum SimCommand {
    /// Run the sample vfio-user device (a DMA-engine card) until SIGTERM/Ctrl-C.
    Device(DeviceArgs),
    /// Run the reference root complex: enumerate the device behind a bridge over the sim link
    /// and run a workload script (docs/rc-script.md).
    Rc(rc::RcArgs),
}

#[derive(Debug, clap::Args)]
struct DeviceArgs {
    /// UNIX socket path to listen on (a stale socket file is replaced; removed on exit).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// Refuse the twin socket: DMA_READ/DMA_WRITE go on the main socket.
    #[arg(long)]
    no_twin_socket: bool,
    /// MSI-X table entries (1..=128).
    #[arg(long, default_value_t = 8, value_name = "N")]
    msix_vectors: u16,
    /// MSI vectors (1, 2, 4, 8, 16 or 32).
    #[arg(long, default_value_t = 4, value_name = "N")]
    msi_vectors: u8,
    /// Longest wait for the client's reply to one DMA request, in milliseconds.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    dma_timeout_ms: u64,
    /// Largest REGION_READ/WRITE and DMA chunk, in bytes (advertised max_data_xfer_size).
    #[arg(long, default_value_t = 1024 * 1024, value_name = "BYTES")]
    max_data_xfer_size: u32,
    /// Largest copy the card accepts (its MAX_LENGTH register), in bytes.
    #[arg(long, default_value_t = 1024 * 1024, value_name = "BYTES")]
    max_copy_length: u32,
    /// Max Payload Size Supported that the card advertises (128, 256, 512, 1024, 2048 or 4096
    /// bytes); the root port programs at most this.
    #[arg(long, default_value_t = 256, value_name = "BYTES")]
    max_payload_supported: u16,
    /// Worker threads of the server's async runtime, 1..=64 (docs/performance.md, "Fourth
    /// round": one measured at least as fast as two).
    #[arg(long, value_name = "N", default_value_t = bridge::runtime::DEFAULT_THREADS, value_parser = super::parse_threads)]
    threads: usize,
}

pub fn run(args: SimArgs) -> ExitCode {
    match args.command {
        SimCommand::Device(args) => run_device(args),
        SimCommand::Rc(args) => rc::run(args),
    }
}

fn run_device(args: DeviceArgs) -> ExitCode {
    if args.dma_timeout_ms == 0 {
        eprintln!("tlpbridge sim device: --dma-timeout-ms must be at least 1");
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    let card = match DmaEngine::new(DmaEngineConfig {
        msi_vectors: args.msi_vectors,
        msix_vectors: args.msix_vectors,
        max_length: args.max_copy_length,
        max_payload_supported: args.max_payload_supported,
    }) {
        Ok(card) => Arc::new(card),
        Err(e) => {
            eprintln!("tlpbridge sim device: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let config = ServerConfig {
        offer_twin_socket: !args.no_twin_socket,
        max_data_xfer_size: args.max_data_xfer_size,
        dma_timeout: Duration::from_millis(args.dma_timeout_ms),
        ..ServerConfig::default()
    };
    let runtime = match bridge::runtime::build(args.threads, "tlpbridge-device") {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tlpbridge sim device: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| format!("cannot install the SIGTERM handler: {e}"))?;
        let shutdown = async move {
            tokio::select! {
                _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
            }
        };
        eprintln!("tlpbridge sim device: listening on {}", args.socket.display());
        sim::device::serve(&args.socket, card, config, shutdown).await.map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tlpbridge sim device: {e}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

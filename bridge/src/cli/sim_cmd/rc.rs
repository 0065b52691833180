//! `tlpbridge sim rc`: the reference root complex, running a workload script against a bridge
//! over the sim link (see docs/rc-script.md and docs/sim-protocol.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use sim::link::wire::hello_flags;
use sim::link::{HelloParams, SimAddress, SimMode, SimulatorConfig};
use sim::rc::{RcConfig, Script, Span};
use tlp::split::LinkParams;

use crate::cli::EXIT_BAD_INPUT;

#[derive(Debug, clap::Args)]
pub struct RcArgs {
    /// sim://HOST:PORT (connect to a listening bridge) or sim-listen://HOST:PORT (wait for one).
    #[arg(long, value_name = "ADDRESS", value_parser = parse_address)]
    link: SimAddress,
    /// The workload script (docs/rc-script.md).
    #[arg(long, value_name = "FILE")]
    script: PathBuf,
    /// lockstep: every time step waits for the bridge's acknowledgement (repeatable traces);
    /// free: time runs on without waiting.
    #[arg(long, value_enum, default_value_t = Mode::Lockstep)]
    mode: Mode,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Max_Payload_Size in bytes (128..=4096, a power of two).
    #[arg(long, default_value_t = 128, value_name = "BYTES")]
    mps: u16,
    /// Max_Read_Request_Size in bytes (128..=4096, a power of two).
    #[arg(long, default_value_t = 512, value_name = "BYTES")]
    mrrs: u16,
    /// Read Completion Boundary of the root complex's completions (64 or 128).
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    rcb: u16,
    /// Host memory size (bus addresses 0..SIZE); suffixes K, M, G.
    #[arg(long, default_value = "64M", value_name = "SIZE", value_parser = parse_size)]
    host_memory: u64,
    /// Simulated picoseconds per cycle (the link's tick).
    #[arg(long, default_value_t = 1000, value_name = "PS")]
    ps_per_cycle: u32,
    /// Cycles from a DMA read to its first completion.
    #[arg(long, default_value_t = 100, value_name = "CYCLES")]
    completion_latency: u64,
    /// The root complex's completion timeout: cycles, or a simulated duration (50ms, 10us).
    #[arg(long, default_value = "50ms", value_name = "DURATION")]
    completion_timeout: Span,
    /// How long a configuration request answered with CRS (device not ready) keeps being
    /// retried, in simulated time from the first CRS: cycles or a duration (1s, 200ms).
    #[arg(long, default_value = "1s", value_name = "DURATION")]
    crs_timeout: Span,
    /// Cycles per time step.
    #[arg(long, default_value_t = 100, value_name = "CYCLES")]
    step_cycles: u64,
    /// Free-running only: wall-clock microseconds to sleep per step (0: just yield).
    #[arg(long, default_value_t = 0, value_name = "US")]
    pace_us: u64,
    /// Longest wall-clock wait for the bridge: connecting or being connected to, and each
    /// lockstep acknowledgement.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    wait_s: u64,
    /// Worker threads of the root complex's async runtime, 1..=64.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = crate::cli::parse_threads)]
    threads: usize,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Mode {
    Lockstep,
    Free,
}

fn parse_address(text: &str) -> Result<SimAddress, String> {
    SimAddress::parse(text).map_err(|e| e.to_string())
}

fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, scale) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&t[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    let n = match digits.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => digits.parse::<u64>(),
    }
    .map_err(|_| format!("{text:?} is not a size (e.g. 65536, 64K, 64M, 1G)"))?;
    n.checked_mul(scale).filter(|v| *v > 0).ok_or_else(|| format!("{text:?} is not a usable size"))
}

pub fn run(args: RcArgs) -> ExitCode {
    let bad = |message: String| {
        eprintln!("tlpbridge sim rc: {message}");
        ExitCode::from(EXIT_BAD_INPUT)
    };
    let link = match LinkParams::new(args.mps, args.mrrs, args.rcb) {
        Ok(link) => link,
        Err(e) => return bad(e.to_string()),
    };
    if args.ps_per_cycle == 0 || args.step_cycles == 0 {
        return bad("--ps-per-cycle and --step-cycles must be at least 1".into());
    }
    let completion_timeout = args.completion_timeout.cycles(args.ps_per_cycle);
    let crs_timeout_ps =
        args.crs_timeout.cycles(args.ps_per_cycle).saturating_mul(u64::from(args.ps_per_cycle));
    let text = match std::fs::read_to_string(&args.script) {
        Ok(text) => text,
        Err(e) => return bad(format!("cannot read {}: {e}", args.script.display())),
    };
    let script = match Script::parse(&args.script.display().to_string(), &text) {
        Ok(script) => script,
        Err(e) => return bad(e.to_string()),
    };
    let mode = match args.mode {
        Mode::Lockstep => SimMode::Lockstep,
        Mode::Free => SimMode::FreeRunning,
    };
    let wait = Duration::from_secs(args.wait_s.max(1));
    let simulator = SimulatorConfig {
        hello: HelloParams {
            mode,
            ps_per_tick: args.ps_per_cycle,
            link,
            tag_flags: hello_flags::EXTENDED_TAG,
            link_latency_ticks: 0,
        },
        connect_timeout: wait,
        ack_timeout: wait,
        ..SimulatorConfig::default()
    };
    let rc = RcConfig {
        link,
        host_memory_size: args.host_memory,
        completion_latency: args.completion_latency,
        completion_timeout: completion_timeout.max(1),
        step_cycles: args.step_cycles,
        pace: (args.pace_us > 0).then(|| Duration::from_micros(args.pace_us)),
        ps_per_cycle: args.ps_per_cycle,
        crs_timeout: Duration::from_nanos(crs_timeout_ps.div_ceil(1000)),
        ..RcConfig::default()
    };
    let runtime = match bridge::runtime::build(args.threads, "tlpbridge-rc") {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tlpbridge sim rc: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(sim::rc::run_over_sim_link(&args.link, &simulator, rc, &script)) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(json) => println!("{json}"),
                    Err(e) => {
                        eprintln!("tlpbridge sim rc: cannot encode the report: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{report}");
            }
            if report.passed {
                ExitCode::SUCCESS
            } else {
                if let Some(error) = &report.error {
                    eprintln!("tlpbridge sim rc: {error}");
                }
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("tlpbridge sim rc: {e}");
            ExitCode::FAILURE
        }
    }
}

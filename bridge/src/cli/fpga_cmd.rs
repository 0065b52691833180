//! `tlpbridge fpga emulate`: the FPGA half of a link in software (docs/fpga-link.md), hosting the
//! reference root complex, with fault injection.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use fpga::dll::DllConfig;
use fpga::emulator::{
    EmulatorConfig, EmulatorReport, PtyPort, emulator_rc_config, fpga_side_over_link, run_rc, start_fpga_side,
};
use fpga::faults::FaultConfig;
use fpga::nettlp::{NetTlpConfig, PORT_BASE};
use sim::rc::Script;
use tlp::split::LinkParams;

use super::EXIT_BAD_INPUT;

#[derive(Debug, clap::Args)]
pub struct FpgaArgs {
    #[command(subcommand)]
    command: FpgaCommand,
}

#[derive(Debug, clap::Subcommand)]
enum FpgaCommand {
    /// Play the FPGA: a pty (serial framing) or UDP (NetTLP) root port driven by the reference
    /// root complex running a workload script; prints the bridge's --link argument first.
    Emulate(EmulateArgs),
}

#[derive(Debug, clap::Args)]
struct EmulateArgs {
    /// Offer a pseudo-terminal; the bridge opens it as `serial:PATH` (printed on stdout).
    #[arg(long, conflicts_with = "udp", required_unless_present = "udp")]
    pty: bool,
    /// With --pty: also make PATH a symlink to the pty, a name that stays the same across runs.
    #[arg(long, value_name = "PATH", requires = "pty")]
    pty_link: Option<PathBuf>,
    /// Play a NetTLP adapter on UDP: bind LOCAL_IP:PORT..PORT+15.
    #[arg(long, value_name = "LOCAL_IP:PORT")]
    udp: Option<SocketAddrV4>,
    /// With --udp: the bridge's address and first port (default port 0x3000).
    #[arg(long, value_name = "IP[:PORT]", requires = "udp")]
    remote: Option<String>,
    /// The workload script (docs/rc-script.md); default: just `enumerate`.
    #[arg(long, value_name = "FILE")]
    script: Option<PathBuf>,
    /// Bit error rate injected on the wire, both directions (e.g. 1e-4).
    #[arg(long, default_value_t = 0.0, value_name = "RATE")]
    ber: f64,
    /// Probability that a frame is lost, both directions.
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    drop_frames: f64,
    /// Probability that a byte is lost, both directions.
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    drop_bytes: f64,
    /// Extra latency of every frame the emulator sends (e.g. 2ms, 500us).
    #[arg(long, default_value = "0", value_name = "DURATION", value_parser = parse_duration)]
    delay: Duration,
    /// Seed of the fault injector.
    #[arg(long, default_value_t = 1, value_name = "N")]
    seed: u64,
    /// Receive buffers (TLP frames) the emulated FPGA advertises.
    #[arg(long, default_value_t = 8, value_name = "N")]
    credits: u16,
    /// Stamp TLP frames with the emulator's nanosecond counter.
    #[arg(long)]
    timestamps: bool,
    /// Replay timeout of the emulator's data-link layer, in milliseconds.
    #[arg(long, default_value_t = 200, value_name = "MS")]
    replay_ms: u64,
    /// Keep-alive interval it announces, in milliseconds.
    #[arg(long, default_value_t = 100, value_name = "MS")]
    keepalive_ms: u16,
    /// Max_Payload_Size and Max_Read_Request_Size the root complex programs (bytes).
    #[arg(long, default_value_t = 128, value_name = "BYTES")]
    mps: u16,
    #[arg(long, default_value_t = 512, value_name = "BYTES")]
    mrrs: u16,
    /// Read Completion Boundary of the root complex's completions (64 or 128).
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    rcb: u16,
    /// Once the link is up, signal a hot reset (a secondary bus reset at the root port) and wait
    /// for the link to come back before running the script: the bridge resets the device, so
    /// the script starts from a device at its power-on state (docs/fpga-link.md section 3).
    #[arg(long, requires = "pty")]
    hot_reset: bool,
    /// Longest wait for the bridge to bring the link up, in seconds.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    wait_s: u64,
    /// Print the root complex's report as JSON on stdout (after the link line).
    #[arg(long)]
    json: bool,
}

/// `N`, `Nns`, `Nus`, `Nms` or `Ns`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("{text:?} is not a duration (e.g. 500us, 2ms, 1s)"))?;
    match unit {
        "" | "ms" => Ok(Duration::from_millis(n)),
        "ns" => Ok(Duration::from_nanos(n)),
        "us" => Ok(Duration::from_micros(n)),
        "s" => Ok(Duration::from_secs(n)),
        other => Err(format!("unknown unit {other:?} in {text:?} (ns, us, ms, s)")),
    }
}

pub fn run(args: FpgaArgs) -> ExitCode {
    match args.command {
        FpgaCommand::Emulate(args) => emulate(args),
    }
}

fn emulate(args: EmulateArgs) -> ExitCode {
    let bad = |message: String| {
        eprintln!("tlpbridge fpga emulate: {message}");
        ExitCode::from(EXIT_BAD_INPUT)
    };
    let link = match LinkParams::new(args.mps, args.mrrs, args.rcb) {
        Ok(link) => link,
        Err(e) => return bad(e.to_string()),
    };
    let faults = FaultConfig {
        bit_error_rate: args.ber,
        drop_byte_rate: args.drop_bytes,
        drop_frame_rate: args.drop_frames,
        delay: args.delay,
        seed: args.seed,
    };
    if let Err(e) = faults.validate() {
        return bad(e);
    }
    if args.udp.is_some() && !faults.is_clean() {
        return bad(
            "fault injection applies to the serial framing (--pty); NetTLP has no recovery to test".into()
        );
    }
    if args.credits == 0 || args.credits > fpga::dll::MAX_CREDITS || args.keepalive_ms == 0 {
        return bad("--credits must be 1..=32767 and --keepalive-ms at least 1".into());
    }
    let script = match &args.script {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Script::parse(&path.display().to_string(), &text),
            Err(e) => return bad(format!("cannot read {}: {e}", path.display())),
        },
        None => Script::parse("(default)", "enumerate\n"),
    };
    let script = match script {
        Ok(script) => script,
        Err(e) => return bad(e.to_string()),
    };
    let mut dll = DllConfig::new(args.credits);
    dll.replay_timeout = Duration::from_millis(args.replay_ms.max(1));
    dll.hello.keepalive_ms = args.keepalive_ms;
    dll.hello.mps = args.mps;
    dll.hello.mrrs = args.mrrs;
    dll.hello.rcb = args.rcb as u8;
    let config = EmulatorConfig {
        dll,
        faults,
        timestamps: args.timestamps,
        rc: sim::rc::RcConfig { link, ..emulator_rc_config() },
        ..EmulatorConfig::default()
    };
    let remote = match (&args.udp, &args.remote) {
        (Some(_), Some(r)) => match parse_remote(r) {
            Ok(r) => Some(r),
            Err(e) => return bad(e),
        },
        (Some(_), None) => Some(SocketAddrV4::new(Ipv4Addr::LOCALHOST, PORT_BASE)),
        _ => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tlpbridge fpga emulate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let wait = Duration::from_secs(args.wait_s.max(1));
    let result = runtime.block_on(async {
        let port = match (args.udp, remote) {
            (Some(local), Some(remote)) => {
                let net = NetTlpConfig {
                    remote: *remote.ip(),
                    local: *local.ip(),
                    local_port_base: local.port(),
                    remote_port_base: remote.port(),
                };
                let (link, status) = fpga::nettlp::open(net).await.map_err(|e| e.to_string())?;
                // The bridge's remote is this emulator (0.0.0.0 binds every address; name loopback).
                let me = if local.ip().is_unspecified() { Ipv4Addr::LOCALHOST } else { *local.ip() };
                announce(&format!(
                    "nettlp:{me}?port-base={:#x}&remote-port-base={:#x}",
                    remote.port(),
                    local.port()
                ));
                (fpga_side_over_link(link, status, &config), None)
            }
            _ => {
                let mut pty = PtyPort::open(args.pty_link.as_deref()).map_err(|e| e.to_string())?;
                announce(&pty.link_spec());
                let device = pty.take_device().map_err(|e| e.to_string())?;
                (start_fpga_side(device, &config), Some(pty))
            }
        };
        let (mut fpga_port, _pty) = port;
        let interrupted = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        let workload = async {
            if args.hot_reset {
                fpga_port.wait_up(wait).await.map_err(|e| e.to_string())?;
                fpga_port.hot_reset(wait).await.map_err(|e| e.to_string())?;
                eprintln!("tlpbridge fpga emulate: hot reset signalled; the link is up again");
            }
            run_rc(fpga_port, &config, &script, wait)
                .await
                .map(|(report, _port)| report)
                .map_err(|e| e.to_string())
        };
        tokio::select! {
            r = workload => r,
            _ = interrupted => Err("interrupted".to_owned()),
        }
    });
    match result {
        Ok(report) => finish(&report, args.json),
        Err(e) => {
            eprintln!("tlpbridge fpga emulate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_remote(text: &str) -> Result<SocketAddrV4, String> {
    if let Ok(a) = text.parse::<SocketAddrV4>() {
        return Ok(a);
    }
    if let Ok(ip) = text.parse::<Ipv4Addr>() {
        return Ok(SocketAddrV4::new(ip, PORT_BASE));
    }
    if let Some((ip, port)) = text.rsplit_once(':') {
        if let (Ok(ip), Some(port)) = (ip.parse::<Ipv4Addr>(), fpga::nettlp::parse_port(port)) {
            return Ok(SocketAddrV4::new(ip, port));
        }
    }
    Err(format!("--remote {text:?}: expected IPV4 or IPV4:PORT"))
}

/// The bridge's link argument, first line on stdout, flushed so a script can read it at once.
fn announce(spec: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{spec}");
    let _ = out.flush();
}

fn finish(report: &EmulatorReport, json: bool) -> ExitCode {
    if json {
        match serde_json::to_string_pretty(&report.rc) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("tlpbridge fpga emulate: cannot encode the report: {e}"),
        }
        eprintln!("{}", report_link_lines(report));
    } else {
        println!("{report}");
    }
    if report.rc.passed {
        ExitCode::SUCCESS
    } else {
        if let Some(error) = &report.rc.error {
            eprintln!("tlpbridge fpga emulate: {error}");
        }
        ExitCode::FAILURE
    }
}

fn report_link_lines(report: &EmulatorReport) -> String {
    let text = report.to_string();
    text.lines().filter(|l| l.starts_with("link") || l.starts_with("faults")).collect::<Vec<_>>().join("\n")
}

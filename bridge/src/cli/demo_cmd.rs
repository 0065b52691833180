//! `tlpbridge demo`: the sample device, the bridge and the reference root complex in one process,
//! running the built-in script (or `--script FILE`); see docs/demo.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bridge::demo::{self, DemoOptions};
use sim::link::SimMode;

use super::EXIT_BAD_INPUT;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Keep the capture of every TLP and vfio-user message in this pcapng file (read it with
    /// `tlpbridge pcap show FILE` or Wireshark).
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,
    /// Run this root-complex script (docs/rc-script.md) instead of the built-in one.
    #[arg(long, value_name = "FILE", conflicts_with = "print_script")]
    script: Option<PathBuf>,
    /// Print the built-in script and exit.
    #[arg(long)]
    print_script: bool,
    /// lockstep: every simulated time step waits for the bridge (repeatable transcript);
    /// free: simulated time runs on without waiting.
    #[arg(long, value_enum, default_value_t = Mode::Lockstep)]
    mode: Mode,
    /// Print the outcome (checks, transcript, counts, latencies, the root complex's report) as
    /// JSON on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// Wall-clock limit for the whole demo, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout_s: u64,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Mode {
    Lockstep,
    Free,
}

pub fn run(args: DemoArgs) -> ExitCode {
    if args.print_script {
        print!("{}", demo::BUILTIN_SCRIPT);
        return ExitCode::SUCCESS;
    }
    let script = match &args.script {
        Some(path) => demo::load_script(path),
        None => demo::builtin_script(),
    };
    let script = match script {
        Ok(script) => script,
        Err(e) => {
            eprintln!("tlpbridge demo: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let options = DemoOptions {
        script,
        mode: match args.mode {
            Mode::Lockstep => SimMode::Lockstep,
            Mode::Free => SimMode::FreeRunning,
        },
        pcap: args.pcap.clone(),
        watchdog: Duration::from_secs(args.timeout_s),
    };
    // One thread: the device works while the root complex waits for each lockstep
    // acknowledgement, in the same order on every run, so the transcript is repeatable.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tlpbridge demo: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !args.json {
        println!(
            "tlpbridge demo: sample DMA-engine card <- vfio-user -> tlpbridge <- sim link ({} mode) -> reference root complex",
            match options.mode {
                SimMode::Lockstep => "lockstep",
                SimMode::FreeRunning => "free-running",
            }
        );
        println!("script: {}", options.script.file);
    }
    let result = runtime.block_on(demo::run(&options));
    // Whatever is still running (only after a watchdog stop or an early error) is cancelled here.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(outcome) => {
            if args.json {
                match serde_json::to_string_pretty(&outcome) {
                    Ok(json) => println!("{json}"),
                    Err(e) => {
                        eprintln!("tlpbridge demo: cannot encode the outcome: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{outcome}");
            }
            if outcome.passed {
                ExitCode::SUCCESS
            } else {
                for check in outcome.checks.iter().filter(|c| !c.passed) {
                    eprintln!("tlpbridge demo: FAILED {}: {}", check.name, check.detail);
                }
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("tlpbridge demo: {e}");
            ExitCode::FAILURE
        }
    }
}

//! `tlpbridge bench`: the end-to-end performance benchmark (docs/performance.md).

use std::process::ExitCode;

use bridge::bench::{BenchOptions, Section, run as run_bench};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// CI-sized run: fewer samples and smaller transfers.
    #[arg(long)]
    quick: bool,
    /// Print the report as one JSON document instead of a Markdown table.
    #[arg(long)]
    json: bool,
    /// Worker threads of the bridge's runtime, as `tlpbridge run --threads` (to compare).
    #[arg(long, value_name = "N", default_value_t = bridge::runtime::DEFAULT_THREADS, value_parser = super::parse_threads)]
    bridge_threads: usize,
    /// Run only these sections (repeat, or separate with commas); all without it. For
    /// profiling one part, e.g. `--section mmio` under `perf record`.
    #[arg(long, value_name = "SECTION", value_enum, value_delimiter = ',')]
    section: Vec<Section>,
}

pub fn run(args: BenchArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tlpbridge bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The bridge's own memory is measured on this program run as `tlpbridge run`.
    let bridge_program = match std::env::current_exe() {
        Ok(path) => Some(path),
        Err(e) => {
            eprintln!(
                "tlpbridge bench: cannot find this program ({e}); the bridge process's memory is left out"
            );
            None
        }
    };
    let options = BenchOptions {
        quick: args.quick,
        bridge_threads: args.bridge_threads,
        bridge_program,
        sections: args.section,
    };
    let report = match runtime.block_on(run_bench(options)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("tlpbridge bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("tlpbridge bench: cannot render JSON: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", report.render_table());
    }
    ExitCode::SUCCESS
}

//! The reference root complex: a cycle-level model of a root complex with host memory that
//! speaks the sim protocol (or any [`RootPortIo`]). It enumerates the device like firmware,
//! serves its DMA from host memory, watches an interrupt window for MSI/MSI-X writes, tracks
//! INTx messages, and runs a workload script (`docs/rc-script.md`).
//!
//! Time: every wait (completion timeout, `wait-irq`, `sleep`) counts simulated cycles. The root
//! complex advances time in steps of `step_cycles`; in lockstep each step waits for the bridge's
//! acknowledgement, free-running it sleeps `pace` of wall time per step (or just yields).

mod complex;
mod enumerate;
mod io;
mod memory;
mod report;
mod run;
mod script;

pub use complex::{Counters, IrqEvent, MSIX_WINDOW_OFFSET, RcConfig, RootComplex};
pub use enumerate::IrqMode;
pub use io::{MemoryRootPort, RootPortIo};
pub use memory::HostMemory;
pub use report::{
    BarReport, CapabilityReport, Enumeration, IrqKind, IrqReport, LatencyStats, Report, RomReport, StepReport,
};
pub use run::run_over_sim_link;
pub use script::{Command, MAX_HOST_SPAN, Pattern, Script, Span, Step, Target, run_script};

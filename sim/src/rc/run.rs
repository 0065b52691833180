//! Running a script against a bridge over the TCP sim link (what `tlpbridge sim rc` does).

use super::complex::{RcConfig, RootComplex};
use super::report::Report;
use super::script::{Script, run_script};
use crate::error::{Error, Result};
use crate::link::{SimAddress, SimulatorConfig, SimulatorEnd};

/// Connects (or listens) as the simulator, runs `script` and closes the link orderly. The
/// simulator's tick is the root complex's cycle: `simulator.hello.ps_per_tick` must equal
/// `rc.ps_per_cycle`. Link errors before the script starts are errors; failures during the
/// script are in the report.
pub async fn run_over_sim_link(
    address: &SimAddress,
    simulator: &SimulatorConfig,
    rc: RcConfig,
    script: &Script,
) -> Result<Report> {
    if simulator.hello.ps_per_tick != rc.ps_per_cycle {
        return Err(Error::Rc {
            line: None,
            message: format!(
                "the link's tick ({} ps) and the root complex's cycle ({} ps) must be the same",
                simulator.hello.ps_per_tick, rc.ps_per_cycle
            ),
        });
    }
    let end = match address {
        SimAddress::Connect(a) => SimulatorEnd::connect(a, simulator).await?,
        SimAddress::Listen(a) => SimulatorEnd::listen(a, simulator).await?,
    };
    tracing::info!(%address, mode = %end.mode(), "rc: link up");
    let mut complex = RootComplex::new(end, rc)?;
    let report = run_script(&mut complex, script).await;
    if let Err(e) = complex.into_io().close().await {
        tracing::warn!(error = %e, "rc: the link did not close orderly");
    }
    Ok(report)
}

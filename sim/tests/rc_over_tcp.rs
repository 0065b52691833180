//! The root complex as `tlpbridge sim rc` runs it: over the TCP sim link in lockstep, against
//! the test endpoint serving the bridge side of the link.

mod rc_endpoint;

use std::time::Duration;

use rc_endpoint::Options;
use sim::link::wire::{self, hello_flags};
use sim::link::{BridgeConfig, HelloParams, SimAddress, SimListener, SimMode, SimulatorConfig};
use sim::rc::{RcConfig, Script, run_over_sim_link};
use tlp::split::LinkParams;

const SCRIPT: &str = "\
enumerate
expect-id 1de5:0001
fill host 0x2000 300 pattern byte 0x5a
write64 bar0+0x08 0x2000
write64 bar0+0x10 0x8000
write32 bar0+0x18 300
write32 bar0+0x20 1
wait-irq msix 0 timeout 50us
check host 0x8000 300 pattern byte 0x5a
read32 bar0+0x28 expect 1
";

async fn run_once(mode: SimMode) -> sim::rc::Report {
    let link = LinkParams::new(128, 512, 64).unwrap();
    let listener = SimListener::bind("127.0.0.1:0").await.unwrap();
    let address = SimAddress::Connect(listener.local_addr().unwrap().to_string());
    let bridge = BridgeConfig {
        hello: HelloParams {
            mode,
            ps_per_tick: wire::ANY_TICK,
            link,
            tag_flags: hello_flags::EXTENDED_TAG,
            link_latency_ticks: wire::ANY_LATENCY,
        },
        ..BridgeConfig::default()
    };
    let simulator = SimulatorConfig {
        hello: HelloParams {
            mode,
            ps_per_tick: 1000,
            link,
            tag_flags: hello_flags::EXTENDED_TAG,
            link_latency_ticks: 0,
        },
        ack_timeout: Duration::from_secs(10),
        ..SimulatorConfig::default()
    };
    let rc = RcConfig { link, host_memory_size: 1 << 20, ..RcConfig::default() };
    let script = Script::parse("tcp.rcs", SCRIPT).unwrap();
    let endpoint = async {
        let link = listener.accept_bridge(&bridge).await.unwrap();
        rc_endpoint::spawn_on(link, Options::default())
    };
    let (report, _endpoint) = tokio::join!(
        async {
            tokio::time::timeout(
                Duration::from_secs(60),
                run_over_sim_link(&address, &simulator, rc, &script),
            )
            .await
        },
        endpoint
    );
    report.unwrap().unwrap()
}

#[tokio::test]
async fn lockstep_script_passes_over_tcp_and_its_trace_repeats() {
    let first = run_once(SimMode::Lockstep).await;
    assert!(first.passed, "{first}");
    assert_eq!(first.dma_read_bytes, 300);
    let second = run_once(SimMode::Lockstep).await;
    assert!(second.passed, "{second}");
    // Lockstep: the same TLPs at the same simulated cycles, run after run.
    assert_eq!(first.final_cycle, second.final_cycle);
    assert_eq!(first.tlps_sent, second.tlps_sent);
    assert_eq!(first.interrupts, second.interrupts);
    let cycles: Vec<u64> = first.steps.iter().map(|s| s.cycles).collect();
    assert_eq!(cycles, second.steps.iter().map(|s| s.cycles).collect::<Vec<_>>());
}

#[tokio::test]
async fn free_running_script_passes_over_tcp() {
    let report = run_once(SimMode::FreeRunning).await;
    assert!(report.passed, "{report}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["enumeration"]["bars"][0]["address"], 0x8000_0000u64);
    assert_eq!(json["passed"], true);
}

//! The reference root complex over the in-memory link against a tiny endpoint: enumeration,
//! scripts passing and failing, DMA with RCB splitting, UR outside memory, interrupts, and the
//! completion timeout counted in simulated cycles.

mod rc_endpoint;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rc_endpoint::{Observed, Options};
use sim::rc::{
    BarReport, IrqKind, MemoryRootPort, RcConfig, Report, RomReport, RootComplex, Script, run_script,
};
use tlp::config_space::{Command, header};
use tlp::split::LinkParams;

fn config() -> RcConfig {
    RcConfig {
        link: LinkParams::new(256, 512, 64).unwrap(),
        host_memory_size: 16 << 20,
        completion_timeout: 100_000,
        ..RcConfig::default()
    }
}

fn root_complex(options: Options, config: RcConfig) -> (RootComplex<MemoryRootPort>, Arc<Mutex<Observed>>) {
    let (rp, observed, _task) = rc_endpoint::spawn(options);
    let io = MemoryRootPort::new(rp, config.ps_per_cycle, true, Duration::from_secs(10)).unwrap();
    (RootComplex::new(io, config).unwrap(), observed)
}

async fn run(options: Options, config: RcConfig, text: &str) -> (Report, Arc<Mutex<Observed>>) {
    let (mut rc, observed) = root_complex(options, config);
    let script = Script::parse("test.rcs", text).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(60), run_script(&mut rc, &script)).await.unwrap();
    (report, observed)
}

#[tokio::test]
async fn enumeration_sizes_and_assigns_every_bar_kind_and_programs_the_device() {
    let (mut rc, observed) = root_complex(Options::default(), config());
    let e = rc.enumerate().await.unwrap();
    assert_eq!((e.vendor_id, e.device_id, e.class_code, e.subsystem_id), (0x1de5, 0x0001, 0x088000, 0x0042));
    assert_eq!(e.bdf, "01:00.0");
    assert_eq!(
        e.bars,
        vec![
            BarReport { slot: 0, kind: "mem32", prefetchable: false, address: 0x8000_0000, size: 0x1000 },
            BarReport {
                slot: 2,
                kind: "mem64",
                prefetchable: true,
                address: 0x40_0000_0000,
                size: 0x10_0000
            },
            BarReport { slot: 4, kind: "io", prefetchable: false, address: 0x1000, size: 0x100 },
        ]
    );
    // The ROM comes after BAR0 in the 32-bit pool, aligned to its 64 KiB size.
    assert_eq!(e.rom, Some(RomReport { address: 0x8001_0000, size: 0x1_0000 }));
    let names: Vec<&str> = e.capabilities.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names.iter().any(|n| n.contains("MSI-X")), "{names:?}");
    assert!(names.iter().any(|n| n.contains("Express")), "{names:?}");
    let ext: Vec<u16> = e.extended_capabilities.iter().map(|c| c.id).collect();
    assert_eq!(ext, vec![0x0001, 0x0003]);
    assert_eq!((e.mps, e.mrrs, e.extended_tags), (Some(256), Some(512), true));
    assert_eq!((e.msi_vectors, e.msix_table_size), (Some(4), Some(8)));
    assert_eq!(e.interrupts, "msix");

    let observed = observed.lock().unwrap();
    assert_eq!(observed.bar_written.get(&2), Some(&0x40_0000_0000));
    let view = tlp::config_space::ConfigView::new(&observed.config).unwrap();
    let command = view.command().0;
    let expected = Command::MEMORY_SPACE | Command::IO_SPACE | Command::BUS_MASTER | Command::INTX_DISABLE;
    assert_eq!(command, expected);
    let msix = view.msix().unwrap().unwrap();
    assert!(msix.control.enabled() && !msix.control.function_mask());
    let pcie = view.pci_express().unwrap().unwrap();
    assert_eq!(pcie.device_control.max_payload_size(), Some(256));
    assert!(!pcie.link_control.rcb_128());
    assert_eq!(view.read_u16(header::VENDOR_ID).unwrap(), 0x1de5);
}

const COPY: &str = "\
enumerate
expect-id 1de5:0001
read32 bar0 expect 0xc0ffee01
fill host 0x1010 512 pattern inc
write64 bar0+0x08 0x1010
write64 bar0+0x10 0x3000
write32 bar0+0x18 512
write32 bar0+0x20 1          # doorbell
wait-irq msix 0 timeout 100us
check host 0x3000 512 equals host 0x1010
read32 bar0+0x28 expect 1
";

#[tokio::test]
async fn copy_script_passes_and_dma_reads_are_split_at_the_rcb() {
    let config = RcConfig { link: LinkParams::new(128, 512, 64).unwrap(), ..config() };
    let (report, observed) = run(Options::default(), config, COPY).await;
    assert!(report.passed, "{:?}", report.error);
    assert_eq!(report.steps.len(), 11);
    assert!(report.steps.iter().all(|s| s.passed));
    assert_eq!(report.dma_read_bytes, 512);
    assert_eq!(report.dma_write_bytes, 512);
    assert_eq!(report.interrupts.len(), 1);
    assert_eq!((report.interrupts[0].kind, report.interrupts[0].vector), (IrqKind::Msix, 0));
    let observed = observed.lock().unwrap();
    assert!(observed.completion_statuses.iter().all(|s| *s == "SC"));
    // 512 bytes from 0x1010: one MRd, completed up to the first 64-byte boundary an MPS-sized
    // payload reaches, then MPS-sized pieces: 112 + 128 + 128 + 128 + 16 bytes.
    assert_eq!(observed.completion_lengths, vec![112, 128, 128, 128, 16]);
    assert_eq!(report.tlps_sent.get("CplD"), Some(&5));
}

#[tokio::test]
async fn failed_expectation_stops_the_script_with_its_line_number() {
    let text = "enumerate\n# the ID register\nread32 bar0 expect 0x1\nread32 bar0\n";
    let (report, _) = run(Options::default(), config(), text).await;
    assert!(!report.passed);
    assert_eq!(
        report.error.as_deref(),
        Some("line 3: read32 bar0 expect 0x1: read 0xc0ffee01 at 0x80000000, expected 0x00000001")
    );
    assert_eq!(report.steps.len(), 2, "the script stops at the first failure");
    assert!(!report.steps[1].passed);
}

#[tokio::test]
async fn dma_outside_host_memory_is_answered_with_ur() {
    let text = "enumerate\nwrite64 bar0+0x08 0x2000_0000\nwrite64 bar0+0x10 0x3000\nwrite32 bar0+0x18 64\n\
                write32 bar0+0x20 1\nwait-irq msix 0 timeout 10000\nread32 bar0+0x28 expect 2\n";
    let (report, observed) = run(Options::default(), config(), text).await;
    assert!(report.passed, "{:?}", report.error);
    assert_eq!(report.unsupported_requests, 1);
    assert_eq!(observed.lock().unwrap().completion_statuses, vec!["UR"]);
}

#[tokio::test]
async fn completion_timeout_counts_simulated_cycles() {
    let config = RcConfig { completion_timeout: 5000, step_cycles: 100, ..config() };
    let (mut rc, _) = root_complex(Options { silent_mmio: true, ..Options::default() }, config);
    rc.enumerate().await.unwrap();
    let start = rc.now();
    let err = rc.mem_read(0x8000_0000, 4).await.unwrap_err().to_string();
    assert!(err.contains("completion timeout: MRd at 0x80000000 (4 bytes)"), "{err}");
    assert!(err.contains("within 5000 cycles"), "{err}");
    let waited = rc.now() - start;
    assert!((5000..5100).contains(&waited), "the timeout fired after {waited} cycles");
    // A late completion for the abandoned tag would now count as unexpected; the next request
    // gets a fresh tag and times out the same way.
    assert!(rc.mem_read(0x8000_0000, 4).await.is_err());
}

#[tokio::test]
async fn msi_when_enabled_instead_of_msix() {
    let text =
        "enumerate\nenable-msi\nwrite32 bar0+0x18 4\nwrite32 bar0+0x20 1\nwait-irq msi 0 timeout 1us\n";
    let (report, observed) = run(Options::default(), config(), text).await;
    assert!(report.passed, "{:?}", report.error);
    assert_eq!(report.enumeration.as_ref().map(|e| e.interrupts), Some("msi"));
    let observed = observed.lock().unwrap();
    let view = tlp::config_space::ConfigView::new(&observed.config).unwrap();
    assert!(view.msi().unwrap().unwrap().control.enabled());
    assert!(!view.msix().unwrap().unwrap().control.enabled());
}

#[tokio::test]
async fn intx_assert_message_satisfies_wait_irq_intx() {
    let text = "enumerate\nwrite32 bar0+0x18 4\nwrite32 bar0+0x20 1\nwait-irq intx a timeout 1us\n";
    let (report, _) = run(Options { interrupts: false, ..Options::default() }, config(), text).await;
    assert!(report.passed, "{:?}", report.error);
    assert_eq!(report.enumeration.as_ref().map(|e| e.interrupts), Some("none"));
    assert_eq!(report.tlps_received.get("Msg"), Some(&1));
}

#[tokio::test]
async fn wait_irq_timeout_names_the_vector_and_cycles() {
    let text = "enumerate\nsleep 10\nwait-irq msix 3 timeout 2us\n";
    let (report, _) = run(Options::default(), config(), text).await;
    let error = report.error.unwrap();
    assert!(
        error.starts_with("line 3: wait-irq msix 3 timeout 2us: no MSI-X interrupt 3 within 2000 cycles"),
        "{error}"
    );
}

#[tokio::test]
async fn io_bar_accesses_use_io_requests() {
    let text =
        "enumerate\nwrite32 bar4 0x12345678\nread32 bar4 expect 0x12345678\nread16 bar4+2 expect 0x1234\n";
    let (report, observed) = run(Options::default(), config(), text).await;
    assert!(report.passed, "{:?}", report.error);
    assert_eq!(observed.lock().unwrap().io_register, 0x1234_5678);
    assert_eq!(report.tlps_sent.get("IOWr"), Some(&1));
    assert_eq!(report.tlps_sent.get("IORd"), Some(&2));
}

#[tokio::test]
async fn bar_use_before_enumerate_and_outside_the_bar_fail_clearly() {
    let (report, _) = run(Options::default(), config(), "read32 bar0\n").await;
    assert_eq!(report.error.as_deref(), Some("line 1: read32 bar0: bar0 used before enumerate"));
    let (report, _) = run(Options::default(), config(), "enumerate\nread32 bar0+0xffe\n").await;
    let error = report.error.unwrap();
    assert!(error.contains("outside BAR0 (4096 bytes)"), "{error}");
}

/// 1 ns cycles; 10 µs steps keep a simulated wait of tens of ms to a few thousand steps.
fn crs_config(crs_timeout: Duration) -> RcConfig {
    RcConfig { step_cycles: 10_000, crs_timeout, ..config() }
}

#[tokio::test]
async fn enumeration_retries_crs_until_the_device_is_ready() {
    const READY_PS: u64 = 20_000_000_000; // 20 ms
    let options = Options { crs_until_ps: READY_PS, ..Options::default() };
    let (mut rc, observed) = root_complex(options, crs_config(Duration::from_secs(1)));
    let enumeration = tokio::time::timeout(Duration::from_secs(60), rc.enumerate()).await.unwrap().unwrap();
    assert_eq!((enumeration.vendor_id, enumeration.device_id), (rc_endpoint::VENDOR, rc_endpoint::DEVICE));
    assert!(rc.now() >= READY_PS / 1000, "enumerated at cycle {} while the device was not ready", rc.now());
    let observed = observed.lock().unwrap();
    // The back-off (1 µs doubling to 1 ms) needs about 30 retries for 20 ms, not thousands.
    assert!((10..=40).contains(&observed.crs_answers), "{} CRS completions", observed.crs_answers);
    // Every retry reused the first request's tag.
    assert_eq!(observed.crs_tags.len(), 1, "{:?}", observed.crs_tags);
}

#[tokio::test]
async fn crs_forever_fails_after_the_crs_timeout_of_simulated_time() {
    let options = Options { crs_until_ps: u64::MAX, ..Options::default() };
    let (mut rc, observed) = root_complex(options, crs_config(Duration::from_millis(50)));
    let start = rc.now();
    let err =
        tokio::time::timeout(Duration::from_secs(60), rc.enumerate()).await.unwrap().unwrap_err().to_string();
    assert!(err.contains("no device answers configuration reads at 01:00.0"), "{err}");
    assert!(err.contains("CfgRd0 at 01:00.0 offset 0x000: completed with status CRS"), "{err}");
    assert!(err.contains("the CRS timeout of 50ms (--crs-timeout) is exhausted"), "{err}");
    let observed = observed.lock().unwrap();
    // The first CRS arrives one 10 µs step in; the last retry goes out exactly at the end of the
    // budget and its CRS arrives one step later.
    let first_crs = start + 10_000;
    assert_eq!(observed.last_crs_ps / 1000, first_crs + 50_000_000, "{err}");
    assert!(
        err.contains(&format!("after {} retries over 50010000 cycles (50.01ms)", observed.crs_answers - 1)),
        "{err}"
    );
}

#[tokio::test]
async fn a_zero_crs_timeout_fails_on_the_first_crs() {
    let options = Options { crs_until_ps: u64::MAX, ..Options::default() };
    let (mut rc, observed) = root_complex(options, crs_config(Duration::ZERO));
    let err = rc.enumerate().await.unwrap_err().to_string();
    assert!(err.contains("after 0 retries over 0 cycles (0ns)"), "{err}");
    assert!(err.contains("the CRS timeout of 0ns (--crs-timeout) is exhausted"), "{err}");
    assert_eq!(observed.lock().unwrap().crs_answers, 1);
}

#[tokio::test]
async fn dma_completions_wait_the_configured_latency_in_cycles() {
    let step_cycles = |latency: u64| async move {
        let config = RcConfig { completion_latency: latency, ..config() };
        let (report, _) = run(Options::default(), config, COPY).await;
        assert!(report.passed, "latency {latency}: {:?}", report.error);
        let wait = report.steps.iter().find(|s| s.command.starts_with("wait-irq")).unwrap();
        wait.cycles
    };
    // The copy's one MRd is completed no earlier than the latency after it arrived.
    let slow = step_cycles(20_000).await;
    let fast = step_cycles(100).await;
    assert!(slow >= 20_000, "{slow} cycles with a 20 000-cycle completion latency");
    assert!(fast < 20_000, "{fast} cycles with a 100-cycle completion latency");
}

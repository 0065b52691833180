//! A `sim-listen` link outlives its simulators: sessions that end without CLOSE report Down, the
//! next simulator's hello starts a new session (Up), the link clock carries on from where the
//! previous session stopped, TLPs sent while no simulator is there are dropped (never delivered
//! to the next one), and an orderly CLOSE ends the link.

use std::time::Duration;

use sim::link::wire::{self, hello_flags};
use sim::link::{BridgeConfig, HelloParams, SimListener, SimMode, SimulatorConfig, SimulatorEnd};
use tlp::split::LinkParams;
use transports::link::{Link, LinkEvent, LinkInput, LinkInstant, ReceivedTlp};

const WAIT: Duration = Duration::from_secs(10);
const MRD: [u8; 12] = [0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x01, 0x0f, 0x80, 0x00, 0x00, 0x10];
/// A Cpl (no data) the bridge sends; the last byte tells sessions apart.
fn cpl(marker: u8) -> Vec<u8> {
    vec![0x0a, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0x01, marker]
}

fn params(mode: SimMode, ps_per_tick: u32) -> HelloParams {
    HelloParams {
        mode,
        ps_per_tick,
        link: LinkParams::new(256, 512, 64).unwrap(),
        tag_flags: hello_flags::EXTENDED_TAG,
        link_latency_ticks: 0,
    }
}

fn bridge_config(mode: SimMode) -> BridgeConfig {
    BridgeConfig {
        hello: HelloParams {
            ps_per_tick: wire::ANY_TICK,
            link_latency_ticks: wire::ANY_LATENCY,
            ..params(mode, 0)
        },
        capacity: 4,
        ..BridgeConfig::default()
    }
}

fn sim_config(mode: SimMode, ps_per_tick: u32) -> SimulatorConfig {
    SimulatorConfig { hello: params(mode, ps_per_tick), ack_timeout: WAIT, ..SimulatorConfig::default() }
}

async fn next(link: &mut Link) -> Option<LinkInput> {
    tokio::time::timeout(WAIT, link.rx.recv()).await.expect("the link delivered nothing within 10 s")
}

fn event(event: LinkEvent, ps: u64) -> Option<LinkInput> {
    Some(LinkInput::Event { event, time: LinkInstant::from_picos(ps) })
}

fn tlp(bytes: &[u8], ps: u64) -> Option<LinkInput> {
    Some(LinkInput::Tlp(ReceivedTlp { bytes: bytes.to_vec().into(), time: LinkInstant::from_picos(ps) }))
}

#[tokio::test]
async fn three_simulator_sessions_in_a_row_share_one_link_and_one_forward_clock() {
    let listener = SimListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let bridge = bridge_config(SimMode::FreeRunning);
    let first = sim_config(SimMode::FreeRunning, 1000);
    let (link, sim1) = tokio::join!(listener.serve_bridge(&bridge), SimulatorEnd::connect(&addr, &first));
    let (mut link, mut sim1) = (link.unwrap(), sim1.unwrap());

    // Session 1: 1000 ps per tick, up to tick 100 = 100 ns.
    assert_eq!(next(&mut link).await, event(LinkEvent::Up, 0));
    sim1.advance_to(100).await.unwrap();
    sim1.send_tlp(&MRD).await.unwrap();
    assert_eq!(next(&mut link).await, tlp(&MRD, 100_000));
    link.tx.send(cpl(1)).await.unwrap();
    assert_eq!(sim1.recv(WAIT).await.unwrap().unwrap().bytes, cpl(1));
    drop(sim1); // a crash: no CLOSE
    assert_eq!(next(&mut link).await, event(LinkEvent::Down, 100_000));

    // No simulator: more TLPs than the queues hold are taken and dropped, not queued.
    for _ in 0..3 * bridge.capacity {
        tokio::time::timeout(WAIT, link.tx.send(cpl(0xdd))).await.unwrap().unwrap();
    }
    // A simulator whose hello does not fit is refused; the link stays down and listening.
    let mut wrong = sim_config(SimMode::FreeRunning, 1000);
    wrong.hello.link = LinkParams::new(128, 512, 64).unwrap();
    let refused = SimulatorEnd::connect(&addr, &wrong).await.unwrap_err().to_string();
    assert!(refused.contains("hello mismatch"), "{refused}");
    assert!(link.rx.try_recv().is_err(), "a refused hello delivers nothing");

    // Session 2: a different tick (500 ps); its tick 0 is where session 1 stopped.
    let mut sim2 = SimulatorEnd::connect(&addr, &sim_config(SimMode::FreeRunning, 500)).await.unwrap();
    assert_eq!(next(&mut link).await, event(LinkEvent::Up, 100_000));
    assert_eq!(sim2.now(), 0);
    sim2.advance_to(40).await.unwrap();
    sim2.send_tlp(&MRD).await.unwrap();
    assert_eq!(next(&mut link).await, tlp(&MRD, 120_000));
    assert_eq!(link.clock.now(), LinkInstant::from_picos(120_000));
    link.tx.send(cpl(2)).await.unwrap();
    let first = sim2.recv(WAIT).await.unwrap().unwrap();
    assert_eq!(first.bytes, cpl(2), "nothing sent while down reaches the next simulator");
    assert_eq!(first.time, 40, "stamped in the session's own ticks");
    drop(sim2);
    assert_eq!(next(&mut link).await, event(LinkEvent::Down, 120_000));

    // Session 3 ends orderly: CLOSE ends the link.
    let mut sim3 = SimulatorEnd::connect(&addr, &sim_config(SimMode::FreeRunning, 1000)).await.unwrap();
    assert_eq!(next(&mut link).await, event(LinkEvent::Up, 120_000));
    sim3.advance_to(1).await.unwrap();
    sim3.send_tlp(&MRD).await.unwrap();
    assert_eq!(next(&mut link).await, tlp(&MRD, 121_000));
    sim3.close().await.unwrap();
    assert_eq!(next(&mut link).await, event(LinkEvent::Down, 121_000));
    assert_eq!(next(&mut link).await, None, "CLOSE ends the link");
}

#[tokio::test]
async fn lockstep_acknowledgements_count_the_down_and_up_of_a_new_session() {
    let listener = SimListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let bridge = bridge_config(SimMode::Lockstep);
    let config = sim_config(SimMode::Lockstep, 1000);
    let (link, sim1) = tokio::join!(listener.serve_bridge(&bridge), SimulatorEnd::connect(&addr, &config));
    let (mut link, mut sim1) = (link.unwrap(), sim1.unwrap());
    assert_eq!(next(&mut link).await, event(LinkEvent::Up, 0));
    link.progress.handled_one();
    sim1.advance_to(10).await.unwrap();
    drop(sim1);
    assert_eq!(next(&mut link).await, event(LinkEvent::Down, 10_000));

    let mut sim2 = SimulatorEnd::connect(&addr, &config).await.unwrap();
    assert_eq!(next(&mut link).await, event(LinkEvent::Up, 10_000));
    let stepper = tokio::spawn(async move {
        sim2.advance_to(5).await.unwrap();
        sim2
    });
    link.progress.handled_one(); // the Down
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!stepper.is_finished(), "the new session's Up is not handled yet: no TIME_ACK");
    link.progress.handled_one(); // the Up
    let sim2 = tokio::time::timeout(WAIT, stepper).await.unwrap().unwrap();
    assert_eq!(link.clock.now(), LinkInstant::from_picos(15_000));
    sim2.close().await.unwrap();
}

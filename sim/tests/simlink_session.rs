//! The sim link over real TCP on 127.0.0.1: hello, TLPs both ways with times, the simulated
//! clock, lockstep acknowledgements, events, close and disconnects.

use std::time::Duration;

use sim::Error;
use sim::link::wire::{self, hello_flags};
use sim::link::{BridgeConfig, HelloParams, SimListener, SimMode, SimulatorConfig, SimulatorEnd};
use tlp::split::LinkParams;
use transports::link::{Link, LinkEvent, LinkInput, LinkInstant, ReceivedTlp};

const WAIT: Duration = Duration::from_secs(10);

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
        capacity: 16,
        ..BridgeConfig::default()
    }
}

fn sim_config(mode: SimMode) -> SimulatorConfig {
    SimulatorConfig { hello: params(mode, 1000), ack_timeout: WAIT, ..SimulatorConfig::default() }
}

/// A bridge listening on an ephemeral port and a simulator connected to it.
async fn pair(mode: SimMode) -> (Link, SimulatorEnd) {
    let listener = SimListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let config = bridge_config(mode);
    let sim_config = sim_config(mode);
    let (link, sim) =
        tokio::join!(listener.accept_bridge(&config), SimulatorEnd::connect(&addr, &sim_config));
    (link.unwrap(), sim.unwrap())
}

async fn next(link: &mut Link) -> Option<LinkInput> {
    tokio::time::timeout(WAIT, link.rx.recv()).await.expect("the link delivered nothing within 10 s")
}

const MRD: [u8; 12] = [0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x01, 0x0f, 0x80, 0x00, 0x00, 0x10];

#[tokio::test]
async fn hello_mismatch_is_a_clear_error_on_both_sides() {
    let listener = SimListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut sim = sim_config(SimMode::Lockstep);
    sim.hello.link = LinkParams::new(128, 512, 64).unwrap();
    let bridge = bridge_config(SimMode::FreeRunning);
    let (bridge_side, sim_side) =
        tokio::join!(listener.accept_bridge(&bridge), SimulatorEnd::connect(&addr, &sim));
    let bridge_err = bridge_side.unwrap_err().to_string();
    let sim_err = sim_side.unwrap_err().to_string();
    for err in [&bridge_err, &sim_err] {
        assert!(err.contains("hello mismatch"), "{err}");
        assert!(err.contains("Max_Payload_Size"), "{err}");
        assert!(err.contains("time mode"), "{err}");
    }
    assert!(bridge_err.contains("ours 256 bytes, peer 128 bytes"), "{bridge_err}");
    assert!(sim_err.contains("ours 128 bytes, peer 256 bytes"), "{sim_err}");
}

#[tokio::test]
async fn tlps_cross_both_ways_stamped_with_simulated_time() {
    let (mut link, mut sim) = pair(SimMode::FreeRunning).await;
    assert_eq!(
        next(&mut link).await,
        Some(LinkInput::Event { event: LinkEvent::Up, time: LinkInstant::ZERO })
    );
    assert!(link.clock.is_simulated());
    assert!(link.info.description.contains("1000 ps/tick"), "{}", link.info.description);

    sim.advance_to(10).await.unwrap();
    sim.send_tlp(&MRD).await.unwrap();
    assert_eq!(
        next(&mut link).await,
        Some(LinkInput::Tlp(ReceivedTlp {
            bytes: MRD.to_vec().into(),
            time: LinkInstant::from_picos(10_000)
        }))
    );
    assert_eq!(link.clock.now(), LinkInstant::from_picos(10_000));

    let cpl = vec![0x4a, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0x01, 0, 0xde, 0xad, 0xbe, 0xef];
    link.tx.send(cpl.clone()).await.unwrap();
    let got = sim.recv(WAIT).await.unwrap().unwrap();
    assert_eq!(got.bytes, cpl);
    assert_eq!(got.time, 10, "the bridge stamps its TLPs with the simulator's latest time");
    assert_eq!(sim.try_recv().unwrap(), None);
}

#[tokio::test]
async fn bridge_clock_sleeps_complete_only_when_simulated_time_passes() {
    let (link, mut sim) = pair(SimMode::FreeRunning).await;
    let sleeper = tokio::spawn(link.clock.sleep(Duration::from_nanos(100)));
    sim.advance_to(50).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!sleeper.is_finished(), "50 of 100 simulated ns have passed");
    sim.advance_to(100).await.unwrap();
    tokio::time::timeout(WAIT, sleeper).await.unwrap().unwrap();
    assert_eq!(link.clock.now(), LinkInstant::from_picos(100_000));
}

#[tokio::test]
async fn lockstep_ack_waits_for_progress_and_flushes_responses_first() {
    let (mut link, mut sim) = pair(SimMode::Lockstep).await;
    sim.send_tlp(&MRD).await.unwrap();
    let stepper = tokio::spawn(async move {
        sim.advance_to(5).await.unwrap();
        sim
    });
    assert!(matches!(next(&mut link).await, Some(LinkInput::Event { event: LinkEvent::Up, .. })));
    assert!(matches!(next(&mut link).await, Some(LinkInput::Tlp(_))));
    link.progress.handled_one(); // the Up event
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!stepper.is_finished(), "the TLP is not handled yet: no TIME_ACK");

    // The engine queues its answer, then counts the request handled.
    let cpl = vec![0x0a, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0x01, 0];
    link.tx.send(cpl.clone()).await.unwrap();
    link.progress.handled_one();
    let mut sim = tokio::time::timeout(WAIT, stepper).await.unwrap().unwrap();
    let got = sim.try_recv().unwrap().expect("the answer arrives before the TIME_ACK");
    assert_eq!(got, sim::link::BridgeTlp { bytes: cpl.into(), time: 5 });
    assert_eq!(link.clock.now(), LinkInstant::from_picos(5000));

    // Nothing outstanding: the next step is acknowledged at once.
    sim.advance_to(6).await.unwrap();
}

#[tokio::test]
async fn lockstep_ack_timeout_is_a_clear_error() {
    let mut config = sim_config(SimMode::Lockstep);
    config.ack_timeout = Duration::from_millis(100);
    let listener = SimListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let bridge = bridge_config(SimMode::Lockstep);
    let (link, sim) = tokio::join!(listener.accept_bridge(&bridge), SimulatorEnd::connect(&addr, &config));
    // The engine never counts the Up event handled, so the step is never acknowledged.
    let (_link, mut sim) = (link.unwrap(), sim.unwrap());
    let err = sim.advance_to(1).await.unwrap_err();
    assert!(matches!(err, Error::SimTimeout { .. }), "{err}");
    assert!(err.to_string().contains("TIME_ACK for tick 1"), "{err}");
    assert!(sim.advance_to(2).await.is_err(), "the link is unusable after a timeout");
}

#[tokio::test]
async fn events_and_orderly_close_reach_the_bridge() {
    let (mut link, mut sim) = pair(SimMode::FreeRunning).await;
    assert!(matches!(next(&mut link).await, Some(LinkInput::Event { event: LinkEvent::Up, .. })));
    sim.advance_to(3).await.unwrap();
    sim.send_event(LinkEvent::HotReset).await.unwrap();
    assert_eq!(
        next(&mut link).await,
        Some(LinkInput::Event { event: LinkEvent::HotReset, time: LinkInstant::from_picos(3000) })
    );
    // A link-down/link-up pair sent by the simulator (a retrain) arrives as it was sent, at its
    // simulated time, and the session goes on.
    sim.advance_to(5).await.unwrap();
    sim.send_event(LinkEvent::Down).await.unwrap();
    sim.advance_to(7).await.unwrap();
    sim.send_event(LinkEvent::Up).await.unwrap();
    assert_eq!(
        next(&mut link).await,
        Some(LinkInput::Event { event: LinkEvent::Down, time: LinkInstant::from_picos(5000) })
    );
    assert_eq!(
        next(&mut link).await,
        Some(LinkInput::Event { event: LinkEvent::Up, time: LinkInstant::from_picos(7000) })
    );
    sim.send_tlp(&MRD).await.unwrap();
    assert!(matches!(next(&mut link).await, Some(LinkInput::Tlp(_))), "TLPs still flow after the retrain");
    sim.close().await.unwrap();
    assert!(matches!(next(&mut link).await, Some(LinkInput::Event { event: LinkEvent::Down, .. })));
    assert_eq!(next(&mut link).await, None, "after Down the link closes rx");
}

#[tokio::test]
async fn simulator_disconnect_reports_down_then_closes() {
    let (mut link, sim) = pair(SimMode::FreeRunning).await;
    assert!(matches!(next(&mut link).await, Some(LinkInput::Event { event: LinkEvent::Up, .. })));
    drop(sim);
    assert!(matches!(next(&mut link).await, Some(LinkInput::Event { event: LinkEvent::Down, .. })));
    assert_eq!(next(&mut link).await, None);
}

#[tokio::test]
async fn bridge_disconnect_is_an_error_for_the_simulator() {
    let (link, mut sim) = pair(SimMode::FreeRunning).await;
    drop(link);
    let err = loop {
        match sim.recv(WAIT).await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("no disconnect seen within 10 s"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::SimClosed(_)), "{err}");
    assert!(sim.send_tlp(&MRD).await.is_err());
}

#[tokio::test]
async fn bridge_closing_tx_sends_close() {
    let listener = SimListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let config = bridge_config(SimMode::FreeRunning);
    let sim_config = sim_config(SimMode::FreeRunning);
    // Simulator listening, bridge connecting: the roles do not depend on who listens.
    let (link, sim) =
        tokio::join!(sim::link::connect(&addr, &config), listener.accept_simulator(&sim_config));
    let (mut link, mut sim) = (link.unwrap(), sim.unwrap());
    let (closed_tx, _) = tokio::sync::mpsc::channel(1);
    drop(std::mem::replace(&mut link.tx, closed_tx));
    let err = sim.recv(WAIT).await.unwrap_err();
    assert_eq!(err.to_string(), "sim link closed: the bridge closed the link");
}

#[tokio::test]
async fn open_kind_reads_options_from_the_address() {
    let listener = SimListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("{}?mode=lockstep&mps=256", listener.local_addr().unwrap());
    let sim_config = sim_config(SimMode::Lockstep);
    let (link, sim) =
        tokio::join!(sim::link::open_kind("sim", &address), listener.accept_simulator(&sim_config));
    let (mut link, mut sim) = (link.unwrap(), sim.unwrap());
    assert_eq!(sim.peer_hello().mode, SimMode::Lockstep);
    assert_eq!(sim.peer_hello().mps, 256);
    assert!(matches!(next(&mut link).await, Some(LinkInput::Event { event: LinkEvent::Up, .. })));
    link.progress.handled_one();
    sim.advance_to(1).await.unwrap();
    let err = sim::link::open_kind("serial", "x:1").await.unwrap_err().to_string();
    assert!(err.contains("sim (connect) and sim-listen (listen)"), "{err}");
}

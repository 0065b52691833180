//! Malformed input on a sim link: clear errors, ERROR frames to the peer, never a panic; and a
//! property test of the frame decoder.

use std::time::Duration;

use proptest::prelude::*;
use sim::link::wire::{self, Message, decode_frame, error_code, hello_flags};
use sim::link::{
    BridgeConfig, Hello, HelloParams, Role, SimListener, SimMode, SimulatorConfig, SimulatorEnd,
};
use tlp::split::LinkParams;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use transports::link::{LinkEvent, LinkInput};

const WAIT: Duration = Duration::from_secs(10);

fn sim_hello() -> Hello {
    Hello {
        version: wire::PROTOCOL_VERSION,
        role: Role::Simulator,
        mode: SimMode::FreeRunning,
        ps_per_tick: 1000,
        mps: 128,
        mrrs: 512,
        rcb: 64,
        flags: hello_flags::EXTENDED_TAG,
        link_latency_ticks: 0,
    }
}

/// A bridge listening, and a raw socket that completed the hello as a simulator.
async fn raw_simulator() -> (transports::link::Link, TcpStream) {
    let listener = SimListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = BridgeConfig::default();
    let raw = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&Message::Hello(sim_hello()).to_frame()).await.unwrap();
        let reply = wire::read_message(&mut s).await.unwrap().unwrap();
        assert!(matches!(reply, Message::Hello(Hello { role: Role::Bridge, .. })));
        s
    };
    let (link, raw) = tokio::join!(listener.accept_bridge(&config), raw);
    (link.unwrap(), raw)
}

/// Sends `bytes` after the hello; the bridge must answer with ERROR `code`, then report Down and
/// close the link.
async fn bridge_rejects(bytes: &[u8], code: u16, text: &str) {
    let (mut link, mut raw) = raw_simulator().await;
    raw.write_all(bytes).await.unwrap();
    let reply = tokio::time::timeout(WAIT, wire::read_message(&mut raw)).await.unwrap().unwrap().unwrap();
    match reply {
        Message::Error { code: got, message } => {
            assert_eq!(got, code, "{message}");
            assert!(message.contains(text), "{message}");
        }
        other => panic!("expected ERROR, got {other:?}"),
    }
    let mut saw_down = false;
    while let Some(input) = tokio::time::timeout(WAIT, link.rx.recv()).await.unwrap() {
        saw_down |= matches!(input, LinkInput::Event { event: LinkEvent::Down, .. });
    }
    assert!(saw_down);
}

#[tokio::test]
async fn garbage_after_hello_gets_a_malformed_error() {
    bridge_rejects(b"GET / HTTP/1.1\r\n\r\n", error_code::MALFORMED, "bad magic").await;
}

#[tokio::test]
async fn oversized_length_is_refused_without_allocating() {
    bridge_rejects(
        &[0x54, 0x53, 0x02, 0x00, 0xff, 0xff, 0xff, 0xff],
        error_code::MALFORMED,
        "announces 4294967295",
    )
    .await;
}

#[tokio::test]
async fn unknown_frame_type_is_rejected_with_its_code() {
    bridge_rejects(
        &[0x54, 0x53, 0x42, 0x00, 0, 0, 0, 0],
        error_code::UNKNOWN_TYPE,
        "unknown frame type 0x42",
    )
    .await;
}

#[tokio::test]
async fn time_running_backwards_is_a_protocol_error() {
    let mut bytes = Message::Time { time: 10 }.to_frame();
    bytes.extend(Message::Time { time: 9 }.to_frame());
    bridge_rejects(&bytes, error_code::PROTOCOL, "tick 9 is earlier than tick 10").await;
}

#[tokio::test]
async fn time_ack_from_the_simulator_is_a_protocol_error() {
    bridge_rejects(&Message::TimeAck { time: 1 }.to_frame(), error_code::PROTOCOL, "may not send TIME_ACK")
        .await;
}

#[tokio::test]
async fn short_tlp_payload_is_malformed() {
    bridge_rejects(
        &[0x54, 0x53, 0x02, 0x00, 0x09, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7],
        error_code::MALFORMED,
        "TLP payload",
    )
    .await;
}

#[tokio::test]
async fn garbage_instead_of_hello_fails_the_bridge_accept() {
    let listener = SimListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let raw = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&[0xff; 64]).await.unwrap();
        // Our side first reads the bridge's HELLO, then its ERROR.
        let first = wire::read_message(&mut s).await.unwrap().unwrap();
        assert!(matches!(first, Message::Hello(_)));
        wire::read_message(&mut s).await.unwrap().unwrap()
    };
    let config = BridgeConfig::default();
    let (link, reply) = tokio::join!(listener.accept_bridge(&config), raw);
    let err = link.unwrap_err().to_string();
    assert!(err.contains("malformed sim-link frame: bad magic ff ff"), "{err}");
    assert!(matches!(reply, Message::Error { code: error_code::MALFORMED, .. }), "{reply:?}");
}

#[tokio::test]
async fn simulator_rejects_a_peer_that_is_not_a_bridge() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let fake = async {
        let (mut s, _) = listener.accept().await.unwrap();
        // Claims to be a simulator too.
        s.write_all(&Message::Hello(sim_hello()).to_frame()).await.unwrap();
        let _ours = wire::read_message(&mut s).await.unwrap();
        wire::read_message(&mut s).await.unwrap()
    };
    let config = SimulatorConfig {
        hello: HelloParams {
            mode: SimMode::FreeRunning,
            ps_per_tick: 1000,
            link: LinkParams::DEFAULT,
            tag_flags: hello_flags::EXTENDED_TAG,
            link_latency_ticks: 0,
        },
        ..SimulatorConfig::default()
    };
    let (sim, reply) = tokio::join!(SimulatorEnd::connect(&addr, &config), fake);
    let err = sim.unwrap_err().to_string();
    assert!(err.contains("both sides are the Simulator"), "{err}");
    assert!(matches!(reply, Some(Message::Error { code: error_code::HELLO_MISMATCH, .. })), "{reply:?}");
}

#[tokio::test]
async fn hello_timeout_names_what_was_awaited() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let _silent = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(s);
    });
    let config = BridgeConfig { hello_timeout: Duration::from_millis(100), ..BridgeConfig::default() };
    let err = sim::link::connect(&addr, &config).await.unwrap_err().to_string();
    assert!(err.contains("the peer's HELLO did not happen within 100ms"), "{err}");
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u64>(), proptest::collection::vec(any::<u32>(), 1..=(wire::MAX_TLP_LEN / 4))).prop_map(
            |(time, dws)| {
                Message::Tlp { time, bytes: dws.iter().flat_map(|d| d.to_be_bytes()).collect() }
            }
        ),
        any::<u64>().prop_map(|time| Message::Time { time }),
        any::<u64>().prop_map(|time| Message::TimeAck { time }),
        (any::<u64>(), prop_oneof![Just(LinkEvent::Up), Just(LinkEvent::Down), Just(LinkEvent::HotReset)])
            .prop_map(|(time, event)| Message::Event { time, event }),
        Just(Message::Close),
        (any::<u16>(), "[ -~]{0,200}").prop_map(|(code, message)| Message::Error { code, message }),
        (
            any::<u16>(),
            any::<bool>(),
            any::<bool>(),
            any::<u32>(),
            any::<u16>(),
            any::<u16>(),
            0u16..4,
            any::<u32>()
        )
            .prop_map(|(version, bridge, lockstep, ps, mps, mrrs, flags, lat)| Message::Hello(
                Hello {
                    version,
                    role: if bridge { Role::Bridge } else { Role::Simulator },
                    mode: if lockstep { SimMode::Lockstep } else { SimMode::FreeRunning },
                    ps_per_tick: ps,
                    mps,
                    mrrs,
                    rcb: 64,
                    flags,
                    link_latency_ticks: lat,
                }
            )),
    ]
}

proptest! {
    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..9000)) {
        let _ = decode_frame(&bytes);
    }

    #[test]
    fn decoder_never_panics_after_a_valid_header(kind in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut frame = wire::FrameHeader { kind, length: payload.len() as u32 }.emit().to_vec();
        frame.extend_from_slice(&payload);
        if let Ok(Some((_, used))) = decode_frame(&frame) {
            prop_assert_eq!(used, frame.len());
        }
    }

    /// Taking frames off a shared buffer (the bridge's reader) decodes exactly what
    /// `decode_frame` does, frame by frame, and leaves an incomplete or bad frame untouched.
    #[test]
    fn split_frame_agrees_with_decode_frame(
        messages in proptest::collection::vec(arb_message(), 0..6),
        tail in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let mut stream: Vec<u8> = messages.iter().flat_map(|m| m.to_frame()).collect();
        stream.extend_from_slice(&tail);
        let mut buf = bytes::BytesMut::from(&stream[..]);
        let mut at = 0;
        loop {
            let expected = decode_frame(&stream[at..]);
            let before = buf.len();
            match (wire::split_frame(&mut buf), expected) {
                (Ok(Some(got)), Ok(Some((want, used)))) => {
                    prop_assert_eq!(got, want);
                    prop_assert_eq!(before - buf.len(), used);
                    at += used;
                }
                (Ok(None), Ok(None)) | (Err(_), Err(_)) => {
                    prop_assert_eq!(buf.len(), before);
                    prop_assert_eq!(&buf[..], &stream[at..]);
                    break;
                }
                (got, want) => prop_assert!(false, "split_frame {:?} but decode_frame {:?}", got, want),
            }
        }
        prop_assert!(at >= messages.iter().map(|m| m.to_frame().len()).sum::<usize>());
    }

    #[test]
    fn every_message_round_trips(message in arb_message()) {
        let frame = message.to_frame();
        prop_assert!(frame.len() <= wire::HEADER_LEN + wire::MAX_PAYLOAD_LEN);
        prop_assert_eq!(decode_frame(&frame).unwrap(), Some((message, frame.len())));
    }
}

//! Per-request latency of the client against the floor of one raw socket round trip, measured
//! in the same run (issue #8). A benchmark, not a test: it asserts nothing about speed and is
//! ignored by default. Run it in release:
//!
//!     cargo test --release -p transports --test latency_bench -- --ignored --nocapture
//!
//! Both sides talk to the same kind of server: a plain thread answering REGION_READ with
//! blocking reads and writes, so that only the client side differs:
//! - **floor (blocking)**: a thread doing `write_all` + `read_exact` per request;
//! - **floor (tokio)**: a tokio task doing the same on a tokio `UnixStream` (the cost of the
//!   runtime's wakeups, which any async client pays);
//! - **client**: `Client::region_read` of 4 bytes (no twin socket, DMA disabled).
//!
//! Rounds alternate floor and client so that drift on a shared machine hits both.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use transports::vfio_user::wire::{
    Command, HEADER_LEN, Header, HeaderRepr, MessageType, RegionAccessRepr, VersionRepr, encode_message,
};
use transports::vfio_user::{Client, ClientConfig, DmaMode, NoDma};

const ROUNDS: usize = 7;
const REQUESTS: usize = 5_000;

/// Answers VERSION (no twin socket) and REGION_READ (zeros) until the peer closes.
fn serve(mut socket: UnixStream) {
    let mut header = [0u8; HEADER_LEN];
    let mut payload = Vec::new();
    while socket.read_exact(&mut header).is_ok() {
        let Ok(repr) = HeaderRepr::parse(&Header::new_checked(&header[..]).unwrap()) else { return };
        payload.resize(repr.payload_len(), 0);
        if socket.read_exact(&mut payload).is_err() {
            return;
        }
        let answer = match repr.command {
            Command::Version => VersionRepr {
                major: 0,
                minor: 2,
                json: Some(r#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576}}"#.to_owned()),
            }
            .to_bytes(),
            Command::RegionRead => {
                let count = u32::from_le_bytes(payload[12..16].try_into().unwrap());
                let access = RegionAccessRepr {
                    offset: u64::from_le_bytes(payload[0..8].try_into().unwrap()),
                    region: u32::from_le_bytes(payload[8..12].try_into().unwrap()),
                    count,
                };
                access.to_bytes_with(&vec![0u8; count as usize])
            }
            _ => Vec::new(),
        };
        if !repr.no_reply {
            let reply =
                encode_message(repr.id, repr.command, MessageType::Reply, false, None, &answer).unwrap();
            if socket.write_all(&reply).is_err() {
                return;
            }
        }
    }
}

fn server() -> UnixStream {
    let (ours, theirs) = UnixStream::pair().unwrap();
    std::thread::spawn(move || serve(theirs));
    ours
}

fn request(id: u16) -> Vec<u8> {
    let access = RegionAccessRepr { offset: 0, region: 0, count: 4 }.to_bytes_with(&[]);
    encode_message(id, Command::RegionRead, MessageType::Command, false, None, &access).unwrap()
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p) as usize]
}

fn floor_blocking() -> Vec<Duration> {
    let mut socket = server();
    let mut reply = [0u8; HEADER_LEN + 16 + 4];
    let mut samples = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS {
        let message = request(i as u16);
        let start = Instant::now();
        socket.write_all(&message).unwrap();
        socket.read_exact(&mut reply).unwrap();
        samples.push(start.elapsed());
    }
    samples
}

async fn floor_tokio() -> Vec<Duration> {
    let socket = server();
    socket.set_nonblocking(true).unwrap();
    let mut socket = tokio::net::UnixStream::from_std(socket).unwrap();
    let mut reply = [0u8; HEADER_LEN + 16 + 4];
    let mut samples = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS {
        let message = request(i as u16);
        let start = Instant::now();
        socket.write_all(&message).await.unwrap();
        socket.read_exact(&mut reply).await.unwrap();
        samples.push(start.elapsed());
    }
    samples
}

async fn client() -> Vec<Duration> {
    let config = ClientConfig { twin_socket: false, dma: DmaMode::Disabled, ..ClientConfig::default() };
    let (client, _events) = Client::from_fd(OwnedFd::from(server()), config, NoDma).await.unwrap();
    let mut samples = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let start = Instant::now();
        let data = client.region_read(0, 0, 4).await.unwrap();
        samples.push(start.elapsed());
        assert_eq!(data.len(), 4);
    }
    client.close().await;
    samples
}

#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn region_read_latency_against_the_raw_socket_floor() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (mut blocking, mut async_floor, mut ours) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        blocking.extend(floor_blocking());
        async_floor.extend(runtime.block_on(floor_tokio()));
        ours.extend(runtime.block_on(client()));
    }
    let row = |name: &str, samples: &mut Vec<Duration>, floor_p50: Duration| {
        let p50 = percentile(samples, 0.5);
        let p99 = percentile(samples, 0.99);
        println!(
            "{name:<24} p50 {:>7.2} us  p99 {:>7.2} us  p50/floor(blocking) {:.2}",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            p50.as_secs_f64() / floor_p50.as_secs_f64()
        );
        p50
    };
    let floor = percentile(&mut blocking, 0.5);
    row("floor (blocking)", &mut blocking, floor);
    let tokio_p50 = row("floor (tokio)", &mut async_floor, floor);
    let client_p50 = row("client region_read", &mut ours, floor);
    println!(
        "client p50 / tokio floor p50: {:.2} ({} rounds x {REQUESTS} requests each)",
        client_p50.as_secs_f64() / tokio_p50.as_secs_f64(),
        ROUNDS
    );
}

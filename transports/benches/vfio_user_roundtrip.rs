//! Round-trip cost of the client against the in-test reference server, as ratios against a raw
//! socket loop measured in the same run (no absolute numbers are asserted anywhere).
//!
//! Run: `cargo bench -p transports --bench vfio_user_roundtrip`

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::{Device, Hello, Peer, connect, serve, socket_pair};
use transports::vfio_user::socket::MessageSocket;
use transports::vfio_user::wire::{self, Command, MessageType, RegionAccessRepr};
use transports::vfio_user::{ClientConfig, NoDma};

const READS: usize = 20_000;
const TASKS: usize = 16;

async fn raw_baseline() -> Duration {
    let (ours, theirs) = socket_pair();
    let device = Device::new(1 << 20);
    tokio::spawn(serve(Peer::from_socket(MessageSocket::from_owned_fd(theirs).unwrap()), device));
    let socket = MessageSocket::from_owned_fd(ours).unwrap();
    let payload = RegionAccessRepr { offset: 0, region: 0, count: 4 }.to_bytes_with(&[]);
    let start = Instant::now();
    for i in 0..READS {
        let message =
            wire::encode_message(i as u16, Command::RegionRead, MessageType::Command, false, None, &payload)
                .unwrap();
        socket.send(&message, &[]).await.unwrap();
        let reply = socket.recv(1 << 20, 1).await.unwrap().unwrap();
        assert_eq!(reply.payload.len(), 20);
    }
    start.elapsed()
}

async fn client_sequential() -> Duration {
    let (client, _events, peer) =
        connect(ClientConfig::default(), Hello::libvfio_user_like(8, 1 << 20, true), NoDma).await;
    tokio::spawn(serve(peer, Device::new(1 << 20)));
    let start = Instant::now();
    for _ in 0..READS {
        client.region_read(0, 0, 4).await.unwrap();
    }
    start.elapsed()
}

async fn client_pipelined() -> Duration {
    let (client, _events, peer) =
        connect(ClientConfig::default(), Hello::libvfio_user_like(8, 1 << 20, true), NoDma).await;
    tokio::spawn(serve(peer, Device::new(1 << 20)));
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                for _ in 0..READS / TASKS {
                    client.region_read(0, 0, 4).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    start.elapsed()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let raw = raw_baseline().await;
        let sequential = client_sequential().await;
        let pipelined = client_pipelined().await;
        let per_op = |d: Duration| d.as_secs_f64() * 1e9 / READS as f64;
        println!("4-byte REGION_READ round trips, {READS} each, reference server in-process");
        println!("  raw socket loop (baseline)   {:>8.0} ns/op  1.00x", per_op(raw));
        println!(
            "  client, one task             {:>8.0} ns/op  {:.2}x baseline time",
            per_op(sequential),
            sequential.as_secs_f64() / raw.as_secs_f64()
        );
        println!(
            "  client, {TASKS} tasks pipelined   {:>8.0} ns/op  {:.2}x baseline time",
            per_op(pipelined),
            pipelined.as_secs_f64() / raw.as_secs_f64()
        );
    });
}

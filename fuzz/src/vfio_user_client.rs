//! The vfio-user client's receive path end to end: a server that negotiates properly (VERSION,
//! no twin socket, `max_data_xfer_size` 4096) and then sends the fuzz input as its byte stream
//! — replies, DMA_READ/DMA_WRITE commands, garbage, lies about sizes and ids — while the client
//! has four requests in flight (REGION_READ id 0, DEVICE_GET_INFO id 1,
//! DEVICE_GET_REGION_INFO id 2, DEVICE_GET_IRQ_INFO id 3).
//!
//! Properties: the client never panics and never hangs: every request ends (a reply, a server
//! error, a timeout or the connection's failure) within its request timeout; a REGION_READ
//! that succeeds returns exactly the bytes asked for; a DEVICE_GET_INFO that succeeds is within
//! the documented bounds (≤ 100 regions, ≤ 50 irq indices); no single allocation exceeds the
//! receive limit the client derives from the negotiated sizes (16 + 16 + 1 MiB, or
//! 16 + 64 KiB for info replies).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use transports::vfio_user::client::{MAX_IRQ_INDICES, MAX_REGIONS};
use transports::vfio_user::wire::{self, Command, HEADER_LEN, MessageType, VersionRepr};
use transports::vfio_user::{Client, ClientConfig, DmaMode, NoDma};

use crate::alloc_watch;

const REQUEST_TIMEOUT: Duration = Duration::from_millis(50);

/// The server's half of the VERSION exchange, then `stream`, then it drains what the client
/// sends until the client closes.
fn serve(mut socket: UnixStream, stream: Vec<u8>) {
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut header = [0u8; HEADER_LEN];
    if socket.read_exact(&mut header).is_err() {
        return;
    }
    let size = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    let mut payload = vec![0u8; size.saturating_sub(HEADER_LEN).min(1 << 16)];
    if socket.read_exact(&mut payload).is_err() {
        return;
    }
    let version = VersionRepr {
        major: 0,
        minor: 1,
        json: Some(r#"{"capabilities":{"max_data_xfer_size":4096,"max_msg_fds":1}}"#.to_owned()),
    };
    let reply =
        wire::encode_message(0, Command::Version, MessageType::Reply, false, None, &version.to_bytes())
            .unwrap();
    if socket.write_all(&reply).is_err() {
        return;
    }
    let _ = socket.write_all(&stream);
    let _ = socket.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 4096];
    while matches!(socket.read(&mut sink), Ok(n) if n > 0) {}
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
}

pub fn check(data: &[u8]) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let stream = data.to_vec();
    let server = std::thread::spawn(move || serve(theirs, stream));
    alloc_watch::reset();
    RUNTIME.with(|rt| rt.block_on(exercise(ours)));
    let largest = alloc_watch::largest();
    server.join().unwrap();
    let limit = (HEADER_LEN + 16 + (1 << 20)).max(HEADER_LEN + 64 * 1024);
    assert!(largest <= limit + 64 * 1024, "the client allocated {largest} bytes at once (limit {limit})");
}

async fn exercise(socket: UnixStream) {
    let config = ClientConfig {
        request_timeout: REQUEST_TIMEOUT,
        reset_timeout: REQUEST_TIMEOUT,
        twin_socket: false,
        dma: DmaMode::Windows(Vec::new()),
        max_in_flight: 8,
        dma_handler_timeout: REQUEST_TIMEOUT,
        ..ClientConfig::default()
    };
    let (client, _events) = match Client::from_fd(socket.into(), config, NoDma).await {
        Ok(connected) => connected,
        // The VERSION reply is fixed; a loaded machine may miss the short timeout. Not a finding.
        Err(_) => return,
    };
    let bound = REQUEST_TIMEOUT * 4 + Duration::from_secs(2);
    let requests = async {
        tokio::join!(
            client.region_read(0, 0x10, 8),
            client.device_info(),
            client.region_info(0),
            client.irq_info(0)
        )
    };
    let (read, info, _region, _irq) = tokio::time::timeout(bound, requests)
        .await
        .unwrap_or_else(|_| panic!("requests still pending after {bound:?}"));
    if let Ok(bytes) = read {
        assert_eq!(bytes.len(), 8, "REGION_READ of 8 bytes returned {}", bytes.len());
    }
    if let Ok(info) = info {
        assert!(info.num_regions <= MAX_REGIONS && info.num_irqs <= MAX_IRQ_INDICES, "{info:?}");
    }
    tokio::time::timeout(bound, client.close()).await.unwrap_or_else(|_| panic!("close hung"));
}

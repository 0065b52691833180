//! Our vfio-user client against libvfio-user's sample servers (the 2022 copy bundled with QEMU
//! 7.2: message-based DMA on the main socket, no twin socket).
//!
//! `samples/server` (read its `main` and `do_dma_io`): writing a `time_t` T to BAR0 (8 bytes at
//! offset 0, nothing else is accepted) arms a timer for `T - time(NULL)` seconds. When it fires,
//! the server triggers INTx vector 0 (exiting if no eventfd was assigned), then DMA_WRITEs 4096
//! bytes of 'A' to the start of the *first* DMA region mapped, DMA_READs them back and exits with
//! "DMA write and DMA read mismatch" if the CRCs differ. A client disconnect ends it with status 0.
//!
//! `samples/gpio-pci-idio-16`: a 256-byte I/O BAR2 whose byte 0 reads `pin++ / 3` (the GPIO
//! state advancing on every read); it re-attaches after a disconnect.

use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};
use tlpbridge_tests::TestDir;
use tlpbridge_tests::peers;
use tokio::sync::Notify;
use transports::vfio_user::{Client, ClientConfig, DmaError, DmaHandler, DmaMode, DmaWindow};

/// Bounds every wait in these tests; the server's timer needs at most 2 s.
const WAIT: Duration = Duration::from_secs(20);
/// The host memory behind the one DMA window, at a non-zero bus address so that an address
/// mix-up cannot pass by accident.
const WINDOW: DmaWindow =
    DmaWindow { address: 0x10_0000, size: 0x10_0000, device_reads: true, device_writes: true };
/// What `do_dma_io` transfers.
const DMA_LEN: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
enum DmaEvent {
    Read { address: u64, len: usize },
    Write { address: u64, data: Vec<u8> },
}

/// Host memory for [`WINDOW`], recording every server DMA in order.
#[derive(Clone)]
struct RecordingMemory {
    state: Arc<Mutex<(Vec<u8>, Vec<DmaEvent>)>>,
    changed: Arc<Notify>,
}

impl RecordingMemory {
    fn new() -> Self {
        let memory = vec![0u8; WINDOW.size as usize];
        RecordingMemory {
            state: Arc::new(Mutex::new((memory, Vec::new()))),
            changed: Arc::new(Notify::new()),
        }
    }

    /// The byte range of `[address, address + len)` inside the window's memory.
    fn range(address: u64, len: usize) -> Result<std::ops::Range<usize>, DmaError> {
        let start = address.checked_sub(WINDOW.address).ok_or(DmaError::UnsupportedRequest)? as usize;
        let end = start.checked_add(len).ok_or(DmaError::UnsupportedRequest)?;
        if end > WINDOW.size as usize {
            return Err(DmaError::UnsupportedRequest);
        }
        Ok(start..end)
    }

    fn events(&self) -> Vec<DmaEvent> {
        self.state.lock().unwrap().1.clone()
    }

    fn memory(&self) -> Vec<u8> {
        self.state.lock().unwrap().0.clone()
    }

    /// Waits until at least `n` DMA requests have been served.
    async fn wait_for_events(&self, n: usize) {
        let waiting = async {
            loop {
                let notified = self.changed.notified();
                if self.events().len() >= n {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(WAIT, waiting)
            .await
            .unwrap_or_else(|_| panic!("fewer than {n} DMA requests within {WAIT:?}: {:?}", self.events()));
    }
}

impl DmaHandler for RecordingMemory {
    fn dma_read(&self, address: u64, len: usize) -> impl Future<Output = Result<Vec<u8>, DmaError>> + Send {
        let result = Self::range(address, len).map(|range| {
            let mut state = self.state.lock().unwrap();
            let data = state.0[range].to_vec();
            state.1.push(DmaEvent::Read { address, len });
            data
        });
        self.changed.notify_waiters();
        std::future::ready(result)
    }

    fn dma_write(
        &self,
        address: u64,
        data: bytes::Bytes,
    ) -> impl Future<Output = Result<(), DmaError>> + Send {
        let result = Self::range(address, data.len()).map(|range| {
            let mut state = self.state.lock().unwrap();
            state.0[range].copy_from_slice(&data);
            state.1.push(DmaEvent::Write { address, data: data.to_vec() });
        });
        self.changed.notify_waiters();
        std::future::ready(result)
    }
}

/// A non-blocking eventfd the server signals, and a bounded wait for it.
struct IrqEventFd(EventFd);

impl IrqEventFd {
    fn new() -> Self {
        IrqEventFd(EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC).unwrap())
    }

    /// Waits up to [`WAIT`] for the counter to become non-zero and returns (and clears) it.
    async fn wait(&self, what: &str) -> u64 {
        let reading = async {
            loop {
                match self.0.read() {
                    Ok(count) => return count,
                    Err(Errno::EAGAIN) => tokio::time::sleep(Duration::from_millis(5)).await,
                    Err(e) => panic!("reading the {what} eventfd: {e}"),
                }
            }
        };
        tokio::time::timeout(WAIT, reading)
            .await
            .unwrap_or_else(|_| panic!("{what} did not fire within {WAIT:?}"))
    }
}

fn unix_time() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

#[tokio::test]
async fn sample_server_interrupt_and_message_based_dma() {
    let dir = TestDir::new("lvu-dma").unwrap();
    let Some(mut peer) = peers::start_libvfio_user_server(&dir) else { return };
    let memory = RecordingMemory::new();
    let config = ClientConfig { dma: DmaMode::Windows(vec![WINDOW]), ..ClientConfig::default() };
    let (client, _events) = Client::connect(peer.socket(), config, memory.clone()).await.unwrap();

    // The 2022 copy knows no twin socket: server DMA comes on the main socket (single-socket
    // mode, where the client holds its commands while a DMA request is unanswered).
    assert!(!client.negotiated().twin_socket, "{:?}", client.negotiated());
    assert_eq!(client.dma_windows(), vec![WINDOW]);
    let info = client.device_info().await.unwrap();
    assert!(info.is_pci());
    assert_eq!(client.irq_info(0).await.unwrap().count, 1, "INTx");
    let vendor_device = client.config_read(0, 4).await.unwrap();
    assert_eq!(vendor_device, [0xad, 0xde, 0xef, 0xbe], "dead:beef");

    let intx = IrqEventFd::new();
    client.set_irqs_eventfds(0, 0, &[intx.0.as_fd()]).await.unwrap();

    // The sample arms its timer for `T - time(NULL)` whole seconds, and a 0 disarms it; +2
    // rather than +1 keeps it at 1 or 2 even if the second turns between our clock read and
    // the server's.
    let fire_at = unix_time() + 2;
    client.region_write(0, 0, &fire_at.to_le_bytes()).await.unwrap();
    // Reading BAR0 gives `time(NULL) - T`, a negative delta while the timer is pending.
    let delta = i64::from_le_bytes(client.region_read(0, 0, 8).await.unwrap().try_into().unwrap());
    assert!((-2..=0).contains(&delta), "BAR0 read back {delta}");

    assert!(intx.wait("INTx").await >= 1);
    memory.wait_for_events(2).await;

    let expected = vec![
        DmaEvent::Write { address: WINDOW.address, data: vec![b'A'; DMA_LEN] },
        DmaEvent::Read { address: WINDOW.address, len: DMA_LEN },
    ];
    assert_eq!(memory.events(), expected);
    let host = memory.memory();
    assert!(host[..DMA_LEN].iter().all(|&b| b == b'A'));
    assert!(host[DMA_LEN..].iter().all(|&b| b == 0), "DMA beyond the 4 KiB written");

    // The server compared the CRCs of what it wrote and read back before taking this request;
    // a mismatch would have ended it with an error instead of an answer.
    let info_after = client.device_info().await.unwrap();
    assert_eq!(info_after, info);
    assert!(peer.is_running().unwrap(), "server exited:\n{}", peer.output());

    client.close().await;
    let status = peer.wait_exit(WAIT).unwrap();
    assert!(status.success(), "server exited with {status} after the client closed:\n{}", peer.output());
    assert!(!peer.output().contains("mismatch"), "{}", peer.output());
}

#[tokio::test]
async fn gpio_sample_bar2_reads_return_the_gpio_state() {
    let dir = TestDir::new("lvu-gpio").unwrap();
    let Some(mut peer) = peers::start_libvfio_user_gpio(&dir) else { return };
    let config = ClientConfig { dma: DmaMode::Disabled, ..ClientConfig::default() };
    let (client, _events) =
        Client::connect(peer.socket(), config, transports::vfio_user::NoDma).await.unwrap();

    let bar2 = client.region_info(2).await.unwrap();
    assert_eq!(bar2.size, 0x100);
    assert!(bar2.readable() && bar2.writable());
    // Config BAR2 (offset 0x18) has bit 0 set: an I/O BAR.
    let bar2_config = client.config_read(0x18, 4).await.unwrap();
    assert_eq!(bar2_config[0] & 1, 1, "BAR2 {bar2_config:02x?}");

    // Byte 0 reads `pin++ / 3`: the state advances on every read, three reads per step.
    let mut states = Vec::new();
    for _ in 0..9 {
        states.extend(client.region_read(2, 0, 1).await.unwrap());
    }
    assert_eq!(states, [0, 0, 0, 1, 1, 1, 2, 2, 2]);
    // Writes are accepted (and ignored) by the card.
    client.region_write(2, 0, &[0xff]).await.unwrap();
    assert_eq!(client.region_read(2, 0, 1).await.unwrap(), [3]);

    client.close().await;
    assert!(peer.is_running().unwrap(), "the gpio sample re-attaches after a disconnect:\n{}", peer.output());
}

//! The same-run baselines: the socket work the bridge cannot avoid, done by a minimal program.
//!
//! Layout, as in the measured setup: a *host* end on a TCP connection over 127.0.0.1 (the sim
//! link's socket), a *relay* that copies bytes between that TCP connection and a UNIX stream
//! socket (`tokio::io::copy_bidirectional`, the bridge's position without any bridge logic), and
//! a *device* end on the UNIX socket (the vfio-user socket). Host and device ends are tasks of
//! the runtime the load generator and the device run in; the relay runs on a thread of its own,
//! as the bridge runs on a runtime of its own. Messages are a 16-byte header (kind u32 LE, length u32
//! LE, 8 bytes zero, like a vfio-user header) and `length` payload bytes.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::task::JoinSet;

use super::own_thread::OwnThread;
use super::rig::bench_error;
use crate::engine::BridgeError;

const HEADER: usize = 16;
/// Ask for `length` bytes; answered with DATA.
const READ: u32 = 1;
const DATA: u32 = 2;
/// Carries `length` bytes; not answered (a posted write).
const WRITE: u32 = 3;
/// Carries `length` bytes; answered with an empty ACK.
const WRITE_ACK: u32 = 4;
const ACK: u32 = 5;
/// Largest payload either end sends.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Which end starts the exchanges; the other end answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Initiator {
    /// The host (root port) asks: MMIO reads and writes.
    Host,
    /// The device asks: DMA reads and writes.
    Device,
}

/// A running floor setup; the initiator's stream is one of the two.
pub struct Floor {
    pub host: Option<TcpStream>,
    pub device: Option<UnixStream>,
    tasks: JoinSet<()>,
    relay: OwnThread,
}

impl Floor {
    pub async fn start(initiator: Initiator) -> Result<Floor, BridgeError> {
        let fail = |e: std::io::Error| bench_error("starting the socket floor", e);
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(fail)?;
        let addr = listener.local_addr().map_err(fail)?;
        let (host, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (host, (relay_tcp, _)) = (host.map_err(fail)?, accepted.map_err(fail)?);
        host.set_nodelay(true).map_err(fail)?;
        relay_tcp.set_nodelay(true).map_err(fail)?;
        let (relay_unix, device) = UnixStream::pair().map_err(fail)?;
        // Moved to the relay's runtime (std sockets stay non-blocking).
        let (relay_tcp, relay_unix) =
            (relay_tcp.into_std().map_err(fail)?, relay_unix.into_std().map_err(fail)?);
        // One task: a minimal relay program needs one thread.
        let relay = OwnThread::start("floor-relay", 1)?;
        relay.handle().spawn(async move {
            let (Ok(mut tcp), Ok(mut unix)) =
                (TcpStream::from_std(relay_tcp), UnixStream::from_std(relay_unix))
            else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
        });
        let mut tasks = JoinSet::new();
        let (host, device) = match initiator {
            Initiator::Host => {
                tasks.spawn(respond(device));
                (Some(host), None)
            }
            Initiator::Device => {
                tasks.spawn(respond(host));
                (None, Some(device))
            }
        };
        Ok(Floor { host, device, tasks, relay })
    }

    pub async fn stop(mut self) {
        drop(self.host.take());
        drop(self.device.take());
        self.tasks.shutdown().await;
        self.relay.stop().await;
    }
}

fn header(kind: u32, len: usize, buf: &mut [u8]) {
    buf[..4].copy_from_slice(&kind.to_le_bytes());
    buf[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    buf[8..HEADER].fill(0);
}

async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<(u32, usize)> {
    let mut h = [0u8; HEADER];
    stream.read_exact(&mut h).await?;
    let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "floor message too long"));
    }
    Ok((kind, len))
}

/// The answering end: serves READ from a buffer, swallows WRITE, acknowledges WRITE_ACK.
async fn respond<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let mut out = vec![0u8; HEADER + MAX_PAYLOAD];
    let mut sink = vec![0u8; MAX_PAYLOAD];
    while let Ok((kind, len)) = read_header(&mut stream).await {
        let result = match kind {
            READ => {
                header(DATA, len, &mut out);
                stream.write_all(&out[..HEADER + len]).await
            }
            WRITE => stream.read_exact(&mut sink[..len]).await.map(drop),
            WRITE_ACK => match stream.read_exact(&mut sink[..len]).await {
                Ok(_) => {
                    header(ACK, 0, &mut out);
                    stream.write_all(&out[..HEADER]).await
                }
                Err(e) => Err(e),
            },
            _ => return,
        };
        if result.is_err() {
            return;
        }
    }
}

/// The initiating end's operations, with reusable buffers.
pub struct Requester {
    out: Vec<u8>,
    input: Vec<u8>,
}

impl Default for Requester {
    fn default() -> Self {
        Requester { out: vec![0u8; HEADER + MAX_PAYLOAD], input: vec![0u8; MAX_PAYLOAD] }
    }
}

impl Requester {
    /// READ of `len` bytes and its DATA: one round trip through both sockets.
    pub async fn read<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        len: usize,
    ) -> Result<(), BridgeError> {
        let fail = |e: std::io::Error| bench_error("socket floor read", e);
        header(READ, len, &mut self.out);
        stream.write_all(&self.out[..HEADER]).await.map_err(fail)?;
        let (kind, got) = read_header(stream).await.map_err(fail)?;
        if kind != DATA || got != len {
            return Err(bench_error("socket floor read", format!("answer kind {kind} length {got}")));
        }
        stream.read_exact(&mut self.input[..len]).await.map_err(fail)?;
        Ok(())
    }

    /// A WRITE of `len` bytes, not answered.
    pub async fn post<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        len: usize,
    ) -> Result<(), BridgeError> {
        header(WRITE, len, &mut self.out);
        stream.write_all(&self.out[..HEADER + len]).await.map_err(|e| bench_error("socket floor write", e))
    }

    /// A WRITE_ACK of `len` bytes and its ACK.
    pub async fn write<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        len: usize,
    ) -> Result<(), BridgeError> {
        let fail = |e: std::io::Error| bench_error("socket floor write", e);
        header(WRITE_ACK, len, &mut self.out);
        stream.write_all(&self.out[..HEADER + len]).await.map_err(fail)?;
        let (kind, _) = read_header(stream).await.map_err(fail)?;
        if kind != ACK {
            return Err(bench_error("socket floor write", format!("answer kind {kind}")));
        }
        Ok(())
    }
}

/// A TCP connection over 127.0.0.1 whose far end is one task writing back every byte it reads:
/// the baseline of a link round trip (one socket, one task, no framing).
pub struct Echo {
    pub stream: TcpStream,
    tasks: JoinSet<()>,
}

impl Echo {
    pub async fn start() -> Result<Echo, BridgeError> {
        let fail = |e: std::io::Error| bench_error("starting the TCP echo", e);
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(fail)?;
        let addr = listener.local_addr().map_err(fail)?;
        let (stream, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (stream, (mut far, _)) = (stream.map_err(fail)?, accepted.map_err(fail)?);
        stream.set_nodelay(true).map_err(fail)?;
        far.set_nodelay(true).map_err(fail)?;
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = far.read(&mut buf).await {
                if n == 0 || far.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
        Ok(Echo { stream, tasks })
    }

    /// Writes `message` and reads as many bytes back.
    pub async fn round_trip(&mut self, message: &[u8], back: &mut [u8]) -> Result<(), BridgeError> {
        let fail = |e: std::io::Error| bench_error("TCP echo", e);
        self.stream.write_all(message).await.map_err(fail)?;
        let back =
            back.get_mut(..message.len()).ok_or_else(|| bench_error("TCP echo", "buffer too small"))?;
        self.stream.read_exact(back).await.map_err(fail)?;
        Ok(())
    }

    pub async fn stop(mut self) {
        self.tasks.shutdown().await;
    }
}

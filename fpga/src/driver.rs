//! Runs a [`Dll`] over a byte device (serial port, pty, stream files): reader and writer tasks,
//! the state machine's timers, delivery to the user's bounded channels, and reopening the device
//! with backoff when it goes away.

use std::future::Future;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use transports::link::{LinkClock, LinkEvent, LinkInput, LinkInstant, ReceivedTlp, RetransmitTap};

use crate::dll::{Delivery, Dll, DllConfig, DllStats};
use crate::faults::{FaultConfig, FaultCounters, Injector};

/// An opened byte device.
pub struct Device {
    pub reader: Box<dyn AsyncRead + Send + Unpin>,
    pub writer: Box<dyn AsyncWrite + Send + Unpin>,
    /// For logs: what was opened.
    pub name: String,
}

/// Opens the device again after it went away.
pub type Reopen = Box<dyn FnMut() -> Pin<Box<dyn Future<Output = io::Result<Device>> + Send>> + Send>;

/// A non-blocking file (tty, pty master, FIFO) driven by tokio's reactor.
pub struct FdIo<T: AsRawFd>(AsyncFd<T>);

impl FdIo<std::fs::File> {
    /// Puts `file` into non-blocking mode and registers it with the reactor. Fails for files that
    /// epoll cannot watch (regular files, some character devices).
    pub fn new(file: std::fs::File) -> io::Result<Self> {
        set_nonblocking(&file)?;
        // SAFETY: the `File` owns its descriptor and keeps it open (and the same) until the
        // `AsyncFd` that now owns the `File` is dropped.
        let fd = unsafe { AsyncFd::register(file) }.map_err(io::Error::from)?;
        Ok(FdIo(fd))
    }
}

impl<T: AsRawFd + Read + Unpin> AsyncRead for FdIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let mut guard = ready!(this.0.poll_read_ready_mut(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| fd.get_mut().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl<T: AsRawFd + Write + Unpin> AsyncWrite for FdIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            let mut guard = ready!(this.0.poll_write_ready_mut(cx))?;
            match guard.try_io(|fd| fd.get_mut().write(buf)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Puts a file descriptor into non-blocking mode.
pub fn set_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    // SAFETY: `fd` owns an open descriptor for at least the lifetime of this borrow.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd.as_raw_fd()) };
    let flags = fcntl(borrowed, FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(borrowed, FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(())
}

/// How a driver behaves.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    pub dll: DllConfig,
    /// Stamp outgoing TLP frames with this side's nanosecond counter.
    pub send_timestamps: bool,
    /// Faults to inject (emulator only).
    pub faults: FaultConfig,
    /// First and longest wait between attempts to reopen the device.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Told about every TLP the data-link layer resends (a capture records it as retransmitted).
    pub retransmits: RetransmitTap,
}

impl DriverConfig {
    pub fn new(dll: DllConfig) -> Self {
        DriverConfig {
            dll,
            send_timestamps: false,
            faults: FaultConfig::default(),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            retransmits: RetransmitTap::default(),
        }
    }
}

/// What a running link looks like from outside (for reports and tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkStatus {
    pub up: bool,
    pub stats: DllStats,
    /// Times the device went away.
    pub device_lost: u64,
    /// Times it was reopened.
    pub reopened: u64,
    /// TLPs from the user dropped because the link went down before they were sent.
    pub dropped_on_down: u64,
    /// Times the link went down for a hot reset (signalled by either side); these are also
    /// counted in `stats.links_down`.
    pub hot_resets: u64,
    /// NetTLP only: sequence numbers missing in the received datagrams (lost TLPs).
    pub seq_gaps: u64,
}

/// A request from the user to a running driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverCommand {
    /// Signal a hot reset (secondary bus reset) to the peer: the link goes down and its HELLOs
    /// carry HOT_RESET until it is up again ([`Dll::hot_reset`]); both users get
    /// [`LinkEvent::HotReset`] instead of [`LinkEvent::Down`], then [`LinkEvent::Up`].
    HotReset,
}

/// The user's side of a driver: what the link delivers and what it should send.
pub struct UserChannels {
    pub to_user: mpsc::Sender<LinkInput>,
    pub from_user: mpsc::Receiver<Vec<u8>>,
    pub clock: LinkClock,
    /// Requests such as a hot reset; `None` for a user that sends none (the bridge).
    pub commands: Option<mpsc::Receiver<DriverCommand>>,
}

/// Largest single write of queued frames.
const WRITE_BATCH: usize = 64 * 1024;

enum SessionEnd {
    DeviceLost(String),
    UserGone,
}

/// Runs until the user's channels close (or the device is lost and cannot be reopened).
pub async fn run(
    mut device: Device,
    mut reopen: Option<Reopen>,
    config: DriverConfig,
    mut user: UserChannels,
    status: watch::Sender<LinkStatus>,
    fault_counters: std::sync::Arc<FaultCounters>,
) {
    let start = Instant::now();
    let mut dll = Dll::new(config.dll.clone(), start.elapsed());
    let mut inject_in = Injector::new(config.faults.clone(), fault_counters.clone(), 1);
    let mut inject_out = Injector::new(config.faults.clone(), fault_counters, 2);
    let mut anchor: Option<(u64, LinkInstant)> = None;
    let mut gate = TxGate::default();
    loop {
        let name = device.name.clone();
        tracing::info!(device = %name, "fpga link: device open");
        let end = session(
            &mut dll,
            device,
            &config,
            &mut user,
            &status,
            start,
            &mut inject_in,
            &mut inject_out,
            &mut anchor,
            &mut gate,
        )
        .await;
        let reason = match end {
            SessionEnd::UserGone => return,
            SessionEnd::DeviceLost(reason) => reason,
        };
        tracing::warn!(device = %name, %reason, "fpga link: device lost");
        dll.reset(start.elapsed());
        status.send_modify(|s| {
            s.device_lost += 1;
            s.up = false;
            s.stats = dll.stats();
        });
        while let Some(d) = dll.poll_delivery() {
            if deliver(d, &mut user, &mut anchor, &status, &mut gate).await.is_err() {
                return;
            }
        }
        let Some(reopen) = reopen.as_mut() else { return };
        let mut backoff = config.backoff_min;
        device = loop {
            let wait = tokio::time::sleep(backoff);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = user.to_user.closed() => return,
                    _ = &mut wait => break,
                    // Down was delivered: what the user sends now is for a link that is gone.
                    tlp = user.from_user.recv() => match tlp {
                        Some(_) => TxGate::dropped(1, &status),
                        None => return,
                    },
                }
            }
            match reopen().await {
                Ok(d) => break d,
                Err(e) => {
                    tracing::debug!(device = %name, error = %e, "fpga link: reopen failed, retrying");
                    backoff = (backoff * 2).min(config.backoff_max);
                }
            }
        };
        status.send_modify(|s| s.reopened += 1);
    }
}

/// Keeps TLPs the user queued for a link that went down from reaching the next one (PCIe: the
/// transaction layer discards what it has queued at DL_Down). From the delivery of `Down` to the
/// delivery of the next `Up`, every TLP from the user is dropped and counted in
/// [`LinkStatus::dropped_on_down`]; before the first `Up` they wait for the link instead.
#[derive(Debug, Default)]
struct TxGate {
    discarding: bool,
}

impl TxGate {
    /// Hands `d` to the user through `permit`, applying the rule above.
    fn hand_over(
        &mut self,
        permit: mpsc::Permit<'_, LinkInput>,
        d: Delivery,
        from_user: &mut mpsc::Receiver<Vec<u8>>,
        clock: &LinkClock,
        anchor: &mut Option<(u64, LinkInstant)>,
        status: &watch::Sender<LinkStatus>,
    ) {
        let down = matches!(d, Delivery::Down { .. });
        if matches!(d, Delivery::Up(_)) && self.discarding {
            // Still queued before the user can know of the new link: meant for the old one.
            Self::drain(from_user, status);
            self.discarding = false;
        }
        permit.send(to_input(d, clock, anchor, status));
        if down {
            self.discarding = true;
            Self::drain(from_user, status);
        }
    }

    fn drain(from_user: &mut mpsc::Receiver<Vec<u8>>, status: &watch::Sender<LinkStatus>) {
        let mut dropped = 0;
        while from_user.try_recv().is_ok() {
            dropped += 1;
        }
        Self::dropped(dropped, status);
    }

    fn dropped(count: u64, status: &watch::Sender<LinkStatus>) {
        if count > 0 {
            tracing::debug!(count, "fpga link: TLPs queued for a link that went down dropped");
            status.send_modify(|s| s.dropped_on_down += count);
        }
    }
}

/// The next command, or `None` once the sender is gone (or there never was one).
async fn next_command(commands: &mut Option<mpsc::Receiver<DriverCommand>>) -> Option<DriverCommand> {
    match commands {
        Some(rx) => rx.recv().await,
        None => None,
    }
}

async fn deliver(
    d: Delivery,
    user: &mut UserChannels,
    anchor: &mut Option<(u64, LinkInstant)>,
    status: &watch::Sender<LinkStatus>,
    gate: &mut TxGate,
) -> Result<(), ()> {
    let UserChannels { to_user, from_user, clock, .. } = user;
    let permit = to_user.reserve().await.map_err(|_| ())?;
    gate.hand_over(permit, d, from_user, clock, anchor, status);
    Ok(())
}

fn to_input(
    d: Delivery,
    clock: &LinkClock,
    anchor: &mut Option<(u64, LinkInstant)>,
    status: &watch::Sender<LinkStatus>,
) -> LinkInput {
    let now = clock.now();
    match d {
        Delivery::Up(_) => {
            *anchor = None;
            status.send_modify(|s| s.up = true);
            LinkInput::Event { event: LinkEvent::Up, time: now }
        }
        Delivery::Down { reason, .. } => {
            status.send_modify(|s| {
                s.up = false;
                if reason.is_hot_reset() {
                    s.hot_resets += 1;
                }
            });
            // A hot reset takes the link down too; the user hears the reason, which it treats
            // as a down link and more (PCIe: the hierarchy below is reset).
            let event = if reason.is_hot_reset() { LinkEvent::HotReset } else { LinkEvent::Down };
            LinkInput::Event { event, time: now }
        }
        Delivery::Tlp { tlp, timestamp } => {
            // The peer's counter, placed on our clock at the first stamped TLP after link-up.
            let time = match timestamp {
                Some(ts) => {
                    let (ts0, t0) = *anchor.get_or_insert((ts, now));
                    t0.saturating_add(Duration::from_nanos(ts.saturating_sub(ts0)))
                }
                None => now,
            };
            LinkInput::Tlp(ReceivedTlp { bytes: tlp.into(), time })
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    dll: &mut Dll,
    device: Device,
    config: &DriverConfig,
    user: &mut UserChannels,
    status: &watch::Sender<LinkStatus>,
    start: Instant,
    inject_in: &mut Injector,
    inject_out: &mut Injector,
    anchor: &mut Option<(u64, LinkInstant)>,
    gate: &mut TxGate,
) -> SessionEnd {
    let Device { mut reader, mut writer, .. } = device;
    let (chunk_tx, mut chunks) = mpsc::channel::<io::Result<Vec<u8>>>(8);
    let (frame_tx, mut frame_rx) = mpsc::channel::<(Instant, Vec<u8>)>(8);
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let result = match reader.read(&mut buf).await {
                Ok(0) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "end of file")),
                Ok(n) => Ok(buf[..n].to_vec()),
                Err(e) => Err(e),
            };
            let failed = result.is_err();
            if chunk_tx.send(result).await.is_err() || failed {
                return;
            }
        }
    });
    let (werr_tx, mut werr_rx) = mpsc::channel::<io::Error>(1);
    tasks.spawn(async move {
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        while let Some((due, frame)) = frame_rx.recv().await {
            // Only an injected delay sleeps: a timer, even one already due, costs a timer tick.
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            // Frames already queued and due go out in the same write (one syscall, not one each).
            batch.clear();
            batch.extend_from_slice(&frame);
            while batch.len() < WRITE_BATCH {
                match frame_rx.try_recv() {
                    Ok((due, frame)) => {
                        if due > Instant::now() {
                            tokio::time::sleep_until(due).await;
                        }
                        batch.extend_from_slice(&frame);
                    }
                    Err(_) => break,
                }
            }
            let result = match writer.write_all(&batch).await {
                Ok(()) => writer.flush().await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                let _ = werr_tx.send(e).await;
                return;
            }
        }
    });
    let delay = config.faults.delay;
    let mut last_stats = dll.stats();
    loop {
        let now = start.elapsed();
        let timer = dll.poll_timeout();
        let sleep = async move {
            match timer {
                Some(at) => tokio::time::sleep_until(start + at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            chunk = chunks.recv() => match chunk {
                Some(Ok(mut bytes)) => {
                    inject_in.incoming(&mut bytes);
                    dll.on_bytes(start.elapsed(), &bytes);
                }
                Some(Err(e)) => return SessionEnd::DeviceLost(format!("read failed: {e}")),
                None => return SessionEnd::DeviceLost("reader stopped".into()),
            },
            e = werr_rx.recv() => {
                return SessionEnd::DeviceLost(match e {
                    Some(e) => format!("write failed: {e}"),
                    None => "writer stopped".into(),
                });
            }
            permit = user.to_user.reserve(), if dll.has_delivery() => {
                let Ok(permit) = permit else { return SessionEnd::UserGone };
                if let Some(d) = dll.poll_delivery() {
                    gate.hand_over(permit, d, &mut user.from_user, &user.clock, anchor, status);
                }
            }
            permit = frame_tx.reserve(), if dll.wants_transmit() => {
                let Ok(permit) = permit else { return SessionEnd::DeviceLost("writer stopped".into()) };
                if let Some(frame) = dll.poll_transmit(now) {
                    if let Some(tlp) = dll.take_replayed() {
                        config.retransmits.report(&tlp, user.clock.now());
                    }
                    if let Some(frame) = inject_out.outgoing(frame) {
                        permit.send((Instant::now() + delay, frame));
                    }
                }
            }
            tlp = user.from_user.recv(), if gate.discarding || dll.can_send() => {
                let Some(tlp) = tlp else { return SessionEnd::UserGone };
                if gate.discarding {
                    TxGate::dropped(1, status);
                } else {
                    let ts = config.send_timestamps.then(|| start.elapsed().as_nanos() as u64);
                    if let Err(e) = dll.send_tlp(tlp, ts) {
                        tracing::warn!(error = %e, "fpga link: TLP not sent");
                    }
                }
            }
            command = next_command(&mut user.commands), if user.commands.is_some() => match command {
                Some(DriverCommand::HotReset) => {
                    tracing::info!("fpga link: hot reset requested");
                    dll.hot_reset(start.elapsed());
                }
                None => user.commands = None,
            },
            _ = sleep => dll.on_timer(start.elapsed()),
        }
        let stats = dll.stats();
        if stats != last_stats {
            last_stats = stats;
            status.send_modify(|s| s.stats = stats);
        }
        if tasks.len() < 2 {
            return SessionEnd::DeviceLost("I/O task ended".into());
        }
    }
}

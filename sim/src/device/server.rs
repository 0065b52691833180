//! A vfio-user server loop, generic over a [`DeviceModel`].
//!
//! One client at a time: the listener accepts a connection, serves it until the client leaves,
//! drops the client's DMA windows and eventfds (device state is kept, as the spec asks), and
//! accepts the next one. Per connection:
//!
//! - a reader task per socket. On the main socket it sends client commands to the handler
//!   (bounded queue) and, in single-socket mode, hands replies to the DMA requests waiting for
//!   them by message id; a client command is never mistaken for a DMA reply (the Type bits
//!   tell them apart). On the twin socket it only accepts replies.
//! - the handler (this task) runs commands strictly in arrival order and replies unless the
//!   command set No_reply. Device work that needs DMA (a copy job) runs in tasks the model owns,
//!   so a doorbell write is answered at once and MMIO keeps flowing while DMA runs.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use serde::Deserialize;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, info_span, warn};
use transports::vfio_user::socket::{MAX_FDS_PER_MESSAGE, MessageSocket, ReceivedMessage};
use transports::vfio_user::wire::{
    self, Command, DeviceInfoRepr, DmaMapRepr, DmaUnmapRepr, HeaderRepr, IrqInfoRepr, IrqSetRepr,
    MessageType, RegionAccessRepr, RegionInfoRepr, VersionRepr, device_flags, dma_map_flags, irq_index,
    irq_info_flags, irq_set_flags, region_flags,
};

use super::bus::{DeviceBus, IRQ_INDEX_COUNT, MappedWindow, SocketWriter, eventfd_file, irq_index_name};
use crate::error::Error;

/// Number of regions of a vfio-user PCI device (BAR0-5, ROM, config, VGA).
pub const PCI_REGION_COUNT: usize = 9;
/// Config space region index.
pub const CONFIG_REGION: u32 = 7;
/// The protocol minor version this server speaks (libvfio-user's).
pub const SERVER_MINOR: u16 = 2;
/// Largest VERSION JSON accepted.
const MAX_VERSION_JSON: usize = 4096;
/// Bound applied to the client's `max_data_xfer_size` (QEMU's bound).
const CLIENT_MAX_XFER_LIMIT: u64 = 64 * 1024 * 1024;
/// The most vectors one IRQ index may have (the MSI-X limit).
pub const MAX_IRQ_VECTORS: u32 = 2048;
/// DMA_UNMAP flag: unmap every window (address and size 0).
const DMA_UNMAP_FLAG_ALL: u32 = 1 << 1;
/// DMA_UNMAP flag: legacy dirty bitmap, not supported.
const DMA_UNMAP_FLAG_GET_DIRTY_BITMAP: u32 = 1 << 0;

/// One region as the device describes it; `size` 0 means the region does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegionDesc {
    pub size: u64,
    pub readable: bool,
    pub writable: bool,
}

impl RegionDesc {
    pub const ABSENT: RegionDesc = RegionDesc { size: 0, readable: false, writable: false };

    pub fn read_write(size: u64) -> Self {
        Self { size, readable: true, writable: true }
    }
}

/// What the server reports about the device: 9 PCI regions and vector counts for the 5 IRQ
/// indices (INTx, MSI, MSI-X, ERR, REQ).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceDescription {
    pub regions: [RegionDesc; PCI_REGION_COUNT],
    pub irq_counts: [u32; IRQ_INDEX_COUNT],
}

/// A PCI device behind the server. All methods are called from the connection's handler task
/// in command order and must not block; long work (DMA) goes into a task the model spawns and
/// owns, using a clone of the [`DeviceBus`].
///
/// Accesses reaching `region_read`/`region_write` are already checked: the region exists, is
/// readable/writable, and `offset + len` lies inside it. Return an errno to fail the access (the
/// client gets an error reply; posted writes drop it).
pub trait DeviceModel: Send + Sync + 'static {
    /// Regions and IRQ counts; read once per connection.
    fn describe(&self) -> DeviceDescription;

    /// REGION_READ: fill `data` from `offset` of `region`.
    fn region_read(&self, bus: &DeviceBus, region: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno>;

    /// REGION_WRITE: apply `data` at `offset` of `region`.
    fn region_write(&self, bus: &DeviceBus, region: u32, offset: u64, data: &[u8]) -> Result<(), Errno>;

    /// DEVICE_RESET: back to the power-on state, aborting any work in progress.
    fn reset(&self, bus: &DeviceBus);

    /// A client connected and negotiated; `bus` serves it until [`DeviceModel::disconnected`].
    fn connected(&self, _bus: &DeviceBus) {}

    /// The client left; its DMA windows and eventfds are already gone. Device state stays.
    fn disconnected(&self) {}

    /// SET_IRQS changed the eventfds or masks of IRQ `index`.
    fn irqs_changed(&self, _bus: &DeviceBus, _index: u32) {}
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Grant the twin socket when the client asks for it.
    pub offer_twin_socket: bool,
    /// Largest REGION_READ/WRITE `count` accepted (advertised as `max_data_xfer_size`); DMA
    /// chunks are also bounded by it.
    pub max_data_xfer_size: u32,
    /// Most fds accepted per message (advertised as `max_msg_fds`, at most 16).
    pub max_msg_fds: u32,
    /// Most DMA windows mapped at once (advertised as `max_dma_maps`).
    pub max_dma_maps: u32,
    /// Longest wait for the client's reply to one DMA_READ/DMA_WRITE.
    pub dma_timeout: Duration,
    /// DMA commands in flight at once per connection.
    pub max_dma_in_flight: usize,
    /// Longest wait for the VERSION message of a new connection.
    pub negotiation_timeout: Duration,
    /// Longest wait for the client to take one message we send.
    pub send_timeout: Duration,
    /// Depth of the queue between the main socket reader and the command handler (single-socket
    /// mode; with a twin socket the handler reads the main socket itself).
    pub command_queue_depth: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            offer_twin_socket: true,
            max_data_xfer_size: 1024 * 1024,
            max_msg_fds: 8,
            max_dma_maps: 1024,
            dma_timeout: Duration::from_secs(5),
            max_dma_in_flight: 1,
            negotiation_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(5),
            command_queue_depth: 64,
        }
    }
}

impl ServerConfig {
    fn validate(&self) -> Result<(), Error> {
        let bad = |what: String| Err(Error::Config(what));
        if self.max_data_xfer_size < 8 || u64::from(self.max_data_xfer_size) > CLIENT_MAX_XFER_LIMIT {
            return bad(format!("max_data_xfer_size {} not in 8..=64 MiB", self.max_data_xfer_size));
        }
        if self.max_msg_fds == 0 || self.max_msg_fds as usize > MAX_FDS_PER_MESSAGE {
            return bad(format!("max_msg_fds {} not in 1..={MAX_FDS_PER_MESSAGE}", self.max_msg_fds));
        }
        if self.max_dma_maps == 0 || self.max_dma_in_flight == 0 || self.command_queue_depth == 0 {
            return bad("max_dma_maps, max_dma_in_flight and command_queue_depth must be >= 1".to_owned());
        }
        if self.dma_timeout.is_zero() || self.negotiation_timeout.is_zero() || self.send_timeout.is_zero() {
            return bad("timeouts must be non-zero".to_owned());
        }
        Ok(())
    }
}

/// Removes the socket file when the server stops.
struct SocketFileGuard(PathBuf);

impl Drop for SocketFileGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            warn!(path = %self.0.display(), error = %e, "could not remove the socket file");
        }
    }
}

/// Binds `path`, replacing a stale socket file (one nobody listens on) but never a live socket
/// or another kind of file.
pub fn bind(path: &Path) -> Result<UnixListener, Error> {
    let listen_error = |reason: String| Error::Listen { path: path.to_path_buf(), reason };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(listen_error(
                "the path exists and is not a socket; remove it or pick another".to_owned(),
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(listen_error("another server is listening on it".to_owned()));
        }
        std::fs::remove_file(path)
            .map_err(|e| listen_error(format!("cannot remove the stale socket: {e}")))?;
    }
    UnixListener::bind(path).map_err(|e| listen_error(e.to_string()))
}

/// Serves `model` on a UNIX socket at `path` until `shutdown` completes, one client at a time.
/// The socket file is removed on return.
pub async fn serve<M: DeviceModel>(
    path: &Path,
    model: Arc<M>,
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    config.validate()?;
    let listener = bind(path)?;
    let _guard = SocketFileGuard(path.to_path_buf());
    info!(path = %path.display(), "vfio-user device server listening");
    serve_listener(listener, model, config, shutdown).await
}

/// Like [`serve`] on an already-bound listener (the caller owns the socket file).
pub async fn serve_listener<M: DeviceModel>(
    listener: UnixListener,
    model: Arc<M>,
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    config.validate()?;
    tokio::pin!(shutdown);
    let mut client_number = 0u64;
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        client_number += 1;
        let span = info_span!("vfio_user_client", client = client_number);
        let connection = serve_connection(stream, model.clone(), &config).instrument(span);
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            result = connection => match result {
                Ok(()) => info!(client = client_number, "client disconnected"),
                Err(e) => warn!(client = client_number, error = %e, "client connection ended with an error"),
            },
        }
    }
}

/// Client capabilities after defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientCaps {
    pub max_msg_fds: u32,
    pub max_data_xfer_size: u32,
    pub twin_socket: bool,
}

#[derive(Deserialize)]
struct IncomingJson {
    capabilities: Option<IncomingCaps>,
}

#[derive(Deserialize)]
struct IncomingCaps {
    max_msg_fds: Option<u64>,
    max_data_xfer_size: Option<u64>,
    twin_socket: Option<IncomingTwin>,
}

#[derive(Deserialize)]
struct IncomingTwin {
    supported: Option<bool>,
}

/// Parses the client's VERSION JSON with the spec defaults (max_msg_fds 1, max_data_xfer_size
/// 1 MiB, no twin socket); unknown keys are ignored.
pub fn parse_client_caps(json: Option<&str>) -> Result<ClientCaps, String> {
    let mut caps = ClientCaps { max_msg_fds: 1, max_data_xfer_size: 1024 * 1024, twin_socket: false };
    let Some(text) = json else { return Ok(caps) };
    let parsed: IncomingJson =
        serde_json::from_str(text).map_err(|e| format!("VERSION JSON does not parse: {e}"))?;
    let Some(incoming) = parsed.capabilities else { return Ok(caps) };
    if let Some(fds) = incoming.max_msg_fds {
        caps.max_msg_fds = fds.min(MAX_FDS_PER_MESSAGE as u64) as u32;
    }
    if let Some(size) = incoming.max_data_xfer_size {
        if size == 0 {
            return Err("max_data_xfer_size 0 leaves no room for DMA".to_owned());
        }
        caps.max_data_xfer_size = size.min(CLIENT_MAX_XFER_LIMIT) as u32;
    }
    caps.twin_socket = incoming.twin_socket.and_then(|t| t.supported).unwrap_or(false);
    Ok(caps)
}

fn reply_bytes(request: &HeaderRepr, payload: &[u8]) -> Result<Vec<u8>, Error> {
    Ok(wire::encode_message(request.id, request.command, MessageType::Reply, false, None, payload)?)
}

fn error_bytes(request: &HeaderRepr, errno: Errno) -> Result<Vec<u8>, Error> {
    Ok(wire::encode_message(request.id, request.command, MessageType::Reply, false, Some(errno as u32), &[])?)
}

/// Aborts the connection's tasks when the connection ends, however it ends.
struct TaskGuard(Vec<JoinHandle<()>>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Serves one client connection to its end (EOF, protocol violation or I/O error).
pub async fn serve_connection<M: DeviceModel>(
    stream: UnixStream,
    model: Arc<M>,
    config: &ServerConfig,
) -> Result<(), Error> {
    let main = Arc::new(MessageSocket::new(stream));
    let writer = Arc::new(SocketWriter::new(main.clone(), config.send_timeout));
    let max_fds = config.max_msg_fds as usize;

    // --- VERSION ---------------------------------------------------------------------------
    let first = match tokio::time::timeout(
        config.negotiation_timeout,
        main.recv(wire::HEADER_LEN + 4 + MAX_VERSION_JSON, max_fds),
    )
    .await
    {
        Err(_) => return Err(Error::Protocol("no VERSION within the negotiation timeout".to_owned())),
        Ok(received) => match received.map_err(|e| Error::Protocol(transport_problem(&e)))? {
            Some(message) => message,
            None => return Ok(()),
        },
    };
    let header = first.header;
    let negotiation = negotiate(&first, config);
    let (client_caps, twin_granted) = match negotiation {
        Ok(caps) => caps,
        Err((errno, reason)) => {
            if header.message_type == MessageType::Command {
                let _ = writer.send(&error_bytes(&header, errno)?, &[]).await;
            }
            return Err(Error::Protocol(reason));
        }
    };
    let minor = match wire::version::View::new_checked(&first.payload[..]) {
        Ok(view) => view.minor().min(SERVER_MINOR),
        Err(_) => 0,
    };
    let twin = if twin_granted {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|source| Error::Io { context: "creating the twin socket pair", source })?;
        Some((ours, OwnedFd::from(theirs)))
    } else {
        None
    };
    let reply_json = server_caps_json(config, twin.is_some());
    let version = VersionRepr { major: 0, minor, json: Some(reply_json) };
    let reply = reply_bytes(&header, &version.to_bytes())?;
    match &twin {
        Some((_, theirs)) => writer.send(&reply, &[theirs.as_fd()]).await?,
        None => writer.send(&reply, &[]).await?,
    }
    info!(
        minor,
        twin_socket = twin.is_some(),
        client_max_data_xfer_size = client_caps.max_data_xfer_size,
        client_max_msg_fds = client_caps.max_msg_fds,
        "vfio-user client negotiated"
    );

    // --- sockets and tasks -----------------------------------------------------------------
    let description = model.describe();
    let dma_socket = match twin {
        Some((ours, theirs)) => {
            drop(theirs);
            ours.set_nonblocking(true)
                .map_err(|source| Error::Io { context: "making the twin socket non-blocking", source })?;
            let stream = UnixStream::from_std(ours)
                .map_err(|source| Error::Io { context: "registering the twin socket", source })?;
            Some(Arc::new(MessageSocket::new(stream)))
        }
        None => None,
    };
    let dma_writer = match &dma_socket {
        Some(socket) => Arc::new(SocketWriter::new(socket.clone(), config.send_timeout)),
        None => writer.clone(),
    };
    let max_transfer = client_caps.max_data_xfer_size.min(config.max_data_xfer_size) as usize;
    let bus = DeviceBus::new(
        dma_writer,
        dma_socket.is_some(),
        config.dma_timeout,
        max_transfer,
        config.max_dma_in_flight,
        description.irq_counts.map(|c| c.min(MAX_IRQ_VECTORS)),
    );
    // Largest message we accept: a region write or a DMA_READ reply of max_data_xfer_size
    // plus fixed parts; SET_IRQS DATA_BOOL needs at most 20 + MAX_IRQ_VECTORS.
    let max_message =
        wire::HEADER_LEN + 32 + (config.max_data_xfer_size as usize).max(MAX_IRQ_VECTORS as usize);

    let (ended_tx, mut ended_rx) = mpsc::channel::<ReaderEnd>(2);
    let mut tasks = Vec::new();
    // With a twin socket the main socket carries only the client's commands, so the handler
    // reads them itself (one task hand-off less per command; a reply that cannot be written
    // yet holds the next command back, which is the flow control a client expects). Without
    // one, DMA replies arrive on the main socket too and must be read while the handler
    // writes, so a reader task queues the commands.
    let mut commands = match &dma_socket {
        Some(socket) => {
            tasks.push(tokio::spawn(
                read_twin(socket.clone(), bus.clone(), ended_tx, max_message).in_current_span(),
            ));
            Commands::Socket(main.clone())
        }
        None => {
            let (commands_tx, commands_rx) = mpsc::channel::<ReceivedMessage>(config.command_queue_depth);
            tasks.push(tokio::spawn(
                read_main(main.clone(), bus.clone(), commands_tx, ended_tx, max_message, max_fds)
                    .in_current_span(),
            ));
            Commands::Queue(commands_rx)
        }
    };
    // Declared after the tasks' guard so it runs first: however the connection ends (including
    // the server future being dropped at shutdown), DMA waiters fail at once and the model hears.
    let _tasks = TaskGuard(tasks);
    let _connection = ConnectionGuard {
        bus: bus.clone(),
        sockets: [Some(main.clone()), dma_socket.clone()],
        model: model.clone(),
    };
    model.connected(&bus);

    let mut handler = Handler { model: &*model, bus: &bus, config, description };
    loop {
        let message = match &mut commands {
            Commands::Queue(queue) => {
                let message = tokio::select! {
                    biased;
                    message = queue.recv() => message,
                    Some(end) = ended_rx.recv() => break end.into_result(),
                };
                let Some(message) = message else {
                    // The main reader stopped: EOF or an error it already reported.
                    break match ended_rx.try_recv() {
                        Ok(end) => end.into_result(),
                        Err(_) => Ok(()),
                    };
                };
                message
            }
            Commands::Socket(socket) => {
                let received = tokio::select! {
                    biased;
                    received = socket.recv(max_message, max_fds) => received,
                    Some(end) = ended_rx.recv() => break end.into_result(),
                };
                match received {
                    Ok(Some(message)) if message.header.message_type == MessageType::Command => message,
                    Ok(Some(message)) => {
                        break Err(Error::Protocol(format!(
                            "{} on the main socket in twin-socket mode",
                            message.header
                        )));
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(Error::Protocol(format!("main socket: {}", transport_problem(&e)))),
                }
            }
        };
        let header = message.header;
        let result = handler.handle(message);
        if header.no_reply {
            if let Err(errno) = &result {
                debug!(%header, errno = %errno, "No_reply command failed; no reply sent");
            }
            continue;
        }
        let bytes = match result {
            Ok(payload) => reply_bytes(&header, &payload)?,
            Err(errno) => {
                debug!(%header, errno = %errno, "command failed");
                error_bytes(&header, errno)?
            }
        };
        if let Err(e) = writer.send(&bytes, &[]).await {
            break Err(e);
        }
    }
}

/// Ends a connection's resources: closes the bus (DMA fails, eventfds and windows go), shuts the
/// sockets down and tells the model.
struct ConnectionGuard<M: DeviceModel> {
    bus: DeviceBus,
    sockets: [Option<Arc<MessageSocket>>; 2],
    model: Arc<M>,
}

impl<M: DeviceModel> Drop for ConnectionGuard<M> {
    fn drop(&mut self) {
        self.bus.close();
        for socket in self.sockets.iter().flatten() {
            socket.shutdown();
        }
        self.model.disconnected();
    }
}

/// Checks the first message: a VERSION command, major 0, no fds, valid JSON. Returns the client
/// caps and whether the twin socket is granted.
fn negotiate(first: &ReceivedMessage, config: &ServerConfig) -> Result<(ClientCaps, bool), (Errno, String)> {
    let header = first.header;
    if header.message_type != MessageType::Command || header.command != Command::Version {
        return Err((Errno::EINVAL, format!("first message must be a VERSION command, got {header}")));
    }
    if !first.fds.is_empty() {
        return Err((Errno::EINVAL, format!("VERSION carried {} fds", first.fds.len())));
    }
    let view =
        wire::version::View::new_checked(&first.payload[..]).map_err(|e| (Errno::EINVAL, e.to_string()))?;
    let version = VersionRepr::parse(&view).map_err(|e| (Errno::EINVAL, e.to_string()))?;
    if version.major != 0 {
        return Err((
            Errno::ENOTSUP,
            format!("client proposed major version {}, only 0 is spoken", version.major),
        ));
    }
    let caps = parse_client_caps(version.json.as_deref()).map_err(|e| (Errno::EINVAL, e))?;
    let twin = caps.twin_socket && config.offer_twin_socket && caps.max_msg_fds > 0;
    Ok((caps, twin))
}

fn server_caps_json(config: &ServerConfig, twin: bool) -> String {
    let mut caps = serde_json::json!({
        "max_msg_fds": config.max_msg_fds,
        "max_data_xfer_size": config.max_data_xfer_size,
        "max_dma_maps": config.max_dma_maps,
        "pgsizes": 4096,
    });
    if twin {
        caps["twin_socket"] = serde_json::json!({ "supported": true, "fd_index": 0 });
    }
    serde_json::json!({ "capabilities": caps }).to_string()
}

/// Where the handler takes the client's commands from.
enum Commands {
    /// A reader task's queue (single-socket mode).
    Queue(mpsc::Receiver<ReceivedMessage>),
    /// The main socket itself (twin-socket mode: it carries only commands).
    Socket(Arc<MessageSocket>),
}

/// Why a socket reader stopped.
enum ReaderEnd {
    /// The client closed the socket: an orderly disconnect.
    Closed,
    /// The client broke the protocol or the socket failed.
    Broken(String),
}

impl ReaderEnd {
    fn into_result(self) -> Result<(), Error> {
        match self {
            ReaderEnd::Closed => Ok(()),
            ReaderEnd::Broken(reason) => Err(Error::Protocol(reason)),
        }
    }
}

/// The transport's text for a framing problem (its `Malformed` wording is written for clients).
fn transport_problem(error: &transports::Error) -> String {
    match error {
        transports::Error::Malformed(what) => format!("malformed message: {what}"),
        other => other.to_string(),
    }
}

/// Main socket reader in single-socket mode: commands to the handler, replies to waiting DMA.
async fn read_main(
    socket: Arc<MessageSocket>,
    bus: DeviceBus,
    commands: mpsc::Sender<ReceivedMessage>,
    ended: mpsc::Sender<ReaderEnd>,
    max_message: usize,
    max_fds: usize,
) {
    loop {
        let message = match socket.recv(max_message, max_fds).await {
            Ok(Some(message)) => message,
            Ok(None) => return,
            Err(e) => {
                let _ = ended.try_send(ReaderEnd::Broken(format!("main socket: {}", transport_problem(&e))));
                return;
            }
        };
        match message.header.message_type {
            MessageType::Reply => bus.deliver_reply(message),
            MessageType::Command => {
                if commands.send(message).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Twin socket reader: only replies to our DMA commands belong here.
async fn read_twin(
    socket: Arc<MessageSocket>,
    bus: DeviceBus,
    ended: mpsc::Sender<ReaderEnd>,
    max_message: usize,
) {
    loop {
        match socket.recv(max_message, 0).await {
            Ok(Some(message)) if message.header.message_type == MessageType::Reply => {
                bus.deliver_reply(message)
            }
            Ok(Some(message)) => {
                let _ = ended.try_send(ReaderEnd::Broken(format!(
                    "{} sent on the twin socket, which carries only DMA replies",
                    message.header
                )));
                return;
            }
            Ok(None) => {
                info!("the client closed the twin socket");
                let _ = ended.try_send(ReaderEnd::Closed);
                return;
            }
            Err(e) => {
                let _ = ended.try_send(ReaderEnd::Broken(format!("twin socket: {}", transport_problem(&e))));
                return;
            }
        }
    }
}

/// Executes client commands.
struct Handler<'a, M: DeviceModel> {
    model: &'a M,
    bus: &'a DeviceBus,
    config: &'a ServerConfig,
    description: DeviceDescription,
}

impl<M: DeviceModel> Handler<'_, M> {
    /// Runs one command; `Ok(payload)` is the reply payload.
    fn handle(&mut self, message: ReceivedMessage) -> Result<Vec<u8>, Errno> {
        let header = message.header;
        let fds_allowed = matches!(header.command, Command::DeviceSetIrqs | Command::DmaMap);
        if !fds_allowed && !message.fds.is_empty() {
            debug!(%header, fds = message.fds.len(), "fds on a command that takes none");
            return Err(Errno::EINVAL);
        }
        let payload = &message.payload[..];
        match header.command {
            Command::Version => Err(Errno::EINVAL),
            Command::DmaMap => self.dma_map(payload, message.fds),
            Command::DmaUnmap => self.dma_unmap(payload),
            Command::DeviceGetInfo => self.device_info(payload),
            Command::DeviceGetRegionInfo => self.region_info(payload),
            Command::DeviceGetRegionIoFds => self.region_io_fds(payload),
            Command::DeviceGetIrqInfo => self.irq_info(payload),
            Command::DeviceSetIrqs => self.set_irqs(payload, message.fds),
            Command::RegionRead => self.region_read(payload),
            Command::RegionWrite => self.region_write(payload),
            Command::DeviceReset => {
                info!("DEVICE_RESET");
                self.model.reset(self.bus);
                Ok(Vec::new())
            }
            // Server-to-client commands, removed or optional features this device lacks.
            Command::DmaRead | Command::DmaWrite | Command::DirtyPages | Command::Unknown(_) => {
                Err(Errno::EINVAL)
            }
            Command::RegionWriteMulti
            | Command::DeviceFeature
            | Command::MigDataRead
            | Command::MigDataWrite => Err(Errno::ENOTSUP),
        }
    }

    fn dma_map(&mut self, payload: &[u8], fds: Vec<OwnedFd>) -> Result<Vec<u8>, Errno> {
        let view = wire::dma_map::View::new_checked(payload).map_err(|_| Errno::EINVAL)?;
        if view.argsz() as usize != DmaMapRepr::LEN || payload.len() != DmaMapRepr::LEN || fds.len() > 1 {
            return Err(Errno::EINVAL);
        }
        let map = DmaMapRepr::parse(&view).map_err(|_| Errno::EINVAL)?;
        if map.flags & !(dma_map_flags::READ | dma_map_flags::WRITE) != 0 || map.size == 0 {
            return Err(Errno::EINVAL);
        }
        if map.address.checked_add(map.size).is_none() {
            return Err(Errno::EINVAL);
        }
        if !fds.is_empty() {
            // This device does all DMA with messages; the fd is not needed.
            info!(address = map.address, size = map.size, "DMA_MAP fd closed: message-based DMA only");
        }
        let window = MappedWindow { address: map.address, size: map.size, flags: map.flags };
        let mut windows = self.bus.inner.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.contains(&window) {
            return Ok(Vec::new());
        }
        let end = map.address + map.size;
        if windows.iter().any(|w| map.address < w.address.saturating_add(w.size) && w.address < end) {
            return Err(Errno::EEXIST);
        }
        if windows.len() >= self.config.max_dma_maps as usize {
            return Err(Errno::ENOSPC);
        }
        windows.push(window);
        info!(address = map.address, size = map.size, flags = map.flags, "DMA window mapped");
        Ok(Vec::new())
    }

    fn dma_unmap(&mut self, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        let view = wire::dma_unmap::View::new_checked(payload).map_err(|_| Errno::EINVAL)?;
        let unmap = DmaUnmapRepr::parse(&view).map_err(|_| Errno::EINVAL)?;
        if payload.len() != DmaUnmapRepr::LEN || (unmap.argsz as usize) < DmaUnmapRepr::LEN {
            return Err(Errno::EINVAL);
        }
        if unmap.flags & DMA_UNMAP_FLAG_GET_DIRTY_BITMAP != 0 {
            return Err(Errno::ENOTSUP);
        }
        if unmap.flags & !DMA_UNMAP_FLAG_ALL != 0 {
            return Err(Errno::EINVAL);
        }
        let mut windows = self.bus.inner.windows.lock().unwrap_or_else(|p| p.into_inner());
        if unmap.flags & DMA_UNMAP_FLAG_ALL != 0 {
            if unmap.address != 0 || unmap.size != 0 {
                return Err(Errno::EINVAL);
            }
            windows.clear();
        } else {
            let before = windows.len();
            windows.retain(|w| !(w.address == unmap.address && w.size == unmap.size));
            if windows.len() == before {
                return Err(Errno::ENOENT);
            }
        }
        info!(address = unmap.address, size = unmap.size, flags = unmap.flags, "DMA window unmapped");
        Ok(DmaUnmapRepr { argsz: DmaUnmapRepr::LEN as u32, ..unmap }.to_bytes())
    }

    fn device_info(&mut self, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        let view = wire::device_info::View::new_checked(payload).map_err(|_| Errno::EINVAL)?;
        if (view.argsz() as usize) < DeviceInfoRepr::LEN {
            return Err(Errno::EINVAL);
        }
        Ok(DeviceInfoRepr {
            argsz: DeviceInfoRepr::LEN as u32,
            flags: device_flags::PCI | device_flags::RESET,
            num_regions: PCI_REGION_COUNT as u32,
            num_irqs: IRQ_INDEX_COUNT as u32,
        }
        .to_bytes())
    }

    fn region(&self, index: u32) -> Option<RegionDesc> {
        self.description.regions.get(index as usize).copied()
    }

    fn region_info(&mut self, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        let view = wire::region_info::View::new_checked(payload).map_err(|_| Errno::EINVAL)?;
        if (view.argsz() as usize) < RegionInfoRepr::LEN {
            return Err(Errno::EINVAL);
        }
        let region = self.region(view.index()).ok_or(Errno::EINVAL)?;
        let mut flags = 0;
        if region.size > 0 && region.readable {
            flags |= region_flags::READ;
        }
        if region.size > 0 && region.writable {
            flags |= region_flags::WRITE;
        }
        // No MMAP flag, no fd, no capabilities: every access is a message.
        Ok(RegionInfoRepr {
            argsz: RegionInfoRepr::LEN as u32,
            flags,
            index: view.index(),
            cap_offset: 0,
            size: region.size,
            offset: 0,
        }
        .to_bytes())
    }

    fn region_io_fds(&mut self, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        // {argsz, flags, index, count}: this device offers no ioeventfds, so count is 0.
        let argsz = payload.get(0..4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
        let index = payload.get(8..12).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
        let (Some(argsz), Some(index)) = (argsz, index) else { return Err(Errno::EINVAL) };
        if payload.len() != 16 || argsz < 16 || self.region(index).is_none() {
            return Err(Errno::EINVAL);
        }
        let mut reply = Vec::with_capacity(16);
        reply.extend_from_slice(&16u32.to_le_bytes());
        reply.extend_from_slice(&0u32.to_le_bytes());
        reply.extend_from_slice(&index.to_le_bytes());
        reply.extend_from_slice(&0u32.to_le_bytes());
        Ok(reply)
    }

    fn irq_info(&mut self, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        let view = wire::irq_info::View::new_checked(payload).map_err(|_| Errno::EINVAL)?;
        if (view.argsz() as usize) < IrqInfoRepr::LEN {
            return Err(Errno::EINVAL);
        }
        let index = view.index();
        let count = *self.description.irq_counts.get(index as usize).ok_or(Errno::EINVAL)?;
        let mut flags = irq_info_flags::EVENTFD;
        if matches!(index, irq_index::INTX | irq_index::MSI | irq_index::MSIX) {
            flags |= irq_info_flags::MASKABLE;
        }
        Ok(IrqInfoRepr { argsz: IrqInfoRepr::LEN as u32, flags, index, count: count.min(MAX_IRQ_VECTORS) }
            .to_bytes())
    }

    /// SET_IRQS with libvfio-user's validation (EINVAL on any violation).
    fn set_irqs(&mut self, payload: &[u8], fds: Vec<OwnedFd>) -> Result<Vec<u8>, Errno> {
        let view = wire::irq_set::View::new_checked(payload).map_err(|_| Errno::EINVAL)?;
        let set = IrqSetRepr::parse(&view).map_err(|_| Errno::EINVAL)?;
        let data_type = set.flags & irq_set_flags::DATA_MASK;
        let action = set.flags & irq_set_flags::ACTION_TYPE_MASK;
        let known = irq_set_flags::DATA_MASK | irq_set_flags::ACTION_TYPE_MASK;
        if set.flags & !known != 0 || data_type.count_ones() != 1 || action.count_ones() != 1 {
            return Err(Errno::EINVAL);
        }
        let vectors = *self.description.irq_counts.get(set.index as usize).ok_or(Errno::EINVAL)?;
        let vectors = vectors.min(MAX_IRQ_VECTORS);
        let end = set.start.checked_add(set.count).ok_or(Errno::EINVAL)?;
        if set.start >= vectors || end > vectors {
            return Err(Errno::EINVAL);
        }
        if matches!(set.index, irq_index::ERR | irq_index::REQ)
            && (action != irq_set_flags::ACTION_TRIGGER || set.count > 1)
        {
            return Err(Errno::EINVAL);
        }
        if set.count == 0
            && !(data_type == irq_set_flags::DATA_NONE && action == irq_set_flags::ACTION_TRIGGER)
        {
            return Err(Errno::EINVAL);
        }
        if data_type != irq_set_flags::DATA_EVENTFD && !fds.is_empty() {
            return Err(Errno::EINVAL);
        }
        if !fds.is_empty() && fds.len() != set.count as usize {
            return Err(Errno::EINVAL);
        }
        let expected_data = if data_type == irq_set_flags::DATA_BOOL { set.count as usize } else { 0 };
        if set.data.len() != expected_data {
            return Err(Errno::EINVAL);
        }
        let name = irq_index_name(set.index);
        let range = set.start as usize..end as usize;
        let mut to_fire = Vec::new();
        {
            let mut irqs = self.bus.inner.irqs.lock().unwrap_or_else(|p| p.into_inner());
            let table = irqs.get_mut(set.index as usize).ok_or(Errno::EINVAL)?;
            match (data_type, action) {
                (irq_set_flags::DATA_NONE, irq_set_flags::ACTION_TRIGGER) if set.count == 0 => {
                    // Disable every vector of the index.
                    table.eventfds.iter_mut().for_each(|fd| *fd = None);
                    info!(irq = name, "all interrupt eventfds de-assigned");
                }
                (irq_set_flags::DATA_EVENTFD, irq_set_flags::ACTION_TRIGGER) => {
                    let slots = table.eventfds.get_mut(range.clone()).ok_or(Errno::EINVAL)?;
                    if fds.is_empty() {
                        slots.iter_mut().for_each(|fd| *fd = None);
                        info!(
                            irq = name,
                            start = set.start,
                            count = set.count,
                            "interrupt eventfds de-assigned"
                        );
                    } else {
                        for (slot, fd) in slots.iter_mut().zip(fds) {
                            *slot = Some(eventfd_file(fd));
                        }
                        info!(
                            irq = name,
                            start = set.start,
                            count = set.count,
                            "interrupt eventfds assigned"
                        );
                    }
                }
                (irq_set_flags::DATA_EVENTFD, _) => {
                    // Mask/unmask notifier fds: accepted (libvfio-user does too); this device
                    // never signals them, so they are closed here.
                    debug!(irq = name, "mask/unmask notifier eventfds ignored");
                }
                (_, irq_set_flags::ACTION_TRIGGER) => {
                    for (i, vector) in range.clone().enumerate() {
                        if data_type == irq_set_flags::DATA_NONE || set.data.get(i).copied().unwrap_or(0) != 0
                        {
                            to_fire.push(vector as u32);
                        }
                    }
                }
                (_, mask_action) => {
                    let masking = mask_action == irq_set_flags::ACTION_MASK;
                    for (i, vector) in range.clone().enumerate() {
                        if data_type == irq_set_flags::DATA_BOOL && set.data.get(i).copied().unwrap_or(0) == 0
                        {
                            continue;
                        }
                        if let Some(masked) = table.masked.get_mut(vector) {
                            *masked = masking;
                        }
                        let pending = table.pending.get_mut(vector).map(std::mem::take).unwrap_or(false);
                        if masking {
                            if let Some(p) = table.pending.get_mut(vector) {
                                *p = pending;
                            }
                        } else if pending {
                            to_fire.push(vector as u32);
                        }
                    }
                    debug!(
                        irq = name,
                        start = set.start,
                        count = set.count,
                        masking,
                        "interrupt mask changed"
                    );
                }
            }
        }
        for vector in to_fire {
            let outcome = self.bus.trigger(set.index, vector);
            debug!(irq = name, vector, ?outcome, "interrupt triggered by SET_IRQS");
        }
        self.model.irqs_changed(self.bus, set.index);
        Ok(Vec::new())
    }

    /// Validates a region access; returns the access and the checked region.
    fn access(&self, payload: &[u8], write: bool) -> Result<RegionAccessRepr, Errno> {
        let view = wire::region_access::View::new_checked(payload).map_err(|_| Errno::EINVAL)?;
        let access = RegionAccessRepr::parse(&view).map_err(|_| Errno::EINVAL)?;
        let data_len = if write { access.count as usize } else { 0 };
        if view.trailing().len() != data_len || access.count > self.config.max_data_xfer_size {
            return Err(Errno::EINVAL);
        }
        let region = self.region(access.region).ok_or(Errno::EINVAL)?;
        let allowed = if write { region.writable } else { region.readable };
        let end = access.offset.checked_add(u64::from(access.count)).ok_or(Errno::EINVAL)?;
        if region.size == 0 || !allowed || end > region.size {
            return Err(Errno::EINVAL);
        }
        Ok(access)
    }

    fn region_read(&mut self, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        let access = self.access(payload, false)?;
        let mut reply = access.to_bytes_with(&vec![0u8; access.count as usize]);
        let data = reply.get_mut(RegionAccessRepr::LEN..).ok_or(Errno::EINVAL)?;
        if !data.is_empty() {
            self.model.region_read(self.bus, access.region, access.offset, data)?;
        }
        Ok(reply)
    }

    fn region_write(&mut self, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        let access = self.access(payload, true)?;
        let data = payload.get(RegionAccessRepr::LEN..).ok_or(Errno::EINVAL)?;
        if !data.is_empty() {
            self.model.region_write(self.bus, access.region, access.offset, data)?;
        }
        Ok(access.to_bytes_with(&[]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_caps_defaults_and_bounds() {
        assert_eq!(
            parse_client_caps(None).unwrap(),
            ClientCaps { max_msg_fds: 1, max_data_xfer_size: 1 << 20, twin_socket: false }
        );
        let caps = parse_client_caps(Some(
            r#"{"capabilities":{"max_msg_fds":100,"max_data_xfer_size":4096,"twin_socket":{"supported":true},"x":1}}"#,
        ))
        .unwrap();
        assert_eq!(caps, ClientCaps { max_msg_fds: 16, max_data_xfer_size: 4096, twin_socket: true });
        assert!(parse_client_caps(Some(r#"{"capabilities":{"max_data_xfer_size":0}}"#)).is_err());
        assert!(parse_client_caps(Some(r#"{"capabilities":{"max_msg_fds":"x"}}"#)).is_err());
        assert!(parse_client_caps(Some("[")).is_err());
    }

    #[test]
    fn reply_json_offers_twin_socket_at_index_0() {
        let json = server_caps_json(&ServerConfig::default(), true);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["capabilities"]["twin_socket"]["fd_index"], 0);
        assert_eq!(value["capabilities"]["max_msg_fds"], 8);
        let json = server_caps_json(&ServerConfig::default(), false);
        assert!(!json.contains("twin_socket"));
    }
}

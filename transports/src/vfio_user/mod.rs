//! An asynchronous vfio-user client (see `docs/vfio-user-client.md`).
//!
//! - [`wire`]: header and payload layouts (typed views and `Repr`s).
//! - [`caps`]: VERSION capabilities JSON, defaults and bounds.
//! - [`socket`]: message framing with SCM_RIGHTS fds.
//! - [`dma`]: the DMA handler trait and the window table.
//! - [`client`]: the client itself.
//! - [`tap`]: observing raw messages (capture).

pub mod caps;
pub mod client;
pub mod dma;
pub mod socket;
pub mod tap;
pub mod wire;

pub use caps::{ClientCapabilities, ServerCapabilities, TwinSocket};
pub use client::{
    Client, ClientConfig, ClientEvent, ClientStats, DeviceInfo, DmaMode, EventReceiver, IrqAction, IrqData,
    IrqInfo, Negotiated, PendingRegionRead, PendingRegionWrite, PostedWrites, RegionInfo,
};
pub use dma::{DmaDirection, DmaError, DmaHandler, DmaWindow, DmaWindowTable, NoDma};
pub use tap::{MessageTap, SocketRole, TapDirection};
pub use wire::{Command, RegionCap, SparseArea};

//! The sample vfio-user device server (`tlpbridge sim device`), see `docs/sample-device.md`.
//!
//! - [`server`]: a reusable vfio-user server loop, generic over [`server::DeviceModel`].
//! - [`bus`]: the handle a model uses for message-based DMA and interrupts.
//! - [`pci_config`]: config-space write semantics (read-only bits, W1C, BAR sizing).
//! - [`dma_engine`]: the sample DMA-engine card.

pub mod bus;
pub mod dma_engine;
pub mod pci_config;
pub mod server;

pub use bus::{DeviceBus, IrqOutcome, MappedWindow};
pub use dma_engine::{DmaEngine, DmaEngineConfig};
pub use server::{DeviceDescription, DeviceModel, RegionDesc, ServerConfig, serve, serve_listener};

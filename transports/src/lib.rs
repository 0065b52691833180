//! How bytes move: the `TlpLink` abstraction the bridge talks to, and the async vfio-user client.

pub mod error;
pub mod link;
pub mod vfio_user;

pub use error::{DisconnectReason, Error, Result};

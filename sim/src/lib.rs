//! Co-simulation: the TCP sim link (simulated time on the wire), the reference cycle-level root complex
//! and the sample vfio-user device server. Filled in by the co-simulation work.

pub mod device;
pub mod error;
pub mod link;
pub mod rc;

pub use error::{Error, Result};

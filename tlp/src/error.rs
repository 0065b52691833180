//! The crate's error type.

/// Everything that can go wrong turning bytes into a TLP or a TLP into bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlpError {}

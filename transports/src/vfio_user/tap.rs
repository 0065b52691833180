//! Observing every vfio-user message as raw bytes, for packet capture.
//!
//! A [`MessageTap`] set in `ClientConfig::tap` sees each whole message (header and payload, as on
//! the socket) on the socket's own task: a sent message just before its first byte is written (so
//! it is always reported before the reply to it), a received one once it is complete. The fds
//! that travel with a message are not bytes on the stream; only their count is reported.

use std::fmt;

/// Whether the client sent or received a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TapDirection {
    /// Client → server.
    Sent,
    /// Server → client.
    Received,
}

/// Which of the client's sockets carried a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SocketRole {
    /// The socket the client connected (commands and their replies, and server DMA without a
    /// twin socket).
    Main,
    /// The twin socket the server granted for its DMA commands.
    Twin,
}

/// Sees every message on a client's sockets.
pub trait MessageTap: Send + Sync + fmt::Debug {
    /// One whole message. Called on the socket reader/writer tasks: must return quickly and never
    /// block (queue the bytes, do not write them to a file here).
    fn message(&self, direction: TapDirection, socket: SocketRole, message: &[u8], fds: usize);
}

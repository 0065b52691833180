//! VERSION negotiation: the capabilities JSON we send and the server's JSON we accept.
//!
//! Every key is optional; absent keys take the spec defaults (`max_msg_fds` 1,
//! `max_data_xfer_size` 1 MiB, `max_dma_maps` 65535, `pgsizes` 4096, no twin socket, no
//! `write_multiple`). Limits are bounded as QEMU does: `max_msg_fds` at most 16 and
//! `max_data_xfer_size` at most 64 MiB (larger values are clamped, which keeps us within the
//! server's limit); a zero `max_data_xfer_size` or `pgsizes` is rejected because no transfer
//! could be expressed.

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::error::Error;

/// The version this client proposes; any reply `0.x` with `x <= 2` is accepted.
pub const PROPOSED_MAJOR: u16 = 0;
pub const PROPOSED_MINOR: u16 = 2;

/// Spec defaults for keys the server leaves out.
pub const DEFAULT_MAX_MSG_FDS: u32 = 1;
pub const DEFAULT_MAX_DATA_XFER_SIZE: u32 = 1024 * 1024;
pub const DEFAULT_MAX_DMA_MAPS: u32 = 65535;
pub const DEFAULT_PGSIZES: u64 = 4096;

/// Bounds applied to the server's values (QEMU's).
pub const MAX_MSG_FDS_LIMIT: u32 = 16;
pub const MAX_DATA_XFER_SIZE_LIMIT: u32 = 64 * 1024 * 1024;

/// What the client advertises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientCapabilities {
    /// The most fds we accept in one message.
    pub max_msg_fds: u32,
    /// The largest DMA_READ/DMA_WRITE `count` we accept.
    pub max_data_xfer_size: u32,
    /// Ask the server for a twin socket.
    pub twin_socket: bool,
}

#[derive(Serialize)]
struct OutgoingJson {
    capabilities: OutgoingCapabilities,
}

#[derive(Serialize)]
struct OutgoingCapabilities {
    max_msg_fds: u32,
    max_data_xfer_size: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    twin_socket: Option<OutgoingTwin>,
}

#[derive(Serialize)]
struct OutgoingTwin {
    supported: bool,
}

impl ClientCapabilities {
    /// The JSON text (without the NUL) for our VERSION request.
    pub fn to_json(&self) -> String {
        let json = OutgoingJson {
            capabilities: OutgoingCapabilities {
                max_msg_fds: self.max_msg_fds,
                max_data_xfer_size: self.max_data_xfer_size,
                twin_socket: self.twin_socket.then_some(OutgoingTwin { supported: true }),
            },
        };
        // Serialising plain integers and bools cannot fail.
        serde_json::to_string(&json).unwrap_or_default()
    }
}

/// Whether the server granted the twin socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TwinSocket {
    NotGranted,
    /// The twin socket is fd number `fd_index` of the VERSION reply's SCM_RIGHTS array.
    Granted {
        fd_index: u32,
    },
}

/// The server's capabilities after defaults and bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerCapabilities {
    /// The most fds the server accepts in one message (bounded to 16).
    pub max_msg_fds: u32,
    /// The largest REGION_READ/REGION_WRITE `count` the server accepts (bounded to 64 MiB).
    pub max_data_xfer_size: u32,
    pub max_dma_maps: u32,
    pub pgsizes: u64,
    pub twin_socket: TwinSocket,
    /// Recorded only; this client never sends REGION_WRITE_MULTI.
    pub write_multiple: bool,
    /// The legacy migration object, as sent.
    pub migration: Option<serde_json::Value>,
}

impl Default for ServerCapabilities {
    fn default() -> Self {
        Self {
            max_msg_fds: DEFAULT_MAX_MSG_FDS,
            max_data_xfer_size: DEFAULT_MAX_DATA_XFER_SIZE,
            max_dma_maps: DEFAULT_MAX_DMA_MAPS,
            pgsizes: DEFAULT_PGSIZES,
            twin_socket: TwinSocket::NotGranted,
            write_multiple: false,
            migration: None,
        }
    }
}

#[derive(Deserialize)]
struct IncomingJson {
    capabilities: Option<IncomingCapabilities>,
}

#[derive(Deserialize)]
struct IncomingCapabilities {
    max_msg_fds: Option<u64>,
    max_data_xfer_size: Option<u64>,
    max_dma_maps: Option<u64>,
    pgsizes: Option<u64>,
    twin_socket: Option<IncomingTwin>,
    write_multiple: Option<bool>,
    migration: Option<serde_json::Value>,
    #[serde(flatten)]
    unknown: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct IncomingTwin {
    supported: Option<bool>,
    fd_index: Option<u64>,
}

fn caps_error(what: impl Into<String>) -> Error {
    Error::Capabilities(what.into())
}

/// The most characters of a peer's JSON quoted in an error message.
const JSON_EXCERPT_CHARS: usize = 120;

/// The start of `text` for an error message: quoting a whole hostile JSON document (up to the
/// 1 MiB message limit, and several times larger once escaped) would make the error itself the
/// largest allocation the peer can cause.
fn json_excerpt(text: &str) -> String {
    match text.char_indices().nth(JSON_EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
        None => text.to_owned(),
    }
}

/// Parses the server's VERSION JSON (absent JSON means all defaults).
///
/// `asked_twin` is whether we proposed the twin socket; `fds_received` is how many fds arrived
/// with the VERSION reply (the twin socket's `fd_index` must name one of them).
pub fn parse_server_capabilities(
    json: Option<&str>,
    asked_twin: bool,
    fds_received: usize,
) -> Result<ServerCapabilities, Error> {
    let mut caps = ServerCapabilities::default();
    let Some(text) = json else {
        return Ok(caps);
    };
    let parsed: IncomingJson = serde_json::from_str(text)
        .map_err(|e| caps_error(format!("VERSION JSON {:?} does not parse: {e}", json_excerpt(text))))?;
    let Some(incoming) = parsed.capabilities else {
        return Ok(caps);
    };
    for key in incoming.unknown.keys() {
        info!(key = %key, "ignoring unknown vfio-user server capability");
    }

    if let Some(fds) = incoming.max_msg_fds {
        caps.max_msg_fds = if fds > u64::from(MAX_MSG_FDS_LIMIT) {
            warn!(server = fds, used = MAX_MSG_FDS_LIMIT, "server max_msg_fds clamped");
            MAX_MSG_FDS_LIMIT
        } else {
            fds as u32
        };
    }
    if let Some(size) = incoming.max_data_xfer_size {
        if size == 0 {
            return Err(caps_error("max_data_xfer_size is 0, so no region access could be sent"));
        }
        caps.max_data_xfer_size = if size > u64::from(MAX_DATA_XFER_SIZE_LIMIT) {
            warn!(server = size, used = MAX_DATA_XFER_SIZE_LIMIT, "server max_data_xfer_size clamped");
            MAX_DATA_XFER_SIZE_LIMIT
        } else {
            size as u32
        };
    }
    if let Some(maps) = incoming.max_dma_maps {
        caps.max_dma_maps = u32::try_from(maps).unwrap_or(u32::MAX);
    }
    if let Some(pgsizes) = incoming.pgsizes {
        if pgsizes == 0 {
            return Err(caps_error("pgsizes is 0, so no DMA page size is supported"));
        }
        caps.pgsizes = pgsizes;
    }
    caps.write_multiple = incoming.write_multiple.unwrap_or(false);
    caps.migration = incoming.migration;

    if let Some(twin) = incoming.twin_socket {
        if twin.supported.unwrap_or(false) {
            if !asked_twin {
                return Err(caps_error("server granted twin_socket although the client did not propose it"));
            }
            let index = twin.fd_index.ok_or_else(|| caps_error("twin_socket supported without fd_index"))?;
            if index >= fds_received as u64 {
                return Err(caps_error(format!(
                    "twin_socket fd_index {index} but the VERSION reply carried {fds_received} fds"
                )));
            }
            caps.twin_socket = TwinSocket::Granted { fd_index: index as u32 };
        }
    }
    Ok(caps)
}

/// Checks the version of the server's reply against our proposal.
pub fn check_version(major: u16, minor: u16) -> Result<(), Error> {
    if major != PROPOSED_MAJOR || minor > PROPOSED_MINOR {
        return Err(Error::UnsupportedVersion { major, minor });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_parse_error_quotes_only_the_start_of_the_document() {
        let hostile = format!("{{\"capabilities\":\"{}", "\u{7f}".repeat(10_000));
        let err = parse_server_capabilities(Some(&hostile), true, 0).unwrap_err().to_string();
        assert!(err.contains("does not parse"), "{err}");
        assert!(err.contains(&format!("({} bytes)", hostile.len())), "{err}");
        assert!(err.len() < 2 * JSON_EXCERPT_CHARS * 8, "error of {} bytes: {err}", err.len());
    }

    #[test]
    fn client_json_matches_recommendation() {
        let caps = ClientCapabilities { max_msg_fds: 8, max_data_xfer_size: 1048576, twin_socket: true };
        assert_eq!(
            caps.to_json(),
            r#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576,"twin_socket":{"supported":true}}}"#
        );
        let no_twin = ClientCapabilities { twin_socket: false, ..caps };
        assert_eq!(no_twin.to_json(), r#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576}}"#);
    }

    #[test]
    fn absent_json_and_absent_keys_take_defaults() {
        assert_eq!(parse_server_capabilities(None, true, 0).unwrap(), ServerCapabilities::default());
        assert_eq!(parse_server_capabilities(Some("{}"), true, 0).unwrap(), ServerCapabilities::default());
        let caps = parse_server_capabilities(Some(r#"{"capabilities":{}}"#), true, 0).unwrap();
        assert_eq!(caps.max_msg_fds, 1);
        assert_eq!(caps.max_data_xfer_size, 1 << 20);
        assert_eq!(caps.twin_socket, TwinSocket::NotGranted);
    }

    #[test]
    fn libvfio_user_reply_is_understood() {
        let json = r#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576,"twin_socket":{"supported":true,"fd_index":0}}}"#;
        let caps = parse_server_capabilities(Some(json), true, 1).unwrap();
        assert_eq!(caps.max_msg_fds, 8);
        assert_eq!(caps.twin_socket, TwinSocket::Granted { fd_index: 0 });
    }

    #[test]
    fn limits_are_bounded() {
        let json = r#"{"capabilities":{"max_msg_fds":1000,"max_data_xfer_size":4294967295}}"#;
        let caps = parse_server_capabilities(Some(json), true, 0).unwrap();
        assert_eq!(caps.max_msg_fds, 16);
        assert_eq!(caps.max_data_xfer_size, 64 << 20);
        let zero = r#"{"capabilities":{"max_data_xfer_size":0}}"#;
        assert!(matches!(parse_server_capabilities(Some(zero), true, 0), Err(Error::Capabilities(_))));
    }

    #[test]
    fn twin_socket_must_be_consistent() {
        let no_index = r#"{"capabilities":{"twin_socket":{"supported":true}}}"#;
        assert!(parse_server_capabilities(Some(no_index), true, 1).is_err());
        let bad_index = r#"{"capabilities":{"twin_socket":{"supported":true,"fd_index":1}}}"#;
        assert!(parse_server_capabilities(Some(bad_index), true, 1).is_err());
        let unasked = r#"{"capabilities":{"twin_socket":{"supported":true,"fd_index":0}}}"#;
        assert!(parse_server_capabilities(Some(unasked), false, 1).is_err());
        let declined = r#"{"capabilities":{"twin_socket":{"supported":false}}}"#;
        assert_eq!(
            parse_server_capabilities(Some(declined), true, 0).unwrap().twin_socket,
            TwinSocket::NotGranted
        );
    }

    #[test]
    fn wrong_types_are_rejected() {
        let json = r#"{"capabilities":{"max_msg_fds":"eight"}}"#;
        assert!(matches!(parse_server_capabilities(Some(json), true, 0), Err(Error::Capabilities(_))));
        assert!(parse_server_capabilities(Some("not json"), true, 0).is_err());
    }

    #[test]
    fn version_rules() {
        assert!(check_version(0, 0).is_ok());
        assert!(check_version(0, 2).is_ok());
        assert!(check_version(0, 3).is_err());
        assert!(check_version(1, 0).is_err());
    }
}

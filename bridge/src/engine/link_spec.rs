//! `--link` arguments: `KIND://ADDRESS`, and the registry of link kinds this build can open.
//!
//! A link kind is a name and an opener, `fn(&LinkSpec) -> future of Result<Link>`. The
//! co-simulation and FPGA work register their kinds in [`LinkRegistry::builtin`]; a kind the
//! project knows about but this build lacks gets an honest "not available in this build" error
//! instead of a parse error.

use std::future::Future;
use std::pin::Pin;

use transports::link::Link;

use super::error::{BridgeError, Result};

/// A parsed `--link` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkSpec {
    /// The kind, lower case (`sim`, `sim-listen`, `serial`, ...).
    pub kind: String,
    /// Everything after `://`, interpreted by the kind (e.g. `HOST:PORT`, a device path).
    pub address: String,
}

impl std::fmt::Display for LinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.kind, self.address)
    }
}

impl std::str::FromStr for LinkSpec {
    type Err = BridgeError;

    /// `KIND://ADDRESS`; KIND is letters, digits and `-`, ADDRESS is non-empty.
    fn from_str(s: &str) -> Result<Self> {
        let bad =
            |reason: &str| BridgeError::InvalidLinkSpec { spec: s.to_owned(), reason: reason.to_owned() };
        let (kind, address) =
            s.split_once("://").ok_or_else(|| bad("expected KIND://ADDRESS, e.g. sim://127.0.0.1:7000"))?;
        if kind.is_empty() || !kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(bad("the kind must be letters, digits and '-'"));
        }
        if address.is_empty() {
            return Err(bad("the address after :// is empty"));
        }
        Ok(LinkSpec { kind: kind.to_ascii_lowercase(), address: address.to_owned() })
    }
}

/// A future that opens a link.
pub type OpenFuture = Pin<Box<dyn Future<Output = Result<Link>> + Send>>;
/// Opens a link of one kind.
pub type Opener = fn(&LinkSpec) -> OpenFuture;

/// One registered kind.
#[derive(Clone, Copy)]
pub struct LinkKind {
    pub name: &'static str,
    /// One line for `--help` and docs: what ADDRESS means.
    pub address_help: &'static str,
    pub open: Opener,
}

/// Kinds the project plans or provides elsewhere; absent ones get "not available in this build".
pub const KNOWN_KINDS: [&str; 6] = ["sim", "sim-listen", "serial", "nettlp", "stream", "udp"];

/// `sim` and `sim-listen`: the co-simulation link over TCP (`sim::link`).
fn open_sim(spec: &LinkSpec) -> OpenFuture {
    let spec = spec.clone();
    Box::pin(async move {
        sim::link::open_kind(&spec.kind, &spec.address)
            .await
            .map_err(|e| BridgeError::LinkOpen { spec: spec.to_string(), reason: e.to_string() })
    })
}

/// `serial`, `stream` and `nettlp`: links to FPGA root ports (`fpga`, docs/fpga-link.md).
fn open_fpga(spec: &LinkSpec) -> OpenFuture {
    let spec = spec.clone();
    Box::pin(async move {
        let link_open =
            |e: fpga::Error| BridgeError::LinkOpen { spec: spec.to_string(), reason: e.to_string() };
        let parsed = fpga::Spec::from_parts(&spec.kind, &spec.address).map_err(link_open)?;
        fpga::open_monitored(parsed).await.map(|(link, _status)| link).map_err(link_open)
    })
}

/// The link kinds a build can open.
#[derive(Clone, Default)]
pub struct LinkRegistry {
    kinds: Vec<LinkKind>,
}

impl LinkRegistry {
    /// The kinds built into this binary. Link implementations add themselves here.
    pub fn builtin() -> Self {
        let mut registry = LinkRegistry::default();
        registry.register(LinkKind {
            name: "sim",
            address_help: "HOST:PORT[?OPTIONS]: connect to a co-simulator listening there (docs/sim-protocol.md)",
            open: open_sim,
        });
        registry.register(LinkKind {
            name: "sim-listen",
            address_help: "HOST:PORT[?OPTIONS]: listen there for the co-simulator to connect (docs/sim-protocol.md)",
            open: open_sim,
        });
        registry.register(LinkKind {
            name: "serial",
            address_help: "PATH[?baud=N&parity=…&flow=…]: a serial port to an FPGA root port (docs/fpga-link.md)",
            open: open_fpga,
        });
        registry.register(LinkKind {
            name: "stream",
            address_help: "RX_PATH,TX_PATH: stream device files to an FPGA root port, e.g. XDMA (docs/fpga-link.md)",
            open: open_fpga,
        });
        registry.register(LinkKind {
            name: "nettlp",
            address_help: "REMOTE_IPV4[?local=…&port-base=…]: a NetTLP adapter over UDP (docs/fpga-link.md)",
            open: open_fpga,
        });
        registry
    }

    /// Adds (or replaces) a kind.
    pub fn register(&mut self, kind: LinkKind) {
        self.kinds.retain(|k| k.name != kind.name);
        self.kinds.push(kind);
    }

    pub fn kinds(&self) -> &[LinkKind] {
        &self.kinds
    }

    fn available(&self) -> String {
        if self.kinds.is_empty() {
            "none".to_owned()
        } else {
            self.kinds.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
        }
    }

    /// Opens the link `spec` names.
    pub async fn open(&self, spec: &LinkSpec) -> Result<Link> {
        match self.kinds.iter().find(|k| k.name == spec.kind) {
            Some(kind) => (kind.open)(spec).await,
            None if KNOWN_KINDS.contains(&spec.kind.as_str()) => {
                Err(BridgeError::LinkKindUnavailable { kind: spec.kind.clone(), available: self.available() })
            }
            None => Err(BridgeError::InvalidLinkSpec {
                spec: spec.to_string(),
                reason: format!(
                    "unknown link kind `{}` (available in this build: {})",
                    spec.kind,
                    self.available()
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use transports::link::{MemoryClock, memory_pair};

    #[tokio::test]
    async fn sim_kinds_are_registered_and_report_open_errors() {
        let registry = LinkRegistry::builtin();
        let names: Vec<_> = registry.kinds().iter().map(|k| k.name).collect();
        assert_eq!(names, vec!["sim", "sim-listen", "serial", "stream", "nettlp"]);
        let err = registry.open(&"sim://127.0.0.1:1?mode=bogus".parse().unwrap()).await.unwrap_err();
        assert!(matches!(err, BridgeError::LinkOpen { .. }), "{err}");
    }

    #[test]
    fn specs_parse_and_bad_ones_say_why() {
        let spec: LinkSpec = "SIM://127.0.0.1:7000".parse().unwrap();
        assert_eq!(spec, LinkSpec { kind: "sim".into(), address: "127.0.0.1:7000".into() });
        assert_eq!(spec.to_string(), "sim://127.0.0.1:7000");
        assert!("sim:127.0.0.1".parse::<LinkSpec>().unwrap_err().to_string().contains("KIND://ADDRESS"));
        assert!("sim://".parse::<LinkSpec>().unwrap_err().to_string().contains("empty"));
        assert!("s im://x".parse::<LinkSpec>().is_err());
    }

    #[tokio::test]
    async fn registry_opens_registered_kinds_and_names_missing_ones() {
        let mut registry = LinkRegistry::builtin();
        let err = registry.open(&"udp://127.0.0.1:9".parse().unwrap()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "link kind `udp` is not available in this build (available: sim, sim-listen, serial, stream, nettlp)"
        );
        let err =
            registry.open(&"serial:///nonexistent/ttyUSB9?baud=9600".parse().unwrap()).await.unwrap_err();
        assert!(
            matches!(err, BridgeError::LinkOpen { .. }) && err.to_string().contains("/nonexistent/ttyUSB9"),
            "{err}"
        );
        let err = registry.open(&"bogus://x".parse().unwrap()).await.unwrap_err();
        assert!(err.to_string().contains("unknown link kind `bogus`"));
        fn open_memory(_: &LinkSpec) -> OpenFuture {
            Box::pin(async { Ok(memory_pair(MemoryClock::Wall, 4).0) })
        }
        registry.register(LinkKind { name: "memory", address_help: "anything", open: open_memory });
        let link = registry.open(&"memory://x".parse().unwrap()).await.unwrap();
        assert_eq!(link.info.kind, "memory");
    }
}

//! The NetTLP link: TLPs in UDP datagrams, as NetTLP adapters and LibTLP exchange them.
//!
//! Each datagram's UDP payload is a 6-byte NetTLP header followed by one TLP (big-endian DWs):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | sequence number, big-endian, per sending socket, +1 per datagram (wraps) |
//! | 2 | 4 | timestamp, big-endian, in units of 4 ns (wraps) |
//! | 6 | … | the TLP |
//!
//! Like LibTLP, a TLP goes out on UDP port `port_base + (tag & 0xF)` (port_base 0x3000), and
//! the link listens on the 16 local ports `port_base..port_base+16`. IPv4 only. UDP gives no
//! retransmission: a lost datagram is a lost TLP. Gaps in each port's sequence numbers are
//! counted ([`LinkStatus::seq_gaps`](crate::LinkStatus)) and logged; nothing is resent. There is
//! no link state either: the link reports Up once its sockets are bound.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use transports::link::{Link, LinkClock, LinkEvent, LinkInfo, LinkInput, ReceivedTlp};

use crate::error::{Error, Result};
use crate::spec::Spec;
use crate::{LINK_QUEUE, LinkStatus};

/// LibTLP's base port.
pub const PORT_BASE: u16 = 0x3000;
/// Ports per link (one per value of `tag & 0xF`).
pub const PORTS: u16 = 16;
/// The NetTLP header's length.
pub const HEADER_LEN: usize = 6;
/// Largest datagram accepted.
const MAX_DATAGRAM: usize = HEADER_LEN + crate::framing::MAX_TLP_BYTES;

/// The NetTLP header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetTlpHeader {
    pub seq: u16,
    /// In units of 4 ns.
    pub timestamp: u32,
}

impl NetTlpHeader {
    /// Splits a UDP payload into header and TLP.
    pub fn parse(datagram: &[u8]) -> Option<(NetTlpHeader, &[u8])> {
        let header = datagram.get(..HEADER_LEN)?;
        let tlp = datagram.get(HEADER_LEN..).filter(|t| !t.is_empty())?;
        let seq = u16::from_be_bytes([header[0], header[1]]);
        let timestamp = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
        Some((NetTlpHeader { seq, timestamp }, tlp))
    }

    pub fn emit(&self, tlp: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + tlp.len());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(tlp);
        out
    }
}

/// Where the link's sockets are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetTlpConfig {
    pub remote: Ipv4Addr,
    /// Local address to bind (0.0.0.0: all).
    pub local: Ipv4Addr,
    /// First of the 16 local ports.
    pub local_port_base: u16,
    /// First of the 16 remote ports.
    pub remote_port_base: u16,
}

impl NetTlpConfig {
    /// `nettlp:REMOTE_IPV4[?local=IPV4&port-base=N&remote-port-base=N]`.
    pub fn from_spec(spec: &mut Spec) -> Result<Self> {
        let remote: Ipv4Addr = spec
            .address
            .parse()
            .map_err(|_| spec.error("the remote must be an IPv4 address, e.g. 192.168.10.1"))?;
        let local = spec.take::<Ipv4Addr>("local", "an IPv4 address")?.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let local_port_base = match spec.take_str("port-base") {
            Some(v) => {
                parse_port(&v).ok_or_else(|| spec.error(format!("port-base={v}: expected a port ≤ 65520")))?
            }
            None => PORT_BASE,
        };
        let remote_port_base = match spec.take_str("remote-port-base") {
            Some(v) => parse_port(&v)
                .ok_or_else(|| spec.error(format!("remote-port-base={v}: expected a port ≤ 65520")))?,
            None => local_port_base,
        };
        Ok(NetTlpConfig { remote, local, local_port_base, remote_port_base })
    }
}

/// A port number in decimal or `0x` hex, leaving room for 16 ports.
pub fn parse_port(v: &str) -> Option<u16> {
    let n = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16).ok()?,
        None => v.parse().ok()?,
    };
    (n > 0 && n <= u16::MAX - PORTS + 1).then_some(n)
}

/// The port index a TLP travels on: `tag & 0xF` (0 for bytes that do not parse).
pub fn port_index(tlp: &[u8]) -> u16 {
    tlp::Tlp::parse(tlp).ok().and_then(|t| t.tag()).map_or(0, |tag| tag & 0xF)
}

/// Binds the 16 sockets and starts the link.
pub async fn open(config: NetTlpConfig) -> Result<(Link, watch::Receiver<LinkStatus>)> {
    let mut sockets = Vec::with_capacity(usize::from(PORTS));
    for i in 0..PORTS {
        let port = config.local_port_base + i;
        let addr = SocketAddrV4::new(config.local, port);
        let socket = UdpSocket::bind(addr)
            .await
            .map_err(|e| Error::io(format!("binding NetTLP UDP socket {addr}"), e))?;
        sockets.push(Arc::new(socket));
    }
    let (to_user, rx) = mpsc::channel(LINK_QUEUE);
    let (tx, from_user) = mpsc::channel(LINK_QUEUE);
    let clock = LinkClock::wall();
    let (status_tx, status_rx) = watch::channel(LinkStatus { up: true, ..LinkStatus::default() });
    let info = LinkInfo {
        kind: "nettlp".into(),
        description: format!(
            "NetTLP to {} ports {:#x}..{:#x} from {}:{:#x}..",
            config.remote,
            config.remote_port_base,
            config.remote_port_base + PORTS - 1,
            config.local,
            config.local_port_base
        ),
    };
    let task = tokio::spawn(run(sockets, config, to_user, from_user, clock.clone(), status_tx));
    Ok((Link::new(info, clock, rx, tx).with_task(task), status_rx))
}

async fn run(
    sockets: Vec<Arc<UdpSocket>>,
    config: NetTlpConfig,
    to_user: mpsc::Sender<LinkInput>,
    mut from_user: mpsc::Receiver<Vec<u8>>,
    clock: LinkClock,
    status: watch::Sender<LinkStatus>,
) {
    if to_user.send(LinkInput::Event { event: LinkEvent::Up, time: clock.now() }).await.is_err() {
        return;
    }
    let status = Arc::new(status);
    let mut tasks = JoinSet::new();
    for (i, socket) in sockets.iter().enumerate() {
        let (socket, to_user, clock, status) =
            (socket.clone(), to_user.clone(), clock.clone(), status.clone());
        let remote = config.remote;
        tasks.spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM + 1];
            let mut expected: Option<u16> = None;
            loop {
                let (n, from) = match socket.recv_from(&mut buf).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(port_index = i, error = %e, "nettlp: receive failed");
                        continue;
                    }
                };
                if from.ip() != std::net::IpAddr::V4(remote) {
                    tracing::debug!(%from, "nettlp: datagram from another host ignored");
                    continue;
                }
                let Some((header, tlp)) =
                    buf.get(..n).filter(|_| n <= MAX_DATAGRAM).and_then(NetTlpHeader::parse)
                else {
                    status.send_modify(|s| s.stats.bad_frames += 1);
                    tracing::warn!(%from, len = n, "nettlp: datagram too short or too long, dropped");
                    continue;
                };
                if let Some(want) = expected {
                    let gap = header.seq.wrapping_sub(want);
                    if gap != 0 {
                        // Small forward jumps are losses; anything else is reordering or a restart.
                        let lost = if gap < 0x8000 { u64::from(gap) } else { 0 };
                        status.send_modify(|s| s.seq_gaps += lost.max(1));
                        tracing::warn!(
                            port_index = i,
                            expected = want,
                            got = header.seq,
                            "nettlp: sequence gap"
                        );
                    }
                }
                expected = Some(header.seq.wrapping_add(1));
                status.send_modify(|s| {
                    s.stats.tlps_delivered += 1;
                    s.stats.bytes_received += n as u64;
                });
                let input = LinkInput::Tlp(ReceivedTlp { bytes: tlp.to_vec().into(), time: clock.now() });
                if to_user.send(input).await.is_err() {
                    return;
                }
            }
        });
    }
    let start = Instant::now();
    let mut seqs = [0u16; PORTS as usize];
    while let Some(tlp) = from_user.recv().await {
        let index = port_index(&tlp);
        let Some(seq) = seqs.get_mut(usize::from(index)) else { continue };
        let timestamp = (start.elapsed().as_nanos() / 4) as u32;
        let datagram = NetTlpHeader { seq: *seq, timestamp }.emit(&tlp);
        *seq = seq.wrapping_add(1);
        let to = SocketAddr::V4(SocketAddrV4::new(config.remote, config.remote_port_base + index));
        let Some(socket) = sockets.get(usize::from(index)) else { continue };
        match socket.send_to(&datagram, to).await {
            Ok(_) => status.send_modify(|s| {
                s.stats.tlps_sent += 1;
                s.stats.bytes_sent += datagram.len() as u64;
                s.stats.tlp_bytes_sent += tlp.len() as u64;
            }),
            Err(e) => tracing::warn!(%to, error = %e, "nettlp: send failed, TLP lost"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let tlp = [0x40, 0, 0, 1, 0, 0, 0x05, 0x0f, 0, 0, 0x10, 0, 1, 2, 3, 4];
        let d = NetTlpHeader { seq: 0x1234, timestamp: 0xdeadbeef }.emit(&tlp);
        assert_eq!(&d[..6], &[0x12, 0x34, 0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(
            NetTlpHeader::parse(&d),
            Some((NetTlpHeader { seq: 0x1234, timestamp: 0xdeadbeef }, &tlp[..]))
        );
        assert_eq!(NetTlpHeader::parse(&d[..6]), None);
        assert_eq!(port_index(&tlp), 5);
    }

    #[tokio::test]
    async fn two_ends_exchange_tlps_by_tag_port_and_count_gaps() {
        let a_cfg = NetTlpConfig {
            remote: Ipv4Addr::LOCALHOST,
            local: Ipv4Addr::LOCALHOST,
            local_port_base: 0x5100,
            remote_port_base: 0x5200,
        };
        let b_cfg = NetTlpConfig { local_port_base: 0x5200, remote_port_base: 0x5100, ..a_cfg.clone() };
        let (a, _) = open(a_cfg).await.unwrap();
        let (mut b, b_status) = open(b_cfg).await.unwrap();
        assert!(matches!(b.rx.recv().await, Some(LinkInput::Event { event: LinkEvent::Up, .. })));
        for tag in [3u8, 0x13] {
            let tlp = vec![0x40, 0, 0, 1, 0, 0, tag, 0x0f, 0, 0, 0x10, 0, 1, 2, 3, tag];
            a.tx.send(tlp.clone()).await.unwrap();
            let got = tokio::time::timeout(std::time::Duration::from_secs(5), b.rx.recv()).await.unwrap();
            assert!(matches!(got, Some(LinkInput::Tlp(t)) if *t.bytes == tlp));
        }
        // Both went to port index 3; a datagram that skips sequence numbers counts as a gap.
        let raw = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tlp = [0x40, 0, 0, 1, 0, 0, 0x03, 0x0f, 0, 0, 0x10, 0, 9, 9, 9, 9];
        raw.send_to(&NetTlpHeader { seq: 5, timestamp: 0 }.emit(&tlp), "127.0.0.1:20995").await.unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), b.rx.recv()).await.unwrap();
        assert!(matches!(got, Some(LinkInput::Tlp(t)) if *t.bytes == tlp));
        assert_eq!(b_status.borrow().seq_gaps, 3, "expected seq 2, got 5");
    }
}

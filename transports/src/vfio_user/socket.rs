//! Message framing on an AF_UNIX stream socket, with fds as SCM_RIGHTS.
//!
//! Sending: all of a message's fds travel in the same `sendmsg` as the first bytes of its
//! header (receivers read the header with `recvmsg` and the body with plain reads, so fds sent
//! with a later chunk would be lost). Receiving mirrors what libvfio-user and QEMU do: the
//! 16-byte header via `recvmsg` with room for up to [`MAX_FDS_PER_MESSAGE`] fds, then exactly
//! `size - 16` body bytes. The size is checked against the caller's limit before any body
//! buffer is allocated.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use bytes::BufMut;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use tokio::io::Interest;
use tokio::net::UnixStream;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::tap::{MessageTap, SocketRole, TapDirection};
use super::wire::{HEADER_LEN, Header, HeaderRepr, MessageType};
use crate::error::Error;

/// The most fds one received message may carry (QEMU's bound on `max_msg_fds`).
pub const MAX_FDS_PER_MESSAGE: usize = 16;

/// A received message: parsed header, payload (exactly `size - 16` bytes) and its fds.
#[derive(Debug)]
pub struct ReceivedMessage {
    pub header: HeaderRepr,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// A vfio-user message socket. Reading must be done by one task at a time, and so must
/// writing (each side is a separate task in the client).
#[derive(Debug)]
pub struct MessageSocket {
    stream: UnixStream,
    /// Sees every whole message sent or received (capture).
    tap: Option<(Arc<dyn MessageTap>, SocketRole)>,
    /// The control-message buffer of `recvmsg`, allocated once instead of per message (only
    /// the one reading task locks it, so it is never contended).
    cmsg_buffer: Mutex<Vec<u8>>,
}

fn cmsg_buffer() -> Mutex<Vec<u8>> {
    Mutex::new(nix::cmsg_space!([RawFd; MAX_FDS_PER_MESSAGE]))
}

fn io_error(context: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io { context, source }
}

impl MessageSocket {
    pub fn new(stream: UnixStream) -> Self {
        Self { stream, tap: None, cmsg_buffer: cmsg_buffer() }
    }

    /// Reports every message this socket sends or receives from now on to `tap`, as `role`.
    pub fn set_tap(&mut self, tap: Arc<dyn MessageTap>, role: SocketRole) {
        self.tap = Some((tap, role));
    }

    /// Wraps an already-connected socket fd (must be called inside a tokio runtime).
    pub fn from_owned_fd(fd: OwnedFd) -> Result<Self, Error> {
        let std_stream = std::os::unix::net::UnixStream::from(fd);
        std_stream.set_nonblocking(true).map_err(io_error("making the socket non-blocking"))?;
        let stream =
            UnixStream::from_std(std_stream).map_err(io_error("registering the socket with tokio"))?;
        Ok(Self { stream, tap: None, cmsg_buffer: cmsg_buffer() })
    }

    /// Sends one whole message (or several, back to back); `fds` go with its first bytes.
    pub async fn send(&self, message: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), Error> {
        self.send_tracked(message, fds, &AtomicUsize::new(0)).await
    }

    /// [`MessageSocket::send`] that counts the bytes written so far in `sent`, so that a caller
    /// whose send is cut short (timeout, cancellation) knows whether the peer got part of the
    /// message (and the stream's framing is lost) or none of it.
    pub async fn send_tracked(
        &self,
        message: &[u8],
        fds: &[BorrowedFd<'_>],
        sent: &AtomicUsize,
    ) -> Result<(), Error> {
        self.send_parts_tracked(&[message], fds, sent).await
    }

    /// [`MessageSocket::send_tracked`] of the concatenation of `parts`, written with vectored
    /// writes: a reply's header and its data (e.g. a DMA_READ's) go out without first being
    /// copied into one buffer.
    pub async fn send_parts_tracked(
        &self,
        parts: &[&[u8]],
        fds: &[BorrowedFd<'_>],
        sent: &AtomicUsize,
    ) -> Result<(), Error> {
        if parts.len() > MAX_PARTS {
            return Err(Error::InvalidArgument(format!(
                "a message sent in {} parts; at most {MAX_PARTS}",
                parts.len()
            )));
        }
        // Reported before the first byte goes out: the peer's reply may be received (and
        // reported by the reader task) before this send returns. One report per message.
        if let Some((tap, role)) = &self.tap {
            let joined;
            let mut rest: &[u8] = match parts {
                [one] => one,
                _ => {
                    joined = parts.concat();
                    &joined
                }
            };
            let mut fds_here = fds.len();
            while !rest.is_empty() {
                let size = Header::new_checked(rest)
                    .map_or(rest.len(), |h| (h.size() as usize).clamp(HEADER_LEN, rest.len()));
                let (one, after) = rest.split_at(size);
                tap.message(TapDirection::Sent, *role, one, fds_here);
                fds_here = 0;
                rest = after;
            }
        }
        let raw_fds: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        let socket_fd = self.stream.as_raw_fd();
        let total: usize = parts.iter().map(|part| part.len()).sum();
        let mut written_total = 0usize;
        let mut fds_pending = !raw_fds.is_empty();
        while written_total < total {
            let (iov, used) = unwritten(parts, written_total);
            let iov = iov.get(..used).unwrap_or(&[]);
            let written = self
                .stream
                .async_io(Interest::WRITABLE, || {
                    let rights = [ControlMessage::ScmRights(&raw_fds)];
                    let cmsgs: &[ControlMessage<'_>] = if fds_pending { &rights } else { &[] };
                    sendmsg::<()>(socket_fd, iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
                        .map_err(io::Error::from)
                })
                .await
                .map_err(io_error("sending a message"))?;
            if written == 0 {
                return Err(Error::Io {
                    context: "sending a message",
                    source: io::Error::new(io::ErrorKind::WriteZero, "socket accepted no bytes"),
                });
            }
            fds_pending = false;
            written_total += written;
            sent.store(written_total, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Receives one message of at most `max_size` bytes (header included) with at most
    /// `max_fds` fds. Returns `Ok(None)` on a clean EOF at a message boundary. A larger message
    /// is [`Error::Malformed`].
    pub async fn recv(&self, max_size: usize, max_fds: usize) -> Result<Option<ReceivedMessage>, Error> {
        self.recv_message(max_size, max_fds, false).await
    }

    /// Like [`MessageSocket::recv`], but a *command* larger than `max_size` has its body read and
    /// discarded and comes back as [`Error::OversizedCommand`], the stream still framed, so that
    /// it can be refused (the client's answer to an oversized DMA_WRITE). Larger replies are
    /// still malformed.
    pub async fn recv_skipping_oversized_commands(
        &self,
        max_size: usize,
        max_fds: usize,
    ) -> Result<Option<ReceivedMessage>, Error> {
        self.recv_message(max_size, max_fds, true).await
    }

    async fn recv_message(
        &self,
        max_size: usize,
        max_fds: usize,
        skip_oversized_commands: bool,
    ) -> Result<Option<ReceivedMessage>, Error> {
        let socket_fd = self.stream.as_raw_fd();
        let mut header_bytes = [0u8; HEADER_LEN];
        let mut got = 0usize;
        let mut fds: Vec<OwnedFd> = Vec::new();
        while got < HEADER_LEN {
            let (bytes, truncated) = self
                .stream
                .async_io(Interest::READABLE, || {
                    let slot = header_bytes.get_mut(got..).unwrap_or(&mut []);
                    let mut iov = [IoSliceMut::new(slot)];
                    let mut cmsg_buffer =
                        self.cmsg_buffer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    let msg = recvmsg::<()>(
                        socket_fd,
                        &mut iov,
                        Some(&mut *cmsg_buffer),
                        MsgFlags::MSG_CMSG_CLOEXEC,
                    )
                    .map_err(io::Error::from)?;
                    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
                        if let ControlMessageOwned::ScmRights(received) = cmsg {
                            for raw in received {
                                // SAFETY: SCM_RIGHTS just installed `raw` in this process; nothing
                                // else refers to it, so taking ownership is sound.
                                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                            }
                        }
                    }
                    Ok((msg.bytes, msg.flags.contains(MsgFlags::MSG_CTRUNC)))
                })
                .await
                .map_err(io_error("receiving a message header"))?;
            if truncated {
                return Err(Error::Malformed(format!(
                    "a message carried more than {MAX_FDS_PER_MESSAGE} fds"
                )));
            }
            if bytes == 0 {
                if got == 0 && fds.is_empty() {
                    return Ok(None);
                }
                return Err(Error::Malformed(format!("connection closed after {got} of 16 header bytes")));
            }
            got += bytes;
        }
        let header = HeaderRepr::parse(&Header::new_checked(&header_bytes[..])?)?;
        if skip_oversized_commands
            && header.size as usize > max_size
            && header.message_type == MessageType::Command
        {
            // A command can be refused without its body: skip the body to keep the framing.
            self.discard(header.payload_len(), &header).await?;
            return Err(Error::OversizedCommand { header, limit: max_size });
        }
        if header.size as usize > max_size {
            return Err(Error::Malformed(format!(
                "{header}: message of {} bytes exceeds the {max_size}-byte limit",
                header.size
            )));
        }
        if fds.len() > max_fds {
            return Err(Error::Malformed(format!(
                "{header}: carries {} fds, at most {max_fds} accepted",
                fds.len()
            )));
        }
        // Read into the spare capacity: the body is not zeroed first, and `len()` only counts
        // bytes the socket filled in.
        let wanted = header.payload_len();
        let mut payload = Vec::with_capacity(wanted);
        while payload.len() < wanted {
            self.stream.readable().await.map_err(io_error("receiving a message body"))?;
            let missing = wanted - payload.len();
            let mut rest = (&mut payload).limit(missing);
            match self.stream.try_read_buf(&mut rest) {
                Ok(0) => {
                    return Err(Error::Malformed(format!(
                        "{header}: connection closed after {} of {wanted} payload bytes",
                        payload.len()
                    )));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(Error::Io { context: "receiving a message body", source }),
            }
        }
        if let Some((tap, role)) = &self.tap {
            let mut whole = Vec::with_capacity(HEADER_LEN + payload.len());
            whole.extend_from_slice(&header_bytes);
            whole.extend_from_slice(&payload);
            tap.message(TapDirection::Received, *role, &whole, fds.len());
        }
        Ok(Some(ReceivedMessage { header, payload, fds }))
    }

    /// Reads and drops `len` body bytes of `header`'s message, 64 KiB at a time.
    async fn discard(&self, len: usize, header: &HeaderRepr) -> Result<(), Error> {
        let mut scratch = vec![0u8; len.min(64 * 1024)];
        let mut left = len;
        while left > 0 {
            self.stream.readable().await.map_err(io_error("discarding an oversized message"))?;
            let chunk = left.min(scratch.len());
            match self.stream.try_read(scratch.get_mut(..chunk).unwrap_or(&mut [])) {
                Ok(0) => {
                    return Err(Error::Malformed(format!(
                        "{header}: connection closed after {} of {len} payload bytes",
                        len - left
                    )));
                }
                Ok(n) => left -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(Error::Io { context: "discarding an oversized message", source }),
            }
        }
        Ok(())
    }

    /// Shuts both directions down so the peer sees EOF.
    pub fn shutdown(&self) {
        let _ = nix::sys::socket::shutdown(self.stream.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }
}

/// Most parts one message is sent in (a header with its fixed part, and the data).
const MAX_PARTS: usize = 4;

/// The parts' bytes from offset `skip` of their concatenation on, as I/O slices (empty parts
/// left out): the array and how many of its slices are used. No allocation per write.
fn unwritten<'a>(parts: &[&'a [u8]], mut skip: usize) -> ([IoSlice<'a>; MAX_PARTS], usize) {
    let mut iov = [IoSlice::new(&[]); MAX_PARTS];
    let mut used = 0;
    for part in parts {
        if skip >= part.len() {
            skip -= part.len();
            continue;
        }
        if let (Some(slot), Some(rest)) = (iov.get_mut(used), part.get(skip..)) {
            *slot = IoSlice::new(rest);
            used += 1;
        }
        skip = 0;
    }
    (iov, used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio_user::wire::{Command, MessageType, encode_message};
    use std::os::fd::AsFd;

    #[tokio::test]
    async fn fds_travel_with_the_header() {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, b) = (MessageSocket::new(a), MessageSocket::new(b));
        let message =
            encode_message(7, Command::DeviceSetIrqs, MessageType::Command, false, None, &[0u8; 20]).unwrap();
        let (r, _w) = std::os::unix::net::UnixStream::pair().unwrap();
        a.send(&message, &[r.as_fd(), r.as_fd()]).await.unwrap();
        let received = b.recv(1024, 16).await.unwrap().unwrap();
        assert_eq!(received.header.id, 7);
        assert_eq!(received.payload.len(), 20);
        assert_eq!(received.fds.len(), 2);
    }

    type Seen = (TapDirection, SocketRole, Vec<u8>, usize);

    #[derive(Debug, Default)]
    struct RecordingTap {
        seen: std::sync::Mutex<Vec<Seen>>,
    }

    impl MessageTap for RecordingTap {
        fn message(&self, direction: TapDirection, socket: SocketRole, message: &[u8], fds: usize) {
            self.seen.lock().unwrap().push((direction, socket, message.to_vec(), fds));
        }
    }

    #[tokio::test]
    async fn tap_sees_whole_messages_both_ways_with_fd_counts() {
        let (a, b) = UnixStream::pair().unwrap();
        let tap = Arc::new(RecordingTap::default());
        let (mut a, mut b) = (MessageSocket::new(a), MessageSocket::new(b));
        a.set_tap(tap.clone(), SocketRole::Main);
        b.set_tap(tap.clone(), SocketRole::Twin);
        let message =
            encode_message(9, Command::RegionRead, MessageType::Command, false, None, &[7u8; 16]).unwrap();
        let (r, _w) = std::os::unix::net::UnixStream::pair().unwrap();
        a.send(&message, &[r.as_fd()]).await.unwrap();
        let received = b.recv(1024, 16).await.unwrap().unwrap();
        assert_eq!(received.header.id, 9);
        let seen = tap.seen.lock().unwrap();
        assert_eq!(
            *seen,
            vec![
                (TapDirection::Sent, SocketRole::Main, message.clone(), 1),
                (TapDirection::Received, SocketRole::Twin, message, 1),
            ]
        );
    }

    #[test]
    fn unwritten_skips_what_went_out_across_part_boundaries() {
        let parts: [&[u8]; 3] = [b"head", b"", b"data!"];
        let rest = |skip| {
            let (iov, used) = unwritten(&parts, skip);
            iov[..used].iter().map(|slice| slice.to_vec()).collect::<Vec<_>>()
        };
        assert_eq!(rest(0), vec![b"head".to_vec(), b"data!".to_vec()]);
        assert_eq!(rest(3), vec![b"d".to_vec(), b"data!".to_vec()]);
        assert_eq!(rest(4), vec![b"data!".to_vec()]);
        assert_eq!(rest(6), vec![b"ta!".to_vec()]);
        assert_eq!(rest(9), Vec::<Vec<u8>>::new());
    }

    /// A message sent as a header part and a large data part, through a socket too small to take
    /// it at once (so writes end inside either part), arrives as the one message, and the tap
    /// records it whole, once.
    #[tokio::test]
    async fn a_message_sent_in_parts_arrives_whole_through_partial_writes() {
        let (a, b) = UnixStream::pair().unwrap();
        nix::sys::socket::setsockopt(&a, nix::sys::socket::sockopt::SndBuf, &4096).unwrap();
        let tap = Arc::new(RecordingTap::default());
        let (mut a, b) = (MessageSocket::new(a), MessageSocket::new(b));
        a.set_tap(tap.clone(), SocketRole::Twin);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let access = crate::vfio_user::wire::DmaAccessRepr { address: 0x1000, count: data.len() as u64 };
        let head = crate::vfio_user::wire::encode_message_head(
            5,
            Command::DmaRead,
            MessageType::Reply,
            None,
            &access.to_array(),
            data.len(),
        )
        .unwrap();
        let whole = [&head[..], &data[..]].concat();
        let sent = AtomicUsize::new(0);
        let parts: [&[u8]; 2] = [&head, &data];
        let (sending, received) = tokio::join!(a.send_parts_tracked(&parts, &[], &sent), b.recv(1 << 20, 0));
        sending.unwrap();
        let received = received.unwrap().unwrap();
        assert_eq!(sent.load(Ordering::Relaxed), whole.len());
        assert_eq!(received.header.id, 5);
        assert_eq!(received.header.size as usize, whole.len());
        assert_eq!(received.payload, whole[HEADER_LEN..]);
        assert_eq!(*tap.seen.lock().unwrap(), vec![(TapDirection::Sent, SocketRole::Twin, whole, 0)]);
    }

    #[tokio::test]
    async fn oversized_message_is_rejected_before_allocation() {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, b) = (MessageSocket::new(a), MessageSocket::new(b));
        let mut header =
            encode_message(1, Command::RegionRead, MessageType::Reply, false, None, &[]).unwrap();
        header[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        a.send(&header, &[]).await.unwrap();
        assert!(matches!(b.recv(4096, 16).await, Err(Error::Malformed(_))));
    }

    #[tokio::test]
    async fn too_many_fds_are_rejected() {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, b) = (MessageSocket::new(a), MessageSocket::new(b));
        let message =
            encode_message(1, Command::Version, MessageType::Reply, false, None, &[0u8; 4]).unwrap();
        let (r, _w) = std::os::unix::net::UnixStream::pair().unwrap();
        a.send(&message, &[r.as_fd(), r.as_fd()]).await.unwrap();
        assert!(matches!(b.recv(4096, 1).await, Err(Error::Malformed(_))));
    }

    #[tokio::test]
    async fn eof_at_boundary_is_none_and_mid_message_is_error() {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, b) = (MessageSocket::new(a), MessageSocket::new(b));
        drop(a);
        assert!(b.recv(4096, 1).await.unwrap().is_none());

        let (a, b) = UnixStream::pair().unwrap();
        let (a, b) = (MessageSocket::new(a), MessageSocket::new(b));
        let message =
            encode_message(1, Command::RegionRead, MessageType::Reply, false, None, &[0u8; 8]).unwrap();
        a.send(&message[..20], &[]).await.unwrap();
        drop(a);
        assert!(matches!(b.recv(4096, 1).await, Err(Error::Malformed(_))));
    }
}

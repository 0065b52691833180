//! The stream link: two device files (e.g. Xilinx XDMA `/dev/xdma0_c2h_0` to read and
//! `/dev/xdma0_h2c_0` to write) carrying the framing of `docs/fpga-link.md`. Files that epoll can
//! watch (FIFOs, ttys, most character devices) are driven by tokio's reactor; others (regular
//! files, character devices without poll support, such as XDMA's) by tokio's blocking file I/O.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::driver::{Device, FdIo};
use crate::error::{Error, Result};
use crate::spec::Spec;

/// The two paths of a `stream:RX_PATH,TX_PATH` link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamPaths {
    pub rx: String,
    pub tx: String,
}

impl StreamPaths {
    pub fn from_spec(spec: &Spec) -> Result<Self> {
        match spec.address.split_once(',') {
            Some((rx, tx)) if !rx.is_empty() && !tx.is_empty() => {
                Ok(StreamPaths { rx: rx.to_owned(), tx: tx.to_owned() })
            }
            _ => {
                Err(spec
                    .error("expected stream:RX_PATH,TX_PATH, e.g. stream:/dev/xdma0_c2h_0,/dev/xdma0_h2c_0"))
            }
        }
    }
}

fn open_one(path: &str, write: bool) -> Result<std::fs::File> {
    OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| Error::Open { path: path.into(), source })
}

fn drive_reader(file: std::fs::File) -> Result<Box<dyn AsyncRead + Send + Unpin>> {
    match file.try_clone().map(FdIo::new) {
        Ok(Ok(io)) => Ok(Box::new(io)),
        _ => Ok(Box::new(tokio::fs::File::from_std(blocking(file)?))),
    }
}

fn drive_writer(file: std::fs::File) -> Result<Box<dyn AsyncWrite + Send + Unpin>> {
    match file.try_clone().map(FdIo::new) {
        Ok(Ok(io)) => Ok(Box::new(io)),
        _ => Ok(Box::new(tokio::fs::File::from_std(blocking(file)?))),
    }
}

/// Clears O_NONBLOCK for files driven by blocking I/O threads.
fn blocking(file: std::fs::File) -> Result<std::fs::File> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = fcntl(&file, FcntlArg::F_GETFL).map_err(|e| Error::io("reading file flags", e.into()))?;
    let flags = OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK;
    fcntl(&file, FcntlArg::F_SETFL(flags)).map_err(|e| Error::io("setting file flags", e.into()))?;
    Ok(file)
}

/// Opens both files (the receive side first, so that a FIFO pair opened crosswise by two
/// processes does not deadlock).
pub fn open_files(paths: &StreamPaths) -> Result<Device> {
    let rx = open_one(&paths.rx, false)?;
    let tx = open_one(&paths.tx, true)?;
    Ok(Device {
        reader: drive_reader(rx)?,
        writer: drive_writer(tx)?,
        name: format!("{},{}", paths.rx, paths.tx),
    })
}

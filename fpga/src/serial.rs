//! The serial link: a UART or USB serial port (or a pty) carrying the framing of
//! `docs/fpga-link.md`. `serialport` opens and configures the port; the descriptor is then driven
//! non-blocking by tokio's reactor. When the port goes away (USB unplugged, pty closed) the link
//! reports Down and reopens the same path with backoff.

use std::os::fd::{FromRawFd, IntoRawFd};
use std::time::Duration;

use serialport::{DataBits, FlowControl, Parity, SerialPort, StopBits};

use crate::driver::{Device, FdIo};
use crate::error::{Error, Result};
use crate::spec::Spec;

/// How the port is configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SerialOptions {
    pub path: String,
    pub baud: u32,
    pub data_bits: DataBits,
    pub parity: Parity,
    pub stop_bits: StopBits,
    pub flow_control: FlowControl,
}

/// Default baud rate when `baud=` is not given.
pub const DEFAULT_BAUD: u32 = 115_200;

impl SerialOptions {
    /// Takes the serial keys (`baud`, `data`, `parity`, `stop`, `flow`) from `spec`.
    pub fn from_spec(spec: &mut Spec) -> Result<Self> {
        let baud = spec.take::<u32>("baud", "a baud rate, e.g. 3000000")?.unwrap_or(DEFAULT_BAUD);
        if baud == 0 {
            return Err(spec.error("baud=0: the baud rate must be positive"));
        }
        let data_bits = match spec.take::<u8>("data", "5, 6, 7 or 8")? {
            None | Some(8) => DataBits::Eight,
            Some(7) => DataBits::Seven,
            Some(6) => DataBits::Six,
            Some(5) => DataBits::Five,
            Some(n) => return Err(spec.error(format!("data={n}: expected 5, 6, 7 or 8"))),
        };
        let parity = match spec.take_str("parity").as_deref() {
            None | Some("none") => Parity::None,
            Some("odd") => Parity::Odd,
            Some("even") => Parity::Even,
            Some(p) => return Err(spec.error(format!("parity={p}: expected none, odd or even"))),
        };
        let stop_bits = match spec.take::<u8>("stop", "1 or 2")? {
            None | Some(1) => StopBits::One,
            Some(2) => StopBits::Two,
            Some(n) => return Err(spec.error(format!("stop={n}: expected 1 or 2"))),
        };
        let flow_control = match spec.take_str("flow").as_deref() {
            None | Some("none") => FlowControl::None,
            Some("software") | Some("xonxoff") => FlowControl::Software,
            Some("hardware") | Some("rtscts") => FlowControl::Hardware,
            Some(f) => return Err(spec.error(format!("flow={f}: expected none, software or hardware"))),
        };
        Ok(SerialOptions { path: spec.address.clone(), baud, data_bits, parity, stop_bits, flow_control })
    }

    /// Time to send one byte: start bit, data bits, parity, stop bits.
    pub fn byte_time(&self) -> Duration {
        let data = match self.data_bits {
            DataBits::Five => 5,
            DataBits::Six => 6,
            DataBits::Seven => 7,
            DataBits::Eight => 8,
        };
        let parity = u64::from(self.parity != Parity::None);
        let stop = if self.stop_bits == StopBits::Two { 2 } else { 1 };
        Duration::from_nanos((1 + data + parity + stop) * 1_000_000_000 / u64::from(self.baud))
    }
}

/// Opens and configures the port.
pub fn open_port(options: &SerialOptions) -> Result<Device> {
    let serial_error = |reason: String| Error::Serial { path: options.path.clone(), reason };
    let port = serialport::new(&options.path, options.baud)
        .data_bits(options.data_bits)
        .parity(options.parity)
        .stop_bits(options.stop_bits)
        .flow_control(options.flow_control)
        .timeout(Duration::ZERO)
        .open_native()
        .map_err(|e| serial_error(e.to_string()))?;
    // Raw mode (no echo, no line editing) is what `serialport` sets up; keep the port's settings
    // and drive its descriptor ourselves, non-blocking.
    let _ = port.clear(serialport::ClearBuffer::All);
    let fd = port.into_raw_fd();
    // SAFETY: `into_raw_fd` hands over sole ownership of the open descriptor.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    // `serialport` leaves VMIN = VTIME = 0, where a read with no data returns 0 bytes — which
    // would look like end of file. VMIN = 1 makes it EAGAIN on our non-blocking descriptor.
    set_vmin_one(&file).map_err(|e| serial_error(format!("cannot set VMIN: {e}")))?;
    let io = FdIo::new(file).map_err(|e| serial_error(format!("cannot drive it non-blocking: {e}")))?;
    let (reader, writer) = tokio::io::split(io);
    Ok(Device { reader: Box::new(reader), writer: Box::new(writer), name: options.path.clone() })
}

fn set_vmin_one(file: &std::fs::File) -> nix::Result<()> {
    use nix::sys::termios::{SetArg, SpecialCharacterIndices, tcgetattr, tcsetattr};
    let mut attrs = tcgetattr(file)?;
    attrs.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
    attrs.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
    tcsetattr(file, SetArg::TCSANOW, &attrs)
}

//! Transport: connecting to a destination, and reading and writing a non-blocking socket with a
//! deadline.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use teecast_sys::{self as sys, Readiness};

/// Connects to `address`, trying each resolved address within `timeout`.
pub fn connect(address: &str, timeout: Duration) -> io::Result<TcpStream> {
    let addrs: Vec<_> = address
        .to_socket_addrs()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot resolve {address}: {e}")))?
        .collect();
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        format!("{address} resolves to nothing"),
    );
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Writes all of `bytes` to a non-blocking socket, waiting at most `stall` for each bit of room.
pub fn write_all_until(
    mut stream: &TcpStream,
    mut bytes: &[u8],
    stall: Duration,
) -> io::Result<()> {
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !sys::wait_ready(
                    stream.as_fd(),
                    Readiness::Writable,
                    Some(Instant::now() + stall),
                )? {
                    return Err(io::ErrorKind::TimedOut.into());
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes from a non-blocking socket, waiting at most `stall` for each.
pub fn read_exact_until(mut stream: &TcpStream, buf: &mut [u8], stall: Duration) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match stream.read(&mut buf[done..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed by the receiver",
                ));
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !sys::wait_ready(
                    stream.as_fd(),
                    Readiness::Readable,
                    Some(Instant::now() + stall),
                )? {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no answer within --stall-timeout",
                    ));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

//! Transport: connecting to a destination, and reading and writing a socket against a
//! deadline. One module for both sides, so every exchange — a header, a trailer, an
//! acknowledgement — is bounded by a *total* deadline, however the peer drips its bytes.
//! Every deadline is made by [`deadline`]: a timeout too long for the clock is no deadline
//! (`None`, never), not an overflow.

use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use teecast_proto::session::FrameReader;
use teecast_proto::wire::{MessageKind, WireError};
use teecast_sys::{self as sys, Readiness};

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The name did not resolve, or resolved to nothing.
    #[error("cannot resolve {address}: {source}")]
    Resolve {
        /// The address as given.
        address: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// Every resolved address refused or timed out; the last error.
    #[error("cannot connect to {address}: {source}")]
    Connect {
        /// The address tried last.
        address: SocketAddr,
        /// The system's error.
        #[source]
        source: io::Error,
    },
}

/// Connects to `address` (`host:port`), trying each resolved address within `timeout`.
pub fn connect(address: &str, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let addrs: Vec<SocketAddr> = address
        .to_socket_addrs()
        .map_err(|source| ConnectError::Resolve {
            address: address.to_string(),
            source,
        })?
        .collect();
    connect_to(address, &addrs, timeout)
}

/// Connects to the first of `addrs` (what `address` resolved to) that accepts within `timeout`.
pub fn connect_to(
    address: &str,
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let mut last = Err(ConnectError::Resolve {
        address: address.to_string(),
        source: io::Error::new(io::ErrorKind::NotFound, "it resolves to no address"),
    });
    for addr in addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(s) => return Ok(s),
            Err(source) => {
                last = Err(ConnectError::Connect {
                    address: *addr,
                    source,
                })
            }
        }
    }
    last
}

/// A listener on every address, IPv6 and IPv4 alike, at `port` (0: the system picks one); on a
/// kernel without IPv6, every IPv4 address.
pub fn listen_every_address(port: u16) -> io::Result<TcpListener> {
    match sys::listen_dual_stack(port) {
        Err(e) if sys::Errno::from_io_error(&e) == Some(sys::Errno::AFNOSUPPORT) => {
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
        }
        other => other,
    }
}

/// The instant `after` from now: `None` (no deadline, never) when `after` reaches beyond what
/// the clock can hold, as `Duration::MAX` does.
pub fn deadline(after: Duration) -> Option<Instant> {
    Instant::now().checked_add(after)
}

/// Waits until `stream` is ready for `readiness`, or fails with `TimedOut` at `deadline`
/// (`None`: never).
pub fn wait(stream: &TcpStream, readiness: Readiness, deadline: Option<Instant>) -> io::Result<()> {
    if sys::wait_ready(stream.as_fd(), readiness, deadline)? {
        Ok(())
    } else {
        Err(io::ErrorKind::TimedOut.into())
    }
}

/// Writes all of `bytes` to `stream` (blocking or not) by `deadline` (`None`: never): each
/// write takes only what fits at once, and the wait for room is bounded by the deadline, so a
/// peer that stops reading costs at most the time left.
pub fn write_all(
    stream: &TcpStream,
    mut bytes: &[u8],
    deadline: Option<Instant>,
) -> io::Result<()> {
    while !bytes.is_empty() {
        match sys::send_now(stream.as_fd(), bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait(stream, Readiness::Writable, deadline)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes from `stream` by `deadline`. The end of the stream before
/// that is `UnexpectedEof`.
pub fn read_exact(
    mut stream: &TcpStream,
    buf: &mut [u8],
    deadline: Option<Instant>,
) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // Wait first, so a blocking socket never blocks past the deadline either.
        wait(stream, Readiness::Readable, deadline)?;
        match stream.read(&mut buf[done..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Why a framed message could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The socket failed, closed early (`UnexpectedEof`) or the deadline passed (`TimedOut`).
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The bytes are not a valid message of the kind expected.
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// Reads one framed message with `reader` by `deadline` — never a byte beyond it — and returns
/// its body.
pub fn read_message(
    stream: &TcpStream,
    reader: FrameReader,
    deadline: Option<Instant>,
) -> Result<Vec<u8>, ReadError> {
    read_versioned(stream, reader, deadline).map(|(_, body)| body)
}

/// [`read_message`] with the version the message had (for a reader of either version).
pub fn read_versioned(
    stream: &TcpStream,
    mut reader: FrameReader,
    deadline: Option<Instant>,
) -> Result<(Option<u16>, Vec<u8>), ReadError> {
    loop {
        let mut buf = vec![0; reader.wanted()];
        read_exact(stream, &mut buf, deadline)?;
        if let (_, Some(body)) = reader.push(&buf)? {
            return Ok((reader.version(), body));
        }
    }
}

/// [`read_message`] with a reader that may take another kind ([`FrameReader::or`]): the kind
/// that arrived, and its body.
pub fn read_kind(
    stream: &TcpStream,
    mut reader: FrameReader,
    deadline: Option<Instant>,
) -> Result<(MessageKind, Vec<u8>), ReadError> {
    loop {
        let mut buf = vec![0; reader.wanted()];
        read_exact(stream, &mut buf, deadline)?;
        if let (_, Some(body)) = reader.push(&buf)? {
            return Ok((reader.kind(), body));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    /// A peer that drips a message a byte at a time never gets more than the one total
    /// deadline: reading stops at it, though every single byte arrived within it.
    #[test]
    fn a_dripping_peer_is_bounded_by_the_total_deadline() {
        let (mut client, server) = pair();
        let dripper = std::thread::spawn(move || {
            let ack = teecast_proto::wire::Ack {
                status: teecast_proto::wire::AckStatus::Ok,
                bytes: 0,
                digest: Vec::new(),
                message: "a message long enough to drip for a while".into(),
                reports: Vec::new(),
            };
            for b in ack.encode() {
                if client.write_all(&[b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let started = Instant::now();
        let got = read_message(
            &server,
            FrameReader::new(MessageKind::Ack),
            started.checked_add(Duration::from_millis(200)),
        );
        let took = started.elapsed();
        assert!(
            matches!(&got, Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::TimedOut),
            "{got:?}"
        );
        assert!(took < Duration::from_secs(2), "{took:?}");
        drop(server);
        dripper.join().unwrap();
    }

    /// On a blocking socket too, a peer that reads nothing holds a write only until the
    /// deadline: the write never blocks past it once the socket buffers are full.
    #[test]
    fn a_peer_that_stops_reading_is_bounded_by_the_deadline_on_a_blocking_socket() {
        // A std socket is blocking unless told otherwise.
        let (client, server) = pair();
        let (done, outcome) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let started = Instant::now();
            let got = write_all(
                &client,
                &vec![0u8; 64 << 20],
                started.checked_add(Duration::from_millis(300)),
            );
            let _ = done.send((got.map_err(|e| e.kind()), started.elapsed()));
        });
        // A write that blocks past its deadline never answers here.
        let (got, took) = outcome
            .recv_timeout(Duration::from_secs(10))
            .expect("the write blocked past its deadline");
        assert_eq!(got, Err(io::ErrorKind::TimedOut));
        assert!(took < Duration::from_secs(5), "{took:?}");
        drop(server);
    }

    #[test]
    fn a_closed_peer_is_an_unexpected_end() {
        let (client, server) = pair();
        drop(client);
        let mut buf = [0u8; 4];
        let err = read_exact(&server, &mut buf, deadline(Duration::from_secs(5))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// A timeout too long for the clock is no deadline, not an overflow; a short one is one.
    #[test]
    fn a_timeout_beyond_the_clock_is_never() {
        assert_eq!(deadline(Duration::MAX), None);
        assert_eq!(deadline(Duration::from_secs(u64::MAX / 2)), None);
        let soon = deadline(Duration::from_secs(1)).unwrap();
        assert!(soon > Instant::now() && soon < Instant::now() + Duration::from_secs(2));
    }

    #[test]
    fn connecting_to_a_name_that_does_not_resolve_says_so() {
        let err = connect("127.0.0.1", Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, ConnectError::Resolve { .. }), "{err:?}");
    }
}

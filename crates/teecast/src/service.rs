//! What a server run by a service manager (systemd) needs from its surroundings, by systemd's
//! own conventions: the listening sockets it was passed (socket activation, `sd_listen_fds(3)`),
//! notices of its state (`sd_notify(3)`: `READY=1`, `STATUS=…`, `STOPPING=1`, as datagrams to
//! `$NOTIFY_SOCKET`), and whether its standard error is the journal (`JOURNAL_STREAM`), where log
//! lines carry a `<N>` priority prefix.

use std::ffi::OsStr;
use std::io;
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The listening TCP sockets the service manager passed this process (none when it passed
/// none). Call it before starting any thread, so that the variables are also removed from the
/// environment; a later call returns none.
///
/// Each must be a listening stream socket: anything else (a UDP socket, a connected one, a
/// socket of another family) is an error that names it, as systemd would be told by a unit
/// whose `.socket` does not fit the service.
pub fn passed_listeners() -> io::Result<Vec<TcpListener>> {
    teecast_sys::take_listen_fds()?
        .into_iter()
        .enumerate()
        .map(|(i, fd)| {
            let what = |why: &str| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("the socket passed as descriptor {} {why}", i + 3),
                )
            };
            if let Some(why) = teecast_sys::not_a_tcp_listener(fd.as_fd()) {
                return Err(what(why));
            }
            Ok(TcpListener::from(fd))
        })
        .collect()
}

/// Where this process tells the service manager of its state: `$NOTIFY_SOCKET`, a datagram
/// socket given by path or, starting with `@`, by an abstract name.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    to: SocketAddr,
}

impl Notifier {
    /// The notifier of `$NOTIFY_SOCKET`, if it is set to an address this process can use.
    pub fn from_env() -> Option<Notifier> {
        Notifier::to(&std::env::var_os("NOTIFY_SOCKET")?).ok()
    }

    /// A notifier that sends to `address`: a path, or `@name` for an abstract socket.
    pub fn to(address: &OsStr) -> io::Result<Notifier> {
        let bytes = address.as_encoded_bytes();
        let to = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None if bytes.starts_with(b"/") => SocketAddr::from_pathname(address)?,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "NOTIFY_SOCKET is neither a path nor an @abstract name",
                ));
            }
        };
        Ok(Notifier {
            socket: UnixDatagram::unbound()?,
            to,
        })
    }

    /// Sends `state` (newline-separated `KEY=value` assignments, e.g. `READY=1`) as one
    /// datagram. A manager that is gone loses the notice and nothing else, so a failure only
    /// returns the error.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        self.socket
            .send_to_addr(state.as_bytes(), &self.to)
            .map(|_| ())
    }
}

/// Whether standard error is the stream the journal gave this process: `JOURNAL_STREAM` holds
/// its `device:inode`, and standard error is still that file (not redirected since).
pub fn stderr_is_journal() -> bool {
    let Some(given) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = given.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata())
        .is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_reaches_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let bound = UnixDatagram::bind(&path).unwrap();
        Notifier::to(path.as_os_str())
            .unwrap()
            .notify("READY=1")
            .unwrap();
        let mut buf = [0u8; 64];
        let n = bound.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("teecast-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let bound = UnixDatagram::bind_addr(&addr).unwrap();
        Notifier::to(OsStr::new(&format!("@{name}")))
            .unwrap()
            .notify("STOPPING=1")
            .unwrap();
        let n = bound.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");

        assert!(Notifier::to(OsStr::new("relative")).is_err());
    }
}

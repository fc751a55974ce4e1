//! Socket options, and a listener on every address.

use std::io;
use std::net::{Ipv6Addr, SocketAddrV6, TcpListener};
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};

/// `socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)`—A TCP socket, neither bound nor connected
/// (to ask what the kernel lets such a socket do).
///
/// # References
///  - [socket(2)](https://man7.org/linux/man-pages/man2/socket.2.html)
#[doc(alias = "socket")]
pub fn tcp_socket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// `socket(AF_INET6)`, `setsockopt(IPV6_V6ONLY, 0)`, `bind([::]:port)`, `listen`—A TCP
/// listener on every address of both families: IPv6, and IPv4 as mapped addresses, whatever
/// `net.ipv6.bindv6only` says. Port 0 lets the system pick one. `EAFNOSUPPORT` where the
/// kernel has no IPv6.
///
/// # References
///  - [ipv6(7)](https://man7.org/linux/man-pages/man7/ipv6.7.html), `IPV6_V6ONLY`
#[doc(alias = "IPV6_V6ONLY")]
pub fn listen_dual_stack(port: u16) -> io::Result<TcpListener> {
    let fd = rustix::net::socket_with(
        AddressFamily::INET6,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    sockopt::set_ipv6_v6only(&fd, false)?;
    // As std's listeners do: a restarted receiver binds its port again at once.
    sockopt::set_socket_reuseaddr(&fd, true)?;
    rustix::net::bind(&fd, &SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0))?;
    rustix::net::listen(&fd, 128)?;
    Ok(TcpListener::from(fd))
}

/// `setsockopt(fd, SOL_SOCKET, SO_ZEROCOPY, 1)`—Asks a socket to accept `MSG_ZEROCOPY` sends
/// (docs/KERNEL.md §2, way 2). An error means this kernel or socket type refuses it.
///
/// # References
///  - [msg_zerocopy.rst](https://docs.kernel.org/networking/msg_zerocopy.html)
#[doc(alias = "SO_ZEROCOPY")]
pub fn set_zerocopy(socket: BorrowedFd<'_>) -> io::Result<()> {
    let one: libc::c_int = 1;
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
        .map_err(|_| io::Error::other("socklen overflow"))?;
    // SAFETY: `socket` is a live descriptor for the duration of the call; the option value is a
    // c_int on our stack whose size is passed exactly; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            libc::SO_ZEROCOPY,
            std::ptr::from_ref(&one).cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `ioctl(socket, SIOCOUTQ)`—How many bytes written to a TCP socket its peer's kernel has not
/// yet acknowledged. Zero once a peer's FIN arrived means the peer's kernel took every byte
/// before its side closed (a FIN acknowledges all it received).
#[doc(alias = "SIOCOUTQ")]
#[doc(alias = "TIOCOUTQ")]
pub fn unacknowledged(socket: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: `socket` is a live descriptor for the duration of the call; SIOCOUTQ (TIOCOUTQ)
    // writes one c_int through the pointer, which points at `n` on our stack.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::TIOCOUTQ,
            std::ptr::from_mut(&mut n),
        )
    };
    if rc == 0 {
        Ok(usize::try_from(n).unwrap_or(0))
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `send(socket, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL)`, retrying on `EINTR`—Writes what fits
/// now and never blocks, whether the socket is blocking or not (`WouldBlock` when nothing fits),
/// so a caller with a deadline can wait for room with `poll` instead.
#[doc(alias = "MSG_DONTWAIT")]
pub fn send_now(socket: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    use rustix::net::SendFlags;
    crate::io::retry_eintr(|| {
        rustix::net::send(socket, buf, SendFlags::DONTWAIT | SendFlags::NOSIGNAL)
    })
}

/// `setsockopt(socket, SOL_SOCKET, SO_LINGER, {on, 0})`—Makes closing the socket reset the
/// connection (RST) instead of ending it (FIN): the peer learns the stream was abandoned on
/// purpose, not cut short by a failure it might wait out.
#[doc(alias = "SO_LINGER")]
pub fn reset_on_close(socket: BorrowedFd<'_>) -> io::Result<()> {
    rustix::net::sockopt::set_socket_linger(socket, Some(std::time::Duration::ZERO))?;
    Ok(())
}

/// `setsockopt(socket, SOL_SOCKET, SO_LINGER, off)`—Undoes [`reset_on_close`]: closing the
/// socket ends the connection in order again (FIN).
#[doc(alias = "SO_LINGER")]
pub fn end_on_close(socket: BorrowedFd<'_>) -> io::Result<()> {
    rustix::net::sockopt::set_socket_linger(socket, None)?;
    Ok(())
}

/// `getsockopt(fd, SOL_SOCKET, SO_DOMAIN / SO_TYPE / SO_ACCEPTCONN)`—Why `fd` is not a listening
/// TCP socket (of IPv4 or IPv6), in words, or `None` when it is one: what a socket passed by a
/// service manager must be.
#[doc(alias = "SO_ACCEPTCONN")]
pub fn not_a_tcp_listener(fd: BorrowedFd<'_>) -> Option<&'static str> {
    use rustix::net::{AddressFamily, SocketType, sockopt};
    let Ok(family) = sockopt::socket_domain(fd) else {
        return Some("is not a socket");
    };
    if family != AddressFamily::INET && family != AddressFamily::INET6 {
        return Some("is not a TCP socket (IPv4 or IPv6)");
    }
    if sockopt::socket_type(fd).ok() != Some(SocketType::STREAM) {
        return Some("is not a stream socket (TCP)");
    }
    if !sockopt::socket_acceptconn(fd).unwrap_or(false) {
        return Some("is not listening (the unit wants ListenStream=)");
    }
    None
}

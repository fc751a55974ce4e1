//! Waiting for readiness with `poll`.

use std::io;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

/// Which readiness to wait for in [`wait_ready`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Data can be read (or the peer hung up).
    Readable,
    /// Data can be written (or the peer hung up).
    Writable,
}

/// `poll(&{fd, events}, 1, timeout)`—Waits until `fd` is ready, up to `deadline`.
///
/// Returns `Ok(true)` when ready (including error and hang-up states, which the next call
/// reports), `Ok(false)` when the deadline passed first. `None` waits without limit.
pub fn wait_ready(
    fd: BorrowedFd<'_>,
    readiness: Readiness,
    deadline: Option<Instant>,
) -> io::Result<bool> {
    let events = match readiness {
        Readiness::Readable => PollFlags::IN,
        Readiness::Writable => PollFlags::OUT,
    };
    loop {
        // Even past the deadline, look once (timeout 0): ready beats late.
        let timeout = deadline.map(|d| timespec(d.saturating_duration_since(Instant::now())));
        let mut fds = [PollFd::from_borrowed_fd(fd, events)];
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(0) if deadline.is_some_and(|d| Instant::now() >= d) => return Ok(false),
            Ok(0) => continue,
            Ok(_) => return Ok(true),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// `poll(fds, n, timeout)`—Waits until at least one of `fds` is ready for `readiness`, up to
/// `deadline` (`None`: without limit); returns the indices of those that are (including those
/// in an error or hang-up state), none when the deadline passed first.
pub fn wait_any(
    fds: &[BorrowedFd<'_>],
    readiness: Readiness,
    deadline: Option<Instant>,
) -> io::Result<Vec<usize>> {
    let events = match readiness {
        Readiness::Readable => PollFlags::IN,
        Readiness::Writable => PollFlags::OUT,
    };
    loop {
        let mut polls: Vec<PollFd<'_>> = fds
            .iter()
            .map(|fd| PollFd::from_borrowed_fd(*fd, events))
            .collect();
        let timeout = deadline.map(|d| timespec(d.saturating_duration_since(Instant::now())));
        match rustix::event::poll(&mut polls, timeout.as_ref()) {
            Ok(0) if deadline.is_some_and(|d| Instant::now() >= d) => return Ok(Vec::new()),
            Ok(0) => continue,
            Ok(_) => {
                return Ok(polls
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| !p.revents().is_empty())
                    .map(|(i, _)| i)
                    .collect());
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

/// `eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)`—A counter another thread can bump (write 8 bytes)
/// to wake one that polls it.
#[doc(alias = "EFD_NONBLOCK")]
pub fn eventfd() -> std::io::Result<std::os::fd::OwnedFd> {
    use rustix::event::EventfdFlags;
    Ok(rustix::event::eventfd(
        0,
        EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipe::Pipe;
    use std::os::fd::AsFd;

    #[test]
    fn wait_ready_times_out_on_an_empty_pipe() {
        let p = Pipe::with_size(4096).unwrap();
        let deadline = Instant::now() + Duration::from_millis(20);
        assert!(!wait_ready(p.read.as_fd(), Readiness::Readable, Some(deadline)).unwrap());
        assert!(wait_ready(p.write.as_fd(), Readiness::Writable, Some(deadline)).unwrap());
    }

    #[test]
    fn wait_any_names_the_ready_ones() {
        let (a, b) = (
            Pipe::with_size(4096).unwrap(),
            Pipe::with_size(4096).unwrap(),
        );
        crate::write(b.write.as_fd(), b"x").unwrap();
        let fds = [a.read.as_fd(), b.read.as_fd()];
        assert_eq!(wait_any(&fds, Readiness::Readable, None).unwrap(), vec![1]);
        let fds = [b.read.as_fd(), a.write.as_fd()];
        assert_eq!(wait_any(&fds, Readiness::Writable, None).unwrap(), vec![1]);
        let soon = Some(Instant::now() + Duration::from_millis(20));
        assert!(
            wait_any(&[a.read.as_fd()], Readiness::Readable, soon)
                .unwrap()
                .is_empty()
        );
    }
}

//! How a running [`serve_until`](super::serve_until) is told from another thread (the one that
//! handles signals, say) to stop.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use teecast_sys as sys;

use crate::auth::Key;

/// A handle on a running server: clone it to the thread that decides when it stops. One
/// server a handle.
#[derive(Clone, Debug, Default)]
pub struct Control(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    /// Until when streams in flight may finish, once a stop was asked for.
    stop: Mutex<Option<Instant>>,
    /// Set when the streams still in flight are to end now, refused.
    cut: AtomicBool,
    /// Keys given since the start, for the connections from now on.
    keys: Mutex<Option<Vec<Key>>>,
    /// Written to wake the accepting thread (an eventfd), once the server runs.
    wake: OnceLock<OwnedFd>,
}

impl Control {
    /// A handle for a server not yet started.
    pub fn new() -> Control {
        Control::default()
    }

    /// Stops the server: it accepts no more connections (a listening socket passed by a
    /// service manager keeps its queue for the next start), closes those that have not sent
    /// their header, and lets the streams in flight finish for up to `drain`; then the rest are
    /// refused (their senders told, nothing of them kept) and the server returns. A second call
    /// can only shorten the time left (`Duration::ZERO`: refuse them now).
    pub fn stop(&self, drain: Duration) {
        let until = Instant::now() + drain;
        {
            let mut stop = self.0.stop.lock().unwrap_or_else(|p| p.into_inner());
            *stop = Some(stop.map_or(until, |s| s.min(until)));
        }
        self.wake();
    }

    /// The keys a sender may prove from the next connection on, in place of the options'
    /// (a key rotation: read again, say, on SIGHUP). Streams in flight keep the key their
    /// sender proved. An empty list changes nothing, and a server started without keys stays
    /// without: a reload never turns authentication off.
    pub fn set_keys(&self, keys: Vec<Key>) {
        *self.0.keys.lock().unwrap_or_else(|p| p.into_inner()) = Some(keys);
    }

    /// The keys for a new connection: the last ones set, else `given`; none when `given` has
    /// none (a server without keys stays without).
    pub(super) fn keys(&self, given: &[Key]) -> Vec<Key> {
        if given.is_empty() {
            return Vec::new();
        }
        let set = self.0.keys.lock().unwrap_or_else(|p| p.into_inner());
        set.clone()
            .filter(|keys| !keys.is_empty())
            .unwrap_or_else(|| given.to_vec())
    }

    /// Whether a stop was asked for.
    pub fn is_stopping(&self) -> bool {
        self.stopping().is_some()
    }

    /// Until when streams may finish, once a stop was asked for.
    pub(super) fn stopping(&self) -> Option<Instant> {
        *self.0.stop.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The streams still in flight end now: each notices at its next read.
    pub(super) fn cut(&self) {
        self.0.cut.store(true, Ordering::Release);
    }

    /// Whether the streams in flight were told to end.
    pub(super) fn is_cut(&self) -> bool {
        self.0.cut.load(Ordering::Acquire)
    }

    /// The descriptor the accepting thread polls, made at the first call.
    pub(super) fn wake_fd(&self) -> io::Result<BorrowedFd<'_>> {
        if self.0.wake.get().is_none() {
            let fd = sys::eventfd()?;
            // Another thread may have set it meanwhile: then that one is used.
            let _ = self.0.wake.set(fd);
        }
        self.0
            .wake
            .get()
            .map(|fd| fd.as_fd())
            .ok_or_else(|| io::Error::other("no eventfd"))
    }

    /// Wakes the accepting thread (if it runs) to look at the state again.
    pub(super) fn wake(&self) {
        if let Some(fd) = self.0.wake.get() {
            // A full counter has already woken it.
            let _ = sys::write(fd.as_fd(), &1u64.to_ne_bytes());
        }
    }

    /// Resets the wake-up, before the accepting thread looks at the state.
    pub(super) fn clear_wake(&self) {
        if let Some(fd) = self.0.wake.get() {
            let mut buf = [0u8; 8];
            let _ = sys::read(fd.as_fd(), &mut buf);
        }
    }
}

//! The relayed streams being received, for a resuming header to find the one it continues: a
//! new parent hands its connection to the stream, whose filler takes it over.

use std::net::{Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard};

use teecast_proto::session::ReceiverSession;
use teecast_proto::wire::{Header, TRANSFER_ID_LEN};
use teecast_sys as sys;
use teecast_sys::Pipe;

use crate::sync::lock;

/// The relayed streams being received, for a resuming header to find the one it continues.
#[derive(Default)]
pub(super) struct Streams(Mutex<Vec<Arc<Resumable>>>);

/// A relayed stream being received, which a new parent may take over.
pub(super) struct Resumable {
    /// The stream's header, resume flag clear.
    pub(super) header: Header,
    /// A handle on the current parent's connection, to cut it when another parent takes over.
    pub(super) parent: Mutex<Option<TcpStream>>,
    /// The new parent's connection and session, once one offered to resume.
    pub(super) offer: Mutex<Option<(TcpStream, ReceiverSession)>>,
    /// Written to when an offer arrives.
    pub(super) wake: Pipe,
}

/// A stream's place in [`Streams`], given up when dropped.
pub(super) struct Registered<'a> {
    pub(super) streams: &'a Streams,
    pub(super) stream: Option<Arc<Resumable>>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Some(me) = self.stream.take() {
            self.streams.lock().retain(|s| !Arc::ptr_eq(s, &me));
        }
    }
}

/// `header` with its resume flag clear and its timeouts set aside: what a resuming header must
/// match.
pub(super) fn resumed(header: &Header) -> Header {
    let mut h = header.clone();
    if let Some(t) = &mut h.tree {
        t.resume = false;
        // Each parent sends the timeouts it keeps itself: an adopter's differ from the
        // parent's it replaces, and the stream is the same.
        t.stall_ms = 1;
        t.connect_ms = 1;
    }
    h
}

impl Streams {
    pub(super) fn lock(&self) -> MutexGuard<'_, Vec<Arc<Resumable>>> {
        lock(&self.0)
    }

    /// Enters the stream of `header`, received from `parent` (nothing, for a stream that
    /// cannot be resumed or when the system refuses a pipe: it then fails as it would have).
    pub(super) fn register<'a>(&'a self, header: &Header, parent: &TcpStream) -> Registered<'a> {
        let id = header.tree.map(|t| t.transfer);
        let entry = match (id, Pipe::with_size(4096)) {
            (Some(id), Ok(wake)) if id != [0; TRANSFER_ID_LEN] => Some(Arc::new(Resumable {
                header: resumed(header),
                parent: Mutex::new(parent.try_clone().ok()),
                offer: Mutex::new(None),
                wake,
            })),
            _ => None,
        };
        if let Some(e) = &entry {
            self.lock().push(e.clone());
        }
        Registered {
            streams: self,
            stream: entry,
        }
    }

    /// Hands `stream` and `session` (past a resuming header) to the stream they resume, if
    /// it is being received here; gives them back otherwise.
    pub(super) fn offer(
        &self,
        stream: TcpStream,
        session: ReceiverSession,
    ) -> Option<(TcpStream, ReceiverSession)> {
        let wanted = session.header().map(resumed);
        let found = self
            .lock()
            .iter()
            .find(|s| Some(&s.header) == wanted.as_ref())
            .cloned();
        let Some(target) = found else {
            return Some((stream, session));
        };
        *lock(&target.offer) = Some((stream, session));
        // The filler may be reading from the old parent: end that read.
        if let Some(old) = lock(&target.parent).take() {
            let _ = old.shutdown(Shutdown::Read);
        }
        let _ = sys::write(target.wake.write.as_fd(), b"!");
        None
    }
}

//! The receiver's gate: a place per connection, given to the newest when it is full, kept by
//! a stream past its header.

use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, TcpStream};
use std::sync::{Condvar, Mutex};

use super::error::RecvError;
use super::options::{Received, RecvOptions, Target};
/// Who is being served: the places of [`serve`], the one stream of `once`, the one target.
pub(super) struct Gate {
    max_total: usize,
    max_per_peer: usize,
    once: bool,
    /// Set for a target that takes one stream at a time (a file, standard output).
    target: Option<Mutex<()>>,
    state: Mutex<GateState>,
    freed: Condvar,
    /// Written to when `once`'s stream is done, to wake the accepting thread.
    wake: File,
}

#[derive(Default)]
pub(super) struct GateState {
    next: u64,
    /// Every connection being served, oldest first.
    live: Vec<Place>,
    /// With `once`: the connection whose stream is the one, once one passed its header.
    the_one: Option<u64>,
    /// With `once`: whether that stream was stored, once it is done.
    outcome: Option<bool>,
}

/// One connection's place in the [`Gate`].
pub(super) struct Place {
    id: u64,
    ip: IpAddr,
    /// Until its header: a handle to close it by, should its place be needed.
    opening: Option<TcpStream>,
}

/// A connection's claim to its place, by which it is found in the [`Gate`].
#[derive(Clone, Copy)]
pub(super) struct Ticket(u64);

impl Gate {
    pub(super) fn new(options: &RecvOptions, once: bool, wake: File) -> Gate {
        Gate {
            max_total: options.max_connections.max(1),
            max_per_peer: options.max_per_peer.max(1),
            once,
            target: (!matches!(options.target, Target::Dir(_))).then(|| Mutex::new(())),
            state: Mutex::new(GateState::default()),
            freed: Condvar::new(),
            wake,
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a connection from `ip`: taken from the oldest connection still before its
    /// header where the address or the receiver is full; waits while every place is held by a
    /// stream; `None` when the address holds all its places with streams.
    pub(super) fn enter(&self, stream: &TcpStream, ip: IpAddr) -> Option<Ticket> {
        let mut state = self.lock();
        loop {
            if state.live.iter().filter(|p| p.ip == ip).count() >= self.max_per_peer {
                let oldest = state
                    .live
                    .iter()
                    .position(|p| p.ip == ip && p.opening.is_some())?;
                state.displace(oldest);
            }
            if state.live.len() < self.max_total {
                break;
            }
            match state.live.iter().position(|p| p.opening.is_some()) {
                Some(oldest) => state.displace(oldest),
                None => state = self.freed.wait(state).unwrap_or_else(|p| p.into_inner()),
            }
        }
        let id = state.next;
        state.next += 1;
        state.live.push(Place {
            id,
            ip,
            // Without a second handle the connection cannot be displaced, only time out.
            opening: stream.try_clone().ok(),
        });
        Some(Ticket(id))
    }

    /// The connection of `ticket` passed its header: it keeps its place, becomes `once`'s one
    /// stream (or is refused: there is one already) and waits for the target.
    pub(super) fn open(
        &self,
        ticket: Ticket,
    ) -> Result<Option<std::sync::MutexGuard<'_, ()>>, RecvError> {
        {
            let mut state = self.lock();
            let place = state
                .live
                .iter_mut()
                .find(|p| p.id == ticket.0)
                .ok_or(RecvError::Displaced)?;
            place.opening = None;
            if self.once {
                if state.the_one.is_some() {
                    return Err(RecvError::Taken);
                }
                state.the_one = Some(ticket.0);
            }
        }
        Ok(self
            .target
            .as_ref()
            .map(|t| t.lock().unwrap_or_else(|p| p.into_inner())))
    }

    /// The connection of `ticket` resumes a stream already served here: it can no longer be
    /// displaced, and is neither a new stream nor waits for the target.
    pub(super) fn settle(&self, ticket: Ticket) {
        if let Some(place) = self.lock().live.iter_mut().find(|p| p.id == ticket.0) {
            place.opening = None;
        }
    }

    /// The connection of `ticket` is done with `result`: frees its place (a connection that
    /// lost its place is told so) and, for `once`'s stream, ends the serving.
    pub(super) fn leave(
        &self,
        ticket: Ticket,
        result: Result<Received, RecvError>,
    ) -> Result<Received, RecvError> {
        let mut state = self.lock();
        let Some(i) = state.live.iter().position(|p| p.id == ticket.0) else {
            // Displaced before its header: whatever the read said, this is why it ended.
            return result.map_err(|_| RecvError::Displaced);
        };
        state.live.remove(i);
        if state.the_one == Some(ticket.0) {
            state.outcome = Some(result.is_ok());
            // The accepting thread polls this pipe; a full pipe has already woken it.
            let _ = (&self.wake).write(b"!");
        }
        self.freed.notify_one();
        result
    }

    /// With `once`: whether its stream was stored, once it is done.
    pub(super) fn finished(&self) -> Option<bool> {
        self.lock().outcome
    }

    /// Closes every connection still before its header.
    pub(super) fn close_opening(&self) {
        let mut state = self.lock();
        while let Some(i) = state.live.iter().position(|p| p.opening.is_some()) {
            state.displace(i);
        }
    }
}

impl GateState {
    /// Takes the place of the connection at `i` and closes it; its thread ends at its next
    /// read.
    pub(super) fn displace(&mut self, i: usize) {
        let place = self.live.remove(i);
        if let Some(s) = place.opening {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

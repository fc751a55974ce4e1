//! The receiver's gate: a place per connection, given to the newest when it is full, kept by
//! a stream past its header.

use std::net::{IpAddr, TcpStream};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use super::control::Control;
use super::error::RecvError;
use super::options::{Received, RecvOptions, Target};
use crate::sync::lock;

/// Who is being served: the places of [`serve`], the one stream of `once`, the one target.
pub(super) struct Gate<'a> {
    max_total: usize,
    max_per_peer: usize,
    once: bool,
    /// Set for a target that takes one stream at a time (a file, standard output).
    target: Option<Mutex<()>>,
    state: Mutex<GateState>,
    /// Notified when a place is freed.
    freed: Condvar,
    /// Woken when a place is freed, for the accepting thread.
    pub(super) control: &'a Control,
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
    /// A second handle on the connection: to close it by before its header, should its place
    /// be needed, and to cut its stream short when a stop's time is up.
    handle: Option<TcpStream>,
    /// Past its header: it keeps its place.
    opened: bool,
}

impl Place {
    /// Whether its place can be taken: it has not sent its header (and can be closed).
    fn displaceable(&self) -> bool {
        !self.opened && self.handle.is_some()
    }
}

/// A connection's claim to its place, by which it is found in the [`Gate`].
#[derive(Clone, Copy)]
pub(super) struct Ticket(u64);

impl<'a> Gate<'a> {
    pub(super) fn new(options: &RecvOptions, once: bool, control: &'a Control) -> Gate<'a> {
        Gate {
            max_total: options.max_connections.max(1),
            max_per_peer: options.max_per_peer.max(1),
            once,
            target: (!matches!(options.target, Target::Dir(_))).then(|| Mutex::new(())),
            state: Mutex::new(GateState::default()),
            freed: Condvar::new(),
            control,
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        lock(&self.state)
    }

    /// Whether a new connection would find a place: one is free, or held by a connection
    /// still before its header.
    pub(super) fn has_room(&self) -> bool {
        let state = self.lock();
        state.live.len() < self.max_total || state.live.iter().any(Place::displaceable)
    }

    /// A place for a connection from `ip`: taken from the oldest connection still before its
    /// header where the address or the receiver is full; `None` when the address holds all its
    /// places with streams. Called only when [`Gate::has_room`] (which nothing but this thread
    /// can take away).
    pub(super) fn enter(&self, stream: &TcpStream, ip: IpAddr) -> Option<Ticket> {
        let mut state = self.lock();
        if state.live.iter().filter(|p| p.ip == ip).count() >= self.max_per_peer {
            let oldest = state
                .live
                .iter()
                .position(|p| p.ip == ip && p.displaceable())?;
            state.displace(oldest);
        }
        if state.live.len() >= self.max_total
            && let Some(oldest) = state.live.iter().position(Place::displaceable)
        {
            state.displace(oldest);
        }
        let id = state.next;
        state.next += 1;
        state.live.push(Place {
            id,
            ip,
            // Without a second handle the connection cannot be displaced, only time out.
            handle: stream.try_clone().ok(),
            opened: false,
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
            place.opened = true;
            if self.once {
                if state.the_one.is_some() {
                    return Err(RecvError::Taken);
                }
                state.the_one = Some(ticket.0);
            }
        }
        Ok(self.target.as_ref().map(|t| lock(t)))
    }

    /// The connection of `ticket` resumes a stream already served here: it can no longer be
    /// displaced, and is neither a new stream nor waits for the target.
    pub(super) fn settle(&self, ticket: Ticket) {
        if let Some(place) = self.lock().live.iter_mut().find(|p| p.id == ticket.0) {
            place.opened = true;
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
        }
        self.freed.notify_all();
        self.control.wake();
        result
    }

    /// With `once`: whether its stream was stored, once it is done.
    pub(super) fn finished(&self) -> Option<bool> {
        self.lock().outcome
    }

    /// Closes every connection still before its header.
    pub(super) fn close_opening(&self) {
        let mut state = self.lock();
        while let Some(i) = state.live.iter().position(Place::displaceable) {
            state.displace(i);
        }
    }

    /// Waits until every connection is done, or `deadline`; whether they all are.
    pub(super) fn wait_empty(&self, deadline: Instant) -> bool {
        let mut state = self.lock();
        while !state.live.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .freed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Wakes every stream still in flight from a read it may be waiting in (once
    /// [`Control::cut`] says why): its socket reads nothing more, and it is refused.
    pub(super) fn cut_streams(&self) {
        for place in &self.lock().live {
            if let Some(s) = &place.handle {
                let _ = s.shutdown(std::net::Shutdown::Read);
            }
        }
    }
}

impl GateState {
    /// Takes the place of the connection at `i` and closes it; its thread ends at its next
    /// read.
    pub(super) fn displace(&mut self, i: usize) {
        let place = self.live.remove(i);
        if let Some(s) = place.handle {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

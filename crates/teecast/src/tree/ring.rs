//! The replay of a host with children: what it replays from ([`Replay`]): a ring of the last
//! bytes, filled as one more consumer of its fan-out, or its own stored copy.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use teecast_sys as sys;

use crate::digest::Digest;
use crate::engine::{Abandoned, Consumer};
use crate::sync::{lock, wait, wait_timeout};
/// The ring's default size: the bytes a parent can replay to an adopted child.
pub const DEFAULT_RING: usize = 64 << 20;

/// The ring's unit: bytes are kept, replayed and dropped a block at a time.
pub(crate) const BLOCK: usize = 1 << 20;

/// The last bytes of a stream, for replay: at most its capacity, less while a follower still
/// needs older bytes (then the writer waits, as for a slow destination).
pub(crate) struct Ring {
    capacity: usize,
    patience: Duration,
    state: Mutex<RingState>,
    changed: Condvar,
}

#[derive(Default)]
pub(crate) struct RingState {
    /// The stream offset of the first block held.
    start: u64,
    /// Bytes written so far.
    end: u64,
    blocks: VecDeque<Arc<Vec<u8>>>,
    held: usize,
    /// Offsets still needed by followers, by pin.
    pins: Vec<(u64, u64)>,
    next_pin: u64,
    /// The stream's end (its length and digest), or why the ring stopped.
    ended: Option<Result<(u64, Digest), Stopped>>,
    /// A dropped block, to fill again.
    spare: Option<Vec<u8>>,
    /// How often the writer has waited for a block a follower still needs.
    held_back: u64,
}

/// Why a replay stopped before the stream's end.
#[derive(Clone, Copy, Debug, thiserror::Error)]
pub(crate) enum Stopped {
    /// The transfer was abandoned.
    #[error("the transfer was abandoned")]
    Abandoned,
    /// This host's own copy failed (a full disk), so it replays nothing more.
    #[error("this host's own copy failed")]
    LocalCopyFailed,
    /// The stored copy holds fewer bytes than were written to it.
    #[error("the stored copy is shorter than written")]
    StoredCopyShort,
    /// Reading the stored copy back failed.
    #[error("reading the stored copy: {0}")]
    StoredCopyRead(io::ErrorKind),
}

/// What a follower gets at an offset of what it replays.
pub(crate) enum Held {
    /// These bytes of this block come next.
    Bytes(Arc<Vec<u8>>, Range<usize>),
    /// Nothing yet.
    Wait,
    /// The stream ended after this many bytes with this digest.
    End(u64, Digest),
    /// The ring no longer holds the offset: it starts here.
    Gone(u64),
    /// The ring stopped (the transfer was abandoned).
    Failed(Stopped),
}

impl Ring {
    /// A ring of `capacity` bytes (at least two blocks), whose writer waits at most `patience`
    /// for a follower that still needs its oldest block.
    pub(crate) fn new(capacity: usize, patience: Duration) -> Ring {
        Ring {
            capacity: capacity.max(2 * BLOCK),
            patience,
            state: Mutex::new(RingState::default()),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RingState> {
        lock(&self.state)
    }

    /// Appends `block`, dropping the oldest blocks no follower needs to stay within capacity
    /// (waiting while one does, at most the ring's patience: then the block goes all the same,
    /// and that follower learns it is gone); returns a block to fill next (a dropped one, or
    /// none).
    fn push(&self, block: Vec<u8>) -> Vec<u8> {
        let until = crate::transport::deadline(self.patience);
        let mut state = self.lock();
        while state.held + block.len() > self.capacity && !state.blocks.is_empty() {
            let first_end = state.start + state.blocks[0].len() as u64;
            let left = until.map(|t| t.saturating_duration_since(Instant::now()));
            if left != Some(Duration::ZERO)
                && state.pins.iter().any(|&(_, offset)| offset < first_end)
            {
                state.held_back += 1;
                self.changed.notify_all();
                state = match left {
                    Some(left) => wait_timeout(&self.changed, state, left),
                    None => wait(&self.changed, state),
                };
                continue;
            }
            if let Some(dropped) = state.blocks.pop_front() {
                state.held -= dropped.len();
                state.start = first_end;
                state.spare = Arc::try_unwrap(dropped).ok();
            }
        }
        state.end += block.len() as u64;
        state.held += block.len();
        state.blocks.push_back(Arc::new(block));
        self.changed.notify_all();
        // Filled over from its start: what it held does not matter.
        state.spare.take().unwrap_or_default()
    }

    pub(crate) fn end(&self, ended: Result<(u64, Digest), Stopped>) {
        self.lock().ended.get_or_insert(ended);
        self.changed.notify_all();
    }

    /// Holds everything from the oldest byte still here until the follower says where it
    /// goes on from.
    pub(crate) fn pin(self: &Arc<Ring>) -> Pin {
        let mut state = self.lock();
        let id = state.next_pin;
        state.next_pin += 1;
        let start = state.start;
        state.pins.push((id, start));
        Pin {
            ring: self.clone(),
            id,
        }
    }

    /// The bytes at `offset`, waiting up to `wait` for them.
    pub(crate) fn at(&self, offset: u64, wait: Duration) -> Held {
        look_or_wait(&self.state, &self.changed, wait, |state| {
            if offset < state.start {
                return Some(Held::Gone(state.start));
            }
            let mut at = state.start;
            for block in &state.blocks {
                let len = block.len() as u64;
                if offset < at + len {
                    let from = (offset - at) as usize;
                    return Some(Held::Bytes(block.clone(), from..block.len()));
                }
                at += len;
            }
            ended(&state.ended)
        })
    }
}

/// Looks at the state in `m` with `look` until it finds something, once more after waiting up
/// to `wait` for `changed`; [`Held::Wait`] if it still finds nothing.
pub(crate) fn look_or_wait<T>(
    m: &Mutex<T>,
    changed: &Condvar,
    wait: Duration,
    mut look: impl FnMut(&T) -> Option<Held>,
) -> Held {
    let mut state = lock(m);
    if let Some(held) = look(&state) {
        return held;
    }
    state = wait_timeout(changed, state, wait);
    look(&state).unwrap_or(Held::Wait)
}

/// What a follower past the last byte gets: the end, once it came.
pub(crate) fn ended(ended: &Option<Result<(u64, Digest), Stopped>>) -> Option<Held> {
    match ended {
        Some(Ok((length, digest))) => Some(Held::End(*length, digest.clone())),
        Some(Err(why)) => Some(Held::Failed(*why)),
        None => None,
    }
}

/// A relay's own copy as it is written, for replay: its temporary file, which no one else
/// writes, read back from the page cache. It holds the whole stream, so a relay with a file
/// needs no ring (and no memory for one).
pub(crate) struct StoredCopy {
    file: File,
    state: Mutex<CopyState>,
    changed: Condvar,
}

#[derive(Default)]
pub(crate) struct CopyState {
    written: u64,
    ended: Option<Result<(u64, Digest), Stopped>>,
}

impl StoredCopy {
    pub(crate) fn new(file: File) -> Arc<StoredCopy> {
        Arc::new(StoredCopy {
            file,
            state: Mutex::new(CopyState::default()),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, CopyState> {
        lock(&self.state)
    }

    pub(crate) fn wrote(&self, n: u64) {
        self.lock().written += n;
        self.changed.notify_all();
    }

    pub(crate) fn end(&self, ended: Result<(u64, Digest), Stopped>) {
        self.lock().ended.get_or_insert(ended);
        self.changed.notify_all();
    }

    /// The bytes at `offset`, waiting up to `wait` for them.
    pub(crate) fn at(&self, offset: u64, wait: Duration) -> Held {
        look_or_wait(&self.state, &self.changed, wait, |state| {
            if offset >= state.written {
                return ended(&state.ended);
            }
            let len = (state.written - offset).min(BLOCK as u64) as usize;
            let mut buf = vec![0; len];
            Some(match sys::pread(self.file.as_fd(), &mut buf, offset) {
                Ok(n) if n > 0 => Held::Bytes(Arc::new(buf), 0..n),
                Ok(_) => Held::Failed(Stopped::StoredCopyShort),
                Err(e) => Held::Failed(Stopped::StoredCopyRead(e.kind())),
            })
        })
    }
}

/// What a host replays to the children it adopts: its ring, or (a relay storing a file) its
/// own copy.
#[derive(Clone)]
pub(crate) enum Replay {
    Ring(Arc<Ring>),
    Stored(Arc<StoredCopy>),
}

impl Replay {
    pub(crate) fn at(&self, offset: u64, wait: Duration) -> Held {
        match self {
            Replay::Ring(r) => r.at(offset, wait),
            Replay::Stored(c) => c.at(offset, wait),
        }
    }

    /// A claim on the ring's bytes from its oldest on (a stored copy drops nothing).
    pub(crate) fn pin(&self) -> Option<Pin> {
        match self {
            Replay::Ring(r) => Some(r.pin()),
            Replay::Stored(_) => None,
        }
    }
}

/// A follower's claim on the ring: no byte at or after its offset is dropped.
pub(crate) struct Pin {
    ring: Arc<Ring>,
    id: u64,
}

impl Pin {
    /// The follower needs the bytes from `offset` on; `Err` with the ring's start when it no
    /// longer holds them.
    pub(crate) fn hold(&self, offset: u64) -> Result<(), u64> {
        let mut state = self.ring.lock();
        if offset < state.start {
            return Err(state.start);
        }
        if let Some(p) = state.pins.iter_mut().find(|(id, _)| *id == self.id) {
            p.1 = offset;
        }
        self.ring.changed.notify_all();
        Ok(())
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.ring.lock().pins.retain(|(id, _)| *id != self.id);
        self.ring.changed.notify_all();
    }
}

/// The consumer that fills a [`Ring`]: one copy of the stream into memory.
pub(crate) struct RingWriter {
    ring: Arc<Ring>,
    /// The block being filled, [`BLOCK`] bytes long (zeroed once, when first allocated).
    block: Vec<u8>,
    /// Bytes of `block` filled so far.
    filled: usize,
}

impl RingWriter {
    pub(crate) fn new(ring: Arc<Ring>) -> RingWriter {
        RingWriter {
            ring,
            block: Vec::new(),
            filled: 0,
        }
    }

    /// The unfilled rest of the block (a full-length one).
    fn room(&mut self) -> &mut [u8] {
        if self.block.len() != BLOCK {
            self.block.resize(BLOCK, 0);
        }
        &mut self.block[self.filled..]
    }

    /// Puts what the block holds into the ring; the next block to fill is one it dropped.
    fn publish(&mut self) {
        if self.filled > 0 {
            let mut full = std::mem::take(&mut self.block);
            full.truncate(self.filled);
            self.block = self.ring.push(full);
            self.filled = 0;
        }
    }
}

impl Consumer for RingWriter {
    type Outcome = ();
    type Error = RingError;

    fn take_pipe(&mut self, pipe: BorrowedFd<'_>) -> Result<u64, RingError> {
        let mut total = 0;
        loop {
            let n = sys::read(pipe, self.room())?;
            self.filled += n;
            total += n as u64;
            if n == 0 || self.filled == BLOCK {
                self.publish();
            }
            if n == 0 {
                return Ok(total);
            }
        }
    }

    fn take_from_buffer(&mut self, mut bytes: &[u8]) -> Result<(), RingError> {
        while !bytes.is_empty() {
            let room = self.room();
            let take = bytes.len().min(room.len());
            room[..take].copy_from_slice(&bytes[..take]);
            self.filled += take;
            bytes = &bytes[take..];
            if self.filled == BLOCK {
                self.publish();
            }
        }
        Ok(())
    }

    fn finish(&mut self, length: u64, digest: &Digest) -> Result<(), RingError> {
        self.publish();
        self.ring.end(Ok((length, digest.clone())));
        Ok(())
    }

    fn abort(&mut self) {
        self.ring.end(Err(Stopped::Abandoned));
    }
}

impl Drop for RingWriter {
    /// A writer that goes without finishing (its thread panicked) ends the ring, so that no
    /// follower waits for bytes that will never come. After `finish` or `abort`, nothing.
    fn drop(&mut self) {
        self.ring.end(Err(Stopped::Abandoned));
    }
}

/// Why the ring stopped filling (its followers are told; the transfer goes on).
#[derive(Debug)]
pub(crate) enum RingError {
    Io(io::Error),
    Abandoned(Abandoned),
}

impl From<io::Error> for RingError {
    fn from(e: io::Error) -> Self {
        RingError::Io(e)
    }
}

impl From<Abandoned> for RingError {
    fn from(a: Abandoned) -> Self {
        RingError::Abandoned(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{DigestAlgorithm, Hasher};

    fn digest() -> Digest {
        Hasher::new(DigestAlgorithm::Blake3).finish()
    }

    #[test]
    fn the_ring_replays_from_any_offset_it_still_holds() {
        let ring = Arc::new(Ring::new(2 * BLOCK, Duration::MAX));
        let mut writer = RingWriter::new(ring.clone());
        let data: Vec<u8> = (0..2 * BLOCK + 5).map(|i| (i % 251) as u8).collect();
        writer.take_from_buffer(&data).unwrap();
        writer.finish(data.len() as u64, &digest()).unwrap();
        // Two blocks held: the first block is gone.
        assert!(matches!(ring.at(5, Duration::ZERO), Held::Gone(s) if s == BLOCK as u64));
        let mut offset = BLOCK as u64 + 7;
        let mut got = Vec::new();
        loop {
            match ring.at(offset, Duration::ZERO) {
                Held::Bytes(b, r) => {
                    offset += r.len() as u64;
                    got.extend_from_slice(&b[r]);
                }
                Held::End(len, _) => {
                    assert_eq!(len, data.len() as u64);
                    break;
                }
                _ => panic!("the ring holds the rest"),
            }
        }
        assert_eq!(got, data[BLOCK + 7..]);
    }

    #[test]
    fn a_pinned_offset_holds_the_writer_back() {
        let ring = Arc::new(Ring::new(2 * BLOCK, Duration::MAX));
        let pin = ring.pin();
        let writer = {
            let ring = ring.clone();
            std::thread::spawn(move || {
                let mut writer = RingWriter::new(ring);
                writer.take_from_buffer(&vec![1; 4 * BLOCK]).unwrap();
                writer.finish(4 * BLOCK as u64, &digest()).unwrap();
            })
        };
        // Held at 0, the writer cannot drop the first block: it waits with two in the ring.
        let mut offset = 0;
        while offset < 2 * BLOCK as u64 {
            match ring.at(offset, Duration::from_secs(10)) {
                Held::Bytes(_, r) => offset += r.len() as u64,
                _ => panic!("the first two blocks come before anything else"),
            }
        }
        // Until the writer waits for the pinned block; without the pin it would drop it and
        // finish instead.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut state = ring.lock();
        while state.held_back == 0 {
            assert!(
                !writer.is_finished() && std::time::Instant::now() < deadline,
                "the writer went past a pinned block"
            );
            state = wait_timeout(&ring.changed, state, Duration::from_millis(100));
        }
        drop(state);
        assert!(matches!(ring.at(0, Duration::ZERO), Held::Bytes(..)));
        assert!(
            matches!(ring.at(offset, Duration::ZERO), Held::Wait),
            "a third block while the first is pinned"
        );
        // Released up to here, the writer goes on to the end.
        pin.hold(offset).unwrap();
        while offset < 4 * BLOCK as u64 {
            match ring.at(offset, Duration::from_secs(10)) {
                Held::Bytes(_, r) => {
                    offset += r.len() as u64;
                    pin.hold(offset).unwrap();
                }
                Held::Wait => {}
                _ => panic!("nothing else before the end"),
            }
        }
        writer.join().unwrap();
        assert!(matches!(ring.at(offset, Duration::ZERO), Held::End(..)));
    }

    /// A follower that holds its pin past the ring's patience does not freeze the writer: the
    /// block goes, and the follower is told its offset is gone.
    #[test]
    fn a_pin_held_too_long_is_dropped() {
        let ring = Arc::new(Ring::new(2 * BLOCK, Duration::from_millis(100)));
        let pin = ring.pin();
        let writing = ring.clone();
        let writer = std::thread::spawn(move || {
            let mut writer = RingWriter::new(writing);
            writer.take_from_buffer(&vec![1; 4 * BLOCK]).unwrap();
            writer.finish(4 * BLOCK as u64, &digest()).unwrap();
        });
        writer.join().unwrap();
        assert!(matches!(ring.at(0, Duration::ZERO), Held::Gone(start) if start > 0));
        drop(pin);
    }

    /// A writer whose thread panics mid-stream ends the ring: a follower waiting for more is
    /// told the replay stopped, and does not wait for ever.
    #[test]
    fn a_writer_that_panics_ends_the_ring() {
        let ring = Arc::new(Ring::new(4 * BLOCK, Duration::MAX));
        let writing = ring.clone();
        let panicked = std::thread::spawn(move || {
            let mut writer = RingWriter::new(writing);
            writer.take_from_buffer(&vec![7; BLOCK]).unwrap();
            panic!("a consumer's bug");
        })
        .join();
        assert!(panicked.is_err());
        assert!(matches!(ring.at(0, Duration::ZERO), Held::Bytes(..)));
        assert!(matches!(
            ring.at(BLOCK as u64, Duration::from_secs(5)),
            Held::Failed(Stopped::Abandoned)
        ));
    }
}

//! Failover in a relay tree: a parent whose child died, stalled or could not be reached serves
//! that child's children itself, each from the offset it already holds.
//!
//! Every host with children can replay the stream ([`Replay`]): a relay from its own copy as it
//! is written ([`StoredCopy`]); the sender, and a relay that stores no file, from a [`Ring`] of
//! the last bytes, of bounded size, filled as one more consumer of its fan-out ([`RingSink`]).
//! When a child fails, its [`DestSink`] tells the [`Adopter`], which starts a follower per
//! grandchild: it connects with a resuming header, learns the offset the grandchild holds (its
//! copy so far stays in its temporary file), and replays from there, then the rest of the
//! stream as it arrives, then the trailer with the first sender's digest. The grandchild checks
//! its whole copy against that digest, as before. A grandchild that cannot be reached is
//! adopted in turn (its children are followed); one whose offset the ring no longer holds
//! fails, named so.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::pipe::SpliceFlags;
use teecast_proto::wire::{AckStatus, Header, HostReport, Tree};
use teecast_sys as sys;

use crate::digest::Digest;
use crate::engine::{Abandoned, Consumer};
use crate::recv::Writeback;
use crate::route::Route;
use crate::send::{self, Delivered, DestFailure, DestSink, Progress, SendOptions};

/// The ring's default size: the bytes a parent can replay to an adopted child.
pub const DEFAULT_RING: usize = 64 << 20;

/// The ring's unit: bytes are kept, replayed and dropped a block at a time.
const BLOCK: usize = 1 << 20;

/// The last bytes of a stream, for replay: at most its capacity, less while a follower still
/// needs older bytes (then the writer waits, as for a slow destination).
pub(crate) struct Ring {
    capacity: usize,
    state: Mutex<RingState>,
    changed: Condvar,
}

#[derive(Default)]
struct RingState {
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
    ended: Option<Result<(u64, Digest), String>>,
    /// A dropped block, to fill again.
    spare: Option<Vec<u8>>,
}

/// What a follower gets at an offset of what it replays.
enum Held {
    /// These bytes of this block come next.
    Bytes(Arc<Vec<u8>>, Range<usize>),
    /// Nothing yet.
    Wait,
    /// The stream ended after this many bytes with this digest.
    End(u64, Digest),
    /// The ring no longer holds the offset: it starts here.
    Gone(u64),
    /// The ring stopped (the transfer was abandoned).
    Failed(String),
}

impl Ring {
    /// A ring of `capacity` bytes (at least two blocks).
    pub(crate) fn new(capacity: usize) -> Ring {
        Ring {
            capacity: capacity.max(2 * BLOCK),
            state: Mutex::new(RingState::default()),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RingState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `block`, dropping the oldest blocks no follower needs to stay within capacity
    /// (waiting while one does); returns a block to fill next (a dropped one, or none).
    fn push(&self, block: Vec<u8>) -> Vec<u8> {
        let mut state = self.lock();
        while state.held + block.len() > self.capacity && !state.blocks.is_empty() {
            let first_end = state.start + state.blocks[0].len() as u64;
            if state.pins.iter().any(|&(_, offset)| offset < first_end) {
                state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
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

    fn end(&self, ended: Result<(u64, Digest), String>) {
        self.lock().ended.get_or_insert(ended);
        self.changed.notify_all();
    }

    /// Holds everything from the oldest byte still here until the follower says where it
    /// goes on from.
    fn pin(self: &Arc<Ring>) -> Pin {
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
    fn at(&self, offset: u64, wait: Duration) -> Held {
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
fn look_or_wait<T>(
    m: &Mutex<T>,
    changed: &Condvar,
    wait: Duration,
    mut look: impl FnMut(&T) -> Option<Held>,
) -> Held {
    let mut state = lock(m);
    if let Some(held) = look(&state) {
        return held;
    }
    state = changed
        .wait_timeout(state, wait)
        .unwrap_or_else(|p| p.into_inner())
        .0;
    look(&state).unwrap_or(Held::Wait)
}

/// What a follower past the last byte gets: the end, once it came.
fn ended(ended: &Option<Result<(u64, Digest), String>>) -> Option<Held> {
    match ended {
        Some(Ok((length, digest))) => Some(Held::End(*length, digest.clone())),
        Some(Err(why)) => Some(Held::Failed(why.clone())),
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
struct CopyState {
    written: u64,
    ended: Option<Result<(u64, Digest), String>>,
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
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wrote(&self, n: u64) {
        self.lock().written += n;
        self.changed.notify_all();
    }

    fn end(&self, ended: Result<(u64, Digest), String>) {
        self.lock().ended.get_or_insert(ended);
        self.changed.notify_all();
    }

    /// The bytes at `offset`, waiting up to `wait` for them.
    fn at(&self, offset: u64, wait: Duration) -> Held {
        look_or_wait(&self.state, &self.changed, wait, |state| {
            if offset >= state.written {
                return ended(&state.ended);
            }
            let len = (state.written - offset).min(BLOCK as u64) as usize;
            let mut buf = vec![0; len];
            Some(match sys::pread(self.file.as_fd(), &mut buf, offset) {
                Ok(n) if n > 0 => Held::Bytes(Arc::new(buf), 0..n),
                Ok(_) => Held::Failed("the stored copy is shorter than written".into()),
                Err(e) => Held::Failed(format!("reading the stored copy: {e}")),
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
    fn at(&self, offset: u64, wait: Duration) -> Held {
        match self {
            Replay::Ring(r) => r.at(offset, wait),
            Replay::Stored(c) => c.at(offset, wait),
        }
    }

    /// A claim on the ring's bytes from its oldest on (a stored copy drops nothing).
    fn pin(&self) -> Option<Pin> {
        match self {
            Replay::Ring(r) => Some(r.pin()),
            Replay::Stored(_) => None,
        }
    }
}

/// A follower's claim on the ring: no byte at or after its offset is dropped.
struct Pin {
    ring: Arc<Ring>,
    id: u64,
}

impl Pin {
    /// The follower needs the bytes from `offset` on; `Err` with the ring's start when it no
    /// longer holds them.
    fn hold(&self, offset: u64) -> Result<(), u64> {
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
pub(crate) struct RingSink {
    ring: Arc<Ring>,
    /// The block being filled, [`BLOCK`] bytes long (zeroed once, when first allocated).
    block: Vec<u8>,
    /// Bytes of `block` filled so far.
    filled: usize,
}

impl RingSink {
    pub(crate) fn new(ring: Arc<Ring>) -> RingSink {
        RingSink {
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

impl Consumer for RingSink {
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
        self.ring.end(Err("the transfer was abandoned".into()));
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

/// Serves the children of this host's failed children (see the module's text).
#[derive(Clone)]
pub(crate) struct Adopter(Arc<Shared>);

struct Shared {
    replay: Replay,
    /// The stream's header as this host sends it on.
    header: Header,
    /// Where the hosts below this one are: only these addresses are contacted.
    route: Arc<Route>,
    /// This host's position (0: the sender).
    me: usize,
    options: SendOptions,
    /// For a relay: the digest its sender announced, passed on.
    announced: Option<Arc<OnceLock<Vec<u8>>>>,
    followed: Mutex<HashSet<usize>>,
    reports: Mutex<Vec<HostReport>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Adopter {
    /// An adopter at position `me` of `header`'s tree, replaying from `replay`.
    pub(crate) fn new(
        replay: Replay,
        header: &Header,
        route: Arc<Route>,
        me: usize,
        options: &SendOptions,
        announced: Option<Arc<OnceLock<Vec<u8>>>>,
    ) -> Adopter {
        Adopter(Arc::new(Shared {
            replay,
            header: header.clone(),
            route,
            me,
            options: options.clone(),
            announced,
            followed: Mutex::new(HashSet::new()),
            reports: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
        }))
    }

    /// The host at `dead` failed: serves each of its children from here.
    pub(crate) fn adopt(&self, dead: usize) {
        let Some(tree) = self.0.header.tree else {
            return;
        };
        for child in Tree::children_of(tree.fanout, dead, self.0.header.route.len()) {
            self.follow(child, dead);
        }
    }

    fn follow(&self, position: usize, dead: usize) {
        let first = lock(&self.0.followed).insert(position);
        if !first {
            return;
        }
        // Pinned now, before the follower connects: nothing it may need is dropped meanwhile.
        let pin = self.0.replay.pin();
        let me = self.clone();
        let started = std::thread::Builder::new()
            .name("teecast-adopt".into())
            .spawn(move || me.serve(position, dead, pin));
        match started {
            Ok(handle) => lock(&self.0.threads).push(handle),
            Err(e) => lock(&self.0.reports).push(HostReport {
                position: u16::try_from(position).unwrap_or(u16::MAX),
                parent: u16::try_from(self.0.me).unwrap_or(u16::MAX),
                status: AckStatus::Unreached,
                bytes: 0,
                message: format!("cannot start a thread to adopt it: {e}"),
            }),
        }
    }

    /// A follower: resumes the host at `position` (a child of `dead`) from the replay.
    fn serve(&self, position: usize, dead: usize, pin: Option<Pin>) {
        let s = &*self.0;
        let mut header = s.header.for_position(position);
        if let Some(t) = &mut header.tree {
            t.resume = true;
        }
        let progress = Progress::new(1);
        let address = &s.header.route[position - 1];
        let mut sink = DestSink::new(address, 0, Some(header), &s.options, &progress)
            .via(&s.route, position)
            .adopting(self, position);
        if let Some(a) = &s.announced {
            sink = sink.announcing(a);
        }
        let outcome = replay(&mut sink, &s.replay, pin.as_ref());
        drop(pin);
        let resumed_at = sink.resumed_at().unwrap_or(0);
        let mut report = send::report_of(position, s.me, &outcome, resumed_at + progress.of(0));
        if outcome.is_ok() {
            let dead = &s.header.route[dead - 1];
            report.message = format!("adopted after {dead} failed; resumed at byte {resumed_at}");
        }
        let mut reports = lock(&s.reports);
        reports.push(report);
        reports.extend(progress.take_reports(0));
    }

    /// Waits for every follower (and those they started); returns what they reported.
    pub(crate) fn finish(self) -> Vec<HostReport> {
        loop {
            let threads = std::mem::take(&mut *lock(&self.0.threads));
            if threads.is_empty() {
                break;
            }
            for t in threads {
                let _ = t.join();
            }
        }
        std::mem::take(&mut *lock(&self.0.reports))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Connects `sink` with its resuming header and sends it the stream from the offset it holds to
/// the end, out of `from` (a ring, held by `pin`).
fn replay(
    sink: &mut DestSink<'_>,
    from: &Replay,
    pin: Option<&Pin>,
) -> Result<Delivered, DestFailure> {
    let result = (|| {
        sink.start()?;
        let mut offset = sink.resumed_at().unwrap_or(0);
        let beyond = |start| DestFailure::BeyondRing { offset, start };
        pin.map_or(Ok(()), |p| p.hold(offset)).map_err(beyond)?;
        let wait = sink.idle_interval().unwrap_or(Duration::from_secs(1));
        loop {
            match from.at(offset, wait) {
                Held::Bytes(block, range) => {
                    let len = range.len() as u64;
                    sink.take_from_buffer(&block[range])?;
                    offset += len;
                    if let Some(p) = pin {
                        let _ = p.hold(offset);
                    }
                }
                Held::Wait => sink.idle()?,
                Held::End(length, digest) => return sink.finish(length, &digest),
                Held::Gone(start) => return Err(DestFailure::BeyondRing { offset, start }),
                Held::Failed(why) => {
                    return Err(DestFailure::Io {
                        op: "replaying",
                        source: io::Error::other(why),
                    });
                }
            }
        }
    })();
    if result.is_err() {
        sink.abort();
    }
    result
}

/// Every host below `me`, one report each, in tree order: the best of those given for it
/// (confirmed over refused over unreached, the later of equals), or, where none was given,
/// unreached because of the first ancestor that failed.
pub(crate) fn complete(
    fanout: u8,
    hosts: usize,
    me: usize,
    reports: &[HostReport],
) -> Vec<HostReport> {
    let rank = |r: &HostReport| match r.status {
        AckStatus::Ok => 2,
        AckStatus::Unreached | AckStatus::Adopted => 0,
        _ => 1,
    };
    let mut out: Vec<HostReport> = Vec::new();
    for d in Tree::descendants_of(fanout, me, hosts) {
        let best = reports
            .iter()
            .filter(|r| usize::from(r.position) == d)
            .max_by_key(|r| rank(r))
            .cloned();
        let report = best.unwrap_or_else(|| {
            let parent = Tree::parent_of(fanout, d);
            let why = out
                .iter()
                .find(|r| usize::from(r.position) == parent)
                .filter(|r| r.status != AckStatus::Ok)
                .map_or_else(
                    || "its relay reported nothing of it".to_string(),
                    |r| match r.message.strip_prefix(FAILED_BEFORE) {
                        Some(_) => r.message.clone(),
                        None => format!("{FAILED_BEFORE}{}", r.message),
                    },
                );
            HostReport {
                position: u16::try_from(d).unwrap_or(u16::MAX),
                parent: u16::try_from(parent).unwrap_or(u16::MAX),
                status: AckStatus::Unreached,
                bytes: 0,
                message: why,
            }
        });
        out.push(report);
    }
    out
}

/// How the report of a host not reached because a relay before it failed begins.
const FAILED_BEFORE: &str = "a relay before it failed: ";

/// Where a stream goes at a host of a tree: its own file, a child, or the ring.
pub(crate) enum Hop<'a> {
    Local(LocalCopy),
    Child(Box<DestSink<'a>>),
    Ring(RingSink),
}

/// A relay's own copy: its pipe spliced into the store's file, telling `stored` (the replay of
/// an adopting relay) how far it got.
pub(crate) struct LocalCopy {
    pub(crate) file: Option<File>,
    pub(crate) stored: Option<Arc<StoredCopy>>,
    pub(crate) writeback: Writeback,
}

pub(crate) enum HopOutcome {
    Local,
    Child(Delivered),
    Ring,
}

impl HopOutcome {
    pub(crate) fn delivered(self) -> Result<Delivered, DestFailure> {
        match self {
            HopOutcome::Child(d) => Ok(d),
            HopOutcome::Local | HopOutcome::Ring => Err(Abandoned::Transfer.into()),
        }
    }
}

pub(crate) enum HopError {
    Local(io::Error),
    Child(DestFailure),
    Ring(RingError),
    Abandoned(Abandoned),
}

impl HopError {
    pub(crate) fn into_dest(self) -> DestFailure {
        match self {
            HopError::Child(d) => d,
            HopError::Abandoned(a) | HopError::Ring(RingError::Abandoned(a)) => {
                DestFailure::Abandoned(a)
            }
            HopError::Local(e) | HopError::Ring(RingError::Io(e)) => DestFailure::Io {
                op: "writing the file",
                source: e,
            },
        }
    }
}

impl From<Abandoned> for HopError {
    fn from(a: Abandoned) -> Self {
        HopError::Abandoned(a)
    }
}

impl Consumer for Hop<'_> {
    type Outcome = HopOutcome;
    type Error = HopError;

    fn start(&mut self) -> Result<(), HopError> {
        match self {
            Hop::Local(_) | Hop::Ring(_) => Ok(()),
            Hop::Child(c) => c.start().map_err(HopError::Child),
        }
    }

    fn take_pipe(&mut self, pipe: BorrowedFd<'_>) -> Result<u64, HopError> {
        match self {
            Hop::Local(LocalCopy {
                file,
                stored,
                writeback,
            }) => {
                let file = file.as_ref().ok_or(Abandoned::Transfer)?;
                let mut total = 0;
                loop {
                    // pipe → file is one copy in the kernel, into the page cache.
                    match sys::splice(pipe, file.as_fd(), 1 << 30, SpliceFlags::MORE) {
                        Ok(0) => return Ok(total),
                        Ok(n) => {
                            total += n as u64;
                            writeback.advance(file.as_fd(), total);
                            if let Some(s) = stored {
                                s.wrote(n as u64);
                            }
                        }
                        Err(e) => return Err(HopError::Local(e)),
                    }
                }
            }
            Hop::Child(c) => c.take_pipe(pipe).map_err(HopError::Child),
            Hop::Ring(r) => r.take_pipe(pipe).map_err(HopError::Ring),
        }
    }

    fn take_from_buffer(&mut self, bytes: &[u8]) -> Result<(), HopError> {
        match self {
            Hop::Local(LocalCopy { file, stored, .. }) => {
                let mut file = file.as_ref().ok_or(Abandoned::Transfer)?;
                io::Write::write_all(&mut file, bytes).map_err(HopError::Local)?;
                if let Some(s) = stored {
                    s.wrote(bytes.len() as u64);
                }
                Ok(())
            }
            Hop::Child(c) => c.take_from_buffer(bytes).map_err(HopError::Child),
            Hop::Ring(r) => r.take_from_buffer(bytes).map_err(HopError::Ring),
        }
    }

    fn take_from_map(
        &mut self,
        map: &sys::FileMap,
        offset: usize,
        len: usize,
    ) -> Result<(), HopError> {
        match self {
            Hop::Child(c) => c.take_from_map(map, offset, len).map_err(HopError::Child),
            Hop::Local(_) | Hop::Ring(_) => Err(Abandoned::NoMapping.into()),
        }
    }

    fn finish(&mut self, length: u64, digest: &Digest) -> Result<HopOutcome, HopError> {
        match self {
            Hop::Local(LocalCopy { stored, .. }) => {
                if let Some(s) = stored {
                    s.end(Ok((length, digest.clone())));
                }
                Ok(HopOutcome::Local)
            }
            Hop::Child(c) => c
                .finish(length, digest)
                .map(HopOutcome::Child)
                .map_err(HopError::Child),
            Hop::Ring(r) => r
                .finish(length, digest)
                .map(|()| HopOutcome::Ring)
                .map_err(HopError::Ring),
        }
    }

    fn abort(&mut self) {
        match self {
            Hop::Local(LocalCopy { file, stored, .. }) => {
                *file = None;
                if let Some(s) = stored {
                    s.end(Err("this host's own copy failed".into()));
                }
            }
            Hop::Child(c) => c.abort(),
            Hop::Ring(r) => r.abort(),
        }
    }

    fn idle_interval(&self) -> Option<Duration> {
        match self {
            Hop::Child(c) => c.idle_interval(),
            Hop::Local(_) | Hop::Ring(_) => None,
        }
    }

    fn idle(&mut self) -> Result<(), HopError> {
        match self {
            Hop::Child(c) => c.idle().map_err(HopError::Child),
            Hop::Local(_) | Hop::Ring(_) => Ok(()),
        }
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
        let ring = Arc::new(Ring::new(2 * BLOCK));
        let mut sink = RingSink::new(ring.clone());
        let data: Vec<u8> = (0..2 * BLOCK + 5).map(|i| (i % 251) as u8).collect();
        sink.take_from_buffer(&data).unwrap();
        sink.finish(data.len() as u64, &digest()).unwrap();
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
        let ring = Arc::new(Ring::new(2 * BLOCK));
        let pin = ring.pin();
        let writer = {
            let ring = ring.clone();
            std::thread::spawn(move || {
                let mut sink = RingSink::new(ring);
                sink.take_from_buffer(&vec![1; 4 * BLOCK]).unwrap();
                sink.finish(4 * BLOCK as u64, &digest()).unwrap();
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
        assert!(matches!(ring.at(0, Duration::ZERO), Held::Bytes(..)));
        assert!(
            matches!(ring.at(offset, Duration::from_millis(50)), Held::Wait),
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

    #[test]
    fn every_host_below_gets_one_report_and_the_best_wins() {
        let r = |position: u16, parent: u16, status| HostReport {
            position,
            parent,
            status,
            bytes: 0,
            message: format!("m{position}"),
        };
        // A chain of 4 under the sender: host 1 died; host 2 was adopted and confirmed
        // (a second, worse report of it loses); nothing was said of 3 and 4.
        let given = [
            r(1, 0, AckStatus::Unreached),
            r(2, 1, AckStatus::Unreached),
            r(2, 0, AckStatus::Ok),
        ];
        let all = complete(1, 4, 0, &given);
        let positions: Vec<u16> = all.iter().map(|r| r.position).collect();
        assert_eq!(positions, [1, 2, 3, 4]);
        assert_eq!(all[1].status, AckStatus::Ok);
        assert_eq!(all[1].parent, 0);
        assert_eq!(all[2].status, AckStatus::Unreached);
        assert_eq!(all[2].message, "its relay reported nothing of it");
        let dead = complete(1, 4, 0, &given[..1]);
        assert_eq!(dead[1].message, "a relay before it failed: m1");
        assert_eq!(dead[3].message, "a relay before it failed: m1");
    }
}

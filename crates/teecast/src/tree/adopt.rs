//! Failover in a relay tree: a parent whose child died, stalled or could not be reached serves
//! that child's children itself, each from the offset it already holds.
//!
//! Every host with children can replay the stream ([`Replay`]): a relay from its own copy as it
//! is written ([`StoredCopy`]); the sender, and a relay that stores no file, from a [`Ring`] of
//! the last bytes, of bounded size, filled as one more consumer of its fan-out ([`RingWriter`]).
//! When a child fails, its [`Destination`] tells the [`Adopter`], which starts a follower per
//! grandchild: it connects with a resuming header, learns the offset the grandchild holds (its
//! copy so far stays in its temporary file), and replays from there, then the rest of the
//! stream as it arrives, then the trailer with the first sender's digest. The grandchild checks
//! its whole copy against that digest, as before. A grandchild that cannot be reached is
//! adopted in turn (its children are followed); one whose offset the ring no longer holds
//! fails, named so.

use std::collections::HashSet;
use std::io;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use teecast_proto::wire::{AckStatus, Header, HostReport, Tree};

use crate::dest::{Delivered, DestFailure, DestOptions, Destination, HeldChildren, Live, Progress};
use crate::engine::Consumer;
use crate::sync::{into_inner, lock};
use crate::tree::report::report_of;
use crate::tree::ring::{Held, Pin, Replay};
use crate::tree::route::Route;
/// Makes where the destination of the host at a position (served from another) tells what it
/// learns.
pub(crate) type LiveFor = Arc<dyn Fn(usize, usize) -> Live + Send + Sync>;

/// What an adopter passes on to the hosts it serves, beyond the stream.
#[derive(Default)]
pub(crate) struct Adopting {
    /// For a relay: the digest its sender announced.
    pub(crate) announced: Option<Arc<OnceLock<Vec<u8>>>>,
    /// For a relay: where its confirmed children's connections are held.
    pub(crate) holding: Option<HeldChildren>,
    /// Where each adopted host's destination tells what it learns.
    pub(crate) live: Option<LiveFor>,
}

/// Serves the children of this host's failed children (see the module's text).
#[derive(Clone)]
pub(crate) struct Adopter(Arc<Shared>);

pub(crate) struct Shared {
    replay: Replay,
    /// The stream's header as this host sends it on.
    header: Header,
    /// Where the hosts below this one are: only these addresses are contacted.
    route: Arc<Route>,
    /// This host's position (0: the sender).
    me: usize,
    options: DestOptions,
    /// For a relay: where its confirmed children's connections are held.
    holding: Option<HeldChildren>,
    /// Where the destination of an adopted host (its position, and this host's) tells what it
    /// learns while it runs.
    live: Option<LiveFor>,
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
        options: &DestOptions,
        with: Adopting,
    ) -> Adopter {
        let Adopting {
            announced,
            holding,
            live,
        } = with;
        Adopter(Arc::new(Shared {
            replay,
            header: header.clone(),
            route,
            me,
            options: options.clone(),
            holding,
            live,
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
        let below = Mutex::default();
        let address = &s.header.route[position - 1];
        let mut dest = Destination::new(address, 0, Some(header), &s.options, &progress)
            .dialing(move |timeout| s.route.connect(position, timeout))
            .reporting_to(&below)
            .on_orphaned(move || self.adopt(position));
        if let Some(a) = &s.announced {
            dest = dest.announcing(a);
        }
        if let Some(h) = &s.holding {
            dest = dest.holding(h.clone());
        }
        if let Some(live) = &s.live {
            dest = dest.live(live(position, s.me));
        }
        let outcome = replay(&mut dest, &s.replay, pin.as_ref());
        drop(pin);
        let resumed_at = dest.resumed_at().unwrap_or(0);
        drop(dest);
        let mut report = report_of(position, s.me, &outcome, resumed_at + progress.of(0));
        if outcome.is_ok() {
            let dead = &s.header.route[dead - 1];
            report.message = format!("adopted after {dead} failed; resumed at byte {resumed_at}");
        }
        let mut reports = lock(&s.reports);
        reports.push(report);
        reports.extend(into_inner(below));
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

/// Connects `dest` with its resuming header and sends it the stream from the offset it holds to
/// the end, out of `from` (a ring, held by `pin`).
pub(crate) fn replay(
    dest: &mut Destination<'_>,
    from: &Replay,
    pin: Option<&Pin>,
) -> Result<Delivered, DestFailure> {
    let result = (|| {
        dest.start()?;
        let mut offset = dest.resumed_at().unwrap_or(0);
        let beyond = |start| DestFailure::BeyondRing { offset, start };
        pin.map_or(Ok(()), |p| p.hold(offset)).map_err(beyond)?;
        let wait = dest.idle_interval().unwrap_or(Duration::from_secs(1));
        loop {
            match from.at(offset, wait) {
                Held::Bytes(block, range) => {
                    let len = range.len() as u64;
                    dest.take_from_buffer(&block[range])?;
                    offset += len;
                    if let Some(p) = pin {
                        let _ = p.hold(offset);
                    }
                }
                Held::Wait => dest.idle()?,
                Held::End(length, digest) => return dest.finish(length, &digest),
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
        dest.abort();
    }
    result
}

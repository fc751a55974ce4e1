//! The data paths: how the source becomes stable bytes, and how those bytes reach every consumer.

use std::fmt;
use std::str::FromStr;

use crate::probe::{self, KernelFacts};
use crate::source::Source;

/// A data path, chosen with `--strategy` (the table in README.md, "How it works").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Pick the fastest stable path for the case (see [`Strategy::resolve`]).
    Auto,
    /// `read()` into a private buffer (the one copy), `write()` it to every destination.
    ReadWrite,
    /// `write()` to the socket straight from an `mmap` of the file. One destination only.
    MmapWrite,
    /// `read()` into fresh pages, `vmsplice` them into a pipe, `tee` and `splice` onwards.
    Vmsplice,
    /// `write()` from an `mmap` into a pipe (the one copy), `tee` and `splice` onwards.
    MmapPipe,
    /// `read()` into a reused buffer, `write()` it into a pipe, `tee` and `splice` onwards.
    ReadPipe,
    /// `splice` from the file: no CPU copy, not stable.
    ZeroCopy,
    /// `splice` from an `O_DIRECT` descriptor: the kernel reads into private pages.
    Direct,
}

impl Strategy {
    /// Every concrete strategy (not `Auto`).
    pub const CONCRETE: [Strategy; 7] = [
        Self::ReadWrite,
        Self::MmapWrite,
        Self::Vmsplice,
        Self::MmapPipe,
        Self::ReadPipe,
        Self::ZeroCopy,
        Self::Direct,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::ReadWrite => "readwrite",
            Self::MmapWrite => "mmap-write",
            Self::Vmsplice => "vmsplice",
            Self::MmapPipe => "mmap-pipe",
            Self::ReadPipe => "read-pipe",
            Self::ZeroCopy => "zerocopy",
            Self::Direct => "direct",
        }
    }

    /// Whether every consumer of this path sees the same bytes whatever happens to the source.
    ///
    /// `mmap-write` copies per socket, at a different moment for each consumer, so its digest can
    /// disagree with what was sent; `zerocopy` sends page-cache pages by reference.
    pub fn is_stable(self) -> bool {
        !matches!(self, Self::MmapWrite | Self::ZeroCopy)
    }

    /// Whether the path moves the data through pipes with `tee` (rather than buffers).
    pub fn uses_pipes(self) -> bool {
        matches!(
            self,
            Self::Vmsplice | Self::MmapPipe | Self::ReadPipe | Self::ZeroCopy | Self::Direct
        )
    }

    /// Whether the path needs a regular file (it maps or seeks the source).
    pub fn needs_regular_file(self) -> bool {
        matches!(self, Self::MmapWrite | Self::MmapPipe | Self::Direct)
    }

    /// The concrete path for `case`: `auto` follows the measured rule, other paths are kept.
    ///
    /// The rule, from the benchmark (BENCHMARKS.md: 2 cores, loopback, 1 to 8 destinations):
    /// below [`SHARED_COPY_FROM`] destinations, `readwrite`, whose copy per destination cost
    /// no more than the pipe paths' page references (which also cost the receivers more);
    /// from there on, one copy shared through pipes: `direct` for a file on tmpfs where
    /// `O_DIRECT` splice reads into private pages (the kernel's one copy, into fresh pages),
    /// `read-pipe` for anything else.
    ///
    /// `readwrite` and `read-pipe` copy with `read()`/`write()`, stable on any kernel; `direct`
    /// is chosen only where the probe of [`Case::of`] saw private pages.
    pub fn resolve(self, case: Case) -> Strategy {
        match self {
            Self::Auto if case.destinations < SHARED_COPY_FROM => Self::ReadWrite,
            Self::Auto if case.tmpfs_direct => Self::Direct,
            Self::Auto => Self::ReadPipe,
            other => other,
        }
    }

    /// The path of an encrypted stream, which is sealed in a buffer of plaintext read with
    /// `read()` (engine::fan_out_sealed): `readwrite`, the sealed buffer written to every
    /// socket, when asked and for `auto`; `read-pipe`, the sealed buffer written into the pipe
    /// that is `tee`d to every socket, for every other path asked. Those need the source's pages
    /// (or a mapping of them) to go to the sockets unread, where no sealing can happen. `auto`
    /// does not switch to the pipe at [`SHARED_COPY_FROM`] destinations as it does for
    /// plaintext: with the AEAD pass on the same thread, `readwrite` measured faster at every N
    /// from 1 to 8 (BENCHMARKS.md, "Encryption: end to end"; the pipe path then carries no
    /// zero-copy read to make up for its machinery).
    pub fn sealing(self) -> Strategy {
        match self {
            Self::Auto | Self::ReadWrite => Self::ReadWrite,
            _ => Self::ReadPipe,
        }
    }

    /// The concrete path for sending `source` to `destinations`: `auto` looks at the case (which
    /// may run the probe of [`Case::of`]); other paths are kept as asked, without looking.
    pub fn for_transfer(self, source: &Source, destinations: usize) -> Strategy {
        match self {
            Self::Auto => self.resolve(Case::of(source, destinations)),
            other => other,
        }
    }

    /// The concrete paths that are stable on the kernel and filesystem `facts` describe.
    pub fn stable_on(facts: &KernelFacts) -> Vec<Strategy> {
        Self::CONCRETE
            .into_iter()
            .filter(|s| s.is_stable_on(facts))
            .collect()
    }

    /// Whether this path is stable on the kernel and filesystem `facts` describe.
    ///
    /// The buffer and pipe-write paths copy with `read`/`write` and are stable everywhere;
    /// `vmsplice` is too, whether the kernel shares its pages or copies them, because every chunk
    /// uses fresh pages that are never written again (docs/KERNEL.md §2). `zerocopy` is stable only
    /// where the probe saw file splice copy (the 2026 proposal, docs/KERNEL.md §5), `direct`
    /// only where it saw `O_DIRECT` splice read into private pages (§1.1). `mmap-write` copies
    /// per socket and is never stable across consumers.
    pub fn is_stable_on(self, facts: &KernelFacts) -> bool {
        match self {
            Self::ZeroCopy => facts.file_splice_copies(),
            Self::Direct => facts.direct_splice_is_private(),
            Self::MmapWrite => false,
            _ => true,
        }
    }

    /// What `auto` picks on the filesystem `facts` describe, as `(from, path)` steps: `path` from
    /// `from` destinations on, up to the next step. `teecast probe` reports these.
    pub fn auto_steps(facts: &KernelFacts) -> Vec<(usize, Strategy)> {
        let mut steps: Vec<(usize, Strategy)> = Vec::new();
        for n in 1..=SHARED_COPY_FROM {
            let s = Self::Auto.resolve(Case::probed(facts, n));
            if steps.last().is_none_or(|&(_, last)| last != s) {
                steps.push((n, s));
            }
        }
        steps
    }
}

/// From this many destinations `auto` shares one copy through pipes (BENCHMARKS.md).
pub const SHARED_COPY_FROM: usize = 6;

/// What the `auto` rule looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Case {
    /// Destinations the stream goes to.
    pub destinations: usize,
    /// The source is a regular file on tmpfs, and `O_DIRECT` splice from tmpfs reads into
    /// private pages (probed).
    pub tmpfs_direct: bool,
}

impl Case {
    /// The case of sending `source` to `destinations`; probes `O_DIRECT` on tmpfs (in memory,
    /// microseconds) only when the answer could change the choice.
    pub fn of(source: &Source, destinations: usize) -> Case {
        let tmpfs_direct = destinations >= SHARED_COPY_FROM
            && source.len().is_some()
            && teecast_sys::is_tmpfs(source.fd()).unwrap_or(false)
            && probe::tmpfs_direct_splice_is_private();
        Case {
            destinations,
            tmpfs_direct,
        }
    }

    /// The case of sending a regular file on the filesystem `facts` describe (what `teecast
    /// probe` found) to `destinations`. The rule then never picks a path the probe found
    /// unstable: `direct` only where it saw private pages, and otherwise paths that copy with
    /// `read()`/`write()`, stable on any kernel.
    pub fn probed(facts: &KernelFacts, destinations: usize) -> Case {
        Case {
            destinations,
            tmpfs_direct: facts.filesystem == "tmpfs" && facts.direct_splice_is_private(),
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = UnknownStrategy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        std::iter::once(Self::Auto)
            .chain(Self::CONCRETE)
            .find(|st| st.name() == s)
            .ok_or_else(|| UnknownStrategy(s.to_string()))
    }
}

/// A strategy name that is none of `auto` and [`Strategy::CONCRETE`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown strategy {0:?}: choose auto, readwrite, mmap-write, vmsplice, mmap-pipe, read-pipe, zerocopy or direct"
)]
pub struct UnknownStrategy(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_auto_is_stable() {
        for s in Strategy::CONCRETE {
            assert_eq!(s.name().parse::<Strategy>(), Ok(s));
        }
        for destinations in 0..=16 {
            for tmpfs_direct in [false, true] {
                let case = Case {
                    destinations,
                    tmpfs_direct,
                };
                assert!(Strategy::Auto.resolve(case).is_stable(), "{case:?}");
            }
        }
        assert!("splice".parse::<Strategy>().is_err());
    }

    #[test]
    fn auto_with_facts_never_picks_a_path_found_unstable() {
        let worst = KernelFacts::assume_worst(std::path::Path::new("/"));
        let mut copying = worst.clone();
        copying.splice_shares_page_cache = Ok(false);
        copying.o_direct_splice_private = Ok(Some(true));
        let mut tmpfs_worst = worst.clone();
        tmpfs_worst.filesystem = "tmpfs".into();
        let mut tmpfs_private = copying.clone();
        tmpfs_private.filesystem = "tmpfs".into();
        for facts in [&worst, &copying, &tmpfs_worst, &tmpfs_private] {
            for n in 1..=16 {
                let s = Strategy::Auto.resolve(Case::probed(facts, n));
                assert!(s.is_stable_on(facts), "{s} at {n}");
            }
        }
        assert!(!Strategy::ZeroCopy.is_stable_on(&worst));
        assert!(Strategy::ZeroCopy.is_stable_on(&copying));
        let steps = |f: &KernelFacts| Strategy::auto_steps(f);
        use Strategy::{Direct, ReadPipe, ReadWrite};
        let from = SHARED_COPY_FROM;
        assert_eq!(steps(&worst), [(1, ReadWrite), (from, ReadPipe)]);
        assert_eq!(steps(&copying), [(1, ReadWrite), (from, ReadPipe)]);
        assert_eq!(steps(&tmpfs_worst), [(1, ReadWrite), (from, ReadPipe)]);
        assert_eq!(steps(&tmpfs_private), [(1, ReadWrite), (from, Direct)]);
        assert_eq!(
            Strategy::ZeroCopy.resolve(Case::probed(&worst, 1)),
            Strategy::ZeroCopy,
            "explicit choices are kept"
        );
    }

    #[test]
    fn auto_with_probed_facts_is_stable_here() {
        let dir = std::env::temp_dir();
        let facts = crate::probe::probe(&dir).unwrap();
        for n in 1..=16 {
            assert!(
                Strategy::Auto
                    .resolve(Case::probed(&facts, n))
                    .is_stable_on(&facts)
            );
        }
    }

    #[test]
    fn case_of_a_tmpfs_file_agrees_with_the_probe_of_its_directory() {
        let dir = tempfile::tempdir_in("/dev/shm").expect("this test needs a tmpfs at /dev/shm");
        let path = dir.path().join("f");
        std::fs::write(&path, [7u8; 8192]).unwrap();
        let source = Source::open(&path).unwrap();
        let facts = crate::probe::probe(dir.path()).unwrap();
        assert_eq!(facts.filesystem, "tmpfs");
        for n in [1, 2, SHARED_COPY_FROM - 1, SHARED_COPY_FROM, 8] {
            assert_eq!(
                Strategy::Auto.for_transfer(&source, n),
                Strategy::Auto.resolve(Case::probed(&facts, n)),
                "{n} destinations"
            );
        }
        // A stream is never given a path that needs a regular file.
        let stdin = Source::stdin().unwrap();
        assert_ne!(Strategy::Auto.for_transfer(&stdin, 8), Strategy::Direct);
    }
}

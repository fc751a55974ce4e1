//! The data paths: how the source becomes stable bytes, and how those bytes reach every consumer.

use std::fmt;
use std::str::FromStr;

use crate::probe::KernelFacts;

/// A data path, chosen with `--strategy` (see DESIGN.md, "Data paths").
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

    /// The concrete path for a transfer, whatever the number of destinations.
    ///
    /// The rule, from the benchmark (BENCHMARKS.md: 2 cores, loopback, 1 to 8 destinations): a
    /// pooled buffer filled by `read()` and written to each destination by its own thread was the
    /// fastest stable path at every N measured, ahead of every pipe path (whose spliced pages also
    /// cost the receivers twice the CPU). Its stability rests on `read()` copying, which no kernel
    /// change the probe looks for alters, so the choice needs no probe at send time.
    pub fn resolve(self) -> Strategy {
        match self {
            Self::Auto => Self::ReadWrite,
            other => other,
        }
    }

    /// Whether this path is stable on the kernel and filesystem `facts` describe.
    ///
    /// The buffer and pipe-write paths copy with `read`/`write` and are stable everywhere;
    /// `vmsplice` is too, whether the kernel shares its pages or copies them, because every chunk
    /// uses fresh pages that are never written again (KERNEL.md §2). `zerocopy` is stable only
    /// where the probe saw file splice copy (the 2026 proposal, KERNEL.md status flag), `direct`
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

    /// The concrete path given what the probe measured: the
    /// measured choice of [`Strategy::resolve`], never a path the probe found unstable (then
    /// `readwrite`, which copies with `read()` and is stable on any kernel). Explicit strategies
    /// are returned as asked. `teecast probe` reports what this rule picks for a filesystem.
    pub fn resolve_with(self, facts: &KernelFacts) -> Strategy {
        match self.resolve() {
            measured if self == Self::Auto && !measured.is_stable_on(facts) => Self::ReadWrite,
            measured => measured,
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        std::iter::once(Self::Auto)
            .chain(Self::CONCRETE)
            .find(|st| st.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown strategy '{s}': choose auto, readwrite, mmap-write, vmsplice, mmap-pipe, read-pipe, zerocopy or direct"
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_auto_is_stable() {
        for s in Strategy::CONCRETE {
            assert_eq!(s.name().parse::<Strategy>(), Ok(s));
        }
        assert!(Strategy::Auto.resolve().is_stable());
        assert!("splice".parse::<Strategy>().is_err());
    }

    #[test]
    fn auto_with_facts_never_picks_a_path_found_unstable() {
        let worst = KernelFacts::assume_worst(std::path::Path::new("/"));
        let mut copying = worst.clone();
        copying.splice_shares_page_cache = Ok(false);
        copying.o_direct_splice_private = Ok(Some(true));
        for facts in [&worst, &copying] {
            let s = Strategy::Auto.resolve_with(facts);
            assert!(s.is_stable_on(facts), "{s}");
        }
        assert!(!Strategy::ZeroCopy.is_stable_on(&worst));
        assert!(Strategy::ZeroCopy.is_stable_on(&copying));
        assert_eq!(Strategy::Auto.resolve_with(&worst), Strategy::ReadWrite);
        assert_eq!(Strategy::Auto.resolve_with(&copying), Strategy::ReadWrite);
        assert_eq!(
            Strategy::ZeroCopy.resolve_with(&worst),
            Strategy::ZeroCopy,
            "explicit choices are kept"
        );
    }

    #[test]
    fn auto_with_probed_facts_is_stable_here() {
        let dir = std::env::temp_dir();
        let facts = crate::probe::probe(&dir).unwrap();
        assert!(Strategy::Auto.resolve_with(&facts).is_stable_on(&facts));
    }
}

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

    /// The concrete path for a transfer to `destinations` consumers.
    ///
    /// The rule (measured on 2 cores, DESIGN.md "What we measured"): a private buffer written to
    /// each destination by its own thread wins up to 3 destinations; from 4 on, one shared copy
    /// in a pipe, tee'd to each destination, costs less per destination than a copy each.
    pub fn resolve(self, destinations: usize) -> Strategy {
        match self {
            Self::Auto if destinations <= 3 => Self::ReadWrite,
            Self::Auto => Self::ReadPipe,
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

    /// The concrete path for `destinations` consumers, given what the probe measured.
    ///
    /// The rule: the measured choice of [`Strategy::resolve`] (it copies with `read`, so it is
    /// stable on any kernel), except that where the probe found that splice from a file *copies*
    /// into private pages, `zerocopy` is the read-pipe path done inside the kernel — one copy, no
    /// user buffer, stable — and replaces `read-pipe`. A path the probe found unstable is never
    /// returned for `Auto`; explicit strategies are returned as asked.
    ///
    /// `teecast send` does not probe (it uses [`Strategy::resolve`], whose choices are stable on
    /// every kernel); `teecast probe` reports what this rule picks for the probed filesystem.
    pub fn resolve_with(self, destinations: usize, facts: &KernelFacts) -> Strategy {
        let measured = self.resolve(destinations);
        match self {
            Self::Auto if measured == Self::ReadPipe && facts.file_splice_copies() => {
                Self::ZeroCopy
            }
            Self::Auto if !measured.is_stable_on(facts) => Self::ReadWrite,
            _ => measured,
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
        for n in 1..=16 {
            assert!(Strategy::Auto.resolve(n).is_stable());
        }
        assert!("splice".parse::<Strategy>().is_err());
    }

    #[test]
    fn auto_with_facts_never_picks_a_path_found_unstable() {
        let worst = KernelFacts::assume_worst(std::path::Path::new("/"));
        let mut copying = worst.clone();
        copying.splice_shares_page_cache = Ok(false);
        copying.o_direct_splice_private = Ok(Some(true));
        for facts in [&worst, &copying] {
            for n in 1..=16 {
                let s = Strategy::Auto.resolve_with(n, facts);
                assert!(s.is_stable_on(facts), "{s} for {n} destinations");
            }
        }
        assert!(!Strategy::ZeroCopy.is_stable_on(&worst));
        assert!(Strategy::ZeroCopy.is_stable_on(&copying));
        assert_eq!(Strategy::Auto.resolve_with(8, &worst), Strategy::ReadPipe);
        assert_eq!(Strategy::Auto.resolve_with(8, &copying), Strategy::ZeroCopy);
        assert_eq!(
            Strategy::Auto.resolve_with(2, &copying),
            Strategy::ReadWrite
        );
        assert_eq!(
            Strategy::ZeroCopy.resolve_with(2, &worst),
            Strategy::ZeroCopy,
            "explicit choices are kept"
        );
    }

    #[test]
    fn auto_with_probed_facts_is_stable_here() {
        let dir = std::env::temp_dir();
        let facts = crate::probe::probe(&dir).unwrap();
        for n in 1..=8 {
            assert!(Strategy::Auto.resolve_with(n, &facts).is_stable_on(&facts));
        }
    }
}

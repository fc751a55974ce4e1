//! The data paths: how the source becomes stable bytes, and how those bytes reach every consumer.

use std::fmt;
use std::str::FromStr;

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
}

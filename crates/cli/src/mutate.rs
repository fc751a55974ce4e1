//! A concurrent writer: changes a file while teecast sends it, to test what "stable" promises.
//!
//! The torture tests, the soak and `teecast demo --mutate` run one of these against the source of
//! a transfer. [`Mutation::Rewrite`] keeps overwriting random regions in place with `pwrite` (the
//! case that breaks zero-copy `splice`, docs/KERNEL.md §3); [`Mutation::Grow`] keeps appending;
//! [`Mutation::Shrink`] and [`Mutation::Truncate`] cut the file once (the truncation hazard of
//! docs/KERNEL.md §3). The bytes come from a seeded xorshift generator, so a run can be repeated.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What the writer does to the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Overwrite random regions (random offsets, 1 B to 64 KiB) in place, without changing the
    /// length, until stopped.
    Rewrite,
    /// Append random blocks until stopped.
    Grow,
    /// Truncate the file to half its length, once.
    Shrink,
    /// Truncate the file to [`TRUNCATED_LEN`] bytes, once.
    Truncate,
}

/// The length [`Mutation::Truncate`] leaves.
pub const TRUNCATED_LEN: u64 = 4096;

/// Largest region one rewrite or append touches.
const MAX_REGION: usize = 64 * 1024;

impl Mutation {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rewrite => "rewrite",
            Self::Grow => "grow",
            Self::Shrink => "shrink",
            Self::Truncate => "truncate",
        }
    }
}

impl fmt::Display for Mutation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mutation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Rewrite, Self::Grow, Self::Shrink, Self::Truncate]
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                format!("unknown mutation '{s}': choose rewrite, grow, shrink or truncate")
            })
    }
}

/// When the writer stops: whichever limit comes first, or when the caller's stop flag is set.
#[derive(Clone, Copy, Debug, Default)]
pub struct MutateLimits {
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Stop after this many writes (rewrites or appends).
    pub count: Option<u64>,
}

/// What the writer did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MutateReport {
    /// Writes (`pwrite` calls) or truncations made.
    pub operations: u64,
    /// Bytes written.
    pub bytes: u64,
    /// The file's length at the end.
    pub final_len: u64,
}

/// Changes the file at `path` as `mutation` says, until `limits` or `stop` end it.
///
/// `started` is called once, after the file is open and before the first change, so a caller can
/// tell others the writer is running. Rewrite and Grow run until a limit is reached or `stop`
/// becomes true (with no limit and no stop they run forever); Shrink and Truncate cut the file
/// once and return.
pub fn run(
    path: &Path,
    mutation: Mutation,
    seed: u64,
    limits: MutateLimits,
    stop: &AtomicBool,
    started: impl FnOnce(),
) -> io::Result<MutateReport> {
    let file = OpenOptions::new().write(true).open(path)?;
    let mut rng = XorShift::new(seed);
    let mut report = MutateReport::default();
    let begun = Instant::now();
    started();
    match mutation {
        Mutation::Shrink | Mutation::Truncate => {
            let len = file.metadata()?.len();
            let to = if mutation == Mutation::Shrink {
                len / 2
            } else {
                len.min(TRUNCATED_LEN)
            };
            file.set_len(to)?;
            report.operations = 1;
        }
        Mutation::Rewrite | Mutation::Grow => {
            let mut buf = vec![0u8; MAX_REGION];
            let done = |report: &MutateReport| {
                stop.load(Ordering::Relaxed)
                    || limits.count.is_some_and(|c| report.operations >= c)
                    || limits.duration.is_some_and(|d| begun.elapsed() >= d)
            };
            while !done(&report) {
                let len = file.metadata()?.len();
                let region = 1 + (rng.next_u64() % MAX_REGION as u64) as usize;
                rng.fill(&mut buf[..region]);
                let offset = match mutation {
                    Mutation::Grow => len,
                    _ if len == 0 => 0,
                    _ => rng.next_u64() % len,
                };
                // Rewrite stays inside the file: it changes bytes, never the length.
                let region = match mutation {
                    Mutation::Rewrite => {
                        region.min(usize::try_from(len - offset.min(len)).unwrap_or(region))
                    }
                    _ => region,
                };
                if region > 0 {
                    write_all_at(&file, &buf[..region], offset)?;
                }
                report.operations += 1;
                report.bytes += region as u64;
            }
        }
    }
    report.final_len = file.metadata()?.len();
    Ok(report)
}

fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        let n = file.write_at(buf, offset)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}

/// xorshift64*: fast, seeded, good enough to make every rewrite differ from what it replaces.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from `seed` (any value; 0 is remapped).
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut words = buf.chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = words.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_of(len: usize) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&vec![0u8; len]).unwrap();
        f
    }

    #[test]
    fn rewrite_changes_bytes_but_not_the_length() {
        let f = file_of(256 * 1024);
        let never = AtomicBool::new(false);
        let mut started = false;
        let limits = MutateLimits {
            count: Some(50),
            duration: None,
        };
        let r = run(f.path(), Mutation::Rewrite, 7, limits, &never, || {
            started = true
        })
        .unwrap();
        assert!(started);
        assert_eq!(r.operations, 50);
        assert_eq!(r.final_len, 256 * 1024);
        let data = std::fs::read(f.path()).unwrap();
        assert!(data.iter().any(|&b| b != 0));
    }

    #[test]
    fn grow_appends_and_cuts_truncate() {
        let f = file_of(8192);
        let never = AtomicBool::new(false);
        let limits = MutateLimits {
            count: Some(3),
            duration: None,
        };
        let r = run(f.path(), Mutation::Grow, 1, limits, &never, || {}).unwrap();
        assert_eq!(r.final_len, 8192 + r.bytes);
        assert!(r.bytes >= 3);
        let grown = r.final_len;
        let r = run(f.path(), Mutation::Shrink, 1, limits, &never, || {}).unwrap();
        assert_eq!(r.final_len, grown / 2);
        let r = run(f.path(), Mutation::Truncate, 1, limits, &never, || {}).unwrap();
        assert_eq!(r.final_len, TRUNCATED_LEN);
    }

    #[test]
    fn stop_flag_ends_an_unlimited_rewrite() {
        let f = file_of(4096);
        let stop = AtomicBool::new(true);
        let r = run(
            f.path(),
            Mutation::Rewrite,
            3,
            MutateLimits::default(),
            &stop,
            || {},
        )
        .unwrap();
        assert_eq!(r.operations, 0);
    }

    #[test]
    fn names_round_trip() {
        for m in [
            Mutation::Rewrite,
            Mutation::Grow,
            Mutation::Shrink,
            Mutation::Truncate,
        ] {
            assert_eq!(m.name().parse::<Mutation>(), Ok(m));
        }
        assert!("append".parse::<Mutation>().is_err());
    }
}

//! A consumer of your own that only wants bytes, fed by the engine's fan-out: it counts the bytes
//! it is given and keeps a 64-bit FNV-1a checksum of them (it implements `take_from_buffer`; the
//! engine's default `take_pipe` feeds it on the pipe paths). Two instances run side by side, on a buffer path and on a
//! pipe path, and must agree with each other and with a direct read of the file.
//!
//! Run with `cargo run -p teecast --example custom_consumer`; it exits 0 only if every check
//! holds.

use std::error::Error;
use std::io;

use teecast::digest::{Digest, DigestAlgorithm, Hasher};
use teecast::engine::{Abandoned, Consumer, FanoutConfig, fan_out};
use teecast::source::Source;
use teecast::strategy::Strategy;

/// 64-bit FNV-1a, fed in pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fnv1a(u64);

impl Fnv1a {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Fnv1a {
        Fnv1a(Self::OFFSET)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(Self::PRIME);
        }
    }
}

/// What one consumer saw.
#[derive(Debug, PartialEq, Eq)]
struct Tally {
    bytes: u64,
    fnv: Fnv1a,
    /// The engine's digest, handed to every consumer at the end.
    engine_digest: Digest,
}

/// Why the consumer failed: the engine's reasons, or a count that does not match.
#[derive(Debug)]
enum TallyError {
    Abandoned(Abandoned),
    /// The engine announced another length than the consumer counted.
    Length {
        counted: u64,
        announced: u64,
    },
}

impl std::fmt::Display for TallyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TallyError::Abandoned(a) => write!(f, "{a}"),
            TallyError::Length { counted, announced } => {
                write!(f, "counted {counted} bytes, the stream had {announced}")
            }
        }
    }
}

impl Error for TallyError {}

// The engine requires every consumer's error to convert from its own reasons.
impl From<Abandoned> for TallyError {
    fn from(a: Abandoned) -> Self {
        TallyError::Abandoned(a)
    }
}

/// Counts and checksums the stream.
struct Tallier {
    bytes: u64,
    fnv: Fnv1a,
}

impl Tallier {
    fn new() -> Tallier {
        Tallier {
            bytes: 0,
            fnv: Fnv1a::new(),
        }
    }

    fn take(&mut self, bytes: &[u8]) {
        self.bytes += bytes.len() as u64;
        self.fnv.update(bytes);
    }
}

impl Consumer for Tallier {
    type Outcome = Tally;
    type Error = TallyError;

    // Only bytes are wanted: on the buffer paths each buffer is shared, read-only, by every
    // consumer; on the pipe paths the engine's default `take_pipe` reads this consumer's pipe
    // into a buffer and hands it here.
    fn take_from_buffer(&mut self, bytes: &[u8]) -> Result<(), TallyError> {
        self.take(bytes);
        Ok(())
    }

    fn finish(&mut self, length: u64, digest: &Digest) -> Result<Tally, TallyError> {
        if length != self.bytes {
            return Err(TallyError::Length {
                counted: self.bytes,
                announced: length,
            });
        }
        Ok(Tally {
            bytes: self.bytes,
            fnv: self.fnv,
            engine_digest: digest.clone(),
        })
    }

    // Nothing to clean up: no files, no connections.
    fn abort(&mut self) {}
}

fn main() -> Result<(), Box<dyn Error>> {
    // A file of 3 MiB and a bit, so the last chunk is a short one.
    let mut file = tempfile::NamedTempFile::new()?;
    let data: Vec<u8> = (0..(3u32 << 20) + 12_345)
        .map(|i| (i ^ (i >> 7)).wrapping_mul(31) as u8)
        .collect();
    io::Write::write_all(&mut file, &data)?;

    // The reference: a direct read of the file, through the same checksum and the same digest.
    let direct = std::fs::read(file.path())?;
    let mut want_fnv = Fnv1a::new();
    want_fnv.update(&direct);
    let mut hasher = Hasher::new(DigestAlgorithm::Xxh3_128);
    hasher.update(&direct);
    let want_digest = hasher.finish();
    println!(
        "direct read: {} bytes, fnv1a {:016x}, {} {}",
        direct.len(),
        want_fnv.0,
        want_digest.algorithm,
        want_digest.hex()
    );

    // The same stream over a buffer path (`readwrite`) and a pipe path (`read-pipe`): the
    // consumer sees the bytes through `take_from_buffer` on the first, `take_pipe` on the second.
    for strategy in [Strategy::ReadWrite, Strategy::ReadPipe] {
        let source = Source::open(file.path())?;
        let config = FanoutConfig::default()
            .strategy(strategy)
            .digest(DigestAlgorithm::Xxh3_128);
        let report = fan_out(&source, vec![Tallier::new(), Tallier::new()], &config);
        let digest = report
            .result
            .map_err(|e| format!("{}: the fan-out failed: {e}", strategy.name()))?;
        assert_eq!(report.strategy, Some(strategy));
        assert_eq!(report.bytes, direct.len() as u64);
        assert_eq!(digest, want_digest, "the engine's digest");

        let mut tallies = Vec::new();
        for (i, outcome) in report.consumers.into_iter().enumerate() {
            let tally = outcome.map_err(|e| format!("{}: consumer {i}: {e}", strategy.name()))?;
            println!(
                "{:>9} consumer {i}: {} bytes, fnv1a {:016x}",
                strategy.name(),
                tally.bytes,
                tally.fnv.0
            );
            assert_eq!(tally.bytes, direct.len() as u64, "consumer {i}'s count");
            assert_eq!(tally.fnv, want_fnv, "consumer {i}'s checksum");
            assert_eq!(tally.engine_digest, want_digest, "consumer {i}'s digest");
            tallies.push(tally);
        }
        assert_eq!(tallies[0], tallies[1], "the two consumers disagree");
    }
    println!("every consumer agrees with the direct read");
    Ok(())
}

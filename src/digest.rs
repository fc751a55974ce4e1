//! Digests of the stable stream: the algorithms teecast offers, and a running hasher over them.

use std::fmt;
use std::str::FromStr;

/// A digest algorithm, as chosen with `--digest` and announced in the wire header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DigestAlgorithm {
    /// No digest: the receiver checks only the length.
    None,
    /// BLAKE3, 256-bit: cryptographic.
    Blake3,
    /// SHA-256.
    Sha256,
    /// XXH3, 128-bit: fast, not cryptographic (the default).
    Xxh3_128,
}

impl Default for DigestAlgorithm {
    /// XXH3-128: it runs at about four times BLAKE3's speed, so the digest costs next to nothing
    /// beside the copies and TCP (BENCHMARKS.md); choose blake3 or sha256 for a record that must
    /// resist deliberate collisions.
    fn default() -> Self {
        Self::Xxh3_128
    }
}

impl DigestAlgorithm {
    /// Every algorithm, in wire-id order.
    pub const ALL: [DigestAlgorithm; 4] = [Self::None, Self::Blake3, Self::Sha256, Self::Xxh3_128];

    /// The id carried on the wire.
    pub fn id(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Blake3 => 1,
            Self::Sha256 => 2,
            Self::Xxh3_128 => 3,
        }
    }

    /// The algorithm with wire id `id`, if there is one.
    pub fn from_id(id: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.id() == id)
    }

    /// Length in bytes of a digest of this algorithm.
    pub fn output_len(self) -> usize {
        match self {
            Self::None => 0,
            Self::Blake3 | Self::Sha256 => 32,
            Self::Xxh3_128 => 16,
        }
    }

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Blake3 => "blake3",
            Self::Sha256 => "sha256",
            Self::Xxh3_128 => "xxh3-128",
        }
    }

    /// Starts a running hasher for this algorithm.
    pub fn hasher(self) -> Hasher {
        let state = match self {
            Self::None => State::None,
            Self::Blake3 => State::Blake3(Box::new(blake3::Hasher::new())),
            Self::Sha256 => State::Sha256(Box::default()),
            Self::Xxh3_128 => State::Xxh3(Box::default()),
        };
        Hasher { state }
    }
}

impl fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DigestAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown digest '{s}': choose one of blake3, sha256, xxh3-128, none")
            })
    }
}

/// A finished digest: the algorithm and its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    /// The algorithm that produced `bytes`.
    pub algorithm: DigestAlgorithm,
    /// The digest itself (empty for [`DigestAlgorithm::None`]).
    pub bytes: Vec<u8>,
}

impl Digest {
    /// The empty digest of [`DigestAlgorithm::None`].
    pub fn none() -> Digest {
        Digest {
            algorithm: DigestAlgorithm::None,
            bytes: Vec::new(),
        }
    }

    /// Lower-case hexadecimal, as `sha256sum` and `b3sum` print it.
    pub fn hex(&self) -> String {
        to_hex(&self.bytes)
    }
}

/// Lower-case hexadecimal of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

enum State {
    None,
    Blake3(Box<blake3::Hasher>),
    Sha256(Box<sha2::Sha256>),
    Xxh3(Box<xxhash_rust::xxh3::Xxh3>),
}

/// A running digest over a stream fed in pieces.
pub struct Hasher {
    state: State,
}

impl Hasher {
    /// Feeds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        use sha2::Digest as _;
        match &mut self.state {
            State::None => {}
            State::Blake3(h) => {
                h.update(bytes);
            }
            State::Sha256(h) => h.update(bytes),
            State::Xxh3(h) => h.update(bytes),
        }
    }

    /// Ends the stream and returns its digest.
    pub fn finish(self) -> Digest {
        use sha2::Digest as _;
        let (algorithm, bytes) = match self.state {
            State::None => (DigestAlgorithm::None, Vec::new()),
            State::Blake3(h) => (DigestAlgorithm::Blake3, h.finalize().as_bytes().to_vec()),
            State::Sha256(h) => (DigestAlgorithm::Sha256, h.finalize().to_vec()),
            State::Xxh3(h) => (
                DigestAlgorithm::Xxh3_128,
                h.digest128().to_be_bytes().to_vec(),
            ),
        };
        Digest { algorithm, bytes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        let digest = |a: DigestAlgorithm, data: &[u8]| {
            let mut h = a.hasher();
            h.update(data);
            h.finish().hex()
        };
        assert_eq!(
            digest(DigestAlgorithm::Sha256, b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            digest(DigestAlgorithm::Blake3, b""),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(digest(DigestAlgorithm::None, b"abc"), "");
        assert_eq!(digest(DigestAlgorithm::Xxh3_128, b"abc").len(), 32);
    }

    #[test]
    fn pieces_equal_whole() {
        for a in DigestAlgorithm::ALL {
            let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
            let mut whole = a.hasher();
            whole.update(&data);
            let mut pieces = a.hasher();
            for c in data.chunks(777) {
                pieces.update(c);
            }
            assert_eq!(whole.finish(), pieces.finish(), "{a}");
        }
    }

    #[test]
    fn ids_and_names_round_trip() {
        for a in DigestAlgorithm::ALL {
            assert_eq!(DigestAlgorithm::from_id(a.id()), Some(a));
            assert_eq!(a.name().parse::<DigestAlgorithm>(), Ok(a));
        }
        assert_eq!(DigestAlgorithm::from_id(9), None);
        assert!("md5".parse::<DigestAlgorithm>().is_err());
    }
}

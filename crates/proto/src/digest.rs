//! The digest algorithms the protocol can announce: their wire ids, names and output lengths.
//! Computing them is the library's business (`teecast::digest::Hasher`).

use std::fmt;
use std::str::FromStr;

/// A digest algorithm, as announced in the wire header.
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
}

impl fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DigestAlgorithm {
    type Err = UnknownDigestName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownDigestName(s.to_string()))
    }
}

/// A digest name that is none of [`DigestAlgorithm::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown digest {0:?}: choose one of blake3, sha256, xxh3-128, none")]
pub struct UnknownDigestName(pub String);

#[cfg(test)]
mod tests {
    use super::*;

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

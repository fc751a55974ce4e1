//! Digests of the stable stream: the algorithms teecast offers, and a running hasher over them.

pub use teecast_proto::digest::DigestAlgorithm;

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
    /// Starts a running hasher for `algorithm`.
    pub fn new(algorithm: DigestAlgorithm) -> Hasher {
        let state = match algorithm {
            DigestAlgorithm::None => State::None,
            DigestAlgorithm::Blake3 => State::Blake3(Box::new(blake3::Hasher::new())),
            DigestAlgorithm::Sha256 => State::Sha256(Box::default()),
            DigestAlgorithm::Xxh3_128 => State::Xxh3(Box::default()),
        };
        Hasher { state }
    }

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
            let mut h = Hasher::new(a);
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
            let mut whole = Hasher::new(a);
            whole.update(&data);
            let mut pieces = Hasher::new(a);
            for c in data.chunks(777) {
                pieces.update(c);
            }
            assert_eq!(whole.finish(), pieces.finish(), "{a}");
        }
    }
}

//! Authentication with a pre-shared key, as pure computation: the proofs of the handshake,
//! the session key, and the seals of the stream and the acknowledgement. Nonces come from the
//! caller (this crate draws no randomness), so every value here is deterministic and testable.
//!
//! Every MAC is keyed BLAKE3 over a fixed label and whole framed messages (which carry their own
//! lengths, so no two inputs run together):
//!
//! - the receiver's proof, in the welcome: `MAC(key, "teecast/2 receiver proof" ‖ hello ‖ nonce_r ‖ capabilities_r)`;
//! - the sender's proof, a seal before the header: `MAC(key, "teecast/2 sender proof" ‖ hello ‖ welcome)`;
//! - the session key: `MAC(key, "teecast/2 session key" ‖ nonce_s ‖ nonce_r)`, fresh for every
//!   connection because the receiver's nonce is;
//! - the stream's seal, after the trailer: `MAC(session key, "teecast/2 stream" ‖ header ‖ trailer)`
//!   — the trailer carries the length and the payload's cryptographic digest, so the seal covers
//!   name, length and every payload byte;
//! - the acknowledgement's seal: `MAC(session key, "teecast/2 ack" ‖ stream seal ‖ ack)`.
//!
//! A changed byte, a replayed session (another receiver nonce) or a trailer from another
//! session gives another MAC, and the receiver keeps nothing.

use std::fmt;

use crate::wire::{MAC_LEN, NONCE_LEN};

/// A pre-shared 256-bit key. Its `Debug` output never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; 32]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(…)")
    }
}

impl Key {
    /// The key with these bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        Key(bytes)
    }

    /// The key's bytes (to write a key file).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn mac(&self, label: &str, parts: &[&[u8]]) -> [u8; MAC_LEN] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(label.as_bytes());
        for p in parts {
            h.update(p);
        }
        *h.finalize().as_bytes()
    }

    /// The receiver's proof of the key, for its welcome.
    pub fn receiver_proof(
        &self,
        hello: &[u8],
        nonce: &[u8; NONCE_LEN],
        capabilities: u32,
    ) -> [u8; MAC_LEN] {
        self.mac(
            "teecast/2 receiver proof",
            &[hello, nonce, &capabilities.to_be_bytes()],
        )
    }

    /// The sender's proof of the key, sent as a seal before the header.
    pub fn sender_proof(&self, hello: &[u8], welcome: &[u8]) -> [u8; MAC_LEN] {
        self.mac("teecast/2 sender proof", &[hello, welcome])
    }

    /// The key of one session, from both nonces.
    pub fn session_key(&self, sender: &[u8; NONCE_LEN], receiver: &[u8; NONCE_LEN]) -> Key {
        Key(self.mac("teecast/2 session key", &[sender, receiver]))
    }

    /// The seal of a stream: its header and trailer messages, under the session key.
    pub fn stream_seal(&self, header: &[u8], trailer: &[u8]) -> [u8; MAC_LEN] {
        self.mac("teecast/2 stream", &[header, trailer])
    }

    /// The seal of a receiver's answer to a resuming header, under the session key.
    pub fn resume_seal(&self, header: &[u8], resume: &[u8]) -> [u8; MAC_LEN] {
        self.mac("teecast/2 resume", &[header, resume])
    }

    /// The seal of an acknowledgement, under the session key.
    pub fn ack_seal(&self, stream_seal: &[u8; MAC_LEN], ack: &[u8]) -> [u8; MAC_LEN] {
        self.mac("teecast/2 ack", &[stream_seal, ack])
    }
}

/// Compares two MACs in time that does not depend on where they differ.
pub fn same_mac(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mac_depends_on_the_key_and_every_input() {
        let k = Key::from_bytes([1; 32]);
        let other = Key::from_bytes([2; 32]);
        let n = [3; NONCE_LEN];
        assert_ne!(
            k.receiver_proof(b"h", &n, 1),
            other.receiver_proof(b"h", &n, 1)
        );
        assert_ne!(k.receiver_proof(b"h", &n, 1), k.receiver_proof(b"h", &n, 0));
        assert_ne!(k.receiver_proof(b"h", &n, 1), k.receiver_proof(b"i", &n, 1));
        assert_ne!(k.sender_proof(b"h", b"w"), k.sender_proof(b"h", b"x"));
        assert_ne!(
            k.session_key(&n, &[4; NONCE_LEN]),
            k.session_key(&n, &[5; NONCE_LEN])
        );
        let s = k.session_key(&n, &[4; NONCE_LEN]);
        assert_ne!(s.stream_seal(b"hd", b"tr"), s.stream_seal(b"hd", b"ts"));
        assert_ne!(s.stream_seal(b"hd", b"tr"), k.stream_seal(b"hd", b"tr"));
        let seal = s.stream_seal(b"hd", b"tr");
        assert_ne!(s.ack_seal(&seal, b"a"), s.ack_seal(&seal, b"b"));
        // Labels separate the uses: the same inputs under two labels differ.
        assert_ne!(k.sender_proof(b"h", b"w"), k.stream_seal(b"h", b"w"));
        assert_ne!(s.resume_seal(b"hd", b"r"), s.resume_seal(b"hd", b"s"));
        assert_ne!(s.resume_seal(b"hd", b"r"), s.stream_seal(b"hd", b"r"));
    }

    #[test]
    fn macs_compare_whole() {
        assert!(same_mac(&[1, 2, 3], &[1, 2, 3]));
        assert!(!same_mac(&[1, 2, 3], &[1, 2, 4]));
        assert!(!same_mac(&[1, 2, 3], &[1, 2]));
    }

    #[test]
    fn a_key_never_shows_in_debug_output() {
        let k = Key::from_bytes([0xab; 32]);
        assert!(!format!("{k:?}").contains("ab"));
    }
}

//! Protocol version 3's encryption, as pure computation: the forward-secret handshake, the
//! transfer key it carries, and the AEAD records of the payload with their re-key ratchet.
//! Nothing here draws randomness: the caller supplies every ephemeral key, transfer key and
//! transfer identifier, so every byte is deterministic and testable.
//!
//! - **Handshake**: Noise `Noise_NNpsk0_25519_AESGCM_SHA256` (the `snow` crate), with the
//!   pre-shared [`Key`] as the PSK and an ephemeral X25519 key on each side: the hello carries the
//!   sender's ephemeral key, the welcome the receiver's, and a key stolen later does not open a
//!   recorded session. `snow` runs the Noise state machine; its primitives (AES-256-GCM, X25519,
//!   SHA-256) all come from `aws-lc-rs`, through the resolver below.
//! - **Transfer key**: the sender's random [`TransferKey`] (a 16-byte transfer identifier and a
//!   32-byte key), sent as the first Noise transport message of each receiver's session.
//! - **Records**: the payload as AEAD records ([`RecordSealer`], [`RecordOpener`]) under keys
//!   derived from the transfer key, the nonce from the record's index, the associated data the
//!   transfer identifier, the index and the final-record flag. The key is ratcheted forward every
//!   [`RECORDS_PER_KEY`] records (a parameter, so a test can use a small one).
//!
//! docs/PROTOCOL.md ("Version 3 (encryption)") describes the bytes. The library does not yet
//! drive any of this: senders and receivers speak version 2.

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use aws_lc_rs::aead::{self, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::{agreement, digest};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::CryptoResolver;
use snow::types::{Cipher, Dh, Hash, Random};
use snow::{HandshakeState, StatelessTransportState};

use crate::auth::Key;
use crate::wire::{self, PREFIX_LEN, TRANSFER_ID_LEN};

/// The protocol version of these messages.
pub const VERSION: u16 = 3;
/// The Noise protocol name: the pattern and the primitives of the handshake.
pub const NOISE_PROTOCOL: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
/// The Noise prologue, which both sides hash before the first message: it binds the handshake to
/// teecast version 3.
pub const PROLOGUE: &[u8] = b"teecast/3";
/// An AEAD tag, in every Noise message and after every record.
pub const TAG_LEN: usize = 16;
/// An X25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// The body of the hello and of the welcome: an ephemeral public key and the tag of an empty
/// payload.
pub const HANDSHAKE_BODY: usize = PUBLIC_KEY_LEN + TAG_LEN;
/// The transfer key's secret part.
pub const TRANSFER_KEY_LEN: usize = 32;
/// The body of the transfer-key message: the transfer identifier and key, sealed.
pub const TRANSFER_BODY: usize = TRANSFER_ID_LEN + TRANSFER_KEY_LEN + TAG_LEN;
/// A record's header: bit 31 the final-record flag, bits 0–30 the plaintext length.
pub const RECORD_HEADER_LEN: usize = 4;
/// Plaintext bytes in a full record, and the most a record may hold.
pub const RECORD_LEN: usize = 64 * 1024;
/// Records sealed under one key before the ratchet derives the next: 2^20 records of at most
/// 64 KiB is 64 GiB (2^32 AES blocks) per key, about a sixth of what TLS 1.3 allows one AES-GCM
/// key (2^24.5 records of 16 KiB).
pub const RECORDS_PER_KEY: u64 = 1 << 20;

/// The records' AEAD and where it comes from, as `teecast probe` names it.
pub const RECORD_AEAD: &str = "AES-256-GCM (aws-lc-rs)";
/// A full record on the wire: header, 64 KiB of ciphertext, tag.
pub const FULL_RECORD: usize = RECORD_HEADER_LEN + RECORD_LEN + TAG_LEN;
/// What a record adds to its plaintext on the wire.
const RECORD_OVERHEAD: u64 = (RECORD_HEADER_LEN + TAG_LEN) as u64;

/// The payload on the wire of a stream of `plain` bytes: full records, then the final record
/// with the rest (none when `plain` is a multiple of [`RECORD_LEN`]). `None` beyond `u64`.
pub fn sealed_len(plain: u64) -> Option<u64> {
    let records = plain / RECORD_LEN as u64 + 1;
    plain.checked_add(records.checked_mul(RECORD_OVERHEAD)?)
}

/// The plaintext bytes of a whole stream of records `wire` bytes long (the inverse of
/// [`sealed_len`]); `None` for a length no stream of records has.
pub fn plain_len(wire: u64) -> Option<u64> {
    let full = FULL_RECORD as u64;
    let rest = (wire % full).checked_sub(RECORD_OVERHEAD)?;
    Some(wire / full * RECORD_LEN as u64 + rest)
}

/// The plaintext in the first `wire` bytes of a stream of records (a record counts once its
/// tag is in); exact for a whole stream.
pub fn plain_in(wire: u64) -> u64 {
    let full = FULL_RECORD as u64;
    wire / full * RECORD_LEN as u64 + (wire % full).saturating_sub(RECORD_OVERHEAD)
}

const FINAL: u32 = 1 << 31;
const RECORD_KEY_LABEL: &str = "teecast/3 record key";
const RECORD_IV_LABEL: &str = "teecast/3 record iv";
const RATCHET_LABEL: &str = "teecast/3 record key ratchet";

/// Every way version-3 bytes from a peer (or a call out of order) can be refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptError {
    /// The prefix is not that of the expected version-3 message.
    #[error("bad magic: expected \"{}\", found {}", expected.magic().escape_ascii(), found.escape_ascii())]
    BadMagic {
        /// The message expected.
        expected: Message,
        /// The four bytes that arrived.
        found: [u8; 4],
    },
    /// A teecast peer that speaks version 2, which sends everything in the clear.
    #[error(
        "the peer speaks teecast protocol version 2 (unencrypted); this exchange needs version 3 — run the same teecast release on both ends"
    )]
    Version2Peer,
    /// Another version number.
    #[error("unsupported protocol version {found} in the {kind}: this exchange needs version 3")]
    UnsupportedVersion {
        /// The message that carried it.
        kind: Message,
        /// The version that arrived.
        found: u16,
    },
    /// A body of another length than the message has.
    #[error("{kind} body of {len} bytes; it is exactly {expected} bytes")]
    BodyLength {
        /// The message.
        kind: Message,
        /// The length announced or given.
        len: u64,
        /// The only length it may have.
        expected: usize,
    },
    /// A handshake message or the transfer key does not verify: the peer holds another key, or
    /// the bytes were changed or belong to another session.
    #[error(
        "the {0} does not verify: the peer holds another key, or the bytes were altered or replayed"
    )]
    DoesNotVerify(Message),
    /// The Noise machinery refused a step (a call out of order; not a peer's doing).
    #[error("handshake step refused: {0}")]
    Noise(String),
    /// A record header announces more than a record may hold.
    #[error("a record of {0} bytes is longer than the limit of {RECORD_LEN}")]
    RecordTooLong(u32),
    /// A record does not verify under the transfer's key at its place in the stream.
    #[error(
        "record {index} does not verify: altered, dropped, repeated, reordered or from another transfer"
    )]
    RecordRefused {
        /// The index the record was expected to have.
        index: u64,
    },
    /// A record after the final one.
    #[error("a record after the final record {0}")]
    AfterFinal(u64),
    /// The stream ended without its final record.
    #[error("the records end after {0} without the final one: the stream was cut short")]
    Truncated(u64),
    /// A record before the final one that is not full: a sender fills every record but the last.
    #[error("record {index} holds {len} bytes and is not the last: every other record is full")]
    ShortRecord {
        /// The record's index.
        index: u64,
        /// Its plaintext length.
        len: usize,
    },
}

/// The version-3 messages around the records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    /// The sender's first message: Noise message 1.
    Hello,
    /// The receiver's answer: Noise message 2.
    Welcome,
    /// The sender's transfer key: the first Noise transport message.
    TransferKey,
}

impl Message {
    /// The magic of its prefix.
    pub fn magic(self) -> [u8; 4] {
        match self {
            Message::Hello => *b"TCHL",
            Message::Welcome => *b"TCWL",
            Message::TransferKey => *b"TCKY",
        }
    }

    /// The length of its body: every version-3 message has exactly one.
    pub fn body_len(self) -> usize {
        match self {
            Message::Hello | Message::Welcome => HANDSHAKE_BODY,
            Message::TransferKey => TRANSFER_BODY,
        }
    }

    /// Prefix and body.
    fn frame(self, body: &[u8]) -> Vec<u8> {
        wire::prefixed(self.magic(), VERSION, body)
    }

    /// The body of a whole message (prefix included) of this kind.
    fn body(self, message: &[u8]) -> Result<&[u8], CryptError> {
        let (prefix, body) =
            message
                .split_first_chunk::<PREFIX_LEN>()
                .ok_or(CryptError::BodyLength {
                    kind: self,
                    len: 0,
                    expected: self.body_len(),
                })?;
        let len = decode_prefix(prefix, self)?;
        if body.len() != len {
            return Err(CryptError::BodyLength {
                kind: self,
                len: body.len() as u64,
                expected: len,
            });
        }
        Ok(body)
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Message::Hello => "hello",
            Message::Welcome => "welcome",
            Message::TransferKey => "transfer key",
        })
    }
}

/// Checks the prefix of a version-3 message of kind `expected` and returns its body length (the
/// one length the kind has): the bytes to read next.
pub fn decode_prefix(prefix: &[u8; PREFIX_LEN], expected: Message) -> Result<usize, CryptError> {
    let [m0, m1, m2, m3, v0, v1, l0, l1, l2, l3] = *prefix;
    let found = [m0, m1, m2, m3];
    let version = u16::from_be_bytes([v0, v1]);
    if found != expected.magic() {
        return Err(CryptError::BadMagic { expected, found });
    }
    match version {
        VERSION => {}
        2 => return Err(CryptError::Version2Peer),
        found => {
            return Err(CryptError::UnsupportedVersion {
                kind: expected,
                found,
            });
        }
    }
    let len = u32::from_be_bytes([l0, l1, l2, l3]);
    if len as usize != expected.body_len() {
        return Err(CryptError::BodyLength {
            kind: expected,
            len: u64::from(len),
            expected: expected.body_len(),
        });
    }
    Ok(expected.body_len())
}

/// The key of one transfer, drawn at random by the sender and the same for every receiver: the
/// records' keys derive from it. Its `Debug` output shows the identifier, never the key.
#[derive(Clone, PartialEq, Eq)]
pub struct TransferKey {
    /// The transfer's identifier, in every record's associated data.
    pub id: [u8; TRANSFER_ID_LEN],
    key: [u8; TRANSFER_KEY_LEN],
}

impl fmt::Debug for TransferKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TransferKey {{ id: {:02x?}, key: … }}", self.id)
    }
}

impl TransferKey {
    /// The transfer key with this identifier and these secret bytes (both from the caller's
    /// randomness).
    pub fn new(id: [u8; TRANSFER_ID_LEN], key: [u8; TRANSFER_KEY_LEN]) -> TransferKey {
        TransferKey { id, key }
    }
}

/// The randomness `snow` asks for: exactly the caller's ephemeral private key, once.
struct Ephemeral(Option<[u8; 32]>);

impl Random for Ephemeral {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        match self.0.take() {
            Some(key) if dest.len() == key.len() => {
                dest.copy_from_slice(&key);
                Ok(())
            }
            _ => Err(snow::Error::Rng),
        }
    }
}

/// `snow`'s primitives for this handshake, all from `aws-lc-rs` (AES-256-GCM is the records'
/// AEAD too), and the caller's ephemeral key as the only randomness.
struct Resolver(Cell<Option<[u8; 32]>>);

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(Ephemeral(self.0.take())))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::new(X25519::default())),
            _ => None,
        }
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        match choice {
            HashChoice::SHA256 => Some(Box::new(Sha256(digest::Context::new(&digest::SHA256)))),
            _ => None,
        }
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        match choice {
            CipherChoice::AESGCM => Some(Box::new(NoiseAesGcm(aes_256_gcm(&[0; 32])))),
            _ => None,
        }
    }
}

/// Noise's `25519`: an X25519 key pair. A shared secret of all zeros (a peer's low-order point)
/// is refused by `aws-lc-rs`, and the handshake with it.
#[derive(Default)]
struct X25519 {
    private: Option<agreement::PrivateKey>,
    public: [u8; PUBLIC_KEY_LEN],
    secret: [u8; 32],
}

impl Dh for X25519 {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        PUBLIC_KEY_LEN
    }

    fn priv_len(&self) -> usize {
        32
    }

    fn set(&mut self, privkey: &[u8]) {
        self.private = agreement::PrivateKey::from_private_key(&agreement::X25519, privkey).ok();
        self.public = [0; PUBLIC_KEY_LEN];
        if let Some(public) = self
            .private
            .as_ref()
            .and_then(|k| k.compute_public_key().ok())
        {
            self.public.copy_from_slice(public.as_ref());
        }
        self.secret.copy_from_slice(privkey);
    }

    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        let mut bytes = [0; 32];
        rng.try_fill_bytes(&mut bytes)?;
        self.set(&bytes);
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        &self.secret
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let private = self.private.as_ref().ok_or(snow::Error::Dh)?;
        // snow passes a buffer sized for its largest curve: the key is its first 32 bytes.
        let pubkey = pubkey.get(..PUBLIC_KEY_LEN).ok_or(snow::Error::Dh)?;
        let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, pubkey);
        agreement::agree(private, peer, snow::Error::Dh, |shared| {
            out.get_mut(..shared.len())
                .ok_or(snow::Error::Dh)?
                .copy_from_slice(shared);
            Ok(())
        })
    }
}

/// Noise's `SHA256`.
struct Sha256(digest::Context);

impl Hash for Sha256 {
    fn name(&self) -> &'static str {
        "SHA256"
    }

    fn block_len(&self) -> usize {
        64
    }

    fn hash_len(&self) -> usize {
        32
    }

    fn reset(&mut self) {
        self.0 = digest::Context::new(&digest::SHA256);
    }

    fn input(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    fn result(&mut self, out: &mut [u8]) {
        let context = std::mem::replace(&mut self.0, digest::Context::new(&digest::SHA256));
        let hash = context.finish();
        out[..hash.as_ref().len()].copy_from_slice(hash.as_ref());
    }
}

fn aes_256_gcm(key: &[u8; 32]) -> LessSafeKey {
    // A 32-byte key is what AES-256-GCM takes: `new` cannot refuse it.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte AES-256 key"))
}

/// Noise's `AESGCM` cipher: AES-256-GCM with the nonce as 32 zero bits and the 64-bit counter,
/// big-endian.
struct NoiseAesGcm(LessSafeKey);

impl NoiseAesGcm {
    fn nonce(n: u64) -> Nonce {
        let mut bytes = [0; aead::NONCE_LEN];
        bytes[4..].copy_from_slice(&n.to_be_bytes());
        Nonce::assume_unique_for_key(bytes)
    }
}

impl Cipher for NoiseAesGcm {
    fn name(&self) -> &'static str {
        "AESGCM"
    }

    fn set(&mut self, key: &[u8; 32]) {
        self.0 = aes_256_gcm(key);
    }

    fn encrypt(&self, nonce: u64, authtext: &[u8], plaintext: &[u8], out: &mut [u8]) -> usize {
        let (body, rest) = out.split_at_mut(plaintext.len());
        body.copy_from_slice(plaintext);
        let tag = self
            .0
            .seal_in_place_separate_tag(Self::nonce(nonce), Aad::from(authtext), body)
            .expect("a Noise message is far below AES-GCM's length limit");
        rest[..TAG_LEN].copy_from_slice(tag.as_ref());
        plaintext.len() + TAG_LEN
    }

    fn decrypt(
        &self,
        nonce: u64,
        authtext: &[u8],
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, snow::Error> {
        let len = ciphertext
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(snow::Error::Decrypt)?;
        let mut in_out = ciphertext.to_vec();
        let plain = self
            .0
            .open_in_place(Self::nonce(nonce), Aad::from(authtext), &mut in_out)
            .map_err(|_| snow::Error::Decrypt)?;
        out.get_mut(..len)
            .ok_or(snow::Error::Decrypt)?
            .copy_from_slice(plain);
        Ok(len)
    }
}

fn noise_error(err: snow::Error) -> CryptError {
    CryptError::Noise(err.to_string())
}

/// A Noise handshake state for one side, with the PSK and the caller's ephemeral key.
fn handshake(
    psk: &Key,
    ephemeral: [u8; 32],
    initiator: bool,
) -> Result<HandshakeState, CryptError> {
    let params = NOISE_PROTOCOL.parse().map_err(noise_error)?;
    let resolver = Resolver(Cell::new(Some(ephemeral)));
    let builder = snow::Builder::with_resolver(params, Box::new(resolver))
        .psk(0, psk.as_bytes())
        .and_then(|b| b.prologue(PROLOGUE))
        .map_err(noise_error)?;
    if initiator {
        builder.build_initiator()
    } else {
        builder.build_responder()
    }
    .map_err(noise_error)
}

/// The sender's side of the handshake, between its hello and the receiver's welcome.
pub struct Initiator(HandshakeState);

impl fmt::Debug for Initiator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Initiator(…)")
    }
}

impl Initiator {
    /// Starts the handshake under the pre-shared key with the sender's ephemeral X25519 private
    /// key (32 random bytes from the caller); returns the hello to send.
    pub fn start(psk: &Key, ephemeral: [u8; 32]) -> Result<(Initiator, Vec<u8>), CryptError> {
        let mut state = handshake(psk, ephemeral, true)?;
        let mut body = [0; HANDSHAKE_BODY];
        let n = state.write_message(&[], &mut body).map_err(noise_error)?;
        Ok((Initiator(state), Message::Hello.frame(&body[..n])))
    }

    /// Takes the receiver's welcome (the whole message): when it verifies, the receiver holds the
    /// key and answered this hello, and the session is ready for the transfer key.
    pub fn welcome(mut self, welcome: &[u8]) -> Result<Channel, CryptError> {
        let body = Message::Welcome.body(welcome)?;
        let mut payload = [0; HANDSHAKE_BODY];
        self.0
            .read_message(body, &mut payload)
            .map_err(|_| CryptError::DoesNotVerify(Message::Welcome))?;
        Channel::of(self.0)
    }
}

/// The receiver's side of the handshake: answers a hello.
///
/// A hello that verifies shows that its sender held the key at some time, not that it is here
/// now (a hello can be replayed): the receiver trusts the sender only once the transfer key,
/// sealed under keys that depend on the receiver's fresh ephemeral key, verifies.
pub fn respond(
    psk: &Key,
    ephemeral: [u8; 32],
    hello: &[u8],
) -> Result<(Channel, Vec<u8>), CryptError> {
    let body = Message::Hello.body(hello)?;
    let mut state = handshake(psk, ephemeral, false)?;
    let mut payload = [0; HANDSHAKE_BODY];
    state
        .read_message(body, &mut payload)
        .map_err(|_| CryptError::DoesNotVerify(Message::Hello))?;
    let mut welcome = [0; HANDSHAKE_BODY];
    let n = state
        .write_message(&[], &mut welcome)
        .map_err(noise_error)?;
    Ok((Channel::of(state)?, Message::Welcome.frame(&welcome[..n])))
}

/// One receiver's session after the handshake: forward-secret keys for each direction, and the
/// count of messages each way, which is each message's nonce (Noise transport messages). Every
/// message after the handshake travels under it: the transfer key, then the header, the
/// trailer, the acknowledgement and the resume answer, each sealed whole ([`Channel::seal`]).
/// Cloning it copies the counts with the keys: a clone goes on where the original is.
#[derive(Clone)]
pub struct Channel {
    keys: Arc<StatelessTransportState>,
    sent: u64,
    received: u64,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Channel {{ sent: {}, received: {} }}",
            self.sent, self.received
        )
    }
}

impl Channel {
    fn of(state: HandshakeState) -> Result<Channel, CryptError> {
        Ok(Channel {
            keys: Arc::new(state.into_stateless_transport_mode().map_err(noise_error)?),
            sent: 0,
            received: 0,
        })
    }

    /// Encrypts `plain` as the next message this side sends.
    fn write(&mut self, plain: &[u8]) -> Result<Vec<u8>, CryptError> {
        let mut out = vec![0; plain.len() + TAG_LEN];
        let n = self
            .keys
            .write_message(self.sent, plain, &mut out)
            .map_err(noise_error)?;
        out.truncate(n);
        self.sent += 1;
        Ok(out)
    }

    /// Decrypts `sealed` as the next message from the peer; `None` when it does not verify.
    fn read(&mut self, sealed: &[u8]) -> Option<Vec<u8>> {
        let mut out = vec![0; sealed.len()];
        let n = self
            .keys
            .read_message(self.received, sealed, &mut out)
            .ok()?;
        out.truncate(n);
        self.received += 1;
        Some(out)
    }

    /// The sender's transfer-key message (a relay's too, passing its parent's key on).
    pub fn send_transfer_key(&mut self, transfer: &TransferKey) -> Result<Vec<u8>, CryptError> {
        let mut plain = [0; TRANSFER_ID_LEN + TRANSFER_KEY_LEN];
        plain[..TRANSFER_ID_LEN].copy_from_slice(&transfer.id);
        plain[TRANSFER_ID_LEN..].copy_from_slice(&transfer.key);
        let body = self.write(&plain)?;
        Ok(Message::TransferKey.frame(&body))
    }

    /// The transfer key from the sender's message. Only when it verifies has the sender shown
    /// that it holds the pre-shared key in this session (not a replayed one).
    pub fn receive_transfer_key(&mut self, message: &[u8]) -> Result<TransferKey, CryptError> {
        let body = Message::TransferKey.body(message)?;
        let plain = self
            .read(body)
            .ok_or(CryptError::DoesNotVerify(Message::TransferKey))?;
        let (id, key) = plain
            .split_first_chunk::<TRANSFER_ID_LEN>()
            .ok_or(CryptError::DoesNotVerify(Message::TransferKey))?;
        let key = <[u8; TRANSFER_KEY_LEN]>::try_from(key)
            .map_err(|_| CryptError::DoesNotVerify(Message::TransferKey))?;
        Ok(TransferKey { id: *id, key })
    }

    /// A framed message of version 2's layout (`prefix ‖ body`, as `wire` encodes it) sealed
    /// as the next message: the same magic, version 3, and the body encrypted, 16 bytes longer.
    pub fn seal(&mut self, message: &[u8]) -> Result<Vec<u8>, CryptError> {
        let (prefix, body) = message
            .split_first_chunk::<PREFIX_LEN>()
            .ok_or(CryptError::Noise(
                "a message shorter than its prefix".into(),
            ))?;
        let sealed = self.write(body)?;
        let magic = [prefix[0], prefix[1], prefix[2], prefix[3]];
        Ok(wire::prefixed(magic, VERSION, &sealed))
    }

    /// The body of the peer's next sealed message, from the body that arrived (after a prefix
    /// the reader checked); `None` when it does not verify: altered, replayed, out of order, or
    /// from another session.
    pub fn open(&mut self, body: &[u8]) -> Option<Vec<u8>> {
        self.read(body)
    }
}

/// A record's header: its plaintext length and whether it is the last record of the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Plaintext bytes in the record, 0 to [`RECORD_LEN`]; the ciphertext is as long, and the
    /// tag follows it.
    pub len: usize,
    /// The final record of the stream.
    pub last: bool,
}

impl RecordHeader {
    /// The four bytes on the wire.
    pub fn encode(self) -> [u8; RECORD_HEADER_LEN] {
        let len = u32::try_from(self.len).unwrap_or(u32::MAX) & !FINAL;
        (len | if self.last { FINAL } else { 0 }).to_be_bytes()
    }

    /// Decodes a header; a length over [`RECORD_LEN`] is refused before anything is read.
    pub fn decode(bytes: [u8; RECORD_HEADER_LEN]) -> Result<RecordHeader, CryptError> {
        let word = u32::from_be_bytes(bytes);
        let len = word & !FINAL;
        if len as usize > RECORD_LEN {
            return Err(CryptError::RecordTooLong(len));
        }
        Ok(RecordHeader {
            len: len as usize,
            last: word & FINAL != 0,
        })
    }

    /// Bytes that follow the header: the ciphertext and the tag.
    pub fn sealed_len(self) -> usize {
        self.len + TAG_LEN
    }
}

/// The keys of a transfer's records, at one index: the record key (ratcheted forward every
/// `per_key` records), the IV each nonce is made from, the transfer identifier, and whether the
/// final record has passed (or, opening, a record was refused). Its `Debug` output shows no key.
struct RecordKeys {
    secret: [u8; 32],
    key: LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
    id: [u8; TRANSFER_ID_LEN],
    index: u64,
    per_key: u64,
    done: bool,
    refused: bool,
}

impl fmt::Debug for RecordKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RecordKeys {{ index: {}, per_key: {}, done: {} }}",
            self.index, self.per_key, self.done
        )
    }
}

impl RecordKeys {
    fn new(transfer: &TransferKey, per_key: u64) -> RecordKeys {
        let secret = blake3::derive_key(RECORD_KEY_LABEL, &transfer.key);
        let iv = blake3::derive_key(RECORD_IV_LABEL, &transfer.key);
        RecordKeys {
            key: aes_256_gcm(&secret),
            secret,
            iv: iv[..aead::NONCE_LEN].try_into().expect("12 of 32 bytes"),
            id: transfer.id,
            index: 0,
            per_key: per_key.max(1),
            done: false,
            refused: false,
        }
    }

    /// The nonce and the associated data of the record at the current index.
    fn nonce_and_aad(&self, last: bool) -> (Nonce, [u8; TRANSFER_ID_LEN + 9]) {
        let mut nonce = self.iv;
        for (n, i) in nonce[4..].iter_mut().zip(self.index.to_be_bytes()) {
            *n ^= i;
        }
        let mut aad = [0; TRANSFER_ID_LEN + 9];
        aad[..TRANSFER_ID_LEN].copy_from_slice(&self.id);
        aad[TRANSFER_ID_LEN..TRANSFER_ID_LEN + 8].copy_from_slice(&self.index.to_be_bytes());
        aad[TRANSFER_ID_LEN + 8] = u8::from(last);
        (Nonce::assume_unique_for_key(nonce), aad)
    }

    /// Moves to the next index, deriving the next key (and forgetting this one) when the index
    /// starts a new key's run.
    fn advance(&mut self) {
        self.index += 1;
        if self.index.is_multiple_of(self.per_key) {
            self.secret = blake3::derive_key(RATCHET_LABEL, &self.secret);
            self.key = aes_256_gcm(&self.secret);
        }
    }
}

/// Seals a transfer's payload into records, once for every receiver.
#[derive(Debug)]
pub struct RecordSealer(RecordKeys);

impl RecordSealer {
    /// Seals records of `transfer`, re-keying every `per_key` records ([`RECORDS_PER_KEY`]
    /// outside tests).
    pub fn new(transfer: &TransferKey, per_key: u64) -> RecordSealer {
        RecordSealer(RecordKeys::new(transfer, per_key))
    }

    /// Index of the next record.
    pub fn index(&self) -> u64 {
        self.0.index
    }

    /// Seals `buf` (at most [`RECORD_LEN`] bytes) in place as the next record, the final one if
    /// `last`; returns the header to send before it and the tag to send after it. `None` after
    /// the final record or for a record over the limit (the driver's mistake).
    pub fn seal_in_place(
        &mut self,
        buf: &mut [u8],
        last: bool,
    ) -> Option<([u8; RECORD_HEADER_LEN], [u8; TAG_LEN])> {
        if self.0.done || buf.len() > RECORD_LEN {
            return None;
        }
        let (nonce, aad) = self.0.nonce_and_aad(last);
        let tag = self
            .0
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(aad), buf)
            .ok()?;
        self.0.done = last;
        self.0.advance();
        let header = RecordHeader {
            len: buf.len(),
            last,
        };
        Some((header.encode(), tag.as_ref().try_into().ok()?))
    }

    /// The next record, whole: header, ciphertext and tag.
    pub fn seal(&mut self, plaintext: &[u8], last: bool) -> Option<Vec<u8>> {
        let mut record = Vec::with_capacity(RECORD_HEADER_LEN + plaintext.len() + TAG_LEN);
        record.extend_from_slice(&[0; RECORD_HEADER_LEN]);
        record.extend_from_slice(plaintext);
        let (header, tag) = self.seal_in_place(&mut record[RECORD_HEADER_LEN..], last)?;
        record[..RECORD_HEADER_LEN].copy_from_slice(&header);
        record.extend_from_slice(&tag);
        Some(record)
    }
}

/// Opens a transfer's records in order: each must verify at its index, and the stream must end
/// with its final record.
#[derive(Debug)]
pub struct RecordOpener(RecordKeys);

impl RecordOpener {
    /// Opens records of `transfer`, with the sender's `per_key`.
    pub fn new(transfer: &TransferKey, per_key: u64) -> RecordOpener {
        RecordOpener(RecordKeys::new(transfer, per_key))
    }

    /// Index of the next record.
    pub fn index(&self) -> u64 {
        self.0.index
    }

    /// Whether the final record has been opened.
    pub fn is_done(&self) -> bool {
        self.0.done
    }

    /// Opens the next record in place: `sealed` is the `header.sealed_len()` bytes after its
    /// header (ciphertext and tag). Returns the plaintext, at the front of `sealed`. After a
    /// record that does not verify, the opener refuses every record: the stream is lost.
    pub fn open_in_place<'a>(
        &mut self,
        header: RecordHeader,
        sealed: &'a mut [u8],
    ) -> Result<&'a mut [u8], CryptError> {
        if self.0.done {
            return Err(CryptError::AfterFinal(self.0.index - 1));
        }
        let index = self.0.index;
        let (nonce, aad) = self.0.nonce_and_aad(header.last);
        let opened = match self.0.refused || sealed.len() != header.sealed_len() {
            true => None,
            false => self.0.key.open_in_place(nonce, Aad::from(aad), sealed).ok(),
        };
        let Some(plain) = opened else {
            self.0.refused = true;
            return Err(CryptError::RecordRefused { index });
        };
        self.0.done = header.last;
        self.0.advance();
        Ok(plain)
    }

    /// At the end of the stream: refused unless the final record was opened.
    pub fn finish(&self) -> Result<(), CryptError> {
        if self.0.done {
            Ok(())
        } else {
            Err(CryptError::Truncated(self.0.index))
        }
    }
}

/// How many whole records [`RecordReader::space`] takes at once, at most: one read of a
/// megabyte from a socket, rather than two for every record (its header, then the rest), costs
/// the receiver half the system time (BENCHMARKS.md, "Encryption: end to end").
pub const READ_RECORDS: usize = 16;

/// Reads a stream of records as it arrives, in whatever pieces, and opens each when it is
/// whole: the bytes go straight into place ([`RecordReader::space`], room for
/// [`READ_RECORDS`] records), so a record is copied once on its way in and opened where it lies;
/// only the start of a record that a read cut is moved to the front before the next.
#[derive(Debug)]
pub struct RecordReader {
    opener: RecordOpener,
    buf: Vec<u8>,
    /// Bytes in `buf`: the start of a record not yet whole.
    have: usize,
}

impl RecordReader {
    /// Reads the records of `transfer`, with the sender's `per_key`.
    pub fn new(transfer: &TransferKey, per_key: u64) -> RecordReader {
        RecordReader {
            opener: RecordOpener::new(transfer, per_key),
            buf: vec![0; READ_RECORDS * FULL_RECORD],
            have: 0,
        }
    }

    /// Where the next bytes of the stream go. The caller bounds its reads by the payload's
    /// length, so nothing of what follows the records lands here.
    pub fn space(&mut self) -> &mut [u8] {
        &mut self.buf[self.have..]
    }

    /// `n` bytes were put at the front of [`RecordReader::space`]: hands `each` the plaintext
    /// of every record they complete, in order. Every refusal is final: the stream is lost.
    pub fn filled<E: From<CryptError>>(
        &mut self,
        n: usize,
        mut each: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if n == 0 {
            return Ok(());
        }
        let end = self.have + n;
        let mut at = 0;
        while end - at >= RECORD_HEADER_LEN {
            if self.opener.is_done() {
                return Err(CryptError::AfterFinal(self.opener.index() - 1).into());
            }
            let bytes = self.buf[at..at + RECORD_HEADER_LEN]
                .try_into()
                .expect("a record header is four bytes");
            let header = RecordHeader::decode(bytes)?;
            if !header.last && header.len != RECORD_LEN {
                return Err(CryptError::ShortRecord {
                    index: self.opener.index(),
                    len: header.len,
                }
                .into());
            }
            let record_end = at + RECORD_HEADER_LEN + header.sealed_len();
            if record_end > end {
                break;
            }
            let plain = self
                .opener
                .open_in_place(header, &mut self.buf[at + RECORD_HEADER_LEN..record_end])?;
            each(plain)?;
            at = record_end;
        }
        if at < end && self.opener.is_done() {
            return Err(CryptError::AfterFinal(self.opener.index() - 1).into());
        }
        self.buf.copy_within(at..end, 0);
        self.have = end - at;
        Ok(())
    }

    /// Takes `bytes` of the stream (copying them into place), handing each record's plaintext
    /// to `each` as it opens.
    pub fn push<E: From<CryptError>>(
        &mut self,
        mut bytes: &[u8],
        mut each: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        while !bytes.is_empty() {
            let space = self.space();
            let n = space.len().min(bytes.len());
            space[..n].copy_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            self.filled(n, &mut each)?;
        }
        Ok(())
    }

    /// At the end of the stream: refused unless the final record was opened (and nothing
    /// followed it).
    pub fn finish(&self) -> Result<(), CryptError> {
        self.opener.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn psk() -> Key {
        Key::from_bytes([7; 32])
    }

    fn transfer(id: u8) -> TransferKey {
        TransferKey::new([id; TRANSFER_ID_LEN], [0x33; TRANSFER_KEY_LEN])
    }

    /// A whole handshake: the sender's and the receiver's channels, and the messages.
    fn handshake_with(
        sender: &Key,
        receiver: &Key,
        e: u8,
    ) -> Result<(Channel, Channel), CryptError> {
        let (initiator, hello) = Initiator::start(sender, [e; 32])?;
        let (rx, welcome) = respond(receiver, [e + 1; 32], &hello)?;
        Ok((initiator.welcome(&welcome)?, rx))
    }

    #[test]
    fn the_transfer_key_crosses_a_handshake() {
        let (mut tx, mut rx) = handshake_with(&psk(), &psk(), 1).unwrap();
        let message = tx.send_transfer_key(&transfer(9)).unwrap();
        assert_eq!(message.len(), PREFIX_LEN + TRANSFER_BODY);
        assert!(
            !message.windows(32).any(|w| w == [0x33; 32]),
            "the key went in the clear"
        );
        assert_eq!(rx.receive_transfer_key(&message).unwrap(), transfer(9));
    }

    #[test]
    fn another_key_is_refused_at_the_hello() {
        let other = Key::from_bytes([8; 32]);
        assert_eq!(
            handshake_with(&psk(), &other, 1).unwrap_err(),
            CryptError::DoesNotVerify(Message::Hello)
        );
    }

    #[test]
    fn a_welcome_from_another_session_is_refused() {
        let (initiator, _) = Initiator::start(&psk(), [1; 32]).unwrap();
        let (_, other_hello) = Initiator::start(&psk(), [3; 32]).unwrap();
        let (_, welcome) = respond(&psk(), [2; 32], &other_hello).unwrap();
        assert_eq!(
            initiator.welcome(&welcome).unwrap_err(),
            CryptError::DoesNotVerify(Message::Welcome)
        );
    }

    #[test]
    fn a_session_replayed_against_a_fresh_receiver_key_is_refused() {
        // A recorded session: hello and transfer-key message.
        let (initiator, hello) = Initiator::start(&psk(), [1; 32]).unwrap();
        let (_, welcome) = respond(&psk(), [2; 32], &hello).unwrap();
        let recorded = initiator
            .welcome(&welcome)
            .unwrap()
            .send_transfer_key(&transfer(9))
            .unwrap();
        // Played again to a receiver that draws a fresh ephemeral key: the hello passes (it
        // cannot tell), the transfer key does not.
        let (mut rx, _) = respond(&psk(), [4; 32], &hello).unwrap();
        assert_eq!(
            rx.receive_transfer_key(&recorded).unwrap_err(),
            CryptError::DoesNotVerify(Message::TransferKey)
        );
    }

    #[test]
    fn a_changed_byte_anywhere_in_the_handshake_is_refused() {
        let (initiator, hello) = Initiator::start(&psk(), [1; 32]).unwrap();
        for i in PREFIX_LEN..hello.len() {
            let mut bad = hello.clone();
            bad[i] ^= 1;
            assert!(respond(&psk(), [2; 32], &bad).is_err(), "hello byte {i}");
        }
        let (mut rx, welcome) = respond(&psk(), [2; 32], &hello).unwrap();
        let mut bad = welcome.clone();
        bad[PREFIX_LEN + 40] ^= 1;
        let (again, _) = Initiator::start(&psk(), [1; 32]).unwrap();
        assert!(again.welcome(&bad).is_err());
        let mut tx = initiator.welcome(&welcome).unwrap();
        let mut message = tx.send_transfer_key(&transfer(9)).unwrap();
        message[PREFIX_LEN + 20] ^= 0x80;
        assert_eq!(
            rx.receive_transfer_key(&message).unwrap_err(),
            CryptError::DoesNotVerify(Message::TransferKey)
        );
    }

    #[test]
    fn a_version_2_receiver_names_a_version_3_hello() {
        let (_, hello) = Initiator::start(&psk(), [1; 32]).unwrap();
        let prefix: [u8; PREFIX_LEN] = hello[..PREFIX_LEN].try_into().unwrap();
        let err = crate::wire::decode_prefix(&prefix, crate::wire::MessageKind::Hello).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("unsupported protocol version 3 in hello"),
            "{err}"
        );
    }

    #[test]
    fn a_version_2_peer_is_named() {
        let mut v2_hello = *b"TCHL\x00\x02\x00\x00\x00\x24";
        assert_eq!(
            decode_prefix(&v2_hello, Message::Hello),
            Err(CryptError::Version2Peer)
        );
        assert!(CryptError::Version2Peer.to_string().contains("version 2"));
        v2_hello[5] = 4;
        assert!(matches!(
            decode_prefix(&v2_hello, Message::Hello),
            Err(CryptError::UnsupportedVersion { found: 4, .. })
        ));
        assert!(matches!(
            decode_prefix(b"TCHD\x00\x03\x00\x00\x00\x30", Message::Hello),
            Err(CryptError::BadMagic { .. })
        ));
        assert!(matches!(
            decode_prefix(b"TCHL\x00\x03\x00\x00\x00\x31", Message::Hello),
            Err(CryptError::BodyLength { len: 49, .. })
        ));
        assert_eq!(
            decode_prefix(b"TCKY\x00\x03\x00\x00\x00\x40", Message::TransferKey),
            Ok(TRANSFER_BODY)
        );
    }

    /// `parts` sealed as one stream, the last part final.
    fn stream(transfer: &TransferKey, per_key: u64, parts: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut sealer = RecordSealer::new(transfer, per_key);
        parts
            .iter()
            .enumerate()
            .map(|(i, p)| sealer.seal(p, i + 1 == parts.len()).unwrap())
            .collect()
    }

    /// Opens `records` in order; the plaintext, or the first refusal (finish included).
    fn open(
        transfer: &TransferKey,
        per_key: u64,
        records: &[Vec<u8>],
    ) -> Result<Vec<u8>, CryptError> {
        let mut opener = RecordOpener::new(transfer, per_key);
        let mut out = Vec::new();
        for record in records {
            let (header, sealed) = record.split_first_chunk::<RECORD_HEADER_LEN>().unwrap();
            let header = RecordHeader::decode(*header)?;
            let mut sealed = sealed.to_vec();
            out.extend_from_slice(opener.open_in_place(header, &mut sealed)?);
        }
        opener.finish()?;
        Ok(out)
    }

    const PARTS: [&[u8]; 4] = [b"one ", b"two ", b"three ", b"four"];

    #[test]
    fn records_open_in_order() {
        let records = stream(&transfer(1), RECORDS_PER_KEY, &PARTS);
        assert_eq!(
            open(&transfer(1), RECORDS_PER_KEY, &records).unwrap(),
            b"one two three four"
        );
        assert!(!records.concat().windows(5).any(|w| w == b"three"));
        let full = vec![0xab; RECORD_LEN];
        let big = stream(&transfer(1), RECORDS_PER_KEY, &[&full, b""]);
        assert_eq!(big[0].len(), RECORD_HEADER_LEN + RECORD_LEN + TAG_LEN);
        assert_eq!(open(&transfer(1), RECORDS_PER_KEY, &big).unwrap(), full);
    }

    #[test]
    fn a_flipped_byte_is_refused() {
        let records = stream(&transfer(1), RECORDS_PER_KEY, &PARTS);
        for at in 0..records[1].len() {
            for bit in [0x01, 0x80] {
                let mut bad = records.clone();
                bad[1][at] ^= bit;
                let refused = open(&transfer(1), RECORDS_PER_KEY, &bad).unwrap_err();
                // A header that announces more than a record holds is refused as such.
                if !matches!(refused, CryptError::RecordTooLong(_)) {
                    assert_eq!(refused, CryptError::RecordRefused { index: 1 }, "byte {at}");
                }
            }
        }
    }

    #[test]
    fn dropped_repeated_and_reordered_records_are_refused() {
        let r = stream(&transfer(1), RECORDS_PER_KEY, &PARTS);
        let refused = |records: Vec<Vec<u8>>| open(&transfer(1), RECORDS_PER_KEY, &records);
        let dropped = vec![r[0].clone(), r[2].clone(), r[3].clone()];
        assert_eq!(
            refused(dropped),
            Err(CryptError::RecordRefused { index: 1 })
        );
        let repeated = vec![
            r[0].clone(),
            r[0].clone(),
            r[1].clone(),
            r[2].clone(),
            r[3].clone(),
        ];
        assert_eq!(
            refused(repeated),
            Err(CryptError::RecordRefused { index: 1 })
        );
        let reordered = vec![r[0].clone(), r[2].clone(), r[1].clone(), r[3].clone()];
        assert_eq!(
            refused(reordered),
            Err(CryptError::RecordRefused { index: 1 })
        );
        let after_final = [r.clone(), vec![r[3].clone()]].concat();
        assert_eq!(refused(after_final), Err(CryptError::AfterFinal(3)));
    }

    #[test]
    fn nothing_opens_after_a_refused_record() {
        let r = stream(&transfer(1), RECORDS_PER_KEY, &PARTS);
        let mut opener = RecordOpener::new(&transfer(1), RECORDS_PER_KEY);
        let mut next = |record: &[u8]| {
            let header = RecordHeader::decode(record[..4].try_into().unwrap()).unwrap();
            let mut sealed = record[RECORD_HEADER_LEN..].to_vec();
            opener
                .open_in_place(header, &mut sealed)
                .map(|p| p.to_vec())
        };
        assert_eq!(next(&r[0]).unwrap(), b"one ");
        assert_eq!(next(&r[2]), Err(CryptError::RecordRefused { index: 1 }));
        assert_eq!(next(&r[1]), Err(CryptError::RecordRefused { index: 1 }));
    }

    #[test]
    fn a_stream_cut_at_a_record_boundary_is_refused() {
        let r = stream(&transfer(1), RECORDS_PER_KEY, &PARTS);
        assert_eq!(
            open(&transfer(1), RECORDS_PER_KEY, &r[..3]),
            Err(CryptError::Truncated(3))
        );
        assert_eq!(
            open(&transfer(1), RECORDS_PER_KEY, &[]),
            Err(CryptError::Truncated(0))
        );
        // Marking a record final in its header, to end the stream there, fails its tag.
        let mut marked = r[..2].to_vec();
        marked[1][0] |= 0x80;
        assert_eq!(
            open(&transfer(1), RECORDS_PER_KEY, &marked),
            Err(CryptError::RecordRefused { index: 1 })
        );
    }

    #[test]
    fn a_record_from_another_transfer_is_refused() {
        // The same key under another transfer identifier, and another key with the same one.
        let r = stream(&transfer(1), RECORDS_PER_KEY, &PARTS);
        let other = stream(&transfer(2), RECORDS_PER_KEY, &PARTS);
        let mixed = vec![r[0].clone(), other[1].clone(), r[2].clone(), r[3].clone()];
        assert_eq!(
            open(&transfer(1), RECORDS_PER_KEY, &mixed),
            Err(CryptError::RecordRefused { index: 1 })
        );
        let other_key = TransferKey::new([1; TRANSFER_ID_LEN], [0x34; TRANSFER_KEY_LEN]);
        assert_eq!(
            open(&other_key, RECORDS_PER_KEY, &r),
            Err(CryptError::RecordRefused { index: 0 })
        );
    }

    #[test]
    fn the_ratchet_changes_the_key_every_per_key_records() {
        let parts: Vec<&[u8]> = vec![b"r0", b"r1", b"r2", b"r3", b"r4", b"r5", b"r6"];
        let ratcheted = stream(&transfer(1), 2, &parts);
        assert_eq!(
            open(&transfer(1), 2, &ratcheted).unwrap(),
            b"r0r1r2r3r4r5r6"
        );
        // Without the ratchet, records 0 and 1 open and record 2 does not: the key changed there.
        // (Nor does anything after a refusal, the right record included.)
        let mut opener = RecordOpener::new(&transfer(1), RECORDS_PER_KEY);
        for (i, record) in ratcheted.iter().enumerate() {
            let header = RecordHeader::decode(record[..4].try_into().unwrap()).unwrap();
            let mut sealed = record[RECORD_HEADER_LEN..].to_vec();
            let opened = opener
                .open_in_place(header, &mut sealed)
                .map(|p| p.to_vec());
            if i < 2 {
                assert_eq!(opened.unwrap(), parts[i]);
            } else {
                assert_eq!(opened, Err(CryptError::RecordRefused { index: 2 }));
                break;
            }
        }
        // Each run of two records has its own key: the same plaintext at the same index seals
        // differently from record 2 on, identically before.
        let unratcheted = stream(&transfer(1), RECORDS_PER_KEY, &parts);
        for i in 0..parts.len() {
            assert_eq!(ratcheted[i] == unratcheted[i], i < 2, "record {i}");
        }
        // An opener with another limit refuses from the first record under another key.
        assert_eq!(
            open(&transfer(1), 3, &ratcheted),
            Err(CryptError::RecordRefused { index: 2 })
        );
    }

    #[test]
    fn record_headers_carry_the_length_and_the_final_flag() {
        let h = RecordHeader {
            len: RECORD_LEN,
            last: true,
        };
        assert_eq!(h.encode(), [0x80, 0x01, 0x00, 0x00]);
        assert_eq!(RecordHeader::decode(h.encode()), Ok(h));
        assert_eq!(
            RecordHeader::decode([0, 0, 0, 0]),
            Ok(RecordHeader {
                len: 0,
                last: false
            })
        );
        assert_eq!(
            RecordHeader::decode([0x00, 0x01, 0x00, 0x01]),
            Err(CryptError::RecordTooLong(RECORD_LEN as u32 + 1))
        );
        assert_eq!(
            RecordHeader::decode([0xff; 4]),
            Err(CryptError::RecordTooLong(0x7fff_ffff))
        );
    }

    #[test]
    fn the_sealer_refuses_what_the_format_cannot_carry() {
        let mut sealer = RecordSealer::new(&transfer(1), RECORDS_PER_KEY);
        assert!(sealer.seal(&vec![0; RECORD_LEN + 1], false).is_none());
        assert!(sealer.seal(b"end", true).is_some());
        assert!(
            sealer.seal(b"more", false).is_none(),
            "a record after the final one"
        );
    }

    /// `wire` fed to a [`RecordReader`] in pieces of `piece` bytes: the plaintext, or the first
    /// refusal (finish included).
    fn read_in_pieces(wire: &[u8], piece: usize) -> Result<Vec<u8>, CryptError> {
        let mut reader = RecordReader::new(&transfer(1), RECORDS_PER_KEY);
        let mut out = Vec::new();
        let mut wire = wire;
        while !wire.is_empty() {
            let space = reader.space();
            assert!(
                space.len() >= FULL_RECORD,
                "room for a whole record at least"
            );
            let n = piece.min(space.len()).min(wire.len());
            space[..n].copy_from_slice(&wire[..n]);
            wire = &wire[n..];
            reader.filled(n, |plain| {
                out.extend_from_slice(plain);
                Ok::<(), CryptError>(())
            })?;
        }
        reader.finish()?;
        Ok(out)
    }

    #[test]
    fn the_reader_opens_records_whatever_the_pieces() {
        // Forty full records and a short final one: more than one read's worth of space.
        let plain: Vec<u8> = (0..40 * RECORD_LEN + 12_345)
            .map(|i| (i % 251) as u8)
            .collect();
        let parts: Vec<&[u8]> = plain.chunks(RECORD_LEN).collect();
        let wire = stream(&transfer(1), RECORDS_PER_KEY, &parts).concat();
        for piece in [
            1,
            3,
            4,
            5,
            4096,
            FULL_RECORD - 1,
            FULL_RECORD,
            FULL_RECORD + 1,
            1 << 20,
        ] {
            assert_eq!(
                read_in_pieces(&wire, piece).unwrap(),
                plain,
                "pieces of {piece}"
            );
        }
        let mut reader = RecordReader::new(&transfer(1), RECORDS_PER_KEY);
        let mut pushed = Vec::new();
        reader
            .push(&wire, |p| {
                pushed.extend_from_slice(p);
                Ok::<(), CryptError>(())
            })
            .unwrap();
        reader.finish().unwrap();
        assert_eq!(pushed, plain);
    }

    #[test]
    fn the_reader_refuses_what_the_opener_refuses() {
        let full = vec![7u8; RECORD_LEN];
        let wire = stream(&transfer(1), RECORDS_PER_KEY, &[&full, &full, b"end"]).concat();
        for piece in [7, 1 << 20] {
            // Cut at the last record's boundary.
            let cut = &wire[..2 * FULL_RECORD];
            assert_eq!(read_in_pieces(cut, piece), Err(CryptError::Truncated(2)));
            // A byte after the final record.
            let mut more = wire.clone();
            more.push(0);
            assert_eq!(read_in_pieces(&more, piece), Err(CryptError::AfterFinal(2)));
            // A flipped byte in the second record.
            let mut flipped = wire.clone();
            flipped[FULL_RECORD + 100] ^= 1;
            assert_eq!(
                read_in_pieces(&flipped, piece),
                Err(CryptError::RecordRefused { index: 1 })
            );
        }
        // A short record that is not the final one.
        let short = stream(&transfer(1), RECORDS_PER_KEY, &[b"short", b"end"]).concat();
        assert!(matches!(
            read_in_pieces(&short, 1 << 20),
            Err(CryptError::ShortRecord { index: 0, .. })
        ));
    }

    #[test]
    fn no_key_shows_in_debug_output() {
        let text = format!("{:?}", TransferKey::new([1; 16], [0xcd; 32]));
        assert!(!text.contains("cd") && !text.contains("205"), "{text}");
    }
}

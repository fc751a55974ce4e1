//! The teecast wire protocol, version 1: the framed messages a sender and a receiver
//! exchange around a payload, as pure code.
//!
//! Everything here turns bytes into values and values into bytes; nothing reads a socket,
//! a file or a clock. A session is: the sender sends a [`Header`], then the payload (either
//! exactly `length` raw bytes, or a sequence of chunks, each introduced by a
//! [chunk header](encode_chunk_header) and ended by a chunk header of length 0), then a
//! [`Trailer`]; the receiver answers with one [`Ack`].
//!
//! Every message is a [`PREFIX_LEN`]-byte prefix (magic, version, body length) followed by
//! its body. A reader first reads the prefix and calls [`decode_prefix`], which checks the
//! magic and version and bounds the body length, then reads exactly that many bytes and
//! hands them to the kind's `decode_body`. All integers are big-endian. Decoders never
//! panic: every way a peer's bytes can be wrong is a [`WireError`]. See `docs/PROTOCOL.md`
//! for the byte layouts.

use std::fmt;

use crate::digest::DigestAlgorithm;
pub use crate::text::{escape_if_needed, escape_text};
pub use crate::tree::{TRANSFER_ID_LEN, Tree};

/// The protocol version this module speaks (the only one it accepts). Version 2 opens every
/// session with a hello and a welcome, and seals keyed sessions ([`crate::auth`]).
pub const VERSION: u16 = 2;
/// The protocol version of an encrypted session (docs/PROTOCOL.md "Version 3 (encryption)"):
/// the handshake is Noise, and every message after it is sealed.
pub const ENCRYPTED_VERSION: u16 = 3;
/// The AEAD tag after every sealed message of version 3.
pub const TAG_LEN: usize = 16;
/// Length of the prefix in front of every message: magic (4), version (2), body length (4).
pub const PREFIX_LEN: usize = 10;
/// Length of the header in front of each chunk of an unknown-length payload.
pub const CHUNK_HEADER_LEN: usize = 4;
/// Largest chunk of an unknown-length payload, in bytes (16 MiB).
pub const MAX_CHUNK: u32 = 16 << 20;
/// Longest file name, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 255;
/// Most hosts of one relayed transfer (a header carries only the receiver's subtree of them).
pub const MAX_ROUTE_HOPS: usize = 10_000;
/// Longest ack message, in bytes of UTF-8.
pub const MAX_MESSAGE_LEN: usize = 1024;
/// Longest route hop (`host:port`), in bytes of UTF-8.
pub const MAX_HOP_LEN: usize = 255;
/// Longest digest a trailer or an ack may carry, in bytes.
pub const MAX_DIGEST_LEN: usize = 64;
/// Longest header body, in bytes (2.5 MiB: the longest name and a route of the longest hops,
/// which only the first host of a chain of [`MAX_ROUTE_HOPS`] gets near).
pub const MAX_HEADER_BODY: usize = 5 << 19;
/// Longest trailer body, in bytes.
pub const MAX_TRAILER_BODY: usize = 128;
/// Longest ack body, in bytes (3 MiB: a report, with the longest message, for every host of
/// the longest route).
pub const MAX_ACK_BODY: usize = 3 << 20;
/// Longest message of one host's report in an ack, in bytes of UTF-8.
pub const MAX_REPORT_MESSAGE_LEN: usize = 255;
/// Most host reports in one report message ([`Report`]).
pub const MAX_REPORTS_PER_MESSAGE: usize = 256;
/// Longest report body: a count and that many host reports, each with the longest message.
pub const MAX_REPORT_BODY: usize = 2 + MAX_REPORTS_PER_MESSAGE * (14 + MAX_REPORT_MESSAGE_LEN);
/// Length of a hello's or a welcome's nonce.
pub const NONCE_LEN: usize = 32;
/// Length of a proof or a seal (a keyed BLAKE3 output).
pub const MAC_LEN: usize = 32;
/// Length of a hello body: capabilities (4) and a nonce.
pub const HELLO_BODY: usize = 4 + NONCE_LEN;
/// Most keys a receiver holds at once (during a rotation: the old and the new), each proved in
/// its welcome.
pub const MAX_KEYS: usize = 4;
/// Longest welcome body: capabilities, a nonce, a proof length and a proof for each key.
pub const MAX_WELCOME_BODY: usize = 4 + NONCE_LEN + 1 + MAX_KEYS * MAC_LEN;

/// Capability bit 0 of a hello or welcome: this side holds a key and seals the session.
pub const CAP_KEYED: u32 = 0x01;
/// Hello capability bit: the sender reads report messages ([`Report`]) between its header and
/// the ack (a relayed session's sender sets it; version 3 implies it).
pub const CAP_REPORTS: u32 = 0x02;
/// Version 3: the body of the hello and of the welcome, a Noise handshake message (an
/// ephemeral X25519 public key, 32 bytes, and the tag of an empty payload).
pub const HANDSHAKE_BODY: usize = 32 + TAG_LEN;
/// Version 3: the body of the transfer-key message (the transfer's identifier and key, sealed).
pub const TRANSFER_KEY_BODY: usize = TRANSFER_ID_LEN + 32 + TAG_LEN;

/// Header flag bit 0: the payload length is known and sent as raw bytes.
const FLAG_LENGTH_KNOWN: u8 = 0x01;
/// Header flag bit 1: the stream is relayed along a tree over the route ([`Tree`]).
const FLAG_TREE: u8 = 0x02;
/// Header flag bit 2 (with bit 1 only): the stream resumes one this receiver already holds
/// part of ([`Tree::resume`]).
const FLAG_RESUME: u8 = 0x04;

/// The framed messages of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// Sender to receiver, first: capabilities and a nonce.
    Hello,
    /// Receiver to sender, the answer to the hello: capabilities, a nonce, and (keyed) the
    /// receiver's proof of the key.
    Welcome,
    /// A proof or a MAC under the key or the session key (keyed sessions only).
    Seal,
    /// Sender to receiver, before the payload.
    Header,
    /// Sender to receiver, after the payload.
    Trailer,
    /// Receiver to sender, after verifying the payload.
    Ack,
    /// Receiver to sender, after a resuming header: the payload bytes it already holds.
    Resume,
    /// Version 3, sender to receiver, after the handshake: the transfer's key, sealed.
    TransferKey,
    /// Receiver to sender, between the header and the ack, from a relay to a parent that takes
    /// them: the outcome of hosts below it as soon as each is known.
    Report,
}

impl MessageKind {
    /// Every kind.
    pub const ALL: [MessageKind; 9] = [
        Self::Hello,
        Self::Welcome,
        Self::Seal,
        Self::Header,
        Self::Trailer,
        Self::Ack,
        Self::Resume,
        Self::TransferKey,
        Self::Report,
    ];

    /// The four bytes that open a message of this kind.
    pub fn magic(self) -> [u8; 4] {
        match self {
            Self::Hello => *b"TCHL",
            Self::Welcome => *b"TCWL",
            Self::Seal => *b"TCSL",
            Self::Header => *b"TCHD",
            Self::Trailer => *b"TCTR",
            Self::Ack => *b"TCAK",
            Self::Resume => *b"TCRS",
            Self::TransferKey => *b"TCKY",
            Self::Report => *b"TCRP",
        }
    }

    /// The longest body a message of this kind may announce.
    pub fn max_body_len(self) -> usize {
        match self {
            Self::Hello => HELLO_BODY,
            Self::Welcome => MAX_WELCOME_BODY,
            Self::Seal => MAC_LEN,
            Self::Header => MAX_HEADER_BODY,
            Self::Trailer => MAX_TRAILER_BODY,
            Self::Ack => MAX_ACK_BODY,
            Self::Resume => 8,
            Self::TransferKey => TRANSFER_KEY_BODY,
            Self::Report => MAX_REPORT_BODY,
        }
    }

    /// The longest body a message of this kind may announce in version 3: the handshake's
    /// exact sizes, and every other message sealed whole (its tag added).
    pub fn sealed_max_body_len(self) -> usize {
        match self {
            Self::Hello | Self::Welcome => HANDSHAKE_BODY,
            Self::Seal => 0,
            Self::TransferKey => TRANSFER_KEY_BODY,
            other => other.max_body_len() + TAG_LEN,
        }
    }

    /// The kind's name with its indefinite article, for messages.
    fn with_article(self) -> &'static str {
        match self {
            Self::Hello => "a hello",
            Self::Welcome => "a welcome",
            Self::Seal => "a seal",
            Self::Header => "a header",
            Self::Trailer => "a trailer",
            Self::Ack => "an ack",
            Self::Resume => "a resume",
            Self::TransferKey => "a transfer key",
            Self::Report => "a report",
        }
    }
}

impl MessageKind {
    /// The kind's name, as messages show it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::Welcome => "welcome",
            Self::Seal => "seal",
            Self::Header => "header",
            Self::Trailer => "trailer",
            Self::Ack => "ack",
            Self::Resume => "resume",
            Self::TransferKey => "transfer key",
            Self::Report => "report",
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a file name was refused (see [`validate_name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameProblem {
    /// The name is the empty string.
    #[error("it is empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    #[error("it is {0} bytes long; at most 255 are allowed")]
    TooLong(usize),
    /// The name is `.`, the current directory.
    #[error("\".\" names a directory, not a file")]
    Dot,
    /// The name starts with `/`.
    #[error("it is an absolute path; send a bare file name")]
    Absolute,
    /// The name contains `..`, which could climb out of the receiver's directory.
    #[error("it contains \"..\"")]
    DotDot,
    /// The name contains `/`.
    #[error("it contains '/'; send a bare file name, not a path")]
    Slash,
    /// The name contains `\`.
    #[error("it contains '\\'")]
    Backslash,
    /// The name contains a NUL byte.
    #[error("it contains a NUL byte")]
    Nul,
    /// The name contains a control character (C0 below U+0020, DEL, or C1 U+0080–U+009F, which
    /// some terminals obey) other than NUL.
    #[error("it contains the control character U+{:04X}", u32::from(*.0))]
    Control(char),
}

/// Why a route hop was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HopProblem {
    /// The hop is the empty string.
    #[error("it is empty")]
    Empty,
    /// The hop is longer than [`MAX_HOP_LEN`] bytes.
    #[error("it is {0} bytes long; at most 255 are allowed")]
    TooLong(usize),
    /// The hop contains a NUL byte.
    #[error("it contains a NUL byte")]
    Nul,
    /// The hop contains whitespace.
    #[error("it contains whitespace")]
    Whitespace,
    /// The hop contains a control character.
    #[error("it contains a control character")]
    Control,
    /// The hop has no `:port` part.
    #[error("it has no ':port'; expected host:port")]
    MissingPort,
    /// The hop has nothing before the `:`.
    #[error("its host is empty; expected host:port")]
    EmptyHost,
    /// The part after the last `:` is not a port number from 1 to 65535.
    #[error("its port is not a number from 1 to 65535")]
    BadPort,
}

/// Every way a peer's bytes (or a value about to be encoded) can be wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The prefix does not open with the magic of the expected message.
    #[error(
        "bad magic: expected \"{}\", found {} — {}",
        expected.magic().escape_ascii(),
        show_magic(found),
        magic_hint(*expected, found)
    )]
    BadMagic {
        /// The kind of message that was expected.
        expected: MessageKind,
        /// The four bytes that arrived instead.
        found: [u8; 4],
    },
    /// The prefix carries a protocol version this teecast does not speak.
    #[error(
        "unsupported protocol version {found} in {kind}: this teecast speaks version {VERSION}, and {ENCRYPTED_VERSION} encrypted — run the same teecast release on both ends"
    )]
    UnsupportedVersion {
        /// The kind of message that carried it.
        kind: MessageKind,
        /// The version that arrived.
        found: u16,
    },
    /// The body is longer than its kind allows.
    #[error("{kind} body of {len} bytes is longer than the limit of {max} bytes")]
    BodyTooLong {
        /// The kind of message.
        kind: MessageKind,
        /// The announced (or given) body length.
        len: u64,
        /// The limit for this kind.
        max: usize,
    },
    /// The body ends before a field it needs.
    #[error("truncated {kind}: the body ends inside the {field} field")]
    Truncated {
        /// The kind of message.
        kind: MessageKind,
        /// The field that did not fit.
        field: &'static str,
    },
    /// Bytes are left over after the last field.
    #[error("{kind} body has {count} unexpected trailing byte(s) after its last field")]
    TrailingBytes {
        /// The kind of message.
        kind: MessageKind,
        /// How many bytes were left over.
        count: usize,
    },
    /// The file name is not acceptable.
    #[error("invalid file name {}: {reason}", show_text(name))]
    InvalidName {
        /// The name that was refused.
        name: String,
        /// Why.
        reason: NameProblem,
    },
    /// A text field is not valid UTF-8.
    #[error("the {field} field of {} is not valid UTF-8", kind.with_article())]
    InvalidUtf8 {
        /// The kind of message.
        kind: MessageKind,
        /// The field.
        field: &'static str,
    },
    /// The header names a digest algorithm id this teecast does not know.
    #[error("unknown digest algorithm id {0}: this teecast knows {known}", known = known_digests())]
    UnknownDigest(u8),
    /// A digest has the wrong length for its algorithm.
    #[error("the trailer's {algorithm} digest is {found} bytes long; it must be {expected}")]
    DigestLength {
        /// The algorithm announced in the header.
        algorithm: DigestAlgorithm,
        /// The algorithm's output length.
        expected: usize,
        /// The length that arrived.
        found: usize,
    },
    /// An ack carries a digest longer than any algorithm produces.
    #[error("the ack's digest is {found} bytes long; at most {max} are allowed", max = MAX_DIGEST_LEN)]
    DigestTooLong {
        /// The length that arrived.
        found: usize,
    },
    /// The header's flags have bits set that this version does not define.
    #[error(
        "header flags 0x{0:02x} have unknown bits set; only bits 0 (length known) and 1 (relayed) are defined"
    )]
    BadFlags(u8),
    /// A relayed header's stall or connect timeout is 0.
    #[error("the relay tree's {field} is 0 ms")]
    ZeroTimeout {
        /// Which timeout.
        field: &'static str,
    },
    /// A relayed header has hops in the route field: its route is in its tree section.
    #[error("a relayed header carries {0} hops outside its tree section")]
    RouteOutsideTree(usize),
    /// A relayed header's tree does not fit its route.
    #[error(
        "the relay tree (fan-out {fanout}, position {position}) does not fit a route of {hops} hops"
    )]
    BadTree {
        /// Children per host.
        fanout: u8,
        /// The receiver's place in the route, from 1.
        position: u16,
        /// Hops in the route.
        hops: usize,
    },
    /// The header says the length is unknown but carries a nonzero length.
    #[error("the header says the length is unknown but carries length {0}; it must be 0")]
    BadLength(u64),
    /// A report message holds no host report, or more than one may.
    #[error("a report of {0} hosts; 1 to {max} are allowed", max = MAX_REPORTS_PER_MESSAGE)]
    ReportCount(usize),
    /// The header's route has too many hops.
    #[error("the route has {hops} hops; at most {max} are allowed", max = MAX_ROUTE_HOPS)]
    RouteTooLong {
        /// How many hops it has.
        hops: usize,
    },
    /// A route hop is not acceptable.
    #[error("invalid route hop {index} {}: {reason}", show_text(hop))]
    InvalidHop {
        /// The hop's position in the route, from 0.
        index: usize,
        /// The hop that was refused.
        hop: String,
        /// Why.
        reason: HopProblem,
    },
    /// A chunk header announces more than [`MAX_CHUNK`] bytes.
    #[error("chunk of {0} bytes is longer than the limit of {max} bytes (16 MiB)", max = MAX_CHUNK)]
    ChunkTooLong(u32),
    /// An ack carries a status code this teecast does not know.
    #[error("unknown ack status {0}: this teecast knows 0 to 5")]
    UnknownStatus(u8),
    /// An ack's message is longer than [`MAX_MESSAGE_LEN`] bytes.
    #[error("the ack's message is {0} bytes long; at most {max} are allowed", max = MAX_MESSAGE_LEN)]
    MessageTooLong(usize),
    /// A proof or seal is not the expected [`MAC_LEN`] bytes.
    #[error("{} of {found} bytes; it must be {expected}", kind.with_article())]
    MacLength {
        /// The kind of message that carried it.
        kind: MessageKind,
        /// The length that arrived.
        found: usize,
        /// The length expected.
        expected: usize,
    },
    /// A proof or seal does not verify under the key: the peer does not hold the same key, or
    /// the bytes were changed, replayed or taken from another session.
    #[error("the {0} does not verify under the key: another key, or changed or replayed bytes")]
    BadSeal(&'static str),
    /// This side holds a key and the peer does not.
    #[error("the peer has no key; both ends need the same key")]
    PeerUnkeyed,
    /// The peer holds a key and this side does not.
    #[error("the peer requires a key; both ends need the same key")]
    KeyRequired,
    /// A message was handed to the session before its turn or after it (a caller's calls, or
    /// the two ends, out of step): no matter of keys.
    #[error("{} came out of its turn in the session: the two ends are out of step", .0.with_article())]
    OutOfTurn(MessageKind),
    /// A keyed session announced a digest that does not resist deliberate collisions.
    #[error("a keyed session needs a cryptographic digest (blake3 or sha256), not {0}")]
    WeakDigest(DigestAlgorithm),
}

/// Hex of four bytes plus their printable form, e.g. `47 45 54 20 ("GET ")`.
fn show_magic(found: &[u8; 4]) -> String {
    let [a, b, c, d] = *found;
    format!(
        "{a:02x} {b:02x} {c:02x} {d:02x} (\"{}\")",
        found.escape_ascii()
    )
}

/// The likely cause of a bad magic, for the error message.
fn magic_hint(expected: MessageKind, found: &[u8; 4]) -> String {
    if let Some(other) = MessageKind::ALL.into_iter().find(|k| k.magic() == *found) {
        return format!(
            "that is {} where {} belongs: the two ends are out of step",
            other.with_article(),
            expected.with_article()
        );
    }
    match expected {
        MessageKind::Header => {
            "is the sender speaking the teecast protocol? (a bare stream needs a raw receiver)"
        }
        MessageKind::Trailer => {
            "the sender sent more payload than it announced, or is not speaking the teecast protocol"
        }
        MessageKind::Ack => "is the receiver a teecast receiver, and not a raw one?",
        MessageKind::Hello => {
            "is the sender a teecast sender of this version? (a bare stream needs a raw receiver)"
        }
        MessageKind::Welcome => {
            "is the receiver a teecast receiver of this version, and not a raw one?"
        }
        MessageKind::Seal => "the peer does not hold a key, or the two ends are out of step",
        MessageKind::Resume => "is the receiver a teecast receiver of a version that resumes?",
        MessageKind::TransferKey => "the two ends are out of step",
        MessageKind::Report => "the two ends are out of step",
    }
    .to_string()
}

/// Peer-supplied text made safe for a one-line message or a terminal: quoted, every control
/// character (escape sequences included) escaped, cut at 64 chars.
fn show_text(text: &str) -> String {
    escape_text(text, 64)
}

/// "0 (none), 1 (blake3), ..." for the unknown-digest message.
fn known_digests() -> String {
    DigestAlgorithm::ALL
        .iter()
        .map(|a| format!("{} ({})", a.id(), a.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Validates a version-2 prefix for the expected kind and returns the body length to read next.
pub fn decode_prefix(prefix: &[u8; PREFIX_LEN], expected: MessageKind) -> Result<usize, WireError> {
    decode_versioned_prefix(prefix, expected, VERSION)
}

/// Validates a prefix of `version` (2, or 3 for an encrypted session, whose limits are
/// [`MessageKind::sealed_max_body_len`]) for the expected kind and returns the body length.
pub fn decode_versioned_prefix(
    prefix: &[u8; PREFIX_LEN],
    expected: MessageKind,
    version: u16,
) -> Result<usize, WireError> {
    let [m0, m1, m2, m3, v0, v1, l0, l1, l2, l3] = *prefix;
    let found = [m0, m1, m2, m3];
    // A teecast message of another version (any kind: a version-1 sender opens with a header
    // where a hello belongs) is named by its version, the likelier cause.
    let wanted = version;
    let version = u16::from_be_bytes([v0, v1]);
    let teecast = MessageKind::ALL.into_iter().any(|k| k.magic() == found);
    if found != expected.magic() && !(teecast && version != wanted) {
        return Err(WireError::BadMagic { expected, found });
    }
    if version != wanted {
        return Err(WireError::UnsupportedVersion {
            kind: expected,
            found: version,
        });
    }
    let max = match version {
        ENCRYPTED_VERSION => expected.sealed_max_body_len(),
        _ => expected.max_body_len(),
    };
    let len = u32::from_be_bytes([l0, l1, l2, l3]);
    match usize::try_from(len) {
        Ok(len) if len <= max => Ok(len),
        _ => Err(WireError::BodyTooLong {
            kind: expected,
            len: u64::from(len),
            max,
        }),
    }
}

/// Prefix + body, after checking the body fits its kind's limit: the whole message.
pub fn frame(kind: MessageKind, body: &[u8]) -> Result<Vec<u8>, WireError> {
    let too_long = || WireError::BodyTooLong {
        kind,
        len: u64::try_from(body.len()).unwrap_or(u64::MAX),
        max: kind.max_body_len(),
    };
    if body.len() > kind.max_body_len() {
        return Err(too_long());
    }
    u32::try_from(body.len()).map_err(|_| too_long())?;
    Ok(prefixed(kind.magic(), VERSION, body))
}

/// `magic`, `version`, the body's length and `body`: a whole message, its length unchecked
/// (the caller's messages fit their limits by construction).
pub fn prefixed(magic: [u8; 4], version: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX_LEN + body.len());
    out.extend_from_slice(&magic);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Checks a body handed straight to a decoder against its kind's limit.
fn check_body_len(kind: MessageKind, body: &[u8]) -> Result<(), WireError> {
    if body.len() > kind.max_body_len() {
        return Err(WireError::BodyTooLong {
            kind,
            len: u64::try_from(body.len()).unwrap_or(u64::MAX),
            max: kind.max_body_len(),
        });
    }
    Ok(())
}

/// A cursor over a message body that turns running out of bytes into [`WireError::Truncated`].
struct Reader<'a> {
    kind: MessageKind,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(kind: MessageKind, body: &'a [u8]) -> Self {
        Reader { kind, rest: body }
    }

    fn truncated(&self, field: &'static str) -> WireError {
        WireError::Truncated {
            kind: self.kind,
            field,
        }
    }

    fn bytes(&mut self, len: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        let (taken, rest) = self
            .rest
            .split_at_checked(len)
            .ok_or_else(|| self.truncated(field))?;
        self.rest = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        let (taken, rest) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or_else(|| self.truncated(field))?;
        self.rest = rest;
        Ok(*taken)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        self.array::<1>(field).map(|[b]| b)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        self.array(field).map(u16::from_be_bytes)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        self.array(field).map(u32::from_be_bytes)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        self.array(field).map(u64::from_be_bytes)
    }

    fn text(&mut self, len: usize, field: &'static str) -> Result<String, WireError> {
        let bytes = self.bytes(len, field)?;
        let text = std::str::from_utf8(bytes).map_err(|_| WireError::InvalidUtf8 {
            kind: self.kind,
            field,
        })?;
        Ok(text.to_string())
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn finish(self) -> Result<(), WireError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes {
                kind: self.kind,
                count: self.rest.len(),
            })
        }
    }
}

/// Checks that `name` is a bare file name the receiver may create in its directory.
///
/// Refused: the empty name, names over [`MAX_NAME_LEN`] bytes, `.`, absolute paths, anything
/// containing `..`, `/`, `\`, NUL or another control character (below 0x20, or 0x7f).
pub fn validate_name(name: &str) -> Result<(), WireError> {
    let problem = if name.is_empty() {
        Some(NameProblem::Empty)
    } else if name.len() > MAX_NAME_LEN {
        Some(NameProblem::TooLong(name.len()))
    } else if name == "." {
        Some(NameProblem::Dot)
    } else if name.starts_with('/') {
        Some(NameProblem::Absolute)
    } else if name.contains("..") {
        Some(NameProblem::DotDot)
    } else if name.contains('/') {
        Some(NameProblem::Slash)
    } else if name.contains('\\') {
        Some(NameProblem::Backslash)
    } else if name.contains('\0') {
        Some(NameProblem::Nul)
    } else {
        name.chars()
            .find(|c| c.is_control())
            .map(NameProblem::Control)
    };
    match problem {
        None => Ok(()),
        Some(reason) => Err(WireError::InvalidName {
            name: name.to_string(),
            reason,
        }),
    }
}

/// Checks that hop `index` of a route is `host:port` text (1..=255 bytes, no NUL, no
/// whitespace, no control characters, a port from 1 to 65535).
fn validate_hop(index: usize, hop: &str) -> Result<(), WireError> {
    let problem = if hop.is_empty() {
        Some(HopProblem::Empty)
    } else if hop.len() > MAX_HOP_LEN {
        Some(HopProblem::TooLong(hop.len()))
    } else if hop.contains('\0') {
        Some(HopProblem::Nul)
    } else if hop.chars().any(char::is_whitespace) {
        Some(HopProblem::Whitespace)
    } else if hop.chars().any(char::is_control) {
        Some(HopProblem::Control)
    } else {
        match hop.rsplit_once(':') {
            None => Some(HopProblem::MissingPort),
            Some(("", _)) => Some(HopProblem::EmptyHost),
            Some((_, port)) if !valid_port(port) => Some(HopProblem::BadPort),
            Some(_) => None,
        }
    };
    match problem {
        None => Ok(()),
        Some(reason) => Err(WireError::InvalidHop {
            index,
            hop: hop.to_string(),
            reason,
        }),
    }
}

/// Decimal digits only, 1 to 65535.
fn valid_port(port: &str) -> bool {
    !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|p| p != 0)
}

/// What the sender announces before the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The file name the receiver stores the payload under (see [`validate_name`]).
    pub name: String,
    /// The payload length, when known up front; `None` means a chunked payload.
    pub length: Option<u64>,
    /// The digest algorithm the trailer's digest uses.
    pub digest: DigestAlgorithm,
    /// Every host (`host:port`) of a relayed transfer, in order; empty when sent directly.
    pub route: Vec<String>,
    /// Where in the relay tree over `route` the receiver is; `None` when sent directly.
    pub tree: Option<Tree>,
}

/// Whether `tree` fits a route of `hops` hosts, with timeouts above zero.
fn check_tree(tree: Tree, hops: usize) -> Result<(), WireError> {
    if tree.stall_ms == 0 {
        return Err(WireError::ZeroTimeout {
            field: "stall timeout",
        });
    }
    if tree.connect_ms == 0 {
        return Err(WireError::ZeroTimeout {
            field: "connect timeout",
        });
    }
    if tree.fanout == 0 || tree.position == 0 || usize::from(tree.position) > hops {
        return Err(WireError::BadTree {
            fanout: tree.fanout,
            position: tree.position,
            hops,
        });
    }
    Ok(())
}

impl Header {
    /// This header as sent to the host at `position` of its tree (itself when not relayed).
    pub fn for_position(&self, position: usize) -> Header {
        let mut h = self.clone();
        if let Some(t) = &mut h.tree {
            t.position = u16::try_from(position).unwrap_or(u16::MAX);
        }
        h
    }

    /// The positions of the route this header carries on the wire: for a relayed header the
    /// receiver's subtree, else every hop.
    fn carried_positions(&self) -> Vec<usize> {
        match self.tree {
            Some(t) => Tree::subtree(t.fanout, usize::from(t.position), self.route.len()),
            None => (1..=self.route.len()).collect(),
        }
    }

    /// Encodes prefix and body, after validating the name and route.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        validate_name(&self.name)?;
        if self.route.len() > MAX_ROUTE_HOPS {
            return Err(WireError::RouteTooLong {
                hops: self.route.len(),
            });
        }
        let name_len = u16::try_from(self.name.len()).map_err(|_| WireError::InvalidName {
            name: self.name.clone(),
            reason: NameProblem::TooLong(self.name.len()),
        })?;
        // A relayed header carries, in its tree section, the receiver's subtree of the route
        // (itself and every host below it, by position): the others are not its business. A
        // direct stream's route (checked, then ignored) is carried as it is.
        let carried = self.carried_positions();
        for (index, hop) in self.route.iter().enumerate() {
            if !hop.is_empty() || carried.binary_search(&(index + 1)).is_ok() {
                validate_hop(index, hop)?;
            }
        }
        let route_count = match self.tree {
            Some(_) => 0,
            None => u8::try_from(self.route.len()).map_err(|_| WireError::RouteTooLong {
                hops: self.route.len(),
            })?,
        };
        let mut body = Vec::with_capacity(64);
        body.extend_from_slice(&name_len.to_be_bytes());
        body.extend_from_slice(self.name.as_bytes());
        let (mut flags, length) = match self.length {
            Some(length) => (FLAG_LENGTH_KNOWN, length),
            None => (0, 0),
        };
        if let Some(tree) = self.tree {
            check_tree(tree, self.route.len())?;
            flags |= FLAG_TREE;
            if tree.resume {
                flags |= FLAG_RESUME;
            }
        }
        body.push(flags);
        body.extend_from_slice(&length.to_be_bytes());
        body.push(self.digest.id());
        body.push(route_count);
        let push_hops = |body: &mut Vec<u8>, positions: &[usize]| {
            for &position in positions {
                let hop = &self.route[position - 1];
                // Validated above: at most MAX_HOP_LEN (255) bytes.
                body.push(hop.len() as u8);
                body.extend_from_slice(hop.as_bytes());
            }
        };
        if let Some(tree) = self.tree {
            body.push(tree.fanout);
            body.extend_from_slice(&tree.position.to_be_bytes());
            body.extend_from_slice(&tree.transfer);
            body.extend_from_slice(&tree.stall_ms.to_be_bytes());
            body.extend_from_slice(&tree.connect_ms.to_be_bytes());
            // At most MAX_ROUTE_HOPS (10,000), checked above: fits.
            body.extend_from_slice(&(self.route.len() as u16).to_be_bytes());
            push_hops(&mut body, &carried);
        } else {
            push_hops(&mut body, &carried);
        }
        frame(MessageKind::Header, &body)
    }

    /// Decodes a header body (the bytes after the prefix).
    pub fn decode_body(body: &[u8]) -> Result<Header, WireError> {
        check_body_len(MessageKind::Header, body)?;
        let mut r = Reader::new(MessageKind::Header, body);
        let name_len = r.u16("name length")?;
        let name = r.text(usize::from(name_len), "name")?;
        validate_name(&name)?;
        let flags = r.u8("flags")?;
        let resume_without_tree = flags & FLAG_RESUME != 0 && flags & FLAG_TREE == 0;
        if flags & !(FLAG_LENGTH_KNOWN | FLAG_TREE | FLAG_RESUME) != 0 || resume_without_tree {
            return Err(WireError::BadFlags(flags));
        }
        let length = r.u64("length")?;
        let length = if flags & FLAG_LENGTH_KNOWN != 0 {
            Some(length)
        } else if length != 0 {
            return Err(WireError::BadLength(length));
        } else {
            None
        };
        let id = r.u8("digest algorithm")?;
        let digest = DigestAlgorithm::from_id(id).ok_or(WireError::UnknownDigest(id))?;
        let hops = usize::from(r.u8("route count")?);
        let read_hops = |r: &mut Reader<'_>, count: usize| -> Result<Vec<String>, WireError> {
            let mut hops = Vec::with_capacity(count.min(r.rest.len()));
            for index in 0..count {
                let hop_len = r.u8("route hop length")?;
                let hop = r.text(usize::from(hop_len), "route hop")?;
                validate_hop(index, &hop)?;
                hops.push(hop);
            }
            Ok(hops)
        };
        let mut route = read_hops(&mut r, hops)?;
        let tree = if flags & FLAG_TREE != 0 {
            if hops != 0 {
                return Err(WireError::RouteOutsideTree(hops));
            }
            let fanout = r.u8("fan-out")?;
            let position = r.u16("position")?;
            let transfer = r.array("transfer id")?;
            let stall_ms = r.u32("stall timeout")?;
            let connect_ms = r.u32("connect timeout")?;
            let hosts = usize::from(r.u16("hosts")?);
            if hosts > MAX_ROUTE_HOPS {
                return Err(WireError::RouteTooLong { hops: hosts });
            }
            let tree = Tree {
                fanout,
                position,
                transfer,
                resume: flags & FLAG_RESUME != 0,
                stall_ms,
                connect_ms,
            };
            check_tree(tree, hosts)?;
            // The hops that follow are the receiver's subtree, by position: each in its place.
            let positions = Tree::subtree(fanout, usize::from(position), hosts);
            let carried = read_hops(&mut r, positions.len())?;
            route = vec![String::new(); hosts];
            for (p, hop) in positions.into_iter().zip(carried) {
                route[p - 1] = hop;
            }
            Some(tree)
        } else {
            None
        };
        r.finish()?;
        Ok(Header {
            name,
            length,
            digest,
            route,
            tree,
        })
    }
}

/// What the sender sends after the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// Total payload bytes sent, excluding chunk headers.
    pub length: u64,
    /// The payload's digest under the header's algorithm (empty for `none`).
    pub digest: Vec<u8>,
}

impl Trailer {
    /// Encodes prefix and body. A digest over [`MAX_DIGEST_LEN`] bytes (which no
    /// algorithm produces) is cut to that length.
    pub fn encode(&self) -> Vec<u8> {
        let digest = self.digest.get(..MAX_DIGEST_LEN).unwrap_or(&self.digest);
        let mut body = Vec::with_capacity(9 + digest.len());
        body.extend_from_slice(&self.length.to_be_bytes());
        push_digest(&mut body, digest);
        frame_bounded(MessageKind::Trailer, &body)
    }

    /// Decodes a trailer body; `algorithm` is the one the header announced.
    pub fn decode_body(body: &[u8], algorithm: DigestAlgorithm) -> Result<Trailer, WireError> {
        check_body_len(MessageKind::Trailer, body)?;
        let mut r = Reader::new(MessageKind::Trailer, body);
        let length = r.u64("length")?;
        let digest_len = usize::from(r.u8("digest length")?);
        if digest_len != algorithm.output_len() {
            return Err(WireError::DigestLength {
                algorithm,
                expected: algorithm.output_len(),
                found: digest_len,
            });
        }
        let digest = r.bytes(digest_len, "digest")?.to_vec();
        r.finish()?;
        Ok(Trailer { length, digest })
    }
}

/// Appends `len u8` + digest; callers keep the digest within [`MAX_DIGEST_LEN`].
fn push_digest(body: &mut Vec<u8>, digest: &[u8]) {
    let len = u8::try_from(digest.len()).unwrap_or(u8::MAX);
    body.push(len);
    body.extend_from_slice(digest.get(..usize::from(len)).unwrap_or(digest));
}

/// Frames a body whose length is bounded by construction (trailer, ack).
fn frame_bounded(kind: MessageKind, body: &[u8]) -> Vec<u8> {
    debug_assert!(body.len() <= kind.max_body_len());
    frame(kind, body).unwrap_or_default()
}

/// The receiver's verdict on a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckStatus {
    /// Length and digest matched; the file is stored under its name. (0)
    Ok,
    /// The receiver's digest differs from the trailer's; nothing is kept. (1)
    DigestMismatch,
    /// The bytes received differ from the header's or the trailer's length; nothing is kept. (2)
    LengthMismatch,
    /// The receiver refused the transfer (name, policy, existing file); nothing is kept. (3)
    Rejected,
    /// The receiver could not write, sync or rename the file; nothing is kept. (4)
    IoError,
    /// The payload ended before it should have; nothing is kept. (5)
    Truncated,
    /// In a relay's report: the host was not reached, or its connection broke without an
    /// answer; the message says why. (6)
    Unreached,
    /// Another parent resumed this stream here (its old parent was cut off): this connection
    /// ends, and the host reports through its new parent. (7)
    Adopted,
}

impl AckStatus {
    /// Every status, in code order.
    pub const ALL: [AckStatus; 8] = [
        Self::Ok,
        Self::DigestMismatch,
        Self::LengthMismatch,
        Self::Rejected,
        Self::IoError,
        Self::Truncated,
        Self::Unreached,
        Self::Adopted,
    ];

    /// The code carried on the wire.
    pub fn code(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::DigestMismatch => 1,
            Self::LengthMismatch => 2,
            Self::Rejected => 3,
            Self::IoError => 4,
            Self::Truncated => 5,
            Self::Unreached => 6,
            Self::Adopted => 7,
        }
    }

    /// The status with wire code `code`, if there is one.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }

    /// The name used in reports: `ok`, `digest-mismatch`, `length-mismatch`, `rejected`,
    /// `io-error`, `truncated`, `unreached`, `adopted`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::DigestMismatch => "digest-mismatch",
            Self::LengthMismatch => "length-mismatch",
            Self::Rejected => "rejected",
            Self::IoError => "io-error",
            Self::Truncated => "truncated",
            Self::Unreached => "unreached",
            Self::Adopted => "adopted",
        }
    }
}

impl fmt::Display for AckStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The receiver's answer, after the trailer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The verdict.
    pub status: AckStatus,
    /// Payload bytes the receiver got.
    pub bytes: u64,
    /// The receiver's own digest of what it got (empty if it has none).
    pub digest: Vec<u8>,
    /// A human-readable explanation (empty when there is nothing to add).
    pub message: String,
    /// From a relay: the outcome of every host below it (empty from a host that relays
    /// nothing).
    pub reports: Vec<HostReport>,
}

/// One host's outcome in a relay's acknowledgement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostReport {
    /// The host's position in the route (from 1).
    pub position: u16,
    /// The position of the host that served it, or tried to (0: the sender): its parent in the
    /// tree, or the host that adopted it when its parent could not be reached.
    pub parent: u16,
    /// Its verdict.
    pub status: AckStatus,
    /// Payload bytes it got.
    pub bytes: u64,
    /// Why, when it failed (at most [`MAX_REPORT_MESSAGE_LEN`] bytes).
    pub message: String,
}

impl Ack {
    /// Encodes prefix and body. A message over [`MAX_MESSAGE_LEN`] bytes is cut at the last
    /// char boundary that fits; a digest over [`MAX_DIGEST_LEN`] bytes is cut to that length.
    pub fn encode(&self) -> Vec<u8> {
        let digest = self.digest.get(..MAX_DIGEST_LEN).unwrap_or(&self.digest);
        let message = truncate_at_char_boundary(&self.message, MAX_MESSAGE_LEN);
        let message_len = u16::try_from(message.len()).unwrap_or(0);
        let message = message.get(..usize::from(message_len)).unwrap_or("");
        let mut body = Vec::with_capacity(12 + digest.len() + message.len());
        body.push(self.status.code());
        body.extend_from_slice(&self.bytes.to_be_bytes());
        push_digest(&mut body, digest);
        body.extend_from_slice(&message_len.to_be_bytes());
        body.extend_from_slice(message.as_bytes());
        if !self.reports.is_empty() {
            let reports = self.reports.get(..MAX_ROUTE_HOPS).unwrap_or(&self.reports);
            // At most MAX_ROUTE_HOPS (10,000): fits.
            body.extend_from_slice(&(reports.len() as u16).to_be_bytes());
            for report in reports {
                report.encode_into(&mut body);
            }
        }
        frame_bounded(MessageKind::Ack, &body)
    }

    /// Decodes an ack body.
    pub fn decode_body(body: &[u8]) -> Result<Ack, WireError> {
        check_body_len(MessageKind::Ack, body)?;
        let mut r = Reader::new(MessageKind::Ack, body);
        let code = r.u8("status")?;
        let status = AckStatus::from_code(code).ok_or(WireError::UnknownStatus(code))?;
        let bytes = r.u64("bytes")?;
        let digest_len = usize::from(r.u8("digest length")?);
        if digest_len > MAX_DIGEST_LEN {
            return Err(WireError::DigestTooLong { found: digest_len });
        }
        let digest = r.bytes(digest_len, "digest")?.to_vec();
        let message_len = usize::from(r.u16("message length")?);
        if message_len > MAX_MESSAGE_LEN {
            return Err(WireError::MessageTooLong(message_len));
        }
        let message = r.text(message_len, "message")?;
        let mut reports = Vec::new();
        if !r.is_empty() {
            let count = usize::from(r.u16("report count")?);
            if count == 0 {
                // An ack without reports has no report section: one encoding per ack.
                return Err(WireError::TrailingBytes {
                    kind: MessageKind::Ack,
                    count: 2,
                });
            }
            if count > MAX_ROUTE_HOPS {
                return Err(WireError::RouteTooLong { hops: count });
            }
            for _ in 0..count {
                reports.push(HostReport::decode_from(&mut r)?);
            }
        }
        r.finish()?;
        Ok(Ack {
            status,
            bytes,
            digest,
            message,
            reports,
        })
    }
}

impl HostReport {
    /// Appends its encoding: position, parent, status, bytes, message (cut to
    /// [`MAX_REPORT_MESSAGE_LEN`] bytes at a char boundary) after its length in one byte.
    fn encode_into(&self, body: &mut Vec<u8>) {
        let message = truncate_at_char_boundary(&self.message, MAX_REPORT_MESSAGE_LEN);
        body.extend_from_slice(&self.position.to_be_bytes());
        body.extend_from_slice(&self.parent.to_be_bytes());
        body.push(self.status.code());
        body.extend_from_slice(&self.bytes.to_be_bytes());
        // At most MAX_REPORT_MESSAGE_LEN (255): fits.
        body.push(message.len() as u8);
        body.extend_from_slice(message.as_bytes());
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<HostReport, WireError> {
        let position = r.u16("report position")?;
        let parent = r.u16("report parent")?;
        let code = r.u8("report status")?;
        let status = AckStatus::from_code(code).ok_or(WireError::UnknownStatus(code))?;
        let bytes = r.u64("report bytes")?;
        let len = usize::from(r.u8("report message length")?);
        let message = r.text(len, "report message")?;
        Ok(HostReport {
            position,
            parent,
            status,
            bytes,
            message,
        })
    }
}

/// A relay's word, mid-stream, of hosts below it whose outcome has become known (each is
/// said again in its acknowledgement, which stands).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// One to [`MAX_REPORTS_PER_MESSAGE`] host reports.
    pub reports: Vec<HostReport>,
}

impl Report {
    /// Encodes prefix and body; reports beyond [`MAX_REPORTS_PER_MESSAGE`] are left out.
    pub fn encode(&self) -> Vec<u8> {
        let reports = self
            .reports
            .get(..MAX_REPORTS_PER_MESSAGE)
            .unwrap_or(&self.reports);
        let mut body = Vec::with_capacity(2 + reports.len() * 16);
        // At most MAX_REPORTS_PER_MESSAGE (256): fits.
        body.extend_from_slice(&(reports.len() as u16).to_be_bytes());
        for report in reports {
            report.encode_into(&mut body);
        }
        frame_bounded(MessageKind::Report, &body)
    }

    /// Decodes a report body: a count of 1 to [`MAX_REPORTS_PER_MESSAGE`], then that many host
    /// reports, nothing after them.
    pub fn decode_body(body: &[u8]) -> Result<Report, WireError> {
        check_body_len(MessageKind::Report, body)?;
        let mut r = Reader::new(MessageKind::Report, body);
        let count = usize::from(r.u16("report count")?);
        if count == 0 || count > MAX_REPORTS_PER_MESSAGE {
            return Err(WireError::ReportCount(count));
        }
        let mut reports = Vec::with_capacity(count);
        for _ in 0..count {
            reports.push(HostReport::decode_from(&mut r)?);
        }
        r.finish()?;
        Ok(Report { reports })
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a char boundary.
fn truncate_at_char_boundary(text: &str, max: usize) -> &str {
    (0..=max.min(text.len()))
        .rev()
        .find_map(|end| text.get(..end))
        .unwrap_or("")
}

/// The sender's first message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Capability bits ([`CAP_KEYED`]; unknown bits are ignored).
    pub capabilities: u32,
    /// A fresh nonce.
    pub nonce: [u8; NONCE_LEN],
}

impl Hello {
    /// Encodes prefix and body.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(HELLO_BODY);
        body.extend_from_slice(&self.capabilities.to_be_bytes());
        body.extend_from_slice(&self.nonce);
        frame_bounded(MessageKind::Hello, &body)
    }

    /// Decodes a hello body.
    pub fn decode_body(body: &[u8]) -> Result<Hello, WireError> {
        check_body_len(MessageKind::Hello, body)?;
        let mut r = Reader::new(MessageKind::Hello, body);
        let capabilities = u32::from_be_bytes(r.array("capabilities")?);
        let nonce = r.array("nonce")?;
        r.finish()?;
        Ok(Hello {
            capabilities,
            nonce,
        })
    }
}

/// The receiver's answer to a hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// Capability bits ([`CAP_KEYED`]; unknown bits are ignored).
    pub capabilities: u32,
    /// A fresh nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The receiver's proofs of its keys, [`MAC_LEN`] bytes each, one after the other (at
    /// most [`MAX_KEYS`]); empty when it has none.
    pub proof: Vec<u8>,
}

impl Welcome {
    /// Encodes prefix and body. Proofs beyond [`MAX_KEYS`] are cut off.
    pub fn encode(&self) -> Vec<u8> {
        let proof = self.proof.get(..MAX_KEYS * MAC_LEN).unwrap_or(&self.proof);
        let mut body = Vec::with_capacity(MAX_WELCOME_BODY);
        body.extend_from_slice(&self.capabilities.to_be_bytes());
        body.extend_from_slice(&self.nonce);
        push_digest(&mut body, proof);
        frame_bounded(MessageKind::Welcome, &body)
    }

    /// Decodes a welcome body; the proof is empty or one to [`MAX_KEYS`] proofs of [`MAC_LEN`]
    /// bytes.
    pub fn decode_body(body: &[u8]) -> Result<Welcome, WireError> {
        check_body_len(MessageKind::Welcome, body)?;
        let mut r = Reader::new(MessageKind::Welcome, body);
        let capabilities = u32::from_be_bytes(r.array("capabilities")?);
        let nonce = r.array("nonce")?;
        let proof_len = usize::from(r.u8("proof length")?);
        if proof_len % MAC_LEN != 0 || proof_len > MAX_KEYS * MAC_LEN {
            return Err(WireError::MacLength {
                kind: MessageKind::Welcome,
                found: proof_len,
                expected: MAC_LEN,
            });
        }
        let proof = r.bytes(proof_len, "proof")?.to_vec();
        r.finish()?;
        Ok(Welcome {
            capabilities,
            nonce,
            proof,
        })
    }
}

/// The receiver's answer to a resuming header: how many payload bytes of the stream it already
/// holds (the sender goes on from there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    /// Payload bytes held.
    pub offset: u64,
}

impl Resume {
    /// Encodes prefix and body.
    pub fn encode(&self) -> Vec<u8> {
        frame_bounded(MessageKind::Resume, &self.offset.to_be_bytes())
    }

    /// Decodes a resume body: exactly 8 bytes.
    pub fn decode_body(body: &[u8]) -> Result<Resume, WireError> {
        check_body_len(MessageKind::Resume, body)?;
        let mut r = Reader::new(MessageKind::Resume, body);
        let offset = r.u64("offset")?;
        r.finish()?;
        Ok(Resume { offset })
    }
}

/// A seal: a proof of the key, or a MAC of the session's messages under its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seal(pub [u8; MAC_LEN]);

impl Seal {
    /// Encodes prefix and body.
    pub fn encode(&self) -> Vec<u8> {
        frame_bounded(MessageKind::Seal, &self.0)
    }

    /// Decodes a seal body: exactly [`MAC_LEN`] bytes.
    pub fn decode_body(body: &[u8]) -> Result<Seal, WireError> {
        <[u8; MAC_LEN]>::try_from(body)
            .map(Seal)
            .map_err(|_| WireError::MacLength {
                kind: MessageKind::Seal,
                found: body.len(),
                expected: MAC_LEN,
            })
    }
}

/// The header in front of a chunk of `len` bytes; `len` 0 ends the stream. Callers keep
/// `len` within [`MAX_CHUNK`].
pub fn encode_chunk_header(len: u32) -> [u8; CHUNK_HEADER_LEN] {
    len.to_be_bytes()
}

/// The chunk header that carries no data: the sender is still there, its source has nothing to
/// send yet (a paused producer). Receivers wait on, with a fresh deadline.
pub const KEEPALIVE: [u8; CHUNK_HEADER_LEN] = [0xff; CHUNK_HEADER_LEN];

/// Returns the chunk length; 0 means end of stream. ([`KEEPALIVE`] is not a length: the
/// receiver's session recognises it before it decodes a header.)
pub fn decode_chunk_header(bytes: &[u8; CHUNK_HEADER_LEN]) -> Result<u32, WireError> {
    let len = u32::from_be_bytes(*bytes);
    if len > MAX_CHUNK {
        return Err(WireError::ChunkTooLong(len));
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body of an encoded message, after checking its prefix.
    fn body_of(encoded: &[u8], kind: MessageKind) -> &[u8] {
        let (prefix, body) = encoded
            .split_first_chunk::<PREFIX_LEN>()
            .expect("message shorter than a prefix");
        assert_eq!(decode_prefix(prefix, kind), Ok(body.len()));
        body
    }

    fn header(name: &str, length: Option<u64>) -> Header {
        Header {
            name: name.to_string(),
            length,
            digest: DigestAlgorithm::Blake3,
            route: Vec::new(),
            tree: None,
        }
    }

    fn header_body(h: &Header) -> Vec<u8> {
        body_of(&h.encode().expect("valid header"), MessageKind::Header).to_vec()
    }

    fn valid_trailer() -> Trailer {
        Trailer {
            length: 1234,
            digest: vec![0xab; 32],
        }
    }

    fn valid_ack() -> Ack {
        Ack {
            status: AckStatus::DigestMismatch,
            bytes: 99,
            digest: vec![7; 32],
            message: "digest differs".to_string(),
            reports: Vec::new(),
        }
    }

    /// A header body built field by field, for crafting bad ones.
    fn raw_header(name: &[u8], flags: u8, length: u64, digest: u8, hops: &[&[u8]]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(name.len() as u16).to_be_bytes());
        b.extend_from_slice(name);
        b.push(flags);
        b.extend_from_slice(&length.to_be_bytes());
        b.push(digest);
        b.push(hops.len() as u8);
        for hop in hops {
            b.push(hop.len() as u8);
            b.extend_from_slice(hop);
        }
        b
    }

    fn raw_ack(status: u8, digest: &[u8], message: &[u8]) -> Vec<u8> {
        let mut b = vec![status];
        b.extend_from_slice(&5u64.to_be_bytes());
        b.push(digest.len() as u8);
        b.extend_from_slice(digest);
        b.extend_from_slice(&(message.len() as u16).to_be_bytes());
        b.extend_from_slice(message);
        b
    }

    // ---- round trips ----

    /// Regression: U+202E and other bidirectional or invisible characters were shown raw (a
    /// name could read backwards), and a `'` came out as `\'`.
    #[test]
    fn text_shown_escapes_bidi_and_invisible_characters() {
        assert_eq!(
            escape_text("evil\u{202e}gpj.exe", 64),
            "\"evil\\u{202e}gpj.exe\""
        );
        for c in [
            '\u{200b}', '\u{2066}', '\u{feff}', '\u{3164}', '\u{a0}', '\u{1b}', '\n',
        ] {
            let shown = escape_text(&format!("a{c}b"), 64);
            assert!(!shown.contains(c), "{c:?}: {shown}");
            assert!(shown.starts_with("\"a\\"), "{c:?}: {shown}");
        }
        assert_eq!(escape_text("receiver's", 64), "\"receiver's\"");
        assert_eq!(escape_text("a \"b\" \\", 64), "\"a \\\"b\\\" \\\\\"");
        assert_eq!(escape_text("naïve 名前", 64), "\"naïve 名前\"");
        assert_eq!(escape_if_needed("in/plain name.bin"), "in/plain name.bin");
        assert_eq!(escape_if_needed("in/x\u{202e}y"), "\"in/x\\u{202e}y\"");
        assert_eq!(escape_if_needed("a\"b"), "\"a\\\"b\"");
    }
    #[test]
    fn header_round_trips_for_every_digest_length_and_name() {
        let max_name = "n".repeat(MAX_NAME_LEN);
        let names = [
            "a",
            "report.tar.gz",
            ".hidden",
            "été—ü.txt",
            max_name.as_str(),
        ];
        for digest in DigestAlgorithm::ALL {
            for length in [None, Some(0), Some(1), Some(u64::MAX)] {
                for name in names {
                    let h = Header {
                        name: name.to_string(),
                        length,
                        digest,
                        route: Vec::new(),
                        tree: None,
                    };
                    let encoded = h.encode().expect("valid header");
                    let body = body_of(&encoded, MessageKind::Header);
                    assert_eq!(Header::decode_body(body), Ok(h));
                }
            }
        }
    }

    #[test]
    fn header_round_trips_with_route() {
        let long_hop = format!("{}:65535", "h".repeat(MAX_HOP_LEN - 6));
        assert_eq!(long_hop.len(), MAX_HOP_LEN);
        let mut route = vec![
            "relay.example:7000".to_string(),
            "10.0.0.2:1".to_string(),
            "[::1]:8080".to_string(),
        ];
        route.resize(usize::from(u8::MAX), long_hop.clone());
        let mut h = Header {
            name: "x".repeat(MAX_NAME_LEN),
            length: None,
            digest: DigestAlgorithm::Sha256,
            route,
            tree: None,
        };
        let encoded = h.encode().expect("valid header");
        let body = body_of(&encoded, MessageKind::Header);
        assert!(body.len() <= MAX_HEADER_BODY);
        assert_eq!(Header::decode_body(body), Ok(h.clone()));
        // The largest relayed header: the first host of a chain of the most hosts, each hop
        // the longest, carries them all.
        h.route = vec![long_hop; MAX_ROUTE_HOPS];
        h.tree = Some(Tree {
            fanout: 1,
            position: 1,
            transfer: [3; TRANSFER_ID_LEN],
            resume: false,
            stall_ms: u32::MAX,
            connect_ms: 1,
        });
        let encoded = h.encode().expect("valid header");
        let body = body_of(&encoded, MessageKind::Header);
        assert!(body.len() <= MAX_HEADER_BODY, "{}", body.len());
        assert_eq!(Header::decode_body(body), Ok(h));
    }

    /// A relayed header carries its receiver's subtree of the route and no other host: in a
    /// tree of fan-out 2 over 7 hosts, position 2 gets 2, 5 and 6.
    #[test]
    fn a_relayed_header_carries_only_the_subtree() {
        let route: Vec<String> = (1..=7).map(|i| format!("h{i}:1")).collect();
        let h = Header {
            name: "f".into(),
            length: Some(1),
            digest: DigestAlgorithm::Blake3,
            route: route.clone(),
            tree: Some(Tree {
                fanout: 2,
                position: 2,
                transfer: [1; TRANSFER_ID_LEN],
                resume: false,
                stall_ms: 1000,
                connect_ms: 1000,
            }),
        };
        let encoded = h.encode().unwrap();
        let text = String::from_utf8_lossy(&encoded);
        for absent in ["h1:", "h3:", "h4:", "h7:"] {
            assert!(!text.contains(absent), "{absent} in {text:?}");
        }
        let decoded = Header::decode_body(body_of(&encoded, MessageKind::Header)).unwrap();
        let mut expected = h.clone();
        for p in [1, 3, 4, 7] {
            expected.route[p - 1] = String::new();
        }
        assert_eq!(decoded, expected);
        // Re-encoded for a child (position 5): its subtree, as the first sender would send it.
        assert_eq!(decoded.for_position(5).encode(), h.for_position(5).encode());
        assert_eq!(Tree::subtree(2, 2, 7), vec![2, 5, 6]);
        assert_eq!(Tree::subtree(3, 0, 4), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn header_layout_is_as_documented() {
        let h = Header {
            name: "ab".to_string(),
            length: Some(0x0102),
            digest: DigestAlgorithm::Sha256,
            route: vec!["h:1".to_string()],
            tree: None,
        };
        let expected: Vec<u8> = [
            &b"TCHD"[..],
            &[0, 2],
            &[0, 0, 0, 19],
            &[0, 2],
            b"ab",
            &[1],
            &[0, 0, 0, 0, 0, 0, 1, 2],
            &[2],
            &[1, 3],
            b"h:1",
        ]
        .concat();
        assert_eq!(h.encode(), Ok(expected));
    }

    /// The example session in docs/PROTOCOL.md, byte for byte.
    #[test]
    fn documented_example_bytes() {
        fn hex(bytes: &[u8]) -> String {
            bytes
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        }
        // XXH3-128 of "hello" (the library's digest tests check the hashing itself).
        let digest = vec![
            0xb5, 0xe9, 0xc1, 0xad, 0x07, 0x1b, 0x3e, 0x7f, 0xc7, 0x79, 0xcf, 0xaa, 0x5e, 0x52,
            0x38, 0x18,
        ];
        let h = Header {
            name: "ab".to_string(),
            length: Some(5),
            digest: DigestAlgorithm::Xxh3_128,
            route: Vec::new(),
            tree: None,
        };
        assert_eq!(
            hex(&h.encode().expect("valid")),
            "54 43 48 44 00 02 00 00 00 0f 00 02 61 62 01 00 00 00 00 00 00 00 05 03 00"
        );
        let t = Trailer {
            length: 5,
            digest: digest.clone(),
        };
        assert_eq!(
            hex(&t.encode()),
            "54 43 54 52 00 02 00 00 00 19 00 00 00 00 00 00 00 05 10 \
             b5 e9 c1 ad 07 1b 3e 7f c7 79 cf aa 5e 52 38 18"
        );
        let a = Ack {
            status: AckStatus::Ok,
            bytes: 5,
            digest,
            message: String::new(),
            reports: Vec::new(),
        };
        assert_eq!(
            hex(&a.encode()),
            "54 43 41 4b 00 02 00 00 00 1c 00 00 00 00 00 00 00 00 05 10 \
             b5 e9 c1 ad 07 1b 3e 7f c7 79 cf aa 5e 52 38 18 00 00"
        );
        let h = Header {
            length: None,
            digest: DigestAlgorithm::None,
            ..h
        };
        assert_eq!(
            hex(&h.encode().expect("valid")),
            "54 43 48 44 00 02 00 00 00 0f 00 02 61 62 00 00 00 00 00 00 00 00 00 00 00"
        );
        let chunked: Vec<u8> = [
            &encode_chunk_header(5)[..],
            b"hello",
            &encode_chunk_header(0),
        ]
        .concat();
        assert_eq!(hex(&chunked), "00 00 00 05 68 65 6c 6c 6f 00 00 00 00");
        let t = Trailer {
            length: 5,
            digest: Vec::new(),
        };
        assert_eq!(
            hex(&t.encode()),
            "54 43 54 52 00 02 00 00 00 09 00 00 00 00 00 00 00 05 00"
        );
    }

    #[test]
    fn trailer_round_trips_for_every_digest() {
        for algorithm in DigestAlgorithm::ALL {
            for length in [0, 1, u64::MAX] {
                let t = Trailer {
                    length,
                    digest: (0..algorithm.output_len()).map(|i| i as u8).collect(),
                };
                let encoded = t.encode();
                let body = body_of(&encoded, MessageKind::Trailer);
                assert_eq!(Trailer::decode_body(body, algorithm), Ok(t));
            }
        }
    }

    #[test]
    fn ack_round_trips_for_every_status() {
        let long = "m".repeat(MAX_MESSAGE_LEN);
        for status in AckStatus::ALL {
            for digest in [vec![], vec![1; 16], vec![2; 32], vec![3; MAX_DIGEST_LEN]] {
                for message in ["", "ok", "could not rename: permission denied", &long] {
                    let a = Ack {
                        status,
                        bytes: 42,
                        digest: digest.clone(),
                        message: message.to_string(),
                        reports: Vec::new(),
                    };
                    let encoded = a.encode();
                    let body = body_of(&encoded, MessageKind::Ack);
                    assert_eq!(Ack::decode_body(body), Ok(a));
                }
            }
        }
    }

    #[test]
    fn ack_encode_truncates_long_message_at_char_boundary() {
        // 1023 ASCII bytes then a 3-byte char straddling the limit.
        let message = format!("{}€tail", "a".repeat(MAX_MESSAGE_LEN - 1));
        let a = Ack {
            status: AckStatus::IoError,
            bytes: 0,
            digest: vec![],
            message,
            reports: Vec::new(),
        };
        let encoded = a.encode();
        let decoded = Ack::decode_body(body_of(&encoded, MessageKind::Ack)).expect("decodes");
        assert_eq!(decoded.message, "a".repeat(MAX_MESSAGE_LEN - 1));

        let exact = "é".repeat(MAX_MESSAGE_LEN); // 2048 bytes
        let a = Ack {
            message: exact,
            reports: Vec::new(),
            ..a
        };
        let decoded = Ack::decode_body(body_of(&a.encode(), MessageKind::Ack)).expect("decodes");
        assert_eq!(decoded.message, "é".repeat(MAX_MESSAGE_LEN / 2));
    }

    #[test]
    fn trees_place_hosts_in_order() {
        // A chain: each host feeds the next.
        assert_eq!(Tree::children_of(1, 0, 4), 1..2);
        assert_eq!(Tree::children_of(1, 3, 4), 4..5);
        assert!(Tree::children_of(1, 4, 4).is_empty());
        assert_eq!(Tree::descendants_of(1, 1, 4), vec![2, 3, 4]);
        assert_eq!(Tree::height_below(1, 0, 4), 4);
        // Seven hosts, two children each: 0 → 1, 2; 1 → 3, 4; 2 → 5, 6; 3 → 7.
        assert_eq!(Tree::children_of(2, 0, 7), 1..3);
        assert_eq!(Tree::children_of(2, 3, 7), 7..8);
        assert!(Tree::children_of(2, 4, 7).is_empty());
        assert_eq!(Tree::descendants_of(2, 1, 7), vec![3, 7, 4]);
        assert_eq!(Tree::descendants_of(2, 0, 7), vec![1, 3, 7, 4, 2, 5, 6]);
        assert_eq!(Tree::height_below(2, 2, 7), 1);
        assert_eq!(Tree::height_below(2, 7, 7), 0);
        for p in 1..=7 {
            let parent = Tree::parent_of(2, p);
            assert!(Tree::children_of(2, parent, 7).contains(&p), "{p}");
        }
    }

    #[test]
    fn a_relayed_header_and_a_reporting_ack_round_trip() {
        let mut h = header("f", Some(5));
        h.route = vec!["a:1".into(), "b:2".into(), "c:3".into()];
        h.tree = Some(Tree {
            fanout: 2,
            position: 3,
            transfer: [7; TRANSFER_ID_LEN],
            resume: false,
            stall_ms: 30_000,
            connect_ms: 10_000,
        });
        let bytes = h.encode().unwrap();
        // Position 3 is a leaf: it is carried alone.
        let mut carried = h.clone();
        carried.route = vec![String::new(), String::new(), "c:3".into()];
        assert_eq!(
            Header::decode_body(body_of(&bytes, MessageKind::Header)),
            Ok(carried.clone())
        );
        let mut resuming = carried.clone();
        resuming.tree.as_mut().unwrap().resume = true;
        let bytes = resuming.encode().unwrap();
        assert_eq!(
            Header::decode_body(body_of(&bytes, MessageKind::Header)),
            Ok(resuming)
        );
        let r = Resume { offset: 1 << 40 };
        assert_eq!(
            Resume::decode_body(body_of(&r.encode(), MessageKind::Resume)),
            Ok(r)
        );
        assert!(Resume::decode_body(&[0; 7]).is_err());
        assert!(Resume::decode_body(&[0; 9]).is_err());
        let tree = |fanout, position, stall_ms, connect_ms| Tree {
            fanout,
            position,
            transfer: [0; TRANSFER_ID_LEN],
            resume: false,
            stall_ms,
            connect_ms,
        };
        for (fanout, position) in [(0, 1), (1, 0), (1, 4)] {
            h.tree = Some(tree(fanout, position, 1, 1));
            assert_eq!(
                h.encode(),
                Err(WireError::BadTree {
                    fanout,
                    position,
                    hops: 3
                })
            );
        }
        for (stall_ms, connect_ms, field) in [(0, 1, "stall timeout"), (1, 0, "connect timeout")] {
            h.tree = Some(tree(1, 1, stall_ms, connect_ms));
            assert_eq!(h.encode(), Err(WireError::ZeroTimeout { field }));
        }
        let a = Ack {
            reports: vec![
                HostReport {
                    position: 2,
                    parent: 1,
                    status: AckStatus::Ok,
                    bytes: 5,
                    message: String::new(),
                },
                HostReport {
                    position: 3,
                    parent: 1,
                    status: AckStatus::Unreached,
                    bytes: 0,
                    message: "x".repeat(300),
                },
            ],
            ..valid_ack()
        };
        let decoded = Ack::decode_body(body_of(&a.encode(), MessageKind::Ack)).unwrap();
        assert_eq!(decoded.reports[0], a.reports[0]);
        assert_eq!(decoded.reports[1].message.len(), MAX_REPORT_MESSAGE_LEN);
    }

    #[test]
    fn ack_status_codes_and_names() {
        let names: Vec<&str> = AckStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "ok",
                "digest-mismatch",
                "length-mismatch",
                "rejected",
                "io-error",
                "truncated",
                "unreached",
                "adopted"
            ]
        );
        for (code, status) in AckStatus::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(status.code()), code);
            assert_eq!(AckStatus::from_code(status.code()), Some(status));
            assert_eq!(status.to_string(), status.as_str());
        }
        assert_eq!(AckStatus::from_code(8), None);
    }

    #[test]
    fn chunk_headers() {
        for len in [0, 1, 4096, MAX_CHUNK] {
            assert_eq!(decode_chunk_header(&encode_chunk_header(len)), Ok(len));
        }
        assert_eq!(encode_chunk_header(0x0102_0304), [1, 2, 3, 4]);
        assert_eq!(decode_chunk_header(&[0; 4]), Ok(0));
    }

    // ---- prefix ----

    #[test]
    fn prefix_accepts_each_kind_up_to_its_limit() {
        for kind in MessageKind::ALL {
            let mut prefix = [0u8; PREFIX_LEN];
            prefix[..4].copy_from_slice(&kind.magic());
            prefix[4..6].copy_from_slice(&VERSION.to_be_bytes());
            let max = u32::try_from(kind.max_body_len()).expect("small");
            prefix[6..].copy_from_slice(&max.to_be_bytes());
            assert_eq!(decode_prefix(&prefix, kind), Ok(kind.max_body_len()));
            prefix[6..].copy_from_slice(&0u32.to_be_bytes());
            assert_eq!(decode_prefix(&prefix, kind), Ok(0));
        }
    }

    #[test]
    fn prefix_rejects_bad_magic() {
        let prefix = *b"GET / HTTP";
        let err = decode_prefix(&prefix, MessageKind::Header).unwrap_err();
        assert_eq!(
            err,
            WireError::BadMagic {
                expected: MessageKind::Header,
                found: *b"GET "
            }
        );
        let text = err.to_string();
        assert!(text.contains("\"TCHD\""), "{text}");
        assert!(text.contains("47 45 54 20"), "{text}");
        assert!(text.contains("raw receiver"), "{text}");
    }

    #[test]
    fn prefix_rejects_another_kinds_magic() {
        let encoded = valid_ack().encode();
        let prefix = encoded.first_chunk::<PREFIX_LEN>().expect("long enough");
        let err = decode_prefix(prefix, MessageKind::Trailer).unwrap_err();
        assert!(matches!(err, WireError::BadMagic { .. }));
        assert!(
            err.to_string().contains("an ack where a trailer belongs"),
            "{err}"
        );
    }

    #[test]
    fn prefix_rejects_unsupported_version() {
        // Version 1 had no hello: a version-1 peer is named by its version.
        for version in [0u16, 1, 3, u16::MAX] {
            let mut prefix = [0u8; PREFIX_LEN];
            prefix[..4].copy_from_slice(b"TCAK");
            prefix[4..6].copy_from_slice(&version.to_be_bytes());
            let err = decode_prefix(&prefix, MessageKind::Ack).unwrap_err();
            assert_eq!(
                err,
                WireError::UnsupportedVersion {
                    kind: MessageKind::Ack,
                    found: version
                }
            );
            assert!(
                err.to_string()
                    .contains("speaks version 2, and 3 encrypted"),
                "{err}"
            );
        }
    }

    #[test]
    fn prefix_rejects_over_long_bodies() {
        for kind in MessageKind::ALL {
            for len in [kind.max_body_len() as u32 + 1, u32::MAX] {
                let mut prefix = [0u8; PREFIX_LEN];
                prefix[..4].copy_from_slice(&kind.magic());
                prefix[4..6].copy_from_slice(&VERSION.to_be_bytes());
                prefix[6..].copy_from_slice(&len.to_be_bytes());
                assert_eq!(
                    decode_prefix(&prefix, kind),
                    Err(WireError::BodyTooLong {
                        kind,
                        len: u64::from(len),
                        max: kind.max_body_len()
                    })
                );
            }
        }
    }

    #[test]
    fn decoders_reject_over_long_bodies_handed_directly() {
        let big = vec![0u8; MAX_HEADER_BODY.max(MAX_ACK_BODY) + 1];
        assert!(matches!(
            Header::decode_body(&big),
            Err(WireError::BodyTooLong { .. })
        ));
        assert!(matches!(
            Trailer::decode_body(&big[..MAX_TRAILER_BODY + 1], DigestAlgorithm::None),
            Err(WireError::BodyTooLong { .. })
        ));
        assert!(matches!(
            Ack::decode_body(&big[..MAX_ACK_BODY + 1]),
            Err(WireError::BodyTooLong { .. })
        ));
    }

    // ---- names ----

    #[test]
    fn validate_name_rejects_each_bad_name() {
        let long = "a".repeat(MAX_NAME_LEN + 1);
        let cases: [(&str, NameProblem); 14] = [
            ("", NameProblem::Empty),
            (&long, NameProblem::TooLong(256)),
            (".", NameProblem::Dot),
            ("/etc/x", NameProblem::Absolute),
            ("../x", NameProblem::DotDot),
            ("..", NameProblem::DotDot),
            ("a..b", NameProblem::DotDot),
            ("a/b", NameProblem::Slash),
            ("a\\b", NameProblem::Backslash),
            ("a\0b", NameProblem::Nul),
            ("a\nb", NameProblem::Control('\n')),
            ("a\x1fb", NameProblem::Control('\x1f')),
            ("a\x7fb", NameProblem::Control('\x7f')),
            ("a\u{9b}2Jb", NameProblem::Control('\u{9b}')),
        ];
        for (name, reason) in cases {
            assert_eq!(
                validate_name(name),
                Err(WireError::InvalidName {
                    name: name.to_string(),
                    reason
                }),
                "{name:?}"
            );
        }
    }

    #[test]
    fn validate_name_accepts_plain_names() {
        let max = "z".repeat(MAX_NAME_LEN);
        for name in [
            "a",
            "file.txt",
            ".bashrc",
            "a.b.c",
            "名前",
            "x-y_z (1)",
            max.as_str(),
        ] {
            assert_eq!(validate_name(name), Ok(()), "{name:?}");
        }
    }

    #[test]
    fn name_errors_are_specific_one_line_messages() {
        let messages: Vec<String> = ["", ".", "/etc/x", "../x", "a/b", "a\\b", "a\0b", "a\tb"]
            .iter()
            .map(|n| validate_name(n).unwrap_err().to_string())
            .collect();
        for m in &messages {
            assert!(
                !m.contains('\n') && !m.contains('\t') && !m.contains('\0'),
                "{m:?}"
            );
        }
        let mut unique = messages.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), messages.len(), "{messages:?}");
        let long = validate_name(&"q".repeat(1000)).unwrap_err().to_string();
        assert!(long.len() < 200, "{long}");
    }

    // ---- encode-side rejections ----

    #[test]
    fn header_encode_rejects_bad_values() {
        assert!(matches!(
            header("../etc/passwd", None).encode(),
            Err(WireError::InvalidName {
                reason: NameProblem::DotDot,
                ..
            })
        ));
        let mut h = header("f", None);
        h.route = vec!["h:1".to_string(); MAX_ROUTE_HOPS + 1];
        assert_eq!(
            h.encode(),
            Err(WireError::RouteTooLong {
                hops: MAX_ROUTE_HOPS + 1
            })
        );
        let too_long_hop = format!("{}:1", "h".repeat(MAX_HOP_LEN));
        let bad_hops: [(&str, HopProblem); 9] = [
            ("", HopProblem::Empty),
            (&too_long_hop, HopProblem::TooLong(MAX_HOP_LEN + 2)),
            ("h\0:1", HopProblem::Nul),
            ("h :1", HopProblem::Whitespace),
            ("h\x01:1", HopProblem::Control),
            ("host", HopProblem::MissingPort),
            (":80", HopProblem::EmptyHost),
            ("h:0", HopProblem::BadPort),
            ("h:+80", HopProblem::BadPort),
        ];
        for (hop, reason) in bad_hops {
            h.route = vec!["ok:1".to_string(), hop.to_string()];
            assert_eq!(
                h.encode(),
                Err(WireError::InvalidHop {
                    index: 1,
                    hop: hop.to_string(),
                    reason
                }),
                "{hop:?}"
            );
        }
        for hop in ["h:", "h:65536", "h:x"] {
            h.route = vec![hop.to_string()];
            assert!(
                matches!(
                    h.encode(),
                    Err(WireError::InvalidHop {
                        reason: HopProblem::BadPort,
                        ..
                    })
                ),
                "{hop:?}"
            );
        }
    }

    // ---- decode errors, one crafted input each ----

    #[test]
    fn decode_truncated() {
        assert_eq!(
            Header::decode_body(&[0, 5, b'a']),
            Err(WireError::Truncated {
                kind: MessageKind::Header,
                field: "name"
            })
        );
        assert_eq!(
            Trailer::decode_body(&[0; 7], DigestAlgorithm::None),
            Err(WireError::Truncated {
                kind: MessageKind::Trailer,
                field: "length"
            })
        );
        assert_eq!(
            Ack::decode_body(&[]),
            Err(WireError::Truncated {
                kind: MessageKind::Ack,
                field: "status"
            })
        );
    }

    #[test]
    fn decode_trailing_bytes() {
        let mut body = header_body(&header("f", Some(3)));
        body.push(0);
        assert_eq!(
            Header::decode_body(&body),
            Err(WireError::TrailingBytes {
                kind: MessageKind::Header,
                count: 1
            })
        );
        let mut body = body_of(&valid_trailer().encode(), MessageKind::Trailer).to_vec();
        body.extend_from_slice(&[1, 2]);
        assert_eq!(
            Trailer::decode_body(&body, DigestAlgorithm::Blake3),
            Err(WireError::TrailingBytes {
                kind: MessageKind::Trailer,
                count: 2
            })
        );
        let mut body = body_of(&valid_ack().encode(), MessageKind::Ack).to_vec();
        body.extend_from_slice(&[0, 0]);
        assert!(matches!(
            Ack::decode_body(&body),
            Err(WireError::TrailingBytes { count: 2, .. })
        ));
    }

    #[test]
    fn decode_invalid_name() {
        for (name, reason) in [
            (&b"../x"[..], NameProblem::DotDot),
            (b"", NameProblem::Empty),
            (b"/etc/x", NameProblem::Absolute),
            (b"a\0b", NameProblem::Nul),
        ] {
            let body = raw_header(name, 0, 0, 1, &[]);
            assert!(
                matches!(Header::decode_body(&body), Err(WireError::InvalidName { reason: r, .. }) if r == reason),
                "{name:?}"
            );
        }
        let long = vec![b'a'; MAX_NAME_LEN + 1];
        assert!(matches!(
            Header::decode_body(&raw_header(&long, 0, 0, 1, &[])),
            Err(WireError::InvalidName {
                reason: NameProblem::TooLong(256),
                ..
            })
        ));
    }

    #[test]
    fn decode_invalid_utf8() {
        assert_eq!(
            Header::decode_body(&raw_header(b"a\xffb", 0, 0, 1, &[])),
            Err(WireError::InvalidUtf8 {
                kind: MessageKind::Header,
                field: "name"
            })
        );
        assert_eq!(
            Header::decode_body(&raw_header(b"a", 0, 0, 1, &[b"h\xc3:1"])),
            Err(WireError::InvalidUtf8 {
                kind: MessageKind::Header,
                field: "route hop"
            })
        );
        assert_eq!(
            Ack::decode_body(&raw_ack(0, &[], b"\xe2\x82")),
            Err(WireError::InvalidUtf8 {
                kind: MessageKind::Ack,
                field: "message"
            })
        );
    }

    #[test]
    fn decode_unknown_digest() {
        for id in [4u8, 0xff] {
            let err = Header::decode_body(&raw_header(b"a", 0, 0, id, &[])).unwrap_err();
            assert_eq!(err, WireError::UnknownDigest(id));
            assert!(err.to_string().contains("1 (blake3)"), "{err}");
        }
    }

    #[test]
    fn decode_digest_length() {
        let body = body_of(&valid_trailer().encode(), MessageKind::Trailer).to_vec();
        assert_eq!(
            Trailer::decode_body(&body, DigestAlgorithm::Xxh3_128),
            Err(WireError::DigestLength {
                algorithm: DigestAlgorithm::Xxh3_128,
                expected: 16,
                found: 32
            })
        );
        assert!(matches!(
            Trailer::decode_body(&body, DigestAlgorithm::None),
            Err(WireError::DigestLength {
                expected: 0,
                found: 32,
                ..
            })
        ));
    }

    #[test]
    fn decode_ack_digest_too_long() {
        let body = raw_ack(0, &[0; MAX_DIGEST_LEN + 1], b"");
        assert_eq!(
            Ack::decode_body(&body),
            Err(WireError::DigestTooLong { found: 65 })
        );
    }

    #[test]
    fn decode_bad_flags() {
        for flags in [0x04u8, 0x80, 0xff] {
            assert_eq!(
                Header::decode_body(&raw_header(b"a", flags, 0, 1, &[])),
                Err(WireError::BadFlags(flags))
            );
        }
    }

    #[test]
    fn decode_bad_length() {
        assert_eq!(
            Header::decode_body(&raw_header(b"a", 0, 7, 1, &[])),
            Err(WireError::BadLength(7))
        );
    }

    #[test]
    fn decode_route_too_long() {
        let mut b = raw_header(b"a", FLAG_TREE, 0, 1, &[]);
        b.push(1);
        b.extend_from_slice(&1u16.to_be_bytes());
        b.extend_from_slice(&[0; TRANSFER_ID_LEN]);
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&((MAX_ROUTE_HOPS + 1) as u16).to_be_bytes());
        assert_eq!(
            Header::decode_body(&b),
            Err(WireError::RouteTooLong {
                hops: MAX_ROUTE_HOPS + 1
            })
        );
        // A relayed header's route is in its tree section, never before it.
        let b = raw_header(b"a", FLAG_TREE, 0, 1, &[b"h:1"]);
        assert_eq!(Header::decode_body(&b), Err(WireError::RouteOutsideTree(1)));
    }

    #[test]
    fn decode_invalid_hop() {
        for (hop, reason) in [
            (&b""[..], HopProblem::Empty),
            (b"h\0:1", HopProblem::Nul),
            (b"h\t:1", HopProblem::Whitespace),
            (b"h", HopProblem::MissingPort),
            (b"h:99999", HopProblem::BadPort),
        ] {
            assert_eq!(
                Header::decode_body(&raw_header(b"a", 0, 0, 1, &[b"ok:2", hop])),
                Err(WireError::InvalidHop {
                    index: 1,
                    hop: String::from_utf8(hop.to_vec()).expect("utf-8"),
                    reason
                })
            );
        }
    }

    #[test]
    fn decode_chunk_too_long() {
        for len in [MAX_CHUNK + 1, u32::MAX] {
            assert_eq!(
                decode_chunk_header(&len.to_be_bytes()),
                Err(WireError::ChunkTooLong(len))
            );
        }
    }

    #[test]
    fn decode_unknown_status() {
        for code in [8u8, 0xff] {
            assert_eq!(
                Ack::decode_body(&raw_ack(code, &[], b"")),
                Err(WireError::UnknownStatus(code))
            );
        }
    }

    #[test]
    fn decode_message_too_long() {
        let body = raw_ack(0, &[], &[b'm'; MAX_MESSAGE_LEN + 1]);
        assert_eq!(
            Ack::decode_body(&body),
            Err(WireError::MessageTooLong(MAX_MESSAGE_LEN + 1))
        );
    }

    #[test]
    fn every_error_message_is_one_line() {
        let errors = [
            decode_prefix(b"\n\r\0\x1bxxxxxx", MessageKind::Ack).unwrap_err(),
            validate_name("a\nb").unwrap_err(),
            Header::decode_body(&raw_header(b"a", 0, 0, 1, &[b"h\n:1"])).unwrap_err(),
            WireError::Truncated {
                kind: MessageKind::Header,
                field: "name",
            },
            WireError::BadFlags(2),
            WireError::ChunkTooLong(u32::MAX),
        ];
        for err in errors {
            let text = err.to_string();
            assert!(text.chars().all(|c| !c.is_control()), "{text:?}");
        }
    }

    // ---- truncation everywhere ----

    #[test]
    fn truncation_at_every_position_is_an_error() {
        let h = Header {
            name: "some file.bin".to_string(),
            length: Some(77),
            digest: DigestAlgorithm::Sha256,
            route: vec!["a:1".to_string(), "relay.example:9000".to_string()],
            tree: None,
        };
        let body = header_body(&h);
        for cut in 0..body.len() {
            assert!(
                Header::decode_body(&body[..cut]).is_err(),
                "header cut at {cut}"
            );
        }
        for algorithm in DigestAlgorithm::ALL {
            let t = Trailer {
                length: 5,
                digest: vec![1; algorithm.output_len()],
            };
            let encoded = t.encode();
            let body = body_of(&encoded, MessageKind::Trailer);
            for cut in 0..body.len() {
                assert!(
                    Trailer::decode_body(&body[..cut], algorithm).is_err(),
                    "trailer cut at {cut}"
                );
            }
        }
        let encoded = valid_ack().encode();
        let body = body_of(&encoded, MessageKind::Ack);
        for cut in 0..body.len() {
            assert!(Ack::decode_body(&body[..cut]).is_err(), "ack cut at {cut}");
        }
    }

    // ---- property-style: random and mutated input ----

    /// SplitMix64: small, deterministic, good enough to shake the decoders.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        fn byte(&mut self) -> u8 {
            self.next() as u8
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.byte()).collect()
        }

        fn text(&mut self, max: usize) -> String {
            const ALPHABET: &[char] = &['a', 'Z', '0', '.', '-', ':', 'é', '€', '/', ' ', '\0'];
            let len = self.below(max + 1);
            (0..len)
                .map(|_| ALPHABET[self.below(ALPHABET.len())])
                .collect()
        }
    }

    fn random_header(rng: &mut Rng) -> Header {
        let hops = rng.below(4);
        Header {
            name: rng.text(12),
            length: if rng.below(2) == 0 {
                None
            } else {
                Some(rng.next())
            },
            digest: DigestAlgorithm::ALL[rng.below(DigestAlgorithm::ALL.len())],
            route: (0..hops)
                .map(|_| format!("{}:{}", rng.text(8), rng.below(70_000)))
                .collect(),
            tree: match (hops, rng.below(2)) {
                (0, _) | (_, 0) => None,
                _ => Some(Tree {
                    fanout: 1 + rng.below(3) as u8,
                    position: 1 + rng.below(hops) as u16,
                    transfer: rng.bytes(TRANSFER_ID_LEN).try_into().unwrap_or_default(),
                    resume: rng.below(2) == 0,
                    stall_ms: 1 + rng.below(1 << 20) as u32,
                    connect_ms: 1 + rng.below(1 << 20) as u32,
                }),
            },
        }
    }

    fn random_ack(rng: &mut Rng) -> Ack {
        let digest_len = rng.below(MAX_DIGEST_LEN + 1);
        Ack {
            status: AckStatus::ALL[rng.below(AckStatus::ALL.len())],
            bytes: rng.next(),
            digest: rng.bytes(digest_len),
            message: rng.text(40),
            reports: Vec::new(),
        }
    }

    /// Flips, overwrites, inserts, deletes or cuts a few bytes.
    fn mutate(rng: &mut Rng, body: &mut Vec<u8>) {
        for _ in 0..=rng.below(3) {
            let at = rng.below(body.len());
            match rng.below(6) {
                0 if !body.is_empty() => body[at] ^= 1 << rng.below(8),
                1 if !body.is_empty() => body[at] = rng.byte(),
                2 => body.insert(at.min(body.len()), rng.byte()),
                3 if !body.is_empty() => {
                    body.remove(at);
                }
                4 => body.truncate(at),
                _ => body.push(rng.byte()),
            }
        }
    }

    fn check_header(body: &[u8]) {
        if let Ok(h) = Header::decode_body(body) {
            let encoded = h.encode().expect("a decoded header re-encodes");
            assert_eq!(&encoded[PREFIX_LEN..], body);
        }
    }

    fn check_trailer(body: &[u8]) {
        for algorithm in DigestAlgorithm::ALL {
            if let Ok(t) = Trailer::decode_body(body, algorithm) {
                assert_eq!(&t.encode()[PREFIX_LEN..], body);
            }
        }
    }

    fn check_ack(body: &[u8]) {
        if let Ok(a) = Ack::decode_body(body) {
            assert_eq!(&a.encode()[PREFIX_LEN..], body);
        }
    }

    fn check_prefix_and_chunk(bytes: &[u8]) {
        if let Some(prefix) = bytes.first_chunk::<PREFIX_LEN>() {
            for kind in MessageKind::ALL {
                if let Ok(len) = decode_prefix(prefix, kind) {
                    assert!(len <= kind.max_body_len());
                }
            }
        }
        if let Some(chunk) = bytes.first_chunk::<CHUNK_HEADER_LEN>()
            && let Ok(len) = decode_chunk_header(chunk)
        {
            assert_eq!(&encode_chunk_header(len), chunk);
        }
    }

    #[test]
    fn random_and_mutated_input_never_panics_and_decoded_values_re_encode() {
        let mut rng = Rng(0x7ee_ca57);
        let mut decoded = [0usize; 3];
        for _ in 0..10_000 {
            // Pure noise.
            let len = rng.below(80);
            let noise = rng.bytes(len);
            check_header(&noise);
            check_trailer(&noise);
            check_ack(&noise);
            check_prefix_and_chunk(&noise);

            // Valid (or nearly valid) messages, mutated.
            let mut header = match random_header(&mut rng).encode() {
                Ok(encoded) => encoded,
                Err(_) => header("fallback.bin", None).encode().expect("valid"),
            };
            let digest_len = [0, 16, 32][rng.below(3)];
            let mut trailer = Trailer {
                length: rng.next(),
                digest: rng.bytes(digest_len),
            }
            .encode();
            let mut ack = random_ack(&mut rng).encode();
            for (i, message) in [&mut header, &mut trailer, &mut ack]
                .into_iter()
                .enumerate()
            {
                if rng.below(4) != 0 {
                    mutate(&mut rng, message);
                }
                check_prefix_and_chunk(message);
                let body = message.get(PREFIX_LEN..).unwrap_or_default();
                let ok = match i {
                    0 => Header::decode_body(body).is_ok(),
                    1 => DigestAlgorithm::ALL
                        .iter()
                        .any(|&a| Trailer::decode_body(body, a).is_ok()),
                    _ => Ack::decode_body(body).is_ok(),
                };
                decoded[i] += usize::from(ok);
                check_header(body);
                check_trailer(body);
                check_ack(body);
            }
        }
        // The mutated inputs must exercise the success path as well as the error paths.
        assert!(decoded.iter().all(|&n| n > 500), "{decoded:?}");
    }
}

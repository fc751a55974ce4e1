//! The order of a session — hello and welcome, (keyed) the sender's proof, header, payload (raw
//! or in chunks), trailer, (keyed) the stream's seal, acknowledgement and (keyed) its seal — as
//! state machines with no I/O: each says what to read or write next, and checks what the peer
//! sent against what must come. The library drives them over sockets (`teecast::send`,
//! `teecast::recv`); a relay will drive both at once.
//!
//! The sender's side is [`SenderSession`]: it encodes the framing and counts the payload, so a
//! sender can neither send more than it announced nor end early without it being an error. The
//! receiver's side is [`ReceiverSession`]: [`ReceiverSession::next`] says whether to read framing
//! bytes (exactly how many) or to move payload bytes (at most how many), and the session decodes
//! and validates each frame in turn. Both read acknowledgements and other framed messages with
//! one [`FrameReader`].

use std::borrow::Cow;

use crate::auth::{Key, same_mac};
use crate::crypt::{self, Channel, CryptError, Initiator, TransferKey};
use crate::digest::DigestAlgorithm;
use crate::wire::{
    self, Ack, AckStatus, CAP_KEYED, CAP_REPORTS, CHUNK_HEADER_LEN, ENCRYPTED_VERSION, Header,
    Hello, HostReport, MAC_LEN, MAX_CHUNK, MAX_KEYS, MessageKind, NONCE_LEN, PREFIX_LEN, Report,
    Resume, Seal, Trailer, VERSION, Welcome, WireError,
};

/// Whether a keyed session may use `digest`: only one that resists deliberate collisions, as the
/// seal covers the payload through it.
fn check_keyed_digest(digest: DigestAlgorithm) -> Result<(), WireError> {
    match digest {
        DigestAlgorithm::Blake3 | DigestAlgorithm::Sha256 => Ok(()),
        weak => Err(WireError::WeakDigest(weak)),
    }
}

/// The whole message of `kind` around `body` (its prefix is a function of the two).
fn message(kind: MessageKind, body: &[u8]) -> Vec<u8> {
    wire::frame(kind, body).unwrap_or_default()
}

/// The whole version-3 message of `kind` around `body`, as `crypt` takes it.
fn encrypted_message(kind: MessageKind, body: &[u8]) -> Vec<u8> {
    wire::prefixed(kind.magic(), ENCRYPTED_VERSION, body)
}

/// `message`, sealed as the next message of `channel`.
fn seal_with(channel: &mut Channel, message: &[u8]) -> Vec<u8> {
    // Sealing fails only on a message far beyond AES-GCM's limits, which no message here is.
    channel.seal(message).unwrap_or_default()
}

/// The body of the peer's sealed `kind`, opened with `channel`.
fn open_with(channel: &mut Channel, kind: MessageKind, body: &[u8]) -> Result<Vec<u8>, WireError> {
    channel.open(body).ok_or(WireError::BadSeal(kind.name()))
}

/// The body of the peer's `kind` as it arrived, or opened when the session is encrypted.
fn opened<'a>(
    channel: &mut Option<Channel>,
    kind: MessageKind,
    body: &'a [u8],
) -> Result<Cow<'a, [u8]>, WireError> {
    match channel {
        Some(c) => open_with(c, kind, body).map(Cow::Owned),
        None => Ok(Cow::Borrowed(body)),
    }
}

/// A refusal of the handshake's crypto in the session's terms: a message that does not verify
/// is [`WireError::BadSeal`]; a malformed one is named with its kind.
fn handshake_error(e: CryptError) -> WireError {
    match e {
        CryptError::DoesNotVerify(m) => WireError::BadSeal(match m {
            crypt::Message::Hello => "hello",
            crypt::Message::Welcome => "welcome",
            crypt::Message::TransferKey => "transfer key",
        }),
        CryptError::BodyLength {
            kind,
            len,
            expected,
        } => WireError::BodyTooLong {
            kind: match kind {
                crypt::Message::Hello => MessageKind::Hello,
                crypt::Message::Welcome => MessageKind::Welcome,
                crypt::Message::TransferKey => MessageKind::TransferKey,
            },
            len,
            max: expected,
        },
        _ => WireError::BadSeal("handshake"),
    }
}

/// A session used out of order: a bug in the driver, never the peer's doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OrderError {
    /// More payload than the header announced.
    #[error("{sent} payload bytes is more than the {announced} announced")]
    TooMuchPayload {
        /// Bytes the driver says it sent.
        sent: u64,
        /// The header's length.
        announced: u64,
    },
    /// The payload ended before the announced length.
    #[error("the payload ended after {sent} of the {announced} bytes announced")]
    TooLittlePayload {
        /// Bytes sent.
        sent: u64,
        /// The header's length.
        announced: u64,
    },
    /// A chunk header for a stream whose length is known, or a chunk over the limit or empty.
    #[error("a chunk of {0} bytes does not fit this session")]
    BadChunk(usize),
    /// A step after the session ended, or before its turn.
    #[error("the session is not at that step")]
    WrongStep,
}

/// Reads one framed message: first its prefix, then exactly the body length the prefix
/// announced (bounded by the kind's limit). Feed it exactly [`FrameReader::wanted`] bytes at a
/// time (or fewer; it keeps what it got).
#[derive(Clone, Debug)]
pub struct FrameReader {
    kind: MessageKind,
    /// The version the message must have; `None`: either (a hello, or the welcome answering
    /// a version-3 hello), then the one found.
    version: Option<u16>,
    prefix: Vec<u8>,
    body: Option<(usize, Vec<u8>)>,
    /// Another kind the message may be instead ([`FrameReader::or`]).
    or: Option<MessageKind>,
}

impl FrameReader {
    /// The same reader, that takes a message of `other` in place of its own kind (told by the
    /// magic): [`FrameReader::kind`] says which arrived.
    pub fn or(mut self, other: MessageKind) -> FrameReader {
        self.or = Some(other);
        self
    }

    /// The kind of the message read (once its prefix has arrived; before, the one expected).
    pub fn kind(&self) -> MessageKind {
        self.kind
    }

    /// A reader for a message of `kind`, version 2.
    pub fn new(kind: MessageKind) -> FrameReader {
        FrameReader::of_version(kind, Some(VERSION))
    }

    /// A reader for a message of `kind` in an encrypted session (version 3, sealed).
    pub fn encrypted(kind: MessageKind) -> FrameReader {
        FrameReader::of_version(kind, Some(ENCRYPTED_VERSION))
    }

    /// A reader for a message of `kind` of version 2 or 3, whichever arrives.
    pub fn either(kind: MessageKind) -> FrameReader {
        FrameReader::of_version(kind, None)
    }

    fn of_version(kind: MessageKind, version: Option<u16>) -> FrameReader {
        FrameReader {
            kind,
            version,
            prefix: Vec::with_capacity(PREFIX_LEN),
            body: None,
            or: None,
        }
    }

    /// The version of the message read (once its prefix has arrived).
    pub fn version(&self) -> Option<u16> {
        self.version
    }

    /// Bytes still needed before the message is whole (never more than the kind's limit plus a
    /// prefix, so a caller may read exactly this many without reading into what follows).
    pub fn wanted(&self) -> usize {
        match &self.body {
            None => PREFIX_LEN - self.prefix.len(),
            Some((len, body)) => len - body.len(),
        }
    }

    /// Takes up to [`FrameReader::wanted`] bytes from the front of `bytes`; returns how many it
    /// took and, once the message is whole, its body.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(usize, Option<Vec<u8>>), WireError> {
        let take = bytes.len().min(self.wanted());
        let bytes = &bytes[..take];
        match &mut self.body {
            None => {
                self.prefix.extend_from_slice(bytes);
                if let Ok(prefix) = <[u8; PREFIX_LEN]>::try_from(self.prefix.as_slice()) {
                    if let Some(other) = self.or
                        && prefix[..4] == other.magic()
                    {
                        self.kind = other;
                    }
                    let found = u16::from_be_bytes([prefix[4], prefix[5]]);
                    let version = match self.version {
                        Some(v) => v,
                        None if found == ENCRYPTED_VERSION => ENCRYPTED_VERSION,
                        None => VERSION,
                    };
                    let len = wire::decode_versioned_prefix(&prefix, self.kind, version)?;
                    self.version = Some(version);
                    self.body = Some((len, Vec::with_capacity(len)));
                }
            }
            Some((_, body)) => body.extend_from_slice(bytes),
        }
        match &mut self.body {
            Some((len, body)) if body.len() == *len => Ok((take, Some(std::mem::take(body)))),
            _ => Ok((take, None)),
        }
    }
}

/// The sender's side of a session.
#[derive(Clone, Debug)]
pub struct SenderSession {
    header: Header,
    key: Option<Key>,
    hello: Vec<u8>,
    nonce: [u8; NONCE_LEN],
    /// The session key, once the welcome proved the receiver holds the key.
    session_key: Option<Key>,
    /// The encoded header, sent after the welcome.
    header_bytes: Vec<u8>,
    stream_seal: Option<[u8; MAC_LEN]>,
    /// An encrypted session's keys: every message after the handshake is sealed under them.
    channel: Option<Channel>,
    sent: u64,
    step: SenderStep,
}

/// The sender's side of an encrypted session (version 3) between its hello and the receiver's
/// welcome: [`SenderSession::start_encrypted`] makes it, [`SenderHandshake::welcome`] turns it
/// into the session.
#[derive(Debug)]
pub struct SenderHandshake {
    initiator: Initiator,
    header: Header,
    transfer: TransferKey,
}

impl SenderHandshake {
    /// A reader for the receiver's welcome: version 3, or version 2 from a receiver that holds
    /// no key or not this one.
    pub fn welcome_reader(&self) -> FrameReader {
        FrameReader::either(MessageKind::Welcome)
    }

    /// Takes the welcome the reader read (its `version` and body). When it verifies, the
    /// receiver holds the key: returns the session with what to write next, the transfer key
    /// and the header, sealed. A version-2 welcome is the receiver's word that it holds no key
    /// ([`WireError::PeerUnkeyed`]) or that this hello did not verify under any of its keys
    /// ([`WireError::BadSeal`]).
    pub fn welcome(
        self,
        version: Option<u16>,
        body: &[u8],
    ) -> Result<(SenderSession, Vec<u8>), WireError> {
        if version != Some(ENCRYPTED_VERSION) {
            let welcome = Welcome::decode_body(body)?;
            return Err(match welcome.capabilities & CAP_KEYED {
                0 => WireError::PeerUnkeyed,
                _ => WireError::BadSeal("hello"),
            });
        }
        let mut channel = self
            .initiator
            .welcome(&encrypted_message(MessageKind::Welcome, body))
            .map_err(handshake_error)?;
        let mut out = channel
            .send_transfer_key(&self.transfer)
            .map_err(handshake_error)?;
        let header_bytes = self.header.encode()?;
        out.extend(seal_with(&mut channel, &header_bytes));
        let step = match self.header.tree.is_some_and(|t| t.resume) {
            true => SenderStep::Resume,
            false => SenderStep::Payload,
        };
        let session = SenderSession {
            header: self.header,
            key: None,
            hello: Vec::new(),
            nonce: [0; NONCE_LEN],
            session_key: None,
            header_bytes,
            stream_seal: None,
            channel: Some(channel),
            sent: 0,
            step,
        };
        Ok((session, out))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SenderStep {
    Welcome,
    /// A resuming header went out: the receiver's offset is due.
    Resume,
    Payload,
    AwaitAck,
    Done,
}

/// What the receiver's acknowledgement says of the transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The receiver stored exactly what was sent: its byte count and digest match.
    Confirmed(Ack),
    /// The receiver refused, or answered with a different count or digest.
    Refused(Ack),
}

impl SenderSession {
    /// Starts a session for `header`, keyed when `key` is given, with this side's fresh
    /// `nonce`; returns it with the hello to write first. A keyed session needs a cryptographic
    /// digest in the header.
    pub fn start(
        header: &Header,
        key: Option<Key>,
        nonce: [u8; NONCE_LEN],
    ) -> Result<(SenderSession, Vec<u8>), WireError> {
        let header_bytes = header.encode()?;
        if key.is_some() {
            check_keyed_digest(header.digest)?;
        }
        // A relayed stream's sender reads the reports of the hosts below as they come.
        let reports = match header.tree {
            Some(_) => CAP_REPORTS,
            None => 0,
        };
        let hello = Hello {
            capabilities: if key.is_some() { CAP_KEYED } else { 0 } | reports,
            nonce,
        }
        .encode();
        let session = SenderSession {
            header: header.clone(),
            key,
            hello: hello.clone(),
            nonce,
            session_key: None,
            header_bytes,
            stream_seal: None,
            channel: None,
            sent: 0,
            step: SenderStep::Welcome,
        };
        Ok((session, hello))
    }

    /// Starts an encrypted session (version 3) for `header` under the pre-shared `psk`, with
    /// this side's ephemeral X25519 private key (32 fresh random bytes) and the transfer's key;
    /// returns the handshake with the hello to write first. Any digest will do: the records
    /// and the sealed trailer are authenticated by the AEAD, not by the digest.
    pub fn start_encrypted(
        header: &Header,
        psk: &Key,
        ephemeral: [u8; 32],
        transfer: TransferKey,
    ) -> Result<(SenderHandshake, Vec<u8>), WireError> {
        header.encode()?;
        let (initiator, hello) = Initiator::start(psk, ephemeral).map_err(handshake_error)?;
        let handshake = SenderHandshake {
            initiator,
            header: header.clone(),
            transfer,
        };
        Ok((handshake, hello))
    }

    /// True when the session is encrypted (version 3).
    pub fn is_encrypted(&self) -> bool {
        self.channel.is_some()
    }

    /// A reader for a message of `kind` from the receiver, in this session's version.
    fn reader(&self, kind: MessageKind) -> FrameReader {
        match self.channel {
            Some(_) => FrameReader::encrypted(kind),
            None => FrameReader::new(kind),
        }
    }

    /// A reader for the receiver's welcome.
    pub fn welcome_reader(&self) -> FrameReader {
        FrameReader::new(MessageKind::Welcome)
    }

    /// Takes the welcome's body: checks that both ends hold a key or neither does, and (keyed)
    /// the receiver's proof. Returns what to write next: (keyed) this side's proof, then the
    /// header.
    pub fn welcome(&mut self, body: &[u8]) -> Result<Vec<u8>, WireError> {
        if self.step != SenderStep::Welcome {
            return Err(WireError::OutOfTurn(MessageKind::Welcome));
        }
        let welcome = Welcome::decode_body(body)?;
        let peer_keyed = welcome.capabilities & CAP_KEYED != 0;
        let mut out = Vec::new();
        match (&self.key, peer_keyed) {
            (Some(_), false) => return Err(WireError::PeerUnkeyed),
            (None, true) => return Err(WireError::KeyRequired),
            (None, false) => {}
            (Some(key), true) => {
                // One proof per key the receiver holds (old and new, during a rotation).
                let expected =
                    key.receiver_proof(&self.hello, &welcome.nonce, welcome.capabilities);
                if !welcome
                    .proof
                    .chunks_exact(MAC_LEN)
                    .any(|p| same_mac(p, &expected))
                {
                    return Err(WireError::BadSeal("receiver's proof"));
                }
                let welcome_bytes = message(MessageKind::Welcome, body);
                out.extend(Seal(key.sender_proof(&self.hello, &welcome_bytes)).encode());
                self.session_key = Some(key.session_key(&self.nonce, &welcome.nonce));
            }
        }
        out.extend_from_slice(&self.header_bytes);
        self.step = if self.header.tree.is_some_and(|t| t.resume) {
            SenderStep::Resume
        } else {
            SenderStep::Payload
        };
        Ok(out)
    }

    /// A reader for the receiver's next message after the trailer: its ack, or a report
    /// before it (relayed streams).
    pub fn ack_or_report_reader(&self) -> FrameReader {
        let reader = self.reader(MessageKind::Ack);
        match self.header.tree {
            Some(_) => reader.or(MessageKind::Report),
            None => reader,
        }
    }

    /// A reader for a report message (relayed streams, between the header and the ack).
    pub fn report_reader(&self) -> FrameReader {
        self.reader(MessageKind::Report)
    }

    /// Takes a report message's body (opened, in an encrypted session: reports are sealed in
    /// order with the receiver's other messages): the host reports it carries. A report is not
    /// sealed in version 2, keyed or not: it is for showing progress only, and what the ack
    /// reports of the same hosts, sealed, stands.
    pub fn report(&mut self, body: &[u8]) -> Result<Vec<HostReport>, WireError> {
        if self.header.tree.is_none()
            || !matches!(self.step, SenderStep::Payload | SenderStep::AwaitAck)
        {
            return Err(WireError::OutOfTurn(MessageKind::Report));
        }
        let body = &*opened(&mut self.channel, MessageKind::Report, body)?;
        Ok(Report::decode_body(body)?.reports)
    }

    /// A reader for the receiver's answer to a resuming header.
    pub fn resume_reader(&self) -> FrameReader {
        self.reader(MessageKind::Resume)
    }

    /// Takes the receiver's answer to a resuming header (and, keyed, its seal's body): the
    /// payload bytes it holds, from which this side goes on (they count as sent).
    pub fn resumed(&mut self, body: &[u8], seal: Option<&[u8]>) -> Result<u64, WireError> {
        if self.step != SenderStep::Resume {
            return Err(WireError::OutOfTurn(MessageKind::Resume));
        }
        let body = &*opened(&mut self.channel, MessageKind::Resume, body)?;
        let resume = Resume::decode_body(body)?;
        if let Some(k) = &self.session_key {
            let seal = Seal::decode_body(seal.unwrap_or_default())?;
            let expected = k.resume_seal(&self.header_bytes, &message(MessageKind::Resume, body));
            if !same_mac(&seal.0, &expected) {
                return Err(WireError::BadSeal("resume's seal"));
            }
        }
        if let Some(length) = self.header.length
            && resume.offset > length
        {
            return Err(WireError::BadLength(resume.offset));
        }
        self.sent = resume.offset;
        self.step = SenderStep::Payload;
        Ok(resume.offset)
    }

    /// True when the session is sealed under a key (the acknowledgement then carries a seal).
    pub fn is_keyed(&self) -> bool {
        self.key.is_some()
    }

    /// True when the payload goes in chunks (the length was not announced).
    pub fn is_chunked(&self) -> bool {
        self.header.length.is_none()
    }

    /// Payload bytes accounted so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// The header of a chunk of `len` bytes, before writing them (chunked sessions only); the
    /// chunk's bytes are accounted here.
    pub fn chunk(&mut self, len: usize) -> Result<[u8; CHUNK_HEADER_LEN], OrderError> {
        let fits = u32::try_from(len).ok().filter(|&l| l > 0 && l <= MAX_CHUNK);
        match (self.step, self.header.length, fits) {
            (SenderStep::Payload, None, Some(l)) => {
                self.sent += u64::from(l);
                Ok(wire::encode_chunk_header(l))
            }
            (SenderStep::Payload, _, _) => Err(OrderError::BadChunk(len)),
            _ => Err(OrderError::WrongStep),
        }
    }

    /// A keepalive to write between chunks while the source has nothing to send (chunked
    /// sessions only): it tells the receiver the sender is still there.
    pub fn keepalive(&self) -> Result<[u8; CHUNK_HEADER_LEN], OrderError> {
        match (self.step, self.header.length) {
            (SenderStep::Payload, None) => Ok(wire::KEEPALIVE),
            (SenderStep::Payload, Some(_)) => Err(OrderError::BadChunk(0)),
            _ => Err(OrderError::WrongStep),
        }
    }

    /// Accounts `n` payload bytes written raw (sessions of known length only).
    pub fn payload(&mut self, n: u64) -> Result<(), OrderError> {
        match (self.step, self.header.length) {
            (SenderStep::Payload, Some(announced)) => {
                let sent = self.sent.saturating_add(n);
                if sent > announced {
                    return Err(OrderError::TooMuchPayload { sent, announced });
                }
                self.sent = sent;
                Ok(())
            }
            (SenderStep::Payload, None) => Err(OrderError::BadChunk(0)),
            _ => Err(OrderError::WrongStep),
        }
    }

    /// Ends the payload with its digest: returns the bytes to write (the end-of-chunks marker
    /// when chunked, the trailer, and in a keyed session the stream's seal). Then the
    /// acknowledgement is due.
    pub fn finish(&mut self, digest: &[u8]) -> Result<Vec<u8>, OrderError> {
        if self.step != SenderStep::Payload {
            return Err(OrderError::WrongStep);
        }
        let mut out = Vec::new();
        match self.header.length {
            Some(announced) if self.sent != announced => {
                return Err(OrderError::TooLittlePayload {
                    sent: self.sent,
                    announced,
                });
            }
            Some(_) => {}
            None => out.extend_from_slice(&wire::encode_chunk_header(0)),
        }
        let trailer = Trailer {
            length: self.sent,
            digest: digest.to_vec(),
        }
        .encode();
        match &mut self.channel {
            Some(c) => out.extend(seal_with(c, &trailer)),
            None => out.extend_from_slice(&trailer),
        }
        if let Some(k) = &self.session_key {
            let seal = k.stream_seal(&self.header_bytes, &trailer);
            out.extend(Seal(seal).encode());
            self.stream_seal = Some(seal);
        }
        self.step = SenderStep::AwaitAck;
        Ok(out)
    }

    /// A reader for the acknowledgement.
    pub fn ack_reader(&self) -> FrameReader {
        self.reader(MessageKind::Ack)
    }

    /// A reader for the acknowledgement's seal (keyed sessions).
    pub fn seal_reader(&self) -> FrameReader {
        FrameReader::new(MessageKind::Seal)
    }

    /// Judges the acknowledgement's body (and, keyed, its seal's body) against what was sent
    /// and its `digest`. In a keyed session an acknowledgement without a valid seal is an error:
    /// it may not come from the receiver. An acknowledgement before [`SenderSession::finish`]
    /// (a receiver refusing mid-stream) can only be a refusal.
    pub fn ack(
        &mut self,
        body: &[u8],
        seal: Option<&[u8]>,
        digest: &[u8],
    ) -> Result<Verdict, WireError> {
        let body = &*opened(&mut self.channel, MessageKind::Ack, body)?;
        let ack = Ack::decode_body(body)?;
        if let Some(k) = &self.session_key {
            let seal = Seal::decode_body(seal.unwrap_or_default())?;
            let ack_message = message(MessageKind::Ack, body);
            let expected = k.ack_seal(&self.stream_seal.unwrap_or([0; MAC_LEN]), &ack_message);
            // A receiver that refused the stream before its trailer (at the header, or
            // mid-stream) never saw the stream's seal and chains to none, while this side may
            // have sent the whole stream before reading the answer: a refusal may chain to none.
            let unchained = || {
                ack.status != AckStatus::Ok
                    && same_mac(&seal.0, &k.ack_seal(&[0; MAC_LEN], &ack_message))
            };
            if !same_mac(&seal.0, &expected) && !unchained() {
                return Err(WireError::BadSeal("acknowledgement's seal"));
            }
        }
        let finished = self.step == SenderStep::AwaitAck;
        self.step = SenderStep::Done;
        let matches = finished
            && ack.status == AckStatus::Ok
            && ack.bytes == self.sent
            && ack.digest == digest
            && ack.digest.len() == self.header.digest.output_len();
        Ok(if matches {
            Verdict::Confirmed(ack)
        } else {
            Verdict::Refused(ack)
        })
    }
}

/// What a receiver does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Read at most this many framing bytes and hand them to [`ReceiverSession::framing`]; then
    /// write whatever [`ReceiverSession::take_reply`] gives.
    Framing(usize),
    /// Move at most this many payload bytes (more may follow), and account them with
    /// [`ReceiverSession::payload`].
    Payload(u64),
    /// The stream has ended: check it ([`ReceiverSession::verify`]) and answer
    /// ([`ReceiverSession::ack`]).
    Verify,
    /// The header resumes a stream: answer with the payload bytes held
    /// ([`ReceiverSession::resume_at`]).
    Resume,
}

/// The receiver's side of a framed session.
#[derive(Clone, Debug)]
pub struct ReceiverSession {
    /// Every key a sender may prove (at most [`MAX_KEYS`]).
    keys: Vec<Key>,
    /// The one its sender proved, once it has.
    key: Option<Key>,
    /// The sender's nonce, from its hello.
    sender_nonce: [u8; NONCE_LEN],
    nonce: [u8; NONCE_LEN],
    step: ReceiverStep,
    hello: Vec<u8>,
    welcome: Vec<u8>,
    reply: Option<Vec<u8>>,
    session_key: Option<Key>,
    header: Option<Header>,
    header_bytes: Vec<u8>,
    trailer: Option<Trailer>,
    trailer_bytes: Vec<u8>,
    stream_seal: Option<[u8; MAC_LEN]>,
    /// An encrypted session's keys, once the hello verified.
    channel: Option<Channel>,
    /// An encrypted session's transfer key, once it arrived.
    transfer: Option<TransferKey>,
    received: u64,
    keepalives: u64,
    /// The sender reads report messages (its hello said so, or the session is encrypted).
    takes_reports: bool,
    /// The ack has been made: no report may follow it.
    acked: bool,
}

#[derive(Clone, Debug)]
enum ReceiverStep {
    Hello(FrameReader),
    /// Keyed: the sender's proof of the key.
    Proof(FrameReader),
    /// Encrypted: the transfer key.
    TransferKey(FrameReader),
    Header(FrameReader),
    /// A resuming header arrived: the offset this side holds is due.
    Resume,
    /// Raw payload of known length: bytes still due.
    Raw(u64),
    /// Waiting for a chunk header: the bytes of it so far.
    ChunkHeader(Vec<u8>),
    /// Inside a chunk: bytes still due.
    Chunk(u64),
    Trailer(FrameReader),
    /// Keyed: the stream's seal.
    StreamSeal(FrameReader),
    Verify,
}

/// Why a stream failed the receiver's checks after its trailer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Mismatch {
    /// The trailer's length, or the header's, differs from the bytes received.
    #[error("the sender announced {announced} bytes, {received} arrived")]
    Length {
        /// The length the sender announced.
        announced: u64,
        /// Bytes received.
        received: u64,
    },
    /// The trailer's digest differs from the digest of the bytes received.
    #[error("the sender's digest differs from the digest of the bytes received")]
    Digest {
        /// The trailer's digest.
        announced: Vec<u8>,
        /// The received bytes' digest.
        received: Vec<u8>,
    },
    /// The stream's seal does not verify under the session key.
    #[error("the stream's seal does not verify: changed, replayed or from another session")]
    Seal,
}

impl ReceiverSession {
    /// A session waiting for its hello, keyed when `key` is given, with this side's fresh
    /// `nonce`.
    pub fn new(key: Option<Key>, nonce: [u8; NONCE_LEN]) -> ReceiverSession {
        ReceiverSession::with_keys(key.into_iter().collect(), nonce)
    }

    /// A session waiting for its hello, keyed when `keys` holds any (beyond [`MAX_KEYS`] are
    /// ignored): the welcome proves each, a sender proving any one is accepted, and the
    /// session's key and seals follow the one it proved ([`ReceiverSession::key`]).
    pub fn with_keys(mut keys: Vec<Key>, nonce: [u8; NONCE_LEN]) -> ReceiverSession {
        keys.truncate(MAX_KEYS);
        ReceiverSession {
            keys,
            key: None,
            sender_nonce: [0; NONCE_LEN],
            nonce,
            step: ReceiverStep::Hello(FrameReader::either(MessageKind::Hello)),
            hello: Vec::new(),
            welcome: Vec::new(),
            reply: None,
            session_key: None,
            header: None,
            header_bytes: Vec::new(),
            trailer: None,
            trailer_bytes: Vec::new(),
            stream_seal: None,
            channel: None,
            transfer: None,
            received: 0,
            keepalives: 0,
            takes_reports: false,
            acked: false,
        }
    }

    /// True when the session is encrypted (version 3): the payload is the transfer's records.
    pub fn is_encrypted(&self) -> bool {
        self.channel.is_some()
    }

    /// An encrypted session's transfer key, once it arrived: what opens the records (and what a
    /// relay passes on to its children).
    pub fn transfer_key(&self) -> Option<&TransferKey> {
        self.transfer.as_ref()
    }

    /// The key the sender proved, once it has (`None` in a session without keys).
    pub fn key(&self) -> Option<&Key> {
        self.key.as_ref()
    }

    /// Keepalives received so far (each one is the sender's word that it is still there).
    pub fn keepalives(&self) -> u64 {
        self.keepalives
    }

    /// What to do next.
    pub fn next(&self) -> Next {
        match &self.step {
            ReceiverStep::Hello(r)
            | ReceiverStep::Proof(r)
            | ReceiverStep::TransferKey(r)
            | ReceiverStep::Header(r)
            | ReceiverStep::Trailer(r)
            | ReceiverStep::StreamSeal(r) => Next::Framing(r.wanted()),
            ReceiverStep::Raw(left) | ReceiverStep::Chunk(left) => Next::Payload(*left),
            ReceiverStep::ChunkHeader(got) => Next::Framing(CHUNK_HEADER_LEN - got.len()),
            ReceiverStep::Verify => Next::Verify,
            ReceiverStep::Resume => Next::Resume,
        }
    }

    /// Answers a resuming header: this side holds `offset` payload bytes of the stream, and
    /// the rest follows. Returns the answer to write (and, keyed, its seal).
    pub fn resume_at(&mut self, offset: u64) -> Result<Vec<u8>, OrderError> {
        let Some(header) = self
            .header
            .as_ref()
            .filter(|_| matches!(self.step, ReceiverStep::Resume))
        else {
            return Err(OrderError::WrongStep);
        };
        self.step = match header.length {
            Some(announced) if offset > announced => {
                return Err(OrderError::TooMuchPayload {
                    sent: offset,
                    announced,
                });
            }
            Some(announced) if offset == announced => ReceiverStep::Trailer(match self.channel {
                Some(_) => FrameReader::encrypted(MessageKind::Trailer),
                None => FrameReader::new(MessageKind::Trailer),
            }),
            Some(announced) => ReceiverStep::Raw(announced - offset),
            None => ReceiverStep::ChunkHeader(Vec::new()),
        };
        self.received = offset;
        let mut out = Resume { offset }.encode();
        if let Some(c) = &mut self.channel {
            return Ok(seal_with(c, &out));
        }
        if let Some(k) = &self.session_key {
            out.extend(Seal(k.resume_seal(&self.header_bytes, &out)).encode());
        }
        Ok(out)
    }

    /// The bytes to write to the sender now, if any (the welcome, once the hello has arrived).
    pub fn take_reply(&mut self) -> Option<Vec<u8>> {
        self.reply.take()
    }

    /// True once the hello has arrived: from then on the sender speaks this protocol and is
    /// owed an acknowledgement.
    pub fn has_hello(&self) -> bool {
        !self.hello.is_empty()
    }

    /// Keyed: the welcome went out and the sender's proof of the key is due. A sender that
    /// closes here most likely found this side's proof wrong: it holds another key.
    pub fn awaits_proof(&self) -> bool {
        matches!(self.step, ReceiverStep::Proof(_))
    }

    /// The header, once it has arrived (and, keyed, after the sender proved the key).
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    /// Payload bytes accounted so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Hands over framing bytes: at most what [`Next::Framing`] asked for (fewer is fine: the
    /// session keeps them and asks for the rest; any excess is ignored).
    pub fn framing(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        let encrypted = self.channel.is_some();
        let reader_for = |kind| match encrypted {
            true => FrameReader::encrypted(kind),
            false => FrameReader::new(kind),
        };
        match &mut self.step {
            ReceiverStep::Hello(reader) => {
                if let (_, Some(body)) = reader.push(bytes)? {
                    match reader.version() {
                        Some(ENCRYPTED_VERSION) => self.encrypted_hello_arrived(&body)?,
                        _ => self.hello_arrived(&body)?,
                    }
                }
            }
            ReceiverStep::TransferKey(reader) => {
                if let (_, Some(body)) = reader.push(bytes)? {
                    let Some(channel) = &mut self.channel else {
                        return Err(WireError::OutOfTurn(MessageKind::TransferKey));
                    };
                    let message = encrypted_message(MessageKind::TransferKey, &body);
                    let transfer = channel
                        .receive_transfer_key(&message)
                        .map_err(handshake_error)?;
                    self.transfer = Some(transfer);
                    self.step = ReceiverStep::Header(FrameReader::encrypted(MessageKind::Header));
                }
            }
            ReceiverStep::Proof(reader) => {
                if let (_, Some(body)) = reader.push(bytes)? {
                    let seal = Seal::decode_body(&body)?;
                    // The sender names no key: it is the one its proof verifies under.
                    let Some(key) = self
                        .keys
                        .iter()
                        .find(|k| same_mac(&seal.0, &k.sender_proof(&self.hello, &self.welcome)))
                    else {
                        return Err(WireError::BadSeal("sender's proof"));
                    };
                    self.session_key = Some(key.session_key(&self.sender_nonce, &self.nonce));
                    self.key = Some(key.clone());
                    self.step = ReceiverStep::Header(FrameReader::new(MessageKind::Header));
                }
            }
            ReceiverStep::Header(reader) => {
                if let (_, Some(body)) = reader.push(bytes)? {
                    let body = match &mut self.channel {
                        Some(c) => open_with(c, MessageKind::Header, &body)?,
                        None => body,
                    };
                    let header = Header::decode_body(&body)?;
                    if self.session_key.is_some() {
                        check_keyed_digest(header.digest)?;
                    }
                    self.header_bytes = message(MessageKind::Header, &body);
                    self.step = match header.length {
                        _ if header.tree.is_some_and(|t| t.resume) => ReceiverStep::Resume,
                        Some(0) => ReceiverStep::Trailer(reader_for(MessageKind::Trailer)),
                        Some(len) => ReceiverStep::Raw(len),
                        None => ReceiverStep::ChunkHeader(Vec::new()),
                    };
                    self.header = Some(header);
                }
            }
            ReceiverStep::Trailer(reader) => {
                if let (_, Some(body)) = reader.push(bytes)? {
                    let body = match &mut self.channel {
                        Some(c) => open_with(c, MessageKind::Trailer, &body)?,
                        None => body,
                    };
                    let algorithm = self
                        .header
                        .as_ref()
                        .map_or(DigestAlgorithm::None, |h| h.digest);
                    self.trailer = Some(Trailer::decode_body(&body, algorithm)?);
                    self.trailer_bytes = message(MessageKind::Trailer, &body);
                    self.step = if self.session_key.is_some() {
                        ReceiverStep::StreamSeal(FrameReader::new(MessageKind::Seal))
                    } else {
                        ReceiverStep::Verify
                    };
                }
            }
            ReceiverStep::StreamSeal(reader) => {
                if let (_, Some(body)) = reader.push(bytes)? {
                    self.stream_seal = Some(Seal::decode_body(&body)?.0);
                    self.step = ReceiverStep::Verify;
                }
            }
            ReceiverStep::ChunkHeader(got) => {
                let take = bytes.len().min(CHUNK_HEADER_LEN - got.len());
                got.extend_from_slice(&bytes[..take]);
                if let Ok(header) = <[u8; CHUNK_HEADER_LEN]>::try_from(got.as_slice()) {
                    if header == wire::KEEPALIVE {
                        self.keepalives += 1;
                        got.clear();
                        return Ok(());
                    }
                    self.step = match wire::decode_chunk_header(&header)? {
                        0 => ReceiverStep::Trailer(reader_for(MessageKind::Trailer)),
                        n => ReceiverStep::Chunk(u64::from(n)),
                    };
                }
            }
            ReceiverStep::Raw(_)
            | ReceiverStep::Chunk(_)
            | ReceiverStep::Verify
            | ReceiverStep::Resume => {}
        }
        Ok(())
    }

    /// An encrypted hello arrived: answer it under the key it verifies under, this side's fresh
    /// random bytes as its ephemeral X25519 key. One that verifies under no key this side holds
    /// (or when it holds none) is answered with a version-2 welcome, which tells the sender what
    /// this side holds (no key, or another), and refused.
    fn encrypted_hello_arrived(&mut self, body: &[u8]) -> Result<(), WireError> {
        let hello = encrypted_message(MessageKind::Hello, body);
        let answered = self
            .keys
            .iter()
            .find_map(|k| Some((k, crypt::respond(k, self.nonce, &hello).ok()?)));
        self.hello = hello;
        let Some((key, (channel, welcome))) = answered else {
            self.reply = Some(self.welcome_v2());
            return Err(match self.keys.is_empty() {
                true => WireError::KeyRequired,
                false => WireError::BadSeal("hello"),
            });
        };
        self.key = Some(key.clone());
        self.channel = Some(channel);
        self.reply = Some(welcome);
        self.takes_reports = true;
        self.step = ReceiverStep::TransferKey(FrameReader::encrypted(MessageKind::TransferKey));
        Ok(())
    }

    /// The version-2 welcome: this side's capabilities, nonce and a proof per key.
    fn welcome_v2(&self) -> Vec<u8> {
        let capabilities = if self.keys.is_empty() { 0 } else { CAP_KEYED };
        let proof = self
            .keys
            .iter()
            .flat_map(|k| k.receiver_proof(&self.hello, &self.nonce, capabilities))
            .collect();
        Welcome {
            capabilities,
            nonce: self.nonce,
            proof,
        }
        .encode()
    }

    /// The hello arrived: answer with a welcome (always, so the sender learns what this side
    /// holds), then refuse a sender whose key use differs from this side's.
    fn hello_arrived(&mut self, body: &[u8]) -> Result<(), WireError> {
        let hello = Hello::decode_body(body)?;
        self.hello = message(MessageKind::Hello, body);
        let welcome = self.welcome_v2();
        self.welcome = welcome.clone();
        self.reply = Some(welcome);
        let peer_keyed = hello.capabilities & CAP_KEYED != 0;
        self.takes_reports = hello.capabilities & CAP_REPORTS != 0;
        match (!self.keys.is_empty(), peer_keyed) {
            (true, false) => Err(WireError::PeerUnkeyed),
            (false, true) => Err(WireError::KeyRequired),
            (true, true) => {
                self.sender_nonce = hello.nonce;
                self.step = ReceiverStep::Proof(FrameReader::new(MessageKind::Seal));
                Ok(())
            }
            (false, false) => {
                self.step = ReceiverStep::Header(FrameReader::new(MessageKind::Header));
                Ok(())
            }
        }
    }

    /// Accounts `n` payload bytes moved (at most what [`Next::Payload`] allowed; any excess is
    /// ignored, as it would belong to the next frame).
    pub fn payload(&mut self, n: u64) {
        let (left, chunked) = match &mut self.step {
            ReceiverStep::Raw(left) => (left, false),
            ReceiverStep::Chunk(left) => (left, true),
            _ => return,
        };
        let n = n.min(*left);
        *left -= n;
        self.received += n;
        if *left == 0 {
            self.step = if chunked {
                ReceiverStep::ChunkHeader(Vec::new())
            } else {
                ReceiverStep::Trailer(match self.channel {
                    Some(_) => FrameReader::encrypted(MessageKind::Trailer),
                    None => FrameReader::new(MessageKind::Trailer),
                })
            };
        }
    }

    /// Checks lengths and `digest` (of the bytes received) against the trailer and header, and
    /// in a keyed session the stream's seal.
    pub fn verify(&self, digest: &[u8]) -> Result<(), Mismatch> {
        let ended = matches!(self.step, ReceiverStep::Verify);
        let Some(trailer) = self.trailer.as_ref().filter(|_| ended) else {
            return Err(Mismatch::Length {
                announced: self.header.as_ref().and_then(|h| h.length).unwrap_or(0),
                received: self.received,
            });
        };
        let announced = self.header.as_ref().and_then(|h| h.length);
        if trailer.length != self.received || announced.is_some_and(|l| l != self.received) {
            return Err(Mismatch::Length {
                announced: trailer.length,
                received: self.received,
            });
        }
        if trailer.digest != digest {
            return Err(Mismatch::Digest {
                announced: trailer.digest.clone(),
                received: digest.to_vec(),
            });
        }
        if let Some(k) = &self.session_key {
            let expected = k.stream_seal(&self.header_bytes, &self.trailer_bytes);
            if !self.stream_seal.is_some_and(|s| same_mac(&s, &expected)) {
                return Err(Mismatch::Seal);
            }
        }
        Ok(())
    }

    /// The digest the sender's trailer announced, once the trailer has arrived: what a relay
    /// passes on to its children, so that every host checks against the sender's word.
    pub fn announced_digest(&self) -> Option<&[u8]> {
        self.trailer.as_ref().map(|t| t.digest.as_slice())
    }

    /// The acknowledgement to send (and, keyed, its seal).
    pub fn ack(
        &mut self,
        status: AckStatus,
        bytes: u64,
        digest: &[u8],
        message_text: &str,
    ) -> Vec<u8> {
        self.ack_with_reports(status, bytes, digest, message_text, Vec::new())
    }

    /// A report message (or several: at most [`wire::MAX_REPORTS_PER_MESSAGE`] hosts each) of
    /// `reports` to write to the sender now, sealed in an encrypted session: empty when the
    /// sender does not read reports, before the header, or once the ack is made. Written in the
    /// order made, before the ack.
    pub fn report(&mut self, reports: &[HostReport]) -> Vec<u8> {
        let streaming = matches!(
            self.step,
            ReceiverStep::Raw(_)
                | ReceiverStep::ChunkHeader(_)
                | ReceiverStep::Chunk(_)
                | ReceiverStep::Trailer(_)
                | ReceiverStep::StreamSeal(_)
                | ReceiverStep::Verify
        );
        if !self.takes_reports
            || !streaming
            || self.acked
            || self.header.as_ref().is_none_or(|h| h.tree.is_none())
        {
            return Vec::new();
        }
        let mut out = Vec::new();
        for some in reports.chunks(wire::MAX_REPORTS_PER_MESSAGE) {
            let message = Report {
                reports: some.to_vec(),
            }
            .encode();
            match &mut self.channel {
                Some(c) => out.extend(seal_with(c, &message)),
                None => out.extend(message),
            }
        }
        out
    }

    /// [`ReceiverSession::ack`] from a relay, with the outcome of every host below it.
    pub fn ack_with_reports(
        &mut self,
        status: AckStatus,
        bytes: u64,
        digest: &[u8],
        message_text: &str,
        reports: Vec<HostReport>,
    ) -> Vec<u8> {
        self.acked = true;
        let mut out = Ack {
            status,
            bytes,
            digest: digest.to_vec(),
            message: message_text.to_string(),
            reports,
        }
        .encode();
        if let Some(c) = &mut self.channel {
            return seal_with(c, &out);
        }
        if let Some(k) = &self.session_key {
            let seal = k.ack_seal(&self.stream_seal.unwrap_or([0; MAC_LEN]), &out);
            out.extend(Seal(seal).encode());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(length: Option<u64>, digest: DigestAlgorithm) -> Header {
        Header {
            name: "f".into(),
            length,
            digest,
            route: Vec::new(),
            tree: None,
        }
    }

    const DIGEST: [u8; 32] = [9; 32];
    const KEY: [u8; 32] = [0x42; 32];

    fn key() -> Option<Key> {
        Some(Key::from_bytes(KEY))
    }

    /// Drives a receiver over `wire` the way the I/O layer does, in pieces of at most `piece`
    /// bytes; returns the payload it moved and what it replied.
    fn drive(
        rx: &mut ReceiverSession,
        wire: &[u8],
        piece: usize,
    ) -> Result<(Vec<u8>, Vec<u8>), WireError> {
        let mut at = 0;
        let mut payload = Vec::new();
        let mut replies = Vec::new();
        loop {
            match rx.next() {
                Next::Framing(n) => {
                    let end = (at + n.min(piece)).min(wire.len());
                    if end == at {
                        return Ok((payload, replies));
                    }
                    let taken = rx.framing(&wire[at..end]);
                    replies.extend(rx.take_reply().unwrap_or_default());
                    taken?;
                    at = end;
                }
                Next::Payload(n) => {
                    let n = usize::try_from(n).unwrap().min(piece);
                    let end = (at + n).min(wire.len());
                    if end == at {
                        return Ok((payload, replies));
                    }
                    payload.extend_from_slice(&wire[at..end]);
                    rx.payload((end - at) as u64);
                    at = end;
                }
                Next::Verify | Next::Resume => return Ok((payload, replies)),
            }
        }
    }

    /// Hands `bytes` to the receiver as framing, as much as it asks for each time.
    fn feed(rx: &mut ReceiverSession, bytes: &[u8]) -> Result<(), WireError> {
        let mut at = 0;
        while let Next::Framing(n) = rx.next() {
            if at == bytes.len() {
                break;
            }
            let end = (at + n).min(bytes.len());
            rx.framing(&bytes[at..end])?;
            at = end;
        }
        Ok(())
    }

    /// A whole session between a sender and a receiver (each with its key, if any); returns
    /// the receiver and the sender's bytes after the hello, for the tests to tamper with.
    struct Run {
        tx: SenderSession,
        rx: ReceiverSession,
        /// What the sender wrote after the hello: proof (keyed) and header.
        opening: Vec<u8>,
    }

    fn open(h: &Header, tx_key: Option<Key>, rx_key: Option<Key>, rx_nonce: u8) -> Run {
        let (mut tx, hello) = SenderSession::start(h, tx_key, [3; NONCE_LEN]).unwrap();
        let mut rx = ReceiverSession::new(rx_key, [rx_nonce; NONCE_LEN]);
        let (_, welcome) = drive(&mut rx, &hello, usize::MAX).unwrap();
        let opening = tx.welcome(&welcome[PREFIX_LEN..]).unwrap();
        Run { tx, rx, opening }
    }

    /// The sender's whole stream after the hello, for `payload`.
    fn stream(run: &mut Run, payload: &[u8]) -> Vec<u8> {
        let mut wire = run.opening.clone();
        if run.tx.is_chunked() {
            for part in payload.chunks(3) {
                wire.extend(run.tx.chunk(part.len()).unwrap());
                wire.extend_from_slice(part);
            }
        } else {
            wire.extend_from_slice(payload);
            run.tx.payload(payload.len() as u64).unwrap();
        }
        wire.extend(run.tx.finish(&DIGEST).unwrap());
        wire
    }

    #[test]
    fn sessions_of_every_shape_are_received_whole_and_confirmed() {
        for k in [None, key()] {
            for length in [Some(5), None, Some(0)] {
                let payload = if length == Some(0) {
                    &b""[..]
                } else {
                    b"hello"
                };
                for piece in [1, 3, usize::MAX] {
                    let h = header(length, DigestAlgorithm::Blake3);
                    let mut run = open(&h, k.clone(), k.clone(), 7);
                    let wire = stream(&mut run, payload);
                    let (got, _) = drive(&mut run.rx, &wire, piece).unwrap();
                    assert_eq!(run.rx.next(), Next::Verify, "{length:?} piece {piece}");
                    assert_eq!(got, payload);
                    assert_eq!(run.rx.verify(&DIGEST), Ok(()));
                    assert!(matches!(
                        run.rx.verify(&[0; 32]),
                        Err(Mismatch::Digest { .. })
                    ));
                    let answer = run.rx.ack(AckStatus::Ok, payload.len() as u64, &DIGEST, "");
                    let (ack, seal) = split_ack(&answer);
                    assert_eq!(run.tx.is_keyed(), seal.is_some());
                    assert!(matches!(
                        run.tx.ack(ack, seal, &DIGEST),
                        Ok(Verdict::Confirmed(_))
                    ));
                }
            }
        }
    }

    #[test]
    fn a_receiver_with_two_keys_takes_a_sender_of_either_and_seals_under_its_key() {
        let (old, new) = (Key::from_bytes([0x11; 32]), Key::from_bytes([0x22; 32]));
        let h = header(Some(5), DigestAlgorithm::Blake3);
        for sender_key in [&old, &new] {
            let (mut tx, hello) =
                SenderSession::start(&h, Some(sender_key.clone()), [3; NONCE_LEN]).unwrap();
            let mut rx = ReceiverSession::with_keys(vec![old.clone(), new.clone()], [7; NONCE_LEN]);
            let (_, welcome) = drive(&mut rx, &hello, usize::MAX).unwrap();
            let opening = tx.welcome(&welcome[PREFIX_LEN..]).unwrap();
            let mut run = Run { tx, rx, opening };
            let wire = stream(&mut run, b"hello");
            drive(&mut run.rx, &wire, usize::MAX).unwrap();
            assert_eq!(run.rx.key(), Some(sender_key));
            assert_eq!(run.rx.verify(&DIGEST), Ok(()));
            let answer = run.rx.ack(AckStatus::Ok, 5, &DIGEST, "");
            let (ack, seal) = split_ack(&answer);
            assert!(matches!(
                run.tx.ack(ack, seal, &DIGEST),
                Ok(Verdict::Confirmed(_))
            ));
        }
        // A third key is refused by both: the sender at the welcome, the receiver at the proof.
        let third = Key::from_bytes([0x33; 32]);
        let (mut tx, hello) =
            SenderSession::start(&h, Some(third.clone()), [3; NONCE_LEN]).unwrap();
        let mut rx = ReceiverSession::with_keys(vec![old, new], [7; NONCE_LEN]);
        let (_, welcome) = drive(&mut rx, &hello, usize::MAX).unwrap();
        assert_eq!(
            tx.welcome(&welcome[PREFIX_LEN..]),
            Err(WireError::BadSeal("receiver's proof"))
        );
        let welcome_bytes = &welcome[..];
        let forged = Seal(third.sender_proof(&hello, welcome_bytes)).encode();
        assert_eq!(
            drive(&mut rx, &forged, usize::MAX),
            Err(WireError::BadSeal("sender's proof"))
        );
        assert_eq!(rx.key(), None);
    }

    /// The ack body and, when present, the seal body of a receiver's answer.
    fn split_ack(answer: &[u8]) -> (&[u8], Option<&[u8]>) {
        let len = |at: usize| {
            usize::try_from(u32::from_be_bytes(
                answer[at + 6..at + 10].try_into().unwrap(),
            ))
            .unwrap()
        };
        let ack_end = PREFIX_LEN + len(0);
        let ack = &answer[PREFIX_LEN..ack_end];
        let seal = (answer.len() > ack_end).then(|| &answer[ack_end + PREFIX_LEN..]);
        (ack, seal)
    }

    /// The header of a one-hop chain's resuming session.
    fn resuming(length: Option<u64>) -> Header {
        let mut h = header(length, DigestAlgorithm::Blake3);
        h.route = vec!["a:1".into()];
        h.tree = Some(wire::Tree {
            fanout: 1,
            position: 1,
            transfer: [1; wire::TRANSFER_ID_LEN],
            resume: true,
            stall_ms: 30_000,
            connect_ms: 10_000,
        });
        h
    }

    #[test]
    fn a_resumed_session_goes_on_from_the_offset_the_receiver_holds() {
        for k in [None, key()] {
            for length in [Some(5), None] {
                let mut run = open(&resuming(length), k.clone(), k.clone(), 7);
                feed(&mut run.rx, &run.opening).unwrap();
                assert_eq!(run.rx.next(), Next::Resume);
                // Nothing may be sent before the receiver said where to go on from.
                assert!(run.tx.finish(&DIGEST).is_err());
                let answer = run.rx.resume_at(2).unwrap();
                assert!(run.rx.resume_at(2).is_err(), "answered once");
                let (body, seal) = split_ack(&answer);
                let mut forged = run.tx.clone();
                assert_eq!(run.tx.is_keyed(), seal.is_some());
                assert_eq!(run.tx.resumed(body, seal), Ok(2));
                if seal.is_some() {
                    let other = Resume { offset: 0 }.encode();
                    assert!(forged.resumed(&other[PREFIX_LEN..], seal).is_err());
                }
                run.opening.clear();
                let wire = stream(&mut run, b"llo");
                let (got, _) = drive(&mut run.rx, &wire, usize::MAX).unwrap();
                assert_eq!(got, b"llo");
                assert_eq!(run.rx.received(), 5);
                assert_eq!(run.rx.verify(&DIGEST), Ok(()), "{length:?}");
            }
        }
        // An offset beyond the announced length is refused by both ends.
        let mut run = open(&resuming(Some(5)), None, None, 7);
        feed(&mut run.rx, &run.opening).unwrap();
        assert!(run.rx.resume_at(6).is_err());
        let six = Resume { offset: 6 }.encode();
        assert!(run.tx.resumed(&six[PREFIX_LEN..], None).is_err());
    }

    /// A relayed stream's receiver sends report messages mid-stream that its sender reads (in
    /// version 2 unsealed, keyed or not), and many hosts go in several, until its ack; an
    /// unrelayed one's sends none.
    #[test]
    fn reports_go_up_mid_stream_in_a_relayed_session_only() {
        let report = |position| HostReport {
            position,
            parent: 1,
            status: AckStatus::Unreached,
            bytes: 7,
            message: "gone".into(),
        };
        for k in [None, key()] {
            let mut relayed = resuming(Some(5));
            if let Some(t) = &mut relayed.tree {
                t.resume = false;
            }
            let mut run = open(&relayed, k.clone(), k.clone(), 7);
            feed(&mut run.rx, &run.opening).unwrap();
            let many: Vec<HostReport> = (2..300).map(report).collect();
            let sent = run.rx.report(&many);
            let mut got = Vec::new();
            let mut at = 0;
            while at < sent.len() {
                let mut reader = run.tx.report_reader();
                let (n, body) = reader.push(&sent[at..]).unwrap();
                let (m, body) = match body {
                    Some(b) => (0, b),
                    None => {
                        let (m, b) = reader.push(&sent[at + n..]).unwrap();
                        (m, b.unwrap())
                    }
                };
                at += n + m;
                got.extend(run.tx.report(&body).unwrap());
            }
            assert_eq!(got, many);
            // Before the ack, the sender's reader takes a report or the ack.
            let mut reader = run.tx.ack_or_report_reader();
            let one = run.rx.report(&many[..1]);
            reader.push(&one[..PREFIX_LEN]).unwrap();
            assert_eq!(reader.kind(), MessageKind::Report);
            // Once the stream has ended, none.
            run.tx.payload(5).unwrap();
            let mut rest = b"hello".to_vec();
            rest.extend(run.tx.finish(&DIGEST).unwrap());
            drive(&mut run.rx, &rest, usize::MAX).unwrap();
            assert_eq!(run.rx.next(), Next::Verify);
            assert!(!run.rx.report(&many[..1]).is_empty(), "before the ack");
            run.rx.ack(AckStatus::Ok, 5, &DIGEST, "");
            assert!(run.rx.report(&many[..1]).is_empty(), "after the ack");
            let mut plain = open(&header(Some(5), DigestAlgorithm::Blake3), k.clone(), k, 7);
            feed(&mut plain.rx, &plain.opening).unwrap();
            assert!(plain.rx.report(&many[..1]).is_empty(), "not relayed");
            assert!(plain.tx.report(&one[PREFIX_LEN..]).is_err());
        }
    }

    #[test]
    fn keepalives_between_chunks_carry_no_data() {
        let h = header(None, DigestAlgorithm::Blake3);
        let mut run = open(&h, key(), key(), 7);
        let mut wire = run.opening.clone();
        wire.extend(run.tx.keepalive().unwrap());
        wire.extend(run.tx.chunk(2).unwrap());
        wire.extend_from_slice(b"ab");
        wire.extend(run.tx.keepalive().unwrap());
        wire.extend(run.tx.keepalive().unwrap());
        wire.extend(run.tx.finish(&DIGEST).unwrap());
        let (payload, _) = drive(&mut run.rx, &wire, 3).unwrap();
        assert_eq!(payload, b"ab");
        assert_eq!(run.rx.keepalives(), 3);
        assert_eq!(run.rx.verify(&DIGEST), Ok(()));
        // Only between chunks of a stream of unknown length.
        let known = header(Some(2), DigestAlgorithm::Blake3);
        assert!(open(&known, None, None, 7).tx.keepalive().is_err());
    }

    #[test]
    fn one_end_with_a_key_and_one_without_never_meet() {
        let h = header(Some(1), DigestAlgorithm::Blake3);
        // A keyed sender, an unkeyed receiver: the receiver refuses, the sender learns why.
        let (mut tx, hello) = SenderSession::start(&h, key(), [3; NONCE_LEN]).unwrap();
        let mut rx = ReceiverSession::new(None, [7; NONCE_LEN]);
        assert_eq!(
            drive(&mut rx, &hello, usize::MAX),
            Err(WireError::KeyRequired)
        );
        let mut rx = ReceiverSession::new(None, [7; NONCE_LEN]);
        assert_eq!(feed(&mut rx, &hello), Err(WireError::KeyRequired));
        let welcome = rx.take_reply().unwrap();
        assert_eq!(
            tx.welcome(&welcome[PREFIX_LEN..]),
            Err(WireError::PeerUnkeyed)
        );
        // An unkeyed sender, a keyed receiver.
        let (mut tx, hello) = SenderSession::start(&h, None, [3; NONCE_LEN]).unwrap();
        let mut rx = ReceiverSession::new(key(), [7; NONCE_LEN]);
        assert_eq!(feed(&mut rx, &hello), Err(WireError::PeerUnkeyed));
        let welcome = rx.take_reply().unwrap();
        assert_eq!(
            tx.welcome(&welcome[PREFIX_LEN..]),
            Err(WireError::KeyRequired)
        );
    }

    /// Regression: a welcome or a resume handed over out of its turn was `BadSeal`, which a
    /// caller reports as a wrong key. It is its own error, keyed or not.
    #[test]
    fn a_message_out_of_its_turn_is_no_matter_of_keys() {
        for k in [None, key()] {
            let h = header(Some(1), DigestAlgorithm::Blake3);
            let (mut tx, hello) = SenderSession::start(&h, k.clone(), [3; NONCE_LEN]).unwrap();
            let mut rx = ReceiverSession::new(k.clone(), [7; NONCE_LEN]);
            let (_, welcome) = drive(&mut rx, &hello, usize::MAX).unwrap();
            let resume = Resume { offset: 0 }.encode();
            assert_eq!(
                tx.resumed(&resume[PREFIX_LEN..], None),
                Err(WireError::OutOfTurn(MessageKind::Resume))
            );
            tx.welcome(&welcome[PREFIX_LEN..]).unwrap();
            let again = tx.welcome(&welcome[PREFIX_LEN..]);
            assert_eq!(again, Err(WireError::OutOfTurn(MessageKind::Welcome)));
            assert!(!again.unwrap_err().to_string().contains("key"));
        }
    }

    #[test]
    fn another_key_fails_both_proofs() {
        let h = header(Some(1), DigestAlgorithm::Blake3);
        let other = Some(Key::from_bytes([0x43; 32]));
        let (mut tx, hello) = SenderSession::start(&h, key(), [3; NONCE_LEN]).unwrap();
        let mut rx = ReceiverSession::new(other.clone(), [7; NONCE_LEN]);
        let (_, welcome) = drive(&mut rx, &hello, usize::MAX).unwrap();
        assert_eq!(
            tx.welcome(&welcome[PREFIX_LEN..]),
            Err(WireError::BadSeal("receiver's proof"))
        );
        // A sender that ignores the bad proof and sends its own: the receiver refuses it.
        let (mut tx2, _) = SenderSession::start(&h, other, [3; NONCE_LEN]).unwrap();
        let opening = tx2.welcome(&welcome[PREFIX_LEN..]).unwrap();
        let mut forged = opening.clone();
        forged[PREFIX_LEN] ^= 1;
        assert_eq!(
            drive(&mut rx, &forged, usize::MAX),
            Err(WireError::BadSeal("sender's proof"))
        );
    }

    #[test]
    fn a_keyed_session_refuses_a_weak_digest() {
        let h = header(Some(1), DigestAlgorithm::Xxh3_128);
        assert!(matches!(
            SenderSession::start(&h, key(), [3; NONCE_LEN]),
            Err(WireError::WeakDigest(DigestAlgorithm::Xxh3_128))
        ));
        // A receiver checks it too, whatever the sender's session allowed.
        let strong = header(Some(1), DigestAlgorithm::Blake3);
        let mut run = open(&strong, key(), key(), 7);
        let mut wire = run.opening.clone();
        let header_at = wire.len() - strong.encode().unwrap().len();
        wire.truncate(header_at);
        wire.extend(h.encode().unwrap());
        assert_eq!(
            drive(&mut run.rx, &wire, usize::MAX),
            Err(WireError::WeakDigest(DigestAlgorithm::Xxh3_128))
        );
    }

    /// A changed trailer (the digest of forged bytes in place of the sender's) fails the seal.
    #[test]
    fn a_changed_trailer_fails_the_seal() {
        let h = header(Some(5), DigestAlgorithm::Blake3);
        let mut run = open(&h, key(), key(), 7);
        let mut wire = stream(&mut run, b"hello");
        // The trailer's digest is the 32 bytes before the seal message.
        let seal_at = wire.len() - (PREFIX_LEN + MAC_LEN);
        wire[seal_at - 1] ^= 0x80;
        let mut forged = DIGEST;
        forged[31] ^= 0x80;
        drive(&mut run.rx, &wire, usize::MAX).unwrap();
        assert_eq!(run.rx.verify(&forged), Err(Mismatch::Seal));
    }

    /// A session recorded and played again to a receiver (which draws a fresh nonce) fails at
    /// the sender's proof; its trailer and seal spliced into another session fail the seal.
    #[test]
    fn a_replayed_session_or_a_borrowed_trailer_is_refused() {
        let h = header(Some(5), DigestAlgorithm::Blake3);
        let mut first = open(&h, key(), key(), 7);
        let recorded = stream(&mut first, b"hello");
        let mut replayed = ReceiverSession::new(key(), [8; NONCE_LEN]);
        let (_, hello) = SenderSession::start(&h, key(), [3; NONCE_LEN]).unwrap();
        let mut wire = hello;
        wire.extend_from_slice(&recorded);
        assert_eq!(
            drive(&mut replayed, &wire, usize::MAX),
            Err(WireError::BadSeal("sender's proof"))
        );
        // Another session's tail: header and payload of this one, trailer and seal of the first.
        let mut second = open(&h, key(), key(), 9);
        let own = stream(&mut second, b"hello");
        let tail = PREFIX_LEN + 9 + 32 + PREFIX_LEN + MAC_LEN;
        let mut spliced = own[..own.len() - tail].to_vec();
        spliced.extend_from_slice(&recorded[recorded.len() - tail..]);
        drive(&mut second.rx, &spliced, usize::MAX).unwrap();
        assert_eq!(second.rx.next(), Next::Verify);
        assert_eq!(second.rx.verify(&DIGEST), Err(Mismatch::Seal));
    }

    #[test]
    fn an_ack_without_its_seal_is_not_trusted() {
        let h = header(Some(5), DigestAlgorithm::Blake3);
        let mut run = open(&h, key(), key(), 7);
        let wire = stream(&mut run, b"hello");
        drive(&mut run.rx, &wire, usize::MAX).unwrap();
        let answer = run.rx.ack(AckStatus::Ok, 5, &DIGEST, "");
        let (ack, seal) = split_ack(&answer);
        assert!(run.tx.clone().ack(ack, None, &DIGEST).is_err());
        let mut bad = seal.unwrap().to_vec();
        bad[0] ^= 1;
        assert_eq!(
            run.tx.clone().ack(ack, Some(&bad), &DIGEST),
            Err(WireError::BadSeal("acknowledgement's seal"))
        );
        // A forged "ok" under another session's seal.
        let mut other = open(&h, key(), key(), 9);
        let other_wire = stream(&mut other, b"hello");
        drive(&mut other.rx, &other_wire, usize::MAX).unwrap();
        let other_answer = other.rx.ack(AckStatus::Ok, 5, &DIGEST, "");
        let (_, other_seal) = split_ack(&other_answer);
        assert!(run.tx.ack(ack, other_seal, &DIGEST).is_err());
    }

    /// Regression: a keyed receiver refusing a stream at its header chains its answer's seal to
    /// no stream seal; a sender that had sent the whole stream (it fitted in the socket buffers)
    /// took the refusal for a forgery. A refusal so sealed is a refusal; an "ok" never is.
    #[test]
    fn a_refusal_before_the_trailer_is_trusted_after_the_whole_stream_was_sent() {
        let h = header(Some(5), DigestAlgorithm::Blake3);
        let mut run = open(&h, key(), key(), 7);
        // The sender sends all of it; the receiver reads the header only, and refuses.
        stream(&mut run, b"hello");
        feed(&mut run.rx, &run.opening.clone()).unwrap();
        assert!(run.rx.header().is_some());
        let refusal = run.rx.ack(AckStatus::Rejected, 0, &[], "full");
        let (ack, seal) = split_ack(&refusal);
        assert!(matches!(
            run.tx.clone().ack(ack, seal, &DIGEST),
            Ok(Verdict::Refused(_))
        ));
        // An "ok" chained to no stream seal is not trusted from a sender that sent one.
        let mut rx = run.rx.clone();
        let ok = rx.ack(AckStatus::Ok, 5, &DIGEST, "");
        let (ack, seal) = split_ack(&ok);
        assert_eq!(
            run.tx.ack(ack, seal, &DIGEST),
            Err(WireError::BadSeal("acknowledgement's seal"))
        );
    }

    #[test]
    fn the_sender_cannot_send_more_or_less_than_it_announced() {
        let h = header(Some(5), DigestAlgorithm::Xxh3_128);
        let mut run = open(&h, None, None, 7);
        let tx = &mut run.tx;
        assert_eq!(
            tx.payload(6),
            Err(OrderError::TooMuchPayload {
                sent: 6,
                announced: 5
            })
        );
        tx.payload(4).unwrap();
        assert!(matches!(
            tx.finish(&DIGEST),
            Err(OrderError::TooLittlePayload { .. })
        ));
        assert_eq!(tx.chunk(3), Err(OrderError::BadChunk(3)));
        let mut chunked = open(&header(None, DigestAlgorithm::None), None, None, 7).tx;
        assert_eq!(chunked.chunk(0), Err(OrderError::BadChunk(0)));
        assert!(chunked.chunk(MAX_CHUNK as usize + 1).is_err());
        chunked.finish(&[]).unwrap();
        assert_eq!(chunked.finish(&[]), Err(OrderError::WrongStep));
        // Before the welcome there is no payload step.
        let (mut early, _) = SenderSession::start(&h, None, [3; NONCE_LEN]).unwrap();
        assert_eq!(early.payload(1), Err(OrderError::WrongStep));
    }

    #[test]
    fn the_ack_is_judged_against_what_was_sent() {
        let h = header(Some(5), DigestAlgorithm::Blake3);
        let mut run = open(&h, None, None, 7);
        run.tx.payload(5).unwrap();
        run.tx.finish(&DIGEST).unwrap();
        let body = |status, bytes, digest: &[u8]| {
            Ack {
                status,
                bytes,
                digest: digest.to_vec(),
                message: String::new(),
                reports: Vec::new(),
            }
            .encode()[PREFIX_LEN..]
                .to_vec()
        };
        assert!(matches!(
            run.tx
                .clone()
                .ack(&body(AckStatus::Ok, 5, &DIGEST), None, &DIGEST),
            Ok(Verdict::Confirmed(_))
        ));
        for wrong in [
            body(AckStatus::Ok, 4, &DIGEST),
            body(AckStatus::Ok, 5, &[1; 32]),
            body(AckStatus::IoError, 5, &DIGEST),
            body(AckStatus::Ok, 5, &[]),
        ] {
            assert!(matches!(
                run.tx.clone().ack(&wrong, None, &DIGEST),
                Ok(Verdict::Refused(_))
            ));
        }
        assert!(run.tx.ack(b"\x09", None, &DIGEST).is_err());
    }

    #[test]
    fn a_stream_cut_anywhere_is_never_ready_to_verify() {
        for k in [None, key()] {
            let h = header(None, DigestAlgorithm::Blake3);
            let mut run = open(&h, k.clone(), k.clone(), 7);
            let wire = stream(&mut run, b"abc");
            for cut in 0..wire.len() {
                let mut rx = open(&h, k.clone(), k.clone(), 7).rx;
                let _ = drive(&mut rx, &wire[..cut], usize::MAX);
                assert_ne!(rx.next(), Next::Verify, "cut at {cut}");
            }
        }
    }

    #[test]
    fn the_frame_reader_takes_no_byte_beyond_its_message() {
        let mut wire = Ack {
            status: AckStatus::Ok,
            bytes: 1,
            digest: Vec::new(),
            message: "hi".into(),
            reports: Vec::new(),
        }
        .encode();
        let whole = wire.len();
        wire.extend_from_slice(b"next message");
        let mut reader = FrameReader::new(MessageKind::Ack);
        let mut at = 0;
        let body = loop {
            let (took, body) = reader.push(&wire[at..]).unwrap();
            at += took;
            if let Some(body) = body {
                break body;
            }
        };
        assert_eq!(at, whole);
        assert_eq!(Ack::decode_body(&body).unwrap().message, "hi");
    }

    #[test]
    fn a_bad_prefix_is_refused_before_any_body_is_read() {
        let mut reader = FrameReader::new(MessageKind::Header);
        assert!(matches!(
            reader.push(b"GET / HTTP/1.1\r\n"),
            Err(WireError::BadMagic { .. })
        ));
    }
}

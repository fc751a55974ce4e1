//! The order of a session — header, payload (raw or in chunks), trailer, acknowledgement — as
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

use crate::digest::DigestAlgorithm;
use crate::wire::{
    self, Ack, AckStatus, CHUNK_HEADER_LEN, Header, MAX_CHUNK, MessageKind, PREFIX_LEN, Trailer,
    WireError,
};

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
    prefix: Vec<u8>,
    body: Option<(usize, Vec<u8>)>,
}

impl FrameReader {
    /// A reader for a message of `kind`.
    pub fn new(kind: MessageKind) -> FrameReader {
        FrameReader {
            kind,
            prefix: Vec::with_capacity(PREFIX_LEN),
            body: None,
        }
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
                    let len = wire::decode_prefix(&prefix, self.kind)?;
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
    length: Option<u64>,
    digest: DigestAlgorithm,
    sent: u64,
    step: SenderStep,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SenderStep {
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
    /// Starts a session for `header`; returns it with the encoded header to write first.
    pub fn start(header: &Header) -> Result<(SenderSession, Vec<u8>), WireError> {
        let encoded = header.encode()?;
        let session = SenderSession {
            length: header.length,
            digest: header.digest,
            sent: 0,
            step: SenderStep::Payload,
        };
        Ok((session, encoded))
    }

    /// True when the payload goes in chunks (the length was not announced).
    pub fn is_chunked(&self) -> bool {
        self.length.is_none()
    }

    /// Payload bytes accounted so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// The header of a chunk of `len` bytes, before writing them (chunked sessions only); the
    /// chunk's bytes are accounted here.
    pub fn chunk(&mut self, len: usize) -> Result<[u8; CHUNK_HEADER_LEN], OrderError> {
        let fits = u32::try_from(len).ok().filter(|&l| l > 0 && l <= MAX_CHUNK);
        match (self.step, self.length, fits) {
            (SenderStep::Payload, None, Some(l)) => {
                self.sent += u64::from(l);
                Ok(wire::encode_chunk_header(l))
            }
            (SenderStep::Payload, _, _) => Err(OrderError::BadChunk(len)),
            _ => Err(OrderError::WrongStep),
        }
    }

    /// Accounts `n` payload bytes written raw (sessions of known length only).
    pub fn payload(&mut self, n: u64) -> Result<(), OrderError> {
        match (self.step, self.length) {
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
    /// when chunked, then the trailer). Then the acknowledgement is due.
    pub fn finish(&mut self, digest: &[u8]) -> Result<Vec<u8>, OrderError> {
        if self.step != SenderStep::Payload {
            return Err(OrderError::WrongStep);
        }
        let mut out = Vec::new();
        match self.length {
            Some(announced) if self.sent != announced => {
                return Err(OrderError::TooLittlePayload {
                    sent: self.sent,
                    announced,
                });
            }
            Some(_) => {}
            None => out.extend_from_slice(&wire::encode_chunk_header(0)),
        }
        out.extend_from_slice(
            &Trailer {
                length: self.sent,
                digest: digest.to_vec(),
            }
            .encode(),
        );
        self.step = SenderStep::AwaitAck;
        Ok(out)
    }

    /// A reader for the acknowledgement.
    pub fn ack_reader(&self) -> FrameReader {
        FrameReader::new(MessageKind::Ack)
    }

    /// Judges the acknowledgement's body against what was sent and its `digest`.
    pub fn ack(&mut self, body: &[u8], digest: &[u8]) -> Result<Verdict, WireError> {
        let ack = Ack::decode_body(body)?;
        self.step = SenderStep::Done;
        let matches = ack.status == AckStatus::Ok
            && ack.bytes == self.sent
            && ack.digest == digest
            && ack.digest.len() == self.digest.output_len();
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
    /// Read exactly this many framing bytes and hand them to [`ReceiverSession::framing`].
    Framing(usize),
    /// Move at most this many payload bytes (more may follow), and account them with
    /// [`ReceiverSession::payload`].
    Payload(u64),
    /// The trailer has arrived: check the digest ([`ReceiverSession::verify`]) and answer.
    Verify,
}

/// The receiver's side of a framed session.
#[derive(Clone, Debug)]
pub struct ReceiverSession {
    step: ReceiverStep,
    header: Option<Header>,
    trailer: Option<Trailer>,
    received: u64,
}

#[derive(Clone, Debug)]
enum ReceiverStep {
    Header(FrameReader),
    /// Raw payload of known length: bytes still due.
    Raw(u64),
    /// Waiting for a chunk header: the bytes of it so far.
    ChunkHeader(Vec<u8>),
    /// Inside a chunk: bytes still due.
    Chunk(u64),
    Trailer(FrameReader),
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
}

impl Default for ReceiverSession {
    fn default() -> Self {
        ReceiverSession::new()
    }
}

impl ReceiverSession {
    /// A session waiting for its header.
    pub fn new() -> ReceiverSession {
        ReceiverSession {
            step: ReceiverStep::Header(FrameReader::new(MessageKind::Header)),
            header: None,
            trailer: None,
            received: 0,
        }
    }

    /// What to do next.
    pub fn next(&self) -> Next {
        match &self.step {
            ReceiverStep::Header(r) | ReceiverStep::Trailer(r) => Next::Framing(r.wanted()),
            ReceiverStep::Raw(left) | ReceiverStep::Chunk(left) => Next::Payload(*left),
            ReceiverStep::ChunkHeader(got) => Next::Framing(CHUNK_HEADER_LEN - got.len()),
            ReceiverStep::Verify => Next::Verify,
        }
    }

    /// The header, once it has arrived.
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
        match &mut self.step {
            ReceiverStep::Header(reader) => {
                if let (_, Some(body)) = reader.push(bytes)? {
                    let header = Header::decode_body(&body)?;
                    self.step = match header.length {
                        Some(0) => ReceiverStep::Trailer(FrameReader::new(MessageKind::Trailer)),
                        Some(len) => ReceiverStep::Raw(len),
                        None => ReceiverStep::ChunkHeader(Vec::new()),
                    };
                    self.header = Some(header);
                }
            }
            ReceiverStep::Trailer(reader) => {
                if let (_, Some(body)) = reader.push(bytes)? {
                    let algorithm = self
                        .header
                        .as_ref()
                        .map_or(DigestAlgorithm::None, |h| h.digest);
                    self.trailer = Some(Trailer::decode_body(&body, algorithm)?);
                    self.step = ReceiverStep::Verify;
                }
            }
            ReceiverStep::ChunkHeader(got) => {
                let take = bytes.len().min(CHUNK_HEADER_LEN - got.len());
                got.extend_from_slice(&bytes[..take]);
                if let Ok(header) = <[u8; CHUNK_HEADER_LEN]>::try_from(got.as_slice()) {
                    self.step = match wire::decode_chunk_header(&header)? {
                        0 => ReceiverStep::Trailer(FrameReader::new(MessageKind::Trailer)),
                        n => ReceiverStep::Chunk(u64::from(n)),
                    };
                }
            }
            ReceiverStep::Raw(_) | ReceiverStep::Chunk(_) | ReceiverStep::Verify => {}
        }
        Ok(())
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
                ReceiverStep::Trailer(FrameReader::new(MessageKind::Trailer))
            };
        }
    }

    /// Checks lengths and `digest` (of the bytes received) against the trailer and header.
    pub fn verify(&self, digest: &[u8]) -> Result<(), Mismatch> {
        let Some(trailer) = &self.trailer else {
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
        Ok(())
    }
}

/// Builds the acknowledgement a receiver sends.
pub fn ack(status: AckStatus, bytes: u64, digest: &[u8], message: &str) -> Vec<u8> {
    Ack {
        status,
        bytes,
        digest: digest.to_vec(),
        message: message.to_string(),
    }
    .encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(length: Option<u64>) -> Header {
        Header {
            name: "f".into(),
            length,
            digest: DigestAlgorithm::Xxh3_128,
            route: Vec::new(),
        }
    }

    const DIGEST: [u8; 16] = [9; 16];

    /// Drives a receiver over `wire` the way the I/O layer does; returns the session and the
    /// payload it moved.
    fn receive(wire: &[u8]) -> Result<(ReceiverSession, Vec<u8>), WireError> {
        let mut s = ReceiverSession::new();
        let mut at = 0;
        let mut payload = Vec::new();
        loop {
            match s.next() {
                Next::Framing(n) => {
                    let end = (at + n).min(wire.len());
                    if end == at {
                        return Ok((s, payload));
                    }
                    s.framing(&wire[at..end])?;
                    at = end;
                }
                Next::Payload(n) => {
                    let end = (at + usize::try_from(n).unwrap()).min(wire.len());
                    if end == at {
                        return Ok((s, payload));
                    }
                    payload.extend_from_slice(&wire[at..end]);
                    s.payload((end - at) as u64);
                    at = end;
                }
                Next::Verify => return Ok((s, payload)),
            }
        }
    }

    #[test]
    fn a_sender_session_of_known_length_is_received_whole() {
        let (mut tx, mut wire) = SenderSession::start(&header(Some(5))).unwrap();
        wire.extend_from_slice(b"hello");
        tx.payload(5).unwrap();
        wire.extend(tx.finish(&DIGEST).unwrap());
        let (rx, payload) = receive(&wire).unwrap();
        assert_eq!(rx.next(), Next::Verify);
        assert_eq!(payload, b"hello");
        assert_eq!(rx.received(), 5);
        assert_eq!(rx.verify(&DIGEST), Ok(()));
        assert!(matches!(rx.verify(&[0; 16]), Err(Mismatch::Digest { .. })));
    }

    #[test]
    fn a_chunked_session_is_received_whole() {
        let (mut tx, mut wire) = SenderSession::start(&header(None)).unwrap();
        for part in [&b"ab"[..], b"cde"] {
            wire.extend(tx.chunk(part.len()).unwrap());
            wire.extend_from_slice(part);
        }
        wire.extend(tx.finish(&DIGEST).unwrap());
        let (rx, payload) = receive(&wire).unwrap();
        assert_eq!(rx.next(), Next::Verify);
        assert_eq!(payload, b"abcde");
        assert_eq!(rx.verify(&DIGEST), Ok(()));
    }

    #[test]
    fn an_empty_file_goes_straight_to_the_trailer() {
        let (mut tx, mut wire) = SenderSession::start(&header(Some(0))).unwrap();
        wire.extend(tx.finish(&DIGEST).unwrap());
        let (rx, payload) = receive(&wire).unwrap();
        assert_eq!(rx.next(), Next::Verify);
        assert!(payload.is_empty());
    }

    #[test]
    fn the_sender_cannot_send_more_or_less_than_it_announced() {
        let (mut tx, _) = SenderSession::start(&header(Some(5))).unwrap();
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
        let (mut chunked, _) = SenderSession::start(&header(None)).unwrap();
        assert_eq!(chunked.chunk(0), Err(OrderError::BadChunk(0)));
        assert!(chunked.chunk(MAX_CHUNK as usize + 1).is_err());
        chunked.finish(&DIGEST).unwrap();
        assert_eq!(chunked.finish(&DIGEST), Err(OrderError::WrongStep));
    }

    #[test]
    fn the_ack_is_judged_against_what_was_sent() {
        let (mut tx, _) = SenderSession::start(&header(Some(5))).unwrap();
        tx.payload(5).unwrap();
        tx.finish(&DIGEST).unwrap();
        let body =
            |status, bytes, digest: &[u8]| ack(status, bytes, digest, "")[PREFIX_LEN..].to_vec();
        assert!(matches!(
            tx.clone().ack(&body(AckStatus::Ok, 5, &DIGEST), &DIGEST),
            Ok(Verdict::Confirmed(_))
        ));
        for wrong in [
            body(AckStatus::Ok, 4, &DIGEST),
            body(AckStatus::Ok, 5, &[1; 16]),
            body(AckStatus::IoError, 5, &DIGEST),
            body(AckStatus::Ok, 5, &[]),
        ] {
            assert!(matches!(
                tx.clone().ack(&wrong, &DIGEST),
                Ok(Verdict::Refused(_))
            ));
        }
        assert!(tx.ack(b"\x09", &DIGEST).is_err());
    }

    #[test]
    fn a_stream_cut_anywhere_is_never_ready_to_verify() {
        let (mut tx, mut wire) = SenderSession::start(&header(None)).unwrap();
        wire.extend(tx.chunk(3).unwrap());
        wire.extend_from_slice(b"abc");
        wire.extend(tx.finish(&DIGEST).unwrap());
        for cut in 0..wire.len() {
            let (rx, _) = receive(&wire[..cut]).unwrap();
            assert_ne!(rx.next(), Next::Verify, "cut at {cut}");
        }
    }

    #[test]
    fn the_frame_reader_takes_no_byte_beyond_its_message() {
        let mut wire = ack(AckStatus::Ok, 1, &[], "hi");
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

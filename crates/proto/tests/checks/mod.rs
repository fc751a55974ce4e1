//! The properties the fuzz targets check, shared by the targets in `fuzz/fuzz_targets/` and by
//! `tests/fuzz_corpus.rs`, which replays the committed corpus in `cargo test`.
//!
//! Each function takes one fuzzer input, panics if a property does not hold, and returns whether
//! the input decoded (so the replay test can tell how many inputs reached the success path).
//! No function here may panic on its own account for any input: only a failed assertion about
//! the decoders may.

use teecast_proto::crypt::Channel;
use teecast_proto::digest::DigestAlgorithm;
use teecast_proto::wire::{
    Ack, CHUNK_HEADER_LEN, Header, Hello, MAC_LEN, MAX_CHUNK, MAX_DIGEST_LEN, MAX_MESSAGE_LEN,
    MAX_REPORT_MESSAGE_LEN, MAX_REPORTS_PER_MESSAGE, MessageKind, PREFIX_LEN, Report, Resume, Seal,
    Trailer, VERSION, Welcome, WireError, decode_chunk_header, decode_prefix, encode_chunk_header,
};

/// Every error a decoder returns must print as one line without control characters: the
/// messages quote peer-supplied text and end up in logs and terminals.
fn check_error(err: &WireError) {
    let text = err.to_string();
    assert!(!text.is_empty(), "empty message for {err:?}");
    assert!(
        !text.chars().any(char::is_control),
        "control character in the message for {err:?}: {text:?}"
    );
}

/// Splits a framed message into its body after checking that its prefix announces exactly
/// that body for `kind`.
fn framed_body(encoded: &[u8], kind: MessageKind) -> &[u8] {
    let (prefix, body) = encoded
        .split_first_chunk::<PREFIX_LEN>()
        .expect("an encoded message is at least a prefix long");
    assert_eq!(
        decode_prefix(prefix, kind),
        Ok(body.len()),
        "the prefix of an encoded {kind} does not announce its body"
    );
    body
}

/// `prefix`: the first [`PREFIX_LEN`] bytes, decoded as the prefix of each kind. It must not
/// panic; it must accept exactly the prefixes with the kind's magic, version 1 and a length
/// within the kind's limit, and then return that length.
pub fn prefix(data: &[u8]) -> bool {
    let Some(prefix) = data.first_chunk::<PREFIX_LEN>() else {
        return false;
    };
    let [m0, m1, m2, m3, v0, v1, l0, l1, l2, l3] = *prefix;
    let announced = u32::from_be_bytes([l0, l1, l2, l3]);
    let mut decoded = false;
    for kind in MessageKind::ALL {
        let acceptable = [m0, m1, m2, m3] == kind.magic()
            && u16::from_be_bytes([v0, v1]) == VERSION
            && usize::try_from(announced).is_ok_and(|len| len <= kind.max_body_len());
        match decode_prefix(prefix, kind) {
            Ok(len) => {
                assert!(acceptable, "{kind} prefix {prefix:02x?} accepted");
                assert!(len <= kind.max_body_len(), "{kind} body length {len}");
                assert_eq!(Ok(len), usize::try_from(announced));
                decoded = true;
            }
            Err(err) => {
                assert!(!acceptable, "{kind} prefix {prefix:02x?} refused: {err:?}");
                check_error(&err);
            }
        }
    }
    decoded
}

/// `header`: the whole input as a header body. A decoded header must re-encode, its prefix
/// must announce the body, the body must be the input byte for byte (the encoding is
/// canonical), and decoding it again must give an equal header.
pub fn header(data: &[u8]) -> bool {
    match Header::decode_body(data) {
        Ok(header) => {
            let encoded = header.encode().unwrap_or_else(|err| {
                panic!("decoded header {header:?} does not re-encode: {err}")
            });
            let body = framed_body(&encoded, MessageKind::Header);
            assert_eq!(body, data, "header {header:?} re-encodes to other bytes");
            assert_eq!(Header::decode_body(body), Ok(header));
            true
        }
        Err(err) => {
            check_error(&err);
            false
        }
    }
}

/// `trailer`: the first byte picks the header's digest algorithm (its id modulo the number of
/// algorithms), the rest is a trailer body. A decoded trailer must carry a digest of the
/// algorithm's length, re-encode to the same body, and decode again to an equal trailer.
pub fn trailer(data: &[u8]) -> bool {
    let Some((&selector, body)) = data.split_first() else {
        return false;
    };
    let algorithm = DigestAlgorithm::ALL[usize::from(selector) % DigestAlgorithm::ALL.len()];
    match Trailer::decode_body(body, algorithm) {
        Ok(trailer) => {
            assert_eq!(trailer.digest.len(), algorithm.output_len());
            let encoded = trailer.encode();
            let reencoded = framed_body(&encoded, MessageKind::Trailer);
            assert_eq!(
                reencoded, body,
                "trailer {trailer:?} re-encodes to other bytes"
            );
            assert_eq!(Trailer::decode_body(reencoded, algorithm), Ok(trailer));
            true
        }
        Err(err) => {
            check_error(&err);
            false
        }
    }
}

/// `ack`: the whole input as an ack body. A decoded ack is within the limits (so encoding cuts
/// nothing), re-encodes to the same body, and decodes again to an equal ack.
pub fn ack(data: &[u8]) -> bool {
    match Ack::decode_body(data) {
        Ok(ack) => {
            assert!(ack.digest.len() <= MAX_DIGEST_LEN, "{ack:?}");
            assert!(ack.message.len() <= MAX_MESSAGE_LEN, "{ack:?}");
            let encoded = ack.encode();
            let body = framed_body(&encoded, MessageKind::Ack);
            assert_eq!(body, data, "ack {ack:?} re-encodes to other bytes");
            assert_eq!(Ack::decode_body(body), Ok(ack));
            true
        }
        Err(err) => {
            check_error(&err);
            false
        }
    }
}

/// `report`: the whole input as a report body. A decoded report holds 1 to
/// [`MAX_REPORTS_PER_MESSAGE`] host reports, each message at most [`MAX_REPORT_MESSAGE_LEN`]
/// bytes (so `encode()`, which leaves out and cuts beyond those, changes nothing); it
/// re-encodes to the input byte for byte and decodes again to an equal report.
pub fn report(data: &[u8]) -> bool {
    match Report::decode_body(data) {
        Ok(report) => {
            let count = report.reports.len();
            assert!((1..=MAX_REPORTS_PER_MESSAGE).contains(&count), "{report:?}");
            assert!(
                report
                    .reports
                    .iter()
                    .all(|r| r.message.len() <= MAX_REPORT_MESSAGE_LEN),
                "{report:?}"
            );
            let encoded = report.encode();
            let body = framed_body(&encoded, MessageKind::Report);
            assert_eq!(body, data, "report {report:?} re-encodes to other bytes");
            assert_eq!(Report::decode_body(body), Ok(report));
            true
        }
        Err(err) => {
            check_error(&err);
            false
        }
    }
}

/// `hello`: the input as a hello body; a decoded hello re-encodes to the same bytes.
pub fn hello(data: &[u8]) -> bool {
    match Hello::decode_body(data) {
        Ok(hello) => {
            let encoded = hello.encode();
            assert_eq!(framed_body(&encoded, MessageKind::Hello), data, "{hello:?}");
            true
        }
        Err(err) => {
            check_error(&err);
            false
        }
    }
}

/// `welcome`: the input as a welcome body; a decoded welcome carries no proof or a whole one,
/// and re-encodes to the same bytes.
pub fn welcome(data: &[u8]) -> bool {
    match Welcome::decode_body(data) {
        Ok(welcome) => {
            assert!(
                welcome.proof.is_empty() || welcome.proof.len() == MAC_LEN,
                "{welcome:?}"
            );
            let encoded = welcome.encode();
            assert_eq!(
                framed_body(&encoded, MessageKind::Welcome),
                data,
                "{welcome:?}"
            );
            true
        }
        Err(err) => {
            check_error(&err);
            false
        }
    }
}

/// `seal`: the input as a seal body: accepted exactly when it is [`MAC_LEN`] bytes.
pub fn seal(data: &[u8]) -> bool {
    match Seal::decode_body(data) {
        Ok(seal) => {
            assert_eq!(data.len(), MAC_LEN);
            assert_eq!(framed_body(&seal.encode(), MessageKind::Seal), data);
            true
        }
        Err(err) => {
            assert_ne!(data.len(), MAC_LEN, "a {MAC_LEN}-byte seal refused");
            check_error(&err);
            false
        }
    }
}

/// `resume`: the input as a resume body. It decodes exactly when it is 8 bytes, and then
/// re-encodes to the same bytes.
pub fn resume(data: &[u8]) -> bool {
    match Resume::decode_body(data) {
        Ok(resume) => {
            assert_eq!(data.len(), 8);
            assert_eq!(resume.offset.to_be_bytes(), data);
            assert_eq!(framed_body(&resume.encode(), MessageKind::Resume), data);
            true
        }
        Err(err) => {
            assert_ne!(data.len(), 8, "an 8-byte resume refused");
            check_error(&err);
            false
        }
    }
}

/// `chunk_header`: the first [`CHUNK_HEADER_LEN`] bytes as a chunk header. It is accepted
/// exactly when the length is at most [`MAX_CHUNK`], and then re-encodes to the same bytes.
pub fn chunk_header(data: &[u8]) -> bool {
    let Some(bytes) = data.first_chunk::<CHUNK_HEADER_LEN>() else {
        return false;
    };
    let announced = u32::from_be_bytes(*bytes);
    match decode_chunk_header(bytes) {
        Ok(len) => {
            assert_eq!(len, announced);
            assert!(len <= MAX_CHUNK, "chunk of {len} bytes accepted");
            assert_eq!(&encode_chunk_header(len), bytes);
            true
        }
        Err(err) => {
            assert_eq!(err, WireError::ChunkTooLong(announced));
            assert!(announced > MAX_CHUNK, "chunk of {announced} bytes refused");
            check_error(&err);
            false
        }
    }
}

/// `receiver_session`: a [`ReceiverSession`] driven over the input as a receiver's I/O layer
/// drives it, the reads cut into pieces whose sizes come from the input's first byte. It must
/// not panic; it must never ask for more framing bytes than a prefix and the largest body, nor
/// count more payload than the header announced; it may reach `Verify` only with a header and
/// after exactly the announced payload; and `verify` may accept only a count the header agrees
/// with. Returns whether the session reached `Verify`.
///
/// [`ReceiverSession`]: teecast_proto::session::ReceiverSession
pub fn receiver_session(data: &[u8]) -> bool {
    use teecast_proto::auth::Key;
    use teecast_proto::session::{Next, ReceiverSession};
    use teecast_proto::wire::MAX_HEADER_BODY;

    let Some((&cut, wire)) = data.split_first() else {
        return false;
    };
    // Piece sizes 1..=8, or whole reads when the low bits are zero; bit 3 makes the receiver
    // keyed (a fixed key and nonce, so a recorded input replays the same).
    let piece = |want: usize| match cut & 7 {
        0 => want,
        n => want.min(usize::from(n)),
    };
    let key = (cut & 8 != 0).then(|| Key::from_bytes([0x42; 32]));
    let mut s = ReceiverSession::new(key, [7; 32]);
    let mut at = 0;
    let mut payload = 0u64;
    loop {
        match s.next() {
            Next::Framing(n) => {
                assert!(n > 0, "asked for no framing bytes");
                assert!(
                    n <= PREFIX_LEN + MAX_HEADER_BODY,
                    "asked for {n} framing bytes"
                );
                let end = (at + piece(n)).min(wire.len());
                if end == at {
                    return false;
                }
                let taken = s.framing(&wire[at..end]);
                if let Some(reply) = s.take_reply() {
                    assert!(s.has_hello(), "a reply before the hello");
                    assert!(reply.len() <= PREFIX_LEN + MessageKind::Welcome.max_body_len());
                }
                if let Err(err) = taken {
                    check_error(&err);
                    return false;
                }
                at = end;
            }
            Next::Payload(n) => {
                assert!(n > 0, "asked for no payload bytes");
                let take = usize::try_from(n).unwrap_or(usize::MAX).min(piece(1 << 20));
                let end = at.saturating_add(take).min(wire.len());
                if end == at {
                    return false;
                }
                s.payload((end - at) as u64);
                payload += (end - at) as u64;
                at = end;
                assert_eq!(s.received(), payload);
                if let Some(len) = s.header().and_then(|h| h.length) {
                    assert!(payload <= len, "{payload} payload bytes of {len} announced");
                }
            }
            Next::Resume => {
                // The fuzzed input decides how much this side holds: none, or half of it.
                let header = s.header().expect("resume without a header");
                assert!(header.tree.is_some_and(|t| t.resume), "resume unasked");
                payload = header.length.map_or(0, |l| l / 2);
                let answer = s.resume_at(payload).expect("answers a resume");
                assert!(answer.len() <= 2 * PREFIX_LEN + 8 + 32);
                assert_eq!(s.received(), payload);
            }
            Next::Verify => {
                let header = s.header().expect("verify without a header");
                if let Some(len) = header.length {
                    assert_eq!(payload, len, "verify after {payload} of {len} bytes");
                }
                let empty = header.digest.output_len() == 0;
                if s.verify(&[]).is_ok() {
                    assert!(empty, "an empty digest verified a {}", header.digest);
                }
                return true;
            }
        }
    }
}

/// Every error of `crypt` must print as one line without control characters, as decoders'
/// errors do.
fn check_crypt_error(err: &teecast_proto::crypt::CryptError) {
    let text = err.to_string();
    assert!(!text.is_empty(), "empty message for {err:?}");
    assert!(
        !text.chars().any(char::is_control),
        "control character in the message for {err:?}: {text:?}"
    );
}

/// `crypt_prefix`: the first [`PREFIX_LEN`] bytes, decoded as the prefix of each version-3
/// message. It must accept exactly the prefixes with the message's magic, version 3 and its one
/// body length, return that length, and name a version-2 prefix of the message as such.
pub fn crypt_prefix(data: &[u8]) -> bool {
    use teecast_proto::crypt::{self, CryptError, Message};
    let Some(prefix) = data.first_chunk::<PREFIX_LEN>() else {
        return false;
    };
    let version = u16::from_be_bytes([prefix[4], prefix[5]]);
    let len = u32::from_be_bytes([prefix[6], prefix[7], prefix[8], prefix[9]]);
    let mut decoded = false;
    for kind in [Message::Hello, Message::Welcome, Message::TransferKey] {
        let magic = prefix[..4] == kind.magic();
        let acceptable = magic && version == crypt::VERSION && len as usize == kind.body_len();
        match crypt::decode_prefix(prefix, kind) {
            Ok(n) => {
                assert!(acceptable, "{kind} prefix {prefix:02x?} accepted");
                assert_eq!(n, kind.body_len());
                decoded = true;
            }
            Err(err) => {
                assert!(!acceptable, "{kind} prefix {prefix:02x?} refused: {err:?}");
                assert_eq!(
                    err == CryptError::Version2Peer,
                    magic && version == 2,
                    "{kind} prefix {prefix:02x?}: {err:?}"
                );
                check_crypt_error(&err);
            }
        }
    }
    decoded
}

/// `record_header`: the first 4 bytes as a record header. Accepted exactly when the length is
/// at most a record's; an accepted header re-encodes to the same bytes.
pub fn record_header(data: &[u8]) -> bool {
    use teecast_proto::crypt::{RECORD_HEADER_LEN, RECORD_LEN, RecordHeader};
    let Some(bytes) = data.first_chunk::<RECORD_HEADER_LEN>() else {
        return false;
    };
    let len = u32::from_be_bytes(*bytes) & 0x7fff_ffff;
    match RecordHeader::decode(*bytes) {
        Ok(header) => {
            assert!(len as usize <= RECORD_LEN, "{len}-byte record accepted");
            assert_eq!(header.len, len as usize);
            assert_eq!(header.last, bytes[0] & 0x80 != 0);
            assert_eq!(header.encode(), *bytes, "re-encoding {header:?}");
            true
        }
        Err(err) => {
            assert!(
                len as usize > RECORD_LEN,
                "{len}-byte record refused: {err:?}"
            );
            check_crypt_error(&err);
            false
        }
    }
}

/// The fixed transfer key the `records` target opens its input under (and seeds are sealed with).
pub fn fuzz_transfer_key() -> teecast_proto::crypt::TransferKey {
    teecast_proto::crypt::TransferKey::new([0x5a; 16], [0xa5; 32])
}

/// `records`: first byte: the records per key (1 to 4, or the protocol's when 0 modulo 5); the
/// rest: a stream of records, opened in order under [`fuzz_transfer_key`] as a receiver does. It
/// must never panic; a refused record must leave the opener at its index, refusing everything
/// from then on; and a stream that
/// opens to its final record must be exactly what sealing the opened plaintexts again gives
/// (so nothing unauthenticated slipped through), with nothing after it.
pub fn records(data: &[u8]) -> bool {
    use teecast_proto::crypt::{
        RECORD_HEADER_LEN, RECORDS_PER_KEY, RecordHeader, RecordOpener, RecordSealer,
    };
    let Some((&limit, wire)) = data.split_first() else {
        return false;
    };
    let per_key = match limit % 5 {
        0 => RECORDS_PER_KEY,
        n => u64::from(n),
    };
    let transfer = fuzz_transfer_key();
    let mut opener = RecordOpener::new(&transfer, per_key);
    let mut opened: Vec<(Vec<u8>, bool)> = Vec::new();
    let mut at = 0;
    while !opener.is_done() {
        let Some(bytes) = wire[at..].first_chunk::<RECORD_HEADER_LEN>() else {
            if let Err(err) = opener.finish() {
                check_crypt_error(&err);
            }
            return false;
        };
        let header = match RecordHeader::decode(*bytes) {
            Ok(header) => header,
            Err(err) => {
                check_crypt_error(&err);
                return false;
            }
        };
        let start = at + RECORD_HEADER_LEN;
        let Some(sealed) = wire.get(start..start + header.sealed_len()) else {
            assert!(opener.finish().is_err(), "finished inside a record");
            return false;
        };
        let mut sealed = sealed.to_vec();
        let index = opener.index();
        match opener.open_in_place(header, &mut sealed) {
            Ok(plain) => {
                assert_eq!(plain.len(), header.len);
                opened.push((plain.to_vec(), header.last));
            }
            Err(err) => {
                assert_eq!(opener.index(), index, "a refused record moved the opener");
                check_crypt_error(&err);
                let mut again = wire[start..start + header.sealed_len()].to_vec();
                assert!(
                    opener.open_in_place(header, &mut again).is_err(),
                    "a record opened after a refusal"
                );
                return false;
            }
        }
        at = start + header.sealed_len();
    }
    assert!(opener.finish().is_ok());
    let mut sealer = RecordSealer::new(&transfer, per_key);
    let again: Vec<u8> = opened
        .iter()
        .flat_map(|(plain, last)| sealer.seal(plain, *last).expect("re-seals"))
        .collect();
    assert_eq!(
        again,
        wire[..at],
        "the opened stream does not re-seal to its input"
    );
    true
}

/// `record_reader`: first byte: the records per key, as in [`records`]; second: the size of
/// the pieces the stream arrives in (1 to 7 bytes, 64, 4 KiB, or as much as there is room for);
/// the rest: a stream of records, fed to a `RecordReader` as a receiver's reads would. It must
/// never panic, always have room for a whole record, and agree with a record-by-record reading
/// of the same bytes: the same plaintexts, handed over in the same order, and accepted (its
/// final record opened, nothing after it) exactly when that reading accepts the stream.
pub fn record_reader(data: &[u8]) -> bool {
    use teecast_proto::crypt::{
        CryptError, FULL_RECORD, RECORD_HEADER_LEN, RECORD_LEN, RECORDS_PER_KEY, RecordHeader,
        RecordOpener, RecordReader,
    };
    let [limit, piece, wire @ ..] = data else {
        return false;
    };
    let per_key = match limit % 5 {
        0 => RECORDS_PER_KEY,
        n => u64::from(n),
    };
    let piece = match piece % 10 {
        p @ 0..=6 => usize::from(p) + 1,
        7 => 64,
        8 => 4096,
        _ => usize::MAX,
    };
    let transfer = fuzz_transfer_key();
    // Record by record: header, the short-record rule, the whole record, the seal, and nothing
    // after the final one.
    let mut expected: Vec<Vec<u8>> = Vec::new();
    let accepted = {
        let mut opener = RecordOpener::new(&transfer, per_key);
        let mut at = 0;
        loop {
            if opener.is_done() {
                break at == wire.len();
            }
            let Some(bytes) = wire[at..].first_chunk::<RECORD_HEADER_LEN>() else {
                break false;
            };
            let Ok(header) = RecordHeader::decode(*bytes) else {
                break false;
            };
            if !header.last && header.len != RECORD_LEN {
                break false;
            }
            let start = at + RECORD_HEADER_LEN;
            let Some(sealed) = wire.get(start..start + header.sealed_len()) else {
                break false;
            };
            let mut sealed = sealed.to_vec();
            match opener.open_in_place(header, &mut sealed) {
                Ok(plain) => expected.push(plain.to_vec()),
                Err(_) => break false,
            }
            at = start + header.sealed_len();
        }
    };
    let mut reader = RecordReader::new(&transfer, per_key);
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut rest = wire;
    let mut outcome: Result<(), CryptError> = Ok(());
    while !rest.is_empty() && outcome.is_ok() {
        let space = reader.space();
        assert!(space.len() >= FULL_RECORD, "no room for a whole record");
        let n = piece.min(space.len()).min(rest.len());
        space[..n].copy_from_slice(&rest[..n]);
        rest = &rest[n..];
        outcome = reader.filled(n, |plain| {
            got.push(plain.to_vec());
            Ok(())
        });
    }
    if let Err(err) = &outcome {
        check_crypt_error(err);
    }
    let reader_accepted = outcome.is_ok() && reader.finish().is_ok();
    assert_eq!(got, expected, "the reader handed over other plaintexts");
    assert_eq!(
        reader_accepted, accepted,
        "the reader and a record-by-record reading disagree"
    );
    accepted
}

/// The fixed pre-shared key and ephemeral keys of the `handshake` target (and its seeds).
pub const FUZZ_PSK: [u8; 32] = [0x42; 32];
/// The sender's ephemeral private key in the `handshake` target.
pub const FUZZ_SENDER_EPHEMERAL: [u8; 32] = [0x17; 32];
/// The receiver's ephemeral private key in the `handshake` target.
pub const FUZZ_RECEIVER_EPHEMERAL: [u8; 32] = [0x71; 32];

thread_local! {
    /// The `handshake` target's fixed sender and receiver sessions, between inputs.
    static SESSION: std::cell::Cell<Option<(Channel, Channel)>> = const { std::cell::Cell::new(None) };
}

/// `handshake`: first byte modulo 3: which message the rest is: a hello (to a receiver with
/// [`FUZZ_PSK`]), a welcome (to the sender of the fixed hello), or a transfer-key message (to the
/// receiver of the fixed handshake). It must never panic; each accepted message has its exact
/// length; and an accepted transfer key is the only one whose message the same sender session
/// makes byte for byte from it.
pub fn handshake(data: &[u8]) -> bool {
    use teecast_proto::auth::Key;
    use teecast_proto::crypt::{self, Initiator, Message};
    let Some((&which, message)) = data.split_first() else {
        return false;
    };
    let psk = Key::from_bytes(FUZZ_PSK);
    let framed = |kind: Message| PREFIX_LEN + kind.body_len();
    let outcome = match which % 3 {
        0 => crypt::respond(&psk, FUZZ_RECEIVER_EPHEMERAL, message).map(|(_, welcome)| {
            assert_eq!(message.len(), framed(Message::Hello));
            assert_eq!(welcome.len(), framed(Message::Welcome));
        }),
        1 => {
            let (initiator, _) = Initiator::start(&psk, FUZZ_SENDER_EPHEMERAL).expect("a hello");
            initiator.welcome(message).map(|_| {
                assert_eq!(message.len(), framed(Message::Welcome));
            })
        }
        _ => {
            // The fixed session is made once per thread and kept while it refuses (a refusal
            // leaves a Noise session as it was); one that accepted is made again.
            let (mut tx, mut rx) = SESSION.take().unwrap_or_else(|| {
                let (initiator, hello) =
                    Initiator::start(&psk, FUZZ_SENDER_EPHEMERAL).expect("a hello");
                let (rx, welcome) =
                    crypt::respond(&psk, FUZZ_RECEIVER_EPHEMERAL, &hello).expect("a welcome");
                (initiator.welcome(&welcome).expect("a session"), rx)
            });
            match rx.receive_transfer_key(message) {
                Ok(transfer) => {
                    let again = tx
                        .send_transfer_key(&transfer)
                        .expect("a transfer-key message");
                    assert_eq!(
                        again, message,
                        "an accepted transfer key re-seals differently"
                    );
                    Ok(())
                }
                Err(err) => {
                    SESSION.set(Some((tx, rx)));
                    Err(err)
                }
            }
        }
    };
    match outcome {
        Ok(()) => true,
        Err(err) => {
            check_crypt_error(&err);
            false
        }
    }
}

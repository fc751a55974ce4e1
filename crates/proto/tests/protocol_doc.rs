//! The examples in docs/PROTOCOL.md, byte for byte: every message a sender and a receiver
//! exchange for `hello` in a keyed version-2 session, with a fixed key and fixed nonces, as the
//! sessions make them; and the same for `hello, world` in an encrypted (version-3) session.

use teecast_proto::auth::Key;
use teecast_proto::crypt::{self, RECORDS_PER_KEY, RecordSealer, TransferKey};
use teecast_proto::digest::DigestAlgorithm;
use teecast_proto::session::{Next, ReceiverSession, SenderSession, Verdict};
use teecast_proto::wire::{AckStatus, Header, NONCE_LEN, PREFIX_LEN};

/// The example's messages in order, each with the label the document gives it.
fn example() -> Vec<(&'static str, Vec<u8>)> {
    let key = Key::from_bytes(std::array::from_fn(|i| i as u8));
    let sender_nonce: [u8; NONCE_LEN] = std::array::from_fn(|i| 0x40 + i as u8);
    let receiver_nonce: [u8; NONCE_LEN] = std::array::from_fn(|i| 0x80 + i as u8);
    let digest = blake3::hash(b"hello").as_bytes().to_vec();
    let header = Header {
        name: "ab".into(),
        length: Some(5),
        digest: DigestAlgorithm::Blake3,
        route: Vec::new(),
        tree: None,
    };
    let (mut tx, hello) = SenderSession::start(&header, Some(key.clone()), sender_nonce).unwrap();
    let mut rx = ReceiverSession::new(Some(key), receiver_nonce);
    let mut welcome = Vec::new();
    let mut at = 0;
    while let Next::Framing(n) = rx.next() {
        if at == hello.len() {
            break;
        }
        rx.framing(&hello[at..at + n]).unwrap();
        at += n;
        welcome.extend(rx.take_reply().unwrap_or_default());
    }
    let opening = tx.welcome(&welcome[PREFIX_LEN..]).unwrap();
    let (proof, header_bytes) = opening.split_at(PREFIX_LEN + 32);
    tx.payload(5).unwrap();
    let end = tx.finish(&digest).unwrap();
    let (trailer, stream_seal) = end.split_at(end.len() - (PREFIX_LEN + 32));
    // The receiver takes it all and answers.
    let mut wire = opening.clone();
    wire.extend_from_slice(b"hello");
    wire.extend_from_slice(&end);
    let mut at = 0;
    loop {
        match rx.next() {
            Next::Framing(n) => {
                rx.framing(&wire[at..at + n]).unwrap();
                at += n;
            }
            Next::Payload(n) => {
                let n = usize::try_from(n).unwrap();
                rx.payload(n as u64);
                at += n;
            }
            Next::Verify => break,
            Next::Resume => unreachable!("the example does not resume"),
        }
    }
    rx.verify(&digest).unwrap();
    let answer = rx.ack(AckStatus::Ok, 5, &digest, "");
    let (ack, ack_seal) = answer.split_at(answer.len() - (PREFIX_LEN + 32));
    assert!(matches!(
        tx.ack(&ack[PREFIX_LEN..], Some(&ack_seal[PREFIX_LEN..]), &digest),
        Ok(Verdict::Confirmed(_))
    ));
    vec![
        ("hello", hello),
        ("welcome", welcome),
        ("proof", proof.to_vec()),
        ("header", header_bytes.to_vec()),
        ("payload", b"hello".to_vec()),
        ("trailer", trailer.to_vec()),
        ("seal", stream_seal.to_vec()),
        ("ack", ack.to_vec()),
        ("ackseal", ack_seal.to_vec()),
    ]
}

/// The version-3 example's messages in order: a whole encrypted session for `hello, world`
/// (one record), as the sessions make it, with fixed keys.
fn example_v3() -> Vec<(&'static str, Vec<u8>)> {
    let key = Key::from_bytes(std::array::from_fn(|i| i as u8));
    let sender_ephemeral = std::array::from_fn(|i| 0x40 + i as u8);
    let receiver_ephemeral = std::array::from_fn(|i| 0x80 + i as u8);
    let transfer = TransferKey::new(
        std::array::from_fn(|i| 0xa0 + i as u8),
        std::array::from_fn(|i| 0xc0 + i as u8),
    );
    let plain = b"hello, world";
    let digest = blake3::hash(plain).as_bytes().to_vec();
    let length = crypt::sealed_len(plain.len() as u64).unwrap();
    let header = Header {
        name: "ab".into(),
        length: Some(length),
        digest: DigestAlgorithm::Blake3,
        route: Vec::new(),
        tree: None,
    };
    let (handshake, hello) =
        SenderSession::start_encrypted(&header, &key, sender_ephemeral, transfer.clone()).unwrap();
    let mut rx = ReceiverSession::new(Some(key), receiver_ephemeral);
    let welcome = feed(&mut rx, &hello);
    let mut reader = handshake.welcome_reader();
    let mut at = 0;
    let body = loop {
        let (took, body) = reader.push(&welcome[at..]).unwrap();
        at += took;
        if let Some(body) = body {
            break body;
        }
    };
    let (mut tx, next) = handshake.welcome(reader.version(), &body).unwrap();
    let (key_message, sealed_header) = next.split_at(PREFIX_LEN + 64);
    feed(&mut rx, &next);
    assert_eq!(rx.transfer_key(), Some(&transfer));
    let record = RecordSealer::new(&transfer, RECORDS_PER_KEY)
        .seal(plain, true)
        .unwrap();
    assert_eq!(rx.next(), Next::Payload(length));
    rx.payload(length);
    tx.payload(length).unwrap();
    let trailer = tx.finish(&digest).unwrap();
    feed(&mut rx, &trailer);
    rx.verify(&digest).unwrap();
    let ack = rx.ack(AckStatus::Ok, length, &digest, "");
    assert!(matches!(
        tx.ack(&ack[PREFIX_LEN..], None, &digest),
        Ok(Verdict::Confirmed(_))
    ));
    vec![
        ("hello", hello),
        ("welcome", welcome),
        ("key", key_message.to_vec()),
        ("header", sealed_header.to_vec()),
        ("record", record),
        ("trailer", trailer),
        ("ack", ack),
    ]
}

/// Hands `bytes` to the receiver as framing, as much as it asks for each time; returns its
/// replies.
fn feed(rx: &mut ReceiverSession, bytes: &[u8]) -> Vec<u8> {
    let mut replies = Vec::new();
    let mut at = 0;
    while let Next::Framing(n) = rx.next() {
        if at == bytes.len() {
            break;
        }
        let end = (at + n).min(bytes.len());
        rx.framing(&bytes[at..end]).unwrap();
        replies.extend(rx.take_reply().unwrap_or_default());
        at = end;
    }
    replies
}

/// The bytes of the document's example block after `marker`: on every line but `#` comments, the
/// two-digit hexadecimal tokens after the label, up to the first token that is not one.
fn documented(marker: &str) -> Vec<u8> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/PROTOCOL.md"
    ))
    .expect("docs/PROTOCOL.md");
    let start = doc.find(marker).expect("the example's marker");
    let block = doc[start..]
        .split("```")
        .nth(1)
        .expect("the example's code block");
    let mut bytes = Vec::new();
    for line in block.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut tokens = line.split_whitespace().peekable();
        if tokens
            .peek()
            .is_some_and(|t| u8::from_str_radix(t, 16).is_err() || t.len() != 2)
        {
            tokens.next();
        }
        for t in tokens {
            match (t.len(), u8::from_str_radix(t, 16)) {
                (2, Ok(b)) => bytes.push(b),
                _ => break,
            }
        }
    }
    bytes
}

/// Fails, showing what the sessions send, unless the block after `marker` holds `messages`.
fn check(marker: &str, messages: &[(&str, Vec<u8>)]) {
    let expected: Vec<u8> = messages.iter().flat_map(|(_, b)| b.clone()).collect();
    if documented(marker) != expected {
        let mut shown = String::new();
        for (label, bytes) in messages {
            for (i, line) in bytes.chunks(16).enumerate() {
                let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
                let label = if i == 0 { *label } else { "" };
                shown.push_str(&format!("{label:<8} {}\n", hex.join(" ")));
            }
        }
        panic!("docs/PROTOCOL.md's example ({marker}) differs; the sessions send:\n{shown}");
    }
}

#[test]
fn the_documented_keyed_session_is_what_the_sessions_send() {
    check(
        "<!-- keyed example: checked by crates/proto/tests/protocol_doc.rs -->",
        &example(),
    );
}

#[test]
fn the_documented_version_3_session_is_what_the_sessions_send() {
    check(
        "<!-- version 3 example: checked by crates/proto/tests/protocol_doc.rs -->",
        &example_v3(),
    );
}

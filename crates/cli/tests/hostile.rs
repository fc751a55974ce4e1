//! The hostile-client suite: one keyed and one unkeyed `recv --dir` receiver, each offered
//! every kind of bad session many times — garbage, sessions cut at every offset, forged proofs,
//! replays, forged trailers, bad names, over-long bodies, version 1 — and after all of it the
//! receivers must have kept nothing but the legitimate files, named no temporary, and still
//! serve a legitimate sender.
//!
//! `cargo test` runs a quick pass. `TEECAST_HOSTILE_ROUNDS=N` repeats the whole catalogue N times
//! (RELIABILITY.md records such a run); the table of outcomes is printed with `--nocapture`.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::{Prng, Receiver, list_dir, random_file, run, teecast};
use teecast::proto::DigestAlgorithm;
use teecast::proto::auth::Key;
use teecast::proto::session::SenderSession;
use teecast::proto::wire::{self, Header, MessageKind, NONCE_LEN, PREFIX_LEN, Trailer};

/// Offers `bytes` on a fresh connection: writes what the receiver takes, closes the sending
/// side, and reads whatever it answers until it closes.
fn offer(addr: SocketAddr, bytes: &[u8]) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        panic!("the receiver at {addr} stopped accepting connections");
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
}

/// A session as a client drives it: the hello, then (after reading the welcome) whatever
/// `rest` makes of the sender session — the receiver's answer included.
fn session(
    addr: SocketAddr,
    header: &Header,
    key: Option<Key>,
    rest: impl FnOnce(&mut SenderSession, Vec<u8>) -> Vec<u8>,
) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (mut tx, hello) = SenderSession::start(header, key, [3; NONCE_LEN]).unwrap();
    s.write_all(&hello).unwrap();
    let mut prefix = [0u8; PREFIX_LEN];
    if s.read_exact(&mut prefix).is_err() {
        return hello;
    }
    let len = wire::decode_prefix(&prefix, MessageKind::Welcome).unwrap();
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    let opening = match tx.welcome(&body) {
        Ok(o) => o,
        Err(_) => return hello,
    };
    let tail = rest(&mut tx, opening);
    let _ = s.write_all(&tail);
    let _ = s.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let mut all = hello;
    all.extend(tail);
    all
}

fn header(name: &str, length: Option<u64>, digest: DigestAlgorithm) -> Header {
    Header {
        name: name.into(),
        length,
        digest,
        route: Vec::new(),
        tree: None,
    }
}

/// The rest of a whole, correct session of `payload` (known length).
fn whole(payload: Vec<u8>) -> impl FnOnce(&mut SenderSession, Vec<u8>) -> Vec<u8> {
    move |tx, mut wire| {
        let digest = blake3::hash(&payload).as_bytes().to_vec();
        wire.extend_from_slice(&payload);
        tx.payload(payload.len() as u64).unwrap();
        wire.extend(tx.finish(&digest).unwrap());
        wire
    }
}

struct Tally(BTreeMap<&'static str, usize>);

impl Tally {
    fn add(&mut self, attack: &'static str) {
        *self.0.entry(attack).or_default() += 1;
    }
}

/// Every attack once, against the receiver at `addr` (keyed with `key` or not).
fn catalogue(addr: SocketAddr, key: Option<&Key>, prng: &mut Prng, tally: &mut Tally) {
    let crypto = DigestAlgorithm::Blake3;
    // Garbage of many lengths.
    for len in [0usize, 1, 3, 9, 10, 11, 100, 4096, 70_000] {
        offer(addr, &prng.bytes(len));
        tally.add("random bytes");
    }
    // A correct session (with the right key, when keyed) cut at every 7th offset: the cut
    // copies are refused; the whole one is stored once per round under its own name.
    let right = key.cloned();
    let payload = prng.bytes(3000);
    let recorded = session(
        addr,
        &header("whole.bin", Some(3000), crypto),
        right.clone(),
        whole(payload.clone()),
    );
    tally.add("a whole session (kept: the only legitimate file)");
    for cut in (1..recorded.len()).step_by(7) {
        let bytes = recorded[..cut].to_vec();
        // Blind replays of a prefix of the recorded session.
        offer(addr, &bytes);
        tally.add("a recorded session cut short, replayed");
    }
    // The whole recorded session replayed blind: keyed, its proof fails (a fresh receiver
    // nonce); unkeyed it is a new, valid session of the same bytes (and may be stored).
    if key.is_some() {
        offer(addr, &recorded);
        tally.add("a whole recorded session replayed");
    }
    // Another key, or none where one is needed (and one where none is).
    let wrong = Key::from_bytes(prng.bytes(32).try_into().unwrap());
    session(
        addr,
        &header("wrongkey.bin", Some(10), crypto),
        Some(wrong),
        whole(vec![1; 10]),
    );
    tally.add("another key");
    session(
        addr,
        &header("nokey.bin", Some(10), crypto),
        if key.is_some() {
            None
        } else {
            Some(Key::from_bytes([7; 32]))
        },
        whole(vec![1; 10]),
    );
    tally.add("key where none is held, or none where one is");
    // A forged trailer: the payload changed in flight and its digest with it. Only a key tells
    // this from a sender that meant it (without one it is a valid session, and is stored).
    session(
        addr,
        &header("forged.bin", Some(100), crypto),
        right.clone(),
        |tx, mut wire| {
            let forged = vec![9u8; 100];
            wire.extend_from_slice(&forged);
            tx.payload(100).unwrap();
            let real = blake3::hash(&[8u8; 100]).as_bytes().to_vec();
            let mut end = tx.finish(&real).unwrap();
            // Put the forged bytes' digest in the trailer (the seal, if any, no longer matches).
            let at = if key.is_some() {
                end.len() - (PREFIX_LEN + 32) - 32
            } else {
                end.len() - 32
            };
            end[at..at + 32].copy_from_slice(blake3::hash(&forged).as_bytes());
            wire.extend(end);
            wire
        },
    );
    tally.add("payload and trailer digest forged together (kept without a key)");
    // A wrong length: fewer payload bytes than announced, then a trailer.
    session(
        addr,
        &header("short.bin", Some(100), crypto),
        right.clone(),
        |tx, mut wire| {
            wire.extend_from_slice(&[1u8; 50]);
            tx.payload(50).unwrap();
            wire.extend(
                Trailer {
                    length: 50,
                    digest: blake3::hash(&[1u8; 50]).as_bytes().to_vec(),
                }
                .encode(),
            );
            let _ = tx;
            wire
        },
    );
    tally.add("fewer bytes than announced");
    // Names no receiver may store: patched into a valid header of the same length.
    for bad in [
        "../x",
        "/etc",
        "a/b",
        ".",
        "a\\b",
        "\u{1b}[2J",
        ".x.teecast-1-0.part",
    ] {
        session(
            addr,
            &header(&"a".repeat(bad.len()), Some(1), crypto),
            right.clone(),
            |tx, mut wire| {
                let at = wire.len()
                    - header(&"a".repeat(bad.len()), Some(1), crypto)
                        .encode()
                        .unwrap()
                        .len()
                    + PREFIX_LEN
                    + 2;
                wire[at..at + bad.len()].copy_from_slice(bad.as_bytes());
                wire.push(1);
                tx.payload(1).unwrap();
                wire.extend(tx.finish(blake3::hash(&[1]).as_bytes()).unwrap());
                wire
            },
        );
        tally.add("a name that climbs out, is absolute, a control or a temporary's");
    }
    // Bodies announced longer than any limit, for every kind of message.
    for kind in MessageKind::ALL {
        let mut bytes = kind.magic().to_vec();
        bytes.extend_from_slice(&wire::VERSION.to_be_bytes());
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        offer(addr, &bytes);
        tally.add("an over-long body announced");
    }
    // A version-1 sender: a header first, no hello.
    let mut v1 = header("v1.bin", Some(1), DigestAlgorithm::Xxh3_128)
        .encode()
        .unwrap();
    v1[4..6].copy_from_slice(&1u16.to_be_bytes());
    offer(addr, &v1);
    tally.add("a version-1 sender");
}

fn run_suite(inbox: &Path, key: Option<&Path>, rounds: usize, seed: u64) -> Tally {
    std::fs::create_dir_all(inbox).unwrap();
    let mut args: Vec<std::ffi::OsString> = vec!["--dir".into(), inbox.into()];
    if let Some(k) = key {
        args.extend(["--key-file".into(), k.into()]);
    }
    let receiver = Receiver::start(&args);
    let key = key.map(|k| teecast::auth::read_key_file(k).unwrap());
    let mut prng = Prng::new(seed);
    let mut tally = Tally(BTreeMap::new());
    for _ in 0..rounds {
        catalogue(receiver.addr, key.as_ref(), &mut prng, &mut tally);
    }
    // Only the legitimate files, no temporary, and still serving. Without a key, a forged
    // payload with its own digest is indistinguishable from a sender's: that is what keys are for.
    let kept = list_dir(inbox);
    let expected: &[&str] = match key {
        Some(_) => &["whole.bin"],
        None => &["forged.bin", "whole.bin"],
    };
    assert_eq!(
        kept,
        expected,
        "files kept in {} after the attacks",
        inbox.display()
    );
    let source = inbox.parent().unwrap().join(format!("final-{seed}.bin"));
    random_file(&source, 1 << 20, seed);
    let mut cmd = teecast(["send"]);
    if let Some(k) = args.iter().position(|a| a == "--key-file") {
        cmd.arg("--key-file").arg(&args[k + 1]);
    }
    run(cmd.arg(&source).arg(receiver.dest())).expect_code(0);
    receiver.proc.wait_stdout(
        &format!("{}", inbox.join(source.file_name().unwrap()).display()),
        common::TIMEOUT,
    );
    let stderr = receiver.proc.stderr_so_far();
    assert!(
        !stderr.contains('\u{1b}'),
        "a peer's escape sequence reached the log"
    );
    tally
}

#[test]
fn hostile_clients_leave_no_file_and_the_receiver_serves_on() {
    let rounds = std::env::var("TEECAST_HOSTILE_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    run(teecast(["keygen"]).arg(&key)).expect_code(0);
    let keyed = run_suite(&dir.path().join("keyed"), Some(&key), rounds, 131);
    let open = run_suite(&dir.path().join("open"), None, rounds, 132);
    println!("| attack | keyed receiver | receiver without a key |");
    println!("|---|---:|---:|");
    for (attack, n) in &keyed.0 {
        println!(
            "| {attack} | {n} | {} |",
            open.0.get(attack).copied().unwrap_or(0)
        );
    }
    let total = |t: &Tally| t.0.values().sum::<usize>();
    println!(
        "| **connections in all** | {} | {} |",
        total(&keyed),
        total(&open)
    );
}

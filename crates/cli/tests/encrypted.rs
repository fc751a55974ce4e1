//! Encrypted streams (protocol version 3) through the real binary: a keyed stream crosses the
//! wire as ciphertext, from the sender and from a relay to its child; every change to its
//! records is refused with nothing kept; a recorded session does not play again; the opt-out
//! sends in the clear and says so; a refusal reaches the sender in the receiver's words.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use common::{Receiver, TIMEOUT, accept, list_dir, run, teecast};

/// Plaintext bytes in a record, and a whole record on the wire (header, ciphertext, tag).
const RECORD: usize = 65_536;
const FULL: usize = RECORD + 20;

/// What the proxy does to the records of the stream it passes on.
#[derive(Clone, Copy, Debug)]
enum Tamper {
    /// Nothing: it only records what passes.
    None,
    /// Flips one bit of the payload at this offset.
    Flip(usize),
    /// Leaves out record k.
    Drop(usize),
    /// Sends records k and k + 1 in the other order.
    Swap(usize),
    /// Sends record k again in place of record k + 1.
    Repeat(usize),
    /// Ends the stream after k whole records (a cut at a record boundary): no final record.
    Cut(usize),
}

/// A proxy for one connection: what went each way, as it went.
struct Proxy {
    addr: String,
    upstream: Arc<Mutex<Vec<u8>>>,
    downstream: Arc<Mutex<Vec<u8>>>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on an ephemeral port of 127.0.0.1 and passes one connection on to `target`,
    /// applying `tamper` to the `payload` bytes of records after the handshake and header.
    fn start(target: String, payload: usize, tamper: Tamper) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let upstream = Arc::new(Mutex::new(Vec::new()));
        let downstream = Arc::new(Mutex::new(Vec::new()));
        let (up, down) = (upstream.clone(), downstream.clone());
        let thread = std::thread::spawn(move || {
            relay_one(&listener, &target, payload, tamper, &up, &down);
        });
        Proxy {
            addr,
            upstream,
            downstream,
            thread: Some(thread),
        }
    }

    /// Everything that went each way, once the connection is over.
    fn captured(mut self) -> (Vec<u8>, Vec<u8>) {
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let up = self.upstream.lock().unwrap().clone();
        let down = self.downstream.lock().unwrap().clone();
        (up, down)
    }
}

/// Reads one framed message (10-byte prefix, then its body) from `from`, appending it to `out`.
fn read_frame(from: &mut TcpStream, out: &mut Vec<u8>) -> bool {
    let mut prefix = [0u8; 10];
    if from.read_exact(&mut prefix).is_err() {
        return false;
    }
    let len = u32::from_be_bytes(prefix[6..10].try_into().unwrap()) as usize;
    let mut body = vec![0; len];
    if from.read_exact(&mut body).is_err() {
        return false;
    }
    out.extend_from_slice(&prefix);
    out.extend_from_slice(&body);
    true
}

fn relay_one(
    listener: &TcpListener,
    target: &str,
    payload: usize,
    tamper: Tamper,
    up: &Mutex<Vec<u8>>,
    down: &Mutex<Vec<u8>>,
) {
    let mut client = accept(listener);
    let mut server = TcpStream::connect(target).unwrap();
    server.set_read_timeout(Some(TIMEOUT)).unwrap();
    // The receiver's side goes back untouched, recorded.
    let (mut s_read, mut c_write) = (server.try_clone().unwrap(), client.try_clone().unwrap());
    let back = std::thread::spawn(move || {
        let mut got = Vec::new();
        pump(&mut s_read, &mut c_write, &mut got);
        got
    });
    // The sender's: the hello, the transfer key and the header each go on as they come (the
    // sender waits for the welcome in between); then the payload whole, changed, and the
    // trailer.
    let mut sent = Vec::new();
    for _ in 0..3 {
        let from = sent.len();
        if !read_frame(&mut client, &mut sent) {
            break;
        }
        server.write_all(&sent[from..]).unwrap();
    }
    let mut body = vec![0; payload];
    let mut trailer = Vec::new();
    let whole = client.read_exact(&mut body).is_ok() && read_frame(&mut client, &mut trailer);
    let records: Vec<&[u8]> = body.chunks(FULL).collect();
    let changed: Vec<u8> = match tamper {
        Tamper::None => body.clone(),
        Tamper::Flip(at) => {
            let mut b = body.clone();
            b[at] ^= 0x01;
            b
        }
        Tamper::Drop(k) => [&records[..k], &records[k + 1..]].concat().concat(),
        Tamper::Swap(k) => {
            let mut r = records.clone();
            r.swap(k, k + 1);
            r.concat()
        }
        Tamper::Repeat(k) => {
            let mut r = records.clone();
            r[k + 1] = records[k];
            r.concat()
        }
        Tamper::Cut(k) => records[..k].concat(),
    };
    sent.extend_from_slice(&changed);
    server.write_all(&changed).unwrap();
    if matches!(tamper, Tamper::Cut(_)) || !whole {
        // The sender's half ends here: the receiver sees its end of file inside the stream.
        let _ = server.shutdown(Shutdown::Write);
    } else {
        // The trailer, read above, goes on; then whatever else the sender has.
        sent.extend_from_slice(&trailer);
        let _ = server.write_all(&trailer);
        let _ = client.set_read_timeout(Some(TIMEOUT));
        pump(&mut client, &mut server, &mut sent);
    }
    let got = back.join().unwrap();
    *up.lock().unwrap() = sent;
    *down.lock().unwrap() = got;
}

/// Copies `from` to `to` until either ends, recording what passed in `seen`; then ends `to`'s
/// writing half.
fn pump(from: &mut TcpStream, to: &mut TcpStream, seen: &mut Vec<u8>) {
    let mut buf = vec![0; 65_536];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// A fresh key file made by `teecast keygen`.
fn keygen(dir: &Path) -> PathBuf {
    let path = dir.join("k");
    run(teecast(["keygen"]).arg(&path)).expect_code(0);
    path
}

/// A file of `records` full records and `tail` bytes more, of a recognisable text.
fn pattern_file(dir: &Path, name: &str, records: usize, tail: usize) -> (PathBuf, Vec<u8>) {
    let text = b"TEECAST-PLAINTEXT-PATTERN-0123456789 ";
    let bytes: Vec<u8> = text
        .iter()
        .cycle()
        .take(records * RECORD + tail)
        .copied()
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

/// The payload length on the wire of `plain` bytes sent encrypted.
fn sealed_len(plain: usize) -> usize {
    plain + (plain / RECORD + 1) * 20
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_wire_holds_no_plaintext_and_the_file_arrives_whole() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let inbox = dir.path().join("in");
    let (src, bytes) = pattern_file(dir.path(), "secret-name.bin", 16, 1234);
    let receiver = Receiver::once_in(&inbox, &["--key-file", key.to_str().unwrap()]);
    let proxy = Proxy::start(receiver.dest(), sealed_len(bytes.len()), Tamper::None);
    let sent = run(teecast(["send", "--json", "--key-file"])
        .arg(&key)
        .arg(&src)
        .arg(&proxy.addr));
    sent.expect_code(0);
    let report = sent.json();
    assert_eq!(report["encrypted"], true, "{report}");
    assert_eq!(report["destinations"][0]["encrypted"], true, "{report}");
    assert_eq!(report["bytes"], bytes.len() as u64, "{report}");
    let received = receiver.wait();
    received.expect_code(0);
    assert!(received.stderr.contains("encrypted"), "{received:?}");
    assert!(std::fs::read(inbox.join("secret-name.bin")).unwrap() == bytes);
    let (up, down) = proxy.captured();
    assert!(up.len() > bytes.len(), "the whole stream passed the proxy");
    let digest = report["digest"]["hex"].as_str().unwrap();
    for wire in [&up, &down] {
        // Not a piece of the text, nor the name, nor the digest (in the trailer and the ack).
        assert!(!contains(wire, b"PLAINTEXT-PATT"));
        assert!(!contains(wire, b"secret-name"));
        let digest_bytes: Vec<u8> = (0..16)
            .map(|i| u8::from_str_radix(&digest[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        assert!(!contains(wire, &digest_bytes));
    }
    // Version 3 from the first message on.
    assert_eq!(&up[..6], b"TCHL\x00\x03");
    assert_eq!(&down[..6], b"TCWL\x00\x03");
}

#[test]
fn a_relay_forwards_ciphertext_to_its_child() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let (src, bytes) = pattern_file(dir.path(), "tree.bin", 8, 99);
    let (a_in, b_in) = (dir.path().join("a"), dir.path().join("b"));
    let relay_args = ["--relay", "--key-file", key.to_str().unwrap()];
    let a = Receiver::once_in(&a_in, &relay_args);
    let b = Receiver::once_in(&b_in, &relay_args);
    // The relay's child is the proxy, in front of b: what the relay sends it is recorded.
    let proxy = Proxy::start(b.dest(), sealed_len(bytes.len()), Tamper::None);
    let sent = run(teecast(["send", "--json", "--tree", "1", "--key-file"])
        .arg(&key)
        .arg(&src)
        .arg(a.dest())
        .arg(&proxy.addr));
    sent.expect_code(0);
    let report = sent.json();
    assert!(
        report["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["status"] == "ok" && d["encrypted"] == true),
        "{report}"
    );
    a.wait().expect_code(0);
    b.wait().expect_code(0);
    assert!(std::fs::read(a_in.join("tree.bin")).unwrap() == bytes);
    assert!(std::fs::read(b_in.join("tree.bin")).unwrap() == bytes);
    let (up, down) = proxy.captured();
    assert!(up.len() > bytes.len());
    assert!(!contains(&up, b"PLAINTEXT-PATT"));
    assert!(!contains(&up, b"tree.bin"));
    assert!(!contains(&down, b"tree.bin"));
    assert_eq!(&up[..6], b"TCHL\x00\x03");
}

#[test]
fn records_changed_on_the_way_are_refused_and_nothing_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let (src, bytes) = pattern_file(dir.path(), "f.bin", 4, 500);
    let payload = sealed_len(bytes.len());
    for tamper in [
        Tamper::Flip(10),
        Tamper::Flip(FULL + 3),
        Tamper::Flip(payload - 1),
        Tamper::Drop(1),
        Tamper::Swap(0),
        Tamper::Repeat(1),
        Tamper::Cut(2),
    ] {
        let inbox = dir.path().join(format!("in-{tamper:?}"));
        let receiver = Receiver::once_in(&inbox, &["--key-file", key.to_str().unwrap()]);
        let proxy = Proxy::start(receiver.dest(), payload, tamper);
        let sent = run(teecast(["send", "--key-file"])
            .arg(&key)
            .arg(&src)
            .arg(&proxy.addr));
        sent.expect_code(1);
        let received = receiver.wait();
        received.expect_code(1);
        assert!(
            received.stderr.contains("encrypted stream does not verify")
                || received.stderr.contains("cut short"),
            "{tamper:?}: {received:?}"
        );
        assert!(
            list_dir(&inbox).is_empty(),
            "{tamper:?}: {:?}",
            list_dir(&inbox)
        );
        drop(proxy.captured());
    }
}

#[test]
fn a_recorded_session_played_again_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let (src, bytes) = pattern_file(dir.path(), "once.bin", 2, 7);
    let first_in = dir.path().join("first");
    let first = Receiver::once_in(&first_in, &["--key-file", key.to_str().unwrap()]);
    let proxy = Proxy::start(first.dest(), sealed_len(bytes.len()), Tamper::None);
    run(teecast(["send", "--key-file"])
        .arg(&key)
        .arg(&src)
        .arg(&proxy.addr))
    .expect_code(0);
    first.wait().expect_code(0);
    let (recorded, _) = proxy.captured();

    // The same bytes to a new receiver: its welcome has a new ephemeral key, so the recorded
    // transfer key does not verify, and nothing after it counts.
    let again_in = dir.path().join("again");
    std::fs::create_dir(&again_in).unwrap();
    let again = Receiver::start(&[
        "--dir",
        again_in.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ]);
    let mut conn = TcpStream::connect(again.dest()).unwrap();
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    let _ = conn.write_all(&recorded);
    let _ = conn.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    // It answered the hello (a welcome of 58 bytes) and nothing more: no acknowledgement.
    assert_eq!(answer.len(), 58, "{answer:?}");
    let line = again
        .proc
        .wait_stderr("the transfer key does not verify", TIMEOUT);
    assert!(line.contains("127.0.0.1"), "{line}");
    assert!(list_dir(&again_in).is_empty());
}

#[test]
fn no_encrypt_sends_in_the_clear_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let inbox = dir.path().join("in");
    let (src, bytes) = pattern_file(dir.path(), "clear.bin", 1, 10);
    let receiver = Receiver::once_in(&inbox, &["--key-file", key.to_str().unwrap()]);
    // Version 2: the payload is the plaintext itself, as long.
    let proxy = Proxy::start(receiver.dest(), bytes.len(), Tamper::None);
    let sent = run(teecast(["send", "--json", "--no-encrypt", "--key-file"])
        .arg(&key)
        .arg(&src)
        .arg(&proxy.addr));
    sent.expect_code(0);
    let report = sent.json();
    assert_eq!(report["encrypted"], false, "{report}");
    assert_eq!(report["destinations"][0]["encrypted"], false, "{report}");
    let human = run(teecast(["send", "--no-encrypt", "--key-file"])
        .arg(&key)
        .arg(&src)
        .arg("127.0.0.1:9"));
    assert!(human.stderr.contains("not encrypted"), "{human:?}");
    receiver.wait().expect_code(0);
    assert!(std::fs::read(inbox.join("clear.bin")).unwrap() == bytes);
    let (up, _) = proxy.captured();
    assert!(contains(&up, b"PLAINTEXT-PATT"));
    assert_eq!(&up[..6], b"TCHL\x00\x02");
}

#[test]
fn a_refusal_reaches_the_sender_in_the_receivers_words() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let (src, _) = pattern_file(dir.path(), "big.bin", 2, 0);
    let inbox = dir.path().join("in");
    let receiver = Receiver::once_in(
        &inbox,
        &["--key-file", key.to_str().unwrap(), "--max-size", "1000"],
    );
    let sent = run(teecast(["send", "--json", "--key-file"])
        .arg(&key)
        .arg(&src)
        .arg(receiver.dest()));
    sent.expect_code(1);
    let report = sent.json();
    let d = &report["destinations"][0];
    assert_eq!(d["kind"], "refused", "{report}");
    assert_eq!(d["ack_status"], "rejected", "{report}");
    assert!(d["error"].as_str().unwrap().contains("1000"), "{report}");
    receiver.wait().expect_code(1);
    assert!(list_dir(&inbox).is_empty());
}

/// A receiver of a release that speaks only version 2 closes the connection at an encrypted
/// hello, as it does at any version it does not know: the sender says that may be the cause.
#[test]
fn a_version_2_receiver_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let (src, _) = pattern_file(dir.path(), "v2.bin", 0, 10);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let old = std::thread::spawn(move || {
        // What a version-2 receiver does with a version-3 hello: reads its prefix, finds the
        // version unsupported, closes without an answer.
        let mut conn = accept(&listener);
        let mut prefix = [0u8; 10];
        conn.read_exact(&mut prefix).unwrap();
        prefix
    });
    let sent = run(teecast(["send", "--json", "--key-file"])
        .arg(&key)
        .arg(&src)
        .arg(&addr));
    sent.expect_code(1);
    assert_eq!(&old.join().unwrap()[..6], b"TCHL\x00\x03");
    let d = &sent.json()["destinations"][0];
    assert_eq!(d["kind"], "closed-at-hello", "{d}");
    assert!(
        d["error"]
            .as_str()
            .unwrap()
            .contains("unencrypted version 2"),
        "{d}"
    );
}

/// Every `--strategy`, a file and standard input, to two receivers with a capture: sealed once
/// on the one sealing path; both receivers and the capture hold the plaintext.
#[test]
fn every_strategy_and_standard_input_go_encrypted_with_a_plaintext_capture() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let (src, bytes) = pattern_file(dir.path(), "any.bin", 5, 4321);
    let strategies = [
        "auto",
        "readwrite",
        "mmap-write",
        "vmsplice",
        "mmap-pipe",
        "read-pipe",
        "zerocopy",
        "direct",
    ];
    for (i, strategy) in strategies.iter().chain(&["-"]).enumerate() {
        let inboxes = [
            dir.path().join(format!("a{i}")),
            dir.path().join(format!("b{i}")),
        ];
        let receivers: Vec<Receiver> = inboxes
            .iter()
            .map(|d| Receiver::once_in(d, &["--key-file", key.to_str().unwrap()]))
            .collect();
        let capture = dir.path().join(format!("capture-{i}"));
        let mut cmd = teecast(["send", "--json", "--name", "any.bin", "--key-file"]);
        cmd.arg(&key).arg("--capture").arg(&capture);
        let sent = if *strategy == "-" {
            cmd.arg("-").args(receivers.iter().map(Receiver::dest));
            let stdin = std::process::Stdio::from(std::fs::File::open(&src).unwrap());
            common::Running::spawn_with(&mut cmd, stdin, None)
                .0
                .wait(TIMEOUT)
        } else {
            cmd.args(["--strategy", strategy])
                .arg(&src)
                .args(receivers.iter().map(Receiver::dest));
            run(&mut cmd)
        };
        sent.expect_code(0);
        let report = sent.json();
        assert_eq!(report["encrypted"], true, "{strategy}: {report}");
        // Sealing reads the plaintext: readwrite where auto picks it for plaintext too (two
        // receivers and a capture), read-pipe for every path that does not read.
        let path = match *strategy {
            "auto" | "readwrite" | "-" => "readwrite",
            _ => "read-pipe",
        };
        assert_eq!(report["strategy"], path, "{strategy}: {report}");
        assert_eq!(
            std::fs::read(&capture).unwrap(),
            bytes,
            "{strategy}: capture"
        );
        for (r, inbox) in receivers.into_iter().zip(&inboxes) {
            r.wait().expect_code(0);
            assert_eq!(
                std::fs::read(inbox.join("any.bin")).unwrap(),
                bytes,
                "{strategy}"
            );
        }
    }
}

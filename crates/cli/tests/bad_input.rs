//! What teecast refuses: malformed, forged and cut streams at the receiver (which must store
//! nothing and keep serving), and unusable requests at the sender (exit code 2).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{
    MIB, Prng, Receiver, Running, TIMEOUT, assert_same_file, digest_line, list_dir, listener,
    random_file, run, teecast,
};
use teecast::digest::DigestAlgorithm;
use teecast::proto::wire::{self, Ack, AckStatus, Header, MessageKind, Trailer};

/// A `recv --dir` receiver serving `tmp/inbox`, where `tmp` holds nothing else.
struct Inbox {
    tmp: tempfile::TempDir,
    receiver: Receiver,
}

impl Inbox {
    fn start() -> Inbox {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("inbox")).unwrap();
        let receiver = Receiver::start(&["--dir".as_ref(), tmp.path().join("inbox").as_os_str()]);
        Inbox { tmp, receiver }
    }

    fn dir(&self) -> std::path::PathBuf {
        self.tmp.path().join("inbox")
    }

    /// Connects, writes `bytes` (the receiver may hang up before taking them all), closes the
    /// sending side and reads until the receiver closes; returns what it answered.
    fn offer(&self, bytes: &[u8]) -> (String, Vec<u8>) {
        let mut s = TcpStream::connect(self.receiver.addr).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let local = s.local_addr().unwrap().to_string();
        let _ = s.write_all(bytes);
        let _ = s.shutdown(Shutdown::Write);
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        (local, answer)
    }

    /// Waits for the receiver's verdict on the connection from `peer` and checks that it names
    /// `reason`, then that nothing was stored anywhere.
    fn expect_refused(&self, peer: &str, reason: &str) {
        let line = self.receiver.proc.wait_verdict(peer, TIMEOUT);
        assert!(
            line.contains(reason),
            "the receiver's error {line:?} does not say {reason:?}"
        );
        self.expect_nothing_stored();
    }

    fn expect_nothing_stored(&self) {
        assert_eq!(list_dir(&self.dir()), Vec::<String>::new());
        assert_eq!(list_dir(self.tmp.path()), vec!["inbox".to_string()]);
        assert_eq!(self.receiver.proc.stdout_so_far(), "");
    }

    /// A good `teecast send` still arrives whole and is stored under its name; ends the receiver.
    fn expect_still_serving(self) {
        let src_dir = tempfile::tempdir().unwrap();
        let source = src_dir.path().join("good.bin");
        let sha = random_file(&source, 3 * MIB + 17, 60);
        let sent = run(teecast(["send", "--digest", "sha256"])
            .arg(&source)
            .arg(self.receiver.dest()));
        sent.expect_code(0);
        let stored = self.dir().join("good.bin");
        self.receiver
            .proc
            .wait_stdout(&digest_line(&sha, &stored), TIMEOUT);
        assert_same_file(&source, &stored);
        assert_eq!(list_dir(&self.dir()), vec!["good.bin".to_string()]);
    }
}

/// Length of an unkeyed sender's hello, which opens every session.
const HELLO_LEN: usize = wire::PREFIX_LEN + wire::HELLO_BODY;

fn hello() -> Vec<u8> {
    wire::Hello {
        capabilities: 0,
        nonce: [5; wire::NONCE_LEN],
    }
    .encode()
}

/// A hello, then a header.
fn header(name: &str, length: Option<u64>) -> Vec<u8> {
    let mut bytes = hello();
    bytes.extend(
        Header {
            name: name.into(),
            length,
            digest: DigestAlgorithm::Sha256,
            route: Vec::new(),
            tree: None,
        }
        .encode()
        .unwrap(),
    );
    bytes
}

#[test]
fn random_garbage_is_refused() {
    let inbox = Inbox::start();
    let (peer, _) = inbox.offer(&Prng::new(61).bytes(64 * 1024));
    inbox.expect_refused(&peer, "bad magic");
    inbox.expect_still_serving();
}

#[test]
fn wrong_magic_is_refused() {
    let inbox = Inbox::start();
    let mut bytes = header("x.bin", Some(4));
    bytes[HELLO_LEN..HELLO_LEN + 4].copy_from_slice(&MessageKind::Trailer.magic());
    bytes.extend_from_slice(b"data");
    let (peer, _) = inbox.offer(&bytes);
    inbox.expect_refused(&peer, "bad magic");
    inbox.expect_still_serving();
}

#[test]
fn wrong_version_is_refused() {
    let inbox = Inbox::start();
    let mut bytes = header("x.bin", Some(4));
    bytes[HELLO_LEN + 4..HELLO_LEN + 6].copy_from_slice(&(wire::VERSION + 1).to_be_bytes());
    bytes.extend_from_slice(b"data");
    let (peer, _) = inbox.offer(&bytes);
    inbox.expect_refused(&peer, "unsupported protocol version");
    inbox.expect_still_serving();
}

#[test]
fn oversized_body_length_is_refused() {
    let inbox = Inbox::start();
    let mut bytes = hello();
    bytes.extend_from_slice(&MessageKind::Header.magic());
    bytes.extend_from_slice(&wire::VERSION.to_be_bytes());
    bytes.extend_from_slice(&u32::MAX.to_be_bytes());
    bytes.extend_from_slice(&[0u8; 4096]);
    let (peer, _) = inbox.offer(&bytes);
    inbox.expect_refused(&peer, "longer than the limit");
    inbox.expect_still_serving();
}

#[test]
fn stream_cut_after_the_header_is_discarded() {
    let inbox = Inbox::start();
    let mut bytes = header("cut.bin", Some(8 * MIB));
    bytes.extend_from_slice(&Prng::new(62).bytes(MIB as usize));
    let (peer, answer) = inbox.offer(&bytes);
    inbox.expect_refused(&peer, "cut short");
    assert_eq!(ack(&answer).status, AckStatus::Truncated);
    inbox.expect_still_serving();
}

#[test]
fn chunked_stream_cut_without_terminator_is_discarded() {
    let inbox = Inbox::start();
    let mut bytes = header("cut.bin", None);
    bytes.extend_from_slice(&wire::encode_chunk_header(4096));
    bytes.extend_from_slice(&Prng::new(63).bytes(4096));
    let (peer, answer) = inbox.offer(&bytes);
    inbox.expect_refused(&peer, "cut short");
    assert_eq!(ack(&answer).status, AckStatus::Truncated);
    inbox.expect_still_serving();
}

#[test]
fn forged_digest_is_refused() {
    let inbox = Inbox::start();
    let payload = Prng::new(64).bytes(2 * MIB as usize);
    let mut bytes = header("forged.bin", Some(payload.len() as u64));
    bytes.extend_from_slice(&payload);
    let mut digest = common::sha256_raw(&payload);
    digest[0] ^= 1;
    bytes.extend_from_slice(
        &Trailer {
            length: payload.len() as u64,
            digest,
        }
        .encode(),
    );
    let (peer, answer) = inbox.offer(&bytes);
    inbox.expect_refused(&peer, "digest mismatch");
    let ack = ack(&answer);
    assert_eq!(ack.status, AckStatus::DigestMismatch);
    inbox.expect_still_serving();
}

/// The acknowledgement in `answer`, after the receiver's welcome.
fn ack(answer: &[u8]) -> Ack {
    let message = |at: usize, kind| {
        let prefix: &[u8; wire::PREFIX_LEN] = answer
            .get(at..at + wire::PREFIX_LEN)
            .and_then(|p| p.try_into().ok())
            .unwrap_or_else(|| panic!("no {kind} at byte {at} of {answer:?}"));
        let len = wire::decode_prefix(prefix, kind).unwrap();
        (at + wire::PREFIX_LEN, len)
    };
    let (body, len) = message(0, MessageKind::Welcome);
    let (body, len) = message(body + len, MessageKind::Ack);
    Ack::decode_body(&answer[body..body + len]).unwrap()
}

/// A header whose name is `name`, built by encoding a harmless name of the same length and
/// overwriting it, since the encoder refuses such names.
fn header_named(name: &str, length: u64) -> Vec<u8> {
    let mut bytes = header(&"a".repeat(name.len()), Some(length));
    let at = HELLO_LEN + wire::PREFIX_LEN + 2;
    bytes[at..at + name.len()].copy_from_slice(name.as_bytes());
    bytes
}

fn forged_name_is_refused(name: &str) {
    let outside = Path::new("/etc/x");
    let existed = outside.exists();
    let inbox = Inbox::start();
    let mut bytes = header_named(name, 4);
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(
        &Trailer {
            length: 4,
            digest: common::sha256_raw(b"data"),
        }
        .encode(),
    );
    let (peer, _) = inbox.offer(&bytes);
    inbox.expect_refused(&peer, "invalid file name");
    assert_eq!(outside.exists(), existed);
    inbox.expect_still_serving();
}

#[test]
fn receiver_refuses_name_climbing_out() {
    forged_name_is_refused("../x");
}

#[test]
fn receiver_refuses_absolute_name() {
    forged_name_is_refused("/etc/x");
}

fn sender_refuses_name(name: &str) {
    let outside = Path::new("/etc/x");
    let existed = outside.exists();
    let inbox = Inbox::start();
    let src_dir = tempfile::tempdir().unwrap();
    let source = src_dir.path().join("src.bin");
    random_file(&source, 4096, 65);
    let sent = run(teecast(["send", "--name", name])
        .arg(&source)
        .arg(inbox.receiver.dest()));
    sent.expect_code(2);
    assert!(sent.stderr.contains(name), "{sent:?}");
    inbox.expect_nothing_stored();
    assert_eq!(outside.exists(), existed);
    inbox.expect_still_serving();
}

#[test]
fn sender_refuses_name_climbing_out() {
    sender_refuses_name("../x");
}

#[test]
fn sender_refuses_absolute_name() {
    sender_refuses_name("/etc/x");
}

/// Runs `teecast send ARGS` with stdin from an empty pipe, expecting exit code 2 and an error
/// containing `needle`.
fn usage_error(args: &[&std::ffi::OsStr], needle: &str) {
    let (pipe_out, pipe_in) = std::io::pipe().unwrap();
    drop(pipe_in);
    let (sender, _) =
        Running::spawn_with(teecast(["send"]).args(args), Stdio::from(pipe_out), None);
    let sent = sender.wait(TIMEOUT);
    sent.expect_code(2);
    assert!(
        sent.stderr.contains(needle),
        "stderr does not mention {needle:?}: {sent:?}"
    );
}

/// Listeners that take connections into their backlog but that nobody serves.
fn idle_destinations(n: usize) -> (Vec<TcpListener>, Vec<String>) {
    (0..n).map(|_| listener()).unzip()
}

/// Nothing connected to `listeners`.
fn expect_no_connection(listeners: &[TcpListener]) {
    for l in listeners {
        l.set_nonblocking(true).unwrap();
        assert!(l.accept().is_err(), "the sender connected before refusing");
    }
}

#[test]
fn missing_source_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no such file");
    let (ls, dests) = idle_destinations(1);
    usage_error(
        &[missing.as_os_str(), dests[0].as_ref()],
        &missing.display().to_string(),
    );
    expect_no_connection(&ls);
}

#[test]
fn directory_source_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let (ls, dests) = idle_destinations(1);
    usage_error(&[dir.path().as_os_str(), dests[0].as_ref()], "director");
    expect_no_connection(&ls);
}

#[test]
fn mmap_write_to_two_destinations_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("src.bin");
    random_file(&source, MIB, 66);
    let (ls, dests) = idle_destinations(2);
    usage_error(
        &[
            "--strategy".as_ref(),
            "mmap-write".as_ref(),
            source.as_os_str(),
            dests[0].as_ref(),
            dests[1].as_ref(),
        ],
        "mmap-write",
    );
    expect_no_connection(&ls);
}

#[test]
fn mmap_pipe_from_stdin_is_a_usage_error() {
    let (ls, dests) = idle_destinations(1);
    usage_error(
        &[
            "--strategy".as_ref(),
            "mmap-pipe".as_ref(),
            "-".as_ref(),
            dests[0].as_ref(),
        ],
        "regular file",
    );
    expect_no_connection(&ls);
}

#[test]
fn unknown_strategy_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("src.bin");
    random_file(&source, 4096, 67);
    let (ls, dests) = idle_destinations(1);
    usage_error(
        &[
            "--strategy".as_ref(),
            "teleport".as_ref(),
            source.as_os_str(),
            dests[0].as_ref(),
        ],
        "teleport",
    );
    expect_no_connection(&ls);
}

#[test]
fn quiet_sender_is_dropped_after_the_stall_timeout() {
    // A connection that sends a header and part of the payload, then goes quiet, is dropped
    // after --stall-timeout and its partial file removed.
    let tmp = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(&[
        "--dir".as_ref(),
        tmp.path().as_os_str(),
        "--stall-timeout".as_ref(),
        "1s".as_ref(),
    ]);
    let mut s = TcpStream::connect(receiver.addr).unwrap();
    let local = s.local_addr().unwrap().to_string();
    s.write_all(&header("slow.bin", Some(MIB))).unwrap();
    s.write_all(&[7u8; 1000]).unwrap();
    let line = receiver.proc.wait_verdict(&local, Duration::from_secs(60));
    assert!(line.contains("no data"), "{line:?}");
    assert_eq!(list_dir(tmp.path()), Vec::<String>::new());
}

#[test]
fn once_receiver_exits_1_and_stores_nothing_when_the_stream_is_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.bin");
    let receiver = Receiver::once_to(&out, &[]);
    let mut bytes = header("cut.bin", Some(4 * MIB));
    bytes.extend_from_slice(&Prng::new(68).bytes(MIB as usize));
    let mut s = TcpStream::connect(receiver.addr).unwrap();
    s.write_all(&bytes).unwrap();
    drop(s);
    let received = receiver.wait();
    received.expect_code(1);
    assert!(received.stderr.contains("cut short"), "{received:?}");
    assert_eq!(list_dir(tmp.path()), Vec::<String>::new());
}

#[test]
fn capture_in_a_missing_directory_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("src.bin");
    random_file(&source, 4096, 69);
    let capture = dir.path().join("no such dir").join("capture.bin");
    let (ls, dests) = idle_destinations(1);
    usage_error(
        &[
            "--capture".as_ref(),
            capture.as_os_str(),
            source.as_os_str(),
            dests[0].as_ref(),
        ],
        "capture",
    );
    expect_no_connection(&ls);
}

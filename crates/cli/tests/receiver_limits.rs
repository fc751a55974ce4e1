//! Peers that would hold a receiver up: a port scan before the one stream of `--once`, many idle
//! connections from one address, a slow disk behind the acknowledgement.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::{MIB, Receiver, Running, list_dir, random_file, run, teecast};
use teecast::digest::DigestAlgorithm;
use teecast::proto::session::{Next, ReceiverSession};
use teecast::proto::wire::{AckStatus, NONCE_LEN};

/// Regression: a port scan (connect, close) used up `recv --once`, which then exited 1 and
/// never took the real stream.
#[test]
fn a_port_scan_does_not_use_up_once() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("s.bin");
    random_file(&source, MIB, 111);
    let out = dir.path().join("out.bin");
    let receiver = Receiver::once_to(&out, &[]);
    for _ in 0..3 {
        drop(TcpStream::connect(receiver.addr).unwrap());
    }
    // Someone who speaks, but not teecast.
    let mut http = TcpStream::connect(receiver.addr).unwrap();
    http.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut sink = Vec::new();
    let _ = http.read_to_end(&mut sink);
    run(teecast(["send"]).arg(&source).arg(receiver.dest())).expect_code(0);
    receiver.wait().expect_code(0);
    common::assert_same_file(&source, &out);
}

/// A connection from `from` (another loopback address) to `to`, that sends nothing.
fn idle_from(from: &str, to: SocketAddr) -> Option<TcpStream> {
    use rustix::net::{AddressFamily, SocketType, bind, connect, socket};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None).ok()?;
    bind(&fd, &from.parse::<SocketAddr>().unwrap()).ok()?;
    connect(&fd, &to).ok()?;
    Some(TcpStream::from(fd))
}

/// Two hundred idle connections from the sender's own address and two hundred from another:
/// each new one takes the place of the oldest that has not sent its header, so a sender from
/// either address is served at once (before, it was refused: its address was full), and the
/// idle ones are closed as they are displaced or within the header timeout.
#[test]
fn idle_connections_do_not_lock_out_a_sender_from_their_address() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("s.bin");
    random_file(&source, MIB, 112);
    let inbox = dir.path().join("in");
    std::fs::create_dir(&inbox).unwrap();
    let receiver = Receiver::start(&["--dir".as_ref(), inbox.as_os_str()]);
    let idle: Vec<TcpStream> = ["127.0.0.1:0", "127.0.0.2:0"]
        .iter()
        .flat_map(|from| (0..200).filter_map(|_| idle_from(from, receiver.addr)))
        .collect();
    assert_eq!(
        idle.len(),
        400,
        "this test needs 127.0.0.2 (all of 127/8 is loopback)"
    );
    receiver.proc.wait_stderr(
        "to make room for newer connections",
        Duration::from_secs(30),
    );
    let started = Instant::now();
    run(teecast(["send"]).arg(&source).arg(receiver.dest())).expect_code(0);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the sender waited {:?} behind idle connections",
        started.elapsed()
    );
    assert_eq!(list_dir(&inbox), vec!["s.bin".to_string()]);
    // Those not displaced are closed at the header timeout (10 s).
    receiver
        .proc
        .wait_stderr("no data for 10.0 s", Duration::from_secs(60));
    drop(idle);
}

/// Regression: in `--output` mode connections were served one after another, so one idle
/// connection held the real sender until the header timeout (here a minute, longer than the
/// sender waits for its welcome).
#[test]
fn an_idle_connection_does_not_hold_up_output_mode() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("s.bin");
    random_file(&source, MIB, 113);
    let out = dir.path().join("out.bin");
    let receiver = Receiver::start(&[
        "--output".as_ref(),
        out.as_os_str(),
        "--header-timeout".as_ref(),
        "60s".as_ref(),
    ]);
    let idle = TcpStream::connect(receiver.addr).unwrap();
    let started = Instant::now();
    run(teecast(["send", "--stall-timeout", "20s"])
        .arg(&source)
        .arg(receiver.dest()))
    .expect_code(0);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the sender waited {:?} behind an idle connection",
        started.elapsed()
    );
    common::assert_same_file(&source, &out);
    drop(idle);
}

/// `--once` returns when its one stream is done, without waiting for connections that never
/// sent a header; a second sender whose header came later is refused with a clear answer.
#[test]
fn once_ends_with_its_stream_and_refuses_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("s.bin");
    random_file(&source, 4 * MIB, 114);
    let inbox = dir.path().join("in");
    let receiver = Receiver::once_in(&inbox, &["--header-timeout", "60s"]);
    let idle = TcpStream::connect(receiver.addr).unwrap();
    // The first sender pauses after its header (its source is a pipe that has not ended), so a
    // second one arrives while the one stream is under way.
    let (first, stdin) = Running::spawn_with(
        teecast(["send", "--name", "first.bin", "-"]).arg(receiver.dest()),
        std::process::Stdio::piped(),
        None,
    );
    let mut stdin = stdin.unwrap();
    receiver
        .proc
        .wait_stderr("receiving \"first.bin\"", Duration::from_secs(30));
    let second = run(teecast(["send"]).arg(&source).arg(receiver.dest()));
    second.expect_code(1);
    assert!(
        second.stderr.contains("takes one stream"),
        "{}",
        second.stderr
    );
    stdin.write_all(b"the one stream").unwrap();
    drop(stdin);
    first.wait(Duration::from_secs(60)).expect_code(0);
    let started = Instant::now();
    receiver.wait().expect_code(0);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the receiver waited {:?} for an idle connection",
        started.elapsed()
    );
    assert_eq!(list_dir(&inbox), vec!["first.bin".to_string()]);
    drop(idle);
}

/// Plays an unkeyed receiver over `s` up to the verdict: answers the hello, takes the header
/// and payload (xxh3-128) and the trailer; returns the session and the payload's digest.
fn take_stream(s: &mut TcpStream) -> (ReceiverSession, Vec<u8>) {
    let mut session = ReceiverSession::new(None, [9; NONCE_LEN]);
    let mut hasher = teecast::digest::Hasher::new(DigestAlgorithm::Xxh3_128);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match session.next() {
            Next::Framing(n) => {
                s.read_exact(&mut buf[..n]).unwrap();
                session.framing(&buf[..n]).unwrap();
                if let Some(reply) = session.take_reply() {
                    s.write_all(&reply).unwrap();
                }
            }
            Next::Payload(n) => {
                let want = usize::try_from(n).unwrap().min(buf.len());
                let got = s.read(&mut buf[..want]).unwrap();
                assert!(got > 0, "cut");
                hasher.update(&buf[..got]);
                session.payload(got as u64);
            }
            Next::Verify => return (session, hasher.finish().bytes),
            Next::Resume => panic!("a direct send does not resume"),
        }
    }
}

/// A receiver that takes the whole stream, then waits `delay` (a slow fsync) before it
/// confirms; returns its address and whether the sender was still there to read the answer.
fn slow_acker(delay: Duration) -> (String, std::thread::JoinHandle<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let (mut session, digest) = take_stream(&mut s);
        session.verify(&digest).unwrap();
        std::thread::sleep(delay);
        let received = session.received();
        s.write_all(&session.ack(AckStatus::Ok, received, &digest, ""))
            .is_ok()
    });
    (addr, t)
}

/// Regression: the wait for the acknowledgement was the stall timeout alone, so a receiver
/// that kept a large file but fsynced slowly was reported failed. The wait now allows for the
/// file's size at a slow disk's rate.
#[test]
fn a_slow_fsync_behind_a_large_file_is_still_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("s.bin");
    random_file(&source, 64 * MIB, 113);
    // 64 MiB allows 4 s beyond the 1 s stall timeout; the receiver answers after 2.5 s.
    let (addr, peer) = slow_acker(Duration::from_millis(2500));
    let sent = run(teecast(["send", "--json", "--stall-timeout", "1s"])
        .arg(&source)
        .arg(&addr));
    sent.expect_code(0);
    assert!(peer.join().unwrap());
}

/// Regression: a producer that paused longer than the stall timeout (as `zfs send` does) killed
/// the transfer. In a stream of unknown length the sender now sends keepalives while the source
/// is quiet; the stall timeout measures a receiver that stops reading, not a quiet source.
#[test]
fn a_pausing_producer_does_not_kill_the_stream() {
    // Encrypted too, with a record half full across the pause: it waits for the rest.
    for (strategy, encrypted) in [("readwrite", false), ("read-pipe", false), ("auto", true)] {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("part.bin");
        random_file(&part, MIB + 1000, 114);
        let key = dir.path().join("key");
        run(teecast(["keygen"]).arg(&key)).expect_code(0);
        let keyed: Vec<&str> = match encrypted {
            true => vec!["--key-file", key.to_str().unwrap()],
            false => Vec::new(),
        };
        let out = dir.path().join("out.bin");
        let mut args = vec!["--stall-timeout", "1s"];
        args.extend(&keyed);
        let receiver = Receiver::once_to(&out, &args);
        // Half, a pause three times the stall timeout, the other half.
        let script = format!("cat {p}; sleep 3; cat {p}", p = part.display());
        let mut producer = std::process::Command::new("sh")
            .args(["-c", &script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut cmd = teecast(["send", "--stall-timeout", "1s", "--strategy", strategy, "-"]);
        cmd.args(&keyed).arg(receiver.dest());
        let (sender, _) = common::Running::spawn_with(
            &mut cmd,
            std::process::Stdio::from(producer.stdout.take().unwrap()),
            None,
        );
        let sent = sender.wait(common::TIMEOUT);
        assert!(producer.wait().unwrap().success());
        sent.expect_code(0);
        assert_eq!(
            sent.stderr.contains(", encrypted:"),
            encrypted,
            "{}",
            sent.stderr
        );
        receiver.wait().expect_code(0);
        let mut twice = std::fs::read(&part).unwrap();
        twice.extend(std::fs::read(&part).unwrap());
        assert!(std::fs::read(&out).unwrap() == twice, "{strategy}");
    }
}

/// Regression: an acknowledgement's message reached the sender's terminal raw (an `ESC[2J` and a
/// fake "all destinations confirmed" line printed as they were). Peer text is escaped.
#[test]
fn a_peers_message_is_escaped_before_it_reaches_a_terminal() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let (mut session, _) = take_stream(&mut s);
        let forged = "\u{1b}[2J\rteecast: all destinations confirmed";
        let _ = s.write_all(&session.ack(AckStatus::Rejected, 0, &[], forged));
    });
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("s.bin");
    random_file(&source, 100_000, 115);
    let sent = run(teecast(["send"]).arg(&source).arg(&addr));
    sent.expect_code(1);
    assert!(!sent.stderr.contains('\u{1b}'), "{:?}", sent.stderr);
    assert!(!sent.stderr.contains('\r'), "{:?}", sent.stderr);
    assert!(sent.stderr.contains("\\u{1b}[2J"), "{:?}", sent.stderr);
    peer.join().unwrap();
}

/// `--max-size`: a stream announced larger is refused at its header, one of unknown length is
/// cut when it gets there; nothing of either is kept; one within the limit is stored.
#[test]
fn max_size_refuses_a_larger_stream_at_its_header_or_when_it_gets_there() {
    let tmp = tempfile::tempdir().unwrap();
    let inbox = tmp.path().join("in");
    std::fs::create_dir(&inbox).unwrap();
    let (small, large) = (tmp.path().join("small.bin"), tmp.path().join("large.bin"));
    random_file(&small, MIB, 40);
    random_file(&large, 2 * MIB, 41);
    let receiver = Receiver::start(&[
        "--dir".as_ref(),
        inbox.as_os_str(),
        "--max-size".as_ref(),
        "1M".as_ref(),
    ]);
    let limit = "larger than this receiver takes (max size 1048576 bytes a stream)";

    let sent = run(teecast(["send", "--quiet", "--json"])
        .arg(&large)
        .arg(receiver.dest()));
    sent.expect_code(1);
    let report = sent.json();
    let dest = &report["destinations"][0];
    assert_eq!(dest["ack_status"], "rejected", "{report}");
    let error = dest["error"].as_str().unwrap();
    assert!(
        error.contains(limit) && error.contains("2097152 bytes announced"),
        "{report}"
    );

    let mut cmd = teecast(["send", "--quiet", "--json", "--name", "piped.bin", "-"]);
    cmd.arg(receiver.dest());
    let (sender, _) = Running::spawn_with(
        &mut cmd,
        std::process::Stdio::from(std::fs::File::open(&large).unwrap()),
        None,
    );
    let sent = sender.wait(common::TIMEOUT);
    sent.expect_code(1);
    let report = sent.json();
    let error = report["destinations"][0]["error"].as_str().unwrap();
    assert!(error.contains(limit), "{report}");
    receiver.proc.wait_stderr(limit, common::TIMEOUT);
    assert!(list_dir(&inbox).is_empty(), "{:?}", list_dir(&inbox));

    run(teecast(["send", "--quiet"])
        .arg(&small)
        .arg(receiver.dest()))
    .expect_code(0);
    assert_eq!(list_dir(&inbox), ["small.bin"]);
}

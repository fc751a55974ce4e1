//! One source to many receivers: every copy, the capture and the digest agree; destinations that
//! fail, stall or cannot be reached are reported without holding back the others.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;

use common::{
    Finished, MIB, Receiver, Running, TIMEOUT, accept, assert_same_file, digest_line, free_port,
    listener, random_file, run, teecast,
};

/// `n` receivers `recv --once --output DIR/out-I`, with their output paths.
fn receivers(dir: &Path, n: usize) -> Vec<(Receiver, PathBuf)> {
    (0..n)
        .map(|i| {
            let out = dir.join(format!("out-{i}"));
            (Receiver::once_to(&out, &[]), out)
        })
        .collect()
}

/// Waits for every receiver, expecting exit 0 and a copy identical to `source`.
fn expect_copies(source: &Path, receivers: Vec<(Receiver, PathBuf)>) {
    for (r, out) in receivers {
        r.wait().expect_code(0);
        assert_same_file(source, &out);
    }
}

#[test]
fn file_of_256_mib_to_four_receivers_and_a_capture() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.bin");
    let capture = dir.path().join("capture.bin");
    let sha = random_file(&source, 256 * MIB, 41);
    let rs = receivers(dir.path(), 4);
    let sent = run(teecast(["send", "--digest", "sha256", "--capture"])
        .arg(&capture)
        .arg(&source)
        .args(rs.iter().map(|(r, _)| r.dest())));
    sent.expect_code(0);
    assert_eq!(sent.stdout, format!("{}\n", digest_line(&sha, &source)));
    assert_same_file(&source, &capture);
    expect_copies(&source, rs);
}

/// `cat SOURCE | teecast send --strategy STRATEGY --digest sha256 - A B`: a pipe as the source,
/// so the stream is framed in chunks of unknown total length.
fn stdin_through_cat_to_two_receivers(strategy: &str, len: u64, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.bin");
    let sha = random_file(&source, len, seed);
    let rs = receivers(dir.path(), 2);
    let (pipe_out, pipe_in) = std::io::pipe().unwrap();
    // `cat` holds the only write end once this statement ends, so the sender sees its EOF.
    let (cat, _) = Running::spawn_with(
        Command::new("cat").arg(&source),
        Stdio::null(),
        Some(pipe_in.into()),
    );
    let (sender, _) = Running::spawn_with(
        teecast(["send", "--digest", "sha256", "--strategy", strategy, "-"])
            .args(rs.iter().map(|(r, _)| r.dest())),
        pipe_out.into(),
        None,
    );
    let sent = sender.wait(TIMEOUT);
    sent.expect_code(0);
    cat.wait(TIMEOUT).expect_code(0);
    assert_eq!(sent.stdout, format!("{sha}  -\n"));
    expect_copies(&source, rs);
}

#[test]
fn stdin_through_cat_to_two_receivers_auto() {
    stdin_through_cat_to_two_receivers("auto", 24 * MIB + 5, 42);
}

#[test]
fn stdin_through_cat_to_two_receivers_pipe_strategies() {
    for (i, strategy) in ["readwrite", "vmsplice", "read-pipe", "zerocopy"]
        .into_iter()
        .enumerate()
    {
        stdin_through_cat_to_two_receivers(strategy, 6 * MIB + 3, 80 + i as u64);
    }
}

#[test]
fn empty_stdin_to_two_receivers() {
    stdin_through_cat_to_two_receivers("auto", 0, 51);
}

#[test]
fn capture_with_readwrite_matches_the_copies() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.bin");
    let capture = dir.path().join("capture.bin");
    let sha = random_file(&source, 20 * MIB + 1, 52);
    let rs = receivers(dir.path(), 2);
    let sent = run(
        teecast(["send", "--digest", "sha256", "--strategy", "readwrite"])
            .arg("--capture")
            .arg(&capture)
            .arg(&source)
            .args(rs.iter().map(|(r, _)| r.dest())),
    );
    sent.expect_code(0);
    assert_eq!(sent.stdout, format!("{}\n", digest_line(&sha, &source)));
    assert_same_file(&source, &capture);
    expect_copies(&source, rs);
}

fn sixteen_destinations(strategy: &str, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.bin");
    let sha = random_file(&source, 16 * MIB + 999, seed);
    let rs = receivers(dir.path(), 16);
    let sent = run(
        teecast(["send", "--digest", "sha256", "--strategy", strategy])
            .arg(&source)
            .args(rs.iter().map(|(r, _)| r.dest())),
    );
    sent.expect_code(0);
    assert_eq!(sent.stdout, format!("{}\n", digest_line(&sha, &source)));
    expect_copies(&source, rs);
}

#[test]
fn sixteen_destinations_readwrite() {
    sixteen_destinations("readwrite", 43);
}

#[test]
fn sixteen_destinations_read_pipe() {
    sixteen_destinations("read-pipe", 44);
}

/// The `--json` report's status and error of each destination, in order.
/// Each destination's status, failure kind and error message, from the JSON report.
fn statuses(sent: &Finished) -> Vec<(String, String, String)> {
    let report: serde_json::Value = serde_json::from_str(&sent.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {sent:?}"));
    assert_eq!(report["ok"], false, "{report}");
    report["destinations"]
        .as_array()
        .unwrap_or_else(|| panic!("no destinations in {report}"))
        .iter()
        .map(|d| {
            (
                d["status"].as_str().unwrap().to_string(),
                d["kind"].as_str().unwrap_or("").to_string(),
                d["error"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Sends a 64 MiB file to receiver, `bad`, receiver; the two receivers must get it whole.
fn one_bad_of_three(
    strategy: &str,
    seed: u64,
    bad: &str,
    extra: &[&str],
) -> Vec<(String, String, String)> {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.bin");
    random_file(&source, 64 * MIB, seed);
    let rs = receivers(dir.path(), 2);
    let sent = run(teecast(["send", "--json", "--strategy", strategy])
        .args(extra)
        .arg(&source)
        .arg(rs[0].0.dest())
        .arg(bad)
        .arg(rs[1].0.dest()));
    sent.expect_code(1);
    expect_copies(&source, rs);
    let st = statuses(&sent);
    assert_eq!(st.len(), 3, "{sent:?}");
    assert_eq!(st[0].0, "ok", "{sent:?}");
    assert_ne!(st[1].0, "ok", "{sent:?}");
    assert_eq!(st[2].0, "ok", "{sent:?}");
    st
}

/// Takes the sender's hello and answers with an unkeyed welcome, as a receiver does.
fn welcome(s: &TcpStream) {
    use teecast::proto::wire::{HELLO_BODY, NONCE_LEN, PREFIX_LEN, Welcome};
    let mut hello = [0u8; PREFIX_LEN + HELLO_BODY];
    (&*s).read_exact(&mut hello).unwrap();
    let answer = Welcome {
        capabilities: 0,
        nonce: [1; NONCE_LEN],
        proof: Vec::new(),
    };
    std::io::Write::write_all(&mut &*s, &answer.encode()).unwrap();
}

/// A peer that opens the session, reads 4 MiB, then closes the connection.
fn quitter() -> (String, JoinHandle<()>) {
    let (l, addr) = listener();
    let t = std::thread::spawn(move || {
        let s = accept(&l);
        welcome(&s);
        let mut buf = vec![0u8; 4 * MIB as usize];
        (&s).read_exact(&mut buf).unwrap();
    });
    (addr, t)
}

/// A peer that opens the session and then never reads; the connection stays open until the
/// handle is joined.
fn staller() -> (String, JoinHandle<TcpStream>) {
    let (l, addr) = listener();
    (
        addr,
        std::thread::spawn(move || {
            let s = accept(&l);
            welcome(&s);
            s
        }),
    )
}

/// A peer that accepts and never answers the hello: the sender gives up on it within the
/// stall timeout and names why; the others are served.
#[test]
fn a_destination_that_never_answers_the_hello_fails_alone() {
    let (l, addr) = listener();
    let peer = std::thread::spawn(move || accept(&l));
    let st = one_bad_of_three("readwrite", 71, &addr, &["--stall-timeout", "2s"]);
    assert_eq!(st[1].1, "no-welcome", "error: {:?}", st[1].2);
    drop(peer.join().unwrap());
}

fn destination_closing_early_fails_alone(strategy: &str, seed: u64) {
    let (addr, peer) = quitter();
    one_bad_of_three(strategy, seed, &addr, &[]);
    peer.join().unwrap();
}

macro_rules! per_strategy {
    ($check:ident: $($test:ident: $strategy:literal, $seed:literal;)*) => {$(
        #[test]
        fn $test() {
            $check($strategy, $seed);
        }
    )*};
}

per_strategy! { destination_closing_early_fails_alone:
    destination_closing_early_fails_alone_readwrite: "readwrite", 45;
    destination_closing_early_fails_alone_vmsplice: "vmsplice", 53;
    destination_closing_early_fails_alone_mmap_pipe: "mmap-pipe", 54;
    destination_closing_early_fails_alone_read_pipe: "read-pipe", 46;
    destination_closing_early_fails_alone_direct: "direct", 55;
}

fn stalled_destination_is_dropped(strategy: &str, seed: u64) {
    let (addr, peer) = staller();
    let st = one_bad_of_three(strategy, seed, &addr, &["--stall-timeout", "3s"]);
    assert_eq!(st[1].0, "failed");
    assert_eq!(st[1].1, "stalled", "error: {:?}", st[1].2);
    drop(peer.join().unwrap());
}

per_strategy! { stalled_destination_is_dropped:
    stalled_destination_is_dropped_readwrite: "readwrite", 47;
    stalled_destination_is_dropped_read_pipe: "read-pipe", 48;
    stalled_destination_is_dropped_mmap_pipe: "mmap-pipe", 56;
}

#[test]
fn unreachable_destination_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.bin");
    random_file(&source, MIB, 49);
    let dead = format!("127.0.0.1:{}", free_port());
    let sent = run(teecast(["send"]).arg(&source).arg(&dead));
    sent.expect_code(1);
    assert!(
        sent.stderr.contains(&dead) && sent.stderr.contains("cannot connect"),
        "{sent:?}"
    );
}

#[test]
fn unreachable_destination_does_not_stop_a_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.bin");
    random_file(&source, 8 * MIB, 50);
    let dead = format!("127.0.0.1:{}", free_port());
    let rs = receivers(dir.path(), 1);
    let sent = run(teecast(["send", "--json"])
        .arg(&source)
        .arg(&dead)
        .arg(rs[0].0.dest()));
    sent.expect_code(1);
    let st = statuses(&sent);
    assert_eq!(st[0].0, "failed", "{sent:?}");
    assert!(st[0].1 == "connect" && st[0].2.contains(&dead), "{sent:?}");
    assert_eq!(st[1].0, "ok", "{sent:?}");
    expect_copies(&source, rs);
}

#[test]
fn json_report_of_a_good_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.bin");
    let len = 5 * MIB + 77;
    let sha = random_file(&source, len, 57);
    let rs = receivers(dir.path(), 2);
    let sent = run(teecast([
        "send",
        "--json",
        "--digest",
        "sha256",
        "--name",
        "given.bin",
    ])
    .arg(&source)
    .args(rs.iter().map(|(r, _)| r.dest())));
    sent.expect_code(0);
    let report: serde_json::Value = serde_json::from_str(&sent.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["bytes"], len, "{report}");
    assert_eq!(report["name"], "given.bin", "{report}");
    assert_eq!(report["digest"]["algorithm"], "sha256", "{report}");
    assert_eq!(report["digest"]["hex"], sha.as_str(), "{report}");
    let dests = report["destinations"].as_array().unwrap();
    assert_eq!(dests.len(), 2, "{report}");
    for (d, (r, _)) in dests.iter().zip(&rs) {
        assert_eq!(d["address"], r.dest().as_str(), "{report}");
        assert_eq!(d["status"], "ok", "{report}");
        assert_eq!(d["bytes"], len, "{report}");
        assert_eq!(d["receiver_digest"], sha.as_str(), "{report}");
    }
    expect_copies(&source, rs);
}

/// What `teecast probe DIR --json` says auto picks for `n` destinations on DIR's filesystem.
fn probed_auto(dir: &Path, n: usize) -> String {
    let probed = run(teecast(["probe", "--json"]).arg(dir));
    probed.expect_code(0);
    let facts: serde_json::Value = serde_json::from_str(&probed.stdout).unwrap();
    let steps = facts["auto"].as_array().unwrap();
    let step = steps
        .iter()
        .rev()
        .find(|s| s["from_destinations"].as_u64().unwrap() <= n as u64)
        .unwrap();
    step["strategy"].as_str().unwrap().to_string()
}

/// auto follows the rule `teecast probe` reports, at every step of it, on the temporary
/// directory's filesystem and on tmpfs (where it can pick `direct`), and every copy arrives.
#[test]
fn auto_takes_the_path_the_probe_reports_for_each_count() {
    let tmp = tempfile::tempdir().unwrap();
    let shm = tempfile::tempdir_in("/dev/shm").expect("this test needs a tmpfs at /dev/shm");
    for dir in [tmp.path(), shm.path()] {
        let source = dir.join("source.bin");
        random_file(&source, 3 * MIB + 5, 58);
        for n in [1, 5, 6] {
            let rs = receivers(tmp.path(), n);
            let sent = run(teecast(["send", "--json"])
                .arg(&source)
                .args(rs.iter().map(|(r, _)| r.dest())));
            sent.expect_code(0);
            let report: serde_json::Value = serde_json::from_str(&sent.stdout).unwrap();
            assert_eq!(
                report["strategy"].as_str().unwrap(),
                probed_auto(dir, n),
                "{n} destinations from {}",
                dir.display()
            );
            expect_copies(&source, rs);
        }
    }
}

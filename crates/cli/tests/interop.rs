//! teecast with the tools it has to get along with: a plain TCP listener, `nc`, `socat` and
//! `sha256sum` and `xxh128sum`.

mod common;

use std::fs::File;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    MIB, Receiver, Running, TIMEOUT, assert_same_file, collect_one, digest_line, free_port, have,
    listener, random_file, run, sha256_bytes, teecast,
};

#[test]
fn raw_send_to_plain_listener_delivers_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.bin");
    let sha = random_file(&source, 16 * MIB + 1, 31);
    let (l, addr) = listener();
    let got = collect_one(l);
    let sent = run(teecast(["send", "--raw", "--digest", "sha256"])
        .arg(&source)
        .arg(&addr));
    sent.expect_code(0);
    let bytes = got.join().unwrap();
    assert_eq!(bytes.len() as u64, 16 * MIB + 1);
    assert_eq!(sha256_bytes(&bytes), sha);
    assert_eq!(sent.stdout, format!("{}\n", digest_line(&sha, &source)));
}

/// Fails (never passes quietly) when a peer the test runs is missing; `.ci/peers` installs them.
fn need(tool: &str, package: &str) {
    assert!(
        have(tool),
        "{tool} is not installed: install the Debian package {package} (.ci/peers does)"
    );
}

#[test]
fn raw_send_to_nc() {
    need("nc", "netcat-openbsd");
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.bin");
    let out = dir.path().join("out.bin");
    random_file(&source, 16 * MIB, 32);
    // nc binds a port chosen here; another process may take it first, so try a few.
    for attempt in 1..=5 {
        let port = free_port().to_string();
        let (nc, _) = Running::spawn_with(
            Command::new("nc").args(["-v", "-d", "-l", "127.0.0.1", &port]),
            Stdio::null(),
            Some(File::create(&out).unwrap().into()),
        );
        if nc
            .try_wait_stderr("Listening on", Duration::from_secs(30))
            .is_none()
        {
            let failed = nc.wait(TIMEOUT);
            assert!(attempt < 5, "nc could not listen: {failed:?}");
            continue;
        }
        let sent = run(teecast(["send", "--raw"])
            .arg(&source)
            .arg(format!("127.0.0.1:{port}")));
        sent.expect_code(0);
        nc.wait(TIMEOUT).expect_code(0);
        assert_same_file(&source, &out);
        return;
    }
}

#[test]
fn socat_into_raw_receiver() {
    need("socat", "socat");
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.bin");
    let out = dir.path().join("out.bin");
    let sha = random_file(&source, 16 * MIB + 7, 33);
    let receiver = Receiver::once_to(&out, &["--raw", "--digest", "sha256"]);
    let socat = run(Command::new("socat")
        .arg("-u")
        .arg(&source)
        .arg(format!("TCP:{}", receiver.dest())));
    socat.expect_code(0);
    let received = receiver.wait();
    received.expect_code(0);
    assert_same_file(&source, &out);
    assert_eq!(received.stdout, format!("{}\n", digest_line(&sha, &out)));
}

/// Sends with `digest_args`, then checks the printed line with `tool -c`, which must accept it,
/// and refuse it once the source has changed.
fn digest_line_passes_check(tool: &str, digest_args: &[&str], seed: u64) {
    need(
        tool,
        match tool {
            "xxh128sum" => "xxhash",
            _ => "coreutils",
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("data file.bin");
    let out = dir.path().join("out.bin");
    random_file(&source, 8 * MIB + 3, seed);
    let receiver = Receiver::once_to(&out, &[]);
    let sent = run(teecast(["send"])
        .args(digest_args)
        .arg("data file.bin")
        .arg(receiver.dest())
        .current_dir(dir.path()));
    sent.expect_code(0);
    receiver.wait().expect_code(0);
    std::fs::write(dir.path().join("SUMS"), &sent.stdout).unwrap();
    let check = run(Command::new(tool)
        .args(["-c", "SUMS"])
        .current_dir(dir.path()));
    check.expect_code(0);
    assert_eq!(check.stdout, "data file.bin: OK\n");
    // The check can fail: the same line against different bytes is refused.
    std::fs::write(&source, b"other bytes").unwrap();
    let check = run(Command::new(tool)
        .args(["-c", "SUMS"])
        .current_dir(dir.path()));
    assert_ne!(check.code(), 0, "{check:?}");
}

#[test]
fn sender_digest_line_passes_sha256sum_check() {
    digest_line_passes_check("sha256sum", &["--digest", "sha256"], 34);
}

#[test]
fn default_digest_line_passes_xxh128sum_check() {
    digest_line_passes_check("xxh128sum", &[], 35);
}

/// A framed sender sent to a raw receiver: the receiver refuses it at once (it used to store
/// the framing as data), and the sender fails within a second or two, not after its stall
/// timeout.
#[test]
fn framed_into_raw_fails_fast_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.bin");
    random_file(&source, MIB, 121);
    let out = dir.path().join("out.bin");
    let receiver = Receiver::once_to(&out, &["--raw"]);
    let started = std::time::Instant::now();
    let sent = run(teecast(["send", "--json"])
        .arg(&source)
        .arg(receiver.dest()));
    sent.expect_code(1);
    let report: serde_json::Value = serde_json::from_str(&sent.stdout).unwrap();
    assert_eq!(
        report["destinations"][0]["kind"], "closed-at-hello",
        "{report}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let received = receiver.wait();
    received.expect_code(1);
    assert!(received.stderr.contains("raw mode"), "{received:?}");
    assert!(!out.exists());
}

//! Authentication with a pre-shared key, through the real binary: both ends prove the key
//! before any payload counts, every stream and acknowledgement is sealed, and one end with a key
//! never talks to one without, or with another key. Nothing unauthenticated is ever kept.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{MIB, Receiver, TIMEOUT, list_dir, random_file, run, teecast};

/// A fresh key file made by `teecast keygen`.
fn keygen(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    run(teecast(["keygen"]).arg(&path)).expect_code(0);
    path
}

fn key_args(key: &Path) -> Vec<std::ffi::OsString> {
    vec!["--key-file".into(), key.as_os_str().to_owned()]
}

#[test]
fn keygen_writes_a_private_key_and_never_overwrites_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "k");
    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let before = std::fs::read(&key).unwrap();
    assert_eq!(before.len(), 65, "64 hex digits and a newline");
    let again = run(teecast(["keygen"]).arg(&key));
    again.expect_code(2);
    assert!(again.stderr.contains("never overwritten"), "{again:?}");
    assert_eq!(std::fs::read(&key).unwrap(), before);
    // Two keys are never the same.
    assert_ne!(std::fs::read(keygen(dir.path(), "k2")).unwrap(), before);
}

#[test]
fn the_same_key_on_both_ends_confirms_with_a_cryptographic_digest() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "k");
    let source = dir.path().join("source.bin");
    let sha = random_file(&source, 5 * MIB + 3, 91);
    let inbox = dir.path().join("in");
    let receiver = Receiver::once_in(&inbox, &["--key-file", key.to_str().unwrap()]);
    let sent = run(teecast(["send", "--json"])
        .args(key_args(&key))
        .arg(&source)
        .arg(receiver.dest()));
    sent.expect_code(0);
    let report = sent.json();
    assert_eq!(report["digest"]["algorithm"], "blake3", "{report}");
    let received = receiver.wait();
    received.expect_code(0);
    let stored = inbox.join("source.bin");
    common::assert_same_file(&source, &stored);
    assert_eq!(common::sha256_file(&stored), sha);
    assert!(received.stderr.contains("every sender must prove the key"));
}

#[test]
fn the_key_file_can_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "k");
    let source = dir.path().join("s.bin");
    random_file(&source, 100_000, 92);
    let out = dir.path().join("out.bin");
    let receiver = Receiver::once_to(&out, &["--key-file", key.to_str().unwrap()]);
    let sent = run(teecast(["send"])
        .env("TEECAST_KEY_FILE", &key)
        .arg(&source)
        .arg(receiver.dest()));
    sent.expect_code(0);
    receiver.wait().expect_code(0);
    common::assert_same_file(&source, &out);
}

/// Sends `source` with `send_key` to a receiver with `recv_key`, expecting a failure of `kind`;
/// the receiver keeps nothing and still serves a sender that holds its key.
fn refused(send_key: Option<&Path>, recv_key: Option<&Path>, kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("s.bin");
    random_file(&source, 2 * MIB, 93);
    let inbox = dir.path().join("in");
    std::fs::create_dir(&inbox).unwrap();
    let mut args: Vec<std::ffi::OsString> = vec!["--dir".into(), inbox.clone().into()];
    if let Some(k) = recv_key {
        args.extend(key_args(k));
    }
    let receiver = Receiver::start(&args);
    let mut cmd = teecast(["send", "--json"]);
    if let Some(k) = send_key {
        cmd.args(key_args(k));
    }
    let sent = run(cmd.arg(&source).arg(receiver.dest()));
    sent.expect_code(1);
    let report = sent.json();
    assert_eq!(report["destinations"][0]["kind"], kind, "{report}");
    assert!(
        report["destinations"][0]["error"]
            .as_str()
            .unwrap()
            .contains("key"),
        "{report}"
    );
    assert_eq!(list_dir(&inbox), Vec::<String>::new());
    // Still serving: the right key gets through.
    let mut cmd = teecast(["send"]);
    if let Some(k) = recv_key {
        cmd.args(key_args(k));
    }
    run(cmd.arg(&source).arg(receiver.dest())).expect_code(0);
    receiver
        .proc
        .wait_stdout(&format!("  {}", inbox.join("s.bin").display()), TIMEOUT);
    assert_eq!(list_dir(&inbox), vec!["s.bin".to_string()]);
}

#[test]
fn a_keyed_sender_is_refused_by_a_receiver_without_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "k");
    refused(Some(&key), None, "key");
}

#[test]
fn a_sender_without_the_key_is_refused_by_a_keyed_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "k");
    refused(None, Some(&key), "key");
}

#[test]
fn another_key_is_refused_before_any_payload() {
    let dir = tempfile::tempdir().unwrap();
    let ours = keygen(dir.path(), "ours");
    let theirs = keygen(dir.path(), "theirs");
    refused(Some(&theirs), Some(&ours), "unauthenticated");
}

#[test]
fn a_key_file_others_can_read_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "k");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let sent = run(teecast(["send"])
        .args(key_args(&key))
        .arg(&key)
        .arg("127.0.0.1:9"));
    sent.expect_code(2);
    assert!(sent.stderr.contains("chmod 600"), "{sent:?}");
    let received = run(teecast(["recv", "--listen", "127.0.0.1:0", "--output"])
        .arg(dir.path().join("o"))
        .args(key_args(&key)));
    received.expect_code(2);
    assert!(received.stderr.contains("chmod 600"), "{received:?}");
}

#[test]
fn a_weak_digest_with_a_key_in_the_clear_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "k");
    // In the clear the digest is what authenticates the payload: it must resist collisions.
    let sent = run(teecast(["send", "--no-encrypt", "--digest", "xxh3-128"])
        .args(key_args(&key))
        .arg(&key)
        .arg("127.0.0.1:9"));
    sent.expect_code(2);
    assert!(sent.stderr.contains("--digest blake3"), "{sent:?}");
    // Encrypted, the AEAD authenticates every byte, and any digest will do: the send gets as
    // far as connecting.
    let encrypted = run(teecast(["send", "--digest", "xxh3-128"])
        .args(key_args(&key))
        .arg(&key)
        .arg("127.0.0.1:9"));
    encrypted.expect_code(1);
    assert!(encrypted.stderr.contains("cannot connect"), "{encrypted:?}");
}

#[test]
fn a_receiver_beyond_loopback_needs_a_key_or_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let refused = run(teecast(["recv", "--listen", "0.0.0.0:0", "--dir"]).arg(dir.path()));
    refused.expect_code(2);
    assert!(refused.stderr.contains("--key-file"), "{refused:?}");
    assert!(refused.stderr.contains("--insecure"), "{refused:?}");
    // With --insecure it starts, and says what that means.
    let insecure = common::Running::spawn(
        teecast(["recv", "--listen", "0.0.0.0:0", "--insecure", "--dir"]).arg(dir.path()),
    );
    insecure.wait_stderr("teecast: listening on ", TIMEOUT);
    assert!(insecure.stderr_so_far().contains("anyone who can reach"));
    drop(insecure);
}

/// A man in the middle that flips one payload byte on its way: the keyed receiver refuses the
/// stream and keeps nothing, and the sender is told.
#[test]
fn a_byte_changed_in_flight_is_refused_and_nothing_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "k");
    let source = dir.path().join("s.bin");
    random_file(&source, 3 * MIB, 94);
    let out = dir.path().join("out.bin");
    let receiver = Receiver::once_to(&out, &["--key-file", key.to_str().unwrap()]);
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_addr = proxy.local_addr().unwrap().to_string();
    let upstream = receiver.addr;
    let relay = std::thread::spawn(move || {
        let (client, _) = proxy.accept().unwrap();
        let server = TcpStream::connect(upstream).unwrap();
        let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        let back = std::thread::spawn(move || {
            let _ = std::io::copy(&mut s2, &mut c2);
            let _ = c2.shutdown(std::net::Shutdown::Write);
        });
        let (mut from, mut to) = (client, server);
        let mut buf = vec![0u8; 64 * 1024];
        let mut seen = 0usize;
        // Well inside the payload: past the hello, the proof and the header.
        let target = MIB as usize;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if (seen..seen + n).contains(&target) {
                buf[target - seen] ^= 0x01;
            }
            seen += n;
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
        let _ = back.join();
    });
    let sent = run(teecast(["send", "--json"])
        .args(key_args(&key))
        .arg(&source)
        .arg(&proxy_addr));
    sent.expect_code(1);
    let report = sent.json();
    assert_eq!(report["destinations"][0]["kind"], "refused", "{report}");
    assert_eq!(
        report["destinations"][0]["ack_status"], "digest-mismatch",
        "{report}"
    );
    receiver.wait().expect_code(1);
    relay.join().unwrap();
    assert!(!out.exists());
    assert_eq!(list_dir(dir.path()), vec!["k", "s.bin"]);
}

//! One file to one receiver through the real binary, for every strategy and every digest.

mod common;

use std::path::Path;

use common::{MIB, assert_same_file, digest_line, random_file, send_once};

/// `send --strategy STRATEGY --digest sha256 SOURCE` to a `recv --once --output OUT` receiver;
/// both must exit 0.
fn send_sha256(source: &Path, out: &Path, strategy: &str) -> (common::Finished, common::Finished) {
    let (sent, received) = send_once(
        source,
        out,
        &["--strategy", strategy, "--digest", "sha256"],
        &[],
    );
    sent.expect_code(0);
    received.expect_code(0);
    (sent, received)
}

/// Sends a 64 MiB random file with `--strategy STRATEGY --digest sha256`; checks the stored copy,
/// both exit codes, and the sender's `<hex>  <path>` line against a SHA-256 computed here.
fn sha256_transfer(strategy: &str, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.bin");
    let out = dir.path().join("out.bin");
    let sha = random_file(&source, 64 * MIB, seed);
    let (sent, received) = send_sha256(&source, &out, strategy);
    assert_same_file(&source, &out);
    assert_eq!(sent.stdout, format!("{}\n", digest_line(&sha, &source)));
    assert!(
        received.stdout.contains(&sha),
        "receiver printed {:?}, not the SHA-256 {sha}",
        received.stdout
    );
}

macro_rules! strategy_tests {
    ($($test:ident: $strategy:literal, $seed:literal;)*) => {$(
        #[test]
        fn $test() {
            sha256_transfer($strategy, $seed);
        }
    )*};
}

strategy_tests! {
    strategy_readwrite_64_mib_sha256: "readwrite", 1;
    strategy_mmap_write_64_mib_sha256: "mmap-write", 2;
    strategy_vmsplice_64_mib_sha256: "vmsplice", 3;
    strategy_mmap_pipe_64_mib_sha256: "mmap-pipe", 4;
    strategy_read_pipe_64_mib_sha256: "read-pipe", 5;
    strategy_zerocopy_64_mib_sha256: "zerocopy", 6;
    strategy_direct_64_mib_sha256: "direct", 7;
    strategy_auto_64_mib_sha256: "auto", 8;
}

/// The digest of `path` as teecast names it, computed here.
fn expected_digest(algorithm: &str, path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).unwrap();
    match algorithm {
        "blake3" => Some(blake3::hash(&bytes).to_hex().to_string()),
        "xxh3-128" => Some(format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes))),
        "sha256" => Some(common::sha256_bytes(&bytes)),
        "none" => None,
        other => panic!("no reference for {other}"),
    }
}

#[test]
fn every_digest_delivers_identical_files() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.bin");
    random_file(&source, 16 * MIB + 12345, 20);
    for algorithm in ["blake3", "xxh3-128", "none"] {
        let out = dir.path().join(format!("out-{algorithm}"));
        let (sent, received) = send_once(&source, &out, &["--digest", algorithm], &[]);
        sent.expect_code(0);
        received.expect_code(0);
        assert_same_file(&source, &out);
        match expected_digest(algorithm, &source) {
            Some(hex) => {
                assert_eq!(sent.stdout, format!("{}\n", digest_line(&hex, &source)));
                assert_eq!(received.stdout, format!("{}\n", digest_line(&hex, &out)));
            }
            None => {
                assert_eq!(sent.stdout, "", "--digest none prints no digest");
                assert_eq!(received.stdout, "", "--digest none prints no digest");
            }
        }
    }
}

#[test]
fn empty_file_arrives_empty() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("empty");
    std::fs::write(&source, b"").unwrap();
    for strategy in ["auto", "readwrite", "read-pipe", "vmsplice", "mmap-pipe"] {
        let out = dir.path().join(format!("out-{strategy}"));
        let (sent, _) = send_sha256(&source, &out, strategy);
        assert_eq!(std::fs::metadata(&out).unwrap().len(), 0, "{strategy}");
        assert_eq!(
            sent.stdout,
            format!("{}\n", digest_line(&common::sha256_bytes(b""), &source)),
            "{strategy}"
        );
    }
}

#[test]
fn dir_receiver_stores_concurrent_streams_under_their_names() {
    let src = tempfile::tempdir().unwrap();
    let inbox = tempfile::tempdir().unwrap();
    let receiver = common::Receiver::start(&["--dir".as_ref(), inbox.path().as_os_str()]);
    let sources: Vec<_> = (0..4u64)
        .map(|i| {
            let path = src.path().join(format!("part-{i}.bin"));
            let sha = random_file(&path, 4 * MIB + i, 90 + i);
            (path, sha)
        })
        .collect();
    let senders: Vec<_> = sources
        .iter()
        .map(|(path, _)| {
            common::Running::spawn(
                common::teecast(["send", "--digest", "sha256"])
                    .arg(path)
                    .arg(receiver.dest()),
            )
        })
        .collect();
    for (sender, (path, sha)) in senders.into_iter().zip(&sources) {
        let sent = sender.wait(common::TIMEOUT);
        sent.expect_code(0);
        let stored = inbox.path().join(path.file_name().unwrap());
        receiver
            .proc
            .wait_stdout(&digest_line(sha, &stored), common::TIMEOUT);
        assert_same_file(path, &stored);
    }
}

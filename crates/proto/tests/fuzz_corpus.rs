//! Replays the committed fuzz corpus (`fuzz-corpus/<target>/`) through the same checks the
//! cargo-fuzz targets in `fuzz/` run, so that `cargo test` on stable keeps every input the
//! fuzzer once found interesting passing. See docs/FUZZING.md.

mod checks;

use std::fs;
use std::path::PathBuf;

/// Runs `check` on every file of `fuzz-corpus/<target>/`; fails if the directory is missing,
/// unreadable or empty, so that the test cannot pass without replaying anything.
fn replay(target: &str, check: fn(&[u8]) -> bool) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz-corpus")
        .join(target);
    let entries = fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("corpus directory {} is missing: {err}", dir.display()));
    let mut paths = entries
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|err| panic!("cannot list {}: {err}", dir.display()));
    paths.retain(|path| path.is_file());
    paths.sort();
    assert!(
        !paths.is_empty(),
        "corpus directory {} holds no inputs",
        dir.display()
    );
    let mut decoded = 0usize;
    for path in &paths {
        let data =
            fs::read(path).unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
        // A failed check names the input that failed.
        let outcome = std::panic::catch_unwind(|| check(&data));
        match outcome {
            Ok(true) => decoded += 1,
            Ok(false) => {}
            Err(panic) => {
                eprintln!("corpus input {} fails the {target} checks", path.display());
                std::panic::resume_unwind(panic);
            }
        }
    }
    println!(
        "{target}: replayed {} corpus inputs ({decoded} decoded)",
        paths.len()
    );
}

#[test]
fn prefix_corpus() {
    replay("prefix", checks::prefix);
}

#[test]
fn header_corpus() {
    replay("header", checks::header);
}

#[test]
fn trailer_corpus() {
    replay("trailer", checks::trailer);
}

#[test]
fn ack_corpus() {
    replay("ack", checks::ack);
}

#[test]
fn report_corpus() {
    replay("report", checks::report);
}

#[test]
fn chunk_header_corpus() {
    replay("chunk_header", checks::chunk_header);
}

#[test]
fn hello_corpus() {
    replay("hello", checks::hello);
}

#[test]
fn welcome_corpus() {
    replay("welcome", checks::welcome);
}

#[test]
fn seal_corpus() {
    replay("seal", checks::seal);
}

#[test]
fn resume_corpus() {
    replay("resume", checks::resume);
}

#[test]
fn receiver_session_corpus() {
    replay("receiver_session", checks::receiver_session);
}

#[test]
fn crypt_prefix_corpus() {
    replay("crypt_prefix", checks::crypt_prefix);
}

#[test]
fn record_header_corpus() {
    replay("record_header", checks::record_header);
}

#[test]
fn records_corpus() {
    replay("records", checks::records);
}

#[test]
fn record_reader_corpus() {
    replay("record_reader", checks::record_reader);
}

#[test]
fn handshake_corpus() {
    replay("handshake", checks::handshake);
}

/// Every corpus directory belongs to a target replayed above (a new target needs a test here).
#[test]
fn no_corpus_without_a_replay() {
    const TARGETS: [&str; 16] = [
        "hello",
        "welcome",
        "seal",
        "prefix",
        "header",
        "trailer",
        "ack",
        "report",
        "chunk_header",
        "resume",
        "receiver_session",
        "crypt_prefix",
        "record_header",
        "records",
        "record_reader",
        "handshake",
    ];
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus");
    let entries =
        fs::read_dir(&root).unwrap_or_else(|err| panic!("{} is missing: {err}", root.display()));
    for entry in entries {
        let name = entry.expect("a directory entry").file_name();
        let name = name.to_string_lossy();
        assert!(
            TARGETS.contains(&name.as_ref()),
            "fuzz-corpus/{name} is replayed by no test"
        );
    }
}

//! What a new user runs into, tried as one would: each test here is a defect found that way,
//! reproduced with the real binary, and what teecast does now.

mod common;

use common::{MIB, Receiver, random_file, run, teecast};

/// Regression: `--stall-timeout 10000000000000000000` overflowed a deadline and reported "the
/// consumer's thread panicked". A timeout too long for the clock is none: the stream is stored.
#[test]
fn a_timeout_too_long_for_the_clock_is_no_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("data.bin");
    random_file(&source, 3 * MIB, 1);
    let huge = "10000000000000000000";
    let receiver = Receiver::once_in(
        &dir.path().join("inbox"),
        &["--stall-timeout", huge, "--header-timeout", huge],
    );
    let sent = run(
        teecast(["send", "--stall-timeout", huge, "--connect-timeout", huge])
            .arg(&source)
            .arg(receiver.dest()),
    );
    sent.expect_code(0);
    assert!(!sent.stderr.contains("panicked"), "{}", sent.stderr);
    receiver.wait().expect_code(0);
    assert_eq!(
        std::fs::read(dir.path().join("inbox/data.bin")).unwrap(),
        std::fs::read(&source).unwrap()
    );
}

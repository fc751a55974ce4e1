//! `--strategy direct` (splice from an `O_DIRECT` descriptor): its unaligned tail and its error
//! on a filesystem that refuses `O_DIRECT`, through the real binary and a real receiver.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{Receiver, Running, list_dir, random_file, sha256_file, teecast};

/// How long the sender or a receiver may take before the test fails.
const WAIT: Duration = Duration::from_secs(90);

fn send_direct(source: &Path, receiver: &Receiver) -> (Option<i32>, String) {
    let mut cmd = teecast(["send", "--strategy", "direct", "--digest", "sha256"]);
    cmd.arg(source).arg(receiver.dest());
    let (sender, _) = Running::spawn_with(&mut cmd, Stdio::null(), Some(Stdio::null()));
    let done = sender.wait(WAIT);
    assert!(
        done.stderr.lines().any(|l| l.contains("teecast: ")),
        "sender printed no \"teecast: \" line: {done:?}"
    );
    (done.status.code(), done.stderr)
}

/// Sizes that are not multiples of the block: the tail goes through a buffered read. (It used to
/// be read with `pread` on the `O_DIRECT` descriptor, which fails with EINVAL on an unaligned
/// length, so every such file failed.)
#[test]
fn regression_direct_tail_pread_einval_on_unaligned_sizes() {
    let work = tempfile::tempdir().unwrap();
    for (i, size) in [1u64, 100, 3 * 4096 + 17, (1 << 20) + 1, 5 * 4096]
        .into_iter()
        .enumerate()
    {
        let source = work.path().join(format!("f{i}.bin"));
        random_file(&source, size, 40 + i as u64);
        let dir = work.path().join(format!("r{i}"));
        let receiver = Receiver::once_in(&dir, &[]);
        let (code, stderr) = send_direct(&source, &receiver);
        assert_eq!(code, Some(0), "size {size}: {stderr}");
        assert_eq!(receiver.proc.wait(WAIT).status.code(), Some(0));
        let copy = dir.join(format!("f{i}.bin"));
        assert_eq!(std::fs::metadata(&copy).unwrap().len(), size);
        assert_eq!(sha256_file(&copy), sha256_file(&source), "size {size}");
    }
}

/// sysfs refuses `open(O_DIRECT)` (EINVAL): the send stops with usage exit 2, says which strategy
/// to use instead, and the receiver keeps nothing.
#[test]
fn direct_on_a_filesystem_refusing_o_direct_says_what_to_use() {
    let source = Path::new("/sys/devices/system/cpu/online");
    assert!(source.is_file(), "this test needs sysfs mounted at /sys");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("r");
    let receiver = Receiver::once_in(&dir, &[]);
    let (code, stderr) = send_direct(source, &receiver);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("refuses O_DIRECT"), "{stderr}");
    assert!(stderr.contains("--strategy read-pipe"), "{stderr}");
    assert_eq!(receiver.proc.wait(WAIT).status.code(), Some(1));
    assert_eq!(list_dir(&dir), Vec::<String>::new());
}

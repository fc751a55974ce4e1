//! `--strategy direct` (splice from an `O_DIRECT` descriptor): its unaligned tail and its error
//! on a filesystem that refuses `O_DIRECT`, through the real binary and a real receiver.

mod torture_support;

use std::process::Stdio;

use torture_support::{Lines, Proc, Receiver, entries, random_file, sha256_file, teecast};

fn send_direct(source: &std::path::Path, receiver: &Receiver) -> (Option<i32>, String) {
    let mut cmd = teecast();
    cmd.args(["send", "--strategy", "direct", "--digest", "sha256"])
        .arg(source)
        .arg(&receiver.address)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut sender = Proc::spawn(cmd, "sender");
    let stderr = Lines::new(sender.child.stderr.take().unwrap());
    let status = sender.wait();
    stderr.wait_for("teecast: ", "sender");
    (status.code(), stderr.text())
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
        let mut receiver = Receiver::start(work.path().join(format!("r{i}")));
        let (code, stderr) = send_direct(&source, &receiver);
        assert_eq!(code, Some(0), "size {size}: {stderr}");
        assert_eq!(receiver.proc.wait().code(), Some(0));
        let copy = receiver.dir.join(format!("f{i}.bin"));
        assert_eq!(std::fs::metadata(&copy).unwrap().len(), size);
        assert_eq!(sha256_file(&copy), sha256_file(&source), "size {size}");
    }
}

/// sysfs refuses `open(O_DIRECT)` (EINVAL): the send stops with usage exit 2, says which strategy
/// to use instead, and the receiver keeps nothing.
#[test]
fn direct_on_a_filesystem_refusing_o_direct_says_what_to_use() {
    let source = std::path::Path::new("/sys/devices/system/cpu/online");
    assert!(source.is_file(), "this test needs sysfs mounted at /sys");
    let work = tempfile::tempdir().unwrap();
    let mut receiver = Receiver::start(work.path().join("r"));
    let (code, stderr) = send_direct(source, &receiver);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("refuses O_DIRECT"), "{stderr}");
    assert!(stderr.contains("--strategy read-pipe"), "{stderr}");
    assert_eq!(receiver.proc.wait().code(), Some(1));
    assert_eq!(entries(&receiver.dir), Vec::<String>::new());
}

//! Storage that fails loses nothing. A full disk: on a small tmpfs the receiver refuses what does
//! not fit (keeping no file, not even a temporary one) and goes on serving, and a capture that
//! does not fit fails (exit 1) without leaving a file, while the destinations still get and
//! confirm the stream (these need the right to mount a tmpfs, and fail without it). A directory
//! that vanished: the receiver refuses the stream at once, and the sender reports the
//! receiver's reason.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{MIB, Receiver, list_dir, random_file, run, teecast};

/// A tmpfs of a few MiB mounted on a temporary directory, unmounted on drop.
struct SmallDisk {
    _dir: tempfile::TempDir,
    mount: PathBuf,
}

impl SmallDisk {
    fn mount(size_mib: u64) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path().join("disk");
        std::fs::create_dir(&mount).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(&mount)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "this test mounts a small tmpfs and needs root to do it (run the tests as root)"
        );
        SmallDisk { _dir: dir, mount }
    }

    fn path(&self) -> &Path {
        &self.mount
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

/// A small ext4 filesystem in a file, loop-mounted on a temporary directory, unmounted on
/// drop: a disk filesystem, where the receiver writes a stream with a digest `O_DIRECT`.
struct SmallExt4 {
    _dir: tempfile::TempDir,
    mount: PathBuf,
}

impl SmallExt4 {
    fn mount(size_mib: u64) -> SmallExt4 {
        // Beside the tests' other files, on a disk, not in memory.
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let image = dir.path().join("ext4.img");
        let mount = dir.path().join("disk");
        std::fs::create_dir(&mount).unwrap();
        std::fs::File::create(&image)
            .unwrap()
            .set_len(size_mib * MIB)
            .unwrap();
        let made = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&image)
            .status()
            .is_ok_and(|s| s.success());
        assert!(made, "mkfs.ext4 (e2fsprogs) is needed for this test");
        let ok = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mount)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "this test loop-mounts a small ext4 and needs root and a loop device to do it"
        );
        SmallExt4 { _dir: dir, mount }
    }

    /// The bytes available to an unprivileged writer now.
    fn available(&self) -> u64 {
        let s = rustix::fs::statvfs(&self.mount).unwrap();
        s.f_bavail * s.f_frsize
    }
}

impl Drop for SmallExt4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

/// On ext4 a stream with a digest is written `O_DIRECT` from its own thread: files of every
/// shape of tail, plain and encrypted, are stored whole; a stream that fills the disk is
/// refused, nothing of it kept and its space given back, and the receiver goes on.
#[test]
fn on_a_full_ext4_a_stream_written_direct_is_refused_and_nothing_kept() {
    let disk = SmallExt4::mount(48);
    let inbox = disk.mount.join("in");
    std::fs::create_dir(&inbox).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("k");
    run(teecast(["keygen"]).arg(&key)).expect_code(0);
    let receiver = Receiver::start(&[
        "--dir".as_ref(),
        inbox.as_os_str(),
        "--key-file".as_ref(),
        key.as_os_str(),
    ]);
    let empty = disk.available();
    // Every way a length meets the 1 MiB buffers and the 4 KiB blocks.
    let sizes = [
        0,
        1,
        4095,
        4096,
        MIB - 1,
        MIB,
        MIB + 1,
        2 * MIB,
        3 * MIB + 12_345,
    ];
    for (i, &len) in sizes.iter().enumerate() {
        let src = tmp.path().join(format!("f{i}.bin"));
        random_file(&src, len, 40 + i as u64);
        let mut cmd = teecast(["send", "--quiet", "--key-file"]);
        cmd.arg(&key).arg(&src).arg(receiver.dest());
        if i % 2 == 0 {
            cmd.arg("--no-encrypt");
        }
        run(&mut cmd).expect_code(0);
        common::assert_same_file(&src, &inbox.join(format!("f{i}.bin")));
        std::fs::remove_file(inbox.join(format!("f{i}.bin"))).unwrap();
    }

    // 64 MiB of unknown length into a disk of 48.
    let mut cmd = teecast([
        "send",
        "--quiet",
        "--json",
        "--no-encrypt",
        "--name",
        "big.bin",
    ]);
    cmd.arg("--key-file")
        .arg(&key)
        .arg("-")
        .arg(receiver.dest());
    let (sender, stdin) = common::Running::spawn_with(&mut cmd, std::process::Stdio::piped(), None);
    let mut stdin = stdin.unwrap();
    let mut prng = common::Prng::new(49);
    for _ in 0..64 {
        if stdin.write_all(&prng.bytes(MIB as usize)).is_err() {
            break; // refused: the sender stops reading its input
        }
    }
    drop(stdin);
    let sent = sender.wait(common::TIMEOUT);
    sent.expect_code(1);
    let report = sent.json();
    assert_eq!(
        report["destinations"][0]["ack_status"], "io-error",
        "{report}"
    );
    receiver
        .proc
        .wait_stderr("No space left on device", common::TIMEOUT);
    assert_eq!(list_dir(&inbox), Vec::<String>::new());
    // The unnamed temporary is gone with its blocks (ext4 frees them as the file closes).
    assert!(
        disk.available() + MIB >= empty,
        "{} bytes available after, {empty} before",
        disk.available()
    );

    // And it goes on serving.
    let small = tmp.path().join("small.bin");
    random_file(&small, 5 * MIB + 7, 50);
    run(teecast(["send", "--quiet", "--key-file"])
        .arg(&key)
        .arg(&small)
        .arg(receiver.dest()))
    .expect_code(0);
    common::assert_same_file(&small, &inbox.join("small.bin"));
}

/// A stream of unknown length (standard input) that fills the disk mid-write.
#[test]
fn receiver_on_a_full_disk_keeps_nothing_and_keeps_serving() {
    let disk = SmallDisk::mount(8);
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big.bin");
    let small = tmp.path().join("small.bin");
    random_file(&big, 32 * MIB, 1);
    random_file(&small, MIB, 2);
    let receiver = Receiver::start(&["--dir".as_ref(), disk.path().as_os_str()]);

    let mut cmd = teecast(["send", "--quiet", "--json", "--name", "big.bin", "-"]);
    cmd.arg(receiver.dest());
    let (sender, _) = common::Running::spawn_with(
        &mut cmd,
        std::process::Stdio::from(std::fs::File::open(&big).unwrap()),
        None,
    );
    let sent = sender.wait(common::TIMEOUT);
    sent.expect_code(1);
    let report = sent.json();
    let dest = &report["destinations"][0];
    assert_eq!(dest["status"], "failed", "{report}");
    assert_eq!(dest["kind"], "refused", "{report}");
    assert_eq!(dest["ack_status"], "io-error", "{report}");
    // Regression: the refusal said "it received 0 bytes" after megabytes had arrived.
    let error = dest["error"].as_str().unwrap();
    let received: u64 = error
        .rsplit("it received ")
        .next()
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {error:?}"));
    assert!((MIB..=8 * MIB).contains(&received), "{error}");
    assert_eq!(list_dir(disk.path()), Vec::<String>::new());
    // The receiver logs the reason once it has answered and closed (bounded wait).
    receiver
        .proc
        .wait_stderr("No space left on device", Duration::from_secs(30));

    // The receiver goes on serving: a stream that fits is stored.
    run(teecast(["send", "--quiet"])
        .arg(&small)
        .arg(receiver.dest()))
    .expect_code(0);
    assert_eq!(list_dir(disk.path()), vec!["small.bin".to_string()]);
    common::assert_same_file(&small, &disk.path().join("small.bin"));
}

/// With a known length, a file that cannot fit is refused before its payload, and the sender
/// is told how much room there is.
#[test]
fn a_file_that_cannot_fit_is_refused_before_its_payload() {
    let disk = SmallDisk::mount(8);
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big.bin");
    random_file(&big, 32 * MIB, 5);
    let receiver = Receiver::start(&["--dir".as_ref(), disk.path().as_os_str()]);
    let sent = run(teecast(["send", "--quiet", "--json"])
        .arg(&big)
        .arg(receiver.dest()));
    sent.expect_code(1);
    let report = sent.json();
    let dest = &report["destinations"][0];
    assert_eq!(dest["ack_status"], "io-error", "{report}");
    let error = dest["error"].as_str().unwrap();
    assert!(error.contains("no space for the file"), "{report}");
    assert!(error.contains(&(32 * MIB).to_string()), "{report}");
    assert_eq!(list_dir(disk.path()), Vec::<String>::new());
}

/// Regression: a capture that failed abandoned every destination.
#[test]
fn capture_on_a_full_disk_fails_alone_and_leaves_no_file() {
    let disk = SmallDisk::mount(8);
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source.bin");
    random_file(&source, 32 * MIB, 3);
    for strategy in ["readwrite", "read-pipe"] {
        let out = tmp.path().join(format!("out-{strategy}"));
        let receiver = Receiver::once_to(&out, &[]);
        let capture = disk.path().join("capture.bin");
        let sent = run(
            teecast(["send", "--quiet", "--strategy", strategy, "--capture"])
                .arg(&capture)
                .arg(&source)
                .arg(receiver.dest()),
        );
        sent.expect_code(1);
        assert!(
            sent.stderr.contains("No space left on device"),
            "{strategy}: {}",
            sent.stderr
        );
        assert_eq!(list_dir(disk.path()), Vec::<String>::new(), "{strategy}");
        // The destination still got the whole stream, verified.
        receiver.wait().expect_code(0);
        common::assert_same_file(&source, &out);
    }
}

#[test]
fn receiver_that_cannot_create_the_file_refuses_with_its_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let inbox = tmp.path().join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    let source = tmp.path().join("source.bin");
    random_file(&source, 16 * MIB, 4);
    let receiver = Receiver::start(&["--dir".as_ref(), inbox.as_os_str()]);
    std::fs::remove_dir(&inbox).unwrap();

    let sent = run(teecast(["send", "--quiet", "--json"])
        .arg(&source)
        .arg(receiver.dest()));
    sent.expect_code(1);
    let report = sent.json();
    let dest = &report["destinations"][0];
    assert_eq!(dest["kind"], "refused", "{report}");
    assert_eq!(dest["ack_status"], "rejected", "{report}");
    // The receiver's reason reaches the sender's user, without the receiver's paths.
    let error = dest["error"].as_str().unwrap();
    assert!(error.contains("cannot create the file here"), "{report}");
    assert!(!error.contains(&*inbox.to_string_lossy()), "{report}");
    assert!(!inbox.exists());

    // Still serving: once the directory is back, a stream is stored.
    std::fs::create_dir(&inbox).unwrap();
    run(teecast(["send", "--quiet"])
        .arg(&source)
        .arg(receiver.dest()))
    .expect_code(0);
    common::assert_same_file(&source, &inbox.join("source.bin"));
}

/// A relay whose disk fills mid-stream (standard input, so no length to check up front) keeps
/// nothing, says so, and still forwards: the host after it stores a verified copy.
#[test]
fn a_relay_whose_disk_is_full_still_forwards() {
    use std::io::Write;
    let disk = SmallDisk::mount(4);
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("s.bin");
    random_file(&source, 16 * MIB, 4);
    let relay = Receiver::start(&[
        "--once".as_ref(),
        "--relay".as_ref(),
        "--dir".as_ref(),
        disk.path().as_os_str(),
    ]);
    let inbox = tmp.path().join("next");
    let next = Receiver::once_in(&inbox, &[]);
    let (sender, stdin) = common::Running::spawn_with(
        teecast(["send", "--json", "--tree", "1", "--name", "s.bin", "-"])
            .arg(relay.dest())
            .arg(next.dest()),
        std::process::Stdio::piped(),
        None,
    );
    let mut stdin = stdin.unwrap();
    stdin.write_all(&std::fs::read(&source).unwrap()).unwrap();
    drop(stdin);
    let sent = sender.wait(Duration::from_secs(120));
    sent.expect_code(1);
    let report = sent.json();
    let d = &report["destinations"];
    assert_eq!(d[0]["ack_status"], "io-error", "{report}");
    assert_eq!(d[1]["status"], "ok", "{report}");
    relay.wait().expect_code(1);
    next.wait().expect_code(0);
    assert!(list_dir(disk.path()).is_empty());
    common::assert_same_file(&source, &inbox.join("s.bin"));
}

/// `--keep-free`: a stream of unknown length that would cross the reserve is cut, nothing of
/// it kept, while a stream beside it is stored; one announced too large for the reserve is
/// refused at its header; the reserve as a percentage of the disk.
#[test]
fn keep_free_cuts_a_stream_that_would_cross_the_reserve_and_the_others_go_on() {
    let disk = SmallDisk::mount(32);
    let tmp = tempfile::tempdir().unwrap();
    let (beside, large) = (tmp.path().join("beside.bin"), tmp.path().join("large.bin"));
    random_file(&beside, 2 * MIB, 30);
    random_file(&large, 20 * MIB, 31);
    let receiver = Receiver::start(&[
        "--dir".as_ref(),
        disk.path().as_os_str(),
        "--keep-free".as_ref(),
        "16M".as_ref(),
    ]);

    let mut cmd = teecast(["send", "--json", "--name", "endless.bin", "-"]);
    cmd.arg(receiver.dest());
    let (sender, stdin) = common::Running::spawn_with(&mut cmd, std::process::Stdio::piped(), None);
    let mut stdin = stdin.unwrap();
    let mut prng = common::Prng::new(32);
    stdin.write_all(&prng.bytes(4 * MIB as usize)).unwrap();
    receiver
        .proc
        .wait_stderr("receiving \"endless.bin\"", common::TIMEOUT);
    // Another stream while that one is in flight: it fits beside it and is stored.
    run(teecast(["send", "--quiet"])
        .arg(&beside)
        .arg(receiver.dest()))
    .expect_code(0);
    // The stream goes on past what the reserve leaves (32 MiB less 16 less 2 beside it).
    for _ in 0..20 {
        if stdin.write_all(&prng.bytes(MIB as usize)).is_err() {
            break; // cut: the sender stops reading its input
        }
    }
    drop(stdin);
    let sent = sender.wait(common::TIMEOUT);
    sent.expect_code(1);
    let report = sent.json();
    let dest = &report["destinations"][0];
    assert_eq!(dest["ack_status"], "io-error", "{report}");
    let error = dest["error"].as_str().unwrap();
    assert!(
        error.contains("less free space than this receiver keeps (keep free 16777216 bytes)"),
        "{report}"
    );
    receiver
        .proc
        .wait_stderr("keep free 16777216 bytes", common::TIMEOUT);
    assert_eq!(list_dir(disk.path()), ["beside.bin"]);
    common::assert_same_file(&beside, &disk.path().join("beside.bin"));

    // Announced larger than the space the reserve leaves: refused at the header.
    let sent = run(teecast(["send", "--quiet", "--json"])
        .arg(&large)
        .arg(receiver.dest()));
    sent.expect_code(1);
    let report = sent.json();
    let error = report["destinations"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("keep free 16777216 bytes")
            && error.contains("for 20971520 bytes announced"),
        "{report}"
    );
    assert_eq!(list_dir(disk.path()), ["beside.bin"]);
    drop(receiver);

    // 50% of 32 MiB: 16 MiB kept free, the same 20 MiB refused, 2 MiB stored.
    let receiver = Receiver::start(&[
        "--dir".as_ref(),
        disk.path().as_os_str(),
        "--keep-free".as_ref(),
        "50%".as_ref(),
        "--no-clobber".as_ref(),
    ]);
    run(teecast(["send", "--quiet"])
        .arg(&large)
        .arg(receiver.dest()))
    .expect_code(1);
    std::fs::remove_file(disk.path().join("beside.bin")).unwrap();
    run(teecast(["send", "--quiet"])
        .arg(&beside)
        .arg(receiver.dest()))
    .expect_code(0);
    assert_eq!(list_dir(disk.path()), ["beside.bin"]);
}

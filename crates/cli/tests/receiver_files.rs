//! What a receiver does with names and files: temporaries nobody can name, names that look
//! like them refused, stale ones swept at start, and existing files kept with `--no-clobber`.

mod common;

use common::{MIB, Receiver, list_dir, random_file, run, teecast};

/// Regression: a peer that sent a "file" named like another sender's temporary had it renamed
/// onto that sender's target. Such names are refused, and temporaries have no name at all.
#[test]
fn names_that_look_like_temporaries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("s.bin");
    random_file(&source, MIB, 101);
    let inbox = dir.path().join("in");
    std::fs::create_dir(&inbox).unwrap();
    let receiver = Receiver::start(&["--dir".as_ref(), inbox.as_os_str()]);
    for name in [
        ".disk.img.teecast-1-0.part",
        ".teecast-tmp-0123456789abcdef0123456789abcdef",
    ] {
        let sent = run(teecast(["send", "--json", "--name", name])
            .arg(&source)
            .arg(receiver.dest()));
        sent.expect_code(1);
        let report = sent.json();
        assert_eq!(
            report["destinations"][0]["ack_status"], "rejected",
            "{report}"
        );
    }
    assert_eq!(list_dir(&inbox), Vec::<String>::new());
}

#[test]
fn no_clobber_keeps_an_existing_file_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("s.bin");
    random_file(&source, MIB, 102);
    let inbox = dir.path().join("in");
    std::fs::create_dir(&inbox).unwrap();
    std::fs::write(inbox.join("s.bin"), b"precious").unwrap();
    let receiver = Receiver::start(&["--no-clobber".as_ref(), "--dir".as_ref(), inbox.as_os_str()]);
    let sent = run(teecast(["send", "--json"])
        .arg(&source)
        .arg(receiver.dest()));
    sent.expect_code(1);
    let report = sent.json();
    assert_eq!(
        report["destinations"][0]["ack_status"], "rejected",
        "{report}"
    );
    assert!(
        report["destinations"][0]["error"]
            .as_str()
            .unwrap()
            .contains("exists"),
        "{report}"
    );
    assert_eq!(std::fs::read(inbox.join("s.bin")).unwrap(), b"precious");
    assert_eq!(list_dir(&inbox), vec!["s.bin".to_string()]);
    // Without the flag the file is replaced (the documented default).
    drop(receiver);
    let receiver = Receiver::start(&["--dir".as_ref(), inbox.as_os_str()]);
    run(teecast(["send"]).arg(&source).arg(receiver.dest())).expect_code(0);
    common::assert_same_file(&source, &inbox.join("s.bin"));
}

#[test]
fn stale_temporaries_of_an_older_receiver_are_swept_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("in");
    std::fs::create_dir(&inbox).unwrap();
    std::fs::write(inbox.join(".disk.img.teecast-1-0.part"), b"left by kill -9").unwrap();
    std::fs::write(inbox.join("keep.bin"), b"mine").unwrap();
    let receiver = Receiver::start(&["--dir".as_ref(), inbox.as_os_str()]);
    assert!(
        receiver
            .proc
            .stderr_so_far()
            .contains("removed 1 stale temporary file"),
        "{}",
        receiver.proc.stderr_so_far()
    );
    assert_eq!(list_dir(&inbox), vec!["keep.bin".to_string()]);
}

/// A receiver killed with SIGKILL mid-stream leaves nothing in its directory: its temporary
/// never had a name. (Before, `.NAME.teecast-PID-N.part` stayed forever.)
#[test]
fn a_receiver_killed_mid_stream_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("s.bin");
    random_file(&source, 256 * MIB, 103);
    let inbox = dir.path().join("in").canonicalize_or_create();
    let receiver = Receiver::start(&["--dir".as_ref(), inbox.as_os_str()]);
    let sender = common::Running::spawn(
        teecast(["send", "--stall-timeout", "60s"])
            .arg(&source)
            .arg(receiver.dest()),
    );
    // Wait until the receiver holds a non-empty file open in the inbox: mid-stream.
    let pid = receiver.proc.pid();
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    while !std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
        fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|l| l.parent() == Some(inbox.as_path()))
                && std::fs::metadata(fd.path()).is_ok_and(|m| m.is_file() && m.len() > 0)
        })
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "the stream never started"
        );
        std::thread::yield_now();
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let finished = sender.wait(common::TIMEOUT);
    assert_eq!(finished.status.code(), Some(1), "{finished:?}");
    drop(receiver);
    assert_eq!(list_dir(&inbox), Vec::<String>::new());
}

trait CreateDir {
    fn canonicalize_or_create(self) -> std::path::PathBuf;
}

impl CreateDir for std::path::PathBuf {
    /// Creates the directory and returns its canonical path (as /proc shows it).
    fn canonicalize_or_create(self) -> std::path::PathBuf {
        std::fs::create_dir_all(&self).unwrap();
        self.canonicalize().unwrap()
    }
}

/// Makes a special file at `dir/name` with `argv` (mkfifo, mknod), sends a file to a
/// `recv --once --output` there while `read` consumes it, and checks that the special file is
/// still one (`is_kind`) and that nothing else appeared beside it.
fn send_onto_special(
    name: &str,
    argv: &[&str],
    is_kind: fn(&std::fs::FileType) -> bool,
    read: bool,
) {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("s.bin");
    random_file(&source, 3 * MIB, 104);
    let special = dir.path().join(name);
    let made = std::process::Command::new(argv[0])
        .arg(&special)
        .args(&argv[1..])
        .status()
        .unwrap();
    assert!(made.success(), "{argv:?} failed (a device node needs root)");
    // A reader, as a consumer of a FIFO would be.
    let reader = read.then(|| {
        let path = special.clone();
        std::thread::spawn(move || std::fs::read(path).unwrap())
    });
    let receiver = Receiver::once_to(&special, &[]);
    run(teecast(["send"]).arg(&source).arg(receiver.dest())).expect_code(0);
    receiver.wait().expect_code(0);
    if let Some(reader) = reader {
        assert!(reader.join().unwrap() == std::fs::read(&source).unwrap());
    }
    assert!(is_kind(&std::fs::metadata(&special).unwrap().file_type()));
    assert_eq!(
        list_dir(dir.path()),
        vec![name.to_string(), "s.bin".to_string()]
    );
}

/// Regression: `--output` onto a device node or a FIFO replaced it with a regular file (as root,
/// `--output /dev/null` destroyed /dev/null). Now the stream is written into it, and it stays
/// what it was.
#[test]
fn output_onto_a_fifo_writes_into_it_and_keeps_it() {
    use std::os::unix::fs::FileTypeExt;
    send_onto_special("fifo", &["mkfifo"], |t| t.is_fifo(), true);
}

/// A device node (a private one, like /dev/null: `mknod c 1 3`) is written into and stays a
/// device.
#[test]
fn output_onto_a_device_node_leaves_it_a_device() {
    use std::os::unix::fs::FileTypeExt;
    send_onto_special(
        "null",
        &["mknod", "c", "1", "3"],
        |t| t.is_char_device(),
        false,
    );
}

/// `recv --output -` writes the stream to standard output (into a consumer such as
/// `zfs receive`), and its digest line to stderr.
#[test]
fn output_dash_writes_the_stream_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("s.bin");
    let sha = random_file(&source, 2 * MIB + 5, 106);
    let out = dir.path().join("through-a-pipe.bin");
    let mut cmd = teecast(["recv", "--listen", "127.0.0.1:0", "--once", "--output", "-"]);
    let (receiver, _) = common::Running::spawn_with(
        &mut cmd,
        std::process::Stdio::null(),
        Some(std::process::Stdio::from(
            std::fs::File::create(&out).unwrap(),
        )),
    );
    let line = receiver.wait_stderr("teecast: listening on ", common::TIMEOUT);
    let addr = line.rsplit(' ').next().unwrap().to_string();
    let sent = run(teecast(["send", "--digest", "sha256"])
        .arg(&source)
        .arg(&addr));
    sent.expect_code(0);
    let received = receiver.wait(common::TIMEOUT);
    received.expect_code(0);
    assert_eq!(common::sha256_file(&out), sha);
    assert!(
        received.stderr.contains(&format!("{sha}  -")),
        "{received:?}"
    );
    assert_eq!(
        list_dir(dir.path()),
        vec!["s.bin".to_string(), "through-a-pipe.bin".to_string()]
    );
}

/// Names of the full 255 bytes store (the temporary has no name, so it takes no room).
#[test]
fn a_name_of_255_bytes_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("{}.bin", "n".repeat(251));
    assert_eq!(name.len(), 255);
    let source = dir.path().join(&name);
    random_file(&source, 100_000, 107);
    let inbox = dir.path().join("in");
    let receiver = Receiver::once_in(&inbox, &[]);
    run(teecast(["send"]).arg(&source).arg(receiver.dest())).expect_code(0);
    receiver.wait().expect_code(0);
    common::assert_same_file(&source, &inbox.join(&name));
}

/// A file whose name is not UTF-8 is not announced under a changed name: the send is refused
/// with the flag to use, and goes through with `--name`.
#[test]
fn a_name_that_is_not_utf8_is_refused_clearly() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9.bin"));
    random_file(&source, 1000, 108);
    let inbox = dir.path().join("in");
    let receiver = Receiver::once_in(&inbox, &[]);
    let refused = run(teecast(["send"]).arg(&source).arg(receiver.dest()));
    refused.expect_code(2);
    assert!(refused.stderr.contains("not UTF-8"), "{refused:?}");
    assert!(refused.stderr.contains("--name"), "{refused:?}");
    run(teecast(["send", "--name", "cafe.bin"])
        .arg(&source)
        .arg(receiver.dest()))
    .expect_code(0);
    receiver.wait().expect_code(0);
    assert_eq!(list_dir(&inbox), vec!["cafe.bin".to_string()]);
}

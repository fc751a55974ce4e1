//! What a new user runs into, tried as one would: each test here is a defect found that way,
//! reproduced with the real binary, and what teecast does now.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use common::{MIB, Receiver, Running, TIMEOUT, listener, random_file, run, teecast};

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

/// Waits (bounded) until `listener` has a connection waiting, or fails; `false` when none
/// came within a moment (it is polled, not waited for: the command under test has exited).
fn has_connection(listener: &TcpListener) -> bool {
    listener.set_nonblocking(true).unwrap();
    listener.accept().is_ok()
}

/// Regression: `(cat key; cat data) | teecast send --key-file - - ...` read the key and 8,127
/// bytes of the stream with it, sent the rest and exited 0. Both on standard input is refused.
#[test]
fn a_key_and_a_stream_both_on_standard_input_are_refused() {
    let (l, addr) = listener();
    let (sender, input) = Running::spawn_with(
        teecast(["send", "--key-file", "-", "-"]).arg(&addr),
        Stdio::piped(),
        None,
    );
    let mut input = input.unwrap();
    let key = "ab".repeat(32);
    let _ = input.write_all(format!("{key}\n").as_bytes());
    let _ = input.write_all(&vec![7u8; 100_000]);
    drop(input);
    let out = sender.wait(TIMEOUT);
    out.expect_code(2);
    assert!(out.stderr.contains("both read standard input"), "{out:?}");
    assert!(!has_connection(&l), "it connected");
}

/// Regression: `send f 7000` suggested "e.g. 7000:7000".
#[test]
fn a_port_alone_is_told_to_take_a_host() {
    let out = run(&mut teecast(["send", "/etc/hostname", "7000"]));
    out.expect_code(2);
    assert!(out.stderr.contains("e.g. 127.0.0.1:7000"), "{out:?}");
    assert!(!out.stderr.contains("7000:7000"), "{out:?}");
}

/// Regression: `--ring` had an unstated 2 MiB minimum and was taken without `--tree` (or, on
/// `recv`, without `--relay`), where it does nothing.
#[test]
fn the_ring_says_its_minimum_and_needs_a_tree() {
    let help = run(&mut teecast(["send", "--help"]));
    help.expect_code(0);
    assert!(help.stdout.contains("at least 2M"), "{}", help.stdout);
    let help = run(&mut teecast(["recv", "--help"]));
    assert!(help.stdout.contains("at least 2M"), "{}", help.stdout);
    let (l, addr) = listener();
    let out = run(teecast(["send", "--ring", "64M", "/etc/hostname"]).arg(&addr));
    out.expect_code(2);
    assert!(out.stderr.contains("--tree"), "{out:?}");
    let out = run(teecast(["send", "--tree", "1", "--ring", "1M", "/etc/hostname"]).arg(&addr));
    out.expect_code(2);
    assert!(out.stderr.contains("at least 2M"), "{out:?}");
    assert!(!has_connection(&l), "it connected");
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        teecast(["recv", "--listen", "127.0.0.1:0", "--once", "--ring", "8M"])
            .arg("--dir")
            .arg(dir.path()),
    );
    out.expect_code(2);
    assert!(out.stderr.contains("--relay"), "{out:?}");
}

/// Regression: `--capture DIR` failed only after the whole transfer (the rename onto a
/// directory). It fails before the stream goes out: exit 2, nothing sent, nothing stored.
#[test]
fn a_capture_that_cannot_be_written_fails_before_the_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("data.bin");
    random_file(&source, 4 * MIB, 2);
    let captures = dir.path().join("captures");
    std::fs::create_dir(&captures).unwrap();
    let under_a_file = source.join("capture.bin");
    for capture in [&captures, &under_a_file] {
        let (l, addr) = listener();
        let out = run(teecast(["send", "--capture"])
            .arg(capture)
            .arg(&source)
            .arg(&addr));
        out.expect_code(2);
        assert!(out.stderr.contains("cannot create"), "{out:?}");
        // The sender has exited: whatever it sent is in the listener's queue by now.
        l.set_nonblocking(true).unwrap();
        if let Ok((mut s, _)) = l.accept() {
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            assert!(got.is_empty(), "{} bytes went out", got.len());
        }
    }
    assert!(common::list_dir(&captures).is_empty());
}

/// Decision: a destination given twice is refused (exit 2): it would get the stream twice, and
/// a receiver storing both keeps one.
#[test]
fn a_destination_given_twice_is_refused() {
    let (l, addr) = listener();
    let out = run(teecast(["send", "/etc/hostname"]).arg(&addr).arg(&addr));
    out.expect_code(2);
    assert!(out.stderr.contains("is given twice"), "{out:?}");
    assert!(!has_connection(&l), "it connected");
}

/// Regression: a receiver whose sender holds another key logged "stream cut short ... during
/// the header", naming no key.
#[test]
fn a_receiver_names_another_key_as_the_likely_cause() {
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (dir.path().join("ours.key"), dir.path().join("theirs.key"));
    run(teecast(["keygen"]).arg(&ours)).expect_code(0);
    run(teecast(["keygen"]).arg(&theirs)).expect_code(0);
    let receiver = Receiver::start(&[
        "--key-file".as_ref(),
        ours.as_os_str(),
        "--dir".as_ref(),
        dir.path().as_os_str(),
    ]);
    let sent = run(teecast(["send", "--key-file"])
        .arg(&theirs)
        .arg("/etc/hostname")
        .arg(receiver.dest()));
    sent.expect_code(1);
    let line = receiver
        .proc
        .wait_stderr("most likely it holds another key", Duration::from_secs(30));
    assert!(line.contains("--key-file"), "{line}");
    assert!(!receiver.proc.stderr_so_far().contains("cut short"));
}

/// Regression: `--key-file DIR` said the key file was "open to others".
#[test]
fn a_key_file_that_is_a_directory_is_called_one() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o755, 0o700] {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        let out = run(teecast(["send", "--key-file"])
            .arg(dir.path())
            .arg("/etc/hostname")
            .arg("127.0.0.1:1"));
        out.expect_code(2);
        assert!(
            out.stderr.contains("a directory, not a key file"),
            "{out:?}"
        );
    }
}

/// Regression: a name with U+202E (which turns the rest of a line around) or another
/// bidirectional or invisible character was printed raw in the receiver's `stored` line and
/// digest line. Both escape it on a terminal; into a pipe the digest line keeps the name as it
/// is, for `b3sum -c` to find the file.
#[test]
fn names_with_bidi_and_invisible_characters_are_escaped_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    let source = dir.path().join("data.bin");
    random_file(&source, 100_000, 3);
    let name = "invoice\u{202e}fdp.exe\u{200b}";
    // Into a pipe: the stored line escaped, the digest line as it is.
    let receiver = Receiver::once_in(&inbox, &[]);
    run(teecast(["send", "--name", name])
        .arg(&source)
        .arg(receiver.dest()))
    .expect_code(0);
    let got = receiver.wait();
    got.expect_code(0);
    let stored = got
        .stderr
        .lines()
        .find(|l| l.contains(": stored "))
        .unwrap();
    assert!(stored.contains("\\u{202e}fdp.exe\\u{200b}"), "{stored}");
    assert!(
        !stored.contains('\u{202e}') && !stored.contains('\u{200b}'),
        "{stored}"
    );
    assert!(
        got.stdout.ends_with(&format!("/{name}\n")),
        "{}",
        got.stdout
    );
    std::fs::remove_file(inbox.join(name)).unwrap();
    // On a terminal: the digest line escaped too.
    let port = common::free_port();
    let mut screen = common::on_terminal(&format!(
        "{} recv --listen 127.0.0.1:{port} --once --dir '{}'",
        env!("CARGO_BIN_EXE_teecast"),
        inbox.display()
    ));
    let dest = format!("127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + TIMEOUT;
    let sent = loop {
        let sent = run(teecast(["send", "--name", name]).arg(&source).arg(&dest));
        if sent.code() == 0 || std::time::Instant::now() > deadline {
            break sent;
        }
        // Polling interval while the receiver starts on its terminal, not a synchronisation.
        std::thread::sleep(Duration::from_millis(50));
    };
    sent.expect_code(0);
    let status = screen.wait().unwrap();
    assert!(status.success());
    let mut shown = String::new();
    screen
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut shown)
        .unwrap();
    assert!(
        !shown.contains('\u{202e}') && !shown.contains('\u{200b}'),
        "{shown}"
    );
    let digest = shown.lines().find(|l| l.contains("  \"")).unwrap_or("");
    assert!(digest.contains("\\u{202e}fdp.exe\\u{200b}\""), "{shown}");
}

/// The address a `recv` child prints in its `listening on ADDR` line.
fn listening_on(proc: &Running) -> std::net::SocketAddr {
    let line = proc.wait_stderr("teecast: listening on ", Duration::from_secs(30));
    line.rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

/// Regression: `--listen :PORT` ("every address") bound IPv4 only. It takes IPv6 and IPv4.
#[test]
fn listen_on_a_port_alone_takes_ipv6_and_ipv4() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    run(teecast(["keygen"]).arg(&key)).expect_code(0);
    let inbox = dir.path().join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    let receiver = Running::spawn(
        teecast(["recv", "--listen", ":0", "--key-file"])
            .arg(&key)
            .arg("--dir")
            .arg(&inbox),
    );
    let port = listening_on(&receiver).port();
    let source = dir.path().join("data.bin");
    random_file(&source, MIB, 4);
    for (host, name) in [("[::1]", "six"), ("127.0.0.1", "four")] {
        run(teecast(["send", "--key-file"])
            .arg(&key)
            .args(["--name", name])
            .arg(&source)
            .arg(format!("{host}:{port}")))
        .expect_code(0);
        common::assert_same_file(&source, &inbox.join(name));
    }
}

/// Regression: the README's `recv --raw --listen :7000 --output x --once` was refused (no key
/// beyond loopback, and a bare stream proves none). The README's line, on an ephemeral port,
/// takes socat's stream; a raw receiver given a key is told it takes none.
#[test]
fn the_readmes_raw_receiver_takes_a_bare_stream() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let line = readme
        .lines()
        .find_map(|l| l.split("# ...into: ").nth(1))
        .expect("the README's raw receiver");
    let args: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(args[..2], ["teecast", "recv"], "{line}");
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("data.bin");
    random_file(&source, 2 * MIB, 5);
    let args: Vec<&str> = args[1..]
        .iter()
        .map(|a| if *a == ":7000" { ":0" } else { a })
        .collect();
    let receiver = Running::spawn(teecast(&args).current_dir(dir.path()));
    let port = listening_on(&receiver).port();
    assert!(
        common::have("socat"),
        "socat is needed: .ci/peers installs it"
    );
    run(std::process::Command::new("socat")
        .arg("-u")
        .arg(format!("FILE:{}", source.display()))
        .arg(format!("TCP:127.0.0.1:{port}")))
    .expect_code(0);
    receiver.wait(TIMEOUT).expect_code(0);
    common::assert_same_file(&source, &dir.path().join("x"));

    let key = dir.path().join("k");
    run(teecast(["keygen"]).arg(&key)).expect_code(0);
    let out = run(teecast([
        "recv",
        "--raw",
        "--listen",
        "127.0.0.1:0",
        "--output",
        "y",
        "--key-file",
    ])
    .arg(&key));
    out.expect_code(2);
    assert!(out.stderr.contains("--raw takes no key"), "{out:?}");
}

/// Regression: Ctrl-C printed nothing on either side. Each says it was interrupted and what
/// that leaves, and exits 130 (128 + SIGINT).
#[test]
fn ctrl_c_says_so_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    let receiver = Receiver::start(&["--dir".as_ref(), inbox.as_os_str()]);
    let (sender, input) = Running::spawn_with(
        teecast(["send", "-"]).arg(receiver.dest()),
        Stdio::piped(),
        None,
    );
    let mut input = input.unwrap();
    input.write_all(&vec![9u8; 3 * MIB as usize]).unwrap();
    common::wait_held(receiver.proc.pid(), &inbox, MIB);
    sender.signal(rustix::process::Signal::INT).unwrap();
    let sent = sender.wait(TIMEOUT);
    sent.expect_code(130);
    assert!(
        sent.stderr.contains("teecast: interrupted: stopped after"),
        "{sent:?}"
    );
    drop(input);
    // The receiver, its stream cut, goes on serving: interrupted too.
    receiver
        .proc
        .wait_stderr("cut short", Duration::from_secs(30));
    receiver.proc.signal(rustix::process::Signal::INT).unwrap();
    let got = receiver.wait();
    got.expect_code(130);
    assert!(
        got.stderr.contains("teecast: interrupted: stopped"),
        "{got:?}"
    );
    assert!(common::list_dir(&inbox).is_empty());
}

/// Regression: "0 B via readwrite" after megabytes went out, when every destination failed
/// mid-stream (a receiver killed). The summary and the report count what was sent.
#[test]
fn a_transfer_that_failed_counts_what_it_sent() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("big.bin");
    random_file(&source, 30 * MIB, 6);
    let inbox = dir.path().join("inbox");
    let receiver = Receiver::once_in(&inbox, &[]);
    let sender = Running::spawn(
        teecast(["send", "--json", "--strategy", "readwrite"])
            .arg(&source)
            .arg(receiver.dest()),
    );
    common::wait_held(receiver.proc.pid(), &inbox, 2 * MIB);
    receiver.proc.pause();
    receiver.proc.signal(rustix::process::Signal::KILL).unwrap();
    let sent = sender.wait(TIMEOUT);
    sent.expect_code(1);
    let report = sent.json();
    assert!(report["bytes"].as_u64().unwrap() >= 2 * MIB, "{report}");
    let summary = sent
        .stderr
        .lines()
        .find(|l| l.contains(" via readwrite, not encrypted:"))
        .unwrap();
    assert!(!summary.starts_with("teecast: 0 B "), "{summary}");
}

/// `send ... | true`: a stdout closed before the digest line fails the run (exit 1) though
/// every destination confirmed; the README's exit table says so, and that Ctrl-C exits 130.
#[test]
fn the_readmes_exit_table_says_what_a_closed_stdout_and_ctrl_c_do() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let table = readme.split("### Exit codes").nth(1).unwrap();
    let table = &table[..table.find("\n### ").unwrap()];
    assert!(table.contains("`teecast send … | true` exits 1"), "{table}");
    assert!(table.contains("| 130 |"), "{table}");
}

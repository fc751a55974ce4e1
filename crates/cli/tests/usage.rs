//! Usage through the real binary: what the command refuses before it connects or listens (exit
//! 2, with a line that says what to type), the listen addresses it takes, and a stdout that
//! cannot be written (closed or full), which fails the run (exit 1) and never panics (101).

mod common;

use std::ffi::OsStr;
use std::fs::File;
use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use common::{
    Finished, MIB, Receiver, Running, TIMEOUT, assert_same_file, listener, random_file, run,
    teecast,
};

/// The bound on a command that must refuse at once (it would otherwise wait for connections).
const PROMPT: Duration = Duration::from_secs(30);

/// `/dev/full` as a child's stdout: every write fails with ENOSPC.
fn dev_full() -> Stdio {
    Stdio::from(File::options().write(true).open("/dev/full").unwrap())
}

/// A small file to send, in a fresh temporary directory.
fn small_source() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("s.bin");
    random_file(&source, MIB + 3, 90);
    (dir, source)
}

/// Asserts that nobody connected to `listeners`.
fn expect_no_connection(listeners: &[TcpListener]) {
    for l in listeners {
        l.set_nonblocking(true).unwrap();
        assert!(
            l.accept().is_err(),
            "the sender connected to {:?} before refusing",
            l.local_addr()
        );
    }
}

/// Runs `teecast send SOURCE GOOD BAD` (GOOD an idle listener) and expects the whole send
/// refused, exit 2, before connecting to anyone, with an error naming BAD and every `needle`.
fn expect_destination_refused(bad: &str, needles: &[&str]) -> Finished {
    let (_dir, source) = small_source();
    let (good, good_addr) = listener();
    let sent = Running::spawn(
        teecast(["send", "--connect-timeout", "2s"])
            .arg(&source)
            .arg(&good_addr)
            .arg(bad),
    )
    .wait(PROMPT);
    sent.expect_code(2);
    assert!(
        sent.stderr.contains(&format!("'{bad}'")),
        "the error does not name {bad:?}: {sent:?}"
    );
    for needle in needles {
        assert!(
            sent.stderr.contains(needle),
            "the error does not say {needle:?}: {sent:?}"
        );
    }
    assert_eq!(sent.stdout, "", "a refused send printed a digest");
    expect_no_connection(&[good]);
    sent
}

#[test]
fn a_destination_without_a_port_refuses_the_whole_send() {
    expect_destination_refused("127.0.0.1", &["no port", "HOST:PORT", "127.0.0.1:7000"]);
}

#[test]
fn a_destination_port_out_of_range_refuses_the_whole_send() {
    expect_destination_refused("127.0.0.1:99999", &["out of range", "65535"]);
}

#[test]
fn a_destination_port_0_refuses_the_whole_send() {
    expect_destination_refused("127.0.0.1:0", &["port 0", "1 to 65535"]);
}

#[test]
fn a_destination_without_a_host_refuses_the_whole_send() {
    expect_destination_refused(":7000", &["no host", "HOST:PORT"]);
}

#[test]
fn an_unbracketed_ipv6_destination_is_refused_with_the_brackets_to_type() {
    expect_destination_refused("::1:7000", &["brackets", "[::1]:"]);
}

/// The validation takes bracketed IPv6 addresses: a send to `[::1]:PORT` arrives.
#[test]
fn a_bracketed_ipv6_destination_is_accepted() {
    assert!(
        TcpListener::bind("[::1]:0").is_ok(),
        "this test needs the IPv6 loopback address ::1"
    );
    let (dir, source) = small_source();
    let out = dir.path().join("out.bin");
    let receiver =
        Running::spawn(teecast(["recv", "--listen", "[::1]:0", "--once", "--output"]).arg(&out));
    let line = receiver.wait_stderr("teecast: listening on ", PROMPT);
    let addr = line.rsplit(' ').next().unwrap().to_string();
    assert!(addr.starts_with("[::1]:"), "{line}");
    let sent = run(teecast(["send"]).arg(&source).arg(&addr));
    sent.expect_code(0);
    receiver.wait(TIMEOUT).expect_code(0);
    assert_same_file(&source, &out);
}

/// A name that does not resolve is the run's failure (exit 1), not bad usage: the validation
/// does not resolve.
#[test]
fn an_unresolvable_name_is_a_failure_not_a_usage_error() {
    let (_dir, source) = small_source();
    let sent = run(teecast(["send", "--connect-timeout", "2s"])
        .arg(&source)
        .arg("no-such-host.invalid:7000"));
    sent.expect_code(1);
    assert!(sent.stderr.contains("no-such-host.invalid"), "{sent:?}");
}

/// `teecast send SOURCE DEST ARGS` to an idle listener: refused by the argument parser (exit
/// 2) with an error naming `flag`, before connecting.
fn expect_send_flag_refused(args: &[&str], flag: &str) {
    let (_dir, source) = small_source();
    let (idle, addr) = listener();
    let sent = Running::spawn(teecast(["send"]).arg(&source).arg(&addr).args(args)).wait(PROMPT);
    sent.expect_code(2);
    assert!(sent.stderr.contains(flag), "{sent:?}");
    assert!(sent.stderr.contains("above zero"), "{sent:?}");
    expect_no_connection(&[idle]);
}

#[test]
fn send_refuses_a_zero_stall_timeout() {
    expect_send_flag_refused(&["--stall-timeout", "0s"], "--stall-timeout");
}

#[test]
fn send_refuses_a_zero_connect_timeout() {
    expect_send_flag_refused(&["--connect-timeout", "0s"], "--connect-timeout");
}

#[test]
fn recv_refuses_a_zero_stall_timeout_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let received = Running::spawn(
        teecast([
            "recv",
            "--listen",
            "127.0.0.1:0",
            "--once",
            "--stall-timeout",
            "0",
            "--output",
        ])
        .arg(dir.path().join("out")),
    )
    .wait(PROMPT);
    received.expect_code(2);
    assert!(received.stderr.contains("--stall-timeout"), "{received:?}");
    assert!(received.stderr.contains("above zero"), "{received:?}");
    assert!(!received.stderr.contains("listening"), "{received:?}");
}

#[test]
fn recv_output_in_a_missing_directory_is_refused_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nonexistent").join("dir").join("x");
    let received = Running::spawn(
        teecast(["recv", "--listen", "127.0.0.1:0", "--once", "--output"]).arg(&out),
    )
    .wait(PROMPT);
    received.expect_code(2);
    assert!(
        received.stderr.contains("no such directory"),
        "{received:?}"
    );
    assert!(received.stderr.contains("--output"), "{received:?}");
    assert!(!received.stderr.contains("listening"), "{received:?}");
}

/// `recv --listen ADDR --insecure --once --output OUT`: it listens on every address of both
/// families (`[::]`, IPv4 mapped), and a send to 127.0.0.1 on that port arrives.
fn expect_listening_everywhere(listen: &str) {
    let (dir, source) = small_source();
    let out = dir.path().join("out.bin");
    let receiver = Running::spawn(
        teecast([
            "recv",
            "--listen",
            listen,
            "--insecure",
            "--once",
            "--output",
        ])
        .arg(&out),
    );
    let line = receiver.wait_stderr("teecast: listening on ", PROMPT);
    let addr: std::net::SocketAddr = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(addr.ip().is_unspecified() && addr.is_ipv6(), "{line}");
    let sent = run(teecast(["send"])
        .arg(&source)
        .arg(format!("127.0.0.1:{}", addr.port())));
    sent.expect_code(0);
    receiver.wait(TIMEOUT).expect_code(0);
    assert_same_file(&source, &out);
}

#[test]
fn listen_colon_port_means_every_address() {
    expect_listening_everywhere(":0");
}

#[test]
fn listen_bare_port_means_every_address() {
    expect_listening_everywhere("0");
}

/// Sends a small file to a `recv --once` receiver with the sender's stdout `stdout`: the
/// transfer itself succeeds (the receiver stores it and exits 0), the sender exits 1 saying
/// `needle`.
fn send_with_stdout(stdout: Stdio, extra: &[&str], needle: &str) {
    let (dir, source) = small_source();
    let out = dir.path().join("out.bin");
    let receiver = Receiver::once_to(&out, &[]);
    let (sender, _) = Running::spawn_with(
        teecast(["send"])
            .args(extra)
            .arg(&source)
            .arg(receiver.dest()),
        Stdio::null(),
        Some(stdout),
    );
    let sent = sender.wait(TIMEOUT);
    sent.expect_code(1);
    assert!(sent.stderr.contains(needle), "{sent:?}");
    assert_eq!(
        sent.stderr.matches("cannot write").count(),
        1,
        "reported more than once: {sent:?}"
    );
    assert!(sent.stderr.contains("confirmed"), "{sent:?}");
    assert!(!sent.stderr.contains("panicked"), "{sent:?}");
    receiver.wait().expect_code(0);
    assert_same_file(&source, &out);
}

#[test]
fn send_to_a_full_stdout_exits_1_and_says_so() {
    send_with_stdout(dev_full(), &[], "cannot write the digest line: ");
}

#[test]
fn send_json_to_a_full_stdout_exits_1_and_says_so() {
    send_with_stdout(dev_full(), &["--json"], "cannot write the JSON report: ");
}

#[test]
fn send_to_a_closed_stdout_exits_1_and_says_so() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    send_with_stdout(Stdio::from(writer), &[], "cannot write the digest line: ");
}

#[test]
fn recv_once_to_a_full_stdout_stores_the_stream_and_exits_1() {
    let (dir, source) = small_source();
    let out = dir.path().join("out.bin");
    let (receiver, _) = Running::spawn_with(
        teecast(["recv", "--listen", "127.0.0.1:0", "--once", "--output"]).arg(&out),
        Stdio::null(),
        Some(dev_full()),
    );
    let line = receiver.wait_stderr("teecast: listening on ", PROMPT);
    let addr = line.rsplit(' ').next().unwrap().to_string();
    let sent = run(teecast(["send", "--digest", "sha256"])
        .arg(&source)
        .arg(&addr));
    sent.expect_code(0);
    let received = receiver.wait(TIMEOUT);
    received.expect_code(1);
    assert!(
        received.stderr.contains("cannot write the digest line: "),
        "{received:?}"
    );
    assert!(received.stderr.contains("stored"), "{received:?}");
    assert_same_file(&source, &out);
}

#[test]
fn probe_json_to_a_full_stdout_exits_1_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (probe, _) = Running::spawn_with(
        &mut teecast([
            OsStr::new("probe"),
            dir.path().as_os_str(),
            OsStr::new("--json"),
        ]),
        Stdio::null(),
        Some(dev_full()),
    );
    let probed = probe.wait(TIMEOUT);
    probed.expect_code(1);
    assert!(
        probed.stderr.contains("cannot write the JSON report: "),
        "{probed:?}"
    );
}

/// A full stderr loses the log lines and nothing else: no panic (exit 101), the transfer's
/// own exit code, and the digest line still on stdout.
#[test]
fn a_full_stderr_never_panics() {
    let (dir, source) = small_source();
    let out = dir.path().join("out.bin");
    let receiver = common::Receiver::once_to(&out, &[]);
    let mut cmd = teecast(["send"]);
    cmd.arg(&source).arg(receiver.dest());
    cmd.stderr(dev_full())
        .stdout(Stdio::piped())
        .stdin(Stdio::null());
    let done = cmd.output().unwrap();
    assert_eq!(done.status.code(), Some(0), "{done:?}");
    assert!(String::from_utf8_lossy(&done.stdout).contains(&source.display().to_string()));
    receiver.wait().expect_code(0);
    // A usage error too: its message is lost, its exit code is not.
    let bad = teecast(["send", "--stall-timeout", "0s"])
        .arg(&source)
        .arg("127.0.0.1:9")
        .stderr(dev_full())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
}

/// Regression: help was never wrapped, so an 80-column terminal broke its lines anywhere.
#[test]
fn help_fits_an_80_column_terminal() {
    for command in ["send", "recv", "push", "demo", "probe", "keygen"] {
        let out = run(teecast([command, "--help"]).env("COLUMNS", "80"));
        out.expect_code(0);
        for line in out.stdout.lines() {
            assert!(
                line.chars().count() <= 80,
                "`teecast {command} --help` has a line of {} columns: {line:?}",
                line.chars().count()
            );
        }
    }
}

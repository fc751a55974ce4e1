//! `teecast recv` run as a service: sockets passed by socket activation (`systemd-socket-activate`),
//! notices to `$NOTIFY_SOCKET` (bound here and read), a graceful stop on SIGTERM, an immediate
//! one on a second SIGTERM or SIGINT, and log lines with the journal's priority prefixes.

mod common;

use std::ffi::OsString;
use std::io::Write;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use rustix::process::Signal;

/// Fails, naming the package, when `program` is missing: the test setup installs it.
fn need(program: &str) {
    assert!(
        have(program),
        "{program} is not installed: the tests of the service need it (Debian package `systemd`, installed by the test setup in .ci/)"
    );
}

/// A datagram socket standing in for the service manager's `$NOTIFY_SOCKET`: every notice sent
/// to it is kept, and a test waits for the one it expects.
struct Notices {
    socket: UnixDatagram,
    /// The value of `NOTIFY_SOCKET` for the receiver.
    address: OsString,
    seen: Vec<String>,
}

impl Notices {
    /// Bound at a path in `dir`.
    fn at_path(dir: &Path) -> Notices {
        let path = dir.join("notify");
        Notices {
            socket: UnixDatagram::bind(&path).unwrap(),
            address: path.into_os_string(),
            seen: Vec::new(),
        }
    }

    /// Bound to an abstract name (`@…`).
    fn abstract_name() -> Notices {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "teecast-notify-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        Notices {
            socket: UnixDatagram::bind_addr(&addr).unwrap(),
            address: format!("@{name}").into(),
            seen: Vec::new(),
        }
    }

    /// The first notice (so far or to come) containing `needle`; panics, listing what came,
    /// after 60 s.
    fn wait(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut next = 0;
        loop {
            if let Some(found) = self.seen[next..].iter().find(|n| n.contains(needle)) {
                return found.clone();
            }
            next = self.seen.len();
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no notice with {needle:?}; got {:#?}",
                self.seen
            );
            self.socket.set_read_timeout(Some(left)).unwrap();
            let mut buf = [0u8; 4096];
            if let Ok(n) = self.socket.recv(&mut buf) {
                self.seen
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }
}

/// `teecast recv --listen 127.0.0.1:0 ARGS` telling `notices` of its state; with its address.
fn receiver(args: &[&str], notices: &Notices) -> (Running, String) {
    let mut cmd = teecast(["recv", "--listen", "127.0.0.1:0"]);
    cmd.args(args).env("NOTIFY_SOCKET", &notices.address);
    let proc = Running::spawn(&mut cmd);
    let line = proc.wait_stderr("teecast: listening on ", TIMEOUT);
    let addr = line.rsplit(' ').next().unwrap().to_string();
    (proc, addr)
}

/// `teecast send - --name NAME DEST ARGS`, its standard input for the test to write.
fn stdin_sender(name: &str, dest: &str, args: &[&str]) -> (Running, std::process::ChildStdin) {
    let mut cmd = teecast(["send", "-", "--name", name, dest]);
    cmd.args(args);
    let (proc, stdin) = Running::spawn_with(&mut cmd, Stdio::piped(), None);
    (proc, stdin.unwrap())
}

#[test]
fn a_socket_passed_by_socket_activation_is_served_and_the_manager_notified() {
    need("systemd-socket-activate");
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("in");
    std::fs::create_dir(&inbox).unwrap();
    let mut notices = Notices::at_path(dir.path());
    let listen = format!("127.0.0.1:{}", free_port());
    let second = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args(["-E", "NOTIFY_SOCKET", "-l", &listen, "-l", &second])
        .arg(env!("CARGO_BIN_EXE_teecast"))
        .args(["recv", "--dir"])
        .arg(&inbox)
        .env("NOTIFY_SOCKET", &notices.address);
    let activator = Running::spawn(&mut cmd);
    activator.wait_stderr(&format!("Listening on {listen}"), TIMEOUT);

    // The first connection has the activator start teecast, which takes it from the queue of
    // the socket it was passed: no --listen.
    let src = dir.path().join("activated.bin");
    random_file(&src, 3 * MIB, 20);
    run(&mut teecast([
        "send".as_ref(),
        src.as_os_str(),
        listen.as_ref(),
    ]))
    .expect_code(0);
    assert_same_file(&src, &inbox.join("activated.bin"));
    notices.wait("READY=1");
    notices.wait("STATUS=receiving 1 stream: \"activated.bin\" from 127.0.0.1:");
    notices.wait("STATUS=no streams in flight; 1 stored since the start");
    // Every socket passed is served.
    run(&mut teecast([
        "send".as_ref(),
        src.as_os_str(),
        second.as_ref(),
        "--name".as_ref(),
        "second.bin".as_ref(),
    ]))
    .expect_code(0);
    assert_same_file(&src, &inbox.join("second.bin"));
    notices.wait("2 stored since the start");

    activator.signal(Signal::TERM).unwrap();
    notices.wait("STOPPING=1");
    let done = activator.wait(TIMEOUT);
    done.expect_code(0);
    assert!(
        done.stderr
            .contains(&format!("teecast: listening on {listen}"))
            && done
                .stderr
                .contains(&format!("teecast: listening on {second}"))
            && done.stderr.contains("teecast: stopped"),
        "{}",
        done.stderr
    );
}

#[test]
fn sigterm_lets_the_stream_in_flight_finish_and_accepts_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("in");
    std::fs::create_dir(&inbox).unwrap();
    let mut notices = Notices::abstract_name();
    let (recv, dest) = receiver(&["--dir", inbox.to_str().unwrap()], &notices);
    notices.wait("READY=1");

    let mut prng = Prng::new(21);
    let (first, second) = (prng.bytes(MIB as usize), prng.bytes(2 * MIB as usize));
    let (sender, mut stdin) = stdin_sender("in-flight.bin", &dest, &[]);
    stdin.write_all(&first).unwrap();
    recv.wait_stderr("receiving \"in-flight.bin\"", TIMEOUT);
    notices.wait("receiving 1 stream: \"in-flight.bin\"");

    recv.signal(Signal::TERM).unwrap();
    let stopping = notices.wait("STOPPING=1");
    assert!(stopping.contains("in-flight.bin"), "{stopping}");
    recv.wait_stderr(
        "stopping (SIGTERM): no new connections; 1 stream(s) in flight",
        TIMEOUT,
    );

    // A sender arriving now is not served (refused, or closed unanswered) and stores nothing.
    let late = dir.path().join("late.bin");
    random_file(&late, 1000, 22);
    run(&mut teecast([
        "send".as_ref(),
        late.as_os_str(),
        dest.as_ref(),
    ]))
    .expect_code(1);

    // The stream in flight goes on to the end and is stored whole.
    stdin.write_all(&second).unwrap();
    drop(stdin);
    sender.wait(TIMEOUT).expect_code(0);
    let done = recv.wait(TIMEOUT);
    done.expect_code(0);
    assert!(done.stderr.contains("teecast: stopped"), "{}", done.stderr);
    assert_eq!(list_dir(&inbox), ["in-flight.bin"]);
    let stored = std::fs::read(inbox.join("in-flight.bin")).unwrap();
    assert_eq!(stored, [first, second].concat());
}

#[test]
fn a_stream_still_going_at_the_drain_timeout_is_refused_and_nothing_kept() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("in");
    std::fs::create_dir(&inbox).unwrap();
    let notices = Notices::abstract_name();
    let (recv, dest) = receiver(
        &["--dir", inbox.to_str().unwrap(), "--drain-timeout", "1s"],
        &notices,
    );
    let (sender, mut stdin) = stdin_sender("too-slow.bin", &dest, &["--stall-timeout", "3s"]);
    stdin.write_all(&Prng::new(23).bytes(MIB as usize)).unwrap();
    recv.wait_stderr("receiving \"too-slow.bin\"", TIMEOUT);

    // The sender pauses (keepalives only) past the drain timeout.
    recv.signal(Signal::TERM).unwrap();
    let done = recv.wait(TIMEOUT);
    done.expect_code(0);
    assert!(
        done.stderr
            .contains("the receiver is stopping and this stream did not end in time"),
        "{}",
        done.stderr
    );
    assert!(list_dir(&inbox).is_empty(), "{:?}", list_dir(&inbox));

    drop(stdin);
    let sent = sender.wait(TIMEOUT);
    sent.expect_code(1);
    assert!(
        sent.stderr.contains("the receiver is stopping"),
        "the sender is told why: {}",
        sent.stderr
    );
}

#[test]
fn a_second_sigterm_or_a_sigint_stops_at_once_keeping_nothing() {
    for signals in [[Signal::TERM, Signal::TERM].as_slice(), &[Signal::INT]] {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path().join("in");
        std::fs::create_dir(&inbox).unwrap();
        let mut notices = Notices::abstract_name();
        let (recv, dest) = receiver(
            &["--dir", inbox.to_str().unwrap(), "--drain-timeout", "1h"],
            &notices,
        );
        let (sender, mut stdin) = stdin_sender("cut.bin", &dest, &[]);
        stdin.write_all(&Prng::new(24).bytes(MIB as usize)).unwrap();
        recv.wait_stderr("receiving \"cut.bin\"", TIMEOUT);
        for (i, signal) in signals.iter().enumerate() {
            recv.signal(*signal).unwrap();
            if i + 1 < signals.len() {
                recv.wait_stderr("stopping (SIGTERM)", TIMEOUT);
            }
        }
        // Well within the hour of the drain timeout; 128 + the signal, as a shell says it.
        let done = recv.wait(Duration::from_secs(60));
        done.expect_code(128 + signals.last().unwrap().as_raw());
        assert!(
            done.stderr
                .contains("stream(s) in flight cut, nothing of them kept"),
            "{}",
            done.stderr
        );
        notices.wait("STOPPING=1");
        assert!(list_dir(&inbox).is_empty(), "{:?}", list_dir(&inbox));
        drop(stdin);
        sender.wait(TIMEOUT).expect_code(1);
    }
}

#[test]
fn log_lines_carry_priorities_when_stderr_is_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("in");
    std::fs::create_dir(&inbox).unwrap();
    // The journal hands a service its stream and names it in JOURNAL_STREAM (device:inode);
    // here the stream is the pipe the test reads, named the same way.
    let script = format!(
        "JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec {} recv --listen 127.0.0.1:0 --once --dir {}",
        env!("CARGO_BIN_EXE_teecast"),
        inbox.display()
    );
    let recv = Running::spawn(Command::new("sh").args(["-c", &script]));
    let line = recv.wait_stderr("teecast: listening on ", TIMEOUT);
    assert!(line.starts_with("<6>teecast: listening on "), "{line}");
    let dest = line.rsplit(' ').next().unwrap().to_string();
    let src = dir.path().join("journal.bin");
    random_file(&src, 1000, 25);
    run(&mut teecast([
        "send".as_ref(),
        src.as_os_str(),
        dest.as_ref(),
    ]))
    .expect_code(0);
    let done = recv.wait(TIMEOUT);
    done.expect_code(0);
    for line in done.stderr.lines() {
        assert!(
            line.starts_with("<6>teecast: "),
            "{line:?} in {}",
            done.stderr
        );
    }
    assert!(
        done.stderr.contains("<6>teecast: 127.0.0.1:"),
        "{}",
        done.stderr
    );

    // A failure is an error; a JOURNAL_STREAM that is not stderr (redirected since) is ignored.
    let script = format!(
        "JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec {} recv --listen 127.0.0.1:0 --once --dir {}",
        env!("CARGO_BIN_EXE_teecast"),
        dir.path().join("missing").display()
    );
    let failed = run(Command::new("sh").args(["-c", &script]));
    failed.expect_code(2);
    assert!(
        failed.stderr.starts_with("<3>teecast: "),
        "{}",
        failed.stderr
    );
    let failed = run(
        teecast(["recv", "--listen", "127.0.0.1:0", "--dir", "/nonexistent"])
            .env("JOURNAL_STREAM", "1:1"),
    );
    assert!(failed.stderr.starts_with("teecast: "), "{}", failed.stderr);
}

/// `teecast keygen PATH`.
fn keygen(path: &Path) {
    run(&mut teecast(["keygen".as_ref(), path.as_os_str()])).expect_code(0);
}

/// `teecast send SRC DEST --key-file KEY`: its exit code and stderr.
fn send_with(src: &Path, dest: &str, key: &Path) -> Finished {
    run(&mut teecast([
        "send".as_ref(),
        src.as_os_str(),
        dest.as_ref(),
        "--key-file".as_ref(),
        key.as_os_str(),
    ]))
}

#[test]
fn two_keys_during_a_rotation_and_new_ones_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("in");
    std::fs::create_dir(&inbox).unwrap();
    let (old, new, other) = (
        dir.path().join("old.key"),
        dir.path().join("new.key"),
        dir.path().join("other.key"),
    );
    for k in [&old, &new, &other] {
        keygen(k);
    }
    let src = dir.path().join("rotated.bin");
    random_file(&src, 2 * MIB, 26);

    // Old and new at once: a sender holding either is served, one holding neither is not.
    let (recv, dest) = receiver(
        &[
            "--dir",
            inbox.to_str().unwrap(),
            "--key-file",
            old.to_str().unwrap(),
            "--key-file",
            new.to_str().unwrap(),
        ],
        &Notices::abstract_name(),
    );
    recv.wait_stderr("every sender must prove one of the 2 keys", TIMEOUT);
    send_with(&src, &dest, &old).expect_code(0);
    send_with(&src, &dest, &new).expect_code(0);
    let refused = send_with(&src, &dest, &other);
    refused.expect_code(1);
    assert!(
        refused.stderr.contains("does not verify under the key"),
        "{}",
        refused.stderr
    );
    assert_same_file(&src, &inbox.join("rotated.bin"));
    drop(recv);

    // One key file, its key replaced while a stream under the old key is in flight.
    let file = dir.path().join("service.key");
    std::fs::copy(&old, &file).unwrap();
    let (recv, dest) = receiver(
        &[
            "--dir",
            inbox.to_str().unwrap(),
            "--key-file",
            file.to_str().unwrap(),
        ],
        &Notices::abstract_name(),
    );
    let (sender, mut stdin) = stdin_sender(
        "in-flight.bin",
        &dest,
        &["--key-file", old.to_str().unwrap()],
    );
    let mut prng = Prng::new(27);
    let (first, second) = (prng.bytes(MIB as usize), prng.bytes(MIB as usize));
    stdin.write_all(&first).unwrap();
    recv.wait_stderr("receiving \"in-flight.bin\"", TIMEOUT);
    let swap = dir.path().join("swap.key");
    std::fs::copy(&new, &swap).unwrap();
    std::fs::rename(&swap, &file).unwrap();
    recv.signal(Signal::HUP).unwrap();
    recv.wait_stderr("keys read again (SIGHUP): 1 key(s) from now on", TIMEOUT);
    send_with(&src, &dest, &new).expect_code(0);
    send_with(&src, &dest, &old).expect_code(1);
    // The stream in flight keeps the key its sender proved.
    stdin.write_all(&second).unwrap();
    drop(stdin);
    sender.wait(TIMEOUT).expect_code(0);
    assert_eq!(
        std::fs::read(inbox.join("in-flight.bin")).unwrap(),
        [first, second].concat()
    );

    // A key file made readable by others, or gone, is refused on reload; the keys stay.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    recv.signal(Signal::HUP).unwrap();
    let line = recv.wait_stderr("keys not read again (SIGHUP)", TIMEOUT);
    assert!(
        line.contains("open to others") && line.contains("the keys in use stay"),
        "{line}"
    );
    send_with(&src, &dest, &new).expect_code(0);
    std::fs::remove_file(&file).unwrap();
    recv.signal(Signal::HUP).unwrap();
    let gone = recv.wait_stderr("No such file", TIMEOUT);
    assert!(gone.contains("keys not read again (SIGHUP)"), "{gone}");
    send_with(&src, &dest, &new).expect_code(0);
    send_with(&src, &dest, &old).expect_code(1);
}

#[test]
fn the_unit_pair_verifies_and_is_hardened() {
    need("systemd-analyze");
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/systemd");
    let dir = tempfile::tempdir().unwrap();
    // The units as shipped, but for the binary: where this build put it (verify checks that
    // the command exists and can be run).
    let service = std::fs::read_to_string(dist.join("teecast-recv.service")).unwrap();
    assert!(
        service.contains("\nExecStart=/usr/local/bin/teecast recv --dir /srv/teecast "),
        "{service}"
    );
    let here = service.replace("/usr/local/bin/teecast", env!("CARGO_BIN_EXE_teecast"));
    std::fs::write(dir.path().join("teecast-recv.service"), here).unwrap();
    std::fs::copy(
        dist.join("teecast-recv.socket"),
        dir.path().join("teecast-recv.socket"),
    )
    .unwrap();
    let units = [
        dir.path().join("teecast-recv.socket"),
        dir.path().join("teecast-recv.service"),
    ];
    // Any complaint (an unknown key, a bad value) is printed with exit code 0: none allowed.
    let verified = run(Command::new("systemd-analyze").arg("verify").args(&units));
    verified.expect_code(0);
    assert_eq!(
        (verified.stdout.as_str(), verified.stderr.as_str()),
        ("", ""),
        "systemd-analyze verify complains"
    );
    for directive in [
        "\nType=notify\n",
        "\nUser=teecast\n",
        "\nProtectSystem=strict\n",
        "\nReadWritePaths=/srv/teecast\n",
        "\nNoNewPrivileges=yes\n",
        "\nPrivateTmp=yes\n",
        "\nRestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX\n",
        "\nCapabilityBoundingSet=\n",
        "\nExecReload=/bin/kill -HUP $MAINPID\n",
    ] {
        assert!(
            service.contains(directive),
            "no {directive:?} in the service"
        );
    }
    // systemd's own measure of what the service is exposed to: 0 (none) to 10.
    let security = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&units[1]));
    security.expect_code(0);
    let level: f64 = security
        .stdout
        .lines()
        .find_map(|l| l.split("teecast-recv.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in {}", security.stdout));
    assert!(level <= 2.0, "exposure {level}: {}", security.stdout);
}

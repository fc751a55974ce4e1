//! `teecast push` across "hosts" that are loopback addresses of this machine: through a plain
//! local launcher, and through a real OpenSSH server the test starts on loopback with its own
//! host key and user key (Debian's `openssh-server`; `.ci/run` installs it). Without sshd the
//! ssh tests fail, saying so.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{MIB, Running, assert_same_file, free_port, list_dir, random_file, run, teecast};

const BIN: &str = env!("CARGO_BIN_EXE_teecast");

/// An executable script `name` in `dir` with `body`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A launcher that runs the command here, as `ssh HOST COMMAND` would there.
fn local_rsh(dir: &Path) -> PathBuf {
    script(dir, "rsh", "shift\nexec sh -c \"$1\"")
}

fn inboxes(dir: &Path, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let d = dir.join(format!("host-{i}"));
            std::fs::create_dir(&d).unwrap();
            d
        })
        .collect()
}

/// Three hosts (127.0.0.1 to .3), given as a range, relayed as a chain: every one stores it.
#[test]
fn push_through_a_launcher_to_three_hosts_as_a_chain() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("disk.img");
    random_file(&source, 9 * MIB + 1, 301);
    let rsh = local_rsh(dir.path());
    let inbox = inboxes(dir.path(), 1).remove(0);
    let out = run(
        teecast(["push", "--json", "--tree", "1", "--remote-teecast", BIN])
            .arg("--rsh")
            .arg(&rsh)
            .arg(&source)
            .arg(format!("127.0.0.[1-3]:{}", inbox.display())),
    );
    out.expect_code(0);
    let report = out.json();
    let hosts = report["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3, "{report}");
    for h in hosts {
        assert_eq!(h["status"], "ok", "{report}");
        assert_eq!(h["remote_exit"], 0, "{report}");
    }
    let dests = report["transfer"]["destinations"].as_array().unwrap();
    assert_eq!(dests[2]["parent"], dests[1]["address"], "{report}");
    assert_same_file(&source, &inbox.join("disk.img"));
}

/// PATH a file name on one host, a directory on another, from --hosts.
#[test]
fn push_to_a_file_name_and_a_directory_from_a_hosts_file() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("data.bin");
    random_file(&source, 3 * MIB, 302);
    let rsh = local_rsh(dir.path());
    let inbox = inboxes(dir.path(), 2);
    let named = inbox[1].join("renamed.bin");
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        format!(
            "# the cluster\n127.0.0.2\n\n127.0.0.3:{}   # by name\n",
            named.display()
        ),
    )
    .unwrap();
    let out = run(teecast(["push", "--remote-teecast", BIN])
        .arg("--rsh")
        .arg(&rsh)
        .arg("--hosts")
        .arg(&hosts)
        .arg("--path")
        .arg(&inbox[0])
        .arg(&source));
    out.expect_code(0);
    assert!(out.stderr.contains("2 of 2 hosts"), "{out:?}");
    assert_same_file(&source, &inbox[0].join("data.bin"));
    assert_same_file(&source, &named);
}

/// Standard input, to an IPv6 and an IPv4 host.
#[test]
fn push_standard_input_over_ipv6_and_ipv4() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("stream.bin");
    random_file(&source, 2 * MIB + 5, 307);
    let rsh = local_rsh(dir.path());
    let inbox = inboxes(dir.path(), 2);
    let input = std::fs::File::open(&source).unwrap();
    let (pushing, _) = Running::spawn_with(
        teecast(["push", "--name", "stream.bin", "--remote-teecast", BIN])
            .arg("--rsh")
            .arg(&rsh)
            .arg("-")
            .arg(format!("[::1]:{}", inbox[0].display()))
            .arg(format!("127.0.0.1:{}", inbox[1].display())),
        input.into(),
        None,
    );
    let out = pushing.wait(common::TIMEOUT);
    out.expect_code(0);
    for d in &inbox {
        assert_same_file(&source, &d.join("stream.bin"));
    }
}

/// The key goes to the remotes on standard input: never in any argv of the launcher, nor in
/// the environment it is given. And a push is always encrypted.
#[test]
fn the_key_is_never_on_a_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("data.bin");
    random_file(&source, MIB, 303);
    let seen = dir.path().join("argv");
    // Records its argv, then runs the command.
    let rsh = script(
        dir.path(),
        "rsh",
        &format!(
            "printf '%s\\n' \"$@\" >> {0}\nenv >> {0}\nshift\nexec sh -c \"$1\"",
            seen.display()
        ),
    );
    let inbox = inboxes(dir.path(), 1).remove(0);
    let out = run(teecast(["push", "--remote-teecast", BIN])
        .arg("--rsh")
        .arg(&rsh)
        .arg(&source)
        .arg(format!("127.0.0.1:{}", inbox.display())));
    out.expect_code(0);
    assert!(
        out.stderr.contains("stored and verified, encrypted"),
        "{out:?}"
    );
    let argv = std::fs::read_to_string(&seen).unwrap();
    assert!(argv.contains("--key-file -"), "{argv}");
    assert!(
        argv.contains("PATH="),
        "the environment is recorded too: {argv}"
    );
    // No 64-hex-digit word anywhere.
    assert!(
        !argv
            .split(|c: char| !c.is_ascii_hexdigit())
            .any(|w| w.len() >= 64),
        "{argv}"
    );
}

/// Remotes that cannot run teecast, cannot store there, or a launcher that fails or hangs: each
/// host named with its reason, within the start timeout, exit 1.
#[test]
fn failing_and_hanging_remotes_are_named_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("data.bin");
    random_file(&source, MIB, 304);
    let rsh = local_rsh(dir.path());
    let inbox = inboxes(dir.path(), 1).remove(0);

    let out = run(
        teecast(["push", "--remote-teecast", "/nonexistent/teecast"])
            .arg("--rsh")
            .arg(&rsh)
            .arg(&source)
            .arg(format!("127.0.0.[1-2]:{}", inbox.display())),
    );
    out.expect_code(1);
    assert_eq!(out.stderr.matches("not found").count(), 2, "{out:?}");

    let out = run(teecast(["push", "--remote-teecast", BIN])
        .arg("--rsh")
        .arg(&rsh)
        .arg(&source)
        .arg("127.0.0.1:/nonexistent/dir/x"));
    out.expect_code(1);
    assert!(out.stderr.contains("no such directory"), "{out:?}");

    let hang = script(dir.path(), "hang", "exec sleep 600");
    let started = Instant::now();
    let out = run(teecast(["push", "--start-timeout", "2s"])
        .arg("--rsh")
        .arg(&hang)
        .arg(&source)
        .arg(format!("127.0.0.1:{}", inbox.display())));
    out.expect_code(1);
    assert!(
        out.stderr.contains("did not say where it listens"),
        "{out:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert!(list_dir(&inbox).is_empty());
}

/// An OpenSSH server on 127.0.0.1–3, port `port`, for this test only: host key, user key and
/// configuration in `dir`.
struct Sshd {
    proc: Running,
    rsh: String,
}

fn sshd(dir: &Path) -> Sshd {
    sshd_with(dir, "")
}

/// [`sshd`] with `extra` lines of configuration.
fn sshd_with(dir: &Path, extra: &str) -> Sshd {
    assert!(
        Path::new("/usr/sbin/sshd").exists(),
        "these tests need an OpenSSH server: apt-get install openssh-server"
    );
    let keygen = |path: &Path| {
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(path)
            .status()
            .expect("ssh-keygen (openssh-client)")
            .success();
        assert!(ok, "ssh-keygen failed");
    };
    // The user's key in a folder with a space: --rsh quotes its path as a shell would.
    let keys = dir.join("ssh keys");
    std::fs::create_dir(&keys).unwrap();
    let host_key = dir.join("host_key");
    let user_key = keys.join("user_key");
    keygen(&host_key);
    keygen(&user_key);
    let authorized = dir.join("authorized_keys");
    std::fs::copy(keys.join("user_key.pub"), &authorized).unwrap();
    // sshd's privilege separation directory (made by the package's service, which is not run).
    let _ = std::fs::create_dir_all("/run/sshd");
    let port = free_port();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nListenAddress 127.0.0.2\nListenAddress 127.0.0.3\nListenAddress ::1\n\
             HostKey {}\nAuthorizedKeysFile {}\nPidFile none\nStrictModes no\nUsePAM no\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nLogLevel INFO\n{extra}",
            host_key.display(),
            authorized.display()
        ),
    )
    .unwrap();
    let proc = Running::spawn(
        Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config),
    );
    proc.wait_stderr("listening on 127.0.0.3", Duration::from_secs(30));
    let rsh = format!(
        "ssh -p {port} -i '{}' -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=5",
        user_key.display()
    );
    Sshd { proc, rsh }
}

/// Through a real OpenSSH server to three hosts, directly and as a tree.
#[test]
fn push_over_real_ssh_to_three_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let server = sshd(dir.path());
    let source = dir.path().join("disk.img");
    random_file(&source, 7 * MIB + 9, 305);
    let inbox = inboxes(dir.path(), 3);
    for tree in [None, Some("2")] {
        let mut cmd = teecast([
            "push",
            "--json",
            "--remote-teecast",
            BIN,
            "--rsh",
            &server.rsh,
        ]);
        if let Some(k) = tree {
            cmd.args(["--tree", k]);
        }
        cmd.arg(&source);
        for (i, d) in inbox.iter().enumerate() {
            cmd.arg(format!("127.0.0.{}:{}", i + 1, d.display()));
        }
        let out = run(&mut cmd);
        out.expect_code(0);
        let report = out.json();
        assert_eq!(report["ok"], true, "{report}");
        for d in &inbox {
            assert_same_file(&source, &d.join("disk.img"));
            std::fs::remove_file(d.join("disk.img")).unwrap();
        }
    }
    drop(server.proc);
}

/// Through a real OpenSSH server to 256 hosts (the loopback addresses 127.0.1.1 to 127.0.2.1,
/// each logging in to the one sshd), relayed along a tree of 8. The sshd drops every login in
/// progress beyond 10 (`MaxStartups 10:100:100`): a launch window of 8 (`--fanout`) stays
/// within it, and every host stores a verified copy.
#[test]
fn push_over_real_ssh_to_256_hosts_in_a_launch_window() {
    let dir = tempfile::tempdir().unwrap();
    let server = sshd_with(dir.path(), "MaxStartups 10:100:100\n");
    let source = dir.path().join("image.bin");
    random_file(&source, MIB + 7, 306);
    let inbox = inboxes(dir.path(), 256);
    let hosts = dir.path().join("hosts");
    let lines: Vec<String> = inbox
        .iter()
        .enumerate()
        .map(|(i, d)| format!("127.0.{}.{}:{}", 1 + i / 255, 1 + i % 255, d.display()))
        .collect();
    std::fs::write(&hosts, lines.join("\n")).unwrap();
    let rsh = format!("{} -o HostName=127.0.0.1", server.rsh);
    let out = run(teecast(["push", "--json", "--tree", "8", "--fanout", "8"])
        .args(["--remote-teecast", BIN, "--rsh", &rsh, "--hosts"])
        .arg(&hosts)
        .arg(&source));
    out.expect_code(0);
    let report = out.json();
    let reported = report["hosts"].as_array().unwrap();
    assert_eq!(reported.len(), 256, "{report}");
    assert!(reported.iter().all(|h| h["status"] == "ok"), "{report}");
    for d in &inbox {
        assert_same_file(&source, &d.join("image.bin"));
    }
    drop(server.proc);
}

/// ssh refused (nothing listens on the port): the host named with ssh's reason, promptly.
#[test]
fn a_refused_ssh_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("data.bin");
    random_file(&source, MIB, 306);
    let port = free_port();
    let rsh = format!("ssh -p {port} -o BatchMode=yes -o ConnectTimeout=5");
    let out = run(teecast(["push", "--rsh", &rsh])
        .arg(&source)
        .arg(format!("127.0.0.1:{}", dir.path().display())));
    out.expect_code(1);
    assert!(out.stderr.contains("Connection refused"), "{out:?}");
}

/// Regressions: the remote command was given `[::1]` with its brackets (ssh cannot resolve it),
/// and --rsh was split at spaces, so a key under a path with a space could not be given. Over
/// real ssh to ::1, the key's path quoted: stored.
#[test]
fn push_over_real_ssh_to_ipv6_with_a_quoted_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let server = sshd(dir.path());
    assert!(server.rsh.contains("ssh keys/user_key'"), "{}", server.rsh);
    let source = dir.path().join("disk.img");
    random_file(&source, 2 * MIB + 3, 308);
    let inbox = inboxes(dir.path(), 1).remove(0);
    let out = run(
        teecast(["push", "--remote-teecast", BIN, "--rsh", &server.rsh])
            .arg(&source)
            .arg(format!("[::1]:{}", inbox.display())),
    );
    out.expect_code(0);
    assert_same_file(&source, &inbox.join("disk.img"));
    drop(server.proc);
}

/// An unclosed quote in --rsh is a usage error, said as such.
#[test]
fn an_rsh_with_an_unclosed_quote_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("data.bin");
    random_file(&source, 1000, 309);
    let out = run(teecast(["push", "--rsh", "ssh -i '/a b/key"])
        .arg(&source)
        .arg("127.0.0.1:/srv"));
    out.expect_code(2);
    assert!(out.stderr.contains("unclosed quote"), "{out:?}");
}

/// Regression: a --hosts line beginning with '-' reached the launcher as an option
/// (`-oProxyCommand=...` runs a command on this machine). It is refused before any launcher
/// runs; and with ssh, `--` goes before every host.
#[test]
fn a_target_beginning_with_a_dash_never_reaches_the_launcher_as_an_option() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("data.bin");
    random_file(&source, MIB, 310);
    let ran = dir.path().join("launcher-ran");
    let rsh = script(dir.path(), "rsh", &format!("touch '{}'", ran.display()));
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "-oProxyCommand=sh:/srv\n").unwrap();
    let out = run(teecast(["push", "--hosts"])
        .arg(&hosts)
        .arg("--rsh")
        .arg(&rsh)
        .arg(&source));
    out.expect_code(2);
    assert!(out.stderr.contains("cannot begin with '-'"), "{out:?}");
    assert!(!ran.exists(), "the launcher ran");

    // A launcher named ssh gets `--` before the host (it records its arguments, then runs the
    // command here as ssh would there).
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let argv = dir.path().join("argv");
    let ssh = script(
        &bin,
        "ssh",
        &format!(
            "printf '%s\\n' \"$@\" > '{}'\nwhile [ \"$1\" != -- ]; do shift; done\nshift 2\nexec sh -c \"$1\"",
            argv.display()
        ),
    );
    let inbox = inboxes(dir.path(), 1).remove(0);
    let out = run(teecast(["push", "--remote-teecast", BIN, "--rsh"])
        .arg(format!("{} -o BatchMode=yes", ssh.display()))
        .arg(&source)
        .arg(format!("127.0.0.1:{}", inbox.display())));
    out.expect_code(0);
    let args = std::fs::read_to_string(&argv).unwrap();
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(
        &args[..4],
        ["-o", "BatchMode=yes", "--", "127.0.0.1"],
        "{args:?}"
    );
    assert_same_file(&source, &inbox.join("data.bin"));
}

/// Regression: a range like `n[0-99999][0-99999]` expanded to 10^10 names (memory and time
/// without end). Past 10,000 hosts push stops at once, saying why.
#[test]
fn a_range_of_too_many_hosts_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("data.bin");
    random_file(&source, 1000, 311);
    let started = Instant::now();
    let out = run(teecast(["push", "--rsh", "false"])
        .arg(&source)
        .arg("n[0-99999][0-99999]:/srv"));
    out.expect_code(2);
    assert!(out.stderr.contains("more than 10000 hosts"), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// The same target twice is refused: two remotes would write one file.
#[test]
fn a_target_given_twice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("data.bin");
    random_file(&source, 1000, 312);
    let ran = dir.path().join("launcher-ran");
    let rsh = script(dir.path(), "rsh", &format!("touch '{}'", ran.display()));
    let out = run(teecast(["push", "--rsh"])
        .arg(&rsh)
        .arg(&source)
        .arg("127.0.0.1:/srv")
        .arg("127.0.0.[1-2]:/srv"));
    out.expect_code(2);
    assert!(
        out.stderr.contains("127.0.0.1:/srv is given twice"),
        "{out:?}"
    );
    assert!(!ran.exists(), "the launcher ran");
}

/// Regressions: a host's failure read "FAILED: FAILED: ...", and a remote's words came out with
/// `\'` for every apostrophe. One remote holds another key (its launcher hands it one of its
/// own); the other's launcher fails, saying why in words with an apostrophe.
#[test]
fn a_host_that_failed_is_said_once_in_plain_words() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("data.bin");
    random_file(&source, MIB, 313);
    let inbox = inboxes(dir.path(), 1).remove(0);
    let rsh = script(
        dir.path(),
        "rsh",
        "case \"$1\" in\n127.0.0.2) echo \"this host's disk is gone\" >&2; exit 1;;\nesac\n\
         read key\nshift\necho 0000000000000000000000000000000000000000000000000000000000000001 | sh -c \"$1\"",
    );
    let out = run(teecast(["push", "--remote-teecast", BIN, "--rsh"])
        .arg(&rsh)
        .arg(&source)
        .arg(format!("127.0.0.1:{}", inbox.display()))
        .arg(format!("127.0.0.2:{}", inbox.display())));
    out.expect_code(1);
    assert!(!out.stderr.contains("FAILED: FAILED:"), "{}", out.stderr);
    assert!(!out.stderr.contains("\\'"), "{}", out.stderr);
    assert!(
        out.stderr.contains("this host's disk is gone"),
        "{}",
        out.stderr
    );
    let failed: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("FAILED"))
        .collect();
    assert_eq!(failed.len(), 2, "{}", out.stderr);
    assert!(
        failed[0].contains("does not verify under the key"),
        "{}",
        out.stderr
    );
    assert!(list_dir(&inbox).is_empty());
}

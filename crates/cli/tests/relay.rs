//! Relays on loopback, through the real binary: chains and trees of `teecast recv --relay`,
//! every host storing a copy checked against the sender's digest, every host in the sender's
//! report with its parent, and the hops that cannot or will not forward named.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{
    MIB, Receiver, Running, assert_same_file, hosts_of, list_dir, random_file, run, teecast,
};

/// `n` relays, each `recv --once --relay --dir DIR/host-i` plus `extra`.
fn relays(dir: &Path, n: usize, extra: &[&str]) -> Vec<(Receiver, PathBuf)> {
    (0..n)
        .map(|i| {
            let inbox = dir.join(format!("host-{i}"));
            let mut args = vec!["--relay"];
            args.extend_from_slice(extra);
            (Receiver::once_in(&inbox, &args), inbox)
        })
        .collect()
}

fn addresses(hosts: &[(Receiver, PathBuf)]) -> Vec<String> {
    hosts.iter().map(|(r, _)| r.dest()).collect()
}

/// Sends `source` along a tree of `fanout` over `hosts` and checks that every host stored it,
/// verified, and that the report names each host with its parent.
fn relay_and_check(source: &Path, hosts: Vec<(Receiver, PathBuf)>, fanout: usize) {
    relay_and_check_with(source, hosts, fanout, &[]);
}

/// [`relay_and_check`] with more arguments for the sender.
fn relay_and_check_with(
    source: &Path,
    hosts: Vec<(Receiver, PathBuf)>,
    fanout: usize,
    extra: &[&str],
) -> serde_json::Value {
    let addrs = addresses(&hosts);
    let sent = run(teecast(["send", "--json", "--tree", &fanout.to_string()])
        .args(extra)
        .arg(source)
        .args(&addrs));
    sent.expect_code(0);
    let report = sent.json();
    let expected: Vec<_> = addrs
        .iter()
        .zip(common::tree_parents(&addrs, fanout))
        .map(|(a, parent)| (a.clone(), parent, "ok".to_string()))
        .collect();
    assert_eq!(hosts_of(&report), expected, "{report}");
    let name = source.file_name().unwrap();
    for (receiver, inbox) in hosts {
        let received = receiver.wait();
        received.expect_code(0);
        assert!(received.stderr.contains("verified"), "{received:?}");
        assert_same_file(source, &inbox.join(name));
    }
    report
}

#[test]
fn a_chain_of_four_stores_a_verified_copy_on_every_host() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("disk.img");
    random_file(&source, 24 * MIB + 7, 201);
    let hosts = relays(dir.path(), 4, &[]);
    relay_and_check(&source, hosts, 1);
}

#[test]
fn a_tree_of_seven_with_two_children_each_stores_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("disk.img");
    random_file(&source, 8 * MIB + 3, 202);
    let hosts = relays(dir.path(), 7, &[]);
    relay_and_check(&source, hosts, 2);
}

/// Encrypted, every host of a tree opens the records it stores and forwards them as they came.
#[test]
fn an_encrypted_tree_of_seven_stores_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    run(teecast(["keygen"]).arg(&key)).expect_code(0);
    let key = key.to_str().unwrap();
    let source = dir.path().join("disk.img");
    random_file(&source, 8 * MIB + 5, 204);
    let hosts = relays(dir.path(), 7, &["--key-file", key]);
    let report = relay_and_check_with(&source, hosts, 2, &["--key-file", key]);
    assert_eq!(report["encrypted"], true, "{report}");
    assert!(
        report["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["encrypted"] == true),
        "{report}"
    );
}

#[test]
fn a_keyed_chain_proves_the_key_at_every_hop() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    run(teecast(["keygen"]).arg(&key)).expect_code(0);
    let key = key.to_str().unwrap().to_string();
    let source = dir.path().join("disk.img");
    random_file(&source, 6 * MIB + 1, 203);
    let hosts = relays(dir.path(), 3, &["--key-file", &key]);
    let addrs = addresses(&hosts);
    let sent = run(
        teecast(["send", "--json", "--tree", "1", "--key-file", &key])
            .arg(&source)
            .args(&addrs),
    );
    sent.expect_code(0);
    let report = sent.json();
    assert_eq!(report["digest"]["algorithm"], "blake3", "{report}");
    for (receiver, inbox) in hosts {
        receiver.wait().expect_code(0);
        assert_same_file(&source, &inbox.join("disk.img"));
    }
}

#[test]
fn standard_input_goes_through_a_chain() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("stream.bin");
    random_file(&source, 5 * MIB + 11, 204);
    let hosts = relays(dir.path(), 3, &[]);
    let addrs = addresses(&hosts);
    let (sender, stdin) = Running::spawn_with(
        teecast(["send", "--json", "--tree", "1", "--name", "stream.bin", "-"]).args(&addrs),
        Stdio::piped(),
        None,
    );
    let mut stdin = stdin.unwrap();
    // In pieces, so the stream is chunked as it arrives.
    for piece in std::fs::read(&source).unwrap().chunks(700_001) {
        stdin.write_all(piece).unwrap();
    }
    drop(stdin);
    let sent = sender.wait(Duration::from_secs(120));
    sent.expect_code(0);
    assert_eq!(hosts_of(&sent.json()).len(), 3);
    for (receiver, inbox) in hosts {
        receiver.wait().expect_code(0);
        assert_same_file(&source, &inbox.join("stream.bin"));
    }
}

/// A receiver without `--relay` in the middle of a chain refuses, saying so; the host after it
/// is reported unreached; the host before it keeps its verified copy.
#[test]
fn a_receiver_that_does_not_relay_refuses_and_the_rest_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("disk.img");
    random_file(&source, 3 * MIB, 205);
    let first = relays(dir.path(), 1, &[]);
    let middle_inbox = dir.path().join("middle");
    let middle = Receiver::once_in(&middle_inbox, &[]);
    let last = relays(&dir.path().join("last"), 1, &[]);
    let addrs = [first[0].0.dest(), middle.dest(), last[0].0.dest()];
    let sent = run(teecast(["send", "--json", "--tree", "1"])
        .arg(&source)
        .args(&addrs));
    sent.expect_code(1);
    let report = sent.json();
    let hosts = hosts_of(&report);
    assert_eq!(
        hosts.iter().map(|h| h.2.as_str()).collect::<Vec<_>>(),
        ["ok", "failed", "failed"],
        "{report}"
    );
    let d = &report["destinations"];
    assert_eq!(d[1]["ack_status"], "rejected", "{report}");
    assert!(
        d[1]["error"].as_str().unwrap().contains("does not forward"),
        "{report}"
    );
    assert_eq!(d[2]["kind"], "unreached", "{report}");
    assert_eq!(d[2]["parent"], addrs[1].as_str(), "{report}");
    assert!(sent.stderr.contains("(via "), "{sent:?}");
    let (first, first_inbox) = first.into_iter().next().unwrap();
    first.wait().expect_code(0);
    assert_same_file(&source, &first_inbox.join("disk.img"));
    middle.wait().expect_code(1);
    assert!(list_dir(&middle_inbox).is_empty());
    // The last host was never reached; its receiver is still waiting (and is killed on drop).
    assert!(list_dir(&last[0].1).is_empty());
}

/// Without a key, a relay forwards only among loopback addresses: an open proxy otherwise.
#[test]
fn an_unkeyed_relay_will_not_forward_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("disk.img");
    random_file(&source, MIB, 206);
    let hosts = relays(dir.path(), 1, &[]);
    // A documentation address (TEST-NET-1): never connected to, the relay refuses first.
    let addrs = [hosts[0].0.dest(), "192.0.2.1:7000".to_string()];
    let sent = run(teecast(["send", "--json", "--tree", "1"])
        .arg(&source)
        .args(&addrs));
    sent.expect_code(1);
    let report = sent.json();
    let d = &report["destinations"];
    assert!(
        d[0]["error"]
            .as_str()
            .unwrap()
            .contains("only among loopback"),
        "{report}"
    );
    assert_eq!(d[1]["kind"], "unreached", "{report}");
    let (receiver, inbox) = hosts.into_iter().next().unwrap();
    receiver.wait().expect_code(1);
    assert!(list_dir(&inbox).is_empty());
}

/// SIGKILL for the receiver at `host`.
fn kill(host: &(Receiver, PathBuf)) {
    host.0.proc.signal(rustix::process::Signal::KILL).unwrap();
}

/// Waits (bounded) until the receiver at `host` holds at least `bytes` of its copy.
fn wait_held(host: &(Receiver, PathBuf), bytes: u64) {
    common::wait_held(host.0.proc.pid(), &host.1, bytes);
}

/// A relay killed with SIGKILL mid-stream: its parent adopts its child, which resumes from the
/// bytes it holds; every other host stores a verified copy, and the report names the dead hop
/// and how the rest were served.
#[test]
fn a_relay_killed_mid_stream_is_survived_by_the_hosts_below_it() {
    relay_killed_mid_stream(false);
}

/// The same, encrypted: the parent replays records from its ring, the adopted host goes on
/// opening them where it was.
#[test]
fn an_encrypted_relay_killed_mid_stream_is_survived_by_the_hosts_below_it() {
    relay_killed_mid_stream(true);
}

fn relay_killed_mid_stream(encrypted: bool) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    run(teecast(["keygen"]).arg(&key)).expect_code(0);
    let keyed = match encrypted {
        true => vec!["--key-file", key.to_str().unwrap()],
        false => Vec::new(),
    };
    let mut extra = vec!["--stall-timeout", "5s"];
    extra.extend(&keyed);
    let hosts = relays(dir.path(), 4, &extra);
    let addrs = addresses(&hosts);
    let (sender, stdin) = Running::spawn_with(
        teecast(["send", "--json", "--tree", "1", "--name", "s.bin", "-"])
            .args(&keyed)
            .args(&addrs),
        Stdio::piped(),
        None,
    );
    let mut stdin = stdin.unwrap();
    let mut expected = common::Prng::new(208).bytes(3 * MIB as usize);
    stdin.write_all(&expected[..2 * MIB as usize]).unwrap();
    // The last host has part of the stream: kill the relay two above it.
    wait_held(&hosts[3], MIB);
    kill(&hosts[1]);
    stdin.write_all(&expected[2 * MIB as usize..]).unwrap();
    drop(stdin);
    let sent = sender.wait(Duration::from_secs(120));
    sent.expect_code(1);
    let report = sent.json();
    assert_eq!(report["encrypted"], encrypted, "{report}");
    assert_eq!(
        hosts_of(&report),
        vec![
            (addrs[0].clone(), None, "ok".to_string()),
            (
                addrs[1].clone(),
                Some(addrs[0].clone()),
                "failed".to_string()
            ),
            (addrs[2].clone(), Some(addrs[0].clone()), "ok".to_string()),
            (addrs[3].clone(), Some(addrs[2].clone()), "ok".to_string()),
        ],
        "{report}"
    );
    let d = &report["destinations"];
    assert_eq!(d[1]["kind"], "unreached", "{report}");
    let resumed = common::resumed_at(&d[2], &addrs[1]);
    assert!(
        resumed >= MIB,
        "host 3 resumed from byte {resumed}, after holding 1 MiB below it"
    );
    let mut hosts = hosts.into_iter();
    let stored = |inbox: &Path| std::fs::read(inbox.join("s.bin")).unwrap();
    let (first, first_inbox) = hosts.next().unwrap();
    first.wait().expect_code(0);
    assert!(stored(&first_inbox) == expected, "host 1's copy differs");
    let (_dead, dead_inbox) = hosts.next().unwrap();
    assert!(list_dir(&dead_inbox).is_empty(), "{dead_inbox:?}");
    for (receiver, inbox) in hosts {
        receiver.wait().expect_code(0);
        assert!(stored(&inbox) == expected, "{inbox:?}'s copy differs");
    }
    expected.clear();
}

/// A host frozen mid-stream (SIGSTOP) below a healthy relay: the relay gives up on it within
/// half of the sender's stall timeout (timeouts nest by depth) and adopts the host below it, so
/// the sender never takes the healthy relay for stalled.
#[test]
fn a_frozen_host_never_takes_its_healthy_parent_down() {
    let dir = tempfile::tempdir().unwrap();
    // The relays keep their default stall timeout: the sender's reaches them in its header.
    let hosts = relays(dir.path(), 3, &[]);
    let addrs = addresses(&hosts);
    let (sender, stdin) = Running::spawn_with(
        teecast(["send", "--json", "--tree", "1", "--stall-timeout", "3s"])
            .args(["--name", "s.bin", "-"])
            .args(&addrs),
        Stdio::piped(),
        None,
    );
    let mut stdin = stdin.unwrap();
    let expected = common::Prng::new(209).bytes(64 * MIB as usize);
    stdin.write_all(&expected[..4 * MIB as usize]).unwrap();
    wait_held(&hosts[2], 2 * MIB);
    hosts[1].0.proc.pause();
    // More than every buffer on the way holds, so the freeze is felt all the way back.
    stdin.write_all(&expected[4 * MIB as usize..]).unwrap();
    drop(stdin);
    let sent = sender.wait(Duration::from_secs(120));
    hosts[1].0.proc.resume();
    sent.expect_code(1);
    let report = sent.json();
    assert_eq!(
        hosts_of(&report),
        vec![
            (addrs[0].clone(), None, "ok".to_string()),
            (
                addrs[1].clone(),
                Some(addrs[0].clone()),
                "failed".to_string()
            ),
            (addrs[2].clone(), Some(addrs[0].clone()), "ok".to_string()),
        ],
        "{report}"
    );
    assert!(
        report["destinations"][1]["error"]
            .as_str()
            .unwrap()
            .contains("stalled"),
        "{report}"
    );
    let stored = |inbox: &Path| std::fs::read(inbox.join("s.bin")).unwrap();
    let mut hosts = hosts.into_iter();
    let (first, first_inbox) = hosts.next().unwrap();
    first.wait().expect_code(0);
    assert!(stored(&first_inbox) == expected, "host 1's copy differs");
    let (thawed, thawed_inbox) = hosts.next().unwrap();
    thawed.wait().expect_code(1);
    assert!(list_dir(&thawed_inbox).is_empty(), "{thawed_inbox:?}");
    let (last, last_inbox) = hosts.next().unwrap();
    last.wait().expect_code(0);
    assert!(stored(&last_inbox) == expected, "host 3's copy differs");
}

/// Ctrl-C of a chain's sender reaches the whole chain within seconds: the first host has no one
/// to wait for (only the sender could adopt it), and a host whose stream is abandoned resets its
/// children's connections, so none of them waits out a stall timeout. Nothing is kept.
#[test]
fn a_senders_abort_reaches_the_whole_chain_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // Their own stall timeout is the default (30 s): none of it may be waited.
    let hosts = relays(dir.path(), 3, &[]);
    let addrs = addresses(&hosts);
    let (sender, stdin) = Running::spawn_with(
        teecast(["send", "--tree", "1", "--name", "s.bin", "-"]).args(&addrs),
        Stdio::piped(),
        None,
    );
    let mut stdin = stdin.unwrap();
    stdin
        .write_all(&common::Prng::new(210).bytes(2 * MIB as usize))
        .unwrap();
    wait_held(&hosts[2], MIB);
    sender.signal(rustix::process::Signal::INT).unwrap();
    let aborted = sender.wait(Duration::from_secs(30));
    assert!(!aborted.status.success(), "{aborted:?}");
    let stopped = std::time::Instant::now();
    for (receiver, inbox) in hosts {
        let finished = receiver.proc.wait(Duration::from_secs(30));
        finished.expect_code(1);
        assert!(list_dir(&inbox).is_empty(), "{inbox:?}");
    }
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the chain stopped {took:?} after the sender"
    );
    drop(stdin);
}

/// A relay that stores no file (here into a device node) replays from its ring instead: the
/// host below its dead child resumes from it.
#[test]
fn a_relay_without_a_file_replays_from_its_ring() {
    let dir = tempfile::tempdir().unwrap();
    let stall = ["--relay", "--stall-timeout", "5s"];
    let first = Receiver::once_to(Path::new("/dev/null"), &stall);
    let hosts = relays(dir.path(), 2, &["--stall-timeout", "5s"]);
    let addrs = [first.dest(), hosts[0].0.dest(), hosts[1].0.dest()];
    let (sender, stdin) = Running::spawn_with(
        teecast(["send", "--json", "--tree", "1", "--name", "s.bin", "-"]).args(&addrs),
        Stdio::piped(),
        None,
    );
    let mut stdin = stdin.unwrap();
    let expected = common::Prng::new(210).bytes(3 * MIB as usize);
    stdin.write_all(&expected[..2 * MIB as usize]).unwrap();
    wait_held(&hosts[1], MIB);
    kill(&hosts[0]);
    stdin.write_all(&expected[2 * MIB as usize..]).unwrap();
    drop(stdin);
    let sent = sender.wait(Duration::from_secs(120));
    sent.expect_code(1);
    let report = sent.json();
    let d = &report["destinations"];
    assert_eq!(d[2]["status"], "ok", "{report}");
    assert_eq!(d[2]["parent"], addrs[0].as_str(), "{report}");
    assert!(common::resumed_at(&d[2], &addrs[1]) >= MIB, "{report}");
    first.wait().expect_code(0);
    let (last, inbox) = hosts.into_iter().nth(1).unwrap();
    last.wait().expect_code(0);
    assert!(std::fs::read(inbox.join("s.bin")).unwrap() == expected);
}

/// An adopted host that holds less than the ring still has fails, named so, and keeps nothing.
#[test]
fn an_adopted_host_beyond_the_ring_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let mut hosts = relays(dir.path(), 2, &["--stall-timeout", "5s"]);
    let addrs = addresses(&hosts);
    let (sender, stdin) = Running::spawn_with(
        teecast([
            "send", "--json", "--tree", "1", "--ring", "2M", "--name", "s.bin", "-",
        ])
        .args(&addrs),
        Stdio::piped(),
        None,
    );
    let mut stdin = stdin.unwrap();
    let block = vec![5u8; MIB as usize];
    for _ in 0..16 {
        stdin.write_all(&block).unwrap();
    }
    // The second host holds 12 MiB: the sender's 2 MiB ring has moved past byte 0 (its writer,
    // one consumer among the sender's, runs at most a few MiB behind the first host's).
    wait_held(&hosts[1], 12 * MIB);
    // It restarts, holding nothing, on the same address; then the relay above it dies.
    let (old, inbox) = hosts.pop().unwrap();
    old.proc.signal(rustix::process::Signal::KILL).unwrap();
    drop(old);
    let fresh = Running::spawn(
        teecast([
            "recv",
            "--listen",
            &addrs[1],
            "--once",
            "--relay",
            "--stall-timeout",
            "5s",
            "--dir",
        ])
        .arg(&inbox),
    );
    fresh.wait_stderr("teecast: listening on ", Duration::from_secs(30));
    kill(&hosts[0]);
    drop(stdin);
    let sent = sender.wait(Duration::from_secs(120));
    sent.expect_code(1);
    let report = sent.json();
    let d = &report["destinations"];
    // Reported through the tree as not reached, with the reason.
    assert_eq!(d[1]["kind"], "unreached", "{report}");
    assert!(
        d[1]["error"]
            .as_str()
            .unwrap()
            .contains("it holds 0 bytes, and the replay ring now starts at byte"),
        "{report}"
    );
    fresh.wait(Duration::from_secs(60)).expect_code(1);
    assert!(list_dir(&inbox).is_empty(), "{inbox:?}");
}

/// A first host that cannot be reached: the sender itself serves the hosts below it.
#[test]
fn the_sender_adopts_a_first_host_it_cannot_reach() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("disk.img");
    random_file(&source, 3 * MIB + 1, 209);
    let hosts = relays(dir.path(), 2, &[]);
    let dead = format!("127.0.0.1:{}", common::free_port());
    let addrs = [dead.clone(), hosts[0].0.dest(), hosts[1].0.dest()];
    let sent = run(teecast(["send", "--json", "--tree", "1"])
        .arg(&source)
        .args(&addrs));
    sent.expect_code(1);
    let report = sent.json();
    assert_eq!(
        hosts_of(&report),
        vec![
            (dead, None, "failed".to_string()),
            (addrs[1].clone(), None, "ok".to_string()),
            (addrs[2].clone(), Some(addrs[1].clone()), "ok".to_string()),
        ],
        "{report}"
    );
    assert_eq!(report["destinations"][0]["kind"], "connect", "{report}");
    for (receiver, inbox) in hosts {
        receiver.wait().expect_code(0);
        assert_same_file(&source, &inbox.join("disk.img"));
    }
}

/// A hop that cannot be reached: its parent adopts the hosts below it, which still store a
/// verified copy; the report names the dead hop and who served each of the others.
#[test]
fn an_unreachable_hop_is_adopted_by_its_parent() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("disk.img");
    random_file(&source, 5 * MIB + 3, 207);
    let mut hosts = relays(dir.path(), 3, &[]);
    // Nothing listens at the second host's address.
    let dead = format!("127.0.0.1:{}", common::free_port());
    let addrs = [
        hosts[0].0.dest(),
        dead.clone(),
        hosts[1].0.dest(),
        hosts[2].0.dest(),
    ];
    let sent = run(teecast(["send", "--json", "--tree", "1"])
        .arg(&source)
        .args(&addrs));
    sent.expect_code(1);
    let report = sent.json();
    let seen = hosts_of(&report);
    assert_eq!(
        seen,
        vec![
            (addrs[0].clone(), None, "ok".to_string()),
            (dead, Some(addrs[0].clone()), "failed".to_string()),
            (addrs[2].clone(), Some(addrs[0].clone()), "ok".to_string()),
            (addrs[3].clone(), Some(addrs[2].clone()), "ok".to_string()),
        ],
        "{report}"
    );
    assert!(
        report["destinations"][1]["error"]
            .as_str()
            .unwrap()
            .contains("adopted by its parent"),
        "{report}"
    );
    for (receiver, inbox) in hosts.drain(..) {
        receiver.wait().expect_code(0);
        assert_same_file(&source, &inbox.join("disk.img"));
    }
}

/// A host of a tree writing to a terminal (which takes no splice) gets the bytes through a
/// buffer: `recv --output -` on a pseudo-terminal from util-linux `script`.
#[test]
fn a_tree_host_writing_to_a_terminal_stores_the_stream() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("x.txt");
    std::fs::write(&source, vec![b'x'; 300_000]).unwrap();
    let addr = format!("127.0.0.1:{}", common::free_port());
    let command = format!(
        "exec {} recv --listen {addr} --once --output -",
        env!("CARGO_BIN_EXE_teecast")
    );
    let mut terminal = common::on_terminal(&command);
    let mut screen = terminal.stdout.take().unwrap();
    // Until it listens (its log goes to the same terminal).
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains("listening on") {
        assert_eq!(screen.read(&mut byte).unwrap(), 1, "{seen:?}");
        seen.push(byte[0]);
    }
    let reader = std::thread::spawn(move || {
        let mut rest = Vec::new();
        screen.read_to_end(&mut rest).unwrap();
        rest
    });
    let sent = run(teecast(["send", "--json", "--tree", "1"])
        .arg(&source)
        .arg(&addr));
    sent.expect_code(0);
    assert!(terminal.wait().unwrap().success());
    let shown = reader.join().unwrap();
    let xs = shown.iter().filter(|&&b| b == b'x').count();
    assert!(
        xs >= 300_000,
        "{xs} of the 300000 bytes reached the terminal"
    );
}

mod by_hand {
    //! Sessions driven by hand from the sender's side, for what a real sender does not do.

    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    use teecast::proto::session::{SenderSession, Verdict};
    use teecast::proto::wire::{self, Header, MessageKind, NONCE_LEN, PREFIX_LEN};

    /// One whole message of `kind` from `s`: its body.
    pub fn message(s: &mut TcpStream, kind: MessageKind) -> Vec<u8> {
        let mut prefix = [0u8; PREFIX_LEN];
        s.read_exact(&mut prefix).unwrap();
        let len = wire::decode_prefix(&prefix, kind).unwrap();
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
        body
    }

    /// Connects to `addr` and opens an unkeyed session for `header` (hello, welcome, header).
    pub fn open(addr: &str, header: &Header) -> (TcpStream, SenderSession) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let (mut tx, hello) = SenderSession::start(header, None, [5; NONCE_LEN]).unwrap();
        s.write_all(&hello).unwrap();
        let welcome = message(&mut s, MessageKind::Welcome);
        let opening = tx.welcome(&welcome).unwrap();
        s.write_all(&opening).unwrap();
        (s, tx)
    }

    /// The receiver's answer to a resuming header: the offset it holds.
    pub fn resumed(s: &mut TcpStream, tx: &mut SenderSession) -> u64 {
        let body = message(s, MessageKind::Resume);
        tx.resumed(&body, None).unwrap()
    }

    /// Writes `payload` raw (a known length), then the trailer; the receiver's verdict.
    pub fn finish(
        s: &mut TcpStream,
        tx: &mut SenderSession,
        payload: &[u8],
        digest: &[u8],
    ) -> Verdict {
        s.write_all(payload).unwrap();
        tx.payload(payload.len() as u64).unwrap();
        s.write_all(&tx.finish(digest).unwrap()).unwrap();
        let ack = message(s, MessageKind::Ack);
        tx.ack(&ack, None, digest).unwrap()
    }
}

/// A resuming header takes over only the stream it continues: the same transfer with another
/// name is a new stream (refused here: this receiver takes one), and the matching one goes on
/// from the bytes held; the old parent is told `adopted`; the copy is whole and verified.
#[test]
fn a_resume_takes_over_only_the_stream_it_continues() {
    use teecast::digest::{DigestAlgorithm, Hasher};
    use teecast::proto::session::Verdict;
    use teecast::proto::wire::{Ack, AckStatus, Header, MessageKind, Tree};

    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("host");
    let host = (
        Receiver::once_in(&inbox, &["--stall-timeout", "10s"]),
        inbox.clone(),
    );
    let data = common::Prng::new(211).bytes(2 * MIB as usize);
    let mut h = Hasher::new(DigestAlgorithm::Blake3);
    h.update(&data);
    let digest = h.finish().bytes;
    let header = |name: &str, resume| Header {
        name: name.into(),
        length: Some(data.len() as u64),
        digest: DigestAlgorithm::Blake3,
        route: vec![host.0.dest()],
        tree: Some(Tree {
            fanout: 1,
            position: 1,
            transfer: [9; 16],
            resume,
            stall_ms: 30_000,
            connect_ms: 10_000,
        }),
    };
    let (mut first, mut first_tx) = by_hand::open(&host.0.dest(), &header("a.bin", false));
    first.write_all(&data[..MIB as usize]).unwrap();
    first_tx.payload(MIB).unwrap();
    wait_held(&host, MIB);
    // Another name under the same transfer: not this stream; nothing of it is held.
    let (mut other, mut other_tx) = by_hand::open(&host.0.dest(), &header("b.bin", true));
    assert_eq!(by_hand::resumed(&mut other, &mut other_tx), 0);
    let refused = Ack::decode_body(&by_hand::message(&mut other, MessageKind::Ack)).unwrap();
    assert_eq!(refused.status, AckStatus::Rejected, "{refused:?}");
    // The stream's own header: it goes on from the megabyte held.
    let (mut second, mut second_tx) = by_hand::open(&host.0.dest(), &header("a.bin", true));
    assert_eq!(by_hand::resumed(&mut second, &mut second_tx), MIB);
    let adopted = Ack::decode_body(&by_hand::message(&mut first, MessageKind::Ack)).unwrap();
    assert_eq!(adopted.status, AckStatus::Adopted, "{adopted:?}");
    let verdict = by_hand::finish(&mut second, &mut second_tx, &data[MIB as usize..], &digest);
    assert!(matches!(verdict, Verdict::Confirmed(_)), "{verdict:?}");
    let (receiver, inbox) = host;
    receiver.wait().expect_code(0);
    assert!(std::fs::read(inbox.join("a.bin")).unwrap() == data);
    assert_eq!(list_dir(&inbox), ["a.bin"]);
}

/// A relay dies after its trailer went on, before it read its child's acknowledgement (a
/// proxy holds the acknowledgement back, then the relay is killed): the child had stored and
/// verified its copy, and waits for the parent adopting it, whose resume it answers as
/// complete. It is reported ok, its file kept, and the host below it is not served twice.
#[test]
fn a_host_whose_parent_died_before_its_ack_is_reported_ok_once() {
    late_resume(true, false, Held::ChildsAck);
}

/// The same with receivers that go on serving after the stream (no `--once`).
#[test]
fn a_serving_host_whose_parent_died_before_its_ack_is_reported_ok_once() {
    late_resume(false, false, Held::ChildsAck);
}

/// The same, encrypted: the late resume's answer and the new parent's trailer are sealed.
#[test]
fn an_encrypted_host_whose_parent_died_before_its_ack_is_reported_ok_once() {
    late_resume(true, true, Held::ChildsAck);
}

/// The relay read its child's acknowledgement and died before its own reached the sender (the
/// proxy in front of it holds that back): the child, whose connection the relay held open
/// until then, learns it from the reset, and is resumed late and confirmed as above.
#[test]
fn a_host_whose_parent_died_before_its_own_ack_arrived_is_reported_ok_once() {
    late_resume(true, false, Held::RelaysAck);
}

/// Whose acknowledgement the proxy holds back before the first relay is killed.
#[derive(Clone, Copy, PartialEq)]
enum Held {
    /// The relay's child's, to the relay.
    ChildsAck,
    /// The relay's own, to the sender.
    RelaysAck,
}

fn late_resume(once: bool, encrypted: bool, held: Held) {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("late.bin");
    let len = 3 * MIB;
    random_file(&source, len, 212);
    let key = dir.path().join("key");
    run(teecast(["keygen"]).arg(&key)).expect_code(0);
    let mut timeouts = vec!["--stall-timeout", "5s"];
    if encrypted {
        timeouts.extend(["--key-file", key.to_str().unwrap()]);
    }
    // What the first relay sends its child before the acknowledgement is due.
    let payload = match encrypted {
        true => teecast::proto::crypt::sealed_len(len).unwrap(),
        false => len,
    };
    let start = |i: usize| {
        let inbox = dir.path().join(format!("host-{i}"));
        std::fs::create_dir_all(&inbox).unwrap();
        let mut args = vec!["--relay", "--dir", inbox.to_str().unwrap()];
        args.extend(&timeouts);
        if once || i == 0 {
            args.push("--once");
        }
        (Receiver::start(&args), inbox)
    };
    let hosts: Vec<_> = (0..3).map(start).collect();
    // The proxy stands in front of the first relay or of its child, for whoever reaches it.
    let (proxy, addrs) = match held {
        Held::ChildsAck => {
            let proxy = common::AckHolder::start(hosts[1].0.dest(), payload);
            let addrs = [hosts[0].0.dest(), proxy.addr.clone(), hosts[2].0.dest()];
            (proxy, addrs)
        }
        Held::RelaysAck => {
            let proxy = common::AckHolder::start(hosts[0].0.dest(), payload);
            let addrs = [proxy.addr.clone(), hosts[1].0.dest(), hosts[2].0.dest()];
            (proxy, addrs)
        }
    };
    let (sender, _) = Running::spawn_with(
        teecast(["send", "--json", "--tree", "1"])
            .args(&timeouts)
            .arg(&source)
            .args(&addrs),
        Stdio::null(),
        None,
    );
    proxy.wait_held_back();
    kill(&hosts[0]);
    let sent = sender.wait(Duration::from_secs(60));
    sent.expect_code(1);
    let report = sent.json();
    assert_eq!(
        hosts_of(&report),
        vec![
            (addrs[0].clone(), None, "failed".to_string()),
            (addrs[1].clone(), None, "ok".to_string()),
            // Its parent's report, not an adoption.
            (addrs[2].clone(), Some(addrs[1].clone()), "ok".to_string()),
        ],
        "{report}"
    );
    assert_eq!(
        common::resumed_at(&report["destinations"][1], &addrs[0]),
        payload
    );
    let mut hosts = hosts.into_iter().skip(1);
    let (second, second_inbox) = hosts.next().unwrap();
    let (third, third_inbox) = hosts.next().unwrap();
    let confirmed = second
        .proc
        .wait_stderr("confirmed", Duration::from_secs(30));
    assert!(confirmed.contains("late.bin"), "{confirmed}");
    let finish = |r: Receiver| {
        if !once {
            r.proc.signal(rustix::process::Signal::KILL).unwrap();
        }
        r.wait()
    };
    let (second, third) = (finish(second), finish(third));
    if once {
        second.expect_code(0);
        third.expect_code(0);
    }
    for (host, inbox) in [(&second, &second_inbox), (&third, &third_inbox)] {
        assert_eq!(host.stderr.matches("verified").count(), 1, "{host:?}");
        assert_eq!(list_dir(inbox), ["late.bin"]);
        assert_same_file(&source, &inbox.join("late.bin"));
    }
}

/// A stall timeout too short for the tree's depth is raised to what it needs (each level gives
/// up on a stalled host sooner than the one above, down to a floor of 1 s and 250 ms more per
/// level below), and the sender says so; the chain is served as usual.
#[test]
fn a_stall_timeout_too_short_for_the_depth_is_raised_and_said() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("short.bin");
    random_file(&source, MIB, 213);
    let hosts = relays(dir.path(), 3, &[]);
    let addrs = addresses(&hosts);
    let sent = run(
        teecast(["send", "--json", "--tree", "1", "--stall-timeout", "100ms"])
            .arg(&source)
            .args(&addrs),
    );
    sent.expect_code(0);
    assert!(
        sent.stderr.contains(
            "a stall timeout of 0.100 s is too short for a tree this deep: 1.50 s is used"
        ),
        "{}",
        sent.stderr
    );
    for (receiver, inbox) in hosts {
        receiver.wait().expect_code(0);
        assert_same_file(&source, &inbox.join("short.bin"));
    }
}

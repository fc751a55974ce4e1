//! Relays on a real network: every host in a network namespace of its own, joined by veth pairs
//! to a bridge in another, each host's link shaped with `tc` (a token bucket). Needs root and
//! iproute2; without them these tests fail, saying so, and never pass without running.
//!
//! The namespaces are this test's own (named after the process and the test) and are removed
//! when the test ends, whatever happens.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{MIB, Running, assert_same_file, list_dir, random_file, run};

/// Every host's link: 200 Mbit/s (25 MB/s) each way, so that two cores relaying keep up.
const RATE: &str = "200mbit";
const PORT: u16 = 7000;

/// A bridge and `n` hosts, host `i` at 10.77.0.(i + 1) on its `eth0`.
struct Net {
    prefix: String,
    hosts: usize,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("these tests need iproute2 (`ip`): {e}"));
    assert!(
        out.status.success(),
        "ip {}: {} (these tests need root)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl Net {
    fn new(tag: &str, hosts: usize) -> Net {
        let prefix = format!("tcr{}{tag}", std::process::id());
        let net = Net { prefix, hosts };
        let bridge = net.bridge();
        ip(&["netns", "add", &bridge]);
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &bridge, "link", "set", "br0", "up"]);
        for i in 0..hosts {
            let ns = net.ns(i);
            let port = format!("p{i}");
            ip(&["netns", "add", &ns]);
            ip(&[
                "link", "add", &port, "netns", &bridge, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            ip(&["-n", &bridge, "link", "set", &port, "master", "br0", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", net.ip(i)),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate",
                RATE, "burst", "256kb", "latency", "200ms",
            ]);
        }
        net
    }

    fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    fn ns(&self, i: usize) -> String {
        format!("{}h{i}", self.prefix)
    }

    fn ip(&self, i: usize) -> String {
        format!("10.77.0.{}", i + 1)
    }

    fn addr(&self, i: usize) -> String {
        format!("{}:{PORT}", self.ip(i))
    }

    /// `teecast ARGS` inside host `i`'s namespace.
    fn teecast(&self, i: usize, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(i), env!("CARGO_BIN_EXE_teecast")]);
        cmd.args(args);
        cmd
    }

    /// A relay on host `i`: `recv --relay --once --dir DIR --key-file KEY` plus `extra`.
    fn relay(&self, i: usize, dir: &Path, key: &Path, extra: &[&str]) -> (Running, PathBuf) {
        let inbox = dir.join(format!("host-{i}"));
        std::fs::create_dir_all(&inbox).unwrap();
        let listen = self.addr(i);
        let mut args = vec![
            "recv",
            "--relay",
            "--once",
            "--listen",
            &listen,
            "--dir",
            inbox.to_str().unwrap(),
            "--key-file",
            key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let proc = Running::spawn(&mut self.teecast(i, &args));
        proc.wait_stderr("listening on", Duration::from_secs(30));
        (proc, inbox)
    }
}

impl Net {
    /// `teecast send --json --tree FANOUT --stall-timeout STALL --key-file KEY SOURCE` from host
    /// 0 to hosts 1 to `hosts`, started.
    fn send_tree(
        &self,
        fanout: &str,
        stall: &str,
        key: &Path,
        source: &Path,
        hosts: usize,
    ) -> Running {
        let addrs: Vec<String> = (1..=hosts).map(|i| self.addr(i)).collect();
        let mut args = vec!["send", "--json", "--tree", fanout, "--stall-timeout", stall];
        args.extend([
            "--key-file",
            key.to_str().unwrap(),
            source.to_str().unwrap(),
        ]);
        args.extend(addrs.iter().map(String::as_str));
        Running::spawn(&mut self.teecast(0, &args))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.hosts {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(i)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.bridge()])
            .status();
    }
}

fn keygen(dir: &Path) -> PathBuf {
    let key = dir.join("key");
    run(common::teecast(["keygen"]).arg(&key)).expect_code(0);
    key
}

/// Host 0 sends `source` along a tree of `fanout` over hosts 1..n; every host stores a
/// verified copy and the report names each with its parent.
fn relay_over(tag: &str, hosts: usize, fanout: usize) {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let source = dir.path().join("image.bin");
    random_file(&source, 6 * MIB + 5, 210 + hosts as u64);
    let net = Net::new(tag, hosts + 1);
    let relays: Vec<_> = (1..=hosts)
        .map(|i| net.relay(i, dir.path(), &key, &[]))
        .collect();
    let addrs: Vec<String> = (1..=hosts).map(|i| net.addr(i)).collect();
    let fanout_arg = fanout.to_string();
    let mut args = vec![
        "send",
        "--json",
        "--tree",
        &fanout_arg,
        "--key-file",
        key.to_str().unwrap(),
        source.to_str().unwrap(),
    ];
    args.extend(addrs.iter().map(String::as_str));
    let sent = run(&mut net.teecast(0, &args));
    sent.expect_code(0);
    let report = sent.json();
    let parents = common::tree_parents(&addrs, fanout);
    for (i, d) in report["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        assert_eq!(d["address"], addrs[i].as_str(), "{report}");
        assert_eq!(d["status"], "ok", "{report}");
        assert_eq!(d["parent"].as_str(), parents[i].as_deref(), "{report}");
    }
    for (proc, inbox) in relays {
        proc.wait(Duration::from_secs(120)).expect_code(0);
        assert_same_file(&source, &inbox.join("image.bin"));
    }
}

#[test]
fn a_chain_of_four_on_shaped_links() {
    relay_over("c", 4, 1);
}

#[test]
fn a_tree_of_seven_on_shaped_links() {
    relay_over("t", 7, 2);
}

/// In a tree of seven, the relay at position 1 is killed mid-stream (a file, so the payload's
/// length is known): the sender adopts its two children, which resume from the bytes they hold
/// within 5 s; the grandchild below them keeps its parent; every other host stores a verified
/// copy.
#[test]
fn a_relay_killed_in_a_tree_is_survived() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let source = dir.path().join("image.bin");
    random_file(&source, 24 * MIB + 7, 230);
    let net = Net::new("k", 8);
    let stall = ["--stall-timeout", "2s"];
    let relays: Vec<_> = (1..=7)
        .map(|i| net.relay(i, dir.path(), &key, &stall))
        .collect();
    let addrs: Vec<String> = (1..=7).map(|i| net.addr(i)).collect();
    let sender = net.send_tree("2", "2s", &key, &source, addrs.len());
    // Position 3 (a child of 1) holds 2 MiB: kill position 1.
    common::wait_held(relays[2].0.pid(), &relays[2].1, 2 * MIB);
    relays[0].0.signal(rustix::process::Signal::KILL).unwrap();
    let killed = std::time::Instant::now();
    for child in [2, 3] {
        relays[child]
            .0
            .wait_stderr("resumes \"image.bin\"", Duration::from_secs(30));
    }
    let resumed = killed.elapsed();
    assert!(
        resumed < Duration::from_secs(5),
        "resumed {resumed:?} after the kill"
    );
    let sent = sender.wait(Duration::from_secs(120));
    sent.expect_code(1);
    let report = sent.json();
    let d = report["destinations"].as_array().unwrap();
    assert_eq!(d[0]["status"], "failed", "{report}");
    for (i, parent) in [(2, None), (3, None), (6, Some(addrs[2].as_str()))] {
        assert_eq!(d[i]["status"], "ok", "{report}");
        assert_eq!(d[i]["parent"].as_str(), parent, "{report}");
    }
    assert!(common::resumed_at(&d[2], &addrs[0]) >= 2 * MIB, "{report}");
    common::resumed_at(&d[3], &addrs[0]);
    let mut relays = relays.into_iter();
    let (_dead, dead_inbox) = relays.next().unwrap();
    assert!(list_dir(&dead_inbox).is_empty(), "{dead_inbox:?}");
    for (proc, inbox) in relays {
        proc.wait(Duration::from_secs(60)).expect_code(0);
        assert_same_file(&source, &inbox.join("image.bin"));
    }
}

/// A relay's link goes down mid-stream: its parent drops it at the stall timeout and adopts
/// the host after it, which resumes from the bytes it holds and stores a verified copy; the
/// cut-off relay keeps nothing; the report says what became of each.
#[test]
fn a_link_set_down_mid_stream() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let net = Net::new("d", 4);
    let stall = ["--stall-timeout", "2s"];
    let relays: Vec<_> = (1..=3)
        .map(|i| net.relay(i, dir.path(), &key, &stall))
        .collect();
    let addrs: Vec<String> = (1..=3).map(|i| net.addr(i)).collect();
    let mut args = vec![
        "send",
        "--json",
        "--tree",
        "1",
        "--stall-timeout",
        "2s",
        "--name",
        "s.bin",
        "--key-file",
        key.to_str().unwrap(),
        "-",
    ];
    args.extend(addrs.iter().map(String::as_str));
    let (sender, stdin) = Running::spawn_with(&mut net.teecast(0, &args), Stdio::piped(), None);
    let mut stdin = stdin.unwrap();
    stdin.write_all(&vec![1u8; 2 * MIB as usize]).unwrap();
    // The last host holds part of the stream, through the relay whose link then goes down.
    common::wait_held(relays[2].0.pid(), &relays[2].1, MIB);
    ip(&["-n", &net.ns(2), "link", "set", "eth0", "down"]);
    let down = std::time::Instant::now();
    // The source goes on: more than the socket buffers hold, so the dead link is noticed.
    stdin.write_all(&vec![2u8; 16 * MIB as usize]).unwrap();
    drop(stdin);
    // Noticed at the 2 s stall timeout; the host after it resumed within 5 s of that.
    relays[2]
        .0
        .wait_stderr("resumes \"s.bin\"", Duration::from_secs(30));
    let resumed = down.elapsed();
    assert!(
        resumed < Duration::from_secs(7),
        "resumed {resumed:?} after the link went down"
    );
    let sent = sender.wait(Duration::from_secs(120));
    sent.expect_code(1);
    let report = sent.json();
    let d = &report["destinations"];
    assert_eq!(d[0]["status"], "ok", "{report}");
    assert_eq!(d[1]["status"], "failed", "{report}");
    assert_eq!(d[1]["kind"], "unreached", "{report}");
    assert!(
        d[1]["error"].as_str().unwrap().contains("stalled"),
        "{report}"
    );
    assert_eq!(d[2]["status"], "ok", "{report}");
    assert_eq!(d[2]["parent"], addrs[0].as_str(), "{report}");
    assert!(common::resumed_at(&d[2], &addrs[1]) >= MIB, "{report}");
    let mut expected = vec![1u8; 2 * MIB as usize];
    expected.extend(vec![2u8; 16 * MIB as usize]);
    let stored = |inbox: &Path| std::fs::read(inbox.join("s.bin")).unwrap();
    let mut relays = relays.into_iter();
    let (first, first_inbox) = relays.next().unwrap();
    first.wait(Duration::from_secs(60)).expect_code(0);
    assert!(stored(&first_inbox) == expected, "the first copy differs");
    // The cut-off relay gives up once no parent resumes it; it keeps nothing.
    let (cut, cut_inbox) = relays.next().unwrap();
    cut.wait(Duration::from_secs(60)).expect_code(1);
    assert!(list_dir(&cut_inbox).is_empty(), "{cut_inbox:?}");
    let (last, last_inbox) = relays.next().unwrap();
    last.wait(Duration::from_secs(60)).expect_code(0);
    assert!(stored(&last_inbox) == expected, "the adopted copy differs");
}

/// An unkeyed relay is never an open proxy, adoption included: it forwards among loopback
/// addresses only, so a route that would have it adopt a host beyond loopback (its loopback
/// child cannot be reached) is refused at the header, and the host beyond is never contacted.
/// The namespace gives that host a real address (10.1.2.3, on its loopback device) and a
/// listener that logs every connection.
#[test]
fn an_unkeyed_relay_never_adopts_a_host_beyond_loopback() {
    let net = Net::new("px", 1);
    ip(&["-n", &net.ns(0), "addr", "add", "10.1.2.3/32", "dev", "lo"]);
    let dir = tempfile::tempdir().unwrap();
    let outside = Running::spawn(Command::new("ip").args([
        "netns",
        "exec",
        &net.ns(0),
        "socat",
        "-d",
        "-d",
        "-u",
        "TCP-LISTEN:7777,bind=10.1.2.3,reuseaddr,fork",
        "OPEN:/dev/null",
    ]));
    outside.wait_stderr("listening on", Duration::from_secs(30));
    let inbox = dir.path().join("relay");
    std::fs::create_dir(&inbox).unwrap();
    let relay = Running::spawn(&mut net.teecast(
        0,
        &[
            "recv",
            "--relay",
            "--listen",
            "127.0.0.1:7000",
            "--dir",
            inbox.to_str().unwrap(),
        ],
    ));
    relay.wait_stderr("listening on", Duration::from_secs(30));
    let file = dir.path().join("f");
    random_file(&file, MIB, 7);
    // Position 2 (a closed port) is the relay's child; 3, below it, would be adopted.
    let sent = run(&mut net.teecast(
        0,
        &[
            "send",
            "--json",
            "--tree",
            "1",
            file.to_str().unwrap(),
            "127.0.0.1:7000",
            "127.0.0.1:1",
            "10.1.2.3:7777",
        ],
    ));
    sent.expect_code(1);
    let report = sent.json();
    let refusal = report["destinations"][0]["error"].as_str().unwrap();
    assert!(refusal.contains("only among loopback"), "{report}");
    relay.wait_stderr("only among loopback", Duration::from_secs(30));
    assert!(list_dir(&inbox).is_empty(), "{inbox:?}");
    // A marker connection from 127.0.0.9: every connection the listener accepted before it is
    // logged before it, and there must be none.
    run(Command::new("ip").args([
        "netns",
        "exec",
        &net.ns(0),
        "socat",
        "-u",
        "/dev/null",
        "TCP:10.1.2.3:7777,bind=127.0.0.9",
    ]))
    .expect_code(0);
    outside.wait_stderr("127.0.0.9", Duration::from_secs(30));
    let accepted = outside
        .stderr_so_far()
        .matches("accepting connection")
        .count();
    assert_eq!(accepted, 1, "{}", outside.stderr_so_far());
}

/// A host frozen mid-stream (SIGSTOP: its kernel still holds the connections, nothing is
/// refused) in a chain of three costs only itself: its healthy parent gives up on it within
/// half of the sender's stall timeout (timeouts nest by depth), adopts the host below it, and
/// is never taken for stalled by the sender. Every other host stores a verified copy, and the
/// report is exact.
#[test]
fn a_frozen_host_costs_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let source = dir.path().join("image.bin");
    random_file(&source, 48 * MIB + 3, 240);
    let net = Net::new("f", 4);
    let relays: Vec<_> = (1..=3)
        .map(|i| net.relay(i, dir.path(), &key, &[]))
        .collect();
    let addrs: Vec<String> = (1..=3).map(|i| net.addr(i)).collect();
    let sender = net.send_tree("1", "3s", &key, &source, addrs.len());
    // The last host holds part of the stream: freeze the middle one.
    common::wait_held(relays[2].0.pid(), &relays[2].1, 4 * MIB);
    relays[1].0.pause();
    let frozen = std::time::Instant::now();
    relays[2]
        .0
        .wait_stderr("resumes \"image.bin\"", Duration::from_secs(30));
    let resumed = frozen.elapsed();
    let sent = sender.wait(Duration::from_secs(120));
    relays[1].0.resume();
    sent.expect_code(1);
    let report = sent.json();
    let d = report["destinations"].as_array().unwrap();
    assert_eq!(d[0]["status"], "ok", "{report}");
    assert_eq!(d[1]["status"], "failed", "{report}");
    assert!(
        d[1]["error"].as_str().unwrap().contains("stalled"),
        "{report}"
    );
    assert_eq!(d[2]["status"], "ok", "{report}");
    assert_eq!(d[2]["parent"], addrs[0].as_str(), "{report}");
    assert!(common::resumed_at(&d[2], &addrs[1]) >= 4 * MIB, "{report}");
    // Given up on within half the sender's 3 s, and adopted at once.
    assert!(
        resumed < Duration::from_secs(3),
        "resumed {resumed:?} after the freeze"
    );
    let mut relays = relays.into_iter();
    let (first, first_inbox) = relays.next().unwrap();
    first.wait(Duration::from_secs(60)).expect_code(0);
    assert_same_file(&source, &first_inbox.join("image.bin"));
    let (thawed, thawed_inbox) = relays.next().unwrap();
    thawed.wait(Duration::from_secs(60)).expect_code(1);
    assert!(list_dir(&thawed_inbox).is_empty(), "{thawed_inbox:?}");
    let (last, last_inbox) = relays.next().unwrap();
    last.wait(Duration::from_secs(60)).expect_code(0);
    assert_same_file(&source, &last_inbox.join("image.bin"));
}

/// A tree of 15 over shaped links with one host blackholed mid-stream (every packet it sends is
/// dropped by `iptables`: no reset, no close, nothing) and another frozen (SIGSTOP): every healthy host stores a
/// verified copy, the report is exact (the two named `stalled`, the hosts below them adopted by
/// the right parents), and the whole transfer ends within a bound.
#[test]
fn a_blackholed_and_a_frozen_host_in_a_tree_of_fifteen() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let source = dir.path().join("image.bin");
    random_file(&source, 48 * MIB + 1, 250);
    let net = Net::new("b", 16);
    // Their own stall timeout bounds how long the blackholed one takes to give up.
    let relays: Vec<_> = (1..=15)
        .map(|i| net.relay(i, dir.path(), &key, &["--stall-timeout", "8s"]))
        .collect();
    let addrs: Vec<String> = (1..=15).map(|i| net.addr(i)).collect();
    let started = std::time::Instant::now();
    let sender = net.send_tree("2", "4s", &key, &source, addrs.len());
    // The deepest hosts below both hold part of the stream (positions 11 and 9).
    common::wait_held(relays[10].0.pid(), &relays[10].1, 4 * MIB);
    common::wait_held(relays[8].0.pid(), &relays[8].1, 4 * MIB);
    // Position 2 (children 5 and 6) goes silent: every packet it sends is dropped. Position 4
    // (children 9 and 10) freezes.
    ip(&[
        "netns",
        "exec",
        &net.ns(2),
        "iptables",
        "-A",
        "OUTPUT",
        "-o",
        "eth0",
        "-j",
        "DROP",
    ]);
    relays[3].0.pause();
    let sent = sender.wait(Duration::from_secs(120));
    let took = started.elapsed();
    eprintln!("the tree of 15 with a blackholed and a frozen host finished in {took:?}");
    sent.expect_code(1);
    let report = sent.json();
    let d = report["destinations"].as_array().unwrap();
    let parent = |p: usize| (p > 2).then(|| addrs[(p - 1) / 2 - 1].as_str());
    // What every host said, for a failure's message.
    let logs = || {
        relays
            .iter()
            .enumerate()
            .map(|(i, (proc, _))| format!("host {}:\n{}", i + 1, proc.stderr_so_far()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for p in 1..=15 {
        let host = &d[p - 1];
        match p {
            2 | 4 => {
                assert_eq!(host["status"], "failed", "{p}: {report}");
                assert!(
                    host["error"].as_str().unwrap().contains("stalled"),
                    "{p}: {report}"
                );
            }
            // Adopted: 5 and 6 by the sender, 9 and 10 by position 1.
            5 | 6 => {
                assert_eq!(host["status"], "ok", "{p}: {report}\n{}", logs());
                assert_eq!(host["parent"].as_str(), None, "{p}: {report}");
            }
            9 | 10 => {
                assert_eq!(host["status"], "ok", "{p}: {report}\n{}", logs());
                assert_eq!(
                    host["parent"].as_str(),
                    Some(addrs[0].as_str()),
                    "{p}: {report}"
                );
            }
            _ => {
                assert_eq!(host["status"], "ok", "{p}: {report}\n{}", logs());
                assert_eq!(host["parent"].as_str(), parent(p), "{p}: {report}");
            }
        }
    }
    // 48 MiB at 200 Mbit/s is about 2 s a link; the two stalls cost 4 s and 2 s, overlapped.
    assert!(took < Duration::from_secs(40), "the tree took {took:?}");
    relays[3].0.signal(rustix::process::Signal::KILL).unwrap();
    for (i, (proc, inbox)) in relays.into_iter().enumerate() {
        match i + 1 {
            2 => {
                proc.wait(Duration::from_secs(60)).expect_code(1);
                assert!(list_dir(&inbox).is_empty(), "{inbox:?}");
            }
            4 => drop(proc),
            _ => {
                proc.wait(Duration::from_secs(60)).expect_code(0);
                assert_same_file(&source, &inbox.join("image.bin"));
            }
        }
    }
}

//! A tree of a thousand hosts on loopback: a thousand `teecast recv --relay --once` processes,
//! each storing its own copy, fed by one sender along a tree of fan-out 10 (three levels).
//! Every host stores a verified copy and the sender's report lists all thousand with their
//! parents; with 5 % of them killed mid-stream, every other host is verified and each killed one
//! is named.
//!
//! The two tests take turns (each starts a thousand processes).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::{Prng, Running, hosts_of, list_dir, teecast};

const HOSTS: usize = 1000;
const FANOUT: usize = 10;

/// One of the two tests at a time.
static TURN: Mutex<()> = Mutex::new(());

/// A `recv --relay --once --dir DIR` on an ephemeral port of 127.0.0.1; stdout discarded (a
/// thousand of them must fit the test's descriptors).
struct Host {
    proc: Running,
    addr: String,
    inbox: PathBuf,
}

fn start_host(dir: &Path, i: usize) -> Host {
    let inbox = dir.join(format!("host-{i}"));
    std::fs::create_dir(&inbox).unwrap();
    let mut cmd = teecast(["recv", "--listen", "127.0.0.1:0", "--relay", "--once"]);
    cmd.arg("--dir").arg(&inbox);
    let (proc, _) = Running::spawn_with(&mut cmd, Stdio::null(), Some(Stdio::null()));
    let line = proc.wait_stderr("teecast: listening on ", Duration::from_secs(60));
    let addr = line.rsplit(' ').next().unwrap().trim().to_string();
    Host { proc, addr, inbox }
}

/// Room for a thousand children's pipes: the soft limit on descriptors raised to the hard one
/// (this test fails, saying so, where the hard limit is too low).
fn enough_descriptors() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let wanted = 4 * HOSTS as u64;
    let hard = limit.maximum.unwrap_or(u64::MAX);
    assert!(
        hard >= wanted,
        "this test needs {wanted} open descriptors; the hard limit is {hard}"
    );
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(wanted.max(limit.current.unwrap_or(0))),
            maximum: limit.maximum,
        },
    )
    .unwrap();
}

fn start_hosts(dir: &Path) -> Vec<Host> {
    enough_descriptors();
    (0..HOSTS).map(|i| start_host(dir, i)).collect()
}

fn sender(addrs: &[String]) -> Command {
    let mut cmd = teecast(["send", "--json", "--tree", &FANOUT.to_string()]);
    cmd.args(["--name", "s.bin", "-"]).args(addrs);
    cmd
}

#[test]
fn a_tree_of_a_thousand_hosts_stores_everywhere() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let hosts = start_hosts(dir.path());
    let addrs: Vec<String> = hosts.iter().map(|h| h.addr.clone()).collect();
    let data = Prng::new(1000).bytes(256 * 1024 + 3);
    let (sender, stdin) = Running::spawn_with(&mut sender(&addrs), Stdio::piped(), None);
    let mut stdin = stdin.unwrap();
    stdin.write_all(&data).unwrap();
    drop(stdin);
    let sent = sender.wait(Duration::from_secs(300));
    sent.expect_code(0);
    let report = sent.json();
    let expected: Vec<_> = addrs
        .iter()
        .zip(common::tree_parents(&addrs, FANOUT))
        .map(|(a, parent)| (a.clone(), parent, "ok".to_string()))
        .collect();
    assert_eq!(hosts_of(&report), expected, "{report}");
    for host in hosts {
        host.proc.wait(Duration::from_secs(120)).expect_code(0);
        let stored = std::fs::read(host.inbox.join("s.bin")).unwrap();
        assert!(stored == data, "{:?}'s copy differs", host.inbox);
    }
}

#[test]
fn a_tree_of_a_thousand_hosts_survives_five_percent_killed() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let hosts = start_hosts(dir.path());
    let addrs: Vec<String> = hosts.iter().map(|h| h.addr.clone()).collect();
    // 50 hosts, chosen by a fixed seed: relays of every level and leaves.
    let mut killed = Vec::new();
    let mut rng = Prng::new(1005);
    while killed.len() < HOSTS / 20 {
        let mut b = [0u8; 2];
        rng.fill(&mut b);
        let i = usize::from(u16::from_be_bytes(b)) % HOSTS;
        if !killed.contains(&i) {
            killed.push(i);
        }
    }
    let data = Prng::new(1001).bytes(4 << 20);
    let (sender, stdin) = Running::spawn_with(&mut sender(&addrs), Stdio::piped(), None);
    let mut stdin = stdin.unwrap();
    stdin.write_all(&data[..1 << 20]).unwrap();
    // The deepest hosts hold part of the stream: kill the chosen ones.
    let last = hosts.last().unwrap();
    common::wait_held(last.proc.pid(), &last.inbox, 256 * 1024);
    for &i in &killed {
        hosts[i].proc.signal(rustix::process::Signal::KILL).unwrap();
    }
    stdin.write_all(&data[1 << 20..]).unwrap();
    drop(stdin);
    let sent = sender.wait(Duration::from_secs(300));
    sent.expect_code(1);
    let report = sent.json();
    let reported = hosts_of(&report);
    assert_eq!(reported.len(), HOSTS, "{report}");
    for (i, (addr, _, status)) in reported.iter().enumerate() {
        assert_eq!(addr, &addrs[i], "{report}");
        let expected = if killed.contains(&i) { "failed" } else { "ok" };
        assert_eq!(status, expected, "host {i} ({addr}): {report}");
    }
    for (i, host) in hosts.into_iter().enumerate() {
        if killed.contains(&i) {
            assert!(list_dir(&host.inbox).is_empty(), "{:?}", host.inbox);
            continue;
        }
        host.proc.wait(Duration::from_secs(120)).expect_code(0);
        let stored = std::fs::read(host.inbox.join("s.bin")).unwrap();
        assert!(stored == data, "{:?}'s copy differs", host.inbox);
    }
}

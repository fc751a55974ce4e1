//! The progress display on a real terminal (a pseudo-terminal from util-linux `script`), 80
//! columns wide: every drawn line fits, a line per destination on request, and a destination
//! that fails is marked while the others go on.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{MIB, random_file};

/// An 80×24 terminal fed from a child's output on its own thread, which wakes waiters as the
/// screen changes.
struct Terminal(Arc<(Mutex<vt100::Parser>, Condvar)>);

const COLUMNS: u16 = 80;

impl Terminal {
    fn watch(mut from: impl Read + Send + 'static) -> Terminal {
        let rows = std::num::NonZeroU16::new(24).unwrap();
        let columns = std::num::NonZeroU16::new(COLUMNS).unwrap();
        let shared = Arc::new((
            Mutex::new(vt100::Parser::new(rows, columns, 0)),
            Condvar::new(),
        ));
        let keep = shared.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                keep.0.lock().unwrap().process(&buf[..n]);
                keep.1.notify_all();
            }
        });
        Terminal(shared)
    }

    fn rows(parser: &vt100::Parser) -> Vec<String> {
        parser.screen().rows(0, COLUMNS).collect()
    }

    /// Waits (bounded) until the screen's rows satisfy `wanted`; returns them.
    fn wait_for(&self, what: &str, wanted: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut parser = self.0.0.lock().unwrap();
        loop {
            let rows = Terminal::rows(&parser);
            if wanted(&rows) {
                return rows;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the screen never showed {what}:\n{rows:#?}"
            );
            parser = self.0.1.wait_timeout(parser, left).unwrap().0;
        }
    }

    fn screen(&self) -> Vec<String> {
        Terminal::rows(&self.0.0.lock().unwrap())
    }
}

/// The rows that show a progress bar.
fn bar_rows(rows: &[String]) -> Vec<&String> {
    rows.iter()
        .filter(|r| r.contains('░') || r.contains('█'))
        .collect()
}

#[test]
fn progress_lines_fit_80_columns_and_mark_a_failed_destination() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("s.bin");
    random_file(&source, 64 * MIB, 131);
    // Two raw destinations: one the test plays, which reads nothing until told (so the transfer
    // is under way until then), and a port where nothing listens, refused at once.
    let drained = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = drained.local_addr().unwrap().to_string();
    let b = common::free_port();
    let b = format!("127.0.0.1:{b}");
    let command = format!(
        "stty cols 80 rows 24; exec {} send --raw --per-destination {} {a} {b}",
        env!("CARGO_BIN_EXE_teecast"),
        source.display()
    );
    let mut child = common::on_terminal(&command);
    let screen = Terminal::watch(child.stdout.take().unwrap());
    let (drained, _) = drained.accept().unwrap();
    // The overall line and one per destination, each on its own row, the refused one marked
    // while the other goes on; redrawn in place, so still three rows of bars.
    let rows = screen.wait_for("the refused destination marked failed", |rows| {
        let bars = bar_rows(rows);
        bars.len() >= 3
            && bars[1].contains(&a)
            && bars[2].contains(&format!("{b} FAILED"))
            && bars[0].contains("1 of 2 failed")
    });
    assert_eq!(bar_rows(&rows).len(), 3, "{rows:#?}");
    let drainer = std::thread::spawn(move || {
        let mut drained = drained;
        std::io::copy(&mut drained, &mut std::io::sink()).unwrap()
    });
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "one destination failed");
    assert_eq!(drainer.join().unwrap(), 64 * MIB);
    // Once done, the bars are gone and the summary stands in their place.
    let rows = screen.wait_for("the summary", |rows| {
        rows.iter().any(|r| r.contains("1 of 2 destinations ok"))
    });
    assert!(bar_rows(&rows).is_empty(), "bars left behind: {rows:#?}");
    assert_fits(&screen);
}

/// `--per-destination` in a tree draws every host, the relayed ones from the reports that come
/// up the tree: a relayed host killed mid-stream is marked FAILED while the stream still runs
/// (its source, a FIFO, is held open until the screen says so).
#[test]
fn per_destination_in_a_tree_marks_a_relayed_host_that_fails_while_it_runs() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("source");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo");
    let (inboxes, hosts) = relay_hosts(dir.path(), 2);
    let (a, b) = (hosts[0].dest(), hosts[1].dest());
    let command = format!(
        "stty cols 80 rows 24; exec {} send --tree 1 --per-destination --stall-timeout 3s --name s.bin - {a} {b} < {}",
        env!("CARGO_BIN_EXE_teecast"),
        fifo.display()
    );
    let mut child = common::on_terminal(&command);
    let screen = Terminal::watch(child.stdout.take().unwrap());
    let mut source = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let data = common::Prng::new(132).bytes(4 * MIB as usize);
    source.write_all(&data[..2 * MIB as usize]).unwrap();
    // Both hosts drawn, the relayed one too.
    screen.wait_for("a line for the relayed host", |rows| {
        rows.iter().any(|r| r.contains(&a)) && rows.iter().any(|r| r.contains(&b))
    });
    common::wait_held(hosts[1].proc.pid(), &inboxes[1], MIB);
    hosts[1].proc.signal(rustix::process::Signal::KILL).unwrap();
    let rows = screen.wait_for("the relayed host marked FAILED", |rows| {
        rows.iter().any(|r| r.contains(&format!("{b} FAILED")))
    });
    assert!(
        rows.iter().any(|r| r.contains(&a) && !r.contains("FAILED")),
        "{rows:#?}"
    );
    source.write_all(&data[2 * MIB as usize..]).unwrap();
    drop(source);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "the relayed host failed");
    let mut hosts = hosts.into_iter();
    hosts.next().unwrap().wait().expect_code(0);
    assert!(std::fs::read(inboxes[0].join("s.bin")).unwrap() == data);
    assert_fits(&screen);
}

/// A relayed host that verified its copy is drawn `verified` as soon as its relay hears of it,
/// while the relay still waits for another child (here frozen with SIGSTOP until the screen
/// shows it): its report goes up after the relay's trailer, before the relay's own ack.
#[test]
fn per_destination_in_a_tree_shows_a_relayed_host_verified_before_its_relay_answers() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("s.bin");
    random_file(&source, MIB, 133);
    // Fan-out 2 over four hosts: the first relays to the third and the fourth.
    let (inboxes, hosts) = relay_hosts(dir.path(), 4);
    let addrs: Vec<String> = hosts.iter().map(|h| h.dest()).collect();
    hosts[3].proc.pause();
    let command = format!(
        "stty cols 80 rows 24; exec {} send --tree 2 --per-destination --stall-timeout 60s {} {}",
        env!("CARGO_BIN_EXE_teecast"),
        source.display(),
        addrs.join(" ")
    );
    let mut child = common::on_terminal(&command);
    let screen = Terminal::watch(child.stdout.take().unwrap());
    screen.wait_for("the third host verified", |rows| {
        rows.iter()
            .any(|r| r.contains(&format!("{} verified", addrs[2])))
    });
    // Its relay has not answered: it waits for the frozen fourth host.
    assert!(child.try_wait().unwrap().is_none(), "the send ended early");
    hosts[3].proc.resume();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    for (host, inbox) in hosts.into_iter().zip(&inboxes) {
        host.wait().expect_code(0);
        common::assert_same_file(&source, &inbox.join("s.bin"));
    }
}

/// Every row of the screen fits its width.
fn assert_fits(screen: &Terminal) {
    for r in screen.screen() {
        assert!(r.chars().count() <= usize::from(COLUMNS), "{r:?}");
    }
}

/// `n` `recv --relay --once` hosts, each storing under its own folder of `dir`.
fn relay_hosts(
    dir: &std::path::Path,
    n: usize,
) -> (Vec<std::path::PathBuf>, Vec<common::Receiver>) {
    let inboxes: Vec<_> = (0..n).map(|i| dir.join(format!("host-{i}"))).collect();
    let hosts = inboxes
        .iter()
        .map(|inbox| common::Receiver::once_in(inbox, &["--relay"]))
        .collect();
    (inboxes, hosts)
}

//! The sender's memory stays bounded whatever the size of the file: a 1 GiB file to 8
//! destinations in at most 64 MiB of resident memory.
//!
//! This test crate runs the sender as its only child process, so the peak resident set size of
//! the waited-for children (`getrusage(RUSAGE_CHILDREN)`) is the sender's own.

mod common;

use std::io::Read;
use std::time::Instant;

use common::{MIB, accept, listener, random_file, run, teecast};

/// Accepts one connection and reads it to EOF in large reads, discarding; returns the count.
fn drain(l: std::net::TcpListener) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut s = accept(&l);
        let mut buf = vec![0u8; MIB as usize];
        let mut total = 0;
        loop {
            match s.read(&mut buf) {
                Ok(0) => return total,
                Ok(n) => total += n as u64,
                Err(e) => panic!("drain: {e}"),
            }
        }
    })
}

/// Sends the 1 GiB `source` to `n` drains with `strategy`; returns the peak RSS of every sender so
/// far, which is this one's when it exceeds the earlier ones.
fn send_to_drains(source: &std::path::Path, strategy: &str, n: usize) -> u64 {
    let (listeners, dests): (Vec<_>, Vec<_>) = (0..n).map(|_| listener()).unzip();
    let drains: Vec<_> = listeners.into_iter().map(drain).collect();
    let started = Instant::now();
    let sent = run(
        teecast(["send", "--raw", "--digest", "none", "--strategy", strategy])
            .arg(source)
            .args(&dests),
    );
    sent.expect_code(0);
    for d in drains {
        assert_eq!(d.join().unwrap(), LEN, "{strategy}");
    }
    let peak = teecast_sys::children_usage().unwrap().max_rss_kib * 1024;
    eprintln!(
        "{strategy}: peak RSS so far {:.1} MiB, {:.1} s",
        peak as f64 / MIB as f64,
        started.elapsed().as_secs_f64()
    );
    peak
}

const LEN: u64 = 1024 * MIB;

#[test]
fn sender_peak_rss_for_1_gib_to_8_destinations_is_at_most_64_mib() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.bin");
    random_file(&source, LEN, 70);
    // mmap-write serves one destination only.
    let peak = send_to_drains(&source, "mmap-write", 1);
    assert!(
        peak <= 64 * MIB,
        "with --strategy mmap-write the sender's peak RSS was {:.1} MiB (limit 64 MiB)",
        peak as f64 / MIB as f64
    );
    for strategy in [
        "auto",
        "readwrite",
        "vmsplice",
        "mmap-pipe",
        "read-pipe",
        "zerocopy",
        "direct",
    ] {
        let peak = send_to_drains(&source, strategy, 8);
        assert!(peak > 0, "no resource usage recorded for the sender");
        assert!(
            peak <= 64 * MIB,
            "with --strategy {strategy} the sender's peak RSS was {:.1} MiB (limit 64 MiB)",
            peak as f64 / MIB as f64
        );
    }
}

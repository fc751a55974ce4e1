//! Torture: a separate `teecast mutate` process changes the source while `teecast send` sends it
//! to `teecast recv --once` receivers, and every copy is checked. The harness (a gate that holds
//! the transfer in flight while the file changes) is in `torture_support`.
//!
//! The soak — hundreds of these across every path, results written to docs/SOAK.md — is the
//! ignored test `soak`: `cargo test --release --test torture -- --ignored soak --nocapture`.

mod torture_support;

use torture_support::{Change, Scenario, run};

const MIB: u64 = 1 << 20;

fn scenario(strategy: &'static str, change: Change, seed: u64) -> Scenario {
    Scenario {
        strategy,
        // Not a multiple of the page size, so every path handles a tail.
        size: 32 * MIB + 12_345,
        receivers: 3,
        capture: true,
        change,
        seed,
    }
}

/// Every stable path, with random regions rewritten in place during the send: each transfer
/// succeeds and the receivers, the capture and the digest agree (on some version of the bytes).
fn rewrite_is_stable(strategy: &'static str, seed: u64) {
    for run_no in 0..2 {
        let out = run(&scenario(strategy, Change::Rewrite, seed + run_no));
        out.assert_identical_everywhere();
        assert_eq!(out.report["strategy"].as_str().is_some(), true);
    }
}

#[test]
fn readwrite_is_stable_under_rewrites() {
    rewrite_is_stable("readwrite", 100);
}

#[test]
fn vmsplice_is_stable_under_rewrites() {
    rewrite_is_stable("vmsplice", 200);
}

#[test]
fn mmap_pipe_is_stable_under_rewrites() {
    rewrite_is_stable("mmap-pipe", 300);
}

#[test]
fn read_pipe_is_stable_under_rewrites() {
    rewrite_is_stable("read-pipe", 400);
}

#[test]
fn direct_is_stable_under_rewrites() {
    rewrite_is_stable("direct", 500);
}

#[test]
fn auto_is_stable_under_rewrites() {
    rewrite_is_stable("auto", 600);
}

#[test]
fn growth_during_the_send_delivers_the_announced_length() {
    for (strategy, seed) in [("auto", 700), ("mmap-pipe", 701), ("direct", 702)] {
        let s = scenario(strategy, Change::Grow, seed);
        let out = run(&s);
        out.assert_identical_everywhere();
        assert_eq!(out.report["source_grew"], true, "{}", out.context());
        assert_eq!(out.report["bytes"], s.size, "{}", out.context());
        for (_, dir, _) in &out.receivers {
            let len = std::fs::metadata(dir.join(&out.name)).unwrap().len();
            assert_eq!(len, s.size);
        }
    }
}

fn truncation_fails_cleanly(change: Change, strategies: &[&'static str], seed: u64) {
    for (i, strategy) in strategies.iter().enumerate() {
        let out = run(&scenario(strategy, change, seed + i as u64));
        out.assert_failed_and_nothing_kept();
        assert!(
            out.sender_stderr.contains("truncated"),
            "the message must say the source was truncated\n{}",
            out.context()
        );
        assert!(
            out.report["error"]
                .as_str()
                .is_some_and(|e| e.contains("truncated")),
            "{}",
            out.context()
        );
    }
}

#[test]
fn shrinking_during_the_send_fails_cleanly() {
    truncation_fails_cleanly(
        Change::Shrink,
        &["readwrite", "mmap-pipe", "zerocopy", "direct"],
        800,
    );
}

#[test]
fn truncation_during_the_send_fails_cleanly() {
    truncation_fails_cleanly(Change::Truncate, &["read-pipe", "vmsplice", "auto"], 900);
}

/// An unstable path under rewrites: each run either succeeds with identical copies or fails with
/// the mismatch detected (exit 1, the report names a digest mismatch), and never leaves a
/// mismatching file under a final name. Returns how many runs failed.
fn unstable_never_keeps_a_bad_file(strategy: &'static str, receivers: usize, seed: u64) -> usize {
    let mut failed = 0;
    for run_no in 0..3 {
        let s = Scenario {
            receivers,
            capture: false,
            ..scenario(strategy, Change::Rewrite, seed + run_no)
        };
        let out = run(&s);
        let kept = out.assert_no_bad_file_kept();
        if out.sender.code() == Some(0) {
            assert_eq!(kept, receivers, "{}", out.context());
        } else {
            failed += 1;
            assert_eq!(out.sender.code(), Some(1), "{}", out.context());
            let refused = out.report["destinations"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| {
                    d["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("digest-mismatch"))
                })
                .count();
            assert!(refused >= 1, "{}", out.context());
            assert_eq!(kept + refused, receivers, "{}", out.context());
        }
    }
    eprintln!("{strategy}: {failed} of 3 runs failed verification (detected, nothing bad kept)");
    failed
}

#[test]
fn zerocopy_failures_are_detected_and_nothing_bad_is_kept() {
    unstable_never_keeps_a_bad_file("zerocopy", 3, 1000);
}

#[test]
fn mmap_write_failures_are_detected_and_nothing_bad_is_kept() {
    unstable_never_keeps_a_bad_file("mmap-write", 1, 1100);
}

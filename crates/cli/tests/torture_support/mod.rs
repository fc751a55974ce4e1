//! The torture harness: real `teecast send`, `teecast recv --once` and `teecast mutate` processes
//! over loopback, with a gate that holds a transfer in flight while the file is changed.
//!
//! The gate is a receiver stopped with SIGSTOP before the send begins: the kernel still accepts
//! its connection, so the sender connects, fills that socket's small receive window and then
//! waits for it (its slowest consumer gates it, docs/KERNEL.md §1.2). Nothing is synchronised by
//! sleeping: the harness waits for observable states (a listening line, a non-empty `.part` file
//! at another receiver, the writer's "started" line, exit statuses), each with a deadline.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::common::{Receiver, Running, list_dir, random_file, sha256_file, teecast};
use teecast::store::is_temporary_name;

/// How long any single wait of the harness may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(90);

/// What every receiver of a scenario is given besides `--once --dir DIR`: a stall timeout longer
/// than the gate may hold it.
const RECEIVER_ARGS: [&str; 2] = ["--stall-timeout", "80s"];

/// Waits (at most `WAIT`) until the receiver `pid` holds a non-empty file open in `dir` (its
/// temporary, which has no name there): the transfer is under way.
pub fn wait_for_partial_file(dir: &Path, pid: u32) {
    let deadline = Instant::now() + WAIT;
    let dir = dir.canonicalize().unwrap();
    loop {
        let started = std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|l| l.parent() == Some(dir.as_path()))
                    && std::fs::metadata(fd.path()).is_ok_and(|m| m.is_file() && m.len() > 0)
            })
        });
        if started {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no data arrived in {} within {WAIT:?}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A `teecast mutate` process (killed when dropped, like every [`Running`]).
pub struct Mutator {
    pub proc: Running,
}

impl Mutator {
    /// Starts the writer and returns once it reports that its loop has begun.
    pub fn start(file: &Path, mode: &str, seed: u64, count: Option<u64>) -> Mutator {
        let mut cmd = teecast(["mutate"]);
        cmd.arg(file)
            .args(["--mode", mode, "--seed", &seed.to_string()]);
        if let Some(c) = count {
            cmd.args(["--count", &c.to_string()]);
        }
        let proc = Running::spawn(&mut cmd);
        proc.wait_stdout("teecast mutate: started", WAIT);
        Mutator { proc }
    }

    /// Waits for a bounded writer (shrink, truncate, or a `--count`) to finish; asserts success
    /// and returns its "done" line.
    pub fn finish(self) -> String {
        let done = self.proc.wait(WAIT);
        done.expect_code(0);
        done.stdout
            .lines()
            .find(|l| l.contains("teecast mutate: done"))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("mutator: no \"teecast mutate: done\" line\n{done:?}"))
    }
}

/// How the source is changed while it is in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// `mutate --mode rewrite`, running until the send has ended.
    Rewrite,
    /// `mutate --mode grow --count 16`, finished before the transfer resumes.
    Grow,
    /// `mutate --mode shrink`, finished before the transfer resumes.
    Shrink,
    /// `mutate --mode truncate`, finished before the transfer resumes.
    Truncate,
}

/// One transfer under a concurrent writer.
pub struct Scenario {
    pub strategy: &'static str,
    pub size: u64,
    pub receivers: usize,
    pub capture: bool,
    pub change: Change,
    pub seed: u64,
    /// Hold the transfer in flight (a stopped receiver) until the writer is running. Without the
    /// gate the writer starts when the first bytes arrive and races the transfer freely.
    pub gate: bool,
    /// Keyed and encrypted (protocol version 3): the records are sealed from what was read.
    pub encrypted: bool,
}

/// What came out of it.
pub struct Outcome {
    pub work: tempfile::TempDir,
    pub name: String,
    pub sender: ExitStatus,
    pub report: serde_json::Value,
    pub sender_stderr: String,
    pub receivers: Vec<(ExitStatus, PathBuf, String)>,
    pub capture_dir: PathBuf,
    pub capture: Option<PathBuf>,
}

impl Outcome {
    /// The digest the sender reported (hex), if it got that far.
    pub fn digest(&self) -> Option<String> {
        self.report["digest"]["hex"].as_str().map(str::to_string)
    }

    pub fn context(&self) -> String {
        format!(
            "sender {:?}\nreport {}\nstderr:\n{}\nreceivers: {:?}",
            self.sender,
            self.report,
            self.sender_stderr,
            self.receivers
                .iter()
                .map(|(s, d, e)| (s.code(), list_dir(d), e.clone()))
                .collect::<Vec<_>>()
        )
    }

    /// Every receiver that kept a final file kept exactly the bytes of the digest, and nobody
    /// kept a temporary file. Returns how many receivers kept the file.
    pub fn assert_no_bad_file_kept(&self) -> usize {
        let mut kept = 0;
        for (status, dir, _) in &self.receivers {
            let names = list_dir(dir);
            assert!(
                names.iter().all(|n| !is_temporary_name(n)),
                "temporary file left behind: {names:?}\n{}",
                self.context()
            );
            if names.contains(&self.name) {
                let digest = self.digest().unwrap_or_else(|| {
                    panic!("a file was kept without a digest\n{}", self.context())
                });
                assert_eq!(
                    sha256_file(&dir.join(&self.name)),
                    digest,
                    "a receiver kept a file that does not match the digest\n{}",
                    self.context()
                );
                assert_eq!(status.code(), Some(0), "{}", self.context());
                kept += 1;
            } else {
                assert_eq!(
                    status.code(),
                    Some(1),
                    "a receiver that kept nothing must say so\n{}",
                    self.context()
                );
            }
        }
        kept
    }

    /// Exit 0, every receiver and the capture hold the bytes of the printed digest.
    pub fn assert_identical_everywhere(&self) {
        assert_eq!(self.sender.code(), Some(0), "{}", self.context());
        assert_eq!(self.report["ok"], true, "{}", self.context());
        let digest = self.digest().expect("digest");
        let kept = self.assert_no_bad_file_kept();
        assert_eq!(kept, self.receivers.len(), "{}", self.context());
        for (_, dir, stdout) in &self.receivers {
            assert_eq!(list_dir(dir), vec![self.name.clone()], "{}", self.context());
            assert!(
                stdout.starts_with(&digest),
                "receiver printed {stdout:?}, sender {digest}"
            );
        }
        if let Some(c) = &self.capture {
            assert_eq!(sha256_file(c), digest, "capture\n{}", self.context());
        }
    }

    /// The transfer failed cleanly: exit status 1 (not a signal), and nobody kept anything.
    pub fn assert_failed_and_nothing_kept(&self) {
        assert_eq!(self.sender.code(), Some(1), "{}", self.context());
        assert_eq!(self.report["ok"], false, "{}", self.context());
        for (status, dir, _) in &self.receivers {
            assert_eq!(list_dir(dir), Vec::<String>::new(), "{}", self.context());
            assert_eq!(status.code(), Some(1), "{}", self.context());
        }
        assert_eq!(
            list_dir(&self.capture_dir),
            Vec::<String>::new(),
            "capture kept\n{}",
            self.context()
        );
    }
}

/// Runs one transfer while the source is changed, holding it in flight with the gate (when
/// `s.gate`; the truncation checks rely on it, since without it the send may end first).
pub fn run(s: &Scenario) -> Outcome {
    let work = tempfile::tempdir().unwrap();
    let name = format!("src-{}.bin", s.seed);
    let source = work.path().join(&name);
    random_file(&source, s.size, s.seed);
    let dirs: Vec<PathBuf> = (0..s.receivers)
        .map(|i| work.path().join(format!("r{i}")))
        .collect();
    let key = work.path().join("key");
    let mut receiver_args = RECEIVER_ARGS.to_vec();
    if s.encrypted {
        let made = teecast(["keygen"]).arg(&key).status().unwrap();
        assert!(made.success(), "teecast keygen");
        receiver_args.extend(["--key-file", key.to_str().unwrap()]);
    }
    let receivers: Vec<Receiver> = dirs
        .iter()
        .map(|dir| Receiver::once_in(dir, &receiver_args))
        .collect();
    // The gate: with two receivers or more, stop the first before the send begins.
    let gated = s.gate && s.receivers >= 2;
    if gated {
        receivers[0].proc.pause();
    }
    let capture_dir = work.path().join("capture");
    std::fs::create_dir(&capture_dir).unwrap();
    let capture = s.capture.then(|| capture_dir.join("capture.bin"));
    let mut cmd = teecast([
        "send",
        "--json",
        "--digest",
        "sha256",
        "--strategy",
        s.strategy,
    ]);
    cmd.args(["--stall-timeout", "80s"]);
    if s.encrypted {
        cmd.arg("--key-file").arg(&key);
    }
    if let Some(c) = &capture {
        cmd.arg("--capture").arg(c);
    }
    cmd.arg(&source);
    for r in &receivers {
        cmd.arg(r.dest());
    }
    let sender = Running::spawn(&mut cmd);
    // The send is under way once bytes reach a receiver that is running.
    let running = usize::from(gated);
    wait_for_partial_file(&dirs[running], receivers[running].proc.pid());
    if s.gate && !gated {
        receivers[0].proc.pause();
    }
    let mode = match s.change {
        Change::Rewrite => "rewrite",
        Change::Grow => "grow",
        Change::Shrink => "shrink",
        Change::Truncate => "truncate",
    };
    let count = (s.change == Change::Grow).then_some(16);
    let mutator = Mutator::start(&source, mode, s.seed, count);
    let running = if s.change == Change::Rewrite {
        Some(mutator)
    } else {
        mutator.finish();
        None
    };
    if s.gate {
        receivers[0].proc.resume();
    }
    let sent = sender.wait(WAIT);
    drop(running);
    let results = receivers
        .into_iter()
        .zip(dirs)
        .map(|(r, dir)| {
            let done = r.proc.wait(WAIT);
            (done.status, dir, done.stdout)
        })
        .collect();
    let report: serde_json::Value = serde_json::from_str(sent.stdout.trim())
        .unwrap_or_else(|e| panic!("sender JSON {e}: {:?}\n{}", sent.stdout, sent.stderr));
    Outcome {
        work,
        name,
        sender: sent.status,
        report,
        sender_stderr: sent.stderr,
        receivers: results,
        capture_dir,
        capture,
    }
}

/// How one transfer under the writer ended, without panicking (for the soak's tally).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Exit 0 and every receiver (and the capture) holds the digest's bytes.
    Confirmed,
    /// Exit 1, a receiver refused the digest, and nobody kept a bad or temporary file.
    Detected,
    /// Some receiver kept a final file whose bytes differ from the digest (must never happen).
    BadFileKept,
    /// Anything else, with a description.
    Other(String),
}

pub fn verdict(out: &Outcome) -> Verdict {
    let digest = out.digest();
    let mut kept = 0;
    for (status, dir, _) in &out.receivers {
        let names = list_dir(dir);
        if names.iter().any(|n| is_temporary_name(n)) {
            return Verdict::Other(format!("temporary file left: {names:?}"));
        }
        if names.contains(&out.name) {
            if digest.as_deref() != Some(sha256_file(&dir.join(&out.name)).as_str()) {
                return Verdict::BadFileKept;
            }
            if status.code() != Some(0) {
                return Verdict::Other(format!("kept a file but exited {status:?}"));
            }
            kept += 1;
        }
    }
    let capture_ok = out
        .capture
        .as_ref()
        .is_none_or(|c| c.exists() && digest.as_deref() == Some(sha256_file(c).as_str()));
    match out.sender.code() {
        Some(0) if kept == out.receivers.len() && capture_ok => Verdict::Confirmed,
        Some(1) => {
            let refused = out.report["destinations"].as_array().map_or(0, |ds| {
                ds.iter()
                    .filter(|d| d["kind"] == "refused" && d["ack_status"] == "digest-mismatch")
                    .count()
            });
            if refused >= 1 && refused + kept == out.receivers.len() {
                Verdict::Detected
            } else {
                Verdict::Other(format!(
                    "failed without a detected mismatch: {}",
                    out.report
                ))
            }
        }
        other => Verdict::Other(format!(
            "sender exit {other:?}, kept {kept}, capture ok {capture_ok}"
        )),
    }
}

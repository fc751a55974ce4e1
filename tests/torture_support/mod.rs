//! The torture harness: real `teecast send`, `teecast recv --once` and `teecast mutate` processes
//! over loopback, with a gate that holds a transfer in flight while the file is changed.
//!
//! The gate is a receiver stopped with SIGSTOP before the send begins: the kernel still accepts
//! its connection, so the sender connects, fills that socket's small receive window and then
//! waits for it (its slowest consumer gates it, KERNEL.md §1.2). Nothing is synchronised by
//! sleeping: the harness waits for observable states (a listening line, a non-empty `.part` file
//! at another receiver, the writer's "started" line, exit statuses), each with a deadline.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use teecast::digest::DigestAlgorithm;
use teecast::mutate::XorShift;

/// How long any single wait of the harness may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(90);

pub fn teecast() -> Command {
    Command::new(env!("CARGO_BIN_EXE_teecast"))
}

/// A child process killed (and reaped) when dropped, even if it was stopped.
pub struct Proc {
    pub child: Child,
    pub what: String,
}

impl Proc {
    pub fn spawn(mut cmd: Command, what: &str) -> Proc {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Proc {
            child,
            what: what.to_string(),
        }
    }

    fn pid(&self) -> rustix::process::Pid {
        rustix::process::Pid::from_child(&self.child)
    }

    /// SIGSTOP: the process stops reading; its sockets keep accepting what fits in the kernel.
    pub fn pause(&self) {
        rustix::process::kill_process(self.pid(), rustix::process::Signal::STOP)
            .unwrap_or_else(|e| panic!("SIGSTOP {}: {e}", self.what));
    }

    /// SIGCONT.
    pub fn resume(&self) {
        rustix::process::kill_process(self.pid(), rustix::process::Signal::CONT)
            .unwrap_or_else(|e| panic!("SIGCONT {}: {e}", self.what));
    }

    /// Waits for the exit, at most `WAIT`.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {WAIT:?}",
                self.what
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = rustix::process::kill_process(self.pid(), rustix::process::Signal::CONT);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads a child's pipe on a thread; lines arrive on a channel and are also kept whole.
pub struct Lines {
    rx: mpsc::Receiver<String>,
    all: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Lines {
    pub fn new(pipe: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        let all = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let keep = all.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut a) = keep.lock() {
                    a.push_str(&line);
                    a.push('\n');
                }
                let _ = tx.send(line);
            }
        });
        Lines { rx, all }
    }

    /// The first line containing `needle`, waiting at most `WAIT`.
    pub fn wait_for(&self, needle: &str, what: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!(
                    "{what}: no line with {needle:?} ({e}); output so far:\n{}",
                    self.text()
                ),
            }
        }
    }

    /// Everything read so far (call after the process exited for the whole output).
    pub fn text(&self) -> String {
        self.all.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

/// A `teecast recv --once --dir DIR` on an ephemeral loopback port.
pub struct Receiver {
    pub proc: Proc,
    pub dir: PathBuf,
    pub address: String,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Receiver {
    pub fn start(dir: PathBuf) -> Receiver {
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = teecast();
        cmd.args([
            "recv",
            "--listen",
            "127.0.0.1:0",
            "--once",
            "--stall-timeout",
            "80s",
        ])
        .arg("--dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut proc = Proc::spawn(cmd, "receiver");
        let stdout = Lines::new(proc.child.stdout.take().unwrap());
        let stderr = Lines::new(proc.child.stderr.take().unwrap());
        let line = stderr.wait_for("listening on ", "receiver");
        let address = line
            .rsplit("listening on ")
            .next()
            .unwrap()
            .trim()
            .to_string();
        Receiver {
            proc,
            dir,
            address,
            stdout,
            stderr,
        }
    }

    /// Names in the receiver's directory (final files and temporary `.part` files).
    pub fn entries(&self) -> Vec<String> {
        entries(&self.dir)
    }
}

pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Waits (at most `WAIT`) until `dir` holds a non-empty `.part` file: the transfer is under way.
pub fn wait_for_partial_file(dir: &Path) {
    let deadline = Instant::now() + WAIT;
    loop {
        let started = std::fs::read_dir(dir).unwrap().any(|e| {
            let e = e.unwrap();
            e.file_name().to_string_lossy().ends_with(".part")
                && e.metadata().is_ok_and(|m| m.len() > 0)
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

/// A `teecast mutate` process.
pub struct Mutator {
    pub proc: Proc,
    pub stdout: Lines,
}

impl Mutator {
    /// Starts the writer and returns once it reports that its loop has begun.
    pub fn start(file: &Path, mode: &str, seed: u64, count: Option<u64>) -> Mutator {
        let mut cmd = teecast();
        cmd.arg("mutate")
            .arg(file)
            .args(["--mode", mode, "--seed", &seed.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(c) = count {
            cmd.args(["--count", &c.to_string()]);
        }
        let mut proc = Proc::spawn(cmd, "mutator");
        let out: ChildStdout = proc.child.stdout.take().unwrap();
        let stdout = Lines::new(out);
        stdout.wait_for("teecast mutate: started", "mutator");
        Mutator { proc, stdout }
    }

    /// Waits for a bounded writer (shrink, truncate, or a `--count`) to finish; asserts success.
    pub fn finish(mut self) -> String {
        let status = self.proc.wait();
        assert_eq!(status.code(), Some(0), "mutator failed");
        self.stdout.wait_for("teecast mutate: done", "mutator")
    }
}

/// A file of `len` seeded random bytes.
pub fn random_file(path: &Path, len: u64, seed: u64) {
    let mut rng = XorShift::new(seed);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        rng.fill(&mut block[..n]);
        out.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    out.flush().unwrap();
}

pub fn sha256_file(path: &Path) -> String {
    let mut file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut hasher = DigestAlgorithm::Sha256.hasher();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            return hasher.finish().hex();
        }
        hasher.update(&buf[..n]);
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
                .map(|(s, d, e)| (s.code(), entries(d), e.clone()))
                .collect::<Vec<_>>()
        )
    }

    /// Every receiver that kept a final file kept exactly the bytes of the digest, and nobody
    /// kept a temporary file. Returns how many receivers kept the file.
    pub fn assert_no_bad_file_kept(&self) -> usize {
        let mut kept = 0;
        for (status, dir, _) in &self.receivers {
            let names = entries(dir);
            assert!(
                names.iter().all(|n| !n.ends_with(".part")),
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
            assert_eq!(entries(dir), vec![self.name.clone()], "{}", self.context());
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
            assert_eq!(entries(dir), Vec::<String>::new(), "{}", self.context());
            assert_eq!(status.code(), Some(1), "{}", self.context());
        }
        assert_eq!(
            entries(&self.capture_dir),
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
    let receivers: Vec<Receiver> = (0..s.receivers)
        .map(|i| Receiver::start(work.path().join(format!("r{i}"))))
        .collect();
    // The gate: with two receivers or more, stop the first before the send begins.
    let gated = s.gate && s.receivers >= 2;
    if gated {
        receivers[0].proc.pause();
    }
    let capture_dir = work.path().join("capture");
    std::fs::create_dir(&capture_dir).unwrap();
    let capture = s.capture.then(|| capture_dir.join("capture.bin"));
    let mut cmd = teecast();
    cmd.args([
        "send",
        "--json",
        "--digest",
        "sha256",
        "--strategy",
        s.strategy,
    ])
    .args(["--stall-timeout", "80s"])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if let Some(c) = &capture {
        cmd.arg("--capture").arg(c);
    }
    cmd.arg(&source);
    for r in &receivers {
        cmd.arg(&r.address);
    }
    let mut sender = Proc::spawn(cmd, "sender");
    let sender_out = Lines::new(sender.child.stdout.take().unwrap());
    let sender_err = Lines::new(sender.child.stderr.take().unwrap());
    // The send is under way once bytes reach a receiver that is running.
    let watched = &receivers[usize::from(gated)];
    wait_for_partial_file(&watched.dir);
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
    let status = sender.wait();
    drop(running);
    let mut results = Vec::new();
    for mut r in receivers {
        let st = r.proc.wait();
        results.push((st, r.dir.clone(), wait_for_eof(&r.stdout)));
    }
    // The reader threads end at EOF, which follows the exit.
    let text = wait_for_eof(&sender_out);
    let report: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("sender JSON {e}: {text:?}\n{}", sender_err.text()));
    Outcome {
        work,
        name,
        sender: status,
        report,
        sender_stderr: wait_for_eof(&sender_err),
        receivers: results,
        capture_dir,
        capture,
    }
}

/// All of a pipe's output, once its reader thread has seen EOF (bounded).
fn wait_for_eof(lines: &Lines) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        match lines
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return lines.text(),
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("output did not end within {WAIT:?}"),
        }
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
        let names = entries(dir);
        if names.iter().any(|n| n.ends_with(".part")) {
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
                    .filter(|d| {
                        d["error"]
                            .as_str()
                            .is_some_and(|e| e.contains("digest-mismatch"))
                    })
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

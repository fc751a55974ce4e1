//! What the integration tests share: the real `teecast` binary, child processes that are killed
//! when dropped, receivers listening on ephemeral ports, test-owned TCP peers, random files and
//! their SHA-256.
//!
//! Every wait here has a deadline; nothing sleeps in place of synchronisation.
#![allow(dead_code)] // each test crate uses a part of this module

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// The bound on any single child process or wait in these tests.
pub const TIMEOUT: Duration = Duration::from_secs(180);

pub const MIB: u64 = 1024 * 1024;

/// A `teecast` command line for the binary under test.
pub fn teecast<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_teecast"));
    cmd.args(args);
    cmd
}

/// One output stream of a child, read line by line on its own thread: every line is kept, and
/// each new one wakes whoever waits for a particular line.
struct Lines {
    all: Arc<Mutex<String>>,
    rx: mpsc::Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl Lines {
    fn start(stream: impl Read + Send + 'static) -> Lines {
        let all = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let keep = all.clone();
        let thread = std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        keep.lock().unwrap().push_str(&line);
                        let _ = tx.send(());
                    }
                }
            }
        });
        Lines {
            all,
            rx,
            thread: Some(thread),
        }
    }

    fn text(&self) -> String {
        self.all.lock().unwrap().clone()
    }

    /// The first line so far, or to come before the deadline, that contains `needle`; `None` at
    /// the deadline or when the stream ended without one.
    fn wait_for(&self, wanted: &dyn Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.text().lines().find(|l| wanted(l)).map(str::to_string);
            if found.is_some() {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                // A new line arrived: look again.
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return self.text().lines().find(|l| wanted(l)).map(str::to_string);
                }
                Err(RecvTimeoutError::Timeout) => return None,
            }
        }
    }

    /// Everything, once the stream has reached EOF.
    fn finish(mut self) -> String {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.text()
    }
}

/// A running child with its stdout and stderr captured; killed and reaped when dropped.
pub struct Running {
    child: Child,
    stdout: Option<Lines>,
    stderr: Option<Lines>,
    what: String,
}

/// A child that has exited, with everything it printed.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// Stdout as one JSON object (`--json`); panics, showing the output, when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// The exit code (panics, with the output, when the child died of a signal).
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal: {self:?}"))
    }

    /// Asserts the exit code, showing everything the child printed when it differs.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.status.code(),
            Some(code),
            "exit status {:?}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

impl Running {
    /// Starts `cmd` with stdin null and stdout and stderr piped.
    pub fn spawn(cmd: &mut Command) -> Running {
        Self::spawn_with(cmd, Stdio::null(), None).0
    }

    /// Starts `cmd` with `stdin`, and stdout to `stdout` (piped and captured when `None`);
    /// stderr is always captured. Returns the child's stdin when `stdin` was `Stdio::piped()`.
    pub fn spawn_with(
        cmd: &mut Command,
        stdin: Stdio,
        stdout: Option<Stdio>,
    ) -> (Running, Option<ChildStdin>) {
        let what = format!("{cmd:?}");
        let mut child = cmd
            .stdin(stdin)
            .stdout(stdout.unwrap_or_else(Stdio::piped))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let stdout = child.stdout.take().map(Lines::start);
        let stderr = child.stderr.take().map(Lines::start);
        let input = child.stdin.take();
        (
            Running {
                child,
                stdout,
                stderr,
                what,
            },
            input,
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: rustix::process::Signal) -> rustix::io::Result<()> {
        rustix::process::kill_process(rustix::process::Pid::from_child(&self.child), signal)
    }

    /// SIGSTOP: the child stops running; its sockets keep accepting what fits in the kernel.
    pub fn pause(&self) {
        self.signal(rustix::process::Signal::STOP)
            .unwrap_or_else(|e| panic!("SIGSTOP {}: {e}", self.what));
    }

    /// SIGCONT, after [`Running::pause`].
    pub fn resume(&self) {
        self.signal(rustix::process::Signal::CONT)
            .unwrap_or_else(|e| panic!("SIGCONT {}: {e}", self.what));
    }

    /// What the child has printed on stderr so far.
    pub fn stderr_so_far(&self) -> String {
        self.stderr.as_ref().map(Lines::text).unwrap_or_default()
    }

    /// What the child has printed on stdout so far.
    pub fn stdout_so_far(&self) -> String {
        self.stdout.as_ref().map(Lines::text).unwrap_or_default()
    }

    /// Waits for a stderr line (printed so far or to come) containing `needle`; panics (showing
    /// the output) at the deadline.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) -> String {
        self.wait_line(true, needle, timeout)
    }

    /// Waits for the receiver's verdict on the connection from `peer` (a stderr line about it
    /// other than the one saying what it is receiving); panics at the deadline.
    pub fn wait_verdict(&self, peer: &str, timeout: Duration) -> String {
        let about = format!("{peer}: ");
        self.wait_line_where(
            true,
            &|l| l.contains(&about) && !l.contains(&format!("{about}receiving ")),
            &format!("a verdict on {peer}"),
            timeout,
        )
    }

    /// Waits for a stdout line (printed so far or to come) containing `needle`; panics (showing
    /// the output) at the deadline.
    pub fn wait_stdout(&self, needle: &str, timeout: Duration) -> String {
        self.wait_line(false, needle, timeout)
    }

    /// A stderr line (so far or to come) containing `needle`, or `None` when the child closed
    /// stderr (it exited) or the deadline passed without one.
    pub fn try_wait_stderr(&self, needle: &str, timeout: Duration) -> Option<String> {
        self.stderr
            .as_ref()
            .and_then(|l| l.wait_for(&|line| line.contains(needle), timeout))
    }

    fn wait_line(&self, stderr: bool, needle: &str, timeout: Duration) -> String {
        self.wait_line_where(
            stderr,
            &|l| l.contains(needle),
            &format!("{needle:?}"),
            timeout,
        )
    }

    fn wait_line_where(
        &self,
        stderr: bool,
        wanted: &dyn Fn(&str) -> bool,
        what: &str,
        timeout: Duration,
    ) -> String {
        let lines = if stderr { &self.stderr } else { &self.stdout };
        lines
            .as_ref()
            .and_then(|l| l.wait_for(wanted, timeout))
            .unwrap_or_else(|| {
                panic!(
                    "{}: no line containing {what} on {} within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                    self.what,
                    if stderr { "stderr" } else { "stdout" },
                    self.stdout_so_far(),
                    self.stderr_so_far()
                )
            })
    }

    /// Waits for the child to exit; kills it and panics (showing its output) at the deadline.
    pub fn wait(mut self, timeout: Duration) -> Finished {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    // Polling interval for the exit, not a synchronisation point.
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "{} did not exit within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                        self.what,
                        self.stdout_so_far(),
                        self.stderr_so_far()
                    );
                }
                Err(e) => panic!("waiting for {}: {e}", self.what),
            }
        };
        Finished {
            status,
            stdout: self.stdout.take().map(Lines::finish).unwrap_or_default(),
            stderr: self.stderr.take().map(Lines::finish).unwrap_or_default(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // A stopped child is continued first, so nothing is left stopped.
            let _ = self.signal(rustix::process::Signal::CONT);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to completion within [`TIMEOUT`].
pub fn run(cmd: &mut Command) -> Finished {
    Running::spawn(cmd).wait(TIMEOUT)
}

/// A `teecast recv` child listening on an ephemeral port of 127.0.0.1.
pub struct Receiver {
    pub proc: Running,
    pub addr: SocketAddr,
}

impl Receiver {
    /// Starts `teecast recv --listen 127.0.0.1:0 ARGS` and reads its port from stderr.
    pub fn start<S: AsRef<OsStr>>(args: &[S]) -> Receiver {
        let mut cmd = teecast(["recv", "--listen", "127.0.0.1:0"]);
        cmd.args(args);
        let proc = Running::spawn(&mut cmd);
        let line = proc.wait_stderr("teecast: listening on ", Duration::from_secs(30));
        let addr = line
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Receiver { proc, addr }
    }

    /// `recv --once --output OUT` plus `extra`.
    pub fn once_to(out: &Path, extra: &[&str]) -> Receiver {
        let mut args: Vec<&OsStr> = vec!["--once".as_ref(), "--output".as_ref(), out.as_ref()];
        args.extend(extra.iter().map(OsStr::new));
        Receiver::start(&args)
    }

    /// `recv --once --dir DIR` plus `extra`; DIR is created first.
    pub fn once_in(dir: &Path, extra: &[&str]) -> Receiver {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut args: Vec<&OsStr> = vec!["--once".as_ref(), "--dir".as_ref(), dir.as_ref()];
        args.extend(extra.iter().map(OsStr::new));
        Receiver::start(&args)
    }

    /// The destination argument for `teecast send`.
    pub fn dest(&self) -> String {
        self.addr.to_string()
    }

    pub fn wait(self) -> Finished {
        self.proc.wait(TIMEOUT)
    }
}

/// A port on 127.0.0.1 that was free a moment ago (bound, then released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A test-owned listener on an ephemeral port of 127.0.0.1.
pub fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

/// Accepts one connection within [`TIMEOUT`].
pub fn accept(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                return s;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                // Polling interval for the connection, not a synchronisation point.
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("no connection on {:?}: {e}", listener.local_addr()),
        }
    }
}

/// Accepts one connection and reads it to EOF on a thread, keeping the bytes.
pub fn collect_one(listener: TcpListener) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut s = accept(&listener);
        let mut bytes = Vec::new();
        s.read_to_end(&mut bytes).unwrap();
        bytes
    })
}

/// Accepts one connection and reads it to EOF on a thread, discarding the bytes; returns how many.
pub fn drain_one(listener: TcpListener) -> JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut s = accept(&listener);
        io::copy(&mut s, &mut io::sink()).unwrap()
    })
}

/// Deterministic pseudo-random bytes: the BLAKE3 extendable output of a seed. Fast (SIMD, and
/// built optimised even in test builds) and impossible for any layer to guess or compress.
pub struct Prng(blake3::OutputReader);

impl Prng {
    pub fn new(seed: u64) -> Prng {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"teecast test data");
        hasher.update(&seed.to_le_bytes());
        Prng(hasher.finalize_xof())
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        self.0.fill(buf);
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.fill(&mut v);
        v
    }
}

/// Writes `len` pseudo-random bytes (from `seed`) to `path`; returns their SHA-256, hex.
pub fn random_file(path: &Path, len: u64, seed: u64) -> String {
    let mut prng = Prng::new(seed);
    let mut file = File::create(path).unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        prng.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    file.sync_all().unwrap();
    hex(&hasher.finalize())
}

/// The SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> String {
    let mut file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hex(&hasher.finalize())
}

pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Asserts that two files hold the same bytes, naming the first offset where they differ.
pub fn assert_same_file(expected: &Path, actual: &Path) {
    let mut a = BufReader::with_capacity(MIB as usize, File::open(expected).unwrap());
    let mut b = BufReader::with_capacity(
        MIB as usize,
        File::open(actual).unwrap_or_else(|e| panic!("{}: {e}", actual.display())),
    );
    let (la, lb) = (
        a.get_ref().metadata().unwrap().len(),
        b.get_ref().metadata().unwrap().len(),
    );
    assert_eq!(
        la,
        lb,
        "{} is {lb} bytes, {} is {la}",
        actual.display(),
        expected.display()
    );
    let mut offset = 0u64;
    loop {
        let x = a.fill_buf().unwrap().to_vec();
        if x.is_empty() {
            return;
        }
        let mut y = vec![0u8; x.len()];
        b.read_exact(&mut y).unwrap();
        if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
            panic!(
                "{} differs from {} at byte {}",
                actual.display(),
                expected.display(),
                offset + i as u64
            );
        }
        a.consume(x.len());
        offset += x.len() as u64;
    }
}

/// Every entry of `dir` (hidden ones too), sorted.
pub fn list_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Whether `program` can be run (found on PATH).
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let p: PathBuf = dir.join(program);
            p.is_file()
        })
    })
}

/// The `<hex>  <path>` line teecast prints for a digest.
pub fn digest_line(hex: &str, path: &Path) -> String {
    format!("{hex}  {}", path.display())
}

/// Sends `source` with `teecast send ARGS SOURCE DEST` to one `recv --once --output OUT`
/// receiver (given `recv_args`); returns both once they have exited.
pub fn send_once(
    source: &Path,
    out: &Path,
    send_args: &[&str],
    recv_args: &[&str],
) -> (Finished, Finished) {
    let receiver = Receiver::once_to(out, recv_args);
    let mut cmd = teecast(["send"]);
    cmd.args(send_args).arg(source).arg(receiver.dest());
    let sent = run(&mut cmd);
    (sent, receiver.wait())
}

/// The SHA-256 of `bytes`, raw.
pub fn sha256_raw(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

/// The parent each host of `hosts` has in a relay tree of `fanout` over them, in order: `None`
/// for the sender's own children (positions 1 to `fanout`).
pub fn tree_parents(hosts: &[String], fanout: usize) -> Vec<Option<String>> {
    (0..hosts.len())
        .map(|i| (i / fanout).checked_sub(1).map(|p| hosts[p].clone()))
        .collect()
}

/// The report's hosts as (address, parent, status), in the order given.
pub fn hosts_of(report: &serde_json::Value) -> Vec<(String, Option<String>, String)> {
    report["destinations"]
        .as_array()
        .unwrap_or_else(|| panic!("no destinations in {report}"))
        .iter()
        .map(|d| {
            (
                d["address"].as_str().unwrap().to_string(),
                d["parent"].as_str().map(str::to_string),
                d["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The byte a host of a relayed send's JSON report (`destination`) resumed at, after it was
/// adopted because `dead` failed; panics unless its note says so.
pub fn resumed_at(destination: &serde_json::Value, dead: &str) -> u64 {
    let note = destination["note"]
        .as_str()
        .unwrap_or_else(|| panic!("no note in {destination}"));
    let prefix = format!("adopted after {dead} failed; resumed at byte ");
    note.strip_prefix(&prefix)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{note:?} is not {prefix:?} and a byte"))
}

/// The payload bytes process `pid` has written so far to files under `inbox` (its temporary
/// copy: anonymous, so found through its open descriptors; their file positions, as the file
/// may be allocated to its full length up front).
fn held_under(pid: u32, inbox: &Path) -> u64 {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.flatten()
        .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.starts_with(inbox)))
        .filter_map(|fd| {
            let info = format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy());
            let info = std::fs::read_to_string(info).ok()?;
            info.lines()
                .find_map(|l| l.strip_prefix("pos:"))
                .and_then(|p| p.trim().parse::<u64>().ok())
        })
        .max()
        .unwrap_or(0)
}

/// Waits (bounded: a minute) until process `pid` holds at least `bytes` of its copy under
/// `inbox`.
pub fn wait_held(pid: u32, inbox: &Path, bytes: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while held_under(pid, inbox) < bytes {
        assert!(
            std::time::Instant::now() < deadline,
            "{inbox:?} never held {bytes} bytes"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs the shell `command` on a pseudo-terminal of its own (util-linux `script`), its screen
/// on the child's stdout.
pub fn on_terminal(command: &str) -> Child {
    Command::new("script")
        .args(["-qfec", command, "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("util-linux `script` (bsdutils) is needed for a terminal")
}

/// A TCP proxy in front of a receiver that holds back its acknowledgement on the first
/// connection: it passes everything towards the receiver, and the receiver's bytes back only
/// while fewer than `payload` bytes have gone towards it; what the receiver sends after that
/// (its acknowledgement, due only after the trailer) stays unread in the proxy's socket, and
/// [`AckHolder::wait_held_back`] returns once some has arrived. When either end of that
/// connection goes away after that, the proxy resets both: to the receiver it is a parent that
/// died with the acknowledgement unread, to the sending side a receiver that died before it
/// answered. Later connections pass both ways.
pub struct AckHolder {
    pub addr: String,
    held: mpsc::Receiver<()>,
}

impl AckHolder {
    pub fn start(target: String, payload: u64) -> AckHolder {
        let (listener, addr) = listener();
        let (held_tx, held) = mpsc::channel();
        std::thread::spawn(move || {
            let mut first = true;
            for upstream in listener.incoming() {
                let Ok(upstream) = upstream else { return };
                let Ok(downstream) = TcpStream::connect(&target) else {
                    continue;
                };
                let limit = match first {
                    true => payload,
                    false => u64::MAX,
                };
                first = false;
                let held_tx = held_tx.clone();
                std::thread::spawn(move || hold_ack(upstream, downstream, limit, held_tx));
            }
        });
        AckHolder { addr, held }
    }

    /// Waits (bounded) until the receiver's acknowledgement has arrived and been held back.
    pub fn wait_held_back(&self) {
        self.held
            .recv_timeout(TIMEOUT)
            .expect("the receiver's acknowledgement never arrived at the proxy");
    }
}

/// One connection of an [`AckHolder`]: `up` is the sending side, `down` the receiver's.
fn hold_ack(up: TcpStream, down: TcpStream, limit: u64, held: mpsc::Sender<()>) {
    use rustix::event::{PollFd, PollFlags, poll};
    use std::sync::atomic::{AtomicU64, Ordering};
    let towards = Arc::new(AtomicU64::new(0));
    let (mut up_r, mut down_w) = (up.try_clone().unwrap(), down.try_clone().unwrap());
    let counted = towards.clone();
    let forward = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match up_r.read(&mut buf) {
                Ok(0) | Err(_) => {
                    if limit == u64::MAX {
                        let _ = down_w.shutdown(std::net::Shutdown::Write);
                    }
                    return;
                }
                Ok(n) => {
                    // Counted before it is written: once the receiver has the bytes, so does
                    // the count.
                    counted.fetch_add(n as u64, Ordering::SeqCst);
                    if down_w.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let (mut up_w, down_r) = (up, down);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match down_r.peek(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) if towards.load(Ordering::SeqCst) >= limit => {
                // The acknowledgement: left unread, and said so; then whichever end goes first
                // takes the other with it, by a reset.
                let _ = held.send(());
                let gone = PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR;
                loop {
                    let mut fds = [PollFd::new(&up_w, gone), PollFd::new(&down_r, gone)];
                    let _ = poll(&mut fds, None);
                    if fds.iter().any(|f| f.revents().intersects(gone)) {
                        break;
                    }
                }
                for s in [&up_w, &down_r] {
                    rustix::net::sockopt::set_socket_linger(s, Some(Duration::ZERO)).unwrap();
                }
                // Ends the forwarding thread's read; nothing goes out.
                let _ = up_w.shutdown(std::net::Shutdown::Read);
                let _ = forward.join();
                return;
            }
            Ok(_) => {
                let n = (&down_r).read(&mut buf).unwrap_or(0);
                if n == 0 || up_w.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = up_w.shutdown(std::net::Shutdown::Write);
    let _ = forward.join();
}

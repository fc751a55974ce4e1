//! The engine against a naive model: whatever the data path, the chunk, pipe and buffer sizes,
//! the number of consumers and the digest, every consumer and the capture hold exactly the bytes
//! `std::fs::read` gives for the source, and the digest is a one-shot hash of those bytes.
//!
//! The cross product is sampled deterministically (rotations and a fixed-seed xorshift), so that
//! every concrete strategy meets every size and every consumer count at least once; a failure
//! names its case, and every failing case of a matrix is listed before the test fails.
//!
//! Beyond the matrix: consumers that fail, panic or lag leave the others exact; a caller's filler
//! through `fan_out_filled` delivers what it put in; and under a writer of the source every
//! stable path still gives all its consumers one and the same stream, whose digest is the
//! model's.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::Duration;

use teecast::digest::{Digest, DigestAlgorithm, Hasher};
use teecast::engine::{
    Abandoned, CaptureError, Consumer, EngineError, FanoutConfig, FanoutReport, Filler, SourceMap,
    Unsupported, fan_out, fan_out_filled,
};
use teecast::source::Source;
use teecast::strategy::Strategy;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// The model and its helpers.

/// xorshift64*: a fixed-seed generator, so every run samples the same cases.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform enough in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `len` pseudo-random bytes, different for every seed (no period a chunk size could hide in).
fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = XorShift::new(seed ^ 0x5EED);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The naive digest: one `update` over all the bytes.
fn naive_digest(algorithm: DigestAlgorithm, bytes: &[u8]) -> Digest {
    let mut h = Hasher::new(algorithm);
    h.update(bytes);
    h.finish()
}

/// Where two byte strings first differ, in words for a failure message.
fn compare(what: &str, got: &[u8], want: &[u8]) -> Result<(), String> {
    if got == want {
        return Ok(());
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    Err(format!(
        "{what}: {} bytes, expected {}; first difference at byte {at}",
        got.len(),
        want.len()
    ))
}

/// The names in `dir`, sorted.
fn list_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------------
// The collecting consumer.

/// What a collector was given and which calls it saw; shared with the test, so it can be read
/// even when the engine drops the consumer without running it.
#[derive(Default, Debug)]
struct Seen {
    bytes: Vec<u8>,
    starts: u32,
    pipe_calls: u32,
    buffer_calls: u32,
    map_calls: u32,
    /// The largest piece handed over in one buffer or map call, and whether one was empty.
    largest_piece: usize,
    empty_piece: bool,
    finished: Option<(u64, Digest)>,
    aborts: u32,
}

/// How a collector misbehaves after each piece it takes (a read from its pipe, a buffer, a
/// range of the mapping).
enum Misbehave {
    /// It does not.
    No,
    /// It fails once it holds this many bytes.
    FailAfter(usize),
    /// It panics once it holds this many bytes.
    PanicAfter(usize),
    /// It sleeps this long after every piece.
    Slow(Duration),
    /// After its first piece it waits until this channel says go (the writer of the source has
    /// written), so the engine is held a little way into the stream.
    Gate(mpsc::Receiver<()>),
}

/// A consumer that keeps every byte it is given.
struct Collector {
    seen: Arc<Mutex<Seen>>,
    misbehave: Misbehave,
    /// Bytes per `read` from its pipe: 0 reads to the end in one go (`read_to_end`); small
    /// values make a slow consumer whose out pipe fills up.
    read_size: usize,
    /// Where `take_from_map` has the kernel write the mapped range, to read it back.
    scratch: Option<File>,
    scratch_at: u64,
}

impl Collector {
    fn new(read_size: usize) -> (Collector, Arc<Mutex<Seen>>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let c = Collector {
            seen: seen.clone(),
            misbehave: Misbehave::No,
            read_size,
            scratch: None,
            scratch_at: 0,
        };
        (c, seen)
    }

    /// A collector reading `read_size` bytes at a time that misbehaves as `misbehave` says.
    fn misbehaving(read_size: usize, misbehave: Misbehave) -> (Collector, Arc<Mutex<Seen>>) {
        let (mut c, seen) = Collector::new(read_size);
        c.misbehave = misbehave;
        (c, seen)
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap()
    }

    /// Called after every piece taken: misbehaves as told (the lock on what it saw is not held,
    /// so a panic here poisons nothing the test reads).
    fn after_piece(&mut self) -> Result<(), Fail> {
        let held = self.seen().bytes.len();
        match &mut self.misbehave {
            Misbehave::No => Ok(()),
            Misbehave::FailAfter(n) if held >= *n => Err(Fail::Io("told to fail".into())),
            Misbehave::PanicAfter(n) if held >= *n => panic!("a consumer told to panic"),
            Misbehave::FailAfter(_) | Misbehave::PanicAfter(_) => Ok(()),
            Misbehave::Slow(pause) => {
                thread::sleep(*pause);
                Ok(())
            }
            Misbehave::Gate(go) => {
                let _ = go.recv();
                self.misbehave = Misbehave::No;
                Ok(())
            }
        }
    }
}

/// Why a collector failed (read through `Debug` in failure messages).
#[derive(Debug)]
enum Fail {
    Abandoned(Abandoned),
    Io(#[allow(dead_code, reason = "shown by Debug")] String),
}

impl From<Abandoned> for Fail {
    fn from(a: Abandoned) -> Fail {
        Fail::Abandoned(a)
    }
}

fn io_fail(what: &'static str) -> impl FnOnce(io::Error) -> Fail {
    move |e| Fail::Io(format!("{what}: {e}"))
}

impl Consumer for Collector {
    type Outcome = (u64, Digest);
    type Error = Fail;

    fn start(&mut self) -> Result<(), Fail> {
        self.seen().starts += 1;
        Ok(())
    }

    fn take_pipe(&mut self, pipe: BorrowedFd<'_>) -> Result<u64, Fail> {
        self.seen().pipe_calls += 1;
        let mut file = File::from(pipe.try_clone_to_owned().map_err(io_fail("dup"))?);
        let mut total = 0u64;
        if self.read_size == 0 {
            let mut got = Vec::new();
            file.read_to_end(&mut got).map_err(io_fail("read"))?;
            total = got.len() as u64;
            self.seen().bytes.extend_from_slice(&got);
            self.after_piece()?;
        } else {
            let mut buf = vec![0u8; self.read_size];
            loop {
                let n = file.read(&mut buf).map_err(io_fail("read"))?;
                if n == 0 {
                    break;
                }
                total += n as u64;
                self.seen().bytes.extend_from_slice(&buf[..n]);
                self.after_piece()?;
            }
        }
        Ok(total)
    }

    fn take_from_buffer(&mut self, bytes: &[u8]) -> Result<(), Fail> {
        let mut seen = self.seen();
        seen.buffer_calls += 1;
        seen.largest_piece = seen.largest_piece.max(bytes.len());
        seen.empty_piece |= bytes.is_empty();
        seen.bytes.extend_from_slice(bytes);
        drop(seen);
        self.after_piece()
    }

    fn take_from_map(&mut self, map: &SourceMap, offset: usize, len: usize) -> Result<(), Fail> {
        {
            let mut seen = self.seen();
            seen.map_calls += 1;
            seen.largest_piece = seen.largest_piece.max(len);
            seen.empty_piece |= len == 0;
        }
        if self.scratch.is_none() {
            self.scratch = Some(tempfile::tempfile().map_err(io_fail("scratch file"))?);
        }
        let scratch = self.scratch.as_ref().expect("just made");
        // write() at the file's position, which is `scratch_at`: the kernel copies the mapping.
        let mut done = 0;
        while done < len {
            let n = map
                .write_to(scratch.as_fd(), offset + done, len - done)
                .map_err(io_fail("write_to"))?;
            if n == 0 {
                return Err(Fail::Io("write_to wrote nothing".into()));
            }
            done += n;
        }
        let mut back = vec![0u8; len];
        scratch
            .read_exact_at(&mut back, self.scratch_at)
            .map_err(io_fail("reading the scratch file back"))?;
        self.scratch_at += len as u64;
        self.seen().bytes.extend_from_slice(&back);
        self.after_piece()
    }

    fn finish(&mut self, length: u64, digest: &Digest) -> Result<(u64, Digest), Fail> {
        self.seen().finished = Some((length, digest.clone()));
        Ok((length, digest.clone()))
    }

    fn abort(&mut self) {
        self.seen().aborts += 1;
    }
}

/// `n` collectors of different reading speeds, and what each will have seen.
fn collectors(n: usize) -> (Vec<Collector>, Vec<Arc<Mutex<Seen>>>) {
    const READ_SIZES: [usize; 4] = [0, 1000, 4096 + 7, 64 * KIB];
    (0..n).map(|i| Collector::new(READ_SIZES[i % 4])).unzip()
}

type Report = FanoutReport<(u64, Digest), Fail>;

/// How long one fan-out may take before the test calls it a deadlock.
const DEADLINE: Duration = Duration::from_secs(60);

/// `fan_out` on a thread of its own, so a deadlock fails the test (naming its case) instead of
/// hanging it; gives the source back, for the caller to close when it chooses.
fn fan_out_timed(
    source: Source,
    consumers: Vec<Collector>,
    config: FanoutConfig,
) -> (Report, Source) {
    let (tx, rx) = mpsc::channel();
    let what = format!("{} with {config:?}", source.display());
    thread::spawn(move || {
        let report = fan_out(&source, consumers, &config);
        let _ = tx.send((report, source));
    });
    rx.recv_timeout(DEADLINE).unwrap_or_else(|e| {
        panic!("fan_out gave no report within {DEADLINE:?} ({e}): deadlock? {what}")
    })
}

// ---------------------------------------------------------------------------------------------
// One case.

/// The sizes of one configuration.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    pipe_chunk: usize,
    pipe_size: usize,
    buffer_chunk: usize,
    buffers: usize,
}

/// Every pair of (pipe chunk, pipe size) and every pair of (buffer chunk, buffers) of the small
/// sizes occurs once; a pipe path looks only at the first two, a buffer path at the last two.
const SIZES: [Sizes; 4] = [
    Sizes {
        pipe_chunk: 4096,
        pipe_size: 64 * KIB,
        buffer_chunk: 4096,
        buffers: 1,
    },
    Sizes {
        pipe_chunk: 4096,
        pipe_size: MIB,
        buffer_chunk: MIB,
        buffers: 8,
    },
    Sizes {
        pipe_chunk: 64 * KIB,
        pipe_size: 64 * KIB,
        buffer_chunk: MIB,
        buffers: 1,
    },
    Sizes {
        pipe_chunk: 64 * KIB,
        pipe_size: MIB,
        buffer_chunk: 4096,
        buffers: 8,
    },
];

#[derive(Clone, Copy, Debug)]
struct Case {
    strategy: Strategy,
    size: usize,
    sizes: Sizes,
    consumers: usize,
    digest: DigestAlgorithm,
    capture: bool,
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.sizes;
        write!(
            f,
            "{} size={} pipe_chunk={} pipe_size={} buffer_chunk={} buffers={} consumers={} digest={} capture={}",
            self.strategy,
            self.size,
            s.pipe_chunk,
            s.pipe_size,
            s.buffer_chunk,
            s.buffers,
            self.consumers,
            self.digest.name(),
            self.capture
        )
    }
}

impl Case {
    fn config(&self, capture: Option<PathBuf>) -> FanoutConfig {
        let mut config = FanoutConfig::default()
            .strategy(self.strategy)
            .digest(self.digest);
        config.capture = capture;
        config.pipe_chunk = self.sizes.pipe_chunk;
        config.pipe_size = self.sizes.pipe_size;
        config.buffer_chunk = self.sizes.buffer_chunk;
        config.buffers = self.sizes.buffers;
        config
    }
}

/// How a case ended, when it did not fail.
enum Ran {
    Passed,
    /// `direct` on a filesystem that refuses `O_DIRECT`.
    NoDirect(String),
}

/// Source files of every size asked for, made once per directory.
struct Files {
    dir: PathBuf,
    made: HashMap<usize, PathBuf>,
}

impl Files {
    fn new(dir: &Path) -> Files {
        Files {
            dir: dir.to_path_buf(),
            made: HashMap::new(),
        }
    }

    fn get(&mut self, size: usize) -> PathBuf {
        self.made
            .entry(size)
            .or_insert_with(|| {
                let path = self.dir.join(format!("source-{size}.bin"));
                std::fs::write(&path, pseudo_random_bytes(size, size as u64))
                    .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
                path
            })
            .clone()
    }
}

/// Checks everything a successful fan-out of `expected` promises.
fn check_success(
    case: &Case,
    report: &Report,
    seen: &[Arc<Mutex<Seen>>],
    expected: &[u8],
    capture: Option<&Path>,
) -> Result<(), String> {
    let naive = naive_digest(case.digest, expected);
    if report.strategy != Some(case.strategy) {
        return Err(format!("ran {:?} instead", report.strategy));
    }
    match &report.result {
        Ok(d) if *d == naive => {}
        Ok(d) => return Err(format!("digest {} != naive {}", d.hex(), naive.hex())),
        Err(e) => return Err(format!("fan_out failed: {e} ({e:?})")),
    }
    if report.bytes != expected.len() as u64 {
        return Err(format!(
            "report.bytes {} != {}",
            report.bytes,
            expected.len()
        ));
    }
    if report.source_grew {
        return Err("source_grew on a file nobody wrote".into());
    }
    if report.consumers.len() != seen.len() {
        return Err(format!(
            "{} outcomes for {} consumers",
            report.consumers.len(),
            seen.len()
        ));
    }
    for (i, (outcome, seen)) in report.consumers.iter().zip(seen).enumerate() {
        match outcome {
            Ok((len, d)) if *len == expected.len() as u64 && *d == naive => {}
            Ok((len, d)) => {
                return Err(format!(
                    "consumer {i} finished with {len} bytes, digest {}",
                    d.hex()
                ));
            }
            Err(e) => return Err(format!("consumer {i} failed: {e:?}")),
        }
        let s = seen.lock().unwrap();
        compare(&format!("consumer {i}'s bytes"), &s.bytes, expected)?;
        if s.starts != 1 || s.aborts != 0 {
            return Err(format!(
                "consumer {i}: {} starts, {} aborts",
                s.starts, s.aborts
            ));
        }
        // The data came in the form the path promises.
        let form = (s.pipe_calls, s.buffer_calls > 0, s.map_calls > 0);
        let want_form = if case.strategy.uses_pipes() {
            (1, false, false)
        } else if case.strategy == Strategy::ReadWrite {
            (0, !expected.is_empty(), false)
        } else {
            (0, false, !expected.is_empty())
        };
        if form != want_form {
            return Err(format!(
                "consumer {i}: calls (pipe, buffer?, map?) = {form:?}"
            ));
        }
        if s.empty_piece || s.largest_piece > case.sizes.buffer_chunk {
            return Err(format!(
                "consumer {i}: pieces up to {} bytes (buffer chunk {}), empty piece: {}",
                s.largest_piece, case.sizes.buffer_chunk, s.empty_piece
            ));
        }
    }
    match (capture, &report.capture) {
        (None, None) => {}
        (Some(path), Some(Ok(()))) => {
            let got = std::fs::read(path).map_err(|e| format!("reading the capture: {e}"))?;
            compare("the capture", &got, expected)?;
            let dir = path.parent().expect("capture in a directory");
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let names = list_dir(dir);
            if names != [name] {
                return Err(format!("the capture's directory holds {names:?}"));
            }
        }
        (_, other) => return Err(format!("capture outcome {other:?}")),
    }
    Ok(())
}

/// Runs one case on a file of `files`; `n` names its capture directory.
fn run_file_case(files: &mut Files, case: &Case, n: usize) -> Result<Ran, String> {
    let path = files.get(case.size);
    let expected = std::fs::read(&path).map_err(|e| format!("the model's read: {e}"))?;
    let source = Source::open(&path).map_err(|e| format!("Source::open: {e}"))?;
    let capture = case.capture.then(|| {
        let dir = files.dir.join(format!("capture-{n}"));
        std::fs::create_dir(&dir).unwrap();
        dir.join("out.bin")
    });
    let (consumers, seen) = collectors(case.consumers);
    let (report, _source) = fan_out_timed(source, consumers, case.config(capture.clone()));
    if case.strategy == Strategy::Direct
        && let Err(EngineError::Unsupported(Unsupported::NoDirect { source, .. })) = &report.result
    {
        return Ok(Ran::NoDirect(source.to_string()));
    }
    check_success(case, &report, &seen, &expected, capture.as_deref())?;
    if let Some(c) = &capture {
        std::fs::remove_dir_all(c.parent().unwrap()).unwrap();
    }
    Ok(Ran::Passed)
}

/// The sizes met under `sizes`: the edges of a page, exact multiples of both chunks and one
/// either side, and a few pseudo-random sizes (the same for every strategy).
fn sizes_for(sizes: &Sizes, seed: u64) -> Vec<usize> {
    let mut out = vec![0, 1, 4095, 4096, 4097];
    for chunk in [sizes.pipe_chunk, sizes.buffer_chunk] {
        for k in 1..=3 {
            out.extend([k * chunk - 1, k * chunk, k * chunk + 1]);
        }
    }
    let mut rng = XorShift::new(seed);
    for _ in 0..6 {
        // Log-uniform up to 2 MiB: small and large sizes alike.
        let bits = 1 + rng.below(21) as u32;
        out.push(rng.below(1 << bits) as usize + 1);
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The digests rotated through: xxh3-128 and none on most cases, blake3 on a fifth.
const DIGESTS: [DigestAlgorithm; 5] = [
    DigestAlgorithm::Xxh3_128,
    DigestAlgorithm::None,
    DigestAlgorithm::Xxh3_128,
    DigestAlgorithm::Blake3,
    DigestAlgorithm::None,
];

/// Every case of `strategy`: each size of each configuration twice, the consumer count, digest
/// and capture rotating with coprime periods (4, 5, 3), so the two runs of a size differ.
fn cases(strategy: Strategy) -> Vec<Case> {
    let mut out = Vec::new();
    for (c, sizes) in SIZES.iter().enumerate() {
        for size in sizes_for(sizes, 0xC0FFEE + c as u64) {
            for _ in 0..2 {
                let i = out.len();
                let one = strategy == Strategy::MmapWrite;
                out.push(Case {
                    strategy,
                    size,
                    sizes: *sizes,
                    consumers: if one { 1 } else { 1 + i % 4 },
                    digest: DIGESTS[i % DIGESTS.len()],
                    capture: !one && i % 3 == 0,
                });
            }
        }
    }
    out
}

/// The sample meets what it promises: every strategy every size of every configuration, every
/// consumer count (one for `mmap-write`), each digest, with and without a capture.
#[test]
fn the_sample_covers_every_size_and_consumer_count() {
    for strategy in Strategy::CONCRETE {
        let cases = cases(strategy);
        for (c, sizes) in SIZES.iter().enumerate() {
            for size in sizes_for(sizes, 0xC0FFEE + c as u64) {
                assert!(
                    cases.iter().any(|k| k.size == size
                        && k.sizes.pipe_chunk == sizes.pipe_chunk
                        && k.sizes.pipe_size == sizes.pipe_size
                        && k.sizes.buffer_chunk == sizes.buffer_chunk
                        && k.sizes.buffers == sizes.buffers),
                    "{strategy} never meets {size} under {sizes:?}"
                );
            }
        }
        for size in [0, 1, 4095, 4096, 4097, 3 * MIB - 1, 3 * MIB, 3 * MIB + 1] {
            assert!(cases.iter().any(|k| k.size == size), "{strategy}: {size}");
        }
        let one = strategy == Strategy::MmapWrite;
        let counts: &[usize] = if one { &[1] } else { &[1, 2, 3, 4] };
        for &n in counts {
            assert!(
                cases.iter().any(|k| k.consumers == n),
                "{strategy}: {n} consumers"
            );
        }
        assert!(
            cases
                .iter()
                .all(|k| k.consumers <= 4 && (!one || k.consumers == 1))
        );
        for d in [
            DigestAlgorithm::Xxh3_128,
            DigestAlgorithm::None,
            DigestAlgorithm::Blake3,
        ] {
            assert!(cases.iter().any(|k| k.digest == d), "{strategy}: {d}");
        }
        assert!(cases.iter().any(|k| !k.capture));
        assert_eq!(
            cases.iter().any(|k| k.capture),
            !one,
            "{strategy}: captures"
        );
        assert!(
            cases.iter().all(|k| k.size <= 4 * MIB),
            "{strategy}: a case too large"
        );
    }
}

struct Matrix {
    cases: usize,
    failures: Vec<String>,
    no_direct: Option<String>,
}

/// Runs every case of `strategy` on files in `dir`.
fn run_matrix(strategy: Strategy, dir: &Path) -> Matrix {
    let mut files = Files::new(dir);
    let mut m = Matrix {
        cases: 0,
        failures: Vec::new(),
        no_direct: None,
    };
    for (n, case) in cases(strategy).iter().enumerate() {
        match run_file_case(&mut files, case, n) {
            Ok(Ran::Passed) => m.cases += 1,
            Ok(Ran::NoDirect(reason)) if m.cases == 0 && m.failures.is_empty() => {
                m.no_direct = Some(reason);
                return m;
            }
            Ok(Ran::NoDirect(reason)) => {
                m.failures.push(format!(
                    "{case}: O_DIRECT refused after it worked: {reason}"
                ));
            }
            Err(e) => m.failures.push(format!("{case}: {e}")),
        }
    }
    m
}

fn assert_no_failures(what: &str, m: &Matrix) {
    assert!(
        m.failures.is_empty(),
        "{what}: {} of {} cases failed:\n{}",
        m.failures.len(),
        m.cases + m.failures.len(),
        m.failures.join("\n")
    );
    println!("{what}: {} cases passed", m.cases);
}

/// The matrix of one strategy that any filesystem serves, in a fresh temporary directory.
fn model_of(strategy: Strategy) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let m = run_matrix(strategy, dir.path());
    assert!(m.no_direct.is_none());
    assert_no_failures(strategy.name(), &m);
    assert!(m.cases > 0);
}

// ---------------------------------------------------------------------------------------------
// Files, every strategy.

#[test]
fn every_concrete_strategy_has_a_matrix() {
    // The tests below name each strategy; a new one must get a matrix too.
    assert_eq!(
        Strategy::CONCRETE,
        [
            Strategy::ReadWrite,
            Strategy::MmapWrite,
            Strategy::Vmsplice,
            Strategy::MmapPipe,
            Strategy::ReadPipe,
            Strategy::ZeroCopy,
            Strategy::Direct,
        ]
    );
}

#[test]
fn model_readwrite() {
    model_of(Strategy::ReadWrite);
}

#[test]
fn model_mmap_write() {
    model_of(Strategy::MmapWrite);
}

#[test]
fn model_vmsplice() {
    model_of(Strategy::Vmsplice);
}

#[test]
fn model_mmap_pipe() {
    model_of(Strategy::MmapPipe);
}

#[test]
fn model_read_pipe() {
    model_of(Strategy::ReadPipe);
}

#[test]
fn model_zerocopy() {
    model_of(Strategy::ZeroCopy);
}

/// `direct` in the temporary directory, skipped (with a note) only if its filesystem refuses
/// `O_DIRECT`, and on tmpfs (`/dev/shm`, which this test needs), where `auto` picks it. It must
/// run somewhere.
#[test]
fn model_direct() {
    let mut ran = 0;
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let m = run_matrix(Strategy::Direct, tmp.path());
    match &m.no_direct {
        Some(reason) => println!(
            "note: direct skipped in {}: its filesystem refuses O_DIRECT ({reason})",
            tmp.path().display()
        ),
        None => {
            assert_no_failures("direct (temporary directory)", &m);
            ran += m.cases;
        }
    }
    let shm = tempfile::tempdir_in("/dev/shm").expect("this test needs a tmpfs at /dev/shm");
    let m = run_matrix(Strategy::Direct, shm.path());
    match &m.no_direct {
        Some(reason) => println!("note: direct skipped in /dev/shm: O_DIRECT refused ({reason})"),
        None => {
            assert_no_failures("direct (/dev/shm)", &m);
            ran += m.cases;
        }
    }
    assert!(
        ran > 0,
        "direct ran nowhere: every filesystem tried refused O_DIRECT"
    );
}

/// Every digest algorithm (sha256 included) on every strategy, on a size that is no multiple of
/// anything.
#[test]
fn every_digest_on_every_strategy() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut files = Files::new(dir.path());
    let mut failures = Vec::new();
    let mut n = 0;
    for strategy in Strategy::CONCRETE {
        for digest in DigestAlgorithm::ALL {
            let one = strategy == Strategy::MmapWrite;
            let case = Case {
                strategy,
                size: 300_001,
                sizes: SIZES[n % SIZES.len()],
                consumers: if one { 1 } else { 2 },
                digest,
                capture: !one,
            };
            match run_file_case(&mut files, &case, n) {
                Ok(Ran::Passed) => {}
                Ok(Ran::NoDirect(reason)) => println!("note: {case}: O_DIRECT refused ({reason})"),
                Err(e) => failures.push(format!("{case}: {e}")),
            }
            n += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `mmap-write` serves exactly one consumer and no capture: anything else is refused before a
/// byte moves.
#[test]
fn mmap_write_refuses_a_second_consumer_and_a_capture() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("source.bin");
    std::fs::write(&path, pseudo_random_bytes(10_000, 1)).unwrap();
    for (consumers, capture) in [(2, false), (1, true), (0, false)] {
        let source = Source::open(&path).unwrap();
        let cap_dir = dir.path().join(format!("capture-{consumers}"));
        std::fs::create_dir(&cap_dir).unwrap();
        let mut config = FanoutConfig::default().strategy(Strategy::MmapWrite);
        if capture {
            config.capture = Some(cap_dir.join("out.bin"));
        }
        let (cs, seen) = collectors(consumers);
        let (report, _source) = fan_out_timed(source, cs, config);
        // No consumer at all is refused too, as either reason.
        assert!(
            matches!(
                &report.result,
                Err(EngineError::Unsupported(
                    Unsupported::MmapWriteNeedsOneConsumer
                ))
            ) || (consumers == 0
                && matches!(
                    &report.result,
                    Err(EngineError::Unsupported(Unsupported::NoConsumers))
                )),
            "{consumers} consumers, capture {capture}: {:?}",
            report.result
        );
        assert_not_started(&report, &seen, &cap_dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Streams.

/// The paths that take a stream.
const STREAM_PATHS: [Strategy; 4] = [
    Strategy::ReadWrite,
    Strategy::ReadPipe,
    Strategy::Vmsplice,
    Strategy::ZeroCopy,
];

/// Writes `bytes` into a pipe from a thread, in irregular pieces with pauses, so the engine meets
/// short reads; returns the reading end and the writer (which yields how many bytes it wrote).
/// A broken pipe is not an error: the engine may stop reading at the announced length.
fn feed_pipe(bytes: Vec<u8>, seed: u64) -> (io::PipeReader, thread::JoinHandle<usize>) {
    let (reader, mut writer) = io::pipe().expect("a pipe");
    let handle = thread::spawn(move || {
        let mut rng = XorShift::new(seed);
        let mut done = 0;
        while done < bytes.len() {
            let piece = (1 + rng.below(100_000) as usize).min(bytes.len() - done);
            match writer.write_all(&bytes[done..done + piece]) {
                Ok(()) => done += piece,
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return done,
                Err(e) => panic!("writing the stream: {e}"),
            }
            if rng.below(4) == 0 {
                thread::sleep(Duration::from_micros(200));
            }
        }
        done
    });
    (reader, handle)
}

struct StreamCase {
    strategy: Strategy,
    size: usize,
    /// The length announced (`Source::from_fd(.., Some(len), ..)`), or `None` for "to the end".
    announced: bool,
    /// Bytes after the stream's end in the pipe (only with an announced length).
    extra: usize,
    sizes: Sizes,
    consumers: usize,
    digest: DigestAlgorithm,
    capture: bool,
}

impl fmt::Display for StreamCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = Case {
            strategy: self.strategy,
            size: self.size,
            sizes: self.sizes,
            consumers: self.consumers,
            digest: self.digest,
            capture: self.capture,
        };
        write!(
            f,
            "stream {file} announced={} extra={}",
            self.announced, self.extra
        )
    }
}

fn run_stream_case(dir: &Path, case: &StreamCase, n: usize) -> Result<(), String> {
    let expected = pseudo_random_bytes(case.size, 1000 + case.size as u64);
    let mut fed = expected.clone();
    fed.extend(pseudo_random_bytes(case.extra, 7));
    let (reader, writer) = feed_pipe(fed, n as u64);
    let length = case.announced.then_some(case.size as u64);
    let source = Source::from_fd(reader, length, "-");
    let capture = case.capture.then(|| {
        let dir = dir.join(format!("stream-capture-{n}"));
        std::fs::create_dir(&dir).unwrap();
        dir.join("out.bin")
    });
    let file_case = Case {
        strategy: case.strategy,
        size: case.size,
        sizes: case.sizes,
        consumers: case.consumers,
        digest: case.digest,
        capture: case.capture,
    };
    let (consumers, seen) = collectors(case.consumers);
    let (report, source) = fan_out_timed(source, consumers, file_case.config(capture.clone()));
    drop(source); // a writer blocked on bytes past the announced end gets EPIPE
    let wrote = writer.join().expect("the writer thread");
    check_success(&file_case, &report, &seen, &expected, capture.as_deref())?;
    if case.extra == 0 && wrote != case.size {
        return Err(format!("the writer wrote {wrote} of {} bytes", case.size));
    }
    Ok(())
}

/// A pipe through `Source::from_fd`, of unknown length and of an announced length (with or
/// without bytes after it), for every path that takes a stream.
#[test]
fn streams_deliver_exactly_their_bytes() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut rng = XorShift::new(0x57EA);
    let mut fixed = vec![0, 1, 4095, 4096, 4097, 65535, 65536, 65537, MIB + 1];
    fixed.extend((0..3).map(|_| 1 + rng.below(3 * MIB as u64 / 2) as usize));
    let mut failures = Vec::new();
    let mut n = 0;
    for strategy in STREAM_PATHS {
        for &size in &fixed {
            for (announced, extra) in [(false, 0), (true, 0), (true, 1000), (true, 200 * KIB)] {
                let case = StreamCase {
                    strategy,
                    size,
                    announced,
                    extra,
                    sizes: SIZES[n % SIZES.len()],
                    consumers: 1 + n % 4,
                    digest: DIGESTS[n % DIGESTS.len()],
                    capture: n % 3 == 0,
                };
                if let Err(e) = run_stream_case(dir.path(), &case, n) {
                    failures.push(format!("{case}: {e}"));
                }
                n += 1;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {n} stream cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    println!("streams: {n} cases passed");
}

/// A child process's standard output (`cat` of a file whose bytes are known) as the stream.
#[test]
fn a_child_process_stdout_is_delivered_exactly() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("data.bin");
    let expected = pseudo_random_bytes(700_001, 99);
    std::fs::write(&path, &expected).unwrap();
    for (i, strategy) in STREAM_PATHS.into_iter().enumerate() {
        for announced in [false, true] {
            let mut child = std::process::Command::new("cat")
                .arg(&path)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("this test needs cat");
            let stdout = child.stdout.take().unwrap();
            let length = announced.then_some(expected.len() as u64);
            let source = Source::from_fd(stdout, length, "-");
            let case = Case {
                strategy,
                size: expected.len(),
                sizes: SIZES[i],
                consumers: 1 + i,
                digest: DigestAlgorithm::Xxh3_128,
                capture: false,
            };
            let (consumers, seen) = collectors(case.consumers);
            let (report, source) = fan_out_timed(source, consumers, case.config(None));
            drop(source);
            assert!(child.wait().unwrap().success());
            if let Err(e) = check_success(&case, &report, &seen, &expected, None) {
                panic!("{case} announced={announced}: {e}");
            }
        }
    }
}

/// The paths that map or seek the source refuse a stream, before anything is sent.
#[test]
fn paths_needing_a_file_refuse_a_stream() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for strategy in Strategy::CONCRETE {
        if !strategy.needs_regular_file() {
            continue;
        }
        let (reader, writer) = feed_pipe(pseudo_random_bytes(5000, 3), 3);
        let source = Source::from_fd(reader, None, "-");
        let cap_dir = dir.path().join(strategy.name());
        std::fs::create_dir(&cap_dir).unwrap();
        let config = FanoutConfig::default().strategy(strategy);
        let (cs, seen) = collectors(1);
        let (report, source) = fan_out_timed(source, cs, config);
        drop(source);
        writer.join().unwrap();
        assert!(
            matches!(&report.result,
                Err(EngineError::Unsupported(Unsupported::NeedsRegularFile(s))) if *s == strategy),
            "{strategy}: {:?}",
            report.result
        );
        assert_not_started(&report, &seen, &cap_dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions.

/// A refused fan-out: nothing went out, every consumer failed without being started, and the
/// capture directory is empty.
fn assert_not_started(report: &Report, seen: &[Arc<Mutex<Seen>>], capture_dir: &Path) {
    assert_eq!(report.bytes, 0, "{:?}", report.result);
    assert_eq!(report.consumers.len(), seen.len());
    for (i, (outcome, seen)) in report.consumers.iter().zip(seen).enumerate() {
        assert!(
            matches!(outcome, Err(Fail::Abandoned(Abandoned::NotStarted))),
            "consumer {i}: {outcome:?}"
        );
        let s = seen.lock().unwrap();
        assert!(
            s.bytes.is_empty() && s.starts == 0 && s.finished.is_none(),
            "consumer {i} was fed: {s:?}"
        );
    }
    if let Some(capture) = &report.capture {
        assert!(
            matches!(capture, Err(CaptureError::Abandoned(Abandoned::NotStarted))),
            "{capture:?}"
        );
    }
    assert_eq!(list_dir(capture_dir), Vec::<String>::new());
}

/// `pipe_chunk: 0` used to fill zero-byte chunks: the loop stopped at once and the fan-out
/// returned Ok with the digest of nothing and 0 bytes for a 100 kB file. Zero sizes (and a zero
/// buffer count) are now refused before anything is sent, on every path.
#[test]
fn regression_pipe_chunk_zero_is_refused_not_an_empty_success() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("source.bin");
    std::fs::write(&path, pseudo_random_bytes(100_000, 100)).unwrap();
    type Zero = fn(&mut FanoutConfig);
    let zeros: [(&str, Zero); 4] = [
        ("pipe_chunk", |c| c.pipe_chunk = 0),
        ("pipe_size", |c| c.pipe_size = 0),
        ("buffer_chunk", |c| c.buffer_chunk = 0),
        ("buffers", |c| c.buffers = 0),
    ];
    let mut n = 0;
    for strategy in Strategy::CONCRETE {
        for (field, zero) in zeros {
            let one = strategy == Strategy::MmapWrite;
            let mut config = FanoutConfig::default()
                .strategy(strategy)
                .digest(DigestAlgorithm::Xxh3_128);
            zero(&mut config);
            let cap_dir = dir.path().join(format!("capture-{n}"));
            std::fs::create_dir(&cap_dir).unwrap();
            if !one {
                config.capture = Some(cap_dir.join("out.bin"));
            }
            n += 1;
            let source = Source::open(&path).unwrap();
            let (cs, seen) = collectors(if one { 1 } else { 3 });
            let (report, _source) = fan_out_timed(source, cs, config.clone());
            match &report.result {
                Err(EngineError::Unsupported(Unsupported::Size { value: 0, .. })) => {}
                other => panic!(
                    "{strategy} with {field} 0: {other:?} ({} bytes)",
                    report.bytes
                ),
            }
            let refused = config.validate();
            assert!(
                matches!(
                    (&report.result, &refused),
                    (
                        Err(EngineError::Unsupported(Unsupported::Size { name: a, .. })),
                        Err(Unsupported::Size { name: b, .. }),
                    ) if a == b
                ),
                "validate() with {field} 0 says {refused:?}, fan_out {:?}",
                report.result
            );
            assert_not_started(&report, &seen, &cap_dir);
        }
    }
}

/// A stream of announced length whose pipe ends early must fail as truncated (at the byte where
/// it ended), never succeed with fewer bytes; the consumers are abandoned, the capture leaves
/// nothing behind.
#[test]
fn regression_a_stream_that_ends_early_is_truncated() {
    const ANNOUNCED: usize = 100_000;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut n = 0;
    for strategy in STREAM_PATHS {
        for given in [0, 1, 4096, 50_000, 65536, ANNOUNCED - 1] {
            let (reader, writer) = feed_pipe(pseudo_random_bytes(given, 5), n);
            let source = Source::from_fd(reader, Some(ANNOUNCED as u64), "relay");
            let cap_dir = dir.path().join(format!("capture-{n}"));
            std::fs::create_dir(&cap_dir).unwrap();
            let mut config = FanoutConfig::default()
                .strategy(strategy)
                .digest(DigestAlgorithm::Xxh3_128)
                .capture(cap_dir.join("out.bin"));
            config.pipe_chunk = 4096 << (n % 5);
            config.buffer_chunk = 4096 << (n % 3);
            let (cs, seen) = collectors(1 + (n as usize) % 4);
            let (report, source) = fan_out_timed(source, cs, config);
            drop(source);
            assert_eq!(writer.join().unwrap(), given);
            let what = format!("{strategy}, {given} of {ANNOUNCED} bytes");
            match &report.result {
                Err(EngineError::Truncated { at, expected })
                    if *at == given as u64 && *expected == ANNOUNCED as u64 => {}
                other => panic!("{what}: {other:?}"),
            }
            for (i, (outcome, seen)) in report.consumers.iter().zip(&seen).enumerate() {
                assert!(
                    matches!(outcome, Err(Fail::Abandoned(Abandoned::Transfer))),
                    "{what}: consumer {i}: {outcome:?}"
                );
                let s = seen.lock().unwrap();
                assert!(
                    s.finished.is_none() && s.aborts == 1,
                    "{what}: consumer {i}: {s:?}"
                );
                assert!(
                    s.bytes.len() <= given,
                    "{what}: consumer {i} got {} bytes",
                    s.bytes.len()
                );
                compare(
                    &what,
                    &s.bytes,
                    &pseudo_random_bytes(given, 5)[..s.bytes.len()],
                )
                .unwrap();
            }
            assert!(
                matches!(report.capture, Some(Err(_))),
                "{what}: capture {:?}",
                report.capture
            );
            assert_eq!(list_dir(&cap_dir), Vec::<String>::new(), "{what}");
            n += 1;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Consumers that fail, panic or lag; a caller's filler; a writer of the source.

/// What the well-behaved consumers and the capture of a fan-out that must succeed hold: the
/// model's bytes and digest. `misbehaving` consumers are skipped (their checks are the caller's).
fn check_the_rest(
    report: &Report,
    seen: &[Arc<Mutex<Seen>>],
    misbehaving: &[usize],
    expected: &[u8],
    naive: &Digest,
    capture: &Path,
) -> Result<(), String> {
    match &report.result {
        Ok(d) if d == naive => {}
        other => {
            return Err(format!(
                "fan_out: {other:?}, want the digest {}",
                naive.hex()
            ));
        }
    }
    if report.bytes != expected.len() as u64 {
        return Err(format!("{} bytes of {}", report.bytes, expected.len()));
    }
    for (i, (outcome, seen)) in report.consumers.iter().zip(seen).enumerate() {
        if misbehaving.contains(&i) {
            continue;
        }
        match outcome {
            Ok((len, d)) if *len == expected.len() as u64 && d == naive => {}
            other => return Err(format!("consumer {i}: {other:?}")),
        }
        compare(
            &format!("consumer {i}"),
            &seen.lock().unwrap().bytes,
            expected,
        )?;
    }
    match &report.capture {
        Some(Ok(())) => {
            let got = std::fs::read(capture).map_err(|e| format!("the capture: {e}"))?;
            compare("the capture", &got, expected)
        }
        other => Err(format!("capture: {other:?}")),
    }
}

/// A consumer that fails, one that panics and a slow one, beside two well-behaved ones and the
/// capture, on every path that serves several consumers: the failing one and the panicking one
/// are reported as such and hold a prefix of the stream; every other consumer (the slow one too)
/// and the capture hold exactly the model's bytes, and the digest is the model's.
#[test]
fn a_failing_a_panicking_and_a_slow_consumer_leave_the_others_exact() {
    const FAIL_AT: usize = 100 * KIB;
    const PANIC_AT: usize = 200 * KIB;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut files = Files::new(dir.path());
    let size = 3 * MIB + 12345;
    let path = files.get(size);
    let expected = std::fs::read(&path).unwrap();
    let naive = naive_digest(DigestAlgorithm::Xxh3_128, &expected);
    let mut failures = Vec::new();
    let shared = Strategy::CONCRETE
        .into_iter()
        .filter(|s| *s != Strategy::MmapWrite);
    for (n, strategy) in shared.enumerate() {
        let case = Case {
            strategy,
            size,
            sizes: SIZES[n % SIZES.len()],
            consumers: 5,
            digest: DigestAlgorithm::Xxh3_128,
            capture: true,
        };
        let cap_dir = dir.path().join(format!("capture-{n}"));
        std::fs::create_dir(&cap_dir).unwrap();
        let capture = cap_dir.join("out.bin");
        let (consumers, seen): (Vec<_>, Vec<_>) = [
            (0, Misbehave::No),
            (4096 + 7, Misbehave::FailAfter(FAIL_AT)),
            (1000, Misbehave::PanicAfter(PANIC_AT)),
            (64 * KIB, Misbehave::Slow(Duration::from_millis(1))),
            (64 * KIB, Misbehave::No),
        ]
        .into_iter()
        .map(|(read_size, m)| Collector::misbehaving(read_size, m))
        .unzip();
        let source = Source::open(&path).unwrap();
        let (report, _source) =
            fan_out_timed(source, consumers, case.config(Some(capture.clone())));
        if let Err(EngineError::Unsupported(Unsupported::NoDirect { source, .. })) = &report.result
        {
            println!("note: {case}: O_DIRECT refused ({source})");
            continue;
        }
        let check = || -> Result<(), String> {
            check_the_rest(&report, &seen, &[1, 2], &expected, &naive, &capture)?;
            for (i, want, at) in [(1, "told to fail", FAIL_AT), (2, "Panicked", PANIC_AT)] {
                let outcome = format!("{:?}", report.consumers[i]);
                if !outcome.starts_with("Err") || !outcome.contains(want) {
                    return Err(format!("consumer {i}: {outcome}, want an error: {want}"));
                }
                let s = seen[i].lock().unwrap();
                if s.bytes.len() < at || s.finished.is_some() {
                    return Err(format!(
                        "consumer {i}: {} bytes, finished {:?}",
                        s.bytes.len(),
                        s.finished
                    ));
                }
                compare(
                    &format!("consumer {i}"),
                    &s.bytes,
                    &expected[..s.bytes.len()],
                )?;
            }
            Ok(())
        };
        if let Err(e) = check() {
            failures.push(format!("{case}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A caller's filler for [`fan_out_filled`]: `bytes` written into the engine's pipe in
/// irregular pieces, never more than asked, hashed by the filler itself when `hashes`.
struct BytesFiller {
    bytes: Vec<u8>,
    at: usize,
    rng: XorShift,
    hashes: bool,
}

impl Filler for BytesFiller {
    fn fill(
        &mut self,
        pipe: BorrowedFd<'_>,
        offset: u64,
        want: usize,
        hasher: Option<&mut Hasher>,
    ) -> Result<usize, EngineError> {
        let fail = |what: String| EngineError::Source {
            op: "the test's filler",
            source: io::Error::other(what),
        };
        if offset != self.at as u64 {
            return Err(fail(format!("asked from {offset}, at {}", self.at)));
        }
        let left = self.bytes.len() - self.at;
        let piece = (1 + self.rng.below(want.max(1) as u64) as usize)
            .min(want)
            .min(left);
        if piece == 0 {
            return Ok(0);
        }
        let n = teecast_sys::write(pipe, &self.bytes[self.at..self.at + piece])
            .map_err(|e| fail(format!("write: {e}")))?;
        if let Some(h) = hasher {
            h.update(&self.bytes[self.at..self.at + n]);
        }
        self.at += n;
        Ok(n)
    }

    fn hashes(&self) -> bool {
        self.hashes
    }
}

/// `fan_out_filled` over a caller's filler, of announced and of unknown length, hashing itself
/// or leaving the digest to the engine, with one to four consumers (one of them slow) and the
/// capture: every consumer and the capture hold the filler's bytes, and the digest is theirs.
#[test]
fn fan_out_filled_delivers_exactly_what_the_filler_put_in() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut failures = Vec::new();
    let mut n = 0;
    for size in [0, 1, 4097, 300_001, 2 * MIB + 3] {
        for hashes in [false, true] {
            for announced in [false, true] {
                let bytes = pseudo_random_bytes(size, 500 + n as u64);
                let digest = DIGESTS[n % DIGESTS.len()];
                let naive = naive_digest(digest, &bytes);
                let cap_dir = dir.path().join(format!("filled-{n}"));
                std::fs::create_dir(&cap_dir).unwrap();
                let capture = cap_dir.join("out.bin");
                let sizes = SIZES[n % SIZES.len()];
                let mut config = FanoutConfig::default()
                    .digest(digest)
                    .capture(capture.clone());
                config.pipe_chunk = sizes.pipe_chunk;
                config.pipe_size = sizes.pipe_size;
                let count = 1 + n % 4;
                let (consumers, seen): (Vec<_>, Vec<_>) = (0..count)
                    .map(|i| match i {
                        1 => Collector::misbehaving(
                            4096,
                            Misbehave::Slow(Duration::from_micros(300)),
                        ),
                        _ => Collector::new([0, 1000, 4096 + 7, 64 * KIB][i]),
                    })
                    .unzip();
                let filler = BytesFiller {
                    bytes: bytes.clone(),
                    at: 0,
                    rng: XorShift::new(n as u64 + 1),
                    hashes,
                };
                let length = announced.then_some(size as u64);
                let (tx, rx) = mpsc::channel();
                thread::spawn(move || {
                    let _ = tx.send(fan_out_filled(filler, length, consumers, &config));
                });
                let report = rx
                    .recv_timeout(DEADLINE)
                    .expect("fan_out_filled gave no report: deadlock?");
                if let Err(e) = check_the_rest(&report, &seen, &[], &bytes, &naive, &capture) {
                    failures.push(format!(
                        "{size} bytes, filler hashes {hashes}, announced {announced}, {count} consumers, {}: {e}",
                        digest.name()
                    ));
                }
                n += 1;
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A writer rewrites regions of the source while each stable path sends it. The stable promise,
/// against the model: every consumer and the capture hold one and the same stream (not a
/// snapshot of the file, but one copy for all) of the file's length, the digest is the model's
/// digest of that stream, and each of its bytes is the file's original or one the writer wrote.
/// A gated consumer holds the engine near the start until the writer has written, so the
/// writer's bytes must show in the stream.
#[test]
fn a_concurrent_writer_cannot_split_a_stable_path() {
    const SIZE: usize = 4 * MIB;
    const REGION: usize = 256 * KIB;
    /// Rounds written before the gate opens.
    const BEFORE_GO: usize = 8;
    let dir = tempfile::tempdir().expect("a temporary directory");
    // The original bytes are below 128 and the writer's are 128 or more, so each byte of the
    // stream says whose it is.
    let original: Vec<u8> = pseudo_random_bytes(SIZE, 77)
        .iter()
        .map(|b| b & 0x7f)
        .collect();
    let mut failures = Vec::new();
    let stable = Strategy::CONCRETE.into_iter().filter(|s| s.is_stable());
    for (n, strategy) in stable.enumerate() {
        let path = dir.path().join(format!("written-{n}.bin"));
        std::fs::write(&path, &original).unwrap();
        let cap_dir = dir.path().join(format!("written-capture-{n}"));
        std::fs::create_dir(&cap_dir).unwrap();
        let capture = cap_dir.join("out.bin");
        let case = Case {
            strategy,
            size: SIZE,
            sizes: SIZES[0],
            consumers: 3,
            digest: DigestAlgorithm::Xxh3_128,
            capture: true,
        };
        let (go_tx, go_rx) = mpsc::channel();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let stop = stop.clone();
            thread::spawn(move || {
                let mut rng = XorShift::new(n as u64 + 9);
                let mut rounds = 0;
                // Regions from 1 MiB on: past anything the engine can have read before the
                // gate opens (a few pipes or buffers of 64 KiB at most).
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let at = MIB + rng.below((SIZE - MIB - REGION) as u64) as usize;
                    let value = 128 + (rounds % 128) as u8;
                    file.write_all_at(&[value; REGION], at as u64).unwrap();
                    rounds += 1;
                    if rounds == BEFORE_GO {
                        let _ = go_tx.send(());
                    }
                }
                rounds
            })
        };
        let (consumers, seen): (Vec<_>, Vec<_>) = [
            Collector::misbehaving(4096 + 7, Misbehave::Gate(go_rx)),
            Collector::new(0),
            Collector::new(64 * KIB),
        ]
        .into_iter()
        .unzip();
        let source = Source::open(&path).unwrap();
        let (report, _source) =
            fan_out_timed(source, consumers, case.config(Some(capture.clone())));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let rounds = writer.join().expect("the writer");
        if let Err(EngineError::Unsupported(Unsupported::NoDirect { source, .. })) = &report.result
        {
            println!("note: {case}: O_DIRECT refused ({source})");
            continue;
        }
        let sent = seen[0].lock().unwrap().bytes.clone();
        let naive = naive_digest(case.digest, &sent);
        let check = || -> Result<(), String> {
            if sent.len() != SIZE {
                return Err(format!(
                    "the gated consumer holds {} bytes of {SIZE}",
                    sent.len()
                ));
            }
            check_the_rest(&report, &seen, &[], &sent, &naive, &capture)?;
            if let Some(i) = (0..SIZE).find(|&i| sent[i] != original[i] && sent[i] < 128) {
                return Err(format!(
                    "byte {i} is {}, neither the original {} nor written",
                    sent[i], original[i]
                ));
            }
            let written = sent.iter().filter(|&&b| b >= 128).count();
            if rounds < BEFORE_GO || written == 0 {
                return Err(format!(
                    "{rounds} rounds written, {written} written bytes in the stream: the writer did not overlap the send"
                ));
            }
            Ok(())
        };
        if let Err(e) = check() {
            failures.push(format!("{case}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

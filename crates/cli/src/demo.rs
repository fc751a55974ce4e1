//! `teecast demo`: a whole transfer on this machine, with nothing to set up — a file of random
//! bytes sent to three receivers on loopback ports with a capture, then every copy checked.
//!
//! It works under `/dev/shm` when that is a tmpfs, so the figures it prints show the network
//! path and teecast rather than a disk: on a disk, each receiver's fsync before it publishes its
//! copy waits for the device (a demo on an ext4 `/tmp` printed 94 MiB/s per receiver, most of it
//! fsync). Elsewhere it works in the temporary directory and says so.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use crate::mutate::{self, MutateLimits, Mutation};
use teecast::digest::{DigestAlgorithm, Hasher};
use teecast::proto::wire::AckStatus;
use teecast::recv::{self, RecvOptions, Target};
use teecast::send::{self, SendOptions};
use teecast::send::{Delivered, DestFailure};
use teecast::source::Source;
use teecast::strategy::Strategy;

use crate::exit::{EXIT_FAILED, EXIT_OK};
use crate::out::{errln, outln};
use crate::report;

const RECEIVERS: usize = 3;

pub fn run(size_mib: u64) -> u8 {
    let code = match demo(size_mib) {
        Ok(true) => EXIT_OK,
        Ok(false) => EXIT_FAILED,
        Err(e) => {
            errln!("teecast demo: {e}");
            EXIT_FAILED
        }
    };
    unless_interrupted(code)
}

fn demo(size_mib: u64) -> std::io::Result<bool> {
    let work = TempDir::new()?;
    outln!(
        "demo's report",
        "teecast demo: working in {} ({})",
        work.0.display(),
        work.1
    );
    let source_path = work.0.join("demo.bin");
    outln!(
        "demo's report",
        "teecast demo: writing {size_mib} MiB of random bytes to {}",
        source_path.display()
    );
    write_random(&source_path, size_mib << 20)?;

    let mut addresses = Vec::new();
    let mut receivers = Vec::new();
    for i in 0..RECEIVERS {
        let dir = work.0.join(format!("receiver-{i}"));
        std::fs::create_dir(&dir)?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        addresses.push(listener.local_addr()?.to_string());
        let options = RecvOptions::new(Target::Dir(dir.clone()));
        receivers.push((
            dir,
            std::thread::spawn(move || {
                recv::serve(&listener, &options, true, &|peer, event| {
                    if let recv::Event::Done(Err(e)) = event {
                        errln!("teecast demo: receiver: {peer:?}: {e}");
                    }
                })
            }),
        ));
    }
    outln!(
        "demo's report",
        "teecast demo: receivers listening on {}",
        addresses.join(", ")
    );

    let source = Source::open(&source_path).map_err(std::io::Error::other)?;
    let capture = work.0.join("capture.bin");
    let options = SendOptions::default().capture(&capture);
    let result = send::send(&source, &addresses, &options);
    let stored: Vec<bool> = receivers
        .into_iter()
        .map(|(_, h)| h.join().ok().and_then(Result::ok).unwrap_or(false))
        .collect();
    report::summary(&result, false);

    let Some(digest) = &result.digest else {
        outln!(
            "demo's report",
            "teecast demo: the transfer failed: {}",
            result
                .error
                .as_ref()
                .map_or_else(|| "?".to_string(), ToString::to_string)
        );
        return Ok(false);
    };
    for (i, d) in result.destinations.iter().enumerate() {
        outln!(
            "demo's report",
            "teecast demo: receiver-{i} ({}): {} in {:.2} s, {}/s{}",
            d.address,
            report::human_bytes(d.bytes),
            d.elapsed.as_secs_f64(),
            report::human_bytes((d.bytes as f64 / d.elapsed.as_secs_f64().max(1e-9)) as u64),
            if d.is_ok() {
                ", stored and confirmed"
            } else {
                ", FAILED"
            }
        );
    }
    outln!(
        "demo's report",
        "teecast demo: sent {} via {} in {:.2} s ({}/s per destination), {} {}",
        report::human_bytes(result.bytes),
        result.strategy,
        result.elapsed.as_secs_f64(),
        report::human_bytes((result.bytes as f64 / result.elapsed.as_secs_f64().max(1e-9)) as u64),
        digest.algorithm,
        digest.hex()
    );
    // Check every copy independently, by reading it back.
    let mut copies: Vec<PathBuf> = (0..RECEIVERS)
        .map(|i| work.0.join(format!("receiver-{i}")).join("demo.bin"))
        .collect();
    copies.push(capture);
    let mut all_ok = result.is_success() && stored.iter().all(|s| *s);
    for path in &copies {
        let got = hash_file(path, digest.algorithm)?;
        let same = got == digest.hex();
        all_ok &= same;
        outln!(
            "demo's report",
            "teecast demo: {}: {}",
            path.strip_prefix(&work.0).unwrap_or(path).display(),
            if same { "identical" } else { "DIFFERENT" }
        );
    }
    outln!(
        "demo's report",
        "teecast demo: {}",
        if all_ok {
            "every destination and the capture hold the same bytes, confirmed"
        } else {
            "FAILED"
        }
    );
    Ok(all_ok)
}

fn hash_file(path: &Path, algorithm: DigestAlgorithm) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Hasher::new(algorithm);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finish().hex());
        }
        hasher.update(&buf[..n]);
    }
}

/// Fills `path` with `len` pseudo-random bytes (xorshift64*, seeded from the clock).
fn write_random(path: &Path, len: u64) -> std::io::Result<()> {
    let mut state = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64)
        | 1;
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            word.copy_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        let n = usize::try_from(left.min(block.len() as u64)).unwrap_or(block.len());
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    out.flush()
}

/// `teecast demo --mutate`: the same transfer while another thread rewrites random regions of the
/// file, first on `zerocopy` (which can fail: detected, nothing kept), then on the default path
/// (which cannot).
pub fn run_mutate(size_mib: u64) -> u8 {
    let code = match demo_mutate(size_mib) {
        Ok(true) => EXIT_OK,
        Ok(false) => EXIT_FAILED,
        Err(e) => {
            errln!("teecast demo: {e}");
            EXIT_FAILED
        }
    };
    unless_interrupted(code)
}

/// What one transfer under the writer did.
struct MutatedRun {
    /// The path the send took.
    strategy: Strategy,
    ok: bool,
    confirmed: usize,
    refused: usize,
    /// Final files whose bytes differ from the digest (must stay 0).
    bad_files_kept: usize,
    /// Regions the writer rewrote while the send ran (0 would mean the run proved nothing).
    rewrites: u64,
}

/// Tries zerocopy up to this many times to show a failure.
const ZEROCOPY_ATTEMPTS: u64 = 5;

fn demo_mutate(size_mib: u64) -> std::io::Result<bool> {
    let work = TempDir::new()?;
    outln!(
        "demo's report",
        "teecast demo: working in {} ({})",
        work.0.display(),
        work.1
    );
    let source_path = work.0.join("demo.bin");
    outln!(
        "demo's report",
        "teecast demo: {size_mib} MiB to {RECEIVERS} receivers while another thread rewrites random regions of the file"
    );
    write_random(&source_path, size_mib << 20)?;
    let mut zerocopy_failed = 0;
    let mut bad = 0;
    for attempt in 1..=ZEROCOPY_ATTEMPTS {
        let r = mutated_transfer(&work.0, &source_path, Strategy::ZeroCopy, attempt)?;
        bad += r.bad_files_kept;
        outln!(
            "demo's report",
            "teecast demo: zerocopy, run {attempt}: {}: {} confirmed, {} refused the digest, {} bad files kept, {} regions rewritten meanwhile",
            if r.ok { "ok" } else { "FAILED" },
            r.confirmed,
            r.refused,
            r.bad_files_kept,
            r.rewrites
        );
        if !r.ok {
            zerocopy_failed += 1;
            break;
        }
    }
    let r = mutated_transfer(&work.0, &source_path, Strategy::Auto, 0)?;
    bad += r.bad_files_kept;
    outln!(
        "demo's report",
        "teecast demo: default path ({}): {}: {} confirmed, {} refused, {} bad files kept, {} regions rewritten meanwhile",
        r.strategy,
        if r.ok { "ok" } else { "FAILED" },
        r.confirmed,
        r.refused,
        r.bad_files_kept,
        r.rewrites
    );
    if zerocopy_failed > 0 {
        outln!(
            "demo's report",
            "teecast demo: zerocopy sent page-cache pages the writer changed in flight; the receivers caught it and kept nothing"
        );
    } else {
        outln!(
            "demo's report",
            "teecast demo: zerocopy got lucky {ZEROCOPY_ATTEMPTS} times (it can fail; see docs/SOAK.md for how often)"
        );
    }
    outln!(
        "demo's report",
        "teecast demo: the default path copies once into private memory, so every copy matched{}",
        if r.ok {
            ""
        } else {
            " — NOT this time: FAILED"
        }
    );
    Ok(r.ok && bad == 0)
}

fn mutated_transfer(
    work: &Path,
    source_path: &Path,
    strategy: Strategy,
    seed: u64,
) -> std::io::Result<MutatedRun> {
    let mut addresses = Vec::new();
    let mut receivers = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..RECEIVERS {
        let dir = work.join(format!("{strategy}-{seed}-receiver-{i}"));
        std::fs::create_dir(&dir)?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        addresses.push(listener.local_addr()?.to_string());
        let options = RecvOptions::new(Target::Dir(dir.clone()));
        dirs.push(dir);
        receivers.push(std::thread::spawn(move || {
            recv::serve(&listener, &options, true, &|_, _| {})
        }));
    }
    let source = Source::open(source_path).map_err(std::io::Error::other)?;
    let options = SendOptions::default().strategy(strategy);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (result, written) = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = scope.spawn(|| {
            mutate::run(
                source_path,
                Mutation::Rewrite,
                seed,
                MutateLimits::default(),
                &stop,
                move || {
                    let _ = tx.send(());
                },
            )
        });
        // The writer is running before the send begins (or has already failed, and says why).
        let _ = rx.recv();
        let result = send::send(&source, &addresses, &options);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let written = writer
            .join()
            .map_err(|_| std::io::Error::other("the writer panicked"))?;
        written.map(|w| (result, w))
    })?;
    for h in receivers {
        let _ = h.join();
    }
    let mut run = MutatedRun {
        strategy: result.strategy,
        ok: result.is_success(),
        confirmed: 0,
        refused: 0,
        bad_files_kept: 0,
        rewrites: written.operations,
    };
    for d in &result.destinations {
        match &d.outcome {
            Ok(Delivered::Confirmed { .. } | Delivered::Relayed) => run.confirmed += 1,
            Err(DestFailure::Refused {
                status: AckStatus::DigestMismatch,
                ..
            }) => run.refused += 1,
            _ => {}
        }
    }
    for dir in &dirs {
        let copy = dir.join("demo.bin");
        if copy.exists() {
            let same = result
                .digest
                .as_ref()
                .is_some_and(|d| hash_file(&copy, d.algorithm).is_ok_and(|h| h == d.hex()));
            run.bad_files_kept += usize::from(!same);
        }
    }
    Ok(run)
}

/// Set by the signal thread before it removes the demo's directory and exits with 128 + the
/// signal: whatever the transfer then fails on (its files are going), the exit is the signal's.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Leaves the exit to the signal thread once it has begun: it removes the directory and exits.
fn unless_interrupted(code: u8) -> u8 {
    while INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::park_timeout(std::time::Duration::from_secs(1));
    }
    code
}

/// Where the demo works, and why there: `/dev/shm` when it is a tmpfs (memory), else the
/// temporary directory.
fn work_base() -> (PathBuf, &'static str) {
    let shm = Path::new("/dev/shm");
    let tmpfs = teecast::store::is_on_tmpfs(shm);
    if tmpfs {
        (
            shm.to_path_buf(),
            "tmpfs, in memory: the times below are the network path and teecast, not a disk",
        )
    } else {
        (
            std::env::temp_dir(),
            "/dev/shm is not a tmpfs here: on a disk the receivers' fsync is part of the times below",
        )
    }
}

/// A directory removed with everything in it when dropped, or when the demo is interrupted
/// (SIGINT, SIGTERM, SIGHUP): a demo stopped with Ctrl-C leaves nothing behind. Beside it, why
/// it is where it is.
struct TempDir(PathBuf, &'static str);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        let (base, why) = work_base();
        let base = base.join(format!("teecast-demo-{}", std::process::id()));
        std::fs::create_dir_all(&base)?;
        let on_signal = base.clone();
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
        ])?;
        std::thread::spawn(move || {
            if let Some(signal) = signals.forever().next() {
                INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
                let _ = std::fs::remove_dir_all(&on_signal);
                errln!("teecast demo: interrupted; removed {}", on_signal.display());
                std::process::exit(128 + signal);
            }
        });
        Ok(TempDir(base, why))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

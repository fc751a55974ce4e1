//! `teecast-bench`: the benchmark's helpers (`bench/run.py`): a receiver that costs almost
//! nothing, the two limits the contenders are measured against, and a CPU and memory meter.
//!
//! - `drain` accepts connections and splices each socket into `/dev/null` (socket → pipe →
//!   `/dev/null`, no copy; docs/KERNEL.md §4), so a receiver takes as little CPU as the kernel allows.
//! - `memcpy` measures this machine's memory copy bandwidth: the price of one CPU copy.
//! - `sendfile` sends a file with plain `sendfile(2)` to each destination, one thread each:
//!   no protocol, no digest, no stability; what the kernel alone does.
//! - `rusage` runs a command and writes the CPU time and peak RSS of its whole process tree;
//!   measured from this small process, so the figures do not include the memory of whatever
//!   started the benchmark (a child's peak RSS starts at its parent's size when it is forked).

#![deny(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Instant;

use teecast_sys::{self as sys, Pipe, SpliceFlags};

use clap::{Args, Parser, Subcommand};

/// Exit code: the helper did its work.
const EXIT_OK: u8 = 0;
/// Exit code: the work failed.
const EXIT_FAILED: u8 = 1;
/// Exit code: bad usage.
const EXIT_USAGE: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "teecast-bench",
    about = "Helpers of teecast's benchmark (bench/run.py)"
)]
struct Cli {
    #[command(subcommand)]
    helper: Helper,
}

#[derive(Subcommand, Debug)]
enum Helper {
    /// Accept connections and splice each into /dev/null (benchmark receiver).
    Drain(DrainArgs),
    /// Measure this machine's memory copy bandwidth in GB/s (benchmark limit).
    Memcpy(BenchMemcpyArgs),
    /// Send a file with plain sendfile(2), one thread per destination (benchmark limit).
    Sendfile(BenchSendfileArgs),
    /// Run a command; write the CPU time and peak RSS of its process tree (benchmark figures).
    Rusage(BenchRusageArgs),
}

#[derive(Args, Debug)]
struct BenchRusageArgs {
    /// Where to write "user_secs system_secs max_rss_kib".
    #[arg(long)]
    out: PathBuf,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Args, Debug)]
struct DrainArgs {
    /// Address to listen on, e.g. 127.0.0.1:0.
    #[arg(long)]
    listen: String,
    /// Connections to accept before exiting.
    #[arg(long, default_value_t = 1)]
    count: usize,
}

#[derive(Args, Debug)]
struct BenchMemcpyArgs {
    /// Size of each buffer, in MiB.
    #[arg(long, default_value_t = 256)]
    size_mib: usize,
    /// Copies timed; the best is reported.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
}

#[derive(Args, Debug)]
struct BenchSendfileArgs {
    /// The file to send.
    source: PathBuf,
    /// Receivers as IP:PORT.
    #[arg(required = true)]
    destinations: Vec<String>,
}

fn main() -> std::process::ExitCode {
    teecast_sys::ignore_sigpipe();
    std::process::ExitCode::from(match Cli::parse().helper {
        Helper::Drain(args) => drain(&args.listen, args.count),
        Helper::Memcpy(args) => memcpy(args.size_mib, args.rounds),
        Helper::Sendfile(args) => sendfile(&args.source, &args.destinations),
        Helper::Rusage(args) => rusage(&args.out, &args.command),
    })
}

/// Size asked for the drain's pipe: 1 MiB, the unprivileged maximum (docs/KERNEL.md §1.5).
const DRAIN_PIPE_SIZE: usize = 1 << 20;

/// `teecast-bench drain`: listens on `listen`, accepts `count` connections, splices each into
/// `/dev/null` on its own thread, then prints `PEER BYTES` per connection on stdout.
fn drain(listen: &str, count: usize) -> u8 {
    let listener = match TcpListener::bind(listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("teecast: cannot listen on {listen}: {e}");
            return EXIT_USAGE;
        }
    };
    match listener.local_addr() {
        Ok(addr) => eprintln!("teecast: listening on {addr}"),
        Err(e) => {
            eprintln!("teecast: {e}");
            return EXIT_FAILED;
        }
    }
    let mut workers = Vec::with_capacity(count);
    for _ in 0..count {
        match listener.accept() {
            Ok((stream, peer)) => {
                workers.push((peer, thread::spawn(move || drain_one(&stream))));
            }
            Err(e) => {
                eprintln!("teecast: accepting a connection: {e}");
                return EXIT_FAILED;
            }
        }
    }
    let mut code = EXIT_OK;
    let mut out = io::stdout().lock();
    for (peer, worker) in workers {
        match worker.join() {
            Ok(Ok(bytes)) => {
                let _ = writeln!(out, "{peer} {bytes}");
            }
            Ok(Err(e)) => {
                eprintln!("teecast: {peer}: {e}");
                code = EXIT_FAILED;
            }
            Err(_) => {
                eprintln!("teecast: {peer}: the drain thread panicked");
                code = EXIT_FAILED;
            }
        }
    }
    code
}

/// Splices one socket into `/dev/null` until the peer closes; returns the bytes drained.
fn drain_one(stream: &TcpStream) -> io::Result<u64> {
    let null = OpenOptions::new().write(true).open("/dev/null")?;
    let pipe = Pipe::with_size(DRAIN_PIPE_SIZE)?;
    let mut total = 0u64;
    loop {
        let n = sys::splice(
            stream.as_fd(),
            pipe.write.as_fd(),
            pipe.capacity(),
            SpliceFlags::MOVE,
        )?;
        if n == 0 {
            return Ok(total);
        }
        let mut left = n;
        while left > 0 {
            let m = sys::splice(pipe.read.as_fd(), null.as_fd(), left, SpliceFlags::MOVE)?;
            if m == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the pipe to /dev/null closed early",
                ));
            }
            left -= m;
        }
        total += n as u64;
    }
}

/// `teecast-bench memcpy`: copies a `size_mib` buffer into another for `rounds` rounds and prints
/// the bandwidth in GB/s (10^9 bytes copied per second) of the best round.
fn memcpy(size_mib: usize, rounds: usize) -> u8 {
    let len = size_mib << 20;
    if len == 0 || rounds == 0 {
        eprintln!("teecast: --size-mib and --rounds must be at least 1");
        return EXIT_USAGE;
    }
    // Touch both buffers first so page faults are not timed.
    let src: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31)).collect();
    let mut dst = vec![1u8; len];
    let mut best = f64::INFINITY;
    for _ in 0..rounds {
        let start = Instant::now();
        dst.copy_from_slice(black_box(&src));
        black_box(&mut dst);
        best = best.min(start.elapsed().as_secs_f64());
    }
    println!("{:.3}", len as f64 / best / 1e9);
    EXIT_OK
}

/// `teecast-bench sendfile`: sends `source` to every destination with `sendfile(2)`, one thread
/// per destination, then shuts each connection down.
fn sendfile(source: &Path, destinations: &[String]) -> u8 {
    sys::ignore_sigpipe();
    let len = match File::open(source).and_then(|f| f.metadata()) {
        Ok(m) => m.len(),
        Err(e) => {
            eprintln!("teecast: {}: {e}", source.display());
            return EXIT_USAGE;
        }
    };
    let workers: Vec<_> = destinations
        .iter()
        .map(|dest| {
            let dest = dest.clone();
            let source = source.to_path_buf();
            thread::spawn(move || send_one(&source, &dest, len).map_err(|e| format!("{dest}: {e}")))
        })
        .collect();
    let mut code = EXIT_OK;
    for worker in workers {
        match worker.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                eprintln!("teecast: {e}");
                code = EXIT_FAILED;
            }
            Err(_) => {
                eprintln!("teecast: a sendfile thread panicked");
                code = EXIT_FAILED;
            }
        }
    }
    code
}

fn send_one(source: &Path, dest: &str, len: u64) -> io::Result<()> {
    let file = File::open(source)?;
    let addr: SocketAddr = dest
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "not an IP:PORT"))?;
    let stream = TcpStream::connect(addr)?;
    let mut offset = 0u64;
    while offset < len {
        let want = usize::try_from(len - offset)
            .unwrap_or(usize::MAX)
            .min(0x7fff_f000);
        let n = sys::sendfile(stream.as_fd(), file.as_fd(), &mut offset, want)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was sent",
            ));
        }
    }
    stream.shutdown(std::net::Shutdown::Write)
}

/// `teecast-bench rusage --out FILE -- COMMAND...`: runs the command, waits for it, writes
/// `user_secs system_secs max_rss_kib` of its process tree to FILE and exits with its exit code
/// (128 + signal number when a signal ended it).
fn rusage(out: &Path, command: &[String]) -> u8 {
    let Some((program, args)) = command.split_first() else {
        eprintln!("teecast: bench-rusage needs a command");
        return EXIT_USAGE;
    };
    let status = match Command::new(program).args(args).status() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("teecast: cannot run {program}: {e}");
            return EXIT_USAGE;
        }
    };
    let usage = match sys::children_usage() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("teecast: getrusage: {e}");
            return EXIT_FAILED;
        }
    };
    let line = format!(
        "{:.6} {:.6} {}\n",
        usage.user_secs, usage.system_secs, usage.max_rss_kib
    );
    if let Err(e) = std::fs::write(out, line) {
        eprintln!("teecast: {}: {e}", out.display());
        return EXIT_FAILED;
    }
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c).unwrap_or(EXIT_FAILED),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(EXIT_FAILED),
        _ => EXIT_FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn drain_counts_every_byte_until_the_peer_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let writer = thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            let block = vec![5u8; 1 << 20];
            for _ in 0..3 {
                s.write_all(&block).unwrap();
            }
            s.write_all(b"tail").unwrap();
        });
        let (stream, _) = listener.accept().unwrap();
        assert_eq!(drain_one(&stream).unwrap(), 3 * (1 << 20) + 4);
        writer.join().unwrap();
    }

    #[test]
    fn sendfile_delivers_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("source");
        let data: Vec<u8> = (0..(3 << 20) + 17).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let dest = listener.local_addr().unwrap().to_string();
        let reader = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            got
        });
        send_one(&path, &dest, data.len() as u64).unwrap();
        assert!(reader.join().unwrap() == data);
    }
}

//! Command-line arguments, parsed in two stages: clap's raw arguments, then resolved options for
//! the library.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::mutate::{self, MutateLimits, Mutation};
use teecast::auth::{self, Key, KeyError};
use teecast::digest::DigestAlgorithm;
use teecast::engine::{CaptureError, EngineError};
use teecast::probe;
use teecast::proto::wire;
use teecast::recv::{self, KeepFree, RecvOptions, Target};
use teecast::send::{SendError, SendOptions, Transfer};
use teecast::source::Source;
use teecast::store;
use teecast::strategy::Strategy;

use crate::addr::{Listen, parse_destination, parse_listen};
use crate::exit::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::hint::send_error_with_hint;
use crate::keys::{KeyFiles, read_key_from};
use crate::out::{self, errln, outln};
use crate::parse::{parse_bytes, parse_duration, parse_keep_free, parse_size, parse_timeout};
use crate::service::{self, log};
use crate::{demo, report};
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "teecast",
    version,
    about = "Send one stream to many TCP destinations, stable, with as few copies as the kernel allows, confirmed end to end.",
    after_help = "Exit codes: 0 every destination confirmed the digest; 1 a destination failed or did not confirm; 2 bad usage or unusable input."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Send a file (or - for standard input) to receivers.
    Send(SendArgs),
    /// Receive streams, verify them, and store them under their final names.
    Recv(RecvArgs),
    /// Run a whole transfer on this machine: a 256 MiB file to three local receivers.
    Demo(DemoArgs),
    /// Find out by experiment what this kernel's splice, tee, vmsplice and O_DIRECT do.
    Probe(ProbeArgs),
    /// Write a fresh random key to FILE (mode 0600; never overwrites), for --key-file.
    Keygen(KeygenArgs),
    /// Put a file on many hosts: start `teecast recv` on each through ssh (or --rsh), hand each
    /// a fresh key for this transfer on its standard input, send, and report every host.
    Push(crate::push::PushArgs),
    /// Change a file while it is being sent (for tests): rewrite, grow, shrink or truncate it.
    #[command(hide = true)]
    Mutate(MutateArgs),
}

#[derive(Args, Debug)]
struct KeygenArgs {
    /// The key file to create.
    file: PathBuf,
}

/// Where the pre-shared key comes from (never the command line itself).
#[derive(Args, Debug)]
struct KeyArgs {
    /// Authenticate with the key in FILE (made by `teecast keygen`, mode 0600); both ends need
    /// the same key. Also from the TEECAST_KEY_FILE environment variable. - reads it from
    /// standard input (one line of 64 hex digits, as `teecast push` hands it over; not with a
    /// stream on standard input too).
    #[arg(long, value_name = "FILE", env = "TEECAST_KEY_FILE")]
    key_file: Option<PathBuf>,
}

impl KeyArgs {
    /// Whether the key comes from standard input (`--key-file -`).
    fn on_stdin(&self) -> bool {
        self.key_file
            .as_deref()
            .is_some_and(|p| p.as_os_str() == "-")
    }

    /// The key, read from its file; `Ok(None)` without one.
    fn load(&self) -> Result<Option<Key>, KeyError> {
        self.key_file.as_deref().map(read_key_from).transpose()
    }
}

#[derive(Args, Debug)]
struct ProbeArgs {
    /// A directory on the filesystem to probe (default: the temporary directory).
    path: Option<PathBuf>,
    /// Print the findings as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct MutateArgs {
    /// The file to change.
    file: PathBuf,
    /// rewrite (random regions in place), grow (append), shrink (to half, once) or truncate (to
    /// 4 KiB, once).
    #[arg(long, default_value = "rewrite")]
    mode: Mutation,
    /// Seed of the random offsets, lengths and bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop after this long (default: run until killed).
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many writes.
    #[arg(long)]
    count: Option<u64>,
}

#[derive(Args, Debug)]
struct SendArgs {
    /// The file to send, or - for standard input.
    source: PathBuf,
    /// Receivers as HOST:PORT (an IPv6 address in brackets: [::1]:7000).
    #[arg(required = true, value_parser = parse_destination)]
    destinations: Vec<String>,
    /// Data path: auto, readwrite, mmap-write, vmsplice, mmap-pipe, read-pipe, zerocopy, direct.
    #[arg(long, default_value = "auto")]
    strategy: Strategy,
    /// Digest: xxh3-128 (fast; the default), blake3 or sha256 (cryptographic; blake3 is the
    /// default with a key, which needs one of these two), or none.
    #[arg(long)]
    digest: Option<DigestAlgorithm>,
    #[command(flatten)]
    key: KeyArgs,
    /// With a key, send the stream authenticated but in the clear (protocol version 2), for a
    /// network trusted with its contents; the report says "not encrypted". Without this, a
    /// keyed stream is encrypted.
    #[arg(long)]
    no_encrypt: bool,
    /// Name announced to receivers (default: the source's file name; "stdin" for -).
    #[arg(long)]
    name: Option<String>,
    /// Send the bare bytes with no framing, to any TCP listener (nc, socat).
    #[arg(long)]
    raw: bool,
    /// Relay through the destinations instead of sending to each: a tree with K children per
    /// host, in the order given (1: a chain). Each needs `teecast recv --relay`.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u8).range(1..))]
    tree: Option<u8>,
    /// With --tree: keep the last SIZE bytes sent (default 64M; at least 2M; e.g. 1G), to
    /// resume the children of a host that fails from the bytes they hold.
    #[arg(long, value_name = "SIZE", requires = "tree", value_parser = parse_size)]
    ring: Option<usize>,
    /// Also write exactly the bytes sent to FILE.
    #[arg(long, value_name = "FILE")]
    capture: Option<PathBuf>,
    /// Drop a destination that accepts no data for this long (e.g. 30s, 500ms).
    #[arg(long, default_value = "30s", value_parser = parse_timeout)]
    stall_timeout: Duration,
    /// Give up on a destination that does not accept the connection within this long.
    #[arg(long, default_value = "10s", value_parser = parse_timeout)]
    connect_timeout: Duration,
    /// No progress and no summary on stderr: only what failed, one line each.
    #[arg(long, short)]
    quiet: bool,
    /// On a terminal, a progress line per destination under the overall one.
    #[arg(long, conflicts_with = "quiet")]
    per_destination: bool,
    /// Print the report as one JSON object on stdout (instead of the digest line).
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct RecvArgs {
    /// Address to listen on, e.g. 0.0.0.0:7000, 127.0.0.1:0, or :7000 (or 7000) for every
    /// address, IPv6 and IPv4, on port 7000. Not with sockets passed by a service manager
    /// (systemd's socket activation), which are used instead.
    #[arg(long, value_parser = parse_listen)]
    listen: Option<Listen>,
    /// Store every stream at this path (published only when verified); a device node or FIFO
    /// there is written into, never replaced; - writes to standard output (e.g. into
    /// `zfs receive`), with the digest line on stderr.
    #[arg(long, conflicts_with_all = ["dir", "into"], required_unless_present_any = ["dir", "into"])]
    output: Option<PathBuf>,
    /// Store each stream in this directory under its announced name.
    #[arg(long, conflicts_with = "into")]
    dir: Option<PathBuf>,
    /// --dir PATH when PATH is a directory, --output PATH otherwise (what `teecast push` uses).
    #[arg(long, value_name = "PATH")]
    into: Option<PathBuf>,
    /// Exit after one transfer: 0 if it was stored and verified, 1 otherwise.
    #[arg(long)]
    once: bool,
    /// Accept a bare stream (from nc or socat) until EOF and print its digest.
    #[arg(long)]
    raw: bool,
    /// Digest computed in --raw mode: xxh3-128, blake3, sha256 or none.
    #[arg(long, default_value = "xxh3-128")]
    digest: DigestAlgorithm,
    /// Drop a connection that sends nothing for this long.
    #[arg(long, default_value = "30s", value_parser = parse_timeout)]
    stall_timeout: Duration,
    /// Print nothing on stderr but errors.
    #[arg(long, short)]
    quiet: bool,
    /// Authenticate with the key in FILE (made by `teecast keygen`, mode 0600), the senders'
    /// key. Give it more than once during a key rotation (at most 4): a sender proving any one
    /// of them is accepted. Read again on SIGHUP (streams in flight keep theirs). Also from the
    /// TEECAST_KEY_FILE environment variable; - reads one from standard input.
    #[arg(long = "key-file", value_name = "FILE", env = "TEECAST_KEY_FILE")]
    key_files: Vec<PathBuf>,
    /// Refuse a stream whose file already exists (by default it is replaced, atomically, once
    /// the new one is verified).
    #[arg(long)]
    no_clobber: bool,
    /// Listen on an address other than loopback without a key: anyone who can reach it may
    /// store files here (and, with --relay, have streams forwarded beyond loopback).
    #[arg(long)]
    insecure: bool,
    /// Forward streams to the hosts below this one in the tree their sender chose (`send
    /// --tree`), as they arrive, while storing this host's copy.
    #[arg(long)]
    relay: bool,
    /// With --relay into standard output or a device: keep the last SIZE bytes forwarded
    /// (default 64M; at least 2M; e.g. 1G), to resume the children of a child that fails (a
    /// relay storing a file replays from it).
    #[arg(long, value_name = "SIZE", requires = "relay", value_parser = parse_size)]
    ring: Option<usize>,
    /// Give a connection this long, in all, to open its session (hello, proof and header).
    #[arg(long, default_value = "10s", value_parser = parse_timeout)]
    header_timeout: Duration,
    /// Streams received at once (with --dir); more connections wait to be accepted.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Connections served at once from one address (with --dir); more are closed at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    max_per_peer: u64,
    /// On SIGTERM, give the streams in flight this long to finish (accepting no more); those
    /// still going then are refused, their senders told, nothing of them kept. A second
    /// SIGTERM, or SIGINT, stops at once.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Refuse a stream larger than SIZE (e.g. 10G): one announced larger at its header, one of
    /// unknown length when it gets there; nothing of it is kept.
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    max_size: Option<u64>,
    /// Leave SIZE (e.g. 20G) or PERCENT (e.g. 10%) of the target's filesystem free: a stream
    /// announced too large for that is refused at its header, one that would cross it as it
    /// arrives is cut there; nothing of it is kept, and the other streams go on.
    #[arg(long, value_name = "SIZE|PERCENT", value_parser = parse_keep_free)]
    keep_free: Option<KeepFree>,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Size of the demo file, in MiB.
    #[arg(long, default_value_t = 256)]
    size_mib: u64,
    /// Rewrite the file while it is sent, once on zerocopy and once on the default path.
    #[arg(long)]
    mutate: bool,
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print on stdout: one that cannot take them fails too.
            let code = match (e.use_stderr(), e.print()) {
                (true, _) => EXIT_USAGE,
                (false, Ok(())) => EXIT_OK,
                (false, Err(_)) => EXIT_FAILED,
            };
            return ExitCode::from(code);
        }
    };
    let code = match cli.command {
        Command::Send(args) => run_send(args),
        Command::Recv(args) => run_recv(args),
        Command::Demo(args) if args.mutate => demo::run_mutate(args.size_mib),
        Command::Demo(args) => demo::run(args.size_mib),
        Command::Probe(args) => run_probe(args),
        Command::Keygen(args) => run_keygen(&args.file),
        Command::Push(args) => crate::push::run(args),
        Command::Mutate(args) => run_mutate(args),
    };
    // What could not be written to stdout (already said on stderr) fails a run that was ok.
    ExitCode::from(if code == EXIT_OK && out::failed() {
        EXIT_FAILED
    } else {
        code
    })
}

fn run_keygen(path: &std::path::Path) -> u8 {
    match auth::create_key_file(path) {
        Ok(_) => {
            errln!(
                "teecast: wrote a new key to {} (mode 0600); copy it to the other end as privately",
                path.display()
            );
            EXIT_OK
        }
        Err(e) => {
            errln!("teecast: {e}");
            EXIT_USAGE
        }
    }
}

fn run_probe(args: ProbeArgs) -> u8 {
    let dir = args.path.unwrap_or_else(std::env::temp_dir);
    if !dir.is_dir() {
        errln!("teecast: {}: not a directory", dir.display());
        return EXIT_USAGE;
    }
    match probe::probe(&dir) {
        Ok(facts) => {
            if args.json {
                outln!("JSON report", "{}", report::probe_json(&facts));
            } else {
                report::probe_human(&facts);
            }
            EXIT_OK
        }
        Err(e) => {
            errln!(
                "teecast: cannot probe {}: {e} (the probe needs to create a file there)",
                dir.display()
            );
            EXIT_FAILED
        }
    }
}

fn run_mutate(args: MutateArgs) -> u8 {
    let limits = MutateLimits {
        duration: args.duration,
        count: args.count,
    };
    let never = AtomicBool::new(false);
    let started = || {
        outln!(
            "progress line",
            "teecast mutate: started {} on {}",
            args.mode,
            args.file.display()
        );
    };
    match mutate::run(&args.file, args.mode, args.seed, limits, &never, started) {
        Ok(r) => {
            outln!(
                "progress line",
                "teecast mutate: done: {} operations, {} bytes written, length now {}",
                r.operations,
                r.bytes,
                r.final_len
            );
            EXIT_OK
        }
        Err(e) => {
            errln!("teecast mutate: {}: {e}", args.file.display());
            EXIT_FAILED
        }
    }
}

fn run_send(args: SendArgs) -> u8 {
    if args.source.as_os_str() == "-" && args.key.on_stdin() {
        errln!(
            "teecast: --key-file - and the source - both read standard input: give the key in a file (--key-file FILE), or the stream as a file"
        );
        return EXIT_USAGE;
    }
    if let Err(e) = crate::addr::distinct(&args.destinations) {
        errln!("teecast: {e}");
        return EXIT_USAGE;
    }
    let source = match Source::open(&args.source) {
        Ok(s) => s,
        Err(e) => {
            errln!("teecast: {e}");
            return EXIT_USAGE;
        }
    };
    let key = match args.key.load() {
        Ok(k) => k,
        Err(e) => {
            errln!("teecast: {e}");
            return EXIT_USAGE;
        }
    };
    let digest = args.digest.unwrap_or(if key.is_some() {
        DigestAlgorithm::Blake3
    } else {
        DigestAlgorithm::default()
    });
    let mut options = SendOptions::default()
        .strategy(args.strategy)
        .digest(digest)
        .raw(args.raw)
        .encrypt(!args.no_encrypt)
        .stall_timeout(args.stall_timeout)
        .connect_timeout(args.connect_timeout);
    if let Some(name) = &args.name {
        options = options.name(name);
    }
    if let Some(capture) = &args.capture {
        options = options.capture(capture);
    }
    if let Some(key) = key {
        options = options.key(key);
    }
    if let Some(fanout) = args.tree {
        options = options.tree(fanout);
    }
    if let Some(ring) = args.ring {
        options = options.ring(ring);
    }
    let transfer = match Transfer::new(&source, &args.destinations, &options) {
        Ok(t) => t,
        Err(e) => {
            errln!("teecast: {}", send_error_with_hint(&e));
            return EXIT_USAGE;
        }
    };
    report::say_stall_raised(&transfer);
    let progress = transfer.progress();
    let sending = progress.clone();
    crate::interrupt::on_ctrl_c(move || {
        let most = sending.sent().into_iter().max().unwrap_or(0);
        format!(
            "stopped after {} sent; a receiver keeps nothing it had not confirmed",
            report::human_bytes(most)
        )
    });
    let display = (!args.quiet)
        .then(|| {
            report::ProgressDisplay::start(
                progress.clone(),
                &transfer.direct(),
                source.len(),
                args.per_destination,
                transfer.hosts().map(|hosts| report::TreeRows {
                    route: args.destinations.clone(),
                    direct: transfer.direct_positions(),
                    hosts,
                }),
            )
        })
        .flatten();
    let result = transfer.run();
    if let Some(d) = display {
        d.stop();
    }
    if args.json {
        outln!("JSON report", "{}", report::json(&result));
    } else if let Some(d) = &result.digest
        && result.error.is_none()
        && d.algorithm != DigestAlgorithm::None
    {
        outln!(
            "digest line",
            "{}  {}",
            d.hex(),
            out::digest_line_name(&result.source)
        );
    }
    report::summary(&result, args.quiet);
    if result.is_success() {
        EXIT_OK
    } else if matches!(result.capture, Some((_, Err(CaptureError::Create { .. }))))
        || matches!(
            result.error,
            Some(SendError::Engine(EngineError::Unsupported(_)))
        )
    {
        // The capture's path or the data path cannot serve this source: nothing was sent.
        EXIT_USAGE
    } else {
        EXIT_FAILED
    }
}

/// Why `dir` cannot hold the received files, in words.
fn usable_dir(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err("not a directory".to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("no such directory".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

fn run_recv(mut args: RecvArgs) -> u8 {
    // Before any thread starts, so that the variables of socket activation are removed too.
    let passed = teecast::service::passed_listeners();
    let log = service::Log::new();
    if let Some(into) = args.into.take() {
        if into.is_dir() {
            args.dir = Some(into);
        } else {
            args.output = Some(into);
        }
    }
    let target = match (&args.output, &args.dir) {
        (Some(p), None) if p.as_os_str() == "-" => Target::Stdout,
        (Some(p), None) => {
            let parent = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if let Err(e) = usable_dir(parent) {
                log!(
                    log,
                    Error,
                    "teecast: {}: {e} (for --output {})",
                    parent.display(),
                    p.display()
                );
                return EXIT_USAGE;
            }
            if p.is_dir() {
                log!(
                    log,
                    Error,
                    "teecast: {} is a directory (--dir stores each stream in one, under its name)",
                    p.display()
                );
                return EXIT_USAGE;
            }
            Target::File(p.clone())
        }
        (None, Some(d)) => {
            if let Err(e) = usable_dir(d) {
                log!(log, Error, "teecast: {}: {e} (for --dir)", d.display());
                return EXIT_USAGE;
            }
            Target::Dir(d.clone())
        }
        _ => {
            log!(log, Error, "teecast: give exactly one of --output or --dir");
            return EXIT_USAGE;
        }
    };
    // Temporaries of a receiver that was killed before this version (which leaves none) go.
    let swept_dir = match &target {
        Target::Dir(d) => Some(d.clone()),
        Target::File(p) => p.parent().map(|p| {
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p.to_path_buf()
            }
        }),
        _ => None,
    };
    if let Some(dir) = swept_dir
        && let Ok(n @ 1..) = store::sweep(&dir)
    {
        log!(
            log,
            Info,
            "teecast: removed {n} stale temporary file(s) in {}",
            dir.display()
        );
    }
    let (key_files, keys) = match KeyFiles::read(std::mem::take(&mut args.key_files)) {
        Ok(k) => k,
        Err(e) => {
            log!(log, Error, "teecast: {e}");
            return EXIT_USAGE;
        }
    };
    if args.raw && !keys.is_empty() {
        log!(
            log,
            Error,
            "teecast: --raw takes no key: a bare stream carries no proof of one (beyond loopback give --insecure instead)"
        );
        return EXIT_USAGE;
    }
    let listeners = match listeners(passed, args.listen.as_ref()) {
        Ok(l) => l,
        Err(e) => {
            log!(log, Error, "teecast: {e}");
            return EXIT_USAGE;
        }
    };
    let locals: Vec<_> = listeners.iter().map(TcpListener::local_addr).collect();
    for local in &locals {
        let shown = local
            .as_ref()
            .map_or_else(|e| format!("a socket ({e})"), ToString::to_string);
        if keys.is_empty() && !local.as_ref().is_ok_and(|a| a.ip().is_loopback()) {
            if !args.insecure && args.raw {
                log!(
                    log,
                    Error,
                    "teecast: {shown} is not a loopback address, and a bare stream proves no key: give --insecure to take bare streams from anyone who reaches it"
                );
                return EXIT_USAGE;
            }
            if !args.insecure {
                log!(
                    log,
                    Error,
                    "teecast: {shown} is not a loopback address: give --key-file FILE (made by `teecast keygen FILE`, the same on the sender), or --insecure to let anyone who reaches it store files"
                );
                return EXIT_USAGE;
            }
            log!(
                log,
                Warning,
                "teecast: warning: --insecure: no key, anyone who can reach {shown} may store files here"
            );
        }
    }
    if !args.quiet {
        match keys.len() {
            0 => {}
            1 => log!(log, Info, "teecast: every sender must prove the key"),
            n => log!(
                log,
                Info,
                "teecast: every sender must prove one of the {n} keys"
            ),
        }
        for local in locals.iter().flatten() {
            log!(log, Info, "teecast: listening on {local}");
        }
    }
    let mut options = RecvOptions::new(target)
        .no_clobber(args.no_clobber)
        .raw(args.raw)
        .digest(args.digest)
        .stall_timeout(args.stall_timeout)
        .header_timeout(args.header_timeout)
        .max_connections(usize::try_from(args.max_connections).unwrap_or(usize::MAX))
        .max_per_peer(usize::try_from(args.max_per_peer).unwrap_or(usize::MAX))
        .relay(args.relay)
        .forward_unauthenticated(args.insecure)
        .max_size(args.max_size)
        .keep_free(args.keep_free);
    if let Some(ring) = args.ring {
        options = options.ring(ring);
    }
    options.keys = keys;
    let quiet = args.quiet;
    let raw = args.raw;
    let status = Arc::new(service::Status::new());
    let control = recv::Control::new();
    let signals = service::handle_signals(
        control.clone(),
        args.drain_timeout,
        status.clone(),
        log,
        key_files,
    );
    if let Err(e) = signals {
        log!(log, Error, "teecast: cannot handle signals: {e}");
        return EXIT_FAILED;
    }
    let on_status = status.clone();
    // With the stream on stdout, the digest line goes to stderr with the logs.
    let to_stdout = matches!(options.target, Target::Stdout);
    let on_event = move |peer: Option<std::net::SocketAddr>, event: recv::Event<'_>| {
        let status = &on_status;
        let from = peer;
        let peer = peer.map_or_else(|| "?".to_string(), |p| p.to_string());
        let result = match event {
            recv::Event::Opened {
                name,
                length,
                encrypted,
            } => {
                if let Some(from) = from {
                    status.opened(from, name);
                }
                if !quiet {
                    let length = match (length, encrypted) {
                        (Some(n), true) => format!(" ({n} bytes, encrypted)"),
                        (Some(n), false) => format!(" ({n} bytes)"),
                        (None, true) => " (encrypted)".to_string(),
                        (None, false) => String::new(),
                    };
                    log!(
                        log,
                        Info,
                        "teecast: {peer}: receiving {}{length}",
                        wire::escape_text(name, 255)
                    );
                }
                return;
            }
            recv::Event::Resumed { name, stored } => {
                if let Some(from) = from {
                    status.done(from, false);
                }
                if !quiet {
                    let how = match stored {
                        true => {
                            "its parent failed before it read the acknowledgement; the copy stored here is confirmed"
                        }
                        false => "its parent failed, this one goes on",
                    };
                    log!(
                        log,
                        Info,
                        "teecast: {peer}: resumes {}: {how}",
                        wire::escape_text(name, 255)
                    );
                }
                return;
            }
            recv::Event::Done(result) => result,
            _ => return,
        };
        if let Some(from) = from {
            status.done(from, result.is_ok());
        }
        match result {
            Ok(r) => {
                if r.digest.algorithm != DigestAlgorithm::None {
                    if to_stdout {
                        errln!("{}  -", r.digest.hex());
                    } else {
                        let name = r.path.to_string_lossy();
                        outln!(
                            "digest line",
                            "{}  {}",
                            r.digest.hex(),
                            out::digest_line_name(&name)
                        );
                    }
                }
                if !quiet {
                    // Say "verified" only where a sender's digest was checked.
                    let checked = match (raw, r.digest.algorithm) {
                        (true, DigestAlgorithm::None) => {
                            "received, not verified: a raw stream carries no sender digest"
                                .to_string()
                        }
                        (true, alg) => format!(
                            "{alg} computed, not verified: a raw stream carries no sender digest"
                        ),
                        (false, DigestAlgorithm::None) => "length checked, no digest".to_string(),
                        (false, alg) => format!("{alg} verified"),
                    };
                    let checked = match r.encrypted {
                        true => format!("{checked}, encrypted"),
                        false => checked,
                    };
                    log!(
                        log,
                        Info,
                        "teecast: {peer}: stored {} ({} bytes, {checked})",
                        wire::escape_if_needed(&r.path.to_string_lossy()),
                        r.bytes,
                    );
                }
            }
            Err(e @ recv::RecvError::NoProof) => {
                log!(
                    log,
                    Error,
                    "teecast: {peer}: {e} (--key-file on both ends, the same key)"
                )
            }
            Err(e) => log!(log, Error, "teecast: {peer}: {e}"),
        }
    };
    status.ready();
    let served = recv::serve_until(listeners, &options, args.once, &control, &on_event);
    if control.is_stopping() && !quiet {
        log!(log, Info, "teecast: stopped");
    }
    match served {
        Ok(true) => EXIT_OK,
        Ok(false) => EXIT_FAILED,
        Err(e) => {
            log!(log, Error, "teecast: accepting connections: {e}");
            EXIT_FAILED
        }
    }
}

/// The sockets to serve: those a service manager passed (then `listen` must not be given), or
/// one bound to `listen`.
fn listeners(
    passed: std::io::Result<Vec<TcpListener>>,
    listen: Option<&Listen>,
) -> Result<Vec<TcpListener>, String> {
    let passed = passed.map_err(|e| format!("the sockets passed by the service manager: {e}"))?;
    match (passed.is_empty(), listen) {
        (false, Some(addr)) => Err(format!(
            "the service manager passed {} listening socket(s) and --listen {addr} was given: drop --listen, or start teecast without socket activation",
            passed.len()
        )),
        (false, None) => Ok(passed),
        (true, Some(addr)) => match addr {
            Listen::Every(port) => teecast::transport::listen_every_address(*port),
            Listen::Address(a) => TcpListener::bind(a),
        }
        .map(|l| vec![l])
        .map_err(|e| format!("cannot listen on {addr}: {e}")),
        (true, None) => Err(
            "give --listen ADDRESS (e.g. 0.0.0.0:7000), or start teecast from a systemd socket unit"
                .to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("3 parsecs").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn arguments_parse() {
        Cli::command_for_tests().debug_assert();
    }

    impl Cli {
        fn command_for_tests() -> clap::Command {
            <Cli as clap::CommandFactory>::command()
        }
    }
}

//! Kernel facts by experiment: what splice, tee, vmsplice and `O_DIRECT` actually do on this
//! kernel and filesystem, measured rather than guessed from a version number.
//!
//! docs/KERNEL.md §5 explains why: a 2026 series turns `vmsplice` into a copy, and file
//! splice may follow. Each question is a few syscalls on a two-page scratch file in the directory
//! asked about; the whole probe takes a few milliseconds. [`crate::strategy::Case::probed`]
//! turns the answers into the case the `auto` rule decides.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use teecast_proto::crypt::{self, RECORD_LEN, RECORDS_PER_KEY, RecordSealer, TransferKey};
use teecast_proto::wire;
use teecast_sys::{self as sys, Errno, Pipe, SpliceFlags};

/// The bytes the scratch file holds before each experiment, and after its `pwrite`.
const OLD: u8 = b'o';
const NEW: u8 = b'n';
/// One block: the unit of every experiment (also `O_DIRECT`'s alignment on every common disk).
const BLOCK: usize = 4096;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// What the probe found. Each answer is `Err(why)` when the experiment itself could not run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelFacts {
    /// The directory whose filesystem was probed.
    pub dir: PathBuf,
    /// The filesystem's name (from `statfs` `f_type`), e.g. `ext4`, `tmpfs`.
    pub filesystem: String,
    /// `splice(file→pipe)`, `pwrite`, read the pipe: true when the pipe shows the new bytes, i.e.
    /// the pipe holds page-cache pages by reference and zero-copy sends are unstable (§1.1, §3).
    pub splice_shares_page_cache: Result<bool, Unanswered>,
    /// `vmsplice` a buffer, overwrite the buffer, read the pipe: true when the pipe shows the new
    /// bytes (pre-7.2 behaviour, §1.3); false when `vmsplice` copies (the 2026 change).
    pub vmsplice_shares_user_pages: Result<bool, Unanswered>,
    /// Splice a file block into a pipe, `tee` it into a second pipe, `pwrite`, read the second:
    /// true when the tee'd copy shows the new bytes (tee takes a reference, §1.2). `None` when
    /// file splice copies, which leaves nothing shared for tee to reveal.
    pub tee_shares_pages: Result<Option<bool>, Unanswered>,
    /// Whether this filesystem accepts `open(O_DIRECT)` and `splice` of one block from it.
    pub o_direct_available: Result<bool, Unanswered>,
    /// `splice(O_DIRECT file→pipe)`, `pwrite`, read the pipe: true when the pipe still shows the
    /// old bytes, i.e. the kernel read into private pages (≥6.5, §1.1). `None` when `O_DIRECT`
    /// is not available.
    pub o_direct_splice_private: Result<Option<bool>, Unanswered>,
    /// `/proc/sys/fs/pipe-max-size`: the largest pipe an unprivileged process may ask for (§1.5).
    pub pipe_max_size: Result<u64, Unanswered>,
    /// What `F_SETPIPE_SZ` granted when asked for 1 MiB.
    pub pipe_granted_for_1mib: Result<usize, Unanswered>,
    /// Whether a TCP socket accepts `SO_ZEROCOPY` (the `MSG_ZEROCOPY` path of §2).
    pub msg_zerocopy_accepted: Result<bool, Unanswered>,
    /// Whether `io_uring_setup` succeeds (`IORING_OP_SEND_ZC` of §2 needs it).
    pub io_uring_usable: Result<bool, Unanswered>,
    /// How fast this machine seals an encrypted stream's records, on one core.
    pub aead: AeadSpeed,
    /// How long the probe took.
    pub elapsed: Duration,
}

/// The AEAD that seals encrypted streams, and its measured speed here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AeadSpeed {
    /// The construction and its implementation.
    pub implementation: &'static str,
    /// Plaintext bytes sealed per second, on one core, in whole records.
    pub bytes_per_second: u64,
}

/// What [`AeadSpeed`] seals to measure: 32 MiB.
const AEAD_SAMPLE: usize = 32 << 20;

/// Seals [`AEAD_SAMPLE`] bytes as records, in place, and times it: one AEAD pass, the cost an
/// encrypted stream adds at the sender (and at every receiver, which opens as much).
pub fn aead_speed() -> AeadSpeed {
    let transfer = TransferKey::new([0; wire::TRANSFER_ID_LEN], [7; 32]);
    let mut sealer = RecordSealer::new(&transfer, RECORDS_PER_KEY);
    let mut record = vec![0x5a; RECORD_LEN];
    let started = Instant::now();
    for _ in 0..AEAD_SAMPLE / RECORD_LEN {
        let _ = sealer.seal_in_place(&mut record, false);
    }
    AeadSpeed {
        implementation: crypt::RECORD_AEAD,
        bytes_per_second: (AEAD_SAMPLE as f64 / started.elapsed().as_secs_f64().max(1e-9)) as u64,
    }
}

impl KernelFacts {
    /// Facts that assume the worst of everything (every sharing question answered "shares",
    /// `O_DIRECT` unavailable): what a caller should use when it has not probed.
    pub fn assume_worst(dir: &Path) -> KernelFacts {
        KernelFacts {
            dir: dir.to_path_buf(),
            filesystem: "unknown".into(),
            splice_shares_page_cache: Ok(true),
            vmsplice_shares_user_pages: Ok(true),
            tee_shares_pages: Ok(Some(true)),
            o_direct_available: Ok(false),
            o_direct_splice_private: Ok(None),
            pipe_max_size: Err(Unanswered::NotProbed),
            pipe_granted_for_1mib: Err(Unanswered::NotProbed),
            msg_zerocopy_accepted: Err(Unanswered::NotProbed),
            io_uring_usable: Err(Unanswered::NotProbed),
            aead: AeadSpeed {
                implementation: crypt::RECORD_AEAD,
                bytes_per_second: 0,
            },
            elapsed: Duration::ZERO,
        }
    }

    /// True only when the probe showed that splice from a file copies (the pipe kept the old
    /// bytes): then `zerocopy` is a stable path. Unknown counts as sharing.
    pub fn file_splice_copies(&self) -> bool {
        self.splice_shares_page_cache == Ok(false)
    }

    /// True only when the probe showed `O_DIRECT` splice reads into private pages.
    pub fn direct_splice_is_private(&self) -> bool {
        self.o_direct_splice_private == Ok(Some(true))
    }
}

/// Runs every experiment on the filesystem of `dir` (a directory; a scratch file is created
/// there and removed at once).
pub fn probe(dir: &Path) -> io::Result<KernelFacts> {
    let started = Instant::now();
    let scratch = Scratch::create(dir)?;
    let o_direct = scratch.direct.as_ref().map(|_| ());
    let mut facts = KernelFacts {
        dir: dir.to_path_buf(),
        filesystem: filesystem_name(dir),
        splice_shares_page_cache: scratch.splice_shares().map_err(text),
        vmsplice_shares_user_pages: vmsplice_shares().map_err(text),
        tee_shares_pages: Ok(None),
        o_direct_available: Ok(false),
        o_direct_splice_private: Ok(None),
        pipe_max_size: std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .map_err(text)
            .and_then(|s| {
                s.trim()
                    .parse()
                    .map_err(|_| Unanswered::Unparsable("/proc/sys/fs/pipe-max-size"))
            }),
        pipe_granted_for_1mib: Pipe::with_size(1 << 20).map(|p| p.capacity()).map_err(text),
        msg_zerocopy_accepted: msg_zerocopy_accepted().map_err(text),
        io_uring_usable: match sys::io_uring_usable() {
            Ok(()) => Ok(true),
            Err(e) if refused(&e) => Ok(false),
            Err(e) => Err(text(e)),
        },
        aead: aead_speed(),
        elapsed: Duration::ZERO,
    };
    facts.tee_shares_pages = match facts.splice_shares_page_cache {
        Ok(true) => scratch.tee_shares().map(Some).map_err(text),
        Ok(false) => Ok(None),
        Err(e) => Err(e),
    };
    match o_direct {
        Ok(()) => match scratch.direct_splice_private() {
            Ok(private) => {
                facts.o_direct_available = Ok(true);
                facts.o_direct_splice_private = Ok(Some(private));
            }
            Err(e) if Errno::from_io_error(&e) == Some(Errno::INVAL) => {
                facts.o_direct_available = Ok(false);
            }
            Err(e) => {
                let why = text(e);
                facts.o_direct_available = Err(why);
                facts.o_direct_splice_private = Err(why);
            }
        },
        Err(e) if Errno::from_io_error(e) == Some(Errno::INVAL) => {
            facts.o_direct_available = Ok(false)
        }
        Err(e) => {
            let why = Unanswered::Io {
                kind: e.kind(),
                errno: e.raw_os_error(),
            };
            facts.o_direct_available = Err(why);
            facts.o_direct_splice_private = Err(why);
        }
    }
    facts.elapsed = started.elapsed();
    Ok(facts)
}

/// Whether `O_DIRECT` splice from tmpfs reads into private pages, asked of an in-memory file
/// (`memfd_create`, which is tmpfs), so it needs no writable directory and takes microseconds.
/// False when the experiment cannot run or the pages are shared.
pub fn tmpfs_direct_splice_is_private() -> bool {
    Scratch::in_memory().is_ok_and(|s| s.direct_splice_private().unwrap_or(false))
}

fn text(e: io::Error) -> Unanswered {
    Unanswered::Io {
        kind: e.kind(),
        errno: e.raw_os_error(),
    }
}

/// Why the probe has no answer to a question.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unanswered {
    /// The question was not asked ([`KernelFacts::assume_worst`]).
    #[error("not probed")]
    NotProbed,
    /// The experiment's system call failed.
    #[error("{}", errno.map_or_else(|| io::Error::from(*kind), io::Error::from_raw_os_error))]
    Io {
        /// The error's kind.
        kind: io::ErrorKind,
        /// The system's error number, when there is one.
        errno: Option<i32>,
    },
    /// A kernel file did not hold what it should.
    #[error("{0} holds no number")]
    Unparsable(&'static str),
}

/// Errors that mean "not offered here" rather than "the experiment broke".
fn refused(e: &io::Error) -> bool {
    matches!(
        Errno::from_io_error(e),
        Some(Errno::NOSYS | Errno::PERM | Errno::OPNOTSUPP | Errno::NOPROTOOPT | Errno::INVAL)
    )
}

/// The two-page scratch file, opened buffered (and with `O_DIRECT` when the filesystem allows),
/// its name removed as soon as both are open.
struct Scratch {
    file: File,
    direct: io::Result<OwnedFd>,
}

impl Scratch {
    fn create(dir: &Path) -> io::Result<Scratch> {
        let path = dir.join(format!(
            ".teecast-probe-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let direct = sys::open_direct(&path);
        std::fs::remove_file(&path)?;
        let scratch = Scratch { file, direct };
        scratch.reset()?;
        Ok(scratch)
    }

    /// The same two pages in memory: a `memfd`, opened again with `O_DIRECT` through `/proc`.
    fn in_memory() -> io::Result<Scratch> {
        let fd = sys::memfd("teecast-probe")?;
        let direct = sys::reopen_direct(&fd);
        let scratch = Scratch {
            file: File::from(fd),
            direct,
        };
        scratch.reset()?;
        Ok(scratch)
    }

    /// Makes both blocks hold the old bytes again.
    fn reset(&self) -> io::Result<()> {
        self.file.write_all_at(&[OLD; 2 * BLOCK], 0)
    }

    fn overwrite(&self) -> io::Result<()> {
        self.file.write_all_at(&[NEW; BLOCK], 0)
    }

    /// splice file→pipe, pwrite, read the pipe.
    fn splice_shares(&self) -> io::Result<bool> {
        self.reset()?;
        let pipe = Pipe::with_size(64 * 1024)?;
        splice_block(self.file.as_fd(), &pipe)?;
        self.overwrite()?;
        shows_new(&read_block(&pipe)?)
    }

    /// splice file→pipe A, tee A→B, pwrite, read B.
    fn tee_shares(&self) -> io::Result<bool> {
        self.reset()?;
        let a = Pipe::with_size(64 * 1024)?;
        let b = Pipe::with_size(64 * 1024)?;
        splice_block(self.file.as_fd(), &a)?;
        let teed = sys::tee(a.read.as_fd(), b.write.as_fd(), BLOCK)?;
        if teed != BLOCK {
            return Err(io::Error::other(format!(
                "tee copied {teed} of {BLOCK} bytes"
            )));
        }
        self.overwrite()?;
        shows_new(&read_block(&b)?)
    }

    /// splice O_DIRECT file→pipe, pwrite, read the pipe: old bytes mean private pages.
    fn direct_splice_private(&self) -> io::Result<bool> {
        let Ok(direct) = &self.direct else {
            return Err(io::Error::other("no O_DIRECT descriptor"));
        };
        self.reset()?;
        let pipe = Pipe::with_size(64 * 1024)?;
        splice_block(direct.as_fd(), &pipe)?;
        self.overwrite()?;
        shows_new(&read_block(&pipe)?).map(|new| !new)
    }
}

fn splice_block(from: std::os::fd::BorrowedFd<'_>, pipe: &Pipe) -> io::Result<()> {
    let mut done = 0;
    while done < BLOCK {
        let n = sys::splice_from_offset(
            from,
            done as u64,
            pipe.write.as_fd(),
            BLOCK - done,
            SpliceFlags::empty(),
        )?;
        if n == 0 {
            return Err(io::Error::other("splice found the scratch file empty"));
        }
        done += n;
    }
    Ok(())
}

fn read_block(pipe: &Pipe) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; BLOCK];
    let mut got = 0;
    while got < BLOCK {
        match sys::read(pipe.read.as_fd(), &mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// All new bytes: true; all old: false; anything else is not an answer.
fn shows_new(bytes: &[u8]) -> io::Result<bool> {
    if bytes.len() == BLOCK && bytes.iter().all(|&b| b == NEW) {
        Ok(true)
    } else if bytes.len() == BLOCK && bytes.iter().all(|&b| b == OLD) {
        Ok(false)
    } else {
        Err(io::Error::other(
            "the pipe gave neither the old nor the new bytes",
        ))
    }
}

fn vmsplice_shares() -> io::Result<bool> {
    shows_new(&sys::vmsplice_then_overwrite(BLOCK, OLD, NEW)?)
}

fn msg_zerocopy_accepted() -> io::Result<bool> {
    let socket = sys::tcp_socket()?;
    match sys::set_zerocopy(socket.as_fd()) {
        Ok(()) => Ok(true),
        Err(e) if refused(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

fn filesystem_name(dir: &Path) -> String {
    File::open(dir)
        .and_then(sys::filesystem)
        .map_or_else(|_| "unknown".into(), sys::Filesystem::name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_answers_every_question_on_the_temp_dir() {
        let dir = tempfile::tempdir().unwrap();
        let facts = probe(dir.path()).unwrap();
        // The experiments themselves must run here; their answers depend on the kernel.
        let splice = facts.splice_shares_page_cache.unwrap();
        facts.vmsplice_shares_user_pages.unwrap();
        let tee = facts.tee_shares_pages.unwrap();
        assert_eq!(
            tee.is_some(),
            splice,
            "tee is measured exactly when splice shares"
        );
        assert!(facts.pipe_granted_for_1mib.unwrap() >= 64 * 1024);
        assert!(facts.pipe_max_size.unwrap() >= 4096);
        // The scratch file is gone.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn o_direct_answer_agrees_with_opening_a_file_with_o_direct() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, [1u8; BLOCK]).unwrap();
        let opens = sys::open_direct(&path).is_ok();
        std::fs::remove_file(&path).unwrap();
        let facts = probe(dir.path()).unwrap();
        assert_eq!(facts.o_direct_available, Ok(opens));
        assert_eq!(facts.o_direct_splice_private.unwrap().is_some(), opens);
    }

    #[test]
    fn worst_case_facts_claim_nothing_stable() {
        let facts = KernelFacts::assume_worst(Path::new("/"));
        assert!(!facts.file_splice_copies());
        assert!(!facts.direct_splice_is_private());
    }
}

//! `--strategy direct` (splice from an `O_DIRECT` descriptor): its unaligned tail and its error
//! on a filesystem that refuses `O_DIRECT`, through the real binary and a real receiver; and that
//! it reads the file that was opened, through the library.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{Receiver, Running, list_dir, random_file, run, sha256_file, teecast};

/// How long the sender or a receiver may take before the test fails.
const WAIT: Duration = Duration::from_secs(90);

fn send_direct(source: &Path, receiver: &Receiver) -> (Option<i32>, String) {
    let mut cmd = teecast(["send", "--strategy", "direct", "--digest", "sha256"]);
    cmd.arg(source).arg(receiver.dest());
    let (sender, _) = Running::spawn_with(&mut cmd, Stdio::null(), Some(Stdio::null()));
    let done = sender.wait(WAIT);
    assert!(
        done.stderr.lines().any(|l| l.contains("teecast: ")),
        "sender printed no \"teecast: \" line: {done:?}"
    );
    (done.status.code(), done.stderr)
}

/// Sizes that are not multiples of the block: the tail goes through a buffered read. (It used to
/// be read with `pread` on the `O_DIRECT` descriptor, which fails with EINVAL on an unaligned
/// length, so every such file failed.)
#[test]
fn regression_direct_tail_pread_einval_on_unaligned_sizes() {
    let work = tempfile::tempdir().unwrap();
    for (i, size) in [1u64, 100, 3 * 4096 + 17, (1 << 20) + 1, 5 * 4096]
        .into_iter()
        .enumerate()
    {
        let source = work.path().join(format!("f{i}.bin"));
        random_file(&source, size, 40 + i as u64);
        let dir = work.path().join(format!("r{i}"));
        let receiver = Receiver::once_in(&dir, &[]);
        let (code, stderr) = send_direct(&source, &receiver);
        assert_eq!(code, Some(0), "size {size}: {stderr}");
        assert_eq!(receiver.proc.wait(WAIT).status.code(), Some(0));
        let copy = dir.join(format!("f{i}.bin"));
        assert_eq!(std::fs::metadata(&copy).unwrap().len(), size);
        assert_eq!(sha256_file(&copy), sha256_file(&source), "size {size}");
    }
}

/// sysfs refuses `open(O_DIRECT)` (EINVAL): the send stops with usage exit 2 before it connects,
/// says which strategy to use instead, and the receiver keeps nothing.
#[test]
fn direct_on_a_filesystem_refusing_o_direct_says_what_to_use() {
    let source = Path::new("/sys/devices/system/cpu/online");
    assert!(source.is_file(), "this test needs sysfs mounted at /sys");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("r");
    let receiver = Receiver::once_in(&dir, &[]);
    let (code, stderr) = send_direct(source, &receiver);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("refuses O_DIRECT"), "{stderr}");
    assert!(stderr.contains("--strategy read-pipe"), "{stderr}");
    assert_eq!(list_dir(&dir), Vec::<String>::new());
    // Refused before any connection: the receiver still waits for its one stream, and a good
    // send is the one it takes.
    let good = work.path().join("good.bin");
    std::fs::write(&good, b"good").unwrap();
    run(teecast(["send"]).arg(&good).arg(receiver.dest())).expect_code(0);
    assert_eq!(receiver.proc.wait(WAIT).status.code(), Some(0));
    assert_eq!(list_dir(&dir), vec!["good.bin".to_string()]);
}

/// A consumer that keeps what it is given, through the library's `Consumer` trait.
struct Collect(Vec<u8>);

impl teecast::engine::Consumer for Collect {
    type Outcome = Vec<u8>;
    type Error = teecast::engine::Abandoned;

    fn take_pipe(
        &mut self,
        pipe: std::os::fd::BorrowedFd<'_>,
    ) -> Result<u64, teecast::engine::Abandoned> {
        let mut file = std::fs::File::from(pipe.try_clone_to_owned().unwrap());
        let before = self.0.len();
        std::io::Read::read_to_end(&mut file, &mut self.0).unwrap();
        Ok((self.0.len() - before) as u64)
    }
    fn take_from_buffer(&mut self, bytes: &[u8]) -> Result<(), teecast::engine::Abandoned> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
    fn finish(
        &mut self,
        _length: u64,
        _digest: &teecast::digest::Digest,
    ) -> Result<Vec<u8>, teecast::engine::Abandoned> {
        Ok(std::mem::take(&mut self.0))
    }
    fn abort(&mut self) {}
}

/// `direct` reads the file that was opened: after its name is given to another file, the
/// O_DIRECT descriptor (reopened through /proc/self/fd) still reads the first one. Reopening
/// by name would read the other file, and the bytes and digest would differ. The file lives on
/// tmpfs (/dev/shm), which serves O_DIRECT on the kernels teecast supports.
#[test]
fn direct_reads_the_opened_file_after_its_name_moves() {
    use teecast::digest::DigestAlgorithm;
    use teecast::engine::{FanoutConfig, fan_out};
    use teecast::source::Source;
    use teecast::strategy::Strategy;

    let shm = Path::new("/dev/shm");
    assert!(shm.is_dir(), "this test needs a tmpfs at /dev/shm");
    let dir = tempfile::tempdir_in(shm).unwrap();
    let path = dir.path().join("source.bin");
    let sha = random_file(&path, 3 * 1024 * 1024 + 5, 61);
    let source = Source::open(&path).unwrap();
    let other = dir.path().join("other.bin");
    random_file(&other, 3 * 1024 * 1024 + 5, 62);
    std::fs::rename(&other, &path).unwrap();
    let config = FanoutConfig::default()
        .strategy(Strategy::Direct)
        .digest(DigestAlgorithm::Sha256);
    let mut report = fan_out(&source, vec![Collect(Vec::new())], &config);
    assert_eq!(report.result.expect("direct fan-out").hex(), sha);
    let got = report.consumers.remove(0).expect("the consumer's bytes");
    assert_eq!(common::sha256_bytes(&got), sha);
}

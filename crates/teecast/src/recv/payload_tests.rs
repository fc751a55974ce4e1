//! The receiver's payload pipeline against the obvious model: the file holds exactly the bytes
//! sent, and the digest is the one-shot digest of those bytes — in one piece or in chunks, until
//! EOF, on tmpfs and on a disk filesystem (where writeback starts as the stream goes).

use super::*;
use crate::store::{WRITEBACK_STEP, writeback_start};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

/// Bytes no two positions of which repeat within a page or a chunk.
fn pattern(len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect()
}

/// Sends `data` over loopback and receives it with one `Payload::copy` per piece of `pieces`
/// (`None`: until EOF) into a temporary file in `dir`; returns the file's bytes and the digest.
fn receive_through(
    dir: &std::path::Path,
    digest: DigestAlgorithm,
    data: &[u8],
    pieces: &[Option<u64>],
) -> (Vec<u8>, Digest) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = data.to_vec();
    let sender = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        // Odd write sizes, so reads end anywhere.
        for piece in sent.chunks(77_777) {
            s.write_all(piece).unwrap();
        }
    });
    let (sock, _) = listener.accept().unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut file = tempfile::tempfile_in(dir).unwrap();
    let options = RecvOptions::new(Target::Dir(dir.to_path_buf()));
    let mut payload = Payload::new(digest, &options).unwrap();
    for &piece in pieces {
        payload.copy(sock.as_fd(), file.as_fd(), piece).unwrap();
    }
    sender.join().unwrap();
    assert_eq!(payload.bytes, data.len() as u64);
    let digest = payload.finish().unwrap();
    let mut stored = Vec::new();
    use std::io::Seek;
    file.seek(io::SeekFrom::Start(0)).unwrap();
    file.read_to_end(&mut stored).unwrap();
    (stored, digest)
}

fn one_shot(digest: DigestAlgorithm, data: &[u8]) -> Digest {
    let mut h = Hasher::new(digest);
    h.update(data);
    h.finish()
}

/// A directory on a disk filesystem (not tmpfs): the temporary directory or /var/tmp. Fails,
/// saying so, on a machine with neither, rather than pass without the disk path.
fn disk_dir() -> PathBuf {
    [std::env::temp_dir(), PathBuf::from("/var/tmp")]
        .into_iter()
        .find(|d| std::fs::File::open(d).is_ok_and(|f| !sys::is_tmpfs(&f).unwrap_or(true)))
        .expect("these tests need a disk filesystem at $TMPDIR or /var/tmp (both are tmpfs here)")
}

/// A directory on tmpfs: /dev/shm. Fails, saying so, where it is not one.
fn tmpfs_dir() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    assert!(
        std::fs::File::open(&shm).is_ok_and(|f| sys::is_tmpfs(&f).unwrap_or(false)),
        "these tests need /dev/shm to be a tmpfs"
    );
    shm
}

/// Directories to store in: a disk (where writeback starts as the stream goes) and tmpfs.
fn dirs() -> Vec<PathBuf> {
    vec![disk_dir(), tmpfs_dir()]
}

#[test]
fn known_length_stored_and_hashed_at_odd_sizes() {
    for dir in dirs() {
        for len in [
            0,
            1,
            4095,
            4097,
            RECEIVE_CHUNK - 1,
            RECEIVE_CHUNK + 1,
            3_000_017,
        ] {
            for alg in [DigestAlgorithm::Xxh3_128, DigestAlgorithm::None] {
                let data = pattern(len);
                let (stored, digest) = receive_through(&dir, alg, &data, &[Some(len as u64)]);
                assert!(stored == data, "{} {len} {alg:?}", dir.display());
                assert_eq!(digest.bytes, one_shot(alg, &data).bytes);
            }
        }
    }
}

#[test]
fn chunked_and_until_eof_streams_match_the_model() {
    let data = pattern(5 * RECEIVE_CHUNK + 12_345);
    let chunks: Vec<Option<u64>> = [1, 4096, RECEIVE_CHUNK as u64, 2_000_000, 65_537]
        .into_iter()
        .map(Some)
        .chain([None])
        .collect();
    for dir in dirs() {
        for alg in [DigestAlgorithm::Blake3, DigestAlgorithm::None] {
            let (stored, digest) = receive_through(&dir, alg, &data, &chunks);
            assert!(stored == data, "{} {alg:?}", dir.display());
            assert_eq!(digest.bytes, one_shot(alg, &data).bytes);
        }
    }
}

/// Over many writeback steps, in pieces that end off them.
#[test]
fn a_stream_of_many_writeback_steps_is_stored_whole() {
    let len = (11 * WRITEBACK_STEP) as usize + 4321;
    let data = pattern(len);
    let first = 5 * WRITEBACK_STEP + 99;
    let pieces = [Some(first), Some(len as u64 - first)];
    let (stored, digest) = receive_through(
        &std::env::temp_dir(),
        DigestAlgorithm::Xxh3_128,
        &data,
        &pieces,
    );
    assert!(stored == data);
    assert_eq!(
        digest.bytes,
        one_shot(DigestAlgorithm::Xxh3_128, &data).bytes
    );
}

#[test]
fn a_short_stream_is_truncated_not_stored() {
    let data = pattern(10_000);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let sender = std::thread::spawn(move || {
        TcpStream::connect(addr).unwrap().write_all(&data).unwrap();
    });
    let (sock, _) = listener.accept().unwrap();
    let file = tempfile::tempfile().unwrap();
    let options = RecvOptions::new(Target::Dir(std::env::temp_dir()));
    let mut payload = Payload::new(DigestAlgorithm::Xxh3_128, &options).unwrap();
    let err = payload
        .copy(sock.as_fd(), file.as_fd(), Some(10_001))
        .unwrap_err();
    sender.join().unwrap();
    assert!(
        matches!(err, RecvError::Truncated { got: 10_000, .. }),
        "{err}"
    );
}

#[test]
fn writeback_only_for_regular_files_off_tmpfs() {
    let pipe = Pipe::with_size(4096).unwrap();
    assert!(writeback_start(pipe.write.as_fd(), 0).is_none());
    let f = tempfile::tempfile_in(tmpfs_dir()).unwrap();
    assert!(writeback_start(f.as_fd(), 0).is_none());
    let mut f = tempfile::tempfile_in(disk_dir()).unwrap();
    f.write_all(&[0u8; 100]).unwrap();
    // 100 bytes stored from offset 0.
    assert_eq!(writeback_start(f.as_fd(), 100), Some((0, 0)));
    // More stored than the offset: not a payload this file holds.
    assert_eq!(writeback_start(f.as_fd(), 101), None);
}

/// Regression: `recv --output - | cat > FILE` took 1.46 s for 1 GiB against mbuffer's 1.03 s,
/// writing into a 64 KiB pipe; into a pipe widened to a received piece, 1.02 s.
#[test]
fn a_pipe_written_into_is_widened_to_a_received_piece() {
    let pipe = Pipe::with_size(4096).unwrap();
    assert!(sys::pipe_size(&pipe.write).unwrap() < RECEIVE_CHUNK);
    widen_pipe(pipe.write.as_fd());
    // The per-user pipe quota may refuse it; then the pipe is only as it was.
    let size = sys::pipe_size(&pipe.write).unwrap();
    assert!(size >= RECEIVE_CHUNK || size == 4096, "{size}");
    let file = tempfile::tempfile().unwrap();
    widen_pipe(file.as_fd());
    let data = pattern(RECEIVE_CHUNK + 3);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = data.clone();
    let sender = std::thread::spawn(move || {
        TcpStream::connect(addr).unwrap().write_all(&sent).unwrap();
    });
    let (sock, _) = listener.accept().unwrap();
    let out = Pipe::with_size(4096).unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        File::from(out.read).read_to_end(&mut got).unwrap();
        got
    });
    let options = RecvOptions::new(Target::Stdout);
    let mut payload = Payload::new(DigestAlgorithm::Xxh3_128, &options).unwrap();
    payload.copy(sock.as_fd(), out.write.as_fd(), None).unwrap();
    drop(out.write);
    sender.join().unwrap();
    assert!(reader.join().unwrap() == data);
    assert_eq!(
        payload.finish().unwrap().bytes,
        one_shot(DigestAlgorithm::Xxh3_128, &data).bytes
    );
}

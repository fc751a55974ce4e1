//! The engine over a caller's filler: a socket spliced into the source pipe, as a relay will
//! forward a stream it receives (received pages are private, so the pipe's bytes are stable).

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::BorrowedFd;

use teecast::digest::{DigestAlgorithm, Hasher};
use teecast::engine::{Abandoned, Consumer, EngineError, FanoutConfig, Filler, fan_out_filled};
use teecast_sys::SpliceFlags;

/// Splices whatever the socket has into the pipe.
struct SocketFiller(TcpStream);

impl Filler for SocketFiller {
    fn fill(
        &mut self,
        pipe: BorrowedFd<'_>,
        _offset: u64,
        want: usize,
        _hasher: Option<&mut Hasher>,
    ) -> Result<usize, EngineError> {
        let mut done = 0;
        while done < want {
            let n = teecast_sys::splice(
                std::os::fd::AsFd::as_fd(&self.0),
                pipe,
                want - done,
                SpliceFlags::MORE,
            )
            .map_err(|source| EngineError::Source {
                op: "splice",
                source,
            })?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }

    fn hashes(&self) -> bool {
        false
    }
}

/// Keeps every byte it is given: it wants bytes only, so the engine's default `take_pipe`
/// reads its pipe for it.
struct Collect(Vec<u8>);

impl Consumer for Collect {
    type Outcome = Vec<u8>;
    type Error = Abandoned;

    fn take_from_buffer(&mut self, bytes: &[u8]) -> Result<(), Abandoned> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
    fn finish(&mut self, _: u64, _: &teecast::digest::Digest) -> Result<Vec<u8>, Abandoned> {
        Ok(std::mem::take(&mut self.0))
    }
    fn abort(&mut self) {}
}

/// A connected socket from which `bytes` can be read, then end of file.
fn socket_with(bytes: Vec<u8>) -> (TcpStream, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let writer = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(&bytes).unwrap();
    });
    (TcpStream::connect(addr).unwrap(), writer)
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn naive(bytes: &[u8]) -> Vec<u8> {
    let mut h = Hasher::new(DigestAlgorithm::Xxh3_128);
    h.update(bytes);
    h.finish().bytes
}

#[test]
fn a_socket_of_known_length_reaches_every_consumer_and_the_capture() {
    let data = payload(3 * 1024 * 1024 + 17);
    let (socket, writer) = socket_with(data.clone());
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("copy");
    let config = FanoutConfig::default().capture(&capture);
    let report = fan_out_filled(
        SocketFiller(socket),
        Some(data.len() as u64),
        vec![Collect(Vec::new()), Collect(Vec::new())],
        &config,
    );
    writer.join().unwrap();
    assert_eq!(report.result.expect("fan-out").bytes, naive(&data));
    assert_eq!(report.bytes, data.len() as u64);
    assert!(report.strategy.is_none());
    for c in report.consumers {
        assert!(c.expect("consumer") == data);
    }
    assert!(matches!(report.capture, Some(Ok(()))));
    assert!(std::fs::read(&capture).unwrap() == data);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn a_socket_that_ends_early_is_truncated_and_nothing_is_captured() {
    let data = payload(100_000);
    let (socket, writer) = socket_with(data.clone());
    let dir = tempfile::tempdir().unwrap();
    let config = FanoutConfig::default().capture(dir.path().join("copy"));
    let report = fan_out_filled(
        SocketFiller(socket),
        Some(200_000),
        vec![Collect(Vec::new())],
        &config,
    );
    writer.join().unwrap();
    assert!(
        matches!(
            report.result,
            Err(EngineError::Truncated {
                at: 100_000,
                expected: 200_000
            })
        ),
        "{:?}",
        report.result
    );
    assert!(report.consumers[0].is_err());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_socket_of_unknown_length_is_read_to_its_end() {
    let data = payload(1024 * 1024 + 1);
    let (socket, writer) = socket_with(data.clone());
    let report = fan_out_filled(
        SocketFiller(socket),
        None,
        vec![Collect(Vec::new())],
        &FanoutConfig::default(),
    );
    writer.join().unwrap();
    assert_eq!(report.result.expect("fan-out").bytes, naive(&data));
    assert!(report.consumers.into_iter().next().unwrap().unwrap() == data);
}

//! The send API as a library caller uses it: `Transfer` checks the request and sizes its own
//! progress counters.

use std::io::Read;
use std::net::TcpListener;

use teecast::send::{Delivered, SendError, SendOptions, Transfer};
use teecast::source::Source;

/// Regression: `send::send` with a `Progress` of the wrong size panicked (on the calling
/// thread, and on a consumer's). The transfer now makes its counters itself, one per
/// destination, and they end at the bytes each destination was sent.
#[test]
fn regression_progress_is_sized_by_the_transfer() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, &vec![5u8; 300_000]).unwrap();
    let source = Source::open(file.path()).unwrap();
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let readers: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            std::thread::spawn(move || {
                let (mut s, _) = l.accept().unwrap();
                let mut got = Vec::new();
                s.read_to_end(&mut got).unwrap();
                got.len()
            })
        })
        .collect();
    let transfer = Transfer::new(&source, &addrs, &SendOptions::default().raw(true)).unwrap();
    let progress = transfer.progress();
    assert_eq!(progress.sent(), vec![0, 0, 0]);
    let report = transfer.run();
    assert!(report.is_success(), "{report:?}");
    assert_eq!(progress.sent(), vec![300_000; 3]);
    for d in &report.destinations {
        assert!(matches!(d.outcome, Ok(Delivered::Sent)));
        assert_eq!(d.bytes, 300_000);
    }
    for r in readers {
        assert_eq!(r.join().unwrap(), 300_000);
    }
}

#[test]
fn a_transfer_without_destinations_is_refused_before_it_starts() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let source = Source::open(file.path()).unwrap();
    assert!(matches!(
        Transfer::new(&source, &[], &SendOptions::default()),
        Err(SendError::NoDestinations)
    ));
}

/// Regression: `stall_timeout(Duration::MAX)`, the natural "never", overflowed `Instant + Duration`
/// and panicked the destination's thread. Every timeout of both ends at `Duration::MAX`: the
/// stream is stored and confirmed.
#[test]
fn regression_timeouts_of_duration_max_mean_never() {
    use std::time::Duration;
    use teecast::recv::{self, RecvOptions, Target};
    let dir = tempfile::tempdir().unwrap();
    let source_path = dir.path().join("data.bin");
    std::fs::write(&source_path, vec![7u8; 1_000_000]).unwrap();
    let inbox = dir.path().join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let receiver = std::thread::spawn({
        let inbox = inbox.clone();
        move || {
            let options = RecvOptions::new(Target::Dir(inbox))
                .stall_timeout(Duration::MAX)
                .header_timeout(Duration::MAX);
            recv::serve(&listener, &options, true, &|_, _| {}).unwrap()
        }
    });
    let source = Source::open(&source_path).unwrap();
    let options = SendOptions::default()
        .stall_timeout(Duration::MAX)
        .connect_timeout(Duration::MAX);
    let report = Transfer::new(&source, &[address], &options).unwrap().run();
    assert!(report.is_success(), "{report:?}");
    assert!(receiver.join().unwrap(), "the receiver stored it");
    assert_eq!(
        std::fs::read(inbox.join("data.bin")).unwrap(),
        vec![7u8; 1_000_000]
    );
}

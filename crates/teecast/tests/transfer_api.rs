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

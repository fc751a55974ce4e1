//! A receiver that takes exactly one stream into one file, fed by a sender on another thread.
//!
//! The receiving side is what `teecast recv --output FILE --once` does: accept one connection,
//! store the stream under a temporary name, check the sender's digest, fsync, rename into place
//! and acknowledge. Run with `cargo run -p teecast --example receive_once`; it exits 0 only if the
//! stream was stored, verified and is identical to the file sent.

use std::error::Error;
use std::net::TcpListener;
use std::thread;

use teecast::recv::{self, RecvOptions, Target};
use teecast::send::{self, SendOptions};
use teecast::source::Source;

fn main() -> Result<(), Box<dyn Error>> {
    let work = tempfile::tempdir()?;

    // The file to send: 1 MiB and a little.
    let sent_path = work.path().join("outgoing.dat");
    let data: Vec<u8> = (0..(1u32 << 20) + 777)
        .map(|i| (i % 253) as u8 ^ (i >> 11) as u8)
        .collect();
    std::fs::write(&sent_path, &data)?;

    // Listen first, on an ephemeral port, so the sender has somewhere to connect.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?.to_string();
    println!("listening on {address}");

    // The sender: one destination, default options (the `auto` path, XXH3-128).
    let sender = thread::spawn(move || {
        let source = Source::open(&sent_path).map_err(|e| e.to_string())?;
        let report = send::send(&source, &[address], &SendOptions::default());
        for dest in &report.destinations {
            match &dest.outcome {
                Ok(_) => println!("sender: {} confirmed {} bytes", dest.address, dest.bytes),
                Err(e) => println!("sender: {} failed: {e}", dest.address),
            }
        }
        if report.is_success() {
            Ok(report)
        } else {
            Err(format!("the send did not succeed: {:?}", report.error))
        }
    });

    // The receiver: one accepted connection, stored at a fixed path whatever name the sender
    // announces (`Target::File`). `receive` answers the sender before it returns.
    let target = work.path().join("incoming").with_extension("img");
    let (stream, peer) = listener.accept()?;
    println!("accepted a connection from {peer}");
    let received = recv::receive(stream, &RecvOptions::new(Target::File(target.clone())))
        .map_err(|e| format!("receiving ({}): {e}", e.kind()))?;
    println!("received path:   {}", received.path.display());
    println!("received bytes:  {}", received.bytes);
    println!(
        "received digest: {} {}",
        received.digest.algorithm,
        received.digest.hex()
    );

    let report = sender.join().map_err(|_| "the sender panicked")??;

    // Checks: stored where asked, every byte, and the digest both sides computed.
    assert_eq!(received.path, target);
    assert_eq!(received.bytes, data.len() as u64);
    assert_eq!(std::fs::read(&target)?, data, "the stored file differs");
    assert_eq!(
        report.digest.as_ref(),
        Some(&received.digest),
        "sender and receiver disagree on the digest"
    );
    println!("stored and verified");
    Ok(())
}

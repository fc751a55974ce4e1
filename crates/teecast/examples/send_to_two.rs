//! Sends one 4 MiB file to two receivers at once, on loopback, and checks that both stored
//! exactly the bytes of the source.
//!
//! Run with `cargo run -p teecast --example send_to_two`. Everything happens in temporary
//! directories on ephemeral ports; the program exits 0 only if both copies are byte-identical to
//! the source and both receivers confirmed the digest.

use std::error::Error;
use std::net::TcpListener;
use std::path::PathBuf;
use std::thread::{self, JoinHandle};

use teecast::digest::DigestAlgorithm;
use teecast::recv::{self, Received, RecvError, RecvOptions, Target};
use teecast::send::{self, Delivered, SendOptions};
use teecast::source::Source;

/// Starts a receiver on an ephemeral loopback port that stores one stream into `dir` under its
/// announced name. Returns the address to send to and the thread that yields what it stored.
fn start_receiver(
    dir: PathBuf,
) -> std::io::Result<(String, JoinHandle<Result<Received, RecvError>>)> {
    // Binding happens here, before the sender runs, so its connection is queued by the kernel
    // even if the thread below has not reached `accept` yet.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?.to_string();
    let handle = thread::spawn(move || {
        let (stream, _peer) = listener.accept().map_err(|source| RecvError::Io {
            op: "accepting",
            source,
        })?;
        recv::receive(stream, &RecvOptions::new(Target::Dir(dir)))
    });
    Ok((address, handle))
}

fn main() -> Result<(), Box<dyn Error>> {
    // The source: 4 MiB of a pattern that is not periodic at any power of two, so a misplaced
    // chunk would show.
    let work = tempfile::tempdir()?;
    let source_path = work.path().join("payload.bin");
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&source_path, &data)?;

    // Two receivers, each with a directory of its own.
    let dir_a = tempfile::tempdir()?;
    let dir_b = tempfile::tempdir()?;
    let (addr_a, recv_a) = start_receiver(dir_a.path().to_path_buf())?;
    let (addr_b, recv_b) = start_receiver(dir_b.path().to_path_buf())?;

    // One send to both. The default path and digest would do; BLAKE3 is chosen here only to show
    // the option.
    let source = Source::open(&source_path)?;
    let destinations = vec![addr_a, addr_b];
    let options = SendOptions::default().digest(DigestAlgorithm::Blake3);
    let report = send::send(&source, &destinations, &options);

    println!(
        "sent {} ({} bytes) over {} in {:.3} s",
        report.name,
        report.bytes,
        report.strategy.name(),
        report.elapsed.as_secs_f64()
    );
    if let Some(digest) = &report.digest {
        println!("digest {}: {}", digest.algorithm, digest.hex());
    }
    for dest in &report.destinations {
        match &dest.outcome {
            Ok(Delivered::Confirmed { receiver_digest }) => println!(
                "  {}: confirmed, {} bytes, receiver digest {}",
                dest.address,
                dest.bytes,
                teecast::digest::to_hex(receiver_digest)
            ),
            Ok(Delivered::Relayed) => println!("  {}: confirmed by its relay", dest.address),
            Ok(Delivered::Sent) => println!("  {}: sent, {} bytes", dest.address, dest.bytes),
            Err(e) => println!("  {}: FAILED ({}): {e}", dest.address, e.kind()),
        }
    }
    if let Some(e) = &report.error {
        return Err(format!("the send failed: {e}").into());
    }
    if !report.is_success() {
        return Err("not every destination confirmed".into());
    }

    // What each receiver says it stored, and the stored files themselves.
    for (name, handle) in [("a", recv_a), ("b", recv_b)] {
        let received = handle.join().map_err(|_| "a receiver panicked")??;
        println!(
            "receiver {name}: {} ({} bytes)",
            received.path.display(),
            received.bytes
        );
        let stored = std::fs::read(&received.path)?;
        if stored != data {
            return Err(format!("receiver {name} stored different bytes").into());
        }
        // The receiver's digest is the one the sender computed.
        if Some(&received.digest) != report.digest.as_ref() {
            return Err(format!("receiver {name} has another digest").into());
        }
    }
    // Stored under the announced name: the source's file name.
    assert!(dir_a.path().join("payload.bin").is_file());
    assert!(dir_b.path().join("payload.bin").is_file());
    println!("both copies are identical to the source");
    Ok(())
}

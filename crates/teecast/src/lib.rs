//! teecast sends one stream — a file or standard input — to many TCP destinations at once, so
//! that every destination, the digest and an optional capture file hold exactly the same bytes,
//! even while the source file is being written; with as few CPU copies as the kernel allows; and
//! confirmed end to end by each receiver.
//!
//! Layers, each using only those below it, as crates so the compiler holds the direction:
//! `teecast-sys` (the only `unsafe`), `teecast-proto` (the protocol, no I/O: re-exported as
//! [`proto`]), then this crate: [`engine`] (sources, fillers, the fan-out, consumers), the
//! transfers [`send`] and [`recv`] over [`transport`], the [`store`] that publishes received files,
//! and the [`probe`] and [`strategy`] that choose a data path. The `teecast` command (crate
//! `teecast-cli`) is the only layer that knows flags, exit codes and JSON.
//!
//! The API is blocking: every transfer runs on the calling thread plus one thread per consumer.
//!
//! # Example
//!
//! Send a small file to one receiver on loopback; the receiver stores it in a directory under
//! its announced name and confirms the digest:
//!
//! ```
//! use std::net::TcpListener;
//! use teecast::recv::{self, RecvOptions, Target};
//! use teecast::send::{self, SendOptions};
//! use teecast::source::Source;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let file = dir.path().join("hello.txt");
//! std::fs::write(&file, b"hello, every destination\n")?;
//!
//! // A receiver on an ephemeral port, taking one stream into its own directory.
//! let incoming = tempfile::tempdir()?;
//! let listener = TcpListener::bind("127.0.0.1:0")?;
//! let address = listener.local_addr()?.to_string();
//! let options = RecvOptions::new(Target::Dir(incoming.path().to_path_buf()));
//! let receiver = std::thread::spawn(move || {
//!     let (stream, _) = listener.accept()?;
//!     recv::receive(stream, &options).map_err(std::io::Error::other)
//! });
//!
//! let source = Source::open(&file)?;
//! let report = send::send(&source, &[address], &SendOptions::default());
//! assert!(report.is_success());
//!
//! let received = receiver.join().expect("the receiver panicked")?;
//! assert_eq!(received.path, incoming.path().join("hello.txt"));
//! assert_eq!(std::fs::read(&received.path)?, b"hello, every destination\n");
//! # Ok(())
//! # }
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
mod dest;
pub mod digest;
pub mod engine;
pub mod probe;
pub mod recv;
pub mod send;
pub mod service;
pub mod source;
pub mod store;
pub mod strategy;
mod sync;
pub mod transport;
mod tree;

pub use teecast_proto as proto;

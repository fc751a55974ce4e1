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
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod digest;
pub mod engine;
pub mod probe;
pub mod recv;
pub mod send;
pub mod source;
pub mod store;
pub mod strategy;
pub mod transport;

pub use teecast_proto as proto;

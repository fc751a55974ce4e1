//! teecast sends one stream — a file or standard input — to many TCP destinations at once, so
//! that every destination, the digest and an optional capture file hold exactly the same bytes,
//! even while the source file is being written; with as few CPU copies as the kernel allows; and
//! confirmed end to end by each receiver.
//!
//! Layers, each using only those before it: [`sys`] (the only `unsafe`), [`engine`] (fillers and
//! the fan-out), [`wire`] (the protocol, pure), [`send`] and [`recv`] (transfers).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod atomic_file;
pub mod digest;
pub mod engine;
pub mod mutate;
pub mod probe;
pub mod recv;
pub mod send;
pub mod source;
pub mod strategy;
pub mod sys;
pub mod wire;

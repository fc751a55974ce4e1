//! The teecast protocol, with no I/O and no clock: the framed messages a sender and a receiver
//! exchange around a payload, their limits and validation, and (in [`session`]) the order
//! of a session as state machines that say what to read or write next.
//!
//! Nothing in this crate reads a socket, a file or a clock, and it has no `unsafe` and no libc:
//! it turns bytes into values and values into bytes, deterministically, so every decoder and the
//! receiver's session can be fuzzed. The library (`teecast`) drives these sessions over TCP.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod crypt;
pub mod digest;
pub mod session;
pub mod text;
pub mod tree;
pub mod wire;

pub use digest::DigestAlgorithm;

//! Receiving: splice each stream from its socket into a temporary file, check the digest against
//! the sender's trailer, fsync, rename, and acknowledge. Anything malformed closes that connection
//! only, leaves no file behind, and the receiver goes on serving.

mod conn;
mod control;
mod direct;
mod error;
mod gate;
mod options;
mod payload;
mod relay;
mod serve;
mod streams;

pub use control::Control;

pub use error::RecvError;
pub use options::{Event, EventHandler, KeepFree, Received, RecvOptions, Target};
pub use serve::{receive, serve, serve_until};

//! A framed connection being served, and what its streams share.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use teecast_proto::session::{Mismatch, ReceiverSession};
use teecast_proto::wire::HostReport;

use super::control::Control;
use super::error::RecvError;
use super::options::RecvOptions;
use super::streams::{Registered, Streams};
use crate::transport;

/// A framed connection being served: its socket and session (which a parent resuming the stream
/// replaces with its own), and what serving it needs.
pub(super) struct Conn<'a> {
    pub(super) stream: TcpStream,
    pub(super) session: ReceiverSession,
    pub(super) options: &'a RecvOptions,
    pub(super) peer: Option<SocketAddr>,
    /// For a relay: the outcome of every host below this one, for its acknowledgement.
    pub(super) reports: Vec<HostReport>,
    pub(super) streams: &'a Streams,
    /// Says when the stream is to end because the receiver stops.
    pub(super) control: &'a Control,
    /// A relayed stream's place in `streams`, kept past its end until its acknowledgement is
    /// out (and a late resume answered, or not needed).
    pub(super) registered: Option<Registered<'a>>,
    /// For a relay: its confirmed children's connections, held until its own parent has read
    /// its acknowledgement (then closed in order).
    pub(super) children: Vec<TcpStream>,
    /// For a relay: report messages for its parent not yet written, due before its
    /// acknowledgement.
    pub(super) upstream: Vec<u8>,
}

/// How long a receiver that refused a stream keeps reading (and dropping) what still arrives.
pub(super) const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// Reads and drops input until EOF, an error, or `limit` has passed.
pub(super) fn discard_input(mut stream: &TcpStream, limit: Duration) {
    let deadline = transport::deadline(limit);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.map_or(limit, |d| d.saturating_duration_since(Instant::now()));
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The receiver's error for a stream that failed its checks after the trailer.
pub(super) fn mismatch(m: Mismatch) -> RecvError {
    match m {
        Mismatch::Length {
            announced,
            received,
        } => RecvError::LengthMismatch {
            announced,
            received,
        },
        Mismatch::Digest {
            announced,
            received,
        } => RecvError::DigestMismatch {
            announced,
            received,
        },
        _ => RecvError::Unsealed,
    }
}

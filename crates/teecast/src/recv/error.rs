//! Why a stream was refused or failed, in the receiver's words and as its acknowledgement's status.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use teecast_proto::wire::{AckStatus, WireError};

use crate::digest::to_hex;

use super::control::Control;
/// Why a stream was not stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The peer's bytes broke the protocol.
    #[error("{0}")]
    Wire(#[from] WireError),
    /// The connection ended before the stream did.
    #[error(
        "stream cut short after {got} payload bytes: the connection closed during the {during}"
    )]
    Truncated {
        /// Payload bytes received.
        got: u64,
        /// What was being read: "header", "payload", "chunk header", "trailer".
        during: &'static str,
    },
    /// The sender's trailer disagrees with what arrived.
    #[error(
        "digest mismatch: the sender announced {}, the received bytes hash to {}; file discarded",
        to_hex(announced),
        to_hex(received)
    )]
    DigestMismatch {
        /// The digest in the trailer.
        announced: Vec<u8>,
        /// The digest of the received bytes.
        received: Vec<u8>,
    },
    /// The trailer's length disagrees with what arrived.
    #[error(
        "length mismatch: the sender announced {announced} bytes, {received} arrived; file discarded"
    )]
    LengthMismatch {
        /// Length in the header or trailer.
        announced: u64,
        /// Bytes received.
        received: u64,
    },
    /// The stream's seal does not verify under the session's key: changed, replayed, or taken
    /// from another session.
    #[error(
        "the stream's seal does not verify (changed, replayed or from another session); file discarded"
    )]
    Unsealed,
    /// An encrypted stream's records do not open: altered, dropped, repeated, reordered, from
    /// another transfer, or cut short.
    #[error("the encrypted stream does not verify: {0}; file discarded")]
    Records(#[from] teecast_proto::crypt::CryptError),
    /// The announced length does not fit in the space left where the file would go.
    #[error("no space for the file: {needed} bytes announced, {available} available")]
    NoSpace {
        /// The announced length.
        needed: u64,
        /// The space left for this user on the filesystem.
        available: u64,
    },
    /// The stream is larger than the receiver takes ([`RecvOptions::max_size`](super::RecvOptions::max_size)).
    #[error(
        "the stream is larger than this receiver takes (max size {limit} bytes a stream){}; nothing kept",
        length.map_or_else(String::new, |n| format!(": {n} bytes announced"))
    )]
    TooLarge {
        /// The limit.
        limit: u64,
        /// The announced length, when the stream was refused at its header.
        length: Option<u64>,
    },
    /// Storing the stream would leave less free space than the receiver keeps
    /// ([`RecvOptions::keep_free`](super::RecvOptions::keep_free)).
    #[error(
        "storing it would leave less free space than this receiver keeps (keep free {reserve} bytes){}: {available} bytes available; nothing kept",
        needed.map_or_else(String::new, |n| format!(", for {n} bytes announced"))
    )]
    Reserve {
        /// The free space to keep, in bytes.
        reserve: u64,
        /// The space available when it was checked.
        available: u64,
        /// The announced length, when the stream was refused at its header.
        needed: Option<u64>,
    },
    /// A raw receiver was sent a teecast session (the sender needs `raw`, or the receiver not).
    #[error(
        "this is a teecast session, not a bare stream: the receiver is in raw mode and the sender is not"
    )]
    FramedIntoRaw,
    /// The peer already holds as many streams as one address may.
    #[error("too many streams from this address at once; closed")]
    Busy,
    /// The connection had not sent its header when its place was needed for a newer one.
    #[error("closed before its header to make room for newer connections")]
    Displaced,
    /// The stream is to be forwarded to other hosts, and this receiver does not relay.
    #[error("this receiver does not forward streams to other hosts")]
    NotARelay,
    /// The stream is to be forwarded beyond loopback without authentication.
    #[error("this relay forwards an unauthenticated stream (no key) only among loopback addresses")]
    UnauthenticatedForward,
    /// The receiver takes one stream (`once`) and another passed its header first.
    #[error("this receiver takes one stream and is receiving another")]
    Taken,
    /// The connection resumed a relayed stream being received here; that stream goes on over
    /// it (not an error of the stream's).
    #[error("handed over to the stream it resumes")]
    HandedOver,
    /// The connection resumed a relayed stream this receiver had stored and verified already
    /// (its parent failed before reading the acknowledgement): it was answered as complete,
    /// with the copy's acknowledgement (not an error of the stream's).
    #[error("resumed after the copy was stored: confirmed to the new parent")]
    Confirmed,
    /// The receiver is stopping (`Control::stop`) and the stream had not ended by its
    /// deadline.
    #[error(
        "the receiver is stopping and this stream did not end in time; nothing of it is kept: send it again"
    )]
    Stopped,
    /// The announced name looks like one of teecast's temporary files.
    #[error("the name looks like a teecast temporary file; refused")]
    ReservedName,
    /// A file of that name exists and the receiver does not replace files (`no_clobber`).
    #[error("a file of that name exists here and is not replaced")]
    Exists,
    /// A keyed sender closed the connection after the welcome, before proving the key: most
    /// likely it holds another key (it found this receiver's proof wrong and gave up).
    #[error(
        "the sender did not prove the key (its encrypted hello does not verify, or it closed the connection before its proof): most likely it holds another key"
    )]
    NoProof,
    /// The sender went quiet, or did not finish a message in time.
    #[error("no data for {:.1} s; connection dropped", .0.as_secs_f64())]
    Stalled(Duration),
    /// The stream cannot be stored here at all (no such directory, no permission).
    #[error("cannot create a file beside {}: {source}", path.display())]
    CannotCreate {
        /// The final name the stream was bound for.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// A local failure while storing (disk full).
    #[error("{op}: {source}")]
    Io {
        /// What was being done: "receiving", "writing the file", "storing the file".
        op: &'static str,
        /// The system's error.
        #[source]
        source: io::Error,
    },
}

impl RecvError {
    /// The error as it stands when `control` may have cut the stream: a stream whose socket
    /// ended or went quiet after the cut was stopped by it.
    pub(super) fn stopped_if(self, control: &Control) -> RecvError {
        match self {
            RecvError::Truncated { .. } | RecvError::Stalled(_) | RecvError::Io { .. }
                if control.is_cut() =>
            {
                RecvError::Stopped
            }
            other => other,
        }
    }

    pub(crate) fn io(op: &'static str) -> impl FnOnce(io::Error) -> RecvError {
        move |source| RecvError::Io { op, source }
    }

    /// A failed framing read during `during`, after `got` payload bytes.
    pub(crate) fn reading(
        during: &'static str,
        got: u64,
        stall: Duration,
    ) -> impl FnOnce(io::Error) -> RecvError {
        move |e| match e.kind() {
            // A reset is a sender that vanished (closing with unread data resets), as is EOF.
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => {
                RecvError::Truncated { got, during }
            }
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => RecvError::Stalled(stall),
            _ => RecvError::Io {
                op: "receiving",
                source: e,
            },
        }
    }

    /// What the sender is told: the error's text, without this machine's paths.
    pub(crate) fn peer_message(&self) -> String {
        match self {
            RecvError::CannotCreate { source, .. } => {
                format!("cannot create the file here: {source}")
            }
            other => other.to_string(),
        }
    }

    pub(crate) fn ack_status(&self) -> AckStatus {
        match self {
            RecvError::Wire(_)
            | RecvError::CannotCreate { .. }
            | RecvError::ReservedName
            | RecvError::Busy
            | RecvError::Displaced
            | RecvError::Taken
            | RecvError::HandedOver
            | RecvError::Confirmed
            | RecvError::NotARelay
            | RecvError::UnauthenticatedForward
            | RecvError::FramedIntoRaw
            | RecvError::NoProof
            | RecvError::Stopped
            | RecvError::TooLarge { .. }
            | RecvError::Exists => AckStatus::Rejected,
            RecvError::Truncated { .. } | RecvError::Stalled(_) => AckStatus::Truncated,
            RecvError::Records(teecast_proto::crypt::CryptError::Truncated(_)) => {
                AckStatus::Truncated
            }
            RecvError::DigestMismatch { .. } | RecvError::Unsealed | RecvError::Records(_) => {
                AckStatus::DigestMismatch
            }
            RecvError::LengthMismatch { .. } => AckStatus::LengthMismatch,
            RecvError::Io { .. } | RecvError::NoSpace { .. } | RecvError::Reserve { .. } => {
                AckStatus::IoError
            }
        }
    }

    /// A short, stable name for machines: `protocol`, `truncated`, `digest-mismatch`, `unsealed`,
    /// `records`,
    /// `reserved-name`, `exists`, `no-space`, `too-large`, `reserve`, `stopped`,
    /// `length-mismatch`, `stalled`, `no-proof`, `cannot-create` or `io`.
    pub fn kind(&self) -> &'static str {
        match self {
            RecvError::Wire(_) => "protocol",
            RecvError::Truncated { .. } => "truncated",
            RecvError::DigestMismatch { .. } => "digest-mismatch",
            RecvError::Unsealed => "unsealed",
            RecvError::Records(_) => "records",
            RecvError::ReservedName => "reserved-name",
            RecvError::Busy => "busy",
            RecvError::Displaced => "displaced",
            RecvError::Taken => "taken",
            RecvError::HandedOver => "handed-over",
            RecvError::Confirmed => "confirmed",
            RecvError::Stopped => "stopped",
            RecvError::NotARelay => "not-a-relay",
            RecvError::UnauthenticatedForward => "unauthenticated-forward",
            RecvError::NoSpace { .. } => "no-space",
            RecvError::TooLarge { .. } => "too-large",
            RecvError::Reserve { .. } => "reserve",
            RecvError::FramedIntoRaw => "framed-into-raw",
            RecvError::Exists => "exists",
            RecvError::NoProof => "no-proof",
            RecvError::LengthMismatch { .. } => "length-mismatch",
            RecvError::Stalled(_) => "stalled",
            RecvError::CannotCreate { .. } => "cannot-create",
            RecvError::Io { .. } => "io",
        }
    }
}

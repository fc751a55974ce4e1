//! Failures in words, with the flag that changes them.

use teecast::engine::{EngineError, Unsupported};
use teecast::proto::wire::WireError;
use teecast::send::{DestFailure, SendError};
use teecast::transport::ConnectError;

/// A request the library refused, with the flag that changes it.
pub fn send_error_with_hint(e: &SendError) -> String {
    let unsupported = match e {
        SendError::Unsupported(u) | SendError::Engine(EngineError::Unsupported(u)) => Some(u),
        _ => None,
    };
    let hint = match (e, unsupported) {
        (_, Some(Unsupported::NeedsRegularFile(_))) => " (use --strategy read-pipe or readwrite)",
        (_, Some(Unsupported::MmapWriteNeedsOneConsumer)) => {
            " (use --strategy mmap-pipe or read-pipe)"
        }
        (_, Some(Unsupported::NoDirect { .. })) => " (use --strategy read-pipe)",
        (SendError::Name(_) | SendError::NameNotUtf8, _) => " (use --name)",
        (SendError::WeakDigest(_), _) => " (use --digest blake3, the default with a key)",
        _ => "",
    };
    format!("{e}{hint}")
}

/// A destination's failure, with the flag that governs it.
pub fn with_hint(e: &DestFailure) -> String {
    match e {
        DestFailure::Stalled(_) | DestFailure::NoAck(_) | DestFailure::NoWelcome(_) => {
            format!("{e} (--stall-timeout)")
        }
        DestFailure::Handshake(
            WireError::PeerUnkeyed | WireError::KeyRequired | WireError::BadSeal(_),
        ) => format!("{e} (--key-file on both ends, the same key)"),
        DestFailure::Connect(ConnectError::Connect { source, .. })
            if source.kind() == std::io::ErrorKind::TimedOut =>
        {
            format!("{e} (--connect-timeout)")
        }
        _ => e.to_string(),
    }
}

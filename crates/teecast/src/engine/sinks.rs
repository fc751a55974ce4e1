//! The consumers the engine provides: the digest branch and the capture file.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex};

use rustix::pipe::SpliceFlags;

use super::{Sink, SinkError};
use crate::digest::{Digest, Hasher};
use teecast_sys as sys;

/// The digest branch: hashes a copy of the stable stream.
pub(super) struct HashSink {
    pub(super) hasher: Option<Hasher>,
    pub(super) slot: Arc<Mutex<Option<Digest>>>,
    pub(super) buf: Vec<u8>,
}

impl Sink for HashSink {
    fn take_pipe(&mut self, pipe: BorrowedFd<'_>) -> Result<u64, SinkError> {
        self.buf.resize(256 * 1024, 0);
        let mut total = 0;
        loop {
            let n = sys::read(pipe, &mut self.buf).map_err(|e| SinkError::io("digest", &e))?;
            if n == 0 {
                return Ok(total);
            }
            if let Some(h) = &mut self.hasher {
                h.update(&self.buf[..n]);
            }
            total += n as u64;
        }
    }

    fn take_from_buffer(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        if let Some(h) = &mut self.hasher {
            h.update(bytes);
        }
        Ok(())
    }

    fn finish(&mut self, _length: u64, _digest: &Digest) -> Result<(), SinkError> {
        let digest = self.hasher.take().map(Hasher::finish);
        *self
            .slot
            .lock()
            .map_err(|_| SinkError("digest slot poisoned".into()))? = digest;
        Ok(())
    }

    fn abort(&mut self, _reason: &str) {}

    fn is_required(&self) -> bool {
        true
    }
}

/// The capture: exactly the bytes that were sent, in a file that appears only when complete.
pub struct CaptureSink {
    file: Option<crate::store::AtomicFile>,
}

impl CaptureSink {
    /// Prepares `path` (written under a temporary name until the stream completes).
    pub fn create(path: &std::path::Path) -> io::Result<CaptureSink> {
        Ok(CaptureSink {
            file: Some(crate::store::AtomicFile::create(path)?),
        })
    }

    fn file(&self) -> Result<&File, SinkError> {
        self.file
            .as_ref()
            .map(|f| f.file())
            .ok_or_else(|| SinkError("capture already closed".into()))
    }
}

impl Sink for CaptureSink {
    fn take_pipe(&mut self, pipe: BorrowedFd<'_>) -> Result<u64, SinkError> {
        let file = self.file()?;
        let mut total = 0;
        loop {
            // pipe → file is one copy in the kernel, into the page cache (KERNEL.md §4).
            let n = sys::splice(pipe, file.as_fd(), 1 << 30, SpliceFlags::MORE)
                .map_err(|e| SinkError::io("capture", &e))?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    }

    fn take_from_buffer(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        use std::io::Write;
        let mut file = self.file()?;
        file.write_all(bytes)
            .map_err(|e| SinkError::io("capture", &e))
    }

    fn finish(&mut self, _length: u64, _digest: &Digest) -> Result<(), SinkError> {
        let file = self
            .file
            .take()
            .ok_or_else(|| SinkError("capture already closed".into()))?;
        file.commit()
            .map(|_| ())
            .map_err(|e| SinkError::io("capture", &e))
    }

    fn abort(&mut self, _reason: &str) {
        self.file = None;
    }

    fn is_required(&self) -> bool {
        true
    }
}

//! The consumers the engine provides: the digest and the capture file.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use teecast_sys::SpliceFlags;

use super::{Abandoned, Consumer};
use crate::digest::{Digest, Hasher};
use crate::store::AtomicFile;
use teecast_sys as sys;

/// Why the digest consumer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DigestError {
    /// Reading its pipe failed.
    #[error("reading the digest's pipe: {0}")]
    Read(#[source] io::Error),
    /// The engine stopped feeding it.
    #[error(transparent)]
    Abandoned(#[from] Abandoned),
}

/// The digest consumer: hashes a copy of the stable stream (a tee of the stable pipe).
pub(super) struct Digester {
    pub(super) hasher: Option<Hasher>,
    pub(super) buf: Vec<u8>,
}

impl Consumer for Digester {
    type Outcome = Digest;
    type Error = DigestError;

    fn take_pipe(&mut self, pipe: BorrowedFd<'_>) -> Result<u64, DigestError> {
        self.buf.resize(256 * 1024, 0);
        let mut total = 0;
        loop {
            let n = sys::read(pipe, &mut self.buf).map_err(DigestError::Read)?;
            if n == 0 {
                return Ok(total);
            }
            if let Some(h) = &mut self.hasher {
                h.update(&self.buf[..n]);
            }
            total += n as u64;
        }
    }

    fn take_from_buffer(&mut self, bytes: &[u8]) -> Result<(), DigestError> {
        if let Some(h) = &mut self.hasher {
            h.update(bytes);
        }
        Ok(())
    }

    fn finish(&mut self, _length: u64, _digest: &Digest) -> Result<Digest, DigestError> {
        Ok(self.hasher.take().map_or_else(Digest::none, Hasher::finish))
    }

    fn abort(&mut self) {}
}

/// Why the capture failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    /// The capture's temporary file could not be created beside its path.
    #[error("cannot create {}: {source}", path.display())]
    Create {
        /// The capture path.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// Writing, syncing or renaming the file failed (a full disk, say).
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done: "writing", "storing".
        op: &'static str,
        /// The capture path.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The engine stopped feeding it.
    #[error(transparent)]
    Abandoned(#[from] Abandoned),
}

impl CaptureError {
    /// A short, stable name for machines: `create`, `io` or `abandoned`.
    pub fn kind(&self) -> &'static str {
        match self {
            CaptureError::Create { .. } => "create",
            CaptureError::Io { .. } => "io",
            CaptureError::Abandoned(_) => "abandoned",
        }
    }
}

/// Moves everything `pipe` brings, to its end, into `file` at the file's offset: pipe → file is
/// one copy in the kernel, into the page cache (docs/KERNEL.md §4). `wrote` hears of each piece
/// (its length and the total so far). The one loop of the consumers that store the stream: the
/// capture and a relay's own copy.
pub(crate) fn splice_to_file(
    pipe: BorrowedFd<'_>,
    file: BorrowedFd<'_>,
    mut wrote: impl FnMut(u64, u64),
) -> io::Result<u64> {
    let mut total = 0;
    loop {
        let n = sys::splice(pipe, file, 1 << 30, SpliceFlags::MORE)? as u64;
        if n == 0 {
            return Ok(total);
        }
        total += n;
        wrote(n, total);
    }
}

/// The capture: exactly the bytes that were sent, in a file that appears only when complete.
pub struct Capture {
    file: Option<AtomicFile>,
    path: PathBuf,
}

impl Capture {
    /// Prepares `path` (written under a temporary name until the stream completes).
    pub fn create(path: &Path) -> Result<Capture, CaptureError> {
        let file = AtomicFile::create(path).map_err(|source| CaptureError::Create {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Capture {
            file: Some(file),
            path: path.to_path_buf(),
        })
    }

    fn io(&self, op: &'static str) -> impl FnOnce(io::Error) -> CaptureError + '_ {
        move |source| CaptureError::Io {
            op,
            path: self.path.clone(),
            source,
        }
    }

    fn file(&self) -> Result<&File, CaptureError> {
        self.file
            .as_ref()
            .map(AtomicFile::file)
            .ok_or(CaptureError::Abandoned(Abandoned::Transfer))
    }
}

impl Consumer for Capture {
    type Outcome = ();
    type Error = CaptureError;

    fn take_pipe(&mut self, pipe: BorrowedFd<'_>) -> Result<u64, CaptureError> {
        let file = self.file()?;
        splice_to_file(pipe, file.as_fd(), |_, _| {}).map_err(self.io("writing"))
    }

    fn take_from_buffer(&mut self, bytes: &[u8]) -> Result<(), CaptureError> {
        let mut file = self.file()?;
        file.write_all(bytes).map_err(self.io("writing"))
    }

    fn finish(&mut self, _length: u64, _digest: &Digest) -> Result<(), CaptureError> {
        let file = self
            .file
            .take()
            .ok_or(CaptureError::Abandoned(Abandoned::Transfer))?;
        file.commit().map(|_| ()).map_err(self.io("storing"))
    }

    fn abort(&mut self) {
        self.file = None;
    }
}

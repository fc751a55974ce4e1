//! The consumers of a host with children: its local copy, a destination per child, the ring.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::Duration;

use teecast_proto::crypt::{CryptError, RecordReader};
use teecast_sys as sys;

use crate::dest::{Delivered, DestFailure, Destination};
use crate::digest::{Digest, Hasher};
use crate::engine::{Abandoned, Consumer, SourceMap, splice_to_file};
use crate::store::Writeback;
use crate::tree::ring::{RingError, RingWriter, Stopped, StoredCopy};
impl Drop for LocalCopy {
    /// A copy that goes without finishing (its thread panicked) ends its replay, so that no
    /// follower waits for bytes that will never be stored. After `finish` or `abort`, nothing.
    fn drop(&mut self) {
        if let Some(s) = &self.stored {
            s.end(Err(Stopped::LocalCopyFailed));
        }
    }
}

/// Where a stream goes at a host of a tree: its own file, a child, or the ring.
pub(crate) enum TreeConsumer<'a> {
    Local(LocalCopy),
    Child(Box<Destination<'a>>),
    Ring(RingWriter),
}

/// A relay's own copy: its pipe spliced into the store's file, telling `stored` (the replay of
/// an adopting relay) how far it got.
pub(crate) struct LocalCopy {
    pub(crate) file: Option<File>,
    pub(crate) stored: Option<Arc<StoredCopy>>,
    pub(crate) writeback: Writeback,
    /// An encrypted stream: the pipe holds its records, which this copy opens, storing and
    /// hashing the plaintext (the one AEAD pass at this host; the children are sent the
    /// records as they came).
    pub(crate) opening: Option<(RecordReader, Hasher)>,
}

impl LocalCopy {
    /// Reads the records in `pipe` straight into place, opens each, and stores its plaintext.
    fn open_records(
        file: &File,
        records: &mut RecordReader,
        hasher: &mut Hasher,
        writeback: &mut Writeback,
        pipe: BorrowedFd<'_>,
    ) -> Result<u64, TreeError> {
        let (mut took, mut stored) = (0u64, 0u64);
        loop {
            let n = sys::read(pipe, records.space()).map_err(TreeError::Local)?;
            if n == 0 {
                return Ok(took);
            }
            took += n as u64;
            records.filled(n, |plain| {
                hasher.update(plain);
                io::Write::write_all(&mut &*file, plain).map_err(TreeError::Local)?;
                stored += plain.len() as u64;
                writeback.advance(file.as_fd(), stored);
                Ok::<(), TreeError>(())
            })?;
        }
    }
}

pub(crate) enum TreeOutcome {
    /// The local copy is written; of an encrypted stream, with the digest of its plaintext.
    Local(Option<Digest>),
    Child(Delivered),
    Ring,
}

impl TreeOutcome {
    pub(crate) fn delivered(self) -> Result<Delivered, DestFailure> {
        match self {
            TreeOutcome::Child(d) => Ok(d),
            TreeOutcome::Local(_) | TreeOutcome::Ring => Err(Abandoned::Transfer.into()),
        }
    }
}

pub(crate) enum TreeError {
    Local(io::Error),
    /// The local copy's records do not open.
    Records(CryptError),
    Child(DestFailure),
    Ring(RingError),
    Abandoned(Abandoned),
}

impl TreeError {
    pub(crate) fn into_dest(self) -> DestFailure {
        match self {
            TreeError::Child(d) => d,
            TreeError::Abandoned(a) | TreeError::Ring(RingError::Abandoned(a)) => {
                DestFailure::Abandoned(a)
            }
            TreeError::Local(e) | TreeError::Ring(RingError::Io(e)) => DestFailure::Io {
                op: "writing the file",
                source: e,
            },
            TreeError::Records(e) => DestFailure::Io {
                op: "opening the records",
                source: io::Error::other(e),
            },
        }
    }
}

impl From<CryptError> for TreeError {
    fn from(e: CryptError) -> Self {
        TreeError::Records(e)
    }
}

impl From<Abandoned> for TreeError {
    fn from(a: Abandoned) -> Self {
        TreeError::Abandoned(a)
    }
}

impl Consumer for TreeConsumer<'_> {
    type Outcome = TreeOutcome;
    type Error = TreeError;

    fn start(&mut self) -> Result<(), TreeError> {
        match self {
            TreeConsumer::Local(_) | TreeConsumer::Ring(_) => Ok(()),
            TreeConsumer::Child(c) => c.start().map_err(TreeError::Child),
        }
    }

    fn take_pipe(&mut self, pipe: BorrowedFd<'_>) -> Result<u64, TreeError> {
        match self {
            TreeConsumer::Local(LocalCopy {
                file,
                writeback,
                opening: Some((records, hasher)),
                ..
            }) => {
                let file = file.as_ref().ok_or(Abandoned::Transfer)?;
                LocalCopy::open_records(file, records, hasher, writeback, pipe)
            }
            TreeConsumer::Local(LocalCopy {
                file,
                stored,
                writeback,
                opening: None,
            }) => {
                let file = file.as_ref().ok_or(Abandoned::Transfer)?;
                splice_to_file(pipe, file.as_fd(), |n, total| {
                    writeback.advance(file.as_fd(), total);
                    if let Some(s) = stored {
                        s.wrote(n);
                    }
                })
                .map_err(TreeError::Local)
            }
            TreeConsumer::Child(c) => c.take_pipe(pipe).map_err(TreeError::Child),
            TreeConsumer::Ring(r) => r.take_pipe(pipe).map_err(TreeError::Ring),
        }
    }

    fn take_from_buffer(&mut self, bytes: &[u8]) -> Result<(), TreeError> {
        match self {
            TreeConsumer::Local(LocalCopy {
                file,
                stored,
                opening: None,
                ..
            }) => {
                let mut file = file.as_ref().ok_or(Abandoned::Transfer)?;
                io::Write::write_all(&mut file, bytes).map_err(TreeError::Local)?;
                if let Some(s) = stored {
                    s.wrote(bytes.len() as u64);
                }
                Ok(())
            }
            TreeConsumer::Local(LocalCopy {
                file,
                opening: Some((records, hasher)),
                ..
            }) => {
                let file = file.as_ref().ok_or(Abandoned::Transfer)?;
                records.push(bytes, |plain| {
                    hasher.update(plain);
                    io::Write::write_all(&mut &*file, plain).map_err(TreeError::Local)
                })
            }
            TreeConsumer::Child(c) => c.take_from_buffer(bytes).map_err(TreeError::Child),
            TreeConsumer::Ring(r) => r.take_from_buffer(bytes).map_err(TreeError::Ring),
        }
    }

    fn take_from_map(
        &mut self,
        map: &SourceMap,
        offset: usize,
        len: usize,
    ) -> Result<(), TreeError> {
        match self {
            TreeConsumer::Child(c) => c.take_from_map(map, offset, len).map_err(TreeError::Child),
            TreeConsumer::Local(_) | TreeConsumer::Ring(_) => Err(Abandoned::NoMapping.into()),
        }
    }

    fn finish(&mut self, length: u64, digest: &Digest) -> Result<TreeOutcome, TreeError> {
        match self {
            TreeConsumer::Local(LocalCopy {
                stored, opening, ..
            }) => {
                if let Some((records, hasher)) = opening.take() {
                    records.finish().map_err(TreeError::Records)?;
                    return Ok(TreeOutcome::Local(Some(hasher.finish())));
                }
                if let Some(s) = stored {
                    s.end(Ok((length, digest.clone())));
                }
                Ok(TreeOutcome::Local(None))
            }
            TreeConsumer::Child(c) => c
                .finish(length, digest)
                .map(TreeOutcome::Child)
                .map_err(TreeError::Child),
            TreeConsumer::Ring(r) => r
                .finish(length, digest)
                .map(|()| TreeOutcome::Ring)
                .map_err(TreeError::Ring),
        }
    }

    fn abort(&mut self) {
        match self {
            TreeConsumer::Local(LocalCopy { file, stored, .. }) => {
                *file = None;
                if let Some(s) = stored {
                    s.end(Err(Stopped::LocalCopyFailed));
                }
            }
            TreeConsumer::Child(c) => c.abort(),
            TreeConsumer::Ring(r) => r.abort(),
        }
    }

    fn idle_interval(&self) -> Option<Duration> {
        match self {
            TreeConsumer::Child(c) => c.idle_interval(),
            TreeConsumer::Local(_) | TreeConsumer::Ring(_) => None,
        }
    }

    fn idle(&mut self) -> Result<(), TreeError> {
        match self {
            TreeConsumer::Child(c) => c.idle().map_err(TreeError::Child),
            TreeConsumer::Local(_) | TreeConsumer::Ring(_) => Ok(()),
        }
    }
}

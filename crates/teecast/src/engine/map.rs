//! The source file mapped for the kernel to copy from (`mmap-pipe`, `mmap-write`).

use std::io;
use std::os::fd::BorrowedFd;

use teecast_sys::{Errno, FileMap};

use super::{EngineError, Unsupported};
use crate::source::Source;

/// A read-only mapping of the whole source file.
///
/// A concurrent writer can change its bytes and a truncation can take them away, so it never
/// hands out a slice (touching a vanished page from user space is `SIGBUS`): the kernel copies
/// from it into a pipe or socket, where a vanished page is a short count instead
/// (docs/KERNEL.md §3).
#[derive(Debug)]
pub struct SourceMap(FileMap);

impl SourceMap {
    /// Maps the whole source file; `None` for an empty file (nothing to map).
    pub(crate) fn of(source: &Source) -> Result<Option<SourceMap>, EngineError> {
        let Some(len) = source.len().filter(|&l| l > 0) else {
            return Ok(None);
        };
        let len = usize::try_from(len).map_err(|_| Unsupported::TooLargeToMap)?;
        let map = FileMap::new(source.fd(), len)
            .map_err(|source| EngineError::Source { op: "mmap", source })?;
        Ok(Some(SourceMap(map)))
    }

    /// The mapping's length: the file's length when it was mapped.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: an empty file is not mapped.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Has the kernel copy up to `len` mapped bytes from `offset` into `fd` (a pipe, a socket, a
    /// file: one `write`) and returns how many it copied. 0 means the file now ends before
    /// `offset`: it was truncated under the mapping. `WouldBlock` from a non-blocking `fd` is
    /// returned as it is. The pages written stop counting towards this process's memory.
    pub fn write_to(&self, fd: BorrowedFd<'_>, offset: usize, len: usize) -> io::Result<usize> {
        match self.0.write_to(fd, offset, len) {
            Ok(n) => {
                // `fd` has its own copy: keep the resident set bounded.
                let _ = self.0.release(offset, n);
                Ok(n)
            }
            Err(e) if Errno::from_io_error(&e) == Some(Errno::FAULT) => Ok(0),
            Err(e) => Err(e),
        }
    }
}

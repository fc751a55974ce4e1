//! Sources: what the engine reads from. A regular file (known length, read by offset), standard
//! input (a stream of unknown length), or any descriptor a caller hands over — a socket whose
//! length a protocol announced is a stream of known length.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use teecast_sys as sys;

/// Why a source cannot be sent.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The path does not exist.
    #[error("{0}: no such file")]
    NotFound(PathBuf),
    /// The path cannot be read by this user.
    #[error("{0}: permission denied")]
    PermissionDenied(PathBuf),
    /// The path is a directory; teecast sends one stream.
    #[error("{0}: is a directory (teecast sends one file or stream; use tar to send a tree)")]
    IsDirectory(PathBuf),
    /// Any other failure to open or inspect the source.
    #[error("{path}: {source}")]
    Io {
        /// The source path.
        path: PathBuf,
        /// The error from the system.
        source: io::Error,
    },
}

/// What is being sent.
#[derive(Debug)]
pub struct Source {
    fd: OwnedFd,
    display: String,
    path: Option<PathBuf>,
    len: Option<u64>,
    seekable: bool,
}

impl Source {
    /// Opens `path` for sending; `-` means standard input.
    pub fn open(path: &Path) -> Result<Source, SourceError> {
        if path == Path::new("-") {
            return Source::stdin();
        }
        let io_err = |e: io::Error| match e.kind() {
            io::ErrorKind::NotFound => SourceError::NotFound(path.to_path_buf()),
            io::ErrorKind::PermissionDenied => SourceError::PermissionDenied(path.to_path_buf()),
            _ => SourceError::Io {
                path: path.to_path_buf(),
                source: e,
            },
        };
        let file = File::open(path).map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        if meta.is_dir() {
            return Err(SourceError::IsDirectory(path.to_path_buf()));
        }
        let len = meta.is_file().then_some(meta.len());
        Ok(Source {
            fd: file.into(),
            display: path.display().to_string(),
            path: Some(path.to_path_buf()),
            len,
            seekable: meta.is_file(),
        })
    }

    /// Standard input, as a stream of unknown length (even when it is a file: it may be growing).
    pub fn stdin() -> Result<Source, SourceError> {
        let fd = io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| SourceError::Io {
                path: PathBuf::from("-"),
                source: e,
            })?;
        Ok(Source {
            fd,
            display: "-".into(),
            path: None,
            len: None,
            seekable: false,
        })
    }

    /// Any descriptor, read from its current position to its end: a pipe, a socket, a
    /// character device. `length` is the number of bytes to send when it is known (a protocol
    /// announced it), `None` to send until end of file. `display` names it in reports.
    ///
    /// Such a source is never read by offset: the paths that need a regular file (`mmap-pipe`,
    /// `mmap-write`, `zerocopy`, `direct`) refuse it.
    pub fn from_fd(fd: impl Into<OwnedFd>, length: Option<u64>, display: &str) -> Source {
        Source {
            fd: fd.into(),
            display: display.to_string(),
            path: None,
            len: length,
            seekable: false,
        }
    }

    /// The descriptor to read from.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The length announced for the transfer: the file's size when the send began, or `None`
    /// for a stream.
    pub fn len(&self) -> Option<u64> {
        self.len
    }

    /// True for a regular file, read by offset; false for a stream read in order.
    pub fn is_seekable(&self) -> bool {
        self.seekable
    }

    /// True when the source has a known length of zero.
    pub fn is_empty(&self) -> bool {
        self.len == Some(0)
    }

    /// The path as given (`-` for standard input), for the digest line.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// The path of a regular file source.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The file name to announce by default.
    ///
    /// `None` when the file's name is not UTF-8: the protocol carries UTF-8 names, and a name
    /// changed to fit would not be the file's.
    pub fn default_name(&self) -> Option<String> {
        match self.path.as_deref().and_then(Path::file_name) {
            Some(name) => name.to_str().map(str::to_string),
            None => Some("stdin".into()),
        }
    }

    /// The file's size now (for files: to notice truncation during the send).
    pub fn current_size(&self) -> io::Result<u64> {
        sys::file_size(&self.fd)
    }
}

//! Keys on disk and fresh nonces: what authentication needs from the operating system. The
//! proofs and seals themselves are pure ([`crate::proto::auth`]).
//!
//! A key file holds 64 hexadecimal digits (256 bits) and a newline, is created with mode 0600
//! and never overwritten, and is refused when its group or others may read it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub use teecast_proto::auth::Key;
use teecast_proto::wire::NONCE_LEN;

/// Why a key could not be made, read or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key file's group or others may read or write it.
    #[error(
        "{}: the key file is open to others (mode {mode:03o}); make it private with chmod 600",
        path.display()
    )]
    Exposed {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file does not hold 64 hexadecimal digits.
    #[error("{}: not a teecast key (64 hexadecimal digits expected)", path.display())]
    Malformed {
        /// The key file.
        path: PathBuf,
    },
    /// The key file already exists (a key is never overwritten).
    #[error("{}: already exists; a key file is never overwritten", path.display())]
    Exists {
        /// The key file.
        path: PathBuf,
    },
    /// Reading or writing the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The system gave no randomness.
    #[error("no randomness from the system: {0}")]
    Random(#[source] io::Error),
}

/// `n` bytes from the kernel's random number generator (`getrandom(2)`).
fn random<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut bytes = [0u8; N];
    teecast_sys::fill_random(&mut bytes).map_err(KeyError::Random)?;
    Ok(bytes)
}

/// A fresh random key.
pub fn generate() -> Result<Key, KeyError> {
    random().map(Key::from_bytes)
}

/// A fresh nonce for one session.
pub fn nonce() -> Result<[u8; NONCE_LEN], KeyError> {
    random()
}

/// Writes a fresh key to `path` (mode 0600; refuses an existing file) and returns it.
pub fn create_key_file(path: &Path) -> Result<Key, KeyError> {
    let key = generate()?;
    let io = |source: io::Error| match source.kind() {
        io::ErrorKind::AlreadyExists => KeyError::Exists {
            path: path.to_path_buf(),
        },
        _ => KeyError::Io {
            path: path.to_path_buf(),
            source,
        },
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(format!("{}\n", to_hex(&key)).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    Ok(key)
}

/// Reads the key in `path`, refusing a file that its group or others may read or write.
pub fn read_key_file(path: &Path) -> Result<Key, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if meta.is_dir() {
        return Err(io(io::Error::new(
            io::ErrorKind::IsADirectory,
            "a directory, not a key file (make one with `teecast keygen FILE`)",
        )));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut text = String::new();
    file.take(1024)
        .read_to_string(&mut text)
        .map_err(|_| KeyError::Malformed {
            path: path.to_path_buf(),
        })?;
    parse_hex(text.trim())
        .map(Key::from_bytes)
        .ok_or(KeyError::Malformed {
            path: path.to_path_buf(),
        })
}

/// The key as 64 hex digits, the form of a key file (to hand a key to a process that reads it
/// with [`read_key`]: through a pipe, never on a command line).
pub fn to_hex(key: &Key) -> String {
    crate::digest::to_hex(key.as_bytes())
}

/// Reads a key (64 hex digits, then a newline or the end) from `from`, a pipe say; `what` names
/// it in errors. Reads no further than the key's line.
pub fn read_key(from: impl Read, what: &Path) -> Result<Key, KeyError> {
    let malformed = || KeyError::Malformed {
        path: what.to_path_buf(),
    };
    let mut line = Vec::with_capacity(65);
    // A byte at a time on purpose: what follows the key's line stays unread for its owner.
    #[allow(clippy::unbuffered_bytes)]
    for byte in from.bytes().take(1024) {
        match byte.map_err(|_| malformed())? {
            b'\n' => break,
            b => line.push(b),
        }
    }
    let text = std::str::from_utf8(&line).map_err(|_| malformed())?;
    parse_hex(text.trim())
        .map(Key::from_bytes)
        .ok_or_else(malformed)
}

fn parse_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (k, pair) in key.iter_mut().zip(bytes.chunks_exact(2)) {
        let digit = |c: u8| char::from(c).to_digit(16);
        *k = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_created_key_reads_back_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = create_key_file(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read_key_file(&path).unwrap(), key);
        assert_ne!(generate().unwrap(), key);
    }

    #[test]
    fn a_key_handed_over_in_a_pipe_reads_back() {
        let key = generate().unwrap();
        let text = format!("{}\nwhat follows is not read", to_hex(&key));
        let what = Path::new("standard input");
        assert_eq!(read_key(text.as_bytes(), what).unwrap(), key);
        assert!(matches!(
            read_key(&b"abc\n"[..], what),
            Err(KeyError::Malformed { .. })
        ));
    }

    #[test]
    fn a_key_file_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = create_key_file(&path).unwrap();
        assert!(matches!(
            create_key_file(&path),
            Err(KeyError::Exists { .. })
        ));
        assert_eq!(read_key_file(&path).unwrap(), key);
    }

    #[test]
    fn a_key_file_others_may_read_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        create_key_file(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_key_file(&path).unwrap_err();
        assert!(
            matches!(err, KeyError::Exposed { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_a_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for text in ["", "abc", &"g".repeat(64), &"a".repeat(63), &"a".repeat(65)] {
            let path = dir.path().join("k");
            let _ = std::fs::remove_file(&path);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert!(
                matches!(read_key_file(&path), Err(KeyError::Malformed { .. })),
                "{text:?}"
            );
        }
    }
}

//! Key files as the command reads them: one given as a path or as `-` (standard input), and a
//! receiver's set of them, read again on SIGHUP.

use std::path::{Path, PathBuf};

use teecast::auth::{self, Key, KeyError};
use teecast::proto::wire;

/// The key in the file at `path`, or on standard input for `-`.
pub fn read_key_from(path: &Path) -> Result<Key, KeyError> {
    if path.as_os_str() == "-" {
        auth::read_key(std::io::stdin().lock(), Path::new("standard input"))
    } else {
        auth::read_key_file(path)
    }
}

/// A receiver's key files (`--key-file`, more than one during a rotation), read at the start
/// and again on SIGHUP.
pub struct KeyFiles {
    paths: Vec<PathBuf>,
    /// The key read from standard input at the start (`--key-file -`): it cannot be read again.
    from_stdin: Option<Key>,
}

impl KeyFiles {
    /// Reads every one of `paths` (standard input for `-`, once).
    pub fn read(paths: Vec<PathBuf>) -> Result<(KeyFiles, Vec<Key>), String> {
        if paths.len() > wire::MAX_KEYS {
            return Err(format!(
                "{} key files given: a receiver holds at most {} at once (the old and the new during a rotation)",
                paths.len(),
                wire::MAX_KEYS
            ));
        }
        let from_stdin = match paths.iter().filter(|p| p.as_os_str() == "-").count() {
            0 => None,
            1 => Some(read_key_from(Path::new("-")).map_err(|e| e.to_string())?),
            _ => return Err("--key-file - given twice: standard input holds one key".to_string()),
        };
        let files = KeyFiles { paths, from_stdin };
        let keys = files.reload().map_err(|e| e.to_string())?;
        Ok((files, keys))
    }

    /// Reads the key files again (the one from standard input stays as it was read).
    pub fn reload(&self) -> Result<Vec<Key>, KeyError> {
        self.paths
            .iter()
            .map(|p| match &self.from_stdin {
                Some(key) if p.as_os_str() == "-" => Ok(key.clone()),
                _ => read_key_from(p),
            })
            .collect()
    }

    /// Whether there are none (no key).
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }
}

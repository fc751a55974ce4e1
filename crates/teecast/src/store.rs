//! Files that appear under their final name only when complete: written under a temporary name
//! beside the target, fsynced, then renamed. Dropped before [`AtomicFile::commit`], the temporary
//! file is removed, so a failed, cut or forged transfer leaves nothing behind.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A file being written under a temporary name, committed to its final name by a rename.
#[derive(Debug)]
pub struct AtomicFile {
    file: File,
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl AtomicFile {
    /// Creates `.NAME.teecast-PID-N.part` beside `target` (exclusively, mode 0644).
    pub fn create(target: &Path) -> io::Result<AtomicFile> {
        let dir = parent_dir(target);
        let name = target
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "target has no file name"))?
            .to_string_lossy();
        let temp = dir.join(format!(
            ".{name}.teecast-{}-{}.part",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&temp)?;
        Ok(AtomicFile {
            file,
            temp,
            target: target.to_path_buf(),
            committed: false,
        })
    }

    /// The open temporary file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The final name.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// fsyncs the data, renames the file to its final name, and fsyncs the directory.
    pub fn commit(mut self) -> io::Result<PathBuf> {
        self.file.sync_all()?;
        std::fs::rename(&self.temp, &self.target)?;
        self.committed = true;
        // The rename is durable once the directory is; a failure here does not undo it.
        if let Ok(dir) = File::open(parent_dir(&self.target)) {
            let _ = dir.sync_all();
        }
        Ok(self.target.clone())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn commit_renames_and_drop_removes() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        let mut f = AtomicFile::create(&target).unwrap();
        f.file.write_all(b"data").unwrap();
        assert!(!target.exists());
        f.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"data");

        let other = dir.path().join("gone.bin");
        let f = AtomicFile::create(&other).unwrap();
        drop(f);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.bin")]);
    }
}

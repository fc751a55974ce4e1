//! Files that appear under their final name only when complete, and then as exactly the file
//! that was written.
//!
//! [`AtomicFile::create`] opens an anonymous file in the target's directory (`O_TMPFILE`): it has
//! no name while it is written, so nobody can name, replace or plant it, and the kernel frees it
//! when the process ends however it ends (even `kill -9`). Where the filesystem refuses
//! `O_TMPFILE`, the file gets an unguessable name instead: `.teecast-tmp-` and 32 hex digits of
//! OS randomness, created exclusively, mode 0600.
//!
//! [`AtomicFile::commit`] fsyncs the file and publishes the open descriptor itself — a hard link
//! from `/proc/self/fd/N` to a fresh unguessable name, renamed onto the target — never a name that
//! someone else could have swapped; it then checks that the target is the inode written (same
//! device and inode number) and fsyncs the directory: a commit succeeds only once the new name
//! is durable, and fails (the file published, but perhaps not after a crash) when the
//! directory cannot be synced. [`AtomicFile::commit_no_clobber`] links
//! straight to the target name and refuses an existing target. Dropped before a commit, the file
//! leaves nothing behind. The published file gets mode 0644 less the umask, as a plain create
//! would. Errors name no path (a receiver passes them on to its peer): the caller knows it.
//!
//! [`is_temporary_name`] recognises the names this module and older versions create, for a
//! receiver to refuse them from peers; [`sweep`] removes the ones a crash left behind.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use teecast_sys::{self as sys, Errno, FileKind, Status};

/// How every temporary (fallback) name and every fresh name used for publishing begins.
const TEMP_PREFIX: &str = ".teecast-tmp-";

/// Hex digits after [`TEMP_PREFIX`]: 128 bits of OS randomness.
const TEMP_HEX_DIGITS: usize = 32;

/// The mode of the file while it is written.
const TEMP_MODE: u32 = 0o600;

/// The mode of the published file, less the umask (what a plain create gives).
const PUBLISHED_MODE: u32 = 0o644;

/// [`sweep`] removes `.teecast-tmp-*` files not modified for this long.
const SWEEP_AGE: Duration = Duration::from_secs(60 * 60);

/// How many fresh random names to try before giving up (a collision of 128 random bits means
/// something else is wrong).
const NAME_ATTEMPTS: usize = 8;

/// A file being written where nobody can see or name it, published under its final name by
/// [`commit`](AtomicFile::commit) or [`commit_no_clobber`](AtomicFile::commit_no_clobber).
#[derive(Debug)]
pub struct AtomicFile {
    file: File,
    /// The target's directory (`O_PATH`): every later step is relative to this directory, not
    /// to a path that could be moved meanwhile.
    dir: OwnedFd,
    /// The target's file name inside `dir`.
    name: OsString,
    /// The fallback's temporary name while it still names this file; `None` for an
    /// `O_TMPFILE` file (no name at all).
    temp: Option<String>,
    target: PathBuf,
    /// The tests make `linkat` fail as on a filesystem without hard links.
    #[cfg(test)]
    no_links: bool,
    /// The tests make the directory's fsync fail with this error, as a failing disk would.
    #[cfg(test)]
    dir_sync_fails: Option<Errno>,
}

/// How a commit treats an existing target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Publish {
    /// Replace it atomically (rename).
    Replace,
    /// Refuse it (`AlreadyExists`).
    NoClobber,
}

/// The points of a commit where the tests let "another peer" act.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// After the no-clobber check, before the file is linked or renamed.
    BeforePublishing,
    /// After the file is published, before the inode check.
    BeforeCheck,
}

impl AtomicFile {
    /// Opens an anonymous file (`O_TMPFILE`, mode 0600) in `target`'s directory; where the
    /// filesystem refuses that, creates `.teecast-tmp-` + 32 random hex digits there instead
    /// (`O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600). A target that is a directory is refused here
    /// (`ErrorKind::IsADirectory`), before anything is written, not at the commit.
    pub fn create(target: &Path) -> io::Result<AtomicFile> {
        AtomicFile::create_in(target, true)
    }

    /// [`create`](AtomicFile::create), with `O_TMPFILE` tried only when `try_tmpfile` (the tests
    /// force the fallback with `false`).
    fn create_in(target: &Path, try_tmpfile: bool) -> io::Result<AtomicFile> {
        let name = target
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "target has no file name"))?
            .to_os_string();
        let dir = sys::open_dir_path(parent_dir(target))?;
        if sys::status_at(&dir, &name).is_ok_and(|st| st.kind == FileKind::Directory) {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "it is a directory (a file cannot replace it)",
            ));
        }
        let new = |file: OwnedFd, temp: Option<String>, dir: OwnedFd| AtomicFile {
            file: File::from(file),
            dir,
            name: name.clone(),
            temp,
            target: target.to_path_buf(),
            #[cfg(test)]
            no_links: false,
            #[cfg(test)]
            dir_sync_fails: None,
        };
        if try_tmpfile {
            match sys::create_unnamed_at(&dir, TEMP_MODE) {
                Ok(file) => return Ok(new(file, None, dir)),
                // The filesystem (EOPNOTSUPP) or an old kernel (EISDIR, EINVAL) has no O_TMPFILE.
                Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => {}
                Err(e) => return Err(e.into()),
            }
        }
        for _ in 0..NAME_ATTEMPTS {
            let temp = random_name()?;
            match sys::create_new_at(&dir, &temp, TEMP_MODE) {
                Ok(file) => return Ok(new(file, Some(temp), dir)),
                Err(Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(name_exhausted())
    }

    /// The open file being written.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The final name.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// fsyncs the file and publishes it under its final name, atomically replacing whatever was
    /// there (a symlink at the target is replaced, never followed); checks that the target now
    /// is the file written, and fsyncs the directory. On an error nothing of this file is left,
    /// and the target is either as it was or (if the check failed) not this file — except when
    /// the directory cannot be synced: then the file is published, and the error says that its
    /// name may not survive a crash.
    pub fn commit(mut self) -> io::Result<PathBuf> {
        self.publish(Publish::Replace, &mut |_| {})
    }

    /// Like [`commit`](AtomicFile::commit), but refuses (`ErrorKind::AlreadyExists`) when the
    /// target exists — even as a dangling symlink — or appears meanwhile: the file is linked
    /// straight to the target name, which the kernel refuses if the name is taken.
    pub fn commit_no_clobber(mut self) -> io::Result<PathBuf> {
        self.publish(Publish::NoClobber, &mut |_| {})
    }

    /// The commit; `race` runs at each [`Stage`] (the tests act as another peer there).
    fn publish(&mut self, how: Publish, race: &mut dyn FnMut(Stage)) -> io::Result<PathBuf> {
        if how == Publish::NoClobber && self.exists(&self.name)? {
            return Err(target_exists());
        }
        if let Some(mode) = published_mode() {
            sys::set_mode(&self.file, mode)?;
        }
        self.file.sync_all()?;
        race(Stage::BeforePublishing);
        match how {
            Publish::Replace => self.publish_replacing()?,
            Publish::NoClobber => self.publish_no_clobber()?,
        }
        race(Stage::BeforeCheck);
        if !self.is_ours(&self.name)? {
            return Err(io::Error::other(
                "the target was replaced while it was being stored: it is not the file written",
            ));
        }
        // The fallback's temporary name, if it still names this file, goes before the
        // directory is synced, so the sync covers both.
        self.remove_temp();
        // The new name is durable once the directory is: not before, so a failure here fails
        // the commit (it cannot undo the rename). An `O_PATH` descriptor cannot be synced, so
        // the directory is opened for it.
        self.sync_dir().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "the file is in place but its directory could not be synced ({e}): it may not survive a crash"
                ),
            )
        })?;
        Ok(self.target.clone())
    }

    /// fsyncs the target's directory.
    fn sync_dir(&self) -> io::Result<()> {
        #[cfg(test)]
        if let Some(e) = self.dir_sync_fails {
            return Err(e.into());
        }
        File::from(sys::open_dir_at(&self.dir)?).sync_all()
    }

    /// Links the open file to a fresh unguessable name and renames that onto the target. The
    /// fallback, on a filesystem without hard links, renames its temporary name instead, after
    /// checking that the name is still this file.
    fn publish_replacing(&mut self) -> io::Result<()> {
        let fresh = match self.link_fresh() {
            Ok(fresh) => fresh,
            Err(e) if self.temp.is_some() && cannot_link(e) => {
                let temp = self.ours_temp()?;
                sys::rename_at(&self.dir, &temp, &self.name)?;
                self.temp = None;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        if let Err(e) = sys::rename_at(&self.dir, &fresh, &self.name) {
            self.unlink_if_ours(&fresh);
            return Err(e.into());
        }
        // rename() does nothing when both names already are the same inode (someone linked the
        // target to the fresh name first): then the fresh name is still here.
        self.unlink_if_ours(&fresh);
        Ok(())
    }

    /// Links the open file straight to the target name (EEXIST if it is taken). The fallback, on
    /// a filesystem without hard links, renames its temporary name with `RENAME_NOREPLACE`.
    fn publish_no_clobber(&mut self) -> io::Result<()> {
        match self.link(&self.name) {
            Ok(()) => Ok(()),
            Err(Errno::EXIST) => Err(target_exists()),
            Err(e) if self.temp.is_some() && cannot_link(e) => {
                let temp = self.ours_temp()?;
                match sys::rename_noreplace_at(&self.dir, &temp, &self.name) {
                    Ok(()) => {
                        self.temp = None;
                        Ok(())
                    }
                    Err(Errno::EXIST) => Err(target_exists()),
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Links the open file to a fresh `.teecast-tmp-*` name in the directory and returns it.
    fn link_fresh(&self) -> Result<String, Errno> {
        for _ in 0..NAME_ATTEMPTS {
            let fresh = random_name().map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
            match self.link(OsStr::new(&fresh)) {
                Ok(()) => return Ok(fresh),
                Err(Errno::EXIST) => {}
                Err(e) => return Err(e),
            }
        }
        Err(Errno::EXIST)
    }

    /// `linkat` of the open file itself (not of any name) to `new` in the directory: through
    /// `/proc/self/fd/N`, or with `AT_EMPTY_PATH` where `/proc` is not mounted.
    fn link(&self, new: &OsStr) -> Result<(), Errno> {
        #[cfg(test)]
        if self.no_links {
            return Err(Errno::PERM);
        }
        match sys::link_open_file_at(&self.file, &self.dir, new) {
            Err(Errno::NOENT) => sys::link_empty_path_at(&self.file, &self.dir, new),
            other => other,
        }
    }

    /// The fallback's temporary name, checked to still be this file.
    fn ours_temp(&self) -> io::Result<String> {
        let temp = self.temp.clone().unwrap_or_default();
        if self.is_ours(OsStr::new(&temp))? {
            Ok(temp)
        } else {
            Err(io::Error::other("the temporary file was replaced"))
        }
    }

    /// Whether `name` in the directory is this very file (same device and inode; a symlink
    /// there is not followed, so it never is).
    fn is_ours(&self, name: &OsStr) -> io::Result<bool> {
        let ours = sys::status(&self.file)?;
        match sys::status_at(&self.dir, name) {
            Ok(there) => Ok(ours.is_same_file(&there)),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether anything (a symlink included, dangling or not) has `name` in the directory.
    fn exists(&self, name: &OsStr) -> io::Result<bool> {
        match sys::status_at(&self.dir, name) {
            Ok(_) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes `name` if it is this file; anything else of that name is left alone.
    fn unlink_if_ours(&self, name: &str) {
        if self.is_ours(OsStr::new(name)).unwrap_or(false) {
            let _ = sys::unlink_at(&self.dir, name);
        }
    }

    /// Removes the fallback's temporary name if it still is this file.
    fn remove_temp(&mut self) {
        if let Some(temp) = self.temp.take() {
            self.unlink_if_ours(&temp);
        }
    }

    /// Whether the file has no name (`O_TMPFILE`), rather than the fallback's.
    #[cfg(test)]
    fn is_anonymous(&self) -> bool {
        self.temp.is_none()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        // An O_TMPFILE file needs nothing: closing it frees it. A committed file has no
        // temporary name left.
        self.remove_temp();
    }
}

/// Whether `name` is one that this module or an older teecast creates for a file being
/// written: `.teecast-tmp-*` (this module's fallback and publishing names) or `.*.teecast-*.part`
/// (the temporaries of older versions, `.NAME.teecast-PID-N.part`). A receiver refuses such
/// names from peers.
pub fn is_temporary_name(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX)
        || (name.starts_with('.') && name.ends_with(".part") && name.contains(".teecast-"))
}

/// Removes the temporaries a crash left in `dir`: older versions' `.NAME.teecast-PID-N.part`
/// files (this version never creates them), and `.teecast-tmp-` + 32 hex digit files not
/// modified for an hour (a transfer in progress keeps its file younger). Only regular files are
/// removed; symlinks (never followed), directories and every other name are left alone. Returns
/// how many files it removed.
pub fn sweep(dir: &Path) -> io::Result<usize> {
    let dir_fd = sys::open_dir_at(sys::open_dir_path(dir)?)?;
    let now = SystemTime::now();
    let mut removed = 0;
    for name in sys::dir_names(&dir_fd)? {
        let Some(name) = name.to_str() else {
            continue;
        };
        let old_pattern = is_old_temporary(name);
        if !old_pattern && !is_current_temporary(name) {
            continue;
        }
        let st = match sys::status_at(&dir_fd, name) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        if st.kind != FileKind::Regular {
            continue;
        }
        if !old_pattern && !older_than(&st, now, SWEEP_AGE) {
            continue;
        }
        // unlinkat without AT_REMOVEDIR never removes a directory and never follows a symlink.
        match sys::unlink_at(&dir_fd, name) {
            Ok(()) => removed += 1,
            Err(Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(removed)
}

/// `.NAME.teecast-PID-N.part` exactly, as older versions named their temporaries.
fn is_old_temporary(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".part")) else {
        return false;
    };
    let Some((target, ids)) = rest.rsplit_once(".teecast-") else {
        return false;
    };
    let Some((pid, n)) = ids.split_once('-') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    !target.is_empty() && digits(pid) && digits(n)
}

/// `.teecast-tmp-` + 32 lowercase hex digits exactly, as this module names its files.
fn is_current_temporary(name: &str) -> bool {
    name.strip_prefix(TEMP_PREFIX).is_some_and(|hex| {
        hex.len() == TEMP_HEX_DIGITS
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Whether `st` was last modified at least `age` before `now` (a time in the future is young).
fn older_than(st: &Status, now: SystemTime, age: Duration) -> bool {
    now.duration_since(st.modified).is_ok_and(|d| d >= age)
}

/// `.teecast-tmp-` + 32 hex digits of OS randomness.
fn random_name() -> io::Result<String> {
    let mut bytes = [0u8; TEMP_HEX_DIGITS / 2];
    sys::fill_random(&mut bytes)?;
    Ok(format!("{TEMP_PREFIX}{}", crate::digest::to_hex(&bytes)))
}

/// 0644 less the process's umask (`/proc/self/status`, as reading it with umask() would change
/// it for every thread meanwhile); `None` (the file keeps 0600) where it cannot be read.
fn published_mode() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let umask = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))?
        .trim();
    let umask = u32::from_str_radix(umask, 8).ok()?;
    Some(PUBLISHED_MODE & !umask)
}

/// Whether a failed `linkat` means this filesystem cannot publish by link (no hard links, or no
/// `/proc` and no privilege for `AT_EMPTY_PATH`), so the fallback may rename its name instead.
fn cannot_link(e: Errno) -> bool {
    matches!(
        e,
        Errno::PERM | Errno::OPNOTSUPP | Errno::XDEV | Errno::MLINK | Errno::NOENT
    )
}

fn target_exists() -> io::Error {
    io::Error::new(io::ErrorKind::AlreadyExists, "the target already exists")
}

fn name_exhausted() -> io::Error {
    io::Error::new(
        io::ErrorKind::AlreadyExists,
        "every fresh temporary name was taken",
    )
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Whether `dir` (any file or directory there) lives on tmpfs: memory, where a stored file
/// costs no disk writes (the demo stores there to show the network path).
pub fn is_on_tmpfs(dir: &Path) -> bool {
    File::open(dir).is_ok_and(|d| sys::is_tmpfs(&d).unwrap_or(false))
}

/// Hands a file's bytes to writeback in steps of [`WRITEBACK_STEP`] as they are stored, on a
/// disk filesystem, so the final fsync has little left. Best effort: a failure only leaves the
/// work to the fsync before the commit, which reports any error that matters.
#[derive(Default)]
pub(crate) struct Writeback {
    /// Where it stands, once the first bytes came: `None` where there is none (tmpfs, a pipe, a
    /// device), else the payload bytes handed to it so far and the file offset where the
    /// payload starts.
    state: Option<Option<(u64, u64)>>,
}

impl Writeback {
    /// Whether the first bytes came (whether or not writeback applies to this file).
    pub(crate) fn started(&self) -> bool {
        self.state.is_some()
    }

    /// `file` now holds `stored` payload bytes.
    pub(crate) fn advance(&mut self, file: BorrowedFd<'_>, stored: u64) {
        let state = self
            .state
            .get_or_insert_with(|| writeback_start(file, stored));
        let Some((started, base)) = *state else {
            return;
        };
        if stored - started < WRITEBACK_STEP {
            return;
        }
        let end = stored - stored % WRITEBACK_STEP;
        let _ = sys::start_writeback(file, base + started, end - started);
        *state = Some((end, base));
    }
}

/// On a disk filesystem, every this many bytes stored are handed to writeback.
pub(crate) const WRITEBACK_STEP: u64 = 8 * 1024 * 1024;

/// Where writeback starts for `file`, which holds `stored` payload bytes so far: at the offset
/// where the payload began, for a regular file that is not on tmpfs; `None` otherwise (memory
/// has no writeback; a pipe or a device has no ranges).
pub(crate) fn writeback_start(file: BorrowedFd<'_>, stored: u64) -> Option<(u64, u64)> {
    let regular = sys::status(file).is_ok_and(|st| st.kind == FileKind::Regular);
    if !regular || sys::is_tmpfs(file).unwrap_or(true) {
        return None;
    }
    let now = sys::position(file).ok()?;
    Some((0, now.checked_sub(stored)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// The directory's entries, sorted.
    fn list(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// A directory where `O_TMPFILE` works (tmpfs, `/dev/shm`: the test fails without it), or
    /// the default temporary directory for the fallback.
    fn dir_for(tmpfile: bool) -> tempfile::TempDir {
        if tmpfile {
            tempfile::tempdir_in("/dev/shm")
                .expect("/dev/shm (tmpfs, which has O_TMPFILE) is needed for this test")
        } else {
            tempfile::tempdir().unwrap()
        }
    }

    /// An `O_TMPFILE` file (asserted) or the fallback's named one (forced).
    fn make(target: &Path, tmpfile: bool) -> AtomicFile {
        let f = AtomicFile::create_in(target, tmpfile).unwrap();
        assert_eq!(f.is_anonymous(), tmpfile, "O_TMPFILE refused in {target:?}");
        f
    }

    fn write(f: &AtomicFile, bytes: &[u8]) {
        let mut file = f.file();
        file.write_all(bytes).unwrap();
    }

    fn umask() -> u32 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find_map(|l| l.strip_prefix("Umask:"));
        u32::from_str_radix(line.unwrap().trim(), 8).unwrap()
    }

    fn set_age(path: &Path, age: Duration) {
        let f = File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
    }

    #[test]
    fn an_o_tmpfile_file_is_invisible_while_it_is_written() {
        let dir = dir_for(true);
        std::fs::write(dir.path().join("before.txt"), b"x").unwrap();
        let target = dir.path().join("out.bin");
        let f = AtomicFile::create(&target).unwrap();
        assert!(f.is_anonymous(), "tmpfs refused O_TMPFILE");
        write(&f, &vec![7u8; 1 << 20]);
        assert_eq!(list(dir.path()), ["before.txt"]);
        assert_eq!(f.commit().unwrap(), target);
        assert_eq!(list(dir.path()), ["before.txt", "out.bin"]);
        assert_eq!(std::fs::read(&target).unwrap(), vec![7u8; 1 << 20]);
    }

    #[test]
    fn in_the_temporary_directory_the_file_is_invisible_or_has_an_unguessable_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("before.txt"), b"x").unwrap();
        let target = dir.path().join("out.bin");
        let f = AtomicFile::create(&target).unwrap();
        write(&f, b"data");
        let names = list(dir.path());
        if f.is_anonymous() {
            assert_eq!(names, ["before.txt"]);
        } else {
            // This filesystem refused O_TMPFILE: the fallback's name, and nothing else.
            assert_eq!(names.len(), 2, "{names:?}");
            let temp = names.iter().find(|n| *n != "before.txt").unwrap();
            assert!(is_current_temporary(temp), "{temp}");
            assert_eq!(f.temp.as_deref(), Some(temp.as_str()));
        }
        f.commit().unwrap();
        assert_eq!(list(dir.path()), ["before.txt", "out.bin"]);
        assert_eq!(std::fs::read(&target).unwrap(), b"data");
    }

    #[test]
    fn the_fallback_name_is_unguessable_exclusive_and_private() {
        let dir = dir_for(false);
        let target = dir.path().join("out.bin");
        let a = make(&target, false);
        let b = make(&target, false);
        let (ta, tb) = (a.temp.clone().unwrap(), b.temp.clone().unwrap());
        assert_ne!(ta, tb);
        assert!(is_current_temporary(&ta) && is_temporary_name(&ta), "{ta}");
        let mut expected = vec![ta.clone(), tb.clone()];
        expected.sort();
        assert_eq!(list(dir.path()), expected);
        let meta = std::fs::symlink_metadata(dir.path().join(&ta)).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // The name is this file.
        assert_eq!(meta.ino(), a.file().metadata().unwrap().ino());
        write(&a, b"published");
        a.commit().unwrap();
        drop(b);
        assert_eq!(list(dir.path()), ["out.bin"]);
        assert_eq!(std::fs::read(&target).unwrap(), b"published");
    }

    #[test]
    fn a_dropped_file_leaves_nothing() {
        for tmpfile in [true, false] {
            let dir = dir_for(tmpfile);
            std::fs::write(dir.path().join("keep"), b"k").unwrap();
            let target = dir.path().join("gone.bin");
            let f = make(&target, tmpfile);
            write(&f, &[1u8; 65536]);
            drop(f);
            assert_eq!(list(dir.path()), ["keep"], "tmpfile: {tmpfile}");
        }
    }

    #[test]
    fn commit_replaces_an_existing_target_atomically_with_the_right_contents() {
        for tmpfile in [true, false] {
            let dir = dir_for(tmpfile);
            let target = dir.path().join("disk.img");
            std::fs::write(&target, b"old contents").unwrap();
            let mut old = File::open(&target).unwrap();
            let old_ino = old.metadata().unwrap().ino();

            let f = make(&target, tmpfile);
            assert_eq!(f.target(), target);
            write(&f, b"new contents, longer than the old ones");
            // Until the commit the target is untouched.
            assert_eq!(std::fs::read(&target).unwrap(), b"old contents");
            let ino = f.file().metadata().unwrap().ino();
            assert_eq!(f.commit().unwrap(), target);

            assert_eq!(list(dir.path()), ["disk.img"], "tmpfile: {tmpfile}");
            assert_eq!(
                std::fs::read(&target).unwrap(),
                b"new contents, longer than the old ones"
            );
            let meta = std::fs::metadata(&target).unwrap();
            assert_eq!(meta.ino(), ino, "the target is the file written");
            assert_ne!(meta.ino(), old_ino);
            assert_eq!(meta.nlink(), 1, "no other name left for it");
            assert_eq!(meta.permissions().mode() & 0o777, PUBLISHED_MODE & !umask());
            // Replaced, not rewritten: a reader of the old file still sees it whole.
            let mut seen = Vec::new();
            old.read_to_end(&mut seen).unwrap();
            assert_eq!(seen, b"old contents");
        }
    }

    #[test]
    fn the_file_is_private_while_written() {
        for tmpfile in [true, false] {
            let dir = dir_for(tmpfile);
            let f = make(&dir.path().join("x"), tmpfile);
            let mode = f.file().metadata().unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "tmpfile: {tmpfile}");
        }
    }

    #[test]
    fn commit_replaces_a_symlink_at_the_target_without_writing_through_it() {
        for tmpfile in [true, false] {
            let dir = dir_for(tmpfile);
            let elsewhere = dir.path().join("elsewhere");
            std::fs::write(&elsewhere, b"not yours").unwrap();
            let target = dir.path().join("link");
            std::os::unix::fs::symlink(&elsewhere, &target).unwrap();
            let f = make(&target, tmpfile);
            write(&f, b"mine");
            f.commit().unwrap();
            assert!(std::fs::symlink_metadata(&target).unwrap().is_file());
            assert_eq!(std::fs::read(&target).unwrap(), b"mine");
            assert_eq!(std::fs::read(&elsewhere).unwrap(), b"not yours");
            assert_eq!(list(dir.path()), ["elsewhere", "link"]);
        }
    }

    #[test]
    fn commit_no_clobber_publishes_when_the_target_is_absent() {
        for tmpfile in [true, false] {
            let dir = dir_for(tmpfile);
            let target = dir.path().join("new.bin");
            let f = make(&target, tmpfile);
            write(&f, b"fresh");
            let ino = f.file().metadata().unwrap().ino();
            assert_eq!(f.commit_no_clobber().unwrap(), target);
            assert_eq!(list(dir.path()), ["new.bin"], "tmpfile: {tmpfile}");
            assert_eq!(std::fs::read(&target).unwrap(), b"fresh");
            let meta = std::fs::metadata(&target).unwrap();
            assert_eq!((meta.ino(), meta.nlink()), (ino, 1));
        }
    }

    #[test]
    fn commit_no_clobber_refuses_an_existing_target_and_leaves_both_as_they_were() {
        for tmpfile in [true, false] {
            let dir = dir_for(tmpfile);
            let target = dir.path().join("disk.img");
            std::fs::write(&target, b"theirs").unwrap();
            let f = make(&target, tmpfile);
            write(&f, b"ours");
            let err = f.commit_no_clobber().unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
            assert_eq!(std::fs::read(&target).unwrap(), b"theirs");
            assert_eq!(list(dir.path()), ["disk.img"], "tmpfile: {tmpfile}");

            // A dangling symlink is a name taken too, and stays as it was.
            let link = dir.path().join("dangling");
            std::os::unix::fs::symlink("nowhere", &link).unwrap();
            let f = make(&link, tmpfile);
            let err = f.commit_no_clobber().unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
            assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("nowhere"));
            assert_eq!(list(dir.path()), ["dangling", "disk.img"]);
        }
    }

    #[test]
    fn commit_no_clobber_refuses_a_target_that_appears_after_its_check() {
        for tmpfile in [true, false] {
            let dir = dir_for(tmpfile);
            let target = dir.path().join("disk.img");
            let mut f = make(&target, tmpfile);
            write(&f, b"ours");
            let err = f
                .publish(Publish::NoClobber, &mut |stage| {
                    if stage == Stage::BeforePublishing {
                        std::fs::write(&target, b"theirs").unwrap();
                    }
                })
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
            drop(f);
            assert_eq!(std::fs::read(&target).unwrap(), b"theirs");
            assert_eq!(list(dir.path()), ["disk.img"], "tmpfile: {tmpfile}");
        }
    }

    /// Both kinds of file (`O_TMPFILE` and a named temporary) under both ways of publishing.
    const EVERY_WAY: [(bool, Publish); 4] = [
        (true, Publish::Replace),
        (false, Publish::Replace),
        (true, Publish::NoClobber),
        (false, Publish::NoClobber),
    ];

    #[test]
    fn a_target_swapped_before_the_check_fails_the_commit_and_leaves_nothing_of_ours() {
        for (tmpfile, how) in EVERY_WAY {
            let dir = dir_for(tmpfile);
            let target = dir.path().join("disk.img");
            let other = dir.path().join("other");
            let mut f = make(&target, tmpfile);
            write(&f, b"ours");
            let err = f
                .publish(how, &mut |stage| {
                    if stage == Stage::BeforeCheck {
                        std::fs::write(&other, b"theirs").unwrap();
                        std::fs::rename(&other, &target).unwrap();
                    }
                })
                .unwrap_err();
            assert!(err.to_string().contains("not the file written"), "{err}");
            // Regression: the message named the target's path, which a receiver told its peer.
            assert!(
                !err.to_string().contains(&*dir.path().to_string_lossy()),
                "{err}"
            );
            drop(f);
            let context = format!("tmpfile: {tmpfile}, {how:?}");
            assert_eq!(list(dir.path()), ["disk.img"], "{context}");
            assert_eq!(std::fs::read(&target).unwrap(), b"theirs", "{context}");
        }
    }

    /// Regression: the directory's fsync result was ignored, so a commit reported the file
    /// stored before its new name was durable. A failing sync fails the commit, saying so.
    #[test]
    fn a_directory_that_cannot_be_synced_fails_the_commit() {
        for (tmpfile, how) in EVERY_WAY {
            let dir = dir_for(tmpfile);
            let target = dir.path().join("disk.img");
            let mut f = make(&target, tmpfile);
            f.dir_sync_fails = Some(Errno::IO);
            write(&f, b"ours");
            let err = f.publish(how, &mut |_| {}).unwrap_err();
            let context = format!("tmpfile: {tmpfile}, {how:?}: {err}");
            assert!(err.to_string().contains("could not be synced"), "{context}");
            assert!(err.to_string().contains("Input/output error"), "{context}");
            drop(f);
            // Published (a rename cannot be undone), and nothing else left.
            assert_eq!(list(dir.path()), ["disk.img"], "{context}");
        }
    }

    #[test]
    fn without_hard_links_the_fallback_renames_its_checked_name() {
        for how in [Publish::Replace, Publish::NoClobber] {
            let dir = dir_for(false);
            let target = dir.path().join("disk.img");
            let mut f = make(&target, false);
            f.no_links = true;
            write(&f, b"ours");
            let ino = f.file().metadata().unwrap().ino();
            f.publish(how, &mut |_| {}).unwrap();
            drop(f);
            assert_eq!(list(dir.path()), ["disk.img"], "{how:?}");
            assert_eq!(std::fs::read(&target).unwrap(), b"ours");
            assert_eq!(std::fs::metadata(&target).unwrap().ino(), ino);

            // An existing target: replaced, or refused and left as it was.
            let mut f = make(&target, false);
            f.no_links = true;
            write(&f, b"second");
            let result = f.publish(how, &mut |_| {});
            drop(f);
            assert_eq!(list(dir.path()), ["disk.img"], "{how:?}");
            match how {
                Publish::Replace => {
                    result.unwrap();
                    assert_eq!(std::fs::read(&target).unwrap(), b"second");
                }
                Publish::NoClobber => {
                    assert_eq!(result.unwrap_err().kind(), io::ErrorKind::AlreadyExists);
                    assert_eq!(std::fs::read(&target).unwrap(), b"ours");
                }
            }

            // The temporary name swapped for another file is refused, not renamed.
            let mut f = make(&dir.path().join("third.img"), false);
            f.no_links = true;
            let temp = dir.path().join(f.temp.clone().unwrap());
            let err = f
                .publish(how, &mut |stage| {
                    if stage == Stage::BeforePublishing {
                        std::fs::remove_file(&temp).unwrap();
                        std::fs::write(&temp, b"theirs").unwrap();
                    }
                })
                .unwrap_err();
            assert!(err.to_string().contains("was replaced"), "{err}");
            drop(f);
            assert_eq!(
                std::fs::read(&temp).unwrap(),
                b"theirs",
                "not ours: left alone"
            );
            std::fs::remove_file(&temp).unwrap();
            assert_eq!(list(dir.path()), ["disk.img"], "{how:?}");
        }
    }

    #[test]
    fn regression_a_peer_named_like_the_temporary_cannot_swap_the_file() {
        let pid = std::process::id();
        let attacker = b"attacker's bytes".to_vec();
        let victim: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        // The names an old receiver would use for its next transfers of disk.img (the counter
        // is shared by every test of this process, so plant a good many of them).
        let planted: Vec<String> = (0..256)
            .map(|n| format!(".disk.img.teecast-{pid}-{n}.part"))
            .collect();
        for tmpfile in [true, false] {
            let dir = dir_for(tmpfile);
            let plant = || {
                for name in &planted {
                    std::fs::write(dir.path().join(name), &attacker).unwrap();
                }
            };
            plant();
            let target = dir.path().join("disk.img");
            // Planting the next temporary name no longer refuses the transfer...
            let f = make(&target, tmpfile);
            write(&f, &victim[..100_000]);
            // ...and a "peer" writing a stream under those names while the victim writes...
            plant();
            write(&f, &victim[100_000..]);
            plant();
            // ...does not reach the victim's commit: the target is the victim's file.
            f.commit().unwrap();
            assert_eq!(
                std::fs::read(&target).unwrap(),
                victim,
                "tmpfile: {tmpfile}"
            );
            for name in &planted {
                assert!(is_temporary_name(name), "{name}");
                assert_eq!(std::fs::read(dir.path().join(name)).unwrap(), attacker);
            }
            assert_eq!(list(dir.path()).len(), planted.len() + 1);
            // Only a sweep removes the planted files, and it leaves the victim's alone.
            assert_eq!(sweep(dir.path()).unwrap(), planted.len());
            assert_eq!(list(dir.path()), ["disk.img"]);
            assert_eq!(std::fs::read(&target).unwrap(), victim);
        }
    }

    #[test]
    fn sweep_removes_stale_temporaries_and_nothing_else() {
        let dir = dir_for(false);
        let d = dir.path();
        let hex = |c: char| std::iter::repeat_n(c, TEMP_HEX_DIGITS).collect::<String>();
        let old_tmp = format!("{TEMP_PREFIX}{}", hex('a'));
        let young_tmp = format!("{TEMP_PREFIX}{}", hex('b'));
        let old_tmp_dir = format!("{TEMP_PREFIX}{}", hex('c'));
        let old_tmp_link = format!("{TEMP_PREFIX}{}", hex('d'));
        let odd_tmp = format!("{TEMP_PREFIX}not-hex");
        // Removed: an older version's temporary (any age) and an hour-old one of ours.
        std::fs::write(d.join(".disk.img.teecast-1-0.part"), b"o").unwrap();
        std::fs::write(d.join(&old_tmp), b"o").unwrap();
        set_age(&d.join(&old_tmp), Duration::from_secs(2 * 60 * 60));
        // Kept: a young one (a transfer in progress), a directory, symlinks (to old regular
        // files, whose age must not count), and other names.
        std::fs::write(d.join(&young_tmp), b"y").unwrap();
        set_age(&d.join(&young_tmp), Duration::from_secs(30 * 60));
        std::fs::create_dir(d.join(&old_tmp_dir)).unwrap();
        std::fs::create_dir(d.join(".dir.teecast-1-1.part")).unwrap();
        std::fs::write(d.join("victim"), b"v").unwrap();
        set_age(&d.join("victim"), Duration::from_secs(2 * 60 * 60));
        std::os::unix::fs::symlink("victim", d.join(&old_tmp_link)).unwrap();
        std::os::unix::fs::symlink("victim", d.join(".link.teecast-1-2.part")).unwrap();
        for other in [
            "disk.img",
            ".hidden",
            ".x.teecast-notes.part",
            "disk.img.teecast-1-0.part",
            odd_tmp.as_str(),
        ] {
            std::fs::write(d.join(other), b"k").unwrap();
            set_age(&d.join(other), Duration::from_secs(2 * 60 * 60));
        }
        let before = list(d);

        assert_eq!(sweep(d).unwrap(), 2);
        let mut expected: Vec<String> = before
            .into_iter()
            .filter(|n| *n != ".disk.img.teecast-1-0.part" && *n != old_tmp)
            .collect();
        expected.sort();
        assert_eq!(list(d), expected);
        assert_eq!(std::fs::read(d.join("victim")).unwrap(), b"v");
        assert!(d.join(&old_tmp_dir).is_dir());
        assert!(
            std::fs::symlink_metadata(d.join(&old_tmp_link))
                .unwrap()
                .is_symlink()
        );
        // Nothing left to do.
        assert_eq!(sweep(d).unwrap(), 0);
    }

    #[test]
    fn temporary_names() {
        for name in [
            ".teecast-tmp-0123456789abcdef0123456789abcdef",
            ".teecast-tmp-",
            ".teecast-tmp-anything",
            ".disk.img.teecast-1-0.part",
            ".x.teecast-12-345.part",
            ".a.b.teecast-7-7.part",
            ".x.teecast-notes.part",
            ".teecast-1-0.part",
        ] {
            assert!(is_temporary_name(name), "{name}");
        }
        for name in [
            "",
            "disk.img",
            ".hidden",
            ".teecast-tmp",
            "teecast-tmp-0123",
            "x.teecast-tmp-0123",
            "disk.img.teecast-1-0.part",
            ".disk.img.part",
            ".disk.img.teecast-1-0.partial",
            ".teecast-probe-1-0",
        ] {
            assert!(!is_temporary_name(name), "{name}");
        }
        // What sweep removes is narrower: exactly the generated names.
        assert!(is_old_temporary(".disk.img.teecast-1-0.part"));
        assert!(!is_old_temporary(".x.teecast-notes.part"));
        assert!(!is_old_temporary(".teecast-1-0.part"));
        assert!(!is_old_temporary(".x.teecast-1-.part"));
        assert!(is_current_temporary(&random_name().unwrap()));
        assert!(!is_current_temporary(".teecast-tmp-0123"));
        assert!(!is_current_temporary(
            ".teecast-tmp-0123456789ABCDEF0123456789ABCDEF"
        ));
    }
}

//! Small file-system helpers shared by every step that writes a file: `saveconfig.json` and
//! its backups (apply), the manifest cache (sources) and the metrics file.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A file operation that failed: what was attempted, on which path, and the OS error.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}", path.display())]
pub struct FileError {
    /// A verb phrase: "read IMS file", "write", "rename ... to".
    pub action: String,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl FileError {
    pub fn new(
        action: impl Into<String>,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        FileError {
            action: action.into(),
            path: path.into(),
            source,
        }
    }
}

/// Why a file could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A FIFO would block the run forever, a device could read without end.
    #[error("{} is {kind}, not a regular file", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{} is larger than the {limit}-byte limit", path.display())]
    TooLarge { path: PathBuf, limit: u64 },
}

impl ReadError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Reads a whole regular file of at most `limit` bytes. It is opened without blocking, so
/// that a FIFO in its place cannot hang the run, and anything but a regular file (a FIFO,
/// `/dev/zero`, a directory) is refused before a byte is read.
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let io = |source| ReadError::Io {
        path: path.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(io)?;
    let metadata = file.metadata().map_err(io)?;
    let kind = metadata.file_type();
    if !kind.is_file() {
        let kind = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(ReadError::NotRegular {
            path: path.to_owned(),
            kind,
        });
    }
    // Sized from the file's length: reading through `take` would otherwise double the
    // buffer as it goes (4 MiB for a 2.6 MB saveconfig.json).
    let expected = usize::try_from(metadata.len().min(limit)).unwrap_or(0);
    let mut bytes = Vec::with_capacity(expected.saturating_add(1));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    Ok(bytes)
}

/// Replaces `path` atomically: a sibling temp file (mode 0600), fsync, rename, fsync of the
/// directory, as rtslib writes `saveconfig.json`. A symbolic link is written through: its
/// target is replaced and the link stays (a dangling link is an error).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    write_atomic_mode(path, bytes, 0o600)
}

/// [`write_atomic`] with another file mode.
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let resolved;
    let path = match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            resolved =
                fs::canonicalize(path).map_err(|e| FileError::new("resolve the link", path, e))?;
            resolved.as_path()
        }
        _ => path,
    };
    let dir = parent_dir(path);
    let name = path.file_name().ok_or_else(|| {
        FileError::new(
            "write (the path names no file)",
            path,
            std::io::ErrorKind::InvalidInput.into(),
        )
    })?;
    let temp = dir.join(format!(".{}.sbps-reconcile.tmp", name.to_string_lossy()));
    // A stale temp file may carry another mode; never write through it.
    match fs::remove_file(&temp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(FileError::new("remove stale", &temp, e)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)
        .map_err(|e| FileError::new("create", &temp, e))?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.set_permissions(fs::Permissions::from_mode(mode)))
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(FileError::new("write", &temp, e));
    }
    drop(file);
    if let Err(e) = fs::rename(&temp, path) {
        let _ = fs::remove_file(&temp);
        return Err(FileError::new(
            format!("rename {} to", temp.display()),
            path,
            e,
        ));
    }
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FileError::new("fsync directory", &dir, e))
}

/// Warns when a file holding a secret can be read by group or others.
pub fn warn_if_shared(what: &str, path: &Path) {
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            log::warn!(
                "{what} {} can be read by group or others (mode {mode:04o}); make it 0600",
                path.display()
            );
        }
    }
}

/// Creates a directory (and its parents) that only the owner may enter: backups hold the
/// whole configuration.
pub fn create_private_dir(dir: &Path) -> Result<(), FileError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| FileError::new("create", dir, e))
}

/// The directory a file lives in (`.` for a bare name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Creates the directory of `path` when missing (a fresh host may not have `/etc/target`).
pub fn create_parent_dir(path: &Path) -> Result<(), FileError> {
    let dir = parent_dir(path);
    fs::create_dir_all(&dir).map_err(|e| FileError::new("create directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("saveconfig.json");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_atomic(&path, b"new\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new\n");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temp file left: {names:?}");
    }

    #[test]
    fn a_symlinked_file_is_written_through_its_link() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real.json");
        let link = dir.path().join("saveconfig.json");
        fs::write(&target, "old").unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_to_string(&target).unwrap(), "new");
        let dangling = dir.path().join("dangling.json");
        std::os::unix::fs::symlink(dir.path().join("nowhere/x"), &dangling).unwrap();
        assert!(write_atomic(&dangling, b"x").is_err());
    }

    #[test]
    fn only_bounded_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        assert!(matches!(
            read_regular(&fifo, 10),
            Err(ReadError::NotRegular { kind: "a FIFO", .. })
        ));
        assert!(matches!(
            read_regular(Path::new("/dev/zero"), 10),
            Err(ReadError::NotRegular {
                kind: "a device",
                ..
            })
        ));
        let big = dir.path().join("big");
        fs::write(&big, [0u8; 11]).unwrap();
        assert!(matches!(
            read_regular(&big, 10),
            Err(ReadError::TooLarge { .. })
        ));
        assert_eq!(read_regular(&big, 11).unwrap().len(), 11);
        assert!(read_regular(&dir.path().join("missing"), 10)
            .unwrap_err()
            .is_not_found());
    }

    #[test]
    fn a_failed_write_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir/file");
        let error = write_atomic(&path, b"x").unwrap_err();
        assert_eq!(error.action, "create");
        assert!(error.to_string().contains("missing-dir"), "{error}");
    }
}

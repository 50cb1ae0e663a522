//! Small file-system helpers shared by every step that writes a file: `saveconfig.json` and
//! its backups (apply), the manifest cache (sources) and the metrics file.

use crate::error::FileError;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Replaces `path` atomically: a sibling temp file (mode 0600), fsync, rename, fsync of the
/// directory, as rtslib writes `saveconfig.json`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    write_atomic_mode(path, bytes, 0o600)
}

/// [`write_atomic`] with another file mode.
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
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
    fn a_failed_write_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir/file");
        let error = write_atomic(&path, b"x").unwrap_err();
        assert_eq!(error.action, "create");
        assert!(error.to_string().contains("missing-dir"), "{error}");
    }
}

//! Backups of `saveconfig.json`, as targetcli makes them.

use crate::error::FileError;
use crate::fsio::write_atomic;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Backs up the current file as targetcli does: `<dir>/saveconfig-YYYYmmdd-HH:MM:SS-json.gz`,
/// mode 0600, only when it differs from the newest backup, keeping the newest `keep`.
/// Returns the new backup's path, if one was written.
pub fn backup(
    dir: &Path,
    keep: usize,
    current: &[u8],
    stamp: &str,
) -> Result<Option<PathBuf>, FileError> {
    crate::fsio::create_private_dir(dir)?;
    remove_leftover_temps(dir);
    let existing = list_backups(dir)?;
    if let Some(newest) = existing.last() {
        if read_backup(newest).is_some_and(|bytes| bytes == current) {
            return Ok(None);
        }
    }
    let path = dir.join(format!("saveconfig-{stamp}-json.gz"));
    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::default());
    let compressed = encoder
        .write_all(current)
        .and_then(|()| encoder.finish())
        .map_err(|e| FileError::new("compress backup", &path, e))?;
    write_atomic(&path, &compressed)?;
    let mut all = list_backups(dir)?;
    let excess = all.len().saturating_sub(keep);
    for old in all.drain(..excess) {
        if let Err(e) = fs::remove_file(&old) {
            log::warn!("cannot remove old backup {}: {e}", old.display());
        }
    }
    Ok(Some(path))
}

/// Keeps the diff of an applied run beside its backup, `<dir>/saveconfig-<stamp>-diff.txt`,
/// mode 0600, the newest `keep` kept. Under the journal the diff is not logged (a cold start
/// at 1,000 images is thousands of lines at info): the run's summary names this file.
pub fn keep_diff(dir: &Path, keep: usize, diff: &str, stamp: &str) -> Result<PathBuf, FileError> {
    crate::fsio::create_private_dir(dir)?;
    let path = dir.join(format!("saveconfig-{stamp}-diff.txt"));
    write_atomic(&path, diff.as_bytes())?;
    let mut all: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| FileError::new("list", dir, e))?
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.starts_with("saveconfig-") && name.ends_with("-diff.txt"))
        })
        .map(|entry| entry.path())
        .collect();
    all.sort();
    let excess = all.len().saturating_sub(keep.max(1));
    for old in all.drain(..excess) {
        if let Err(e) = fs::remove_file(&old) {
            log::warn!("cannot remove old diff {}: {e}", old.display());
        }
    }
    Ok(path)
}

/// Removes the temporary files of backups that a killed run left half written. Each backup
/// has its own name, so each such file would stay for ever; the run lock says no other run
/// is writing one now.
fn remove_leftover_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let is_temp = entry.file_name().to_str().is_some_and(|name| {
            name.starts_with(".saveconfig-") && name.ends_with(".sbps-reconcile.tmp")
        });
        if is_temp {
            if let Err(e) = fs::remove_file(entry.path()) {
                log::warn!("cannot remove {}: {e}", entry.path().display());
            }
        }
    }
}

/// Backups by name, oldest first (the timestamp in the name sorts in time order).
fn list_backups(dir: &Path) -> Result<Vec<PathBuf>, FileError> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| FileError::new("list", dir, e))?
        .filter_map(Result::ok)
        .filter(|entry| {
            entry.file_name().to_str().is_some_and(|name| {
                name.starts_with("saveconfig-") && name.contains("json") && !name.starts_with('.')
            })
        })
        .map(|entry| entry.path())
        .collect();
    found.sort();
    Ok(found)
}

fn read_backup(path: &Path) -> Option<Vec<u8>> {
    let raw = fs::read(path).ok()?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut bytes = Vec::new();
        GzDecoder::new(raw.as_slice())
            .read_to_end(&mut bytes)
            .ok()?;
        Some(bytes)
    } else {
        Some(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn backups_skip_duplicates_and_keep_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let first = backup(dir.path(), 3, b"one", "20260101-00:00:01").unwrap();
        assert!(first.is_some());
        assert_eq!(
            backup(dir.path(), 3, b"one", "20260101-00:00:02").unwrap(),
            None
        );
        for (i, content) in ["two", "three", "four"].iter().enumerate() {
            backup(
                dir.path(),
                3,
                content.as_bytes(),
                &format!("20260101-00:00:1{i}"),
            )
            .unwrap();
        }
        let all = list_backups(dir.path()).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(read_backup(&all[0]).unwrap(), b"two");
        assert_eq!(read_backup(&all[2]).unwrap(), b"four");
        let mode = fs::metadata(&all[2]).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(all[2]
            .to_string_lossy()
            .ends_with("saveconfig-20260101-00:00:12-json.gz"));
        // The backup directory is the owner's alone, whatever the umask.
        let sub = dir.path().join("backup");
        backup(&sub, 3, b"one", "20260101-00:00:01").unwrap();
        let mode = fs::metadata(&sub).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn diffs_are_kept_beside_the_backups_the_newest_only() {
        let dir = tempfile::tempdir().unwrap();
        backup(dir.path(), 2, b"one", "20260101-00:00:01").unwrap();
        for i in 0..4 {
            let path = keep_diff(
                dir.path(),
                2,
                &format!("diff {i}\n"),
                &format!("20260101-00:00:0{i}"),
            )
            .unwrap();
            assert_eq!(fs::read_to_string(&path).unwrap(), format!("diff {i}\n"));
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "saveconfig-20260101-00:00:01-json.gz",
                "saveconfig-20260101-00:00:02-diff.txt",
                "saveconfig-20260101-00:00:03-diff.txt"
            ]
        );
        // A diff is not a backup: the backups' count and dedup are untouched.
        assert_eq!(list_backups(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn half_written_backups_of_killed_runs_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let left = dir
            .path()
            .join(".saveconfig-20260101-00:00:01-json.gz.sbps-reconcile.tmp");
        fs::write(&left, b"half").unwrap();
        let other = dir.path().join("notes.txt");
        fs::write(&other, b"mine").unwrap();
        backup(dir.path(), 3, b"one", "20260101-00:00:02").unwrap();
        assert!(!left.exists());
        assert!(other.exists(), "files that are not ours stay");
    }
}

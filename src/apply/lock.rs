//! Our own lock and targetcli's: one change to the running target at a time, and never
//! while an interactive targetcli holds unsaved changes.

use crate::error::{ApplyError, Error, FileError};
use crate::fsio::create_parent_dir;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A held `flock`; released when dropped.
#[derive(Debug)]
pub struct Lock {
    _file: File,
    pub path: PathBuf,
}

impl Lock {
    /// Lets the children started from now on (targetctl) hold the lock too: a run killed
    /// with `kill -9` would otherwise leave a restore going on that the next run does not
    /// wait for. The lock is then released when the last of them ends. `false` stops it.
    pub fn share_with_children(&self, share: bool) {
        let flags = if share {
            rustix::io::FdFlags::empty()
        } else {
            rustix::io::FdFlags::CLOEXEC
        };
        if let Err(e) = rustix::io::fcntl_setfd(&self._file, flags) {
            log::debug!("cannot share lock {}: {e}", self.path.display());
        }
    }

    /// Takes an exclusive, non-blocking lock on `path` (created if missing, mode 0600) and
    /// records our pid in it. A lock held elsewhere is [`Error::LockBusy`].
    pub fn acquire(path: &Path, holder_hint: &str) -> Result<Lock, Error> {
        // A fresh host (or a new lock path in the policy) may not have the directory yet.
        create_parent_dir(path).map_err(ApplyError::File)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| ApplyError::File(FileError::new("open lock file", path, e)))?;
        // A lock file that already existed keeps its mode: make it ours alone.
        let _ = file.set_permissions(std::fs::Permissions::from_mode(0o600));
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => holder_hint.to_string(),
                    pid => format!("{holder_hint}, pid {pid}"),
                };
                return Err(Error::LockBusy {
                    path: path.to_owned(),
                    holder,
                });
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(ApplyError::File(FileError::new("lock", path, e)).into())
            }
        }
        // Best effort: the pid only helps the message of a run that finds the lock held.
        let _ = file.set_len(0);
        let _ = writeln!(file, "{}", std::process::id());
        Ok(Lock {
            _file: file,
            path: path.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_in_a_missing_directory_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/sub/sbps-reconcile.lock");
        assert!(Lock::acquire(&path, "sbps-reconcile").is_ok());
        assert!(path.exists());
    }

    #[test]
    fn a_second_lock_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let held = Lock::acquire(&path, "sbps-reconcile").unwrap();
        match Lock::acquire(&path, "sbps-reconcile") {
            Err(Error::LockBusy { holder, .. }) => {
                assert!(holder.contains(&std::process::id().to_string()), "{holder}")
            }
            other => panic!("expected LockBusy, got {other:?}"),
        }
        drop(held);
        assert!(Lock::acquire(&path, "sbps-reconcile").is_ok());
    }

    #[test]
    fn a_child_started_under_the_lock_holds_it_after_the_run_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let held = Lock::acquire(&path, "sbps-reconcile").unwrap();
        held.share_with_children(true);
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        held.share_with_children(false);
        drop(held);
        let busy = Lock::acquire(&path, "sbps-reconcile");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            matches!(busy, Err(Error::LockBusy { .. })),
            "the child still held the lock"
        );
    }

    #[test]
    fn an_existing_lock_file_becomes_the_owners_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        fs::write(&path, "").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        let _held = Lock::acquire(&path, "sbps-reconcile").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}

//! Applying a plan: lock, backup, atomic write, `targetctl restore`, verify, roll back.
//!
//! `targetctl restore` clears the whole running configuration and rebuilds it, and exits 0
//! even when parts failed, so nothing it says is taken on trust: its stderr is scanned for
//! `, skipped` lines, and a `targetctl save` of the result must hold what was written.

use crate::error::{ApplyError, Error, FileError, ProcessError, TargetctlFailure};
use crate::fsio::{create_parent_dir, parent_dir, write_atomic};
use crate::lio::SaveConfig;
use crate::policy::LioSettings;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A held `flock`; released when dropped.
#[derive(Debug)]
pub struct Lock {
    _file: File,
    pub path: PathBuf,
}

impl Lock {
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

/// Backs up the current file as targetcli does: `<dir>/saveconfig-YYYYmmdd-HH:MM:SS-json.gz`,
/// mode 0600, only when it differs from the newest backup, keeping the newest `keep`.
/// Returns the new backup's path, if one was written.
pub fn backup(
    dir: &Path,
    keep: usize,
    current: &[u8],
    stamp: &str,
) -> Result<Option<PathBuf>, FileError> {
    fs::create_dir_all(dir).map_err(|e| FileError::new("create", dir, e))?;
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

/// The `targetctl` program, run without a shell.
#[derive(Debug, Clone)]
pub struct Targetctl {
    pub path: PathBuf,
}

impl Targetctl {
    /// Fails before anything is touched when the program cannot be run at all.
    pub fn preflight(&self) -> Result<(), ApplyError> {
        let meta = fs::metadata(&self.path).map_err(|source| ApplyError::TargetctlMissing {
            path: self.path.clone(),
            source,
        })?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            return Err(ApplyError::TargetctlNotExecutable {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    fn command(&self, args: &[&str], file: Option<&Path>) -> Command {
        let mut command = Command::new(&self.path);
        command.args(args);
        if let Some(file) = file {
            command.arg(file);
        }
        command
    }

    fn run(&self, command: &mut Command) -> Result<Output, ProcessError> {
        log::debug!("running {:?}", command);
        command
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|source| ProcessError::Spawn {
                command: crate::process::describe(command),
                source,
            })
    }

    /// `targetctl restore FILE`, with its silent failures turned into errors.
    pub fn restore(&self, file: &Path) -> Result<(), ApplyError> {
        let mut command = self.command(&["restore"], Some(file));
        let output = self.run(&mut command)?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
            log::debug!("targetctl restore: {line}");
        }
        let failure = TargetctlFailure {
            command: crate::process::describe(&command),
            status: (!output.status.success()).then(|| output.status.to_string()),
            stderr_first_line: first_line(&stderr),
            skipped: stderr
                .lines()
                .filter(|line| line.trim_end().ends_with(", skipped"))
                .map(str::to_owned)
                .collect(),
            no_file: (stdout.contains("No saved config file")
                || stderr.contains("No saved config file"))
            .then(|| file.to_owned()),
        };
        if failure.status.is_none() && failure.skipped.is_empty() && failure.no_file.is_none() {
            Ok(())
        } else {
            Err(failure.into())
        }
    }

    /// `targetctl save FILE`, read back and removed.
    pub fn save_to_string(&self, file: &Path) -> Result<Vec<u8>, ApplyError> {
        let mut command = self.command(&["save"], Some(file));
        let output = self.run(&mut command)?;
        let result = if output.status.success() {
            fs::read(file).map_err(|e| FileError::new("read", file, e).into())
        } else {
            Err(Self::failed(&command, &output).into())
        };
        let _ = fs::remove_file(file);
        result
    }

    /// `targetctl clear`: the running configuration emptied.
    pub fn clear(&self) -> Result<(), ApplyError> {
        let mut command = self.command(&["clear"], None);
        let output = self.run(&mut command)?;
        if output.status.success() {
            Ok(())
        } else {
            Err(Self::failed(&command, &output).into())
        }
    }

    /// A command that exited with a failure status.
    fn failed(command: &Command, output: &Output) -> TargetctlFailure {
        TargetctlFailure {
            command: crate::process::describe(command),
            status: Some(output.status.to_string()),
            stderr_first_line: first_line(&String::from_utf8_lossy(&output.stderr)),
            skipped: Vec::new(),
            no_file: None,
        }
    }
}

fn first_line(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}

/// What an apply did.
#[derive(Debug, Default)]
pub struct Applied {
    pub backup: Option<PathBuf>,
}

/// Writes and restores `desired`, verifies it, and on failure restores `previous` (the
/// current file's bytes, `None` when there was no file).
///
/// `verify` compares what `targetctl save` reads back with what was written, and returns
/// the managed differences (empty when they match).
pub fn apply(
    lio: &LioSettings,
    previous: Option<&[u8]>,
    desired: &SaveConfig,
    stamp: &str,
    verify: &dyn Fn(&SaveConfig) -> Vec<String>,
) -> Result<Applied, Error> {
    let targetctl = Targetctl {
        path: lio.targetctl.clone(),
    };
    targetctl.preflight()?;
    let not_applied = |step| move |source| ApplyError::NotApplied { step, source };
    let backup = match previous {
        Some(bytes) => backup(&lio.backup_dir, lio.backups_kept, bytes, stamp)
            .map_err(not_applied("the backup"))?,
        None => None,
    };
    if let Some(path) = &backup {
        log::info!(
            "backed up {} as {}",
            lio.saveconfig.display(),
            path.display()
        );
    }
    let live = &lio.saveconfig;
    create_parent_dir(live).map_err(not_applied("creating the directory"))?;
    write_atomic(live, desired.to_canonical().as_bytes())
        .map_err(not_applied("writing the configuration"))?;

    let outcome = targetctl.restore(live).and_then(|()| {
        let check = parent_dir(live).join(format!(
            ".sbps-reconcile-verify-{}.json",
            std::process::id()
        ));
        let saved = targetctl.save_to_string(&check)?;
        let saved = SaveConfig::parse(&saved).map_err(ApplyError::VerifyUnreadable)?;
        let differences = verify(&saved);
        if differences.is_empty() {
            Ok(())
        } else {
            Err(ApplyError::Verify { differences })
        }
    });
    match outcome {
        Ok(()) => Ok(Applied { backup }),
        Err(error) => {
            log::warn!(
                "{}; rolling back to the previous configuration",
                crate::error::chain(&error)
            );
            match rollback(&targetctl, live, previous) {
                Ok(()) => Err(Error::RolledBack { error }),
                Err(rollback) => Err(Error::RollbackFailed {
                    error,
                    rollback: Box::new(rollback),
                }),
            }
        }
    }
}

fn rollback(targetctl: &Targetctl, live: &Path, previous: Option<&[u8]>) -> Result<(), ApplyError> {
    match previous {
        Some(bytes) => {
            write_atomic(live, bytes)?;
            targetctl.restore(live)
        }
        None => {
            // There was no file: the previous configuration was empty.
            match fs::remove_file(live) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(FileError::new("remove", live, e).into()),
            }
            targetctl.clear()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

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
}

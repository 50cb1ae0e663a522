//! The `targetctl` program (rtslib's): `restore`, `save` and `clear`, run without a shell.
//!
//! `targetctl restore` clears the whole running configuration and rebuilds it, and exits 0
//! even when parts failed, so nothing it says is taken on trust: its stderr is scanned for
//! `, skipped` lines and for `No saved config file`.

use crate::error::{ApplyError, FileError, ProcessError, TargetctlFailure};
use crate::process::{run_bounded, ProcessOutput};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The `targetctl` program, run without a shell.
#[derive(Debug, Clone)]
pub struct Targetctl {
    pub path: PathBuf,
    /// How long one call may take before its process group is killed (lio.command_timeout).
    pub timeout: Duration,
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

    fn run(&self, command: &mut Command) -> Result<ProcessOutput, ProcessError> {
        log::debug!("running {:?}", command);
        run_bounded(command, self.timeout)
    }

    /// `targetctl restore FILE`, with its silent failures turned into errors, but for the
    /// `, skipped` lines `known_broken` covers (objects broken before the run, not the
    /// tool's), which are returned for the report.
    pub fn restore(
        &self,
        file: &Path,
        known_broken: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Vec<String>, ApplyError> {
        let mut command = self.command(&["restore"], Some(file));
        let output = self.run(&mut command)?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = output.stderr.as_str();
        for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
            log::debug!("targetctl restore: {line}");
        }
        let (tolerated, skipped): (Vec<String>, Vec<String>) = stderr
            .lines()
            .filter(|line| line.trim_end().ends_with(", skipped"))
            .map(str::to_owned)
            .partition(|line| known_broken(line));
        let failure = TargetctlFailure {
            command: crate::process::describe(&command),
            status: (!output.success).then(|| output.status.clone()),
            stderr_first_line: output.stderr_first_line(),
            skipped,
            no_file: (stdout.contains("No saved config file")
                || stderr.contains("No saved config file"))
            .then(|| file.to_owned()),
        };
        if failure.status.is_none() && failure.skipped.is_empty() && failure.no_file.is_none() {
            Ok(tolerated)
        } else {
            Err(failure.into())
        }
    }

    /// `targetctl save FILE`, handed to `read` open (a large file is parsed as it is read,
    /// never held whole), then removed.
    pub fn save_and_read<T>(
        &self,
        file: &Path,
        read: impl FnOnce(fs::File) -> T,
    ) -> Result<T, ApplyError> {
        let mut command = self.command(&["save"], Some(file));
        let output = self.run(&mut command)?;
        let result = if output.success {
            fs::File::open(file)
                .map(read)
                .map_err(|e| FileError::new("read", file, e).into())
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
        if output.success {
            Ok(())
        } else {
            Err(Self::failed(&command, &output).into())
        }
    }

    /// A command that exited with a failure status.
    fn failed(command: &Command, output: &ProcessOutput) -> TargetctlFailure {
        TargetctlFailure {
            command: crate::process::describe(command),
            status: Some(output.status.clone()),
            stderr_first_line: output.stderr_first_line(),
            skipped: Vec::new(),
            no_file: None,
        }
    }
}

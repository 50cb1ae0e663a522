//! Running another program: an argument vector (never a shell), no standard input, both
//! output streams kept, and a time limit.

use crate::error::ProcessError;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a program left behind.
pub struct ProcessOutput {
    pub success: bool,
    /// The exit status as text (`exit status: 1`, `signal: 9 (SIGKILL)`).
    pub status: String,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl ProcessOutput {
    /// The first non-empty line of stderr.
    pub fn stderr_first_line(&self) -> Option<String> {
        self.stderr
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_owned)
    }
}

/// The command line as a person would type it, for messages.
pub fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `command` with no stdin, in a process group of its own, killing the whole group
/// past `timeout` (a `targetctl` stuck in the kernel, or a child it started, must not hold
/// the locks forever).
pub fn run_bounded(
    command: &mut Command,
    timeout: Duration,
) -> Result<ProcessOutput, ProcessError> {
    use std::os::unix::process::CommandExt;
    let text = describe(command);
    let mut child = command
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ProcessError::Spawn {
            command: text.clone(),
            source,
        })?;
    let stdout_reader = reader(child.stdout.take());
    let stderr_reader = reader(child.stderr.take());
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => {
                let group = rustix::process::Pid::from_child(&child);
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
                let _ = child.kill();
                let _ = child.wait();
                return Err(ProcessError::TimedOut {
                    command: text,
                    timeout,
                });
            }
            Err(source) => {
                return Err(ProcessError::Wait {
                    command: text,
                    source,
                })
            }
        }
    };
    let stdout = stdout_reader.join().unwrap_or_default();
    let stderr = String::from_utf8_lossy(&stderr_reader.join().unwrap_or_default()).into_owned();
    Ok(ProcessOutput {
        success: status.success(),
        status: status.to_string(),
        stdout,
        stderr,
    })
}

/// Reads a pipe to its end on a thread of its own, so that a full pipe never blocks the
/// child while we wait for it.
fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_status_and_timeout() {
        let out = run_bounded(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(!out.success);
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr_first_line().as_deref(), Some("err"));
        assert!(out.status.contains('3'), "{}", out.status);
        // The whole group goes: the shell and the sleep it started.
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let slow = run_bounded(
            Command::new("sh")
                .arg("-c")
                .arg(format!("sleep 30 & echo $! > {}; wait", pid_file.display())),
            Duration::from_millis(500),
        );
        assert!(matches!(slow, Err(ProcessError::TimedOut { .. })));
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let gone = (0..100).any(|_| {
            let alive = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
                .is_ok_and(|stat| !stat.contains(") Z "));
            if alive {
                std::thread::sleep(Duration::from_millis(20));
            }
            !alive
        });
        assert!(gone, "the child's child {pid} outlived the timeout");
        let missing = run_bounded(&mut Command::new("/nonexistent/x"), Duration::from_secs(1));
        match missing {
            Err(ProcessError::Spawn { command, .. }) => assert_eq!(command, "/nonexistent/x"),
            _ => panic!("expected a spawn error"),
        }
    }
}

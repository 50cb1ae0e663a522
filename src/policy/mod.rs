//! The YAML policy: read from its file, parsed into the file as written (`file`), checked
//! (`check`) into the `Policy` the rest of the program uses (`checked`); a problem's place is
//! found by `locate`.

pub mod check;
pub mod checked;
pub mod file;
mod locate;

pub use crate::error::PolicyError;
pub use checked::*;
pub use file::*;

use crate::error::Error;
use std::path::Path;

pub const DEFAULT_POLICY_PATH: &str = "/etc/sbps-reconcile/policy.yaml";
/// A policy is a few kilobytes; anything past this is not one.
pub const MAX_POLICY_BYTES: u64 = 1024 * 1024;

impl Policy {
    /// Reads, parses and checks the policy at `path`.
    pub fn load(path: &Path, host: &HostFacts) -> Result<(Policy, Vec<String>), Error> {
        let bytes = crate::fsio::read_regular(path, MAX_POLICY_BYTES).map_err(|source| {
            Error::PolicyRead {
                path: path.to_owned(),
                source,
            }
        })?;
        let text = String::from_utf8(bytes).map_err(|e| Error::PolicyInvalid {
            path: path.to_owned(),
            problem: Box::new(PolicyError::new(format!("not UTF-8 text: {e}"))),
        })?;
        // Relative paths in the policy are relative to the policy file's directory.
        let base = std::path::absolute(path)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        Policy::from_yaml_in(&text, host, base.as_deref()).map_err(|problem| Error::PolicyInvalid {
            path: path.to_owned(),
            problem: Box::new(problem),
        })
    }

    /// Parses and checks policy text; returns the policy and warnings worth logging.
    pub fn from_yaml(text: &str, host: &HostFacts) -> Result<(Policy, Vec<String>), PolicyError> {
        Policy::from_yaml_in(text, host, None)
    }

    /// As [`Policy::from_yaml`], resolving relative paths against `base` when given.
    pub fn from_yaml_in(
        text: &str,
        host: &HostFacts,
        base: Option<&Path>,
    ) -> Result<(Policy, Vec<String>), PolicyError> {
        let mut file: PolicyFile =
            serde_yaml::from_str(text).map_err(|e| locate::parse_error(&e, text))?;
        if let Some(base) = base {
            file.resolve_paths(base);
        }
        check::check(file, host).map_err(|problem| locate::place(problem, text))
    }
}

/// Facts about this host that the policy may refer to.
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// Short host name (up to the first dot).
    pub hostname: String,
}

impl HostFacts {
    /// Reads the host name from the kernel.
    pub fn detect() -> HostFacts {
        let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .unwrap_or_default();
        HostFacts::from_hostname(raw.trim())
    }

    pub fn from_hostname(name: &str) -> HostFacts {
        HostFacts {
            hostname: name.split('.').next().unwrap_or_default().to_string(),
        }
    }
}
#[cfg(test)]
mod tests;

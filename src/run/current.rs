//! What is in place now: the current `saveconfig.json` (parsed, with the digest that tells
//! whether it changed under the lock) and the target the kernel runs.

use crate::error::Error;
use crate::kernel::configfs::Configfs;
use crate::lio::running::RunningState;
use crate::lio::SaveConfig;
use crate::policy::Policy;
use std::path::Path;

/// The largest `saveconfig.json` read: 16 MiB, about 10,000 storage objects as
/// `targetctl save` writes them (5,000 projections are under 8 MiB).
pub const MAX_SAVECONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// The current `saveconfig.json` as the run planned with it: its parsed form, and the length
/// and hash of its bytes (the bytes themselves, 2.6 MB at 5,500 LUNs, are read again under
/// the lock only by a run that applies: see [`LockedFile`]).
#[derive(Debug, Clone)]
pub struct CurrentFile {
    /// `None` when the file does not exist.
    digest: Option<Digest>,
    pub config: SaveConfig,
}

/// What tells whether the file changed between two reads a few seconds apart: its length,
/// and a 64-bit hash of its bytes (std's `DefaultHasher`, SipHash-1-3 today: a change of the
/// same length that keeps the hash has a chance of 2^-64; it needs no SHA instructions,
/// which valgrind and older CPUs lack, and hashes 2.6 MB in about 2 ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Digest {
    len: usize,
    hash: u64,
}

/// The current file read again under the lock, with its bytes: what an apply backs up and
/// rolls back to.
#[derive(Debug)]
pub struct LockedFile {
    /// `None` when the file does not exist.
    pub bytes: Option<Vec<u8>>,
    pub file: CurrentFile,
}

impl CurrentFile {
    /// A missing file is an empty configuration; an empty or unreadable one is an error, and
    /// so is one larger than [`MAX_SAVECONFIG_BYTES`].
    pub fn read(path: &Path) -> Result<CurrentFile, Error> {
        let bytes = Self::read_bytes(path)?;
        Self::parse(path, bytes.as_deref())
    }

    /// The file read again, with its bytes; the parsed form is `self`'s when the bytes did
    /// not change (it is parsed again only when they did: at 5,500 LUNs a second parse held
    /// 14 MiB more through the apply). The flag says whether they changed.
    pub fn read_again(self, path: &Path) -> Result<(LockedFile, bool), Error> {
        let bytes = Self::read_bytes(path)?;
        if bytes.as_deref().map(digest) == self.digest {
            return Ok((LockedFile { bytes, file: self }, false));
        }
        drop(self);
        let file = Self::parse(path, bytes.as_deref())?;
        Ok((LockedFile { bytes, file }, true))
    }

    fn read_bytes(path: &Path) -> Result<Option<Vec<u8>>, Error> {
        match crate::fsio::read_regular(path, MAX_SAVECONFIG_BYTES) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(source) => Err(Error::CurrentConfigRead {
                path: path.to_owned(),
                source,
            }),
        }
    }

    fn parse(path: &Path, bytes: Option<&[u8]>) -> Result<CurrentFile, Error> {
        let config = match bytes {
            Some(bytes) => SaveConfig::parse(bytes).map_err(|problem| Error::CurrentConfig {
                path: path.to_owned(),
                problem,
            })?,
            None => SaveConfig::empty(),
        };
        Ok(CurrentFile {
            digest: bytes.map(digest),
            config,
        })
    }
}

pub(super) fn digest(bytes: &[u8]) -> Digest {
    use std::hash::Hasher;
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write(bytes);
    Digest {
        len: bytes.len(),
        hash: hasher.finish(),
    }
}

/// What the kernel runs, from configfs; `None` where LIO is not loaded (nothing to compare
/// with: the plan is made against the file alone).
pub(super) fn read_running(policy: &Policy) -> Result<Option<RunningState>, Error> {
    let configfs = Configfs::new(&policy.lio.configfs);
    if !configfs.is_loaded() {
        return Ok(None);
    }
    configfs
        .read(&policy.catalogue, &policy.target)
        .map(Some)
        .map_err(Error::RunningConfig)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Under the lock the file is read again: parsed again only when it changed.
    #[test]
    fn the_file_read_again_is_parsed_again_only_when_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("saveconfig.json");
        let one = "{\n  \"storage_objects\": [],\n  \"targets\": []\n}\n";
        std::fs::write(&path, one).unwrap();
        let first = CurrentFile::read(&path).unwrap();

        let (same, changed) = first.clone().read_again(&path).unwrap();
        assert!(!changed);
        assert_eq!(same.bytes.as_deref(), Some(one.as_bytes()));
        assert_eq!(same.file.config, first.config);

        std::fs::write(&path, "{\n  \"targets\": [],\n  \"x\": 1\n}\n").unwrap();
        let (other, changed) = first.clone().read_again(&path).unwrap();
        assert!(changed);
        assert!(other.file.config.to_canonical().contains("\"x\": 1"));
        // The same length, one byte changed.
        std::fs::write(&path, "{\n  \"targets\": [],\n  \"x\": 2\n}\n").unwrap();
        let (again, changed) = other.file.read_again(&path).unwrap();
        assert!(changed);
        assert!(again.file.config.to_canonical().contains("\"x\": 2"));

        std::fs::remove_file(&path).unwrap();
        let (gone, changed) = first.clone().read_again(&path).unwrap();
        assert!(changed);
        assert_eq!(gone.bytes, None);
        assert_eq!(gone.file.config, SaveConfig::empty());

        std::fs::write(&path, "not json").unwrap();
        assert!(first.read_again(&path).is_err());
    }
}

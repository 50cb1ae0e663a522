//! The s3fs mount of the bucket: LIO serves image files from here, so every projected image
//! must be a regular, non-empty file in it.

use crate::error::{FileError, SourceError};
use crate::snapshot::{MountEntry, PeObject};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Why a file in the mount could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum ReadProblem {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{} is larger than the {limit}-byte limit (catalogue.manifest_max_bytes)", path.display())]
    TooLarge { path: PathBuf, limit: u64 },
}

/// A walk stops with an error past this many entries: a bound, not an expectation.
const MAX_WALK_ENTRIES: usize = 1_000_000;

#[derive(Debug, Clone)]
pub struct Mount {
    root: PathBuf,
}

impl Mount {
    pub fn new(root: &Path) -> Mount {
        Mount {
            root: root.to_owned(),
        }
    }

    pub fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// The mount root must be a readable directory; anything else is a source failure.
    pub fn check_root(&self) -> Result<(), SourceError> {
        let unreadable = |source: io::Error| SourceError::MountUnreadable {
            path: self.root.clone(),
            source,
        };
        let meta = fs::metadata(&self.root).map_err(unreadable)?;
        if !meta.is_dir() {
            return Err(SourceError::MountNotADirectory {
                path: self.root.clone(),
            });
        }
        fs::read_dir(&self.root).map_err(unreadable)?;
        Ok(())
    }

    /// What the mount holds at `key`. Symbolic links are followed: LIO opens the path.
    pub fn stat(&self, key: &str) -> MountEntry {
        match fs::metadata(self.path(key)) {
            Ok(meta) if meta.is_file() => MountEntry::File { size: meta.len() },
            Ok(_) => MountEntry::NotAFile,
            Err(e) if e.kind() == io::ErrorKind::NotFound => MountEntry::Missing,
            Err(e) => MountEntry::Error(e.to_string()),
        }
    }

    /// Reads a whole file of at most `max_bytes`.
    pub fn read(&self, key: &str, max_bytes: u64) -> Result<Vec<u8>, ReadProblem> {
        let path = self.path(key);
        let io = |source| ReadProblem::Io {
            path: path.clone(),
            source,
        };
        let file = fs::File::open(&path).map_err(io)?;
        let mut bytes = Vec::new();
        file.take(max_bytes.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > max_bytes {
            return Err(ReadProblem::TooLarge {
                path,
                limit: max_bytes,
            });
        }
        Ok(bytes)
    }

    /// Every regular file under `prefix` (a key prefix ending in '/'), as keys with sizes.
    /// A missing prefix directory is an empty listing. Symbolic links are not followed
    /// (no loops); names that are not UTF-8 cannot be keys and are logged and left out.
    pub fn walk(&self, prefix: &str) -> Result<Vec<PeObject>, SourceError> {
        let mut found = Vec::new();
        let mut pending = vec![prefix.trim_end_matches('/').to_string()];
        let mut seen = 0usize;
        while let Some(dir_key) = pending.pop() {
            let dir = self.path(&dir_key);
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        && dir_key == prefix.trim_end_matches('/') =>
                {
                    continue
                }
                Err(e) => return Err(FileError::new("list", dir, e).into()),
            };
            for entry in entries {
                let entry = entry.map_err(|e| FileError::new("list", &dir, e))?;
                seen += 1;
                if seen > MAX_WALK_ENTRIES {
                    return Err(SourceError::TooManyEntries {
                        path: self.path(prefix),
                        limit: MAX_WALK_ENTRIES,
                    });
                }
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    log::warn!(
                        "ignoring {}: the name is not UTF-8, so it cannot be an object key",
                        entry.path().display()
                    );
                    continue;
                };
                let key = format!("{dir_key}/{name}");
                let file_type = entry
                    .file_type()
                    .map_err(|e| FileError::new("stat", entry.path(), e))?;
                if file_type.is_dir() {
                    pending.push(key);
                } else if file_type.is_file() {
                    let size = entry
                        .metadata()
                        .map_err(|e| FileError::new("stat", entry.path(), e))?
                        .len();
                    found.push(PeObject {
                        key,
                        size,
                        etag: None,
                    });
                }
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }
}

//! The s3fs mount of the bucket: LIO serves image files from here, so every projected image
//! must be a regular, non-empty file in it.

use crate::error::{FileError, SourceError};
use crate::fsio::{read_regular, ReadError};
use crate::snapshot::{MountEntry, PeListing, PeObject};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Whether `path` (links resolved) is where a file system is mounted: listed in
/// `/proc/self/mountinfo`, or, where that cannot be read, on another device than its parent.
pub fn is_mount_point(path: &Path) -> bool {
    if let Ok(info) = fs::read_to_string("/proc/self/mountinfo") {
        return info
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .any(|point| Path::new(&unescape_mountinfo(point)) == path);
    }
    use std::os::unix::fs::MetadataExt;
    let parent = path.parent().unwrap_or(path);
    match (fs::metadata(path), fs::metadata(parent)) {
        (Ok(here), Ok(above)) => here.dev() != above.dev() || path == parent,
        _ => false,
    }
}

/// mountinfo writes a space, tab, newline and backslash in a path as `\040`, `\011`, ...
fn unescape_mountinfo(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes.get(i) == Some(&b'\\') && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .map(|d| d.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0')));
        match octal.and_then(|n| u8::try_from(n).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.extend(bytes.get(i));
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_found_in_mountinfo() {
        assert!(is_mount_point(Path::new("/proc")));
        let dir = tempfile::tempdir().unwrap();
        let real = fs::canonicalize(dir.path()).unwrap();
        assert!(!is_mount_point(&real.join("missing")));
        fs::create_dir(real.join("plain")).unwrap();
        assert!(!is_mount_point(&real.join("plain")));
        assert_eq!(unescape_mountinfo("/var/lib/a\\040b"), "/var/lib/a b");
        assert_eq!(unescape_mountinfo("/x\\\\y"), "/x\\\\y");
    }

    /// The cheap walk answers as resolving every link would, and leaves links to it.
    #[test]
    fn stat_without_links_agrees_with_resolving() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("shadow"), b"secret").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("img/sub")).unwrap();
        fs::write(root.join("img/rootfs"), b"squashfs").unwrap();
        fs::write(root.join("img/empty"), b"").unwrap();
        std::os::unix::fs::symlink(root.join("img/rootfs"), root.join("img/inside")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("shadow"), root.join("img/out")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("linked")).unwrap();
        // The root reached through a link resolves the same way.
        let via = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(root, via.path().join("mount")).unwrap();
        for mount in [Mount::new(root), Mount::new(&via.path().join("mount"))] {
            for key in [
                "img/rootfs",
                "img/empty",
                "img/sub",
                "img/missing",
                "missing/rootfs",
                "img/rootfs/below",
                "img/inside",
                "img/out",
                "linked/shadow",
                "img//rootfs",
                "img/./rootfs",
                "img/../img/rootfs",
            ] {
                assert_eq!(
                    mount.stat(key),
                    mount.stat_resolved(key),
                    "{key} under {}",
                    mount.root.display()
                );
            }
            assert_eq!(mount.stat("img/rootfs"), MountEntry::File { size: 8 });
            assert_eq!(
                mount.stat_without_links("img/rootfs"),
                Some(MountEntry::File { size: 8 })
            );
            assert_eq!(
                mount.stat_without_links("img/missing"),
                Some(MountEntry::Missing)
            );
            assert_eq!(mount.stat_without_links("img/inside"), None);
            assert!(matches!(mount.stat("img/out"), MountEntry::Outside { .. }));
        }
    }
}

/// A walk stops with an error past this many entries: a bound, not an expectation.
const MAX_WALK_ENTRIES: usize = 1_000_000;

#[derive(Debug, Clone)]
pub struct Mount {
    root: PathBuf,
    /// The root with every link resolved: a file must resolve to a path under it.
    real_root: PathBuf,
    /// Whether `real_root` was resolved (the root existed when the run began).
    resolved: bool,
}

impl Mount {
    pub fn new(root: &Path) -> Mount {
        let real_root = fs::canonicalize(root);
        Mount {
            root: root.to_owned(),
            resolved: real_root.is_ok(),
            real_root: real_root.unwrap_or_else(|_| root.to_owned()),
        }
    }

    pub fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// The mount root must be a readable directory, and (unless the policy says it is a plain
    /// directory) a mount point: s3fs not mounted leaves an empty directory, which must not
    /// read as "every image is gone". Anything else is a source failure.
    pub fn check_root(&self, require_mountpoint: bool) -> Result<(), SourceError> {
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
        if require_mountpoint && !is_mount_point(&self.real_root) {
            return Err(SourceError::NotAMountPoint {
                path: self.root.clone(),
            });
        }
        Ok(())
    }

    /// What the mount holds at `key`. LIO opens the path and follows links, so a link is
    /// resolved here: a file that resolves outside the mount is never served (a link to
    /// `/etc/shadow` in the bucket must not become a LUN any initiator can read).
    pub fn stat(&self, key: &str) -> MountEntry {
        self.stat_without_links(key)
            .unwrap_or_else(|| self.stat_resolved(key))
    }

    /// The common case, cheaply: no component below the resolved root is a link, so the
    /// path is its own real path (one `lstat` per component, where resolving the path walks
    /// it again for every component). `None` when a component is a link or anything odd:
    /// [`Mount::stat_resolved`] decides.
    fn stat_without_links(&self, key: &str) -> Option<MountEntry> {
        if !self.resolved {
            return None;
        }
        let mut path = self.real_root.clone();
        let mut parts = key.split('/').peekable();
        while let Some(part) = parts.next() {
            if part.is_empty() || part == "." || part == ".." {
                return None;
            }
            path.push(part);
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Some(MountEntry::Missing),
                Err(_) => return None,
            };
            if meta.file_type().is_symlink() {
                return None;
            }
            if parts.peek().is_none() {
                return Some(if meta.is_file() {
                    MountEntry::File { size: meta.len() }
                } else {
                    MountEntry::NotAFile
                });
            }
            if !meta.is_dir() {
                return None;
            }
        }
        None
    }

    /// What the mount holds at `key`, every link resolved.
    fn stat_resolved(&self, key: &str) -> MountEntry {
        let real = match fs::canonicalize(self.path(key)) {
            Ok(real) => real,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return MountEntry::Missing,
            Err(e) => return MountEntry::Error(e.to_string()),
        };
        if !real.starts_with(&self.real_root) {
            return MountEntry::Outside {
                target: real.display().to_string(),
            };
        }
        match fs::metadata(&real) {
            Ok(meta) if meta.is_file() => MountEntry::File { size: meta.len() },
            Ok(_) => MountEntry::NotAFile,
            Err(e) if e.kind() == io::ErrorKind::NotFound => MountEntry::Missing,
            Err(e) => MountEntry::Error(e.to_string()),
        }
    }

    /// Reads a whole regular file of at most `max_bytes` (see [`read_regular`]).
    pub fn read(&self, key: &str, max_bytes: u64) -> Result<Vec<u8>, ReadError> {
        read_regular(&self.path(key), max_bytes)
    }

    /// Every regular file under `prefix` (a key prefix ending in '/'), as keys with sizes.
    /// A missing prefix directory is an empty listing. Symbolic links are not followed
    /// (no loops); names that are not UTF-8 cannot be keys and are logged and left out. A
    /// folder below the prefix that cannot be listed is one unreadable entry (its images are
    /// skipped), not a failed run; the prefix itself unreadable is a source failure.
    pub fn walk(&self, prefix: &str) -> Result<PeListing, SourceError> {
        let mut listing = PeListing::default();
        let root = prefix.trim_end_matches('/').to_string();
        let mut pending = vec![root.clone()];
        let mut seen = 0usize;
        while let Some(dir_key) = pending.pop() {
            let dir = self.path(&dir_key);
            let entries = match fs::read_dir(&dir)
                .and_then(|entries| entries.collect::<Result<Vec<_>, io::Error>>())
            {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound && dir_key == root => continue,
                Err(e) if dir_key == root => return Err(FileError::new("list", dir, e).into()),
                Err(e) => {
                    listing.unreadable.insert(
                        format!("{dir_key}/"),
                        format!("cannot list {}: {e}", dir.display()),
                    );
                    continue;
                }
            };
            for entry in entries {
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
                    let metadata = entry
                        .metadata()
                        .map_err(|e| FileError::new("stat", entry.path(), e))?;
                    let mtime = metadata
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs());
                    listing.objects.push(PeObject {
                        key,
                        size: metadata.len(),
                        etag: None,
                        mtime,
                    });
                }
            }
        }
        listing.objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(listing)
    }
}

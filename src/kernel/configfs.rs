//! LIO's configfs tree (`/sys/kernel/config/target`): reading what the kernel runs, and the
//! primitive changes the in-place apply is made of, the way rtslib makes them underneath.
//!
//! The layout, as the kernel shows it (checked on Debian's 6.1 kernel in `tests/e2e/`):
//! - `core/<plugin>_<n>/<name>/`: a storage object; `udev_path`, `enable`, `info`
//!   (`... File: <dev>  Size: <bytes>  Mode: ...`), `wwn/vpd_unit_serial`
//!   (`T10 VPD Unit Serial Number: <wwn>`), `attrib/<name>`; `control` is write-only;
//! - `iscsi/<iqn>/tpgt_1/`: `enable`, `attrib/<name>`, `np/<ip>:<port>/`, and
//!   `lun/lun_<n>/<alias>`, a link to the storage object's directory.

use crate::error::KernelError;
use crate::lio::managed::{ManagedObject, TpgSettings, TpgView};
use crate::lio::running::{ObjectPlace, RunningLun, RunningState, Stray};
use crate::policy::{Catalogue, Portal, TargetPolicy};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The configfs tree at a root (a parameter, so that tests can mount a stand-in).
#[derive(Debug, Clone)]
pub struct Configfs {
    root: PathBuf,
}

impl Configfs {
    pub fn new(root: &Path) -> Configfs {
        Configfs {
            root: root.to_owned(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether LIO's core is there to read and change (configfs mounted, target_core_mod
    /// loaded).
    pub fn is_loaded(&self) -> bool {
        self.root.join("core").is_dir()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn fail(
        &self,
        op: &'static str,
        rel: &str,
        value: Option<&str>,
    ) -> impl FnOnce(io::Error) -> KernelError {
        let path = self.path(rel);
        let value = value.map(str::to_owned);
        move |source| KernelError {
            op,
            path,
            value,
            source,
        }
    }

    // --- reading -------------------------------------------------------------------

    /// An attribute's text without its trailing newline; `None` when the file does not exist.
    fn read_attr(&self, rel: &str) -> Result<Option<String>, KernelError> {
        match fs::read_to_string(self.path(rel)) {
            Ok(text) => Ok(Some(text.trim_end_matches('\n').to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.fail("read", rel, None)(e)),
        }
    }

    /// The entries of a directory: names, and whether each is a directory or a link; empty
    /// when the directory does not exist.
    fn list(&self, rel: &str) -> Result<Vec<(String, EntryKind)>, KernelError> {
        let entries = match fs::read_dir(self.path(rel)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.fail("list", rel, None)(e)),
        };
        // Another tool (targetcli, a targetctl a killed run left going) may be changing the
        // tree while it is read: an entry gone by the time it is looked at is left out. An
        // apply reads again under the locks.
        let mut found = Vec::new();
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.fail("list", rel, None)(e)),
            };
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let file_type = match entry.file_type() {
                Ok(file_type) => file_type,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.fail("list", rel, None)(e)),
            };
            let kind = if file_type.is_symlink() {
                EntryKind::Link
            } else if file_type.is_dir() {
                EntryKind::Dir
            } else {
                EntryKind::File
            };
            found.push((name, kind));
        }
        found.sort();
        Ok(found)
    }

    /// What the kernel runs: the managed storage objects, and TPG 1 of the policy's target.
    /// A read that fails is tried again twice, 100 ms apart: another tool changing the tree
    /// at the same moment (an object half-removed) is not a failed run.
    pub fn read(
        &self,
        catalogue: &Catalogue,
        target: &TargetPolicy,
    ) -> Result<RunningState, KernelError> {
        let mut attempt = 0;
        loop {
            match self.read_once(catalogue, target) {
                Ok(state) => return Ok(state),
                Err(e) if attempt < 2 => {
                    log::debug!("reading configfs again: {e}");
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn read_once(
        &self,
        catalogue: &Catalogue,
        target: &TargetPolicy,
    ) -> Result<RunningState, KernelError> {
        let mut state = RunningState::default();
        // Every storage object by its path under core/, with the managed name it has.
        let mut objects: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut duplicates: Vec<(String, String)> = Vec::new();
        for (hba, kind) in self.list("core")? {
            let Some((plugin, index)) = parse_hba(&hba).filter(|_| kind == EntryKind::Dir) else {
                continue;
            };
            state.hba_indices.insert(index);
            let mut held = 0;
            for (name, kind) in self.list(&format!("core/{hba}"))? {
                if kind != EntryKind::Dir {
                    continue;
                }
                held += 1;
                let key = format!("{hba}/{name}");
                if plugin != "fileio" {
                    objects.insert(key, None);
                    continue;
                }
                let (enabled, facts) = self.read_object(&key)?;
                if !enabled {
                    if is_our_name(&name) {
                        state.strays.push(Stray::UnconfiguredObject {
                            hba: hba.clone(),
                            name: name.clone(),
                        });
                    }
                    objects.insert(key, None);
                    continue;
                }
                if catalogue.key_for_dev(&facts.dev).is_none() {
                    objects.insert(key, None);
                    continue;
                }
                if state.view.objects.contains_key(&name) {
                    duplicates.push((hba.clone(), name.clone()));
                } else {
                    state.view.objects.insert(name.clone(), facts);
                    state.places.insert(
                        name.clone(),
                        ObjectPlace {
                            hba: hba.clone(),
                            hba_index: index,
                        },
                    );
                }
                objects.insert(key, Some(name));
            }
            if held == 0 && plugin == "fileio" {
                state.strays.push(Stray::EmptyHba { hba });
            }
        }

        state.fabric = self.path("iscsi").is_dir();
        state.target_dir = self
            .list("iscsi")?
            .into_iter()
            .find(|(name, kind)| *kind == EntryKind::Dir && name.eq_ignore_ascii_case(&target.iqn))
            .map(|(name, _)| name);
        if let Some(dir) = &state.target_dir {
            let tpg = format!("iscsi/{dir}/tpgt_1");
            if self.path(&tpg).is_dir() {
                let settings = self.read_tpg_settings(&tpg, target)?;
                for (lun_dir, kind) in self.list(&format!("{tpg}/lun"))? {
                    let Some(index) = lun_dir
                        .strip_prefix("lun_")
                        .and_then(|n| n.parse::<u32>().ok())
                        .filter(|_| kind == EntryKind::Dir)
                    else {
                        continue;
                    };
                    let lun = self.read_lun(&format!("{tpg}/lun/{lun_dir}"), &objects)?;
                    if lun.object.is_none() {
                        state.strays.push(Stray::LinklessLun { index });
                    }
                    state.luns.insert(index, lun);
                }
                let luns = state
                    .luns
                    .iter()
                    .filter_map(|(index, lun)| Some((*index, lun.managed.clone()?)))
                    .collect();
                state.view.tpg = Some(TpgView { settings, luns });
            }
        }
        // A second object of a managed name goes once nothing exports it.
        let exported: BTreeSet<&str> = state
            .luns
            .values()
            .filter_map(|lun| lun.object.as_deref())
            .collect();
        for (hba, name) in duplicates {
            if !exported.contains(format!("{hba}/{name}").as_str()) {
                state.strays.push(Stray::DuplicateObject { hba, name });
            }
        }
        Ok(state)
    }

    /// A fileio object's enable flag and facts.
    fn read_object(&self, key: &str) -> Result<(bool, ManagedObject), KernelError> {
        let dir = format!("core/{key}");
        let attr = |name: &str| self.read_attr(&format!("{dir}/{name}"));
        let enabled = attr("enable")?.as_deref() == Some("1");
        let info = attr("info")?.unwrap_or_default();
        let dev = match attr("udev_path")? {
            Some(path) if !path.is_empty() => path,
            _ => info_file(&info).unwrap_or_default().to_string(),
        };
        let number = |text: Option<String>| text.and_then(|t| t.trim().parse::<i64>().ok());
        let facts = ManagedObject {
            dev,
            size: info_size(&info),
            wwn: attr("wwn/vpd_unit_serial")?
                .and_then(|text| text.split_once(':').map(|(_, wwn)| wwn.trim().to_string()))
                .filter(|wwn| !wwn.is_empty()),
            write_back: number(attr("attrib/emulate_write_cache")?).map(|v| v == 1),
            emulate_model_alias: number(attr("attrib/emulate_model_alias")?),
        };
        Ok((enabled, facts))
    }

    fn read_tpg_settings(
        &self,
        tpg: &str,
        target: &TargetPolicy,
    ) -> Result<TpgSettings, KernelError> {
        let enable = match self.read_attr(&format!("{tpg}/enable"))?.as_deref() {
            Some("1") => Some(true),
            Some("0") => Some(false),
            _ => None,
        };
        let mut attributes = BTreeMap::new();
        for key in target.attributes.keys() {
            let found = self
                .read_attr(&format!("{tpg}/attrib/{key}"))?
                .and_then(|t| t.trim().parse::<i64>().ok());
            attributes.insert(key.clone(), found);
        }
        let portals = self
            .list(&format!("{tpg}/np"))?
            .into_iter()
            .filter(|(_, kind)| *kind == EntryKind::Dir)
            .filter_map(|(name, _)| parse_portal_dir(&name))
            .collect();
        Ok(TpgSettings {
            enable,
            attributes,
            portals,
        })
    }

    fn read_lun(
        &self,
        dir: &str,
        objects: &BTreeMap<String, Option<String>>,
    ) -> Result<RunningLun, KernelError> {
        for (name, kind) in self.list(dir)? {
            if kind != EntryKind::Link {
                continue;
            }
            let rel = format!("{dir}/{name}");
            let link = match fs::read_link(self.path(&rel)) {
                Ok(link) => link,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.fail("read link", &rel, None)(e)),
            };
            // `../../../../../../target/core/fileio_0/<name>`: the last two components.
            let parts: Vec<String> = link
                .components()
                .rev()
                .take(2)
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let object = match parts.as_slice() {
                [name, hba] => Some(format!("{hba}/{name}")),
                _ => None,
            };
            let managed = object
                .as_ref()
                .and_then(|key| objects.get(key).cloned().flatten());
            return Ok(RunningLun {
                object,
                managed,
                alias: Some(name),
            });
        }
        Ok(RunningLun {
            object: None,
            managed: None,
            alias: None,
        })
    }

    // --- changing ------------------------------------------------------------------

    pub fn mkdir(&self, rel: &str) -> Result<(), KernelError> {
        fs::create_dir(self.path(rel)).map_err(self.fail("create", rel, None))
    }

    pub fn rmdir(&self, rel: &str) -> Result<(), KernelError> {
        fs::remove_dir(self.path(rel)).map_err(self.fail("remove", rel, None))
    }

    /// Writes an attribute in one write, as the kernel expects (an attribute file is never
    /// created: one that does not exist is an error).
    pub fn write(&self, rel: &str, value: &str) -> Result<(), KernelError> {
        let fail = self.fail("write", rel, Some(value.trim_end()));
        let written = OpenOptions::new()
            .write(true)
            .open(self.path(rel))
            .and_then(|mut file| {
                let n = file.write(value.as_bytes())?;
                if n == value.len() {
                    Ok(())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("wrote {n} of {} bytes", value.len()),
                    ))
                }
            });
        written.map_err(fail)
    }

    /// Links `<link>` to the storage object at `core/<object>`.
    pub fn link(&self, link: &str, object: &str) -> Result<(), KernelError> {
        let target = self.path(&format!("core/{object}"));
        std::os::unix::fs::symlink(&target, self.path(link)).map_err(self.fail(
            "link",
            link,
            Some(&target.display().to_string()),
        ))
    }

    pub fn unlink(&self, rel: &str) -> Result<(), KernelError> {
        fs::remove_file(self.path(rel)).map_err(self.fail("unlink", rel, None))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum EntryKind {
    Dir,
    Link,
    File,
}

/// `fileio_3` -> ("fileio", 3).
fn parse_hba(name: &str) -> Option<(&str, u32)> {
    let (plugin, index) = name.rsplit_once('_')?;
    Some((plugin, index.parse().ok()?))
}

/// Our storage object names: the first 15 hex digits of a sha224.
fn is_our_name(name: &str) -> bool {
    name.len() == 15
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `File: <dev>  Size: ...` of a fileio object's `info`.
fn info_file(info: &str) -> Option<&str> {
    let start = info.find("File: ")? + "File: ".len();
    let rest = info.get(start..)?;
    let end = rest.rfind("  Size: ").unwrap_or(rest.len());
    Some(rest.get(..end)?.trim_end()).filter(|dev| !dev.is_empty())
}

/// `Size: <bytes>` of a fileio object's `info`; `None` when it says 0 (not configured).
fn info_size(info: &str) -> Option<u64> {
    let start = info.rfind("Size: ")? + "Size: ".len();
    let digits: String = info
        .get(start..)?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok().filter(|size| *size > 0)
}

/// `10.0.0.1:3260` or `[fd00::1]:3260`, as a portal directory is named.
fn parse_portal_dir(name: &str) -> Option<(std::net::IpAddr, u16)> {
    let (ip, port) = name.rsplit_once(':')?;
    Some((Portal::parse_ip_address(ip)?, port.parse().ok()?))
}

/// A portal's directory name.
pub fn portal_dir(portal: &(std::net::IpAddr, u16)) -> String {
    Portal {
        ip: portal.0,
        port: portal.1,
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_kernel_prints() {
        let info = "Status: DEACTIVATED  Max Queue Depth: 0  SectorSize: 512  HwMaxSectors: 16384\n        TCM FILEIO ID: 0        File: /var/lib/img/b c  Size: 1048576  Mode: O_DSYNC Async: 0";
        assert_eq!(info_file(info), Some("/var/lib/img/b c"));
        assert_eq!(info_size(info), Some(1_048_576));
        let unconfigured = "Status: DEACTIVATED  Max Queue Depth: 0  SectorSize: 0  HwMaxSectors: 0\n        TCM FILEIO ID: 0        File:   Size: 0  Mode: O_DSYNC Async: 0";
        assert_eq!(info_file(unconfigured), None);
        assert_eq!(info_size(unconfigured), None);
        assert_eq!(parse_hba("fileio_12"), Some(("fileio", 12)));
        assert_eq!(parse_hba("rd_mcp_3"), Some(("rd_mcp", 3)));
        assert_eq!(parse_hba("alua"), None);
        assert!(is_our_name("de4cc04e7dacfb9"));
        assert!(!is_our_name("obj1"));
        let v6 = parse_portal_dir("[fd00::10]:3260").unwrap();
        assert_eq!(portal_dir(&v6), "[fd00::10]:3260");
        assert_eq!(
            parse_portal_dir("10.0.0.1:3260")
                .map(|p| portal_dir(&p))
                .as_deref(),
            Some("10.0.0.1:3260")
        );
    }
}

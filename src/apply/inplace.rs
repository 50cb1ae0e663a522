//! The in-place apply: the running target changed object by object through configfs, as
//! rtslib (and ceph-iscsi, cinder, targetd) do, so that no initiator loses its session.
//!
//! [`steps`] is pure: from what the kernel runs and what the plan wants, the changes in a
//! safe order (additions before removals, the TPG never disabled to make a change). Each
//! step knows its inverse, so a failure undoes the steps done so far in reverse order.
//! Every step can be redone after an interrupted run: the next run reads what is there,
//! recognises half-made objects by name, and removes or completes them.

use super::{back_up, Applied, Change};
use crate::error::{ApplyError, Error, KernelError};
use crate::fsio::{create_parent_dir, write_atomic};
use crate::kernel::configfs::{portal_dir, Configfs};
use crate::lio::managed::{Difference, ManagedObject, ManagedView};
use crate::lio::running::{RunningState, Stray};
use crate::policy::Policy;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

/// One change to the running target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `mkdir iscsi` (loads the iSCSI fabric module).
    CreateFabric,
    /// `mkdir iscsi/<iqn>`.
    CreateTarget {
        dir: String,
    },
    RemoveTarget {
        dir: String,
    },
    /// `mkdir iscsi/<iqn>/tpgt_1` (created disabled).
    CreateTpg {
        dir: String,
    },
    RemoveTpg {
        dir: String,
    },
    SetTpgAttribute {
        dir: String,
        key: String,
        value: i64,
        was: Option<i64>,
    },
    SetTpgEnable {
        dir: String,
        enable: bool,
        was: Option<bool>,
    },
    AddPortal {
        dir: String,
        portal: (IpAddr, u16),
    },
    RemovePortal {
        dir: String,
        portal: (IpAddr, u16),
    },
    /// A fileio object, made whole: HBA, object, control, udev_path, model alias, enable,
    /// unit serial.
    CreateObject {
        hba_index: u32,
        name: String,
        facts: ManagedObject,
    },
    /// An object that nothing exports, and its HBA when it held only this object.
    RemoveObject {
        hba_index: u32,
        name: String,
        facts: Option<ManagedObject>,
    },
    SetWriteCache {
        hba_index: u32,
        name: String,
        value: bool,
        was: Option<bool>,
    },
    /// `mkdir lun/lun_<index>` and its link to the object.
    CreateLun {
        dir: String,
        index: u32,
        object: String,
        alias: String,
    },
    RemoveLun {
        dir: String,
        index: u32,
        /// What it pointed at and its link's name, to put it back.
        object: Option<String>,
        alias: Option<String>,
    },
    /// Something half-made: removed, not undone.
    RemoveStray {
        dir: String,
        stray: Stray,
    },
}

impl Step {
    /// The step that undoes this one, when there is one.
    pub fn inverse(&self) -> Option<Step> {
        Some(match self.clone() {
            Step::CreateFabric | Step::RemoveStray { .. } => return None,
            Step::CreateTarget { dir } => Step::RemoveTarget { dir },
            Step::RemoveTarget { dir } => Step::CreateTarget { dir },
            Step::CreateTpg { dir } => Step::RemoveTpg { dir },
            Step::RemoveTpg { dir } => Step::CreateTpg { dir },
            Step::SetTpgAttribute {
                dir,
                key,
                value,
                was,
            } => Step::SetTpgAttribute {
                dir,
                key,
                value: was?,
                was: Some(value),
            },
            Step::SetTpgEnable { dir, enable, was } => Step::SetTpgEnable {
                dir,
                enable: was?,
                was: Some(enable),
            },
            Step::AddPortal { dir, portal } => Step::RemovePortal { dir, portal },
            Step::RemovePortal { dir, portal } => Step::AddPortal { dir, portal },
            Step::CreateObject {
                hba_index,
                name,
                facts,
            } => Step::RemoveObject {
                hba_index,
                name,
                facts: Some(facts),
            },
            Step::RemoveObject {
                hba_index,
                name,
                facts,
            } => Step::CreateObject {
                hba_index,
                name,
                facts: facts?,
            },
            Step::SetWriteCache {
                hba_index,
                name,
                value,
                was,
            } => Step::SetWriteCache {
                hba_index,
                name,
                value: was?,
                was: Some(value),
            },
            Step::CreateLun {
                dir,
                index,
                object,
                alias,
            } => Step::RemoveLun {
                dir,
                index,
                object: Some(object),
                alias: Some(alias),
            },
            Step::RemoveLun {
                dir,
                index,
                object,
                alias,
            } => Step::CreateLun {
                dir,
                index,
                object: object?,
                alias: alias?,
            },
        })
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::CreateFabric => write!(f, "load the iSCSI fabric"),
            Step::CreateTarget { dir } => write!(f, "create target {dir}"),
            Step::RemoveTarget { dir } => write!(f, "remove target {dir}"),
            Step::CreateTpg { dir } => write!(f, "create TPG 1 of {dir}"),
            Step::RemoveTpg { dir } => write!(f, "remove TPG 1 of {dir}"),
            Step::SetTpgAttribute { key, value, .. } => {
                write!(f, "set TPG 1 attribute {key} to {value}")
            }
            Step::SetTpgEnable { enable, .. } => write!(f, "set TPG 1 enable to {enable}"),
            Step::AddPortal { portal, .. } => write!(f, "add portal {}", portal_dir(portal)),
            Step::RemovePortal { portal, .. } => write!(f, "remove portal {}", portal_dir(portal)),
            Step::CreateObject {
                hba_index, name, ..
            } => write!(f, "create storage object fileio_{hba_index}/{name}"),
            Step::RemoveObject {
                hba_index, name, ..
            } => write!(f, "remove storage object fileio_{hba_index}/{name}"),
            Step::SetWriteCache {
                hba_index,
                name,
                value,
                ..
            } => write!(f, "set write_back of fileio_{hba_index}/{name} to {value}"),
            Step::CreateLun { index, object, .. } => write!(f, "map LUN {index} to {object}"),
            Step::RemoveLun { index, .. } => write!(f, "remove LUN {index}"),
            Step::RemoveStray { stray, .. } => write!(f, "clean up: {}", stray.describe()),
        }
    }
}

/// The changes that make the running target equal `desired`, in the order to make them.
///
/// `iqn` names the target when it does not exist yet. Kept LUNs are never touched; an
/// object whose managed facts drifted is changed in place when the kernel allows it
/// (write_back), else its LUNs, the object, the object again and its LUNs again, at the
/// same indices.
pub fn steps(running: &RunningState, desired: &ManagedView, iqn: &str) -> Vec<Step> {
    let mut plan = Vec::new();
    let Some(want_tpg) = &desired.tpg else {
        return plan;
    };
    let dir = running
        .target_dir
        .clone()
        .unwrap_or_else(|| iqn.to_string());
    // Half-made leftovers go first: they may hold a name or an index wanted below.
    plan.extend(running.strays.iter().map(|stray| Step::RemoveStray {
        dir: dir.clone(),
        stray: stray.clone(),
    }));
    let tpg_exists = running.view.tpg.is_some();
    if !running.fabric {
        plan.push(Step::CreateFabric);
    }
    if running.target_dir.is_none() {
        plan.push(Step::CreateTarget { dir: dir.clone() });
    }
    if !tpg_exists {
        plan.push(Step::CreateTpg { dir: dir.clone() });
    }
    let have_settings = running.view.tpg.as_ref().map(|t| &t.settings);
    for (key, want) in &want_tpg.settings.attributes {
        let Some(want) = *want else { continue };
        // A new TPG starts with the kernel's defaults: every attribute is written.
        let was = have_settings.and_then(|s| s.attributes.get(key).copied().flatten());
        if !tpg_exists || was != Some(want) {
            plan.push(Step::SetTpgAttribute {
                dir: dir.clone(),
                key: key.clone(),
                value: want,
                was,
            });
        }
    }
    let have_portals: BTreeSet<(IpAddr, u16)> =
        have_settings.map(|s| s.portals.clone()).unwrap_or_default();
    for portal in want_tpg.settings.portals.difference(&have_portals) {
        plan.push(Step::AddPortal {
            dir: dir.clone(),
            portal: *portal,
        });
    }

    // Objects: new ones, and drifted ones that cannot change in place (replaced).
    let mut hba_indices = running.hba_indices.clone();
    let mut next_hba = || {
        let index = (0..).find(|i| !hba_indices.contains(i)).unwrap_or(u32::MAX);
        hba_indices.insert(index);
        index
    };
    let mut replaced: BTreeSet<&str> = BTreeSet::new();
    let mut write_cache = Vec::new();
    let mut created = Vec::new();
    for (name, want) in &desired.objects {
        match (running.view.objects.get(name), running.places.get(name)) {
            (Some(have), Some(place)) => {
                let differences = have.differences(want);
                if differences.is_empty() {
                    continue;
                }
                if differences
                    .iter()
                    .all(|d: &Difference| d.field == "write_back")
                {
                    write_cache.push(Step::SetWriteCache {
                        hba_index: place.hba_index,
                        name: name.clone(),
                        value: want.write_back == Some(true),
                        was: have.write_back,
                    });
                } else {
                    replaced.insert(name.as_str());
                }
            }
            _ => created.push(Step::CreateObject {
                hba_index: next_hba(),
                name: name.clone(),
                facts: want.clone(),
            }),
        }
    }
    plan.extend(created);

    // Where each wanted object will live, for its LUN links.
    let place_of = |name: &str, plan: &[Step]| -> Option<String> {
        if let Some(place) = running.places.get(name) {
            return Some(place.path(name));
        }
        plan.iter().find_map(|step| match step {
            Step::CreateObject {
                hba_index, name: n, ..
            } if n == name => Some(format!("fileio_{hba_index}/{name}")),
            _ => None,
        })
    };
    // LUNs: wanted ones that are missing or point elsewhere; free indices first, so that
    // a new image is served before anything goes.
    let stray_luns: BTreeSet<u32> = running
        .strays
        .iter()
        .filter_map(|s| match s {
            Stray::LinklessLun { index } => Some(*index),
            _ => None,
        })
        .collect();
    let mut add_now = Vec::new();
    let mut add_after_removals = Vec::new();
    let mut remove = Vec::new();
    let mut wanted_at: BTreeMap<u32, String> = BTreeMap::new();
    for (index, name) in &want_tpg.luns {
        let Some(object) = place_of(name, &plan) else {
            continue;
        };
        wanted_at.insert(*index, object.clone());
        let have = running
            .luns
            .get(index)
            .filter(|_| !stray_luns.contains(index));
        let correct = have.is_some_and(|lun| lun.object.as_deref() == Some(object.as_str()));
        if correct && !replaced.contains(name.as_str()) {
            continue;
        }
        let create = Step::CreateLun {
            dir: dir.clone(),
            index: *index,
            object,
            alias: name.clone(),
        };
        if have.is_some() || replaced.contains(name.as_str()) {
            add_after_removals.push(create);
        } else {
            add_now.push(create);
        }
    }
    plan.extend(add_now);
    // LUNs that go: managed LUNs not wanted where they are, and LUNs of replaced objects.
    for (index, lun) in &running.luns {
        if stray_luns.contains(index) {
            continue;
        }
        // A LUN that is not ours stays, even at an index a wanted LUN needs: the planner
        // never allocates one in use, and creating there fails and rolls back.
        let Some(name) = &lun.managed else {
            continue;
        };
        let kept = wanted_at
            .get(index)
            .is_some_and(|o| lun.object.as_ref() == Some(o))
            && !replaced.contains(name.as_str());
        if !kept {
            remove.push(remove_lun(&dir, *index, lun));
        }
    }
    plan.extend(remove);
    // Replaced objects: out and in again, now that nothing exports them.
    for name in &replaced {
        if let (Some(place), Some(want)) = (running.places.get(*name), desired.objects.get(*name)) {
            plan.push(Step::RemoveObject {
                hba_index: place.hba_index,
                name: (*name).to_string(),
                facts: running.view.objects.get(*name).cloned(),
            });
            plan.push(Step::CreateObject {
                hba_index: place.hba_index,
                name: (*name).to_string(),
                facts: want.clone(),
            });
        }
    }
    plan.extend(add_after_removals);
    // Objects nothing wants any more.
    for (name, place) in &running.places {
        if !desired.objects.contains_key(name) {
            plan.push(Step::RemoveObject {
                hba_index: place.hba_index,
                name: name.clone(),
                facts: running.view.objects.get(name).cloned(),
            });
        }
    }
    plan.extend(write_cache);
    for portal in have_portals.difference(&want_tpg.settings.portals) {
        plan.push(Step::RemovePortal {
            dir: dir.clone(),
            portal: *portal,
        });
    }
    // Enabled last: a new TPG serves only once it is whole. Disabled only when the policy
    // says so, never to make a change.
    let have_enable = have_settings.and_then(|s| s.enable);
    if want_tpg.settings.enable != have_enable || !tpg_exists {
        if let Some(enable) = want_tpg.settings.enable {
            if tpg_exists || enable {
                plan.push(Step::SetTpgEnable {
                    dir,
                    enable,
                    was: have_enable,
                });
            }
        }
    }
    plan
}

fn remove_lun(dir: &str, index: u32, lun: &crate::lio::running::RunningLun) -> Step {
    Step::RemoveLun {
        dir: dir.to_string(),
        index,
        object: lun.object.clone(),
        alias: lun.alias.clone(),
    }
}

/// Makes one step's changes. A step that fails part-way takes back what it made, so that
/// it leaves either all of it or nothing of it.
pub fn execute(configfs: &Configfs, step: &Step) -> Result<(), KernelError> {
    match step {
        Step::CreateFabric => configfs.mkdir("iscsi"),
        Step::CreateTarget { dir } => configfs.mkdir(&format!("iscsi/{dir}")),
        Step::RemoveTarget { dir } => configfs.rmdir(&format!("iscsi/{dir}")),
        Step::CreateTpg { dir } => configfs.mkdir(&format!("iscsi/{dir}/tpgt_1")),
        Step::RemoveTpg { dir } => configfs.rmdir(&format!("iscsi/{dir}/tpgt_1")),
        Step::SetTpgAttribute {
            dir, key, value, ..
        } => configfs.write(
            &format!("iscsi/{dir}/tpgt_1/attrib/{key}"),
            &format!("{value}\n"),
        ),
        Step::SetTpgEnable { dir, enable, .. } => configfs.write(
            &format!("iscsi/{dir}/tpgt_1/enable"),
            &format!("{}\n", u8::from(*enable)),
        ),
        Step::AddPortal { dir, portal } => {
            configfs.mkdir(&format!("iscsi/{dir}/tpgt_1/np/{}", portal_dir(portal)))
        }
        Step::RemovePortal { dir, portal } => {
            configfs.rmdir(&format!("iscsi/{dir}/tpgt_1/np/{}", portal_dir(portal)))
        }
        Step::CreateObject {
            hba_index,
            name,
            facts,
        } => create_object(configfs, *hba_index, name, facts),
        Step::RemoveObject {
            hba_index, name, ..
        } => {
            let hba = format!("core/fileio_{hba_index}");
            configfs.rmdir(&format!("{hba}/{name}"))?;
            // rtslib keeps one object per HBA; an HBA that still holds another stays.
            let _ = configfs.rmdir(&hba);
            Ok(())
        }
        Step::SetWriteCache {
            hba_index,
            name,
            value,
            ..
        } => configfs.write(
            &format!("core/fileio_{hba_index}/{name}/attrib/emulate_write_cache"),
            &format!("{}\n", u8::from(*value)),
        ),
        Step::CreateLun {
            dir,
            index,
            object,
            alias,
        } => {
            let lun = format!("iscsi/{dir}/tpgt_1/lun/lun_{index}");
            configfs.mkdir(&lun)?;
            configfs
                .link(&format!("{lun}/{alias}"), object)
                .inspect_err(|_| {
                    let _ = configfs.rmdir(&lun);
                })
        }
        Step::RemoveLun {
            dir, index, alias, ..
        } => {
            let lun = format!("iscsi/{dir}/tpgt_1/lun/lun_{index}");
            if let Some(alias) = alias {
                configfs.unlink(&format!("{lun}/{alias}"))?;
            }
            configfs.rmdir(&lun)
        }
        Step::RemoveStray { dir, stray } => match stray {
            Stray::UnconfiguredObject { hba, name } | Stray::DuplicateObject { hba, name } => {
                configfs.rmdir(&format!("core/{hba}/{name}"))?;
                let _ = configfs.rmdir(&format!("core/{hba}"));
                Ok(())
            }
            Stray::EmptyHba { hba } => configfs.rmdir(&format!("core/{hba}")),
            Stray::LinklessLun { index } => {
                configfs.rmdir(&format!("iscsi/{dir}/tpgt_1/lun/lun_{index}"))
            }
        },
    }
}

/// Creates a fileio object the way rtslib does, with the model alias set before the object
/// is enabled (the kernel refuses it once a LUN exports the object).
fn create_object(
    configfs: &Configfs,
    hba_index: u32,
    name: &str,
    facts: &ManagedObject,
) -> Result<(), KernelError> {
    let hba = format!("core/fileio_{hba_index}");
    let made_hba = if configfs.root().join(&hba).is_dir() {
        false
    } else {
        configfs.mkdir(&hba)?;
        true
    };
    let object = format!("{hba}/{name}");
    let made = configfs.mkdir(&object).and_then(|()| {
        let size = facts.size.unwrap_or(0);
        configfs.write(
            &format!("{object}/control"),
            &format!("fd_dev_name={},fd_dev_size={size}", facts.dev),
        )?;
        configfs.write(&format!("{object}/udev_path"), &facts.dev)?;
        if let Some(alias) = facts.emulate_model_alias {
            configfs.write(
                &format!("{object}/attrib/emulate_model_alias"),
                &format!("{alias}\n"),
            )?;
        }
        if facts.write_back == Some(true) {
            configfs.write(&format!("{object}/attrib/emulate_write_cache"), "1\n")?;
        }
        configfs.write(&format!("{object}/enable"), "1\n")?;
        if let Some(wwn) = &facts.wwn {
            configfs.write(
                &format!("{object}/wwn/vpd_unit_serial"),
                &format!("{wwn}\n"),
            )?;
        }
        Ok(())
    });
    if made.is_err() {
        let _ = configfs.rmdir(&object);
        if made_hba {
            let _ = configfs.rmdir(&hba);
        }
    }
    made
}

/// Changes the running target in place to `change.expected`, verifies it by reading
/// configfs back, undoes the steps on failure, and saves `saveconfig.json` once the kernel
/// runs it.
pub fn apply(policy: &Policy, change: &Change) -> Result<Applied, Error> {
    let lio = &policy.lio;
    let configfs = Configfs::new(&lio.configfs);
    if !configfs.is_loaded() {
        return Err(ApplyError::NotLoaded {
            root: lio.configfs.clone(),
        }
        .into());
    }
    // Read again under the lock: this is what the steps change.
    let before = configfs
        .read(&policy.catalogue, &policy.target)
        .map_err(ApplyError::Kernel)?;
    let steps = steps(&before, change.expected, &policy.target.iqn);
    let backup = back_up(policy, change)?;

    let mut done: Vec<Step> = Vec::new();
    let mut failure = None;
    for step in &steps {
        log::debug!("configfs: {step}");
        match execute(&configfs, step) {
            Ok(()) => done.push(step.clone()),
            Err(error) => {
                failure = Some(ApplyError::Step {
                    step: step.to_string(),
                    source: error,
                });
                break;
            }
        }
    }
    if failure.is_none() {
        failure = match configfs.read(&policy.catalogue, &policy.target) {
            Ok(after) => {
                let differences = after.drift(change.expected);
                (!differences.is_empty()).then_some(ApplyError::Verify { differences })
            }
            Err(error) => Some(ApplyError::Kernel(error)),
        };
    }
    if let Some(error) = failure {
        log::warn!(
            "{}; undoing {} configfs change(s)",
            crate::error::chain(&error),
            done.len()
        );
        return match undo(policy, &configfs, &done, &before) {
            Ok(()) => Err(Error::RolledBack { error }),
            Err(rollback) => Err(Error::RollbackFailed {
                error,
                rollback: Box::new(rollback),
            }),
        };
    }
    log::info!("configfs: {} change(s) applied in place", steps.len());

    // The kernel runs the plan: save it, so that a reboot restores the same.
    let live = &lio.saveconfig;
    create_parent_dir(live)
        .and_then(|()| write_atomic(live, change.desired.as_bytes()))
        .map_err(|source| ApplyError::Unsaved { source })?;
    Ok(Applied {
        backup,
        kernel_changes: steps.len(),
        warnings: Vec::new(),
    })
}

/// Whether `step` sets something on a TPG that `done` created (its target or TPG).
fn tpg_created_by(done: &[Step], step: &Step) -> bool {
    let (Step::SetTpgAttribute { dir, .. } | Step::SetTpgEnable { dir, .. }) = step else {
        return false;
    };
    done.iter().any(|d| {
        matches!(d, Step::CreateTarget { dir: created } | Step::CreateTpg { dir: created } if created == dir)
    })
}

/// Undoes `done` in reverse order, then checks that the running target is what it was.
fn undo(
    policy: &Policy,
    configfs: &Configfs,
    done: &[Step],
    before: &RunningState,
) -> Result<(), ApplyError> {
    let mut failures = Vec::new();
    for step in done.iter().rev() {
        match step.inverse() {
            Some(inverse) => {
                if let Err(e) = execute(configfs, &inverse) {
                    failures.push(format!("{inverse}: {}", crate::error::chain(&e)));
                }
            }
            None if matches!(step, Step::RemoveStray { .. } | Step::CreateFabric) => {}
            // An attribute of a TPG this apply created goes with the TPG, removed in turn.
            None if tpg_created_by(done, step) => {}
            None => failures.push(format!(
                "{step}: cannot be undone (its old value is unknown)"
            )),
        }
    }
    let differences = match configfs.read(&policy.catalogue, &policy.target) {
        Ok(now) => now.view.differences(&before.view),
        Err(e) => vec![crate::error::chain(&e)],
    };
    if failures.is_empty() && differences.is_empty() {
        Ok(())
    } else {
        Err(ApplyError::Undo {
            failures,
            differences,
        })
    }
}

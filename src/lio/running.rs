//! What the kernel runs, as read from configfs: plain data (the reader is
//! [`crate::kernel::configfs`]), so that the planner and the in-place apply stay pure and
//! tests can build it by hand.

use super::managed::ManagedView;
use std::collections::{BTreeMap, BTreeSet};

/// The running configuration's managed part, and what an in-place change needs to know
/// about where things are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunningState {
    /// Managed storage objects (enabled fileio objects under the mount) and TPG 1 of the
    /// policy's target, as comparable facts.
    pub view: ManagedView,
    /// Where each managed object lives: its HBA directory (`fileio_3`).
    pub places: BTreeMap<String, ObjectPlace>,
    /// Every LUN of TPG 1, managed or not, by index.
    pub luns: BTreeMap<u32, RunningLun>,
    /// Indices of every HBA directory under `core/` (`fileio_3` is 3), whatever its plugin.
    pub hba_indices: BTreeSet<u32>,
    /// Whether `iscsi/` (the fabric) exists.
    pub fabric: bool,
    /// The policy's target directory under `iscsi/`, as the kernel spells it, if it exists.
    /// Whether its TPG 1 exists is `view.tpg`.
    pub target_dir: Option<String>,
    /// Half-made things an interrupted run (or tool) left: removed by the next apply.
    pub strays: Vec<Stray>,
}

/// Where a storage object lives in configfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectPlace {
    /// The HBA directory: `<plugin>_<index>`.
    pub hba: String,
    pub hba_index: u32,
}

impl ObjectPlace {
    /// The object's path under `core/`: `fileio_3/<name>`.
    pub fn path(&self, name: &str) -> String {
        format!("{}/{name}", self.hba)
    }
}

/// One LUN directory of TPG 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningLun {
    /// What its link points at, `<hba>/<name>` under `core/`; `None` for a LUN without a
    /// link (half-made).
    pub object: Option<String>,
    /// The managed object it serves, if it serves one.
    pub managed: Option<String>,
    /// The link's name (rtslib's LUN alias).
    pub alias: Option<String>,
}

/// Something half-made in configfs, recognised by its shape, that no plan wants as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stray {
    /// A fileio object with one of our names that was never enabled (it cannot be exported).
    UnconfiguredObject { hba: String, name: String },
    /// A second object with the name of a managed one, in another HBA, not exported.
    DuplicateObject { hba: String, name: String },
    /// A fileio HBA directory with no object in it.
    EmptyHba { hba: String },
    /// A LUN directory of TPG 1 without a link to a storage object.
    LinklessLun { index: u32 },
}

impl Stray {
    pub fn describe(&self) -> String {
        match self {
            Stray::UnconfiguredObject { hba, name } => {
                format!("storage object {hba}/{name} was never enabled (an interrupted run?)")
            }
            Stray::DuplicateObject { hba, name } => {
                format!("storage object {hba}/{name} duplicates a managed object's name")
            }
            Stray::EmptyHba { hba } => format!("backstore {hba} holds no storage object"),
            Stray::LinklessLun { index } => {
                format!("LUN {index} has no storage object (an interrupted run?)")
            }
        }
    }
}

impl RunningState {
    /// Every LUN index of TPG 1 in use, managed or not.
    pub fn lun_indices(&self) -> BTreeSet<u32> {
        self.luns.keys().copied().collect()
    }

    /// The lowest LUN index a managed object is exported at.
    pub fn lun_of(&self, name: &str) -> Option<u32> {
        self.luns
            .iter()
            .find(|(_, lun)| lun.managed.as_deref() == Some(name))
            .map(|(index, _)| *index)
    }

    /// One line for each way this state differs from `desired`, strays included.
    pub fn drift(&self, desired: &ManagedView) -> Vec<String> {
        let mut lines = self.view.differences(desired);
        lines.extend(self.strays.iter().map(Stray::describe));
        lines
    }
}

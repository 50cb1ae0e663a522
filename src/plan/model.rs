//! What a plan is: the projections, skipped images and target changes the planner gives,
//! and the context it is made against.

use crate::ledger::Ledger;
use crate::lio::running::RunningState;
use crate::lio::SaveConfig;
use crate::skip::SkipReason;
use crate::terms::{Action, ImageRef, Kind};
use serde::ser::{Serialize, SerializeStruct, Serializer};
use std::collections::BTreeMap;

/// One storage object and its LUN, as the plan leaves (or removes) it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projection {
    pub kind: Kind,
    /// Every image this projection serves (two IMS images may share one rootfs).
    pub images: Vec<ImageRef>,
    /// `s3://<bucket>/<key>` of the image file.
    pub source: String,
    pub etag: Option<String>,
    pub name: String,
    pub wwn: String,
    pub dev: String,
    pub size: u64,
    pub lun: Option<u32>,
    pub action: Action,
    /// For `update`: what changes, one phrase each.
    pub changes: Vec<String>,
    /// For a projection the catalogue no longer wants but kept within
    /// `safety.removal_grace`: the Unix time it goes.
    pub removal_pending_until: Option<u64>,
}

/// The JSON report's shape of a projection (a contract: extend, never rename).
impl Serialize for Projection {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let first = self.images.first();
        let mut s = serializer.serialize_struct("Projection", 14)?;
        s.serialize_field("kind", &self.kind)?;
        s.serialize_field("image_id", &first.and_then(|i| i.id.as_deref()))?;
        s.serialize_field("image_name", &first.and_then(|i| i.name.as_deref()))?;
        s.serialize_field("images", &self.images)?;
        s.serialize_field("source", &self.source)?;
        s.serialize_field("etag", &self.etag)?;
        s.serialize_field("name", &self.name)?;
        s.serialize_field("wwn", &self.wwn)?;
        s.serialize_field("dev", &self.dev)?;
        s.serialize_field("size", &self.size)?;
        s.serialize_field("lun", &self.lun)?;
        s.serialize_field("action", &self.action)?;
        s.serialize_field("changes", &self.changes)?;
        s.serialize_field("removal_pending_until", &self.removal_pending_until)?;
        s.end()
    }
}

/// An image that is not projected, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub kind: Kind,
    pub image: ImageRef,
    pub source: Option<String>,
    pub reason: SkipReason,
}

/// The JSON report's shape of a skipped image (a contract: extend, never rename).
impl Serialize for Skipped {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Skipped", 6)?;
        s.serialize_field("kind", &self.kind)?;
        s.serialize_field("image_id", &self.image.id)?;
        s.serialize_field("image_name", &self.image.name)?;
        s.serialize_field("source", &self.source)?;
        s.serialize_field("reason_code", &self.reason.code)?;
        s.serialize_field("reason", &self.reason.detail)?;
        s.end()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub desired: SaveConfig,
    /// Sorted by LUN, then name.
    /// Shared with the report, which lives through the apply (5,500 projections are 3 MB).
    pub projections: std::sync::Arc<Vec<Projection>>,
    pub skipped: Vec<Skipped>,
    /// Changes to the target itself (creation, enable, attributes, portals).
    pub target_changes: Vec<String>,
    /// LUN entries the plan removes, in any target (the dangerous operation).
    pub lun_removals: usize,
    /// Whether the desired configuration differs from the current one.
    pub changed: bool,
    /// How the running target differs from the desired configuration, one line each (empty
    /// when it was not read).
    pub drift: Vec<String>,
    /// What an operator must know that is neither a skip nor an error, one line each: an
    /// object rebuilt in place under a served LUN.
    pub warnings: Vec<String>,
    /// The ledger as it stands once this plan is in place (`None` without a ledger).
    pub ledger: Option<Ledger>,
}

impl Plan {
    /// Whether the file or the running target must change.
    pub fn needs_apply(&self) -> bool {
        self.changed || !self.drift.is_empty()
    }

    pub fn count(&self, action: Action) -> usize {
        self.projections
            .iter()
            .filter(|p| p.action == action)
            .count()
    }
}

/// What else a plan is made against, besides the policy, the catalogue and the file.
#[derive(Debug, Default, Clone, Copy)]
pub struct Context<'a> {
    /// What the kernel runs, when it was read.
    pub running: Option<&'a RunningState>,
    /// The target's LUN ledger as it was read (empty when there was none yet), when the
    /// policy keeps one.
    pub ledger: Option<&'a Ledger>,
    /// The index the rest of the fleet gives each identity.
    pub fleet: Option<&'a BTreeMap<String, u32>>,
    /// Unix time of the run (for `safety.removal_grace`).
    pub now: u64,
}

//! The safety limits between the plan and the apply. Removing LUNs that booted nodes read
//! is the dangerous operation, and the old agent's worst failure was pruning every LUN when
//! a source looked empty; so a plan is refused, with nothing touched, when:
//!
//! - a source yields nothing while LUNs are projected from it (an outage: exit 1);
//! - it removes more LUN entries than `safety.max_removals` (exit 3);
//! - it keeps fewer than `safety.min_kept_fraction` of the projections in place (exit 3).
//!
//! `--allow-removals` lets an operator say that it is meant. Pure: plan and snapshot in,
//! a verdict out.

use crate::error::{Error, Refusal, SourceError};
use crate::plan::{Action, Kind, Plan};
use crate::policy::Policy;
use crate::snapshot::{MountEntry, Snapshot};

/// Refuses `plan` when a limit says so (see the module's text).
pub fn check(
    policy: &Policy,
    snapshot: &Snapshot,
    plan: &Plan,
    allow_removals: bool,
) -> Result<(), Error> {
    if allow_removals {
        if plan.lun_removals > 0 {
            log::warn!(
                "the plan removes {} LUN(s); the safety limits are lifted by --allow-removals",
                plan.lun_removals
            );
        }
        return Ok(());
    }
    check_sources(policy, snapshot, plan)?;
    let limit = policy.safety.max_removals;
    if plan.lun_removals > limit {
        return Err(Refusal::TooManyRemovals {
            removals: plan.lun_removals,
            limit,
        }
        .into());
    }
    let before = plan
        .projections
        .iter()
        .filter(|p| p.action != Action::Add)
        .count();
    // A file rewritten in place and projected under its new identity is replaced, not
    // lost: its old LUN already serves bytes that changed, and the file stays served.
    let added_files: std::collections::BTreeSet<&str> = plan
        .projections
        .iter()
        .filter(|p| p.action == Action::Add)
        .map(|p| p.dev.as_str())
        .collect();
    let kept = plan
        .projections
        .iter()
        .filter(|p| match p.action {
            Action::Keep | Action::Update => true,
            Action::Remove => added_files.contains(p.dev.as_str()),
            Action::Add => false,
        })
        .count();
    let fraction = policy.safety.min_kept_fraction;
    if before > 0 && (kept as f64) < fraction * before as f64 {
        return Err(Refusal::TooFewKept {
            kept,
            before,
            fraction,
        }
        .into());
    }
    Ok(())
}

/// Projections of `kind` in place before this plan.
fn projected(plan: &Plan, kind: Kind) -> usize {
    plan.projections
        .iter()
        .filter(|p| p.kind == kind && p.action != Action::Add)
        .count()
}

/// A source that yields nothing while LUNs are projected from it is down, not empty.
fn check_sources(policy: &Policy, snapshot: &Snapshot, plan: &Plan) -> Result<(), SourceError> {
    let catalogue = &policy.catalogue;
    let rootfs = projected(plan, Kind::Rootfs);
    let tagged = snapshot
        .records()
        .filter(|record| catalogue.select.check(record).is_ok())
        .count();
    // Without IMS there is nothing to ask; LUNs of rootfs images then go, within the
    // removal limits, as the policy says.
    if rootfs > 0 && tagged == 0 && catalogue.ims.is_some() {
        return Err(SourceError::Empty {
            what: format!(
                "IMS lists {} image(s), none tagged for projection",
                snapshot.images.len()
            ),
            projected: rootfs,
        });
    }
    let pe = projected(plan, Kind::Pe) + projected(plan, Kind::Object);
    if pe > 0 && snapshot.pe_objects.is_empty() {
        return Err(SourceError::Empty {
            what: format!(
                "the listing under the prefix source(s) {} holds no object",
                catalogue.prefixes()
            ),
            projected: pe,
        });
    }
    let all = rootfs + pe;
    let served = snapshot
        .mount
        .values()
        .filter(|entry| matches!(entry, MountEntry::File { size } if *size > 0))
        .count();
    if all > 0 && !snapshot.mount.is_empty() && served == 0 {
        return Err(SourceError::Empty {
            what: format!(
                "the mount {} holds none of the {} file(s) the catalogue names with a size \
                 (missing or empty: s3fs not mounted, or a stale cache?)",
                catalogue.mount.display(),
                snapshot.mount.len()
            ),
            projected: all,
        });
    }
    Ok(())
}

//! The removal grace: managed objects the catalogue no longer wants that stay for
//! `safety.removal_grace` while their file is in the mount, and which files the mount is
//! asked about.

use super::luns::CurrentState;
use super::rules::{kind_of_key, Candidate};
use crate::identity::Identity;
use crate::ledger::Ledger;
use crate::lio::SaveConfig;
use crate::policy::Policy;
use crate::snapshot::{MountEntry, Snapshot};
use std::collections::BTreeSet;

/// The object keys of the managed storage objects in `current`: the files a removal grace
/// asks the mount about.
pub fn files_in_place(policy: &Policy, current: &SaveConfig) -> BTreeSet<String> {
    CurrentState::read(current, policy, None)
        .managed
        .values()
        .filter_map(|object| policy.catalogue.key_for_dev(&object.dev))
        .map(str::to_owned)
        .collect()
}

/// Managed objects the catalogue no longer wants whose file is still in the mount, kept for
/// `safety.removal_grace` after the ledger first saw them unwanted (initiators may still be
/// reading them). A file gone from the mount goes at once: it can no longer be served.
pub fn pending_removals(
    policy: &Policy,
    snapshot: &Snapshot,
    state: &CurrentState,
    wanted: &[Candidate],
    ledger: &Ledger,
    now: u64,
) -> Vec<Candidate> {
    let grace = policy.safety.removal_grace.as_secs();
    if grace == 0 {
        return Vec::new();
    }
    let wanted: BTreeSet<&str> = wanted.iter().map(|c| c.identity.name.as_str()).collect();
    let catalogue = &policy.catalogue;
    let mut pending = Vec::new();
    for (name, object) in &state.managed {
        if wanted.contains(name.as_str()) {
            continue;
        }
        let (Some(key), Some(wwn), Some(size)) =
            (catalogue.key_for_dev(&object.dev), &object.wwn, object.size)
        else {
            continue;
        };
        let in_mount =
            matches!(snapshot.mount.get(key), Some(MountEntry::File { size: s }) if *s == size);
        let entry = ledger.entries.get(name);
        let since = entry.and_then(|e| e.unwanted_since).unwrap_or(now);
        let until = since.saturating_add(grace);
        if !in_mount || now >= until {
            continue;
        }
        pending.push(Candidate {
            kind: kind_of_key(catalogue, key),
            images: entry.map(|e| e.images.clone()).unwrap_or_default(),
            source: catalogue.url_for_key(key),
            etag: entry.and_then(|e| e.etag.clone()),
            identity: Identity {
                name: name.clone(),
                wwn: wwn.clone(),
            },
            dev: object.dev.clone(),
            size,
            key: key.to_string(),
            pending_until: Some(until),
        });
    }
    pending
}

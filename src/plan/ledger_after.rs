//! The step after a plan: the ledger its projections leave once they are in place (indices
//! placed, kept, pending removal or freed). Imports the ledger; the ledger knows nothing of
//! plans.

use crate::ledger::{Entry, Ledger};
use crate::plan::model::Projection;
use crate::terms::{Action, ImageRef};
use std::collections::BTreeSet;
use std::sync::Arc;

/// The ledger `projections` leave at `now` once they are in place: every projection placed,
/// kept, pending or removed.
pub fn ledger_after(ledger: Ledger, projections: &[Projection], now: u64) -> Ledger {
    let mut next = ledger;
    for p in projections {
        let Some(lun) = p.lun else { continue };
        let previous = next.entries.get(&p.name).cloned();
        let first_projected = previous
            .as_ref()
            .filter(|e| e.lun == lun)
            .map_or(now, |e| e.first_projected);
        let images = if p.images.iter().any(ImageRef::is_known) {
            p.images.clone()
        } else {
            previous
                .as_ref()
                .map(|e| e.images.clone())
                .unwrap_or_default()
        };
        let entry = Entry {
            lun,
            kind: p.kind,
            source: p.source.clone(),
            etag: p
                .etag
                .clone()
                .or_else(|| previous.as_ref().and_then(|e| e.etag.clone())),
            images,
            first_projected,
            unwanted_since: match (p.action, &p.removal_pending_until) {
                (Action::Remove, _) | (_, Some(_)) => Some(
                    previous
                        .as_ref()
                        .and_then(|e| e.unwanted_since)
                        .unwrap_or(now),
                ),
                _ => None,
            },
            removed: (p.action == Action::Remove).then_some(now),
            extra: previous
                .as_ref()
                .map(|e| e.extra.clone())
                .unwrap_or_default(),
        };
        // An entry as it was stays shared.
        if previous.as_deref() != Some(&entry) {
            next.entries.insert(p.name.clone(), Arc::new(entry));
        }
        next.raise_high_water(lun);
    }
    // An identity the plan does not serve is not served once it is applied.
    let served: BTreeSet<&str> = projections
        .iter()
        .filter(|p| p.lun.is_some() && p.action != Action::Remove)
        .map(|p| p.name.as_str())
        .collect();
    for (name, entry) in next.entries.iter_mut() {
        if entry.is_live() && !served.contains(name.as_str()) {
            let entry = Arc::make_mut(entry);
            entry.removed = Some(now);
            entry.unwanted_since.get_or_insert(now);
        }
    }
    next.prune();
    next
}

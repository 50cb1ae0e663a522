//! `explain IMAGE`: why an image is or is not projected, rule by rule, with the identity it
//! has or would have. It walks the planner's own rule functions, so it cannot disagree with
//! a run.

use crate::identity::Identity;
use crate::image::ImageEntry;
use crate::plan::rules::{
    kind_of_key, object_candidate, rootfs_candidate, source_of, RuleOutcome, Step, Trace, RULE_KEY,
};
use crate::plan::{Action, ImageRef, Kind, Plan};
use crate::policy::Policy;
use crate::prefix_source::IdentityRule;
use crate::snapshot::Snapshot;
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Debug, Serialize)]
pub struct Explanation {
    pub kind: Kind,
    pub image_id: Option<String>,
    pub image_name: Option<String>,
    pub steps: Vec<Step>,
    /// The identity the image has (projected) or would have (skipped after its manifest).
    pub identity: Option<IdentityReport>,
    pub projected: bool,
    pub lun: Option<u32>,
    /// What the next run does with it: add, keep, update, remove.
    pub action: Option<Action>,
    pub verdict: String,
}

#[derive(Debug, Serialize)]
pub struct IdentityReport {
    pub name: String,
    pub wwn: String,
    pub multipath_wwid: String,
}

impl From<&Identity> for IdentityReport {
    fn from(identity: &Identity) -> IdentityReport {
        IdentityReport {
            name: identity.name.clone(),
            wwn: identity.wwn.clone(),
            multipath_wwid: identity.multipath_wwid(),
        }
    }
}

/// Every image the query names: an IMS id or name, a manifest or rootfs key, a PE key, or
/// any of those keys as an `s3://` URL. Empty when nothing matches.
pub fn explain(policy: &Policy, snapshot: &Snapshot, plan: &Plan, query: &str) -> Vec<Explanation> {
    let catalogue = &policy.catalogue;
    let key = query
        .strip_prefix(&format!("s3://{}/", catalogue.bucket))
        .unwrap_or(query);
    let mut found = Vec::new();
    for entry in &snapshot.images {
        if matches_image(entry, snapshot, &catalogue.bucket, query, key) {
            found.push(explain_rootfs(policy, snapshot, plan, entry));
        }
    }
    for object in snapshot.pe_objects.iter().filter(|o| o.key == key) {
        let mut trace = Trace::default();
        let mut explanation = Explanation {
            kind: kind_of_key(catalogue, &object.key),
            image_id: None,
            image_name: Some(object.key.clone()),
            steps: Vec::new(),
            identity: None,
            projected: false,
            lun: None,
            action: None,
            verdict: String::new(),
        };
        match source_of(catalogue, object) {
            Err(why) => {
                explanation.steps.push(Step {
                    rule: RULE_KEY,
                    outcome: RuleOutcome::Fail,
                    detail: why.to_string(),
                });
                explanation.verdict = "not an image".to_string();
            }
            Ok(source) => {
                let result = object_candidate(catalogue, snapshot, source, object, &mut trace);
                explanation.steps = trace.0;
                match result {
                    Ok(candidate) => conclude(&mut explanation, plan, &candidate.identity, None),
                    Err(skip) => {
                        // The identity, when the rule could make one, for the operator.
                        if let Some(made) = source.identity_of(&catalogue.bucket, object) {
                            conclude(
                                &mut explanation,
                                plan,
                                &made.identity,
                                Some(skip.reason.to_string()),
                            );
                        } else {
                            explanation.verdict = format!("skipped: {}", skip.reason);
                        }
                    }
                }
            }
        }
        found.push(explanation);
    }
    if found.is_empty() {
        found.extend(from_ledger(policy, plan, query, key));
    }
    let source = catalogue.source_for_key(key);
    if let (true, Some(source)) = (found.is_empty(), source) {
        // Only the PE rule can name an object that is not there.
        let identity = (source.identity == IdentityRule::Key)
            .then(|| IdentityReport::from(&Identity::pe(&catalogue.bucket, key)));
        found.push(Explanation {
            kind: kind_of_key(catalogue, key),
            image_id: None,
            image_name: Some(key.to_string()),
            steps: vec![Step {
                rule: RULE_KEY,
                outcome: RuleOutcome::Fail,
                detail: format!("no object {key} under the prefix {}", source.prefix),
            }],
            identity,
            projected: false,
            lun: None,
            action: None,
            verdict: "not in the catalogue".to_string(),
        });
    }
    found
}

/// An image the catalogue no longer knows, as the LUN ledger remembers it.
fn from_ledger(policy: &Policy, plan: &Plan, query: &str, key: &str) -> Vec<Explanation> {
    let Some(ledger) = &plan.ledger else {
        return Vec::new();
    };
    let url = policy.catalogue.url_for_key(key);
    let mut found = Vec::new();
    for (name, entry) in &ledger.entries {
        let named = entry
            .images
            .iter()
            .any(|i| i.id.as_deref() == Some(query) || i.name.as_deref() == Some(query));
        if !named && entry.source != url {
            continue;
        }
        let first = entry.images.first();
        let projection = plan.projections.iter().find(|p| p.name == *name);
        let at = crate::describe::local_time;
        let mut detail = format!(
            "not in the catalogue; the LUN ledger remembers it: LUN {}, first projected {}",
            entry.lun,
            at(entry.first_projected)
        );
        if let Some(since) = entry.unwanted_since {
            let _ = write!(detail, ", unwanted since {}", at(since));
        }
        if let Some(removed) = entry.removed {
            let _ = write!(detail, ", removed {}", at(removed));
        }
        let verdict = match projection {
            Some(p) if p.removal_pending_until.is_some() => format!(
                "LUN {} until {} (safety.removal_grace), then removed",
                entry.lun,
                at(p.removal_pending_until.unwrap_or_default())
            ),
            Some(p) if p.action == Action::Remove => {
                format!("LUN {} now; the next run removes it", entry.lun)
            }
            Some(_) => format!("LUN {}", entry.lun),
            None => "not projected".to_string(),
        };
        // The identity again from what the ledger kept, when that is enough.
        let identity = match entry.kind {
            Kind::Pe => Some(Identity::pe(&policy.catalogue.bucket, key)),
            Kind::Rootfs | Kind::Object => entry
                .etag
                .as_deref()
                .map(|etag| Identity::rootfs(&entry.source, etag)),
        }
        .filter(|identity| identity.name == *name);
        found.push(Explanation {
            kind: entry.kind,
            image_id: first.and_then(|i| i.id.clone()),
            image_name: first.and_then(|i| i.name.clone()),
            steps: vec![Step {
                rule: "LUN ledger",
                outcome: RuleOutcome::Fail,
                detail,
            }],
            identity: identity.as_ref().map(IdentityReport::from),
            projected: projection.is_some_and(|p| p.action != Action::Remove),
            lun: Some(entry.lun),
            action: projection.map(|p| p.action),
            verdict,
        });
    }
    found
}

fn matches_image(
    entry: &ImageEntry,
    snapshot: &Snapshot,
    bucket: &str,
    query: &str,
    key: &str,
) -> bool {
    match entry {
        ImageEntry::Invalid { id, .. } => id.as_deref() == Some(query),
        ImageEntry::Valid(record) => {
            let trail = snapshot.trail(record, bucket);
            record.id == query
                || record.name == query
                || trail.manifest_key() == Some(key)
                || trail.rootfs_key() == Some(key)
        }
    }
}

fn explain_rootfs(
    policy: &Policy,
    snapshot: &Snapshot,
    plan: &Plan,
    entry: &ImageEntry,
) -> Explanation {
    let catalogue = &policy.catalogue;
    let mut trace = Trace::default();
    let result = rootfs_candidate(catalogue, snapshot, entry, &mut trace);
    let (image_id, image_name) = match entry {
        ImageEntry::Valid(record) => (Some(record.id.clone()), Some(record.name.clone())),
        ImageEntry::Invalid { id, name, .. } => (id.clone(), name.clone()),
    };
    let mut explanation = Explanation {
        kind: Kind::Rootfs,
        image_id,
        image_name,
        steps: trace.0,
        identity: None,
        projected: false,
        lun: None,
        action: None,
        verdict: String::new(),
    };
    match result {
        Ok(candidate) => conclude(&mut explanation, plan, &candidate.identity, None),
        Err(skipped) => {
            // The identity it would have, when the manifest got that far.
            let would = match entry {
                ImageEntry::Valid(record) => snapshot
                    .trail(record, &catalogue.bucket)
                    .artifact()
                    .map(|a| Identity::rootfs(&a.path, &a.etag)),
                ImageEntry::Invalid { .. } => None,
            };
            match would {
                Some(identity) => conclude(
                    &mut explanation,
                    plan,
                    &identity,
                    Some(skipped.reason.to_string()),
                ),
                None => explanation.verdict = format!("skipped: {}", skipped.reason),
            }
        }
    }
    explanation
}

/// The LUN step and the verdict, from the plan.
fn conclude(
    explanation: &mut Explanation,
    plan: &Plan,
    identity: &Identity,
    skipped: Option<String>,
) {
    explanation.identity = Some(IdentityReport::from(identity));
    let projection = plan.projections.iter().find(|p| p.name == identity.name);
    if let Some(reason) = skipped {
        explanation.verdict = match projection {
            Some(p) if p.action == Action::Remove => format!(
                "skipped: {reason}; it is LUN {} now and the next run removes it",
                p.lun.map_or("-".to_string(), |l| l.to_string())
            ),
            _ => format!("skipped: {reason}"),
        };
        return;
    }
    match projection {
        Some(p) if p.action != Action::Remove => {
            let lun = p.lun.map_or("-".to_string(), |l| l.to_string());
            let what = match p.action {
                Action::Add => format!("the next run adds it as LUN {lun}"),
                Action::Keep => format!("projected as LUN {lun}, unchanged"),
                Action::Update => format!(
                    "projected as LUN {lun}; the next run updates {}",
                    p.changes.join(", ")
                ),
                Action::Remove => String::new(),
            };
            explanation.steps.push(Step {
                rule: "LUN",
                outcome: RuleOutcome::Pass,
                detail: what.clone(),
            });
            explanation.projected = true;
            explanation.lun = p.lun;
            explanation.action = Some(p.action);
            explanation.verdict = what;
        }
        _ => {
            // Passed every rule but was not placed: no free LUN or a name conflict.
            let reason = plan
                .skipped
                .iter()
                .find(|s| {
                    explanation.image_id.is_some() && s.image.id == explanation.image_id
                        || explanation.image_id.is_none() && s.image.name == explanation.image_name
                })
                .map(|s| s.reason.to_string())
                .unwrap_or_else(|| "not placed".to_string());
            explanation.steps.push(Step {
                rule: "LUN",
                outcome: RuleOutcome::Fail,
                detail: reason.clone(),
            });
            explanation.verdict = format!("skipped: {reason}");
        }
    }
}

pub fn to_text(explanations: &[Explanation]) -> String {
    let mut out = String::new();
    for (i, e) in explanations.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let who = ImageRef {
            id: e.image_id.clone(),
            name: e.image_name.clone(),
        }
        .describe();
        let _ = writeln!(out, "{} image {who}", e.kind);
        for step in &e.steps {
            let outcome = match step.outcome {
                RuleOutcome::Pass => "pass",
                RuleOutcome::Fail => "FAIL",
                RuleOutcome::NotChecked => "not checked",
            };
            let _ = writeln!(
                out,
                "  {outcome:<11}  {:<11}  {}",
                step.rule,
                crate::describe::printable(&step.detail)
            );
        }
        if let Some(identity) = &e.identity {
            let tense = if e.projected {
                "identity"
            } else {
                "identity it would have"
            };
            let _ = writeln!(
                out,
                "  {tense}: name {}, wwn {}, multipath WWID {}",
                identity.name, identity.wwn, identity.multipath_wwid
            );
        }
        let _ = writeln!(out, "  => {}", crate::describe::printable(&e.verdict));
    }
    out
}

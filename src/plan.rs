//! The pure planner: (policy, snapshot, current configuration) -> plan.
//!
//! No file, clock, network or process here. The desired configuration is built by editing
//! a copy of the current one only where a managed fact differs, so that everything the tool
//! does not own is carried over untouched and "no change" means the two are equal.

use crate::identity::Identity;
use crate::image::ImageEntry;
use crate::lio::managed::{self, is_target, is_tpg1, managed_object, ManagedObject};
use crate::lio::{fileio_name, lun_index, storage_object_path, SaveConfig};
use crate::policy::{Catalogue, Policy, Portal};
use crate::s3path;
use crate::skip::{ReasonCode, SkipReason};
use crate::snapshot::{ManifestRead, MountEntry, PeObject, Snapshot};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// What kind of image a projection serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Rootfs,
    Pe,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Rootfs => "rootfs",
            Kind::Pe => "pe",
        }
    }
}

/// What the plan does with a projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Add,
    Keep,
    Update,
    Remove,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Add => "add",
            Action::Keep => "keep",
            Action::Update => "update",
            Action::Remove => "remove",
        }
    }
}

/// An IMS image (or, for PE, the object key standing in for one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageRef {
    pub id: Option<String>,
    pub name: Option<String>,
}

/// One storage object and its LUN, as the plan leaves (or removes) it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
}

/// An image that is not projected, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub kind: Kind,
    pub image: ImageRef,
    pub source: Option<String>,
    pub reason: SkipReason,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub desired: SaveConfig,
    /// Sorted by LUN, then name.
    pub projections: Vec<Projection>,
    pub skipped: Vec<Skipped>,
    /// Changes to the target itself (creation, enable, attributes, portals).
    pub target_changes: Vec<String>,
    /// LUN entries the plan removes, in any target (the dangerous operation).
    pub lun_removals: usize,
    /// Whether the desired configuration differs from the current one.
    pub changed: bool,
}

impl Plan {
    pub fn count(&self, action: Action) -> usize {
        self.projections
            .iter()
            .filter(|p| p.action == action)
            .count()
    }
}

/// A projection the catalogue asks for, before LUN allocation.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub kind: Kind,
    pub images: Vec<ImageRef>,
    pub source: String,
    pub etag: Option<String>,
    pub identity: Identity,
    pub dev: String,
    pub size: u64,
    /// The object key in the bucket (and under the mount).
    pub key: String,
}

/// Computes the plan. Pure: the same inputs always give the same plan.
pub fn plan(policy: &Policy, snapshot: &Snapshot, current: &SaveConfig) -> Plan {
    let catalogue = &policy.catalogue;
    let mut skipped = Vec::new();
    let mut candidates = Candidates::default();
    // One trace reused for every image: the planner keeps only the verdicts.
    let mut trace = Trace::default();
    for entry in &snapshot.images {
        trace.0.clear();
        match rootfs_candidate(catalogue, snapshot, entry, &mut trace) {
            Ok(candidate) => candidates.add(candidate, &mut skipped),
            Err(skip) => skipped.push(*skip),
        }
    }
    for object in snapshot.pe_objects.iter().filter(|o| is_pe_image(o)) {
        trace.0.clear();
        match pe_candidate(catalogue, snapshot, object, &mut trace) {
            Ok(candidate) => candidates.add(candidate, &mut skipped),
            Err(skip) => skipped.push(*skip),
        }
    }
    let images_by_key = images_by_rootfs_key(catalogue, snapshot);

    let state = CurrentState::read(current, policy);

    // A fileio object we do not manage already holds this name: the kernel allows one.
    let mut candidates = candidates.list;
    candidates.retain(|c| match state.foreign_fileio.get(&c.identity.name) {
        Some(dev) => {
            skipped.push(c.skipped(
                ReasonCode::NameConflict,
                format!(
                    "storage object fileio/{} already exists for {dev}, outside the mount; \
                     it is not the tool's to replace",
                    c.identity.name
                ),
            ));
            false
        }
        None => true,
    });

    let allocation = allocate_luns(&candidates, &state, policy.target.max_lun);
    for c in &allocation.unplaced {
        skipped.push(c.skipped(
            ReasonCode::NoFreeLun,
            format!(
                "every LUN index from 0 to {} is in use (target.max_lun)",
                policy.target.max_lun
            ),
        ));
    }

    build(policy, current, &state, allocation, &images_by_key, skipped)
}

/// Candidates in catalogue order, found by name in a map (the catalogue holds thousands).
#[derive(Default)]
struct Candidates {
    list: Vec<Candidate>,
    by_name: BTreeMap<String, usize>,
}

impl Candidates {
    fn add(&mut self, candidate: Candidate, skipped: &mut Vec<Skipped>) {
        let existing = self
            .by_name
            .get(&candidate.identity.name)
            .and_then(|&at| self.list.get_mut(at));
        match existing {
            // Same identity means the same path and etag: one storage object serves both.
            Some(existing) if existing.dev == candidate.dev && existing.size == candidate.size => {
                existing.images.extend(candidate.images);
            }
            Some(existing) => {
                let detail = format!(
                    "its identity {} is already taken by {}",
                    candidate.identity.name, existing.source
                );
                skipped.push(candidate.skipped(ReasonCode::NameConflict, detail));
            }
            None => {
                self.by_name
                    .insert(candidate.identity.name.clone(), self.list.len());
                self.list.push(candidate);
            }
        }
    }
}

impl Candidate {
    fn skipped(&self, code: ReasonCode, detail: String) -> Skipped {
        Skipped {
            kind: self.kind,
            image: self
                .images
                .first()
                .cloned()
                .unwrap_or_else(ImageRef::unknown),
            source: Some(self.source.clone()),
            reason: SkipReason::new(code, detail),
        }
    }
}

/// `"name" (id ID)`, as reports and logs name an image.
pub fn describe_image(name: Option<&str>, id: Option<&str>) -> String {
    match (name, id) {
        (Some(name), Some(id)) => format!("{name:?} (id {id})"),
        (Some(name), None) => format!("{name:?}"),
        (None, Some(id)) => format!("(id {id})"),
        (None, None) => "(record without id)".to_string(),
    }
}

impl ImageRef {
    pub fn describe(&self) -> String {
        describe_image(self.name.as_deref(), self.id.as_deref())
    }

    fn unknown() -> ImageRef {
        ImageRef {
            id: None,
            name: None,
        }
    }
}

/// One rule of the projection rules, as applied to one image (for `explain`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub rule: &'static str,
    pub outcome: Outcome,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Fail,
    /// The rule cannot be checked with this source (the S3 ETag, offline).
    NotChecked,
}

/// The rules an image went through, in order; the planner keeps only the verdict.
#[derive(Debug, Default)]
pub struct Trace(pub Vec<Step>);

impl Trace {
    fn pass(&mut self, rule: &'static str, detail: impl Into<String>) {
        self.push(rule, Outcome::Pass, detail.into());
    }

    fn push(&mut self, rule: &'static str, outcome: Outcome, detail: String) {
        self.0.push(Step {
            rule,
            outcome,
            detail,
        });
    }

    /// Records the failing rule and returns the skip.
    fn fail(
        &mut self,
        rule: &'static str,
        kind: Kind,
        image: &ImageRef,
        source: Option<String>,
        reason: SkipReason,
    ) -> Box<Skipped> {
        self.push(rule, Outcome::Fail, reason.to_string());
        Box::new(Skipped {
            kind,
            image: image.clone(),
            source,
            reason,
        })
    }
}

pub const RULE_RECORD: &str = "IMS record";
pub const RULE_TAG: &str = "tag filter";
pub const RULE_LINK: &str = "link";
pub const RULE_MANIFEST: &str = "manifest";
pub const RULE_KEY: &str = "object key";
pub const RULE_S3: &str = "S3 object";
pub const RULE_MOUNT: &str = "mount file";

/// Rules 1 to 4 for a rootfs image from IMS (domain notes, section 4).
pub fn rootfs_candidate(
    catalogue: &Catalogue,
    snapshot: &Snapshot,
    entry: &ImageEntry,
    trace: &mut Trace,
) -> Result<Candidate, Box<Skipped>> {
    let kind = Kind::Rootfs;
    let record = match entry {
        ImageEntry::Valid(record) => record,
        ImageEntry::Invalid { id, name, problem } => {
            let image = ImageRef {
                id: id.clone(),
                name: name.clone(),
            };
            let reason = SkipReason::new(ReasonCode::RecordInvalid, problem.clone());
            return Err(trace.fail(RULE_RECORD, kind, &image, None, reason));
        }
    };
    let image = ImageRef {
        id: Some(record.id.clone()),
        name: Some(record.name.clone()),
    };
    // Rule 1: the tag filter, then a link.
    if let Err(why) = catalogue.select.check(record) {
        let reason = SkipReason::new(ReasonCode::NotTagged, why);
        return Err(trace.fail(RULE_TAG, kind, &image, record.link_path.clone(), reason));
    }
    trace.pass(RULE_TAG, "passes catalogue.ims.select");
    let Some(link) = record.link_path.as_deref() else {
        let reason = SkipReason::new(ReasonCode::NoLink, "the IMS record has no link.path");
        return Err(trace.fail(RULE_LINK, kind, &image, None, reason));
    };
    let manifest_key = match s3path::key_in_bucket(link, &catalogue.bucket) {
        Ok(key) => key,
        Err(e) => {
            let reason = SkipReason::new(ReasonCode::InvalidKey, format!("manifest {e}"));
            return Err(trace.fail(RULE_LINK, kind, &image, Some(link.to_string()), reason));
        }
    };
    trace.pass(RULE_LINK, link);
    // Rule 2: one readable manifest with one rootfs artifact, path and etag.
    let artifact = match snapshot.manifests.get(manifest_key) {
        Some(ManifestRead::Rootfs(artifact)) => artifact,
        Some(ManifestRead::Skip(reason)) => {
            let reason = SkipReason::new(reason.code, format!("{link}: {}", reason.detail));
            return Err(trace.fail(RULE_MANIFEST, kind, &image, Some(link.to_string()), reason));
        }
        None => {
            let reason = SkipReason::new(
                ReasonCode::ManifestUnreadable,
                format!("{link} was not read"),
            );
            return Err(trace.fail(RULE_MANIFEST, kind, &image, Some(link.to_string()), reason));
        }
    };
    trace.pass(
        RULE_MANIFEST,
        format!("rootfs {} etag {}", artifact.path, artifact.etag),
    );
    let source = artifact.path.clone();
    let key = match s3path::key_in_bucket(&artifact.path, &catalogue.bucket) {
        Ok(key) => key,
        Err(e) => {
            let reason = SkipReason::new(ReasonCode::InvalidKey, format!("rootfs {e}"));
            return Err(trace.fail(RULE_KEY, kind, &image, Some(source), reason));
        }
    };
    trace.pass(RULE_KEY, key);
    // Rule 3: the S3 object exists with the manifest's etag (when S3 can be asked).
    let s3_size = match &snapshot.objects {
        None => {
            trace.push(
                RULE_S3,
                Outcome::NotChecked,
                "offline catalogue: the manifest etag is trusted".to_string(),
            );
            None
        }
        Some(objects) => match objects.get(key) {
            None => {
                let reason = SkipReason::new(
                    ReasonCode::S3ObjectMissing,
                    format!("no S3 object at {}", artifact.path),
                );
                return Err(trace.fail(RULE_S3, kind, &image, Some(source), reason));
            }
            Some(object) if object.etag != artifact.etag => {
                let reason = SkipReason::new(
                    ReasonCode::EtagMismatch,
                    format!(
                        "S3 has ETag {:?}, the manifest says {:?}",
                        object.etag, artifact.etag
                    ),
                );
                return Err(trace.fail(RULE_S3, kind, &image, Some(source), reason));
            }
            Some(object) => {
                trace.pass(
                    RULE_S3,
                    format!(
                        "exists, {} bytes, ETag {} as in the manifest",
                        object.size, object.etag
                    ),
                );
                Some(object.size)
            }
        },
    };
    // Rule 4: the file is in the mount, non-empty, and as large as the S3 object.
    let size = match mount_size(catalogue, snapshot, key, s3_size) {
        Ok(size) => size,
        Err(reason) => return Err(trace.fail(RULE_MOUNT, kind, &image, Some(source), reason)),
    };
    trace.pass(
        RULE_MOUNT,
        format!("{}, {size} bytes", catalogue.dev_for_key(key)),
    );
    Ok(Candidate {
        kind,
        images: vec![image],
        source: artifact.path.clone(),
        etag: Some(artifact.etag.clone()),
        identity: Identity::rootfs(&artifact.path, &artifact.etag),
        dev: catalogue.dev_for_key(key),
        size,
        key: key.to_string(),
    })
}

/// A PE object: every object under the PE prefixes that is in the mount with the same size.
pub fn pe_candidate(
    catalogue: &Catalogue,
    snapshot: &Snapshot,
    object: &PeObject,
    trace: &mut Trace,
) -> Result<Candidate, Box<Skipped>> {
    let key = object.key.as_str();
    let source = catalogue.url_for_key(key);
    let image = ImageRef {
        id: None,
        name: Some(key.to_string()),
    };
    if let Err(e) = s3path::check_key(key) {
        let reason = SkipReason::new(ReasonCode::InvalidKey, e.to_string());
        return Err(trace.fail(RULE_KEY, Kind::Pe, &image, Some(source), reason));
    }
    trace.pass(
        RULE_KEY,
        format!("{key}, {} bytes in the listing", object.size),
    );
    let size = match mount_size(catalogue, snapshot, key, Some(object.size)) {
        Ok(size) => size,
        Err(reason) => return Err(trace.fail(RULE_MOUNT, Kind::Pe, &image, Some(source), reason)),
    };
    trace.pass(
        RULE_MOUNT,
        format!("{}, {size} bytes", catalogue.dev_for_key(key)),
    );
    Ok(Candidate {
        kind: Kind::Pe,
        images: vec![image],
        identity: Identity::pe(&catalogue.bucket, key),
        source,
        etag: object.etag.clone(),
        dev: catalogue.dev_for_key(key),
        size,
        key: key.to_string(),
    })
}

/// Which IMS image each rootfs key belongs to, as far as the manifests tell (to name the
/// image of a projection that is being removed).
fn images_by_rootfs_key(catalogue: &Catalogue, snapshot: &Snapshot) -> BTreeMap<String, ImageRef> {
    let mut found = BTreeMap::new();
    for record in snapshot.images.iter().filter_map(|entry| match entry {
        ImageEntry::Valid(record) => Some(record),
        ImageEntry::Invalid { .. } => None,
    }) {
        let rootfs_key = record
            .link_path
            .as_deref()
            .and_then(|link| s3path::key_in_bucket(link, &catalogue.bucket).ok())
            .and_then(|manifest_key| match snapshot.manifests.get(manifest_key) {
                Some(ManifestRead::Rootfs(artifact)) => {
                    s3path::key_in_bucket(&artifact.path, &catalogue.bucket).ok()
                }
                _ => None,
            });
        if let Some(key) = rootfs_key {
            found.entry(key.to_string()).or_insert_with(|| ImageRef {
                id: Some(record.id.clone()),
                name: Some(record.name.clone()),
            });
        }
    }
    found
}

/// A folder marker or any empty object is not an image.
pub fn is_pe_image(object: &PeObject) -> bool {
    !object.key.ends_with('/') && object.size > 0
}

/// Rule 4: the file's size in the mount, if it may be served.
fn mount_size(
    catalogue: &Catalogue,
    snapshot: &Snapshot,
    key: &str,
    expected: Option<u64>,
) -> Result<u64, SkipReason> {
    let path = catalogue.dev_for_key(key);
    let reason = SkipReason::new;
    match snapshot.mount.get(key) {
        None | Some(MountEntry::Missing) => Err(reason(
            ReasonCode::NotInMount,
            format!("{path} does not exist"),
        )),
        Some(MountEntry::NotAFile) => Err(reason(
            ReasonCode::NotInMount,
            format!("{path} is not a regular file"),
        )),
        Some(MountEntry::Error(e)) => Err(reason(
            ReasonCode::NotInMount,
            format!("cannot stat {path}: {e}"),
        )),
        // The kernel would advertise a huge disk for size 0: never emit it.
        Some(MountEntry::File { size: 0 }) => Err(reason(
            ReasonCode::SizeMismatch,
            format!("{path} is empty (upload in progress or stale cache): not yet"),
        )),
        Some(MountEntry::File { size }) => match expected {
            Some(expected) if expected != *size => Err(reason(
                ReasonCode::SizeMismatch,
                format!("{path} has {size} bytes, S3 has {expected}: not yet"),
            )),
            _ => Ok(*size),
        },
    }
}

/// The managed facts of the current configuration.
struct CurrentState {
    /// Managed storage objects by name, with their position in `storage_objects`.
    managed: BTreeMap<String, ManagedObject>,
    /// fileio storage objects the tool does not manage: name to dev.
    foreign_fileio: BTreeMap<String, String>,
    /// Every LUN index in the policy's TPG 1.
    lun_indices: BTreeSet<u32>,
    /// LUN indices in TPG 1 by the managed storage object they serve.
    luns_of: BTreeMap<String, BTreeSet<u32>>,
}

impl CurrentState {
    fn read(current: &SaveConfig, policy: &Policy) -> CurrentState {
        let mut managed = BTreeMap::new();
        let mut foreign_fileio = BTreeMap::new();
        for so in current.storage_objects() {
            if let Some((name, object)) = managed_object(so, &policy.catalogue) {
                managed.entry(name).or_insert(object);
            } else if so.get("plugin").and_then(Value::as_str) == Some("fileio") {
                if let Some(name) = so.get("name").and_then(Value::as_str) {
                    let dev = so.get("dev").and_then(Value::as_str).unwrap_or("?");
                    foreign_fileio.insert(name.to_string(), dev.to_string());
                }
            }
        }
        let mut lun_indices = BTreeSet::new();
        let mut luns_of: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
        for lun in tpg1_luns(current, &policy.target.iqn) {
            let Some(index) = lun_index(lun) else {
                continue;
            };
            lun_indices.insert(index);
            if let Some(name) = fileio_name(lun).filter(|n| managed.contains_key(*n)) {
                luns_of.entry(name.to_string()).or_default().insert(index);
            }
        }
        CurrentState {
            managed,
            foreign_fileio,
            lun_indices,
            luns_of,
        }
    }
}

fn tpg1_luns<'a>(config: &'a SaveConfig, iqn: &'a str) -> impl Iterator<Item = &'a Value> {
    config
        .targets()
        .iter()
        .filter(|t| is_target(t, iqn))
        .take(1)
        .filter_map(|t| t.get("tpgs").and_then(Value::as_array))
        .flatten()
        .filter(|tpg| is_tpg1(tpg))
        .take(1)
        .filter_map(|tpg| tpg.get("luns").and_then(Value::as_array))
        .flatten()
}

struct Allocation {
    /// Candidates with their LUN index.
    placed: Vec<(Candidate, u32)>,
    unplaced: Vec<Candidate>,
}

/// LUN indices are stable: a projection that stays keeps its index; a new one takes an index
/// above every index in use (in this run, including the ones being freed, so that an index
/// initiators may still hold is not handed to a different image), and wraps to the lowest
/// free index only past `max_lun`.
fn allocate_luns(candidates: &[Candidate], state: &CurrentState, max_lun: u32) -> Allocation {
    let mut placed = Vec::new();
    let mut new = Vec::new();
    // Indices that stay taken: LUNs of objects the tool does not manage, and kept LUNs.
    let mut taken: BTreeSet<u32> = state.lun_indices.clone();
    for luns in state.luns_of.values() {
        for index in luns {
            taken.remove(index);
        }
    }
    for candidate in candidates {
        match state
            .luns_of
            .get(&candidate.identity.name)
            .and_then(|l| l.first())
        {
            Some(&index) => {
                taken.insert(index);
                placed.push((candidate.clone(), index));
            }
            None => new.push(candidate.clone()),
        }
    }
    // Deterministic order for new LUNs, whatever order IMS listed the images in.
    new.sort_by(|a, b| {
        (a.kind, &a.source, &a.identity.name).cmp(&(b.kind, &b.source, &b.identity.name))
    });
    let freed: BTreeSet<u32> = state.lun_indices.difference(&taken).copied().collect();
    let mut next = state
        .lun_indices
        .iter()
        .chain(taken.iter())
        .max()
        .map_or(0, |max| max.saturating_add(1));
    let mut unplaced = Vec::new();
    for candidate in new {
        let index = if next <= max_lun && !taken.contains(&next) {
            let index = next;
            next += 1;
            Some(index)
        } else {
            // Past max_lun: the lowest index nobody holds, and one freed in this very run
            // only as the last resort.
            (0..=max_lun)
                .find(|i| !taken.contains(i) && !freed.contains(i))
                .or_else(|| (0..=max_lun).find(|i| !taken.contains(i)))
        };
        match index {
            Some(index) => {
                taken.insert(index);
                placed.push((candidate, index));
            }
            None => unplaced.push(candidate),
        }
    }
    Allocation { placed, unplaced }
}

/// The storage object the tool writes for a projection.
fn storage_object(candidate: &Candidate) -> Value {
    json!({
        "aio": false,
        "alua_tpgs": [],
        "attributes": {"emulate_model_alias": 1},
        "dev": candidate.dev,
        "name": candidate.identity.name,
        "plugin": "fileio",
        "size": candidate.size,
        "write_back": false,
        "wwn": candidate.identity.wwn,
    })
}

/// Managed fields that differ between a current object and the candidate, as phrases.
fn object_changes(current: &ManagedObject, candidate: &Candidate) -> Vec<String> {
    let mut changes = Vec::new();
    if current.dev != candidate.dev {
        changes.push(format!("dev {} -> {}", current.dev, candidate.dev));
    }
    if current.size != Some(candidate.size) {
        changes.push(format!(
            "size {} -> {}",
            show(&current.size),
            candidate.size
        ));
    }
    if current.wwn.as_deref() != Some(candidate.identity.wwn.as_str()) {
        changes.push(format!(
            "wwn {} -> {}",
            show(&current.wwn),
            candidate.identity.wwn
        ));
    }
    if current.write_back != Some(false) {
        changes.push(format!("write_back {} -> false", show(&current.write_back)));
    }
    if current.emulate_model_alias != Some(1) {
        changes.push(format!(
            "emulate_model_alias {} -> 1",
            show(&current.emulate_model_alias)
        ));
    }
    changes
}

fn show<T: std::fmt::Display>(value: &Option<T>) -> String {
    value
        .as_ref()
        .map_or_else(|| "unset".to_string(), T::to_string)
}

/// Applies the managed fields of a candidate to an existing storage object, keeping
/// everything else (the kernel's attributes, ALUA groups) as it is.
fn patch_object(so: &mut Value, candidate: &Candidate) {
    let Some(object) = so.as_object_mut() else {
        return;
    };
    object.insert("dev".into(), json!(candidate.dev));
    object.insert("size".into(), json!(candidate.size));
    object.insert("wwn".into(), json!(candidate.identity.wwn));
    object.insert("write_back".into(), json!(false));
    let attributes = object
        .entry("attributes")
        .or_insert_with(|| Value::Object(Map::new()));
    if !attributes.is_object() {
        *attributes = Value::Object(Map::new());
    }
    if let Some(attributes) = attributes.as_object_mut() {
        attributes.insert("emulate_model_alias".into(), json!(1));
    }
}

fn build(
    policy: &Policy,
    current: &SaveConfig,
    state: &CurrentState,
    allocation: Allocation,
    images_by_key: &BTreeMap<String, ImageRef>,
    skipped: Vec<Skipped>,
) -> Plan {
    let catalogue = &policy.catalogue;
    let mut desired = current.clone();
    let mut projections = Vec::new();
    let wanted: BTreeMap<&str, &(Candidate, u32)> = allocation
        .placed
        .iter()
        .map(|placed| (placed.0.identity.name.as_str(), placed))
        .collect();

    // Storage objects: drop managed ones no longer wanted (and duplicates of a name), patch
    // kept ones whose managed fields differ, append new ones in LUN order.
    let mut removed_names: BTreeSet<String> = BTreeSet::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut updates: BTreeMap<String, Vec<String>> = BTreeMap::new();
    desired.storage_objects_mut().retain_mut(|so| {
        let Some((name, object)) = managed_object(so, catalogue) else {
            return true;
        };
        match wanted.get(name.as_str()) {
            Some((candidate, _)) if seen.insert(name.clone()) => {
                let changes = object_changes(&object, candidate);
                if !changes.is_empty() {
                    patch_object(so, candidate);
                    updates.insert(name, changes);
                }
                true
            }
            Some(_) => false,
            None => {
                removed_names.insert(name);
                false
            }
        }
    });
    let mut added: Vec<&(Candidate, u32)> = allocation
        .placed
        .iter()
        .filter(|(c, _)| !state.managed.contains_key(&c.identity.name))
        .collect();
    added.sort_by_key(|(_, index)| *index);
    for (candidate, _) in &added {
        desired
            .storage_objects_mut()
            .push(storage_object(candidate));
    }

    // Removed objects: take their LUNs out of every target so no LUN points at nothing.
    let removed_paths: BTreeSet<String> = removed_names
        .iter()
        .map(|name| storage_object_path("fileio", name))
        .collect();
    let mut lun_removals = remove_luns_of(&mut desired, &removed_paths);

    // The policy's target, TPG 1: create what is missing, then its settings and LUNs.
    let mut target_changes = Vec::new();
    let tpg = ensure_tpg1(&mut desired, &policy.target.iqn, &mut target_changes);
    let mut settings = Vec::new();
    apply_target_settings(tpg, policy, &mut settings);
    if target_changes.is_empty() {
        target_changes = settings;
    } else {
        // A new TPG: one line for it rather than one per attribute.
        let portals: Vec<String> = policy
            .target
            .portals
            .iter()
            .map(Portal::to_string)
            .collect();
        if let Some(created) = target_changes.last_mut() {
            created.push_str(&format!(
                " (TPG 1 {}, portals {})",
                if policy.target.enabled {
                    "enabled"
                } else {
                    "disabled"
                },
                if portals.is_empty() {
                    "none".to_string()
                } else {
                    portals.join(", ")
                }
            ));
        }
    }
    let luns = list_mut(tpg, "luns");
    // A kept object keeps its lowest LUN; further LUNs of it (the old agent mapped two LUNs
    // to one backstore for images sharing a rootfs) go.
    let mut extra: BTreeSet<u32> = BTreeSet::new();
    for (name, indices) in &state.luns_of {
        if let Some((_, keep)) = wanted.get(name.as_str()) {
            extra.extend(indices.iter().filter(|i| *i != keep));
        }
    }
    let before = luns.len();
    luns.retain(|lun| {
        !(fileio_name(lun).is_some() && lun_index(lun).is_some_and(|i| extra.contains(&i)))
    });
    lun_removals += before - luns.len();
    let mut lun_added: BTreeSet<String> = BTreeSet::new();
    for (candidate, index) in &allocation.placed {
        let has_lun = state
            .luns_of
            .get(&candidate.identity.name)
            .is_some_and(|l| l.contains(index));
        if !has_lun {
            luns.push(json!({
                "index": index,
                "storage_object": storage_object_path("fileio", &candidate.identity.name),
            }));
            lun_added.insert(candidate.identity.name.clone());
        }
    }
    if !extra.is_empty() {
        remove_mapped_luns(tpg, &extra);
    }

    for (candidate, index) in &allocation.placed {
        let name = &candidate.identity.name;
        let mut changes = updates.get(name).cloned().unwrap_or_default();
        if state.managed.contains_key(name) && lun_added.contains(name) {
            changes.push(format!("LUN {index} added"));
        }
        if let Some(indices) = state.luns_of.get(name) {
            for dropped in indices.iter().filter(|i| *i != index) {
                changes.push(format!("duplicate LUN {dropped} removed"));
            }
        }
        let action = if !state.managed.contains_key(name) {
            Action::Add
        } else if changes.is_empty() {
            Action::Keep
        } else {
            Action::Update
        };
        projections.push(Projection {
            kind: candidate.kind,
            images: candidate.images.clone(),
            source: candidate.source.clone(),
            etag: candidate.etag.clone(),
            name: name.clone(),
            wwn: candidate.identity.wwn.clone(),
            dev: candidate.dev.clone(),
            size: candidate.size,
            lun: Some(*index),
            action,
            changes: if action == Action::Update {
                changes
            } else {
                Vec::new()
            },
        });
    }
    for name in &removed_names {
        let Some(object) = state.managed.get(name) else {
            continue;
        };
        let key = catalogue.key_for_dev(&object.dev).unwrap_or_default();
        let kind = if catalogue
            .pe_prefixes
            .iter()
            .any(|p| key.starts_with(p.as_str()))
        {
            Kind::Pe
        } else {
            Kind::Rootfs
        };
        let image = match kind {
            Kind::Pe => ImageRef {
                id: None,
                name: Some(key.to_string()),
            },
            Kind::Rootfs => images_by_key
                .get(key)
                .cloned()
                .unwrap_or_else(ImageRef::unknown),
        };
        projections.push(Projection {
            kind,
            images: vec![image],
            source: catalogue.url_for_key(key),
            etag: None,
            name: name.clone(),
            wwn: object.wwn.clone().unwrap_or_default(),
            dev: object.dev.clone(),
            size: object.size.unwrap_or(0),
            lun: state.luns_of.get(name).and_then(|l| l.first().copied()),
            action: Action::Remove,
            changes: Vec::new(),
        });
    }
    projections.sort_by(|a, b| (a.lun, &a.name, a.action).cmp(&(b.lun, &b.name, b.action)));

    let changed = desired != *current;
    Plan {
        desired,
        projections,
        skipped,
        target_changes,
        lun_removals,
        changed,
    }
}

/// Removes LUNs pointing at `paths` from every TPG of every target; returns how many.
fn remove_luns_of(config: &mut SaveConfig, paths: &BTreeSet<String>) -> usize {
    if paths.is_empty() {
        return 0;
    }
    let mut removed = 0;
    for target in config.targets_mut() {
        let Some(tpgs) = target.get_mut("tpgs").and_then(Value::as_array_mut) else {
            continue;
        };
        for tpg in tpgs {
            let Some(luns) = tpg.get_mut("luns").and_then(Value::as_array_mut) else {
                continue;
            };
            let mut gone = BTreeSet::new();
            luns.retain(|lun| {
                let hit = lun
                    .get("storage_object")
                    .and_then(Value::as_str)
                    .is_some_and(|p| paths.contains(p));
                if hit {
                    gone.extend(lun_index(lun));
                }
                !hit
            });
            removed += gone.len();
            if !gone.is_empty() {
                remove_mapped_luns(tpg, &gone);
            }
        }
    }
    removed
}

/// Node ACLs map TPG LUNs by index; a mapping to a removed LUN would fail the restore.
fn remove_mapped_luns(tpg: &mut Value, indices: &BTreeSet<u32>) {
    let Some(acls) = tpg.get_mut("node_acls").and_then(Value::as_array_mut) else {
        return;
    };
    for acl in acls {
        if let Some(mapped) = acl.get_mut("mapped_luns").and_then(Value::as_array_mut) {
            mapped.retain(|m| {
                !m.get("tpg_lun")
                    .and_then(Value::as_u64)
                    .is_some_and(|i| u32::try_from(i).is_ok_and(|i| indices.contains(&i)))
            });
        }
    }
}

/// The policy's target and its TPG 1, created when missing.
fn ensure_tpg1<'a>(
    config: &'a mut SaveConfig,
    iqn: &str,
    changes: &mut Vec<String>,
) -> &'a mut Value {
    let targets = config.targets_mut();
    let position = match targets.iter().position(|t| is_target(t, iqn)) {
        Some(position) => position,
        None => {
            changes.push(format!("create target {iqn}"));
            targets.push(json!({"fabric": "iscsi", "tpgs": [], "wwn": iqn}));
            targets.len() - 1
        }
    };
    let target = &mut targets[position];
    let tpgs = list_mut(target, "tpgs");
    let position = match tpgs.iter().position(is_tpg1) {
        Some(position) => position,
        None => {
            if !changes.iter().any(|c| c.starts_with("create target")) {
                changes.push("create TPG 1".to_string());
            }
            tpgs.push(json!({
                "attributes": {},
                "enable": true,
                "luns": [],
                "node_acls": [],
                "portals": [],
                "tag": 1,
            }));
            tpgs.len() - 1
        }
    };
    &mut tpgs[position]
}

/// The list at `key` of a JSON object, made a list if absent or odd.
fn list_mut<'a>(value: &'a mut Value, key: &str) -> &'a mut Vec<Value> {
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    let Value::Object(object) = value else {
        unreachable!("made an object above")
    };
    let slot = object
        .entry(key)
        .or_insert_with(|| Value::Array(Vec::new()));
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    let Value::Array(list) = slot else {
        unreachable!("made a list above")
    };
    list
}

fn apply_target_settings(tpg: &mut Value, policy: &Policy, changes: &mut Vec<String>) {
    let target = &policy.target;
    let Some(object) = tpg.as_object_mut() else {
        return;
    };
    // rtslib treats an absent `enable` as enabled; a value that is not a boolean is rewritten.
    let found = object.get("enable");
    let enabled = match found {
        None => Some(true),
        Some(Value::Bool(enabled)) => Some(*enabled),
        Some(_) => None,
    };
    if enabled != Some(target.enabled) {
        changes.push(format!(
            "TPG 1 enable {} -> {}",
            show(&enabled),
            target.enabled
        ));
        object.insert("enable".into(), json!(target.enabled));
    }
    let attributes = object
        .entry("attributes")
        .or_insert_with(|| Value::Object(Map::new()));
    if !attributes.is_object() {
        *attributes = Value::Object(Map::new());
    }
    if let Some(attributes) = attributes.as_object_mut() {
        for (key, want) in &target.attributes {
            let found = attributes.get(key).and_then(Value::as_i64);
            if found != Some(i64::from(*want)) {
                changes.push(format!("TPG 1 attribute {key} {} -> {want}", show(&found)));
                attributes.insert(key.clone(), json!(want));
            }
        }
    }
    let wanted: BTreeSet<_> = target.portals.iter().map(|p| (p.ip, p.port)).collect();
    // Rebuilt also when entries are duplicated or unreadable, so the list is exactly the policy's.
    let entries = tpg
        .get("portals")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if managed::portals(tpg) != wanted || entries != wanted.len() {
        rebuild_portals(tpg, &target.portals, changes);
    }
}

/// Keeps current portal entries the policy lists (with their fields), drops the rest, and
/// adds the missing ones in policy order.
fn rebuild_portals(tpg: &mut Value, wanted: &[Portal], changes: &mut Vec<String>) {
    let list = list_mut(tpg, "portals");
    let mut kept: BTreeSet<(std::net::IpAddr, u16)> = BTreeSet::new();
    list.retain(|p| {
        let parsed = p
            .get("ip_address")
            .and_then(Value::as_str)
            .and_then(Portal::parse_ip_address)
            .zip(
                p.get("port")
                    .and_then(Value::as_u64)
                    .and_then(|x| u16::try_from(x).ok()),
            );
        let keep = parsed.is_some_and(|(ip, port)| {
            wanted.iter().any(|w| w.ip == ip && w.port == port) && kept.insert((ip, port))
        });
        if !keep {
            let text = match (p.get("ip_address"), p.get("port")) {
                (Some(ip), Some(port)) => format!("{}:{port}", ip.as_str().unwrap_or("?")),
                _ => p.to_string(),
            };
            changes.push(format!("portal {text} removed"));
        }
        keep
    });
    for portal in wanted {
        if !kept.contains(&(portal.ip, portal.port)) {
            changes.push(format!("portal {portal} added"));
            list.push(json!({
                "ip_address": portal.ip_address(),
                "iser": false,
                "offload": false,
                "port": portal.port,
            }));
        }
    }
}

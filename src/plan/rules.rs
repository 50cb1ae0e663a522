//! The projection rules (domain notes, section 4), one function per image kind. Each records
//! the rules it applied in a [`Trace`]: the planner keeps only the verdict, `explain` prints
//! every step, so the two cannot disagree.

use super::{ImageRef, Kind, Skipped};
use crate::describe;
use crate::identity::Identity;
use crate::image::ImageEntry;
use crate::lio::managed::ManagedObject;
use crate::manifest::RootfsArtifact;
use crate::policy::Catalogue;
use crate::prefix_source::{IdentityRule, PrefixSource};
use crate::s3path;
use crate::skip::{ReasonCode, SkipReason};
use crate::snapshot::{MountEntry, PeObject, RootfsTrail, Snapshot};
use serde::Serialize;

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
    /// Kept only until then (Unix time): the catalogue no longer wants it, and
    /// `safety.removal_grace` has not passed.
    pub pending_until: Option<u64>,
}

/// The kind of projection an object key makes: that of the prefix source it lies under,
/// else rootfs.
pub fn kind_of_key(catalogue: &Catalogue, key: &str) -> Kind {
    catalogue
        .source_for_key(key)
        .map_or(Kind::Rootfs, kind_of_source)
}

/// PE for the PE rule (identity by key), object for `key+etag`.
pub fn kind_of_source(source: &PrefixSource) -> Kind {
    match source.identity {
        IdentityRule::Key => Kind::Pe,
        IdentityRule::KeyEtag => Kind::Object,
    }
}

/// The prefix source that takes a listed object, or why none does (a folder marker, an
/// empty object, a key its source's globs leave out): such objects are not images, and are
/// neither projected nor reported as skipped.
pub fn source_of<'a>(
    catalogue: &'a Catalogue,
    object: &PeObject,
) -> Result<&'a PrefixSource, &'static str> {
    if object.key.ends_with('/') || object.size == 0 {
        return Err("a folder marker or an empty object is not an image");
    }
    let source = catalogue
        .source_for_key(&object.key)
        .ok_or("under no prefix source")?;
    if source.selects(&object.key) {
        Ok(source)
    } else {
        Err("left out by the source's include and exclude globs")
    }
}

impl Candidate {
    /// The storage object facts this candidate wants.
    pub fn managed_object(&self) -> ManagedObject {
        ManagedObject::wanted(&self.dev, self.size, &self.identity.wwn)
    }

    /// This candidate, skipped after all (a name conflict, no free LUN).
    pub fn skipped(&self, code: ReasonCode, detail: String) -> Skipped {
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

/// One rule as applied to one image (for `explain`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub rule: &'static str,
    pub outcome: RuleOutcome,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleOutcome {
    Pass,
    Fail,
    /// The rule cannot be checked with this source (the S3 ETag, offline).
    NotChecked,
}

/// The rules an image went through, in order.
#[derive(Debug, Default)]
pub struct Trace(pub Vec<Step>);

impl Trace {
    fn pass(&mut self, rule: &'static str, detail: impl Into<String>) {
        self.push(rule, RuleOutcome::Pass, detail.into());
    }

    fn push(&mut self, rule: &'static str, outcome: RuleOutcome, detail: String) {
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
        self.push(rule, RuleOutcome::Fail, reason.to_string());
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

/// Rules 1 to 4 for a rootfs image from IMS.
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
    let image = ImageRef::of(record);
    // Rule 1: the tag filter, then a link.
    if let Err(why) = catalogue.select.check(record) {
        let reason = SkipReason::new(ReasonCode::NotTagged, why.0);
        return Err(trace.fail(RULE_TAG, kind, &image, record.link_path.clone(), reason));
    }
    trace.pass(RULE_TAG, "passes catalogue.ims.select");
    // Rule 2: one readable manifest with one rootfs artifact, path and etag.
    let (artifact, key) = match snapshot.trail(record, &catalogue.bucket) {
        RootfsTrail::NoLink => {
            let reason = SkipReason::new(ReasonCode::NoLink, "the IMS record has no link.path");
            return Err(trace.fail(RULE_LINK, kind, &image, None, reason));
        }
        RootfsTrail::BadLink { link, problem } => {
            let reason = SkipReason::new(ReasonCode::InvalidKey, format!("manifest {problem}"));
            return Err(trace.fail(RULE_LINK, kind, &image, Some(link.to_string()), reason));
        }
        RootfsTrail::ManifestNotRead { link, .. } => {
            trace.pass(RULE_LINK, link);
            let reason = SkipReason::new(
                ReasonCode::ManifestUnreadable,
                format!("{} was not read", describe::key(link)),
            );
            return Err(trace.fail(RULE_MANIFEST, kind, &image, Some(link.to_string()), reason));
        }
        RootfsTrail::ManifestSkipped { link, reason, .. } => {
            trace.pass(RULE_LINK, link);
            let reason = SkipReason::new(
                reason.code,
                format!("{}: {}", describe::key(link), reason.detail),
            );
            return Err(trace.fail(RULE_MANIFEST, kind, &image, Some(link.to_string()), reason));
        }
        RootfsTrail::BadRootfsPath {
            link,
            artifact,
            problem,
            ..
        } => {
            pass_link_and_manifest(trace, link, artifact);
            let reason = SkipReason::new(ReasonCode::InvalidKey, format!("rootfs {problem}"));
            return Err(trace.fail(RULE_KEY, kind, &image, Some(artifact.path.clone()), reason));
        }
        RootfsTrail::Rootfs {
            link,
            artifact,
            key,
            ..
        } => {
            pass_link_and_manifest(trace, link, artifact);
            (artifact, key)
        }
    };
    trace.pass(RULE_KEY, key);
    let source = artifact.path.clone();
    // Rule 3: the S3 object exists with the manifest's etag (when S3 can be asked).
    let s3_size = match &snapshot.objects {
        None => {
            trace.push(
                RULE_S3,
                RuleOutcome::NotChecked,
                "offline catalogue: the manifest etag is trusted".to_string(),
            );
            None
        }
        Some(objects) => match objects.get(key) {
            None => {
                let reason = SkipReason::new(
                    ReasonCode::S3ObjectMissing,
                    format!("no S3 object at {}", describe::key(&artifact.path)),
                );
                return Err(trace.fail(RULE_S3, kind, &image, Some(source), reason));
            }
            Some(object) if object.etag != artifact.etag => {
                let reason = SkipReason::new(
                    ReasonCode::EtagMismatch,
                    format!(
                        "S3 has ETag {:?} for {}, the manifest says {:?}",
                        object.etag,
                        describe::key(&artifact.path),
                        artifact.etag
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
        source,
        etag: Some(artifact.etag.clone()),
        identity: Identity::rootfs(&artifact.path, &artifact.etag),
        dev: catalogue.dev_for_key(key),
        size,
        key: key.to_string(),
        pending_until: None,
    })
}

fn pass_link_and_manifest(trace: &mut Trace, link: &str, artifact: &RootfsArtifact) {
    trace.pass(RULE_LINK, link);
    trace.pass(
        RULE_MANIFEST,
        format!("rootfs {} etag {}", artifact.path, artifact.etag),
    );
}

/// An object of a prefix source (PE, or `prefix_sources`): projected when it is in the
/// mount with the listing's size, under the identity its source's rule gives.
pub fn object_candidate(
    catalogue: &Catalogue,
    snapshot: &Snapshot,
    source: &PrefixSource,
    object: &PeObject,
    trace: &mut Trace,
) -> Result<Candidate, Box<Skipped>> {
    let kind = kind_of_source(source);
    let key = object.key.as_str();
    let url = catalogue.url_for_key(key);
    let image = ImageRef::pe(key);
    if let Err(e) = s3path::check_key(key) {
        let reason = SkipReason::new(ReasonCode::InvalidKey, e.to_string());
        return Err(trace.fail(RULE_KEY, kind, &image, Some(url), reason));
    }
    trace.pass(
        RULE_KEY,
        format!(
            "{key}, {} bytes in the listing, under {} (identity: {})",
            object.size,
            source.prefix,
            source.identity.as_str()
        ),
    );
    let Some(made) = source.identity_of(&catalogue.bucket, object) else {
        let reason = SkipReason::new(
            ReasonCode::MissingEtag,
            format!(
                "identity: key+etag, and the listing gave {} no ETag (nor, offline, a \
                 modification time)",
                describe::key(key)
            ),
        );
        return Err(trace.fail(RULE_S3, kind, &image, Some(url), reason));
    };
    if let Some(version) = &made.version {
        let how = if made.etag_verified {
            "ETag"
        } else {
            "size and modification time in the mount (offline: no ETag)"
        };
        trace.pass(RULE_S3, format!("version {version} (from the {how})"));
    }
    let size = match mount_size(catalogue, snapshot, key, Some(object.size)) {
        Ok(size) => size,
        Err(reason) => return Err(trace.fail(RULE_MOUNT, kind, &image, Some(url), reason)),
    };
    trace.pass(
        RULE_MOUNT,
        format!("{}, {size} bytes", catalogue.dev_for_key(key)),
    );
    Ok(Candidate {
        kind,
        images: vec![image],
        identity: made.identity,
        source: url,
        etag: object.etag.clone(),
        dev: catalogue.dev_for_key(key),
        size,
        key: key.to_string(),
        pending_until: None,
    })
}

/// The most bytes of a fileio device name (the kernel's `FD_MAX_DEV_NAME`, with its NUL):
/// a longer one is cut, and the kernel opens (and creates) another file.
pub const MAX_DEV_BYTES: usize = 255;

/// Rule 4: the file's size in the mount, if it may be served.
fn mount_size(
    catalogue: &Catalogue,
    snapshot: &Snapshot,
    key: &str,
    expected: Option<u64>,
) -> Result<u64, SkipReason> {
    let full = catalogue.dev_for_key(key);
    // Described only for a skip: most files pass, and at 5,500 images this is per image.
    let path = || describe::key(&full);
    let reason = SkipReason::new;
    if full.len() > MAX_DEV_BYTES {
        return Err(reason(
            ReasonCode::PathTooLong,
            format!(
                "the path of {} is {} bytes; a fileio device name holds at most \
                 {MAX_DEV_BYTES}",
                describe::key(key),
                full.len()
            ),
        ));
    }
    match snapshot.mount.get(key) {
        None | Some(MountEntry::Missing) => Err(reason(
            ReasonCode::NotInMount,
            format!("{} does not exist", path()),
        )),
        Some(MountEntry::NotAFile) => Err(reason(
            ReasonCode::NotInMount,
            format!("{} is not a regular file", path()),
        )),
        Some(MountEntry::Outside { target }) => Err(reason(
            ReasonCode::OutsideMount,
            format!(
                "{} is a link to {target}, outside the mount: never served",
                path()
            ),
        )),
        Some(MountEntry::Error(e)) => Err(reason(
            ReasonCode::NotInMount,
            format!("cannot stat {}: {e}", path()),
        )),
        // The kernel would advertise a huge disk for size 0: never emit it.
        Some(MountEntry::File { size: 0 }) => Err(reason(
            ReasonCode::SizeMismatch,
            format!(
                "{} is empty (upload in progress or stale cache): not yet",
                path()
            ),
        )),
        Some(MountEntry::File { size }) => match expected {
            Some(expected) if expected != *size => Err(reason(
                ReasonCode::SizeMismatch,
                format!("{} has {size} bytes, S3 has {expected}: not yet", path()),
            )),
            _ => Ok(*size),
        },
    }
}

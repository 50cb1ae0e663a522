//! Where a target's LUN ledger is kept: an object in the catalogue bucket, beside the rest of
//! the fleet's, or a local file. Reading, and the one conditional write a run makes; what a
//! ledger means is [`crate::ledger`].

pub use super::conditional::{Since, Version, Written};
use crate::error::{BoxError, SourceError};
use crate::ledger::{fleet_numbers, Ledger};
use crate::policy::{LedgerPlace, Policy};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The largest ledger read: 32 MiB, far above 65,536 indices of a few hundred bytes each.
pub const MAX_LEDGER_BYTES: u64 = 32 * 1024 * 1024;
/// The most ledgers of other targets read under the prefix.
pub const MAX_FLEET_LEDGERS: usize = 1000;

/// A ledger's bytes as stored.
pub struct Stored {
    /// `None` when there is no ledger yet.
    pub bytes: Option<Vec<u8>>,
    pub version: Version,
}

/// Another target's ledger under the same prefix.
pub struct FleetLedger {
    /// Where it is.
    pub place: String,
    /// The target it must belong to (from its name).
    pub target: String,
    pub bytes: Result<Vec<u8>, BoxError>,
}

/// Where a ledger is kept.
pub trait LedgerStore {
    /// Where it is, for messages.
    fn place(&self) -> String;
    fn read(&self) -> Result<Stored, BoxError>;
    /// The ledger as this worker last read or wrote it, when a run may plan with it without
    /// asking (a run that then changes neither the target nor the ledger needs no news from
    /// the store); `None`: ask.
    fn remembered(&self) -> Option<Stored> {
        None
    }
    /// Whether [`LedgerStore::remembered`] has a ledger, without copying it.
    fn remembers(&self) -> bool {
        false
    }
    /// The other targets' ledgers.
    fn fleet(&self) -> Vec<FleetLedger>;
    /// Every target's ledger under the prefix, this one's too (`fleet`), handed to `each` one
    /// at a time as it is read. `Err`: the prefix could not be listed.
    fn everyone(&self, each: &mut dyn FnMut(FleetLedger)) -> Result<(), BoxError>;
    /// Whether the store keeps versions of the ledger (`"enabled"`, `"suspended"`): in a
    /// versioned bucket Ceph RGW before 20 checks a conditional write against the wrong
    /// version (Ceph tracker 68183). `None`: it does not, or cannot tell.
    fn versioning(&self) -> Option<&'static str> {
        None
    }
    /// Writes `bytes` only if the ledger is still at `version`.
    fn write(&self, bytes: &[u8], version: &Version) -> Result<Written, BoxError>;
}

/// The ledger in a local file (`lio.ledger_file`). Runs take the lock file, so the version
/// check guards against a hand edit or a copy made between read and write.
pub struct FileLedger {
    pub path: PathBuf,
}

impl LedgerStore for FileLedger {
    fn place(&self) -> String {
        self.path.display().to_string()
    }

    fn read(&self) -> Result<Stored, BoxError> {
        match crate::fsio::read_regular(&self.path, MAX_LEDGER_BYTES) {
            Ok(bytes) => Ok(Stored {
                version: Version::Bytes(bytes.clone()),
                bytes: Some(bytes),
            }),
            Err(e) if e.is_not_found() => Ok(Stored {
                bytes: None,
                version: Version::Absent,
            }),
            Err(e) => Err(e.into()),
        }
    }

    fn fleet(&self) -> Vec<FleetLedger> {
        Vec::new()
    }

    /// Offline, the fleet is this target alone.
    fn everyone(&self, each: &mut dyn FnMut(FleetLedger)) -> Result<(), BoxError> {
        if let Some(bytes) = self.read()?.bytes {
            each(FleetLedger {
                place: self.place(),
                target: serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v.get("target")?.as_str().map(str::to_string))
                    .unwrap_or_default(),
                bytes: Ok(bytes),
            });
        }
        Ok(())
    }

    fn write(&self, bytes: &[u8], version: &Version) -> Result<Written, BoxError> {
        let now = self.read()?;
        if now.version != *version {
            return Ok(Written::Conflict(match (version, now.version) {
                (Version::Absent, _) => Since::Created,
                (_, Version::Absent) => Since::Deleted,
                _ => Since::Changed,
            }));
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| crate::error::FileError::new("create the directory", dir, e))?;
        }
        crate::fsio::write_atomic_mode(&self.path, bytes, 0o644)?;
        Ok(Written::Written)
    }
}

/// The ledger as an object under `catalogue.s3.ledger_prefix`, written with a conditional
/// PUT, the fleet's ledgers beside it.
#[cfg(feature = "live")]
pub struct BucketLedger {
    pub store: std::rc::Rc<super::s3::S3Store>,
    pub bucket: String,
    pub prefix: String,
    pub key: String,
}

#[cfg(feature = "live")]
impl LedgerStore for BucketLedger {
    fn place(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    /// The prefix is listed (once per run): a ledger whose ETag is the one cached is not
    /// fetched again.
    fn read(&self) -> Result<Stored, BoxError> {
        let listed = self.store.ledgers(&self.prefix)?;
        let found = match listed.get(&self.key) {
            Some(object) => self.store.ledger(&self.key, object, MAX_LEDGER_BYTES)?,
            None => None,
        };
        Ok(match found {
            Some((bytes, etag)) => Stored {
                bytes: Some(bytes),
                version: Version::ETag(etag),
            },
            None => Stored {
                bytes: None,
                version: Version::Absent,
            },
        })
    }

    /// Remembered between full verifications (`catalogue.s3.verify_interval`), which read the
    /// bucket's ledgers whatever the plan.
    fn remembered(&self) -> Option<Stored> {
        let (bytes, etag) = self.store.remembered_ledger(&self.key)?;
        Some(Stored {
            bytes: Some(bytes),
            version: Version::ETag(etag),
        })
    }

    fn remembers(&self) -> bool {
        self.store.remembers_ledger(&self.key)
    }

    fn fleet(&self) -> Vec<FleetLedger> {
        match self.store.ledgers(&self.prefix) {
            Ok(listed) => self.read_listed(&listed, false),
            Err(e) => {
                log::warn!(
                    "cannot list the fleet's LUN ledgers: {}",
                    crate::error::chain(&e)
                );
                Vec::new()
            }
        }
    }

    fn everyone(&self, each: &mut dyn FnMut(FleetLedger)) -> Result<(), BoxError> {
        let listed = self.store.ledgers(&self.prefix)?;
        for (target, key) in self.ledger_keys(&listed, true) {
            each(FleetLedger {
                place: format!("s3://{}/{key}", self.bucket),
                bytes: match self.store.ledger_once(key, MAX_LEDGER_BYTES) {
                    Ok(Some(bytes)) => Ok(bytes),
                    Ok(None) => Err("it is gone".into()),
                    Err(e) => Err(e),
                },
                target,
            });
        }
        Ok(())
    }

    fn versioning(&self) -> Option<&'static str> {
        match self.store.versioning() {
            Ok(status) => status,
            Err(e) => {
                log::debug!(
                    "cannot ask whether bucket {} keeps versions: {}",
                    self.bucket,
                    crate::error::chain(&*e)
                );
                None
            }
        }
    }

    fn write(&self, bytes: &[u8], version: &Version) -> Result<Written, BoxError> {
        self.store
            .put_if(&self.key, bytes, version, MAX_LEDGER_BYTES)
    }
}

#[cfg(feature = "live")]
impl BucketLedger {
    /// The ledgers listed under the prefix (at its own level), by target; this target's
    /// too when `own`.
    fn ledger_keys<'a>(
        &self,
        listed: &'a BTreeMap<String, crate::snapshot::ObjectInfo>,
        own: bool,
    ) -> Vec<(String, &'a String)> {
        listed
            .keys()
            .filter(|key| own || **key != self.key)
            .filter_map(|key| {
                let target = key.strip_prefix(&self.prefix)?.strip_suffix(".json")?;
                // Only the prefix's own level: a folder below it is not a ledger.
                (!target.contains('/')).then(|| (target.to_string(), key))
            })
            .take(MAX_FLEET_LEDGERS)
            .collect()
    }

    /// The ledgers listed under the prefix (at its own level), this target's when `own`.
    fn read_listed(
        &self,
        listed: &BTreeMap<String, crate::snapshot::ObjectInfo>,
        own: bool,
    ) -> Vec<FleetLedger> {
        self.ledger_keys(listed, own)
            .into_iter()
            .filter_map(|(target, key)| Some((target, key, listed.get(key)?)))
            .map(|(target, key, object)| FleetLedger {
                place: format!("s3://{}/{key}", self.bucket),
                bytes: match self.store.ledger(key, object, MAX_LEDGER_BYTES) {
                    Ok(Some((bytes, _))) => Ok(bytes),
                    Ok(None) => Err("it is gone".into()),
                    Err(e) => Err(e),
                },
                target,
            })
            .collect()
    }
}

/// The ledger a run plans with, and what the fleet knows.
#[derive(Debug, Clone)]
pub struct LedgerRead {
    pub place: String,
    /// Empty when there was none yet.
    pub ledger: Ledger,
    /// Whether there was one.
    pub found: bool,
    pub version: Version,
    /// The index the rest of the fleet gives each identity.
    pub fleet: BTreeMap<String, u32>,
    /// How many other targets' ledgers were read.
    pub fleet_targets: usize,
    /// Read from what this worker remembers, not from the store (no fleet).
    pub remembered: bool,
    /// Whether the bucket keeps versions (see [`LedgerStore::versioning`]): then the
    /// conditional write may not hold. Asked (one request) only before a write and by
    /// `status`; `None` until then.
    pub bucket_versioning: Option<&'static str>,
    /// Why this version must not rewrite the ledger (a newer major version wrote it).
    pub read_only: Option<String>,
}

impl LedgerRead {
    /// What to tell an operator about a versioned bucket.
    pub fn versioning_caveat(&self) -> Option<String> {
        Some(versioning_caveat(&self.place, self.bucket_versioning?))
    }
}

/// What to tell an operator about the ledger at `place` in a bucket whose versioning is
/// `status`.
pub fn versioning_caveat(place: &str, status: &str) -> String {
    format!(
        "the bucket of the LUN ledger {} keeps object versions (versioning {status}): Ceph RGW \
         before 20 checks a conditional write against the wrong version (Ceph tracker 68183), \
         so two runs writing this ledger at once may both succeed and one's numbers be lost; \
         keep the ledgers in a bucket without versioning",
        crate::describe::printable(place)
    )
}

/// Reads the ledger and the fleet's. A ledger that cannot be read or used is an error: a run
/// never numbers without the ledger it should have. Another target's bad ledger only costs
/// its votes.
pub fn read(store: &dyn LedgerStore, policy: &Policy) -> Result<LedgerRead, SourceError> {
    let place = store.place();
    let iqn = &policy.target.iqn;
    let stored = store.read().map_err(|source| SourceError::LedgerRead {
        place: place.clone(),
        source,
    })?;
    let (ledger, found) = match &stored.bytes {
        Some(bytes) => {
            let ledger =
                Ledger::parse(bytes, iqn).map_err(|problem| SourceError::LedgerInvalid {
                    place: place.clone(),
                    problem,
                })?;
            (ledger, true)
        }
        None => (Ledger::empty(iqn), false),
    };
    let mut others = Vec::new();
    for other in store.fleet() {
        match other
            .bytes
            .and_then(|bytes| Ledger::parse(&bytes, &other.target).map_err(BoxError::from))
        {
            Ok(ledger) => {
                if !ledger.foreign.is_empty() {
                    log::info!(
                        "the fleet's LUN ledger {}: {} entries of a kind this version does not \
                         know take no part in numbering",
                        crate::describe::printable(&other.place),
                        ledger.foreign.len()
                    );
                }
                others.push(ledger)
            }
            Err(problem) => log::warn!(
                "the fleet's LUN ledger {} is ignored: {problem}",
                crate::describe::printable(&other.place)
            ),
        }
    }
    log::debug!(
        "LUN ledger {place}: {} ({} other target(s) under the prefix)",
        if found { "read" } else { "none yet" },
        others.len()
    );
    let read_only = ledger.read_only();
    Ok(LedgerRead {
        place,
        ledger,
        found,
        version: stored.version,
        fleet: fleet_numbers(&others),
        fleet_targets: others.len(),
        remembered: false,
        bucket_versioning: None,
        read_only,
    })
}

/// The ledger as this worker remembers it, without the fleet's, when the store keeps one
/// (see [`LedgerStore::remembered`]). One that does not parse is not remembered: [`read`]
/// then says what is wrong with the stored one.
pub fn remembered(store: &dyn LedgerStore, policy: &Policy) -> Option<LedgerRead> {
    let stored = store.remembered()?;
    let ledger = Ledger::parse(stored.bytes.as_deref()?, &policy.target.iqn).ok()?;
    let read_only = ledger.read_only();
    Some(LedgerRead {
        place: store.place(),
        ledger,
        found: true,
        version: stored.version,
        fleet: BTreeMap::new(),
        fleet_targets: 0,
        remembered: true,
        bucket_versioning: None,
        read_only,
    })
}

/// Opens the store the policy names, if any. `s3` is the run's bucket client.
pub fn open(
    policy: &Policy,
    #[cfg(feature = "live")] s3: Option<std::rc::Rc<super::s3::S3Store>>,
) -> Result<Option<Box<dyn LedgerStore>>, SourceError> {
    Ok(match &policy.ledger {
        None => None,
        Some(LedgerPlace::File(path)) => Some(Box::new(FileLedger { path: path.clone() })),
        #[cfg(feature = "live")]
        Some(LedgerPlace::Bucket { prefix, key }) => {
            let Some(store) = s3 else {
                return Err(SourceError::NoLiveSources);
            };
            Some(Box::new(BucketLedger {
                store,
                bucket: policy.catalogue.bucket.clone(),
                prefix: prefix.clone(),
                key: key.clone(),
            }))
        }
        #[cfg(not(feature = "live"))]
        Some(LedgerPlace::Bucket { .. }) => return Err(SourceError::NoLiveSources),
    })
}

//! The policy file as written: serde types that mirror the YAML (unknown keys refused), and
//! every default in one place. Nothing here is checked beyond its type; see `check`.

use crate::image::Untagged;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `credentials_file: none`: anonymous S3 requests.
pub const ANONYMOUS: &str = "none";

/// A map whose keys may appear once: a second `authentication:` under `attributes` is a
/// mistake to report, not a value to take silently.
fn unique_keys<'de, D, V>(deserializer: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Visitor<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<V> {
        type Value = BTreeMap<String, V>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a mapping")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut found = BTreeMap::new();
            while let Some((key, value)) = map.next_entry::<String, V>()? {
                if found.contains_key(&key) {
                    return Err(serde::de::Error::custom(format!("duplicate key `{key}`")));
                }
                found.insert(key, value);
            }
            Ok(found)
        }
    }
    deserializer.deserialize_map(Visitor(std::marker::PhantomData))
}

/// The policy file as written. Every section but `target`, `catalogue` has defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default)]
    pub target: TargetSection,
    #[serde(default)]
    pub lio: LioSection,
    pub catalogue: CatalogueSection,
    #[serde(default)]
    pub safety: SafetySection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub fleet: FleetSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSection {
    /// `fleet` warns about a target whose ledger has not been written for longer than this
    /// (its timer stopped, or the worker is gone): seconds, or a number with a unit. Default:
    /// `catalogue.s3.verify_interval` (the heartbeat) plus three timer periods (9 minutes).
    pub stale_after: Option<DurationText>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Prometheus text file for node_exporter's textfile collector, written after each run
    /// that is not a dry run.
    pub file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TargetSection {
    /// `{hostname}` is replaced by this host's short name.
    pub iqn: String,
    pub enabled: bool,
    pub portals: Vec<String>,
    /// TPG attributes; merged over the CSM defaults.
    #[serde(deserialize_with = "unique_keys")]
    pub attributes: BTreeMap<String, u32>,
    pub max_lun: u32,
}

impl Default for TargetSection {
    fn default() -> Self {
        TargetSection {
            iqn: "iqn.2023-06.csm.iscsi:{hostname}".to_string(),
            enabled: true,
            portals: Vec::new(),
            attributes: BTreeMap::new(),
            max_lun: 255,
        }
    }
}

/// TPG attributes as CSM provisions them: demo mode, no authentication, write-protected.
pub const DEFAULT_TPG_ATTRIBUTES: [(&str, u32); 5] = [
    ("authentication", 0),
    ("generate_node_acls", 1),
    ("cache_dynamic_acls", 1),
    ("demo_mode_write_protect", 1),
    ("prod_mode_write_protect", 1),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LioSection {
    pub saveconfig: PathBuf,
    pub targetctl: PathBuf,
    pub backup_dir: PathBuf,
    /// How many backups to keep (targetcli keeps 10).
    pub backups_kept: usize,
    /// Our own lock: one reconcile at a time.
    pub lock_file: PathBuf,
    /// targetcli's lock, held while an interactive targetcli runs: `targetctl restore` would
    /// wipe its unsaved changes. Empty string to not take it.
    pub targetcli_lock: PathBuf,
    /// How the running target is changed: in place through configfs, or by a whole
    /// `targetctl restore`.
    pub apply: ApplyMode,
    /// LIO's configfs tree (`/sys/kernel/config/target`): read every run, and changed in
    /// place by `apply: configfs`.
    pub configfs: PathBuf,
    /// Seconds one `targetctl` call may take before its process group is killed.
    pub command_timeout: f64,
    /// Where the record of a failing plan is kept (soft state, safe to delete).
    pub state_dir: PathBuf,
    /// Keep the LUN ledger in this local file instead of the bucket (offline catalogues,
    /// workers without S3 write access). Empty: in the bucket, when there is one.
    pub ledger_file: PathBuf,
}

/// How the running target is changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyMode {
    /// Object by object through configfs, as rtslib does underneath: no session drops.
    Configfs,
    /// `targetctl restore`: clears the whole running target and rebuilds it.
    Restore,
}

impl Default for LioSection {
    fn default() -> Self {
        LioSection {
            saveconfig: "/etc/target/saveconfig.json".into(),
            targetctl: "/usr/bin/targetctl".into(),
            backup_dir: "/etc/target/backup".into(),
            backups_kept: 10,
            lock_file: "/run/sbps-reconcile.lock".into(),
            targetcli_lock: "/var/run/targetcli.lock".into(),
            apply: ApplyMode::Configfs,
            configfs: "/sys/kernel/config/target".into(),
            command_timeout: 600.0,
            state_dir: "/var/lib/sbps-reconcile".into(),
            ledger_file: PathBuf::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogueSection {
    #[serde(default = "default_bucket")]
    pub bucket: String,
    /// Live S3; without it, the mount stands in for the bucket (offline).
    pub s3: Option<S3Section>,
    #[serde(default = "default_mount")]
    pub mount: PathBuf,
    /// IMS; without it the catalogue has no rootfs images (a bucket of plain objects, as
    /// OpenCHAMI's image-builder writes, is projected through `prefix_sources`).
    pub ims: Option<ImsSection>,
    #[serde(default)]
    pub pe: PeSection,
    /// Objects projected by key prefix and glob, each source with its identity rule.
    #[serde(default)]
    pub prefix_sources: Vec<PrefixSourceSection>,
    /// Manifests larger than this are skipped as unreadable.
    #[serde(default = "default_manifest_max_bytes")]
    pub manifest_max_bytes: u64,
    /// The mount must be a mount point (s3fs mounted), not a plain directory; false for
    /// tests and offline use.
    #[serde(default = "default_true")]
    pub require_mountpoint: bool,
}

fn default_true() -> bool {
    true
}

fn default_bucket() -> String {
    "boot-images".to_string()
}
fn default_mount() -> PathBuf {
    "/var/lib/cps-local/boot-images".into()
}
fn default_manifest_max_bytes() -> u64 {
    1024 * 1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImsSection {
    /// A saved `GET /v3/images` answer (offline mode).
    pub file: Option<PathBuf>,
    /// The live IMS images endpoint, fetched with exactly `GET <url>`.
    pub url: Option<String>,
    /// Seconds for the whole request.
    #[serde(default = "default_ims_timeout")]
    pub timeout: f64,
    /// Retries of a transient failure (a timeout, a refused connection, HTTP 5xx or 429).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// PEM file of the CAs to trust (instead of the system's).
    pub ca_bundle: Option<PathBuf>,
    /// Skip TLS verification (logged as a warning on every run).
    #[serde(default)]
    pub insecure: bool,
    pub auth: Option<AuthSection>,
    #[serde(default)]
    pub select: SelectSection,
}

fn default_ims_timeout() -> f64 {
    10.0
}

fn default_retries() -> u32 {
    2
}

/// How the tool authenticates to IMS: `none`, `{token_file: PATH}` or `{spire: {..}}`.
#[derive(Debug)]
pub enum AuthSection {
    /// No `Authorization` header.
    None,
    /// A file holding a bearer token, re-read every run.
    TokenFile(PathBuf),
    /// A JWT-SVID from the SPIRE agent (how the old agent authenticates).
    Spire(SpireSection),
}

/// The map form of `auth`; exactly one key is set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthMethod {
    token_file: Option<PathBuf>,
    spire: Option<SpireSection>,
}

impl<'de> Deserialize<'de> for AuthSection {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{self, Error as _};
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = AuthSection;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`none`, `{token_file: PATH}` or `{spire: {..}}`")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<AuthSection, E> {
                match value {
                    "none" => Ok(AuthSection::None),
                    other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
                }
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<AuthSection, A::Error> {
                let method = AuthMethod::deserialize(de::value::MapAccessDeserializer::new(map))?;
                match (method.token_file, method.spire) {
                    (Some(path), None) => Ok(AuthSection::TokenFile(path)),
                    (None, Some(spire)) => Ok(AuthSection::Spire(spire)),
                    _ => Err(A::Error::custom(
                        "set exactly one of `token_file` or `spire`",
                    )),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpireSection {
    pub agent: PathBuf,
    pub socket: PathBuf,
    pub audience: String,
    /// Accepted SPIFFE IDs, in order; `{xname}` is this node's xname from /etc/cray/xname.
    pub spiffe_ids: Vec<String>,
    /// Seconds the agent may take.
    pub timeout: f64,
}

impl Default for SpireSection {
    fn default() -> Self {
        SpireSection {
            agent: "/opt/cray/cray-spire/sbps-marshal-spire-agent".into(),
            socket: "/var/lib/spire/agent.sock".into(),
            audience: "system-compute".to_string(),
            spiffe_ids: vec![
                "spiffe://shasta/ncn/workload/sbps-marshal".to_string(),
                "spiffe://shasta/ncn/{xname}/workload/sbps-marshal".to_string(),
            ],
            timeout: 10.0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Section {
    /// e.g. `https://rgw-vip.nmn`; path-style requests.
    pub endpoint: String,
    #[serde(default = "default_region")]
    pub region: String,
    /// One line `ACCESS_KEY_ID:SECRET_KEY` (the s3fs credentials file).
    #[serde(default = "default_credentials_file")]
    pub credentials_file: PathBuf,
    pub ca_bundle: Option<PathBuf>,
    #[serde(default)]
    pub insecure: bool,
    /// Seconds for each request.
    #[serde(default = "default_s3_timeout")]
    pub timeout: f64,
    /// Keys per ListObjectsV2 page (S3's maximum is 1000).
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Manifest GETs in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Retries of a transient failure, per request.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Where parsed manifests are cached by key and ETag, so that a run with nothing new
    /// makes no manifest GET. Safe to delete; "" for no cache.
    #[serde(default = "default_cache_dir")]
    pub cache_dir: PathBuf,
    /// Where the targets' LUN ledgers are kept in the bucket, one object per target IQN.
    /// "" keeps none.
    #[serde(default = "default_ledger_prefix")]
    pub ledger_prefix: String,
    /// How long a verified image (its manifest and rootfs seen with the same ETag) is
    /// trusted before the whole bucket is listed and checked again. 0: every run.
    #[serde(default = "default_verify_interval")]
    pub verify_interval: DurationText,
}

fn default_verify_interval() -> DurationText {
    DurationText::Text("1h".to_string())
}

/// The default home of the LUN ledgers in the bucket.
pub const DEFAULT_LEDGER_PREFIX: &str = "sbps-reconcile/luns/";

fn default_ledger_prefix() -> String {
    DEFAULT_LEDGER_PREFIX.to_string()
}

fn default_cache_dir() -> PathBuf {
    "/var/cache/sbps-reconcile".into()
}

fn default_region() -> String {
    "us-east-1".to_string()
}
fn default_credentials_file() -> PathBuf {
    "/root/.ims.s3fs".into()
}
fn default_s3_timeout() -> f64 {
    30.0
}
fn default_page_size() -> u32 {
    1000
}
fn default_concurrency() -> usize {
    8
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelectSection {
    #[serde(deserialize_with = "unique_keys")]
    pub metadata: BTreeMap<String, String>,
    pub untagged: Untagged,
}

impl Default for SelectSection {
    fn default() -> Self {
        SelectSection {
            metadata: [("sbps-project".to_string(), "true".to_string())].into(),
            untagged: Untagged::Project,
        }
    }
}

/// One entry of `catalogue.prefix_sources`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixSourceSection {
    pub prefix: String,
    /// `key` (the PE contract) or `key+etag` (as a rootfs: new bytes, new identity).
    pub identity: String,
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeSection {
    pub prefixes: Vec<String>,
}

impl Default for PeSection {
    fn default() -> Self {
        PeSection {
            prefixes: vec!["PE/".to_string()],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SafetySection {
    pub max_removals: usize,
    /// A plan that keeps fewer than this fraction of the projections in place is refused.
    pub min_kept_fraction: f64,
    /// Seconds the whole run may take; no request or retry outlives it.
    pub run_deadline: f64,
    /// How long a LUN the catalogue no longer wants stays while its file is still in the
    /// mount: seconds, or a number with a unit (`90s`, `30m`, `12h`, `7d`). 0 is off.
    pub removal_grace: DurationText,
}

/// A duration as a policy writes it: a number of seconds, or a number and a unit.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DurationText {
    Seconds(u64),
    Text(String),
}

impl Default for DurationText {
    fn default() -> Self {
        DurationText::Seconds(0)
    }
}

impl Default for SafetySection {
    fn default() -> Self {
        SafetySection {
            max_removals: 10,
            min_kept_fraction: 0.5,
            run_deadline: 600.0,
            removal_grace: DurationText::default(),
        }
    }
}

impl PolicyFile {
    pub fn resolve_paths(&mut self, base: &Path) {
        let resolve = |path: &mut PathBuf| {
            if !path.as_os_str().is_empty() && path.is_relative() {
                *path = base.join(&*path);
            }
        };
        resolve(&mut self.lio.saveconfig);
        resolve(&mut self.lio.targetctl);
        resolve(&mut self.lio.backup_dir);
        resolve(&mut self.lio.lock_file);
        resolve(&mut self.lio.targetcli_lock);
        resolve(&mut self.lio.configfs);
        resolve(&mut self.lio.state_dir);
        resolve(&mut self.lio.ledger_file);
        resolve(&mut self.catalogue.mount);
        if let Some(ims) = &mut self.catalogue.ims {
            for path in [&mut ims.file, &mut ims.ca_bundle].into_iter().flatten() {
                resolve(path);
            }
            match &mut ims.auth {
                Some(AuthSection::TokenFile(path)) => resolve(path),
                Some(AuthSection::Spire(spire)) => {
                    resolve(&mut spire.agent);
                    resolve(&mut spire.socket);
                }
                Some(AuthSection::None) | None => {}
            }
        }
        if let Some(file) = &mut self.metrics.file {
            resolve(file);
        }
        if let Some(s3) = &mut self.catalogue.s3 {
            if s3.credentials_file != Path::new(ANONYMOUS) {
                resolve(&mut s3.credentials_file);
            }
            resolve(&mut s3.cache_dir);
            if let Some(ca) = &mut s3.ca_bundle {
                resolve(ca);
            }
        }
    }
}

//! The YAML policy: serde types that mirror the file (unknown keys rejected, defaults in one
//! place), checked into a [`Policy`] that the rest of the program uses.

use crate::error::Error;
use crate::image::{Selector, Untagged};
use crate::prefix_source::{check_glob, IdentityRule, PrefixSource};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_POLICY_PATH: &str = "/etc/sbps-reconcile/policy.yaml";
/// A policy is a few kilobytes; anything past this is not one.
pub const MAX_POLICY_BYTES: u64 = 1024 * 1024;

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

/// The line and column of a top-level key an error names: for the document's own keys the
/// YAML parser gives none, or the document's start (errors inside a section carry their
/// section's name and their own place).
fn locate(message: String, text: &str) -> String {
    let top_level = message.starts_with("unknown field") || message.starts_with("duplicate field");
    if !top_level {
        return message;
    }
    let message = match message.split_once(" at line ") {
        Some((what, _)) => what.to_string(),
        None => message,
    };
    let Some(key) = message.split('`').nth(1) else {
        return message;
    };
    let mut hits = text.lines().enumerate().filter(|(_, line)| {
        line.strip_prefix(key)
            .is_some_and(|rest| rest.starts_with(':'))
    });
    let hit = if message.starts_with("duplicate field") {
        hits.nth(1)
    } else {
        hits.next()
    };
    match hit {
        Some((number, _)) => format!("{message} at line {} column 1", number + 1),
        None => message,
    }
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

impl DurationText {
    /// Whole seconds; up to a year.
    fn seconds(&self, name: &str) -> Result<Duration, String> {
        const YEAR: u64 = 366 * 24 * 3600;
        let invalid =
            || format!("{name} must be seconds or a number with a unit (s, m, h, d), like \"12h\"");
        let seconds = match self {
            DurationText::Seconds(seconds) => *seconds,
            DurationText::Text(text) => {
                let text = text.trim();
                let split = text
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(text.len());
                let (number, unit) = text.split_at(split);
                let number: u64 = number.parse().map_err(|_| invalid())?;
                let unit = match unit.trim() {
                    "" | "s" => 1,
                    "m" => 60,
                    "h" => 3600,
                    "d" => 24 * 3600,
                    _ => return Err(invalid()),
                };
                number.checked_mul(unit).ok_or_else(invalid)?
            }
        };
        if seconds > YEAR {
            return Err(format!("{name} is above a year"));
        }
        Ok(Duration::from_secs(seconds))
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
    fn resolve_paths(&mut self, base: &Path) {
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

/// Facts about this host that the policy may refer to.
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// Short host name (up to the first dot).
    pub hostname: String,
}

impl HostFacts {
    /// Reads the host name from the kernel.
    pub fn detect() -> HostFacts {
        let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .unwrap_or_default();
        HostFacts::from_hostname(raw.trim())
    }

    pub fn from_hostname(name: &str) -> HostFacts {
        HostFacts {
            hostname: name.split('.').next().unwrap_or_default().to_string(),
        }
    }
}

/// The checked policy: everything the planner and the edges need, validated.
#[derive(Debug, Clone)]
pub struct Policy {
    pub target: TargetPolicy,
    pub lio: LioSettings,
    pub catalogue: Catalogue,
    pub safety: Safety,
    pub metrics_file: Option<PathBuf>,
    /// Where the target's LUN ledger is kept; `None` for no ledger.
    pub ledger: Option<LedgerPlace>,
    /// How long a target's ledger may go unwritten before `fleet` calls it stale.
    pub fleet_stale_after: Duration,
}

/// Where a target's LUN ledger is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerPlace {
    /// A local file (`lio.ledger_file`).
    File(PathBuf),
    /// An object in the catalogue bucket; the fleet's ledgers share its prefix.
    Bucket { prefix: String, key: String },
}

impl LedgerPlace {
    /// Where it is, for messages: a path or an `s3://` URL.
    pub fn describe(&self, bucket: &str) -> String {
        match self {
            LedgerPlace::File(path) => path.display().to_string(),
            LedgerPlace::Bucket { key, .. } => format!("s3://{bucket}/{key}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TargetPolicy {
    pub iqn: String,
    pub enabled: bool,
    pub portals: Vec<Portal>,
    pub attributes: BTreeMap<String, u32>,
    pub max_lun: u32,
}

/// A network portal: an address and a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Portal {
    pub ip: IpAddr,
    pub port: u16,
}

impl Portal {
    /// The `ip_address` string rtslib expects: IPv6 in brackets.
    pub fn ip_address(&self) -> String {
        match self.ip {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        }
    }

    /// Parses rtslib's `ip_address` form (IPv6 in brackets, or bare).
    pub fn parse_ip_address(text: &str) -> Option<IpAddr> {
        let bare = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text);
        bare.parse().ok()
    }
}

impl std::fmt::Display for Portal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.ip_address(), self.port)
    }
}

#[derive(Debug, Clone)]
pub struct LioSettings {
    pub saveconfig: PathBuf,
    pub targetctl: PathBuf,
    pub backup_dir: PathBuf,
    pub backups_kept: usize,
    pub lock_file: PathBuf,
    pub targetcli_lock: Option<PathBuf>,
    pub apply: ApplyMode,
    pub configfs: PathBuf,
    pub command_timeout: Duration,
    pub state_dir: PathBuf,
    pub ledger_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Catalogue {
    pub bucket: String,
    /// Live S3, or `None` for the offline catalogue (the mount stands in for the bucket).
    pub s3: Option<S3Settings>,
    /// The s3fs mount, without a trailing slash.
    pub mount: PathBuf,
    /// `None`: no IMS, so no rootfs images.
    pub ims: Option<ImsSource>,
    pub select: Selector,
    /// The PE prefixes (identity by key) first, then `prefix_sources`; no two nested.
    pub sources: Vec<PrefixSource>,
    pub manifest_max_bytes: u64,
    pub require_mountpoint: bool,
}

impl Catalogue {
    /// The fileio `dev` for an object key: `<mount>/<key>`.
    pub fn dev_for_key(&self, key: &str) -> String {
        format!("{}/{key}", self.mount.display())
    }

    /// The object key of a `dev` under the mount, if it lies there.
    pub fn key_for_dev<'a>(&self, dev: &'a str) -> Option<&'a str> {
        let mount = self.mount.to_str()?;
        dev.strip_prefix(mount)?
            .strip_prefix('/')
            .filter(|key| !key.is_empty())
    }

    /// The `s3://` URL of an object key.
    pub fn url_for_key(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// The prefix source an object key lies under.
    pub fn source_for_key(&self, key: &str) -> Option<&PrefixSource> {
        self.sources.iter().find(|s| key.starts_with(&s.prefix))
    }

    /// Every prefix source's prefix, for messages.
    pub fn prefixes(&self) -> String {
        let all: Vec<&str> = self.sources.iter().map(|s| s.prefix.as_str()).collect();
        all.join(", ")
    }

    /// `live` when objects come from S3, `offline` when the mount stands in for the bucket.
    pub fn mode(&self) -> &'static str {
        if self.s3.is_some() {
            "live"
        } else {
            "offline"
        }
    }
}

#[derive(Debug, Clone)]
pub enum ImsSource {
    /// A saved IMS answer on disk.
    File(PathBuf),
    /// The live IMS endpoint.
    Http(ImsHttp),
}

#[derive(Debug, Clone)]
pub struct ImsHttp {
    pub url: String,
    pub timeout: Duration,
    pub retries: u32,
    pub tls: TlsSettings,
    pub auth: ImsAuth,
}

/// TLS trust for one endpoint.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// Trust exactly these CAs instead of the system's.
    pub ca_bundle: Option<PathBuf>,
    pub insecure: bool,
}

#[derive(Debug, Clone)]
pub enum ImsAuth {
    None,
    TokenFile(PathBuf),
    Spire(Spire),
}

#[derive(Debug, Clone)]
pub struct Spire {
    pub agent: PathBuf,
    pub socket: PathBuf,
    pub audience: String,
    pub spiffe_ids: Vec<String>,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct S3Settings {
    pub endpoint: String,
    pub region: String,
    pub credentials: S3Credentials,
    pub tls: TlsSettings,
    pub timeout: Duration,
    pub page_size: u32,
    pub concurrency: usize,
    pub retries: u32,
    /// The cache's directory, `None` for no cache.
    pub cache_dir: Option<PathBuf>,
    /// How long verified images are trusted; zero: not at all.
    pub verify_interval: Duration,
}

/// How S3 requests are signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum S3Credentials {
    /// The s3fs credentials file (`ACCESS_KEY_ID:SECRET_KEY`).
    File(PathBuf),
    /// `credentials_file: none`: unsigned requests, for a public bucket.
    Anonymous,
}

/// The `credentials_file` value that asks for unsigned requests.
pub const ANONYMOUS: &str = "none";

#[derive(Debug, Clone)]
pub struct Safety {
    pub max_removals: usize,
    pub min_kept_fraction: f64,
    pub run_deadline: Duration,
    /// Zero when off.
    pub removal_grace: Duration,
}

/// Linux initiators ignore LUN numbers from 512 on by default (`scsi_mod.max_luns`).
pub const LINUX_MAX_LUNS: u32 = 512;
/// The highest LUN index LIO accepts.
pub const LIO_MAX_LUN: u32 = 65535;

impl Policy {
    /// Reads, parses and checks the policy at `path`.
    pub fn load(path: &Path, host: &HostFacts) -> Result<(Policy, Vec<String>), Error> {
        let bytes = crate::fsio::read_regular(path, MAX_POLICY_BYTES).map_err(|source| {
            Error::PolicyRead {
                path: path.to_owned(),
                source,
            }
        })?;
        let text = String::from_utf8(bytes).map_err(|e| Error::PolicyInvalid {
            path: path.to_owned(),
            message: format!("not UTF-8 text: {e}"),
        })?;
        // Relative paths in the policy are relative to the policy file's directory.
        let base = std::path::absolute(path)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        Policy::from_yaml_in(&text, host, base.as_deref()).map_err(|message| Error::PolicyInvalid {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses and checks policy text; returns the policy and warnings worth logging.
    pub fn from_yaml(text: &str, host: &HostFacts) -> Result<(Policy, Vec<String>), String> {
        Policy::from_yaml_in(text, host, None)
    }

    /// As [`Policy::from_yaml`], resolving relative paths against `base` when given.
    pub fn from_yaml_in(
        text: &str,
        host: &HostFacts,
        base: Option<&Path>,
    ) -> Result<(Policy, Vec<String>), String> {
        let mut file: PolicyFile =
            serde_yaml::from_str(text).map_err(|e| locate(e.to_string(), text))?;
        if let Some(base) = base {
            file.resolve_paths(base);
        }
        Policy::check(file, host)
    }

    fn check(file: PolicyFile, host: &HostFacts) -> Result<(Policy, Vec<String>), String> {
        let mut warnings = Vec::new();
        let target =
            check_target(file.target, host, &mut warnings).map_err(|e| format!("target: {e}"))?;
        let lio = check_lio(file.lio).map_err(|e| format!("lio: {e}"))?;
        let ledger_prefix = file
            .catalogue
            .s3
            .as_ref()
            .map(|s3| s3.ledger_prefix.clone());
        let catalogue = check_catalogue(file.catalogue).map_err(|e| format!("catalogue: {e}"))?;
        let ledger = check_ledger(&lio, &catalogue, &target.iqn, ledger_prefix)?;
        let safety = check_safety(file.safety).map_err(|e| format!("safety: {e}"))?;
        let heartbeat = catalogue
            .s3
            .as_ref()
            .map_or(Duration::from_secs(3600), |s3| s3.verify_interval);
        let fleet_stale_after = match &file.fleet.stale_after {
            Some(text) => text
                .seconds("stale_after")
                .map_err(|e| format!("fleet: {e}"))?,
            // The ledger is written at least every verify_interval; the timer fires every 3
            // minutes: three missed runs past the heartbeat.
            None => heartbeat + Duration::from_secs(9 * 60),
        };
        if !safety.removal_grace.is_zero() && ledger.is_none() {
            return Err(
                "safety.removal_grace needs a LUN ledger, to know since when an image \
                 is unwanted: set lio.ledger_file, or keep catalogue.s3.ledger_prefix"
                    .to_string(),
            );
        }
        Ok((
            Policy {
                target,
                lio,
                catalogue,
                safety,
                metrics_file: check_metrics(file.metrics).map_err(|e| format!("metrics: {e}"))?,
                ledger,
                fleet_stale_after,
            },
            warnings,
        ))
    }
}

fn check_safety(section: SafetySection) -> Result<Safety, String> {
    if !(0.0..=1.0).contains(&section.min_kept_fraction) {
        return Err(format!(
            "min_kept_fraction {} is not within 0..=1",
            section.min_kept_fraction
        ));
    }
    Ok(Safety {
        max_removals: section.max_removals,
        min_kept_fraction: section.min_kept_fraction,
        run_deadline: seconds(section.run_deadline, "run_deadline")?,
        removal_grace: section.removal_grace.seconds("removal_grace")?,
    })
}

/// The ledger's place: `lio.ledger_file` when set, else an object under
/// `catalogue.s3.ledger_prefix` named after the target, else none.
fn check_ledger(
    lio: &LioSettings,
    catalogue: &Catalogue,
    iqn: &str,
    prefix: Option<String>,
) -> Result<Option<LedgerPlace>, String> {
    if let Some(path) = &lio.ledger_file {
        return Ok(Some(LedgerPlace::File(path.clone())));
    }
    let Some(prefix) = prefix.filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let problem = |text: String| Err(format!("catalogue: s3: ledger_prefix: {text}"));
    if prefix.starts_with('/') || !prefix.ends_with('/') {
        return problem(format!(
            "{prefix:?} must be a relative key prefix ending in '/', like {DEFAULT_LEDGER_PREFIX:?}"
        ));
    }
    if prefix.starts_with(DELETED_PREFIX) {
        return problem(format!("{prefix:?} lies under {DELETED_PREFIX:?}"));
    }
    // A ledger listed under a prefix source would be projected.
    if let Some(source) = catalogue.sources.iter().find(|source| {
        prefix.starts_with(source.prefix.as_str()) || source.prefix.starts_with(prefix.as_str())
    }) {
        return problem(format!(
            "{prefix:?} overlaps the prefix source {:?}",
            source.prefix
        ));
    }
    let key = format!("{prefix}{iqn}.json");
    crate::s3path::check_key(&key).map_err(|e| format!("catalogue: s3: ledger_prefix: {e}"))?;
    Ok(Some(LedgerPlace::Bucket { prefix, key }))
}

fn check_metrics(section: MetricsSection) -> Result<Option<PathBuf>, String> {
    match section.file {
        Some(path) if !path.is_absolute() => Err(format!("file {path:?} is not an absolute path")),
        other => Ok(other),
    }
}

fn check_target(
    section: TargetSection,
    host: &HostFacts,
    warnings: &mut Vec<String>,
) -> Result<TargetPolicy, String> {
    let iqn = if section.iqn.contains("{hostname}") {
        if host.hostname.is_empty() {
            return Err("iqn uses {hostname} but this host's name is unknown".to_string());
        }
        section.iqn.replace("{hostname}", &host.hostname)
    } else {
        section.iqn
    };
    // iSCSI names are case-insensitive and LIO stores them in lower case.
    let iqn = iqn.to_ascii_lowercase();
    check_iqn(&iqn)?;
    let mut portals = Vec::new();
    for text in &section.portals {
        let portal = parse_portal(text)?;
        if portals.contains(&portal) {
            return Err(format!("portal {text:?} is listed twice"));
        }
        portals.push(portal);
    }
    if portals.is_empty() {
        warnings.push(
            "target.portals is empty: initiators will not be able to reach this target".to_string(),
        );
    }
    let mut attributes: BTreeMap<String, u32> = DEFAULT_TPG_ATTRIBUTES
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    for (key, value) in section.attributes {
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(format!(
                "attribute name {key:?} is not a TPG attribute name"
            ));
        }
        attributes.insert(key, value);
    }
    if section.max_lun > LIO_MAX_LUN {
        return Err(format!(
            "max_lun {} is above LIO's limit of {LIO_MAX_LUN}",
            section.max_lun
        ));
    }
    if section.max_lun >= LINUX_MAX_LUNS {
        warnings.push(format!(
            "target.max_lun {} is at or above {LINUX_MAX_LUNS}: Linux initiators ignore such LUNs \
             unless scsi_mod.max_luns is raised",
            section.max_lun
        ));
    }
    Ok(TargetPolicy {
        iqn,
        enabled: section.enabled,
        portals,
        attributes,
        max_lun: section.max_lun,
    })
}

fn check_iqn(iqn: &str) -> Result<(), String> {
    let valid_chars = iqn
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | ':'));
    if !(iqn.starts_with("iqn.") || iqn.starts_with("eui.") || iqn.starts_with("naa."))
        || !valid_chars
        || iqn.len() > 223
    {
        return Err(format!(
            "iqn {iqn:?} is not an iSCSI name (iqn.YYYY-MM.domain:name, lower case, [a-z0-9.:-])"
        ));
    }
    Ok(())
}

fn parse_portal(text: &str) -> Result<Portal, String> {
    // `fd00::10:3260` reads as the address fd00::10:3260 (port 3260 by default) or as
    // fd00::10 port 3260: never guess.
    if !text.starts_with('[') && text.matches(':').count() > 1 {
        return Err(format!(
            "portal {text:?} is an IPv6 address without brackets: write \"[ADDRESS]:PORT\", \
             like \"[fd00::10]:3260\""
        ));
    }
    let portal = if let Ok(addr) = text.parse::<SocketAddr>() {
        Portal {
            ip: addr.ip(),
            port: addr.port(),
        }
    } else if let Some(ip) = Portal::parse_ip_address(text) {
        Portal { ip, port: 3260 }
    } else {
        return Err(format!(
            "portal {text:?} is not ADDRESS:PORT (IPv6 in brackets: \"[fd00::10]:3260\")"
        ));
    };
    if portal.ip.is_unspecified() {
        return Err(format!(
            "portal {text:?} listens on every address; name the node's NMN/HSN addresses \
             (an all-address portal exposes unauthenticated LUNs outside the system)"
        ));
    }
    if portal.port == 0 {
        return Err(format!("portal {text:?} has port 0"));
    }
    Ok(portal)
}

fn check_lio(section: LioSection) -> Result<LioSettings, String> {
    for (name, path) in [
        ("saveconfig", &section.saveconfig),
        ("targetctl", &section.targetctl),
        ("backup_dir", &section.backup_dir),
        ("lock_file", &section.lock_file),
        ("configfs", &section.configfs),
        ("state_dir", &section.state_dir),
    ] {
        if !path.is_absolute() {
            return Err(format!("{name} {path:?} is not an absolute path"));
        }
    }
    let ledger_file = match section.ledger_file {
        path if path.as_os_str().is_empty() => None,
        path if !path.is_absolute() || path.file_name().is_none() => {
            return Err(format!(
                "ledger_file {path:?} is not an absolute path to a file"
            ))
        }
        path if path == section.saveconfig => {
            return Err(format!(
                "ledger_file is {path:?}, the saveconfig file: keep it apart, where a rebuild \
                 does not lose it"
            ))
        }
        path => Some(path),
    };
    if section.saveconfig.file_name().is_none() {
        return Err(format!("saveconfig {:?} names no file", section.saveconfig));
    }
    if section.backups_kept == 0 {
        return Err("backups_kept must be at least 1".to_string());
    }
    let targetcli_lock = if section.targetcli_lock.as_os_str().is_empty() {
        None
    } else if section.targetcli_lock == section.lock_file {
        return Err(format!(
            "lock_file and targetcli_lock are both {:?}: a run would wait for itself",
            section.lock_file
        ));
    } else if section.targetcli_lock.is_absolute() {
        Some(section.targetcli_lock)
    } else {
        return Err(format!(
            "targetcli_lock {:?} is not an absolute path",
            section.targetcli_lock
        ));
    };
    Ok(LioSettings {
        saveconfig: section.saveconfig,
        targetctl: section.targetctl,
        backup_dir: section.backup_dir,
        backups_kept: section.backups_kept,
        lock_file: section.lock_file,
        targetcli_lock,
        apply: section.apply,
        configfs: section.configfs,
        command_timeout: seconds(section.command_timeout, "command_timeout")?,
        state_dir: section.state_dir,
        ledger_file,
    })
}

/// IMS soft deletes move objects under this prefix; nothing there is ever projected.
pub const DELETED_PREFIX: &str = "deleted/";

fn check_catalogue(section: CatalogueSection) -> Result<Catalogue, String> {
    let select = section
        .ims
        .as_ref()
        .map(|ims| Selector {
            metadata: ims.select.metadata.clone(),
            untagged: ims.select.untagged,
        })
        .unwrap_or_else(|| {
            let default = SelectSection::default();
            Selector {
                metadata: default.metadata,
                untagged: default.untagged,
            }
        });
    let bucket = section.bucket;
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'));
    if !bucket_ok {
        return Err(format!("bucket {bucket:?} is not an S3 bucket name"));
    }
    let mount_text = section
        .mount
        .to_str()
        .ok_or_else(|| format!("mount {:?} is not UTF-8", section.mount))?;
    let trimmed = mount_text.trim_end_matches('/');
    if !section.mount.is_absolute() || trimmed.is_empty() {
        return Err(format!(
            "mount {mount_text:?} must be an absolute path below /"
        ));
    }
    if trimmed.contains([',', '\n', '\0']) {
        return Err(format!(
            "mount {mount_text:?} holds a character a fileio device path cannot carry"
        ));
    }
    let ims = section
        .ims
        .map(check_ims)
        .transpose()
        .map_err(|e| format!("ims: {e}"))?;
    let s3 = section
        .s3
        .map(check_s3)
        .transpose()
        .map_err(|e| format!("s3: {e}"))?;
    let mut sources: Vec<PrefixSource> = Vec::new();
    for prefix in section.pe.prefixes {
        check_prefix(&prefix).map_err(|e| format!("pe.prefixes: {e}"))?;
        sources.push(PrefixSource::pe(prefix));
    }
    for (at, entry) in section.prefix_sources.into_iter().enumerate() {
        let source =
            check_prefix_source(entry).map_err(|e| format!("prefix_sources[{at}]: {e}"))?;
        sources.push(source);
    }
    // An object under two sources would have two identities, and two LUNs.
    for (at, source) in sources.iter().enumerate() {
        if let Some(other) = sources.iter().skip(at + 1).find(|other| {
            other.prefix.starts_with(&source.prefix) || source.prefix.starts_with(&other.prefix)
        }) {
            return Err(format!(
                "the prefixes {:?} and {:?} overlap: an object under both would be projected twice",
                source.prefix, other.prefix
            ));
        }
    }
    if section.manifest_max_bytes == 0 {
        return Err("manifest_max_bytes must be positive".to_string());
    }
    Ok(Catalogue {
        bucket,
        s3,
        mount: PathBuf::from(trimmed),
        ims,
        select,
        sources,
        manifest_max_bytes: section.manifest_max_bytes,
        require_mountpoint: section.require_mountpoint,
    })
}

/// A prefix of PE or of a prefix source: relative, ending in '/', outside `deleted/`.
fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.starts_with(DELETED_PREFIX) {
        return Err(format!(
            "{prefix:?} lies under {DELETED_PREFIX:?}, where IMS moves deleted objects"
        ));
    }
    if prefix.is_empty() || prefix.starts_with('/') || !prefix.ends_with('/') {
        return Err(format!(
            "{prefix:?} must be a relative key prefix ending in '/', like \"PE/\""
        ));
    }
    crate::s3path::check_key(prefix.trim_end_matches('/')).map_err(|e| e.to_string())
}

fn check_prefix_source(section: PrefixSourceSection) -> Result<PrefixSource, String> {
    check_prefix(&section.prefix).map_err(|e| format!("prefix: {e}"))?;
    let identity = IdentityRule::parse(&section.identity).ok_or_else(|| {
        format!(
            "identity: {:?} is neither \"key\" (the PE contract) nor \"key+etag\" (new bytes, new identity)",
            section.identity
        )
    })?;
    for glob in section.include.iter().chain(&section.exclude) {
        check_glob(glob)?;
    }
    Ok(PrefixSource {
        prefix: section.prefix,
        identity,
        include: section.include,
        exclude: section.exclude,
    })
}

fn check_ims(section: ImsSection) -> Result<ImsSource, String> {
    match (section.file, section.url) {
        (Some(_), Some(_)) => Err("set either `file` or `url`, not both".to_string()),
        (None, None) => Err("set `file` (a saved IMS answer) or `url` (live IMS)".to_string()),
        (Some(file), None) => Ok(ImsSource::File(file)),
        (None, Some(url)) => {
            check_url(&url, "url", UrlUse::BearerToken)?;
            let auth = match section.auth {
                None => {
                    return Err(
                        "`auth` is required with `url`: token_file: PATH, spire: {..}, or none"
                            .to_string(),
                    )
                }
                Some(AuthSection::None) => ImsAuth::None,
                Some(AuthSection::TokenFile(path)) => ImsAuth::TokenFile(path),
                Some(AuthSection::Spire(spire)) => {
                    if spire.spiffe_ids.is_empty() {
                        return Err("auth.spire.spiffe_ids must not be empty".to_string());
                    }
                    ImsAuth::Spire(Spire {
                        agent: spire.agent,
                        socket: spire.socket,
                        audience: spire.audience,
                        spiffe_ids: spire.spiffe_ids,
                        timeout: seconds(spire.timeout, "auth.spire.timeout")?,
                    })
                }
            };
            Ok(ImsSource::Http(ImsHttp {
                url,
                timeout: seconds(section.timeout, "timeout")?,
                retries: check_retries(section.retries)?,
                tls: TlsSettings {
                    ca_bundle: section.ca_bundle,
                    insecure: section.insecure,
                },
                auth,
            }))
        }
    }
}

fn check_s3(section: S3Section) -> Result<S3Settings, String> {
    check_url(&section.endpoint, "endpoint", UrlUse::Signed)?;
    if section.region.is_empty() {
        return Err("region must not be empty".to_string());
    }
    if !(1..=1000).contains(&section.page_size) {
        return Err(format!(
            "page_size {} is not within 1..=1000",
            section.page_size
        ));
    }
    if section.concurrency == 0 {
        return Err("concurrency must be at least 1".to_string());
    }
    Ok(S3Settings {
        endpoint: section.endpoint.trim_end_matches('/').to_string(),
        region: section.region,
        credentials: if section.credentials_file == Path::new(ANONYMOUS) {
            S3Credentials::Anonymous
        } else {
            S3Credentials::File(section.credentials_file)
        },
        tls: TlsSettings {
            ca_bundle: section.ca_bundle,
            insecure: section.insecure,
        },
        timeout: seconds(section.timeout, "timeout")?,
        page_size: section.page_size,
        concurrency: section.concurrency,
        retries: check_retries(section.retries)?,
        cache_dir: match section.cache_dir {
            dir if dir.as_os_str().is_empty() => None,
            dir if dir.is_absolute() => Some(dir),
            dir => return Err(format!("cache_dir {dir:?} is not an absolute path")),
        },
        verify_interval: section.verify_interval.seconds("verify_interval")?,
    })
}

fn check_retries(retries: u32) -> Result<u32, String> {
    if retries > 10 {
        return Err(format!("retries {retries} is above 10"));
    }
    Ok(retries)
}

fn seconds(value: f64, name: &str) -> Result<Duration, String> {
    if value.is_finite() && value > 0.0 && value <= 3600.0 {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(format!("{name} must be a number of seconds in (0, 3600]"))
    }
}

enum UrlUse {
    /// Carries a bearer token: plain http only to this host itself.
    BearerToken,
    /// Requests are signed (SigV4), so plain http leaks no secret.
    Signed,
}

/// Checks an http(s) URL with the parser the HTTP client uses (so that the host decided on
/// here is the host the request goes to): a host, no credentials in it, no query or
/// fragment, and plain http only to this machine when a bearer token rides along.
fn check_url(text: &str, name: &str, usage: UrlUse) -> Result<(), String> {
    let url = url::Url::parse(text).map_err(|e| format!("{name} {text:?} is not a URL: {e}"))?;
    let https = match url.scheme() {
        "https" => true,
        "http" => false,
        _ => return Err(format!("{name} {text:?} is not an http(s) URL")),
    };
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{name} {text:?} holds a query or fragment; the request must be exactly GET <url>"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{name} {text:?} holds credentials; use the policy's auth settings"
        ));
    }
    let loopback = match url.host() {
        None => return Err(format!("{name} {text:?} names no host")),
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
    };
    if !https && !loopback && matches!(usage, UrlUse::BearerToken) {
        return Err(format!(
            "{name} {text:?} would send the bearer token unencrypted to {}; use https",
            url.host_str().unwrap_or("?")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostFacts {
        HostFacts::from_hostname("ncn-w001.nmn")
    }

    const MINIMAL: &str = "
target:
  portals: [\"10.252.1.10:3260\", \"[fd00::10]:3260\"]
catalogue:
  ims:
    file: /tmp/images.json
";

    #[test]
    fn minimal_policy_takes_the_csm_defaults() {
        let (policy, warnings) = Policy::from_yaml(MINIMAL, &host()).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(policy.target.iqn, "iqn.2023-06.csm.iscsi:ncn-w001");
        assert!(policy.target.enabled);
        assert_eq!(policy.target.max_lun, 255);
        assert_eq!(policy.target.attributes.len(), 5);
        assert_eq!(policy.target.attributes.get("generate_node_acls"), Some(&1));
        assert_eq!(policy.target.portals[1].ip_address(), "[fd00::10]");
        assert_eq!(policy.catalogue.bucket, "boot-images");
        assert_eq!(
            policy.catalogue.sources,
            vec![PrefixSource::pe("PE/".to_string())]
        );
        assert_eq!(policy.safety.max_removals, 10);
        assert_eq!(
            policy.lio.targetcli_lock.as_deref(),
            Some(Path::new("/var/run/targetcli.lock"))
        );
    }

    #[test]
    fn unknown_keys_name_the_key_line_and_column() {
        let text = "target:\n  portals: []\n  ipn: x\ncatalogue:\n  ims:\n    file: /x\n";
        let err = Policy::from_yaml(text, &host()).unwrap_err();
        assert!(err.contains("ipn"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("column 3"), "{err}");
    }

    #[test]
    fn top_level_keys_and_duplicates_name_their_line() {
        let text = format!("bogus: 1\n{MINIMAL}");
        let err = Policy::from_yaml(&text, &host()).unwrap_err();
        assert!(
            err.contains("`bogus`") && err.ends_with("at line 1 column 1"),
            "{err}"
        );
        let text = format!("{MINIMAL}target:\n  portals: []\n");
        let err = Policy::from_yaml(&text, &host()).unwrap_err();
        assert!(err.contains("duplicate field `target`"), "{err}");
        assert!(err.ends_with("at line 7 column 1"), "{err}");
        for (from, to) in [
            (
                "target:",
                "target:\n  attributes: {authentication: 0, authentication: 1}",
            ),
            (
                "    file:",
                "    select: {metadata: {k: v, k: w}}\n    file:",
            ),
        ] {
            let err = Policy::from_yaml(&MINIMAL.replace(from, to), &host()).unwrap_err();
            assert!(
                err.contains("duplicate key") && err.contains(" at line "),
                "{err}"
            );
        }
    }

    #[test]
    fn wildcard_portals_are_refused() {
        for portal in ["0.0.0.0:3260", "[::]:3260", "0.0.0.0"] {
            let text = MINIMAL.replace("10.252.1.10:3260", portal);
            let err = Policy::from_yaml(&text, &host()).unwrap_err();
            assert!(err.contains("every address"), "{portal}: {err}");
        }
    }

    #[test]
    fn portal_without_port_defaults_to_3260() {
        let text = MINIMAL.replace("10.252.1.10:3260", "10.252.1.10");
        let (policy, _) = Policy::from_yaml(&text, &host()).unwrap();
        assert_eq!(policy.target.portals[0].to_string(), "10.252.1.10:3260");
    }

    #[test]
    fn a_catalogue_without_ims_projects_prefix_sources() {
        let text = "
target:
  portals: [\"10.0.0.1:3260\"]
catalogue:
  pe: {prefixes: []}
  prefix_sources:
    - {prefix: compute/, identity: key+etag, include: [\"*\"], exclude: [\"*.img\"]}
    - {prefix: PE/, identity: key}
  s3: {endpoint: \"http://127.0.0.1:9000\", credentials_file: none}
";
        let (policy, _) = Policy::from_yaml(text, &host()).unwrap();
        let catalogue = &policy.catalogue;
        assert!(catalogue.ims.is_none());
        assert_eq!(catalogue.sources.len(), 2);
        let compute = catalogue.source_for_key("compute/base/rocky9").unwrap();
        assert_eq!(compute.identity, IdentityRule::KeyEtag);
        assert_eq!(compute.exclude, vec!["*.img".to_string()]);
        assert_eq!(
            catalogue.source_for_key("PE/x").map(|s| s.identity),
            Some(IdentityRule::Key)
        );
        assert!(catalogue.source_for_key("efi-images/x").is_none());
        let s3 = catalogue.s3.as_ref().unwrap();
        assert_eq!(s3.credentials, S3Credentials::Anonymous);
    }

    #[test]
    fn bad_values_are_refused_with_their_section() {
        for (from, to, needle) in [
            ("  ims:", "  mount: relative/dir\n  ims:", "mount"),
            (
                "  ims:",
                "  pe: {prefixes: [\"/PE\"]}\n  ims:",
                "pe.prefixes",
            ),
            ("  ims:", "  bucket: Boot_Images!\n  ims:", "bucket"),
            (
                "  ims:",
                "  prefix_sources: [{prefix: compute/, identity: etag}]\n  ims:",
                "prefix_sources[0]: identity",
            ),
            (
                "  ims:",
                "  prefix_sources: [{prefix: compute, identity: key}]\n  ims:",
                "prefix_sources[0]: prefix",
            ),
            (
                "  ims:",
                "  prefix_sources: [{prefix: PE/x/, identity: key+etag}]\n  ims:",
                "overlap",
            ),
            (
                "  ims:",
                "  prefix_sources: [{prefix: a/, identity: key, exclude: [\"\"]}]\n  ims:",
                "empty glob",
            ),
            ("target:", "target:\n  max_lun: 70000", "max_lun"),
            ("target:", "target:\n  iqn: \"not an iqn\"", "iqn"),
        ] {
            let text = MINIMAL.replace(from, to);
            let err = Policy::from_yaml(&text, &host()).unwrap_err();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn ims_auth_forms() {
        let live = |auth: &str| {
            MINIMAL.replace(
                "    file: /tmp/images.json",
                &format!("    url: https://api-gw-service-nmn.local/apis/ims/v3/images\n    auth: {auth}"),
            )
        };
        let auth_of =
            |text: &str| match Policy::from_yaml(text, &host()).map(|(p, _)| p.catalogue.ims) {
                Ok(Some(ImsSource::Http(http))) => Ok(http.auth),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e),
            };
        assert!(matches!(auth_of(&live("none")), Ok(ImsAuth::None)));
        assert!(matches!(
            auth_of(&live("{token_file: /run/t}")),
            Ok(ImsAuth::TokenFile(_))
        ));
        match auth_of(&live("{spire: {audience: x}}")) {
            Ok(ImsAuth::Spire(spire)) => {
                assert_eq!(spire.audience, "x");
                assert_eq!(spire.socket, Path::new("/var/lib/spire/agent.sock"));
                assert_eq!(spire.spiffe_ids.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        let err = auth_of(&live("{spire: {audiance: x}}")).unwrap_err();
        assert!(err.contains("audiance") && err.contains("line"), "{err}");
        assert!(auth_of(&live("{token_file: /a, spire: {}}")).is_err());
        assert!(auth_of(&live("bearer")).is_err());
        let err = auth_of(&MINIMAL.replace(
            "    file: /tmp/images.json",
            "    url: https://ims.local/apis/ims/v3/images",
        ))
        .unwrap_err();
        assert!(err.contains("`auth` is required"), "{err}");
    }

    #[test]
    fn urls_are_judged_by_the_host_the_client_would_reach() {
        let ims = |url: &str| {
            MINIMAL.replace(
                "    file: /tmp/images.json",
                &format!("    url: '{url}'\n    auth: none"),
            )
        };
        for url in [
            "http://localhost/apis/ims/v3/images",
            "http://127.0.0.1:8080/v3/images",
            "http://[::1]/v3/images",
            "https://api-gw-service-nmn.local/apis/ims/v3/images",
        ] {
            assert!(Policy::from_yaml(&ims(url), &host()).is_ok(), "{url}");
        }
        for (url, why) in [
            (
                "http://evil.example\\@localhost/v3/images",
                "unencrypted to evil.example",
            ),
            ("http://evil.example/v3/images", "unencrypted"),
            ("http://user:pw@localhost/v3/images", "credentials"),
            ("https://ims/v3/images?limit=1", "query"),
            ("ftp://ims/v3/images", "not an http(s) URL"),
            ("http://", "not a URL"),
        ] {
            let err = Policy::from_yaml(&ims(url), &host()).unwrap_err();
            assert!(err.contains(why), "{url}: {err}");
        }
    }

    #[test]
    fn an_ipv6_portal_needs_brackets() {
        let text = MINIMAL.replace("\"10.252.1.10:3260\", ", "\"fd00::10:3260\", ");
        let err = Policy::from_yaml(&text, &host()).unwrap_err();
        assert!(err.contains("without brackets"), "{err}");
    }

    #[test]
    fn the_two_locks_must_differ() {
        let text = MINIMAL.replace(
            "catalogue:",
            "lio:\n  lock_file: /run/x.lock\n  targetcli_lock: /run/x.lock\ncatalogue:",
        );
        let err = Policy::from_yaml(&text, &host()).unwrap_err();
        assert!(err.contains("wait for itself"), "{err}");
    }

    #[test]
    fn the_ledger_lives_in_the_bucket_or_a_file_and_the_grace_needs_one() {
        let live = MINIMAL.replace(
            "    file: /tmp/images.json\n",
            "    file: /tmp/images.json\n  s3:\n    endpoint: https://rgw-vip.nmn\n",
        );
        let (policy, _) = Policy::from_yaml(&live, &host()).unwrap();
        assert_eq!(
            policy.ledger,
            Some(LedgerPlace::Bucket {
                prefix: "sbps-reconcile/luns/".into(),
                key: "sbps-reconcile/luns/iqn.2023-06.csm.iscsi:ncn-w001.json".into(),
            })
        );
        assert_eq!(policy.safety.removal_grace, Duration::ZERO);
        let in_file = live.replace(
            "catalogue:",
            "lio:\n  ledger_file: /var/lib/sbps-reconcile/luns.json\ncatalogue:",
        );
        let (policy, _) = Policy::from_yaml(&in_file, &host()).unwrap();
        assert_eq!(
            policy.ledger,
            Some(LedgerPlace::File(
                "/var/lib/sbps-reconcile/luns.json".into()
            ))
        );
        // Offline, without a file: no ledger, and so no grace.
        assert_eq!(Policy::from_yaml(MINIMAL, &host()).unwrap().0.ledger, None);
        let grace = |text: &str, value: &str| {
            Policy::from_yaml(
                &format!("{text}safety:\n  removal_grace: {value}\n"),
                &host(),
            )
            .map(|(p, _)| p.safety.removal_grace.as_secs())
        };
        let err = grace(MINIMAL, "1h").unwrap_err();
        assert!(err.contains("needs a LUN ledger"), "{err}");
        assert_eq!(grace(&live, "90"), Ok(90));
        assert_eq!(grace(&live, "\"90s\""), Ok(90));
        assert_eq!(grace(&live, "30m"), Ok(1800));
        assert_eq!(grace(&live, "12h"), Ok(43200));
        assert_eq!(grace(&live, "7d"), Ok(604800));
        for bad in ["1y", "-1", "h", "1.5h", "400d"] {
            assert!(grace(&live, bad).is_err(), "{bad}");
        }
        for (prefix, says) in [
            ("PE/luns/", "overlaps the prefix source \"PE/\""),
            ("luns", "ending in '/'"),
            ("deleted/luns/", "deleted/"),
        ] {
            let text = live.replace(
                "    endpoint: https://rgw-vip.nmn\n",
                &format!("    endpoint: https://rgw-vip.nmn\n    ledger_prefix: {prefix}\n"),
            );
            let err = Policy::from_yaml(&text, &host()).unwrap_err();
            assert!(err.contains(says), "{prefix}: {err}");
        }
        let off = live.replace(
            "    endpoint: https://rgw-vip.nmn\n",
            "    endpoint: https://rgw-vip.nmn\n    ledger_prefix: \"\"\n",
        );
        assert_eq!(Policy::from_yaml(&off, &host()).unwrap().0.ledger, None);
        let same = in_file.replace(
            "/var/lib/sbps-reconcile/luns.json",
            "/etc/target/saveconfig.json",
        );
        let err = Policy::from_yaml(&same, &host()).unwrap_err();
        assert!(err.contains("keep it apart"), "{err}");
    }

    #[test]
    fn high_max_lun_is_a_warning() {
        let text = MINIMAL.replace("target:", "target:\n  max_lun: 1000");
        let (_, warnings) = Policy::from_yaml(&text, &host()).unwrap();
        assert!(warnings.iter().any(|w| w.contains("scsi_mod.max_luns")));
    }

    #[test]
    fn mount_paths_map_to_keys_and_back() {
        let (policy, _) = Policy::from_yaml(
            &MINIMAL.replace("  ims:", "  mount: /var/lib/m/\n  ims:"),
            &host(),
        )
        .unwrap();
        let c = &policy.catalogue;
        assert_eq!(c.dev_for_key("PE/x"), "/var/lib/m/PE/x");
        assert_eq!(c.key_for_dev("/var/lib/m/PE/x"), Some("PE/x"));
        assert_eq!(c.key_for_dev("/var/lib/mm/PE/x"), None);
        assert_eq!(c.key_for_dev("/var/lib/m/"), None);
    }
}

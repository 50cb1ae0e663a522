//! The checked policy: the types the planner and the edges read, every value validated.

use super::file::ApplyMode;
use crate::image::Selector;
use crate::prefix_source::PrefixSource;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

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

/// IMS soft deletes move objects under this prefix; nothing there is ever projected.
pub const DELETED_PREFIX: &str = "deleted/";

//! The checks that turn the policy file as written into a [`Policy`]: every value in its
//! range, every path absolute, every name well formed. A problem names its key.

use super::checked::*;
use super::file::*;
use super::HostFacts;
use crate::error::PolicyError;
use crate::image::Selector;
use crate::prefix_source::{check_glob, IdentityRule, PrefixSource};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Checks the file as written into a [`Policy`]; returns it with the warnings worth logging.
pub fn check(file: PolicyFile, host: &HostFacts) -> Result<(Policy, Vec<String>), PolicyError> {
    let mut warnings = Vec::new();
    let target = check_target(file.target, host, &mut warnings).map_err(|e| e.within("target"))?;
    let lio = check_lio(file.lio).map_err(|e| e.within("lio"))?;
    let ledger_prefix = file
        .catalogue
        .s3
        .as_ref()
        .map(|s3| s3.ledger_prefix.clone());
    let catalogue = check_catalogue(file.catalogue).map_err(|e| e.within("catalogue"))?;
    let ledger = check_ledger(&lio, &catalogue, &target.iqn, ledger_prefix)?;
    let safety = check_safety(file.safety).map_err(|e| e.within("safety"))?;
    let heartbeat = catalogue
        .s3
        .as_ref()
        .map_or(Duration::from_secs(3600), |s3| s3.verify_interval);
    let fleet_stale_after = match &file.fleet.stale_after {
        Some(text) => duration(text, "stale_after").map_err(|e| e.within("fleet"))?,
        // The ledger is written at least every verify_interval; the timer fires every 3
        // minutes: three missed runs past the heartbeat.
        None => heartbeat + Duration::from_secs(9 * 60),
    };
    if !safety.removal_grace.is_zero() && ledger.is_none() {
        return Err(PolicyError::named(
            "safety.removal_grace",
            "safety.removal_grace needs a LUN ledger, to know since when an image \
             is unwanted: set lio.ledger_file, or keep catalogue.s3.ledger_prefix",
        ));
    }
    Ok((
        Policy {
            target,
            lio,
            catalogue,
            safety,
            metrics_file: check_metrics(file.metrics).map_err(|e| e.within("metrics"))?,
            ledger,
            fleet_stale_after,
        },
        warnings,
    ))
}

fn check_safety(section: SafetySection) -> Result<Safety, PolicyError> {
    if !(0.0..=1.0).contains(&section.min_kept_fraction) {
        return Err(PolicyError::named(
            "min_kept_fraction",
            format!(
                "min_kept_fraction {} is not within 0..=1",
                section.min_kept_fraction
            ),
        ));
    }
    Ok(Safety {
        max_removals: section.max_removals,
        min_kept_fraction: section.min_kept_fraction,
        run_deadline: seconds(section.run_deadline, "run_deadline")?,
        removal_grace: duration(&section.removal_grace, "removal_grace")?,
    })
}

/// The ledger's place: `lio.ledger_file` when set, else an object under
/// `catalogue.s3.ledger_prefix` named after the target, else none.
fn check_ledger(
    lio: &LioSettings,
    catalogue: &Catalogue,
    iqn: &str,
    prefix: Option<String>,
) -> Result<Option<LedgerPlace>, PolicyError> {
    if let Some(path) = &lio.ledger_file {
        return Ok(Some(LedgerPlace::File(path.clone())));
    }
    let Some(prefix) = prefix.filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let problem = |text: String| {
        Err(PolicyError::new(text)
            .within("ledger_prefix")
            .within("s3")
            .within("catalogue"))
    };
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
    if let Err(e) = crate::s3path::check_key(&key) {
        return problem(e.to_string());
    }
    Ok(Some(LedgerPlace::Bucket { prefix, key }))
}

fn check_metrics(section: MetricsSection) -> Result<Option<PathBuf>, PolicyError> {
    match section.file {
        Some(path) if !path.is_absolute() => Err(PolicyError::named(
            "file",
            format!("file {path:?} is not an absolute path"),
        )),
        other => Ok(other),
    }
}

fn check_target(
    section: TargetSection,
    host: &HostFacts,
    warnings: &mut Vec<String>,
) -> Result<TargetPolicy, PolicyError> {
    let iqn = if section.iqn.contains("{hostname}") {
        if host.hostname.is_empty() {
            return Err(PolicyError::named(
                "iqn",
                "iqn uses {hostname} but this host's name is unknown",
            ));
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
            return Err(PolicyError::named(
                "portals",
                format!("portal {text:?} is listed twice"),
            ));
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
            return Err(PolicyError::named(
                "attributes",
                format!("attribute name {key:?} is not a TPG attribute name"),
            ));
        }
        attributes.insert(key, value);
    }
    if section.max_lun > LIO_MAX_LUN {
        return Err(PolicyError::named(
            "max_lun",
            format!(
                "max_lun {} is above LIO's limit of {LIO_MAX_LUN}",
                section.max_lun
            ),
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

fn check_iqn(iqn: &str) -> Result<(), PolicyError> {
    let valid_chars = iqn
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | ':'));
    if !(iqn.starts_with("iqn.") || iqn.starts_with("eui.") || iqn.starts_with("naa."))
        || !valid_chars
        || iqn.len() > 223
    {
        return Err(PolicyError::named(
            "iqn",
            format!(
            "iqn {iqn:?} is not an iSCSI name (iqn.YYYY-MM.domain:name, lower case, [a-z0-9.:-])"
        ),
        ));
    }
    Ok(())
}

fn parse_portal(text: &str) -> Result<Portal, PolicyError> {
    // `fd00::10:3260` reads as the address fd00::10:3260 (port 3260 by default) or as
    // fd00::10 port 3260: never guess.
    if !text.starts_with('[') && text.matches(':').count() > 1 {
        return Err(PolicyError::named(
            "portals",
            format!(
                "portal {text:?} is an IPv6 address without brackets: write \"[ADDRESS]:PORT\", \
             like \"[fd00::10]:3260\""
            ),
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
        return Err(PolicyError::named(
            "portals",
            format!("portal {text:?} is not ADDRESS:PORT (IPv6 in brackets: \"[fd00::10]:3260\")"),
        ));
    };
    if portal.ip.is_unspecified() {
        return Err(PolicyError::named(
            "portals",
            format!(
                "portal {text:?} listens on every address; name the node's NMN/HSN addresses \
             (an all-address portal exposes unauthenticated LUNs outside the system)"
            ),
        ));
    }
    if portal.port == 0 {
        return Err(PolicyError::named(
            "portals",
            format!("portal {text:?} has port 0"),
        ));
    }
    Ok(portal)
}

fn check_lio(section: LioSection) -> Result<LioSettings, PolicyError> {
    for (name, path) in [
        ("saveconfig", &section.saveconfig),
        ("targetctl", &section.targetctl),
        ("backup_dir", &section.backup_dir),
        ("lock_file", &section.lock_file),
        ("configfs", &section.configfs),
        ("state_dir", &section.state_dir),
    ] {
        if !path.is_absolute() {
            return Err(PolicyError::named(
                name,
                format!("{name} {path:?} is not an absolute path"),
            ));
        }
    }
    let ledger_file = match section.ledger_file {
        path if path.as_os_str().is_empty() => None,
        path if !path.is_absolute() || path.file_name().is_none() => {
            return Err(PolicyError::named(
                "ledger_file",
                format!("ledger_file {path:?} is not an absolute path to a file"),
            ))
        }
        path if path == section.saveconfig => {
            return Err(PolicyError::named(
                "ledger_file",
                format!(
                    "ledger_file is {path:?}, the saveconfig file: keep it apart, where a rebuild \
                 does not lose it"
                ),
            ))
        }
        path => Some(path),
    };
    if section.saveconfig.file_name().is_none() {
        return Err(PolicyError::named(
            "saveconfig",
            format!("saveconfig {:?} names no file", section.saveconfig),
        ));
    }
    if section.backups_kept == 0 {
        return Err(PolicyError::named(
            "backups_kept",
            "backups_kept must be at least 1",
        ));
    }
    let targetcli_lock = if section.targetcli_lock.as_os_str().is_empty() {
        None
    } else if section.targetcli_lock == section.lock_file {
        return Err(PolicyError::named(
            "targetcli_lock",
            format!(
                "lock_file and targetcli_lock are both {:?}: a run would wait for itself",
                section.lock_file
            ),
        ));
    } else if section.targetcli_lock.is_absolute() {
        Some(section.targetcli_lock)
    } else {
        return Err(PolicyError::named(
            "targetcli_lock",
            format!(
                "targetcli_lock {:?} is not an absolute path",
                section.targetcli_lock
            ),
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

fn check_catalogue(section: CatalogueSection) -> Result<Catalogue, PolicyError> {
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
        return Err(PolicyError::named(
            "bucket",
            format!("bucket {bucket:?} is not an S3 bucket name"),
        ));
    }
    let mount_text = section.mount.to_str().ok_or_else(|| {
        PolicyError::named("mount", format!("mount {:?} is not UTF-8", section.mount))
    })?;
    let trimmed = mount_text.trim_end_matches('/');
    if !section.mount.is_absolute() || trimmed.is_empty() {
        return Err(PolicyError::named(
            "mount",
            format!("mount {mount_text:?} must be an absolute path below /"),
        ));
    }
    if trimmed.contains([',', '\n', '\0']) {
        return Err(PolicyError::named(
            "mount",
            format!("mount {mount_text:?} holds a character a fileio device path cannot carry"),
        ));
    }
    let ims = section
        .ims
        .map(check_ims)
        .transpose()
        .map_err(|e| e.within("ims"))?;
    let s3 = section
        .s3
        .map(check_s3)
        .transpose()
        .map_err(|e| e.within("s3"))?;
    let mut sources: Vec<PrefixSource> = Vec::new();
    for prefix in section.pe.prefixes {
        check_prefix(&prefix).map_err(|e| e.within("pe.prefixes"))?;
        sources.push(PrefixSource::pe(prefix));
    }
    for (at, entry) in section.prefix_sources.into_iter().enumerate() {
        let source =
            check_prefix_source(entry).map_err(|e| e.within(&format!("prefix_sources[{at}]")))?;
        sources.push(source);
    }
    // An object under two sources would have two identities, and two LUNs.
    for (at, source) in sources.iter().enumerate() {
        if let Some(other) = sources.iter().skip(at + 1).find(|other| {
            other.prefix.starts_with(&source.prefix) || source.prefix.starts_with(&other.prefix)
        }) {
            return Err(PolicyError::named(
                "prefix_sources",
                format!(
                "the prefixes {:?} and {:?} overlap: an object under both would be projected twice",
                source.prefix, other.prefix
            ),
            ));
        }
    }
    if section.manifest_max_bytes == 0 {
        return Err(PolicyError::named(
            "manifest_max_bytes",
            "manifest_max_bytes must be positive",
        ));
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
fn check_prefix(prefix: &str) -> Result<(), PolicyError> {
    if prefix.starts_with(DELETED_PREFIX) {
        return Err(PolicyError::new(format!(
            "{prefix:?} lies under {DELETED_PREFIX:?}, where IMS moves deleted objects"
        )));
    }
    if prefix.is_empty() || prefix.starts_with('/') || !prefix.ends_with('/') {
        return Err(PolicyError::new(format!(
            "{prefix:?} must be a relative key prefix ending in '/', like \"PE/\""
        )));
    }
    crate::s3path::check_key(prefix.trim_end_matches('/'))
        .map_err(|e| PolicyError::new(e.to_string()))
}

fn check_prefix_source(section: PrefixSourceSection) -> Result<PrefixSource, PolicyError> {
    check_prefix(&section.prefix).map_err(|e| e.within("prefix"))?;
    let identity = IdentityRule::parse(&section.identity).ok_or_else(|| {
        PolicyError::new(format!(
            "{:?} is neither \"key\" (the PE contract) nor \"key+etag\" (new bytes, new identity)",
            section.identity
        ))
        .within("identity")
    })?;
    for (key, globs) in [("include", &section.include), ("exclude", &section.exclude)] {
        for glob in globs {
            check_glob(glob).map_err(|e| PolicyError::named(key, e.message))?;
        }
    }
    Ok(PrefixSource {
        prefix: section.prefix,
        identity,
        include: section.include,
        exclude: section.exclude,
    })
}

fn check_ims(section: ImsSection) -> Result<ImsSource, PolicyError> {
    match (section.file, section.url) {
        (Some(_), Some(_)) => Err(PolicyError::new("set either `file` or `url`, not both")),
        (None, None) => Err(PolicyError::new(
            "set `file` (a saved IMS answer) or `url` (live IMS)",
        )),
        (Some(file), None) => Ok(ImsSource::File(file)),
        (None, Some(url)) => {
            check_url(&url, "url", UrlUse::BearerToken)?;
            let auth = match section.auth {
                None => {
                    return Err(PolicyError::new(
                        "`auth` is required with `url`: token_file: PATH, spire: {..}, or none"
                            .to_string(),
                    ))
                }
                Some(AuthSection::None) => ImsAuth::None,
                Some(AuthSection::TokenFile(path)) => ImsAuth::TokenFile(path),
                Some(AuthSection::Spire(spire)) => {
                    if spire.spiffe_ids.is_empty() {
                        return Err(PolicyError::named(
                            "auth.spire.spiffe_ids",
                            "auth.spire.spiffe_ids must not be empty",
                        ));
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

fn check_s3(section: S3Section) -> Result<S3Settings, PolicyError> {
    check_url(&section.endpoint, "endpoint", UrlUse::Signed)?;
    if section.region.is_empty() {
        return Err(PolicyError::named("region", "region must not be empty"));
    }
    if !(1..=1000).contains(&section.page_size) {
        return Err(PolicyError::named(
            "page_size",
            format!("page_size {} is not within 1..=1000", section.page_size),
        ));
    }
    if section.concurrency == 0 {
        return Err(PolicyError::named(
            "concurrency",
            "concurrency must be at least 1",
        ));
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
            dir => {
                return Err(PolicyError::named(
                    "cache_dir",
                    format!("cache_dir {dir:?} is not an absolute path"),
                ))
            }
        },
        verify_interval: duration(&section.verify_interval, "verify_interval")?,
    })
}

fn check_retries(retries: u32) -> Result<u32, PolicyError> {
    if retries > 10 {
        return Err(PolicyError::named(
            "retries",
            format!("retries {retries} is above 10"),
        ));
    }
    Ok(retries)
}

fn seconds(value: f64, name: &str) -> Result<Duration, PolicyError> {
    if value.is_finite() && value > 0.0 && value <= 3600.0 {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(PolicyError::named(
            name,
            format!("{name} must be a number of seconds in (0, 3600]"),
        ))
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
fn check_url(text: &str, name: &str, usage: UrlUse) -> Result<(), PolicyError> {
    let problem = |message: String| PolicyError::named(name, message);
    let url =
        url::Url::parse(text).map_err(|e| problem(format!("{name} {text:?} is not a URL: {e}")))?;
    let https = match url.scheme() {
        "https" => true,
        "http" => false,
        _ => return Err(problem(format!("{name} {text:?} is not an http(s) URL"))),
    };
    if url.query().is_some() || url.fragment().is_some() {
        return Err(problem(format!(
            "{name} {text:?} holds a query or fragment; the request must be exactly GET <url>"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(problem(format!(
            "{name} {text:?} holds credentials; use the policy's auth settings"
        )));
    }
    let loopback = match url.host() {
        None => return Err(problem(format!("{name} {text:?} names no host"))),
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
    };
    if !https && !loopback && matches!(usage, UrlUse::BearerToken) {
        return Err(problem(format!(
            "{name} {text:?} would send the bearer token unencrypted to {}; use https",
            url.host_str().unwrap_or("?")
        )));
    }
    Ok(())
}

/// Whole seconds; up to a year.
fn duration(text: &DurationText, name: &str) -> Result<Duration, PolicyError> {
    const YEAR: u64 = 366 * 24 * 3600;
    let invalid = || {
        PolicyError::named(
            name,
            format!("{name} must be seconds or a number with a unit (s, m, h, d), like \"12h\""),
        )
    };
    let seconds = match text {
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
        return Err(PolicyError::named(name, format!("{name} is above a year")));
    }
    Ok(Duration::from_secs(seconds))
}

//! Prefix sources: objects in the bucket projected without IMS, chosen by key prefix and
//! glob, each with an identity rule. `catalogue.pe.prefixes` are prefix sources with the PE
//! rule (`identity: key`); `catalogue.prefix_sources` adds others, such as the OpenCHAMI
//! image-builder's squashfs objects, which have no manifest and are rebuilt under the same key.

use crate::error::PolicyError;
use crate::identity::Identity;
use crate::snapshot::PeObject;

/// How an object under a prefix source is named (the storage object name and unit serial).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityRule {
    /// `s3://<bucket>/<key>`: the PE contract. The object may change in place and keep its
    /// LUN (PE images are replaced by their publisher, and initiators remount).
    Key,
    /// `s3://<bucket>/<key>|<etag>`, exactly as a rootfs: new bytes are a new identity, so a
    /// LUN never changes meaning under an initiator.
    KeyEtag,
}

impl IdentityRule {
    /// The policy's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityRule::Key => "key",
            IdentityRule::KeyEtag => "key+etag",
        }
    }

    pub fn parse(text: &str) -> Option<IdentityRule> {
        match text {
            "key" => Some(IdentityRule::Key),
            "key+etag" => Some(IdentityRule::KeyEtag),
            _ => None,
        }
    }
}

/// One prefix source, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixSource {
    /// A relative key prefix ending in '/'.
    pub prefix: String,
    pub identity: IdentityRule,
    /// Keys matching none of these are left alone; empty means every key.
    pub include: Vec<String>,
    /// Keys matching any of these are left alone.
    pub exclude: Vec<String>,
}

/// What an object's identity was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectIdentity {
    pub identity: Identity,
    /// The version that went into it: the S3 ETag, or (offline, where there is none)
    /// `size:<bytes>,mtime:<seconds>` from the mount. `None` for the PE rule.
    pub version: Option<String>,
    /// Whether the version is S3's ETag (live) rather than the mount's size and time.
    pub etag_verified: bool,
}

impl PrefixSource {
    /// The PE rule for one of `catalogue.pe.prefixes`.
    pub fn pe(prefix: String) -> PrefixSource {
        PrefixSource {
            prefix,
            identity: IdentityRule::Key,
            include: Vec::new(),
            exclude: Vec::new(),
        }
    }

    /// Whether this source takes the key: under the prefix, matched by an include glob (or
    /// there are none) and by no exclude glob.
    pub fn selects(&self, key: &str) -> bool {
        key.starts_with(&self.prefix)
            && (self.include.is_empty() || self.include.iter().any(|g| glob_matches(g, key)))
            && !self.exclude.iter().any(|g| glob_matches(g, key))
    }

    /// The identity of an object of this source, or `None` when the rule needs a version
    /// the listing did not give (no ETag live, no modification time offline).
    pub fn identity_of(&self, bucket: &str, object: &PeObject) -> Option<ObjectIdentity> {
        match self.identity {
            IdentityRule::Key => Some(ObjectIdentity {
                identity: Identity::pe(bucket, &object.key),
                version: None,
                etag_verified: object.etag.is_some(),
            }),
            IdentityRule::KeyEtag => {
                let (version, etag_verified) = match (&object.etag, object.mtime) {
                    (Some(etag), _) => (etag.clone(), true),
                    (None, Some(mtime)) => (format!("size:{},mtime:{mtime}", object.size), false),
                    (None, None) => return None,
                };
                let path = format!("s3://{bucket}/{}", object.key);
                Some(ObjectIdentity {
                    identity: Identity::rootfs(&path, &version),
                    version: Some(version),
                    etag_verified,
                })
            }
        }
    }
}

/// A glob on a whole key: `*` matches any run of characters, '/' included (so `*.img`
/// matches at any depth), `?` any one character; everything else matches itself.
pub fn glob_matches(glob: &str, key: &str) -> bool {
    let pattern: Vec<char> = glob.chars().collect();
    let text: Vec<char> = key.chars().collect();
    // The classic two-pointer match with one backtrack point: linear in practice, never
    // exponential whatever the glob.
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || Some(&c) == text.get(t) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern
        .get(p..)
        .is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

/// Whether a glob is one the policy accepts: not empty, no character a key cannot hold.
pub fn check_glob(glob: &str) -> Result<(), PolicyError> {
    if glob.is_empty() {
        return Err(PolicyError::new("an empty glob matches no key"));
    }
    if glob.contains(['\n', '\0']) {
        return Err(PolicyError::new(format!(
            "glob {glob:?} holds a character no key holds"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_keys() {
        let cases = [
            ("*", "compute/base/rocky9", true),
            ("*.img", "compute/base/initramfs-5.14.img", true),
            ("*.img", "compute/base/rocky9", false),
            ("*.img", "compute/base/x.img.bak", false),
            ("compute/*/rocky*", "compute/base/rocky9.6-compute", true),
            ("compute/*/rocky*", "compute/rocky9", false),
            ("?ompute/*", "compute/a", true),
            ("compute/base/rocky9", "compute/base/rocky9", true),
            ("compute/base/rocky9", "compute/base/rocky9.6", false),
            ("*vmlinuz*", "efi-images/compute/base/vmlinuz-5.14", true),
            ("a*b*c", "a-b-b-c", true),
            ("a*b*c", "a-c-b", false),
            ("**", "", true),
        ];
        for (glob, key, expected) in cases {
            assert_eq!(glob_matches(glob, key), expected, "{glob:?} on {key:?}");
        }
    }

    #[test]
    fn a_pathological_glob_ends_quickly() {
        // Exponential for a naive backtracking matcher; linear here.
        let key = "a".repeat(10_000);
        let glob = format!("{}b", "*a".repeat(50));
        assert!(!glob_matches(&glob, &key));
    }

    #[test]
    fn include_and_exclude_select_keys_under_the_prefix() {
        let source = PrefixSource {
            prefix: "compute/".to_string(),
            identity: IdentityRule::KeyEtag,
            include: vec!["*".to_string()],
            exclude: vec!["*.img".to_string()],
        };
        assert!(source.selects("compute/base/rocky9.6-compute-base-rocky9"));
        assert!(!source.selects("compute/base/initramfs.img"));
        assert!(!source.selects("efi-images/compute/base/vmlinuz"));
        let only = PrefixSource {
            include: vec!["*/base/*".to_string()],
            exclude: Vec::new(),
            ..source
        };
        assert!(only.selects("compute/base/a"));
        assert!(!only.selects("compute/debug/a"));
    }

    fn object(etag: Option<&str>, mtime: Option<u64>) -> PeObject {
        PeObject {
            key: "compute/base/rocky9".to_string(),
            size: 100,
            etag: etag.map(str::to_owned),
            mtime,
        }
    }

    #[test]
    fn key_and_etag_identity_is_the_rootfs_message() {
        let source = PrefixSource {
            identity: IdentityRule::KeyEtag,
            ..PrefixSource::pe("compute/".to_string())
        };
        let live = source
            .identity_of("boot-images", &object(Some("abc-2"), Some(5)))
            .unwrap();
        assert_eq!(
            live.identity,
            Identity::rootfs("s3://boot-images/compute/base/rocky9", "abc-2")
        );
        assert!(live.etag_verified);
        let rebuilt = source
            .identity_of("boot-images", &object(Some("def-2"), Some(5)))
            .unwrap();
        assert_ne!(live.identity, rebuilt.identity, "new bytes, new identity");
        let offline = source
            .identity_of("boot-images", &object(None, Some(1_700_000_000)))
            .unwrap();
        assert_eq!(
            offline.version.as_deref(),
            Some("size:100,mtime:1700000000")
        );
        assert!(!offline.etag_verified);
        assert_eq!(source.identity_of("boot-images", &object(None, None)), None);
    }

    #[test]
    fn key_identity_is_the_pe_contract() {
        let source = PrefixSource::pe("PE/".to_string());
        let got = source
            .identity_of("boot-images", &object(Some("x"), None))
            .unwrap();
        assert_eq!(
            got.identity,
            Identity::pe("boot-images", "compute/base/rocky9")
        );
        assert_eq!(got.version, None);
    }
}

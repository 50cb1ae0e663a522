//! The policy's unit tests: defaults, checks and the places errors name.

use super::*;
use crate::prefix_source::{IdentityRule, PrefixSource};
use std::time::Duration;

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
    let err = Policy::from_yaml(text, &host()).unwrap_err().to_string();
    assert!(err.contains("ipn"), "{err}");
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("column 3"), "{err}");
}

#[test]
fn top_level_keys_and_duplicates_name_their_line() {
    let text = format!("bogus: 1\n{MINIMAL}");
    let err = Policy::from_yaml(&text, &host()).unwrap_err().to_string();
    assert!(
        err.contains("`bogus`") && err.ends_with("at line 1 column 1"),
        "{err}"
    );
    let text = format!("{MINIMAL}target:\n  portals: []\n");
    let err = Policy::from_yaml(&text, &host()).unwrap_err().to_string();
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
        let err = Policy::from_yaml(&MINIMAL.replace(from, to), &host())
            .unwrap_err()
            .to_string();
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
        let err = Policy::from_yaml(&text, &host()).unwrap_err().to_string();
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
        let err = Policy::from_yaml(&text, &host()).unwrap_err().to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    }
    // A failed check names its key path, and where the key stands.
    let text = MINIMAL.replace("target:", "target:\n  iqn: \"not an iqn\"");
    let err = Policy::from_yaml(&text, &host()).unwrap_err();
    assert_eq!(err.key_path(), "target.iqn");
    assert_eq!((err.line, err.column), (Some(3), Some(3)), "{err}");
    assert!(err.to_string().starts_with("target: iqn "), "{err}");
    let text = MINIMAL.replace(
        "    file: /tmp/images.json",
        "    url: ftp://x/\n    auth: none",
    );
    let err = Policy::from_yaml(&text, &host()).unwrap_err();
    assert_eq!(err.key_path(), "catalogue.ims.url");
    assert_eq!((err.line, err.column), (Some(6), Some(5)), "{err}");
    // A parse error keeps the parser's own dotted path.
    let text = MINIMAL.replace("target:", "target:\n  max_lun: -1");
    let err = Policy::from_yaml(&text, &host()).unwrap_err();
    assert!(
        err.to_string().starts_with("target.max_lun: invalid type"),
        "{err}"
    );
    assert_eq!(err.key_path(), "target.max_lun");
}

#[test]
fn ims_auth_forms() {
    let live = |auth: &str| {
        MINIMAL.replace(
            "    file: /tmp/images.json",
            &format!(
                "    url: https://api-gw-service-nmn.local/apis/ims/v3/images\n    auth: {auth}"
            ),
        )
    };
    let auth_of = |text: &str| match Policy::from_yaml(text, &host()).map(|(p, _)| p.catalogue.ims)
    {
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
    let err = auth_of(&live("{spire: {audiance: x}}"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("audiance") && err.contains("line"), "{err}");
    assert!(auth_of(&live("{token_file: /a, spire: {}}")).is_err());
    assert!(auth_of(&live("bearer")).is_err());
    let err = auth_of(&MINIMAL.replace(
        "    file: /tmp/images.json",
        "    url: https://ims.local/apis/ims/v3/images",
    ))
    .unwrap_err()
    .to_string();
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
        let err = Policy::from_yaml(&ims(url), &host())
            .unwrap_err()
            .to_string();
        assert!(err.contains(why), "{url}: {err}");
    }
}

#[test]
fn an_ipv6_portal_needs_brackets() {
    let text = MINIMAL.replace("\"10.252.1.10:3260\", ", "\"fd00::10:3260\", ");
    let err = Policy::from_yaml(&text, &host()).unwrap_err().to_string();
    assert!(err.contains("without brackets"), "{err}");
}

#[test]
fn the_two_locks_must_differ() {
    let text = MINIMAL.replace(
        "catalogue:",
        "lio:\n  lock_file: /run/x.lock\n  targetcli_lock: /run/x.lock\ncatalogue:",
    );
    let err = Policy::from_yaml(&text, &host()).unwrap_err().to_string();
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
    let err = grace(MINIMAL, "1h").unwrap_err().to_string();
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
        let err = Policy::from_yaml(&text, &host()).unwrap_err().to_string();
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
    let err = Policy::from_yaml(&same, &host()).unwrap_err().to_string();
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

//! The example policies load, and the demo plans as the README's first command shows.

use sbps_reconcile::policy::{HostFacts, ImsAuth, ImsSource, Policy, S3Credentials};
use sbps_reconcile::prefix_source::IdentityRule;
use std::path::Path;

fn load(rel: &str) -> Policy {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    Policy::load(&path, &HostFacts::from_hostname("ncn-w001"))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
        .0
}

#[test]
fn the_live_example_policy_loads() {
    let policy = load("examples/policy.yaml");
    assert_eq!(policy.target.iqn, "iqn.2023-06.csm.iscsi:ncn-w001");
    match &policy.catalogue.ims {
        Some(ImsSource::Http(http)) => assert!(matches!(http.auth, ImsAuth::Spire(_))),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        policy.catalogue.s3.as_ref().unwrap().endpoint,
        "https://rgw-vip.nmn"
    );
}

#[test]
fn the_demo_policy_loads_offline() {
    let policy = load("examples/demo/policy.yaml");
    assert!(matches!(policy.catalogue.ims, Some(ImsSource::File(_))));
    assert!(policy.catalogue.s3.is_none());
}

#[test]
fn the_openchami_example_policy_loads_without_ims() {
    let policy = load("examples/openchami/policy.yaml");
    let catalogue = &policy.catalogue;
    assert!(catalogue.ims.is_none());
    let source = catalogue
        .source_for_key("compute/base/rocky9.6-compute-base-rocky9")
        .unwrap();
    assert_eq!(source.identity, IdentityRule::KeyEtag);
    assert!(source.selects("compute/base/rocky9.6-compute-base-rocky9"));
    assert!(!source.selects("compute/base/initramfs-5.14.0-570.el9.x86_64.img"));
    assert!(catalogue
        .source_for_key("efi-images/compute/base/vmlinuz-5.14.0-570.el9.x86_64")
        .is_none());
    assert_eq!(
        catalogue.s3.as_ref().map(|s3| &s3.credentials),
        Some(&S3Credentials::Anonymous)
    );
    assert!(policy.ledger.is_some(), "numbers survive rebuilds");
}

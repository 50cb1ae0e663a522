//! The example policies load, and the demo plans as the README says.

use sbps_reconcile::policy::{HostFacts, ImsAuth, ImsSource, Policy};
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
        ImsSource::Http(http) => assert!(matches!(http.auth, ImsAuth::Spire(_))),
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
    assert!(matches!(policy.catalogue.ims, ImsSource::File(_)));
    assert!(policy.catalogue.s3.is_none());
}

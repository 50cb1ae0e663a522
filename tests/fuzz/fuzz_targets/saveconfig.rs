//! A saveconfig.json on disk: any bytes are refused or parsed; a parsed one is planned
//! against a small catalogue without a panic, its canonical text parses again, and planning
//! what was planned changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sbps_reconcile::image::{ImageEntry, ImageRecord, Metadata};
use sbps_reconcile::lio::managed::ManagedView;
use sbps_reconcile::lio::SaveConfig;
use sbps_reconcile::manifest::RootfsArtifact;
use sbps_reconcile::policy::{HostFacts, Policy};
use sbps_reconcile::snapshot::{ManifestRead, MountEntry, PeObject, Snapshot};

fn policy() -> Policy {
    let text = "target:\n  iqn: \"iqn.2023-06.csm.iscsi:ncn-w001\"\n  portals: [\"10.0.0.1:3260\"]\n  max_lun: 8\ncatalogue:\n  mount: /mnt/bi\n  ims:\n    file: /x\n";
    Policy::from_yaml(text, &HostFacts::from_hostname("ncn-w001"))
        .expect("fuzz policy")
        .0
}

fn snapshot() -> Snapshot {
    let mut snapshot = Snapshot::default();
    snapshot.images.push(ImageEntry::Valid(ImageRecord {
        id: "a".into(),
        name: "cos-a".into(),
        link_path: Some("s3://boot-images/a/manifest.json".into()),
        metadata: Metadata::Absent,
    }));
    snapshot.manifests.insert(
        "a/manifest.json".into(),
        ManifestRead::Rootfs(RootfsArtifact {
            path: "s3://boot-images/a/rootfs".into(),
            etag: "e".into(),
        }),
    );
    snapshot
        .mount
        .insert("a/rootfs".into(), MountEntry::File { size: 100 });
    snapshot.pe_objects.push(PeObject {
        key: "PE/x".into(),
        size: 10,
        etag: None,
        mtime: None,
    });
    snapshot
        .mount
        .insert("PE/x".into(), MountEntry::File { size: 10 });
    snapshot
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(current) = SaveConfig::parse(bytes) else {
        return;
    };
    let policy = policy();
    let snapshot = snapshot();
    let plan = sbps_reconcile::plan::plan(&policy, &snapshot, &current, &Default::default());
    let _ = ManagedView::of(&current, &policy.catalogue, &policy.target);
    let text = plan.desired.to_canonical();
    let reread = SaveConfig::parse(text.as_bytes()).expect("the canonical text parses");
    let again = sbps_reconcile::plan::plan(&policy, &snapshot, &reread, &Default::default());
    assert!(!again.changed, "planning what was planned changes it");
});

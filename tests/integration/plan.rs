//! Properties of the pure planner, fed with snapshots built in code.

use crate::util::model::*;
use sbps_reconcile::identity::Identity;
use sbps_reconcile::plan::{Action, Kind};
use sbps_reconcile::skip::ReasonCode;
use serde_json::json;

#[test]
fn fresh_host_gets_every_projection_with_the_contract_identity() {
    let mut snap = Snap::new();
    snap.rootfs("id-a", "cos", "etag-a", 100);
    snap.pe("PE/CPE-base.x86_64-24.11.squashfs", 200);
    let plan = plan(&policy(""), &snap.0, &empty());
    assert!(plan.changed);
    assert_eq!(plan.count(Action::Add), 2);
    let pe = plan
        .projections
        .iter()
        .find(|p| p.kind == Kind::Pe)
        .unwrap();
    assert_eq!(pe.name, "de4cc04e7dacfb9");
    assert_eq!(pe.wwn, "de4cc04e7dacfb9ada0a6b4ccdae676");
    assert_eq!(pe.dev, "/mnt/bi/PE/CPE-base.x86_64-24.11.squashfs");
    let rootfs = plan
        .projections
        .iter()
        .find(|p| p.kind == Kind::Rootfs)
        .unwrap();
    let id = Identity::rootfs("s3://boot-images/id-a/rootfs", "etag-a");
    assert_eq!(
        (rootfs.name.as_str(), rootfs.wwn.as_str()),
        (id.name.as_str(), id.wwn.as_str())
    );
    let so = storage_object(&plan.desired, &id.name).unwrap();
    assert_eq!(so["attributes"]["emulate_model_alias"], json!(1));
    assert_eq!(so["write_back"], json!(false));
    assert_eq!(so["size"], json!(100));
    assert_eq!(so["plugin"], json!("fileio"));
    // Every key rtslib accepts for fileio, and no other.
    let mut keys: Vec<&str> = so.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "aio",
            "alua_tpgs",
            "attributes",
            "dev",
            "name",
            "plugin",
            "size",
            "write_back",
            "wwn"
        ]
    );
    let tpg = tpg1(&plan.desired).unwrap();
    assert_eq!(tpg["enable"], json!(true));
    assert_eq!(tpg["attributes"]["generate_node_acls"], json!(1));
    assert_eq!(tpg["attributes"]["demo_mode_write_protect"], json!(1));
    assert_eq!(tpg["portals"][0]["ip_address"], json!("10.252.1.10"));
    assert_eq!(tpg["portals"][1]["ip_address"], json!("[fd00::10]"));
    assert_eq!(luns(&plan.desired).len(), 2);
}

#[test]
fn planning_the_plan_again_changes_nothing() {
    let mut snap = Snap::new();
    snap.rootfs("id-a", "cos", "etag-a", 100);
    snap.rootfs("id-b", "uan", "etag-b", 300);
    snap.pe("PE/x.squashfs", 200);
    let first = plan(&policy(""), &snap.0, &empty());
    let second = plan(&policy(""), &snap.0, &first.desired);
    assert!(!second.changed);
    assert_eq!(second.count(Action::Keep), 3);
    assert_eq!(second.desired, first.desired);
    assert_eq!(second.lun_removals, 0);
}

#[test]
fn kept_luns_keep_their_index_and_new_ones_go_above_every_index_in_use() {
    let mut snap = Snap::new();
    for (id, etag) in [("a", "1"), ("b", "2"), ("c", "3")] {
        snap.rootfs(id, id, etag, 10);
    }
    let first = plan(&policy(""), &snap.0, &empty());
    let before = luns(&first.desired);
    let mut indices: Vec<u32> = before.values().copied().collect();
    indices.sort();
    assert_eq!(indices, [0, 1, 2]);

    // b (at LUN 1) goes away, d arrives: d must not take b's index.
    let mut snap = Snap::new();
    for (id, etag) in [("a", "1"), ("c", "3"), ("d", "4")] {
        snap.rootfs(id, id, etag, 10);
    }
    let second = plan(&policy(""), &snap.0, &first.desired);
    let after = luns(&second.desired);
    let name = |id: &str, etag: &str| {
        Identity::rootfs(&format!("s3://boot-images/{id}/rootfs"), etag).name
    };
    assert_eq!(after.get(&name("a", "1")), before.get(&name("a", "1")));
    assert_eq!(after.get(&name("c", "3")), before.get(&name("c", "3")));
    assert_eq!(after.get(&name("d", "4")), Some(&3));
    assert!(!after.contains_key(&name("b", "2")));
    assert_eq!(second.count(Action::Remove), 1);
    assert_eq!(second.lun_removals, 1);
    let removed = second
        .projections
        .iter()
        .find(|p| p.action == Action::Remove)
        .unwrap();
    assert_eq!(removed.lun, Some(1));
}

#[test]
fn a_new_etag_is_a_new_identity_at_a_fresh_index() {
    let mut snap = Snap::new();
    snap.rootfs("a", "cos", "old", 10);
    snap.rootfs("b", "uan", "b", 10);
    let first = plan(&policy(""), &snap.0, &empty());
    let mut snap = Snap::new();
    snap.rootfs("a", "cos", "new", 12);
    snap.rootfs("b", "uan", "b", 10);
    let second = plan(&policy(""), &snap.0, &first.desired);
    let old = Identity::rootfs("s3://boot-images/a/rootfs", "old").name;
    let new = Identity::rootfs("s3://boot-images/a/rootfs", "new").name;
    let luns = luns(&second.desired);
    assert!(!luns.contains_key(&old));
    assert_eq!(luns.get(&new), Some(&2));
    let actions: Vec<(Action, &str)> = second
        .projections
        .iter()
        .map(|p| (p.action, p.name.as_str()))
        .collect();
    assert!(actions.contains(&(Action::Remove, old.as_str())));
    assert!(actions.contains(&(Action::Add, new.as_str())));
    // The removed projection still says which image it served.
    let removed = second
        .projections
        .iter()
        .find(|p| p.action == Action::Remove)
        .unwrap();
    assert_eq!(removed.images[0].id.as_deref(), Some("a"));
}

#[test]
fn allocation_wraps_to_the_lowest_free_index_only_past_max_lun() {
    let current = config_with_pe_luns(&[(2, "PE/a"), (3, "PE/b")]);
    let mut snap = Snap::new();
    snap.pe("PE/a", 10);
    snap.pe("PE/b", 10);
    snap.pe("PE/new-1", 10);
    snap.pe("PE/new-2", 10);
    let plan = plan(&policy("max_lun: 4"), &snap.0, &current);
    let luns = luns(&plan.desired);
    let n1 = Identity::pe("boot-images", "PE/new-1").name;
    let n2 = Identity::pe("boot-images", "PE/new-2").name;
    assert_eq!(
        luns.get(&n1),
        Some(&4),
        "first takes the index above every one in use"
    );
    assert_eq!(
        luns.get(&n2),
        Some(&0),
        "second wraps to the lowest free index"
    );
}

#[test]
fn more_projections_than_indices_is_a_skip_not_a_crash() {
    let mut snap = Snap::new();
    for i in 0..4 {
        snap.pe(&format!("PE/p{i}"), 10);
    }
    let plan = plan(&policy("max_lun: 1"), &snap.0, &empty());
    assert_eq!(plan.count(Action::Add), 2);
    let codes: Vec<ReasonCode> = plan.skipped.iter().map(|s| s.reason.code).collect();
    assert_eq!(codes, [ReasonCode::NoFreeLun, ReasonCode::NoFreeLun]);
}

#[test]
fn two_images_sharing_a_rootfs_are_one_object_and_one_lun() {
    let mut snap = Snap::new();
    snap.rootfs("a", "cos", "e", 10);
    snap.image_sharing_rootfs_of("b", "cos-copy", "a", "e");
    let plan = plan(&policy(""), &snap.0, &empty());
    assert_eq!(plan.projections.len(), 1);
    assert_eq!(plan.projections[0].images.len(), 2);
    assert_eq!(plan.desired.storage_objects().len(), 1);
    assert_eq!(luns(&plan.desired).len(), 1);
}

#[test]
fn the_old_agents_second_lun_for_one_backstore_is_dropped() {
    let mut current = config_with_pe_luns(&[(0, "PE/a"), (5, "PE/a")]);
    let mut snap = Snap::new();
    snap.pe("PE/a", 10);
    assert_eq!(luns_of(&current, "PE/a"), [0, 5]);
    let plan = plan(&policy(""), &snap.0, &current);
    assert_eq!(luns_of(&plan.desired, "PE/a"), [0]);
    assert_eq!(plan.lun_removals, 1);
    assert_eq!(plan.projections[0].action, Action::Update);
    assert!(plan.projections[0]
        .changes
        .iter()
        .any(|c| c.contains("duplicate LUN 5")));
    // And the result is stable.
    current = plan.desired.clone();
    assert!(
        !sbps_reconcile::plan::plan(&policy(""), &snap.0, &current, &Default::default()).changed
    );
}

#[test]
fn what_the_tool_does_not_own_is_carried_over_untouched() {
    let current = parse(json!({
        "fabric_modules": [{"name": "iscsi", "discovery_enable_auth": true}],
        "x-site-note": "hand-made",
        "storage_objects": [
            {"name": "scratch", "plugin": "block", "dev": "/dev/sdz", "wwn": "w", "readonly": false,
             "write_back": false, "attributes": {"block_size": 512}, "exclusive": true},
            {"name": "other", "plugin": "fileio", "dev": "/srv/other.img", "size": 9, "wwn": "o",
             "write_back": true, "aio": false},
            {"name": "gone", "plugin": "fileio", "dev": "/mnt/bi/PE/gone", "size": 9, "wwn": "g",
             "write_back": false, "aio": false}
        ],
        "targets": [
            {"fabric": "iscsi", "wwn": "iqn.2000-01.other:target", "tpgs": [
                {"tag": 1, "enable": true, "luns": [
                    {"index": 0, "storage_object": "/backstores/block/scratch"},
                    {"index": 1, "storage_object": "/backstores/fileio/gone"}], "portals": []}]},
            {"fabric": "loopback", "wwn": "naa.5001405abcdef012", "tpgs": []},
            {"fabric": "iscsi", "wwn": "iqn.2023-06.csm.iscsi:ncn-w001", "x-field": [1], "tpgs": [
                {"tag": 1, "enable": true, "parameters": {"MaxConnections": "1"},
                 "attributes": {"authentication": 0, "generate_node_acls": 1, "cache_dynamic_acls": 1,
                                "demo_mode_write_protect": 1, "prod_mode_write_protect": 1, "login_timeout": 15},
                 "luns": [{"index": 7, "storage_object": "/backstores/fileio/other"},
                          {"index": 8, "storage_object": "/backstores/fileio/gone"}],
                 "portals": [{"ip_address": "10.252.1.10", "port": 3260, "iser": false, "offload": false},
                             {"ip_address": "[fd00::10]", "port": 3260, "iser": false, "offload": false}],
                 "node_acls": [{"node_wwn": "iqn.x:initiator", "mapped_luns": [
                     {"index": 0, "tpg_lun": 8, "write_protect": true},
                     {"index": 1, "tpg_lun": 7, "write_protect": true}]}]},
                {"tag": 2, "enable": false, "luns": [], "portals": []}]}
        ]
    }));
    let plan = plan(&policy(""), &Snap::new().0, &current);
    let desired = current_value(&plan.desired);
    // The foreign objects, the other targets, TPG 2, unknown fields: all as they were.
    let names: Vec<&str> = desired["storage_objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["scratch", "other"]);
    assert_eq!(desired["storage_objects"][1]["write_back"], json!(true));
    assert_eq!(desired["x-site-note"], json!("hand-made"));
    assert_eq!(
        desired["fabric_modules"],
        current_value(&current)["fabric_modules"]
    );
    assert_eq!(desired["targets"][1], current_value(&current)["targets"][1]);
    let ours = &desired["targets"][2];
    assert_eq!(ours["x-field"], json!([1]));
    assert_eq!(ours["tpgs"][0]["parameters"]["MaxConnections"], json!("1"));
    assert_eq!(ours["tpgs"][0]["attributes"]["login_timeout"], json!(15));
    assert_eq!(
        ours["tpgs"][1],
        current_value(&current)["targets"][2]["tpgs"][1]
    );
    // The removed object's LUNs are gone everywhere, and so is the ACL mapping to one.
    assert_eq!(
        ours["tpgs"][0]["luns"],
        json!([{"index": 7, "storage_object": "/backstores/fileio/other"}])
    );
    assert_eq!(
        desired["targets"][0]["tpgs"][0]["luns"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        ours["tpgs"][0]["node_acls"][0]["mapped_luns"],
        json!([{"index": 1, "tpg_lun": 7, "write_protect": true}])
    );
    assert_eq!(plan.lun_removals, 2);
    assert_eq!(plan.count(Action::Remove), 1);
}

#[test]
fn a_foreign_fileio_object_with_our_name_is_a_name_conflict() {
    let name = Identity::pe("boot-images", "PE/x").name;
    let current = parse(json!({"storage_objects": [
        {"name": name, "plugin": "fileio", "dev": "/srv/elsewhere", "size": 1, "wwn": "w"}], "targets": []}));
    let mut snap = Snap::new();
    snap.pe("PE/x", 10);
    let plan = plan(&policy(""), &snap.0, &current);
    assert_eq!(plan.skipped[0].reason.code, ReasonCode::NameConflict);
    assert_eq!(plan.desired.storage_objects().len(), 1);
}

#[test]
fn target_settings_follow_the_policy() {
    let current = parse(
        json!({"targets": [{"fabric": "iscsi", "wwn": "iqn.2023-06.csm.iscsi:ncn-w001", "tpgs": [
        {"tag": 1, "enable": false, "attributes": {"authentication": 1, "generate_node_acls": 1,
            "cache_dynamic_acls": 1, "demo_mode_write_protect": 1, "prod_mode_write_protect": 1},
         "luns": [], "node_acls": [],
         "portals": [{"ip_address": "0.0.0.0", "port": 3260, "iser": false, "offload": false},
                     {"ip_address": "[FD00:0::10]", "port": 3260, "iser": true, "offload": false}]}]}],
        "storage_objects": []}),
    );
    let plan = plan(&policy(""), &Snap::new().0, &current);
    let tpg = tpg1(&plan.desired).unwrap();
    assert_eq!(tpg["enable"], json!(true));
    assert_eq!(tpg["attributes"]["authentication"], json!(0));
    // The wildcard portal goes; the IPv6 one is the same address written differently, kept as is.
    assert_eq!(
        tpg["portals"],
        json!([{"ip_address": "[FD00:0::10]", "port": 3260, "iser": true, "offload": false},
               {"ip_address": "10.252.1.10", "port": 3260, "iser": false, "offload": false}])
    );
    let changes = plan.target_changes.join("\n");
    assert!(changes.contains("portal 0.0.0.0:3260 removed"), "{changes}");
    assert!(changes.contains("TPG 1 enable false -> true"), "{changes}");
    assert!(changes.contains("authentication 1 -> 0"), "{changes}");
}

#[test]
fn a_managed_object_whose_facts_drifted_is_updated_in_place() {
    let mut snap = Snap::new();
    snap.pe("PE/x", 10);
    let first = plan(&policy(""), &snap.0, &empty());
    let mut snap = Snap::new();
    snap.pe("PE/x", 20);
    let second = plan(&policy(""), &snap.0, &first.desired);
    assert_eq!(second.projections[0].action, Action::Update);
    assert_eq!(second.projections[0].changes, ["size 10 -> 20"]);
    assert_eq!(second.projections[0].lun, Some(0));
    assert_eq!(second.lun_removals, 0);
}

/// Every skip of a manifest's image names the key at fault, cut to a readable length: the
/// manifest's for a manifest that cannot be used, the rootfs object's after that.
#[test]
fn every_manifest_skip_names_its_key_cut_to_a_readable_length() {
    use sbps_reconcile::manifest::RootfsArtifact;
    use sbps_reconcile::skip::SkipReason;
    use sbps_reconcile::snapshot::{ManifestRead, MountEntry, ObjectInfo};
    let long = "x".repeat(190);
    // (code, image id, how the snapshot is set up)
    type Setup = fn(&mut Snap, &str, &str);
    let manifest_says = |code: ReasonCode| -> Setup {
        match code {
            ReasonCode::ManifestUnreadable => {
                |s, id, _| skip_manifest(s, id, ReasonCode::ManifestUnreadable)
            }
            ReasonCode::ManifestInvalid => {
                |s, id, _| skip_manifest(s, id, ReasonCode::ManifestInvalid)
            }
            ReasonCode::NoRootfsArtifact => {
                |s, id, _| skip_manifest(s, id, ReasonCode::NoRootfsArtifact)
            }
            _ => |s, id, _| skip_manifest(s, id, ReasonCode::MissingEtag),
        }
    };
    fn skip_manifest(snap: &mut Snap, id: &str, code: ReasonCode) {
        snap.0.manifests.insert(
            format!("{id}/manifest.json"),
            ManifestRead::Skip(SkipReason::new(code, "what the manifest reader said")),
        );
    }
    fn objects(snap: &mut Snap) -> &mut std::collections::BTreeMap<String, ObjectInfo> {
        snap.0.objects.get_or_insert_with(Default::default)
    }
    let cases: Vec<(ReasonCode, Setup)> = vec![
        (
            ReasonCode::ManifestUnreadable,
            manifest_says(ReasonCode::ManifestUnreadable),
        ),
        (
            ReasonCode::ManifestInvalid,
            manifest_says(ReasonCode::ManifestInvalid),
        ),
        (
            ReasonCode::NoRootfsArtifact,
            manifest_says(ReasonCode::NoRootfsArtifact),
        ),
        (
            ReasonCode::MissingEtag,
            manifest_says(ReasonCode::MissingEtag),
        ),
        (ReasonCode::InvalidKey, |s, id, _| {
            s.0.manifests.insert(
                format!("{id}/manifest.json"),
                ManifestRead::Rootfs(RootfsArtifact {
                    path: format!("s3://boot-images/{id}/a,b/rootfs"),
                    etag: "e".into(),
                }),
            );
        }),
        (ReasonCode::S3ObjectMissing, |s, _, _| {
            objects(s);
        }),
        (ReasonCode::EtagMismatch, |s, id, _| {
            objects(s).insert(
                format!("{id}/rootfs"),
                ObjectInfo {
                    size: 10,
                    etag: "other".into(),
                },
            );
        }),
        (ReasonCode::NotInMount, |s, id, _| {
            s.0.mount
                .insert(format!("{id}/rootfs"), MountEntry::Missing);
        }),
        (ReasonCode::SizeMismatch, |s, id, _| {
            objects(s).insert(
                format!("{id}/rootfs"),
                ObjectInfo {
                    size: 10,
                    etag: "e".into(),
                },
            );
            s.0.mount
                .insert(format!("{id}/rootfs"), MountEntry::File { size: 3 });
        }),
        (ReasonCode::OutsideMount, |s, id, _| {
            s.0.mount.insert(
                format!("{id}/rootfs"),
                MountEntry::Outside {
                    target: "/etc/shadow".into(),
                },
            );
        }),
        (ReasonCode::PathTooLong, |s, id, long| {
            let key = format!("{id}/{long}{long}/rootfs");
            s.0.manifests.insert(
                format!("{id}/manifest.json"),
                ManifestRead::Rootfs(RootfsArtifact {
                    path: format!("s3://boot-images/{key}"),
                    etag: "e".into(),
                }),
            );
            s.0.mount.insert(key, MountEntry::File { size: 10 });
        }),
    ];
    for (code, setup) in cases {
        let id = format!("img-{}-{long}", code.as_str());
        let mut snap = Snap::new();
        snap.rootfs(&id, "long", "e", 10);
        setup(&mut snap, &id, &long);
        let plan = plan(&policy(""), &snap.0, &empty());
        let skipped = plan
            .skipped
            .iter()
            .find(|s| s.reason.code == code)
            .unwrap_or_else(|| panic!("{code}: no such skip in {:#?}", plan.skipped));
        let detail = &skipped.reason.detail;
        assert!(
            detail.contains(&format!("img-{}-xxxx", code.as_str())),
            "{code}: the key is not named: {detail}"
        );
        assert!(detail.contains('…'), "{code}: the key is not cut: {detail}");
        assert!(
            detail.chars().count() < 300,
            "{code}: {} characters: {detail}",
            detail.chars().count()
        );
    }
}

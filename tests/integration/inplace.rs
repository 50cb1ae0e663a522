//! The in-place apply (`lio.apply: configfs`): the real binary against the stand-in configfs
//! (`tests/stub/configfs.py`), which refuses what the kernel refuses and logs every change.

use crate::util::sandbox::Sandbox;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs;

const TPG: &str = "iscsi/iqn.2023-06.csm.iscsi:ncn-w001/tpgt_1";

fn catalogue() -> Option<Sandbox> {
    let sandbox = Sandbox::in_place()?;
    sandbox.add_image("img-a", "cos-a", "etag-a", b"rootfs a\n");
    sandbox.add_image("img-b", "cos-b", "etag-b-3", b"rootfs b, a little longer\n");
    sandbox.write("mount/PE/CPE-base.x86_64-24.11.squashfs", "pe image\n");
    Some(sandbox)
}

/// TPG 1's LUNs as the stand-in kernel shows them: index to storage object name.
fn kernel_luns(sandbox: &Sandbox) -> BTreeMap<u32, String> {
    let configfs = sandbox.configfs();
    let mut luns = BTreeMap::new();
    for dir in configfs.list(&format!("{TPG}/lun")) {
        let index: u32 = dir.trim_start_matches("lun_").parse().unwrap();
        for entry in configfs.list(&format!("{TPG}/lun/{dir}")) {
            let path = configfs.root().join(format!("{TPG}/lun/{dir}/{entry}"));
            if let Ok(link) = fs::read_link(&path) {
                let name = link.file_name().unwrap().to_string_lossy().into_owned();
                luns.insert(index, name);
            }
        }
    }
    luns
}

fn lun_of(report: &Value, name: &str) -> Option<u64> {
    report["projections"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == json!(name) && p["action"] != json!("remove"))?["lun"]
        .as_u64()
}

/// Changes that cost initiators their session: disabling the TPG, removing the target or
/// TPG, or clearing the whole configuration.
fn session_breaking(ops: &[String]) -> Vec<&String> {
    ops.iter()
        .filter(|op| {
            op.ends_with("tpgt_1/enable 0")
                || *op == &format!("rmdir {TPG}")
                || op.starts_with("rmdir iscsi/iqn.2023-06.csm.iscsi:ncn-w001")
                    && !op.contains("/lun/")
                    && !op.contains("/np/")
        })
        .collect()
}

#[test]
fn a_fresh_host_is_built_in_place_and_a_second_run_changes_nothing() {
    let Some(sandbox) = catalogue() else { return };
    let report = sandbox.run(&["--output", "json"]).expect(0).json();
    assert_eq!(report["applied"], json!(true), "{report}");
    assert_eq!(report["apply_mode"], json!("configfs"));
    assert!(sandbox.calls().is_empty(), "no targetctl call");
    let configfs = sandbox.configfs();
    // The target as CSM provisions it, enabled last.
    assert_eq!(configfs.read(&format!("{TPG}/enable")), "1\n");
    for (key, value) in [
        ("authentication", "0"),
        ("generate_node_acls", "1"),
        ("cache_dynamic_acls", "1"),
        ("demo_mode_write_protect", "1"),
        ("prod_mode_write_protect", "1"),
    ] {
        assert_eq!(
            configfs.read(&format!("{TPG}/attrib/{key}")).trim(),
            value,
            "{key}"
        );
    }
    assert_eq!(configfs.list(&format!("{TPG}/np")), ["10.252.1.10:3260"]);
    let ops = configfs.ops();
    assert_eq!(
        ops.last().map(String::as_str),
        Some(format!("write {TPG}/enable 1").as_str())
    );
    // Every projection is a LUN with the contract identity, alias set before enable.
    let luns = kernel_luns(&sandbox);
    assert_eq!(luns.len(), 3, "{luns:?}");
    for (index, name) in &luns {
        assert_eq!(lun_of(&report, name), Some(u64::from(*index)));
        let hba = configfs
            .list("core")
            .into_iter()
            .find(|hba| configfs.list(&format!("core/{hba}")).contains(name))
            .unwrap();
        let object = format!("core/{hba}/{name}");
        assert_eq!(
            configfs.read(&format!("{object}/attrib/emulate_model_alias")),
            "1\n"
        );
        assert_eq!(configfs.read(&format!("{object}/enable")), "1\n");
        let serial = configfs.read(&format!("{object}/wwn/vpd_unit_serial"));
        assert!(serial.contains(name.as_str()), "{serial}");
        let alias_at = ops
            .iter()
            .position(|op| op == &format!("write {object}/attrib/emulate_model_alias 1"))
            .unwrap();
        let enable_at = ops
            .iter()
            .position(|op| op == &format!("write {object}/enable 1"))
            .unwrap();
        assert!(alias_at < enable_at, "model alias before enable: {ops:?}");
    }
    // The file is written for the next boot.
    let saved: Value =
        serde_json::from_str(&sandbox.read("etc/target/saveconfig.json").unwrap()).unwrap();
    assert_eq!(saved["storage_objects"].as_array().unwrap().len(), 3);

    configfs.clear_ops();
    let report = sandbox
        .run(&["--output", "json", "--detailed-exitcode"])
        .expect(0)
        .json();
    assert_eq!(report["changed"], json!(false));
    assert_eq!(report["kernel_changes"], json!(0));
    assert_eq!(report["drift"], json!([]));
    assert!(configfs.ops().is_empty(), "{:?}", configfs.ops());
}

#[test]
fn a_catalogue_change_touches_only_what_changes() {
    let Some(sandbox) = catalogue() else { return };
    let first = sandbox.run(&["--output", "json"]).expect(0).json();
    let before = kernel_luns(&sandbox);
    let configfs = sandbox.configfs();
    configfs.clear_ops();
    sandbox.remove_image("img-a");
    sandbox.add_image("img-c", "cos-c", "etag-c", b"rootfs c\n");
    let report = sandbox.run(&["--output", "json"]).expect(0).json();
    assert_eq!(report["summary"]["add"], json!(1));
    assert_eq!(report["summary"]["remove"], json!(1));
    let ops = configfs.ops();
    assert!(session_breaking(&ops).is_empty(), "{ops:?}");
    let after = kernel_luns(&sandbox);
    // Kept LUNs: same index, same object, and not one change to them.
    let removed = first["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["image_id"] == json!("img-a"))
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();
    for (index, name) in &before {
        if *name == removed {
            assert!(!after.contains_key(index), "{after:?}");
            continue;
        }
        assert_eq!(after.get(index), Some(name));
        assert!(
            !ops.iter()
                .any(|op| op.contains(&format!("lun_{index}/"))
                    || op.ends_with(&format!("lun_{index}"))),
            "kept LUN {index} touched: {ops:?}"
        );
    }
    // The new image above every index in use, added before anything was removed.
    let new_name = report["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["action"] == json!("add"))
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(after.get(&3), Some(&new_name));
    let link = ops.iter().position(|op| op.starts_with("symlink")).unwrap();
    let unlink = ops.iter().position(|op| op.starts_with("unlink")).unwrap();
    assert!(link < unlink, "{ops:?}");
}

#[test]
fn target_settings_change_in_place_without_disabling_the_tpg() {
    let Some(sandbox) = catalogue() else { return };
    sandbox.run(&[]).expect(0);
    let configfs = sandbox.configfs();
    configfs.clear_ops();
    sandbox.write_policy(
        "attributes: {demo_mode_discovery: 0}\n  portals: [\"10.252.1.10:3260\", \"[fd00::10]:3260\"]",
        10,
    );
    let report = sandbox.run(&["--output", "json"]).expect(0).json();
    let ops = configfs.ops();
    assert_eq!(
        ops,
        [
            format!("write {TPG}/attrib/demo_mode_discovery 0"),
            format!("mkdir {TPG}/np/[fd00::10]:3260"),
        ],
        "{report}"
    );
    configfs.clear_ops();
    // An attribute the policy no longer names is not the tool's any more: it stays.
    sandbox.write_policy("portals: [\"[fd00::10]:3260\"]", 10);
    sandbox.run(&[]).expect(0);
    assert_eq!(configfs.ops(), [format!("rmdir {TPG}/np/10.252.1.10:3260")]);
}

#[test]
fn a_drifted_object_is_replaced_at_the_same_index() {
    let Some(sandbox) = catalogue() else { return };
    let first = sandbox.run(&["--output", "json"]).expect(0).json();
    let configfs = sandbox.configfs();
    configfs.clear_ops();
    // Same identity, new size (the file finished uploading).
    sandbox.write("mount/img-a/rootfs", "rootfs a, complete now\n");
    let report = sandbox.run(&["--output", "json"]).expect(0).json();
    assert_eq!(report["summary"]["update"], json!(1), "{report}");
    let name = first["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["image_id"] == json!("img-a"))
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(lun_of(&report, &name), lun_of(&first, &name));
    let luns = kernel_luns(&sandbox);
    assert_eq!(
        luns.get(&(lun_of(&first, &name).unwrap() as u32)),
        Some(&name)
    );
    let ops = configfs.ops();
    assert!(session_breaking(&ops).is_empty(), "{ops:?}");
    assert!(
        ops.iter()
            .any(|op| op.contains("control") && op.contains("fd_dev_size=23")),
        "{ops:?}"
    );
}

#[test]
fn drift_in_the_running_target_is_reported_and_repaired() {
    let Some(sandbox) = catalogue() else { return };
    sandbox.run(&[]).expect(0);
    let saved = sandbox.read("etc/target/saveconfig.json").unwrap();
    let luns = kernel_luns(&sandbox);
    let (index, name) = luns.iter().next().map(|(i, n)| (*i, n.clone())).unwrap();
    // Someone removed a LUN with targetcli and did not save.
    let lun = sandbox
        .configfs()
        .root()
        .join(format!("{TPG}/lun/lun_{index}"));
    fs::remove_file(lun.join(&name)).unwrap();
    fs::remove_dir(&lun).unwrap();

    let run = sandbox
        .run(&["--dry-run", "--output", "json", "--detailed-exitcode"])
        .expect(2);
    let report = run.json();
    assert_eq!(report["changed"], json!(true));
    assert_eq!(report["diff"], json!(""), "the file needs no change");
    assert!(
        report["drift"][0].as_str().unwrap().contains("LUNs are"),
        "{report}"
    );
    let text = sandbox.run(&["--dry-run"]).expect(0).stdout;
    assert!(
        text.contains("Running target differs from the plan"),
        "{text}"
    );

    sandbox.run(&[]).expect(0);
    assert_eq!(kernel_luns(&sandbox), luns);
    assert_eq!(sandbox.read("etc/target/saveconfig.json").unwrap(), saved);
    sandbox.run(&["--detailed-exitcode"]).expect(0);
}

#[test]
fn a_refused_step_is_undone_in_reverse_order() {
    let Some(sandbox) = catalogue() else { return };
    sandbox.run(&[]).expect(0);
    let saved = sandbox.read("etc/target/saveconfig.json").unwrap();
    let before = kernel_luns(&sandbox);
    let configfs = sandbox.configfs();
    let objects_before = configfs.list("core");
    sandbox.remove_image("img-b");
    sandbox.add_image("img-c", "cos-c", "etag-c", b"rootfs c\n");
    // The kernel refuses the new LUN's link.
    configfs.fail(&format!("symlink {TPG}/lun/lun_3/* EINVAL\n"));
    configfs.clear_ops();
    let run = sandbox.run(&["--output", "json"]).expect(1);
    let report = run.json();
    assert_eq!(
        report["error"]["kind"],
        json!("rolled_back"),
        "{}",
        run.describe()
    );
    let message = report["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("lun_3") && message.contains("Invalid argument"),
        "{message}"
    );
    // Everything as it was: the file, the LUNs, the objects.
    assert_eq!(sandbox.read("etc/target/saveconfig.json").unwrap(), saved);
    assert_eq!(kernel_luns(&sandbox), before);
    assert_eq!(configfs.list("core"), objects_before);
    let ops = configfs.ops();
    let made = ops
        .iter()
        .position(|op| op.starts_with("mkdir core/fileio_"))
        .unwrap();
    let unmade = ops
        .iter()
        .rposition(|op| op.starts_with("rmdir core/fileio_"))
        .unwrap();
    assert!(made < unmade, "{ops:?}");
    assert!(session_breaking(&ops).is_empty(), "{ops:?}");

    // Healed: the same plan waits out its backoff, unless the operator says now.
    configfs.heal();
    sandbox.run(&[]).expect(1);
    sandbox.run(&["--retry-now"]).expect(0);
    assert_eq!(kernel_luns(&sandbox).len(), 3);
}

/// The kernel opens a fileio file read-write in the caller's context when the object is
/// enabled: on a read-only mount it refuses (EROFS). On a fresh host the whole new target is
/// undone, TPG attributes with it, and the run says it was rolled back, not that the
/// rollback failed.
#[test]
fn a_fresh_target_refused_part_way_is_undone_whole() {
    let Some(sandbox) = catalogue() else { return };
    let configfs = sandbox.configfs();
    configfs.fail("write core/fileio_*/*/enable EROFS\n");
    let run = sandbox.run(&["--output", "json"]).expect(1);
    let report = run.json();
    assert_eq!(
        report["error"]["kind"],
        json!("rolled_back"),
        "{}",
        run.describe()
    );
    let message = report["error"]["message"].as_str().unwrap();
    assert!(message.contains("Read-only file system"), "{message}");
    assert!(!message.contains("cannot be undone"), "{message}");
    let targets: Vec<String> = configfs
        .list("iscsi")
        .into_iter()
        .filter(|name| name.starts_with("iqn."))
        .collect();
    assert!(targets.is_empty(), "{targets:?}");
    assert!(kernel_luns(&sandbox).is_empty());
    assert!(!sandbox.saveconfig().exists(), "nothing saved");
}

#[test]
fn a_permission_error_names_the_path_and_touches_nothing() {
    let Some(sandbox) = catalogue() else { return };
    sandbox.configfs().fail("mkdir core/fileio_* EACCES\n");
    let run = sandbox.run(&["--output", "json"]).expect(1);
    let message = run.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("core/fileio_") && message.contains("Permission denied"),
        "{message}"
    );
    assert!(!sandbox.saveconfig().exists(), "nothing saved");
}

#[test]
fn half_made_objects_left_by_an_interrupted_run_are_cleaned_up() {
    let Some(sandbox) = catalogue() else { return };
    sandbox.run(&[]).expect(0);
    let luns = kernel_luns(&sandbox);
    let root = sandbox.configfs().root().to_owned();
    // What a run killed mid-way leaves: an object never enabled, an empty HBA, a LUN
    // directory without its link.
    fs::create_dir(root.join("core/fileio_40")).unwrap();
    fs::create_dir(root.join("core/fileio_40/0123456789abcde")).unwrap();
    fs::write(
        root.join("core/fileio_40/0123456789abcde/control"),
        "fd_dev_name=/nowhere,fd_dev_size=10",
    )
    .unwrap();
    fs::create_dir(root.join("core/fileio_41")).unwrap();
    fs::create_dir(root.join(format!("{TPG}/lun/lun_9"))).unwrap();

    let report = sandbox
        .run(&["--dry-run", "--output", "json"])
        .expect(0)
        .json();
    let drift: Vec<&str> = report["drift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(drift.len(), 3, "{drift:?}");
    sandbox.run(&[]).expect(0);
    let configfs = sandbox.configfs();
    assert!(!configfs.list("core").contains(&"fileio_40".to_string()));
    assert!(!configfs.list("core").contains(&"fileio_41".to_string()));
    assert_eq!(kernel_luns(&sandbox), luns);
    assert!(!configfs
        .list(&format!("{TPG}/lun"))
        .contains(&"lun_9".to_string()));
    sandbox.run(&["--detailed-exitcode"]).expect(0);
}

#[test]
fn status_shows_the_running_target_and_where_the_file_differs() {
    let Some(sandbox) = catalogue() else { return };
    sandbox.run(&[]).expect(0);
    let status = sandbox
        .run(&["status", "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(status["source"], json!("running"));
    assert_eq!(status["file_differs"], json!([]));
    assert_eq!(status["luns"].as_array().unwrap().len(), 3);
    assert_eq!(status["luns"][0]["next_run"], json!("keep"));
    // Someone removed LUN 0 with targetcli and did not save: the kernel shows 2 LUNs, and
    // the file is flagged.
    let luns = kernel_luns(&sandbox);
    let (index, name) = luns.iter().next().map(|(i, n)| (*i, n.clone())).unwrap();
    let lun = sandbox
        .configfs()
        .root()
        .join(format!("{TPG}/lun/lun_{index}"));
    fs::remove_file(lun.join(&name)).unwrap();
    fs::remove_dir(&lun).unwrap();
    let status = sandbox
        .run(&["status", "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(status["luns"].as_array().unwrap().len(), 2);
    assert_eq!(status["unmapped"], json!([name]));
    assert!(
        status["file_differs"][0]
            .as_str()
            .unwrap()
            .contains("LUNs are"),
        "{status}"
    );
    let text = sandbox.run(&["status"]).expect(0).stdout;
    assert!(text.contains("As the kernel runs it (configfs):"), "{text}");
    assert!(
        text.contains("saveconfig.json differs from the running target"),
        "{text}"
    );
}

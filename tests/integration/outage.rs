//! Sources that look empty are outages, not "every image is gone": each case below must
//! remove no LUN, touch nothing, and say why (the old agent pruned every LUN this way).

use crate::util::sandbox::Sandbox;
use serde_json::{json, Value};
use std::fs;

/// Three rootfs images and two PE images, applied.
fn applied() -> Sandbox {
    let sandbox = Sandbox::new();
    for (id, etag) in [("img-a", "ea"), ("img-b", "eb"), ("img-c", "ec")] {
        sandbox.add_image(
            id,
            &format!("cos-{id}"),
            etag,
            format!("rootfs {id}\n").as_bytes(),
        );
    }
    sandbox.write("mount/PE/one.squashfs", "pe one\n");
    sandbox.write("mount/PE/two.squashfs", "pe two\n");
    sandbox.run(&[]).expect(0);
    sandbox
}

/// The stand-in kernel's LUN count.
fn running_luns(sandbox: &Sandbox) -> usize {
    sandbox.kernel().map_or(0, |kernel| {
        kernel["targets"][0]["tpgs"][0]["luns"]
            .as_array()
            .map_or(0, Vec::len)
    })
}

/// Runs the outage and checks that nothing was touched; returns the report.
fn refused(sandbox: &Sandbox, code: i32, needle: &str) -> Value {
    let before = fs::read(sandbox.saveconfig()).unwrap();
    let calls = sandbox.calls().len();
    let luns = running_luns(sandbox);
    let run = sandbox.run(&["--output", "json"]).expect(code);
    let report = run.json();
    let message = report["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{needle}\n{}", run.describe());
    assert_eq!(fs::read(sandbox.saveconfig()).unwrap(), before);
    assert_eq!(sandbox.calls().len(), calls, "no targetctl call");
    assert_eq!(running_luns(sandbox), luns, "no LUN removed");
    // A dry run says the same.
    sandbox.run(&["--dry-run"]).expect(code);
    report
}

#[test]
fn ims_answering_nothing_is_an_outage() {
    let sandbox = applied();
    sandbox.set_images(&[]);
    let report = refused(&sandbox, 1, "IMS lists 0 image(s), none tagged");
    assert_eq!(report["error"]["kind"], json!("source"));
    // Meant: the operator says so.
    let report = sandbox
        .run(&["--allow-removals", "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(report["summary"]["remove"], json!(3));
}

#[test]
fn ims_answering_only_untagged_records_is_an_outage() {
    let sandbox = applied();
    let records: Vec<Value> = sandbox
        .images()
        .into_iter()
        .map(|mut r| {
            r["metadata"] = json!({});
            r
        })
        .collect();
    sandbox.set_images(&records);
    refused(&sandbox, 1, "IMS lists 3 image(s), none tagged");
}

#[test]
fn an_empty_pe_listing_is_an_outage() {
    let sandbox = applied();
    fs::remove_dir_all(sandbox.path("mount/PE")).unwrap();
    refused(
        &sandbox,
        1,
        "the listing under the prefix source(s) PE/ holds no object",
    );
}

#[test]
fn a_mount_whose_files_are_all_gone_or_empty_is_an_outage() {
    // s3fs not mounted: the directory is there, the files are not (but the PE folder is,
    // as a stale cache might leave it).
    let sandbox = applied();
    for id in ["img-a", "img-b", "img-c"] {
        fs::remove_file(sandbox.path(&format!("mount/{id}/rootfs"))).unwrap();
    }
    for pe in ["one", "two"] {
        fs::write(sandbox.path(&format!("mount/PE/{pe}.squashfs")), "").unwrap();
    }
    refused(&sandbox, 1, "holds none of the");
    // A stale cache: every file there, 0 bytes.
    let sandbox = applied();
    for id in ["img-a", "img-b", "img-c"] {
        fs::write(sandbox.path(&format!("mount/{id}/rootfs")), "").unwrap();
    }
    fs::remove_dir_all(sandbox.path("mount/PE")).unwrap();
    fs::create_dir_all(sandbox.path("mount/PE")).unwrap();
    fs::write(sandbox.path("mount/PE/one.squashfs"), "").unwrap();
    let report = sandbox.run(&["--output", "json"]).expect(1).json();
    assert_eq!(report["error"]["kind"], json!("source"));
}

#[test]
fn a_mount_that_is_not_a_mount_point_is_an_outage() {
    let sandbox = applied();
    let policy = sandbox.read("policy.yaml").unwrap();
    sandbox.write(
        "policy.yaml",
        policy.replace("require_mountpoint: false", "require_mountpoint: true"),
    );
    let report = refused(&sandbox, 1, "is not a mount point (is s3fs mounted?)");
    assert_eq!(report["error"]["kind"], json!("source"));
}

#[test]
fn keeping_too_few_projections_is_refused() {
    let sandbox = applied();
    sandbox.remove_image("img-a");
    sandbox.remove_image("img-b");
    sandbox.remove_image("img-c");
    sandbox.add_image("img-d", "cos-d", "ed", b"rootfs d\n");
    // 3 removals are within max_removals (10), but 2 of 5 kept is below one half.
    let report = refused(&sandbox, 3, "keeps 2 of the 5 projections in place");
    assert_eq!(report["error"]["kind"], json!("safety"));
}

#[test]
fn every_lun_entry_counts_against_the_removal_limit() {
    let sandbox = applied();
    // The file as an odd tool left it: one image's object mapped three times, twice at the
    // same index, once at an index given as a string.
    let mut config: Value =
        serde_json::from_slice(&fs::read(sandbox.saveconfig()).unwrap()).unwrap();
    let luns = config["targets"][0]["tpgs"][0]["luns"]
        .as_array_mut()
        .unwrap();
    let first = luns[0].clone();
    let mut duplicate = first.clone();
    duplicate["index"] = json!(first["index"]);
    let mut odd = first.clone();
    odd["index"] = json!("40");
    luns.push(duplicate);
    luns.push(odd);
    fs::write(
        sandbox.saveconfig(),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    let object = first["storage_object"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let report = sandbox
        .run(&["--dry-run", "--output", "json"])
        .expect(0)
        .json();
    let image = report["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == json!(object))
        .unwrap()["image_id"]
        .as_str()
        .unwrap()
        .to_string();
    sandbox.remove_image(&image);
    sandbox.write_policy("", 2);
    let report = refused(&sandbox, 3, "removes 3 LUNs, above safety.max_removals 2");
    assert_eq!(report["lun_removals"], json!(3));
}

//! The real binary against the stand-in targetctl.

use crate::util::sandbox::{manifest, skip_codes, Sandbox};
use serde_json::{json, Value};
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;

const SAVE_PREFIX: &str = "save ROOT/etc/target/.sbps-reconcile-verify-";

fn two_images() -> Sandbox {
    let sandbox = Sandbox::new();
    sandbox.add_image("img-a", "cos-a", "etag-a", b"rootfs a\n");
    sandbox.add_image("img-b", "cos-b", "etag-b-3", b"rootfs b, a little longer\n");
    sandbox.write("mount/PE/CPE-base.x86_64-24.11.squashfs", "pe image\n");
    sandbox
}

fn restore_calls(sandbox: &Sandbox) -> usize {
    sandbox
        .calls()
        .iter()
        .filter(|c| c.starts_with("restore"))
        .count()
}

#[test]
fn dry_run_prints_the_plan_and_touches_nothing() {
    let sandbox = two_images();
    let run = sandbox.run(&["--dry-run", "--output", "json"]).expect(0);
    let report = run.json();
    assert_eq!(report["dry_run"], json!(true));
    assert_eq!(report["changed"], json!(true));
    assert_eq!(report["applied"], json!(false));
    assert_eq!(report["target"], json!("iqn.2023-06.csm.iscsi:ncn-w001"));
    assert_eq!(
        report["summary"],
        json!({"add": 3, "remove": 0, "keep": 0, "update": 0, "skipped": 0})
    );
    let pe = report["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == json!("pe"))
        .unwrap();
    assert_eq!(pe["name"], json!("de4cc04e7dacfb9"));
    assert_eq!(pe["wwn"], json!("de4cc04e7dacfb9ada0a6b4ccdae676"));
    assert_eq!(
        pe["source"],
        json!("s3://boot-images/PE/CPE-base.x86_64-24.11.squashfs")
    );
    assert_eq!(pe["size"], json!(9));
    assert_eq!(pe["action"], json!("add"));
    let a = report["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["image_id"] == json!("img-a"))
        .unwrap();
    assert_eq!(a["image_name"], json!("cos-a"));
    assert_eq!(a["etag"], json!("etag-a"));
    assert_eq!(a["kind"], json!("rootfs"));
    assert_eq!(
        a["dev"],
        json!(format!("{}/mount/img-a/rootfs", sandbox.root().display()))
    );
    assert!(a["lun"].is_u64());
    let diff = report["diff"].as_str().unwrap();
    assert!(diff.starts_with("--- current\n+++ desired\n"), "{diff}");
    assert!(
        diff.contains("+      \"wwn\": \"de4cc04e7dacfb9ada0a6b4ccdae676\""),
        "{diff}"
    );
    assert_eq!(report["etag_verified"], json!(false));
    assert!(report["notes"][0]
        .as_str()
        .unwrap()
        .contains("ETags were not checked"));
    assert!(sandbox.calls().is_empty());
    assert!(!sandbox.saveconfig().exists());
    assert!(!sandbox.path("etc/target/backup").exists());
}

#[test]
fn text_report_lists_changes_skips_and_the_diff() {
    let sandbox = two_images();
    sandbox.write(
        "mount/img-b/manifest.json",
        manifest("s3://boot-images/img-b/rootfs", None),
    );
    let run = sandbox.run(&["--dry-run"]).expect(0);
    assert!(
        run.stdout
            .contains("+ add     LUN 0    rootfs  \"cos-a\" (id img-a), 9 bytes"),
        "{}",
        run.describe()
    );
    assert!(
        run.stdout
            .contains("! rootfs  \"cos-b\" (id img-b): missing_etag"),
        "{}",
        run.describe()
    );
    assert!(run
        .stdout
        .contains("Summary: 2 to add, 0 to remove, 0 to update, 0 kept, 1 skipped."));
    assert!(run.stdout.contains("--- current\n+++ desired\n"));
    // The skip is on stderr too, as a warning.
    assert!(
        run.stderr
            .contains("warning: skipped rootfs image \"cos-b\" (id img-b): missing_etag"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_long_diff_is_summed_up_unless_asked_for_whole() {
    let sandbox = Sandbox::new();
    let records: Vec<Value> = (0..120)
        .map(|i| {
            let id = format!("img-{i:03}");
            sandbox.write(
                &format!("mount/{id}/manifest.json"),
                manifest(&format!("s3://boot-images/{id}/rootfs"), Some("e")),
            );
            sandbox.write(&format!("mount/{id}/rootfs"), &id);
            json!({"id": id, "name": id, "metadata": {"sbps-project": "true"},
                   "link": {"path": format!("s3://boot-images/{id}/manifest.json")}})
        })
        .collect();
    sandbox.set_images(&records);
    let report = sandbox
        .run(&["--dry-run", "--output", "json"])
        .expect(0)
        .json();
    let lines = report["diff_lines"].as_u64().unwrap();
    assert!(lines > 2000, "{lines}");
    assert_eq!(report["diff_complete"], json!(false));
    let summary = report["diff"].as_str().unwrap();
    assert!(
        summary.starts_with(&format!("The diff of saveconfig.json has {lines} lines (")),
        "{summary}"
    );
    assert!(summary.contains("--diff full prints it"), "{summary}");
    let text = sandbox.run(&["--dry-run"]).expect(0).stdout;
    assert!(text.contains("not shown; --diff full prints it"), "{text}");

    let whole = sandbox
        .run(&["--dry-run", "--diff", "full", "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(whole["diff_complete"], json!(true));
    let diff = whole["diff"].as_str().unwrap();
    assert_eq!(diff.lines().count() as u64, lines);
    assert!(
        diff.starts_with("--- current\n+++ desired\n@@ -1,5 +1,"),
        "{}",
        &diff[..200]
    );
    // Every line of the applied file is in the diff, added.
    sandbox.run(&[]).expect(0);
    let saved = sandbox.read("etc/target/saveconfig.json").unwrap();
    let added: Vec<&str> = diff
        .lines()
        .filter_map(|l| l.strip_prefix('+'))
        .skip(1)
        .collect();
    let kept = saved.lines().filter(|l| !added.contains(l)).count();
    assert!(kept <= 3, "{kept} lines of the file are not in the diff");
    let report = sandbox.run(&["--output", "json"]).expect(0).json();
    assert_eq!(
        (report["diff"].as_str(), report["diff_lines"].as_u64()),
        (Some(""), Some(0))
    );
}

#[test]
fn detailed_exitcode_says_whether_changes_are_pending() {
    let sandbox = two_images();
    sandbox.run(&["--dry-run", "--detailed-exitcode"]).expect(2);
    sandbox.run(&["--detailed-exitcode"]).expect(2);
    sandbox.run(&["--dry-run", "--detailed-exitcode"]).expect(0);
    sandbox.run(&["--detailed-exitcode"]).expect(0);
}

#[test]
fn apply_writes_restores_verifies_and_a_second_run_does_nothing() {
    let sandbox = two_images();
    let report = sandbox.run(&["--output", "json"]).expect(0).json();
    assert_eq!(report["applied"], json!(true));
    assert_eq!(
        report["backup"],
        Value::Null,
        "no previous file, so no backup"
    );
    let calls = sandbox.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0], "restore ROOT/etc/target/saveconfig.json");
    assert!(calls[1].starts_with(SAVE_PREFIX), "{calls:?}");
    let written = fs::read_to_string(sandbox.saveconfig()).unwrap();
    let mode = fs::metadata(sandbox.saveconfig())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // Canonical text: what the stand-in (Python's json.dump sort_keys, indent 2) would write.
    let value: Value = serde_json::from_str(&written).unwrap();
    assert_eq!(
        sandbox.kernel().unwrap()["storage_objects"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(value["storage_objects"].as_array().unwrap().len(), 3);
    assert!(written.ends_with("}\n"));
    // No temp or verify file left behind.
    let left: Vec<String> = fs::read_dir(sandbox.path("etc/target"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["saveconfig.json"]);

    let run = sandbox.run(&["--output", "json"]).expect(0);
    let report = run.json();
    assert_eq!(report["changed"], json!(false));
    assert_eq!(report["applied"], json!(false));
    assert_eq!(report["summary"]["keep"], json!(3));
    assert_eq!(report["diff"], json!(""));
    assert_eq!(
        sandbox.calls().len(),
        2,
        "a no-op run calls targetctl not at all"
    );
}

#[test]
fn a_file_saved_by_targetctl_is_adopted_without_changes() {
    let sandbox = two_images();
    sandbox.run(&[]).expect(0);
    // Replace our file with what `targetctl save` writes (full attribute sets, aliases, ALUA).
    let saved = sandbox.path("saved.json");
    std::process::Command::new(sandbox.path("bin/targetctl"))
        .arg("save")
        .arg(&saved)
        .status()
        .unwrap();
    fs::copy(&saved, sandbox.saveconfig()).unwrap();
    let text = fs::read_to_string(sandbox.saveconfig()).unwrap();
    assert!(text.contains("\"alua_tg_pt_gp_name\"") && text.contains("\"block_size\""));
    let calls_before = sandbox.calls().len();
    let report = sandbox
        .run(&["--output", "json", "--detailed-exitcode"])
        .expect(0)
        .json();
    assert_eq!(report["changed"], json!(false));
    assert_eq!(report["summary"]["keep"], json!(3));
    assert_eq!(sandbox.calls().len(), calls_before);
}

#[test]
fn changes_take_a_backup_and_keep_lun_numbers() {
    let sandbox = two_images();
    let first = sandbox.run(&["--output", "json"]).expect(0).json();
    let lun_of = |report: &Value, id: &str| {
        report["projections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["image_id"] == json!(id) && p["action"] != json!("remove"))
            .map(|p| p["lun"].clone())
    };
    let previous = fs::read(sandbox.saveconfig()).unwrap();
    sandbox.remove_image("img-a");
    sandbox.add_image("img-c", "cos-c", "etag-c", b"rootfs c\n");
    let second = sandbox.run(&["--output", "json"]).expect(0).json();
    assert_eq!(second["summary"]["add"], json!(1));
    assert_eq!(second["summary"]["remove"], json!(1));
    assert_eq!(lun_of(&second, "img-b"), lun_of(&first, "img-b"));
    assert_eq!(
        lun_of(&second, "img-c"),
        Some(json!(3)),
        "a new image goes above every index in use"
    );
    let backup = second["backup"].as_str().expect("a backup path");
    let name = std::path::Path::new(backup)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    assert!(
        name.starts_with("saveconfig-") && name.ends_with("-json.gz"),
        "{name}"
    );
    assert_eq!(name.len(), "saveconfig-YYYYmmdd-HH:MM:SS-json.gz".len());
    assert_eq!(
        fs::metadata(backup).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mut unpacked = Vec::new();
    std::io::Read::read_to_end(&mut flate2_reader(backup), &mut unpacked).unwrap();
    assert_eq!(unpacked, previous);
}

fn flate2_reader(path: &str) -> impl std::io::Read {
    // gzip -dc, without a dev-dependency on flate2.
    let out = std::process::Command::new("gzip")
        .arg("-dc")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    std::io::Cursor::new(out.stdout)
}

fn applied_then_changed() -> (Sandbox, Vec<u8>) {
    let sandbox = two_images();
    sandbox.run(&[]).expect(0);
    let previous = fs::read(sandbox.saveconfig()).unwrap();
    sandbox.add_image("img-c", "cos-c", "etag-c", b"rootfs c\n");
    (sandbox, previous)
}

fn assert_rolled_back(sandbox: &Sandbox, previous: &[u8], run: &crate::util::sandbox::Run) {
    let report = run.json();
    assert_eq!(
        report["error"]["kind"],
        json!("rolled_back"),
        "{}",
        run.describe()
    );
    assert_eq!(report["applied"], json!(false));
    assert_eq!(
        fs::read(sandbox.saveconfig()).unwrap(),
        previous,
        "the previous file is back"
    );
    let calls = sandbox.calls();
    assert_eq!(
        calls.last().unwrap(),
        "restore ROOT/etc/target/saveconfig.json",
        "{calls:?}"
    );
    // The running configuration is the previous one again.
    let kernel = sandbox.kernel().unwrap();
    assert_eq!(kernel["storage_objects"].as_array().unwrap().len(), 3);
}

#[test]
fn verify_files_left_by_killed_runs_are_removed() {
    let (sandbox, _) = applied_then_changed();
    for pid in [4_000_001, 4_000_002] {
        sandbox.write(
            &format!("etc/target/.sbps-reconcile-verify-{pid}.json"),
            "{\"left\": \"by a killed run\"}",
        );
    }
    sandbox.run(&[]).expect(0);
    let mut left: Vec<String> = fs::read_dir(sandbox.path("etc/target"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["backup", "saveconfig.json"]);
}

#[test]
fn a_failing_restore_is_rolled_back() {
    let (sandbox, previous) = applied_then_changed();
    sandbox.stub("fail-restore", "2\n");
    let run = sandbox.run(&["--output", "json"]).expect(1);
    assert_rolled_back(&sandbox, &previous, &run);
    assert!(run.stderr.contains("exited with"), "{}", run.stderr);
    assert_eq!(restore_calls(&sandbox), 3);
}

#[test]
fn a_skipped_line_from_restore_is_a_failure() {
    let (sandbox, previous) = applied_then_changed();
    sandbox.stub("skip-restore", "2\n");
    let run = sandbox.run(&["--output", "json"]).expect(1);
    assert_rolled_back(&sandbox, &previous, &run);
    assert!(run.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains(", skipped"));
}

/// A foreign LUN whose storage object someone deleted by hand: rtslib skips it on every
/// restore (and on the rollback's). It was broken before the run and is not the tool's, so
/// it is a warning, and the image is added.
#[test]
fn a_foreign_lun_broken_before_the_run_is_a_warning_not_a_failed_restore() {
    let sandbox = two_images();
    sandbox.run(&[]).expect(0);
    let mut config: Value =
        serde_json::from_slice(&fs::read(sandbox.saveconfig()).unwrap()).unwrap();
    config["targets"][0]["tpgs"][0]["luns"]
        .as_array_mut()
        .unwrap()
        .push(json!({"index": 9, "storage_object": "/backstores/block/scratch"}));
    fs::write(
        sandbox.saveconfig(),
        serde_json::to_string_pretty(&config).unwrap() + "\n",
    )
    .unwrap();
    sandbox.add_image("img-c", "cos-c", "etag-c", b"rootfs c\n");
    let run = sandbox.run(&["--output", "json"]).expect(0);
    let report = run.json();
    assert_eq!(report["applied"], json!(true), "{}", run.describe());
    assert_eq!(report["summary"]["add"], json!(1));
    let warnings = report["warnings"].to_string();
    assert!(
        warnings.contains("Could not find matching StorageObject for LUN 9")
            && warnings.contains("does not own"),
        "{warnings}"
    );
    assert!(run.stderr.contains("LUN 9"), "{}", run.stderr);
    // The image is served by the running target; LUN 9 stays in the file, foreign.
    let kernel = sandbox.kernel().unwrap().to_string();
    assert!(
        kernel.contains("rootfs c") || kernel.contains("img-c"),
        "{kernel}"
    );
    let saved = sandbox.read("etc/target/saveconfig.json").unwrap();
    assert!(saved.contains("/backstores/block/scratch"), "{saved}");

    // A skipped line about anything else still fails the restore.
    sandbox.add_image("img-d", "cos-d", "etag-d", b"rootfs d\n");
    let restores = sandbox
        .calls()
        .iter()
        .filter(|c| c.starts_with("restore"))
        .count();
    sandbox.stub("skip-restore", &format!("{}\n", restores + 1));
    let run = sandbox.run(&["--output", "json"]).expect(1);
    assert_eq!(
        run.json()["error"]["kind"],
        json!("rolled_back"),
        "{}",
        run.describe()
    );
}

#[test]
fn no_saved_config_file_is_a_failure() {
    let (sandbox, previous) = applied_then_changed();
    sandbox.stub("nofile-restore", "2\n");
    let run = sandbox.run(&["--output", "json"]).expect(1);
    assert_rolled_back(&sandbox, &previous, &run);
    assert!(run.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("found no file"));
}

#[test]
fn a_save_that_differs_from_what_was_written_is_rolled_back() {
    let (sandbox, previous) = applied_then_changed();
    sandbox.stub("save-differs", "");
    let run = sandbox.run(&["--output", "json"]).expect(1);
    let report = run.json();
    assert_eq!(report["error"]["kind"], json!("rolled_back"));
    assert!(
        report["error"]["message"]
            .as_str()
            .unwrap()
            .contains("verify"),
        "{}",
        run.describe()
    );
    assert_eq!(fs::read(sandbox.saveconfig()).unwrap(), previous);
    let calls = sandbox.calls();
    assert_eq!(restore_calls(&sandbox), 3, "{calls:?}");
    assert!(calls[calls.len() - 2].starts_with(SAVE_PREFIX), "{calls:?}");
}

#[test]
fn a_failed_rollback_reports_both_errors() {
    let (sandbox, _) = applied_then_changed();
    sandbox.stub("fail-restore", "2\n3\n");
    let run = sandbox.run(&["--output", "json"]).expect(1);
    let report = run.json();
    assert_eq!(report["error"]["kind"], json!("rollback_failed"));
    let message = report["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("restoring the previous configuration also failed"),
        "{message}"
    );
    assert_eq!(message.matches("exited with").count(), 2, "{message}");
}

#[test]
fn a_failure_on_a_fresh_host_clears_and_removes_the_new_file() {
    let sandbox = two_images();
    sandbox.stub("fail-restore", "1\n");
    let run = sandbox.run(&["--output", "json"]).expect(1);
    assert_eq!(run.json()["error"]["kind"], json!("rolled_back"));
    assert!(!sandbox.saveconfig().exists());
    assert_eq!(sandbox.calls().last().unwrap(), "clear");
}

#[test]
fn a_held_lock_exits_75_and_touches_nothing() {
    let sandbox = two_images();
    let lock = File::create(sandbox.path("run/sbps-reconcile.lock")).unwrap();
    lock.try_lock().unwrap();
    let run = sandbox.run(&["--output", "json"]).expect(75);
    assert_eq!(run.json()["error"]["kind"], json!("lock_busy"));
    assert!(sandbox.calls().is_empty());
    assert!(!sandbox.saveconfig().exists());
    // A dry run takes no lock.
    sandbox.run(&["--dry-run"]).expect(0);
    drop(lock);
    sandbox.run(&[]).expect(0);
}

#[test]
fn a_running_targetcli_holds_off_the_apply() {
    let sandbox = two_images();
    let lock = File::create(sandbox.path("run/targetcli.lock")).unwrap();
    lock.try_lock().unwrap();
    let run = sandbox.run(&[]).expect(75);
    assert!(run.stderr.contains("targetcli"), "{}", run.stderr);
    assert!(sandbox.calls().is_empty());
}

#[test]
fn removing_more_luns_than_the_limit_is_refused() {
    let sandbox = two_images();
    sandbox.run(&[]).expect(0);
    let before = fs::read(sandbox.saveconfig()).unwrap();
    let calls = sandbox.calls().len();
    sandbox.write_policy("", 1);
    sandbox.remove_image("img-a");
    sandbox.remove_image("img-b");
    sandbox.add_image("img-c", "cos-c", "etag-c", b"rootfs c\n");
    let run = sandbox.run(&["--output", "json"]).expect(3);
    let report = run.json();
    assert_eq!(report["error"]["kind"], json!("safety"));
    assert_eq!(report["lun_removals"], json!(2));
    assert_eq!(report["summary"]["remove"], json!(2));
    assert_eq!(fs::read(sandbox.saveconfig()).unwrap(), before);
    assert_eq!(sandbox.calls().len(), calls);
    sandbox.run(&["--dry-run"]).expect(3);
    let report = sandbox
        .run(&["--allow-removals", "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(report["applied"], json!(true));
    assert_eq!(report["summary"]["keep"], json!(1));
    assert_eq!(report["summary"]["add"], json!(1));
}

#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    let sandbox = Sandbox::new();
    sandbox.run(&["--no-such-flag"]).expect(64);
    sandbox.run(&["--output", "xml"]).expect(64);
    let help = sandbox.run(&["--help"]).expect(0);
    assert!(help.stdout.contains("--dry-run"));
    sandbox.run(&["--version"]).expect(0);
}

#[test]
fn policy_errors_exit_78_and_name_the_key_line_and_column() {
    let sandbox = Sandbox::new();
    let text = sandbox
        .read("policy.yaml")
        .unwrap()
        .replace("  portals:", "  portal_list: []\n  portals:");
    sandbox.write("policy.yaml", text);
    let run = sandbox.run(&["--output", "json"]).expect(78);
    let message = run.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("unknown field `portal_list`"), "{message}");
    assert!(message.contains("line 3 column 3"), "{message}");
    assert!(run.stderr.contains("portal_list"));

    sandbox.write(
        "policy.yaml",
        "target:\n  portals: [\"0.0.0.0:3260\"]\ncatalogue:\n  ims: {file: /x}\n",
    );
    sandbox.run(&[]).expect(78);
    let mut missing = assert_cmd::Command::cargo_bin("sbps-reconcile").unwrap();
    missing
        .env_remove("SBPS_RECONCILE_POLICY")
        .arg("--policy")
        .arg(sandbox.path("nope.yaml"));
    let run = sandbox.run_command(&mut missing).expect(78);
    assert!(run.stderr.contains("nope.yaml"), "{}", run.stderr);
}

#[test]
fn the_policy_path_comes_from_the_environment_unless_given() {
    let sandbox = two_images();
    let mut command = assert_cmd::Command::cargo_bin("sbps-reconcile").unwrap();
    command
        .env("SBPS_RECONCILE_POLICY", sandbox.path("policy.yaml"))
        .arg("--dry-run");
    sandbox.run_command(&mut command).expect(0);
    let mut command = assert_cmd::Command::cargo_bin("sbps-reconcile").unwrap();
    command
        .env("SBPS_RECONCILE_POLICY", sandbox.path("policy.yaml"))
        .args(["--dry-run", "--policy"])
        .arg(sandbox.path("missing.yaml"));
    sandbox.run_command(&mut command).expect(78);
}

#[test]
fn an_unreadable_current_config_is_refused_untouched() {
    for content in ["", "{\"targets\": [", "[1, 2]", "not json at all"] {
        let sandbox = two_images();
        sandbox.write("etc/target/saveconfig.json", content);
        let run = sandbox.run(&["--output", "json"]).expect(1);
        assert_eq!(
            run.json()["error"]["kind"],
            json!("current_config"),
            "{content:?}"
        );
        assert_eq!(sandbox.read("etc/target/saveconfig.json").unwrap(), content);
        assert!(sandbox.calls().is_empty());
        sandbox.run(&["--dry-run"]).expect(1);
    }
}

#[test]
fn a_missing_targetctl_fails_before_anything_is_touched() {
    let sandbox = two_images();
    fs::remove_file(sandbox.path("bin/targetctl")).unwrap();
    let run = sandbox.run(&["--output", "json"]).expect(1);
    assert_eq!(run.json()["error"]["kind"], json!("apply"));
    assert!(!sandbox.saveconfig().exists());
}

#[test]
fn source_failures_exit_1_and_change_nothing() {
    let sandbox = two_images();
    sandbox.run(&[]).expect(0);
    let calls = sandbox.calls().len();
    for (file, content) in [
        ("images.json", "{\"images\": []}"),
        ("images.json", "<html>"),
    ] {
        sandbox.write(file, content);
        let run = sandbox.run(&["--output", "json"]).expect(1);
        assert_eq!(
            run.json()["error"]["kind"],
            json!("source"),
            "{}",
            run.describe()
        );
    }
    // An unreachable mount must not read as "every image is gone".
    sandbox.set_images(&[]);
    fs::rename(sandbox.path("mount"), sandbox.path("mount.away")).unwrap();
    let run = sandbox
        .run(&["--output", "json", "--allow-removals"])
        .expect(1);
    assert!(run.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("mount"));
    assert_eq!(sandbox.calls().len(), calls);
}

/// Every kind of bad input in the issue: each is a skip with its reason, and the good image
/// after them is still projected.
#[test]
fn bad_input_is_skipped_with_a_reason_and_the_run_goes_on() {
    let sandbox = Sandbox::new();
    let tagged = json!({"sbps-project": "true"});
    let record = |id: &str, link: Value, metadata: Option<Value>| {
        let mut r = json!({"id": id, "name": format!("name-{id}"), "link": link});
        if let Some(m) = metadata {
            r["metadata"] = m;
        }
        r
    };
    let link =
        |id: &str| json!({"path": format!("s3://boot-images/{id}/manifest.json"), "etag": ""});
    let mut records = vec![
        json!({"name": "first record has link.path null and no id", "link": {"path": null}}),
        record("link-null", Value::Null, Some(tagged.clone())),
        record(
            "kv-metadata",
            link("kv-metadata"),
            Some(json!({"key": "sbps-project", "value": "true"})),
        ),
        record("metadata-null", link("metadata-null"), Some(Value::Null)),
        record("untagged", link("untagged"), Some(json!({}))),
        json!("a string where a record belongs"),
    ];
    let manifests: Vec<(&str, String)> = vec![
        ("not-json", "{ this is not json".into()),
        ("no-artifacts", json!({"version": "1.0"}).to_string()),
        ("link-null-manifest", json!({"artifacts": [{"type": "application/vnd.cray.image.rootfs.squashfs", "link": null}]}).to_string()),
        ("etag-absent", manifest("s3://boot-images/etag-absent/rootfs", None)),
        ("etag-null", json!({"artifacts": [{"type": "application/vnd.cray.image.rootfs.squashfs", "link": {"path": "s3://boot-images/etag-null/rootfs", "etag": null}}]}).to_string()),
        ("etag-empty", manifest("s3://boot-images/etag-empty/rootfs", Some(""))),
        ("two-rootfs", json!({"artifacts": [
            {"type": "application/vnd.cray.image.rootfs.squashfs", "link": {"path": "s3://boot-images/a/rootfs", "etag": "a"}},
            {"type": "application/vnd.cray.image.rootfs.squashfs", "link": {"path": "s3://boot-images/b/rootfs", "etag": "b"}}]}).to_string()),
        ("numbers", json!({"artifacts": [{"type": "application/vnd.cray.image.rootfs.squashfs", "link": {"path": 42, "etag": 7}}]}).to_string()),
        ("manifest-is-a-list", "[{\"artifacts\": []}]".into()),
        ("artifact-without-type", json!({"artifacts": [{"link": {"path": "s3://boot-images/x/rootfs", "etag": "x"}}]}).to_string()),
        ("other-bucket", manifest("s3://other-bucket/x/rootfs", Some("e"))),
        ("dot-dot", manifest("s3://boot-images/../etc/shadow", Some("e"))),
        ("comma", manifest("s3://boot-images/a,b/rootfs", Some("e"))),
        ("not-in-mount", manifest("s3://boot-images/not-in-mount/rootfs", Some("e"))),
        ("empty-file", manifest("s3://boot-images/empty-file/rootfs", Some("e"))),
        ("huge", format!("{{\"pad\": \"{}\"}}", "x".repeat(1_100_000))),
    ];
    for (id, text) in &manifests {
        records.push(record(id, link(id), Some(tagged.clone())));
        sandbox.write(&format!("mount/{id}/manifest.json"), text);
    }
    records.push(record(
        "no-manifest",
        link("no-manifest"),
        Some(tagged.clone()),
    ));
    sandbox.write("mount/empty-file/rootfs", "");
    sandbox.write("mount/etc/shadow", "not served");
    sandbox.set_images(&records);
    sandbox.add_image("good", "good-image", "good-etag", b"served\n");
    sandbox.write("mount/PE/a,b.squashfs", "pe with a comma\n");

    let run = sandbox.run(&["--output", "json"]).expect(0);
    let report = run.json();
    let codes = skip_codes(&report);
    let expect = [
        ("link-null", "no_link"),
        ("kv-metadata", "not_tagged"),
        ("metadata-null", "not_tagged"),
        ("untagged", "not_tagged"),
        ("not-json", "manifest_invalid"),
        ("no-artifacts", "manifest_invalid"),
        ("link-null-manifest", "manifest_invalid"),
        ("etag-absent", "missing_etag"),
        ("etag-null", "missing_etag"),
        ("etag-empty", "missing_etag"),
        ("two-rootfs", "no_rootfs_artifact"),
        ("numbers", "manifest_invalid"),
        ("manifest-is-a-list", "manifest_invalid"),
        ("artifact-without-type", "no_rootfs_artifact"),
        ("other-bucket", "invalid_key"),
        ("dot-dot", "invalid_key"),
        ("comma", "invalid_key"),
        ("not-in-mount", "not_in_mount"),
        ("empty-file", "size_mismatch"),
        ("huge", "manifest_unreadable"),
        ("no-manifest", "manifest_unreadable"),
        ("PE/a,b.squashfs", "invalid_key"),
        (
            "first record has link.path null and no id",
            "record_invalid",
        ),
    ];
    for (id, code) in expect {
        assert_eq!(
            codes.get(id).map(String::as_str),
            Some(code),
            "{id}\n{}",
            run.describe()
        );
    }
    assert_eq!(
        report["skipped"].as_array().unwrap().len(),
        expect.len() + 1,
        "{}",
        run.describe()
    );
    assert!(report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["reason"].as_str().unwrap().contains("not an object")));
    let kv = report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["image_id"] == json!("kv-metadata"))
        .unwrap();
    assert!(kv["reason"].as_str().unwrap().contains("old"), "{kv}");
    assert_eq!(report["summary"]["add"], json!(1));
    assert_eq!(report["projections"][0]["image_id"], json!("good"));
    assert_eq!(report["applied"], json!(true));
}

#[test]
fn a_targetctl_that_never_returns_is_killed_with_its_children_and_rolled_back() {
    let (sandbox, previous) = applied_then_changed();
    sandbox.write_policy("", 10);
    let policy = sandbox.read("policy.yaml").unwrap();
    sandbox.write(
        "policy.yaml",
        policy.replace(
            "  apply: restore\n",
            "  apply: restore\n  command_timeout: 1\n",
        ),
    );
    sandbox.stub("hang-restore", "2\n");
    let run = sandbox.run(&["--output", "json"]).expect(1);
    assert_rolled_back(&sandbox, &previous, &run);
    let message = run.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("gave no answer within 1.0 s; killed"),
        "{message}"
    );
    // The stand-in and the child it started are gone: nothing holds on after the run.
    let pids = sandbox.read("bin/hung.pids").unwrap();
    for pid in pids.split_whitespace() {
        let alive = fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z "));
        assert!(!alive, "process {pid} outlived the run");
    }
    // The locks are free again.
    sandbox.stub("hang-restore", "");
    sandbox.run(&["--retry-now"]).expect(0);
}

#[test]
fn a_plan_that_keeps_failing_is_not_tried_again_at_once() {
    let (sandbox, previous) = applied_then_changed();
    // Restore 1 applied the first plan; 2 and 4 apply the new one and fail, 3 and 5 roll back.
    sandbox.stub("fail-restore", "2\n4\n");
    let run = sandbox.run(&["--output", "json"]).expect(1);
    assert_rolled_back(&sandbox, &previous, &run);
    let record: Value =
        serde_json::from_str(&sandbox.read("state/failures.json").unwrap()).unwrap();
    assert_eq!(record["count"], json!(1));
    assert_eq!(record["kind"], json!("rolled_back"));
    // The next run of the same plan does not tear the target down again.
    let calls = sandbox.calls().len();
    let metrics = sandbox.path("metrics.prom");
    let run = sandbox
        .run_command(
            sandbox
                .command()
                .args(["--output", "json", "--metrics-file"])
                .arg(&metrics),
        )
        .expect(1);
    let report = run.json();
    assert_eq!(
        report["error"]["kind"],
        json!("backed_off"),
        "{}",
        run.describe()
    );
    assert!(report["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--retry-now"));
    assert_eq!(
        sandbox.calls().len(),
        calls,
        "no targetctl call while backing off"
    );
    let metrics = fs::read_to_string(&metrics).unwrap();
    assert!(
        metrics.contains("sbps_reconcile_consecutive_failures 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("sbps_reconcile_failures_total{kind=\"backed_off\"} 1\n"));
    let status = sandbox.run(&["status"]).expect(0).stdout;
    assert!(
        status.contains("Backing off: the same plan failed 1 time(s)"),
        "{status}"
    );
    // An operator tries at once: it fails again, and counts.
    sandbox.run(&["--retry-now"]).expect(1);
    let record: Value =
        serde_json::from_str(&sandbox.read("state/failures.json").unwrap()).unwrap();
    assert_eq!(record["count"], json!(2));
    // Another plan is not held back by this one's failures.
    sandbox.add_image("img-d", "cos-d", "etag-d", b"rootfs d\n");
    sandbox.run(&[]).expect(0);
    assert!(
        sandbox.read("state/failures.json").is_none(),
        "a success clears the record"
    );
}

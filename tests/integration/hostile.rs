//! The hostile corpus: inputs an operator meets on a bad day, each with the outcome it must
//! have. Data cases live in `tests/hostile/*.jsonl` (manifests, IMS records, policies,
//! saveconfig.json files, object keys); the cases that need a file system (FIFOs, devices,
//! links out of the mount) run the real binary here. None may panic, hang, serve a file
//! from outside the mount, or forge a log line.

use crate::util::sandbox::{skip_codes, Sandbox};
use sbps_reconcile::image::{parse_record, ImageEntry};
use sbps_reconcile::lio::SaveConfig;
use sbps_reconcile::policy::{HostFacts, Policy};
use serde_json::{json, Value};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn corpus(file: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/hostile")
        .join(file);
    fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{file}: {e}: {line}")))
        .collect()
}

fn text<'a>(case: &'a Value, key: &str) -> &'a str {
    case[key]
        .as_str()
        .unwrap_or_else(|| panic!("{case}: no {key}"))
}

/// Runs every case, collecting the failures so that one report shows them all.
fn check_all(file: &str, outcome: impl Fn(&Value) -> Result<(), String>) -> usize {
    let cases = corpus(file);
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            outcome(case)
                .err()
                .map(|e| format!("{file}: {}: {e}", case["name"]))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    cases.len()
}

fn manifests() -> usize {
    check_all("manifests.jsonl", |case| {
        let got = match sbps_reconcile::manifest::parse(text(case, "manifest").as_bytes()) {
            Ok(artifact) => format!("rootfs:{}|{}", artifact.path, artifact.etag),
            Err(reason) => reason.code.to_string(),
        };
        (got == text(case, "expect"))
            .then_some(())
            .ok_or(format!("got {got}"))
    })
}

fn records() -> usize {
    let policy = policy_for_planning();
    check_all("records.jsonl", |case| {
        let got = match parse_record(&case["record"]) {
            ImageEntry::Invalid { .. } => "record_invalid".to_string(),
            ImageEntry::Valid(record) => match policy.catalogue.select.check(&record) {
                Err(_) => "not_tagged".to_string(),
                Ok(()) => match record.manifest_key("boot-images") {
                    None => "no_link".to_string(),
                    Some(Err(_)) => "invalid_key".to_string(),
                    Some(Ok(_)) => "tagged".to_string(),
                },
            },
        };
        (got == text(case, "expect"))
            .then_some(())
            .ok_or(format!("got {got}"))
    })
}

fn policies() -> usize {
    let host = HostFacts::from_hostname("ncn-w001");
    check_all("policies.jsonl", |case| {
        let expect = text(case, "expect");
        match Policy::from_yaml_in(text(case, "policy"), &host, Some(Path::new("/etc/x"))) {
            Ok(_) if expect == "ok" => Ok(()),
            Ok(_) => Err(format!("accepted, expected an error with {expect:?}")),
            Err(e) if expect != "ok" && e.to_string().contains(expect) => Ok(()),
            Err(e) => Err(format!("error {e:?}, expected {expect:?}")),
        }
    })
}

fn policy_for_planning() -> Policy {
    let text = "target:\n  portals: [\"10.252.1.10:3260\"]\ncatalogue:\n  mount: /mnt/bi\n  ims:\n    file: /x\n";
    Policy::from_yaml(text, &HostFacts::from_hostname("ncn-w001"))
        .unwrap()
        .0
}

fn saveconfigs() -> usize {
    let policy = policy_for_planning();
    let mut snap = crate::util::model::Snap::new();
    snap.rootfs("a1", "cos-a", "e1", 100);
    snap.pe("PE/x", 10);
    check_all("saveconfigs.jsonl", |case| {
        let expect = text(case, "expect");
        let current = match SaveConfig::parse(text(case, "text").as_bytes()) {
            Ok(current) if expect == "ok" => current,
            Ok(_) => return Err(format!("accepted, expected {expect:?}")),
            Err(e) if expect != "ok" && e.to_string().contains(expect) => return Ok(()),
            Err(e) => return Err(format!("refused: {e}")),
        };
        // An odd file plans without a panic, keeps what the tool does not own, and planning
        // what it wrote changes nothing.
        let plan = sbps_reconcile::plan::plan(&policy, &snap.0, &current, &Default::default());
        let reparsed = SaveConfig::parse(plan.desired.to_canonical().as_bytes())
            .map_err(|e| format!("the desired file does not parse: {e}"))?;
        let again = sbps_reconcile::plan::plan(&policy, &snap.0, &reparsed, &Default::default());
        if again.changed {
            return Err("planning the desired file again changes it".to_string());
        }
        let foreign = |config: &SaveConfig| {
            config
                .storage_objects()
                .iter()
                .filter(|so| {
                    so.get("dev")
                        .and_then(Value::as_str)
                        .is_none_or(|d| !d.starts_with("/mnt/bi/"))
                })
                .count()
        };
        if foreign(&plan.desired) != foreign(&current) {
            return Err("objects the tool does not own were dropped".to_string());
        }
        Ok(())
    })
}

fn keys() -> usize {
    check_all("keys.jsonl", |case| {
        let key = case["key"].as_str().unwrap_or_default();
        let got = match sbps_reconcile::s3path::check_key(key) {
            Ok(()) => "ok",
            Err(_) => "invalid_key",
        };
        (got == text(case, "expect"))
            .then_some(())
            .ok_or(format!("{key:?}: got {got}"))
    })
}

#[test]
fn the_corpus_has_its_outcomes() {
    let counts = [
        ("manifests", manifests()),
        ("IMS records", records()),
        ("policies", policies()),
        ("saveconfig.json files", saveconfigs()),
        ("object keys", keys()),
    ];
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    // The file system and journal hazards below (14 numbered cases) come on top.
    eprintln!("hostile corpus: {counts:?}, {total} data cases");
    assert!(total >= 150, "{total} cases");
}

fn mkfifo(path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}

#[test]
fn fifos_devices_and_directories_never_hang_a_run() {
    // 1. A FIFO in place of a manifest: that image is skipped, the run goes on.
    let sandbox = Sandbox::new();
    sandbox.add_image("img-a", "cos-a", "ea", b"rootfs a\n");
    sandbox.add_image("img-b", "cos-b", "eb", b"rootfs b\n");
    fs::remove_file(sandbox.path("mount/img-b/manifest.json")).unwrap();
    mkfifo(&sandbox.path("mount/img-b/manifest.json"));
    let report = sandbox
        .run(&["--dry-run", "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(
        skip_codes(&report).get("img-b").map(String::as_str),
        Some("manifest_unreadable")
    );
    assert_eq!(report["summary"]["add"], json!(1));
    // 2. The IMS file a FIFO; 3. a link to /dev/zero; 4. a directory: source failures.
    for (what, needle) in [
        ("fifo", "a FIFO"),
        ("zero", "a device"),
        ("dir", "a directory"),
    ] {
        let sandbox = Sandbox::new();
        fs::remove_file(sandbox.path("images.json")).unwrap();
        match what {
            "fifo" => mkfifo(&sandbox.path("images.json")),
            "zero" => std::os::unix::fs::symlink("/dev/zero", sandbox.path("images.json")).unwrap(),
            _ => fs::create_dir(sandbox.path("images.json")).unwrap(),
        }
        let run = sandbox.run(&["--dry-run", "--output", "json"]).expect(1);
        let message = run.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains(needle), "{what}: {message}");
    }
    // 5. saveconfig.json a FIFO: the current configuration cannot be read.
    let sandbox = Sandbox::new();
    mkfifo(&sandbox.saveconfig());
    let run = sandbox.run(&["--dry-run", "--output", "json"]).expect(1);
    assert_eq!(run.json()["error"]["kind"], json!("current_config"));
    // 6. The policy a FIFO.
    let sandbox = Sandbox::new();
    fs::remove_file(sandbox.path("policy.yaml")).unwrap();
    mkfifo(&sandbox.path("policy.yaml"));
    sandbox.run(&["--dry-run"]).expect(78);
    // 7. An IMS file larger than the limit (sparse: no disk spent).
    let sandbox = Sandbox::new();
    let file = fs::File::create(sandbox.path("images.json")).unwrap();
    file.set_len(sbps_reconcile::image::MAX_ANSWER_BYTES + 1)
        .unwrap();
    let run = sandbox.run(&["--dry-run", "--output", "json"]).expect(1);
    assert!(run.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("larger than"));
    // 8. A manifest larger than manifest_max_bytes: that image is skipped.
    let sandbox = Sandbox::new();
    sandbox.add_image("img-a", "cos-a", "ea", b"rootfs a\n");
    let file = fs::File::options()
        .append(true)
        .open(sandbox.path("mount/img-a/manifest.json"))
        .unwrap();
    file.set_len(2 * 1024 * 1024).unwrap();
    let report = sandbox
        .run(&["--dry-run", "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(
        skip_codes(&report).get("img-a").map(String::as_str),
        Some("manifest_unreadable")
    );
}

#[test]
fn nothing_outside_the_mount_is_ever_served() {
    // 9. A rootfs file that is a link to /etc/shadow.
    let sandbox = Sandbox::new();
    sandbox.add_image("img-a", "cos-a", "ea", b"rootfs a\n");
    sandbox.add_image("img-evil", "cos-evil", "ee", b"x");
    fs::remove_file(sandbox.path("mount/img-evil/rootfs")).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", sandbox.path("mount/img-evil/rootfs")).unwrap();
    // 10. A link that stays inside the mount is served (LIO follows it to the same bytes).
    sandbox.add_image("img-in", "cos-in", "ei", b"x");
    fs::remove_file(sandbox.path("mount/img-in/rootfs")).unwrap();
    std::os::unix::fs::symlink("../img-a/rootfs", sandbox.path("mount/img-in/rootfs")).unwrap();
    let report = sandbox.run(&["--output", "json"]).expect(0).json();
    assert_eq!(
        skip_codes(&report).get("img-evil").map(String::as_str),
        Some("outside_mount")
    );
    let saved = sandbox.read("etc/target/saveconfig.json").unwrap();
    assert!(!saved.contains("img-evil"), "{saved}");
    assert!(saved.contains("img-in/rootfs"));
    // 11. A key whose device path is longer than the kernel holds.
    let sandbox = Sandbox::new();
    let long = "x".repeat(240);
    sandbox.write(&format!("mount/PE/{long}.squashfs"), "pe\n");
    let report = sandbox
        .run(&["--dry-run", "--output", "json"])
        .expect(0)
        .json();
    let code = report["skipped"][0]["reason_code"].clone();
    assert_eq!(code, json!("path_too_long"), "{report}");
}

#[test]
fn a_symlinked_saveconfig_is_written_through_its_link() {
    // 12.
    let sandbox = Sandbox::new();
    sandbox.add_image("img-a", "cos-a", "ea", b"rootfs a\n");
    sandbox.write("etc/real/saveconfig.json", "{}\n");
    std::os::unix::fs::symlink(
        sandbox.path("etc/real/saveconfig.json"),
        sandbox.saveconfig(),
    )
    .unwrap();
    sandbox.run(&[]).expect(0);
    assert!(fs::symlink_metadata(sandbox.saveconfig())
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(sandbox
        .read("etc/real/saveconfig.json")
        .unwrap()
        .contains("img-a/rootfs"));
}

#[test]
fn outside_text_never_forges_a_journal_line() {
    // 13. An IMS id and name that hold newlines and a syslog priority.
    let sandbox = Sandbox::new();
    sandbox.set_images(&[
        json!({"id": "x\n<3>error: forged by an id", "name": "n\r\n<0>emerg: forged",
        "metadata": {"sbps-project": "true"}, "link": null}),
    ]);
    let run = sandbox.run_command(
        sandbox
            .command()
            .arg("--dry-run")
            .env("JOURNAL_STREAM", "8:1"),
    );
    let run = run.expect(0);
    assert!(
        run.stderr
            .lines()
            .all(|l| !l.contains("<3>error: forged") || l.starts_with("<4>")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.lines().all(|l| !l.starts_with("<0>")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("\\n<3>error: forged"), "{}", run.stderr);
    assert!(!run.stdout.contains("\n<3>error: forged"), "{}", run.stdout);
}

#[test]
fn an_unreadable_pe_folder_is_one_skipped_image() {
    // 14. As root every folder is readable: the run drops to nobody for this case.
    let sandbox = Sandbox::new();
    sandbox.write("mount/PE/good.squashfs", "pe\n");
    sandbox.write("mount/PE/locked/inside.squashfs", "pe\n");
    sandbox.write("mount/PE/locked/deeper/more.squashfs", "pe\n");
    let root_user = fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    });
    let mut command = if root_user.unwrap_or(false) {
        // Everything readable by nobody but the locked folder.
        for entry in walk(sandbox.root()) {
            let mode = if entry.is_dir() { 0o755 } else { 0o644 };
            fs::set_permissions(&entry, fs::Permissions::from_mode(mode)).unwrap();
        }
        let mut command = Command::new("setpriv");
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
        command.arg(env!("CARGO_BIN_EXE_sbps-reconcile"));
        command
    } else {
        Command::new(env!("CARGO_BIN_EXE_sbps-reconcile"))
    };
    fs::set_permissions(
        sandbox.path("mount/PE/locked"),
        fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    let output = command
        .arg("--policy")
        .arg(sandbox.path("policy.yaml"))
        .args(["--dry-run", "--output", "json"])
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap();
    fs::set_permissions(
        sandbox.path("mount/PE/locked"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["summary"]["add"], json!(1), "{report}");
    assert_eq!(
        skip_codes(&report).get("PE/locked/").map(String::as_str),
        Some("not_in_mount"),
        "{report}"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = vec![dir.to_owned()];
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() && !path.is_symlink() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

//! A directory per test with a policy, an offline catalogue (IMS file + mount), an
//! `etc/target`, and the stand-in `targetctl`; runs the real binary in it.

use super::configfs::FakeConfigfs;
use assert_cmd::Command;
use serde_json::{json, Value};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub struct Sandbox {
    /// Declared before `dir`: it is unmounted before the directory goes.
    configfs: Option<FakeConfigfs>,
    dir: tempfile::TempDir,
    /// `lio.apply` of the policy: `restore` (the stand-in targetctl) or `configfs` (the
    /// stand-in configfs).
    apply: std::cell::Cell<&'static str>,
    /// What every policy written from now on says, beyond the defaults.
    policy: std::cell::RefCell<PolicyExtras>,
}

/// Policy lines a test sets once, for every policy its sandbox writes from then on.
#[derive(Default)]
struct PolicyExtras {
    iqn: Option<String>,
    /// Lines under `lio:` (two-space indented by the caller).
    lio: String,
    /// Lines under `safety:`.
    safety: String,
}

/// What one run of the binary did.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    context: String,
}

impl Run {
    /// Asserts the exit code, showing everything on failure.
    pub fn expect(self, code: i32) -> Run {
        assert_eq!(self.code, code, "unexpected exit code\n{}", self.describe());
        self
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document: {e}\n{}", self.describe()))
    }

    pub fn describe(&self) -> String {
        format!(
            "exit code: {}\n--- stdout\n{}\n--- stderr\n{}\n{}",
            self.code, self.stdout, self.stderr, self.context
        )
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("sbps-test-")
            .tempdir()
            .expect("temp dir");
        let sandbox = Sandbox {
            configfs: None,
            dir,
            apply: std::cell::Cell::new("restore"),
            policy: Default::default(),
        };
        for sub in ["mount", "etc/target", "bin", "run"] {
            fs::create_dir_all(sandbox.path(sub)).unwrap();
        }
        let stub = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/stub/targetctl");
        fs::copy(&stub, sandbox.path("bin/targetctl")).unwrap();
        fs::set_permissions(
            sandbox.path("bin/targetctl"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        sandbox.write("images.json", "[]\n");
        sandbox.write_policy("", 10);
        sandbox
    }

    /// A sandbox whose running target is the stand-in configfs, changed in place; `None`
    /// when FUSE cannot be used here (the test is then skipped, and fails under CI).
    pub fn in_place() -> Option<Sandbox> {
        let mut sandbox = Sandbox::new();
        sandbox.configfs = Some(FakeConfigfs::mount(
            &sandbox.path("configfs"),
            &sandbox.path("configfs-state"),
        )?);
        sandbox.apply.set("configfs");
        sandbox.write_policy("", 10);
        Some(sandbox)
    }

    /// The stand-in configfs of an `in_place` sandbox.
    pub fn configfs(&self) -> &FakeConfigfs {
        self.configfs
            .as_ref()
            .expect("a sandbox made by Sandbox::in_place")
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn saveconfig(&self) -> PathBuf {
        self.path("etc/target/saveconfig.json")
    }

    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    pub fn read(&self, rel: &str) -> Option<String> {
        fs::read_to_string(self.path(rel)).ok()
    }

    /// From now on, the policy's target is `iqn` (the policy is not rewritten here).
    #[cfg_attr(not(feature = "live"), allow(dead_code))]
    pub fn set_iqn(&self, iqn: &str) {
        self.policy.borrow_mut().iqn = Some(iqn.to_string());
    }

    /// From now on, the policy has these lines under `lio:` (each `  key: value\n`).
    pub fn set_lio_extra(&self, lines: &str) {
        self.policy.borrow_mut().lio = lines.to_string();
    }

    /// From now on, the policy has these lines under `safety:` (each `  key: value\n`).
    #[cfg_attr(not(feature = "live"), allow(dead_code))]
    pub fn set_safety_extra(&self, lines: &str) {
        self.policy.borrow_mut().safety = lines.to_string();
    }

    /// Writes the policy with `lio.apply: <apply>` from now on.
    pub fn write_policy_as(&self, apply: &'static str, target_extra: &str, max_removals: usize) {
        self.apply.set(apply);
        self.write_policy(target_extra, max_removals);
    }

    /// Writes the policy; `target_extra` lines go under `target:` (with `portals:`, they
    /// replace the one portal).
    pub fn write_policy(&self, target_extra: &str, max_removals: usize) {
        let root = self.root().display();
        let catalogue = format!(
            "catalogue:\n  bucket: boot-images\n  mount: {root}/mount\n  require_mountpoint: false\n  ims:\n    file: {root}/images.json\n"
        );
        self.write_policy_with(target_extra, max_removals, &catalogue);
    }

    /// Writes the policy with a `catalogue:` section of the caller's.
    /// `target_extra` may name `portals:` itself; else the target has one portal.
    pub fn write_policy_with(&self, target_extra: &str, max_removals: usize, catalogue: &str) {
        let root = self.root().display();
        let apply = self.apply.get();
        let extras = self.policy.borrow();
        let iqn = extras
            .iqn
            .as_deref()
            .unwrap_or("iqn.2023-06.csm.iscsi:ncn-w001");
        let (lio_extra, safety_extra) = (&extras.lio, &extras.safety);
        let portals = if target_extra.contains("portals:") {
            ""
        } else {
            "portals: [\"10.252.1.10:3260\"]\n  "
        };
        self.write(
            "policy.yaml",
            format!(
                "target:\n  iqn: \"{iqn}\"\n  {portals}{target_extra}\n\
                 lio:\n  saveconfig: {root}/etc/target/saveconfig.json\n  targetctl: {root}/bin/targetctl\n\
                 \x20 backup_dir: {root}/etc/target/backup\n  lock_file: {root}/run/sbps-reconcile.lock\n\
                 \x20 targetcli_lock: {root}/run/targetcli.lock\n\
                 \x20 apply: {apply}\n  configfs: {root}/configfs\n  state_dir: {root}/state\n\
                 {lio_extra}{catalogue}\
                 safety:\n  max_removals: {max_removals}\n{safety_extra}"
            ),
        );
    }

    /// The IMS records of images.json.
    pub fn images(&self) -> Vec<Value> {
        serde_json::from_str(&self.read("images.json").unwrap()).unwrap()
    }

    pub fn set_images(&self, records: &[Value]) {
        self.write(
            "images.json",
            serde_json::to_string_pretty(records).unwrap(),
        );
    }

    /// A tagged image: IMS record, manifest and rootfs file in the mount.
    pub fn add_image(&self, id: &str, name: &str, etag: &str, content: &[u8]) {
        let mut records = self.images();
        records.retain(|r| r["id"] != json!(id));
        records.push(json!({"id": id, "name": name, "created": "2025-03-04T10:11:12",
            "arch": "x86_64", "metadata": {"sbps-project": "true"},
            "link": {"path": format!("s3://boot-images/{id}/manifest.json"), "etag": "", "type": "s3"}}));
        self.set_images(&records);
        self.write(
            &format!("mount/{id}/manifest.json"),
            manifest(&format!("s3://boot-images/{id}/rootfs"), Some(etag)),
        );
        self.write(&format!("mount/{id}/rootfs"), content);
    }

    pub fn remove_image(&self, id: &str) {
        let mut records = self.images();
        records.retain(|r| r["id"] != json!(id));
        self.set_images(&records);
    }

    /// Turns on a failure of the stand-in targetctl (see tests/stub/targetctl).
    pub fn stub(&self, switch: &str, content: &str) {
        self.write(&format!("bin/{switch}"), content);
    }

    /// The stand-in's calls, one per line, with the sandbox path shown as `ROOT`.
    pub fn calls(&self) -> Vec<String> {
        let root = self.root().display().to_string();
        self.read("bin/calls.log")
            .unwrap_or_default()
            .lines()
            .map(|l| l.replace(&root, "ROOT"))
            .collect()
    }

    /// The stand-in's running configuration.
    pub fn kernel(&self) -> Option<Value> {
        self.read("bin/kernel.json")
            .map(|t| serde_json::from_str(&t).unwrap())
    }

    pub fn command(&self) -> Command {
        let mut command = Command::cargo_bin("sbps-reconcile").unwrap();
        command
            .current_dir(self.root())
            .env_remove("SBPS_RECONCILE_POLICY")
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            // Never the host's journal: a test that sets JOURNAL_STREAM sees the stderr
            // fallback, unless it binds this socket itself.
            .env("SBPS_JOURNAL_SOCKET", self.path("run/journal.socket"))
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_PROFILE")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .arg("--policy")
            .arg(self.path("policy.yaml"));
        command
    }

    /// Starts the binary with `--policy <sandbox policy>` and `args`, as [`Sandbox::command`]
    /// sets it up, without waiting for it (stdout and stderr piped).
    #[cfg(feature = "live")]
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        std::process::Command::new(env!("CARGO_BIN_EXE_sbps-reconcile"))
            .arg("--policy")
            .arg(self.path("policy.yaml"))
            .args(args)
            .current_dir(self.root())
            .env_remove("SBPS_RECONCILE_POLICY")
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            .env("SBPS_JOURNAL_SOCKET", self.path("run/journal.socket"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start sbps-reconcile")
    }

    /// Runs the binary with `--policy <sandbox policy>` and `args`.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_command(self.command().args(args))
    }

    pub fn run_command(&self, command: &mut Command) -> Run {
        let output = command.output().expect("run sbps-reconcile");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            context: format!("--- targetctl calls\n{}", self.calls().join("\n")),
        }
    }
}

/// A manifest with one rootfs artifact (and a kernel), `etag` absent when `None`.
pub fn manifest(path: &str, etag: Option<&str>) -> String {
    let mut link = json!({"path": path, "type": "s3"});
    if let Some(etag) = etag {
        link["etag"] = json!(etag);
    }
    json!({"version": "1.0", "created": "2025-03-04 10:11:12", "artifacts": [
        {"type": "application/vnd.cray.image.rootfs.squashfs", "md5": "0", "link": link},
        {"type": "application/vnd.cray.image.kernel", "md5": "1",
         "link": {"path": "s3://boot-images/x/kernel", "etag": "k", "type": "s3"}}]})
    .to_string()
}

/// A report's skipped images: image id (or, without one, image name) to reason code.
pub fn skip_codes(report: &Value) -> std::collections::BTreeMap<String, String> {
    report["skipped"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let who = s["image_id"]
                .as_str()
                .or(s["image_name"].as_str())
                .unwrap_or("?");
            (
                who.to_string(),
                s["reason_code"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect()
}

/// Source URL to LUN of the projections a report keeps or adds.
pub fn luns_by_source(report: &Value) -> std::collections::BTreeMap<String, u64> {
    report["projections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["action"] != json!("remove"))
        .map(|p| {
            (
                p["source"].as_str().unwrap().to_string(),
                p["lun"].as_u64().unwrap(),
            )
        })
        .collect()
}

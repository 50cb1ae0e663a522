//! The mount as a CSM worker has it: the bucket mounted with s3fs-fuse (Debian's `s3fs`,
//! path-style, read-write as LIO's fileio needs) from the Ceph RGW that `tests/run.sh`
//! starts, through the recording proxy (so s3fs's own requests are counted), with
//! `require_mountpoint` at its default. The full cycle, s3fs killed between runs and during
//! one, and what the mount checks cost in requests to RGW.

use crate::live::Live;
use crate::util::http::Request;
use crate::util::sandbox::{luns_by_source, Sandbox};
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// An s3fs process serving a bucket at a directory; unmounted and ended when dropped.
pub(crate) struct S3fsMount {
    dir: PathBuf,
    child: Option<Child>,
}

impl S3fsMount {
    /// Mounts `bucket` of the S3 server at `url` on `dir` (which must exist, empty). `None`
    /// (with a message) where s3fs or /dev/fuse is missing, except under CI.
    pub(crate) fn mount(bucket: &str, url: &str, passwd: &Path, dir: &Path) -> Option<S3fsMount> {
        let usable = Path::new("/dev/fuse").exists()
            && Command::new("s3fs")
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        if !usable {
            assert!(
                std::env::var_os("CI").is_none(),
                "s3fs or /dev/fuse is missing (run .ci/setup)"
            );
            eprintln!("SKIPPED: s3fs or /dev/fuse is missing; run .ci/setup");
            return None;
        }
        let child = Command::new("s3fs")
            .arg(bucket)
            .arg(dir)
            // In the foreground, so that the test owns the process and can kill it.
            .args(["-f", "-o"])
            .arg(format!("passwd_file={}", passwd.display()))
            .args(["-o", &format!("url={url}"), "-o", "use_path_request_style"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3fs");
        let mount = S3fsMount {
            dir: dir.to_owned(),
            child: Some(child),
        };
        for _ in 0..200 {
            if is_mount_point(dir) {
                return Some(mount);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("s3fs did not mount {}", dir.display());
    }

    /// Kills s3fs as a crash would: the directory answers ENOTCONN until unmounted.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for S3fsMount {
    fn drop(&mut self) {
        self.kill();
        let _ = Command::new("fusermount")
            .arg("-u")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status();
    }
}

fn is_mount_point(dir: &Path) -> bool {
    fs::read_to_string("/proc/self/mountinfo").is_ok_and(|info| {
        info.lines()
            .filter_map(|line| line.split(' ').nth(4))
            .any(|point| Path::new(point) == dir)
    })
}

/// Requests s3fs sent (by its User-Agent) since the proxy was last cleared.
fn s3fs_requests(live: &Live) -> Vec<Request> {
    live.s3
        .proxy
        .requests()
        .into_iter()
        .filter(|r| {
            r.header("user-agent")
                .is_some_and(|a| a.starts_with("s3fs"))
        })
        .collect()
}

/// Requests by kind: `HEAD` (a file's or folder's attributes), `LIST` (a folder's
/// listing), `GET` (data), and any other method by its name.
fn by_kind(requests: &[Request]) -> std::collections::BTreeMap<&'static str, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for r in requests {
        let kind = match r.method.as_str() {
            "HEAD" => "HEAD",
            "GET" if r.target.contains("prefix=") || r.target.contains("delimiter=") => "LIST",
            "GET" => "GET",
            _ => "other",
        };
        *counts.entry(kind).or_insert(0) += 1;
    }
    counts
}

fn lun_of(report: &Value, source_end: &str, action: &str) -> Option<u64> {
    report["projections"].as_array()?.iter().find_map(|p| {
        (p["source"].as_str()?.ends_with(source_end) && p["action"] == json!(action))
            .then(|| p["lun"].as_u64())?
    })
}

/// The saveconfig.json and the stand-in's calls, to show nothing was touched.
fn untouched(sandbox: &Sandbox) -> (Option<String>, usize) {
    (
        sandbox.read("etc/target/saveconfig.json"),
        sandbox.calls().len(),
    )
}

#[test]
fn the_full_cycle_through_an_s3fs_mount_of_rgw() {
    let Some(live) = Live::mounted(1000) else {
        return;
    };
    let sandbox = &live.sandbox;
    live.image("a", b"rootfs a\n");
    live.image("b", b"rootfs b\n");
    live.pe("PE/x.squashfs", b"pe x\n");
    // Files seen through the mount, as LIO will open them.
    assert_eq!(
        fs::read(sandbox.path("mount/a/rootfs")).unwrap(),
        b"rootfs a\n"
    );

    let first = sandbox.run(&["--output", "json"]).expect(0).json();
    assert_eq!(first["summary"]["add"], json!(3), "{first:#}");
    assert_eq!(first["skipped"], json!([]));
    assert_eq!(first["ledger"]["outcome"], json!("written"));

    // Nothing new: nothing changes.
    let noop = sandbox.run(&["--output", "json"]).expect(0).json();
    assert_eq!(noop["changed"], json!(false), "{noop:#}");

    // Add c, untag a.
    live.image("c", b"rootfs c\n");
    live.list("a", Some(json!({"sbps-project": "false"})));
    let report = sandbox.run(&["--output", "json"]).expect(0).json();
    assert_eq!(report["summary"]["add"], json!(1), "{report:#}");
    assert_eq!(report["summary"]["remove"], json!(1));
    assert_eq!(
        lun_of(&report, "/a/rootfs", "remove"),
        lun_of(&first, "/a/rootfs", "add")
    );
    assert_eq!(report["ledger"]["outcome"], json!("written"));

    // b rebuilt by IMS: a new image (IMS gives a rebuild a new id, so a new key in the
    // bucket and a file s3fs has not seen), the old one untagged.
    let rebuilt = live.image("b2", b"rootfs b, rebuilt and longer\n");
    live.list("b", Some(json!({"sbps-project": "false"})));
    let report = sandbox.run(&["--output", "json"]).expect(0).json();
    let added = report["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["action"] == json!("add"))
        .cloned();
    assert_eq!(
        added.as_ref().map(|p| p["etag"].clone()),
        Some(json!(rebuilt)),
        "{report:#}"
    );
    assert_eq!(report["summary"]["remove"], json!(1));
    let before_rebuild = luns_by_source(&report);

    // The worker is rebuilt: saveconfig.json and the running target are gone; the ledger
    // in RGW gives every number back.
    fs::remove_file(sandbox.saveconfig()).unwrap();
    fs::remove_file(sandbox.path("bin/kernel.json")).unwrap();
    let report = sandbox.run(&["--output", "json"]).expect(0).json();
    assert_eq!(luns_by_source(&report), before_rebuild, "{report:#}");
    assert_eq!(report["ledger"]["outcome"], json!("unchanged"));
}

#[test]
fn prefix_sources_through_an_s3fs_mount_of_rgw() {
    let Some(mut live) = Live::mounted(1000) else {
        return;
    };
    let root = live.sandbox.root().display().to_string();
    live.sandbox.write_policy_with(
        "",
        10,
        &format!(
            "catalogue:\n  bucket: {bucket}\n  mount: {root}/mount\n  pe: {{prefixes: []}}\n\
             \x20 prefix_sources:\n    - prefix: compute/\n      identity: key+etag\n      include: [\"*\"]\n      exclude: [\"*vmlinuz*\"]\n\
             \x20 s3:\n    endpoint: {endpoint}\n    credentials_file: {root}/s3.creds\n    cache_dir: {root}/cache\n",
            bucket = live.s3.bucket,
            endpoint = live.s3.proxy.url(),
        ),
    );
    live.s3.put("compute/rocky.squashfs", b"squashfs v1\n");
    live.s3.put("compute/alma.squashfs", b"squashfs alma\n");
    live.s3.put("compute/vmlinuz", b"kernel\n");
    let report = live.sandbox.run(&["--output", "json"]).expect(0).json();
    let mut projected: Vec<&str> = report["projections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["source"].as_str().unwrap())
        .collect();
    projected.sort();
    assert_eq!(projected.len(), 2, "{report:#}");
    assert!(projected[0].ends_with("/compute/alma.squashfs"));
    assert!(projected[1].ends_with("/compute/rocky.squashfs"));
    assert_eq!(report["etag_verified"], json!(true));

    // image-builder rebuilds rocky in place. s3fs keeps a file's attributes for
    // stat_cache_expire (900 s by default): the mount still shows the old size, so the new
    // identity waits ("not yet"); the old one's bytes are gone from the bucket, so it goes.
    live.s3
        .put("compute/rocky.squashfs", b"squashfs v2, rebuilt\n");
    let report = live.sandbox.run(&["--output", "json"]).expect(0).json();
    assert_eq!(report["summary"]["remove"], json!(1), "{report:#}");
    assert_eq!(report["summary"]["add"], json!(0), "{report:#}");
    let codes = crate::util::sandbox::skip_codes(&report);
    assert_eq!(
        codes.values().map(String::as_str).collect::<Vec<_>>(),
        ["size_mismatch"],
        "{report:#}"
    );
    // Once the mount agrees (s3fs restarted here; its cache expiring does the same), the
    // rebuild is projected at a new LUN.
    live.remount();
    let report = live.sandbox.run(&["--output", "json"]).expect(0).json();
    assert_eq!(report["summary"]["add"], json!(1), "{report:#}");
    assert_eq!(report["skipped"], json!([]));
}

#[test]
fn s3fs_killed_between_runs_stops_the_run_before_anything_is_touched() {
    let Some(mut live) = Live::mounted(1000) else {
        return;
    };
    live.image("a", b"rootfs a\n");
    live.sandbox.run(&[]).expect(0);
    live.image("b", b"rootfs b\n");
    let before = untouched(&live.sandbox);
    live.kill_mount();
    let run = live.sandbox.run(&["--output", "json"]).expect(1);
    assert!(
        run.stderr.contains("not connected") || run.stderr.contains("mount"),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.json()["error"]["kind"],
        json!("source"),
        "{}",
        run.stdout
    );
    assert_eq!(untouched(&live.sandbox), before, "something was touched");
    let status = live.sandbox.run(&["status"]).expect(0);
    assert!(
        status.stdout.contains("not connected") || status.stderr.contains("not connected"),
        "status should say the mount is gone:\n{}\n{}",
        status.stdout,
        status.stderr
    );
}

#[test]
fn s3fs_killed_during_a_run_stops_it_before_anything_is_touched() {
    let Some(mut live) = Live::mounted(1000) else {
        return;
    };
    live.image("a", b"rootfs a\n");
    live.sandbox.run(&[]).expect(0);
    for id in ["b", "c", "d"] {
        live.image(id, format!("rootfs {id}\n").as_bytes());
    }
    let before = untouched(&live.sandbox);
    // The run waits in its IMS request while s3fs dies: it reads the mount after IMS.
    live.hold_ims(Duration::from_secs(2));
    let child = live.sandbox.spawn(&["--output", "json"]);
    for _ in 0..100 {
        if live.ims.requests().len() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(live.ims.requests().len(), 2, "the run never asked IMS");
    live.kill_mount();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(untouched(&live.sandbox), before, "something was touched");
}

#[test]
fn what_the_mount_checks_cost_through_s3fs() {
    let Some(live) = Live::mounted(1000) else {
        return;
    };
    for i in 0..20 {
        live.image(&format!("i{i:02}"), format!("rootfs {i}\n").as_bytes());
    }
    for i in 0..5 {
        live.pe(&format!("PE/p{i}.squashfs"), format!("pe {i}\n").as_bytes());
    }
    let mut figures = Vec::new();
    for (what, args) in [
        ("cold", &["--output", "json"][..]),
        ("no-op", &["--output", "json"][..]),
        ("no-op", &["--output", "json"][..]),
    ] {
        live.s3.proxy.clear();
        let report = live.sandbox.run(args).expect(0).json();
        assert_eq!(report["skipped"], json!([]), "{report:#}");
        let requests = s3fs_requests(&live);
        // s3fs answers a stat of a file it has not seen with a HEAD to RGW.
        figures.push((what, by_kind(&requests)));
    }
    eprintln!("s3fs requests to RGW per run, 25 images: {figures:?}");
    let cold = &figures[0].1;
    assert!(
        cold.get("HEAD").copied().unwrap_or(0) >= 25,
        "every file checked on a cold run: {figures:?}"
    );
    for (what, counts) in &figures {
        assert_eq!(
            counts.get("GET").copied().unwrap_or(0),
            0,
            "{what}: a mount check reads no data: {figures:?}"
        );
    }
}

//! Catalogues without IMS: objects projected by prefix source, as on an OpenCHAMI site,
//! where image-builder publishes a squashfs with no suffix and no manifest under
//! `compute/base/`, and kernels and initramfs under `efi-images/compute/base/`.

use crate::util::sandbox::Sandbox;
use sbps_reconcile::identity::Identity;
use serde_json::Value;
use std::fs;
use std::time::{Duration, SystemTime};

/// The OpenCHAMI image-builder's layout.
const SQUASHFS: &str = "compute/base/rocky9.6-compute-base-rocky9";
const KERNEL: &str = "efi-images/compute/base/vmlinuz-5.14.0-570.el9.x86_64";
const INITRAMFS: &str = "efi-images/compute/base/initramfs-5.14.0-570.el9.x86_64.img";
/// An initramfs left beside the squashfs: the exclude glob keeps it out.
const STRAY_INITRAMFS: &str = "compute/base/initramfs-5.14.0-570.el9.x86_64.img";

const SOURCES: &str = "  pe: {prefixes: []}\n  prefix_sources:\n    - prefix: compute/\n      identity: key+etag\n      include: [\"*\"]\n      exclude: [\"*.img\", \"*vmlinuz*\"]\n";

fn projections(report: &Value) -> Vec<&Value> {
    report["projections"]
        .as_array()
        .map(|all| all.iter().filter(|p| p["action"] != "remove").collect())
        .unwrap_or_default()
}

fn the_one_projection(report: &Value) -> Value {
    let live = projections(report);
    assert_eq!(live.len(), 1, "{report:#}");
    live[0].clone()
}

/// Offline: the mount stands in for the bucket and has no ETags, so a `key+etag` source
/// uses the file's size and modification time, and says so.
#[test]
fn offline_objects_are_identified_by_size_and_time_and_the_report_says_so() {
    let sandbox = Sandbox::new();
    let root = sandbox.root().display().to_string();
    sandbox.write_policy_with(
        "",
        10,
        &format!(
            "catalogue:\n  bucket: boot-images\n  mount: {root}/mount\n  require_mountpoint: false\n{SOURCES}"
        ),
    );
    for key in [SQUASHFS, KERNEL, INITRAMFS, STRAY_INITRAMFS] {
        sandbox.write(&format!("mount/{key}"), format!("bytes of {key}\n"));
    }
    let file = sandbox.path(&format!("mount/{SQUASHFS}"));
    let set_time = |secs: u64| {
        fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
            .unwrap();
    };
    set_time(1_750_000_000);

    let report = sandbox.run(&["--output", "json"]).expect(0).json();
    assert_eq!(report["etag_verified"], false);
    let notes = report["notes"].to_string();
    assert!(notes.contains("size and modification time"), "{notes}");
    let projection = the_one_projection(&report);
    assert_eq!(projection["kind"], "object");
    assert_eq!(projection["image_name"], SQUASHFS);
    let size = format!("bytes of {SQUASHFS}\n").len();
    let expected = Identity::rootfs(
        &format!("s3://boot-images/{SQUASHFS}"),
        &format!("size:{size},mtime:1750000000"),
    );
    assert_eq!(projection["name"], expected.name.as_str());
    assert_eq!(projection["wwn"], expected.wwn.as_str());
    // Kernels and initramfs are not images: neither projected nor skipped.
    assert_eq!(report["skipped"], serde_json::json!([]), "{report:#}");

    // Nothing changed: nothing to do.
    let again = sandbox
        .run(&["--output", "json", "--detailed-exitcode"])
        .expect(0)
        .json();
    assert_eq!(again["changed"], false);

    // Rewritten in place (same key, same size, new time): a new identity, and a warning.
    set_time(1_760_000_000);
    let run = sandbox.run(&["--output", "json"]).expect(0);
    let report = run.json();
    let new = the_one_projection(&report);
    assert_ne!(new["name"], projection["name"]);
    assert_eq!(new["action"], "add");
    let warnings = report["warnings"].to_string();
    assert!(
        warnings.contains("changed in place") && warnings.contains(SQUASHFS),
        "{warnings}"
    );
    assert!(run.stderr.contains("changed under them"), "{}", run.stderr);
}

/// The PE contract through `prefix_sources`: `identity: key` keeps its LUN when the bytes
/// change, exactly as `pe.prefixes` does.
#[test]
fn a_key_identity_source_is_the_pe_contract() {
    let sandbox = Sandbox::new();
    let root = sandbox.root().display().to_string();
    sandbox.write_policy_with(
        "",
        10,
        &format!(
            "catalogue:\n  bucket: boot-images\n  mount: {root}/mount\n  require_mountpoint: false\n  pe: {{prefixes: []}}\n  prefix_sources: [{{prefix: images/, identity: key}}]\n"
        ),
    );
    sandbox.write("mount/images/a.squashfs", "one\n");
    let report = sandbox.run(&["--output", "json"]).expect(0).json();
    let projection = the_one_projection(&report);
    assert_eq!(projection["kind"], "pe");
    let expected = Identity::pe("boot-images", "images/a.squashfs");
    assert_eq!(projection["name"], expected.name.as_str());
    sandbox.write("mount/images/a.squashfs", "two\n");
    let report = sandbox
        .run(&["--output", "json", "--detailed-exitcode"])
        .expect(0)
        .json();
    assert_eq!(report["changed"], false, "{report:#}");
    assert_eq!(report["warnings"], serde_json::json!([]));
}

#[cfg(feature = "live")]
mod live {
    use super::*;
    use crate::util::s3::S3Fixture;

    fn openchami(sandbox: &Sandbox, s3: &S3Fixture) -> String {
        let root = sandbox.root().display();
        format!(
            "catalogue:\n  bucket: {bucket}\n  mount: {root}/mount\n  require_mountpoint: false\n{SOURCES}\
             \x20 s3:\n    endpoint: {endpoint}\n    credentials_file: none\n    cache_dir: {root}/cache\n",
            bucket = s3.bucket,
            endpoint = s3.proxy.url(),
        )
    }

    fn put(sandbox: &Sandbox, s3: &S3Fixture, key: &str, content: &[u8]) -> String {
        sandbox.write(&format!("mount/{key}"), content);
        s3.put(key, content)
    }

    /// On the S3 server, unsigned (a public bucket, `credentials_file: none`): the squashfs
    /// is projected under the rootfs identity of its key and ETag; kernel and initramfs are
    /// not; a rebuild at the same key is a new identity at a new LUN, with a warning.
    #[test]
    fn an_openchami_bucket_is_projected_without_ims_or_credentials() {
        let sandbox = Sandbox::new();
        let Some(s3) = S3Fixture::new(&sandbox.path("unused.creds")) else {
            return;
        };
        fs::remove_file(sandbox.path("unused.creds")).unwrap();
        s3.make_public();
        sandbox.write_policy_with("", 10, &openchami(&sandbox, &s3));
        let etag = put(&sandbox, &s3, SQUASHFS, b"squashfs v1\n");
        for key in [KERNEL, INITRAMFS, STRAY_INITRAMFS] {
            put(&sandbox, &s3, key, format!("{key}\n").as_bytes());
        }
        // From here on, only the tool's own requests.
        s3.proxy.clear();

        let report = sandbox.run(&["--output", "json"]).expect(0).json();
        assert_eq!(report["etag_verified"], true);
        let first = the_one_projection(&report);
        assert_eq!(first["kind"], "object");
        assert_eq!(first["etag"], etag.as_str());
        let url = format!("s3://{}/{SQUASHFS}", s3.bucket);
        let expected = Identity::rootfs(&url, &etag);
        assert_eq!(first["name"], expected.name.as_str());
        assert_eq!(first["wwn"], expected.wwn.as_str());
        assert_eq!(report["skipped"], serde_json::json!([]), "{report:#}");
        let requests = s3.proxy.requests();
        assert!(!requests.is_empty());
        for request in &requests {
            assert_eq!(
                request.header("authorization"),
                None,
                "{} {} was signed",
                request.method,
                request.target
            );
        }
        assert!(
            requests.iter().all(|r| !r.target.contains("efi-images")),
            "only the sources' prefixes are listed"
        );

        // image-builder rebuilds at the same key: S3 gives a new ETag.
        let rebuilt = put(&sandbox, &s3, SQUASHFS, b"squashfs v2, rebuilt\n");
        assert_ne!(rebuilt, etag);
        let run = sandbox.run(&["--output", "json"]).expect(0);
        let report = run.json();
        let second = the_one_projection(&report);
        assert_eq!(
            second["name"],
            Identity::rootfs(&url, &rebuilt).name.as_str()
        );
        assert_eq!(second["action"], "add");
        assert_ne!(second["lun"], first["lun"], "a new identity, a new LUN");
        let warnings = report["warnings"].to_string();
        assert!(
            warnings.contains("changed in place") && warnings.contains(&rebuilt),
            "{warnings}"
        );
        assert!(run.stderr.contains("changed under them"), "{}", run.stderr);
        // The old identity is not served any more: its bytes are gone.
        let removed: Vec<&Value> = report["projections"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["action"] == "remove")
            .collect();
        assert_eq!(removed.len(), 1, "{report:#}");
        assert_eq!(removed[0]["name"], first["name"]);
    }
}

//! Live sources against real servers on 127.0.0.1: an HTTP(S) server of the test's own for
//! IMS, and the S3 server (Ceph RGW) that tests/run.sh starts.

use crate::util::http::{HttpServer, Reply, Request, ServerIdentity};
use crate::util::s3::{S3Fixture, ACCESS_KEY};
use crate::util::sandbox::{manifest, skip_codes as codes, Sandbox};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TOKEN: &str = "tok-3f9a1c-secret";
const IMS_PATH: &str = "/apis/ims/v3/images";

fn record(id: &str, name: &str, metadata: Option<Value>) -> Value {
    let mut r = json!({"id": id, "name": name, "created": "2025-03-04T10:11:12", "arch": "x86_64",
        "link": {"path": format!("s3://boot-images/{id}/manifest.json"), "etag": "", "type": "s3"}});
    if let Some(m) = metadata {
        r["metadata"] = m;
    }
    r
}

pub(crate) fn tagged() -> Option<Value> {
    Some(json!({"sbps-project": "true"}))
}

/// An IMS server answering `records` (changeable between runs), after `delay`.
fn ims_server(records: Arc<Mutex<Vec<Value>>>, delay: Arc<Mutex<Duration>>) -> HttpServer {
    HttpServer::start(move |request: &Request| {
        if request.target == IMS_PATH {
            Reply::json(200, serde_json::to_vec(&*records.lock().unwrap()).unwrap())
                .after(*delay.lock().unwrap())
        } else {
            Reply::json(404, "{}")
        }
    })
}

fn ims_catalogue(sandbox: &Sandbox, url: &str, extra_ims: &str) -> String {
    let root = sandbox.root().display();
    format!(
        "catalogue:\n  bucket: boot-images\n  mount: {root}/mount\n  require_mountpoint: false\n  ims:\n    url: {url}\n    timeout: 2\n\
         \x20   auth:\n      token_file: {root}/ims.token\n{extra_ims}"
    )
}

fn assert_no_token(run: &crate::util::sandbox::Run) {
    assert!(
        !run.stdout.contains(TOKEN) && !run.stderr.contains(TOKEN),
        "the token leaked\n{}",
        run.describe()
    );
}

#[test]
fn ims_over_http_sends_the_bearer_token_and_reads_records_leniently() {
    let sandbox = Sandbox::new();
    sandbox.write("ims.token", format!("{TOKEN}\n"));
    for id in ["good", "legacy"] {
        sandbox.write(
            &format!("mount/{id}/manifest.json"),
            manifest(&format!("s3://boot-images/{id}/rootfs"), Some("e1")),
        );
        sandbox.write(&format!("mount/{id}/rootfs"), format!("rootfs {id}\n"));
    }
    let mut link_null = record("link-null", "never-linked", tagged());
    link_null["link"] = Value::Null;
    let records = vec![
        record("good", "good", tagged()),
        record("untagged", "untagged", Some(json!({}))),
        record("legacy", "legacy-without-metadata", None),
        link_null,
        json!(42),
        json!({"id": "etag-empty", "name": "x", "metadata": {"sbps-project": "true"},
               "link": {"path": "s3://boot-images/etag-empty/manifest.json", "etag": ""}, "new_field": [1]}),
    ];
    let server = ims_server(Arc::new(Mutex::new(records)), Default::default());
    sandbox.write_policy_with("", 10, &ims_catalogue(&sandbox, &server.url(IMS_PATH), ""));
    // Written with the default mode: readable by others, which the run warns about.
    fs::set_permissions(sandbox.path("ims.token"), fs::Permissions::from_mode(0o644)).unwrap();
    let run = sandbox.run(&["--dry-run", "--output", "json"]).expect(0);
    assert_no_token(&run);
    assert!(
        run.stderr.contains("IMS token file") && run.stderr.contains("(mode 0644); make it 0600"),
        "{}",
        run.stderr
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].method, "GET");
    assert_eq!(
        requests[0].target, IMS_PATH,
        "exactly GET <url>, no query string"
    );
    assert_eq!(
        requests[0].header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    let report = run.json();
    let ids: Vec<&str> = report["projections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["image_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["good", "legacy"]);
    let codes: BTreeMap<String, String> = report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["image_id"].as_str().unwrap_or("-").to_string(),
                s["reason_code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        codes.get("untagged").map(String::as_str),
        Some("not_tagged")
    );
    assert_eq!(codes.get("link-null").map(String::as_str), Some("no_link"));
    assert_eq!(
        codes.get("etag-empty").map(String::as_str),
        Some("manifest_unreadable")
    );
    assert_eq!(codes.get("-").map(String::as_str), Some("record_invalid"));
}

#[test]
fn ims_failures_fail_the_run_and_change_nothing() {
    let cases: Vec<(Reply, &str)> = vec![
        (
            Reply::json(401, "{\"detail\": \"token expired\"}"),
            "HTTP 401 Unauthorized (the credentials were refused)",
        ),
        (Reply::json(500, "internal error"), "HTTP 500"),
        // A gateway that echoes the request's headers: the token never reaches a message.
        (
            Reply::json(
                400,
                format!("{{\"echo\": {{\"authorization\": \"Bearer {TOKEN}\"}}}}"),
            ),
            "Bearer [redacted]",
        ),
        (Reply::json(200, "<html>gateway</html>"), "not JSON"),
        (Reply::json(200, "{\"images\": []}"), "not a JSON array"),
        (
            Reply::json(200, "[]").after(Duration::from_secs(4)),
            "did not answer within 2.0 s",
        ),
    ];
    for (reply, needle) in cases {
        let sandbox = Sandbox::new();
        sandbox.write("ims.token", TOKEN);
        let reply = Arc::new(Mutex::new(Some(reply)));
        let server = HttpServer::start(move |_| {
            reply
                .lock()
                .unwrap()
                .take()
                .unwrap_or_else(|| Reply::json(500, ""))
        });
        // One answer, no retry: each failure is judged on its own.
        sandbox.write_policy_with(
            "",
            10,
            &ims_catalogue(&sandbox, &server.url(IMS_PATH), "    retries: 0\n"),
        );
        let run = sandbox.run(&["--output", "json"]).expect(1);
        assert_no_token(&run);
        let error = &run.json()["error"];
        assert_eq!(error["kind"], json!("source"), "{}", run.describe());
        assert!(
            error["message"].as_str().unwrap().contains(needle),
            "{needle}\n{}",
            run.describe()
        );
        assert!(sandbox.calls().is_empty());
        assert!(!sandbox.saveconfig().exists());
    }
}

#[test]
fn an_unreachable_ims_is_a_source_failure() {
    let sandbox = Sandbox::new();
    sandbox.write("ims.token", TOKEN);
    let url = {
        let server = HttpServer::start(|_| Reply::json(200, "[]"));
        server.url(IMS_PATH)
    }; // the server is gone: connection refused
    sandbox.write_policy_with("", 10, &ims_catalogue(&sandbox, &url, ""));
    let run = sandbox.run(&["--output", "json"]).expect(1);
    assert!(
        run.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot fetch IMS images"),
        "{}",
        run.describe()
    );
}

fn spire_agent(sandbox: &Sandbox, output: &str, status: i32) {
    sandbox.write("spire/output.json", output);
    sandbox.write(
        "spire/agent",
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$(dirname \"$0\")/args\"\ncat \"$(dirname \"$0\")/output.json\"\n\
             [ {status} -eq 0 ] || echo 'agent: could not fetch' >&2\nexit {status}\n"
        ),
    );
    fs::set_permissions(
        sandbox.path("spire/agent"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
}

#[test]
fn the_spire_agent_provides_the_token() {
    let sandbox = Sandbox::new();
    let svids = json!([{"svids": [
        {"spiffe_id": "spiffe://shasta/other/workload", "svid": "not-this-one"},
        {"spiffe_id": "spiffe://shasta/ncn/workload/sbps-marshal", "svid": "jwt-from-spire"}]},
        {"bundles": {"spiffe://shasta": "e30="}}]);
    spire_agent(&sandbox, &svids.to_string(), 0);
    let server = ims_server(Arc::new(Mutex::new(vec![])), Default::default());
    let root = sandbox.root().display();
    let catalogue = format!(
        "catalogue:\n  mount: {root}/mount\n  require_mountpoint: false\n  ims:\n    url: {}\n    auth:\n      spire:\n        agent: {root}/spire/agent\n\
         \x20       socket: {root}/spire/agent.sock\n",
        server.url(IMS_PATH)
    );
    sandbox.write_policy_with("", 10, &catalogue);
    let run = sandbox.run(&["--dry-run"]).expect(0);
    assert!(!run.stdout.contains("jwt-from-spire") && !run.stderr.contains("jwt-from-spire"));
    assert!(
        !run.stderr.contains("can be read by group or others"),
        "{}",
        run.stderr
    );
    assert_eq!(
        server.requests()[0].header("authorization"),
        Some("Bearer jwt-from-spire")
    );
    let args = sandbox.read("spire/args").unwrap();
    let expected = format!("api\nfetch\njwt\n-audience\nsystem-compute\n-socketPath\n{root}/spire/agent.sock\n-output\njson\n");
    assert_eq!(args, expected);

    // No accepted SPIFFE ID offered: a source failure that names what was offered.
    spire_agent(
        &sandbox,
        &json!([{"svids": [{"spiffe_id": "spiffe://shasta/x", "svid": "secret-x"}]}]).to_string(),
        0,
    );
    let run = sandbox.run(&["--dry-run", "--output", "json"]).expect(1);
    let message = run.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("spiffe://shasta/x") && !message.contains("secret-x"),
        "{message}"
    );
    // The agent fails.
    spire_agent(&sandbox, "", 3);
    let run = sandbox.run(&["--dry-run", "--output", "json"]).expect(1);
    assert!(
        run.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("could not fetch"),
        "{}",
        run.describe()
    );
}

#[test]
fn ims_over_https_is_verified() {
    let identity = ServerIdentity::new();
    let server = HttpServer::start_tls(&identity, |_| Reply::json(200, "[]"));
    let sandbox = Sandbox::new();
    sandbox.write("ims.token", TOKEN);
    sandbox.write("ca.pem", &identity.ca_pem);
    let url = server.url(IMS_PATH);
    assert!(url.starts_with("https://127.0.0.1:"));
    let root = sandbox.root().display();

    sandbox.write_policy_with(
        "",
        10,
        &ims_catalogue(&sandbox, &url, &format!("    ca_bundle: {root}/ca.pem\n")),
    );
    let run = sandbox.run(&["--dry-run"]).expect(0);
    assert!(!run.stderr.contains("TLS verification is off"));

    sandbox.write_policy_with("", 10, &ims_catalogue(&sandbox, &url, ""));
    let run = sandbox.run(&["--dry-run", "--output", "json"]).expect(1);
    let message = run.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("certificate") || message.contains("UnknownIssuer"),
        "{message}"
    );
    assert_no_token(&run);
    // Without ca_bundle the system store decides (read at the first handshake): a store
    // holding the CA lets the run through.
    let run = sandbox
        .run_command(
            sandbox
                .command()
                .env("SSL_CERT_FILE", sandbox.path("ca.pem"))
                .env("SSL_CERT_DIR", sandbox.path("no-such-dir"))
                .arg("--dry-run"),
        )
        .expect(0);
    assert!(!run.stderr.contains("TLS verification is off"));

    sandbox.write_policy_with(
        "",
        10,
        &ims_catalogue(&sandbox, &url, "    insecure: true\n"),
    );
    let run = sandbox.run(&["--dry-run"]).expect(0);
    assert!(
        run.stderr.contains("warning: IMS: TLS verification is off"),
        "{}",
        run.stderr
    );
    // The token went only to servers that completed TLS: all three requests reached it.
    assert!(server
        .requests()
        .iter()
        .all(|r| r.header("authorization") == Some(&format!("Bearer {TOKEN}"))));
}

#[test]
fn plain_http_to_another_host_is_refused_for_a_bearer_token() {
    let sandbox = Sandbox::new();
    sandbox.write_policy_with(
        "",
        10,
        &ims_catalogue(&sandbox, "http://ims.example:8080/apis/ims/v3/images", ""),
    );
    let run = sandbox.run(&["--dry-run"]).expect(78);
    assert!(run.stderr.contains("unencrypted"), "{}", run.stderr);
    sandbox.write_policy_with(
        "",
        10,
        &ims_catalogue(&sandbox, "https://ims/apis/ims/v3/images?limit=5", ""),
    );
    sandbox.run(&["--dry-run"]).expect(78);
}

/// A live catalogue: IMS served by a test server, objects in S3, the mount mirroring S3.
/// A sandbox on live sources: IMS over HTTP (a server of the test's) and a bucket of its
/// own on the S3 server.
pub(crate) struct Live {
    /// The bucket mounted with s3fs at `mount/` (declared first: unmounted first).
    mount: Option<crate::s3fs::S3fsMount>,
    pub(crate) sandbox: Sandbox,
    pub(crate) s3: S3Fixture,
    pub(crate) ims: HttpServer,
    pub(crate) records: Arc<Mutex<Vec<Value>>>,
    ims_delay: Arc<Mutex<Duration>>,
}

impl Live {
    pub(crate) fn new(page_size: u32) -> Option<Live> {
        let sandbox = Sandbox::new();
        let s3 = S3Fixture::new(&sandbox.path("s3.creds"))?;
        sandbox.write("ims.token", TOKEN);
        let records = Arc::new(Mutex::new(Vec::new()));
        let ims_delay = Arc::new(Mutex::new(Duration::ZERO));
        let ims = ims_server(records.clone(), ims_delay.clone());
        let live = Live {
            mount: None,
            sandbox,
            s3,
            ims,
            records,
            ims_delay,
        };
        live.write_policy(page_size);
        Some(live)
    }

    /// As [`Live::new`], with the bucket mounted at `mount/` by s3fs through the proxy, as a
    /// CSM worker mounts it, and `require_mountpoint` at its default.
    pub(crate) fn mounted(page_size: u32) -> Option<Live> {
        let mut live = Live::new(page_size)?;
        let creds = live.sandbox.path("s3.creds");
        fs::set_permissions(&creds, fs::Permissions::from_mode(0o600)).unwrap();
        fs::create_dir_all(live.sandbox.path("mount")).unwrap();
        live.mount = Some(crate::s3fs::S3fsMount::mount(
            &live.s3.bucket,
            &live.s3.proxy.url(),
            &creds,
            &live.sandbox.path("mount"),
        )?);
        live.write_policy(page_size);
        Some(live)
    }

    /// Mounts the bucket again with a new s3fs (nothing cached).
    pub(crate) fn remount(&mut self) {
        self.mount = None;
        self.mount = crate::s3fs::S3fsMount::mount(
            &self.s3.bucket,
            &self.s3.proxy.url(),
            &self.sandbox.path("s3.creds"),
            &self.sandbox.path("mount"),
        );
    }

    /// Kills s3fs (the mount answers ENOTCONN from now on).
    pub(crate) fn kill_mount(&mut self) {
        if let Some(mount) = &mut self.mount {
            mount.kill();
        }
    }

    /// IMS answers after `delay` from now on.
    pub(crate) fn hold_ims(&self, delay: Duration) {
        *self.ims_delay.lock().unwrap() = delay;
    }

    /// Another worker on the same IMS and bucket, with its own sandbox (and mount).
    pub(crate) fn worker(&self) -> Sandbox {
        let sandbox = Sandbox::new();
        fs::copy(self.sandbox.path("s3.creds"), sandbox.path("s3.creds")).unwrap();
        sandbox.write("ims.token", TOKEN);
        sandbox
    }

    /// The live `catalogue:` section for `sandbox` (this one, or a `worker`).
    pub(crate) fn catalogue_for(&self, sandbox: &Sandbox, page_size: u32) -> String {
        let root = sandbox.root().display();
        format!(
            "catalogue:\n  bucket: {bucket}\n  mount: {root}/mount\n{require}  ims:\n    url: {url}\n    auth:\n      token_file: {root}/ims.token\n\
             \x20 s3:\n    endpoint: {endpoint}\n    credentials_file: {root}/s3.creds\n    page_size: {page_size}\n    concurrency: 3\n\
             \x20   cache_dir: {root}/cache\n",
            bucket = self.s3.bucket,
            url = self.ims.url(IMS_PATH),
            endpoint = self.s3.proxy.url(),
            require = if self.mount.is_some() {
                ""
            } else {
                "  require_mountpoint: false\n"
            },
        )
    }

    /// Writes this sandbox's policy again (after `set_iqn` and the like).
    pub(crate) fn write_policy(&self, page_size: u32) {
        let catalogue = self.catalogue_for(&self.sandbox, page_size);
        self.sandbox.write_policy_with("", 10, &catalogue);
    }

    /// Uploads a rootfs and its manifest, mirrors the file into the mount, and lists the image
    /// in IMS (tagged). Returns the rootfs ETag.
    pub(crate) fn image(&self, id: &str, content: &[u8]) -> String {
        let bucket = &self.s3.bucket;
        let etag = if content.len() > 5 * 1024 * 1024 {
            self.s3.put_multipart(&format!("{id}/rootfs"), content)
        } else {
            self.s3.put(&format!("{id}/rootfs"), content)
        };
        self.s3.put(
            &format!("{id}/manifest.json"),
            manifest(&format!("s3://{bucket}/{id}/rootfs"), Some(&etag)).as_bytes(),
        );
        if self.mount.is_none() {
            self.sandbox.write(&format!("mount/{id}/rootfs"), content);
        }
        self.list(id, tagged());
        etag
    }

    pub(crate) fn list(&self, id: &str, metadata: Option<Value>) {
        let mut records = self.records.lock().unwrap();
        records.retain(|r| r["id"] != json!(id));
        let mut r = record(id, &format!("image-{id}"), metadata);
        r["link"]["path"] = json!(format!("s3://{}/{id}/manifest.json", self.s3.bucket));
        records.push(r);
    }

    pub(crate) fn pe(&self, key: &str, content: &[u8]) {
        self.s3.put(key, content);
        if self.mount.is_none() {
            self.sandbox.write(&format!("mount/{key}"), content);
        }
    }
}

#[test]
fn s3_listing_pages_etags_and_the_mount_decide_what_is_projected() {
    let Some(live) = Live::new(5) else { return };
    let bucket = live.s3.bucket.clone();
    live.image("good", b"rootfs good\n");
    let big: Vec<u8> = (0..(5 * 1024 * 1024 + 4096))
        .map(|i| (i % 251) as u8)
        .collect();
    let multipart_etag = live.image("multi", &big);
    assert!(multipart_etag.ends_with("-2"), "{multipart_etag}");
    // The manifest says another etag than S3 has.
    live.image("mismatch", b"rootfs mismatch\n");
    live.s3.put(
        "mismatch/manifest.json",
        manifest(&format!("s3://{bucket}/mismatch/rootfs"), Some("0123abcd")).as_bytes(),
    );
    // The manifest names an object S3 does not have.
    live.image("gone", b"rootfs gone\n");
    live.s3.delete("gone/rootfs");
    // The mount holds a stale copy of another size.
    live.image("stale", b"rootfs stale\n");
    live.sandbox.write("mount/stale/rootfs", "old\n");
    // Not synced into the mount yet.
    live.image("unsynced", b"rootfs unsynced\n");
    fs::remove_file(live.sandbox.path("mount/unsynced/rootfs")).unwrap();
    // Soft-deleted by IMS: the manifest now lives under deleted/.
    live.s3.put(
        "deleted/soft/manifest.json",
        manifest(&format!("s3://{bucket}/soft/rootfs"), Some("x")).as_bytes(),
    );
    let mut soft = record("soft", "soft-deleted", tagged());
    soft["link"]["path"] = json!(format!("s3://{bucket}/deleted/soft/manifest.json"));
    live.records.lock().unwrap().push(soft);
    // A manifest that is not JSON.
    live.list("garbled", tagged());
    live.s3
        .put("garbled/manifest.json", b"<Error>AccessDenied</Error>");
    // PE: good, missing from the mount, a folder marker, an empty object.
    live.pe("PE/CPE-base.x86_64-24.11.squashfs", b"pe base\n");
    live.s3.put("PE/CPE-missing.squashfs", b"pe missing\n");
    live.s3.put("PE/", b"");
    live.s3.put("PE/empty.squashfs", b"");
    // Enough other objects to need several listing pages.
    for i in 0..12 {
        live.s3.put(&format!("other/{i:02}"), b"x");
    }
    live.s3.proxy.clear();

    let run = live
        .sandbox
        .run(&["--dry-run", "--output", "json"])
        .expect(0);
    let report = run.json();
    assert_eq!(report["mode"], json!("live"));
    assert_eq!(report["etag_verified"], json!(true));
    // Live: no note that ETags went unchecked (the only note says LIO is not loaded here).
    assert!(
        report["notes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| !n.as_str().unwrap().contains("ETags were not checked")),
        "{report}"
    );
    let codes = codes(&report);
    let want = [
        ("mismatch", "etag_mismatch"),
        ("gone", "s3_object_missing"),
        ("stale", "size_mismatch"),
        ("unsynced", "not_in_mount"),
        ("soft", "manifest_unreadable"),
        ("garbled", "manifest_invalid"),
        ("PE/CPE-missing.squashfs", "not_in_mount"),
    ];
    for (id, code) in want {
        assert_eq!(
            codes.get(id).map(String::as_str),
            Some(code),
            "{id}\n{}",
            run.describe()
        );
    }
    assert_eq!(codes.len(), want.len(), "{codes:?}");
    let projections = report["projections"].as_array().unwrap();
    let by_source: BTreeMap<&str, &Value> = projections
        .iter()
        .map(|p| (p["source"].as_str().unwrap(), p))
        .collect();
    assert_eq!(by_source.len(), 3, "{by_source:?}");
    let multi = by_source[format!("s3://{bucket}/multi/rootfs").as_str()];
    assert_eq!(multi["etag"], json!(multipart_etag));
    assert_eq!(multi["size"], json!(big.len()));
    let pe = by_source[format!("s3://{bucket}/PE/CPE-base.x86_64-24.11.squashfs").as_str()];
    assert!(pe["etag"].as_str().unwrap().len() >= 32);

    let requests = live.s3.proxy.requests();
    // 8 manifests + 2 rootfs + 2 PE + 2 empty + 12 others = 26 objects (deleted/ aside): 6 pages of 5.
    let pages = requests
        .iter()
        .filter(|r| r.method == "GET" && r.target.contains("list-type=2"))
        .count();
    assert_eq!(pages, 6, "{requests:#?}");
    let (ledger_gets, gets): (Vec<&str>, Vec<&str>) = requests
        .iter()
        .filter(|r| r.method == "GET" && !r.target.contains("list-type=2"))
        .map(|r| r.target.split('?').next().unwrap_or_default())
        .partition(|t| t.contains("/sbps-reconcile/luns/"));
    // No LUN ledger yet, as the listing shows: nothing to GET (and a dry run writes none).
    assert!(ledger_gets.is_empty(), "{ledger_gets:?}");
    assert!(!requests.iter().any(|r| r.method == "PUT"), "{requests:#?}");
    assert_eq!(
        gets.len(),
        7,
        "one GET per listed manifest, none for the deleted one: {gets:?}"
    );
    assert!(
        gets.iter().all(|t| t.ends_with("/manifest.json")),
        "{gets:?}"
    );
    for request in &requests {
        let auth = request.header("authorization").unwrap_or_default();
        assert!(
            auth.contains(&format!("Credential={ACCESS_KEY}/")),
            "{auth}"
        );
    }
}

#[test]
fn live_end_to_end_apply_noop_untag_and_new_etag() {
    let Some(live) = Live::new(1000) else { return };
    live.image("a", b"rootfs a\n");
    live.image("b", b"rootfs b\n");
    live.pe("PE/x.squashfs", b"pe x\n");
    let sandbox = &live.sandbox;

    let report = sandbox
        .run(&["--dry-run", "--detailed-exitcode", "--output", "json"])
        .expect(2)
        .json();
    assert_eq!(report["summary"]["add"], json!(3));
    assert!(sandbox.calls().is_empty());

    let first = sandbox.run(&["--output", "json"]).expect(0).json();
    assert_eq!(first["applied"], json!(true));
    assert_eq!(sandbox.calls().len(), 2);
    let lun = |report: &Value, source_end: &str, action: &str| {
        report["projections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| {
                p["source"].as_str().unwrap().ends_with(source_end) && p["action"] == json!(action)
            })
            .map(|p| {
                (
                    p["lun"].as_u64().unwrap(),
                    p["name"].as_str().unwrap().to_string(),
                )
            })
    };

    // Nothing changed: no targetctl call at all.
    let report = sandbox
        .run(&["--output", "json", "--detailed-exitcode"])
        .expect(0)
        .json();
    assert_eq!(report["changed"], json!(false));
    assert_eq!(sandbox.calls().len(), 2);

    // Image a is untagged: its LUN goes, the others keep theirs.
    live.list("a", Some(json!({"sbps-project": "false"})));
    let report = sandbox.run(&["--output", "json"]).expect(0).json();
    assert_eq!(report["summary"]["remove"], json!(1));
    assert_eq!(
        lun(&report, "/a/rootfs", "remove").map(|l| l.0),
        lun(&first, "/a/rootfs", "add").map(|l| l.0)
    );
    assert_eq!(
        lun(&report, "/b/rootfs", "keep"),
        lun(&first, "/b/rootfs", "add")
    );

    // Image b gets a new rootfs (new etag): a new identity at a fresh index, the old one removed.
    let new_etag = live.image("b", b"rootfs b, rebuilt\n");
    let report = sandbox.run(&["--output", "json"]).expect(0).json();
    let (old_lun, old_name) = lun(&first, "/b/rootfs", "add").unwrap();
    assert_eq!(
        lun(&report, "/b/rootfs", "remove"),
        Some((old_lun, old_name.clone()))
    );
    let (new_lun, new_name) = lun(&report, "/b/rootfs", "add").unwrap();
    assert_ne!(new_name, old_name);
    assert_eq!(new_lun, 3, "above every index in use (0, 1, 2)");
    let added = report["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["action"] == json!("add"))
        .unwrap();
    assert_eq!(added["etag"], json!(new_etag));
    assert_eq!(
        lun(&report, "/PE/x.squashfs", "keep"),
        lun(&first, "/PE/x.squashfs", "add")
    );
    // The running configuration (the stand-in's) holds exactly PE x and the new b.
    let kernel = sandbox.kernel().unwrap();
    let names: Vec<&str> = kernel["storage_objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&new_name.as_str()));
    assert_eq!(live.ims.requests().len(), 5, "one IMS GET per run");
}

fn manifest_gets(s3: &S3Fixture) -> usize {
    s3.proxy
        .requests()
        .iter()
        .filter(|r| {
            r.method == "GET"
                && r.target
                    .split('?')
                    .next()
                    .unwrap_or_default()
                    .ends_with("/manifest.json")
        })
        .count()
}

#[test]
fn unchanged_manifests_are_not_fetched_again() {
    let Some(live) = Live::new(1000) else { return };
    live.image("a", b"rootfs a\n");
    live.image("b", b"rootfs b\n");
    live.s3.proxy.clear();
    let first = live
        .sandbox
        .run(&["--dry-run", "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(manifest_gets(&live.s3), 2);
    assert!(live.sandbox.path("cache/s3-cache.json").exists());

    // Nothing new: the listing and no manifest GET, and the same plan.
    live.s3.proxy.clear();
    let second = live
        .sandbox
        .run(&["--dry-run", "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(manifest_gets(&live.s3), 0);
    assert_eq!(second["projections"], first["projections"]);

    // A manifest overwritten in S3 has a new ETag: that one is read again.
    let bucket = live.s3.bucket.clone();
    let etag = live.s3.put("b/rootfs", b"rootfs b, rebuilt\n");
    live.sandbox.write("mount/b/rootfs", b"rootfs b, rebuilt\n");
    live.s3.put(
        "b/manifest.json",
        manifest(&format!("s3://{bucket}/b/rootfs"), Some(&etag)).as_bytes(),
    );
    live.s3.proxy.clear();
    let third = live
        .sandbox
        .run(&["--dry-run", "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(manifest_gets(&live.s3), 1);
    assert!(third["projections"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["etag"] == json!(etag)));

    // A corrupt cache is ignored (and rewritten), never an error.
    live.sandbox.write("cache/s3-cache.json", "{ corrupt");
    live.s3.proxy.clear();
    live.sandbox.run(&["--dry-run"]).expect(0);
    assert_eq!(manifest_gets(&live.s3), 2);
    live.s3.proxy.clear();
    live.sandbox.run(&["--dry-run"]).expect(0);
    assert_eq!(manifest_gets(&live.s3), 0);
}

/// An IMS server that fails with 503 `failures` times, then answers `[]`; counts requests.
fn flaky_ims(failures: usize) -> (HttpServer, Arc<Mutex<usize>>) {
    let count = Arc::new(Mutex::new(0usize));
    let seen = count.clone();
    let server = HttpServer::start(move |_| {
        let mut n = seen.lock().unwrap();
        *n += 1;
        if *n <= failures {
            Reply::json(503, "gateway busy")
        } else {
            Reply::json(200, "[]")
        }
    });
    (server, count)
}

#[test]
fn transient_ims_failures_are_retried() {
    let sandbox = Sandbox::new();
    sandbox.write("ims.token", TOKEN);
    let (server, count) = flaky_ims(2);
    sandbox.write_policy_with("", 10, &ims_catalogue(&sandbox, &server.url(IMS_PATH), ""));
    let run = sandbox.run(&["--dry-run"]).expect(0);
    assert_eq!(*count.lock().unwrap(), 3, "{}", run.describe());
    assert!(run.stderr.contains("retry 2 of 2"), "{}", run.stderr);
    // Without retries, the first 503 fails the run.
    let (server, count) = flaky_ims(1);
    sandbox.write_policy_with(
        "",
        10,
        &ims_catalogue(&sandbox, &server.url(IMS_PATH), "    retries: 0\n"),
    );
    let run = sandbox.run(&["--dry-run", "--output", "json"]).expect(1);
    assert_eq!(*count.lock().unwrap(), 1);
    assert!(run.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("HTTP 503"));
}

#[test]
fn no_retry_outlives_the_run_deadline() {
    let sandbox = Sandbox::new();
    sandbox.write("ims.token", TOKEN);
    let (server, count) = flaky_ims(usize::MAX);
    sandbox.write_policy_with(
        "",
        10,
        &ims_catalogue(&sandbox, &server.url(IMS_PATH), "    retries: 10\n"),
    );
    let policy = sandbox.read("policy.yaml").unwrap();
    sandbox.write(
        "policy.yaml",
        policy.replace("safety:\n", "safety:\n  run_deadline: 1\n"),
    );
    let run = sandbox.run(&["--dry-run", "--output", "json"]).expect(1);
    // 0.5 s after the first failure, 1 s after the second: past the 1 s deadline.
    assert_eq!(*count.lock().unwrap(), 2, "{}", run.describe());
    assert_eq!(run.json()["error"]["kind"], json!("source"));
}

/// The S3 requests of a run, by kind: listings by prefix ("" for the whole bucket), and
/// GETs and PUTs by key.
#[derive(Debug, Default, PartialEq, Eq)]
struct S3Requests {
    listings: Vec<String>,
    gets: Vec<String>,
    puts: Vec<String>,
    /// GETs of the bucket's own settings, by query (`versioning`).
    settings: Vec<String>,
}

fn s3_requests(live: &Live) -> S3Requests {
    let bucket = format!("/{}", live.s3.bucket);
    let mut found = S3Requests::default();
    for r in live.s3.proxy.requests() {
        let (path, query) = r.target.split_once('?').unwrap_or((&r.target, ""));
        let key = path
            .strip_prefix(&bucket)
            .unwrap_or(path)
            .trim_start_matches('/');
        if query.contains("list-type=2") {
            let prefix = query
                .split('&')
                .find_map(|p| p.strip_prefix("prefix="))
                .unwrap_or("")
                .replace("%2F", "/");
            found.listings.push(prefix);
        } else if r.method == "GET" && key.is_empty() {
            found.settings.push(query.to_string());
        } else if r.method == "GET" {
            found.gets.push(key.to_string());
        } else if r.method == "PUT" {
            found.puts.push(key.to_string());
        }
    }
    found.listings.sort();
    found.gets.sort();
    found
}

#[test]
fn verified_images_are_trusted_and_only_what_changes_is_listed() {
    let Some(live) = Live::new(1000) else { return };
    for id in ["a", "b"] {
        live.image(id, format!("rootfs {id}\n").as_bytes());
    }
    live.pe("PE/pe-1.squashfs", b"pe one\n");
    let run = |args: &[&str]| {
        live.s3.proxy.clear();
        let report = live.sandbox.run(args).expect(0).json();
        (report, s3_requests(&live))
    };
    // No cache: the whole bucket is listed and every image checked.
    let (first, requests) = run(&["--output", "json"]);
    assert_eq!(requests.listings, [""], "{requests:?}");
    assert_eq!(requests.gets, ["a/manifest.json", "b/manifest.json"]);
    // Whether the bucket keeps versions is asked before the ledger is written.
    assert_eq!(requests.settings, ["versioning"]);
    assert_eq!(first["summary"]["add"], json!(3));

    // Nothing new: the PE prefix is listed; nothing is fetched (the ledger is the one this
    // worker wrote).
    let (second, requests) = run(&["--output", "json"]);
    assert_eq!(
        requests,
        S3Requests {
            listings: vec!["PE/".into()],
            gets: vec![],
            puts: vec![],
            settings: vec![],
        }
    );
    assert_eq!(second["changed"], json!(false));
    assert_eq!(second["ledger"]["remembered"], json!(true));
    let identities = |report: &Value| -> Vec<(Value, Value, Value)> {
        report["projections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["lun"].clone(), p["wwn"].clone(), p["etag"].clone()))
            .collect()
    };
    assert_eq!(identities(&second), identities(&first));

    // A new image: its folder is listed and its manifest fetched, and the ledgers read to
    // number it; nothing else.
    live.image("c", b"rootfs c\n");
    let (third, requests) = run(&["--output", "json"]);
    assert_eq!(requests.listings, ["PE/", "c/", "sbps-reconcile/luns/"]);
    assert_eq!(requests.gets, ["c/manifest.json"]);
    assert_eq!(third["summary"]["add"], json!(1));

    // A file that changed in the mount is checked again at once: here S3 has the old
    // object, so the image is skipped (and its LUN goes) rather than served at another size.
    live.sandbox
        .write("mount/b/rootfs", "rootfs b, but longer\n");
    let (fourth, requests) = run(&["--dry-run", "--allow-removals", "--output", "json"]);
    assert_eq!(requests.listings, ["PE/", "b/", "sbps-reconcile/luns/"]);
    assert!(
        requests.gets.is_empty(),
        "the manifest is cached by its ETag"
    );
    assert_eq!(
        codes(&fourth).get("b").map(String::as_str),
        Some("size_mismatch")
    );
    live.sandbox.write("mount/b/rootfs", "rootfs b\n");

    // Past the interval the whole bucket is verified again: here the rootfs of a was
    // replaced behind the mount's back (same size), which only S3's ETag tells.
    live.s3.put("a/rootfs", b"rootfs A\n");
    let (_, requests) = run(&["--dry-run", "--output", "json"]);
    assert!(!requests.listings.contains(&String::new()), "{requests:?}");
    let path = live.sandbox.path("cache/s3-cache.json");
    let mut cache: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let verified_at = cache["full_verification"].as_u64().unwrap();
    cache["full_verification"] = json!(verified_at - 2 * 3600);
    fs::write(&path, cache.to_string()).unwrap();
    let (fifth, requests) = run(&["--dry-run", "--allow-removals", "--output", "json"]);
    assert_eq!(requests.listings, [""], "{requests:?}");
    assert_eq!(
        codes(&fifth).get("a").map(String::as_str),
        Some("etag_mismatch")
    );

    // verify_interval: 0 lists the whole bucket every run.
    let catalogue = live.catalogue_for(&live.sandbox, 1000);
    live.sandbox
        .write_policy_with("", 10, &format!("{catalogue}    verify_interval: 0\n"));
    let (_, requests) = run(&["--dry-run", "--allow-removals", "--output", "json"]);
    assert_eq!(requests.listings, [""], "{requests:?}");
}

//! The ledger's conditional write on the S3 server of record (Ceph RGW, which `tests/run.sh`
//! starts): every run that changes the ledger writes it; a lost answer is read back, never
//! sent again; a deleted ledger is a conflict; two runs racing on one key, one writes; a
//! versioned bucket is named. Faults go through the recording proxy in front of the server.

use crate::live::Live;
use crate::util::sandbox::{luns_by_source, Sandbox};
use serde_json::{json, Value};
use std::fs;

const LEDGERS: &str = "/sbps-reconcile/luns/";

fn ledger_key() -> String {
    format!("sbps-reconcile/luns/{}.json", crate::util::model::IQN)
}

fn ledger_puts(live: &Live) -> Vec<crate::util::http::Request> {
    live.s3
        .proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.target.contains(LEDGERS))
        .collect()
}

/// The LUN the bucket's ledger gives the rootfs of image `id`.
fn ledger_lun(live: &Live, id: &str) -> Option<u64> {
    let ledger: Value = serde_json::from_slice(&live.s3.get(&ledger_key())?).unwrap();
    ledger["entries"].as_object()?.values().find(|e| {
        e["source"]
            .as_str()
            .is_some_and(|s| s.ends_with(&format!("/{id}/rootfs")))
    })?["lun"]
        .as_u64()
}

/// The LUN a report gives the rootfs of image `id`.
fn report_lun(report: &Value, id: &str) -> Option<u64> {
    report["projections"].as_array()?.iter().find(|p| {
        p["source"]
            .as_str()
            .is_some_and(|s| s.ends_with(&format!("/{id}/rootfs")))
    })?["lun"]
        .as_u64()
}

#[test]
fn every_run_that_changes_the_target_writes_the_ledger_with_the_etag_as_rgw_stores_it() {
    let Some(live) = Live::new(1000) else { return };
    for (i, id) in ["a", "b", "c", "d"].into_iter().enumerate() {
        live.image(id, format!("rootfs {id}\n").as_bytes());
        live.s3.proxy.clear();
        let report = live.sandbox.run(&["--output", "json"]).expect(0).json();
        assert_eq!(
            report["ledger"]["outcome"],
            json!("written"),
            "run {i}: {report:#}"
        );
        assert_eq!(report["ledger"]["bucket_versioning"], Value::Null);
        let puts = ledger_puts(&live);
        assert_eq!(puts.len(), 1, "run {i}: {puts:#?}");
        match i {
            0 => assert_eq!(puts[0].header("if-none-match"), Some("*")),
            _ => {
                let etag = puts[0].header("if-match").unwrap_or_default();
                assert!(
                    !etag.is_empty() && !etag.contains('"'),
                    "run {i}: If-Match {etag:?}: RGW compares it byte for byte with an ETag \
                     stored without quotes"
                );
            }
        }
        assert_eq!(ledger_lun(&live, id), report_lun(&report, id), "run {i}");
    }
}

#[test]
fn a_lost_answer_to_the_ledger_put_is_read_back_and_never_sent_again() {
    let Some(live) = Live::new(1000) else { return };
    live.image("a", b"rootfs a\n");
    live.sandbox.run(&[]).expect(0);

    // The PUT reaches the server, its answer is a 500: the run reads the ledger back.
    live.image("b", b"rootfs b\n");
    live.s3.proxy.clear();
    live.s3.proxy.lose_put_answers_to(LEDGERS);
    let run = live.sandbox.run(&["--output", "json"]).expect(0);
    let report = run.json();
    assert_eq!(
        report["ledger"]["outcome"],
        json!("written"),
        "{}",
        run.describe()
    );
    assert!(run.stderr.contains("outcome unknown"), "{}", run.stderr);
    assert_eq!(ledger_puts(&live).len(), 1, "the PUT was sent again");
    assert_eq!(ledger_lun(&live, "b"), report_lun(&report, "b"));

    // The PUT never reaches the server: the ledger is as it was, the run says the write
    // failed, and the next run writes it.
    live.s3.proxy.clear_put_faults();
    live.s3.proxy.fail_puts_to(LEDGERS);
    live.image("c", b"rootfs c\n");
    live.s3.proxy.clear();
    let run = live.sandbox.run(&["--output", "json"]).expect(0);
    let report = run.json();
    assert_eq!(report["applied"], json!(true));
    assert_eq!(
        report["ledger"]["outcome"],
        json!("failed"),
        "{}",
        run.describe()
    );
    assert!(
        run.stderr.contains("the ledger is as it was"),
        "{}",
        run.stderr
    );
    assert_eq!(ledger_puts(&live).len(), 1, "the PUT was sent again");
    assert_eq!(ledger_lun(&live, "c"), None);
    let c = report_lun(&report, "c");

    live.s3.proxy.clear_put_faults();
    let report = live.sandbox.run(&["--output", "json"]).expect(0).json();
    assert_eq!(report["changed"], json!(false));
    assert_eq!(report["ledger"]["outcome"], json!("written"), "{report:#}");
    assert_eq!(ledger_lun(&live, "c"), c);
}

#[test]
fn a_ledger_deleted_between_read_and_write_is_a_conflict_and_the_next_run_writes_it_again() {
    let Some(live) = Live::new(1000) else { return };
    live.image("a", b"rootfs a\n");
    live.sandbox.run(&[]).expect(0);
    live.image("b", b"rootfs b\n");
    live.sandbox.stub("wait-restore", "all\n");
    let first = live.sandbox.spawn(&["--output", "json"]);
    wait_for(&live.sandbox, "bin/restore-waiting");
    live.s3.delete(&ledger_key());
    live.sandbox.write("bin/restore-go", "");
    let output = first.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["ledger"]["outcome"], json!("conflict"), "{stderr}");
    assert!(stderr.contains("was deleted since"), "{stderr}");
    assert_eq!(live.s3.get(&ledger_key()), None, "nothing written");

    // The next run finds no ledger, seeds it from the LUNs in place: the same numbers.
    fs::remove_file(live.sandbox.path("bin/wait-restore")).unwrap();
    let next = live.sandbox.run(&["--output", "json"]).expect(0).json();
    assert_eq!(next["ledger"]["outcome"], json!("written"), "{next:#}");
    for id in ["a", "b"] {
        assert_eq!(ledger_lun(&live, id), report_lun(&report, id), "{id}");
    }
}

fn wait_for(sandbox: &Sandbox, rel: &str) {
    let path = sandbox.path(rel);
    for _ in 0..1200 {
        if path.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{rel} never appeared");
}

fn finish(child: std::process::Child, who: &str) -> Value {
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{who}: {stderr}");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{who}: {e}: {stderr}"))
}

/// One target IQN on two nodes (a move under way), both numbering a new image at once:
/// the proxy holds both PUTs until both have arrived, so both read before either writes.
#[test]
fn two_runs_racing_on_one_ledger_key_fifty_times_one_writes_each_time() {
    const ROUNDS: usize = 50;
    let Some(live) = Live::new(1000) else { return };
    let other = live.worker();
    other.write_policy_with("", 10, &live.catalogue_for(&other, 1000));
    let nodes = [&live.sandbox, &other];
    live.s3.proxy.hold_puts_to(LEDGERS, 2);
    let mut refusals = std::collections::BTreeMap::new();
    let mut rounds_seen = 0;
    for round in 0..ROUNDS {
        let id = format!("i{round:02}");
        let content = format!("rootfs {id}\n");
        live.image(&id, content.as_bytes());
        other.write(&format!("mount/{id}/rootfs"), &content);
        live.s3.proxy.clear();
        let children: Vec<_> = nodes
            .iter()
            .map(|node| node.spawn(&["--output", "json"]))
            .collect();
        let reports: Vec<Value> = children
            .into_iter()
            .zip(["first", "second"])
            .map(|(child, who)| finish(child, who))
            .collect();
        // What the server did: exactly one PUT stored, the other refused (412) or lost
        // inside RGW (500); each run sent its PUT once.
        let mut answers: Vec<Option<u16>> = ledger_puts(&live)
            .iter()
            .map(|r| r.upstream_status)
            .collect();
        answers.sort();
        assert!(
            matches!(
                answers.as_slice(),
                [Some(200), Some(412 | 500)] | [Some(412 | 500), Some(200)]
            ),
            "round {round}: the server answered {answers:?}"
        );
        let outcomes: Vec<&str> = reports
            .iter()
            .map(|r| r["ledger"]["outcome"].as_str().unwrap_or_default())
            .collect();
        // The loser reports a conflict, or (when RGW answered 500, which leaves the outcome
        // unknown, and the ledger read back holds exactly the bytes it meant to write: the
        // same plan in the same second) `written`: the ledger holds its plan either way.
        let loser_status = answers.iter().flatten().find(|s| **s != 200).copied();
        *refusals
            .entry(loser_status.unwrap_or_default())
            .or_insert(0) += 1;
        let written = outcomes.iter().filter(|o| **o == "written").count();
        assert!(
            written >= 1
                && outcomes
                    .iter()
                    .all(|o| matches!(*o, "written" | "conflict")),
            "round {round}: {outcomes:?}\n{reports:#?}"
        );
        if loser_status == Some(412) {
            assert_eq!(written, 1, "round {round}: {outcomes:?}");
        }
        let lun = report_lun(&reports[0], &id);
        assert!(lun.is_some(), "round {round}");
        assert_eq!(report_lun(&reports[1], &id), lun, "round {round}");
        assert_eq!(ledger_lun(&live, &id), lun, "round {round}");

        // The loser's next run converges on the winner's ledger: nothing to change.
        let loser = if outcomes[0] == "conflict" { 0 } else { 1 };
        rounds_seen += 1;
        live.s3.proxy.clear_put_faults();
        let next = nodes[loser].run(&["--output", "json"]).expect(0).json();
        assert_eq!(next["changed"], json!(false), "round {round}: {next:#}");
        assert!(
            matches!(
                next["ledger"]["outcome"].as_str(),
                Some("unchanged" | "written")
            ),
            "round {round}: {next:#}"
        );
        live.s3.proxy.hold_puts_to(LEDGERS, 2);
    }
    live.s3.proxy.clear_put_faults();
    assert_eq!(rounds_seen, ROUNDS);
    eprintln!(
        "ledger race: the losing PUT's answers over {ROUNDS} rounds, by status: {refusals:?}"
    );
    // After 50 rounds the two targets serve every image at the same number as the ledger.
    let here = live.sandbox.run(&["--output", "json"]).expect(0).json();
    let there = other.run(&["--output", "json"]).expect(0).json();
    for round in 0..ROUNDS {
        let id = format!("i{round:02}");
        assert_eq!(report_lun(&here, &id), ledger_lun(&live, &id), "{id}");
        assert_eq!(report_lun(&there, &id), ledger_lun(&live, &id), "{id}");
    }
}

#[test]
fn a_versioned_bucket_is_named_in_the_report_and_in_status() {
    let Some(live) = Live::new(1000) else { return };
    live.s3.enable_versioning();
    live.image("a", b"rootfs a\n");
    let run = live.sandbox.run(&["--output", "json"]).expect(0);
    let report = run.json();
    assert_eq!(report["ledger"]["bucket_versioning"], json!("enabled"));
    assert_eq!(report["ledger"]["outcome"], json!("written"));
    let warnings = report["warnings"].to_string();
    assert!(
        warnings.contains("keeps object versions") && warnings.contains("68183"),
        "{warnings}"
    );
    assert!(run.stderr.contains("68183"), "{}", run.stderr);
    let status = live.sandbox.run(&["status"]).expect(0).stdout;
    assert!(status.contains("keeps object versions"), "{status}");
    let status = live
        .sandbox
        .run(&["status", "--output", "json"])
        .expect(0)
        .json();
    assert!(
        status["ledger"]["caveat"]
            .as_str()
            .is_some_and(|c| c.contains("68183")),
        "{status:#}"
    );
}

/// Runs killed with SIGKILL at random points (planning, applying, between the apply and
/// the ledger write) on the live catalogue with the ledger in RGW: after each, the next run
/// converges, the ledger in the bucket gives every LUN in place its number, and at the end
/// a rebuilt worker gets every number back.
#[test]
fn runs_killed_at_any_point_never_cost_a_lun_number() {
    const RUNS: u64 = 30;
    let Some(live) = Live::new(1000) else { return };
    // The stand-in targetctl rebuilds slowly, so kills land inside the apply too.
    live.sandbox.write("bin/restore-pause", "0.02");
    for id in ["k0", "k1", "k2"] {
        live.image(id, format!("rootfs {id}\n").as_bytes());
    }
    live.sandbox.run(&[]).expect(0);
    let mut seed: u64 = 20_261_206;
    let mut next = |below: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % below
    };
    let mut killed = 0;
    let mut listed: Vec<String> = Vec::new();
    for run in 0..RUNS {
        // A new image every run; now and then one of the earlier new ones goes.
        let id = format!("n{run:02}");
        live.image(&id, format!("rootfs {id}\n").as_bytes());
        listed.push(id);
        if next(3) == 0 && listed.len() > 1 {
            let gone = listed.remove(next(listed.len() as u64) as usize);
            live.list(&gone, Some(json!({"sbps-project": "false"})));
        }
        let mut child = live.sandbox.spawn(&["--output", "json"]);
        std::thread::sleep(std::time::Duration::from_millis(next(1000)));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed += 1;
        }
        let _ = child.wait();
        // The next run converges and leaves the ledger saying what is in place.
        live.sandbox.run(&[]).expect(0);
        let report = live.sandbox.run(&["--output", "json"]).expect(0).json();
        assert_eq!(report["changed"], json!(false), "run {run}: {report:#}");
        for p in report["projections"].as_array().unwrap() {
            let id = p["image_id"].as_str().unwrap_or_default();
            if p["action"] == json!("keep") {
                assert_eq!(ledger_lun(&live, id), p["lun"].as_u64(), "run {run}: {id}");
            }
        }
    }
    eprintln!("ledger kill loop: {RUNS} runs, {killed} killed");
    assert!(
        killed >= RUNS / 4,
        "too few kills to mean anything: {killed}"
    );
    let before = live.sandbox.run(&["--output", "json"]).expect(0).json();
    fs::remove_file(live.sandbox.saveconfig()).unwrap();
    fs::remove_file(live.sandbox.path("bin/kernel.json")).unwrap();
    let after = live.sandbox.run(&["--output", "json"]).expect(0).json();
    assert_eq!(luns_by_source(&after), luns_by_source(&before), "{after:#}");
}

/// A rolling upgrade: ledgers written by a newer version (a new field, a new entry kind, a
/// newer minor and a newer major) are read, numbered around, and kept as they were.
#[test]
fn ledgers_written_by_a_newer_version_are_read_numbered_around_and_kept() {
    let Some(live) = Live::new(1000) else { return };
    let bucket = live.s3.bucket.clone();
    let etag_a = live.image("a", b"rootfs a\n");
    let name_a =
        sbps_reconcile::identity::Identity::rootfs(&format!("s3://{bucket}/a/rootfs"), &etag_a)
            .name;
    // This target's ledger, by a newer minor: an unknown field, an entry of an unknown kind
    // holding LUN 0.
    let mine = json!({
        "schema_version": 1, "schema_minor": 4, "target": crate::util::model::IQN, "high_water": 0,
        "entries": {"fff0000000000000": {"lun": 0, "kind": "volume", "source": "s3://x/vol/1",
                                         "first_projected": 1, "pool": {"tier": 2}}},
        "written_by": {"tool": "sbps-reconcile", "version": "9.9.9"}});
    live.s3
        .put(&ledger_key(), &serde_json::to_vec_pretty(&mine).unwrap());
    // Another target's, by the same newer version: image a at LUN 5 (with a field this
    // version does not know), and an unknown kind at LUN 3.
    let theirs = json!({
        "schema_version": 1, "schema_minor": 4, "target": "iqn.2023-06.csm.iscsi:ncn-w002",
        "high_water": 5,
        "entries": {
            name_a.clone(): {"lun": 5, "kind": "rootfs", "source": format!("s3://{bucket}/a/rootfs"),
                             "first_projected": 1, "checksum": "sha256:00"},
            "eee0000000000000": {"lun": 3, "kind": "volume", "source": "s3://x/vol/2",
                                 "first_projected": 1}}});
    let theirs_key = "sbps-reconcile/luns/iqn.2023-06.csm.iscsi:ncn-w002.json";
    let theirs_bytes = serde_json::to_vec_pretty(&theirs).unwrap();
    live.s3.put(theirs_key, &theirs_bytes);
    let run = live.sandbox.run(&["--output", "json"]).expect(0);
    let report = run.json();
    assert_eq!(
        report_lun(&report, "a"),
        Some(5),
        "the fleet's number: {report:#}"
    );
    assert_eq!(report["ledger"]["outcome"], json!("written"));
    assert_eq!(report["ledger"]["read_only"], Value::Null);
    assert!(
        run.stderr.contains("take no part in numbering"),
        "{}",
        run.stderr
    );
    let written: Value = serde_json::from_slice(&live.s3.get(&ledger_key()).unwrap()).unwrap();
    assert_eq!(
        written["entries"]["fff0000000000000"],
        mine["entries"]["fff0000000000000"]
    );
    assert_eq!(written["written_by"], mine["written_by"]);
    assert_eq!(written["schema_minor"], mine["schema_minor"]);
    assert_eq!(written["entries"][&name_a]["lun"], json!(5));
    // The newer ledger beside it is read, never written: byte for byte as it was.
    assert_eq!(live.s3.get(theirs_key).unwrap(), theirs_bytes);

    // A newer major version: the run goes on with the numbers it holds, and leaves it as it is.
    let mut major = written.clone();
    major["schema_version"] = json!(2);
    let major_bytes = serde_json::to_vec_pretty(&major).unwrap();
    live.s3.put(&ledger_key(), &major_bytes);
    live.image("b", b"rootfs b\n");
    let report = live.sandbox.run(&["--output", "json"]).expect(0).json();
    assert_eq!(report["applied"], json!(true), "{report:#}");
    let b = report_lun(&report, "b").unwrap();
    assert!(b != 0 && b != 5, "b took a number the ledger holds: {b}");
    assert_eq!(report["ledger"]["outcome"], json!("not_written"));
    assert!(
        report["ledger"]["read_only"]
            .as_str()
            .is_some_and(|why| why.contains("schema_version 2")),
        "{report:#}"
    );
    assert!(report["warnings"].to_string().contains("read-only"));
    assert_eq!(
        live.s3.get(&ledger_key()).unwrap(),
        major_bytes,
        "rewritten"
    );
}

/// The heartbeat: a ledger records the tool version and its last run, and a run writes it
/// again when its last write is `verify_interval` old, even with nothing to change; a no-op
/// between those times sends no PUT.
#[test]
fn a_ledger_is_written_again_as_a_heartbeat_and_not_in_between() {
    let Some(live) = Live::new(1000) else { return };
    live.image("a", b"rootfs a\n");
    live.sandbox.run(&[]).expect(0);
    let ledger: Value = serde_json::from_slice(&live.s3.get(&ledger_key()).unwrap()).unwrap();
    assert_eq!(ledger["tool_version"], json!(env!("CARGO_PKG_VERSION")));
    let last_run = ledger["last_run"].as_u64().expect("last_run");

    // Nothing to change, well within verify_interval: no PUT.
    live.s3.proxy.clear();
    let report = live.sandbox.run(&["--output", "json"]).expect(0).json();
    assert_eq!(report["ledger"]["outcome"], json!("unchanged"));
    assert!(ledger_puts(&live).is_empty());

    // Its last write two hours ago (the default verify_interval is one hour): written again,
    // with nothing else changed.
    let mut old = ledger.clone();
    old["last_run"] = json!(last_run - 7200);
    live.s3
        .put(&ledger_key(), &serde_json::to_vec_pretty(&old).unwrap());
    fs::remove_file(live.sandbox.path("cache/s3-cache.json")).unwrap();
    live.s3.proxy.clear();
    let report = live.sandbox.run(&["--output", "json"]).expect(0).json();
    assert_eq!(report["changed"], json!(false));
    assert_eq!(report["ledger"]["outcome"], json!("written"), "{report:#}");
    assert_eq!(ledger_puts(&live).len(), 1);
    let now: Value = serde_json::from_slice(&live.s3.get(&ledger_key()).unwrap()).unwrap();
    assert!(now["last_run"].as_u64().unwrap() >= last_run);
    assert_eq!(now["entries"], ledger["entries"]);
}

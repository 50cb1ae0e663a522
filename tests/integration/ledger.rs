//! The LUN ledger: numbers that survive a rebuild, are never handed to another image, agree
//! across the fleet, and a removal grace. The planner with a clock passed in, then the
//! binary with the ledger in a file and in a real bucket (Ceph RGW).

use crate::util::model::{luns_of, Snap, IQN};
use crate::util::sandbox::{luns_by_source, Sandbox};
use sbps_reconcile::identity::Identity;
use sbps_reconcile::ledger::{fleet_numbers, Ledger};
use sbps_reconcile::lio::SaveConfig;
use sbps_reconcile::plan::{plan, Action, Context, Plan};
use sbps_reconcile::policy::{HostFacts, Policy};
use sbps_reconcile::snapshot::MountEntry;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs;

/// A worker as the planner sees it: its configuration and its ledger, run after run.
struct Worker {
    policy: Policy,
    config: SaveConfig,
    ledger: Ledger,
    fleet: BTreeMap<String, u32>,
}

impl Worker {
    fn new(target_extra: &str, safety: &str) -> Worker {
        let text = format!(
            "target:\n  portals: [\"10.252.1.10:3260\"]\n  {target_extra}\n\
             lio:\n  ledger_file: /var/lib/sbps-reconcile/luns.json\n\
             catalogue:\n  mount: /mnt/bi\n  ims:\n    file: /dev/null\n\
             safety:\n  max_removals: 100\n{safety}"
        );
        let policy = Policy::from_yaml(&text, &HostFacts::from_hostname("ncn-w001"))
            .expect("test policy")
            .0;
        Worker {
            policy,
            config: SaveConfig::empty(),
            ledger: Ledger::empty(IQN),
            fleet: BTreeMap::new(),
        }
    }

    /// Plans at `now`, applies, and keeps the ledger the plan leaves (through its JSON, as
    /// a store would).
    fn run(&mut self, snap: &Snap, now: u64) -> Plan {
        let context = Context {
            running: None,
            ledger: Some(&self.ledger),
            fleet: Some(&self.fleet),
            now,
        };
        let plan = plan(&self.policy, &snap.0, &self.config, &context);
        self.config = plan.desired.clone();
        let next = plan
            .ledger
            .as_ref()
            .expect("a plan made with a ledger leaves one");
        self.ledger = Ledger::parse(&next.to_json(), IQN).expect("the ledger reads back");
        plan
    }

    /// A rebuild: `saveconfig.json` and the running target are gone, the ledger is not.
    fn rebuild(&mut self) {
        self.config = SaveConfig::empty();
    }

    fn lun(&self, key: &str) -> Option<u32> {
        luns_of(&self.config, key).first().copied()
    }
}

fn pe_snap(names: &[&str]) -> Snap {
    let mut snap = Snap::new();
    for name in names {
        snap.pe(&pe_key(name), 10);
    }
    snap
}

fn pe_key(name: &str) -> String {
    format!("PE/{name}.squashfs")
}

/// What a worker without a ledger gives the same history: the failure the ledger prevents.
fn without_ledger(history: &[&[&str]], rebuild_before_last: bool) -> BTreeMap<String, u32> {
    let policy = Worker::new("", "").policy;
    let mut config = SaveConfig::empty();
    for (n, names) in history.iter().enumerate() {
        if rebuild_before_last && n == history.len() - 1 {
            config = SaveConfig::empty();
        }
        config = plan(&policy, &pe_snap(names).0, &config, &Context::default()).desired;
    }
    let last = history.last().copied().unwrap_or_default();
    last.iter()
        .map(|name| {
            let lun = luns_of(&config, &pe_key(name)).first().copied();
            (name.to_string(), lun.unwrap_or(u32::MAX))
        })
        .collect()
}

#[test]
fn a_rebuilt_worker_gets_every_number_back() {
    let mut worker = Worker::new("", "");
    worker.run(&pe_snap(&["a", "b", "c"]), 100);
    worker.run(&pe_snap(&["b", "c"]), 200);
    worker.run(&pe_snap(&["b", "c", "d"]), 300);
    let before: Vec<Option<u32>> = ["b", "c", "d"]
        .iter()
        .map(|n| worker.lun(&pe_key(n)))
        .collect();
    assert_eq!(before, [Some(1), Some(2), Some(3)]);

    worker.rebuild();
    let plan = worker.run(&pe_snap(&["b", "c", "d"]), 400);
    assert_eq!(plan.count(Action::Add), 3);
    let after: Vec<Option<u32>> = ["b", "c", "d"]
        .iter()
        .map(|n| worker.lun(&pe_key(n)))
        .collect();
    assert_eq!(
        after, before,
        "a rebuild renumbered: initiators would read other images"
    );

    // Without the ledger the same history renumbers from 0: the CSM failure.
    let history: &[&[&str]] = &[
        &["a", "b", "c"],
        &["b", "c"],
        &["b", "c", "d"],
        &["b", "c", "d"],
    ];
    let fresh = without_ledger(history, true);
    assert_eq!(fresh["b"], 0, "{fresh:?}");
}

#[test]
fn an_index_freed_in_one_run_is_not_handed_out_in_the_next() {
    let mut worker = Worker::new("", "");
    worker.run(&pe_snap(&["a", "b", "c"]), 100);
    let plan = worker.run(&pe_snap(&["a", "b"]), 200);
    assert_eq!(plan.count(Action::Remove), 1);
    let freed = &worker.ledger.entries[&Identity::pe("boot-images", &pe_key("c")).name];
    assert_eq!((freed.lun, freed.removed), (2, Some(200)));
    assert_eq!(worker.ledger.high_water, Some(2));

    worker.run(&pe_snap(&["a", "b", "d"]), 300);
    assert_eq!(worker.lun(&pe_key("d")), Some(3), "LUN 2 was c's a run ago");
    // Without the ledger, d takes 2: initiators still holding c's LUN 2 read d.
    let history: &[&[&str]] = &[&["a", "b", "c"], &["a", "b"], &["a", "b", "d"]];
    assert_eq!(without_ledger(history, false)["d"], 2);

    // And an image back in the catalogue gets its own number back.
    worker.run(&pe_snap(&["a", "b", "c", "d"]), 400);
    assert_eq!(worker.lun(&pe_key("c")), Some(2));
}

#[test]
fn a_new_image_takes_the_number_the_fleet_gives_it_when_it_is_free_here() {
    // Another worker serves c at 7 and d at 1.
    let mut other = Ledger::empty("iqn.2023-06.csm.iscsi:ncn-w002");
    for (name, lun) in [("c", 7), ("d", 1)] {
        let mut elsewhere = Worker::new("", "");
        elsewhere.run(&pe_snap(&[name]), 50);
        let mut entry = elsewhere.ledger.entries.into_values().next().unwrap();
        std::sync::Arc::make_mut(&mut entry).lun = lun;
        other
            .entries
            .insert(Identity::pe("boot-images", &pe_key(name)).name, entry);
    }
    let mut worker = Worker::new("", "");
    worker.fleet = fleet_numbers(&[other]);
    worker.run(&pe_snap(&["a", "b"]), 100);
    worker.run(&pe_snap(&["a", "b", "c", "d"]), 200);
    assert_eq!(worker.lun(&pe_key("c")), Some(7), "the fleet's number");
    // d's fleet number is taken here (b holds 1): d gets the next index never used here.
    assert_eq!(worker.lun(&pe_key("b")), Some(1));
    assert_eq!(worker.lun(&pe_key("d")), Some(2));
    assert_eq!(worker.ledger.high_water, Some(7));
    // A fleet number this target once used for another image is not taken.
    let mut elsewhere = Ledger::empty("iqn.2023-06.csm.iscsi:ncn-w002");
    let mut entry = worker.ledger.entries.values().next().unwrap().clone();
    std::sync::Arc::make_mut(&mut entry).lun = 2;
    elsewhere
        .entries
        .insert(Identity::pe("boot-images", &pe_key("e")).name, entry);
    worker.fleet = fleet_numbers(&[elsewhere]);
    worker.run(&pe_snap(&["a", "b", "c", "e"]), 300); // d goes: 2 is freed
    worker.run(&pe_snap(&["a", "b", "c", "e", "f"]), 400);
    assert_eq!(worker.lun(&pe_key("e")), Some(8), "2 was d's");
}

#[test]
fn past_max_lun_the_index_freed_longest_ago_is_taken() {
    let mut worker = Worker::new("max_lun: 2", "");
    worker.run(&pe_snap(&["a", "b", "c"]), 100);
    worker.run(&pe_snap(&["a", "c"]), 200); // frees 1
    worker.run(&pe_snap(&["a"]), 300); // frees 2
    worker.run(&pe_snap(&["a", "d"]), 400);
    assert_eq!(worker.lun(&pe_key("d")), Some(1), "1 was freed before 2");
    worker.run(&pe_snap(&["a", "d", "e"]), 500);
    assert_eq!(worker.lun(&pe_key("e")), Some(2));
    let plan = worker.run(&pe_snap(&["a", "d", "e", "f"]), 600);
    assert_eq!(plan.skipped.len(), 1, "no index left: {:?}", plan.skipped);
}

/// A rootfs image tagged in IMS, or (`tagged` false) no longer wanted while its file stays
/// in the mount.
fn rootfs_snap(images: &[(&str, bool)]) -> Snap {
    let mut snap = Snap::new();
    for (id, tagged) in images {
        if *tagged {
            snap.rootfs(id, &format!("cos-{id}"), &format!("etag-{id}"), 100);
        } else {
            snap.0
                .mount
                .insert(format!("{id}/rootfs"), MountEntry::File { size: 100 });
        }
    }
    snap
}

fn projection<'a>(plan: &'a Plan, id: &str) -> &'a sbps_reconcile::plan::Projection {
    let name = Identity::rootfs(
        &format!("s3://boot-images/{id}/rootfs"),
        &format!("etag-{id}"),
    )
    .name;
    plan.projections
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no projection of {id}: {:#?}", plan.projections))
}

#[test]
fn the_removal_grace_keeps_an_unwanted_lun_until_it_has_passed() {
    let mut worker = Worker::new("", "  removal_grace: 1h\n");
    worker.run(&rootfs_snap(&[("a", true), ("b", true), ("c", true)]), 1000);

    // b is no longer tagged but still in the mount; c's file is gone from it.
    let unwanted = rootfs_snap(&[("a", true), ("b", false)]);
    let plan = worker.run(&unwanted, 2000);
    let b = projection(&plan, "b");
    assert_eq!(
        (b.action, b.removal_pending_until),
        (Action::Keep, Some(5600))
    );
    assert_eq!(
        projection(&plan, "c").action,
        Action::Remove,
        "a file gone goes at once"
    );
    assert_eq!(
        b.images[0].name.as_deref(),
        Some("cos-b"),
        "named from the ledger"
    );

    // The grace runs from the first run that saw it unwanted, not from the last.
    let plan = worker.run(&unwanted, 5599);
    assert_eq!(projection(&plan, "b").removal_pending_until, Some(5600));
    let plan = worker.run(&unwanted, 5600);
    assert_eq!(projection(&plan, "b").action, Action::Remove);
    assert!(worker.lun("b/rootfs").is_none());

    // Wanted again within the grace: the clock starts over next time.
    let mut worker = Worker::new("", "  removal_grace: 1h\n");
    worker.run(&rootfs_snap(&[("a", true), ("b", true)]), 1000);
    worker.run(&rootfs_snap(&[("a", true), ("b", false)]), 2000);
    let plan = worker.run(&rootfs_snap(&[("a", true), ("b", true)]), 3000);
    assert_eq!(projection(&plan, "b").removal_pending_until, None);
    let plan = worker.run(&rootfs_snap(&[("a", true), ("b", false)]), 4000);
    assert_eq!(projection(&plan, "b").removal_pending_until, Some(7600));
}

// ---- the binary, ledger in a file ----

fn ledger_sandbox() -> Sandbox {
    let sandbox = Sandbox::new();
    sandbox.set_lio_extra(&format!(
        "  ledger_file: {}/var/luns.json\n",
        sandbox.root().display()
    ));
    sandbox.write_policy("", 10);
    sandbox
}

#[test]
fn a_file_ledger_is_written_only_once_the_target_is_as_planned() {
    let sandbox = ledger_sandbox();
    sandbox.add_image("a", "cos-a", "ea", b"rootfs a\n");
    let run = sandbox.run(&["--dry-run", "--output", "json"]).expect(0);
    assert_eq!(run.json()["ledger"]["outcome"], json!("not_written"));
    assert!(
        sandbox.read("var/luns.json").is_none(),
        "a dry run wrote the ledger"
    );

    let report = sandbox.run(&["--output", "json"]).expect(0).json();
    let place = sandbox.path("var/luns.json").display().to_string();
    assert_eq!(
        report["ledger"],
        json!({"place": place, "found": false, "fleet_targets": 0, "remembered": false, "outcome": "written", "bucket_versioning": null, "read_only": null})
    );
    let ledger: Value = serde_json::from_str(&sandbox.read("var/luns.json").unwrap()).unwrap();
    assert_eq!(ledger["schema_version"], json!(1));
    assert_eq!(ledger["target"], json!(IQN));
    assert_eq!(ledger["high_water"], json!(0));
    let entry = ledger["entries"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap();
    assert_eq!(entry["lun"], json!(0));
    assert_eq!(entry["source"], json!("s3://boot-images/a/rootfs"));
    assert_eq!(entry["images"], json!([{"id": "a", "name": "cos-a"}]));
    let run = sandbox.run(&["--output", "json"]).expect(0);
    assert_eq!(run.json()["ledger"]["outcome"], json!("unchanged"));
    assert!(run.stdout.contains("\"found\": true"));

    // A failed apply leaves the ledger as it was.
    let before = sandbox.read("var/luns.json").unwrap();
    sandbox.add_image("b", "cos-b", "eb", b"rootfs b\n");
    sandbox.stub("fail-restore", "2\n");
    let report = sandbox.run(&["--output", "json"]).expect(1).json();
    assert_eq!(report["error"]["kind"], json!("rolled_back"), "{report:#}");
    assert_eq!(report["ledger"]["outcome"], json!("not_written"));
    assert_eq!(sandbox.read("var/luns.json").unwrap(), before);
}

#[test]
fn a_rebuild_with_a_file_ledger_gives_the_same_numbers() {
    let sandbox = ledger_sandbox();
    for id in ["a", "b", "c"] {
        sandbox.add_image(id, &format!("cos-{id}"), &format!("e{id}"), id.as_bytes());
    }
    sandbox.run(&[]).expect(0);
    sandbox.remove_image("a");
    sandbox.add_image("d", "cos-d", "ed", b"d");
    let report = sandbox.run(&["--output", "json"]).expect(0).json();
    let before = luns_by_source(&report);
    assert_eq!(before.values().copied().collect::<Vec<_>>(), [1, 2, 3]);

    fs::remove_file(sandbox.saveconfig()).unwrap();
    fs::remove_file(sandbox.path("bin/kernel.json")).unwrap();
    let report = sandbox.run(&["--output", "json"]).expect(0).json();
    assert_eq!(report["summary"]["add"], json!(3));
    assert_eq!(luns_by_source(&report), before);
    let kernel = SaveConfig::parse(sandbox.read("bin/kernel.json").unwrap().as_bytes()).unwrap();
    let running: Vec<u32> = crate::util::model::luns(&kernel).into_values().collect();
    assert_eq!(running.len(), 3);
    assert!(running.iter().all(|i| (1..=3).contains(i)), "{running:?}");
}

#[test]
fn a_ledger_file_that_cannot_be_used_stops_the_run_before_anything_is_touched() {
    let sandbox = ledger_sandbox();
    sandbox.add_image("a", "cos-a", "ea", b"a");
    sandbox.run(&[]).expect(0);
    let saved = sandbox.read("etc/target/saveconfig.json").unwrap();
    let calls = sandbox.calls().len();
    sandbox.add_image("b", "cos-b", "eb", b"b");

    let good = sandbox.read("var/luns.json").unwrap();
    let mut shared: Value = serde_json::from_str(&good).unwrap();
    let entry = shared["entries"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    shared["entries"]["another"] = entry;
    let bad: [(&str, String, &str); 4] = [
        (
            "not JSON",
            "{\"schema_version\": 1,".to_string(),
            "it is not a ledger",
        ),
        ("shared index", shared.to_string(), "both hold LUN 0"),
        (
            "another target",
            good.replace(IQN, "iqn.2023-06.csm.iscsi:ncn-w009"),
            "ncn-w009",
        ),
        // A newer major version is read-only, not refused (issue 22; see ledger_writes.rs).
        (
            "no schema",
            good.replace("\"schema_version\": 1", "\"schema_version\": 0"),
            "schema_version is 0",
        ),
    ];
    for (what, content, says) in bad {
        sandbox.write("var/luns.json", &content);
        let run = sandbox.run(&["--output", "json"]).expect(1);
        let report = run.json();
        assert_eq!(report["error"]["kind"], json!("source"), "{what}");
        let message = report["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("luns.json") && message.contains(says),
            "{what}: {message}"
        );
        assert!(
            run.stderr.contains("nothing touched"),
            "{what}: {}",
            run.stderr
        );
        assert_eq!(sandbox.read("var/luns.json").unwrap(), content, "{what}");
    }
    fs::remove_file(sandbox.path("var/luns.json")).unwrap();
    fs::create_dir(sandbox.path("var/luns.json")).unwrap();
    let run = sandbox.run(&["--output", "json"]).expect(1);
    assert!(
        run.stderr.contains("cannot read the LUN ledger"),
        "{}",
        run.stderr
    );
    assert_eq!(sandbox.read("etc/target/saveconfig.json").unwrap(), saved);
    assert_eq!(sandbox.calls().len(), calls, "targetctl was called");
}

#[test]
fn status_and_explain_name_a_lun_from_the_ledger_once_ims_forgot_it() {
    let sandbox = ledger_sandbox();
    sandbox.add_image("a", "cos-a", "ea", b"a");
    sandbox.run(&[]).expect(0);
    // IMS forgot the image; the file is still there, the next run would remove it.
    sandbox.remove_image("a");
    let status = sandbox
        .run(&["status", "--output", "json"])
        .expect(0)
        .json();
    let lun = &status["luns"][0];
    assert_eq!(lun["next_run"], json!("remove"));
    assert_eq!(
        lun["images"],
        json!([{"id": "a", "name": "cos-a"}]),
        "{status:#}"
    );
    assert_eq!(status["ledger"]["found"], json!(true));
    let text = sandbox.run(&["status"]).expect(0).stdout;
    assert!(text.contains("cos-a"), "{text}");
    let report = sandbox
        .run(&["--dry-run", "--allow-removals", "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(report["projections"][0]["image_name"], json!("cos-a"));
    for query in ["a", "cos-a", "s3://boot-images/a/rootfs"] {
        let explained = sandbox
            .run(&["explain", query, "--output", "json"])
            .expect(0)
            .json();
        let e = &explained[0];
        assert_eq!(
            e["steps"][0]["rule"],
            json!("LUN ledger"),
            "{query}: {explained:#}"
        );
        assert_eq!(e["lun"], json!(0));
        assert_eq!(e["verdict"], json!("LUN 0 now; the next run removes it"));
        assert_eq!(e["identity"]["name"], lun["name"]);
        assert_eq!(e["identity"]["wwn"], lun["wwn"]);
    }
    let text = sandbox.run(&["explain", "cos-a"]).expect(0).stdout;
    assert!(
        text.contains("the LUN ledger remembers it: LUN 0"),
        "{text}"
    );
    sandbox.run(&["explain", "never-was"]).expect(1);
}

// ---- the binary, ledger in a real bucket ----

#[cfg(feature = "live")]
mod bucket {
    use super::luns_by_source;
    use crate::live::Live;
    use crate::util::model::IQN;
    use serde_json::{json, Value};
    use std::fs;

    fn ledger_key(iqn: &str) -> String {
        format!("sbps-reconcile/luns/{iqn}.json")
    }

    fn unlist(live: &Live, id: &str) {
        live.records
            .lock()
            .unwrap()
            .retain(|r| r["id"] != json!(id));
    }

    fn bucket_ledger(live: &Live, iqn: &str) -> Value {
        let bytes = live
            .s3
            .get(&ledger_key(iqn))
            .expect("a ledger in the bucket");
        serde_json::from_slice(&bytes).unwrap()
    }

    /// `sources` of the report, in LUN order.
    fn numbers(report: &Value) -> Vec<(String, u64)> {
        let mut found: Vec<(String, u64)> = luns_by_source(report)
            .into_iter()
            .map(|(source, lun)| (source.rsplit('/').nth(1).unwrap().to_string(), lun))
            .collect();
        found.sort_by_key(|(_, lun)| *lun);
        found
    }

    fn pairs(list: &[(&str, u64)]) -> Vec<(String, u64)> {
        list.iter().map(|(n, l)| (n.to_string(), *l)).collect()
    }

    /// a and b, then a goes and c comes: b at 1, c at 2.
    fn history(live: &Live) {
        live.image("a", b"rootfs a\n");
        live.image("b", b"rootfs b\n");
        live.sandbox.run(&[]).expect(0);
        unlist(live, "a");
        live.image("c", b"rootfs c\n");
        let report = live.sandbox.run(&["--output", "json"]).expect(0).json();
        assert_eq!(numbers(&report), pairs(&[("b", 1), ("c", 2)]));
    }

    #[test]
    fn a_rebuilt_worker_gets_its_numbers_back_from_the_bucket() {
        let Some(live) = Live::new(1000) else { return };
        history(&live);
        let ledger = bucket_ledger(&live, IQN);
        assert_eq!(ledger["high_water"], json!(2));
        // The first write created it (If-None-Match: *), the next replaced what was read.
        let puts: Vec<_> = live
            .s3
            .proxy
            .requests()
            .into_iter()
            .filter(|r| r.method == "PUT" && r.target.contains("/sbps-reconcile/luns/"))
            .collect();
        assert_eq!(puts.len(), 2, "{puts:#?}");
        assert_eq!(puts[0].header("if-none-match"), Some("*"));
        assert!(puts[1].header("if-match").is_some_and(|e| !e.is_empty()));

        fs::remove_file(live.sandbox.saveconfig()).unwrap();
        fs::remove_file(live.sandbox.path("bin/kernel.json")).unwrap();
        let report = live.sandbox.run(&["--output", "json"]).expect(0).json();
        assert_eq!(report["summary"]["add"], json!(2));
        assert_eq!(numbers(&report), pairs(&[("b", 1), ("c", 2)]));
        assert_eq!(report["ledger"]["outcome"], json!("unchanged"));

        // A number freed in one run is not handed out in the next.
        unlist(&live, "c");
        live.sandbox.run(&[]).expect(0);
        live.image("d", b"rootfs d\n");
        let report = live.sandbox.run(&["--output", "json"]).expect(0).json();
        assert_eq!(numbers(&report), pairs(&[("b", 1), ("d", 3)]));
    }

    /// Requests to the ledgers' prefix (listings of it, GETs and PUTs under it) since the
    /// proxy was last cleared.
    fn ledger_requests(live: &Live) -> Vec<String> {
        live.s3
            .proxy
            .requests()
            .into_iter()
            .map(|r| format!("{} {}", r.method, r.target))
            .filter(|r| r.contains("sbps-reconcile/luns/") || r.contains("sbps-reconcile%2Fluns"))
            .collect()
    }

    #[test]
    fn a_run_that_changes_nothing_does_not_ask_the_bucket_for_ledgers() {
        let Some(live) = Live::new(1000) else { return };
        history(&live);
        live.s3.proxy.clear();
        let report = live.sandbox.run(&["--output", "json"]).expect(0).json();
        assert_eq!(report["changed"], json!(false));
        assert_eq!(report["ledger"]["remembered"], json!(true));
        assert_eq!(report["ledger"]["found"], json!(true));
        assert_eq!(report["ledger"]["outcome"], json!("unchanged"));
        assert_eq!(ledger_requests(&live), Vec::<String>::new());

        // A dry run that would number a new image reads the ledgers first.
        live.image("d", b"rootfs d\n");
        live.s3.proxy.clear();
        let report = live
            .sandbox
            .run(&["--dry-run", "--output", "json"])
            .expect(0)
            .json();
        assert_eq!(report["ledger"]["remembered"], json!(false));
        assert!(!ledger_requests(&live).is_empty());
        assert_eq!(numbers(&report), pairs(&[("b", 1), ("c", 2), ("d", 3)]));

        // A full verification reads the ledgers whatever the plan.
        unlist(&live, "d");
        let catalogue = live.catalogue_for(&live.sandbox, 1000);
        live.sandbox
            .write_policy_with("", 10, &format!("{catalogue}    verify_interval: 0\n"));
        live.s3.proxy.clear();
        let report = live.sandbox.run(&["--output", "json"]).expect(0).json();
        assert_eq!(report["changed"], json!(false), "{report:#}");
        // (from the whole bucket's listing, which holds them)
        assert_eq!(report["ledger"]["remembered"], json!(false));
    }

    #[test]
    fn targets_sharing_the_prefix_give_an_image_the_same_number() {
        let Some(live) = Live::new(1000) else { return };
        history(&live);

        // A second worker, new, with b and c in its mount.
        let worker = live.worker();
        worker.set_iqn("iqn.2023-06.csm.iscsi:ncn-w002");
        worker.write_policy_with("", 10, &live.catalogue_for(&worker, 1000));
        for id in ["b", "c"] {
            worker.write(&format!("mount/{id}/rootfs"), format!("rootfs {id}\n"));
        }
        let report = worker.run(&["--output", "json"]).expect(0).json();
        assert_eq!(numbers(&report), pairs(&[("b", 1), ("c", 2)]), "{report:#}");
        assert_eq!(report["ledger"]["fleet_targets"], json!(1));

        // A third one numbered before there was a ledger: its LUNs stay where they are, and
        // status says which differ from the fleet.
        let old = live.worker();
        old.set_iqn("iqn.2023-06.csm.iscsi:ncn-w003");
        for id in ["b", "c"] {
            old.write(&format!("mount/{id}/rootfs"), format!("rootfs {id}\n"));
        }
        let catalogue = live.catalogue_for(&old, 1000);
        old.write_policy_with("", 10, &format!("{catalogue}    ledger_prefix: \"\"\n"));
        let report = old.run(&["--output", "json"]).expect(0).json();
        assert_eq!(numbers(&report), pairs(&[("b", 0), ("c", 1)]));
        assert!(report["ledger"].is_null());
        old.write_policy_with("", 10, &catalogue);
        let status = old.run(&["status", "--output", "json"]).expect(0).json();
        let differs: Vec<(u64, u64)> = status["ledger"]["fleet_differs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["index"].as_u64().unwrap(),
                    d["fleet_index"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(differs, [(0, 1), (1, 2)], "{status:#}");
        let text = old.run(&["status"]).expect(0).stdout;
        assert!(
            text.contains("2 LUN(s) differ from the number the fleet gives"),
            "{text}"
        );
        let report = old.run(&["--output", "json"]).expect(0).json();
        assert_eq!(
            numbers(&report),
            pairs(&[("b", 0), ("c", 1)]),
            "a kept LUN moved"
        );
        assert_eq!(report["ledger"]["outcome"], json!("written"));
        let seeded = bucket_ledger(&live, "iqn.2023-06.csm.iscsi:ncn-w003");
        assert_eq!(seeded["high_water"], json!(1));
    }

    #[test]
    fn a_bucket_ledger_that_cannot_be_read_or_trusted_stops_the_run() {
        let Some(live) = Live::new(1000) else { return };
        live.image("a", b"rootfs a\n");
        live.sandbox.run(&[]).expect(0);
        let saved = live.sandbox.read("etc/target/saveconfig.json").unwrap();
        let calls = live.sandbox.calls().len();
        live.image("b", b"rootfs b\n");
        let key = ledger_key(IQN);
        let url = format!("s3://{}/{key}", live.s3.bucket);
        let good = String::from_utf8(live.s3.get(&key).unwrap()).unwrap();

        let refused = |what: &str, says: &str| {
            let run = live.sandbox.run(&["--output", "json"]).expect(1);
            let report = run.json();
            assert_eq!(report["error"]["kind"], json!("source"), "{what}");
            let message = report["error"]["message"].as_str().unwrap();
            assert!(
                message.contains(&url) && message.contains(says),
                "{what}: {message}"
            );
            assert_eq!(
                live.sandbox.read("etc/target/saveconfig.json").unwrap(),
                saved
            );
            assert_eq!(
                live.sandbox.calls().len(),
                calls,
                "{what}: targetctl was called"
            );
        };
        live.s3.put(&key, b"<html>502 Bad Gateway</html>");
        refused("not JSON", "it is not a ledger");
        live.s3.put(
            &key,
            good.replace(IQN, "iqn.2023-06.csm.iscsi:ncn-w009")
                .as_bytes(),
        );
        refused(
            "another target's",
            "it is the ledger of iqn.2023-06.csm.iscsi:ncn-w009",
        );
        live.s3.put(&key, good.as_bytes());
        live.s3.proxy.fail_requests_to("/sbps-reconcile/luns/");
        refused("unreadable", "cannot read the LUN ledger");
    }

    #[test]
    fn two_runs_racing_on_the_ledger_lose_nothing() {
        let Some(live) = Live::new(1000) else { return };
        live.image("a", b"rootfs a\n");
        live.sandbox.run(&[]).expect(0);
        // The same target on a second node (a move under way), with its own LIO.
        let other = live.worker();
        other.write_policy_with("", 10, &live.catalogue_for(&other, 1000));
        other.write("mount/a/rootfs", "rootfs a\n");

        // Run 1 plans b, and waits in its apply.
        live.image("b", b"rootfs b\n");
        live.sandbox.stub("wait-restore", "all\n");
        let first = std::process::Command::new(env!("CARGO_BIN_EXE_sbps-reconcile"))
            .arg("--policy")
            .arg(live.sandbox.path("policy.yaml"))
            .args(["--output", "json"])
            .env_remove("JOURNAL_STREAM")
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let waiting = live.sandbox.path("bin/restore-waiting");
        for _ in 0..1200 {
            if waiting.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(waiting.exists(), "the first run never reached its apply");

        // Run 2, on the other node, sees c too and writes the ledger first.
        live.image("c", b"rootfs c\n");
        for id in ["b", "c"] {
            other.write(&format!("mount/{id}/rootfs"), format!("rootfs {id}\n"));
        }
        let report = other.run(&["--output", "json"]).expect(0).json();
        assert_eq!(report["ledger"]["outcome"], json!("written"));
        let winner = live.s3.get(&ledger_key(IQN)).unwrap();

        live.sandbox.write("bin/restore-go", "");
        let output = first.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{stderr}");
        let report: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(report["applied"], json!(true));
        assert_eq!(report["ledger"]["outcome"], json!("conflict"), "{stderr}");
        assert!(
            stderr.contains("changed since this run read it"),
            "{stderr}"
        );
        assert_eq!(
            live.s3.get(&ledger_key(IQN)).unwrap(),
            winner,
            "the loser overwrote the winner's ledger"
        );
        let conflict = live
            .s3
            .proxy
            .requests()
            .into_iter()
            .filter(|r| r.method == "PUT" && r.target.contains("/sbps-reconcile/luns/"))
            .count();
        assert_eq!(conflict, 3, "one PUT per run that changed the ledger");

        // The next run plans again against the winner's ledger: c gets the number the
        // other node gave it.
        fs::remove_file(live.sandbox.path("bin/wait-restore")).unwrap();
        live.sandbox.write("mount/c/rootfs", "rootfs c\n");
        let report = live.sandbox.run(&["--output", "json"]).expect(0).json();
        let numbers_here = numbers(&report);
        let ledger: Value = serde_json::from_slice(&winner).unwrap();
        for (id, lun) in &numbers_here {
            let entry = ledger["entries"]
                .as_object()
                .unwrap()
                .values()
                .find(|e| {
                    e["source"]
                        .as_str()
                        .unwrap()
                        .ends_with(&format!("/{id}/rootfs"))
                })
                .unwrap();
            assert_eq!(entry["lun"].as_u64(), Some(*lun), "{id}: {numbers_here:?}");
        }
        assert_eq!(numbers_here.len(), 3);
    }

    #[test]
    fn the_removal_grace_keeps_a_lun_until_the_ledger_says_it_has_passed() {
        let Some(live) = Live::new(1000) else { return };
        live.sandbox.set_safety_extra("  removal_grace: 1h\n");
        live.write_policy(1000);
        for id in ["a", "b", "c"] {
            live.image(id, format!("rootfs {id}\n").as_bytes());
        }
        live.sandbox.run(&[]).expect(0);
        // b is untagged, its file stays; c's file is gone from the mount.
        live.list("b", Some(json!({})));
        unlist(&live, "c");
        fs::remove_file(live.sandbox.path("mount/c/rootfs")).unwrap();
        let run = live.sandbox.run(&["--output", "json"]).expect(0);
        let report = run.json();
        let by_source = |report: &Value, id: &str| -> Value {
            report["projections"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| {
                    p["source"]
                        .as_str()
                        .unwrap()
                        .ends_with(&format!("/{id}/rootfs"))
                })
                .cloned()
                .unwrap()
        };
        let b = by_source(&report, "b");
        assert_eq!(b["action"], json!("keep"), "{report:#}");
        let until = b["removal_pending_until"].as_u64().unwrap();
        assert_eq!(by_source(&report, "c")["action"], json!("remove"));
        let text = live.sandbox.run(&[]).expect(0).stdout;
        assert!(text.contains("removal pending until"), "{text}");

        // The grace started with the run that first saw b unwanted: move that back an hour.
        let mut ledger = bucket_ledger(&live, IQN);
        let entry = ledger["entries"]
            .as_object_mut()
            .unwrap()
            .values_mut()
            .find(|e| e["source"].as_str().unwrap().ends_with("/b/rootfs"))
            .unwrap();
        let since = entry["unwanted_since"].as_u64().unwrap();
        assert_eq!(since + 3600, until);
        entry["unwanted_since"] = json!(since - 3600);
        live.s3.put(&ledger_key(IQN), ledger.to_string().as_bytes());
        // A run with nothing to change plans with the ledger as this worker wrote it: a hand
        // edit can only delay a removal until the next full verification, never bring one.
        let report = live.sandbox.run(&["--output", "json"]).expect(0).json();
        assert_eq!(by_source(&report, "b")["action"], json!("keep"));
        assert_eq!(report["ledger"]["remembered"], json!(true));
        // Without the cache the run verifies everything, the ledger with it.
        fs::remove_file(live.sandbox.path("cache/s3-cache.json")).unwrap();
        let report = live.sandbox.run(&["--output", "json"]).expect(0).json();
        assert_eq!(
            by_source(&report, "b")["action"],
            json!("remove"),
            "{report:#}"
        );
        assert_eq!(report["ledger"]["remembered"], json!(false));
    }
}

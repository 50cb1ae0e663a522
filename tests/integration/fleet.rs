//! `fleet` on the S3 server of record (Ceph RGW): three targets sharing the ledger prefix,
//! the matrix, a disagreement (exit 2), a stale target, a corrupt ledger named while the
//! others are shown (exit 1).

use crate::live::Live;
use crate::util::sandbox::Sandbox;
use serde_json::{json, Value};

const W2: &str = "iqn.2023-06.csm.iscsi:ncn-w002";
const W3: &str = "iqn.2023-06.csm.iscsi:ncn-w003";

fn worker(live: &Live, iqn: &str) -> Sandbox {
    let worker = live.worker();
    worker.set_iqn(iqn);
    worker.write_policy_with("", 10, &live.catalogue_for(&worker, 1000));
    worker
}

/// The image's row in `fleet --output json`, by image name.
fn row<'a>(fleet: &'a Value, name: &str) -> &'a Value {
    fleet["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == json!(name))
        .unwrap_or_else(|| panic!("no row for {name}: {fleet:#}"))
}

fn marks(fleet: &Value, name: &str) -> Vec<String> {
    row(fleet, name)["marks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_fleet_matrix_its_disagreements_a_stale_target_and_a_corrupt_ledger() {
    let Some(live) = Live::new(1000) else { return };
    let w2 = worker(&live, W2);
    let w3 = worker(&live, W3);
    let all = [&live.sandbox, &w2, &w3];
    for id in ["a", "b"] {
        live.image(id, format!("rootfs {id}\n").as_bytes());
        for node in &all[1..] {
            node.write(&format!("mount/{id}/rootfs"), format!("rootfs {id}\n"));
        }
    }
    for node in all {
        node.run(&[]).expect(0);
    }

    // Every target serves a and b at the same numbers: exit 0.
    let run = w3.run(&["fleet", "--output", "json"]).expect(0);
    let fleet = run.json();
    assert_eq!(fleet["schema_version"], json!(1));
    assert_eq!(fleet["agree"], json!(true), "{fleet:#}");
    let targets: Vec<&str> = fleet["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets, [crate::util::model::IQN, W2, W3]);
    for t in fleet["targets"].as_array().unwrap() {
        assert_eq!(t["luns"], json!(2));
        assert_eq!(t["stale"], json!(false));
        assert_eq!(t["tool_version"], json!(env!("CARGO_PKG_VERSION")));
    }
    let a = row(&fleet, "image-a");
    assert_eq!(a["luns"].as_object().unwrap().len(), 3);
    let lun_a = a["luns"][W2]["lun"].clone();
    assert!(a["luns"]
        .as_object()
        .unwrap()
        .values()
        .all(|l| l["lun"] == lun_a));
    let text = live.sandbox.run(&["fleet"]).expect(0).stdout;
    assert!(
        text.contains("Targets (3):") && text.contains("image-a"),
        "{text}"
    );
    assert!(text.contains("0 at different LUN numbers"), "{text}");

    // c comes, and only two targets run; d is tagged but in no mount: exit 2.
    live.image("c", b"rootfs c\n");
    w2.write("mount/c/rootfs", "rootfs c\n");
    live.image("d", b"rootfs d\n");
    std::fs::remove_file(live.sandbox.path("mount/d/rootfs")).unwrap();
    live.sandbox.run(&[]).expect(0);
    w2.run(&[]).expect(0);
    let fleet = live
        .sandbox
        .run(&["fleet", "--output", "json"])
        .expect(2)
        .json();
    assert_eq!(fleet["agree"], json!(false));
    assert_eq!(marks(&fleet, "image-c"), ["not_everywhere"]);
    assert_eq!(marks(&fleet, "image-d"), ["tagged_not_served"]);
    assert!(row(&fleet, "image-d")["identity"].is_null());
    assert_eq!(marks(&fleet, "image-a"), Vec::<String>::new());
    let text = live.sandbox.run(&["fleet"]).expect(2).stdout;
    assert!(text.contains("1 not on every target (~)"), "{text}");
    assert!(
        text.contains("1 tagged in IMS and served by none (?)"),
        "{text}"
    );

    // w3's last run three hours ago: a worker whose timer stopped.
    let key = format!("sbps-reconcile/luns/{W3}.json");
    let mut ledger: Value = serde_json::from_slice(&live.s3.get(&key).unwrap()).unwrap();
    ledger["last_run"] = json!(ledger["last_run"].as_u64().unwrap() - 3 * 3600);
    live.s3
        .put(&key, &serde_json::to_vec_pretty(&ledger).unwrap());
    let fleet = live
        .sandbox
        .run(&["fleet", "--output", "json"])
        .expect(2)
        .json();
    let stale: Vec<bool> = fleet["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["stale"].as_bool().unwrap())
        .collect();
    assert_eq!(stale, [false, false, true], "{fleet:#}");
    assert!(live.sandbox.run(&["fleet"]).stdout.contains("STALE"));

    // A corrupt ledger beside them: named, the rest still shown, exit 1.
    live.s3.put(
        "sbps-reconcile/luns/iqn.2023-06.csm.iscsi:ncn-w004.json",
        b"<html>502 Bad Gateway</html>",
    );
    let run = live.sandbox.run(&["fleet", "--output", "json"]).expect(1);
    let fleet = run.json();
    let broken: Vec<&Value> = fleet["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| !t["error"].is_null())
        .collect();
    assert_eq!(broken.len(), 1, "{fleet:#}");
    assert!(broken[0]["place"]
        .as_str()
        .unwrap()
        .ends_with("ncn-w004.json"));
    assert!(broken[0]["error"]
        .as_str()
        .unwrap()
        .contains("not a ledger"));
    assert_eq!(row(&fleet, "image-a")["luns"].as_object().unwrap().len(), 3);
    assert!(run.stderr.contains("ncn-w004.json"), "{}", run.stderr);
    let text = live.sandbox.run(&["fleet"]).expect(1).stdout;
    assert!(text.contains("UNREADABLE ledger"), "{text}");
}

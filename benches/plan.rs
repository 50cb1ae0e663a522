//! Planner cost at catalogue scale: `cargo bench --bench plan`.
//!
//! Builds snapshots of N tagged rootfs images plus N/10 PE objects, against a current
//! configuration that already holds half of them, and reports the median wall time of the
//! plan, of the canonical JSON, and of the unified diff. Figures, not assertions.

use sbps_reconcile::image::{ImageEntry, ImageRecord, Metadata, MetadataValue};
use sbps_reconcile::lio::SaveConfig;
use sbps_reconcile::manifest::RootfsArtifact;
use sbps_reconcile::policy::{HostFacts, Policy};
use sbps_reconcile::snapshot::{ManifestRead, MountEntry, PeObject, Snapshot};
use std::time::{Duration, Instant};

fn snapshot(n: usize) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for i in 0..n {
        let id = format!("{i:08x}-0000-4000-8000-000000000000");
        snapshot.images.push(ImageEntry::Valid(ImageRecord {
            id: id.clone(),
            name: format!("image-{i}"),
            link_path: Some(format!("s3://boot-images/{id}/manifest.json")),
            metadata: Metadata::Map(
                [(
                    "sbps-project".to_string(),
                    MetadataValue::Text("true".into()),
                )]
                .into_iter()
                .collect(),
            ),
        }));
        snapshot.manifests.insert(
            format!("{id}/manifest.json"),
            ManifestRead::Rootfs(RootfsArtifact {
                path: format!("s3://boot-images/{id}/rootfs"),
                etag: format!("{i:032x}-4"),
            }),
        );
        snapshot
            .mount
            .insert(format!("{id}/rootfs"), MountEntry::File { size: 1 << 30 });
    }
    for i in 0..n / 10 {
        let key = format!("PE/pe-{i}.squashfs");
        snapshot.pe_objects.push(PeObject {
            key: key.clone(),
            size: 1 << 28,
            etag: None,
            mtime: None,
        });
        snapshot
            .mount
            .insert(key, MountEntry::File { size: 1 << 28 });
    }
    snapshot
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(f());
                start.elapsed()
            })
            .collect(),
    )
}

fn main() {
    let text = "target:\n  portals: [\"10.252.1.10:3260\"]\n  max_lun: 65535\n\
                catalogue:\n  mount: /var/lib/cps-local/boot-images\n  ims:\n    file: /x\n";
    let (policy, _) = Policy::from_yaml(text, &HostFacts::from_hostname("ncn-w001")).unwrap();
    println!(
        "{:>7} {:>12} {:>14} {:>12} {:>12} {:>12} {:>14}",
        "images", "plan", "canonical", "diff", "cold diff", "no-op plan", "with ledger"
    );
    for n in [1_000, 5_000] {
        let full = snapshot(n);
        // The current configuration: the plan of half the catalogue, applied.
        let mut half = full.clone();
        half.images.truncate(n / 2);
        let current =
            sbps_reconcile::plan::plan(&policy, &half, &SaveConfig::empty(), &Default::default())
                .desired;
        let plan_time = time(5, || {
            sbps_reconcile::plan::plan(&policy, &full, &current, &Default::default())
        });
        let plan = sbps_reconcile::plan::plan(&policy, &full, &current, &Default::default());
        let current_text = current.to_canonical();
        let canonical_time = time(5, || plan.desired.to_canonical());
        let desired_text = plan.desired.to_canonical();
        let diff_time = time(3, || {
            sbps_reconcile::diff::unified(&current_text, &desired_text)
        });
        let empty_text = SaveConfig::empty().to_canonical();
        let cold_desired =
            sbps_reconcile::plan::plan(&policy, &full, &SaveConfig::empty(), &Default::default())
                .desired
                .to_canonical();
        let cold_diff_time = time(3, || {
            sbps_reconcile::diff::unified(&empty_text, &cold_desired)
        });
        let noop_time = time(5, || {
            sbps_reconcile::plan::plan(&policy, &full, &plan.desired, &Default::default())
        });
        assert!(
            !sbps_reconcile::plan::plan(&policy, &full, &plan.desired, &Default::default()).changed
        );
        // The same no-op with the target's LUN ledger, as a live run plans it.
        let empty = sbps_reconcile::ledger::Ledger::empty(&policy.target.iqn);
        let with_ledger = |ledger| sbps_reconcile::plan::Context {
            ledger: Some(ledger),
            now: 1_000_000,
            ..Default::default()
        };
        let ledger =
            sbps_reconcile::plan::plan(&policy, &full, &plan.desired, &with_ledger(&empty))
                .ledger
                .unwrap();
        let ledger_time = time(5, || {
            sbps_reconcile::plan::plan(&policy, &full, &plan.desired, &with_ledger(&ledger))
        });
        println!(
            "{:>7} {:>10.1}ms {:>12.1}ms {:>10.1}ms {:>10.1}ms {:>10.1}ms {:>12.1}ms",
            n + n / 10,
            plan_time.as_secs_f64() * 1e3,
            canonical_time.as_secs_f64() * 1e3,
            diff_time.as_secs_f64() * 1e3,
            cold_diff_time.as_secs_f64() * 1e3,
            noop_time.as_secs_f64() * 1e3,
            ledger_time.as_secs_f64() * 1e3
        );
    }
}

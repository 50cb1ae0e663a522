//! Planner properties over random catalogues that change from run to run (proptest): what
//! an initiator holds must never be taken from it while the image is still wanted.

use crate::util::model::{luns, policy, Snap};
use proptest::prelude::*;
use sbps_reconcile::identity::Identity;
use sbps_reconcile::lio::SaveConfig;
use sbps_reconcile::plan::{plan, Action};
use std::collections::{BTreeMap, BTreeSet};

/// One image of a catalogue: its etag version and size, tagged or not.
#[derive(Debug, Clone)]
struct Image {
    version: u8,
    size: u64,
    tagged: bool,
}

/// A catalogue: rootfs images by number, and PE objects by number with their size.
#[derive(Debug, Clone)]
struct Catalogue {
    images: BTreeMap<u8, Image>,
    pe: BTreeMap<u8, u64>,
}

fn catalogue() -> impl Strategy<Value = Catalogue> {
    let image = (0u8..3, prop_oneof![Just(100u64), Just(200)], any::<bool>()).prop_map(
        |(version, size, tagged)| Image {
            version,
            size,
            tagged,
        },
    );
    (
        prop::collection::btree_map(0u8..12, image, 0..10),
        prop::collection::btree_map(0u8..6, prop_oneof![Just(10u64), Just(20)], 0..5),
    )
        .prop_map(|(images, pe)| Catalogue { images, pe })
}

fn snapshot(catalogue: &Catalogue) -> Snap {
    let mut snap = Snap::new();
    for (n, image) in &catalogue.images {
        if image.tagged {
            snap.rootfs(
                &format!("img-{n}"),
                &format!("cos-{n}"),
                &format!("etag-{n}-{}", image.version),
                image.size,
            );
        }
    }
    for (n, size) in &catalogue.pe {
        snap.pe(&format!("PE/pe-{n}.squashfs"), *size);
    }
    snap
}

/// The identities the catalogue asks for.
fn wanted(catalogue: &Catalogue) -> BTreeSet<String> {
    let rootfs = catalogue
        .images
        .iter()
        .filter(|(_, i)| i.tagged)
        .map(|(n, i)| {
            Identity::rootfs(
                &format!("s3://boot-images/img-{n}/rootfs"),
                &format!("etag-{n}-{}", i.version),
            )
            .name
        });
    let pe = catalogue
        .pe
        .keys()
        .map(|n| Identity::pe("boot-images", &format!("PE/pe-{n}.squashfs")).name);
    rootfs.chain(pe).collect()
}

/// Storage object name to wwn, in the policy's mount.
fn wwns(config: &SaveConfig) -> BTreeMap<String, String> {
    config
        .storage_objects()
        .iter()
        .filter_map(|so| {
            Some((
                so["name"].as_str()?.to_string(),
                so["wwn"].as_str()?.to_string(),
            ))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn luns_are_kept_never_reused_and_planning_twice_changes_nothing(
        runs in prop::collection::vec(catalogue(), 1..5),
    ) {
        let policy = policy("");
        let mut current = SaveConfig::empty();
        for catalogue in &runs {
            let snap = snapshot(catalogue);
            let plan = plan(&policy, &snap.0, &current, &Default::default());
            let want = wanted(catalogue);
            let before = luns(&current);
            let after = luns(&plan.desired);

            // A still-valid projection is never removed; every wanted one is placed.
            for p in plan.projections.iter().filter(|p| p.action == Action::Remove) {
                prop_assert!(!want.contains(&p.name), "removed a wanted projection: {p:?}");
            }
            let placed: BTreeSet<String> = after.keys().cloned().collect();
            prop_assert_eq!(&placed, &want);

            // A kept LUN keeps its index and its wwn.
            let (wwns_before, wwns_after) = (wwns(&current), wwns(&plan.desired));
            for (name, index) in &before {
                if let Some(now) = after.get(name) {
                    prop_assert_eq!(now, index, "{} moved", name);
                    prop_assert_eq!(wwns_after.get(name), wwns_before.get(name));
                }
            }

            // No index is handed out twice: not within the plan, and a new image never takes
            // an index the configuration held, even one freed in this very run (max_lun 255
            // is never reached here). Across runs that forget an index, see the ledger.
            let indices: Vec<u32> = after.values().copied().collect();
            let distinct: BTreeSet<u32> = indices.iter().copied().collect();
            prop_assert_eq!(indices.len(), distinct.len(), "an index twice: {:?}", after);
            let held: BTreeMap<u32, &String> = before.iter().map(|(n, i)| (*i, n)).collect();
            for (name, index) in &after {
                if let Some(holder) = held.get(index) {
                    prop_assert_eq!(*holder, name, "LUN {} handed to another image", index);
                }
            }

            // Applying, then planning again, changes nothing.
            let again = plan_again(&policy, &snap, &plan.desired);
            prop_assert!(!again, "planning the applied configuration again changes it");
            current = plan.desired;
        }
    }
}

fn plan_again(policy: &sbps_reconcile::policy::Policy, snap: &Snap, applied: &SaveConfig) -> bool {
    // Through the canonical text, as it is written and read back.
    let reread =
        SaveConfig::parse(applied.to_canonical().as_bytes()).expect("canonical text parses");
    plan(policy, &snap.0, &reread, &Default::default()).changed
}

/// A run on the same worker, or on the same worker rebuilt (configuration lost, ledger kept).
#[derive(Debug, Clone)]
enum Step {
    Run(Catalogue),
    Rebuild(Catalogue),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => catalogue().prop_map(Step::Run),
        1 => catalogue().prop_map(Step::Rebuild),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// With the ledger, across runs and rebuilds: an index once given to an image is never
    /// given to another one, and an image always gets the index it had (max_lun 255 is
    /// never reached here).
    #[test]
    fn with_the_ledger_an_index_means_one_image_for_ever(
        steps in prop::collection::vec(step(), 1..8),
    ) {
        use sbps_reconcile::ledger::Ledger;
        use sbps_reconcile::plan::Context;
        let policy = policy("");
        let mut current = SaveConfig::empty();
        let mut ledger = Ledger::empty(crate::util::model::IQN);
        let mut image_of: BTreeMap<u32, String> = BTreeMap::new();
        let mut index_of: BTreeMap<String, u32> = BTreeMap::new();
        for (n, step) in steps.iter().enumerate() {
            let catalogue = match step {
                Step::Run(catalogue) => catalogue,
                Step::Rebuild(catalogue) => {
                    current = SaveConfig::empty();
                    catalogue
                }
            };
            let snap = snapshot(catalogue);
            let context = Context {
                ledger: Some(&ledger),
                now: 1000 + n as u64,
                ..Context::default()
            };
            let plan = plan(&policy, &snap.0, &current, &context);
            let after = luns(&plan.desired);
            prop_assert_eq!(&after.keys().cloned().collect::<BTreeSet<_>>(), &wanted(catalogue));
            for (name, index) in &after {
                if let Some(holder) = image_of.get(index) {
                    prop_assert_eq!(holder, name, "LUN {} handed to another image", index);
                }
                if let Some(had) = index_of.get(name) {
                    prop_assert_eq!(had, index, "{} renumbered", name);
                }
                image_of.insert(*index, name.clone());
                index_of.insert(name.clone(), *index);
            }
            // The ledger goes through its JSON, as a store keeps it.
            let next = plan.ledger.as_ref().expect("a ledger");
            ledger = Ledger::parse(&next.to_json(), crate::util::model::IQN)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            current = plan.desired;
        }
    }
}

//! Golden cases: `tests/cases/<name>/{policy.yaml, snapshot.json, current.json}` in,
//! `expected.json` (the desired saveconfig.json) and `expected.txt` (the text report a dry
//! run prints, built by the same function the binary uses) out.
//! `SBPS_BLESS=1 cargo test golden` rewrites the expected files; review them in git.

use sbps_reconcile::lio::SaveConfig;
use sbps_reconcile::plan::plan;
use sbps_reconcile::policy::{HostFacts, Policy};
use sbps_reconcile::report::Report;
use sbps_reconcile::snapshot::Snapshot;
use std::fs;
use std::path::Path;

#[test]
fn golden_cases() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases");
    let bless = std::env::var_os("SBPS_BLESS").is_some();
    let mut cases: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert!(cases.len() >= 5, "golden cases went missing: {cases:?}");
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let read = |file: &str| {
            fs::read_to_string(case.join(file)).unwrap_or_else(|e| panic!("{name}/{file}: {e}"))
        };
        let (policy, _) =
            Policy::from_yaml(&read("policy.yaml"), &HostFacts::from_hostname("ncn-w001"))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        let snapshot: Snapshot =
            serde_json::from_str(&read("snapshot.json")).unwrap_or_else(|e| panic!("{name}: {e}"));
        let current = match fs::read(case.join("current.json")) {
            Ok(bytes) => SaveConfig::parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}")),
            Err(_) => SaveConfig::empty(),
        };
        let plan = plan(&policy, &snapshot, &current, &Default::default());
        let json = plan.desired.to_canonical();
        let text = Report::of_plan(
            &policy,
            &snapshot,
            &current,
            false,
            &plan,
            true,
            Default::default(),
        )
        .to_text();
        if bless {
            fs::write(case.join("expected.json"), &json).unwrap();
            fs::write(case.join("expected.txt"), &text).unwrap();
            continue;
        }
        for (file, got) in [("expected.json", &json), ("expected.txt", &text)] {
            let want = read(file);
            if &want != got {
                failures.push(format!(
                    "{name}/{file}:\n{}",
                    sbps_reconcile::diff::unified(&want, got)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "golden cases differ (SBPS_BLESS=1 to rewrite):\n{}",
        failures.join("\n")
    );
}

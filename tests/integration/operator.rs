//! What operators meet: journal priorities, metrics, status, explain, completions, man
//! pages, progress, and the migration from the old agent.

use crate::util::repo;
use crate::util::sandbox::{manifest, Run, Sandbox};
use sbps_reconcile::identity::Identity;
use sbps_reconcile::policy::{HostFacts, Policy};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Two good images, a PE image and one manifest without an etag.
fn catalogue() -> Sandbox {
    let sandbox = Sandbox::new();
    sandbox.add_image("img-a", "cos-a", "etag-a", b"rootfs a\n");
    sandbox.add_image("img-b", "cos-b", "etag-b", b"rootfs b\n");
    sandbox.add_image("img-bad", "cos-bad", "x", b"rootfs bad\n");
    sandbox.write(
        "mount/img-bad/manifest.json",
        manifest("s3://boot-images/img-bad/rootfs", None),
    );
    sandbox.write("mount/PE/CPE-base.x86_64-24.11.squashfs", "pe image\n");
    sandbox
}

/// One native journal entry: its fields, in the protocol's two forms (`NAME=value\n`, and
/// `NAME\n<le64 length>value\n` for a value with a newline).
fn journal_fields(mut datagram: &[u8]) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    while !datagram.is_empty() {
        let end = datagram.iter().position(|&b| b == b'\n').unwrap();
        let line = &datagram[..end];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.insert(
                String::from_utf8(line[..eq].to_vec()).unwrap(),
                String::from_utf8(line[eq + 1..].to_vec()).unwrap(),
            );
            datagram = &datagram[end + 1..];
        } else {
            let name = String::from_utf8(line.to_vec()).unwrap();
            let rest = &datagram[end + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            let value = String::from_utf8(rest[8..8 + len].to_vec()).unwrap();
            assert_eq!(rest[8 + len], b'\n');
            fields.insert(name, value);
            datagram = &rest[9 + len..];
        }
    }
    fields
}

/// Under systemd each decision goes to the journal's socket with fields to query it by, and
/// nothing is printed twice on stderr.
#[test]
fn under_systemd_decisions_carry_journal_fields() {
    let sandbox = catalogue();
    let socket_path = sandbox.path("run/journal.socket");
    fs::create_dir_all(socket_path.parent().unwrap()).unwrap();
    let journal = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    journal.set_nonblocking(true).unwrap();
    let run = sandbox
        .run_command(sandbox.command().env("JOURNAL_STREAM", "8:12345"))
        .expect(0);
    let mut entries = Vec::new();
    let mut buffer = vec![0u8; 1 << 16];
    while let Ok(n) = journal.recv(&mut buffer) {
        entries.push(journal_fields(&buffer[..n]));
    }
    assert!(entries.len() >= 4, "{entries:?}");
    // `journalctl -u sbps-reconcile REASON_CODE=missing_etag`
    let query = |field: &str, value: &str| -> Vec<&BTreeMap<String, String>> {
        entries
            .iter()
            .filter(|e| e.get(field).map(String::as_str) == Some(value))
            .collect()
    };
    let skipped = query("REASON_CODE", "missing_etag");
    assert_eq!(skipped.len(), 1, "{entries:?}");
    let entry = skipped[0];
    assert_eq!(entry["PRIORITY"], "4");
    assert_eq!(entry["SYSLOG_IDENTIFIER"], "sbps-reconcile");
    assert_eq!(entry["IMAGE_ID"], "img-bad");
    assert_eq!(entry["IMAGE_NAME"], "cos-bad");
    assert_eq!(entry["KIND"], "rootfs");
    assert!(
        entry["MESSAGE"].starts_with("skipped rootfs image \"cos-bad\" (id img-bad): missing_etag"),
        "{entry:?}"
    );
    // `journalctl -u sbps-reconcile IMAGE_ID=img-a`: its projection, with its LUN.
    let added = query("IMAGE_ID", "img-a");
    assert_eq!(added.len(), 1, "{entries:?}");
    assert_eq!(added[0]["ACTION"], "add");
    assert_eq!(added[0]["PRIORITY"], "6");
    assert!(added[0].contains_key("LUN"), "{:?}", added[0]);
    assert!(added[0].contains_key("STORAGE_OBJECT"), "{:?}", added[0]);
    // `journalctl -p warning`: exactly the skipped image.
    let warnings: Vec<_> = entries
        .iter()
        .filter(|e| e["PRIORITY"].parse::<u8>().unwrap() <= 4)
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        !run.stderr.contains("missing_etag"),
        "the journal has it; stderr must not repeat it: {}",
        run.stderr
    );
}

/// On a terminal the text report shows each decision once: no `info:` line repeats it.
#[test]
fn on_a_terminal_the_report_is_printed_once() {
    let sandbox = catalogue();
    let mut command = sandbox.command();
    command.arg("--dry-run");
    // `script` runs the command on a pseudo-terminal (stdout and stderr both).
    let line = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut script = Command::new("script");
    script
        .args(["-qec", &line, "/dev/null"])
        .current_dir(sandbox.root());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => script.env(key, value),
            None => script.env_remove(key),
        };
    }
    let run = sandbox
        .run_command(&mut assert_cmd::Command::from_std(script))
        .expect(0);
    let text = run.stdout.replace("\r\n", "\n");
    assert_eq!(
        text.matches("missing_etag").count(),
        1,
        "once, in the report's Skipped list:\n{text}"
    );
    assert_eq!(text.matches("+ add ").count(), 3, "{text}");
    assert!(!text.contains("info: "), "{text}");
    assert!(text.contains("Summary: "), "{text}");
}

#[test]
fn under_systemd_lines_carry_syslog_priorities() {
    let sandbox = catalogue();
    let run = sandbox.run_command(sandbox.command().env("JOURNAL_STREAM", "8:12345"));
    let run = run.expect(0);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert!(
        lines.iter().any(|l| l.starts_with(
            "<4>warning: skipped rootfs image \"cos-bad\" (id img-bad): missing_etag"
        )),
        "{}",
        run.stderr
    );
    assert!(
        lines.iter().any(|l| l.starts_with("<6>+ add ")),
        "{}",
        run.stderr
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<6>summary: applied: 3 added")),
        "{}",
        run.stderr
    );
    assert!(
        lines.iter().all(|l| l.starts_with('<')),
        "every line has a priority:\n{}",
        run.stderr
    );
    // At warning and above: exactly the skipped image.
    let warnings: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("<4>") || l.starts_with("<3>"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    // A failure is <3>.
    sandbox.add_image("img-c", "cos-c", "etag-c", b"rootfs c\n");
    sandbox.stub("fail-restore", "all\n");
    let run = sandbox
        .run_command(sandbox.command().env("JOURNAL_STREAM", "8:12345"))
        .expect(1);
    assert!(
        run.stderr
            .lines()
            .any(|l| l.starts_with("<3>error: ") && l.contains("restore")),
        "{}",
        run.stderr
    );
    // Kept projections are decisions too, at debug: a run does not list the catalogue.
    assert!(
        run.stderr.lines().all(|l| !l.contains("  keep ")),
        "{}",
        run.stderr
    );
    let run = sandbox
        .run_command(
            sandbox
                .command()
                .env("JOURNAL_STREAM", "8:12345")
                .args(["-v", "--dry-run"]),
        )
        .expect(0);
    assert!(
        run.stderr
            .lines()
            .any(|l| l.starts_with("<7>debug:   keep ")),
        "{}",
        run.stderr
    );
    // Outside systemd: no priorities.
    let run = sandbox.run(&["--dry-run"]).expect(0);
    assert!(
        run.stderr.lines().all(|l| !l.starts_with('<')),
        "{}",
        run.stderr
    );
}

/// Python with prometheus_client from the test venv (.ci/setup installs it).
fn prometheus_python() -> Option<PathBuf> {
    let venv = std::env::var_os("SBPS_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo("target/test-venv"));
    let python = venv.join("bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import prometheus_client.parser"])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "prometheus_client is not installed: run .ci/setup"
    );
    eprintln!("SKIPPED: prometheus_client not installed (run .ci/setup)");
    None
}

/// The samples of a metrics file, parsed by prometheus_client: "name{k=v,..}" to value.
fn parse_metrics(python: &Path, file: &Path) -> std::collections::BTreeMap<String, f64> {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
print(json.dumps(out))
"#;
    let output = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn metrics_are_written_for_the_textfile_collector() {
    let Some(python) = prometheus_python() else {
        return;
    };
    let sandbox = catalogue();
    let metrics = sandbox.path("metrics/sbps.prom");
    fs::create_dir_all(metrics.parent().unwrap()).unwrap();
    let arg = metrics.to_str().unwrap();
    sandbox.run(&["--metrics-file", arg]).expect(0);
    assert_eq!(
        fs::metadata(&metrics).unwrap().permissions().mode() & 0o777,
        0o644
    );
    let m = parse_metrics(&python, &metrics);
    assert_eq!(m["sbps_reconcile_last_run_success"], 1.0);
    assert_eq!(m["sbps_reconcile_runs_total"], 1.0);
    assert_eq!(m["sbps_reconcile_projections{kind=rootfs}"], 2.0);
    assert_eq!(m["sbps_reconcile_projections{kind=pe}"], 1.0);
    assert_eq!(m["sbps_reconcile_skipped_images{reason=missing_etag}"], 1.0);
    assert_eq!(m["sbps_reconcile_skipped_images{reason=not_in_mount}"], 0.0);
    assert_eq!(m["sbps_reconcile_changes_applied_total{action=add}"], 3.0);
    let success = m["sbps_reconcile_last_success_timestamp_seconds"];
    assert!(success > 1.7e9, "{success}");
    assert!(m["sbps_reconcile_run_duration_seconds"] >= 0.0);

    // A failed run: counted by kind, the last success kept.
    sandbox.write("images.json", "{\"not\": \"a list\"}");
    sandbox.run(&["--metrics-file", arg]).expect(1);
    let m = parse_metrics(&python, &metrics);
    assert_eq!(m["sbps_reconcile_last_run_success"], 0.0);
    assert_eq!(m["sbps_reconcile_runs_total"], 2.0);
    assert_eq!(m["sbps_reconcile_failures_total{kind=source}"], 1.0);
    assert_eq!(m["sbps_reconcile_failures_total{kind=apply}"], 0.0);
    assert_eq!(m["sbps_reconcile_last_success_timestamp_seconds"], success);
    assert_eq!(m["sbps_reconcile_changes_applied_total{action=add}"], 3.0);
    assert!(
        !m.contains_key("sbps_reconcile_projections{kind=rootfs}"),
        "no plan, no projection gauge"
    );
}

#[test]
fn the_policy_metrics_file_is_written_by_real_runs_only() {
    let sandbox = catalogue();
    let metrics = sandbox.path("policy.prom");
    let policy = sandbox.read("policy.yaml").unwrap()
        + &format!("metrics:\n  file: {}\n", metrics.display());
    sandbox.write("policy.yaml", policy);
    sandbox.run(&["--dry-run"]).expect(0);
    assert!(
        !metrics.exists(),
        "a dry run leaves the timer's metrics alone"
    );
    sandbox.run(&[]).expect(0);
    assert!(fs::read_to_string(&metrics)
        .unwrap()
        .contains("sbps_reconcile_last_run_success 1"));
}

#[test]
fn status_lists_the_luns_and_changes_nothing() {
    let sandbox = catalogue();
    sandbox.run(&[]).expect(0);
    // A LUN of an object the tool does not manage, added by hand.
    let mut config: Value =
        serde_json::from_str(&sandbox.read("etc/target/saveconfig.json").unwrap()).unwrap();
    config["storage_objects"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "scratch", "plugin": "block",
        "dev": "/dev/sdz", "wwn": "1234", "write_back": false, "readonly": false}));
    config["targets"][0]["tpgs"][0]["luns"]
        .as_array_mut()
        .unwrap()
        .push(json!({"index": 9, "storage_object": "/backstores/block/scratch"}));
    let text = serde_json::to_string_pretty(&config).unwrap();
    sandbox.write("etc/target/saveconfig.json", &text);
    let calls = sandbox.calls().len();
    // A held lock does not stop status: it takes none.
    let lock = fs::File::create(sandbox.path("run/sbps-reconcile.lock")).unwrap();
    lock.try_lock().unwrap();

    let run = sandbox.run(&["status", "--output", "json"]).expect(0);
    let status = run.json();
    assert_eq!(status["target"], json!("iqn.2023-06.csm.iscsi:ncn-w001"));
    assert_eq!(status["enabled"], json!(true));
    assert_eq!(status["portals"], json!(["10.252.1.10:3260"]));
    let luns = status["luns"].as_array().unwrap();
    assert_eq!(
        luns.iter()
            .map(|l| l["index"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [0, 1, 2, 9]
    );
    let a = luns
        .iter()
        .find(|l| l["images"][0]["id"] == json!("img-a"))
        .unwrap();
    let id = Identity::rootfs("s3://boot-images/img-a/rootfs", "etag-a");
    assert_eq!(a["name"], json!(id.name));
    assert_eq!(a["wwn"], json!(id.wwn));
    assert_eq!(a["size"], json!(9));
    assert_eq!(a["managed"], json!(true));
    assert_eq!(a["kind"], json!("rootfs"));
    assert_eq!(a["next_run"], json!("keep"));
    assert_eq!(
        a["dev"],
        json!(format!("{}/mount/img-a/rootfs", sandbox.root().display()))
    );
    let foreign = &luns[3];
    assert_eq!(
        (foreign["managed"].clone(), foreign["plugin"].clone()),
        (json!(false), json!("block"))
    );
    assert_eq!(status["catalogue_error"], Value::Null);

    let text_run = sandbox.run(&["status"]).expect(0);
    assert!(
        text_run.stdout.contains("not managed (block) /dev/sdz"),
        "{}",
        text_run.stdout
    );
    assert!(
        text_run.stdout.contains("rootfs \"cos-a\" (id img-a)"),
        "{}",
        text_run.stdout
    );
    assert_eq!(sandbox.read("etc/target/saveconfig.json").unwrap(), text);
    assert_eq!(sandbox.calls().len(), calls);

    // Without the catalogue, the LUNs are still listed.
    sandbox.write("images.json", "garbage");
    let status = sandbox
        .run(&["status", "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(status["luns"].as_array().unwrap().len(), 4);
    assert!(status["catalogue_error"]
        .as_str()
        .unwrap()
        .contains("not JSON"));
}

#[test]
fn explain_walks_every_rule() {
    let sandbox = catalogue();
    sandbox.run(&[]).expect(0);
    let run = sandbox
        .run(&["explain", "img-a", "--output", "json"])
        .expect(0);
    let e = &run.json()[0];
    assert_eq!(e["projected"], json!(true));
    assert_eq!(e["action"], json!("keep"));
    let rules: Vec<(&str, &str)> = e["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["rule"].as_str().unwrap(), s["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        rules,
        [
            ("tag filter", "pass"),
            ("link", "pass"),
            ("manifest", "pass"),
            ("object key", "pass"),
            ("S3 object", "not_checked"),
            ("mount file", "pass"),
            ("LUN", "pass")
        ]
    );
    let id = Identity::rootfs("s3://boot-images/img-a/rootfs", "etag-a");
    assert_eq!(e["identity"]["name"], json!(id.name));
    assert_eq!(e["identity"]["multipath_wwid"], json!(id.multipath_wwid()));

    // By rootfs key or URL, the same image.
    let by_url = sandbox
        .run(&[
            "explain",
            "s3://boot-images/img-a/rootfs",
            "--output",
            "json",
        ])
        .expect(0)
        .json();
    assert_eq!(by_url[0]["image_id"], json!("img-a"));

    let text = sandbox.run(&["explain", "img-bad"]).expect(0).stdout;
    assert!(
        text.contains("FAIL         manifest     missing_etag"),
        "{text}"
    );
    assert!(text.contains("=> skipped: missing_etag"), "{text}");

    let pe = sandbox
        .run(&[
            "explain",
            "PE/CPE-base.x86_64-24.11.squashfs",
            "--output",
            "json",
        ])
        .expect(0)
        .json();
    assert_eq!(pe[0]["identity"]["name"], json!("de4cc04e7dacfb9"));
    assert_eq!(pe[0]["kind"], json!("pe"));

    let missing = sandbox.run(&["explain", "no-such-image"]).expect(1);
    assert!(missing.stderr.contains("no-such-image"));
}

#[test]
fn completions_for_bash_and_zsh() {
    let sandbox = Sandbox::new();
    let bash = sandbox.run(&["completions", "bash"]).expect(0).stdout;
    sandbox.write("completion.bash", &bash);
    // A real bash loads it and registers the completion.
    let script = format!(
        "source {} && complete -p sbps-reconcile",
        sandbox.path("completion.bash").display()
    );
    let output = Command::new("bash").args(["-c", &script]).output().unwrap();
    let registered = String::from_utf8_lossy(&output.stdout);
    assert!(
        registered.contains("-F _sbps__reconcile") && registered.ends_with("sbps-reconcile\n"),
        "{registered}"
    );
    assert!(bash.contains("explain") && bash.contains("--dry-run"));
    let zsh = sandbox.run(&["completions", "zsh"]).expect(0).stdout;
    assert!(zsh.starts_with("#compdef sbps-reconcile"), "{zsh}");
    sandbox
        .run(&["--dry-run", "completions", "bash"])
        .expect(64);
}

#[test]
fn the_man_page_is_generated_from_the_flags() {
    let generated = Command::new(env!("CARGO_BIN_EXE_sbps-reconcile"))
        .arg("man")
        .output()
        .unwrap();
    let generated = String::from_utf8(generated.stdout).unwrap();
    let committed = repo("man/sbps-reconcile.8");
    if std::env::var_os("SBPS_BLESS").is_some() {
        fs::write(&committed, &generated).unwrap();
    }
    assert_eq!(
        fs::read_to_string(&committed).unwrap(),
        generated,
        "regenerate: SBPS_BLESS=1 cargo test man_page"
    );
    for section in [
        "EXIT STATUS",
        "ERROR KINDS",
        "SKIP REASONS",
        "ENVIRONMENT",
        "FILES",
        "EXAMPLES",
        "SEE ALSO",
        "--dry-run",
        "--detailed-exitcode",
    ] {
        assert!(
            generated.contains(section) || generated.contains(&section.replace('-', "\\-")),
            "{section}"
        );
    }
}

/// Every skip reason and error kind is explained where operators look: the man page (built
/// from the enums' own lists) and the troubleshooting page's tables.
#[test]
fn every_reason_code_and_error_kind_is_documented() {
    use sbps_reconcile::error::ErrorKind;
    use sbps_reconcile::skip::ReasonCode;
    let readme = fs::read_to_string(repo("docs/troubleshooting.md")).unwrap();
    let man = fs::read_to_string(repo("man/sbps-reconcile.8")).unwrap();
    for code in ReasonCode::ALL {
        assert!(
            readme.contains(&format!("| `{code}` |")),
            "the troubleshooting page's skip reason table lacks {code}"
        );
        assert!(
            man.contains(&format!(".B {code}\n")),
            "man page lacks {code}"
        );
    }
    for kind in ErrorKind::ALL {
        assert!(
            readme.contains(&format!("`{kind}`")),
            "the troubleshooting page does not name error kind {kind}"
        );
        assert!(
            man.contains(&format!(".B {kind}\n")),
            "man page lacks {kind}"
        );
    }
}

#[test]
fn the_man_pages_render_without_warnings() {
    for page in ["man/sbps-reconcile.8", "man/sbps-reconcile.policy.5"] {
        let output = Command::new("groff")
            .args(["-man", "-ww", "-z"])
            .arg(repo(page))
            .output()
            .expect("groff (Debian's groff-base; .ci/setup installs it)");
        assert!(
            output.status.success() && output.stderr.is_empty(),
            "{page}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Every key the loader accepts, found by asking the loader: an unknown key at each mapping
/// makes it list the keys it expected there.
fn loader_keys() -> Vec<String> {
    let base = "target:\n  portals: [\"10.0.0.1:3260\"]\n  attributes: {}\nlio: {}\ncatalogue:\n  ims:\n    url: https://ims/apis/ims/v3/images\n\
                \x20   auth: {spire: {}}\n    select: {}\n  s3: {endpoint: \"https://s3\"}\n  pe: {}\nsafety: {}\nmetrics: {}\n";
    let sections: [&[&str]; 12] = [
        &[],
        &["target"],
        &["lio"],
        &["catalogue"],
        &["catalogue", "ims"],
        &["catalogue", "ims", "select"],
        &["catalogue", "ims", "auth"],
        &["catalogue", "ims", "auth", "spire"],
        &["catalogue", "s3"],
        &["catalogue", "pe"],
        &["safety"],
        &["metrics"],
    ];
    let mut keys = Vec::new();
    for path in sections {
        let mut doc: serde_yaml::Value = serde_yaml::from_str(base).unwrap();
        let mut node = &mut doc;
        for part in path {
            node = node.get_mut(*part).unwrap();
        }
        node.as_mapping_mut()
            .unwrap()
            .insert("zz_unknown".into(), 1.into());
        let err = Policy::from_yaml(
            &serde_yaml::to_string(&doc).unwrap(),
            &HostFacts::from_hostname("h"),
        )
        .unwrap_err()
        .to_string();
        let expected = err
            .split("expected")
            .nth(1)
            .unwrap_or_else(|| panic!("{path:?}: {err}"));
        let found: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        assert!(!found.is_empty(), "{path:?}: {err}");
        for key in found {
            let mut full: Vec<&str> = path.to_vec();
            full.push(key);
            keys.push(full.join("."));
        }
    }
    keys
}

#[test]
fn the_policy_page_documents_every_key_and_its_example_loads() {
    let page = fs::read_to_string(repo("man/sbps-reconcile.policy.5")).unwrap();
    let keys = loader_keys();
    assert!(keys.len() > 40, "{keys:?}");
    let undocumented: Vec<&String> = keys
        .iter()
        .filter(|k| !page.contains(&format!("\\fB{k}\\fR")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "keys missing from sbps-reconcile.policy(5): {undocumented:?}"
    );
    let example = page
        .split(".\\\" example-begin\n")
        .nth(1)
        .unwrap()
        .split(".\\\" example-end")
        .next()
        .unwrap();
    let example = example.replace("\\-", "-");
    let (policy, _) = Policy::from_yaml(&example, &HostFacts::from_hostname("ncn-w001")).unwrap();
    assert_eq!(policy.target.iqn, "iqn.2023-06.csm.iscsi:ncn-w001");
    assert!(policy.metrics_file.is_some() && policy.catalogue.s3.is_some());
}

#[test]
fn progress_shows_on_a_terminal_only() {
    let sandbox = catalogue();
    let run = sandbox.run(&["--dry-run"]).expect(0);
    assert!(!run.stderr.contains('\r'), "{:?}", run.stderr);
    // script(1) gives the process a pseudo-terminal.
    let command = format!(
        "{} --policy {} --dry-run",
        env!("CARGO_BIN_EXE_sbps-reconcile"),
        sandbox.path("policy.yaml").display()
    );
    let output = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .expect("script(1)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("\rreading manifests: 3/3"), "{text:?}");
}

/// A saveconfig.json as the old agent (targetcli) leaves it: its own LUN numbers, the kernel's
/// full attribute set, LUN aliases, ALUA groups, targetcli's TPG parameters.
#[test]
fn an_old_agent_configuration_is_adopted_without_changes() {
    let sandbox = catalogue();
    let root = sandbox.root().display().to_string();
    let attributes = |alias: u32| {
        json!({"block_size": 512, "emulate_3pc": 1, "emulate_caw": 1, "emulate_dpo": 1,
        "emulate_fua_read": 1, "emulate_fua_write": 1, "emulate_model_alias": alias, "emulate_pr": 1,
        "emulate_rest_reord": 0, "emulate_tas": 1, "emulate_tpu": 0, "emulate_tpws": 0, "emulate_ua_intlck_ctrl": 0,
        "emulate_write_cache": 0, "enforce_pr_isids": 1, "force_pr_aptpl": 0, "is_nonrot": 0,
        "max_unmap_block_desc_count": 1, "max_unmap_lba_count": 8192, "max_write_same_len": 4096,
        "optimal_sectors": 16384, "pi_prot_format": 0, "pi_prot_type": 0, "pi_prot_verify": 0, "queue_depth": 128,
        "unmap_granularity": 1, "unmap_granularity_alignment": 0, "unmap_zeroes_data": 0})
    };
    let so = |id: &Identity, key: &str, size: u64| {
        json!({"aio": false, "alua_tpgs": [{"alua_access_state": 0,
        "alua_access_status": 0, "alua_access_type": 3, "alua_support_active_nonoptimized": 1,
        "alua_support_active_optimized": 1, "alua_support_offline": 1, "alua_support_standby": 1,
        "alua_support_transitioning": 1, "alua_support_unavailable": 1, "alua_write_metadata": 0,
        "implicit_trans_secs": 0, "name": "default_tg_pt_gp", "nonop_delay_msecs": 100, "preferred": 0,
        "tg_pt_gp_id": 0, "trans_delay_msecs": 0}], "attributes": attributes(1), "dev": format!("{root}/mount/{key}"),
        "name": id.name, "plugin": "fileio", "size": size, "write_back": false, "wwn": id.wwn})
    };
    let a = Identity::rootfs("s3://boot-images/img-a/rootfs", "etag-a");
    let b = Identity::rootfs("s3://boot-images/img-b/rootfs", "etag-b");
    let pe = Identity::pe("boot-images", "PE/CPE-base.x86_64-24.11.squashfs");
    let lun = |index: u32, id: &Identity, alias: &str| {
        json!({"alias": alias, "alua_tg_pt_gp_name": "default_tg_pt_gp",
        "index": index, "storage_object": format!("/backstores/fileio/{}", id.name)})
    };
    let config = json!({"fabric_modules": [], "storage_objects": [so(&pe, "PE/CPE-base.x86_64-24.11.squashfs", 9),
        so(&a, "img-a/rootfs", 9), so(&b, "img-b/rootfs", 9)], "targets": [{"fabric": "iscsi", "tpgs": [{
        "attributes": {"authentication": 0, "cache_dynamic_acls": 1, "default_cmdsn_depth": 64,
            "default_erl": 0, "demo_mode_discovery": 1, "demo_mode_write_protect": 1, "fabric_prot_type": 0,
            "generate_node_acls": 1, "login_keys_offload": 0, "login_timeout": 15, "netif_timeout": 2,
            "prod_mode_write_protect": 1, "t10_pi": 0, "tpg_enabled_sendtargets": 1},
        "enable": true, "luns": [lun(0, &pe, "3b2c0f9a1d"), lun(1, &a, "9e0d2c4b7a"), lun(3, &b, "0a1b2c3d4e")],
        "node_acls": [], "parameters": {"AuthMethod": "CHAP,None", "DataDigest": "CRC32C,None",
            "DataPDUInOrder": "Yes", "DataSequenceInOrder": "Yes", "DefaultTime2Retain": "20",
            "DefaultTime2Wait": "2", "ErrorRecoveryLevel": "0", "FirstBurstLength": "65536",
            "HeaderDigest": "CRC32C,None", "IFMarkInt": "Reject", "IFMarker": "No", "ImmediateData": "Yes",
            "InitialR2T": "Yes", "MaxBurstLength": "262144", "MaxConnections": "1",
            "MaxOutstandingR2T": "1", "MaxRecvDataSegmentLength": "8192", "MaxXmitDataSegmentLength": "262144",
            "OFMarkInt": "Reject", "OFMarker": "No", "TargetAlias": "LIO Target"},
        "portals": [{"ip_address": "10.252.1.10", "iser": false, "offload": false, "port": 3260}], "tag": 1}],
        "wwn": "iqn.2023-06.csm.iscsi:ncn-w001"}]});
    let text = serde_json::to_string_pretty(&config).unwrap() + "\n";
    sandbox.write("etc/target/saveconfig.json", &text);
    let run: Run = sandbox
        .run(&["--output", "json", "--detailed-exitcode"])
        .expect(0);
    let report = run.json();
    assert_eq!(report["changed"], json!(false), "{}", report["diff"]);
    assert_eq!(report["summary"]["keep"], json!(3));
    let luns: Vec<(u64, &str)> = report["projections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["lun"].as_u64().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        luns,
        [
            (0, pe.name.as_str()),
            (1, a.name.as_str()),
            (3, b.name.as_str())
        ]
    );
    assert!(sandbox.calls().is_empty());
    assert_eq!(sandbox.read("etc/target/saveconfig.json").unwrap(), text);
}

/// Under the unit stdout is the journal as well (systemd names the stream in
/// `JOURNAL_STREAM`): the run writes no text report there, so the journal gets each decision
/// and one summary, and no diff line; the diff of an applied run is kept beside the backups,
/// named in the summary.
#[test]
fn under_the_unit_the_journal_gets_one_summary_and_no_diff() {
    use std::os::unix::fs::MetadataExt;
    let sandbox = catalogue();
    let stdout_path = sandbox.path("journal-stdout");
    let stdout = fs::File::create(&stdout_path).unwrap();
    let meta = stdout.metadata().unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    // Before: the same cold start with the text report on stdout (a stream that is not the
    // journal's), as every run under the unit printed it until now.
    let twin = catalogue();
    let before = twin
        .run_command(twin.command().env("JOURNAL_STREAM", "8:12345"))
        .expect(0);
    let before_lines = before.stdout.lines().count() + before.stderr.lines().count();
    assert!(before.stdout.contains("+++ desired"));

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sbps-reconcile"))
        .arg("--policy")
        .arg(sandbox.path("policy.yaml"))
        .current_dir(sandbox.root())
        .env_remove("RUST_LOG")
        .env("SBPS_JOURNAL_SOCKET", sandbox.path("run/journal.socket"))
        .env("JOURNAL_STREAM", &stream)
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let journal = fs::read_to_string(&stdout_path).unwrap();
    assert_eq!(journal, "", "the text report went to the journal");
    let summaries: Vec<&str> = stderr.lines().filter(|l| l.contains("summary:")).collect();
    assert_eq!(summaries.len(), 1, "{stderr}");
    let named = summaries[0]
        .split("the diff: ")
        .nth(1)
        .unwrap_or_else(|| panic!("the summary names no diff: {}", summaries[0]));
    let diff = fs::read_to_string(named).unwrap();
    assert!(diff.starts_with("--- current\n+++ desired\n"), "{diff}");
    assert!(Path::new(named).starts_with(sandbox.path("etc/target/backup")));
    for line in stderr.lines() {
        assert!(
            line.starts_with('<'),
            "a line without a priority (a report or diff line): {line:?}\n{stderr}"
        );
    }
    let after_lines = stderr.lines().count();
    eprintln!(
        "journal lines of a cold start (4 images, 1 skipped): {before_lines} with the text \
         report and its diff, {after_lines} now"
    );
    assert!(
        after_lines < before_lines,
        "{before_lines} -> {after_lines}"
    );
}

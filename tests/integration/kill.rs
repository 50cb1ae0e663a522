//! Crash convergence: runs killed with SIGKILL at every point of an apply. After each kill,
//! the next run must leave the running target equal to what the plan wants, no lock may
//! stay held, and no pile of files may grow. The running target is the stand-in configfs;
//! in restore mode the stand-in targetctl clears it first and rebuilds it slowly, as
//! rtslib does, so a kill often lands with the target half-built.

use crate::util::sandbox::Sandbox;
use serde_json::json;
use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Images the loop adds and removes; the first three always stay, so no safety limit fires.
const POOL: [&str; 6] = ["img-a", "img-b", "img-c", "img-d", "img-e", "img-f"];

/// A small, fixed pseudo-random sequence: the same kill points every time.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

/// Figures of one loop, for the closing note.
#[derive(Debug, Default)]
struct Figures {
    runs: usize,
    killed: usize,
    repaired: usize,
    lock_waits: usize,
}

fn kill_loop(sandbox: &Sandbox, runs: usize, seed: u64) -> Figures {
    for id in &POOL[..3] {
        sandbox.add_image(
            id,
            id,
            &format!("etag-{id}"),
            format!("rootfs {id}\n").as_bytes(),
        );
    }
    sandbox.run(&[]).expect(0);
    let mut rng = Lcg(seed);
    let mut figures = Figures::default();
    for run in 0..runs {
        // A change: an image in or out (never one of the first three), sometimes a new etag.
        let id = POOL[3 + rng.next(3) as usize];
        let present = sandbox.images().iter().any(|r| r["id"] == json!(id));
        if present && rng.next(3) > 0 {
            sandbox.remove_image(id);
        } else {
            let etag = format!("etag-{id}-{run}");
            sandbox.add_image(id, id, &etag, format!("rootfs {id} {run}\n").as_bytes());
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_sbps-reconcile"))
            .arg("--policy")
            .arg(sandbox.path("policy.yaml"))
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.next(250)));
        if child.try_wait().unwrap().is_none() {
            figures.killed += 1;
        }
        let _ = child.kill();
        child.wait().unwrap();
        figures.runs += 1;

        // The next run converges. A targetctl that the killed run left going holds the
        // locks until it ends: the run says so (75) and the next one goes on.
        let mut converged = None;
        for _ in 0..200 {
            let run = sandbox.run(&["--output", "json", "--retry-now"]);
            if run.code == 75 {
                figures.lock_waits += 1;
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            converged = Some(run.expect(0));
            break;
        }
        let report = converged.expect("the lock came free").json();
        if report["kernel_changes"].as_u64().unwrap_or(0) > 0 {
            figures.repaired += 1;
        }
        // ... and the one after finds the running target as the plan wants it.
        let check = sandbox
            .run(&["--output", "json", "--detailed-exitcode"])
            .expect(0)
            .json();
        assert_eq!(check["drift"], json!([]), "run {run}: {check}");
        assert_eq!(check["changed"], json!(false), "run {run}: {check}");
        assert_piles_do_not_grow(sandbox, run);
    }
    figures
}

/// No stale lock (a targetctl the killed run left going may hold one until it ends, a
/// moment later), and no more than one of each leftover file.
fn assert_piles_do_not_grow(sandbox: &Sandbox, run: usize) {
    for lock in ["run/sbps-reconcile.lock", "run/targetcli.lock"] {
        let file = fs::File::open(sandbox.path(lock)).unwrap();
        let free = (0..200).any(|_| {
            let free = file.try_lock().is_ok();
            if !free {
                std::thread::sleep(Duration::from_millis(50));
            }
            free
        });
        assert!(free, "run {run}: {lock} is still held");
    }
    let names: Vec<String> = fs::read_dir(sandbox.path("etc/target"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let temps = names
        .iter()
        .filter(|n| n.contains(".sbps-reconcile"))
        .count();
    assert!(temps <= 2, "run {run}: leftovers pile up: {names:?}");
    let backups: Vec<String> = fs::read_dir(sandbox.path("etc/target/backup")).map_or_else(
        |_| Vec::new(),
        |d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        },
    );
    // Ten backups, and at most the half-written file of the run killed last.
    assert!(backups.len() <= 11, "run {run}: {backups:?}");
}

#[test]
fn runs_killed_during_a_restore_that_clears_first_converge() {
    let Some(sandbox) = Sandbox::in_place() else {
        return;
    };
    // Restore mode, with the stand-in targetctl rebuilding the stand-in configfs slowly.
    sandbox.write_policy_as("restore", "", 10);
    sandbox.write(
        "bin/configfs",
        sandbox.configfs().root().display().to_string(),
    );
    sandbox.write("bin/restore-pause", "0.01");
    let figures = kill_loop(&sandbox, 200, 7);
    eprintln!("restore mode: {figures:?}");
    assert_eq!(figures.runs, 200);
    assert!(figures.killed >= 100, "{figures:?}");
    assert!(
        figures.repaired >= 20,
        "kills that left the target to repair: {figures:?}"
    );
}

#[test]
fn runs_killed_during_an_in_place_apply_converge() {
    let Some(sandbox) = Sandbox::in_place() else {
        return;
    };
    let figures = kill_loop(&sandbox, 100, 11);
    eprintln!("in-place mode: {figures:?}");
    assert_eq!(figures.runs, 100);
    assert!(figures.killed >= 20, "{figures:?}");
}

//! The stand-in configfs (`tests/stub/configfs.py`, a FUSE file system that behaves as LIO's
//! configfs does) mounted for one test, and unmounted when the test ends.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct FakeConfigfs {
    mount: PathBuf,
    state: PathBuf,
    child: Child,
}

/// Python with mfusepy from the test venv (.ci/setup installs it), if FUSE can be used here.
fn python() -> Option<PathBuf> {
    let venv = std::env::var_os("SBPS_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv"));
    let python = venv.join("bin/python");
    let ok = Path::new("/dev/fuse").exists()
        && Command::new(&python)
            .args(["-c", "import mfusepy"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the stand-in configfs needs /dev/fuse and mfusepy: run .ci/setup"
    );
    eprintln!("SKIPPED: no FUSE or mfusepy for the stand-in configfs (run .ci/setup)");
    None
}

impl FakeConfigfs {
    /// Mounts the stand-in at `mount`, keeping its log and switches in `state`. `None` when
    /// this machine cannot (the test then says it was skipped; under CI it fails instead).
    pub fn mount(mount: &Path, state: &Path) -> Option<FakeConfigfs> {
        let python = python()?;
        fs::create_dir_all(mount).unwrap();
        fs::create_dir_all(state).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/stub/configfs.py");
        // The stand-in stops by itself after 15 minutes whatever happens to the test.
        let child = Command::new("timeout")
            .arg("900")
            .arg(&python)
            .arg(script)
            .arg(mount)
            .arg(state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(state.join("fuse.log")).unwrap())
            .spawn()
            .expect("start the stand-in configfs");
        let fake = FakeConfigfs {
            mount: mount.to_owned(),
            state: state.to_owned(),
            child,
        };
        for _ in 0..200 {
            if mount.join("core").is_dir() {
                return Some(fake);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the stand-in configfs did not come up: {}",
            fs::read_to_string(state.join("fuse.log")).unwrap_or_default()
        );
    }

    pub fn root(&self) -> &Path {
        &self.mount
    }

    /// The changes made so far, one line each (`mkdir core/fileio_0/x`, `write ... 1`).
    pub fn ops(&self) -> Vec<String> {
        fs::read_to_string(self.state.join("ops.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Forgets the changes made so far.
    pub fn clear_ops(&self) {
        let _ = fs::remove_file(self.state.join("ops.log"));
    }

    /// Makes matching changes fail: `OP PATH-GLOB ERRNO [NTH]` lines (see the script).
    pub fn fail(&self, rules: &str) {
        fs::write(self.state.join("fail"), rules).unwrap();
    }

    pub fn heal(&self) {
        let _ = fs::remove_file(self.state.join("fail"));
    }

    /// A file of the tree, as the kernel shows it.
    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.mount.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    /// The names in a directory of the tree, sorted; empty when it does not exist.
    pub fn list(&self, rel: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.mount.join(rel))
            .map(|entries| {
                entries
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for FakeConfigfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.mount)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! The sbps-reconcile binary: parse the command line, run it, exit with its status.
//!
// One audited call into the C library below (`tune_allocator`); the library forbids unsafe.
#![deny(unsafe_code)]

use sbps_reconcile::cli::Cli;
use sbps_reconcile::error::{Error, Exit};
use sbps_reconcile::{logger, run};
use std::process::ExitCode;

fn main() -> ExitCode {
    tune_allocator();
    let cli = match Cli::parse_checked() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                Exit::Usage.code()
            } else {
                0
            });
        }
    };
    logger::init(cli.log_level());
    match run::execute(&cli) {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(error) => ExitCode::from(fatal(error).code()),
    }
}

/// The error that ended the run, at the binary's edge: logged with its cause chain (one
/// line per cause, a cause its parent's message already holds left out); its kind, not its
/// text, gives the exit code.
fn fatal(error: Error) -> Exit {
    let exit = error.kind().exit();
    let error = anyhow::Error::new(error);
    logger::error_chain(error.as_ref());
    exit
}

/// glibc's allocator, set for a run that holds a large catalogue for a moment and exits:
/// - one arena: the runtime's one worker thread only does I/O, and in an arena of its own
///   what it freed stayed apart from the main thread's (a 5,000-image cold run: 5.8 MB);
/// - a fixed mmap threshold (128 KiB, glibc's initial one): buffers that large (response
///   bodies, listings, the canonical text) are mapped and given back when freed. By default
///   glibc raises the threshold after the first such free and keeps later ones in the heap
///   (4.5 MB more).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_allocator() {
    use std::os::raw::c_int;
    // <malloc.h>
    const M_MMAP_THRESHOLD: c_int = -3;
    const M_ARENA_MAX: c_int = -8;
    extern "C" {
        fn mallopt(param: c_int, value: c_int) -> c_int;
    }
    // SAFETY: mallopt only sets allocator parameters and is safe to call at any time; this
    // runs first in main, before the runtime starts its thread. A refusal (0) leaves glibc's
    // defaults, which are correct, only larger.
    unsafe {
        mallopt(M_ARENA_MAX, 1);
        mallopt(M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

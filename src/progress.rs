//! A one-line progress counter on stderr for long steps (a cold start reads thousands of
//! manifests), shown only when stderr is a terminal and info logging is on.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    label: &'static str,
    total: usize,
    done: usize,
    shown: Option<Instant>,
    enabled: bool,
}

impl Progress {
    pub fn new(label: &'static str, total: usize) -> Progress {
        let enabled = total > 0
            && std::io::stderr().is_terminal()
            && log::max_level() >= log::LevelFilter::Info;
        Progress {
            label,
            total,
            done: 0,
            shown: None,
            enabled,
        }
    }

    pub fn tick(&mut self) {
        self.done += 1;
        if !self.enabled {
            return;
        }
        // At most ten updates a second.
        if self
            .shown
            .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
            && self.done < self.total
        {
            return;
        }
        self.shown = Some(Instant::now());
        let mut stderr = std::io::stderr().lock();
        let _ = write!(stderr, "\r{}: {}/{}", self.label, self.done, self.total);
        let _ = stderr.flush();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.enabled && self.shown.is_some() {
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "\r\x1b[2K");
            let _ = stderr.flush();
        }
    }
}

//! The run's deadline (`safety.run_deadline`): every wait of the run (a request, a retry's
//! pause, a child process) is capped by what is left of it, so that no retry outlives the
//! run and the timer's next run never finds this one still going.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    end: Instant,
    total: Duration,
}

impl Deadline {
    /// A deadline `total` from now.
    pub fn after(total: Duration) -> Deadline {
        Deadline {
            end: Instant::now() + total,
            total,
        }
    }

    /// The whole allowance, for messages.
    pub fn total(&self) -> Duration {
        self.total
    }

    pub fn remaining(&self) -> Duration {
        self.end.saturating_duration_since(Instant::now())
    }

    pub fn passed(&self) -> bool {
        self.remaining().is_zero()
    }

    /// `wait`, or less when the deadline comes sooner.
    pub fn cap(&self, wait: Duration) -> Duration {
        wait.min(self.remaining())
    }
}

/// The pause before retry number `attempt` (0 for the first retry): 0.5 s doubling up to 8 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempt.min(4)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_capped_by_what_is_left() {
        let deadline = Deadline::after(Duration::from_secs(60));
        assert!(deadline.cap(Duration::from_secs(600)) <= Duration::from_secs(60));
        assert_eq!(deadline.cap(Duration::from_secs(1)), Duration::from_secs(1));
        assert!(!deadline.passed());
        assert!(Deadline::after(Duration::ZERO).passed());
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(40), Duration::from_secs(8));
    }
}

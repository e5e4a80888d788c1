//! Time, behind a trait.
//!
//! The engine needs two kinds of time. Wall-clock time stamps commit records
//! (point-in-time recovery stops at a commit time) and names backups.
//! Monotonic time measures intervals (checkpoint cadence, durations in log
//! lines). Both come from a [`Clock`], so the simulator can run time fast and
//! make the wall clock jump, forwards or backwards, as NTP does.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// A source of wall-clock and monotonic time.
pub trait Clock: Send + Sync {
    /// Wall-clock time in microseconds since the Unix epoch.
    fn wall_micros(&self) -> u64;
    /// Monotonic time since an arbitrary origin fixed when the clock was made.
    fn monotonic(&self) -> Duration;
}

/// A clock whose monotonic time follows the async runtime's timer (simulated
/// under madsim, paused or real under tokio) and whose wall clock starts at a
/// chosen instant and can be made to jump.
pub struct SimClock {
    origin: tokio::time::Instant,
    wall_origin_micros: u64,
    wall_jump_micros: AtomicI64,
}

// The simulated clock is part of the seam: it reads the runtime's timer,
// which madsim simulates.
#[allow(clippy::disallowed_methods)]
impl SimClock {
    /// A clock whose wall time reads `wall_origin_micros` now.
    pub fn new(wall_origin_micros: u64) -> Self {
        Self { origin: tokio::time::Instant::now(), wall_origin_micros, wall_jump_micros: AtomicI64::new(0) }
    }

    /// Moves the wall clock by `delta_micros` (negative goes back in time).
    /// Monotonic time is unaffected, as on a real machine.
    pub fn jump_wall(&self, delta_micros: i64) {
        self.wall_jump_micros.fetch_add(delta_micros, Ordering::SeqCst);
    }
}

#[allow(clippy::disallowed_methods)]
impl Clock for SimClock {
    fn wall_micros(&self) -> u64 {
        let elapsed = u64::try_from(self.monotonic().as_micros()).unwrap_or(u64::MAX);
        let wall = self.wall_origin_micros.saturating_add(elapsed);
        wall.saturating_add_signed(self.wall_jump_micros.load(Ordering::SeqCst))
    }

    fn monotonic(&self) -> Duration {
        tokio::time::Instant::now().duration_since(self.origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wall_clock_jumps_but_monotonic_does_not() {
        let clock = SimClock::new(1_000_000);
        let before = clock.monotonic();
        assert!(clock.wall_micros() >= 1_000_000);
        clock.jump_wall(-500_000);
        assert!(clock.wall_micros() < 1_000_000, "the wall clock went back");
        assert!(clock.monotonic() >= before, "monotonic time never goes back");
    }
}

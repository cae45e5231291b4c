//! The server's one clock.
//!
//! Owns reading the time. In test mode (`--test-clock`) `POST /__test/clock` can shift it (`set_ms`,
//! `advance_ms`) or stop it at an instant (`freeze_ms`), so tests cross deadlines without sleeping and a
//! conformance harness decides every instant itself. Outside test mode the time is the system's and the
//! endpoint does not exist.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bff_session_core::Timestamp;

/// `frozen_ms` when the clock runs.
const RUNNING: i64 = i64::MIN;

#[derive(Debug)]
pub struct Clock {
    test_mode: bool,
    offset_ms: AtomicI64,
    frozen_ms: AtomicI64,
}

fn wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn to_i64(at: Timestamp) -> i64 {
    i64::try_from(at.as_millis()).unwrap_or(i64::MAX)
}

impl Clock {
    pub fn new(test_mode: bool) -> Self {
        Self { test_mode, offset_ms: AtomicI64::new(0), frozen_ms: AtomicI64::new(RUNNING) }
    }

    /// A clock that always reads `at` and that nothing can move (no test routes): for the in-process fuzzer.
    pub fn fixed(at: Timestamp) -> Self {
        Self { test_mode: false, offset_ms: AtomicI64::new(0), frozen_ms: AtomicI64::new(to_i64(at).max(0)) }
    }

    pub fn is_test(&self) -> bool {
        self.test_mode
    }

    /// Whether a test has stopped the clock; the background timer pauses then (`POST /__test/tick` runs a pass).
    pub fn is_frozen(&self) -> bool {
        self.frozen_ms.load(Ordering::Relaxed) != RUNNING
    }

    pub fn now(&self) -> Timestamp {
        let frozen = self.frozen_ms.load(Ordering::Relaxed);
        let ms =
            if frozen == RUNNING { wall_ms().saturating_add(self.offset_ms.load(Ordering::Relaxed)) } else { frozen };
        Timestamp::from_millis(u64::try_from(ms).unwrap_or(0))
    }

    /// Sets the test clock to `at`, running from there. Refused outside test mode.
    pub fn set(&self, at: Timestamp) -> Option<Timestamp> {
        if !self.test_mode {
            return None;
        }
        self.offset_ms.store(to_i64(at).saturating_sub(wall_ms()), Ordering::Relaxed);
        self.frozen_ms.store(RUNNING, Ordering::Relaxed);
        Some(self.now())
    }

    /// Stops the test clock at `at` until the next change. Refused outside test mode.
    pub fn freeze(&self, at: Timestamp) -> Option<Timestamp> {
        if !self.test_mode {
            return None;
        }
        self.frozen_ms.store(to_i64(at).max(0), Ordering::Relaxed);
        Some(self.now())
    }

    /// Moves the test clock forwards (or backwards, with a negative value); a frozen clock stays frozen.
    /// Refused outside test mode.
    pub fn advance(&self, millis: i64) -> Option<Timestamp> {
        if !self.test_mode {
            return None;
        }
        if self.is_frozen() {
            let _ = self
                .frozen_ms
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| Some(f.saturating_add(millis).max(0)));
        } else {
            self.offset_ms.fetch_add(millis, Ordering::Relaxed);
        }
        Some(self.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frozen_clock_stands_still_and_advances_on_request() {
        let c = Clock::new(true);
        let at = Timestamp::from_millis(1_000_000);
        assert_eq!(c.freeze(at), Some(at));
        assert!(c.is_frozen());
        assert_eq!(c.now(), at);
        assert_eq!(c.advance(500), Some(Timestamp::from_millis(1_000_500)));
        c.set(at);
        assert!(!c.is_frozen());
        assert!(c.now() >= at);
    }

    #[test]
    fn outside_test_mode_nothing_moves_the_clock() {
        let c = Clock::new(false);
        assert_eq!(c.freeze(Timestamp::from_millis(5)), None);
        assert_eq!(c.advance(5), None);
        assert!(!c.is_frozen());
    }
}

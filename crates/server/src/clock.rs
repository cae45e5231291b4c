//! The server's one clock.
//!
//! Owns reading the time. In test mode (`--test-clock`) an offset can be set or advanced through
//! `POST /__test/clock`, so tests cross deadlines without sleeping; otherwise the offset is always zero and
//! the endpoint does not exist.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bff_session_core::Timestamp;

#[derive(Debug)]
pub struct Clock {
    test_mode: bool,
    offset_ms: AtomicI64,
}

impl Clock {
    pub fn new(test_mode: bool) -> Self {
        Self { test_mode, offset_ms: AtomicI64::new(0) }
    }

    pub fn is_test(&self) -> bool {
        self.test_mode
    }

    pub fn now(&self) -> Timestamp {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let shifted = wall.saturating_add(self.offset_ms.load(Ordering::Relaxed));
        Timestamp::from_millis(u64::try_from(shifted).unwrap_or(0))
    }

    /// Sets the test clock to `at`. Refused outside test mode.
    pub fn set(&self, at: Timestamp) -> Option<Timestamp> {
        if !self.test_mode {
            return None;
        }
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        self.offset_ms.store(i64::try_from(at.as_millis()).unwrap_or(i64::MAX).saturating_sub(wall), Ordering::Relaxed);
        Some(self.now())
    }

    /// Moves the test clock forwards (or backwards, with a negative value). Refused outside test mode.
    pub fn advance(&self, millis: i64) -> Option<Timestamp> {
        if !self.test_mode {
            return None;
        }
        self.offset_ms.fetch_add(millis, Ordering::Relaxed);
        Some(self.now())
    }
}

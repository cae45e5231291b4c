//! Rate limits on sign-ins per client address.
//!
//! Owns the per-address limiter of `GET /auth/login` and `GET /auth/callback` (governor's GCRA, keyed by
//! the address read through the trusted proxies). It never decides anything about a session; an anonymous
//! loop is slowed down before it can reach the provider or grow the pending logins.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Sign-ins allowed per minute from one address, and how many may come at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginLimit {
    pub per_minute: NonZeroU32,
    pub burst: NonZeroU32,
}

/// Addresses remembered before the idle ones are forgotten.
const FORGET_ABOVE: usize = 100_000;

pub struct LoginLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

impl std::fmt::Debug for LoginLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginLimiter").field("addresses", &self.limiter.len()).finish()
    }
}

impl LoginLimiter {
    pub fn new(limit: LoginLimit) -> Self {
        let quota = Quota::per_minute(limit.per_minute).allow_burst(limit.burst);
        Self { limiter: RateLimiter::keyed(quota), clock: DefaultClock::default() }
    }

    /// `Err(wait)`: `client` is over its limit and may try again after `wait`.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        if self.limiter.len() > FORGET_ABOVE {
            // Addresses whose allowance has refilled carry no state worth keeping.
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&client).map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_each_address_waits_alone() {
        let limit = LoginLimit { per_minute: NonZeroU32::new(6).unwrap(), burst: NonZeroU32::new(3).unwrap() };
        let limiter = LoginLimiter::new(limit);
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        let b: IpAddr = "203.0.113.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(limiter.check(a), Ok(()));
        }
        let wait = limiter.check(a).unwrap_err();
        assert!(wait > Duration::from_secs(5) && wait <= Duration::from_secs(10), "{wait:?}");
        assert_eq!(limiter.check(b), Ok(()), "another address has its own allowance");
    }
}

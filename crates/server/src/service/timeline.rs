//! The demo's timeline: each session's recent transitions, kept in memory so the demo page can show the
//! lifecycle as it happens.
//!
//! Owns a bounded record of the audit events the service commits (the newest sessions, the newest events of
//! each); the demo turns it on, `serve` never does. It decides nothing and names a session only by its key.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use bff_session_core::audit::Event;
use bff_session_core::{SessionKey, Timestamp};

/// Sessions whose timeline is kept, at most; the oldest is forgotten first.
const SESSIONS: usize = 256;
/// Events kept per session, at most; the oldest is dropped first.
const EVENTS: usize = 64;

/// One committed transition, in the audit trail's words.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    /// When it was committed, in Unix milliseconds.
    pub at: u64,
    pub event: &'static str,
    /// Its reason or error; empty for none.
    pub detail: &'static str,
    /// The access token's new expiry (Unix ms), for a creation or a refresh.
    pub access_expires_at: Option<u64>,
}

impl Entry {
    pub fn new(at: Timestamp, event: &Event) -> Self {
        let access_expires_at = match event {
            Event::Created { access_expires_at, .. } => *access_expires_at,
            Event::RefreshSucceeded { access_expires_at } => Some(*access_expires_at),
            _ => None,
        };
        Self { at: at.as_millis(), event: event.name(), detail: event.detail(), access_expires_at }
    }
}

#[derive(Debug, Default)]
pub struct Timeline {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_session: HashMap<SessionKey, VecDeque<Entry>>,
    /// Sessions in the order their timelines began.
    order: VecDeque<SessionKey>,
}

impl Timeline {
    pub fn push(&self, key: SessionKey, entry: Entry) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if !inner.by_session.contains_key(&key) {
            if inner.order.len() >= SESSIONS
                && let Some(oldest) = inner.order.pop_front()
            {
                inner.by_session.remove(&oldest);
            }
            inner.order.push_back(key);
        }
        let events = inner.by_session.entry(key).or_default();
        if events.len() >= EVENTS {
            events.pop_front();
        }
        events.push_back(entry);
    }

    /// The session's kept events, oldest first.
    pub fn of(&self, key: &SessionKey) -> Vec<Entry> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.by_session.get(key).map(|e| e.iter().cloned().collect()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeline_keeps_the_newest_sessions_and_events() {
        let timeline = Timeline::default();
        let key = |n: u16| {
            let mut bytes = [0u8; 32];
            bytes[..2].copy_from_slice(&n.to_be_bytes());
            SessionKey::from_bytes(bytes)
        };
        for n in 0..=SESSIONS as u16 {
            timeline.push(key(n), Entry::new(Timestamp::from_millis(1), &Event::Touched));
        }
        assert!(timeline.of(&key(0)).is_empty(), "the oldest session is forgotten");
        for at in 0..(EVENTS as u64 + 5) {
            timeline.push(key(1), Entry::new(Timestamp::from_millis(at), &Event::Touched));
        }
        let events = timeline.of(&key(1));
        assert_eq!(events.len(), EVENTS);
        assert_eq!(events.last().map(|e| e.at), Some(EVENTS as u64 + 4));
        let refresh = Entry::new(Timestamp::from_millis(9), &Event::RefreshSucceeded { access_expires_at: 99 });
        assert_eq!((refresh.event, refresh.access_expires_at), ("refresh_succeeded", Some(99)));
    }
}

//! The audit trail: one JSON line for each committed change of a session record.
//!
//! Owns the trail's file and its writes, in the format of `bff_session_core::audit` (documented in
//! `crates/conformance/README.md`, checked by `bff-session-conformance check-trace`). It never decides
//! anything and never writes a session ID or a token: a line names the session by its key's prefix.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write as _};
use std::path::Path;
use std::sync::Mutex;

use bff_session_core::audit::{Event, Header, Line};
use bff_session_core::{Policy, Session, Timestamp};
use tracing::warn;

#[derive(Debug)]
pub struct AuditLog {
    out: Mutex<BufWriter<File>>,
}

impl AuditLog {
    /// Opens `path` for appending and writes the policy header.
    pub fn open(path: &Path, policy: &Policy) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let log = Self { out: Mutex::new(BufWriter::new(file)) };
        let header = serde_json::to_string(&Header::new(policy)).map_err(io::Error::other)?;
        log.write(&header)?;
        Ok(log)
    }

    /// Records `event`, the change (core's [`Event::between`]) that made `after`, committed at `now`.
    pub fn record(&self, now: Timestamp, after: &Session, event: Event) {
        let line = Line { ts: now.as_millis(), session: after.key().to_string(), version: after.version(), event };
        let written = serde_json::to_string(&line).map_err(io::Error::other).and_then(|l| self.write(&l));
        if let Err(e) = written {
            // A full disk must not take sessions down with it; the gap is loud in the logs instead.
            warn!(error = %e, "audit line not written");
        }
    }

    fn write(&self, line: &str) -> io::Result<()> {
        let mut out = self.out.lock().map_err(|_| io::Error::other("audit log lock poisoned"))?;
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
        // Line by line, so a reader (or a crash) never sees half a transition.
        out.flush()
    }
}

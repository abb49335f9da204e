//! The audit trail of mailbox operations done through the mount (who did what to which
//! path, with what result): one JSON object per line in `<state>/audit.log`, also logged with
//! `tracing`. `internal-sftp` cannot log from inside a chroot; this replaces it.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Rotate `audit.log` to `audit.log.1` beyond this size.
const ROTATE_BYTES: u64 = 64 << 20;

/// One audited operation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// When (RFC 3339, UTC).
    pub at: String,
    /// Milliseconds since the epoch (for filtering).
    pub at_ms: i64,
    /// The mailbox user whose tree it was.
    pub user: String,
    /// The caller's uid (the user's, or 0 for an administrator).
    pub uid: u32,
    /// `put`, `get`, `rm`, `rmdir`, `mkdir`, `rename`, `setstat`, `truncate`.
    pub op: String,
    /// Path inside the user's tree (`as2gateway/...`).
    pub path: String,
    /// Bytes (uploads and downloads).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub bytes: Option<u64>,
    /// Content hash (uploads).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sha256: Option<String>,
    /// `ok`, `picked-up`, `held`, `interrupted`, `failed: <why>` or an errno name.
    pub result: String,
}

/// Appends records to the audit file.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl AuditLog {
    /// The audit log of the state folder `state_dir`.
    pub fn new(state_dir: &Path) -> AuditLog {
        AuditLog {
            path: state_dir.join("audit.log"),
            file: Mutex::new(None),
        }
    }

    /// Writes one record (one `write` of a whole line, so concurrent writers never
    /// interleave). Failures are logged, never passed to the user's operation.
    pub fn record(&self, r: &Record) {
        tracing::info!(target: "as2box::audit", user = %r.user, op = %r.op, path = %r.path, bytes = ?r.bytes, sha256 = ?r.sha256, result = %r.result);
        let Ok(mut line) = serde_json::to_vec(r) else {
            return;
        };
        line.push(b'\n');
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            match open_append(&self.path) {
                Ok(f) => *guard = Some(f),
                Err(e) => return tracing::warn!(error = %e, "cannot open the audit log"),
            }
        }
        if let Some(f) = guard.as_mut() {
            if let Err(e) = f.write_all(&line) {
                tracing::warn!(error = %e, "cannot write the audit log");
            }
            if f.metadata()
                .map(|m| m.len() > ROTATE_BYTES)
                .unwrap_or(false)
            {
                let _ = std::fs::rename(&self.path, self.path.with_extension("log.1"));
                *guard = None;
            }
        }
    }

    /// Records at or after `since_ms`, optionally of one user, oldest first.
    pub fn query(&self, user: Option<&str>, since_ms: i64) -> std::io::Result<Vec<Record>> {
        let mut out = Vec::new();
        for path in [self.path.with_extension("log.1"), self.path.clone()] {
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for line in BufReader::new(file).lines() {
                let Ok(r) = serde_json::from_str::<Record>(&line?) else {
                    continue;
                };
                if r.at_ms >= since_ms && user.is_none_or(|u| u == r.user) {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }
}

/// Parses `90s`, `30m`, `1h`, `2d` (or plain seconds) into milliseconds.
pub fn parse_age(s: &str) -> Option<i64> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: i64 = num.parse().ok()?;
    let mult = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(parse_age("90"), Some(90_000));
        assert_eq!(parse_age("30m"), Some(1_800_000));
        assert_eq!(parse_age("1h"), Some(3_600_000));
        assert_eq!(parse_age("2d"), Some(172_800_000));
        assert_eq!(parse_age("1w"), None);
        assert_eq!(parse_age("h"), None);
    }

    #[test]
    fn records_round_trip_and_filter() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path());
        let rec = |user: &str, at_ms| Record {
            at: crate::timefmt::rfc3339(at_ms),
            at_ms,
            user: user.into(),
            uid: 1000,
            op: "put".into(),
            path: "as2gateway/S/P/outbox/a".into(),
            bytes: Some(3),
            sha256: Some("ab".into()),
            result: "picked-up".into(),
        };
        log.record(&rec("a", 10));
        log.record(&rec("b", 20));
        log.record(&rec("a", 30));
        let got = log.query(Some("a"), 15).unwrap();
        assert_eq!(got, vec![rec("a", 30)]);
        assert_eq!(log.query(None, 0).unwrap().len(), 3);
    }
}

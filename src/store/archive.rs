//! The non-repudiation archive: per message, the raw AS2 request and the raw MDN exactly
//! as they crossed the wire (inbound: the request as received, still signed and
//! encrypted, and the MDN we answered; outbound: the request we POSTed and the MDN we
//! received). An MDN is a legal receipt only if the bytes it covers can be shown later.
//!
//! Each item is a capture (HTTP header lines, a blank line, the body: the format
//! `as2box decode` reads) stored as a content-addressed blob like a payload, and one row
//! in `message_archive` that belongs to the message record: it goes when the record goes
//! (`retention.messages_days`, `ON DELETE CASCADE`), and the blob sweep then removes the
//! blob.

use rusqlite::{params, Transaction};

use super::{Result, Store, StoreError};
use crate::timefmt::now_ms;

/// The table (in the operational database). `kind` is [`ArchiveKind::as_str`]; one row per
/// message and kind: a later attempt of a send replaces the request of the earlier one.
/// The index on `messages (user_id)` serves the user's usage, which counts the archive.
pub(super) const ARCHIVE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ops.message_archive (
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    blob TEXT NOT NULL,
    size INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (message_id, kind)
);
CREATE INDEX IF NOT EXISTS ops.message_archive_by_blob ON message_archive (blob);
CREATE INDEX IF NOT EXISTS ops.messages_by_user ON messages (user_id);
";

/// What an archived capture is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArchiveKind {
    /// The AS2 request: received (inbound) or POSTed by us (outbound, the last attempt).
    Request,
    /// The MDN: answered by us (inbound, sync response or async POST body) or received
    /// (outbound).
    Mdn,
}

impl ArchiveKind {
    /// The name stored in the database and used for exported files.
    pub fn as_str(self) -> &'static str {
        match self {
            ArchiveKind::Request => "request",
            ArchiveKind::Mdn => "mdn",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "request" => Some(ArchiveKind::Request),
            "mdn" => Some(ArchiveKind::Mdn),
            _ => None,
        }
    }
}

/// A capture stored as a blob, not yet linked to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedBlob {
    /// Its sha256 (the blob name).
    pub sha256: String,
    /// Bytes.
    pub size: u64,
}

/// One archived capture of a message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ArchiveItem {
    /// What it is.
    pub kind: ArchiveKind,
    /// Its sha256 (the blob name).
    pub sha256: String,
    /// Bytes.
    pub size: u64,
    /// When it was archived (unix milliseconds).
    pub at_ms: i64,
}

/// Links `blob` to message `message_id` as its `kind` inside a transaction (the inbound
/// request is linked in the delivery's own transaction: durable before the positive MDN).
pub(super) fn link(
    tx: &Transaction<'_>,
    message_id: i64,
    kind: ArchiveKind,
    blob: &ArchivedBlob,
) -> Result<()> {
    tx.execute(
        "INSERT OR REPLACE INTO message_archive (message_id, kind, blob, size, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![message_id, kind.as_str(), blob.sha256, blob.size as i64, now_ms()],
    )?;
    Ok(())
}

impl Store {
    /// Stores a capture (`header_block`, which ends each line with CRLF, a blank line, then
    /// `body`) as a blob: spool, fsync, rename, like a payload. The body is not copied.
    pub fn archive_capture(&self, header_block: &[u8], body: &[u8]) -> Result<ArchivedBlob> {
        self.archive_capture_reader(header_block, &mut &body[..])
    }

    /// [`Store::archive_capture`] of a body read from `body` (a spooled request of any
    /// size), in bounded memory.
    pub fn archive_capture_reader(
        &self,
        header_block: &[u8],
        body: &mut dyn std::io::Read,
    ) -> Result<ArchivedBlob> {
        use std::io::Write;
        let blobs = self.blobs();
        let (name, mut file) = blobs.spool_file()?;
        let result = (|| {
            let io = |context: &str| {
                let context = context.to_owned();
                move |source| StoreError::Io { context, source }
            };
            let mut hasher = openssl::sha::Sha256::new();
            let mut size = 0u64;
            for part in [header_block, b"\r\n"] {
                hasher.update(part);
                file.write_all(part)
                    .map_err(io("write an archive capture to the spool"))?;
                size += part.len() as u64;
            }
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = match body.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io("read a request to archive")(e)),
                };
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n])
                    .map_err(io("write an archive capture to the spool"))?;
                size += n as u64;
            }
            file.sync_all()
                .map_err(io("fsync an archive capture in the spool"))?;
            let sha256 = super::hex(&hasher.finish());
            blobs.commit_spool(&name, &sha256)?;
            Ok(ArchivedBlob { sha256, size })
        })();
        if result.is_err() {
            blobs.discard_spool(&name);
        }
        result
    }

    /// Stores a capture and links it to message `message_id` as its `kind` (replacing an
    /// earlier one of that kind). Durable when it returns.
    pub fn archive(
        &self,
        message_id: i64,
        kind: ArchiveKind,
        header_block: &[u8],
        body: &[u8],
    ) -> Result<ArchivedBlob> {
        self.archive_reader(message_id, kind, header_block, &mut &body[..])
    }

    /// [`Store::archive`] of a body read from `body`, in bounded memory.
    pub fn archive_reader(
        &self,
        message_id: i64,
        kind: ArchiveKind,
        header_block: &[u8],
        body: &mut dyn std::io::Read,
    ) -> Result<ArchivedBlob> {
        let blob = self.archive_capture_reader(header_block, body)?;
        let _guard = self.blobs().guard();
        self.write(|tx| {
            let exists: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM messages WHERE id = ?1)",
                [message_id],
                |r| r.get(0),
            )?;
            if !exists {
                return Err(StoreError::NotFound(format!("message {message_id}")));
            }
            link(tx, message_id, kind, &blob)
        })?;
        Ok(blob)
    }

    /// The archived captures of message `message_id` (request first).
    pub fn archive_of(&self, message_id: i64) -> Result<Vec<ArchiveItem>> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT kind, blob, size, at_ms FROM message_archive WHERE message_id = ?1 ORDER BY kind DESC",
            )?;
            let rows = st.query_map([message_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?;
            let mut items = Vec::new();
            for row in rows {
                let (kind, sha256, size, at_ms) = row?;
                // A kind this version does not know (a newer as2box wrote it) is skipped.
                if let Some(kind) = ArchiveKind::parse(&kind) {
                    items.push(ArchiveItem {
                        kind,
                        sha256,
                        size: size.max(0) as u64,
                        at_ms,
                    });
                }
            }
            Ok(items)
        })
    }

    /// Reads one archived capture whole (the CLI's export; bounded by what was received).
    pub fn read_archived(&self, item: &ArchiveItem) -> Result<Vec<u8>> {
        use std::io::Read;
        let mut data = Vec::with_capacity(item.size as usize);
        self.open_content(&item.sha256)?
            .read_to_end(&mut data)
            .map_err(|source| StoreError::Io {
                context: format!("read archived blob {}", item.sha256),
                source,
            })?;
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{BoxKind, BoxRef, InboundOrigin, PickupFile, Placement};

    #[test]
    fn a_capture_is_kept_with_its_message_counted_and_swept_with_the_record() {
        let (_d, store, user, outbox) = crate::store::test_store("acme", "ACME", "BIG");
        let inbox = BoxRef {
            kind: BoxKind::Inbox,
            ..outbox
        };
        let blob = store.blobs().put_bytes(b"payload").unwrap();
        let request = store
            .archive_capture(
                b"AS2-From: BIG\r\nContent-Type: x/y\r\n",
                b"\x00binary body",
            )
            .unwrap();
        let origin = InboundOrigin {
            as2_message_id: "m@big".into(),
            mic: None,
            request: Some(request.clone()),
        };
        let files = [(
            "p".to_string(),
            PickupFile {
                name: "p".into(),
                blob,
                size: 7,
                content: None,
            },
        )];
        let id = store
            .deliver(
                user,
                inbox,
                "p",
                Placement::Top { replace: false },
                &files,
                Some(&origin),
            )
            .unwrap();
        store
            .archive(id, ArchiveKind::Mdn, b"Content-Type: text/plain\r\n", b"ok")
            .unwrap();
        let items = store.archive_of(id).unwrap();
        assert_eq!(
            items.iter().map(|i| i.kind).collect::<Vec<_>>(),
            [ArchiveKind::Request, ArchiveKind::Mdn]
        );
        let raw = store.read_archived(&items[0]).unwrap();
        assert_eq!(
            raw,
            b"AS2-From: BIG\r\nContent-Type: x/y\r\n\r\n\x00binary body"
        );
        assert_eq!(items[0].sha256, crate::store::sha256_hex(&raw));
        assert_eq!(items[0].size, raw.len() as u64);
        // Counted in the user's usage, where the payload is.
        let archived: u64 = items.iter().map(|i| i.size).sum();
        assert_eq!(store.usage(user).unwrap(), 7 + archived);
        // The record's retention takes the archive with it.
        let now = now_ms();
        let r = store.sweep(now, now + 1, now + 1).unwrap();
        assert_eq!(r.messages_removed, 1);
        assert!(store.archive_of(id).unwrap().is_empty());
        assert_eq!(store.usage(user).unwrap(), 0);
        assert!(matches!(
            store.archive(id, ArchiveKind::Mdn, b"", b""),
            Err(StoreError::NotFound(_))
        ));
    }
}
